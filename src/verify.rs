//! `disksafe verify`: reads every stored block and every index entry, and names each
//! damaged (point, device, byte range).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io::Read;
use std::path::Path;

use rayon::prelude::*;
use rusqlite::OptionalExtension;

use crate::format::{self, ZERO_BLOCK};
use crate::safe_reader::{BlockLoc, Safe};

/// (start, end, reason) of a damaged stretch before merging.
type Span = (u64, u64, String);

/// One damaged stretch of one device at one point.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    /// Point id.
    pub point: i64,
    /// Device name.
    pub device: String,
    /// First damaged byte.
    pub start: u64,
    /// One past the last damaged byte.
    pub end: u64,
    /// Why (the first reason met in the range).
    pub reason: String,
}

/// What verify found.
#[derive(Debug, Default)]
pub struct Report {
    /// Stored blocks read and checked.
    pub blocks_checked: u64,
    /// Block map entries checked.
    pub map_entries: u64,
    /// Damage that hits points, merged into ranges.
    pub damage: Vec<Damage>,
    /// Problems not tied to a device range (index corruption, bad pack headers, ...).
    pub problems: Vec<String>,
}

impl Report {
    /// True when nothing is damaged.
    pub fn intact(&self) -> bool {
        self.damage.is_empty() && self.problems.is_empty()
    }
}

/// Checks the whole safe; never writes to it.
pub fn verify(dir: &Path) -> anyhow::Result<Report> {
    verify_points(dir, &[])
}

/// Checks what the given points need (every point when `points` is empty): the index,
/// the packs' headers, and each stored block those points read, once; damage is
/// named for those points only. Never writes to the safe.
pub fn verify_points(dir: &Path, points: &[String]) -> anyhow::Result<Report> {
    let safe = Safe::open(dir)?;
    let chosen: Option<HashSet<i64>> = if points.is_empty() {
        None
    } else {
        let mut ids = HashSet::new();
        for p in points {
            ids.insert(safe.point(p)?.id);
        }
        Some(ids)
    };
    let mut report = Report::default();
    let bs = safe.params().block_size as u64;

    let qc: String = safe.with_conn(|c| c.query_row("PRAGMA quick_check", [], |r| r.get(0)))?;
    if qc != "ok" {
        report.problems.push(format!("index: {qc}"));
    }

    // Pack headers and committed lengths.
    let packs: HashMap<i64, u64> = safe.with_conn(|c| {
        let mut st = c.prepare("SELECT id, committed_len FROM packs")?;
        let v = st
            .query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))?
            .collect::<Result<_, _>>()?;
        Ok(v)
    })?;
    for (&id, &len) in &packs {
        let path = format::pack_path(dir, id);
        let res = (|| -> std::io::Result<Option<String>> {
            let mut f = File::open(&path)?;
            let actual = f.metadata()?.len();
            let mut magic = [0u8; 16];
            if actual < 16 {
                return Ok(Some("shorter than its header".into()));
            }
            f.read_exact(&mut magic)?;
            if &magic != format::PACK_MAGIC {
                return Ok(Some("bad pack magic".into()));
            }
            if actual < len {
                return Ok(Some(format!("{actual} bytes, but {len} were committed")));
            }
            Ok(None)
        })();
        match res {
            Ok(None) => {}
            Ok(Some(p)) => report
                .problems
                .push(format!("pack {}: {p}", path.display())),
            Err(e) => report
                .problems
                .push(format!("pack {}: {e}", path.display())),
        }
    }

    let points = safe.points()?;
    let mut damaged = match &chosen {
        None => check_all(&safe, &packs, &mut report)?,
        Some(ids) => {
            let pts: Vec<_> = points.iter().filter(|p| ids.contains(&p.id)).collect();
            check_points(&safe, &packs, &pts, bs, &mut report)?
        }
    };

    // Every map entry: names an existing block; and damaged blocks mapped to ranges.
    let sizes: HashMap<(i64, i64), u64> = points
        .iter()
        .flat_map(|p| p.devices.iter().map(move |d| ((p.id, d.id), d.size)))
        .collect();
    let names: HashMap<i64, String> = points
        .iter()
        .flat_map(|p| p.devices.iter().map(|d| (d.id, d.name.clone())))
        .collect();
    // Damage is named for the points checked (every complete one by default).
    let complete: HashSet<i64> = chosen
        .clone()
        .unwrap_or_else(|| points.iter().map(|p| p.id).collect());
    let by_device: HashMap<i64, Vec<i64>> = {
        let mut m: HashMap<i64, Vec<i64>> = HashMap::new();
        for p in &points {
            for d in &p.devices {
                m.entry(d.id).or_default().push(p.id);
            }
        }
        m
    };
    if chosen.is_none() {
        let missing: HashSet<i64> = safe.with_conn(|c| {
            let mut st = c.prepare(
                "SELECT DISTINCT m.block FROM block_map m LEFT JOIN blocks b ON b.id = m.block
                 WHERE m.block != 0 AND b.id IS NULL",
            )?;
            let v = st.query_map([], |r| r.get(0))?.collect::<Result<_, _>>()?;
            Ok(v)
        })?;
        for id in &missing {
            damaged.insert(
                *id,
                format!("the index names block {id}, which the safe does not hold"),
            );
        }
        report.map_entries = safe.with_conn(|c| {
            c.query_row("SELECT COUNT(*) FROM block_map", [], |r| r.get::<_, i64>(0))
        })? as u64;
    }

    if !damaged.is_empty() {
        // One ordered pass: a row is valid from its point until the next row of the
        // same (device, block).
        let hits: Vec<(i64, u64, i64, Option<i64>, i64)> = safe.with_conn(|c| {
            let mut st = c.prepare(
                "SELECT device, block_no, point, block,
                        LEAD(point) OVER (PARTITION BY device, block_no ORDER BY point)
                 FROM block_map",
            )?;
            let mut out = Vec::new();
            let mut rows = st.query([])?;
            while let Some(r) = rows.next()? {
                let blk: i64 = r.get(3)?;
                if blk != ZERO_BLOCK && damaged.contains_key(&blk) {
                    out.push((
                        r.get(0)?,
                        r.get::<_, i64>(1)? as u64,
                        r.get(2)?,
                        r.get(4)?,
                        blk,
                    ));
                }
            }
            Ok(out)
        })?;
        let mut ranges: BTreeMap<(i64, String), Vec<Span>> = BTreeMap::new();
        for (dev, b, from, until, blk) in hits {
            for &p in by_device.get(&dev).map(|v| v.as_slice()).unwrap_or(&[]) {
                if p < from || until.is_some_and(|u| p >= u) || !complete.contains(&p) {
                    continue;
                }
                let size = sizes.get(&(p, dev)).copied().unwrap_or(0);
                let start = b * bs;
                if start >= size {
                    continue;
                }
                let end = (start + bs).min(size);
                let name = names.get(&dev).cloned().unwrap_or_else(|| dev.to_string());
                ranges
                    .entry((p, name))
                    .or_default()
                    .push((start, end, damaged[&blk].clone()));
            }
        }
        for ((point, device), mut v) in ranges {
            v.sort();
            let mut merged: Vec<Span> = Vec::new();
            for (s, e, r) in v {
                match merged.last_mut() {
                    Some(m) if m.1 == s => m.1 = e,
                    _ => merged.push((s, e, r)),
                }
            }
            for (start, end, reason) in merged {
                report.damage.push(Damage {
                    point,
                    device: device.clone(),
                    start,
                    end,
                    reason,
                });
            }
        }
        let unreferenced = damaged.len();
        if report.damage.is_empty() {
            report.problems.push(format!(
                "{unreferenced} damaged block(s) that no complete point uses"
            ));
        }
    }
    Ok(report)
}

