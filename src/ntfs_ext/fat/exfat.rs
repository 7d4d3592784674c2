//! exFAT file trees (SD cards and USB sticks over 32 GB, cameras): a boot sector, a
//! FAT of 32-bit entries, and directories of 32-byte entry sets — a file entry, a
//! stream extension (first cluster, sizes, whether the clusters are contiguous so
//! the FAT is not used), then the name in UTF-16 pieces — each set checksummed.
//!
//! Inode numbers are the file entry's byte position / 32; a node is found again
//! through the directory that listed it (so an exFAT tree, once browsed, stays
//! open). Names match whatever their case, as Linux's exfat matches them. Times are
//! local times with a UTC offset, read as UTC where the offset is absent. Bytes past
//! a file's valid data length read as zeros and count as a hole.

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, OnceLock};

use super::{fat_time, le16, le32, FAT_CACHE};
use crate::cache::{Weigh, WeightedLru};
use crate::ntfs_ext::tree::{DirEntry, FsTree, NodeKind, Stat, StatFs, Timespec, TreeOptions};
use crate::ntfs_ext::{corrupt, run_spans};
use crate::readat::ReadAt;

const ROOT: u64 = 1;
const FAT_CHUNK: u64 = 64 << 10;
const DIR_CACHE: usize = 16 << 20;
/// Most entries read from one directory (exFAT allows 256 MiB of them).
const MAX_DIR_BYTES: u64 = 256 << 20;
const ATTR_DIR: u16 = 0x10;
const NO_FAT_CHAIN: u8 = 0x02;

fn le64(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
}

/// The boot sector's layout, checked against the volume.
#[derive(Debug, Clone)]
struct Layout {
    cluster: u64,
    fat: u64,
    fat_bytes: u64,
    heap: u64,
    clusters: u32,
    root: u32,
}

impl Layout {
    fn parse(b: &[u8], size: u64) -> Result<Layout, String> {
        if &b[3..11] != b"EXFAT   " {
            return Err("no exFAT signature".into());
        }
        let (bps_shift, spc_shift) = (b[108] as u32, b[109] as u32);
        if !(9..=12).contains(&bps_shift) || bps_shift + spc_shift > 25 {
            return Err(format!(
                "sector 2^{bps_shift}, cluster 2^{spc_shift} sectors"
            ));
        }
        let bps = 1u64 << bps_shift;
        let cluster = bps << spc_shift;
        let nfats = b[110] as u64;
        if !(1..=2).contains(&nfats) {
            return Err(format!("{nfats} FATs"));
        }
        let fat_len = le32(b, 84) as u64 * bps;
        // The second FAT is the one in use when the volume flags say so.
        let active = if nfats == 2 && le16(b, 106) & 1 != 0 {
            1
        } else {
            0
        };
        let fat = le32(b, 80) as u64 * bps + active * fat_len;
        let heap = le32(b, 88) as u64 * bps;
        let clusters = le32(b, 92);
        let root = le32(b, 96);
        if clusters == 0 || clusters > 0xFFFF_FFF5 || (clusters as u64 + 2) * 4 > fat_len {
            return Err(format!("{clusters} clusters for a FAT of {fat_len} bytes"));
        }
        let fats_end = le32(b, 80) as u64 * bps + nfats * fat_len;
        if fats_end > heap || heap + clusters as u64 * cluster > size {
            return Err("layout runs past the volume".into());
        }
        if root < 2 || root as u64 >= clusters as u64 + 2 {
            return Err(format!("root cluster {root} out of range"));
        }
        Ok(Layout {
            cluster,
            fat,
            fat_bytes: fat_len,
            heap,
            clusters,
            root,
        })
    }

    fn cluster_at(&self, c: u32) -> u64 {
        self.heap + (c as u64 - 2) * self.cluster
    }
}

/// Whether the volume starts with an exFAT boot sector.
pub fn probe(dev: &dyn ReadAt) -> io::Result<bool> {
    if dev.size() < 512 {
        return Ok(false);
    }
    let mut b = [0u8; 11];
    dev.read_exact_at(0, &mut b)?;
    Ok(&b[3..11] == b"EXFAT   ")
}

