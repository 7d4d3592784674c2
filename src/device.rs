//! One device at one recovery point as a [`ReadAt`]: blocks are reconstructed on demand
//! from the map and the block cache, never restored up front.

use std::io;
use std::sync::Arc;

use crate::cache::{CachedSafe, MAP_SEGMENT};
use crate::readat::ReadAt;
use crate::safe_reader::BlockLoc;

/// Data blocks fetched per query while looking for a hole.
const HOLE_BATCH: usize = 4096;
/// Data blocks a hole search walks before it answers the end instead (always a true
/// hole; a copy then reads the rest as data): 2^22 blocks, 256 GiB at 64 KiB.
const HOLE_SCAN_MAX: u64 = 1 << 22;
/// Data blocks counted for an image's allocated size before giving up on it (the
/// image is then reported fully allocated): 2^20 blocks, 64 GiB at 64 KiB.
const COUNT_MAX: u64 = 1 << 20;

/// A read touching bytes the backup could not read from its source: `restore` writes
/// zeros for these (and names them) where any other error fails it.
#[derive(Debug)]
pub struct Unreadable(String);

impl std::fmt::Display for Unreadable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Unreadable {}

/// Whether `e` is (or passes on unchanged) an [`Unreadable`] read.
pub fn is_unreadable(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|i| i.is::<Unreadable>())
}

/// A device as it was at a point, readable by offset.
pub struct PointDevice {
    cache: Arc<CachedSafe>,
    point: i64,
    device: i64,
    name: String,
    size: u64,
    block_size: u64,
    /// Blocks `start..end` that the last hole search walked as data (or, when it gave
    /// up, answered as data): repeated SEEK_HOLE calls inside one long data extent
    /// (`qemu-img convert` asks once per request) resume there instead of rescanning.
    data_hint: std::sync::Mutex<Option<(u64, u64)>>,
    /// Source ranges the backup could not read, loaded at the first read.
    unreadable: std::sync::OnceLock<Vec<(u64, u64)>>,
}

impl PointDevice {
    /// Binds a device of a point to the shared caches.
    pub fn new(cache: Arc<CachedSafe>, point: i64, device: i64, name: &str, size: u64) -> Self {
        let block_size = cache.safe().params().block_size as u64;
        PointDevice {
            cache,
            point,
            device,
            name: name.to_string(),
            size,
            block_size,
            data_hint: std::sync::Mutex::new(None),
            unreadable: std::sync::OnceLock::new(),
        }
    }

    /// Fails a read of `offset..end` that touches bytes the backup could not read: the
    /// zeros stored there are not the device's bytes.
    fn check_readable(&self, offset: u64, end: u64) -> io::Result<()> {
        let ranges = match self.unreadable.get() {
            Some(r) => r,
            None => {
                let r = self
                    .cache
                    .safe()
                    .unreadable(self.point, self.device)
                    .map_err(|e| self.err(offset, format!("{e:#}")))?;
                self.unreadable.get_or_init(|| r)
            }
        };
        let i = ranges.partition_point(|r| r.0 + r.1 <= offset);
        match ranges.get(i) {
            Some(&(start, len)) if start < end => Err(io::Error::other(Unreadable(format!(
                "point {}, device {}, offset {}: bytes {start}..{} could not be read from the source when this point was taken",
                self.point,
                self.name,
                start.max(offset),
                start + len
            )))),
            _ => Ok(()),
        }
    }

    /// Point id, for messages.
    pub fn point(&self) -> i64 {
        self.point
    }

