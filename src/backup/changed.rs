//! `--changed-blocks`: byte ranges a change-tracking driver says were written since the
//! previous point, turned into the runs of blocks to read.

use std::path::Path;

use anyhow::{bail, Context};

/// Parses `offset length` per line (decimal or 0x-hex; `#` comments and blank lines
/// allowed), so a change-tracking driver's log feeds the backup directly.
pub fn parse_changed_blocks(path: &Path) -> anyhow::Result<Vec<(u64, u64)>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read changed-blocks file {}", path.display()))?;
    let num = |s: &str| -> Option<u64> {
        match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
            Some(h) => u64::from_str_radix(h, 16).ok(),
            None => s.parse().ok(),
        }
    };
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let mut it = line.split_whitespace();
        let (Some(a), Some(b), None) = (it.next(), it.next(), it.next()) else {
            bail!(
                "{}:{}: expected 'offset length', got {line:?}",
                path.display(),
                i + 1
            );
        };
        let (Some(off), Some(len)) = (num(a), num(b)) else {
            bail!("{}:{}: not a number in {line:?}", path.display(), i + 1);
        };
        if off.checked_add(len).is_none() {
            bail!("{}:{}: range overflows", path.display(), i + 1);
        }
        out.push((off, len));
    }
    Ok(out)
}

/// Sorted, merged runs `(first_block, count)` to read: the listed ranges, plus every
/// block past the previous size (a grown device), clipped to the new size.
pub fn blocks_to_scan(
    ranges: &[(u64, u64)],
    bs: u64,
    size: u64,
    prev_size: u64,
) -> Vec<(u64, u64)> {
    let nblocks = size.div_ceil(bs);
    let mut spans: Vec<(u64, u64)> = ranges
        .iter()
        .filter(|(_, len)| *len > 0)
        .map(|&(off, len)| (off / bs, (off + len - 1) / bs + 1))
        .collect();
    if size > prev_size {
        // The block holding the old end gains bytes too.
        spans.push((prev_size / bs, nblocks));
    }
    spans.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::new();
    for (a, b) in spans {
        let b = b.min(nblocks);
        if a >= b {
            continue;
        }
        match out.last_mut() {
            Some((s, c)) if a <= *s + *c => *c = (*c).max(b - *s),
            _ => out.push((a, b - a)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_and_clips() {
        let r = blocks_to_scan(
            &[(0, 1), (4096, 10), (70000, 0), (1 << 40, 5)],
            4096,
            40960,
            40960,
        );
        assert_eq!(r, vec![(0, 2)]);
        let r = blocks_to_scan(&[(8192, 1)], 4096, 50000, 40000);
        assert_eq!(r, vec![(2, 1), (9, 4)]);
    }
}
