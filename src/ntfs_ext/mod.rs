//! Filesystem parsers (ext2/3/4; NTFS to come) behind one tree trait.
//!
//! Everything here reads only through [`ReadAt`] and knows nothing of safes or FUSE.
//! Every on-disk value is treated as hostile: offsets, counts and lengths are checked,
//! loops are bounded, and damage is an error, never data.

pub mod ext;
pub mod tree;

use std::sync::Arc;

use crate::readat::ReadAt;
pub use tree::{DirEntry, FsTree, NodeKind, Stat, StatFs, Timespec, TreeOptions};

/// Opens the file tree of a volume if it holds a filesystem we can read; `Ok(None)`
/// when no known filesystem is there.
pub fn open_tree(
    dev: Arc<dyn ReadAt>,
    opts: &TreeOptions,
) -> std::io::Result<Option<Arc<dyn FsTree>>> {
    if ext::probe(&*dev)? {
        let fs = ext::ExtFs::open(dev, opts)?;
        return Ok(Some(Arc::new(fs)));
    }
    Ok(None)
}

/// An `InvalidData` error naming the damaged structure.
pub(crate) fn corrupt(msg: impl Into<String>) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, msg.into())
}
