//! The backup pipeline: a planner thread finds holes and looks up the previous point's
//! quick hashes; one worker per core reads its batch (so reading the source runs on
//! every core), skips unchanged blocks by xxh3, and hashes (blake3) and compresses the
//! changed ones; the caller's thread writes. Bounded channels keep memory at a few
//! batches whatever the device size.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::{Arc, Mutex};

use anyhow::Context;

use crate::format::{self, Hash, Quick, SafeParams};

/// Blocks per batch handed to a worker.
const BATCH: u64 = 64;

/// What one device's scan needs.
pub struct Job<'a> {
    pub safe: PathBuf,
    pub file: &'a File,
    pub path: &'a Path,
    pub size: u64,
    pub device: i64,
    pub prev: Option<(i64, u64)>,
    pub runs: Vec<(u64, u64)>,
    pub params: SafeParams,
    pub zero_quick: Quick,
    /// A regular file: holes can be found with SEEK_DATA instead of read.
    pub sparse: bool,
    /// On a read error, salvage what reads and report the rest instead of failing.
    pub skip_unreadable: bool,
    /// Further reads of a sector that still fails before it counts as unreadable.
    pub retries: u32,
    /// Blocks a filesystem marks free (first block, count; sorted, disjoint): taken as
    /// zeros without reading them (`--skip-free`).
    pub free: Vec<(u64, u64)>,
}

/// The end (exclusive) of the free run holding block `b`, if one does.
fn free_until(free: &[(u64, u64)], b: u64) -> Option<u64> {
    let i = free.partition_point(|r| r.0 + r.1 <= b);
    free.get(i).filter(|r| r.0 <= b).map(|r| r.0 + r.1)
}

/// The first block after `b` that starts a free run, if any.
fn next_free(free: &[(u64, u64)], b: u64) -> Option<u64> {
    let i = free.partition_point(|r| r.0 <= b);
    free.get(i).map(|r| r.0)
}

/// Units a failed read is retried in: pages first, then sectors of the pages that
/// still fail, so one bad sector costs 512 bytes rather than a whole batch.
const SALVAGE_UNITS: [usize; 2] = [4096, 512];

// Batch buffers are O_DIRECT buffers: memory (and lengths and offsets, which block
// sizes of 4 KiB and more and device sizes give) aligned to the device's logical
// block size, at most 4 KiB.
pub use crate::readat::DIRECT_ALIGN;

/// A worker's batch buffer, its bytes starting on a [`DIRECT_ALIGN`] boundary.
#[derive(Default)]
struct IoBuf {
    raw: Vec<u8>,
    at: usize,
    len: usize,
}

impl IoBuf {
    fn resize(&mut self, len: usize) {
        if self.raw.len() < len + DIRECT_ALIGN {
            self.raw.resize(len + DIRECT_ALIGN, 0);
        }
        self.at = self.raw.as_ptr().align_offset(DIRECT_ALIGN);
        self.len = len;
    }

    fn bytes(&self) -> &[u8] {
        &self.raw[self.at..self.at + self.len]
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.raw[self.at..self.at + self.len]
    }
}

/// What a worker decided for one block.
pub enum BlockOutcome {
    /// Same content as at the previous point: nothing to record.
    Unchanged,
    /// Now all zeros: recorded without data.
    Zero,
    /// New content, hashed and (maybe) compressed.
    Data {
        hash: Hash,
        quick: Quick,
        codec: u8,
        stored: Vec<u8>,
    },
}

/// What the previous point held at a block.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Prev {
    /// No map row at all: reads as zeros, so a zero block needs no row.
    Absent,
    /// A non-zero row lies past the previous size (the device shrank, now grew): it
    /// must be overwritten even by zeros.
    Stale,
    /// The block's quick hash (the zero block's for a zero block).
    Quick(Quick),
}

/// A batch as planned: which blocks, whether they lie in a hole, what was there before.
struct Batch {
    start: u64,
    count: u64,
    hole: bool,
    prev: Vec<Prev>,
}

type Outcomes = Vec<(u64, BlockOutcome)>;

/// A worker's result for one batch.
pub struct Processed {
    /// What to record per block.
    pub outcomes: Outcomes,
    /// (offset, len) of source bytes that could not be read (stored as zeros).
    pub unreadable: Vec<(u64, u64)>,
}

