//! Btrfs file trees through the mount against the kernel's own read-only mount of the
//! same image (`subvolid=5`, the top level disksafe shows): names, types, modes,
//! owners, sizes, block counts, times with nanoseconds, device numbers, link targets,
//! bytes, holes, xattrs and ACLs, inode flags. The images are filled by the kernel:
//! subvolumes and a snapshot that has since diverged, extents compressed with zlib,
//! LZO and zstd (inline and regular), preallocated and punched files, a directory of
//! 3000 entries (a tree several levels deep on small nodes), each checksum type.

mod common;

use std::fs::File;
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::process::Command;

use common::*;
use rand::{rngs::StdRng, Rng, SeedableRng};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn btrfs(args: &[&str]) {
    let o = Command::new("btrfs").args(args).output().unwrap();
    assert!(
        o.status.success(),
        "btrfs {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Writes `len` bytes that compress well (text-like) or not at all.
fn write_data(p: &Path, len: usize, compressible: bool, rng: &mut StdRng) {
    let mut data = vec![0u8; len];
    if compressible {
        let words: [&[u8]; 6] = [b"block ", b"safe ", b"point ", b"extent ", b"tree ", b"\n"];
        let mut at = 0;
        while at < len {
            let w = words[rng.gen_range(0..words.len())];
            let n = w.len().min(len - at);
            data[at..at + n].copy_from_slice(&w[..n]);
            at += n;
        }
    } else {
        rng.fill(&mut data[..]);
    }
    std::fs::write(p, &data).unwrap();
}

/// Fills a mounted volume: the layouts every filesystem's test has, then btrfs's own.
fn fill(root: &Path, rng: &mut StdRng) {
    fill_posix(root, 4 << 20, rng);
    // Each compression algorithm, set per file: large files (regular compressed
    // extents of up to 128 KiB) and small ones (compressed inline in the tree).
    let zipped = root.join("zipped");
    std::fs::create_dir(&zipped).unwrap();
    for alg in ["zlib", "lzo", "zstd"] {
        for (name, len) in [("big", 700_000), ("small", 1500)] {
            let p = zipped.join(format!("{alg}-{name}"));
            File::create(&p).unwrap();
            btrfs(&["property", "set", s(&p), "compression", alg]);
            write_data(&p, len, true, rng);
        }
    }
    assert!(run("chattr", &["+c", s(&zipped)]));
    write_data(&root.join("random"), 3 << 20, false, rng);
    write_data(&root.join("tiny"), 100, false, rng);
    // A file shared by a reflink copy, then partly overwritten.
    let (random, reflinked) = (root.join("random"), root.join("reflinked"));
    assert!(run("cp", &["--reflink=always", s(&random), s(&reflinked)]));
    let r = File::options().write(true).open(&reflinked).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&r, &[9u8; 10000], 1 << 20).unwrap();
    drop(r);
    // No copy-on-write (set while the file is empty).
    let nocow = root.join("nocow");
    File::create(&nocow).unwrap();
    assert!(run("chattr", &["+C", s(&nocow)]));
    write_data(&nocow, 100_000, false, rng);
    // Subvolumes: one with its own files, a snapshot of it, then the source changed
    // (the snapshot shares the unchanged nodes and keeps the old ones).
    let sub = root.join("sub");
    btrfs(&["subvolume", "create", s(&sub)]);
    make_tree(&sub.join("data"), 40, rng);
    write_data(&sub.join("log"), 300_000, true, rng);
    btrfs(&["subvolume", "snapshot", s(&sub), s(&root.join("snap"))]);
    write_data(&sub.join("log"), 200_000, false, rng);
    std::fs::remove_dir_all(sub.join("data")).unwrap();
    std::fs::write(sub.join("after-snapshot"), b"new").unwrap();
}

fn check(name: &str, mkfs_opts: &[&str]) {
    // Size and block size as the kernel reports them; its free counts come from
    // in-memory reservations this reader does not model.
    check_against_kernel(
        "btrfs",
        name,
        400 << 20,
        mkfs_opts,
        "loop,ro,subvolid=5",
        2,
        fill,
    );
}

#[test]
fn btrfs_default_layout() {
    check("default", &[]);
}

#[test]
fn btrfs_small_nodes_explicit_holes_xxhash() {
    check(
        "4k-nodes-xxhash",
        &["-n", "4096", "-O", "^no-holes", "--csum", "xxhash"],
    );
}

#[test]
fn btrfs_single_metadata_sha256() {
    check("single-sha256", &["-m", "single", "--csum", "sha256"]);
}

#[test]
fn btrfs_blake2_mixed_groups() {
    check("mixed-blake2", &["-M", "--csum", "blake2"]);
}

/// Makes a btrfs image of `size` bytes from a generated tree with mkfs.btrfs
/// `--rootdir` (no mount needed); `None` without btrfs-progs.
fn rootdir_image(dir: &Path, size: u64, opts: &[&str]) -> Option<Vec<u8>> {
    if Command::new("mkfs.btrfs").arg("-V").output().is_err() {
        eprintln!("SKIP: needs mkfs.btrfs (btrfs-progs)");
        return None;
    }
    let src = dir.join("src");
    let mut rng = StdRng::seed_from_u64(11);
    make_tree(&src, 40, &mut rng);
    let many = src.join("many");
    std::fs::create_dir(&many).unwrap();
    for i in 0..600 {
        std::fs::write(many.join(format!("entry-{i:04}")), i.to_string()).unwrap();
    }
    let img = dir.join("seed.img");
    File::create(&img).unwrap().set_len(size).unwrap();
    let mut args = vec!["-q", "-f", "-U", "6d2d8e3c-0f4b-4b1e-9a57-2f0c4c9b1a01"];
    args.extend_from_slice(opts);
    args.extend_from_slice(&["--rootdir", s(&src), s(&img)]);
    assert!(run("mkfs.btrfs", &args), "mkfs.btrfs {args:?}");
    Some(std::fs::read(&img).unwrap())
}

/// Offsets of the tree nodes in an image (crc32c checksums): blocks of `nodesize`
/// carrying the filesystem's id and a checksum that matches.
fn nodes(img: &[u8], nodesize: usize) -> Vec<usize> {
    let fsid = &img[0x10020..0x10030];
    (0..img.len() / nodesize)
        .map(|k| k * nodesize)
        .filter(|&o| {
            let b = &img[o..o + nodesize];
            &b[0x20..0x30] == fsid && b[..4] == crc32c::crc32c(&b[32..]).to_le_bytes()
        })
        .collect()
}

fn reseal(node: &mut [u8]) {
    let c = crc32c::crc32c(&node[32..]).to_le_bytes();
    node[..4].copy_from_slice(&c);
}

#[test]
fn btrfs_damaged_nodes_give_errors_not_panics() {
    let t = tempfile::tempdir().unwrap();
    let Some(base) = rootdir_image(t.path(), 24 << 20, &["-M", "-n", "4096"]) else {
        return;
    };
    let clean = disksafe::ntfs_ext::walk_everything(base.clone(), 4096).expect("walks");
    assert!(clean > 600, "{clean} nodes walked");
    let found = nodes(&base, 4096);
    assert!(found.len() > 10, "{} tree nodes found", found.len());
    let mut rng = StdRng::seed_from_u64(5);
    for round in 0..200 {
        let mut d = base.clone();
        let at = found[rng.gen_range(0..found.len())];
        for _ in 0..rng.gen_range(1..8) {
            // Mostly the header and item table, where the offsets and counts are.
            let o = if rng.gen_bool(0.7) {
                rng.gen_range(0x20..600)
            } else {
                rng.gen_range(0x20..4096)
            };
            d[at + o] = rng.gen();
        }
        // Half the rounds re-seal the checksum, so the damage reaches the node and
        // item parsers instead of stopping at the checksum.
        if round % 2 == 0 {
            reseal(&mut d[at..at + 4096]);
        }
        let _ = disksafe::ntfs_ext::walk_everything(d, 4096);
    }
}

#[test]
fn btrfs_dup_metadata_survives_one_damaged_copy() {
    let t = tempfile::tempdir().unwrap();
    let Some(base) = rootdir_image(t.path(), 120 << 20, &["-m", "dup"]) else {
        return;
    };
    let clean = disksafe::ntfs_ext::walk_everything(base.clone(), 4096).expect("walks");
    // The root tree's root node, stored twice (DUP): both copies found by address.
    let le64 = |o: usize| u64::from_le_bytes(base[o..o + 8].try_into().unwrap());
    let (root, nodesize) = (le64(0x10050), le32(&base, 0x10094) as usize);
    let copies: Vec<usize> = nodes(&base, nodesize)
        .into_iter()
        .filter(|&o| le64(o + 0x30) == root)
        .collect();
    assert_eq!(copies.len(), 2, "two copies of the root tree's root");
    // One copy damaged: the other serves, the tree is whole.
    let mut one = base.clone();
    one[copies[0] + 200] ^= 0xFF;
    assert_eq!(
        disksafe::ntfs_ext::walk_everything(one.clone(), 4096).expect("walks"),
        clean
    );
    // The primary superblock damaged: the mirror at 64 MiB describes the same tree.
    let mut sb = base.clone();
    sb[0x10000 + 0x50] ^= 0x01;
    assert_eq!(
        disksafe::ntfs_ext::walk_everything(sb, 4096).expect("walks from the mirror"),
        clean
    );
    // Both damaged: an error naming the node, never a tree made of damaged bytes.
    one[copies[1] + 200] ^= 0xFF;
    let e = disksafe::ntfs_ext::walk_everything(one, 4096).expect_err("both copies bad");
    assert!(e.to_string().contains(&format!("node at {root}")), "{e}");
}

fn le32(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
}

fn fsync(p: &Path) {
    File::open(p).unwrap().sync_all().unwrap();
}

/// Under a mount that commits only when told (`commit=3600`), after a `sync`: the
/// changes each test case fsyncs, which only the fsync log holds until the next commit.
fn fsynced_changes(root: &Path, rng: &mut StdRng) {
    let base = root.join("base");
    // Appended, overwritten in the middle, truncated, created (large and inline).
    let mut f = File::options()
        .append(true)
        .open(base.join("append.log"))
        .unwrap();
    std::io::Write::write_all(&mut f, &[b'a'; 50_000]).unwrap();
    f.sync_all().unwrap();
    drop(f);
    let big = File::options().write(true).open(base.join("big")).unwrap();
    let mut chunk = vec![0u8; 12288];
    rng.fill(&mut chunk[..]);
    std::os::unix::fs::FileExt::write_all_at(&big, &chunk, 1 << 20).unwrap();
    big.sync_all().unwrap();
    drop(big);
    let t = File::options()
        .write(true)
        .open(base.join("trunc"))
        .unwrap();
    t.set_len(10_000).unwrap();
    t.sync_all().unwrap();
    drop(t);
    write_data(&base.join("new-file"), 200_000, true, rng);
    fsync(&base.join("new-file"));
    fsync(&base);
    std::fs::write(base.join("small"), b"a small new file, kept inline").unwrap();
    fsync(&base.join("small"));
    // A new directory with a file in it; a rename; an unlink; a hard link.
    std::fs::create_dir(root.join("newdir")).unwrap();
    write_data(&root.join("newdir/inner"), 10_000, false, rng);
    fsync(&root.join("newdir/inner"));
    std::fs::rename(base.join("dir/f3"), base.join("dir/f3-renamed")).unwrap();
    fsync(&base.join("dir/f3-renamed"));
    std::fs::remove_file(base.join("dir/f7")).unwrap();
    fsync(&base.join("dir"));
    std::fs::hard_link(base.join("link-src"), base.join("link-dst")).unwrap();
    fsync(&base.join("link-src"));
    // Xattrs added and removed.
    set_xattr(&base.join("xattr"), "user.new", b"added after the commit");
    assert!(run("setfattr", &["-x", "user.b", s(&base.join("xattr"))]));
    fsync(&base.join("xattr"));
    // In another subvolume.
    let mut f = File::options()
        .append(true)
        .open(root.join("sub/s.log"))
        .unwrap();
    std::io::Write::write_all(&mut f, &[b's'; 30_000]).unwrap();
    f.sync_all().unwrap();
    drop(f);
    // The atomic-save pattern (write a temporary, fsync it, rename it over the
    // target, fsync the directory), as editors and databases replace files.
    write_data(&base.join("config.tmp"), 3000, true, rng);
    fsync(&base.join("config.tmp"));
    std::fs::rename(base.join("config.tmp"), base.join("config")).unwrap();
    fsync(&base);
    // A file moved to another directory; a tree removed, its parent fsynced; a new
    // subdirectory, its parent fsynced; many new files in one directory.
    std::fs::rename(base.join("dir/f11"), root.join("newdir/moved")).unwrap();
    fsync(&root.join("newdir/moved"));
    std::fs::remove_dir_all(base.join("doomed")).unwrap();
    fsync(&base);
    std::fs::create_dir(base.join("dir/sub")).unwrap();
    fsync(&base.join("dir"));
    let many = root.join("many");
    std::fs::create_dir(&many).unwrap();
    for i in 0..400 {
        std::fs::write(many.join(format!("logged-entry-{i:04}")), i.to_string()).unwrap();
    }
    fsync(&many);
    for i in (0..400).step_by(7) {
        fsync(&many.join(format!("logged-entry-{i:04}")));
    }
    // Preallocated past the end; a compressed file overwritten in the middle.
    let pre = File::options()
        .write(true)
        .open(base.join("append.log"))
        .unwrap();
    let rc = unsafe { libc::fallocate(pre.as_raw_fd(), libc::FALLOC_FL_KEEP_SIZE, 0, 1 << 20) };
    assert_eq!(rc, 0);
    pre.sync_all().unwrap();
    drop(pre);
    let z = File::options()
        .write(true)
        .open(base.join("zipped"))
        .unwrap();
    std::os::unix::fs::FileExt::write_all_at(&z, &[b'z'; 70_000], 100_000).unwrap();
    z.sync_all().unwrap();
    drop(z);
    // Written and never fsynced: in no log, so after the crash in neither view.
    std::fs::write(base.join("unsynced"), b"lost").unwrap();
}

/// What the changes above start from, committed.
fn committed_base(root: &Path, rng: &mut StdRng) {
    let base = root.join("base");
    std::fs::create_dir_all(base.join("dir")).unwrap();
    for i in 0..20 {
        std::fs::write(base.join(format!("dir/f{i}")), format!("file {i}")).unwrap();
    }
    write_data(&base.join("append.log"), 100_000, true, rng);
    write_data(&base.join("big"), 2 << 20, false, rng);
    write_data(&base.join("trunc"), 500_000, false, rng);
    std::fs::write(base.join("link-src"), b"linked").unwrap();
    let x = base.join("xattr");
    std::fs::write(&x, b"xattrs").unwrap();
    for n in ["a", "b", "c"] {
        set_xattr(&x, &format!("user.{n}"), n.as_bytes());
    }
    write_data(&base.join("config"), 2000, true, rng);
    write_data(&base.join("zipped"), 400_000, true, rng);
    make_tree(&base.join("doomed"), 30, rng);
    btrfs(&["subvolume", "create", s(&root.join("sub"))]);
    write_data(&root.join("sub/s.log"), 40_000, true, rng);
}

#[test]
fn btrfs_fsync_log_is_replayed_like_the_kernel() {
    if !mkfs_ready("btrfs", "fsync log") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let img = t.path().join("live.img");
    File::create(&img).unwrap().set_len(160 << 20).unwrap();
    assert!(run("mkfs.btrfs", &["-q", "-f", s(&img)]));
    let copy = t.path().join("crashed.img");
    let kmnt = t.path().join("kernel");
    let mut rng = StdRng::seed_from_u64(21);
    let opts = "loop,commit=3600,compress=zstd";
    let copied = kernel_mount("btrfs", &img, &kmnt, opts, |m| {
        committed_base(m, &mut rng);
        assert!(run("sync", &["-f", s(m)]));
        fsynced_changes(m, &mut rng);
        // The image as a power cut would leave it: the fsyncs are on it, no commit.
        std::fs::copy(&img, &copy).unwrap();
    });
    if copied.is_none() {
        eprintln!("SKIP btrfs fsync log: the kernel does not mount btrfs here");
        return;
    }
    let raw = std::fs::read(&copy).unwrap();
    let log_root = u64::from_le_bytes(raw[0x10060..0x10068].try_into().unwrap());
    assert_ne!(log_root, 0, "the copy carries an fsync log");
    damaged_logs_give_errors_not_panics(&raw);
    drop(raw);
    let safe = t.path().join("safe");
    backup(&[s(&safe), &format!("vol={}", s(&copy))]);
    // --skip-free keeps what the log holds: the restored copy replays as the
    // original does (below). 4 KiB blocks, so the gaps between nodes count.
    let part = t.path().join("part");
    let src = format!("vol={}", s(&copy));
    let o = ds(&[
        "backup",
        s(&part),
        &src,
        "--skip-free",
        "--block-size",
        "4K",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let restored = t.path().join("restored.img");
    ok(&["restore", s(&part), "1", "vol", s(&restored)]);
    let (a, b) = (
        std::fs::read(&copy).unwrap(),
        std::fs::read(&restored).unwrap(),
    );
    let gone = a
        .chunks(4096)
        .zip(b.chunks(4096))
        .filter(|(x, y)| x != y)
        .count();
    assert!(gone > 100, "{gone} blocks left out");
    drop((a, b));
    // The kernel's own recovery of the same bytes (a read-write mount replays).
    let want = kernel_mount("btrfs", &copy, &kmnt, "loop,noatime", view).unwrap();
    for p in [
        "base/new-file",
        "base/small",
        "newdir/inner",
        "base/dir/f3-renamed",
    ] {
        assert!(want.contains_key(p), "the kernel's replay shows {p}");
    }
    for p in [
        "base/dir/f7",
        "base/unsynced",
        "base/doomed",
        "base/config.tmp",
    ] {
        assert!(!want.contains_key(p), "the kernel's replay has no {p}");
    }
    // The kernel replays the --skip-free copy to the same view (every logged data
    // extent read against its checksum) and btrfs check finds it clean after.
    let got = kernel_mount("btrfs", &restored, &kmnt, "loop,noatime", view).unwrap();
    assert!(got == want, "the kernel's replay of the --skip-free copy");
    assert!(
        run("btrfs", &["check", "--readonly", s(&restored)]),
        "btrfs check after the replay"
    );
    let m = Mounted::new(&safe, t.path(), &[]);
    same_view(&want, &m.dir.join("1/vol/files"), &m, "fsync log");
    let log = m.log_text();
    let line = log.lines().find(|l| l.contains("fsync log replayed"));
    eprintln!("{}", line.expect("the replay is logged"));
    drop(m);
    // Without replay: the last commit, which has none of the fsynced work.
    let m = Mounted::new(&safe, t.path(), &["--no-replay"]);
    let files = m.dir.join("1/vol/files");
    assert!(files.join("base/dir/f7").exists() && !files.join("base/new-file").exists());
    assert_eq!(
        std::fs::metadata(files.join("base/trunc")).unwrap().len(),
        500_000
    );
}

/// Walks of a crashed image with bytes of its log's nodes changed (most rounds with
/// the checksum resealed, so the damage reaches the replay): errors, never a panic.
fn damaged_logs_give_errors_not_panics(img: &[u8]) {
    let nodesize = le32(img, 0x10094) as usize;
    let log_nodes: Vec<usize> = nodes(img, nodesize)
        .into_iter()
        .filter(|&o| img[o + 0x58..o + 0x60] == (-6i64).to_le_bytes())
        .collect();
    assert!(!log_nodes.is_empty(), "log nodes found");
    let clean = disksafe::ntfs_ext::walk_everything(img.to_vec(), 4096).expect("walks");
    assert!(clean > 400, "{clean} nodes walked");
    let mut rng = StdRng::seed_from_u64(9);
    for round in 0..40 {
        let mut d = img.to_vec();
        let at = log_nodes[rng.gen_range(0..log_nodes.len())];
        for _ in 0..rng.gen_range(1..6) {
            let o = rng.gen_range(0x20..nodesize);
            d[at + o] = rng.gen();
        }
        if round % 4 != 0 {
            reseal(&mut d[at..at + nodesize]);
        }
        let _ = disksafe::ntfs_ext::walk_everything(d, 4096);
    }
}

/// Where a file's first data byte lies in the image: its btrfs logical address from
/// `filefrag` (FIEMAP), mapped to the device with `btrfs-map-logical`.
fn first_byte_on_disk(img: &Path, file: &Path) -> Option<u64> {
    copies_on_disk(img, file)?.first().copied()
}

/// Where each copy of a file's first data byte lies in the image (DUP: two), as
/// [`first_byte_on_disk`] finds the first.
fn copies_on_disk(img: &Path, file: &Path) -> Option<Vec<u64>> {
    let o = Command::new("filefrag")
        .args(["-v", "-b1"])
        .arg(file)
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&o.stdout);
    // "   0:        0..    4095:   30408704..  30412799:   4096:  encoded,last,eof"
    let line = text.lines().find(|l| l.trim_start().starts_with("0:"))?;
    let logical: u64 = line
        .split(':')
        .nth(2)?
        .split("..")
        .next()?
        .trim()
        .parse()
        .ok()?;
    let o = Command::new("btrfs-map-logical")
        .args(["-l", &logical.to_string()])
        .arg(img)
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&o.stdout);
    // "mirror 1 logical 30408704 physical 30408704 device /tmp/..." per copy
    let found: Vec<u64> = text
        .lines()
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            let p = w.iter().position(|x| *x == "physical")?;
            w.get(p + 1)?.parse().ok()
        })
        .collect();
    (!found.is_empty()).then_some(found)
}

