//! Filesystem parsers (ext2/3/4, XFS, btrfs, NTFS, FAT12/16/32, exFAT) behind one tree trait.
//!
//! Everything here reads only through [`ReadAt`] and knows nothing of safes or FUSE.
//! Every on-disk value is treated as hostile: offsets, counts and lengths are checked,
//! loops are bounded, and damage is an error, never data.

pub mod btrfs;
pub mod ext;
pub mod fat;
pub mod ntfs;
pub mod tree;
pub mod xfs;

use std::sync::Arc;

use crate::readat::ReadAt;
pub use tree::{DirEntry, FsTree, LeftOut, Members, NodeKind, Stat, StatFs, Timespec, TreeOptions};

/// Opens the file tree of a volume if it holds a filesystem we can read; `Ok(None)`
/// when no known filesystem is there. An ext, XFS, NTFS, FAT32 or exFAT volume whose
/// own superblock or boot sector fails (unreadable, damaged, wiped) is read through its
/// backup copy when one is found.
pub fn open_tree(
    dev: Arc<dyn ReadAt>,
    opts: &TreeOptions,
) -> std::io::Result<Option<Arc<dyn FsTree>>> {
    // The first probe that could not read its sector: the answer when nothing else
    // (a backup copy included) is found.
    let mut unread: Option<std::io::Error> = None;
    let mut probe = |p: std::io::Result<bool>| match p {
        Ok(found) => found,
        Err(e) => {
            unread.get_or_insert(e);
            false
        }
    };
    if probe(ext::probe(&*dev)) {
        let fs = or_backup(ext::ExtFs::open(dev.clone(), opts), |why| {
            ext::open_backup(&dev, opts, why)
        })?;
        return Ok(Some(Arc::new(fs)));
    }
    if probe(xfs::probe(&*dev)) {
        let fs = or_backup(xfs::XfsFs::open(dev.clone(), opts), |why| {
            xfs::open_backup(&dev, opts, why)
        })?;
        return Ok(Some(Arc::new(fs)));
    }
    if probe(btrfs::probe(&*dev)) {
        return Ok(Some(btrfs::BtrfsFs::open(dev, opts)?));
    }
    if probe(ntfs::probe(&*dev)) {
        let fs = or_backup(ntfs::NtfsFs::open(dev.clone(), opts), |why| {
            ntfs::open_backup(&dev, opts, why)
        })?;
        return Ok(Some(fs));
    }
    if probe(fat::exfat::probe(&*dev)) {
        let fs = or_backup(fat::exfat::ExFatFs::open(dev.clone(), opts), |why| {
            fat::exfat::open_backup(&dev, opts, why)
        })?;
        return Ok(Some(Arc::new(fs)));
    }
    if probe(fat::probe(&*dev)) {
        return Ok(Some(Arc::new(fat::FatFs::open(dev, opts)?)));
    }
    // Nothing claims the volume: one whose start is unreadable or was wiped, if a
    // backup copy of its superblock or boot sector says what it is.
    let why = unread
        .as_ref()
        .map_or("no superblock at the volume's start".to_string(), |e| {
            e.to_string()
        });
    let backups: [&dyn Fn() -> Option<Opened>; 5] = [
        &|| ext::open_backup(&dev, opts, &why).map(|r| r.map(|fs| Arc::new(fs) as _)),
        &|| xfs::open_backup(&dev, opts, &why).map(|r| r.map(|fs| Arc::new(fs) as _)),
        &|| ntfs::open_backup(&dev, opts, &why).map(|r| r.map(|fs| fs as _)),
        &|| fat::open_backup(&dev, opts, &why).map(|r| r.map(|fs| Arc::new(fs) as _)),
        &|| fat::exfat::open_backup(&dev, opts, &why).map(|r| r.map(|fs| Arc::new(fs) as _)),
    ];
    if let Some(found) = backups.iter().find_map(|b| b()) {
        return found.map(Some);
    }
    unread.map_or(Ok(None), Err)
}

