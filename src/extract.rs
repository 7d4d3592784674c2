//! `disksafe extract`: a file or directory of a point copied out as the mount shows it,
//! without FUSE (in a container, or where /dev/fuse or fusermount3 is missing), with
//! the metadata `cp -a` keeps: modes, owners (as root), times, symlinks, hard links,
//! holes, device nodes and extended attributes (ACLs among them).
//!
//! What a point's file tree says is hostile input for the machine it is copied onto:
//! names are checked before they become paths (no `/`, `.`, `..` or empty names), files
//! are created exclusively and never through a symlink, and a directory met twice (a
//! loop) is not entered again.
//!
//! `ls` and `find` read a point the same way, to find what to extract without a mount.

use std::collections::{HashMap, HashSet};
use std::ffi::{CString, OsStr};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use fuser::{FileAttr, FileType};

use crate::fs::{FsOptions, SafeFs};
use crate::passphrase::Secret;
use crate::safe_reader::Safe;

/// How `extract` reads the point.
pub struct ExtractOptions {
    /// Passphrases for LUKS volumes on the way to PATH.
    pub passphrases: Vec<Secret>,
    /// File trees as recorded, without journal replay (as `mount --no-replay`).
    pub no_replay: bool,
    /// NTFS metadata files shown (as `mount --show-system`).
    pub show_system: bool,
    /// Draw a progress line on stderr.
    pub progress: bool,
}

/// What was copied.
#[derive(Debug, Default)]
pub struct Extracted {
    /// Plain files written.
    pub files: u64,
    /// Directories made.
    pub dirs: u64,
    /// Symlinks, hard links to a file already copied, device nodes, fifos, sockets.
    pub other: u64,
    /// File bytes written (holes not counted).
    pub bytes: u64,
    /// Extended attributes the destination refused (name, path, error), first few.
    pub xattr_refused: Vec<String>,
    /// How many the destination refused in all.
    pub xattr_refused_count: u64,
}

/// Read size for file data.
const CHUNK: usize = 1 << 20;

/// The point's tree as the mount shows it, without mounting: (filesystem, point id).
fn open_point(safe_dir: &Path, point: &str, opts: ExtractOptions) -> anyhow::Result<(SafeFs, i64)> {
    let mut v = open_points(safe_dir, &[point], opts)?;
    Ok(v.remove(0))
}

/// Several points' trees over one safe and one block cache (blocks the points share
/// are read once), each as `open_point` gives it.
pub(crate) fn open_points(
    safe_dir: &Path,
    points: &[&str],
    opts: ExtractOptions,
) -> anyhow::Result<Vec<(SafeFs, i64)>> {
    let safe = Arc::new(Safe::open(safe_dir)?);
    let cache = Arc::new(crate::cache::CachedSafe::new(safe.clone(), 256 << 20));
    // One keyring for all (a LUKS volume is unlocked once); each point's own id is
    // set below.
    let shared = FsOptions {
        no_replay: opts.no_replay,
        show_system: opts.show_system,
        ..FsOptions::for_point(0, opts.passphrases)
    };
    let mut out = Vec::new();
    for point in points {
        let p = safe.point(point)?;
        let fs = SafeFs::new(
            cache.clone(),
            FsOptions {
                only_point: Some(p.id),
                ..shared.clone()
            },
        )?;
        out.push((fs, p.id));
    }
    Ok(out)
}

/// `ls -l`'s type letter for `kind` (`-` for a plain file).
fn type_letter(kind: FileType) -> char {
    match kind {
        FileType::Directory => 'd',
        FileType::Symlink => 'l',
        FileType::CharDevice => 'c',
        FileType::BlockDevice => 'b',
        FileType::NamedPipe => 'p',
        FileType::Socket => 's',
        FileType::RegularFile => '-',
    }
}

