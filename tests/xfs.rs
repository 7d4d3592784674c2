//! XFS file trees through the mount against the kernel's own read-only mount of the
//! same image: names, types, modes, owners, sizes, block counts, times with
//! nanoseconds, device numbers, link targets, bytes, holes, extended attributes and
//! ACLs, inode flags and `df`. The images are filled by the kernel (the layouts real
//! machines carry: short-form, block and node directories, extent lists and block-map
//! btrees, unwritten extents, local, leaf and remote attributes).

mod common;

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

use common::*;
use rand::{rngs::StdRng, Rng, SeedableRng};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn kernel<T>(img: &Path, mnt: &Path, opts: &str, f: impl FnOnce(&Path) -> T) -> Option<T> {
    kernel_mount("xfs", img, mnt, opts, f)
}

fn fill(root: &Path, rng: &mut StdRng) {
    fill_posix(root, 8 << 20, rng);
}

fn check(name: &str, mkfs_opts: &[&str]) {
    check_against_kernel("xfs", name, 320 << 20, mkfs_opts, "loop,ro", 6, fill);
}

#[test]
fn xfs_v5() {
    check("v5", &[]);
}

#[test]
fn xfs_v5_small_blocks_large_directory_blocks() {
    check("v5-1k-8k", &["-b", "size=1024", "-n", "size=8192"]);
}

#[test]
fn xfs_v5_large_extent_counts_old_times() {
    check("v5-nrext64", &["-i", "nrext64=1", "-m", "bigtime=0"]);
}

#[test]
fn xfs_v4() {
    check("v4", &["-m", "crc=0"]);
}

/// A new XFS volume of `size` bytes at `img` (mkfs.xfs with `extra`), when FUSE, root
/// and xfsprogs are here; else false, `what` skipped saying why.
fn fresh_xfs(img: &Path, size: u64, extra: &[&str], what: &str) -> bool {
    if !fuse_available() || Command::new("xfs_io").arg("-V").output().is_err() {
        eprintln!("SKIP {what}: needs FUSE, root and xfsprogs");
        return false;
    }
    File::create(img).unwrap().set_len(size).unwrap();
    mkfs_xfs(img, extra);
    true
}

/// Makes an XFS volume on `img` (mkfs.xfs's test overrides allow a small one).
fn mkfs_xfs(img: &Path, extra: &[&str]) {
    let ok = Command::new("mkfs.xfs")
        .args(["-q", "-f"])
        .args(extra)
        .arg(img)
        .envs([("TEST_DIR", "1"), ("TEST_DEV", "1"), ("QA_CHECK_FS", "1")])
        .status()
        .unwrap()
        .success();
    assert!(ok, "mkfs.xfs");
}

/// What a snapshot of a running server holds: a volume busy with creates, fsyncs,
/// renames, deletes and attribute changes, its log flushed and the machine "crashed"
/// (`xfs_io -x -c 'shutdown -f'`, as xfstests crash it), so the latest metadata is
/// only in the log. The kernel's own recovery (mounting a copy) is the oracle.
/// Makes `img` (`size` bytes) such a crashed volume; `None` (the caller skips,
/// saying why) where the tools or the kernel's XFS are missing.
fn crash_image(img: &Path, size: u64, mnt: &Path, rng: &mut StdRng) -> Option<()> {
    if !fresh_xfs(img, size, &[], "xfs crash") {
        return None;
    }
    let busy = kernel(img, mnt, "loop", |m| {
        fill(m, rng);
        assert!(run("sync", &[]));
        // After the sync: work whose metadata only the log holds at the crash.
        let live = m.join("live");
        std::fs::create_dir(&live).unwrap();
        for i in 0..400 {
            let p = live.join(format!("f{i}"));
            let mut d = vec![0u8; rng.gen_range(0..20_000)];
            rng.fill(&mut d[..]);
            std::fs::write(&p, &d).unwrap();
            if i % 7 == 0 {
                File::open(&p).unwrap().sync_all().unwrap();
            }
        }
        std::fs::rename(m.join("tree"), m.join("tree-renamed")).unwrap();
        std::fs::remove_file(m.join("many/entry-with-a-longer-name-00007")).unwrap();
        for i in 0..300 {
            std::fs::rename(
                m.join(format!("many/entry-with-a-longer-name-{:05}", 100 + i)),
                live.join(format!("moved-{i}")),
            )
            .unwrap();
        }
        set_xattr(&m.join("attrs"), "user.after", b"set after the sync");
        set_times(&m.join("sparse"), (1_500_000_000, 5), (1_500_000_000, 5));
        // A file unlinked while still open (a database's temporary file): at the
        // crash only the AG's unlinked list holds it; recovery frees it.
        let held_path = m.join("held-open");
        let mut d = vec![0u8; 300_000];
        rng.fill(&mut d[..]);
        std::fs::write(&held_path, &d).unwrap();
        let held = File::open(&held_path).unwrap();
        held.sync_all().unwrap();
        std::fs::remove_file(&held_path).unwrap();
        File::open(&live).unwrap().sync_all().unwrap();
        let down = run("xfs_io", &["-x", "-c", "shutdown -f", s(m)]);
        drop(held);
        down
    });
    match busy {
        Some(true) => Some(()),
        Some(false) => {
            eprintln!("SKIP xfs crash: the kernel refuses xfs_io's shutdown here");
            None
        }
        None => {
            eprintln!("SKIP xfs crash: the kernel does not mount XFS images here");
            None
        }
    }
}

