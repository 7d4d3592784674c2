//! `disksafe restore`: writes a device as it was at a point, byte-exact, with zero
//! blocks left as holes.
//!
//! It decodes runs of blocks straight into recycled buffers on all cores (no block
//! cache: each block is needed once) while the calling thread writes, coalescing
//! consecutive non-zero blocks into large writes. A regular file is written front to
//! back without pre-sizing (ext4 is several times slower writing into a pre-sized
//! sparse file) and extended to the device size at the end.
//!
//! With `--only-differing` the output is an existing file or device (the disk the
//! point was taken of, a VM image) read as it goes: only blocks whose bytes differ
//! from the point's are written (a file's zero blocks punched out), so bringing a
//! disk back to a point costs reads and a few writes instead of a full rewrite.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::Path;
use std::sync::mpsc::sync_channel;
use std::sync::Arc;

use anyhow::{bail, Context};
use rayon::prelude::*;

use crate::readat::ReadAt;
use crate::safe_reader::{device_in_point, Safe};

/// Blocks decoded per step; large enough to keep every core decompressing.
const CHUNK_BLOCKS: u64 = 256;
/// Blocks per write call at most.
const WRITE_BLOCKS: usize = 16;

enum Out {
    Stdout(std::io::StdoutLock<'static>),
    File {
        f: File,
        sparse: bool,
        created: bool,
    },
}

/// How `restore` writes its output.
#[derive(Debug, Clone, Default)]
pub struct RestoreOptions {
    /// Read the (existing) output first and write only the blocks that differ: a disk
    /// brought back to a point with few writes.
    pub only_differing: bool,
    /// Draw a progress bar on stderr (a restore of a large disk takes a while).
    pub progress: bool,
    /// Write only this partition of the device (MBR or GPT, numbered as the mount
    /// numbers `partK.img`): one volume brought back without touching the others.
    pub partition: Option<u32>,
    /// Write only this raw image of the device, named as the mount names it under
    /// the device's directory (`lvm/VG-LV.img`, `md/NAME.img`, ...): an LV or array
    /// brought back on its own.
    pub volume: Option<std::path::PathBuf>,
    /// Passphrases for LUKS volumes, whose plaintext `volume` may name.
    pub passphrases: Vec<crate::passphrase::Secret>,
}

/// What a restore did, for its closing line.
#[derive(Debug, Clone, Copy, Default)]
pub struct Restored {
    /// The device's size: bytes restored.
    pub bytes: u64,
    /// Bytes written (or punched out as holes); all of them without `only_differing`.
    pub written: u64,
}

/// A decoded run: device offset, bytes, and which blocks are all zeros.
struct Decoded {
    off: u64,
    len: usize,
    buf: Vec<u8>,
    zero: Vec<bool>,
    /// Byte ranges of a volume read as zeros: they lie on source bytes the backup
    /// could not read.
    unreadable: Vec<(u64, u64)>,
}

/// The bytes of a decoded run inside the window being restored: buffer offsets
/// `lo..hi` of its blocks, its device offset, and the window's start (what output
/// offset 0 is on the device).
struct Window<'a> {
    dec: &'a Decoded,
    lo: usize,
    hi: usize,
    base: u64,
}

impl Window<'_> {
    /// The buffer range of block `i` inside the window (empty outside it).
    fn block(&self, i: usize, bs: usize) -> std::ops::Range<usize> {
        let a = (i * bs).max(self.lo);
        let b = ((i + 1) * bs).min(self.hi);
        a..b.max(a)
    }

    /// The blocks touching the window.
    fn blocks(&self, bs: usize) -> std::ops::Range<usize> {
        if self.hi <= self.lo {
            return 0..0;
        }
        self.lo / bs..(self.hi - 1) / bs + 1
    }

    /// Where buffer offset `a` goes in the output.
    fn out_at(&self, a: usize) -> u64 {
        self.dec.off + a as u64 - self.base
    }
}

/// The runs of blocks (first, count) that cover device bytes `base..end`, in order:
/// what the decoder decodes and the output's reader reads, run for run.
fn runs(base: u64, end: u64, bs: u64) -> impl Iterator<Item = (u64, u64)> {
    let nblocks = end.div_ceil(bs);
    let mut first = base / bs;
    std::iter::from_fn(move || {
        let n = CHUNK_BLOCKS.min(nblocks.checked_sub(first).filter(|&n| n > 0)?);
        let run = (first, n);
        first += n;
        Some(run)
    })
}

