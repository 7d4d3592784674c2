//! FAT12, FAT16 and FAT32 volumes, read-only: EFI system partitions, USB sticks, SD
//! cards. Names are the VFAT long names where their checksum matches the 8.3 entry
//! (else the 8.3 name, with Windows NT's lower-case flags, as Linux shows them);
//! files are cluster chains followed through the active FAT. Inode numbers are the
//! position of a file's 8.3 entry on the volume, so a reopened tree gives the same.

mod cp437;

pub mod exfat;

use std::collections::HashMap;
use std::io;
use std::sync::Arc;

use crate::cache::{Weigh, WeightedLru};
use crate::ntfs_ext::tree::{DirEntry, FsTree, NodeKind, Stat, StatFs, Timespec, TreeOptions};
use crate::ntfs_ext::{corrupt, run_spans};
use crate::readat::{ReadAt, Slice};
use crate::volumes::mirror::Mirrored;

const ROOT: u64 = 1;
const ATTR_VOLUME: u8 = 0x08;
const ATTR_DIR: u8 = 0x10;
const ATTR_LFN: u8 = 0x0F;
/// Entries a directory may hold (the FAT specification's limit): bounds every walk.
const MAX_DIR_ENTRIES: u64 = 65536;
/// Bytes of the FAT read and cached at a time.
const FAT_CHUNK: u64 = 64 << 10;
/// Cache caps of one volume (all also share the mount's budget).
const FAT_CACHE: usize = 4 << 20;
const DIR_CACHE: usize = 16 << 20;
const RUN_CACHE: usize = 8 << 20;

fn le16(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}

