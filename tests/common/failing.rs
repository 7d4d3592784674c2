//! A failing disk for tests: a file served by a FUSE server (direct I/O, so every
//! read reaches it as asked) answering an error for reads touching chosen ranges.

use std::ffi::OsStr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, FopenFlags, Generation, INodeNo, OpenFlags, ReplyAttr,
    ReplyData, ReplyDirectory, ReplyEntry, ReplyOpen, Request,
};

/// Sorted (offset, len) ranges a read must not touch.
pub type Bad = Arc<Mutex<Vec<(u64, u64)>>>;

pub struct Failing {
    pub data: Vec<u8>,
    pub bad: Bad,
    /// The error a read touching a bad range gets.
    pub errno: Arc<Mutex<Errno>>,
    /// Ranges that fail only their first N touching reads: (offset, len, N left).
    pub flaky: Arc<Mutex<Vec<(u64, u64, u32)>>>,
    pub log: ReadLog,
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
        blksize: 4096,
        flags: 0,
    }
}

const TTL: Duration = Duration::from_secs(1);

impl fuser::Filesystem for Failing {
    fn lookup(&self, _r: &Request, p: INodeNo, name: &OsStr, reply: ReplyEntry) {
        if p.0 == 1 && name == "disk" {
            reply.entry(&TTL, &attr(2, self.data.len() as u64), Generation(0))
        } else {
            reply.error(Errno::ENOENT)
        }
    }
    fn getattr(&self, _r: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let size = if ino.0 == 1 {
            0
        } else {
            self.data.len() as u64
        };
        reply.attr(&TTL, &attr(ino.0, size))
    }
    fn open(&self, _r: &Request, _i: INodeNo, _f: OpenFlags, reply: ReplyOpen) {
        reply.opened(FileHandle(0), FopenFlags::FOPEN_DIRECT_IO)
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
        let len = self.data.len() as u64;
        let end = (off + size as u64).min(len);
        if off >= end {
            return reply.data(&[]);
        }
        let mut touches = self
            .bad
            .lock()
            .unwrap()
            .iter()
            .any(|&(b, l)| b < end && off < b + l);
        for (b, l, left) in self.flaky.lock().unwrap().iter_mut() {
            if *b < end && off < *b + *l && *left > 0 {
                *left -= 1;
                touches = true;
            }
        }
        self.log.lock().unwrap().push((off, size, touches));
        if touches {
            reply.error(*self.errno.lock().unwrap())
        } else {
            reply.data(&self.data[off as usize..end as usize])
        }
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
            let _ = reply.add(INodeNo(2), 1, FileType::RegularFile, "disk");
        }
        reply.ok()
    }
}

/// Serves `data` as `DIR/disk` (the returned session unmounts when dropped), failing
/// reads that touch `bad` with EIO.
pub fn serve_failing(dir: &Path, data: Vec<u8>, bad: &[(u64, u64)]) -> fuser::BackgroundSession {
    serve_flaky(dir, data, bad, &[])
}

/// As [`serve_failing`], with `flaky` ranges (offset, len, n) that fail only the
/// first n reads touching them, as a failing disk's weak sectors do.
pub fn serve_flaky(
    dir: &Path,
    data: Vec<u8>,
    bad: &[(u64, u64)],
    flaky: &[(u64, u64, u32)],
) -> fuser::BackgroundSession {
    serve_logged(dir, data, bad, flaky).0
}

/// Every read a served disk was asked, in order: (offset, size, whether it failed).
pub type ReadLog = Arc<Mutex<Vec<(u64, u32, bool)>>>;

/// As [`serve_flaky`], also handing back the log of the reads asked.
pub fn serve_logged(
    dir: &Path,
    data: Vec<u8>,
    bad: &[(u64, u64)],
    flaky: &[(u64, u64, u32)],
) -> (fuser::BackgroundSession, ReadLog) {
    let mut config = fuser::Config::default();
    config.mount_options = vec![fuser::MountOption::RO];
    let log = ReadLog::default();
    let session = fuser::Session::new(
        Failing {
            data,
            bad: Arc::new(Mutex::new(bad.to_vec())),
            errno: Arc::new(Mutex::new(Errno::EIO)),
            flaky: Arc::new(Mutex::new(flaky.to_vec())),
            log: log.clone(),
        },
        dir,
        &config,
    )
    .unwrap()
    .spawn()
    .unwrap();
    (session, log)
}

/// A disk to back up while it fails: its name, its bytes, the ranges reads fail in.
pub type FailingDisk<'a> = (&'a str, Vec<u8>, Vec<(u64, u64)>);

/// Backs up into `safe` one new point holding each of `failing` (NAME, bytes, ranges
/// that fail: served as failing disks under `dir` while the backup runs) and the
/// `plain` NAME=PATH sources, with `--skip-unreadable`; asserts that it succeeds.
pub fn backup_failing(safe: &Path, dir: &Path, failing: Vec<FailingDisk>, plain: &[String]) {
    let mut servers = Vec::new();
    let mut args = vec![
        "backup".to_string(),
        safe.to_str().unwrap().to_string(),
        "--skip-unreadable".to_string(),
    ];
    for (name, data, bad) in failing {
        let mnt = dir.join(format!("failing-{name}-{}", rand::random::<u32>()));
        std::fs::create_dir(&mnt).unwrap();
        servers.push(serve_failing(&mnt, data, &bad));
        args.push(format!("{name}={}", mnt.join("disk").display()));
    }
    args.extend(plain.iter().cloned());
    let args: Vec<&str> = args.iter().map(|a| a.as_str()).collect();
    let o = super::ds(&args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    drop(servers);
}