    /// Device name, for messages.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn err(&self, offset: u64, e: impl std::fmt::Display) -> io::Error {
        // Callers decide how to report it: the mount logs and answers EIO, restore fails.
        io::Error::other(format!(
            "point {}, device {}, offset {offset}: {e}",
            self.point, self.name
        ))
    }

    /// Locations of blocks `first..=last`.
    fn locs(&self, first: u64, last: u64) -> io::Result<Vec<Option<BlockLoc>>> {
        let mut out = Vec::with_capacity((last - first + 1) as usize);
        let mut b = first;
        while b <= last {
            let seg = b / MAP_SEGMENT;
            let map = self
                .cache
                .segment(self.device, self.point, seg)
                .map_err(|e| self.err(b * self.block_size, format!("{e:#}")))?;
            let seg_end = ((seg + 1) * MAP_SEGMENT - 1).min(last);
            for bb in b..=seg_end {
                out.push(
                    map.get((bb - seg * MAP_SEGMENT) as usize)
                        .copied()
                        .flatten(),
                );
            }
            b = seg_end + 1;
        }
        Ok(out)
    }

    fn data_blocks(&self, from: u64, end: u64, limit: usize) -> io::Result<Vec<u64>> {
        self.cache
            .safe()
            .data_blocks(self.device, self.point, from, end, limit)
            .map_err(|e| self.err(from * self.block_size, format!("{e:#}")))
    }

    /// The first byte in `offset..end` whose block holds data (it is neither absent
    /// nor all zeros in the safe), or `None`: SEEK_DATA on an image.
    pub fn next_data(&self, offset: u64, end: u64) -> io::Result<Option<u64>> {
        let end = end.min(self.size);
        if offset >= end {
            return Ok(None);
        }
        let bs = self.block_size;
        let found = self.data_blocks(offset / bs, end.div_ceil(bs), 1)?;
        Ok(found
            .first()
            .map(|&b| (b * bs).max(offset))
            .filter(|&o| o < end))
    }

    /// The first byte in `offset..end` of a block the safe holds no data for (absent
    /// or all zeros), or `end`: SEEK_HOLE on an image. A search that meets no hole in
    /// [`HOLE_SCAN_MAX`] data blocks answers `end`.
    pub fn next_hole(&self, offset: u64, end: u64) -> io::Result<u64> {
        let end = end.min(self.size);
        if offset >= end {
            return Ok(end);
        }
        let bs = self.block_size;
        let end_block = end.div_ceil(bs);
        let first = offset / bs;
        let mut want = first;
        let hint = *self.data_hint.lock().unwrap();
        if let Some((_, e)) = hint.filter(|&(s, e)| s <= first && first < e) {
            want = e;
        }
        let mut seen = 0u64;
        loop {
            if want >= end_block || seen >= HOLE_SCAN_MAX {
                *self.data_hint.lock().unwrap() = Some((first, end_block.max(want)));
                return Ok(end);
            }
            let found = self.data_blocks(want, end_block, HOLE_BATCH)?;
            seen += found.len() as u64;
            // Data blocks run on from `want` until the first gap.
            let run = found
                .iter()
                .zip(want..)
                .take_while(|(&b, w)| b == *w)
                .count();
            want += run as u64;
            if run < found.len() || found.len() < HOLE_BATCH {
                break;
            }
        }
        if want > first {
            *self.data_hint.lock().unwrap() = Some((first, want));
        }
        Ok((want * bs).max(offset).min(end))
    }

    /// Bytes of `start..end` in blocks that hold data (whole blocks, at most the
    /// range), or `None` past [`COUNT_MAX`] of them: an image's allocated size.
    pub fn data_bytes(&self, start: u64, end: u64) -> io::Result<Option<u64>> {
        let end = end.min(self.size);
        if start >= end {
            return Ok(Some(0));
        }
        let bs = self.block_size;
        let (mut at, last) = (start / bs, end.div_ceil(bs));
        let mut count = 0u64;
        while at < last {
            let found = self.data_blocks(at, last, HOLE_BATCH)?;
            count += found.len() as u64;
            if count > COUNT_MAX {
                return Ok(None);
            }
            match found.last() {
                Some(&b) if found.len() == HOLE_BATCH => at = b + 1,
                _ => break,
            }
        }
        Ok(Some((count * bs).min(end - start)))
    }

    /// Loads into the cache the blocks covering the given byte ranges, all in one
    /// fill (records read in pack order, decoded in parallel): readahead for
    /// sequential readers, and parsers' warm-ups of scattered metadata.
    pub fn prefetch(&self, ranges: &[(u64, u64)]) {
        let mut locs: Vec<BlockLoc> = Vec::new();
        for &(offset, len) in ranges {
            if offset >= self.size || len == 0 {
                continue;
            }
            let end = offset.saturating_add(len).min(self.size);
            let (first, last) = (offset / self.block_size, (end - 1) / self.block_size);
            if let Ok(l) = self.locs(first, last) {
                locs.extend(l.into_iter().flatten());
            }
        }
        self.cache.fill(&locs);
    }
}

impl ReadAt for PointDevice {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        if offset >= self.size || buf.is_empty() {
            return Ok(0);
        }
        let want = buf.len().min((self.size - offset) as usize);
        let end = offset + want as u64;
        self.check_readable(offset, end)?;
        let bs = self.block_size;
        let (first, last) = (offset / bs, (end - 1) / bs);
        let locs = self.locs(first, last)?;
        // Decompress the missing blocks of a large read on all cores.
        let missing: Vec<BlockLoc> = locs
            .iter()
            .flatten()
            .filter(|l| !self.cache.is_ready(l))
            .copied()
            .collect();
        if missing.len() > 1 {
            self.cache.fill(&missing);
        }
        let mut done = 0usize;
        for (i, loc) in locs.iter().enumerate() {
            let b = first + i as u64;
            let bstart = b * bs;
            let from = offset.max(bstart);
            let to = end.min(bstart + bs);
            let n = (to - from) as usize;
            let dst = &mut buf[done..done + n];
            match loc {
                None => dst.fill(0),
                Some(l) if l.is_zero() => dst.fill(0),
                Some(l) => {
                    let data = self.cache.block(l).map_err(|e| self.err(bstart, e))?;
                    let s = (from - bstart) as usize;
                    if data.len() < s + n {
                        return Err(self.err(bstart, "block shorter than the block size"));
                    }
                    dst.copy_from_slice(&data[s..s + n]);
                }
            }
            done += n;
        }
        Ok(done)
    }

    fn size(&self) -> u64 {
        self.size
    }

    fn prefetch(&self, ranges: &[(u64, u64)]) {
        PointDevice::prefetch(self, ranges)
    }

    fn prefetches(&self) -> bool {
        true
    }

    fn data_from(&self, offset: u64, end: u64) -> Option<io::Result<Option<u64>>> {
        Some(self.next_data(offset, end))
    }

    fn hole_from(&self, offset: u64, end: u64) -> Option<io::Result<u64>> {
        Some(self.next_hole(offset, end))
    }
}
