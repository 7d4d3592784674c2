//! `disksafe forget`: removing points keeps every other point byte-exact (checked
//! against the source images saved at each backup), frees the space only the removed
//! points used, survives SIGKILL, and never lets a mount serve a removed point's
//! blocks as another point's.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::OpenOptions;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use disksafe::format;
use rand::{rngs::StdRng, seq::SliceRandom, Rng, SeedableRng};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Point ids as `points --json` lists them.
fn listed(safe: &Path) -> Vec<i64> {
    let v: serde_json::Value = serde_json::from_str(&ok(&["points", s(safe), "--json"])).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_i64().unwrap())
        .collect()
}

/// Bytes the pack files occupy on disk (holes cost nothing).
fn pack_allocated(safe: &Path) -> u64 {
    std::fs::read_dir(safe.join("packs"))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().blocks() * 512)
        .sum()
}

fn db(safe: &Path) -> rusqlite::Connection {
    rusqlite::Connection::open_with_flags(
        safe.join("safe.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap()
}

/// (records, their bytes) of the blocks the index holds.
fn live_records(safe: &Path) -> (u64, u64) {
    db(safe)
        .query_row(
            "SELECT COUNT(*), COALESCE(SUM(48 + stored_len), 0) FROM blocks",
            [],
            |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64)),
        )
        .unwrap()
}

/// The ids of the stored blocks.
fn block_ids(safe: &Path) -> BTreeSet<i64> {
    ids(safe, "blocks")
}

/// The ids in the index's `table`.
fn ids(safe: &Path, table: &str) -> BTreeSet<i64> {
    let c = db(safe);
    let mut st = c.prepare(&format!("SELECT id FROM {table}")).unwrap();
    let v = st
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(|r| r.unwrap())
        .collect();
    v
}

/// Pack ids of the files in `packs/`.
fn pack_files(safe: &Path) -> BTreeSet<i64> {
    std::fs::read_dir(safe.join("packs"))
        .unwrap()
        .map(|e| {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            name.strip_suffix(".pack").unwrap().parse().unwrap()
        })
        .collect()
}

/// Pack ids the index names.
fn indexed_packs(safe: &Path) -> BTreeSet<i64> {
    ids(safe, "packs")
}

/// A ramfs mounted for one test: a filesystem that cannot punch holes (like exFAT,
/// ntfs-3g or NFSv3, where safes on backup drives live), so `forget` must rewrite
/// packs to give space back. Needs root; `None` (with a SKIP line) without it.
struct RamFs {
    dir: tempfile::TempDir,
}

