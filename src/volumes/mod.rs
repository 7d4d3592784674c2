//! Partition tables (MBR with extended/EBR chains, GPT) read through [`ReadAt`], so
//! each partition can be served as a byte-exact slice of its device; LVM logical
//! volumes (`lvm`) mapped over the PVs found on devices and partitions; the data of md
//! RAID1 members (`md`) whose superblock precedes it.
//!
//! Every on-disk value is treated as hostile: chains are bounded and checked for loops,
//! entry counts and sizes are capped, CRCs are checked, and partitions reaching past the
//! end of the device are clipped (and logged).

pub mod cache;
pub mod luks;
pub mod lvm;
pub mod md;
pub mod mirror;
mod pdata;
pub mod thin;

use std::collections::HashSet;
use std::io;

use crate::readat::ReadAt;

/// One partition, numbered as Linux numbers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    /// MBR: 1–4 primary, 5+ logical; GPT: entry index + 1.
    pub number: u32,
    /// Byte offset on the device.
    pub start: u64,
    /// Length in bytes (clipped to the device).
    pub len: u64,
    /// MBR type byte or GPT type GUID, for listings.
    pub kind: String,
}

/// Which table a device carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableKind {
    /// DOS/MBR (possibly with logical partitions).
    Mbr,
    /// GUID partition table.
    Gpt,
}

/// A parsed partition table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    /// MBR or GPT.
    pub kind: TableKind,
    /// Logical sector size used by the table (512 or 4096).
    pub sector_size: u64,
    /// Partitions in number order.
    pub partitions: Vec<Partition>,
}

/// At most this many logical partitions are followed in an EBR chain.
const MAX_LOGICAL: usize = 256;
/// At most this many GPT entries are read (the standard array has 128).
const MAX_GPT_ENTRIES: u32 = 4096;

fn le32(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
}
fn le64(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
}

/// Reads the partition table of a device; `Ok(None)` when it has none.
pub fn read_table(dev: &dyn ReadAt) -> io::Result<Option<Table>> {
    let size = dev.size();
    if size < 1024 {
        return Ok(None);
    }
    for ss in [512u64, 4096] {
        if let Some(t) = read_gpt(dev, ss)? {
            return Ok(Some(t));
        }
    }
    read_mbr(dev)
}

fn guid_string(b: &[u8]) -> String {
    format!(
        "{:08x}-{:04x}-{:04x}-{:02x}{:02x}-{}",
        le32(b, 0),
        u16::from_le_bytes([b[4], b[5]]),
        u16::from_le_bytes([b[6], b[7]]),
        b[8],
        b[9],
        b[10..16]
            .iter()
            .map(|x| format!("{x:02x}"))
            .collect::<String>()
    )
}

