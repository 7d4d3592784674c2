//! Helpers shared by the integration tests: run the real binary, make images, hash.
#![allow(dead_code)]

pub mod failing;

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use rand::Rng;
use sha2::{Digest, Sha256};

/// Path of the built `disksafe` binary.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_disksafe"))
}

/// Runs `disksafe ARGS` and returns its output.
pub fn ds(args: &[&str]) -> Output {
    ds_logging(args, "warn")
}

/// Runs `disksafe ARGS` with `RUST_LOG` set to `filter` (a mount's server inherits it).
pub fn ds_logging(args: &[&str], filter: &str) -> Output {
    Command::new(bin())
        .args(args)
        .env("RUST_LOG", filter)
        .output()
        .expect("run disksafe")
}

/// Runs `disksafe ARGS`, asserting success; returns stdout.
pub fn ok(args: &[&str]) -> String {
    ok_logging(args, "warn")
}

/// As [`ok`], with `RUST_LOG` set to `filter`.
pub fn ok_logging(args: &[&str], filter: &str) -> String {
    let o = ds_logging(args, filter);
    assert!(
        o.status.success(),
        "disksafe {args:?} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

/// Runs `disksafe ARGS`, asserting failure; returns stderr.
pub fn fails(args: &[&str]) -> String {
    let o = ds(args);
    assert!(
        !o.status.success(),
        "disksafe {args:?} should have failed; stdout: {}",
        String::from_utf8_lossy(&o.stdout)
    );
    String::from_utf8(o.stderr).unwrap()
}

/// The point id a backup printed on its last stdout line.
pub fn backup(args: &[&str]) -> i64 {
    let mut a = vec!["backup"];
    a.extend_from_slice(args);
    let out = ok(&a);
    out.lines()
        .last()
        .unwrap()
        .trim()
        .parse()
        .expect("point id")
}

/// sha256 of a whole file, hex.
pub fn sha256_file(p: &Path) -> String {
    let mut f = File::open(p).unwrap();
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    hex(&h.finalize())
}

/// sha256 of a byte slice, hex.
pub fn sha256(b: &[u8]) -> String {
    hex(&Sha256::digest(b))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A file of `size` bytes: half random, half compressible text, some zero stretches.
pub fn make_image(p: &Path, size: u64, rng: &mut impl Rng) {
    let f = File::create(p).unwrap();
    f.set_len(size).unwrap();
    let mut off = 0u64;
    while off < size {
        let n = rng.gen_range(4096..512 * 1024).min(size - off);
        let mut buf = vec![0u8; n as usize];
        match rng.gen_range(0..3) {
            0 => rng.fill_bytes(&mut buf),
            1 => {
                for (i, b) in buf.iter_mut().enumerate() {
                    *b = b"the quick brown fox jumps over the lazy dog\n"[(i + off as usize) % 44];
                }
            }
            _ => {} // hole
        }
        f.write_all_at(&buf, off).unwrap();
        off += n;
    }
}

/// Overwrites `count` random ranges of random sizes; returns them as (offset, len).
pub fn mutate(p: &Path, count: usize, max_len: u64, rng: &mut impl Rng) -> Vec<(u64, u64)> {
    let f = OpenOptions::new().write(true).open(p).unwrap();
    let size = f.metadata().unwrap().len();
    let mut out = Vec::new();
    for _ in 0..count {
        let len = rng.gen_range(1..=max_len).min(size);
        let off = rng.gen_range(0..=size - len);
        let mut buf = vec![0u8; len as usize];
        if rng.gen_bool(0.2) {
            // leave zeros: a block may turn to all-zero
        } else {
            rng.fill_bytes(&mut buf);
        }
        f.write_all_at(&buf, off).unwrap();
        out.push((off, len));
    }
    out
}

/// XORs one byte of a file in place with `mask`: the damage the corruption tests make.
pub fn flip_byte(p: &Path, offset: u64, mask: u8) {
    let f = OpenOptions::new().read(true).write(true).open(p).unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, offset).unwrap();
    b[0] ^= mask;
    f.write_all_at(&b, offset).unwrap();
}

/// Total bytes of the pack files in a safe.
pub fn pack_bytes(safe: &Path) -> u64 {
    std::fs::read_dir(safe.join("packs"))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum()
}

/// `bytes_added` of a point, from `points --json`.
pub fn bytes_added(safe: &Path, point: i64) -> u64 {
    let v: serde_json::Value =
        serde_json::from_str(&ok(&["points", safe.to_str().unwrap(), "--json"])).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == point)
        .expect("point listed")["bytes_added"]
        .as_u64()
        .unwrap()
}

/// Restores DEVICE at POINT and returns the sha256 of the output.
pub fn restored_sha(safe: &Path, point: &str, device: &str, dir: &Path) -> String {
    let out = dir.join(format!("restore-{point}-{device}"));
    ok(&[
        "restore",
        safe.to_str().unwrap(),
        point,
        device,
        out.to_str().unwrap(),
    ]);
    let s = sha256_file(&out);
    std::fs::remove_file(&out).unwrap();
    s
}

/// True when running as root (mounts, loop devices and tmpfs need it).
/// What `df` reads: statvfs's (fragment size, blocks, free, available, inodes, free
/// inodes).
pub fn statvfs(p: &Path) -> [u64; 6] {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(
        unsafe { libc::statvfs(c.as_ptr(), &mut st) },
        0,
        "statvfs {p:?}"
    );
    [
        st.f_frsize,
        st.f_blocks,
        st.f_bfree,
        st.f_bavail,
        st.f_files,
        st.f_ffree,
    ]
}

/// Whether `tool` can be run here; if not, says that `test` skips and which package
/// would bring the tool (a fresh machine has only what `.ci/run` installs).
pub fn have_tool(tool: &str, package: &str, test: &str) -> bool {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        eprintln!("SKIP {test}: needs {tool} (package {package})");
    }
    found
}

/// Writes a partition table with `sfdisk`, from its script.
pub fn sfdisk_script(img: &Path, script: &str) {
    let mut c = Command::new("sfdisk")
        .args(["-q", img.to_str().unwrap()])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("sfdisk (package fdisk) is needed");
    use std::io::Write;
    c.stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    assert!(c.wait().unwrap().success(), "sfdisk {script:?}");
}

/// Sets a file's (a link's own) atime and mtime, each (seconds, nanoseconds); seconds
/// may be before 1970.
pub fn set_times(p: &Path, atime: (i64, i64), mtime: (i64, i64)) {
    let t = [
        libc::timespec {
            tv_sec: atime.0,
            tv_nsec: atime.1,
        },
        libc::timespec {
            tv_sec: mtime.0,
            tv_nsec: mtime.1,
        },
    ];
    let c = CString::new(p.as_os_str().as_bytes()).unwrap();
    let rc = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            t.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    assert_eq!(rc, 0, "utimensat {}", p.display());
}

/// Loop devices over parts of image files, detached when dropped, so a failing test
/// leaves none behind.
#[derive(Default)]
pub struct Loops {
    devs: Vec<String>,
}

