//! ext inodes, and the map from a file's logical blocks to volume blocks (extent trees
//! of any depth, or ext2/3 direct/indirect/double/triple blocks).

use std::io;

use super::sb::{ext4_crc, u16le, u32le, Superblock};
use crate::ntfs_ext::corrupt;
use crate::ntfs_ext::tree::{NodeKind, Timespec};
use crate::readat::ReadAt;

pub const FL_ENCRYPT: u32 = 0x800;
pub const FL_COMPR: u32 = 0x4;
pub const FL_HUGE_FILE: u32 = 0x40000;
pub const FL_EXTENTS: u32 = 0x80000;
pub const FL_INLINE_DATA: u32 = 0x10000000;
/// New files inherit the directory's project (shown on directories only).
pub const FL_PROJINHERIT: u32 = 0x20000000;
/// Flags Linux's ext4 shows to `FS_IOC_GETFLAGS` (EXT4_FL_USER_VISIBLE): the
/// user-settable ones and DIRTY, COMPRBLK, NOCOMPR, ENCRYPT, INDEX, VERITY,
/// INLINE_DATA; never HUGE_FILE, EA_INODE or IMAGIC.
pub const FL_USER_VISIBLE: u32 = 0x725B_DFFF;

/// A parsed inode: the raw bytes plus the decoded fields.
#[derive(Debug, Clone)]
pub struct Inode {
    pub ino: u64,
    pub raw: Vec<u8>,
    pub mode: u16,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub links: u16,
    pub blocks: u64,
    pub flags: u32,
    pub atime: Timespec,
    pub mtime: Timespec,
    pub ctime: Timespec,
    pub crtime: Timespec,
    pub file_acl: u64,
    pub extra_isize: u16,
}

fn ts(secs: u32, extra: Option<u32>) -> Timespec {
    let mut s = secs as i32 as i64;
    let mut ns = 0;
    if let Some(x) = extra {
        s += ((x & 3) as i64) << 32;
        ns = (x >> 2).min(999_999_999);
    }
    Timespec { secs: s, nsecs: ns }
}

impl Inode {
    /// Decodes an inode; checks its checksum when metadata_csum is on (a mismatch is
    /// logged and reading goes on).
    pub fn parse(sb: &Superblock, ino: u64, raw: Vec<u8>, label: &str) -> io::Result<Inode> {
        if raw.len() < 128 {
            return Err(corrupt(format!("inode {ino}: short record")));
        }
        let extra_isize = if raw.len() > 128 {
            u16le(&raw, 0x80)
        } else {
            0
        };
        if 128 + extra_isize as usize > raw.len() || extra_isize % 4 != 0 {
            return Err(corrupt(format!(
                "inode {ino}: extra size {extra_isize} overruns the record"
            )));
        }
        let has = |field_end: usize| 128 + extra_isize as usize >= field_end;
        if sb.has_csum() {
            let has_hi = has(0x84);
            let want_lo = u16le(&raw, 0x7C) as u32;
            let want = if has_hi {
                want_lo | (u16le(&raw, 0x82) as u32) << 16
            } else {
                want_lo
            };
            if checksum(sb, ino, &raw) != want {
                tracing::warn!("{label}: inode {ino} checksum mismatch; reading on");
            }
        }
        let flags = u32le(&raw, 0x20);
        let huge = sb.ro_compat & super::sb::feat::RO_COMPAT_HUGE_FILE != 0;
        let mut blocks = u32le(&raw, 0x1C) as u64;
        if huge {
            blocks |= (u16le(&raw, 0x74) as u64) << 32;
        }
        // i_blocks counts 512-byte sectors unless HUGE_FILE_FL says file-system blocks.
        if huge && flags & FL_HUGE_FILE != 0 {
            blocks = blocks.saturating_mul(sb.block_size as u64 / 512);
        }
        let x = |o: usize| {
            if has(o + 4) {
                Some(u32le(&raw, o))
            } else {
                None
            }
        };
        Ok(Inode {
            ino,
            mode: u16le(&raw, 0),
            uid: u16le(&raw, 2) as u32 | (u16le(&raw, 0x78) as u32) << 16,
            gid: u16le(&raw, 0x18) as u32 | (u16le(&raw, 0x7A) as u32) << 16,
            size: u32le(&raw, 4) as u64 | (u32le(&raw, 0x6C) as u64) << 32,
            links: u16le(&raw, 0x1A),
            blocks,
            flags,
            atime: ts(u32le(&raw, 0x8), x(0x8C)),
            ctime: ts(u32le(&raw, 0xC), x(0x84)),
            mtime: ts(u32le(&raw, 0x10), x(0x88)),
            crtime: match x(0x90) {
                Some(c) => ts(c, x(0x94)),
                None => Timespec::default(),
            },
            file_acl: u32le(&raw, 0x68) as u64 | (u16le(&raw, 0x76) as u64) << 32,
            extra_isize,
            raw,
        })
    }

