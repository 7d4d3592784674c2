//! `disksafe diff`: what changed between two points, checked against the kernel's view
//! of the volume before and after the changes were made through a kernel mount.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use common::*;
use rand::{rngs::StdRng, SeedableRng};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// One field of a `common::view` value (the word after `key`).
fn field<'a>(v: &'a str, key: &str) -> &'a str {
    let mut w = v.split(' ');
    while let Some(x) = w.next() {
        if x == key {
            return w.next().unwrap_or("");
        }
    }
    ""
}

/// What `diff` must print, worked out from the kernel's views of the two states by
/// the rules its documentation gives: `+`/`-` for a path on one side, `T` for a type
/// change, `M` for a file whose size or (`content`: bytes; otherwise mtime) differ or a
/// link whose target differs, `U` for permission, owner, (not a directory's) mtime or
/// xattr changes; access and change times, link counts and a directory's mtime never.
fn expected(
    before: &BTreeMap<String, String>,
    after: &BTreeMap<String, String>,
    prefix: &str,
    content: bool,
) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let paths: BTreeSet<&String> = before.keys().chain(after.keys()).collect();
    for p in paths {
        let line = |l: char| format!("{l}    {prefix}/{p}");
        let (a, b) = match (before.get(p), after.get(p)) {
            (None, Some(_)) => {
                out.insert(line('+'));
                continue;
            }
            (Some(_), None) => {
                out.insert(line('-'));
                continue;
            }
            (Some(a), Some(b)) => (a, b),
            (None, None) => unreachable!(),
        };
        let (ma, mb) = (
            u32::from_str_radix(field(a, "mode"), 8).unwrap(),
            u32::from_str_radix(field(b, "mode"), 8).unwrap(),
        );
        let fmt = libc::S_IFMT;
        if ma & fmt != mb & fmt {
            out.insert(line('T'));
            continue;
        }
        let file = ma & fmt == libc::S_IFREG;
        let dir = ma & fmt == libc::S_IFDIR;
        let mtime_moved = field(a, "mtime") != field(b, "mtime");
        let modified = if file {
            field(a, "size") != field(b, "size")
                || if content {
                    field(a, "sha") != field(b, "sha")
                } else {
                    mtime_moved
                }
        } else {
            a.split(" -> ").nth(1) != b.split(" -> ").nth(1) || field(a, "rdev") != field(b, "rdev")
        };
        let xattrs = |v: &str| {
            v.split(" xattr ")
                .skip(1)
                .map(str::to_string)
                .collect::<Vec<_>>()
        };
        let meta = ma != mb
            || field(a, "owner") != field(b, "owner")
            || (!dir && mtime_moved)
            || xattrs(a) != xattrs(b);
        if modified {
            out.insert(line('M'));
        } else if meta {
            out.insert(line('U'));
        }
    }
    out
}

/// `diff`'s lines as a set, and its summary line.
fn ours(args: &[&str]) -> (BTreeSet<String>, String) {
    let o = ds(args);
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(o.status.success(), "{args:?}: {err}");
    let out = String::from_utf8(o.stdout).unwrap();
    (out.lines().map(str::to_string).collect(), err)
}

