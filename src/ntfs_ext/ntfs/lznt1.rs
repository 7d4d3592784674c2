//! LZNT1, the compression of NTFS compressed files: a compression unit is a series of
//! chunks, each a 2-byte header and up to 4 KiB of output, stored raw or as LZ77 tokens.

use std::io;

use crate::ntfs_ext::corrupt;

const CHUNK: usize = 4096;

/// Decompresses one compression unit from `src` into `dst` (already zeroed, sized to the
/// unit). A chunk that yields less than 4 KiB leaves zeros after it, as Windows does.
pub fn decompress(src: &[u8], dst: &mut [u8]) -> io::Result<()> {
    let mut sp = 0usize;
    let mut chunk_start = 0usize;
    while sp + 2 <= src.len() && chunk_start < dst.len() {
        let h = u16::from_le_bytes([src[sp], src[sp + 1]]);
        if h == 0 {
            break;
        }
        let size = (h & 0x0FFF) as usize + 1;
        let body = src
            .get(sp + 2..sp + 2 + size)
            .ok_or_else(|| corrupt("LZNT1 chunk runs past the compressed data"))?;
        sp += 2 + size;
        let out_end = (chunk_start + CHUNK).min(dst.len());
        let out = &mut dst[chunk_start..out_end];
        if h & 0x8000 == 0 {
            let n = body.len().min(out.len());
            out[..n].copy_from_slice(&body[..n]);
        } else {
            decode_chunk(body, out)?;
        }
        chunk_start += CHUNK;
    }
    Ok(())
}

fn decode_chunk(body: &[u8], out: &mut [u8]) -> io::Result<()> {
    let mut bp = 0usize;
    let mut op = 0usize;
    while bp < body.len() {
        let flags = body[bp];
        bp += 1;
        // Eight literals in a row (what incompressible stretches are): one copy.
        if flags == 0 && bp + 8 <= body.len() && op + 8 <= out.len() {
            out[op..op + 8].copy_from_slice(&body[bp..bp + 8]);
            op += 8;
            bp += 8;
            continue;
        }
        for bit in 0..8 {
            if bp >= body.len() {
                return Ok(());
            }
            if flags >> bit & 1 == 0 {
                if op >= out.len() {
                    return Err(corrupt("LZNT1 chunk decompresses past 4 KiB"));
                }
                out[op] = body[bp];
                op += 1;
                bp += 1;
                continue;
            }
            if bp + 2 > body.len() {
                return Err(corrupt("LZNT1 back-reference cut short"));
            }
            let token = u16::from_le_bytes([body[bp], body[bp + 1]]) as usize;
            bp += 2;
            if op == 0 {
                return Err(corrupt("LZNT1 back-reference at the start of a chunk"));
            }
            // The offset field widens as the output grows: 4 bits up to 16 bytes out,
            // one more bit per doubling after that.
            let lg = (usize::BITS - 1 - (op - 1).max(1).leading_zeros()).saturating_sub(3);
            let back = (token >> (12 - lg)) + 1;
            let len = (token & (0xFFF >> lg)) + 3;
            if back > op || op + len > out.len() {
                return Err(corrupt("LZNT1 back-reference out of range"));
            }
            copy_match(out, op, back, len);
            op += len;
        }
    }
    Ok(())
}

