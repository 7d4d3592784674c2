//! Canonical Huffman codes as Microsoft's compressors send them (XPRESS, LZX): one code
//! length per symbol, codes handed out in (length, symbol) order, read most significant
//! bit first. Shared so both decoders check codes by the same rules.

/// Longest code either format allows.
pub const MAX_LEN: u32 = 16;
/// Bits resolved by one table lookup; longer codes walk the canonical code.
const FAST_BITS: u32 = 10;

/// Decoder for one code.
pub struct Huffman {
    /// For each 10-bit prefix: symbol << 5 | length, or 0 when the code is longer.
    fast: [u16; 1 << FAST_BITS],
    /// Codes per length, and the symbols sorted by (length, value).
    count: [u16; MAX_LEN as usize + 1],
    sorted: Vec<u16>,
}

impl Huffman {
    /// Builds the decoder for `lengths` (0 = symbol unused). The code must be complete:
    /// MS-XCA requires it, and LZX decoders refuse incomplete codes too. An empty code
    /// is accepted where `may_be_empty` (LZX sends one for a tree a block never uses);
    /// it decodes nothing. `None` for any other code, or a length over 16.
    pub fn new(lengths: &[u8], may_be_empty: bool) -> Option<Huffman> {
        let mut count = [0u16; MAX_LEN as usize + 1];
        for &l in lengths {
            *count.get_mut(l as usize)? += 1;
        }
        // Kraft sum in units of 2^-16: a complete code fills exactly 2^16.
        let filled: u32 = (1..=MAX_LEN)
            .map(|l| (count[l as usize] as u32) << (MAX_LEN - l))
            .sum();
        let empty = filled == 0;
        if !(filled == 1 << MAX_LEN || empty && may_be_empty) {
            return None;
        }
        // Symbols sorted by (length, value) in one pass: each length's slots start
        // after all shorter lengths' counts.
        let mut next = [0u16; MAX_LEN as usize + 2];
        for l in 1..=MAX_LEN as usize {
            next[l + 1] = next[l] + count[l];
        }
        let mut sorted = vec![0u16; next[MAX_LEN as usize + 1] as usize];
        for (s, &l) in lengths.iter().enumerate() {
            if l > 0 {
                sorted[next[l as usize] as usize] = s as u16;
                next[l as usize] += 1;
            }
        }
        let mut fast = [0u16; 1 << FAST_BITS];
        let mut code = 0u32;
        let mut i = 0;
        for l in 1..=FAST_BITS {
            for _ in 0..count[l as usize] {
                let span = 1u32 << (FAST_BITS - l);
                let first = (code << (FAST_BITS - l)) as usize;
                let entry = sorted[i] << 5 | l as u16;
                fast[first..first + span as usize].fill(entry);
                code += 1;
                i += 1;
            }
            code <<= 1;
        }
        Some(Huffman {
            fast,
            count,
            sorted,
        })
    }

    /// The symbol whose code starts `bits` (the next 16 bits, first bit highest) and
    /// its length; `None` when no code matches (only in an empty code).
    #[inline]
    pub fn decode(&self, bits: u32) -> Option<(u16, u32)> {
        let e = self.fast[(bits >> (MAX_LEN - FAST_BITS)) as usize & ((1 << FAST_BITS) - 1)];
        if e != 0 {
            return Some((e >> 5, (e & 31) as u32));
        }
        // Longer than FAST_BITS: walk the lengths (bounded by MAX_LEN).
        let (mut code, mut first, mut index) = (0u32, 0u32, 0u32);
        for l in 1..=MAX_LEN {
            code |= bits >> (MAX_LEN - l) & 1;
            let n = self.count[l as usize] as u32;
            // Canonical codes: the prefix is never below the first code of its length.
            match code.checked_sub(first) {
                Some(d) if d < n => return Some((*self.sorted.get((index + d) as usize)?, l)),
                _ => {}
            }
            index += n;
            first = (first + n) << 1;
            code <<= 1;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn complete_empty_and_bad_codes() {
        // 'a' 1 bit, 'b' 2, 'c' and 'd' 3: codes 0, 10, 110, 111.
        let mut lens = vec![0u8; 256];
        lens[b'a' as usize] = 1;
        lens[b'b' as usize] = 2;
        lens[b'c' as usize] = 3;
        lens[b'd' as usize] = 3;
        let h = Huffman::new(&lens, false).unwrap();
        assert_eq!(h.decode(0x0000), Some((b'a' as u16, 1)));
        assert_eq!(h.decode(0x8000), Some((b'b' as u16, 2)));
        assert_eq!(h.decode(0xC000), Some((b'c' as u16, 3)));
        assert_eq!(h.decode(0xE000), Some((b'd' as u16, 3)));
        // Incomplete (one symbol), oversubscribed, too long, empty.
        assert!(Huffman::new(&[1, 0, 0], true).is_none());
        assert!(Huffman::new(&[1, 1, 1], true).is_none());
        assert!(Huffman::new(&[17, 1], true).is_none());
        assert!(Huffman::new(&[0; 8], false).is_none());
        let empty = Huffman::new(&[0; 8], true).unwrap();
        assert_eq!(empty.decode(0x1234), None);
    }

    #[test]
    fn codes_longer_than_the_table_walk() {
        // Lengths 1..=15 for symbols 0..15, then 16 for symbols 15 and 16.
        let lens: Vec<u8> = (0..17u8).map(|s| (s + 1).min(16)).collect();
        let h = Huffman::new(&lens, false).unwrap();
        for s in 0..15u32 {
            // Symbol s: s ones then a zero.
            let code = ((1u32 << s) - 1) << (16 - s);
            assert_eq!(h.decode(code), Some((s as u16, s + 1)), "symbol {s}");
        }
        assert_eq!(h.decode(0xFFFE), Some((15, 16)));
        assert_eq!(h.decode(0xFFFF), Some((16, 16)));
    }
}
