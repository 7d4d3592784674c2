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
