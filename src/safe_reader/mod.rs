//! Read side of a disk safe: the SQLite index and the pack files, opened read-only.
//!
//! Nothing here writes to the safe. Any number of readers (restore, verify, mount) may
//! run while a backup adds a point: they see only complete points.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex, RwLock};

use anyhow::{bail, Context};
use bytes::Bytes;
use rusqlite::{Connection, OpenFlags, OptionalExtension};

use crate::format::{self, Hash, Quick, RecordHeader, SafeParams, RECORD_HEADER_LEN, ZERO_BLOCK};
use crate::readat::DIRECT_ALIGN;

/// Where a stored block lives, as the index says; carried with the map so a read costs
/// no further lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockLoc {
    /// Block id (row of `blocks`); [`ZERO_BLOCK`] for an all-zero block.
    pub id: i64,
    /// Pack file id.
    pub pack: i64,
    /// Offset of the record header in the pack.
    pub offset: u64,
    /// Bytes after the header.
    pub stored_len: u32,
    /// Plain length.
    pub raw_len: u32,
    /// [`format::CODEC_RAW`] or [`format::CODEC_ZSTD`].
    pub codec: u8,
    /// Content hash the plain bytes must match.
    pub hash: Hash,
    /// Quick hash of the plain bytes (change detection in backups).
    pub quick: Quick,
}

impl BlockLoc {
    /// The location of an all-zero block (no record).
    pub const ZERO: BlockLoc = BlockLoc {
        id: ZERO_BLOCK,
        pack: 0,
        offset: 0,
        stored_len: 0,
        raw_len: 0,
        codec: 0,
        hash: [0; 32],
        quick: [0; 16],
    };

    /// True for the all-zero block, which is never read from a pack.
    pub fn is_zero(&self) -> bool {
        self.id == ZERO_BLOCK
    }

    /// Whether the map names a block the index does not hold (a damaged index).
    pub fn is_missing(&self) -> bool {
        self.pack == MISSING_PACK
    }
}

/// One device as recorded in one point.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceAt {
    /// Device id in the index.
    pub id: i64,
    /// The name given at backup (`NAME=SOURCE`).
    pub name: String,
    /// Size in bytes at that point.
    pub size: u64,
}

/// A complete recovery point, as listed to users.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PointInfo {
    /// Positive, increasing, never reused.
    pub id: i64,
    /// Creation time, seconds since the Unix epoch (UTC).
    pub created: i64,
    /// Bytes of pack data this point added to the safe.
    pub bytes_added: u64,
    /// Devices recorded in this point, by name.
    pub devices: Vec<DeviceAt>,
}

/// Why a block could not be served; carries enough for the caller to name the place.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// The stored bytes do not decode to the block the index promised.
    #[error("damaged block {id} in pack {pack} at offset {offset}: {reason}")]
    Damaged {
        /// Block id.
        id: i64,
        /// Pack id.
        pack: i64,
        /// Offset in the pack.
        offset: u64,
        /// What check failed.
        reason: String,
    },
    /// The same failure, met by another reader of the same block at the same time.
    #[error("{0}")]
    Shared(Arc<BlockError>),
    /// The pack could not be read at all.
    #[error("reading pack {pack}: {source}")]
    Io {
        /// Pack id.
        pack: i64,
        /// The OS error.
        source: io::Error,
    },
}

impl BlockError {
    /// A `Damaged` error for the block at `loc`.
    fn damaged(loc: &BlockLoc, reason: String) -> BlockError {
        BlockError::Damaged {
            id: loc.id,
            pack: loc.pack,
            offset: loc.offset,
            reason,
        }
    }
}

/// Pack id marking a map entry whose block row is missing from the index.
const MISSING_PACK: i64 = -1;

/// An open, read-only disk safe.
pub struct Safe {
    dir: PathBuf,
    params: SafeParams,
    /// Read as immutable (see [`Safe::open`]); cleared once a writer's WAL can be read.
    immutable: AtomicBool,
    /// The index files as last opened while immutable (see [`index_stamp`]).
    stamp: Mutex<IndexStamp>,
    /// Pooled connections, each with the generation it was opened in.
    conns: Mutex<Vec<(Connection, u64)>>,
    /// Bumped whenever the pool is emptied for a changed index: connections of an
    /// older generation are dropped when returned, never pooled again.
    generation: AtomicU64,
    packs: RwLock<HashMap<i64, Arc<File>>>,
    /// Packs opened with O_DIRECT; `None` where the filesystem refuses it (tmpfs).
    direct: RwLock<HashMap<i64, Option<Arc<File>>>>,
    /// Blocks found moved to another pack (see [`Safe::relocations`]).
    relocations: AtomicU64,
}

