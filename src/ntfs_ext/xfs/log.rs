//! XFS log recovery in memory: what the kernel replays when it mounts a volume that
//! was not cleanly unmounted (a snapshot of a running server), applied to an overlay
//! of the volume instead of the disk.
//!
//! The log is a ring of 512-byte basic blocks (BBs). Each record is a header (plus
//! extension headers for large records) and data whose every BB's first word was
//! replaced by the cycle number, kept in the headers. The head is where the cycle
//! number drops; the last record before it names the tail. Records from tail to head
//! carry operations of transactions; a committed transaction's items are replayed:
//! buffers (the logged 128-byte chunks, unless a later cancel says the blocks were
//! freed), inodes (the core, in the writer's byte order, and the logged forks) and
//! inode-chunk creations. Intents (extent frees and the like) change no tree and are
//! left out. Every length and count is checked against what holds it.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::sync::Arc;

use super::{be16, be32, be64, Sb};
use crate::ntfs_ext::corrupt;
use crate::readat::ReadAt;

const BB: u64 = 512;
const REC_MAGIC: u32 = 0xFEED_BABE;
/// Cycle words one header block holds (32 KiB of record data).
const CYCLE_WORDS: usize = 64;
const REC_SIZE: usize = 328; // header bytes covered by the checksum
const EXT_SIZE: usize = 260;
const MAX_RECORD: u64 = 256 * 1024;
/// The kernel's window of possibly torn in-flight writes before the head.
const SCAN_BBS: u64 = 8 * MAX_RECORD / BB;
const OP_TRANS: u8 = 0x69;
const START: u8 = 0x01;
const COMMIT: u8 = 0x02;
const CONTINUE: u8 = 0x04;
const WAS_CONT: u8 = 0x08;
const END: u8 = 0x10;
const UNMOUNT: u8 = 0x20;
const TRANS_MAGIC: u32 = 0x5452_414E;
const LI_INODE: u16 = 0x123b;
const LI_BUF: u16 = 0x123c;
const LI_ICREATE: u16 = 0x123f;
/// Intent items whose unfinished work would change file mappings.
const LI_MAPPING_INTENTS: [u16; 3] = [0x1244, 0x1246, 0x1248]; // BUI, ATTRI, XMI
const BLF_INODE_BUF: u16 = 0x1;
const BLF_CANCEL: u16 = 0x2;
const MAX_REGIONS: usize = 1024;
/// Most bytes of transactions held while reading the log.
const MAX_LOG_BYTES: usize = 1 << 30;

/// Byte order of the items (written in the writer's CPU order, recorded in h_fmt).
#[derive(Clone, Copy)]
struct Order(bool); // true: big-endian

impl Order {
    fn u16(self, b: &[u8], o: usize) -> u16 {
        let a = [b[o], b[o + 1]];
        if self.0 {
            u16::from_be_bytes(a)
        } else {
            u16::from_le_bytes(a)
        }
    }
    fn u32(self, b: &[u8], o: usize) -> u32 {
        let a = b[o..o + 4].try_into().unwrap();
        if self.0 {
            u32::from_be_bytes(a)
        } else {
            u32::from_le_bytes(a)
        }
    }
    fn u64(self, b: &[u8], o: usize) -> u64 {
        let a = b[o..o + 8].try_into().unwrap();
        if self.0 {
            u64::from_be_bytes(a)
        } else {
            u64::from_le_bytes(a)
        }
    }
}

/// Replayed sectors laid over the volume.
#[derive(Default)]
pub struct Overlay {
    bbs: BTreeMap<u64, Box<[u8; BB as usize]>>,
}

impl Overlay {
    fn read(&self, dev: &dyn ReadAt, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let n = dev.read_at(offset, buf)?;
        let end = offset + n as u64;
        for (&bb, data) in self.bbs.range(offset / BB..end.div_ceil(BB)) {
            let (lo, hi) = ((bb * BB).max(offset), (bb * BB + BB).min(end));
            buf[(lo - offset) as usize..(hi - offset) as usize]
                .copy_from_slice(&data[(lo - bb * BB) as usize..(hi - bb * BB) as usize]);
        }
        Ok(n)
    }

    fn read_exact(&self, dev: &dyn ReadAt, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        if self.read(dev, offset, buf)? != buf.len() {
            return Err(corrupt(format!(
                "log item names bytes past the volume at {offset}"
            )));
        }
        Ok(())
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        debug_assert!(offset % BB == 0 && data.len() as u64 % BB == 0);
        for (i, c) in data.chunks_exact(BB as usize).enumerate() {
            self.bbs
                .insert(offset / BB + i as u64, Box::new(c.try_into().unwrap()));
        }
    }
}

