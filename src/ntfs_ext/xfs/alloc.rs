//! Which blocks of an XFS volume its free-space btrees (by block number, one per AG)
//! list as free, read after the log replay in memory, for `backup --skip-free`.
//! Conservative: an AG whose AGF or btree blocks fail their checks (magic, level,
//! address, owner, and on a volume that needed no replay CRC: the log holds buffers
//! as they were logged, their CRCs computed only when written back) counts as wholly
//! used; a volume with unknown incompatible features or an external log (whose state
//! cannot be seen here) is an error. Blocks on the AG free lists count as used.

use std::io;
use std::sync::Arc;

use super::{be16, be32, crc_ok, log, read_sb, sbtree_block_ok, Sb, INCOMPAT_KNOWN};
use crate::ntfs_ext::corrupt;
use crate::readat::ReadAt;

const AGF_MAGIC: u32 = 0x5841_4746; // "XAGF"
const ABTB_MAGIC: u32 = 0x4142_5442; // "ABTB", v4
const AB3B_MAGIC: u32 = 0x4142_3342; // "AB3B", v5
/// Btree blocks visited in one AG, at most.
const MAX_VISITS: usize = 1 << 20;
/// AGs looked at, at most; past them the volume counts as used.
const MAX_AGS: u64 = 1 << 16;

/// Byte ranges (offset, length; sorted, merged) of the volume its free-space btrees
/// list as free once the log is replayed in memory.
pub fn free_ranges(dev: Arc<dyn ReadAt>, label: &str) -> io::Result<Vec<(u64, u64)>> {
    let (sb, raw) = read_sb(&*dev, label)?;
    if sb.v5 && be32(&raw, 0xD8) & !INCOMPAT_KNOWN != 0 {
        return Err(corrupt("unknown incompatible features"));
    }
    if sb.logstart == 0 {
        return Err(corrupt("its log is on another device"));
    }
    let (dev, crcs): (Arc<dyn ReadAt>, bool) =
        match log::replay(dev.clone(), None, &sb, &sb.uuid, &sb.meta_uuid, label)? {
            Some((replayed, _)) => (Arc::new(replayed), false),
            None => (dev, sb.v5),
        };
    let (sb, _) = read_sb(&*dev, label)?;
    let check = Checks { crcs };
    let size = dev.size();
    let mut out: Vec<(u64, u64)> = Vec::new();
    for ag in 0..sb.agcount.min(MAX_AGS) {
        // A superblock may claim more AGs than the device holds.
        if ag
            .checked_mul(sb.agblocks)
            .and_then(|b| b.checked_mul(sb.bs))
            .is_none_or(|at| at >= size)
        {
            break;
        }
        match ag_free(&*dev, &sb, ag, check) {
            Ok(mut extents) => {
                extents.sort_unstable();
                let base = ag * sb.agblocks;
                for (start, len) in extents {
                    let at = (base + start) * sb.bs;
                    let len = (len * sb.bs).min(size.saturating_sub(at));
                    if len == 0 {
                        continue;
                    }
                    match out.last_mut() {
                        Some(r) if r.0 + r.1 == at => r.1 += len,
                        Some(r) if r.0 + r.1 > at => {
                            return Err(corrupt(format!("AG {ag}: free extents overlap")))
                        }
                        _ => out.push((at, len)),
                    }
                }
            }
            Err(e) => tracing::warn!("{label}: AG {ag}: {e}; its blocks count as used"),
        }
    }
    Ok(out)
}

/// Which checks the AG headers and btree blocks get.
#[derive(Clone, Copy)]
struct Checks {
    /// CRCs (v5, not replayed).
    crcs: bool,
}

/// The free extents (AG block, length) of AG `ag`, from its by-block-number btree.
fn ag_free(dev: &dyn ReadAt, sb: &Sb, ag: u64, check: Checks) -> io::Result<Vec<(u64, u64)>> {
    let at = ag * sb.agblocks * sb.bs + sb.sectsize;
    let mut agf = vec![0u8; sb.sectsize as usize];
    dev.read_exact_at(at, &mut agf)?;
    if agf.len() < 224 || be32(&agf, 0) != AGF_MAGIC || be32(&agf, 8) as u64 != ag {
        return Err(corrupt("AGF is not this AG's"));
    }
    if check.crcs && !crc_ok(&agf, 216) {
        return Err(corrupt("AGF fails its CRC"));
    }
    let length = (be32(&agf, 12) as u64).min(sb.agblocks);
    let (root, levels) = (be32(&agf, 16) as u64, be32(&agf, 28));
    if root == 0 || root >= length || !(1..=8).contains(&levels) {
        return Err(corrupt(format!(
            "free-space btree root {root} at {levels} levels"
        )));
    }
    let mut out = Vec::new();
    let mut visits = 0;
    let tree = Tree {
        dev,
        sb,
        ag,
        length,
        check,
    };
    tree.walk(root, levels - 1, &mut out, &mut visits)?;
    Ok(out)
}

/// One AG's by-block-number free-space btree.
struct Tree<'a> {
    dev: &'a dyn ReadAt,
    sb: &'a Sb,
    ag: u64,
    /// The AG's length in blocks.
    length: u64,
    check: Checks,
}

impl Tree<'_> {
    /// Collects the records of the subtree at AG block `bno`, which must be at `level`.
    fn walk(
        &self,
        bno: u64,
        level: u32,
        out: &mut Vec<(u64, u64)>,
        visits: &mut usize,
    ) -> io::Result<()> {
        let (dev, sb, ag, length) = (self.dev, self.sb, self.ag, self.length);
        *visits += 1;
        // A btree has fewer blocks than its AG: more visits mean a cycle.
        if *visits > MAX_VISITS.min(length as usize) {
            return Err(corrupt("free-space btree too large"));
        }
        let at = (ag * sb.agblocks + bno) * sb.bs;
        let mut b = vec![0u8; sb.bs as usize];
        dev.read_exact_at(at, &mut b)?;
        let (magic, hdr) = if sb.v5 {
            (AB3B_MAGIC, 56)
        } else {
            (ABTB_MAGIC, 16)
        };
        if be32(&b, 0) != magic || be16(&b, 4) as u32 != level {
            return Err(corrupt(format!(
                "block {bno} is no free-space btree block at level {level}"
            )));
        }
        if !sbtree_block_ok(&b, sb, ag, at, magic, level)
            || sb.v5 && self.check.crcs && !crc_ok(&b, 52)
        {
            return Err(corrupt(format!(
                "free-space btree block {bno} fails its checks"
            )));
        }
        let n = be16(&b, 6) as usize;
        if level == 0 {
            if n > (b.len() - hdr) / 8 {
                return Err(corrupt(format!("block {bno}: {n} records")));
            }
            for r in b[hdr..hdr + n * 8].chunks_exact(8) {
                let (start, len) = (be32(r, 0) as u64, be32(r, 4) as u64);
                if len == 0 || start + len > length {
                    return Err(corrupt(format!("free extent {start}+{len} past the AG")));
                }
                out.push((start, len));
            }
            return Ok(());
        }
        let room = (b.len() - hdr) / 12;
        if n == 0 || n > room {
            return Err(corrupt(format!("block {bno}: {n} keys")));
        }
        for k in 0..n {
            let ptr = be32(&b, hdr + room * 8 + k * 4) as u64;
            if ptr == 0 || ptr >= length {
                return Err(corrupt(format!("block {bno} points past the AG")));
            }
            self.walk(ptr, level - 1, out, visits)?;
        }
        Ok(())
    }
}