impl Loops {
    /// Attaches `len` bytes of `img` from `offset`; `None` without loop devices.
    pub fn attach(&mut self, img: &Path, offset: u64, len: u64) -> Option<String> {
        let o = Command::new("losetup")
            .args([
                "-f",
                "--show",
                "-o",
                &offset.to_string(),
                "--sizelimit",
                &len.to_string(),
            ])
            .arg(img)
            .output()
            .ok()
            .filter(|o| o.status.success())?;
        let d = String::from_utf8_lossy(&o.stdout).trim().to_string();
        self.devs.push(d.clone());
        Some(d)
    }
}

impl Drop for Loops {
    fn drop(&mut self) {
        for d in &self.devs {
            // What was written through the device reaches its image before the test
            // reads the image: a close flushes only when it is the last one, and a
            // parallel test's LVM or blkid scan may hold the device open.
            if let Ok(f) = File::open(d) {
                let _ = f.sync_all();
            }
            let _ = Command::new("losetup").args(["-d", d]).status();
        }
    }
}

/// Writes `data` at byte `at` of block device (or file) `dev` and flushes it, so the
/// bytes reach the image behind a loop device even while another process (a
/// parallel test's LVM scan) holds the device open.
pub fn write_dev(dev: &str, at: u64, data: &[u8]) {
    use std::os::unix::fs::FileExt;
    let f = File::options().write(true).open(dev).unwrap();
    f.write_all_at(data, at).unwrap();
    f.sync_all().unwrap();
}

pub fn is_root() -> bool {
    unsafe { libc::geteuid() == 0 }
}

/// [`fuse_available`], saying why `test` skips when it is not.
pub fn have_fuse(test: &str) -> bool {
    let ok = fuse_available();
    if !ok {
        eprintln!("SKIP {test}: FUSE is not available here");
    }
    ok
}

/// True when FUSE mounts can work here (a /dev/fuse and root or fusermount3).
pub fn fuse_available() -> bool {
    // Without root, the mount needs both /dev/fuse open to this user (some machines
    // make it 0600) and the setuid fusermount3 to mount it.
    Path::new("/dev/fuse").exists()
        && (is_root()
            || (std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/fuse")
                .is_ok()
                && Command::new("fusermount3").arg("-V").output().is_ok()))
}

/// A live `disksafe mount`, unmounted on drop.
pub struct Mounted {
    /// The mount point.
    pub dir: PathBuf,
    /// The server's log file.
    pub log: PathBuf,
}

impl Mounted {
    /// Mounts SAFE at a new directory under `base` with extra flags.
    pub fn new(safe: &Path, base: &Path, extra: &[&str]) -> Mounted {
        Self::logging(safe, base, extra, "warn")
    }

    /// As [`Mounted::new`], the server logging what `filter` (`RUST_LOG`) lets through.
    pub fn logging(safe: &Path, base: &Path, extra: &[&str], filter: &str) -> Mounted {
        let dir = base.join(format!("mnt{}", rand::random::<u32>()));
        std::fs::create_dir(&dir).unwrap();
        let log = dir.with_extension("log");
        let mut args = vec![
            "mount",
            safe.to_str().unwrap(),
            dir.to_str().unwrap(),
            "--log",
            log.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        ok_logging(&args, filter);
        Mounted { dir, log }
    }

    /// The server's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let o = ds(&["umount", self.dir.to_str().unwrap()]);
        if !o.status.success() {
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
    }
}

/// Partitions as `sfdisk -J` sees them: (number, start byte, length in bytes).
pub fn sfdisk_parts(img: &Path) -> Vec<(u32, u64, u64)> {
    let o = Command::new("sfdisk")
        .arg("-J")
        .arg(img)
        .output()
        .expect("sfdisk");
    assert!(
        o.status.success(),
        "sfdisk -J {}: {}",
        img.display(),
        String::from_utf8_lossy(&o.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let pt = &v["partitiontable"];
    let ss = pt["sectorsize"].as_u64().unwrap_or(512);
    let dev = pt["device"].as_str().unwrap().to_string();
    pt["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let node = p["node"].as_str().unwrap();
            let num: u32 = node[dev.len()..].trim_start_matches('p').parse().unwrap();
            (
                num,
                p["start"].as_u64().unwrap() * ss,
                p["size"].as_u64().unwrap() * ss,
            )
        })
        .collect()
}

/// sha256 of `len` bytes at `start` of a file.
pub fn sha256_slice(p: &Path, start: u64, len: u64) -> String {
    let f = File::open(p).unwrap();
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut off = 0;
    while off < len {
        let n = (len - off).min(buf.len() as u64) as usize;
        f.read_exact_at(&mut buf[..n], start + off).unwrap();
        h.update(&buf[..n]);
        off += n as u64;
    }
    hex(&h.finalize())
}

/// Every file under `root` as (relative path, sha256 or link target or "dir").
pub fn tree_digest(root: &Path) -> std::collections::BTreeMap<String, String> {
    let mut out = std::collections::BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().to_string();
            if rel == "lost+found" {
                continue;
            }
            let ft = e.file_type().unwrap();
            let v = if ft.is_dir() {
                stack.push(p.clone());
                "dir".to_string()
            } else if ft.is_symlink() {
                format!("-> {}", std::fs::read_link(&p).unwrap().display())
            } else {
                sha256_file(&p)
            };
            out.insert(rel, v);
        }
    }
    out
}

/// Asserts two tree digests are equal, naming only the entries that differ.
pub fn same_tree(
    got: &std::collections::BTreeMap<String, String>,
    want: &std::collections::BTreeMap<String, String>,
    what: &str,
) {
    let diff: Vec<String> = got
        .iter()
        .filter(|(k, v)| want.get(*k) != Some(v))
        .map(|(k, _)| format!("+{k}"))
        .chain(
            want.iter()
                .filter(|(k, v)| got.get(*k) != Some(v))
                .map(|(k, _)| format!("-{k}")),
        )
        .collect();
    assert!(diff.is_empty(), "{what}: {diff:?}");
}

/// A safe at `dir/safe` whose point 1 is device `vol`: a 32 MiB ext4 of `src` that
/// mkfs made at `dir/fs.img`.
pub fn ext4_point(dir: &Path, src: &Path) -> PathBuf {
    let img = dir.join("fs.img");
    File::create(&img).unwrap().set_len(32 << 20).unwrap();
    assert!(
        run("mkfs.ext4", &["-q", "-F", "-d", s(src), s(&img)]),
        "mkfs.ext4"
    );
    let safe = dir.join("safe");
    backup(&[s(&safe), &format!("vol={}", s(&img))]);
    safe
}

/// Creates `root` with the file sizes every tree test carries: `big.bin` (3 MiB of
/// random bytes), `tiny` (one byte) and `empty`.
pub fn size_extremes(root: &Path, rng: &mut impl Rng) {
    std::fs::create_dir_all(root).unwrap();
    let mut big = vec![0u8; 3 << 20];
    rng.fill(&mut big[..]);
    std::fs::write(root.join("big.bin"), &big).unwrap();
    std::fs::write(root.join("tiny"), b"x").unwrap();
    std::fs::write(root.join("empty"), b"").unwrap();
}

