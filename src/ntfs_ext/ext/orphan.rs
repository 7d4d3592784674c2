//! What the kernel does to an ext volume's orphans when it mounts it
//! (ext4_orphan_cleanup): an inode on the orphan list (threaded through i_dtime from
//! the superblock's s_last_orphan) or in the orphan file, with no links left, was
//! unlinked while still open and is deleted; one still linked was being truncated
//! or extended and is cut to its size. A snapshot of a running server has such
//! inodes (a database's temporary files); the kernel cleans them up on any mount it
//! can write to, even a read-only one, so the tree and `df` here count as after it.
//!
//! Nothing is written: the counts freed and the blocks each truncated file loses
//! are worked out and laid over `statfs` and `stat`. As the kernel, the walk stops
//! at the first orphan that is not an in-use inode (out of range, or clear in its
//! group's inode bitmap), and a volume whose superblock records errors is left as
//! it is. Not modelled (a block or so each): extent tree and indirect blocks freed
//! as a truncated file's map shrinks, and values held in xattr inodes (ea_inode).

use std::collections::{HashMap, HashSet};
use std::io;

use super::inode::{Inode, FL_EXTENTS, FL_INLINE_DATA};
use super::ExtFs;
use crate::ntfs_ext::corrupt;

/// `ob_magic`, closing each orphan file block.
const ORPHAN_BLOCK_MAGIC: u32 = 0x0B10_CA04;
/// Superblock state bit: errors were found; the kernel then cleans up nothing.
const STATE_ERROR: u16 = 0x2;
/// Orphan file blocks read, at most.
const MAX_ORPHAN_FILE_BLOCKS: u64 = 1 << 16;
/// Orphans followed, at most (each costs an inode and a bitmap read).
const MAX_ORPHANS: usize = 1 << 20;
/// Magic of an external xattr block.
const XATTR_MAGIC: u32 = 0xEA02_0000;

/// What cleaning up the orphans frees.
#[derive(Debug, Default)]
pub(super) struct Cleanup {
    /// Inodes deleted.
    pub inodes: u64,
    /// Blocks freed (inodes deleted and files truncated).
    pub blocks: u64,
    /// Per truncated file, the 512-byte sectors it loses from `st_blocks`.
    pub truncated: HashMap<u64, u64>,
}

impl ExtFs {
    /// The orphans' cleanup, worked out once per opened volume.
    pub(super) fn cleanup(&self) -> &Cleanup {
        self.orphans.get_or_init(|| {
            if !self.clean_orphans || self.sb.state & STATE_ERROR != 0 {
                return Cleanup::default();
            }
            let mut c = Cleanup::default();
            let (mut deleted, mut truncated) = (0u64, 0u64);
            let mut seen = HashSet::new();
            for ino in self.orphan_inodes() {
                if !seen.insert(ino) {
                    continue;
                }
                match self.clean_one(ino, &mut c) {
                    Ok(true) => deleted += 1,
                    Ok(false) => truncated += 1,
                    Err(e) => tracing::warn!(
                        "{}: orphan inode {ino}: {e}; counted as it is",
                        self.label
                    ),
                }
            }
            if deleted + truncated > 0 {
                tracing::info!(
                    "{}: {deleted} orphan inode(s) deleted and {truncated} truncated, as the kernel's mount cleans them up ({} block(s) freed)",
                    self.label,
                    c.blocks
                );
            }
            c
        })
    }

    /// The orphans in the kernel's order: the list, then the orphan file; each list
    /// ends at its first entry that is no in-use inode.
    fn orphan_inodes(&self) -> Vec<u64> {
        let mut out = Vec::new();
        let mut ino = self.sb.last_orphan as u64;
        let mut seen = HashSet::new();
        while ino != 0 {
            if !seen.insert(ino) || seen.len() > MAX_ORPHANS {
                tracing::warn!(
                    "{}: the orphan list loops or runs too long at inode {ino}",
                    self.label
                );
                break;
            }
            let next = match self.orphan_ok(ino) {
                Ok(i) => u32::from_le_bytes(i.raw[0x14..0x18].try_into().unwrap()) as u64,
                Err(e) => {
                    tracing::warn!("{}: orphan list: {e}; the rest is left", self.label);
                    break;
                }
            };
            out.push(ino);
            ino = next;
        }
        if self.sb.orphan_file_inum != 0 {
            if let Err(e) = self.orphan_file(&mut out) {
                tracing::warn!("{}: orphan file: {e}; the rest is left", self.label);
            }
        }
        out
    }

