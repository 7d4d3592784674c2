//! LVM logical volumes through the mount, against LVM's own tools: the PVs, the VG and
//! its LVs are made by pvcreate, vgcreate, lvcreate and lvextend (without
//! device-mapper: nothing is activated), the LVs' contents written where `lvs` reports
//! each segment lies, and each `lvm/VG-LV.img` must read back byte for byte, its file
//! tree equal to the tree it was made from. One PV is a GPT partition of one disk, the
//! other a whole second disk; the VG spans both.

mod common;

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::*;
use rand::{rngs::StdRng, Rng, SeedableRng};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Runs an LVM or other tool; its stdout when it succeeds.
fn tool(cmd: &str, args: &[&str]) -> Option<String> {
    let o = Command::new(cmd)
        .args(args)
        .env("LVM_SUPPRESS_FD_WARNINGS", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .ok()?;
    if !o.status.success() {
        eprintln!("{cmd} {args:?}: {}", String::from_utf8_lossy(&o.stderr));
        return None;
    }
    Some(String::from_utf8_lossy(&o.stdout).trim().to_string())
}

/// Whether FUSE (as root) and lvm2 are here; says why test `name` is skipped if not.
fn have_lvm(name: &str) -> bool {
    let ok = fuse_available() && tool("lvm", &["version"]).is_some();
    if !ok {
        eprintln!("SKIP {name}: needs FUSE, root and lvm2");
    }
    ok
}

/// Runs an LVM command (`args[0]`) without device-mapper; its stdout. Panics on failure.
fn lvm_run(args: &[&str]) -> String {
    let mut v = vec!["--driverloaded", "n"];
    v.extend_from_slice(&args[1..]);
    tool(args[0], &v).unwrap_or_else(|| panic!("{args:?}"))
}

/// One LV segment as `lvs` reports it: LV byte offset and length, stripe size, and the
/// (PV device, first extent) of each stripe.
#[derive(Debug)]
struct Seg {
    start: u64,
    len: u64,
    stripe: u64,
    stripes: Vec<(String, u64)>,
}

fn segments(vg: &str) -> BTreeMap<String, Vec<Seg>> {
    let out = tool(
        "lvs",
        &[
            "--driverloaded",
            "n",
            "--noheadings",
            "--segments",
            "--units",
            "b",
            "--nosuffix",
            "--separator",
            ";",
            "-o",
            "lv_name,seg_start,seg_size,stripe_size,seg_pe_ranges",
            vg,
        ],
    )
    .expect("lvs");
    let mut m: BTreeMap<String, Vec<Seg>> = BTreeMap::new();
    for line in out.lines() {
        let f: Vec<&str> = line.trim().split(';').collect();
        let stripes = f[4]
            .split_whitespace()
            .map(|r| {
                let (dev, range) = r.rsplit_once(':').unwrap();
                (
                    dev.to_string(),
                    range.split('-').next().unwrap().parse().unwrap(),
                )
            })
            .collect();
        m.entry(f[0].to_string()).or_default().push(Seg {
            start: f[1].parse().unwrap(),
            len: f[2].parse().unwrap(),
            stripe: f[3].parse().unwrap(),
            stripes,
        });
    }
    m
}

/// Writes `data` as the contents of an LV whose segments are `segs`: linear segments
/// where `lvs` places them; striped ones in chunks of the stripe size dealt out over
/// the stripes in turn (device-mapper's striped target).
fn write_lv(segs: &[Seg], data: &[u8], pe_start: &BTreeMap<String, u64>, extent: u64) {
    for sg in segs {
        let n = sg.stripes.len() as u64;
        let chunk = if n == 1 { sg.len } else { sg.stripe };
        let mut rel = 0;
        while rel < sg.len {
            let k = rel / chunk;
            let (dev, first) = &sg.stripes[(k % n) as usize];
            let at = pe_start[dev] + first * extent + (k / n) * chunk;
            let piece = &data[(sg.start + rel) as usize..(sg.start + rel + chunk) as usize];
            write_dev(dev, at, piece);
            rel += chunk;
        }
    }
}

#[test]
fn logical_volumes_read_as_lvm_places_them() {
    if !fuse_available() || tool("lvm", &["version"]).is_none() || tool("sfdisk", &["-v"]).is_none()
    {
        eprintln!("SKIP lvm: needs FUSE, root, lvm2 and sfdisk");
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let (a, b) = (t.path().join("a.img"), t.path().join("b.img"));
    File::create(&a).unwrap().set_len(160 << 20).unwrap();
    File::create(&b).unwrap().set_len(96 << 20).unwrap();
    // Disk a: GPT, partition 1 of 8 MiB, partition 2 the PV.
    sfdisk_script(
        &a,
        "label: gpt\nstart=2048, size=16384\nstart=18432, type=E6D6D379-F507-44C2-A23C-238F2A3DF928\n",
    );
    let part2 = sfdisk_parts(&a).into_iter().find(|p| p.0 == 2).unwrap();
    let vg = format!("dstest{}", std::process::id());
    let mut loops = Loops::default();
    let (Some(pa), Some(pb)) = (
        loops.attach(&a, part2.1, part2.2),
        loops.attach(&b, 0, 96 << 20),
    ) else {
        eprintln!("SKIP lvm: no loop devices");
        return;
    };
    tool("pvcreate", &["-q", &pa, &pb]).expect("pvcreate");
    lvm_run(&["vgcreate", "-q", "-s", "1m", &vg, &pa, &pb]);
    // root on a, then home after it, then root grown: root in two segments.
    lvm_run(&[
        "lvcreate", "-q", "-an", "-Zn", "-L", "24m", "-n", "root", &vg, &pa,
    ]);
    lvm_run(&[
        "lvcreate", "-q", "-an", "-Zn", "-L", "4m", "-n", "home", &vg, &pa,
    ]);
    lvm_run(&["lvextend", "-q", "-L", "40m", &format!("{vg}/root"), &pa]);
    lvm_run(&[
        "lvcreate", "-q", "-an", "-Zn", "-L", "16m", "-i", "2", "-I", "64k", "-n", "data", &vg,
    ]);
    lvm_run(&[
        "lvcreate", "-q", "-an", "-Zn", "-L", "32m", "-n", "my-xfs", &vg, &pb,
    ]);
    let segs = segments(&vg);
    assert_eq!(segs["root"].len(), 2, "root is fragmented: {segs:?}");
    assert_eq!(segs["data"][0].stripes.len(), 2);
    let mut pe_start = BTreeMap::new();
    for d in [&pa, &pb] {
        pe_start.insert(d.clone(), first_extent_at(d));
    }
    let extent = 1 << 20;

    // root: an ext4 image of a generated tree; data: random bytes; my-xfs: XFS.
    let mut rng = StdRng::seed_from_u64(7);
    let src = t.path().join("src");
    let root_img = t.path().join("root.img");
    ext4_image(&src, &root_img, 30, 40 << 20, &mut rng);
    write_lv(
        &segs["root"],
        &std::fs::read(&root_img).unwrap(),
        &pe_start,
        extent,
    );
    let mut data = vec![0u8; 16 << 20];
    rng.fill(&mut data[..]);
    write_lv(&segs["data"], &data, &pe_start, extent);
    let xsrc = t.path().join("xsrc");
    let xfs_img: Option<PathBuf> = tool("mkfs.xfs", &["-V"]).map(|_| {
        std::fs::create_dir(&xsrc).unwrap();
        let mut body = String::new();
        for i in 0..12 {
            let mut d = vec![0u8; rng.gen_range(0..300_000)];
            rng.fill(&mut d[..]);
            let p = xsrc.join(format!("f{i}.bin"));
            std::fs::write(&p, &d).unwrap();
            body += &format!("f{i}.bin ---644 0 0 {}\n", s(&p));
        }
        let img = t.path().join("xfs.img");
        File::create(&img).unwrap().set_len(32 << 20).unwrap();
        let proto = t.path().join("proto");
        std::fs::write(&proto, format!("/dev/null\n0 0\nd--755 0 0\n{body}$\n")).unwrap();
        let ok = Command::new("mkfs.xfs")
            .args(["-q", "-f", "-p", s(&proto), s(&img)])
            .envs([("TEST_DIR", "1"), ("TEST_DEV", "1"), ("QA_CHECK_FS", "1")])
            .status()
            .unwrap()
            .success();
        assert!(ok, "mkfs.xfs -p");
        img
    });
    if let Some(img) = &xfs_img {
        write_lv(
            &segs["my-xfs"],
            &std::fs::read(img).unwrap(),
            &pe_start,
            extent,
        );
    }
    drop(loops);

    let safe = t.path().join("safe");
    backup(&[s(&safe), &format!("a={}", s(&a)), &format!("b={}", s(&b))]);
    let m = Mounted::new(&safe, t.path(), &[]);
    let lv = |dev: &str, name: &str| m.dir.join(format!("1/{dev}/lvm/{vg}-{name}"));
    // Every LV with a PV on a device is listed under it: data spans both.
    let names = |dev: &str| lv_names(&m.dir.join(format!("1/{dev}/lvm")), &vg);
    assert_eq!(names("a"), ["data.img", "home.img", "root", "root.img"]);
    let mut want_b = vec!["data.img", "my--xfs.img"];
    if xfs_img.is_some() {
        want_b.push("my--xfs");
    }
    want_b.sort();
    assert_eq!(names("b"), want_b);
    assert_eq!(sha256_file(&lv("a", "root.img")), sha256_file(&root_img));
    assert_eq!(same_bytes(&lv("b", "data.img"), &data), Ok(()));
    assert_eq!(
        std::fs::metadata(lv("a", "home.img")).unwrap().len(),
        4 << 20
    );
    same_tree(
        &tree_digest(&lv("a", "root")),
        &tree_digest(&src),
        "ext4 in LV root",
    );
    // Holes come through linear segments from the safe: home was never written.
    assert_eq!(
        seek(&lv("a", "home.img"), 0, libc::SEEK_DATA),
        -libc::ENXIO as i64
    );
    assert_eq!(seek(&lv("a", "root.img"), 0, libc::SEEK_DATA), 0);
    if let Some(img) = &xfs_img {
        assert_eq!(sha256_file(&lv("b", "my--xfs.img")), sha256_file(img));
        same_tree(
            &tree_digest(&lv("b", "my--xfs")),
            &tree_digest(&xsrc),
            "XFS in LV my-xfs",
        );
    } else {
        eprintln!("lvm: XFS in an LV not checked (no mkfs.xfs)");
    }
    // Partition 1 of a holds no PV and shows as before.
    assert!(m.dir.join("1/a/part1.img").exists());
    let log = m.log_text();
    assert!(!log.contains("ERROR") && !log.contains("WARN"), "{log}");
}

/// lseek's answer (a negative errno on failure).
fn seek(p: &Path, offset: i64, whence: i32) -> i64 {
    let f = File::open(p).unwrap();
    let r = unsafe { libc::lseek(std::os::unix::io::AsRawFd::as_raw_fd(&f), offset, whence) };
    if r < 0 {
        -(std::io::Error::last_os_error().raw_os_error().unwrap() as i64)
    } else {
        r
    }
}

/// Ok when the file holds exactly `want`; else the first differing offset.
fn same_bytes(p: &Path, want: &[u8]) -> Result<(), usize> {
    let got = std::fs::read(p).unwrap();
    if got.len() != want.len() {
        return Err(got.len().min(want.len()));
    }
    match got.iter().zip(want).position(|(a, b)| a != b) {
        Some(i) => Err(i),
        None => Ok(()),
    }
}

/// A thin pool as LVM describes it (restored with vgcfgrestore: without
/// device-mapper LVM cannot create one) holding two thin LVs, its metadata written by
/// thin_restore (the thin-provisioning-tools' own encoder) from a mapping that
/// scatters an ext4 image's chunks over the pool's data: the thin LV reads back as
/// the image, unmapped chunks as zeros, and its tree as the source tree.
#[test]
fn thin_volumes_read_through_their_pool() {
    let t = tempfile::tempdir().unwrap();
    let disk = t.path().join("d.img");
    File::create(&disk).unwrap().set_len(96 << 20).unwrap();
    // thin1 64 MiB virtual (device 1), thin2 a 16 MiB partitioned "VM disk" (device
    // 2), thin3 16 MiB with nothing mapped (device 3).
    let thins = [("thin1", 64), ("thin2", 16), ("thin3", 16)];
    let Some((loops, pv, vg)) = thin_pool_disk(&disk, "dsthin", &thins) else {
        eprintln!(
            "SKIP lvm thin: needs FUSE, root, lvm2, thin-provisioning-tools and loop devices"
        );
        return;
    };
    // LVM's own reading of it: where the pool's sub-LVs lie.
    let segs = segments_all(&vg);
    assert_eq!(segs["[pool_tmeta]"], (pv.clone(), 0), "{segs:?}");
    assert_eq!(segs["[pool_tdata]"], (pv.clone(), 4), "{segs:?}");
    let pe_start = first_extent_at(&pv);
    // An ext4 image of 16 MiB as thin1's first 256 chunks, scattered over the pool.
    let mut rng = StdRng::seed_from_u64(9);
    let src = t.path().join("src");
    let img = t.path().join("ext4.img");
    ext4_image(&src, &img, 20, 16 << 20, &mut rng);
    let bytes = std::fs::read(&img).unwrap();
    let chunk = 64 << 10;
    let slots = shuffled(512, &mut rng);
    let mut xml = String::from("<superblock uuid=\"\" time=\"1\" transaction=\"2\" flags=\"0\" version=\"2\" data_block_size=\"128\" nr_data_blocks=\"512\">\n<device dev_id=\"1\" mapped_blocks=\"256\" transaction=\"0\" creation_time=\"0\" snap_time=\"1\">\n");
    let dev = File::options().write(true).open(&pv).unwrap();
    for (v, &d) in slots.iter().take(256).enumerate() {
        xml += &format!("<single_mapping origin_block=\"{v}\" data_block=\"{d}\" time=\"0\"/>\n");
        let piece = &bytes[v * chunk as usize..(v + 1) * chunk as usize];
        dev.write_all_at(piece, pe_start + (4 << 20) + d * chunk)
            .unwrap();
    }
    // thin2: a GPT disk whose one partition holds ext4, in the other 256 chunks.
    let src2 = t.path().join("src2");
    let part = t.path().join("part.img");
    ext4_image(&src2, &part, 10, 30000 * 512, &mut rng);
    let vm = t.path().join("vm.img");
    File::create(&vm).unwrap().set_len(16 << 20).unwrap();
    sfdisk_script(&vm, "label: gpt\nstart=2048, size=30000\n");
    let part_bytes = std::fs::read(&part).unwrap();
    File::options()
        .write(true)
        .open(&vm)
        .unwrap()
        .write_all_at(&part_bytes, 1 << 20)
        .unwrap();
    let vm_bytes = std::fs::read(&vm).unwrap();
    xml += "</device>\n<device dev_id=\"2\" mapped_blocks=\"256\" transaction=\"1\" creation_time=\"1\" snap_time=\"1\">\n";
    for (v, &d) in slots.iter().skip(256).enumerate() {
        xml += &format!("<single_mapping origin_block=\"{v}\" data_block=\"{d}\" time=\"1\"/>\n");
        let piece = &vm_bytes[v * chunk as usize..(v + 1) * chunk as usize];
        dev.write_all_at(piece, pe_start + (4 << 20) + d * chunk)
            .unwrap();
    }
    xml += "</device>\n<device dev_id=\"3\" mapped_blocks=\"0\" transaction=\"2\" creation_time=\"2\" snap_time=\"2\">\n</device>\n</superblock>\n";
    let meta = thin_restore(t.path(), &xml);
    dev.write_all_at(&std::fs::read(&meta).unwrap(), pe_start)
        .unwrap();
    // Flushed: a parallel test's LVM scan may hold the device open past our close.
    dev.sync_all().unwrap();
    drop(dev);
    drop(loops);

    let safe = t.path().join("safe");
    backup(&[s(&safe), &format!("d={}", s(&disk))]);
    let m = Mounted::new(&safe, t.path(), &[]);
    let dir = m.dir.join("1/d/lvm");
    let names = lv_names(&dir, &vg);
    // The pool and its sub-LVs are not volumes to show; the thin LVs are.
    assert_eq!(
        names,
        ["thin1", "thin1.img", "thin2", "thin2.img", "thin3.img"],
        "{}",
        m.log_text()
    );
    let mut want = bytes.clone();
    want.resize(64 << 20, 0);
    assert_eq!(
        same_bytes(&dir.join(format!("{vg}-thin1.img")), &want),
        Ok(())
    );
    assert_eq!(
        same_bytes(&dir.join(format!("{vg}-thin2.img")), &vm_bytes),
        Ok(())
    );
    // An LV holding a partition table (a VM disk) shows its partitions.
    let vmdir = dir.join(format!("{vg}-thin2"));
    let mut parts: Vec<String> = std::fs::read_dir(&vmdir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    parts.sort();
    assert_eq!(parts, ["part1", "part1.img"]);
    assert_eq!(same_bytes(&vmdir.join("part1.img"), &part_bytes), Ok(()));
    same_tree(
        &tree_digest(&vmdir.join("part1")),
        &tree_digest(&src2),
        "ext4 in a VM disk in a thin LV",
    );
    assert_eq!(
        same_bytes(&dir.join(format!("{vg}-thin3.img")), &vec![0u8; 16 << 20]),
        Ok(())
    );
    same_tree(
        &tree_digest(&dir.join(format!("{vg}-thin1"))),
        &tree_digest(&src),
        "ext4 in a thin LV",
    );
    // Unmapped chunks are holes: cp and qemu-img skip them, du counts the mapped ones.
    let t1 = dir.join(format!("{vg}-thin1.img"));
    assert_eq!(seek(&t1, 0, libc::SEEK_HOLE), 16 << 20);
    assert_eq!(seek(&t1, 16 << 20, libc::SEEK_DATA), -libc::ENXIO as i64);
    assert_eq!(std::fs::metadata(&t1).unwrap().blocks() * 512, 16 << 20);
    let t3 = dir.join(format!("{vg}-thin3.img"));
    assert_eq!(seek(&t3, 0, libc::SEEK_DATA), -libc::ENXIO as i64);
    assert_eq!(std::fs::metadata(&t3).unwrap().blocks(), 0);
    let log = m.log_text();
    assert!(!log.contains("ERROR") && !log.contains("WARN"), "{log}");
}

/// Makes the whole of `disk` a PV (through a loop device, returned with it) and on it
/// a VG named `prefix` and the process id holding thin pool `pool` (pool_tmeta on
/// extents 0-3, pool_tdata on 4-35: 32 MiB of 64 KiB chunks) and visible thin LVs
/// (name, extents), device ids from 1, by editing LVM's own `vgcfgbackup` text and
/// restoring it (without device-mapper nothing can be activated to create them).
/// `None` without root, lvm2, thin-provisioning-tools or loop devices.
fn thin_pool_disk(
    disk: &Path,
    prefix: &str,
    thins: &[(&str, u64)],
) -> Option<(Loops, String, String)> {
    if !fuse_available()
        || tool("lvm", &["version"]).is_none()
        || Command::new("thin_restore").arg("-V").output().is_err()
    {
        return None;
    }
    let mut loops = Loops::default();
    let pv = loops.attach(disk, 0, std::fs::metadata(disk).unwrap().len())?;
    let (pv, vg) = (pv.as_str(), format!("{prefix}{}", std::process::id()));
    let vg = vg.as_str();
    let dir = disk.parent().unwrap();
    tool("pvcreate", &["-q", pv]).expect("pvcreate");
    tool("vgcreate", &["-q", "-s", "1m", vg, pv]).expect("vgcreate");
    let lv = |n: usize, name: &str, visible: bool, seg: &str| lv_section(n, name, visible, seg);
    let mut lvs = vec![
        lv(1, "pool", true, &format!("extent_count = 32\ntype = \"thin-pool\"\nmetadata = \"pool_tmeta\"\npool = \"pool_tdata\"\ntransaction_id = {}\nchunk_size = 128", thins.len())),
        lv(2, "pool_tmeta", false, "extent_count = 4\ntype = \"striped\"\nstripe_count = 1\nstripes = [\"pv0\", 0]"),
        lv(3, "pool_tdata", false, "extent_count = 32\ntype = \"striped\"\nstripe_count = 1\nstripes = [\"pv0\", 4]"),
    ];
    for (i, (name, extents)) in thins.iter().enumerate() {
        lvs.push(lv(
            10 + i,
            name,
            true,
            &format!("extent_count = {extents}\ntype = \"thin\"\nthin_pool = \"pool\"\ntransaction_id = {i}\ndevice_id = {}", i + 1),
        ));
    }
    restore_with_lvs(dir, vg, &lvs);
    Some((loops, pv.to_string(), vg.to_string()))
}

/// An LV section of VG metadata text: one segment from extent 0 (`seg` its body).
fn lv_section(n: usize, name: &str, visible: bool, seg: &str) -> String {
    let status = if visible {
        "\"READ\", \"WRITE\", \"VISIBLE\""
    } else {
        "\"READ\", \"WRITE\""
    };
    // LVM's id form: 32 characters in groups of 6-4-4-4-4-4-6.
    let id = format!("lv{n:04}-aaaa-aaaa-aaaa-aaaa-aaaa-aaaaaa");
    format!(
        "{name} {{\nid = \"{id}\"\nstatus = [{status}]\nflags = []\nsegment_count = 1\nsegment1 {{\nstart_extent = 0\n{seg}\n}}\n}}\n"
    )
}

/// Gives VG `vg` the LVs `lvs` (sections as [`lv_section`] writes them) through
/// vgcfgbackup and vgcfgrestore (files under `dir`): how LVM describes volumes it
/// will not create without device-mapper.
fn restore_with_lvs(dir: &Path, vg: &str, lvs: &[String]) {
    let base = dir.join("base.txt");
    lvm_run(&["vgcfgbackup", "-q", "-f", s(&base), vg]);
    let text = std::fs::read_to_string(&base).unwrap();
    let end = text.rfind('}').unwrap();
    let text = format!(
        "{}logical_volumes {{\n{}}}\n{}",
        &text[..end],
        lvs.concat(),
        &text[end..]
    )
    .replacen("seqno = 1", "seqno = 2", 1);
    let restore = dir.join("restore.txt");
    std::fs::write(&restore, text).unwrap();
    lvm_run(&["vgcfgrestore", "--force", "-f", s(&restore), vg]);
}

/// The 4 MiB metadata volume `thin_restore` makes of `xml`, as a file under `dir`.
fn thin_restore(dir: &Path, xml: &str) -> PathBuf {
    let xml_path = dir.join("thin.xml");
    std::fs::write(&xml_path, xml).unwrap();
    let meta = dir.join("tmeta.bin");
    File::create(&meta).unwrap().set_len(4 << 20).unwrap();
    tool("thin_restore", &["-i", s(&xml_path), "-o", s(&meta)]).expect("thin_restore");
    meta
}

/// 0..n in a random order.
fn shuffled(n: u64, rng: &mut StdRng) -> Vec<u64> {
    let mut v: Vec<u64> = (0..n).collect();
    for i in (1..v.len()).rev() {
        v.swap(i, rng.gen_range(0..=i));
    }
    v
}

/// The sorted names in an `lvm/` directory, without their `VG-` prefix.
fn lv_names(dir: &Path, vg: &str) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            e.unwrap()
                .file_name()
                .to_string_lossy()
                .replace(&format!("{vg}-"), "")
        })
        .collect();
    v.sort();
    v
}

