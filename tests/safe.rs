//! Disk safe behaviour through the real binary, checked against the source images.

mod common;

use std::fs::OpenOptions;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use rand::{rngs::StdRng, Rng, SeedableRng};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn round_trip_22_points_two_devices_with_grow_and_shrink() {
    let t = tempfile::tempdir().unwrap();
    let safe = t.path().join("safe");
    let (a, b) = (t.path().join("a.img"), t.path().join("b.img"));
    let mut rng = StdRng::seed_from_u64(1);
    make_image(&a, 6 << 20, &mut rng);
    make_image(&b, 3 << 20, &mut rng);
    let mut expect: Vec<(i64, String, String)> = Vec::new();
    for i in 0..22 {
        if i > 0 {
            mutate(&a, rng.gen_range(1..20), 300_000, &mut rng);
            mutate(&b, rng.gen_range(0..5), 70_000, &mut rng);
            if i % 7 == 3 {
                // grow by an odd amount, then later shrink below the original size
                let f = OpenOptions::new().write(true).open(&a).unwrap();
                let len = f.metadata().unwrap().len();
                f.set_len(len + 1_234_567).unwrap();
                f.write_all_at(b"grown tail", len + 1_000_000).unwrap();
            }
            if i % 7 == 5 {
                let f = OpenOptions::new().write(true).open(&a).unwrap();
                f.set_len(5 * 1024 * 1024 - 4097).unwrap();
            }
        }
        let p = backup(&[
            s(&safe),
            &format!("disk-a={}", s(&a)),
            &format!("disk-b={}", s(&b)),
        ]);
        expect.push((p, sha256_file(&a), sha256_file(&b)));
    }
    let ids: Vec<i64> = expect.iter().map(|e| e.0).collect();
    assert_eq!(
        ids,
        (1..=22).collect::<Vec<_>>(),
        "ids are positive and increasing"
    );
    for (p, sa, sb) in &expect {
        let p = p.to_string();
        assert_eq!(
            &restored_sha(&safe, &p, "disk-a", t.path()),
            sa,
            "disk-a at point {p}"
        );
        assert_eq!(
            &restored_sha(&safe, &p, "disk-b", t.path()),
            sb,
            "disk-b at point {p}"
        );
    }
    assert_eq!(
        restored_sha(&safe, "latest", "disk-a", t.path()),
        expect[21].1
    );
    let v = ok(&["verify", s(&safe)]);
    assert!(v.starts_with("ok:"), "{v}");
}

#[test]
fn unchanged_and_repeated_blocks_are_stored_once() {
    let t = tempfile::tempdir().unwrap();
    let safe = t.path().join("safe");
    let a = t.path().join("a.img");
    let mut rng = StdRng::seed_from_u64(2);
    let mut data = vec![0u8; 4 << 20];
    rng.fill(&mut data[..]);
    std::fs::write(&a, &data).unwrap();
    let p1 = backup(&[s(&safe), s(&a)]);
    let after1 = pack_bytes(&safe);
    assert!(after1 >= 4 << 20, "random data is stored ({after1})");
    // Unchanged: nothing added.
    let p2 = backup(&[s(&safe), s(&a)]);
    assert_eq!(bytes_added(&safe, p2), 0);
    // A second device holding the same bytes, and a block repeated inside it: no new data.
    let b = t.path().join("b.img");
    let mut bdata = data.clone();
    let blk = 65536;
    let (x, y) = bdata.split_at_mut(10 * blk);
    y[..blk].copy_from_slice(&x[3 * blk..4 * blk]);
    std::fs::write(&b, &bdata).unwrap();
    let before = pack_bytes(&safe);
    let p3 = backup(&[s(&safe), s(&a), s(&b)]);
    assert_eq!(
        bytes_added(&safe, p3),
        0,
        "dedup across devices and within one"
    );
    assert_eq!(pack_bytes(&safe), before, "no pack bytes at all");
    assert_eq!(
        restored_sha(&safe, &p3.to_string(), "b.img", t.path()),
        sha256(&bdata)
    );
    assert_eq!(
        restored_sha(&safe, &p1.to_string(), "a.img", t.path()),
        sha256(&data)
    );
}

