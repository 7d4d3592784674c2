//! The FUSE mount, checked against the source images, sfdisk and the kernel.

mod common;

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use rand::{rngs::StdRng, Rng, SeedableRng};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

macro_rules! need_fuse {
    ($name:expr) => {
        if !fuse_available() {
            eprintln!(
                "SKIP {}: FUSE is not available here (/dev/fuse, root or fusermount3)",
                $name
            );
            return;
        }
    };
}

fn run(cmd: &str, args: &[&str]) -> bool {
    Command::new(cmd)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// A 32 MiB MBR disk: 2 primaries, an extended partition with logicals 5 and 6; an
/// ext4 filesystem made from `tree` in partition 5, random data elsewhere.
fn make_mbr_disk(img: &Path, tree: &Path, rng: &mut StdRng) {
    make_image(img, 32 << 20, rng);
    File::create(img).unwrap().set_len(0).unwrap();
    make_image(img, 32 << 20, rng);
    sfdisk_script(
        img,
        "label: dos\nsize=4M\nsize=4M\ntype=5\nsize=12M\nsize=6M\n",
    );
    put_ext4(img, 5, tree);
}

fn put_ext4(img: &Path, part: u32, tree: &Path) {
    let (_, start, len) = sfdisk_parts(img).into_iter().find(|p| p.0 == part).unwrap();
    let fsimg = img.with_extension(format!("p{part}"));
    let _ = std::fs::remove_file(&fsimg);
    File::create(&fsimg).unwrap().set_len(len).unwrap();
    let st = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d", s(tree), s(&fsimg)])
        .status()
        .expect("mkfs.ext4 (package e2fsprogs) is needed");
    assert!(st.success());
    let data = std::fs::read(&fsimg).unwrap();
    OpenOptions::new()
        .write(true)
        .open(img)
        .unwrap()
        .write_all_at(&data, start)
        .unwrap();
}

fn make_gpt_disk(img: &Path, rng: &mut StdRng) {
    make_image(img, 24 << 20, rng);
    sfdisk_script(img, "label: gpt\nsize=2M\nsize=7M\n,\n");
}

/// Mutates only inside partitions other than `keep`, so tables and filesystems stay valid.
fn mutate_parts(img: &Path, keep: Option<u32>, rng: &mut StdRng) {
    let f = OpenOptions::new().write(true).open(img).unwrap();
    for (num, start, len) in sfdisk_parts(img) {
        if Some(num) == keep || num == 3 && keep.is_some() {
            continue; // the ext4 partition and the MBR's extended container
        }
        for _ in 0..rng.gen_range(0..4) {
            let n = rng.gen_range(1..200_000u64).min(len);
            let off = start + rng.gen_range(0..=len - n);
            let mut buf = vec![0u8; n as usize];
            rng.fill(&mut buf[..]);
            f.write_all_at(&buf, off).unwrap();
        }
    }
}

#[test]
fn every_point_device_and_partition_is_byte_exact() {
    need_fuse!("every_point_device_and_partition_is_byte_exact");
    if !have_tool(
        "sfdisk",
        "fdisk",
        "every_point_device_and_partition_is_byte_exact",
    ) {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let mut rng = StdRng::seed_from_u64(10);
    let safe = t.path().join("safe");
    let (mbr, gpt) = (t.path().join("mbr.img"), t.path().join("gpt.img"));
    let tree1 = t.path().join("tree1");
    make_tree(&tree1, 12, &mut rng);
    let tree2 = t.path().join("tree2");
    make_tree(&tree2, 20, &mut rng);
    make_mbr_disk(&mbr, &tree1, &mut rng);
    make_gpt_disk(&gpt, &mut rng);
    let mut copies: Vec<(i64, PathBuf, PathBuf, PathBuf)> = Vec::new();
    for i in 0..5 {
        if i > 0 {
            mutate_parts(&mbr, Some(5), &mut rng);
            mutate_parts(&gpt, None, &mut rng);
        }
        if i == 3 {
            put_ext4(&mbr, 5, &tree2);
        }
        let p = backup(&[
            s(&safe),
            &format!("mbr={}", s(&mbr)),
            &format!("gpt={}", s(&gpt)),
        ]);
        let (cm, cg) = (
            t.path().join(format!("mbr.{p}")),
            t.path().join(format!("gpt.{p}")),
        );
        std::fs::copy(&mbr, &cm).unwrap();
        std::fs::copy(&gpt, &cg).unwrap();
        copies.push((
            p,
            cm,
            cg,
            if i >= 3 { tree2.clone() } else { tree1.clone() },
        ));
    }
    let m = Mounted::new(&safe, t.path(), &[]);
    let root = m.dir.clone();

    // Every image of every point equals the source slice that sfdisk describes.
    for (p, cm, cg, _) in &copies {
        for (dev, copy) in [("mbr", cm), ("gpt", cg)] {
            let d = root.join(p.to_string()).join(dev);
            assert_eq!(
                sha256_file(&d.join("disk.img")),
                sha256_file(copy),
                "{dev} at {p}"
            );
            let parts = sfdisk_parts(copy);
            let mut listed: Vec<String> = std::fs::read_dir(&d)
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .filter(|n| n.starts_with("part") && n.ends_with(".img"))
                .collect();
            listed.sort();
            let mut want: Vec<String> = parts
                .iter()
                .map(|(n, _, _)| format!("part{n}.img"))
                .collect();
            want.sort();
            assert_eq!(
                listed, want,
                "{dev} at {p}: partitions as sfdisk numbers them"
            );
            for (n, start, len) in parts {
                let img = d.join(format!("part{n}.img"));
                assert_eq!(std::fs::metadata(&img).unwrap().len(), len);
                assert_eq!(
                    sha256_file(&img),
                    sha256_slice(copy, start, len),
                    "{dev} part{n} at {p}"
                );
            }
        }
    }

    // latest, by-time and point mtimes agree with `points --json`.
    let pts: serde_json::Value =
        serde_json::from_str(&ok(&["points", s(&safe), "--json"])).unwrap();
    assert_eq!(
        std::fs::read_link(root.join("latest")).unwrap(),
        Path::new("5")
    );
    let mut by_time: BTreeMap<String, String> = BTreeMap::new();
    for e in std::fs::read_dir(root.join("by-time")).unwrap() {
        let e = e.unwrap();
        by_time.insert(
            e.file_name().into_string().unwrap(),
            std::fs::read_link(e.path())
                .unwrap()
                .to_string_lossy()
                .to_string(),
        );
    }
    let mut want_links = BTreeMap::new();
    let mut seen: BTreeMap<String, u32> = BTreeMap::new();
    for p in pts.as_array().unwrap() {
        let created = p["created"].as_str().unwrap().to_string();
        let n = seen.entry(created.clone()).or_insert(0);
        *n += 1;
        let name = if *n == 1 {
            created
        } else {
            format!("{created}.{n}")
        };
        want_links.insert(name, format!("../{}", p["id"]));
        let md = std::fs::metadata(root.join(p["id"].to_string())).unwrap();
        let secs = md.mtime();
        assert_eq!(
            disksafe::format::utc_string(secs),
            p["created"].as_str().unwrap()
        );
    }
    assert_eq!(by_time, want_links);
    assert_eq!(
        std::fs::read_link(root.join("latest")).unwrap(),
        Path::new(&pts.as_array().unwrap().last().unwrap()["id"].to_string())
    );

    // Read-only: every write is refused with EROFS.
    let erofs = |r: std::io::Result<()>| {
        assert_eq!(r.unwrap_err().raw_os_error(), Some(libc::EROFS));
    };
    erofs(std::fs::write(root.join("1/new"), b"x"));
    erofs(std::fs::create_dir(root.join("1/newdir")));
    erofs(
        OpenOptions::new()
            .write(true)
            .open(root.join("1/mbr/disk.img"))
            .map(|_| ()),
    );
    erofs(std::fs::remove_file(root.join("1/mbr/disk.img")));

    // Concurrent readers of different points and devices get the source bytes.
    std::thread::scope(|sc| {
        for k in 0..6u64 {
            let copies = &copies;
            let root = &root;
            sc.spawn(move || {
                let mut rng = StdRng::seed_from_u64(100 + k);
                for _ in 0..60 {
                    let (p, cm, cg, _) = &copies[rng.gen_range(0..copies.len())];
                    let (dev, copy) = if rng.gen_bool(0.5) {
                        ("mbr", cm)
                    } else {
                        ("gpt", cg)
                    };
                    let size = std::fs::metadata(copy).unwrap().len();
                    let len = rng.gen_range(1..(1u64 << 20));
                    let off = rng.gen_range(0..size - len);
                    let mut a = vec![0u8; len as usize];
                    let mut b = vec![0u8; len as usize];
                    File::open(root.join(p.to_string()).join(dev).join("disk.img"))
                        .unwrap()
                        .read_exact_at(&mut a, off)
                        .unwrap();
                    File::open(copy)
                        .unwrap()
                        .read_exact_at(&mut b, off)
                        .unwrap();
                    assert!(a == b, "{dev} at point {p}, offset {off}, length {len}");
                }
            });
        }
    });

    // The ext4 in partition 5 is shown as a file tree too, equal to what mkfs was given.
    for (p, _, _, tree) in &copies {
        let files = root.join(p.to_string()).join("mbr/part5");
        assert_eq!(
            tree_digest(&files),
            tree_digest(tree),
            "part5/ at point {p}"
        );
    }

    // The kernel mounts a partition image from the mount (via a read-only loop device),
    // and sees the tree mkfs.ext4 was given.
    for (p, _, _, tree) in [&copies[0], &copies[4]] {
        let img = root.join(p.to_string()).join("mbr/part5.img");
        let out = Command::new("losetup")
            .args(["-r", "-f", "--show", s(&img)])
            .output();
        let loopdev = match out {
            Ok(o) if o.status.success() => String::from_utf8(o.stdout).unwrap().trim().to_string(),
            _ => {
                eprintln!("SKIP kernel mount of part5.img: loop devices are not available here");
                break;
            }
        };
        let kmnt = t.path().join(format!("kernel{p}"));
        std::fs::create_dir(&kmnt).unwrap();
        let mounted = run(
            "mount",
            &["-t", "ext4", "-o", "ro,noload", &loopdev, s(&kmnt)],
        );
        let result = if mounted {
            Some(tree_digest(&kmnt))
        } else {
            None
        };
        if mounted {
            run("umount", &[s(&kmnt)]);
        }
        run("losetup", &["-d", &loopdev]);
        let got = result.expect("the kernel mounts part5.img of the FUSE mount");
        assert_eq!(
            got,
            tree_digest(tree),
            "kernel's view of part5 at point {p}"
        );
    }

    // A point made while mounted shows up without a remount: at once to a lookup, and
    // in the listings of the root and by-time, which the kernel keeps, once their
    // attributes (1 s) have expired.
    let names = |dir: &Path| -> Vec<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect()
    };
    let (root_before, by_time_before) = (names(&root), names(&root.join("by-time")));
    mutate_parts(&gpt, None, &mut rng);
    let p6 = backup(&[s(&safe), &format!("gpt={}", s(&gpt))]);
    assert_eq!(
        sha256_file(&root.join(format!("{p6}/gpt/disk.img"))),
        sha256_file(&gpt)
    );
    std::thread::sleep(Duration::from_millis(1200));
    let root_after = names(&root);
    assert!(
        !root_before.contains(&p6.to_string()) && root_after.contains(&p6.to_string()),
        "{root_before:?} then {root_after:?}"
    );
    assert_eq!(names(&root.join("by-time")).len(), by_time_before.len() + 1);
    assert_eq!(
        std::fs::read_link(root.join("latest")).unwrap(),
        Path::new(&p6.to_string())
    );
    // Two more, listed between them: points can complete within one second, and the
    // root's mtime moves with each (its nanoseconds are the point's id).
    let p7 = backup(&[s(&safe), &format!("gpt={}", s(&gpt))]);
    let listed = names(&root);
    let p8 = backup(&[s(&safe), &format!("gpt={}", s(&gpt))]);
    std::thread::sleep(Duration::from_millis(1200));
    let root_after = names(&root);
    for p in [p7, p8] {
        assert!(
            root_after.contains(&p.to_string()),
            "{p}: {listed:?} then {root_after:?}"
        );
    }
}

#[test]
fn real_fixture_disks_show_the_partitions_fdisk_shows() {
    need_fuse!("real_fixture_disks_show_the_partitions_fdisk_shows");
    if !have_tool(
        "sfdisk",
        "fdisk",
        "real_fixture_disks_show_the_partitions_fdisk_shows",
    ) {
        return;
    }
    let fx = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures");
    if !fx.join("mbr-win-512.raw.tgz").exists() {
        eprintln!(
            "SKIP real_fixture_disks_show_the_partitions_fdisk_shows: ../shared/fixtures is absent"
        );
        return;
    }
    let t = tempfile::tempdir().unwrap();
    assert!(Command::new("tar")
        .args(["xf", s(&fx.join("mbr-win-512.raw.tgz")), "-C", s(t.path())])
        .status()
        .unwrap()
        .success());
    let gpt = t.path().join("gpt-512-3p.raw");
    let o = Command::new("gunzip")
        .arg("-c")
        .arg(fx.join("gpt-512-3p.raw.gz"))
        .output()
        .unwrap();
    std::fs::write(&gpt, o.stdout).unwrap();
    let mbr = t.path().join("mbr-win-512.raw");
    let safe = t.path().join("safe");
    backup(&[
        s(&safe),
        &format!("win={}", s(&mbr)),
        &format!("gpt={}", s(&gpt)),
    ]);
    let m = Mounted::new(&safe, t.path(), &["--point", "latest"]);
    for (dev, img, expect_parts) in [("win", &mbr, 8usize), ("gpt", &gpt, 3)] {
        let parts = sfdisk_parts(img);
        assert_eq!(parts.len(), expect_parts, "fdisk's view of {dev}");
        let d = m.dir.join(dev);
        let mut listed: Vec<String> = std::fs::read_dir(&d)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.starts_with("part") && n.ends_with(".img"))
            .collect();
        listed.sort();
        let mut want: Vec<String> = parts.iter().map(|p| format!("part{}.img", p.0)).collect();
        want.sort();
        assert_eq!(listed, want);
        for (n, start, len) in parts {
            let p = d.join(format!("part{n}.img"));
            assert_eq!(
                sha256_file(&p),
                sha256_slice(img, start, len),
                "{dev} part{n}"
            );
        }
        assert_eq!(sha256_file(&d.join("disk.img")), sha256_file(img));
    }
}