/// Offset of the next data at or after `off` in a regular file (SEEK_DATA), or `None`
/// when the rest is a hole; filesystems without hole support report data everywhere.
fn next_data(file: &File, off: u64) -> Option<u64> {
    use std::os::unix::io::AsRawFd;
    let r = unsafe { libc::lseek(file.as_raw_fd(), off as libc::off_t, libc::SEEK_DATA) };
    if r >= 0 {
        Some(r as u64)
    } else if std::io::Error::last_os_error().raw_os_error() == Some(libc::ENXIO) {
        None
    } else {
        Some(off)
    }
}

fn plan_batch(
    job: &Job,
    safe: Option<&crate::safe_reader::Safe>,
    start: u64,
    count: u64,
) -> anyhow::Result<Batch> {
    let bs = job.params.block_size as u64;
    let off = start * bs;
    let len = (count * bs).min(job.size - off);
    let hole = (job.sparse && next_data(job.file, off).is_none_or(|d| d >= off + len))
        || free_until(&job.free, start).is_some_and(|end| end >= start + count);
    let mut prev = vec![Prev::Absent; count as usize];
    if let (Some((pp, psize)), Some(safe)) = (job.prev, safe) {
        let prev_blocks = psize.div_ceil(bs);
        let locs = safe.block_run(job.device, pp, start, count)?;
        for (i, l) in locs.into_iter().enumerate() {
            prev[i] = match l {
                None => Prev::Absent,
                Some(l) if start + (i as u64) >= prev_blocks && !l.is_zero() => Prev::Stale,
                Some(l) if l.is_zero() => Prev::Quick(job.zero_quick),
                Some(l) => Prev::Quick(l.quick),
            };
        }
    }
    Ok(Batch {
        start,
        count,
        hole,
        prev,
    })
}

/// Reads a batch's bytes into `data` (zero-padded past the end of the source). With
/// `skip_unreadable`, a failing read is retried in smaller units and what still fails
/// is zero-filled and returned as (offset, len) ranges.
fn read_batch(job: &Job, b: &Batch, buf: &mut IoBuf) -> anyhow::Result<Vec<(u64, u64)>> {
    let bs = job.params.block_size as u64;
    let total = (b.count * bs) as usize;
    buf.resize(total);
    let data = buf.bytes_mut();
    let off = b.start * bs;
    let len = (b.count * bs).min(job.size - off) as usize;
    if b.hole {
        data.fill(0);
        return Ok(Vec::new());
    }
    data[len..].fill(0);
    // Free blocks inside the batch are zeros; the runs between them are read.
    let mut bad = Vec::new();
    let mut i = 0u64;
    while i < b.count {
        let at = (i * bs) as usize;
        if at >= len {
            break;
        }
        let stop = match free_until(&job.free, b.start + i) {
            Some(end) => {
                let stop = (end - b.start).min(b.count);
                data[at..((stop * bs) as usize).min(len)].fill(0);
                i = stop;
                continue;
            }
            None => {
                next_free(&job.free, b.start + i).map_or(b.count, |f| (f - b.start).min(b.count))
            }
        };
        let end = ((stop * bs) as usize).min(len);
        bad.extend(read_part(job, &mut data[at..end], off + at as u64)?);
        i = stop;
    }
    Ok(bad)
}

/// Reads `data` at source offset `off`, salvaging with `skip_unreadable`; returns what
/// could not be read.
fn read_part(job: &Job, data: &mut [u8], off: u64) -> anyhow::Result<Vec<(u64, u64)>> {
    let len = data.len();
    match read_span(job, &mut data[..len], off) {
        Ok(()) => Ok(Vec::new()),
        Err(e) if job.skip_unreadable && media_error(&e, 0) => {
            let mut bad = Vec::new();
            salvage(job, &mut data[..len], off, 0, &mut bad)?;
            for r in &bad {
                tracing::warn!(
                    "source {}: bytes {}..{} unreadable ({e:#}); recorded as unreadable",
                    job.path.display(),
                    r.0,
                    r.0 + r.1
                );
            }
            Ok(bad)
        }
        Err(e) if media_error(&e, 0) => Err(anyhow::anyhow!(
            "{e:#} (--skip-unreadable records what can be read and marks the rest)"
        )),
        Err(e) => Err(e),
    }
}

