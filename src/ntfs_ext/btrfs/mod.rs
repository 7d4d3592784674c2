//! Btrfs file trees: the default of Fedora and openSUSE, and of Synology's NAS volumes.
//!
//! Everything btrfs keeps is an item in a copy-on-write B-tree, addressed by logical
//! bytes that the chunk tree maps onto devices. The superblock carries the chunks
//! needed to read the chunk tree itself; the root tree then names every subvolume's
//! tree; a subvolume's tree holds its inodes, directory entries, xattrs and file
//! extents, keyed by (object id, type, offset). The tree shown is the top-level
//! subvolume (id 5) with every other subvolume and snapshot at its place inside, as
//! `mount -o subvolid=5` shows it. What the last committed transaction recorded is
//! consistent by construction (copy-on-write), so a snapshot of a running machine needs
//! no replay; only an fsync log written after that commit is left out (logged).
//! Little-endian throughout; every node is checked against its checksum, its address
//! and its place in the tree before anything in it is used.

mod log;
mod lzo;

use std::collections::{BTreeMap, HashMap};
use std::io::{self, Read};
use std::sync::{Arc, Mutex, OnceLock};

use crate::cache::{Weigh, WeightedLru};
use crate::ntfs_ext::tree::{
    DirEntry, FsTree, NodeKind, Stat, StatFs, Timespec, TreeOptions, MAX_INO,
};
use crate::ntfs_ext::{corrupt, linux_dev, seek_runs, valid_name, Listing};
use crate::readat::ReadAt;

const MAGIC: &[u8; 8] = b"_BHRfS_M";
/// Where the superblock and its two mirrors lie.
const SUPERS: [u64; 3] = [0x1_0000, 0x400_0000, 0x40_0000_0000];
const SB_SIZE: usize = 4096;
const HEADER: usize = 101;
const ITEM: usize = 25;
const PTR: usize = 33;
const MAX_LEVEL: u8 = 8;

const INODE_ITEM: u8 = 1;
const XATTR_ITEM: u8 = 24;
const DIR_INDEX: u8 = 96;
const EXTENT_DATA: u8 = 108;
const ROOT_ITEM: u8 = 132;
const CHUNK_ITEM: u8 = 228;
const CHUNK_TREE_OBJECTID: u64 = 256;
const FS_TREE: u64 = 5;
const CSUM_TREE: u64 = 7;
/// The csum tree keeps its items under this object id (-10).
const CSUM_OBJECTID: u64 = -10i64 as u64;
const EXTENT_CSUM: u8 = 128;
/// An inode whose data carries no checksums (no-COW files).
const INODE_NODATASUM: u64 = 0x1;
/// A snapshot holds this placeholder where its source held another subvolume.
const EMPTY_SUBVOL_DIR: u64 = 2;

/// Chunk profiles that spread one copy over several devices: readable only with all
/// of them.
const STRIPED: u64 = 0x8 | 0x40 | 0x80 | 0x100; // RAID0, RAID10, RAID5, RAID6
const RAID10: u64 = 0x40;
/// [`BtrfsFs::rebuild56`]: take the data stripe asked for as unknown.
const NOT_DATA: u8 = 1;
/// [`BtrfsFs::rebuild56`]: take the row's P as unknown (RAID6 rebuilds from Q).
const NOT_P: u8 = 2;
const RAID5: u64 = 0x80;
const RAID6: u64 = 0x100;
/// Incompat features whose on-disk effects this reader handles.
const INCOMPAT_KNOWN: u64 = 0x1
    | 0x2
    | 0x4
    | 0x8
    | 0x10
    | 0x20
    | 0x40
    | 0x80
    | 0x100
    | 0x200
    | 0x400
    | 0x800
    | 0x1000
    | 0x1_0000;
const INCOMPAT_METADATA_UUID: u64 = 0x400;
/// Zoned devices allocate by write pointer, not by the extent tree alone.
const INCOMPAT_ZONED: u64 = 0x1000;
/// Compat_ro features whose volumes keep block group items in the extent tree:
/// free space tree (and its valid bit), verity. Others (the block group tree, 0x8,
/// which no mkfs here can make to check against) may change where allocation is told.
const COMPAT_RO_ALLOC_KNOWN: u64 = 0x7;
const EXTENT_TREE: u64 = 2;
const EXTENT_ITEM: u8 = 168;
const METADATA_ITEM: u8 = 169;
const BLOCK_GROUP_ITEM: u8 = 192;

/// Inode numbers of the top-level subvolume are its object ids; every other subvolume's
/// objects are numbered from here as they are met.
const DYN_BASE: u64 = 1 << 39;
/// Most compressed or decompressed bytes one extent may have (btrfs writes 128 KiB).
const MAX_COMPRESSED: u64 = 128 << 10;
/// Most tree nodes one scan visits, and most items one listing or map collects.
const MAX_VISITS: usize = 1 << 22;
const MAX_ITEMS: usize = 1 << 22;
const NODE_CACHE: usize = 32 << 20;
const INODE_CACHE: usize = 2 << 20;
const DIR_CACHE: usize = 16 << 20;
const EXTENT_CACHE: usize = 4 << 20;
const ZIP_CACHE: usize = 8 << 20;
/// Most bytes of the top-level subvolume's leaves the warm-up asks the device for.
const WARM_LEAVES: u64 = 64 << 20;
/// Most internal nodes the warm-up reads to find them.
const WARM_NODES: usize = 1 << 14;

fn le16(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes(b[o..o + 2].try_into().unwrap())
}
fn le32(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
}
fn le64(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
}

/// An item's key: object id, item type, offset (ordered in that order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Key {
    obj: u64,
    ty: u8,
    off: u64,
}

impl Key {
    fn parse(b: &[u8], o: usize) -> Key {
        Key {
            obj: le64(b, o),
            ty: b[o + 8],
            off: le64(b, o + 9),
        }
    }

    const MIN: Key = Key {
        obj: 0,
        ty: 0,
        off: 0,
    };
    const MAX: Key = Key {
        obj: u64::MAX,
        ty: u8::MAX,
        off: u64::MAX,
    };

    fn range(obj: u64, ty: u8) -> (Key, Key) {
        (
            Key { obj, ty, off: 0 },
            Key {
                obj,
                ty,
                off: u64::MAX,
            },
        )
    }
}

/// The checksum every node and the superblock carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Csum {
    Crc32c,
    Xxh64,
    Sha256,
    Blake2b,
}

impl Csum {
    fn from_type(t: u16) -> Option<Csum> {
        Some(match t {
            0 => Csum::Crc32c,
            1 => Csum::Xxh64,
            2 => Csum::Sha256,
            3 => Csum::Blake2b,
            _ => return None,
        })
    }

    /// The checksum of `data`, as stored (the first [`Csum::size`] bytes count).
    fn sum(self, data: &[u8]) -> Vec<u8> {
        match self {
            Csum::Crc32c => crc32c::crc32c(data).to_le_bytes().to_vec(),
            Csum::Xxh64 => xxhash_rust::xxh64::xxh64(data, 0).to_le_bytes().to_vec(),
            Csum::Sha256 => {
                use sha2::Digest;
                sha2::Sha256::digest(data).to_vec()
            }
            Csum::Blake2b => {
                use blake2::Digest;
                blake2::Blake2b::<blake2::digest::consts::U32>::digest(data).to_vec()
            }
        }
    }

    /// Bytes each checksum takes in the csum tree.
    fn size(self) -> usize {
        match self {
            Csum::Crc32c => 4,
            Csum::Xxh64 => 8,
            Csum::Sha256 | Csum::Blake2b => 32,
        }
    }

    /// Whether `block` (checksum field first) carries the checksum of the rest.
    fn verify(self, block: &[u8]) -> bool {
        let n = self.size();
        block[..n] == self.sum(&block[32..])[..]
    }
}

/// What the superblock says.
#[derive(Debug, Clone)]
struct Sb {
    /// The filesystem's id, shared by all its devices.
    fsid: [u8; 16],
    /// The id node headers carry (the metadata UUID where one was set apart).
    meta_fsid: [u8; 16],
    generation: u64,
    root: u64,
    root_level: u8,
    chunk_root: u64,
    chunk_root_level: u8,
    log_root: u64,
    log_root_level: u8,
    total_bytes: u64,
    bytes_used: u64,
    num_devices: u64,
    sectorsize: u32,
    nodesize: u32,
    csum: Csum,
    devid: u64,
    incompat: u64,
    sys_chunks: Vec<u8>,
}

impl Sb {
    fn parse(b: &[u8]) -> Result<Sb, String> {
        if &b[0x40..0x48] != MAGIC {
            return Err("no btrfs magic".into());
        }
        let csum = Csum::from_type(le16(b, 0xC4))
            .ok_or_else(|| format!("unknown checksum type {}", le16(b, 0xC4)))?;
        if !csum.verify(&b[..SB_SIZE]) {
            return Err("superblock checksum mismatch".into());
        }
        let sectorsize = le32(b, 0x90);
        let nodesize = le32(b, 0x94);
        if !sectorsize.is_power_of_two() || !(4096..=65536).contains(&sectorsize) {
            return Err(format!("sector size {sectorsize}"));
        }
        if !nodesize.is_power_of_two() || nodesize < sectorsize || nodesize > 65536 {
            return Err(format!("node size {nodesize}"));
        }
        let sys_len = le32(b, 0xA0) as usize;
        if sys_len > 2048 {
            return Err(format!("system chunk array of {sys_len} bytes"));
        }
        let (root_level, chunk_root_level) = (b[0xC6], b[0xC7]);
        if root_level >= MAX_LEVEL || chunk_root_level >= MAX_LEVEL || b[0xC8] >= MAX_LEVEL {
            return Err("tree level out of range".into());
        }
        let incompat = le64(b, 0xBC);
        let fsid: [u8; 16] = b[0x20..0x30].try_into().unwrap();
        let meta_fsid = if incompat & INCOMPAT_METADATA_UUID != 0 {
            b[0x23B..0x24B].try_into().unwrap()
        } else {
            fsid
        };
        Ok(Sb {
            fsid,
            meta_fsid,
            generation: le64(b, 0x48),
            root: le64(b, 0x50),
            root_level,
            chunk_root: le64(b, 0x58),
            chunk_root_level,
            log_root: le64(b, 0x60),
            log_root_level: b[0xC8],
            total_bytes: le64(b, 0x70),
            bytes_used: le64(b, 0x78),
            num_devices: le64(b, 0x88),
            sectorsize,
            nodesize,
            csum,
            devid: le64(b, 0xC9),
            incompat,
            sys_chunks: b[0x32B..0x32B + sys_len].to_vec(),
        })
    }
}

