//! LVM thin volumes (device-mapper's thin provisioning, as Proxmox keeps VM disks):
//! a thin LV's chunks live anywhere in its pool's data volume, mapped by a btree in
//! the pool's metadata volume.
//!
//! The metadata is in 4 KiB blocks: a superblock, then btree nodes (checksummed,
//! each naming its own block). The mapping btree has two levels: thin device id to
//! the root of that device's tree, virtual chunk to data chunk (the value's bits
//! above 24; the low 24 are a time stamp). Unmapped chunks read as zeros. Lookups
//! go through a small cache of nodes; every node is checked before use and a walk is
//! bounded in depth.

use std::collections::HashSet;
use std::io;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};

use crate::readat::ReadAt;

use super::pdata::{bad, csum, le32, le64, Node, BLOCK};

const SB_MAGIC: u64 = 27_022_010;
const SB_CSUM_XOR: u32 = 160_774;
/// Deepest btree walked (a 4 KiB node holds over 250 keys: 8 levels is beyond any pool).
const MAX_DEPTH: usize = 8;
const NODE_CACHE: usize = 512;
/// Most mapped chunks a hole search steps over before it answers "no hole".
const HOLE_SCAN: u64 = 1 << 16;
/// Most chunks one prefetch hint maps.
const PREFETCH_CHUNKS: u64 = 1024;

/// A thin LV as a volume.
pub struct ThinVolume {
    meta: Arc<dyn ReadAt>,
    data: Arc<dyn ReadAt>,
    root: u64,
    chunk: u64,
    size: u64,
    /// Chunks mapped, from the pool's device details.
    mapped: u64,
    nodes: Mutex<lru::LruCache<u64, Arc<Vec<u8>>>>,
}

impl ThinVolume {
    /// Opens thin device `device_id` of a pool whose metadata and data volumes are
    /// given, `size` bytes long, in chunks of `chunk` bytes (as LVM describes it).
    pub fn open(
        meta: Arc<dyn ReadAt>,
        data: Arc<dyn ReadAt>,
        device_id: u64,
        chunk: u64,
        size: u64,
    ) -> Result<ThinVolume, String> {
        let (mut v, sb) = ThinVolume::pool(meta, data, chunk)?;
        v.size = size;
        let top = le64(&sb, 320);
        v.root = v
            .lookup(top, device_id)
            .map_err(|e| format!("thin pool mapping: {e}"))?
            .ok_or(format!("thin device {device_id} is not in its pool"))?;
        // The device details' first field counts its mapped chunks (stat's blocks).
        v.mapped = v
            .lookup(le64(&sb, 328), device_id)
            .ok()
            .flatten()
            .unwrap_or(size / chunk);
        Ok(v)
    }

    /// A reader of the pool's metadata, not yet of any device, and its checked
    /// superblock.
    fn pool(
        meta: Arc<dyn ReadAt>,
        data: Arc<dyn ReadAt>,
        chunk: u64,
    ) -> Result<(ThinVolume, Vec<u8>), String> {
        let mut sb = vec![0u8; BLOCK];
        meta.read_exact_at(0, &mut sb)
            .map_err(|e| format!("thin pool metadata: {e}"))?;
        if le64(&sb, 32) != SB_MAGIC {
            return Err("thin pool metadata has no superblock".into());
        }
        if csum(&sb[4..], SB_CSUM_XOR) != le32(&sb, 0) {
            return Err("thin pool superblock checksum mismatch".into());
        }
        if le32(&sb, 340) as usize * 512 != BLOCK {
            return Err(format!(
                "thin pool metadata blocks of {} sectors",
                le32(&sb, 340)
            ));
        }
        if le32(&sb, 336) as u64 * 512 != chunk || chunk == 0 {
            return Err(format!(
                "thin pool chunks of {} sectors, LVM says {}",
                le32(&sb, 336),
                chunk / 512
            ));
        }
        let v = ThinVolume {
            meta,
            data,
            root: 0,
            chunk,
            size: 0,
            mapped: 0,
            nodes: Mutex::new(lru::LruCache::new(NonZeroUsize::new(NODE_CACHE).unwrap())),
        };
        Ok((v, sb))
    }

