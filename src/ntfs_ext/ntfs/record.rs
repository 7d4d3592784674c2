//! On-disk structures of NTFS: the boot sector, update-sequence fixups, MFT records,
//! attribute headers, runlists and attribute-list entries. Every field is checked
//! against the buffer it came from.

use std::io;

use crate::ntfs_ext::corrupt;

/// Attribute type codes used here.
pub mod ty {
    /// Times and DOS attributes.
    pub const STANDARD_INFORMATION: u32 = 0x10;
    /// Where the rest of a file's attributes live.
    pub const ATTRIBUTE_LIST: u32 = 0x20;
    /// One name (link) of the file.
    pub const FILE_NAME: u32 = 0x30;
    /// The file's object id (distributed link tracking).
    pub const OBJECT_ID: u32 = 0x40;
    /// A security descriptor kept in the file itself (NTFS 1.x; later ones use $Secure).
    pub const SECURITY_DESCRIPTOR: u32 = 0x50;
    /// Volume flags ($Volume).
    pub const VOLUME_INFORMATION: u32 = 0x70;
    /// File data streams.
    pub const DATA: u32 = 0x80;
    /// Root node of a directory index.
    pub const INDEX_ROOT: u32 = 0x90;
    /// Other nodes of a directory index.
    pub const INDEX_ALLOCATION: u32 = 0xA0;
    /// Reparse point data.
    pub const REPARSE_POINT: u32 = 0xC0;
    /// OS/2-style extended attributes (WSL keeps Linux metadata there).
    pub const EA: u32 = 0xE0;
    /// End marker.
    pub const END: u32 = 0xFFFF_FFFF;
}

/// Attribute flags.
pub mod aflag {
    /// LZNT1-compressed.
    pub const COMPRESSED: u16 = 0x0001;
    /// EFS-encrypted.
    pub const ENCRYPTED: u16 = 0x4000;
    /// Sparse.
    pub const SPARSE: u16 = 0x8000;
}

/// The `N` bytes at `at`, or an error naming the structure's size: every on-disk
/// field goes through here.
fn field<const N: usize>(b: &[u8], at: usize) -> io::Result<[u8; N]> {
    at.checked_add(N)
        .and_then(|end| b.get(at..end))
        .map(|s| s.try_into().expect("slice of N bytes"))
        .ok_or_else(|| {
            corrupt(format!(
                "field at {at} past the end of a {}-byte structure",
                b.len()
            ))
        })
}
pub(crate) fn le16(b: &[u8], at: usize) -> io::Result<u16> {
    field(b, at).map(u16::from_le_bytes)
}
pub(crate) fn le32(b: &[u8], at: usize) -> io::Result<u32> {
    field(b, at).map(u32::from_le_bytes)
}
pub(crate) fn le64(b: &[u8], at: usize) -> io::Result<u64> {
    field(b, at).map(u64::from_le_bytes)
}

/// UTF-16 units of a little-endian byte slice.
pub fn utf16(b: &[u8]) -> Vec<u16> {
    b.chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect()
}

/// Geometry from the boot sector.
#[derive(Debug, Clone)]
pub struct Boot {
    /// Bytes per cluster.
    pub cluster_size: u64,
    /// Clusters in the volume.
    pub total_clusters: u64,
    /// First cluster of $MFT.
    pub mft_lcn: u64,
    /// First cluster of $MFTMirr (the copy of $MFT's first records).
    pub mft_mirr_lcn: u64,
    /// Bytes per MFT record.
    pub record_size: u32,
}

/// Largest cluster NTFS allows (Windows 10 1709 and later).
pub const MAX_CLUSTER: u64 = 2 << 20;

/// True when the boot sector names NTFS.
pub fn is_ntfs(b: &[u8]) -> bool {
    b.get(3..11) == Some(b"NTFS    ")
}

fn size_code(raw: u8, cluster: u64, what: &str) -> io::Result<u32> {
    let v = raw as i8;
    let size = if v > 0 {
        (v as u64).saturating_mul(cluster)
    } else if v > -31 {
        1u64 << (-v) as u32
    } else {
        u64::MAX
    };
    if !(512..=65536).contains(&size) || !size.is_power_of_two() {
        return Err(corrupt(format!(
            "boot sector: {what} size code {raw:#x} gives {size}"
        )));
    }
    Ok(size as u32)
}