/// The volume as recovery leaves it.
pub struct Replayed {
    dev: Arc<dyn ReadAt>,
    overlay: Overlay,
}

impl ReadAt for Replayed {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        self.overlay.read(&*self.dev, offset, buf)
    }
    fn size(&self) -> u64 {
        self.dev.size()
    }
    fn prefetch(&self, ranges: &[(u64, u64)]) {
        self.dev.prefetch(ranges)
    }
    fn prefetches(&self) -> bool {
        self.dev.prefetches()
    }
}

/// What a replay did, for the log line.
pub struct Summary {
    pub transactions: usize,
    pub buffers: usize,
    pub inodes: usize,
    /// Unfinished intents that would have changed file mappings (not replayed).
    pub mapping_intents: usize,
    /// Inode items whose inode is not one on the volume (left as recorded).
    pub skipped: usize,
}

/// The log as a ring of BBs on the volume.
struct Log<'a> {
    dev: &'a dyn ReadAt,
    start: u64,
    bbs: u64,
}

impl Log<'_> {
    fn read(&self, blk: u64, n: u64) -> io::Result<Vec<u8>> {
        let mut out = vec![0u8; (n * BB) as usize];
        let mut done = 0;
        while done < n {
            let at = (blk + done) % self.bbs;
            let run = (n - done).min(self.bbs - at);
            let dst = &mut out[(done * BB) as usize..((done + run) * BB) as usize];
            self.dev.read_exact_at(self.start + at * BB, dst)?;
            done += run;
        }
        Ok(out)
    }

    fn cycle(&self, blk: u64) -> io::Result<u32> {
        Ok(block_cycle(&self.read(blk, 1)?))
    }

    /// First block in `lo..hi` whose cycle is `cycle`, given that blocks before it
    /// have another (binary search, as the kernel's xlog_find_cycle_start).
    fn cycle_start(&self, mut lo: u64, mut hi: u64, cycle: u32) -> io::Result<u64> {
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if self.cycle(mid)? == cycle {
                hi = mid;
            } else {
                lo = mid;
            }
        }
        Ok(hi)
    }

    /// The head: the block after the last one written.
    fn head(&self) -> io::Result<Option<u64>> {
        let (first, last) = (self.cycle(0)?, self.cycle(self.bbs - 1)?);
        if first == 0 {
            return Ok(None); // never written
        }
        let (mut head, stop) = if last == 0 {
            // The ring's end is still zeroed: the head is the first zero block.
            (self.cycle_start(0, self.bbs - 1, 0)?, 0)
        } else if first == last {
            (self.bbs, last.wrapping_sub(1))
        } else {
            (self.cycle_start(0, self.bbs - 1, last)?, last)
        };
        // In-flight writes may land out of order: an older cycle shortly before the
        // head marks where the log really ends.
        let from = head.saturating_sub(SCAN_BBS);
        let window = self.read(from, head - from)?;
        if let Some(i) = window
            .chunks_exact(BB as usize)
            .position(|b| block_cycle(b) == stop)
        {
            head = from + i as u64;
        }
        Ok(Some(head % self.bbs))
    }

    /// Header blocks of a record (one, plus extension headers for records over 32 KiB).
    fn header_blocks(h: &[u8]) -> u64 {
        let size = be32(h, 320) as u64;
        if be32(h, 8) & 2 != 0 && size > 32 * 1024 {
            size.div_ceil(32 * 1024)
        } else {
            1
        }
    }

    /// The record header nearest before `head` (searching back at most a record's
    /// worth of blocks past `SCAN_BBS`).
    fn header_before(&self, head: u64) -> io::Result<Option<u64>> {
        let span = (SCAN_BBS + MAX_RECORD / BB + 16).min(self.bbs);
        let from = (head + self.bbs - span) % self.bbs;
        let window = self.read(from, span)?;
        Ok(window
            .chunks_exact(BB as usize)
            .rposition(|b| be32(b, 0) == REC_MAGIC)
            .map(|i| (from + i as u64) % self.bbs))
    }
}

/// A log block's cycle number (a record header keeps it in its second word).
fn block_cycle(b: &[u8]) -> u32 {
    if be32(b, 0) == REC_MAGIC {
        be32(b, 4)
    } else {
        be32(b, 0)
    }
}

/// One record, unpacked.
struct Record {
    lsn: u64,
    tail: u64,
    ops: u32,
    data: Vec<u8>,
    blocks: u64,
}