/// `ls -l`'s type and permission letters for `a`.
fn mode_string(a: &FileAttr) -> String {
    let p = a.perm as u32;
    let mut out = String::from(type_letter(a.kind));
    for (shift, special, lower, upper) in [
        (6, 0o4000, 's', 'S'),
        (3, 0o2000, 's', 'S'),
        (0, 0o1000, 't', 'T'),
    ] {
        let bits = (p >> shift) & 7;
        out.push(if bits & 4 != 0 { 'r' } else { '-' });
        out.push(if bits & 2 != 0 { 'w' } else { '-' });
        out.push(match (bits & 1 != 0, p & special != 0) {
            (true, true) => lower,
            (false, true) => upper,
            (true, false) => 'x',
            (false, false) => '-',
        });
    }
    out
}

/// Lines as `ls -l` shows them (times in UTC) for PATH of point POINT, or for its
/// entries when it is a directory; names are written as stored (bytes).
pub fn list(
    safe_dir: &Path,
    point: &str,
    path: &Path,
    opts: ExtractOptions,
    out: &mut dyn io::Write,
) -> anyhow::Result<()> {
    let (fs, id) = open_point(safe_dir, point, opts)?;
    let ino = fs.resolve(path).with_context(|| format!("point {id}"))?;
    let attr = fs.stat(ino).map_err(|e| errno(e, path))?;
    let left_before = fs.left_out();
    let entries = if attr.kind == FileType::Directory {
        let mut v = fs.list(ino).map_err(|e| errno(e, path))?;
        v.sort();
        v
    } else {
        vec![(
            path.file_name().unwrap_or(path.as_os_str()).to_os_string(),
            ino,
        )]
    };
    let mut failed = 0u64;
    for (name, child) in entries {
        match fs.stat(child) {
            Ok(a) => ls_line(&fs, child, &a, name.as_bytes(), out)?,
            Err(e) => {
                eprintln!("error: {}: {}", path.join(&name).display(), io_err(e));
                failed += 1;
            }
        }
    }
    out.flush()?;
    incomplete(path, failed, fs.left_out() - left_before)
}

/// An error saying what a listing missed, if it missed anything: entries that failed
/// to stat (named above) and parts the tree left out as damaged.
pub(crate) fn incomplete(path: &Path, failed: u64, left_out: u64) -> anyhow::Result<()> {
    match shortfall(failed, "read", left_out) {
        Some(why) => bail!("{}: {why}", path.display()),
        None => Ok(()),
    }
}

/// What a walk missed, if anything: `failed` entries (each named above) that could
/// not be `done` (read, extracted), and parts the tree left out as damaged (each
/// named in a warning), which every read succeeded without.
fn shortfall(failed: u64, done: &str, left_out: u64) -> Option<String> {
    let mut why = Vec::new();
    if failed > 0 {
        why.push(format!(
            "{failed} entr{} could not be {done} (named above)",
            if failed == 1 { "y" } else { "ies" }
        ));
    }
    if left_out > 0 {
        why.push(format!(
            "{left_out} damaged directory entr{} or block{} of the point's file tree left out (named in the warnings above)",
            if left_out == 1 { "y" } else { "ies" },
            if left_out == 1 { "" } else { "s" }
        ));
    }
    (!why.is_empty()).then(|| why.join("; "))
}

/// One `ls -l` line for an entry of attributes `a`, named `name` (bytes as stored).
fn ls_line(
    fs: &SafeFs,
    ino: u64,
    a: &FileAttr,
    name: &[u8],
    out: &mut dyn io::Write,
) -> io::Result<()> {
    let t = timespec(a.mtime);
    let size = match a.kind {
        FileType::CharDevice | FileType::BlockDevice => {
            format!(
                "{}, {}",
                libc::major(a.rdev as libc::dev_t),
                libc::minor(a.rdev as libc::dev_t)
            )
        }
        _ => a.size.to_string(),
    };
    out.write_all(
        format!(
            "{} {:>3} {:>5} {:>5} {:>12} {} ",
            mode_string(a),
            a.nlink,
            a.uid,
            a.gid,
            size,
            crate::format::utc_string(t.tv_sec),
        )
        .as_bytes(),
    )?;
    out.write_all(name)?;
    if a.kind == FileType::Symlink {
        if let Ok(to) = fs.read_link(ino) {
            out.write_all(b" -> ")?;
            out.write_all(&to)?;
        }
    }
    out.write_all(b"\n")
}

