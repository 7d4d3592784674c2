//! Fuzzes what a mount makes of a device: any bytes as a whole disk, its partition
//! table read (MBR with EBR chains, GPT at 512- or 4096-byte sectors) and the file tree
//! of every partition walked. Seeds: small partitioned disks from
//! `images/make-fuzz-seeds.sh`.
#![no_main]

use std::sync::Arc;

use disksafe::ntfs_ext::{walk_volume, MemVolume};
use disksafe::readat::{ReadAt, Slice};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dev: Arc<dyn ReadAt> = Arc::new(MemVolume(data.to_vec()));
    let Ok(Some(table)) = disksafe::volumes::read_table(&*dev) else {
        let _ = walk_volume(dev, 4096);
        return;
    };
    let mut numbers = std::collections::HashSet::new();
    for p in &table.partitions {
        // The table's promises to the mount: partitions are clipped to the device and
        // their numbers (the names of partK.img) are unique.
        assert!(p
            .start
            .checked_add(p.len)
            .is_some_and(|end| end <= dev.size()));
        assert!(numbers.insert(p.number), "partition {} twice", p.number);
        let _ = walk_volume(Arc::new(Slice::new(dev.clone(), p.start, p.len)), 4096);
    }
});