#[test]
fn xfs_crash_consistent_point_is_replayed_like_the_kernel() {
    let t = tempfile::tempdir().unwrap();
    let img = t.path().join("xfs.img");
    let kmnt = t.path().join("kernel");
    if crash_image(&img, 320 << 20, &kmnt, &mut StdRng::seed_from_u64(11)).is_none() {
        return;
    }
    let safe = t.path().join("safe");
    backup(&[s(&safe), &format!("vol={}", s(&img))]);
    // The kernel replays its log on a copy; noatime keeps the walk from changing it.
    let copy = t.path().join("copy.img");
    std::fs::copy(&img, &copy).unwrap();
    let want = kernel(&copy, &kmnt, "loop,noatime", view).unwrap();
    // df as a read-only mount counts (a read-write one sets reserves aside).
    let want_df = kernel(&copy, &kmnt, "loop,ro", statvfs).unwrap();
    assert!(
        want.contains_key("live/moved-299"),
        "the crash image holds the late work"
    );
    let m = Mounted::new(&safe, t.path(), &[]);
    let files = m.dir.join("1/vol/files");
    same_view(&want, &files, &m, "crash");
    assert_eq!(statvfs(&files), want_df, "statvfs");
    assert!(m.log_text().contains("replayed"), "{}", m.log_text());
    // As recorded, the same point is missing the late work.
    let raw = Mounted::new(&safe, t.path(), &["--no-replay"]);
    assert!(
        !raw.dir.join("1/vol/files/live/moved-299").exists(),
        "--no-replay shows the volume as recorded"
    );
    assert!(
        raw.log_text().contains("needs recovery"),
        "{}",
        raw.log_text()
    );
}