/// Bytes of the run of `n` blocks from block `first` on a device of `size` bytes (the
/// last block may be partial).
fn run_len(first: u64, n: u64, bs: u64, size: u64) -> usize {
    (n * bs).min(size - first * bs) as usize
}

/// The part of a run (device offset `off`, `len` bytes) inside device bytes
/// `base..end`, as offsets in the run.
fn clip(off: u64, len: usize, base: u64, end: u64) -> (usize, usize) {
    let len = len as u64;
    let lo = base.saturating_sub(off).min(len);
    let hi = end.saturating_sub(off).min(len);
    (lo as usize, hi as usize)
}

/// Device byte range of partition `k` of device `d` at `point`, from its partition
/// table read through the safe.
fn partition_range(
    safe: &Arc<Safe>,
    point: i64,
    d: &crate::safe_reader::DeviceAt,
    k: u32,
) -> anyhow::Result<(u64, u64)> {
    let cache = Arc::new(crate::cache::CachedSafe::new(safe.clone(), 16 << 20));
    let dev = crate::device::PointDevice::new(cache, point, d.id, &d.name, d.size);
    let table = crate::volumes::read_table(&dev)
        .with_context(|| format!("device {} at point {point}: partition table", d.name))?;
    let Some(t) = table else {
        bail!("device {} at point {point} has no partition table", d.name);
    };
    match t.partitions.iter().find(|p| p.number == k) {
        Some(p) => Ok((p.start, p.len)),
        None => {
            let have = t.partitions.iter().map(|p| p.number.to_string());
            bail!(
                "device {} at point {point} has no partition {k} (it has {})",
                d.name,
                crate::format::list_or_none(have)
            )
        }
    }
}

/// The raw image `rel` under device `device` at `point`, as the mount shows it.
fn open_volume(
    safe: &Arc<Safe>,
    point: i64,
    device: &str,
    rel: &Path,
    passphrases: &[crate::passphrase::Secret],
) -> anyhow::Result<Arc<dyn ReadAt>> {
    let cache = Arc::new(crate::cache::CachedSafe::new(safe.clone(), 64 << 20));
    let fs = crate::fs::SafeFs::new(
        cache,
        crate::fs::FsOptions::for_point(point, passphrases.to_vec()),
    )?;
    fs.volume_at(&Path::new(device).join(rel))
        .with_context(|| format!("point {point}: volume {}", rel.display()))
}

/// Reads blocks `first..first+n` of `vol` (`size` bytes) into `buf`, noting the
/// all-zero ones.
fn read_volume(
    vol: &dyn ReadAt,
    first: u64,
    n: u64,
    bs: u64,
    size: u64,
    mut buf: Vec<u8>,
) -> anyhow::Result<Decoded> {
    let off = first * bs;
    let len = run_len(first, n, bs, size);
    buf.truncate(len);
    let mut unreadable = Vec::new();
    crate::readat::read_in_pieces(
        off,
        &mut buf,
        &SALVAGE_PIECES,
        &mut |at, piece| vol.read_exact_at(at, piece),
        &crate::device::is_unreadable,
        &mut |at, piece, _| {
            piece.fill(0);
            crate::readat::push_range(&mut unreadable, at, piece.len() as u64);
            Ok(())
        },
    )
    .with_context(|| format!("reading the volume at byte {off}"))?;
    buf.resize((n * bs) as usize, 0);
    let zero = buf
        .chunks(bs as usize)
        .map(|b| b.iter().all(|&x| x == 0))
        .collect();
    Ok(Decoded {
        off,
        len,
        buf,
        zero,
        unreadable,
    })
}

/// Piece sizes a volume read that touched unreadable source bytes is retried in:
/// pages, then sectors, as the backup salvaged the source; what still fails at a
/// sector is written as zeros.
const SALVAGE_PIECES: [u64; 2] = [4096, 512];