/// The boot checksum of a boot region's first 11 sectors (`region`), as exFAT
/// defines it: every byte but VolumeFlags and PercentInUse, rotated in.
fn boot_checksum(region: &[u8]) -> u32 {
    region
        .iter()
        .enumerate()
        .filter(|&(i, _)| !matches!(i, 106 | 107 | 112))
        .fold(0u32, |sum, (_, &b)| {
            sum.rotate_right(1).wrapping_add(b as u32)
        })
}

/// An exFAT volume whose main boot region is unreadable (a failing disk's backup did
/// not give it), damaged (`why`) or wiped, read through the backup boot region exFAT
/// keeps from sector 12 (checked by its signature, sector size, layout and boot
/// checksum); `None` when there is none or sector 0 holds something else.
pub fn open_backup(
    dev: &Arc<dyn ReadAt>,
    opts: &TreeOptions,
    why: &str,
) -> Option<io::Result<ExFatFs>> {
    if !crate::ntfs_ext::start_gone_or_ours(&**dev, |b| &b[3..11] == b"EXFAT   ", true) {
        return None;
    }
    for shift in 9..=12u32 {
        let ss = 1usize << shift;
        let mut region = vec![0u8; 12 * ss];
        if dev.read_exact_at(12 * ss as u64, &mut region).is_err() {
            continue;
        }
        let b = &region[..512];
        let sum = boot_checksum(&region[..11 * ss]);
        let sums_match = region[11 * ss..]
            .chunks_exact(4)
            .all(|c| u32::from_le_bytes(c.try_into().unwrap()) == sum);
        if b[108] as u32 != shift || !sums_match || Layout::parse(b, dev.size()).is_err() {
            continue;
        }
        tracing::warn!(
            "{}: exFAT boot sector unusable ({why}); read through its backup boot region at sector 12",
            opts.label
        );
        let patched = crate::readat::Patched::new(dev.clone(), vec![(0, b.to_vec())]);
        return Some(ExFatFs::open(Arc::new(patched), opts));
    }
    None
}

/// What a directory entry set says of a file or directory.
#[derive(Debug, Clone)]
struct Node {
    dir: bool,
    first: u32,
    contiguous: bool,
    size: u64,
    valid: u64,
    mtime: Timespec,
    atime: Timespec,
    crtime: Timespec,
}

struct Listing {
    entries: Arc<Vec<DirEntry>>,
    nodes: HashMap<u64, Node>,
    folded: HashMap<Vec<u16>, u64>,
}

impl Weigh for Arc<Listing> {
    fn weight(&self) -> usize {
        self.entries
            .iter()
            .map(|e| e.name.len() * 3 + 160)
            .sum::<usize>()
            + 64
    }
}

/// A timestamp: local date and time (FAT's packing), 10 ms steps, and the offset to
/// UTC in 15-minute steps when its top bit says it is there.
fn ex_time(ts: u32, cs: u8, utc_offset: u8) -> Timespec {
    let mut t = fat_time((ts >> 16) as u16, ts as u16, cs);
    if utc_offset & 0x80 != 0 {
        let quarter = ((utc_offset << 1) as i8 >> 1) as i64; // 7-bit two's complement
        t.secs -= quarter * 15 * 60;
    }
    t
}

/// The set checksum: every byte of the set but the checksum field itself.
fn set_checksum(set: &[u8]) -> u16 {
    let mut sum: u16 = 0;
    for (i, &b) in set.iter().enumerate() {
        if i == 2 || i == 3 {
            continue;
        }
        sum = sum.rotate_right(1).wrapping_add(b as u16);
    }
    sum
}

/// A name as Linux's exfat compares names: each UTF-16 unit through the volume's
/// up-case table (`None`: no table read; Unicode's simple uppercase per character).
fn fold(name: &[u8], upcase: Option<&[u16]>) -> Vec<u16> {
    let text = String::from_utf8_lossy(name);
    match upcase {
        Some(t) => text
            .encode_utf16()
            .map(|u| t.get(u as usize).copied().unwrap_or(u))
            .collect(),
        None => text
            .chars()
            .map(|c| {
                let mut up = c.to_uppercase();
                match (up.next(), up.next()) {
                    (Some(u), None) => u,
                    _ => c, // no one-to-one uppercase: as is
                }
            })
            .collect::<String>()
            .encode_utf16()
            .collect(),
    }
}

