//! In-memory jbd2 journal replay: the committed transactions of a crash-consistent
//! volume are laid over the volume as an overlay, never written anywhere.

use std::collections::HashMap;
use std::io;
use std::sync::Arc;

use super::fast_commit;
use crate::ntfs_ext::corrupt;
use crate::readat::ReadAt;

const MAGIC: u32 = 0xC03B_3998;
const T_DESCRIPTOR: u32 = 1;
const T_COMMIT: u32 = 2;
const T_SB_V1: u32 = 3;
const T_SB_V2: u32 = 4;
const T_REVOKE: u32 = 5;
const IN_64BIT: u32 = 0x2;
const IN_CSUM_V2: u32 = 0x8;
const IN_CSUM_V3: u32 = 0x10;
const IN_FAST_COMMIT: u32 = 0x20;
/// The older (v1) transaction checksum: CRC-32 over each transaction's descriptor and
/// data blocks, in its commit block (mount option `journal_checksum` without
/// metadata_csum).
const COMPAT_CHECKSUM: u32 = 0x1;
const F_ESCAPE: u32 = 1;
const F_SAME_UUID: u32 = 2;
const F_LAST_TAG: u32 = 8;
/// Fast-commit blocks when the superblock names none (JBD2_DEFAULT_FAST_COMMIT_BLOCKS).
const DEFAULT_FC_BLOCKS: u64 = 256;
/// The regular ring the kernel keeps at least before it sets fast-commit blocks apart.
const MIN_JOURNAL_BLOCKS: u64 = 1024;
/// Revoke records kept at most (about 100 MB): a real journal revokes a few thousand
/// blocks; a damaged one full of revoke blocks must not take the memory of the mount.
const MAX_REVOKES: usize = 4 << 20;

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
    /// Logged copies whose checksum failed and were not replayed (the volume keeps
    /// the copy before them), as the kernel and e2fsck skip them.
    pub bad_blocks: u64,
    /// Records of the complete fast commits after the last full commit, in order.
    pub fast_commits: Vec<fast_commit::Op>,
    /// How many fast commits those records came from.
    pub fc_commits: u64,
}

/// The jbd2 checksum (v2/v3) of `data` chained from `seed`: crc32c as ext4 uses it.
fn jcrc(seed: u32, data: &[u8]) -> u32 {
    super::sb::ext4_crc(seed, data)
}

/// CRC-32 (polynomial 0x04C11DB7) fed most significant bit first, without inversion:
/// the kernel's crc32_be, which the v1 transaction checksum chains from all ones.
fn crc32_be(mut crc: u32, data: &[u8]) -> u32 {
    const fn table() -> [u32; 256] {
        let mut t = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = (i as u32) << 24;
            let mut k = 0;
            while k < 8 {
                c = if c & 0x8000_0000 != 0 {
                    (c << 1) ^ 0x04C1_1DB7
                } else {
                    c << 1
                };
                k += 1;
            }
            t[i] = c;
            i += 1;
        }
        t
    }
    static TABLE: [u32; 256] = table();
    for &b in data {
        crc = (crc << 8) ^ TABLE[((crc >> 24) as u8 ^ b) as usize];
    }
    crc
}

/// Whether a descriptor or revoke block's tail checksum (its last 4 bytes, taken as
/// zero while summing) holds.
fn tail_ok(seed: u32, b: &[u8]) -> bool {
    let n = b.len() - 4;
    let crc = jcrc(jcrc(seed, &b[..n]), &[0; 4]);
    be32(b, n) == crc
}

/// Whether a commit block's checksum (h_chksum[0] at byte 16, zero while summing)
/// holds.
fn commit_ok(seed: u32, b: &[u8]) -> bool {
    let crc = jcrc(jcrc(jcrc(seed, &b[..16]), &[0; 4]), &b[20..]);
    be32(b, 16) == crc
}

