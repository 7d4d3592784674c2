//! Truncated, bit-flipped and crafted NTFS images: the parser must return errors,
//! never panic, hang or allocate without bound.

mod common;

use std::path::Path;
use std::sync::Arc;

use common::*;
use disksafe::ntfs_ext::{open_tree, walk_everything, LeftOut, MemVolume, TreeOptions};
use rand::{rngs::StdRng, Rng, SeedableRng};

/// A small NTFS image holding an index with several nodes, compressed, sparse and
/// multi-stream files, hard links and links; the fixture `testfs1` where ntfs-3g
/// cannot run here.
fn base_image() -> Option<Vec<u8>> {
    let t = tempfile::tempdir().unwrap();
    if ntfs_tools() {
        let img = t.path().join("h.img");
        make_ntfs(&img, 4 << 20, 512, 512, |m| {
            std::fs::create_dir(m.join("dir")).unwrap();
            for i in 0..300 {
                std::fs::write(m.join(format!("dir/entry number {i}")), format!("{i}")).unwrap();
            }
            std::fs::create_dir(m.join("c")).unwrap();
            let c = std::ffi::CString::new(m.join("c").to_str().unwrap()).unwrap();
            let v = 0x800u32.to_be_bytes();
            let n = std::ffi::CString::new("system.ntfs_attrib_be").unwrap();
            assert_eq!(
                unsafe { libc::setxattr(c.as_ptr(), n.as_ptr(), v.as_ptr().cast(), 4, 0) },
                0
            );
            let text: Vec<u8> = (0..200_000u32)
                .flat_map(|i| (i % 251).to_le_bytes())
                .collect();
            std::fs::write(m.join("c/z"), &text).unwrap();
            std::fs::write(m.join("c/z:side"), b"stream").unwrap();
            let f = std::fs::File::create(m.join("sparse")).unwrap();
            f.set_len(1 << 20).unwrap();
            for i in 0..30 {
                std::fs::hard_link(m.join("sparse"), m.join(format!("dir/link{i}"))).unwrap();
            }
            std::os::unix::fs::symlink("dir/entry number 1", m.join("sym")).unwrap();
        });
        return Some(std::fs::read(&img).unwrap());
    }
    let fx = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures/testfs1.gz");
    if fx.exists() {
        let o = std::process::Command::new("gunzip")
            .arg("-c")
            .arg(&fx)
            .output()
            .unwrap();
        return Some(o.stdout);
    }
    eprintln!("SKIP: neither ntfs-3g (to build an image) nor the testfs1 fixture is available");
    None
}

fn mft_range(img: &[u8]) -> (usize, usize) {
    let bps = u16::from_le_bytes([img[11], img[12]]) as usize;
    let cs = bps * img[13] as usize;
    let mft = u64::from_le_bytes(img[0x30..0x38].try_into().unwrap()) as usize * cs;
    (mft.min(img.len()), (mft + (128 << 10)).min(img.len()))
}

#[test]
fn damaged_ntfs_images_give_errors_not_panics() {
    let Some(base) = base_image() else { return };
    let clean = walk_everything(base.clone(), 1 << 16).expect("clean image walks");
    assert!(clean > 300, "the clean image has its files ({clean})");
    let (lo, hi) = mft_range(&base);
    let mut rng = StdRng::seed_from_u64(11);
    for round in 0..2000 {
        let mut img = base.clone();
        match round % 5 {
            0 => img.truncate(rng.gen_range(0..img.len())),
            1 => {
                for _ in 0..rng.gen_range(1..8) {
                    let i = rng.gen_range(lo..hi);
                    img[i] ^= 1 << rng.gen_range(0..8);
                }
            }
            2 => {
                for _ in 0..rng.gen_range(1..64) {
                    let i = rng.gen_range(lo..hi);
                    img[i] = rng.gen();
                }
            }
            3 => {
                let i = rng.gen_range(lo..hi - 64);
                img[i..i + rng.gen_range(4..64)].fill(0xFF);
            }
            _ => {
                for _ in 0..rng.gen_range(1..16) {
                    let i = rng.gen_range(0..img.len());
                    img[i] ^= 1 << rng.gen_range(0..8);
                }
            }
        }
        let _ = walk_everything(img, 1 << 16);
    }
}

/// Applies (`undo` = false) or removes fixups of a multi-sector block in place.
fn fixups(b: &mut [u8], undo: bool) {
    let ofs = u16::from_le_bytes([b[4], b[5]]) as usize;
    let cnt = u16::from_le_bytes([b[6], b[7]]) as usize;
    for i in 1..cnt {
        let end = i * 512;
        if undo {
            b[ofs + 2 * i] = b[end - 2];
            b[ofs + 2 * i + 1] = b[end - 1];
            b[end - 2] = b[ofs];
            b[end - 1] = b[ofs + 1];
        } else {
            b[end - 2] = b[ofs + 2 * i];
            b[end - 1] = b[ofs + 2 * i + 1];
        }
    }
}