    /// File type from the mode.
    pub fn kind(&self) -> Option<NodeKind> {
        NodeKind::from_mode(self.mode)
    }

    /// The 60 bytes of `i_block`.
    pub fn i_block(&self) -> &[u8] {
        &self.raw[0x28..0x28 + 60]
    }

    /// Device number of a device node in the kernel's "new" encoding, which is what
    /// FUSE passes on: the old 16-bit form (i_block[0]) is the same number.
    pub fn rdev(&self) -> u32 {
        let b = self.i_block();
        let old = u32le(b, 0);
        if old != 0 {
            old & 0xFFFF
        } else {
            u32le(b, 4)
        }
    }

    /// In-inode extended attribute area (after `i_extra_isize`).
    pub fn xattr_area(&self) -> &[u8] {
        let start = 128 + self.extra_isize as usize;
        if self.raw.len() > start {
            &self.raw[start..]
        } else {
            &[]
        }
    }
}

/// The metadata_csum checksum of inode record `raw` (its stored checksum fields taken
/// as zero), cut to 16 bits where the record has no room for the high half.
pub fn checksum(sb: &Superblock, ino: u64, raw: &[u8]) -> u32 {
    let mut r = raw.to_vec();
    r[0x7C..0x7E].fill(0);
    let has_hi = has_checksum_hi(raw);
    if has_hi {
        r[0x82..0x84].fill(0);
    }
    let mut c = ext4_crc(sb.csum_seed, &(ino as u32).to_le_bytes());
    c = ext4_crc(c, &r[0x64..0x68]);
    c = ext4_crc(c, &r);
    if has_hi {
        c
    } else {
        c & 0xFFFF
    }
}

/// Whether inode record `raw` has room (its extra size) for the checksum's high half.
fn has_checksum_hi(raw: &[u8]) -> bool {
    raw.len() >= 0x84 && 128 + u16le(raw, 0x80) as usize >= 0x84
}

/// Stores `raw`'s checksum in it, as the kernel does after changing an inode, so that
/// a record replay assembled reads without a mismatch warning.
pub fn set_checksum(sb: &Superblock, ino: u64, raw: &mut [u8]) {
    if !sb.has_csum() || raw.len() < 128 {
        return;
    }
    let c = checksum(sb, ino, raw);
    raw[0x7C..0x7E].copy_from_slice(&(c as u16).to_le_bytes());
    if has_checksum_hi(raw) {
        raw[0x82..0x84].copy_from_slice(&((c >> 16) as u16).to_le_bytes());
    }
}

/// A run of a file's blocks: logical start, length, physical start (0 = hole), and
/// whether it is unwritten (reads as zeros).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    pub logical: u64,
    pub len: u64,
    pub physical: u64,
    pub unwritten: bool,
}

/// Maximum extent tree depth accepted (the kernel allows 5).
const MAX_DEPTH: u16 = 5;

