//! LZX as WOF stores it (`compact /exe:lzx`): each 32 KiB chunk is one LZX stream with
//! a 32 KiB window, in the flavour WIM files use (no stream header; x86 call
//! translation always on, with the fixed file size 12 000 000). A stream is a run of
//! blocks (verbatim, aligned-offset or uncompressed), read in 16-bit little-endian
//! words, first bit highest; Huffman code lengths travel delta-coded through a
//! pre-code and carry over from block to block within the chunk.

use std::io;

use super::huffman::Huffman;
use super::lznt1::copy_match;
use crate::ntfs_ext::corrupt;

/// Chunk size (and window) of WOF's LZX.
pub const CHUNK: usize = 32768;
const CHARS: usize = 256;
/// Offset slots a 32 KiB window uses.
const SLOTS: usize = 30;
/// Match headers per slot: seven lengths, or "see the length code".
const LEN_HEADERS: usize = 8;
const MAIN_SYMBOLS: usize = CHARS + SLOTS * LEN_HEADERS;
const LEN_SYMBOLS: usize = 249;
const PRE_SYMBOLS: usize = 20;
const ALIGNED_SYMBOLS: usize = 8;
const MIN_MATCH: usize = 2;
/// Room after a code's lengths for the pre-code's longest run to spill into (a run
/// of 51 started at the last length); decoders keep it, so streams may use it.
const SPILL: usize = 50;
/// The "file size" of x86 call translation in WIM and WOF streams.
const E8_FILE_SIZE: i32 = 12_000_000;

/// Extra offset bits of a slot: none for slots 0–3, then 1, 1, 2, 2, ... 13, 13.
const fn extra_bits(slot: usize) -> u32 {
    if slot < 4 {
        0
    } else {
        (slot / 2 - 1) as u32
    }
}

/// First formatted offset of each slot (consecutive slots tile the offsets).
const SLOT_BASE: [u32; SLOTS] = {
    let mut b = [0u32; SLOTS];
    let mut s = 1;
    while s < SLOTS {
        b[s] = b[s - 1] + (1 << extra_bits(s - 1));
        s += 1;
    }
    b
};

/// The input: 16-bit words feeding a 32-bit buffer, first bit highest.
struct Bits<'a> {
    src: &'a [u8],
    /// Next byte to load (may run past the end: zeros are loaded there).
    pos: usize,
    buf: u32,
    /// Valid bits at the top of `buf`.
    n: u32,
}

impl Bits<'_> {
    /// Tops the buffer up to at least 17 valid bits.
    #[inline]
    fn refill(&mut self) {
        while self.n <= 16 {
            let b = |i: usize| *self.src.get(i).unwrap_or(&0) as u32;
            let w = b(self.pos) | b(self.pos + 1) << 8;
            self.pos += 2;
            self.buf |= w << (16 - self.n);
            self.n += 16;
        }
    }

    /// The next 16 bits, not consumed.
    #[inline]
    fn peek(&mut self) -> u32 {
        self.refill();
        self.buf >> 16
    }

    #[inline]
    fn consume(&mut self, k: u32) {
        self.buf <<= k;
        self.n -= k;
    }

    /// The next `k` (at most 16) bits as a number.
    #[inline]
    fn bits(&mut self, k: u32) -> u32 {
        if k == 0 {
            return 0;
        }
        self.refill();
        let v = self.buf >> (32 - k);
        self.consume(k);
        v
    }

    /// One symbol of `code`.
    #[inline]
    fn symbol(&mut self, code: &Huffman, what: &str) -> io::Result<usize> {
        let (s, l) = code
            .decode(self.peek())
            .ok_or_else(|| corrupt(format!("LZX {what} symbol from an empty code")))?;
        self.consume(l);
        Ok(s as usize)
    }

    /// Bits consumed so far.
    fn consumed(&self) -> usize {
        self.pos * 8 - self.n as usize
    }

    /// Moves to the next 16-bit boundary (a whole word on when already at one, as an
    /// uncompressed block's header requires) and returns the byte position there.
    fn align(&mut self) -> usize {
        let at = self.consumed();
        let byte = if at % 16 == 0 {
            at / 8 + 2
        } else {
            at.div_ceil(16) * 2
        };
        self.restart(byte);
        byte
    }

    /// Continues reading bits at byte `pos`.
    fn restart(&mut self, pos: usize) {
        self.pos = pos;
        self.buf = 0;
        self.n = 0;
    }
}