fn read_record(log: &Log, blk: u64, sb: &Sb, uuid: &[u8; 16]) -> io::Result<Record> {
    let h = log.read(blk, 1)?;
    if be32(&h, 0) != REC_MAGIC {
        return Err(corrupt(format!("log block {blk}: no record header")));
    }
    let len = be32(&h, 12) as u64;
    if len > MAX_RECORD || be32(&h, 8) & !3 != 0 || be32(&h, 8) == 0 {
        return Err(corrupt(format!("log block {blk}: record of {len} bytes")));
    }
    if &h[304..320] != uuid && h[304..320].iter().any(|&b| b != 0) {
        return Err(corrupt(format!(
            "log block {blk}: record of another volume"
        )));
    }
    let hb = Log::header_blocks(&h);
    if hb > MAX_RECORD / (32 * 1024) + 1 {
        return Err(corrupt(format!("log block {blk}: {hb} header blocks")));
    }
    let headers = log.read(blk, hb)?;
    let mut data = log.read(blk + hb, len.div_ceil(BB))?;
    data.truncate(len as usize);
    if sb.v5 {
        let mut c = headers[..REC_SIZE].to_vec();
        c[32..36].fill(0);
        let mut crc = crc32c::crc32c(&c);
        for x in 1..hb as usize {
            crc = crc32c::crc32c_append(crc, &headers[x * 512..x * 512 + EXT_SIZE]);
        }
        crc = crc32c::crc32c_append(crc, &data);
        // mkfs writes its unmount record without a checksum (0), as the kernel allows.
        let stored = u32::from_le_bytes(h[32..36].try_into().unwrap());
        if stored != 0 && crc != stored {
            return Err(corrupt(format!(
                "log block {blk}: record checksum mismatch"
            )));
        }
    }
    // Put back each BB's first word, which the cycle stamp replaced.
    for (i, chunk) in data.chunks_mut(BB as usize).enumerate() {
        if chunk.len() < 4 {
            break;
        }
        let (x, k) = (i / CYCLE_WORDS, i % CYCLE_WORDS);
        let at = if x == 0 {
            44 + k * 4
        } else {
            x * 512 + 4 + k * 4
        };
        if at + 4 > headers.len() {
            return Err(corrupt(format!(
                "log block {blk}: cycle data past its headers"
            )));
        }
        chunk[..4].copy_from_slice(&headers[at..at + 4]);
    }
    Ok(Record {
        lsn: be64(&h, 16),
        tail: be64(&h, 24),
        ops: be32(&h, 40),
        data,
        blocks: hb + len.div_ceil(BB),
    })
}

/// A transaction being assembled: its items, each a list of regions.
#[derive(Default)]
struct Trans {
    lsn: u64,
    header: Vec<u8>,
    items: Vec<Vec<Vec<u8>>>,
    /// Regions the current (last) item expects.
    expect: usize,
}

impl Trans {
    fn add(&mut self, data: &[u8], o: Order) -> io::Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        if self.header.len() < 16 && self.items.is_empty() {
            if self.header.is_empty() && o.u32(data, 0) != TRANS_MAGIC {
                return Err(corrupt("log transaction without its header"));
            }
            if self.header.len() + data.len() > 16 {
                return Err(corrupt("log transaction header too long"));
            }
            self.header.extend_from_slice(data);
            return Ok(());
        }
        let full = self.items.last().is_none_or(|i| i.len() >= self.expect);
        if full {
            if data.len() < 4 {
                return Err(corrupt("log item shorter than its header"));
            }
            let n = o.u16(data, 2) as usize;
            if n == 0 || n > MAX_REGIONS {
                return Err(corrupt(format!("log item of {n} regions")));
            }
            self.expect = n;
            self.items.push(Vec::new());
        }
        self.items.last_mut().unwrap().push(data.to_vec());
        Ok(())
    }

    fn add_cont(&mut self, data: &[u8]) -> io::Result<()> {
        if self.items.is_empty() {
            if self.header.len() + data.len() > 16 {
                return Err(corrupt("log transaction header too long"));
            }
            self.header.extend_from_slice(data);
            return Ok(());
        }
        match self.items.last_mut().and_then(|i| i.last_mut()) {
            Some(r) => r.extend_from_slice(data),
            None => return Err(corrupt("continued log region without a start")),
        }
        Ok(())
    }
}

/// Where the part of a log that recovery must replay lies.
struct Live<'a> {
    /// The device holding the log (the volume, or its external log device).
    dev: &'a dyn ReadAt,
    start: u64,
    bbs: u64,
    head: u64,
    tail: u64,
    order: Order,
}

/// The device holding the log and where it starts there: inside the volume, or from
/// the start of `ext`, the external log device (`None` when it has none or that
/// device is not known).
fn log_place<'a>(
    dev: &'a dyn ReadAt,
    sb: &Sb,
    ext: Option<&'a dyn ReadAt>,
) -> io::Result<Option<(&'a dyn ReadAt, u64)>> {
    if sb.logstart != 0 {
        return Ok(Some((dev, sb.fsb_bytes(sb.logstart, sb.logblocks)?)));
    }
    let Some(ext) = ext else {
        return Ok(None);
    };
    if sb
        .logblocks
        .checked_mul(sb.bs)
        .is_none_or(|l| l > ext.size())
    {
        return Err(corrupt("the external log is larger than its device"));
    }
    Ok(Some((ext, 0)))
}