impl RamFs {
    fn new(test: &str) -> Option<RamFs> {
        if !is_root() {
            eprintln!("SKIP {test}: mounting a ramfs needs root");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let st = Command::new("mount")
            .args(["-t", "ramfs", "ramfs"])
            .arg(dir.path())
            .status()
            .unwrap();
        if !st.success() {
            eprintln!("SKIP {test}: this kernel cannot mount a ramfs");
            return None;
        }
        let probe = dir.path().join("probe");
        std::fs::write(&probe, vec![1u8; 1 << 16]).unwrap();
        let f = OpenOptions::new().write(true).open(&probe).unwrap();
        let rc = unsafe {
            libc::fallocate(
                std::os::fd::AsRawFd::as_raw_fd(&f),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                0,
                4096,
            )
        };
        assert_ne!(
            rc, 0,
            "ramfs punched a hole: it no longer stands for a filesystem that cannot"
        );
        drop(f);
        std::fs::remove_file(&probe).unwrap();
        Some(RamFs { dir })
    }
}

impl std::ops::Deref for RamFs {
    type Target = Path;
    fn deref(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for RamFs {
    fn drop(&mut self) {
        // A mount server just told to unmount may still hold the safe's files open.
        for _ in 0..50 {
            let st = Command::new("umount")
                .arg(self.dir.path())
                .stderr(Stdio::null())
                .status();
            if st.is_ok_and(|s| s.success()) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// Every expected (point, device) → sha256 restores exactly; every other point is gone.
fn check_points(safe: &Path, expect: &BTreeMap<i64, Vec<(String, String)>>, dir: &Path) {
    assert_eq!(
        listed(safe),
        expect.keys().copied().collect::<Vec<_>>(),
        "points listed"
    );
    for (p, devs) in expect {
        for (name, sha) in devs {
            assert_eq!(
                &restored_sha(safe, &p.to_string(), name, dir),
                sha,
                "{name} at point {p}"
            );
        }
    }
    let v = ok(&["verify", s(safe)]);
    assert!(v.starts_with("ok:"), "{v}");
}

/// A history of 16 points of two devices (the second missing from some points, the
/// first growing and shrinking) is thinned in rounds: single ids, a range, `latest`
/// and a policy, with backups in between. After each round every remaining point
/// restores as its source was; the space freed shows in the packs; in the end the
/// safe holds exactly the blocks a fresh safe of the last point holds.
#[test]
fn forgetting_points_keeps_every_other_point_byte_exact() {
    let t = tempfile::tempdir().unwrap();
    let safe = t.path().join("safe");
    let (a, b) = (t.path().join("a.img"), t.path().join("b.img"));
    let mut rng = StdRng::seed_from_u64(41);
    make_image(&a, 6 << 20, &mut rng);
    make_image(&b, 3 << 20, &mut rng);
    let mut expect: BTreeMap<i64, Vec<(String, String)>> = BTreeMap::new();
    let take = |rng: &mut StdRng, expect: &mut BTreeMap<i64, Vec<(String, String)>>, i: u32| {
        mutate(&a, rng.gen_range(1..12), 400_000, rng);
        mutate(&b, rng.gen_range(0..4), 90_000, rng);
        if i % 5 == 2 {
            let f = OpenOptions::new().write(true).open(&a).unwrap();
            let len = f.metadata().unwrap().len();
            f.set_len(len + 987_654).unwrap();
            f.write_all_at(b"grown", len + 500_000).unwrap();
        }
        if i % 5 == 4 {
            let f = OpenOptions::new().write(true).open(&a).unwrap();
            f.set_len((5 << 20) - 12_345).unwrap();
        }
        let mut args = vec![s(&safe).to_string(), format!("a={}", s(&a))];
        let mut devs = vec![("a".to_string(), sha256_file(&a))];
        // b is left out of every third point: its rows must pass over those points.
        if i % 3 != 1 {
            args.push(format!("b={}", s(&b)));
            devs.push(("b".to_string(), sha256_file(&b)));
        }
        let args: Vec<&str> = args.iter().map(|x| x.as_str()).collect();
        let p = backup(&args);
        expect.insert(p, devs);
        p
    };
    for i in 0..16 {
        take(&mut rng, &mut expect, i);
    }
    check_points(&safe, &expect, t.path());
    let allocated_before = pack_allocated(&safe);
    // Every block id handed out so far; forgotten points free some of them.
    let mut ever: BTreeSet<i64> = block_ids(&safe);

    // Round 1: three single points, one of them the first.
    let ids: Vec<i64> = expect.keys().copied().collect();
    let mut pick: Vec<i64> = vec![ids[0]];
    pick.extend(ids[1..15].choose_multiple(&mut rng, 2));
    let args: Vec<String> = pick.iter().map(|p| p.to_string()).collect();
    let mut cmd = vec!["forget", s(&safe)];
    cmd.extend(args.iter().map(|x| x.as_str()));
    ok(&cmd);
    for p in &pick {
        expect.remove(p);
    }
    check_points(&safe, &expect, t.path());
    assert!(pack_allocated(&safe) < allocated_before, "space was freed");
    for p in &pick {
        let err = fails(&["restore", s(&safe), &p.to_string(), "a", "-"]);
        assert!(err.contains(&format!("no recovery point {p}")), "{err}");
    }

    // Round 2: two new points, then a range across old and new ones.
    for i in 16..18 {
        take(&mut rng, &mut expect, i);
    }
    ever.extend(block_ids(&safe));
    let ids: Vec<i64> = expect.keys().copied().collect();
    let (lo, hi) = (ids[4], ids[ids.len() - 2]);
    ok(&[
        "forget",
        s(&safe),
        &format!("{}-{}", ids[4], ids[ids.len() - 2]),
    ]);
    expect.retain(|p, _| *p < lo || *p > hi);
    check_points(&safe, &expect, t.path());

    // Round 3: `latest`, and a backup after it (its previous point is older now).
    ok(&["forget", s(&safe), "latest"]);
    let newest = *expect.keys().last().unwrap();
    expect.remove(&newest);
    check_points(&safe, &expect, t.path());
    let before: BTreeSet<i64> = block_ids(&safe);
    let p = take(&mut rng, &mut expect, 18);
    assert!(p > newest, "point ids are never reused");
    let added: BTreeSet<i64> = block_ids(&safe).difference(&before).copied().collect();
    assert!(!added.is_empty(), "the new point stored blocks");
    assert!(
        added.is_disjoint(&ever),
        "a freed block id was handed out again: {:?}",
        added.intersection(&ever).collect::<Vec<_>>()
    );
    check_points(&safe, &expect, t.path());

    // `points` ends with what the safe occupies, which `du` agrees with (to the
    // directories' own blocks and the rounding of its unit) and a forget shrinks.
    let occupied = |safe: &Path| -> f64 {
        let table = ok(&["points", s(safe)]);
        let last = table.lines().last().unwrap().to_string();
        let figure = last
            .split("occupies ")
            .nth(1)
            .and_then(|r| r.strip_suffix(" on disk"))
            .unwrap_or_else(|| panic!("footer: {last}"));
        let (v, unit) = figure.split_once(' ').unwrap();
        let scale = match unit {
            "B" => 1.0,
            "KiB" => 1024.0,
            "MiB" => 1048576.0,
            "GiB" => 1073741824.0,
            u => panic!("unit {u}"),
        };
        v.parse::<f64>().unwrap() * scale
    };
    let du = |safe: &Path| -> f64 {
        let o = std::process::Command::new("du")
            .args(["-s", "--block-size=1", s(safe)])
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout)
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    let before_last = occupied(&safe);
    let d = du(&safe);
    assert!(
        (before_last - d).abs() <= d * 0.06 + 16384.0,
        "points says {before_last}, du {d}"
    );

    // Round 4: a policy keeping only the newest point.
    let out = ok(&["forget", s(&safe), "--keep-last", "1"]);
    let newest = *expect.keys().last().unwrap();
    expect.retain(|p, _| *p == newest);
    assert!(
        out.lines().any(|l| l.starts_with("keep")
            && l.contains(&newest.to_string())
            && l.ends_with("last")),
        "{out}"
    );
    check_points(&safe, &expect, t.path());
    assert!(
        occupied(&safe) < before_last,
        "the footer shows the space freed"
    );

    // The safe now holds exactly the blocks of the last point: the same records as a
    // fresh safe of the same images, and on disk little more than those records.
    let fresh = t.path().join("fresh");
    let mut args = vec![s(&fresh).to_string(), format!("a={}", s(&a))];
    if expect[&newest].len() == 2 {
        args.push(format!("b={}", s(&b)));
    }
    let args: Vec<&str> = args.iter().map(|x| x.as_str()).collect();
    backup(&args);
    let (records, live) = live_records(&safe);
    assert_eq!(
        (records, live),
        live_records(&fresh),
        "same unique blocks as a fresh safe"
    );
    let packs = std::fs::read_dir(safe.join("packs")).unwrap().count() as u64;
    let allocated = pack_allocated(&safe);
    assert!(
        allocated <= live + (2 * records + packs) * 4096,
        "packs occupy {allocated} bytes for {live} bytes of {records} live records"
    );
    let fresh_points: Vec<i64> = listed(&fresh);
    assert_eq!(fresh_points.len(), 1);
}

/// A `forget` killed at random moments leaves the safe verifiable, with either all the
/// chosen points or none of them gone, and every remaining point byte-exact; the next
/// `forget` or `backup` finishes freeing what it left.
#[test]
fn killed_forget_leaves_the_safe_whole() {
    let t = tempfile::tempdir().unwrap();
    killed_forgets(&t.path().join("safe"), t.path(), 42);
}

/// The same where the filesystem cannot punch holes, so the forgets rewrite packs: a
/// kill between writing a new pack and the commit naming it, or between that commit
/// and removing the old pack, leaves a file the next writer removes.
#[test]
fn killed_forget_that_rewrites_packs_leaves_the_safe_whole() {
    let Some(rf) = RamFs::new("killed_forget_that_rewrites_packs_leaves_the_safe_whole") else {
        return;
    };
    let t = tempfile::tempdir().unwrap();
    killed_forgets(&rf.join("safe"), t.path(), 43);
}

/// Six `forget` runs over a 14-point safe at `safe`, each SIGKILLed at a random moment;
/// scratch files go in `dir`.
fn killed_forgets(safe: &Path, dir: &Path, seed: u64) {
    let safe = safe.to_path_buf();
    let a = dir.join("a.img");
    let mut rng = StdRng::seed_from_u64(seed);
    make_image(&a, 48 << 20, &mut rng);
    let mut expect: BTreeMap<i64, String> = BTreeMap::new();
    for _ in 0..14 {
        mutate(&a, 40, 1 << 20, &mut rng);
        // 4 KiB blocks: enough map rows and blocks that a forget takes tens of
        // milliseconds here, so the kills below land inside it.
        let p = backup(&[
            s(&safe),
            "--compression",
            "0",
            "--block-size",
            "4K",
            &format!("a={}", s(&a)),
        ]);
        expect.insert(p, sha256_file(&a));
    }
    let (mut interrupted, mut committed_then_killed) = (0, 0);
    for round in 0..6 {
        let ids: Vec<i64> = expect.keys().copied().collect();
        let chosen: Vec<i64> = ids[..ids.len() - 1]
            .choose_multiple(&mut rng, 2)
            .copied()
            .collect();
        let mut child = Command::new(bin())
            .arg("forget")
            .arg(&safe)
            .args(chosen.iter().map(|p| p.to_string()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_micros(rng.gen_range(1_000..90_000)));
        child.kill().unwrap(); // SIGKILL
        let status = child.wait().unwrap();
        let now: BTreeSet<i64> = listed(&safe).into_iter().collect();
        let before: BTreeSet<i64> = ids.iter().copied().collect();
        let after: BTreeSet<i64> = before
            .iter()
            .copied()
            .filter(|p| !chosen.contains(p))
            .collect();
        assert!(
            now == before || now == after,
            "round {round}: all or none of {chosen:?} forgotten, got {now:?}"
        );
        if !status.success() {
            interrupted += 1;
            if now == after {
                committed_then_killed += 1;
            }
        }
        let v = ds(&["verify", s(&safe)]);
        assert!(
            v.status.success(),
            "round {round}: safe not verifiable after SIGKILL: {}",
            String::from_utf8_lossy(&v.stdout)
        );
        expect.retain(|p, _| now.contains(p));
        for (p, want) in &expect {
            assert_eq!(&restored_sha(&safe, &p.to_string(), "a", dir), want);
        }
    }
    // A run to the end frees what the killed ones left queued.
    mutate(&a, 5, 1 << 20, &mut rng);
    let p = backup(&[s(&safe), &format!("a={}", s(&a))]);
    expect.insert(p, sha256_file(&a));
    let queued: i64 = db(&safe)
        .query_row("SELECT COUNT(*) FROM reclaim", [], |r| r.get(0))
        .unwrap_or(0);
    assert_eq!(queued, 0, "nothing left queued for reclaiming");
    assert_eq!(
        pack_files(&safe),
        indexed_packs(&safe),
        "pack files the index does not name"
    );
    for (p, want) in &expect {
        assert_eq!(&restored_sha(&safe, &p.to_string(), "a", dir), want);
    }
    assert!(ok(&["verify", s(&safe)]).starts_with("ok:"));
    eprintln!(
        "{interrupted} of 6 forget runs were killed before they finished, {committed_then_killed} of them after their commit"
    );
    assert!(interrupted > 0, "no kill landed before a forget finished");
}

/// Retention rules decide from creation times in UTC: the kept set equals the one
/// computed here from the dates `points` prints.
#[test]
fn keep_rules_follow_the_calendar() {
    let t = tempfile::tempdir().unwrap();
    let safe = t.path().join("safe");
    let a = t.path().join("a.img");
    let mut rng = StdRng::seed_from_u64(43);
    make_image(&a, 1 << 20, &mut rng);
    let mut ids = Vec::new();
    for _ in 0..30 {
        mutate(&a, 2, 50_000, &mut rng);
        ids.push(backup(&[s(&safe), &format!("a={}", s(&a))]));
    }
    // Spread the points over ~5 months: 30 points, 1–9 days apart, some twice a day.
    {
        let c = rusqlite::Connection::open(safe.join("safe.db")).unwrap();
        let mut at = 1_780_000_000i64;
        for p in &ids {
            at += if rng.gen_bool(0.3) {
                3 * 3600
            } else {
                rng.gen_range(1..10) * 86_400
            };
            c.execute("UPDATE points SET created = ?1 WHERE id = ?2", [at, *p])
                .unwrap();
        }
    }
    let v: serde_json::Value = serde_json::from_str(&ok(&["points", s(&safe), "--json"])).unwrap();
    let dated: Vec<(i64, String)> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["id"].as_i64().unwrap(),
                p["created"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    // The newest point of each of the 4 newest days and 2 newest months, and the last 2.
    let mut want = BTreeSet::new();
    for (len, n) in [(10usize, 4usize), (7, 2)] {
        let mut seen = Vec::new();
        for (id, created) in dated.iter().rev() {
            let key = &created[..len];
            if seen.len() < n && !seen.contains(&key) {
                seen.push(key);
                want.insert(*id);
            }
        }
    }
    want.extend(dated.iter().rev().take(2).map(|(id, _)| *id));
    let rules = [
        "forget",
        s(&safe),
        "--keep-daily",
        "4",
        "--keep-monthly",
        "2",
        "--keep-last",
        "2",
    ];
    let o = ds(&[&rules[..], &["--dry-run"]].concat());
    assert!(o.status.success());
    let dry = String::from_utf8(o.stdout).unwrap();
    let blocks_in = |text: &str| -> u64 {
        let at = text.find(" block(s)").expect("a block count");
        text[..at].rsplit(' ').next().unwrap().parse().unwrap()
    };
    let would_free = blocks_in(&String::from_utf8_lossy(&o.stderr));
    let kept: BTreeSet<i64> = dry
        .lines()
        .filter(|l| l.starts_with("keep"))
        .map(|l| l.split_whitespace().nth(1).unwrap().parse().unwrap())
        .collect();
    assert_eq!(kept, want, "{dry}");
    assert_eq!(listed(&safe).len(), 30, "a dry run changes nothing");
    let (records_before, _) = live_records(&safe);
    let o = ds(&rules);
    assert!(o.status.success());
    let (records_after, _) = live_records(&safe);
    assert_eq!(
        records_before - records_after,
        would_free,
        "the dry run's estimate is what the forget freed"
    );
    assert_eq!(blocks_in(&String::from_utf8_lossy(&o.stderr)), would_free);
    assert!(would_free > 0);
    assert_eq!(listed(&safe), want.iter().copied().collect::<Vec<_>>());
    assert!(ok(&["verify", s(&safe)]).starts_with("ok:"));
}

/// Bad requests get one-line errors and change nothing; a dry run does not write.
#[test]
fn forget_bad_input_gets_one_line_errors() {
    let t = tempfile::tempdir().unwrap();
    let safe = t.path().join("safe");
    let a = t.path().join("a.img");
    let mut rng = StdRng::seed_from_u64(44);
    make_image(&a, 1 << 20, &mut rng);
    for _ in 0..3 {
        mutate(&a, 2, 50_000, &mut rng);
        backup(&[s(&safe), &format!("a={}", s(&a))]);
    }
    let db_sha = sha256_file(&safe.join("safe.db"));
    let one_line = |args: &[&str], want: &str| {
        let err = fails(args);
        assert!(err.contains(want), "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "one-line error: {err}");
    };
    let not_safe = t.path().join("nothing");
    std::fs::create_dir(&not_safe).unwrap();
    one_line(&["forget", s(&not_safe), "1"], "not a disk safe");
    assert!(!not_safe.join("safe.db").exists(), "no safe was created");
    one_line(&["forget", s(&safe), "9"], "no recovery point 9");
    one_line(&["forget", s(&safe), "x"], "invalid point");
    one_line(&["forget", s(&safe), "3-1"], "invalid point");
    one_line(&["forget", s(&safe), "7-9"], "no recovery point in 7-9");
    one_line(&["forget", s(&safe)], "nothing to forget");
    one_line(&["forget", s(&safe), "1", "--keep-last", "1"], "not both");
    one_line(
        &["forget", s(&safe), "--keep-last", "0"],
        "nothing to forget",
    );
    ok(&["forget", s(&safe), "1", "--dry-run"]);
    assert_eq!(listed(&safe), vec![1, 2, 3]);
    assert_eq!(
        sha256_file(&safe.join("safe.db")),
        db_sha,
        "nothing written"
    );
    // While a writer holds the safe's lock, forget refuses instead of waiting.
    let lock = OpenOptions::new()
        .write(true)
        .open(safe.join("lock"))
        .unwrap();
    use std::os::unix::io::AsRawFd;
    assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) }, 0);
    one_line(
        &["forget", s(&safe), "1"],
        "another backup or forget is writing",
    );
    drop(lock);
    assert_eq!(listed(&safe), vec![1, 2, 3]);
    ok(&["forget", s(&safe), "1"]);
    assert_eq!(listed(&safe), vec![2, 3]);
}

/// A point forgotten while mounted: reads of it either return its own bytes (still
/// cached) or fail with EIO naming the reason; other points read as before; the root
/// listing drops it.
#[test]
fn a_mounted_point_that_is_forgotten_never_serves_other_bytes() {
    if !fuse_available() {
        eprintln!("SKIP a_mounted_point_that_is_forgotten_never_serves_other_bytes: FUSE is not available here (/dev/fuse, root or fusermount3)");
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let safe = t.path().join("safe");
    let a = t.path().join("a.img");
    let mut rng = StdRng::seed_from_u64(45);
    // Four 16 MiB segments of block map: opening the image maps the first and the
    // last (partition table and md superblock probes), the middle ones only on use.
    let size = 64u64 << 20;
    let mut copies: Vec<PathBuf> = Vec::new();
    for i in 0..4 {
        // Each point rewrites the whole device, so an older point's bytes differ.
        let mut data = vec![0u8; size as usize];
        rng.fill(&mut data[..]);
        std::fs::write(&a, &data).unwrap();
        backup(&[s(&safe), &format!("d={}", s(&a))]);
        let c = t.path().join(format!("copy{i}"));
        std::fs::copy(&a, &c).unwrap();
        copies.push(c);
    }
    let m = Mounted::new(&safe, t.path(), &["--cache", "16M"]);
    let img2 = m.dir.join("2/d/disk.img");
    let f = std::fs::File::open(&img2).unwrap();
    let mut head = vec![0u8; 1 << 20];
    f.read_exact_at(&mut head, 0).unwrap();
    assert_eq!(sha256(&head), sha256_slice(&copies[1], 0, 1 << 20));
    ok(&["forget", s(&safe), "2"]);
    if is_root() {
        std::fs::write("/proc/sys/vm/drop_caches", "3").unwrap();
    }
    let (mut good, mut eio) = (0, 0);
    let chunk = 1u64 << 20;
    let mut buf = vec![0u8; chunk as usize];
    for i in 0..size / chunk {
        match f.read_exact_at(&mut buf, i * chunk) {
            Ok(()) => {
                assert_eq!(
                    sha256(&buf),
                    sha256_slice(&copies[1], i * chunk, chunk),
                    "bytes served for forgotten point 2 at {}",
                    i * chunk
                );
                good += 1;
            }
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
                eio += 1;
            }
        }
    }
    assert!(
        eio > 0,
        "a forgotten point's uncached blocks are refused ({good} MiB still cached)"
    );
    assert!(
        m.log_text().contains("point 2 was forgotten"),
        "log: {}",
        m.log_text()
    );
    for (p, copy) in [(1, &copies[0]), (3, &copies[2]), (4, &copies[3])] {
        assert_eq!(
            sha256_file(&m.dir.join(format!("{p}/d/disk.img"))),
            sha256_file(copy),
            "point {p} after point 2 was forgotten"
        );
    }
    std::thread::sleep(Duration::from_millis(1100));
    let names: BTreeSet<String> = std::fs::read_dir(&m.dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        !names.contains("2") && names.contains("1") && names.contains("4"),
        "{names:?}"
    );
}

/// A device that shrinks and grows again: a later point inherits a zero block from
/// before the shrink (a backup takes zeros past its previous point's end as unchanged),
/// so forgetting the point that recorded the zero must keep it for the points after
/// it, or they would read the older data below it.
#[test]
fn zeros_inherited_across_a_shrink_survive_forget() {
    let t = tempfile::tempdir().unwrap();
    let safe = t.path().join("safe");
    let a = t.path().join("a.img");
    let bs = 65_536u64;
    let mut rng = StdRng::seed_from_u64(46);
    let mut data = vec![0u8; (4 * bs) as usize];
    rng.fill(&mut data[..]);
    std::fs::write(&a, &data).unwrap();
    let mut expect: BTreeMap<i64, Vec<(String, String)>> = BTreeMap::new();
    let take = |expect: &mut BTreeMap<i64, Vec<(String, String)>>| {
        let p = backup(&[s(&safe), &format!("d={}", s(&a))]);
        expect.insert(p, vec![("d".to_string(), sha256_file(&a))]);
        p
    };
    take(&mut expect); // 1: four blocks of data
    let f = OpenOptions::new().write(true).open(&a).unwrap();
    f.write_all_at(&vec![0u8; bs as usize], 3 * bs).unwrap();
    let zeroed = take(&mut expect); // 2: block 3 zero
    f.set_len(2 * bs).unwrap();
    take(&mut expect); // 3: two blocks
    f.set_len(4 * bs).unwrap();
    take(&mut expect); // 4: four blocks again, block 3 zero as at point 2
    ok(&["forget", s(&safe), &zeroed.to_string()]);
    expect.remove(&zeroed);
    check_points(&safe, &expect, t.path());
}

/// On a filesystem that cannot punch holes, `forget` rewrites the packs a tenth or more
/// of which it freed: the safe then takes at most a ninth more than a fresh safe of the
/// remaining points' images, every remaining point restores as its source was, and a
/// mount that read the old packs' locations before keeps serving the same bytes.
#[test]
fn forget_rewrites_packs_where_holes_cannot_be_punched() {
    let test = "forget_rewrites_packs_where_holes_cannot_be_punched";
    let Some(rf) = RamFs::new(test) else {
        return;
    };
    let t = tempfile::tempdir().unwrap();
    let safe = rf.join("safe");
    let (a, b) = (t.path().join("a.img"), t.path().join("b.img"));
    let mut rng = StdRng::seed_from_u64(47);
    make_image(&a, 40 << 20, &mut rng);
    make_image(&b, 24 << 20, &mut rng);
    let mut copies: BTreeMap<i64, (PathBuf, PathBuf)> = BTreeMap::new();
    for i in 0..8 {
        mutate(&a, 30, 1 << 20, &mut rng);
        mutate(&b, 10, 1 << 20, &mut rng);
        let p = backup(&[s(&safe), &format!("a={}", s(&a)), &format!("b={}", s(&b))]);
        let (ca, cb) = (
            t.path().join(format!("a{i}")),
            t.path().join(format!("b{i}")),
        );
        std::fs::copy(&a, &ca).unwrap();
        std::fs::copy(&b, &cb).unwrap();
        copies.insert(p, (ca, cb));
    }
    let before = pack_bytes(&safe);
    let mounted = fuse_available().then(|| Mounted::new(&safe, t.path(), &["--cache", "16M"]));
    let kept: Vec<i64> = copies.keys().rev().take(2).rev().copied().collect();
    if let Some(m) = &mounted {
        // The mount caches the first map segment's locations and opens some packs.
        for p in &kept {
            let f = std::fs::File::open(m.dir.join(format!("{p}/a/disk.img"))).unwrap();
            let mut head = vec![0u8; 1 << 20];
            f.read_exact_at(&mut head, 0).unwrap();
            assert_eq!(sha256(&head), sha256_slice(&copies[p].0, 0, 1 << 20));
        }
    } else {
        eprintln!(
            "SKIP part of {test}: FUSE is not available here (/dev/fuse, root or fusermount3)"
        );
    }
    let o = ds(&["forget", s(&safe), "--keep-last", "2"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("rewritten without unused records"), "{err}");
    copies.retain(|p, _| kept.contains(p));

    // A fresh safe of the same two images holds exactly the records still needed.
    let fresh = t.path().join("fresh");
    for (ca, cb) in copies.values() {
        backup(&[s(&fresh), &format!("a={}", s(ca)), &format!("b={}", s(cb))]);
    }
    let (after, need) = (pack_bytes(&safe), pack_bytes(&fresh));
    let packs = pack_files(&safe).len() as u64;
    eprintln!("packs: {before} bytes before, {after} after; a fresh safe: {need}");
    assert!(
        after * 9 <= need * 10 + packs * 16 * 9,
        "after the rewrite the packs hold {after} bytes; the records needed take {need}"
    );
    assert!(
        before > 2 * need,
        "the test frees little ({before} vs {need})"
    );
    assert_eq!(pack_files(&safe), indexed_packs(&safe));
    let mut expect: BTreeMap<i64, Vec<(String, String)>> = BTreeMap::new();
    for (p, (ca, cb)) in &copies {
        expect.insert(
            *p,
            vec![("a".into(), sha256_file(ca)), ("b".into(), sha256_file(cb))],
        );
    }
    check_points(&safe, &expect, t.path());

    if let Some(m) = &mounted {
        std::fs::write("/proc/sys/vm/drop_caches", "3").unwrap();
        for (p, (ca, cb)) in &copies {
            for (dev, src) in [("a", ca), ("b", cb)] {
                assert_eq!(
                    sha256_file(&m.dir.join(format!("{p}/{dev}/disk.img"))),
                    sha256_file(src),
                    "{dev} at point {p} through a mount older than the rewrite"
                );
            }
        }
        let log = m.log_text();
        assert!(!log.contains("ERROR") && !log.contains("damaged"), "{log}");
    }
}

/// A rewrite never hides damage: a pack holding a record whose header disagrees with
/// the index is left as it is (with a warning), and a record damaged past its header
/// is copied as it is, so `verify` names the same point, device and bytes afterwards.
#[test]
fn rewriting_packs_keeps_damage_visible() {
    let test = "rewriting_packs_keeps_damage_visible";
    let Some(rf) = RamFs::new(test) else {
        return;
    };
    let t = tempfile::tempdir().unwrap();
    let safe = rf.join("safe");
    let a = t.path().join("a.img");
    let mut rng = StdRng::seed_from_u64(48);
    make_image(&a, 16 << 20, &mut rng);
    backup(&[s(&safe), &format!("a={}", s(&a))]);
    // Point 2 rewrites the first half, point 3 the first and third quarters: once
    // points 1 and 2 go, point 3 reads its last quarter from pack 1 and its second
    // from pack 2, the rest of both unused.
    let f = OpenOptions::new().write(true).open(&a).unwrap();
    let mut half = vec![0u8; 8 << 20];
    rng.fill(&mut half[..]);
    f.write_all_at(&half, 0).unwrap();
    backup(&[s(&safe), &format!("a={}", s(&a))]);
    rng.fill(&mut half[..4 << 20]);
    f.write_all_at(&half[..4 << 20], 0).unwrap();
    rng.fill(&mut half[..4 << 20]);
    f.write_all_at(&half[..4 << 20], 8 << 20).unwrap();
    let last = backup(&[s(&safe), &format!("a={}", s(&a))]);
    // A record each in packs 1 and 2 that point 3 still reads: blocks 192–255 and
    // 64–127 (records lie in packs in the order the pipeline's threads finish).
    let live = |pack: i64, blocks: std::ops::Range<i64>| -> (u64, i64) {
        db(&safe)
            .query_row(
                "SELECT b.offset, m.block_no FROM block_map m JOIN blocks b ON b.id = m.block
                 WHERE b.pack = ?1 AND m.block_no >= ?2 AND m.block_no < ?3
                 ORDER BY m.block_no DESC LIMIT 1",
                [pack, blocks.start, blocks.end],
                |r| Ok((r.get::<_, i64>(0)? as u64, r.get(1)?)),
            )
            .unwrap()
    };
    let (head_at, head_block) = live(1, 192..256);
    let (body_at, body_block) = live(2, 64..128);
    flip_byte(&format::pack_path(&safe, 1), head_at + 1, 0x20); // the record magic
    flip_byte(&format::pack_path(&safe, 2), body_at + 48 + 7, 0x01); // stored bytes
    let damage = |safe: &Path| -> BTreeSet<String> {
        let o = ds(&["verify", s(safe)]);
        assert!(!o.status.success());
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter(|l| l.starts_with("damaged:") && l.contains(&format!("point {last} ")))
            .map(|l| l.split(" (").next().unwrap().to_string())
            .collect()
    };
    let before = damage(&safe);
    let bs = 65_536u64;
    for b in [head_block, body_block] {
        let range = format!("bytes {}-{}", b as u64 * bs, (b as u64 + 1) * bs);
        assert!(
            before.iter().any(|l| l.contains(&range)),
            "{range} in {before:?}"
        );
    }
    let o = ds(&["forget", s(&safe), "1-2"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("could not rewrite pack 1") && err.contains("disagrees with the index"),
        "{err}"
    );
    assert!(err.contains("1 rewritten"), "{err}");
    assert!(pack_files(&safe).contains(&1) && !pack_files(&safe).contains(&2));
    assert_eq!(damage(&safe), before, "verify after the rewrite");
}
