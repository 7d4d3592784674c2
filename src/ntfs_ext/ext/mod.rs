//! ext2/ext3/ext4 as an [`FsTree`]: superblock and descriptors (32/64-bit, flex_bg,
//! meta_bg, sparse_super), extents and indirect blocks, linear and htree directories,
//! inline data, xattrs, metadata checksums, and in-memory journal replay.

mod alloc;
mod backup_sb;
mod dir;
mod fast_commit;
mod inode;
mod journal;
mod orphan;
mod sb;
mod xattr;

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex, OnceLock};

use crate::cache::{Weigh, WeightedLru};
use crate::ntfs_ext::corrupt;
use crate::ntfs_ext::tree::{DirEntry, FsTree, NodeKind, Stat, StatFs, TreeOptions};
use crate::readat::ReadAt;
use inode::{Inode, Run};
use sb::{feat, u16le, u32le, GroupDesc, Superblock, MAGIC, SB_OFFSET};

pub use alloc::free_ranges;

/// Root directory inode.
const ROOT: u64 = 2;
/// Cache caps of one opened volume (bytes) without a shared budget; under one
/// (`TreeOptions::budget`, a mount's) the budget bounds them instead.
const INODE_CACHE: usize = 2 << 20;
const DIR_CACHE: usize = 8 << 20;
const EXTENT_CACHE: usize = 2 << 20;
/// Most group descriptors `df` sums (2^20 groups: 128 TiB of 4 KiB blocks); past it
/// the superblock's counts are shown.
const STATFS_GROUPS: u64 = 1 << 20;

/// How much of the inode tables is warmed in the background when a volume opens.
const ITABLE_WARM: u64 = 64 << 20;
/// How much directory data is warmed after them, in at most so many separate ranges
/// (each may cost the device a whole block of its own, 64 KiB in a safe).
const DIR_WARM: u64 = 32 << 20;
const WARM_RANGES: usize = 2048;
/// Directories looked at for it, at most.
const DIR_WARM_INODES: usize = 1 << 17;

/// Largest directory read (bytes); bigger is treated as damage.
const MAX_DIR_BYTES: u64 = 4 << 30;
/// Blocks of a block-mapped file one SEEK_DATA / SEEK_HOLE step maps (its pointer
/// blocks are read for that window only).
const SEEK_WINDOW: u64 = 1 << 18;

/// True when the volume carries an ext2/3/4 superblock.
pub fn probe(dev: &dyn ReadAt) -> io::Result<bool> {
    if dev.size() < SB_OFFSET + 1024 {
        return Ok(false);
    }
    let mut m = [0u8; 2];
    dev.read_exact_at(SB_OFFSET + 0x38, &mut m)?;
    Ok(u16::from_le_bytes(m) == MAGIC)
}

struct DirCache {
    entries: Arc<Vec<DirEntry>>,
    index: HashMap<Vec<u8>, u64>,
}

impl Weigh for Arc<Inode> {
    fn weight(&self) -> usize {
        self.raw.len() + 160
    }
}
impl Weigh for Arc<DirCache> {
    fn weight(&self) -> usize {
        self.entries
            .iter()
            .map(|e| e.name.len() * 2 + 64)
            .sum::<usize>()
            + 64
    }
}

/// An open ext volume.
pub struct ExtFs {
    dev: Arc<dyn ReadAt>,
    sb: Superblock,
    label: String,
    /// Where listings count entries left out as damaged.
    left_out: crate::ntfs_ext::LeftOut,
    groups: Mutex<HashMap<u64, GroupDesc>>,
    inodes: WeightedLru<u64, Arc<Inode>>,
    dirs: WeightedLru<u64, Arc<DirCache>>,
    extents: WeightedLru<u64, Arc<Vec<Run>>>,
    statfs: OnceLock<StatFs>,
    /// What replayed fast commits change, consulted before the volume.
    fc: Option<Arc<fast_commit::FcState>>,
    /// Whether orphans count as the kernel's mount cleans them up (not with
    /// `--no-replay`, which shows the volume as recorded).
    clean_orphans: bool,
    orphans: OnceLock<orphan::Cleanup>,
    /// The group descriptors come from a backup copy ([`open_backup`]): their
    /// "inode table unused" flags may be older than the inodes, so they hide none.
    stale_descriptors: bool,
}

struct JMap<'a> {
    fs: &'a ExtFs,
    ino: Arc<Inode>,
    runs: Option<Vec<Run>>,
}

impl journal::JournalMap for JMap<'_> {
    fn physical(&self, n: u64) -> io::Result<u64> {
        let p = match &self.runs {
            Some(runs) => find_run(runs, n)
                .map(|(r, _)| r.physical + (n - r.logical))
                .unwrap_or(0),
            None => inode::indirect_runs(&*self.fs.dev, &self.fs.sb, &self.ino, n, n + 1)?
                .first()
                .map_or(0, |r| r.physical),
        };
        if p == 0 {
            return Err(corrupt(format!("journal block {n} is not mapped")));
        }
        Ok(p)
    }
}