/// A tree opened, or why it did not.
type Opened = std::io::Result<Arc<dyn FsTree>>;

/// `opened`, or when it failed, the volume read through a backup copy `backup(why)`
/// finds; the first failure stands when none is found or it fails too.
fn or_backup<T>(
    opened: std::io::Result<T>,
    backup: impl FnOnce(&str) -> Option<std::io::Result<T>>,
) -> std::io::Result<T> {
    opened.or_else(|e| match backup(&e.to_string()) {
        Some(Ok(fs)) => Ok(fs),
        _ => Err(e),
    })
}

/// Hints the device to fetch scattered byte ranges (a parser warming its metadata):
/// sorted and merged across gaps under 64 KiB so the device fetches them in few
/// batches, at most `max_ranges` of them.
/// Whether a volume's first sector leaves its format's backup to be read: it cannot be
/// read, it is the format's own (`ours`) yet did not open, or (with `zeros`) it was
/// wiped. Anything else is something else's, which a backup copy must not cover.
pub(crate) fn start_gone_or_ours(
    dev: &dyn ReadAt,
    ours: impl Fn(&[u8; 512]) -> bool,
    zeros: bool,
) -> bool {
    let mut first = [0u8; 512];
    match dev.read_exact_at(0, &mut first) {
        Err(_) => true,
        Ok(()) => ours(&first) || (zeros && first.iter().all(|&b| b == 0)),
    }
}

pub(crate) fn prefetch_spans(dev: &dyn ReadAt, mut spans: Vec<(u64, u64)>, max_ranges: usize) {
    spans.sort_unstable();
    let mut merged: Vec<(u64, u64)> = Vec::new();
    for (p, l) in spans {
        match merged.last_mut() {
            Some((mp, ml)) if p <= mp.saturating_add(*ml).saturating_add(64 << 10) => {
                *ml = (*ml).max(p.saturating_add(l) - *mp)
            }
            _ => merged.push((p, l)),
        }
    }
    tracing::debug!(
        "warming {} range(s), {} bytes",
        merged.len(),
        merged.iter().map(|m| m.1).sum::<u64>()
    );
    merged.truncate(max_ranges);
    dev.prefetch(&merged);
}

/// The device byte ranges holding bytes `offset..end` of a file, from its runs (sorted
/// by logical start): `run` gives each run's (logical start, length, physical start or
/// `None` for a hole), all in units of `unit` bytes. Shared by the parsers' prefetch
/// hints; ranges that would overflow are left out.
pub(crate) fn run_spans<R>(
    runs: &[R],
    run: impl Fn(&R) -> (u64, u64, Option<u64>),
    offset: u64,
    end: u64,
    unit: u64,
) -> Vec<(u64, u64)> {
    if offset >= end || unit == 0 {
        return Vec::new();
    }
    let (first, last) = (offset / unit, end.div_ceil(unit)); // last exclusive
    let start = runs.partition_point(|r| {
        let (l, n, _) = run(r);
        l.saturating_add(n) <= first
    });
    let mut spans = Vec::new();
    for (logical, len, physical) in runs[start..].iter().map(&run) {
        if logical >= last {
            break;
        }
        let Some(physical) = physical else { continue };
        let lo = logical.max(first);
        let hi = logical.saturating_add(len).min(last);
        if hi <= lo {
            continue;
        }
        let at = physical
            .checked_add(lo - logical)
            .and_then(|p| p.checked_mul(unit));
        if let (Some(at), Some(n)) = (at, (hi - lo).checked_mul(unit)) {
            spans.push((at, n));
        }
    }
    spans
}

/// One directory's entries with a name index for lookups, as the XFS and btrfs trees
/// cache them.
pub(crate) struct Listing {
    pub entries: Arc<Vec<DirEntry>>,
    pub index: std::collections::HashMap<Vec<u8>, u64>,
}