/// Reads code lengths `lens[from..to]` as delta codes against their previous values
/// through a pre-code sent first (20 lengths of 4 bits). Runs may spill past `to`
/// into what follows in `lens`, as other decoders allow.
fn read_lengths(bits: &mut Bits, lens: &mut [u8], from: usize, to: usize) -> io::Result<()> {
    let mut pre = [0u8; PRE_SYMBOLS];
    for l in pre.iter_mut() {
        *l = bits.bits(4) as u8;
    }
    let pre = Huffman::new(&pre, true).ok_or_else(|| corrupt("LZX pre-code is not a code"))?;
    let delta = |old: u8, d: usize| ((old as usize + 17 - d) % 17) as u8;
    let mut i = from;
    while i < to {
        let (run, value) = match bits.symbol(&pre, "pre-code")? {
            d @ 0..=16 => (1, delta(lens[i], d)),
            17 => (4 + bits.bits(4) as usize, 0),
            18 => (20 + bits.bits(5) as usize, 0),
            _ => {
                let run = 4 + bits.bits(1) as usize;
                match bits.symbol(&pre, "pre-code")? {
                    d @ 0..=17 => (run, delta(lens[i], d)),
                    _ => return Err(corrupt("LZX length run of a run")),
                }
            }
        };
        lens.get_mut(i..i + run)
            .ok_or_else(|| corrupt("LZX code length run past its code"))?
            .fill(value);
        i += run;
    }
    Ok(())
}

/// Decompresses one chunk from `src` into all of `out` (at most 32 KiB).
pub fn decompress(src: &[u8], out: &mut [u8]) -> io::Result<()> {
    if out.len() > CHUNK {
        return Err(corrupt("LZX chunk larger than its window"));
    }
    let mut bits = Bits {
        src,
        pos: 0,
        buf: 0,
        n: 0,
    };
    // Lengths start at zero for each chunk and carry over between its blocks.
    let mut main_lens = [0u8; MAIN_SYMBOLS + SPILL];
    let mut len_lens = [0u8; LEN_SYMBOLS + SPILL];
    let mut recent = [1u32; 3];
    let mut op = 0;
    while op < out.len() {
        let kind = bits.bits(3);
        let size = if bits.bits(1) == 1 {
            CHUNK
        } else {
            bits.bits(16) as usize
        };
        if size == 0 || size > out.len() - op {
            return Err(corrupt(format!(
                "LZX block of {size} bytes at {op} of a {}-byte chunk",
                out.len()
            )));
        }
        match kind {
            1 | 2 => {
                let aligned = if kind == 2 {
                    let mut l = [0u8; ALIGNED_SYMBOLS];
                    for x in l.iter_mut() {
                        *x = bits.bits(3) as u8;
                    }
                    Some(
                        Huffman::new(&l, true)
                            .ok_or_else(|| corrupt("LZX aligned-offset code is not a code"))?,
                    )
                } else {
                    None
                };
                read_lengths(&mut bits, &mut main_lens, 0, CHARS)?;
                read_lengths(&mut bits, &mut main_lens, CHARS, MAIN_SYMBOLS)?;
                let main = Huffman::new(&main_lens[..MAIN_SYMBOLS], true)
                    .ok_or_else(|| corrupt("LZX main code is not a code"))?;
                read_lengths(&mut bits, &mut len_lens, 0, LEN_SYMBOLS)?;
                let lens = Huffman::new(&len_lens[..LEN_SYMBOLS], true)
                    .ok_or_else(|| corrupt("LZX length code is not a code"))?;
                let codes = Codes {
                    main,
                    lens,
                    aligned,
                };
                decode_block(&mut bits, &codes, &mut recent, out, op, op + size)?;
            }
            3 => {
                let at = bits.align();
                let head = src
                    .get(at..at + 12)
                    .ok_or_else(|| corrupt("LZX uncompressed block cut short"))?;
                for (r, b) in recent.iter_mut().zip(head.chunks_exact(4)) {
                    *r = u32::from_le_bytes(b.try_into().unwrap());
                }
                if recent.contains(&0) {
                    return Err(corrupt("LZX uncompressed block with a zero offset"));
                }
                let data = src
                    .get(at + 12..at + 12 + size)
                    .ok_or_else(|| corrupt("LZX uncompressed block cut short"))?;
                out[op..op + size].copy_from_slice(data);
                // An odd-sized block is padded back to a 16-bit boundary (a stream
                // may end without the pad).
                bits.restart((at + 12 + size + (size & 1)).min(src.len()));
            }
            _ => return Err(corrupt(format!("LZX block type {kind}"))),
        }
        op += size;
    }
    if bits.consumed() > src.len() * 8 {
        return Err(corrupt("LZX chunk cut short"));
    }
    undo_e8(out);
    Ok(())
}

