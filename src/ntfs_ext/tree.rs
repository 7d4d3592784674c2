//! The one filesystem-tree trait the FUSE layer sees, implemented by every parser.

use std::io;
use std::sync::Arc;

/// File types a tree can hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NodeKind {
    /// Regular file.
    File,
    /// Directory.
    Dir,
    /// Symbolic link.
    Symlink,
    /// Character device node.
    CharDev,
    /// Block device node.
    BlockDev,
    /// Named pipe.
    Fifo,
    /// Unix socket.
    Socket,
}

impl NodeKind {
    /// The type in a Unix mode's S_IFMT bits (ext and XFS inodes keep Linux's).
    pub fn from_mode(mode: u16) -> Option<NodeKind> {
        Some(match mode & 0xF000 {
            0x8000 => NodeKind::File,
            0x4000 => NodeKind::Dir,
            0xA000 => NodeKind::Symlink,
            0x2000 => NodeKind::CharDev,
            0x6000 => NodeKind::BlockDev,
            0x1000 => NodeKind::Fifo,
            0xC000 => NodeKind::Socket,
            _ => return None,
        })
    }

    /// The type in a directory entry's file-type byte (ext's filetype and XFS's
    /// ftype use the same codes).
    pub fn from_dirent(ftype: u8) -> Option<NodeKind> {
        Some(match ftype {
            1 => NodeKind::File,
            2 => NodeKind::Dir,
            3 => NodeKind::CharDev,
            4 => NodeKind::BlockDev,
            5 => NodeKind::Fifo,
            6 => NodeKind::Socket,
            7 => NodeKind::Symlink,
            _ => return None,
        })
    }
}

/// Seconds and nanoseconds since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Timespec {
    /// Seconds (may be negative).
    pub secs: i64,
    /// Nanoseconds, below 1e9.
    pub nsecs: u32,
}

/// Attributes of one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stat {
    /// Stable inode number inside the tree (hard links share it), at most [`MAX_INO`].
    pub ino: u64,
    /// File type.
    pub kind: NodeKind,
    /// Permission bits (mode & 0o7777).
    pub perm: u16,
    /// Hard-link count.
    pub nlink: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Size in bytes.
    pub size: u64,
    /// Allocated 512-byte sectors.
    pub blocks: u64,
    /// Last access.
    pub atime: Timespec,
    /// Last modification.
    pub mtime: Timespec,
    /// Last status change.
    pub ctime: Timespec,
    /// Creation, where the filesystem records it.
    pub crtime: Timespec,
    /// Device number of a device node (Linux encoding).
    pub rdev: u32,
}

/// One directory entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    /// Name bytes (never containing `/` or NUL).
    pub name: Vec<u8>,
    /// Inode number inside the tree.
    pub ino: u64,
    /// Type, for readdir's d_type.
    pub kind: NodeKind,
}

/// Volume-wide numbers for statfs.
#[derive(Debug, Clone, Copy, Default)]
pub struct StatFs {
    /// Block size.
    pub bsize: u32,
    /// Total blocks.
    pub blocks: u64,
    /// Free blocks.
    pub bfree: u64,
    /// Free blocks an unprivileged user may take (root's reserve left out).
    pub bavail: u64,
    /// Total inodes.
    pub files: u64,
    /// Free inodes.
    pub ffree: u64,
    /// Longest name.
    pub namelen: u32,
}

/// How to present a volume.
#[derive(Debug, Clone, Default)]
pub struct TreeOptions {
    /// Show the volume as recorded, without replaying its journal (forensics).
    pub no_replay: bool,
    /// A name for log lines (point, device, partition).
    pub label: String,
    /// Owner shown for filesystems without Unix ownership (NTFS): the mounting user.
    pub uid: u32,
    /// Group shown for filesystems without Unix ownership.
    pub gid: u32,
    /// Show the volume's own metadata files (NTFS `$MFT`, ...) for forensics.
    pub show_system: bool,
    /// A byte budget the volume's caches share with every other volume opened (a
    /// mount opens one per point and partition browsed); `None`: per-volume caps only.
    pub budget: Option<std::sync::Arc<crate::cache::Budget>>,
    /// The other volumes of the same point, where a filesystem spanning devices (btrfs
    /// RAID) finds the rest of itself; empty when the volume stands alone.
    pub members: Members,
    /// Where the tree counts what it leaves out of listings as damaged.
    pub left_out: LeftOut,
}