/// Finds the log's extent (on the volume, or on `ext` when it is external), its head
/// and tail; `Ok(None)` when it was cleanly unmounted (or never written, or is on a
/// device not given).
fn live_log<'a>(
    dev: &'a dyn ReadAt,
    sb: &Sb,
    uuid: &[u8; 16],
    ext: Option<&'a dyn ReadAt>,
) -> io::Result<Option<Live<'a>>> {
    let Some((dev, start)) = log_place(dev, sb, ext)? else {
        return Ok(None);
    };
    let bbs = sb.logblocks * sb.bs / BB;
    if bbs < 64 {
        return Err(corrupt(format!("log of {bbs} blocks")));
    }
    let log = Log { dev, start, bbs };
    let Some(mut head) = log.head()? else {
        return Ok(None);
    };
    // The last complete record before the head; a torn one moves the head back.
    let mut last = None;
    for _ in 0..8 {
        let Some(r) = log.header_before(head)? else {
            break;
        };
        match read_record(&log, r, sb, uuid) {
            Ok(rec) if (r + rec.blocks) % bbs == head => {
                last = Some((r, rec));
                break;
            }
            _ => head = r,
        }
    }
    let Some((last_blk, last_rec)) = last else {
        return Err(corrupt("no complete record before the log head"));
    };
    // A clean unmount leaves a lone unmount record at the head.
    if last_rec.ops == 1 && last_rec.data.len() >= 12 && last_rec.data[9] & UNMOUNT != 0 {
        return Ok(None);
    }
    Ok(Some(Live {
        dev,
        start,
        bbs,
        head,
        tail: (last_rec.tail & 0xFFFF_FFFF) % bbs,
        // h_fmt: 1 for little-endian Linux hosts, 2 and 3 big-endian.
        order: Order(be32(&log.read(last_blk, 1)?, 300) != 1),
    }))
}

/// Whether the log (on `ext` when external) holds work a mount would replay
/// (without replaying it).
pub fn needs_recovery(
    dev: &dyn ReadAt,
    sb: &Sb,
    uuid: &[u8; 16],
    ext: Option<&dyn ReadAt>,
) -> io::Result<bool> {
    Ok(live_log(dev, sb, uuid, ext)?.is_some())
}