fn le32(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FatKind {
    Fat12,
    Fat16,
    Fat32,
}

impl FatKind {
    /// The FAT's entry for cluster `c`, its bytes read through `byte` (an offset into
    /// the FAT): 12-bit entries packed two in three bytes, 32-bit ones with their top
    /// four bits reserved.
    fn entry(self, c: u32, mut byte: impl FnMut(u64) -> io::Result<u8>) -> io::Result<u32> {
        let c = c as u64;
        Ok(match self {
            FatKind::Fat12 => {
                let o = c + c / 2;
                let v = byte(o)? as u32 | (byte(o + 1)? as u32) << 8;
                if c & 1 == 1 {
                    v >> 4
                } else {
                    v & 0xFFF
                }
            }
            FatKind::Fat16 => byte(c * 2)? as u32 | (byte(c * 2 + 1)? as u32) << 8,
            FatKind::Fat32 => {
                let mut v = 0u32;
                for i in 0..4 {
                    v |= (byte(c * 4 + i)? as u32) << (8 * i);
                }
                v & 0x0FFF_FFFF
            }
        })
    }

    /// Entries at or above this end a chain.
    fn end_of_chain(self) -> u32 {
        match self {
            FatKind::Fat12 => 0xFF8,
            FatKind::Fat16 => 0xFFF8,
            FatKind::Fat32 => 0x0FFF_FFF8,
        }
    }
}

/// Where things are, from the boot sector (BPB), every value checked against the
/// others and the volume's size.
#[derive(Debug, Clone)]
struct Layout {
    kind: FatKind,
    cluster: u64,
    /// Byte offset of the FAT in use (FAT32 may name one; else the first).
    fat: u64,
    fat_bytes: u64,
    /// FAT12/16: the fixed root directory region.
    root_dir: (u64, u64),
    /// FAT32: the root directory's first cluster.
    root_cluster: u32,
    data: u64,
    /// Data clusters: valid cluster numbers are 2..clusters + 2.
    clusters: u32,
    /// FAT32: the byte offset of the FSInfo sector, which keeps a free-cluster count.
    fsinfo: Option<u64>,
    /// Byte offsets of the FATs kept up to date: every copy, or only the active one
    /// when FAT32 mirroring is off.
    copies: Vec<u64>,
}

impl Layout {
    fn parse(b: &[u8], size: u64) -> Result<Layout, &'static str> {
        if !(b[0] == 0xEB && b[2] == 0x90 || b[0] == 0xE9) {
            return Err("no x86 jump at the start of the boot sector");
        }
        let bps = le16(b, 11) as u64;
        let spc = b[13] as u64;
        let reserved = le16(b, 14) as u64;
        let nfats = b[16] as u64;
        let root_entries = le16(b, 17) as u64;
        let media = b[21];
        let total = match le16(b, 19) {
            0 => le32(b, 32) as u64,
            n => n as u64,
        };
        let fat_sectors = match le16(b, 22) {
            0 => le32(b, 36) as u64,
            n => n as u64,
        };
        if !matches!(bps, 512 | 1024 | 2048 | 4096) {
            return Err("bytes per sector not 512, 1024, 2048 or 4096");
        }
        if spc == 0 || !spc.is_power_of_two() || bps * spc > 256 << 10 {
            return Err("sectors per cluster not a power of two up to 256 KiB");
        }
        if reserved == 0 || nfats == 0 || nfats > 4 {
            return Err("no reserved sectors or an implausible number of FATs");
        }
        if !(media == 0xF0 || media >= 0xF8) {
            return Err("unknown media byte");
        }
        if total == 0 || fat_sectors == 0 {
            return Err("no sectors or no FAT");
        }
        let root_sectors = (root_entries * 32).div_ceil(bps);
        let meta = reserved + nfats * fat_sectors + root_sectors;
        if meta >= total || total.saturating_mul(bps) > size.max(bps) * 2 {
            return Err("layout does not fit the sectors it claims");
        }
        let clusters = (total - meta) / spc;
        // As Linux decides: FAT32 when the 16-bit FAT size is zero, else FAT12 or
        // FAT16 by the number of clusters.
        let kind = if le16(b, 22) == 0 {
            FatKind::Fat32
        } else if clusters < 4085 {
            FatKind::Fat12
        } else {
            FatKind::Fat16
        };
        if clusters == 0 || clusters > 0x0FFF_FFF5 {
            return Err("no clusters, or more than FAT32 can number");
        }
        let fat_bytes = fat_sectors * bps;
        let entry_bits = match kind {
            FatKind::Fat12 => 12,
            FatKind::Fat16 => 16,
            FatKind::Fat32 => 32,
        };
        if (clusters + 2) * entry_bits / 8 > fat_bytes {
            return Err("FAT too small for its clusters");
        }
        let mut active = 0;
        let mut mirrored = true;
        let mut root_cluster = 0;
        let mut fsinfo = None;
        if kind == FatKind::Fat32 {
            if root_entries != 0 {
                return Err("FAT32 with a fixed root directory");
            }
            let flags = le16(b, 40);
            if flags & 0x80 != 0 {
                mirrored = false;
                active = (flags & 0x0F) as u64;
                if active >= nfats {
                    return Err("active FAT out of range");
                }
            }
            root_cluster = le32(b, 44);
            fsinfo = match le16(b, 48) as u64 {
                0 | 0xFFFF => None,
                n if n < reserved => Some(n * bps),
                _ => None,
            };
            if root_cluster < 2 || root_cluster as u64 >= clusters + 2 {
                return Err("root cluster out of range");
            }
        } else if root_entries == 0 {
            return Err("FAT12/16 without a root directory");
        }
        Ok(Layout {
            kind,
            cluster: bps * spc,
            fat: (reserved + active * fat_sectors) * bps,
            fat_bytes,
            root_dir: ((reserved + nfats * fat_sectors) * bps, root_entries * 32),
            root_cluster,
            data: meta * bps,
            clusters: clusters as u32,
            fsinfo,
            copies: if mirrored {
                (0..nfats)
                    .map(|i| (reserved + i * fat_sectors) * bps)
                    .collect()
            } else {
                vec![(reserved + active * fat_sectors) * bps]
            },
        })
    }
}

