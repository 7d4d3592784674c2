//! A sharded, byte-bounded LRU, so memory while reading is set by `--cache`, not by the
//! device size or the number of points.
//!
//! Decompressed blocks are keyed by block id: blocks are content-addressed and shared
//! across points and devices, so a block read through one point is a hit for every
//! other point that holds it.

use std::hash::{BuildHasher, Hash};
use std::sync::atomic::{AtomicUsize, Ordering};
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

impl<K: Hash + Eq, V: Weigh> Shard<K, V> {
    /// Evicts the least recently used entry and returns its weight; the newest entry
    /// always stays (a single listing bigger than any cap, a huge directory, must stay
    /// cached, or every lookup in it would parse it again).
    fn evict_oldest(&mut self) -> Option<usize> {
        if self.lru.len() < 2 {
            return None;
        }
        let (_, old) = self.lru.pop_lru()?;
        let w = old.weight();
        self.bytes -= w;
        Some(w)
    }
}

/// A byte budget that many caches draw on together: a mount keeps parser caches per
/// volume browsed, and however many volumes (points x partitions) are opened, their
/// caches share this one bound. Past it, members give up their least recently used
/// entries in turn, so caches of volumes no longer browsed drain while the busy ones
/// refill. Each shard keeps its newest entry, so the bound can be passed by one entry
/// per shard of each member.
pub struct Budget {
    limit: usize,
    used: AtomicUsize,
    members: Mutex<Vec<std::sync::Weak<dyn Trim>>>,
    cursor: AtomicUsize,
}

/// A cache that can give up one entry for a shared [`Budget`].
trait Trim: Send + Sync {
    /// Evicts the least recently used entry of one shard holding two or more; false
    /// when none does.
    fn trim_one(&self) -> bool;
}

impl std::fmt::Debug for Budget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Budget({} of {} bytes)", self.used(), self.limit)
    }
}

impl Budget {
    /// A shared budget of `limit` bytes.
    pub fn new(limit: usize) -> Arc<Budget> {
        Arc::new(Budget {
            limit,
            used: AtomicUsize::new(0),
            members: Mutex::new(Vec::new()),
            cursor: AtomicUsize::new(0),
        })
    }

    /// The bound, so speculative loads (warm-ups) can leave room for real ones.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Bytes held by all caches on this budget, for tests and stats.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// Evicts from the members in turn until the budget holds again. Called with no
    /// shard locked, so members trimming each other cannot deadlock.
    fn settle(&self) {
        let mut idle_rounds = 0;
        while self.used() > self.limit {
            let member = {
                let mut m = self.members.lock().unwrap();
                m.retain(|w| w.strong_count() > 0);
                if m.is_empty() {
                    return;
                }
                let i = self.cursor.fetch_add(1, Ordering::Relaxed) % m.len();
                m[i].upgrade()
            };
            let Some(member) = member else { continue };
            if member.trim_one() {
                idle_rounds = 0;
            } else {
                idle_rounds += 1;
                if idle_rounds > self.members.lock().unwrap().len() {
                    return; // every member is empty
                }
            }
        }
    }
}

struct Inner<K: Hash + Eq, V> {
    shards: Vec<Mutex<Shard<K, V>>>,
    per_shard: usize,
    hasher: std::collections::hash_map::RandomState,
    budget: Option<Arc<Budget>>,
    /// Shard to trim next for the budget.
    next_trim: AtomicUsize,
}

/// LRU bounded by total weight, split in shards so parallel readers rarely contend.
pub struct WeightedLru<K: Hash + Eq, V> {
    inner: Arc<Inner<K, V>>,
}

impl<K: Hash + Eq + Send, V: Weigh + Send> Trim for Inner<K, V> {
    fn trim_one(&self) -> bool {
        for _ in 0..SHARDS {
            let i = self.next_trim.fetch_add(1, Ordering::Relaxed) % SHARDS;
            if let Some(w) = self.shards[i].lock().unwrap().evict_oldest() {
                if let Some(b) = &self.budget {
                    b.used.fetch_sub(w, Ordering::Relaxed);
                }
                return true;
            }
        }
        false
    }
}

impl<K: Hash + Eq, V> Drop for Inner<K, V> {
    fn drop(&mut self) {
        if let Some(b) = &self.budget {
            let held: usize = self.shards.iter().map(|s| s.lock().unwrap().bytes).sum();
            b.used.fetch_sub(held, Ordering::Relaxed);
        }
    }
}

impl<K: Hash + Eq + Clone + Send + 'static, V: Weigh + Clone + Send + 'static> WeightedLru<K, V> {
    /// A cache holding at most about `capacity` bytes.
    pub fn new(capacity: usize) -> Self {
        Self::with_budget(capacity, None)
    }

