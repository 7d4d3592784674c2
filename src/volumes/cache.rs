//! LVM cache volumes (device-mapper's dm-cache): a cached LV is its origin LV with
//! some of its blocks held on a faster cache device. In writeback mode the cache's
//! copy of a block may be newer than the origin's, so a block the cache holds is read
//! from the cache's data volume and every other block from the origin.
//!
//! The cache's metadata (format 1 or 2) is persistent-data: a checksummed superblock
//! and a mapping array (a btree of checksummed array blocks) indexed by cache block,
//! each entry the origin block it holds and flags. Every valid entry is read from
//! the cache: a dirty one must be, a clean one equals the origin there (and after an
//! unclean shutdown the kernel counts every entry dirty). The whole array is read at
//! open, bounded by the cache's block count, into a map from origin block to cache
//! block; every field is checked against the volumes' sizes.

use std::collections::{HashMap, HashSet};
use std::io;
use std::sync::Arc;

use super::pdata::{bad, check_node, csum, le32, le64, Node, BLOCK};
use crate::readat::ReadAt;

/// 06142003, octal.
const SB_MAGIC: u64 = 0o6142003;
const SB_CSUM_XOR: u32 = 9_031_977;
const ARRAY_CSUM_XOR: u32 = 595_846_735;
/// Mapping entry flag: the cache block holds the origin block named.
const M_VALID: u64 = 1;
/// Deepest btree walked.
const MAX_DEPTH: usize = 8;
/// Most cache blocks read (LVM keeps caches to about a million).
const MAX_CACHE_BLOCKS: u64 = 1 << 24;

/// A cached LV as a volume.
pub struct CacheVolume {
    origin: Arc<dyn ReadAt>,
    data: Arc<dyn ReadAt>,
    block: u64,
    /// Origin block to cache block, for every valid mapping.
    map: HashMap<u64, u64>,
    size: u64,
}

impl CacheVolume {
    /// Opens a cached LV of `size` bytes over `origin`, whose cache keeps its
    /// metadata in `meta` and blocks of `block` bytes (LVM's chunk size) in `data`.
    pub fn open(
        meta: Arc<dyn ReadAt>,
        data: Arc<dyn ReadAt>,
        origin: Arc<dyn ReadAt>,
        block: u64,
        size: u64,
    ) -> Result<CacheVolume, String> {
        let map = mappings(&*meta, &*data, block, size).map_err(|e| format!("dm-cache: {e}"))?;
        if origin.size() < size {
            return Err(format!(
                "dm-cache: the origin holds {} of the LV's {size} bytes",
                origin.size()
            ));
        }
        Ok(CacheVolume {
            origin,
            data,
            block,
            map,
            size,
        })
    }

    /// Origin blocks the cache holds.
    pub fn cached_blocks(&self) -> usize {
        self.map.len()
    }
}

/// The valid mappings of the cache whose metadata is `meta`: origin block to cache
/// block, checked against the data volume and the LV's `size`.
fn mappings(
    meta: &dyn ReadAt,
    data: &dyn ReadAt,
    block: u64,
    size: u64,
) -> io::Result<HashMap<u64, u64>> {
    let mut sb = vec![0u8; BLOCK];
    meta.read_exact_at(0, &mut sb)?;
    if le64(&sb, 32) != SB_MAGIC {
        return Err(bad("no superblock"));
    }
    if csum(&sb[4..], SB_CSUM_XOR) != le32(&sb, 0) {
        return Err(bad("superblock checksum mismatch"));
    }
    let version = le32(&sb, 40);
    if !(1..=2).contains(&version) {
        return Err(bad(format!("metadata version {version}")));
    }
    if le32(&sb, 252) != 0 {
        return Err(bad(format!("incompatible features {:#x}", le32(&sb, 252))));
    }
    if le32(&sb, 236) as usize * 512 != BLOCK {
        return Err(bad(format!(
            "metadata blocks of {} sectors",
            le32(&sb, 236)
        )));
    }
    let sectors = le32(&sb, 232) as u64;
    if sectors * 512 != block || block == 0 {
        return Err(bad(format!(
            "cache blocks of {sectors} sectors, LVM says {}",
            block / 512
        )));
    }
    let cache_blocks = le32(&sb, 240) as u64;
    if cache_blocks > MAX_CACHE_BLOCKS || cache_blocks * block > data.size() {
        return Err(bad(format!(
            "{cache_blocks} cache blocks of {block} bytes do not fit its {}-byte data volume",
            data.size()
        )));
    }
    let mut map = HashMap::new();
    let mut seen = HashSet::new();
    let mut walk = Walk {
        meta,
        seen: &mut seen,
        map: &mut map,
        cache_blocks,
        origin_blocks: size.div_ceil(block),
    };
    walk.node(le64(&sb, 192), 0)?;
    Ok(map)
}

/// A walk of the mapping array's btree.
struct Walk<'a> {
    meta: &'a dyn ReadAt,
    seen: &'a mut HashSet<u64>,
    map: &'a mut HashMap<u64, u64>,
    cache_blocks: u64,
    origin_blocks: u64,
}