/// Expands an up-case table: 16-bit units, where 0xFFFF then a count stands for
/// that many characters that map to themselves.
fn expand_upcase(raw: &[u8]) -> Vec<u16> {
    let mut t: Vec<u16> = Vec::with_capacity(1 << 16);
    let mut units = raw
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]));
    while t.len() < 1 << 16 {
        match units.next() {
            None => break,
            Some(0xFFFF) => {
                let n = units.next().unwrap_or(0) as usize;
                let start = t.len();
                t.extend((start..(start + n).min(1 << 16)).map(|c| c as u16));
            }
            Some(u) => t.push(u),
        }
    }
    let start = t.len();
    t.extend((start..1 << 16).map(|c| c as u16));
    t
}

/// An open exFAT volume.
pub struct ExFatFs {
    dev: Arc<dyn ReadAt>,
    layout: Layout,
    label: String,
    /// Where listings count entries left out as damaged.
    left_out: crate::ntfs_ext::LeftOut,
    uid: u32,
    gid: u32,
    fat: WeightedLru<u64, Arc<Vec<u8>>>,
    dirs: WeightedLru<u64, Arc<Listing>>,
    /// Each listed node's directory, so a node can be found again by its number.
    parents: std::sync::Mutex<HashMap<u64, u64>>,
    bad_set: OnceLock<()>,
    free: OnceLock<u64>,
    upcase: OnceLock<Option<Vec<u16>>>,
}

impl ExFatFs {
    /// Opens the volume; its boot sector must describe a layout that fits it.
    pub fn open(dev: Arc<dyn ReadAt>, opts: &TreeOptions) -> io::Result<ExFatFs> {
        let mut b = [0u8; 512];
        dev.read_exact_at(0, &mut b)?;
        let layout = Layout::parse(&b, dev.size())
            .map_err(|e| corrupt(format!("{}: not an exFAT volume: {e}", opts.label)))?;
        let budget = || opts.budget.clone();
        Ok(ExFatFs {
            dev,
            layout,
            label: opts.label.clone(),
            left_out: opts.left_out.clone(),
            uid: opts.uid,
            gid: opts.gid,
            fat: WeightedLru::with_budget(FAT_CACHE, budget()),
            dirs: WeightedLru::with_budget(DIR_CACHE, budget()),
            parents: std::sync::Mutex::new(HashMap::new()),
            bad_set: OnceLock::new(),
            free: OnceLock::new(),
            upcase: OnceLock::new(),
        })
    }

    /// The FAT's entry for cluster `c`.
    fn fat_entry(&self, c: u32) -> io::Result<u32> {
        let off = c as u64 * 4;
        if off + 4 > self.layout.fat_bytes {
            return Err(corrupt(format!(
                "{}: FAT entry {c} past the FAT",
                self.label
            )));
        }
        let chunk = off / FAT_CHUNK;
        let data = match self.fat.get(&chunk) {
            Some(d) => d,
            None => {
                let start = chunk * FAT_CHUNK;
                let len = FAT_CHUNK.min(self.layout.fat_bytes - start) as usize;
                let mut d = vec![0u8; len];
                self.dev.read_exact_at(self.layout.fat + start, &mut d)?;
                let d = Arc::new(d);
                self.fat.put(chunk, d.clone());
                d
            }
        };
        Ok(le32(&data, (off % FAT_CHUNK) as usize))
    }

    fn valid(&self, c: u32) -> bool {
        c >= 2 && (c as u64) < self.layout.clusters as u64 + 2
    }

