//! Which byte ranges of raw images, and of large files in file trees, to decompress
//! ahead of their readers.
//!
//! The kernel's own readahead asks for at most a MiB or so ahead and waits for each
//! reply in turn; decompressing further ahead in the background lets a sequential
//! reader find its blocks ready. This module only decides *what* to fetch: a table of
//! sequential streams per file (an "image" below: any inode read this way), bounded
//! in size whatever the number of files read.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Mutex;

/// Readahead window bounds for sequential readers; the windows of all active streams
/// also share a quarter of the block cache (see [`Streams::new`]).
const RA_MIN: u64 = 2 << 20;
const RA_MAX: u64 = 32 << 20;
/// The largest window never drops below this, whatever the cache: a few blocks.
const RA_FLOOR: u64 = 256 << 10;
/// Reads within this distance of a stream's end continue it: the kernel's parallel
/// readahead reorders them slightly.
const RA_SLACK: u64 = 8 << 20;

/// Sequential streams followed per image: readers of one image at different offsets
/// (a copy and a checksum, say) each keep their own window.
const STREAMS: usize = 8;

/// Images whose streams are remembered: a mount of many points may be read image by
/// image for days, and the table must not grow with every image ever read.
const IMAGES: usize = 64;

/// One sequential reader of an image.
#[derive(Default, Clone, Copy, Debug)]
struct Seq {
    next: u64,
    window: u64,
    fetched_to: u64,
    /// When this stream was last advanced (a counter), to replace the stalest one.
    used: u64,
    /// Reads that continued it.
    hits: u32,
}

#[derive(Default)]
struct Table {
    images: HashMap<u64, Vec<Seq>>,
    tick: u64,
}

/// Sequential streams of every image being read, shared by the FUSE workers.
pub struct Streams {
    table: Mutex<Table>,
    /// Bytes all streams together may have fetched ahead of their readers.
    ahead_total: u64,
}

/// A stream advanced within this many reads (of any image) counts as active when the
/// streams share [`Streams::new`]'s allowance.
const ACTIVE_READS: u64 = 256;

impl Streams {
    /// Streams whose windows fit a block cache of `cache_bytes`: blocks decompressed
    /// ahead must still be cached when the reader gets to them, or they are evicted
    /// and decompressed again (with a 32 MiB block cache and 32 MiB windows a cold
    /// read took twice the CPU). A quarter of the cache is shared by the active
    /// streams, which leaves room for the blocks everything else uses.
    pub fn new(cache_bytes: u64) -> Self {
        Streams {
            table: Mutex::new(Table::default()),
            ahead_total: (cache_bytes / 4).max(RA_FLOOR),
        }
    }

    /// Records a read of `len` bytes at `offset` of image `ino` (`image_len` bytes
    /// long) and returns the range, relative to the image, to decompress ahead now,
    /// if any. A stream starts fetching at its third read, so that two random reads
    /// that happen to land near each other start nothing; its window then doubles
    /// from 2 MiB up to 32 MiB or its share of the allowance, and is topped up once
    /// half of it has been read.
    pub fn advance(&self, ino: u64, offset: u64, len: u64, image_len: u64) -> Option<Range<u64>> {
        let end = offset.saturating_add(len);
        let mut t = self.table.lock().unwrap();
        t.tick += 1;
        let tick = t.tick;
        if !t.images.contains_key(&ino) && t.images.len() >= IMAGES {
            let stalest = t
                .images
                .iter()
                .min_by_key(|(_, s)| s.iter().map(|s| s.used).max().unwrap_or(0))
                .map(|(&k, _)| k);
            if let Some(k) = stalest {
                t.images.remove(&k);
            }
        }
        let streams = t.images.entry(ino).or_default();
        let hit = streams.iter().position(|s| {
            offset.saturating_add(RA_SLACK) >= s.next && offset <= s.next.saturating_add(RA_SLACK)
        });
        let Some(i) = hit else {
            let fresh = Seq {
                next: end,
                window: 0,
                fetched_to: end,
                used: tick,
                hits: 0,
            };
            if streams.len() < STREAMS {
                streams.push(fresh);
            } else if let Some(stale) = streams.iter_mut().min_by_key(|s| s.used) {
                *stale = fresh;
            }
            return None;
        };
        let s = &mut streams[i];
        s.used = tick;
        s.next = s.next.max(end);
        s.hits = s.hits.saturating_add(1);
        if s.hits < 2 {
            return None;
        }
        // This stream's share: the others fetching lately keep theirs.
        let active = t
            .images
            .values()
            .flatten()
            .filter(|s| s.hits >= 2 && tick - s.used <= ACTIVE_READS)
            .count()
            .max(1) as u64;
        let cap = (self.ahead_total / active).clamp(RA_FLOOR, RA_MAX);
        let s = &mut t.images.get_mut(&ino).expect("stream just found")[i];
        s.window = (s.window * 2).clamp(RA_MIN.min(cap), cap);
        if s.fetched_to > end.saturating_add(s.window / 2) {
            return None; // enough is already on its way
        }
        let from = s.fetched_to.max(end);
        let to = end.saturating_add(s.window).min(image_len);
        if to <= from {
            return None;
        }
        s.fetched_to = to;
        Some(from..to)
    }