/// Files added, removed, appended to, rewritten in place with their mtime put back,
/// touched, chmod'ed, chown'ed, given an xattr, turned into a directory, a directory
/// removed whole and a symlink pointed elsewhere, through the kernel's own mount of an
/// ext4 volume between two backups: `diff` prints what the kernel's views of the two
/// states say changed, by mtime and (`--content`) by bytes; the whole points too
/// (where the raw image changed only in bytes).
#[test]
fn diff_reports_what_the_kernel_saw_change() {
    if !is_root() {
        eprintln!("SKIP: diff_reports_what_the_kernel_saw_change needs root (loop mounts)");
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    let mut rng = StdRng::seed_from_u64(44);
    make_tree(&src, 12, &mut rng);
    let safe = ext4_point(t.path(), &src);
    let img = t.path().join("fs.img");
    let mnt = t.path().join("mnt");
    let Some(before) = kernel_mount("ext4", &img, &mnt, "ro", view) else {
        eprintln!(
            "SKIP: diff_reports_what_the_kernel_saw_change: the kernel cannot loop-mount ext4 here"
        );
        return;
    };
    kernel_mount("ext4", &img, &mnt, "rw", |m| {
        let p = |n: &str| m.join(n);
        std::fs::write(p("new.txt"), b"new").unwrap();
        std::fs::create_dir(p("newdir")).unwrap();
        std::fs::write(p("newdir/inner.txt"), b"inner").unwrap();
        let mut f = File::options().append(true).open(p("file 0.bin")).unwrap();
        std::io::Write::write_all(&mut f, b"more").unwrap();
        drop(f);
        std::fs::set_permissions(
            p("file 3.bin"),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .unwrap();
        set_xattr(&p("file 6.bin"), "user.note", b"checked");
        let m9 = std::fs::metadata(p("file 9.bin")).unwrap();
        set_times(&p("file 9.bin"), (m9.atime(), 0), (m9.mtime() + 100, 0));
        std::fs::remove_file(p("sub/file 1.bin")).unwrap();
        std::fs::remove_file(p("sub/file 4.bin")).unwrap();
        std::fs::create_dir(p("sub/file 4.bin")).unwrap();
        std::fs::write(p("sub/file 4.bin/x"), b"x").unwrap();
        // Same size, other bytes, mtime put back: only a byte comparison sees it.
        let m7 = std::fs::metadata(p("sub/file 7.bin")).unwrap();
        assert!(m7.len() > 0);
        let mut b7 = std::fs::read(p("sub/file 7.bin")).unwrap();
        b7[0] ^= 0xFF;
        std::fs::write(p("sub/file 7.bin"), &b7).unwrap();
        set_times(
            &p("sub/file 7.bin"),
            (m7.atime(), m7.atime_nsec()),
            (m7.mtime(), m7.mtime_nsec()),
        );
        std::os::unix::fs::chown(p("sub/file 10.bin"), Some(1000), Some(1000)).unwrap();
        std::fs::remove_dir_all(p("sub/deeper")).unwrap();
        std::fs::remove_file(p("link")).unwrap();
        std::os::unix::fs::symlink("sub", p("link")).unwrap();
    })
    .expect("read-write mount");
    let after = kernel_mount("ext4", &img, &mnt, "ro", view).unwrap();
    backup(&[s(&safe), &format!("vol={}", s(&img))]);

    for content in [false, true] {
        let want = expected(&before, &after, "vol/files", content);
        // Sanity of the oracle itself: the changes made are the ones it found.
        for l in [
            "+    vol/files/newdir/inner.txt",
            "M    vol/files/file 0.bin",
            "U    vol/files/file 3.bin",
            "U    vol/files/file 6.bin",
            "-    vol/files/sub/file 1.bin",
            "T    vol/files/sub/file 4.bin",
            "+    vol/files/sub/file 4.bin/x",
            "U    vol/files/sub/file 10.bin",
            "-    vol/files/sub/deeper",
            "M    vol/files/link",
        ] {
            assert!(want.contains(l), "{l} in {want:?}");
        }
        assert_eq!(
            want.contains("M    vol/files/sub/file 7.bin"),
            content,
            "{want:?}"
        );
        let nine = if content { "U" } else { "M" };
        assert!(want.contains(&format!("{nine}    vol/files/file 9.bin")));

        let mut args = vec!["diff", s(&safe), "1", "2", "vol/files"];
        if content {
            args.push("--content");
        }
        let (got, summary) = ours(&args);
        assert_eq!(got, want, "content {content}");
        let n = |l: &str| want.iter().filter(|x| x.starts_with(l)).count();
        assert!(
            summary.contains(&format!(
                "{} added, {} removed, {} changed, {} with metadata changed only, {} changed type",
                n("+"),
                n("-"),
                n("M"),
                n("U"),
                n("T")
            )),
            "{summary}"
        );

        // The whole points: the same, and the raw image's bytes changed (its size
        // did not; its time is the point's).
        args.retain(|a| *a != "vol/files");
        let (got, _) = ours(&args);
        let mut whole = want.clone();
        if content {
            whole.insert("M    vol/disk.img".to_string());
        }
        assert_eq!(got, whole, "whole points, content {content}");
    }

    // Back to front: each + is a -, and the other way round.
    let (back, _) = ours(&["diff", s(&safe), "2", "1", "vol/files/newdir"]);
    assert_eq!(
        back,
        BTreeSet::from([
            "-    vol/files/newdir".to_string(),
            "-    vol/files/newdir/inner.txt".to_string()
        ])
    );
    // A point against itself: nothing.
    let (same, _) = ours(&["diff", s(&safe), "2", "latest", "--content"]);
    assert!(same.is_empty(), "{same:?}");
    let e = fails(&["diff", s(&safe), "1", "2", "vol/files/nowhere"]);
    assert!(e.contains("in neither point 1 nor point 2"), "{e}");
    assert_eq!(e.trim().lines().count(), 1, "{e}");
    let e = fails(&["diff", s(&safe), "1", "9", "vol/files"]);
    assert_eq!(e.trim().lines().count(), 1, "{e}");
}