#[test]
fn gpt_with_4096_byte_sectors() {
    need_fuse!("gpt_with_4096_byte_sectors");
    if !have_tool("sfdisk", "fdisk", "gpt_with_4096_byte_sectors") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let img = t.path().join("g4.img");
    let mut rng = StdRng::seed_from_u64(11);
    make_image(&img, 40 << 20, &mut rng);
    let out = Command::new("losetup")
        .args(["--sector-size", "4096", "-f", "--show", s(&img)])
        .output();
    let Some(out) = out.ok().filter(|o| o.status.success()) else {
        eprintln!("SKIP gpt_with_4096_byte_sectors: loop devices are not available here");
        return;
    };
    let dev = String::from_utf8(out.stdout).unwrap().trim().to_string();
    sfdisk_script(Path::new(&dev), "label: gpt\nsize=4M\nsize=9M\n,\n");
    let parts = sfdisk_parts(Path::new(&dev));
    run("losetup", &["-d", &dev]);
    assert_eq!(parts.len(), 3);
    let safe = t.path().join("safe");
    backup(&[s(&safe), s(&img)]);
    let m = Mounted::new(&safe, t.path(), &[]);
    for (n, start, len) in parts {
        let p = m.dir.join(format!("1/g4.img/part{n}.img"));
        assert_eq!(sha256_file(&p), sha256_slice(&img, start, len), "part{n}");
    }
}

