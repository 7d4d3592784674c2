//! Benchmark helper: reads a random fraction of the blocks of one device at one point
//! through the reader stack (fresh caches), so point 1 and point N can be compared.
//!
//! `cargo run --release --example bench_read -- SAFE POINT DEVICE FRACTION [SEED]`

use std::sync::Arc;
use std::time::Instant;

use disksafe::cache::CachedSafe;
use disksafe::device::PointDevice;
use disksafe::readat::ReadAt;
use disksafe::safe_reader::{device_in_point, Safe};

fn main() -> anyhow::Result<()> {
    let a: Vec<String> = std::env::args().collect();
    if a.len() < 5 {
        anyhow::bail!("usage: bench_read SAFE POINT DEVICE FRACTION [SEED]");
    }
    let safe = Arc::new(Safe::open(a[1].as_ref())?);
    let p = safe.point(&a[2])?;
    let d = device_in_point(&p, &a[3])?;
    let frac: f64 = a[4].parse()?;
    let mut seed: u64 = a.get(5).map(|s| s.parse()).transpose()?.unwrap_or(42);
    let bs = safe.params().block_size as u64;
    let nblocks = d.size.div_ceil(bs);
    let n = ((nblocks as f64) * frac) as u64;
    let mut picks = Vec::with_capacity(n as usize);
    for _ in 0..n {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        picks.push(seed % nblocks);
    }
    let cache = Arc::new(CachedSafe::new(safe.clone(), 64 << 20));
    let dev = PointDevice::new(cache, p.id, d.id, &d.name, d.size);
    let mut buf = vec![0u8; 4096];
    let t = Instant::now();
    let mut sum = 0u64;
    for b in &picks {
        dev.read_exact_at(b * bs, &mut buf)?;
        sum = sum.wrapping_add(buf[0] as u64);
    }
    let secs = t.elapsed().as_secs_f64();
    println!(
        "point {} device {}: {} random 4 KiB reads in {:.3} s = {:.0} reads/s (checksum {sum})",
        p.id,
        d.name,
        n,
        secs,
        n as f64 / secs
    );
    Ok(())
}