/// Restores DEVICE at POINT to OUTPUT (`-` for stdout).
pub fn restore(
    safe_dir: &Path,
    point: &str,
    device: &str,
    output: &str,
    opts: RestoreOptions,
) -> anyhow::Result<Restored> {
    let safe = Arc::new(Safe::open(safe_dir)?);
    let p = safe.point(point)?;
    let d = device_in_point(&p, device)?;
    let bs = safe.params().block_size as u64;
    // A volume restored reads through its own mapping, offsets counted from its start.
    let vol = match &opts.volume {
        Some(_) if opts.partition.is_some() => {
            bail!("--volume and --partition each choose what to write; give one")
        }
        Some(rel) => Some(open_volume(&safe, p.id, device, rel, &opts.passphrases)?),
        None => None,
    };
    let src_size = vol.as_ref().map_or(d.size, |v| v.size());
    // The source bytes written: all of them, or one partition's.
    let (base, size) = match opts.partition {
        None => (0, src_size),
        Some(k) => partition_range(&safe, p.id, &d, k)?,
    };
    let end = base + size;
    let mut out = open_output(output, size, opts.only_differing)?;
    let bar = if opts.progress {
        let b = indicatif::ProgressBar::new(size);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .unwrap()
            .progress_chars("=> "),
        );
        b.set_message(match (&opts.volume, opts.partition) {
            (Some(v), _) => format!("{device}@{} {}", p.id, v.display()),
            (None, Some(k)) => format!("{device}@{} part{k}", p.id),
            (None, None) => format!("{device}@{}", p.id),
        });
        b
    } else {
        indicatif::ProgressBar::hidden()
    };
    let (tx, rx) = sync_channel::<anyhow::Result<Decoded>>(2);
    let (recycle_tx, recycle_rx) = sync_channel::<Vec<u8>>(4);
    // With `only_differing`, a thread reads the output ahead, run by run, while the
    // runs are decoded: its buffers hold the output's bytes at the decoded buffers'
    // offsets.
    let (cur_tx, cur_rx) = sync_channel::<anyhow::Result<Vec<u8>>>(2);
    let reader = match &out {
        Out::File { f, sparse, .. } if opts.only_differing => Some((
            f.try_clone().with_context(|| format!("output {output}"))?,
            *sparse,
        )),
        _ => None,
    };
    // Volume byte ranges written as zeros (they lie on unreadable source bytes).
    let mut zeroed: Vec<(u64, u64)> = Vec::new();
    let result = std::thread::scope(|s| -> anyhow::Result<Restored> {
        // Owned here, so that a writer failing early (a full output) drops them and
        // the threads feeding them stop instead of waiting to send for ever.
        let (rx, cur_rx) = (rx, cur_rx);
        let safe = &safe;
        let d = &d;
        let vol = &vol;
        if let Some((f, sparse)) = reader {
            s.spawn(move || {
                for (first, n) in runs(base, end, bs) {
                    let off = first * bs;
                    let len = run_len(first, n, bs, src_size);
                    let mut buf = vec![0u8; len];
                    let (lo, hi) = clip(off, len, base, end);
                    let r = read_output(&f, sparse, &mut buf[lo..hi], off + lo as u64 - base)
                        .map(|()| buf);
                    let failed = r.is_err();
                    if cur_tx.send(r).is_err() || failed {
                        return;
                    }
                }
            });
        }
        s.spawn(move || {
            for (first, n) in runs(base, end, bs) {
                let mut buf = recycle_rx.try_recv().unwrap_or_default();
                buf.resize((n * bs) as usize, 0);
                let r = match vol {
                    Some(v) => {
                        // The next run's blocks start decoding while this one is read.
                        let next = (first + n) * bs;
                        if next < end {
                            v.prefetch(&[(next, (n * bs).min(end - next))]);
                        }
                        read_volume(&**v, first, n, bs, src_size, buf)
                    }
                    None => decode(safe, p.id, d, first, n, bs, buf),
                };
                let failed = r.is_err();
                if tx.send(r).is_err() || failed {
                    return;
                }
            }
        });
        let mut done = Restored::default();
        for r in rx.iter() {
            let dec = r?;
            for &(o, l) in &dec.unreadable {
                crate::readat::push_range(&mut zeroed, o, l);
            }
            let data = &dec.buf[..dec.len];
            let (lo, hi) = clip(dec.off, dec.len, base, end);
            let w = Window {
                dec: &dec,
                lo,
                hi,
                base,
            };
            let here = w.hi.saturating_sub(w.lo) as u64;
            match &mut out {
                Out::Stdout(o) => {
                    o.write_all(&data[w.lo..w.hi.max(w.lo)])
                        .context("writing to stdout")?;
                    done.written += here;
                }
                Out::File { f, sparse, .. } if opts.only_differing => {
                    let current = cur_rx
                        .recv()
                        .context("the output's reader stopped")?
                        .with_context(|| format!("output {output}"))?;
                    done.written += write_differing(f, *sparse, &w, bs, &current)
                        .with_context(|| format!("output {output}"))?;
                }
                Out::File { f, sparse, .. } => {
                    // Coalesce consecutive blocks that must be written.
                    let bsz = bs as usize;
                    let blocks = w.blocks(bsz);
                    let mut i = blocks.start;
                    while i < blocks.end {
                        if *sparse && dec.zero[i] {
                            i += 1;
                            continue;
                        }
                        // Up to 1 MiB per write: measured fastest on ext4 here (16 MiB
                        // writes took twice as long).
                        let mut j = i + 1;
                        while j < blocks.end && j - i < WRITE_BLOCKS && !(*sparse && dec.zero[j]) {
                            j += 1;
                        }
                        let (a, b) = (w.block(i, bsz).start, w.block(j - 1, bsz).end);
                        f.write_all_at(&data[a..b], w.out_at(a))
                            .with_context(|| format!("writing output {output}"))?;
                        i = j;
                    }
                    done.written += here;
                }
            }
            done.bytes += here;
            bar.inc(here);
            let _ = recycle_tx.try_send(dec.buf);
        }
        match &mut out {
            Out::Stdout(w) => w.flush()?,
            Out::File { f, sparse, .. } => {
                if *sparse {
                    f.set_len(size)
                        .with_context(|| format!("sizing output {output}"))?;
                }
                f.sync_all().with_context(|| format!("syncing {output}"))?
            }
        }
        Ok(done)
    });
    bar.finish_and_clear();
    if result.is_err() {
        if let Out::File { created: true, .. } = out {
            let _ = std::fs::remove_file(output);
        }
    } else if let Some(rel) = &opts.volume {
        // Only what the volume's reads met: its bytes may lie on any device of the
        // point, and a redundant array reads around what one member lacks.
        warn_zeros(&zeroed, |total, n| {
            format!(
                "volume {} of device {device} at point {}: {total} byte(s) in {n} range(s) (volume offsets) lie on source bytes the backup could not read; they are written as zeros:",
                rel.display(),
                p.id
            )
        });
    } else {
        let mut bad = safe.unreadable(p.id, d.id)?;
        bad.retain(|&(o, l)| o < end && base < o + l);
        warn_zeros(&bad, |total, n| {
            format!(
                "device {device} at point {}: {total} byte(s) in {n} range(s) (device offsets) could not be read from the source at backup; they are written as zeros:",
                p.id
            )
        });
    }
    result.map_err(|e| {
        e.context(format!(
            "restore of device {device} at point {} failed",
            p.id
        ))
    })
}

