//! XPRESS with Huffman coding ("LZ77+Huffman", MS-XCA 2.1–2.2), the compression of
//! WOF ("Compact OS", `compact /exe:xpress4k`) files: each chunk of 4, 8 or 16 KiB is
//! a 256-byte table of 512 four-bit code lengths, then a bit stream of literals and
//! matches read in 16-bit little-endian words, with long match lengths in bytes
//! between them.

use std::io;

use super::huffman::Huffman;
use crate::ntfs_ext::corrupt;

const SYMBOLS: usize = 512;
/// Output one Huffman table may produce (MS-XCA's block); WOF chunks are smaller.
pub const MAX_OUTPUT: usize = 65536;

/// The decoder for a chunk's table of 512 four-bit code lengths (two per byte, the
/// lower symbol in the low nibble); the code must be complete (MS-XCA).
fn decoder(table: &[u8]) -> io::Result<Huffman> {
    let lengths: Vec<u8> = (0..SYMBOLS)
        .map(|s| table[s / 2] >> (4 * (s % 2)) & 15)
        .collect();
    Huffman::new(&lengths, false)
        .ok_or_else(|| corrupt("XPRESS Huffman table is not a complete code"))
}

/// The input: 16-bit words feeding a 32-bit bit buffer, and bytes taken between them
/// from the same position.
struct Input<'a> {
    src: &'a [u8],
    pos: usize,
    bits: u32,
    /// Valid bits in `bits` beyond the 16 every step may use.
    extra: i32,
}

impl Input<'_> {
    /// The next word; past the end of the input, zeros (encoders stop at the last bit
    /// they need; the caller's output bound ends the loop).
    fn word(&mut self) -> u32 {
        let w = match self.src.get(self.pos..self.pos + 2) {
            Some(b) => u16::from_le_bytes([b[0], b[1]]) as u32,
            None => 0,
        };
        self.pos += 2;
        w
    }

    fn consume(&mut self, n: u32) {
        if n == 0 {
            return;
        }
        self.bits <<= n;
        self.extra -= n as i32;
        if self.extra < 0 {
            let w = self.word();
            self.bits |= w << -self.extra;
            self.extra += 16;
        }
    }

    fn byte(&mut self) -> io::Result<u8> {
        let b = *self
            .src
            .get(self.pos)
            .ok_or_else(|| corrupt("XPRESS match length cut short"))?;
        self.pos += 1;
        Ok(b)
    }
}

