//! Reparse points and Interix special files: what turns an NTFS file into a symlink,
//! a device node, a FIFO or a socket, and which reparse tags hide data we cannot read.

/// Windows symbolic link.
pub const TAG_SYMLINK: u32 = 0xA000_000C;
/// Junction / volume mount point.
pub const TAG_MOUNT_POINT: u32 = 0xA000_0003;
/// WSL symbolic link.
pub const TAG_LX_SYMLINK: u32 = 0xA000_001D;
/// WSL special files.
pub const TAG_AF_UNIX: u32 = 0x8000_0023;
/// WSL FIFO.
pub const TAG_LX_FIFO: u32 = 0x8000_0024;
/// WSL character device.
pub const TAG_LX_CHR: u32 = 0x8000_0025;
/// WSL block device.
pub const TAG_LX_BLK: u32 = 0x8000_0026;
/// Windows Overlay Filter: data compressed into a named stream (XPRESS/LZX).
pub const TAG_WOF: u32 = 0x8000_0017;
/// Data deduplication: data lives in the volume's chunk store.
pub const TAG_DEDUP: u32 = 0x8000_0013;

/// What a reparse point makes of a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reparse {
    /// A link with its target as shown to Linux.
    Link(Vec<u8>),
    /// A WSL special file (FIFO, socket, device).
    Special(u32),
    /// Data held elsewhere in a form we cannot decode; reads fail naming the reason.
    Opaque(u32, &'static str),
    /// WOF file provider ("Compact OS"): the data is compressed into the named stream
    /// `WofCompressedData` with this algorithm (see [`WofAlgorithm`]).
    Wof(WofAlgorithm),
    /// Any other tag: listed as a regular entry.
    Other(u32),
}

/// How a WOF-compressed file's chunks are compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WofAlgorithm {
    /// XPRESS with Huffman coding, in chunks of this many bytes (4, 8 or 16 KiB).
    Xpress(u32),
    /// LZX in 32 KiB chunks.
    Lzx,
}

impl WofAlgorithm {
    /// Bytes of data per chunk: chunks are the unit of decoding and of the table.
    pub fn chunk(self) -> u32 {
        match self {
            WofAlgorithm::Xpress(c) => c,
            WofAlgorithm::Lzx => 32768,
        }
    }
}

/// Tag of a reparse buffer, if it has one.
pub fn tag(data: &[u8]) -> Option<u32> {
    Some(u32::from_le_bytes(data.get(..4)?.try_into().ok()?))
}

/// Decodes a reparse buffer (tag, length, reserved, then tag-specific data).
pub fn parse(data: &[u8]) -> Option<Reparse> {
    let tag = tag(data)?;
    let dlen = u16::from_le_bytes(data.get(4..6)?.try_into().ok()?) as usize;
    let body = data.get(8..8 + dlen)?;
    Some(match tag {
        TAG_SYMLINK => {
            let relative = u32::from_le_bytes(body.get(8..12)?.try_into().ok()?) & 1 != 0;
            Reparse::Link(windows_target(body, 12, relative)?)
        }
        TAG_MOUNT_POINT => Reparse::Link(windows_target(body, 8, false)?),
        TAG_LX_SYMLINK => {
            let t = body.get(4..)?;
            if t.is_empty() || t.contains(&0) {
                return None;
            }
            Reparse::Link(t.to_vec())
        }
        TAG_AF_UNIX | TAG_LX_FIFO | TAG_LX_CHR | TAG_LX_BLK => Reparse::Special(tag),
        TAG_WOF => wof(body),
        TAG_DEDUP => Reparse::Opaque(tag, "deduplicated (data lives in the chunk store)"),
        _ => Reparse::Other(tag),
    })
}

