//! In-memory jbd2 journal replay: the committed transactions of a crash-consistent
//! volume are laid over the volume as an overlay, never written anywhere.

use std::collections::HashMap;
use std::io;
use std::sync::Arc;

use crate::ntfs_ext::corrupt;
use crate::readat::ReadAt;

const MAGIC: u32 = 0xC03B_3998;
const T_DESCRIPTOR: u32 = 1;
const T_COMMIT: u32 = 2;
const T_SB_V1: u32 = 3;
const T_SB_V2: u32 = 4;
const T_REVOKE: u32 = 5;
const IN_REVOKE: u32 = 0x1;
const IN_64BIT: u32 = 0x2;
const IN_CSUM_V2: u32 = 0x8;
const IN_CSUM_V3: u32 = 0x10;
const IN_FAST_COMMIT: u32 = 0x20;
const F_ESCAPE: u32 = 1;
const F_SAME_UUID: u32 = 2;
const F_LAST_TAG: u32 = 8;

fn be32(b: &[u8], o: usize) -> u32 {
    u32::from_be_bytes(b[o..o + 4].try_into().unwrap())
}

/// Where the journal's logical blocks are on the volume.
pub trait JournalMap {
    /// Volume block holding journal block `n`.
    fn physical(&self, n: u64) -> io::Result<u64>;
}

/// The result of a replay: volume block → (journal's volume block, escaped).
#[derive(Debug, Default)]
pub struct Replay {
    pub blocks: HashMap<u64, (u64, bool)>,
    pub transactions: u64,
}

/// Scans the journal and returns the overlay of committed transactions; `Ok(None)`
/// when the journal is clean.
pub fn replay(
    dev: &dyn ReadAt,
    block_size: u64,
    map: &dyn JournalMap,
    label: &str,
) -> io::Result<Option<Replay>> {
    let read = |n: u64| -> io::Result<Vec<u8>> {
        let p = map.physical(n)?;
        let mut b = vec![0u8; block_size as usize];
        dev.read_exact_at(p * block_size, &mut b)?;
        Ok(b)
    };
    let sb = read(0)?;
    if be32(&sb, 0) != MAGIC || !matches!(be32(&sb, 4), T_SB_V1 | T_SB_V2) {
        return Err(corrupt("journal superblock has a bad magic"));
    }
    if be32(&sb, 0xC) as u64 != block_size {
        return Err(corrupt("journal block size differs from the filesystem's"));
    }
    let maxlen = be32(&sb, 0x10) as u64;
    let first = be32(&sb, 0x14) as u64;
    let mut seq = be32(&sb, 0x18);
    let start = be32(&sb, 0x1C) as u64;
    if start == 0 {
        return Ok(None);
    }
    let incompat = if be32(&sb, 4) == T_SB_V2 {
        be32(&sb, 0x28)
    } else {
        0
    };
    if first == 0 || first >= maxlen || start < first || start >= maxlen {
        return Err(corrupt("journal superblock has impossible bounds"));
    }
    if incompat & IN_FAST_COMMIT != 0 {
        tracing::warn!(
            "{label}: journal has fast-commit blocks; only the regular journal is replayed"
        );
    }
    let is64 = incompat & IN_64BIT != 0;
    let csum3 = incompat & IN_CSUM_V3 != 0;
    let csum2 = incompat & IN_CSUM_V2 != 0;
    let tag_bytes = if csum3 {
        16
    } else {
        let mut t = 12 + if csum2 { 2 } else { 0 };
        if !is64 {
            t -= 4;
        }
        t
    };
    let tail = if csum2 || csum3 { 4 } else { 0 };
    let wrap = |n: u64| {
        if n >= maxlen {
            first + (n - maxlen) % (maxlen - first)
        } else {
            n
        }
    };

    // One pass collects transactions; replay decisions need the revokes of all
    // committed transactions, so tags are kept until the end.
    struct Tag {
        fs_block: u64,
        jblock: u64,
        escape: bool,
        seq: u32,
    }
    let mut tags: Vec<Tag> = Vec::new();
    let mut pending: Vec<Tag> = Vec::new();
    let mut revokes: HashMap<u64, u32> = HashMap::new();
    let mut pending_revokes: Vec<(u64, u32)> = Vec::new();
    let mut pos = start;
    let mut steps = 0u64;
    let mut transactions = 0;
    while steps < maxlen * 2 {
        steps += 1;
        let b = read(pos)?;
        if be32(&b, 0) != MAGIC || be32(&b, 8) != seq {
            break;
        }
        match be32(&b, 4) {
            T_DESCRIPTOR => {
                let mut off = 12;
                let mut data = wrap(pos + 1);
                loop {
                    if off + tag_bytes > b.len() - tail {
                        break;
                    }
                    let t = &b[off..off + tag_bytes];
                    let lo = be32(t, 0) as u64;
                    let (flags, hi) = if csum3 {
                        (be32(t, 4), if is64 { be32(t, 8) as u64 } else { 0 })
                    } else {
                        (
                            u16::from_be_bytes([t[6], t[7]]) as u32,
                            if is64 { be32(t, 8) as u64 } else { 0 },
                        )
                    };
                    pending.push(Tag {
                        fs_block: hi << 32 | lo,
                        jblock: data,
                        escape: flags & F_ESCAPE != 0,
                        seq,
                    });
                    data = wrap(data + 1);
                    off += tag_bytes;
                    if flags & F_SAME_UUID == 0 {
                        off += 16;
                    }
                    if flags & F_LAST_TAG != 0 {
                        break;
                    }
                }
                pos = data;
                continue;
            }
            T_COMMIT => {
                tags.append(&mut pending);
                for (blk, s) in pending_revokes.drain(..) {
                    let e = revokes.entry(blk).or_insert(s);
                    *e = (*e).max(s);
                }
                transactions += 1;
                seq = seq.wrapping_add(1);
            }
            T_REVOKE => {
                if incompat & IN_REVOKE == 0 && be32(&sb, 4) == T_SB_V2 {
                    tracing::warn!("{label}: revoke block without the revoke feature");
                }
                let count = (be32(&b, 12) as usize).min(b.len() - tail);
                let rec = if is64 { 8 } else { 4 };
                let mut o = 16;
                while o + rec <= count {
                    let blk = if is64 {
                        u64::from_be_bytes(b[o..o + 8].try_into().unwrap())
                    } else {
                        be32(&b, o) as u64
                    };
                    pending_revokes.push((blk, seq));
                    o += rec;
                }
            }
            _ => break,
        }
        pos = wrap(pos + 1);
    }
    if !pending.is_empty() {
        tracing::info!("{label}: last journal transaction is incomplete and is ignored");
    }
    let mut out = Replay {
        transactions,
        ..Default::default()
    };
    for t in tags {
        if revokes.get(&t.fs_block).is_some_and(|&rs| rs >= t.seq) {
            continue;
        }
        let p = map.physical(t.jblock)?;
        out.blocks.insert(t.fs_block, (p, t.escape));
    }
    Ok(Some(out))
}