/// Decompresses one chunk (one Huffman table) from `src` into all of `dst`.
pub fn decompress(src: &[u8], dst: &mut [u8]) -> io::Result<()> {
    if dst.len() > MAX_OUTPUT {
        return Err(corrupt("XPRESS chunk larger than one Huffman block"));
    }
    let table = src
        .get(..256)
        .ok_or_else(|| corrupt("XPRESS chunk shorter than its Huffman table"))?;
    let dec = decoder(table)?;
    let mut input = Input {
        src,
        pos: 256,
        bits: 0,
        extra: 16,
    };
    input.bits = input.word() << 16;
    input.bits |= input.word();
    let mut op = 0;
    while op < dst.len() {
        let (sym, n) = dec
            .decode(input.bits >> 16)
            .ok_or_else(|| corrupt("XPRESS code not in its table"))?;
        input.consume(n);
        if sym < 256 {
            dst[op] = sym as u8;
            op += 1;
            continue;
        }
        let sym = sym - 256;
        let mut len = (sym & 15) as usize;
        let obits = (sym >> 4) as u32;
        if len == 15 {
            let b = input.byte()? as usize;
            len = if b == 255 {
                let lo = input.byte()? as usize;
                let hi = input.byte()? as usize;
                let v = lo | hi << 8;
                if v < 15 {
                    return Err(corrupt("XPRESS match length out of range"));
                }
                v
            } else {
                b + 15
            };
        }
        len += 3;
        let back = if obits == 0 {
            1
        } else {
            ((input.bits >> (32 - obits)) | 1 << obits) as usize
        };
        input.consume(obits);
        if back > op || len > dst.len() - op {
            return Err(corrupt("XPRESS match reaches outside the chunk"));
        }
        super::lznt1::copy_match(dst, op, back, len);
        op += len;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A table giving the listed (symbol, length) pairs, every other symbol unused.
    fn table(lens: &[(usize, u8)]) -> Vec<u8> {
        let mut t = vec![0u8; 256];
        for &(s, l) in lens {
            t[s / 2] |= l << (4 * (s % 2));
        }
        t
    }

    #[test]
    fn incomplete_and_oversubscribed_codes_are_errors() {
        let mut out = [0u8; 16];
        // One symbol of length 1: half the code space unused.
        let mut src = table(&[(65, 1)]);
        src.extend_from_slice(&[0; 8]);
        assert!(decompress(&src, &mut out).is_err());
        // Three symbols of length 1.
        let mut src = table(&[(65, 1), (66, 1), (67, 1)]);
        src.extend_from_slice(&[0; 8]);
        assert!(decompress(&src, &mut out).is_err());
        // No table at all.
        assert!(decompress(&[0; 100], &mut out).is_err());
    }

    #[test]
    fn two_symbol_code_and_a_match() {
        // 'A' = 0, and symbol 256 + 16 * 0 + 2 (match of 5 at offset 1) = 1.
        let src_table = table(&[(b'A' as usize, 1), (256 + 2, 1)]);
        // Bits: 0 (A), 1 (match, no offset bits): 01 then zeros.
        let mut src = src_table.clone();
        src.extend_from_slice(&0x4000u16.to_le_bytes());
        src.extend_from_slice(&[0, 0]);
        let mut out = [0u8; 6];
        decompress(&src, &mut out).unwrap();
        assert_eq!(&out, b"AAAAAA");
        // A match before any output reaches outside the chunk.
        let mut src = src_table;
        src.extend_from_slice(&0x8000u16.to_le_bytes());
        src.extend_from_slice(&[0, 0]);
        assert!(decompress(&src, &mut out).is_err());
    }

    /// Random bit streams under complete codes (all 512 symbols at 9 bits; one with
    /// lengths 1 to 15, so the slow path runs) decode or fail, never panic or overrun.
    #[test]
    fn random_streams_never_panic() {
        let mut x = 0x9E37_79B9u32;
        let mut rnd = move || {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x
        };
        // Lengths 1..=14 for symbols 0..14, then 15 for symbols 14 and 15 fill the
        // rest of the code space: sum 2^-1 + ... + 2^-14 + 2 * 2^-15 = 1.
        let mut skewed = vec![0u8; 256];
        for s in 0..16usize {
            let l = (s as u8 + 1).min(15);
            skewed[s / 2] |= l << (4 * (s % 2));
        }
        let mut oks = 0;
        for round in 0..3000 {
            let mut src = if round % 2 == 0 {
                vec![0x99u8; 256]
            } else {
                skewed.clone()
            };
            let n = (rnd() % 600) as usize;
            src.extend((0..n).map(|_| rnd() as u8));
            let mut out = vec![0u8; 1 + (rnd() % 16384) as usize];
            oks += decompress(&src, &mut out).is_ok() as u32;
        }
        assert!(oks > 0, "some random streams decode");
    }

    /// A chunk written by hand from the spec (every symbol 9 bits; 'A', then symbol
    /// 271: a match at offset 1 whose length 4092 + 3 follows in bytes), which
    /// libfsntfs also decodes to 4096 'A's (the fuzz seeds carry it in a WOF file).
    #[test]
    fn known_chunk() {
        let mut src = vec![0x99u8; 256];
        src.extend_from_slice(&[0xc3, 0x20, 0x00, 0xc0, 0x00, 0x00, 0xff, 0xfc, 0x0f]);
        let mut out = vec![0u8; 4096];
        decompress(&src, &mut out).unwrap();
        assert!(out.iter().all(|&b| b == b'A'));
    }

    #[test]
    fn long_length_bytes_are_required() {
        // Only a match symbol with length field 15 and one literal: the byte after the
        // stream's first two words is missing.
        let mut src = table(&[(b'A' as usize, 1), (256 + 15, 1)]);
        src.extend_from_slice(&0x4000u16.to_le_bytes());
        src.extend_from_slice(&[0, 0]);
        let mut out = [0u8; 40];
        assert!(decompress(&src, &mut out).is_err());
        // With the byte: 15 + 3 + 4 = 22 bytes of 'A' after the literal.
        src.push(4);
        let mut out = [0u8; 23];
        decompress(&src, &mut out).unwrap();
        assert!(out.iter().all(|&b| b == b'A'));
    }
}