/// Reads `data.len()` bytes at `off`, failing on a short source or a read error.
fn read_span(job: &Job, data: &mut [u8], off: u64) -> anyhow::Result<()> {
    let len = data.len();
    let mut done = 0;
    while done < len {
        match job.file.read_at(&mut data[done..len], off + done as u64) {
            Ok(0) => anyhow::bail!(
                "source {} ended at {} bytes, before its size {} (did it shrink during the backup?)",
                job.path.display(),
                off + done as u64,
                job.size
            ),
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                return Err(e).with_context(|| {
                    format!(
                        "reading source {} at offset {}",
                        job.path.display(),
                        off + done as u64
                    )
                })
            }
        }
    }
    Ok(())
}

/// Whether a failed read at salvage `level` is the medium's: worth retrying smaller
/// and recording. A vanished device (ENODEV, ENXIO) or a source that ended is not: the
/// backup fails rather than record a whole device as unreadable sector by sector.
/// EINVAL below the first level is an O_DIRECT read smaller than the device's
/// logical sector: that sector is as unreadable as its page.
fn media_error(e: &anyhow::Error, level: usize) -> bool {
    let Some(io) = e.downcast_ref::<std::io::Error>() else {
        return false;
    };
    match io.raw_os_error() {
        Some(libc::EIO | libc::ENODATA | libc::EILSEQ | libc::EBADMSG | libc::EREMOTEIO) => true,
        Some(libc::EINVAL) => level > 0,
        _ => false,
    }
}

/// Re-reads `data` (at source offset `off`) in units of `SALVAGE_UNITS[level]`,
/// descending a level for a unit that fails; zero-fills and reports (merged) what fails
/// at the last level. Errors that are not the medium's end the backup.
fn salvage(
    job: &Job,
    data: &mut [u8],
    off: u64,
    level: usize,
    bad: &mut Vec<(u64, u64)>,
) -> anyhow::Result<()> {
    let unit = SALVAGE_UNITS[level];
    let mut at = 0;
    while at < data.len() {
        let n = unit.min(data.len() - at);
        let piece = &mut data[at..at + n];
        match read_span(job, piece, off + at as u64) {
            Ok(()) => {}
            Err(e) if !media_error(&e, level) => return Err(e),
            Err(_) if level + 1 < SALVAGE_UNITS.len() => {
                salvage(job, piece, off + at as u64, level + 1, bad)?
            }
            Err(_) if retry(job, piece, off + at as u64)? => {}
            Err(_) => {
                piece.fill(0);
                let start = off + at as u64;
                crate::readat::push_range(bad, start, n as u64);
            }
        }
        at += n;
    }
    Ok(())
}

/// Reads a failing sector again, up to `job.retries` times: whether one read gave it.
/// Errors that are not the medium's end the backup.
fn retry(job: &Job, piece: &mut [u8], off: u64) -> anyhow::Result<bool> {
    for n in 1..=job.retries {
        match read_span(job, piece, off) {
            Ok(()) => {
                tracing::info!(
                    "source {}: bytes {off}..{} read on retry {n}",
                    job.path.display(),
                    off + piece.len() as u64
                );
                return Ok(true);
            }
            Err(e) if !media_error(&e, SALVAGE_UNITS.len()) => return Err(e),
            Err(_) => {}
        }
    }
    Ok(false)
}

fn process(
    batch: &Batch,
    data: &[u8],
    params: SafeParams,
    zero_quick: &Quick,
    cctx: &mut Option<zstd::bulk::Compressor<'static>>,
) -> anyhow::Result<Outcomes> {
    let bs = params.block_size as usize;
    let mut out = Vec::with_capacity(batch.prev.len());
    for (i, chunk) in data.chunks(bs).enumerate() {
        let b = batch.start + i as u64;
        let prev = batch.prev[i];
        let outcome = if batch.hole || format::is_zero(chunk) {
            if prev == Prev::Absent || prev == Prev::Quick(*zero_quick) {
                BlockOutcome::Unchanged
            } else {
                BlockOutcome::Zero
            }
        } else {
            let quick = format::quick_hash(chunk);
            if prev == Prev::Quick(quick) {
                BlockOutcome::Unchanged
            } else {
                let hash = *blake3::hash(chunk).as_bytes();
                let (codec, stored) = match cctx {
                    Some(c) => {
                        let z = c.compress(chunk).context("zstd compression")?;
                        if z.len() < chunk.len() {
                            (format::CODEC_ZSTD, z)
                        } else {
                            (format::CODEC_RAW, chunk.to_vec())
                        }
                    }
                    None => (format::CODEC_RAW, chunk.to_vec()),
                };
                BlockOutcome::Data {
                    hash,
                    quick,
                    codec,
                    stored,
                }
            }
        };
        out.push((b, outcome));
    }
    Ok(out)
}