impl Boot {
    /// Parses and checks the first sector of the volume.
    pub fn parse(b: &[u8]) -> io::Result<Boot> {
        if !is_ntfs(b) {
            return Err(corrupt("boot sector: no NTFS signature"));
        }
        let sector_size = le16(b, 0x0B)? as u32;
        if !(256..=4096).contains(&sector_size) || !sector_size.is_power_of_two() {
            return Err(corrupt(format!("boot sector: sector size {sector_size}")));
        }
        let spc_raw = b[0x0D];
        let spc: u64 = if spc_raw == 0 {
            return Err(corrupt("boot sector: zero sectors per cluster"));
        } else if spc_raw <= 0x80 {
            spc_raw as u64
        } else {
            let shift = 256 - spc_raw as u32;
            if shift > 31 {
                return Err(corrupt(format!("boot sector: cluster code {spc_raw:#x}")));
            }
            1u64 << shift
        };
        let cluster_size = sector_size as u64 * spc;
        if !spc.is_power_of_two() || cluster_size > MAX_CLUSTER {
            return Err(corrupt(format!("boot sector: cluster size {cluster_size}")));
        }
        let total_sectors = le64(b, 0x28)?;
        let mft_lcn = le64(b, 0x30)?;
        let mft_mirr_lcn = le64(b, 0x38)?;
        let record_size = size_code(b[0x40], cluster_size, "MFT record")?;
        size_code(b[0x44], cluster_size, "index record")?;
        if record_size < 1024 && record_size < sector_size {
            return Err(corrupt(format!(
                "boot sector: MFT record size {record_size}"
            )));
        }
        Ok(Boot {
            cluster_size,
            total_clusters: total_sectors / spc,
            mft_lcn,
            mft_mirr_lcn,
            record_size,
        })
    }
}

/// Why a multi-sector structure cannot be used.
pub fn apply_fixups(buf: &mut [u8], magic: &[u8; 4], what: &dyn Fn() -> String) -> io::Result<()> {
    if &buf[..4.min(buf.len())] != magic {
        if buf.len() >= 4 && &buf[..4] == b"BAAD" {
            return Err(corrupt(format!(
                "{} is marked bad (BAAD) by chkdsk",
                what()
            )));
        }
        return Err(corrupt(format!(
            "{} has no {} signature",
            what(),
            String::from_utf8_lossy(magic)
        )));
    }
    let usa_ofs = le16(buf, 4)? as usize;
    let usa_count = le16(buf, 6)? as usize;
    let strides = buf.len() / 512;
    if usa_count != strides + 1 || usa_ofs < 8 || usa_ofs + 2 * usa_count > buf.len() {
        return Err(corrupt(format!(
            "{}: update sequence array ({usa_count} entries at {usa_ofs}) does not fit its {} bytes",
            what(),
            buf.len()
        )));
    }
    let usn = [buf[usa_ofs], buf[usa_ofs + 1]];
    for i in 1..usa_count {
        let end = i * 512;
        if buf[end - 2..end] != usn {
            return Err(corrupt(format!(
                "{} is torn: sector {} was written without the rest (update sequence mismatch)",
                what(),
                i - 1
            )));
        }
        buf[end - 2] = buf[usa_ofs + 2 * i];
        buf[end - 1] = buf[usa_ofs + 2 * i + 1];
    }
    Ok(())
}

/// One run of a runlist: `len` clusters from `vcn`, at `lcn` or sparse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    /// First virtual cluster.
    pub vcn: u64,
    /// First logical cluster; `None` for a hole.
    pub lcn: Option<u64>,
    /// Clusters.
    pub len: u64,
}

/// Header fields of a non-resident attribute.
#[derive(Debug, Clone)]
pub struct NonResident {
    /// First VCN this fragment maps.
    pub lowest_vcn: u64,
    /// Last VCN this fragment maps.
    pub highest_vcn: u64,
    /// Its runs.
    pub runs: Vec<Run>,
    /// log2 of clusters per compression unit (0: not compressed).
    pub comp_unit: u8,
    /// Allocated bytes (valid in the first fragment).
    pub alloc_size: u64,
    /// Logical size.
    pub data_size: u64,
    /// Bytes actually written; the rest reads as zeros.
    pub init_size: u64,
    /// Clusters really used (compressed or sparse attributes).
    pub compressed_size: Option<u64>,
}

/// Resident value or non-resident mapping.
#[derive(Debug, Clone)]
pub enum Body {
    /// The value itself.
    Resident(Vec<u8>),
    /// Where the value lives.
    NonResident(NonResident),
}

/// One attribute of an MFT record.
#[derive(Debug, Clone)]
pub struct Attr {
    /// Type code.
    pub ty: u32,
    /// Name (UTF-16), empty for the unnamed one.
    pub name: Vec<u16>,
    /// Flags ([`aflag`]).
    pub flags: u16,
    /// Value or mapping.
    pub body: Body,
}