    /// A cache drawing on a `budget` shared with other caches, or bounded by
    /// `capacity` alone without one. Under a budget it may grow to the budget's whole
    /// limit (or `capacity`, if larger): the budget is what bounds memory, and the cache
    /// of the one volume being walked should get all of it rather than re-parse what a
    /// small fixed cap evicted (a walk of 50 000 NTFS records parsed them all again).
    pub fn with_budget(capacity: usize, budget: Option<Arc<Budget>>) -> Self {
        let capacity = budget.as_ref().map_or(capacity, |b| capacity.max(b.limit));
        let per_shard = (capacity / SHARDS).max(1);
        let inner = Arc::new(Inner {
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
            budget: budget.clone(),
            next_trim: AtomicUsize::new(0),
        });
        if let Some(b) = budget {
            let member: Arc<dyn Trim> = inner.clone();
            b.members.lock().unwrap().push(Arc::downgrade(&member));
        }
        WeightedLru { inner }
    }

    fn shard(&self, k: &K) -> &Mutex<Shard<K, V>> {
        &self.inner.shards[self.inner.hasher.hash_one(k) as usize % SHARDS]
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
        let budget = self.inner.budget.as_ref();
        let mut s = self.shard(&k).lock().unwrap();
        let mut freed = 0;
        if let Some(old) = s.lru.put(k, v) {
            freed += old.weight();
        }
        s.bytes = s.bytes + w - freed;
        while s.bytes > self.inner.per_shard {
            let Some(w) = s.evict_oldest() else { break };
            freed += w;
        }
        if let Some(b) = budget {
            // Under the shard lock, so a concurrent trim never sees its entry uncounted.
            b.used.fetch_add(w, Ordering::Relaxed);
            b.used.fetch_sub(freed, Ordering::Relaxed);
        }
        drop(s);
        if let Some(b) = budget {
            b.settle();
        }
    }

    /// Drops every entry, for values that went stale all at once.
    pub fn clear(&self) {
        for shard in self.inner.shards.iter() {
            let mut s = shard.lock().unwrap();
            s.lru.clear();
            if let Some(b) = &self.inner.budget {
                b.used.fetch_sub(s.bytes, Ordering::Relaxed);
            }
            s.bytes = 0;
        }
    }

    /// The bytes it holds at most on its own (a budget may let it grow further).
    pub fn capacity(&self) -> usize {
        self.inner.per_shard * SHARDS
    }

    /// Bytes currently held, for tests and stats.
    pub fn bytes(&self) -> usize {
        self.inner
            .shards
            .iter()
            .map(|s| s.lock().unwrap().bytes)
            .sum()
    }
}

/// Blocks of a map segment: one SQLite query serves this many consecutive blocks (16 MiB
/// of device at 64 KiB blocks), small enough that a random read's miss stays cheap.
pub const MAP_SEGMENT: u64 = 256;

/// Read buffers for runs of records, kept between fills: a fresh multi-MiB buffer costs
/// a page fault per 4 KiB on every run. A few only, whatever the number of cores.
static SPANS: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());
const SPANS_KEPT: usize = 4;

/// A pooled buffer (contents and size unspecified) for [`CachedSafe::fill`].
fn take_span() -> Vec<u8> {
    SPANS.lock().unwrap().pop().unwrap_or_default()
}

fn give_span(v: Vec<u8>) {
    let mut kept = SPANS.lock().unwrap();
    if kept.len() < SPANS_KEPT {
        kept.push(v);
    }
}

/// Longest run of records read with one pread.
const RUN_BYTES: u64 = 8 << 20;
/// Runs at least this long bypass the page cache (see [`Safe::read_run`]): they are
/// streamed once; shorter ones keep the page cache as a second-level cache of
/// compressed blocks. 128 KiB (a handful of records) rather than 1 MiB: the 16-block
/// fills of a kernel read that outran the prefetch then skip the page cache's fresh
/// pages and copy too, which gave cold sequential reads +7 % and an ext `tar` +11 %
/// (medians of 6 pairs, BENCHMARKS.md); an NTFS walk was unchanged.
const DIRECT_MIN: usize = 128 << 10;

/// Fills of at most this many blocks are decoded on the caller's thread.
const INLINE_BLOCKS: usize = 4;

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
    trees: Arc<Budget>,
    loading: Mutex<std::collections::HashMap<i64, Loading>>,
    /// [`Safe::relocations`] when `maps` was last known current.
    relocations: std::sync::atomic::AtomicU64,
}