/// The codes of a verbatim or aligned-offset block.
struct Codes {
    main: Huffman,
    lens: Huffman,
    /// Only in aligned-offset blocks: the low 3 bits of long offsets.
    aligned: Option<Huffman>,
}

/// Decodes one compressed block into `out[op..end]`.
fn decode_block(
    bits: &mut Bits,
    codes: &Codes,
    recent: &mut [u32; 3],
    out: &mut [u8],
    mut op: usize,
    end: usize,
) -> io::Result<()> {
    while op < end {
        let sym = bits.symbol(&codes.main, "main")?;
        if sym < CHARS {
            out[op] = sym as u8;
            op += 1;
            continue;
        }
        let header = sym - CHARS;
        let slot = header / LEN_HEADERS;
        let mut len = header % LEN_HEADERS;
        if len == LEN_HEADERS - 1 {
            len += bits.symbol(&codes.lens, "length")?;
        }
        len += MIN_MATCH;
        let back = if slot < 3 {
            // A repeat offset: it swaps with the most recent (R0's swap is no move).
            recent.swap(slot, 0);
            recent[0]
        } else {
            let extra = extra_bits(slot);
            let mut o = SLOT_BASE[slot];
            match &codes.aligned {
                Some(a) if extra >= 3 => {
                    o += bits.bits(extra - 3) << 3;
                    o += bits.symbol(a, "aligned-offset")? as u32;
                }
                _ => o += bits.bits(extra),
            }
            // Formatted offsets count the three repeat slots first.
            let o = o - 2;
            *recent = [o, recent[0], recent[1]];
            o
        } as usize;
        if len > end - op || back > op {
            return Err(corrupt(format!(
                "LZX match (offset {back}, length {len}) reaches outside its block at {op}"
            )));
        }
        copy_match(out, op, back, len);
        op += len;
    }
    Ok(())
}