/// Whether `point` is still a complete point. Asked in the same read transaction as a
/// map query: once `forget` removes a point its map rows answer for other points, so a
/// reader of the removed point must get an error, never another point's blocks.
fn point_alive(c: &Connection, point: i64) -> rusqlite::Result<bool> {
    c.prepare_cached("SELECT 1 FROM points WHERE id = ?1 AND complete = 1")?
        .exists([point])
}

/// Whether the index has the `unreadable` table (format 2; absent in version 1).
fn has_unreadable(c: &Connection) -> rusqlite::Result<bool> {
    c.prepare_cached("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'unreadable'")?
        .exists([])
}

/// Byte ranges of `device` that `point` could not read from its source, in order: for
/// the readers, and for the next backup, which reads them again.
pub fn unreadable_ranges(
    c: &Connection,
    point: i64,
    device: i64,
) -> rusqlite::Result<Vec<(u64, u64)>> {
    if !has_unreadable(c)? {
        return Ok(Vec::new());
    }
    let mut st = c.prepare_cached(
        "SELECT offset, len FROM unreadable WHERE point = ?1 AND device = ?2 ORDER BY offset",
    )?;
    let v = st
        .query_map([point, device], |r| {
            Ok((
                r.get::<_, i64>(0)?.max(0) as u64,
                r.get::<_, i64>(1)?.max(0) as u64,
            ))
        })?
        .collect();
    v
}

/// Opens the index read-only; shared by every reader so none can write by accident.
/// `immutable`: read `safe.db` as a file that cannot change (see [`Safe::open`]).
fn open_ro(dir: &Path, immutable: bool) -> anyhow::Result<Connection> {
    let db = format::db_path(dir);
    if !dir.is_dir() {
        bail!("{} is not a disk safe (no such directory)", dir.display());
    }
    if !db.is_file() {
        bail!("{} is not a disk safe (no safe.db inside)", dir.display());
    }
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = if immutable {
        // An absolute path after an empty authority: a path starting `//` is no host.
        let abs = std::path::absolute(&db)
            .with_context(|| format!("opening the index of {}", dir.display()))?;
        Connection::open_with_flags(
            format!("file://{}?immutable=1", url_path(&abs)),
            flags | OpenFlags::SQLITE_OPEN_URI,
        )
    } else {
        Connection::open_with_flags(&db, flags)
    }
    .with_context(|| format!("opening the index of {}", dir.display()))?;
    conn.busy_timeout(std::time::Duration::from_secs(30))?;
    Ok(conn)
}