/// A file's sha256, or the errno reading it gave.
fn read_or_errno(p: &Path) -> Result<String, Option<i32>> {
    std::fs::read(p)
        .map(|b| sha256(&b))
        .map_err(|e| e.raw_os_error())
}

#[test]
fn btrfs_damaged_data_gives_eio_like_the_kernel() {
    if !mkfs_ready("btrfs", "data checksums") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let img = t.path().join("fs.img");
    File::create(&img).unwrap().set_len(200 << 20).unwrap();
    assert!(run("mkfs.btrfs", &["-q", "-f", s(&img)]));
    let kmnt = t.path().join("kernel");
    let mut rng = StdRng::seed_from_u64(4);
    let at = kernel_mount("btrfs", &img, &kmnt, "loop", |m| {
        write_data(&m.join("victim"), 256 << 10, false, &mut rng);
        write_data(&m.join("healthy"), 256 << 10, false, &mut rng);
        let z = m.join("zvictim");
        File::create(&z).unwrap();
        btrfs(&["property", "set", s(&z), "compression", "zstd"]);
        write_data(&z, 300_000, true, &mut rng);
        let nocow = m.join("nocow");
        File::create(&nocow).unwrap();
        assert!(run("chattr", &["+C", s(&nocow)]));
        write_data(&nocow, 64 << 10, false, &mut rng);
        assert!(run("sync", &["-f", s(m)]));
        ["victim", "zvictim", "nocow"].map(|f| first_byte_on_disk(&img, &m.join(f)))
    });
    let Some([Some(victim), Some(zvictim), Some(nocow)]) = at else {
        eprintln!("SKIP btrfs data checksums: no kernel btrfs, filefrag or btrfs-map-logical");
        return;
    };
    // One byte changed in the second sector of each (and of a file without checksums).
    for p in [victim + 5000, zvictim + 100, nocow + 5000] {
        flip_byte(&img, p, 0x40);
    }
    let safe = t.path().join("safe");
    backup(&[s(&safe), &format!("vol={}", s(&img))]);
    let kernel_reads = kernel_mount("btrfs", &img, &kmnt, "loop,ro", |k| {
        ["victim", "zvictim", "healthy", "nocow"].map(|f| read_or_errno(&k.join(f)))
    })
    .unwrap();
    let m = Mounted::new(&safe, t.path(), &[]);
    let files = m.dir.join("1/vol/files");
    let ours = ["victim", "zvictim", "healthy", "nocow"].map(|f| read_or_errno(&files.join(f)));
    for (name, (k, o)) in ["victim", "zvictim", "healthy", "nocow"]
        .iter()
        .zip(kernel_reads.iter().zip(ours.iter()))
    {
        assert_eq!(o, k, "{name}: disksafe's read against the kernel's");
    }
    assert_eq!(
        kernel_reads[0],
        Err(Some(libc::EIO)),
        "the kernel refuses the damaged file"
    );
    assert!(kernel_reads[2].is_ok() && kernel_reads[3].is_ok());
    let log = m.log_text();
    assert!(
        log.contains("checksum mismatch")
            && log.contains(&format!("device offset {}", victim + 4096)),
        "{log}"
    );
    // The mount stays up: the healthy file reads again.
    assert_eq!(read_or_errno(&files.join("healthy")), kernel_reads[2]);
}

