//! What the kernel frees right after replaying a log: inodes left on an AG's unlinked
//! lists at the crash (files unlinked while still open, O_TMPFILE files). No
//! directory reaches them, so the tree never shows them; only the free counts
//! `df` reports change, and those must match the kernel's mount of the same point.
//!
//! Each inode freed gives back its blocks (its `nblocks`: data, attribute fork and
//! block-map btree blocks) and becomes a free inode; a chunk whose 64 inodes are then
//! all free is itself freed (its inodes leave the count, its blocks become free), as
//! the kernel does unless mounted with `ikeep`. Not modelled (these change the counts
//! by a block or so): free-space and inode btrees shrinking as extents merge or
//! records go, and the CoW staging extents a reflink volume's recovery also frees.

use std::collections::{BTreeMap, HashSet};
use std::io;

use super::{be16, be32, be64, sbtree_block_ok, Sb, INODE_MAGIC};
use crate::ntfs_ext::corrupt;
use crate::readat::ReadAt;

const NULL_AGINO: u32 = u32::MAX;
const IAB3_MAGIC: u32 = 0x4941_4233; // "IAB3", v5
const IABT_MAGIC: u32 = 0x4941_4254; // "IABT", v4
/// Realtime file: its blocks are on the realtime device, not in the data free count.
const DIFLAG_REALTIME: u16 = 0x1;
/// The file may share blocks with others (reflink): freeing it need not free them.
const DIFLAG2_REFLINK: u64 = 0x2;
/// Inodes followed along one AG's unlinked lists, at most.
const MAX_UNLINKED: usize = 1 << 20;

/// How recovery's freeing of unlinked inodes moves one AG's counts.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct Released {
    /// Inodes that become free.
    pub inodes: u64,
    /// Inodes that stop existing (whole chunks freed), leaving both counts.
    pub gone: u64,
    /// Data blocks that become free.
    pub blocks: u64,
    /// Blocks of files sharing extents (reflink), left counted as used.
    pub shared: u64,
}

impl std::ops::AddAssign for Released {
    fn add_assign(&mut self, r: Released) {
        self.inodes += r.inodes;
        self.gone += r.gone;
        self.blocks += r.blocks;
        self.shared += r.shared;
    }
}

/// What freeing the inodes on AG `ag`'s unlinked lists (`agi`: its AGI sector, after
/// the replay) releases.
pub(super) fn released(dev: &dyn ReadAt, sb: &Sb, ag: u64, agi: &[u8]) -> io::Result<Released> {
    if agi.len() < 40 + 64 * 4 {
        return Err(corrupt("AGI sector too small"));
    }
    let bits = sb.agblklog + sb.inopblog;
    let agino_max = sb.agblocks << sb.inopblog;
    let mut out = Released::default();
    let mut seen = HashSet::new();
    let mut freed = Vec::new();
    let mut b = vec![0u8; sb.isize as usize];
    for bucket in 0..64u32 {
        let mut agino = be32(agi, 40 + bucket as usize * 4);
        while agino != NULL_AGINO {
            if agino as u64 >= agino_max || agino % 64 != bucket {
                return Err(corrupt(format!(
                    "unlinked list {bucket} holds inode {agino} of no such slot"
                )));
            }
            if !seen.insert(agino) || seen.len() > MAX_UNLINKED {
                return Err(corrupt(format!("unlinked list {bucket} loops")));
            }
            let ino = (ag << bits) | agino as u64;
            dev.read_exact_at(sb.inode_bytes(ino)?, &mut b)?;
            let version = b[4];
            if be16(&b, 0) != INODE_MAGIC || version == 3 && be64(&b, 0x98) != ino {
                return Err(corrupt(format!("unlinked inode {ino} is no inode")));
            }
            let nlink = if version == 1 {
                be16(&b, 0x6) as u32
            } else {
                be32(&b, 0x10)
            };
            // Still linked (an O_TMPFILE given a name): recovery only unlists it.
            if nlink == 0 {
                let flags2 = if version == 3 { be64(&b, 0x78) } else { 0 };
                let nblocks = be64(&b, 0x40);
                if nblocks > sb.dblocks {
                    return Err(corrupt(format!("unlinked inode {ino}: {nblocks} blocks")));
                }
                if flags2 & DIFLAG2_REFLINK != 0 {
                    out.shared += nblocks;
                } else if be16(&b, 0x5A) & DIFLAG_REALTIME == 0 {
                    out.blocks += nblocks;
                }
                out.inodes += 1;
                freed.push(agino);
            }
            agino = be32(&b, 0x60);
        }
    }
    if freed.is_empty() || sb.inopblog > 6 {
        return Ok(out);
    }
    // Each chunk holding a freed inode, with the inodes freed in it.
    let inobt = Inobt::new(dev, sb, ag, agi)?;
    let mut chunks: BTreeMap<u32, (Chunk, u64)> = BTreeMap::new();
    for agino in freed {
        let known = chunks
            .range(..=agino)
            .next_back()
            .is_some_and(|(&start, _)| agino - start < 64);
        if !known {
            let rec = inobt.find(agino)?;
            chunks.insert(rec.start, (rec, 0));
        }
        let Some((&start, (rec, bits))) = chunks.range_mut(..=agino).next_back() else {
            return Err(corrupt(format!("unlinked inode {agino} is in no chunk")));
        };
        let bit = 1u64 << (agino - start);
        if rec.free & bit != 0 {
            return Err(corrupt(format!("unlinked inode {agino} is already free")));
        }
        *bits |= bit;
    }
    for (rec, bits) in chunks.values() {
        if rec.free | bits == u64::MAX {
            out.gone += rec.count;
            out.blocks += rec.count * sb.isize / sb.bs;
        }
    }
    Ok(out)
}

