//! Linux software RAID (md) members: a RAID1 member (or a RAID10 member with as
//! many near copies as devices) with a version 1.1 or 1.2 superblock holds a whole
//! copy of the array, but at an offset past the superblock,
//! so the filesystem (or LVM PV) on the array is found only through that offset.
//! Members whose data starts at 0 (superblock 0.90 or 1.0, at the end) need nothing.
//!
//! Every field is checked: magic, version, where the superblock says it lies, its
//! checksum, and that the data range lies inside the member.

use std::io;
use std::sync::Arc;

use crate::readat::{ReadAt, Slice};

const MAGIC: u32 = 0xa92b_4efc;
/// Superblock bytes before the device roles.
const FIXED: usize = 256;
/// Roles a 4 KiB superblock has room for (the kernel's limit too).
const MAX_DEVS: usize = (4096 - FIXED) / 2;

/// Where the array's data lies on one RAID1 member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Raid1Member {
    /// Byte offset of the array's first byte on this member.
    pub offset: u64,
    /// Bytes of array data.
    pub len: u64,
    /// The array's name, as mdadm stored it ("host:name").
    pub name: String,
}

fn le32(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
}

fn le64(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
}

/// The version-1 superblock checksum: 32-bit words summed into 64 bits, the carry
/// folded back once, over the fixed part and the roles, the checksum field as zero.
fn checksum(sb: &[u8]) -> u32 {
    let mut sum: u64 = 0;
    let mut words = sb.chunks_exact(4);
    for (i, w) in words.by_ref().enumerate() {
        if i != 0xD8 / 4 {
            sum += u32::from_le_bytes(w.try_into().unwrap()) as u64;
        }
    }
    if let [a, b] = words.remainder() {
        sum += u16::from_le_bytes([*a, *b]) as u64;
    }
    ((sum & 0xFFFF_FFFF) + (sum >> 32)) as u32
}

/// Whether each member of the array holds the whole array in order: RAID1, and RAID10
/// whose near copies are as many as its devices (mdadm's default `near=2` on two
/// devices), where every chunk lies on every member at the same place.
fn whole_copy(sb: &[u8]) -> bool {
    let (level, layout, disks) = (le32(sb, 0x48) as i32, le32(sb, 0x4C), le32(sb, 0x5C));
    let (near, far, offset) = (layout & 0xFF, (layout >> 8) & 0xFF, layout >> 16);
    level == 1 || level == 10 && disks >= 2 && near == disks && far == 1 && offset == 0
}

/// The array data of `vol` when it is a RAID1 member whose superblock (version 1.1 at
/// its start, 1.2 at 4 KiB) puts the data past offset 0; `Ok(None)` for anything else.
pub fn raid1_member(vol: &dyn ReadAt) -> io::Result<Option<Raid1Member>> {
    let size = vol.size();
    for at in [0u64, 4096] {
        if at + 4096 > size {
            continue;
        }
        let mut b = vec![0u8; 4096];
        vol.read_exact_at(at, &mut b)?;
        if le32(&b, 0) != MAGIC || le32(&b, 4) != 1 {
            continue;
        }
        let max_dev = le32(&b, 0xDC) as usize;
        if max_dev > MAX_DEVS || le64(&b, 0x90) != at / 512 {
            tracing::warn!("md superblock at {at}: implausible fields; not read");
            continue;
        }
        let sb = &b[..FIXED + 2 * max_dev];
        if checksum(sb) != le32(sb, 0xD8) {
            tracing::warn!("md superblock at {at}: checksum mismatch; not read");
            continue;
        }
        if !whole_copy(sb) {
            return Ok(None); // other levels spread the data over members
        }
        let offset = le64(sb, 0x80).checked_mul(512);
        let len = le64(sb, 0x50).checked_mul(512);
        let (Some(offset), Some(len)) = (offset, len) else {
            return Ok(None);
        };
        if offset == 0 || len == 0 || offset.checked_add(len).is_none_or(|e| e > size) {
            tracing::warn!(
                "md superblock at {at}: data {offset}+{len} does not fit the member ({size} bytes); not read"
            );
            return Ok(None);
        }
        let name = String::from_utf8_lossy(&sb[0x20..0x40])
            .trim_end_matches('\0')
            .to_string();
        return Ok(Some(Raid1Member { offset, len, name }));
    }
    Ok(None)
}