/// DUP data (two copies on one device): a file damaged in one copy reads from the
/// other, as the kernel reads it; damaged in both copies at different sectors (a
/// page and the next; the first and second sectors of a compressed extent, which is
/// read whole), each sector from the copy that holds it intact (the kernel repairs
/// sector by sector too); at the same sector in both, EIO like the kernel.
#[test]
fn btrfs_dup_data_reads_around_a_damaged_copy_like_the_kernel() {
    if !mkfs_ready("btrfs", "DUP data") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let img = t.path().join("fs.img");
    File::create(&img).unwrap().set_len(300 << 20).unwrap();
    assert!(run(
        "mkfs.btrfs",
        &["-q", "-f", "-d", "dup", "-m", "dup", s(&img)]
    ));
    let kmnt = t.path().join("kernel");
    let mut rng = StdRng::seed_from_u64(5);
    let names = ["one", "both", "same", "zone", "healthy"];
    let at = kernel_mount("btrfs", &img, &kmnt, "loop", |m| {
        let z = m.join("zone");
        File::create(&z).unwrap();
        btrfs(&["property", "set", s(&z), "compression", "zstd"]);
        write_data(&z, 300_000, true, &mut rng);
        for f in ["one", "both", "same", "healthy"] {
            write_data(&m.join(f), 256 << 10, false, &mut rng);
        }
        assert!(run("sync", &["-f", s(m)]));
        let sums = names.map(|f| read_or_errno(&m.join(f)));
        let copies = ["one", "both", "same", "zone"].map(|f| copies_on_disk(&img, &m.join(f)));
        (sums, copies)
    });
    let Some((before, [Some(one), Some(both), Some(same), Some(zone)])) = at else {
        eprintln!("SKIP btrfs DUP data: no kernel btrfs, filefrag or btrfs-map-logical");
        return;
    };
    for c in [&one, &both, &same, &zone] {
        assert_eq!(c.len(), 2, "two copies of DUP data: {c:?}");
    }
    for p in [
        one[0] + 5000,
        both[0] + 5000,
        both[1] + 9000,
        same[0] + 5000,
        same[1] + 5000,
        zone[0] + 100,
        zone[1] + 5000,
    ] {
        flip_byte(&img, p, 0x40);
    }
    let safe = t.path().join("safe");
    backup(&[s(&safe), &format!("vol={}", s(&img))]);
    let kernel_reads = kernel_mount("btrfs", &img, &kmnt, "loop,ro", |k| {
        names.map(|f| read_or_errno(&k.join(f)))
    })
    .unwrap();
    let m = Mounted::new(&safe, t.path(), &[]);
    let files = m.dir.join("1/vol/files");
    let ours = names.map(|f| read_or_errno(&files.join(f)));
    for (i, name) in names.iter().enumerate() {
        assert_eq!(
            ours[i], kernel_reads[i],
            "{name}: disksafe's read against the kernel's"
        );
    }
    for i in [0, 1, 3, 4] {
        assert_eq!(ours[i], before[i], "{}: the bytes written", names[i]);
    }
    assert_eq!(ours[2], Err(Some(libc::EIO)), "same: both copies damaged");
    let log = m.log_text();
    assert!(log.contains("read from another copy"), "{log}");
}

