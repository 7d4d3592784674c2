//! Benchmark oracle: the compressed size of the unique non-zero blocks of some images
//! (zstd per block, like a safe), computed independently of the safe's own index.
//!
//! `cargo run --release --example unique_size -- BLOCK_SIZE LEVEL IMAGE...`

use std::collections::HashSet;
use std::io::Read;

fn main() -> anyhow::Result<()> {
    let a: Vec<String> = std::env::args().collect();
    let bs: usize = a[1].parse()?;
    let level: i32 = a[2].parse()?;
    let mut seen = HashSet::new();
    let (mut raw, mut packed, mut blocks) = (0u64, 0u64, 0u64);
    for img in &a[3..] {
        let mut f = std::fs::File::open(img)?;
        let mut buf = vec![0u8; bs];
        loop {
            let mut n = 0;
            while n < bs {
                let k = f.read(&mut buf[n..])?;
                if k == 0 {
                    break;
                }
                n += k;
            }
            if n == 0 {
                break;
            }
            buf[n..].fill(0);
            if buf.iter().all(|&b| b == 0) {
                continue;
            }
            if seen.insert(*blake3::hash(&buf).as_bytes()) {
                let z = zstd::bulk::compress(&buf, level)?;
                packed += z.len().min(bs) as u64;
                raw += bs as u64;
                blocks += 1;
            }
            if n < bs {
                break;
            }
        }
    }
    println!("{blocks} unique blocks, {raw} bytes, {packed} bytes compressed");
    Ok(())
}