/// Hints the device to fetch the in-use part of every group's inode table, up to
/// [`ITABLE_WARM`] bytes, then the blocks of the directories found in them, up to
/// [`DIR_WARM`] bytes: what a walk reads next. Only a hint: damage here is skipped and
/// found again by the reads proper.
fn warm_inode_tables(dev: &dyn ReadAt, sb: &Superblock, label: &str) {
    let (bs, isz) = (sb.block_size as u64, sb.inode_size as u64);
    let mut budget = ITABLE_WARM;
    let mut tables = Vec::new();
    // Bounded however many groups a (hostile) superblock claims.
    for g in 0..sb.groups().min(1 << 20) {
        let Ok(gd) = sb::read_group(dev, sb, g) else {
            break;
        };
        let len = (gd.inodes_used(sb) * isz).min(budget);
        if len == 0 {
            continue;
        }
        let at = gd.inode_table.saturating_mul(bs);
        tables.push((g, at, len));
        budget -= len;
        if budget == 0 {
            break;
        }
    }
    let ranges: Vec<(u64, u64)> = tables.iter().map(|&(_, at, len)| (at, len)).collect();
    dev.prefetch(&ranges);
    // Directories' blocks, sorted and merged so they are fetched in few batches.
    let mut spans: Vec<(u64, u64)> = Vec::new();
    let (mut left, mut dirs) = (DIR_WARM, 0);
    let mut chunk = vec![0u8; (1 << 20) / isz as usize * isz as usize];
    'tables: for (g, at, len) in tables {
        let mut off = 0;
        while off < len {
            let n = (len - off).min(chunk.len() as u64) as usize;
            if dev.read_exact_at(at + off, &mut chunk[..n]).is_err() {
                break;
            }
            for (i, raw) in chunk[..n].chunks_exact(isz as usize).enumerate() {
                let mode = u16::from_le_bytes([raw[0], raw[1]]);
                let links = u16::from_le_bytes([raw[0x1A], raw[0x1B]]);
                if mode & 0xF000 != 0x4000 || links == 0 {
                    continue;
                }
                let ino = g * sb.inodes_per_group as u64 + (off / isz) + i as u64 + 1;
                dirs += 1;
                if dirs > DIR_WARM_INODES {
                    break 'tables;
                }
                let Ok(inode) = Inode::parse(sb, ino, raw.to_vec(), label) else {
                    continue;
                };
                for (p, l) in dir_spans(dev, sb, &inode, label) {
                    let l = l.min(left);
                    spans.push((p, l));
                    left -= l;
                    if left == 0 {
                        break 'tables;
                    }
                }
            }
            off += n as u64;
        }
    }
    crate::ntfs_ext::prefetch_spans(dev, spans, WARM_RANGES);
}

/// Byte ranges holding a directory's blocks (the first 64 of a block-mapped one).
fn dir_spans(dev: &dyn ReadAt, sb: &Superblock, ino: &Inode, label: &str) -> Vec<(u64, u64)> {
    let bs = sb.block_size as u64;
    if ino.flags & inode::FL_INLINE_DATA != 0 {
        return Vec::new();
    }
    if ino.flags & inode::FL_EXTENTS != 0 {
        // Depth 0 or 1 only: a warm-up must stay cheap whatever a (hostile) tree holds.
        let ib = ino.i_block();
        if u16::from_le_bytes([ib[6], ib[7]]) > 1 {
            return Vec::new();
        }
        return inode::extent_runs(dev, sb, ino, label)
            .unwrap_or_default()
            .iter()
            .filter(|r| !r.unwritten)
            .map(|r| (r.physical.saturating_mul(bs), r.len.saturating_mul(bs)))
            .collect();
    }
    inode::indirect_runs(dev, sb, ino, 0, ino.size.div_ceil(bs).min(64))
        .unwrap_or_default()
        .iter()
        .map(|r| (r.physical.saturating_mul(bs), r.len.saturating_mul(bs)))
        .collect()
}

/// The run holding logical block `l`, or the index where it would be.
fn find_run(runs: &[Run], l: u64) -> Option<(&Run, usize)> {
    let i = runs.partition_point(|r| r.logical + r.len <= l);
    runs.get(i).filter(|r| r.logical <= l).map(|r| (r, i))
}

/// A volume as replaying its journal leaves it, in memory.
pub struct Replayed {
    pub volume: Arc<dyn ReadAt>,
    /// Logged blocks skipped for failing their checksums.
    pub bad_blocks: u64,
    /// Block ranges (start, length) that replayed fast commits give to files: in use,
    /// although the bitmaps on the volume do not say so until the kernel's replay.
    pub fast_commit_blocks: Vec<(u64, u64)>,
}

