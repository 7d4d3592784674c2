//! A sharded, byte-bounded LRU, so memory while reading is set by `--cache`, not by the
//! device size or the number of points.
//!
//! Decompressed blocks are keyed by block id: blocks are content-addressed and shared
//! across points and devices, so a block read through one point is a hit for every
//! other point that holds it.

use std::hash::{BuildHasher, Hash};
use std::sync::Mutex;

use std::sync::Arc;

use bytes::Bytes;
use lru::LruCache;

use crate::safe_reader::{BlockError, BlockLoc, Safe};

const SHARDS: usize = 16;

/// Something whose memory cost the cache can weigh.
pub trait Weigh {
    /// Approximate heap bytes held.
    fn weight(&self) -> usize;
}

impl Weigh for Bytes {
    fn weight(&self) -> usize {
        self.len() + 64
    }
}

impl<T> Weigh for Arc<Vec<T>> {
    fn weight(&self) -> usize {
        self.len() * std::mem::size_of::<T>() + 64
    }
}

struct Shard<K: Hash + Eq, V> {
    lru: LruCache<K, V>,
    bytes: usize,
}

/// LRU bounded by total weight, split in shards so parallel readers rarely contend.
pub struct WeightedLru<K: Hash + Eq, V> {
    shards: Vec<Mutex<Shard<K, V>>>,
    per_shard: usize,
    hasher: std::collections::hash_map::RandomState,
}

impl<K: Hash + Eq + Clone, V: Weigh + Clone> WeightedLru<K, V> {
    /// A cache holding at most about `capacity` bytes.
    pub fn new(capacity: usize) -> Self {
        let per_shard = (capacity / SHARDS).max(1);
        WeightedLru {
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Shard {
                        lru: LruCache::unbounded(),
                        bytes: 0,
                    })
                })
                .collect(),
            per_shard,
            hasher: Default::default(),
        }
    }

    fn shard(&self, k: &K) -> &Mutex<Shard<K, V>> {
        &self.shards[self.hasher.hash_one(k) as usize % SHARDS]
    }

    /// Returns a cached value and marks it recently used.
    pub fn get(&self, k: &K) -> Option<V> {
        self.shard(k).lock().unwrap().lru.get(k).cloned()
    }

    /// True when `k` is cached, without touching its recency.
    pub fn contains(&self, k: &K) -> bool {
        self.shard(k).lock().unwrap().lru.contains(k)
    }

    /// Inserts a value, evicting least recently used ones past the byte budget.
    pub fn put(&self, k: K, v: V) {
        let w = v.weight();
        let mut s = self.shard(&k).lock().unwrap();
        if let Some(old) = s.lru.put(k, v) {
            s.bytes -= old.weight();
        }
        s.bytes += w;
        while s.bytes > self.per_shard && s.lru.len() > 1 {
            match s.lru.pop_lru() {
                Some((_, old)) => s.bytes -= old.weight(),
                None => break,
            }
        }
    }

    /// Bytes currently held, for tests and stats.
    pub fn bytes(&self) -> usize {
        self.shards.iter().map(|s| s.lock().unwrap().bytes).sum()
    }
}

/// Blocks of a map segment: one SQLite query serves this many consecutive blocks (16 MiB
/// of device at 64 KiB blocks), small enough that a random read's miss stays cheap.
pub const MAP_SEGMENT: u64 = 256;

/// Longest run of records read with one pread.
const RUN_BYTES: u64 = 8 << 20;

/// Map segment key: (device id, point id, segment number).
type SegKey = (i64, i64, u64);

/// A block being decompressed by one thread, which others wait for instead of doing
/// the same work (a reader and the readahead often want the same block).
type Loading = Arc<std::sync::OnceLock<Result<Bytes, Arc<BlockError>>>>;

/// A safe with its block and map caches: the one object readers share.
pub struct CachedSafe {
    safe: Arc<Safe>,
    blocks: WeightedLru<i64, Bytes>,
    maps: WeightedLru<SegKey, Arc<Vec<Option<BlockLoc>>>>,
    loading: Mutex<std::collections::HashMap<i64, Loading>>,
}

impl CachedSafe {
    /// Wraps `safe` with caches totalling about `cache_bytes`, a quarter of it for block
    /// maps (about 100 bytes per device block: 64 MiB maps a 40 GiB device whole).
    pub fn new(safe: Arc<Safe>, cache_bytes: usize) -> Self {
        let map_bytes = (cache_bytes / 4).max(4 << 20);
        CachedSafe {
            safe,
            blocks: WeightedLru::new(cache_bytes.saturating_sub(map_bytes).max(1 << 20)),
            maps: WeightedLru::new(map_bytes),
            loading: Mutex::new(std::collections::HashMap::new()),
        }
    }

    /// The underlying safe.
    pub fn safe(&self) -> &Arc<Safe> {
        &self.safe
    }