    /// Calls `f(key, value)` for every entry of the leaves below `b`, except those of
    /// nodes already in `seen` (snapshots share subtrees: their entries are met once).
    fn walk(
        &self,
        b: u64,
        depth: usize,
        seen: &mut HashSet<u64>,
        f: &mut dyn FnMut(u64, u64) -> io::Result<()>,
    ) -> io::Result<()> {
        if depth >= MAX_DEPTH {
            return Err(bad("thin mapping btree deeper than any pool"));
        }
        if !seen.insert(b) {
            return Ok(());
        }
        let raw = self.node(b)?;
        let n = Node(&raw);
        let leaf = n.is_leaf(b)?;
        for i in 0..n.count() {
            if leaf {
                f(n.key(i), n.value(i))?;
            } else {
                self.walk(n.value(i), depth + 1, seen, f)?;
            }
        }
        Ok(())
    }

    /// Metadata block `b`, checked as a btree node.
    fn node(&self, b: u64) -> io::Result<Arc<Vec<u8>>> {
        if let Some(n) = self.nodes.lock().unwrap().get(&b) {
            return Ok(n.clone());
        }
        let at = b
            .checked_mul(BLOCK as u64)
            .ok_or_else(|| bad(format!("thin metadata block {b}")))?;
        let mut n = vec![0u8; BLOCK];
        self.meta.read_exact_at(at, &mut n)?;
        // Mapping values are 8 bytes, device details 24.
        super::pdata::check_node(&n, b, &[8, 24], "thin metadata")?;
        let n = Arc::new(n);
        self.nodes.lock().unwrap().put(b, n.clone());
        Ok(n)
    }

    /// The value stored for `key` in the btree rooted at `root`.
    fn lookup(&self, root: u64, key: u64) -> io::Result<Option<u64>> {
        let mut b = root;
        for _ in 0..MAX_DEPTH {
            let raw = self.node(b)?;
            let n = Node(&raw);
            let below = n.at_most(key);
            if n.is_leaf(b)? {
                return Ok((below > 0 && n.key(below - 1) == key).then(|| n.value(below - 1)));
            }
            if below == 0 {
                return Ok(None);
            }
            b = n.value(below - 1);
        }
        Err(bad("thin mapping btree deeper than any pool"))
    }

    /// The first key at or after `key` in the btree rooted at `b`.
    fn key_from(&self, b: u64, key: u64, depth: usize) -> io::Result<Option<u64>> {
        if depth >= MAX_DEPTH {
            return Err(bad("thin mapping btree deeper than any pool"));
        }
        let raw = self.node(b)?;
        let n = Node(&raw);
        let below = n.at_most(key);
        if n.is_leaf(b)? {
            let i = if below > 0 && n.key(below - 1) == key {
                below - 1
            } else {
                below
            };
            return Ok((i < n.count()).then(|| n.key(i)));
        }
        // The child covering `key`, then its right siblings, whose keys are larger.
        for i in below.saturating_sub(1)..n.count() {
            if let Some(k) = self.key_from(n.value(i), key, depth + 1)? {
                return Ok(Some(k));
            }
        }
        Ok(None)
    }

    /// Byte offset in the pool's data volume of virtual chunk `v`, if mapped.
    fn map(&self, v: u64) -> io::Result<Option<u64>> {
        Ok(match self.lookup(self.root, v)? {
            Some(val) => Some(
                (val >> 24)
                    .checked_mul(self.chunk)
                    .filter(|&at| at.saturating_add(self.chunk) <= self.data.size())
                    .ok_or_else(|| bad(format!("thin chunk {v} maps past the pool's data")))?,
            ),
            None => None,
        })
    }
}