/// Appends `len` bytes at `op` copied from `back` bytes earlier (checked by the caller).
/// An overlapping match repeats its last `back` bytes: copying whole periods, each copy
/// doubling the repeated stretch, gives the same bytes as one at a time.
pub(super) fn copy_match(out: &mut [u8], op: usize, back: usize, len: usize) {
    let src = op - back;
    if back >= len {
        out.copy_within(src..src + len, op);
        return;
    }
    let mut done = 0;
    while done < len {
        // out[src..op + done] repeats with period `back`, and `done` is a multiple of it.
        let n = (len - done).min(back + done);
        out.copy_within(src..src + n, op + done);
        done += n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal LZNT1 compressor (literal runs and greedy matches), used only as an
    /// independent producer of valid streams for the decoder.
    fn compress(data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        for chunk in data.chunks(CHUNK) {
            let mut body = Vec::new();
            let mut p = 0;
            while p < chunk.len() {
                let flag_at = body.len();
                body.push(0u8);
                for bit in 0..8 {
                    if p >= chunk.len() {
                        break;
                    }
                    let mut lg = 0;
                    if p > 0 {
                        let mut i = p - 1;
                        while i >= 0x10 {
                            lg += 1;
                            i >>= 1;
                        }
                    }
                    let max_len = (0xFFF >> lg) + 3;
                    let max_back = 1usize << (4 + lg);
                    let (mut best, mut best_back) = (0, 0);
                    for back in 1..=p.min(max_back) {
                        let mut l = 0;
                        while p + l < chunk.len()
                            && l < max_len
                            && chunk[p + l] == chunk[p + l - back]
                        {
                            l += 1;
                        }
                        if l > best {
                            best = l;
                            best_back = back;
                        }
                    }
                    if best >= 3 {
                        body[flag_at] |= 1 << bit;
                        let t = ((best_back - 1) << (12 - lg)) | (best - 3);
                        body.extend_from_slice(&(t as u16).to_le_bytes());
                        p += best;
                    } else {
                        body.push(chunk[p]);
                        p += 1;
                    }
                }
            }
            let h = 0xB000u16 | (body.len() as u16 - 1);
            out.extend_from_slice(&h.to_le_bytes());
            out.extend_from_slice(&body);
        }
        out.extend_from_slice(&[0, 0]);
        out
    }

    #[test]
    fn decodes_what_a_compressor_wrote() {
        let mut data = Vec::new();
        for i in 0..20_000u32 {
            data.extend_from_slice(format!("line {} of text {}\n", i % 97, i % 13).as_bytes());
        }
        data.truncate(65536);
        let z = compress(&data);
        assert!(z.len() < data.len() / 2);
        let mut out = vec![0u8; 65536];
        decompress(&z, &mut out).unwrap();
        assert_eq!(out, data);
    }

    /// Runs of short patterns (periods 1 to 7, long enough to overlap their source
    /// many times) between incompressible stretches of eight and more literals.
    #[test]
    fn overlapping_matches_and_literal_runs() {
        let mut data = Vec::new();
        let mut x = 0x2545F491u32;
        let mut rnd = || {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x
        };
        while data.len() < 65536 {
            for _ in 0..rnd() % 40 {
                data.push(rnd() as u8);
            }
            let period = 1 + rnd() as usize % 7;
            let pat: Vec<u8> = (0..period).map(|_| rnd() as u8).collect();
            let len = 3 + rnd() as usize % 300;
            data.extend((0..len).map(|i| pat[i % period]));
        }
        data.truncate(65536);
        let z = compress(&data);
        assert!(z.len() < data.len(), "the data compresses");
        let mut out = vec![0u8; 65536];
        decompress(&z, &mut out).unwrap();
        assert!(out == data, "differs from the compressor's input");
    }

    #[test]
    fn raw_chunks_and_short_chunks() {
        let mut src = vec![0xFFu8, 0x3F]; // raw chunk of 4096 bytes
        src.extend(std::iter::repeat_n(7u8, 4096));
        src.extend_from_slice(&[0x01, 0xB0, 0x00, b'x']); // compressed: one literal
        let mut out = vec![0u8; 16384];
        decompress(&src, &mut out).unwrap();
        assert!(out[..4096].iter().all(|&b| b == 7));
        assert_eq!(out[4096], b'x');
        assert!(out[4097..].iter().all(|&b| b == 0));
    }

    #[test]
    fn hostile_streams_are_errors() {
        let mut out = vec![0u8; 4096];
        assert!(decompress(&[0x05, 0xB0, 0x01, 0x00, 0x00], &mut out).is_err());
        assert!(decompress(&[0x10, 0xB0, 0x00], &mut out).is_err());
        assert!(decompress(&[0x03, 0xB0, 0x02, b'a', 0xFF, 0xFF], &mut out).is_err());
    }
}
