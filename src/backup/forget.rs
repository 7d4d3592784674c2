//! `disksafe forget`: removes recovery points, by id or by a retention policy, and gives
//! the space of blocks no remaining point uses back to the filesystem.
//!
//! Every point is a virtual full: block B of device D at point P is the newest map row
//! of (D, B) at or before P. Removing P therefore moves each of its rows to the next
//! remaining point of D when that point inherited it (no row of its own in between),
//! and drops it otherwise; the remaining points read exactly what they read before.
//! All of that, the points' rows and the unused blocks' rows go in one transaction, so
//! a crash leaves either the old safe or the new one. The freed records' bytes are then
//! punched out of their packs (holes; offsets of live records never move), or whole
//! packs removed, driven by the `reclaim` table so an interrupted run is finished by
//! the next `forget` or `backup`. Block and pack ids are never reused (`meta`'s high
//! marks): a mount's block cache, keyed by id, must never mistake a new block for a
//! freed one.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fs::{self, OpenOptions};
use std::io;
use std::os::unix::io::AsRawFd;
use std::path::Path;

use anyhow::{bail, Context};
use rusqlite::{params, Connection, OptionalExtension};

use crate::format::{self, civil_from_days, RECORD_HEADER_LEN, ZERO_BLOCK};
use crate::safe_reader::Safe;

/// How many of the newest points each rule keeps; a point kept by any rule stays.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Policy {
    /// The newest N points.
    pub last: u32,
    /// The newest point of each of the N newest hours that have points.
    pub hourly: u32,
    /// The same per day (UTC).
    pub daily: u32,
    /// The same per week (Monday to Sunday, UTC).
    pub weekly: u32,
    /// The same per calendar month (UTC).
    pub monthly: u32,
    /// The same per calendar year (UTC).
    pub yearly: u32,
}

impl Policy {
    /// True when no rule keeps anything, which would forget every point.
    pub fn is_empty(&self) -> bool {
        self.rules().iter().all(|(_, n, _)| *n == 0)
    }