/// The array data of `vol` as a volume of its own, when `vol` is such a RAID1 member
/// ([`raid1_member`]), with where it lies.
pub fn array_data(vol: &Arc<dyn ReadAt>) -> io::Result<Option<(Arc<dyn ReadAt>, Raid1Member)>> {
    Ok(raid1_member(&**vol)?.map(|m| {
        let data: Arc<dyn ReadAt> = Arc::new(Slice::new(vol.clone(), m.offset, m.len));
        (data, m)
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::readat::MemReader;

    /// A member of `size` bytes with a version-1.2 RAID1 superblock putting `len`
    /// bytes of data at `offset` (sectors).
    fn member(size: usize, offset: u64, len: u64) -> Vec<u8> {
        member_of(size, offset, len, 1, 0)
    }

    /// [`member`] of an array of `level` and `layout`.
    fn member_of(size: usize, offset: u64, len: u64, level: u32, layout: u32) -> Vec<u8> {
        let mut v = vec![0u8; size];
        let b = &mut v[4096..8192];
        b[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        b[4..8].copy_from_slice(&1u32.to_le_bytes());
        b[0x20..0x26].copy_from_slice(b"host:0");
        b[0x48..0x4C].copy_from_slice(&level.to_le_bytes());
        b[0x4C..0x50].copy_from_slice(&layout.to_le_bytes());
        b[0x50..0x58].copy_from_slice(&len.to_le_bytes());
        b[0x5C..0x60].copy_from_slice(&2u32.to_le_bytes());
        b[0x80..0x88].copy_from_slice(&offset.to_le_bytes());
        b[0x90..0x98].copy_from_slice(&8u64.to_le_bytes());
        b[0xDC..0xE0].copy_from_slice(&2u32.to_le_bytes());
        let c = checksum(&b[..FIXED + 4]);
        b[0xD8..0xDC].copy_from_slice(&c.to_le_bytes());
        v
    }

    #[test]
    fn a_raid1_member_gives_its_data_range() {
        let m = raid1_member(&MemReader(member(1 << 20, 64, 1000))).unwrap();
        assert_eq!(
            m,
            Some(Raid1Member {
                offset: 64 * 512,
                len: 1000 * 512,
                name: "host:0".into()
            })
        );
    }

    #[test]
    fn raid10_members_with_a_copy_per_device_give_their_data_range() {
        let m = |level, layout| {
            raid1_member(&MemReader(member_of(1 << 20, 64, 1000, level, layout)))
                .unwrap()
                .map(|m| m.offset)
        };
        assert_eq!(m(10, 0x102), Some(64 * 512), "near=2 on two devices");
        assert_eq!(m(10, 0x201), None, "far=2 spreads chunks");
        assert_eq!(m(10, 0x10102), None, "offset layout");
        assert_eq!(m(10, 0x103), None, "three near copies on two devices");
        assert_eq!(m(5, 2), None, "RAID5");
        assert_eq!(m(0, 0), None, "RAID0");
    }

    #[test]
    fn damaged_or_oversized_superblocks_are_not_read() {
        let mut v = member(1 << 20, 64, 1000);
        v[4096 + 0x60] ^= 1; // covered by the checksum
        assert_eq!(raid1_member(&MemReader(v)).unwrap(), None);
        let v = member(1 << 20, 64, 4000); // past the member's end
        assert_eq!(raid1_member(&MemReader(v)).unwrap(), None);
        assert_eq!(raid1_member(&MemReader(vec![0; 100])).unwrap(), None);
    }
}