/// What `find` prints.
#[derive(Debug, Default)]
pub struct FindOptions {
    /// A shell pattern (fnmatch, as `find -name`) the entry's own name must match.
    pub name: Option<String>,
    /// Match `name` ignoring the case of ASCII letters (as `find -iname` in the C
    /// locale): Windows names differ in case from what users type.
    pub ignore_case: bool,
    /// `ls -l`'s type letters the entry must be one of (`f` for plain files, as
    /// `find -type`).
    pub types: Option<String>,
    /// `ls -l` lines with the path in place of the name.
    pub long: bool,
    /// Paths ended by NUL instead of a newline (names may hold newlines).
    pub print0: bool,
}

/// PATH as `find` and `diff` print it and `extract` takes it: its names joined by
/// single slashes (`a//b/` is `a/b`; the point itself is empty).
pub(crate) fn shown_path(path: &Path) -> Vec<u8> {
    path.components()
        .filter(|c| !matches!(c, Component::RootDir | Component::CurDir))
        .map(|c| c.as_os_str().as_bytes())
        .collect::<Vec<_>>()
        .join(&b'/')
}

/// Paths under PATH of point POINT (PATH itself first), as `find` prints them: each
/// directory's entries in name order, depth first, so a file can be found in a point
/// without mounting it and then handed to `extract`.
pub fn find(
    safe_dir: &Path,
    point: &str,
    path: &Path,
    opts: ExtractOptions,
    what: &FindOptions,
    out: &mut dyn io::Write,
) -> anyhow::Result<()> {
    let (fs, id) = open_point(safe_dir, point, opts)?;
    let ino = fs.resolve(path).with_context(|| format!("point {id}"))?;
    let pattern = match &what.name {
        Some(p) => Some(
            CString::new(p.as_bytes())
                .map_err(|_| anyhow::anyhow!("--name: a pattern cannot hold NUL"))?,
        ),
        None => None,
    };
    let flags = if what.ignore_case {
        libc::FNM_CASEFOLD
    } else {
        0
    };
    if let Some(t) = &what.types {
        if let Some(bad) = t.chars().find(|c| !"fdlcbps".contains(*c)) {
            bail!("--type {t}: '{bad}' is not one of f, d, l, c, b, p, s");
        }
    }
    let left_before = fs.left_out();
    // Paths as `extract` takes them: without PATH, the point's devices and what is
    // under them (the point itself not printed).
    let start = shown_path(path);
    let mut failed = 0u64;
    let mut fail = |at: &[u8], e: fuser::Errno| {
        eprintln!("error: {}: {}", String::from_utf8_lossy(at), io_err(e));
        failed += 1;
    };
    let mut seen = HashSet::new();
    // Depth first; bounded by the directories a tree holds, each entered once.
    let mut stack: Vec<(Vec<u8>, u64)> = vec![(start, ino)];
    while let Some((at, ino)) = stack.pop() {
        let a = match fs.stat(ino) {
            Ok(a) => a,
            Err(e) => {
                fail(&at, e);
                continue;
            }
        };
        let name = at.rsplit(|&b| b == b'/').next().unwrap_or(&at);
        let listed = !at.is_empty();
        let type_ok = what.types.as_ref().is_none_or(|t| {
            t.contains(match type_letter(a.kind) {
                '-' => 'f',
                c => c,
            })
        });
        let name_ok = pattern.as_ref().is_none_or(|p| {
            CString::new(name).is_ok_and(|n| {
                // SAFETY: both are NUL-terminated strings that live across the call.
                unsafe { libc::fnmatch(p.as_ptr(), n.as_ptr(), flags) == 0 }
            })
        });
        if listed && type_ok && name_ok {
            if what.long {
                ls_line(&fs, ino, &a, &at, out)?;
            } else {
                out.write_all(&at)?;
                out.write_all(if what.print0 { b"\0" } else { b"\n" })?;
            }
        }
        if a.kind != FileType::Directory || !seen.insert(ino) {
            continue;
        }
        match fs.list(ino) {
            Ok(mut v) => {
                v.sort();
                for (n, child) in v.into_iter().rev() {
                    let mut p = at.clone();
                    if listed {
                        p.push(b'/');
                    }
                    p.extend_from_slice(n.as_bytes());
                    stack.push((p, child));
                }
            }
            Err(e) => fail(&at, e),
        }
    }
    out.flush()?;
    incomplete(path, failed, fs.left_out() - left_before)
}