/// Byte ranges (offset, length; sorted, merged) of the volume's clusters that every
/// up-to-date copy of the FAT marks free (entry 0), for `backup --skip-free`. Bad
/// clusters and anything past the device count as used.
pub fn free_ranges(dev: Arc<dyn ReadAt>, label: &str) -> io::Result<Vec<(u64, u64)>> {
    let mut b = [0u8; 512];
    dev.read_exact_at(0, &mut b)?;
    let l = Layout::parse(&b, dev.size())
        .map_err(|e| corrupt(format!("{label}: not a FAT volume: {e}")))?;
    // Leaving blocks out on a false FAT would lose data: ask for the boot signature
    // and the media byte at the head of every FAT copy, which formatters write.
    if b[510..512] != [0x55, 0xAA] {
        return Err(corrupt(format!("{label}: no boot signature")));
    }
    for &at in &l.copies {
        let mut head = [0u8; 1];
        dev.read_exact_at(at, &mut head)?;
        if head[0] != b[21] {
            return Err(corrupt(format!(
                "{label}: a FAT does not start with the media byte"
            )));
        }
    }
    let size = dev.size();
    let bits = match l.kind {
        FatKind::Fat12 => 12,
        FatKind::Fat16 => 16,
        FatKind::Fat32 => 32,
    };
    let mut out: Vec<(u64, u64)> = Vec::new();
    let end = l.clusters as u64 + 2;
    let mut first = 2u64;
    // Entries for 64 Ki clusters at a time from each copy (at most 256 KiB each).
    while first < end {
        let last = (first + (1 << 16)).min(end);
        let start = first * bits / 8;
        let stop = ((last - 1) * bits / 8 + bits.div_ceil(8) + 1).min(l.fat_bytes);
        let mut copies = Vec::with_capacity(l.copies.len());
        for &at in &l.copies {
            let mut buf = vec![0u8; (stop - start) as usize];
            dev.read_exact_at(at + start, &mut buf)?;
            copies.push(buf);
        }
        for c in first..last {
            let free = copies.iter().all(|buf| {
                let byte = |o: u64| {
                    buf.get(o.wrapping_sub(start) as usize)
                        .copied()
                        .ok_or_else(|| corrupt("FAT entry past the FAT"))
                };
                l.kind.entry(c as u32, byte).is_ok_and(|v| v == 0)
            });
            let at = l.data + (c - 2) * l.cluster;
            if !free || at >= size {
                continue;
            }
            crate::readat::push_range(&mut out, at, l.cluster.min(size - at));
        }
        first = last;
    }
    Ok(out)
}

/// A FAT32 volume whose boot sector is unreadable (a failing disk's backup did not
/// give it) or wiped, read through the backup boot sector FAT32 keeps in sector 6
/// (checked: a FAT32 layout that fits, naming sector 6 as its backup, with the boot
/// signature); `None` when there is none or sector 0 holds something.
pub fn open_backup(
    dev: &Arc<dyn ReadAt>,
    opts: &TreeOptions,
    why: &str,
) -> Option<io::Result<FatFs>> {
    // A FAT32 boot sector that failed to parse is not told from other bytes: only an
    // unreadable or wiped one leaves the backup to be read.
    if !super::start_gone_or_ours(&**dev, |_| false, true) {
        return None;
    }
    for bps in [512u64, 4096] {
        let mut b = [0u8; 512];
        if dev.read_exact_at(6 * bps, &mut b).is_err() {
            continue;
        }
        let fits = Layout::parse(&b, dev.size())
            .is_ok_and(|l| l.kind == FatKind::Fat32 && l.cluster % bps == 0);
        if !fits || le16(&b, 11) as u64 != bps || le16(&b, 50) != 6 || b[510..512] != [0x55, 0xAA] {
            continue;
        }
        tracing::warn!(
            "{}: FAT32 boot sector unusable ({why}); read through its backup in sector 6",
            opts.label
        );
        let patched = crate::readat::Patched::new(dev.clone(), vec![(0, b.to_vec())]);
        return Some(FatFs::open(Arc::new(patched), opts));
    }
    None
}

/// Whether the volume starts with a FAT boot sector.
pub fn probe(dev: &dyn ReadAt) -> io::Result<bool> {
    if dev.size() < 512 {
        return Ok(false);
    }
    let mut b = [0u8; 512];
    dev.read_exact_at(0, &mut b)?;
    Ok(Layout::parse(&b, dev.size()).is_ok())
}

/// A file's 8.3 entry, parsed.
#[derive(Debug, Clone)]
struct Entry {
    attr: u8,
    first: u32,
    size: u32,
    mtime: Timespec,
    atime: Timespec,
    crtime: Timespec,
}

impl Entry {
    fn parse(e: &[u8], kind: FatKind) -> Entry {
        let hi = if kind == FatKind::Fat32 {
            (le16(e, 20) as u32) << 16
        } else {
            0
        };
        Entry {
            attr: e[11],
            first: hi | le16(e, 26) as u32,
            size: le32(e, 28),
            crtime: fat_time(le16(e, 16), le16(e, 14), e[13]),
            atime: fat_time(le16(e, 18), 0, 0),
            mtime: fat_time(le16(e, 24), le16(e, 22), 0),
        }
    }

