//! Replay of btrfs's fsync log in memory: what the kernel does when it mounts a volume
//! whose last fsyncs came after its last transaction commit (a snapshot of a running
//! machine, a power cut). The log holds copies of the items of each fsynced inode (and
//! of the directories whose entries changed); replay copies them into the subvolume's
//! tree in three passes over the log, in the kernel's order: inodes (deleting what the
//! log says is gone: xattrs, directory entries in logged index ranges), then directory
//! entries, then names, xattrs and file extents; finally link counts are recounted
//! from the names found. Here the subvolume's tree is never written: changed items go
//! into an overlay (`Edits`) that the reader merges into its scans. Sizes of touched
//! directories and byte counts of touched files are recomputed from their entries and
//! extents, which is what the kernel's incremental accounting arrives at on a
//! consistent volume. Anything the log holds that this replay does not know (extended
//! refs written by a volume with thousands of links to one file, say) stops it: the
//! tree is then shown as last committed, with a warning, rather than half replayed.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io;
use std::rc::Rc;

use super::{
    dir_items, le16, le32, le64, BtrfsFs, Key, DIR_INDEX, EXTENT_CSUM, EXTENT_DATA, INODE_ITEM,
    MAX_ITEMS, ROOT_ITEM, XATTR_ITEM,
};
use crate::ntfs_ext::corrupt;

const INODE_REF: u8 = 12;
const INODE_EXTREF: u8 = 13;
const DIR_ITEM: u8 = 84;
const DIR_LOG_ITEM: u8 = 60;
const DIR_LOG_INDEX: u8 = 72;
/// The log root tree names each subvolume's log under this object id (-6).
const TREE_LOG_OBJECTID: u64 = -6i64 as u64;
const INCOMPAT_NO_HOLES: u64 = 0x200;
/// Most bytes of logged items replayed (an fsync log is a few MiB at most; a larger
/// one is damage).
const MAX_LOG_BYTES: usize = 256 << 20;

/// Changed items of one subvolume's tree: `None` deletes the item.
pub(super) type Edits = BTreeMap<Key, Option<Vec<u8>>>;

/// What a replay did, for the log line.
#[derive(Debug, Default)]
pub(super) struct Replayed {
    pub subvolumes: usize,
    pub items: usize,
    pub inodes: usize,
    /// Checksums of the logged data (csum items by logical start), which the kernel
    /// puts in the csum tree in place of any it holds for those sectors.
    pub csums: BTreeMap<u64, Vec<u8>>,
}

/// The subvolume logs the log root tree names: (subvolume, root address, level).
fn log_roots(fs: &BtrfsFs) -> io::Result<Vec<(u64, u64, u8)>> {
    let mut logs = Vec::new();
    let root = (fs.sb.log_root, fs.sb.log_root_level);
    let (lo, hi) = Key::range(TREE_LOG_OBJECTID, ROOT_ITEM);
    fs.scan(root, lo, hi, &mut |k, d| {
        if d.len() < 239 {
            return Err(corrupt("btrfs log root item truncated"));
        }
        if d[238] >= super::MAX_LEVEL {
            return Err(corrupt("btrfs log tree level"));
        }
        logs.push((k.off, le64(d, 176), d[238]));
        Ok(true)
    })?;
    Ok(logs)
}

/// Logical ranges the fsync log needs that the committed extent tree may not name,
/// for `--skip-free` to keep: every node of the log root tree and of each
/// subvolume's log, and every data extent a logged file extent points at (written
/// before the fsync, allocated only in the log until a commit).
pub(super) fn log_used(fs: &BtrfsFs) -> io::Result<Vec<(u64, u64)>> {
    if fs.sb.log_root == 0 {
        return Ok(Vec::new());
    }
    let nodesize = fs.sb.nodesize as u64;
    let mut nodes = Vec::new();
    fs.tree_blocks((fs.sb.log_root, fs.sb.log_root_level), &mut nodes)?;
    let mut out = Vec::new();
    for (_, bytenr, level) in log_roots(fs)? {
        fs.tree_blocks((bytenr, level), &mut nodes)?;
        fs.scan((bytenr, level), Key::MIN, Key::MAX, &mut |k, d| {
            // A regular or preallocated extent (not inline) with an address.
            if k.ty == EXTENT_DATA && d.len() >= 53 && d[20] != 0 && le64(d, 21) != 0 {
                if out.len() >= MAX_ITEMS {
                    return Err(corrupt("btrfs log names too many extents"));
                }
                let (at, len) = (le64(d, 21), le64(d, 29));
                if at.checked_add(len).is_none() {
                    return Err(corrupt("btrfs logged extent past the address space"));
                }
                out.push((at, len));
            }
            Ok(true)
        })?;
    }
    if nodes.iter().any(|at| at.checked_add(nodesize).is_none()) {
        return Err(corrupt("btrfs log node past the address space"));
    }
    out.extend(nodes.into_iter().map(|at| (at, nodesize)));
    Ok(out)
}

