//! NTFS file trees in the mount, checked against the data written into the images and
//! against `ntfs-3g -o ro`'s view of the same images. Images are made with mkntfs and
//! filled through an ntfs-3g mount; reparse points ntfs-3g cannot show are checked
//! against the reparse data the test wrote.

mod common;

use std::collections::HashMap;
use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use rand::{rngs::StdRng, Rng, SeedableRng};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Everything a user sees of one entry.
fn describe(p: &Path) -> String {
    let m = std::fs::symlink_metadata(p).unwrap();
    let ft = m.file_type();
    let mut d = format!(
        "mode {:o} mtime {}.{:09}",
        m.mode() & 0o170000,
        m.mtime(),
        m.mtime_nsec()
    );
    if ft.is_file() {
        d += &format!(" size {}", m.len());
        d += &match std::fs::read(p) {
            Ok(b) => format!(" sha {}", sha256(&b)),
            Err(e) => format!(" read error {:?}", e.raw_os_error()),
        };
    }
    if ft.is_symlink() {
        d += &format!(" -> {:?}", std::fs::read_link(p).unwrap());
    }
    for x in list_xattrs(p) {
        let v = get_xattr(p, &x).map(|v| sha256(&v));
        d += &format!(" xattr {}={v:?}", String::from_utf8_lossy(&x));
    }
    for x in [
        "system.ntfs_attrib",
        "system.ntfs_crtime",
        "system.ntfs_times",
        "system.ntfs_dos_name",
        "system.ntfs_reparse_data",
        "system.ntfs_object_id",
        "system.ntfs_ea",
        "system.ntfs_acl",
    ] {
        d += &format!(" {x}={:?}", get_xattr(p, x.as_bytes()));
    }
    d
}

/// Walks two trees side by side; returns differences (entries, descriptions, hard-link
/// groups), skipping top-level names in `skip`.
fn compare_trees(want: &Path, got: &Path, skip: &[&str]) -> Vec<String> {
    let mut diffs = Vec::new();
    let mut groups: [HashMap<u64, Vec<PathBuf>>; 2] = Default::default();
    let mut stack = vec![PathBuf::new()];
    let mut seen = 0;
    while let Some(rel) = stack.pop() {
        let names = |root: &Path| -> Vec<std::ffi::OsString> {
            let mut v: Vec<_> = std::fs::read_dir(root.join(&rel))
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .filter(|n| !(rel.as_os_str().is_empty() && skip.iter().any(|s| n == *s)))
                .collect();
            v.sort();
            v
        };
        let (a, b) = (names(want), names(got));
        if a != b {
            diffs.push(format!(
                "{}: entries differ: {} vs {}",
                rel.display(),
                a.len(),
                b.len()
            ));
            continue;
        }
        for n in a {
            let r = rel.join(&n);
            seen += 1;
            let (da, db) = (describe(&want.join(&r)), describe(&got.join(&r)));
            if da != db {
                diffs.push(format!("{}:\n  want {da}\n  got  {db}", r.display()));
            }
            for (i, root) in [want, got].iter().enumerate() {
                let m = std::fs::symlink_metadata(root.join(&r)).unwrap();
                if m.is_file() {
                    groups[i].entry(m.ino()).or_default().push(r.clone());
                }
            }
            if std::fs::symlink_metadata(want.join(&r)).unwrap().is_dir() {
                stack.push(r);
            }
        }
    }
    let norm = |g: &HashMap<u64, Vec<PathBuf>>| {
        let mut v: Vec<Vec<PathBuf>> = g
            .values()
            .filter(|v| v.len() > 1)
            .map(|v| {
                let mut v = v.clone();
                v.sort();
                v
            })
            .collect();
        v.sort();
        v
    };
    if norm(&groups[0]) != norm(&groups[1]) {
        diffs.push("hard-link groups differ".into());
    }
    assert!(
        seen > 0 || skip.is_empty() || diffs.is_empty(),
        "compared nothing"
    );
    diffs
}

fn assert_same(want: &Path, got: &Path, skip: &[&str]) {
    let d = compare_trees(want, got, skip);
    assert!(
        d.is_empty(),
        "{} differences, first: {:#?}",
        d.len(),
        &d[..d.len().min(8)]
    );
}

fn reparse_link(tag: u32, subst: &str, print: &str, flags: Option<u32>) -> Vec<u8> {
    let u = |x: &str| -> Vec<u8> { x.encode_utf16().flat_map(u16::to_le_bytes).collect() };
    let (sb, pb) = (u(subst), u(print));
    let mut body = Vec::new();
    for v in [0, sb.len(), sb.len(), pb.len()] {
        body.extend_from_slice(&(v as u16).to_le_bytes());
    }
    if let Some(f) = flags {
        body.extend_from_slice(&f.to_le_bytes());
    }
    body.extend(sb);
    body.extend(pb);
    reparse_raw(tag, &body)
}

fn reparse_raw(tag: u32, body: &[u8]) -> Vec<u8> {
    let mut out = tag.to_le_bytes().to_vec();
    out.extend_from_slice(&(body.len() as u16).to_le_bytes());
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(body);
    out
}

/// A source tree with what NTFS must carry: big, tiny, empty, sparse, partly
/// initialized and compressible files, deep paths, odd and Unicode names, hard links.
fn make_source(root: &Path, rng: &mut StdRng, dir_entries: usize) {
    size_extremes(root, rng);
    for name in [
        "with space.txt",
        "ünïcødé-日本語-🎉",
        "new\nline",
        "Long File Name.txt",
    ] {
        std::fs::write(root.join(name), name.as_bytes()).unwrap();
    }
    let mut deep = root.to_path_buf();
    for i in 0..40 {
        deep.push(format!("level{i}"));
    }
    std::fs::create_dir_all(&deep).unwrap();
    std::fs::write(deep.join("bottom.txt"), b"deep").unwrap();
    std::fs::create_dir(root.join("links")).unwrap();
    std::fs::write(root.join("links/target"), b"linked content").unwrap();
    std::fs::create_dir(root.join("big dir")).unwrap();
    for i in 0..dir_entries {
        std::fs::write(root.join(format!("big dir/entry-{i:06}")), format!("{i}")).unwrap();
    }
}

