//! LUKS encrypted volumes through the mount, against cryptsetup: each volume is
//! encrypted by `cryptsetup reencrypt --encrypt` (offline, in cryptsetup's own
//! userspace crypto: no device-mapper needed) from a filesystem made from a tree, and
//! the mount, given the passphrase, must show that tree again — LUKS2 with PBKDF2 and
//! 512-byte sectors, LUKS2 with Argon2id and 4096-byte sectors, LUKS1 (converted by
//! `cryptsetup convert`) in aes-cbc-essiv:sha256, and an LVM PV inside LUKS on a GPT
//! partition (the "encrypted LVM" of Debian's installer). Without the passphrase, or
//! with a wrong one, nothing inside is shown and the log names the volume by the UUID
//! `cryptsetup luksUUID` prints.

mod common;

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Command, Stdio};

use common::*;
use rand::{rngs::StdRng, SeedableRng};

/// A fast KDF for test volumes.
use common::run_out as run;
use common::LUKS_FAST as FAST;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// An ext4 image of `size` MiB with `block` bytes per block, made from a new tree at
/// `src`, in a file of `file` MiB.
fn ext4(src: &Path, img: &Path, size: u64, file: u64, block: u32, rng: &mut StdRng) {
    make_tree(src, 14, rng);
    File::create(img).unwrap().set_len(file << 20).unwrap();
    let o = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-b", &block.to_string(), "-d", s(src), s(img)])
        .arg(format!("{}", size << 10))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn luks_volumes_show_their_trees_with_the_passphrase() {
    let name = "luks_volumes_show_their_trees_with_the_passphrase";
    if !have_fuse(name)
        || !have_tool("cryptsetup", "cryptsetup-bin", name)
        || !have_tool("pvcreate", "lvm2", name)
        || !have_openssl_python(name)
    {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let mut rng = StdRng::seed_from_u64(71);
    let key = t.path().join("key");
    std::fs::write(&key, b"correct horse").unwrap();

    // LUKS2, PBKDF2, aes-xts-plain64 in 512-byte sectors.
    let (src_a, a) = (t.path().join("src-a"), t.path().join("a.img"));
    ext4(&src_a, &a, 40, 48, 1024, &mut rng);
    luks_encrypt(&a, &key, 8, &[&["--type", "luks2"][..], &FAST].concat());
    // LUKS2, Argon2id, 4096-byte sectors.
    let (src_b, b) = (t.path().join("src-b"), t.path().join("b.img"));
    ext4(&src_b, &b, 32, 48, 4096, &mut rng);
    luks_encrypt(
        &b,
        &key,
        16,
        &[
            "--type",
            "luks2",
            "--sector-size",
            "4096",
            "--pbkdf",
            "argon2id",
            "--pbkdf-memory",
            "32768",
            "--pbkdf-force-iterations",
            "4",
        ],
    );
    // LUKS1, aes-cbc-essiv:sha256 (an older install's default), SHA-1 digests.
    let (src_c, c) = (t.path().join("src-c"), t.path().join("c.img"));
    ext4(&src_c, &c, 40, 48, 1024, &mut rng);
    luks_encrypt(
        &c,
        &key,
        8,
        &[
            &[
                "--type",
                "luks2",
                "--cipher",
                "aes-cbc-essiv:sha256",
                "--key-size",
                "256",
                "--hash",
                "sha1",
            ][..],
            &FAST,
        ]
        .concat(),
    );
    run(
        "cryptsetup",
        &["convert", "--batch-mode", "--type", "luks1", s(&c)],
    );
    let dump = run("cryptsetup", &["luksDump", s(&c)]);
    assert!(
        dump.contains("Version:       \t1") && dump.contains("cbc-essiv:sha256"),
        "{dump}"
    );

    // Encrypted LVM: a GPT disk whose second partition is LUKS2 holding a PV whose LV
    // holds ext4.
    let vg = format!("dsluks{}", std::process::id());
    let (src_d, lv_fs) = (t.path().join("src-d"), t.path().join("lv.img"));
    ext4(&src_d, &lv_fs, 16, 16, 1024, &mut rng);
    let plain = t.path().join("plain.img");
    File::create(&plain).unwrap().set_len(40 << 20).unwrap();
    let mut loops = Loops::default();
    let Some(pv) = loops.attach(&plain, 0, 40 << 20) else {
        eprintln!("SKIP {name}: no loop devices");
        return;
    };
    run("pvcreate", &["-q", &pv]);
    run(
        "vgcreate",
        &["--driverloaded", "n", "-q", "-s", "1m", &vg, &pv],
    );
    run(
        "lvcreate",
        &[
            "--driverloaded",
            "n",
            "-q",
            "-an",
            "-Zn",
            "-L",
            "16m",
            "-n",
            "root",
            &vg,
        ],
    );
    let ranges = run(
        "lvs",
        &[
            "--driverloaded",
            "n",
            "--noheadings",
            "-o",
            "seg_pe_ranges",
            &vg,
        ],
    );
    assert_eq!(ranges, format!("{pv}:0-15"), "the LV's extents");
    let pe_start: u64 = run(
        "pvs",
        &[
            "--driverloaded",
            "n",
            "--noheadings",
            "--units",
            "b",
            "--nosuffix",
            "-o",
            "pe_start",
            &pv,
        ],
    )
    .parse()
    .unwrap();
    drop(loops);
    let lv_bytes = std::fs::read(&lv_fs).unwrap();
    File::options()
        .write(true)
        .open(&plain)
        .unwrap()
        .write_all_at(&lv_bytes, pe_start)
        .unwrap();
    // Room for the header: 16 MiB more, given back by --reduce-device-size.
    File::options()
        .write(true)
        .open(&plain)
        .unwrap()
        .set_len(56 << 20)
        .unwrap();
    luks_encrypt(
        &plain,
        &key,
        16,
        &[&["--type", "luks2"][..], &FAST].concat(),
    );
    let disk = t.path().join("disk.img");
    File::create(&disk).unwrap().set_len(80 << 20).unwrap();
    sfdisk_script(
        &disk,
        "label: gpt\nstart=2048, size=16384\nstart=20480, size=114688, type=CA7D7CCB-63ED-4C53-861C-1742536059CC\n",
    );
    File::options()
        .write(true)
        .open(&disk)
        .unwrap()
        .write_all_at(&std::fs::read(&plain).unwrap(), 20480 * 512)
        .unwrap();

    let safe = t.path().join("safe");
    backup(&[
        s(&safe),
        &format!("a={}", s(&a)),
        &format!("b={}", s(&b)),
        &format!("c={}", s(&c)),
        &format!("disk={}", s(&disk)),
    ]);
    let uuids: Vec<String> = [&a, &b, &c, &plain]
        .iter()
        .map(|p| run("cryptsetup", &["luksUUID", s(p)]))
        .collect();

    // The key file ends in a newline the passphrase does not have: tried without it.
    let key_nl = t.path().join("key-nl");
    std::fs::write(&key_nl, b"correct horse\n").unwrap();
    let mnt = Mounted::new(&safe, t.path(), &["--key-file", s(&key_nl)]);
    let lv = format!("1/disk/lvm/{vg}-root");
    for (dir, src) in [
        ("1/a/files", &src_a),
        ("1/b/files", &src_b),
        ("1/c/files", &src_c),
        (lv.as_str(), &src_d),
    ] {
        same_tree(&tree_digest(&mnt.dir.join(dir)), &tree_digest(src), dir);
    }
    assert_eq!(
        sha256_file(&mnt.dir.join(format!("{lv}.img"))),
        sha256(&lv_bytes),
        "the LV inside the LUKS volume, byte for byte"
    );
    assert_eq!(
        sha256_file(&mnt.dir.join("1/a/disk.img")),
        sha256_file(&a),
        "the device image stays the ciphertext"
    );
    // Each opened volume's plaintext, as OpenSSL decrypts it with cryptsetup's key.
    for (dev, img, uuid) in [("a", &a, &uuids[0]), ("b", &b, &uuids[1])] {
        let plain = t.path().join(format!("plain-{dev}"));
        decrypt_with_openssl(img, &key, &plain);
        assert_eq!(
            sha256_file(&mnt.dir.join(format!("1/{dev}/luks/luks-{uuid}.img"))),
            sha256_file(&plain),
            "{dev}: the plaintext image"
        );
        // restore --volume writes the same plaintext, given the passphrase.
        let vol = format!("luks/luks-{uuid}.img");
        let out = t.path().join(format!("restored-{dev}"));
        ok(&[
            "restore",
            s(&safe),
            "1",
            dev,
            s(&out),
            "--volume",
            &vol,
            "--key-file",
            s(&key),
        ]);
        assert_eq!(sha256_file(&out), sha256_file(&plain), "{dev}: restored");
        // The same with the passphrase piped on standard input (`--key-file -`).
        std::fs::remove_file(&out).unwrap();
        let mut c = Command::new(bin())
            .args(["restore", s(&safe), "1", dev, s(&out), "--volume", &vol])
            .args(["--key-file", "-"])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        c.stdin.take().unwrap().write_all(b"correct horse").unwrap();
        let o = c.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert_eq!(
            sha256_file(&out),
            sha256_file(&plain),
            "{dev}: key on stdin"
        );
        let e = fails(&["restore", s(&safe), "1", dev, s(&out), "--volume", &vol]);
        assert!(e.contains("no such entry"), "{e}");
    }
    assert!(mnt
        .dir
        .join(format!("1/disk/luks/luks-{}.img", uuids[3]))
        .exists());
    drop(mnt);

    // Without a passphrase, and with a wrong one: raw images only, the volume named.
    let wrong = t.path().join("wrong");
    std::fs::write(&wrong, b"incorrect horse").unwrap();
    for (extra, why) in [
        (vec![], "locked (no --key-file given)"),
        (
            vec!["--key-file", s(&wrong)],
            "no passphrase given opens any of its keyslots",
        ),
    ] {
        let mnt = Mounted::new(&safe, t.path(), &extra);
        for dir in [
            "1/a/files",
            "1/b/files",
            "1/c/files",
            "1/disk/part2",
            "1/disk/lvm",
            "1/a/luks",
        ] {
            assert!(!mnt.dir.join(dir).exists(), "{dir} without the passphrase");
        }
        assert!(mnt.dir.join("1/disk/part2.img").exists());
        let log = mnt.log_text();
        for (u, v) in uuids.iter().zip([2, 2, 1, 2]) {
            let want = format!("LUKS{v} volume {u}: {why}");
            assert!(log.contains(&want), "the log names {want:?}:\n{log}");
        }
    }
}

/// `backup --skip-free --key-file` leaves out what the filesystem inside a LUKS volume
/// marks free, in whole encrypted sectors: decrypted by OpenSSL with the key cryptsetup
/// dumps, the restored volume differs from its source only in blocks `dumpe2fs` lists
/// as free and passes `e2fsck -fn`; the header and keyslots are kept byte for byte;
/// the mount opens the restored point to the source tree. Without the passphrase
/// nothing inside is left out and the note says how to change that.
#[test]
fn skip_free_looks_inside_luks_volumes_given_the_passphrase() {
    let name = "skip_free_looks_inside_luks_volumes_given_the_passphrase";
    if !have_fuse(name)
        || !have_tool("cryptsetup", "cryptsetup-bin", name)
        || !have_tool("debugfs", "e2fsprogs", name)
        || !have_openssl_python(name)
    {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let mut rng = StdRng::seed_from_u64(72);
    let key = t.path().join("key");
    std::fs::write(&key, b"open sesame").unwrap();
    let (src, img) = (t.path().join("src"), t.path().join("v.img"));
    ext4(&src, &img, 40, 64, 4096, &mut rng);
    // A deleted file's bytes stay in the free space.
    with_deleted_junk(&img, t.path(), &mut rng);
    luks_encrypt(
        &img,
        &key,
        16,
        &[&["--type", "luks2", "--sector-size", "4096"][..], &FAST].concat(),
    );

    let part = t.path().join("part");
    let o = ds(&[
        "backup",
        s(&part),
        &format!("v={}", s(&img)),
        "--skip-free",
        "--key-file",
        s(&key),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        o.status.success() && err.contains("recorded as zeros, not read"),
        "{err}"
    );
    let restored = t.path().join("restored.img");
    ok(&["restore", s(&part), "1", "v", s(&restored)]);
    let data_at = 8usize << 20; // half of --reduce-device-size
    let (a, b) = (
        std::fs::read(&img).unwrap(),
        std::fs::read(&restored).unwrap(),
    );
    assert!(a[..data_at] == b[..data_at], "header and keyslots kept");
    let (plain_src, plain_got) = (t.path().join("plain-src"), t.path().join("plain-got"));
    decrypt_with_openssl(&img, &key, &plain_src);
    decrypt_with_openssl(&restored, &key, &plain_got);
    let differ = differs_only_where_free(&plain_src, &plain_got, &plain_src);
    assert!(
        differ > 6 << 20,
        "the deleted file's blocks left out ({differ} bytes)"
    );
    fsck_clean(&plain_got);
    let mnt = Mounted::new(&part, t.path(), &["--key-file", s(&key)]);
    same_tree(
        &tree_digest(&mnt.dir.join("1/v/files")),
        &tree_digest(&src),
        "restored",
    );
    drop(mnt);

    // Without the passphrase the volume is kept whole.
    let whole = t.path().join("whole");
    let o = ds(&[
        "backup",
        s(&whole),
        &format!("v={}", s(&img)),
        "--skip-free",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("locked (no --key-file given): its free space is kept (--key-file lets --skip-free look inside)"), "{err}");
    ok(&["restore", s(&whole), "1", "v", s(&restored)]);
    assert_eq!(sha256_file(&restored), sha256_file(&img), "kept whole");
}

/// LUKS on a RAID5 of three member disks (md, then LUKS, then the filesystem: a
/// common encrypted server layout): the array is assembled from the members, opened
/// with the passphrase, its plaintext listed under each member's `luks/` (as OpenSSL
/// decrypts it) and its tree shown at the array's `md/` directory.
#[test]
fn luks_on_an_assembled_raid5_opens() {
    let name = "luks_on_an_assembled_raid5_opens";
    if !have_fuse(name)
        || !have_tool("cryptsetup", "cryptsetup-bin", name)
        || !have_openssl_python(name)
    {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let mut rng = StdRng::seed_from_u64(73);
    let key = t.path().join("key");
    std::fs::write(&key, b"raid key").unwrap();
    let (src, img) = (t.path().join("src"), t.path().join("v.img"));
    ext4(&src, &img, 24, 32, 1024, &mut rng);
    luks_encrypt(&img, &key, 8, &[&["--type", "luks2"][..], &FAST].concat());
    let uuid = run("cryptsetup", &["luksUUID", s(&img)]);
    let plain = t.path().join("plain");
    decrypt_with_openssl(&img, &key, &plain);
    let members = striped_members(
        t.path(),
        5,
        2,
        3,
        64 << 10,
        &std::fs::read(&img).unwrap(),
        &mut rng,
    );
    let safe = t.path().join("safe");
    backup_members(&safe, &members);
    let mnt = Mounted::new(&safe, t.path(), &["--key-file", s(&key)]);
    same_tree(
        &tree_digest(&mnt.dir.join("1/m1/md/a")),
        &tree_digest(&src),
        "LUKS on RAID5",
    );
    // The array ends a little past the image it was striped from (a whole last
    // stripe): the plaintext is the LUKS data up to the array's end.
    let want = std::fs::read(&plain).unwrap();
    for i in 0..3 {
        let got = std::fs::read(mnt.dir.join(format!("1/m{i}/luks/luks-{uuid}.img"))).unwrap();
        assert!(got.len() >= want.len(), "m{i}: {} bytes", got.len());
        assert!(got[..want.len()] == want[..], "m{i}: the plaintext");
    }
}