/// Scans the journal and returns the overlay of committed transactions, with the
/// records of the fast commits that follow them (inode records of `inode_size` bytes
/// at most); `Ok(None)` when the journal is clean.
pub fn replay(
    dev: &dyn ReadAt,
    block_size: u64,
    inode_size: usize,
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
    // With fast commits the regular ring ends where the fast-commit area begins (the
    // kernel sets the area apart only when a ring of the minimum size is left).
    let fast = incompat & IN_FAST_COMMIT != 0;
    let mut last = maxlen;
    if fast {
        let n = match be32(&sb, 0x54) as u64 {
            0 => DEFAULT_FC_BLOCKS,
            n => n,
        };
        if maxlen.saturating_sub(n) >= MIN_JOURNAL_BLOCKS {
            last = maxlen - n;
        }
    }
    if first == 0 || first >= last || start < first || start >= last {
        return Err(corrupt("journal superblock has impossible bounds"));
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
    // Checksums (v2/v3) are seeded with the journal's UUID.
    let seed = jcrc(!0, &sb[0x30..0x40]);
    let checked = csum2 || csum3;
    let v1 = !checked && be32(&sb, 4) == T_SB_V2 && be32(&sb, 0x24) & COMPAT_CHECKSUM != 0;
    let mut v1_crc = !0u32;
    let wrap = |n: u64| {
        if n >= last {
            first + (n - last) % (last - first)
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
        /// The tag's checksum of the logged block (v3: 32 bits; v2: the low 16).
        csum: u32,
    }
    let mut tags: Vec<Tag> = Vec::new();
    let mut pending: Vec<Tag> = Vec::new();
    let mut revokes: HashMap<u64, u32> = HashMap::new();
    let mut pending_revokes: Vec<(u64, u32)> = Vec::new();
    let mut pos = start;
    // The log runs once around the ring at most: every block it takes (descriptor,
    // data, commit, revoke) counts, and the scan ends when the ring is used up, so a
    // damaged log that loops on itself ends there too.
    let ring = last - first;
    let mut taken = 0u64;
    let mut transactions = 0;
    // As the kernel's recovery scan does: a descriptor or revoke block failing its
    // checksum is judged at its commit block, by whether commit times still grow
    // (then the log is corrupt) or not (stale blocks of an older pass round the ring:
    // the log ends there); a commit block failing its own checksum ends the log
    // before its transaction.
    let mut suspect = false;
    let mut last_commit_time = 0u64;
    'log: while taken < ring {
        taken += 1;
        let b = read(pos)?;
        if be32(&b, 0) != MAGIC || be32(&b, 8) != seq {
            break;
        }
        match be32(&b, 4) {
            T_DESCRIPTOR => {
                if checked && !tail_ok(seed, &b) {
                    suspect = true;
                }
                if v1 {
                    v1_crc = crc32_be(v1_crc, &b);
                }
                let mut off = 12;
                let mut data = wrap(pos + 1);
                loop {
                    if off + tag_bytes > b.len() - tail {
                        break;
                    }
                    let t = &b[off..off + tag_bytes];
                    let lo = be32(t, 0) as u64;
                    let (flags, hi, csum) = if csum3 {
                        (
                            be32(t, 4),
                            if is64 { be32(t, 8) as u64 } else { 0 },
                            be32(t, 12),
                        )
                    } else {
                        (
                            u16::from_be_bytes([t[6], t[7]]) as u32,
                            if is64 { be32(t, 8) as u64 } else { 0 },
                            u16::from_be_bytes([t[4], t[5]]) as u32,
                        )
                    };
                    if taken == ring {
                        break 'log; // data blocks past the ring: not a real descriptor
                    }
                    taken += 1;
                    if v1 {
                        v1_crc = crc32_be(v1_crc, &read(data)?);
                    }
                    pending.push(Tag {
                        fs_block: hi << 32 | lo,
                        jblock: data,
                        escape: flags & F_ESCAPE != 0,
                        seq,
                        csum,
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
                let time = u64::from_be_bytes(b[48..56].try_into().unwrap());
                if suspect {
                    if time >= last_commit_time {
                        return Err(corrupt(format!(
                            "journal transaction {seq} fails its checksums"
                        )));
                    }
                    break; // stale blocks from an earlier round of the ring
                }
                // v1: checksum type 1 (CRC-32) of 4 bytes over the transaction's
                // blocks, or no checksum at all; v2/v3: the commit block's own.
                let failed = if v1 {
                    let found = be32(&b, 16);
                    let ok = (b[12] == 1 && b[13] == 4 && found == v1_crc)
                        || (b[12] == 0 && b[13] == 0 && found == 0);
                    v1_crc = !0;
                    (!ok).then_some("fails its checksum")
                } else {
                    (checked && !commit_ok(seed, &b)).then_some("commit block fails its checksum")
                };
                if let Some(what) = failed {
                    if time >= last_commit_time {
                        tracing::warn!(
                            "{label}: journal transaction {seq}: {what}; the log ends before it"
                        );
                    }
                    break;
                }
                last_commit_time = time;
                tags.append(&mut pending);
                for (blk, s) in pending_revokes.drain(..) {
                    let e = revokes.entry(blk).or_insert(s);
                    *e = (*e).max(s);
                }
                transactions += 1;
                seq = seq.wrapping_add(1);
            }
            T_REVOKE => {
                if checked && !tail_ok(seed, &b) {
                    suspect = true;
                }
                // Revoke blocks count whether or not the superblock names the revoke
                // feature (Linux 6.x logs them without it), as the kernel's recovery
                // takes them.
                let count = (be32(&b, 12) as usize).min(b.len() - tail);
                let rec = if is64 { 8 } else { 4 };
                let mut o = 16;
                while o + rec <= count {
                    let blk = if is64 {
                        u64::from_be_bytes(b[o..o + 8].try_into().unwrap())
                    } else {
                        be32(&b, o) as u64
                    };
                    if revokes.len() + pending_revokes.len() >= MAX_REVOKES {
                        return Err(corrupt("journal revokes more blocks than plausible"));
                    }
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
    // The fast commits of the transaction after the last full one, from the area's
    // first block (one block past the ring's end, as the kernel places it).
    if fast && last < maxlen {
        let mut scan = fast_commit::Scan::new(seq, inode_size);
        let end = maxlen.min(last + 1 + fast_commit::MAX_BYTES / block_size);
        for n in last + 1..end {
            match read(n) {
                Ok(b) if scan.block(&b) => {}
                Ok(_) => break,
                Err(e) => {
                    tracing::warn!("{label}: fast-commit block {n}: {e}; the area ends there");
                    break;
                }
            }
        }
        (out.fast_commits, out.fc_commits) = scan.finish();
    }
    // The newest logged copy of each block that is not revoked and (with checksums)
    // matches its tag is the one replay leaves on the volume: the kernel writes every
    // copy in order and skips those failing their checksum, so a bad newest copy
    // leaves the one before it. Only those candidates' blocks are read.
    for t in tags.iter().rev() {
        if out.blocks.contains_key(&t.fs_block)
            || revokes.get(&t.fs_block).is_some_and(|&rs| rs >= t.seq)
        {
            continue;
        }
        let p = map.physical(t.jblock)?;
        if checked {
            let mut b = vec![0u8; block_size as usize];
            dev.read_exact_at(p * block_size, &mut b)?;
            let crc = jcrc(jcrc(seed, &t.seq.to_be_bytes()), &b);
            let want = if csum3 { crc } else { crc & 0xFFFF };
            if t.csum != want {
                out.bad_blocks += 1;
                continue;
            }
        }
        out.blocks.insert(t.fs_block, (p, t.escape));
    }
    Ok(Some(out))
}

/// A volume with replayed journal blocks laid over it.
pub struct Overlay {
    base: Arc<dyn ReadAt>,
    /// Where the logged copies are: the volume, or an external journal device.
    journal: Arc<dyn ReadAt>,
    block_size: u64,
    blocks: HashMap<u64, (u64, bool)>,
}

impl Overlay {
    /// Lays `replay` over `base`, whose journal is inside it.
    pub fn new(base: Arc<dyn ReadAt>, block_size: u64, replay: Replay) -> Overlay {
        Overlay::with_journal(base.clone(), base, block_size, replay)
    }

    /// Lays `replay` over `base`, the logged copies read from `journal` (an external
    /// journal device, or `base` itself).
    pub fn with_journal(
        base: Arc<dyn ReadAt>,
        journal: Arc<dyn ReadAt>,
        block_size: u64,
        replay: Replay,
    ) -> Overlay {
        Overlay {
            base,
            journal,
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
                self.journal.read_exact_at(jp * bs, &mut b)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ntfs_ext::MemVolume;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// Journal block n at volume block n; counts the blocks read.
    struct Ident(AtomicU64);
    impl JournalMap for Ident {
        fn physical(&self, n: u64) -> io::Result<u64> {
            self.0.fetch_add(1, Ordering::Relaxed);
            Ok(n)
        }
    }

    fn header(b: &mut [u8], kind: u32, seq: u32) {
        b[0..4].copy_from_slice(&MAGIC.to_be_bytes());
        b[4..8].copy_from_slice(&kind.to_be_bytes());
        b[8..12].copy_from_slice(&seq.to_be_bytes());
    }

    /// A journal of `maxlen` blocks of `bs` bytes whose log starts at block 1 with
    /// sequence `seq` (32-bit tags, no checksums).
    fn journal(bs: usize, maxlen: u32, seq: u32) -> Vec<u8> {
        let mut j = vec![0u8; bs * maxlen as usize];
        header(&mut j, T_SB_V2, 0);
        for (o, v) in [
            (0xC, bs as u32),
            (0x10, maxlen),
            (0x14, 1),
            (0x18, seq),
            (0x1C, 1),
        ] {
            j[o..o + 4].copy_from_slice(&v.to_be_bytes());
        }
        j
    }

    /// A descriptor block at journal block `at` tagging the given volume blocks.
    fn descriptor(j: &mut [u8], bs: usize, at: usize, seq: u32, targets: &[u32]) {
        let b = &mut j[at * bs..(at + 1) * bs];
        header(b, T_DESCRIPTOR, seq);
        for (i, t) in targets.iter().enumerate() {
            let o = 12 + i * 8;
            b[o..o + 4].copy_from_slice(&t.to_be_bytes());
            let last = if i + 1 == targets.len() {
                F_LAST_TAG
            } else {
                0
            };
            b[o + 6..o + 8].copy_from_slice(&((F_SAME_UUID | last) as u16).to_be_bytes());
        }
    }

    fn run(j: Vec<u8>, bs: u64) -> (io::Result<Option<Replay>>, u64) {
        let map = Ident(AtomicU64::new(0));
        let r = replay(&MemVolume(j), bs, 256, &map, "test");
        (r, map.0.load(Ordering::Relaxed))
    }

    #[test]
    fn a_log_filling_the_whole_ring_is_replayed() {
        // Ring of blocks 1..=7, used to the last block by two transactions.
        let bs = 1024;
        let mut j = journal(bs, 8, 7);
        descriptor(&mut j, bs, 1, 7, &[50, 51]);
        j[2 * bs + 100] = 0xA2;
        j[3 * bs + 100] = 0xA3;
        header(&mut j[4 * bs..], T_COMMIT, 7);
        descriptor(&mut j, bs, 5, 8, &[52]);
        header(&mut j[7 * bs..], T_COMMIT, 8);
        let r = run(j, bs as u64).0.unwrap().unwrap();
        assert_eq!(r.transactions, 2);
        let mut got: Vec<(u64, u64)> = r.blocks.iter().map(|(&f, &(p, _))| (f, p)).collect();
        got.sort();
        assert_eq!(got, vec![(50, 2), (51, 3), (52, 6)]);
    }

    #[test]
    fn a_log_looping_on_itself_ends_at_the_ring() {
        // Every block a descriptor of the same transaction, each tagging as many
        // blocks as fit: without a bound on the blocks taken the scan would go round
        // and round, collecting tags.
        let bs = 1024;
        let maxlen = 64u32;
        let mut j = journal(bs, maxlen, 9);
        let targets: Vec<u32> = (100..100 + (bs as u32 - 12) / 8).collect();
        for at in 1..maxlen as usize {
            descriptor(&mut j, bs, at, 9, &targets);
        }
        let (r, reads) = run(j, bs as u64);
        let r = r.unwrap().unwrap();
        assert_eq!(
            (r.transactions, r.blocks.len()),
            (0, 0),
            "nothing committed"
        );
        assert!(
            reads <= maxlen as u64,
            "{reads} journal blocks read for a ring of {maxlen}"
        );
    }

    /// A v3-checksummed journal (ring of 16 blocks of 1 KiB, log from block 1, first
    /// sequence 5) holding one transaction per entry of `txs`: (volume block logged,
    /// commit time); each is a descriptor, its data block (filled with the volume block
    /// number) and a commit, all checksummed.
    fn csum_journal(txs: &[(u32, u64)]) -> Vec<u8> {
        let bs = 1024;
        let mut j = journal(bs, 16, 5);
        j[0x28..0x2C].copy_from_slice(&IN_CSUM_V3.to_be_bytes());
        j[0x30..0x40].copy_from_slice(&[7; 16]);
        let seed = jcrc(!0, &[7; 16]);
        for (i, &(target, time)) in txs.iter().enumerate() {
            let (at, seq) = (1 + 3 * i, 5 + i as u32);
            let data = &mut j[(at + 1) * bs..(at + 2) * bs];
            data.fill(target as u8);
            let crc = jcrc(jcrc(seed, &seq.to_be_bytes()), data);
            let d = &mut j[at * bs..(at + 1) * bs];
            header(d, T_DESCRIPTOR, seq);
            d[12..16].copy_from_slice(&target.to_be_bytes());
            d[16..20].copy_from_slice(&(F_SAME_UUID | F_LAST_TAG).to_be_bytes());
            d[24..28].copy_from_slice(&crc.to_be_bytes());
            let tail = jcrc(seed, &d[..bs - 4]);
            let tail = jcrc(tail, &[0; 4]);
            d[bs - 4..].copy_from_slice(&tail.to_be_bytes());
            let c = &mut j[(at + 2) * bs..(at + 3) * bs];
            header(c, T_COMMIT, seq);
            c[48..56].copy_from_slice(&time.to_be_bytes());
            let crc = jcrc(seed, c);
            c[16..20].copy_from_slice(&crc.to_be_bytes());
        }
        j
    }

    fn replayed(j: Vec<u8>) -> io::Result<Vec<u64>> {
        let r = run(j, 1024).0?.unwrap();
        let mut v: Vec<u64> = r.blocks.keys().copied().collect();
        v.sort();
        Ok(v)
    }

    #[test]
    fn checksummed_transactions_replay() {
        let j = csum_journal(&[(40, 100), (41, 101), (42, 102)]);
        assert_eq!(replayed(j).unwrap(), vec![40, 41, 42]);
    }

    #[test]
    fn a_commit_failing_its_checksum_ends_the_log_before_it() {
        let mut j = csum_journal(&[(40, 100), (41, 101), (42, 102)]);
        j[6 * 1024 + 200] ^= 1; // second transaction's commit block (1 + 3 + 2)
        assert_eq!(replayed(j).unwrap(), vec![40]);
    }

    #[test]
    fn a_bad_descriptor_before_a_newer_commit_is_corruption() {
        let mut j = csum_journal(&[(40, 100), (41, 101), (42, 102)]);
        j[4 * 1024 + 500] ^= 1; // second transaction's descriptor, past its tag
        let e = replayed(j).expect_err("corrupt log");
        assert!(e.to_string().contains("transaction 6"), "{e}");
    }

    #[test]
    fn a_bad_descriptor_before_an_older_commit_is_a_stale_end() {
        // Blocks left from an earlier round of the ring: commit times go back.
        let mut j = csum_journal(&[(40, 100), (41, 50), (42, 51)]);
        j[4 * 1024 + 500] ^= 1;
        assert_eq!(replayed(j).unwrap(), vec![40]);
    }

    #[test]
    fn a_damaged_logged_copy_leaves_the_one_before_it() {
        let mut j = csum_journal(&[(40, 100), (40, 101), (41, 102)]);
        j[5 * 1024 + 9] ^= 1; // second copy of block 40
        let r = run(j, 1024).0.unwrap().unwrap();
        assert_eq!(r.bad_blocks, 1);
        assert_eq!(
            r.blocks[&40],
            (2, false),
            "the first copy, at journal block 2"
        );
    }

    #[test]
    fn crc32_be_is_the_msb_first_crc() {
        // CRC-32/MPEG-2: the same polynomial and start, no reflection, no final xor.
        assert_eq!(crc32_be(!0, b"123456789"), 0x0376_E6E7);
    }

    #[test]
    fn a_flood_of_revokes_is_refused() {
        let bs = 4096;
        let per_block = (bs - 16) / 4;
        let blocks = MAX_REVOKES / per_block + 2;
        let mut j = journal(bs, blocks as u32 + 1, 3);
        for at in 1..=blocks {
            let b = &mut j[at * bs..(at + 1) * bs];
            header(b, T_REVOKE, 3);
            b[12..16].copy_from_slice(&(bs as u32).to_be_bytes());
            for (i, r) in b[16..].chunks_exact_mut(4).enumerate() {
                r.copy_from_slice(&((at * per_block + i) as u32).to_be_bytes());
            }
        }
        let e = run(j, bs as u64).0.expect_err("too many revokes");
        assert!(e.to_string().contains("revokes"), "{e}");
    }
}
