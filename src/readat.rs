//! The positional-read trait that joins every layer, so each one is testable on a plain file.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// Alignment of O_DIRECT reads (file offset, length and buffer address), for the
/// backup's source reads and the safe's pack reads alike: 4 KiB satisfies every
/// logical block size in use.
pub const DIRECT_ALIGN: usize = 4096;

/// Lets every layer (safe device, partition, filesystem parser) read by offset without
/// caring what sits below it.
pub trait ReadAt: Send + Sync {
    /// Reads up to `buf.len()` bytes at `offset`; returns fewer only at the end.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize>;

    /// The size in bytes, so readers can clip requests at the end.
    fn size(&self) -> u64;

    /// Hints that these byte ranges (offset, length) will be read soon, so a slow
    /// layer below can fetch them in one batch, in its own storage order (a parser
    /// warming scattered metadata pays one sorted pass instead of a wait per range).
    /// Blocks the caller while it works; the default does nothing.
    fn prefetch(&self, _ranges: &[(u64, u64)]) {}

    /// True when [`ReadAt::prefetch`] does something, so parsers skip the work of
    /// finding what to warm (a scan of their metadata) where it would be wasted.
    fn prefetches(&self) -> bool {
        false
    }

    /// Where data starts in `offset..end` (SEEK_DATA: `Ok(None)` when only holes
    /// follow), for layers that know their holes; `None` when this one does not
    /// (callers then take it all as data).
    fn data_from(&self, _offset: u64, _end: u64) -> Option<io::Result<Option<u64>>> {
        None
    }

    /// Where a hole starts in `offset..end` (SEEK_HOLE: `end` when there is none), for
    /// layers that know; `None` when this one does not.
    fn hole_from(&self, _offset: u64, _end: u64) -> Option<io::Result<u64>> {
        None
    }

    /// Bytes in blocks holding data (stat's blocks), where known.
    fn allocated(&self) -> Option<u64> {
        None
    }

    /// Fills `buf` completely or fails, because parsers must never see short data as valid.
    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let mut done = 0;
        while done < buf.len() {
            let n = self.read_at(offset + done as u64, &mut buf[done..])?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "read of {} bytes at offset {offset} runs past the end ({} bytes)",
                        buf.len(),
                        self.size()
                    ),
                ));
            }
            done += n;
        }
        Ok(())
    }
}

/// A byte buffer as a [`ReadAt`], for tests and fuzzing of every layer above a device.
pub struct MemReader(pub Vec<u8>);

impl ReadAt for MemReader {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let len = self.0.len() as u64;
        if offset >= len {
            return Ok(0);
        }
        let n = buf.len().min((len - offset) as usize);
        buf[..n].copy_from_slice(&self.0[offset as usize..offset as usize + n]);
        Ok(n)
    }

    fn size(&self) -> u64 {
        self.0.len() as u64
    }
}

/// A plain file as a [`ReadAt`], so tests and images run through the same code as safes.
pub struct FileReader {
    file: File,
    size: u64,
}

impl FileReader {
    /// Opens a file (or block device) read-only and records its size.
    pub fn open(path: &std::path::Path) -> io::Result<Self> {
        let file = File::open(path)?;
        let size = crate::backup::source_size(&file)?;
        Ok(FileReader { file, size })
    }
}

impl ReadAt for FileReader {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        if offset >= self.size {
            return Ok(0);
        }
        let want = buf.len().min((self.size - offset) as usize);
        let mut done = 0;
        while done < want {
            match self
                .file
                .read_at(&mut buf[done..want], offset + done as u64)
            {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(done)
    }

    fn size(&self) -> u64 {
        self.size
    }
}

/// A window onto part of another reader, so a partition reads like a disk of its own.
pub struct Slice<R: ?Sized> {
    inner: std::sync::Arc<R>,
    start: u64,
    len: u64,
}

impl<R: ReadAt + ?Sized> Slice<R> {
    /// Makes a window of `len` bytes at `start`, clipped to the end of `inner`.
    pub fn new(inner: std::sync::Arc<R>, start: u64, len: u64) -> Self {
        let size = inner.size();
        let start = start.min(size);
        let len = len.min(size - start);
        Slice { inner, start, len }
    }
}

impl<R: ReadAt + ?Sized> ReadAt for Slice<R> {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        if offset >= self.len {
            return Ok(0);
        }
        let want = buf.len().min((self.len - offset) as usize);
        self.inner.read_at(self.start + offset, &mut buf[..want])
    }

    fn size(&self) -> u64 {
        self.len
    }

    fn prefetch(&self, ranges: &[(u64, u64)]) {
        let inner: Vec<(u64, u64)> = ranges
            .iter()
            .filter(|&&(o, _)| o < self.len)
            .map(|&(o, l)| (self.start + o, l.min(self.len - o)))
            .collect();
        self.inner.prefetch(&inner);
    }

    fn prefetches(&self) -> bool {
        self.inner.prefetches()
    }