#[test]
fn zero_blocks_cost_nothing_and_restore_as_holes() {
    let t = tempfile::tempdir().unwrap();
    let safe = t.path().join("safe");
    let z = t.path().join("zero.img");
    let f = std::fs::File::create(&z).unwrap();
    f.set_len(256 << 20).unwrap();
    f.write_all_at(b"one non-zero block", 100 << 20).unwrap();
    drop(f);
    let p = backup(&[s(&safe), s(&z)]);
    assert!(
        bytes_added(&safe, p) < 1024,
        "one small compressed block only"
    );
    let out = t.path().join("out.img");
    ok(&["restore", s(&safe), "1", "zero.img", s(&out)]);
    let md = std::fs::metadata(&out).unwrap();
    assert_eq!(md.len(), 256 << 20);
    assert!(
        md.blocks() * 512 < 1 << 20,
        "restored file is sparse ({} blocks)",
        md.blocks()
    );
    assert_eq!(sha256_file(&out), sha256_file(&z));
}

#[test]
fn changed_blocks_gives_the_same_points_as_a_full_scan() {
    let t = tempfile::tempdir().unwrap();
    let (full, cbt) = (t.path().join("full"), t.path().join("cbt"));
    let a = t.path().join("a.img");
    let mut rng = StdRng::seed_from_u64(3);
    make_image(&a, 8 << 20, &mut rng);
    backup(&[s(&full), &format!("d={}", s(&a))]);
    backup(&[s(&cbt), &format!("d={}", s(&a))]);
    for i in 0..5 {
        let mut ranges = mutate(&a, 12, 200_000, &mut rng);
        if i == 2 {
            let f = OpenOptions::new().write(true).open(&a).unwrap();
            let len = f.metadata().unwrap().len();
            f.set_len(len + 777_777).unwrap();
            f.write_all_at(b"tail", len + 5).unwrap();
            ranges.push((len + 5, 4));
        }
        let list = t.path().join(format!("changes{i}"));
        let text: String = ranges.iter().map(|(o, l)| format!("{o} {l}\n")).collect();
        std::fs::write(&list, format!("# changed ranges\n{text}")).unwrap();
        let pf = backup(&[s(&full), &format!("d={}", s(&a))]);
        let pc = backup(&[
            s(&cbt),
            &format!("d={}", s(&a)),
            "--changed-blocks",
            &format!("d={}", s(&list)),
        ]);
        assert_eq!(bytes_added(&full, pf), bytes_added(&cbt, pc));
        let want = sha256_file(&a);
        assert_eq!(restored_sha(&cbt, &pc.to_string(), "d", t.path()), want);
        assert_eq!(restored_sha(&full, &pf.to_string(), "d", t.path()), want);
    }
    // A list naming bytes past the device's end is not this device's: refused before
    // the safe is touched, rather than a point that misses the real changes.
    let len = std::fs::metadata(&a).unwrap().len();
    let list = t.path().join("wrong");
    std::fs::write(&list, format!("0 4096\n{} 4096\n", len - 100)).unwrap();
    let before = ok(&["points", s(&cbt)]);
    let err = fails(&[
        "backup",
        s(&cbt),
        &format!("d={}", s(&a)),
        "--changed-blocks",
        &format!("d={}", s(&list)),
    ]);
    assert!(err.contains("ends past the end of device d"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one-line error: {err}");
    assert_eq!(ok(&["points", s(&cbt)]), before, "the safe is unchanged");
}

#[test]
fn flipped_byte_is_caught_by_verify_and_restore_refuses() {
    let t = tempfile::tempdir().unwrap();
    let safe = t.path().join("safe");
    let a = t.path().join("a.img");
    let mut rng = StdRng::seed_from_u64(4);
    make_image(&a, 2 << 20, &mut rng);
    backup(&[s(&safe), s(&a)]);
    mutate(&a, 1, 1000, &mut rng);
    backup(&[s(&safe), s(&a)]);
    assert!(ok(&["verify", s(&safe)]).starts_with("ok:"));
    // Flip one byte in the middle of the first pack's data.
    let pack = safe.join("packs/00000001.pack");
    let len = std::fs::metadata(&pack).unwrap().len();
    flip_byte(&pack, len / 2, 0x40);
    let o = ds(&["verify", s(&safe)]);
    assert!(!o.status.success());
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("damaged: point 1 device a.img bytes "),
        "{out}"
    );
    let dest = t.path().join("r.img");
    let err = fails(&["restore", s(&safe), "1", "a.img", s(&dest)]);
    assert!(err.contains("point 1, device a.img, offset "), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one-line error: {err}");
    assert!(!dest.exists(), "no partial output left behind");
}

#[test]
fn killed_backups_leave_earlier_points_intact() {
    let t = tempfile::tempdir().unwrap();
    let safe = t.path().join("safe");
    let a = t.path().join("a.img");
    let mut rng = StdRng::seed_from_u64(5);
    make_image(&a, 4 << 20, &mut rng);
    let p1 = backup(&[s(&safe), "--compression", "3", s(&a)]);
    let want1 = sha256_file(&a);
    let big = t.path().join("big.img");
    let mut done_points: Vec<(i64, String)> = vec![(p1, want1)];
    for round in 0..6 {
        make_image(&big, 96 << 20, &mut rng);
        let mut child = Command::new(bin())
            .args(["backup", s(&safe), s(&a), s(&big)])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(rng.gen_range(5..400)));
        child.kill().unwrap(); // SIGKILL
        let status = child.wait().unwrap();
        let v = ds(&["verify", s(&safe)]);
        assert!(
            v.status.success(),
            "round {round}: safe not verifiable after SIGKILL: {}",
            String::from_utf8_lossy(&v.stdout)
        );
        if status.success() {
            // It finished before the kill: that point is complete and must be right.
            let pts: serde_json::Value =
                serde_json::from_str(&ok(&["points", s(&safe), "--json"])).unwrap();
            let last = pts.as_array().unwrap().last().unwrap()["id"]
                .as_i64()
                .unwrap();
            done_points.push((last, sha256_file(&a)));
        }
        for (p, want) in &done_points {
            assert_eq!(
                &restored_sha(&safe, &p.to_string(), "a.img", t.path()),
                want
            );
        }
        mutate(&a, 3, 100_000, &mut rng);
        let p = backup(&[s(&safe), s(&a)]);
        done_points.push((p, sha256_file(&a)));
    }
    assert!(ok(&["verify", s(&safe)]).starts_with("ok:"));
}

#[test]
fn readers_work_while_a_backup_runs_and_only_one_backup_writes() {
    let t = tempfile::tempdir().unwrap();
    let safe = t.path().join("safe");
    let a = t.path().join("a.img");
    let big = t.path().join("big.img");
    let mut rng = StdRng::seed_from_u64(6);
    make_image(&a, 4 << 20, &mut rng);
    backup(&[s(&safe), "--compression", "9", s(&a)]);
    let want = sha256_file(&a);
    make_image(&big, 96 << 20, &mut rng);
    let mut child = Command::new(bin())
        .args(["backup", s(&safe), s(&big)])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Freeze the backup mid-way (once it has started writing its pack), so the checks
    // run while it is certainly in flight, whatever the machine's speed.
    let pack2 = safe.join("packs/00000002.pack");
    let mut waited = 0;
    while !pack2.exists() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "backup ended before writing"
        );
        std::thread::sleep(Duration::from_millis(5));
        waited += 1;
        assert!(waited < 4000, "backup did not start writing");
    }
    unsafe { libc::kill(child.id() as i32, libc::SIGSTOP) };
    assert!(
        child.try_wait().unwrap().is_none(),
        "backup still running when frozen"
    );
    let err = fails(&["backup", s(&safe), s(&a)]);
    assert!(err.contains("another backup or forget is writing"), "{err}");
    let pts: serde_json::Value =
        serde_json::from_str(&ok(&["points", s(&safe), "--json"])).unwrap();
    assert_eq!(
        pts.as_array().unwrap().len(),
        1,
        "the running backup's point is not visible"
    );
    assert_eq!(restored_sha(&safe, "1", "a.img", t.path()), want);
    assert!(
        ok(&["verify", s(&safe)]).starts_with("ok:"),
        "verify works beside a backup"
    );
    unsafe { libc::kill(child.id() as i32, libc::SIGCONT) };
    assert!(child.wait().unwrap().success());
    assert_eq!(
        restored_sha(&safe, "2", "big.img", t.path()),
        sha256_file(&big)
    );
}