/// RAID5 and RAID6 data and metadata failing their checksums on a device that is
/// there are rebuilt from the rest of their row, as the kernel reads them: a plain
/// file and a compressed one, each damaged in one data stripe, and the top-level
/// subvolume's tree root damaged too, read as written and as the kernel reads them,
/// and the log says so.
#[test]
fn btrfs_raid56_data_is_rebuilt_around_damage_like_the_kernel() {
    if !mkfs_ready("btrfs", "RAID5/6 damaged data") {
        return;
    }
    for (n, data, meta) in [(3, "raid5", "raid5"), (4, "raid6", "raid6")] {
        let t = tempfile::tempdir().unwrap();
        let Some((imgs, loops, devs)) = btrfs_set(t.path(), n, data, meta, "RAID5/6 damaged data")
        else {
            return;
        };
        let kmnt = t.path().join("kernel");
        let mount = |opts: &str| mount_set(&devs, &kmnt, opts);
        if !mount("rw") {
            eprintln!("SKIP btrfs RAID5/6 damaged data: the kernel does not mount it here");
            return;
        }
        let mut rng = StdRng::seed_from_u64(6 + n as u64);
        let names = ["plain", "zipped", "healthy"];
        let z = kmnt.join("zipped");
        File::create(&z).unwrap();
        btrfs(&["property", "set", s(&z), "compression", "zstd"]);
        write_data(&z, 1 << 20, true, &mut rng);
        write_data(&kmnt.join("plain"), 1 << 20, false, &mut rng);
        write_data(&kmnt.join("healthy"), 256 << 10, false, &mut rng);
        assert!(run("sync", &["-f", s(&kmnt)]));
        let before = names.map(|f| read_or_errno(&kmnt.join(f)));
        // Where logical byte `l` lies: device and offset (its data stripe).
        let place = |l: u64| {
            let o = Command::new("btrfs-map-logical")
                .args(["-l", &l.to_string(), &devs[0]])
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&o.stdout).to_string();
            let w: Vec<&str> = text.split_whitespace().collect();
            let p = w.iter().position(|x| *x == "physical").expect("a mapping");
            let phys: u64 = w[p + 1].parse().unwrap();
            (
                w[w.iter().position(|x| *x == "device").unwrap() + 1].to_string(),
                phys,
            )
        };
        // Where each damaged file's first byte lies: device and offset.
        let mut hits = Vec::new();
        for (f, off) in [("plain", 5000u64), ("zipped", 100)] {
            let o = Command::new("filefrag")
                .args(["-v", "-b1"])
                .arg(kmnt.join(f))
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&o.stdout).to_string();
            let logical: u64 = text
                .lines()
                .find(|l| l.trim_start().starts_with("0:"))
                .and_then(|l| l.split(':').nth(2)?.split("..").next()?.trim().parse().ok())
                .unwrap_or_else(|| panic!("filefrag of {f}: {text}"));
            let (dev, phys) = place(logical);
            hits.push((dev, phys + off));
        }
        assert!(run("umount", &[s(&kmnt)]));
        // And the top-level subvolume's tree root (a leaf here), for the names.
        let o = Command::new("btrfs")
            .args(["inspect-internal", "dump-tree", "-t", "5", &devs[0]])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&o.stdout).to_string();
        let root: u64 = text
            .lines()
            .find_map(|l| {
                let l = l.trim_start();
                let rest = l
                    .strip_prefix("leaf ")
                    .or_else(|| l.strip_prefix("node "))?;
                rest.split_whitespace().next()?.parse().ok()
            })
            .unwrap_or_else(|| panic!("dump-tree: {text}"));
        let (dev, phys) = place(root);
        hits.push((dev, phys + 200));
        for (dev, at) in &hits {
            let mut b = [0u8; 1];
            std::os::unix::fs::FileExt::read_exact_at(&File::open(dev).unwrap(), &mut b, *at)
                .unwrap();
            write_dev(dev, *at, &[b[0] ^ 0x40]);
        }
        // Backed up before the kernel reads it: its read repair writes the rebuilt
        // bytes back, even on a read-only mount.
        let safe = t.path().join("safe");
        backup_set(&safe, &imgs);
        assert!(mount("ro"));
        let kernel_reads = names.map(|f| read_or_errno(&kmnt.join(f)));
        assert!(run("umount", &[s(&kmnt)]));
        drop(loops);
        run("btrfs", &["device", "scan", "--forget"]);
        let m = Mounted::new(&safe, t.path(), &[]);
        let ours = names.map(|f| read_or_errno(&m.dir.join("1/dev0/files").join(f)));
        for (i, f) in names.iter().enumerate() {
            assert_eq!(
                ours[i], kernel_reads[i],
                "{data} {f}: against the kernel's read"
            );
            assert_eq!(ours[i], before[i], "{data} {f}: the bytes written");
        }
        let log = m.log_text();
        assert!(
            log.contains("checksum mismatch") && log.contains("rebuilt from parity instead"),
            "{data}: {log}"
        );
        assert!(
            log.contains(&format!("btrfs node at {root}")),
            "{data}: the tree root was rebuilt: {log}"
        );
    }
}