/// Says whether the volume holds an ext3/4 whose journal is on another device
/// (`mke2fs -J device=`), so the mount hands it the point's other volumes to find
/// it among.
pub fn has_external_journal(dev: &dyn ReadAt) -> bool {
    let mut b = [0u8; 1024];
    dev.read_exact_at(SB_OFFSET, &mut b).is_ok()
        && u16le(&b, 0x38) == MAGIC
        && u32le(&b, 0x5C) & feat::COMPAT_HAS_JOURNAL != 0
        && u32le(&b, 0x60) & feat::INCOMPAT_JOURNAL_DEV == 0
        && u32le(&b, 0xE0) == 0
}

/// The external journal of the volume whose superblock is `sb`, among `members`:
/// an ext journal device (its own superblock flagged JOURNAL_DEV) with the UUID `sb`
/// names and the same block size; with the block its journal starts at (the one
/// after the block holding that superblock, as the kernel places it).
fn external_journal(
    sb: &Superblock,
    members: &[Arc<dyn ReadAt>],
) -> Option<(Arc<dyn ReadAt>, u64)> {
    members.iter().find_map(|m| {
        let mut b = [0u8; 1024];
        m.read_exact_at(SB_OFFSET, &mut b).ok()?;
        let ok = u16le(&b, 0x38) == MAGIC
            && u32le(&b, 0x60) & feat::INCOMPAT_JOURNAL_DEV != 0
            && b[0x68..0x78] == sb.journal_uuid
            && u32le(&b, 0x18) <= 6
            && 1024u32 << u32le(&b, 0x18) == sb.block_size;
        ok.then(|| (m.clone(), SB_OFFSET / sb.block_size as u64 + 1))
    })
}

/// An external journal's blocks: its superblock (journal block 0) at the start
/// found, the log's blocks at their own numbers (jbd2 numbers an external journal's
/// blocks from the device's start, its first log block just after the superblock).
struct External(u64);

impl journal::JournalMap for External {
    fn physical(&self, n: u64) -> io::Result<u64> {
        if n == 0 {
            Ok(self.0)
        } else if n > self.0 {
            Ok(n)
        } else {
            Err(corrupt(format!("journal block {n} is before the log")))
        }
    }
}

/// The volume read through a backup superblock and descriptor table when its
/// primary superblock is damaged or gone (`why` says how it failed; see
/// [`backup_sb`]), with a warning; `None` when no backup applies.
pub fn open_backup(
    dev: &Arc<dyn ReadAt>,
    opts: &TreeOptions,
    why: &str,
) -> Option<io::Result<ExtFs>> {
    let b = backup_sb::FromBackup::find(dev)?;
    tracing::warn!(
        "{}: ext primary superblock unusable ({why}); read through the backup superblock at block {} of {} bytes, as `mount -o sb={}` reads it (its group descriptors may be older than the volume)",
        opts.label,
        b.block,
        b.block_size,
        b.block * b.block_size as u64 / 1024
    );
    let mut r = ExtFs::open(Arc::new(b.volume), opts);
    if let Ok(fs) = &mut r {
        fs.stale_descriptors = true;
    }
    Some(r)
}

/// The volume as replaying its journal leaves it (in memory); `None` when the journal
/// is clean. Lets a check compare the replay block by block with
/// `e2fsck -E journal_only`'s, and free space be read after it.
pub fn replayed_volume(dev: Arc<dyn ReadAt>, label: &str) -> io::Result<Option<Replayed>> {
    let opts = TreeOptions {
        no_replay: true,
        label: label.to_string(),
        ..Default::default()
    };
    let fs = ExtFs::open(dev.clone(), &opts)?;
    if fs.sb.incompat & feat::INCOMPAT_RECOVER == 0 {
        return Ok(None);
    }
    Ok(fs.replay()?.map(|mut r| {
        let fast_commit_blocks = std::mem::take(&mut r.fast_commits)
            .into_iter()
            .filter_map(|op| match op {
                fast_commit::Op::AddRange { pblk, len, .. } => Some((pblk, len)),
                _ => None,
            })
            .collect();
        Replayed {
            bad_blocks: r.bad_blocks,
            volume: Arc::new(journal::Overlay::new(dev, fs.sb.block_size as u64, r)),
            fast_commit_blocks,
        }
    }))
}