/// Byte offset of the first extent on PV `dev`, as `pvs` reports it.
fn first_extent_at(dev: &str) -> u64 {
    let args = [
        "--driverloaded",
        "n",
        "--noheadings",
        "--units",
        "b",
        "--nosuffix",
    ];
    let mut v: Vec<&str> = args.to_vec();
    v.extend(["-o", "pe_start", dev]);
    tool("pvs", &v).expect("pvs").trim().parse().unwrap()
}

/// Every (hidden ones too) LV's first segment as LVM reports it: (PV device, first
/// extent), for linear segments.
fn segments_all(vg: &str) -> BTreeMap<String, (String, u64)> {
    let out = tool(
        "lvs",
        &[
            "--driverloaded",
            "n",
            "-a",
            "--noheadings",
            "--segments",
            "--separator",
            ";",
            "-o",
            "lv_name,seg_pe_ranges",
            vg,
        ],
    )
    .expect("lvs");
    out.lines()
        .filter_map(|l| {
            let (name, ranges) = l.trim().split_once(';')?;
            let (dev, r) = ranges.trim().rsplit_once(':')?;
            let first = r.split('-').next()?.parse().ok()?;
            Some((name.to_string(), (dev.to_string(), first)))
        })
        .collect()
}

/// The extents of PV `pv` no LV uses, as `pvs --segments` lists them, as byte ranges
/// (offset, length) of the disk whose partition at `part_start` the PV is (1 MiB
/// extents).
fn free_pv_segments(pv: &str, part_start: u64) -> Vec<(u64, u64)> {
    let segs = lvm_run(&[
        "pvs",
        "--noheadings",
        "--segments",
        "--units",
        "b",
        "--nosuffix",
        "--separator",
        ";",
        "-o",
        "pvseg_start,pvseg_size,lv_name",
        pv,
    ]);
    let pe_start = first_extent_at(pv);
    segs.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.trim().split(';').collect();
            f[2].is_empty()
                .then(|| (f[0].parse::<u64>().unwrap(), f[1].parse::<u64>().unwrap()))
        })
        .map(|(first, n)| (part_start + pe_start + (first << 20), n << 20))
        .collect()
}

/// A VG (1 MiB extents) made by LVM on the loop device `pv` alone, named `prefix` and
/// the process id, with one LV `name` of `mib` MiB holding an ext4 of a new tree of
/// `files` files, written where `lvs` places the LV.
struct OneLv {
    vg: String,
    segs: Vec<Seg>,
    /// Byte offset of the first extent on the PV.
    pe_start: u64,
    src: PathBuf,
    img: PathBuf,
}