    /// A file's or directory's clusters as runs (offset in it, length, volume
    /// offset), covering `len` bytes: contiguous from `first`, or through the FAT.
    fn runs(&self, first: u32, contiguous: bool, len: u64) -> io::Result<Vec<(u64, u64, u64)>> {
        let l = &self.layout;
        let n = len.div_ceil(l.cluster);
        if n == 0 {
            return Ok(Vec::new());
        }
        if !self.valid(first) {
            return Err(corrupt(format!(
                "{}: first cluster {first} out of range",
                self.label
            )));
        }
        if contiguous {
            if first as u64 + n > l.clusters as u64 + 2 {
                return Err(corrupt(format!(
                    "{}: clusters from {first} run past the heap",
                    self.label
                )));
            }
            return Ok(vec![(0, n * l.cluster, l.cluster_at(first))]);
        }
        let mut runs: Vec<(u64, u64, u64)> = Vec::new();
        let mut c = first;
        for i in 0..n.min(l.clusters as u64) {
            let at = l.cluster_at(c);
            match runs.last_mut() {
                Some((_, rl, ro)) if *ro + *rl == at => *rl += l.cluster,
                _ => runs.push((i * l.cluster, l.cluster, at)),
            }
            if i + 1 == n {
                break;
            }
            let next = self.fat_entry(c)?;
            if !self.valid(next) {
                return Err(corrupt(format!(
                    "{}: cluster chain from {first} ends at {c} (entry {next:#x}) before its size",
                    self.label
                )));
            }
            c = next;
        }
        if runs.iter().map(|r| r.1).sum::<u64>() < n * l.cluster {
            return Err(corrupt(format!(
                "{}: cluster chain from {first} loops",
                self.label
            )));
        }
        Ok(runs)
    }

    /// The root directory's node: its chain through the FAT to the end.
    fn root_node(&self) -> io::Result<Node> {
        let mut c = self.layout.root;
        let mut n = 1u64;
        loop {
            let next = self.fat_entry(c)?;
            if !self.valid(next) {
                break;
            }
            n += 1;
            if n > self.layout.clusters as u64 || n * self.layout.cluster > MAX_DIR_BYTES {
                return Err(corrupt(format!(
                    "{}: root directory chain loops",
                    self.label
                )));
            }
            c = next;
        }
        Ok(Node {
            dir: true,
            first: self.layout.root,
            contiguous: false,
            size: n * self.layout.cluster,
            valid: n * self.layout.cluster,
            mtime: Timespec::default(),
            atime: Timespec::default(),
            crtime: Timespec::default(),
        })
    }

    fn node(&self, ino: u64) -> io::Result<Node> {
        if ino == ROOT {
            return self.root_node();
        }
        let parent = self.parents.lock().unwrap().get(&ino).copied();
        let Some(parent) = parent else {
            return Err(corrupt(format!(
                "{}: inode {ino} was never listed",
                self.label
            )));
        };
        self.listing(parent)?
            .nodes
            .get(&ino)
            .cloned()
            .ok_or_else(|| {
                corrupt(format!(
                    "{}: inode {ino} is gone from its directory",
                    self.label
                ))
            })
    }