/// Undoes the x86 call translation: the operand after each 0xE8 byte (not within
/// the last 10 bytes) was turned from relative to absolute before compression.
fn undo_e8(out: &mut [u8]) {
    if out.len() <= 10 {
        return;
    }
    let limit = out.len() - 10;
    let mut i = 0;
    while i < limit {
        let Some(k) = out[i..limit].iter().position(|&b| b == 0xE8) else {
            break;
        };
        let p = i + k;
        let operand: [u8; 4] = out[p + 1..p + 5].try_into().unwrap();
        let abs = i32::from_le_bytes(operand);
        let pos = p as i32;
        let rel = if abs >= 0 {
            (abs < E8_FILE_SIZE).then(|| abs - pos)
        } else {
            (abs >= -pos).then(|| abs + E8_FILE_SIZE)
        };
        if let Some(r) = rel {
            out[p + 1..p + 5].copy_from_slice(&r.to_le_bytes());
        }
        i = p + 5;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes bits first-highest into 16-bit little-endian words, as LZX reads them.
    #[derive(Default)]
    struct Writer {
        words: Vec<u16>,
        acc: u32,
        n: u32,
    }

    impl Writer {
        fn put(&mut self, v: u32, k: u32) {
            for i in (0..k).rev() {
                self.acc = self.acc << 1 | (v >> i & 1);
                self.n += 1;
                if self.n == 16 {
                    self.words.push(self.acc as u16);
                    self.acc = 0;
                    self.n = 0;
                }
            }
        }
        /// Pads to the next word boundary (a whole word when at one).
        fn align(&mut self) {
            let pad = 16 - self.n;
            self.put(0, pad);
        }
        fn bytes(mut self) -> Vec<u8> {
            if self.n > 0 {
                let pad = 16 - self.n;
                self.put(0, pad);
            }
            self.words.iter().flat_map(|w| w.to_le_bytes()).collect()
        }
    }

    /// Sends `new` lengths (previous values `old`) through a pre-code of symbols
    /// 0..=15 at 4 bits each (symbol d is code d): deltas 0 to 15 only.
    fn put_lengths(w: &mut Writer, old: &[u8], new: &[u8]) {
        for s in 0..PRE_SYMBOLS {
            w.put(if s < 16 { 4 } else { 0 }, 4);
        }
        for (&o, &n) in old.iter().zip(new) {
            let d = (o as usize + 17 - n as usize) % 17;
            assert!(d < 16, "delta {d} needs symbol 16");
            w.put(d as u32, 4);
        }
    }

    /// Block header: type, then the size (the 1-bit default or 16 bits).
    fn put_header(w: &mut Writer, kind: u32, size: u32) {
        w.put(kind, 3);
        w.put(0, 1);
        w.put(size, 16);
    }

    /// A verbatim block: 255 literals of 8 bits, literal 255 of 9, and two match
    /// symbols of 10 (canonical codes 0..=254, 510, 1022, 1023); a length code of
    /// four 2-bit symbols.
    fn verbatim(size: u32) -> Vec<u8> {
        let mut w = Writer::default();
        put_header(&mut w, 1, size);
        let mut main = vec![0u8; MAIN_SYMBOLS];
        main[..255].fill(8);
        main[255] = 9;
        let short = CHARS + 3 * LEN_HEADERS; // slot 3 (offset 1), length 2
        let long = short + 7; // slot 3, length from the length code
        main[short] = 10;
        main[long] = 10;
        put_lengths(&mut w, &[0; CHARS], &main[..CHARS]);
        put_lengths(&mut w, &[0; MAIN_SYMBOLS - CHARS], &main[CHARS..]);
        let mut lens = vec![0u8; LEN_SYMBOLS];
        lens[..4].fill(2);
        put_lengths(&mut w, &[0; LEN_SYMBOLS], &lens);
        w.put(b'x' as u32, 8);
        w.put(b'y' as u32, 8);
        w.put(1022, 10); // "yy"
        w.put(1023, 10);
        w.put(1, 2); // length 7 + 1 + 2 = 10: ten more "y"
        w.bytes()
    }

    #[test]
    fn verbatim_block_literals_and_matches() {
        let mut out = [0u8; 14];
        decompress(&verbatim(14), &mut out).unwrap();
        assert_eq!(&out, b"xyyyyyyyyyyyyy");
        // The same symbols in a 12-byte block: the long match reaches past it.
        let mut out = [0u8; 12];
        let e = decompress(&verbatim(12), &mut out).unwrap_err();
        assert!(e.to_string().contains("outside its block"), "{e}");
        // Cut short: the stream's last word missing.
        let src = verbatim(14);
        let mut out = [0u8; 14];
        assert!(decompress(&src[..src.len() - 2], &mut out).is_err());
    }

    /// An aligned-offset block: an explicit offset whose low three bits come from
    /// the aligned code, then a repeat of it.
    #[test]
    fn aligned_block_and_repeat_offset() {
        let mut w = Writer::default();
        put_header(&mut w, 2, 25);
        for _ in 0..ALIGNED_SYMBOLS {
            w.put(3, 3); // eight 3-bit codes: symbol a is code a
        }
        // Match symbols 257 (slot 0: R0, length 3) and 320 (slot 8, length 2) at 2
        // bits (codes 00, 01), every literal at 9 bits (code 256 + value).
        let mut main = vec![0u8; MAIN_SYMBOLS];
        main[..CHARS].fill(9);
        main[CHARS + 1] = 2;
        main[CHARS + 8 * LEN_HEADERS] = 2;
        put_lengths(&mut w, &[0; CHARS], &main[..CHARS]);
        put_lengths(&mut w, &[0; MAIN_SYMBOLS - CHARS], &main[CHARS..]);
        put_lengths(&mut w, &[0; LEN_SYMBOLS], &[0; LEN_SYMBOLS]); // empty, unused
        for c in b"abcdefghijklmnopqrst" {
            w.put(256 + *c as u32, 9);
        }
        // Slot 8: base 16, 3 extra bits, all from the aligned code: 16 + 2 - 2 = 16.
        w.put(1, 2);
        w.put(2, 3);
        w.put(0, 2); // R0 again, length 3
        let mut out = [0u8; 25];
        decompress(&w.bytes(), &mut out).unwrap();
        assert_eq!(&out, b"abcdefghijklmnopqrstefghi");
    }

    #[test]
    fn uncompressed_blocks_align_and_set_offsets() {
        let first = b"hello, uncompressed world"; // odd: a pad byte follows
        let mut w = Writer::default();
        put_header(&mut w, 3, first.len() as u32);
        w.align(); // 20 bits: 12 of padding
        let mut src = w.bytes();
        for r in [1u32, 2, 3] {
            src.extend_from_slice(&r.to_le_bytes());
        }
        src.extend_from_slice(first);
        src.push(0);
        let mut w = Writer::default();
        put_header(&mut w, 3, 3);
        w.align();
        src.extend_from_slice(&w.bytes());
        for r in [4u32, 5, 6] {
            src.extend_from_slice(&r.to_le_bytes());
        }
        src.extend_from_slice(b"end");
        let mut out = vec![0u8; first.len() + 3];
        decompress(&src, &mut out).unwrap();
        assert_eq!(&out[..first.len()], first);
        assert_eq!(&out[first.len()..], b"end");
        // A zero offset in the header is refused.
        let mut bad = src.clone();
        bad[4..8].fill(0);
        assert!(decompress(&bad, &mut out).is_err());
    }

    #[test]
    fn e8_translation_is_undone() {
        let put = |out: &mut [u8], p: usize, v: i32| {
            out[p] = 0xE8;
            out[p + 1..p + 5].copy_from_slice(&v.to_le_bytes());
        };
        let get = |out: &[u8], p: usize| i32::from_le_bytes(out[p + 1..p + 5].try_into().unwrap());
        let mut out = vec![0u8; 60];
        put(&mut out, 0, 100); // absolute 100 at 0: relative 100
        put(&mut out, 20, 100); // at 20: relative 80
        put(&mut out, 26, -5); // negative within reach: + 12 000 000
        put(&mut out, 32, -40); // negative beyond the position: kept
        put(&mut out, 38, E8_FILE_SIZE); // not below the file size: kept
        put(&mut out, 50, 100); // within the last ten bytes: kept
        undo_e8(&mut out);
        assert_eq!(get(&out, 0), 100);
        assert_eq!(get(&out, 20), 80);
        assert_eq!(get(&out, 26), E8_FILE_SIZE - 5);
        assert_eq!(get(&out, 32), -40);
        assert_eq!(get(&out, 38), E8_FILE_SIZE);
        assert_eq!(get(&out, 50), 100);
    }

    #[test]
    fn slot_bases_tile_the_window() {
        assert_eq!(SLOT_BASE[4], 4);
        assert_eq!(SLOT_BASE[5], 6);
        assert_eq!(SLOT_BASE[29], 24576);
        assert_eq!(SLOT_BASE[29] + (1 << extra_bits(29)), 32768);
    }

    /// Random streams decode or fail, never panic, overrun or loop.
    #[test]
    fn random_streams_never_panic() {
        let mut x = 0x2545_F491u32;
        let mut rnd = move || {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x
        };
        for _ in 0..3000 {
            let n = (rnd() % 3000) as usize;
            let src: Vec<u8> = (0..n).map(|_| rnd() as u8).collect();
            let mut out = vec![0u8; 1 + (rnd() % CHUNK as u32) as usize];
            let _ = decompress(&src, &mut out);
        }
    }
}