impl ExtFs {
    /// Opens the volume, replaying its journal in memory unless told not to.
    pub fn open(dev: Arc<dyn ReadAt>, opts: &TreeOptions) -> io::Result<ExtFs> {
        let label = opts.label.clone();
        let mut raw = [0u8; 1024];
        dev.read_exact_at(SB_OFFSET, &mut raw)?;
        let sb = Superblock::parse(&raw, &label)?;
        let mut fs = ExtFs::with(dev.clone(), sb, label.clone(), opts);
        let unknown = fs.sb.incompat & !feat::INCOMPAT_KNOWN;
        if unknown != 0 {
            tracing::warn!(
                "{label}: unknown incompatible features {unknown:#x}; showing what can be read"
            );
        }
        if fs.sb.incompat & feat::INCOMPAT_COMPRESSION != 0 {
            tracing::warn!(
                "{label}: compressed ext2 files cannot be decoded; their data gives EIO"
            );
        }
        if fs.sb.incompat & feat::INCOMPAT_ENCRYPT != 0 {
            tracing::warn!("{label}: volume has encrypted directories; their contents give EIO");
        }
        let needs_recovery = fs.sb.incompat & feat::INCOMPAT_RECOVER != 0;
        if needs_recovery && opts.no_replay {
            tracing::warn!("{label}: journal needs recovery; shown as recorded (no replay)");
        } else if needs_recovery {
            let external =
                fs.sb.incompat & feat::INCOMPAT_JOURNAL_DEV != 0 || fs.sb.journal_inum == 0;
            let found = if external {
                external_journal(&fs.sb, &opts.members.0)
            } else {
                None
            };
            if external && found.is_none() {
                tracing::warn!(
                    "{label}: journal needs recovery but is on another device, not found in this point; shown as recorded"
                );
            } else {
                let replayed = match &found {
                    Some((jdev, start)) => journal::replay(
                        &**jdev,
                        fs.sb.block_size as u64,
                        fs.sb.inode_size as usize,
                        &External(*start),
                        &label,
                    ),
                    None => fs.replay(),
                };
                match replayed {
                    Ok(Some(mut r)) => {
                        let (n, blocks) = (r.transactions, r.blocks.len());
                        let fc_ops = std::mem::take(&mut r.fast_commits);
                        let fc_commits = r.fc_commits;
                        if r.bad_blocks > 0 {
                            tracing::error!(
                                "{label}: {} logged journal block(s) fail their checksums and are not replayed, as e2fsck skips them (a device read while being written, or damage); the tree may be inconsistent where they were",
                                r.bad_blocks
                            );
                        }
                        let journal_dev = found.as_ref().map_or(dev.clone(), |f| f.0.clone());
                        let overlay: Arc<dyn ReadAt> = Arc::new(journal::Overlay::with_journal(
                            dev,
                            journal_dev,
                            fs.sb.block_size as u64,
                            r,
                        ));
                        let mut raw = [0u8; 1024];
                        overlay.read_exact_at(SB_OFFSET, &mut raw)?;
                        let sb = Superblock::parse(&raw, &label)?;
                        fs = ExtFs::with(overlay, sb, label.clone(), opts);
                        tracing::warn!(
                            "{label}: not cleanly unmounted; replayed {n} journal transaction(s), {blocks} block(s), in memory"
                        );
                        if !fc_ops.is_empty() {
                            let records = fc_ops.len();
                            // Built from the volume alone (no cache is filled yet).
                            fs.fc = Some(Arc::new(fs.fast_commit_state(fc_ops)));
                            tracing::warn!(
                                "{label}: replayed {fc_commits} fast commit(s), {records} record(s), in memory"
                            );
                        }
                    }
                    Ok(None) => {}
                    Err(e) => {
                        tracing::warn!("{label}: journal replay failed ({e}); shown as recorded")
                    }
                }
            }
        }
        fs.inode(ROOT)?;
        // A walk stats inodes all over the tables: fetch their used parts in sequential
        // batches, off the caller's path.
        if fs.dev.prefetches() {
            let (dev, sb, label) = (fs.dev.clone(), fs.sb.clone(), fs.label.clone());
            crate::background::spawn(move || warm_inode_tables(&*dev, &sb, &label));
        }
        Ok(fs)
    }

    fn with(dev: Arc<dyn ReadAt>, sb: Superblock, label: String, opts: &TreeOptions) -> ExtFs {
        let budget = || opts.budget.clone();
        ExtFs {
            dev,
            sb,
            label,
            left_out: opts.left_out.clone(),
            groups: Mutex::new(HashMap::new()),
            // Per opened volume, and within the budget all volumes of a mount share.
            inodes: WeightedLru::with_budget(INODE_CACHE, budget()),
            dirs: WeightedLru::with_budget(DIR_CACHE, budget()),
            extents: WeightedLru::with_budget(EXTENT_CACHE, budget()),
            statfs: OnceLock::new(),
            fc: None,
            clean_orphans: !opts.no_replay,
            orphans: OnceLock::new(),
            stale_descriptors: false,
        }
    }

    fn replay(&self) -> io::Result<Option<journal::Replay>> {
        let ino = self.inode(self.sb.journal_inum as u64)?;
        let runs = if ino.flags & inode::FL_EXTENTS != 0 {
            Some(inode::extent_runs(&*self.dev, &self.sb, &ino, &self.label)?)
        } else {
            None
        };
        let map = JMap {
            fs: self,
            ino,
            runs,
        };
        journal::replay(
            &*self.dev,
            self.sb.block_size as u64,
            self.sb.inode_size as usize,
            &map,
            &self.label,
        )
    }