/// A generated tree of `files` files at `src` ([`make_tree`]) and an ext4 image of it
/// of `size` bytes at `img`, made by `mkfs.ext4 -d`.
pub fn ext4_image(src: &Path, img: &Path, files: usize, size: u64, rng: &mut impl Rng) {
    make_tree(src, files, rng);
    File::create(img).unwrap().set_len(size).unwrap();
    let o = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d"])
        .arg(src)
        .arg(img)
        .output()
        .expect("mkfs.ext4 (package e2fsprogs) is needed");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// Writes a small tree of files with random contents under `root`.
pub fn make_tree(root: &Path, files: usize, rng: &mut impl Rng) {
    std::fs::create_dir_all(root.join("sub/deeper")).unwrap();
    for i in 0..files {
        let dir = match i % 3 {
            0 => root.to_path_buf(),
            1 => root.join("sub"),
            _ => root.join("sub/deeper"),
        };
        let mut data = vec![0u8; rng.gen_range(0..200_000)];
        rng.fill_bytes(&mut data);
        std::fs::write(dir.join(format!("file {i}.bin")), &data).unwrap();
    }
    std::os::unix::fs::symlink("sub/deeper", root.join("link")).unwrap();
}

/// True when mkntfs, ntfs-3g and FUSE are usable; prints why not otherwise.
pub fn ntfs_tools() -> bool {
    if !is_root() || !fuse_available() {
        eprintln!("SKIP: NTFS tests need root and /dev/fuse (for ntfs-3g and disksafe mounts)");
        return false;
    }
    for t in ["mkntfs", "ntfs-3g", "ntfsinfo", "ntfscat"] {
        if Command::new("sh")
            .args(["-c", &format!("command -v {t}")])
            .output()
            .map(|o| !o.status.success())
            .unwrap_or(true)
        {
            eprintln!("SKIP: {t} (package ntfs-3g) is not installed");
            return false;
        }
    }
    true
}

/// An ntfs-3g mount kept in the foreground, so unmounting waits for its last write.
pub struct Ntfs3g {
    /// Where it is mounted.
    pub dir: PathBuf,
    child: Option<Child>,
}

impl Ntfs3g {
    /// Mounts IMG at DIR with ntfs-3g options OPTS and waits until it is live.
    pub fn mount(img: &Path, dir: &Path, opts: &str) -> Ntfs3g {
        std::fs::create_dir_all(dir).unwrap();
        let child = Command::new("ntfs-3g")
            .arg("-o")
            .arg(format!("no_detach,{opts}"))
            .arg(img)
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let m = Ntfs3g {
            dir: dir.to_path_buf(),
            child: Some(child),
        };
        for _ in 0..200 {
            let mi = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
            if mi.lines().any(|l| l.split(' ').nth(4) == dir.to_str()) {
                return m;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        panic!("ntfs-3g did not mount {}", img.display());
    }
}

impl Drop for Ntfs3g {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.dir).status();
        if let Some(mut c) = self.child.take() {
            let _ = c.wait();
        }
    }
}

/// Makes an NTFS image with mkntfs and fills it through a read-write ntfs-3g mount.
pub fn make_ntfs(img: &Path, size: u64, sector: u32, cluster: u32, fill: impl FnOnce(&Path)) {
    File::create(img).unwrap().set_len(size).unwrap();
    let o = Command::new("mkntfs")
        .args([
            "-F",
            "-q",
            "-Q",
            "-s",
            &sector.to_string(),
            "-c",
            &cluster.to_string(),
        ])
        .arg(img)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "mkntfs: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let m = Ntfs3g::mount(img, &img.with_extension("rw"), "streams_interface=windows");
    fill(&m.dir);
}

/// Sets an xattr on a path (not following symlinks), failing the test on error.
pub fn set_xattr(p: &Path, name: &str, value: &[u8]) {
    let c = CString::new(p.as_os_str().as_bytes()).unwrap();
    let n = CString::new(name).unwrap();
    let r = unsafe {
        libc::lsetxattr(
            c.as_ptr(),
            n.as_ptr(),
            value.as_ptr() as *const libc::c_void,
            value.len(),
            0,
        )
    };
    assert_eq!(
        r,
        0,
        "setxattr {name} on {}: {}",
        p.display(),
        std::io::Error::last_os_error()
    );
}

/// One xattr's value (not following symlinks), or the errno.
pub fn get_xattr(p: &Path, name: &[u8]) -> Result<Vec<u8>, i32> {
    let c = CString::new(p.as_os_str().as_bytes()).unwrap();
    let n = CString::new(name).unwrap();
    let mut v = vec![0u8; 65536];
    let r = unsafe {
        libc::lgetxattr(
            c.as_ptr(),
            n.as_ptr(),
            v.as_mut_ptr() as *mut libc::c_void,
            v.len(),
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error().raw_os_error().unwrap());
    }
    v.truncate(r as usize);
    Ok(v)
}

/// The xattr names of a path (not following symlinks), sorted.
pub fn list_xattrs(p: &Path) -> Vec<Vec<u8>> {
    let c = CString::new(p.as_os_str().as_bytes()).unwrap();
    let mut v = vec![0u8; 1 << 20];
    let r = unsafe { libc::llistxattr(c.as_ptr(), v.as_mut_ptr() as *mut libc::c_char, v.len()) };
    if r <= 0 {
        return Vec::new();
    }
    let mut names: Vec<Vec<u8>> = v[..r as usize]
        .split(|&b| b == 0)
        .filter(|n| !n.is_empty())
        .map(|n| n.to_vec())
        .collect();
    names.sort();
    names
}

/// The file tree of an image file, opened as the mount opens a device's.
pub fn open_image_tree(img: &Path) -> std::sync::Arc<dyn disksafe::ntfs_ext::FsTree> {
    let dev = std::sync::Arc::new(disksafe::readat::FileReader::open(img).unwrap());
    disksafe::ntfs_ext::open_tree(dev, &Default::default())
        .unwrap()
        .expect("the image holds a file tree")
}

/// Asserts that a read read something and that every device range it read lies
/// inside one of the ranges prefetch asked for.
pub fn assert_reads_asked(asked: &[Span], reads: &[Span]) {
    assert!(!reads.is_empty(), "the read read nothing");
    for &(at, n) in reads {
        assert!(
            asked.iter().any(|&(o, l)| o <= at && at + n <= o + l),
            "read of {n} bytes at {at} not asked for: {asked:?}"
        );
    }
}

/// An image file as a device that records the ranges it is asked to prefetch, to check
/// what a parser asks for against another tool's map of the file, or against what it
/// then reads.
struct Recorder {
    file: disksafe::readat::FileReader,
    asked: std::sync::Mutex<Vec<(u64, u64)>>,
    reads: std::sync::Mutex<Vec<(u64, u64)>>,
}

impl Recorder {
    fn open(img: &Path) -> std::sync::Arc<Recorder> {
        std::sync::Arc::new(Recorder {
            file: disksafe::readat::FileReader::open(img).unwrap(),
            asked: Default::default(),
            reads: Default::default(),
        })
    }
}

/// The device ranges the file tree of `img` asks for when told that `len` bytes of the
/// file at path `name` (from the root, `/`-separated) at `offset` will be read soon (what it asks while opening the
/// tree and looking the file up is left out).
pub fn prefetch_asks(img: &Path, name: &[u8], offset: u64, len: u64) -> Vec<(u64, u64)> {
    prefetch_asks_then_reads(img, name, offset, len).0
}

/// A device range: byte offset and length.
pub type Span = (u64, u64);

/// The same, and then the device ranges the tree reads to read that range of the file.
pub fn prefetch_asks_then_reads(
    img: &Path,
    name: &[u8],
    offset: u64,
    len: u64,
) -> (Vec<Span>, Vec<Span>) {
    let dev = Recorder::open(img);
    let tree = disksafe::ntfs_ext::open_tree(dev.clone(), &Default::default())
        .unwrap()
        .unwrap();
    let ino = name.split(|&b| b == b'/').fold(tree.root(), |dir, part| {
        tree.lookup(dir, part).unwrap().unwrap()
    });
    tree.stat(ino).unwrap();
    dev.asked.lock().unwrap().clear();
    tree.prefetch(ino, offset, len);
    let asked = dev.asked.lock().unwrap().clone();
    dev.reads.lock().unwrap().clear();
    let mut buf = vec![0u8; len as usize];
    tree.read(ino, offset, &mut buf).unwrap();
    let reads = dev.reads.lock().unwrap().clone();
    (asked, reads)
}

impl disksafe::readat::ReadAt for Recorder {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<usize> {
        self.reads.lock().unwrap().push((offset, buf.len() as u64));
        self.file.read_at(offset, buf)
    }
    fn size(&self) -> u64 {
        self.file.size()
    }
    fn prefetch(&self, ranges: &[(u64, u64)]) {
        self.asked.lock().unwrap().extend_from_slice(ranges);
    }
}

/// SEEK_DATA (`data`) or SEEK_HOLE on an open file through the kernel; `None` for
/// ENXIO (no data after `offset`, or `offset` past the end).
pub fn lseek(f: &std::fs::File, offset: u64, data: bool) -> Option<u64> {
    use std::os::fd::AsRawFd;
    let whence = if data {
        libc::SEEK_DATA
    } else {
        libc::SEEK_HOLE
    };
    // SAFETY: lseek on an open descriptor; no memory is passed.
    let r = unsafe { libc::lseek(f.as_raw_fd(), offset as i64, whence) };
    if r < 0 {
        let e = std::io::Error::last_os_error();
        assert_eq!(e.raw_os_error(), Some(libc::ENXIO), "lseek({offset}): {e}");
        return None;
    }
    Some(r as u64)
}

/// Data extents (start, end) of a file of `len` bytes as SEEK_DATA / SEEK_HOLE walk
/// them with `seek` (offset, data? → answer, `None` for ENXIO).
pub fn seek_extents(len: u64, seek: impl Fn(u64, bool) -> Option<u64>) -> Vec<(u64, u64)> {
    let mut extents = Vec::new();
    let mut o = 0;
    while o < len {
        let Some(d) = seek(o, true) else { break };
        let h = seek(d, false).expect("a hole after data");
        assert!(h > d && d >= o, "data {d}, hole {h} from {o}");
        extents.push((d, h));
        o = h;
    }
    extents
}

/// (SEEK_DATA, SEEK_HOLE) answers of `seek` at each probe.
pub fn seek_answers(
    probes: &[u64],
    seek: impl Fn(u64, bool) -> Option<u64>,
) -> Vec<(Option<u64>, Option<u64>)> {
    probes
        .iter()
        .map(|&p| (seek(p, true), seek(p, false)))
        .collect()
}

// ---- Kernel-oracle views, shared by the XFS and btrfs tests ----

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Runs a command; whether it succeeded.
pub fn run(cmd: &str, args: &[&str]) -> bool {
    Command::new(cmd)
        .args(args)
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Loop-mounts `img` (filesystem `fstype`) with `opts`, runs `f`, unmounts; `None` when the kernel refuses.
pub fn kernel_mount<T>(
    fstype: &str,
    img: &Path,
    mnt: &Path,
    opts: &str,
    f: impl FnOnce(&Path) -> T,
) -> Option<T> {
    std::fs::create_dir_all(mnt).unwrap();
    if !run("mount", &["-t", fstype, "-o", opts, s(img), s(mnt)]) {
        return None;
    }
    // Unmounted however `f` ends, so a failing test leaves no mount behind.
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            // A busy answer (a reference the kernel drops a moment later) is tried
            // again; what umount said last is shown if it never succeeds.
            for _ in 0..20 {
                match Command::new("umount").arg(self.0).output() {
                    Ok(o) if o.status.success() => return,
                    Ok(o) => eprintln!(
                        "umount {}: {}",
                        self.0.display(),
                        String::from_utf8_lossy(&o.stderr).trim()
                    ),
                    Err(e) => eprintln!("umount: {e}"),
                }
                std::thread::sleep(std::time::Duration::from_millis(250));
            }
        }
    }
    let guard = Unmount(mnt);
    let r = f(mnt);
    drop(guard);
    assert!(
        !run("mountpoint", &["-q", s(mnt)]),
        "{} still mounted",
        mnt.display()
    );
    Some(r)
}