/// Replays the live part of the log (see [`live_log`]) into an overlay; `Ok(None)`
/// when there is none.
pub fn replay(
    dev: Arc<dyn ReadAt>,
    ext: Option<&dyn ReadAt>,
    sb: &Sb,
    uuid: &[u8; 16],
    meta_uuid: &[u8; 16],
    label: &str,
) -> io::Result<Option<(Replayed, Summary)>> {
    let Some(live) = live_log(&*dev, sb, uuid, ext)? else {
        return Ok(None);
    };
    let (log, head, tail, o) = (
        Log {
            dev: live.dev,
            start: live.start,
            bbs: live.bbs,
        },
        live.head,
        live.tail,
        live.order,
    );
    let bbs = live.bbs;
    // Read the records from the tail to the head, assembling transactions.
    let mut open: HashMap<u32, Trans> = HashMap::new();
    let mut committed: Vec<Trans> = Vec::new();
    let (mut blk, mut held) = (tail, 0usize);
    let mut walked = 0u64;
    while blk != head {
        let rec = match read_record(&log, blk, sb, uuid) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!("{label}: XFS log replay stops at block {blk}: {e}");
                break;
            }
        };
        walked += rec.blocks;
        if walked > bbs {
            return Err(corrupt("log records run past the ring"));
        }
        let mut p = 0usize;
        for _ in 0..rec.ops {
            if p + 12 > rec.data.len() {
                return Err(corrupt(format!(
                    "log block {blk}: operation past its record"
                )));
            }
            let tid = be32(&rec.data, p);
            let len = be32(&rec.data, p + 4) as usize;
            let (client, flags) = (rec.data[p + 8], rec.data[p + 9]);
            p += 12;
            if p + len > rec.data.len() {
                return Err(corrupt(format!(
                    "log block {blk}: operation past its record"
                )));
            }
            let payload = &rec.data[p..p + len];
            p += len;
            if client != OP_TRANS {
                continue; // unmount records and the like
            }
            if flags & START != 0 {
                open.insert(
                    tid,
                    Trans {
                        lsn: rec.lsn,
                        ..Trans::default()
                    },
                );
                continue;
            }
            let Some(t) = open.get_mut(&tid) else {
                continue; // begun before the tail
            };
            held += len;
            if held > MAX_LOG_BYTES {
                return Err(corrupt("more live log than this reader holds"));
            }
            let mut f = flags & !END;
            if f & WAS_CONT != 0 {
                f &= !CONTINUE;
            }
            match f {
                0 | CONTINUE => t.add(payload, o)?,
                WAS_CONT => t.add_cont(payload)?,
                COMMIT => committed.push(open.remove(&tid).unwrap()),
                UNMOUNT => {
                    open.remove(&tid);
                }
                _ => return Err(corrupt(format!("log operation flags {flags:#x}"))),
            }
        }
        blk = (blk + rec.blocks) % bbs;
    }
    let mut r = Replayer {
        dev: &*dev,
        sb,
        o,
        meta_uuid,
        overlay: Overlay::default(),
        cancelled: HashMap::new(),
        summary: Summary {
            transactions: committed.len(),
            buffers: 0,
            inodes: 0,
            mapping_intents: 0,
            skipped: 0,
        },
    };
    // Pass 1: buffers freed later must not get their older contents back.
    for t in &committed {
        for item in &t.items {
            if let Some((blkno, len, flags)) = r.buf_item(item) {
                if flags & BLF_CANCEL != 0 {
                    *r.cancelled.entry((blkno, len)).or_insert(0) += 1;
                }
            }
        }
    }
    // Pass 2, in commit order; within a transaction buffers first, as the kernel.
    for t in &committed {
        let mut order: Vec<&Vec<Vec<u8>>> = Vec::with_capacity(t.items.len());
        let kind = |i: &Vec<Vec<u8>>| o.u16(&i[0], 0);
        order.extend(t.items.iter().filter(|i| {
            matches!(kind(i), LI_BUF | LI_ICREATE) && !r.is_cancel(i) && !r.is_inode_buf(i)
        }));
        order.extend(
            t.items
                .iter()
                .filter(|i| kind(i) == LI_BUF && r.is_inode_buf(i)),
        );
        order.extend(
            t.items
                .iter()
                .filter(|i| !matches!(kind(i), LI_BUF | LI_ICREATE)),
        );
        order.extend(
            t.items
                .iter()
                .filter(|i| kind(i) == LI_BUF && r.is_cancel(i)),
        );
        for item in order {
            r.apply(item, t.lsn)?;
        }
    }
    let summary = r.summary;
    let overlay = r.overlay;
    Ok(Some((Replayed { dev, overlay }, summary)))
}

struct Replayer<'a> {
    dev: &'a dyn ReadAt,
    sb: &'a Sb,
    o: Order,
    meta_uuid: &'a [u8; 16],
    overlay: Overlay,
    /// Cancelled buffers (daddr, BBs) and how many cancels are still ahead.
    cancelled: HashMap<(u64, u64), u32>,
    summary: Summary,
}

