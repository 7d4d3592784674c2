//! `disksafe diff`: what changed under a path between two points, one line per entry
//! with restic's letters (`+` added, `-` removed, `M` content, `U` metadata only, `T`
//! type), so an admin can see what happened since Tuesday and an investigator what a
//! disk gained and lost, without mounting either point.
//!
//! Both trees are walked together by name (each directory's entries in name order,
//! depth first), through `fs::SafeFs` as `extract` walks one. A file counts as changed
//! in content when its size or modification time differ, as `rsync`'s quick check
//! decides; with `--content` its bytes are compared instead (and a file whose bytes
//! are equal but whose times moved is `U`). Access and change times and link counts
//! are not compared (reading a file or linking it elsewhere changes them); nor is a
//! directory's modification time (every name added or removed moves it, and those
//! names are listed). Raw images and the layout's own directories carry the point's
//! time, so only their size (and with `--content`, bytes) count.

use std::cmp::Ordering;
use std::ffi::OsString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use fuser::{FileAttr, FileType};

use crate::extract::{incomplete, io_err, open_points, read_chunk, shown_path, ExtractOptions};
use crate::fs::SafeFs;

/// How `diff` compares.
#[derive(Debug, Default)]
pub struct DiffOptions {
    /// Compare the bytes of files whose size is equal, not their modification times.
    pub content: bool,
}

/// Entries found changed, by kind.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// In TO only (`+`).
    pub added: u64,
    /// In FROM only (`-`).
    pub removed: u64,
    /// Content changed (`M`).
    pub modified: u64,
    /// Only metadata changed (`U`).
    pub metadata: u64,
    /// Type changed (`T`).
    pub retyped: u64,
}

/// One entry to compare: its path, and its inode in each point (absent: not there).
struct Pair {
    path: Vec<u8>,
    a: Option<u64>,
    b: Option<u64>,
}

/// Compares PATH (as under a point's directory; the whole point when empty) of points
/// A and B, writing one line per entry that differs.
pub fn diff(
    safe_dir: &Path,
    a: &str,
    b: &str,
    path: &Path,
    opts: ExtractOptions,
    how: &DiffOptions,
    out: &mut dyn io::Write,
) -> anyhow::Result<Changes> {
    let mut v = open_points(safe_dir, &[a, b], opts)?;
    let (fb, idb) = v.pop().expect("two points");
    let (fa, ida) = v.pop().expect("two points");
    let resolve = |fs: &SafeFs, id: i64| -> anyhow::Result<Option<u64>> {
        match fs.resolve(path) {
            Ok(ino) => Ok(Some(ino)),
            // In one point only: a difference to show, not an error.
            Err(e) if e.is::<crate::fs::NoSuchEntry>() => Ok(None),
            Err(e) => Err(e.context(format!("point {id}"))),
        }
    };
    let (ra, rb) = (resolve(&fa, ida)?, resolve(&fb, idb)?);
    if ra.is_none() && rb.is_none() {
        anyhow::bail!("{}: in neither point {ida} nor point {idb}", path.display());
    }
    let start = shown_path(path);
    let before = (fa.left_out(), fb.left_out());
    let mut w = Walk {
        fa: &fa,
        fb: &fb,
        how,
        out,
        changes: Changes::default(),
        failed: 0,
        bufs: (vec![0u8; CHUNK], vec![0u8; CHUNK]),
    };
    w.run(Pair {
        path: start,
        a: ra,
        b: rb,
    })?;
    w.out.flush()?;
    let left_out = fa.left_out() - before.0 + fb.left_out() - before.1;
    let (failed, changes) = (w.failed, w.changes);
    incomplete(path, failed, left_out)?;
    Ok(changes)
}

/// Read size when comparing bytes.
const CHUNK: usize = 1 << 20;

struct Walk<'a> {
    fa: &'a SafeFs,
    fb: &'a SafeFs,
    how: &'a DiffOptions,
    out: &'a mut dyn io::Write,
    changes: Changes,
    failed: u64,
    bufs: (Vec<u8>, Vec<u8>),
}