/// Says whether the volume holds btrfs (the primary superblock's magic).
pub fn probe(dev: &dyn ReadAt) -> io::Result<bool> {
    if dev.size() < SUPERS[0] + SB_SIZE as u64 {
        return Ok(false);
    }
    let mut m = [0u8; 8];
    dev.read_exact_at(SUPERS[0] + 0x40, &mut m)?;
    Ok(&m == MAGIC)
}

/// Byte ranges (offset, length; sorted, disjoint) of the device btrfs holds nothing
/// in, for `backup --skip-free` ([`free_ranges_of`] of a single-device volume).
/// Refused (an error) for a volume spanning devices.
pub fn free_ranges(dev: Arc<dyn ReadAt>, label: &str) -> io::Result<Vec<(u64, u64)>> {
    let mut raw = vec![0u8; SB_SIZE];
    dev.read_exact_at(SUPERS[0], &mut raw)?;
    let sb = Sb::parse(&raw).map_err(|e| corrupt(format!("{label}: btrfs superblock: {e}")))?;
    if sb.num_devices != 1 {
        return Err(corrupt(format!(
            "{label}: spans {} devices",
            sb.num_devices
        )));
    }
    Ok(free_ranges_of(&[dev], label)?.pop().unwrap_or_default())
}

/// For each of `devs`, every device of one btrfs volume, the byte ranges (sorted,
/// disjoint) btrfs holds nothing in: the space no chunk occupies, and inside chunks
/// that keep whole copies (single, DUP, RAID1, RAID1C3/4) what no extent item of the
/// extent tree names, in each block group whose `used` count equals its extents'
/// bytes (others, striped chunks, and all chunks when the extent tree cannot be read
/// are kept whole). The first MiB, the superblock mirrors, and anything past the size
/// each device's item gives are kept. Refused (an error) where the committed trees
/// might not tell the whole story: devices of different volumes or generations, a
/// device missing or given twice, unknown incompatible features, a damaged primary
/// superblock. An fsync log's tree blocks and the data extents it names are kept
/// (its replay needs them); a log that cannot be read keeps every chunk whole.
pub fn free_ranges_of(devs: &[Arc<dyn ReadAt>], label: &str) -> io::Result<Vec<Vec<(u64, u64)>>> {
    // Each device's superblock: its id and size as the filesystem sees it.
    let mut sbs = Vec::with_capacity(devs.len());
    for dev in devs {
        let mut raw = vec![0u8; SB_SIZE];
        dev.read_exact_at(SUPERS[0], &mut raw)?;
        let sb = Sb::parse(&raw).map_err(|e| corrupt(format!("{label}: btrfs superblock: {e}")))?;
        let bytes = le64(&raw, 0xC9 + 8).min(dev.size());
        sbs.push((sb, bytes, le64(&raw, 0xB4)));
    }
    let Some((sb, _, compat_ro)) = sbs.first() else {
        return Ok(Vec::new());
    };
    let mut ids: Vec<u64> = sbs.iter().map(|s| s.0.devid).collect();
    ids.sort_unstable();
    ids.dedup();
    if sbs
        .iter()
        .any(|s| s.0.fsid != sb.fsid || s.0.generation != sb.generation)
    {
        return Err(corrupt(format!(
            "{label}: devices of different btrfs volumes or generations"
        )));
    }
    if ids.len() != devs.len() || sb.num_devices != devs.len() as u64 {
        return Err(corrupt(format!(
            "{label}: btrfs spans {} devices, {} distinct given",
            sb.num_devices,
            ids.len()
        )));
    }
    if sb.incompat & !INCOMPAT_KNOWN != 0 {
        return Err(corrupt(format!("{label}: unknown incompatible features")));
    }
    let opts = TreeOptions {
        label: label.to_string(),
        no_replay: true,
        members: crate::ntfs_ext::Members(devs[1..].to_vec()),
        ..TreeOptions::default()
    };
    let fs = BtrfsFs::open(devs[0].clone(), &opts)?;
    let reserved: Vec<(u64, u64)> = std::iter::once((0, 1 << 20))
        .chain(SUPERS.iter().map(|&m| (m, SB_SIZE as u64)))
        .collect();
    // Per device id: what chunks take, then what is free.
    let mut used: HashMap<u64, Vec<(u64, u64)>> = HashMap::new();
    for c in fs.chunks.values() {
        // Bytes each stripe takes on its device (the kernel's btrfs_calc_stripe_length).
        let per = c.len.div_ceil(c.data_stripes().max(1));
        for &(d, at) in &c.stripes {
            used.entry(d).or_default().push((at, per));
        }
    }
    let mut free: Vec<Vec<(u64, u64)>> = sbs
        .iter()
        .map(|(s, bytes, _)| {
            let mut u = reserved.clone();
            u.extend(used.remove(&s.devid).unwrap_or_default());
            crate::ntfs_ext::subtract(vec![(0, *bytes)], u)
        })
        .collect();
    let inside = if sb.incompat & INCOMPAT_ZONED != 0 {
        Err("a zoned volume".to_string())
    } else if compat_ro & !COMPAT_RO_ALLOC_KNOWN != 0 {
        Err(format!("read-only features {compat_ro:#x}"))
    } else {
        // What an fsync log holds beyond the last commit is kept for its replay.
        log::log_used(&fs)
            .map_err(|e| format!("the fsync log: {e}"))
            .and_then(|logged| {
                fs.unused_in_chunks(&crate::ntfs_ext::merged(logged))
                    .map_err(|e| format!("the extent tree: {e}"))
            })
    };
    match inside {
        Ok(more) => {
            for (devid, at, len) in more {
                if let Some(i) = sbs.iter().position(|s| s.0.devid == devid) {
                    free[i].push((at, len));
                }
            }
            for (f, (_, bytes, _)) in free.iter_mut().zip(&sbs) {
                let mut all = crate::ntfs_ext::subtract(
                    crate::ntfs_ext::merged(std::mem::take(f)),
                    reserved.clone(),
                );
                all.retain(|&(o, _)| o < *bytes);
                if let Some(last) = all.last_mut() {
                    last.1 = last.1.min(bytes - last.0);
                }
                *f = all;
            }
        }
        Err(why) => tracing::warn!("{label}: free space inside chunks kept: {why}"),
    }
    Ok(free)
}

/// Where the chunk-relative bytes `w..w + l`, free in the chunk, lie on its devices
/// as (device id, offset, length) that may go unread: for single, DUP and RAID1*
/// chunks on every copy; for RAID0 and RAID10 each stripe-length piece on the stripe
/// (RAID10: every copy) holding it, as [`BtrfsFs::map`] places it; for RAID5/6 only
/// whole rows, with their parity (restored, such a row is zeros, and so is the
/// parity of zeros: the row stays consistent). Ranges that overflow are left out.
fn stripe_ranges(c: &Chunk, w: u64, l: u64) -> Vec<(u64, u64, u64)> {
    let n = c.stripes.len() as u64;
    let mut out = Vec::new();
    if c.ty & STRIPED == 0 || n == 1 {
        for &(d, p) in &c.stripes {
            if let Some(at) = p.checked_add(w) {
                out.push((d, at, l));
            }
        }
        return out;
    }
    let sl = c.stripe_len;
    if sl == 0 || !sl.is_power_of_two() {
        return out;
    }
    let sub = if c.ty & RAID10 != 0 {
        c.sub_stripes.clamp(1, n)
    } else {
        1
    };
    let data = c.data_stripes();
    let Some(row_bytes) = sl.checked_mul(data).filter(|&b| b > 0) else {
        return out;
    };
    let Some(end) = w.checked_add(l) else {
        return out;
    };
    // Rows wholly free: every stripe, parity too.
    let (full_a, full_b) = (w.div_ceil(row_bytes), end / row_bytes);
    if full_b > full_a {
        for &(d, p) in &c.stripes {
            let at = full_a.checked_mul(sl).and_then(|x| x.checked_add(p));
            if let Some(at) = at {
                out.push((d, at, (full_b - full_a) * sl));
            }
        }
    }
    if c.ty & (RAID5 | RAID6) != 0 {
        return out;
    }
    // What lies in rows partly free, piece by piece (at most two rows' worth).
    let mut pieces = |a: u64, b: u64| {
        let mut x = a;
        while x < b {
            let (nr, within) = (x / sl, x % sl);
            let take = (sl - within).min(b - x);
            let (first, row) = if c.ty & RAID10 != 0 {
                ((nr % data) * sub, nr / data)
            } else {
                (nr % n, nr / n)
            };
            for i in first..(first + sub).min(n) {
                let (d, p) = c.stripes[i as usize];
                let at = row
                    .checked_mul(sl)
                    .and_then(|r| r.checked_add(within))
                    .and_then(|r| r.checked_add(p));
                if let Some(at) = at {
                    out.push((d, at, take));
                }
            }
            x += take;
        }
    };
    if full_b > full_a {
        pieces(w, full_a * row_bytes);
        pieces(full_b * row_bytes, end);
    } else {
        pieces(w, end);
    }
    out
}

/// The filesystem id of the btrfs on the volume when it spans devices (its
/// superblock counts more than one), for grouping its devices.
pub fn spanning_fsid(dev: &dyn ReadAt) -> Option<[u8; 16]> {
    let mut b = [0u8; 0x90];
    let spans = dev.size() >= SUPERS[0] + SB_SIZE as u64
        && dev.read_exact_at(SUPERS[0], &mut b).is_ok()
        && &b[0x40..0x48] == MAGIC
        && le64(&b, 0x88) > 1;
    spans.then(|| b[0x20..0x30].try_into().unwrap())
}

/// Says whether the volume holds a btrfs that spans devices, so the mount hands it
/// the point's other volumes.
pub fn spans_devices(dev: &dyn ReadAt) -> bool {
    spanning_fsid(dev).is_some()
}