#[test]
fn mount_errors_and_single_point_mode() {
    need_fuse!("mount_errors_and_single_point_mode");
    let t = tempfile::tempdir().unwrap();
    let a = t.path().join("a.img");
    let mut rng = StdRng::seed_from_u64(12);
    make_image(&a, 1 << 20, &mut rng);
    let safe = t.path().join("safe");
    backup(&[s(&safe), s(&a)]);
    mutate(&a, 3, 1000, &mut rng);
    backup(&[s(&safe), s(&a)]);
    let mp = t.path().join("mp");
    std::fs::create_dir(&mp).unwrap();
    let one_line = |e: String, want: &str| {
        assert!(e.contains(want), "expected {want:?} in {e:?}");
        assert_eq!(e.trim().lines().count(), 1, "{e}");
    };
    one_line(fails(&["mount", s(t.path()), s(&mp)]), "is not a disk safe");
    one_line(
        fails(&["mount", s(&safe), s(&t.path().join("nope"))]),
        "does not exist",
    );
    one_line(
        fails(&["mount", s(&safe), s(&mp), "--point", "7"]),
        "no recovery point 7",
    );
    one_line(
        fails(&["mount", s(&safe), s(&mp), "--cache", "1M"]),
        "--cache must be at least 16M",
    );
    one_line(fails(&["umount", s(&mp)]), "is not a mount point");
    one_line(
        fails(&["umount", s(&t.path().join("nope"))]),
        "does not exist",
    );
    let m = Mounted::new(&safe, t.path(), &["--point", "1"]);
    one_line(
        fails(&["mount", s(&safe), s(&m.dir)]),
        "already a mount point",
    );
    // --point: that point's devices at the root.
    let names: Vec<String> = std::fs::read_dir(&m.dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, vec!["a.img".to_string()]);
    let got = sha256_file(&m.dir.join("a.img/disk.img"));
    assert_eq!(got, restored_sha(&safe, "1", "a.img", t.path()));
    assert_ne!(got, sha256_file(&a), "point 1, not the latest");
    // A mount whose server was killed is named dead at once (the kernel still answers
    // stat of its root from the attributes it kept), and `umount` clears it.
    let dead = t.path().join("dead");
    std::fs::create_dir(&dead).unwrap();
    let mut server = spawn_foreground(&safe, &dead, &[]);
    // Unmounted lazily whatever happens below (a dead mount outlives the test).
    struct Lazy(PathBuf);
    impl Drop for Lazy {
        fn drop(&mut self) {
            let _ = Command::new("umount")
                .arg("-l")
                .arg(&self.0)
                .stderr(Stdio::null())
                .status();
        }
    }
    let _lazy = Lazy(dead.clone());
    wait_for(&dead.join("latest"));
    std::fs::metadata(&dead).unwrap();
    server.kill().unwrap();
    server.wait().unwrap();
    one_line(
        fails(&["mount", s(&safe), s(&dead)]),
        "is a dead FUSE mount; run `disksafe umount",
    );
    ok(&["umount", s(&dead)]);
    ok(&["mount", s(&safe), s(&dead)]);
    assert!(dead.join("latest").exists());
    ok(&["umount", s(&dead)]);
}

