//! The writer: `disksafe backup`. Reads sources, stores only blocks that changed since
//! the previous point of each device, and makes the new point visible in one commit.
//!
//! Crash safety rests on three rules:
//! 1. pack bytes are fsynced before any index row names them;
//! 2. a point is created `complete = 0` and flipped to 1 in the final commit, and
//!    readers only ever look at complete points;
//! 3. the next backup, holding the writer lock, deletes the rows of incomplete points,
//!    truncates each pack to its committed length and removes unknown pack files.

mod changed;
mod forget;
mod free;
mod live;
mod pipeline;

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Seek, SeekFrom, Write};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use rusqlite::{params, Connection, OptionalExtension};

use crate::format::{self, Hash, Quick, RecordHeader, SafeParams, RECORD_HEADER_LEN, ZERO_BLOCK};
use crate::size::human;

pub use changed::parse_changed_blocks;
pub use forget::{forget, plan, ForgetReport, ForgetRequest, Policy};
pub use free::free_blocks_in;
use pipeline::{BlockOutcome, Job};

/// One `[NAME=]SOURCE` argument.
#[derive(Debug, Clone)]
pub struct SourceSpec {
    /// Device name inside the safe.
    pub name: String,
    /// File or block device to read.
    pub path: PathBuf,
}

impl SourceSpec {
    /// Parses `NAME=PATH` or `PATH` (the name is then the file name).
    pub fn parse(s: &str) -> anyhow::Result<SourceSpec> {
        let (name, path) = match s.split_once('=') {
            Some((n, p)) if !n.is_empty() && !n.contains('/') => (n.to_string(), PathBuf::from(p)),
            _ => {
                let p = PathBuf::from(s);
                let n = p
                    .file_name()
                    .and_then(|n| n.to_str())
                    .ok_or_else(|| {
                        anyhow::anyhow!("cannot derive a device name from {s:?}; use NAME={s}")
                    })?
                    .to_string();
                (n, p)
            }
        };
        validate_name(&name)?;
        Ok(SourceSpec { name, path })
    }
}

/// Device names become directory names in the mount, so they must be safe path parts.
pub fn validate_name(name: &str) -> anyhow::Result<()> {
    if name.is_empty()
        || name == "."
        || name == ".."
        || name.contains('/')
        || name.contains('\0')
        || name.len() > 200
    {
        bail!("invalid device name {name:?}: must be a non-empty file name");
    }
    Ok(())
}

/// What the user asked of one backup run.
#[derive(Debug, Clone, Default)]
pub struct BackupOptions {
    /// zstd level for a new safe (0 = none); must match an existing safe's.
    pub compression: Option<i32>,
    /// Block size for a new safe; must match an existing safe's.
    pub block_size: Option<u32>,
    /// Per device, a file of changed byte ranges since its previous point.
    pub changed_blocks: HashMap<String, PathBuf>,
    /// Draw a progress bar on stderr.
    pub progress: bool,
    /// Record what a failing source lets us read, the rest as unreadable ranges,
    /// instead of failing the backup.
    pub skip_unreadable: bool,
    /// With `skip_unreadable`: further reads of a failing sector before it is
    /// recorded as unreadable.
    pub retries: u32,
    /// Record blocks the source's filesystems mark free as zeros, unread.
    pub skip_free: bool,
    /// Passphrases that let `skip_free` look inside LUKS volumes.
    pub passphrases: Vec<crate::passphrase::Secret>,
}

/// The size of a regular file or block device, since block devices report 0 in metadata.
pub fn source_size(file: &File) -> io::Result<u64> {
    let md = file.metadata()?;
    if md.file_type().is_file() {
        return Ok(md.len());
    }
    let mut f = file;
    let end = f.seek(SeekFrom::End(0))?;
    f.seek(SeekFrom::Start(0))?;
    Ok(end)
}