/// Inode flags as lsattr reads them; `None` where the file does not answer.
pub fn flags(p: &Path) -> Option<u32> {
    let f = File::options()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW)
        .open(p)
        .ok()?;
    let mut v: libc::c_long = 0;
    let rc = unsafe { libc::ioctl(f.as_raw_fd(), libc::FS_IOC_GETFLAGS, &mut v) };
    (rc == 0).then_some(v as u32)
}

/// Data and hole starts at a few offsets, as lseek answers them.
pub fn seeks(p: &Path, len: u64) -> Vec<i64> {
    let f = File::open(p).unwrap();
    let mut out = Vec::new();
    for at in [0, 4096, 8191, 300 << 10, len / 2, len.saturating_sub(1)] {
        for whence in [libc::SEEK_DATA, libc::SEEK_HOLE] {
            out.push(unsafe { libc::lseek(f.as_raw_fd(), at as i64, whence) });
        }
    }
    out
}

/// Everything the kernel-oracle tests compare, per path under `root`: metadata,
/// link targets, bytes, holes, inode flags and xattrs.
pub fn view(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().to_string();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let ft = m.file_type();
            let mut v = format!(
                "mode {:o} nlink {} owner {}:{} size {} blocks {} mtime {}.{} atime {}.{} ctime {}.{} rdev {:x}",
                m.mode(),
                m.nlink(),
                m.uid(),
                m.gid(),
                m.size(),
                m.blocks(),
                m.mtime(),
                m.mtime_nsec(),
                m.atime(),
                m.atime_nsec(),
                m.ctime(),
                m.ctime_nsec(),
                m.rdev()
            );
            if ft.is_dir() {
                stack.push(p.clone());
            } else if ft.is_symlink() {
                v += &format!(" -> {}", std::fs::read_link(&p).unwrap().display());
            } else if ft.is_file() {
                // Holes first: the kernel counts unwritten extents as data once their
                // pages are cached, as reading them would leave them.
                let holes = seeks(&p, m.size());
                v += &format!(" seeks {holes:?} sha {}", sha256_file(&p));
            }
            if !ft.is_fifo() && !ft.is_socket() && !ft.is_char_device() && !ft.is_block_device() {
                v += &format!(" flags {:?}", flags(&p));
            }
            let mut names = list_xattrs(&p);
            names.sort();
            for n in names {
                let val = get_xattr(&p, &n).unwrap_or_default();
                v += &format!(" xattr {}={}", String::from_utf8_lossy(&n), sha256(&val));
            }
            out.insert(rel, v);
        }
    }
    out
}