    fn is_dir(&self) -> bool {
        self.attr & ATTR_DIR != 0
    }
}

/// A FAT date and time (local time, taken as UTC as Linux does on a UTC machine), with
/// `cs` hundredths of a second; a zero month or day counts as 1, as Linux reads it.
fn fat_time(date: u16, time: u16, cs: u8) -> Timespec {
    let year = 1980 + (date >> 9) as i64;
    let month = ((date >> 5) & 0xF).max(1) as i64;
    let day = (date & 0x1F).max(1) as i64;
    // Days from 1970-01-01 to year-month-day (proleptic Gregorian).
    let (y, m) = if month <= 2 {
        (year - 1, month + 9)
    } else {
        (year, month - 3)
    };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs =
        (time >> 11) as i64 * 3600 + ((time >> 5) & 0x3F) as i64 * 60 + (time & 0x1F) as i64 * 2;
    let cs = cs.min(199) as i64;
    Timespec {
        secs: days * 86400 + secs + cs / 100,
        nsecs: (cs % 100) as u32 * 10_000_000,
    }
}

/// The checksum of an 8.3 name that its long-name entries carry.
fn short_checksum(name: &[u8]) -> u8 {
    name[..11]
        .iter()
        .fold(0u8, |s, &c| s.rotate_right(1).wrapping_add(c))
}

/// An 8.3 name as Linux shows it: spaces trimmed, NT's lower-case flags for the base
/// (0x08) and the extension (0x10) applied, 0x05 standing for 0xE5, code page 437.
fn short_name(e: &[u8]) -> Vec<u8> {
    let flags = e[12];
    let part = |bytes: &[u8], lower: bool| -> String {
        let end = bytes.iter().rposition(|&c| c != b' ').map_or(0, |i| i + 1);
        bytes[..end]
            .iter()
            .map(|&c| {
                let ch = cp437::to_char(c);
                if lower {
                    cp437::to_lower(ch)
                } else {
                    ch
                }
            })
            .collect()
    };
    let mut base = [0u8; 8];
    base.copy_from_slice(&e[..8]);
    if base[0] == 0x05 {
        base[0] = 0xE5;
    }
    let mut name = part(&base, flags & 0x08 != 0);
    let ext = part(&e[8..11], flags & 0x10 != 0);
    if !ext.is_empty() {
        name.push('.');
        name.push_str(&ext);
    }
    name.into_bytes()
}

/// Long-name entries gathered before the 8.3 entry they belong to.
#[derive(Default)]
struct LongName {
    /// 13 UTF-16 units per entry, by sequence number - 1.
    parts: Vec<Option<[u16; 13]>>,
    checksum: u8,
    /// The sequence number the next entry must carry (the last one read minus one).
    next: u8,
}

impl LongName {
    fn take(&mut self, e: &[u8]) {
        let seq = e[0] & 0x1F;
        if e[0] & 0x40 != 0 {
            *self = LongName::default();
            if seq == 0 || seq > 20 {
                return;
            }
            self.parts = vec![None; seq as usize];
            self.checksum = e[13];
        } else if self.parts.is_empty() || seq != self.next || e[13] != self.checksum {
            *self = LongName::default();
            return;
        }
        let mut units = [0u16; 13];
        for (i, o) in [1, 3, 5, 7, 9, 14, 16, 18, 20, 22, 24, 28, 30]
            .into_iter()
            .enumerate()
        {
            units[i] = le16(e, o);
        }
        self.parts[seq as usize - 1] = Some(units);
        self.next = seq - 1;
    }

    /// The long name for the 8.3 entry `e`, if every part arrived and the checksum
    /// matches; consumed either way.
    fn finish(&mut self, e: &[u8]) -> Option<Vec<u8>> {
        let lfn = std::mem::take(self);
        if lfn.parts.is_empty() || lfn.next != 0 || lfn.checksum != short_checksum(e) {
            return None;
        }
        let mut units = Vec::with_capacity(lfn.parts.len() * 13);
        for p in lfn.parts {
            units.extend_from_slice(&p?);
        }
        let end = units.iter().position(|&u| u == 0).unwrap_or(units.len());
        units.truncate(end);
        if units.is_empty() {
            return None;
        }
        Some(crate::ntfs_ext::ntfs::names::to_bytes(&units))
    }
}

