//! `disksafe extract`: files copied out of a point without FUSE, checked against the
//! kernel's view of the same volume and against the tree mkfs was given.

mod common;

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use rand::{rngs::StdRng, Rng, SeedableRng};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Each path's view less what a copy cannot keep: the change time (stamped by the
/// kernel as the copy is made), inode flags (`cp -a` keeps none), blocks allocated
/// (the destination filesystem's own), a directory's size (its format's), and for
/// preallocated files the holes (unwritten extents read as zeros, copied as holes).
fn copyable(view: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    view.iter()
        .map(|(p, v)| {
            let dir = v.starts_with("mode 40");
            let mut out = Vec::new();
            let mut words = v.split(' ').peekable();
            while let Some(w) = words.next() {
                match w {
                    "ctime" | "flags" | "blocks" => {
                        words.next();
                    }
                    "size" if dir => {
                        words.next();
                    }
                    "seeks" if p.starts_with("prealloc") => {
                        // A list: skip to its end.
                        for x in words.by_ref() {
                            if x.ends_with(']') {
                                break;
                            }
                        }
                    }
                    _ => out.push(w),
                }
            }
            (p.clone(), out.join(" "))
        })
        .collect()
}

/// A volume the kernel filled with everything the tree tests check (hard links,
/// devices, a fifo and a socket, xattrs and ACLs, sparse and preallocated files,
/// times with nanoseconds and before 1970) comes out as the kernel shows it, but for
/// what a copy cannot keep; the safe is not changed.
#[test]
fn extract_copies_a_tree_as_the_kernel_shows_it() {
    let name = "extract_copies_a_tree_as_the_kernel_shows_it";
    // XFS: the volume must take 40 xattrs on one file and one of 3000 bytes.
    if !mkfs_ready("xfs", name) {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let img = t.path().join("fs.img");
    File::create(&img).unwrap().set_len(320 << 20).unwrap();
    assert!(run("mkfs.xfs", &["-q", "-f", s(&img)]), "mkfs.xfs");
    let kmnt = t.path().join("kernel");
    let mut rng = StdRng::seed_from_u64(71);
    if kernel_mount("xfs", &img, &kmnt, "loop", |m| {
        fill_posix(m, 4 << 20, &mut rng)
    })
    .is_none()
    {
        eprintln!("SKIP {name}: the kernel does not mount XFS images here");
        return;
    }
    let safe = t.path().join("safe");
    backup(&[s(&safe), &format!("vol={}", s(&img))]);
    let before = sha256_file(&safe.join("safe.db"));
    let want = kernel_mount("xfs", &img, &kmnt, "loop,ro", view).unwrap();
    assert!(want.len() > 3000, "only {} paths", want.len());
    // Onto another XFS volume, which takes all those xattrs (ext4 would refuse the
    // 3000-byte one beside 40 others: the destination's limit, not the copy's).
    let out_img = t.path().join("out.img");
    File::create(&out_img).unwrap().set_len(320 << 20).unwrap();
    assert!(run("mkfs.xfs", &["-q", "-f", s(&out_img)]), "mkfs.xfs");
    let dest = t.path().join("out");
    kernel_mount("xfs", &out_img, &dest, "loop", |dest| {
        compare(&safe, dest, &want)
    })
    .unwrap();
    assert_eq!(
        sha256_file(&safe.join("safe.db")),
        before,
        "the safe unchanged"
    );
}

/// Extracts the volume's tree into `dest` and compares it with the kernel's `want`.
fn compare(safe: &Path, dest: &Path, want: &BTreeMap<String, String>) {
    let o = ds(&["extract", s(safe), "latest", "vol/files", s(dest)]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(o.stdout.is_empty(), "nothing on stdout");
    assert!(!err.contains("not kept"), "{err}");
    // Access times and holes as copied, taken before `view` reads the files: reading
    // moves the access time of those whose atime is older than their mtime, and
    // makes the destination's unwritten extents with pages cached count as data (a
    // second name of a file read already would show them).
    let root = dest.join("files");
    let mut before = BTreeMap::new();
    let mut stack = vec![root.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            if m.is_dir() {
                stack.push(p.clone());
            }
            let rel = p.strip_prefix(&root).unwrap().to_string_lossy().to_string();
            let holes = m.is_file().then(|| format!("{:?}", seeks(&p, m.size())));
            before.insert(
                rel,
                (format!("atime {}.{}", m.atime(), m.atime_nsec()), holes),
            );
        }
    }
    let mut got = view(&root);
    for (p, v) in got.iter_mut() {
        let (atime, holes) = &before[p];
        let at = v.find(" atime ").unwrap();
        let end = v[at + 7..].find(' ').map_or(v.len(), |e| at + 7 + e);
        v.replace_range(at + 1..end, atime);
        if let Some(holes) = holes {
            let at = v.find(" seeks [").unwrap() + 7;
            let end = at + v[at..].find(']').unwrap() + 1;
            v.replace_range(at..end, holes);
        }
    }
    let (want, got) = (copyable(want), copyable(&got));
    let diffs = view_diffs(&want, &got, |_, v, _| v.to_string());
    assert!(
        diffs.is_empty(),
        "{} differences:\n{}",
        diffs.len(),
        diffs.join("\n")
    );
}

/// One directory or one file comes out as mkfs was given it; what cannot be done
/// fails with a one-line error; a file behind a damaged block is named, not left
/// behind half-written, and the rest is copied.
#[test]
fn extract_copies_parts_and_reports_what_it_cannot() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    let mut rng = StdRng::seed_from_u64(72);
    make_tree(&src, 30, &mut rng);
    let mut victim = vec![0u8; 300 << 10];
    rng.fill(&mut victim[..]);
    std::fs::write(src.join("sub/victim"), &victim).unwrap();
    let img = t.path().join("fs.img");
    File::create(&img).unwrap().set_len(32 << 20).unwrap();
    let o = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-b", "4096", "-d"])
        .arg(&src)
        .arg(&img)
        .output()
        .expect("mkfs.ext4 (package e2fsprogs) is needed");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let safe = t.path().join("safe");
    backup(&[s(&safe), "--compression", "0", &format!("vol={}", s(&img))]);

    // A directory into an existing one; a file as a new name.
    let dest = t.path().join("out");
    std::fs::create_dir(&dest).unwrap();
    ok(&["extract", s(&safe), "1", "vol/files/sub", s(&dest)]);
    same_tree(
        &tree_digest(&dest.join("sub")),
        &tree_digest(&src.join("sub")),
        "sub",
    );
    let one = t.path().join("one.bin");
    ok(&["extract", s(&safe), "1", "vol/files/file 0.bin", s(&one)]);
    assert_eq!(sha256_file(&one), sha256_file(&src.join("file 0.bin")));
    // To standard output, for a pipe: the file's bytes only; a directory is refused.
    let o = ds(&[
        "extract",
        s(&safe),
        "1",
        "vol/files/sub/deeper/file 2.bin",
        "-",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        o.stdout,
        std::fs::read(src.join("sub/deeper/file 2.bin")).unwrap()
    );
    let e = fails(&["extract", s(&safe), "1", "vol/files/sub", "-"]);
    assert!(e.contains("only a file goes to standard output"), "{e}");
    // A raw image is a file too.
    let disk = t.path().join("disk.img");
    ok(&["extract", s(&safe), "1", "vol/disk.img", s(&disk)]);
    assert_eq!(sha256_file(&disk), sha256_file(&img));

    // Nothing is overwritten; unknown names and points are named, in one line each.
    for (point, path, to, want) in [
        ("1", "vol/files/file 0.bin", &one, "already exists"),
        (
            "1",
            "vol/files/nope",
            &dest,
            "vol/files/nope: no such entry",
        ),
        ("1", "other/files", &dest, "no such entry (there: vol)"),
        ("9", "vol/files", &dest, "no recovery point 9"),
        ("1", ".", &dest, "name a device's file or directory"),
    ] {
        let e = fails(&["extract", s(&safe), point, path, s(to)]);
        assert!(e.contains(want), "{point} {path}: {e}");
        assert_eq!(e.trim().lines().count(), 1, "one line: {e}");
    }

    // Damage the safe's copy of a block in the middle of the victim (its 64 KiB lie
    // inside the victim's 300 KiB, which mkfs writes in one run).
    let bmap = Command::new("debugfs")
        .args(["-R", "bmap /sub/victim 40"])
        .arg(&img)
        .output()
        .unwrap();
    let phys: u64 = String::from_utf8_lossy(&bmap.stdout)
        .trim()
        .parse()
        .unwrap();
    let block_no = phys * 4096 / 65536;
    let db = rusqlite::Connection::open(safe.join("safe.db")).unwrap();
    let (pack, offset): (i64, i64) = db
        .query_row(
            "SELECT b.pack, b.offset FROM block_map m JOIN blocks b ON b.id = m.block
             JOIN devices d ON d.id = m.device WHERE d.name = 'vol' AND m.block_no = ?1",
            [block_no as i64],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    drop(db);
    let in_block = phys * 4096 % 65536;
    flip_byte(
        &safe.join(format!("packs/{pack:08}.pack")),
        offset as u64 + 48 + in_block + 10,
        1,
    );
    let all = t.path().join("all");
    let o = ds(&["extract", s(&safe), "1", "vol/files", s(&all)]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains("all/sub/victim: Input/output error"),
        "the file named: {err}"
    );
    assert!(
        err.lines()
            .last()
            .unwrap()
            .contains("1 entry could not be extracted"),
        "{err}"
    );
    assert!(
        !all.join("sub/victim").exists(),
        "no half-written copy left"
    );
    let mut want = tree_digest(&src);
    want.remove("sub/victim");
    same_tree(&tree_digest(&all), &want, "the rest");
}

/// One `ls -l` line split into (mode, uid, gid, size, time, name); `None` for others.
fn ls_fields(line: &str) -> Option<(String, String, String, String, String, String)> {
    let mut rest = line;
    let mut f = Vec::new();
    for _ in 0..6 {
        rest = rest.trim_start();
        let end = rest.find(' ')?;
        f.push(rest[..end].to_string());
        rest = &rest[end..];
    }
    let name = rest.strip_prefix(' ')?.to_string();
    Some((
        f[0].clone(),
        f[2].clone(),
        f[3].clone(),
        f[4].clone(),
        f[5].clone(),
        name,
    ))
}

/// `ls` shows a point's entries as `ls -l` shows the tree mkfs was given (type and
/// permissions, owner, size, mtime, symlink targets), and the point's devices at its
/// root; unknown paths are one-line errors.
#[test]
fn ls_lists_a_point_as_ls_shows_the_source() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    let mut rng = StdRng::seed_from_u64(73);
    make_tree(&src, 24, &mut rng);
    std::fs::set_permissions(
        src.join("sub/file 1.bin"),
        std::os::unix::fs::PermissionsExt::from_mode(0o4751),
    )
    .unwrap();
    let safe = ext4_point(t.path(), &src);

    let root = ok(&["ls", s(&safe), "1"]);
    assert_eq!(root.lines().count(), 1, "{root}");
    assert!(
        root.trim_end().ends_with(" vol") && root.starts_with('d'),
        "{root}"
    );
    let vol = ok(&["ls", s(&safe), "latest", "vol"]);
    let names: Vec<String> = vol.lines().filter_map(ls_fields).map(|f| f.5).collect();
    assert_eq!(names, ["disk.img", "files"], "{vol}");

    for dir in ["", "sub", "sub/deeper"] {
        let o = Command::new("ls")
            .args(["-ln", "--time-style=+%Y-%m-%dT%H:%M:%SZ"])
            .arg(src.join(dir))
            .env("TZ", "UTC0")
            .output()
            .unwrap();
        let want: BTreeMap<String, _> = String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter_map(ls_fields)
            .map(|f| (f.5.clone(), f))
            .collect();
        let path = format!("vol/files/{dir}");
        let got: BTreeMap<String, _> = ok(&["ls", s(&safe), "1", path.trim_end_matches('/')])
            .lines()
            .filter_map(ls_fields)
            .filter(|f| f.5 != "lost+found")
            .map(|f| (f.5.clone(), f))
            .collect();
        assert_eq!(
            got.keys().collect::<Vec<_>>(),
            want.keys().collect::<Vec<_>>(),
            "{dir}"
        );
        for (name, w) in &want {
            let g = &got[name];
            let dir_entry = w.0.starts_with('d');
            assert_eq!(
                (&g.0, &g.1, &g.2, &g.4),
                (&w.0, &w.1, &w.2, &w.4),
                "{dir}/{name}: mode, owner, mtime"
            );
            if !dir_entry {
                assert_eq!(g.3, w.3, "{dir}/{name}: size");
            }
        }
    }
    // One file's own line.
    let one = ok(&["ls", s(&safe), "1", "vol/files/sub/file 1.bin"]);
    assert!(
        one.starts_with("-rwsr-x--x ") && one.trim_end().ends_with(" file 1.bin"),
        "{one}"
    );
    let e = fails(&["ls", s(&safe), "1", "vol/files/none"]);
    assert!(e.contains("vol/files/none: no such entry"), "{e}");
    assert_eq!(e.trim().lines().count(), 1, "{e}");
}

/// A safe at `dir/safe` whose point 1 is device `vol`: an 8 MiB ext4 of `src` at
/// `dir/fs.img` without metadata checksums or hashed directories (so the bytes
/// `damage` rewrites before the backup are what the reader meets) and with 2048
/// inodes.
fn unchecked_ext4_point(dir: &Path, src: &Path, damage: impl FnOnce(&mut [u8])) -> PathBuf {
    let img = dir.join("fs.img");
    File::create(&img).unwrap().set_len(8 << 20).unwrap();
    let args = [
        "-q",
        "-F",
        "-N",
        "2048",
        "-O",
        "^metadata_csum,^dir_index",
        "-d",
    ];
    let mut a = args.to_vec();
    a.extend([s(src), s(&img)]);
    assert!(run("mkfs.ext4", &a), "mkfs.ext4");
    let mut bytes = std::fs::read(&img).unwrap();
    damage(&mut bytes);
    std::fs::write(&img, &bytes).unwrap();
    let safe = dir.join("safe");
    backup(&[s(&safe), &format!("vol={}", s(&img))]);
    safe
}

/// Where `name` is in `bytes`, asserting it is there exactly once.
fn only_at(bytes: &[u8], name: &[u8]) -> usize {
    let at = bytes
        .windows(name.len())
        .position(|w| w == name)
        .expect("the entry's name in the image");
    assert!(
        bytes[at + name.len()..]
            .windows(name.len())
            .all(|w| w != name),
        "one copy"
    );
    at
}

/// A tree whose entry names try to leave DEST (an ext directory entry rewritten to
/// `../../evil`: no checksums on this volume to give it away) writes nothing outside
/// DEST; the entry is refused by name (the ext reader already skips the directory
/// block holding it, with a warning) and the rest comes out.
#[test]
fn names_that_would_leave_dest_are_refused() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    std::fs::create_dir_all(src.join("a/b")).unwrap();
    std::fs::write(src.join("a/b/file 0.bin"), b"escape").unwrap();
    std::fs::write(src.join("a/kept"), b"kept").unwrap();
    let safe = unchecked_ext4_point(t.path(), &src, |bytes| {
        let at = only_at(bytes, b"file 0.bin");
        bytes[at..at + 10].copy_from_slice(b"../../evil");
    });
    let dest = t.path().join("out/x/y");
    std::fs::create_dir_all(&dest).unwrap();
    let o = ds(&["extract", s(&safe), "1", "vol/files/a", s(&dest)]);
    let err = String::from_utf8_lossy(&o.stderr);
    for escaped in [
        t.path().join("evil"),
        t.path().join("out/evil"),
        t.path().join("out/x/evil"),
    ] {
        assert!(!escaped.exists(), "{} written: {err}", escaped.display());
    }
    assert_eq!(std::fs::read(dest.join("a/kept")).unwrap(), b"kept");
    // Refused by the parser (which skips the damaged directory block, saying why, and
    // counts it) or by extract (named); either way the exit says the copy is short.
    assert!(!o.status.success(), "{err}");
    assert!(
        (err.contains("name contains '/'") && err.contains("left out"))
            || err.contains("not a plain name"),
        "{err}"
    );
    assert!(!dest.join("a/b/file 0.bin").exists());
}

