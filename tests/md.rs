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

#[test]
fn a_raid1_member_partition_shows_the_array_tree() {
    if !fuse_available() {
        eprintln!("SKIP a_raid1_member_partition_shows_the_array_tree: FUSE is not available here");
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
    let exam = Command::new("mdadm")
        .args(["--examine", s(&member)])
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&exam.stdout).to_string() + &String::from_utf8_lossy(&exam.stderr);
    for want in [
        "Version : 1.2",
        "Raid Level : raid1",
        "Data Offset : 2048 sectors",
        "Used Dev Size : 16384",
        "- correct",
    ] {
        assert!(
            text.contains(want),
            "mdadm --examine reads {want:?}:\n{text}"
        );
    }

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
    if !fuse_available() {
        eprintln!("SKIP {name}: FUSE is not available here");
        return;
    }
    if !have_tool("mdadm", "mdadm", name) {
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
        let exam = Command::new("mdadm")
            .args(["--examine", s(&member)])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&exam.stdout);
        for want in [
            "Raid Level : raid10",
            &format!("Layout : {shown}"),
            "- correct",
        ] {
            assert!(
                text.contains(want),
                "mdadm --examine reads {want:?}:\n{text}"
            );
        }
        sources.push(format!("l{layout:x}={}", s(&member)));
    }
    let safe = t.path().join("safe");
    let mut args = vec![s(&safe)];
    args.extend(sources.iter().map(String::as_str));
    backup(&args);
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