/// Copies PATH (as under the mount's point directory) of point POINT of the safe to
/// DEST: into it when DEST is an existing directory, else as DEST.
pub fn extract(
    safe_dir: &Path,
    point: &str,
    path: &Path,
    dest: &Path,
    opts: ExtractOptions,
) -> anyhow::Result<Extracted> {
    let progress = opts.progress;
    let (fs, point_id) = open_point(safe_dir, point, opts)?;
    let Some(name) = path.file_name() else {
        bail!(
            "{}: name a device's file or directory, e.g. DEVICE/part1/home",
            path.display()
        );
    };
    let ino = fs
        .resolve(path)
        .with_context(|| format!("point {point_id}"))?;
    let attr = fs.stat(ino).map_err(|e| errno(e, path))?;
    if dest == Path::new("-") {
        return to_stdout(&fs, ino, &attr, path);
    }
    let target = if dest.is_dir() {
        dest.join(name)
    } else {
        dest.to_path_buf()
    };
    if target.symlink_metadata().is_ok() {
        bail!("{}: already exists; not overwritten", target.display());
    }
    let bar = if progress {
        let b = indicatif::ProgressBar::new_spinner();
        b.set_style(
            indicatif::ProgressStyle::with_template("{spinner} {bytes} {bytes_per_sec} {msg}")
                .unwrap(),
        );
        b.enable_steady_tick(std::time::Duration::from_millis(200));
        b
    } else {
        indicatif::ProgressBar::hidden()
    };
    let mut x = Extractor {
        fs: &fs,
        bar: bar.clone(),
        out: Extracted::default(),
        links: HashMap::new(),
        dirs_seen: HashSet::new(),
        buf: vec![0u8; CHUNK],
        failed: 0,
        root: unsafe { libc::geteuid() } == 0,
    };
    // Listings parsed from here on are the copied tree's own (resolving PATH read
    // only its ancestors).
    let left_before = fs.left_out();
    x.copy_tree(ino, attr, target.clone());
    bar.finish_and_clear();
    if let Some(why) = shortfall(x.failed, "extracted", fs.left_out() - left_before) {
        bail!("{why}; the rest is in {}", target.display());
    }
    Ok(x.out)
}

/// Writes file `ino` to standard output (DEST `-`), for a pipe into another tool.
fn to_stdout(fs: &SafeFs, ino: u64, attr: &FileAttr, path: &Path) -> anyhow::Result<Extracted> {
    use std::io::Write;
    if attr.kind != FileType::RegularFile {
        bail!(
            "{}: only a file goes to standard output; give a directory as DEST",
            path.display()
        );
    }
    let mut out = io::stdout().lock();
    let mut buf = vec![0u8; CHUNK];
    let mut at = 0;
    while at < attr.size {
        let n = ((attr.size - at) as usize).min(CHUNK);
        read_chunk(fs, ino, at, &mut buf[..n], attr.size)
            .with_context(|| path.display().to_string())?;
        out.write_all(&buf[..n])
            .context("writing to standard output")?;
        at += n as u64;
    }
    out.flush().context("writing to standard output")?;
    Ok(Extracted {
        files: 1,
        bytes: attr.size,
        ..Default::default()
    })
}