/// The superblock: the primary, or the newest intact mirror when the primary is
/// damaged (as `btrfs rescue super-recover` would choose).
fn read_sb(dev: &dyn ReadAt, label: &str) -> io::Result<Sb> {
    let mut primary_err = None;
    let mut best: Option<Sb> = None;
    for (k, at) in SUPERS.into_iter().enumerate() {
        if at + SB_SIZE as u64 > dev.size() {
            break;
        }
        let mut b = vec![0u8; SB_SIZE];
        dev.read_exact_at(at, &mut b)?;
        match Sb::parse(&b) {
            Ok(sb) if le64(&b, 0x30) == at => {
                if k == 0 {
                    return Ok(sb);
                }
                if best.as_ref().is_none_or(|s| sb.generation > s.generation) {
                    best = Some(sb);
                }
            }
            Ok(_) if k == 0 => primary_err = Some("superblock names another offset".into()),
            Err(e) if k == 0 => primary_err = Some(e),
            _ => {}
        }
    }
    let why = primary_err.unwrap_or_default();
    match best {
        Some(sb) => {
            tracing::warn!("{label}: btrfs primary superblock unusable ({why}); using a mirror");
            Ok(sb)
        }
        None => Err(corrupt(format!("{label}: btrfs superblock: {why}"))),
    }
}

/// One chunk: a run of logical bytes and where its copies lie.
#[derive(Debug, Clone)]
struct Chunk {
    len: u64,
    ty: u64,
    /// Bytes of one stripe before the next device's (striped profiles).
    stripe_len: u64,
    /// Copies of each stripe (RAID10).
    sub_stripes: u64,
    /// (device id, physical offset) of each stripe.
    stripes: Vec<(u64, u64)>,
}

impl Chunk {
    /// Stripes of a row holding distinct data (the kernel's data stripes): 1 for the
    /// profiles keeping whole copies, 0 for a hostile RAID10 with more copies than
    /// stripes.
    fn data_stripes(&self) -> u64 {
        let n = self.stripes.len() as u64;
        if self.ty & RAID10 != 0 {
            n / self.sub_stripes.max(1)
        } else if self.ty & RAID6 != 0 {
            n.saturating_sub(2)
        } else if self.ty & RAID5 != 0 {
            n.saturating_sub(1)
        } else if self.ty & STRIPED != 0 {
            n
        } else {
            1
        }
    }
}

/// Parses the chunk item at `b` (logical start `logical`); returns it and its size.
fn parse_chunk(b: &[u8]) -> Result<(Chunk, usize), String> {
    if b.len() < 48 {
        return Err("chunk item truncated".into());
    }
    let n = le16(b, 44) as usize;
    let size = 48 + n * 32;
    if n == 0 || b.len() < size {
        return Err(format!("chunk item with {n} stripes"));
    }
    let stripes = (0..n)
        .map(|k| (le64(b, 48 + k * 32), le64(b, 48 + k * 32 + 8)))
        .collect();
    Ok((
        Chunk {
            len: le64(b, 0),
            ty: le64(b, 24),
            stripe_len: le64(b, 16),
            sub_stripes: le16(b, 46) as u64,
            stripes,
        },
        size,
    ))
}

/// A tree node, checked.
struct Node {
    b: Vec<u8>,
    level: u8,
    n: usize,
    generation: u64,
}

impl Weigh for Arc<Node> {
    fn weight(&self) -> usize {
        self.b.len() + 64
    }
}

impl Node {
    fn key(&self, i: usize) -> Key {
        let stride = if self.level == 0 { ITEM } else { PTR };
        Key::parse(&self.b, HEADER + i * stride)
    }

    /// The index of the first key for which `past` holds (keys rise, so `past` holds
    /// from there on); `n` when none.
    fn first_where(&self, past: impl Fn(Key) -> bool) -> usize {
        let (mut lo, mut hi) = (0, self.n);
        while lo < hi {
            let mid = (lo + hi) / 2;
            if past(self.key(mid)) {
                hi = mid;
            } else {
                lo = mid + 1;
            }
        }
        lo
    }

    /// A child pointer: (logical address, generation).
    fn ptr(&self, i: usize) -> (u64, u64) {
        let o = HEADER + i * PTR + 17;
        (le64(&self.b, o), le64(&self.b, o + 8))
    }

    /// A leaf item's data (ranges checked when the node was read).
    fn item(&self, i: usize) -> &[u8] {
        let o = HEADER + i * ITEM + 17;
        let (off, size) = (le32(&self.b, o) as usize, le32(&self.b, o + 4) as usize);
        &self.b[HEADER + off..HEADER + off + size]
    }
}

/// A subvolume's tree and its root directory.
#[derive(Debug, Clone, Copy)]
struct TreeRoot {
    bytenr: u64,
    level: u8,
    dirid: u64,
}

/// An inode item.
#[derive(Debug, Clone)]
struct Inode {
    size: u64,
    nbytes: u64,
    nlink: u32,
    uid: u32,
    gid: u32,
    mode: u32,
    rdev: u64,
    flags: u64,
    /// atime, mtime, ctime, otime.
    times: [Timespec; 4],
}

impl Weigh for Arc<Inode> {
    fn weight(&self) -> usize {
        160
    }
}

impl Inode {
    fn parse(b: &[u8]) -> Option<Inode> {
        if b.len() < 160 {
            return None;
        }
        let t = |o: usize| Timespec {
            secs: le64(b, o) as i64,
            nsecs: le32(b, o + 8).min(999_999_999),
        };
        Some(Inode {
            size: le64(b, 16),
            nbytes: le64(b, 24),
            nlink: le32(b, 40),
            uid: le32(b, 44),
            gid: le32(b, 48),
            mode: le32(b, 52),
            rdev: le64(b, 56),
            flags: le64(b, 64),
            times: [t(112), t(136), t(124), t(148)],
        })
    }

    fn kind(&self) -> Option<NodeKind> {
        NodeKind::from_mode((self.mode & 0xFFFF) as u16)
    }
}

/// One file extent.
#[derive(Debug, Clone)]
enum Data {
    /// Bytes kept in the tree (compressed with `comp` when it is not 0).
    Inline { bytes: Arc<Vec<u8>>, comp: u8 },
    /// Bytes at `disk` (logical) onwards; compressed extents decode `disk_len` bytes
    /// whole and take theirs from `off` on.
    Regular {
        disk: u64,
        disk_len: u64,
        off: u64,
        comp: u8,
    },
    /// Reads as zeros: a hole, or space allocated and never written.
    Zeros,
}

#[derive(Debug, Clone)]
struct Extent {
    file: u64,
    len: u64,
    data: Data,
}

struct ExtentMap(Vec<Extent>);

impl Weigh for Arc<ExtentMap> {
    fn weight(&self) -> usize {
        self.0.len() * 64 + 64
    }
}

/// Numbers for objects outside the top-level subvolume, handed out as they are met.
#[derive(Default)]
struct Numbers {
    of: HashMap<(u64, u64), u64>,
    back: Vec<(u64, u64)>,
}

/// An open btrfs volume.
pub struct BtrfsFs {
    dev: Arc<dyn ReadAt>,
    /// This filesystem's devices found, by device id (this one among them).
    devs: HashMap<u64, Arc<dyn ReadAt>>,
    sb: Sb,
    label: String,
    /// Where listings count entries left out as damaged.
    left_out: crate::ntfs_ext::LeftOut,
    chunks: BTreeMap<u64, Chunk>,
    nodes: WeightedLru<u64, Arc<Node>>,
    inodes: WeightedLru<u64, Arc<Inode>>,
    dirs: WeightedLru<u64, Arc<Listing>>,
    maps: WeightedLru<u64, Arc<ExtentMap>>,
    unzipped: WeightedLru<(u64, u64), Arc<Vec<u8>>>,
    roots: Mutex<HashMap<u64, TreeRoot>>,
    numbers: Mutex<Numbers>,
    root_ino: u64,
    bad_csum: OnceLock<()>,
    /// Set once stripes of a missing device were rebuilt (logged once).
    rebuilt: OnceLock<()>,
    /// Items the fsync log's replay changed, per subvolume (merged into scans).
    edits: BTreeMap<u64, log::Edits>,
    /// The data checksum tree, when there is one.
    csums: Option<(u64, u8)>,
    /// Checksums of data the fsync log's replay brought in (by logical start).
    log_csums: BTreeMap<u64, Vec<u8>>,
}

/// Why a scan stops: the callback's answer.
type Visit<'a> = &'a mut dyn FnMut(Key, &[u8]) -> io::Result<bool>;