#[test]
fn bad_input_gets_one_line_errors() {
    let t = tempfile::tempdir().unwrap();
    let safe = t.path().join("safe");
    let a = t.path().join("a.img");
    std::fs::write(&a, vec![7u8; 100_000]).unwrap();
    let one_line = |e: &str, want: &str| {
        assert!(e.contains(want), "expected {want:?} in {e:?}");
        assert_eq!(e.trim().lines().count(), 1, "{e}");
        assert!(!e.contains("panicked"), "{e}");
    };
    one_line(
        &fails(&["backup", s(&safe), "/nonexistent/disk"]),
        "cannot read source /nonexistent/disk",
    );
    assert!(
        !safe.join("safe.db").exists(),
        "no safe made for a bad source"
    );
    backup(&[s(&safe), s(&a)]);
    one_line(&fails(&["points", s(&a)]), "is not a disk safe");
    one_line(&fails(&["points", s(t.path())]), "is not a disk safe");
    one_line(
        &fails(&["backup", s(t.path()), s(&a)]),
        "is not a disk safe",
    );
    one_line(
        &fails(&["restore", s(&safe), "9", "a.img", "-"]),
        "no recovery point 9",
    );
    one_line(
        &fails(&["restore", s(&safe), "1", "nope", "-"]),
        "no device \"nope\" in point 1",
    );
    one_line(
        &fails(&["restore", s(&safe), "x", "a.img", "-"]),
        "invalid point",
    );
    one_line(
        &fails(&["backup", s(&safe), "--block-size", "128K", s(&a)]),
        "created with block size 65536",
    );
    one_line(
        &fails(&["backup", s(&safe), "--block-size", "3000", s(&a)]),
        "power of two",
    );
    one_line(
        &fails(&["backup", s(&safe), s(&a), "--changed-blocks", "zz=/x"]),
        "not among the sources",
    );
    // A newer format version.
    let c = rusqlite::Connection::open(safe.join("safe.db")).unwrap();
    c.execute(
        "UPDATE meta SET value = '99' WHERE key = 'format_version'",
        [],
    )
    .unwrap();
    drop(c);
    one_line(
        &fails(&["points", s(&safe)]),
        "newer than this disksafe supports",
    );
    one_line(
        &fails(&["backup", s(&safe), s(&a)]),
        "newer than this disksafe supports",
    );
}