/// Reopens a block device source with O_DIRECT. A filesystem mounted on the device
/// writes file data and journal blocks with I/O that bypasses the device's page cache,
/// so buffered reads can return what an earlier read (the previous backup's) left
/// there instead of what the device holds now: changes missed, journals torn. Where
/// O_DIRECT is refused, the device's cached pages are dropped before reading instead.
fn open_device_direct(path: &Path, buffered: File) -> File {
    use std::os::unix::fs::OpenOptionsExt;
    use std::os::unix::io::AsRawFd;
    let mut sector: libc::c_int = 0;
    // The logical block size, which O_DIRECT aligns to.
    let ok = unsafe { libc::ioctl(buffered.as_raw_fd(), libc::BLKSSZGET, &mut sector) } == 0;
    let fits = ok && sector > 0 && sector as usize <= pipeline::DIRECT_ALIGN;
    if fits {
        match std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECT)
            .open(path)
        {
            Ok(f) => return f,
            Err(e) => tracing::info!("{}: O_DIRECT refused ({e})", path.display()),
        }
    }
    unsafe { libc::posix_fadvise(buffered.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    eprintln!(
        "warning: source {} is read through the page cache (O_DIRECT not possible); blocks a mounted filesystem writes during the backup may be read as they were",
        path.display()
    );
    buffered
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

struct PackOut {
    id: i64,
    /// Buffered: records are small, so one write call carries many of them.
    file: std::io::BufWriter<File>,
    path: PathBuf,
    len: u64,
    committed: u64,
}

/// Holds the writer lock and the read-write index for one backup run.
struct Writer {
    dir: PathBuf,
    conn: Connection,
    _lock: File,
    params: SafeParams,
    pack: Option<PackOut>,
    next_block_id: i64,
    session: HashMap<Hash, i64>,
    new_blocks: Vec<NewBlock>,
    new_map: Vec<(i64, u64, i64)>,
    /// (device, offset, len) of source ranges that could not be read.
    new_unreadable: Vec<(i64, u64, u64)>,
    pending_bytes: u64,
    bytes_added: u64,
    point: i64,
    zero_quick: Quick,
}

/// A stored block whose index row is not committed yet.
struct NewBlock {
    id: i64,
    hash: Hash,
    quick: Quick,
    pack: i64,
    offset: u64,
    stored_len: u32,
    codec: u8,
}

const PACK_ROTATE: u64 = 1 << 30;
const FLUSH_BYTES: u64 = 256 << 20;
const FLUSH_ROWS: usize = 200_000;

/// Opens (or creates) the safe for writing and takes the writer lock.
fn open_for_write(
    dir: &Path,
    opts: &BackupOptions,
) -> anyhow::Result<(Connection, File, SafeParams)> {
    if dir.exists() && !dir.is_dir() {
        bail!(
            "{} is not a disk safe (it is not a directory)",
            dir.display()
        );
    }
    let db = format::db_path(dir);
    let creating = !db.exists();
    if creating {
        if dir.exists() {
            let foreign = fs::read_dir(dir)
                .with_context(|| format!("reading {}", dir.display()))?
                .filter_map(|e| e.ok())
                .any(|e| e.file_name() != "lock" && e.file_name() != "packs");
            if foreign {
                bail!(
                    "{} is not a disk safe (a non-empty directory without safe.db)",
                    dir.display()
                );
            }
        }
        fs::create_dir_all(dir.join("packs"))
            .with_context(|| format!("creating the safe {}", dir.display()))?;
    }
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("lock"))
        .map_err(|e| match e.raw_os_error() {
            Some(libc::EROFS) => anyhow::anyhow!(
                "cannot back up to {}: its filesystem is mounted read-only (it can still be read: points, restore, verify, mount)",
                dir.display()
            ),
            Some(libc::EACCES | libc::EPERM) => anyhow::anyhow!(
                "cannot back up to {}: this user may not write there ({e})",
                dir.display()
            ),
            _ => anyhow::Error::from(e).context(format!("opening the lock of {}", dir.display())),
        })?;
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        bail!(
            "another backup or forget is writing to {} right now",
            dir.display()
        );
    }
    let conn = Connection::open(&db).with_context(|| format!("opening {}", db.display()))?;
    conn.busy_timeout(std::time::Duration::from_secs(30))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    let has_meta: bool = conn
        .query_row(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'",
            [],
            |_| Ok(()),
        )
        .optional()?
        .is_some();
    if !has_meta {
        let bs = opts.block_size.unwrap_or(format::DEFAULT_BLOCK_SIZE);
        let level = opts.compression.unwrap_or(1);
        let tx = conn.unchecked_transaction()?;
        tx.execute_batch(format::SCHEMA)?;
        for (k, v) in [
            ("format_version", format::FORMAT_VERSION.to_string()),
            ("block_size", bs.to_string()),
            ("compression", level.to_string()),
            ("created", now_secs().to_string()),
        ] {
            tx.execute(
                "INSERT INTO meta(key, value) VALUES (?1, ?2)",
                params![k, v],
            )?;
        }
        tx.commit()?;
        sync_dir(dir)?;
    }
    let params = format::read_params(&conn, dir)?;
    upgrade(&conn)?;
    if let Some(bs) = opts.block_size {
        if bs != params.block_size {
            bail!(
                "{} was created with block size {}; --block-size only applies when creating a safe",
                dir.display(),
                params.block_size
            );
        }
    }
    if let Some(level) = opts.compression {
        if level != params.compression {
            bail!(
                "{} was created with compression level {}; --compression only applies when creating a safe",
                dir.display(),
                params.compression
            );
        }
    }
    Ok((conn, lock, params))
}