fn ext4_in_one_lv(
    pv: &str,
    prefix: &str,
    name: &str,
    mib: u64,
    files: usize,
    dir: &Path,
    rng: &mut StdRng,
) -> OneLv {
    let vg = format!("{prefix}{}", std::process::id());
    lvm_run(&["pvcreate", "-q", pv]);
    lvm_run(&["vgcreate", "-q", "-s", "1m", &vg, pv]);
    let size = format!("{mib}m");
    lvm_run(&["lvcreate", "-q", "-an", "-Zn", "-L", &size, "-n", name, &vg]);
    let mut segs = segments(&vg);
    let pe_start = first_extent_at(pv);
    let (src, img) = (dir.join("src"), dir.join(format!("{name}.img")));
    ext4_image(&src, &img, files, mib << 20, rng);
    let segs = segs.remove(name).unwrap();
    write_lv(
        &segs,
        &std::fs::read(&img).unwrap(),
        &BTreeMap::from([(pv.to_string(), pe_start)]),
        1 << 20,
    );
    OneLv {
        vg,
        segs,
        pe_start,
        src,
        img,
    }
}

/// [`ext4_in_one_lv`] on `len` bytes of `img` from `start`, through a loop device
/// detached after; `None` (test `test` skipped, saying why) without loop devices.
#[allow(clippy::too_many_arguments)]
fn one_lv_in(
    img: &Path,
    (start, len): (u64, u64),
    prefix: &str,
    name: &str,
    (mib, files): (u64, usize),
    dir: &Path,
    rng: &mut StdRng,
    test: &str,
) -> Option<OneLv> {
    let mut loops = Loops::default();
    let Some(pv) = loops.attach(img, start, len) else {
        eprintln!("SKIP {test}: no loop devices");
        return None;
    };
    Some(ext4_in_one_lv(&pv, prefix, name, mib, files, dir, rng))
}

/// Asserts that the LV directory `lv` of a mount (`.../lvm/VG-LV`) holds the tree
/// `src` and its image is byte for byte `img`.
fn assert_lv_shown(lv: &Path, src: &Path, img: &Path, what: &str) {
    same_tree(&tree_digest(lv), &tree_digest(src), what);
    assert_eq!(
        sha256_file(&lv.with_extension("img")),
        sha256_file(img),
        "{what}: the LV, byte for byte"
    );
}