/// Replays every subvolume's log; `Ok(None)` when there is none.
pub(super) fn replay(fs: &BtrfsFs) -> io::Result<Option<(BTreeMap<u64, Edits>, Replayed)>> {
    if fs.sb.log_root == 0 {
        return Ok(None);
    }
    let logs = log_roots(fs)?;
    let mut out = BTreeMap::new();
    let mut stats = Replayed::default();
    for (subvol, bytenr, level) in logs {
        let mut items = Vec::new();
        let mut bytes = 0;
        fs.scan((bytenr, level), Key::MIN, Key::MAX, &mut |k, d| {
            bytes += d.len() + 64;
            if items.len() >= MAX_ITEMS || bytes > MAX_LOG_BYTES {
                return Err(corrupt("btrfs log larger than any fsync log"));
            }
            items.push((k, d.to_vec()));
            Ok(true)
        })?;
        stats.subvolumes += 1;
        stats.items += items.len();
        for (k, d) in &items {
            if k.ty == EXTENT_CSUM {
                stats.csums.insert(k.off, d.clone());
            }
        }
        let mut r = Replay {
            fs,
            root: fs.tree(subvol)?,
            edits: Edits::new(),
            log: Rc::new(items.into_iter().collect()),
            fixup: BTreeSet::new(),
            dirs: BTreeSet::new(),
            files: BTreeSet::new(),
            listed: HashMap::new(),
        };
        stats.inodes += r.run()?;
        out.insert(subvol, r.edits);
    }
    Ok(Some((out, stats)))
}

/// One directory entry: index key offset, location, name.
#[derive(Clone)]
struct Entry {
    index: u64,
    loc: Key,
    name: Vec<u8>,
}

struct Replay<'a> {
    fs: &'a BtrfsFs,
    root: (u64, u8),
    edits: Edits,
    /// The logged items in key order (shared with the passes that walk it).
    log: Rc<BTreeMap<Key, Vec<u8>>>,
    /// Inodes whose link count is recounted at the end.
    fixup: BTreeSet<u64>,
    /// Directories whose entries changed (sizes recomputed).
    dirs: BTreeSet<u64>,
    /// Regular files logged or whose extents changed (byte counts recomputed).
    files: BTreeSet<u64>,
    /// Directories' entries as edited so far (a large directory is read once, not
    /// once per logged name).
    listed: HashMap<u64, Listed>,
}

/// One directory's entries by index, and the index of each name.
#[derive(Default)]
struct Listed {
    by_index: BTreeMap<u64, Entry>,
    by_name: HashMap<Vec<u8>, u64>,
}

impl Listed {
    fn insert(&mut self, e: Entry) {
        if let Some(old) = self.by_index.remove(&e.index) {
            self.by_name.remove(&old.name);
        }
        self.by_name.insert(e.name.clone(), e.index);
        self.by_index.insert(e.index, e);
    }

    fn remove(&mut self, index: u64) {
        if let Some(old) = self.by_index.remove(&index) {
            if self.by_name.get(&old.name) == Some(&index) {
                self.by_name.remove(&old.name);
            }
        }
    }
}

