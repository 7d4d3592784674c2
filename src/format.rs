//! The on-disk format of a disk safe, shared by the writer and the readers so the two
//! can never disagree about a byte.
//!
//! A safe is a directory:
//! - `safe.db`: SQLite (WAL) index: format version, block size, compression level,
//!   pack files, blocks (content hash → pack location), devices, points and the block map.
//! - `packs/NNNNNNNN.pack`: append-only pack files. Each starts with [`PACK_MAGIC`] and
//!   holds records of [`RECORD_HEADER_LEN`]-byte header + stored bytes.
//! - `lock`: `flock`ed by the one writer (backup or forget) so two never interleave.
//!
//! Version 2 adds the tables of [`V2_SCHEMA`] (`unreadable`, `reclaim`) and `meta` keys
//! `block_high`/`pack_high`, so ids `forget` freed are never reused.

use std::path::{Path, PathBuf};

/// The format this build writes and the newest it reads; bumped on incompatible change.
/// 2 added `unreadable` (source ranges a backup could not read, which readers must
/// refuse rather than serve as the zeros stored there) and `forget`'s id high marks,
/// both of which a version-1 reader would ignore to its users' harm; writers upgrade a
/// version-1 safe when they open it.
pub const FORMAT_VERSION: u32 = 2;

/// Chosen from the block-size benchmark (BENCHMARKS.md): 64 KiB gave the fastest random
/// 4 KiB reads, while 1 MiB blocks saved only 5% of space at 8x the random-read cost.
pub const DEFAULT_BLOCK_SIZE: u32 = 64 * 1024;

/// Bounds for `--block-size`: below 4 KiB the index outweighs the data; above 4 MiB a
/// random read decompresses too much.
pub const MIN_BLOCK_SIZE: u32 = 4096;
/// See [`MIN_BLOCK_SIZE`].
pub const MAX_BLOCK_SIZE: u32 = 4 << 20;

/// Identifies a pack file and its layout version, so stray files are never parsed.
pub const PACK_MAGIC: &[u8; 16] = b"DISKSAFE-PACK\0\0\x01";

/// Marks the start of every record, so a scan can tell records from garbage.
pub const RECORD_MAGIC: &[u8; 4] = b"DSB1";

/// magic(4) codec(1) reserved(3) raw_len(4) stored_len(4) blake3(32)
pub const RECORD_HEADER_LEN: usize = 48;

/// Codec byte: stored as-is (level 0, or incompressible data).
pub const CODEC_RAW: u8 = 0;
/// Codec byte: one zstd frame.
pub const CODEC_ZSTD: u8 = 1;

/// Block id that stands for an all-zero block: it has no record and costs no data.
pub const ZERO_BLOCK: i64 = 0;

/// Content address of a block: the blake3 hash of its plain bytes.
pub type Hash = [u8; 32];

/// xxh3-128 of a block's plain bytes: a backup compares it with the previous point's
/// to skip unchanged blocks at memory speed; blake3 is computed only for changed ones.
pub type Quick = [u8; 16];

/// The quick hash of a block.
pub fn quick_hash(data: &[u8]) -> Quick {
    xxhash_rust::xxh3::xxh3_128(data).to_le_bytes()
}