/// Files written directly on the ntfs-3g mount (things `cp` cannot carry).
struct Extras {
    /// Expected content of `FILE:STREAM` paths.
    streams: Vec<(String, String, Vec<u8>)>,
    /// Expected link targets of crafted reparse points.
    links: Vec<(String, String)>,
    /// `system.ntfs_*` values written through ntfs-3g: path, name, the bytes a read
    /// must start with.
    xattrs: Vec<(String, &'static str, Vec<u8>)>,
}

/// A self-relative security descriptor: owner and group BUILTIN\Administrators, a
/// DACL granting Everyone `mask`.
fn security_descriptor(mask: u32) -> Vec<u8> {
    let admins = [1u8, 2, 0, 0, 0, 0, 0, 5, 32, 0, 0, 0, 32, 2, 0, 0];
    let everyone = [1u8, 1, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0];
    let mut sd = vec![1, 0, 0x04, 0x80]; // revision, control: self-relative, DACL present
    for off in [20u32, 36, 0, 52] {
        sd.extend_from_slice(&off.to_le_bytes()); // owner, group, SACL, DACL
    }
    sd.extend_from_slice(&admins);
    sd.extend_from_slice(&admins);
    sd.extend_from_slice(&[2, 0, 28, 0, 1, 0, 0, 0]); // ACL: revision, size, one ACE
    sd.extend_from_slice(&[0, 3, 20, 0]); // allow, inherited by files and dirs, size
    sd.extend_from_slice(&mask.to_le_bytes());
    sd.extend_from_slice(&everyone);
    sd
}

fn fill_ntfs(mnt: &Path, src: &Path, rng: &mut StdRng, links: usize, compress: bool) -> Extras {
    let o = Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", s(src)))
        .arg(mnt)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "cp: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    for i in 0..links {
        std::fs::hard_link(
            mnt.join("links/target"),
            mnt.join(format!("links/hard{i:03}")),
        )
        .unwrap();
    }
    // Sparse and partly initialized files.
    let sp = File::create(mnt.join("sparse")).unwrap();
    sp.set_len(40 << 20).unwrap();
    for off in [0u64, 5 << 20, (17 << 20) + 123, (40 << 20) - 21] {
        sp.write_all_at(b"data in a sparse file", off).unwrap();
    }
    drop(sp);
    let mut head = vec![0u8; 8192];
    rng.fill(&mut head[..]);
    std::fs::write(mnt.join("grown"), &head).unwrap();
    File::options()
        .write(true)
        .open(mnt.join("grown"))
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    // ntfs-3g's own links and special files.
    std::os::unix::fs::symlink("links/target", mnt.join("rel-link")).unwrap();
    std::os::unix::fs::symlink("/abs/elsewhere", mnt.join("abs-link")).unwrap();
    let fifo = CString::new(mnt.join("fifo").as_os_str().as_bytes()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
    let chr = CString::new(mnt.join("chardev").as_os_str().as_bytes()).unwrap();
    assert_eq!(
        unsafe { libc::mknod(chr.as_ptr(), libc::S_IFCHR | 0o600, libc::makedev(1, 3)) },
        0
    );
    // Alternate data streams, small and larger than any xattr.
    let mut big_stream = vec![0u8; 200_000];
    rng.fill(&mut big_stream[..]);
    for (file, name, data) in [
        ("tiny", "note", &b"a small stream"[..]),
        (
            "links/target",
            "Zone.Identifier",
            b"[ZoneTransfer]\r\nZoneId=3\r\n",
        ),
        ("big.bin", "big", &big_stream),
        ("links", "on-a-dir", b"dir stream"),
    ] {
        std::fs::write(mnt.join(format!("{file}:{name}")), data).unwrap();
    }
    // An 8.3 name beside a long one: must stay hidden.
    set_xattr(
        &mnt.join("Long File Name.txt"),
        "system.ntfs_dos_name",
        b"LONGFI~1.TXT",
    );
    // What NTFS keeps beside names and data, set through ntfs-3g's system.ntfs_*
    // attributes: enough object ids and distinct security descriptors that $ObjId:$O
    // and $Secure:$SII grow past their roots, an extended attribute, chosen times.
    std::fs::create_dir(mnt.join("meta")).unwrap();
    let mut xattrs = Vec::new();
    for i in 0..80u32 {
        let f = format!("meta/f{i:02}");
        std::fs::write(mnt.join(&f), format!("file {i}")).unwrap();
        let mut id = vec![0u8; if i % 2 == 0 { 16 } else { 64 }];
        rng.fill(&mut id[..]);
        xattrs.push((f.clone(), "system.ntfs_object_id", id));
        xattrs.push((f, "system.ntfs_acl", security_descriptor(0x0012_0000 | i)));
    }
    let ea = [
        &[20u8, 0, 0, 0, 0, 4, 4, 0][..], // next entry, flags, name and value lengths
        b"NAME\0VALU\0\0\0",
        &[16, 0, 0, 0, 0, 3, 2, 0],
        b"LX2\0ab\0\0",
    ]
    .concat();
    xattrs.push(("meta/f00".into(), "system.ntfs_ea", ea));
    let times: Vec<u8> = [
        131_000_000_000_000_000u64,
        132_000_000_000_000_001,
        133_000_000_000_000_002,
    ]
    .iter()
    .flat_map(|t| t.to_le_bytes())
    .collect();
    xattrs.push(("meta/f01".into(), "system.ntfs_times", times));
    xattrs.push((
        "meta".into(),
        "system.ntfs_acl",
        security_descriptor(0x001f_01ff),
    ));
    for (f, name, v) in &xattrs {
        set_xattr(&mnt.join(f), name, v);
    }
    if compress {
        std::fs::create_dir(mnt.join("compressed")).unwrap();
        set_xattr(
            &mnt.join("compressed"),
            "system.ntfs_attrib_be",
            &0x800u32.to_be_bytes(),
        );
        let mut text = Vec::new();
        let mut i = 0u64;
        while text.len() < 3 << 20 {
            text.extend_from_slice(
                format!("line {i} of a compressible log, value {}\n", i * 7 % 1000).as_bytes(),
            );
            i += 1;
        }
        std::fs::write(mnt.join("compressed/log.txt"), &text).unwrap();
        let mut random = vec![0u8; 300_000];
        rng.fill(&mut random[..]);
        std::fs::write(mnt.join("compressed/random.bin"), &random).unwrap();
        let mut mixed = vec![0u8; 1 << 20];
        for chunk in mixed.chunks_mut(100_000).step_by(2) {
            rng.fill(chunk);
        }
        std::fs::write(mnt.join("compressed/mixed.bin"), &mixed).unwrap();
        let f = File::create(mnt.join("compressed/sparse-compressed")).unwrap();
        f.set_len(10 << 20).unwrap();
        f.write_all_at(b"compressed and sparse", 7 << 20).unwrap();
    }
    // Reparse points ntfs-3g cannot show; their targets are checked against this data.
    std::fs::create_dir_all(mnt.join("reparse/sub")).unwrap();
    std::fs::create_dir(mnt.join("reparse/junction")).unwrap();
    for f in ["sub/rel", "abs", "unc", "wsl", "appexec1", "appexec2"] {
        std::fs::write(mnt.join("reparse").join(f), b"").unwrap();
    }
    let lx = {
        let mut b = 2u32.to_le_bytes().to_vec();
        b.extend_from_slice(b"/usr/lib/wsl target");
        reparse_raw(0xA000_001D, &b)
    };
    let crafted: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "sub/rel",
            reparse_link(
                0xA000_000C,
                "..\\..\\links\\target",
                "..\\..\\links\\target",
                Some(1),
            ),
            "../../links/target",
        ),
        (
            "abs",
            reparse_link(
                0xA000_000C,
                "\\??\\C:\\Users\\Public\\file.txt",
                "C:\\Users\\Public\\file.txt",
                Some(0),
            ),
            "C:/Users/Public/file.txt",
        ),
        (
            "unc",
            reparse_link(
                0xA000_000C,
                "\\??\\UNC\\server\\share\\x",
                "\\\\server\\share\\x",
                Some(0),
            ),
            "//server/share/x",
        ),
        (
            "junction",
            reparse_link(
                0xA000_0003,
                "\\??\\D:\\Data\\Shared",
                "D:\\Data\\Shared",
                None,
            ),
            "D:/Data/Shared",
        ),
        ("wsl", lx, "/usr/lib/wsl target"),
    ];
    let mut out = Extras {
        streams: Vec::new(),
        links: Vec::new(),
        xattrs,
    };
    for (f, data, target) in crafted {
        set_xattr(
            &mnt.join("reparse").join(f),
            "system.ntfs_reparse_data",
            &data,
        );
        out.links.push((format!("reparse/{f}"), target.to_string()));
        out.xattrs
            .push((format!("reparse/{f}"), "system.ntfs_reparse_data", data));
    }
    let app = reparse_raw(0x8000_001B, &[1, 2, 3, 4, 5, 6, 7, 8]);
    set_xattr(
        &mnt.join("reparse/appexec1"),
        "system.ntfs_reparse_data",
        &app,
    );
    set_xattr(
        &mnt.join("reparse/appexec2"),
        "system.ntfs_reparse_data",
        &app,
    );
    // Data we cannot decode: a WOF reparse point whose compressed stream is missing
    // (WOF files proper are in tests/ntfs_wof.rs) and EFS (flag patched later).
    std::fs::create_dir(mnt.join("opaque")).unwrap();
    std::fs::write(mnt.join("opaque/wof.dll"), vec![b'w'; 5000]).unwrap();
    set_xattr(
        &mnt.join("opaque/wof.dll"),
        "system.ntfs_reparse_data",
        &reparse_raw(
            0x8000_0017,
            &[1, 0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0],
        ),
    );
    std::fs::write(mnt.join("opaque/secret.efs"), vec![b's'; 5000]).unwrap();
    out.streams
        .push(("big.bin".into(), "big".into(), big_stream));
    out.streams
        .push(("tiny".into(), "note".into(), b"a small stream".to_vec()));
    out.streams
        .push(("links".into(), "on-a-dir".into(), b"dir stream".to_vec()));
    out
}

