//! ext extended attributes: in the inode after `i_extra_isize`, and in one shared block.

use std::io;

use super::sb::{u16le, u32le};
use crate::ntfs_ext::corrupt;

const MAGIC: u32 = 0xEA02_0000;

fn prefix(index: u8) -> Option<&'static str> {
    Some(match index {
        1 => "user.",
        2 => "system.posix_acl_access",
        3 => "system.posix_acl_default",
        4 => "trusted.",
        6 => "security.",
        7 => "system.",
        8 => "system.richacl",
        _ => return None,
    })
}

/// One raw entry: full name, and where its value lives.
#[derive(Debug, Clone)]
pub struct RawEntry {
    pub name: Vec<u8>,
    pub value: Value,
}

/// Where an attribute's bytes are.
#[derive(Debug, Clone)]
pub enum Value {
    /// Inline bytes.
    Bytes(Vec<u8>),
    /// In the data of another inode (ea_inode), with this length.
    Inode(u32, u32),
}

/// Parses entries from `area`; values are at `value_base + e_value_offs` inside `area`.
/// `entries_at` is where the first entry starts.
pub fn parse_entries(
    area: &[u8],
    entries_at: usize,
    value_base: usize,
) -> io::Result<Vec<RawEntry>> {
    let mut out = Vec::new();
    let mut pos = entries_at;
    for _ in 0..4096 {
        if pos + 4 > area.len() || u32le(area, pos) == 0 {
            return Ok(out);
        }
        if pos + 16 > area.len() {
            return Err(corrupt("xattr entry runs past its area"));
        }
        let name_len = area[pos] as usize;
        let index = area[pos + 1];
        let voff = u16le(area, pos + 2) as usize;
        let vinum = u32le(area, pos + 4);
        let vsize = u32le(area, pos + 8) as usize;
        let name_end = pos + 16 + name_len;
        if name_end > area.len() {
            return Err(corrupt("xattr name runs past its area"));
        }
        let suffix = &area[pos + 16..name_end];
        let name = match prefix(index) {
            Some(p) => {
                let mut n = p.as_bytes().to_vec();
                if index != 2 && index != 3 && index != 8 {
                    n.extend_from_slice(suffix);
                }
                n
            }
            None => {
                pos = (name_end + 3) & !3;
                continue; // unknown namespace: skipped
            }
        };
        let value = if vinum != 0 {
            Value::Inode(vinum, vsize as u32)
        } else {
            let start = value_base + voff;
            if start.checked_add(vsize).is_none_or(|e| e > area.len()) {
                return Err(corrupt("xattr value runs past its area"));
            }
            Value::Bytes(area[start..start + vsize].to_vec())
        };
        out.push(RawEntry { name, value });
        pos = (name_end + 3) & !3;
    }
    Err(corrupt("too many xattr entries"))
}

/// Entries stored in the inode body.
pub fn in_inode(area: &[u8]) -> io::Result<Vec<RawEntry>> {
    if area.len() < 4 || u32le(area, 0) != MAGIC {
        return Ok(Vec::new());
    }
    parse_entries(area, 4, 4)
}

/// Entries stored in an xattr block.
pub fn in_block(block: &[u8]) -> io::Result<Vec<RawEntry>> {
    if block.len() < 32 || u32le(block, 0) != MAGIC {
        return Err(corrupt("xattr block has a bad magic"));
    }
    parse_entries(block, 32, 0)
}

/// Converts ext4's compact POSIX ACL into the VFS xattr format getfacl expects.
pub fn acl_to_vfs(v: &[u8]) -> Option<Vec<u8>> {
    if v.len() < 4 || u32le(v, 0) != 1 {
        return None;
    }
    let mut out = 2u32.to_le_bytes().to_vec();
    let mut p = 4;
    while p + 4 <= v.len() {
        let tag = u16le(v, p);
        let perm = u16le(v, p + 2);
        // USER (2) and GROUP (8) carry an id; the others are short entries.
        let (id, step) = if tag == 2 || tag == 8 {
            if p + 8 > v.len() {
                return None;
            }
            (u32le(v, p + 4), 8)
        } else {
            (u32::MAX, 4)
        };
        out.extend_from_slice(&tag.to_le_bytes());
        out.extend_from_slice(&perm.to_le_bytes());
        out.extend_from_slice(&id.to_le_bytes());
        p += step;
    }
    Some(out)
}
