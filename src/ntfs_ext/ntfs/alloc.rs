//! Which clusters of an NTFS volume its `$Bitmap` marks free, for `backup
//! --skip-free`. `$LogFile` is not replayed here, so the bitmap is trusted only on a
//! volume left with nothing to replay: `$Volume`'s dirty flag clear and every restart
//! page of `$LogFile` saying the log was closed cleanly (or the log emptied, as
//! ntfs-3g and mkntfs leave it). Anything else is an error: the volume is read whole.

use std::io;
use std::sync::Arc;

use super::NtfsFs;
use crate::ntfs_ext::corrupt;
use crate::ntfs_ext::tree::TreeOptions;
use crate::readat::ReadAt;

/// `$LogFile` restart area flag: the volume was closed cleanly.
const RESTART_VOLUME_IS_CLEAN: u16 = 0x2;
/// `client_in_use_list` with no client: the log is closed.
const NO_CLIENT: u16 = 0xFFFF;
/// Restart page size when the first page does not say (an emptied log).
const DEFAULT_PAGE: usize = 4096;

/// Byte ranges (offset, length; sorted, merged) of the volume no file uses, as its
/// `$Bitmap` says; an error when the volume may hold changes `$LogFile` would redo.
pub fn free_ranges(dev: Arc<dyn ReadAt>, label: &str) -> io::Result<Vec<(u64, u64)>> {
    let opts = TreeOptions {
        label: label.to_string(),
        ..Default::default()
    };
    NtfsFs::open(dev, &opts)?.free_ranges()
}

impl NtfsFs {
    fn free_ranges(&self) -> io::Result<Vec<(u64, u64)>> {
        if self.node(3)?.vol_flags.is_none_or(|f| f & 1 != 0) {
            return Err(corrupt("the volume is marked dirty"));
        }
        let log = self.node(2)?;
        let (i, s) = log
            .stream(&[])
            .ok_or_else(|| corrupt("$LogFile has no data"))?;
        let mut head = vec![0u8; (2 * 16384u64).min(s.data.size()) as usize];
        let n = self.read_data(&s.data, (2, i), 0, &mut head)?;
        head.truncate(n);
        if !log_closed(&head) {
            return Err(corrupt(
                "$LogFile holds changes not yet applied (not replayed here)",
            ));
        }
        let cs = self.boot.cluster_size;
        // A (hostile) boot sector may claim more clusters than the device holds.
        let total = self.boot.total_clusters.min(self.dev.size() / cs);
        let mut out: Vec<(u64, u64)> = Vec::new();
        let whole = self.bitmap_chunks(total, |off, chunk| {
            for (k, &b) in chunk.iter().enumerate() {
                if b == 0xFF {
                    continue;
                }
                for bit in 0..8 {
                    let c = (off + k as u64) * 8 + bit;
                    if c >= total {
                        break;
                    }
                    if b & (1 << bit) == 0 {
                        crate::readat::push_range(&mut out, c * cs, cs);
                    }
                }
            }
            Ok(())
        })?;
        if !whole {
            return Err(corrupt("$Bitmap is shorter than the volume"));
        }
        Ok(out)
    }
}

/// Whether `$LogFile`'s first two pages (`head`) leave nothing to redo: each restart
/// page emptied (all 0xFF) or an `RSTR` page whose restart area has no client in use
/// or says the volume is clean. A page modified by chkdsk (`CHKD`), damaged or
/// unknown counts as not closed.
fn log_closed(head: &[u8]) -> bool {
    let u16at = |b: &[u8], o: usize| b.get(o..o + 2).map(|v| u16::from_le_bytes([v[0], v[1]]));
    let page = if head.starts_with(b"RSTR") {
        match head.get(16..20) {
            Some(v) => u32::from_le_bytes(v.try_into().unwrap()) as usize,
            None => return false,
        }
    } else {
        DEFAULT_PAGE
    };
    if !(512..=65536).contains(&page) || !page.is_power_of_two() || head.len() < 2 * page {
        return false;
    }
    head.chunks_exact(page).take(2).all(|p| {
        if p.iter().all(|&b| b == 0xFF) {
            return true;
        }
        if !p.starts_with(b"RSTR") {
            return false;
        }
        // The restart area lies in the page's first sector, before the update
        // sequence fixup at its end, so no fixup is needed to read these fields.
        let Some(ra) = u16at(p, 24).map(usize::from) else {
            return false;
        };
        if ra < 30 || ra + 16 > 510 {
            return false;
        }
        let (in_use, flags) = (u16at(p, ra + 12), u16at(p, ra + 14));
        in_use == Some(NO_CLIENT) || flags.is_some_and(|f| f & RESTART_VOLUME_IS_CLEAN != 0)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two restart pages of 4 KiB with restart areas at 0x30.
    fn log(pages: [(u16, u16); 2]) -> Vec<u8> {
        let mut v = vec![0u8; 8192];
        for (i, (in_use, flags)) in pages.into_iter().enumerate() {
            let p = &mut v[i * 4096..(i + 1) * 4096];
            p[..4].copy_from_slice(b"RSTR");
            p[16..20].copy_from_slice(&4096u32.to_le_bytes());
            p[24..26].copy_from_slice(&0x30u16.to_le_bytes());
            p[0x30 + 12..0x30 + 14].copy_from_slice(&in_use.to_le_bytes());
            p[0x30 + 14..0x30 + 16].copy_from_slice(&flags.to_le_bytes());
        }
        v
    }

    #[test]
    fn only_a_closed_log_counts_as_clean() {
        assert!(log_closed(&vec![0xFF; 8192]), "emptied");
        assert!(
            log_closed(&log([(NO_CLIENT, 0), (NO_CLIENT, 0)])),
            "no client"
        );
        assert!(
            log_closed(&log([(0, 2), (0, 2)])),
            "open, clean flag (XP and later)"
        );
        assert!(!log_closed(&log([(0, 0), (0, 2)])), "one page dirty");
        assert!(!log_closed(&log([(0, 2), (0, 0)])), "the other page dirty");
        let mut chkd = log([(0, 2), (0, 2)]);
        chkd[..4].copy_from_slice(b"CHKD");
        assert!(!log_closed(&chkd), "chkdsk's");
        assert!(!log_closed(&vec![0u8; 8192]), "zeros");
        assert!(!log_closed(&log([(0, 2), (0, 2)])[..4096]), "one page only");
        let mut odd = log([(0, 2), (0, 2)]);
        odd[24..26].copy_from_slice(&600u16.to_le_bytes());
        assert!(!log_closed(&odd), "restart area outside the first sector");
    }
}