/// What `ntfsinfo ARGS IMG` prints: the independent view of what an image holds.
fn ntfsinfo(img: &Path, args: &[&str]) -> String {
    let o = Command::new("ntfsinfo")
        .args(args)
        .arg(img)
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// MFT record number of a file as ntfs-3g reports it (its inode number).
fn record_of(ref_mnt: &Path, rel: &str) -> u64 {
    std::fs::symlink_metadata(ref_mnt.join(rel)).unwrap().ino()
}

/// Byte offset of an attribute's value inside MFT record `rec` of an image whose $MFT
/// starts contiguously (true for low record numbers on a fresh mkntfs volume).
fn attr_value_offset(img: &Path, rec: u64, ty: u32) -> u64 {
    let f = File::open(img).unwrap();
    let mut b = [0u8; 512];
    f.read_exact_at(&mut b, 0).unwrap();
    let bps = u16::from_le_bytes([b[11], b[12]]) as u64;
    let cs = bps * b[13] as u64;
    let mft = u64::from_le_bytes(b[0x30..0x38].try_into().unwrap()) * cs;
    let code = b[0x40] as i8;
    let rs = if code > 0 {
        code as u64 * cs
    } else {
        1 << (-code)
    };
    let at = mft + rec * rs;
    let mut r = vec![0u8; rs as usize];
    f.read_exact_at(&mut r, at).unwrap();
    assert_eq!(&r[..4], b"FILE");
    let mut off = u16::from_le_bytes([r[0x14], r[0x15]]) as usize;
    loop {
        let t = u32::from_le_bytes(r[off..off + 4].try_into().unwrap());
        assert_ne!(t, 0xFFFF_FFFF, "attribute {ty:#x} not in record {rec}");
        let len = u32::from_le_bytes(r[off + 4..off + 8].try_into().unwrap()) as usize;
        if t == ty {
            assert_eq!(r[off + 8], 0, "resident");
            let vofs = u16::from_le_bytes([r[off + 0x14], r[off + 0x15]]) as usize;
            return at + (off + vofs) as u64;
        }
        off += len;
    }
}

/// ORs `bits` into the little-endian u32/u16 at `at`, which must not sit in a
/// sector's last two bytes (those belong to the update sequence).
fn or_bits(img: &Path, at: u64, bits: u32, width: usize) {
    assert!(
        at % 512 < 510 - width as u64,
        "patch would hit a fixup slot"
    );
    let f = File::options().read(true).write(true).open(img).unwrap();
    let mut b = [0u8; 4];
    f.read_exact_at(&mut b[..width], at).unwrap();
    let v = u32::from_le_bytes(b) | bits;
    f.write_all_at(&v.to_le_bytes()[..width], at).unwrap();
}

fn log_count(log: &str, needle: &str) -> usize {
    log.lines().filter(|l| l.contains(needle)).count()
}

/// The `ntfs` crate's reading of an image, a second oracle beside ntfs-3g: every
/// directory it reaches lists the same names (no DOS duplicates, no metadata files),
/// directories are directories, and the files it reads plainly have the same size and
/// bytes in the mount. It returns compressed and encrypted data raw and parses no
/// reparse points or Interix special files, so those are counted, not compared; what
/// it fails to read (it reads a record split across two runs of `$MFT` as if it
/// were contiguous: fixture testfs1's record 255; and index blocks smaller than a
/// cluster) is printed, and left to ntfs-3g.
/// Returns (compared, skipped).
fn assert_ntfs_crate_agrees(img: &Path, got: &Path) -> (usize, usize) {
    use ntfs::structured_values::{NtfsFileAttributeFlags as A, NtfsFileNamespace};
    use std::io::Read;
    let mut f = std::io::BufReader::new(File::open(img).unwrap());
    let mut fs = ntfs::Ntfs::new(&mut f).unwrap();
    fs.read_upcase_table(&mut f).unwrap();
    let root = fs.root_directory(&mut f).unwrap().file_record_number();
    let (mut compared, mut skipped, mut unread) = (0usize, 0usize, 0usize);
    let mut diffs = Vec::new();
    let mut stack = vec![(root, got.to_path_buf())];
    while let Some((rec, local)) = stack.pop() {
        let dir = fs.file(&mut f, rec).unwrap();
        let index = dir.directory_index(&mut f).unwrap();
        let mut it = index.entries();
        let mut entries = Vec::new();
        let mut listed = true;
        while let Some(e) = it.next(&mut f) {
            let e = match e {
                Ok(e) => e,
                Err(e) => {
                    // It counts index VCNs in clusters even where the index blocks
                    // are smaller than a cluster (they count 512-byte units then).
                    eprintln!("ntfs crate cannot list {}: {e}", local.display());
                    unread += 1;
                    listed = false;
                    break;
                }
            };
            let key = e.key().unwrap().unwrap();
            let r = e.file_reference().file_record_number();
            if key.namespace() == NtfsFileNamespace::Dos || r < 16 || r == rec {
                continue;
            }
            match key.name().to_string() {
                Ok(n) if !n.contains(['/', '\0']) => entries.push((n, r)),
                _ => skipped += 1, // shown with stand-ins: the names test covers them
            }
        }
        if !listed {
            continue;
        }
        let mut want: Vec<&str> = entries.iter().map(|(n, _)| n.as_str()).collect();
        want.sort_unstable();
        want.dedup(); // a Win32 and a POSIX name alike
        let mut mine: Vec<String> = std::fs::read_dir(&local)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        mine.sort_unstable();
        if want != mine {
            diffs.push(format!("{}: listing differs", local.display()));
            continue;
        }
        for (name, r) in entries {
            let path = local.join(&name);
            let md = std::fs::symlink_metadata(&path).unwrap();
            let file = match fs.file(&mut f, r) {
                Ok(file) => file,
                Err(e) => {
                    eprintln!("ntfs crate cannot read {}: {e}", path.display());
                    unread += 1;
                    continue;
                }
            };
            let attrs = file.info().unwrap().file_attributes();
            let special = !md.is_file() && !md.is_dir() && attrs.contains(A::SYSTEM);
            if special || attrs.intersects(A::REPARSE_POINT | A::COMPRESSED | A::ENCRYPTED) {
                skipped += 1;
                continue;
            }
            if file.is_directory() {
                if md.is_dir() {
                    stack.push((r, path));
                } else {
                    diffs.push(format!("{}: a directory to the ntfs crate", path.display()));
                }
                continue;
            }
            let mut bytes = Vec::new();
            if let Some(item) = file.data(&mut f, "") {
                let item = item.unwrap();
                let attr = item.to_attribute().unwrap();
                let value = attr.value(&mut f).unwrap();
                value.attach(&mut f).read_to_end(&mut bytes).unwrap();
            }
            if !md.is_file() || md.len() != bytes.len() as u64 {
                diffs.push(format!(
                    "{}: {} bytes to the ntfs crate, {} in the mount",
                    path.display(),
                    bytes.len(),
                    md.len()
                ));
            } else if std::fs::read(&path).unwrap() != bytes {
                diffs.push(format!("{}: content differs", path.display()));
            }
            compared += 1;
        }
    }
    assert!(
        diffs.is_empty(),
        "ntfs crate vs mount:\n{}",
        diffs.join("\n")
    );
    eprintln!(
        "ntfs crate: {compared} files compared, {skipped} entries it cannot read plainly, \
         {unread} it fails to read"
    );
    (compared, skipped)
}

#[test]
fn ntfs_rich_tree_matches_source_and_ntfs3g() {
    if !ntfs_tools() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let mut rng = StdRng::seed_from_u64(5);
    let src = t.path().join("src");
    make_source(&src, &mut rng, 20_000);
    let img = t.path().join("rich.img");
    let mut extras = None;
    make_ntfs(&img, 160 << 20, 512, 4096, |m| {
        extras = Some(fill_ntfs(m, &src, &mut rng, 150, true));
    });
    let extras = extras.unwrap();
    // EFS: set the encrypted bit in the file's $STANDARD_INFORMATION (offset 0x20).
    let efs_rec = {
        let r = Ntfs3g::mount(&img, &t.path().join("probe"), "ro");
        record_of(&r.dir, "opaque/secret.efs")
    };
    or_bits(
        &img,
        attr_value_offset(&img, efs_rec, 0x10) + 0x20,
        0x4000,
        4,
    );
    // The features the test is about are really in the image.
    let info = ntfsinfo(&img, &["-F", "/links/target"]);
    assert!(
        info.contains("$ATTRIBUTE_LIST"),
        "150 links spill into an attribute list"
    );
    let info = ntfsinfo(&img, &["-F", "/compressed/log.txt"]);
    assert!(info.contains("COMPRESSED"), "log.txt is compressed");
    for (file, index) in [("/$Secure", "$SII"), ("/$Extend/$ObjId", "$O")] {
        let info = ntfsinfo(&img, &["-F", file]);
        assert!(
            info.split("Dumping attribute")
                .any(|a| a.starts_with(" $INDEX_ALLOCATION") && a.contains(&format!("'{index}'"))),
            "{file}:{index} has grown past its root"
        );
    }

    let safe = t.path().join("safe");
    backup(&[s(&safe), &format!("win={}", s(&img))]);
    let m = Mounted::new(&safe, t.path(), &[]);
    let files = m.dir.join("1/win/files");
    let oracle = Ntfs3g::mount(&img, &t.path().join("ref"), "ro,streams_interface=xattr");

    // Everything ntfs-3g can show is shown the same.
    assert_same(&oracle.dir, &files, &["reparse", "opaque"]);
    let (compared, _) = assert_ntfs_crate_agrees(&img, &files);
    assert!(compared > 20_000, "{compared} files compared");
    // The same again once the warm-up has parsed the files and listed the directories
    // ahead of any walk: what it cached is what a walk is then served.
    {
        let w = Mounted::logging(&safe, t.path(), &[], "disksafe=debug");
        let wfiles = w.dir.join("1/win/files");
        assert!(wfiles.join("big.bin").exists()); // opens the volume, starting the warm-up
        let counted = |log: &str, before: &str, after: &str| {
            log.lines().find_map(|l| {
                let (_, rest) = l.split_once(before)?;
                rest.split_once(after)?.0.parse::<usize>().ok()
            })
        };
        let (files_ahead, dirs_ahead) = (0..300)
            .find_map(|_| {
                let log = w.log_text();
                let n = counted(&log, ": parsed ", " files ahead").zip(counted(
                    &log,
                    ": listed ",
                    " of ",
                ));
                if n.is_none() {
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
                n
            })
            .unwrap_or_else(|| panic!("no warm-up lines in 30 s: {}", w.log_text()));
        assert!(files_ahead > 20_000, "{files_ahead} files parsed ahead");
        assert!(dirs_ahead > 40, "{dirs_ahead} directories listed ahead");
        assert_same(&oracle.dir, &wfiles, &["reparse", "opaque"]);
    }
    // Content equals the source given to cp.
    for rel in [
        "big.bin",
        "tiny",
        "empty",
        "ünïcødé-日本語-🎉",
        "new\nline",
        "big dir/entry-019999",
    ] {
        assert_eq!(
            sha256_file(&src.join(rel)),
            sha256_file(&files.join(rel)),
            "{rel}"
        );
    }
    let deep: PathBuf = (0..40)
        .map(|i| format!("level{i}"))
        .collect::<PathBuf>()
        .join("bottom.txt");
    assert_eq!(std::fs::read(files.join(&deep)).unwrap(), b"deep");
    // Huge directory: all entries, and lookups without a listing.
    assert_eq!(
        std::fs::read_dir(files.join("big dir")).unwrap().count(),
        20_000
    );
    for i in [0, 7777, 19_999] {
        let p = files.join(format!("big dir/entry-{i:06}"));
        assert_eq!(std::fs::read_to_string(p).unwrap(), i.to_string());
    }
    assert!(std::fs::symlink_metadata(files.join("big dir/entry-020000")).is_err());
    // 150 hard links: one inode, nlink 151.
    let target = std::fs::metadata(files.join("links/target")).unwrap();
    assert_eq!(target.nlink(), 151);
    for i in [0, 77, 149] {
        assert_eq!(
            std::fs::metadata(files.join(format!("links/hard{i:03}")))
                .unwrap()
                .ino(),
            target.ino()
        );
    }
    // DOS 8.3 names hidden, and not found by lookup.
    assert!(files.join("Long File Name.txt").exists());
    assert!(std::fs::read_dir(&files)
        .unwrap()
        .all(|e| e.unwrap().file_name() != "LONGFI~1.TXT"));
    assert!(std::fs::symlink_metadata(files.join("LONGFI~1.TXT")).is_err());
    assert_eq!(
        get_xattr(&files.join("Long File Name.txt"), b"system.ntfs_dos_name"),
        Ok(b"LONGFI~1.TXT".to_vec())
    );
    // system.ntfs_* values read back as written: a 16-byte object id comes with the
    // 48 bytes of birth ids $ObjId:$O keeps for it, and the times with the MFT change
    // time ntfs-3g set while writing them.
    for (rel, name, want) in &extras.xattrs {
        let got = get_xattr(&files.join(rel), name.as_bytes()).unwrap();
        let len = match *name {
            "system.ntfs_object_id" => 64,
            "system.ntfs_times" => 32,
            _ => want.len(),
        };
        assert_eq!(
            (got.len(), &got[..want.len()]),
            (len, &want[..]),
            "{rel} {name}"
        );
    }
    // Streams: listed as user.* xattrs, readable at any size as FILE:NAME, not listed.
    for (file, name, data) in &extras.streams {
        let p = files.join(file);
        let xname = format!("user.{name}").into_bytes();
        assert!(list_xattrs(&p).contains(&xname), "{file} lists user.{name}");
        if data.len() <= 65536 {
            assert_eq!(&get_xattr(&p, &xname).unwrap(), data);
        } else {
            assert_eq!(get_xattr(&p, &xname), Err(libc::E2BIG));
        }
        let sp = files.join(format!("{file}:{name}"));
        assert_eq!(&std::fs::read(&sp).unwrap(), data, "{file}:{name}");
        assert_eq!(std::fs::metadata(&sp).unwrap().len(), data.len() as u64);
    }
    assert!(std::fs::read_dir(&files).unwrap().all(|e| !e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .contains(':')));
    assert!(std::fs::symlink_metadata(files.join("tiny:nosuch")).is_err());
    // Ownership and modes.
    let me = unsafe { libc::geteuid() };
    for rel in ["big.bin", "links", "rel-link"] {
        let md = std::fs::symlink_metadata(files.join(rel)).unwrap();
        assert_eq!(md.uid(), me);
        let want = if md.is_dir() {
            0o555
        } else if md.file_type().is_symlink() {
            0o777
        } else {
            0o444
        };
        assert_eq!(md.mode() & 0o7777, want, "{rel}");
    }
    // Crafted reparse points: links with the targets written.
    for (rel, target) in &extras.links {
        let md = std::fs::symlink_metadata(files.join(rel)).unwrap();
        assert!(md.file_type().is_symlink(), "{rel} is a symlink");
        assert_eq!(
            std::fs::read_link(files.join(rel)).unwrap(),
            Path::new(target),
            "{rel}"
        );
    }
    assert!(std::fs::symlink_metadata(files.join("reparse/appexec1"))
        .unwrap()
        .is_file());
    assert!(std::fs::symlink_metadata(files.join("reparse/appexec2"))
        .unwrap()
        .is_file());
    // Undecodable data: listed, reads give EIO with a log line naming the reason.
    for (rel, why) in [("opaque/wof.dll", "WOF"), ("opaque/secret.efs", "EFS")] {
        let md = std::fs::symlink_metadata(files.join(rel)).unwrap();
        assert_eq!(md.len(), 5000, "{rel} lists its size");
        let e = std::fs::read(files.join(rel)).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EIO), "{rel}");
        assert!(
            log_count(&m.log_text(), why) >= 1,
            "log names {why}: {}",
            m.log_text()
        );
    }
    assert_eq!(
        log_count(&m.log_text(), "0x8000001b"),
        1,
        "unknown tag logged once: {}",
        m.log_text()
    );
    // System files hidden, shown with --show-system like ntfs-3g's show_sys_files.
    assert!(!files.join("$MFT").exists());
    drop(oracle);
    let mft = Command::new("ntfscat")
        .args(["-i", "0"])
        .arg(&img)
        .output()
        .unwrap();
    assert!(mft.status.success() && mft.stdout.len() > 1 << 20);
    let sys = Ntfs3g::mount(&img, &t.path().join("sys"), "ro,show_sys_files");
    let m2 = Mounted::new(&safe, t.path(), &["--show-system"]);
    let names = |d: &Path| {
        let mut v: Vec<_> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        v.sort();
        v
    };
    let ours = names(&m2.dir.join("1/win/files"));
    assert!(ours.iter().any(|n| n == "$MFT") && ours.iter().any(|n| n == "$Extend"));
    // ntfs-3g never lists $MFT (record 0 cannot be a FUSE inode there); the rest match.
    let without_mft: Vec<_> = ours.iter().filter(|n| *n != "$MFT").cloned().collect();
    assert_eq!(without_mft, names(&sys.dir));
    assert_eq!(
        std::fs::metadata(m2.dir.join("1/win/files/$UpCase"))
            .unwrap()
            .len(),
        std::fs::metadata(sys.dir.join("$UpCase")).unwrap().len()
    );
    // ntfscat applies the update-sequence fixups; we serve the raw bytes (forensics):
    // they agree everywhere but in the last two bytes of each 512-byte stride.
    let ours = std::fs::read(m2.dir.join("1/win/files/$MFT")).unwrap();
    assert_eq!(ours.len(), mft.stdout.len());
    let masked = |b: &[u8]| -> Vec<u8> {
        b.iter()
            .enumerate()
            .map(|(i, &x)| if i % 512 >= 510 { 0 } else { x })
            .collect()
    };
    assert!(
        masked(&ours) == masked(&mft.stdout),
        "$MFT as ntfscat reads it"
    );
}