impl Walk<'_> {
    /// Metadata block `b`, once per walk (a block met twice is a cycle or damage).
    fn block(&mut self, b: u64) -> io::Result<Vec<u8>> {
        // Each array block holds hundreds of entries: the blocks to read are few.
        if !self.seen.insert(b) || self.seen.len() as u64 > self.cache_blocks / 64 + 64 {
            return Err(bad(format!(
                "mapping block {b} met twice, or too many blocks"
            )));
        }
        let at = b
            .checked_mul(BLOCK as u64)
            .ok_or_else(|| bad(format!("mapping block {b}")))?;
        let mut n = vec![0u8; BLOCK];
        self.meta.read_exact_at(at, &mut n)?;
        Ok(n)
    }

    fn node(&mut self, b: u64, depth: usize) -> io::Result<()> {
        if depth >= MAX_DEPTH {
            return Err(bad("mapping btree too deep"));
        }
        let raw = self.block(b)?;
        check_node(&raw, b, &[8], "dm-cache mapping")?;
        let n = Node(&raw);
        let leaf = n.is_leaf(b)?;
        for i in 0..n.count() {
            if leaf {
                self.array_block(n.key(i), n.value(i))?;
            } else {
                self.node(n.value(i), depth + 1)?;
            }
        }
        Ok(())
    }

    /// Array block number `index` of the mapping array, at metadata block `b`.
    fn array_block(&mut self, index: u64, b: u64) -> io::Result<()> {
        let raw = self.block(b)?;
        if csum(&raw[4..], ARRAY_CSUM_XOR) != le32(&raw, 0) || le64(&raw, 16) != b {
            return Err(bad(format!("array block {b}: checksum or block number")));
        }
        let (max, count, vsize) = (
            le32(&raw, 4) as usize,
            le32(&raw, 8) as usize,
            le32(&raw, 12),
        );
        if vsize != 8 || count > max || max == 0 || 24 + max * 8 > BLOCK {
            return Err(bad(format!("array block {b}: {count}/{max} entries")));
        }
        for i in 0..count {
            let v = le64(&raw, 24 + i * 8);
            if v & M_VALID == 0 {
                continue;
            }
            let cblock = index
                .checked_mul(max as u64)
                .and_then(|c| c.checked_add(i as u64))
                .filter(|&c| c < self.cache_blocks)
                .ok_or_else(|| bad(format!("array block {b}: entry past the cache's blocks")))?;
            let oblock = v >> 16;
            if oblock >= self.origin_blocks {
                return Err(bad(format!(
                    "cache block {cblock} holds origin block {oblock}, past the LV's end"
                )));
            }
            if self.map.insert(oblock, cblock).is_some() {
                return Err(bad(format!("origin block {oblock} is cached twice")));
            }
        }
        Ok(())
    }
}