impl Walk<'_> {
    /// Compares `first` and everything below it, depth first with an explicit stack
    /// (no recursion on a hostile tree's depth); a directory is entered once per
    /// point (a loop in a damaged tree is not followed).
    fn run(&mut self, first: Pair) -> io::Result<()> {
        let mut stack = vec![first];
        let mut seen = (
            std::collections::HashSet::new(),
            std::collections::HashSet::new(),
        );
        while let Some(p) = stack.pop() {
            let sa = self.stat(self.fa, &p.path, p.a);
            let sb = self.stat(self.fb, &p.path, p.b);
            let (sa, sb) = match (sa, sb) {
                (Err(()), _) | (_, Err(())) => continue,
                (Ok(a), Ok(b)) => (a, b),
            };
            let listed = !p.path.is_empty();
            let letter = match (&sa, &sb) {
                (None, None) => None,
                (None, Some(_)) => Some('+'),
                (Some(_), None) => Some('-'),
                (Some(a), Some(b)) if a.kind != b.kind => Some('T'),
                (Some(a), Some(b)) => self.compare(&p, a, b),
            };
            if let (Some(l), true) = (letter, listed) {
                match l {
                    '+' => self.changes.added += 1,
                    '-' => self.changes.removed += 1,
                    'M' => self.changes.modified += 1,
                    'U' => self.changes.metadata += 1,
                    _ => self.changes.retyped += 1,
                }
                self.out.write_all(format!("{l}    ").as_bytes())?;
                self.out.write_all(&p.path)?;
                self.out.write_all(b"\n")?;
            }
            // Children: a directory's on either side (a side that is not a directory,
            // or absent, has none).
            let dir_a = sa.as_ref().is_some_and(|a| a.kind == FileType::Directory)
                && seen.0.insert(p.a.unwrap_or(0));
            let dir_b = sb.as_ref().is_some_and(|b| b.kind == FileType::Directory)
                && seen.1.insert(p.b.unwrap_or(0));
            let ca = if dir_a {
                self.list(self.fa, &p.path, p.a)
            } else {
                Vec::new()
            };
            let cb = if dir_b {
                self.list(self.fb, &p.path, p.b)
            } else {
                Vec::new()
            };
            let mut merged: Vec<(OsString, Option<u64>, Option<u64>)> = Vec::new();
            let (mut i, mut j) = (0, 0);
            while i < ca.len() || j < cb.len() {
                let order = match (ca.get(i), cb.get(j)) {
                    (Some(x), Some(y)) => x.0.cmp(&y.0),
                    (Some(_), None) => Ordering::Less,
                    _ => Ordering::Greater,
                };
                match order {
                    Ordering::Less => {
                        merged.push((ca[i].0.clone(), Some(ca[i].1), None));
                        i += 1;
                    }
                    Ordering::Greater => {
                        merged.push((cb[j].0.clone(), None, Some(cb[j].1)));
                        j += 1;
                    }
                    Ordering::Equal => {
                        merged.push((ca[i].0.clone(), Some(ca[i].1), Some(cb[j].1)));
                        i += 1;
                        j += 1;
                    }
                }
            }
            for (name, a, b) in merged.into_iter().rev() {
                let mut path = p.path.clone();
                if listed {
                    path.push(b'/');
                }
                path.extend_from_slice(name.as_bytes());
                stack.push(Pair { path, a, b });
            }
        }
        Ok(())
    }

    /// Attributes of one side (`None`: not there); a failure is named and counted.
    fn stat(&mut self, fs: &SafeFs, path: &[u8], ino: Option<u64>) -> Result<Option<FileAttr>, ()> {
        let Some(ino) = ino else { return Ok(None) };
        fs.stat(ino).map(Some).map_err(|e| {
            self.fail(path, io_err(e));
        })
    }

    /// A directory's entries in name order; a failure is named and counted.
    fn list(&mut self, fs: &SafeFs, path: &[u8], ino: Option<u64>) -> Vec<(OsString, u64)> {
        let Some(ino) = ino else { return Vec::new() };
        match fs.list(ino) {
            Ok(mut v) => {
                v.sort();
                v
            }
            Err(e) => {
                self.fail(path, io_err(e));
                Vec::new()
            }
        }
    }

    fn fail(&mut self, path: &[u8], e: impl std::fmt::Display) {
        eprintln!("error: {}: {e}", String::from_utf8_lossy(path));
        self.failed += 1;
    }

    /// `M`, `U` or nothing for an entry of the same type in both points.
    fn compare(&mut self, p: &Pair, a: &FileAttr, b: &FileAttr) -> Option<char> {
        let (ia, ib) = (p.a.unwrap_or(0), p.b.unwrap_or(0));
        let in_tree = self.fa.in_file_tree(ia) && self.fb.in_file_tree(ib);
        let content_differs = match a.kind {
            FileType::RegularFile if a.size != b.size => true,
            FileType::RegularFile if self.how.content => !self.same_bytes(p, a.size),
            FileType::RegularFile => in_tree && a.mtime != b.mtime,
            FileType::Symlink => match (self.fa.read_link(ia), self.fb.read_link(ib)) {
                (Ok(x), Ok(y)) => x != y,
                (Err(e), _) | (_, Err(e)) => {
                    self.fail(&p.path, io_err(e));
                    return None;
                }
            },
            FileType::CharDevice | FileType::BlockDevice => a.rdev != b.rdev,
            _ => false,
        };
        if content_differs {
            return Some('M');
        }
        if !in_tree {
            return None;
        }
        let times_moved = a.kind != FileType::Directory && a.mtime != b.mtime;
        let meta_differs = a.perm != b.perm
            || a.uid != b.uid
            || a.gid != b.gid
            || times_moved
            || match (self.fa.xattrs(ia), self.fb.xattrs(ib)) {
                (Ok(mut x), Ok(mut y)) => {
                    x.sort();
                    y.sort();
                    x != y
                }
                (Err(e), _) | (_, Err(e)) => {
                    self.fail(&p.path, io_err(e));
                    false
                }
            };
        meta_differs.then_some('U')
    }

    /// Whether a file of `size` bytes reads the same in both points (a read failure
    /// is named and counted, and taken as equal so nothing is claimed about it).
    fn same_bytes(&mut self, p: &Pair, size: u64) -> bool {
        let (ia, ib) = (p.a.unwrap_or(0), p.b.unwrap_or(0));
        let mut off = 0u64;
        while off < size {
            let want = CHUNK.min((size - off) as usize);
            let (x, y) = (&mut self.bufs.0[..want], &mut self.bufs.1[..want]);
            let read = read_chunk(self.fa, ia, off, x, size)
                .and_then(|()| read_chunk(self.fb, ib, off, y, size));
            if let Err(e) = read {
                self.fail(&p.path, e);
                return true;
            }
            if x != y {
                return false;
            }
            off += want as u64;
        }
        true
    }
}