    /// (name, count, bucket of a creation time) per rule; points in one bucket compete.
    #[allow(clippy::type_complexity)]
    fn rules(&self) -> [(&'static str, u32, fn(i64, i64) -> i64); 6] {
        fn month(secs: i64) -> (i64, u32) {
            let (y, m, _) = civil_from_days(secs.div_euclid(86_400));
            (y, m)
        }
        [
            ("last", self.last, |id, _| id),
            ("hourly", self.hourly, |_, t| t.div_euclid(3600)),
            ("daily", self.daily, |_, t| t.div_euclid(86_400)),
            // 1970-01-01 was a Thursday: shifting by 3 days starts weeks on Mondays.
            ("weekly", self.weekly, |_, t| {
                (t.div_euclid(86_400) + 3).div_euclid(7)
            }),
            ("monthly", self.monthly, |_, t| {
                let (y, m) = month(t);
                y * 12 + m as i64
            }),
            ("yearly", self.yearly, |_, t| month(t).0),
        ]
    }
}

/// For each point (id, creation time), the rules that keep it; an empty list means the
/// policy forgets it. Walks newest first: each rule keeps the newest point of each of
/// its N newest buckets.
pub fn plan(points: &[(i64, i64)], policy: &Policy) -> Vec<(i64, Vec<&'static str>)> {
    let mut order: Vec<(i64, i64)> = points.to_vec();
    order.sort_by_key(|&(id, t)| std::cmp::Reverse((t, id)));
    let mut reasons: HashMap<i64, Vec<&'static str>> = HashMap::new();
    for (name, count, bucket) in policy.rules() {
        let mut last_bucket = None;
        let mut kept = 0;
        for &(id, t) in &order {
            if kept == count {
                break;
            }
            let b = bucket(id, t);
            if last_bucket != Some(b) {
                last_bucket = Some(b);
                kept += 1;
                reasons.entry(id).or_default().push(name);
            }
        }
    }
    let mut out: Vec<(i64, Vec<&'static str>)> = points
        .iter()
        .map(|&(id, _)| (id, reasons.remove(&id).unwrap_or_default()))
        .collect();
    out.sort_by_key(|(id, _)| *id);
    out
}

/// What the user asked `forget` to remove.
#[derive(Debug, Clone, Default)]
pub struct ForgetRequest {
    /// Point ids, `latest`, or inclusive ranges `A-B`; exclusive with a policy.
    pub points: Vec<String>,
    /// Retention rules: every point they do not keep is forgotten.
    pub policy: Policy,
    /// Only say what would be forgotten; the safe is opened read-only.
    pub dry_run: bool,
}

/// A point before the run: (id, created, the rules that keep it; none: forgotten).
pub type Kept = (i64, i64, Vec<&'static str>);

/// What `forget` decided and did.
#[derive(Debug, Default)]
pub struct ForgetReport {
    /// Every point before the run: (id, created, the rules that keep it); only filled
    /// for a policy.
    pub kept: Vec<Kept>,
    /// Points removed (or that would be, on a dry run): (id, created).
    pub forgotten: Vec<(i64, i64)>,
    /// Stored blocks no point used any more, removed from the index.
    pub blocks_freed: u64,
    /// Their records' bytes in the packs.
    pub bytes_freed: u64,
    /// Packs removed whole because nothing in them was used any more.
    pub packs_removed: u64,
    /// Packs rewritten without their unused records, on a filesystem that cannot
    /// punch holes.
    pub packs_compacted: u64,
    /// Freed bytes left allocated because the safe's filesystem cannot punch holes.
    pub bytes_not_punched: u64,
}

/// Resolves the request against the complete points (id, created), oldest first.
fn choose(
    points: &[(i64, i64)],
    req: &ForgetRequest,
    dir: &Path,
) -> anyhow::Result<(BTreeSet<i64>, Vec<Kept>)> {
    let policy = !req.policy.is_empty();
    if policy && !req.points.is_empty() {
        bail!("name points to forget or give --keep-* rules, not both");
    }
    if !policy && req.points.is_empty() {
        bail!("nothing to forget: name points (ids, `latest`, ranges like 3-7) or give --keep-* rules");
    }
    let ids: BTreeSet<i64> = points.iter().map(|p| p.0).collect();
    if policy {
        let plan = plan(points, &req.policy);
        let created: HashMap<i64, i64> = points.iter().copied().collect();
        let forget = plan
            .iter()
            .filter(|(_, why)| why.is_empty())
            .map(|(id, _)| *id)
            .collect();
        let kept = plan
            .into_iter()
            .map(|(id, why)| (id, created[&id], why))
            .collect();
        return Ok((forget, kept));
    }
    let mut forget = BTreeSet::new();
    for spec in &req.points {
        if spec == "latest" {
            let Some(&newest) = ids.last() else {
                bail!("{} holds no recovery points", dir.display());
            };
            forget.insert(newest);
            continue;
        }
        let bad = || {
            anyhow::anyhow!(
                "invalid point {spec:?}: expected a number, `latest` or a range like 3-7"
            )
        };
        if let Some((a, b)) = spec.split_once('-') {
            let a: i64 = a.trim().parse().map_err(|_| bad())?;
            let b: i64 = b.trim().parse().map_err(|_| bad())?;
            if a > b {
                return Err(bad());
            }
            let hit: Vec<i64> = ids.range(a..=b).copied().collect();
            if hit.is_empty() {
                bail!("no recovery point in {a}-{b} in {}", dir.display());
            }
            forget.extend(hit);
        } else {
            let id: i64 = spec.parse().map_err(|_| bad())?;
            if !ids.contains(&id) {
                bail!("no recovery point {id} in {}", dir.display());
            }
            forget.insert(id);
        }
    }
    Ok((forget, Vec::new()))
}

/// Runs `forget`: decides, then (unless a dry run) removes the points and frees space.
pub fn forget(dir: &Path, req: &ForgetRequest) -> anyhow::Result<ForgetReport> {
    // The readers' checks first: a path that is no safe, or a newer format, fails the
    // same way as for every other command, and nothing is created.
    let reader = Safe::open(dir)?;
    if req.dry_run {
        let points: Vec<(i64, i64)> = reader.points()?.iter().map(|p| (p.id, p.created)).collect();
        let (chosen, kept) = choose(&points, req, dir)?;
        let forgotten = points
            .into_iter()
            .filter(|p| chosen.contains(&p.0))
            .collect();
        let bs = reader.params().block_size as u64;
        // One read transaction: a backup committing meanwhile does not skew it.
        let (blocks_freed, bytes_freed) = reader.with_conn(|c| {
            let tx = c.unchecked_transaction()?;
            estimate(&tx, &chosen, bs)
        })?;
        return Ok(ForgetReport {
            kept,
            forgotten,
            blocks_freed,
            bytes_freed,
            ..Default::default()
        });
    }
    drop(reader);
    let (conn, _lock, params) = super::open_for_write(dir, &super::BackupOptions::default())?;
    super::recover(&conn, dir)?;
    let points: Vec<(i64, i64)> = {
        let mut st =
            conn.prepare("SELECT id, created FROM points WHERE complete = 1 ORDER BY id")?;
        let v = st
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        v
    };
    let (chosen, kept) = choose(&points, req, dir)?;
    let mut report = ForgetReport {
        kept,
        forgotten: points
            .iter()
            .copied()
            .filter(|p| chosen.contains(&p.0))
            .collect(),
        ..Default::default()
    };

    let tx = conn.unchecked_transaction()?;
    remove_points(&tx, &chosen, params.block_size as u64)?;
    let (blocks, bytes) = drop_unused_blocks(&tx)?;
    report.blocks_freed = blocks;
    report.bytes_freed = bytes;
    tx.commit().context("committing to the index")?;
    for &(id, _) in &report.forgotten {
        tracing::info!("forgot point {id}");
    }
    let done = reclaim(&conn, dir)?;
    report.packs_removed = done.removed;
    report.packs_compacted = done.compacted;
    report.bytes_not_punched = done.unpunched;
    // The deletions sit in the WAL; fold them into safe.db so it stops growing.
    let _ = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
    Ok(report)
}

/// What removing the chosen points does to one map row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    /// Its point stays: untouched.
    Keep,
    /// Its point goes, and the device's next remaining point inherits it: moved there.
    Move(i64),
    /// Its point goes and no remaining point reads it.
    Drop,
}

/// Visits the map rows of the devices the chosen points hold (of every device with
/// `all`), one device and one range of blocks at a time so memory stays bounded
/// whatever the device size, with each row's [`Fate`]:
/// `visit(device, block_no, point, block, fate)`.
fn walk_rows(
    conn: &Connection,
    chosen: &BTreeSet<i64>,
    block_size: u64,
    all: bool,
    mut visit: impl FnMut(i64, i64, i64, i64, Fate) -> rusqlite::Result<()>,
) -> rusqlite::Result<()> {
    // Per device, its points that stay with their sizes in blocks, in order; and the
    // devices to walk.
    let mut remaining: HashMap<i64, Vec<(i64, u64)>> = HashMap::new();
    let mut walk: BTreeSet<i64> = BTreeSet::new();
    {
        let mut st = conn.prepare(
            "SELECT pd.point, pd.device, pd.size FROM point_devices pd JOIN points p ON p.id = pd.point
             WHERE p.complete = 1 ORDER BY pd.point",
        )?;
        let mut rows = st.query([])?;
        while let Some(r) = rows.next()? {
            let (p, d, size): (i64, i64, i64) = (r.get(0)?, r.get(1)?, r.get(2)?);
            if chosen.contains(&p) || all {
                walk.insert(d);
            }
            if !chosen.contains(&p) {
                let blocks = (size.max(0) as u64).div_ceil(block_size);
                remaining.entry(d).or_default().push((p, blocks));
            }
        }
    }
    const SPAN: i64 = 1 << 16;
    for &dev in &walk {
        let stay = remaining.get(&dev).map(|v| v.as_slice()).unwrap_or(&[]);
        let max: Option<i64> = conn.query_row(
            "SELECT MAX(block_no) FROM block_map WHERE device = ?1",
            [dev],
            |r| r.get(0),
        )?;
        let Some(max) = max else { continue };
        let mut lo = 0i64;
        while lo <= max {
            let hi = lo.saturating_add(SPAN);
            // (block_no, point, block) in key order: each block's rows by point.
            let rows: Vec<(i64, i64, i64)> = {
                let mut st = conn.prepare_cached(
                    "SELECT block_no, point, block FROM block_map
                     WHERE device = ?1 AND block_no >= ?2 AND block_no < ?3",
                )?;
                let v = st
                    .query_map(params![dev, lo, hi], |r| {
                        Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                    })?
                    .collect::<Result<_, _>>()?;
                v
            };
            for (i, &(b, p, blk)) in rows.iter().enumerate() {
                let fate = if !chosen.contains(&p) {
                    Fate::Keep
                } else {
                    // The next point of this device that stays inherits this row unless
                    // a newer row of the same block comes first. Where that point's
                    // device ends before the block, only a zero row can still be
                    // inherited (by a later point that grew: a backup rewrites data
                    // blocks past its previous point's end, but takes zeros there as
                    // unchanged).
                    let heir = stay.iter().find(|q| q.0 > p).copied();
                    let next_row = rows.get(i + 1).filter(|r| r.0 == b).map(|r| r.1);
                    match heir {
                        Some((n, blocks))
                            if next_row.is_none_or(|q| q > n)
                                && ((b as u64) < blocks || blk == ZERO_BLOCK) =>
                        {
                            Fate::Move(n)
                        }
                        _ => Fate::Drop,
                    }
                };
                visit(dev, b, p, blk, fate)?;
            }
            lo = hi;
        }
    }
    Ok(())
}

/// Removes the points' map rows (moving the ones later points inherit), their devices
/// and the points themselves.
fn remove_points(tx: &Connection, chosen: &BTreeSet<i64>, block_size: u64) -> rusqlite::Result<()> {
    if chosen.is_empty() {
        return Ok(());
    }
    let mut del =
        tx.prepare("DELETE FROM block_map WHERE device = ?1 AND block_no = ?2 AND point = ?3")?;
    let mut ins = tx
        .prepare("INSERT INTO block_map(device, block_no, point, block) VALUES (?1, ?2, ?3, ?4)")?;
    walk_rows(tx, chosen, block_size, false, |dev, b, p, blk, fate| {
        if fate != Fate::Keep {
            del.execute(params![dev, b, p])?;
        }
        if let Fate::Move(n) = fate {
            ins.execute(params![dev, b, n, blk])?;
        }
        Ok(())
    })?;
    for p in chosen {
        tx.execute("DELETE FROM unreadable WHERE point = ?1", [p])?;
        tx.execute("DELETE FROM point_devices WHERE point = ?1", [p])?;
        tx.execute("DELETE FROM points WHERE id = ?1", [p])?;
    }
    Ok(())
}

/// The stored blocks' ids in order, with a mark per block: which ones some map row
/// still names.
struct Marks {
    ids: Vec<i64>,
    used: Vec<u64>,
}

impl Marks {
    fn load(conn: &Connection) -> rusqlite::Result<Marks> {
        let mut st = conn.prepare("SELECT id FROM blocks ORDER BY id")?;
        let ids: Vec<i64> = st.query_map([], |r| r.get(0))?.collect::<Result<_, _>>()?;
        let used = vec![0u64; ids.len().div_ceil(64)];
        Ok(Marks { ids, used })
    }

    fn mark(&mut self, block: i64) {
        if block == ZERO_BLOCK {
            return;
        }
        if let Ok(i) = self.ids.binary_search(&block) {
            self.used[i / 64] |= 1 << (i % 64);
        }
    }

    /// Ids of the blocks nobody marked, in order.
    fn unused(&self) -> impl Iterator<Item = i64> + '_ {
        self.ids
            .iter()
            .enumerate()
            .filter(|(i, _)| self.used[i / 64] & (1 << (i % 64)) == 0)
            .map(|(_, &id)| id)
    }
}

/// What forgetting `chosen` would free, computed read-only: (blocks, record bytes).
fn estimate(
    conn: &Connection,
    chosen: &BTreeSet<i64>,
    block_size: u64,
) -> rusqlite::Result<(u64, u64)> {
    let mut marks = Marks::load(conn)?;
    walk_rows(conn, chosen, block_size, true, |_, _, _, blk, fate| {
        if fate != Fate::Drop {
            marks.mark(blk);
        }
        Ok(())
    })?;
    let mut st = conn.prepare_cached("SELECT stored_len FROM blocks WHERE id = ?1")?;
    let (mut blocks, mut bytes) = (0u64, 0u64);
    for id in marks.unused() {
        let len: i64 = st.query_row([id], |r| r.get(0))?;
        blocks += 1;
        bytes += RECORD_HEADER_LEN as u64 + len.max(0) as u64;
    }
    Ok((blocks, bytes))
}

/// Deletes every stored block no map row names (a forgotten point's, or one an
/// interrupted backup stored), queues their packs for [`reclaim`], and raises the
/// block id high mark so no id is handed out twice. Returns (blocks, record bytes).
fn drop_unused_blocks(tx: &Connection) -> anyhow::Result<(u64, u64)> {
    let mut marks = Marks::load(tx)?;
    let Some(&max_id) = marks.ids.last() else {
        return Ok((0, 0));
    };
    {
        let mut st = tx.prepare("SELECT block FROM block_map")?;
        let mut rows = st.query([])?;
        while let Some(r) = rows.next()? {
            marks.mark(r.get(0)?);
        }
    }
    let unused: Vec<i64> = marks.unused().collect();
    drop(marks);
    let mut bytes = 0u64;
    let mut packs = HashSet::new();
    {
        let mut get = tx.prepare_cached("SELECT pack, stored_len FROM blocks WHERE id = ?1")?;
        let mut del = tx.prepare_cached("DELETE FROM blocks WHERE id = ?1")?;
        for &id in &unused {
            let (pack, len): (i64, i64) = get.query_row([id], |r| Ok((r.get(0)?, r.get(1)?)))?;
            bytes += RECORD_HEADER_LEN as u64 + len.max(0) as u64;
            packs.insert(pack);
            del.execute([id])?;
        }
        let mut q = tx.prepare_cached("INSERT OR IGNORE INTO reclaim(pack) VALUES (?1)")?;
        for p in &packs {
            q.execute([p])?;
        }
    }
    raise_mark(tx, BLOCK_HIGH, max_id)?;
    Ok((unused.len() as u64, bytes))
}

/// `meta` key: the highest block id ever handed out.
pub(super) const BLOCK_HIGH: &str = "block_high";
/// `meta` key: the highest pack id ever handed out.
pub(super) const PACK_HIGH: &str = "pack_high";

/// The id a new row of `table` (`blocks` or `packs`) gets: past both the table's
/// highest and its high mark `key`, so an id `forget` freed is never handed out again.
pub(super) fn next_id(conn: &Connection, table: &str, key: &str) -> rusqlite::Result<i64> {
    let max: i64 = conn.query_row(
        &format!("SELECT COALESCE(MAX(id), 0) FROM {table}"),
        [],
        |r| r.get(0),
    )?;
    Ok(max.max(mark(conn, key)?) + 1)
}

/// The high mark `key` (0 when never set).
pub(super) fn mark(conn: &Connection, key: &str) -> rusqlite::Result<i64> {
    Ok(conn
        .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| {
            r.get::<_, String>(0)
        })
        .optional()?
        .and_then(|v| v.parse().ok())
        .unwrap_or(0))
}