#[test]
fn full_disk_fails_cleanly_and_keeps_the_safe() {
    if !is_root() {
        eprintln!(
            "SKIP full_disk_fails_cleanly_and_keeps_the_safe: needs root to mount a small tmpfs"
        );
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let mnt = t.path().join("small");
    std::fs::create_dir(&mnt).unwrap();
    let st = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=6m", "tmpfs", s(&mnt)])
        .status()
        .unwrap();
    if !st.success() {
        eprintln!("SKIP full_disk_fails_cleanly_and_keeps_the_safe: cannot mount tmpfs here");
        return;
    }
    struct Umount<'a>(&'a Path);
    impl Drop for Umount<'_> {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(self.0).status();
        }
    }
    let _guard = Umount(&mnt);
    let safe = mnt.join("safe");
    let a = t.path().join("a.img");
    let mut rng = StdRng::seed_from_u64(7);
    let mut small = vec![0u8; 1 << 20];
    rng.fill(&mut small[..]);
    std::fs::write(&a, &small).unwrap();
    backup(&[s(&safe), s(&a)]);
    let big = t.path().join("big.img");
    let mut data = vec![0u8; 16 << 20];
    rng.fill(&mut data[..]);
    std::fs::write(&big, &data).unwrap();
    let err = fails(&["backup", s(&safe), s(&big)]);
    assert!(err.contains("No space left on device"), "{err}");
    assert!(err.contains("no new point was recorded"), "{err}");
    let pts: serde_json::Value =
        serde_json::from_str(&ok(&["points", s(&safe), "--json"])).unwrap();
    assert_eq!(pts.as_array().unwrap().len(), 1);
    assert!(ok(&["verify", s(&safe)]).starts_with("ok:"));
    assert_eq!(restored_sha(&safe, "1", "a.img", t.path()), sha256(&small));
    // Space freed: the next backup works and reclaims what the failed one left.
    std::fs::write(&big, &data[..2 << 20]).unwrap();
    let p = backup(&[s(&safe), s(&big)]);
    assert_eq!(
        restored_sha(&safe, &p.to_string(), "big.img", t.path()),
        sha256(&data[..2 << 20])
    );
}