/// Where the point's own file tree is damaged (a directory block that does not parse,
/// an entry naming an inode not in use), `extract`, `ls` and `find` copy and list the
/// rest, each damaged part named in a warning, and exit non-zero saying the result is
/// short: a restore must not report success with files quietly missing.
#[test]
fn a_damaged_directory_makes_extract_ls_and_find_fail() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    std::fs::create_dir_all(src.join("d1")).unwrap();
    std::fs::create_dir_all(src.join("d2")).unwrap();
    std::fs::write(src.join("d1/alpha-entry.txt"), b"alpha").unwrap();
    std::fs::write(src.join("d1/beta-entry.txt"), b"beta").unwrap();
    std::fs::write(src.join("d2/gone-entry.txt"), b"gone").unwrap();
    std::fs::write(src.join("d2/kept-entry.txt"), b"kept").unwrap();
    std::fs::write(src.join("top.txt"), b"top").unwrap();
    let safe = unchecked_ext4_point(t.path(), &src, |bytes| {
        // d1's block: a record length that cannot be (below an entry's header) — the
        // block does not parse.
        let at = only_at(bytes, b"alpha-entry.txt");
        bytes[at - 4..at - 2].copy_from_slice(&5u16.to_le_bytes());
        // d2's entry: inode 1999 (not in use on this volume) and no file type, so the
        // reader must look at the inode to type it.
        let at = only_at(bytes, b"gone-entry.txt");
        bytes[at - 8..at - 4].copy_from_slice(&1999u32.to_le_bytes());
        bytes[at - 1] = 0;
    });

    let dest = t.path().join("out");
    std::fs::create_dir(&dest).unwrap();
    let o = ds(&["extract", s(&safe), "1", "vol/files", s(&dest)]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains("2 damaged directory entries or blocks of the point's file tree left out"),
        "{err}"
    );
    assert!(err.contains("block at 0:"), "the d1 block named: {err}");
    assert!(
        err.contains("entry \"gone-entry.txt\" names inode 1999, which is not in use"),
        "{err}"
    );
    // All else equals the source: d1 empty, d2 without the damaged entry.
    let mut want = tree_digest(&src);
    want.retain(|k, _| !k.starts_with("d1/") && k != "d2/gone-entry.txt");
    same_tree(&tree_digest(&dest.join("files")), &want, "extracted");

    // ls: the damaged listings list what they can and fail; a sound one succeeds.
    let o = ds(&["ls", s(&safe), "1", "vol/files/d2"]);
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    assert!(!o.status.success(), "{err}");
    assert!(
        out.lines().count() == 1 && out.contains(" kept-entry.txt"),
        "{out}"
    );
    assert!(
        err.contains(
            "vol/files/d2: 1 damaged directory entry or block of the point's file tree left out"
        ),
        "{err}"
    );
    let e = fails(&["ls", s(&safe), "1", "vol/files/d1"]);
    assert!(e.contains("1 damaged directory entry or block"), "{e}");
    let out = ok(&["ls", s(&safe), "1", "vol/files"]);
    let names: Vec<&str> = out.lines().filter_map(|l| l.rsplit(' ').next()).collect();
    assert_eq!(names, ["d1", "d2", "lost+found", "top.txt"], "{out}");
    // find: the same.
    let o = ds(&["find", s(&safe), "1", "vol/files", "--type", "f"]);
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    assert!(!o.status.success(), "{err}");
    assert_eq!(out, "vol/files/d2/kept-entry.txt\nvol/files/top.txt\n");
    assert!(
        err.contains("2 damaged directory entries or blocks"),
        "{err}"
    );
}