/// Every stored block, in id order, checked on all cores: damaged block ids and why.
fn check_all(
    safe: &Safe,
    packs: &HashMap<i64, u64>,
    report: &mut Report,
) -> anyhow::Result<HashMap<i64, String>> {
    let mut damaged: HashMap<i64, String> = HashMap::new();
    let mut last = 0i64;
    loop {
        let rows: Vec<BlockLoc> = safe.with_conn(|c| {
            let mut st = c.prepare_cached(
                "SELECT id, pack, offset, stored_len, raw_len, codec, hash, quick FROM blocks
                 WHERE id > ?1 ORDER BY id LIMIT 4096",
            )?;
            let v = st
                .query_map([last], |r| {
                    let h: Vec<u8> = r.get(6)?;
                    let mut hash = [0u8; 32];
                    if h.len() == 32 {
                        hash.copy_from_slice(&h);
                    }
                    let q: Vec<u8> = r.get(7)?;
                    let mut quick = [0u8; 16];
                    if q.len() == 16 {
                        quick.copy_from_slice(&q);
                    }
                    Ok(BlockLoc {
                        id: r.get(0)?,
                        pack: r.get(1)?,
                        offset: r.get::<_, i64>(2)? as u64,
                        stored_len: r.get::<_, i64>(3)? as u32,
                        raw_len: r.get::<_, i64>(4)? as u32,
                        codec: r.get::<_, i64>(5)? as u8,
                        hash,
                        quick,
                    })
                })?
                .collect::<Result<_, _>>()?;
            Ok(v)
        })?;
        let Some(l) = rows.last() else { break };
        last = l.id;
        report.blocks_checked += rows.len() as u64;
        damaged.extend(check_locs(safe, packs, &rows)?);
    }
    Ok(damaged)
}