/// Warns of byte ranges written as zeros: the line `head(total bytes, ranges)` says
/// what they are, then the first ranges follow.
fn warn_zeros(ranges: &[(u64, u64)], head: impl Fn(u64, usize) -> String) {
    if ranges.is_empty() {
        return;
    }
    let total: u64 = ranges.iter().map(|r| r.1).sum();
    eprintln!("warning: {}", head(total, ranges.len()));
    for (off, len) in ranges.iter().take(20) {
        eprintln!("  bytes {off}..{}", off + len);
    }
    if ranges.len() > 20 {
        eprintln!("  ... and {} more range(s)", ranges.len() - 20);
    }
}

/// Fills `buf` with the output's bytes from offset `at`; a regular (`sparse`) file
/// reads as zeros past its end, as the final resize leaves it.
fn read_output(f: &File, sparse: bool, buf: &mut [u8], at: u64) -> anyhow::Result<()> {
    let mut got = 0;
    while got < buf.len() {
        let pos = at + got as u64;
        match f.read_at(&mut buf[got..], pos) {
            Ok(0) if sparse => {
                buf[got..].fill(0);
                break;
            }
            Ok(0) => bail!("ended at byte {pos} while being compared"),
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e).with_context(|| format!("reading at byte {pos}")),
        }
    }
    Ok(())
}