#[test]
fn pack_reads_around_the_page_cache_return_the_same_bytes() {
    // Long runs of records are read with O_DIRECT, in aligned pieces around records
    // that start and end anywhere; every record, each run of records, and the pack's
    // unaligned tail must come out as a plain read of the pack file gives them.
    let t = tempfile::tempdir().unwrap();
    let safe = t.path().join("safe");
    let img = t.path().join("a.img");
    let mut rng = StdRng::seed_from_u64(5);
    make_image(&img, 5 << 20, &mut rng);
    backup(&[s(&safe), &format!("a={}", s(&img))]);
    let sf = disksafe::safe_reader::Safe::open(&safe).unwrap();
    let point = &sf.points().unwrap()[0];
    let dev = &point.devices[0];
    let locs: Vec<_> = sf
        .block_run(dev.id, point.id, 0, dev.size.div_ceil(65536))
        .unwrap()
        .into_iter()
        .flatten()
        .filter(|l| !l.is_zero())
        .collect();
    assert!(locs.len() > 20, "{} stored blocks", locs.len());
    let mut buf = Vec::new();
    let header = disksafe::format::RECORD_HEADER_LEN as u64;
    for (i, l) in locs.iter().enumerate() {
        let plain = std::fs::read(disksafe::format::pack_path(&safe, l.pack)).unwrap();
        // One record, and the run from this record to the pack's end.
        for end in [l.offset + header + l.stored_len as u64, plain.len() as u64] {
            let len = (end - l.offset) as usize;
            let at = sf.read_run(l.pack, l.offset, len, &mut buf, true).unwrap();
            assert!(
                buf[at..at + len] == plain[l.offset as usize..end as usize],
                "block {i}: {len} bytes at {}",
                l.offset
            );
        }
        // Past the end of the pack is an error, not zeros.
        let past = plain.len() - l.offset as usize + 1;
        assert!(sf.read_run(l.pack, l.offset, past, &mut buf, true).is_err());
    }
    // Single-block loads that ask the page cache for their neighbours (the mount's
    // random reads; the window reaches past the pack's end for the last records) give
    // the source's bytes.
    let source = std::fs::read(&img).unwrap();
    let map = sf
        .block_run(dev.id, point.id, 0, dev.size.div_ceil(65536))
        .unwrap();
    for (b, l) in map.iter().enumerate().rev() {
        let Some(l) = l.filter(|l| !l.is_zero()) else {
            continue;
        };
        let got = sf.load_block_scattered(&l).unwrap();
        let from = b * 65536;
        assert!(got[..] == source[from..from + 65536], "block {b}");
    }
}

