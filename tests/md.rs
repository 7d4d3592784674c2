//! md RAID1 members through the mount. A member with a version-1.2 superblock keeps
//! the array's data 1 MiB in, so the filesystem on the array is found only past it.
//! No array can be assembled here without the kernel's md driver, so the superblock is
//! written by this test and checked by `mdadm --examine` (the md tools' own reading:
//! version, level, data offset, checksum); the file tree must equal the tree mkfs was
//! given, and the partition image stays the raw member.

mod common;

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;

use common::*;
use rand::{rngs::StdRng, Rng, SeedableRng};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Asserts that `mdadm --examine` of `member` prints each of `want` (the md tools'
/// own reading of a superblock this test wrote).
fn examine(member: &Path, want: &[&str]) {
    let exam = Command::new("mdadm")
        .args(["--examine", s(member)])
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&exam.stdout).to_string() + &String::from_utf8_lossy(&exam.stderr);
    for w in want {
        assert!(
            text.contains(w),
            "{}: mdadm --examine reads {w:?}:\n{text}",
            member.display()
        );
    }
}

/// Backs up `sources` (`NAME=PATH`) into a new safe `safe` as one point.
fn backup_all(safe: &Path, sources: &[String]) {
    let mut args = vec![s(safe)];
    args.extend(sources.iter().map(String::as_str));
    backup(&args);
}

