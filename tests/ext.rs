//! ext2/3/4 file trees in the mount, checked against the source tree mkfs was given
//! and against the kernel's (and e2fsck's) view of the same images.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use rand::{rngs::StdRng, Rng, SeedableRng};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn xattrs(p: &Path) -> BTreeMap<Vec<u8>, Vec<u8>> {
    list_xattrs(p)
        .into_iter()
        .map(|name| {
            let v = get_xattr(p, &name).unwrap_or_else(|e| {
                panic!(
                    "getxattr {} on {}: errno {e}",
                    String::from_utf8_lossy(&name),
                    p.display()
                )
            });
            (name, v)
        })
        .collect()
}

/// A tree covering the list: big, tiny, empty and sparse files, deep paths,
/// hard links, short and long symlinks, xattrs (small and block-sized), special files,
/// odd names.
fn make_rich_tree(root: &Path, rng: &mut StdRng) {
    size_extremes(root, rng);
    std::fs::write(root.join("small text.txt"), b"hello, world\n").unwrap();
    let sp = File::create(root.join("sparse")).unwrap();
    sp.set_len(40 << 20).unwrap();
    for off in [0u64, 5 << 20, (17 << 20) + 123, (40 << 20) - 10] {
        sp.write_all_at(b"data in a sparse file", off.min((40 << 20) - 21))
            .unwrap();
    }
    let mut deep = root.to_path_buf();
    for i in 0..40 {
        deep.push(format!("level{i}"));
    }
    std::fs::create_dir_all(&deep).unwrap();
    std::fs::write(deep.join("bottom.txt"), b"deep").unwrap();
    for name in [
        "with space",
        "ünïcødé-日本語",
        "new\nline",
        "tab\there",
        "-dash",
        ".hidden",
    ] {
        std::fs::write(root.join(name), name.as_bytes()).unwrap();
    }
    std::fs::create_dir(root.join("links")).unwrap();
    std::fs::write(root.join("links/target"), b"linked").unwrap();
    for i in 0..5 {
        std::fs::hard_link(
            root.join("links/target"),
            root.join(format!("links/hard{i}")),
        )
        .unwrap();
    }
    std::os::unix::fs::symlink("target", root.join("links/short")).unwrap();
    let long: String = "long-component/".repeat(12);
    std::os::unix::fs::symlink(&long, root.join("links/long")).unwrap();
    std::os::unix::fs::symlink("../big.bin", root.join("links/up")).unwrap();
    set_xattr(&root.join("tiny"), "user.small", b"v");
    set_xattr(&root.join("big.bin"), "user.checksum", b"0123456789abcdef");
    set_xattr(&root.join("big.bin"), "user.big", &[b'z'; 700]);
    set_xattr(&root.join("links"), "user.on-a-dir", b"yes");
    if is_root() {
        set_xattr(&root.join("tiny"), "trusted.t", b"trusted value");
    }
    let fifo = CString::new(root.join("fifo").as_os_str().as_bytes()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o640) }, 0);
    if is_root() {
        let chr = CString::new(root.join("chardev").as_os_str().as_bytes()).unwrap();
        assert_eq!(
            unsafe { libc::mknod(chr.as_ptr(), libc::S_IFCHR | 0o600, libc::makedev(1, 3)) },
            0
        );
        let blk = CString::new(root.join("blockdev").as_os_str().as_bytes()).unwrap();
        assert_eq!(
            unsafe {
                libc::mknod(
                    blk.as_ptr(),
                    libc::S_IFBLK | 0o600,
                    libc::makedev(259, 70000),
                )
            },
            0
        );
        std::os::unix::fs::chown(root.join("tiny"), Some(70000), Some(80000)).unwrap();
        std::os::unix::fs::lchown(root.join("links/short"), Some(1234), Some(4321)).unwrap();
    }
    drop(std::os::unix::net::UnixListener::bind(root.join("socket")).unwrap());
    std::fs::set_permissions(
        root.join("small text.txt"),
        std::os::unix::fs::PermissionsExt::from_mode(0o4751),
    )
    .unwrap();
    // Vary the timestamps' nanoseconds.
    for (i, name) in ["tiny", "big.bin", "empty"].iter().enumerate() {
        let c = CString::new(root.join(name).as_os_str().as_bytes()).unwrap();
        let t = [
            libc::timespec {
                tv_sec: 1_600_000_000 + i as i64,
                tv_nsec: 123_456_789,
            },
            libc::timespec {
                tv_sec: 1_700_000_000 + i as i64,
                tv_nsec: 987_654_321 - i as i64,
            },
        ];
        assert_eq!(
            unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), t.as_ptr(), 0) },
            0
        );
    }
}

/// Compares every entry below `src` with `got`: type, mode, owner, size, mtime (with
/// nanoseconds when `ns`), content, link target, device number, xattrs, hard-link
/// groups. Returns a list of differences.
fn compare(src: &Path, got: &Path, ns: bool) -> Vec<String> {
    let mut diffs = Vec::new();
    let mut links: HashMap<u64, u64> = HashMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let (sd, gd) = (src.join(&rel), got.join(&rel));
        let mut want: Vec<_> = std::fs::read_dir(&sd)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        let mut have: Vec<_> = std::fs::read_dir(&gd)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|n| !(rel.as_os_str().is_empty() && n == "lost+found"))
            .collect();
        want.sort();
        have.sort();
        if want != have {
            diffs.push(format!("{}: entries {want:?} vs {have:?}", rel.display()));
            continue;
        }
        for name in want {
            let r = rel.join(&name);
            let (a, b) = (src.join(&r), got.join(&r));
            let (ma, mb) = (
                std::fs::symlink_metadata(&a).unwrap(),
                std::fs::symlink_metadata(&b).unwrap(),
            );
            let mut d = |what: &str, x: String, y: String| {
                if x != y {
                    diffs.push(format!("{}: {what} {x} vs {y}", r.display()));
                }
            };
            d(
                "mode",
                format!("{:o}", ma.mode()),
                format!("{:o}", mb.mode()),
            );
            d("uid", ma.uid().to_string(), mb.uid().to_string());
            d("gid", ma.gid().to_string(), mb.gid().to_string());
            d("mtime", ma.mtime().to_string(), mb.mtime().to_string());
            if ns {
                d(
                    "mtime_nsec",
                    ma.mtime_nsec().to_string(),
                    mb.mtime_nsec().to_string(),
                );
            }
            let ft = ma.file_type();
            if ft.is_dir() {
                stack.push(r.clone());
            } else {
                d("nlink", ma.nlink().to_string(), mb.nlink().to_string());
            }
            if ft.is_file() {
                d("size", ma.len().to_string(), mb.len().to_string());
                if ma.len() == mb.len() {
                    d("content", sha256_file(&a), sha256_file(&b));
                }
                if ma.nlink() > 1 {
                    let prev = links.insert(ma.ino(), mb.ino());
                    if prev.is_some_and(|p| p != mb.ino()) {
                        d("hard link", "one inode".into(), "split".into());
                    }
                }
            }
            if ft.is_symlink() {
                d(
                    "target",
                    format!("{:?}", std::fs::read_link(&a).unwrap()),
                    format!("{:?}", std::fs::read_link(&b).unwrap()),
                );
            }
            use std::os::unix::fs::FileTypeExt;
            if ft.is_char_device() || ft.is_block_device() {
                d("rdev", ma.rdev().to_string(), mb.rdev().to_string());
            }
            d(
                "xattrs",
                format!("{:?}", xattrs(&a)),
                format!("{:?}", xattrs(&b)),
            );
        }
    }
    let distinct_src: std::collections::HashSet<_> = links.keys().collect();
    let distinct_got: std::collections::HashSet<_> = links.values().collect();
    if distinct_src.len() != distinct_got.len() {
        diffs.push("hard-link groups merged".into());
    }
    diffs
}

fn mkfs(cmd: &str, opts: &[&str], src: &Path, img: &Path, size: u64) {
    File::create(img).unwrap().set_len(size).unwrap();
    let o = Command::new(cmd)
        .args(["-q", "-F"])
        .args(opts)
        .args(["-d", s(src), s(img)])
        .output()
        .unwrap_or_else(|e| panic!("{cmd} (package e2fsprogs) is needed: {e}"));
    assert!(
        o.status.success(),
        "{cmd} {opts:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// mkfs -d stores whole seconds only: copy the source's nanosecond mtimes onto the
/// image through a kernel mount, so the image matches the tree to the nanosecond.
/// Returns whether nanoseconds could be stored (kernel mount works, inodes hold them).
fn apply_times(img: &Path, src: &Path, mnt: &Path) -> bool {
    with_kernel_mount(img, mnt, |m| {
        let mut stack = vec![PathBuf::new()];
        while let Some(rel) = stack.pop() {
            for e in std::fs::read_dir(src.join(&rel)).unwrap() {
                let e = e.unwrap();
                let r = rel.join(e.file_name());
                let md = e.metadata().unwrap();
                if md.is_dir() {
                    stack.push(r.clone());
                }
                set_times(
                    &m.join(&r),
                    (md.atime(), md.atime_nsec()),
                    (md.mtime(), md.mtime_nsec()),
                );
            }
        }
        // Directories last-touched by the loop above keep their own times; read back one
        // file to see whether the inodes hold nanoseconds.
        std::fs::symlink_metadata(m.join("tiny"))
            .unwrap()
            .mtime_nsec()
            != 0
    })
    .unwrap_or(false)
}

/// Inode flags (`FS_IOC_GETFLAGS`, what lsattr shows) of every regular file and
/// directory under `root`, by path; `None` for entries that do not answer.
fn tree_flags(root: &Path) -> BTreeMap<PathBuf, Option<u32>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for e in std::fs::read_dir(root.join(&rel)).unwrap() {
            let e = e.unwrap();
            let r = rel.join(e.file_name());
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                stack.push(r.clone());
            } else if !ft.is_file() {
                continue;
            }
            let f = File::options()
                .read(true)
                .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW)
                .open(root.join(&r))
                .unwrap();
            let mut flags: libc::c_int = 0;
            let rc = unsafe { libc::ioctl(f.as_raw_fd(), libc::FS_IOC_GETFLAGS, &mut flags) };
            out.insert(r, (rc == 0).then_some(flags as u32));
        }
    }
    out
}