/// Parses one GPT header at `lba` and its entry array; `None` if it is not valid.
fn gpt_at(dev: &dyn ReadAt, ss: u64, lba: u64) -> io::Result<Option<Table>> {
    let size = dev.size();
    if (lba + 1) * ss > size {
        return Ok(None);
    }
    let mut hdr = vec![0u8; ss as usize];
    if !read_or_unreadable(dev, lba * ss, &mut hdr)? {
        return Ok(None);
    }
    if &hdr[0..8] != b"EFI PART" {
        return Ok(None);
    }
    let hsize = le32(&hdr, 12) as usize;
    if !(92..=ss as usize).contains(&hsize) {
        return Ok(None);
    }
    let want_crc = le32(&hdr, 16);
    let mut h = hdr[..hsize].to_vec();
    h[16..20].fill(0);
    if crc32fast::hash(&h) != want_crc {
        tracing::warn!("GPT header at LBA {lba} ({ss}-byte sectors) has a bad CRC");
        return Ok(None);
    }
    let entries_lba = le64(&hdr, 72);
    let count = le32(&hdr, 80);
    let esize = le32(&hdr, 84) as u64;
    let entries_crc = le32(&hdr, 88);
    if count > MAX_GPT_ENTRIES || !(128..=4096).contains(&esize) || esize % 8 != 0 {
        tracing::warn!("GPT header at LBA {lba}: implausible entry array ({count} x {esize})");
        return Ok(None);
    }
    let bytes = count as u64 * esize;
    let Some(start) = entries_lba.checked_mul(ss) else {
        return Ok(None);
    };
    if start.checked_add(bytes).is_none_or(|e| e > size) {
        return Ok(None);
    }
    let mut arr = vec![0u8; bytes as usize];
    if !read_or_unreadable(dev, start, &mut arr)? {
        tracing::warn!("GPT entry array at LBA {entries_lba} could not be read at backup");
        return Ok(None);
    }
    if crc32fast::hash(&arr) != entries_crc {
        tracing::warn!("GPT entry array at LBA {entries_lba} has a bad CRC");
        return Ok(None);
    }
    let mut parts = Vec::new();
    for i in 0..count as usize {
        let e = &arr[i * esize as usize..(i + 1) * esize as usize];
        if e[0..16].iter().all(|&b| b == 0) {
            continue;
        }
        let (first, last) = (le64(e, 32), le64(e, 40));
        if last < first {
            tracing::warn!("GPT entry {} has its end before its start; skipped", i + 1);
            continue;
        }
        if let Some(p) = make_part(
            i as u32 + 1,
            first,
            last - first + 1,
            ss,
            size,
            guid_string(&e[0..16]),
        ) {
            parts.push(p);
        }
    }
    Ok(Some(Table {
        kind: TableKind::Gpt,
        sector_size: ss,
        partitions: parts,
    }))
}

fn read_gpt(dev: &dyn ReadAt, ss: u64) -> io::Result<Option<Table>> {
    if let Some(t) = gpt_at(dev, ss, 1)? {
        return Ok(Some(t));
    }
    // Primary damaged: the backup header sits in the last sector. A device of fewer
    // than three sectors (protective MBR, header, entries) holds no GPT of this size.
    let sectors = dev.size() / ss;
    if sectors < 3 {
        return Ok(None);
    }
    let last = sectors - 1;
    // The backup is used when the start says GPT (a header signature at LBA 1, a
    // protective MBR) or cannot say anything (sectors a failing disk's backup did
    // not give), never over a plain MBR's disk, which may keep an old GPT's backup.
    let mut probe = [0u8; 8];
    let signed = !read_or_unreadable(dev, ss, &mut probe)? || &probe == b"EFI PART";
    if signed || has_protective_mbr(dev)?.unwrap_or(true) {
        if let Some(t) = gpt_at(dev, ss, last)? {
            tracing::warn!("primary GPT unusable; using the backup GPT header");
            return Ok(Some(t));
        }
    }
    Ok(None)
}

