//! Which blocks of an ext volume its allocation bitmaps mark free, read after the
//! journal replay: a backup that skips them stores only what files and metadata use.
//!
//! Conservative by design, since a block wrongly taken as free is data lost from the
//! point: a group whose bitmap was never initialised (BLOCK_UNINIT; most groups of a
//! new volume) is computed as the kernel computes it and used only when that gives
//! the free count its descriptor holds; a group counts as wholly used when its
//! descriptor or bitmap fails its checksum, or when the descriptor points outside the
//! volume; the whole volume is refused (an error) when
//! it has incompatible features this parser does not know, an external journal to
//! replay, or journal blocks that fail their checksums.

use std::io;
use std::sync::Arc;

use super::sb::{self, feat, u16le, Superblock, SB_OFFSET};
use crate::ntfs_ext::{corrupt, subtract};
use crate::readat::ReadAt;

/// Group descriptor flag: the block bitmap was never written.
const BLOCK_UNINIT: u16 = 0x2;
/// Groups looked at, at most (2^20 groups: 128 TiB of 4 KiB blocks); past it the rest
/// of the volume counts as used.
const MAX_GROUPS: u64 = 1 << 20;

/// Byte ranges (offset, length; sorted, merged) of the volume that no file or metadata
/// uses, as the block bitmaps say once the journal is replayed in memory.
pub fn free_ranges(dev: Arc<dyn ReadAt>, label: &str) -> io::Result<Vec<(u64, u64)>> {
    let mut raw = [0u8; 1024];
    dev.read_exact_at(SB_OFFSET, &mut raw)?;
    let sb = Superblock::parse(&raw, label)?;
    let unknown = sb.incompat & !feat::INCOMPAT_KNOWN;
    if unknown != 0 {
        return Err(corrupt(format!(
            "unknown incompatible features {unknown:#x}"
        )));
    }
    let recover = sb.incompat & feat::INCOMPAT_RECOVER != 0;
    if recover && (sb.incompat & feat::INCOMPAT_JOURNAL_DEV != 0 || sb.journal_inum == 0) {
        return Err(corrupt("its external journal needs recovery"));
    }
    let (dev, in_use) = match super::replayed_volume(dev.clone(), label)? {
        Some(r) if r.bad_blocks > 0 => {
            return Err(corrupt(format!(
                "{} logged journal block(s) fail their checksums",
                r.bad_blocks
            )))
        }
        Some(r) => (r.volume, r.fast_commit_blocks),
        None => (dev, Vec::new()),
    };
    dev.read_exact_at(SB_OFFSET, &mut raw)?;
    let sb = Superblock::parse(&raw, label)?;
    let bs = sb.block_size as u64;
    let used: Vec<(u64, u64)> = in_use
        .iter()
        .map(|&(b, n)| (b.saturating_mul(bs), n.saturating_mul(bs)))
        .collect();
    Ok(subtract(bitmap_free(&*dev, &sb)?, used))
}

/// What the first pass over the descriptors learns of one group.
enum Group {
    /// Counts as wholly used.
    Used,
    /// Its bitmap's block, and the bitmap checksum its descriptor holds (low, high).
    Bitmap(u64, u16, u16),
    /// Never initialised (BLOCK_UNINIT): free are its blocks past its superblock copy
    /// and descriptor tables that no group's bitmaps or inode table occupy, which must
    /// come to the free count its descriptor holds.
    Uninit(u32),
}