fn raise_mark(conn: &Connection, key: &str, to: i64) -> rusqlite::Result<()> {
    if to > mark(conn, key)? {
        conn.execute(
            "INSERT OR REPLACE INTO meta(key, value) VALUES (?1, ?2)",
            params![key, to.to_string()],
        )?;
    }
    Ok(())
}

/// What [`reclaim`] gave back.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Reclaimed {
    /// Packs removed whole: nothing in them was used any more.
    pub removed: u64,
    /// Packs rewritten without their unused records (see [`COMPACT_SHARE`]).
    pub compacted: u64,
    /// Unused bytes left allocated: the filesystem cannot punch holes and too little
    /// of their pack is unused to rewrite it (or the rewrite failed).
    pub unpunched: u64,
}

/// A pack whose unused bytes the filesystem cannot punch out (exFAT, ntfs-3g, NFSv3,
/// ramfs) is rewritten once they make up 1/`COMPACT_SHARE` of it: such a safe then
/// keeps at most about a tenth of each pack unused, and no pack (up to 1 GiB) is copied
/// to free a few records.
const COMPACT_SHARE: u64 = 10;

/// A record a queued pack still holds.
struct LiveRecord {
    id: i64,
    start: u64,
    end: u64,
    hash: Vec<u8>,
}