/// Runs a tool; its trimmed stdout when it succeeds.
fn tool(cmd: &str, args: &[&str]) -> Option<String> {
    Command::new(cmd)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
}

/// A loop device over an image file, mounted at `mnt` (or never mounted); thaws,
/// unmounts and detaches when dropped, so a failing test leaves nothing behind.
struct LoopDev {
    dev: String,
    mnt: std::path::PathBuf,
}

impl LoopDev {
    /// A fresh ext4 image of `size` bytes at `img` on a loop device, mounted at a new
    /// directory `mnt`; `None` (the test skips, saying why) without loop devices.
    fn mounted_ext4(test: &str, img: &Path, size: u64, mnt: &Path) -> Option<LoopDev> {
        std::fs::File::create(img).unwrap().set_len(size).unwrap();
        tool("mkfs.ext4", &["-q", "-F", s(img)]).expect("mkfs.ext4 (package e2fsprogs)");
        let Some(dev) = tool("losetup", &["-f", "--show", s(img)]) else {
            eprintln!("SKIP {test}: no loop devices");
            return None;
        };
        std::fs::create_dir(mnt).unwrap();
        let d = LoopDev {
            dev,
            mnt: mnt.to_path_buf(),
        };
        tool("mount", &[&d.dev, s(mnt)]).expect("mount the loop device");
        Some(d)
    }
}

impl Drop for LoopDev {
    fn drop(&mut self) {
        for args in [&["fsfreeze", "-u"][..], &["umount"][..]] {
            let _ = Command::new(args[0])
                .args(&args[1..])
                .arg(&self.mnt)
                .stderr(Stdio::null())
                .status();
        }
        let _ = Command::new("losetup").args(["-d", &self.dev]).status();
    }
}