struct Listing {
    entries: Arc<Vec<DirEntry>>,
    exact: HashMap<Vec<u8>, u64>,
    /// ASCII-case-folded names: FAT names match whatever their case, as in Linux.
    folded: HashMap<Vec<u8>, u64>,
}

impl Weigh for Arc<Listing> {
    fn weight(&self) -> usize {
        self.entries
            .iter()
            .map(|e| e.name.len() * 3 + 96)
            .sum::<usize>()
            + 64
    }
}

/// A file's clusters as runs of contiguous bytes: (offset in the file, length,
/// offset on the volume).
type Runs = Arc<Vec<(u64, u64, u64)>>;

/// An open FAT volume.
pub struct FatFs {
    dev: Arc<dyn ReadAt>,
    /// The FAT in use, and when the copies are kept mirrored the others behind it:
    /// a piece the first cannot give is read from another (as fsck.fat would).
    fat_copies: Arc<dyn ReadAt>,
    layout: Layout,
    label: String,
    uid: u32,
    gid: u32,
    fat: WeightedLru<u64, Arc<Vec<u8>>>,
    dirs: WeightedLru<u64, Arc<Listing>>,
    runs: WeightedLru<u32, Runs>,
    free: std::sync::OnceLock<u64>,
}

impl FatFs {
    /// Opens the volume; its boot sector must describe a FAT layout that fits it.
    pub fn open(dev: Arc<dyn ReadAt>, opts: &TreeOptions) -> io::Result<FatFs> {
        let mut b = [0u8; 512];
        dev.read_exact_at(0, &mut b)?;
        let layout = Layout::parse(&b, dev.size())
            .map_err(|e| corrupt(format!("{}: not a FAT volume: {e}", opts.label)))?;
        tracing::debug!("{}: {:?}", opts.label, layout);
        let budget = || opts.budget.clone();
        let copies = std::iter::once(layout.fat)
            .chain(layout.copies.iter().copied().filter(|&c| c != layout.fat))
            .map(|at| Arc::new(Slice::new(dev.clone(), at, layout.fat_bytes)) as Arc<dyn ReadAt>)
            .collect();
        let fat_copies = Mirrored::over(format!("{}: FAT", opts.label), copies);
        Ok(FatFs {
            dev,
            fat_copies,
            layout,
            label: opts.label.clone(),
            uid: opts.uid,
            gid: opts.gid,
            fat: WeightedLru::with_budget(FAT_CACHE, budget()),
            dirs: WeightedLru::with_budget(DIR_CACHE, budget()),
            runs: WeightedLru::with_budget(RUN_CACHE, budget()),
            free: std::sync::OnceLock::new(),
        })
    }

    /// One byte of the FAT in use.
    fn fat_byte(&self, off: u64) -> io::Result<u8> {
        if off >= self.layout.fat_bytes {
            return Err(corrupt(format!("{}: FAT entry past the FAT", self.label)));
        }
        let chunk = off / FAT_CHUNK;
        let data = match self.fat.get(&chunk) {
            Some(d) => d,
            None => {
                let start = chunk * FAT_CHUNK;
                let len = FAT_CHUNK.min(self.layout.fat_bytes - start) as usize;
                let mut d = vec![0u8; len];
                self.fat_copies.read_exact_at(start, &mut d)?;
                let d = Arc::new(d);
                self.fat.put(chunk, d.clone());
                d
            }
        };
        Ok(data[(off % FAT_CHUNK) as usize])
    }

    /// The FAT's entry for cluster `c`: `Some(next)` for a next cluster in range,
    /// `None` at the end of a chain; anything else (free, bad, out of range) is damage.
    fn next(&self, c: u32) -> io::Result<Option<u32>> {
        let kind = self.layout.kind;
        let v = kind.entry(c, |o| self.fat_byte(o))?;
        if v >= kind.end_of_chain() {
            Ok(None)
        } else if v >= 2 && v < self.layout.clusters + 2 {
            Ok(Some(v))
        } else {
            Err(corrupt(format!(
                "{}: cluster chain broken at cluster {c} (FAT entry {v:#x})",
                self.label
            )))
        }
    }