/// Gives queued packs' unused bytes back: a pack nothing uses is removed, others get
/// holes punched between their live records, or, where the filesystem cannot punch
/// holes, are rewritten without the unused ones when enough of them is unused.
/// Idempotent, so `recover` can finish what an interrupted `forget` left.
pub(super) fn reclaim(conn: &Connection, dir: &Path) -> anyhow::Result<Reclaimed> {
    let queued: Vec<i64> = {
        let mut st = conn.prepare("SELECT pack FROM reclaim ORDER BY pack")?;
        let v = st.query_map([], |r| r.get(0))?.collect::<Result<_, _>>()?;
        v
    };
    let mut done = Reclaimed::default();
    if queued.is_empty() {
        return Ok(done);
    }
    let want: HashSet<i64> = queued.iter().copied().collect();
    let mut live: HashMap<i64, Vec<LiveRecord>> = HashMap::new();
    {
        let mut st = conn.prepare("SELECT pack, offset, stored_len, id, hash FROM blocks")?;
        let mut rows = st.query([])?;
        while let Some(r) = rows.next()? {
            let pack: i64 = r.get(0)?;
            if want.contains(&pack) {
                let start = r.get::<_, i64>(1)?.max(0) as u64;
                let len = RECORD_HEADER_LEN as u64 + r.get::<_, i64>(2)?.max(0) as u64;
                live.entry(pack).or_default().push(LiveRecord {
                    id: r.get(3)?,
                    start,
                    end: start + len,
                    hash: r.get(4)?,
                });
            }
        }
    }
    for pack in queued {
        let committed: Option<i64> = conn
            .query_row(
                "SELECT committed_len FROM packs WHERE id = ?1",
                [pack],
                |r| r.get(0),
            )
            .optional()?;
        let path = format::pack_path(dir, pack);
        match (committed, live.remove(&pack)) {
            (None, _) => {}
            (Some(_), None) => {
                // Out of the index first: a crash before the unlink leaves a file
                // `recover` removes, never an index naming a missing pack.
                let tx = conn.unchecked_transaction()?;
                raise_mark(&tx, PACK_HIGH, pack)?;
                tx.execute("DELETE FROM packs WHERE id = ?1", [pack])?;
                tx.execute("DELETE FROM reclaim WHERE pack = ?1", [pack])?;
                tx.commit()?;
                match fs::remove_file(&path) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => {
                        return Err(anyhow::Error::from(e)
                            .context(format!("removing unused pack {}", path.display())))
                    }
                    _ => {}
                }
                done.removed += 1;
                continue;
            }
            (Some(end), Some(mut records)) => {
                records.sort_unstable_by_key(|r| r.start);
                let spans: Vec<(u64, u64)> = records.iter().map(|r| (r.start, r.end)).collect();
                let end = end.max(0) as u64;
                let unpunched = punch_gaps(&path, &spans, end)?;
                if unpunched > 0 && unpunched * COMPACT_SHARE >= end {
                    match compact(conn, dir, pack, &records) {
                        Ok(()) => {
                            done.compacted += 1;
                            continue;
                        }
                        Err(e) => {
                            // Not queued again: a damaged record would fail every
                            // retry. The next forget freeing records here retries.
                            tracing::warn!(
                                "could not rewrite pack {pack} without its {unpunched} unused bytes: {e:#}"
                            );
                            done.unpunched += unpunched;
                        }
                    }
                } else if unpunched > 0 {
                    tracing::info!(
                        "pack {pack}: the filesystem cannot punch holes; {unpunched} unused bytes stay allocated until a tenth of the pack is unused"
                    );
                    done.unpunched += unpunched;
                }
            }
        }
        conn.execute("DELETE FROM reclaim WHERE pack = ?1", [pack])?;
    }
    if done.removed + done.compacted > 0 {
        super::sync_dir(&dir.join("packs"))?;
    }
    Ok(done)
}