/// Checks `locs` on all cores; a block found damaged is looked up again, since a
/// `forget` running meanwhile may have freed it (then it is no damage) or moved it
/// into a rewritten pack (then it is checked where it is now).
fn check_locs(
    safe: &Safe,
    packs: &HashMap<i64, u64>,
    locs: &[BlockLoc],
) -> anyhow::Result<Vec<(i64, String)>> {
    let bad: Vec<(BlockLoc, String)> = locs
        .par_iter()
        .filter_map(|loc| check(safe, loc, packs.get(&loc.pack).copied()).map(|why| (*loc, why)))
        .collect();
    let now = safe.with_conn(|c| {
        let mut st = c.prepare_cached(
            "SELECT b.pack, b.offset, p.committed_len FROM blocks b
             LEFT JOIN packs p ON p.id = b.pack WHERE b.id = ?1",
        )?;
        let mut out = Vec::with_capacity(bad.len());
        for (loc, why) in bad {
            let at = st
                .query_row([loc.id], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, Option<i64>>(2)?,
                    ))
                })
                .optional()?;
            if let Some((pack, offset, len)) = at {
                out.push((loc, why, pack, offset, len));
            }
        }
        Ok(out)
    })?;
    Ok(now
        .into_iter()
        .filter_map(|(loc, why, pack, offset, len)| {
            if pack == loc.pack && offset.max(0) as u64 == loc.offset {
                return Some((loc.id, why));
            }
            let moved = BlockLoc {
                pack,
                offset: offset.max(0) as u64,
                ..loc
            };
            check(safe, &moved, len.map(|l| l.max(0) as u64)).map(|why| (loc.id, why))
        })
        .collect())
}

/// Block map rows read per query when walking a point's devices.
const POINT_CHUNK: u64 = 65_536;

/// The stored blocks `points` read, each checked once (a bitmap of block ids keeps
/// memory at a bit per block of the safe): damaged block ids and why. A block the
/// index names but does not hold is damage too.
fn check_points(
    safe: &Safe,
    packs: &HashMap<i64, u64>,
    points: &[&crate::safe_reader::PointInfo],
    bs: u64,
    report: &mut Report,
) -> anyhow::Result<HashMap<i64, String>> {
    let max_id: i64 = safe
        .with_conn(|c| c.query_row("SELECT COALESCE(MAX(id), 0) FROM blocks", [], |r| r.get(0)))?;
    let mut seen = vec![0u64; (max_id.max(0) as usize) / 64 + 1];
    let mut damaged = HashMap::new();
    for p in points {
        for d in &p.devices {
            let blocks = d.size.div_ceil(bs);
            let mut from = 0;
            while from < blocks {
                let end = (from + POINT_CHUNK).min(blocks);
                let locs: Vec<BlockLoc> = safe
                    .block_run(d.id, p.id, from, end - from)?
                    .into_iter()
                    .flatten()
                    .filter(|l| !l.is_zero())
                    .collect();
                report.map_entries += locs.len() as u64;
                let mut todo = Vec::new();
                for loc in locs {
                    // Ids past the bitmap (blocks a backup added meanwhile) are checked
                    // each time met.
                    let i = loc.id.max(0) as usize;
                    if let Some(word) = seen.get_mut(i / 64) {
                        if *word & (1 << (i % 64)) != 0 {
                            continue;
                        }
                        *word |= 1 << (i % 64);
                    }
                    if loc.is_missing() {
                        damaged.insert(
                            loc.id,
                            format!(
                                "the index names block {}, which the safe does not hold",
                                loc.id
                            ),
                        );
                    } else {
                        todo.push(loc);
                    }
                }
                // In pack order: each pack read front to back.
                todo.sort_unstable_by_key(|l| (l.pack, l.offset));
                report.blocks_checked += todo.len() as u64;
                damaged.extend(check_locs(safe, packs, &todo)?);
                from = end;
            }
        }
    }
    Ok(damaged)
}

/// Prints one line per problem and per damaged range, for the `verify` command.
pub fn print(report: &Report) {
    for p in &report.problems {
        println!("problem: {p}");
    }
    for d in &report.damage {
        println!(
            "damaged: point {} device {} bytes {}-{} ({})",
            d.point, d.device, d.start, d.end, d.reason
        );
    }
}

/// Checks one stored block where `loc` says it is, against its pack's committed length
/// (`None`: the pack is not in the index); returns what is wrong with it.
fn check(safe: &Safe, loc: &BlockLoc, pack_len: Option<u64>) -> Option<String> {
    let end = loc.offset + (format::RECORD_HEADER_LEN as u64) + loc.stored_len as u64;
    match pack_len {
        None => return Some(format!("pack {} is not in the index", loc.pack)),
        Some(len) if end > len => {
            return Some(format!("lies past the committed end of pack {}", loc.pack))
        }
        _ => {}
    }
    match safe.load_block(loc) {
        Err(e) => Some(e.to_string()),
        // Reads check the quick hash; the content address too here.
        Ok(b) if blake3::hash(&b).as_bytes() != &loc.hash => {
            Some("content hash mismatch (blake3)".into())
        }
        Ok(_) => None,
    }
}
