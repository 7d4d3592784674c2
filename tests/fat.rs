//! FAT12/16/32 file trees through the mount, against the tree mtools (an independent
//! FAT implementation) wrote into images mkfs.vfat made: names, bytes and times.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use rand::{rngs::StdRng, Rng, SeedableRng};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// True when mkfs.vfat and mtools are installed and FUSE mounts work.
fn fat_tools() -> bool {
    let have = |c: &str| {
        Command::new(c)
            .arg("--version")
            .output()
            .map(|o| o.status.success() || !o.stdout.is_empty() || !o.stderr.is_empty())
            .unwrap_or(false)
    };
    if !have("mkfs.vfat") || !have("mcopy") {
        eprintln!("SKIP fat tests: mkfs.vfat or mcopy missing (packages dosfstools, mtools)");
        return false;
    }
    if !fuse_available() {
        eprintln!("SKIP fat tests: FUSE mounts unavailable");
        return false;
    }
    true
}

fn run(cmd: &str, args: &[&str], dir: Option<&Path>) -> String {
    let mut c = Command::new(cmd);
    c.args(args).env("LC_ALL", "C.UTF-8").env("TZ", "UTC");
    if let Some(d) = dir {
        c.current_dir(d);
    }
    let o = c.output().unwrap();
    assert!(
        o.status.success(),
        "{cmd} {args:?}: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).to_string()
}

/// (used, total) clusters from fsck.fat's summary line ("N files, USED/TOTAL clusters").
fn fsck_clusters(out: &str) -> (u64, u64) {
    let l = out.lines().last().unwrap();
    let counts = l.rsplit(", ").next().unwrap().trim_end_matches(" clusters");
    let (used, total) = counts.split_once('/').unwrap();
    (used.parse().unwrap(), total.parse().unwrap())
}

/// Sets a file's mtime to `secs` (even: FAT keeps 2-second steps).
fn set_mtime(p: &Path, secs: i64) {
    let f = std::fs::File::options().write(true).open(p).unwrap();
    f.set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs as u64))
        .unwrap();
}

/// Every file's (relative path, mtime seconds).
fn mtimes(root: &Path) -> Vec<(String, i64)> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let md = std::fs::metadata(&p).unwrap();
            if md.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(root).unwrap().to_string_lossy().to_string();
                out.push((rel, md.mtime()));
            }
        }
    }
    out.sort();
    out
}

/// The source tree: long and short names in every case, non-ASCII names, a directory
/// of 300 entries (several clusters), an empty file and directory, files from a byte
/// to megabytes; mtimes on even seconds.
fn make_source(root: &Path, rng: &mut StdRng) {
    std::fs::create_dir_all(root.join("Sub/deeper")).unwrap();
    std::fs::create_dir_all(root.join("Long Directory Name é")).unwrap();
    std::fs::create_dir_all(root.join("emptydir")).unwrap();
    for name in [
        "README.TXT",
        "lower.txt",
        "MiXeD.Txt",
        "NOEXT",
        "a.b.c.d",
        "été ☃.txt",
    ] {
        std::fs::write(root.join(name), name.as_bytes()).unwrap();
    }
    std::fs::write(root.join("empty"), b"").unwrap();
    let mut big = vec![0u8; 1_500_000];
    rng.fill(&mut big[..]);
    std::fs::write(root.join("Long Directory Name é/big file.bin"), &big).unwrap();
    for i in 0..300 {
        let mut data = vec![0u8; rng.gen_range(0..5000)];
        rng.fill(&mut data[..]);
        std::fs::write(root.join(format!("Sub/entry number {i}.dat")), &data).unwrap();
    }
    std::fs::write(root.join("Sub/deeper/ünïcödé file.txt"), b"deep").unwrap();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                set_mtime(&p, 1_600_000_000 + 2 * rng.gen_range(0..10_000_000i64));
            }
        }
    }
}