impl BtrfsFs {
    /// Opens the volume: superblock, chunk map, root tree; the top-level subvolume's
    /// root directory must be readable. On a device that prefetches, the subvolume's
    /// leaves are then fetched in the background (what a walk or a tar reads next).
    pub fn open(dev: Arc<dyn ReadAt>, opts: &TreeOptions) -> io::Result<Arc<BtrfsFs>> {
        let label = opts.label.clone();
        let sb = read_sb(&*dev, &label)?;
        if sb.incompat & !INCOMPAT_KNOWN != 0 {
            tracing::warn!(
                "{label}: btrfs has unknown incompatible features {:#x}; showing what can be read",
                sb.incompat & !INCOMPAT_KNOWN
            );
        }
        let mut devs = HashMap::from([(sb.devid, dev.clone())]);
        for m in &opts.members.0 {
            if devs.len() as u64 >= sb.num_devices {
                break;
            }
            let mut b = vec![0u8; SB_SIZE];
            if m.size() < SUPERS[0] + SB_SIZE as u64 || m.read_exact_at(SUPERS[0], &mut b).is_err()
            {
                continue;
            }
            if let Ok(other) = Sb::parse(&b) {
                if other.fsid == sb.fsid && !devs.contains_key(&other.devid) {
                    devs.insert(other.devid, m.clone());
                }
            }
        }
        if sb.num_devices > 1 {
            let missing = sb.num_devices.saturating_sub(devs.len() as u64);
            if missing > 0 {
                tracing::warn!(
                    "{label}: btrfs spans {} devices, {missing} of them not in this point; chunks with no copy on the others give errors",
                    sb.num_devices
                );
            } else {
                tracing::debug!("{label}: btrfs spans {} devices, all found", sb.num_devices);
            }
        }
        let budget = || opts.budget.clone();
        let mut fs = BtrfsFs {
            dev,
            devs,
            label,
            left_out: opts.left_out.clone(),
            chunks: BTreeMap::new(),
            nodes: WeightedLru::with_budget(NODE_CACHE, budget()),
            inodes: WeightedLru::with_budget(INODE_CACHE, budget()),
            dirs: WeightedLru::with_budget(DIR_CACHE, budget()),
            maps: WeightedLru::with_budget(EXTENT_CACHE, budget()),
            unzipped: WeightedLru::with_budget(ZIP_CACHE, budget()),
            roots: Mutex::new(HashMap::new()),
            numbers: Mutex::new(Numbers::default()),
            root_ino: 0,
            bad_csum: OnceLock::new(),
            rebuilt: OnceLock::new(),
            edits: BTreeMap::new(),
            csums: None,
            log_csums: BTreeMap::new(),
            sb,
        };
        fs.load_chunks()?;
        if fs.sb.log_root != 0 && opts.no_replay {
            tracing::warn!(
                "{}: btrfs has an fsync log newer than its last commit; shown as committed (no replay)",
                fs.label
            );
        } else {
            match log::replay(&fs) {
                Ok(None) => {}
                Ok(Some((edits, mut st))) => {
                    fs.edits = edits;
                    fs.log_csums = std::mem::take(&mut st.csums);
                    tracing::warn!(
                        "{}: btrfs fsync log replayed in memory: {} logged item(s) of {} inode(s) in {} subvolume(s)",
                        fs.label,
                        st.items,
                        st.inodes,
                        st.subvolumes
                    );
                }
                Err(e) => tracing::warn!(
                    "{}: btrfs fsync log not replayed ({e}); files fsynced after the last commit (generation {}) show their committed state",
                    fs.label,
                    fs.sb.generation
                ),
            }
        }
        fs.csums = match fs.tree_root(CSUM_TREE) {
            Ok(r) => Some((r.bytenr, r.level)),
            Err(e) => {
                tracing::warn!(
                    "{}: btrfs data checksums unreadable ({e}); data not verified",
                    fs.label
                );
                None
            }
        };
        let top = fs.tree_root(FS_TREE)?;
        fs.root_ino = top.dirid;
        if top.dirid >= DYN_BASE {
            return Err(corrupt(format!("{}: btrfs root directory id", fs.label)));
        }
        let root = fs.inode(fs.root_ino)?;
        if root.kind() != Some(NodeKind::Dir) {
            return Err(corrupt(format!(
                "{}: btrfs root is not a directory",
                fs.label
            )));
        }
        let fs = Arc::new(fs);
        if fs.dev.prefetches() {
            let weak = Arc::downgrade(&fs);
            crate::background::spawn(move || {
                if let Some(fs) = weak.upgrade() {
                    // The data checksums first: every data read looks them up.
                    if let Some((bytenr, level)) = fs.csums {
                        fs.warm(bytenr, level);
                    }
                    fs.warm(top.bytenr, top.level);
                }
            });
        }
        Ok(fs)
    }

    /// Reads the internal nodes of a tree level by level (each level's nodes hinted to
    /// the device first) and hints the device at its leaves, up to [`WARM_LEAVES`]
    /// bytes. Only a hint: damage is met again by the reads proper.
    fn warm(&self, root: u64, root_level: u8) {
        let size = self.sb.nodesize as u64;
        let mut level = vec![root];
        let mut read = 0;
        for depth in (1..=root_level).rev() {
            let spans = level
                .iter()
                .filter_map(|&at| Some((self.here(at)?.0, size)))
                .collect();
            crate::ntfs_ext::prefetch_spans(&*self.dev, spans, 4096);
            let mut next = Vec::new();
            for &at in &level {
                read += 1;
                if read > WARM_NODES {
                    return;
                }
                let Ok(node) = self.node(at, depth) else {
                    continue;
                };
                next.extend((0..node.n).map(|i| node.ptr(i).0));
            }
            level = next;
        }
        if root_level == 0 {
            return;
        }
        level.truncate((WARM_LEAVES / size) as usize);
        let spans = level
            .iter()
            .filter_map(|&at| Some((self.here(at)?.0, size)))
            .collect();
        crate::ntfs_ext::prefetch_spans(&*self.dev, spans, 4096);
    }

    /// Reads the bootstrap chunks from the superblock, then the chunk tree.
    fn load_chunks(&mut self) -> io::Result<()> {
        let sys = std::mem::take(&mut self.sb.sys_chunks);
        let mut at = 0;
        while at < sys.len() {
            if sys.len() - at < 17 {
                return Err(corrupt(format!(
                    "{}: btrfs system chunk array truncated",
                    self.label
                )));
            }
            let key = Key::parse(&sys, at);
            let (chunk, size) = parse_chunk(&sys[at + 17..])
                .map_err(|e| corrupt(format!("{}: btrfs system chunk: {e}", self.label)))?;
            if key.ty != CHUNK_ITEM {
                return Err(corrupt(format!(
                    "{}: btrfs system chunk array holds item type {}",
                    self.label, key.ty
                )));
            }
            self.add_chunk(key.off, chunk)?;
            at += 17 + size;
        }
        let mut found = Vec::new();
        let (lo, hi) = Key::range(CHUNK_TREE_OBJECTID, CHUNK_ITEM);
        let root = (self.sb.chunk_root, self.sb.chunk_root_level);
        self.scan(root, lo, hi, &mut |k, d| {
            if found.len() >= MAX_ITEMS {
                return Err(corrupt("btrfs chunk tree holds too many chunks"));
            }
            let (chunk, _) = parse_chunk(d).map_err(corrupt)?;
            found.push((k.off, chunk));
            Ok(true)
        })?;
        for (logical, chunk) in found {
            self.add_chunk(logical, chunk)?;
        }
        Ok(())
    }

    fn add_chunk(&mut self, logical: u64, chunk: Chunk) -> io::Result<()> {
        if chunk.len == 0 || logical.checked_add(chunk.len).is_none() {
            return Err(corrupt(format!(
                "{}: btrfs chunk at {logical} of {} bytes",
                self.label, chunk.len
            )));
        }
        self.chunks.insert(logical, chunk);
        Ok(())
    }

    /// The chunk holding logical byte `logical`, with its start.
    fn chunk_at(&self, logical: u64) -> Option<(u64, &Chunk)> {
        self.chunks
            .range(..=logical)
            .next_back()
            .filter(|(s, c)| logical - **s < c.len)
            .map(|(s, c)| (*s, c))
    }

    /// Where logical byte `logical` lies: every copy's (device id, offset) on the
    /// devices found (this one's first), and how many bytes from it stay in one stripe.
    fn map(&self, logical: u64) -> io::Result<(Vec<(u64, u64)>, u64)> {
        let (start, c) = self.chunk_at(logical).ok_or_else(|| {
            corrupt(format!(
                "{}: btrfs logical address {logical} is in no chunk",
                self.label
            ))
        })?;
        let within = logical - start;
        let left = c.len - within;
        let n = c.stripes.len() as u64;
        let mut copies: Vec<(u64, u64)> = if c.ty & STRIPED == 0 || n == 1 {
            // Single, DUP, RAID1*: every stripe is a whole copy.
            c.stripes
                .iter()
                .filter_map(|&(d, p)| Some((d, p.checked_add(within)?)))
                .collect()
        } else {
            let sl = c.stripe_len;
            if sl == 0 || !sl.is_power_of_two() {
                return Err(corrupt(format!(
                    "{}: btrfs chunk at {start}: stripe length {sl}",
                    self.label
                )));
            }
            let (nr, in_stripe) = (within / sl, within % sl);
            let (first, count, row) = if c.ty & RAID10 != 0 {
                let sub = c.sub_stripes.max(1);
                let factor = (n / sub).max(1);
                ((nr % factor) * sub, sub, nr / factor)
            } else if c.ty & (RAID5 | RAID6) != 0 {
                let parity = if c.ty & RAID6 != 0 { 2 } else { 1 };
                let data = n.saturating_sub(parity).max(1);
                let (row, idx) = (nr / data, nr % data);
                ((row + idx) % n, 1, row)
            } else {
                // RAID0: stripes in turn.
                (nr % n, 1, nr / n)
            };
            (first..first.saturating_add(count).min(n))
                .filter_map(|i| {
                    let (d, p) = c.stripes[i as usize];
                    let at = row.checked_mul(sl)?.checked_add(in_stripe)?;
                    Some((d, p.checked_add(at)?))
                })
                .collect()
        };
        let avail = if c.ty & STRIPED == 0 || n == 1 {
            left
        } else {
            left.min(c.stripe_len - within % c.stripe_len)
        };
        copies.retain(|(d, _)| self.devs.contains_key(d));
        copies.sort_by_key(|(d, _)| *d != self.sb.devid);
        if copies.is_empty() {
            return Err(corrupt(format!(
                "{}: btrfs chunk at {start} has no copy of logical {logical} on the devices of this point",
                self.label
            )));
        }
        Ok((copies, avail))
    }

    /// Rebuilds logical bytes from `logical` whose RAID5/6 stripe lies on a missing
    /// device, from the other stripes of its row and the parity (P, and Q for RAID6:
    /// data stripe i weighed g^i, as the kernel's raid6 syndrome), up to the end of
    /// that stripe; the bytes filled. An error where the chunk is not RAID5/6 or more
    /// devices are missing than its parity covers.
    /// `without` names stripes to take as unknown though their device is here (their
    /// bytes failed their checksums): [`NOT_DATA`] the one holding `logical`,
    /// [`NOT_P`] the row's P, so that Q rebuilds it.
    fn rebuild56(&self, logical: u64, buf: &mut [u8], without: u8) -> io::Result<usize> {
        let (start, c) = self
            .chunk_at(logical)
            .filter(|(_, c)| c.ty & (RAID5 | RAID6) != 0)
            .ok_or_else(|| corrupt("not in a RAID5/6 chunk"))?;
        let (n, sl, data) = (c.stripes.len() as u64, c.stripe_len, c.data_stripes());
        if sl == 0 || !sl.is_power_of_two() || data == 0 || data >= n {
            return Err(corrupt("implausible RAID5/6 chunk"));
        }
        let within = logical - start;
        let (nr, in_stripe) = (within / sl, within % sl);
        let (row, idx) = (nr / data, nr % data);
        let len = (buf.len() as u64).min(sl - in_stripe).min(c.len - within) as usize;
        let at = row
            .checked_mul(sl)
            .and_then(|r| r.checked_add(in_stripe))
            .ok_or_else(|| corrupt("RAID5/6 offset overflows"))?;
        let read = |k: u64| -> io::Result<Option<Vec<u8>>> {
            if k == idx && without & NOT_DATA != 0 || k == data && without & NOT_P != 0 {
                return Ok(None);
            }
            let (d, p) = c.stripes[((row + k) % n) as usize];
            let Some(vol) = self.devs.get(&d) else {
                return Ok(None);
            };
            let mut b = vec![0u8; len];
            vol.read_exact_at(p.saturating_add(at), &mut b)?;
            Ok(Some(b))
        };
        let stripes: Vec<Option<Vec<u8>>> = (0..data).map(read).collect::<io::Result<_>>()?;
        let p = read(data)?;
        let q = if n - data == 2 { read(data + 1)? } else { None };
        crate::parity::rebuild_slot(
            &stripes,
            p.as_deref(),
            q.as_deref(),
            idx as usize,
            &mut buf[..len],
        )
        .map_err(|e| {
            corrupt(format!(
                "{}: btrfs RAID5/6 chunk at {start}: logical {logical}: {e}",
                self.label
            ))
        })?;
        if self.rebuilt.set(()).is_ok() {
            tracing::warn!(
                "{}: btrfs RAID5/6 stripes of missing devices are rebuilt from parity",
                self.label
            );
        }
        Ok(len)
    }