fn read_block(dev: &dyn ReadAt, sb: &Superblock, blk: u64) -> io::Result<Vec<u8>> {
    if blk == 0 || blk >= sb.blocks_count {
        return Err(corrupt(format!("block {blk} is outside the volume")));
    }
    let mut b = vec![0u8; sb.block_size as usize];
    dev.read_exact_at(blk * sb.block_size as u64, &mut b)?;
    Ok(b)
}

/// Extent tree nodes one walk visits at most: a loop in the tree stops there.
pub const WALK_BUDGET: u32 = 1_000_000;

/// Every extent of a file, in logical order, from an extent tree of any depth.
pub fn extent_runs(
    dev: &dyn ReadAt,
    sb: &Superblock,
    ino: &Inode,
    label: &str,
) -> io::Result<Vec<Run>> {
    let mut budget = WALK_BUDGET;
    extent_runs_within(dev, sb, ino, label, &mut budget)
}

/// [`extent_runs`] drawing on a budget of nodes shared with other walks, for work
/// that walks many trees at once (fast-commit replay).
pub fn extent_runs_within(
    dev: &dyn ReadAt,
    sb: &Superblock,
    ino: &Inode,
    label: &str,
    budget: &mut u32,
) -> io::Result<Vec<Run>> {
    let mut out = Vec::new();
    walk_extents(
        dev,
        sb,
        ino,
        ino.i_block(),
        MAX_DEPTH + 1,
        &mut out,
        budget,
        label,
    )?;
    out.sort_by_key(|r| r.logical);
    for w in out.windows(2) {
        if w[0].logical + w[0].len > w[1].logical {
            return Err(corrupt(format!("inode {}: overlapping extents", ino.ino)));
        }
    }
    Ok(out)
}

#[allow(clippy::too_many_arguments)]
fn walk_extents(
    dev: &dyn ReadAt,
    sb: &Superblock,
    ino: &Inode,
    node: &[u8],
    max_depth: u16,
    out: &mut Vec<Run>,
    budget: &mut u32,
    label: &str,
) -> io::Result<()> {
    if *budget == 0 {
        return Err(corrupt(format!(
            "inode {}: extent tree too large or looping",
            ino.ino
        )));
    }
    *budget -= 1;
    if node.len() < 12 || u16le(node, 0) != 0xF30A {
        return Err(corrupt(format!("inode {}: bad extent header", ino.ino)));
    }
    let entries = u16le(node, 2) as usize;
    let depth = u16le(node, 6);
    if depth >= max_depth || 12 + entries * 12 > node.len() {
        return Err(corrupt(format!(
            "inode {}: extent node depth {depth} or count {entries} invalid",
            ino.ino
        )));
    }
    for i in 0..entries {
        let e = &node[12 + i * 12..24 + i * 12];
        if depth == 0 {
            let mut len = u16le(e, 4) as u64;
            let unwritten = len > 32768;
            if unwritten {
                len -= 32768;
            }
            let phys = (u16le(e, 6) as u64) << 32 | u32le(e, 8) as u64;
            if len == 0 {
                continue;
            }
            if phys == 0
                || phys
                    .checked_add(len)
                    .is_none_or(|end| end > sb.blocks_count)
            {
                return Err(corrupt(format!(
                    "inode {}: extent points outside the volume",
                    ino.ino
                )));
            }
            out.push(Run {
                logical: u32le(e, 0) as u64,
                len,
                physical: phys,
                unwritten,
            });
        } else {
            let child = (u16le(e, 8) as u64) << 32 | u32le(e, 4) as u64;
            let b = read_block(dev, sb, child)?;
            if sb.has_csum() {
                let n = u16le(&b, 4) as usize; // eh_max
                let tail = 12 + n * 12;
                if tail + 4 <= b.len() {
                    let mut c = ext4_crc(sb.csum_seed, &(ino.ino as u32).to_le_bytes());
                    c = ext4_crc(c, &ino.raw[0x64..0x68]);
                    c = ext4_crc(c, &b[..tail]);
                    if c != u32le(&b, tail) {
                        tracing::warn!(
                            "{label}: extent block {child} of inode {} checksum mismatch",
                            ino.ino
                        );
                    }
                }
            }
            walk_extents(dev, sb, ino, &b, depth, out, budget, label)?;
        }
    }
    Ok(())
}