/// A parsed MFT record.
#[derive(Debug, Clone)]
pub struct Record {
    /// Sequence number (reuse count).
    pub seq: u16,
    /// Flags: 1 in use, 2 directory.
    pub flags: u16,
    /// Base record number for an extension record, 0 for a base record.
    pub base: u64,
    /// Attributes in record order.
    pub attrs: Vec<Attr>,
}

/// Record number part of a file reference.
pub fn mref(r: u64) -> u64 {
    r & 0x0000_FFFF_FFFF_FFFF
}

/// Sequence part of a file reference.
pub fn mseq(r: u64) -> u16 {
    (r >> 48) as u16
}

impl Record {
    /// Parses MFT record `number` from its fixed-up bytes.
    pub fn parse(b: &[u8], number: u64) -> io::Result<Record> {
        let what = |m: &str| corrupt(format!("MFT record {number}: {m}"));
        let seq = le16(b, 0x10)?;
        let attrs_ofs = le16(b, 0x14)? as usize;
        let flags = le16(b, 0x16)?;
        let used = (le32(b, 0x18)? as usize).min(b.len());
        let base = mref(le64(b, 0x20)?);
        if le16(b, 0x04)? >= 0x30 {
            let n = le32(b, 0x2C)? as u64;
            if n != number & 0xFFFF_FFFF {
                return Err(what(&format!("says it is record {n}")));
            }
        }
        let mut attrs = Vec::new();
        let mut off = attrs_ofs;
        while off + 8 <= used {
            let t = le32(b, off)?;
            if t == ty::END {
                break;
            }
            let len = le32(b, off + 4)? as usize;
            if len < 0x18 || off + len > used {
                return Err(what(&format!("attribute at {off} has length {len}")));
            }
            attrs.push(
                parse_attr(&b[off..off + len])
                    .map_err(|e| what(&format!("attribute at {off}: {e}")))?,
            );
            off += len;
        }
        Ok(Record {
            seq,
            flags,
            base,
            attrs,
        })
    }
}

fn parse_attr(a: &[u8]) -> io::Result<Attr> {
    let t = le32(a, 0)?;
    let non_res = a[8];
    let name_len = a[9] as usize;
    let name_ofs = le16(a, 0x0A)? as usize;
    let flags = le16(a, 0x0C)?;
    let name = if name_len == 0 {
        Vec::new()
    } else {
        utf16(
            a.get(name_ofs..name_ofs + 2 * name_len)
                .ok_or_else(|| corrupt("name past the attribute"))?,
        )
    };
    let body = if non_res == 0 {
        let vlen = le32(a, 0x10)? as usize;
        let vofs = le16(a, 0x14)? as usize;
        let v = a.get(vofs..vofs.saturating_add(vlen)).ok_or_else(|| {
            corrupt(format!(
                "resident value ({vlen} bytes at {vofs}) past the attribute"
            ))
        })?;
        Body::Resident(v.to_vec())
    } else {
        let lowest_vcn = le64(a, 0x10)?;
        let highest_vcn = le64(a, 0x18)?;
        let mp = le16(a, 0x20)? as usize;
        let comp_unit = a.get(0x22).copied().unwrap_or(0);
        let alloc_size = le64(a, 0x28)?;
        let data_size = le64(a, 0x30)?;
        let init_size = le64(a, 0x38)?;
        let compressed_size = if flags & (aflag::COMPRESSED | aflag::SPARSE) != 0 && mp >= 0x48 {
            Some(le64(a, 0x40)?)
        } else {
            None
        };
        let pairs = a
            .get(mp..)
            .ok_or_else(|| corrupt("mapping pairs past the attribute"))?;
        Body::NonResident(NonResident {
            lowest_vcn,
            highest_vcn,
            runs: decode_runs(pairs, lowest_vcn)?,
            comp_unit,
            alloc_size,
            data_size,
            init_size,
            compressed_size,
        })
    };
    Ok(Attr {
        ty: t,
        name,
        flags,
        body,
    })
}