/// A count of directory entries and blocks that trees left out of their listings
/// because the volume's own structures are damaged (each logged as it is met), so a
/// copy of a tree can say it is incomplete instead of succeeding quietly. Clones share
/// one count.
#[derive(Debug, Clone, Default)]
pub struct LeftOut(Arc<std::sync::atomic::AtomicU64>);

impl LeftOut {
    /// Counts `n` more entries or blocks left out.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    }

    /// How many were left out so far.
    pub fn count(&self) -> u64 {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Volumes a multi-device filesystem may find its other devices among.
#[derive(Clone, Default)]
pub struct Members(pub Vec<Arc<dyn crate::readat::ReadAt>>);

impl std::fmt::Debug for Members {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} member volume(s)", self.0.len())
    }
}

/// Highest inode number a tree may hand out: the mount numbers a tree's nodes
/// `tree id << 40 | inode`.
pub const MAX_INO: u64 = (1 << 40) - 1;

/// A read-only file tree. Implementations cache parsed metadata; every method may be
/// called from many threads at once.
pub trait FsTree: Send + Sync {
    /// Inode number of the root directory.
    fn root(&self) -> u64;
    /// Attributes of a node.
    fn stat(&self, ino: u64) -> io::Result<Stat>;
    /// The entries of a directory (without `.` and `..`), cached by the tree.
    fn read_dir(&self, ino: u64) -> io::Result<Arc<Vec<DirEntry>>>;
    /// Finds a name in a directory without rescanning it per lookup.
    fn lookup(&self, dir: u64, name: &[u8]) -> io::Result<Option<u64>>;
    /// Reads file data; returns fewer bytes only at the end of the file.
    fn read(&self, ino: u64, offset: u64, buf: &mut [u8]) -> io::Result<usize>;
    /// Hints that `len` bytes of a file at `offset` will be read soon, so the device
    /// below can decompress them ahead of a sequential reader; errors are left for the
    /// read to meet. The default does nothing (a tree that cannot map files cheaply).
    fn prefetch(&self, _ino: u64, _offset: u64, _len: u64) {}
    /// Where data (`data`, SEEK_DATA) or a hole (SEEK_HOLE) starts at or after
    /// `offset` in a file, so copies of sparse files (VM disks, databases) skip their
    /// holes; `None` at or past the end, and for data when only holes follow. The
    /// default takes a file as all data with its hole at the end (always true).
    fn seek(&self, ino: u64, offset: u64, data: bool) -> io::Result<Option<u64>> {
        let size = self.stat(ino)?.size;
        Ok((offset < size).then_some(if data { offset } else { size }))
    }
    /// Whether the tree may be dropped and opened again later: not while it has handed
    /// out inode numbers that only this instance knows (a reopened tree could give
    /// them to other nodes). By default every number comes from the volume.
    fn can_close(&self) -> bool {
        true
    }
    /// Target of a symbolic link.
    fn read_link(&self, ino: u64) -> io::Result<Vec<u8>>;
    /// Inode flags as `FS_IOC_GETFLAGS` reports them, so `lsattr` shows which files
    /// were immutable, append-only or excluded from dumps; `None` where the filesystem
    /// keeps no such flags.
    fn flags(&self, _ino: u64) -> io::Result<Option<u32>> {
        Ok(None)
    }
    /// Extended attributes as (full name, value).
    fn xattrs(&self, ino: u64) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>>;
    /// Names listxattr shows; trees with large or hidden attributes override it.
    fn xattr_names(&self, ino: u64) -> io::Result<Vec<Vec<u8>>> {
        Ok(self.xattrs(ino)?.into_iter().map(|(n, _)| n).collect())
    }
    /// One attribute's value (`None` when absent), without reading all the others.
    fn xattr(&self, ino: u64, name: &[u8]) -> io::Result<Option<Vec<u8>>> {
        Ok(self
            .xattrs(ino)?
            .into_iter()
            .find(|(n, _)| n.as_slice() == name)
            .map(|(_, v)| v))
    }
    /// Volume numbers.
    fn statfs(&self) -> StatFs;
}
