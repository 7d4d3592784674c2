//! Filesystem parsers (ext2/3/4 and NTFS) behind one tree trait.
//!
//! Everything here reads only through [`ReadAt`] and knows nothing of safes or FUSE.
//! Every on-disk value is treated as hostile: offsets, counts and lengths are checked,
//! loops are bounded, and damage is an error, never data.

pub mod ext;
pub mod ntfs;
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
    if ntfs::probe(&*dev)? {
        return Ok(Some(ntfs::NtfsFs::open(dev, opts)?));
    }
    Ok(None)
}

/// Hints the device to fetch scattered byte ranges (a parser warming its metadata):
/// sorted and merged across gaps under 64 KiB so the device fetches them in few
/// batches, at most `max_ranges` of them.
pub(crate) fn prefetch_spans(dev: &dyn ReadAt, mut spans: Vec<(u64, u64)>, max_ranges: usize) {
    spans.sort_unstable();
    let mut merged: Vec<(u64, u64)> = Vec::new();
    for (p, l) in spans {
        match merged.last_mut() {
            Some((mp, ml)) if p <= mp.saturating_add(*ml).saturating_add(64 << 10) => {
                *ml = (*ml).max(p.saturating_add(l) - *mp)
            }
            _ => merged.push((p, l)),
        }
    }
    tracing::debug!(
        "warming {} range(s), {} bytes",
        merged.len(),
        merged.iter().map(|m| m.1).sum::<u64>()
    );
    merged.truncate(max_ranges);
    dev.prefetch(&merged);
}

/// An `InvalidData` error naming the damaged structure.
pub(crate) fn corrupt(msg: impl Into<String>) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, msg.into())
}

/// A byte buffer as a volume, for fuzzing and tests of the parsers (the name they know).
pub use crate::readat::MemReader as MemVolume;

/// A [`MemVolume`] that says it prefetches, so parsers run their warm-ups on it.
struct Warmed(MemVolume);

impl ReadAt for Warmed {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.read_at(offset, buf)
    }

    fn size(&self) -> u64 {
        self.0.size()
    }

    fn prefetches(&self) -> bool {
        true
    }
}

/// Opens `data` as a volume and walks everything in it (directories, file data up to
/// `max_read` bytes each, links, xattrs), visiting each inode once, with the parsers'
/// background warm-ups running as under a mount (and waited for). Errors are fine; a
/// panic or a hang is a bug. Shared by the fuzz targets and the hostile-input tests.
pub fn walk_everything(data: Vec<u8>, max_read: usize) -> std::io::Result<usize> {
    walk_volume(Arc::new(Warmed(MemVolume(data))), max_read)
}

/// [`walk_everything`] on any volume (warm-ups run when it prefetches), such as a
/// partition sliced out of a disk, so the disk fuzz target walks what a mount shows.
pub fn walk_volume(vol: Arc<dyn ReadAt>, max_read: usize) -> std::io::Result<usize> {
    let opts = TreeOptions {
        budget: Some(crate::cache::Budget::new(16 << 20)),
        ..TreeOptions::default()
    };
    let walked = walk_tree(vol, &opts, max_read);
    crate::background::wait_idle();
    walked
}

/// The walk of [`walk_everything`], on a volume already wrapped.
fn walk_tree(vol: Arc<dyn ReadAt>, opts: &TreeOptions, max_read: usize) -> std::io::Result<usize> {
    let Some(tree) = open_tree(vol, opts)? else {
        return Ok(0);
    };
    let mut seen = std::collections::HashSet::new();
    let mut stack = vec![tree.root()];
    let mut buf = vec![0u8; max_read];
    while let Some(ino) = stack.pop() {
        if !seen.insert(ino) || seen.len() > 100_000 {
            continue;
        }
        let Ok(st) = tree.stat(ino) else { continue };
        let _ = tree.xattrs(ino);
        let _ = tree.xattr_names(ino);
        match st.kind {
            NodeKind::Dir => {
                if let Ok(entries) = tree.read_dir(ino) {
                    for e in entries.iter().take(10_000) {
                        let _ = tree.lookup(ino, &e.name);
                        stack.push(e.ino);
                    }
                }
            }
            NodeKind::File => {
                let _ = tree.read(ino, 0, &mut buf);
                let _ = tree.read(ino, st.size.saturating_sub(7), &mut buf[..7.min(max_read)]);
            }
            NodeKind::Symlink => {
                let _ = tree.read_link(ino);
            }
            _ => {}
        }
    }
    Ok(seen.len())
}