/// Which data chunks of a pool its thin devices map, from its committed metadata:
/// unmapped ones a backup may leave out; ones mapped once, by a single device, it may
/// leave out when that device's filesystem calls them free. A chunk snapshots share
/// is never left out (every sharer's filesystem would have to agree).
pub struct PoolUsage {
    chunks: u64,
    used: Vec<u64>,
    shared: Vec<u64>,
}

fn bit(v: &[u64], i: u64) -> bool {
    v[(i / 64) as usize] & (1 << (i % 64)) != 0
}

fn set(v: &mut [u64], i: u64) {
    v[(i / 64) as usize] |= 1 << (i % 64);
}

impl PoolUsage {
    /// Data chunks (first, count; sorted) no device maps.
    pub fn unmapped(&self) -> Vec<(u64, u64)> {
        let mut out: Vec<(u64, u64)> = Vec::new();
        for d in (0..self.chunks).filter(|&d| !bit(&self.used, d)) {
            crate::readat::push_range(&mut out, d, 1);
        }
        out
    }

    /// Whether data chunk `d` is mapped by exactly one device, once.
    pub fn exclusive(&self, d: u64) -> bool {
        d < self.chunks && bit(&self.used, d) && !bit(&self.shared, d)
    }

    /// Records one more mapping to data chunk `d`.
    fn add(&mut self, virt: u64, d: u64) -> io::Result<()> {
        if d >= self.chunks {
            return Err(bad(format!(
                "chunk {virt} maps to data chunk {d} of {}",
                self.chunks
            )));
        }
        if bit(&self.used, d) {
            set(&mut self.shared, d);
        }
        set(&mut self.used, d);
        Ok(())
    }
}

/// Reads a pool's [`PoolUsage`]: the device list and every device's mapping tree
/// walked, each node once, and a subtree reached again (a snapshot sharing it) walked
/// once more to mark its chunks shared. A mapping past the data volume's end, a device
/// tree inside the device list, or a pool flagged as needing thin_check is an error.
pub fn pool_usage(
    meta: Arc<dyn ReadAt>,
    data: Arc<dyn ReadAt>,
    chunk: u64,
) -> Result<PoolUsage, String> {
    let chunks = data.size() / chunk.max(1);
    let (v, sb) = ThinVolume::pool(meta, data, chunk)?;
    if le32(&sb, 4) & 1 != 0 {
        return Err("its metadata is flagged as needing thin_check".into());
    }
    let mut top = HashSet::new();
    let mut roots = Vec::new();
    v.walk(le64(&sb, 320), 0, &mut top, &mut |_, root| {
        roots.push(root);
        Ok(())
    })
    .map_err(|e| format!("thin pool devices: {e}"))?;
    let words = chunks.div_ceil(64) as usize;
    let mut usage = PoolUsage {
        chunks,
        used: vec![0; words],
        shared: vec![0; words],
    };
    let (mut seen, mut shared) = (HashSet::new(), HashSet::new());
    for root in roots {
        // Skipped as seen, a device tree inside the device list would hide mappings.
        if top.contains(&root) {
            return Err(format!(
                "thin pool mapping: device tree at block {root} is the device list's"
            ));
        }
        v.mark(root, 0, &mut seen, &mut shared, &mut usage)
            .map_err(|e| format!("thin pool mapping: {e}"))?;
    }
    Ok(usage)
}