#[test]
fn ntfs_geometries_sectors_and_clusters() {
    if !ntfs_tools() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let mut rng = StdRng::seed_from_u64(9);
    let src = t.path().join("src");
    make_source(&src, &mut rng, 700);
    let safe = t.path().join("safe");
    let mut devs = Vec::new();
    // Clusters past 4 KiB map index blocks and MFT records in parts of a cluster
    // (VCNs in 512-byte units); 2 MiB is the largest NTFS allows.
    let cases: [(u32, u32); 5] = [
        (4096, 4096),
        (512, 512),
        (512, 65536),
        (512, 131072),
        (4096, 2 << 20),
    ];
    for (sector, cluster) in cases {
        let img = t.path().join(format!("g{sector}-{cluster}.img"));
        let size = (128u64 << 20).max(cluster as u64 * 256);
        make_ntfs(&img, size, sector, cluster, |m| {
            fill_ntfs(m, &src, &mut rng, 20, cluster <= 4096);
        });
        devs.push(format!("g{sector}-{cluster}={}", s(&img)));
        let info = ntfsinfo(&img, &["-m"]);
        assert!(
            info.contains(&format!("Cluster Size: {cluster}"))
                && info.contains(&format!("Sector Size: {sector}")),
            "{info}"
        );
    }
    let args: Vec<&str> = std::iter::once(s(&safe))
        .chain(devs.iter().map(|d| d.as_str()))
        .collect();
    backup(&args);
    let m = Mounted::new(&safe, t.path(), &[]);
    for (sector, cluster) in cases {
        let img = t.path().join(format!("g{sector}-{cluster}.img"));
        let oracle = Ntfs3g::mount(
            &img,
            &t.path().join(format!("ref{cluster}")),
            "ro,streams_interface=xattr",
        );
        let files = m.dir.join(format!("1/g{sector}-{cluster}/files"));
        assert_same(&oracle.dir, &files, &["reparse", "opaque"]);
        assert_ntfs_crate_agrees(&img, &files);
        assert_eq!(
            sha256_file(&src.join("big.bin")),
            sha256_file(&files.join("big.bin"))
        );
        assert_eq!(
            std::fs::read_dir(files.join("big dir")).unwrap().count(),
            700
        );
        assert_eq!(
            std::fs::read(files.join("big.bin:big")).unwrap().len(),
            200_000
        );
    }
}