/// One inode btree record: a chunk of 64 inodes.
struct Chunk {
    /// First inode of the chunk (AG inode number).
    start: u32,
    /// Inodes allocated (64 unless the chunk is sparse).
    count: u64,
    /// Free (or never allocated) inodes, bit per inode.
    free: u64,
}

/// One AG's inode btree, searched by inode number.
struct Inobt<'a> {
    dev: &'a dyn ReadAt,
    sb: &'a Sb,
    ag: u64,
    root: u64,
    levels: u32,
}

impl<'a> Inobt<'a> {
    fn new(dev: &'a dyn ReadAt, sb: &'a Sb, ag: u64, agi: &[u8]) -> io::Result<Inobt<'a>> {
        let (root, levels) = (be32(agi, 20) as u64, be32(agi, 24));
        if root == 0 || root >= sb.agblocks || !(1..=8).contains(&levels) {
            return Err(corrupt(format!(
                "inode btree root {root} at {levels} levels"
            )));
        }
        Ok(Inobt {
            dev,
            sb,
            ag,
            root,
            levels,
        })
    }

    /// The record of the chunk holding AG inode `agino`.
    fn find(&self, agino: u32) -> io::Result<Chunk> {
        let sb = self.sb;
        let (magic, hdr) = if sb.v5 {
            (IAB3_MAGIC, 56)
        } else {
            (IABT_MAGIC, 16)
        };
        let mut b = vec![0u8; sb.bs as usize];
        let mut bno = self.root;
        for level in (0..self.levels).rev() {
            let at = (self.ag * sb.agblocks + bno) * sb.bs;
            self.dev.read_exact_at(at, &mut b)?;
            if !sbtree_block_ok(&b, sb, self.ag, at, magic, level) {
                return Err(corrupt(format!(
                    "block {bno} is no inode btree block at level {level}"
                )));
            }
            let n = be16(&b, 6) as usize;
            if level == 0 {
                if n > (b.len() - hdr) / 16 {
                    return Err(corrupt(format!("inode btree block {bno}: {n} records")));
                }
                for r in b[hdr..hdr + n * 16].chunks_exact(16) {
                    let start = be32(r, 0);
                    if start <= agino && agino - start < 64 {
                        let count = if sb.spinodes { r[6] as u64 } else { 64 };
                        return Ok(Chunk {
                            start,
                            count: count.min(64),
                            free: be64(r, 8),
                        });
                    }
                }
                return Err(corrupt(format!("unlinked inode {agino} is in no chunk")));
            }
            let room = (b.len() - hdr) / 8;
            if n == 0 || n > room {
                return Err(corrupt(format!("inode btree block {bno}: {n} keys")));
            }
            // The last key at or below the inode leads to it.
            let k = (0..n)
                .take_while(|&k| be32(&b, hdr + k * 4) <= agino)
                .last()
                .unwrap_or(0);
            bno = be32(&b, hdr + room * 4 + k * 4) as u64;
            if bno == 0 || bno >= sb.agblocks {
                return Err(corrupt(format!("inode btree points to block {bno}")));
            }
        }
        Err(corrupt("inode btree has no leaves"))
    }
}
