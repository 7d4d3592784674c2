//! Benchmark peer: the FUSE ceiling of the machine. One file of SIZE bytes served from
//! memory by fuser with the same threads, readahead and cache flags as `disksafe mount`.
//!
//! `cargo run --release --example memfuse -- MOUNTPOINT SIZE_MIB [SOURCE_MIB]` (SIGTERM
//! to stop). The file repeats SOURCE_MIB / 2 MiB of data (default 4): that much stays
//! in the CPU's caches, the best case; 1024 does not, as a real server's data does not,
//! and shows what the kernel's copy of replies costs from memory.

use std::ffi::OsStr;
use std::time::{Duration, UNIX_EPOCH};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, FopenFlags, Generation, INodeNo, KernelConfig,
    OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyEntry, ReplyOpen, Request,
};

struct Mem {
    size: u64,
    data: Vec<u8>,
}

fn attr(ino: u64, size: u64) -> FileAttr {
    FileAttr {
        ino: INodeNo(ino),
        size,
        blocks: size / 512,
        atime: UNIX_EPOCH,
        mtime: UNIX_EPOCH,
        ctime: UNIX_EPOCH,
        crtime: UNIX_EPOCH,
        kind: if ino == 1 {
            FileType::Directory
        } else {
            FileType::RegularFile
        },
        perm: if ino == 1 { 0o555 } else { 0o444 },
        nlink: 1,
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: 65536,
        flags: 0,
    }
}

const TTL: Duration = Duration::from_secs(3600);

impl fuser::Filesystem for Mem {
    fn init(&mut self, _r: &Request, c: &mut KernelConfig) -> std::io::Result<()> {
        let _ = c.set_max_readahead(1 << 20);
        let _ = c.add_capabilities(fuser::InitFlags::FUSE_MAX_PAGES);
        Ok(())
    }
    fn lookup(&self, _r: &Request, p: INodeNo, name: &OsStr, reply: ReplyEntry) {
        if p.0 == 1 && name == "file" {
            reply.entry(&TTL, &attr(2, self.size), Generation(0))
        } else {
            reply.error(Errno::ENOENT)
        }
    }
    fn getattr(&self, _r: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        reply.attr(&TTL, &attr(ino.0, if ino.0 == 1 { 0 } else { self.size }))
    }
    fn open(&self, _r: &Request, _i: INodeNo, _f: OpenFlags, reply: ReplyOpen) {
        reply.opened(FileHandle(0), FopenFlags::FOPEN_KEEP_CACHE)
    }
    fn read(
        &self,
        _r: &Request,
        _i: INodeNo,
        _fh: FileHandle,
        off: u64,
        size: u32,
        _f: OpenFlags,
        _l: Option<fuser::LockOwner>,
        reply: ReplyData,
    ) {
        let n = (size as u64).min(self.size.saturating_sub(off)) as usize;
        let o = (off % (self.data.len() as u64 / 2)) as usize;
        reply.data(&self.data[o..o + n])
    }
    fn readdir(
        &self,
        _r: &Request,
        _i: INodeNo,
        _fh: FileHandle,
        off: u64,
        mut reply: ReplyDirectory,
    ) {
        if off == 0 {
            let _ = reply.add(INodeNo(2), 1, FileType::RegularFile, "file");
        }
        reply.ok()
    }
}

fn main() -> std::io::Result<()> {
    let a: Vec<String> = std::env::args().collect();
    let size: u64 = a[2].parse::<u64>().unwrap() << 20;
    let source_mib: u32 = a.get(3).map_or(4, |s| s.parse().unwrap()).max(2);
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        fuser::MountOption::RO,
        fuser::MountOption::FSName("memfuse".into()),
    ];
    config.n_threads = Some(4);
    config.clone_fd = true;
    let fs = Mem {
        size,
        data: (0..(source_mib << 20)).map(|i| (i % 251) as u8).collect(),
    };
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
    let s = fuser::Session::new(fs, &a[1], &config)?;
    let bg = s.spawn()?;
    if let Ok(md) = std::fs::metadata(&a[1]) {
        use std::os::unix::fs::MetadataExt;
        let dev = md.dev();
        let _ = std::fs::write(
            format!(
                "/sys/class/bdi/{}:{}/read_ahead_kb",
                libc::major(dev),
                libc::minor(dev)
            ),
            "1024",
        );
    }
    unsafe {
        let mut sig = 0;
        libc::sigwait(&set, &mut sig);
    }
    bg.umount_and_join()
}