/// The paths where `got` differs from the kernel's `want` (each pair of values passed
/// through `mask(path, value, kernel's value)` first), one description each.
pub fn view_diffs(
    want: &BTreeMap<String, String>,
    got: &BTreeMap<String, String>,
    mask: impl Fn(&str, &str, &str) -> String,
) -> Vec<String> {
    want.iter()
        .filter(|(p, v)| got.get(*p).map(|g| mask(p, g, v)) != Some(mask(p, v, v)))
        .map(|(p, v)| format!("{p}:\n  kernel   {v}\n  disksafe {:?}", got.get(p)))
        .chain(
            got.keys()
                .filter(|p| !want.contains_key(*p))
                .map(|p| format!("{p}: only in disksafe")),
        )
        .collect()
}

/// Asserts the mount's view of `files` equals the kernel's `want`, naming each path
/// that differs (and showing the server's log if the walk itself fails).
pub fn same_view(want: &BTreeMap<String, String>, files: &Path, m: &Mounted, name: &str) {
    same_view_masked(want, files, m, name, |_, v, _| v.to_string());
}

/// [`same_view`], each path's two values first passed through `mask(path, value,
/// kernel's value)`, for what the kernel makes up as it mounts (times it stamps).
pub fn same_view_masked(
    want: &BTreeMap<String, String>,
    files: &Path,
    m: &Mounted,
    name: &str,
    mask: impl Fn(&str, &str, &str) -> String,
) {
    let got = std::panic::catch_unwind(|| view(files)).unwrap_or_else(|_| {
        panic!(
            "{name}: walking the mount failed; its log:\n{}",
            m.log_text()
        )
    });
    let diffs = view_diffs(want, &got, mask);
    assert!(
        diffs.is_empty(),
        "{name}: {} differences:\n{}",
        diffs.len(),
        diffs.join("\n")
    );
}

/// Fills a mounted volume with what every kernel-oracle test checks: a generated tree,
/// a directory of 3000 entries, a file with every other 4 KiB of `frag_len` punched
/// out, preallocated and sparse files, short and long symlinks, a hard link, device
/// nodes, a fifo and a socket, xattrs (short, 40 of them, one of 3000 bytes, trusted
/// and security), ACLs, inode flags (`+d +A +S +a`, and `+i` on `frozen`), times with
/// nanoseconds and before 1970. Each filesystem's test adds its own layouts.
pub fn fill_posix(root: &Path, frag_len: usize, rng: &mut impl Rng) {
    make_tree(&root.join("tree"), 60, rng);
    // A directory of 3000 entries: leaf and node formats, free-index blocks.
    let many = root.join("many");
    std::fs::create_dir(&many).unwrap();
    for i in 0..3000 {
        std::fs::write(
            many.join(format!("entry-with-a-longer-name-{i:05}")),
            i.to_string(),
        )
        .unwrap();
    }
    // Every other 4 KiB punched out: many extents (XFS: a block-map btree).
    let mut data = vec![0u8; frag_len];
    rng.fill(&mut data[..]);
    let frag = root.join("fragmented");
    std::fs::write(&frag, &data).unwrap();
    let f = File::options().write(true).open(&frag).unwrap();
    for k in (0..frag_len as i64).step_by(8192) {
        let rc = unsafe {
            libc::fallocate(
                f.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                k + 4096,
                4096,
            )
        };
        assert_eq!(rc, 0, "punch");
    }
    drop(f);
    // Preallocated (unwritten) space with one written block inside; a sparse file.
    let pre = File::create(root.join("prealloc")).unwrap();
    assert_eq!(
        unsafe { libc::fallocate(pre.as_raw_fd(), 0, 0, 1 << 20) },
        0
    );
    std::os::unix::fs::FileExt::write_all_at(&pre, &[7u8; 4096], 256 << 10).unwrap();
    drop(pre);
    let sparse = File::create(root.join("sparse")).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&sparse, b"start", 0).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&sparse, b"end", (1 << 30) - 3).unwrap();
    drop(sparse);
    // Links: short (in the inode) and long (in a block); a hard link.
    std::os::unix::fs::symlink("tree", root.join("short-link")).unwrap();
    std::os::unix::fs::symlink("x/".repeat(500), root.join("long-link")).unwrap();
    std::fs::hard_link(&frag, root.join("hard-link")).unwrap();
    // Special files.
    assert!(run("mknod", &[s(&root.join("chr")), "c", "4", "67"]));
    assert!(run("mknod", &[s(&root.join("blk")), "b", "259", "200000"]));
    assert!(run("mkfifo", &[s(&root.join("fifo"))]));
    drop(std::os::unix::net::UnixListener::bind(root.join("sock")).unwrap());
    // Attributes: short form, a leaf of 40, a value in blocks of its own, ACLs.
    let attrs = root.join("attrs");
    std::fs::write(&attrs, b"attributes").unwrap();
    set_xattr(&root.join("tree"), "user.small", b"v");
    for i in 0..40 {
        set_xattr(&attrs, &format!("user.a{i}"), &[b'x'; 60]);
    }
    let mut big = vec![0u8; 3000];
    rng.fill(&mut big[..]);
    set_xattr(&attrs, "user.big", &big);
    // Only root may set these namespaces.
    if is_root() {
        set_xattr(&attrs, "trusted.t", b"root only");
        set_xattr(&attrs, "security.label", b"system_u:object_r:etc_t:s0");
    }
    let acl = root.join("acl");
    std::fs::create_dir(&acl).unwrap();
    if have_tool("setfacl", "acl", "the ACLs of the rich tree") {
        assert!(run("setfacl", &["-m", "u:1000:r-x,g:50:rwx", s(&acl)]));
        assert!(run("setfacl", &["-d", "-m", "u:1000:rwx", s(&acl)]));
    }
    // Inode flags (lsattr) and times, with nanoseconds, before 1970 too.
    for (name, flag) in [
        ("tree", "+d"),
        ("attrs", "+A"),
        ("prealloc", "+S"),
        ("fragmented", "+a"),
    ] {
        assert!(run("chattr", &[flag, s(&root.join(name))]), "chattr {flag}");
    }
    set_times(
        &root.join("sparse"),
        (981_173_106, 123_456_789),
        (981_173_106, 123_456_789),
    );
    set_times(
        &root.join("attrs"),
        (-631_152_000, 999_999_999),
        (-631_152_000, 999_999_999),
    );
    let frozen = root.join("frozen");
    std::fs::write(&frozen, b"cannot change").unwrap();
    assert!(run("chattr", &["+i", s(&frozen)]));
}

/// Whether a kernel-oracle test of `fstype` can run here (FUSE, root, mkfs.FSTYPE);
/// says SKIP with `what` when not.
pub fn mkfs_ready(fstype: &str, what: &str) -> bool {
    let mkfs = format!("mkfs.{fstype}");
    let ready = fuse_available() && Command::new(&mkfs).arg("-V").output().is_ok();
    if !ready {
        eprintln!("SKIP {fstype} {what}: needs FUSE, root and {mkfs}");
    }
    ready
}