#[test]
fn foreground_mount_unmounts_on_sigterm() {
    need_fuse!("foreground_mount_unmounts_on_sigterm");
    let t = tempfile::tempdir().unwrap();
    let a = t.path().join("a.img");
    std::fs::write(&a, vec![5u8; 300_000]).unwrap();
    let safe = t.path().join("safe");
    backup(&[s(&safe), s(&a)]);
    let mp = t.path().join("mp");
    std::fs::create_dir(&mp).unwrap();
    let mut child = spawn_foreground(&safe, &mp, &[]);
    let pid = child.id();
    let guard = StopOnDrop(&mut child, mp.clone());
    let img = mp.join("1/a.img/disk.img");
    wait_for(&img);
    assert_eq!(std::fs::read(&img).unwrap(), vec![5u8; 300_000]);
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let st = guard.0.wait().unwrap();
    assert!(st.success(), "{st:?}");
    assert!(!img.exists(), "unmounted after SIGTERM");
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
    assert!(!mounts.contains(s(&mp)), "no mount left");
}

#[test]
fn damaged_block_gives_eio_and_a_log_line_and_the_mount_stays_up() {
    need_fuse!("damaged_block_gives_eio_and_a_log_line_and_the_mount_stays_up");
    let t = tempfile::tempdir().unwrap();
    let a = t.path().join("a.img");
    let mut rng = StdRng::seed_from_u64(13);
    let mut data = vec![0u8; 2 << 20];
    rng.fill(&mut data[..]);
    std::fs::write(&a, &data).unwrap();
    let safe = t.path().join("safe");
    backup(&[s(&safe), "--compression", "0", s(&a)]);
    // Block 5 (64 KiB blocks, stored raw in order): flip a byte inside it.
    let pack = safe.join("packs/00000001.pack");
    flip_byte(&pack, 16 + 5 * (48 + 65536) + 48 + 100, 1);
    let m = Mounted::new(&safe, t.path(), &[]);
    let img = m.dir.join("1/a.img/disk.img");
    let fh = File::open(&img).unwrap();
    let mut buf = vec![0u8; 4096];
    let err = fh.read_exact_at(&mut buf, 5 * 65536 + 10).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO));
    // Other reads still succeed, before and after the damaged block.
    fh.read_exact_at(&mut buf, 0).unwrap();
    assert_eq!(buf, data[..4096]);
    fh.read_exact_at(&mut buf, 7 * 65536).unwrap();
    assert_eq!(buf, data[7 * 65536..7 * 65536 + 4096]);
    let log = m.log_text();
    assert!(
        log.contains("point 1, device a.img, offset 327680"),
        "log: {log}"
    );
}

/// Stops a `--foreground` server and its mount even when a test fails half-way.
struct StopOnDrop<'a>(&'a mut std::process::Child, PathBuf);

/// Starts `disksafe mount SAFE MP --foreground EXTRA..` as a child process.
fn spawn_foreground(safe: &Path, mp: &Path, extra: &[&str]) -> std::process::Child {
    Command::new(bin())
        .args(["mount", s(safe), s(mp), "--foreground"])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Waits (up to 10 s) for a path in a mount that is coming up.
fn wait_for(path: &Path) {
    let mut waited = 0;
    while !path.exists() {
        std::thread::sleep(Duration::from_millis(50));
        waited += 1;
        assert!(
            waited < 200,
            "mount did not come up ({} missing)",
            path.display()
        );
    }
}

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
        let _ = Command::new("umount").arg("-l").arg(&self.1).output();
    }
}

fn vm_rss_kib(pid: u32) -> u64 {
    let st = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    st.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn memory_stays_within_the_cache_on_a_1_tib_device_with_many_points() {
    need_fuse!("memory_stays_within_the_cache_on_a_1_tib_device_with_many_points");
    let t = tempfile::tempdir().unwrap();
    let big = t.path().join("big.img");
    let f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&big)
        .unwrap();
    f.set_len(1 << 40).unwrap();
    let mut rng = StdRng::seed_from_u64(14);
    let safe = t.path().join("safe");
    let mut regions = Vec::new();
    for _ in 0..24 {
        let off = rng.gen_range(0..(1u64 << 40) - (8 << 20)) & !4095;
        regions.push(off);
    }
    for (i, off) in regions.iter().enumerate() {
        let mut buf = vec![0u8; 4 << 20];
        rng.fill(&mut buf[..]);
        f.write_all_at(&buf, *off).unwrap();
        if i % 2 == 1 {
            backup(&[s(&safe), s(&big)]);
        }
    }
    let mp = t.path().join("mp");
    std::fs::create_dir(&mp).unwrap();
    let mut child = spawn_foreground(&safe, &mp, &["--cache", "32M"]);
    let pid = child.id();
    let guard = StopOnDrop(&mut child, mp.clone());
    wait_for(&mp.join("latest"));
    let base = vm_rss_kib(pid);
    // Read every data region at the last point, plus scattered reads at every point.
    let img = mp.join("12/big.img/disk.img");
    let fh = File::open(&img).unwrap();
    let mut buf = vec![0u8; 4 << 20];
    let mut src = vec![0u8; 4 << 20];
    for off in &regions {
        fh.read_exact_at(&mut buf, *off).unwrap();
        f.read_exact_at(&mut src, *off).unwrap();
        assert!(buf == src, "region at {off}");
    }
    for p in 1..=12 {
        let fh = File::open(mp.join(format!("{p}/big.img/disk.img"))).unwrap();
        for _ in 0..40 {
            let off = rng.gen_range(0..(1u64 << 40) - (1 << 20));
            fh.read_exact_at(&mut buf[..1 << 20], off).unwrap();
        }
    }
    let mut sink = vec![0u8; 1 << 20];
    let mut r = File::open(&img).unwrap();
    for _ in 0..256 {
        r.read_exact(&mut sink).unwrap();
    }
    let rss = vm_rss_kib(pid);
    drop((fh, r));
    eprintln!("server RSS: {base} KiB after mount, {rss} KiB after reading (cache 32 MiB)");
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    assert!(guard.0.wait().unwrap().success());
    assert!(
        rss < 32 * 1024 + 64 * 1024,
        "server RSS {rss} KiB (at start {base} KiB) exceeds the 32 MiB cache + 64 MiB"
    );
}