/// Reads `buf.len()` bytes of file `ino` at `at`; a file that ends short of them
/// (before its `size`) is an error, not a shorter copy.
pub(crate) fn read_chunk(
    fs: &SafeFs,
    ino: u64,
    at: u64,
    buf: &mut [u8],
    size: u64,
) -> io::Result<()> {
    let got = fs.read_file(ino, at, buf).map_err(io_err)?;
    if got < buf.len() {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("ended at byte {}, before its size {size}", at + got as u64),
        ));
    }
    Ok(())
}

pub(crate) fn errno(e: fuser::Errno, what: &Path) -> anyhow::Error {
    anyhow::anyhow!("{}: {}", what.display(), io_err(e))
}

pub(crate) fn io_err(e: fuser::Errno) -> io::Error {
    io::Error::from_raw_os_error(e.code())
}

/// A name from a file tree that is safe to use as one path component here.
fn plain_name(name: &OsStr) -> bool {
    let b = name.as_bytes();
    !b.is_empty() && b != b"." && b != b".." && !b.contains(&b'/') && !b.contains(&0)
}

fn cpath(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

fn check(r: libc::c_int) -> io::Result<()> {
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn timespec(t: SystemTime) -> libc::timespec {
    let (secs, nsecs) = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => (d.as_secs() as i64, d.subsec_nanos()),
        Err(e) => {
            let d = e.duration();
            // Before 1970: whole seconds down, nanoseconds up from there.
            let mut secs = -(d.as_secs() as i64);
            let mut nsecs = d.subsec_nanos();
            if nsecs > 0 {
                secs -= 1;
                nsecs = 1_000_000_000 - nsecs;
            }
            (secs, nsecs)
        }
    };
    libc::timespec {
        tv_sec: secs as libc::time_t,
        tv_nsec: nsecs as libc::c_long,
    }
}

/// Work left on the walk: an entry to copy, or a directory whose own metadata is set
/// once its entries are in (writing them would change its times).
enum Step {
    Copy(u64, FileAttr, PathBuf),
    Finish(FileAttr, PathBuf),
}

struct Extractor<'a> {
    fs: &'a SafeFs,
    bar: indicatif::ProgressBar,
    out: Extracted,
    /// Files with more than one link: the first copy's path, for the others' links.
    links: HashMap<u64, PathBuf>,
    /// Directories entered, so a loop in a damaged tree ends.
    dirs_seen: HashSet<u64>,
    /// File data on its way, one buffer for every file.
    buf: Vec<u8>,
    failed: u64,
    root: bool,
}