/// A WOF reparse body: WOF version 1, provider, then for the file provider (2) its
/// version 1 and the algorithm. The WIM provider (WIMBoot) keeps the data in an image
/// file elsewhere.
fn wof(body: &[u8]) -> Reparse {
    let field = |i: usize| {
        body.get(i..i + 4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
    };
    match (field(0), field(4), field(8), field(12)) {
        (Some(1), Some(2), Some(1), Some(algorithm)) => match algorithm {
            0 => Reparse::Wof(WofAlgorithm::Xpress(4096)),
            1 => Reparse::Wof(WofAlgorithm::Lzx),
            2 => Reparse::Wof(WofAlgorithm::Xpress(8192)),
            3 => Reparse::Wof(WofAlgorithm::Xpress(16384)),
            _ => Reparse::Opaque(TAG_WOF, "WOF-compressed with an unknown algorithm"),
        },
        (Some(1), Some(1), _, _) => Reparse::Opaque(
            TAG_WOF,
            "backed by a WIM image (WIMBoot): the data is not on this volume",
        ),
        _ => Reparse::Opaque(
            TAG_WOF,
            "WOF reparse data of an unknown version or provider",
        ),
    }
}

/// Target of a symlink or junction: the substitute name, with `\??\` dropped,
/// `\??\UNC\` shown as `//` and backslashes as slashes. Absolute Windows paths keep
/// their drive (`C:/Users/x`), since no drive letter maps to this mount.
fn windows_target(body: &[u8], buf_at: usize, relative: bool) -> Option<Vec<u8>> {
    let field = |i: usize| -> Option<usize> {
        Some(u16::from_le_bytes(body.get(i..i + 2)?.try_into().ok()?) as usize)
    };
    let (so, sl, po, pl) = (field(0)?, field(2)?, field(4)?, field(6)?);
    let buf = body.get(buf_at..)?;
    let units = |o: usize, l: usize| -> Option<Vec<u16>> {
        let b = buf.get(o..o.checked_add(l)?)?;
        Some(
            b.chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .collect(),
        )
    };
    let mut name = units(so, sl)?;
    if name.is_empty() {
        name = units(po, pl)?;
    }
    let mut s = String::from_utf16(&name).ok()?;
    if !relative {
        for (prefix, with) in [("\\??\\UNC\\", "//"), ("\\??\\", ""), ("\\\\?\\", "")] {
            if let Some(rest) = s.strip_prefix(prefix) {
                s = format!("{with}{rest}");
                break;
            }
        }
    }
    let s = s.replace('\\', "/");
    if s.is_empty() || s.contains('\0') {
        return None;
    }
    Some(s.into_bytes())
}

/// Interix special files as ntfs-3g writes them: system-flagged files whose data
/// starts with a magic (symlink, device) or has size 0 (FIFO) or 1 (socket).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Interix {
    /// Symbolic link with its target.
    Symlink(Vec<u8>),
    /// Character device (major, minor).
    Char(u64, u64),
    /// Block device (major, minor).
    Block(u64, u64),
    /// Named pipe.
    Fifo,
    /// Socket.
    Socket,
}

/// Longest Interix data looked at (a symlink of 4096 UTF-16 units).
pub const INTERIX_MAX: u64 = 8 + 8192;