/// Brings a version-1 safe to the current format: the tables version 2 added, then the
/// version, so readers that would ignore them refuse the safe instead.
fn upgrade(conn: &Connection) -> anyhow::Result<()> {
    let tx = conn.unchecked_transaction()?;
    tx.execute_batch(format::V2_SCHEMA)?;
    tx.execute(
        "UPDATE meta SET value = ?1 WHERE key = 'format_version' AND CAST(value AS INTEGER) < ?1",
        [format::FORMAT_VERSION],
    )?;
    tx.commit()?;
    Ok(())
}

/// Deletes every row of an incomplete point (a failed or interrupted backup's).
fn delete_point(tx: &Connection, point: i64) -> rusqlite::Result<()> {
    tx.execute("DELETE FROM unreadable WHERE point = ?1", [point])?;
    tx.execute("DELETE FROM block_map WHERE point = ?1", [point])?;
    tx.execute("DELETE FROM point_devices WHERE point = ?1", [point])?;
    tx.execute("DELETE FROM points WHERE id = ?1", [point])?;
    Ok(())
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Reclaims what an interrupted backup left (its incomplete points, pack tails past the
/// committed length, pack files the index does not know) and finishes freeing the packs
/// an interrupted `forget` queued.
fn recover(conn: &Connection, dir: &Path) -> anyhow::Result<()> {
    let tx = conn.unchecked_transaction()?;
    let stale: Vec<i64> = {
        let mut st = tx.prepare("SELECT id FROM points WHERE complete = 0")?;
        let v = st.query_map([], |r| r.get(0))?.collect::<Result<_, _>>()?;
        v
    };
    for &p in &stale {
        delete_point(&tx, p)?;
        tracing::warn!("removed incomplete point {p} left by an interrupted backup");
    }
    let packs: HashMap<i64, u64> = {
        let mut st = tx.prepare("SELECT id, committed_len FROM packs")?;
        let v = st
            .query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))?
            .collect::<Result<_, _>>()?;
        v
    };
    tx.commit()?;
    let pdir = dir.join("packs");
    fs::create_dir_all(&pdir)?;
    for e in fs::read_dir(&pdir)? {
        let e = e?;
        let name = e.file_name();
        let name = name.to_string_lossy();
        let id = name
            .strip_suffix(".pack")
            .and_then(|n| n.parse::<i64>().ok());
        match id.and_then(|id| packs.get(&id).map(|len| (id, *len))) {
            Some((id, len)) => {
                let path = e.path();
                let actual = e.metadata()?.len();
                if actual > len {
                    OpenOptions::new().write(true).open(&path)?.set_len(len)?;
                    tracing::warn!(
                        "truncated pack {id} from {actual} to its committed {len} bytes"
                    );
                }
            }
            None => {
                fs::remove_file(e.path())?;
                tracing::warn!("removed unreferenced pack file {name}");
            }
        }
    }
    forget::reclaim(conn, dir)?;
    Ok(())
}

impl Writer {
    fn open(dir: &Path, opts: &BackupOptions) -> anyhow::Result<Writer> {
        let (conn, lock, params) = open_for_write(dir, opts)?;
        recover(&conn, dir)?;
        // Never below the high mark: `forget` may have deleted the newest ids, and a
        // mount's block cache must not take a new block for a freed one.
        let next_block_id = forget::next_id(&conn, "blocks", forget::BLOCK_HIGH)?;
        conn.execute("INSERT INTO points(created) VALUES (?1)", [now_secs()])?;
        let point = conn.last_insert_rowid();
        Ok(Writer {
            dir: dir.to_path_buf(),
            conn,
            _lock: lock,
            zero_quick: format::zero_quick(params.block_size),
            params,
            pack: None,
            next_block_id,
            session: HashMap::new(),
            new_blocks: Vec::new(),
            new_map: Vec::new(),
            new_unreadable: Vec::new(),
            pending_bytes: 0,
            bytes_added: 0,
            point,
        })
    }