    /// Images with streams remembered, for tests.
    #[cfg(test)]
    fn images(&self) -> usize {
        self.table.lock().unwrap().images.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;
    const LEN: u64 = 1 << 40;

    /// Reads `n` MiB in order from `at`, returning every range fetched.
    fn read_on(s: &Streams, ino: u64, at: u64, n: u64) -> Vec<Range<u64>> {
        (0..n)
            .filter_map(|i| s.advance(ino, at + i * MIB, MIB, LEN))
            .collect()
    }

    #[test]
    fn a_sequential_reader_is_fetched_ahead_without_gaps_or_overlaps() {
        let s = Streams::new(1 << 30);
        let got = read_on(&s, 1, 0, 256);
        assert!(!got.is_empty());
        // From the third read on, what is fetched joins up and stays ahead.
        assert_eq!(got[0].start, 3 * MIB);
        for w in got.windows(2) {
            assert_eq!(w[0].end, w[1].start, "fetches join: {got:?}");
        }
        assert!(got.last().unwrap().end >= 256 * MIB);
        assert!(got.iter().all(|r| r.end - r.start <= RA_MAX));
    }

    #[test]
    fn a_small_cache_keeps_the_reader_and_its_fetches_close() {
        // A 32 MiB block cache: at most 8 MiB may be fetched ahead of the reader, or
        // blocks would be evicted before it gets to them.
        let s = Streams::new(32 << 20);
        let mut ahead_max = 0;
        let mut fetched_to = 0;
        for i in 0..512 {
            let end = (i + 1) * MIB;
            if let Some(r) = s.advance(5, i * MIB, MIB, LEN) {
                fetched_to = r.end;
            }
            ahead_max = ahead_max.max(fetched_to.saturating_sub(end));
        }
        assert!(fetched_to >= 512 * MIB, "still fetched ahead");
        assert!(ahead_max <= 8 * MIB, "{ahead_max} bytes ahead");
        // A tiny cache still gets a few blocks ahead.
        let s = Streams::new(1 << 20);
        let got = read_on(&s, 6, 0, 64);
        assert!(!got.is_empty() && got.iter().all(|r| r.end - r.start <= RA_FLOOR));
    }

    #[test]
    fn concurrent_readers_share_the_allowance() {
        // Four readers of four images, in turn, over a 128 MiB block cache: once all
        // four run, each keeps at most 8 MiB fetched ahead (32 MiB together).
        let s = Streams::new(128 << 20);
        let mut fetched_to = [0u64; 4];
        for round in 0..512 {
            for (k, f) in fetched_to.iter_mut().enumerate() {
                let end = (round + 1) * MIB;
                if let Some(r) = s.advance(k as u64, round * MIB, MIB, LEN) {
                    *f = r.end;
                }
                if round >= 64 {
                    assert!(*f >= end, "reader {k} still fetched ahead at {round}");
                    assert!(*f - end <= 8 * MIB, "reader {k}: {} bytes ahead", *f - end);
                }
            }
        }
        // Alone again, a reader gets back to the full window.
        let mut f = 0;
        for round in 512..1024 {
            if let Some(r) = s.advance(0, round * MIB, MIB, LEN) {
                f = r.end;
            }
        }
        assert!(
            f - 1024 * MIB > 8 * MIB,
            "a lone reader's window grows back"
        );
    }

    #[test]
    fn random_reads_fetch_nothing() {
        let s = Streams::new(1 << 30);
        // A 4 KiB random reader over a large image: a read may land near an earlier
        // one by chance, but never twice in a row, so no window is ever fetched.
        let mut x: u64 = 12345;
        let fetched: u64 = (0..10_000)
            .filter_map(|_| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                s.advance(7, (x >> 24) % (LEN / 4096) * 4096, 4096, LEN)
            })
            .map(|r| r.end - r.start)
            .sum();
        assert_eq!(fetched, 0);
    }

    #[test]
    fn two_interleaved_readers_each_keep_their_window() {
        let s = Streams::new(1 << 30);
        let (a, b) = (0, 100 << 30);
        let mut got_a = Vec::new();
        let mut got_b = Vec::new();
        for i in 0..64 {
            got_a.extend(s.advance(3, a + i * MIB, MIB, LEN));
            got_b.extend(s.advance(3, b + i * MIB, MIB, LEN));
        }
        assert!(got_a.iter().all(|r| r.start < (1 << 30)) && !got_a.is_empty());
        assert!(got_b.iter().all(|r| r.start >= b) && !got_b.is_empty());
    }

    #[test]
    fn nothing_is_fetched_past_the_end_of_the_image() {
        let s = Streams::new(1 << 30);
        let len = 10 * MIB + 123;
        let got: Vec<_> = (0..11)
            .filter_map(|i| s.advance(9, i * MIB, MIB.min(len - i * MIB), len))
            .collect();
        assert!(got.iter().all(|r| r.end <= len && r.start < r.end));
        assert_eq!(got.last().unwrap().end, len);
    }

    #[test]
    fn the_table_stays_bounded_over_many_images() {
        let s = Streams::new(1 << 30);
        for ino in 0..10_000 {
            read_on(&s, ino, 0, 3);
        }
        assert_eq!(s.images(), IMAGES);
        // The newest images keep their streams: a reader of the last one carries on.
        assert!(s.advance(9_999, 3 * MIB, MIB, LEN).is_some());
    }
}
