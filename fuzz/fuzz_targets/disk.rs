//! Fuzzes what a mount makes of a device: any bytes as a whole disk, its partition
//! table read (MBR with EBR chains, GPT at 512- or 4096-byte sectors), the file tree
//! of every partition walked (and its free space, as `backup --skip-free` asks for it,
//! checked to lie sorted and inside the volume; and the whole device's, as the backup
//! asks for it through every layer), the array data of md RAID1 members,
//! and the LVM logical volumes of any PVs among them mapped and walked too. Seeds:
//! small partitioned disks, volumes, an md member, a PV, a thin pool, and a PV with a
//! cached LV and a RAID5 LV from `images/make-fuzz-seeds.sh`.
#![no_main]

use std::collections::HashMap;
use std::sync::Arc;

use disksafe::ntfs_ext::{walk_volume, MemVolume};
use disksafe::readat::{ReadAt, Slice};
use disksafe::volumes::lvm;
use libfuzzer_sys::fuzz_target;

/// What `backup --skip-free` would leave out of `vol` must lie inside it, in order.
fn check_free_space(vol: &Arc<dyn ReadAt>) {
    if let Some((_, Ok(free))) = disksafe::ntfs_ext::free_space(vol.clone(), "fuzz") {
        let mut end = 0;
        for (at, len) in free {
            assert!(len > 0 && at >= end, "free ranges out of order");
            end = at.checked_add(len).expect("free range overflows");
            assert!(end <= vol.size(), "free range past the volume");
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let dev: Arc<dyn ReadAt> = Arc::new(MemVolume(data.to_vec()));
    // What `backup --skip-free` leaves out of the whole device, through its partition
    // tables, md members, LVM volumes and thin pools: whole blocks, in order, inside.
    let block = 4096;
    let mut end = 0;
    for (first, n) in disksafe::backup::free_blocks_in(dev.clone(), "fuzz", block) {
        assert!(n > 0 && first >= end, "free blocks out of order");
        end = first.checked_add(n).expect("free blocks overflow");
        assert!(end <= dev.size() / block, "free blocks past the device");
    }
    let mut vols = vec![dev.clone()];
    match disksafe::volumes::read_table(&*dev) {
        Ok(Some(table)) => {
            let mut numbers = std::collections::HashSet::new();
            for p in &table.partitions {
                // The table's promises to the mount: partitions are clipped to the device
                // and their numbers (the names of partK.img) are unique.
                assert!(p
                    .start
                    .checked_add(p.len)
                    .is_some_and(|end| end <= dev.size()));
                assert!(numbers.insert(p.number), "partition {} twice", p.number);
                let part: Arc<dyn ReadAt> = Arc::new(Slice::new(dev.clone(), p.start, p.len));
                let _ = walk_volume(part.clone(), 4096);
                check_free_space(&part);
                vols.push(part);
            }
        }
        _ => {
            let _ = walk_volume(dev.clone(), 4096);
            check_free_space(&dev);
        }
    }
    // The data of md RAID1 members among them, inside the member, walked too.
    for v in vols.clone() {
        let Ok(Some(m)) = disksafe::volumes::md::member(&*v) else {
            continue;
        };
        let mut arrays = disksafe::volumes::md::Arrays::default();
        arrays.add(&m);
        if m.spread() {
            // A striped member alone: assembled (degraded) when its geometry allows.
            if let Ok(a) = disksafe::volumes::md::assemble(&[(m.clone(), v.clone())], &arrays) {
                let a: Arc<dyn ReadAt> = Arc::new(a);
                let mut b = vec![0u8; 4096];
                let _ = a.read_at(0, &mut b);
                let _ = a.read_at(a.size().saturating_sub(4096), &mut b);
            }
            continue;
        }
        if arrays.unusable(&m).is_none() {
            assert!(m.offset.checked_add(m.len).is_some_and(|end| end <= v.size()));
            let inner: Arc<dyn ReadAt> = m.data(&v);
            let _ = walk_volume(inner.clone(), 4096);
            vols.push(inner);
        }
    }
    // LUKS headers among them, parsed (opening needs a passphrase's slow KDF).
    for v in &vols {
        let _ = disksafe::volumes::luks::header(&**v);
    }
    // PVs among the volumes, their VGs' LVs mapped over them and walked.
    let (mut vgs, mut pvs) = (Vec::new(), HashMap::new());
    for v in &vols {
        if let Ok(Some(label)) = lvm::read_label(&**v) {
            if let Ok(Some(vg)) = lvm::read_metadata(&**v, &label) {
                vgs.push(vg);
            }
            pvs.insert(label.uuid, v.clone());
        }
    }
    for vg in &vgs {
        for lv in &vg.lvs {
            if let Ok(vol) = lvm::open_lv(vg, lv, &pvs) {
                let _ = walk_volume(vol, 4096);
            }
        }
    }
});