/// A path as the path part of an SQLite `file:` URI (`%`, `?` and `#` escaped).
fn url_path(p: &Path) -> String {
    let mut out = String::new();
    for &b in p.as_os_str().as_encoded_bytes() {
        match b {
            b'%' | b'?' | b'#' => out.push_str(&format!("%{b:02X}")),
            _ if b.is_ascii() => out.push(b as char),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// What tells a changed index apart: mtime (seconds, nanoseconds), size and inode of
/// `safe.db`, and of `safe.db-wal` when there is one.
type IndexStamp = [Option<(i64, i64, u64, u64)>; 2];

fn index_stamp(dir: &Path) -> IndexStamp {
    use std::os::unix::fs::MetadataExt;
    [format::db_path(dir), format::wal_path(dir)].map(|p| {
        let m = std::fs::metadata(p).ok()?;
        Some((m.mtime(), m.mtime_nsec(), m.size(), m.ino()))
    })
}

/// A first read of the index: whether this connection can read it at all.
fn probe(conn: &Connection) -> rusqlite::Result<()> {
    conn.query_row("SELECT count(*) FROM sqlite_master", [], |_| Ok(()))
}

/// True when `dir` lies on a filesystem mounted read-only.
fn on_read_only_fs(dir: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
        return false;
    };
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a statvfs buffer of the right type.
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    rc == 0 && st.f_flag & libc::ST_RDONLY != 0
}

impl Safe {
    /// Opens a safe for reading; fails clearly on a path that is not a safe or on a
    /// newer format. Loads no block entries: cost is independent of the safe's size.
    ///
    /// The index is in WAL mode, whose readers need `safe.db-shm` beside it; SQLite
    /// creates it when absent (a backup that closed cleanly removes it). On a
    /// read-only filesystem (evidence media, a read-only snapshot or copy) it cannot,
    /// and nothing can write there either, so the index is then read as immutable;
    /// should the files change later (a backup writing through some other, writable
    /// path), [`Safe::points`] reopens them (see `recheck_immutable`).
    pub fn open(dir: &Path) -> anyhow::Result<Safe> {
        let mut conn = open_ro(dir, false)?;
        let mut immutable = false;
        if let Err(e) = probe(&conn) {
            let code = e.sqlite_error_code();
            let wal_refused = matches!(
                code,
                Some(rusqlite::ErrorCode::CannotOpen | rusqlite::ErrorCode::ReadOnly)
            );
            if wal_refused && on_read_only_fs(dir) {
                tracing::info!(
                    "{} is on a read-only filesystem without safe.db-shm: reading its index as immutable",
                    dir.display()
                );
                if std::fs::metadata(format::wal_path(dir)).is_ok_and(|m| m.len() > 0) {
                    tracing::warn!(
                        "{}: safe.db-wal holds changes not yet in safe.db (a backup that did not finish closing?); they cannot be read on a read-only filesystem: points they record are not shown",
                        dir.display()
                    );
                }
                conn = open_ro(dir, true)?;
                immutable = true;
            } else if code == Some(rusqlite::ErrorCode::ReadOnly) {
                bail!(
                    "cannot read the index of {}: reading it needs safe.db-shm beside safe.db (the index is in WAL mode), which this user may not create there; run as a user who may write to {0}, or read it from a read-only copy or mount",
                    dir.display()
                );
            } else {
                return Err(anyhow::Error::from(e)
                    .context(format!("reading the index of {}", dir.display())));
            }
        }
        let params = format::read_params(&conn, dir).map_err(|e| {
            if e.to_string().contains("no such table") {
                anyhow::anyhow!("{} is not a disk safe", dir.display())
            } else {
                e
            }
        })?;
        Ok(Safe {
            dir: dir.to_path_buf(),
            params,
            immutable: AtomicBool::new(immutable),
            stamp: Mutex::new(index_stamp(dir)),
            conns: Mutex::new(vec![(conn, 0)]),
            generation: AtomicU64::new(0),
            packs: RwLock::new(HashMap::new()),
            direct: RwLock::new(HashMap::new()),
            relocations: AtomicU64::new(0),
        })
    }

    /// An index read as immutable was written to after all (through another, writable
    /// path to the same files): read it through its WAL when SQLite now can (a writer
    /// made the `-shm`), else open the changed file afresh, as connections reading an
    /// immutable file never look for changes.
    fn recheck_immutable(&self) {
        if !self.immutable.load(AtomicOrdering::Acquire) {
            return;
        }
        let stamp = index_stamp(&self.dir);
        let mut seen = self.stamp.lock().unwrap();
        if stamp == *seen {
            return;
        }
        *seen = stamp;
        if open_ro(&self.dir, false).is_ok_and(|c| probe(&c).is_ok()) {
            tracing::info!(
                "{} is being written to: reading its index through the WAL again",
                self.dir.display()
            );
            self.immutable.store(false, AtomicOrdering::Release);
        } else {
            tracing::info!("{} changed: reopening its index", self.dir.display());
        }
        let mut pool = self.conns.lock().unwrap();
        self.generation.fetch_add(1, AtomicOrdering::AcqRel);
        pool.clear();
    }

    /// The safe's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Block size and compression fixed at creation.
    pub fn params(&self) -> SafeParams {
        self.params
    }

    /// Runs `f` on a pooled read-only connection, so parallel readers never share one.
    pub fn with_conn<T>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> anyhow::Result<T> {
        let conn = self.conns.lock().unwrap().pop();
        let (conn, generation) = match conn {
            Some(c) => c,
            None => {
                let generation = self.generation.load(AtomicOrdering::Acquire);
                let immutable = self.immutable.load(AtomicOrdering::Acquire);
                (open_ro(&self.dir, immutable)?, generation)
            }
        };
        let r = f(&conn);
        let mut pool = self.conns.lock().unwrap();
        if generation == self.generation.load(AtomicOrdering::Acquire) {
            pool.push((conn, generation));
        }
        drop(pool);
        r.with_context(|| format!("reading the index of {}", self.dir.display()))
    }

    /// Every complete point, oldest first, with its devices.
    pub fn points(&self) -> anyhow::Result<Vec<PointInfo>> {
        self.recheck_immutable();
        self.with_conn(|c| {
            let mut st = c.prepare_cached(
                "SELECT p.id, p.created, p.bytes_added, d.id, d.name, pd.size
                 FROM points p JOIN point_devices pd ON pd.point = p.id
                 JOIN devices d ON d.id = pd.device
                 WHERE p.complete = 1 ORDER BY p.id, d.name",
            )?;
            let mut out: Vec<PointInfo> = Vec::new();
            let mut rows = st.query([])?;
            while let Some(r) = rows.next()? {
                let id: i64 = r.get(0)?;
                let dev = DeviceAt {
                    id: r.get(3)?,
                    name: r.get(4)?,
                    size: r.get::<_, i64>(5)? as u64,
                };
                match out.last_mut() {
                    Some(p) if p.id == id => p.devices.push(dev),
                    _ => out.push(PointInfo {
                        id,
                        created: r.get(1)?,
                        bytes_added: r.get::<_, i64>(2)? as u64,
                        devices: vec![dev],
                    }),
                }
            }
            Ok(out)
        })
    }

    /// Bytes the safe's files occupy on disk (index, its log, packs; punched holes
    /// cost nothing): what `forget` shrinks, which the points' `bytes_added` no longer
    /// sum to once a point is forgotten.
    pub fn occupied(&self) -> io::Result<u64> {
        use std::os::unix::fs::MetadataExt;
        let mut n = 0;
        for f in [format::db_path(&self.dir), format::wal_path(&self.dir)] {
            match std::fs::metadata(&f) {
                Ok(m) => n += m.blocks() * 512,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        for e in std::fs::read_dir(self.dir.join("packs"))? {
            n += e?.metadata()?.blocks() * 512;
        }
        Ok(n)
    }

    /// Byte ranges of `device` that could not be read from the source when `point` was
    /// taken, in order (none in a safe made before version 2).
    pub fn unreadable(&self, point: i64, device: i64) -> anyhow::Result<Vec<(u64, u64)>> {
        self.with_conn(|c| unreadable_ranges(c, point, device))
    }

    /// Unreadable bytes per (point, device), for listings: one query for all points.
    pub fn unreadable_totals(&self) -> anyhow::Result<HashMap<(i64, i64), u64>> {
        self.with_conn(|c| {
            if !has_unreadable(c)? {
                return Ok(HashMap::new());
            }
            let mut st = c.prepare_cached(
                "SELECT point, device, SUM(len) FROM unreadable GROUP BY point, device",
            )?;
            let v = st
                .query_map([], |r| {
                    Ok(((r.get(0)?, r.get(1)?), r.get::<_, i64>(2)?.max(0) as u64))
                })?
                .collect();
            v
        })
    }

    /// Resolves `latest` or a number to a complete point.
    pub fn point(&self, spec: &str) -> anyhow::Result<PointInfo> {
        let points = self.points()?;
        if spec == "latest" {
            return points.last().cloned().ok_or_else(|| {
                anyhow::anyhow!("the safe {} has no points yet", self.dir.display())
            });
        }
        let id: i64 = spec.parse().map_err(|_| {
            anyhow::anyhow!("invalid point {spec:?}: expected a number or 'latest'")
        })?;
        points
            .into_iter()
            .find(|p| p.id == id)
            .ok_or_else(|| anyhow::anyhow!("no recovery point {id} in {}", self.dir.display()))
    }

    /// Block numbers in `from..end` of `device` that hold data at `point`, in order, at
    /// most `limit` of them: the map SEEK_DATA and SEEK_HOLE walk on images.
    pub fn data_blocks(
        &self,
        device: i64,
        point: i64,
        from: u64,
        end: u64,
        limit: usize,
    ) -> anyhow::Result<Vec<u64>> {
        let clamp = |v: u64| v.min(i64::MAX as u64) as i64;
        self.with_point(point, |c| {
            let mut st = c.prepare_cached(format::DATA_BLOCKS_SQL)?;
            let rows = st.query_map(
                rusqlite::params![device, point, clamp(from), clamp(end), clamp(limit as u64)],
                |r| r.get::<_, i64>(0),
            )?;
            rows.map(|r| r.map(|b| b as u64)).collect()
        })
    }

    /// Runs a map query `f` in one read transaction that first checks `point` still
    /// exists ([`point_alive`]); a forgotten point is an error naming it.
    fn with_point<T>(
        &self,
        point: i64,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> anyhow::Result<T> {
        let found = self.with_conn(|c| {
            let tx = c.unchecked_transaction()?;
            if !point_alive(&tx, point)? {
                return Ok(None);
            }
            f(&tx).map(Some)
        })?;
        found.ok_or_else(|| {
            anyhow::anyhow!(
                "point {point} was forgotten (removed from {}) while it was being read",
                self.dir.display()
            )
        })
    }

    /// Block locations for blocks `start..start+count` of `device` at `point`; `None`
    /// where the device had no such block (it was smaller), which reads as zeros.
    pub fn block_run(
        &self,
        device: i64,
        point: i64,
        start: u64,
        count: u64,
    ) -> anyhow::Result<Vec<Option<BlockLoc>>> {
        if count == 0 {
            return Ok(Vec::new());
        }
        self.with_point(point, |c| {
            let mut st = c.prepare_cached(format::MAP_RUN_SQL)?;
            let mut out = Vec::with_capacity(count as usize);
            let mut rows = st.query(rusqlite::params![
                device,
                point,
                start as i64,
                (start + count) as i64
            ])?;
            while let Some(r) = rows.next()? {
                let blk: Option<i64> = r.get(1)?;
                out.push(match blk {
                    None => None,
                    Some(ZERO_BLOCK) => Some(BlockLoc::ZERO),
                    Some(id) => {
                        // A map row naming a block missing from `blocks` keeps pack
                        // MISSING_PACK, so reading it fails as damage, never as zeros.
                        let pack: i64 = r.get::<_, Option<i64>>(2)?.unwrap_or(MISSING_PACK);
                        let hash: Vec<u8> = r.get::<_, Option<Vec<u8>>>(7)?.unwrap_or_default();
                        let mut h = [0u8; 32];
                        if hash.len() == 32 {
                            h.copy_from_slice(&hash);
                        }
                        let q: Vec<u8> = r.get::<_, Option<Vec<u8>>>(8)?.unwrap_or_default();
                        let mut quick = [0u8; 16];
                        if q.len() == 16 {
                            quick.copy_from_slice(&q);
                        }
                        Some(BlockLoc {
                            id,
                            pack,
                            offset: r.get::<_, Option<i64>>(3)?.unwrap_or(0) as u64,
                            stored_len: r.get::<_, Option<i64>>(4)?.unwrap_or(0) as u32,
                            raw_len: r.get::<_, Option<i64>>(5)?.unwrap_or(0) as u32,
                            codec: r.get::<_, Option<i64>>(6)?.unwrap_or(0) as u8,
                            hash: h,
                            quick,
                        })
                    }
                });
            }
            Ok(out)
        })
    }

    /// The first block in `from..to` whose newest row at `point` is not known to be
    /// zero, so a backup can skip holes without a lookup per block.
    pub fn first_data_row(
        &self,
        device: i64,
        point: i64,
        from: u64,
        to: u64,
    ) -> anyhow::Result<Option<u64>> {
        self.with_conn(|c| {
            let mut st = c.prepare_cached(
                "SELECT block_no FROM block_map WHERE device = ?1 AND block_no >= ?2
                 AND block_no < ?3 AND point <= ?4 AND block != 0 ORDER BY block_no LIMIT 1",
            )?;
            let mut rows = st.query(rusqlite::params![device, from as i64, to as i64, point])?;
            Ok(match rows.next()? {
                Some(r) => Some(r.get::<_, i64>(0)? as u64),
                None => None,
            })
        })
    }

    fn pack(&self, id: i64) -> io::Result<Arc<File>> {
        open_cached(&self.packs, id, || {
            Ok(Arc::new(File::open(format::pack_path(&self.dir, id))?))
        })
    }

    /// Reads, decompresses and checks one stored block against its content hash; a
    /// damaged block is an error, never data.
    pub fn load_block(&self, loc: &BlockLoc) -> Result<Bytes, BlockError> {
        self.load(loc, false)
    }

    /// Like [`Safe::load_block`], for a read nobody predicted (a random read through
    /// the mount): the page cache is asked for the record's neighbours as well (see
    /// [`PACK_READ_AHEAD`]). Scans in pack order (verify) should not use it: the kernel's
    /// own readahead serves them with far larger reads.
    pub fn load_block_scattered(&self, loc: &BlockLoc) -> Result<Bytes, BlockError> {
        self.load(loc, true)
    }

    fn load(&self, loc: &BlockLoc, ahead: bool) -> Result<Bytes, BlockError> {
        if loc.is_zero() {
            return Ok(Bytes::from(vec![0u8; self.params.block_size as usize]));
        }
        let mut rec = Vec::new();
        self.read_record(loc, &mut rec, ahead)?;
        Ok(Bytes::from(self.decode_record_vec(loc, &rec)?))
    }

    /// Like [`Safe::load_block`], decoding into `dst` (one block long) with `scratch`
    /// for the stored bytes, so bulk readers allocate nothing per block.
    pub fn load_block_into(
        &self,
        loc: &BlockLoc,
        dst: &mut [u8],
        scratch: &mut Vec<u8>,
    ) -> Result<(), BlockError> {
        self.read_record(loc, scratch, false)?;
        self.decode_record(loc, scratch, dst)
    }

    /// Reads the stored record of a block (header and bytes) into `rec`, its lengths
    /// checked first; with `ahead`, asking for the pack bytes around it too.
    fn read_record(
        &self,
        loc: &BlockLoc,
        rec: &mut Vec<u8>,
        ahead: bool,
    ) -> Result<(), BlockError> {
        let damaged = |reason: String| BlockError::damaged(loc, reason);
        if loc.pack == MISSING_PACK {
            return Err(damaged("the index names a block it does not hold".into()));
        }
        if loc.stored_len as u64 > 2 * self.params.block_size as u64 + 1024
            || loc.raw_len != self.params.block_size
        {
            return Err(damaged("index entry has impossible lengths".into()));
        }
        rec.resize(RECORD_HEADER_LEN + loc.stored_len as usize, 0);
        let read = match self.read_pack(loc.pack, loc.offset, rec, ahead) {
            Err(BlockError::Io { source, pack }) if source.kind() == io::ErrorKind::NotFound => {
                match self.relocate(loc) {
                    Some(moved) => self.read_pack(moved.pack, moved.offset, rec, ahead),
                    None => Err(BlockError::Io { source, pack }),
                }
            }
            r => r,
        };
        read.map_err(|e| match e {
            BlockError::Io { source, .. } if source.kind() == io::ErrorKind::UnexpectedEof => {
                damaged("pack file is shorter than the index says".into())
            }
            e => e,
        })
    }

    /// Where block `loc.id` is stored now, when that is another pack: a `forget` on a
    /// filesystem that cannot punch holes rewrites a pack's live records into a new
    /// one (the same bytes, elsewhere) and removes the old, which a map read before
    /// still names. `None` when the block stayed or is gone.
    fn relocate(&self, loc: &BlockLoc) -> Option<BlockLoc> {
        let now = self
            .with_conn(|c| {
                c.prepare_cached("SELECT pack, offset FROM blocks WHERE id = ?1")?
                    .query_row([loc.id], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)))
                    .optional()
            })
            .ok()??;
        if now.0 == loc.pack {
            return None;
        }
        self.relocations.fetch_add(1, AtomicOrdering::AcqRel);
        Some(BlockLoc {
            pack: now.0,
            offset: now.1.max(0) as u64,
            ..*loc
        })
    }

    /// How many reads so far found their block moved to another pack: a cache of
    /// block locations older than a change of this count may name removed packs.
    pub fn relocations(&self) -> u64 {
        self.relocations.load(AtomicOrdering::Acquire)
    }

    /// Reads `buf.len()` bytes of a pack at `offset` through the page cache; with
    /// `ahead`, first asking for the [`PACK_READ_AHEAD`] window around them.
    fn read_pack(
        &self,
        pack: i64,
        offset: u64,
        buf: &mut [u8],
        ahead: bool,
    ) -> Result<(), BlockError> {
        let file = self
            .pack(pack)
            .map_err(|source| BlockError::Io { pack, source })?;
        if ahead {
            read_ahead(&file, offset, buf.len());
        }
        read_full(&file, buf, offset).map_err(|source| BlockError::Io { pack, source })
    }

    fn direct_pack(&self, id: i64) -> io::Result<Option<Arc<File>>> {
        open_cached(&self.direct, id, || {
            use std::os::unix::fs::OpenOptionsExt;
            match std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_DIRECT)
                .open(format::pack_path(&self.dir, id))
            {
                Ok(f) => Ok(Some(Arc::new(f))),
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(None),
                Err(e) => Err(e),
            }
        })
    }

    /// Reads `len` bytes of a pack at `offset` into `buf` (grown as needed) and
    /// returns where in `buf` they start. With `direct`, and where the filesystem
    /// allows it, around the page cache (O_DIRECT): for long runs streamed once, the
    /// disk then writes straight into `buf`, saving a copy per byte and the page
    /// cache's upkeep.
    pub fn read_run(
        &self,
        pack: i64,
        offset: u64,
        len: usize,
        buf: &mut Vec<u8>,
        direct: bool,
    ) -> Result<usize, BlockError> {
        let io_err = |source| BlockError::Io { pack, source };
        let file = if direct {
            self.direct_pack(pack).map_err(io_err)?
        } else {
            None
        };
        let Some(file) = file else {
            if buf.len() < len {
                buf.resize(len, 0);
            }
            self.read_pack(pack, offset, &mut buf[..len], false)?;
            return Ok(0);
        };
        let a = DIRECT_ALIGN as u64;
        let start = offset / a * a;
        let skip = (offset - start) as usize;
        let want = skip + len;
        let span = want.div_ceil(DIRECT_ALIGN) * DIRECT_ALIGN;
        if buf.len() < span + DIRECT_ALIGN {
            buf.resize(span + DIRECT_ALIGN, 0);
        }
        let pad = buf.as_ptr().align_offset(DIRECT_ALIGN);
        let dst = &mut buf[pad..pad + span];
        let mut done = 0;
        while done < want {
            match file.read_at(&mut dst[done..], start + done as u64) {
                // A short read ends the file: unless it covers the run, the pack is
                // shorter than the index says.
                Ok(n) if n > 0 && (n % DIRECT_ALIGN == 0 || done + n >= want) => done += n,
                Ok(_) => return Err(io_err(io::ErrorKind::UnexpectedEof.into())),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io_err(e)),
            }
        }
        Ok(pad + skip)
    }

    /// Checks and decodes one record (header + stored bytes, as read from its pack)
    /// into `dst`, verifying the content hash.
    pub fn decode_record(
        &self,
        loc: &BlockLoc,
        rec: &[u8],
        dst: &mut [u8],
    ) -> Result<(), BlockError> {
        if dst.len() != loc.raw_len as usize {
            return Err(BlockError::damaged(
                loc,
                "record of the wrong length".into(),
            ));
        }
        let stored = check_record(loc, rec)?;
        let n = match loc.codec {
            format::CODEC_RAW => {
                dst.copy_from_slice(stored);
                dst.len()
            }
            _ => crate::unzstd::with_decompressor(|d| d.decompress_to_buffer(stored, dst))
                .map_err(|e| BlockError::damaged(loc, format!("zstd: {e}")))?,
        };
        verify_decoded(loc, &dst[..n])
    }

    /// Like [`Safe::decode_record`] into a new buffer, written without zeroing it first.
    pub fn decode_record_vec(&self, loc: &BlockLoc, rec: &[u8]) -> Result<Vec<u8>, BlockError> {
        let stored = check_record(loc, rec)?;
        let mut out = Vec::with_capacity(loc.raw_len as usize);
        match loc.codec {
            format::CODEC_RAW => out.extend_from_slice(stored),
            _ => {
                crate::unzstd::with_decompressor(|d| d.decompress_to_buffer(stored, &mut out))
                    .map_err(|e| BlockError::damaged(loc, format!("zstd: {e}")))?;
            }
        }
        verify_decoded(loc, &out)?;
        Ok(out)
    }
}

/// Checks a record's length and header against its index entry; returns the stored
/// bytes.
fn check_record<'a>(loc: &BlockLoc, rec: &'a [u8]) -> Result<&'a [u8], BlockError> {
    let damaged = |reason: String| BlockError::damaged(loc, reason);
    if rec.len() != RECORD_HEADER_LEN + loc.stored_len as usize {
        return Err(damaged("record of the wrong length".into()));
    }
    let hdr = RecordHeader::decode(rec).map_err(damaged)?;
    if hdr.raw_len != loc.raw_len
        || hdr.stored_len != loc.stored_len
        || hdr.codec != loc.codec
        || hdr.hash != loc.hash
    {
        return Err(damaged("record header disagrees with the index".into()));
    }
    if hdr.codec == format::CODEC_RAW && hdr.stored_len != hdr.raw_len {
        return Err(damaged("raw record of wrong length".into()));
    }
    Ok(&rec[RECORD_HEADER_LEN..])
}