impl Replayer<'_> {
    /// (daddr, BBs, flags) of a buffer item.
    fn buf_item(&self, item: &[Vec<u8>]) -> Option<(u64, u64, u16)> {
        let f = &item[0];
        if f.len() < 24 || self.o.u16(f, 0) != LI_BUF {
            return None;
        }
        Some((self.o.u64(f, 8), self.o.u16(f, 6) as u64, self.o.u16(f, 4)))
    }
    fn is_cancel(&self, item: &[Vec<u8>]) -> bool {
        self.buf_item(item).is_some_and(|b| b.2 & BLF_CANCEL != 0)
    }
    fn is_inode_buf(&self, item: &[Vec<u8>]) -> bool {
        self.buf_item(item)
            .is_some_and(|b| b.2 & BLF_INODE_BUF != 0)
    }
    fn is_cancelled(&self, blkno: u64, len: u64) -> bool {
        self.cancelled.contains_key(&(blkno, len))
    }

    fn apply(&mut self, item: &[Vec<u8>], lsn: u64) -> io::Result<()> {
        match self.o.u16(&item[0], 0) {
            LI_BUF => self.buffer(item),
            LI_INODE => self.inode(item, lsn),
            LI_ICREATE => self.icreate(item),
            t if LI_MAPPING_INTENTS.contains(&t) => {
                self.summary.mapping_intents += 1;
                Ok(())
            }
            _ => Ok(()),
        }
    }

    fn buffer(&mut self, item: &[Vec<u8>]) -> io::Result<()> {
        let Some((blkno, len, flags)) = self.buf_item(item) else {
            return Err(corrupt("buffer log item too short"));
        };
        if flags & BLF_CANCEL != 0 {
            if let Some(n) = self.cancelled.get_mut(&(blkno, len)) {
                *n -= 1;
                if *n == 0 {
                    self.cancelled.remove(&(blkno, len));
                }
            }
            return Ok(());
        }
        if self.is_cancelled(blkno, len) {
            return Ok(());
        }
        // An inode buffer logs only its inodes' unlinked-list pointers.
        let inode_buf = flags & BLF_INODE_BUF != 0;
        if len == 0 || len > 128 {
            return Err(corrupt(format!("buffer log item of {len} blocks")));
        }
        let f = &item[0];
        let words = self.o.u32(f, 16) as usize;
        if 20 + words * 4 > f.len() {
            return Err(corrupt("buffer log item map past its region"));
        }
        let bit = |n: usize| self.o.u32(f, 20 + (n / 32) * 4) >> (n % 32) & 1 != 0;
        let at = blkno
            .checked_mul(BB)
            .ok_or_else(|| corrupt(format!("buffer log item at block {blkno}")))?;
        let mut buf = vec![0u8; (len * BB) as usize];
        self.overlay.read_exact(self.dev, at, &mut buf)?;
        let (mut n, mut region) = (0usize, 1usize);
        let bits = (words * 32).min(buf.len() / 128);
        while n < bits {
            if !bit(n) {
                n += 1;
                continue;
            }
            let run = (n..bits).take_while(|&k| bit(k)).count();
            let Some(src) = item.get(region) else {
                return Err(corrupt("buffer log item has fewer regions than its map"));
            };
            let bytes = (run * 128).min(src.len());
            if inode_buf {
                self.next_unlinked(&mut buf, n * 128, &src[..bytes])?;
            } else {
                buf[n * 128..n * 128 + bytes].copy_from_slice(&src[..bytes]);
            }
            region += 1;
            n += run;
        }
        self.overlay.write(at, &buf);
        self.summary.buffers += 1;
        Ok(())
    }

    /// Copies the unlinked-list pointers (di_next_unlinked) that the logged region
    /// `src`, at byte `start` of the inode buffer `buf`, covers; nothing else of an
    /// inode buffer item is replayed (xlog_recover_do_inode_buffer).
    fn next_unlinked(&self, buf: &mut [u8], start: usize, src: &[u8]) -> io::Result<()> {
        let isize = self.sb.isize as usize;
        for slot in (0..buf.len() / isize).map(|i| i * isize) {
            let at = slot + 0x60;
            if at < start || at + 4 > start + src.len() {
                continue;
            }
            let next = &src[at - start..at - start + 4];
            if next == [0; 4] {
                return Err(corrupt(
                    "inode buffer log item sets an unlinked pointer to 0",
                ));
            }
            buf[at..at + 4].copy_from_slice(next);
            if self.sb.v5 && buf[slot + 4] == 3 {
                seal_inode(&mut buf[slot..slot + isize]);
            }
        }
        Ok(())
    }

    fn inode(&mut self, item: &[Vec<u8>], lsn: u64) -> io::Result<()> {
        let (o, sb) = (self.o, self.sb);
        let f = &item[0];
        // The 56-byte format, or the 52-byte one 32-bit hosts write.
        let (fields, asize, dsize, ino, blkno, blen, boff, rdev) = match f.len() {
            56 => (
                o.u32(f, 4),
                o.u16(f, 8) as usize,
                o.u16(f, 10) as usize,
                o.u64(f, 16),
                o.u64(f, 40),
                o.u32(f, 48) as u64,
                o.u32(f, 52) as u64,
                o.u32(f, 24),
            ),
            52 => (
                o.u32(f, 4),
                o.u16(f, 8) as usize,
                o.u16(f, 10) as usize,
                o.u64(f, 12),
                o.u64(f, 36),
                o.u32(f, 44) as u64,
                o.u32(f, 48) as u64,
                o.u32(f, 20),
            ),
            n => return Err(corrupt(format!("inode log item of {n} bytes"))),
        };
        if self.is_cancelled(blkno, blen) {
            return Ok(());
        }
        let Some(core) = item.get(1) else {
            return Err(corrupt("inode log item without its core"));
        };
        let isize = sb.isize as usize;
        let at = blkno
            .checked_mul(BB)
            .and_then(|a| a.checked_add(boff))
            .ok_or_else(|| corrupt(format!("inode {ino}: log names block {blkno}")))?;
        if boff + isize as u64 > blen * BB {
            return Err(corrupt(format!(
                "inode {ino}: log names it outside its buffer"
            )));
        }
        let mut d = vec![0u8; isize];
        self.overlay.read_exact(self.dev, at, &mut d)?;
        if be16(&d, 0) != super::INODE_MAGIC || o.u16(core, 0) != super::INODE_MAGIC {
            self.summary.skipped += 1;
            return Ok(());
        }
        let v3 = sb.v5;
        if v3 {
            let disk_lsn = be64(&d, 0x70);
            // Strictly newer: checkpoints starting in one record share an LSN.
            if disk_lsn != 0 && disk_lsn != u64::MAX && disk_lsn > lsn {
                return Ok(()); // written back since
            }
        } else if o.u16(core, 0x1E) < be16(&d, 0x1E) && be16(&d, 0x1E) != u16::MAX {
            return Ok(()); // flushed since (v2 flush counter)
        }
        let core_len = if v3 { 176 } else { 96 };
        if core.len() < core_len {
            return Err(corrupt(format!(
                "inode {ino}: logged core of {} bytes",
                core.len()
            )));
        }
        log_dinode_to_disk(core, &mut d, o, v3, lsn);
        let lit = if v3 { 176 } else { 100 };
        let forkoff = d[0x52] as usize * 8;
        if lit + forkoff > isize {
            return Err(corrupt(format!(
                "inode {ino}: logged fork offset past the inode"
            )));
        }
        let dend = if forkoff == 0 { isize } else { lit + forkoff };
        let mut next = 2;
        const DDATA: u32 = 0x2;
        const DEXT: u32 = 0x4;
        const DBROOT: u32 = 0x8;
        const DEV: u32 = 0x10;
        const ADATA: u32 = 0x40;
        const AEXT: u32 = 0x80;
        const ABROOT: u32 = 0x100;
        if fields & (DDATA | DEXT | DBROOT) != 0 {
            let src = item
                .get(next)
                .ok_or_else(|| corrupt("inode log item without its data fork"))?;
            next += 1;
            let n = dsize.min(src.len());
            let fork = &mut d[lit..dend];
            if fields & DBROOT != 0 {
                broot_to_disk(&src[..n], fork, sb.v5)?;
            } else {
                let n = n.min(fork.len());
                fork[..n].copy_from_slice(&src[..n]);
            }
        } else if fields & DEV != 0 && dend >= lit + 4 {
            d[lit..lit + 4].copy_from_slice(&rdev.to_be_bytes());
        }
        if fields & (ADATA | AEXT | ABROOT) != 0 {
            if forkoff == 0 {
                return Err(corrupt(format!(
                    "inode {ino}: logged attribute fork without room"
                )));
            }
            let src = item
                .get(next)
                .ok_or_else(|| corrupt("inode log item without its attribute fork"))?;
            let n = asize.min(src.len());
            let fork = &mut d[dend..];
            if fields & ABROOT != 0 {
                broot_to_disk(&src[..n], fork, sb.v5)?;
            } else {
                let n = n.min(fork.len());
                fork[..n].copy_from_slice(&src[..n]);
            }
        }
        if v3 {
            seal_inode(&mut d);
        }
        // Whole BBs into the overlay.
        let first = at / BB * BB;
        let mut bbs = vec![0u8; ((at + isize as u64).div_ceil(BB) * BB - first) as usize];
        self.overlay.read_exact(self.dev, first, &mut bbs)?;
        bbs[(at - first) as usize..(at - first) as usize + isize].copy_from_slice(&d);
        self.overlay.write(first, &bbs);
        self.summary.inodes += 1;
        Ok(())
    }

    /// A new inode chunk: every inode in it initialised, as the kernel's
    /// xfs_ialloc_inode_init writes them.
    fn icreate(&mut self, item: &[Vec<u8>]) -> io::Result<()> {
        let f = &item[0];
        if f.len() < 28 {
            return Err(corrupt("inode-create log item too short"));
        }
        let sb = self.sb;
        let (ag, agbno, count, isize, length, gen) = (
            be32(f, 4) as u64,
            be32(f, 8) as u64,
            be32(f, 12) as u64,
            be32(f, 16) as u64,
            be32(f, 20) as u64,
            be32(f, 24),
        );
        if isize != sb.isize || count == 0 || count > 1024 || count * isize != length * sb.bs {
            return Err(corrupt("inode-create log item does not fit the volume"));
        }
        let at = sb.fsb_bytes((ag << sb.agblklog) | agbno, length)?;
        let bbs = length * sb.bs / BB;
        if self.is_cancelled(at / BB, bbs) {
            return Ok(());
        }
        let mut chunk = vec![0u8; (length * sb.bs) as usize];
        let first_ino = (ag << (sb.agblklog + sb.inopblog)) | (agbno << sb.inopblog);
        for (i, d) in chunk.chunks_exact_mut(isize as usize).enumerate() {
            d[0..2].copy_from_slice(&super::INODE_MAGIC.to_be_bytes());
            d[4] = if sb.v5 { 3 } else { 2 };
            d[0x5C..0x60].copy_from_slice(&gen.to_be_bytes());
            d[0x60..0x64].copy_from_slice(&u32::MAX.to_be_bytes());
            if sb.v5 {
                d[0x98..0xA0].copy_from_slice(&(first_ino + i as u64).to_be_bytes());
                d[0xA0..0xB0].copy_from_slice(self.meta_uuid);
                seal_inode(d);
            }
        }
        self.overlay.write(at, &chunk);
        Ok(())
    }
}