/// `find`'s paths, NUL-ended, as a sorted list.
fn nul_list(out: &[u8]) -> Vec<Vec<u8>> {
    let mut v: Vec<Vec<u8>> = out
        .split(|&b| b == 0)
        .filter(|p| !p.is_empty())
        .map(|p| p.to_vec())
        .collect();
    v.sort();
    v
}

/// `disksafe find` prints what GNU find prints over the tree mkfs was given (by name
/// pattern, by type, everything; names with a newline whole under `--print0`), under
/// the paths `extract` takes; `--long` gives `ls -l` lines; bad input is a one-line
/// error.
#[test]
fn find_prints_what_find_prints_over_the_source() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    let mut rng = StdRng::seed_from_u64(31);
    make_tree(&src, 24, &mut rng);
    std::fs::create_dir_all(src.join("Docs/old reports")).unwrap();
    for n in [
        "a.txt",
        "B.TXT",
        "two\nlines.txt",
        "old reports/q1.txt",
        "notes",
    ] {
        std::fs::write(src.join("Docs").join(n), n.as_bytes()).unwrap();
    }
    std::os::unix::fs::symlink("a.txt", src.join("Docs/latest.txt")).unwrap();
    let safe = ext4_point(t.path(), &src);

    // GNU find over the source, its paths moved under vol/files.
    let gnu = |args: &[&str]| {
        let o = Command::new("find")
            .current_dir(&src)
            .arg(".")
            .args(args)
            .arg("-print0")
            .output()
            .unwrap();
        assert!(o.status.success());
        let mut v: Vec<Vec<u8>> = nul_list(&o.stdout)
            .into_iter()
            .map(|p| {
                let mut q = b"vol/files".to_vec();
                q.extend_from_slice(&p[1..]);
                q
            })
            .collect();
        v.sort();
        v
    };
    let ours = |args: &[&str]| {
        let mut a = vec!["find", s(&safe), "1", "vol/files", "--print0"];
        a.extend_from_slice(args);
        let o = ds(&a);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let mut v = nul_list(&o.stdout);
        // mkfs adds lost+found, which the source has not.
        v.retain(|p| !p.starts_with(b"vol/files/lost+found"));
        v
    };
    for (gnu_args, our_args) in [
        (&["-name", "*.txt"][..], &["--name", "*.txt"][..]),
        (&["-name", "*.[Tt][Xx][Tt]"], &["--name", "*.[Tt][Xx][Tt]"]),
        (&["-iname", "*.txt"], &["--iname", "*.txt"]),
        (&["-iname", "B*"], &["--iname", "B*"]),
        (&["-name", "file ?.bin"], &["--name", "file ?.bin"]),
        (&["-type", "d"], &["--type", "d"]),
        (
            &["(", "-type", "l", "-o", "-type", "d", ")"],
            &["--type", "ld"],
        ),
        (
            &["-type", "f", "-name", "*s*"],
            &["--type", "f", "--name", "*s*"],
        ),
        (&[], &[]),
    ] {
        let want = gnu(gnu_args);
        assert!(!want.is_empty(), "{gnu_args:?}");
        assert_eq!(ours(our_args), want, "find {gnu_args:?}");
    }

    // Depth first, each directory's entries in name order, the start first; newline
    // ended by default.
    let out = ok(&["find", s(&safe), "1", "vol/files/Docs/", "--type", "fd"]);
    assert_eq!(
        out,
        "vol/files/Docs\nvol/files/Docs/B.TXT\nvol/files/Docs/a.txt\nvol/files/Docs/notes\n\
         vol/files/Docs/old reports\nvol/files/Docs/old reports/q1.txt\nvol/files/Docs/two\nlines.txt\n"
    );
    // Without PATH: the whole point, paths as extract takes them.
    let all = ok(&["find", s(&safe), "1", "--name", "q1.txt"]);
    assert_eq!(all, "vol/files/Docs/old reports/q1.txt\n");
    let dest = t.path().join("q1");
    ok(&["extract", s(&safe), "1", all.trim_end(), s(&dest)]);
    assert_eq!(std::fs::read(&dest).unwrap(), b"old reports/q1.txt");
    // --long: ls -l fields and the path.
    let long = ok(&[
        "find",
        s(&safe),
        "1",
        "vol/files/Docs",
        "-l",
        "--name",
        "*.txt",
    ]);
    let lines: Vec<&str> = long.lines().collect();
    // a.txt, latest.txt, q1.txt, and two\nlines.txt over two lines.
    assert_eq!(lines.len(), 5, "{long}");
    let a_txt = lines
        .iter()
        .find(|l| l.ends_with(" vol/files/Docs/a.txt"))
        .expect("a.txt listed");
    assert_eq!(
        ls_fields(a_txt).map(|f| (f.0, f.3)),
        Some(("-rw-r--r--".to_string(), "5".to_string())),
        "{a_txt}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("lrwxrwxrwx ")
                && l.ends_with(" vol/files/Docs/latest.txt -> a.txt")),
        "{long}"
    );

    let e = fails(&["find", s(&safe), "1", "vol/files", "--type", "fx"]);
    assert!(e.contains("'x' is not one of"), "{e}");
    assert_eq!(e.trim().lines().count(), 1, "{e}");
    let e = fails(&["find", s(&safe), "1", "vol/nothing"]);
    assert!(e.contains("vol/nothing"), "{e}");
    assert_eq!(e.trim().lines().count(), 1, "{e}");
}