/// Runs of logical blocks `first..end` of a block-mapped (ext2/3) file, holes left
/// out: each pointer block on the way is read once for the whole range, where a lookup
/// per block would read it again for every block it maps.
pub fn indirect_runs(
    dev: &dyn ReadAt,
    sb: &Superblock,
    ino: &Inode,
    first: u64,
    end: u64,
) -> io::Result<Vec<Run>> {
    let per = (sb.block_size / 4) as u64;
    let limit = 12 + per + per * per + per * per * per;
    if end > limit {
        return Err(corrupt(format!(
            "inode {}: block {} beyond triple indirect",
            ino.ino,
            end - 1
        )));
    }
    let map = IndirectMap {
        dev,
        sb,
        ino,
        per,
        first,
        end,
    };
    let ib = ino.i_block();
    let mut out = Vec::new();
    for l in first..end.min(12) {
        map.walk(u32le(ib, l as usize * 4) as u64, 0, l, &mut out)?;
    }
    let mut base = 12u64;
    for (slot, depth) in [(12usize, 1u32), (13, 2), (14, 3)] {
        let span = per.pow(depth);
        if base >= end {
            break;
        }
        if base + span > first {
            map.walk(u32le(ib, slot * 4) as u64, depth, base, &mut out)?;
        }
        base += span;
    }
    Ok(out)
}

/// One range's walk down an inode's pointer tree.
struct IndirectMap<'a> {
    dev: &'a dyn ReadAt,
    sb: &'a Superblock,
    ino: &'a Inode,
    per: u64,
    first: u64,
    end: u64,
}

