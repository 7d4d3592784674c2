//! Btrfs file trees through the mount against the kernel's own read-only mount of the
//! same image (`subvolid=5`, the top level disksafe shows): names, types, modes,
//! owners, sizes, block counts, times with nanoseconds, device numbers, link targets,
//! bytes, holes, xattrs and ACLs, inode flags. The images are filled by the kernel:
//! subvolumes and a snapshot that has since diverged, extents compressed with zlib,
//! LZO and zstd (inline and regular), preallocated and punched files, a directory of
//! 3000 entries (a tree several levels deep on small nodes), each checksum type.

mod common;

use std::fs::File;
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
