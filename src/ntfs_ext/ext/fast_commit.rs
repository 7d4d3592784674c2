//! ext4 fast commits: the compact log, in jbd2's fast-commit area after the regular
//! ring, of what an fsync changed since the last full commit (inode records, extents
//! added and removed, names created, linked and unlinked). Without it a crash copy of
//! a `fast_commit` volume loses every file fsynced since the last full commit: the
//! writes a database made durable. Replayed in memory on top of the journal replay,
//! with the kernel's rules (fs/ext4/fast_commit.c), never written anywhere.

use std::collections::{BTreeMap, HashMap};

use super::inode::{self, Inode, Run};
use super::sb::{ext4_crc, u16le, u32le};
use super::ExtFs;

const TAG_ADD_RANGE: u16 = 1;
const TAG_DEL_RANGE: u16 = 2;
const TAG_CREAT: u16 = 3;
const TAG_LINK: u16 = 4;
const TAG_UNLINK: u16 = 5;
const TAG_INODE: u16 = 6;
const TAG_PAD: u16 = 7;
const TAG_TAIL: u16 = 8;
const TAG_HEAD: u16 = 9;
/// Bytes of fast-commit area read at most (the kernel's default area is 256 blocks;
/// mke2fs gives a journal a 64th of it, 16 MiB of a 1 GiB journal): a hostile journal
/// superblock cannot make the scan read gigabytes.
pub const MAX_BYTES: u64 = 64 << 20;
/// Where `i_block` starts and where `i_generation` starts in an inode record: replay
/// takes the logged record but keeps the volume's `i_block` between them.
const I_BLOCK: usize = 0x28;
const I_GENERATION: usize = 0x64;
const EXTENT_MAGIC: u16 = 0xF30A;

/// One replayable record of a fast commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Logical blocks `lblk..lblk + len` map to `pblk..` (unwritten: read as zeros).
    AddRange {
        ino: u64,
        lblk: u64,
        len: u64,
        pblk: u64,
        unwritten: bool,
    },
    /// Logical blocks `lblk..lblk + len` are unmapped.
    DelRange { ino: u64, lblk: u64, len: u64 },
    /// A new inode gets its first name (a directory also gets its own empty block).
    Create {
        parent: u64,
        ino: u64,
        name: Vec<u8>,
    },
    /// An inode gets another name.
    Link {
        parent: u64,
        ino: u64,
        name: Vec<u8>,
    },
    /// A name goes away.
    Unlink {
        parent: u64,
        ino: u64,
        name: Vec<u8>,
    },
    /// An inode record as it was at the commit (its `i_block` is not taken).
    Inode { ino: u64, raw: Vec<u8> },
}

/// The kernel's checksum chain of a fast commit: crc32c from zero, no final inversion.
fn crc(seed: u32, data: &[u8]) -> u32 {
    ext4_crc(seed, data)
}

/// Whether a tag's value length is one the kernel accepts for it.
fn len_ok(tag: u16, len: usize, inode_size: usize) -> bool {
    match tag {
        TAG_ADD_RANGE => len == 16,
        TAG_DEL_RANGE => len == 12,
        TAG_CREAT | TAG_LINK | TAG_UNLINK => (9..=8 + 255).contains(&len),
        TAG_INODE => (4 + 128..=4 + inode_size).contains(&len),
        TAG_PAD => true,
        TAG_TAIL => len >= 8,
        TAG_HEAD => len == 8,
        _ => false,
    }
}

/// Decodes a tag's value (its length already checked).
fn decode(tag: u16, v: &[u8]) -> Option<Op> {
    let word = |o: usize| u32le(v, o) as u64;
    Some(match tag {
        TAG_ADD_RANGE => {
            let raw_len = u16le(v, 8) as u64;
            // An extent length past 32768 marks it unwritten (EXT_INIT_MAX_LEN).
            let (len, unwritten) = if raw_len > 32768 {
                (raw_len - 32768, true)
            } else {
                (raw_len, false)
            };
            Op::AddRange {
                ino: word(0),
                lblk: word(4),
                len,
                pblk: (u16le(v, 10) as u64) << 32 | word(12),
                unwritten,
            }
        }
        TAG_DEL_RANGE => Op::DelRange {
            ino: word(0),
            lblk: word(4),
            len: word(8),
        },
        TAG_CREAT | TAG_LINK | TAG_UNLINK => {
            let (parent, ino, name) = (word(0), word(4), v[8..].to_vec());
            match tag {
                TAG_CREAT => Op::Create { parent, ino, name },
                TAG_LINK => Op::Link { parent, ino, name },
                _ => Op::Unlink { parent, ino, name },
            }
        }
        TAG_INODE => Op::Inode {
            ino: word(0),
            raw: v[4..].to_vec(),
        },
        _ => return None,
    })
}