/// A decoded block must be whole and hash to what the index says.
fn verify_decoded(loc: &BlockLoc, data: &[u8]) -> Result<(), BlockError> {
    if data.len() != loc.raw_len as usize {
        return Err(BlockError::damaged(
            loc,
            format!("decoded to {} bytes, expected {}", data.len(), loc.raw_len),
        ));
    }
    // The xxh3-128 the index keeps for every block catches any accidental damage at
    // memory speed (blake3 cost a tenth of a cold sequential read's CPU); `verify`
    // checks the blake3 content address as well.
    if format::quick_hash(data) != loc.quick {
        return Err(BlockError::damaged(loc, "content hash mismatch".into()));
    }
    Ok(())
}

/// A pack handle from `map`, opened once: packs are opened lazily and kept.
fn open_cached<T: Clone>(
    map: &RwLock<HashMap<i64, T>>,
    id: i64,
    open: impl FnOnce() -> io::Result<T>,
) -> io::Result<T> {
    if let Some(f) = map.read().unwrap().get(&id) {
        return Ok(f.clone());
    }
    let f = open()?;
    map.write().unwrap().insert(id, f.clone());
    Ok(f)
}

/// Pack bytes the page cache is asked to load around a record read on its own: records
/// written together are neighbours on the device (or were changed together), and the
/// kernel, seeing scattered small reads, reads ahead nothing. One 128 KiB read (the
/// kernel's own default readahead) costs about what a 20 KiB one does and brings the
/// next few records with it: cold random 4 KiB reads of a mounted image made a third
/// as many disk reads and ran 8 % faster (median of 16 pairs, BENCHMARKS.md). Runs
/// read by [`CachedSafe::fill`](crate::cache::CachedSafe::fill) get none: their
/// callers said what they need, and widening them read twice the bytes in an NTFS
/// walk for nothing; nor do scans in pack order (verify), which it slowed by defeating
/// the kernel's readahead.
const PACK_READ_AHEAD: u64 = 128 << 10;