/// Hundreds of files unlinked while open at the crash (a database's temporary files):
/// whole inode chunks end up free once recovery frees them, and the kernel frees the
/// chunks too. `df` on the point matches the kernel's on a recovered copy.
#[test]
fn xfs_files_unlinked_while_open_are_freed_like_the_kernel() {
    let t = tempfile::tempdir().unwrap();
    let (img, kmnt) = (t.path().join("xfs.img"), t.path().join("kernel"));
    if !fresh_xfs(&img, 64 << 20, &[], "xfs unlinked") {
        return;
    }
    let before = kernel(&img, &kmnt, "loop", |m| {
        let before = statvfs(m);
        let dir = m.join("tmp");
        std::fs::create_dir(&dir).unwrap();
        let held: Vec<File> = (0..300)
            .map(|i| {
                let p = dir.join(format!("t{i}"));
                std::fs::write(&p, vec![i as u8 | 1; 5000 + i * 37]).unwrap();
                let f = File::open(&p).unwrap();
                std::fs::remove_file(&p).unwrap();
                f
            })
            .collect();
        File::open(&dir).unwrap().sync_all().unwrap();
        assert!(run("xfs_io", &["-x", "-c", "shutdown -f", s(m)]));
        drop(held);
        before
    });
    let Some(before) = before else {
        eprintln!("SKIP xfs unlinked: the kernel does not mount XFS images here");
        return;
    };
    let safe = t.path().join("safe");
    backup(&[s(&safe), &format!("vol={}", s(&img))]);
    let copy = t.path().join("copy.img");
    std::fs::copy(&img, &copy).unwrap();
    let want = kernel(&copy, &kmnt, "loop", |m| {
        assert_eq!(std::fs::read_dir(m.join("tmp")).unwrap().count(), 0);
    });
    assert!(want.is_some());
    let want_df = kernel(&copy, &kmnt, "loop,ro", statvfs).unwrap();
    // Every inode made for the files is gone again: their chunks were freed.
    assert_eq!(want_df[4] - want_df[5], before[4] - before[5] + 1, "kernel");
    let m = Mounted::logging(&safe, t.path(), &[], "info");
    let files = m.dir.join("1/vol/files");
    assert_eq!(std::fs::read_dir(files.join("tmp")).unwrap().count(), 0);
    assert_eq!(statvfs(&files), want_df, "statvfs");
    let log = m.log_text();
    assert!(log.contains("300 inode(s) left unlinked"), "{log}");
    assert!(!log.contains(" 0 inode(s) in freed chunks"), "{log}");
}

/// A reflinked copy partly overwritten just before the crash: the CoW extent size
/// hint left staging extents in the refcount btree, which every mount frees first.
/// `df` on the point matches the kernel's after it did.
#[test]
fn xfs_cow_staging_extents_are_freed_like_the_kernel() {
    let t = tempfile::tempdir().unwrap();
    let (img, kmnt) = (t.path().join("xfs.img"), t.path().join("kernel"));
    if !fresh_xfs(&img, 320 << 20, &["-m", "reflink=1"], "xfs CoW staging") {
        return;
    }
    let mut rng = StdRng::seed_from_u64(17);
    let done = kernel(&img, &kmnt, "loop", |m| {
        let mut d = vec![0u8; 8 << 20];
        rng.fill(&mut d[..]);
        std::fs::write(m.join("a"), &d).unwrap();
        assert!(run("sync", &[]));
        assert!(run(
            "cp",
            &["--reflink=always", s(&m.join("a")), s(&m.join("b"))]
        ));
        assert!(run("sync", &[]));
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(m.join("b"))
            .unwrap();
        std::os::unix::fs::FileExt::write_all_at(&f, &[9u8; 12288], 400 << 10).unwrap();
        f.sync_all().unwrap();
        drop(f);
        run("xfs_io", &["-x", "-c", "shutdown -f", s(m)])
    });
    if done != Some(true) {
        eprintln!("SKIP xfs CoW staging: the kernel does not mount XFS or refuses shutdown");
        return;
    }
    let safe = t.path().join("safe");
    backup(&[s(&safe), &format!("vol={}", s(&img))]);
    let copy = t.path().join("copy.img");
    std::fs::copy(&img, &copy).unwrap();
    assert!(kernel(&copy, &kmnt, "loop", |_| ()).is_some(), "recovery");
    let want = kernel(&copy, &kmnt, "loop,ro", statvfs).unwrap();
    let m = Mounted::logging(&safe, t.path(), &[], "info");
    assert_eq!(statvfs(&m.dir.join("1/vol/files")), want, "statvfs");
    let log = m.log_text();
    assert!(log.contains("CoW staging block(s) count as free"), "{log}");
}