impl CachedSafe {
    /// Wraps `safe` with caches totalling about `cache_bytes`: a quarter for block maps
    /// (about 100 bytes per device block: 64 MiB maps a 40 GiB device whole), a quarter
    /// for the parsed metadata of every file tree opened (see [`Self::tree_budget`]:
    /// 64 MiB holds about 100 000 parsed NTFS files, which a walk reuses more than
    /// blocks it has parsed already), the rest for blocks.
    pub fn new(safe: Arc<Safe>, cache_bytes: usize) -> Self {
        let map_bytes = (cache_bytes / 4).max(4 << 20);
        let tree_bytes = (cache_bytes / 4).max(8 << 20);
        let block_bytes = cache_bytes.saturating_sub(map_bytes + tree_bytes);
        CachedSafe {
            safe,
            blocks: WeightedLru::new(block_bytes.max(1 << 20)),
            maps: WeightedLru::new(map_bytes),
            trees: Budget::new(tree_bytes),
            loading: Mutex::new(std::collections::HashMap::new()),
            relocations: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// The budget all file-tree parsers of this safe share for their caches, so that
    /// browsing many points and partitions stays within `--cache`.
    pub fn tree_budget(&self) -> &Arc<Budget> {
        &self.trees
    }

    /// Bytes of decompressed blocks the cache holds, so readahead fetches no further
    /// ahead than stays cached until the reader gets there.
    pub fn block_capacity(&self) -> usize {
        self.blocks.capacity()
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
        // A `forget` rewrote a pack: every cached location may name the old one, and
        // each read through it would cost a failed open and a lookup.
        let moved = self.safe.relocations();
        if self.relocations.swap(moved, Ordering::AcqRel) != moved {
            self.maps.clear();
        }
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
        // A few blocks (an index node, a small listing) are decoded right here: handing
        // them to the pool costs a wake-up or two, and a wait behind whatever it runs.
        if want.len() <= INLINE_BLOCKS {
            runs.iter().for_each(|run| self.fill_run(run, false));
        } else {
            runs.par_iter().for_each(|run| self.fill_run(run, true));
        }
    }

    /// Reads one run of back-to-back records with one pread and decodes its blocks
    /// into the cache, on all cores when `parallel`.
    fn fill_run(&self, run: &[&BlockLoc], parallel: bool) {
        use rayon::prelude::*;
        let first = run[0];
        let last = run[run.len() - 1];
        let end = last.offset + crate::format::RECORD_HEADER_LEN as u64 + last.stored_len as u64;
        let len = (end - first.offset) as usize;
        let mut span = take_span();
        let direct = len >= DIRECT_MIN;
        let read = self
            .safe
            .read_run(first.pack, first.offset, len, &mut span, direct);
        let Ok(base) = read else {
            give_span(span);
            return; // each block then reports its own error when read
        };
        let span_ref = &span[base..base + len];
        let decode = |l: &&BlockLoc| {
            let at = (l.offset - first.offset) as usize;
            let rec = &span_ref[at..at + crate::format::RECORD_HEADER_LEN + l.stored_len as usize];
            let _ = self.load_once(l, || Ok(Bytes::from(self.safe.decode_record_vec(l, rec)?)));
        };
        if parallel {
            run.par_iter().for_each(decode);
        } else {
            run.iter().for_each(decode);
        }
        give_span(span);
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
        self.load_once(loc, || self.safe.load_block_scattered(loc))
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

    #[test]
    fn caches_sharing_a_budget_stay_within_it_together() {
        let budget = Budget::new(4 << 20);
        let caches: Vec<WeightedLru<u64, Bytes>> = (0..20)
            .map(|_| WeightedLru::with_budget(16 << 20, Some(budget.clone())))
            .collect();
        let entry = 4096 + 64;
        for (n, c) in caches.iter().enumerate() {
            for i in 0..1000u64 {
                c.put(i, Bytes::from(vec![n as u8; 4096]));
            }
        }
        let held: usize = caches.iter().map(|c| c.bytes()).sum();
        assert_eq!(held, budget.used());
        // Past the budget by at most one entry per shard of each cache.
        assert!(held <= (4 << 20) + 20 * SHARDS * entry, "{held} bytes held");
        // Caches filled long ago gave their entries up to the busy one, but for the
        // newest of each shard.
        assert!(caches[0].bytes() <= SHARDS * entry, "{}", caches[0].bytes());
        assert!(caches[19].bytes() >= 2 << 20, "{}", caches[19].bytes());
        assert_eq!(caches[19].get(&999).unwrap()[0], 19);
        drop(caches);
        assert_eq!(budget.used(), 0, "dropped caches return their bytes");
    }

    #[test]
    fn under_a_budget_a_cache_grows_past_its_own_capacity() {
        let budget = Budget::new(8 << 20);
        let nodes: WeightedLru<u64, Bytes> = WeightedLru::with_budget(1 << 20, Some(budget));
        for i in 0..1500u64 {
            nodes.put(i, Bytes::from(vec![i as u8; 4096]));
        }
        // 6 MiB put: all of it held (the 1 MiB capacity applies only without a budget).
        assert!(nodes.bytes() >= 1500 * 4096, "{}", nodes.bytes());
        assert_eq!(nodes.get(&0).unwrap()[0], 0);
    }

    #[test]
    fn an_entry_larger_than_the_budget_stays_cached() {
        let budget = Budget::new(1 << 20);
        let dirs: WeightedLru<u64, Bytes> =
            WeightedLru::with_budget(16 << 20, Some(budget.clone()));
        let inodes: WeightedLru<u64, Bytes> = WeightedLru::with_budget(16 << 20, Some(budget));
        dirs.put(1, Bytes::from(vec![7u8; 3 << 20]));
        for i in 0..2000u64 {
            inodes.put(i, Bytes::from(vec![1u8; 256]));
        }
        assert_eq!(dirs.get(&1).map(|b| b.len()), Some(3 << 20));
    }
}