/// One random change under `root` (files `f*`, directories `d*`), then, often, an
/// fsync of what it touched or of its directory.
fn random_op(root: &Path, rng: &mut StdRng, n: usize) {
    let dirs: Vec<std::path::PathBuf> = std::iter::once(root.to_path_buf())
        .chain(
            (0..4)
                .map(|i| root.join(format!("d{i}")))
                .filter(|d| d.is_dir()),
        )
        .collect();
    let dir = dirs[rng.gen_range(0..dirs.len())].clone();
    let files: Vec<std::path::PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    let pick = |rng: &mut StdRng| {
        (!files.is_empty()).then(|| files[rng.gen_range(0..files.len())].clone())
    };
    let touched: std::path::PathBuf = match rng.gen_range(0..10) {
        0 | 1 => {
            let p = dir.join(format!("f{n}"));
            write_data(&p, rng.gen_range(0..200_000), rng.gen_bool(0.5), rng);
            p
        }
        2 => match pick(rng) {
            Some(p) => {
                let mut f = File::options().append(true).open(&p).unwrap();
                let mut b = vec![0u8; rng.gen_range(1..70_000)];
                rng.fill(&mut b[..]);
                std::io::Write::write_all(&mut f, &b).unwrap();
                p
            }
            None => return,
        },
        3 => match pick(rng) {
            Some(p) => {
                let f = File::options().write(true).open(&p).unwrap();
                let len = f.metadata().unwrap().len();
                f.set_len(rng.gen_range(0..=len)).unwrap();
                p
            }
            None => return,
        },
        4 => match pick(rng) {
            Some(p) => {
                let to = dirs[rng.gen_range(0..dirs.len())].join(format!("r{n}"));
                std::fs::rename(&p, &to).unwrap();
                if rng.gen_bool(0.5) {
                    fsync(&dir);
                }
                to
            }
            None => return,
        },
        5 => match pick(rng) {
            Some(p) => {
                let to = dirs[rng.gen_range(0..dirs.len())].join(format!("l{n}"));
                std::fs::hard_link(&p, &to).unwrap();
                to
            }
            None => return,
        },
        6 => match pick(rng) {
            Some(p) => {
                std::fs::remove_file(&p).unwrap();
                dir.clone()
            }
            None => return,
        },
        7 => {
            let d = root.join(format!("d{}", rng.gen_range(0..4)));
            if d.is_dir() {
                if rng.gen_bool(0.3) {
                    std::fs::remove_dir_all(&d).unwrap();
                    root.to_path_buf()
                } else {
                    return;
                }
            } else {
                std::fs::create_dir(&d).unwrap();
                d
            }
        }
        8 => match pick(rng) {
            Some(p) => {
                if rng.gen_bool(0.6) {
                    set_xattr(&p, &format!("user.x{}", rng.gen_range(0..3)), &[b'v'; 40]);
                } else {
                    let _ = Command::new("setfattr")
                        .args(["-x", "user.x0"])
                        .arg(&p)
                        .output();
                }
                p
            }
            None => return,
        },
        _ => match pick(rng) {
            Some(p) => {
                let f = File::options().write(true).open(&p).unwrap();
                let len = f.metadata().unwrap().len();
                let mut b = vec![0u8; rng.gen_range(1..40_000)];
                rng.fill(&mut b[..]);
                std::os::unix::fs::FileExt::write_all_at(&f, &b, rng.gen_range(0..=len)).unwrap();
                p
            }
            None => return,
        },
    };
    if rng.gen_bool(0.7) {
        fsync(&touched);
    }
}