#[test]
fn allow_other_lets_others_in_but_keeps_images_private() {
    need_fuse!("allow_other_lets_others_in_but_keeps_images_private");
    let as_nobody = |args: &[&str]| {
        Command::new("runuser")
            .args(["-u", "nobody", "--"])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
    };
    if !is_root() || as_nobody(&["true"]).map(|ok| !ok).unwrap_or(true) {
        eprintln!(
            "SKIP allow_other_lets_others_in_but_keeps_images_private: needs root and runuser"
        );
        return;
    }
    let t = tempfile::tempdir().unwrap();
    // The mount points must be reachable by nobody.
    std::fs::set_permissions(
        t.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let a = t.path().join("a.img");
    std::fs::write(&a, vec![1u8; 200_000]).unwrap();
    let safe = t.path().join("safe");
    backup(&[s(&safe), s(&a)]);
    let private = Mounted::new(&safe, t.path(), &[]);
    assert!(
        !as_nobody(&["ls", s(&private.dir)]).unwrap(),
        "without --allow-other only the owner enters"
    );
    let shared = Mounted::new(&safe, t.path(), &["--allow-other"]);
    let img = shared.dir.join("1/a.img/disk.img");
    assert!(
        as_nobody(&["ls", s(&shared.dir.join("1/a.img"))]).unwrap(),
        "others can list"
    );
    assert!(
        !as_nobody(&["cat", s(&img)]).unwrap(),
        "raw images are the owner's only"
    );
    assert_eq!(
        std::fs::metadata(&img).unwrap().permissions().mode() & 0o777,
        0o400
    );
    assert_eq!(
        std::fs::read(&img).unwrap(),
        vec![1u8; 200_000],
        "the owner reads it"
    );
}

#[test]
fn root_unmounts_another_users_mount_it_may_not_enter() {
    need_fuse!("root_unmounts_another_users_mount_it_may_not_enter");
    let t = tempfile::tempdir().unwrap();
    let a = t.path().join("a.img");
    std::fs::write(&a, vec![3u8; 100_000]).unwrap();
    let safe = t.path().join("safe");
    backup(&[s(&safe), s(&a)]);
    let mp = t.path().join("mp");
    std::fs::create_dir(&mp).unwrap();
    // The safe and the mount point belong to nobody, who mounts without --allow-other.
    let nobody = 65534;
    let mut stack = vec![t.path().to_path_buf()];
    while let Some(p) = stack.pop() {
        std::os::unix::fs::chown(&p, Some(nobody), Some(nobody)).unwrap();
        if p.is_dir() {
            stack.extend(std::fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
        }
    }
    let run = is_root()
        .then(|| {
            Command::new("runuser")
                .args(["-u", "nobody", "--"])
                .arg(bin())
                .args(["mount", s(&safe), s(&mp)])
                .output()
                .ok()
        })
        .flatten();
    let mounted = run.as_ref().is_some_and(|o| o.status.success());
    // Where /dev/fuse is closed to other users (0600 on some machines), the mount
    // says so in one line rather than a bare "Permission denied".
    let closed = Command::new("runuser")
        .args(["-u", "nobody", "--", "test", "-w", "/dev/fuse"])
        .status()
        .is_ok_and(|st| !st.success());
    if let (Some(o), true) = (&run, closed) {
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!mounted);
        assert!(
            err.contains("cannot open /dev/fuse") && err.trim().lines().count() == 1,
            "{err}"
        );
    }
    if !mounted {
        eprintln!(
            "SKIP root_unmounts_another_users_mount_it_may_not_enter: needs root, runuser \
             and a /dev/fuse that other users may open"
        );
        return;
    }
    let listed = || {
        std::fs::read_to_string("/proc/self/mounts")
            .unwrap()
            .lines()
            .any(|l| l.split(' ').nth(1) == Some(s(&mp)))
    };
    assert!(listed(), "nobody's mount is up");
    assert!(std::fs::metadata(&mp).is_err(), "root may not enter it");
    ok(&["umount", s(&mp)]);
    assert!(!listed(), "root unmounted it");
}

#[test]
fn mount_right_after_umount_at_the_same_place_stays_up() {
    need_fuse!("mount_right_after_umount_at_the_same_place_stays_up");
    let t = tempfile::tempdir().unwrap();
    let a = t.path().join("a.img");
    let mut rng = StdRng::seed_from_u64(21);
    make_image(&a, 4 << 20, &mut rng);
    let safe = t.path().join("safe");
    backup(&[s(&safe), s(&a)]);
    let want = sha256_file(&a);
    let mp = t.path().join("mp");
    std::fs::create_dir(&mp).unwrap();
    let img = mp.join("1/a.img/disk.img");
    // The server of an unmounted mount must not take the next mount down with it as
    // it exits (it used to unmount the mount point by path once more).
    for round in 0..3 {
        ok(&["mount", s(&safe), s(&mp)]);
        assert_eq!(sha256_file(&img), want, "round {round}");
        ok(&["umount", s(&mp)]);
        assert!(!img.exists(), "round {round}: unmounted");
    }
    ok(&["mount", s(&safe), s(&mp)]);
    std::thread::sleep(Duration::from_millis(1500));
    let alive = img.exists();
    let _ = ds(&["umount", s(&mp)]);
    assert!(alive, "the last mount was taken down by an earlier server");
}

#[test]
fn file_trees_of_many_points_share_the_cache_budget() {
    need_fuse!("file_trees_of_many_points_share_the_cache_budget");
    let t = tempfile::tempdir().unwrap();
    // One ext4 volume with a 10 000-entry directory: listing it with attributes fills
    // a few MiB of parsed inodes and names per point, so 16 points would hold ~60 MiB
    // more than 4 points if every opened volume kept caches of its own.
    let src = t.path().join("src");
    std::fs::create_dir_all(src.join("many")).unwrap();
    for i in 0..10_000 {
        let name = format!("many/file-with-a-longish-name-{i:05}");
        std::fs::write(src.join(name), i.to_string()).unwrap();
    }
    let vol = t.path().join("vol.img");
    File::create(&vol).unwrap().set_len(64 << 20).unwrap();
    let o = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-N", "12000", "-d", s(&src), s(&vol)])
        .output()
        .expect("mkfs.ext4 (e2fsprogs) is needed");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let safe = t.path().join("safe");
    for _ in 0..16 {
        backup(&[s(&safe), s(&vol)]);
    }
    let mp = t.path().join("mp");
    std::fs::create_dir(&mp).unwrap();
    // A tree budget of 16 MiB (a quarter of --cache): full after about two trees.
    let mut child = spawn_foreground(&safe, &mp, &["--cache", "64M"]);
    let pid = child.id();
    let guard = StopOnDrop(&mut child, mp.clone());
    wait_for(&mp.join("latest"));
    let mut rss = Vec::new();
    for p in 1..=16 {
        let dir = mp.join(format!("{p}/vol.img/files/many"));
        let mut n = 0;
        for e in std::fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            assert!(e.metadata().unwrap().len() > 0);
            n += 1;
        }
        assert_eq!(n, 10_000, "point {p}");
        let one = std::fs::read_to_string(dir.join("file-with-a-longish-name-01234")).unwrap();
        assert_eq!(one, "1234", "point {p}");
        rss.push(vm_rss_kib(pid));
    }
    eprintln!("server RSS (KiB) after each tree walked: {rss:?}");
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    assert!(guard.0.wait().unwrap().success());
    let (after4, after16) = (rss[3], rss[15]);
    assert!(
        after16 < after4 + 24 * 1024,
        "RSS grew by {} KiB from 4 to 16 trees walked: the trees' caches are not bounded together",
        after16 - after4
    );
    assert!(after16 < 64 * 1024 + 64 * 1024, "RSS {after16} KiB");
}