/// Longest run of back-to-back records [`compact`] copies with one read.
const COPY_RUN: u64 = 8 << 20;

/// Rewrites pack `pack`'s live `records` (in offset order), byte for byte, into a new
/// pack, points their index rows there and removes the old pack. Crash-safe like a
/// backup: the new pack is written and synced before the index names it (`recover`
/// removes an unnamed one), and the old one leaves the index before its file goes.
/// Readers holding old locations find the moved records (see `Safe::relocate`).
fn compact(conn: &Connection, dir: &Path, pack: i64, records: &[LiveRecord]) -> anyhow::Result<()> {
    let new_id = next_id(conn, "packs", PACK_HIGH)?;
    let old_path = format::pack_path(dir, pack);
    let new_path = format::pack_path(dir, new_id);
    let copied = copy_records(&old_path, &new_path, records).and_then(|moved| {
        super::sync_dir(&dir.join("packs"))?;
        let tx = conn.unchecked_transaction()?;
        tx.execute(
            "INSERT INTO packs(id, committed_len) VALUES (?1, ?2)",
            params![new_id, moved.1 as i64],
        )?;
        {
            let mut st = tx.prepare("UPDATE blocks SET pack = ?1, offset = ?2 WHERE id = ?3")?;
            for (id, at) in moved.0 {
                st.execute(params![new_id, at as i64, id])?;
            }
        }
        raise_mark(&tx, PACK_HIGH, pack)?;
        tx.execute("DELETE FROM packs WHERE id = ?1", [pack])?;
        tx.execute("DELETE FROM reclaim WHERE pack = ?1", [pack])?;
        tx.commit().context("committing to the index")?;
        Ok(())
    });
    if let Err(e) = copied {
        let _ = fs::remove_file(&new_path);
        return Err(e);
    }
    match fs::remove_file(&old_path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(anyhow::Error::from(e)
            .context(format!("removing rewritten pack {}", old_path.display()))),
        _ => {
            tracing::info!("rewrote pack {pack} as pack {new_id} without its unused records");
            Ok(())
        }
    }
}