/// A crashed volume's log damaged byte by byte: each walk (replay included) ends in
/// errors or a tree, never a panic or a hang.
#[test]
fn xfs_damaged_logs_give_errors_not_panics() {
    let t = tempfile::tempdir().unwrap();
    let img = t.path().join("xfs.img");
    if crash_image(
        &img,
        48 << 20,
        &t.path().join("kernel"),
        &mut StdRng::seed_from_u64(3),
    )
    .is_none()
    {
        return;
    }
    let base = std::fs::read(&img).unwrap();
    let be32 = |o: usize| u32::from_be_bytes(base[o..o + 4].try_into().unwrap()) as u64;
    let be64 = |o: usize| u64::from_be_bytes(base[o..o + 8].try_into().unwrap());
    let (bs, agblocks, agblklog) = (be32(0x4), be32(0x54), base[0x7C] as u32);
    let logstart = be64(0x30);
    let at = ((logstart >> agblklog) * agblocks + (logstart & ((1 << agblklog) - 1))) * bs;
    // The records written since mkfs lie at the start of the ring.
    let live = (base[at as usize..]
        .chunks(512)
        .take_while(|b| b.iter().any(|&x| x != 0))
        .count()
        * 512) as u64;
    assert!(live > 4096, "the crash left records in the log");
    let clean = disksafe::ntfs_ext::walk_everything(base.clone(), 4096).expect("walks");
    assert!(clean > 700, "{clean} nodes walked");
    // Resealing an intact log changes nothing: the checksums are the kernel's.
    let mut sealed = base.clone();
    reseal_records(&mut sealed[at as usize..(at + live) as usize]);
    assert!(sealed == base, "resealed records differ from the kernel's");
    let mut rng = StdRng::seed_from_u64(5);
    for round in 0..160 {
        let mut d = base.clone();
        for _ in 0..rng.gen_range(1..16) {
            let o = (at + rng.gen_range(0..live)) as usize;
            d[o] = rng.gen();
        }
        // Half the rounds re-seal each record's checksum, so the damage reaches the
        // transaction and item parsers instead of stopping at the checksum.
        if round % 2 == 0 {
            reseal_records(&mut d[at as usize..(at + live) as usize]);
        }
        let _ = disksafe::ntfs_ext::walk_everything(d, 4096);
    }
}

/// Recomputes the CRC of every log record header found in `log` (v5 logs).
fn reseal_records(log: &mut [u8]) {
    let be32 = |b: &[u8], o: usize| u32::from_be_bytes(b[o..o + 4].try_into().unwrap()) as usize;
    let mut p = 0;
    while p + 512 <= log.len() {
        if be32(log, p) != 0xFEED_BABE {
            p += 512;
            continue;
        }
        let (len, size) = (be32(log, p + 12), be32(log, p + 320));
        let hb = if be32(log, p + 8) & 2 != 0 && size > 32768 {
            size.div_ceil(32768)
        } else {
            1
        };
        let end = p + hb * 512 + len;
        // mkfs's unmount record carries no checksum.
        if len > 256 << 10 || end > log.len() || log[p + 32..p + 36] == [0; 4] {
            p += 512;
            continue;
        }
        let mut h = log[p..p + 328].to_vec();
        h[32..36].fill(0);
        let mut crc = crc32c::crc32c(&h);
        for x in 1..hb {
            crc = crc32c::crc32c_append(crc, &log[p + x * 512..p + x * 512 + 260]);
        }
        crc = crc32c::crc32c_append(crc, &log[p + hb * 512..end]);
        log[p + 32..p + 36].copy_from_slice(&crc.to_le_bytes());
        p += 512;
    }
}

