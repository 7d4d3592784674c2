//! `disksafe demo`: a self-contained tour on sample data it makes itself, so a fresh
//! machine can see the product work with one command.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;

use anyhow::Context;

use crate::backup::{self, BackupOptions, SourceSpec};
use crate::size::human;

/// Deterministic pseudo-random bytes (xorshift), so the demo needs no RNG crate.
fn fill(buf: &mut [u8], seed: &mut u64) {
    for chunk in buf.chunks_mut(8) {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        let b = seed.to_le_bytes();
        chunk.copy_from_slice(&b[..chunk.len()]);
    }
}

/// Writes a sample disk: text-like data, random data and holes.
fn make_disk(path: &Path, size: u64, seed: &mut u64) -> anyhow::Result<()> {
    let f = File::create(path)?;
    f.set_len(size)?;
    let mut off = 0;
    let mut buf = vec![0u8; 1 << 20];
    while off < size {
        match (off >> 20) % 4 {
            0 => fill(&mut buf, seed),
            1 | 2 => {
                for (i, b) in buf.iter_mut().enumerate() {
                    *b = b"disksafe keeps every block once. "[(i + off as usize) % 33];
                }
            }
            _ => {
                off += 1 << 20;
                continue;
            }
        }
        f.write_all_at(&buf, off)?;
        off += 1 << 20;
    }
    Ok(())
}

/// Runs the demo in `work` (a temporary directory when `None`).
pub fn run(work: Option<&Path>) -> anyhow::Result<()> {
    let tmp;
    let dir = match work {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            d.to_path_buf()
        }
        None => {
            tmp = tempdir()?;
            tmp.clone()
        }
    };
    let safe = dir.join("safe");
    let disk = dir.join("disk.img");
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    println!("demo: working in {}", dir.display());
    make_disk(&disk, 64 << 20, &mut seed).context("making the sample disk")?;
    let src = SourceSpec::parse(&format!("disk={}", disk.display()))?;
    let mut hashes = Vec::new();
    for round in 0..3 {
        if round > 0 {
            // Change a few scattered megabytes, as a day of use would.
            let f = OpenOptions::new().write(true).open(&disk)?;
            let mut buf = vec![0u8; 300_000];
            for k in 0..4u64 {
                fill(&mut buf, &mut seed);
                f.write_all_at(&buf, (k * 15 + round * 3) << 20)?;
            }
        }
        let id = backup::backup(&safe, std::slice::from_ref(&src), &BackupOptions::default())?;
        hashes.push((id, *blake3::hash(&std::fs::read(&disk)?).as_bytes()));
        println!("demo: recorded point {id}");
    }
    let safe_r = crate::safe_reader::Safe::open(&safe)?;
    for p in safe_r.points()? {
        println!(
            "demo: point {} at {} added {}",
            p.id,
            crate::format::utc_string(p.created),
            human(p.bytes_added)
        );
    }
    for (id, want) in &hashes {
        let got = restored_hash(&safe, &dir, *id)?;
        anyhow::ensure!(&got == want, "restored point {id} differs from the source");
        println!("demo: point {id} restores byte-exact");
    }
    // Rolling a disk back: the newest point's image brought to the first point's by
    // writing only the blocks that differ.
    if let (Some(first), Some(last)) = (hashes.first(), hashes.last()) {
        let out = dir.join("rollback.img");
        let path = out.to_str().unwrap();
        crate::restore::restore(&safe, &last.0.to_string(), "disk", path, Default::default())?;
        let opts = crate::restore::RestoreOptions {
            only_differing: true,
            ..Default::default()
        };
        let r = crate::restore::restore(&safe, &first.0.to_string(), "disk", path, opts)?;
        let got = *blake3::hash(&std::fs::read(&out)?).as_bytes();
        anyhow::ensure!(
            got == first.1,
            "the rolled-back image differs from point {}",
            first.0
        );
        std::fs::remove_file(&out)?;
        println!(
            "demo: point {}'s image rolled back to point {} by writing {} of {} (restore --only-differing)",
            last.0,
            first.0,
            human(r.written),
            human(r.bytes)
        );
    }
    let report = crate::verify::verify(&safe)?;
    anyhow::ensure!(report.intact(), "verify found damage in a fresh safe");
    println!(
        "demo: verify ok ({} blocks); 3 points of a 64 MiB disk take {} in the safe",
        report.blocks_checked,
        human(dir_size(&safe.join("packs"))?)
    );
    if let Err(e) = mount_tour(&safe, &dir, hashes.last().map(|h| h.1)) {
        println!("demo: skipped the mount part: {e:#}");
    }
    if let Err(e) = files_tour(&dir, &mut seed) {
        println!("demo: skipped the file tree part: {e:#}");
    }
    // Retention: keep the two newest points; the oldest one's own blocks are freed.
    let before = crate::safe_reader::Safe::open(&safe)?.occupied()?;
    let req = backup::ForgetRequest {
        policy: backup::Policy {
            last: 2,
            ..Default::default()
        },
        ..Default::default()
    };
    let r = backup::forget(&safe, &req)?;
    let gone: Vec<String> = r.forgotten.iter().map(|p| p.0.to_string()).collect();
    println!(
        "demo: forget --keep-last 2 removed point {}; the safe went from {} to {} on disk",
        gone.join(", "),
        human(before),
        human(crate::safe_reader::Safe::open(&safe)?.occupied()?)
    );
    for (id, want) in hashes
        .iter()
        .filter(|h| !r.forgotten.iter().any(|p| p.0 == h.0))
    {
        let got = restored_hash(&safe, &dir, *id)?;
        anyhow::ensure!(
            &got == want,
            "point {id} differs from the source after forget"
        );
    }
    let report = crate::verify::verify(&safe)?;
    anyhow::ensure!(report.intact(), "verify found damage after forget");
    println!("demo: the remaining points still restore byte-exact and verify ok");
    if work.is_none() {
        std::fs::remove_dir_all(&dir)?;
    }
    Ok(())
}