impl ThinVolume {
    /// Counts the mappings below node `b` into `usage`; a node already in `seen` is a
    /// subtree another device shares, whose chunks are marked shared instead.
    fn mark(
        &self,
        b: u64,
        depth: usize,
        seen: &mut HashSet<u64>,
        shared: &mut HashSet<u64>,
        usage: &mut PoolUsage,
    ) -> io::Result<()> {
        if depth >= MAX_DEPTH {
            return Err(bad("thin mapping btree deeper than any pool"));
        }
        if !seen.insert(b) {
            // Already counted once: every mapping below is a second one.
            return self.walk(b, depth, shared, &mut |virt, val| {
                usage.add(virt, val >> 24)
            });
        }
        let raw = self.node(b)?;
        let n = Node(&raw);
        let leaf = n.is_leaf(b)?;
        for i in 0..n.count() {
            if leaf {
                usage.add(n.key(i), n.value(i) >> 24)?;
            } else {
                self.mark(n.value(i), depth + 1, seen, shared, usage)?;
            }
        }
        Ok(())
    }

    /// Byte offset in the pool's data volume of virtual chunk `v`, if mapped: where a
    /// thin volume's bytes lie, so its filesystem's free space can be found there.
    pub fn data_offset(&self, v: u64) -> io::Result<Option<u64>> {
        self.map(v)
    }

    /// Bytes per chunk.
    pub fn chunk(&self) -> u64 {
        self.chunk
    }
}