/// Walks the groups' block bitmaps of `sb`'s volume on `dev`; a group whose bitmap was
/// never initialised is computed as the kernel computes it (ext4_init_block_bitmap).
fn bitmap_free(dev: &dyn ReadAt, sb: &Superblock) -> io::Result<Vec<(u64, u64)>> {
    let bs = sb.block_size as u64;
    let cluster = 1u64 << sb.cluster_shift;
    let per_group = sb.blocks_per_group as u64;
    let clusters = (per_group >> sb.cluster_shift).max(1);
    let bitmap_len = (clusters / 8) as usize;
    if bitmap_len == 0 || bitmap_len > sb.block_size as usize {
        return Err(corrupt(format!(
            "{clusters} clusters per group do not fit one bitmap block"
        )));
    }
    let end = sb.blocks_count.min(dev.size() / bs);
    // Groups past the device's end hold nothing to skip (and a hostile superblock may
    // claim millions).
    let groups = sb.groups().min(MAX_GROUPS).min(
        end.saturating_sub(sb.first_data_block as u64)
            .div_ceil(per_group),
    );
    let Groups {
        kinds,
        meta,
        trust_uninit,
    } = read_groups(dev, sb, groups)?;
    // Inode tables are the longest ranges: no range reaches further back than one.
    let longest = meta.iter().map(|m| m.1).max().unwrap_or(0);
    let mut out: Vec<(u64, u64)> = Vec::new();
    let push = |out: &mut Vec<(u64, u64)>, start: u64, stop: u64| {
        crate::readat::push_range(out, start * bs, (stop - start) * bs)
    };
    let mut bitmap = vec![0u8; sb.block_size as usize];
    for (g, kind) in kinds.into_iter().enumerate() {
        let g = g as u64;
        let first = sb.first_data_block as u64 + g * per_group;
        match kind {
            Group::Used => {}
            Group::Uninit(claimed) => {
                if !trust_uninit {
                    continue;
                }
                let stop = (first + per_group).min(sb.blocks_count);
                let base = first + sb.base_metadata_blocks(g);
                let free = subtract(
                    vec![(base, stop.saturating_sub(base))],
                    meta_in(&meta, longest, base, stop),
                );
                let count: u64 = free.iter().map(|r| r.1).sum();
                if count != claimed as u64 {
                    tracing::warn!(
                        "group {g}: never-initialised bitmap gives {count} free blocks, its descriptor {claimed}; its blocks count as used"
                    );
                    continue;
                }
                for (a, n) in free {
                    let stop = (a + n).min(end);
                    if a < stop {
                        push(&mut out, a, stop);
                    }
                }
            }
            Group::Bitmap(at, lo, hi) => {
                let at = at.checked_mul(bs).ok_or_else(|| {
                    corrupt(format!("group {g}: bitmap block {at} is out of range"))
                })?;
                dev.read_exact_at(at, &mut bitmap)?;
                if sb.has_csum() && !bitmap_csum_ok(sb, g, lo, hi, &bitmap[..bitmap_len]) {
                    continue;
                }
                for c in 0..clusters {
                    if bitmap[(c / 8) as usize] & (1 << (c % 8)) != 0 {
                        continue;
                    }
                    let start = first + c * cluster;
                    let stop = (start + cluster).min(end);
                    if start >= stop {
                        break;
                    }
                    push(&mut out, start, stop);
                }
            }
        }
    }
    Ok(out)
}

/// What the first pass over the descriptors finds.
struct Groups {
    /// Each group's kind.
    kinds: Vec<Group>,
    /// The blocks every group's descriptor places its bitmaps and inode table at
    /// (block, count; sorted).
    meta: Vec<(u64, u64)>,
    /// Whether never-initialised groups can be computed: every descriptor passed its
    /// checksum (so none of those places is unknown), and no bigalloc (whose clusters
    /// this does not count).
    trust_uninit: bool,
}

/// The first pass: reads the descriptors of the first `groups` groups.
fn read_groups(dev: &dyn ReadAt, sb: &Superblock, groups: u64) -> io::Result<Groups> {
    let itb = (sb.inodes_per_group as u64).div_ceil((sb.block_size / sb.inode_size as u32) as u64);
    let mut kinds = Vec::with_capacity(groups as usize);
    let mut meta = Vec::new();
    let mut trust_uninit = sb.has_group_csums() && sb.cluster_shift == 0;
    for g in 0..groups {
        let d = sb::raw_descriptor(dev, sb, g)?;
        if !descriptor_csum_ok(sb, g, &d) {
            tracing::warn!("group descriptor {g} fails its checksum; its blocks count as used");
            trust_uninit = false;
            kinds.push(Group::Used);
            continue;
        }
        let field = |lo, hi| sb::desc_block(sb, &d, lo, hi);
        let (block_bitmap, inode_bitmap, table) =
            (field(0x0, 0x20), field(0x4, 0x24), field(0x8, 0x28));
        meta.extend([(block_bitmap, 1), (inode_bitmap, 1), (table, itb)]);
        let flags = u16le(&d, 0x12);
        kinds.push(if sb.has_group_csums() && flags & BLOCK_UNINIT != 0 {
            let h = if sb.desc_size >= 64 {
                u16le(&d, 0x2C) as u32
            } else {
                0
            };
            Group::Uninit(u16le(&d, 0xC) as u32 | h << 16)
        } else if block_bitmap == 0 || block_bitmap >= sb.blocks_count {
            Group::Used
        } else {
            let hi = if sb.desc_size as usize >= 0x3C {
                u16le(&d, 0x38)
            } else {
                0
            };
            Group::Bitmap(block_bitmap, u16le(&d, 0x18), hi)
        });
    }
    meta.sort_unstable();
    Ok(Groups {
        kinds,
        meta,
        trust_uninit,
    })
}