    fn data_from(&self, offset: u64, end: u64) -> Option<io::Result<Option<u64>>> {
        let end = end.min(self.len);
        let r = self
            .inner
            .data_from(self.start + offset, self.start + end)?;
        Some(r.map(|o| o.map(|o| o - self.start)))
    }

    fn hole_from(&self, offset: u64, end: u64) -> Option<io::Result<u64>> {
        let end = end.min(self.len);
        let r = self
            .inner
            .hole_from(self.start + offset, self.start + end)?;
        Some(r.map(|o| o - self.start))
    }
}

/// Appends `(start, len)` to a sorted list of ranges, joining it to the last one when
/// they touch: how the run lists of free space and bad ranges are built.
pub fn push_range(ranges: &mut Vec<(u64, u64)>, start: u64, len: u64) {
    match ranges.last_mut() {
        Some(r) if r.0 + r.1 == start => r.1 += len,
        _ => ranges.push((start, len)),
    }
}

/// What [`read_in_pieces`] does with a piece that fails at its last unit.
pub type LostPiece<'a> = dyn FnMut(u64, &mut [u8], io::Error) -> io::Result<()> + 'a;

/// Reads `buf` (bytes from `offset`) with `read`; where that fails and `split` says
/// the failure is worth it, again in pieces of each of `units` in turn (aligned to
/// the unit), so that one bad sector costs only itself. A piece still failing at
/// the last unit goes to `lost(at, piece, error)`, whose error ends the read; a
/// failure `split` refuses ends it at once.
pub fn read_in_pieces(
    offset: u64,
    buf: &mut [u8],
    units: &[u64],
    read: &mut dyn FnMut(u64, &mut [u8]) -> io::Result<()>,
    split: &dyn Fn(&io::Error) -> bool,
    lost: &mut LostPiece,
) -> io::Result<()> {
    let e = match read(offset, buf) {
        Ok(()) => return Ok(()),
        Err(e) if !split(&e) => return Err(e),
        Err(e) => e,
    };
    let Some((&unit, rest)) = units.split_first() else {
        return lost(offset, buf, e);
    };
    let mut done = 0;
    while done < buf.len() {
        let at = offset + done as u64;
        let take = ((unit - at % unit) as usize).min(buf.len() - done);
        read_in_pieces(at, &mut buf[done..done + take], rest, read, split, lost)?;
        done += take;
    }
    Ok(())
}

/// A volume with some byte ranges replaced in memory (a damaged structure read from
/// its backup copy, as a repair tool would write it, without writing anything).
pub struct Patched {
    inner: std::sync::Arc<dyn ReadAt>,
    /// (volume offset, bytes served there instead), not overlapping.
    patches: Vec<(u64, Vec<u8>)>,
}

impl Patched {
    /// `inner` with each `(offset, bytes)` of `patches` read from memory.
    pub fn new(inner: std::sync::Arc<dyn ReadAt>, patches: Vec<(u64, Vec<u8>)>) -> Patched {
        Patched { inner, patches }
    }
}

impl ReadAt for Patched {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let size = self.size();
        if offset >= size || buf.is_empty() {
            return Ok(0);
        }
        let n = buf.len().min((size - offset) as usize);
        let end = offset + n as u64;
        let buf = &mut buf[..n];
        // Outside every patch: read through; else piece by piece.
        let mut at = offset;
        while at < end {
            let here = self
                .patches
                .iter()
                .find(|(o, b)| *o <= at && at < o + b.len() as u64);
            let next = self
                .patches
                .iter()
                .map(|(o, _)| *o)
                .filter(|&o| o > at)
                .min()
                .unwrap_or(end)
                .min(end);
            match here {
                Some((o, b)) => {
                    let stop = (o + b.len() as u64).min(end);
                    let from = (at - o) as usize;
                    let k = (stop - at) as usize;
                    buf[(at - offset) as usize..(stop - offset) as usize]
                        .copy_from_slice(&b[from..from + k]);
                    at = stop;
                }
                None => {
                    self.inner.read_exact_at(
                        at,
                        &mut buf[(at - offset) as usize..(next - offset) as usize],
                    )?;
                    at = next;
                }
            }
        }
        Ok(n)
    }

    fn size(&self) -> u64 {
        self.inner.size()
    }

    fn prefetch(&self, ranges: &[(u64, u64)]) {
        self.inner.prefetch(ranges)
    }

    fn prefetches(&self) -> bool {
        self.inner.prefetches()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patched_ranges_read_from_memory_and_the_rest_through() {
        let base: Vec<u8> = (0..100u8).collect();
        let p = Patched::new(
            std::sync::Arc::new(MemReader(base.clone())),
            vec![(10, vec![200; 5]), (40, vec![201; 10])],
        );
        let mut want = base;
        want[10..15].fill(200);
        want[40..50].fill(201);
        for (at, len) in [(0, 100), (12, 30), (45, 3), (9, 2), (49, 51)] {
            let mut b = vec![0u8; len];
            p.read_exact_at(at as u64, &mut b).unwrap();
            assert_eq!(b, want[at..at + len], "{at}+{len}");
        }
    }
}
