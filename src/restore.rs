//! `disksafe restore`: writes a device as it was at a point, byte-exact, with zero
//! blocks left as holes.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::Path;
use std::sync::mpsc::sync_channel;
use std::sync::Arc;

use anyhow::{bail, Context};

use crate::cache::CachedSafe;
use crate::device::PointDevice;
use crate::format;
use crate::readat::ReadAt;
use crate::safe_reader::{device_in_point, Safe};

/// Bytes decoded per step; large enough to keep every core decompressing.
const CHUNK: usize = 16 << 20;

/// Restores DEVICE at POINT to OUTPUT (`-` for stdout); returns the bytes written.
pub fn restore(safe_dir: &Path, point: &str, device: &str, output: &str) -> anyhow::Result<u64> {
    let safe = Arc::new(Safe::open(safe_dir)?);
    let p = safe.point(point)?;
    let d = device_in_point(&p, device)?;
    let bs = safe.params().block_size as usize;
    let cache = Arc::new(CachedSafe::new(safe.clone(), 64 << 20));
    let dev = PointDevice::new(cache, p.id, d.id, &d.name, d.size);

    enum Out {
        Stdout(std::io::StdoutLock<'static>),
        File {
            f: File,
            sparse: bool,
            created: bool,
        },
    }
    let mut out = if output == "-" {
        Out::Stdout(std::io::stdout().lock())
    } else {
        let path = Path::new(output);
        let existed = path.exists();
        let is_blk = existed
            && std::fs::metadata(path)
                .map(|m| m.file_type().is_block_device())
                .unwrap_or(false);
        let f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(!is_blk)
            .open(path)
            .with_context(|| format!("cannot open output {output}"))?;
        if is_blk {
            let cap = crate::backup::source_size(&f)?;
            if cap < d.size {
                bail!(
                    "output {output} holds {cap} bytes, the device needs {}",
                    d.size
                );
            }
        } else {
            f.set_len(d.size)
                .with_context(|| format!("sizing output {output}"))?;
        }
        Out::File {
            f,
            sparse: !is_blk,
            created: !existed,
        }
    };

    // Decode on a helper thread while this one writes.
    let (tx, rx) = sync_channel::<anyhow::Result<(u64, Vec<u8>)>>(2);
    let size = d.size;
    let result = std::thread::scope(|s| -> anyhow::Result<u64> {
        s.spawn(|| {
            let tx = tx;
            let mut off = 0u64;
            while off < size {
                let n = CHUNK.min((size - off) as usize);
                let mut buf = vec![0u8; n];
                let r = dev
                    .read_exact_at(off, &mut buf)
                    .map_err(|e| anyhow::anyhow!("{e}"))
                    .map(|_| (off, buf));
                let failed = r.is_err();
                if tx.send(r).is_err() || failed {
                    return;
                }
                off += n as u64;
            }
        });
        let mut written = 0u64;
        for r in rx.iter() {
            let (off, buf) = r?;
            match &mut out {
                Out::Stdout(w) => w.write_all(&buf).context("writing to stdout")?,
                Out::File { f, sparse, .. } => {
                    for (i, chunk) in buf.chunks(bs).enumerate() {
                        if *sparse && format::is_zero(chunk) {
                            continue;
                        }
                        f.write_all_at(chunk, off + (i * bs) as u64)
                            .with_context(|| format!("writing output {output}"))?;
                    }
                }
            }
            written += buf.len() as u64;
        }
        match &mut out {
            Out::Stdout(w) => w.flush()?,
            Out::File { f, .. } => f.sync_all().with_context(|| format!("syncing {output}"))?,
        }
        Ok(written)
    });
    if result.is_err() {
        if let Out::File { created: true, .. } = out {
            let _ = std::fs::remove_file(output);
        }
    }
    result.map_err(|e| {
        e.context(format!(
            "restore of device {device} at point {} failed",
            p.id
        ))
    })
}