/// Makes a `size`-byte image with `mkfs.FSTYPE -q -f OPTS`, fills it through the
/// kernel's mount with `fill`, backs it up, and asserts the mount's `files/` equals the
/// kernel's read-only mount (`ro_opts`) path by path, the first `df_fields` of
/// statvfs too, with no warning in the server's log.
pub fn check_against_kernel(
    fstype: &str,
    name: &str,
    size: u64,
    mkfs_opts: &[&str],
    ro_opts: &str,
    df_fields: usize,
    fill: impl FnOnce(&Path, &mut rand::rngs::StdRng),
) {
    use rand::SeedableRng;
    let mkfs = format!("mkfs.{fstype}");
    if !mkfs_ready(fstype, name) {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let img = t.path().join("fs.img");
    File::create(&img).unwrap().set_len(size).unwrap();
    let mut args = vec!["-q", "-f"];
    args.extend_from_slice(mkfs_opts);
    args.push(s(&img));
    assert!(run(&mkfs, &args), "{mkfs} {args:?}");
    let kmnt = t.path().join("kernel");
    let mut rng = rand::rngs::StdRng::seed_from_u64(name.len() as u64);
    if kernel_mount(fstype, &img, &kmnt, "loop", |m| fill(m, &mut rng)).is_none() {
        eprintln!("SKIP {fstype} {name}: the kernel does not mount this image here");
        return;
    }
    let safe = t.path().join("safe");
    backup(&[s(&safe), &format!("vol={}", s(&img))]);
    let m = Mounted::new(&safe, t.path(), &[]);
    let files = m.dir.join("1/vol/files");
    let (want, want_df) =
        kernel_mount(fstype, &img, &kmnt, ro_opts, |k| (view(k), statvfs(k))).unwrap();
    assert!(want.len() > 3000, "{name}: only {} paths", want.len());
    same_view(&want, &files, &m, name);
    assert_eq!(
        statvfs(&files)[..df_fields],
        want_df[..df_fields],
        "{name}: statvfs (kernel read after its walk: {want_df:?}, again now: {:?})",
        kernel_mount(fstype, &img, &kmnt, ro_opts, statvfs)
    );
    let log = m.log_text();
    assert!(
        !log.contains("WARN") && !log.contains("ERROR"),
        "{name}: {log}"
    );
}

/// Backs `img` up as device `name` twice under `dir`: into `all` reading everything
/// and into `part` with `--skip-free` (which must say what it left out), then restores
/// the latter to `restored.img`. Returns (all, part, restored).
pub fn backup_with_and_without_skip_free(
    img: &Path,
    name: &str,
    dir: &Path,
) -> (PathBuf, PathBuf, PathBuf) {
    let (all, part) = (dir.join("all"), dir.join("part"));
    let src = format!("{name}={}", img.display());
    backup(&[all.to_str().unwrap(), &src]);
    let o = ds(&["backup", part.to_str().unwrap(), &src, "--skip-free"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        o.status.success() && err.contains("recorded as zeros, not read"),
        "{err}"
    );
    let restored = dir.join("restored.img");
    ok(&[
        "restore",
        part.to_str().unwrap(),
        "1",
        name,
        restored.to_str().unwrap(),
    ]);
    (all, part, restored)
}

/// A version-1.2 RAID1 superblock (two devices, this one role 0) putting `len` sectors
/// of array data at sector `offset` of a member of `member` sectors.
pub fn md_superblock(offset: u64, len: u64, member: u64, rng: &mut impl Rng) -> Vec<u8> {
    md_superblock_of(1, 0, offset, len, member, rng)
}

/// [`md_superblock`] of an array of RAID `level` with `layout` (RAID10: near copies
/// in the low byte, far copies in the next).
pub fn md_superblock_of(
    level: u32,
    layout: u32,
    offset: u64,
    len: u64,
    member: u64,
    rng: &mut impl Rng,
) -> Vec<u8> {
    let mut b = vec![0u8; 4096];
    let put = |b: &mut Vec<u8>, o: usize, v: &[u8]| b[o..o + v.len()].copy_from_slice(v);
    put(&mut b, 0x00, &0xa92b_4efcu32.to_le_bytes());
    put(&mut b, 0x04, &1u32.to_le_bytes()); // major version
    let uuid: [u8; 16] = rng.gen();
    put(&mut b, 0x10, &uuid);
    put(&mut b, 0x20, b"backuphost:1");
    put(&mut b, 0x40, &1_700_000_000u64.to_le_bytes()); // ctime
    put(&mut b, 0x48, &level.to_le_bytes());
    put(&mut b, 0x4C, &layout.to_le_bytes());
    put(&mut b, 0x50, &len.to_le_bytes()); // used size of each member
    put(&mut b, 0x5C, &2u32.to_le_bytes()); // raid disks
    put(&mut b, 0x80, &offset.to_le_bytes()); // data offset
    put(&mut b, 0x88, &(member - offset).to_le_bytes()); // data size
    put(&mut b, 0x90, &8u64.to_le_bytes()); // superblock at 4 KiB
    let dev_uuid: [u8; 16] = rng.gen();
    put(&mut b, 0xA8, &dev_uuid);
    put(&mut b, 0xC0, &1_700_000_100u64.to_le_bytes()); // utime
    put(&mut b, 0xC8, &5u64.to_le_bytes()); // events
    put(&mut b, 0xD0, &u64::MAX.to_le_bytes()); // resync done
    put(&mut b, 0xDC, &2u32.to_le_bytes()); // max_dev
    put(&mut b, 0x100, &0u16.to_le_bytes()); // roles: this device 0,
    put(&mut b, 0x102, &1u16.to_le_bytes()); // the other 1
    let mut sum: u64 = 0;
    for w in b[..256 + 4].chunks_exact(4) {
        sum += u32::from_le_bytes(w.try_into().unwrap()) as u64;
    }
    let c = ((sum & 0xFFFF_FFFF) + (sum >> 32)) as u32;
    put(&mut b, 0xD8, &c.to_le_bytes());
    b
}

/// Deletes a file of 3 MiB of random bytes from the ext4 image `fs` (debugfs), leaving
/// them in its free space for `--skip-free` to leave out.
pub fn with_deleted_junk(fs: &Path, dir: &Path, rng: &mut impl Rng) {
    let junk = dir.join("junk");
    let mut data = vec![0u8; 3 << 20];
    rng.fill(&mut data[..]);
    std::fs::write(&junk, &data).unwrap();
    for cmd in [
        format!("write {} junk", junk.to_str().unwrap()),
        "rm junk".to_string(),
    ] {
        let o = Command::new("debugfs")
            .args(["-w", "-R", &cmd, fs.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(o.status.success(), "debugfs {cmd}");
    }
}

/// How one member stands in its array, written into a version-1 superblock by
/// [`md_set_state`].
pub struct MdState<'a> {
    /// Every byte of the array UUID.
    pub array: u8,
    pub events: u64,
    /// This device's slot in `roles`.
    pub slot: u32,
    /// Each slot's role: a data position, or 0xffff spare, 0xfffe faulty.
    pub roles: &'a [u16],
    /// Feature bits (2: a recovery offset is set).
    pub features: u32,
    /// Sectors rebuilt so far.
    pub recovery: u64,
    /// Where the superblock lies, in sectors (8: version 1.2; the end: 1.0).
    pub super_sector: u64,
}

/// Writes `st` into a superblock made by [`md_superblock_of`] and recomputes its
/// checksum.
pub fn md_set_state(sb: &mut [u8], st: &MdState) {
    let put = |b: &mut [u8], o: usize, v: &[u8]| b[o..o + v.len()].copy_from_slice(v);
    put(sb, 0x08, &st.features.to_le_bytes());
    put(sb, 0x10, &[st.array; 16]);
    put(sb, 0x90, &st.super_sector.to_le_bytes());
    put(sb, 0x98, &st.recovery.to_le_bytes());
    put(sb, 0xA0, &st.slot.to_le_bytes());
    put(sb, 0xC8, &st.events.to_le_bytes());
    put(sb, 0xDC, &(st.roles.len() as u32).to_le_bytes());
    for (i, r) in st.roles.iter().enumerate() {
        put(sb, 0x100 + 2 * i, &r.to_le_bytes());
    }
    let end = 0x100 + 2 * st.roles.len();
    let mut sum: u64 = 0;
    for (i, w) in sb[..end].chunks_exact(4).enumerate() {
        if i != 0xD8 / 4 {
            sum += u32::from_le_bytes(w.try_into().unwrap()) as u64;
        }
    }
    if end % 4 == 2 {
        sum += u16::from_le_bytes([sb[end - 2], sb[end - 1]]) as u64;
    }
    let c = ((sum & 0xFFFF_FFFF) + (sum >> 32)) as u32;
    put(sb, 0xD8, &c.to_le_bytes());
}

/// A number `dumpe2fs` prints after `name` (a line's start).
pub fn dumpe2fs_field(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name))
        .map(|v| v.trim().parse().unwrap())
}

/// Free block ranges (inclusive, in the volume's blocks) as `dumpe2fs` lists them per
/// group, and the block size: the oracle for `--skip-free`.
pub fn dumpe2fs_free(img: &Path) -> (u64, Vec<(u64, u64)>) {
    try_dumpe2fs_free(img).unwrap_or_else(|e| panic!("{e}"))
}

/// [`dumpe2fs_free`], or why `dumpe2fs` failed.
pub fn try_dumpe2fs_free(img: &Path) -> Result<(u64, Vec<(u64, u64)>), String> {
    let o = Command::new("dumpe2fs").arg(img).output().unwrap();
    if !o.status.success() {
        return Err(format!(
            "dumpe2fs {}: {}",
            img.display(),
            String::from_utf8_lossy(&o.stderr)
        ));
    }
    let text = String::from_utf8_lossy(&o.stdout);
    let bs = dumpe2fs_field(&text, "Block size:").expect("dumpe2fs names the block size");
    // With bigalloc the list names each free cluster by its first block.
    let cluster_blocks = dumpe2fs_field(&text, "Cluster size:").map_or(1, |c| c / bs);
    let mut free = Vec::new();
    for l in text.lines() {
        let Some(list) = l.trim().strip_prefix("Free blocks: ") else {
            continue;
        };
        for part in list.split(", ").filter(|p| !p.trim().is_empty()) {
            let (a, b) = part
                .trim()
                .split_once('-')
                .unwrap_or((part.trim(), part.trim()));
            let b: u64 = b.parse().unwrap();
            free.push((a.parse().unwrap(), b + cluster_blocks - 1));
        }
    }
    Ok((bs, free))
}

/// Asserts that `got` (a volume as restored) equals `want` (its source) in every block
/// `dumpe2fs` of `oracle` does not list as free; returns the bytes that differ.
pub fn differs_only_where_free(want: &Path, got: &Path, oracle: &Path) -> u64 {
    let (bs, free) = dumpe2fs_free(oracle);
    let is_free = |b: u64| free.iter().any(|&(x, y)| x <= b && b <= y);
    let (w, g) = (std::fs::read(want).unwrap(), std::fs::read(got).unwrap());
    assert_eq!(w.len(), g.len());
    let mut differ = 0;
    for (i, (a, b)) in w.chunks(bs as usize).zip(g.chunks(bs as usize)).enumerate() {
        if a != b {
            assert!(
                is_free(i as u64),
                "block {i} of {} differs but is in use",
                want.display()
            );
            differ += a.len() as u64;
        }
    }
    differ
}

/// `e2fsck -fn` finds nothing to fix.
pub fn fsck_clean(img: &Path) {
    let o = Command::new("e2fsck")
        .args(["-fn"])
        .arg(img)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "e2fsck -fn {}: {}",
        img.display(),
        String::from_utf8_lossy(&o.stdout)
    );
}