    /// The numbers `df` shows for this volume when the kernel mounts it (ext4_statfs):
    /// metadata and the journal left out of the size, free counts summed over the
    /// group descriptors (the superblock's copies lag behind them), root's reserve
    /// and the kernel's own (2 %, at most 4096 clusters, with extents) out of what is
    /// available; what cleaning up the orphans frees (`orphan.rs`) counts as free.
    /// Falls back to the superblock's numbers where the descriptors are unreadable or
    /// too many.
    fn count_statfs(&self) -> StatFs {
        let sb = &self.sb;
        let shift = sb.cluster_shift;
        let mut free = (sb.free_blocks, sb.free_inodes as u64);
        if sb.groups() <= STATFS_GROUPS {
            let mut sum = (0u64, 0u64);
            let all = (0..sb.groups()).try_for_each(|g| {
                let d = sb::read_group(&*self.dev, sb, g)?;
                sum.0 += (d.free_clusters as u64) << shift;
                sum.1 += d.free_inodes as u64;
                io::Result::Ok(())
            });
            match all {
                Ok(()) => free = sum,
                Err(e) => tracing::warn!(
                    "{}: group descriptors unreadable for free counts ({e}); using the superblock's",
                    self.label
                ),
            }
        }
        let c = self.cleanup();
        let free = (free.0 + c.blocks, free.1 + c.inodes);
        let journal = if shift == 0
            && sb.compat & feat::COMPAT_HAS_JOURNAL != 0
            && sb.incompat & feat::INCOMPAT_JOURNAL_DEV == 0
            && sb.journal_inum != 0
        {
            self.inode(sb.journal_inum as u64)
                .map_or(0, |i| i.size / sb.block_size as u64)
        } else {
            0
        };
        // A recorded count (bigalloc) stands as it is; a computed one adds the journal.
        let overhead = match sb.overhead_clusters(STATFS_GROUPS) {
            Some(o) if shift > 0 => o << shift,
            Some(o) => o + journal,
            None => 0,
        };
        let kernel_reserve = if sb.incompat & feat::INCOMPAT_EXTENTS != 0 {
            ((sb.blocks_count >> shift) / 50).min(4096) << shift
        } else {
            0
        };
        StatFs {
            bsize: sb.block_size,
            blocks: sb.blocks_count.saturating_sub(overhead),
            bfree: free.0,
            bavail: free
                .0
                .saturating_sub(sb.r_blocks.saturating_add(kernel_reserve)),
            files: sb.inodes_count as u64,
            ffree: free.1,
            namelen: 255,
        }
    }

    fn group(&self, g: u64) -> io::Result<GroupDesc> {
        if let Some(d) = self.groups.lock().unwrap().get(&g) {
            return Ok(*d);
        }
        let d = sb::read_group(&*self.dev, &self.sb, g)?;
        self.groups.lock().unwrap().insert(g, d);
        Ok(d)
    }

    /// Inode `ino`'s record as the volume holds it.
    fn raw_inode(&self, ino: u64) -> io::Result<Vec<u8>> {
        if ino == 0 || ino > self.sb.inodes_count as u64 {
            return Err(corrupt(format!("inode {ino} does not exist")));
        }
        let g = (ino - 1) / self.sb.inodes_per_group as u64;
        let idx = (ino - 1) % self.sb.inodes_per_group as u64;
        let gd = self.group(g)?;
        if gd.inode_uninit(&self.sb) && !self.stale_descriptors {
            return Err(corrupt(format!(
                "inode {ino} lies in a group with no initialised inodes"
            )));
        }
        let isz = self.sb.inode_size as u64;
        let off = gd.inode_table * self.sb.block_size as u64 + idx * isz;
        let mut raw = vec![0u8; isz as usize];
        self.dev.read_exact_at(off, &mut raw)?;
        Ok(raw)
    }

    fn inode(&self, ino: u64) -> io::Result<Arc<Inode>> {
        if let Some(i) = self.inodes.get(&ino) {
            return Ok(i);
        }
        let raw = match self.fc.as_ref().and_then(|f| f.inodes.get(&ino)) {
            Some(r) => r.clone(),
            None => self.raw_inode(ino)?,
        };
        let i = Arc::new(Inode::parse(&self.sb, ino, raw, &self.label)?);
        self.inodes.put(ino, i.clone());
        Ok(i)
    }

    fn runs(&self, ino: &Inode) -> io::Result<Arc<Vec<Run>>> {
        if let Some(r) = self.extents.get(&ino.ino) {
            return Ok(r);
        }
        let r = match self.fc.as_ref().and_then(|f| f.runs.get(&ino.ino)) {
            Some(r) => Arc::new(r.clone()),
            None => Arc::new(inode::extent_runs(&*self.dev, &self.sb, ino, &self.label)?),
        };
        self.extents.put(ino.ino, r.clone());
        Ok(r)
    }

    fn raw_xattrs(&self, ino: &Inode) -> io::Result<Vec<xattr::RawEntry>> {
        let mut v = xattr::in_inode(ino.xattr_area())?;
        if ino.file_acl != 0 {
            if ino.file_acl >= self.sb.blocks_count {
                return Err(corrupt(format!(
                    "inode {}: xattr block outside the volume",
                    ino.ino
                )));
            }
            let mut b = vec![0u8; self.sb.block_size as usize];
            self.dev
                .read_exact_at(ino.file_acl * self.sb.block_size as u64, &mut b)?;
            v.extend(xattr::in_block(&b)?);
        }
        Ok(v)
    }