impl ReadAt for CacheVolume {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        if offset >= self.size {
            return Ok(0);
        }
        let n = buf.len().min((self.size - offset) as usize);
        let mut done = 0;
        while done < n {
            let pos = offset + done as u64;
            let (ob, within) = (pos / self.block, pos % self.block);
            // Runs of blocks read from the same volume, contiguous there, in one read.
            let mut end = ((ob + 1) * self.block).min(offset + n as u64);
            let cached = self.map.get(&ob).copied();
            while end < offset + n as u64 {
                let next = end / self.block;
                let same = match (cached, self.map.get(&next)) {
                    (None, None) => true,
                    (Some(c), Some(&d)) => d == c + (next - ob),
                    _ => false,
                };
                if !same {
                    break;
                }
                end = ((next + 1) * self.block).min(offset + n as u64);
            }
            let take = (end - pos) as usize;
            let out = &mut buf[done..done + take];
            match cached {
                Some(c) => self.data.read_exact_at(c * self.block + within, out)?,
                None => self.origin.read_exact_at(pos, out)?,
            }
            done += take;
        }
        Ok(n)
    }

    fn size(&self) -> u64 {
        self.size
    }

    fn prefetch(&self, ranges: &[(u64, u64)]) {
        self.origin.prefetch(ranges);
    }

    fn prefetches(&self) -> bool {
        self.origin.prefetches()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::readat::MemReader;
    use crate::volumes::pdata::{LEAF, NODE_CSUM_XOR};

    const CB: u64 = 64 << 10;

    /// Metadata of a cache of `nr` blocks of [`CB`] bytes whose mapping array holds
    /// `entries` (cache block, raw value) in array blocks of 4 entries.
    fn metadata(nr: u32, entries: &[(u64, u64)]) -> Vec<u8> {
        let mut m = vec![0u8; 16 * BLOCK];
        let put = |m: &mut Vec<u8>, at: usize, v: &[u8]| m[at..at + v.len()].copy_from_slice(v);
        put(&mut m, 32, &SB_MAGIC.to_le_bytes());
        put(&mut m, 40, &2u32.to_le_bytes());
        put(&mut m, 192, &1u64.to_le_bytes()); // mapping root: block 1
        put(&mut m, 232, &((CB / 512) as u32).to_le_bytes());
        put(&mut m, 236, &8u32.to_le_bytes());
        put(&mut m, 240, &nr.to_le_bytes());
        let c = csum(&m[4..BLOCK], SB_CSUM_XOR);
        put(&mut m, 0, &c.to_le_bytes());
        // Array blocks at 2.., 4 entries each; the btree leaf at 1 names them.
        let max = 4u64;
        let blocks = entries.iter().map(|e| e.0 / max).max().map_or(0, |b| b + 1);
        let leaf = BLOCK;
        put(&mut m, leaf + 4, &LEAF.to_le_bytes());
        put(&mut m, leaf + 8, &1u64.to_le_bytes());
        put(&mut m, leaf + 16, &(blocks as u32).to_le_bytes());
        put(&mut m, leaf + 20, &126u32.to_le_bytes());
        put(&mut m, leaf + 24, &8u32.to_le_bytes());
        for k in 0..blocks {
            let b = 2 + k;
            put(&mut m, leaf + 32 + k as usize * 8, &k.to_le_bytes());
            put(
                &mut m,
                leaf + 32 + 126 * 8 + k as usize * 8,
                &b.to_le_bytes(),
            );
            let a = b as usize * BLOCK;
            put(&mut m, a + 4, &(max as u32).to_le_bytes());
            put(&mut m, a + 8, &(max as u32).to_le_bytes());
            put(&mut m, a + 12, &8u32.to_le_bytes());
            put(&mut m, a + 16, &b.to_le_bytes());
            for &(cb, v) in entries.iter().filter(|e| e.0 / max == k) {
                put(&mut m, a + 24 + (cb % max) as usize * 8, &v.to_le_bytes());
            }
            let c = csum(&m[a + 4..a + BLOCK], ARRAY_CSUM_XOR);
            put(&mut m, a, &c.to_le_bytes());
        }
        let c = csum(&m[leaf + 4..leaf + BLOCK], NODE_CSUM_XOR);
        put(&mut m, leaf, &c.to_le_bytes());
        m
    }

    fn open(meta: Vec<u8>, nr: u64, origin_blocks: u64) -> Result<CacheVolume, String> {
        let data: Vec<u8> = (0..nr * CB).map(|i| (i / CB) as u8 | 0x80).collect();
        let origin: Vec<u8> = (0..origin_blocks * CB).map(|i| (i / CB) as u8).collect();
        CacheVolume::open(
            Arc::new(MemReader(meta)),
            Arc::new(MemReader(data)),
            Arc::new(MemReader(origin)),
            CB,
            origin_blocks * CB,
        )
    }

    #[test]
    fn cached_blocks_read_from_the_cache_the_rest_from_the_origin() {
        // Cache blocks 1 and 2 hold origin blocks 5 and 6 (dirty, clean), 6 holds 9;
        // cache block 3's entry is not valid.
        let v = |ob: u64, flags: u64| ob << 16 | flags;
        let meta = metadata(8, &[(1, v(5, 3)), (2, v(6, 1)), (3, v(7, 2)), (6, v(9, 1))]);
        let c = open(meta, 8, 12).unwrap();
        assert_eq!(c.cached_blocks(), 3);
        let mut all = vec![0u8; (12 * CB) as usize];
        c.read_exact_at(0, &mut all).unwrap();
        let from: Vec<u8> = all.chunks(CB as usize).map(|b| b[0]).collect();
        assert_eq!(from, [0, 1, 2, 3, 4, 0x81, 0x82, 7, 8, 0x86, 10, 11]);
        assert!(all
            .chunks(CB as usize)
            .all(|b| b.iter().all(|&x| x == b[0])));
        // A read across blocks, starting inside one.
        let mut b = vec![0u8; (2 * CB) as usize];
        c.read_exact_at(5 * CB + 100, &mut b).unwrap();
        assert_eq!(b[..], all[(5 * CB + 100) as usize..][..b.len()]);
    }

    #[test]
    fn damaged_mappings_are_refused() {
        let v = |ob: u64| ob << 16 | 1;
        for (entries, why) in [
            (vec![(1, v(5)), (2, v(5))], "cached twice"),
            (vec![(1, v(40))], "past the LV's end"),
            (vec![(9, v(2))], "past the cache's blocks"),
        ] {
            let err = open(metadata(8, &entries), 8, 12).err().unwrap();
            assert!(err.contains(why), "{why}: {err}");
        }
        let mut meta = metadata(8, &[(1, v(5))]);
        meta[2 * BLOCK + 30] ^= 1;
        assert!(open(meta, 8, 12).err().unwrap().contains("checksum"));
        let meta = metadata(64, &[(1, v(5))]);
        assert!(open(meta, 8, 12).err().unwrap().contains("do not fit"));
        assert!(open(vec![0; BLOCK], 8, 12)
            .err()
            .unwrap()
            .contains("no superblock"));
    }
}
