//! Which blocks of an ext volume its allocation bitmaps mark free, read after the
//! journal replay: a backup that skips them stores only what files and metadata use.
//!
//! Conservative by design, since a block wrongly taken as free is data lost from the
//! point: a group counts as wholly used when its bitmap was never initialised
//! (BLOCK_UNINIT), when its descriptor or bitmap fails its checksum, or when the
//! descriptor points outside the volume; the whole volume is refused (an error) when
//! it has incompatible features this parser does not know, an external journal to
//! replay, or journal blocks that fail their checksums.

use std::io;
use std::sync::Arc;

use super::sb::{self, feat, u16le, u32le, Superblock, SB_OFFSET};
use crate::ntfs_ext::corrupt;
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

/// Byte ranges `free` (sorted, disjoint) less every range of `used` (any order).
fn subtract(free: Vec<(u64, u64)>, mut used: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    if used.is_empty() {
        return free;
    }
    used.sort_unstable();
    let mut out = Vec::with_capacity(free.len());
    let mut u = 0usize;
    for (start, len) in free {
        let end = start + len;
        let mut at = start;
        // Used ranges ending before this free one matter to no later one either.
        while u < used.len() && used[u].0.saturating_add(used[u].1) <= at {
            u += 1;
        }
        let mut i = u;
        while i < used.len() && used[i].0 < end {
            let (us, ue) = (used[i].0, used[i].0.saturating_add(used[i].1));
            if us > at {
                out.push((at, us - at));
            }
            at = at.max(ue);
            i += 1;
        }
        if at < end {
            out.push((at, end - at));
        }
    }
    out
}

/// Walks the groups' block bitmaps of `sb`'s volume on `dev`.
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
    let mut out: Vec<(u64, u64)> = Vec::new();
    let mut bitmap = vec![0u8; sb.block_size as usize];
    // Groups past the device's end hold nothing to skip (and a hostile superblock may
    // claim millions).
    let groups = sb.groups().min(MAX_GROUPS).min(
        end.saturating_sub(sb.first_data_block as u64)
            .div_ceil(per_group),
    );
    for g in 0..groups {
        let Some((at, desc)) = group_bitmap(dev, sb, g)? else {
            continue;
        };
        let at = at
            .checked_mul(bs)
            .ok_or_else(|| corrupt(format!("group {g}: bitmap block {at} is out of range")))?;
        dev.read_exact_at(at, &mut bitmap)?;
        if sb.has_csum() && !bitmap_csum_ok(sb, g, &desc, &bitmap[..bitmap_len]) {
            continue;
        }
        let first = sb.first_data_block as u64 + g * per_group;
        for c in 0..clusters {
            if bitmap[(c / 8) as usize] & (1 << (c % 8)) != 0 {
                continue;
            }
            let start = first + c * cluster;
            let stop = (start + cluster).min(end);
            if start >= stop {
                break;
            }
            match out.last_mut() {
                Some(r) if r.0 + r.1 == start * bs => r.1 += (stop - start) * bs,
                _ => out.push((start * bs, (stop - start) * bs)),
            }
        }
    }
    Ok(out)
}

/// The block holding group `g`'s bitmap, with the group's raw descriptor, or `None`
/// when the group must count as used: its bitmap was never initialised, its descriptor
/// fails its checksum, or the bitmap lies outside the volume.
fn group_bitmap(dev: &dyn ReadAt, sb: &Superblock, g: u64) -> io::Result<Option<(u64, Vec<u8>)>> {
    let d = descriptor(dev, sb, g)?;
    let flags = u16le(&d, 0x12);
    if sb.has_group_csums() && flags & BLOCK_UNINIT != 0 {
        return Ok(None);
    }
    if sb.has_csum() {
        let mut c = sb::ext4_crc(sb.csum_seed, &(g as u32).to_le_bytes());
        c = sb::ext4_crc(c, &d[..0x1E]);
        c = sb::ext4_crc(c, &[0, 0]);
        c = sb::ext4_crc(c, &d[0x20..]);
        if c as u16 != u16le(&d, 0x1E) {
            tracing::warn!("group descriptor {g} fails its checksum; its blocks count as used");
            return Ok(None);
        }
    }
    let mut at = u32le(&d, 0x0) as u64;
    if sb.desc_size >= 64 {
        at |= (u32le(&d, 0x20) as u64) << 32;
    }
    if at == 0 || at >= sb.blocks_count {
        return Ok(None);
    }
    Ok(Some((at, d)))
}

/// Group `g`'s raw descriptor.
fn descriptor(dev: &dyn ReadAt, sb: &Superblock, g: u64) -> io::Result<Vec<u8>> {
    let (blk, within) = sb.desc_location(g);
    let mut d = vec![0u8; sb.desc_size as usize];
    dev.read_exact_at(blk * sb.block_size as u64 + within as u64, &mut d)?;
    Ok(d)
}

/// Whether group `g`'s bitmap matches the checksum its descriptor `d` holds
/// (metadata_csum).
fn bitmap_csum_ok(sb: &Superblock, g: u64, d: &[u8], bits: &[u8]) -> bool {
    let c = sb::ext4_crc(sb.csum_seed, bits);
    let mut ok = c as u16 == u16le(d, 0x18);
    if sb.desc_size as usize >= 0x3C {
        ok &= (c >> 16) as u16 == u16le(d, 0x38);
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
    fn a_volume_that_is_no_ext_is_an_error() {
        let dev: Arc<dyn ReadAt> = Arc::new(MemReader(vec![0u8; 1 << 20]));
        assert!(free_ranges(dev, "zeros").is_err());
    }
}
