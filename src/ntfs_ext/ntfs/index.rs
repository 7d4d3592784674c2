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
    raw_entries(b, hdr, |e, key, child| {
        Ok(Entry {
            file: le64(e, 0)?,
            key: key.map(FileName::parse).transpose()?,
            child,
        })
    })
}

/// One entry of a view index (`$Secure:$SII`, `$ObjId:$O`): a key and its data
/// where a filename index has a file reference.
#[derive(Debug, Clone)]
pub struct ViewEntry {
    /// The key; `None` for the closing entry of a node.
    pub key: Option<Vec<u8>>,
    /// The data the key maps to (empty in a closing entry).
    pub data: Vec<u8>,
    /// VCN of the child node holding keys that sort before this entry.
    pub child: Option<u64>,
}

/// Entries of a view index node, from its index header at `hdr` in `b`.
pub fn parse_view_node(b: &[u8], hdr: usize) -> io::Result<Vec<ViewEntry>> {
    raw_entries(b, hdr, |e, key, child| {
        let data = match key {
            None => Vec::new(),
            Some(_) => {
                let (at, len) = (le16(e, 0)? as usize, le16(e, 2)? as usize);
                e.get(at..at + len)
                    .ok_or_else(|| {
                        corrupt(format!("view index data at {at}+{len} past its entry"))
                    })?
                    .to_vec()
            }
        };
        Ok(ViewEntry {
            key: key.map(<[u8]>::to_vec),
            data,
            child,
        })
    })
}

/// Walks the entries of an index node (both kinds share the entry header: length,
/// key length, flags, then the key at 0x10 and a child VCN in the last 8 bytes),
/// handing each entry, its key (`None` in the closing entry) and child to `f`.
fn raw_entries<T>(
    b: &[u8],
    hdr: usize,
    mut f: impl FnMut(&[u8], Option<&[u8]>, Option<u64>) -> io::Result<T>,
) -> io::Result<Vec<T>> {
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
        let key = (!last && key_len > 0).then(|| &e[0x10..0x10 + key_len]);
        out.push(f(e, key, child)?);
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
    Ok(Root {
        block_size: root_block_size(v)?,
        entries: parse_node(v, 0x10)?,
    })
}

/// Parses the $INDEX_ROOT value of a view index: its index record size and the root
/// node's entries.
pub fn parse_view_root(v: &[u8]) -> io::Result<(u32, Vec<ViewEntry>)> {
    Ok((root_block_size(v)?, parse_view_node(v, 0x10)?))
}

/// The index record size an $INDEX_ROOT value gives, checked.
fn root_block_size(v: &[u8]) -> io::Result<u32> {
    let block_size = le32(v, 8)?;
    if !(512..=65536).contains(&block_size) || !block_size.is_power_of_two() {
        return Err(corrupt(format!(
            "$INDEX_ROOT: index record size {block_size}"
        )));
    }
    Ok(block_size)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An index header at offset 0 followed by `entries`.
    fn node(entries: &[Vec<u8>]) -> Vec<u8> {
        let body = entries.concat();
        let used = 16 + body.len() as u32;
        let mut b = [16u32, used, used, 0].map(u32::to_le_bytes).concat();
        b.extend_from_slice(&body);
        b
    }

    /// A view index entry: data offset and length, entry and key lengths, flags (1: a
    /// child follows, 2: closing entry), the key, the data, the child's VCN.
    fn view_entry(key: &[u8], data: &[u8], child: Option<u64>) -> Vec<u8> {
        let data_at = 16 + key.len();
        let len = ((data_at + data.len() + 7) & !7) + if child.is_some() { 8 } else { 0 };
        let mut e = vec![0u8; len];
        e[0..2].copy_from_slice(&(data_at as u16).to_le_bytes());
        e[2..4].copy_from_slice(&(data.len() as u16).to_le_bytes());
        e[8..10].copy_from_slice(&(len as u16).to_le_bytes());
        e[10..12].copy_from_slice(&(key.len() as u16).to_le_bytes());
        let flags = u16::from(child.is_some()) | if key.is_empty() { 2 } else { 0 };
        e[12..14].copy_from_slice(&flags.to_le_bytes());
        e[16..data_at].copy_from_slice(key);
        e[data_at..data_at + data.len()].copy_from_slice(data);
        if let Some(c) = child {
            e[len - 8..].copy_from_slice(&c.to_le_bytes());
        }
        e
    }

    #[test]
    fn view_entries_give_their_key_data_and_child() {
        let b = node(&[
            view_entry(&7u32.to_le_bytes(), b"twenty bytes of data", Some(1)),
            view_entry(&9u32.to_le_bytes(), b"more", None),
            view_entry(&[], &[], Some(3)),
        ]);
        let v = parse_view_node(&b, 0).unwrap();
        let got: Vec<_> = v
            .iter()
            .map(|e| (e.key.clone(), e.data.clone(), e.child))
            .collect();
        assert_eq!(
            got,
            vec![
                (
                    Some(7u32.to_le_bytes().to_vec()),
                    b"twenty bytes of data".to_vec(),
                    Some(1)
                ),
                (Some(9u32.to_le_bytes().to_vec()), b"more".to_vec(), None),
                (None, Vec::new(), Some(3)),
            ]
        );
    }

    #[test]
    fn view_data_outside_its_entry_is_refused() {
        let mut e = view_entry(&7u32.to_le_bytes(), b"data", None);
        e[2..4].copy_from_slice(&100u16.to_le_bytes());
        let b = node(&[e, view_entry(&[], &[], None)]);
        let err = parse_view_node(&b, 0).unwrap_err().to_string();
        assert!(err.contains("past its entry"), "{err}");
    }
}