#[test]
fn ntfs_fragmented_mft_and_file_attribute_lists() {
    if !ntfs_tools() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let img = t.path().join("frag.img");
    let mut frag = vec![0u8; 7 << 20];
    StdRng::seed_from_u64(3).fill(&mut frag[..]);
    make_ntfs(&img, 32 << 20, 512, 4096, |m| {
        // Fill the volume with one-cluster files, free every other one, then grow a
        // file and the MFT into the holes.
        std::fs::create_dir(m.join("fill")).unwrap();
        let mut n = 0;
        while std::fs::write(m.join(format!("fill/{n:05}")), [0xAAu8; 4096]).is_ok() {
            n += 1;
        }
        for i in (0..n).step_by(2) {
            std::fs::remove_file(m.join(format!("fill/{i:05}"))).unwrap();
        }
        std::fs::write(m.join("frag.bin"), &frag).unwrap();
        std::fs::create_dir(m.join("meta")).unwrap();
        for k in 0..12_000 {
            if File::create(m.join(format!("meta/m{k:05}"))).is_err() {
                break;
            }
        }
    });
    for (what, args) in [
        ("$MFT", vec!["-i", "0"]),
        ("frag.bin", vec!["-F", "/frag.bin"]),
    ] {
        assert!(
            ntfsinfo(&img, &args).contains("$ATTRIBUTE_LIST"),
            "{what} has an attribute list"
        );
    }
    let safe = t.path().join("safe");
    backup(&[s(&safe), &format!("frag={}", s(&img))]);
    let m = Mounted::new(&safe, t.path(), &[]);
    let files = m.dir.join("1/frag/files");
    assert_eq!(std::fs::read(files.join("frag.bin")).unwrap(), frag);
    let oracle = Ntfs3g::mount(&img, &t.path().join("ref"), "ro,streams_interface=xattr");
    assert_same(&oracle.dir, &files, &[]);
}

#[test]
fn ntfs_fixtures_list_and_read_as_ntfs3g_shows_them() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures");
    if !dir.exists() {
        eprintln!("SKIP: ../shared/fixtures is absent; the real NTFS images cannot be checked");
        return;
    }
    if !ntfs_tools() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let safe = t.path().join("safe");
    let mut devs = Vec::new();
    for (name, file) in [
        ("ntfs3", "ntfs3.raw.gz"),
        ("attrlist", "ntfs3_attrlist.raw.gz"),
        ("testfs1", "testfs1.gz"),
    ] {
        let img = t.path().join(format!("{name}.img"));
        let o = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "gunzip -c '{}' > '{}'",
                s(&dir.join(file)),
                s(&img)
            ))
            .status()
            .unwrap();
        assert!(o.success());
        devs.push((name, img));
    }
    let mut args = vec![s(&safe).to_string()];
    args.extend(devs.iter().map(|(n, p)| format!("{n}={}", s(p))));
    backup(&args.iter().map(|a| a.as_str()).collect::<Vec<_>>());
    let m = Mounted::new(&safe, t.path(), &[]);
    for (name, img) in &devs {
        let oracle = Ntfs3g::mount(
            img,
            &t.path().join(format!("ref-{name}")),
            "ro,streams_interface=xattr",
        );
        let files = m.dir.join(format!("1/{name}/files"));
        assert_same(&oracle.dir, &files, &[]);
        assert_ntfs_crate_agrees(img, &files);
    }
    // The attribute-list fixture: 100 names of one record.
    let a = m.dir.join("1/attrlist/files");
    let ino = std::fs::metadata(a.join("1.txt")).unwrap().ino();
    for i in 1..=100 {
        assert_eq!(
            std::fs::metadata(a.join(format!("{i}.txt"))).unwrap().ino(),
            ino
        );
    }
    assert!(
        std::fs::read_dir(m.dir.join("1/testfs1/files/many_subdirs"))
            .unwrap()
            .count()
            == 512
    );
}

