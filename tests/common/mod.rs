//! Helpers shared by the integration tests: run the real binary, make images, hash.
#![allow(dead_code)]

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use rand::Rng;
use sha2::{Digest, Sha256};

/// Path of the built `disksafe` binary.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_disksafe"))
}

/// Runs `disksafe ARGS` and returns its output.
pub fn ds(args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run disksafe")
}

/// Runs `disksafe ARGS`, asserting success; returns stdout.
pub fn ok(args: &[&str]) -> String {
    let o = ds(args);
    assert!(
        o.status.success(),
        "disksafe {args:?} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

/// Runs `disksafe ARGS`, asserting failure; returns stderr.
pub fn fails(args: &[&str]) -> String {
    let o = ds(args);
    assert!(
        !o.status.success(),
        "disksafe {args:?} should have failed; stdout: {}",
        String::from_utf8_lossy(&o.stdout)
    );
    String::from_utf8(o.stderr).unwrap()
}

/// The point id a backup printed on its last stdout line.
pub fn backup(args: &[&str]) -> i64 {
    let mut a = vec!["backup"];
    a.extend_from_slice(args);
    let out = ok(&a);
    out.lines()
        .last()
        .unwrap()
        .trim()
        .parse()
        .expect("point id")
}

/// sha256 of a whole file, hex.
pub fn sha256_file(p: &Path) -> String {
    let mut f = File::open(p).unwrap();
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    hex(&h.finalize())
}

/// sha256 of a byte slice, hex.
pub fn sha256(b: &[u8]) -> String {
    hex(&Sha256::digest(b))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A file of `size` bytes: half random, half compressible text, some zero stretches.
pub fn make_image(p: &Path, size: u64, rng: &mut impl Rng) {
    let f = File::create(p).unwrap();
    f.set_len(size).unwrap();
    let mut off = 0u64;
    while off < size {
        let n = rng.gen_range(4096..512 * 1024).min(size - off);
        let mut buf = vec![0u8; n as usize];
        match rng.gen_range(0..3) {
            0 => rng.fill_bytes(&mut buf),
            1 => {
                for (i, b) in buf.iter_mut().enumerate() {
                    *b = b"the quick brown fox jumps over the lazy dog\n"[(i + off as usize) % 44];
                }
            }
            _ => {} // hole
        }
        f.write_all_at(&buf, off).unwrap();
        off += n;
    }
}

/// Overwrites `count` random ranges of random sizes; returns them as (offset, len).
pub fn mutate(p: &Path, count: usize, max_len: u64, rng: &mut impl Rng) -> Vec<(u64, u64)> {
    let f = OpenOptions::new().write(true).open(p).unwrap();
    let size = f.metadata().unwrap().len();
    let mut out = Vec::new();
    for _ in 0..count {
        let len = rng.gen_range(1..=max_len).min(size);
        let off = rng.gen_range(0..=size - len);
        let mut buf = vec![0u8; len as usize];
        if rng.gen_bool(0.2) {
            // leave zeros: a block may turn to all-zero
        } else {
            rng.fill_bytes(&mut buf);
        }
        f.write_all_at(&buf, off).unwrap();
        out.push((off, len));
    }
    out
}

/// Total bytes of the pack files in a safe.
pub fn pack_bytes(safe: &Path) -> u64 {
    std::fs::read_dir(safe.join("packs"))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum()
}

/// `bytes_added` of a point, from `points --json`.
pub fn bytes_added(safe: &Path, point: i64) -> u64 {
    let v: serde_json::Value =
        serde_json::from_str(&ok(&["points", safe.to_str().unwrap(), "--json"])).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == point)
        .expect("point listed")["bytes_added"]
        .as_u64()
        .unwrap()
}

/// Restores DEVICE at POINT and returns the sha256 of the output.
pub fn restored_sha(safe: &Path, point: &str, device: &str, dir: &Path) -> String {
    let out = dir.join(format!("restore-{point}-{device}"));
    ok(&[
        "restore",
        safe.to_str().unwrap(),
        point,
        device,
        out.to_str().unwrap(),
    ]);
    let s = sha256_file(&out);
    std::fs::remove_file(&out).unwrap();
    s
}

/// True when running as root (mounts, loop devices and tmpfs need it).
pub fn is_root() -> bool {
    unsafe { libc::geteuid() == 0 }
}