#[test]
fn fat_volumes_show_the_tree_mtools_wrote() {
    if !fat_tools() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let mut rng = StdRng::seed_from_u64(37);
    let src = t.path().join("src");
    make_source(&src, &mut rng);
    let want = tree_digest(&src);
    let want_times = mtimes(&src);
    // (FAT bits, size, extra mkfs.vfat options): 512- and 4096-byte sectors, clusters
    // from one sector to 16 KiB.
    let variants: [(&str, u64, &[&str]); 6] = [
        ("12", 4 << 20, &[]),
        ("16", 64 << 20, &[]),
        ("16", 64 << 20, &["-S", "4096"]),
        ("16", 128 << 20, &["-s", "32"]),
        ("32", 300 << 20, &[]),
        ("32", 300 << 20, &["-s", "1"]),
    ];
    let safe = t.path().join("safe");
    let mut devices = Vec::new();
    let mut clusters = Vec::new();
    for (i, (bits, size, extra)) in variants.iter().enumerate() {
        let img = t.path().join(format!("fat{bits}-{i}.img"));
        std::fs::File::create(&img).unwrap().set_len(*size).unwrap();
        let mut args = vec!["-F", bits];
        args.extend_from_slice(extra);
        args.push(s(&img));
        run("mkfs.vfat", &args, None);
        let mut copy = vec!["-s", "-m", "-i", s(&img)];
        let names: Vec<String> = std::fs::read_dir(&src)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .collect();
        copy.extend(names.iter().map(|n| n.as_str()));
        copy.push("::/");
        run("mcopy", &copy, Some(&src));
        clusters.push(fsck_clusters(&run("fsck.fat", &["-n", s(&img)], None)));
        devices.push(format!("v{i}={}", s(&img)));
    }
    let args: Vec<&str> = std::iter::once(s(&safe))
        .chain(devices.iter().map(|d| d.as_str()))
        .collect();
    backup(&args);
    let m = Mounted::new(&safe, t.path(), &[]);
    for (i, &fsck) in clusters.iter().enumerate() {
        let files = m.dir.join(format!("1/v{i}/files"));
        same_tree(&tree_digest(&files), &want, &format!("variant {i}"));
        assert_eq!(mtimes(&files), want_times, "mtimes, variant {i}");
        // df: clusters in all and in use as fsck.fat counts them.
        let [_, blocks, free, ..] = statvfs(&files);
        assert_eq!(
            (blocks - free, blocks),
            fsck,
            "used/total clusters, variant {i}"
        );
        // Names match whatever their case, as Linux's vfat matches them.
        assert_eq!(
            std::fs::read(files.join("readme.txt")).unwrap(),
            b"README.TXT"
        );
        assert_eq!(
            std::fs::read(files.join("SUB/Entry Number 7.DAT")).unwrap(),
            std::fs::read(src.join("Sub/entry number 7.dat")).unwrap()
        );
    }
    assert!(
        !m.log_text().contains("ERROR"),
        "no errors logged: {}",
        m.log_text()
    );
}