/// Writes a tree for mkfs.xfs's prototype file: `dirs` directories of files with
/// random bytes and modes, a directory of 600 names (block and leaf formats), a long
/// and a short symlink. Returns the prototype's body lines and, per path, the
/// (mode, uid, gid) it asks for.
fn proto_tree(root: &Path, rng: &mut StdRng) -> (String, BTreeMap<String, (u32, u32, u32)>) {
    fn dir(
        p: &Path,
        rel: &str,
        depth: u32,
        rng: &mut StdRng,
        out: &mut String,
        meta: &mut BTreeMap<String, (u32, u32, u32)>,
    ) {
        std::fs::create_dir_all(p).unwrap();
        let files = if rel.ends_with("wide/") { 600 } else { 12 };
        for i in 0..files {
            let name = format!("f{i}.bin");
            let mut data = vec![0u8; rng.gen_range(0..150_000)];
            rng.fill(&mut data[..]);
            std::fs::write(p.join(&name), &data).unwrap();
            let (mode, uid, gid) = (
                rng.gen_range(0o400..0o777),
                rng.gen_range(0..2000),
                rng.gen_range(0..2000),
            );
            *out += &format!("{name} ---{mode:o} {uid} {gid} {}\n", s(&p.join(&name)));
            meta.insert(format!("{rel}{name}"), (0o100000 | mode, uid, gid));
        }
        let target = "t/".repeat(if depth == 0 { 300 } else { 2 });
        std::os::unix::fs::symlink(&target, p.join("link")).unwrap();
        *out += &format!("link l--777 0 0 {target}\n");
        meta.insert(format!("{rel}link"), (0o120777, 0, 0));
        if depth < 2 {
            for sub in ["a", "wide"].iter().take(if depth == 0 { 2 } else { 1 }) {
                *out += &format!("{sub} d--750 7 8\n");
                meta.insert(format!("{rel}{sub}"), (0o40750, 7, 8));
                dir(
                    &p.join(sub),
                    &format!("{rel}{sub}/"),
                    depth + 1,
                    rng,
                    out,
                    meta,
                );
                *out += "$\n";
            }
        }
    }
    let (mut out, mut meta) = (String::new(), BTreeMap::new());
    dir(root, "", 0, rng, &mut out, &mut meta);
    (out, meta)
}

/// A v4 volume (no checksums, 16-byte directory headers, v2 inodes), which kernels
/// built without V4 support cannot mount: made by mkfs.xfs from a prototype, so the
/// source tree is the oracle.
#[test]
fn xfs_v4_from_a_prototype() {
    if !mkfs_ready("xfs", "v4") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    let mut rng = StdRng::seed_from_u64(4);
    let (body, meta) = proto_tree(&src, &mut rng);
    let proto = t.path().join("proto");
    std::fs::write(&proto, format!("/dev/null\n0 0\nd--755 0 0\n{body}$\n")).unwrap();
    let img = t.path().join("v4.img");
    File::create(&img).unwrap().set_len(320 << 20).unwrap();
    assert!(
        run(
            "mkfs.xfs",
            &["-q", "-f", "-m", "crc=0", "-p", s(&proto), s(&img)]
        ),
        "mkfs.xfs -m crc=0 -p"
    );
    let safe = t.path().join("safe");
    backup(&[s(&safe), &format!("vol={}", s(&img))]);
    let m = Mounted::new(&safe, t.path(), &[]);
    let files = m.dir.join("1/vol/files");
    same_tree(&tree_digest(&files), &tree_digest(&src), "v4");
    for (rel, &(mode, uid, gid)) in &meta {
        let md = std::fs::symlink_metadata(files.join(rel)).unwrap();
        assert_eq!(
            (md.mode(), md.uid(), md.gid()),
            (mode, uid, gid),
            "v4 {rel}"
        );
    }
    let log = m.log_text();
    assert!(!log.contains("WARN") && !log.contains("ERROR"), "v4: {log}");
}

/// Free blocks of an XFS image as `xfs_db`'s `freesp -d` lists them, as byte ranges
/// (start, end), with the block size: the oracle for `--skip-free`.
fn xfs_free(img: &Path) -> (u64, Vec<(u64, u64)>) {
    let db = |cmds: &[&str]| {
        let mut c = Command::new("xfs_db");
        c.arg("-r");
        for x in cmds {
            c.args(["-c", x]);
        }
        let o = c.arg(img).output().unwrap();
        assert!(o.status.success(), "xfs_db {cmds:?}: {o:?}");
        String::from_utf8_lossy(&o.stdout).to_string()
    };
    let num = |text: &str, key: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .unwrap_or_else(|| panic!("xfs_db names {key}: {text}"))
            .trim()
            .parse()
            .unwrap()
    };
    let sb = db(&["sb 0", "print blocksize", "print agblocks"]);
    let (bs, agblocks) = (num(&sb, "blocksize = "), num(&sb, "agblocks = "));
    let mut free = Vec::new();
    for l in db(&["freesp -d"]).lines() {
        let v: Vec<u64> = l
            .split_whitespace()
            .filter_map(|w| w.parse().ok())
            .collect();
        if let [ag, bno, len] = v[..] {
            let at = (ag * agblocks + bno) * bs;
            free.push((at, at + len * bs));
        }
    }
    (bs, free)
}

