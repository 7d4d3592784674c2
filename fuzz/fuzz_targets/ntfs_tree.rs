//! Fuzzes the NTFS parser: any bytes as a volume, walked completely (records, attribute
//! lists, runlists, index nodes, LZNT1, reparse data). Seeds: the NTFS images from
//! `images/make-fuzz-seeds.sh`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = disksafe::ntfs_ext::walk_everything(data.to_vec(), 4096);
});