    fn listing(&self, ino: u64) -> io::Result<Arc<Listing>> {
        if let Some(l) = self.dirs.get(&ino) {
            return Ok(l);
        }
        let dir = self.node(ino)?;
        if !dir.dir {
            return Err(io::Error::from_raw_os_error(libc::ENOTDIR));
        }
        let len = dir.size.min(MAX_DIR_BYTES);
        let runs = self.runs(dir.first, dir.contiguous, len)?;
        // The directory's bytes, each 32-byte entry with its position on the volume.
        let mut bytes = Vec::with_capacity(len as usize);
        let mut pos = Vec::with_capacity((len / 32) as usize);
        for &(_, n, at) in &runs {
            let mut b = vec![0u8; n as usize];
            self.dev.read_exact_at(at, &mut b)?;
            bytes.extend_from_slice(&b);
            pos.extend((0..n / 32).map(|i| at + i * 32));
        }
        let (mut entries, mut nodes, mut folded) = (Vec::new(), HashMap::new(), HashMap::new());
        let mut i = 0usize;
        let count = bytes.len() / 32;
        while i < count {
            let e = &bytes[i * 32..i * 32 + 32];
            match e[0] {
                0x00 => break, // end of directory
                0x85 => {}
                _ => {
                    i += 1;
                    continue;
                }
            }
            let secondary = e[1] as usize;
            if secondary < 2 || i + 1 + secondary > count {
                i += 1;
                continue;
            }
            let set = &bytes[i * 32..(i + 1 + secondary) * 32];
            let stream = &set[32..64];
            let ok = stream[0] == 0xC0
                && set_checksum(set) == le16(set, 2)
                && set[64..].chunks_exact(32).all(|n| n[0] == 0xC1);
            if !ok {
                self.left_out.add(1);
                if self.bad_set.set(()).is_ok() {
                    tracing::warn!(
                        "{}: a directory entry set fails its checks and is skipped (further ones not logged)",
                        self.label
                    );
                }
                i += 1;
                continue;
            }
            let name_len = stream[3] as usize;
            let units: Vec<u16> = set[64..]
                .chunks_exact(32)
                .flat_map(|n| (0..15).map(move |k| le16(n, 2 + 2 * k)))
                .take(name_len)
                .collect();
            let name = crate::ntfs_ext::ntfs::names::to_bytes(&units);
            let node = Node {
                dir: le16(e, 4) & ATTR_DIR != 0,
                first: le32(stream, 20),
                contiguous: stream[1] & NO_FAT_CHAIN != 0,
                size: le64(stream, 24),
                valid: le64(stream, 8).min(le64(stream, 24)),
                mtime: ex_time(le32(e, 12), e[21], e[23]),
                atime: ex_time(le32(e, 16), 0, e[24]),
                crtime: ex_time(le32(e, 8), e[20], e[22]),
            };
            i += 1 + secondary;
            if name.is_empty()
                || name.contains(&b'/')
                || name.contains(&0)
                || units.len() < name_len
            {
                continue;
            }
            let child = pos[i - 1 - secondary] / 32;
            folded.entry(fold(&name, self.upcase())).or_insert(child);
            entries.push(DirEntry {
                name,
                ino: child,
                kind: if node.dir {
                    NodeKind::Dir
                } else {
                    NodeKind::File
                },
            });
            nodes.insert(child, node);
        }
        {
            let mut p = self.parents.lock().unwrap();
            for e in &entries {
                p.insert(e.ino, ino);
            }
        }
        let l = Arc::new(Listing {
            entries: Arc::new(entries),
            nodes,
            folded,
        });
        self.dirs.put(ino, l.clone());
        Ok(l)
    }

    /// The volume's up-case table (the root's 0x82 entry), expanded; `None` when it
    /// cannot be read (names then fold by Unicode's rules, with a warning).
    fn upcase(&self) -> Option<&[u16]> {
        self.upcase
            .get_or_init(|| {
                let table = self.root_entry(0x82).and_then(|e| {
                    let len = le64(&e, 24).min(256 << 10);
                    let runs = self.runs(le32(&e, 20), false, len)?;
                    let mut raw = Vec::with_capacity(len as usize);
                    for (_, n, at) in runs {
                        let mut b = vec![0u8; n as usize];
                        self.dev.read_exact_at(at, &mut b)?;
                        raw.extend_from_slice(&b);
                    }
                    raw.truncate(len as usize);
                    Ok(expand_upcase(&raw))
                });
                match table {
                    Ok(t) => Some(t),
                    Err(e) => {
                        tracing::warn!("{}: exFAT up-case table unreadable ({e}); names fold by Unicode's rules", self.label);
                        None
                    }
                }
            })
            .as_deref()
    }

    /// The root directory's first entry of `kind` (0x81 bitmap, 0x82 up-case table).
    fn root_entry(&self, kind: u8) -> io::Result<[u8; 32]> {
        let root = self.root_node()?;
        for (_, n, at) in self.runs(root.first, false, root.size.min(MAX_DIR_BYTES))? {
            let mut b = vec![0u8; n as usize];
            self.dev.read_exact_at(at, &mut b)?;
            for e in b.chunks_exact(32) {
                if e[0] == kind {
                    return Ok(e.try_into().unwrap());
                }
                if e[0] == 0 {
                    break;
                }
            }
        }
        Err(corrupt(format!("{}: no root entry {kind:#x}", self.label)))
    }