    /// The runs of the chain from `first`, at most `max` clusters of it (a chain
    /// longer than the volume's clusters is a loop).
    fn chain(&self, first: u32, max: u64) -> io::Result<Runs> {
        if let Some(r) = self.runs.get(&first) {
            return Ok(r);
        }
        let l = &self.layout;
        if first < 2 || first >= l.clusters + 2 {
            return Err(corrupt(format!(
                "{}: first cluster {first} out of range",
                self.label
            )));
        }
        let limit = max.min(l.clusters as u64);
        let mut runs: Vec<(u64, u64, u64)> = Vec::new();
        let mut c = Some(first);
        let mut taken = 0u64;
        while let Some(cl) = c {
            if taken == limit {
                if taken == l.clusters as u64 {
                    return Err(corrupt(format!(
                        "{}: cluster chain from {first} loops",
                        self.label
                    )));
                }
                break;
            }
            let off = l.data + (cl as u64 - 2) * l.cluster;
            match runs.last_mut() {
                Some((_, len, o)) if *o + *len == off => *len += l.cluster,
                _ => runs.push((taken * l.cluster, l.cluster, off)),
            }
            taken += 1;
            c = self.next(cl)?;
        }
        let runs = Arc::new(runs);
        self.runs.put(first, runs.clone());
        Ok(runs)
    }

    /// Where a directory's entries lie on the volume, as (offset, length): the fixed
    /// root region of FAT12/16, else the chain from the root cluster or `first`.
    fn dir_spans(&self, ino: u64, first: u32) -> io::Result<Vec<(u64, u64)>> {
        let l = &self.layout;
        if ino == ROOT && l.kind != FatKind::Fat32 {
            return Ok(vec![l.root_dir]);
        }
        let first = if ino == ROOT { l.root_cluster } else { first };
        let max = (MAX_DIR_ENTRIES * 32).div_ceil(l.cluster);
        Ok(self
            .chain(first, max)?
            .iter()
            .map(|&(_, n, p)| (p, n))
            .collect())
    }