    fn device_id(&self, name: &str) -> anyhow::Result<i64> {
        self.conn
            .execute("INSERT OR IGNORE INTO devices(name) VALUES (?1)", [name])?;
        Ok(self
            .conn
            .query_row("SELECT id FROM devices WHERE name = ?1", [name], |r| {
                r.get(0)
            })?)
    }

    /// The newest complete point holding `device`, with its size then.
    fn previous(&self, device: i64) -> anyhow::Result<Option<(i64, u64)>> {
        Ok(self
            .conn
            .query_row(
                "SELECT pd.point, pd.size FROM point_devices pd JOIN points p ON p.id = pd.point
                 WHERE pd.device = ?1 AND p.complete = 1 ORDER BY pd.point DESC LIMIT 1",
                [device],
                |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)),
            )
            .optional()?)
    }

    fn ensure_pack(&mut self) -> anyhow::Result<&mut PackOut> {
        let rotate = matches!(&self.pack, Some(p) if p.len >= PACK_ROTATE);
        if rotate {
            self.flush()?;
            self.pack = None;
        }
        if self.pack.is_none() {
            let id = forget::next_id(&self.conn, "packs", forget::PACK_HIGH)?;
            let path = format::pack_path(&self.dir, id);
            let mut file = OpenOptions::new()
                .create_new(true)
                .read(true)
                .write(true)
                .open(&path)
                .with_context(|| format!("creating pack file {}", path.display()))?;
            file.write_all(format::PACK_MAGIC)
                .with_context(|| format!("writing pack file {}", path.display()))?;
            file.sync_all()
                .with_context(|| format!("writing pack file {}", path.display()))?;
            sync_dir(&self.dir.join("packs"))?;
            // Registered at once with its header as committed length, so recovery
            // truncates rather than deletes it.
            self.conn.execute(
                "INSERT INTO packs(id, committed_len) VALUES (?1, ?2)",
                params![id, format::PACK_MAGIC.len() as i64],
            )?;
            self.pack = Some(PackOut {
                id,
                file: std::io::BufWriter::with_capacity(1 << 20, file),
                path,
                len: format::PACK_MAGIC.len() as u64,
                committed: format::PACK_MAGIC.len() as u64,
            });
        }
        Ok(self.pack.as_mut().unwrap())
    }

    /// Looks a batch of new hashes up in the index with one query, so `store` need not
    /// ask per block: every hash the safe holds is in `session` afterwards.
    fn lookup_batch(&mut self, hashes: &[Hash]) -> anyhow::Result<()> {
        if hashes.is_empty() {
            return Ok(());
        }
        let marks = vec!["?"; hashes.len()].join(",");
        let sql = format!("SELECT hash, id FROM blocks WHERE hash IN ({marks})");
        let mut st = self.conn.prepare_cached(&sql)?;
        let params: Vec<&[u8]> = hashes.iter().map(|h| &h[..]).collect();
        let mut rows = st.query(rusqlite::params_from_iter(params))?;
        while let Some(r) = rows.next()? {
            let h: Vec<u8> = r.get(0)?;
            if let Ok(h) = Hash::try_from(h.as_slice()) {
                self.session.insert(h, r.get(1)?);
            }
        }
        Ok(())
    }

    /// Returns the id of a block with this content, storing it if the safe lacks it.
    /// The hash must have gone through `lookup_batch` first.
    fn store(&mut self, hash: Hash, quick: Quick, codec: u8, stored: &[u8]) -> anyhow::Result<i64> {
        if let Some(id) = self.session.get(&hash) {
            return Ok(*id);
        }
        let block_size = self.params.block_size;
        let pack = self.ensure_pack()?;
        let hdr = RecordHeader {
            codec,
            raw_len: block_size,
            stored_len: stored.len() as u32,
            hash,
        };
        let offset = pack.len;
        let write = |f: &mut std::io::BufWriter<File>| -> io::Result<()> {
            f.write_all(&hdr.encode())?;
            f.write_all(stored)
        };
        write(&mut pack.file)
            .with_context(|| format!("writing pack file {}", pack.path.display()))?;
        let rec_len = (RECORD_HEADER_LEN + stored.len()) as u64;
        pack.len += rec_len;
        let pack_id = pack.id;
        let id = self.next_block_id;
        self.next_block_id += 1;
        self.session.insert(hash, id);
        self.new_blocks.push(NewBlock {
            id,
            hash,
            quick,
            pack: pack_id,
            offset,
            stored_len: stored.len() as u32,
            codec,
        });
        self.pending_bytes += rec_len;
        self.bytes_added += rec_len;
        Ok(id)
    }

    /// Makes everything written so far durable: fsync the pack, then commit its rows.
    fn flush(&mut self) -> anyhow::Result<()> {
        if let Some(p) = &mut self.pack {
            if p.len > p.committed {
                p.file
                    .flush()
                    .with_context(|| format!("writing pack file {}", p.path.display()))?;
                p.file
                    .get_ref()
                    .sync_data()
                    .with_context(|| format!("syncing pack file {}", p.path.display()))?;
            }
        }
        let tx = self.conn.unchecked_transaction()?;
        {
            let mut ins = tx.prepare_cached(
                "INSERT INTO blocks(id, hash, quick, pack, offset, stored_len, raw_len, codec)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?;
            let raw_len = self.params.block_size;
            for b in &self.new_blocks {
                ins.execute(params![
                    b.id,
                    &b.hash[..],
                    &b.quick[..],
                    b.pack,
                    b.offset as i64,
                    b.stored_len,
                    raw_len,
                    b.codec
                ])?;
            }
            let mut map = tx.prepare_cached(
                "INSERT OR REPLACE INTO block_map(device, block_no, point, block) VALUES (?1, ?2, ?3, ?4)",
            )?;
            for (dev, b, blk) in &self.new_map {
                map.execute(params![dev, *b as i64, self.point, blk])?;
            }
            let mut bad = tx.prepare_cached(
                "INSERT INTO unreadable(point, device, offset, len) VALUES (?1, ?2, ?3, ?4)",
            )?;
            for (dev, off, len) in &self.new_unreadable {
                bad.execute(params![self.point, dev, *off as i64, *len as i64])?;
            }
            if let Some(p) = &self.pack {
                tx.execute(
                    "UPDATE packs SET committed_len = ?1 WHERE id = ?2",
                    params![p.len as i64, p.id],
                )?;
            }
        }
        tx.commit().context("committing to the index")?;
        if let Some(p) = &mut self.pack {
            p.committed = p.len;
        }
        self.new_blocks.clear();
        self.new_map.clear();
        self.new_unreadable.clear();
        self.pending_bytes = 0;
        Ok(())
    }

    fn maybe_flush(&mut self) -> anyhow::Result<()> {
        if self.pending_bytes >= FLUSH_BYTES || self.new_map.len() >= FLUSH_ROWS {
            self.flush()?;
        }
        Ok(())
    }

    /// Best-effort undo after a failure; whatever is left, the next backup reclaims.
    fn abort(&mut self) {
        let point = self.point;
        let res = (|| -> anyhow::Result<()> {
            self.new_blocks.clear();
            self.new_map.clear();
            if let Some(p) = self.pack.take() {
                // Drop what is still buffered, unwritten, then cut the pack back.
                let (f, _) = p.file.into_parts();
                f.set_len(p.committed)?;
            }
            let tx = self.conn.unchecked_transaction()?;
            delete_point(&tx, point)?;
            tx.commit()?;
            Ok(())
        })();
        if let Err(e) = res {
            tracing::warn!("cleanup after the failed backup is incomplete ({e:#}); the next backup will finish it");
        }
    }
}