/// Copies `records` of the pack at `from` into a new pack file at `to`, synced; each
/// record's header is checked against the index first (damage is never copied into a
/// fresh-looking pack). Returns each block's new offset and the new pack's length.
fn copy_records(
    from: &Path,
    to: &Path,
    records: &[LiveRecord],
) -> anyhow::Result<(Vec<(i64, u64)>, u64)> {
    use std::io::Write;
    let src = fs::File::open(from).with_context(|| format!("opening {}", from.display()))?;
    let out = OpenOptions::new()
        .create_new(true)
        .write(true)
        .open(to)
        .with_context(|| format!("creating pack file {}", to.display()))?;
    let mut w = io::BufWriter::with_capacity(1 << 20, out);
    let werr = |e: io::Error| anyhow::Error::from(e).context(format!("writing {}", to.display()));
    w.write_all(format::PACK_MAGIC).map_err(werr)?;
    let mut at = format::PACK_MAGIC.len() as u64;
    let mut moved = Vec::with_capacity(records.len());
    let mut buf = Vec::new();
    let mut i = 0;
    while i < records.len() {
        let first = records[i].start;
        let mut j = i + 1;
        while j < records.len()
            && records[j].start == records[j - 1].end
            && records[j].end - first <= COPY_RUN
        {
            j += 1;
        }
        buf.resize((records[j - 1].end - first) as usize, 0);
        crate::safe_reader::read_full(&src, &mut buf, first)
            .with_context(|| format!("reading {} at offset {first}", from.display()))?;
        for r in &records[i..j] {
            let rec = &buf[(r.start - first) as usize..(r.end - first) as usize];
            let ok = format::RecordHeader::decode(rec).is_ok_and(|h| {
                RECORD_HEADER_LEN as u64 + h.stored_len as u64 == r.end - r.start
                    && h.hash[..] == r.hash[..]
            });
            if !ok {
                bail!(
                    "the record of block {} at offset {} of {} disagrees with the index (`disksafe verify` lists the damage)",
                    r.id,
                    r.start,
                    from.display()
                );
            }
            w.write_all(rec).map_err(werr)?;
            moved.push((r.id, at));
            at += rec.len() as u64;
        }
        i = j;
    }
    let file = w.into_inner().map_err(|e| werr(e.into_error()))?;
    file.sync_all().map_err(werr)?;
    Ok((moved, at))
}