/// Sets inode flags with chattr through a kernel mount (immutable, append-only,
/// no-dump, no-atime, sync, secure deletion, Orlov top directory, dirsync), and
/// returns every entry's flags as the kernel reports them; `None` without a kernel
/// mount.
fn set_flags(img: &Path, mnt: &Path) -> Option<BTreeMap<PathBuf, Option<u32>>> {
    with_kernel_mount(img, mnt, |m| {
        for (attrs, rel) in [
            ("+i", "tiny"),
            ("+a", "small text.txt"),
            ("+dA", "big.bin"),
            ("+Ss", "links/target"),
            ("+T", "links"),
            ("+D", "level0"),
        ] {
            let o = Command::new("chattr")
                .args([attrs, s(&m.join(rel))])
                .output()
                .expect("chattr (package e2fsprogs)");
            assert!(
                o.status.success(),
                "chattr {attrs} {rel}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
        tree_flags(m)
    })
}

/// A second, independent oracle: the `ext4-view` crate's reading of the same image.
/// Every entry it lists must be in the mount with the same type, permissions, owner,
/// size, mtime (with nanoseconds), content and link target, and each directory must
/// list the same names. What ext4-view itself fails to read (it lacks some features:
/// inline_data, 128-byte inodes, holes in block-mapped files) is counted, not compared;
/// `None` where it reads nothing of the image.
fn ext4_view_diffs(img: &Path, got: &Path) -> Option<Vec<String>> {
    use std::ffi::OsStr;
    let fs = match ext4_view::Ext4::load_from_path(img) {
        Ok(fs) => fs,
        Err(ext4_view::Ext4Error::Incompatible(why)) => {
            eprintln!("ext4-view cannot read {}: {why}", img.display());
            return None;
        }
        Err(e) => panic!("ext4-view rejects {}: {e}", img.display()),
    };
    let mut diffs = Vec::new();
    let (mut compared, mut unread) = (0usize, Vec::new());
    let mut stack: Vec<Vec<u8>> = vec![b"/".to_vec()];
    while let Some(dir) = stack.pop() {
        let local = got.join(OsStr::from_bytes(&dir[1..]));
        let mut want = Vec::new();
        let entries = match fs.read_dir(dir.as_slice()) {
            Ok(e) => e,
            Err(e) => {
                unread.push(format!("{}: {e}", String::from_utf8_lossy(&dir)));
                continue;
            }
        };
        for e in entries {
            let e = e.unwrap();
            let name = e.file_name().as_ref().to_vec();
            if name == b"." || name == b".." {
                continue;
            }
            want.push(name.clone());
            let mut path = dir.clone();
            if path.len() > 1 {
                path.push(b'/');
            }
            path.extend_from_slice(&name);
            let show = String::from_utf8_lossy(&path).into_owned();
            let m = match fs.symlink_metadata(path.as_slice()) {
                Ok(m) => m,
                Err(e) => {
                    unread.push(format!("{show}: {e}"));
                    continue;
                }
            };
            let b = match std::fs::symlink_metadata(local.join(OsStr::from_bytes(&name))) {
                Ok(b) => b,
                Err(err) => {
                    diffs.push(format!("{show}: missing in the mount ({err})"));
                    continue;
                }
            };
            let ft = m.file_type();
            let bt = b.file_type();
            use std::os::unix::fs::FileTypeExt;
            let same_type = ft.is_dir() == bt.is_dir()
                && ft.is_regular_file() == bt.is_file()
                && ft.is_symlink() == bt.is_symlink()
                && ft.is_char_dev() == bt.is_char_device()
                && ft.is_block_dev() == bt.is_block_device()
                && ft.is_fifo() == bt.is_fifo()
                && ft.is_socket() == bt.is_socket();
            if !same_type {
                diffs.push(format!("{show}: type ext4-view {ft:?} vs mount {bt:?}"));
                continue;
            }
            let mut d = |what: &str, x: String, y: String| {
                if x != y {
                    diffs.push(format!("{show}: {what} ext4-view {x} vs mount {y}"));
                }
            };
            d(
                "mode",
                format!("{:o}", m.mode()),
                format!("{:o}", b.mode() & 0o7777),
            );
            d("uid", m.uid().to_string(), b.uid().to_string());
            d("gid", m.gid().to_string(), b.gid().to_string());
            d(
                "mtime",
                m.modified().seconds().to_string(),
                b.mtime().to_string(),
            );
            d(
                "mtime_nsec",
                m.modified().nanoseconds().to_string(),
                b.mtime_nsec().to_string(),
            );
            if ft.is_dir() {
                stack.push(path.clone());
            } else if ft.is_regular_file() {
                d("size", m.len().to_string(), b.len().to_string());
                match fs.read(path.as_slice()) {
                    Ok(data) => d(
                        "content",
                        sha256(&data),
                        sha256_file(&local.join(OsStr::from_bytes(&name))),
                    ),
                    Err(e) => {
                        unread.push(format!("{show}: {e}"));
                        continue;
                    }
                }
            } else if ft.is_symlink() {
                let Ok(t) = fs.read_link(path.as_slice()) else {
                    unread.push(format!("{show}: readlink"));
                    continue;
                };
                let mine = std::fs::read_link(local.join(OsStr::from_bytes(&name))).unwrap();
                d(
                    "target",
                    String::from_utf8_lossy(t.as_ref()).into_owned(),
                    mine.to_string_lossy().into_owned(),
                );
            }
            compared += 1;
        }
        let mut have: Vec<Vec<u8>> = std::fs::read_dir(&local)
            .unwrap()
            .map(|e| e.unwrap().file_name().as_bytes().to_vec())
            .collect();
        want.sort();
        have.sort();
        if want != have {
            diffs.push(format!(
                "{}: names differ: ext4-view {} vs mount {}",
                String::from_utf8_lossy(&dir),
                want.len(),
                have.len()
            ));
        }
    }
    if !unread.is_empty() {
        eprintln!(
            "ext4-view could not read {} entries of {} (first: {}); compared {compared}",
            unread.len(),
            img.display(),
            unread[0]
        );
    }
    (compared > 0).then_some(diffs)
}

fn check_variant(name: &str, cmd: &str, opts: &[&str], want_ns: bool) {
    if !fuse_available() {
        eprintln!("SKIP ext variant {name}: FUSE is not available here");
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let mut rng = StdRng::seed_from_u64(name.len() as u64);
    let src = t.path().join("src");
    make_rich_tree(&src, &mut rng);
    let img = t.path().join("fs.img");
    mkfs(cmd, opts, &src, &img, 96 << 20);
    let ns = apply_times(&img, &src, &t.path().join("kernel"));
    if want_ns && !ns {
        eprintln!("{name}: nanosecond times not checked (no kernel mount of this image here)");
    }
    let flags = set_flags(&img, &t.path().join("kernel"));
    let safe = t.path().join("safe");
    backup(&[s(&safe), &format!("vol={}", s(&img))]);
    let m = Mounted::new(&safe, t.path(), &[]);
    let files = m.dir.join("1/vol/files");
    // df shows what it shows on the kernel's read-only mount of the same image.
    match with_kernel_mount_ro(&img, &t.path().join("kernel"), statvfs) {
        Some(want) => assert_eq!(statvfs(&files), want, "{name}: statvfs"),
        None => eprintln!("{name}: statvfs not checked (no kernel mount of this image here)"),
    }
    // lsattr sees the flags the kernel reports for the same image.
    match flags {
        Some(want) => {
            let immutable = 0x10;
            assert_eq!(
                want[Path::new("tiny")].map(|f| f & immutable),
                Some(immutable)
            );
            assert_eq!(tree_flags(&files), want, "{name}: inode flags");
        }
        None => eprintln!("{name}: inode flags not checked (no kernel mount of this image here)"),
    }
    let diffs = compare(&src, &files, ns);
    assert!(
        diffs.is_empty(),
        "{name}: {} differences:\n{}",
        diffs.len(),
        diffs.join("\n")
    );
    match ext4_view_diffs(&img, &files) {
        Some(diffs) => assert!(
            diffs.is_empty(),
            "{name}: {} differences from ext4-view:\n{}",
            diffs.len(),
            diffs.join("\n")
        ),
        None => eprintln!("{name}: second oracle (ext4-view) skipped for this image"),
    }
    let log = m.log_text();
    assert!(!log.contains("checksum mismatch"), "{name}: {log}");
}

#[test]
fn ext4_default() {
    check_variant("ext4", "mkfs.ext4", &["-b", "4096", "-I", "256"], true);
}
#[test]
fn ext4_1k_blocks() {
    check_variant("ext4-1k", "mkfs.ext4", &["-b", "1024", "-I", "256"], true);
}
#[test]
fn ext4_64k_blocks() {
    check_variant("ext4-64k", "mkfs.ext4", &["-b", "65536", "-I", "256"], true);
}
#[test]
fn ext2_indirect_blocks() {
    check_variant("ext2", "mkfs.ext2", &["-I", "256"], true);
}
#[test]
fn ext3_journal_and_indirect() {
    check_variant("ext3", "mkfs.ext3", &["-b", "1024"], true);
}
#[test]
fn ext4_inline_data() {
    check_variant(
        "ext4-inline",
        "mkfs.ext4",
        &["-O", "inline_data", "-I", "256"],
        true,
    );
}
#[test]
fn ext4_without_extents() {
    check_variant(
        "ext4-noextents",
        "mkfs.ext4",
        &["-O", "^extents,^64bit", "-I", "256"],
        true,
    );
}
#[test]
fn ext4_64bit_metadata_csum() {
    check_variant(
        "ext4-64bit-csum",
        "mkfs.ext4",
        &["-O", "64bit,metadata_csum", "-I", "256"],
        true,
    );
}
#[test]
fn ext4_128_byte_inodes() {
    check_variant("ext4-128", "mkfs.ext4", &["-I", "128"], false);
}
#[test]
fn ext4_meta_bg() {
    check_variant(
        "ext4-meta_bg",
        "mkfs.ext4",
        &["-O", "meta_bg,^resize_inode", "-I", "256"],
        true,
    );
}

#[test]
fn ext4_bigalloc() {
    // 96 MiB takes 1 KiB blocks: group 0 starts at block 0, before the superblock.
    check_variant(
        "ext4-bigalloc",
        "mkfs.ext4",
        &["-O", "bigalloc", "-C", "65536", "-I", "256"],
        true,
    );
}
#[test]
fn ext4_bigalloc_4k_blocks() {
    check_variant(
        "ext4-bigalloc-4k",
        "mkfs.ext4",
        &["-O", "bigalloc", "-b", "4096", "-C", "16384", "-I", "256"],
        true,
    );
}

#[test]
fn directory_with_100000_entries() {
    if !fuse_available() {
        eprintln!("SKIP directory_with_100000_entries: FUSE is not available here");
        return;
    }
    let t = tempfile::tempdir().unwrap();
    // mkfs -d links entries one by one (quadratic for one huge directory), so the
    // kernel builds this one: an htree directory of 100 001 entries.
    let empty = t.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let img = t.path().join("fs.img");
    mkfs("mkfs.ext4", &["-N", "120000"], &empty, &img, 160 << 20);
    let src = t.path().join("src");
    let dir = src.join("many");
    std::fs::create_dir_all(&dir).unwrap();
    let names: Vec<String> = (0..100_000u32)
        .map(|i| format!("entry-{i:06}-{}", i.wrapping_mul(2654435761)))
        .collect();
    let made = with_kernel_mount(&img, &t.path().join("kernel"), |m| {
        std::fs::create_dir(m.join("many")).unwrap();
        for n in &names {
            File::create(m.join("many").join(n)).unwrap();
        }
        std::fs::write(m.join("many/needle"), b"found me").unwrap();
    });
    if made.is_none() {
        eprintln!("SKIP directory_with_100000_entries: cannot loop-mount ext4 here (needs root)");
        return;
    }
    for n in names.iter().chain(std::iter::once(&"needle".to_string())) {
        File::create(dir.join(n)).unwrap();
    }
    let safe = t.path().join("safe");
    backup(&[s(&safe), &format!("vol={}", s(&img))]);
    let m = Mounted::new(&safe, t.path(), &[]);
    let got = m.dir.join("1/vol/files/many");
    let mut want: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    let mut have: Vec<_> = std::fs::read_dir(&got)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    want.sort();
    have.sort();
    assert_eq!(want.len(), 100_001);
    assert!(want == have, "listing of 100 001 entries differs");
    assert_eq!(std::fs::read(got.join("needle")).unwrap(), b"found me");
    let mut rng = StdRng::seed_from_u64(9);
    for _ in 0..2000 {
        let n = &want[rng.gen_range(0..want.len())];
        assert!(
            std::fs::symlink_metadata(got.join(n)).is_ok(),
            "lookup {n:?}"
        );
    }
    assert!(std::fs::symlink_metadata(got.join("not-there")).is_err());
}

/// Runs `f` with an ext4 image loop-mounted read-write; `None` when loop devices or
/// kernel ext4 are unavailable.
fn with_kernel_mount<T>(img: &Path, mnt: &Path, f: impl FnOnce(&Path) -> T) -> Option<T> {
    kernel_mount(img, mnt, "loop", f)
}

/// [`with_kernel_mount`], read-only.
fn with_kernel_mount_ro<T>(img: &Path, mnt: &Path, f: impl FnOnce(&Path) -> T) -> Option<T> {
    kernel_mount(img, mnt, "loop,ro", f)
}

/// The shared helper, whose unmount tries a busy answer again (CI once saw this
/// test's own single umount fail busy right after the last fsync).
fn kernel_mount<T>(img: &Path, mnt: &Path, opts: &str, f: impl FnOnce(&Path) -> T) -> Option<T> {
    common::kernel_mount("auto", img, mnt, opts, f)
}

/// An ext4 image copied while a kernel mount of it was busy (files fsynced one by one,
/// so journal commits whose metadata is not yet checkpointed in place; an fallocated
/// file; a delete and a rename): what a snapshot of a running machine holds. `None`
/// where loop mounts are unavailable.
fn busy_crash_image(dir: &Path) -> Option<std::path::PathBuf> {
    busy_crash_image_with(dir, &[])
}

/// [`busy_crash_image`] of a volume made with extra mkfs.ext4 options.
fn busy_crash_image_with(dir: &Path, opts: &[&str]) -> Option<std::path::PathBuf> {
    busy_crash_image_mounted(dir, opts, "loop")
}

/// [`busy_crash_image_with`], the kernel mounting it with options `mount_opts`.
fn busy_crash_image_mounted(
    dir: &Path,
    opts: &[&str],
    mount_opts: &str,
) -> Option<std::path::PathBuf> {
    // On a loaded machine the kernel may write everything back and empty its journal
    // before the copy is taken, or go on writing its journal while the copy (not an
    // atomic snapshot) reads it, leaving a start whose records do not follow: such a
    // copy has little or nothing to replay (e2fsprogs' logdump lists few logged
    // blocks), so try again.
    for attempt in 0..6 {
        let d = dir.join(format!("busy{attempt}"));
        std::fs::create_dir(&d).unwrap();
        let crash = busy_crash_image_once(&d, opts, mount_opts)?;
        let head = tool("dumpe2fs", &["-h", s(&crash)]);
        let logged = logged_copies(&crash).len();
        if dumpe2fs_field(&head, "Journal start:").unwrap_or(0) != 0 && logged > 50 {
            return Some(crash);
        }
        eprintln!("the copy's journal holds {logged} logged blocks (attempt {attempt}); again");
    }
    panic!("the kernel's journal was empty in every copy");
}

/// One try of [`busy_crash_image_mounted`].
fn busy_crash_image_once(
    dir: &Path,
    opts: &[&str],
    mount_opts: &str,
) -> Option<std::path::PathBuf> {
    let empty = dir.join("empty");
    std::fs::create_dir(&empty).unwrap();
    let img = dir.join("live.img");
    let mut all = vec!["-I", "256"];
    all.extend_from_slice(opts);
    mkfs("mkfs.ext4", &all, &empty, &img, 64 << 20);
    let crash = dir.join("crash.img");
    let kmnt = dir.join("kernel");
    let mut rng = StdRng::seed_from_u64(21);
    kernel_mount(&img, &kmnt, mount_opts, |m| {
        std::fs::create_dir(m.join("work")).unwrap();
        for i in 0..60 {
            let mut data = vec![0u8; rng.gen_range(0..40_000)];
            rng.fill(&mut data[..]);
            let p = m.join(format!("work/file{i}"));
            std::fs::write(&p, &data).unwrap();
            File::open(&p).unwrap().sync_all().unwrap();
        }
        let f = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(m.join("work/prealloc"))
            .unwrap();
        assert_eq!(
            unsafe { libc::fallocate(std::os::unix::io::AsRawFd::as_raw_fd(&f), 0, 0, 1 << 20) },
            0
        );
        f.write_all_at(b"written in the middle", 300_000).unwrap();
        f.sync_all().unwrap();
        std::fs::remove_file(m.join("work/file3")).unwrap();
        std::fs::rename(m.join("work/file4"), m.join("renamed")).unwrap();
        File::open(m.join("work")).unwrap().sync_all().unwrap();
        std::fs::copy(&img, &crash).unwrap();
    })?;
    Some(crash)
}

#[test]
fn crash_consistent_point_is_replayed_like_e2fsck() {
    if !fuse_available() || !is_root() {
        eprintln!("SKIP crash_consistent_point_is_replayed_like_e2fsck: needs root and FUSE");
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let Some(crash) = busy_crash_image(t.path()) else {
        eprintln!(
            "SKIP crash_consistent_point_is_replayed_like_e2fsck: cannot loop-mount ext4 here"
        );
        return;
    };
    let dump = Command::new("dumpe2fs")
        .args(["-h", s(&crash)])
        .output()
        .unwrap();
    let dump = String::from_utf8_lossy(&dump.stdout);
    assert!(
        dump.contains("needs_recovery"),
        "the copy must need journal recovery:\n{dump}"
    );
    // Oracle: e2fsck -fy on another copy, then the kernel's view of it.
    let fixed = t.path().join("fixed.img");
    std::fs::copy(&crash, &fixed).unwrap();
    let st = Command::new("e2fsck")
        .args(["-fy", s(&fixed)])
        .output()
        .unwrap();
    assert!(
        st.status.code().unwrap_or(8) < 4,
        "e2fsck: {}",
        String::from_utf8_lossy(&st.stdout)
    );
    let want = with_kernel_mount(&fixed, &t.path().join("fixedmnt"), tree_digest).unwrap();
    let safe = t.path().join("safe");
    backup(&[s(&safe), &format!("vol={}", s(&crash))]);
    let m = Mounted::new(&safe, t.path(), &[]);
    let got = tree_digest(&m.dir.join("1/vol/files"));
    assert_eq!(got, want, "replayed tree differs from e2fsck's");
    assert!(
        m.log_text().contains("replayed"),
        "log says the journal was replayed: {}",
        m.log_text()
    );
    // Forensic view: as recorded, without replay; the safe is untouched either way.
    let raw = Mounted::new(&safe, t.path(), &["--no-replay"]);
    let unreplayed = std::panic::catch_unwind(|| tree_digest(&raw.dir.join("1/vol/files"))).ok();
    assert_ne!(
        unreplayed.as_ref(),
        Some(&want),
        "without replay the recorded state shows"
    );
    drop(raw);
    assert!(ok(&["verify", s(&safe)]).starts_with("ok:"));
}

/// Journal checksums (v3: mkfs.ext4's default, with metadata_csum) are checked as
/// the kernel's recovery checks them: none fails on a journal the kernel wrote, and a
/// logged copy damaged afterwards (as a device read while being written can leave
/// it) is skipped for the copy before it. Oracle: `e2fsck -E journal_only` replaying
/// the same images; every block the journal logs must read the same from both.
/// What `cmd args` prints, stdout then stderr.
fn tool(cmd: &str, args: &[&str]) -> String {
    let o = Command::new(cmd).args(args).output().unwrap();
    String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr)
}

/// (fs block, journal block) of every copy the journal of `img` logs, oldest first,
/// as `debugfs logdump -a` lists them.
fn logged_copies(img: &Path) -> Vec<(u64, u64)> {
    tool("debugfs", &["-R", "logdump -a", s(img)])
        .lines()
        .filter_map(|l| {
            let r = l.trim().strip_prefix("FS block ")?;
            let (n, r) = r.split_once(" logged at journal block ")?;
            let j = r.split_whitespace().next()?;
            Some((n.parse().ok()?, j.parse().ok()?))
        })
        .collect()
}

/// Our in-memory replay of `img`'s journal, with the logged blocks it skipped.
fn our_replay(img: &Path) -> (std::sync::Arc<dyn disksafe::readat::ReadAt>, u64) {
    let dev: std::sync::Arc<dyn disksafe::readat::ReadAt> =
        std::sync::Arc::new(disksafe::readat::FileReader::open(img).unwrap());
    let r = disksafe::ntfs_ext::ext::replayed_volume(dev, "test")
        .unwrap()
        .expect("the copy needs journal recovery");
    (r.volume, r.bad_blocks)
}

fn read_block(v: &dyn disksafe::readat::ReadAt, n: u64, bs: u64) -> Vec<u8> {
    let mut b = vec![0u8; bs as usize];
    v.read_exact_at(n * bs, &mut b).unwrap();
    b
}

/// Asserts that every block `logged` names (but the superblock's, which e2fsck
/// rewrites after replay) reads the same from `ours` as from `e2fsck -E journal_only`'s
/// replay of a copy of `img`; returns e2fsck's output.
fn same_blocks_as_e2fsck(
    ours: &dyn disksafe::readat::ReadAt,
    img: &Path,
    logged: &[(u64, u64)],
    bs: u64,
    dir: &Path,
) -> String {
    let oracle = dir.join("oracle.img");
    std::fs::copy(img, &oracle).unwrap();
    let out = tool("e2fsck", &["-E", "journal_only", "-y", s(&oracle)]);
    let theirs = disksafe::readat::FileReader::open(&oracle).unwrap();
    let mut blocks: Vec<u64> = logged
        .iter()
        .map(|&(n, _)| n)
        .filter(|&n| n != 1024 / bs)
        .collect();
    blocks.sort();
    blocks.dedup();
    for n in blocks {
        assert!(
            read_block(ours, n, bs) == read_block(&theirs, n, bs),
            "block {n} differs from e2fsck's replay of {}",
            img.display()
        );
    }
    out
}

/// The volume block of journal block `n` of `img`, as debugfs maps it.
fn journal_block_on_volume(img: &Path, n: u64) -> u64 {
    tool("debugfs", &["-R", &format!("bmap <8> {n}"), s(img)])
        .lines()
        .find_map(|l| l.trim().parse().ok())
        .expect("debugfs maps the journal block")
}

/// Journal checksums (v3: mkfs.ext4's default, with metadata_csum) are checked as
/// the kernel's recovery checks them: none fails on a journal the kernel wrote, and a
/// logged copy damaged afterwards (as a device read while being written can leave
/// it) is skipped for the copy before it. Oracle: `e2fsck -E journal_only` replaying
/// the same images; every block the journal logs must read the same from both.
#[test]
fn journal_checksums_are_checked_like_e2fsck() {
    if !is_root() {
        eprintln!("SKIP journal_checksums_are_checked_like_e2fsck: needs root");
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let Some(crash) = busy_crash_image(t.path()) else {
        eprintln!("SKIP journal_checksums_are_checked_like_e2fsck: cannot loop-mount ext4 here");
        return;
    };
    let bs = dumpe2fs_field(&tool("dumpe2fs", &["-h", s(&crash)]), "Block size:")
        .expect("dumpe2fs names the block size");
    let logged = logged_copies(&crash);
    assert!(logged.len() > 50, "a busy journal: {} copies", logged.len());
    let sb_block = 1024 / bs;
    let (ours, bad) = our_replay(&crash);
    assert_eq!(bad, 0, "no checksum of the kernel's journal fails");
    let out = same_blocks_as_e2fsck(&*ours, &crash, &logged, bs, t.path());
    assert!(!out.contains("Invalid checksum"), "{out}");

    // Damage the newest copy of the block logged most often (a bitmap, an inode table
    // or descriptor block), which an older copy then stands for.
    let mut counts: HashMap<u64, usize> = HashMap::new();
    for &(n, _) in &logged {
        *counts.entry(n).or_default() += 1;
    }
    let target = *counts
        .iter()
        .filter(|(&n, _)| n != sb_block)
        .max_by_key(|(&n, &c)| (c, n))
        .unwrap()
        .0;
    assert!(counts[&target] >= 2, "a block logged twice");
    let newest = logged.iter().rev().find(|&&(n, _)| n == target).unwrap().1;
    let phys = journal_block_on_volume(&crash, newest);
    let damaged = t.path().join("damaged.img");
    std::fs::copy(&crash, &damaged).unwrap();
    flip_byte(&damaged, phys * bs + bs / 2, 0x40);
    let (ours, bad) = our_replay(&damaged);
    assert_eq!(bad, 1, "the damaged copy is skipped");
    let out = same_blocks_as_e2fsck(&*ours, &damaged, &logged, bs, t.path());
    assert!(
        out.contains("Invalid checksum"),
        "e2fsck skips it too: {out}"
    );
    let (undamaged, _) = our_replay(&crash);
    assert_ne!(
        read_block(&*ours, target, bs),
        read_block(&*undamaged, target, bs),
        "block {target} now holds an older copy"
    );
}

/// The older v1 transaction checksum (a volume without metadata_csum mounted with
/// `journal_checksum`: CRC-32 of each transaction's descriptor and data blocks in its
/// commit block) is checked as the kernel's recovery checks it: none fails on the
/// kernel's journal, and a data block damaged afterwards ends the log before its
/// transaction, so that transaction and every later one are not replayed. Oracle:
/// `e2fsck -E journal_only`, which shares the kernel's recovery code.
#[test]
fn v1_journal_checksums_end_the_log_like_e2fsck() {
    if !is_root() {
        eprintln!("SKIP v1_journal_checksums_end_the_log_like_e2fsck: needs root");
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let Some(crash) =
        busy_crash_image_mounted(t.path(), &["-O", "^metadata_csum"], "loop,journal_checksum")
    else {
        eprintln!("SKIP v1_journal_checksums_end_the_log_like_e2fsck: cannot loop-mount ext4 here");
        return;
    };
    let head = tool("dumpe2fs", &["-h", s(&crash)]);
    assert!(
        head.lines().any(|l| l.starts_with("Journal features:")
            && l.contains("journal_checksum")
            && !l.contains("checksum_v")),
        "the kernel wrote v1 checksums:\n{head}"
    );
    let bs = dumpe2fs_field(&head, "Block size:").expect("dumpe2fs names the block size");
    let logged = logged_copies(&crash);
    assert!(logged.len() > 50, "a busy journal: {} copies", logged.len());
    let (ours, _) = our_replay(&crash);
    same_blocks_as_e2fsck(&*ours, &crash, &logged, bs, t.path());

    // Damage a logged copy about two thirds along the log: its transaction fails.
    let (victim, jblock) = logged[logged.len() * 2 / 3];
    let damaged = t.path().join("damaged.img");
    std::fs::copy(&crash, &damaged).unwrap();
    flip_byte(
        &damaged,
        journal_block_on_volume(&crash, jblock) * bs + bs / 2,
        0x40,
    );
    let (ours, _) = our_replay(&damaged);
    let out = same_blocks_as_e2fsck(&*ours, &damaged, &logged, bs, t.path());
    let (undamaged, _) = our_replay(&crash);
    let lost = logged
        .iter()
        .map(|&(n, _)| n)
        .filter(|&n| read_block(&*ours, n, bs) != read_block(&*undamaged, n, bs))
        .count();
    assert!(
        lost > 1,
        "blocks of the failed transaction and those after it (block {victim} damaged) are not replayed: {lost} differ; e2fsck: {out}"
    );
}

/// Logical to physical data blocks of the file at `path` in `img`, from the BLOCKS or
/// EXTENTS list of `debugfs -R stat` (entries `(a-b):p-q` and `(a):p`; pointer and
/// extent-tree blocks such as `(IND):p` are left out).
fn debugfs_data_blocks(img: &Path, path: &str) -> BTreeMap<u64, u64> {
    let out = Command::new("debugfs")
        .args(["-R", &format!("stat {path}"), s(img)])
        .output()
        .expect("debugfs (package e2fsprogs) is needed");
    let text = String::from_utf8_lossy(&out.stdout);
    let list = text
        .split_once("BLOCKS:\n")
        .or_else(|| text.split_once("EXTENTS:\n"))
        .map(|(_, l)| l.lines().next().unwrap_or(""))
        .unwrap_or_else(|| panic!("no block list in debugfs stat: {text}"));
    let range = |r: &str| -> Option<(u64, u64)> {
        match r.split_once('-') {
            Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
            None => r.parse().ok().map(|a| (a, a)),
        }
    };
    let mut map = BTreeMap::new();
    for e in list.split(", ") {
        let Some((l, p)) = e.trim().strip_prefix('(').and_then(|e| e.split_once("):")) else {
            continue;
        };
        let (Some((l0, l1)), Some((p0, _))) = (range(l), range(p)) else {
            continue; // (IND), (ETB0) and the like
        };
        for i in 0..=l1 - l0 {
            map.insert(l0 + i, p0 + i);
        }
    }
    map
}

#[test]
fn prefetch_of_a_file_range_asks_for_the_blocks_debugfs_lists() {
    prefetch_asks_for_debugfs_blocks("mkfs.ext4");
}

#[test]
fn prefetch_of_a_block_mapped_file_asks_for_the_blocks_debugfs_lists() {
    prefetch_asks_for_debugfs_blocks("mkfs.ext2");
}

/// 1 KiB blocks: with ext2's pointers the 12 MiB file reaches its double-indirect
/// blocks, and the window lies there.
fn prefetch_asks_for_debugfs_blocks(cmd: &str) {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    std::fs::create_dir(&src).unwrap();
    let mut rng = StdRng::seed_from_u64(77);
    // Small files around the big one so that it does not start at the first data block.
    for i in 0..50 {
        let mut b = vec![0u8; rng.gen_range(1..20_000)];
        rng.fill(&mut b[..]);
        std::fs::write(src.join(format!("f{i}")), b).unwrap();
    }
    let mut big = vec![0u8; 12 << 20];
    rng.fill(&mut big[..]);
    std::fs::write(src.join("big"), &big).unwrap();
    let img = t.path().join("fs.img");
    mkfs(cmd, &["-b", "1024"], &src, &img, 64 << 20);
    // The oracle: the file's data blocks, logical to physical, as e2fsprogs sees them.
    let blocks = debugfs_data_blocks(&img, "/big");
    assert_eq!(blocks.len(), 12 << 10, "1 KiB blocks of a 12 MiB file");

    // 5 MiB from 3 MiB + 100 bytes: logical blocks 3072 to 8192 (the last one partly).
    let asked = prefetch_asks(&img, b"big", (3 << 20) + 100, 5 << 20);
    let covered = |b: u64| {
        asked
            .iter()
            .any(|&(o, l)| o <= b * 1024 && b * 1024 + 1024 <= o + l)
    };
    for (&l, &p) in blocks.range(3072..=8192) {
        assert!(
            covered(p),
            "logical block {l} (physical {p}) not asked for: {asked:?}"
        );
    }
    // Nothing far outside: at most the 64 KiB merging slack per range beyond the 5 MiB.
    let total: u64 = asked.iter().map(|r| r.1).sum();
    assert!(
        total <= (5 << 20) + 1024 + asked.len() as u64 * (64 << 10),
        "{total} bytes asked for"
    );
}

/// A block-mapped file whose data reaches its triple-indirect blocks (past 64 MiB with
/// 1 KiB blocks), with holes at every level, reads back as the source file, in one
/// piece and in reads that straddle the levels' boundaries.
#[test]
fn block_mapped_reads_through_every_indirect_level() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    std::fs::create_dir(&src).unwrap();
    let mut rng = StdRng::seed_from_u64(3);
    let path = src.join("sparse");
    let f = File::create(&path).unwrap();
    let size = 80u64 << 20;
    f.set_len(size).unwrap();
    // Logical block (1 KiB) where each level starts: 12, 12 + 256, 12 + 256 + 65536.
    let (single, double, triple) = (12u64 << 10, 268u64 << 10, 65804u64 << 10);
    for (at, len) in [
        (0, 5000),
        (single - 700, 3000),
        (double - 1500, 200_000),
        (9 << 20, 1 << 20),
        (triple - 4096, 600_000),
        (75 << 20, 3000),
        (size - 2000, 2000),
    ] {
        let mut b = vec![0u8; len];
        rng.fill(&mut b[..]);
        f.write_all_at(&b, at).unwrap();
    }
    drop(f);
    let want = std::fs::read(&path).unwrap();
    let img = t.path().join("ext2.img");
    mkfs("mkfs.ext2", &["-b", "1024"], &src, &img, 96 << 20);
    let tree = open_image_tree(&img);
    let ino = tree.lookup(tree.root(), b"sparse").unwrap().unwrap();
    assert_eq!(tree.stat(ino).unwrap().size, size);
    let mut got = vec![0u8; size as usize];
    assert_eq!(tree.read(ino, 0, &mut got).unwrap(), size as usize);
    assert!(got == want, "whole-file read differs from the source");
    for at in [
        single - 10,
        double - 10,
        triple - 10,
        triple + 1000,
        size - 10,
    ] {
        let mut b = vec![0u8; 1 << 20];
        let n = tree.read(ino, at, &mut b).unwrap();
        assert_eq!(n as u64, (1u64 << 20).min(size - at));
        assert!(b[..n] == want[at as usize..at as usize + n], "read at {at}");
    }
}

/// Data extents and the (SEEK_DATA, SEEK_HOLE) answers at probes.
type Seeks = (Vec<(u64, u64)>, Vec<(Option<u64>, Option<u64>)>);

fn seeks(len: u64, probes: &[u64], seek: impl Fn(u64, bool) -> Option<u64>) -> Seeks {
    (seek_extents(len, &seek), seek_answers(probes, &seek))
}

/// SEEK_DATA and SEEK_HOLE on sparse files answer as the kernel's driver answers on
/// the same image: holes where no block is mapped, and (ext4) unwritten fallocated
/// extents, also around data written into the middle of one; for extent-mapped ext4
/// and block-mapped ext2 files, through the tree and through the mount.
#[test]
fn sparse_files_seek_like_the_kernel() {
    if !is_root() {
        eprintln!("SKIP sparse_files_seek_like_the_kernel: needs root for kernel mounts");
        return;
    }
    let mut rng = StdRng::seed_from_u64(88);
    for (cmd, opts) in [("mkfs.ext4", vec![]), ("mkfs.ext2", vec!["-b", "1024"])] {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        std::fs::create_dir(&src).unwrap();
        let write_at = |f: &File, at: u64, n: usize, rng: &mut StdRng| {
            let mut b = vec![0u8; n];
            rng.fill(&mut b[..]);
            f.write_all_at(&b, at).unwrap();
        };
        // mkfs -d keeps a source file's holes (and skips its zero blocks).
        let f = File::create(src.join("sparse")).unwrap();
        write_at(&f, 0, 100_000, &mut rng);
        write_at(&f, 3 << 20, 512 << 10, &mut rng);
        write_at(&f, (10 << 20) + 5, 1, &mut rng);
        f.set_len(20 << 20).unwrap();
        let f = File::create(src.join("late")).unwrap();
        write_at(&f, 4 << 20, 100, &mut rng);
        let f = File::create(src.join("dense")).unwrap();
        write_at(&f, 0, 1 << 20, &mut rng);
        File::create(src.join("empty")).unwrap();
        let img = t.path().join("fs.img");
        mkfs(cmd, &opts, &src, &img, 64 << 20);
        let mnt = t.path().join("mnt");
        if cmd == "mkfs.ext4" {
            // Unwritten extents: 2 MiB fallocated inside the hole, 4 KiB written in it.
            let ok = with_kernel_mount(&img, &mnt, |m| {
                let f = OpenOptions::new()
                    .write(true)
                    .open(m.join("sparse"))
                    .unwrap();
                // SAFETY: fallocate on an open descriptor; no memory is passed.
                let r = unsafe {
                    libc::fallocate(std::os::fd::AsRawFd::as_raw_fd(&f), 0, 12 << 20, 2 << 20)
                };
                assert_eq!(r, 0, "fallocate: {}", std::io::Error::last_os_error());
                write_at(&f, (13 << 20) + 8192, 4096, &mut rng);
                f.sync_all().unwrap();
            });
            if ok.is_none() {
                eprintln!("SKIP sparse_files_seek_like_the_kernel: loop mounts unavailable");
                return;
            }
        }
        let names = ["sparse", "late", "dense", "empty"];
        let probes: Vec<Vec<u64>> = names
            .iter()
            .map(|n| {
                let len = std::fs::metadata(src.join(n)).unwrap().len();
                let mut p: Vec<u64> = (0..30).map(|_| rng.gen_range(0..len.max(1))).collect();
                p.extend([0, len.saturating_sub(1), len, len + 1]);
                p
            })
            .collect();
        let kernel = with_kernel_mount(&img, &mnt, |m| {
            names
                .iter()
                .zip(&probes)
                .map(|(n, p)| {
                    let f = File::open(m.join(n)).unwrap();
                    let len = f.metadata().unwrap().len();
                    seeks(len, p, |o, data| lseek(&f, o, data))
                })
                .collect::<Vec<_>>()
        })
        .expect("kernel mount");
        assert!(
            kernel[0].0.len() >= 3,
            "{cmd}: the sparse file has holes: {:?}",
            kernel[0].0
        );
        let tree = open_image_tree(&img);
        for ((n, p), want) in names.iter().zip(&probes).zip(&kernel) {
            let ino = tree.lookup(tree.root(), n.as_bytes()).unwrap().unwrap();
            let len = tree.stat(ino).unwrap().size;
            let got = seeks(len, p, |o, data| tree.seek(ino, o, data).unwrap());
            assert_eq!(&got, want, "{cmd}: {n}");
        }
        drop(tree);
        // The same through the mount: the kernel asks the tree via FUSE_LSEEK.
        let safe = t.path().join("safe");
        backup(&[s(&safe), s(&img)]);
        let m = Mounted::new(&safe, t.path(), &[]);
        let f = File::open(m.dir.join("1/fs.img/files/sparse")).unwrap();
        let got = seeks(20 << 20, &probes[0], |o, data| lseek(&f, o, data));
        assert_eq!(got, kernel[0], "{cmd}: sparse, through the mount");
    }
}

/// `backup --skip-free` leaves out what the ext volumes of a GPT disk mark free and
/// keeps every block in use: restored, each partition differs from its source only in
/// blocks `dumpe2fs` lists as free, `e2fsck -fn` finds it clean, and the deleted files'
/// data (still on the source) is not in the safe. ext4 with metadata_csum (bitmap and
/// descriptor checksums) and several groups, ext2 with 1 KiB blocks, ext4 bigalloc.
#[test]
fn skip_free_leaves_out_only_what_ext_marks_free() {
    if !have_tool(
        "sfdisk",
        "fdisk",
        "skip_free_leaves_out_only_what_ext_marks_free",
    ) {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let mut rng = StdRng::seed_from_u64(61);
    let kinds: [(&str, &[&str], u64); 3] = [
        ("mkfs.ext4", &["-b", "4096", "-g", "2048"], 40 << 20),
        ("mkfs.ext2", &["-b", "1024"], 24 << 20),
        ("mkfs.ext4", &["-O", "bigalloc", "-C", "16384"], 32 << 20),
    ];
    let mut vols = Vec::new();
    let mut deleted = Vec::new();
    for (i, (cmd, opts, size)) in kinds.iter().enumerate() {
        let src = t.path().join(format!("src{i}"));
        make_tree(&src.join("keep"), 12, &mut rng);
        std::fs::create_dir_all(src.join("big")).unwrap();
        for j in 0..2 {
            let mut data = vec![0u8; 3 << 20];
            rng.fill(&mut data[..]);
            std::fs::write(src.join(format!("big/big{j}")), &data).unwrap();
        }
        let img = t.path().join(format!("vol{i}.img"));
        mkfs(cmd, opts, &src, &img, *size);
        for j in 0..2 {
            let o = Command::new("debugfs")
                .args(["-w", "-R", &format!("rm /big/big{j}"), s(&img)])
                .output()
                .unwrap();
            assert!(o.status.success(), "debugfs rm: {o:?}");
        }
        fsck_clean(&img);
        deleted.push(6u64 << 20);
        vols.push((img, *size));
    }
    let disk = t.path().join("disk.img");
    let mib = 1u64 << 20;
    let total: u64 = vols.iter().map(|v| v.1).sum::<u64>() + 2 * mib;
    File::create(&disk).unwrap().set_len(total).unwrap();
    let mut script = String::from("label: gpt\n");
    let mut at = mib;
    let mut starts = Vec::new();
    for (_, size) in &vols {
        script += &format!("start={}, size={}\n", at / 512, size / 512);
        starts.push(at);
        at += size;
    }
    sfdisk_script(&disk, &script);
    let f = OpenOptions::new().write(true).open(&disk).unwrap();
    for ((img, _), start) in vols.iter().zip(&starts) {
        f.write_all_at(&std::fs::read(img).unwrap(), *start)
            .unwrap();
    }
    drop(f);

    let (all, part, restored) = backup_with_and_without_skip_free(&disk, "disk", t.path());
    let r = std::fs::read(&restored).unwrap();
    let src = std::fs::read(&disk).unwrap();
    // Outside the partitions (the tables) every byte is kept.
    let mut outside = vec![(0, mib as usize)];
    outside.push(((total - mib) as usize, total as usize));
    for (a, b) in outside {
        assert!(
            r[a..b] == src[a..b],
            "bytes {a}..{b} outside the partitions"
        );
    }
    for (i, ((img, size), start)) in vols.iter().zip(&starts).enumerate() {
        let got = t.path().join(format!("got{i}.img"));
        std::fs::write(&got, &r[*start as usize..(start + size) as usize]).unwrap();
        let differ = differs_only_where_free(img, &got, img);
        fsck_clean(&got);
        assert!(
            differ * 10 >= deleted[i] * 8,
            "volume {i}: only {differ} bytes left out of {} deleted",
            deleted[i]
        );
    }
    let (a, p) = (pack_bytes(&all), pack_bytes(&part));
    let gone: u64 = deleted.iter().sum();
    eprintln!("packs: {a} bytes reading everything, {p} skipping free space");
    assert!(a - p >= gone * 8 / 10, "{a} vs {p}: {gone} bytes deleted");
}

/// Groups whose bitmap was never initialised (BLOCK_UNINIT: most of a new volume)
/// are left out as the kernel would compute their bitmaps, across the layouts that
/// place the metadata differently: flex_bg (bitmaps and tables in the flex group's
/// first group) and without it (each group's own), meta_bg descriptor tables, gdt_csum
/// (crc16) descriptors, 1 KiB blocks with 32-byte descriptors, sparse_super2. Each
/// image is made over random junk (`-E nodiscard`): restored, it differs from its
/// source only in blocks `dumpe2fs` (libext2fs's own computation) lists as free,
/// `e2fsck -fn` finds it clean, and most of its free space was left out.
#[test]
fn skip_free_computes_bitmaps_never_initialised() {
    let t = tempfile::tempdir().unwrap();
    let mut rng = StdRng::seed_from_u64(67);
    let layouts: [&[&str]; 6] = [
        &["-b", "4096", "-g", "2048"],
        &["-b", "4096", "-g", "2048", "-O", "^flex_bg"],
        &["-b", "4096", "-g", "1024", "-O", "meta_bg,^resize_inode"],
        &["-b", "4096", "-g", "2048", "-O", "^metadata_csum,uninit_bg"],
        &["-b", "1024", "-O", "^metadata_csum,uninit_bg,^64bit"],
        &["-b", "4096", "-g", "2048", "-O", "sparse_super2"],
    ];
    for (i, opts) in layouts.iter().enumerate() {
        let src = t.path().join(format!("src{i}"));
        make_tree(&src, 10, &mut rng);
        let img = t.path().join(format!("vol{i}.img"));
        let size = 96u64 << 20;
        let mut junk = vec![0u8; size as usize];
        rng.fill(&mut junk[..]);
        std::fs::write(&img, &junk).unwrap();
        // Over the junk, not a fresh file ([`mkfs`] makes one).
        let o = Command::new("mkfs.ext4")
            .args(["-q", "-F", "-E", "nodiscard"])
            .args(*opts)
            .args(["-d", s(&src), s(&img)])
            .output()
            .unwrap();
        assert!(o.status.success(), "{opts:?}: {o:?}");
        let uninit = tool("dumpe2fs", &[s(&img)]).matches("BLOCK_UNINIT").count();
        assert!(
            uninit >= 4,
            "{opts:?}: only {uninit} groups never initialised"
        );
        let dir = t.path().join(format!("run{i}"));
        std::fs::create_dir(&dir).unwrap();
        let (_, _, restored) = backup_with_and_without_skip_free(&img, "vol", &dir);
        let differ = differs_only_where_free(&img, &restored, &img);
        fsck_clean(&restored);
        let (bs, free) = dumpe2fs_free(&img);
        let free_bytes: u64 = free.iter().map(|(a, b)| (b - a + 1) * bs).sum();
        eprintln!("{opts:?}: {differ} of {free_bytes} free bytes left out, {uninit} groups never initialised");
        assert!(
            differ * 10 >= free_bytes * 8,
            "{opts:?}: {differ} of {free_bytes} free bytes left out ({uninit} groups never initialised)"
        );
    }
}

/// The bitmaps `--skip-free` reads are the journal's once replayed: an image copied
/// while a kernel mount was busy holds blocks its on-disk bitmaps still call free that
/// committed transactions allocated. Every block left out must be free once
/// `e2fsck -E journal_only` has replayed a copy. Without metadata_csum too, where no
/// bitmap checksum can flag the on-disk bitmaps as stale.
#[test]
fn skip_free_reads_the_bitmaps_the_journal_leaves() {
    if !is_root() {
        eprintln!("SKIP skip_free_reads_the_bitmaps_the_journal_leaves: needs root (loop mount)");
        return;
    }
    for opts in [&["-O", "^metadata_csum"][..], &[][..]] {
        // A copy taken while the kernel writes can catch a descriptor block mid-write,
        // which dumpe2fs (the oracle) then refuses: such a copy is made again.
        for attempt in 1.. {
            let t = tempfile::tempdir().unwrap();
            let Some(crash) = busy_crash_image_with(t.path(), opts) else {
                eprintln!(
                    "SKIP skip_free_reads_the_bitmaps_the_journal_leaves: cannot loop-mount ext4 here"
                );
                return;
            };
            match skip_free_after_replay(&crash, t.path()) {
                Ok(()) => break,
                Err(e) if attempt < 3 => eprintln!("copy {attempt} unreadable to the oracle: {e}"),
                Err(e) => panic!("{e}"),
            }
        }
    }
}

/// The check of [`skip_free_reads_the_bitmaps_the_journal_leaves`] on one image; an
/// error when `dumpe2fs` cannot read it or its replayed copy.
fn skip_free_after_replay(crash: &Path, dir: &Path) -> Result<(), String> {
    let replayed = dir.join("replayed.img");
    std::fs::copy(crash, &replayed).unwrap();
    let o = Command::new("e2fsck")
        .args(["-fy", "-E", "journal_only"])
        .arg(&replayed)
        .output()
        .unwrap();
    assert!(o.status.code().unwrap_or(8) < 4, "{o:?}");
    // The case exists: blocks free on disk that the journal's bitmaps hold in use.
    let blocks = |v: Vec<(u64, u64)>| -> std::collections::BTreeSet<u64> {
        v.into_iter().flat_map(|(a, b)| a..=b).collect()
    };
    let before = blocks(try_dumpe2fs_free(crash)?.1);
    let after = blocks(try_dumpe2fs_free(&replayed)?.1);
    let allocated = before.difference(&after).count();
    assert!(
        allocated > 0,
        "the copy's journal allocates no block its on-disk bitmaps call free"
    );
    let safe = dir.join("safe");
    let o = ds(&[
        "backup",
        s(&safe),
        "--block-size",
        "4K",
        &format!("vol={}", s(crash)),
        "--skip-free",
    ]);
    assert!(o.status.success(), "{o:?}");
    let restored = dir.join("restored.img");
    ok(&["restore", s(&safe), "1", "vol", s(&restored)]);
    let differ = differs_only_where_free(crash, &restored, &replayed);
    assert!(
        differ > 0,
        "nothing was left out: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    Ok(())
}

/// A `fast_commit` ext4 image copied while a kernel mount of it was busy: after a full
/// commit, files are created, grown, overwritten, truncated, preallocated, linked,
/// renamed (within and across directories) and unlinked, and a directory is made,
/// each change fsynced alone, so the changes live in the fast-commit area only. The
/// kernel's own mount options keep full commits away (commit=600). Returns the copy
/// and `debugfs logdump`'s text of it; `None` where loop mounts are unavailable.
fn fast_commit_crash_image(dir: &Path) -> Option<(PathBuf, String)> {
    let empty = dir.join("empty");
    std::fs::create_dir(&empty).unwrap();
    let img = dir.join("live.img");
    mkfs(
        "mkfs.ext4",
        &["-I", "256", "-O", "fast_commit"],
        &empty,
        &img,
        64 << 20,
    );
    let crash = dir.join("crash.img");
    let mut rng = StdRng::seed_from_u64(33);
    kernel_mount(&img, &dir.join("kernel"), "loop,commit=600", |m| {
        let fsync = |p: &Path| File::open(p).unwrap().sync_all().unwrap();
        let write = |p: &Path, data: &[u8]| {
            std::fs::write(p, data).unwrap();
            fsync(p);
        };
        let mut random = |n: usize| {
            let mut d = vec![0u8; n];
            rng.fill(&mut d[..]);
            d
        };
        std::fs::remove_dir(m.join("lost+found")).unwrap();
        std::fs::create_dir(m.join("old")).unwrap();
        std::fs::create_dir(m.join("fc")).unwrap();
        for i in 0..4 {
            std::fs::write(m.join(format!("old/f{i}")), random(50_000)).unwrap();
        }
        // A file of many extents (its tree deeper than the inode's four slots):
        // appends interleaved with other files' blocks, each made durable.
        let frag = OpenOptions::new()
            .create(true)
            .append(true)
            .open(m.join("old/frag"))
            .unwrap();
        for i in 0..12 {
            std::io::Write::write_all(&mut &frag, &random(3_000)).unwrap();
            frag.sync_all().unwrap();
            std::fs::write(m.join(format!("old/gap{i}")), random(3_000)).unwrap();
            fsync(&m.join(format!("old/gap{i}")));
        }
        // A full commit; the first fsync after it may be one too.
        Command::new("sync").arg("-f").arg(m).status().unwrap();
        let frags = tool("filefrag", &[s(&m.join("old/frag"))]);
        let extents: u32 = frags
            .split(": ")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("filefrag: {frags}"));
        assert!(
            extents > 4,
            "old/frag has an extent tree below its inode: {frags}"
        );
        write(&m.join("fc/warmup"), b"first fsync after the full commit");

        write(&m.join("fc/a"), &random(20_000));
        write(&m.join("fc/b"), &random(300_000));
        let grow = OpenOptions::new()
            .append(true)
            .open(m.join("old/f0"))
            .unwrap();
        std::io::Write::write_all(&mut &grow, &random(70_000)).unwrap();
        grow.sync_all().unwrap();
        std::io::Write::write_all(&mut &frag, &random(40_000)).unwrap();
        frag.sync_all().unwrap();
        let f1 = OpenOptions::new()
            .write(true)
            .open(m.join("old/f1"))
            .unwrap();
        f1.write_all_at(&random(5_000), 10_000).unwrap();
        f1.sync_all().unwrap();
        let f2 = OpenOptions::new()
            .write(true)
            .open(m.join("old/f2"))
            .unwrap();
        f2.set_len(1_000).unwrap();
        f2.sync_all().unwrap();
        // Names removed are logged by the next fast commit (an fsync of a directory
        // would be a full commit).
        std::fs::remove_file(m.join("old/f3")).unwrap();
        write(&m.join("fc/after_unlink"), b"logs the unlink");
        std::fs::hard_link(m.join("fc/a"), m.join("fc/a_link")).unwrap();
        fsync(&m.join("fc/a"));
        std::fs::rename(m.join("fc/a_link"), m.join("fc/a_renamed")).unwrap();
        fsync(&m.join("fc/a_renamed"));
        std::fs::create_dir(m.join("fc/sub")).unwrap();
        write(&m.join("fc/sub/inner"), &random(9_000));
        write(&m.join("fc/sub/moved"), &random(3_000));
        std::fs::rename(m.join("fc/sub/moved"), m.join("old/moved_here")).unwrap();
        fsync(&m.join("old/moved_here"));
        let pre = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(m.join("fc/prealloc"))
            .unwrap();
        assert_eq!(
            unsafe { libc::fallocate(pre.as_raw_fd(), 0, 0, 1 << 20) },
            0
        );
        pre.write_all_at(b"written in the middle", 300_000).unwrap();
        pre.sync_all().unwrap();
        let sparse = File::create(m.join("fc/sparse")).unwrap();
        sparse.write_all_at(&random(8_000), 5 << 20).unwrap();
        sparse.sync_all().unwrap();
        std::fs::copy(&img, &crash).unwrap();
    })?;
    let dump = Command::new("debugfs")
        .args(["-R", "logdump", s(&crash)])
        .output()
        .unwrap();
    Some((crash, String::from_utf8_lossy(&dump.stdout).to_string()))
}

/// Files fsynced after the last full commit of a `fast_commit` volume live only in the
/// fast-commit area: the tree of a crash copy must hold them as the kernel's recovery
/// (journal, then fast commits) leaves them. Oracle: the kernel's mount of another
/// copy, compared entry by entry (type, mode, owner, size, times to the nanosecond,
/// link counts, hard-link groups, content). And `--skip-free` must not take the blocks
/// those commits gave to files for free (the bitmaps on the volume still say so): the
/// image it restores, recovered by the kernel, holds the same tree.
#[test]
fn fast_commits_are_replayed_like_the_kernel() {
    if !fuse_available() || !is_root() {
        eprintln!("SKIP fast_commits_are_replayed_like_the_kernel: needs root and FUSE");
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let Some((crash, dump)) = fast_commit_crash_image(t.path()) else {
        eprintln!("SKIP fast_commits_are_replayed_like_the_kernel: cannot loop-mount ext4 here");
        return;
    };
    let area = dump
        .split("*** Fast Commit Area ***")
        .nth(1)
        .unwrap_or_else(|| panic!("debugfs shows a fast-commit area:\n{dump}"));
    for want in [
        "tag CREAT_DENTRY",
        "name \"inner",
        "tag ADD_RANGE",
        "tag DEL_RANGE",
        "tag ADD_ENTRY",
        "tag DEL_ENTRY",
    ] {
        assert!(
            area.contains(want),
            "the changes are in fast commits ({want}):\n{area}"
        );
    }
    let (all, part, restored) = backup_with_and_without_skip_free(&crash, "vol", t.path());
    let fixed = t.path().join("fixed.img");
    std::fs::copy(&crash, &fixed).unwrap();
    let m = Mounted::new(&all, t.path(), &[]);
    // Directories are not logged by fast commits: the kernel's replay stamps those
    // it adds names to or removes names from with the time of the replay itself, a
    // time no copy can know, so their mtimes are left out (ours keep the volume's).
    let without_dir_times = |k: &Path, diffs: Vec<String>| -> Vec<String> {
        diffs
            .into_iter()
            .filter(|d| {
                let (path, what) = d.split_once(": ").unwrap();
                !(what.starts_with("mtime") && k.join(path).is_dir())
            })
            .collect()
    };
    let diffs = with_kernel_mount(&fixed, &t.path().join("fixedmnt"), |k| {
        without_dir_times(k, compare(k, &m.dir.join("1/vol/files"), true))
    })
    .unwrap();
    assert!(
        diffs.is_empty(),
        "differs from the kernel's recovery: {diffs:#?}"
    );
    // Replay recounts a file's blocks from its extents; ours come from the logged
    // record: the same for every file.
    let blocks = with_kernel_mount(&fixed, &t.path().join("fixedmnt"), |k| {
        tree_digest(k)
            .into_keys()
            .filter(|rel| k.join(rel).is_file())
            .filter_map(|rel| {
                let want = std::fs::metadata(k.join(&rel)).unwrap().blocks();
                let got = std::fs::metadata(m.dir.join("1/vol/files").join(&rel))
                    .unwrap()
                    .blocks();
                (want != got).then(|| format!("{rel}: {want} vs {got}"))
            })
            .collect::<Vec<_>>()
    })
    .unwrap();
    assert!(blocks.is_empty(), "st_blocks differ: {blocks:#?}");
    assert!(
        m.log_text().contains("fast commit"),
        "the log names the fast commits: {}",
        m.log_text()
    );
    drop(m);
    let diffs = with_kernel_mount(&fixed, &t.path().join("fixedmnt"), |k| {
        with_kernel_mount(&restored, &t.path().join("restoredmnt"), |r| {
            without_dir_times(k, compare(k, r, true))
        })
        .unwrap()
    })
    .unwrap();
    assert!(
        diffs.is_empty(),
        "the --skip-free point recovers to another tree: {diffs:#?}"
    );
    for safe in [&all, &part] {
        assert!(ok(&["verify", s(safe)]).starts_with("ok:"));
    }
}

/// With `--changed-blocks`, only the listed ranges are read, so only the free blocks
/// among them are recorded as zeros: the figure the backup prints counts those, not
/// the volume's whole free space. Oracle: a 1 MiB range inside one free extent
/// `dumpe2fs` lists.
#[test]
fn skip_free_with_changed_blocks_counts_only_the_listed_free_space() {
    let t = tempfile::tempdir().unwrap();
    let empty = t.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let img = t.path().join("vol.img");
    mkfs("mkfs.ext4", &[], &empty, &img, 64 << 20);
    let (bs, free) = dumpe2fs_free(&img);
    let block = 64 << 10; // the safe's default block size
    let (a, b) = free
        .iter()
        .map(|&(a, b)| (a * bs, (b + 1) * bs))
        .find(|&(a, b)| b.saturating_sub(a.next_multiple_of(block)) >= 2 << 20)
        .expect("a free extent of 2 MiB");
    let start = a.next_multiple_of(block);
    assert!(start + (1 << 20) <= b);
    let list = t.path().join("changed");
    std::fs::write(&list, format!("{start} {}\n", 1 << 20)).unwrap();
    let safe = t.path().join("safe");
    let src = format!("vol={}", s(&img));
    backup(&[s(&safe), &src]);
    let o = ds(&[
        "backup",
        s(&safe),
        &src,
        "--skip-free",
        "--changed-blocks",
        &format!("vol={}", s(&list)),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("device vol: 1.0 MiB its filesystems mark free is recorded as zeros"),
        "{err}"
    );
    assert_eq!(restored_sha(&safe, "2", "vol", t.path()), sha256_file(&img));
}

/// A snapshot of a server holding files it unlinked but keeps open (a database's
/// temporary files): the copy's orphan list (or, with `orphan_file`, its orphan file)
/// names them. The kernel deletes them when it mounts the copy, even read-only; the
/// point's `df` must match that, with either kind of list and with bigalloc clusters.
#[test]
fn orphans_unlinked_while_open_are_deleted_like_the_kernel() {
    if !fuse_available() || !is_root() {
        eprintln!("SKIP orphans_unlinked_while_open: needs root and FUSE");
        return;
    }
    for (name, opts) in [
        ("list", &[][..]),
        ("orphan-file", &["-O", "orphan_file"][..]),
        ("bigalloc", &["-O", "bigalloc", "-C", "16384"][..]),
    ] {
        let t = tempfile::tempdir().unwrap();
        let empty = t.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        let img = t.path().join("live.img");
        let mut all = vec!["-I", "256"];
        all.extend_from_slice(opts);
        mkfs("mkfs.ext4", &all, &empty, &img, 64 << 20);
        let crash = t.path().join("crash.img");
        let busy = kernel_mount(&img, &t.path().join("live"), "loop", |m| {
            std::fs::create_dir(m.join("tmp")).unwrap();
            let held: Vec<File> = (0..40)
                .map(|i| {
                    let p = m.join(format!("tmp/t{i}"));
                    std::fs::write(&p, vec![i as u8 | 1; 20_000 + i * 3000]).unwrap();
                    let f = File::open(&p).unwrap();
                    std::fs::remove_file(&p).unwrap();
                    f
                })
                .collect();
            assert!(run("sync", &[]));
            std::fs::copy(&img, &crash).unwrap();
            drop(held);
        });
        if busy.is_none() {
            eprintln!("SKIP orphans_unlinked_while_open: cannot loop-mount ext4 here");
            return;
        }
        let copy = t.path().join("copy.img");
        std::fs::copy(&crash, &copy).unwrap();
        // Read-write: a read-only loop device leaves both journal and orphans alone.
        let want = with_kernel_mount(&copy, &t.path().join("kernel"), statvfs).unwrap();
        let safe = t.path().join("safe");
        backup(&[s(&safe), &format!("vol={}", s(&crash))]);
        let m = Mounted::logging(&safe, t.path(), &[], "info");
        assert_eq!(statvfs(&m.dir.join("1/vol/files")), want, "{name}: statvfs");
        let log = m.log_text();
        assert!(log.contains("40 orphan inode(s) deleted"), "{name}: {log}");
        // As recorded, the orphans still hold their blocks.
        let raw = Mounted::new(&safe, t.path(), &["--no-replay"]);
        assert!(statvfs(&raw.dir.join("1/vol/files"))[2] < want[2], "{name}");
    }
}

/// A file the crash caught being cut short (on the orphan list, still linked, with
/// blocks past its size: here preallocated with FALLOC_FL_KEEP_SIZE and listed with
/// debugfs): the kernel's mount truncates it to its size, freeing those blocks. Its
/// `st_blocks` and `df` must match the kernel's.
#[test]
fn a_file_caught_being_truncated_is_cut_like_the_kernel() {
    if !fuse_available() || !is_root() {
        eprintln!("SKIP a_file_caught_being_truncated: needs root and FUSE");
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let empty = t.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let img = t.path().join("vol.img");
    mkfs("mkfs.ext4", &["-I", "256"], &empty, &img, 64 << 20);
    let made = kernel_mount(&img, &t.path().join("live"), "loop", |m| {
        let f = File::create(m.join("cut")).unwrap();
        f.write_all_at(&[7u8; 10_000], 0).unwrap();
        // FALLOC_FL_KEEP_SIZE: 2 MiB of blocks past the 10 000 bytes.
        assert_eq!(unsafe { libc::fallocate(f.as_raw_fd(), 1, 0, 2 << 20) }, 0);
        f.sync_all().unwrap();
        std::fs::metadata(m.join("cut")).unwrap().ino()
    });
    let Some(ino) = made else {
        eprintln!("SKIP a_file_caught_being_truncated: cannot loop-mount ext4 here");
        return;
    };
    let dbg = |cmd: &str| {
        let o = Command::new("debugfs")
            .args(["-w", "-R", cmd, s(&img)])
            .output()
            .unwrap();
        assert!(o.status.success(), "debugfs {cmd}");
    };
    dbg(&format!("set_inode_field <{ino}> dtime 0"));
    dbg(&format!("set_super_value last_orphan {ino}"));
    let copy = t.path().join("copy.img");
    std::fs::copy(&img, &copy).unwrap();
    // Read-write: on a read-only loop device the kernel skips the orphan cleanup.
    let (want_df, want_blocks, want_bytes) =
        with_kernel_mount(&copy, &t.path().join("kernel"), |m| {
            let md = std::fs::metadata(m.join("cut")).unwrap();
            (
                statvfs(m),
                md.blocks(),
                std::fs::read(m.join("cut")).unwrap(),
            )
        })
        .unwrap();
    assert!(
        want_blocks < 100,
        "the kernel cut the file ({want_blocks} sectors)"
    );
    let safe = t.path().join("safe");
    backup(&[s(&safe), &format!("vol={}", s(&img))]);
    let m = Mounted::logging(&safe, t.path(), &[], "info");
    let files = m.dir.join("1/vol/files");
    let md = std::fs::metadata(files.join("cut")).unwrap();
    assert_eq!(md.blocks(), want_blocks, "st_blocks");
    assert_eq!(std::fs::read(files.join("cut")).unwrap(), want_bytes);
    assert_eq!(statvfs(&files), want_df, "statvfs");
    assert!(m.log_text().contains("1 truncated"), "{}", m.log_text());
}

/// An ext4 whose journal is on another device (`mkfs.ext4 -J device=`), copied busy
/// with its journal device while mounted, the journal holding transactions. Backed
/// up together, the journal is found among the point's devices (a journal device
/// whose UUID the filesystem's superblock names) and replayed: the tree equals the
/// kernel's recovery of copies of both (mounted with `journal_path=`). Without the
/// journal device the point shows the volume as recorded and the log says why.
#[test]
fn external_journal_is_found_and_replayed() {
    let name = "external_journal_is_found_and_replayed";
    if !fuse_available() || !is_root() {
        eprintln!("SKIP {name}: needs root and FUSE");
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let (img, jr, kmnt) = (
        t.path().join("data.img"),
        t.path().join("journal.img"),
        t.path().join("kernel"),
    );
    File::create(&jr).unwrap().set_len(16 << 20).unwrap();
    let made = Command::new("mke2fs")
        .args(["-q", "-F", "-O", "journal_dev", "-b", "4096", s(&jr)])
        .status()
        .unwrap();
    assert!(made.success(), "mke2fs -O journal_dev");
    let mut loops = Loops::default();
    let Some(lj) = loops.attach(&jr, 0, 16 << 20) else {
        eprintln!("SKIP {name}: no loop devices");
        return;
    };
    File::create(&img).unwrap().set_len(64 << 20).unwrap();
    let made = Command::new("mkfs.ext4")
        .args([
            "-q",
            "-F",
            "-b",
            "4096",
            "-J",
            &format!("device={lj}"),
            s(&img),
        ])
        .status()
        .unwrap();
    assert!(made.success(), "mkfs.ext4 -J device=");
    // The journal's start (jbd2 superblock at block 1, s_start at 0x1C): 0 when
    // the kernel wrote everything back before the copy, which then replays nothing.
    let s_start = |j: &Path| {
        let mut b = [0u8; 4];
        File::open(j)
            .unwrap()
            .read_exact_at(&mut b, 4096 + 0x1C)
            .unwrap();
        u32::from_be_bytes(b)
    };
    let mut rng = StdRng::seed_from_u64(37);
    let mut copies = None;
    for attempt in 0..4 {
        let (dc, jc) = (
            t.path().join(format!("data-{attempt}.img")),
            t.path().join(format!("journal-{attempt}.img")),
        );
        let opts = format!("loop,journal_path={lj}");
        let mounted = kernel_mount(&img, &kmnt, &opts, |m| {
            let work = m.join(format!("work{attempt}"));
            std::fs::create_dir(&work).unwrap();
            for i in 0..60 {
                let mut data = vec![0u8; rng.gen_range(0..40_000)];
                rng.fill(&mut data[..]);
                let p = work.join(format!("file{i}"));
                std::fs::write(&p, &data).unwrap();
                File::open(&p).unwrap().sync_all().unwrap();
            }
            std::fs::remove_file(work.join("file3")).unwrap();
            std::fs::rename(work.join("file4"), work.join("renamed")).unwrap();
            File::open(&work).unwrap().sync_all().unwrap();
            std::fs::copy(&img, &dc).unwrap();
            std::fs::copy(&jr, &jc).unwrap();
        });
        if mounted.is_none() {
            eprintln!("SKIP {name}: the kernel does not mount ext4 with an external journal here");
            return;
        }
        if s_start(&jc) != 0 {
            copies = Some((dc, jc));
            break;
        }
        eprintln!("the kernel emptied its journal before the copy (attempt {attempt}); again");
    }
    drop(loops);
    let (dc, jc) = copies.expect("a copy with transactions in its journal");
    let safe = t.path().join("safe");
    backup(&[
        s(&safe),
        &format!("vol={}", s(&dc)),
        &format!("jrnl={}", s(&jc)),
    ]);
    backup(&[s(&safe), &format!("vol={}", s(&dc))]);
    // The kernel's recovery of copies of both.
    let (dk, jk) = (t.path().join("data-k.img"), t.path().join("journal-k.img"));
    std::fs::copy(&dc, &dk).unwrap();
    std::fs::copy(&jc, &jk).unwrap();
    let mut loops = Loops::default();
    let ljk = loops.attach(&jk, 0, 16 << 20).unwrap();
    let want = kernel_mount(&dk, &kmnt, &format!("loop,journal_path={ljk}"), tree_digest).unwrap();
    drop(loops);
    let m = Mounted::new(&safe, t.path(), &[]);
    same_tree(
        &tree_digest(&m.dir.join("1/vol/files")),
        &want,
        "external journal",
    );
    assert!(m.log_text().contains("replayed"), "{}", m.log_text());
    let recorded = tree_digest(&m.dir.join("2/vol/files"));
    assert_ne!(
        recorded, want,
        "without its journal the recorded state shows"
    );
    assert!(
        m.log_text()
            .contains("on another device, not found in this point"),
        "{}",
        m.log_text()
    );
}

/// An ext volume whose primary superblock is gone is read through the backup copy in
/// group 1 and the descriptor table after it, as the kernel's `mount -o sb=` reads
/// it: with the volume's first 2 KiB wiped (4 KiB blocks), with a superblock that
/// still has its magic but no longer parses (1 KiB blocks), and with the primary
/// descriptor table zeroed under an intact superblock. Each tree equals the
/// kernel's through the backup (and the files mkfs was given), and the log says
/// which backup was used. A swap signature at the start is left alone.
#[test]
fn a_lost_primary_superblock_is_read_through_a_backup() {
    if !mkfs_ready("ext4", "backup superblocks") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let mut rng = StdRng::seed_from_u64(77);
    let src = t.path().join("src");
    make_tree(&src, 40, &mut rng);
    let kmnt = t.path().join("kernel");
    for (case, (bs, mib, damage)) in [
        (4096u64, 200u64, "wiped"),
        (1024, 64, "garbage"),
        (4096, 200, "table"),
    ]
    .into_iter()
    .enumerate()
    {
        let img = t.path().join(format!("fs{case}.img"));
        File::create(&img).unwrap().set_len(mib << 20).unwrap();
        let b = bs.to_string();
        assert!(run(
            "mkfs.ext4",
            &["-q", "-F", "-b", &b, "-d", s(&src), s(&img)]
        ));
        let f = OpenOptions::new().write(true).open(&img).unwrap();
        match damage {
            "wiped" => f.write_all_at(&[0u8; 2048], 0).unwrap(),
            // A block size no ext volume has (log 99), the rest as it was.
            "garbage" => f.write_all_at(&99u32.to_le_bytes(), 1024 + 0x18).unwrap(),
            _ => f.write_all_at(&vec![0u8; bs as usize], bs).unwrap(),
        }
        drop(f);
        let sb_kib = (8 * bs + u64::from(bs == 1024)) * bs / 1024;
        let kernel =
            common::kernel_mount("ext4", &img, &kmnt, &format!("loop,ro,sb={sb_kib}"), |k| {
                tree_digest(k)
            })
            .expect("the kernel mounts it through the backup");
        let safe = t.path().join(format!("safe{case}"));
        backup(&[s(&safe), &format!("d={}", s(&img))]);
        let m = Mounted::new(&safe, t.path(), &[]);
        let ours = tree_digest(&m.dir.join("1/d/files"));
        same_tree(&ours, &kernel, damage);
        same_tree(&ours, &tree_digest(&src), damage);
        let log = m.log_text();
        assert!(
            log.contains("backup superblock") && log.contains(&format!("sb={sb_kib}")),
            "{damage}: {log}"
        );
        drop(m);
        // A swap area made over the wiped volume's start: not read as the old ext4.
        if damage == "wiped" {
            assert!(run("mkswap", &["-q", s(&img)]) || run("mkswap", &[s(&img)]));
            let safe = t.path().join("safe-swap");
            backup(&[s(&safe), &format!("d={}", s(&img))]);
            let m = Mounted::new(&safe, t.path(), &[]);
            assert!(!m.dir.join("1/d/files").exists(), "swap shows no tree");
        }
    }
}