    /// Block locations of segment `seg` of a device at a point, cached.
    pub fn segment(
        &self,
        device: i64,
        point: i64,
        seg: u64,
    ) -> anyhow::Result<Arc<Vec<Option<BlockLoc>>>> {
        let key = (device, point, seg);
        if let Some(v) = self.maps.get(&key) {
            return Ok(v);
        }
        let v = Arc::new(
            self.safe
                .block_run(device, point, seg * MAP_SEGMENT, MAP_SEGMENT)?,
        );
        self.maps.put(key, v.clone());
        Ok(v)
    }

    /// True when a block needs no pack read (zero or cached).
    pub fn is_ready(&self, loc: &BlockLoc) -> bool {
        loc.is_zero() || self.blocks.contains(&loc.id)
    }

    /// Loads the given blocks into the cache: records that lie back to back in a pack
    /// are read with one pread (small reads in parallel defeat the pack's readahead and
    /// wait on the disk one by one), then decoded on all cores.
    pub fn fill(&self, locs: &[BlockLoc]) {
        use rayon::prelude::*;
        let mut want: Vec<&BlockLoc> = locs.iter().filter(|l| !self.is_ready(l)).collect();
        want.sort_by_key(|l| (l.pack, l.offset));
        want.dedup_by_key(|l| l.id);
        let mut runs: Vec<&[&BlockLoc]> = Vec::new();
        let mut start = 0;
        for i in 1..=want.len() {
            let split = i == want.len() || {
                let (a, b) = (want[i - 1], want[i]);
                let end = a.offset + crate::format::RECORD_HEADER_LEN as u64 + a.stored_len as u64;
                b.pack != a.pack || b.offset != end || end - want[start].offset > RUN_BYTES
            };
            if split {
                runs.push(&want[start..i]);
                start = i;
            }
        }
        runs.par_iter().for_each(|run| {
            let first = run[0];
            let last = run[run.len() - 1];
            let end =
                last.offset + crate::format::RECORD_HEADER_LEN as u64 + last.stored_len as u64;
            let mut span = vec![0u8; (end - first.offset) as usize];
            if self
                .safe
                .read_pack(first.pack, first.offset, &mut span)
                .is_err()
            {
                return; // each block then reports its own error when read
            }
            run.par_iter().for_each(|l| {
                let at = (l.offset - first.offset) as usize;
                let rec = &span[at..at + crate::format::RECORD_HEADER_LEN + l.stored_len as usize];
                let _ = self.load_once(l, || {
                    let mut out = vec![0u8; l.raw_len as usize];
                    self.safe.decode_record(l, rec, &mut out)?;
                    Ok(Bytes::from(out))
                });
            });
        });
    }

    /// The plain bytes of a block, from cache or decompressed and verified (once, even
    /// when several threads ask at the same time).
    pub fn block(&self, loc: &BlockLoc) -> Result<Bytes, BlockError> {
        if loc.is_zero() {
            return Ok(zero_block(self.safe.params().block_size as usize));
        }
        if let Some(b) = self.blocks.get(&loc.id) {
            return Ok(b);
        }
        self.load_once(loc, || self.safe.load_block(loc))
    }

    /// Runs `load` for a block unless another thread is already loading it (then
    /// waits for that result), and caches what comes out: a reader and the readahead
    /// asking for the same block decompress it once.
    fn load_once(
        &self,
        loc: &BlockLoc,
        load: impl FnOnce() -> Result<Bytes, BlockError>,
    ) -> Result<Bytes, BlockError> {
        let cell = self
            .loading
            .lock()
            .unwrap()
            .entry(loc.id)
            .or_default()
            .clone();
        let mut mine = false;
        let r = cell
            .get_or_init(|| {
                mine = true;
                load().map_err(Arc::new)
            })
            .clone();
        if mine {
            if let Ok(b) = &r {
                self.blocks.put(loc.id, b.clone());
            }
            self.loading.lock().unwrap().remove(&loc.id);
        }
        r.map_err(BlockError::Shared)
    }
}

/// One shared zero block per size, so zero reads allocate nothing.
fn zero_block(size: usize) -> Bytes {
    static ZERO: std::sync::OnceLock<Bytes> = std::sync::OnceLock::new();
    let z = ZERO.get_or_init(|| Bytes::from(vec![0u8; crate::format::MAX_BLOCK_SIZE as usize]));
    z.slice(..size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stays_within_budget_and_keeps_recent() {
        let c: WeightedLru<u64, Bytes> = WeightedLru::new(16 * 1024 * 1024);
        for i in 0..1000u64 {
            c.put(i, Bytes::from(vec![i as u8; 65536]));
        }
        assert!(c.bytes() <= 16 * 1024 * 1024 + SHARDS * 65600);
        assert_eq!(c.get(&999).unwrap()[0], (999 % 256) as u8);
        assert!(c.get(&0).is_none());
    }
}