/// Punches holes over every byte of a pack between its header, its live records and
/// its committed end. Returns the bytes left allocated where punching is unsupported.
fn punch_gaps(path: &Path, records: &[(u64, u64)], end: u64) -> anyhow::Result<u64> {
    let file = match OpenOptions::new().write(true).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => {
            return Err(anyhow::Error::from(e).context(format!("opening pack {}", path.display())))
        }
    };
    let mut gaps = Vec::new();
    let mut at = format::PACK_MAGIC.len() as u64;
    for &(start, stop) in records {
        if start > at {
            gaps.push((at, start));
        }
        at = at.max(stop);
    }
    if end > at {
        gaps.push((at, end));
    }
    let mut unpunched = 0;
    for (start, stop) in gaps {
        let rc = unsafe {
            libc::fallocate(
                file.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                start as libc::off_t,
                (stop - start) as libc::off_t,
            )
        };
        if rc != 0 {
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EOPNOTSUPP | libc::ENOSYS) => unpunched += stop - start,
                _ => {
                    return Err(anyhow::Error::from(e)
                        .context(format!("freeing space in pack {}", path.display())))
                }
            }
        }
    }
    file.sync_all()
        .with_context(|| format!("syncing pack {}", path.display()))?;
    Ok(unpunched)
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: i64 = 3600;
    const D: i64 = 86_400;

    fn kept(points: &[(i64, i64)], policy: Policy) -> Vec<i64> {
        plan(points, &policy)
            .into_iter()
            .filter(|(_, why)| !why.is_empty())
            .map(|(id, _)| id)
            .collect()
    }

    #[test]
    fn keep_last_keeps_the_newest() {
        let pts: Vec<(i64, i64)> = (1..=10).map(|i| (i, i * H)).collect();
        let p = Policy {
            last: 3,
            ..Default::default()
        };
        assert_eq!(kept(&pts, p), vec![8, 9, 10]);
        assert!(Policy::default().is_empty());
    }

    #[test]
    fn daily_keeps_each_days_newest() {
        // Four points a day over five days, six hours apart (2026-11-01 = day 20758).
        let day0 = 20_758 * D;
        let pts: Vec<(i64, i64)> = (0..20).map(|i| (i + 1, day0 + i * 6 * H)).collect();
        let p = Policy {
            daily: 3,
            ..Default::default()
        };
        // Days 4, 3, 2: their last points are 20, 16, 12.
        assert_eq!(kept(&pts, p), vec![12, 16, 20]);
    }

    #[test]
    fn weeks_start_on_monday_and_months_on_the_first() {
        // 2026-11-29 is a Sunday, 2026-11-30 a Monday; 2026-12-01 starts a month.
        let sun = 20_786 * D;
        assert_eq!(format::utc_string(sun), "2026-11-29T00:00:00Z");
        let pts = [
            (1, sun + 10 * H),
            (2, sun + 20 * H),
            (3, sun + D + H),
            (4, sun + 2 * D + H),
        ];
        let weekly = Policy {
            weekly: 5,
            ..Default::default()
        };
        assert_eq!(kept(&pts, weekly), vec![2, 4]);
        let monthly = Policy {
            monthly: 5,
            ..Default::default()
        };
        assert_eq!(kept(&pts, monthly), vec![3, 4]);
        let yearly = Policy {
            yearly: 1,
            ..Default::default()
        };
        assert_eq!(kept(&pts, yearly), vec![4]);
    }

    #[test]
    fn rules_add_up() {
        // Hours 0..47: points 1–24 on day 0, 25–48 on day 1.
        let pts: Vec<(i64, i64)> = (1..=48).map(|i| (i, (i - 1) * H)).collect();
        let p = Policy {
            last: 2,
            daily: 2,
            ..Default::default()
        };
        assert_eq!(kept(&pts, p), vec![24, 47, 48]);
        let why = plan(&pts, &p);
        assert_eq!(why[47].1, vec!["last", "daily"]);
        assert_eq!(why[23].1, vec!["daily"]);
        assert!(why[0].1.is_empty());
    }
}