/// Data extents (start, end), and (SEEK_DATA, SEEK_HOLE) answers at probes.
type Extents = Vec<(u64, u64)>;
type Answers = Vec<(Option<u64>, Option<u64>)>;

/// What SEEK_DATA / SEEK_HOLE must answer for bytes `start..start+len` of `dev`
/// (blocks of `bs`): data wherever a block has a non-zero byte, merged extents in the
/// image's offsets, the answers at `probes` (`None` for ENXIO), and the allocated bytes
/// stat reports (whole blocks, at most the range).
fn seek_oracle(
    dev: &[u8],
    start: u64,
    len: u64,
    bs: u64,
    probes: &[u64],
) -> (Extents, Answers, u64) {
    let end = start + len;
    let mut extents: Vec<(u64, u64)> = Vec::new();
    let mut blocks = 0;
    for (b, chunk) in dev.chunks(bs as usize).enumerate() {
        let (bstart, bend) = (b as u64 * bs, b as u64 * bs + chunk.len() as u64);
        let (from, to) = (bstart.max(start), bend.min(end));
        if from >= to || chunk.iter().all(|&x| x == 0) {
            continue;
        }
        blocks += 1;
        let (from, to) = (from - start, to - start);
        match extents.last_mut() {
            Some(e) if e.1 == from => e.1 = to,
            _ => extents.push((from, to)),
        }
    }
    let answers = probes
        .iter()
        .map(|&p| {
            if p >= len {
                return (None, None);
            }
            let data = extents.iter().find(|e| e.1 > p).map(|e| e.0.max(p));
            let hole = match extents.iter().find(|e| e.0 <= p && p < e.1) {
                Some(e) => e.1,
                None => p,
            };
            (data, Some(hole))
        })
        .collect();
    (extents, answers, (blocks * bs).min(len))
}

/// SEEK_DATA and SEEK_HOLE on `disk.img` and `partK.img` find exactly the blocks that
/// hold data at each point (a block with one non-zero byte is data; blocks zeroed at a
/// later point, and blocks past a smaller device's end, are holes), for a partition
/// that starts inside a block too; stat's blocks count the data blocks; `cp` then
/// copies a disk image byte-exact with its holes kept.
#[test]
fn images_report_their_holes_to_seek_data_and_seek_hole() {
    need_fuse!("images_report_their_holes_to_seek_data_and_seek_hole");
    let t = tempfile::tempdir().unwrap();
    let mut rng = StdRng::seed_from_u64(41);
    const BS: u64 = 65536;
    let mut dev = vec![0u8; 16 << 20];
    // MBR: partition 1 from sector 2049 (inside block 16) for 8 MiB, partition 2 at
    // 10 MiB for 4 MiB.
    for (i, (lba, sectors)) in [(2049u32, 16384u32), (20480, 8192)].iter().enumerate() {
        let e = 446 + 16 * i;
        dev[e + 4] = 0x83;
        dev[e + 8..e + 12].copy_from_slice(&lba.to_le_bytes());
        dev[e + 12..e + 16].copy_from_slice(&sectors.to_le_bytes());
    }
    dev[510] = 0x55;
    dev[511] = 0xAA;
    let parts = [(2049 * 512u64, 16384 * 512u64), (20480 * 512, 8192 * 512)];
    let mut fill = |dev: &mut Vec<u8>, from: usize, to: usize| rng.fill(&mut dev[from..to]);
    fill(&mut dev, 1536 << 10, 2560 << 10);
    dev[(5 << 20) + 100] = 1; // a block with one non-zero byte
    fill(&mut dev, 11 << 20, (11 << 20) + 200_000);
    let n = dev.len();
    fill(&mut dev, n - 1000, n);
    let src = t.path().join("disk");
    let safe = t.path().join("safe");
    let mut states = Vec::new();
    std::fs::write(&src, &dev).unwrap();
    backup(&[s(&safe), s(&src)]);
    states.push(dev.clone());
    // Point 2: half of the first region zeroed, data where there was a hole, the
    // lone byte cleared.
    dev[1536 << 10..2 << 20].fill(0);
    fill(&mut dev, 7 << 20, (7 << 20) + (512 << 10));
    dev[(5 << 20) + 100] = 0;
    std::fs::write(&src, &dev).unwrap();
    backup(&[s(&safe), s(&src)]);
    states.push(dev.clone());
    // Point 3: the device grows by a part of a block, data at its new end.
    dev.resize((17 << 20) + 5000, 0);
    let n = dev.len();
    fill(&mut dev, n - 3000, n);
    std::fs::write(&src, &dev).unwrap();
    backup(&[s(&safe), s(&src)]);
    states.push(dev.clone());

    let m = Mounted::new(&safe, t.path(), &[]);
    for (i, dev) in states.iter().enumerate() {
        let point = m.dir.join((i + 1).to_string()).join("disk");
        let mut images = vec![("disk.img".to_string(), 0, dev.len() as u64)];
        for (k, &(start, len)) in parts.iter().enumerate() {
            images.push((format!("part{}.img", k + 1), start, len));
        }
        for (name, start, len) in images {
            let mut probes: Vec<u64> = (0..40).map(|_| rng.gen_range(0..len)).collect();
            probes.extend([0, len - 1, len, len + 12345]);
            let (want, want_answers, alloc) = seek_oracle(dev, start, len, BS, &probes);
            let img = point.join(&name);
            let f = std::fs::File::open(&img).unwrap();
            let seek = |o, data| lseek(&f, o, data);
            let (got, answers) = (seek_extents(len, seek), seek_answers(&probes, seek));
            assert_eq!(got, want, "point {}, {name}: data extents", i + 1);
            for ((p, a), w) in probes.iter().zip(&answers).zip(&want_answers) {
                assert_eq!(a, w, "point {}, {name}: SEEK_DATA, SEEK_HOLE at {p}", i + 1);
            }
            let st = std::fs::metadata(&img).unwrap();
            use std::os::unix::fs::MetadataExt;
            assert_eq!(
                st.blocks(),
                alloc.div_ceil(512),
                "point {}, {name}: blocks",
                i + 1
            );
        }
    }
    // A user's copy: `cp` (which asks SEEK_DATA of files whose blocks are fewer than
    // their size) keeps the holes and every byte.
    let copy = t.path().join("copy.img");
    let out = Command::new("cp")
        .arg("--sparse=always")
        .arg(m.dir.join("3/disk/disk.img"))
        .arg(&copy)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::read(&copy).unwrap(), states[2]);
    use std::os::unix::fs::MetadataExt;
    let used = std::fs::metadata(&copy).unwrap().blocks() * 512;
    assert!(
        used < (4 << 20),
        "the copy keeps its holes: {used} bytes used"
    );
}