/// Per-device result, for the summary line.
#[derive(Debug, Clone, Default)]
pub struct DeviceStats {
    /// Bytes read from the source.
    pub scanned: u64,
    /// Blocks whose content changed since the previous point.
    pub changed_blocks: u64,
    /// Bytes that could not be read (with `skip_unreadable`).
    pub unreadable: u64,
}

/// Runs one backup: records ONE new point holding every source; returns its id.
pub fn backup(dir: &Path, sources: &[SourceSpec], opts: &BackupOptions) -> anyhow::Result<i64> {
    if sources.is_empty() {
        bail!("nothing to back up: name at least one SOURCE");
    }
    let mut seen = std::collections::HashSet::new();
    for s in sources {
        if !seen.insert(&s.name) {
            bail!("device name {:?} given twice", s.name);
        }
    }
    for name in opts.changed_blocks.keys() {
        if !seen.contains(name) {
            bail!("--changed-blocks names device {name:?}, which is not among the sources");
        }
    }
    // Open every source before touching the safe, so a typo costs nothing.
    let mut files = Vec::new();
    for s in sources {
        let f = File::open(&s.path)
            .with_context(|| format!("cannot read source {}", s.path.display()))?;
        let md = f.metadata()?;
        let ft = md.file_type();
        if !(ft.is_file() || ft.is_block_device()) {
            bail!(
                "source {} is neither a regular file nor a block device",
                s.path.display()
            );
        }
        let f = if ft.is_block_device() {
            open_device_direct(&s.path, f)
        } else {
            f
        };
        let mounts = live::rw_mounts(&s.path, &md);
        if !mounts.is_empty() {
            if opts.skip_free {
                eprintln!(
                    "warning: source {} is mounted read-write, so its free space is read too (--skip-free needs a source that holds still: a block found free could be in use by the time it is read)",
                    s.path.display()
                );
            }
            let at: Vec<String> = mounts.iter().map(|m| m.display().to_string()).collect();
            eprintln!(
                "warning: source {} is mounted read-write at {}: blocks written while it is read are caught at different moments, so the point can be less consistent than a machine that lost power (the mount replays ext journals and XFS logs as far as their checksums allow, not NTFS's $LogFile); back up a snapshot (LVM, the hypervisor's, or under fsfreeze) for a consistent one",
                s.path.display(),
                at.join(", ")
            );
        }
        let size =
            source_size(&f).with_context(|| format!("sizing source {}", s.path.display()))?;
        files.push((f, size, !mounts.is_empty()));
    }
    let mut changed = HashMap::new();
    for (name, path) in &opts.changed_blocks {
        let ranges = parse_changed_blocks(path)?;
        // A range past the device's end means the list is not this device's (or
        // not of this size): reading only its ranges would miss real changes.
        let size = sources
            .iter()
            .zip(&files)
            .find(|(s, _)| &s.name == name)
            .map_or(0, |(_, (_, size, _))| *size);
        if let Some((off, len)) = ranges.iter().find(|(o, l)| o + l > size) {
            bail!(
                "--changed-blocks {name}={}: range {off}+{len} ends past the end of device {name} ({size} bytes); is this the list for this device?",
                path.display()
            );
        }
        changed.insert(name.clone(), ranges);
    }
    let mut w = Writer::open(dir, opts)?;
    let res = (|| -> anyhow::Result<()> {
        let started = Instant::now();
        let mut total = DeviceStats::default();
        // Searched together: an LV may span several of the sources.
        let mut frees = if opts.skip_free {
            let still: Vec<(&str, &Path)> = sources
                .iter()
                .zip(&files)
                .filter(|(_, (_, _, live))| !live)
                .map(|(s, _)| (s.name.as_str(), s.path.as_path()))
                .collect();
            let mut found =
                free::free_blocks(&still, w.params.block_size as u64, &opts.passphrases)
                    .into_iter();
            files
                .iter()
                .map(|(_, _, live)| {
                    if *live {
                        Vec::new()
                    } else {
                        found.next().unwrap_or_default()
                    }
                })
                .collect()
        } else {
            vec![Vec::new(); files.len()]
        };
        for (i, (s, (f, size, _))) in sources.iter().zip(&files).enumerate() {
            let free = std::mem::take(&mut frees[i]);
            let st = backup_device(&mut w, s, f, *size, changed.get(&s.name), opts, free)?;
            total.scanned += st.scanned;
            total.changed_blocks += st.changed_blocks;
        }
        w.flush()?;
        w.conn.execute(
            "UPDATE points SET complete = 1, bytes_added = ?1 WHERE id = ?2",
            params![w.bytes_added as i64, w.point],
        )?;
        let secs = started.elapsed().as_secs_f64().max(1e-6);
        eprintln!(
            "point {}: {} device(s), scanned {} in {:.1}s ({}/s), {} changed blocks, {} added to the safe",
            w.point,
            sources.len(),
            human(total.scanned),
            secs,
            human((total.scanned as f64 / secs) as u64),
            total.changed_blocks,
            human(w.bytes_added)
        );
        Ok(())
    })();
    match res {
        Ok(()) => Ok(w.point),
        Err(e) => {
            w.abort();
            Err(e.context("backup failed; no new point was recorded"))
        }
    }
}