/// A volume with replayed journal blocks laid over it.
pub struct Overlay {
    base: Arc<dyn ReadAt>,
    block_size: u64,
    blocks: HashMap<u64, (u64, bool)>,
}

impl Overlay {
    /// Lays `replay` over `base`.
    pub fn new(base: Arc<dyn ReadAt>, block_size: u64, replay: Replay) -> Overlay {
        Overlay {
            base,
            block_size,
            blocks: replay.blocks,
        }
    }
}

impl ReadAt for Overlay {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let size = self.base.size();
        if offset >= size {
            return Ok(0);
        }
        let want = buf.len().min((size - offset) as usize);
        let bs = self.block_size;
        let mut done = 0usize;
        while done < want {
            let pos = offset + done as u64;
            let blk = pos / bs;
            let in_blk = (pos % bs) as usize;
            // Extend over consecutive blocks that are not overlaid.
            if let Some(&(jp, escape)) = self.blocks.get(&blk) {
                let mut b = vec![0u8; bs as usize];
                self.base.read_exact_at(jp * bs, &mut b)?;
                if escape {
                    b[..4].copy_from_slice(&MAGIC.to_be_bytes());
                }
                let n = (bs as usize - in_blk).min(want - done);
                buf[done..done + n].copy_from_slice(&b[in_blk..in_blk + n]);
                done += n;
            } else {
                let mut end = (blk + 1) * bs;
                while end < offset + want as u64 && !self.blocks.contains_key(&(end / bs)) {
                    end += bs;
                }
                let n = ((end - pos) as usize).min(want - done);
                self.base.read_exact_at(pos, &mut buf[done..done + n])?;
                done += n;
            }
        }
        Ok(want)
    }

    fn size(&self) -> u64 {
        self.base.size()
    }

    /// Overlaid blocks come from the journal; the hint for the rest still holds.
    fn prefetch(&self, ranges: &[(u64, u64)]) {
        self.base.prefetch(ranges)
    }

    fn prefetches(&self) -> bool {
        self.base.prefetches()
    }
}