/// Mounts the safe (where FUSE is available), lists it and reads the newest disk image
/// back through the mount.
fn mount_tour(safe: &Path, dir: &Path, newest: Option<[u8; 32]>) -> anyhow::Result<()> {
    if !Path::new("/dev/fuse").exists() {
        anyhow::bail!("no /dev/fuse on this machine");
    }
    let mnt = dir.join("mnt");
    std::fs::create_dir_all(&mnt)?;
    let exe = std::env::current_exe()?;
    let st = std::process::Command::new(&exe)
        .arg("mount")
        .arg(safe)
        .arg(&mnt)
        .arg("--log")
        .arg(dir.join("mount.log"))
        .stderr(std::process::Stdio::null())
        .status()?;
    anyhow::ensure!(
        st.success(),
        "disksafe mount failed (see {})",
        dir.join("mount.log").display()
    );
    let result = (|| -> anyhow::Result<()> {
        let mut names: Vec<String> = std::fs::read_dir(&mnt)?
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .collect();
        names.sort();
        println!("demo: mounted at {}: {}", mnt.display(), names.join("  "));
        let img = mnt.join("latest/disk/disk.img");
        let got = *blake3::hash(&std::fs::read(&img)?).as_bytes();
        anyhow::ensure!(
            Some(got) == newest,
            "latest/disk/disk.img differs from the source"
        );
        println!("demo: latest/disk/disk.img reads back byte-exact through FUSE");
        Ok(())
    })();
    crate::fs::mount::umount(&mnt)?;
    result
}