/// Random sequences of changes and fsyncs over a committed tree, each image copied
/// while mounted: the mount's view equals the kernel's replay of the same copy.
#[test]
fn btrfs_random_fsync_histories_replay_like_the_kernel() {
    if !mkfs_ready("btrfs", "random fsync histories") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let kmnt = t.path().join("kernel");
    let safe = t.path().join("safe");
    let mut replayed = 0;
    for round in 0..8u64 {
        let img = t.path().join(format!("live{round}.img"));
        File::create(&img).unwrap().set_len(140 << 20).unwrap();
        assert!(run("mkfs.btrfs", &["-q", "-f", s(&img)]));
        let copy = t.path().join(format!("crashed{round}.img"));
        let mut rng = StdRng::seed_from_u64(100 + round);
        let opts = "loop,commit=3600,compress=zstd";
        let done = kernel_mount("btrfs", &img, &kmnt, opts, |m| {
            for n in 0..30 {
                random_op(m, &mut rng, n);
            }
            assert!(run("sync", &["-f", s(m)]));
            for n in 30..230 {
                random_op(m, &mut rng, n);
            }
            std::fs::copy(&img, &copy).unwrap();
        });
        let crashed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        if done.is_none() {
            eprintln!("SKIP btrfs random fsync histories: the kernel does not mount btrfs here");
            return;
        }
        std::fs::remove_file(&img).unwrap();
        backup(&[s(&safe), &format!("vol={}", s(&copy))]);
        let want = kernel_mount("btrfs", &copy, &kmnt, "loop,noatime", view).unwrap();
        std::fs::remove_file(&copy).unwrap();
        let m = Mounted::new(&safe, t.path(), &[]);
        // Where replay unlinks a name, the kernel stamps the inode's change time (and
        // the directory's times) with the moment of its replay; disksafe keeps the
        // times the log recorded, all before the copy.
        let stamped = |kernel: &str, field: &str| {
            let at = kernel.find(&format!(" {field} "))? + field.len() + 2;
            let secs: i64 = kernel[at..].split('.').next()?.parse().ok()?;
            (secs >= crashed).then_some(())
        };
        let mask = |_: &str, v: &str, kernel: &str| {
            let mut out = Vec::new();
            let mut words = v.split(' ').peekable();
            while let Some(w) = words.next() {
                out.push(w.to_string());
                if (w == "ctime" || w == "mtime") && stamped(kernel, w).is_some() {
                    let value = words.next().unwrap_or_default();
                    let secs: i64 = value.split('.').next().unwrap_or("0").parse().unwrap_or(0);
                    // disksafe's own value: one the log recorded, before the copy.
                    if v != kernel {
                        assert!(secs <= crashed, "{w} {value} is not a recorded time");
                    }
                    out.push("(stamped at replay)".into());
                }
            }
            out.join(" ")
        };
        same_view_masked(
            &want,
            &m.dir.join(format!("{}/vol/files", round + 1)),
            &m,
            &format!("round {round}"),
            mask,
        );
        let log = m.log_text();
        let line = log
            .lines()
            .find(|l| l.contains(&format!("point {}, ", round + 1)) && l.contains("replayed"));
        eprintln!("round {round}: {}", line.unwrap_or("nothing to replay"));
        replayed += line.is_some() as usize;
    }
    assert!(
        replayed >= 6,
        "only {replayed} of 8 histories left a log to replay"
    );
}

/// A btrfs made on `n` loop devices with the given data and metadata profiles, filled
/// by the kernel; backed up as one point of `n` devices (and, given `present`, a
/// second point holding only those, as after a disk failed): every device's `files/`
/// equals the kernel's view, RAID5/6 stripes of missing devices rebuilt from parity
/// (and checked against the data checksums as they are read).
/// `n` loop-backed 300 MiB images under `dir` made one btrfs volume (`-d data -m
/// meta`) and scanned: the images, their loop devices, the devices' paths; `None`
/// (having said SKIP for `name`) without loop devices.
fn btrfs_set(
    dir: &Path,
    n: usize,
    data: &str,
    meta: &str,
    name: &str,
) -> Option<(Vec<std::path::PathBuf>, Loops, Vec<String>)> {
    let imgs: Vec<std::path::PathBuf> = (0..n).map(|i| dir.join(format!("d{i}.img"))).collect();
    let mut loops = Loops::default();
    let mut devs = Vec::new();
    for img in &imgs {
        File::create(img).unwrap().set_len(300 << 20).unwrap();
        let Some(d) = loops.attach(img, 0, 300 << 20) else {
            eprintln!("SKIP btrfs {name}: no loop devices");
            return None;
        };
        devs.push(d);
    }
    let mut args = vec!["-q", "-f", "-d", data, "-m", meta];
    args.extend(devs.iter().map(|d| d.as_str()));
    assert!(run("mkfs.btrfs", &args), "mkfs.btrfs {args:?}");
    assert!(run("btrfs", &["device", "scan", &devs[0]]));
    Some((imgs, loops, devs))
}

/// Mounts the volume on `devs` at `mnt` (made if absent) with `opts`: whether the
/// kernel did.
fn mount_set(devs: &[String], mnt: &Path, opts: &str) -> bool {
    std::fs::create_dir_all(mnt).unwrap();
    let mut o = opts.to_string();
    for d in &devs[1..] {
        o += &format!(",device={d}");
    }
    run("mount", &["-t", "btrfs", "-o", &o, &devs[0], s(mnt)])
}

/// Backs up `imgs` as devices `dev0`, `dev1`, ... of one new point of `safe`.
fn backup_set(safe: &Path, imgs: &[std::path::PathBuf]) {
    let mut args = vec![s(safe).to_string()];
    args.extend(
        imgs.iter()
            .enumerate()
            .map(|(i, p)| format!("dev{i}={}", s(p))),
    );
    let args: Vec<&str> = args.iter().map(|a| a.as_str()).collect();
    backup(&args);
}