/// Fills `buf` from `at`: `Ok(false)` when those bytes could not be read from the
/// source at backup (nothing is known of them), other errors as they are.
fn read_or_unreadable(dev: &dyn ReadAt, at: u64, buf: &mut [u8]) -> io::Result<bool> {
    match dev.read_exact_at(at, buf) {
        Ok(()) => Ok(true),
        Err(e) if crate::device::is_unreadable(&e) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Whether sector 0 is a protective MBR; `None` when it could not be read at backup.
fn has_protective_mbr(dev: &dyn ReadAt) -> io::Result<Option<bool>> {
    let mut mbr = [0u8; 512];
    if !read_or_unreadable(dev, 0, &mut mbr)? {
        return Ok(None);
    }
    Ok(Some(
        mbr[510] == 0x55 && mbr[511] == 0xAA && (0..4).any(|i| mbr[446 + i * 16 + 4] == 0xEE),
    ))
}

/// Builds a partition from sector numbers, clipping at the device end; `None` when it
/// starts past the end or overflows.
fn make_part(
    number: u32,
    first: u64,
    count: u64,
    ss: u64,
    size: u64,
    kind: String,
) -> Option<Partition> {
    let start = first.checked_mul(ss)?;
    let len = count.checked_mul(ss)?;
    if start >= size || len == 0 {
        tracing::warn!("partition {number} starts past the end of the device; skipped");
        return None;
    }
    let clipped = len.min(size - start);
    if clipped < len {
        tracing::warn!(
            "partition {number} reaches {} bytes past the end of the device; clipped",
            len - clipped
        );
    }
    Some(Partition {
        number,
        start,
        len: clipped,
        kind,
    })
}

struct MbrEntry {
    kind: u8,
    first: u64,
    count: u64,
}

fn mbr_entries(sector: &[u8]) -> Vec<MbrEntry> {
    (0..4)
        .map(|i| {
            let e = &sector[446 + i * 16..446 + (i + 1) * 16];
            MbrEntry {
                kind: e[4],
                first: le32(e, 8) as u64,
                count: le32(e, 12) as u64,
            }
        })
        .collect()
}

fn is_extended(kind: u8) -> bool {
    matches!(kind, 0x05 | 0x0F | 0x85)
}

fn read_mbr(dev: &dyn ReadAt) -> io::Result<Option<Table>> {
    let size = dev.size();
    let mut mbr = [0u8; 512];
    dev.read_exact_at(0, &mut mbr)?;
    if mbr[510] != 0x55 || mbr[511] != 0xAA {
        return Ok(None);
    }
    let entries = mbr_entries(&mbr);
    if entries.iter().any(|e| e.kind == 0xEE) {
        // Protective MBR of a GPT disk whose GPT we could not read: show no partitions.
        tracing::warn!("protective MBR without a readable GPT; no partitions shown");
        return Ok(None);
    }
    // A boot sector of a filesystem (FAT, NTFS) also ends in 55 AA: require entries that
    // look like a table (boot flag 0 or 0x80, non-empty within the device).
    let used: Vec<&MbrEntry> = entries
        .iter()
        .filter(|e| e.kind != 0 && e.count > 0)
        .collect();
    if used.is_empty() || (0..4).any(|i| !matches!(mbr[446 + i * 16], 0 | 0x80)) {
        return Ok(None);
    }
    // 4096-byte logical sectors when the table only fits the device that way.
    let fits = |ss: u64| {
        used.iter()
            .all(|e| e.first.saturating_add(e.count).saturating_mul(ss) <= size)
    };
    let ss = if !fits(512) && fits(4096) { 4096 } else { 512 };
    let mut parts = Vec::new();
    let mut ext_start = None;
    for (i, e) in entries.iter().enumerate() {
        if e.kind == 0 || e.count == 0 {
            continue;
        }
        if is_extended(e.kind) {
            ext_start.get_or_insert(e.first);
        }
        if let Some(p) = make_part(
            i as u32 + 1,
            e.first,
            e.count,
            ss,
            size,
            format!("0x{:02x}", e.kind),
        ) {
            parts.push(p);
        }
    }
    if let Some(base) = ext_start {
        read_logical(dev, ss, base, &mut parts)?;
    }
    Ok(Some(Table {
        kind: TableKind::Mbr,
        sector_size: ss,
        partitions: parts,
    }))
}

/// Follows the EBR chain from the extended partition at sector `base`; logical
/// partitions are numbered from 5. Loops and runaway chains stop the walk.
fn read_logical(
    dev: &dyn ReadAt,
    ss: u64,
    base: u64,
    parts: &mut Vec<Partition>,
) -> io::Result<()> {
    let size = dev.size();
    let mut seen = HashSet::new();
    let mut ebr = base;
    let mut number = 5;
    while parts.len() < MAX_LOGICAL + 4 {
        if !seen.insert(ebr) {
            tracing::warn!("EBR chain loops back to sector {ebr}; stopped");
            break;
        }
        let Some(off) = ebr.checked_mul(ss).filter(|o| o + 512 <= size) else {
            tracing::warn!("EBR at sector {ebr} lies past the end of the device; stopped");
            break;
        };
        let mut sec = [0u8; 512];
        dev.read_exact_at(off, &mut sec)?;
        if sec[510] != 0x55 || sec[511] != 0xAA {
            tracing::warn!("EBR at sector {ebr} has no signature; stopped");
            break;
        }
        let e = mbr_entries(&sec);
        // Entry 0: the logical partition, relative to this EBR.
        if e[0].kind != 0 && e[0].count > 0 {
            if let Some(p) = make_part(
                number,
                ebr + e[0].first,
                e[0].count,
                ss,
                size,
                format!("0x{:02x}", e[0].kind),
            ) {
                parts.push(p);
            }
            number += 1;
        }
        // Entry 1: the next EBR, relative to the extended partition's start.
        if e[1].kind == 0 || e[1].count == 0 || !is_extended(e[1].kind) {
            break;
        }
        ebr = base + e[1].first;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::readat::MemReader as Mem;

    /// Writes entry `slot` (0-3) of the MBR or EBR at byte `at`.
    fn entry_in(d: &mut [u8], at: usize, slot: usize, kind: u8, first: u32, count: u32) {
        let e = &mut d[at + 446 + slot * 16..at + 462 + slot * 16];
        e[4] = kind;
        e[8..12].copy_from_slice(&first.to_le_bytes());
        e[12..16].copy_from_slice(&count.to_le_bytes());
    }

    #[test]
    fn ebr_loop_and_overrun_are_bounded() {
        let mut d = vec![0u8; 1 << 20];
        d[510] = 0x55;
        d[511] = 0xAA;
        entry_in(&mut d, 0, 0, 0x83, 10, 20);
        // Extended partition at sector 100, reaching past the end: clipped.
        entry_in(&mut d, 0, 1, 0x05, 100, 5000);
        // Its EBR: a logical partition, then a link to the next EBR, which is itself.
        let base = 100 * 512;
        d[base + 510] = 0x55;
        d[base + 511] = 0xAA;
        entry_in(&mut d, base, 0, 0x83, 1, 10);
        entry_in(&mut d, base, 1, 0x05, 0, 10);
        let t = read_table(&Mem(d)).unwrap().unwrap();
        assert_eq!(t.kind, TableKind::Mbr);
        let nums: Vec<u32> = t.partitions.iter().map(|p| p.number).collect();
        assert_eq!(nums, vec![1, 2, 5]);
        assert_eq!(
            t.partitions[1].len,
            (1 << 20) - 100 * 512,
            "clipped at the end"
        );
        assert_eq!(
            (t.partitions[2].start, t.partitions[2].len),
            (101 * 512, 10 * 512)
        );
    }

    #[test]
    fn devices_smaller_than_a_gpt_still_read_their_mbr() {
        // Smaller than three 4096-byte sectors: the GPT probes must give up, not wrap
        // around below sector 0 (a panic in debug builds, a bogus read in release).
        for size in [1024, 2048, 2822, 4096, 8192, 12287] {
            let mut d = vec![0u8; size];
            d[510] = 0x55;
            d[511] = 0xAA;
            entry_in(&mut d, 0, 0, 0x83, 1, 1);
            let t = read_table(&Mem(d)).unwrap().unwrap();
            assert_eq!(t.kind, TableKind::Mbr, "{size} bytes");
            assert_eq!((t.partitions[0].start, t.partitions[0].len), (512, 512));
            assert_eq!(read_table(&Mem(vec![0xAB; size])).unwrap(), None);
        }
    }

    #[test]
    fn garbage_is_no_table() {
        assert_eq!(read_table(&Mem(vec![0xAB; 8192])).unwrap(), None);
        assert_eq!(read_table(&Mem(vec![0; 100])).unwrap(), None);
    }
}
