//! An ext volume whose primary superblock is gone (an unreadable sector of a failing
//! disk, damage, a wiped start) read through a backup copy, as `e2fsck -b` and the
//! kernel's `mount -o sb=` read it: the superblock kept in group 1 and the group
//! descriptor table that follows it, laid in memory over the primary's places. The
//! backup descriptors are as old as the last resize or fsck wrote them.

use std::sync::Arc;

use super::sb::{ext4_crc, feat, u16le, u32le, Superblock, MAGIC, SB_OFFSET};
use crate::readat::{Patched, ReadAt};

/// The volume with a backup superblock and descriptor table over the primaries'
/// bytes, and where the backup was found.
pub struct FromBackup {
    /// The volume as read through the backup.
    pub volume: Patched,
    /// The backup's block number, for messages.
    pub block: u64,
    /// Its block size.
    pub block_size: u32,
}

/// Largest descriptor table copied (bytes): 2^20 groups of 64-byte descriptors.
const MAX_TABLE: u64 = 64 << 20;

/// Whether the volume's start looks wiped or its primary superblock damaged rather
/// than taken by something else: the first 2 KiB are zeros (no boot code, no
/// superblock; an md member's superblock at 4 KiB says it is no filesystem's), or
/// they hold an ext magic, or they cannot be read.
fn start_is_ext_or_gone(dev: &dyn ReadAt) -> bool {
    let mut b = [0u8; 2048];
    if dev.read_exact_at(0, &mut b).is_err() {
        return true;
    }
    if u16le(&b[1024..], 0x38) == MAGIC {
        return true;
    }
    let mut md = [0u8; 4];
    let md_member = dev.read_exact_at(4096, &mut md).is_ok() && u32le(&md, 0) == 0xA92B_4EFC;
    b.iter().all(|&x| x == 0) && !md_member
}

/// A checked backup superblock in group 1 for block size `bs`: where e2fsck looks
/// (block 8 * bs, plus the boot block's 1 with 1 KiB blocks).
fn candidate(dev: &dyn ReadAt, bs: u64) -> Option<(u64, [u8; 1024], Superblock)> {
    let block = 8 * bs + u64::from(bs == 1024);
    let at = block.checked_mul(bs)?;
    let mut b = [0u8; 1024];
    if at.checked_add(1024)? > dev.size() || dev.read_exact_at(at, &mut b).is_err() {
        return None;
    }
    // The magic, this block size, group 1, and its own checksum when it has one.
    if u16le(&b, 0x38) != MAGIC || 1024u64 << u32le(&b, 0x18).min(16) != bs || u16le(&b, 0x5A) != 1
    {
        return None;
    }
    if u32le(&b, 0x64) & feat::RO_COMPAT_METADATA_CSUM != 0
        && ext4_crc(!0, &b[..0x3FC]) != u32le(&b, 0x3FC)
    {
        return None;
    }
    let sb = Superblock::parse(&b, "").ok()?;
    // Group 1 starts where this copy lies.
    let group1 = sb.first_data_block as u64 + sb.blocks_per_group as u64;
    (group1 == block && sb.blocks_count.checked_mul(bs)? <= dev.size().saturating_add(bs))
        .then_some((block, b, sb))
}

impl FromBackup {
    /// The volume read through its first good backup superblock, when its start says
    /// the primary is damaged or gone; `None` otherwise or when no backup is found.
    pub fn find(dev: &Arc<dyn ReadAt>) -> Option<FromBackup> {
        if dev.size() < 2048 || !start_is_ext_or_gone(&**dev) {
            return None;
        }
        let (block, raw, sb) = (10..=16).find_map(|log| candidate(&**dev, 1u64 << log))?;
        let bs = sb.block_size as u64;
        let per_block = bs / sb.desc_size as u64;
        let all = sb.groups().div_ceil(per_block);
        let tables = if sb.incompat & feat::INCOMPAT_META_BG != 0 {
            all.min(sb.first_meta_bg as u64)
        } else {
            all
        };
        let len = tables.checked_mul(bs).filter(|&l| l <= MAX_TABLE)?;
        let mut table = vec![0u8; len as usize];
        dev.read_exact_at((block + 1).checked_mul(bs)?, &mut table)
            .ok()?;
        // The primary table follows the primary superblock's block.
        let primary = (SB_OFFSET / bs + 1) * bs;
        Some(FromBackup {
            volume: Patched::new(
                dev.clone(),
                vec![(SB_OFFSET, raw.to_vec()), (primary, table)],
            ),
            block,
            block_size: sb.block_size,
        })
    }
}
