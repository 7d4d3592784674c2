//! Directory indexes: $FILE_NAME keys, $INDEX_ROOT and INDX node entries.

use std::io;

use super::record::{le16, le32, le64, utf16};
use crate::ntfs_ext::corrupt;

/// Name namespaces.
pub mod ns {
    /// 8.3 short name that duplicates a Win32 one: hidden. (0 is POSIX, 1 Win32,
    /// 3 a name valid as both Win32 and DOS.)
    pub const DOS: u8 = 2;
}

/// File attribute bits (DOS attributes and more).
pub mod fattr {
    /// System file (Interix special files carry it).
    pub const SYSTEM: u32 = 0x0004;
    /// Directory (in $FILE_NAME copies).
    pub const DIRECTORY: u32 = 0x0010;
    /// Has a reparse point.
    pub const REPARSE_POINT: u32 = 0x0400;
    /// EFS-encrypted.
    pub const ENCRYPTED: u32 = 0x4000;
    /// Directory with an $I30 index (in $FILE_NAME copies).
    pub const DUP_DIR: u32 = 0x1000_0000;
}

/// A $FILE_NAME value (an attribute or an index key).
#[derive(Debug, Clone)]
pub struct FileName {
    /// File attributes as of the last name update.
    pub attrs: u32,
    /// Namespace ([`ns`]).
    pub namespace: u8,
    /// The name in UTF-16.
    pub name: Vec<u16>,
}

impl FileName {
    /// Parses a $FILE_NAME value.
    pub fn parse(b: &[u8]) -> io::Result<FileName> {
        if b.len() < 0x42 {
            return Err(corrupt(format!("$FILE_NAME of {} bytes", b.len())));
        }
        let n = b[0x40] as usize;
        let name = b
            .get(0x42..0x42 + 2 * n)
            .ok_or_else(|| corrupt("$FILE_NAME: name past the value"))?;
        Ok(FileName {
            attrs: le32(b, 0x38)?,
            namespace: b[0x41],
            name: utf16(name),
        })
    }
}

/// One index entry: a name pointing at a record, and maybe a child node.
#[derive(Debug, Clone)]
pub struct Entry {
    /// File reference (record and sequence).
    pub file: u64,
    /// The key; `None` for the closing entry of a node.
    pub key: Option<FileName>,
    /// VCN of the child node holding names that sort before this entry.
    pub child: Option<u64>,
}

/// Entries of an index node, from its index header at `hdr` in `b`.
pub fn parse_node(b: &[u8], hdr: usize) -> io::Result<Vec<Entry>> {
    let first = le32(b, hdr)? as usize;
    let used = le32(b, hdr + 4)? as usize;
    let end = hdr
        .checked_add(used)
        .filter(|&e| e <= b.len())
        .ok_or_else(|| corrupt(format!("index header claims {used} bytes in use")))?;
    let mut off = hdr
        .checked_add(first)
        .ok_or_else(|| corrupt("index header: entries offset overflow"))?;
    let mut out = Vec::new();
    loop {
        if off + 0x10 > end {
            return Err(corrupt("index node ends without a closing entry"));
        }
        let len = le16(b, off + 8)? as usize;
        let key_len = le16(b, off + 0x0A)? as usize;
        let flags = le16(b, off + 0x0C)?;
        if len < 0x10 || off + len > end || 0x10 + key_len > len {
            return Err(corrupt(format!(
                "index entry at {off} has length {len}, key {key_len}"
            )));
        }
        let e = &b[off..off + len];
        let child = if flags & 1 != 0 {
            if len < 0x18 {
                return Err(corrupt("index entry with a child is too short"));
            }
            Some(le64(e, len - 8)?)
        } else {
            None
        };
        let last = flags & 2 != 0;
        let key = if last || key_len == 0 {
            None
        } else {
            Some(FileName::parse(&e[0x10..0x10 + key_len])?)
        };
        out.push(Entry {
            file: le64(e, 0)?,
            key,
            child,
        });
        if last {
            return Ok(out);
        }
        off += len;
    }
}

/// Index root fields: index record size and the root node's entries.
pub struct Root {
    /// Bytes per index record of this index.
    pub block_size: u32,
    /// Entries of the root node.
    pub entries: Vec<Entry>,
}

/// Parses an $INDEX_ROOT value of a filename index.
pub fn parse_root(v: &[u8]) -> io::Result<Root> {
    let indexed = le32(v, 0)?;
    if indexed != super::record::ty::FILE_NAME {
        return Err(corrupt(format!(
            "$INDEX_ROOT indexes attribute {indexed:#x}, not names"
        )));
    }
    let block_size = le32(v, 8)?;
    if !(512..=65536).contains(&block_size) || !block_size.is_power_of_two() {
        return Err(corrupt(format!(
            "$INDEX_ROOT: index record size {block_size}"
        )));
    }
    Ok(Root {
        block_size,
        entries: parse_node(v, 0x10)?,
    })
}
