//! One device at one recovery point as a [`ReadAt`]: blocks are reconstructed on demand
//! from the map and the block cache, never restored up front.

use std::io;
use std::sync::Arc;

use crate::cache::{CachedSafe, MAP_SEGMENT};
use crate::readat::ReadAt;
use crate::safe_reader::BlockLoc;

/// A device as it was at a point, readable by offset.
pub struct PointDevice {
    cache: Arc<CachedSafe>,
    point: i64,
    device: i64,
    name: String,
    size: u64,
    block_size: u64,
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
}