/// Sets a v3 inode's CRC (little-endian at 0x64) over its bytes, as the kernel does
/// when it writes one back.
fn seal_inode(d: &mut [u8]) {
    d[0x64..0x68].fill(0);
    let crc = crc32c::crc32c(d);
    d[0x64..0x68].copy_from_slice(&crc.to_le_bytes());
}

/// Writes a logged inode core (in the writer's byte order) over the on-disk inode `d`
/// (big-endian), as xfs_log_dinode_to_disk does; the LSN becomes the replayed one.
fn log_dinode_to_disk(l: &[u8], d: &mut [u8], o: Order, v3: bool, lsn: u64) {
    let put16 = |d: &mut [u8], at: usize| {
        let v = o.u16(l, at);
        d[at..at + 2].copy_from_slice(&v.to_be_bytes());
    };
    for at in [0x0, 0x2, 0x6, 0x14, 0x16, 0x50, 0x58, 0x5A] {
        put16(d, at);
    }
    d[4] = l[4];
    d[5] = l[5];
    let put32 = |d: &mut [u8], at: usize| {
        let v = o.u32(l, at);
        d[at..at + 4].copy_from_slice(&v.to_be_bytes());
    };
    // di_next_unlinked (0x60) stays as on disk: inode-buffer items carry it.
    for at in [0x8, 0xC, 0x10, 0x48, 0x4C, 0x54, 0x5C] {
        put32(d, at);
    }
    d[0x52] = l[0x52];
    d[0x53] = l[0x53];
    let put64 = |d: &mut [u8], at: usize| {
        let v = o.u64(l, at);
        d[at..at + 8].copy_from_slice(&v.to_be_bytes());
    };
    for at in [0x38, 0x40] {
        put64(d, at);
    }
    let flags2 = if v3 { o.u64(l, 0x78) } else { 0 };
    let bigtime = flags2 & super::FLAG2_BIGTIME != 0;
    let time = |d: &mut [u8], at: usize| {
        if bigtime {
            let v = o.u64(l, at);
            d[at..at + 8].copy_from_slice(&v.to_be_bytes());
        } else {
            let (s, ns) = (o.u32(l, at), o.u32(l, at + 4));
            d[at..at + 4].copy_from_slice(&s.to_be_bytes());
            d[at + 4..at + 8].copy_from_slice(&ns.to_be_bytes());
        }
    };
    for at in [0x20, 0x28, 0x30] {
        time(d, at);
    }
    if v3 {
        // di_big_nextents (NREXT64) or padding.
        put64(d, 0x18);
        put64(d, 0x68);
        d[0x70..0x78].copy_from_slice(&lsn.to_be_bytes());
        put64(d, 0x78);
        put32(d, 0x80);
        d[0x84..0x90].copy_from_slice(&l[0x84..0x90]);
        time(d, 0x90);
        put64(d, 0x98);
        d[0xA0..0xB0].copy_from_slice(&l[0xA0..0xB0]);
    } else {
        d[0x18..0x1E].copy_from_slice(&l[0x18..0x1E]);
        put16(d, 0x1E);
    }
}