/// A small ext4 volume (made by mkfs.ext4 from a generated tree, where e2fsprogs is
/// installed) backed up into a safe of its own, then listed and copied out of it
/// without FUSE (`ls`, `extract`), the copy compared with the tree.
fn files_tour(dir: &Path, seed: &mut u64) -> anyhow::Result<()> {
    let tree = dir.join("tree");
    std::fs::create_dir_all(tree.join("data"))?;
    std::fs::write(
        tree.join("notes.txt"),
        b"disksafe keeps every block once.\n",
    )?;
    let mut big = vec![0u8; 1 << 20];
    fill(&mut big, seed);
    std::fs::write(tree.join("data/big.bin"), &big)?;
    let csv: String = (0..2000).map(|i| format!("{i},{}\n", i * i)).collect();
    std::fs::write(tree.join("data/report.csv"), csv)?;
    let img = dir.join("fs.img");
    File::create(&img)?.set_len(32 << 20)?;
    let o = std::process::Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d"])
        .arg(&tree)
        .arg(&img)
        .output()
        .context("mkfs.ext4 (package e2fsprogs) is not installed")?;
    anyhow::ensure!(o.status.success(), "mkfs.ext4 failed");
    let safe = dir.join("files-safe");
    let src = SourceSpec::parse(&format!("fs={}", img.display()))?;
    backup::backup(&safe, &[src], &BackupOptions::default())?;
    let opts = || crate::extract::ExtractOptions {
        passphrases: Vec::new(),
        no_replay: false,
        show_system: false,
        progress: false,
    };
    println!("demo: disksafe find files-safe latest --name '*.csv' (no mount needed):");
    let mut found = Vec::new();
    let csv = crate::extract::FindOptions {
        name: Some("*.csv".into()),
        ..Default::default()
    };
    crate::extract::find(&safe, "latest", Path::new(""), opts(), &csv, &mut found)?;
    anyhow::ensure!(
        found == b"fs/files/data/report.csv\n",
        "find printed {:?}",
        String::from_utf8_lossy(&found)
    );
    println!("demo:   {}", String::from_utf8_lossy(&found).trim_end());
    println!("demo: disksafe ls files-safe latest fs/files/data:");
    let mut listing = Vec::new();
    crate::extract::list(
        &safe,
        "latest",
        Path::new("fs/files/data"),
        opts(),
        &mut listing,
    )?;
    for line in String::from_utf8_lossy(&listing).lines() {
        println!("demo:   {line}");
    }
    let out = dir.join("out");
    std::fs::create_dir_all(&out)?;
    let x = crate::extract::extract(&safe, "latest", Path::new("fs/files/data"), &out, opts())?;
    for name in ["big.bin", "report.csv"] {
        anyhow::ensure!(
            std::fs::read(out.join("data").join(name))?
                == std::fs::read(tree.join("data").join(name))?,
            "extracted {name} differs from the source"
        );
    }
    println!(
        "demo: disksafe extract copied fs/files/data out ({} files, {}) and it matches the source",
        x.files,
        human(x.bytes)
    );

    // A second point after a file is added and one removed (by e2fsprogs' debugfs,
    // no mount), and what `diff` says changed.
    let added = dir.join("added.txt");
    std::fs::write(&added, b"written after the first point\n")?;
    let script = dir.join("debugfs.cmds");
    std::fs::write(
        &script,
        format!("cd data\nwrite {} added.txt\nrm big.bin\n", added.display()),
    )?;
    let o = std::process::Command::new("debugfs")
        .arg("-w")
        .arg("-f")
        .arg(&script)
        .arg(&img)
        .output()
        .context("debugfs (package e2fsprogs) is not installed")?;
    anyhow::ensure!(o.status.success(), "debugfs failed");
    let src = SourceSpec::parse(&format!("fs={}", img.display()))?;
    backup::backup(&safe, &[src], &BackupOptions::default())?;
    println!(
        "demo: disksafe diff files-safe 1 2 fs/files (after debugfs added one file, removed one):"
    );
    let mut lines = Vec::new();
    let c = crate::diff::diff(
        &safe,
        "1",
        "2",
        Path::new("fs/files"),
        opts(),
        &crate::diff::DiffOptions::default(),
        &mut lines,
    )?;
    anyhow::ensure!(
        lines == b"+    fs/files/data/added.txt\n-    fs/files/data/big.bin\n",
        "diff printed {:?}",
        String::from_utf8_lossy(&lines)
    );
    for line in String::from_utf8_lossy(&lines).lines() {
        println!("demo:   {line}");
    }
    println!("demo:   ({} added, {} removed)", c.added, c.removed);
    Ok(())
}

fn dir_size(d: &Path) -> anyhow::Result<u64> {
    let mut n = 0;
    for e in std::fs::read_dir(d)? {
        n += e?.metadata()?.len();
    }
    Ok(n)
}

fn tempdir() -> anyhow::Result<std::path::PathBuf> {
    let base = std::env::temp_dir().join(format!("disksafe-demo-{}", std::process::id()));
    std::fs::create_dir_all(&base)?;
    Ok(base)
}

/// The blake3 hash of point `id`'s disk as `restore` writes it (into `dir`, removed
/// after).
fn restored_hash(safe: &Path, dir: &Path, id: i64) -> anyhow::Result<[u8; 32]> {
    let out = dir.join(format!("restored-{id}.img"));
    let path = out.to_str().unwrap();
    crate::restore::restore(safe, &id.to_string(), "disk", path, Default::default())?;
    let got = *blake3::hash(&std::fs::read(&out)?).as_bytes();
    std::fs::remove_file(&out)?;
    Ok(got)
}