/// Decodes the data of a system-flagged file, or `None` for an ordinary file.
pub fn interix(data: &[u8]) -> Option<Interix> {
    match data.len() {
        0 => return Some(Interix::Fifo),
        1 => return Some(Interix::Socket),
        _ => {}
    }
    let magic = data.get(..8)?;
    let num = |i: usize| -> Option<u64> {
        Some(u64::from_le_bytes(data.get(i..i + 8)?.try_into().ok()?))
    };
    match magic {
        b"IntxLNK\x01" => {
            let units: Vec<u16> = data[8..]
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .collect();
            let s = String::from_utf16(&units).ok()?;
            if s.is_empty() || s.contains('\0') {
                return None;
            }
            Some(Interix::Symlink(s.into_bytes()))
        }
        b"IntxCHR\0" if data.len() == 24 => Some(Interix::Char(num(8)?, num(16)?)),
        b"IntxBLK\0" if data.len() == 24 => Some(Interix::Block(num(8)?, num(16)?)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link_buffer(tag: u32, subst: &str, print: &str, flags: Option<u32>) -> Vec<u8> {
        let s: Vec<u8> = subst.encode_utf16().flat_map(u16::to_le_bytes).collect();
        let p: Vec<u8> = print.encode_utf16().flat_map(u16::to_le_bytes).collect();
        let mut body = Vec::new();
        for v in [0, s.len(), s.len(), p.len()] {
            body.extend_from_slice(&(v as u16).to_le_bytes());
        }
        if let Some(f) = flags {
            body.extend_from_slice(&f.to_le_bytes());
        }
        body.extend_from_slice(&s);
        body.extend_from_slice(&p);
        let mut out = tag.to_le_bytes().to_vec();
        out.extend_from_slice(&(body.len() as u16).to_le_bytes());
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&body);
        out
    }

    #[test]
    fn symlinks_and_junctions() {
        let rel = link_buffer(TAG_SYMLINK, "..\\dir\\f.txt", "..\\dir\\f.txt", Some(1));
        assert_eq!(parse(&rel), Some(Reparse::Link(b"../dir/f.txt".to_vec())));
        let abs = link_buffer(TAG_SYMLINK, "\\??\\C:\\Users\\x", "C:\\Users\\x", Some(0));
        assert_eq!(parse(&abs), Some(Reparse::Link(b"C:/Users/x".to_vec())));
        let unc = link_buffer(TAG_SYMLINK, "\\??\\UNC\\srv\\share", "", Some(0));
        assert_eq!(parse(&unc), Some(Reparse::Link(b"//srv/share".to_vec())));
        let j = link_buffer(TAG_MOUNT_POINT, "\\??\\D:\\data", "D:\\data", None);
        assert_eq!(parse(&j), Some(Reparse::Link(b"D:/data".to_vec())));
        let mut lx = TAG_LX_SYMLINK.to_le_bytes().to_vec();
        lx.extend_from_slice(&[10, 0, 0, 0, 2, 0, 0, 0]);
        lx.extend_from_slice(b"/etc/x");
        assert_eq!(parse(&lx), Some(Reparse::Link(b"/etc/x".to_vec())));
    }

    #[test]
    fn truncated_buffers_are_refused() {
        let rel = link_buffer(TAG_SYMLINK, "a", "a", Some(1));
        for n in 0..rel.len() {
            assert_eq!(parse(&rel[..n]), None, "{n}");
        }
        assert!(matches!(
            parse(&[0x17, 0, 0, 0x80, 0, 0, 0, 0]),
            Some(Reparse::Opaque(TAG_WOF, _))
        ));
    }

    fn wof_buffer(fields: &[u32]) -> Vec<u8> {
        let mut b = TAG_WOF.to_le_bytes().to_vec();
        b.extend_from_slice(&((fields.len() * 4) as u16).to_le_bytes());
        b.extend_from_slice(&[0, 0]);
        b.extend(fields.iter().flat_map(|f| f.to_le_bytes()));
        b
    }

    #[test]
    fn wof_providers_and_algorithms() {
        let file = |a| parse(&wof_buffer(&[1, 2, 1, a]));
        assert_eq!(file(0), Some(Reparse::Wof(WofAlgorithm::Xpress(4096))));
        assert_eq!(file(1), Some(Reparse::Wof(WofAlgorithm::Lzx)));
        assert_eq!(file(2), Some(Reparse::Wof(WofAlgorithm::Xpress(8192))));
        assert_eq!(file(3), Some(Reparse::Wof(WofAlgorithm::Xpress(16384))));
        assert!(matches!(file(4), Some(Reparse::Opaque(TAG_WOF, _))));
        // WIMBoot, a later version, a body cut short: not readable, each saying why.
        for f in [&[1, 1, 1, 0][..], &[2, 2, 1, 0], &[1, 2, 1]] {
            assert!(matches!(
                parse(&wof_buffer(f)),
                Some(Reparse::Opaque(TAG_WOF, _))
            ));
        }
    }

    #[test]
    fn interix_files() {
        let mut l = b"IntxLNK\x01".to_vec();
        l.extend("t/ä".encode_utf16().flat_map(u16::to_le_bytes));
        assert_eq!(
            interix(&l),
            Some(Interix::Symlink("t/ä".as_bytes().to_vec()))
        );
        let mut c = b"IntxCHR\0".to_vec();
        c.extend_from_slice(&1u64.to_le_bytes());
        c.extend_from_slice(&3u64.to_le_bytes());
        assert_eq!(interix(&c), Some(Interix::Char(1, 3)));
        assert_eq!(interix(b""), Some(Interix::Fifo));
        assert_eq!(interix(b"x"), Some(Interix::Socket));
        assert_eq!(interix(b"ordinary data"), None);
    }
}