#[test]
fn ntfs_torn_record_and_dirty_volume_are_reported() {
    if !ntfs_tools() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let img = t.path().join("torn.img");
    make_ntfs(&img, 16 << 20, 512, 4096, |m| {
        std::fs::write(m.join("victim"), b"torn away").unwrap();
        std::fs::write(m.join("survivor"), b"still here").unwrap();
    });
    let rec = {
        let r = Ntfs3g::mount(&img, &t.path().join("probe"), "ro");
        record_of(&r.dir, "victim")
    };
    // Tear the record: change the update-sequence trailer of its first sector.
    let si = attr_value_offset(&img, rec, 0x10);
    let first_sector_end = si / 512 * 512 + 510;
    let f = File::options().read(true).write(true).open(&img).unwrap();
    let mut b = [0u8; 2];
    f.read_exact_at(&mut b, first_sector_end).unwrap();
    f.write_all_at(&[b[0] ^ 0xFF, b[1]], first_sector_end)
        .unwrap();
    // Mark the volume dirty, as a crash-consistent point would be.
    or_bits(&img, attr_value_offset(&img, 3, 0x70) + 0x0A, 1, 2);
    let safe = t.path().join("safe");
    backup(&[s(&safe), &format!("d={}", s(&img))]);
    let m = Mounted::new(&safe, t.path(), &[]);
    let files = m.dir.join("1/d/files");
    assert_eq!(
        std::fs::read(files.join("survivor")).unwrap(),
        b"still here"
    );
    let e = std::fs::read(files.join("victim")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EIO));
    std::fs::read_dir(&files).unwrap().for_each(drop);
    let log = m.log_text();
    assert!(log.contains("torn"), "log names the torn record: {log}");
    assert_eq!(log_count(&log, "not cleanly unmounted"), 1, "{log}");
}

#[test]
fn ntfs_names_with_slash_nul_or_a_lone_surrogate_are_listed_and_readable() {
    // POSIX-namespace names may hold `/` and NUL, and any UTF-16 may hold unpaired
    // surrogates; ntfs-3g writes none of them, so the test writes placeholder names
    // through it and patches one UTF-16 unit in place, in the file's record and in
    // its directory's index alike (each placeholder occurs exactly those two times).
    if !ntfs_tools() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let img = t.path().join("names.img");
    let units: [(u16, &[u8]); 3] = [
        (0x002F, "∕".as_bytes()),  // `/` shown as U+2215
        (0x0000, "␀".as_bytes()),  // NUL shown as U+2400
        (0xD800, b"\xED\xA0\x80"), // the surrogate in its WTF-8 form
    ];
    make_ntfs(&img, 32 << 20, 512, 4096, |m| {
        for i in 0..units.len() {
            std::fs::create_dir(m.join(format!("d{i}"))).unwrap();
            std::fs::write(m.join(format!("d{i}/qZ{i}Zq")), format!("content {i}")).unwrap();
        }
    });
    let mut bytes = std::fs::read(&img).unwrap();
    for (i, (unit, _)) in units.iter().enumerate() {
        let pat: Vec<u8> = format!("qZ{i}Zq")
            .encode_utf16()
            .flat_map(u16::to_le_bytes)
            .collect();
        let at: Vec<usize> = bytes
            .windows(pat.len())
            .enumerate()
            .filter(|(_, w)| *w == pat.as_slice())
            .map(|(o, _)| o)
            .collect();
        assert_eq!(at.len(), 2, "placeholder {i} in the record and the index");
        for o in at {
            bytes[o + 4..o + 6].copy_from_slice(&unit.to_le_bytes());
        }
    }
    std::fs::write(&img, &bytes).unwrap();
    let safe = t.path().join("safe");
    backup(&[s(&safe), &format!("w={}", s(&img))]);
    let m = Mounted::new(&safe, t.path(), &[]);
    // ntfs-3g shows the surrogate name the same way; it cannot list the `/` name
    // (EIO) and cuts the NUL name short, so the data written is the oracle there.
    let oracle = Ntfs3g::mount(&img, &t.path().join("ref"), "ro");
    for (i, (_, shown)) in units.iter().enumerate() {
        let dir = m.dir.join(format!("1/w/files/d{i}"));
        let mut want = b"qZ".to_vec();
        want.extend_from_slice(shown);
        want.extend_from_slice(b"Zq");
        let names: Vec<Vec<u8>> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().as_bytes().to_vec())
            .collect();
        assert_eq!(names, vec![want.clone()], "d{i}");
        let path = dir.join(std::ffi::OsStr::from_bytes(&want));
        assert_eq!(
            std::fs::read(&path).unwrap(),
            format!("content {i}").as_bytes(),
            "d{i}"
        );
        if units[i].0 == 0xD800 {
            let theirs = oracle.dir.join(format!("d{i}"));
            let their_names: Vec<Vec<u8>> = std::fs::read_dir(&theirs)
                .unwrap()
                .map(|e| e.unwrap().file_name().as_bytes().to_vec())
                .collect();
            assert_eq!(their_names, vec![want.clone()], "ntfs-3g's name");
            assert_eq!(
                std::fs::read(theirs.join(std::ffi::OsStr::from_bytes(&want))).unwrap(),
                std::fs::read(&path).unwrap()
            );
        }
    }
}

#[test]
fn prefetch_of_a_file_range_asks_for_the_clusters_holding_it() {
    if !ntfs_tools() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let mut rng = StdRng::seed_from_u64(78);
    let mut big = vec![0u8; 12 << 20];
    rng.fill(&mut big[..]);
    let img = t.path().join("pf.img");
    make_ntfs(&img, 64 << 20, 512, 4096, |m| {
        for i in 0..50 {
            let mut b = vec![0u8; rng.gen_range(1..20_000)];
            rng.fill(&mut b[..]);
            std::fs::write(m.join(format!("f{i}")), b).unwrap();
        }
        std::fs::write(m.join("big"), &big).unwrap();
    });
    // 5 MiB from 3 MiB + 100 bytes: clusters 768 to 2048 (the last one partly).
    let asked = prefetch_asks(&img, b"big", (3 << 20) + 100, 5 << 20);
    assert!(!asked.is_empty(), "nothing asked for");
    // The oracle is the file's own bytes: each range asked for (merged across gaps of
    // at most 64 KiB) holds clusters of the file, found by content, and together they
    // hold every cluster of the window.
    let image = std::fs::read(&img).unwrap();
    let mut found = std::collections::BTreeSet::new();
    for &(at, len) in &asked {
        assert_eq!(at % 4096, 0, "cluster-aligned");
        for c in (at..at + len).step_by(4096) {
            let got = &image[c as usize..c as usize + 4096];
            if let Some(k) = (0..big.len() / 4096).find(|&k| &big[k * 4096..(k + 1) * 4096] == got)
            {
                found.insert(k);
            }
        }
    }
    for k in 768..2049 {
        assert!(
            found.contains(&k),
            "cluster {k} of the file not asked for: {asked:?}"
        );
    }
    let total: u64 = asked.iter().map(|r| r.1).sum();
    assert!(
        total <= (5 << 20) + 4096 + asked.len() as u64 * (64 << 10),
        "{total} bytes asked for"
    );
}

/// Reads of a compressed file, whole units and parts of units, give the source's
/// bytes; its prefetch covers every device range that reading the window then reads (its units' compressed clusters; the read path is checked against the source
/// files elsewhere), widened to whole units and little more.
#[test]
fn compressed_file_reads_match_the_source_and_prefetch_covers_them() {
    if !ntfs_tools() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let mut rng = StdRng::seed_from_u64(79);
    let mut text = Vec::new();
    while text.len() < 12 << 20 {
        let v: u32 = rng.gen_range(0..100_000);
        text.extend_from_slice(format!("row {} value {v}\n", text.len()).as_bytes());
    }
    let img = t.path().join("pfc.img");
    make_ntfs(&img, 64 << 20, 512, 4096, |m| {
        for i in 0..20 {
            std::fs::write(m.join(format!("f{i}")), vec![b'x'; 5000 * i]).unwrap();
        }
        std::fs::create_dir(m.join("c")).unwrap();
        set_xattr(
            &m.join("c"),
            "system.ntfs_attrib_be",
            &0x800u32.to_be_bytes(),
        );
        std::fs::write(m.join("c/big"), &text).unwrap();
    });
    assert!(
        ntfsinfo(&img, &["-F", "/c/big"]).contains("COMPRESSED"),
        "ntfs-3g compressed the file"
    );
    // Reads inside one unit, across units, of whole aligned units (decoded in place)
    // and mixes of both, one after another so the unit cache is in play, give the
    // source's bytes.
    let tree = open_image_tree(&img);
    let c = tree.lookup(tree.root(), b"c").unwrap().unwrap();
    let ino = tree.lookup(c, b"big").unwrap().unwrap();
    let unit = 64u64 << 10;
    for (at, n) in [
        (5, 100),
        (unit - 10, 20),
        (0, unit as usize),
        (unit * 3, 1 << 20),
        (unit * 3 + 1, 1 << 20),
        (unit * 7 - 5, (unit * 2) as usize),
        (text.len() as u64 - 100_000, 200_000),
    ] {
        let mut b = vec![0u8; n];
        let got = tree.read(ino, at, &mut b).unwrap();
        let want = &text[at as usize..(at as usize + n).min(text.len())];
        assert_eq!(got, want.len(), "read at {at}");
        assert!(
            &b[..got] == want,
            "{n} bytes at {at} differ from the source"
        );
    }
    drop(tree);

    let (offset, len) = ((3 << 20) + 100, 5 << 20);
    let (asked, reads) = prefetch_asks_then_reads(&img, b"c/big", offset, len);
    assert_reads_asked(&asked, &reads);
    // Compressed, the window's units take less than the window; whole units add at
    // most one unit (64 KiB) at either end, merging at most 64 KiB per range.
    let total: u64 = asked.iter().map(|r| r.1).sum();
    assert!(
        total <= len + (128 << 10) + asked.len() as u64 * (64 << 10),
        "{total} bytes asked for"
    );
}