/// Database schema of format version 1. Rows in `block_map` say "from point `point` on,
/// block `block_no` of `device` holds block `block`"; reading a block at point P is one
/// index seek for the newest row with `point <= P`, whatever the number of points.
pub const SCHEMA: &str = "
CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE packs(id INTEGER PRIMARY KEY, committed_len INTEGER NOT NULL);
CREATE TABLE blocks(
    id INTEGER PRIMARY KEY,
    hash BLOB NOT NULL UNIQUE,
    quick BLOB NOT NULL,
    pack INTEGER NOT NULL,
    offset INTEGER NOT NULL,
    stored_len INTEGER NOT NULL,
    raw_len INTEGER NOT NULL,
    codec INTEGER NOT NULL
);
CREATE TABLE devices(id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
CREATE TABLE points(
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created INTEGER NOT NULL,
    complete INTEGER NOT NULL DEFAULT 0,
    bytes_added INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE point_devices(
    point INTEGER NOT NULL,
    device INTEGER NOT NULL,
    size INTEGER NOT NULL,
    PRIMARY KEY(point, device)
) WITHOUT ROWID;
CREATE TABLE block_map(
    device INTEGER NOT NULL,
    block_no INTEGER NOT NULL,
    point INTEGER NOT NULL,
    block INTEGER NOT NULL,
    PRIMARY KEY(device, block_no, point)
) WITHOUT ROWID;
";

/// Tables version 2 added, created by every writer that opens a safe: `unreadable`,
/// byte ranges of a device that could not be read when a point was taken (`backup
/// --skip-unreadable`), stored as zeros and refused by readers; `reclaim`, packs whose
/// records `forget` freed and that still need their holes punched.
pub const V2_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS unreadable(
    point INTEGER NOT NULL,
    device INTEGER NOT NULL,
    offset INTEGER NOT NULL,
    len INTEGER NOT NULL,
    PRIMARY KEY(point, device, offset)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS reclaim(pack INTEGER PRIMARY KEY);
";

/// Blocks that hold data (neither all zeros nor absent) at a point, in order, from a
/// block on: rows naming a block whose newest row at or before the point is theirs.
/// Parameters: device, point, first block, end block (exclusive), at most this many.
/// Absent and zero blocks have no such row, so an empty region costs no row visits.
pub const DATA_BLOCKS_SQL: &str = "
SELECT m.block_no FROM block_map m
WHERE m.device = ?1 AND m.block_no >= ?3 AND m.block_no < ?4 AND m.point <= ?2
  AND m.block != 0
  AND NOT EXISTS (SELECT 1 FROM block_map n
                  WHERE n.device = ?1 AND n.block_no = m.block_no
                    AND n.point > m.point AND n.point <= ?2)
ORDER BY m.block_no LIMIT ?5";

/// The block locations of a run of blocks at one point: one index seek per block, no
/// walk down a delta chain. Yields (block_no, block id or NULL when the device had no
/// such block yet, pack, offset, stored_len, raw_len, codec, hash); a block id of
/// [`ZERO_BLOCK`] has NULL location.
pub const MAP_RUN_SQL: &str = "
WITH RECURSIVE s(b) AS (SELECT ?3 UNION ALL SELECT b + 1 FROM s WHERE b + 1 < ?4),
m(b, blk) AS (
  SELECT s.b,
         (SELECT mm.block FROM block_map mm
           WHERE mm.device = ?1 AND mm.block_no = s.b AND mm.point <= ?2
           ORDER BY mm.point DESC LIMIT 1)
  FROM s)
SELECT m.b, m.blk, bl.pack, bl.offset, bl.stored_len, bl.raw_len, bl.codec, bl.hash, bl.quick
FROM m LEFT JOIN blocks bl ON bl.id = m.blk AND m.blk != 0";

/// Path of the SQLite index inside a safe.
pub fn db_path(safe: &Path) -> PathBuf {
    safe.join("safe.db")
}

/// The index's write-ahead log, present while (or after) a writer has it open.
pub fn wal_path(safe: &Path) -> PathBuf {
    safe.join("safe.db-wal")
}

/// Path of pack `id` inside a safe.
pub fn pack_path(safe: &Path, id: i64) -> PathBuf {
    safe.join("packs").join(format!("{id:08}.pack"))
}

/// A decoded record header, checked against the index before its bytes are trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordHeader {
    /// [`CODEC_RAW`] or [`CODEC_ZSTD`].
    pub codec: u8,
    /// Length of the plain block.
    pub raw_len: u32,
    /// Length of the bytes that follow the header.
    pub stored_len: u32,
    /// blake3 of the plain block: the per-block checksum and content address.
    pub hash: Hash,
}

impl RecordHeader {
    /// Serialises the header so a pack stays self-describing (an index could be rebuilt).
    pub fn encode(&self) -> [u8; RECORD_HEADER_LEN] {
        let mut h = [0u8; RECORD_HEADER_LEN];
        h[0..4].copy_from_slice(RECORD_MAGIC);
        h[4] = self.codec;
        h[8..12].copy_from_slice(&self.raw_len.to_le_bytes());
        h[12..16].copy_from_slice(&self.stored_len.to_le_bytes());
        h[16..48].copy_from_slice(&self.hash);
        h
    }

    /// Parses a header, refusing anything that is not a record.
    pub fn decode(b: &[u8]) -> Result<Self, String> {
        if b.len() < RECORD_HEADER_LEN {
            return Err("record header truncated".into());
        }
        if &b[0..4] != RECORD_MAGIC {
            return Err("record magic missing".into());
        }
        let codec = b[4];
        if codec != CODEC_RAW && codec != CODEC_ZSTD {
            return Err(format!("unknown codec {codec}"));
        }
        let mut hash = [0u8; 32];
        hash.copy_from_slice(&b[16..48]);
        Ok(RecordHeader {
            codec,
            raw_len: u32::from_le_bytes(b[8..12].try_into().unwrap()),
            stored_len: u32::from_le_bytes(b[12..16].try_into().unwrap()),
            hash,
        })
    }
}

/// Settings fixed when a safe is created.
#[derive(Debug, Clone, Copy)]
pub struct SafeParams {
    /// Bytes per block; every device in the safe is cut at this size.
    pub block_size: u32,
    /// zstd level, 0 for none.
    pub compression: i32,
}

/// Reads and checks `meta`, so every opener fails the same clear way on a foreign or
/// newer safe.
pub fn read_params(conn: &rusqlite::Connection, safe: &Path) -> anyhow::Result<SafeParams> {
    let get = |k: &str| -> anyhow::Result<String> {
        conn.query_row("SELECT value FROM meta WHERE key = ?1", [k], |r| r.get(0))
            .map_err(|_| {
                anyhow::anyhow!(
                    "{} is not a disk safe (its index has no {k})",
                    safe.display()
                )
            })
    };
    let version: u32 = get("format_version")?
        .parse()
        .map_err(|_| anyhow::anyhow!("{}: unreadable format version", safe.display()))?;
    if version > FORMAT_VERSION {
        anyhow::bail!(
            "{} has safe format version {version}, newer than this disksafe supports ({FORMAT_VERSION}); upgrade disksafe",
            safe.display()
        );
    }
    let block_size: u32 = get("block_size")?
        .parse()
        .map_err(|_| anyhow::anyhow!("{}: unreadable block size", safe.display()))?;
    if !(MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&block_size) || !block_size.is_power_of_two() {
        anyhow::bail!(
            "{}: invalid block size {block_size} in index",
            safe.display()
        );
    }
    let compression: i32 = get("compression")?
        .parse()
        .map_err(|_| anyhow::anyhow!("{}: unreadable compression level", safe.display()))?;
    Ok(SafeParams {
        block_size,
        compression,
    })
}

/// The quick hash of an all-zero block, which zero blocks are compared by.
pub fn zero_quick(block_size: u32) -> Quick {
    quick_hash(&vec![0u8; block_size as usize])
}

/// True when every byte is zero; such blocks are stored as [`ZERO_BLOCK`].
pub fn is_zero(buf: &[u8]) -> bool {
    let (head, body, tail) = unsafe { buf.align_to::<u128>() };
    head.iter().all(|&b| b == 0) && body.iter().all(|&w| w == 0) && tail.iter().all(|&b| b == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip_and_rejects_garbage() {
        let h = RecordHeader {
            codec: CODEC_ZSTD,
            raw_len: 65536,
            stored_len: 1234,
            hash: [7; 32],
        };
        assert_eq!(RecordHeader::decode(&h.encode()).unwrap(), h);
        let mut bad = h.encode();
        bad[0] = b'X';
        assert!(RecordHeader::decode(&bad).is_err());
        bad = h.encode();
        bad[4] = 9;
        assert!(RecordHeader::decode(&bad).is_err());
        assert!(RecordHeader::decode(&bad[..10]).is_err());
    }

    #[test]
    fn zero_detection() {
        let mut v = vec![0u8; 65536 + 3];
        assert!(is_zero(&v[1..]));
        v[65536 + 2] = 1;
        assert!(!is_zero(&v[1..]));
    }
}

/// Year, month (1–12) and day of a count of days since 1970-01-01 (proleptic
/// Gregorian): the calendar that point names and retention buckets share.
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m as u32, d as u32)
}

/// Items joined by commas for an error message, or `none`: what a user can pick from.
pub fn list_or_none<S: AsRef<str>>(items: impl IntoIterator<Item = S>) -> String {
    let v: Vec<S> = items.into_iter().collect();
    if v.is_empty() {
        return "none".to_string();
    }
    v.iter().map(|s| s.as_ref()).collect::<Vec<_>>().join(", ")
}

/// `YYYY-MM-DDTHH:MM:SSZ` for a Unix time, the one time format users see.
pub fn utc_string(secs: i64) -> String {
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    let rem = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod time_tests {
    #[test]
    fn utc_known_dates() {
        assert_eq!(super::utc_string(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::utc_string(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(super::utc_string(1_795_000_000), "2026-11-18T11:06:40Z");
    }
}
