//! LZO1X as btrfs frames it: a total length, then length-prefixed segments of at most
//! one sector of output each, whose 4-byte headers never straddle a sector boundary.
//! Written here rather than taken from a crate: the decoder must bound its output and
//! refuse every hostile distance and length, and the crates at hand do neither.

/// Decodes one btrfs LZO extent (`raw` as stored) into at most `max` bytes.
pub fn decompress_btrfs(raw: &[u8], sector: usize, max: usize) -> Result<Vec<u8>, String> {
    let total = le32(raw, 0).ok_or("LZO header truncated")? as usize;
    if total > raw.len() || total < 4 {
        return Err(format!("LZO length {total} of {} bytes stored", raw.len()));
    }
    let mut out = Vec::new();
    let mut pos = 4;
    while pos < total && out.len() < max {
        let left = sector - pos % sector;
        if left < 4 {
            pos += left;
            continue;
        }
        let len = le32(raw, pos).ok_or("LZO segment header truncated")? as usize;
        pos += 4;
        if len == 0 || len > total - pos {
            return Err(format!("LZO segment of {len} bytes"));
        }
        let cap = max.min(out.len() + sector);
        lzo1x(&raw[pos..pos + len], &mut out, cap)?;
        pos += len;
    }
    Ok(out)
}

fn le32(b: &[u8], o: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(o..o + 4)?.try_into().ok()?))
}

/// Input cursor that errors instead of running off the end.
struct Input<'a> {
    b: &'a [u8],
    at: usize,
}

impl Input<'_> {
    fn byte(&mut self) -> Result<usize, String> {
        let v = *self.b.get(self.at).ok_or("LZO input ends early")?;
        self.at += 1;
        Ok(v as usize)
    }

    fn le16(&mut self) -> Result<usize, String> {
        Ok(self.byte()? | (self.byte()? << 8))
    }

    /// A length continued past its opcode's bits: 255 per zero byte, then the first
    /// non-zero byte.
    fn extended(&mut self) -> Result<usize, String> {
        let mut n = 0usize;
        loop {
            match self.byte()? {
                0 => n += 255,
                v => return Ok(n + v),
            }
        }
    }

    fn literals(&mut self, n: usize, out: &mut Vec<u8>, cap: usize) -> Result<(), String> {
        let src = self
            .b
            .get(self.at..self.at + n)
            .ok_or("LZO literals run past the input")?;
        if out.len() + n > cap {
            return Err("LZO output larger than its extent".into());
        }
        out.extend_from_slice(src);
        self.at += n;
        Ok(())
    }
}

/// Decodes one LZO1X stream, appending to `out` (never past `cap` bytes); distances
/// reach back only into this stream's own output.
fn lzo1x(input: &[u8], out: &mut Vec<u8>, cap: usize) -> Result<(), String> {
    let base = out.len();
    let mut r = Input { b: input, at: 0 };
    let mut state = 0;
    if let Some(&first) = input.first() {
        if first > 17 {
            r.at = 1;
            let n = (first - 17) as usize;
            r.literals(n, out, cap)?;
            state = n.min(4);
        }
    }
    loop {
        let op = r.byte()?;
        let (len, dist, next);
        if op < 16 {
            if state == 0 {
                let l = match op {
                    0 => 15 + r.extended()?,
                    l => l,
                };
                r.literals(l + 3, out, cap)?;
                state = 4;
                continue;
            }
            let h = r.byte()?;
            next = op & 3;
            let d = (op >> 2) & 3;
            (len, dist) = if state == 4 {
                (3, (h << 2) + d + 2049)
            } else {
                (2, (h << 2) + d + 1)
            };
        } else if op < 32 {
            len = 2 + match op & 7 {
                0 => 7 + r.extended()?,
                l => l,
            };
            let v = r.le16()?;
            next = v & 3;
            dist = 16384 + ((op & 8) << 11) + (v >> 2);
            if dist == 16384 {
                return Ok(()); // end of stream
            }
        } else if op < 64 {
            len = 2 + match op & 31 {
                0 => 31 + r.extended()?,
                l => l,
            };
            let v = r.le16()?;
            next = v & 3;
            dist = (v >> 2) + 1;
        } else {
            let h = r.byte()?;
            len = if op < 128 {
                3 + ((op >> 5) & 1)
            } else {
                5 + ((op >> 5) & 3)
            };
            dist = (h << 3) + ((op >> 2) & 7) + 1;
            next = op & 3;
        }
        if dist > out.len() - base {
            return Err("LZO distance reaches before the output".into());
        }
        if out.len() + len > cap {
            return Err("LZO output larger than its extent".into());
        }
        let from = out.len() - dist;
        for k in 0..len {
            out.push(out[from + k]);
        }
        r.literals(next, out, cap)?;
        state = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_matches_and_end_of_stream() {
        // "abcabcabcX": a first-byte literal run of 3, a 2 KiB-window match of 6 bytes
        // at distance 3 (0b101_000_00 + distance high byte 0), one literal, then the end.
        let stream = [
            17 + 3,
            b'a',
            b'b',
            b'c',
            0b1010_1001, // 1 LL DDD SS: len 5+1=6, D=(2), S=1
            0,           // H: distance = (0 << 3) + 2 + 1 = 3
            b'X',
            0x11, // 0001 H=0 LLL=1: end marker
            0,
            0,
        ];
        let mut out = Vec::new();
        lzo1x(&stream, &mut out, 100).unwrap();
        assert_eq!(out, b"abcabcabcX");
        // The same with a cap below its size, and with the distance one too far.
        assert!(lzo1x(&stream, &mut Vec::new(), 9).is_err());
        let mut far = stream;
        far[4] = 0b1010_1101; // D=3: distance 4 > 3 bytes decoded
        assert!(lzo1x(&far, &mut Vec::new(), 100).is_err());
    }

    #[test]
    fn truncated_and_hostile_frames_are_errors() {
        assert!(decompress_btrfs(&[], 4096, 1 << 17).is_err());
        assert!(decompress_btrfs(&[200, 0, 0, 0], 4096, 1 << 17).is_err());
        let mut f = vec![16, 0, 0, 0, 8, 0, 0, 0];
        f.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0]); // a zero-run length with no end
        assert!(decompress_btrfs(&f, 4096, 1 << 17).is_err());
    }
}