    /// The raw 32-byte entries of a directory (`ROOT` or a directory's first cluster).
    fn dir_bytes(&self, ino: u64, first: u32) -> io::Result<Vec<(u64, [u8; 32])>> {
        let mut out = Vec::new();
        'spans: for (off, len) in self.dir_spans(ino, first)? {
            let mut buf = vec![0u8; len as usize];
            self.dev.read_exact_at(off, &mut buf)?;
            for (i, e) in buf.chunks_exact(32).enumerate() {
                if e[0] == 0 || out.len() as u64 == MAX_DIR_ENTRIES {
                    break 'spans;
                }
                out.push((off + i as u64 * 32, e.try_into().unwrap()));
            }
        }
        Ok(out)
    }

    fn listing(&self, ino: u64) -> io::Result<Arc<Listing>> {
        if let Some(l) = self.dirs.get(&ino) {
            return Ok(l);
        }
        let first = if ino == ROOT {
            0
        } else {
            let e = self.entry(ino)?;
            if !e.is_dir() {
                return Err(io::Error::from_raw_os_error(libc::ENOTDIR));
            }
            e.first
        };
        let mut entries = Vec::new();
        let mut lfn = LongName::default();
        for (pos, e) in self.dir_bytes(ino, first)? {
            if e[0] == 0xE5 {
                lfn = LongName::default();
                continue;
            }
            if e[11] & 0x3F == ATTR_LFN {
                lfn.take(&e);
                continue;
            }
            let long = lfn.finish(&e);
            if e[11] & ATTR_VOLUME != 0 {
                continue;
            }
            let name = long.unwrap_or_else(|| short_name(&e));
            // `.` and `..` (and a damaged entry's empty name) are no names to list.
            if name.is_empty() || name == b"." || name == b".." {
                continue;
            }
            let ent = Entry::parse(&e, self.layout.kind);
            entries.push(DirEntry {
                name,
                ino: pos / 32,
                kind: if ent.is_dir() {
                    NodeKind::Dir
                } else {
                    NodeKind::File
                },
            });
        }
        let mut exact = HashMap::new();
        let mut folded = HashMap::new();
        for e in &entries {
            exact.entry(e.name.clone()).or_insert(e.ino);
            folded.entry(e.name.to_ascii_lowercase()).or_insert(e.ino);
        }
        let l = Arc::new(Listing {
            entries: Arc::new(entries),
            exact,
            folded,
        });
        self.dirs.put(ino, l.clone());
        Ok(l)
    }

    /// The 8.3 entry of inode `ino` (its position on the volume / 32).
    fn entry(&self, ino: u64) -> io::Result<Entry> {
        let mut e = [0u8; 32];
        let pos = ino
            .checked_mul(32)
            .filter(|&p| p >= self.layout.fat && p + 32 <= self.dev.size())
            .ok_or_else(|| corrupt(format!("{}: no entry at inode {ino}", self.label)))?;
        self.dev.read_exact_at(pos, &mut e)?;
        if e[0] == 0 || e[0] == 0xE5 || e[11] & 0x3F == ATTR_LFN {
            return Err(corrupt(format!(
                "{}: inode {ino} is no longer a file's entry",
                self.label
            )));
        }
        Ok(Entry::parse(&e, self.layout.kind))
    }

    /// Free clusters, for `df`: FAT32's FSInfo count where it is plausible (as Linux
    /// takes it), else counted in a FAT of up to 16 MiB; 0 where neither is possible.
    fn free_clusters(&self) -> u64 {
        *self.free.get_or_init(|| {
            let l = &self.layout;
            if let Some(at) = l.fsinfo {
                let mut b = [0u8; 512];
                if self.dev.read_exact_at(at, &mut b).is_ok()
                    && le32(&b, 0) == 0x4161_5252
                    && le32(&b, 484) == 0x6141_7272
                    && (le32(&b, 488) as u64) <= l.clusters as u64
                {
                    return le32(&b, 488) as u64;
                }
            }
            if l.fat_bytes > 16 << 20 {
                return 0;
            }
            let mut fat = vec![0u8; l.fat_bytes as usize];
            if self.dev.read_exact_at(l.fat, &mut fat).is_err() {
                return 0;
            }
            let byte = |o: u64| {
                fat.get(o as usize)
                    .copied()
                    .ok_or_else(|| corrupt("FAT entry past the FAT"))
            };
            (2..l.clusters + 2)
                .filter(|&c| l.kind.entry(c, byte).is_ok_and(|v| v == 0))
                .count() as u64
        })
    }

    fn dir_size(&self, ino: u64, first: u32) -> io::Result<u64> {
        Ok(self.dir_spans(ino, first)?.iter().map(|s| s.1).sum())
    }

    /// The volume ranges holding bytes `offset..end` of file `e`, from its chain.
    fn file_spans(&self, e: &Entry, offset: u64, end: u64) -> io::Result<Vec<(u64, u64)>> {
        let runs = self.chain(e.first, (e.size as u64).div_ceil(self.layout.cluster))?;
        Ok(run_spans(
            &runs,
            |&(l, n, p)| (l, n, Some(p)),
            offset,
            end,
            1,
        ))
    }
}

/// `df` for FAT and exFAT: clusters in all and free, in cluster units; no inodes.
fn cluster_statfs(cluster: u64, clusters: u64, free: u64) -> StatFs {
    StatFs {
        bsize: cluster.min(u32::MAX as u64) as u32,
        blocks: clusters,
        bfree: free,
        bavail: free,
        files: 0,
        ffree: 0,
        namelen: 255,
    }
}

impl FsTree for FatFs {
    fn root(&self) -> u64 {
        ROOT
    }

    fn stat(&self, ino: u64) -> io::Result<Stat> {
        let base = |kind, size: u64, alloc: u64| Stat {
            ino,
            kind,
            perm: if kind == NodeKind::Dir { 0o555 } else { 0o444 },
            nlink: 1,
            uid: self.uid,
            gid: self.gid,
            size,
            blocks: alloc / 512,
            atime: Timespec::default(),
            mtime: Timespec::default(),
            ctime: Timespec::default(),
            crtime: Timespec::default(),
            rdev: 0,
        };
        if ino == ROOT {
            let size = self.dir_size(ROOT, 0)?;
            return Ok(base(NodeKind::Dir, size, size));
        }
        let e = self.entry(ino)?;
        let mut st = if e.is_dir() {
            let size = if e.first == 0 {
                0
            } else {
                self.dir_size(ino, e.first)?
            };
            base(NodeKind::Dir, size, size)
        } else {
            let c = self.layout.cluster;
            base(
                NodeKind::File,
                e.size as u64,
                (e.size as u64).div_ceil(c) * c,
            )
        };
        st.mtime = e.mtime;
        st.ctime = e.mtime;
        st.atime = e.atime;
        st.crtime = e.crtime;
        Ok(st)
    }