/// A file's data extents as ntfsinfo's view of its `$DATA` implies them: everything
/// but `<HOLE>` runs and the bytes past the initialized size.
fn ntfsinfo_data_extents(img: &Path, path: &str, cluster: u64) -> Vec<(u64, u64)> {
    let info = ntfsinfo(img, &["-v", "-F", path]);
    let data = &info[info
        .find("Dumping attribute $DATA")
        .expect("a $DATA attribute")..];
    let field = |name: &str| -> u64 {
        let l = data
            .lines()
            .find(|l| l.trim_start().starts_with(name))
            .unwrap();
        l.split_whitespace().nth(2).unwrap().parse().unwrap()
    };
    let (size, init) = (field("Data size:"), field("Initialized size:"));
    let mut holes: Vec<(u64, u64)> = data
        .lines()
        .skip_while(|l| !l.contains("Runlist:"))
        .skip(1)
        .map_while(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            (w.len() == 3).then(|| (w[0].to_string(), w[1].to_string(), w[2].to_string()))
        })
        .filter(|(_, lcn, _)| lcn == "<HOLE>")
        .map(|(vcn, _, n)| {
            let hex = |s: &str| u64::from_str_radix(s.trim_start_matches("0x"), 16).unwrap();
            (hex(&vcn) * cluster, (hex(&vcn) + hex(&n)) * cluster)
        })
        .collect();
    holes.push((init, size));
    let mut extents = Vec::new();
    let mut at = 0;
    holes.sort();
    for (a, b) in holes {
        let (a, b) = (a.min(size), b.min(size));
        if a > at {
            extents.push((at, a));
        }
        at = at.max(b);
    }
    if at < size {
        extents.push((at, size));
    }
    extents
}

/// SEEK_DATA and SEEK_HOLE on NTFS files: a sparse file's holes are its sparse runs
/// and the part past its initialized size, as ntfsinfo lists them; a compressed file's
/// all-zero compression units (stored as sparse) are holes and every other byte is
/// data; a dense file is one extent; through the mount too.
#[test]
fn sparse_and_compressed_files_report_their_holes() {
    if !ntfs_tools() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let mut rng = StdRng::seed_from_u64(83);
    let mut noise = |n: usize| {
        let mut b = vec![0u8; n];
        rng.fill(&mut b[..]);
        b
    };
    // Compressible text with long runs of zeros between.
    let mut zeros = Vec::new();
    let line = |i: usize| format!("line {i} of the log\n").into_bytes();
    for part in 0..4 {
        let mut i = 0;
        while zeros.len() < part * (1 << 20) + 300_000 {
            zeros.extend(line(i));
            i += 1;
        }
        zeros.resize((part + 1) << 20, 0);
    }
    let dense = noise(1 << 20);
    let pieces = [
        (0, noise(100_000)),
        (3 << 20, noise(512 << 10)),
        ((10 << 20) + 5, noise(1)),
    ];
    let img = t.path().join("sparse.img");
    make_ntfs(&img, 64 << 20, 512, 4096, |m| {
        let f = File::create(m.join("sparse")).unwrap();
        f.set_len(20 << 20).unwrap();
        for (at, b) in &pieces {
            f.write_all_at(b, *at).unwrap();
        }
        std::fs::write(m.join("dense"), &dense).unwrap();
        std::fs::create_dir(m.join("c")).unwrap();
        set_xattr(
            &m.join("c"),
            "system.ntfs_attrib_be",
            &0x800u32.to_be_bytes(),
        );
        std::fs::write(m.join("c/zeros"), &zeros).unwrap();
    });
    let want_sparse = ntfsinfo_data_extents(&img, "/sparse", 4096);
    assert!(
        want_sparse.len() >= 3,
        "ntfs-3g made holes: {want_sparse:?}"
    );
    let tree = open_image_tree(&img);
    let file = |dir: u64, name: &[u8]| tree.lookup(dir, name).unwrap().unwrap();
    let walk = |ino: u64| {
        let len = tree.stat(ino).unwrap().size;
        seek_extents(len, |o, d| tree.seek(ino, o, d).unwrap())
    };
    assert_eq!(walk(file(tree.root(), b"sparse")), want_sparse);
    assert_eq!(walk(file(tree.root(), b"dense")), vec![(0, 1 << 20)]);
    // The compressed file: holes only where the source is zero, and every all-zero
    // 64 KiB unit is one.
    let c = file(tree.root(), b"c");
    let got = walk(file(c, b"zeros"));
    let in_data = |p: u64| got.iter().any(|e| e.0 <= p && p < e.1);
    for (p, &b) in zeros.iter().enumerate() {
        assert!(
            b == 0 || in_data(p as u64),
            "non-zero byte at {p} in a hole: {got:?}"
        );
    }
    for (u, unit) in zeros.chunks(64 << 10).enumerate() {
        let at = u as u64 * (64 << 10);
        assert!(
            unit.iter().any(|&b| b != 0) || !in_data(at),
            "all-zero unit at {at} reported as data: {got:?}"
        );
    }
    assert!(tree
        .seek(file(c, b"zeros"), zeros.len() as u64, true)
        .unwrap()
        .is_none());
    drop(tree);
    // Through the mount: the kernel asks the tree with FUSE_LSEEK.
    let safe = t.path().join("safe");
    backup(&[s(&safe), s(&img)]);
    let m = Mounted::new(&safe, t.path(), &[]);
    let f = File::open(m.dir.join("1/sparse.img/files/sparse")).unwrap();
    let through = seek_extents(20 << 20, |o, data| lseek(&f, o, data));
    assert_eq!(through, want_sparse, "through the mount");
}