/// Asserts `got` equals `want` in every block `freesp` of `oracle` does not list as
/// free; returns the bytes that differ.
fn xfs_differs_only_where_free(want: &Path, got: &Path, oracle: &Path) -> u64 {
    let (bs, free) = xfs_free(oracle);
    let (w, g) = (std::fs::read(want).unwrap(), std::fs::read(got).unwrap());
    assert_eq!(w.len(), g.len());
    let mut differ = 0;
    for (i, (a, b)) in w.chunks(bs as usize).zip(g.chunks(bs as usize)).enumerate() {
        if a != b {
            let at = i as u64 * bs;
            assert!(
                free.iter().any(|&(s, e)| s <= at && at + bs <= e),
                "block {i} of {} differs but is in use",
                want.display()
            );
            differ += a.len() as u64;
        }
    }
    differ
}

/// `backup --skip-free` on XFS: files written and deleted through the kernel leave
/// their data in free space; restored, every block that differs from the source is one
/// `xfs_db freesp` lists as free, `xfs_repair -n` finds the volume clean, the kernel
/// shows the same tree, and the deleted data is not in the safe.
#[test]
fn xfs_skip_free_leaves_out_only_what_the_free_space_btrees_list() {
    if !is_root() || Command::new("xfs_db").arg("-V").output().is_err() {
        eprintln!("SKIP xfs_skip_free_leaves_out_only_what_the_free_space_btrees_list: needs root and xfsprogs");
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let img = t.path().join("xfs.img");
    File::create(&img).unwrap().set_len(320 << 20).unwrap();
    assert!(run("mkfs.xfs", &["-q", "-f", s(&img)]));
    let mut rng = StdRng::seed_from_u64(63);
    let deleted = 24u64 << 20;
    let made = kernel(&img, &t.path().join("k"), "loop", |m| {
        fill(m, &mut rng);
        for j in 0..3 {
            let mut d = vec![0u8; (deleted / 3) as usize];
            rng.fill(&mut d[..]);
            std::fs::write(m.join(format!("big{j}")), &d).unwrap();
        }
        assert!(run("sync", &[]));
        for j in 0..3 {
            std::fs::remove_file(m.join(format!("big{j}"))).unwrap();
        }
    });
    if made.is_none() {
        eprintln!("SKIP xfs_skip_free_leaves_out_only_what_the_free_space_btrees_list: the kernel does not mount XFS images here");
        return;
    }
    let (all, part, restored) = backup_with_and_without_skip_free(&img, "vol", t.path());
    let differ = xfs_differs_only_where_free(&img, &restored, &img);
    assert!(
        differ * 10 >= deleted * 8,
        "only {differ} of {deleted} deleted bytes left out"
    );
    assert!(
        run("xfs_repair", &["-n", "-f", s(&restored)]),
        "xfs_repair -n"
    );
    let want = kernel(&img, &t.path().join("k"), "loop,ro", view).unwrap();
    let got = kernel(&restored, &t.path().join("k"), "loop,ro", view).unwrap();
    assert!(want == got, "the kernel's view of the restored volume");
    let (a, p) = (pack_bytes(&all), pack_bytes(&part));
    assert!(a - p >= deleted * 8 / 10, "{a} vs {p}");
}

/// On a crashed volume the free-space btrees `--skip-free` reads are the log's once
/// replayed: every block it leaves out is free after the kernel's own recovery of a
/// copy (blocks allocated by the work only the log holds are kept).
#[test]
fn xfs_skip_free_reads_the_btrees_the_log_leaves() {
    let t = tempfile::tempdir().unwrap();
    let img = t.path().join("xfs.img");
    let kmnt = t.path().join("kernel");
    if crash_image(&img, 320 << 20, &kmnt, &mut StdRng::seed_from_u64(12)).is_none() {
        return;
    }
    let copy = t.path().join("copy.img");
    std::fs::copy(&img, &copy).unwrap();
    kernel(&copy, &kmnt, "loop", |_| ()).unwrap();
    let safe = t.path().join("safe");
    let o = ds(&[
        "backup",
        s(&safe),
        "--block-size",
        "4K",
        &format!("vol={}", s(&img)),
        "--skip-free",
    ]);
    assert!(o.status.success(), "{o:?}");
    let restored = t.path().join("restored.img");
    ok(&["restore", s(&safe), "1", "vol", s(&restored)]);
    let differ = xfs_differs_only_where_free(&img, &restored, &copy);
    assert!(
        differ > 0,
        "nothing was left out: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// An XFS whose log is on another device (`mkfs.xfs -l logdev=`), crashed busy as
/// [`crash_image`] crashes one: backed up with its log device in the same point,
/// the log is found among the point's devices (by the filesystem's UUID in its
/// record headers) and replayed, and the tree and `df` equal the kernel's recovery
/// of copies of both (mounted with `logdev=`). Without the log device the volume is
/// shown as recorded, and the log says why.
#[test]
fn xfs_external_log_is_found_and_replayed() {
    let name = "xfs_external_log_is_found_and_replayed";
    let t = tempfile::tempdir().unwrap();
    let (img, log, kmnt) = (
        t.path().join("xfs.img"),
        t.path().join("log.img"),
        t.path().join("kernel"),
    );
    File::create(&log).unwrap().set_len(16 << 20).unwrap();
    let logdev = format!("logdev={},size=16m", s(&log));
    if !fresh_xfs(&img, 160 << 20, &["-l", &logdev], name) {
        return;
    }
    let mut rng = StdRng::seed_from_u64(29);
    let mut loops = Loops::default();
    let Some(ldev) = loops.attach(&log, 0, 16 << 20) else {
        eprintln!("SKIP {name}: no loop devices");
        return;
    };
    let busy = kernel(&img, &kmnt, &format!("loop,logdev={ldev}"), |m| {
        fill(m, &mut rng);
        assert!(run("sync", &[]));
        let late = m.join("late");
        std::fs::create_dir(&late).unwrap();
        for i in 0..200 {
            std::fs::write(late.join(format!("f{i}")), vec![i as u8; 100 + i * 50]).unwrap();
        }
        std::fs::rename(m.join("tree"), m.join("tree-renamed")).unwrap();
        File::open(&late).unwrap().sync_all().unwrap();
        run("xfs_io", &["-x", "-c", "shutdown -f", s(m)])
    });
    drop(loops);
    match busy {
        Some(true) => {}
        _ => {
            eprintln!("SKIP {name}: the kernel does not mount XFS here or refuses shutdown");
            return;
        }
    }
    let safe = t.path().join("safe");
    backup(&[
        s(&safe),
        &format!("vol={}", s(&img)),
        &format!("log={}", s(&log)),
    ]);
    backup(&[s(&safe), &format!("vol={}", s(&img))]);
    // The kernel's recovery of copies of both.
    let (copy, log_copy) = (t.path().join("copy.img"), t.path().join("log-copy.img"));
    std::fs::copy(&img, &copy).unwrap();
    std::fs::copy(&log, &log_copy).unwrap();
    let mut loops = Loops::default();
    let lcopy = loops.attach(&log_copy, 0, 16 << 20).unwrap();
    let want = kernel(&copy, &kmnt, &format!("loop,noatime,logdev={lcopy}"), view).unwrap();
    let want_df = kernel(&copy, &kmnt, &format!("loop,ro,logdev={lcopy}"), statvfs).unwrap();
    drop(loops);
    assert!(
        want.contains_key("late/f199"),
        "the crash image holds the late work"
    );
    let m = Mounted::new(&safe, t.path(), &[]);
    let files = m.dir.join("1/vol/files");
    same_view(&want, &files, &m, "external log");
    assert_eq!(statvfs(&files), want_df, "statvfs");
    assert!(m.log_text().contains("replayed"), "{}", m.log_text());
    // Point 2 has no log device: shown as recorded (what the home locations held,
    // the logged work missing).
    assert!(m.dir.join("2/vol/files").is_dir());
    assert!(!m.dir.join("2/vol/files/late/f199").exists());
    assert!(
        m.log_text()
            .contains("log is on another device, not found in this point"),
        "{}",
        m.log_text()
    );
}