/// A block-map btree root as the kernel logs it (a long-format btree block: header,
/// keys and pointers for the logged size) in the fork's on-disk form (level,
/// count, keys and pointers for the fork's size).
fn broot_to_disk(src: &[u8], fork: &mut [u8], v5: bool) -> io::Result<()> {
    let hdr = if v5 { 72 } else { 24 };
    if src.len() < hdr || fork.len() < 4 {
        return Err(corrupt("logged btree root too short"));
    }
    let (level, n) = (be16(src, 4), be16(src, 6) as usize);
    let inmax = (src.len() - hdr) / 16;
    let dmax = (fork.len() - 4) / 16;
    if n > inmax || n > dmax {
        return Err(corrupt(format!("logged btree root of {n} records")));
    }
    fork.fill(0);
    fork[0..2].copy_from_slice(&level.to_be_bytes());
    fork[2..4].copy_from_slice(&(n as u16).to_be_bytes());
    for i in 0..n {
        let k = hdr + i * 8;
        let p = hdr + inmax * 8 + i * 8;
        fork[4 + i * 8..4 + i * 8 + 8].copy_from_slice(&src[k..k + 8]);
        fork[4 + dmax * 8 + i * 8..4 + dmax * 8 + i * 8 + 8].copy_from_slice(&src[p..p + 8]);
    }
    Ok(())
}
