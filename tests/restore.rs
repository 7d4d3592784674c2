//! `restore --only-differing`: an existing image file or block device brought back to
//! a point by writing only the blocks whose bytes differ. Oracles: the source image
//! (the result, byte for byte), a block-by-block comparison of the output as it was
//! before against the source (exactly those blocks are reported written), the
//! filesystem's own holes (SEEK_HOLE) where a differing block turns to zeros, and, on a
//! loop device, the kernel's count of sectors written to it (`/sys/block/loopN/stat`).

mod common;

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::Path;

use common::*;
use rand::{rngs::StdRng, Rng, SeedableRng};

const BS: u64 = 4096;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Bytes of `want` that sit in `BS` blocks differing from `got` there (`got` reads as
/// zeros past its end): what `--only-differing` must write.
fn differing_bytes(want: &[u8], got: &[u8]) -> u64 {
    want.chunks(BS as usize)
        .enumerate()
        .filter(|(i, w)| {
            let at = i * BS as usize;
            let g: Vec<u8> = (at..at + w.len())
                .map(|k| got.get(k).copied().unwrap_or(0))
                .collect();
            w[..] != g[..]
        })
        .map(|(_, w)| w.len() as u64)
        .sum()
}

/// Runs `restore --only-differing` of point 1 with `extra` arguments; the bytes it
/// reports written.
fn restore_differing_with(safe: &Path, dev: &str, out: &str, extra: &[&str]) -> u64 {
    let mut args = vec!["restore", s(safe), "1", dev, out, "--only-differing"];
    args.extend_from_slice(extra);
    let o = ds(&args);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    err.split(" (")
        .nth(1)
        .and_then(|t| t.split(" bytes)").next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no byte count in {err:?}"))
}

/// [`restore_differing_with`] without extra arguments.
fn restore_differing(safe: &Path, dev: &str, out: &str) -> u64 {
    restore_differing_with(safe, dev, out, &[])
}

#[test]
fn only_differing_writes_just_the_blocks_that_differ() {
    let t = tempfile::tempdir().unwrap();
    let mut rng = StdRng::seed_from_u64(111);
    // An odd size: the last block is partial.
    let size = (24 << 20) + 1000;
    let src = t.path().join("a.img");
    make_image(&src, size, &mut rng);
    // A second device, a whole number of sectors, for a loop device.
    let src_b = t.path().join("b.img");
    make_image(&src_b, 16 << 20, &mut rng);
    let safe = t.path().join("safe");
    backup(&[
        s(&safe),
        &format!("a={}", s(&src)),
        &format!("b={}", s(&src_b)),
        "--block-size",
        "4K",
    ]);
    let want = std::fs::read(&src).unwrap();

    // The disk as it went on after the point: scattered writes, a stretch zeroed, and
    // grown by 1 MiB.
    let out = t.path().join("out.img");
    std::fs::copy(&src, &out).unwrap();
    mutate(&out, 40, 64 << 10, &mut rng);
    let zeroed = (want
        .chunks(BS as usize)
        .position(|b| b.iter().any(|&x| x != 0))
        .unwrap() as u64
        + 8)
        * BS;
    let f = OpenOptions::new().write(true).open(&out).unwrap();
    f.write_all_at(&vec![0u8; 3 * BS as usize], zeroed).unwrap();
    // A block the point holds as zeros, now written: restored as a hole.
    let hole = want
        .chunks(BS as usize)
        .position(|b| b.iter().all(|&x| x == 0))
        .unwrap() as u64
        * BS;
    let mut junk = vec![0u8; BS as usize];
    rng.fill(&mut junk[..]);
    f.write_all_at(&junk, hole).unwrap();
    f.set_len(size + (1 << 20)).unwrap();
    drop(f);
    let expect = differing_bytes(&want, &std::fs::read(&out).unwrap());
    assert!(expect > 1 << 20, "the copy differs in {expect} bytes");

    let written = restore_differing(&safe, "a", s(&out));
    assert_eq!(written, expect, "exactly the differing blocks written");
    assert_eq!(
        sha256_file(&out),
        sha256_file(&src),
        "the point, byte for byte"
    );
    let f = std::fs::File::open(&out).unwrap();
    assert_eq!(
        lseek(&f, hole, false),
        Some(hole),
        "the zeroed block is a hole"
    );
    // Nothing differs any more.
    assert_eq!(restore_differing(&safe, "a", s(&out)), 0);

    // A shorter file is extended, past its end compared as zeros.
    let short = t.path().join("short.img");
    std::fs::write(&short, &want[..(8 << 20)]).unwrap();
    let expect = differing_bytes(&want, &want[..(8 << 20)]);
    assert_eq!(restore_differing(&safe, "a", s(&short)), expect);
    assert_eq!(sha256_file(&short), sha256_file(&src));

    // A block device: the kernel counts what reaches it.
    if !is_root() {
        eprintln!("SKIP the loop-device half: needs root");
        return;
    }
    let disk = t.path().join("disk.img");
    std::fs::copy(&src_b, &disk).unwrap();
    mutate(&disk, 25, 32 << 10, &mut rng);
    let want = std::fs::read(&src_b).unwrap();
    let expect = differing_bytes(&want, &std::fs::read(&disk).unwrap());
    let mut loops = Loops::default();
    let Some(dev) = loops.attach(&disk, 0, 16 << 20) else {
        eprintln!("SKIP the loop-device half: no loop devices");
        return;
    };
    let stat = format!("/sys/block/{}/stat", dev.trim_start_matches("/dev/"));
    let sectors_written = || -> u64 {
        let text = std::fs::read_to_string(&stat).unwrap();
        text.split_whitespace().nth(6).unwrap().parse().unwrap()
    };
    let before = sectors_written();
    assert_eq!(restore_differing(&safe, "b", &dev), expect);
    let kernel = (sectors_written() - before) * 512;
    assert_eq!(
        kernel, expect,
        "the kernel's count of bytes written to {dev}"
    );
    drop(loops);
    assert_eq!(
        sha256_file(&disk),
        sha256_file(&src_b),
        "the device, byte for byte"
    );
}

#[test]
fn only_differing_needs_an_existing_output() {
    let t = tempfile::tempdir().unwrap();
    let mut rng = StdRng::seed_from_u64(112);
    let src = t.path().join("a.img");
    make_image(&src, 1 << 20, &mut rng);
    let safe = t.path().join("safe");
    backup(&[s(&safe), &format!("a={}", s(&src))]);
    let err = fails(&["restore", s(&safe), "1", "a", "-", "--only-differing"]);
    assert!(err.contains("not standard output"), "{err}");
    let none = t.path().join("none.img");
    let err = fails(&["restore", s(&safe), "1", "a", s(&none), "--only-differing"]);
    assert!(err.contains("does not exist"), "{err}");
    assert!(!none.exists(), "nothing created");
}

/// `--partition K` writes one partition's bytes, as `sfdisk` places it: a primary
/// starting off the safe's 64 KiB block grid (sector 2049), an aligned one, and a
/// logical one in an extended partition; with `--only-differing` onto a changed copy
/// of the partition, only the differing pieces (the safe's blocks cut at the
/// partition's edges) are written. Asking for a partition that is not there, or on a
/// device without a table, fails naming what there is.
#[test]
fn one_partition_restores_as_sfdisk_places_it() {
    if !have_tool(
        "sfdisk",
        "fdisk",
        "one_partition_restores_as_sfdisk_places_it",
    ) {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let mut rng = StdRng::seed_from_u64(113);
    let disk = t.path().join("disk.img");
    make_image(&disk, 24 << 20, &mut rng);
    sfdisk_script(
        &disk,
        "label: dos\nstart=2049, size=4000, type=83\nstart=8192, size=16384, type=83\nstart=26624, type=5\nstart=28672, size=4096, type=83\n",
    );
    let parts = sfdisk_parts(&disk);
    let plain = t.path().join("plain.img");
    make_image(&plain, 1 << 20, &mut rng);
    let safe = t.path().join("safe");
    backup(&[
        s(&safe),
        &format!("d={}", s(&disk)),
        &format!("p={}", s(&plain)),
    ]);
    let want_all = std::fs::read(&disk).unwrap();
    for k in [1u32, 2, 5] {
        let &(_, start, len) = parts.iter().find(|p| p.0 == k).unwrap();
        let out = t.path().join(format!("part{k}.img"));
        ok(&[
            "restore",
            s(&safe),
            "1",
            "d",
            s(&out),
            "--partition",
            &k.to_string(),
        ]);
        assert_eq!(
            sha256_file(&out),
            sha256_slice(&disk, start, len),
            "partition {k}, as sfdisk places it"
        );
    }

    // Partition 1 changed, then brought back writing only what differs.
    let &(_, start, len) = parts.iter().find(|p| p.0 == 1).unwrap();
    let out = t.path().join("part1.img");
    mutate(&out, 12, 8 << 10, &mut rng);
    let got = std::fs::read(&out).unwrap();
    let want = &want_all[start as usize..(start + len) as usize];
    let grid = 64u64 << 10;
    let mut expect = 0;
    let mut at = start;
    while at < start + len {
        let next = ((at / grid + 1) * grid).min(start + len);
        let (a, b) = ((at - start) as usize, (next - start) as usize);
        if want[a..b] != got[a..b] {
            expect += (b - a) as u64;
        }
        at = next;
    }
    let written = restore_differing_with(&safe, "d", s(&out), &["--partition", "1"]);
    assert_eq!(written, expect, "the differing pieces written");
    assert_eq!(sha256_file(&out), sha256_slice(&disk, start, len));

    let err = fails(&["restore", s(&safe), "1", "d", "-", "--partition", "9"]);
    assert!(err.contains("no partition 9 (it has 1, 2"), "{err}");
    let err = fails(&["restore", s(&safe), "1", "p", "-", "--partition", "1"]);
    assert!(err.contains("has no partition table"), "{err}");
}

/// A restore whose output fills up fails at once with the system's reason, removes
/// the partial file it created, and never hangs (it did: the decoding thread waited
/// for ever to hand over its next run). The output is a 4 MiB tmpfs; `timeout` is the
/// oracle for the hang.
#[test]
fn a_full_output_fails_cleanly() {
    if !is_root() {
        eprintln!("SKIP a_full_output_fails_cleanly: needs root for a small tmpfs");
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let mut rng = StdRng::seed_from_u64(114);
    let src = t.path().join("a.img");
    let mut data = vec![0u8; 16 << 20];
    rng.fill(&mut data[..]);
    std::fs::write(&src, &data).unwrap();
    // 4 KiB blocks: many runs of decoded blocks, more than the hand-over holds.
    let safe = t.path().join("safe");
    backup(&[s(&safe), &format!("a={}", s(&src)), "--block-size", "4K"]);
    let small = t.path().join("small");
    std::fs::create_dir(&small).unwrap();
    assert!(run(
        "mount",
        &["-t", "tmpfs", "-o", "size=4M", "tmpfs", s(&small)]
    ));
    let out = small.join("out.img");
    let o = std::process::Command::new("timeout")
        .arg("60")
        .arg(bin())
        .args(["restore", s(&safe), "1", "a", s(&out)])
        .output()
        .unwrap();
    let listed: Vec<_> = std::fs::read_dir(&small).unwrap().collect();
    assert!(run("umount", &["-l", s(&small)]));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "fails, no hang (124): {err}");
    assert!(err.contains("No space left on device"), "{err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(listed.is_empty(), "the partial output is removed");
}