/// Walking the file trees of many points keeps the server within its cache: past 16
/// open trees the least recently used close (an NTFS tree holds a 128 KiB `$UpCase`
/// and more outside the cache budget; before, RSS grew ~200 KiB per point walked), and
/// a closed tree reopens with the same inode numbers: files of early points, and a
/// named stream looked up before the walk (its tree stays open), still read right.
/// Growth is measured over two later windows of 45 trees each: a tree kept open costs
/// every window, while the allocator's occasional step (a new arena's first pages,
/// 5.6 MiB once) lands in one.
#[test]
fn walking_the_trees_of_many_points_stays_within_the_cache() {
    need_fuse!("walking_the_trees_of_many_points_stays_within_the_cache");
    if !ntfs_tools() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let vol = t.path().join("ntfs.img");
    make_ntfs(&vol, 64 << 20, 512, 4096, |m| {
        std::fs::create_dir(m.join("d")).unwrap();
        for i in 0..50 {
            std::fs::write(m.join(format!("d/f{i}")), format!("file {i}\n")).unwrap();
        }
        std::fs::write(m.join("d/f0:side"), b"the side stream").unwrap();
    });
    let safe = t.path().join("safe");
    const POINTS: usize = 135;
    for _ in 0..POINTS {
        backup(&[s(&safe), s(&vol)]);
    }
    let mp = t.path().join("mp");
    std::fs::create_dir(&mp).unwrap();
    let mut child = spawn_foreground(&safe, &mp, &["--cache", "16M"]);
    let pid = child.id();
    let guard = StopOnDrop(&mut child, mp.clone());
    wait_for(&mp.join("latest"));
    let files = |p: usize| mp.join(format!("{p}/ntfs.img/files/d"));
    let mut side = File::open(files(1).join("f0:side")).unwrap();
    let mut rss = Vec::new();
    for p in 1..=POINTS {
        assert_eq!(
            std::fs::read_dir(files(p)).unwrap().count(),
            50,
            "point {p}"
        );
        rss.push(vm_rss_kib(pid));
    }
    // Early points' trees were closed: they reopen under the same numbers.
    for p in [2, 3, 17] {
        let got = std::fs::read_to_string(files(p).join("f7")).unwrap();
        assert_eq!(got, "file 7\n", "point {p}");
    }
    let mut b = String::new();
    side.read_to_string(&mut b).unwrap();
    assert_eq!(b, "the side stream");
    let again = std::fs::read_to_string(files(1).join("f0:side")).unwrap();
    assert_eq!(again, "the side stream");
    eprintln!(
        "server RSS (KiB) every 15 trees walked: {:?}",
        rss.iter().step_by(15).collect::<Vec<_>>()
    );
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    assert!(guard.0.wait().unwrap().success());
    let grew = |from: usize, to: usize| rss[to - 1].saturating_sub(rss[from - 1]);
    let (first, second) = (grew(45, 90), grew(90, 135));
    assert!(
        first.min(second) < 4 * 1024,
        "RSS grew by {first} KiB from 45 to 90 trees walked and by {second} KiB from 90 to 135"
    );
}

/// A read-only bind mount of a directory, undone (lazily: a server may still be
/// closing its files) when dropped.
struct ReadOnlyView(PathBuf);

impl ReadOnlyView {
    fn new(dir: &Path, at: &Path) -> Option<ReadOnlyView> {
        std::fs::create_dir_all(at).unwrap();
        if !run("mount", &["--bind", s(dir), s(at)]) {
            return None;
        }
        let view = ReadOnlyView(at.to_path_buf());
        run("mount", &["-o", "remount,bind,ro", s(at)]).then_some(view)
    }
}

impl Drop for ReadOnlyView {
    fn drop(&mut self) {
        run("umount", &["-l", s(&self.0)]);
    }
}