#[test]
fn a_raid1_member_partition_shows_the_array_tree() {
    if !have_fuse("a_raid1_member_partition_shows_the_array_tree") {
        return;
    }
    if !have_tool(
        "mdadm",
        "mdadm",
        "a_raid1_member_partition_shows_the_array_tree",
    ) || !have_tool(
        "sfdisk",
        "fdisk",
        "a_raid1_member_partition_shows_the_array_tree",
    ) {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let mut rng = StdRng::seed_from_u64(91);
    let src = t.path().join("src");
    let fs = t.path().join("fs.img");
    ext4_image(&src, &fs, 12, 8 << 20, &mut rng);
    // A deleted file leaves its bytes in free space, for --skip-free to leave out.
    let junk = t.path().join("junk");
    let mut data = vec![0u8; 3 << 20];
    rng.fill(&mut data[..]);
    std::fs::write(&junk, &data).unwrap();
    for cmd in [format!("write {} junk", s(&junk)), "rm junk".to_string()] {
        let o = Command::new("debugfs")
            .args(["-w", "-R", &cmd, s(&fs)])
            .output()
            .unwrap();
        assert!(o.status.success(), "debugfs {cmd}");
    }

    // The member: superblock at 4 KiB, data (the filesystem) from 1 MiB.
    let member_sectors = (10u64 << 20) / 512;
    let member = t.path().join("member.img");
    File::create(&member)
        .unwrap()
        .set_len(member_sectors * 512)
        .unwrap();
    let m = OpenOptions::new().write(true).open(&member).unwrap();
    m.write_all_at(
        &md_superblock(2048, (8 << 20) / 512, member_sectors, &mut rng),
        4096,
    )
    .unwrap();
    m.write_all_at(&std::fs::read(&fs).unwrap(), 1 << 20)
        .unwrap();
    drop(m);
    examine(
        &member,
        &[
            "Version : 1.2",
            "Raid Level : raid1",
            "Data Offset : 2048 sectors",
            "Used Dev Size : 16384",
            "- correct",
        ],
    );

    // A GPT disk whose second partition is the member.
    let disk = t.path().join("disk.img");
    File::create(&disk).unwrap().set_len(16 << 20).unwrap();
    sfdisk_script(
        &disk,
        "label: gpt\nsize=2M\nstart=8192, size=20480, type=A19D880F-05FC-4D3B-A006-743F0F84911E\n",
    );
    let d = OpenOptions::new().write(true).open(&disk).unwrap();
    d.write_all_at(&std::fs::read(&member).unwrap(), 8192 * 512)
        .unwrap();
    drop(d);
    let safe = t.path().join("safe");
    backup(&[s(&safe), &format!("sda={}", s(&disk))]);
    let mnt = Mounted::new(&safe, t.path(), &[]);
    let dev = mnt.dir.join("1/sda");
    assert_eq!(
        sha256_file(&dev.join("part2.img")),
        sha256_file(&member),
        "the partition image is the raw member"
    );
    same_tree(
        &tree_digest(&dev.join("part2")),
        &tree_digest(&src),
        "the array's tree",
    );
    assert!(
        !dev.join("part1").exists(),
        "the empty partition has no tree"
    );
    // The array is listed under md/ too, by mdadm's name without the host part.
    same_tree(
        &tree_digest(&dev.join("md/1")),
        &tree_digest(&src),
        "the array's tree under md/",
    );
    assert_eq!(
        sha256_file(&dev.join("md/1.img")),
        sha256_file(&fs),
        "the array's image is the filesystem"
    );
    drop(mnt);

    // --skip-free leaves out what the array's filesystem marks free, and nothing of
    // the member's own md area: restored, the member keeps its first MiB byte for
    // byte, the array's filesystem passes e2fsck and holds the same tree.
    let (_, part, restored) = backup_with_and_without_skip_free(&disk, "sda", t.path());
    let raw = std::fs::read(&restored).unwrap();
    let at = 8192 * 512;
    assert!(
        raw[at..at + (1 << 20)] == std::fs::read(&member).unwrap()[..1 << 20],
        "superblock and the space before the data kept"
    );
    let array = t.path().join("array.img");
    std::fs::write(&array, &raw[at + (1 << 20)..at + (9 << 20)]).unwrap();
    let fsck = Command::new("e2fsck")
        .args(["-fn", s(&array)])
        .output()
        .unwrap();
    assert!(
        fsck.status.success(),
        "{}",
        String::from_utf8_lossy(&fsck.stdout)
    );
    assert_ne!(
        sha256_file(&array),
        sha256_file(&fs),
        "free blocks were left out"
    );
    let mnt = Mounted::new(&part, t.path(), &[]);
    same_tree(
        &tree_digest(&mnt.dir.join("1/sda/part2")),
        &tree_digest(&src),
        "the array's tree of the --skip-free point",
    );
}

/// A member of a two-device RAID10 in mdadm's default `near=2` layout holds the whole
/// array in order, as a RAID1 member does: its tree is shown from past its
/// superblock. Other RAID10 layouts spread chunks and are not read. The superblocks
/// are checked by `mdadm --examine`.
#[test]
fn a_raid10_near2_member_shows_the_array_tree() {
    let name = "a_raid10_near2_member_shows_the_array_tree";
    if !have_fuse(name) || !have_tool("mdadm", "mdadm", name) {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let mut rng = StdRng::seed_from_u64(95);
    let src = t.path().join("src");
    let fs = t.path().join("fs.img");
    ext4_image(&src, &fs, 12, 8 << 20, &mut rng);
    let member_sectors = (10u64 << 20) / 512;
    let mut sources = Vec::new();
    for (layout, shown) in [(0x102u32, "near=2"), (0x201, "far=2")] {
        let member = t.path().join(format!("member-{layout:x}.img"));
        File::create(&member)
            .unwrap()
            .set_len(member_sectors * 512)
            .unwrap();
        let m = OpenOptions::new().write(true).open(&member).unwrap();
        let sb = md_superblock_of(10, layout, 2048, (8 << 20) / 512, member_sectors, &mut rng);
        m.write_all_at(&sb, 4096).unwrap();
        m.write_all_at(&std::fs::read(&fs).unwrap(), 1 << 20)
            .unwrap();
        drop(m);
        examine(
            &member,
            &[
                "Raid Level : raid10",
                &format!("Layout : {shown}"),
                "- correct",
            ],
        );
        sources.push(format!("l{layout:x}={}", s(&member)));
    }
    let safe = t.path().join("safe");
    backup_all(&safe, &sources);
    let mnt = Mounted::new(&safe, t.path(), &[]);
    same_tree(
        &tree_digest(&mnt.dir.join("1/l102/files")),
        &tree_digest(&src),
        "the near=2 array's tree",
    );
    assert!(
        !mnt.dir.join("1/l201/files").exists(),
        "a far=2 member holds no whole copy"
    );
}

/// A member of [`stale_spare_or_rebuilding_members_are_not_shown_as_the_array`]:
/// device, whether version 1.0 (else 1.2), state, filesystem, whether current, what
/// `mdadm --examine` must read.
type Case<'a> = (&'a str, bool, MdState<'a>, &'a Path, bool, Vec<&'a str>);

/// A RAID1 member's copy is the array's only while it is in the array and current:
/// a member that dropped out of a degraded array (its events behind another member's
/// of the same backup), a spare, or a member being rebuilt holds older or partial
/// contents, and neither its tree is shown nor `--skip-free` trusts its bitmaps.
/// `mdadm --examine` reads each hand-written superblock as meant (events, role,
/// recovery offset, version 1.2 at 4 KiB or 1.0 at the end); members that are current
/// show the tree their filesystem was made from.
#[test]
fn stale_spare_or_rebuilding_members_are_not_shown_as_the_array() {
    let name = "stale_spare_or_rebuilding_members_are_not_shown_as_the_array";
    if !have_fuse(name)
        || !have_tool("mdadm", "mdadm", name)
        || !have_tool("debugfs", "e2fsprogs", name)
    {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let mut rng = StdRng::seed_from_u64(96);
    let (new_src, new_fs) = (t.path().join("new"), t.path().join("new.img"));
    let (old_src, old_fs) = (t.path().join("old"), t.path().join("old.img"));
    ext4_image(&new_src, &new_fs, 12, 8 << 20, &mut rng);
    ext4_image(&old_src, &old_fs, 9, 8 << 20, &mut rng);
    with_deleted_junk(&new_fs, t.path(), &mut rng);
    with_deleted_junk(&old_fs, t.path(), &mut rng);
    let member_sectors = (10u64 << 20) / 512;
    let end_sector = (member_sectors - 16) & !7;
    const SPARE: u16 = 0xffff;
    let cases: Vec<Case> = vec![
        (
            "fresh",
            false,
            MdState {
                array: 1,
                events: 20,
                slot: 0,
                roles: &[0, 1],
                features: 0,
                recovery: 0,
                super_sector: 8,
            },
            &new_fs,
            true,
            vec![
                "Version : 1.2",
                "Events : 20",
                "Device Role : Active device 0",
            ],
        ),
        (
            "stale",
            false,
            MdState {
                array: 1,
                events: 12,
                slot: 1,
                roles: &[0, 1],
                features: 0,
                recovery: 0,
                super_sector: 8,
            },
            &old_fs,
            false,
            vec!["Events : 12", "Device Role : Active device 1"],
        ),
        (
            "spare",
            false,
            MdState {
                array: 2,
                events: 9,
                slot: 2,
                roles: &[0, 1, SPARE],
                features: 0,
                recovery: 0,
                super_sector: 8,
            },
            &new_fs,
            false,
            vec!["Device Role : spare"],
        ),
        (
            "rebuilding",
            false,
            MdState {
                array: 3,
                events: 9,
                slot: 1,
                roles: &[0, 1],
                features: 2,
                recovery: 4096,
                super_sector: 8,
            },
            &new_fs,
            false,
            vec![
                "Recovery Offset : 4096 sectors",
                "Device Role : Active device 1",
            ],
        ),
        (
            "fresh10",
            true,
            MdState {
                array: 4,
                events: 30,
                slot: 0,
                roles: &[0, 1],
                features: 0,
                recovery: 0,
                super_sector: end_sector,
            },
            &new_fs,
            true,
            vec![
                "Version : 1.0",
                "Events : 30",
                "Super Offset : 20464 sectors",
            ],
        ),
        (
            "stale10",
            true,
            MdState {
                array: 4,
                events: 7,
                slot: 1,
                roles: &[0, 1],
                features: 0,
                recovery: 0,
                super_sector: end_sector,
            },
            &old_fs,
            false,
            vec!["Version : 1.0", "Events : 7"],
        ),
    ];
    let mut sources = Vec::new();
    let mut members = Vec::new();
    for (dev, v10, st, fs, _, want) in &cases {
        let member = t.path().join(format!("{dev}.img"));
        File::create(&member)
            .unwrap()
            .set_len(member_sectors * 512)
            .unwrap();
        let m = OpenOptions::new().write(true).open(&member).unwrap();
        let (data_at, sb_at) = if *v10 { (0, end_sector) } else { (2048, 8) };
        let avail = if *v10 { end_sector } else { member_sectors };
        let mut sb = md_superblock_of(1, 0, data_at, (8 << 20) / 512, avail, &mut rng);
        md_set_state(&mut sb, st);
        m.write_all_at(&sb, sb_at * 512).unwrap();
        m.write_all_at(&std::fs::read(fs).unwrap(), data_at * 512)
            .unwrap();
        drop(m);
        examine(
            &member,
            &[&want[..], &["Raid Level : raid1", "- correct"]].concat(),
        );
        sources.push(format!("{dev}={}", s(&member)));
        members.push(member);
    }
    let safe = t.path().join("safe");
    backup_all(&safe, &sources);
    let mnt = Mounted::new(&safe, t.path(), &[]);
    for (dev, _, _, fs, current, _) in &cases {
        let files = mnt.dir.join(format!("1/{dev}/files"));
        if *current {
            let src = if *fs == new_fs.as_path() {
                &new_src
            } else {
                &old_src
            };
            same_tree(&tree_digest(&files), &tree_digest(src), dev);
        } else {
            assert!(!files.exists(), "{dev}: no tree shown");
        }
    }
    let log = mnt.log_text();
    for want in [
        "device stale: md member (superblock 1.2) stale: 12 events against the array's 20",
        "device spare: md member (superblock 1.2) a spare",
        "device rebuilding: md member (superblock 1.2) being rebuilt (2097152 of 8388608 bytes done)",
        "device stale10: md member (superblock 1.0) stale: 7 events against the array's 30",
    ] {
        assert!(log.contains(want), "the log names {want:?}:\n{log}");
    }
    drop(mnt);

    // --skip-free leaves the free space of current members out and keeps the others
    // whole, byte for byte.
    let part = t.path().join("part");
    let mut args = vec!["backup", s(&part)];
    args.extend(sources.iter().map(String::as_str));
    args.push("--skip-free");
    let o = ds(&args);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    for ((dev, v10, _, _, current, _), member) in cases.iter().zip(&members) {
        let restored = t.path().join(format!("restored-{dev}"));
        ok(&["restore", s(&part), "1", dev, s(&restored)]);
        let (a, b) = (
            std::fs::read(&restored).unwrap(),
            std::fs::read(member).unwrap(),
        );
        let differ = a.iter().zip(&b).filter(|(x, y)| x != y).count();
        if *current {
            assert!(
                differ > 2 << 20,
                "{dev}: the deleted junk left out ({differ} bytes differ)"
            );
            let at = if *v10 { 0 } else { 1 << 20 };
            let array = t.path().join(format!("array-{dev}.img"));
            std::fs::write(&array, &a[at..at + (8 << 20)]).unwrap();
            let fsck = Command::new("e2fsck")
                .args(["-fn", s(&array)])
                .output()
                .unwrap();
            assert!(
                fsck.status.success(),
                "{dev}: {}",
                String::from_utf8_lossy(&fsck.stdout)
            );
        } else {
            assert_eq!(differ, 0, "{dev}: kept whole");
            assert!(
                err.contains(&format!("note: device {dev}: the whole device: md member")),
                "{dev}: {err}"
            );
        }
    }
}

/// A 0.90 superblock (little-endian, as x86 writes it): an array of `level` over two
/// devices, `kib` KiB of data per member, `events`, this device number `this` in
/// `state` (bits: 0 faulty, 1 active, 2 in sync), the other active and in sync.
fn md090_superblock(
    level: u32,
    kib: u32,
    events: u64,
    this: u32,
    state: u32,
    uuid: u32,
) -> Vec<u8> {
    let mut b = vec![0u8; 4096];
    let mut put = |w: usize, x: u32| b[4 * w..4 * w + 4].copy_from_slice(&x.to_le_bytes());
    put(0, 0xa92b_4efc);
    put(2, 90); // minor version
    put(5, uuid);
    put(6, 1_700_000_000); // ctime
    put(7, level);
    put(8, kib);
    put(9, 2); // nr_disks
    put(10, 2); // raid_disks
    put(13, uuid);
    put(14, uuid);
    put(15, uuid);
    put(32, 1_700_000_100); // utime
    put(33, 1); // clean
    put(34, 2); // active, working
    put(35, 2);
    put(39, events as u32);
    put(40, (events >> 32) as u32);
    put(64, if level == 5 { 2 } else { 0 }); // left-symmetric
    put(65, 64 << 10); // chunk size
    for d in 0..2u32 {
        let w = 128 + 32 * d as usize;
        put(w, d);
        put(w + 1, 8); // major, minor
        put(w + 2, 16 * d + 1);
        put(w + 3, d);
        put(w + 4, if d == this { state } else { 6 });
    }
    for (k, v) in [(0, this), (1, 8), (2, 16 * this + 1), (3, this), (4, state)] {
        put(992 + k, v);
    }
    let mut sum: u64 = 0;
    for w in b.chunks_exact(4) {
        sum += u32::from_le_bytes(w.try_into().unwrap()) as u64;
    }
    let c = ((sum & 0xFFFF_FFFF) + (sum >> 32)) as u32;
    b[38 * 4..39 * 4].copy_from_slice(&c.to_le_bytes());
    b
}

/// Version 0.90 superblocks (at the end of the member; mdadm's default for /boot on
/// older installs) are read too: a RAID1 member that fell behind shows no tree, the
/// current one shows its array's, and a RAID5 member — whose first chunk holds the
/// array's ext4 superblock while its other blocks lie on other members — shows no
/// tree of its own (its array's, assembled, under `md/`), and `--skip-free` leaves
/// out only what that array's filesystem marks free. `mdadm --examine` reads each
/// superblock.
#[test]
fn version_090_members_are_judged_too() {
    let name = "version_090_members_are_judged_too";
    if !have_fuse(name)
        || !have_tool("mdadm", "mdadm", name)
        || !have_tool("debugfs", "e2fsprogs", name)
    {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let mut rng = StdRng::seed_from_u64(97);
    let (src, fs) = (t.path().join("src"), t.path().join("fs.img"));
    ext4_image(&src, &fs, 10, 8 << 20, &mut rng);
    with_deleted_junk(&fs, t.path(), &mut rng);
    let size = 10u64 << 20;
    let sb_at = ((size / 512) & !127) * 512 - 65536;
    // (device, level, events, this device's number, its state, what mdadm reads)
    let cases = [
        (
            "cur",
            1,
            40,
            0,
            6,
            vec!["Raid Level : raid1", "Events : 40"],
        ),
        (
            "behind",
            1,
            31,
            1,
            6,
            vec!["Raid Level : raid1", "Events : 31"],
        ),
        ("r5", 5, 8, 0, 6, vec!["Raid Level : raid5", "Events : 8"]),
    ];
    let mut sources = Vec::new();
    for (dev, level, events, this, state, want) in &cases {
        let member = t.path().join(format!("{dev}.img"));
        File::create(&member).unwrap().set_len(size).unwrap();
        let f = OpenOptions::new().write(true).open(&member).unwrap();
        f.write_all_at(&std::fs::read(&fs).unwrap(), 0).unwrap();
        let uuid = if *level == 1 {
            0x1234_5678
        } else {
            0x9abc_def0
        };
        let sb = md090_superblock(*level, 8 << 10, *events, *this, *state, uuid);
        f.write_all_at(&sb, sb_at).unwrap();
        drop(f);
        examine(
            &member,
            &[&want[..], &["Version : 0.90.00", "Used Dev Size : 8192"]].concat(),
        );
        sources.push(format!("{dev}={}", s(&member)));
    }
    let safe = t.path().join("safe");
    backup_all(&safe, &sources);
    let mnt = Mounted::new(&safe, t.path(), &[]);
    same_tree(
        &tree_digest(&mnt.dir.join("1/cur/files")),
        &tree_digest(&src),
        "the current member's array",
    );
    for dev in ["behind", "r5"] {
        assert!(
            !mnt.dir.join(format!("1/{dev}/files")).exists(),
            "{dev}: no tree"
        );
    }
    let log = mnt.log_text();
    let want = "device behind: md member (superblock 0.90) stale: 31 events against the array's 40";
    assert!(log.contains(want), "the log names {want:?}:\n{log}");
    // The RAID5 member's array (two devices, the other missing: read back from
    // parity, which on two devices is the data itself), named by its UUID's start.
    same_tree(
        &tree_digest(&mnt.dir.join("1/r5/md/md-f0debc9a")),
        &tree_digest(&src),
        "the degraded RAID5 of the 0.90 member",
    );
    drop(mnt);
    // --skip-free searches that degraded array too: on two devices a stripe is one
    // chunk, left out (data and parity alike) where the ext4 marks it free; the
    // superblock at the end is kept.
    let (part, r5) = (t.path().join("part"), t.path().join("r5.img"));
    let o = ds(&["backup", s(&part), &format!("r5={}", s(&r5)), "--skip-free"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        o.status.success() && err.contains("recorded as zeros, not read"),
        "{err}"
    );
    let restored = t.path().join("restored.img");
    ok(&["restore", s(&part), "1", "r5", s(&restored)]);
    let (a, b) = (
        std::fs::read(&r5).unwrap(),
        std::fs::read(&restored).unwrap(),
    );
    let sb = sb_at as usize;
    assert!(a[sb..] == b[sb..], "the superblock kept");
    let got = t.path().join("restored-fs.img");
    std::fs::write(&got, &b[..8 << 20]).unwrap();
    assert!(differs_only_where_free(&fs, &got, &fs) > 1 << 20);
    fsck_clean(&got);
}

/// Arrays whose data is spread over their members (RAID0, RAID5, RAID6, RAID10 with
/// fewer near copies than devices) are put together from the members backed up in a
/// point, and a RAID5 missing one member is read back from parity: each array's image
/// is the filesystem it was striped from, its tree the source tree, under every
/// member's `md/`. GRUB's own md driver (`grub-fstest`, which assembles arrays from
/// image files, degraded ones too) reads every file of the tree from the same
/// members: that is the check that the members are laid out as md lays them out.
#[test]
fn striped_arrays_are_assembled_from_their_members() {
    let name = "striped_arrays_are_assembled_from_their_members";
    if !have_fuse(name)
        || !have_tool("mdadm", "mdadm", name)
        || !have_tool("grub-fstest", "grub-common", name)
    {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let mut rng = StdRng::seed_from_u64(98);
    let (src, fs) = (t.path().join("src"), t.path().join("fs.img"));
    ext4_image(&src, &fs, 12, 8 << 20, &mut rng);
    with_deleted_junk(&fs, t.path(), &mut rng);
    let fs_bytes = std::fs::read(&fs).unwrap();
    let files = files_of(&src);
    // (level, layout, devices, chunk, members left out of the backup)
    let cases = [
        (0, 0, 2, 32 << 10, vec![]),
        (5, 2, 3, 64 << 10, vec![]),
        (5, 2, 4, 16 << 10, vec![1]),
        (6, 2, 4, 64 << 10, vec![]),
        (6, 2, 4, 32 << 10, vec![1, 2]),
        (6, 2, 5, 32 << 10, vec![3]),
        (5, 0, 3, 64 << 10, vec![2]),
        (10, 0x102, 3, 64 << 10, vec![]),
        (10, 0x201, 2, 64 << 10, vec![]),
    ];
    for (case, (level, layout, n, chunk, left_out)) in cases.into_iter().enumerate() {
        let what = format!(
            "RAID{level} layout {layout:#x} over {n}, {} missing",
            left_out.len()
        );
        let dir = t.path().join(format!("case{case}"));
        std::fs::create_dir(&dir).unwrap();
        let members = striped_members(&dir, level, layout, n, chunk, &fs_bytes, &mut rng);
        examine(
            &members[0],
            &[&format!("Raid Level : raid{level}"), "- correct"],
        );
        let kept: Vec<&std::path::PathBuf> = members
            .iter()
            .enumerate()
            .filter(|(i, _)| !left_out.contains(i))
            .map(|(_, m)| m)
            .collect();
        grub_reads(&kept, "md/a", &src, &files, &what);
        let safe = t.path().join(format!("safe-{case}"));
        let sources = backup_members(&safe, &kept);
        let mnt = Mounted::new(&safe, t.path(), &[]);
        let img = std::fs::read(mnt.dir.join("1/m0/md/a.img")).unwrap();
        let degraded = format!(
            "md array a: assembled degraded, {} of {n} members missing",
            left_out.len()
        );
        assert_eq!(
            mnt.log_text().contains(&degraded),
            !left_out.is_empty(),
            "{what}: the log says whether the array is degraded:\n{}",
            mnt.log_text()
        );
        assert!(img.len() >= fs_bytes.len(), "{what}: {} bytes", img.len());
        assert!(
            img[..fs_bytes.len()] == fs_bytes[..],
            "{what}: the array's bytes"
        );
        for i in 0..kept.len() {
            same_tree(
                &tree_digest(&mnt.dir.join(format!("1/m{i}/md/a"))),
                &tree_digest(&src),
                &what,
            );
            assert!(
                !mnt.dir.join(format!("1/m{i}/files")).exists(),
                "{what}: no member tree"
            );
        }
        drop(mnt);

        // --skip-free: what the array's ext4 marks free goes unread (RAID4/5/6: whole
        // stripes, parity too). Restored, GRUB still reads every file from the
        // members, also with one left out (the parity still matches the data), and
        // the array differs from the filesystem only in dumpe2fs's free blocks.
        let (part, restored) = skip_free_restored(t.path(), case, &sources);
        let restored_refs: Vec<&std::path::PathBuf> = restored.iter().collect();
        grub_reads(&restored_refs, "md/a", &src, &files, &what);
        if matches!(level, 5 | 6) && left_out.is_empty() {
            grub_reads(
                &restored_refs[1..],
                "md/a",
                &src,
                &files,
                &format!("{what}, degraded"),
            );
        }
        let mnt = Mounted::new(&part, t.path(), &[]);
        let array = t.path().join(format!("array-{case}"));
        std::fs::copy(mnt.dir.join("1/m0/md/a.img"), &array).unwrap();
        drop(mnt);
        std::fs::write(&array, &std::fs::read(&array).unwrap()[..fs_bytes.len()]).unwrap();
        let differ = differs_only_where_free(&fs, &array, &fs);
        fsck_clean(&array);
        if layout >> 8 & 0xff > 1 {
            assert_eq!(differ, 0, "{what}: far copies are kept whole");
        } else {
            assert!(
                differ > 1 << 20,
                "{what}: free space left out ({differ} bytes)"
            );
        }
    }
}

/// Backs up `sources` (`m0=PATH`, ...) with `--skip-free` into a new safe
/// `part-CASE` under `dir` and restores each device: the safe and the restored images.
fn skip_free_restored(
    dir: &Path,
    case: usize,
    sources: &[String],
) -> (std::path::PathBuf, Vec<std::path::PathBuf>) {
    let part = dir.join(format!("part-{case}"));
    let mut args = vec!["backup", s(&part)];
    args.extend(sources.iter().map(String::as_str));
    args.push("--skip-free");
    let o = ds(&args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let restored = (0..sources.len())
        .map(|i| {
            let r = dir.join(format!("restored-{case}-{i}"));
            ok(&["restore", s(&part), "1", &format!("m{i}"), s(&r)]);
            r
        })
        .collect();
    (part, restored)
}

/// The regular files of a tree, relative to its root.
fn files_of(src: &Path) -> Vec<String> {
    tree_digest(src)
        .keys()
        .filter(|k| src.join(k).is_file() && !src.join(k).is_symlink())
        .cloned()
        .collect()
}

/// md arrays made on whole disks and then partitioned (`md0p1`, `md0p2`): a RAID5
/// over three members, and a RAID1 member (superblock 1.2, so the partition table lies
/// 1 MiB into the disk and the disk itself shows none). Under each member's
/// `md/NAME/` are the array's `partK.img`, equal to the slices `sfdisk` reads from the
/// partitioned image the members were made from, and `partK/`, equal to the trees
/// mkfs was given; GRUB's md driver reads every file from the members first. With
/// `--skip-free`, what each partition's ext4 marks free goes unread: restored, GRUB
/// still reads every file, and each partition differs from its ext4 only in
/// dumpe2fs's free blocks and passes e2fsck.
#[test]
fn partitioned_arrays_show_their_partitions() {
    let name = "partitioned_arrays_show_their_partitions";
    if !have_fuse(name)
        || !have_tool("mdadm", "mdadm", name)
        || !have_tool("grub-fstest", "grub-common", name)
        || !have_tool("sfdisk", "fdisk", name)
    {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let mut rng = StdRng::seed_from_u64(101);
    let (src1, fs1) = (t.path().join("src1"), t.path().join("fs1.img"));
    ext4_image(&src1, &fs1, 12, 8 << 20, &mut rng);
    with_deleted_junk(&fs1, t.path(), &mut rng);
    let (src2, fs2) = (t.path().join("src2"), t.path().join("fs2.img"));
    ext4_image(&src2, &fs2, 6, 4 << 20, &mut rng);
    let array = t.path().join("array.img");
    File::create(&array).unwrap().set_len(16 << 20).unwrap();
    sfdisk_script(
        &array,
        "label: gpt\nstart=2048, size=16384\nstart=18432, size=8192\n",
    );
    let parts = sfdisk_parts(&array);
    assert_eq!(parts.len(), 2, "{parts:?}");
    let a = OpenOptions::new().write(true).open(&array).unwrap();
    for ((_, start, _), fs) in parts.iter().zip([&fs1, &fs2]) {
        a.write_all_at(&std::fs::read(fs).unwrap(), *start).unwrap();
    }
    drop(a);
    let array_bytes = std::fs::read(&array).unwrap();
    let trees = [(&src1, &fs1), (&src2, &fs2)];

    // A RAID1 member on a whole disk: superblock at 4 KiB, the array from 1 MiB.
    let dir1 = t.path().join("raid1");
    std::fs::create_dir(&dir1).unwrap();
    let member = dir1.join("member.img");
    let member_sectors = (18u64 << 20) / 512;
    File::create(&member)
        .unwrap()
        .set_len(member_sectors * 512)
        .unwrap();
    let m = OpenOptions::new().write(true).open(&member).unwrap();
    let len = array_bytes.len() as u64 / 512;
    m.write_all_at(&md_superblock(2048, len, member_sectors, &mut rng), 4096)
        .unwrap();
    m.write_all_at(&array_bytes, 1 << 20).unwrap();
    drop(m);
    examine(
        &member,
        &["Raid Level : raid1", "Data Offset : 2048 sectors"],
    );
    let dir5 = t.path().join("raid5");
    std::fs::create_dir(&dir5).unwrap();
    let raid5 = striped_members(&dir5, 5, 2, 3, 64 << 10, &array_bytes, &mut rng);
    // (what, members, the array's name in GRUB and under md/)
    let cases = [
        ("RAID1 member", vec![member], "md/1", "1"),
        ("RAID5 over 3", raid5, "md/a", "a"),
    ];
    for (case, (what, members, grub, md)) in cases.iter().enumerate() {
        let members: Vec<&std::path::PathBuf> = members.iter().collect();
        for (k, (src, _)) in trees.iter().enumerate() {
            let vol = format!("{grub},gpt{}", k + 1);
            grub_reads(&members, &vol, src, &files_of(src), what);
        }
        let safe = t.path().join(format!("safe-{case}"));
        let sources = backup_members(&safe, &members);
        let mnt = Mounted::new(&safe, t.path(), &[]);
        for i in 0..members.len() {
            let dev = mnt.dir.join(format!("1/m{i}"));
            let img = std::fs::read(dev.join(format!("md/{md}.img"))).unwrap();
            assert!(
                img.len() >= array_bytes.len() && img[..array_bytes.len()] == array_bytes[..],
                "{what}: m{i}: the array's bytes ({} of {})",
                img.len(),
                array_bytes.len()
            );
            for (k, &(_, start, len)) in parts.iter().enumerate() {
                let p = dev.join(format!("md/{md}/part{}", k + 1));
                assert_eq!(
                    sha256_file(&p.with_extension("img")),
                    sha256_slice(&array, start, len),
                    "{what}: m{i}: partition {}",
                    k + 1
                );
                same_tree(&tree_digest(&p), &tree_digest(trees[k].0), what);
            }
            assert!(!dev.join("files").exists(), "{what}: no tree on the disk");
        }
        drop(mnt);

        let (part, restored) = skip_free_restored(t.path(), case, &sources);
        let restored: Vec<&std::path::PathBuf> = restored.iter().collect();
        for (k, (src, _)) in trees.iter().enumerate() {
            let vol = format!("{grub},gpt{}", k + 1);
            grub_reads(&restored, &vol, src, &files_of(src), what);
        }
        let mnt = Mounted::new(&part, t.path(), &[]);
        let p1 = t.path().join(format!("p1-{case}"));
        std::fs::copy(mnt.dir.join(format!("1/m0/md/{md}/part1.img")), &p1).unwrap();
        drop(mnt);
        std::fs::write(&p1, &std::fs::read(&p1).unwrap()[..8 << 20]).unwrap();
        let differ = differs_only_where_free(&fs1, &p1, &fs1);
        fsck_clean(&p1);
        assert!(
            differ > 1 << 20,
            "{what}: free space left out ({differ} bytes)"
        );
    }
}

/// Asserts that GRUB's md driver, given `members`, reads each of `files` of GRUB's
/// volume `vol` (`md/a`, or `md/a,gpt1` for a partition in it) as it is under `src`.
fn grub_reads(
    members: &[&std::path::PathBuf],
    vol: &str,
    src: &Path,
    files: &[String],
    what: &str,
) {
    for f in files {
        let mut args = vec!["-c".to_string(), members.len().to_string()];
        args.extend(members.iter().map(|m| s(m).to_string()));
        args.extend([
            "cmp".into(),
            format!("({vol})/{f}"),
            s(&src.join(f)).to_string(),
        ]);
        let o = Command::new("grub-fstest").args(&args).output().unwrap();
        assert!(
            o.status.success(),
            "{what}: GRUB reads {f}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
}

/// Benchmark (ignored; `cargo test --release --test md bench_striped -- --ignored
/// --nocapture`): a large file read cold from the tree of an ext4 backed up as it is,
/// and from the same ext4 striped over a RAID5 of four (512 KiB chunks, md's default)
/// whole and missing one member (read back from parity), each from a fresh mount with
/// the page cache dropped, alternating. Prints MB/s per round, medians and ratios.
#[test]
#[ignore]
fn bench_striped_array_reads() {
    if !fuse_available() || !is_root() {
        eprintln!("SKIP: needs root and FUSE");
        return;
    }
    let rounds: usize = std::env::var("ROUNDS").map_or(5, |v| v.parse().unwrap());
    let t = tempfile::tempdir_in("/var/tmp").unwrap();
    let mut rng = StdRng::seed_from_u64(99);
    let src = t.path().join("src");
    std::fs::create_dir(&src).unwrap();
    // 400 MiB of real data: shared libraries and their kin.
    let fill = Command::new("bash")
        .args([
            "-c",
            &format!(
                "find /usr/lib -type f -size +100k 2>/dev/null | head -3000 | xargs cat 2>/dev/null | head -c 400M > {}",
                s(&src.join("big"))
            ),
        ])
        .status()
        .unwrap();
    assert!(fill.success());
    let fs = t.path().join("fs.img");
    File::create(&fs).unwrap().set_len(512 << 20).unwrap();
    let o = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d", s(&src), s(&fs)])
        .output()
        .unwrap();
    assert!(o.status.success());
    let fs_bytes = std::fs::read(&fs).unwrap();
    let members = striped_members(t.path(), 5, 2, 4, 512 << 10, &fs_bytes, &mut rng);
    drop(fs_bytes);
    let plain = t.path().join("plain");
    backup_all(&plain, &[format!("fs={}", s(&fs))]);
    let whole = t.path().join("whole");
    let all: Vec<String> = members
        .iter()
        .enumerate()
        .map(|(i, m)| format!("m{i}={}", s(m)))
        .collect();
    backup_all(&whole, &all);
    let degraded = t.path().join("degraded");
    backup_all(&degraded, &[all[0].clone(), all[2].clone(), all[3].clone()]);
    let cases = [
        ("plain ext4", &plain, "1/fs/files/big"),
        ("RAID5 of 4", &whole, "1/m0/md/a/big"),
        ("RAID5 of 4, one missing", &degraded, "1/m0/md/a/big"),
    ];
    let mut speeds = vec![Vec::new(); cases.len()];
    for r in 0..rounds {
        for (k, (what, safe, path)) in cases.iter().enumerate() {
            std::fs::write("/proc/sys/vm/drop_caches", "3").unwrap();
            let mnt = Mounted::new(safe, t.path(), &[]);
            let f = mnt.dir.join(path);
            let _ = std::fs::metadata(&f).unwrap();
            let start = std::time::Instant::now();
            let mut file = File::open(&f).unwrap();
            let mut buf = vec![0u8; 1 << 20];
            let mut n = 0u64;
            loop {
                let got = std::io::Read::read(&mut file, &mut buf).unwrap();
                if got == 0 {
                    break;
                }
                n += got as u64;
            }
            let mbs = n as f64 / start.elapsed().as_secs_f64() / 1e6;
            eprintln!("round {r}: {what}: {mbs:.0} MB/s");
            speeds[k].push(mbs);
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v[v.len() / 2]
    };
    let m: Vec<f64> = speeds.iter_mut().map(median).collect();
    for ((what, _, _), x) in cases.iter().zip(&m) {
        eprintln!("median {what}: {x:.0} MB/s ({:.2} of plain)", x / m[0]);
    }
}