/// A PV on an md RAID1 array (the "RAID1 + LVM" layout Debian's installer offers): on a
/// member the PV lies past the md superblock, and the LVs on it show under the
/// member's `lvm/`. The superblock is written by the test and read by `mdadm
/// --examine`; the PV, VG and LV are LVM's, placed where `lvs` says. A second member
/// that fell behind (fewer events) holds the same PV with older contents and is left
/// out.
#[test]
fn a_pv_on_an_md_raid1_member_is_found() {
    if !fuse_available()
        || tool("lvm", &["version"]).is_none()
        || !have_tool("mdadm", "mdadm", "a_pv_on_an_md_raid1_member_is_found")
    {
        eprintln!("SKIP a_pv_on_an_md_raid1_member_is_found: needs FUSE, root, lvm2 and mdadm");
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let mut rng = StdRng::seed_from_u64(92);
    let member = t.path().join("sda.img");
    let (data_at, data_len) = (1u64 << 20, 20u64 << 20);
    File::create(&member).unwrap().set_len(24 << 20).unwrap();
    let mut sb = md_superblock(data_at / 512, data_len / 512, (24 << 20) / 512, &mut rng);
    let state = |events, slot| MdState {
        array: 5,
        events,
        slot,
        roles: &[0, 1],
        features: 0,
        recovery: 0,
        super_sector: 8,
    };
    md_set_state(&mut sb, &state(20, 0));
    File::options()
        .write(true)
        .open(&member)
        .unwrap()
        .write_all_at(&sb, 4096)
        .unwrap();
    let exam = tool("mdadm", &["--examine", s(&member)]).expect("mdadm --examine");
    assert!(
        exam.contains("Raid Level : raid1") && exam.contains("- correct"),
        "{exam}"
    );
    let name = "a_pv_on_an_md_raid1_member_is_found";
    let Some(lv) = one_lv_in(
        &member,
        (data_at, data_len),
        "dsmd",
        "root",
        (8, 20),
        t.path(),
        &mut rng,
        name,
    ) else {
        return;
    };
    let (vg, src, segs, pe_start) = (lv.vg, lv.src, lv.segs, lv.pe_start);
    // The other member dropped out of the array earlier (events behind): the same PV
    // and VG, the LV holding an older filesystem. It comes last among the devices, so
    // a PV taken from whichever member is scanned last would read the old LV.
    let stale = t.path().join("sdb.img");
    std::fs::copy(&member, &stale).unwrap();
    let mut sb = sb.clone();
    md_set_state(&mut sb, &state(12, 1));
    let (old_src, old_img) = (t.path().join("old"), t.path().join("old.img"));
    ext4_image(&old_src, &old_img, 7, 8 << 20, &mut rng);
    let lv_at = data_at + pe_start + segs[0].stripes[0].1 * (1 << 20);
    let f = File::options().write(true).open(&stale).unwrap();
    f.write_all_at(&sb, 4096).unwrap();
    f.write_all_at(&std::fs::read(&old_img).unwrap(), lv_at)
        .unwrap();
    drop(f);
    let exam = tool("mdadm", &["--examine", s(&stale)]).expect("mdadm --examine");
    assert!(exam.contains("Events : 12"), "{exam}");
    // Its replacement, rebuilt and current: the same PV, found on both current
    // members, is one PV (not two clones), its LVs under both members' devices.
    let fresh = t.path().join("sdc.img");
    std::fs::copy(&member, &fresh).unwrap();
    let mut sb_c = sb.clone();
    md_set_state(&mut sb_c, &state(20, 1));
    File::options()
        .write(true)
        .open(&fresh)
        .unwrap()
        .write_all_at(&sb_c, 4096)
        .unwrap();
    let safe = t.path().join("safe");
    backup(&[
        s(&safe),
        &format!("sda={}", s(&member)),
        &format!("sdb={}", s(&stale)),
        &format!("sdc={}", s(&fresh)),
    ]);
    let m = Mounted::logging(&safe, t.path(), &[], "warn");
    for dev in ["sda", "sdc"] {
        same_tree(
            &tree_digest(&m.dir.join(format!("1/{dev}/lvm/{vg}-root"))),
            &tree_digest(&src),
            &format!("the LV on the array, under {dev}"),
        );
    }
    assert!(
        !m.dir.join("1/sdb/lvm").exists(),
        "the stale member holds no PV of the point"
    );
    assert!(
        !m.log_text().contains("found more than once"),
        "a RAID1 pair is no clone:\n{}",
        m.log_text()
    );
}

/// A disk of 64 MiB of random junk whose one GPT partition is an LVM PV of a new VG
/// (1 MiB extents), the partition attached to a loop device for LVM's tools.
struct JunkPv {
    disk: PathBuf,
    part_start: u64,
    loops: Loops,
    /// The loop device.
    pv: String,
    vg: String,
}

/// Makes a [`JunkPv`] under `dir`, its VG named `prefix` and the process id; `None`
/// where root, lvm2, sfdisk or loop devices are missing.
fn junk_pv_disk(dir: &Path, prefix: &str, rng: &mut StdRng) -> Option<JunkPv> {
    if !fuse_available() || tool("lvm", &["version"]).is_none() || tool("sfdisk", &["-v"]).is_none()
    {
        return None;
    }
    let disk = dir.join("disk.img");
    let mut junk = vec![0u8; 64 << 20];
    rng.fill(&mut junk[..]);
    std::fs::write(&disk, &junk).unwrap();
    sfdisk_script(
        &disk,
        "label: gpt\nstart=2048, type=E6D6D379-F507-44C2-A23C-238F2A3DF928\n",
    );
    let part = sfdisk_parts(&disk).into_iter().find(|p| p.0 == 1).unwrap();
    let mut loops = Loops::default();
    let pv = loops.attach(&disk, part.1, part.2)?;
    let vg = format!("{prefix}{}", std::process::id());
    lvm_run(&["pvcreate", "-q", &pv]);
    lvm_run(&["vgcreate", "-q", "-s", "1m", &vg, &pv]);
    Some(JunkPv {
        disk,
        part_start: part.1,
        loops,
        pv,
        vg,
    })
}

/// `backup --skip-free` leaves out a PV's extents no LV uses, as `pvs --segments`
/// lists them free: restored, the disk holds zeros exactly there (the junk written
/// over the whole PV beforehand is gone) and every other byte as it was.
#[test]
fn skip_free_leaves_out_the_extents_no_lv_uses() {
    let t = tempfile::tempdir().unwrap();
    let mut rng = StdRng::seed_from_u64(93);
    let Some(d) = junk_pv_disk(t.path(), "dsfree", &mut rng) else {
        eprintln!("SKIP skip_free_leaves_out_the_extents_no_lv_uses: needs root, lvm2, sfdisk and loop devices");
        return;
    };
    for name in ["a", "b", "c"] {
        lvm_run(&[
            "lvcreate", "-q", "-an", "-Zn", "-L", "8m", "-n", name, &d.vg,
        ]);
    }
    // A hole between a and c.
    lvm_run(&["lvremove", "-q", "-f", &format!("{}/b", d.vg)]);
    let free = free_pv_segments(&d.pv, d.part_start);
    assert!(free.len() >= 2, "a hole and the tail are free: {free:?}");
    drop(d.loops);
    let original = std::fs::read(&d.disk).unwrap();
    let (_, _, restored) = backup_with_and_without_skip_free(&d.disk, "sda", t.path());
    let got = std::fs::read(&restored).unwrap();
    assert_eq!(got.len(), original.len());
    let block = 64 << 10; // what the backup can skip: whole 64 KiB blocks
    let mut left_out = 0u64;
    for (i, (g, o)) in got.chunks(block).zip(original.chunks(block)).enumerate() {
        if g == o {
            continue;
        }
        let (at, end) = ((i * block) as u64, ((i + 1) * block) as u64);
        assert!(
            free.iter().any(|&(f, n)| f <= at && end <= f + n),
            "block at {at} differs but is not in a free PV segment ({free:?})"
        );
        assert!(
            g.iter().all(|&b| b == 0),
            "block at {at}: left out as zeros"
        );
        left_out += block as u64;
    }
    let free_total: u64 = free.iter().map(|f| f.1).sum();
    assert!(
        left_out * 10 >= free_total * 9,
        "most free extents left out: {left_out} of {free_total} bytes"
    );
}

/// An ext4 image of a generated tree at `img` (`size` bytes) that also held `junk`
/// bytes of random data in a file since deleted by `debugfs`: blocks the bitmaps mark
/// free whose old bytes are still there, as on any used disk.
fn ext4_with_deleted_junk(dir: &Path, img: &Path, size: u64, junk: usize, rng: &mut StdRng) {
    let src = dir.join(format!(
        "{}-src",
        img.file_name().unwrap().to_string_lossy()
    ));
    std::fs::create_dir_all(&src).unwrap();
    let mut data = vec![0u8; junk];
    rng.fill(&mut data[..]);
    std::fs::write(src.join("junk.bin"), &data).unwrap();
    ext4_image(&src, img, 20, size, rng);
    tool("debugfs", &["-w", "-R", "rm junk.bin", s(img)]).expect("debugfs rm");
}

/// The bytes of linear LV `segs` as they lie on `disk` (PV partition at `part_start`,
/// its extents from `pe_start`, 1 MiB each).
fn lv_bytes(disk: &[u8], segs: &[Seg], part_start: u64, pe_start: u64) -> Vec<u8> {
    let mut out = Vec::new();
    for sg in segs {
        assert_eq!(sg.stripes.len(), 1, "a linear segment");
        assert_eq!(sg.start, out.len() as u64);
        let at = (part_start + pe_start + (sg.stripes[0].1 << 20)) as usize;
        out.extend_from_slice(&disk[at..at + sg.len as usize]);
    }
    out
}

/// `--skip-free` looks inside the LVs of a PV, as a server installed on LVM or a VM
/// host with one LV per guest disk lays them out: the free space of an ext4 LV in two
/// segments (extended past another LV) and of the ext4 partition inside an LV holding
/// an MBR disk is left out, mapped back to where the extents lie. Restored, each
/// filesystem differs from its source only in blocks `dumpe2fs` lists as free and
/// `e2fsck -fn` finds it clean; outside the LVs only free extents differ.
#[test]
fn skip_free_leaves_out_the_free_space_inside_logical_volumes() {
    let t = tempfile::tempdir().unwrap();
    let mut rng = StdRng::seed_from_u64(97);
    let Some(d) = junk_pv_disk(t.path(), "dsin", &mut rng) else {
        eprintln!("SKIP skip_free_leaves_out_the_free_space_inside_logical_volumes: needs root, lvm2, sfdisk and loop devices");
        return;
    };
    let lv = |args: &[&str]| {
        let mut v = vec!["lvcreate", "-q", "-an", "-Zn"];
        v.extend_from_slice(args);
        v.push(&d.vg);
        lvm_run(&v);
    };
    lv(&["-L", "12m", "-n", "root"]);
    lv(&["-L", "4m", "-n", "spacer"]);
    lvm_run(&["lvextend", "-q", "-L", "+8m", &format!("{}/root", d.vg)]);
    lv(&["-L", "16m", "-n", "guest"]);
    let segs = segments(&d.vg);
    assert_eq!(
        segs["root"].len(),
        2,
        "root in two pieces: {:?}",
        segs["root"]
    );
    let pe = first_extent_at(&d.pv);
    let pe_start = BTreeMap::from([(d.pv.clone(), pe)]);
    // root: ext4 over the whole LV.
    let root = t.path().join("root.img");
    ext4_with_deleted_junk(t.path(), &root, 20 << 20, 6 << 20, &mut rng);
    write_lv(
        &segs["root"],
        &std::fs::read(&root).unwrap(),
        &pe_start,
        1 << 20,
    );
    // guest: a VM's disk, an MBR with one ext4 partition from 1 MiB.
    let inner = t.path().join("guest-part.img");
    ext4_with_deleted_junk(t.path(), &inner, 15 << 20, 5 << 20, &mut rng);
    let guest = t.path().join("guest.img");
    File::create(&guest).unwrap().set_len(16 << 20).unwrap();
    sfdisk_script(&guest, "label: dos\nstart=2048, type=83\n");
    File::options()
        .write(true)
        .open(&guest)
        .unwrap()
        .write_all_at(&std::fs::read(&inner).unwrap(), 1 << 20)
        .unwrap();
    write_lv(
        &segs["guest"],
        &std::fs::read(&guest).unwrap(),
        &pe_start,
        1 << 20,
    );
    let free = free_pv_segments(&d.pv, d.part_start);
    drop(d.loops);
    let original = std::fs::read(&d.disk).unwrap();
    let (_, _, restored) = backup_with_and_without_skip_free(&d.disk, "sda", t.path());
    let got = std::fs::read(&restored).unwrap();
    assert_eq!(got.len(), original.len());

    // Inside the LVs: only what each filesystem lists as free differs.
    let got_root = t.path().join("got-root.img");
    std::fs::write(&got_root, lv_bytes(&got, &segs["root"], d.part_start, pe)).unwrap();
    let root_differs = differs_only_where_free(&root, &got_root, &root);
    fsck_clean(&got_root);
    let got_guest = lv_bytes(&got, &segs["guest"], d.part_start, pe);
    assert_eq!(
        got_guest[..1 << 20],
        std::fs::read(&guest).unwrap()[..1 << 20],
        "the guest's MBR and gap are kept"
    );
    let got_inner = t.path().join("got-guest-part.img");
    std::fs::write(&got_inner, &got_guest[1 << 20..]).unwrap();
    let inner_differs = differs_only_where_free(&inner, &got_inner, &inner);
    fsck_clean(&got_inner);
    // Most of each deleted file's bytes (whole 64 KiB blocks of the disk) left out.
    assert!(
        root_differs >= 5 << 20 && inner_differs >= 4 << 20,
        "left out inside root {root_differs} bytes, inside guest's partition {inner_differs}"
    );

    // Outside the LVs: only extents no LV uses differ, as zeros.
    let block = 64 << 10;
    let in_lv = |at: u64| {
        segs.values().flatten().any(|sg| {
            let o = d.part_start + pe + (sg.stripes[0].1 << 20);
            o <= at && at < o + sg.len
        })
    };
    for (i, (g, o)) in got.chunks(block).zip(original.chunks(block)).enumerate() {
        let at = (i * block) as u64;
        if g == o || in_lv(at) {
            continue;
        }
        assert!(
            free.iter()
                .any(|&(f, n)| f <= at && at + block as u64 <= f + n),
            "block at {at} differs outside the LVs and free extents ({free:?})"
        );
        assert!(
            g.iter().all(|&b| b == 0),
            "block at {at}: left out as zeros"
        );
    }
}

/// Every mapping of a pool's metadata as `thin_dump` lists it, by data chunk: the
/// (device id, virtual chunk) pairs mapping it. The oracle for `--skip-free` in thin
/// pools.
fn thin_dump_mappings(meta: &Path) -> BTreeMap<u64, Vec<(u64, u64)>> {
    let xml = tool("thin_dump", &[s(meta)]).expect("thin_dump");
    let attr = |l: &str, name: &str| -> u64 {
        let at = l.find(&format!(" {name}=\"")).unwrap() + name.len() + 3;
        l[at..].split('"').next().unwrap().parse().unwrap()
    };
    let mut out: BTreeMap<u64, Vec<(u64, u64)>> = BTreeMap::new();
    let mut dev = 0;
    for l in xml.lines().map(str::trim) {
        if l.starts_with("<device ") {
            dev = attr(l, "dev_id");
        } else if l.starts_with("<single_mapping") {
            let (v, d) = (attr(l, "origin_block"), attr(l, "data_block"));
            out.entry(d).or_default().push((dev, v));
        } else if l.starts_with("<range_mapping") {
            let (v, d) = (attr(l, "origin_begin"), attr(l, "data_begin"));
            for i in 0..attr(l, "length") {
                out.entry(d + i).or_default().push((dev, v + i));
            }
        }
    }
    out
}

/// `backup --skip-free` in a thin pool (the bulk of a Proxmox host's `pve/data`),
/// from the pool's committed metadata: the chunks no thin LV maps, and the chunks a
/// thin LV maps alone whose filesystem calls them free; chunks a snapshot shares are
/// kept even when both filesystems call them free. `vm` holds ext4 with a deleted
/// file; `snap`, its snapshot, shares every chunk but 40 `vm` has since rewritten
/// (20 of them wholly free, 20 not). Restored, each data chunk is zeros exactly where
/// `thin_dump`'s mappings and `dumpe2fs`'s free blocks say it may be left out, and
/// both volumes, read through their mappings, pass `e2fsck -fn`.
#[test]
fn skip_free_in_thin_pools_leaves_out_what_no_volume_needs() {
    let t = tempfile::tempdir().unwrap();
    let disk = t.path().join("d.img");
    let mut rng = StdRng::seed_from_u64(101);
    let mut junk = vec![0u8; 64 << 20];
    rng.fill(&mut junk[..]);
    std::fs::write(&disk, &junk).unwrap();
    let thins = [("vm", 16), ("snap", 16), ("empty", 16)];
    let Some((loops, pv, _)) = thin_pool_disk(&disk, "dsthinfree", &thins) else {
        eprintln!("SKIP skip_free_in_thin_pools_leaves_out_what_no_volume_needs: needs root, lvm2, thin-provisioning-tools and loop devices");
        return;
    };
    let pe = first_extent_at(&pv) as usize;
    drop(loops);
    let img = t.path().join("vm.img");
    ext4_with_deleted_junk(t.path(), &img, 16 << 20, 5 << 20, &mut rng);
    let bytes = std::fs::read(&img).unwrap();
    let chunk = 64usize << 10;
    let (bs, free) = dumpe2fs_free(&img);
    let per = chunk as u64 / bs;
    let wholly_free = |v: u64| {
        free.iter()
            .any(|&(a, b)| a <= v * per && (v + 1) * per - 1 <= b)
    };
    // The 40 chunks vm rewrote: 20 wholly free, 20 not.
    let (fv, uv): (Vec<u64>, Vec<u64>) = (0..256).partition(|&v| wholly_free(v));
    assert!(fv.len() >= 30 && uv.len() >= 20, "{} free chunks", fv.len());
    let rewritten: Vec<u64> = fv[..20].iter().chain(&uv[..20]).copied().collect();
    let slots = shuffled(512, &mut rng);
    let map = |v: u64, d: u64| {
        format!("<single_mapping origin_block=\"{v}\" data_block=\"{d}\" time=\"0\"/>\n")
    };
    let mut xml = String::from("<superblock uuid=\"\" time=\"1\" transaction=\"3\" flags=\"0\" version=\"2\" data_block_size=\"128\" nr_data_blocks=\"512\">\n<device dev_id=\"1\" mapped_blocks=\"256\" transaction=\"0\" creation_time=\"0\" snap_time=\"1\">\n");
    let mut writes = Vec::new();
    for v in 0..256u64 {
        let d = match rewritten.iter().position(|&r| r == v) {
            Some(k) => slots[256 + k],
            None => slots[v as usize],
        };
        xml += &map(v, d);
        writes.push((v, d));
    }
    xml += "</device>\n<device dev_id=\"2\" mapped_blocks=\"256\" transaction=\"1\" creation_time=\"1\" snap_time=\"1\">\n";
    for v in 0..256u64 {
        xml += &map(v, slots[v as usize]);
        writes.push((v, slots[v as usize]));
    }
    xml += "</device>\n<device dev_id=\"3\" mapped_blocks=\"0\" transaction=\"2\" creation_time=\"2\" snap_time=\"2\">\n</device>\n</superblock>\n";
    let meta = thin_restore(t.path(), &xml);
    let f = File::options().write(true).open(&disk).unwrap();
    f.write_all_at(&std::fs::read(&meta).unwrap(), pe as u64)
        .unwrap();
    let data_at = pe + (4 << 20);
    for (v, d) in writes {
        let piece = &bytes[v as usize * chunk..(v as usize + 1) * chunk];
        f.write_all_at(piece, (data_at + d as usize * chunk) as u64)
            .unwrap();
    }
    drop(f);
    let mappings = thin_dump_mappings(&meta);
    assert_eq!(mappings.len(), 296, "thin_dump's reading of the pool");
    let original = std::fs::read(&disk).unwrap();
    let (_, _, restored) = backup_with_and_without_skip_free(&disk, "d", t.path());
    let got = std::fs::read(&restored).unwrap();
    assert_eq!(got.len(), original.len());
    let (mut unmapped, mut alone, mut shared_free) = (0, 0, 0);
    for d in 0..512u64 {
        let at = data_at + d as usize * chunk;
        let (g, o) = (&got[at..at + chunk], &original[at..at + chunk]);
        let may_go = match mappings.get(&d).map(Vec::as_slice) {
            None => {
                unmapped += 1;
                true
            }
            Some([(_, v)]) => {
                alone += usize::from(wholly_free(*v));
                wholly_free(*v)
            }
            Some(m) => {
                shared_free += usize::from(m.iter().all(|&(_, v)| wholly_free(v)));
                false
            }
        };
        if may_go {
            assert!(
                g.iter().all(|&b| b == 0),
                "data chunk {d} ({:?}): left out",
                mappings.get(&d)
            );
        } else {
            assert!(g == o, "data chunk {d} ({:?}): kept", mappings[&d]);
        }
    }
    assert_eq!((unmapped, alone), (216, 40));
    assert!(
        shared_free > 0,
        "shared chunks both volumes call free are kept"
    );
    // Each volume read through its mapping from the restored pool: a clean ext4 that
    // differs from the image only where dumpe2fs says free.
    for dev in [1, 2] {
        let mut vol = vec![0u8; 16 << 20];
        for (d, m) in &mappings {
            for &(_, v) in m.iter().filter(|(id, _)| *id == dev) {
                let at = data_at + *d as usize * chunk;
                vol[v as usize * chunk..][..chunk].copy_from_slice(&got[at..at + chunk]);
            }
        }
        let out = t.path().join(format!("dev{dev}.img"));
        std::fs::write(&out, &vol).unwrap();
        differs_only_where_free(&img, &out, &img);
        fsck_clean(&out);
    }
    // Before the pool's data (label, metadata area, pool metadata) nothing differs;
    // after it, the extents no LV uses are left out.
    assert!(
        got[..data_at] == original[..data_at],
        "the PV's head and the pool's metadata"
    );
    let tail = data_at + 512 * chunk;
    let pv_end = pe + ((64 << 20) - pe) / (1 << 20) * (1 << 20);
    assert!(
        got[tail..pv_end].iter().all(|&b| b == 0),
        "extents no LV uses"
    );
}

/// The bytes of an LV whose `segs` (as `lvs` reports them) lie on the PVs named by
/// device in `pvs`: (that PV's disk, byte offset of the PV on it); extents of
/// `extent` bytes from each PV's `pe_start`. The reading side of [`write_lv`].
fn read_lv(
    segs: &[Seg],
    pvs: &BTreeMap<String, (Vec<u8>, u64)>,
    pe_start: &BTreeMap<String, u64>,
    extent: u64,
) -> Vec<u8> {
    let len = segs.iter().map(|s| s.start + s.len).max().unwrap_or(0);
    let mut out = vec![0u8; len as usize];
    for sg in segs {
        let n = sg.stripes.len() as u64;
        let chunk = if n == 1 { sg.len } else { sg.stripe };
        let mut rel = 0;
        while rel < sg.len {
            let k = rel / chunk;
            let (dev, first) = &sg.stripes[(k % n) as usize];
            let (disk, pv_at) = &pvs[dev];
            let at = (pv_at + pe_start[dev] + first * extent + (k / n) * chunk) as usize;
            let to = (sg.start + rel) as usize;
            out[to..to + chunk as usize].copy_from_slice(&disk[at..at + chunk as usize]);
            rel += chunk;
        }
    }
    out
}

/// `--skip-free` on a VG over two disks backed up together: an ext4 LV whose second
/// segment lies on the other disk, and one striped over both, each with a deleted
/// file, have their free space left out of both devices. Restored, each LV read back
/// where `lvs` places it differs from its image only in blocks `dumpe2fs` lists free
/// and passes `e2fsck -fn`; most of the deleted bytes were left out.
#[test]
fn skip_free_reaches_lvs_spanning_the_devices_of_a_backup() {
    let name = "skip_free_reaches_lvs_spanning_the_devices_of_a_backup";
    let t = tempfile::tempdir().unwrap();
    let mut rng = StdRng::seed_from_u64(103);
    // Disk a: junk with a GPT partition holding the first PV; disk b: junk, the whole
    // of it the second PV of the same VG.
    let Some(JunkPv {
        disk: a,
        part_start,
        mut loops,
        pv: pa,
        vg,
    }) = junk_pv_disk(t.path(), "dsspan", &mut rng)
    else {
        eprintln!("SKIP {name}: needs root, lvm2, sfdisk and loop devices");
        return;
    };
    let b = t.path().join("b.img");
    let mut junk = vec![0u8; 40 << 20];
    rng.fill(&mut junk[..]);
    std::fs::write(&b, &junk).unwrap();
    let Some(pb) = loops.attach(&b, 0, 40 << 20) else {
        eprintln!("SKIP {name}: no loop devices");
        return;
    };
    tool("pvcreate", &["-q", &pb]).expect("pvcreate");
    lvm_run(&["vgextend", "-q", &vg, &pb]);
    // wide: 20 MiB on a, then 12 MiB on b; striped: 16 MiB over both.
    lvm_run(&[
        "lvcreate", "-q", "-an", "-Zn", "-L", "20m", "-n", "wide", &vg, &pa,
    ]);
    lvm_run(&["lvextend", "-q", "-L", "32m", &format!("{vg}/wide"), &pb]);
    lvm_run(&[
        "lvcreate", "-q", "-an", "-Zn", "-L", "16m", "-i", "2", "-I", "64k", "-n", "striped", &vg,
    ]);
    let segs = segments(&vg);
    assert_eq!(segs["wide"].len(), 2, "wide spans the disks: {segs:?}");
    assert_eq!(segs["striped"][0].stripes.len(), 2);
    let pe_start: BTreeMap<String, u64> = [&pa, &pb]
        .iter()
        .map(|d| (d.to_string(), first_extent_at(d)))
        .collect();
    let mut images = BTreeMap::new();
    for (lv, size, junk) in [
        ("wide", 32u64 << 20, 8usize << 20),
        ("striped", 16 << 20, 5 << 20),
    ] {
        let img = t.path().join(format!("{lv}.img"));
        ext4_with_deleted_junk(t.path(), &img, size, junk, &mut rng);
        write_lv(&segs[lv], &std::fs::read(&img).unwrap(), &pe_start, 1 << 20);
        images.insert(lv, (img, junk as u64));
    }
    drop(loops);
    let safe = t.path().join("safe");
    let o = ds(&[
        "backup",
        s(&safe),
        &format!("a={}", s(&a)),
        &format!("b={}", s(&b)),
        "--skip-free",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mut pvs = BTreeMap::new();
    for (dev, disk, pv_at) in [(&pa, "a", part_start), (&pb, "b", 0)] {
        let out = t.path().join(format!("restored-{disk}.img"));
        ok(&["restore", s(&safe), "1", disk, s(&out)]);
        pvs.insert(dev.to_string(), (std::fs::read(&out).unwrap(), pv_at));
    }
    for (lv, (img, junk)) in &images {
        let got = t.path().join(format!("got-{lv}.img"));
        std::fs::write(&got, read_lv(&segs[*lv], &pvs, &pe_start, 1 << 20)).unwrap();
        let differ = differs_only_where_free(img, &got, img);
        fsck_clean(&got);
        eprintln!("{lv}: {differ} bytes left out of {junk} deleted");
        assert!(
            differ * 10 >= junk * 8,
            "{lv}: {differ} of {junk} deleted bytes left out"
        );
    }
}

/// A PV on an md RAID5 backed up as its three member disks (LVM on software RAID5, as
/// older servers and NAS boxes are laid out): the array is assembled from the
/// members and its LV shown under every member's `lvm/`, its tree the tree its
/// ext4 was made from. The PV, VG and LV are LVM's, made on the array's plaintext
/// before the test stripes it (the md test's member writer, checked against GRUB).
#[test]
fn a_pv_on_an_assembled_raid5_is_found() {
    let name = "a_pv_on_an_assembled_raid5_is_found";
    if !have_lvm(name) {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let mut rng = StdRng::seed_from_u64(93);
    let array = t.path().join("array.img");
    File::create(&array).unwrap().set_len(24 << 20).unwrap();
    let dir = t.path();
    let whole = (0, 24 << 20);
    let Some(lv) = one_lv_in(&array, whole, "dsr5", "data", (12, 16), dir, &mut rng, name) else {
        return;
    };
    let (vg, src, img) = (lv.vg, lv.src, lv.img);
    let members = striped_members(
        t.path(),
        5,
        2,
        3,
        64 << 10,
        &std::fs::read(&array).unwrap(),
        &mut rng,
    );
    let safe = t.path().join("safe");
    backup_members(&safe, &members);
    let m = Mounted::new(&safe, t.path(), &[]);
    for i in 0..3 {
        // Every member holds some of the LV's extents: listed under each.
        let lv = m.dir.join(format!("1/m{i}/lvm/{vg}-data"));
        assert_lv_shown(&lv, &src, &img, &format!("the LV on the array, under m{i}"));
    }
}

/// A PV in the second partition of an md RAID1 made on whole disks and then
/// partitioned (`md0p2`): the member's superblock is at 4 KiB, the array's partition
/// table 1 MiB in, so neither the disk nor its partitions hold the PV where a disk
/// would. Its LV shows under the member's `lvm/`, byte for byte and with the tree its
/// ext4 was made from; the PV, VG and LV are LVM's, made on the partition before the
/// test wraps the array in a member.
#[test]
fn a_pv_in_a_partition_of_an_md_array_is_found() {
    let name = "a_pv_in_a_partition_of_an_md_array_is_found";
    if !have_lvm(name) {
        return;
    }
    if !have_tool("sfdisk", "fdisk", name) {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let mut rng = StdRng::seed_from_u64(94);
    let array = t.path().join("array.img");
    File::create(&array).unwrap().set_len(24 << 20).unwrap();
    sfdisk_script(
        &array,
        "label: gpt\nstart=2048, size=2048\nstart=4096, size=40960\n",
    );
    let (_, start, len) = sfdisk_parts(&array)[1];
    let dir = t.path();
    let part = (start, len);
    let Some(lv) = one_lv_in(&array, part, "dsmp", "data", (12, 16), dir, &mut rng, name) else {
        return;
    };
    let (vg, src, img) = (lv.vg, lv.src, lv.img);
    let member = t.path().join("member.img");
    let sectors = (26u64 << 20) / 512;
    File::create(&member)
        .unwrap()
        .set_len(sectors * 512)
        .unwrap();
    let m = std::fs::OpenOptions::new()
        .write(true)
        .open(&member)
        .unwrap();
    let sb = md_superblock(2048, (24 << 20) / 512, sectors, &mut rng);
    m.write_all_at(&sb, 4096).unwrap();
    m.write_all_at(&std::fs::read(&array).unwrap(), 1 << 20)
        .unwrap();
    drop(m);
    let safe = t.path().join("safe");
    backup_members(&safe, &[&member]);
    let m = Mounted::new(&safe, t.path(), &[]);
    let lv = m.dir.join(format!("1/m0/lvm/{vg}-data"));
    assert_lv_shown(&lv, &src, &img, "the LV in the array's partition");
}

/// Two disks cloned from one (VMs made from a template: the same PV UUID, VG id and
/// LV names on both), each going on alone: b's LV got other contents and was
/// extended (its metadata newer than a's). Each disk's `lvm/` shows its own LV,
/// mapped by its own metadata and read from its own disk: a's LV byte for byte the
/// ext4 written there and its tree, b's LV the size b's `lvs` gives, with b's ext4
/// and tree. LVM's own tools made the PV, VG and LV and the extension, each disk
/// attached alone.
#[test]
fn cloned_disks_show_their_own_lvs() {
    let name = "cloned_disks_show_their_own_lvs";
    if !have_lvm(name) {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let mut rng = StdRng::seed_from_u64(95);
    let (a, b) = (t.path().join("a.img"), t.path().join("b.img"));
    File::create(&a).unwrap().set_len(32 << 20).unwrap();
    let dir_a = t.path().join("a");
    std::fs::create_dir(&dir_a).unwrap();
    let whole = (0, 32 << 20);
    let Some(lv) = one_lv_in(&a, whole, "dscl", "data", (8, 12), &dir_a, &mut rng, name) else {
        return;
    };
    std::fs::copy(&a, &b).unwrap();

    // The clone goes on: new contents, then 4 MiB more.
    let mut loops = Loops::default();
    let pv_b = loops.attach(&b, 0, 32 << 20).unwrap();
    let (src_b, img_b) = (t.path().join("src-b"), t.path().join("b-data.img"));
    ext4_image(&src_b, &img_b, 10, 8 << 20, &mut rng);
    // The segments `lvs` gave on a's loop device, on b's.
    let segs_b: Vec<Seg> = lv
        .segs
        .iter()
        .map(|sg| Seg {
            start: sg.start,
            len: sg.len,
            stripe: sg.stripe,
            stripes: sg.stripes.iter().map(|x| (pv_b.clone(), x.1)).collect(),
        })
        .collect();
    write_lv(
        &segs_b,
        &std::fs::read(&img_b).unwrap(),
        &BTreeMap::from([(pv_b.clone(), lv.pe_start)]),
        1 << 20,
    );
    let full = format!("{}/data", lv.vg);
    lvm_run(&["lvextend", "-q", "-L", "+4m", &full]);
    let size_b: u64 = tool(
        "lvs",
        &[
            "--driverloaded",
            "n",
            "--noheadings",
            "--units",
            "b",
            "--nosuffix",
            "-o",
            "lv_size",
            &full,
        ],
    )
    .unwrap()
    .trim()
    .parse()
    .unwrap();
    assert_eq!(size_b, 12 << 20);
    drop(loops);

    let safe = t.path().join("safe");
    backup(&[s(&safe), &format!("a={}", s(&a)), &format!("b={}", s(&b))]);
    let m = Mounted::logging(&safe, t.path(), &[], "warn");
    let lv_a = m.dir.join(format!("1/a/lvm/{}-data", lv.vg));
    let lv_b = m.dir.join(format!("1/b/lvm/{}-data", lv.vg));
    assert_lv_shown(&lv_a, &lv.src, &lv.img, "a's LV, by a's own metadata");
    let got_b = std::fs::read(lv_b.with_extension("img")).unwrap();
    assert_eq!(
        got_b.len() as u64,
        size_b,
        "b's LV as b's metadata sizes it"
    );
    assert!(
        got_b[..8 << 20] == std::fs::read(&img_b).unwrap()[..],
        "b's LV bytes"
    );
    same_tree(&tree_digest(&lv_b), &tree_digest(&src_b), "b's LV tree");
    assert!(
        m.log_text().contains("are found more than once"),
        "the clones are logged:\n{}",
        m.log_text()
    );
}

/// LUKS inside an LV (an encrypted data LV, a VM's encrypted disk): with the
/// passphrase, the LV's directory shows the plaintext's tree and the device's `luks/`
/// lists the plaintext, byte for byte the bytes cryptsetup encrypted in place
/// (`cryptsetup reencrypt --encrypt` of a known ext4, then written where `lvs`
/// places the LV).
#[test]
fn luks_inside_an_lv_opens() {
    let name = "luks_inside_an_lv_opens";
    if !have_lvm(name) || !have_tool("cryptsetup", "cryptsetup-bin", name) {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let mut rng = StdRng::seed_from_u64(96);
    let disk = t.path().join("d.img");
    File::create(&disk).unwrap().set_len(32 << 20).unwrap();
    let mut loops = Loops::default();
    let Some(pv) = loops.attach(&disk, 0, 32 << 20) else {
        eprintln!("SKIP {name}: no loop devices");
        return;
    };
    let lv = ext4_in_one_lv(&pv, "dslk", "secret", 16, 4, t.path(), &mut rng);
    // An ext4 of 12 MiB in 16, encrypted in place: the header takes the last 4 MiB's
    // room, the plaintext is the first 12 MiB.
    let (src, plain) = (t.path().join("src-luks"), t.path().join("plain.img"));
    ext4_image(&src, &plain, 10, 12 << 20, &mut rng);
    let luks = t.path().join("luks.img");
    std::fs::copy(&plain, &luks).unwrap();
    File::options()
        .write(true)
        .open(&luks)
        .unwrap()
        .set_len(16 << 20)
        .unwrap();
    let key = t.path().join("key");
    std::fs::write(&key, b"lv passphrase").unwrap();
    luks_encrypt(
        &luks,
        &key,
        4,
        &[&["--type", "luks2"][..], &LUKS_FAST].concat(),
    );
    let uuid = tool("cryptsetup", &["luksUUID", s(&luks)]).unwrap();
    write_lv(
        &lv.segs,
        &std::fs::read(&luks).unwrap(),
        &BTreeMap::from([(pv.clone(), lv.pe_start)]),
        1 << 20,
    );
    drop(loops);
    let safe = t.path().join("safe");
    backup(&[s(&safe), &format!("d={}", s(&disk))]);
    let m = Mounted::new(&safe, t.path(), &["--key-file", s(&key)]);
    let dir = m.dir.join("1/d");
    same_tree(
        &tree_digest(&dir.join(format!("lvm/{}-secret", lv.vg))),
        &tree_digest(&src),
        "the tree inside the encrypted LV",
    );
    // The data moved behind the header: what cryptsetup encrypted, the first 12 MiB
    // of the plaintext, is the ext4 (the rest of the data area holds what was left
    // behind, never encrypted).
    let got = std::fs::read(dir.join(format!("luks/luks-{uuid}.img"))).unwrap();
    let want = std::fs::read(&plain).unwrap();
    assert!(
        got.len() >= want.len() && got[..want.len()] == want[..],
        "the plaintext, byte for byte ({} bytes)",
        got.len()
    );
    assert_eq!(
        sha256_file(&dir.join(format!("lvm/{}-secret.img", lv.vg))),
        sha256_file(&luks),
        "the LV itself stays the ciphertext"
    );
}

/// A RAID1 LV and an old-style mirror LV over two disks, described as LVM describes
/// them (restored with vgcfgrestore: without device-mapper LVM will not create them),
/// an ext4 image written to every leg where `lvs -a` places it. Each LV's tree is its
/// source tree, and GRUB's LVM driver reads the same files from the disks. With one
/// disk missing the other leg serves (and the log says so). With dm-raid superblocks
/// on the metadata sub-LVs naming leg 0 failed and behind in events, and leg 0's data
/// overwritten, leg 1 is read. With both legs in sync and disk a's leg unreadable in
/// places (a `--skip-unreadable` backup of a failing disk), those reads come from the
/// other leg. `--skip-free` leaves out only the extents `pvs --segments` calls free,
/// never a leg or metadata sub-LV.
#[test]
fn mirrored_lvs_read_from_a_leg_in_sync() {
    if !have_lvm("mirrored_lvs") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let (a, b) = (t.path().join("a.img"), t.path().join("b.img"));
    for d in [&a, &b] {
        File::create(d).unwrap().set_len(64 << 20).unwrap();
    }
    let mut loops = Loops::default();
    let (Some(pa), Some(pb)) = (loops.attach(&a, 0, 64 << 20), loops.attach(&b, 0, 64 << 20))
    else {
        eprintln!("SKIP mirrored_lvs: no loop devices");
        return;
    };
    let vg = format!("dsmir{}", std::process::id());
    tool("pvcreate", &["-q", &pa, &pb]).expect("pvcreate");
    lvm_run(&["vgcreate", "-q", "-s", "1m", &vg, &pa, &pb]);
    let lv = |n: usize, name: &str, visible: bool, seg: &str| lv_section(n, name, visible, seg);
    let linear = |count: u64, pv: &str, at: u64| {
        format!("extent_count = {count}\ntype = \"striped\"\nstripe_count = 1\nstripes = [\"{pv}\", {at}]")
    };
    let lvs = [
        lv(1, "mir", true, "extent_count = 24\ntype = \"raid1\"\ndevice_count = 2\nregion_size = 1024\nraids = [\"mir_rmeta_0\", \"mir_rimage_0\", \"mir_rmeta_1\", \"mir_rimage_1\"]"),
        lv(2, "mir_rmeta_0", false, &linear(1, "pv0", 0)),
        lv(3, "mir_rimage_0", false, &linear(24, "pv0", 1)),
        lv(4, "mir_rmeta_1", false, &linear(1, "pv1", 0)),
        lv(5, "mir_rimage_1", false, &linear(24, "pv1", 1)),
        lv(6, "old", true, "extent_count = 16\ntype = \"mirror\"\nmirror_count = 2\nmirror_log = \"old_mlog\"\nregion_size = 1024\nmirrors = [\"old_mimage_0\", 0, \"old_mimage_1\", 0]"),
        lv(7, "old_mlog", false, &linear(1, "pv0", 25)),
        lv(8, "old_mimage_0", false, &linear(16, "pv0", 26)),
        lv(9, "old_mimage_1", false, &linear(16, "pv1", 26)),
    ];
    restore_with_lvs(t.path(), &vg, &lvs);
    // Where LVM places each leg.
    let segs = segments_all(&vg);
    let pe = |dev: &str| first_extent_at(dev);
    let leg_at = |name: &str| {
        let (dev, first) = &segs[&format!("[{name}]")];
        (dev.clone(), pe(dev) + first * (1 << 20))
    };
    let mut rng = StdRng::seed_from_u64(31);
    let (src, img) = (t.path().join("src"), t.path().join("mir.img"));
    ext4_image(&src, &img, 24, 24 << 20, &mut rng);
    let (osrc, oimg) = (t.path().join("osrc"), t.path().join("old.img"));
    ext4_image(&osrc, &oimg, 12, 16 << 20, &mut rng);
    let write_at = write_dev;
    let (bytes, obytes) = (std::fs::read(&img).unwrap(), std::fs::read(&oimg).unwrap());
    for leg in ["mir_rimage_0", "mir_rimage_1"] {
        let (dev, at) = leg_at(leg);
        write_at(&dev, at, &bytes);
    }
    for leg in ["old_mimage_0", "old_mimage_1"] {
        let (dev, at) = leg_at(leg);
        write_at(&dev, at, &obytes);
    }
    let files: Vec<String> = ["file 0.bin", "sub/file 1.bin", "sub/deeper/file 5.bin"]
        .map(String::from)
        .to_vec();
    // GRUB's view of the same disks.
    if tool("grub-fstest", &["--help"]).is_some() {
        for (vol, tree) in [
            (format!("lvm/{vg}-mir"), &src),
            (format!("lvm/{vg}-old"), &osrc),
        ] {
            for f in &files {
                if !tree.join(f).exists() {
                    continue;
                }
                grub_cmp(&[&a, &b], &vol, tree, f, "");
            }
        }
    } else {
        eprintln!("mirrored_lvs: GRUB's reading not compared (no grub-fstest)");
    }
    // --skip-free: junk in the extents no LV (nor leg, nor metadata sub-LV) uses is
    // left out; everything else, both legs included, restores byte for byte.
    let free: Vec<Vec<(u64, u64)>> = [&pa, &pb].iter().map(|d| free_pv_segments(d, 0)).collect();
    assert!(free.iter().all(|f| !f.is_empty()), "{free:?}");
    for (dev, f) in [&pa, &pb].iter().zip(&free) {
        for &(at, len) in f {
            let mut j = vec![0u8; len as usize];
            rng.fill(&mut j[..]);
            write_at(dev, at, &j);
        }
    }
    let lean = t.path().join("lean");
    ok(&[
        "backup",
        "--skip-free",
        s(&lean),
        &format!("a={}", s(&a)),
        &format!("b={}", s(&b)),
    ]);
    for (name, (disk, f)) in ["a", "b"].iter().zip([&a, &b].iter().zip(&free)) {
        let out = t.path().join(format!("lean-{name}.img"));
        ok(&["restore", s(&lean), "1", name, s(&out)]);
        let (got, want) = (std::fs::read(&out).unwrap(), std::fs::read(disk).unwrap());
        let block = 64 << 10;
        for (i, (g, w)) in got.chunks(block).zip(want.chunks(block)).enumerate() {
            let at = (i * block) as u64;
            if g != w {
                assert!(
                    f.iter()
                        .any(|&(o, n)| o <= at && at + block as u64 <= o + n)
                        && g.iter().all(|&x| x == 0),
                    "disk {name}: block at {at} differs outside the unused extents {f:?}"
                );
            }
        }
        assert_ne!(got, want, "disk {name}: the junk was left out");
    }
    let safe = t.path().join("safe");
    backup(&[s(&safe), &format!("a={}", s(&a)), &format!("b={}", s(&b))]);
    // Point 2: only disk b.
    backup(&[s(&safe), &format!("b={}", s(&b))]);
    // Point 3: dm-raid superblocks say leg 0 failed (leg 1 has more events and marks
    // position 0 failed); leg 0's data is overwritten.
    let sb = |position: u32, events: u64, failed: u64| {
        let mut b = vec![0u8; 4096];
        b[0..4].copy_from_slice(&0x6452_6D44u32.to_le_bytes());
        b[8..12].copy_from_slice(&2u32.to_le_bytes());
        b[12..16].copy_from_slice(&position.to_le_bytes());
        b[16..24].copy_from_slice(&events.to_le_bytes());
        b[24..32].copy_from_slice(&failed.to_le_bytes());
        b[32..40].copy_from_slice(&u64::MAX.to_le_bytes());
        b[48..52].copy_from_slice(&1u32.to_le_bytes());
        b
    };
    let (d0, m0) = leg_at("mir_rmeta_0");
    let (d1, m1) = leg_at("mir_rmeta_1");
    write_at(&d0, m0, &sb(0, 10, 0));
    write_at(&d1, m1, &sb(1, 12, 1));
    let (dl, l0) = leg_at("mir_rimage_0");
    let mut junk = vec![0u8; 4 << 20];
    rng.fill(&mut junk[..]);
    write_at(&dl, l0, &junk);
    drop(loops);
    backup(&[s(&safe), &format!("a={}", s(&a)), &format!("b={}", s(&b))]);
    // Point 4: both legs in sync again, leg 0 whole again, and disk a failing in three
    // places inside leg 0 (a --skip-unreadable backup): those reads come from leg 1.
    let file_of = |dev: &str| if dev == pa { a.clone() } else { b.clone() };
    write_at(s(&file_of(&d0)), m0, &sb(0, 14, 0));
    write_at(s(&file_of(&d1)), m1, &sb(1, 14, 0));
    write_at(s(&file_of(&dl)), l0, &bytes);
    let bad = [
        (l0 + 3 * 4096, 4096),
        (l0 + (1 << 20) + 7 * 512, 512),
        (l0 + (5 << 20), 96 << 10),
    ];
    let failing = t.path().join("failing-a");
    std::fs::create_dir(&failing).unwrap();
    let server =
        common::failing::serve_failing(&failing, std::fs::read(file_of(&dl)).unwrap(), &bad);
    let (fa, fb) = if file_of(&dl) == a {
        (failing.join("disk"), b.clone())
    } else {
        (a.clone(), failing.join("disk"))
    };
    let o = ds(&[
        "backup",
        s(&safe),
        &format!("a={}", s(&fa)),
        &format!("b={}", s(&fb)),
        "--skip-unreadable",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    drop(server);

    let m = Mounted::new(&safe, t.path(), &[]);
    let lvdir = |p: u32, dev: &str, name: &str| m.dir.join(format!("{p}/{dev}/lvm/{vg}-{name}"));
    for dev in ["a", "b"] {
        // The legs and metadata sub-LVs stay hidden, as `lvs` hides them.
        assert_eq!(
            lv_names(&m.dir.join(format!("1/{dev}/lvm")), &vg),
            ["mir", "mir.img", "old", "old.img"]
        );
        same_tree(
            &tree_digest(&lvdir(1, dev, "mir")),
            &tree_digest(&src),
            "raid1",
        );
        same_tree(
            &tree_digest(&lvdir(1, dev, "old")),
            &tree_digest(&osrc),
            "mirror",
        );
    }
    assert_eq!(sha256_file(&lvdir(1, "a", "mir.img")), sha256_file(&img));
    same_tree(
        &tree_digest(&lvdir(2, "b", "mir")),
        &tree_digest(&src),
        "degraded",
    );
    same_tree(
        &tree_digest(&lvdir(2, "b", "old")),
        &tree_digest(&osrc),
        "degraded",
    );
    same_tree(
        &tree_digest(&lvdir(3, "a", "mir")),
        &tree_digest(&src),
        "stale leg 0",
    );
    let log = m.log_text();
    assert!(log.contains("read from leg mir_rimage_1 of 2"), "{log}");
    assert_eq!(
        sha256_file(&lvdir(4, "a", "mir.img")),
        sha256_file(&img),
        "leg 0 unreadable in places"
    );
    same_tree(
        &tree_digest(&lvdir(4, "b", "mir")),
        &tree_digest(&src),
        "leg 0 unreadable in places",
    );
    let log = m.log_text();
    assert!(
        log.contains("RAID1 LV mir") && log.contains("read from the other copies instead"),
        "{log}"
    );
}

/// `restore --volume lvm/VG-LV.img`: one LV (in two segments, another LV between
/// them) written as it was at a point, to a new file and, with `--only-differing`,
/// over a copy of its current bytes after part of it was overwritten: both equal the
/// LV's bytes at backup (read where `lvs` places its segments), only the overwritten
/// blocks are written, and the other LV is never touched. Bad names get one-line
/// errors.
#[test]
fn one_lv_is_restored_on_its_own() {
    if !have_lvm("one_lv_is_restored_on_its_own") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let disk = t.path().join("d.img");
    File::create(&disk).unwrap().set_len(48 << 20).unwrap();
    let mut loops = Loops::default();
    let Some(pv) = loops.attach(&disk, 0, 48 << 20) else {
        eprintln!("SKIP one_lv_is_restored_on_its_own: no loop devices");
        return;
    };
    let vg = format!("dsrv{}", std::process::id());
    tool("pvcreate", &["-q", &pv]).expect("pvcreate");
    lvm_run(&["vgcreate", "-q", "-s", "1m", &vg, &pv]);
    for (name, size) in [("db", "8m"), ("other", "4m")] {
        lvm_run(&["lvcreate", "-q", "-an", "-Zn", "-L", size, "-n", name, &vg]);
    }
    lvm_run(&["lvextend", "-q", "-L", "20m", &format!("{vg}/db")]);
    let segs = segments(&vg);
    assert_eq!(segs["db"].len(), 2, "db in two segments: {segs:?}");
    let pe_start = first_extent_at(&pv);
    let mut rng = StdRng::seed_from_u64(41);
    let (src, img) = (t.path().join("src"), t.path().join("db.img"));
    ext4_image(&src, &img, 20, 20 << 20, &mut rng);
    let starts = BTreeMap::from([(pv.clone(), pe_start)]);
    write_lv(&segs["db"], &std::fs::read(&img).unwrap(), &starts, 1 << 20);
    let mut other = vec![0u8; 4 << 20];
    rng.fill(&mut other[..]);
    write_lv(&segs["other"], &other, &starts, 1 << 20);
    drop(loops);
    let safe = t.path().join("safe");
    backup(&[s(&safe), &format!("d={}", s(&disk))]);
    let want = lv_bytes(&std::fs::read(&disk).unwrap(), &segs["db"], 0, pe_start);
    assert_eq!(want, std::fs::read(&img).unwrap());
    let vol = format!("lvm/{vg}-db.img");

    let out = t.path().join("out.img");
    ok(&["restore", s(&safe), "1", "d", s(&out), "--volume", &vol]);
    assert!(std::fs::read(&out).unwrap() == want, "restored LV");

    // The LV as it is now: 3 MiB of its second segment overwritten.
    let mut now = want.clone();
    let hit = 12 << 20;
    rng.fill(&mut now[hit..hit + (3 << 20)]);
    let cur = t.path().join("current.img");
    std::fs::write(&cur, &now).unwrap();
    let o = ds(&[
        "restore",
        s(&safe),
        "1",
        "d",
        s(&cur),
        "--volume",
        &vol,
        "--only-differing",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(std::fs::read(&cur).unwrap() == want, "rolled back");
    assert!(
        err.contains(&format!("({} bytes) differed", 3 << 20)),
        "{err}"
    );

    let restore_fails = |more: &[&str]| {
        let mut args = vec!["restore", s(&safe), "1", "d", s(&out), "--volume"];
        args.extend_from_slice(more);
        fails(&args)
    };
    let e = restore_fails(&["lvm/nope.img"]);
    assert!(
        e.contains("no such entry") && e.contains(&format!("{vg}-db.img")),
        "{e}"
    );
    assert_eq!(e.trim().lines().count(), 1, "{e}");
    let e = restore_fails(&[&vol, "--partition", "1"]);
    assert!(e.contains("--volume and --partition"), "{e}");
    let e = restore_fails(&["lvm"]);
    assert!(e.contains("not a raw image"), "{e}");
}

/// RAID5, RAID6, RAID10 and RAID0 LVs over five disks, described as LVM describes
/// them (restored with vgcfgrestore: without dm-raid LVM creates none), each holding
/// an ext4 image striped over its image sub-LVs where `lvs -a` places them, as md
/// lays arrays out (tests/common's `striped_areas`, the encoder GRUB's md driver
/// checks in tests/md; RAID6 in `raid6_zr`, LVM's default). GRUB's LVM driver reads
/// every file of the RAID5 and RAID6 LVs from the same disks, whole and with a disk
/// missing: that is the check that the layout is dm-raid's. Each LV's tree is its
/// source tree with every disk backed up, with one disk missing (parity, or the
/// other copy), and the RAID6 and RAID10 ones with two; the RAID5 with two missing
/// is not shown and the log says why. dm-raid superblocks naming a RAID5 image stale
/// (its data overwritten) leave it out. `--skip-free` leaves out what each LV's ext4
/// calls free, and nothing else (whole stripes, parity kept consistent).
#[test]
fn raid_lvs_read_as_dm_raid_lays_them_out() {
    let name = "raid_lvs_read_as_dm_raid_lays_them_out";
    if !have_lvm(name) {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let disks: Vec<PathBuf> = "abcde"
        .chars()
        .map(|c| t.path().join(format!("{c}.img")))
        .collect();
    for d in &disks {
        File::create(d).unwrap().set_len(48 << 20).unwrap();
    }
    let mut loops = Loops::default();
    let mut devs = Vec::new();
    for d in &disks {
        let Some(dev) = loops.attach(d, 0, 48 << 20) else {
            eprintln!("SKIP {name}: no loop devices");
            return;
        };
        devs.push(dev);
    }
    let vg = format!("dsraid{}", std::process::id());
    let dev_refs: Vec<&str> = devs.iter().map(String::as_str).collect();
    tool("pvcreate", &[&["-q"], &dev_refs[..]].concat()).expect("pvcreate");
    lvm_run(&[&["vgcreate", "-q", "-s", "1m", &vg], &dev_refs[..]].concat());
    // (LV, segment type, PVs, first extent of rmeta (rimage follows), extents per
    // image, LV extents, md level and layout)
    let arrays = [
        ("r5", "raid5", vec![0, 1, 2], 0, 8, 16, 5, 2),
        ("r6", "raid6", vec![0, 1, 2, 3, 4], 9, 5, 15, 6, 8),
        ("r10", "raid10", vec![0, 1, 2, 3], 18, 8, 16, 10, 0x102),
        ("r0", "raid0", vec![2, 3], 27, 4, 8, 0, 0),
    ];
    let mut lvs = Vec::new();
    for (lv, kind, pvs, at, per, extents, _, _) in &arrays {
        let linear = |count: u64, pv: usize, at: u64| {
            format!("extent_count = {count}\ntype = \"striped\"\nstripe_count = 1\nstripes = [\"pv{pv}\", {at}]")
        };
        let mut names = Vec::new();
        for (i, &pv) in pvs.iter().enumerate() {
            let (meta, image) = (format!("{lv}_rmeta_{i}"), format!("{lv}_rimage_{i}"));
            if *kind != "raid0" {
                lvs.push(lv_section(lvs.len() + 1, &meta, false, &linear(1, pv, *at)));
                names.push(format!("\"{meta}\""));
            }
            lvs.push(lv_section(
                lvs.len() + 1,
                &image,
                false,
                &linear(*per, pv, at + 1),
            ));
            names.push(format!("\"{image}\""));
        }
        let body = if *kind == "raid0" {
            format!("extent_count = {extents}\ntype = \"raid0\"\nstripe_count = {}\nstripe_size = 128\nraid0_lvs = [{}]", pvs.len(), names.join(", "))
        } else {
            format!("extent_count = {extents}\ntype = \"{kind}\"\ndevice_count = {}\nregion_size = 1024\nstripe_size = 128\nraids = [{}]", pvs.len(), names.join(", "))
        };
        lvs.push(lv_section(lvs.len() + 1, lv, true, &body));
    }
    restore_with_lvs(t.path(), &vg, &lvs);
    let segs = segments_all(&vg);
    let place = |sub: &str| {
        let (dev, first) = &segs[&format!("[{sub}]")];
        (dev.clone(), first_extent_at(dev) + first * (1 << 20))
    };
    let mut rng = StdRng::seed_from_u64(57);
    let mut srcs = BTreeMap::new();
    for (lv, _, pvs, _, per, extents, level, layout) in &arrays {
        let (src, img) = (
            t.path().join(format!("{lv}-src")),
            t.path().join(format!("{lv}.img")),
        );
        ext4_image(&src, &img, 10, (extents - 1) << 20, &mut rng);
        with_deleted_junk(&img, t.path(), &mut rng);
        let fs = std::fs::read(&img).unwrap();
        let (areas, _) = striped_areas(*level, *layout, pvs.len(), 64 << 10, &fs);
        for (i, area) in areas.iter().enumerate() {
            let (dev, at) = place(&format!("{lv}_rimage_{i}"));
            write_dev(&dev, at, &area[..area.len().min((*per << 20) as usize)]);
        }
        srcs.insert(lv.to_string(), (src, fs));
    }
    // GRUB's view of the RAID5 and RAID6 LVs, whole and without disk b.
    if tool("grub-fstest", &["--help"]).is_some() {
        for lv in ["r5", "r6"] {
            let src = &srcs[lv].0;
            for (kept, what) in [
                (vec![0, 1, 2, 3, 4], "whole"),
                (vec![0, 2, 3, 4], "without b"),
            ] {
                let kept: Vec<&Path> = kept.iter().map(|&i| disks[i].as_path()).collect();
                for f in files_in(src) {
                    grub_cmp(&kept, &format!("lvm/{vg}-{lv}"), src, &f, what);
                }
            }
        }
    } else {
        eprintln!("{name}: GRUB's reading not compared (no grub-fstest)");
    }
    let sources = |kept: &[usize]| -> Vec<String> {
        kept.iter()
            .map(|&i| format!("{}={}", (b'a' + i as u8) as char, s(&disks[i])))
            .collect()
    };
    let safe = t.path().join("safe");
    for kept in [vec![0, 1, 2, 3, 4], vec![0, 2, 3, 4], vec![0, 3, 4]] {
        let mut args = vec![s(&safe).to_string()];
        args.extend(sources(&kept));
        backup(&args.iter().map(String::as_str).collect::<Vec<_>>());
    }
    // Point 4: dm-raid superblocks on r5's metadata sub-LVs: images 0 and 2 at 12
    // events marking position 1 failed, image 1 behind at 10; its data overwritten.
    let sb = |position: u32, events: u64, failed: u64| {
        let mut b = vec![0u8; 4096];
        b[0..4].copy_from_slice(&0x6452_6D44u32.to_le_bytes());
        b[8..12].copy_from_slice(&3u32.to_le_bytes());
        b[12..16].copy_from_slice(&position.to_le_bytes());
        b[16..24].copy_from_slice(&events.to_le_bytes());
        b[24..32].copy_from_slice(&failed.to_le_bytes());
        b[32..40].copy_from_slice(&u64::MAX.to_le_bytes());
        b[48..52].copy_from_slice(&5u32.to_le_bytes());
        b
    };
    for (i, events) in [(0u32, 12u64), (1, 10), (2, 12)] {
        let (dev, at) = place(&format!("r5_rmeta_{i}"));
        write_dev(&dev, at, &sb(i, events, if events == 12 { 2 } else { 0 }));
    }
    let (dev, at) = place("r5_rimage_1");
    let mut junk = vec![0u8; 8 << 20];
    rng.fill(&mut junk[..]);
    write_dev(&dev, at, &junk);
    drop(loops);
    let mut args = vec![s(&safe).to_string()];
    args.extend(sources(&[0, 1, 2, 3, 4]));
    backup(&args.iter().map(String::as_str).collect::<Vec<_>>());

    let m = Mounted::new(&safe, t.path(), &[]);
    // An LV shows under the devices holding its PVs: r0 is on c and d only.
    let lvdir = |p: u32, name: &str| {
        let dev = if name.starts_with("r0") { "d" } else { "a" };
        m.dir.join(format!("{p}/{dev}/lvm/{vg}-{name}"))
    };
    for (dev, want) in [
        ("a", ["r10", "r10.img", "r5", "r5.img", "r6", "r6.img"]),
        ("d", ["r0", "r0.img", "r10", "r10.img", "r6", "r6.img"]),
    ] {
        assert_eq!(
            lv_names(&m.dir.join(format!("1/{dev}/lvm")), &vg),
            want,
            "the sub-LVs stay hidden:\n{}",
            m.log_text()
        );
    }
    for (point, shown) in [
        (1, vec!["r5", "r6", "r10", "r0"]),
        (2, vec!["r5", "r6", "r10", "r0"]),
        (3, vec!["r6", "r10"]),
        (4, vec!["r5", "r6", "r10", "r0"]),
    ] {
        for (lv, (src, fs)) in &srcs {
            let what = format!("point {point}, {lv}");
            if !shown.contains(&lv.as_str()) {
                assert!(!lvdir(point, lv).exists(), "{what}: not shown");
                continue;
            }
            same_tree(&tree_digest(&lvdir(point, lv)), &tree_digest(src), &what);
            let img = std::fs::read(lvdir(point, &format!("{lv}.img"))).unwrap();
            assert!(img[..fs.len()] == fs[..], "{what}: the LV's bytes");
        }
    }
    let log = m.log_text();
    for want in [
        "RAID LV r5 read degraded, 1 of 3 images missing",
        "RAID LV r6 read degraded, 2 of 5 images missing",
        "RAID LV r5: 2 of 3 members missing",
        "r5_rimage_1: stale or out of sync",
    ] {
        assert!(log.contains(want), "the log says {want:?}:\n{log}");
    }
    // An LV is mapped once per point however often it is listed or read, and what
    // its mapping logs names the point.
    let degraded_at_2 = log
        .lines()
        .filter(|l| l.contains("point{id=2}") && l.contains("RAID LV r5 read degraded"))
        .count();
    assert_eq!(degraded_at_2, 1, "{log}");
    drop(m);
    // --skip-free: each LV's filesystem is searched through its array, and what it
    // calls free goes unread on the images (RAID5/6: whole stripes, parity too).
    // Restored, each LV differs from its filesystem only in blocks dumpe2fs calls
    // free, and GRUB still reads the RAID5 and RAID6 LVs without disk b: the parity
    // left matches the data.
    let lean = t.path().join("lean");
    let mut args = vec![
        "backup".to_string(),
        "--skip-free".into(),
        s(&lean).to_string(),
    ];
    args.extend(sources(&[0, 1, 2, 3, 4]));
    ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let m = Mounted::new(&lean, t.path(), &[]);
    for (lv, (src, fs)) in &srcs {
        let dev = if lv == "r0" { "d" } else { "a" };
        let dir = m.dir.join(format!("1/{dev}/lvm/{vg}-{lv}"));
        let what = format!("--skip-free, {lv}");
        same_tree(&tree_digest(&dir), &tree_digest(src), &what);
        let got = t.path().join(format!("lean-{lv}.img"));
        let img = std::fs::read(m.dir.join(format!("1/{dev}/lvm/{vg}-{lv}.img"))).unwrap();
        std::fs::write(&got, &img[..fs.len()]).unwrap();
        let want = t.path().join(format!("{lv}.img"));
        let differ = differs_only_where_free(&want, &got, &want);
        assert!(
            differ > 1 << 20,
            "{what}: free space left out ({differ} bytes)"
        );
    }
    drop(m);
    let restored: Vec<PathBuf> = (0..5)
        .map(|i| {
            let out = t.path().join(format!("restored-{i}.img"));
            let dev = ((b'a' + i as u8) as char).to_string();
            ok(&["restore", s(&lean), "1", &dev, s(&out)]);
            out
        })
        .collect();
    if tool("grub-fstest", &["--help"]).is_some() {
        let kept: Vec<&Path> = [0, 2, 3, 4]
            .iter()
            .map(|&i| restored[i].as_path())
            .collect();
        for lv in ["r5", "r6"] {
            let src = &srcs[lv].0;
            for f in files_in(src) {
                grub_cmp(
                    &kept,
                    &format!("lvm/{vg}-{lv}"),
                    src,
                    &f,
                    "restored, without b",
                );
            }
        }
    }
}

/// The files (relative paths) under `root`.
fn files_in(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                todo.push(p);
            } else {
                out.push(p.strip_prefix(root).unwrap().to_str().unwrap().to_string());
            }
        }
    }
    out.sort();
    out
}

/// Asserts that GRUB, given the disk images `disks`, reads file `f` of its volume
/// `vol` (`lvm/VG-LV`) as it is under `src`.
fn grub_cmp(disks: &[&Path], vol: &str, src: &Path, f: &str, what: &str) {
    let mut args = vec!["-c".to_string(), disks.len().to_string()];
    args.extend(disks.iter().map(|d| s(d).to_string()));
    args.extend(["cmp".into(), format!("({vol})/{f}"), s(&src.join(f)).into()]);
    let o = Command::new("grub-fstest").args(&args).output().unwrap();
    assert!(
        o.status.success(),
        "GRUB reads {vol}/{f} {what}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Cached LVs, one in writeback over a cache pool (data and metadata sub-LVs,
/// metadata format 2, shut down cleanly: the cache's copy of a dirty block is the
/// current one) and one in writethrough over a cache volume (`--cachevol`: metadata
/// and data at offsets of one LV, not shut down cleanly), described as LVM describes
/// them (vgcfgrestore: without device-mapper LVM makes neither), their metadata
/// written by `cache_restore` (the thin-provisioning-tools' own encoder) from
/// mappings of chosen origin blocks to cache blocks. An ext4 image is written to
/// each origin and the mapped blocks' contents to the cache; the writeback LV's
/// blocks mapped dirty are then overwritten on its origin with junk, as a writeback
/// cache leaves them. Each LV reads back as its image and its tree is the source
/// tree. With the cache disk missing, the writeback LV is not shown (its origin alone
/// is stale) and the writethrough one is read from its origin; the log says so.
#[test]
fn cached_lvs_read_their_blocks_from_the_cache() {
    let name = "cached_lvs_read_their_blocks_from_the_cache";
    if !have_lvm(name) || !have_tool("cache_restore", "thin-provisioning-tools", name) {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let (slow, fast) = (t.path().join("slow.img"), t.path().join("fast.img"));
    File::create(&slow).unwrap().set_len(48 << 20).unwrap();
    File::create(&fast).unwrap().set_len(32 << 20).unwrap();
    let mut loops = Loops::default();
    let (Some(ps), Some(pf)) = (
        loops.attach(&slow, 0, 48 << 20),
        loops.attach(&fast, 0, 32 << 20),
    ) else {
        eprintln!("SKIP {name}: no loop devices");
        return;
    };
    let vg = format!("dscache{}", std::process::id());
    tool("pvcreate", &["-q", &ps, &pf]).expect("pvcreate");
    lvm_run(&["vgcreate", "-q", "-s", "1m", &vg, &ps, &pf]);
    let linear = |count: u64, pv: &str, at: u64| {
        format!("extent_count = {count}\ntype = \"striped\"\nstripe_count = 1\nstripes = [\"{pv}\", {at}]")
    };
    let lvs = [
        lv_section(1, "db", true, "extent_count = 16\ntype = \"cache\"\ncache_pool = \"cpool\"\norigin = \"db_corig\""),
        lv_section(2, "db_corig", false, &linear(16, "pv0", 0)),
        lv_section(3, "cpool", false, "extent_count = 4\ntype = \"cache-pool\"\ndata = \"cpool_cdata\"\nmetadata = \"cpool_cmeta\"\nmetadata_format = 2\nchunk_size = 128\ncache_mode = \"writeback\"\npolicy = \"smq\""),
        lv_section(4, "cpool_cdata", false, &linear(4, "pv1", 0)),
        lv_section(5, "cpool_cmeta", false, &linear(4, "pv1", 4)),
        lv_section(6, "web", true, "extent_count = 12\ntype = \"cache\"\ncache_pool = \"fast_cvol\"\norigin = \"web_corig\"\nmetadata_format = 2\nchunk_size = 256\ncache_mode = \"writethrough\"\npolicy = \"smq\"\nmetadata_start = 0\nmetadata_len = 8192\ndata_start = 8192\ndata_len = 8192"),
        lv_section(7, "web_corig", false, &linear(12, "pv0", 16)),
        lv_section(8, "fast_cvol", false, &linear(8, "pv1", 8)),
    ];
    restore_with_lvs(t.path(), &vg, &lvs);
    let segs = segments_all(&vg);
    let place = |sub: &str| {
        let (dev, first) = &segs[&format!("[{sub}]")];
        (dev.clone(), first_extent_at(dev) + first * (1 << 20))
    };
    let mut rng = StdRng::seed_from_u64(63);
    // (LV, cache block bytes, cache blocks, writeback, clean shutdown, where its
    // metadata and data lie)
    let cases = [
        (
            "db",
            64usize << 10,
            64usize,
            true,
            true,
            place("cpool_cmeta"),
            place("cpool_cdata"),
        ),
        ("web", 128 << 10, 32, false, false, place("fast_cvol"), {
            let (d, at) = place("fast_cvol");
            (d, at + (4 << 20))
        }),
    ];
    let mut srcs = BTreeMap::new();
    for (lv, block, cblocks, writeback, clean, (mdev, mat), (ddev, dat)) in &cases {
        let extents = segs_extents(lv);
        let (src, img) = (
            t.path().join(format!("{lv}-src")),
            t.path().join(format!("{lv}.img")),
        );
        ext4_image(&src, &img, 30, (extents - 1) << 20, &mut rng);
        let fs = std::fs::read(&img).unwrap();
        let (oat_dev, oat) = place(&format!("{lv}_corig"));
        write_dev(&oat_dev, oat, &fs);
        // Origin blocks holding data, in a random order but the first (the ext4
        // superblock's) first: in writeback the first half cached dirty (the
        // origin's copy junk), the next few cached clean; in writethrough ten clean.
        let blocks = fs.len() / block;
        let mut used: Vec<usize> = (0..blocks)
            .filter(|&b| fs[b * block..(b + 1) * block].iter().any(|&x| x != 0))
            .collect();
        for i in (2..used.len()).rev() {
            used.swap(i, rng.gen_range(1..=i));
        }
        let dirty = if *writeback {
            (used.len() / 2).min(cblocks - 6)
        } else {
            5
        };
        let mut xml = format!("<superblock uuid=\"\" block_size=\"{}\" nr_cache_blocks=\"{cblocks}\" policy=\"smq\" hint_width=\"4\">\n<mappings>\n", block / 512);
        let mut cache = vec![0u8; cblocks * block];
        for (c, &ob) in used.iter().take(dirty + 5).enumerate() {
            let cb = (c * 7) % cblocks; // scattered over the cache
            let piece = &fs[ob * block..(ob + 1) * block];
            cache[cb * block..(cb + 1) * block].copy_from_slice(piece);
            let is_dirty = c < dirty && *writeback;
            xml += &format!(
                "<mapping cache_block=\"{cb}\" origin_block=\"{ob}\" dirty=\"{is_dirty}\"/>\n"
            );
            if is_dirty {
                let mut junk = vec![0u8; *block];
                rng.fill(&mut junk[..]);
                write_dev(&oat_dev, oat + (ob * block) as u64, &junk);
            }
        }
        xml += "</mappings>\n</superblock>\n";
        let xml_path = t.path().join(format!("{lv}.xml"));
        std::fs::write(&xml_path, &xml).unwrap();
        let meta = t.path().join(format!("{lv}-meta.bin"));
        File::create(&meta).unwrap().set_len(4 << 20).unwrap();
        let mut args = vec![
            "-i",
            s(&xml_path),
            "-o",
            s(&meta),
            "--metadata-version",
            "2",
        ];
        if !clean {
            args.push("--omit-clean-shutdown");
        }
        tool("cache_restore", &args).expect("cache_restore");
        write_dev(mdev, *mat, &std::fs::read(&meta).unwrap());
        write_dev(ddev, *dat, &cache);
        srcs.insert(lv.to_string(), (src, fs, *writeback, dirty));
    }
    drop(loops);
    let safe = t.path().join("safe");
    backup(&[
        s(&safe),
        &format!("slow={}", s(&slow)),
        &format!("fast={}", s(&fast)),
    ]);
    backup(&[s(&safe), &format!("slow={}", s(&slow))]);
    let m = Mounted::new(&safe, t.path(), &[]);
    assert_eq!(
        lv_names(&m.dir.join("1/slow/lvm"), &vg),
        ["db", "db.img", "web", "web.img"],
        "the pool, cache volume and origins stay hidden:\n{}",
        m.log_text()
    );
    for (lv, (src, fs, writeback, dirty)) in &srcs {
        assert!(!writeback || *dirty >= 10, "{lv}: {dirty} dirty blocks");
        for dev in ["slow", "fast"] {
            let dir = m.dir.join(format!("1/{dev}/lvm/{vg}-{lv}"));
            same_tree(&tree_digest(&dir), &tree_digest(src), lv);
        }
        let img = std::fs::read(m.dir.join(format!("1/slow/lvm/{vg}-{lv}.img"))).unwrap();
        assert!(
            img.len() >= fs.len() && img[..fs.len()] == fs[..],
            "{lv}: the LV's bytes"
        );
        let without_cache = m.dir.join(format!("2/slow/lvm/{vg}-{lv}"));
        if *writeback {
            assert!(!without_cache.exists(), "{lv}: no cache, not shown");
        } else {
            same_tree(
                &tree_digest(&without_cache),
                &tree_digest(src),
                &format!("{lv} from its origin"),
            );
        }
    }
    let log = m.log_text();
    assert!(
        log.contains("is not in this point"),
        "the log says the cache is missing:\n{log}"
    );
    assert!(
        log.contains("cached LV web: its cache is not read")
            && log.contains("read from its origin, which writethrough keeps current"),
        "{log}"
    );
}

/// Extents of the LVs of [`cached_lvs_read_their_blocks_from_the_cache`].
fn segs_extents(lv: &str) -> u64 {
    match lv {
        "db" => 16,
        _ => 12,
    }
}

/// A PV whose label sector could not be read (a `--skip-unreadable` backup of a disk
/// failing there) is found from the metadata area pvcreate put at 4 KiB, and its LV
/// shows the tree mkfs was given; a PV whose label was wiped (as pvremove does, the
/// metadata left) is not taken for one.
#[test]
fn a_pv_with_an_unreadable_label_is_found_from_its_metadata() {
    let name = "a_pv_with_an_unreadable_label_is_found_from_its_metadata";
    if !have_lvm(name) {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let img = t.path().join("pv.img");
    File::create(&img).unwrap().set_len(64 << 20).unwrap();
    let mut rng = StdRng::seed_from_u64(91);
    let Some(lv) = one_lv_in(
        &img,
        (0, 64 << 20),
        "ul",
        "data",
        (24, 20),
        t.path(),
        &mut rng,
        name,
    ) else {
        return;
    };
    let data = std::fs::read(&img).unwrap();
    assert_eq!(&data[512..520], b"LABELONE", "the label in sector 1");
    let safe = t.path().join("safe");
    common::failing::backup_failing(
        &safe,
        t.path(),
        vec![("pv", data.clone(), vec![(512, 512)])],
        &[],
    );
    // Point 2: the same disk with its label sector wiped instead.
    let mut wiped = data;
    wiped[512..1024].fill(0);
    let wiped_img = t.path().join("wiped.img");
    std::fs::write(&wiped_img, &wiped).unwrap();
    backup(&[s(&safe), &format!("pv={}", s(&wiped_img))]);

    let m = Mounted::new(&safe, t.path(), &[]);
    let lvdir = m.dir.join(format!("1/pv/lvm/{}-data", lv.vg));
    assert_lv_shown(&lvdir, &lv.src, &lv.img, "unreadable label");
    assert!(
        m.log_text().contains("identified from its metadata area"),
        "{}",
        m.log_text()
    );
    assert!(!m.dir.join("2/pv/lvm").exists(), "a wiped label is no PV");
}