/// `backup --skip-free` on an NTFS volume (its `$LogFile` emptied, as ntfs-3g leaves
/// it): restored, every cluster that differs from the source is one the source's
/// `$Bitmap` (as `ntfscat` reads it) marks free, ntfs-3g shows the same tree, and the
/// deleted files' data (still on the source) is not in the safe. A volume marked
/// dirty is read whole.
#[test]
fn skip_free_leaves_out_only_what_ntfs_marks_free() {
    if !ntfs_tools() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let img = t.path().join("vol.img");
    let mut rng = StdRng::seed_from_u64(62);
    let deleted = 8u64 << 20;
    make_ntfs(&img, 48 << 20, 512, 4096, |m| {
        make_tree(&m.join("keep"), 15, &mut rng);
        for j in 0..2 {
            let mut data = vec![0u8; (deleted / 2) as usize];
            rng.fill(&mut data[..]);
            std::fs::write(m.join(format!("big{j}")), &data).unwrap();
        }
        Command::new("sync").status().unwrap();
        for j in 0..2 {
            std::fs::remove_file(m.join(format!("big{j}"))).unwrap();
        }
    });
    let o = Command::new("ntfscat")
        .args(["-f", s(&img), "$Bitmap"])
        .output()
        .unwrap();
    assert!(o.status.success(), "ntfscat: {o:?}");
    let bitmap = o.stdout;
    let (all, part, restored) = backup_with_and_without_skip_free(&img, "vol", t.path());
    let (want, got) = (
        std::fs::read(&img).unwrap(),
        std::fs::read(&restored).unwrap(),
    );
    assert_eq!(want.len(), got.len());
    let mut differ = 0u64;
    for (c, (a, b)) in want.chunks(4096).zip(got.chunks(4096)).enumerate() {
        if a != b {
            let used = bitmap
                .get(c / 8)
                .is_none_or(|byte| byte & (1 << (c % 8)) != 0);
            assert!(!used, "cluster {c} differs but $Bitmap marks it used");
            differ += 4096;
        }
    }
    assert!(
        differ * 10 >= deleted * 8,
        "only {differ} bytes left out of {deleted} deleted"
    );
    let digest = |img: &Path, at: &str| {
        let m = Ntfs3g::mount(img, &t.path().join(at), "ro");
        tree_digest(&m.dir)
    };
    assert_eq!(digest(&restored, "r"), digest(&img, "w"), "ntfs-3g's view");
    let (a, p) = (pack_bytes(&all), pack_bytes(&part));
    assert!(a - p >= deleted * 8 / 10, "{a} vs {p}");

    // The same volume marked dirty: nothing is left out.
    let dirty = t.path().join("dirty.img");
    std::fs::copy(&img, &dirty).unwrap();
    set_ntfs_dirty(&dirty);
    let o = Command::new("ntfsinfo")
        .args(["-f", "-m", s(&dirty)])
        .output()
        .unwrap();
    let info = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        info.contains("Volume Flags: 0x0001 DIRTY"),
        "ntfsinfo: {info}"
    );
    let d = t.path().join("dirty-safe");
    let o = ds(&[
        "backup",
        s(&d),
        &format!("vol={}", s(&dirty)),
        "--skip-free",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("marked dirty") && err.contains("free space not skipped"),
        "{err}"
    );
    ok(&["restore", s(&d), "1", "vol", s(&restored)]);
    assert_eq!(sha256_file(&restored), sha256_file(&dirty));
}

/// Sets the dirty bit in `$Volume`'s VOLUME_INFORMATION (MFT record 3, and its copy
/// in `$MFTMirr`), as Windows does when it finds damage; `ntfsinfo -m` is the check
/// that it took.
fn set_ntfs_dirty(img: &Path) {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(img)
        .unwrap();
    let mut boot = [0u8; 512];
    f.read_exact_at(&mut boot, 0).unwrap();
    let bps = u16::from_le_bytes([boot[11], boot[12]]) as u64;
    let cs = bps * boot[13] as u64;
    let mft = u64::from_le_bytes(boot[0x30..0x38].try_into().unwrap()) * cs;
    let mirror = u64::from_le_bytes(boot[0x38..0x40].try_into().unwrap()) * cs;
    let rs = match boot[0x40] as i8 {
        n if n < 0 => 1u64 << -n,
        n => n as u64 * cs,
    };
    let mut rec = vec![0u8; rs as usize];
    let at = mft + 3 * rs;
    f.read_exact_at(&mut rec, at).unwrap();
    let mut a = u16::from_le_bytes([rec[0x14], rec[0x15]]) as usize;
    loop {
        let ty = u32::from_le_bytes(rec[a..a + 4].try_into().unwrap());
        assert_ne!(ty, 0xFFFF_FFFF, "$Volume has no VOLUME_INFORMATION");
        if ty == 0x70 {
            let v = a + u16::from_le_bytes([rec[a + 0x14], rec[a + 0x15]]) as usize;
            assert!(v + 0x0C < 510, "flags before the record's first fixup");
            for copy in [at, mirror + 3 * rs] {
                f.write_all_at(&[rec[v + 0x0A] | 1], copy + v as u64 + 0x0A)
                    .unwrap();
            }
            return;
        }
        a += u32::from_le_bytes(rec[a + 4..a + 8].try_into().unwrap()) as usize;
    }
}

/// An NTFS volume whose first sector is lost is read through the backup boot sector
/// mkntfs (like Windows) keeps in the volume's last sector: with 512-byte sectors and
/// the first sector zeroed, with 4096-byte sectors and a first sector that keeps its
/// signature but names no cluster size. Each tree equals ntfs-3g's view of the same
/// volume before the damage, and the log says the backup was used.
#[test]
fn ntfs_lost_boot_sector_is_read_through_its_backup() {
    if !ntfs_tools() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let mut rng = StdRng::seed_from_u64(19);
    let src = t.path().join("src");
    make_source(&src, &mut rng, 50);
    let safe = t.path().join("safe");
    let mut devs = Vec::new();
    let cases: [(u32, &str); 2] = [(512, "zeroed"), (4096, "garbage")];
    for (sector, damage) in cases {
        let img = t.path().join(format!("{damage}.img"));
        make_ntfs(&img, 64 << 20, sector, 4096, |m| {
            fill_ntfs(m, &src, &mut rng, 5, true);
        });
        std::fs::copy(&img, t.path().join(format!("{damage}-intact.img"))).unwrap();
        let f = OpenOptions::new().write(true).open(&img).unwrap();
        if damage == "zeroed" {
            f.write_all_at(&[0u8; 512], 0).unwrap();
        } else {
            f.write_all_at(&[0u8], 0x0D).unwrap();
        }
        drop(f);
        devs.push(format!("{damage}={}", s(&img)));
    }
    let args: Vec<&str> = std::iter::once(s(&safe))
        .chain(devs.iter().map(|d| d.as_str()))
        .collect();
    backup(&args);
    let m = Mounted::new(&safe, t.path(), &[]);
    for (_, damage) in cases {
        let oracle = Ntfs3g::mount(
            &t.path().join(format!("{damage}-intact.img")),
            &t.path().join(format!("ref-{damage}")),
            "ro,streams_interface=xattr",
        );
        assert_same(
            &oracle.dir,
            &m.dir.join(format!("1/{damage}/files")),
            &["reparse", "opaque"],
        );
    }
    let log = m.log_text();
    assert_eq!(
        log_count(&log, "read through its backup in the volume's last sector"),
        2,
        "{log}"
    );
}

/// $MFT's first records (itself, $MFTMirr, $LogFile, $Volume) lost to damage are read
/// from $MFTMirr, as Windows falls back on it: with $MFT's first cluster (records
/// 0-3) zeroed, the tree equals ntfs-3g's view of the volume before the damage and
/// the log says where the records came from.
#[test]
fn ntfs_lost_first_mft_records_are_read_from_the_mirror() {
    if !ntfs_tools() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let mut rng = StdRng::seed_from_u64(21);
    let src = t.path().join("src");
    make_source(&src, &mut rng, 50);
    let img = t.path().join("v.img");
    make_ntfs(&img, 64 << 20, 512, 4096, |m| {
        fill_ntfs(m, &src, &mut rng, 5, true);
    });
    let intact = t.path().join("intact.img");
    std::fs::copy(&img, &intact).unwrap();
    let mut boot = [0u8; 512];
    File::open(&img)
        .unwrap()
        .read_exact_at(&mut boot, 0)
        .unwrap();
    let cluster = u16::from_le_bytes([boot[0x0B], boot[0x0C]]) as u64 * boot[0x0D] as u64;
    let mft = u64::from_le_bytes(boot[0x30..0x38].try_into().unwrap()) * cluster;
    let f = OpenOptions::new().write(true).open(&img).unwrap();
    f.write_all_at(&vec![0u8; cluster as usize], mft).unwrap();
    drop(f);
    let safe = t.path().join("safe");
    backup(&[s(&safe), &format!("v={}", s(&img))]);
    let m = Mounted::new(&safe, t.path(), &[]);
    let oracle = Ntfs3g::mount(&intact, &t.path().join("ref"), "ro,streams_interface=xattr");
    assert_same(
        &oracle.dir,
        &m.dir.join("1/v/files"),
        &["reparse", "opaque"],
    );
    let log = m.log_text();
    assert!(
        log.contains("MFT record 0") && log.contains("read from $MFTMirr instead"),
        "{log}"
    );
}
