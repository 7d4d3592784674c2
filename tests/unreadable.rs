//! Backing up a failing source: `backup --skip-unreadable` keeps every sector that
//! reads and records the rest as unreadable; restore writes zeros there and names the
//! ranges; the mount answers EIO there; the next point reads those ranges again.
//! The failing source is a file served by a FUSE server in this test (direct I/O, so
//! every read reaches it as asked), answering EIO for reads touching chosen sectors.

mod common;

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};

use common::failing::*;
use common::*;
use fuser::Errno;
use rand::{rngs::StdRng, Rng, SeedableRng};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A new safe under `dir` whose point 1 holds `data` twice: as device `lost`, read
/// from a disk failing in `lost`, and as device `name`, a file of `data` as `damage`
/// leaves it.
fn backup_lost_and_damaged(
    dir: &Path,
    data: Vec<u8>,
    lost: (u64, u64),
    name: &str,
    damage: impl FnOnce(&mut Vec<u8>),
) -> std::path::PathBuf {
    let mut damaged = data.clone();
    damage(&mut damaged);
    let img = dir.join(format!("{name}.img"));
    std::fs::write(&img, &damaged).unwrap();
    let safe = dir.join("safe");
    let plain = format!("{name}={}", s(&img));
    backup_failing(&safe, dir, vec![("lost", data, vec![lost])], &[plain]);
    safe
}

/// The source as a healthy disk would give it, with the unreadable ranges zeroed.
fn zeroed(data: &[u8], bad: &[(u64, u64)]) -> Vec<u8> {
    let mut v = data.to_vec();
    for &(o, l) in bad {
        v[o as usize..(o + l) as usize].fill(0);
    }
    v
}

fn unreadable_bytes(safe: &Path, point: i64) -> u64 {
    let v: serde_json::Value = serde_json::from_str(&ok(&["points", s(safe), "--json"])).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == point)
        .expect("point listed")["devices"][0]["unreadable_bytes"]
        .as_u64()
        .unwrap()
}