    /// The device `devid` (found: `map` gives no others).
    fn vol(&self, devid: u64) -> &Arc<dyn ReadAt> {
        self.devs.get(&devid).unwrap_or(&self.dev)
    }

    /// This device's offset of logical byte `logical` (prefetch hints), if it holds one.
    fn here(&self, logical: u64) -> Option<(u64, u64)> {
        let (copies, avail) = self.map(logical).ok()?;
        copies
            .into_iter()
            .find(|(d, _)| *d == self.sb.devid)
            .map(|(_, p)| (p, avail))
    }

    /// Reads logical bytes (file data) from copy `mirror` of each piece (0: this
    /// device's where it holds one, else the first found), or rebuilt from parity
    /// where a RAID5/6 stripe's device is missing (copy 0 only).
    fn read_logical(&self, mut logical: u64, mut buf: &mut [u8], mirror: usize) -> io::Result<()> {
        while !buf.is_empty() {
            let (copies, avail) = match self.map(logical) {
                Ok(m) => m,
                Err(e) if mirror == 0 => {
                    let n = self.rebuild56(logical, buf, 0).map_err(|_| e)?;
                    logical += n as u64;
                    buf = &mut buf[n..];
                    continue;
                }
                Err(e) => return Err(e),
            };
            let n = (buf.len() as u64).min(avail) as usize;
            let &(d, at) = copies.get(mirror).ok_or_else(|| {
                corrupt(format!(
                    "{}: btrfs logical {logical} has no copy {}",
                    self.label,
                    mirror + 1
                ))
            })?;
            self.vol(d).read_exact_at(at, &mut buf[..n])?;
            logical += n as u64;
            buf = &mut buf[n..];
        }
        Ok(())
    }

    /// A tree node at `logical`, checked: checksum, address, filesystem, level, item
    /// ranges. A copy that fails is passed over for the next one (DUP metadata).
    fn node(&self, logical: u64, level: u8) -> io::Result<Arc<Node>> {
        if let Some(n) = self.nodes.get(&logical) {
            if n.level != level {
                return Err(self.bad_node(logical, "sits at another level"));
            }
            return Ok(n);
        }
        let size = self.sb.nodesize as usize;
        /// A copy to read, or the node rebuilt from parity (a missing RAID5/6 device).
        enum Copy {
            At(u64, u64),
            Rebuilt(Vec<u8>),
        }
        let copies: Vec<Copy> = match self.map(logical) {
            Ok((copies, avail)) => {
                if avail < size as u64 {
                    return Err(self.bad_node(logical, "crosses the end of its chunk"));
                }
                copies.into_iter().map(|(d, at)| Copy::At(d, at)).collect()
            }
            Err(e) => {
                let mut b = vec![0u8; size];
                if self.rebuild56(logical, &mut b, 0).map_err(|_| e)? < size {
                    return Err(self.bad_node(logical, "crosses the end of its stripe"));
                }
                vec![Copy::Rebuilt(b)]
            }
        };
        let mut why = String::new();
        for copy in copies {
            let b = match copy {
                Copy::At(d, at) => {
                    let mut b = vec![0u8; size];
                    if let Err(e) = self.vol(d).read_exact_at(at, &mut b) {
                        tracing::warn!("{}: btrfs node at {logical}: {e}", self.label);
                        why = e.to_string();
                        continue;
                    }
                    b
                }
                Copy::Rebuilt(b) => b,
            };
            if !self.sb.csum.verify(&b) {
                why = "checksum mismatch".into();
                if self.bad_csum.set(()).is_ok() {
                    tracing::warn!("{}: btrfs node at {logical}: checksum mismatch", self.label);
                }
                continue;
            }
            match self.check_node(b, logical, level) {
                Ok(n) => {
                    let n = Arc::new(n);
                    self.nodes.put(logical, n.clone());
                    return Ok(n);
                }
                Err(e) => why = e.into(),
            }
        }
        // A RAID5/6 node failing its checks on a device that is here: its row rebuilt
        // without that stripe, from P, then from Q, as the kernel rebuilds it.
        let striped = self
            .chunk_at(logical)
            .is_some_and(|(_, c)| c.ty & (RAID5 | RAID6) != 0);
        if striped && !why.is_empty() {
            for without in [NOT_DATA, NOT_DATA | NOT_P] {
                let mut b = vec![0u8; size];
                if self.read_rebuilt(logical, &mut b, without).is_err() || !self.sb.csum.verify(&b)
                {
                    continue;
                }
                if let Ok(n) = self.check_node(b, logical, level) {
                    tracing::warn!(
                        "{}: btrfs node at {logical}: {why}; rebuilt from parity instead",
                        self.label
                    );
                    let n = Arc::new(n);
                    self.nodes.put(logical, n.clone());
                    return Ok(n);
                }
            }
        }
        Err(self.bad_node(logical, &why))
    }

    fn bad_node(&self, logical: u64, why: &str) -> io::Error {
        corrupt(format!("{}: btrfs node at {logical}: {why}", self.label))
    }

