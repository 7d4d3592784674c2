//! device-mapper's persistent-data structures, shared by the thin and cache
//! metadata readers: 4 KiB blocks, each checksummed and naming its own number, and
//! the btree nodes both keep their mappings in.

use std::io;

/// Metadata block size.
pub const BLOCK: usize = 4096;
/// Checksum constant of btree nodes.
pub const NODE_CSUM_XOR: u32 = 121_107;
/// Node flags.
pub const INTERNAL: u32 = 1;
pub const LEAF: u32 = 2;

/// A little-endian u32 at `o` (bounds are the caller's).
pub fn le32(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
}

/// A little-endian u64 at `o` (bounds are the caller's).
pub fn le64(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
}

/// Damage found in metadata, as an I/O error.
pub fn bad(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// The persistent-data checksum: CRC-32C's register without its final inversion,
/// xored with a per-structure constant.
pub fn csum(data: &[u8], xor: u32) -> u32 {
    !crc32c::crc32c(data) ^ xor
}

/// Checks block `b` (`n`, [`BLOCK`] bytes) of `what` as a btree node: its checksum,
/// its own block number, and entry counts and value size (one of `vsizes`) that fit.
pub fn check_node(n: &[u8], b: u64, vsizes: &[usize], what: &str) -> io::Result<()> {
    if n.len() != BLOCK || csum(&n[4..], NODE_CSUM_XOR) != le32(n, 0) {
        return Err(bad(format!("{what} block {b}: checksum mismatch")));
    }
    if le64(n, 8) != b {
        return Err(bad(format!("{what} block {b} names block {}", le64(n, 8))));
    }
    let (count, max, vsize) = (
        le32(n, 16) as usize,
        le32(n, 20) as usize,
        le32(n, 24) as usize,
    );
    if !vsizes.contains(&vsize) || count > max || 32 + max * (8 + vsize) > BLOCK {
        return Err(bad(format!("{what} block {b}: {count}/{max} entries")));
    }
    Ok(())
}

/// A btree node already checked by [`check_node`]: header, keys, values.
pub struct Node<'a>(pub &'a [u8]);

impl Node<'_> {
    /// Entries in use.
    pub fn count(&self) -> usize {
        le32(self.0, 16) as usize
    }
    /// Key `i`.
    pub fn key(&self, i: usize) -> u64 {
        le64(self.0, 32 + i * 8)
    }
    /// The value's first 8 bytes (a child block, a mapping, a device's block count).
    pub fn value(&self, i: usize) -> u64 {
        let (max, vsize) = (le32(self.0, 20) as usize, le32(self.0, 24) as usize);
        le64(self.0, 32 + max * 8 + i * vsize)
    }
    /// How many entries have keys at most `key` (keys are sorted).
    pub fn at_most(&self, key: u64) -> usize {
        let (mut lo, mut hi) = (0, self.count());
        while lo < hi {
            let mid = (lo + hi) / 2;
            if self.key(mid) <= key {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo
    }
    /// Leaf or internal node; anything else is damage.
    pub fn is_leaf(&self, b: u64) -> io::Result<bool> {
        match le32(self.0, 4) {
            LEAF => Ok(true),
            INTERNAL => Ok(false),
            f => Err(bad(format!("metadata block {b}: node flags {f:#x}"))),
        }
    }
}
