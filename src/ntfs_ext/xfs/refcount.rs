//! CoW staging extents: blocks a reflink volume allocated for copy-on-write that were
//! never remapped into a file (a write in flight, or the CoW extent size hint's
//! preallocation). The refcount btree records them in its CoW domain; every mount
//! frees them before anything else runs (xfs_reflink_recover_cow), read-only ones
//! too, so `df` here counts them as free.

use std::io;

use super::{be16, be32, sbtree_block_ok, Sb};
use crate::ntfs_ext::corrupt;
use crate::readat::ReadAt;

const R3FC_MAGIC: u32 = 0x5233_4643; // "R3FC"
/// A record's start block carries this bit in the CoW domain.
const COW_FLAG: u32 = 1 << 31;
/// Refcount btree blocks visited in one AG, at most.
const MAX_VISITS: usize = 1 << 20;

/// Blocks of AG `ag` held as CoW staging extents, from its refcount btree (`agf`:
/// the AGF sector after any replay).
pub(super) fn staging_blocks(dev: &dyn ReadAt, sb: &Sb, ag: u64, agf: &[u8]) -> io::Result<u64> {
    if agf.len() < 96 {
        return Err(corrupt("AGF too short for a refcount btree"));
    }
    let (root, levels) = (be32(agf, 88) as u64, be32(agf, 92));
    if root == 0 || root >= sb.agblocks || !(1..=8).contains(&levels) {
        return Err(corrupt(format!(
            "refcount btree root {root} at {levels} levels"
        )));
    }
    let mut visits = 0;
    let mut total = 0;
    walk(dev, sb, ag, root, levels - 1, &mut visits, &mut total)?;
    Ok(total)
}

/// Adds the CoW-domain record lengths of the subtree at AG block `bno` (at `level`).
fn walk(
    dev: &dyn ReadAt,
    sb: &Sb,
    ag: u64,
    bno: u64,
    level: u32,
    visits: &mut usize,
    total: &mut u64,
) -> io::Result<()> {
    *visits += 1;
    if *visits > MAX_VISITS.min(sb.agblocks as usize) {
        return Err(corrupt("refcount btree too large"));
    }
    let at = (ag * sb.agblocks + bno) * sb.bs;
    let mut b = vec![0u8; sb.bs as usize];
    dev.read_exact_at(at, &mut b)?;
    let hdr = 56;
    if !sbtree_block_ok(&b, sb, ag, at, R3FC_MAGIC, level) {
        return Err(corrupt(format!(
            "block {bno} is no refcount btree block at level {level}"
        )));
    }
    let n = be16(&b, 6) as usize;
    if level == 0 {
        if n > (b.len() - hdr) / 12 {
            return Err(corrupt(format!("refcount btree block {bno}: {n} records")));
        }
        for r in b[hdr..hdr + n * 12].chunks_exact(12) {
            let (start, len) = (be32(r, 0), be32(r, 4) as u64);
            let first = (start & !COW_FLAG) as u64;
            if len == 0 || first + len > sb.agblocks {
                return Err(corrupt(format!(
                    "refcount record {first}+{len} past the AG"
                )));
            }
            if start & COW_FLAG != 0 {
                *total += len;
            }
        }
        return Ok(());
    }
    let room = (b.len() - hdr) / 8;
    if n == 0 || n > room {
        return Err(corrupt(format!("refcount btree block {bno}: {n} keys")));
    }
    for k in 0..n {
        let ptr = be32(&b, hdr + room * 4 + k * 4) as u64;
        if ptr == 0 || ptr >= sb.agblocks {
            return Err(corrupt(format!(
                "refcount btree block {bno} points past the AG"
            )));
        }
        walk(dev, sb, ag, ptr, level - 1, visits, total)?;
    }
    Ok(())
}