    fn check_node(&self, b: Vec<u8>, logical: u64, level: u8) -> Result<Node, &'static str> {
        if le64(&b, 0x30) != logical {
            return Err("names another address");
        }
        if b[0x20..0x30] != self.sb.meta_fsid {
            return Err("belongs to another filesystem");
        }
        if b[0x64] != level {
            return Err("sits at another level");
        }
        let n = le32(&b, 0x60) as usize;
        let stride = if level == 0 { ITEM } else { PTR };
        if n == 0 || HEADER + n * stride > b.len() {
            return Err("item count out of range");
        }
        let node = Node {
            level,
            n,
            generation: le64(&b, 0x50),
            b,
        };
        let space = node.b.len() - HEADER;
        for i in 0..n {
            if i > 0 && node.key(i) <= node.key(i - 1) {
                return Err("keys out of order");
            }
            if level == 0 {
                let o = HEADER + i * ITEM + 17;
                let (off, size) = (le32(&node.b, o) as usize, le32(&node.b, o + 4) as usize);
                if off.checked_add(size).is_none_or(|end| end > space) {
                    return Err("item data out of range");
                }
            }
        }
        Ok(node)
    }

    /// Calls `f` for every item of the tree rooted at `root` (address, level) whose
    /// key lies in `lo..=hi`, in key order, until `f` answers false.
    fn scan(&self, root: (u64, u8), lo: Key, hi: Key, f: Visit) -> io::Result<()> {
        let mut st = Scan {
            last: None,
            visits: 0,
        };
        self.walk(root.0, root.1, None, lo, hi, &mut st, f)
            .map(|_| ())
    }

    /// [`scan`](Self::scan) of subvolume `tree`, with the log replay's edits merged in.
    fn scan_fs(&self, tree: u64, lo: Key, hi: Key, f: Visit) -> io::Result<()> {
        let root = self.tree(tree)?;
        match self.edits.get(&tree) {
            Some(edits) => self.scan_edited(root, edits, lo, hi, f),
            None => self.scan(root, lo, hi, f),
        }
    }

    /// [`scan`](Self::scan) of the tree at `root` with `edits` over it (an edit of
    /// `None` deletes the item): what the replay builds and what readers see after it.
    fn scan_edited(
        &self,
        root: (u64, u8),
        edits: &log::Edits,
        lo: Key,
        hi: Key,
        f: Visit,
    ) -> io::Result<()> {
        if edits.range(lo..=hi).next().is_none() {
            return self.scan(root, lo, hi, f);
        }
        let mut merged: BTreeMap<Key, std::borrow::Cow<[u8]>> = BTreeMap::new();
        self.scan(root, lo, hi, &mut |k, d| {
            if merged.len() >= MAX_ITEMS {
                return Err(corrupt("btrfs range holds too many items"));
            }
            merged.insert(k, std::borrow::Cow::Owned(d.to_vec()));
            Ok(true)
        })?;
        for (k, v) in edits.range(lo..=hi) {
            match v {
                Some(v) => merged.insert(*k, std::borrow::Cow::Borrowed(&v[..])),
                None => merged.remove(k),
            };
        }
        for (k, d) in merged {
            if !f(k, &d)? {
                break;
            }
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn walk(
        &self,
        at: u64,
        level: u8,
        generation: Option<u64>,
        lo: Key,
        hi: Key,
        st: &mut Scan,
        f: Visit,
    ) -> io::Result<bool> {
        st.visits += 1;
        if st.visits > MAX_VISITS {
            return Err(corrupt(format!(
                "{}: btrfs tree scan visits too many nodes",
                self.label
            )));
        }
        let node = self.node(at, level)?;
        if generation.is_some_and(|g| g != node.generation) {
            return Err(self.bad_node(at, "generation differs from its parent's pointer"));
        }
        if level == 0 {
            let start = node.first_where(|k| k >= lo);
            for i in start..node.n {
                let k = node.key(i);
                if k > hi {
                    return Ok(false);
                }
                if st.last.is_some_and(|l| k <= l) {
                    return Err(self.bad_node(at, "keys repeat across leaves"));
                }
                st.last = Some(k);
                if !f(k, node.item(i))? {
                    return Ok(false);
                }
            }
            return Ok(true);
        }
        // The last child whose first key is at most `lo` holds `lo`'s place.
        let first = node.first_where(|k| k > lo).saturating_sub(1);
        for i in first..node.n {
            if node.key(i) > hi {
                return Ok(false);
            }
            let (child, g) = node.ptr(i);
            if !self.walk(child, level - 1, Some(g), lo, hi, st, f)? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// The tree of subvolume `id`, from its root item.
    fn tree_root(&self, id: u64) -> io::Result<TreeRoot> {
        if let Some(r) = self.roots.lock().unwrap().get(&id) {
            return Ok(*r);
        }
        let mut found = None;
        let (lo, hi) = Key::range(id, ROOT_ITEM);
        self.scan((self.sb.root, self.sb.root_level), lo, hi, &mut |_, d| {
            if d.len() >= 239 {
                found = Some(TreeRoot {
                    bytenr: le64(d, 176),
                    level: d[238],
                    dirid: le64(d, 168),
                });
            }
            Ok(false)
        })?;
        let r = found
            .ok_or_else(|| corrupt(format!("{}: btrfs subvolume {id} not found", self.label)))?;
        if r.level >= MAX_LEVEL {
            return Err(corrupt(format!(
                "{}: btrfs subvolume {id}: tree level {}",
                self.label, r.level
            )));
        }
        self.roots.lock().unwrap().insert(id, r);
        Ok(r)
    }

    /// Ranges (device id, offset, length) inside chunks that no extent item names,
    /// for [`free_ranges_of`]: per block group, its logical range less its extents and
    /// the `logged` ranges (sorted, disjoint), where the group's `used` count equals its extents' bytes
    /// (else the group is logged and kept), mapped onto the chunk's devices by
    /// [`stripe_ranges`].
    fn unused_in_chunks(&self, logged: &[(u64, u64)]) -> io::Result<Vec<(u64, u64, u64)>> {
        let nodesize = self.sb.nodesize as u64;
        // Extents in logical order, touching ones merged; block groups (start, length,
        // used).
        let mut extents: Vec<(u64, u64)> = Vec::new();
        let mut groups: Vec<(u64, u64, u64)> = Vec::new();
        let mut bad: Option<String> = None;
        self.scan(self.tree(EXTENT_TREE)?, Key::MIN, Key::MAX, &mut |k, d| {
            match k.ty {
                EXTENT_ITEM | METADATA_ITEM => {
                    let len = if k.ty == METADATA_ITEM {
                        nodesize
                    } else {
                        k.off
                    };
                    let Some(end) = k.obj.checked_add(len).filter(|_| len > 0) else {
                        bad = Some(format!("extent {} of {len} bytes", k.obj));
                        return Ok(false);
                    };
                    let full = extents.len() >= MAX_ITEMS;
                    match extents.last_mut() {
                        Some(last) if last.0 + last.1 > k.obj => {
                            bad = Some(format!("extents overlap at {}", k.obj));
                            return Ok(false);
                        }
                        Some(last) if last.0 + last.1 == k.obj => last.1 = end - last.0,
                        _ if full => {
                            bad = Some("too many extents".into());
                            return Ok(false);
                        }
                        _ => extents.push((k.obj, len)),
                    }
                }
                BLOCK_GROUP_ITEM => {
                    if d.len() < 24 || groups.len() >= MAX_ITEMS {
                        bad = Some(format!("block group item at {}", k.obj));
                        return Ok(false);
                    }
                    groups.push((k.obj, k.off, le64(d, 0)));
                }
                _ => {}
            }
            Ok(true)
        })?;
        if let Some(why) = bad {
            return Err(corrupt(format!("{}: {why}", self.label)));
        }
        let mut out = Vec::new();
        let mut e = 0usize;
        for (start, len, used) in groups {
            let end = start.saturating_add(len);
            let chunk = self.chunks.get(&start).filter(|c| c.len == len);
            // Extents before this group lie in none (checked as the next group's).
            while e < extents.len() && extents[e].0 + extents[e].1 <= start {
                e += 1;
            }
            let mut inside = Vec::new();
            let (mut i, mut crosses) = (e, false);
            while i < extents.len() && extents[i].0 < end {
                let (o, l) = extents[i];
                crosses |= o < start || o + l > end;
                inside.push((o, l));
                i += 1;
            }
            let sum: u64 = inside.iter().map(|r| r.1).sum();
            let Some(c) = chunk else {
                continue;
            };
            if crosses || sum != used {
                tracing::warn!(
                    "{}: block group at {start}: {} bytes in extents, {used} counted used; kept whole",
                    self.label,
                    sum
                );
                continue;
            }
            // Also kept: what the fsync log holds here (sorted, disjoint: the ranges
            // reaching into the group are consecutive).
            let from = logged.partition_point(|r| r.0.saturating_add(r.1) <= start);
            inside.extend(logged[from..].iter().take_while(|r| r.0 < end));
            for (o, l) in crate::ntfs_ext::subtract(vec![(start, len)], inside) {
                let on_devs = stripe_ranges(c, o - start, l);
                out.extend(
                    on_devs
                        .into_iter()
                        .filter(|r| r.1.checked_add(r.2).is_some()),
                );
            }
        }
        Ok(out)
    }

    /// Adds the address of every node of the tree at `root` (address, level) to `out`,
    /// each checked as a scan checks it.
    fn tree_blocks(&self, root: (u64, u8), out: &mut Vec<u64>) -> io::Result<()> {
        let mut stack = vec![(root.0, root.1, None)];
        let mut visits = 0;
        while let Some((at, level, generation)) = stack.pop() {
            visits += 1;
            if visits > MAX_VISITS {
                return Err(corrupt(format!(
                    "{}: btrfs tree walk visits too many nodes",
                    self.label
                )));
            }
            let node = self.node(at, level)?;
            if generation.is_some_and(|g| g != node.generation) {
                return Err(self.bad_node(at, "generation differs from its parent's pointer"));
            }
            out.push(at);
            if level > 0 {
                stack.extend((0..node.n).map(|i| {
                    let (child, g) = node.ptr(i);
                    (child, level - 1, Some(g))
                }));
            }
        }
        Ok(())
    }

    fn tree(&self, id: u64) -> io::Result<(u64, u8)> {
        let r = self.tree_root(id)?;
        Ok((r.bytenr, r.level))
    }

    /// The mount's number for object `obj` of subvolume `tree`; `None` when none is
    /// left below [`MAX_INO`].
    fn number(&self, tree: u64, obj: u64) -> Option<u64> {
        if tree == FS_TREE && obj < DYN_BASE {
            return Some(obj);
        }
        let mut n = self.numbers.lock().unwrap();
        if let Some(&i) = n.of.get(&(tree, obj)) {
            return Some(i);
        }
        let i = DYN_BASE + n.back.len() as u64;
        if i > MAX_INO {
            return None;
        }
        n.of.insert((tree, obj), i);
        n.back.push((tree, obj));
        Some(i)
    }

    /// (subvolume, object id) of a mount number.
    fn locate(&self, ino: u64) -> io::Result<(u64, u64)> {
        if ino < DYN_BASE {
            return Ok((FS_TREE, ino));
        }
        let n = self.numbers.lock().unwrap();
        n.back
            .get((ino - DYN_BASE) as usize)
            .copied()
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT))
    }

    fn inode(&self, ino: u64) -> io::Result<Arc<Inode>> {
        if let Some(i) = self.inodes.get(&ino) {
            return Ok(i);
        }
        let (tree, obj) = self.locate(ino)?;
        let mut found = None;
        let (lo, _) = Key::range(obj, INODE_ITEM);
        self.scan_fs(tree, lo, lo, &mut |_, d| {
            found = Inode::parse(d);
            Ok(false)
        })?;
        let i = match found {
            Some(i) => i,
            // Where a snapshot's source held another subvolume: an empty directory, as
            // the kernel shows it (times of the subvolume's root).
            None if obj == EMPTY_SUBVOL_DIR => {
                let r = self.tree_root(tree)?;
                if r.dirid == EMPTY_SUBVOL_DIR {
                    return Err(corrupt(format!(
                        "{}: btrfs subvolume {tree} has no root directory",
                        self.label
                    )));
                }
                let mut top = (*self.inode(self.number(tree, r.dirid).unwrap_or(0))?).clone();
                top.mode = 0o40755;
                top.nlink = 1;
                top.size = 0;
                top.nbytes = 0;
                top.flags = 0;
                top
            }
            None => {
                return Err(corrupt(format!(
                    "{}: btrfs subvolume {tree}: inode {obj} not found",
                    self.label
                )))
            }
        };
        let i = Arc::new(i);
        self.inodes.put(ino, i.clone());
        Ok(i)
    }

    fn listing(&self, ino: u64) -> io::Result<Arc<Listing>> {
        if let Some(l) = self.dirs.get(&ino) {
            return Ok(l);
        }
        let i = self.inode(ino)?;
        if i.kind() != Some(NodeKind::Dir) {
            return Err(io::Error::from_raw_os_error(libc::ENOTDIR));
        }
        let (tree, obj) = self.locate(ino)?;
        let mut raw: Vec<(Key, u8, Vec<u8>)> = Vec::new();
        let (lo, hi) = Key::range(obj, DIR_INDEX);
        if obj != EMPTY_SUBVOL_DIR {
            self.scan_fs(tree, lo, hi, &mut |_, d| {
                if raw.len() >= MAX_ITEMS {
                    return Err(corrupt("btrfs directory holds too many entries"));
                }
                for (loc, ty, name, _) in dir_items(d) {
                    raw.push((loc, ty, name.to_vec()));
                }
                Ok(true)
            })?;
        }
        let mut entries = Vec::with_capacity(raw.len());
        // Logs and counts an entry left out, and why.
        let skip = |name: &[u8], why: String| {
            tracing::warn!(
                "{}: btrfs directory {obj} of subvolume {tree}: entry {:?} skipped: {why}",
                self.label,
                String::from_utf8_lossy(name)
            );
            self.left_out.add(1);
        };
        for (loc, ty, name) in raw {
            if !valid_name(&name) {
                skip(&name, "an invalid name".into());
                continue;
            }
            let child = match loc.ty {
                INODE_ITEM => self.number(tree, loc.obj),
                ROOT_ITEM => match self.tree_root(loc.obj) {
                    Ok(r) => self.number(loc.obj, r.dirid),
                    Err(e) => {
                        skip(&name, format!("its subvolume: {e}"));
                        continue;
                    }
                },
                t => {
                    skip(&name, format!("it points at an item of type {t}"));
                    continue;
                }
            };
            let Some(child) = child else {
                skip(&name, "more objects than the mount can number".into());
                continue;
            };
            let kind = if loc.ty == ROOT_ITEM {
                Some(NodeKind::Dir)
            } else {
                NodeKind::from_dirent(ty)
            };
            let Some(kind) = kind else {
                skip(&name, format!("unknown file type {ty}"));
                continue;
            };
            entries.push(DirEntry {
                name,
                ino: child,
                kind,
            });
        }
        let l = Arc::new(Listing::new(entries));
        self.dirs.put(ino, l.clone());
        Ok(l)
    }

    fn extents(&self, ino: u64) -> io::Result<Arc<ExtentMap>> {
        if let Some(m) = self.maps.get(&ino) {
            return Ok(m);
        }
        let (tree, obj) = self.locate(ino)?;
        let mut out: Vec<Extent> = Vec::new();
        let (lo, hi) = Key::range(obj, EXTENT_DATA);
        let label = &self.label;
        self.scan_fs(tree, lo, hi, &mut |k, d| {
            if out.len() >= MAX_ITEMS {
                return Err(corrupt("btrfs file holds too many extents"));
            }
            let bad = |why: &str| {
                corrupt(format!(
                    "{label}: btrfs inode {obj}, extent at {}: {why}",
                    k.off
                ))
            };
            if d.len() < 21 {
                return Err(bad("item truncated"));
            }
            let (ram, comp, kind) = (le64(d, 8), d[16], d[20]);
            if d[17] != 0 || le16(d, 18) != 0 {
                return Err(bad("encrypted or encoded"));
            }
            let e = match kind {
                0 => Extent {
                    file: k.off,
                    len: if comp == 0 {
                        (d.len() - 21) as u64
                    } else {
                        ram
                    },
                    data: Data::Inline {
                        bytes: Arc::new(d[21..].to_vec()),
                        comp,
                    },
                },
                1 | 2 => {
                    if d.len() < 53 {
                        return Err(bad("item truncated"));
                    }
                    let (disk, disk_len, off, len) =
                        (le64(d, 21), le64(d, 29), le64(d, 37), le64(d, 45));
                    let data = if disk == 0 || kind == 2 {
                        Data::Zeros
                    } else {
                        if comp != 0 && (disk_len > MAX_COMPRESSED || ram > MAX_COMPRESSED) {
                            return Err(bad("compressed extent too large"));
                        }
                        Data::Regular {
                            disk,
                            disk_len,
                            off,
                            comp,
                        }
                    };
                    Extent {
                        file: k.off,
                        len,
                        data,
                    }
                }
                t => return Err(bad(&format!("extent type {t}"))),
            };
            if let Some(p) = out.last() {
                if e.file < p.file.saturating_add(p.len) {
                    return Err(bad("overlaps the extent before"));
                }
            }
            out.push(e);
            Ok(true)
        })?;
        let m = Arc::new(ExtentMap(out));
        self.maps.put(ino, m.clone());
        Ok(m)
    }

    /// Reads file data at logical `at` (whole sectors when `verify`), checked against
    /// the csum tree when `verify`, as the kernel reads it: from the first copy, and
    /// when that fails to read or to match its checksums, from the other ways to
    /// the same bytes — the other copies (DUP, RAID1*, RAID10), or RAID5/6 rows
    /// rebuilt without the failing stripe (from P, then RAID6's Q) — whole or,
    /// failing that, sector by sector from whichever way gives each (with a warning
    /// naming the first failure); else that failure.
    fn read_data(&self, at: u64, buf: &mut [u8], verify: bool) -> io::Result<()> {
        let parity = match self.chunk_at(at) {
            Some((_, c)) if c.ty & RAID6 != 0 => 2,
            Some((_, c)) if c.ty & RAID5 != 0 => 1,
            _ => 0,
        };
        let copies = if parity > 0 {
            1
        } else {
            self.map(at).map_or(1, |(c, _)| c.len())
        };
        let from = |at: u64, buf: &mut [u8], way: usize| {
            match way.checked_sub(copies) {
                None => self.read_logical(at, buf, way)?,
                Some(p) => {
                    self.read_rebuilt(at, buf, if p == 0 { NOT_DATA } else { NOT_DATA | NOT_P })?
                }
            }
            if verify {
                self.check_data(at, buf)?;
            }
            Ok::<(), io::Error>(())
        };
        let Err(e) = from(at, buf, 0) else {
            return Ok(());
        };
        let ways = copies + parity;
        if ways < 2 {
            return Err(e);
        }
        if !(1..ways).any(|m| from(at, buf, m).is_ok()) {
            let sector = self.sb.sectorsize as usize;
            for (i, piece) in buf.chunks_mut(sector).enumerate() {
                let at = at + (i * sector) as u64;
                if !(0..ways).any(|m| from(at, piece, m).is_ok()) {
                    return Err(e);
                }
            }
        }
        tracing::warn!("{e}; read from another copy or rebuilt from parity instead");
        Ok(())
    }

    /// Reads RAID5/6 logical bytes rebuilt from their rows `without` some stripes
    /// ([`BtrfsFs::rebuild56`]), stripe by stripe.
    fn read_rebuilt(&self, mut logical: u64, mut buf: &mut [u8], without: u8) -> io::Result<()> {
        while !buf.is_empty() {
            let n = self.rebuild56(logical, buf, without)?;
            if n == 0 {
                return Err(corrupt(format!(
                    "{}: btrfs RAID5/6 rebuild made no progress",
                    self.label
                )));
            }
            logical += n as u64;
            buf = &mut buf[n..];
        }
        Ok(())
    }

    /// Checks sector-aligned data read from logical `at` against the csum tree, as the
    /// kernel does on every read: a mismatch is an error naming the bytes (the kernel
    /// answers EIO too); sectors without a checksum (written without) pass.
    fn check_data(&self, at: u64, data: &[u8]) -> io::Result<()> {
        let Some(root) = self.csums else {
            return Ok(());
        };
        let (sector, size) = (self.sb.sectorsize as u64, self.sb.csum.size());
        let end = at.saturating_add(data.len() as u64);
        // An item holds at most a node's worth of checksums: one starting that far
        // back may still cover `at`.
        let reach = (self.sb.nodesize as u64 / size as u64).saturating_mul(sector);
        let lo = Key {
            obj: CSUM_OBJECTID,
            ty: EXTENT_CSUM,
            off: at.saturating_sub(reach),
        };
        let hi = Key {
            obj: CSUM_OBJECTID,
            ty: EXTENT_CSUM,
            off: end.saturating_sub(1),
        };
        // Each sector's checksum: the tree's, then the replayed log's over them.
        let sectors = (data.len() as u64).div_ceil(sector) as usize;
        let mut want: Vec<Option<Vec<u8>>> = vec![None; sectors];
        let mut fill = |start: u64, d: &[u8]| {
            let item_end = start.saturating_add(((d.len() / size) as u64).saturating_mul(sector));
            let mut s = start.max(at);
            while s < item_end.min(end) {
                let i = ((s - start) / sector) as usize * size;
                want[((s - at) / sector) as usize] = Some(d[i..i + size].to_vec());
                s += sector;
            }
        };
        self.scan(root, lo, hi, &mut |k, d| {
            fill(k.off, d);
            Ok(true)
        })?;
        for (start, d) in self.log_csums.range(lo.off..=hi.off) {
            fill(*start, d);
        }
        let bad = want.iter().enumerate().find_map(|(n, c)| {
            let c = c.as_ref()?;
            let from = n * sector as usize;
            let block = &data[from..(from + sector as usize).min(data.len())];
            (self.sb.csum.sum(block)[..size] != c[..]).then_some(at + from as u64)
        });
        match bad {
            None => Ok(()),
            Some(s) => {
                let phys = self.map(s).map(|(c, _)| c[0].1).unwrap_or(0);
                Err(corrupt(format!(
                    "{}: btrfs data at logical {s} (device offset {phys}): checksum mismatch",
                    self.label
                )))
            }
        }
    }

    /// A compressed extent decoded whole.
    fn unzip(&self, disk: u64, disk_len: u64, comp: u8, verify: bool) -> io::Result<Arc<Vec<u8>>> {
        if let Some(v) = self.unzipped.get(&(disk, disk_len)) {
            return Ok(v);
        }
        let mut raw = vec![0u8; disk_len as usize];
        self.read_data(disk, &mut raw, verify)?;
        let v = Arc::new(self.decompress(&raw, comp, MAX_COMPRESSED as usize)?);
        self.unzipped.put((disk, disk_len), v.clone());
        Ok(v)
    }

    /// Decodes `raw` (zlib, LZO or zstd as btrfs frames them), at most `max` bytes.
    fn decompress(&self, raw: &[u8], comp: u8, max: usize) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        let bad = |e: String| corrupt(format!("{}: btrfs compressed extent: {e}", self.label));
        match comp {
            1 => {
                flate2::read::ZlibDecoder::new(raw)
                    .take(max as u64)
                    .read_to_end(&mut out)
                    .map_err(|e| bad(format!("zlib: {e}")))?;
            }
            2 => out = lzo::decompress_btrfs(raw, self.sb.sectorsize as usize, max).map_err(bad)?,
            3 => {
                // One frame, then the sector's zero padding.
                let n = zstd::zstd_safe::find_frame_compressed_size(raw)
                    .map_err(|c| bad(format!("zstd: {}", zstd::zstd_safe::get_error_name(c))))?;
                out = crate::unzstd::with_decompressor(|d| d.decompress(&raw[..n], max))
                    .map_err(|e| bad(format!("zstd: {e}")))?;
            }
            c => return Err(bad(format!("compression type {c}"))),
        }
        Ok(out)
    }

    /// Fills `buf` with file bytes from `offset` (inside the file's size).
    fn read_extents(
        &self,
        map: &[Extent],
        offset: u64,
        buf: &mut [u8],
        verify: bool,
    ) -> io::Result<()> {
        buf.fill(0);
        let end = offset + buf.len() as u64;
        let start = map.partition_point(|e| e.file.saturating_add(e.len) <= offset);
        for e in &map[start..] {
            if e.file >= end {
                break;
            }
            let lo = e.file.max(offset);
            let hi = e.file.saturating_add(e.len).min(end);
            if hi <= lo {
                continue;
            }
            let dst = &mut buf[(lo - offset) as usize..(hi - offset) as usize];
            let within = lo - e.file;
            match &e.data {
                Data::Zeros => {}
                Data::Inline { bytes, comp } => {
                    let plain;
                    let src: &[u8] = if *comp == 0 {
                        bytes
                    } else {
                        plain = self.decompress(bytes, *comp, self.sb.sectorsize as usize)?;
                        &plain
                    };
                    copy_from(src, within, dst);
                }
                Data::Regular {
                    disk, off, comp: 0, ..
                } => {
                    let at = disk
                        .checked_add(*off)
                        .and_then(|a| a.checked_add(within))
                        .ok_or_else(|| corrupt(format!("{}: btrfs extent address", self.label)))?;
                    if verify && self.csums.is_some() {
                        // Whole sectors, as their checksums cover them.
                        let sector = self.sb.sectorsize as u64;
                        let a = at / sector * sector;
                        let z = (at + dst.len() as u64).div_ceil(sector) * sector;
                        if a == at && z - a == dst.len() as u64 {
                            // Already whole sectors (a page-aligned read): in place.
                            self.read_data(at, dst, true)?;
                        } else {
                            let mut whole = vec![0u8; (z - a) as usize];
                            self.read_data(a, &mut whole, true)?;
                            let from = (at - a) as usize;
                            dst.copy_from_slice(&whole[from..from + dst.len()]);
                        }
                    } else {
                        self.read_data(at, dst, false)?;
                    }
                }
                Data::Regular {
                    disk,
                    disk_len,
                    off,
                    comp,
                } => {
                    let plain = self.unzip(*disk, *disk_len, *comp, verify)?;
                    copy_from(&plain, off.saturating_add(within), dst);
                }
            }
        }
        Ok(())
    }

    /// Device byte ranges holding the file's bytes `offset..end` (prefetch hints).
    fn spans(&self, map: &[Extent], offset: u64, end: u64) -> Vec<(u64, u64)> {
        let mut spans = Vec::new();
        let start = map.partition_point(|e| e.file.saturating_add(e.len) <= offset);
        for e in &map[start..] {
            if e.file >= end || spans.len() >= 4096 {
                break;
            }
            let Data::Regular {
                disk,
                disk_len,
                off,
                comp,
            } = e.data
            else {
                continue;
            };
            let (mut at, mut len) = if comp == 0 {
                let lo = e.file.max(offset) - e.file;
                let hi = e.file.saturating_add(e.len).min(end) - e.file;
                (
                    disk.saturating_add(off).saturating_add(lo),
                    hi.saturating_sub(lo),
                )
            } else {
                (disk, disk_len)
            };
            while len > 0 {
                let Some((here, avail)) = self.here(at) else {
                    break;
                };
                let n = len.min(avail);
                spans.push((here, n));
                at += n;
                len -= n;
            }
        }
        spans
    }
}