    /// The bytes of an inline-data inode: i_block, then the `system.data` xattr.
    fn inline_data(&self, ino: &Inode) -> io::Result<Vec<u8>> {
        let mut d = ino.i_block().to_vec();
        for e in xattr::in_inode(ino.xattr_area())? {
            if e.name == b"system.data" {
                if let xattr::Value::Bytes(b) = e.value {
                    d.extend_from_slice(&b);
                }
            }
        }
        Ok(d)
    }

    fn check_readable(&self, ino: &Inode) -> io::Result<()> {
        if ino.flags & inode::FL_ENCRYPT != 0 {
            tracing::warn!(
                "{}: inode {} is encrypted; its contents cannot be read",
                self.label,
                ino.ino
            );
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        if ino.flags & inode::FL_COMPR != 0 && self.sb.incompat & feat::INCOMPAT_COMPRESSION != 0 {
            tracing::warn!(
                "{}: inode {} is compressed; its contents cannot be read",
                self.label,
                ino.ino
            );
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        Ok(())
    }

    /// The runs of a file's logical blocks `first..end`: all its (cached) extents, or
    /// the block-mapped ones of that range.
    fn data_runs(&self, ino: &Inode, first: u64, end: u64) -> io::Result<Arc<Vec<Run>>> {
        let replayed = self
            .fc
            .as_ref()
            .is_some_and(|f| f.runs.contains_key(&ino.ino));
        if ino.flags & inode::FL_EXTENTS != 0 || replayed {
            self.runs(ino)
        } else {
            inode::indirect_runs(&*self.dev, &self.sb, ino, first, end).map(Arc::new)
        }
    }

    /// Reads `buf.len()` bytes of an inode's data at `offset` (clipped to its size).
    fn read_data(&self, ino: &Inode, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        if offset >= ino.size {
            return Ok(0);
        }
        let n = buf.len().min((ino.size - offset) as usize);
        let buf = &mut buf[..n];
        if ino.flags & inode::FL_INLINE_DATA != 0 {
            let d = self.inline_data(ino)?;
            for (i, b) in buf.iter_mut().enumerate() {
                *b = d.get(offset as usize + i).copied().unwrap_or(0);
            }
            return Ok(n);
        }
        let bs = self.sb.block_size as u64;
        let mut done = 0usize;
        let runs = self.data_runs(ino, offset / bs, (offset + n as u64).div_ceil(bs))?;
        while done < n {
            let pos = offset + done as u64;
            let l = pos / bs;
            let in_blk = pos % bs;
            // The run holding logical block l: (physical start, blocks left, zeros).
            let (phys, count, zero) = match find_run(&runs, l) {
                Some((r, _)) => (
                    r.physical + (l - r.logical),
                    r.logical + r.len - l,
                    r.unwritten,
                ),
                None => {
                    let next = runs
                        .get(runs.partition_point(|r| r.logical + r.len <= l))
                        .map(|r| r.logical);
                    (0, next.map(|nx| nx - l).unwrap_or(u64::MAX), true)
                }
            };
            let avail = count.saturating_mul(bs).saturating_sub(in_blk);
            let take = (avail.min((n - done) as u64)) as usize;
            let dst = &mut buf[done..done + take];
            if zero || phys == 0 {
                dst.fill(0);
            } else {
                self.dev.read_exact_at(phys * bs + in_blk, dst)?;
            }
            done += take;
        }
        Ok(n)
    }

    fn load_dir(&self, dir: u64) -> io::Result<Arc<DirCache>> {
        if let Some(d) = self.dirs.get(&dir) {
            return Ok(d);
        }
        let ino = self.inode(dir)?;
        if ino.kind() != Some(NodeKind::Dir) {
            return Err(io::Error::from_raw_os_error(libc::ENOTDIR));
        }
        self.check_readable(&ino)?;
        let edits = self.fc.as_ref().and_then(|f| f.dirs.get(&dir));
        let mut raw = Vec::new();
        if edits.is_some_and(|e| e.fresh) {
            // Made by a fast commit: replay gives it a block of its own, so what the
            // volume holds at its blocks is not its content.
        } else if ino.flags & inode::FL_INLINE_DATA != 0 {
            let d = self.inline_data(&ino)?;
            if d.len() > 4 {
                dir::parse_block(&d[4..60.min(d.len())], &mut raw)?;
                if d.len() > 60 {
                    dir::parse_block(&d[60..], &mut raw)?;
                }
            }
        } else {
            if ino.size > MAX_DIR_BYTES {
                return Err(corrupt(format!(
                    "directory {dir} claims {} bytes",
                    ino.size
                )));
            }
            let bs = self.sb.block_size as usize;
            let mut b = vec![0u8; bs];
            let mut off = 0;
            while off < ino.size {
                let n = self.read_data(&ino, off, &mut b)?;
                if n < bs {
                    b[n..].fill(0);
                }
                if let Err(e) = dir::parse_block(&b[..n], &mut raw) {
                    tracing::warn!(
                        "{}: directory {dir} block at {off}: {e}; skipped",
                        self.label
                    );
                    self.left_out.add(1);
                }
                off += bs as u64;
            }
        }
        let filetype = self.sb.incompat & feat::INCOMPAT_FILETYPE != 0;
        let mut entries = Vec::with_capacity(raw.len());
        let mut index = HashMap::with_capacity(raw.len());
        for r in raw {
            let kind = match (filetype, dir::kind_of(r.ftype)) {
                (true, Some(k)) => k,
                _ => match self.inode(r.ino as u64).map(|i| i.kind()) {
                    Ok(Some(k)) => k,
                    got => {
                        tracing::warn!(
                            "{}: directory {dir}: entry {:?} names inode {}, which {}; skipped",
                            self.label,
                            String::from_utf8_lossy(&r.name),
                            r.ino,
                            match got {
                                Err(e) => format!("cannot be read ({e})"),
                                Ok(_) => "is not in use (no file type)".to_string(),
                            }
                        );
                        self.left_out.add(1);
                        continue;
                    }
                },
            };
            if index.insert(r.name.clone(), r.ino as u64).is_none() {
                entries.push(DirEntry {
                    name: r.name,
                    ino: r.ino as u64,
                    kind,
                });
            }
        }
        if let Some(e) = edits {
            self.apply_edits(e, &mut entries, &mut index);
        }
        let d = Arc::new(DirCache {
            entries: Arc::new(entries),
            index,
        });
        self.dirs.put(dir, d.clone());
        Ok(d)
    }

    /// Lays a fast commit's name changes over a directory's listing, in their order:
    /// a name is added only where it is absent (the kernel's link answers EEXIST),
    /// and the entries keep the volume's order with the new names after them.
    fn apply_edits(
        &self,
        edits: &fast_commit::DirEdits,
        entries: &mut Vec<DirEntry>,
        index: &mut HashMap<Vec<u8>, u64>,
    ) {
        let mut added: Vec<&[u8]> = Vec::new();
        for (name, op) in &edits.ops {
            if name.is_empty()
                || name.contains(&b'/')
                || name.contains(&0)
                || name == b"."
                || name == b".."
            {
                continue;
            }
            match op {
                Some(ino) => {
                    if !index.contains_key(name) {
                        index.insert(name.clone(), *ino);
                        added.push(name);
                    }
                }
                None => {
                    index.remove(name);
                }
            }
        }
        let mut shown: std::collections::HashSet<Vec<u8>> = std::collections::HashSet::new();
        entries.retain(|d| index.get(&d.name) == Some(&d.ino) && shown.insert(d.name.clone()));
        for name in added {
            if shown.contains(name) {
                continue;
            }
            let Some(&ino) = index.get(name) else {
                continue;
            };
            match self.inode(ino).ok().and_then(|i| i.kind()) {
                Some(kind) => {
                    shown.insert(name.to_vec());
                    entries.push(DirEntry {
                        name: name.to_vec(),
                        ino,
                        kind,
                    });
                }
                None => {
                    tracing::warn!(
                        "{}: fast commit names inode {ino}, which cannot be read; left out",
                        self.label
                    );
                    index.remove(name);
                }
            }
        }
    }
}

impl FsTree for ExtFs {
    fn root(&self) -> u64 {
        ROOT
    }

    fn flags(&self, ino: u64) -> io::Result<Option<u32>> {
        let i = self.inode(ino)?;
        let mut f = i.flags & inode::FL_USER_VISIBLE;
        if i.kind() != Some(NodeKind::Dir) {
            f &= !inode::FL_PROJINHERIT;
        }
        Ok(Some(f))
    }

    fn stat(&self, ino: u64) -> io::Result<Stat> {
        let i = self.inode(ino)?;
        let kind = i
            .kind()
            .ok_or_else(|| corrupt(format!("inode {ino} has an unknown type")))?;
        let rdev = if matches!(kind, NodeKind::CharDev | NodeKind::BlockDev) {
            i.rdev()
        } else {
            0
        };
        Ok(Stat {
            ino,
            kind,
            perm: i.mode & 0o7777,
            nlink: (i.links as u32).max(1),
            uid: i.uid,
            gid: i.gid,
            size: i.size,
            blocks: i
                .blocks
                .saturating_sub(self.cleanup().truncated.get(&ino).copied().unwrap_or(0)),
            atime: i.atime,
            mtime: i.mtime,
            ctime: i.ctime,
            crtime: i.crtime,
            rdev,
        })
    }

    fn read_dir(&self, ino: u64) -> io::Result<Arc<Vec<DirEntry>>> {
        Ok(self.load_dir(ino)?.entries.clone())
    }

    fn lookup(&self, dir: u64, name: &[u8]) -> io::Result<Option<u64>> {
        Ok(self.load_dir(dir)?.index.get(name).copied())
    }

    fn read(&self, ino: u64, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let i = self.inode(ino)?;
        if i.kind() != Some(NodeKind::File) {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        self.check_readable(&i)?;
        self.read_data(&i, offset, buf)
    }

    /// Holes are the blocks no extent or block pointer maps, and unwritten extents
    /// (as the kernel answers them with nothing cached). Block-mapped files are
    /// mapped a window at a time; extent-mapped ones have all their runs at hand.
    fn seek(&self, ino: u64, offset: u64, data: bool) -> io::Result<Option<u64>> {
        let i = self.inode(ino)?;
        if i.kind() != Some(NodeKind::File) {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        if offset >= i.size {
            return Ok(None);
        }
        self.check_readable(&i)?;
        if i.flags & inode::FL_INLINE_DATA != 0 {
            return Ok(Some(if data { offset } else { i.size }));
        }
        let bs = self.sb.block_size as u64;
        let (first, end) = (offset / bs, i.size.div_ceil(bs));
        let at_block = |b: u64| Some((b * bs).max(offset).min(i.size));
        let mut at = first;
        while at < end {
            let stop = if i.flags & inode::FL_EXTENTS != 0 {
                end
            } else {
                at.saturating_add(SEEK_WINDOW).min(end)
            };
            let runs = self.data_runs(&i, at, stop)?;
            let mut written: Vec<&Run> = runs
                .iter()
                .filter(|r| {
                    !r.unwritten
                        && r.len > 0
                        && r.logical.saturating_add(r.len) > at
                        && r.logical < stop
                })
                .collect();
            written.sort_by_key(|r| r.logical);
            if data {
                if let Some(r) = written.first() {
                    return Ok(at_block(r.logical.max(at)));
                }
            } else {
                // The first block from `at` that no written run covers.
                let mut hole = at;
                for r in &written {
                    if r.logical > hole {
                        break;
                    }
                    hole = hole.max(r.logical.saturating_add(r.len));
                }
                if hole < stop {
                    return Ok(at_block(hole));
                }
            }
            at = stop;
        }
        Ok(if data { None } else { Some(i.size) })
    }

    /// Maps the range through the file's extents or block pointers and hands the
    /// physical ranges to the device in one batch.
    fn prefetch(&self, ino: u64, offset: u64, len: u64) {
        let Ok(i) = self.inode(ino) else { return };
        if i.kind() != Some(NodeKind::File)
            || i.flags & inode::FL_INLINE_DATA != 0
            || offset >= i.size
        {
            return;
        }
        let end = offset.saturating_add(len).min(i.size);
        let bs = self.sb.block_size as u64;
        let Ok(runs) = self.data_runs(&i, offset / bs, end.div_ceil(bs)) else {
            return;
        };
        let spans = crate::ntfs_ext::run_spans(
            &runs,
            |r| (r.logical, r.len, (!r.unwritten).then_some(r.physical)),
            offset,
            end,
            bs,
        );
        crate::ntfs_ext::prefetch_spans(&*self.dev, spans, 64);
    }

    fn read_link(&self, ino: u64) -> io::Result<Vec<u8>> {
        let i = self.inode(ino)?;
        if i.kind() != Some(NodeKind::Symlink) {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        self.check_readable(&i)?;
        if i.size > 65536 {
            return Err(corrupt(format!("symlink {ino} is {} bytes long", i.size)));
        }
        let ea_blocks = if i.file_acl != 0 {
            self.sb.block_size as u64 / 512
        } else {
            0
        };
        let fast = i.flags & (inode::FL_INLINE_DATA | inode::FL_EXTENTS) == 0
            && i.size < 60
            && i.blocks.saturating_sub(ea_blocks) == 0;
        if fast {
            return Ok(i.i_block()[..i.size as usize].to_vec());
        }
        let mut b = vec![0u8; i.size as usize];
        let n = self.read_data(&i, 0, &mut b)?;
        b.truncate(n);
        Ok(b)
    }

    fn xattrs(&self, ino: u64) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let i = self.inode(ino)?;
        let mut out = Vec::new();
        for e in self.raw_xattrs(&i)? {
            if e.name == b"system.data" {
                continue; // inline-data storage, not a user-visible attribute
            }
            let mut v = match e.value {
                xattr::Value::Bytes(b) => b,
                xattr::Value::Inode(vi, len) => {
                    let vino = self.inode(vi as u64)?;
                    let mut b = vec![0u8; (len as usize).min(1 << 20)];
                    let n = self.read_data(&vino, 0, &mut b)?;
                    b.truncate(n);
                    b
                }
            };
            if e.name.starts_with(b"system.posix_acl_") {
                match xattr::acl_to_vfs(&v) {
                    Some(c) => v = c,
                    None => continue,
                }
            }
            out.push((e.name, v));
        }
        Ok(out)
    }

    fn statfs(&self) -> StatFs {
        *self.statfs.get_or_init(|| self.count_statfs())
    }
}