impl Listing {
    /// The entries in their order; a name met again is dropped, so listings and
    /// lookups agree on the first.
    pub fn new(found: Vec<DirEntry>) -> Listing {
        let mut index = std::collections::HashMap::with_capacity(found.len());
        let mut entries = Vec::with_capacity(found.len());
        for e in found {
            if index.insert(e.name.clone(), e.ino).is_none() {
                entries.push(e);
            }
        }
        Listing {
            entries: Arc::new(entries),
            index,
        }
    }
}

impl crate::cache::Weigh for Arc<Listing> {
    fn weight(&self) -> usize {
        self.entries
            .iter()
            .map(|e| e.name.len() * 2 + 96)
            .sum::<usize>()
            + 64
    }
}

/// Whether a stored name can be a path component (not empty, no `/`, no NUL).
pub(crate) fn valid_name(name: &[u8]) -> bool {
    !name.is_empty() && !name.contains(&b'/') && !name.contains(&0)
}

/// SEEK_DATA (`data`) or SEEK_HOLE from `offset` (below `size`) in a file whose data
/// lies in `runs`: byte ranges sorted by start, not overlapping. Shared by the trees
/// that keep extent maps (XFS, btrfs).
pub(crate) fn seek_runs(
    runs: impl Iterator<Item = (u64, u64)>,
    offset: u64,
    size: u64,
    data: bool,
) -> Option<u64> {
    let mut at = offset;
    for (lo, hi) in runs {
        if hi <= at {
            continue;
        }
        if data {
            return (lo.max(at) < size).then_some(lo.max(at));
        }
        if lo > at {
            return Some(at);
        }
        at = hi;
        if at >= size {
            return Some(size);
        }
    }
    if data {
        None
    } else {
        Some(at.min(size))
    }
}

/// A device number in the encoding FUSE and stat take (Linux's new_encode_dev).
pub(crate) fn linux_dev(major: u32, minor: u32) -> u32 {
    (minor & 0xFF) | (major << 8) | ((minor & !0xFF) << 12)
}

/// An `InvalidData` error naming the damaged structure.
pub(crate) fn corrupt(msg: impl Into<String>) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, msg.into())
}

/// A byte buffer as a volume, for fuzzing and tests of the parsers (the name they know).
pub use crate::readat::MemReader as MemVolume;

/// A [`MemVolume`] that says it prefetches, so parsers run their warm-ups on it.
struct Warmed(MemVolume);

impl ReadAt for Warmed {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.read_at(offset, buf)
    }

    fn size(&self) -> u64 {
        self.0.size()
    }

    fn prefetches(&self) -> bool {
        true
    }
}

/// Opens `data` as a volume and walks everything in it (directories, file data up to
/// `max_read` bytes each and the readahead hint for all of it, links, xattrs),
/// visiting each inode once, with the parsers' background warm-ups running as under a
/// mount (and waited for). Errors are fine; a panic or a hang is a bug. Shared by the
/// fuzz targets and the hostile-input tests.
pub fn walk_everything(data: Vec<u8>, max_read: usize) -> std::io::Result<usize> {
    walk_volume(Arc::new(Warmed(MemVolume(data))), max_read)
}

/// Whether `vol` holds Linux swap: its signature ends the first page (4 to 64 KiB).
fn is_swap(vol: &dyn ReadAt) -> bool {
    [4096u64, 8192, 16384, 65536].iter().any(|&page| {
        let mut sig = [0u8; 10];
        page <= vol.size()
            && vol.read_exact_at(page - 10, &mut sig).is_ok()
            && (&sig == b"SWAPSPACE2" || &sig == b"SWAP-SPACE")
    })
}

/// Byte ranges (offset, length) of a volume that no file or metadata uses.
pub type FreeRanges = Vec<(u64, u64)>;