/// Files whose clusters are scattered (written into the holes deleted files left) read
/// back whole: the chains are followed, not assumed contiguous (mshowfat, mtools' own
/// view of the FAT, confirms they are scattered).
#[test]
fn fragmented_fat_files_follow_their_chains() {
    if !fat_tools() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let mut rng = StdRng::seed_from_u64(41);
    let src = t.path().join("src");
    std::fs::create_dir(&src).unwrap();
    let img = t.path().join("frag.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(16 << 20)
        .unwrap();
    run("mkfs.vfat", &["-F", "16", "-s", "1", s(&img)], None);
    // 250 files of 64 KiB nearly fill the volume; every other one is deleted, and the
    // large files written then can only go into the holes.
    let small: Vec<String> = (0..250).map(|i| format!("small{i:03}")).collect();
    for n in &small {
        let mut d = vec![0u8; 65536];
        rng.fill(&mut d[..]);
        std::fs::write(src.join(n), &d).unwrap();
    }
    let mut args = vec!["-i", s(&img)];
    args.extend(small.iter().map(|n| n.as_str()));
    args.push("::/");
    run("mcopy", &args, Some(&src));
    let gone: Vec<String> = small.iter().step_by(2).map(|n| format!("::/{n}")).collect();
    for n in small.iter().step_by(2) {
        std::fs::remove_file(src.join(n)).unwrap();
    }
    let mut args = vec!["-i", s(&img)];
    args.extend(gone.iter().map(|n| n.as_str()));
    run("mdel", &args, None);
    for i in 0..3 {
        let mut d = vec![0u8; 2_000_000 + i * 777];
        rng.fill(&mut d[..]);
        std::fs::write(src.join(format!("big{i}")), &d).unwrap();
        run(
            "mcopy",
            &["-i", s(&img), &format!("big{i}"), "::/"],
            Some(&src),
        );
    }
    let o = Command::new("mshowfat")
        .args(["-i", s(&img), "::/big1"])
        .output()
        .unwrap();
    let ranges = String::from_utf8_lossy(&o.stdout).matches('<').count();
    assert!(
        ranges > 10,
        "big1 is scattered over {ranges} cluster ranges"
    );
    run("fsck.fat", &["-n", s(&img)], None);
    let safe = t.path().join("safe");
    backup(&[s(&safe), &format!("frag={}", s(&img))]);
    let m = Mounted::new(&safe, t.path(), &[]);
    same_tree(
        &tree_digest(&m.dir.join("1/frag/files")),
        &tree_digest(&src),
        "fragmented",
    );
}

/// exFAT, filled through exfat-fuse (an independent implementation) on a loop device
/// from the same generated tree plus a file fragmented by interleaved appends (a FAT
/// chain, where whole files are contiguous): bytes, names (any case), mtimes and the
/// free space equal exfat-fuse's view of the same volume.
#[test]
fn exfat_volume_shows_the_tree_exfat_fuse_wrote() {
    if !fuse_available()
        || Command::new("mkfs.exfat").arg("-V").output().is_err()
        || Command::new("mount.exfat-fuse").arg("-V").output().is_err()
    {
        eprintln!("SKIP exfat: needs FUSE, root, exfatprogs and exfat-fuse");
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let mut rng = StdRng::seed_from_u64(41);
    let src = t.path().join("src");
    make_source(&src, &mut rng);
    let img = t.path().join("exfat.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    assert!(Command::new("mkfs.exfat")
        .arg(&img)
        .output()
        .unwrap()
        .status
        .success());
    let mut loops = Loops::default();
    let Some(dev) = loops.attach(&img, 0, 64 << 20) else {
        eprintln!("SKIP exfat: no loop devices");
        return;
    };
    let kmnt = t.path().join("exfat-fuse");
    std::fs::create_dir(&kmnt).unwrap();
    let with_fuse = |opts: &[&str], f: &mut dyn FnMut(&Path)| {
        let mut args = opts.to_vec();
        args.extend([dev.as_str(), s(&kmnt)]);
        assert!(Command::new("mount.exfat-fuse")
            .args(&args)
            .output()
            .unwrap()
            .status
            .success());
        f(&kmnt);
        assert!(Command::new("umount")
            .arg(&kmnt)
            .status()
            .unwrap()
            .success());
    };
    with_fuse(&[], &mut |m| {
        assert!(Command::new("cp")
            .args(["-r", "--preserve=timestamps"])
            .arg(src.join("."))
            .arg(m)
            .status()
            .unwrap()
            .success());
        std::fs::write(m.join("straße.txt"), b"sharp s").unwrap();
        // Interleaved appends leave "frag" in pieces: read through the FAT.
        let mut a = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(m.join("frag"))
            .unwrap();
        for i in 0..40 {
            let mut d = vec![0u8; 50_000];
            rng.fill(&mut d[..]);
            std::io::Write::write_all(&mut a, &d).unwrap();
            std::fs::write(m.join(format!("Sub/filler {i}")), &d[..9000]).unwrap();
        }
    });
    let safe = t.path().join("safe");
    backup(&[s(&safe), &format!("v={}", s(&img))]);
    let m = Mounted::new(&safe, t.path(), &[]);
    let files = m.dir.join("1/v/files");
    let mut want = None;
    with_fuse(&["-o", "ro"], &mut |k| {
        want = Some((tree_digest(k), mtimes(k), statvfs(k)));
    });
    let (want_tree, want_times, want_df) = want.unwrap();
    assert!(want_tree.len() > 340, "{} entries", want_tree.len());
    same_tree(&tree_digest(&files), &want_tree, "exfat");
    assert_eq!(mtimes(&files), want_times, "mtimes");
    // Free bytes as exfat-fuse counts them (its total is the whole volume, the
    // kernel's and disksafe's the cluster heap).
    let [bs, _, free, ..] = statvfs(&files);
    assert_eq!(bs * free, want_df[0] * want_df[2], "free space");
    // Names match whatever their case, as Linux's exfat matches them.
    assert_eq!(
        std::fs::read(files.join("readme.txt")).unwrap(),
        b"README.TXT"
    );
    assert_eq!(
        std::fs::read(files.join("SUB/DEEPER/ÜNÏCÖDÉ FILE.TXT")).unwrap(),
        b"deep"
    );
    // Through the volume's up-case table: ß has no one-character capital, so
    // "STRASSE" is another name.
    assert_eq!(std::fs::read(files.join("STRAßE.TXT")).unwrap(), b"sharp s");
    assert!(!files.join("STRASSE.TXT").exists());
    let log = m.log_text();
    assert!(!log.contains("ERROR") && !log.contains("WARN"), "{log}");
}

/// `backup --skip-free` on FAT12/16/32 and exFAT volumes made over random junk: a
/// deleted file's clusters (the FAT's zero entries, exFAT's bitmap) are left out.
/// Restored, `fsck.fat -n` / `fsck.exfat -n` find the volume clean, mtools (or
/// exfat-fuse) read the source tree back from it, no more bytes differ than the free
/// clusters fsck counts, and most of the deleted file's bytes were left out.
#[test]
fn skip_free_leaves_out_the_clusters_fat_and_exfat_mark_free() {
    if !fat_tools() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let mut rng = StdRng::seed_from_u64(43);
    let src = t.path().join("src");
    make_source(&src, &mut rng);
    let want = tree_digest(&src);
    let mut deleted = vec![0u8; 3 << 20];
    rng.fill(&mut deleted[..]);
    let junk_file = t.path().join("deleted.bin");
    std::fs::write(&junk_file, &deleted).unwrap();
    let left_out = |img: &Path, restored: &Path| -> u64 {
        let (a, b) = (
            std::fs::read(img).unwrap(),
            std::fs::read(restored).unwrap(),
        );
        assert_eq!(a.len(), b.len());
        let mut n = 0;
        for (x, y) in a.chunks(4096).zip(b.chunks(4096)) {
            if x != y {
                assert!(
                    y.iter().all(|&v| v == 0),
                    "a block differs but is not zeros"
                );
                n += x.len() as u64;
            }
        }
        n
    };
    for (fat, size) in [("12", 8u64 << 20), ("16", 32 << 20), ("32", 64 << 20)] {
        let img = t.path().join(format!("fat{fat}.img"));
        let mut junk = vec![0u8; size as usize];
        rng.fill(&mut junk[..]);
        std::fs::write(&img, &junk).unwrap();
        run("mkfs.vfat", &["-F", fat, s(&img)], None);
        // The deleted file first, so its clusters lie among the kept ones' neighbours.
        run(
            "mcopy",
            &["-i", s(&img), s(&junk_file), "::deleted.bin"],
            None,
        );
        if fat != "12" {
            let entries: Vec<String> = std::fs::read_dir(&src)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            let mut args = vec!["-s", "-i", s(&img)];
            args.extend(entries.iter().map(String::as_str));
            args.push("::");
            run("mcopy", &args, Some(&src));
        }
        run("mdel", &["-i", s(&img), "::deleted.bin"], None);
        let dir = t.path().join(format!("run{fat}"));
        std::fs::create_dir(&dir).unwrap();
        let (_, _, restored) = backup_with_and_without_skip_free(&img, "vol", &dir);
        let fsck = run("fsck.fat", &["-n", "-v", s(&restored)], None);
        let (used, total) = fsck_clusters(&fsck);
        let cluster: u64 = fsck
            .lines()
            .find_map(|l| l.trim().strip_suffix(" bytes per cluster"))
            .expect("fsck.fat -v names the cluster size")
            .trim()
            .parse()
            .unwrap();
        let out = t.path().join(format!("out{fat}"));
        std::fs::create_dir(&out).unwrap();
        if fat != "12" {
            run(
                "mcopy",
                &["-s", "-n", "-i", s(&restored), "::*", s(&out)],
                None,
            );
            same_tree(&tree_digest(&out), &want, &format!("FAT{fat} restored"));
        }
        let gone = left_out(&img, &restored);
        eprintln!(
            "FAT{fat}: {gone} bytes left out, {} clusters free",
            total - used
        );
        assert!(
            gone <= (total - used) * cluster,
            "FAT{fat}: only free clusters"
        );
        assert!(
            gone * 10 >= deleted.len() as u64 * 8,
            "FAT{fat}: {gone} bytes left out"
        );
    }
}

/// [`skip_free_leaves_out_the_clusters_fat_and_exfat_mark_free`] for exFAT: the tree
/// and a deleted file written by exfat-fuse over random junk; restored, `fsck.exfat
/// -n` finds it clean, exfat-fuse reads the tree back, and the deleted bytes are gone.
#[test]
fn skip_free_leaves_out_the_clusters_exfat_marks_free() {
    if !fuse_available()
        || Command::new("mkfs.exfat").arg("-V").output().is_err()
        || Command::new("mount.exfat-fuse").arg("-V").output().is_err()
    {
        eprintln!("SKIP exfat skip-free: needs FUSE, root, exfatprogs and exfat-fuse");
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let mut rng = StdRng::seed_from_u64(47);
    let src = t.path().join("src");
    make_source(&src, &mut rng);
    let img = t.path().join("exfat.img");
    let mut junk = vec![0u8; 48 << 20];
    rng.fill(&mut junk[..]);
    std::fs::write(&img, &junk).unwrap();
    run("mkfs.exfat", &[s(&img)], None);
    let kmnt = t.path().join("k");
    std::fs::create_dir(&kmnt).unwrap();
    let with_fuse = |img: &Path, ro: &str, f: &mut dyn FnMut(&Path)| -> bool {
        let mut loops = Loops::default();
        let Some(dev) = loops.attach(img, 0, 48 << 20) else {
            return false;
        };
        run("mount.exfat-fuse", &["-o", ro, &dev, s(&kmnt)], None);
        f(&kmnt);
        run("umount", &[s(&kmnt)], None);
        true
    };
    let mut deleted = vec![0u8; 4 << 20];
    rng.fill(&mut deleted[..]);
    let wrote = with_fuse(&img, "rw", &mut |m| {
        std::fs::write(m.join("deleted.bin"), &deleted).unwrap();
        run("cp", &["-r", &format!("{}/.", s(&src)), s(m)], None);
        std::fs::remove_file(m.join("deleted.bin")).unwrap();
    });
    if !wrote {
        eprintln!("SKIP exfat skip-free: no loop devices");
        return;
    }
    let (_, _, restored) = backup_with_and_without_skip_free(&img, "vol", t.path());
    run("fsck.exfat", &["-n", s(&restored)], None);
    // Compared before exfat-fuse mounts the copy (a mount stamps the volume's flags).
    let (a, b) = (
        std::fs::read(&img).unwrap(),
        std::fs::read(&restored).unwrap(),
    );
    let gone = a
        .chunks(4096)
        .zip(b.chunks(4096))
        .filter(|(x, y)| x != y)
        .inspect(|(_, y)| {
            assert!(
                y.iter().all(|&v| v == 0),
                "a block differs but is not zeros"
            )
        })
        .count() as u64
        * 4096;
    let mut got = None;
    with_fuse(&restored, "ro", &mut |m| got = Some(tree_digest(m)));
    same_tree(&got.unwrap(), &tree_digest(&src), "exFAT restored");
    eprintln!("exFAT: {gone} bytes left out");
    assert!(
        gone >= deleted.len() as u64 * 8 / 10,
        "{gone} bytes left out"
    );
}

/// Swap space over an old FAT volume (mkswap keeps a device's boot sector when it has
/// a partition table to spare): the FAT still parses, but its "free" clusters may hold
/// a hibernation image, so `--skip-free` leaves nothing out of it.
#[test]
fn skip_free_leaves_swap_over_an_old_fat_whole() {
    if !fat_tools() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let mut rng = StdRng::seed_from_u64(53);
    let img = t.path().join("swap.img");
    let mut junk = vec![0u8; 40 << 20];
    rng.fill(&mut junk[..]);
    std::fs::write(&img, &junk).unwrap();
    run("mkfs.vfat", &["-F", "32", s(&img)], None);
    // mkswap's header: the signature ends the first 4 KiB page (FAT32's reserved
    // sectors, which hold nothing there).
    let f = std::fs::File::options().write(true).open(&img).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, b"SWAPSPACE2", 4096 - 10).unwrap();
    drop(f);
    let safe = t.path().join("safe");
    let o = ds(&[
        "backup",
        s(&safe),
        &format!("swap={}", s(&img)),
        "--skip-free",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(!err.contains("recorded as zeros"), "{err}");
    let restored = t.path().join("restored.img");
    ok(&["restore", s(&safe), "1", "swap", s(&restored)]);
    assert!(std::fs::read(&restored).unwrap() == std::fs::read(&img).unwrap());
}