impl IndirectMap<'_> {
    /// Maps pointer `p`, which covers `per^depth` blocks from logical block `base`
    /// (overlapping the range); depth 0 points at data, and 0 is a hole.
    fn walk(&self, p: u64, depth: u32, base: u64, out: &mut Vec<Run>) -> io::Result<()> {
        if p == 0 {
            return Ok(());
        }
        if depth == 0 {
            if p >= self.sb.blocks_count {
                return Err(corrupt(format!(
                    "inode {}: block pointer {p} outside the volume",
                    self.ino.ino
                )));
            }
            match out.last_mut() {
                Some(r) if r.logical + r.len == base && r.physical + r.len == p => r.len += 1,
                _ => out.push(Run {
                    logical: base,
                    len: 1,
                    physical: p,
                    unwritten: false,
                }),
            }
            return Ok(());
        }
        let b = read_block(self.dev, self.sb, p)?;
        let span = self.per.pow(depth - 1);
        let lo = self.first.saturating_sub(base) / span;
        let hi = (self.end - base).div_ceil(span).min(self.per);
        for i in lo..hi {
            let child = u32le(&b, i as usize * 4) as u64;
            self.walk(child, depth - 1, base + i * span, out)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::readat::MemReader;

    const BS: usize = 1024;

    /// A 1000-block volume of 1 KiB blocks (256 pointers a block) with pointer blocks
    /// written at `ptrs` (block, index, value), and an inode whose 15 i_block
    /// pointers are `ib`.
    fn setup(ib: [u32; 15], ptrs: &[(usize, usize, u32)]) -> (MemReader, Superblock, Inode) {
        let mut vol = vec![0u8; 1000 * BS];
        for &(b, i, v) in ptrs {
            vol[b * BS + i * 4..b * BS + i * 4 + 4].copy_from_slice(&v.to_le_bytes());
        }
        let sb = Superblock {
            blocks_count: 1000,
            block_size: BS as u32,
            ..Default::default()
        };
        let mut raw = vec![0u8; 128];
        raw[0..2].copy_from_slice(&0o100644u16.to_le_bytes());
        for (i, p) in ib.iter().enumerate() {
            raw[0x28 + i * 4..0x2C + i * 4].copy_from_slice(&p.to_le_bytes());
        }
        let ino = Inode::parse(&sb, 12, raw, "test").unwrap();
        (MemReader(vol), sb, ino)
    }

    fn run(logical: u64, len: u64, physical: u64) -> Run {
        Run {
            logical,
            len,
            physical,
            unwritten: false,
        }
    }

    fn ib() -> [u32; 15] {
        let mut ib = [0u32; 15];
        for (i, p) in ib.iter_mut().take(12).enumerate() {
            *p = 100 + i as u32;
        }
        ib[12] = 50; // single indirect
        ib[14] = 60; // triple indirect (double left a hole)
        ib
    }

    /// Single indirect: 112, 113, hole, 500. Triple: 60 -> 61 -> 62 -> [5] = 700.
    const PTRS: [(usize, usize, u32); 7] = [
        (50, 0, 112),
        (50, 1, 113),
        (50, 3, 500),
        (60, 0, 61),
        (61, 0, 62),
        (62, 5, 700),
        (62, 6, 701),
    ];
    const TRIPLE: u64 = 12 + 256 + 256 * 256;

    #[test]
    fn contiguous_pointers_join_and_holes_are_left_out() {
        let (dev, sb, ino) = setup(ib(), &PTRS);
        let runs = indirect_runs(&dev, &sb, &ino, 0, 16).unwrap();
        assert_eq!(runs, [run(0, 14, 100), run(15, 1, 500)]);
        // A range inside the single-indirect block starts mid-run.
        let runs = indirect_runs(&dev, &sb, &ino, 13, 15).unwrap();
        assert_eq!(runs, [run(13, 1, 113)]);
    }

    #[test]
    fn every_level_is_walked_and_holes_skip_whole_subtrees() {
        let (dev, sb, ino) = setup(ib(), &PTRS);
        let limit = TRIPLE + 256 * 256 * 256;
        let runs = indirect_runs(&dev, &sb, &ino, 0, limit).unwrap();
        assert_eq!(
            runs,
            [run(0, 14, 100), run(15, 1, 500), run(TRIPLE + 5, 2, 700)]
        );
        let runs = indirect_runs(&dev, &sb, &ino, TRIPLE + 6, TRIPLE + 7).unwrap();
        assert_eq!(runs, [run(TRIPLE + 6, 1, 701)]);
    }

    #[test]
    fn hostile_pointers_and_ranges_are_errors() {
        // A data pointer past the volume's end.
        let mut ptrs = PTRS.to_vec();
        ptrs.push((50, 4, 5000));
        let (dev, sb, ino) = setup(ib(), &ptrs);
        assert!(indirect_runs(&dev, &sb, &ino, 0, 16).is_ok());
        let e = indirect_runs(&dev, &sb, &ino, 0, 17).unwrap_err();
        assert!(e.to_string().contains("outside the volume"), "{e}");
        // A pointer block past the volume's end.
        let mut bad = ib();
        bad[12] = 4000;
        let (dev, sb, ino) = setup(bad, &PTRS);
        assert!(indirect_runs(&dev, &sb, &ino, 0, 12).is_ok());
        assert!(indirect_runs(&dev, &sb, &ino, 0, 13).is_err());
        // Beyond what triple indirection addresses.
        let limit = TRIPLE + 256 * 256 * 256;
        let e = indirect_runs(&dev, &sb, &ino, limit - 1, limit + 1).unwrap_err();
        assert!(e.to_string().contains("beyond triple indirect"), "{e}");
    }
}