/// The filesystem on `vol`, if this crate can say which of its bytes are free (ext2/3/4,
/// XFS, NTFS, btrfs, FAT, exFAT), with those byte ranges (sorted, disjoint, inside the
/// volume) or why it will not say: what `backup --skip-free` leaves out. `None` for
/// other contents, and for swap space, which mkswap writes over an old filesystem
/// leaving its boot sector (FAT's, NTFS's) in place: its "free" space could be a
/// hibernation image.
pub fn free_space(
    vol: Arc<dyn ReadAt>,
    label: &str,
) -> Option<(&'static str, std::io::Result<FreeRanges>)> {
    if is_swap(&*vol) {
        return None;
    }
    if ext::probe(&*vol).unwrap_or(false) {
        Some(("ext", ext::free_ranges(vol, label)))
    } else if ntfs::probe(&*vol).unwrap_or(false) {
        Some(("NTFS", ntfs::free_ranges(vol, label)))
    } else if xfs::probe(&*vol).unwrap_or(false) {
        Some(("XFS", xfs::free_ranges(vol, label)))
    } else if btrfs::probe(&*vol).unwrap_or(false) {
        Some(("btrfs", btrfs::free_ranges(vol, label)))
    } else if fat::exfat::probe(&*vol).unwrap_or(false) {
        Some(("exFAT", fat::exfat::free_ranges(vol, label)))
    } else if fat::probe(&*vol).unwrap_or(false) {
        Some(("FAT", fat::free_ranges(vol, label)))
    } else {
        None
    }
}

/// Byte ranges sorted, with touching and overlapping ones joined: free space found in
/// pieces (an LV's last free bytes, the unused extent after it) can fill one block.
pub(crate) fn merged(mut ranges: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    ranges.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
    for (o, l) in ranges {
        match out.last_mut() {
            Some((po, pl)) if *po + *pl >= o => *pl = (*pl).max(o + l - *po),
            _ => out.push((o, l)),
        }
    }
    out
}

/// Byte ranges `free` (sorted, disjoint) less every range of `used` (any order).
pub(crate) fn subtract(free: Vec<(u64, u64)>, mut used: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    if used.is_empty() {
        return free;
    }
    used.sort_unstable();
    let mut out = Vec::with_capacity(free.len());
    let mut u = 0usize;
    for (start, len) in free {
        let end = start + len;
        let mut at = start;
        // Used ranges ending before this free one matter to no later one either.
        while u < used.len() && used[u].0.saturating_add(used[u].1) <= at {
            u += 1;
        }
        let mut i = u;
        while i < used.len() && used[i].0 < end {
            let (us, ue) = (used[i].0, used[i].0.saturating_add(used[i].1));
            if us > at {
                out.push((at, us - at));
            }
            at = at.max(ue);
            i += 1;
        }
        if at < end {
            out.push((at, end - at));
        }
    }
    out
}

/// [`walk_everything`] on any volume (warm-ups run when it prefetches), such as a
/// partition sliced out of a disk, so the disk fuzz target walks what a mount shows.
pub fn walk_volume(vol: Arc<dyn ReadAt>, max_read: usize) -> std::io::Result<usize> {
    let opts = TreeOptions {
        budget: Some(crate::cache::Budget::new(16 << 20)),
        ..TreeOptions::default()
    };
    let walked = walk_tree(vol, &opts, max_read);
    crate::background::wait_idle();
    walked
}

/// Walks a file's data extents with [`FsTree::seek`] (a few dozen steps at most),
/// asserting what SEEK_DATA and SEEK_HOLE promise whatever the volume holds: answers
/// at or after the offset, data before the end, holes at most at the end.
fn seek_walk(tree: &dyn FsTree, ino: u64, size: u64) {
    let mut at = 0;
    for _ in 0..64 {
        let Ok(Some(d)) = tree.seek(ino, at, true) else {
            return;
        };
        assert!(
            at <= d && d < size,
            "SEEK_DATA from {at} gave {d} (size {size})"
        );
        let Ok(h) = tree.seek(ino, d, false) else {
            return;
        };
        let h = h.expect("SEEK_HOLE inside the file answers");
        assert!(
            d < h && h <= size,
            "SEEK_HOLE from data at {d} gave {h} (size {size})"
        );
        at = h;
        if at >= size {
            return;
        }
    }
}

