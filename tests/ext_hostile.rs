//! Truncated and bit-flipped ext images: the parser must return errors, never panic,
//! hang or allocate without bound.

mod common;

use std::fs::File;
use std::path::Path;
use std::process::Command;

use disksafe::ntfs_ext::walk_everything;
use rand::{rngs::StdRng, Rng, SeedableRng};

fn image(opts: &[&str]) -> Option<Vec<u8>> {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    let mut rng = StdRng::seed_from_u64(77);
    common::make_tree(&src, 8, &mut rng);
    std::fs::create_dir(src.join("dir")).unwrap();
    for i in 0..200 {
        std::fs::write(src.join(format!("dir/f{i}")), format!("{i}")).unwrap();
    }
    let img = t.path().join("fs.img");
    File::create(&img).unwrap().set_len(8 << 20).unwrap();
    let out = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-b", "1024", "-I", "256"])
        .args(opts)
        .args(["-d", src.to_str().unwrap(), img.to_str().unwrap()])
        .output();
    let Ok(out) = out else {
        eprintln!("SKIP: mkfs.ext4 (package e2fsprogs) is not installed");
        return None;
    };
    assert!(
        out.status.success(),
        "mkfs.ext4 {opts:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(std::fs::read(Path::new(&img)).unwrap())
}

fn mutate_and_walk(base: &[u8], seed: u64, rounds: usize) {
    let mut rng = StdRng::seed_from_u64(seed);
    let clean = walk_everything(base.to_vec(), 1 << 16).expect("clean image walks");
    assert!(clean > 200, "the clean image has its files ({clean})");
    // Metadata lives in the first few hundred KiB of this small image.
    let hot = base.len().min(1 << 20);
    for round in 0..rounds {
        let mut img = base.to_vec();
        match round % 4 {
            0 => {
                let cut = rng.gen_range(0..img.len());
                img.truncate(cut);
            }
            1 => {
                for _ in 0..rng.gen_range(1..8) {
                    let i = rng.gen_range(0..hot);
                    img[i] ^= 1 << rng.gen_range(0..8);
                }
            }
            2 => {
                for _ in 0..rng.gen_range(1..64) {
                    let i = rng.gen_range(0..hot);
                    img[i] = rng.gen();
                }
            }
            _ => {
                // A run of 0xFF: huge counts, sizes and block numbers.
                let i = rng.gen_range(0..hot - 64);
                img[i..i + rng.gen_range(4..64)].fill(0xFF);
            }
        }
        let _ = walk_everything(img, 1 << 16);
    }
}

#[test]
fn damaged_ext4_images_give_errors_not_panics() {
    let Some(base) = image(&["-O", "metadata_csum,inline_data"]) else {
        return;
    };
    mutate_and_walk(&base, 1, 1500);
}

#[test]
fn damaged_ext2_images_give_errors_not_panics() {
    let Some(base) = image(&["-O", "^extents,^64bit,^has_journal"]) else {
        return;
    };
    mutate_and_walk(&base, 2, 1500);
}

/// Inputs the fuzzer found (`fuzz/brief.sh`), kept in tests/data so they stay fixed.
#[test]
fn inputs_found_by_the_fuzzer_give_errors() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    // A superblock whose block count times block size overflows: the inode-table offset
    // multiplication panicked (debug) or wrapped to a wrong offset (release).
    let data = std::fs::read(dir.join("ext-fuzz-itable-overflow.img")).unwrap();
    let e = walk_everything(data, 4096).expect_err("a damaged superblock is an error");
    assert!(e.to_string().contains("overflow"), "{e}");
}