/// Decodes mapping pairs into runs starting at `vcn`.
pub fn decode_runs(p: &[u8], mut vcn: u64) -> io::Result<Vec<Run>> {
    let mut runs = Vec::new();
    let mut lcn: i64 = 0;
    let mut i = 0;
    while i < p.len() && p[i] != 0 {
        let h = p[i];
        let (ls, os) = ((h & 0xF) as usize, (h >> 4) as usize);
        if ls == 0 || ls > 8 || os > 8 || i + 1 + ls + os > p.len() {
            return Err(corrupt(format!(
                "runlist header {h:#x} at {i} is malformed"
            )));
        }
        let mut len: u64 = 0;
        for k in 0..ls {
            len |= (p[i + 1 + k] as u64) << (8 * k);
        }
        if len == 0 || len > i64::MAX as u64 {
            return Err(corrupt(format!("runlist: run of {len} clusters")));
        }
        let run_lcn = if os == 0 {
            None
        } else {
            let mut d: i64 = 0;
            for k in 0..os {
                d |= (p[i + 1 + ls + k] as i64) << (8 * k);
            }
            if os < 8 {
                let shift = 64 - 8 * os as u32;
                d = (d << shift) >> shift;
            }
            lcn = lcn
                .checked_add(d)
                .filter(|&l| l >= 0)
                .ok_or_else(|| corrupt("runlist: cluster number out of range"))?;
            Some(lcn as u64)
        };
        runs.push(Run {
            vcn,
            lcn: run_lcn,
            len,
        });
        vcn = vcn
            .checked_add(len)
            .ok_or_else(|| corrupt("runlist: virtual cluster overflow"))?;
        i += 1 + ls + os;
    }
    Ok(runs)
}

/// One entry of an $ATTRIBUTE_LIST.
#[derive(Debug, Clone)]
pub struct ListEntry {
    /// Attribute type.
    pub ty: u32,
    /// First VCN of the fragment.
    pub lowest_vcn: u64,
    /// Record holding it.
    pub record: u64,
    /// Attribute name.
    pub name: Vec<u16>,
}

/// Parses the value of an $ATTRIBUTE_LIST.
pub fn parse_attr_list(v: &[u8]) -> io::Result<Vec<ListEntry>> {
    let mut out = Vec::new();
    let mut off = 0;
    while off + 0x1A <= v.len() {
        let len = le16(v, off + 4)? as usize;
        if len < 0x1A || off + len > v.len() {
            return Err(corrupt(format!(
                "attribute list entry at {off} has length {len}"
            )));
        }
        let e = &v[off..off + len];
        let name_len = e[6] as usize;
        let name_ofs = e[7] as usize;
        let name = utf16(
            e.get(name_ofs..name_ofs + 2 * name_len)
                .ok_or_else(|| corrupt("attribute list: name past the entry"))?,
        );
        out.push(ListEntry {
            ty: le32(e, 0)?,
            lowest_vcn: le64(e, 8)?,
            record: mref(le64(e, 0x10)?),
            name,
        });
        off += len;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runlists_with_holes_and_negative_deltas() {
        // 0x10 clusters at 0x100, a hole of 8, 4 clusters at 0x100 - 0x20.
        let p = [0x21, 0x10, 0x00, 0x01, 0x01, 0x08, 0x11, 0x04, 0xE0, 0x00];
        let r = decode_runs(&p, 0).unwrap();
        assert_eq!(
            r,
            vec![
                Run {
                    vcn: 0,
                    lcn: Some(0x100),
                    len: 0x10
                },
                Run {
                    vcn: 0x10,
                    lcn: None,
                    len: 8
                },
                Run {
                    vcn: 0x18,
                    lcn: Some(0xE0),
                    len: 4
                },
            ]
        );
        assert!(decode_runs(&[0x11, 0x04, 0x80], 0).is_err()); // negative LCN
        assert!(decode_runs(&[0x31, 0x04], 0).is_err()); // cut short
        assert!(decode_runs(&[0x01, 0x00], 0).is_err()); // zero length
    }

    #[test]
    fn fixups_detect_torn_records() {
        let mut r = vec![0u8; 1024];
        r[..4].copy_from_slice(b"FILE");
        r[4] = 0x30;
        r[6] = 3;
        r[0x30..0x36].copy_from_slice(&[7, 0, 0xAA, 0xBB, 0xCC, 0xDD]);
        r[510..512].copy_from_slice(&[7, 0]);
        r[1022..1024].copy_from_slice(&[7, 0]);
        let mut ok = r.clone();
        apply_fixups(&mut ok, b"FILE", &|| "rec".into()).unwrap();
        assert_eq!(&ok[510..512], &[0xAA, 0xBB]);
        assert_eq!(&ok[1022..1024], &[0xCC, 0xDD]);
        r[1022] = 8;
        let e = apply_fixups(&mut r, b"FILE", &|| "rec".into()).unwrap_err();
        assert!(e.to_string().contains("torn"), "{e}");
    }
}
