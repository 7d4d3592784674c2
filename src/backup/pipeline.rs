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
    /// Plan each run's batches from its end back (a later pass over a failing source).
    pub backward: bool,
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

/// A failing source (`skip_unreadable`) is read in three passes, as rescue tools do,
/// so that a worn area is left at once instead of being read sector by sector while
/// the rest of the disk waits. The first reads what reads and puts off a batch whose
/// read fails whole, with the batches after it up to a window that doubles with each
/// failure in a row (up to a hundredth of the source, or 16 batches on a small one);
/// the second reads what was put off from its end back (reaching the good blocks the
/// window skipped before the worn area's again), putting off only batches that fail;
/// the third reads those, salvaging page by page and sector by sector.
struct Defer {
    /// Batches put off (first block, count), in the order they were.
    put_off: Vec<(u64, u64)>,
    /// Batches starting in `from..until` are put off without being read.
    from: u64,
    until: u64,
    /// Blocks skipped past the next failure (none in the second pass).
    skip: u64,
    max_skip: u64,
}

impl Defer {
    /// For a source of `blocks`; `window`: skip past failures (the first pass).
    fn new(blocks: u64, window: bool) -> Defer {
        let max_skip = if window {
            (blocks / 100).max(16 * BATCH)
        } else {
            0
        };
        Defer {
            put_off: Vec::new(),
            from: 0,
            until: 0,
            skip: max_skip.min(BATCH),
            max_skip,
        }
    }

    fn put(&mut self, b: &Batch) {
        crate::readat::push_range(&mut self.put_off, b.start, b.count);
    }

    /// Whether `b` lies in the window skipped after a failure (then it is put off).
    fn skips(&mut self, b: &Batch) -> bool {
        let inside = (self.from..self.until).contains(&b.start);
        if inside {
            self.put(b);
        }
        inside
    }

    /// `b` failed to read: put it off and skip further past it.
    fn failed(&mut self, b: &Batch) {
        self.put(b);
        if self.max_skip == 0 {
            return;
        }
        let end = b.start + b.count;
        if !(self.from..=self.until).contains(&b.start) {
            self.from = b.start;
        }
        self.until = self.until.max(end + self.skip);
        self.skip = (self.skip * 2).min(self.max_skip);
    }

    /// `b` read: past the skipped window, the next failure starts a small window again.
    fn read(&mut self, b: &Batch) {
        if b.start >= self.until {
            self.skip = self.max_skip.min(BATCH);
        }
    }

    /// What was put off, as sorted runs of blocks.
    fn runs(self) -> Vec<(u64, u64)> {
        crate::ntfs_ext::merged(self.put_off)
    }
}

/// Reads batch `b` in a first pass: `None` when it is put off (see [`Defer`]).
fn read_or_put_off(
    job: &Job,
    b: &Batch,
    buf: &mut IoBuf,
    defer: Option<&Mutex<Defer>>,
) -> anyhow::Result<Option<Vec<(u64, u64)>>> {
    let Some(defer) = defer else {
        return read_batch(job, b, buf, true).map(Some);
    };
    if defer.lock().unwrap().skips(b) {
        return Ok(None);
    }
    match read_batch(job, b, buf, false) {
        Ok(bad) => {
            defer.lock().unwrap().read(b);
            Ok(Some(bad))
        }
        Err(e) if media_error(&e, 0) => {
            defer.lock().unwrap().failed(b);
            Ok(None)
        }
        Err(e) => Err(e),
    }
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
/// `skip_unreadable` and `salvage`, a failing read is retried in smaller units and
/// what still fails is zero-filled and returned as (offset, len) ranges; without
/// `salvage` the medium's error is returned (a first pass puts the batch off).
fn read_batch(
    job: &Job,
    b: &Batch,
    buf: &mut IoBuf,
    salvage: bool,
) -> anyhow::Result<Vec<(u64, u64)>> {
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
        bad.extend(read_part(
            job,
            &mut data[at..end],
            off + at as u64,
            salvage,
        )?);
        i = stop;
    }
    Ok(bad)
}

