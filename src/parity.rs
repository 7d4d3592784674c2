//! Parity arithmetic shared by the readers of striped arrays (md RAID4/5/6, btrfs
//! RAID5/6): a stripe's missing data rebuilt from the rest, P (XOR) and Q (the
//! Reed-Solomon syndrome over GF(2^8) that Linux's raid6 code computes).

/// Rebuilds data slot `x` of one stripe into `out` from the data slots present
/// (`data[i]`, weighed g^i in Q; `None` where missing), P and Q: from P alone when one
/// slot is missing and P is there (RAID5 too), from Q when P is missing as well, from
/// P and Q together when two slots are (H. P. Anvin, "The mathematics of RAID-6").
pub fn rebuild_slot(
    data: &[Option<Vec<u8>>],
    p: Option<&[u8]>,
    q: Option<&[u8]>,
    x: usize,
    out: &mut [u8],
) -> Result<(), &'static str> {
    let missing: Vec<usize> = (0..data.len()).filter(|&i| data[i].is_none()).collect();
    if !missing.contains(&x) {
        return Err("the slot to rebuild is not missing");
    }
    // P and Q with the missing data taken as zeros, each added to the stored one.
    let (mut pxy, mut qxy) = (vec![0u8; out.len()], vec![0u8; out.len()]);
    for (slot, d) in data.iter().enumerate() {
        let Some(d) = d else { continue };
        let g = gf::pow(slot);
        for ((a, b), v) in pxy.iter_mut().zip(qxy.iter_mut()).zip(d) {
            *a ^= v;
            *b ^= gf::mul(*v, g);
        }
    }
    for (stored, acc) in [(p, &mut pxy), (q, &mut qxy)] {
        if let Some(s) = stored {
            for (a, v) in acc.iter_mut().zip(s) {
                *a ^= v;
            }
        }
    }
    match (missing.len(), p.is_some(), q.is_some()) {
        (1, true, _) => out.copy_from_slice(&pxy),
        (1, false, true) => {
            let inv = gf::inv(gf::pow(x));
            for (b, v) in out.iter_mut().zip(&qxy) {
                *b = gf::mul(*v, inv);
            }
        }
        (2, true, true) => {
            let y = missing.iter().copied().find(|&i| i != x).unwrap_or(0);
            let gyx = gf::pow((y + 255 - x) % 255);
            let den = gf::inv(gyx ^ 1);
            let (a, b) = (gf::mul(gyx, den), gf::mul(gf::inv(gf::pow(x)), den));
            for ((o, pv), qv) in out.iter_mut().zip(&pxy).zip(&qxy) {
                *o = gf::mul(a, *pv) ^ gf::mul(b, *qv);
            }
        }
        _ => return Err("more members missing than its parity can rebuild"),
    }
    Ok(())
}

/// Arithmetic in GF(2^8) with the polynomial x^8+x^4+x^3+x^2+1 (0x11d) and
/// generator 2, as md's RAID6 computes Q.
mod gf {
    use std::sync::OnceLock;

    /// Exponents (doubled, so products need no modulo) and logarithms.
    fn tables() -> &'static ([u8; 512], [u8; 256]) {
        static T: OnceLock<([u8; 512], [u8; 256])> = OnceLock::new();
        T.get_or_init(|| {
            let (mut exp, mut log) = ([0u8; 512], [0u8; 256]);
            let mut x: u16 = 1;
            for i in 0..255 {
                exp[i] = x as u8;
                exp[i + 255] = x as u8;
                log[x as usize] = i as u8;
                x <<= 1;
                if x & 0x100 != 0 {
                    x ^= 0x11d;
                }
            }
            (exp, log)
        })
    }

    /// g^e.
    pub fn pow(e: usize) -> u8 {
        tables().0[e % 255]
    }

    /// a·b.
    pub fn mul(a: u8, b: u8) -> u8 {
        if a == 0 || b == 0 {
            return 0;
        }
        let (exp, log) = tables();
        exp[log[a as usize] as usize + log[b as usize] as usize]
    }

    /// The inverse of a non-zero `a` (0 gives 0).
    pub fn inv(a: u8) -> u8 {
        if a == 0 {
            return 0;
        }
        let (exp, log) = tables();
        exp[255 - log[a as usize] as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// a·b in GF(2^8) mod x^8+x^4+x^3+x^2+1, shift and add: an oracle independent of
    /// the tables.
    fn slow_mul(mut a: u8, mut b: u8) -> u8 {
        let mut p = 0u8;
        while b != 0 {
            if b & 1 != 0 {
                p ^= a;
            }
            let carry = a & 0x80 != 0;
            a <<= 1;
            if carry {
                a ^= 0x1d;
            }
            b >>= 1;
        }
        p
    }

    fn slow_pow(e: usize) -> u8 {
        (0..e).fold(1u8, |x, _| slow_mul(x, 2))
    }

    #[test]
    fn tables_agree_with_shift_and_add() {
        for a in 0..=255u8 {
            for b in [0u8, 1, 2, 3, 0x1d, 0x80, 0xff, a] {
                assert_eq!(gf::mul(a, b), slow_mul(a, b), "{a}·{b}");
            }
            if a != 0 {
                assert_eq!(slow_mul(a, gf::inv(a)), 1, "inverse of {a}");
            }
        }
        for e in 0..300 {
            assert_eq!(gf::pow(e), slow_pow(e % 255), "g^{e}");
        }
    }

    /// Every way one or two of six data slots, P or Q can be missing: the slots
    /// rebuilt equal the data P and Q were computed from.
    #[test]
    fn any_two_missing_are_rebuilt() {
        let n = 6;
        let len = 64;
        let data: Vec<Vec<u8>> = (0..n)
            .map(|i| (0..len).map(|j| (i * 37 + j * 11 + 5) as u8).collect())
            .collect();
        let p: Vec<u8> = (0..len)
            .map(|j| data.iter().fold(0, |a, d| a ^ d[j]))
            .collect();
        let q: Vec<u8> = (0..len)
            .map(|j| (0..n).fold(0, |a, i| a ^ slow_mul(data[i][j], slow_pow(i))))
            .collect();
        for x in 0..n {
            // One data slot missing, with P; and with only Q.
            for (pp, qq) in [
                (Some(&p[..]), Some(&q[..])),
                (None, Some(&q[..])),
                (Some(&p[..]), None),
            ] {
                let mut d: Vec<Option<Vec<u8>>> = data.iter().cloned().map(Some).collect();
                d[x] = None;
                let mut out = vec![0u8; len];
                rebuild_slot(&d, pp, qq, x, &mut out).unwrap();
                assert_eq!(
                    out,
                    data[x],
                    "slot {x} (P {}, Q {})",
                    pp.is_some(),
                    qq.is_some()
                );
            }
            // Two data slots missing: P and Q together.
            for y in (0..n).filter(|&y| y != x) {
                let mut d: Vec<Option<Vec<u8>>> = data.iter().cloned().map(Some).collect();
                d[x] = None;
                d[y] = None;
                let mut out = vec![0u8; len];
                rebuild_slot(&d, Some(&p), Some(&q), x, &mut out).unwrap();
                assert_eq!(out, data[x], "slot {x} with {y} missing too");
                assert!(rebuild_slot(&d, Some(&p), None, x, &mut out).is_err());
            }
        }
        let d: Vec<Option<Vec<u8>>> = data.iter().cloned().map(Some).collect();
        assert!(rebuild_slot(&d, Some(&p), Some(&q), 0, &mut vec![0u8; len]).is_err());
    }
}