/// Backing up a device while it is mounted read-write (rather than a snapshot of it)
/// works, with a one-line warning naming where it is mounted: for the block device
/// itself and for the image file a loop device reads. The kernel's mount table is
/// the oracle; read-only and unmounted, no warning.
#[test]
fn a_source_mounted_read_write_is_named_with_a_warning() {
    const TEST: &str = "a_source_mounted_read_write_is_named_with_a_warning";
    if !is_root() {
        eprintln!("SKIP {TEST}: needs root");
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let img = t.path().join("fs.img");
    let mnt = t.path().join("mounted here");
    let Some(lo) = LoopDev::mounted_ext4(TEST, &img, 32 << 20, &mnt) else {
        return;
    };
    let dev = lo.dev.clone();
    let safe = t.path().join("safe");
    let warning = |source: &str| {
        let o = ds(&["backup", s(&safe), &format!("d={source}")]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stderr)
            .lines()
            .find(|l| l.starts_with("warning:"))
            .map(str::to_string)
    };
    for source in [dev.as_str(), s(&img)] {
        let w = warning(source).unwrap_or_else(|| panic!("no warning for {source}"));
        assert!(
            w.contains(&format!(
                "source {source} is mounted read-write at {}",
                s(&mnt)
            )),
            "{w}"
        );
    }
    tool("mount", &["-o", "remount,ro", s(&mnt)]).expect("remount read-only");
    assert_eq!(warning(&dev), None);
    tool("umount", &[s(&mnt)]).expect("umount");
    assert_eq!(warning(&dev), None);
    assert_eq!(warning(s(&img)), None);
}

/// A filesystem mounted on a block device writes file data and journal blocks with I/O
/// that bypasses the device's page cache: a backup that reads the device buffered gets
/// what its previous read cached there, not what the device holds. Each point of a
/// frozen, mounted loop device must equal its backing file (what the loop device
/// wrote), also after a first backup read the whole device. A restore onto the
/// mounted device is refused; onto a free one it is byte-exact.
#[test]
fn a_mounted_device_is_backed_up_as_the_device_holds_it() {
    const TEST: &str = "a_mounted_device_is_backed_up_as_the_device_holds_it";
    if !is_root() {
        eprintln!("SKIP {TEST}: needs root");
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let img = t.path().join("fs.img");
    let mnt = t.path().join("mnt");
    let Some(lo) = LoopDev::mounted_ext4(TEST, &img, 64 << 20, &mnt) else {
        return;
    };
    let dev = lo.dev.clone();
    let safe = t.path().join("safe");
    let mut rng = StdRng::seed_from_u64(13);
    let mut content = vec![0u8; 6 << 20];
    for round in 1..=3 {
        // Round 1 writes the file; later rounds overwrite it in place and add another.
        rng.fill(&mut content[..]);
        let f = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(false)
            .open(mnt.join("f"))
            .unwrap();
        f.write_all_at(&content, 0).unwrap();
        f.sync_all().unwrap();
        std::fs::write(mnt.join(format!("g{round}")), &content[..100_000]).unwrap();
        tool("fsfreeze", &["-f", s(&mnt)]).expect("fsfreeze");
        let point = backup(&[s(&safe), &format!("d={dev}")]);
        let expected = sha256_file(&img);
        tool("fsfreeze", &["-u", s(&mnt)]).expect("fsfreeze -u");
        assert_eq!(point, round);
        assert_eq!(
            restored_sha(&safe, &point.to_string(), "d", t.path()),
            expected,
            "point {point} differs from what the device held"
        );
    }
    // Restoring over the mounted device is refused; onto a free device it is
    // byte-exact, every old byte overwritten (zero blocks too).
    let e = fails(&["restore", s(&safe), "2", "d", &dev]);
    assert!(e.contains("is in use"), "{e}");
    let spare = t.path().join("spare.img");
    std::fs::write(&spare, vec![0xA5u8; 64 << 20]).unwrap();
    let spare_dev = tool("losetup", &["-f", "--show", s(&spare)]).expect("a second loop device");
    let _spare = LoopDev {
        dev: spare_dev.clone(),
        mnt: t.path().join("never mounted"),
    };
    ok(&["restore", s(&safe), "2", "d", &spare_dev]);
    assert_eq!(
        sha256_file(&spare),
        restored_sha(&safe, "2", "d", t.path()),
        "restored onto a block device"
    );
}

/// `--skip-free` on a device holding no filesystem it knows (random bytes, and an MBR
/// disk whose partition holds none) says so and stores every byte.
#[test]
fn skip_free_without_a_known_filesystem_keeps_every_byte() {
    if !have_tool(
        "sfdisk",
        "fdisk",
        "skip_free_without_a_known_filesystem_keeps_every_byte",
    ) {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let mut rng = StdRng::seed_from_u64(64);
    let raw = t.path().join("raw.img");
    make_image(&raw, 8 << 20, &mut rng);
    let disk = t.path().join("disk.img");
    make_image(&disk, 8 << 20, &mut rng);
    sfdisk_script(&disk, "label: dos\nstart=2048, size=8192, type=83\n");
    let safe = t.path().join("safe");
    let o = ds(&[
        "backup",
        s(&safe),
        &format!("raw={}", s(&raw)),
        &format!("disk={}", s(&disk)),
        "--skip-free",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    for name in ["raw", "disk"] {
        assert!(
            err.contains(&format!("device {name}: no ext2/3/4"))
                && err.contains("so --skip-free leaves nothing out"),
            "{err}"
        );
    }
    assert!(!err.contains("recorded as zeros"), "{err}");
    for (name, img) in [("raw", &raw), ("disk", &disk)] {
        assert_eq!(restored_sha(&safe, "1", name, t.path()), sha256_file(img));
    }
}

/// Distinct non-zero 64 KiB blocks of a file: what a point of it holds in the safe.
fn distinct_blocks(p: &Path) -> usize {
    let data = std::fs::read(p).unwrap();
    let set: std::collections::HashSet<&[u8]> = data
        .chunks(65536)
        .filter(|c| c.iter().any(|&b| b != 0))
        .collect();
    set.len()
}

/// `verify --point` reads what that point needs, once per distinct block, and names
/// damage for that point alone: a block only an older point uses is no damage of the
/// newer one.
#[test]
fn verify_of_one_point_checks_its_blocks_and_names_only_it() {
    let t = tempfile::tempdir().unwrap();
    let safe = t.path().join("safe");
    let a = t.path().join("a.img");
    let mut rng = StdRng::seed_from_u64(41);
    make_image(&a, 2 << 20, &mut rng);
    // Block 3 random before point 1, so its stored copy is one point 2 replaces.
    let mut b3 = vec![0u8; 65536];
    rng.fill(&mut b3[..]);
    let f = OpenOptions::new().write(true).open(&a).unwrap();
    f.write_all_at(&b3, 3 * 65536).unwrap();
    // One block's content three times: stored once, checked once.
    let mut same = vec![0u8; 65536];
    rng.fill(&mut same[..]);
    for b in [20, 25, 30] {
        f.write_all_at(&same, b * 65536).unwrap();
    }
    backup(&[s(&safe), "--compression", "0", s(&a)]);
    let first = distinct_blocks(&a);
    rng.fill(&mut b3[..]);
    f.write_all_at(&b3, 3 * 65536).unwrap();
    backup(&[s(&safe), "--compression", "0", s(&a)]);
    let second = distinct_blocks(&a);
    let checked = |out: &str| -> usize {
        out.trim()
            .strip_prefix("ok: ")
            .and_then(|r| r.split(' ').next())
            .unwrap()
            .parse()
            .unwrap()
    };
    assert_eq!(checked(&ok(&["verify", s(&safe), "--point", "1"])), first);
    assert_eq!(
        checked(&ok(&["verify", s(&safe), "--point", "latest"])),
        second
    );

    // Damage point 1's copy of block 3 (stored raw: a byte of its data).
    let db = rusqlite::Connection::open(safe.join("safe.db")).unwrap();
    let (pack, offset): (i64, i64) = db
        .query_row(
            "SELECT b.pack, b.offset FROM block_map m JOIN blocks b ON b.id = m.block
             WHERE m.point = 1 AND m.block_no = 3",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    drop(db);
    flip_byte(
        &safe.join(format!("packs/{pack:08}.pack")),
        offset as u64 + 48 + 1000,
        1,
    );
    assert!(ok(&["verify", s(&safe), "--point", "2"]).starts_with("ok:"));
    let want = "damaged: point 1 device a.img bytes 196608-262144";
    for args in [
        vec!["--point", "1"],
        vec!["--point", "1", "--point", "2"],
        vec![],
    ] {
        let mut all = vec!["verify", s(&safe)];
        all.extend(&args);
        let o = ds(&all);
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(!o.status.success(), "{args:?}");
        assert_eq!(
            out.lines().filter(|l| l.starts_with("damaged")).count(),
            1,
            "{out}"
        );
        assert!(out.contains(want), "{args:?}: {out}");
    }
    let e = fails(&["verify", s(&safe), "--point", "7"]);
    assert!(e.contains("no recovery point 7"), "{e}");
    assert_eq!(e.trim().lines().count(), 1, "{e}");
}
