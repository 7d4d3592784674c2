//! ext directory blocks (linear and htree leaves alike) and inline directories.

use std::io;

use super::sb::{u16le, u32le};
use crate::ntfs_ext::corrupt;
use crate::ntfs_ext::tree::NodeKind;

/// A raw directory entry before its inode is looked at.
#[derive(Debug, Clone)]
pub struct Raw {
    pub ino: u32,
    pub name: Vec<u8>,
    pub ftype: u8,
}

/// d_type from the dirent file_type byte (filetype feature).
pub fn kind_of(ftype: u8) -> Option<NodeKind> {
    NodeKind::from_dirent(ftype)
}

/// Parses the entries of one directory block (or inline area). htree index blocks look
/// like empty blocks here, so walking every block of a directory lists it whole.
pub fn parse_block(b: &[u8], out: &mut Vec<Raw>) -> io::Result<()> {
    let mut pos = 0usize;
    while pos + 8 <= b.len() {
        let ino = u32le(b, pos);
        let rec_len = u16le(b, pos + 4) as usize;
        // rec_len of 0 means 65536 on 64 KiB blocks.
        let rec_len = if rec_len == 0 && b.len() == 65536 {
            65536
        } else {
            rec_len
        };
        let name_len = b[pos + 6] as usize;
        if rec_len < 8 || rec_len % 4 != 0 || pos + rec_len > b.len() || 8 + name_len > rec_len {
            return Err(corrupt(format!(
                "directory entry at {pos}: bad record length {rec_len}"
            )));
        }
        if ino != 0 && name_len > 0 {
            let name = b[pos + 8..pos + 8 + name_len].to_vec();
            if name != b"." && name != b".." {
                if name.contains(&b'/') || name.contains(&0) {
                    return Err(corrupt("directory entry name contains '/' or NUL"));
                }
                out.push(Raw {
                    ino,
                    name,
                    ftype: b[pos + 7],
                });
            }
        }
        pos += rec_len;
    }
    Ok(())
}