/// Copies `src[from..]` into `dst` as far as it reaches (the rest stays zero).
fn copy_from(src: &[u8], from: u64, dst: &mut [u8]) {
    if let Some(s) = usize::try_from(from).ok().and_then(|f| src.get(f..)) {
        let n = s.len().min(dst.len());
        dst[..n].copy_from_slice(&s[..n]);
    }
}

/// The entries packed in a directory or xattr item: (location, type, name, data).
fn dir_items(mut d: &[u8]) -> Vec<(Key, u8, &[u8], &[u8])> {
    let mut out = Vec::new();
    while d.len() >= 30 {
        let (data_len, name_len) = (le16(d, 25) as usize, le16(d, 27) as usize);
        let Some(rest) = d.get(30..30 + name_len + data_len) else {
            break;
        };
        out.push((
            Key::parse(d, 0),
            d[29],
            &rest[..name_len],
            &rest[name_len..],
        ));
        d = &d[30 + name_len + data_len..];
    }
    out
}

/// Scan state: the last key seen (keys must rise) and nodes visited.
struct Scan {
    last: Option<Key>,
    visits: usize,
}

impl FsTree for BtrfsFs {
    fn root(&self) -> u64 {
        self.root_ino
    }

    fn stat(&self, ino: u64) -> io::Result<Stat> {
        let i = self.inode(ino)?;
        let kind = i
            .kind()
            .ok_or_else(|| corrupt(format!("{}: inode {ino}: mode {:#o}", self.label, i.mode)))?;
        let rdev = if matches!(kind, NodeKind::CharDev | NodeKind::BlockDev) {
            // The kernel's own dev_t (12 bits of major over 20 of minor); FUSE takes
            // the user-space encoding.
            linux_dev((i.rdev >> 20) as u32 & 0xFFF, i.rdev as u32 & 0xF_FFFF)
        } else {
            0
        };
        let bs = self.sb.sectorsize as u64;
        let [atime, mtime, ctime, crtime] = i.times;
        Ok(Stat {
            ino,
            kind,
            perm: (i.mode & 0o7777) as u16,
            nlink: i.nlink,
            uid: i.uid,
            gid: i.gid,
            size: i.size,
            blocks: i.nbytes.div_ceil(bs).saturating_mul(bs / 512),
            atime,
            mtime,
            ctime,
            crtime,
            rdev,
        })
    }