#[test]
fn an_index_node_pointing_at_itself_is_a_cycle_error() {
    let Some(mut img) = base_image() else { return };
    // Find a leaf INDX node and make its closing entry point back at the node itself.
    let mut patched = false;
    let mut at = 0;
    while at + 4096 <= img.len() && !patched {
        if &img[at..at + 4] == b"INDX" {
            let mut b = img[at..at + 4096].to_vec();
            fixups(&mut b, false);
            let vcn = u64::from_le_bytes(b[0x10..0x18].try_into().unwrap());
            let hdr = 0x18;
            let first = u32::from_le_bytes(b[hdr..hdr + 4].try_into().unwrap()) as usize;
            let used = u32::from_le_bytes(b[hdr + 4..hdr + 8].try_into().unwrap()) as usize;
            let alloc = u32::from_le_bytes(b[hdr + 8..hdr + 12].try_into().unwrap()) as usize;
            let mut off = hdr + first;
            let mut leaf = true;
            loop {
                let len = u16::from_le_bytes([b[off + 8], b[off + 9]]) as usize;
                let flags = u16::from_le_bytes([b[off + 12], b[off + 13]]);
                leaf &= flags & 1 == 0;
                if flags & 2 != 0 {
                    break;
                }
                off += len;
            }
            if leaf && used + 8 <= alloc {
                // The closing entry grows by 8 bytes for the child VCN.
                b[off + 8..off + 10].copy_from_slice(&0x18u16.to_le_bytes());
                b[off + 12..off + 14].copy_from_slice(&3u16.to_le_bytes());
                b[off + 0x10..off + 0x18].copy_from_slice(&vcn.to_le_bytes());
                b[hdr + 4..hdr + 8].copy_from_slice(&((used + 8) as u32).to_le_bytes());
                fixups(&mut b, true);
                img[at..at + 4096].copy_from_slice(&b);
                patched = true;
            }
        }
        at += 512;
    }
    assert!(patched, "the image has a leaf index node");
    let vol = Arc::new(MemVolume(img.clone()));
    let tree = open_tree(vol, &TreeOptions::default()).unwrap().unwrap();
    // Some directory now loops; listing it must fail, not hang.
    let mut cycles = 0;
    let mut stack = vec![tree.root()];
    let mut seen = std::collections::HashSet::new();
    while let Some(d) = stack.pop() {
        if !seen.insert(d) {
            continue;
        }
        match tree.read_dir(d) {
            Ok(es) => stack.extend(
                es.iter()
                    .filter(|e| e.kind == disksafe::ntfs_ext::NodeKind::Dir)
                    .map(|e| e.ino),
            ),
            Err(e) => {
                assert!(e.to_string().contains("cycle"), "{e}");
                cycles += 1;
            }
        }
    }
    assert_eq!(cycles, 1);
    let _ = walk_everything(img, 1 << 16);
}

/// An index node past the end of its directory's `$INDEX_ALLOCATION` (what a volume
/// read while its index grew can hold: the record still says the smaller size) costs
/// the names under that node, not the listing: the rest is listed, with a warning,
/// and counted as left out (what makes `extract` and `ls` exit non-zero).
#[test]
fn an_index_node_past_the_index_costs_only_its_names() {
    let Some(base) = base_image() else { return };
    let counted = |left_out: &LeftOut| TreeOptions {
        left_out: left_out.clone(),
        ..TreeOptions::default()
    };
    let sound = LeftOut::default();
    let tree = open_tree(Arc::new(MemVolume(base.clone())), &counted(&sound))
        .unwrap()
        .unwrap();
    // "dir" in the image ntfs-3g builds, "many_subdirs" in the testfs1 fixture.
    let dir = [&b"dir"[..], b"many_subdirs"]
        .iter()
        .find_map(|n| tree.lookup(tree.root(), n).unwrap())
        .expect("a directory of hundreds of names");
    let all: Vec<Vec<u8>> = tree
        .read_dir(dir)
        .unwrap()
        .iter()
        .map(|e| e.name.clone())
        .collect();
    assert!(all.len() >= 300, "{} names", all.len());
    assert_eq!(sound.count(), 0, "nothing left out of a sound index");
    // Shrink the directory's $INDEX_ALLOCATION (data and initialized size) by one index
    // block, so the last node lies past the index.
    let mut img = base.clone();
    let (mft, _) = mft_range(&img);
    let at = mft + dir as usize * 1024;
    let mut rec = img[at..at + 1024].to_vec();
    fixups(&mut rec, false);
    let mut off = u16::from_le_bytes([rec[0x14], rec[0x15]]) as usize;
    let mut shrunk = false;
    while off + 0x40 <= rec.len() {
        let ty = u32::from_le_bytes(rec[off..off + 4].try_into().unwrap());
        let len = u32::from_le_bytes(rec[off + 4..off + 8].try_into().unwrap()) as usize;
        if ty == 0xFFFF_FFFF || len == 0 {
            break;
        }
        if ty == 0xA0 && rec[off + 8] == 1 {
            let size = u64::from_le_bytes(rec[off + 0x30..off + 0x38].try_into().unwrap());
            assert!(size >= 2 * 4096, "the directory has several index nodes");
            for o in [0x30, 0x38] {
                rec[off + o..off + o + 8].copy_from_slice(&(size - 4096).to_le_bytes());
            }
            shrunk = true;
        }
        off += len;
    }
    assert!(shrunk, "the directory's record has an $INDEX_ALLOCATION");
    fixups(&mut rec, true);
    img[at..at + 1024].copy_from_slice(&rec);
    let torn = LeftOut::default();
    let tree = open_tree(Arc::new(MemVolume(img.clone())), &counted(&torn))
        .unwrap()
        .unwrap();
    let some: Vec<Vec<u8>> = tree
        .read_dir(dir)
        .unwrap()
        .iter()
        .map(|e| e.name.clone())
        .collect();
    assert!(
        !some.is_empty() && some.len() < all.len(),
        "{} of {} names listed",
        some.len(),
        all.len()
    );
    assert!(
        some.iter().all(|n| all.contains(n)),
        "only names the index holds"
    );
    assert_eq!(torn.count(), 1, "the node past the index counted once");
    let _ = walk_everything(img, 1 << 16);
}