fn backup_device(
    w: &mut Writer,
    s: &SourceSpec,
    file: &File,
    size: u64,
    changed: Option<&Vec<(u64, u64)>>,
    opts: &BackupOptions,
    free: Vec<(u64, u64)>,
) -> anyhow::Result<DeviceStats> {
    let (progress, skip_unreadable) = (opts.progress, opts.skip_unreadable);
    let bs = w.params.block_size as u64;
    let device = w.device_id(&s.name)?;
    let prev = w.previous(device)?;
    let nblocks = size.div_ceil(bs);
    let runs: Vec<(u64, u64)> = match (changed, prev) {
        (Some(ranges), Some((pp, prev_size))) => {
            // What the previous point could not read is read again: it may read now,
            // and if not, this point must say so too.
            let mut ranges = ranges.clone();
            ranges.extend(crate::safe_reader::unreadable_ranges(&w.conn, pp, device)?);
            changed::blocks_to_scan(&ranges, bs, size, prev_size)
        }
        (Some(_), None) => {
            tracing::warn!(
                "device {}: no previous point, so --changed-blocks is ignored and the whole device is read",
                s.name
            );
            vec![(0, nblocks)]
        }
        (None, _) => vec![(0, nblocks)],
    };
    let to_scan: u64 = runs.iter().map(|r| r.1).sum::<u64>() * bs;
    let bar = if progress {
        let b = indicatif::ProgressBar::new(to_scan);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .unwrap()
            .progress_chars("=> "),
        );
        b.set_message(s.name.clone());
        b
    } else {
        indicatif::ProgressBar::hidden()
    };
    let job = Job {
        safe: w.dir.clone(),
        file,
        path: &s.path,
        size,
        device,
        prev,
        runs,
        params: w.params,
        zero_quick: w.zero_quick,
        sparse: file.metadata()?.file_type().is_file(),
        skip_unreadable,
        retries: opts.retries,
        free,
        backward: false,
    };
    // Only free blocks among those this point reads are recorded as zeros (with
    // --changed-blocks the rest are neither read nor recorded).
    let free_bytes: u64 = free::overlap_blocks(&job.free, &job.runs) * bs;
    if free_bytes > 0 {
        eprintln!(
            "device {}: {} its filesystems mark free is recorded as zeros, not read",
            s.name,
            human(free_bytes)
        );
    }
    let mut stats = DeviceStats::default();
    pipeline::run(job, |processed| {
        for &(off, len) in &processed.unreadable {
            stats.unreadable += len;
            match w.new_unreadable.last_mut() {
                Some(r) if r.0 == device && r.1 + r.2 == off => r.2 += len,
                _ => w.new_unreadable.push((device, off, len)),
            }
        }
        let batch = processed.outcomes;
        let fresh: Vec<Hash> = batch
            .iter()
            .filter_map(|(_, o)| match o {
                BlockOutcome::Data { hash, .. } if !w.session.contains_key(hash) => Some(*hash),
                _ => None,
            })
            .collect();
        w.lookup_batch(&fresh)?;
        for (b, outcome) in batch {
            match outcome {
                BlockOutcome::Unchanged => {}
                BlockOutcome::Zero => {
                    w.new_map.push((device, b, ZERO_BLOCK));
                    stats.changed_blocks += 1;
                }
                BlockOutcome::Data {
                    hash,
                    quick,
                    codec,
                    stored,
                } => {
                    let id = w.store(hash, quick, codec, &stored)?;
                    w.new_map.push((device, b, id));
                    stats.changed_blocks += 1;
                }
            }
            stats.scanned += bs.min(size - b * bs);
            bar.inc(bs);
        }
        w.maybe_flush()
    })?;
    bar.finish_and_clear();
    w.conn.execute(
        "INSERT INTO point_devices(point, device, size) VALUES (?1, ?2, ?3)",
        params![w.point, device, size as i64],
    )?;
    if stats.unreadable > 0 {
        eprintln!(
            "warning: device {}: {} could not be read from {}; recorded as unreadable (the mount answers EIO there, restore writes zeros and names the ranges)",
            s.name,
            human(stats.unreadable),
            s.path.display()
        );
    }
    Ok(stats)
}