    fn read_dir(&self, ino: u64) -> io::Result<Arc<Vec<DirEntry>>> {
        Ok(self.listing(ino)?.entries.clone())
    }

    fn lookup(&self, dir: u64, name: &[u8]) -> io::Result<Option<u64>> {
        let l = self.listing(dir)?;
        Ok(l.exact
            .get(name)
            .or_else(|| l.folded.get(&name.to_ascii_lowercase()))
            .copied())
    }

    fn read(&self, ino: u64, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let e = self.entry(ino)?;
        if e.is_dir() {
            return Err(io::Error::from_raw_os_error(libc::EISDIR));
        }
        let size = e.size as u64;
        if offset >= size || buf.is_empty() {
            return Ok(0);
        }
        let want = buf.len().min((size - offset) as usize);
        let mut done = 0usize;
        for (at, n) in self.file_spans(&e, offset, offset + want as u64)? {
            let n = n as usize;
            self.dev.read_exact_at(at, &mut buf[done..done + n])?;
            done += n;
        }
        if done < want {
            return Err(corrupt(format!(
                "{}: cluster chain of inode {ino} ends before its size",
                self.label
            )));
        }
        Ok(done)
    }

    fn prefetch(&self, ino: u64, offset: u64, len: u64) {
        let Ok(e) = self.entry(ino) else { return };
        if let Ok(spans) = self.file_spans(&e, offset, offset.saturating_add(len)) {
            self.dev.prefetch(&spans);
        }
    }

    fn read_link(&self, _ino: u64) -> io::Result<Vec<u8>> {
        Err(io::Error::from_raw_os_error(libc::EINVAL))
    }

    fn xattrs(&self, _ino: u64) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
        Ok(Vec::new())
    }

    fn statfs(&self) -> StatFs {
        cluster_statfs(
            self.layout.cluster,
            self.layout.clusters as u64,
            self.free_clusters(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_convert_as_linux_reads_them() {
        // 2024-02-29 13:45:58 and 1980-01-01 (date 0 reads as 1980-01-01).
        let d = ((2024 - 1980) << 9 | 2 << 5 | 29) as u16;
        let t = (13 << 11 | 45 << 5 | 29) as u16;
        assert_eq!(fat_time(d, t, 0).secs, 1_709_214_358);
        assert_eq!(fat_time(0, 0, 0).secs, 315_532_800);
        let c = fat_time(d, t, 150);
        assert_eq!((c.secs, c.nsecs), (1_709_214_359, 500_000_000));
    }

    #[test]
    fn short_names_and_checksums() {
        let mut e = [0u8; 32];
        e[..11].copy_from_slice(b"README  TXT");
        assert_eq!(short_name(&e), b"README.TXT");
        e[12] = 0x08 | 0x10;
        assert_eq!(short_name(&e), b"readme.txt");
        e[..11].copy_from_slice(b"\x05BC        ");
        e[12] = 0;
        assert_eq!(
            short_name(&e),
            "\u{3c3}BC".as_bytes(),
            "0x05 stands for 0xE5 (σ)"
        );
        // Lower-case flags lower what code page 437 can: Ü (0x9A) but not Γ (0xE2).
        e[..11].copy_from_slice(b"\x9a\xe2X     TXT");
        e[12] = 0x08 | 0x10;
        assert_eq!(short_name(&e), "üΓx.txt".as_bytes());
        // Checksum as the specification defines it, byte by byte.
        let mut s = 0u8;
        for &c in b"README  TXT" {
            s = ((s & 1) << 7).wrapping_add(s >> 1).wrapping_add(c);
        }
        assert_eq!(short_checksum(b"README  TXT"), s);
    }

    #[test]
    fn garbage_and_other_boot_sectors_are_not_fat() {
        let mut b = [0u8; 512];
        assert!(Layout::parse(&b, 1 << 20).is_err());
        b[0] = 0xEB;
        b[2] = 0x90;
        b[3..11].copy_from_slice(b"NTFS    ");
        b[11..13].copy_from_slice(&512u16.to_le_bytes());
        b[13] = 8;
        b[21] = 0xF8;
        assert!(
            Layout::parse(&b, 1 << 20).is_err(),
            "NTFS: no reserved sectors or FATs"
        );
    }
}