fn multi_device(name: &str, n: usize, data: &str, meta: &str, present: Option<&[usize]>) {
    if !mkfs_ready("btrfs", name) {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let Some((imgs, loops, devs)) = btrfs_set(t.path(), n, data, meta, name) else {
        return;
    };
    let kmnt = t.path().join("kernel");
    let mount = |opts: &str| mount_set(&devs, &kmnt, opts);
    if !mount("rw") {
        eprintln!("SKIP btrfs {name}: the kernel does not mount it here");
        return;
    }
    let mut rng = StdRng::seed_from_u64(n as u64);
    make_tree(&kmnt.join("tree"), 60, &mut rng);
    write_data(&kmnt.join("big"), 20 << 20, false, &mut rng);
    write_data(&kmnt.join("text"), 3 << 20, true, &mut rng);
    // A file written, committed and deleted: free space that is not zeros.
    write_data(&kmnt.join("junk"), 8 << 20, false, &mut rng);
    assert!(run("sync", &["-f", s(&kmnt.join("junk"))]));
    std::fs::remove_file(kmnt.join("junk")).unwrap();
    assert!(run("umount", &[s(&kmnt)]));
    assert!(mount("ro"));
    let want = view(&kmnt);
    assert!(run("umount", &[s(&kmnt)]));
    let safe = t.path().join("safe");
    backup_set(&safe, &imgs);
    // Point 2: some devices missing (a failed disk).
    if let Some(present) = present {
        let mut args = vec![s(&safe).to_string()];
        args.extend(present.iter().map(|&i| format!("dev{i}={}", s(&imgs[i]))));
        let args: Vec<&str> = args.iter().map(|a| a.as_str()).collect();
        backup(&args);
    }
    let m = Mounted::new(&safe, t.path(), &[]);
    for i in 0..n {
        same_view(
            &want,
            &m.dir.join(format!("1/dev{i}/files")),
            &m,
            &format!("{name}, device {i}"),
        );
    }
    for &i in present.unwrap_or(&[]) {
        same_view(
            &want,
            &m.dir.join(format!("2/dev{i}/files")),
            &m,
            &format!("{name}, devices {present:?} alone, under device {i}"),
        );
    }
    if present.is_some() && data.starts_with("raid") && data != "raid1" {
        assert!(
            m.log_text().contains("rebuilt from parity"),
            "{}",
            m.log_text()
        );
    }
    drop(m);

    // --skip-free over all the devices together: each restored device differs from
    // it only where btrfs-progs' dump of the trees says nothing is, the kernel mounts
    // the restored set to the same view and `btrfs check` finds it clean.
    let (used, chunks, striped) = btrfs_in_use(Path::new(&devs[0]));
    let part = t.path().join("part");
    let mut args = vec!["backup".to_string(), s(&part).to_string()];
    args.extend(
        imgs.iter()
            .enumerate()
            .map(|(i, p)| format!("dev{i}={}", s(p))),
    );
    // 4 KiB blocks: the gaps between metadata nodes count too.
    args.extend(["--skip-free".into(), "--block-size".into(), "4K".into()]);
    let args: Vec<&str> = args.iter().map(|a| a.as_str()).collect();
    let o = ds(&args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (mut in_chunks, mut in_striped) = (0, 0);
    let mut restored = Vec::new();
    let none = Ranges::new();
    for (i, img) in imgs.iter().enumerate() {
        let r = t.path().join(format!("restored{i}.img"));
        ok(&["restore", s(&part), "1", &format!("dev{i}"), s(&r)]);
        let id = i as u64 + 1;
        let (a, b) = (std::fs::read(img).unwrap(), std::fs::read(&r).unwrap());
        let sp = striped.get(&id).unwrap_or(&none);
        let (u, ch) = (used.get(&id).unwrap_or(&none), &chunks[&id]);
        let (_, c, st) = left_out_where_free(&a, &b, u, ch, sp);
        (in_chunks, in_striped) = (in_chunks + c, in_striped + st);
        restored.push(r);
    }
    // The deleted 8 MiB file's extents (on both copies with RAID1).
    if data == "raid1" {
        assert!(
            in_chunks > 8 << 20,
            "{name}: {in_chunks} bytes left out in chunks"
        );
    } else {
        assert!(
            in_striped >= 4 << 20,
            "{name}: {in_striped} bytes left out in striped chunks"
        );
    }
    drop(loops);
    run("btrfs", &["device", "scan", "--forget"]);
    let mut loops = Loops::default();
    let devs: Vec<String> = restored
        .iter()
        .map(|r| loops.attach(r, 0, 300 << 20).unwrap())
        .collect();
    assert!(run("btrfs", &["device", "scan", &devs[0]]));
    assert!(
        run("btrfs", &["check", "--readonly", &devs[0]]),
        "{name}: btrfs check of the restored devices"
    );
    let mut o = "ro".to_string();
    for d in &devs[1..] {
        o += &format!(",device={d}");
    }
    assert!(run("mount", &["-t", "btrfs", "-o", &o, &devs[0], s(&kmnt)]));
    // Unmounted even when reading fails, so a failing test leaves no mount behind.
    let got = std::panic::catch_unwind(|| view(&kmnt));
    assert!(run("umount", &[s(&kmnt)]));
    let got = got.unwrap_or_else(|e| std::panic::resume_unwind(e));
    // The kernel's scrub reads every extent on every device against its checksum,
    // and RAID5 parity against its data: nothing left out was in use.
    let rw = o.replacen("ro", "rw", 1);
    assert!(run(
        "mount",
        &["-t", "btrfs", "-o", &rw, &devs[0], s(&kmnt)]
    ));
    let scrub = Command::new("btrfs")
        .args(["scrub", "start", "-B", "-r", s(&kmnt)])
        .output()
        .unwrap();
    assert!(run("umount", &[s(&kmnt)]));
    let report = String::from_utf8_lossy(&scrub.stdout);
    assert!(
        scrub.status.success() && report.contains("no errors found"),
        "{name}: scrub of the restored devices: {report}{}",
        String::from_utf8_lossy(&scrub.stderr)
    );
    assert!(
        got == want,
        "{name}: the kernel's view of the restored devices"
    );
    drop(loops);
    run("btrfs", &["device", "scan", "--forget"]);
}

#[test]
fn btrfs_raid0_data_over_two_devices() {
    multi_device("raid0", 2, "raid0", "raid1", None);
}

#[test]
fn btrfs_raid10_over_four_devices() {
    multi_device("raid10", 4, "raid10", "raid10", None);
}

#[test]
fn btrfs_raid5_data_over_three_devices() {
    // With one of the three missing, its stripes come back from parity.
    multi_device("raid5", 3, "raid5", "raid1", Some(&[0, 2]));
}

#[test]
fn btrfs_raid6_data_over_four_devices() {
    // With two of the four missing: from P, from Q, and from both.
    multi_device("raid6", 4, "raid6", "raid1c3", Some(&[0, 3]));
}

#[test]
fn btrfs_raid1_reads_from_one_device_alone() {
    multi_device("raid1", 2, "raid1", "raid1", Some(&[0]));
}

/// Byte ranges (offset, length).
type Ranges = Vec<(u64, u64)>;
/// Byte ranges per btrfs device id.
type DevRanges = std::collections::HashMap<u64, Ranges>;

/// Runs `btrfs inspect-internal ARGS... IMG`; its output.
fn inspect(img: &Path, args: &[&str]) -> String {
    let o = Command::new("btrfs")
        .arg("inspect-internal")
        .args(args)
        .arg(img)
        .output()
        .unwrap();
    assert!(o.status.success(), "btrfs inspect-internal {args:?}: {o:?}");
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Per device id, the device ranges (offset, length) that hold something, as
/// btrfs-progs' own dump of the volume's trees says (`img`: any of its devices, the
/// others found by btrfs-progs' scan): each extent item (`EXTENT_ITEM` by its length,
/// `METADATA_ITEM` by the node size `dump-super` gives) mapped through every stripe of
/// the chunk holding it (`dump-tree -t chunk`) when the chunk keeps whole copies
/// (single, DUP, RAID1, RAID1C3/4). Also every chunk's device extents (`DEV_EXTENT`
/// items, `dump-tree -t dev`), for the space left out inside chunks, and those of
/// striped chunks (RAID0/10/5/6), where what is left out is checked by the kernel's
/// scrub instead. The oracle for `--skip-free`.
fn btrfs_in_use(img: &Path) -> (DevRanges, DevRanges, DevRanges) {
    let num = |l: &str, after: &str| -> Option<u64> {
        l.split(after)
            .nth(1)?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    };
    let nodesize = inspect(img, &["dump-super"])
        .lines()
        .find_map(|l| num(l, "nodesize"))
        .unwrap();
    // (logical, length, (device id, offset) per stripe, whole copies)
    let mut chunks: Vec<(u64, u64, Ranges, bool)> = Vec::new();
    for l in inspect(img, &["dump-tree", "-t", "chunk"]).lines() {
        if let Some(k) = l.split(" CHUNK_ITEM ").nth(1) {
            let at = k.split(')').next().unwrap().parse().unwrap();
            chunks.push((at, 0, Vec::new(), false));
        } else if let (Some(c), Some(len)) = (chunks.last_mut(), num(l, "length ")) {
            c.1 = len;
            let profile = l.split(" type ").nth(1).unwrap().split('|').nth(1).unwrap();
            c.3 = ["single", "DUP", "RAID1", "RAID1C3", "RAID1C4"].contains(&profile.trim());
        } else if let (Some(c), true) = (chunks.last_mut(), l.contains("stripe ")) {
            if let (Some(d), Some(o)) = (num(l, " devid "), num(l, " offset ")) {
                c.2.push((d, o));
            }
        }
    }
    let mut used = DevRanges::new();
    let mut put = |logical: u64, len: u64| {
        let c = chunks
            .iter()
            .find(|c| c.0 <= logical && logical < c.0 + c.1)
            .unwrap_or_else(|| panic!("extent {logical} in no chunk"));
        if c.3 {
            for (d, at) in &c.2 {
                used.entry(*d).or_default().push((at + logical - c.0, len));
            }
        }
    };
    for l in inspect(img, &["dump-tree", "-t", "extent"]).lines() {
        let Some(k) = l.trim().split(" key (").nth(1) else {
            continue;
        };
        let f: Vec<&str> = k
            .trim_end_matches(|c| c != ')')
            .trim_end_matches(')')
            .split(' ')
            .collect();
        match (f[0].parse::<u64>(), f[1], f[2].parse::<u64>()) {
            (Ok(at), "EXTENT_ITEM", Ok(len)) => put(at, len),
            (Ok(at), "METADATA_ITEM", _) => put(at, nodesize),
            _ => {}
        }
    }
    // (device id, offset) of the DEV_EXTENT being read.
    let mut dev = DevRanges::new();
    let mut striped = DevRanges::new();
    let mut at = None;
    for l in inspect(img, &["dump-tree", "-t", "dev"])
        .lines()
        .map(str::trim)
    {
        if let Some(k) = l
            .split(" key (")
            .nth(1)
            .filter(|k| k.contains(" DEV_EXTENT "))
        {
            let f: Vec<&str> = k.split([' ', ')']).collect();
            at = Some((f[0].parse::<u64>().unwrap(), f[2].parse::<u64>().unwrap()));
        } else if let (Some((d, a)), Some(chunk), Some(len)) =
            (at, num(l, "chunk_offset "), num(l, " length "))
        {
            dev.entry(d).or_default().push((a, len));
            if chunks.iter().any(|c| c.0 == chunk && !c.3) {
                striped.entry(d).or_default().push((a, len));
            }
            at = None;
        }
    }
    (used, dev, striped)
}

/// Asserts what `--skip-free` left out of a btrfs device: `a` as it was, `b` as
/// restored, `used`, `chunks` and `striped` its ranges from [`btrfs_in_use`]. Every
/// 4 KiB block that differs is zeros and outside every used range, the first MiB and
/// the superblock copies; at least 90 % of the blocks outside them and outside
/// striped chunks that are not zeros differ. Returns the bytes left out, those of
/// them inside chunks, and those inside striped chunks.
fn left_out_where_free(
    a: &[u8],
    b: &[u8],
    used: &Ranges,
    chunks: &Ranges,
    striped: &Ranges,
) -> (u64, u64, u64) {
    assert_eq!(a.len(), b.len());
    let overlaps =
        |r: &[(u64, u64)], at: u64, end: u64| r.iter().any(|&(o, l)| o < end && at < o + l);
    let kept = |at: u64, end: u64| {
        at < 1 << 20
            || overlaps(used, at, end)
            || [64u64 << 10, 64 << 20]
                .iter()
                .any(|&m| m < end && at < m + 4096)
    };
    let (mut gone, mut gone_in_chunks, mut gone_striped, mut could) = (0u64, 0, 0, 0);
    for (i, (x, y)) in a.chunks(4096).zip(b.chunks(4096)).enumerate() {
        let at = i as u64 * 4096;
        // Zeros left out or read are alike: only other free blocks are counted.
        let in_striped = overlaps(striped, at, at + 4096);
        if !kept(at, at + 4096) && !in_striped && x.iter().any(|&v| v != 0) {
            could += 4096;
        }
        if x == y {
            continue;
        }
        assert!(
            !kept(at, at + 4096),
            "byte {at} differs but an extent or superblock holds it"
        );
        assert!(y.iter().all(|&v| v == 0), "byte {at}: left out as zeros");
        gone += 4096;
        if overlaps(chunks, at, at + 4096) {
            gone_in_chunks += 4096;
        }
        if in_striped {
            gone_striped += 4096;
        }
    }
    eprintln!(
        "btrfs: {gone} free bytes left out ({} of {could} outside striped chunks), {gone_in_chunks} inside chunks, {gone_striped} inside striped ones",
        gone - gone_striped
    );
    assert!(
        (gone - gone_striped) * 10 >= could * 9,
        "{gone} of {could} left out"
    );
    (gone, gone_in_chunks, gone_striped)
}

/// `backup --skip-free` on btrfs leaves out what btrfs holds nothing in: the
/// device's unallocated space and, inside single and DUP chunks, what no extent
/// names (a deleted file's extents among it). On a volume made over random junk and
/// filled through the kernel, restored, every byte that differs is zeros outside
/// every extent btrfs-progs' dump of the trees lists (and the first MiB and
/// superblock copies), nearly all of the rest was left out, the deleted file's bytes
/// inside the data chunks too, `btrfs check` finds the copy clean, and the kernel
/// mounts it to the same tree.
#[test]
fn btrfs_skip_free_leaves_out_what_no_extent_holds() {
    if !fuse_available() || Command::new("mkfs.btrfs").arg("-V").output().is_err() {
        eprintln!("SKIP btrfs skip-free: needs root, FUSE and btrfs-progs");
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let mut rng = StdRng::seed_from_u64(71);
    let img = t.path().join("b.img");
    let mut junk = vec![0u8; 320 << 20];
    rng.fill(&mut junk[..]);
    std::fs::write(&img, &junk).unwrap();
    assert!(run("mkfs.btrfs", &["-q", "-K", s(&img)]), "mkfs.btrfs");
    let kmnt = t.path().join("k");
    let src = t.path().join("src");
    make_tree(&src, 30, &mut rng);
    let mut deleted = vec![0u8; 24 << 20];
    rng.fill(&mut deleted[..]);
    std::fs::write(t.path().join("junk"), &deleted).unwrap();
    let copied = kernel_mount("btrfs", &img, &kmnt, "loop", |m| {
        // A file written, committed, then deleted: its extents freed inside the
        // data chunks.
        run("cp", &[s(&t.path().join("junk")), s(&m.join("junk"))])
            && run("sync", &["-f", s(&m.join("junk"))])
            && run("cp", &["-a", &format!("{}/.", s(&src)), s(m)])
            && run("rm", &[s(&m.join("junk"))])
    });
    match copied {
        Some(true) => {}
        Some(false) => panic!("writing into the kernel's btrfs mount failed"),
        None => {
            eprintln!("SKIP btrfs skip-free: the kernel does not mount btrfs here");
            return;
        }
    }
    let (used, chunks, striped) = btrfs_in_use(&img);
    let (_, _, restored) = backup_with_and_without_skip_free(&img, "b", t.path());
    let (a, b) = (
        std::fs::read(&img).unwrap(),
        std::fs::read(&restored).unwrap(),
    );
    let none = Ranges::new();
    let striped = striped.get(&1).unwrap_or(&none);
    let (_, gone_in_chunks, _) = left_out_where_free(&a, &b, &used[&1], &chunks[&1], striped);
    // The deleted file's blocks were on the device, and are zeros restored.
    let mut found = 0;
    for want in deleted.chunks(4096).step_by(97) {
        if let Some(i) = a.chunks(4096).position(|x| x == want) {
            assert!(
                b[i * 4096..][..4096].iter().all(|&v| v == 0),
                "deleted block at {}",
                i * 4096
            );
            found += 1;
        }
    }
    assert!(
        found > 50,
        "{found} of the deleted file's blocks found on the device"
    );
    assert!(
        gone_in_chunks >= 24 << 20,
        "the deleted file's extents left out: {gone_in_chunks} bytes inside chunks"
    );
    assert!(
        run("btrfs", &["check", "--readonly", s(&restored)]),
        "btrfs check"
    );
    let got = kernel_mount("btrfs", &restored, &kmnt, "loop,ro", tree_digest)
        .expect("the kernel mounts the restored copy");
    same_tree(&got, &tree_digest(&src), "btrfs restored");
}