/// Reads the fast-commit area block by block as the kernel's recovery scan does: the
/// area must open with a head naming the transaction after the last full commit, and
/// only records up to the last tail whose transaction id and checksum both match count.
pub struct Scan {
    expected: u32,
    inode_size: usize,
    crc: u32,
    pending: Vec<Op>,
    valid: Vec<Op>,
    commits: u64,
    started: bool,
    done: bool,
}

impl Scan {
    /// A scan for the fast commits of transaction `expected_tid`.
    pub fn new(expected_tid: u32, inode_size: usize) -> Scan {
        Scan {
            expected: expected_tid,
            inode_size,
            crc: 0,
            pending: Vec::new(),
            valid: Vec::new(),
            commits: 0,
            started: false,
            done: false,
        }
    }

    /// Takes the next block of the area; false once the scan has ended.
    pub fn block(&mut self, b: &[u8]) -> bool {
        if self.done {
            return false;
        }
        if !self.started {
            if b.len() < 4 || u16le(b, 0) != TAG_HEAD {
                self.done = true;
                return false;
            }
            self.started = true;
        }
        let mut cur = 0usize;
        while cur + 4 <= b.len() {
            let tag = u16le(b, cur);
            let len = u16le(b, cur + 2) as usize;
            let at = cur + 4;
            if len > b.len() - at || !len_ok(tag, len, self.inode_size) {
                return self.end();
            }
            let v = &b[at..at + len];
            match tag {
                TAG_TAIL => {
                    // The tail's checksum covers the tag and its transaction id.
                    let c = crc(self.crc, &b[cur..at + 4]);
                    if u32le(v, 0) != self.expected || u32le(v, 4) != c {
                        return self.end();
                    }
                    self.valid.append(&mut self.pending);
                    self.commits += 1;
                    self.crc = 0;
                }
                TAG_HEAD => {
                    if u32le(v, 0) != 0 || u32le(v, 4) != self.expected {
                        return self.end(); // unknown features, or a stale area
                    }
                    self.crc = crc(self.crc, &b[cur..at + len]);
                }
                TAG_PAD => self.crc = crc(self.crc, &b[cur..at + len]),
                _ => {
                    let Some(op) = decode(tag, v) else {
                        return self.end();
                    };
                    self.crc = crc(self.crc, &b[cur..at + len]);
                    self.pending.push(op);
                }
            }
            cur = at + len;
        }
        true
    }

    fn end(&mut self) -> bool {
        self.done = true;
        false
    }

    /// The records of the complete fast commits, in order, and how many commits.
    pub fn finish(self) -> (Vec<Op>, u64) {
        (self.valid, self.commits)
    }
}

/// A directory's name changes in order: a name with an inode is added unless present
/// (as the kernel's link answers EEXIST), one without is removed.
#[derive(Debug, Default)]
pub struct DirEdits {
    /// Created by a fast commit: its blocks on the volume are not its own yet.
    pub fresh: bool,
    pub ops: Vec<(Vec<u8>, Option<u64>)>,
}

/// What the fast commits change, kept beside the volume and consulted before it.
#[derive(Debug, Default)]
pub struct FcState {
    /// Inode records as replay leaves them (checksum recomputed).
    pub inodes: HashMap<u64, Vec<u8>>,
    /// Whole extent maps of the inodes whose ranges changed, in logical order.
    pub runs: HashMap<u64, Vec<Run>>,
    pub dirs: HashMap<u64, DirEdits>,
}