    fn read_dir(&self, ino: u64) -> io::Result<Arc<Vec<DirEntry>>> {
        Ok(self.listing(ino)?.entries.clone())
    }

    fn lookup(&self, dir: u64, name: &[u8]) -> io::Result<Option<u64>> {
        Ok(self.listing(dir)?.index.get(name).copied())
    }

    fn read(&self, ino: u64, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let i = self.inode(ino)?;
        if i.kind() != Some(NodeKind::File) {
            return Err(io::Error::from_raw_os_error(libc::EISDIR));
        }
        if offset >= i.size {
            return Ok(0);
        }
        let n = ((i.size - offset) as usize).min(buf.len());
        let map = self.extents(ino)?;
        let verify = i.flags & INODE_NODATASUM == 0;
        self.read_extents(&map.0, offset, &mut buf[..n], verify)?;
        Ok(n)
    }

    fn prefetch(&self, ino: u64, offset: u64, len: u64) {
        if let Ok(map) = self.extents(ino) {
            let spans = self.spans(&map.0, offset, offset.saturating_add(len));
            if !spans.is_empty() {
                self.dev.prefetch(&spans);
            }
        }
    }

    fn seek(&self, ino: u64, offset: u64, data: bool) -> io::Result<Option<u64>> {
        let i = self.inode(ino)?;
        let size = i.size;
        if offset >= size {
            return Ok(None);
        }
        if i.kind() != Some(NodeKind::File) {
            return Ok(Some(if data { offset } else { size }));
        }
        let map = self.extents(ino)?;
        // Preallocated extents are holes to SEEK_DATA, as the kernel reports them.
        let runs = map
            .0
            .iter()
            .filter(|e| !matches!(e.data, Data::Zeros))
            .map(|e| (e.file, e.file.saturating_add(e.len)));
        Ok(seek_runs(runs, offset, size, data))
    }

    fn can_close(&self) -> bool {
        // Numbers handed out for other subvolumes' objects live only in this instance.
        self.numbers.lock().unwrap().back.is_empty()
    }

    fn read_link(&self, ino: u64) -> io::Result<Vec<u8>> {
        let i = self.inode(ino)?;
        if i.kind() != Some(NodeKind::Symlink) {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        if i.size == 0 || i.size > 4096 {
            return Err(corrupt(format!(
                "{}: btrfs symlink {ino} of {} bytes",
                self.label, i.size
            )));
        }
        let map = self.extents(ino)?;
        let mut b = vec![0u8; i.size as usize];
        self.read_extents(&map.0, 0, &mut b, true)?;
        Ok(b)
    }

    fn flags(&self, ino: u64) -> io::Result<Option<u32>> {
        let i = self.inode(ino)?;
        let f = i.flags;
        // btrfs_inode_flags_to_fsflags: (btrfs bit, FS_IOC_GETFLAGS bit).
        const MAP: [(u64, u32); 7] = [
            (0x20, 0x8),        // sync
            (0x40, 0x10),       // immutable
            (0x80, 0x20),       // append-only
            (0x100, 0x40),      // nodump
            (0x200, 0x80),      // noatime
            (0x400, 0x1_0000),  // dirsync
            (0x2, 0x0080_0000), // nodatacow: no copy-on-write
        ];
        let mut out = MAP
            .iter()
            .filter(|(b, _)| f & b != 0)
            .fold(0, |acc, (_, l)| acc | l);
        if f & 0x8 != 0 {
            out |= 0x400; // nocompress
        } else if f & 0x800 != 0 {
            out |= 0x4; // compress
        }
        if (f >> 32) & 1 != 0 {
            out |= 0x0010_0000; // FS_VERITY_FL
        }
        Ok(Some(out))
    }

    fn xattrs(&self, ino: u64) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let (tree, obj) = self.locate(ino)?;
        let mut out = Vec::new();
        let (lo, hi) = Key::range(obj, XATTR_ITEM);
        self.scan_fs(tree, lo, hi, &mut |_, d| {
            if out.len() >= 65536 {
                return Err(corrupt("btrfs inode holds too many xattrs"));
            }
            for (_, _, name, value) in dir_items(d) {
                out.push((name.to_vec(), value.to_vec()));
            }
            Ok(true)
        })?;
        Ok(out)
    }

    fn statfs(&self) -> StatFs {
        // The kernel's figures depend on its in-memory space reservations; these are
        // the superblock's totals.
        let bs = self.sb.sectorsize as u64;
        let blocks = self.sb.total_bytes / bs;
        let free = blocks.saturating_sub(self.sb.bytes_used.div_ceil(bs));
        StatFs {
            bsize: self.sb.sectorsize,
            blocks,
            bfree: free,
            bavail: free,
            files: 0,
            ffree: 0,
            namelen: 255,
        }
    }
}
