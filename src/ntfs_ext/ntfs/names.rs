//! UTF-16 names to bytes and back, and NTFS's case-folding collation of names.
//!
//! Names become UTF-8; an unpaired surrogate becomes its 3-byte generalized-UTF-8
//! (WTF-8) form, so every name round-trips. `/` and NUL, legal in POSIX-namespace
//! names but never in a Linux path component, are shown as U+2215 and U+2400.

use std::cmp::Ordering;

/// Stand-in for `/` inside a name.
pub const SLASH_STAND_IN: char = '\u{2215}';
/// Stand-in for NUL inside a name.
pub const NUL_STAND_IN: char = '\u{2400}';

/// An ASCII name as the UTF-16 NTFS stores, at compile time (`$I30`, stream names).
pub const fn ascii_utf16<const N: usize>(name: &[u8; N]) -> [u16; N] {
    let mut out = [0u16; N];
    let mut i = 0;
    while i < N {
        out[i] = name[i] as u16;
        i += 1;
    }
    out
}

/// Converts an on-disk UTF-16 name to the bytes shown to the kernel.
pub fn to_bytes(units: &[u16]) -> Vec<u8> {
    let mut out = Vec::with_capacity(units.len() + 4);
    for r in char::decode_utf16(units.iter().copied()) {
        match r {
            Ok('/') => push_char(&mut out, SLASH_STAND_IN),
            Ok('\0') => push_char(&mut out, NUL_STAND_IN),
            Ok(c) => push_char(&mut out, c),
            Err(e) => {
                let u = e.unpaired_surrogate() as u32;
                out.extend_from_slice(&[
                    0xE0 | (u >> 12) as u8,
                    0x80 | ((u >> 6) & 0x3F) as u8,
                    0x80 | (u & 0x3F) as u8,
                ]);
            }
        }
    }
    out
}

fn push_char(out: &mut Vec<u8>, c: char) {
    let mut b = [0u8; 4];
    out.extend_from_slice(c.encode_utf8(&mut b).as_bytes());
}

/// Converts bytes from the kernel back to UTF-16; `None` when they cannot name
/// anything on the volume (invalid or non-canonical WTF-8).
pub fn from_bytes(bytes: &[u8]) -> Option<Vec<u16>> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    let mut prev_high = false;
    while i < bytes.len() {
        let b0 = bytes[i];
        let (cp, len) = if b0 < 0x80 {
            (b0 as u32, 1)
        } else if b0 & 0xE0 == 0xC0 {
            (b0 as u32 & 0x1F, 2)
        } else if b0 & 0xF0 == 0xE0 {
            (b0 as u32 & 0x0F, 3)
        } else if b0 & 0xF8 == 0xF0 {
            (b0 as u32 & 0x07, 4)
        } else {
            return None;
        };
        if i + len > bytes.len() {
            return None;
        }
        let mut cp = cp;
        for &b in &bytes[i + 1..i + len] {
            if b & 0xC0 != 0x80 {
                return None;
            }
            cp = cp << 6 | (b as u32 & 0x3F);
        }
        let min = [0, 0, 0x80, 0x800, 0x10000][len];
        if cp < min || cp > 0x10FFFF {
            return None;
        }
        i += len;
        if (0xD800..0xE000).contains(&cp) {
            // A low surrogate right after a high one would have paired: not canonical.
            if (0xDC00..0xE000).contains(&cp) && prev_high {
                return None;
            }
            prev_high = cp < 0xDC00;
            out.push(cp as u16);
            continue;
        }
        prev_high = false;
        let c = char::from_u32(cp)?;
        let mut buf = [0u16; 2];
        out.extend_from_slice(c.encode_utf16(&mut buf));
    }
    Some(out)
}

/// True when a shown name may hold stand-ins, so a lookup must consult the listing.
pub fn has_stand_in(bytes: &[u8]) -> bool {
    let mut slash = [0u8; 4];
    let mut nul = [0u8; 4];
    let slash = SLASH_STAND_IN.encode_utf8(&mut slash).as_bytes();
    let nul = NUL_STAND_IN.encode_utf8(&mut nul).as_bytes();
    bytes.windows(3).any(|w| w == slash || w == nul)
}

/// The volume's upper-case table, used to order directory indexes.
pub struct UpCase(Vec<u16>);

impl UpCase {
    /// Reads the table from the bytes of `$UpCase` (65 536 little-endian entries).
    pub fn from_bytes(data: &[u8]) -> Option<Self> {
        if data.len() < 131_072 {
            return None;
        }
        Some(UpCase(
            data[..131_072]
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .collect(),
        ))
    }

    /// A table built from Unicode's simple upper-case mappings, for a damaged `$UpCase`.
    pub fn fallback() -> Self {
        UpCase(
            (0..=0xFFFFu32)
                .map(|u| {
                    let Some(c) = char::from_u32(u) else {
                        return u as u16;
                    };
                    let mut up = c.to_uppercase();
                    match (up.next(), up.next()) {
                        (Some(x), None) if (x as u32) < 0x10000 => x as u32 as u16,
                        _ => u as u16,
                    }
                })
                .collect(),
        )
    }

    fn up(&self, u: u16) -> u16 {
        self.0[u as usize]
    }

    /// NTFS's order of file names: case-insensitive first, then exact.
    pub fn collate(&self, a: &[u16], b: &[u16]) -> Ordering {
        let folded = a
            .iter()
            .map(|&x| self.up(x))
            .cmp(b.iter().map(|&x| self.up(x)));
        folded.then_with(|| a.cmp(b))
    }

    /// True when two names differ only in case.
    pub fn eq_ignore_case(&self, a: &[u16], b: &[u16]) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(&x, &y)| self.up(x) == self.up(y))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utf16(s: &str) -> Vec<u16> {
        s.encode_utf16().collect()
    }

    #[test]
    fn names_round_trip_including_unpaired_surrogates() {
        let cases: Vec<Vec<u16>> = vec![
            utf16("plain.txt"),
            utf16("Grüße 日本 🎉"),
            vec![0x61, 0xD800, 0x62],
            vec![0xDC00],
            vec![0xDBFF],
            vec![0xD800, 0x41, 0xDC00],
        ];
        for c in cases {
            let b = to_bytes(&c);
            assert_eq!(from_bytes(&b).as_deref(), Some(c.as_slice()), "{b:?}");
        }
    }

    #[test]
    fn slash_and_nul_never_reach_the_kernel() {
        let b = to_bytes(&utf16("a/b\0c"));
        assert!(!b.contains(&b'/') && !b.contains(&0));
        assert!(has_stand_in(&b));
    }

    #[test]
    fn non_canonical_input_is_refused() {
        assert_eq!(from_bytes(b"\xC0\x80"), None); // overlong NUL
        assert_eq!(from_bytes(b"\xED\xA0\x80\xED\xB0\x80"), None); // split pair
        assert_eq!(from_bytes(b"\xFF"), None);
        assert_eq!(from_bytes(b"\xE2\x82"), None);
    }

    #[test]
    fn collation_folds_case_then_breaks_ties_exactly() {
        let up = UpCase::fallback();
        assert_eq!(up.collate(&utf16("abc"), &utf16("ABD")), Ordering::Less);
        assert_eq!(up.collate(&utf16("ABC"), &utf16("abc")), Ordering::Less);
        assert_eq!(up.collate(&utf16("é"), &utf16("É")), Ordering::Greater);
        assert!(up.eq_ignore_case(&utf16("straße"), &utf16("STRAßE")));
    }
}