/// A safe on a read-only filesystem (evidence media, a read-only snapshot or copy)
/// lists, verifies, restores and mounts: a backup that closed cleanly leaves no
/// `safe.db-shm`, which SQLite's readers of a WAL index need and cannot create there.
/// A user who may not create it beside a writable safe is told why.
#[test]
fn safe_on_a_read_only_filesystem_is_read_as_it_is() {
    need_fuse!("safe_on_a_read_only_filesystem_is_read_as_it_is");
    if !is_root() {
        eprintln!("SKIP safe_on_a_read_only_filesystem_is_read_as_it_is: needs root (bind mounts)");
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let mut rng = StdRng::seed_from_u64(41);
    let img = t.path().join("d.img");
    let mut data = vec![0u8; 8 << 20];
    rng.fill(&mut data[..4 << 20]);
    std::fs::write(&img, &data).unwrap();
    let safe = t.path().join("safe");
    backup(&[s(&safe), &format!("d={}", s(&img))]);
    assert!(
        !safe.join("safe.db-shm").exists(),
        "a backup that closed cleanly leaves no safe.db-shm"
    );
    // On a writable filesystem, a user who may not create safe.db-shm there.
    let exe = t.path().join("disksafe");
    std::fs::copy(bin(), &exe).unwrap();
    for p in [t.path(), &exe] {
        std::fs::set_permissions(p, PermissionsExt::from_mode(0o755)).unwrap();
    }
    let o = Command::new("runuser")
        .args(["-u", "nobody", "--", s(&exe), "points", s(&safe)])
        .output();
    match o {
        Ok(o) if !o.status.success() => {
            let err = String::from_utf8_lossy(&o.stderr);
            assert!(
                err.contains("safe.db-shm") && err.contains("may not create"),
                "{err}"
            );
            assert_eq!(err.trim().lines().count(), 1, "{err}");
        }
        Ok(o) => panic!("nobody listed a safe it cannot read: {o:?}"),
        Err(e) => eprintln!("runuser not run ({e}): the permission case is not checked"),
    }
    let Some(view) = ReadOnlyView::new(&safe, &t.path().join("ro")) else {
        eprintln!(
            "SKIP safe_on_a_read_only_filesystem_is_read_as_it_is: no read-only bind mount here"
        );
        return;
    };
    let ro = view.0.clone();
    let ok = |args: &[&str]| {
        let o = ds(args);
        assert!(
            o.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).unwrap()
    };
    assert!(ok(&["points", s(&ro)]).contains("d (8.0 MiB)"));
    let o = ds(&["backup", s(&ro), &format!("d={}", s(&img))]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.trim().lines().count() == 1,
        "{err}"
    );
    assert!(err.contains("its filesystem is mounted read-only"), "{err}");
    ok(&["verify", s(&ro)]);
    let restored = t.path().join("r.img");
    ok(&["restore", s(&ro), "1", "d", s(&restored)]);
    assert_eq!(sha256_file(&restored), sha256_file(&img));
    let m = Mounted::logging(&ro, t.path(), &[], "disksafe=info");
    let first = sha256_file(&img);
    assert_eq!(sha256_file(&m.dir.join("1/d/disk.img")), first);
    // A backup through a writable path to the same safe while it is mounted: its
    // point is read from the changed index.
    rng.fill(&mut data[6 << 20..7 << 20]);
    std::fs::write(&img, &data).unwrap();
    let p2 = backup(&[s(&safe), &format!("d={}", s(&img))]);
    assert_eq!(
        sha256_file(&m.dir.join(format!("{p2}/d/disk.img"))),
        sha256_file(&img)
    );
    assert_eq!(sha256_file(&m.dir.join("1/d/disk.img")), first);
    assert!(m.log_text().contains("changed: reopening its index"));
    // While a writer holds the index open through the writable path (its WAL and
    // -shm exist, with a change not yet in safe.db), the mount reads through the WAL.
    let writer = rusqlite::Connection::open(safe.join("safe.db")).unwrap();
    writer.pragma_update(None, "wal_autocheckpoint", 0).unwrap();
    writer
        .execute_batch("CREATE TABLE scratch (x); INSERT INTO scratch VALUES (1);")
        .unwrap();
    assert!(m.dir.join(format!("{p2}/d")).is_dir());
    let p3 = m.dir.join(format!("{}", p2 + 1));
    assert!(!p3.exists());
    assert!(
        m.log_text()
            .contains("reading its index through the WAL again"),
        "{}",
        m.log_text()
    );
    assert_eq!(
        sha256_file(&m.dir.join(format!("{p2}/d/disk.img"))),
        sha256_file(&img)
    );
    drop(writer);
    drop(m);
    drop(view);
}

#[test]
fn readers_interrupted_by_signals_get_their_data_and_leave_the_log_clean() {
    need_fuse!("readers_interrupted_by_signals_get_their_data_and_leave_the_log_clean");
    let t = tempfile::tempdir().unwrap();
    let a = t.path().join("a.img");
    let mut rng = StdRng::seed_from_u64(29);
    let mut data = vec![0u8; 64 << 20];
    rng.fill(&mut data[..]);
    std::fs::write(&a, &data).unwrap();
    let safe = t.path().join("safe");
    backup(&[s(&safe), s(&a)]);
    let m = Mounted::new(&safe, t.path(), &[]);
    let out = t.path().join("out");
    // dd answers SIGUSR1 with a progress line and goes on: every signal that lands
    // while one of its direct (uncached) reads is with the server makes the kernel
    // send FUSE_INTERRUPT for that read.
    let mut dd = Command::new("dd")
        .arg(format!("if={}", s(&m.dir.join("1/a.img/disk.img"))))
        .arg(format!("of={}", s(&out)))
        .args(["bs=1M", "iflag=direct", "status=none"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // dd sets its handler before it opens its output (a signal before it would end it).
    while !out.exists() && dd.try_wait().unwrap().is_none() {
        std::thread::sleep(Duration::from_millis(1));
    }
    let mut signals = 0;
    while dd.try_wait().unwrap().is_none() && signals < 5000 {
        unsafe { libc::kill(dd.id() as i32, libc::SIGUSR1) };
        signals += 1;
        std::thread::sleep(Duration::from_millis(2));
    }
    let o = dd.wait_with_output().unwrap();
    assert!(
        o.status.success(),
        "dd: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(
        sha256_file(&out),
        sha256_file(&a),
        "after {signals} signals"
    );
    let log = m.log_text();
    assert!(
        !log.contains("ERROR") && !log.contains("WARN"),
        "after {signals} signals, the server's log: {log}"
    );
}