/// Backs up `members` as devices `m0`, `m1`, ... into a new safe `safe`, one point;
/// the `NAME=PATH` sources, for a second backup of the same devices.
pub fn backup_members<P: AsRef<Path>>(safe: &Path, members: &[P]) -> Vec<String> {
    let sources: Vec<String> = members
        .iter()
        .enumerate()
        .map(|(i, m)| format!("m{i}={}", m.as_ref().display()))
        .collect();
    let mut args = vec![safe.to_str().unwrap()];
    args.extend(sources.iter().map(String::as_str));
    backup(&args);
    sources
}

/// Where chunk `c` of an array lies, as this test lays arrays out: (role, row) of the
/// data, the P role for parity levels, and for RAID10 every copy. md's layouts (its
/// raid5_compute_sector, raid0 and raid10 near copies; RAID6 layout 8, dm-raid's
/// `raid6_zr`, is right-asymmetric); GRUB reading the members this writes is the
/// check that they are md's.
pub fn layout_of(
    level: u32,
    layout: u32,
    n: usize,
    c: usize,
) -> (Vec<(usize, usize)>, Option<usize>) {
    match level {
        0 => (vec![(c % n, c / n)], None),
        10 => {
            let near = (layout & 0xff) as usize;
            (
                (0..near)
                    .map(|i| ((c * near + i) % n, (c * near + i) / n))
                    .collect(),
                None,
            )
        }
        _ => {
            let data = n - if level == 6 { 2 } else { 1 };
            let (stripe, d) = (c / data, c % data);
            // Left layouts: parity rotates backwards from the last device. Symmetric
            // (2): data continues after parity; asymmetric (0): data keeps its
            // device order, stepping over parity (RAID6: Q follows P, wrapping to
            // the first device when P is last).
            let p = if level == 6 && layout == 8 {
                stripe % n
            } else if level == 6 {
                n - 1 - stripe % n
            } else {
                data - stripe % n
            };
            let skip = if level == 6 { 2 } else { 1 };
            let dev = match layout {
                0 | 8 if level == 6 && p == n - 1 => d + 1,
                0 | 8 if d >= p => d + skip,
                0 | 8 => d,
                _ => (p + skip + d) % n,
            };
            (vec![(dev, stripe)], Some(p))
        }
    }
}

/// a·b in GF(2^8) modulo x^8+x^4+x^3+x^2+1, by shifts (RAID6's Q field).
pub fn gf_mul(mut a: u8, mut b: u8) -> u8 {
    let mut r = 0u8;
    while b != 0 {
        if b & 1 != 0 {
            r ^= a;
        }
        let carry = a & 0x80 != 0;
        a <<= 1;
        if carry {
            a ^= 0x1d;
        }
        b >>= 1;
    }
    r
}

/// 2^e in GF(2^8).
pub fn gf_pow2(e: usize) -> u8 {
    (0..e).fold(1, |x, _| gf_mul(x, 2))
}