/// Unmaps logical blocks `start..end` of an extent map keyed by logical start.
fn punch(map: &mut BTreeMap<u64, Run>, start: u64, end: u64) {
    let mut hit: Vec<u64> = Vec::new();
    if let Some((&k, r)) = map.range(..start).next_back() {
        if r.logical + r.len > start {
            hit.push(k);
        }
    }
    hit.extend(map.range(start..end).map(|(&k, _)| k));
    for k in hit {
        let r = map.remove(&k).unwrap();
        let rend = r.logical + r.len;
        if r.logical < start {
            map.insert(
                r.logical,
                Run {
                    len: start - r.logical,
                    ..r
                },
            );
        }
        if rend > end {
            let cut = end - r.logical;
            map.insert(
                end,
                Run {
                    logical: end,
                    len: rend - end,
                    physical: r.physical + cut,
                    unwritten: r.unwritten,
                },
            );
        }
    }
}

impl ExtFs {
    /// The inode record the replay so far leaves: a fast commit's, else the volume's,
    /// else (an inode table never initialised) zeros, as the kernel reads the slot.
    fn fc_record(&self, st: &FcState, ino: u64) -> Vec<u8> {
        if let Some(r) = st.inodes.get(&ino) {
            return r.clone();
        }
        self.raw_inode(ino)
            .unwrap_or_else(|_| vec![0u8; self.sb.inode_size as usize])
    }

