//! `backup --skip-free`: the blocks of a source its filesystems mark free (ext2/3/4
//! and XFS after their journal or log is replayed in memory, NTFS left with nothing
//! in `$LogFile` to redo; inside md RAID1 members, the array's), which the backup
//! records as zeros without reading them. Only blocks a
//! filesystem vouches for are skipped: anything it cannot read, a partition table
//! whose partitions overlap, or a filesystem of another kind keeps every block.

use std::path::Path;
use std::sync::Arc;

use crate::readat::{FileReader, ReadAt, Slice};
use crate::size::human;

/// Block ranges (first block, count; sorted, disjoint) of `path` whose every byte lies
/// in space a filesystem on it marks free. `name` is the device's name, for the log.
pub(super) fn free_blocks(path: &Path, name: &str, block_size: u64) -> Vec<(u64, u64)> {
    let dev: Arc<dyn ReadAt> = match FileReader::open(path) {
        Ok(d) => Arc::new(d),
        Err(e) => {
            tracing::warn!("device {name}: free space not skipped: {e}");
            return Vec::new();
        }
    };
    let volumes: Vec<(String, u64, u64)> = match crate::volumes::read_table(&*dev) {
        Ok(Some(t)) => {
            // An extended partition holds the logical ones (and their EBRs).
            let mut parts: Vec<(String, u64, u64)> = t
                .partitions
                .iter()
                .filter(|p| !matches!(p.kind.as_str(), "0x05" | "0x0f" | "0x85"))
                .map(|p| (format!("partition {}", p.number), p.start, p.len))
                .collect();
            parts.sort_by_key(|p| p.1);
            if parts.windows(2).any(|w| w[0].1 + w[0].2 > w[1].1) {
                tracing::warn!("device {name}: free space not skipped: its partitions overlap");
                return Vec::new();
            }
            parts
        }
        Ok(None) => vec![("the whole device".to_string(), 0, dev.size())],
        Err(e) => {
            tracing::warn!("device {name}: free space not skipped: partition table: {e}");
            return Vec::new();
        }
    };
    let mut bytes: Vec<(u64, u64)> = Vec::new();
    let mut known = 0;
    for (mut what, mut start, len) in volumes {
        let mut vol: Arc<dyn ReadAt> = Arc::new(Slice::new(dev.clone(), start, len));
        // An md RAID1 member: the filesystem is the array's, past the superblock (and
        // any write-intent bitmap), which are kept whole.
        if let Ok(Some((data, m))) = crate::volumes::md::array_data(&vol) {
            vol = data;
            start += m.offset;
            what = format!("{what} (md array {})", m.name);
        }
        if let Some(unused) = lvm_unused(&*vol) {
            known += 1;
            let total: u64 = unused.iter().map(|r| r.1).sum();
            tracing::info!("device {name}: {what} (LVM PV): {} in no LV", human(total));
            bytes.extend(unused.into_iter().map(|(o, l)| (start + o, l)));
            continue;
        }
        let Some((kind, found)) = crate::ntfs_ext::free_space(vol, &format!("{name} {what}"))
        else {
            continue;
        };
        known += 1;
        match found {
            Ok(free) => {
                let total: u64 = free.iter().map(|r| r.1).sum();
                tracing::info!("device {name}: {what} ({kind}): {} free", human(total));
                bytes.extend(free.into_iter().map(|(o, l)| (start + o, l)));
            }
            Err(e) => {
                eprintln!("warning: device {name}: {what} ({kind}): free space not skipped: {e}");
            }
        }
    }
    if known == 0 {
        eprintln!(
            "note: device {name}: no ext2/3/4, XFS or NTFS volume found on it, so --skip-free leaves nothing out"
        );
    }
    whole_blocks(&bytes, block_size)
}

/// When `vol` is an LVM PV whose VG this reader maps whole: the byte ranges of its
/// extents no LV uses (clipped to the volume). The LVs' own free space is not read.
fn lvm_unused(vol: &dyn ReadAt) -> Option<Vec<(u64, u64)>> {
    use crate::volumes::lvm;
    let label = lvm::read_label(vol).ok()??;
    let vg = lvm::read_metadata(vol, &label).ok()??;
    let size = vol.size();
    let ranges = lvm::unused_extents(&vg, &label.uuid)?;
    Some(
        ranges
            .into_iter()
            .filter(|&(o, _)| o < size)
            .map(|(o, l)| (o, l.min(size - o)))
            .collect(),
    )
}

/// The blocks of `block_size` bytes lying wholly inside the sorted byte `ranges`,
/// as (first block, count), merged.
fn whole_blocks(ranges: &[(u64, u64)], block_size: u64) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for &(off, len) in ranges {
        let first = off.div_ceil(block_size);
        let end = (off + len) / block_size;
        if first >= end {
            continue;
        }
        match out.last_mut() {
            Some(r) if r.0 + r.1 == first => r.1 += end - first,
            _ => out.push((first, end - first)),
        }
    }
    out
}

/// Blocks in both lists of sorted, disjoint (first block, count) ranges.
pub(super) fn overlap_blocks(a: &[(u64, u64)], b: &[(u64, u64)]) -> u64 {
    let (mut i, mut j, mut n) = (0, 0, 0);
    while i < a.len() && j < b.len() {
        let (a0, a1) = (a[i].0, a[i].0 + a[i].1);
        let (b0, b1) = (b[j].0, b[j].0 + b[j].1);
        n += a1.min(b1).saturating_sub(a0.max(b0));
        if a1 <= b1 {
            i += 1;
        } else {
            j += 1;
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlap_counts_blocks_in_both_lists() {
        let free = [(0, 10), (20, 5), (40, 100)];
        let read = [(5, 20), (30, 15), (200, 1)];
        // 5..10, 20..25, 40..45.
        assert_eq!(overlap_blocks(&free, &read), 15);
        assert_eq!(overlap_blocks(&free, &[]), 0);
    }

    #[test]
    fn only_whole_blocks_count() {
        let k = 1024;
        // 4 KiB free from 2 KiB: no whole 4 KiB block; 12 KiB from 4 KiB: three.
        assert_eq!(whole_blocks(&[(2 * k, 4 * k)], 4 * k), vec![]);
        assert_eq!(whole_blocks(&[(4 * k, 12 * k)], 4 * k), vec![(1, 3)]);
        // Adjacent ranges make one run; a range ending mid-block stops before it.
        assert_eq!(
            whole_blocks(&[(0, 8 * k), (8 * k, 6 * k), (20 * k, 4 * k)], 4 * k),
            vec![(0, 3), (5, 1)]
        );
    }
}