/// The data areas of an array's `n` members holding `fs` striped as [`layout_of`]
/// lays it out, with RAID5's P and RAID6's P and Q, and the rows of `chunk` bytes
/// each takes.
pub fn striped_areas(
    level: u32,
    layout: u32,
    n: usize,
    chunk: usize,
    fs: &[u8],
) -> (Vec<Vec<u8>>, usize) {
    let data = match level {
        0 | 10 => n,
        6 => n - 2,
        _ => n - 1,
    };
    let chunks = fs.len().div_ceil(chunk);
    let far = ((layout >> 8) & 0xff).max(1) as usize;
    let rows = if level == 10 {
        // Near copies take rows in turn; far copies take a whole section each (only
        // the first is written: every member is present when such an array is read).
        (chunks * (layout & 0xff) as usize).div_ceil(n) * far + far
    } else {
        chunks.div_ceil(data) + 1
    };
    let per = rows * chunk;
    let mut areas = vec![vec![0u8; per]; n];
    for c in 0..chunks {
        let piece = &fs[c * chunk..((c + 1) * chunk).min(fs.len())];
        let (copies, p) = layout_of(level, layout, n, c);
        for (dev, row) in copies {
            areas[dev][row * chunk..row * chunk + piece.len()].copy_from_slice(piece);
            if let Some(p) = p {
                for (i, b) in piece.iter().enumerate() {
                    areas[p][row * chunk + i] ^= b;
                }
            }
        }
    }
    if level == 6 {
        // Q: each data chunk times 2^slot in GF(2^8) (x^8+x^4+x^3+x^2+1), Q on the
        // device after P. Slots count from the device after Q (left layouts), or are
        // the device's own position (layout 8, DDF's rotation as dm-raid uses it).
        for row in 0..rows {
            let p = layout_of(level, layout, n, row * data).1.unwrap();
            let q = (p + 1) % n;
            let d0 = if q == n - 1 || layout == 8 { 0 } else { q + 1 };
            let data_devs: Vec<usize> = (0..n)
                .map(|i| (d0 + i) % n)
                .filter(|&d| d != p && d != q)
                .collect();
            for (slot, &d) in data_devs.iter().enumerate() {
                let weight = gf_pow2(if layout == 8 { d } else { slot });
                for i in 0..chunk {
                    let v = gf_mul(areas[d][row * chunk + i], weight);
                    areas[q][row * chunk + i] ^= v;
                }
            }
        }
    }
    (areas, rows)
}

/// Members of an md array (version-1.2 superblocks, data from 1 MiB) holding `fs`
/// striped as [`striped_areas`] lays it out.
pub fn striped_members(
    dir: &Path,
    level: u32,
    layout: u32,
    n: usize,
    chunk: usize,
    fs: &[u8],
    rng: &mut impl Rng,
) -> Vec<std::path::PathBuf> {
    let (areas, rows) = striped_areas(level, layout, n, chunk, fs);
    let per = rows * chunk;
    let base = md_superblock_of(
        level,
        layout,
        2048,
        (per / 512) as u64,
        ((per >> 9) + 2048) as u64,
        rng,
    );
    let roles: Vec<u16> = (0..n as u16).collect();
    let mut out = Vec::new();
    for (i, area) in areas.iter().enumerate() {
        let mut sb = base.clone();
        sb[0x20..0x40].fill(0);
        sb[0x20..0x26].copy_from_slice(b"host:a");
        sb[0x58..0x5C].copy_from_slice(&((chunk / 512) as u32).to_le_bytes());
        sb[0x5C..0x60].copy_from_slice(&(n as u32).to_le_bytes());
        let st = MdState {
            array: 9,
            events: 30,
            slot: i as u32,
            roles: &roles,
            features: 0,
            recovery: 0,
            super_sector: 8,
        };
        md_set_state(&mut sb, &st);
        let path = dir.join(format!("l{level}-{layout:x}-m{i}.img"));
        let mut img = vec![0u8; (1 << 20) + per];
        img[4096..8192].copy_from_slice(&sb);
        img[1 << 20..].copy_from_slice(area);
        std::fs::write(&path, &img).unwrap();
        out.push(path);
    }
    out
}

/// cryptsetup options that make a keyslot quick to open (tests, not security).
pub const LUKS_FAST: [&str; 4] = ["--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"];

/// Encrypts `img` in place as cryptsetup does for an existing filesystem: its last
/// `reduce` MiB give way to the header, the data moves behind it. `extra` picks the
/// format, cipher, KDF and sector size. Panics with cryptsetup's words if it fails.
pub fn luks_encrypt(img: &Path, key: &Path, reduce: u32, extra: &[&str]) {
    let reduce = format!("{reduce}M");
    let o = Command::new("cryptsetup")
        .args(["reencrypt", "--batch-mode", "--encrypt"])
        .args(["--reduce-device-size", &reduce, "--key-file"])
        .arg(key)
        .args(extra)
        .arg(img)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "cryptsetup reencrypt {}: {}",
        img.display(),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Runs a tool; its stdout, trimmed. Panics with its stderr when it fails.
pub fn run_out(cmd: &str, args: &[&str]) -> String {
    let o = Command::new(cmd)
        .args(args)
        .env("LVM_SUPPRESS_FD_WARNINGS", "1")
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(
        o.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

/// Whether Python's `cryptography` (the independent decryptor) is here; says why not.
pub fn have_openssl_python(test: &str) -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import cryptography"])
        .status()
        .is_ok_and(|st| st.success());
    if !ok {
        eprintln!("SKIP {test}: python3-cryptography is not installed");
    }
    ok
}

/// Decrypts the data segment of the LUKS2 aes-xts-plain64 volume `img` into `out`
/// with Python's `cryptography` (OpenSSL), keyed with the volume key cryptsetup
/// dumps: an independent reading of the plaintext.
pub fn decrypt_with_openssl(img: &Path, key: &Path, out: &Path) {
    let dump = run_out(
        "cryptsetup",
        &[
            "luksDump",
            "--dump-volume-key",
            "--batch-mode",
            "--key-file",
            s(key),
            s(img),
        ],
    );
    let hex: String = dump
        .split("MK dump:")
        .nth(1)
        .expect("a volume key dump")
        .split_whitespace()
        .take_while(|w| w.len() == 2 && w.chars().all(|c| c.is_ascii_hexdigit()))
        .collect();
    let info = run_out("cryptsetup", &["luksDump", s(img)]);
    let field = |name: &str| -> u64 {
        let line = info
            .lines()
            .find(|l| l.trim_start().starts_with(name))
            .unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    };
    let (offset, sector) = (field("offset:"), field("sector:"));
    let script = r#"
import sys
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
img, out, key = sys.argv[1], sys.argv[2], bytes.fromhex(sys.argv[3])
off, sec = int(sys.argv[4]), int(sys.argv[5])
data = open(img, 'rb').read()[off:]
res = bytearray()
for i in range(0, len(data) - len(data) % sec, sec):
    tweak = (i // 512).to_bytes(16, 'little')
    d = Cipher(algorithms.AES(key), modes.XTS(tweak)).decryptor()
    res += d.update(data[i:i + sec]) + d.finalize()
open(out, 'wb').write(res)
"#;
    run_out(
        "python3",
        &[
            "-c",
            script,
            s(img),
            s(out),
            &hex,
            &offset.to_string(),
            &sector.to_string(),
        ],
    );
}