#[test]
fn unreadable_sectors_are_recorded_refused_and_read_again() {
    if !fuse_available() {
        eprintln!("SKIP unreadable_sectors_are_recorded_refused_and_read_again: FUSE is not available here (/dev/fuse, root or fusermount3)");
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let safe = t.path().join("safe");
    let src = t.path().join("src");
    std::fs::create_dir(&src).unwrap();
    let mut rng = StdRng::seed_from_u64(51);
    let mut data = vec![0u8; 6 << 20];
    for (i, chunk) in data.chunks_mut(65_536).enumerate() {
        if i % 3 != 2 {
            rng.fill(chunk);
        }
    }
    // One sector, two pages inside a block, and a run across a block boundary.
    let bad_ranges = vec![
        (1954 * 512, 512),
        ((3 << 20) + 3 * 4096, 8192),
        ((5 << 20) - 35 * 512, 140 * 512),
    ];
    let bad: Bad = Arc::new(Mutex::new(bad_ranges.clone()));
    let errno = Arc::new(Mutex::new(Errno::EIO));
    let mut config = fuser::Config::default();
    config.mount_options = vec![fuser::MountOption::RO];
    let server = fuser::Session::new(
        Failing {
            data: data.clone(),
            bad: bad.clone(),
            errno: errno.clone(),
            flaky: Default::default(),
            log: Default::default(),
        },
        &src,
        &config,
    )
    .unwrap()
    .spawn()
    .unwrap();
    let disk = src.join("disk");
    let source = format!("d={}", s(&disk));

    // Without the flag the backup fails whole, naming the way out.
    let err = fails(&["backup", s(&safe), &source]);
    assert!(
        err.contains("Input/output error") && err.contains("--skip-unreadable"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "one-line error: {err}");
    assert!(
        ok(&["points", s(&safe), "--json"]).trim() == "[]",
        "no point was recorded"
    );

    // A device that is gone (ENXIO) is not a bad sector: even with the flag the
    // backup fails rather than record it all as unreadable.
    *errno.lock().unwrap() = Errno::ENXIO;
    let err = fails(&["backup", s(&safe), &source, "--skip-unreadable"]);
    assert!(err.contains("No such device or address"), "{err}");
    assert!(ok(&["points", s(&safe), "--json"]).trim() == "[]");
    *errno.lock().unwrap() = Errno::EIO;

    // With it: every readable byte kept, the rest recorded.
    let o = ds(&["backup", s(&safe), &source, "--skip-unreadable"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let p1: i64 = String::from_utf8_lossy(&o.stdout).trim().parse().unwrap();
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("could not be read"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let total: u64 = bad_ranges.iter().map(|r| r.1).sum();
    assert_eq!(unreadable_bytes(&safe, p1), total);
    let out = t.path().join("restored");
    let r = ds(&["restore", s(&safe), &p1.to_string(), "d", s(&out)]);
    assert!(r.status.success());
    let said = String::from_utf8_lossy(&r.stderr);
    for (off, len) in &bad_ranges {
        assert!(
            said.contains(&format!("bytes {off}..{}", off + len)),
            "{said}"
        );
    }
    assert_eq!(
        sha256_file(&out),
        sha256(&zeroed(&data, &bad_ranges)),
        "restore = the source with the unreadable sectors zeroed"
    );
    assert!(ok(&["verify", s(&safe)]).starts_with("ok:"));

    // The mount refuses exactly the reads that touch unreadable bytes.
    {
        let m = Mounted::new(&safe, t.path(), &[]);
        let img = std::fs::File::open(m.dir.join(format!("{p1}/d/disk.img"))).unwrap();
        let chunk = 65_536u64;
        let mut buf = vec![0u8; chunk as usize];
        let (mut good, mut refused) = (0, 0);
        for i in 0..(data.len() as u64 / chunk) {
            let (a, b) = (i * chunk, (i + 1) * chunk);
            let touches = bad_ranges.iter().any(|&(o, l)| o < b && a < o + l);
            match img.read_exact_at(&mut buf, a) {
                Ok(()) => {
                    assert!(
                        !touches,
                        "bytes {a}..{b} touch an unreadable range but read"
                    );
                    assert_eq!(&buf[..], &data[a as usize..b as usize], "bytes {a}..{b}");
                    good += 1;
                }
                Err(e) => {
                    assert!(touches, "bytes {a}..{b}: {e}");
                    assert_eq!(e.raw_os_error(), Some(libc::EIO));
                    refused += 1;
                }
            }
        }
        assert!(good > 80 && refused >= 3, "{good} good, {refused} refused");
        assert!(
            m.log_text()
                .contains("could not be read from the source when this point was taken"),
            "{}",
            m.log_text()
        );
    }

    // The next point, told nothing changed, reads the unreadable ranges again: still
    // failing, it records them too; once they read, it holds the real bytes.
    let empty = t.path().join("nothing-changed");
    std::fs::write(&empty, "").unwrap();
    let cb = format!("d={}", s(&empty));
    let p2 = backup(&[
        s(&safe),
        &source,
        "--changed-blocks",
        &cb,
        "--skip-unreadable",
    ]);
    assert_eq!(unreadable_bytes(&safe, p2), total);
    bad.lock().unwrap().clear();
    let p3 = backup(&[s(&safe), &source, "--changed-blocks", &cb]);
    assert_eq!(unreadable_bytes(&safe, p3), 0);
    assert_eq!(
        restored_sha(&safe, &p3.to_string(), "d", t.path()),
        sha256(&data),
        "the healed source's point holds every byte"
    );
    assert_eq!(
        restored_sha(&safe, &p1.to_string(), "d", t.path()),
        sha256(&zeroed(&data, &bad_ranges))
    );
    // Forgetting a point drops its record; the others keep theirs.
    ok(&["forget", s(&safe), &p2.to_string()]);
    assert_eq!(unreadable_bytes(&safe, p1), total);
    assert_eq!(unreadable_bytes(&safe, p3), 0);
    assert!(ok(&["verify", s(&safe)]).starts_with("ok:"));
    drop(server);
}

/// A safe of format version 1 (no `unreadable` table) is read as it is, and the first
/// backup or forget brings it to the current version, which older readers refuse.
#[test]
fn a_version_1_safe_is_read_and_upgraded_by_its_next_writer() {
    let t = tempfile::tempdir().unwrap();
    let safe = t.path().join("safe");
    let a = t.path().join("a.img");
    let mut rng = StdRng::seed_from_u64(52);
    make_image(&a, 1 << 20, &mut rng);
    let p1 = backup(&[s(&safe), &format!("a={}", s(&a))]);
    let want1 = sha256_file(&a);
    {
        let c = rusqlite::Connection::open(safe.join("safe.db")).unwrap();
        c.execute_batch(
            "DROP TABLE unreadable; DROP TABLE reclaim; UPDATE meta SET value = '1' WHERE key = 'format_version';",
        )
        .unwrap();
    }
    assert_eq!(unreadable_bytes(&safe, p1), 0);
    assert_eq!(restored_sha(&safe, &p1.to_string(), "a", t.path()), want1);
    assert!(ok(&["verify", s(&safe)]).starts_with("ok:"));
    mutate(&a, 3, 50_000, &mut rng);
    let p2 = backup(&[s(&safe), &format!("a={}", s(&a))]);
    let c = rusqlite::Connection::open(safe.join("safe.db")).unwrap();
    let v: String = c
        .query_row(
            "SELECT value FROM meta WHERE key = 'format_version'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(v, "2");
    assert_eq!(restored_sha(&safe, &p1.to_string(), "a", t.path()), want1);
    assert_eq!(
        restored_sha(&safe, &p2.to_string(), "a", t.path()),
        sha256_file(&a)
    );
}

/// `restore --volume` of a LUKS volume whose ciphertext has unreadable sectors writes
/// zeros for the plaintext sectors they hold, names those ranges in volume offsets,
/// and writes every other byte as OpenSSL decrypts it (a damaged block would still
/// fail it: only unreadable source bytes are salvaged).
#[test]
fn a_volume_restore_writes_zeros_where_its_source_was_unreadable() {
    let name = "a_volume_restore_writes_zeros_where_its_source_was_unreadable";
    if !have_fuse(name)
        || !have_tool("cryptsetup", "cryptsetup-bin", name)
        || !have_openssl_python(name)
    {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let img = t.path().join("luks.img");
    let mut data = vec![0u8; 20 << 20];
    StdRng::seed_from_u64(53).fill(&mut data[..]);
    std::fs::write(&img, &data).unwrap();
    let key = t.path().join("key");
    std::fs::write(&key, b"unreadable horse").unwrap();
    run_out(
        "cryptsetup",
        &[
            "luksFormat",
            "--batch-mode",
            "--type",
            "luks2",
            "--sector-size",
            "512",
            "--key-file",
            s(&key),
            LUKS_FAST[0],
            LUKS_FAST[1],
            LUKS_FAST[2],
            LUKS_FAST[3],
            s(&img),
        ],
    );
    let uuid = run_out("cryptsetup", &["luksUUID", s(&img)]);
    let data = std::fs::read(&img).unwrap();
    let plain = t.path().join("plain");
    decrypt_with_openssl(&img, &key, &plain);
    let start = (data.len() - std::fs::metadata(&plain).unwrap().len() as usize) as u64;
    // Device offsets inside the encrypted data: one sector, two pages, a run across
    // a 64 KiB block.
    let bad = vec![
        (start + 1954 * 512, 512),
        (start + (1 << 20) + 3 * 4096, 8192),
        (start + (3 << 20) - 35 * 512, 140 * 512),
    ];
    let safe = t.path().join("safe");
    backup_failing(&safe, t.path(), vec![("d", data, bad.clone())], &[]);

    let out = t.path().join("restored");
    let vol = format!("luks/luks-{uuid}.img");
    let r = ds(&[
        "restore",
        s(&safe),
        "1",
        "d",
        s(&out),
        "--volume",
        &vol,
        "--key-file",
        s(&key),
    ]);
    let said = String::from_utf8_lossy(&r.stderr);
    assert!(r.status.success(), "{said}");
    let in_volume: Vec<(u64, u64)> = bad.iter().map(|&(o, l)| (o - start, l)).collect();
    for (o, l) in &in_volume {
        assert!(said.contains(&format!("bytes {o}..{}", o + l)), "{said}");
    }
    assert!(said.contains("(volume offsets)"), "{said}");
    let want = zeroed(&std::fs::read(&plain).unwrap(), &in_volume);
    assert_eq!(
        sha256_file(&out),
        sha256(&want),
        "the plaintext with the unreadable sectors zeroed"
    );
}

/// An md array whose members were backed up from failing disks reads around the
/// unreadable sectors as md does: RAID5 rebuilds a failing member's chunks from the
/// others and P, RAID6 stripes where two members fail from P and Q, RAID10 from the
/// other copy, whole copies (RAID1, RAID10 near=2 over two) from the other member's
/// copy, also where both fail in different places within one read. The array reads as the bytes it was striped from (the layout GRUB
/// checks in tests/md.rs), with a warning naming each failure, and `restore --volume`
/// writes it whole, with no zeros.
#[test]
fn arrays_read_around_members_unreadable_sectors() {
    let name = "arrays_read_around_members_unreadable_sectors";
    if !have_fuse(name) {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let mut rng = StdRng::seed_from_u64(54);
    let mut fs = vec![0u8; 6 << 20];
    rng.fill(&mut fs[..]);
    // Member offsets (data from 1 MiB): the first sector (where a 1.1 superblock
    // would be; the 1.2 one at 4 KiB is still found), a sector, two pages, a run over
    // a chunk's end.
    let bad = [
        (0, 512),
        ((1 << 20) + 77 * 512, 512),
        ((1 << 20) + (1 << 20) + 3 * 4096, 8192),
        ((1 << 20) + (2 << 20) - 35 * 512, 140 * 512),
    ];
    // (level, layout, devices, chunk, failing members, each failing member's ranges
    // moved by its index times this): RAID10 near=2 over two is a whole copy on each
    // member (as RAID1), read from the member's own data, around it from the other.
    let cases = [
        (5, 2, 3, 64 << 10, vec![1], 0),
        (6, 2, 4, 32 << 10, vec![1, 2], 0),
        (10, 0x102, 3, 64 << 10, vec![0], 0),
        (10, 0x102, 2, 64 << 10, vec![0, 1], 72 << 10),
    ];
    for (case, (level, layout, n, chunk, failing, shift)) in cases.into_iter().enumerate() {
        let what = format!("RAID{level} over {n}, members {failing:?} failing");
        let dir = t.path().join(format!("case{case}"));
        std::fs::create_dir(&dir).unwrap();
        let members = striped_members(&dir, level, layout, n, chunk, &fs, &mut rng);
        let names: Vec<String> = (0..n).map(|i| format!("m{i}")).collect();
        let mut failing_disks = Vec::new();
        let mut plain = Vec::new();
        for (i, m) in members.iter().enumerate() {
            if failing.contains(&i) {
                let moved: Vec<(u64, u64)> = bad
                    .iter()
                    .map(|&(o, l)| (o + i as u64 * shift, l))
                    .collect();
                failing_disks.push((names[i].as_str(), std::fs::read(m).unwrap(), moved));
            } else {
                plain.push(format!("{}={}", names[i], s(m)));
            }
        }
        let safe = dir.join("safe");
        backup_failing(&safe, &dir, failing_disks, &plain);

        let mnt = Mounted::new(&safe, t.path(), &[]);
        for i in 0..n {
            let img = std::fs::read(mnt.dir.join(format!("1/m{i}/md/a.img")))
                .unwrap_or_else(|e| panic!("{what}: reading the array from m{i}: {e}"));
            assert!(
                img[..fs.len()] == fs[..],
                "{what}: the array's bytes from m{i}"
            );
        }
        let log = mnt.log_text();
        assert!(
            log.contains(if shift > 0 {
                "read from the other copies instead"
            } else {
                "read from the other members instead"
            }) && log.contains("could not be read from the source"),
            "{what}: the log names the failures:\n{log}"
        );
        drop(mnt);
        let out = dir.join("restored");
        let r = ds(&[
            "restore",
            s(&safe),
            "1",
            "m0",
            s(&out),
            "--volume",
            "md/a.img",
        ]);
        let said = String::from_utf8_lossy(&r.stderr);
        assert!(r.status.success(), "{what}: {said}");
        assert!(!said.contains("written as zeros"), "{what}: {said}");
        assert!(
            std::fs::read(&out).unwrap()[..fs.len()] == fs[..],
            "{what}: restored"
        );
    }
}

/// Volumes whose own first sectors a failing disk would not give read through their
/// backups: an NTFS volume with its first sector unreadable (its backup boot sector
/// at the end), an ext4 with its superblock's sector unreadable (group 1's copy).
/// Each tree equals the kernel's (ext4) or ntfs-3g's (NTFS) view of the volume.
#[test]
fn unreadable_first_sectors_are_read_through_backups() {
    let name = "unreadable_first_sectors_are_read_through_backups";
    if !have_fuse(name) || !ntfs_tools() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let mut rng = StdRng::seed_from_u64(55);
    let src = t.path().join("src");
    make_tree(&src, 30, &mut rng);
    let ntfs = t.path().join("ntfs.img");
    make_ntfs(&ntfs, 32 << 20, 512, 4096, |m| {
        assert!(Command::new("cp")
            .args(["-r", &format!("{}/.", s(&src)), s(m)])
            .status()
            .unwrap()
            .success());
    });
    let ext = t.path().join("ext.img");
    File::create(&ext).unwrap().set_len(200 << 20).unwrap();
    assert!(run("mkfs.ext4", &["-q", "-F", "-d", s(&src), s(&ext)]));
    let cases = [("ntfs", &ntfs, (0u64, 512u64)), ("ext", &ext, (1024, 512))];
    let safe = t.path().join("safe");
    for (dev, img, bad) in &cases {
        let data = std::fs::read(img).unwrap();
        backup_failing(&safe, t.path(), vec![(dev, data, vec![*bad])], &[]);
    }
    let m = Mounted::new(&safe, t.path(), &[]);
    let ours = |p: i64, dev: &str| tree_digest(&m.dir.join(format!("{p}/{dev}/files")));
    let oracle = Ntfs3g::mount(&ntfs, &t.path().join("ref-ntfs"), "ro");
    same_tree(&ours(1, "ntfs"), &tree_digest(&oracle.dir), "ntfs");
    drop(oracle);
    let kernel = kernel_mount("ext4", &ext, &t.path().join("ref-ext"), "loop,ro", |k| {
        tree_digest(k)
    })
    .expect("the kernel mounts ext4");
    same_tree(&ours(2, "ext"), &kernel, "ext");
    let log = m.log_text();
    assert!(
        log.contains("NTFS boot sector unusable")
            && log.contains("ext primary superblock unusable"),
        "{log}"
    );
}

/// A GPT disk whose primary table a failing disk did not give is read through its
/// backup header and entries at the end, as `sfdisk` places the partitions: with
/// LBA 1 unreadable, and with the whole start (protective MBR, header, entries)
/// unreadable. Each partition image equals its slice of the source.
#[test]
fn gpt_whose_start_is_unreadable_is_read_from_its_backup() {
    let name = "gpt_whose_start_is_unreadable_is_read_from_its_backup";
    if !have_fuse(name) || !have_tool("sfdisk", "fdisk", name) {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let img = t.path().join("disk.img");
    let mut data = vec![0u8; 24 << 20];
    StdRng::seed_from_u64(56).fill(&mut data[4 << 20..]);
    std::fs::write(&img, &data).unwrap();
    sfdisk_script(
        &img,
        "label: gpt\nstart=2048, size=8192\nstart=12288, size=16384\n",
    );
    let parts = sfdisk_parts(&img);
    assert_eq!(parts.len(), 2);
    let data = std::fs::read(&img).unwrap();
    let safe = t.path().join("safe");
    let cases = [vec![(512u64, 512u64)], vec![(0, 34 * 512)]];
    for bad in &cases {
        backup_failing(&safe, t.path(), vec![("d", data.clone(), bad.clone())], &[]);
    }
    let m = Mounted::new(&safe, t.path(), &[]);
    for point in 1..=cases.len() {
        for &(n, start, len) in &parts {
            let got = std::fs::read(m.dir.join(format!("{point}/d/part{n}.img")))
                .unwrap_or_else(|e| panic!("point {point}, part{n}: {e}"));
            assert!(
                got[..] == data[start as usize..(start + len) as usize],
                "point {point}, part{n}: its slice of the source"
            );
        }
    }
    assert!(
        m.log_text().contains("using the backup GPT header"),
        "{}",
        m.log_text()
    );
}

/// A FAT32 volume from a failing disk: its boot sector unreadable (read through the
/// backup in sector 6) and a sector of its first FAT unreadable (those entries read
/// from the second FAT, which FAT32 keeps mirrored). The tree equals the one mtools
/// wrote, and the log names both fallbacks.
#[test]
fn fat32_with_unreadable_boot_and_fat_sectors_reads_from_their_copies() {
    let name = "fat32_with_unreadable_boot_and_fat_sectors_reads_from_their_copies";
    if !have_fuse(name)
        || !have_tool("mkfs.vfat", "dosfstools", name)
        || !have_tool("mcopy", "mtools", name)
    {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let mut rng = StdRng::seed_from_u64(57);
    let src = t.path().join("src");
    make_tree(&src, 40, &mut rng);
    // FAT keeps no symbolic links (mcopy would copy what one points to).
    std::fs::remove_file(src.join("link")).unwrap();
    let img = t.path().join("fat.img");
    File::create(&img).unwrap().set_len(64 << 20).unwrap();
    assert!(run("mkfs.vfat", &["-F", "32", "-s", "1", s(&img)]));
    let names: Vec<String> = std::fs::read_dir(&src)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    let st = Command::new("mcopy")
        .args(["-s", "-i", s(&img)])
        .args(&names)
        .arg("::/")
        .current_dir(&src)
        .status()
        .unwrap();
    assert!(st.success());
    let data = std::fs::read(&img).unwrap();
    let reserved = u16::from_le_bytes([data[14], data[15]]) as u64;
    // The boot sector, and the FAT's second sector (entries for clusters 128-255).
    let bad = [(0u64, 512u64), (reserved * 512 + 512, 512)];
    let safe = t.path().join("safe");
    backup_failing(&safe, t.path(), vec![("v", data, bad.to_vec())], &[]);
    let m = Mounted::new(&safe, t.path(), &[]);
    same_tree(
        &tree_digest(&m.dir.join("1/v/files")),
        &tree_digest(&src),
        "fat32",
    );
    let log = m.log_text();
    assert!(
        log.contains("read through its backup in sector 6")
            && log.contains("FAT: ")
            && log.contains("read from the other copies instead"),
        "{log}"
    );
}

/// exFAT volumes whose main boot sector is lost read through the backup boot region
/// (sector 12 on, checksummed): one whose first sector a failing disk did not give,
/// one whose boot sector names an impossible sector size. Both trees equal the one
/// exfat-fuse wrote, and the log names the backup.
#[test]
fn exfat_with_a_lost_boot_sector_reads_through_its_backup_region() {
    let name = "exfat_with_a_lost_boot_sector_reads_through_its_backup_region";
    if !have_fuse(name)
        || !have_tool("mkfs.exfat", "exfatprogs", name)
        || !have_tool("mount.exfat-fuse", "exfat-fuse", name)
    {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let mut rng = StdRng::seed_from_u64(58);
    let src = t.path().join("src");
    make_tree(&src, 30, &mut rng);
    std::fs::remove_file(src.join("link")).unwrap();
    let img = t.path().join("exfat.img");
    File::create(&img).unwrap().set_len(48 << 20).unwrap();
    assert!(run("mkfs.exfat", &[s(&img)]));
    {
        let mut loops = Loops::default();
        let Some(dev) = loops.attach(&img, 0, 48 << 20) else {
            eprintln!("SKIP {name}: no loop devices");
            return;
        };
        let mnt = t.path().join("exfat-fuse");
        std::fs::create_dir(&mnt).unwrap();
        assert!(run("mount.exfat-fuse", &[&dev, s(&mnt)]));
        let copied = run("cp", &["-r", &format!("{}/.", s(&src)), s(&mnt)]);
        assert!(run("umount", &[s(&mnt)]));
        assert!(copied);
    }
    let data = std::fs::read(&img).unwrap();
    // 8-byte sectors: no exFAT volume has them.
    let safe = backup_lost_and_damaged(t.path(), data, (0, 512), "garbled", |v| v[108] = 3);
    let m = Mounted::new(&safe, t.path(), &[]);
    let want = tree_digest(&src);
    for dev in ["lost", "garbled"] {
        same_tree(
            &tree_digest(&m.dir.join(format!("1/{dev}/files"))),
            &want,
            dev,
        );
    }
    let log = m.log_text();
    assert_eq!(
        log.matches("read through its backup boot region at sector 12")
            .count(),
        2,
        "{log}"
    );
}

/// XFS volumes whose primary superblock is lost read through allocation group 1's
/// copy, found where mkfs.xfs places group 1: one whose first sector a failing disk
/// did not give, one whose superblock names an impossible block size. Both trees
/// equal the kernel's view of the volume before the damage.
#[test]
fn xfs_with_a_lost_primary_superblock_reads_through_a_secondary() {
    let name = "xfs_with_a_lost_primary_superblock_reads_through_a_secondary";
    if !have_fuse(name) || !have_tool("mkfs.xfs", "xfsprogs", name) {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let mut rng = StdRng::seed_from_u64(59);
    let src = t.path().join("src");
    make_tree(&src, 30, &mut rng);
    let img = t.path().join("xfs.img");
    File::create(&img).unwrap().set_len(320 << 20).unwrap();
    assert!(run("mkfs.xfs", &["-q", s(&img)]));
    let kmnt = t.path().join("kernel");
    let Some(want) = kernel_mount("xfs", &img, &kmnt, "loop", |m| {
        assert!(run("cp", &["-a", &format!("{}/.", s(&src)), s(m)]));
        tree_digest(m)
    }) else {
        eprintln!("SKIP {name}: the kernel does not mount XFS here");
        return;
    };
    let data = std::fs::read(&img).unwrap();
    // 3-byte blocks.
    let safe = backup_lost_and_damaged(t.path(), data, (0, 512), "garbled", |v| {
        v[4..8].copy_from_slice(&3u32.to_be_bytes())
    });
    let m = Mounted::new(&safe, t.path(), &[]);
    for dev in ["lost", "garbled"] {
        same_tree(
            &tree_digest(&m.dir.join(format!("1/{dev}/files"))),
            &want,
            dev,
        );
    }
    let log = m.log_text();
    assert_eq!(
        log.matches("read through allocation group 1's copy")
            .count(),
        2,
        "{log}"
    );
}

/// A LUKS2 volume whose primary header a failing disk did not give, and one whose
/// primary header was wiped, open from the secondary header (as cryptsetup finds
/// it): each plaintext image equals OpenSSL's decryption of the intact volume with
/// the key cryptsetup dumps from it.
#[test]
fn luks2_with_a_lost_primary_header_opens_from_the_secondary() {
    let name = "luks2_with_a_lost_primary_header_opens_from_the_secondary";
    if !have_fuse(name)
        || !have_tool("cryptsetup", "cryptsetup-bin", name)
        || !have_openssl_python(name)
    {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let img = t.path().join("luks.img");
    let mut data = vec![0u8; 20 << 20];
    StdRng::seed_from_u64(60).fill(&mut data[..]);
    std::fs::write(&img, &data).unwrap();
    let key = t.path().join("key");
    std::fs::write(&key, b"secondary horse").unwrap();
    let mut args = vec![
        "luksFormat",
        "--batch-mode",
        "--type",
        "luks2",
        "--key-file",
        s(&key),
    ];
    args.extend(LUKS_FAST);
    args.push(s(&img));
    run_out("cryptsetup", &args);
    let uuid = run_out("cryptsetup", &["luksUUID", s(&img)]);
    let plain = t.path().join("plain");
    decrypt_with_openssl(&img, &key, &plain);
    let data = std::fs::read(&img).unwrap();
    let safe = backup_lost_and_damaged(t.path(), data, (0, 4096), "wiped", |v| v[..4096].fill(0));
    let m = Mounted::new(&safe, t.path(), &["--key-file", s(&key)]);
    for dev in ["lost", "wiped"] {
        assert_eq!(
            sha256_file(&m.dir.join(format!("1/{dev}/luks/luks-{uuid}.img"))),
            sha256_file(&plain),
            "{dev}: the plaintext"
        );
    }
    assert!(
        m.log_text().contains("using the secondary header"),
        "{}",
        m.log_text()
    );
}

/// `--retries N` reads a sector that keeps failing N more times before recording it:
/// weak sectors that give on a later try are kept whole, one that fails more often
/// than that is recorded as before. Without `--skip-unreadable` the flag is refused.
#[test]
fn retries_keep_sectors_that_read_on_a_later_try() {
    let name = "retries_keep_sectors_that_read_on_a_later_try";
    if !have_fuse(name) {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let mut data = vec![0u8; 4 << 20];
    StdRng::seed_from_u64(61).fill(&mut data[..]);
    // Two weak sectors failing their first 6 reads, one failing its first 40.
    let weak = [(1000 * 512, 512, 6), ((2 << 20) + 4096, 512, 6)];
    let worse = ((3 << 20) + 512, 512, 40);
    let safe = t.path().join("safe");
    let e = fails(&["backup", s(&safe), "--retries", "3", "x=/dev/null"]);
    assert!(e.contains("--skip-unreadable"), "{e}");
    for (case, retries) in [(1, "0"), (2, "10")] {
        let dir = t.path().join(format!("flaky{case}"));
        std::fs::create_dir(&dir).unwrap();
        let mut all = weak.to_vec();
        all.push(worse);
        let server = serve_flaky(&dir, data.clone(), &[], &all);
        let o = ds(&[
            "backup",
            s(&safe),
            &format!("d={}", s(&dir.join("disk"))),
            "--skip-unreadable",
            "--retries",
            retries,
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        drop(server);
        let want: Vec<(u64, u64)> = if retries == "0" {
            all.iter().map(|&(o, l, _)| (o, l)).collect()
        } else {
            vec![(worse.0, worse.1)]
        };
        let total: u64 = want.iter().map(|r| r.1).sum();
        assert_eq!(unreadable_bytes(&safe, case), total, "--retries {retries}");
        assert_eq!(
            restored_sha(&safe, &case.to_string(), "d", t.path()),
            sha256(&zeroed(&data, &want)),
            "--retries {retries}: every other byte kept"
        );
    }
}

/// A bad area on a failing disk is left at once and read last, as rescue tools do: the
/// first pass reads what reads and skips further past each failure (a window that
/// doubles), the second reads what was put off, and only then is the bad area read
/// page by page and sector by sector; the point still keeps every byte that reads.
#[test]
fn a_bad_area_is_skipped_and_read_last() {
    let name = "a_bad_area_is_skipped_and_read_last";
    if !have_fuse(name) {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let mib = 1u64 << 20;
    let batch = 4 * mib; // 64 blocks of 64 KiB
    let mut data = vec![0u8; 96 << 20];
    StdRng::seed_from_u64(62).fill(&mut data[..]);
    // A worn area, 16..48 MiB (eight batches): one bad sector in every 256 KiB.
    let bad: Vec<(u64, u64)> = (16 * mib..48 * mib)
        .step_by(256 << 10)
        .map(|o| (o + 7 * 512, 512))
        .collect();
    let dir = t.path().join("src");
    std::fs::create_dir(&dir).unwrap();
    let (server, log) = serve_logged(&dir, data.clone(), &bad, &[]);
    let safe = t.path().join("safe");
    let o = ds(&[
        "backup",
        s(&safe),
        &format!("d={}", s(&dir.join("disk"))),
        "--skip-unreadable",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    drop(server);
    let log = log.lock().unwrap().clone();
    let total: u64 = bad.iter().map(|r| r.1).sum();
    assert_eq!(unreadable_bytes(&safe, 1), total);
    assert_eq!(
        restored_sha(&safe, "1", "d", t.path()),
        sha256(&zeroed(&data, &bad)),
        "every readable byte kept"
    );
    // Pieces of the area (page or sector reads that fail; the passes before read
    // whole batches, split by the kernel) are read only after every good byte is:
    // each request after the first such piece lies inside the area.
    let first_piece = log
        .iter()
        .position(|r| r.2 && r.1 <= 4096)
        .expect("pieces read");
    let inside = |r: &(u64, u32, bool)| r.0 >= 16 * mib && r.0 + r.1 as u64 <= 48 * mib;
    assert!(
        log[first_piece..].iter().all(inside),
        "reads outside the bad area after its pieces began (request {first_piece})"
    );
    // Each pass reads a batch from its start (the kernel splits it into requests):
    // the area's batches read in all three passes, less those the first pass's
    // window skipped, which are read from their start only twice.
    let starts = |k: u64| {
        log.iter()
            .filter(|r| r.0 == k * batch && r.1 > 4096)
            .count()
    };
    let area: Vec<usize> = (4..12).map(starts).collect();
    assert!(
        area.iter().all(|&n| n == 2 || n == 3) && area.iter().filter(|&&n| n == 2).count() >= 2,
        "reads from the start of each batch of the area: {area:?}"
    );
}