impl ReadAt for ThinVolume {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let end = offset.saturating_add(buf.len() as u64).min(self.size);
        let mut at = offset;
        while at < end {
            let (v, within) = (at / self.chunk, at % self.chunk);
            let n = (self.chunk - within).min(end - at) as usize;
            let dst = &mut buf[(at - offset) as usize..][..n];
            match self.map(v)? {
                Some(d) => self.data.read_exact_at(d + within, dst)?,
                None => dst.fill(0),
            }
            at += n as u64;
        }
        Ok((at.max(offset) - offset) as usize)
    }

    fn size(&self) -> u64 {
        self.size
    }

    fn prefetch(&self, ranges: &[(u64, u64)]) {
        let mut spans = Vec::new();
        let mut budget = PREFETCH_CHUNKS;
        for &(o, l) in ranges {
            let end = o.saturating_add(l).min(self.size);
            let mut v = o / self.chunk;
            while v * self.chunk < end && budget > 0 {
                budget -= 1;
                if let Ok(Some(d)) = self.map(v) {
                    spans.push((d, self.chunk));
                }
                v += 1;
            }
        }
        self.data.prefetch(&spans);
    }

    fn prefetches(&self) -> bool {
        self.data.prefetches()
    }

    /// Unmapped chunks are holes (a mapped chunk counts as data whatever it holds).
    fn data_from(&self, offset: u64, end: u64) -> Option<io::Result<Option<u64>>> {
        let end = end.min(self.size);
        if offset >= end {
            return Some(Ok(None));
        }
        Some(self.key_from(self.root, offset / self.chunk, 0).map(|k| {
            k.map(|k| k.saturating_mul(self.chunk).max(offset))
                .filter(|&o| o < end)
        }))
    }

    fn hole_from(&self, offset: u64, end: u64) -> Option<io::Result<u64>> {
        let end = end.min(self.size);
        let mut v = offset / self.chunk;
        // Mapped chunks one by one (cached nodes), at most HOLE_SCAN of them.
        for _ in 0..HOLE_SCAN {
            if v.saturating_mul(self.chunk) >= end {
                return Some(Ok(end));
            }
            match self.map(v) {
                Err(e) => return Some(Err(e)),
                Ok(None) => return Some(Ok(v.saturating_mul(self.chunk).max(offset))),
                Ok(Some(_)) => v += 1,
            }
        }
        Some(Ok(end))
    }

    fn allocated(&self) -> Option<u64> {
        Some(self.mapped.saturating_mul(self.chunk).min(self.size))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::readat::MemReader;
    use crate::volumes::pdata::{INTERNAL, LEAF, NODE_CSUM_XOR};

    /// A btree node at block `b` holding `entries` (key, value) with 8-byte values.
    fn node(b: u64, leaf: bool, entries: &[(u64, u64)]) -> Vec<u8> {
        let max = 126;
        let mut n = vec![0u8; BLOCK];
        n[4..8].copy_from_slice(&(if leaf { LEAF } else { INTERNAL }).to_le_bytes());
        n[8..16].copy_from_slice(&b.to_le_bytes());
        n[16..20].copy_from_slice(&(entries.len() as u32).to_le_bytes());
        n[20..24].copy_from_slice(&(max as u32).to_le_bytes());
        n[24..28].copy_from_slice(&8u32.to_le_bytes());
        for (i, &(k, v)) in entries.iter().enumerate() {
            n[32 + i * 8..][..8].copy_from_slice(&k.to_le_bytes());
            n[32 + max * 8 + i * 8..][..8].copy_from_slice(&v.to_le_bytes());
        }
        let c = csum(&n[4..], NODE_CSUM_XOR);
        n[..4].copy_from_slice(&c.to_le_bytes());
        n
    }

    /// Pool metadata: device 1's tree and device 2's (a snapshot) share the leaf at
    /// block 4 (virtual 0-3 to data 0-3); device 2 also maps virtual 4 to data 5 alone,
    /// and device 1 virtual 9 to data 3 again (a second mapping in another leaf).
    fn metadata(flags: u32) -> Vec<u8> {
        let mut sb = vec![0u8; BLOCK];
        sb[4..8].copy_from_slice(&flags.to_le_bytes());
        sb[32..40].copy_from_slice(&SB_MAGIC.to_le_bytes());
        sb[320..328].copy_from_slice(&1u64.to_le_bytes());
        sb[328..336].copy_from_slice(&7u64.to_le_bytes());
        sb[336..340].copy_from_slice(&128u32.to_le_bytes());
        sb[340..344].copy_from_slice(&8u32.to_le_bytes());
        let c = csum(&sb[4..], SB_CSUM_XOR);
        sb[..4].copy_from_slice(&c.to_le_bytes());
        let map = |d: u64| d << 24 | 1;
        let shared: Vec<(u64, u64)> = (0..4).map(|v| (v, map(v))).collect();
        [
            sb,
            node(1, true, &[(1, 2), (2, 3)]),
            node(2, false, &[(0, 4), (9, 6)]),
            node(3, false, &[(0, 4), (4, 5)]),
            node(4, true, &shared),
            node(5, true, &[(4, map(5))]),
            node(6, true, &[(9, map(3))]),
        ]
        .concat()
    }

    #[test]
    fn pool_usage_counts_shared_subtrees_and_chunks() {
        let data: Arc<dyn ReadAt> = Arc::new(MemReader(vec![0; 8 << 16]));
        let meta: Arc<dyn ReadAt> = Arc::new(MemReader(metadata(0)));
        let u = pool_usage(meta, data.clone(), 1 << 16).unwrap();
        assert_eq!(u.unmapped(), vec![(4, 1), (6, 2)]);
        // 0-3 under the shared leaf, 3 mapped twice anyway; 5 by device 2 alone.
        assert_eq!(
            (0..8).filter(|&d| u.exclusive(d)).collect::<Vec<_>>(),
            vec![5]
        );
        // A device tree that is the device list, a mapping past the data, a flag.
        let mut bad_meta = metadata(0);
        bad_meta[BLOCK..2 * BLOCK].copy_from_slice(&node(1, true, &[(1, 1)]));
        let m: Arc<dyn ReadAt> = Arc::new(MemReader(bad_meta));
        assert!(pool_usage(m, data.clone(), 1 << 16).is_err());
        let small: Arc<dyn ReadAt> = Arc::new(MemReader(vec![0; 5 << 16]));
        let m: Arc<dyn ReadAt> = Arc::new(MemReader(metadata(0)));
        assert!(pool_usage(m, small, 1 << 16).is_err(), "data chunk 5 of 5");
        let m: Arc<dyn ReadAt> = Arc::new(MemReader(metadata(1)));
        assert!(pool_usage(m, data, 1 << 16).is_err(), "needs_check");
    }
}