    /// Free clusters from the allocation bitmap (the root's 0x81 entry).
    fn free_clusters(&self) -> u64 {
        *self.free.get_or_init(|| {
            let mut used = 0u64;
            match self.bitmap(|_, u| used += u64::from(u)) {
                Ok(()) => self.layout.clusters as u64 - used,
                Err(_) => 0,
            }
        })
    }

    /// Calls `f(i, used)` for the clusters the allocation bitmap (the root's 0x81
    /// entry) covers, cluster i + 2 from i = 0, in order.
    fn bitmap(&self, mut f: impl FnMut(u64, bool)) -> io::Result<()> {
        let e = self.root_entry(0x81)?;
        let clusters = self.layout.clusters as u64;
        let len = le64(&e, 24).min(clusters.div_ceil(8));
        let mut seen = 0u64;
        for (_, n, at) in self.runs(le32(&e, 20), false, len)? {
            let mut bm = vec![0u8; n as usize];
            self.dev.read_exact_at(at, &mut bm)?;
            for byte in bm {
                for bit in 0..8 {
                    if seen >= clusters {
                        return Ok(());
                    }
                    f(seen, byte >> bit & 1 != 0);
                    seen += 1;
                }
            }
        }
        Ok(())
    }
}

/// Byte ranges (offset, length; sorted, merged) of the clusters the allocation bitmap
/// marks free, for `backup --skip-free`; clusters it does not cover count as used. A
/// volume with two FATs and bitmaps (TexFAT) is refused.
pub fn free_ranges(dev: Arc<dyn ReadAt>, label: &str) -> io::Result<Vec<(u64, u64)>> {
    let mut b = [0u8; 512];
    dev.read_exact_at(0, &mut b)?;
    if b[110] != 1 || b[510..512] != [0x55, 0xAA] {
        return Err(corrupt(format!(
            "{label}: {} FATs or no boot signature",
            b[110]
        )));
    }
    let opts = TreeOptions {
        label: label.to_string(),
        ..TreeOptions::default()
    };
    let fs = ExFatFs::open(dev, &opts)?;
    let (l, size) = (&fs.layout, fs.dev.size());
    let mut out: Vec<(u64, u64)> = Vec::new();
    fs.bitmap(|i, used| {
        let at = l.heap + i * l.cluster;
        if used || at >= size {
            return;
        }
        crate::readat::push_range(&mut out, at, l.cluster.min(size - at));
    })?;
    Ok(out)
}

impl FsTree for ExFatFs {
    fn root(&self) -> u64 {
        ROOT
    }

    fn stat(&self, ino: u64) -> io::Result<Stat> {
        let n = self.node(ino)?;
        let c = self.layout.cluster;
        let kind = if n.dir { NodeKind::Dir } else { NodeKind::File };
        Ok(Stat {
            ino,
            kind,
            perm: if n.dir { 0o555 } else { 0o444 },
            nlink: 1,
            uid: self.uid,
            gid: self.gid,
            size: n.size,
            blocks: n.size.div_ceil(c) * c / 512,
            atime: n.atime,
            mtime: n.mtime,
            ctime: n.mtime,
            crtime: n.crtime,
            rdev: 0,
        })
    }

    fn read_dir(&self, ino: u64) -> io::Result<Arc<Vec<DirEntry>>> {
        Ok(self.listing(ino)?.entries.clone())
    }

    fn lookup(&self, dir: u64, name: &[u8]) -> io::Result<Option<u64>> {
        Ok(self
            .listing(dir)?
            .folded
            .get(&fold(name, self.upcase()))
            .copied())
    }