    /// The extent map (by logical start) the replay so far leaves for `ino`; `None`
    /// (with a warning) when it is not extent-mapped or its tree is unreadable.
    fn fc_map<'a>(
        &self,
        st: &FcState,
        maps: &'a mut HashMap<u64, BTreeMap<u64, Run>>,
        ino: u64,
        budget: &mut u32,
    ) -> Option<&'a mut BTreeMap<u64, Run>> {
        use std::collections::hash_map::Entry;
        let slot = match maps.entry(ino) {
            Entry::Occupied(o) => return Some(o.into_mut()),
            Entry::Vacant(v) => v,
        };
        let raw = self.fc_record(st, ino);
        let node = Inode::parse(&self.sb, ino, raw, &self.label).ok()?;
        if node.flags & inode::FL_EXTENTS == 0 {
            tracing::warn!(
                "{}: fast commit changes the blocks of inode {ino}, which has no extent tree; not replayed",
                self.label
            );
            return None;
        }
        match inode::extent_runs_within(&*self.dev, &self.sb, &node, &self.label, budget) {
            Ok(runs) => Some(slot.insert(runs.into_iter().map(|r| (r.logical, r)).collect())),
            Err(e) => {
                tracing::warn!(
                    "{}: fast commit on inode {ino}: its extent tree: {e}; not replayed",
                    self.label
                );
                None
            }
        }
    }

    /// Applies fast-commit records in order to what this volume (already replayed
    /// through its journal) holds.
    pub(super) fn fast_commit_state(&self, ops: Vec<Op>) -> FcState {
        let mut st = FcState::default();
        let mut maps: HashMap<u64, BTreeMap<u64, Run>> = HashMap::new();
        // One budget of extent-tree nodes for all the trees replay walks: records
        // naming many inodes with looping trees cost what one such walk costs.
        let mut budget = inode::WALK_BUDGET;
        let isz = self.sb.inode_size as usize;
        let exists = |ino: u64| ino != 0 && ino <= self.sb.inodes_count as u64;
        for op in ops {
            match op {
                Op::Inode { ino, raw } => {
                    if !exists(ino) || raw.len() > isz || raw.len() < 128 {
                        continue;
                    }
                    let mut rec = self.fc_record(&st, ino);
                    rec[..I_BLOCK].copy_from_slice(&raw[..I_BLOCK]);
                    rec[I_GENERATION..raw.len()].copy_from_slice(&raw[I_GENERATION..]);
                    let flags = u32le(&rec, 0x20);
                    if flags & inode::FL_EXTENTS != 0 {
                        if u16le(&rec, I_BLOCK) != EXTENT_MAGIC {
                            // An empty tree whose root holds four extents.
                            rec[I_BLOCK..I_BLOCK + 12].fill(0);
                            rec[I_BLOCK..I_BLOCK + 2].copy_from_slice(&EXTENT_MAGIC.to_le_bytes());
                            rec[I_BLOCK + 4..I_BLOCK + 6].copy_from_slice(&4u16.to_le_bytes());
                        }
                    } else if flags & inode::FL_INLINE_DATA != 0 {
                        rec[I_BLOCK..I_GENERATION].copy_from_slice(&raw[I_BLOCK..I_GENERATION]);
                    }
                    inode::set_checksum(&self.sb, ino, &mut rec);
                    st.inodes.insert(ino, rec);
                }
                Op::AddRange {
                    ino,
                    lblk,
                    len,
                    pblk,
                    unwritten,
                } => {
                    let end = lblk + len;
                    if !exists(ino) || len == 0 || end > 1 << 32 {
                        continue;
                    }
                    if pblk == 0
                        || pblk
                            .checked_add(len)
                            .is_none_or(|e| e > self.sb.blocks_count)
                    {
                        tracing::warn!(
                            "{}: fast commit maps inode {ino} outside the volume; not replayed",
                            self.label
                        );
                        continue;
                    }
                    if let Some(map) = self.fc_map(&st, &mut maps, ino, &mut budget) {
                        punch(map, lblk, end);
                        map.insert(
                            lblk,
                            Run {
                                logical: lblk,
                                len,
                                physical: pblk,
                                unwritten,
                            },
                        );
                    }
                }
                Op::DelRange { ino, lblk, len } => {
                    if !exists(ino) || len == 0 {
                        continue;
                    }
                    if let Some(map) = self.fc_map(&st, &mut maps, ino, &mut budget) {
                        punch(map, lblk, lblk.saturating_add(len));
                    }
                }
                Op::Create { parent, ino, name } => {
                    if !exists(ino) || !exists(parent) {
                        continue;
                    }
                    let mut rec = self.fc_record(&st, ino);
                    if u16le(&rec, 0) & 0xF000 == 0x4000 {
                        st.dirs.insert(
                            ino,
                            DirEdits {
                                fresh: true,
                                ops: Vec::new(),
                            },
                        );
                    }
                    // The kernel sets a created inode's link count to one; the record
                    // logged after the name (if any) says what it became.
                    rec[0x1A..0x1C].copy_from_slice(&1u16.to_le_bytes());
                    inode::set_checksum(&self.sb, ino, &mut rec);
                    st.inodes.insert(ino, rec);
                    st.dirs
                        .entry(parent)
                        .or_default()
                        .ops
                        .push((name, Some(ino)));
                }
                Op::Link { parent, ino, name } => {
                    if exists(ino) && exists(parent) {
                        st.dirs
                            .entry(parent)
                            .or_default()
                            .ops
                            .push((name, Some(ino)));
                    }
                }
                Op::Unlink { parent, name, .. } => {
                    if exists(parent) {
                        st.dirs.entry(parent).or_default().ops.push((name, None));
                    }
                }
            }
        }
        for (ino, map) in maps {
            st.runs.insert(ino, map.into_values().collect());
        }
        st
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tag(out: &mut Vec<u8>, t: u16, v: &[u8]) {
        out.extend_from_slice(&t.to_le_bytes());
        out.extend_from_slice(&(v.len() as u16).to_le_bytes());
        out.extend_from_slice(v);
    }

    fn words(w: &[u32]) -> Vec<u8> {
        w.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    /// One block holding a head (if `head`), the given tags and a tail for `tid`
    /// (checksum right unless `bad`), padded to `bs`.
    fn commit(tid: u32, head: bool, tags: &[(u16, Vec<u8>)], bad: bool, bs: usize) -> Vec<u8> {
        let mut b = Vec::new();
        if head {
            tag(&mut b, TAG_HEAD, &words(&[0, tid]));
        }
        for (t, v) in tags {
            tag(&mut b, *t, v);
        }
        let mut c = crc(0, &b);
        let tail_len = bs - b.len() - 4;
        let mut t = Vec::new();
        t.extend_from_slice(&TAG_TAIL.to_le_bytes());
        t.extend_from_slice(&(tail_len as u16).to_le_bytes());
        t.extend_from_slice(&tid.to_le_bytes());
        c = crc(c, &t);
        if bad {
            c ^= 1;
        }
        b.extend_from_slice(&t);
        b.extend_from_slice(&c.to_le_bytes());
        b.resize(bs, 0);
        b
    }

    fn dentry(parent: u32, ino: u32, name: &[u8]) -> Vec<u8> {
        let mut v = words(&[parent, ino]);
        v.extend_from_slice(name);
        v
    }

    fn scan(blocks: &[Vec<u8>], tid: u32) -> (Vec<Op>, u64) {
        let mut s = Scan::new(tid, 256);
        for b in blocks {
            if !s.block(b) {
                break;
            }
        }
        s.finish()
    }

    #[test]
    fn complete_commits_replay_and_a_torn_one_does_not() {
        let a = commit(7, true, &[(TAG_CREAT, dentry(2, 12, b"a"))], false, 1024);
        let b = commit(7, false, &[(TAG_LINK, dentry(2, 12, b"b"))], false, 1024);
        let c = commit(7, false, &[(TAG_UNLINK, dentry(2, 12, b"a"))], true, 1024);
        let (ops, n) = scan(&[a, b, c], 7);
        assert_eq!(n, 2);
        assert_eq!(
            ops,
            vec![
                Op::Create {
                    parent: 2,
                    ino: 12,
                    name: b"a".to_vec()
                },
                Op::Link {
                    parent: 2,
                    ino: 12,
                    name: b"b".to_vec()
                }
            ]
        );
    }

    #[test]
    fn an_area_of_another_transaction_is_stale() {
        let a = commit(6, true, &[(TAG_CREAT, dentry(2, 12, b"a"))], false, 1024);
        assert_eq!(scan(std::slice::from_ref(&a), 7).1, 0);
        // A later block of an older transaction ends the scan after the good ones.
        let b = commit(7, true, &[(TAG_CREAT, dentry(2, 13, b"b"))], false, 1024);
        let stale = commit(6, false, &[(TAG_UNLINK, dentry(2, 13, b"b"))], false, 1024);
        let (ops, n) = scan(&[b, stale], 7);
        assert_eq!((ops.len(), n), (1, 1));
    }

    #[test]
    fn hostile_lengths_end_the_scan() {
        let mut b = Vec::new();
        tag(&mut b, TAG_HEAD, &words(&[0, 7]));
        tag(&mut b, TAG_ADD_RANGE, &[0; 12]); // too short for an extent
        b.resize(1024, 0);
        assert_eq!(scan(&[b], 7), (vec![], 0));
        let mut b = Vec::new();
        tag(&mut b, TAG_HEAD, &words(&[0, 7]));
        b.extend_from_slice(&TAG_PAD.to_le_bytes());
        b.extend_from_slice(&60000u16.to_le_bytes()); // past the block
        b.resize(1024, 0);
        assert_eq!(scan(&[b], 7), (vec![], 0));
    }

    #[test]
    fn ranges_decode_unwritten_and_high_blocks() {
        let mut v = words(&[12, 5]);
        v.extend_from_slice(&(32768u16 + 3).to_le_bytes());
        v.extend_from_slice(&1u16.to_le_bytes());
        v.extend_from_slice(&9u32.to_le_bytes());
        let b = commit(7, true, &[(TAG_ADD_RANGE, v)], false, 4096);
        let (ops, _) = scan(&[b], 7);
        assert_eq!(
            ops,
            vec![Op::AddRange {
                ino: 12,
                lblk: 5,
                len: 3,
                pblk: 1 << 32 | 9,
                unwritten: true
            }]
        );
    }

    #[test]
    fn punching_splits_and_trims_runs() {
        let mut m = BTreeMap::new();
        let run = |logical, len, physical| Run {
            logical,
            len,
            physical,
            unwritten: false,
        };
        m.insert(0, run(0, 10, 100));
        m.insert(10, run(10, 5, 300));
        m.insert(20, run(20, 10, 500));
        punch(&mut m, 5, 22);
        let got: Vec<Run> = m.into_values().collect();
        assert_eq!(got, vec![run(0, 5, 100), run(22, 8, 502)]);
    }
}