/// Xattrs a tree answers without listing them (ntfs-3g's `system.ntfs_*`), which the
/// walk asks for by name: each reads structures of its own ($Secure, $ObjId, $EA).
const UNLISTED_XATTRS: [&[u8]; 6] = [
    b"system.ntfs_acl",
    b"system.ntfs_object_id",
    b"system.ntfs_ea",
    b"system.ntfs_reparse_data",
    b"system.ntfs_dos_name",
    b"system.ntfs_times",
];

/// The walk of [`walk_everything`], on a volume already wrapped.
fn walk_tree(vol: Arc<dyn ReadAt>, opts: &TreeOptions, max_read: usize) -> std::io::Result<usize> {
    let Some(tree) = open_tree(vol, opts)? else {
        return Ok(0);
    };
    let _ = tree.statfs();
    let mut seen = std::collections::HashSet::new();
    let mut stack = vec![tree.root()];
    let mut buf = vec![0u8; max_read];
    while let Some(ino) = stack.pop() {
        if !seen.insert(ino) || seen.len() > 100_000 {
            continue;
        }
        let Ok(st) = tree.stat(ino) else { continue };
        let _ = tree.xattrs(ino);
        let _ = tree.xattr_names(ino);
        for name in UNLISTED_XATTRS {
            let _ = tree.xattr(ino, name);
        }
        match st.kind {
            NodeKind::Dir => {
                if let Ok(entries) = tree.read_dir(ino) {
                    for e in entries.iter().take(10_000) {
                        let _ = tree.lookup(ino, &e.name);
                        stack.push(e.ino);
                    }
                }
            }
            NodeKind::File => {
                tree.prefetch(ino, 0, st.size);
                let _ = tree.read(ino, 0, &mut buf);
                let _ = tree.read(ino, st.size.saturating_sub(7), &mut buf[..7.min(max_read)]);
                seek_walk(&*tree, ino, st.size);
            }
            NodeKind::Symlink => {
                let _ = tree.read_link(ino);
            }
            _ => {}
        }
    }
    Ok(seen.len())
}

#[cfg(test)]
mod tests {
    use super::run_spans;

    /// (logical, length, physical) runs in 4 KiB units: a hole at 10..20.
    const RUNS: [(u64, u64, Option<u64>); 3] =
        [(0, 10, Some(100)), (10, 10, None), (20, 5, Some(7))];

    fn spans(offset: u64, end: u64) -> Vec<(u64, u64)> {
        run_spans(&RUNS, |&r| r, offset, end, 4096)
    }

    #[test]
    fn a_range_maps_to_its_runs_without_holes() {
        // Bytes 8 KiB + 1 to 22 units: units 2..22, i.e. 2..10 of run one, the hole
        // skipped, 20..22 of run three.
        assert_eq!(
            spans(8193, 22 * 4096),
            vec![(102 * 4096, 8 * 4096), (7 * 4096, 2 * 4096)]
        );
        assert_eq!(spans(11 * 4096, 19 * 4096), vec![], "inside the hole");
        assert_eq!(spans(30 * 4096, 40 * 4096), vec![], "past the runs");
        assert_eq!(spans(5, 5), vec![], "empty");
    }

    #[test]
    fn runs_that_would_overflow_are_left_out() {
        let runs = [(0u64, 4u64, Some(u64::MAX - 1)), (4, u64::MAX, Some(1))];
        let got = run_spans(&runs, |&r| r, 0, u64::MAX, 4096);
        // The first run lies past any byte offset; the second is clipped at the end.
        assert_eq!(got, vec![(4096, (u64::MAX.div_ceil(4096) - 4) * 4096)]);
    }
}