/// Writes the blocks of the window `w` whose bytes differ from `current` (the
/// output's bytes there, at the decoded buffer's offsets); in a `sparse` file a zero
/// block is punched out instead, or written where the filesystem cannot punch.
/// Returns the bytes written or punched.
fn write_differing(
    f: &File,
    sparse: bool,
    w: &Window,
    bs: u64,
    current: &[u8],
) -> anyhow::Result<u64> {
    let dec = w.dec;
    let data = &dec.buf[..dec.len];
    anyhow::ensure!(current.len() == dec.len, "compared runs out of step");
    let bs = bs as usize;
    let differs = |i: usize| {
        let r = w.block(i, bs);
        data[r.clone()] != current[r]
    };
    let mut written = 0u64;
    let blocks = w.blocks(bs);
    let mut i = blocks.start;
    while i < blocks.end {
        if !differs(i) {
            i += 1;
            continue;
        }
        // A run of differing blocks alike in being zero (punched in a sparse file).
        let punch = sparse && dec.zero[i];
        let mut j = i + 1;
        while j < blocks.end
            && j - i < WRITE_BLOCKS
            && differs(j)
            && (sparse && dec.zero[j]) == punch
        {
            j += 1;
        }
        let (a, b) = (w.block(i, bs).start, w.block(j - 1, bs).end);
        let at = w.out_at(a);
        if !(punch && punch_hole(f, at, (b - a) as u64)) {
            f.write_all_at(&data[a..b], at)
                .with_context(|| format!("writing at byte {at}"))?;
        }
        written += (b - a) as u64;
        i = j;
    }
    Ok(written)
}

/// Deallocates `len` bytes at `at` of a file, which then read as zeros; false where
/// the filesystem cannot.
fn punch_hole(f: &File, at: u64, len: u64) -> bool {
    use std::os::fd::AsRawFd;
    // SAFETY: fallocate on an open descriptor with plain integer arguments.
    let r = unsafe {
        libc::fallocate(
            f.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            at as libc::off_t,
            len as libc::off_t,
        )
    };
    r == 0
}

fn open_output(output: &str, size: u64, only_differing: bool) -> anyhow::Result<Out> {
    if output == "-" {
        if only_differing {
            bail!("--only-differing compares with an existing file or device, not standard output");
        }
        return Ok(Out::Stdout(std::io::stdout().lock()));
    }
    let path = Path::new(output);
    let existed = path.exists();
    if only_differing && !existed {
        bail!("output {output} does not exist (--only-differing brings an existing file or device back to the point)");
    }
    let is_blk = existed
        && std::fs::metadata(path)
            .map(|m| m.file_type().is_block_device())
            .unwrap_or(false);
    let mut opts = OpenOptions::new();
    opts.write(true)
        .read(only_differing)
        .create(!only_differing)
        .truncate(!is_blk && !only_differing);
    if is_blk {
        // Exclusive: a device that is mounted, or held by device-mapper, md or a
        // running program, is refused instead of overwritten under it.
        use std::os::unix::fs::OpenOptionsExt;
        opts.create(false).custom_flags(libc::O_EXCL);
    }
    let f = opts.open(path).map_err(|e| {
        if is_blk && e.raw_os_error() == Some(libc::EBUSY) {
            anyhow::anyhow!(
                "output {output} is in use (mounted, or held by another program); unmount or release it first"
            )
        } else {
            anyhow::Error::new(e).context(format!("cannot open output {output}"))
        }
    })?;
    if is_blk {
        let cap = crate::backup::source_size(&f)?;
        if cap < size {
            bail!("output {output} holds {cap} bytes, the device needs {size}");
        }
    }
    Ok(Out::File {
        f,
        sparse: !is_blk,
        created: !existed,
    })
}

/// Decodes blocks `first..first+n` into `buf` on all cores.
fn decode(
    safe: &Safe,
    point: i64,
    d: &crate::safe_reader::DeviceAt,
    first: u64,
    n: u64,
    bs: u64,
    mut buf: Vec<u8>,
) -> anyhow::Result<Decoded> {
    let place = |b: u64, e: &dyn std::fmt::Display| {
        anyhow::anyhow!("point {point}, device {}, offset {}: {e}", d.name, b * bs)
    };
    let locs = safe
        .block_run(d.id, point, first, n)
        .map_err(|e| place(first, &format!("{e:#}")))?;
    let mut zero = vec![false; n as usize];
    buf.par_chunks_mut(bs as usize)
        .zip(zero.par_iter_mut())
        .zip(locs.par_iter())
        .enumerate()
        .try_for_each_init(
            Vec::new,
            |scratch, (i, ((dst, z), loc))| -> anyhow::Result<()> {
                match loc {
                    Some(l) if !l.is_zero() => {
                        safe.load_block_into(l, dst, scratch)
                            .map_err(|e| place(first + i as u64, &e))?;
                    }
                    _ => {
                        dst.fill(0);
                        *z = true;
                    }
                }
                Ok(())
            },
        )?;
    let off = first * bs;
    let len = run_len(first, n, bs, d.size);
    Ok(Decoded {
        off,
        len,
        buf,
        zero,
        unreadable: Vec::new(),
    })
}