impl Extractor<'_> {
    fn fail(&mut self, path: &Path, e: impl std::fmt::Display) {
        self.bar
            .suspend(|| eprintln!("error: {}: {e}", path.display()));
        self.failed += 1;
    }

    fn copy_tree(&mut self, ino: u64, attr: FileAttr, target: PathBuf) {
        let mut steps = vec![Step::Copy(ino, attr, target)];
        while let Some(step) = steps.pop() {
            match step {
                Step::Finish(attr, path) => {
                    if let Err(e) = self.finish_dir(&attr, &path) {
                        self.fail(&path, e);
                    }
                }
                Step::Copy(ino, attr, path) if attr.kind == FileType::Directory => {
                    if !self.dirs_seen.insert(ino) {
                        self.fail(&path, "directory met again (a loop in the tree); skipped");
                        continue;
                    }
                    let entries = match self.fs.list(ino) {
                        Ok(e) => e,
                        Err(e) => {
                            self.fail(&path, io_err(e));
                            continue;
                        }
                    };
                    // Owner-only while it fills, whatever its own mode.
                    if let Err(e) = std::fs::DirBuilder::new().mode(0o700).create(&path) {
                        self.fail(&path, e);
                        continue;
                    }
                    self.out.dirs += 1;
                    steps.push(Step::Finish(attr, path.clone()));
                    for (name, child) in entries.into_iter().rev() {
                        let at = path.join(&name);
                        if !plain_name(&name) {
                            self.fail(&at, "not a plain name; skipped");
                            continue;
                        }
                        match self.fs.stat(child) {
                            Ok(a) => steps.push(Step::Copy(child, a, at)),
                            Err(e) => self.fail(&at, io_err(e)),
                        }
                    }
                }
                Step::Copy(ino, attr, path) => {
                    if let Err(e) = self.copy_entry(ino, &attr, &path) {
                        self.fail(&path, e);
                    }
                }
            }
        }
    }

    /// Copies a non-directory entry with its metadata.
    fn copy_entry(&mut self, ino: u64, attr: &FileAttr, path: &Path) -> io::Result<()> {
        if attr.nlink > 1 {
            if let Some(first) = self.links.get(&ino) {
                std::fs::hard_link(first, path)?;
                self.out.other += 1;
                return Ok(());
            }
        }
        match attr.kind {
            FileType::RegularFile => self.copy_file(ino, attr, path)?,
            FileType::Symlink => {
                let to = self.fs.read_link(ino).map_err(io_err)?;
                std::os::unix::fs::symlink(OsStr::from_bytes(&to), path)?;
                self.set_meta(ino, attr, path, None)?;
                self.out.other += 1;
            }
            kind => {
                let ty = match kind {
                    FileType::CharDevice => libc::S_IFCHR,
                    FileType::BlockDevice => libc::S_IFBLK,
                    FileType::NamedPipe => libc::S_IFIFO,
                    FileType::Socket => libc::S_IFSOCK,
                    _ => return Err(io::Error::from_raw_os_error(libc::EINVAL)),
                };
                let c = cpath(path)?;
                // SAFETY: a valid C string and plain integers.
                check(unsafe { libc::mknod(c.as_ptr(), ty | 0o600, attr.rdev as libc::dev_t) })?;
                // Set by path: opening a fifo or device would block or touch it, and
                // mknod just made this path.
                self.set_meta(ino, attr, path, None)?;
                self.out.other += 1;
            }
        }
        if attr.nlink > 1 {
            self.links.insert(ino, path.to_path_buf());
        }
        Ok(())
    }

    /// Copies a regular file's data (holes kept) and metadata; a file that cannot be
    /// read whole is removed rather than left looking complete.
    fn copy_file(&mut self, ino: u64, attr: &FileAttr, path: &Path) -> io::Result<()> {
        let f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)?;
        let r = self.copy_data(ino, attr.size, &f);
        let r = r.and_then(|()| self.set_meta(ino, attr, path, Some(&f)));
        if r.is_err() {
            drop(f);
            let _ = std::fs::remove_file(path);
        } else {
            self.out.files += 1;
            self.bar.set_message(format!("{} files", self.out.files));
        }
        r
    }

    fn copy_data(&mut self, ino: u64, size: u64, f: &File) -> io::Result<()> {
        let mut off = 0;
        while off < size {
            let Some(data) = self.fs.seek_file(ino, off, true).map_err(io_err)? else {
                break;
            };
            if data >= size {
                break;
            }
            let hole = self
                .fs
                .seek_file(ino, data, false)
                .map_err(io_err)?
                .unwrap_or(size)
                .clamp(data + 1, size);
            let mut at = data;
            while at < hole {
                let n = ((hole - at) as usize).min(CHUNK);
                let buf = &mut self.buf[..n];
                read_chunk(self.fs, ino, at, buf, size)?;
                f.write_all_at(buf, at)?;
                self.out.bytes += n as u64;
                self.bar.inc(n as u64);
                at += n as u64;
            }
            off = hole;
        }
        f.set_len(size)
    }

    /// A directory's metadata, once its entries are in.
    fn finish_dir(&mut self, attr: &FileAttr, path: &Path) -> io::Result<()> {
        let f = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
            .open(path)?;
        let ino = attr.ino.0;
        self.set_meta(ino, attr, path, Some(&f))
    }

    /// Owner (as root), mode, extended attributes and times, in that order: a change
    /// of owner clears set-id bits, and setting the others changes no data time. With
    /// `f`, through the open file; else by path, not following a symlink.
    fn set_meta(
        &mut self,
        ino: u64,
        attr: &FileAttr,
        path: &Path,
        f: Option<&File>,
    ) -> io::Result<()> {
        use std::os::unix::io::AsRawFd;
        let c = cpath(path)?;
        let fd = f.map(|f| f.as_raw_fd());
        let symlink = attr.kind == FileType::Symlink;
        if self.root {
            // SAFETY: valid descriptor or C string, plain integers.
            check(match fd {
                Some(fd) => unsafe { libc::fchown(fd, attr.uid, attr.gid) },
                None => unsafe { libc::lchown(c.as_ptr(), attr.uid, attr.gid) },
            })?;
        }
        let mode = (attr.perm as libc::mode_t) & 0o7777;
        let mode = if self.root { mode } else { mode & 0o1777 };
        if !symlink {
            // SAFETY: as above; a non-symlink path made by this walk.
            check(match fd {
                Some(fd) => unsafe { libc::fchmod(fd, mode) },
                None => unsafe { libc::chmod(c.as_ptr(), mode) },
            })?;
        }
        for (name, value) in self.fs.xattrs(ino).map_err(io_err)? {
            let Ok(n) = CString::new(name.clone()) else {
                continue;
            };
            // SAFETY: valid descriptor or C strings, a buffer with its length.
            let r = match fd {
                Some(fd) => unsafe {
                    libc::fsetxattr(fd, n.as_ptr(), value.as_ptr().cast(), value.len(), 0)
                },
                None => unsafe {
                    libc::lsetxattr(
                        c.as_ptr(),
                        n.as_ptr(),
                        value.as_ptr().cast(),
                        value.len(),
                        0,
                    )
                },
            };
            if r != 0 {
                let e = io::Error::last_os_error();
                self.out.xattr_refused_count += 1;
                if self.out.xattr_refused.len() < 3 {
                    self.out.xattr_refused.push(format!(
                        "{} on {}: {e}",
                        String::from_utf8_lossy(&name),
                        path.display()
                    ));
                }
            }
        }
        let times = [timespec(attr.atime), timespec(attr.mtime)];
        // SAFETY: valid descriptor or C string and a two-element array.
        check(match fd {
            Some(fd) => unsafe { libc::futimens(fd, times.as_ptr()) },
            None => unsafe {
                libc::utimensat(
                    libc::AT_FDCWD,
                    c.as_ptr(),
                    times.as_ptr(),
                    libc::AT_SYMLINK_NOFOLLOW,
                )
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_would_leave_the_directory_are_refused() {
        for bad in ["", ".", "..", "a/b", "../x", "/etc"] {
            assert!(!plain_name(OsStr::new(bad)), "{bad:?}");
        }
        assert!(!plain_name(OsStr::from_bytes(b"a\0b")));
        for good in ["a", "...", ".hidden", "a b", "ü"] {
            assert!(plain_name(OsStr::new(good)), "{good:?}");
        }
    }

    #[test]
    fn times_before_1970_keep_their_nanoseconds() {
        let t = UNIX_EPOCH - std::time::Duration::new(10, 250_000_000);
        let ts = timespec(t);
        assert_eq!((ts.tv_sec, ts.tv_nsec), (-11, 750_000_000));
        let ts = timespec(UNIX_EPOCH + std::time::Duration::new(5, 7));
        assert_eq!((ts.tv_sec, ts.tv_nsec), (5, 7));
    }
}