/// Asks the kernel to start reading the aligned [`PACK_READ_AHEAD`] window holding
/// `offset..offset + len` (and all of that range) into the page cache. Only advice: the
/// read that follows waits for what it needs, and errors show up there.
fn read_ahead(file: &File, offset: u64, len: usize) {
    use std::os::fd::AsRawFd;
    let w = PACK_READ_AHEAD;
    let start = offset / w * w;
    let end = offset.saturating_add(len as u64).max(start + w);
    let (Ok(start), Ok(span)) = (i64::try_from(start), i64::try_from(end - start)) else {
        return;
    };
    // SAFETY: posix_fadvise only reads its arguments; the descriptor is open for the
    // lifetime of `file`.
    unsafe {
        libc::posix_fadvise(file.as_raw_fd(), start, span, libc::POSIX_FADV_WILLNEED);
    }
}

/// pread that loops until full, so short reads never pass as data.
pub fn read_full(file: &File, buf: &mut [u8], offset: u64) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Looks up a device id by name, for commands that take a device name.
pub fn device_in_point(point: &PointInfo, name: &str) -> anyhow::Result<DeviceAt> {
    point
        .devices
        .iter()
        .find(|d| d.name == name)
        .cloned()
        .ok_or_else(|| {
            let names: Vec<&str> = point.devices.iter().map(|d| d.name.as_str()).collect();
            anyhow::anyhow!(
                "no device {name:?} in point {} (it has: {})",
                point.id,
                names.join(", ")
            )
        })
}