/// Reads `data` at source offset `off`, salvaging with `skip_unreadable` and
/// `salvage_now`; returns what could not be read.
fn read_part(
    job: &Job,
    data: &mut [u8],
    off: u64,
    salvage_now: bool,
) -> anyhow::Result<Vec<(u64, u64)>> {
    let len = data.len();
    match read_span(job, &mut data[..len], off) {
        Ok(()) => Ok(Vec::new()),
        Err(e) if job.skip_unreadable && media_error(&e, 0) && !salvage_now => Err(e),
        Err(e) if job.skip_unreadable && media_error(&e, 0) => {
            let mut bad = Vec::new();
            salvage(job, &mut data[..len], off, 0, &mut bad)?;
            // A few ranges are named; a worn area's many are summed up in one line.
            if bad.len() <= 4 {
                for r in &bad {
                    tracing::warn!(
                        "source {}: bytes {}..{} unreadable ({e:#}); recorded as unreadable",
                        job.path.display(),
                        r.0,
                        r.0 + r.1
                    );
                }
            } else {
                tracing::warn!(
                    "source {}: {} bytes in {} ranges between bytes {off} and {} unreadable ({e:#}); recorded as unreadable",
                    job.path.display(),
                    bad.iter().map(|r| r.1).sum::<u64>(),
                    bad.len(),
                    off + len as u64
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
/// With `skip_unreadable`, in passes: what reads first, then what failed (see
/// [`Defer`]), so a block may come after blocks past it.
pub fn run(
    mut job: Job,
    mut consume: impl FnMut(Processed) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    if !job.skip_unreadable {
        return run_pass(&job, None, &mut consume);
    }
    for (window, next) in [
        (true, "reading it again from its end back"),
        (
            false,
            "reading it page by page, and sector by sector where that fails",
        ),
    ] {
        let blocks = job.size.div_ceil(job.params.block_size as u64);
        let defer = Mutex::new(Defer::new(blocks, window));
        run_pass(&job, Some(&defer), &mut consume)?;
        let runs = defer.into_inner().unwrap().runs();
        if runs.is_empty() {
            return Ok(());
        }
        let bs = job.params.block_size as u64;
        let bytes: u64 = runs
            .iter()
            .map(|&(s, n)| ((s + n) * bs).min(job.size) - s * bs)
            .sum();
        tracing::warn!(
            "source {}: {} in {} place(s) put off after read errors; {next}",
            job.path.display(),
            crate::size::human(bytes),
            runs.len()
        );
        job.runs = runs;
        job.backward = window;
    }
    run_pass(&job, None, &mut consume)
}

/// One pass over `job.runs`; `defer` puts off what fails to read instead of salvaging.
fn run_pass(
    job: &Job,
    defer: Option<&Mutex<Defer>>,
    consume: &mut impl FnMut(Processed) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let workers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    let (batch_tx, batch_rx) = sync_channel::<Batch>(workers * 4);
    let batch_rx: Arc<Mutex<Receiver<Batch>>> = Arc::new(Mutex::new(batch_rx));
    let (out_tx, out_rx) = sync_channel::<anyhow::Result<Processed>>(workers * 2);
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
            // Plans one batch and hands it on; false when the pass is to stop.
            let send = |start: u64, n: u64| match plan_batch(job, safe.as_ref(), start, n) {
                Ok(batch) => batch_tx.send(batch).is_ok(),
                Err(e) => {
                    fail(e);
                    false
                }
            };
            if job.backward {
                for &(first, count) in job.runs.iter().rev() {
                    let mut e = first + count;
                    while e > first {
                        let n = BATCH.min(e - first);
                        if !send(e - n, n) {
                            return;
                        }
                        e -= n;
                    }
                }
                return;
            }
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
                    if !send(b, n) {
                        return;
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
                    let r = match read_or_put_off(job, &batch, &mut data, defer) {
                        Ok(None) => continue,
                        Ok(Some(unreadable)) => {
                            process(&batch, data.bytes(), params, &zero_quick, &mut cctx).map(
                                |outcomes| Processed {
                                    outcomes,
                                    unreadable,
                                },
                            )
                        }
                        Err(e) => Err(e),
                    };
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
            match r.and_then(&mut *consume) {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds batches 0..n in order, failing those in the `bad` [start, end) ranges: (batches read that failed,
    /// runs put off).
    fn first_pass(n: u64, bad: &[(u64, u64)], window: bool) -> (Vec<u64>, Vec<(u64, u64)>) {
        let mut d = Defer::new(n * BATCH, window);
        let mut failed = Vec::new();
        for k in 0..n {
            let b = Batch {
                start: k * BATCH,
                count: BATCH,
                hole: false,
                prev: Vec::new(),
            };
            if d.skips(&b) {
                continue;
            }
            if bad.iter().any(|&(a, z)| (a..z).contains(&k)) {
                failed.push(k);
                d.failed(&b);
            } else {
                d.read(&b);
            }
        }
        (failed, d.runs())
    }

    #[test]
    fn the_window_doubles_past_failures_and_closes_after_a_good_read() {
        // 4 fails: 5 skipped; 6 fails: 7-8 skipped; 9 fails: 10-13 skipped; 14 reads.
        let (failed, runs) = first_pass(40, &[(4, 12)], true);
        assert_eq!(failed, [4, 6, 9]);
        assert_eq!(runs, [(4 * BATCH, 10 * BATCH)]);
        // A later failure after good reads starts from one batch again: 30 fails, 31
        // skipped, 32 fails, 33-34 skipped.
        let (failed, runs) = first_pass(60, &[(4, 12), (30, 34)], true);
        assert_eq!(failed, [4, 6, 9, 30, 32]);
        assert_eq!(runs, [(4 * BATCH, 10 * BATCH), (30 * BATCH, 5 * BATCH)]);
        // Without a window (the second pass) only failing batches are put off.
        let (failed, runs) = first_pass(40, &[(4, 12)], false);
        assert_eq!(failed, (4..12).collect::<Vec<_>>());
        assert_eq!(runs, [(4 * BATCH, 8 * BATCH)]);
    }

    #[test]
    fn the_window_grows_to_a_hundredth_of_the_source_at_most() {
        // 16 batches at most on a small source: a long bad area is tried every 16
        // batches or so, not ever more rarely.
        let (failed, _) = first_pass(400, &[(0, 400)], true);
        let gaps: Vec<u64> = failed.windows(2).map(|w| w[1] - w[0]).collect();
        assert_eq!(gaps[..5], [2, 3, 5, 9, 17]);
        assert!(gaps[5..].iter().all(|&g| g == 17), "{gaps:?}");
        // A hundredth of a large one.
        let (failed, _) = first_pass(6400, &[(0, 6400)], true);
        let gaps: Vec<u64> = failed.windows(2).map(|w| w[1] - w[0]).collect();
        assert_eq!(*gaps.iter().max().unwrap(), 65, "{gaps:?}");
    }
}