impl Replay<'_> {
    fn run(&mut self) -> io::Result<usize> {
        let log = self.log.clone();
        for k in log.keys() {
            match k.ty {
                INODE_ITEM | INODE_REF | XATTR_ITEM | DIR_ITEM | DIR_INDEX | DIR_LOG_ITEM
                | DIR_LOG_INDEX | EXTENT_DATA | EXTENT_CSUM => {}
                INODE_EXTREF => {
                    return Err(corrupt(
                        "the log holds extended inode refs, which this replay does not handle",
                    ))
                }
                t => {
                    return Err(corrupt(format!(
                        "the log holds items of type {t}, which this replay does not handle"
                    )))
                }
            }
        }
        // Inodes logged with no links (an O_TMPFILE fsynced by an old kernel): skipped,
        // with everything else logged for them.
        let ignored: BTreeSet<u64> = log
            .iter()
            .filter(|(k, d)| k.ty == INODE_ITEM && d.len() >= 160 && le32(d, 40) == 0)
            .map(|(k, _)| k.obj)
            .collect();
        let mut inodes = 0;
        for (k, d) in log.iter().filter(|(k, _)| k.ty == INODE_ITEM) {
            if ignored.contains(&k.obj) {
                continue;
            }
            inodes += 1;
            self.replay_inode(k.obj, d)?;
        }
        for (k, d) in log.iter().filter(|(k, _)| k.ty == DIR_INDEX) {
            if !ignored.contains(&k.obj) {
                self.replay_dir_index(*k, d)?;
            }
        }
        for (k, d) in log.iter() {
            if ignored.contains(&k.obj) {
                continue;
            }
            match k.ty {
                XATTR_ITEM => self.put(*k, d.clone()),
                INODE_REF => self.add_inode_ref(*k, d)?,
                EXTENT_DATA => self.replay_extent(*k, d)?,
                _ => {}
            }
        }
        self.fixups()?;
        Ok(inodes)
    }

    // ---- the merged view: the subvolume's tree with the edits over it ----

    fn range(&self, lo: Key, hi: Key) -> io::Result<Vec<(Key, Vec<u8>)>> {
        let mut out = Vec::new();
        self.fs
            .scan_edited(self.root, &self.edits, lo, hi, &mut |k, d| {
                if out.len() >= MAX_ITEMS {
                    return Err(corrupt("btrfs range holds too many items"));
                }
                out.push((k, d.to_vec()));
                Ok(true)
            })?;
        Ok(out)
    }

    fn get(&self, k: Key) -> io::Result<Option<Vec<u8>>> {
        Ok(self.range(k, k)?.pop().map(|(_, v)| v))
    }

    fn put(&mut self, k: Key, v: Vec<u8>) {
        if k.ty == DIR_INDEX {
            if let (Some(l), Some(e)) = (self.listed.get_mut(&k.obj), entry(k, &v)) {
                l.insert(e);
            }
        }
        self.edits.insert(k, Some(v));
    }

    fn del(&mut self, k: Key) {
        if k.ty == DIR_INDEX {
            if let Some(l) = self.listed.get_mut(&k.obj) {
                l.remove(k.off);
            }
        }
        self.edits.insert(k, None);
    }

    fn inode(&self, ino: u64) -> io::Result<Option<Vec<u8>>> {
        Ok(self
            .get(Key {
                obj: ino,
                ty: INODE_ITEM,
                off: 0,
            })?
            .filter(|d| d.len() >= 160))
    }

    fn listed(&mut self, dir: u64) -> io::Result<&Listed> {
        if !self.listed.contains_key(&dir) {
            let (lo, hi) = Key::range(dir, DIR_INDEX);
            let mut l = Listed::default();
            for (k, d) in self.range(lo, hi)? {
                if let Some(e) = entry(k, &d) {
                    l.insert(e);
                }
            }
            self.listed.insert(dir, l);
        }
        Ok(&self.listed[&dir])
    }

    fn entries(&mut self, dir: u64) -> io::Result<Vec<Entry>> {
        Ok(self.listed(dir)?.by_index.values().cloned().collect())
    }

    /// The entry of `dir` holding `name`.
    fn named(&mut self, dir: u64, name: &[u8]) -> io::Result<Option<Entry>> {
        let l = self.listed(dir)?;
        Ok(l.by_name.get(name).and_then(|i| l.by_index.get(i)).cloned())
    }

    /// The entry of `dir` at `index` when it holds `name`.
    fn indexed(&mut self, dir: u64, index: u64, name: &[u8]) -> io::Result<Option<Entry>> {
        let l = self.listed(dir)?;
        Ok(l.by_index.get(&index).filter(|e| e.name == name).cloned())
    }

    /// Names of `ino` in directory `parent` (its INODE_REF item there).
    fn refs(&self, ino: u64, parent: u64) -> io::Result<Vec<(u64, Vec<u8>)>> {
        let k = Key {
            obj: ino,
            ty: INODE_REF,
            off: parent,
        };
        Ok(self.get(k)?.map(|d| parse_refs(&d)).unwrap_or_default())
    }

    fn set_refs(&mut self, ino: u64, parent: u64, refs: &[(u64, Vec<u8>)]) {
        let k = Key {
            obj: ino,
            ty: INODE_REF,
            off: parent,
        };
        if refs.is_empty() {
            self.del(k);
        } else {
            let mut d = Vec::new();
            for (index, name) in refs {
                d.extend_from_slice(&index.to_le_bytes());
                d.extend_from_slice(&(name.len() as u16).to_le_bytes());
                d.extend_from_slice(name);
            }
            self.put(k, d);
        }
    }

    // ---- the operations replay is made of ----

    /// Removes `name` from `dir` (entry and back reference), as an unlink does.
    fn unlink(&mut self, dir: u64, child: u64, name: &[u8]) -> io::Result<()> {
        if let Some(e) = self.named(dir, name)? {
            self.del(Key {
                obj: dir,
                ty: DIR_INDEX,
                off: e.index,
            });
        }
        let mut refs = self.refs(child, dir)?;
        refs.retain(|(_, n)| n != name);
        self.set_refs(child, dir, &refs);
        self.fixup.insert(child);
        self.dirs.insert(dir);
        Ok(())
    }

    /// Adds `name` in `dir` for `child` at `index`, with its back reference when
    /// `backref`; nothing when the name is taken.
    fn add_link(
        &mut self,
        dir: u64,
        child: u64,
        name: &[u8],
        index: u64,
        backref: bool,
    ) -> io::Result<bool> {
        if self.named(dir, name)?.is_some() {
            return Ok(false);
        }
        let Some(ci) = self.inode(child)? else {
            return Ok(false);
        };
        let ftype = match le32(&ci, 52) & 0xF000 {
            0x8000 => 1,
            0x4000 => 2,
            0x2000 => 3,
            0x6000 => 4,
            0x1000 => 5,
            0xC000 => 6,
            0xA000 => 7,
            _ => 0,
        };
        let mut d = Vec::with_capacity(30 + name.len());
        d.extend_from_slice(&child.to_le_bytes());
        d.push(INODE_ITEM);
        d.extend_from_slice(&0u64.to_le_bytes());
        d.extend_from_slice(&0u64.to_le_bytes()); // transid
        d.extend_from_slice(&0u16.to_le_bytes()); // data length
        d.extend_from_slice(&(name.len() as u16).to_le_bytes());
        d.push(ftype);
        d.extend_from_slice(name);
        self.put(
            Key {
                obj: dir,
                ty: DIR_INDEX,
                off: index,
            },
            d,
        );
        if backref {
            let mut refs = self.refs(child, dir)?;
            refs.push((index, name.to_vec()));
            self.set_refs(child, dir, &refs);
        }
        self.dirs.insert(dir);
        Ok(true)
    }

    /// Drops a directory entry found in the way of a logged one (its inode's name
    /// goes with it).
    fn drop_entry(&mut self, dir: u64, e: &Entry) -> io::Result<()> {
        if e.loc.ty == INODE_ITEM {
            self.unlink(dir, e.loc.obj, &e.name)
        } else {
            // A subvolume's entry: only the entry goes.
            self.del(Key {
                obj: dir,
                ty: DIR_INDEX,
                off: e.index,
            });
            self.dirs.insert(dir);
            Ok(())
        }
    }

    /// First pass, per logged inode: xattrs and directory entries the log says are
    /// gone are deleted, the inode item copied, a regular file cut at its size.
    fn replay_inode(&mut self, ino: u64, d: &[u8]) -> io::Result<()> {
        if d.len() < 160 {
            return Err(corrupt(format!("logged inode {ino} truncated")));
        }
        // Xattrs not in the log.
        let (lo, hi) = Key::range(ino, XATTR_ITEM);
        for (k, item) in self.range(lo, hi)? {
            let names: Vec<Vec<u8>> = dir_items(&item)
                .iter()
                .map(|(_, _, n, _)| n.to_vec())
                .collect();
            let logged = self.log.get(&k);
            let kept: Vec<Vec<u8>> = names
                .iter()
                .filter(|n| {
                    logged.is_some_and(|l| dir_items(l).iter().any(|(_, _, ln, _)| ln == n))
                })
                .cloned()
                .collect();
            if kept.len() < names.len() {
                let mut out = Vec::new();
                let mut rest: &[u8] = &item;
                for (_, _, n, v) in dir_items(&item) {
                    let len = 30 + n.len() + v.len();
                    if kept.iter().any(|x| x == n) {
                        out.extend_from_slice(&rest[..len]);
                    }
                    rest = &rest[len..];
                }
                if out.is_empty() {
                    self.del(k);
                } else {
                    self.put(k, out);
                }
            }
        }
        let mode = le32(d, 52);
        if mode & 0xF000 == 0x4000 {
            self.dir_deletes(ino)?;
        }
        let mut new = d.to_vec();
        let existing = self.inode(ino)?;
        match existing {
            Some(old) => {
                if le64(d, 0) == 0 {
                    // Logged only to say it exists: the tree's item stays, but for a
                    // regular file's logged size.
                    let size = le64(d, 16);
                    if mode & 0xF000 == 0x8000 && le32(&old, 52) & 0xF000 == 0x8000 && size != 0 {
                        let mut o = old.clone();
                        o[16..24].copy_from_slice(&size.to_le_bytes());
                        self.put(Self::inode_key(ino), o);
                    }
                    new = self.inode(ino)?.unwrap_or(old);
                } else {
                    new[24..32].copy_from_slice(&old[24..32]); // nbytes: recounted
                    if mode & 0xF000 == 0x4000 && le32(&old, 52) & 0xF000 == 0x4000 {
                        new[16..24].copy_from_slice(&old[16..24]); // size: recounted
                    }
                    self.put(Self::inode_key(ino), new.clone());
                }
            }
            None => {
                new[24..32].fill(0);
                if mode & 0xF000 == 0x4000 {
                    new[16..24].fill(0);
                }
                self.put(Self::inode_key(ino), new.clone());
            }
        }
        if mode & 0xF000 == 0x8000 {
            let sector = self.fs.sb.sectorsize as u64;
            let from = le64(&new, 16).div_ceil(sector).saturating_mul(sector);
            self.drop_extents(ino, from, u64::MAX)?;
            self.files.insert(ino);
        }
        if mode & 0xF000 == 0x4000 {
            self.dirs.insert(ino);
        }
        self.fixup.insert(ino);
        Ok(())
    }

    fn inode_key(ino: u64) -> Key {
        Key {
            obj: ino,
            ty: INODE_ITEM,
            off: 0,
        }
    }

    /// Entries of a logged directory inside the index ranges the log covers, but not
    /// in the log: deleted before the fsync, so unlinked.
    fn dir_deletes(&mut self, dir: u64) -> io::Result<()> {
        let ranges: Vec<(u64, u64)> = self
            .log
            .range(Key::range(dir, DIR_LOG_INDEX).0..=Key::range(dir, DIR_LOG_INDEX).1)
            .filter(|(_, d)| d.len() >= 8)
            .map(|(k, d)| (k.off, le64(d, 0)))
            .collect();
        if ranges.is_empty() {
            return Ok(());
        }
        for e in self.entries(dir)? {
            if !ranges.iter().any(|&(a, b)| a <= e.index && e.index <= b) {
                continue;
            }
            let logged = self
                .log
                .get(&Key {
                    obj: dir,
                    ty: DIR_INDEX,
                    off: e.index,
                })
                .and_then(|d| dir_items(d).first().map(|(_, _, n, _)| n.to_vec()));
            if logged.as_deref() != Some(&e.name[..]) {
                self.drop_entry(dir, &e)?;
            }
        }
        Ok(())
    }

    /// Second pass: a logged directory entry whose inode exists and whose name is not
    /// coming through that inode's logged names.
    fn replay_dir_index(&mut self, k: Key, d: &[u8]) -> io::Result<()> {
        let Some((loc, ftype, name, _)) = dir_items(d).into_iter().next() else {
            return Err(corrupt("logged directory entry truncated"));
        };
        let (dir, name) = (k.obj, name.to_vec());
        if self.inode(dir)?.is_none() {
            return Err(corrupt(format!("logged entry in missing directory {dir}")));
        }
        let exists = loc.ty == INODE_ITEM && self.inode(loc.obj)?.is_some();
        let same = |e: &Entry| e.loc == loc;
        let by_name = self.named(dir, &name)?;
        let by_index = self.indexed(dir, k.off, &name)?;
        let (name_ok, index_ok) = (
            by_name.as_ref().is_some_and(same),
            by_index.as_ref().is_some_and(same),
        );
        for e in [by_name, by_index].into_iter().flatten() {
            if !same(&e) && exists {
                self.drop_entry(dir, &e)?;
            }
        }
        if name_ok && index_ok {
            return Ok(());
        }
        let logged_ref = self
            .log
            .get(&Key {
                obj: loc.obj,
                ty: INODE_REF,
                off: dir,
            })
            .is_some_and(|r| parse_refs(r).iter().any(|(_, n)| *n == name));
        if logged_ref || !exists {
            return Ok(());
        }
        if self.add_link(dir, loc.obj, &name, k.off, true)? && ftype != 2 {
            self.fixup.insert(loc.obj);
        }
        Ok(())
    }

    /// Third pass, a logged INODE_REF: each logged name made to exist (conflicting
    /// names and indexes dropped), names of the tree's ref not in the log unlinked,
    /// the ref item copied.
    fn add_inode_ref(&mut self, k: Key, d: &[u8]) -> io::Result<()> {
        let (ino, parent) = (k.obj, k.off);
        if self.inode(parent)?.is_none() {
            return Ok(()); // parent not logged: the link count fixup settles it
        }
        if self.inode(ino)?.is_none() {
            return Err(corrupt(format!("logged ref of missing inode {ino}")));
        }
        let logged = parse_refs(d);
        for (index, name) in &logged {
            let points_here = |e: Option<Entry>| e.is_some_and(|e| e.loc.obj == ino);
            let in_dir = points_here(self.indexed(parent, *index, name)?)
                && points_here(self.named(parent, name)?);
            if in_dir {
                continue;
            }
            if ino == parent {
                return Ok(());
            }
            // The tree's names of this inode in this directory that the log lacks.
            for (_, old) in self.refs(ino, parent)? {
                if !logged.iter().any(|(_, n)| *n == old) {
                    self.unlink(parent, ino, &old)?;
                }
            }
            // Whatever holds the logged name.
            if let Some(e) = self.named(parent, name)? {
                self.drop_entry(parent, &e)?;
            }
            self.add_link(parent, ino, name, *index, false)?;
        }
        for (_, old) in self.refs(ino, parent)? {
            if !logged.iter().any(|(_, n)| *n == old) {
                self.unlink(parent, ino, &old)?;
            }
        }
        self.put(k, d.to_vec());
        self.fixup.insert(ino);
        Ok(())
    }

    /// A logged file extent: the range it covers is dropped from the file, then the
    /// extent is put in (holes only on volumes without NO_HOLES).
    fn replay_extent(&mut self, k: Key, d: &[u8]) -> io::Result<()> {
        if d.len() < 21 {
            return Err(corrupt("logged extent truncated"));
        }
        let sector = self.fs.sb.sectorsize as u64;
        let (start, kind) = (k.off, d[20]);
        let end = match kind {
            0 => start
                .saturating_add(le64(d, 8))
                .div_ceil(sector)
                .saturating_mul(sector),
            1 | 2 if d.len() >= 53 => start.saturating_add(le64(d, 45)),
            _ => return Err(corrupt("logged extent of unknown type")),
        };
        if kind != 0 {
            if let Some(old) = self.get(k)? {
                if old.len() >= 53 && old[..53] == d[..53] {
                    return Ok(());
                }
            }
        }
        self.drop_extents(k.obj, start, end)?;
        let hole = kind != 0 && le64(d, 21) == 0;
        if !(hole && self.fs.sb.incompat & INCOMPAT_NO_HOLES != 0) {
            self.put(k, d.to_vec());
        }
        self.files.insert(k.obj);
        Ok(())
    }

    /// Removes the file's extents over `start..end`, keeping what lies outside (an
    /// extent across either end is cut, its offset moved for the part after `end`).
    fn drop_extents(&mut self, ino: u64, start: u64, end: u64) -> io::Result<()> {
        let (lo, hi) = Key::range(ino, EXTENT_DATA);
        for (k, d) in self.range(lo, hi)? {
            if k.off >= end || d.len() < 21 {
                continue;
            }
            let inline = d[20] == 0;
            let len = if inline {
                le64(&d, 8)
            } else if d.len() >= 53 {
                le64(&d, 45)
            } else {
                continue;
            };
            let e_end = k.off.saturating_add(len);
            if e_end <= start {
                continue;
            }
            self.del(k);
            if inline {
                continue;
            }
            if k.off < start {
                let mut head = d.clone();
                head[45..53].copy_from_slice(&(start - k.off).to_le_bytes());
                self.put(k, head);
            }
            if e_end > end {
                let mut tail = d.clone();
                let cut = end - k.off;
                let off = le64(&d, 37).saturating_add(cut);
                tail[37..45].copy_from_slice(&off.to_le_bytes());
                tail[45..53].copy_from_slice(&(e_end - end).to_le_bytes());
                self.put(
                    Key {
                        obj: ino,
                        ty: EXTENT_DATA,
                        off: end,
                    },
                    tail,
                );
            }
        }
        self.files.insert(ino);
        Ok(())
    }

    /// Link counts from the names found; directories' sizes from their entries; files'
    /// byte counts from their extents.
    fn fixups(&mut self) -> io::Result<()> {
        let mut todo: Vec<u64> = self.fixup.iter().copied().collect();
        let mut done = BTreeSet::new();
        while let Some(ino) = todo.pop() {
            if !done.insert(ino) || done.len() > MAX_ITEMS {
                continue;
            }
            let Some(mut item) = self.inode(ino)? else {
                continue;
            };
            let mut nlink = 0u32;
            let (lo, _) = Key::range(ino, INODE_REF);
            let hi = Key {
                obj: ino,
                ty: INODE_EXTREF,
                off: u64::MAX,
            };
            for (k, d) in self.range(lo, hi)? {
                nlink += match k.ty {
                    INODE_REF => parse_refs(&d).len() as u32,
                    _ => parse_extrefs(&d),
                };
            }
            if nlink == 0 && le32(&item, 52) & 0xF000 == 0x4000 {
                // A directory with no name left: its entries go too (rm -rf replayed).
                for e in self.entries(ino)? {
                    self.drop_entry(ino, &e)?;
                    if e.loc.ty == INODE_ITEM {
                        done.remove(&e.loc.obj);
                        todo.push(e.loc.obj);
                    }
                }
            }
            if le32(&item, 40) != nlink {
                item[40..44].copy_from_slice(&nlink.to_le_bytes());
                self.put(Self::inode_key(ino), item);
            }
        }
        for dir in std::mem::take(&mut self.dirs) {
            let Some(mut item) = self.inode(dir)? else {
                continue;
            };
            let size: u64 = self
                .entries(dir)?
                .iter()
                .map(|e| 2 * e.name.len() as u64)
                .sum();
            if le64(&item, 16) != size {
                item[16..24].copy_from_slice(&size.to_le_bytes());
                self.put(Self::inode_key(dir), item);
            }
        }
        for ino in std::mem::take(&mut self.files) {
            let Some(mut item) = self.inode(ino)? else {
                continue;
            };
            if le32(&item, 52) & 0xF000 != 0x8000 {
                continue;
            }
            let (lo, hi) = Key::range(ino, EXTENT_DATA);
            let mut bytes = 0u64;
            for (_, d) in self.range(lo, hi)? {
                if d.len() >= 21 && d[20] == 0 {
                    bytes = bytes.saturating_add(le64(&d, 8));
                } else if d.len() >= 53 && le64(&d, 21) != 0 {
                    bytes = bytes.saturating_add(le64(&d, 45));
                }
            }
            if le64(&item, 24) != bytes {
                item[24..32].copy_from_slice(&bytes.to_le_bytes());
                self.put(Self::inode_key(ino), item);
            }
        }
        Ok(())
    }
}

/// A directory index item's entry.
fn entry(k: Key, d: &[u8]) -> Option<Entry> {
    let (loc, _, name, _) = dir_items(d).into_iter().next()?;
    Some(Entry {
        index: k.off,
        loc,
        name: name.to_vec(),
    })
}

/// An INODE_REF item's names: (directory index, name).
fn parse_refs(mut d: &[u8]) -> Vec<(u64, Vec<u8>)> {
    let mut out = Vec::new();
    while d.len() >= 10 {
        let n = le16(d, 8) as usize;
        let Some(name) = d.get(10..10 + n) else { break };
        out.push((le64(d, 0), name.to_vec()));
        d = &d[10 + n..];
    }
    out
}

/// How many names an INODE_EXTREF item holds.
fn parse_extrefs(mut d: &[u8]) -> u32 {
    let mut n = 0;
    while d.len() >= 18 {
        let len = le16(d, 16) as usize;
        if d.len() < 18 + len {
            break;
        }
        n += 1;
        d = &d[18 + len..];
    }
    n
}