/// Scans `job.runs`, calling `consume` on the writer thread for every processed batch.
pub fn run(
    job: Job,
    mut consume: impl FnMut(Processed) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let workers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    let (batch_tx, batch_rx) = sync_channel::<Batch>(workers * 4);
    let batch_rx: Arc<Mutex<Receiver<Batch>>> = Arc::new(Mutex::new(batch_rx));
    let (out_tx, out_rx) = sync_channel::<anyhow::Result<Processed>>(workers * 2);
    let job = &job;
    std::thread::scope(|scope| -> anyhow::Result<()> {
        let planner_tx = out_tx.clone();
        scope.spawn(move || {
            let fail = |e: anyhow::Error| {
                let _ = planner_tx.send(Err(e));
            };
            let safe = match job.prev {
                Some(_) => match crate::safe_reader::Safe::open(&job.safe) {
                    Ok(s) => Some(s),
                    Err(e) => return fail(e),
                },
                None => None,
            };
            let bs = job.params.block_size as u64;
            for &(first, count) in &job.runs {
                let end = first + count;
                let mut b = first;
                while b < end {
                    if job.sparse {
                        // Whole blocks inside a hole are zeros: skip them unless the
                        // previous point had data there.
                        let hole_end = match next_data(job.file, b * bs) {
                            None => end,
                            Some(d) => (d / bs).min(end),
                        };
                        if hole_end > b {
                            let first_row = match (&safe, job.prev) {
                                (Some(s), Some((pp, _))) => {
                                    match s.first_data_row(job.device, pp, b, hole_end) {
                                        Ok(r) => r,
                                        Err(e) => return fail(e),
                                    }
                                }
                                _ => None,
                            };
                            match first_row {
                                None => {
                                    b = hole_end;
                                    continue;
                                }
                                Some(q) => b = q,
                            }
                        }
                    }
                    let n = BATCH.min(end - b);
                    match plan_batch(job, safe.as_ref(), b, n) {
                        Ok(batch) => {
                            if batch_tx.send(batch).is_err() {
                                return;
                            }
                        }
                        Err(e) => return fail(e),
                    }
                    b += n;
                }
            }
        });
        for _ in 0..workers {
            let rx = batch_rx.clone();
            let tx = out_tx.clone();
            let params = job.params;
            let zero_quick = job.zero_quick;
            scope.spawn(move || {
                let mut cctx = if params.compression > 0 {
                    match zstd::bulk::Compressor::new(params.compression) {
                        Ok(c) => Some(c),
                        Err(e) => {
                            let _ = tx.send(Err(e.into()));
                            return;
                        }
                    }
                } else {
                    None
                };
                let mut data = IoBuf::default();
                loop {
                    let next = rx.lock().unwrap().recv();
                    let Ok(batch) = next else { return };
                    let r = read_batch(job, &batch, &mut data).and_then(|unreadable| {
                        process(&batch, data.bytes(), params, &zero_quick, &mut cctx).map(
                            |outcomes| Processed {
                                outcomes,
                                unreadable,
                            },
                        )
                    });
                    let failed = r.is_err();
                    if tx.send(r).is_err() || failed {
                        return;
                    }
                }
            });
        }
        drop(out_tx);
        // Only workers hold the batch receiver now: when they stop, the planner stops.
        drop(batch_rx);
        let mut result = Ok(());
        for r in out_rx.iter() {
            match r.and_then(&mut consume) {
                Ok(()) => {}
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        // Dropping the receiver makes every thread's next send fail, so they all stop.
        drop(out_rx);
        result
    })
}