/// The ranges of sorted `meta` (block, count; none longer than `longest`) reaching
/// into blocks `start..stop`.
fn meta_in(meta: &[(u64, u64)], longest: u64, start: u64, stop: u64) -> Vec<(u64, u64)> {
    let from = meta.partition_point(|m| m.0.saturating_add(longest) <= start);
    meta[from..]
        .iter()
        .take_while(|m| m.0 < stop)
        .filter(|m| m.0.saturating_add(m.1) > start)
        .copied()
        .collect()
}

/// Whether descriptor `d` of group `g` matches its checksum: crc32c with
/// metadata_csum, crc16 with gdt_csum (as the kernel's ext4_group_desc_csum); true
/// when the volume has neither.
fn descriptor_csum_ok(sb: &Superblock, g: u64, d: &[u8]) -> bool {
    let want = u16le(d, 0x1E);
    if sb.has_csum() {
        let mut c = sb::ext4_crc(sb.csum_seed, &(g as u32).to_le_bytes());
        c = sb::ext4_crc(c, &d[..0x1E]);
        c = sb::ext4_crc(c, &[0, 0]);
        c = sb::ext4_crc(c, &d[0x20..]);
        c as u16 == want
    } else if sb.ro_compat & feat::RO_COMPAT_GDT_CSUM != 0 {
        let mut c = crc16(0xFFFF, &sb.uuid);
        c = crc16(c, &(g as u32).to_le_bytes());
        c = crc16(c, &d[..0x1E]);
        if sb.incompat & feat::INCOMPAT_64BIT != 0 && d.len() > 0x20 {
            c = crc16(c, &d[0x20..]);
        }
        c == want
    } else {
        true
    }
}

/// CRC-16 with the polynomial 0x8005, bits reflected (the kernel's crc16, which
/// gdt_csum descriptors use).
fn crc16(mut crc: u16, data: &[u8]) -> u16 {
    for &b in data {
        crc ^= b as u16;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xA001
            } else {
                crc >> 1
            };
        }
    }
    crc
}

/// Whether group `g`'s bitmap matches the checksum its descriptor holds (`lo`, `hi`;
/// metadata_csum).
fn bitmap_csum_ok(sb: &Superblock, g: u64, lo: u16, hi: u16, bits: &[u8]) -> bool {
    let c = sb::ext4_crc(sb.csum_seed, bits);
    let mut ok = c as u16 == lo;
    if sb.desc_size as usize >= 0x3C {
        ok &= (c >> 16) as u16 == hi;
    }
    if !ok {
        tracing::warn!("block bitmap of group {g} fails its checksum; its blocks count as used");
    }
    ok
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::readat::MemReader;

    #[test]
    fn used_ranges_are_cut_out_of_free_ones() {
        let free = vec![(0, 100), (200, 100), (400, 50)];
        let used = vec![(250, 10), (90, 120), (420, 5), (1000, 5)];
        assert_eq!(
            subtract(free, used),
            vec![(0, 90), (210, 40), (260, 40), (400, 20), (425, 25)]
        );
    }

    #[test]
    fn crc16_is_the_kernels() {
        // CRC-16/ARC (initial 0) and CRC-16/MODBUS (initial 0xFFFF) check values.
        assert_eq!(crc16(0, b"123456789"), 0xBB3D);
        assert_eq!(crc16(0xFFFF, b"123456789"), 0x4B37);
    }

    #[test]
    fn metadata_reaching_into_a_group_is_found() {
        // Sorted (block, count): bitmaps of one group, a long inode table before.
        let meta = vec![(10, 1), (11, 1), (12, 512), (600, 1), (700, 1), (2000, 5)];
        let m = |a, b| meta_in(&meta, 512, a, b);
        assert_eq!(m(500, 1000), vec![(12, 512), (600, 1), (700, 1)]);
        assert_eq!(m(1000, 2000), vec![]);
        assert_eq!(m(2004, 3000), vec![(2000, 5)]);
        assert_eq!(meta_in(&[], 0, 0, 10), vec![]);
    }

    #[test]
    fn a_volume_that_is_no_ext_is_an_error() {
        let dev: Arc<dyn ReadAt> = Arc::new(MemReader(vec![0u8; 1 << 20]));
        assert!(free_ranges(dev, "zeros").is_err());
    }
}