    /// Appends the orphan file's entries to `out`, up to the first bad one.
    fn orphan_file(&self, out: &mut Vec<u64>) -> io::Result<()> {
        let file = self.inode(self.sb.orphan_file_inum as u64)?;
        let bs = self.sb.block_size as u64;
        let blocks = (file.size / bs).min(MAX_ORPHAN_FILE_BLOCKS);
        let runs = self.data_runs(&file, 0, blocks)?;
        let mut b = vec![0u8; bs as usize];
        for n in 0..blocks {
            let Some(p) = super::find_run(&runs, n)
                .filter(|(r, _)| r.physical != 0)
                .map(|(r, _)| r.physical + (n - r.logical))
            else {
                return Err(corrupt(format!("block {n} is a hole")));
            };
            if p >= self.sb.blocks_count {
                return Err(corrupt(format!("block {n} lies outside the volume")));
            }
            self.dev.read_exact_at(p * bs, &mut b)?;
            let tail = b.len() - 8;
            if u32::from_le_bytes(b[tail..tail + 4].try_into().unwrap()) != ORPHAN_BLOCK_MAGIC {
                return Err(corrupt(format!("block {n} has no orphan block magic")));
            }
            for e in b[..tail].chunks_exact(4) {
                let ino = u32::from_le_bytes(e.try_into().unwrap()) as u64;
                if ino == 0 {
                    continue;
                }
                if out.len() >= MAX_ORPHANS {
                    return Err(corrupt("more orphans than are followed"));
                }
                self.orphan_ok(ino)?;
                out.push(ino);
            }
        }
        Ok(())
    }

    /// The orphan `ino`, if it is an inode in use (as ext4_orphan_get checks).
    fn orphan_ok(&self, ino: u64) -> io::Result<std::sync::Arc<Inode>> {
        let sb = &self.sb;
        if ino < sb.first_ino as u64 || ino > sb.inodes_count as u64 {
            return Err(corrupt(format!("orphan {ino} is no inode number in use")));
        }
        let ipg = sb.inodes_per_group as u64;
        let (g, idx) = ((ino - 1) / ipg, (ino - 1) % ipg);
        let gd = self.group(g)?;
        if gd.inode_uninit(sb) || gd.inode_bitmap == 0 || gd.inode_bitmap >= sb.blocks_count {
            return Err(corrupt(format!("orphan {ino} lies in no used inode table")));
        }
        let mut byte = [0u8; 1];
        self.dev
            .read_exact_at(gd.inode_bitmap * sb.block_size as u64 + idx / 8, &mut byte)?;
        if byte[0] >> (idx % 8) & 1 == 0 {
            return Err(corrupt(format!("orphan {ino} is free in its inode bitmap")));
        }
        self.inode(ino)
    }

    /// Adds what cleaning up orphan `ino` frees to `c`; whether it was deleted.
    fn clean_one(&self, ino: u64, c: &mut Cleanup) -> io::Result<bool> {
        let i = self.orphan_ok(ino)?;
        let bs = self.sb.block_size as u64;
        if i.links == 0 {
            let mut blocks = i.blocks.saturating_mul(512) / bs;
            // A shared xattr block only loses a reference.
            if i.file_acl != 0 && i.file_acl < self.sb.blocks_count {
                let mut h = [0u8; 8];
                self.dev.read_exact_at(i.file_acl * bs, &mut h)?;
                let magic = u32::from_le_bytes(h[0..4].try_into().unwrap());
                let refs = u32::from_le_bytes(h[4..8].try_into().unwrap());
                if magic == XATTR_MAGIC && refs > 1 {
                    blocks = blocks.saturating_sub(1 << self.sb.cluster_shift);
                }
            }
            c.inodes += 1;
            c.blocks += blocks;
            return Ok(true);
        }
        // ext4_truncate cuts regular files and directories only.
        if i.flags & FL_INLINE_DATA != 0 || !matches!(i.mode & 0xF000, 0x8000 | 0x4000) {
            return Ok(false);
        }
        // Every mapped block from the one past the last byte on goes.
        let first = i.size.div_ceil(bs);
        let per = bs / 4;
        let end = if i.flags & FL_EXTENTS != 0 {
            u32::MAX as u64
        } else {
            12 + per + per * per + per * per * per
        };
        if first >= end {
            return Ok(false);
        }
        let runs = self.data_runs(&i, first, end)?;
        let cut: u64 = runs
            .iter()
            .filter(|r| r.physical != 0)
            .map(|r| {
                let start = r.logical.max(first);
                (r.logical + r.len).saturating_sub(start)
            })
            .sum();
        if cut > 0 {
            c.blocks += cut;
            c.truncated.insert(ino, cut * (bs / 512));
        }
        Ok(false)
    }
}