    fn read(&self, ino: u64, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.node(ino)?;
        if n.dir {
            return Err(io::Error::from_raw_os_error(libc::EISDIR));
        }
        if offset >= n.size || buf.is_empty() {
            return Ok(0);
        }
        let want = buf.len().min((n.size - offset) as usize);
        let buf = &mut buf[..want];
        buf.fill(0);
        // Bytes past the valid data length read as zeros.
        let end = (offset + want as u64).min(n.valid);
        if offset < end {
            let runs = self.runs(n.first, n.contiguous, n.valid)?;
            let mut done = 0usize;
            for (at, len) in run_spans(&runs, |&(l, c, p)| (l, c, Some(p)), offset, end, 1) {
                let len = len as usize;
                self.dev.read_exact_at(at, &mut buf[done..done + len])?;
                done += len;
            }
        }
        Ok(want)
    }

    fn prefetch(&self, ino: u64, offset: u64, len: u64) {
        let Ok(n) = self.node(ino) else { return };
        let end = offset.saturating_add(len).min(n.valid);
        if let Ok(runs) = self.runs(n.first, n.contiguous, n.valid) {
            let spans = run_spans(&runs, |&(l, c, p)| (l, c, Some(p)), offset, end, 1);
            self.dev.prefetch(&spans);
        }
    }

    fn seek(&self, ino: u64, offset: u64, data: bool) -> io::Result<Option<u64>> {
        let n = self.node(ino)?;
        if offset >= n.size {
            return Ok(None);
        }
        // Past the valid data length is a hole, as Linux's exfat reports it.
        Ok(match (data, offset < n.valid) {
            (true, true) => Some(offset),
            (true, false) => None,
            (false, true) => Some(n.valid),
            (false, false) => Some(offset),
        })
    }

    fn read_link(&self, _ino: u64) -> io::Result<Vec<u8>> {
        Err(io::Error::from_raw_os_error(libc::EINVAL))
    }

    fn xattrs(&self, _ino: u64) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
        Ok(Vec::new())
    }

    fn statfs(&self) -> StatFs {
        super::cluster_statfs(
            self.layout.cluster,
            self.layout.clusters as u64,
            self.free_clusters(),
        )
    }

    /// Inode numbers are positions, but a node is found again only through the
    /// directory that listed it: a reopened tree would not know them.
    fn can_close(&self) -> bool {
        self.parents.lock().unwrap().is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_offsets_are_quarter_hours() {
        // 2020-01-02 03:04:06 local, 5 ms steps 0, UTC+1:00 (4 quarters, valid bit).
        let date = ((2020 - 1980) << 9) | (1 << 5) | 2;
        let time = (3 << 11) | (4 << 5) | 3;
        let ts = (date << 16) | time;
        let utc = ex_time(ts, 0, 0x80);
        assert_eq!(ex_time(ts, 0, 0x80 | 4).secs, utc.secs - 3600);
        assert_eq!(ex_time(ts, 0, 0x80 | 0x7C).secs, utc.secs + 3600); // -4 quarters
        assert_eq!(ex_time(ts, 150, 0).nsecs, 500_000_000);
    }

    #[test]
    fn upcase_tables_expand_their_identity_runs() {
        let mut raw = Vec::new();
        for u in [0xFFFFu16, 0x61, 0x41, 0x42] {
            raw.extend_from_slice(&u.to_le_bytes());
        }
        let t = expand_upcase(&raw);
        assert_eq!(t.len(), 1 << 16);
        assert_eq!(
            (t[0x30], t[0x61], t[0x62], t[0x63], t[0xDF]),
            (0x30, 0x41, 0x42, 0x63, 0xDF)
        );
        // Folding through it: one unit for one unit, no "SS" for "ß".
        assert_eq!(fold("aß".as_bytes(), Some(&t)), [0x41, 0xDF]);
        assert_eq!(fold("ß".as_bytes(), None), [0xDF]);
    }

    #[test]
    fn set_checksum_skips_its_own_field() {
        let mut set = vec![0u8; 96];
        set[0] = 0x85;
        set[1] = 2;
        let c = set_checksum(&set);
        set[2] = 0xAB;
        set[3] = 0xCD;
        assert_eq!(set_checksum(&set), c);
        set[40] = 1;
        assert_ne!(set_checksum(&set), c);
    }
}
