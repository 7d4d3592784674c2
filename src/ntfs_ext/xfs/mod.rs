//! XFS (v4 and v5) file trees: the default filesystem of RHEL-family servers.
//!
//! One superblock describes allocation groups (AGs); an inode number encodes where the
//! inode lies (AG, block, slot), so inodes are found without the inode btrees. A
//! file's blocks come from its data fork: extent records in the inode, or a block-map
//! btree rooted there. Directories are read from their data blocks (every entry is in
//! them; the hash-ordered leaf and node blocks are only an index), symlinks from the
//! inode or their blocks, extended attributes from shortform forks and leaf blocks.
//! All big-endian. A volume that was not cleanly unmounted (a snapshot of a running
//! server) is shown after replaying its log in memory (`log.rs`), as the kernel would
//! mount it.

mod alloc;
mod log;
mod refcount;
mod unlinked;

use std::io;
use std::sync::{Arc, OnceLock};

use crate::cache::{Weigh, WeightedLru};
use crate::ntfs_ext::tree::{
    DirEntry, FsTree, NodeKind, Stat, StatFs, Timespec, TreeOptions, MAX_INO,
};
use crate::ntfs_ext::{corrupt, linux_dev, run_spans, seek_runs, valid_name, Listing};
use crate::readat::ReadAt;

const SB_MAGIC: u32 = 0x5846_5342; // "XFSB"
const INODE_MAGIC: u16 = 0x494E; // "IN"

pub use alloc::free_ranges;
const FMT_DEV: u8 = 0;
const FMT_LOCAL: u8 = 1;
const FMT_EXTENTS: u8 = 2;
const FMT_BTREE: u8 = 3;
const INCOMPAT_FTYPE: u32 = 0x1;
/// Incompat features whose on-disk effects this reader handles (ftype, sparse inode
/// chunks, meta_uuid, bigtime, needsrepair, large extent counts, exchange-range,
/// parent pointers are extra attributes).
const INCOMPAT_KNOWN: u32 = 0x1 | 0x2 | 0x4 | 0x8 | 0x10 | 0x20 | 0x40 | 0x80;
const FLAG2_BIGTIME: u64 = 0x8;
const FLAG2_NREXT64: u64 = 0x10;
/// Directory data lives below this byte offset of the directory; leaf and free-index
/// blocks above it.
const DIR_LEAF_OFFSET: u64 = 32 << 30;
/// Most extents one file's map may hold (32 bytes each in memory).
const MAX_EXTENTS: usize = 1 << 21;
/// Most block-map btree blocks one walk visits.
const MAX_BTREE_BLOCKS: usize = 1 << 16;
/// Most bytes of directory data read for one listing.
const MAX_DIR_BYTES: u64 = 4 << 30;
/// Most bytes of attribute-fork blocks read for one inode.
const MAX_ATTR_BYTES: u64 = 16 << 20;
const INODE_CACHE: usize = 2 << 20;
const DIR_CACHE: usize = 16 << 20;
const EXTENT_CACHE: usize = 4 << 20;

fn be16(b: &[u8], o: usize) -> u16 {
    u16::from_be_bytes([b[o], b[o + 1]])
}
fn be32(b: &[u8], o: usize) -> u32 {
    u32::from_be_bytes(b[o..o + 4].try_into().unwrap())
}
fn be64(b: &[u8], o: usize) -> u64 {
    u64::from_be_bytes(b[o..o + 8].try_into().unwrap())
}

/// The superblock fields the reader uses, checked against each other.
#[derive(Debug, Clone)]
struct Sb {
    bs: u64,
    dblocks: u64,
    agblocks: u64,
    agcount: u64,
    agblklog: u32,
    inopblog: u32,
    isize: u64,
    rootino: u64,
    dirblk: u64,
    v5: bool,
    ftype: bool,
    logstart: u64,
    logblocks: u64,
    icount: u64,
    ifree: u64,
    fdblocks: u64,
    /// Most inodes imaxpct allows (0: no cap).
    maxicount: u64,
    sectsize: u64,
    rmapbt: bool,
    /// Blocks may be shared between files (a refcount btree per AG).
    reflink: bool,
    /// Inode chunks may be partly allocated (sparse inodes).
    spinodes: bool,
    uuid: [u8; 16],
    /// The UUID metadata is stamped with (differs from `uuid` after a UUID change).
    meta_uuid: [u8; 16],
}

impl Sb {
    fn parse(b: &[u8]) -> Result<Sb, String> {
        if be32(b, 0) != SB_MAGIC {
            return Err("no XFS superblock (bad magic)".into());
        }
        let version = be16(b, 0x64);
        let v5 = match version & 0xF {
            4 => false,
            5 => true,
            v => return Err(format!("superblock version {v} is not 4 or 5")),
        };
        if !v5 && version & 0x2000 == 0 {
            return Err("version 1 directories are not supported".into());
        }
        let bs = be32(b, 0x4) as u64;
        let blocklog = b[0x78] as u32;
        if !(9..=16).contains(&blocklog) || 1u64 << blocklog != bs {
            return Err(format!("block size {bs} (log {blocklog})"));
        }
        let isize = be16(b, 0x68) as u64;
        let inodelog = b[0x7A] as u32;
        if !(8..=11).contains(&inodelog) || 1u64 << inodelog != isize || isize > bs {
            return Err(format!("inode size {isize} (log {inodelog})"));
        }
        let inopblog = b[0x7B] as u32;
        if inopblog != blocklog - inodelog || be16(b, 0x6A) as u64 != bs / isize {
            return Err("inodes per block disagree with the sizes".into());
        }
        let agblocks = be32(b, 0x54) as u64;
        let agcount = be32(b, 0x58) as u64;
        let agblklog = b[0x7C] as u32;
        if agblocks < 2
            || agcount == 0
            || agblklog > 31
            || 1u64 << agblklog < agblocks
            || 1u64 << agblklog >= agblocks * 2
        {
            return Err(format!(
                "allocation groups: {agcount} of {agblocks} blocks (log {agblklog})"
            ));
        }
        let dblocks = be64(b, 0x8);
        if dblocks > agcount * agblocks || dblocks.checked_mul(bs).is_none() {
            return Err(format!(
                "{dblocks} blocks do not fit {agcount} groups of {agblocks}"
            ));
        }
        let dirblklog = b[0xC0] as u32;
        if blocklog + dirblklog > 16 {
            return Err(format!("directory block size 2^{}", blocklog + dirblklog));
        }
        let incompat = if v5 { be32(b, 0xD8) } else { 0 };
        let ftype = if v5 {
            incompat & INCOMPAT_FTYPE != 0
        } else {
            be32(b, 0xC8) & 0x200 != 0
        };
        // Inodes come in chunks of 64: imaxpct of the blocks, in whole chunks.
        let chunk_blocks = (64u64 >> inopblog).max(1);
        let maxicount = (dblocks.saturating_mul(b[0x7F] as u64) / 100 / chunk_blocks
            * chunk_blocks)
            .checked_shl(inopblog)
            .unwrap_or(0);
        let sectsize = be16(b, 0x66) as u64;
        if !sectsize.is_power_of_two() || !(512..=32768).contains(&sectsize) || sectsize > bs {
            return Err(format!("sector size {sectsize}"));
        }
        let mut uuid = [0u8; 16];
        uuid.copy_from_slice(&b[0x20..0x30]);
        let mut meta_uuid = uuid;
        if v5 && incompat & 0x4 != 0 {
            meta_uuid.copy_from_slice(&b[0xF8..0x108]);
        }
        Ok(Sb {
            uuid,
            meta_uuid,
            sectsize,
            rmapbt: v5 && be32(b, 0xD4) & 0x2 != 0,
            reflink: v5 && be32(b, 0xD4) & 0x4 != 0,
            spinodes: incompat & 0x2 != 0,
            maxicount,
            bs,
            dblocks,
            agblocks,
            agcount,
            agblklog,
            inopblog,
            isize,
            rootino: be64(b, 0x38),
            dirblk: bs << dirblklog,
            v5,
            ftype,
            logstart: be64(b, 0x30),
            logblocks: be32(b, 0x60) as u64,
            icount: be64(b, 0x80),
            ifree: be64(b, 0x88),
            fdblocks: be64(b, 0x90),
        })
    }

    /// Byte offset on the volume of `len` blocks from filesystem block `fsb` (AG
    /// number in the high bits): all inside one AG, as XFS allocates them.
    fn fsb_bytes(&self, fsb: u64, len: u64) -> io::Result<u64> {
        let ag = fsb >> self.agblklog;
        let agbno = fsb & ((1u64 << self.agblklog) - 1);
        if ag >= self.agcount || agbno.saturating_add(len) > self.agblocks {
            return Err(corrupt(format!(
                "block {fsb:#x} (+{len}) is outside the allocation groups"
            )));
        }
        Ok((ag * self.agblocks + agbno) * self.bs)
    }

    /// Byte offset of inode `ino`.
    fn inode_bytes(&self, ino: u64) -> io::Result<u64> {
        let bits = self.agblklog + self.inopblog;
        let (ag, agino) = (ino >> bits, ino & ((1u64 << bits) - 1));
        let (agbno, slot) = (
            agino >> self.inopblog,
            agino & ((1u64 << self.inopblog) - 1),
        );
        if ag >= self.agcount || agbno >= self.agblocks {
            return Err(corrupt(format!("inode {ino} is outside the volume")));
        }
        Ok((ag * self.agblocks + agbno) * self.bs + slot * self.isize)
    }
}

/// Whether `b`, read at byte `at` of AG `ag`, heads a short-form btree block of type
/// `magic` at `level`: on v5 also its own address, the volume's UUID and its AG.
fn sbtree_block_ok(b: &[u8], sb: &Sb, ag: u64, at: u64, magic: u32, level: u32) -> bool {
    be32(b, 0) == magic
        && be16(b, 4) as u32 == level
        && (!sb.v5
            || be64(b, 16) == at / 512 && b[32..48] == sb.meta_uuid && be32(b, 48) as u64 == ag)
}

/// XFS's CRC: crc32c of the block with its CRC field (at `off`) zeroed, stored
/// little-endian.
fn crc_ok(b: &[u8], off: usize) -> bool {
    let mut c = b.to_vec();
    c[off..off + 4].fill(0);
    crc32c::crc32c(&c) == u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
}

/// The primary superblock, checked, and its raw sector.
fn read_sb(dev: &dyn ReadAt, label: &str) -> io::Result<(Sb, [u8; 512])> {
    let mut b = [0u8; 512];
    dev.read_exact_at(0, &mut b)?;
    let sb = Sb::parse(&b).map_err(|e| corrupt(format!("{label}: XFS: {e}")))?;
    Ok((sb, b))
}

/// Block sizes and allocation-group counts whose secondary superblocks
/// [`open_backup`] looks for: mkfs.xfs's own choices (ceil(blocks / count) blocks
/// per group) over the whole device.
const BACKUP_BLOCK_SIZES: [u64; 4] = [4096, 1024, 2048, 512];
const BACKUP_AG_COUNTS: std::ops::RangeInclusive<u64> = 2..=256;

/// An XFS volume whose primary superblock (allocation group 0's) is unreadable (a
/// failing disk's backup did not give it) or damaged (`why`), read through
/// allocation group 1's copy, as xfs_repair finds it: placed where mkfs.xfs puts
/// group 1 on a device of this size, and checked by its magic, its own geometry,
/// group 1's place, and (v5) its checksum. Its free counters are as old as the
/// copy. `None` when none is found, or when the first sector reads and is no XFS
/// superblock (up to a thousand places are looked at: not for every volume whose
/// start is merely blank).
pub fn open_backup(
    dev: &Arc<dyn ReadAt>,
    opts: &TreeOptions,
    why: &str,
) -> Option<io::Result<XfsFs>> {
    // Not over zeros: the search tries hundreds of places, too many for every blank
    // volume.
    if !crate::ntfs_ext::start_gone_or_ours(&**dev, |b| be32(b, 0) == SB_MAGIC, false) {
        return None;
    }
    let size = dev.size();
    for bs in BACKUP_BLOCK_SIZES {
        let blocks = size / bs;
        for count in BACKUP_AG_COUNTS {
            let agblocks = blocks.div_ceil(count);
            let Some(at) = agblocks
                .checked_mul(bs)
                .filter(|&a| a > 0 && a + 512 <= size)
            else {
                continue;
            };
            let mut b = [0u8; 512];
            if dev.read_exact_at(at, &mut b).is_err() {
                continue;
            }
            let Ok(sb) = Sb::parse(&b) else {
                continue;
            };
            if sb.bs != bs || sb.agblocks != agblocks || sb.agcount < 2 {
                continue;
            }
            let mut sector = vec![0u8; sb.sectsize as usize];
            if dev.read_exact_at(at, &mut sector).is_err() || sb.v5 && !crc_ok(&sector, 0xE0) {
                continue;
            }
            tracing::warn!(
                "{}: XFS primary superblock unusable ({why}); read through allocation group 1's copy at byte {at} (its free-space counters may be older than the volume)",
                opts.label
            );
            let patched = crate::readat::Patched::new(dev.clone(), vec![(0, sector)]);
            return Some(XfsFs::open(Arc::new(patched), opts));
        }
    }
    None
}

/// Whether the volume starts with an XFS superblock.
pub fn probe(dev: &dyn ReadAt) -> io::Result<bool> {
    let mut b = [0u8; 4];
    if dev.size() < 512 {
        return Ok(false);
    }
    dev.read_exact_at(0, &mut b)?;
    Ok(u32::from_be_bytes(b) == SB_MAGIC)
}

/// A mapped run of a file: `len` blocks from logical block `off` at filesystem block
/// `fsb`; unwritten (preallocated) runs read as zeros.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Extent {
    off: u64,
    fsb: u64,
    len: u64,
    unwritten: bool,
}

impl Extent {
    /// Unpacks a 128-bit extent record.
    fn parse(r: &[u8]) -> Extent {
        let (l0, l1) = (be64(r, 0), be64(r, 8));
        Extent {
            unwritten: l0 >> 63 != 0,
            off: (l0 & !(1u64 << 63)) >> 9,
            fsb: ((l0 & 0x1FF) << 43) | (l1 >> 21),
            len: l1 & 0x1F_FFFF,
        }
    }
}

/// One parsed inode.
#[derive(Debug)]
struct Inode {
    ino: u64,
    mode: u16,
    format: u8,
    uid: u32,
    gid: u32,
    nlink: u32,
    times: [Timespec; 4], // atime, mtime, ctime, crtime
    size: u64,
    nblocks: u64,
    nextents: u64,
    anextents: u64,
    aformat: u8,
    flags: u16,
    flags2: u64,
    data: Vec<u8>,
    attr: Vec<u8>,
}

impl Weigh for Arc<Inode> {
    fn weight(&self) -> usize {
        self.data.len() + self.attr.len() + 200
    }
}

impl Inode {
    fn kind(&self) -> Option<NodeKind> {
        NodeKind::from_mode(self.mode)
    }

    /// File size, refused when negative or past what XFS can address.
    fn size(&self) -> io::Result<u64> {
        if self.size > i64::MAX as u64 {
            return Err(corrupt(format!(
                "inode {}: size {:#x}",
                self.ino, self.size
            )));
        }
        Ok(self.size)
    }
}

/// A timestamp: seconds and nanoseconds, or with bigtime nanoseconds since 1901.
fn xfs_time(b: &[u8], o: usize, bigtime: bool) -> Timespec {
    if bigtime {
        let ns = be64(b, o);
        Timespec {
            secs: (ns / 1_000_000_000) as i64 - (1i64 << 31),
            nsecs: (ns % 1_000_000_000) as u32,
        }
    } else {
        Timespec {
            secs: be32(b, o) as i32 as i64,
            nsecs: be32(b, o + 4).min(999_999_999),
        }
    }
}

/// An attribute as stored: namespace flags, name, value.
type RawAttr = (u8, Vec<u8>, Vec<u8>);
/// A directory entry as stored: name, inode number, file type byte (with ftype).
type RawEntry = (Vec<u8>, u64, Option<u8>);

struct ExtentMap(Vec<Extent>);

impl Weigh for Arc<ExtentMap> {
    fn weight(&self) -> usize {
        self.0.len() * 32 + 64
    }
}

/// An open XFS volume.
pub struct XfsFs {
    dev: Arc<dyn ReadAt>,
    sb: Sb,
    label: String,
    /// Where listings count entries left out as damaged.
    left_out: crate::ntfs_ext::LeftOut,
    inodes: WeightedLru<u64, Arc<Inode>>,
    dirs: WeightedLru<u64, Arc<Listing>>,
    maps: WeightedLru<u64, Arc<ExtentMap>>,
    bad_crc: OnceLock<()>,
    statfs: OnceLock<StatFs>,
    /// The log was replayed: free counts come from the AG headers, as the kernel
    /// recounts them after recovery.
    replayed: bool,
}

/// Says whether the volume holds an XFS whose log is on another device (`mkfs.xfs -l
/// logdev=`), so the mount hands it the point's other volumes to find it among.
pub fn has_external_log(dev: &dyn ReadAt) -> bool {
    let mut b = [0u8; 0x40];
    dev.read_exact_at(0, &mut b).is_ok() && &b[0..4] == b"XFSB" && be64(&b, 0x30) == 0
}

/// The external log device of `sb` among `members`: one large enough whose first
/// blocks hold a log record header (magic, version) naming this filesystem's UUID.
fn external_log(sb: &Sb, members: &[Arc<dyn ReadAt>]) -> Option<Arc<dyn ReadAt>> {
    let need = sb.logblocks.checked_mul(sb.bs)?;
    members
        .iter()
        .find(|m| {
            if m.size() < need {
                return false;
            }
            // Records may wrap past the ring's end: a header within the first
            // blocks, not necessarily at block 0.
            let mut b = vec![0u8; 64 * 512];
            let n = (m.size().min(b.len() as u64)) as usize;
            if m.read_exact_at(0, &mut b[..n]).is_err() {
                return false;
            }
            b[..n].chunks_exact(512).any(|h| {
                be32(h, 0) == 0xFEED_BABE && matches!(be32(h, 8), 1 | 2) && h[304..320] == sb.uuid
            })
        })
        .cloned()
}

impl XfsFs {
    /// Opens the volume from its primary superblock, replaying its log in memory
    /// (an external log found among `opts.members`) unless told not to; the root
    /// inode must parse.
    pub fn open(dev: Arc<dyn ReadAt>, opts: &TreeOptions) -> io::Result<XfsFs> {
        let label = &opts.label;
        let (sb, raw) = read_sb(&*dev, label)?;
        if sb.v5 {
            let incompat = be32(&raw, 0xD8);
            if incompat & !INCOMPAT_KNOWN != 0 {
                tracing::warn!(
                    "{label}: XFS has unknown incompatible features {:#x}; showing what can be read",
                    incompat & !INCOMPAT_KNOWN
                );
            }
        }
        tracing::debug!("{label}: {sb:?}");
        let mut fs = XfsFs::with(dev.clone(), sb, opts, false);
        let ext = if fs.sb.logstart == 0 {
            external_log(&fs.sb, &opts.members.0)
        } else {
            None
        };
        if fs.sb.logstart == 0 && ext.is_none() {
            tracing::warn!(
                "{label}: XFS log is on another device, not found in this point; shown as recorded (no replay)"
            );
        } else if opts.no_replay {
            // Only whether the log is dirty: nothing is replayed.
            match log::needs_recovery(&*dev, &fs.sb, &fs.sb.uuid, ext.as_deref()) {
                Ok(false) => {}
                Ok(true) => {
                    tracing::warn!("{label}: XFS log needs recovery; shown as recorded (no replay)")
                }
                Err(e) => tracing::warn!("{label}: XFS log unreadable ({e}); shown as recorded"),
            }
        } else {
            match log::replay(
                dev,
                ext.as_deref(),
                &fs.sb,
                &fs.sb.uuid,
                &fs.sb.meta_uuid,
                label,
            ) {
                Ok(None) => {}
                Ok(Some((replayed, s))) => {
                    let dev: Arc<dyn ReadAt> = Arc::new(replayed);
                    let (sb, _) = read_sb(&*dev, label)?;
                    fs = XfsFs::with(dev, sb, opts, true);
                    tracing::warn!(
                        "{label}: not cleanly unmounted; replayed {} XFS log transaction(s) ({} buffer(s), {} inode(s)) in memory",
                        s.transactions,
                        s.buffers,
                        s.inodes
                    );
                    if s.mapping_intents > 0 || s.skipped > 0 {
                        tracing::warn!(
                            "{label}: {} unfinished mapping intent(s) not replayed and {} logged inode(s) left as recorded; those files may show their older state",
                            s.mapping_intents,
                            s.skipped
                        );
                    }
                }
                Err(e) => tracing::warn!("{label}: XFS log replay failed ({e}); shown as recorded"),
            }
        }
        if fs.sb.rootino > MAX_INO {
            return Err(corrupt(format!(
                "{}: XFS root inode number too large",
                fs.label
            )));
        }
        let root = fs.inode(fs.sb.rootino)?;
        if root.kind() != Some(NodeKind::Dir) {
            return Err(corrupt(format!(
                "{}: XFS root inode is not a directory",
                fs.label
            )));
        }
        Ok(fs)
    }

    fn with(dev: Arc<dyn ReadAt>, sb: Sb, opts: &TreeOptions, replayed: bool) -> XfsFs {
        let budget = || opts.budget.clone();
        XfsFs {
            dev,
            sb,
            label: opts.label.clone(),
            left_out: opts.left_out.clone(),
            inodes: WeightedLru::with_budget(INODE_CACHE, budget()),
            dirs: WeightedLru::with_budget(DIR_CACHE, budget()),
            maps: WeightedLru::with_budget(EXTENT_CACHE, budget()),
            bad_crc: OnceLock::new(),
            statfs: OnceLock::new(),
            replayed,
        }
    }

    fn inode(&self, ino: u64) -> io::Result<Arc<Inode>> {
        if let Some(i) = self.inodes.get(&ino) {
            return Ok(i);
        }
        let at = self.sb.inode_bytes(ino)?;
        let mut b = vec![0u8; self.sb.isize as usize];
        self.dev.read_exact_at(at, &mut b)?;
        let i = Arc::new(self.parse_inode(ino, &b)?);
        self.inodes.put(ino, i.clone());
        Ok(i)
    }

    fn parse_inode(&self, ino: u64, b: &[u8]) -> io::Result<Inode> {
        let bad = |what: &str| corrupt(format!("{}: inode {ino}: {what}", self.label));
        if be16(b, 0) != INODE_MAGIC {
            return Err(bad("bad magic"));
        }
        let version = b[4];
        let lit = match (version, self.sb.v5) {
            (3, true) => 176,
            (1 | 2, false) => 100,
            _ => return Err(bad(&format!("version {version}"))),
        };
        if version == 3 {
            if be64(b, 0x98) != ino {
                return Err(bad(&format!("records inode number {}", be64(b, 0x98))));
            }
            if !crc_ok(b, 0x64) && self.bad_crc.set(()).is_ok() {
                tracing::warn!(
                    "{}: inode {ino} fails its checksum; reading on (further mismatches not logged)",
                    self.label
                );
            }
        }
        let flags2 = if version == 3 { be64(b, 0x78) } else { 0 };
        let (nextents, anextents) = if flags2 & FLAG2_NREXT64 != 0 {
            (be64(b, 0x18), be32(b, 0x4C) as u64)
        } else {
            (be32(b, 0x4C) as u64, be16(b, 0x50) as u64)
        };
        let forkoff = b[0x52] as usize * 8;
        let isize = b.len();
        if lit + forkoff > isize {
            return Err(bad("attribute fork offset past the inode"));
        }
        let data_end = if forkoff == 0 { isize } else { lit + forkoff };
        let bigtime = flags2 & FLAG2_BIGTIME != 0;
        let crtime = if version == 3 {
            xfs_time(b, 0x90, bigtime)
        } else {
            Timespec::default()
        };
        Ok(Inode {
            ino,
            mode: be16(b, 2),
            format: b[5],
            uid: be32(b, 0x8),
            gid: be32(b, 0xC),
            nlink: if version == 1 {
                be16(b, 0x6) as u32
            } else {
                be32(b, 0x10)
            },
            times: [
                xfs_time(b, 0x20, bigtime),
                xfs_time(b, 0x28, bigtime),
                xfs_time(b, 0x30, bigtime),
                crtime,
            ],
            size: be64(b, 0x38),
            nblocks: be64(b, 0x40),
            nextents,
            anextents,
            aformat: b[0x53],
            flags: be16(b, 0x5A),
            flags2,
            data: b[lit..data_end].to_vec(),
            attr: if forkoff == 0 {
                Vec::new()
            } else {
                b[data_end..].to_vec()
            },
        })
    }

    /// The data fork's extents, sorted and checked not to overlap.
    fn extents(&self, i: &Inode) -> io::Result<Arc<ExtentMap>> {
        if let Some(m) = self.maps.get(&i.ino) {
            return Ok(m);
        }
        let v = self.fork_extents(i.ino, &i.data, i.format, i.nextents)?;
        let m = Arc::new(ExtentMap(v));
        self.maps.put(i.ino, m.clone());
        Ok(m)
    }

    /// Extents of one fork (data or attribute) in extents or btree format.
    fn fork_extents(&self, ino: u64, fork: &[u8], format: u8, n: u64) -> io::Result<Vec<Extent>> {
        let bad = |what: String| corrupt(format!("{}: inode {ino}: {what}", self.label));
        let mut out = Vec::new();
        match format {
            FMT_EXTENTS => {
                if n.saturating_mul(16) > fork.len() as u64 {
                    return Err(bad(format!("{n} extents do not fit the fork")));
                }
                out.extend(fork.chunks_exact(16).take(n as usize).map(Extent::parse));
            }
            FMT_BTREE => {
                if fork.len() < 4 + 16 {
                    return Err(bad("block map root too small".into()));
                }
                let (level, nrecs) = (be16(fork, 0) as u32, be16(fork, 2) as usize);
                let maxrecs = (fork.len() - 4) / 16;
                if level == 0 || level > 9 || nrecs == 0 || nrecs > maxrecs {
                    return Err(bad(format!(
                        "block map root level {level}, {nrecs} records"
                    )));
                }
                let mut visited = 0usize;
                for k in 0..nrecs {
                    let ptr = be64(fork, 4 + maxrecs * 8 + k * 8);
                    self.bmbt_walk(ino, ptr, level - 1, &mut out, &mut visited)?;
                }
            }
            f => return Err(bad(format!("fork format {f} has no extents"))),
        }
        out.retain(|e| e.len > 0);
        let mut end = 0u64;
        for e in &out {
            if e.off < end {
                return Err(bad(format!("extents overlap at block {}", e.off)));
            }
            end = e.off.saturating_add(e.len);
        }
        Ok(out)
    }

    fn bmbt_walk(
        &self,
        ino: u64,
        fsb: u64,
        level: u32,
        out: &mut Vec<Extent>,
        visited: &mut usize,
    ) -> io::Result<()> {
        let bad = |what: String| corrupt(format!("{}: inode {ino}: {what}", self.label));
        *visited += 1;
        if *visited > MAX_BTREE_BLOCKS {
            return Err(bad("block map btree too large".into()));
        }
        let mut b = vec![0u8; self.sb.bs as usize];
        self.dev.read_exact_at(self.sb.fsb_bytes(fsb, 1)?, &mut b)?;
        let (magic, hdr) = if self.sb.v5 {
            (0x424D_4133, 72) // "BMA3"
        } else {
            (0x424D_4150, 24) // "BMAP"
        };
        if be32(&b, 0) != magic || be16(&b, 4) as u32 != level {
            return Err(bad(format!(
                "block map block {fsb:#x} is not at level {level}"
            )));
        }
        let nrecs = be16(&b, 6) as usize;
        let room = (b.len() - hdr) / 16;
        if nrecs == 0 || nrecs > room {
            return Err(bad(format!("block map block {fsb:#x}: {nrecs} records")));
        }
        if level == 0 {
            if out.len() + nrecs > MAX_EXTENTS {
                return Err(bad("more extents than this reader holds".into()));
            }
            out.extend(b[hdr..hdr + nrecs * 16].chunks_exact(16).map(Extent::parse));
            return Ok(());
        }
        for k in 0..nrecs {
            let ptr = be64(&b, hdr + room * 8 + k * 8);
            self.bmbt_walk(ino, ptr, level - 1, out, visited)?;
        }
        Ok(())
    }

    /// Reads `buf.len()` bytes at byte `offset` of a fork mapped by `map`: holes and
    /// unwritten extents read as zeros.
    fn read_mapped(&self, map: &[Extent], offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let bs = self.sb.bs;
        buf.fill(0);
        let end = offset.saturating_add(buf.len() as u64);
        let first =
            map.partition_point(|e| e.off.saturating_add(e.len).saturating_mul(bs) <= offset);
        for e in &map[first..] {
            let (lo, hi) = (
                e.off.saturating_mul(bs),
                e.off.saturating_add(e.len).saturating_mul(bs),
            );
            if lo >= end {
                break;
            }
            if e.unwritten {
                continue;
            }
            let (a, z) = (lo.max(offset), hi.min(end));
            if a >= z {
                continue;
            }
            let at = self.sb.fsb_bytes(e.fsb, e.len)? + (a - lo);
            let dst = &mut buf[(a - offset) as usize..(z - offset) as usize];
            self.dev.read_exact_at(at, dst)?;
        }
        Ok(())
    }

    fn listing(&self, ino: u64) -> io::Result<Arc<Listing>> {
        if let Some(l) = self.dirs.get(&ino) {
            return Ok(l);
        }
        let i = self.inode(ino)?;
        if i.kind() != Some(NodeKind::Dir) {
            return Err(io::Error::from_raw_os_error(libc::ENOTDIR));
        }
        let mut raw: Vec<RawEntry> = Vec::new();
        match i.format {
            FMT_LOCAL => self.shortform_dir(&i, &mut raw)?,
            FMT_EXTENTS | FMT_BTREE => {
                let map = self.extents(&i)?;
                let dirblk = self.sb.dirblk;
                let mut blocks: Vec<u64> = Vec::new();
                for e in &map.0 {
                    let lo = e.off.saturating_mul(self.sb.bs);
                    let hi = e.off.saturating_add(e.len).saturating_mul(self.sb.bs);
                    let hi = hi.min(DIR_LEAF_OFFSET);
                    let mut d = lo / dirblk;
                    while d * dirblk < hi {
                        if blocks.last() != Some(&d) {
                            blocks.push(d);
                        }
                        if blocks.len() as u64 * dirblk > MAX_DIR_BYTES {
                            return Err(corrupt(format!(
                                "{}: directory {ino} is larger than {MAX_DIR_BYTES} bytes",
                                self.label
                            )));
                        }
                        d += 1;
                    }
                }
                let mut b = vec![0u8; dirblk as usize];
                for d in blocks {
                    self.read_mapped(&map.0, d * dirblk, &mut b)?;
                    if let Err(e) = self.data_block(&b, &mut raw) {
                        tracing::warn!(
                            "{}: directory {ino}, block {d}: {e}; its entries are skipped",
                            self.label
                        );
                        self.left_out.add(1);
                    }
                }
            }
            f => {
                return Err(corrupt(format!(
                    "{}: directory {ino} has fork format {f}",
                    self.label
                )))
            }
        }
        let mut entries = Vec::with_capacity(raw.len());
        for (name, child, ftype) in raw {
            if child > MAX_INO {
                // Volumes past ~1 PiB number inodes beyond what the mount can carry.
                tracing::warn!(
                    "{}: directory {ino}: inode number {child} is too large to show; skipped",
                    self.label
                );
                self.left_out.add(1);
                continue;
            }
            if !valid_name(&name) {
                tracing::warn!(
                    "{}: directory {ino}: entry with an invalid name skipped",
                    self.label
                );
                self.left_out.add(1);
                continue;
            }
            let kind = match ftype.and_then(NodeKind::from_dirent) {
                Some(k) => k,
                // No file type in the entry (v4 without ftype): from the inode.
                None => match self.inode(child).map(|c| c.kind()) {
                    Ok(Some(k)) => k,
                    r => {
                        tracing::warn!(
                            "{}: directory {ino}: entry {:?} names inode {child}, which {}; skipped",
                            self.label,
                            String::from_utf8_lossy(&name),
                            match r {
                                Err(e) => format!("cannot be read ({e})"),
                                Ok(_) => "is not in use (no file type)".to_string(),
                            }
                        );
                        self.left_out.add(1);
                        continue;
                    }
                },
            };
            entries.push(DirEntry {
                name,
                ino: child,
                kind,
            });
        }
        let l = Arc::new(Listing::new(entries));
        self.dirs.put(ino, l.clone());
        Ok(l)
    }

    /// Entries of a directory held in the inode.
    fn shortform_dir(&self, i: &Inode, out: &mut Vec<RawEntry>) -> io::Result<()> {
        let b = &i.data;
        let bad = || {
            corrupt(format!(
                "{}: directory {}: short form damaged",
                self.label, i.ino
            ))
        };
        if b.len() < 6 {
            return Err(bad());
        }
        let (count, wide) = (b[0] as usize, b[1] != 0);
        let isz = if wide { 8 } else { 4 };
        let mut p = 2 + isz;
        for _ in 0..count {
            let namelen = *b.get(p).ok_or_else(bad)? as usize;
            let name_at = p + 3;
            let after = name_at + namelen + usize::from(self.sb.ftype);
            if namelen == 0 || after + isz > b.len() {
                return Err(bad());
            }
            let ftype = self.sb.ftype.then(|| b[name_at + namelen]);
            let child = if wide {
                be64(b, after)
            } else {
                be32(b, after) as u64
            };
            out.push((b[name_at..name_at + namelen].to_vec(), child, ftype));
            p = after + isz;
        }
        Ok(())
    }

    /// Entries of one directory data block (single-block or data format).
    fn data_block(&self, b: &[u8], out: &mut Vec<RawEntry>) -> io::Result<()> {
        let magic = be32(b, 0);
        let (hdr, single) = match (magic, self.sb.v5) {
            (0x5844_4233, true) => (64, true),   // XDB3
            (0x5844_4433, true) => (64, false),  // XDD3
            (0x5844_3242, false) => (16, true),  // XD2B
            (0x5844_3244, false) => (16, false), // XD2D
            _ => return Err(corrupt(format!("not a data block (magic {magic:#x})"))),
        };
        let mut end = b.len();
        if single {
            let count = be32(b, b.len() - 8) as usize;
            end = count
                .checked_mul(8)
                .and_then(|n| (b.len() - 8).checked_sub(n))
                .filter(|&e| e >= hdr)
                .ok_or_else(|| corrupt(format!("block tail counts {count} leaf entries")))?;
        }
        let mut p = hdr;
        while p + 8 <= end {
            if be16(b, p) == 0xFFFF {
                let len = be16(b, p + 2) as usize;
                if len < 8 || len % 8 != 0 || p + len > end {
                    return Err(corrupt(format!("free entry of {len} bytes at {p}")));
                }
                p += len;
                continue;
            }
            let namelen = b[p + 8] as usize;
            let extra = usize::from(self.sb.ftype);
            let size = (9 + namelen + extra + 2).div_ceil(8) * 8;
            if namelen == 0 || p + size > end {
                return Err(corrupt(format!("entry at {p} runs past the block")));
            }
            let name = &b[p + 9..p + 9 + namelen];
            if name != b"." && name != b".." {
                let ftype = self.sb.ftype.then(|| b[p + 9 + namelen]);
                out.push((name.to_vec(), be64(b, p), ftype));
            }
            p += size;
        }
        Ok(())
    }

    /// The attribute fork's (namespace flags, name, value) triples.
    fn raw_xattrs(&self, i: &Inode) -> io::Result<Vec<RawAttr>> {
        let mut out = Vec::new();
        if i.attr.is_empty() {
            return Ok(out);
        }
        let bad = |what: &str| {
            corrupt(format!(
                "{}: inode {}: attributes: {what}",
                self.label, i.ino
            ))
        };
        match i.aformat {
            FMT_LOCAL => {
                let b = &i.attr;
                if b.len() < 4 {
                    return Err(bad("short form too small"));
                }
                let total = (be16(b, 0) as usize).min(b.len());
                let mut p = 4;
                for _ in 0..b[2] {
                    if p + 3 > total {
                        return Err(bad("short form entry past its end"));
                    }
                    let (nl, vl, fl) = (b[p] as usize, b[p + 1] as usize, b[p + 2]);
                    let end = p + 3 + nl + vl;
                    if end > total {
                        return Err(bad("short form entry past its end"));
                    }
                    out.push((
                        fl,
                        b[p + 3..p + 3 + nl].to_vec(),
                        b[p + 3 + nl..end].to_vec(),
                    ));
                    p = end;
                }
            }
            FMT_EXTENTS | FMT_BTREE => {
                let map = self.fork_extents(i.ino, &i.attr, i.aformat, i.anextents)?;
                let bs = self.sb.bs;
                let blocks: u64 = map.iter().map(|e| e.len).sum();
                if blocks.saturating_mul(bs) > MAX_ATTR_BYTES {
                    return Err(bad("attribute fork too large"));
                }
                let mut b = vec![0u8; bs as usize];
                for e in &map {
                    for k in e.off..e.off + e.len {
                        self.read_mapped(&map, k * bs, &mut b)?;
                        self.attr_leaf(i.ino, &b, &map, &mut out)?;
                    }
                }
            }
            f => return Err(bad(&format!("fork format {f}"))),
        }
        Ok(out)
    }

    /// Attributes of one leaf block, values stored in it or in blocks of their own
    /// ("remote", found through `map`); other blocks (btree nodes, remote values
    /// themselves) are passed over.
    fn attr_leaf(
        &self,
        ino: u64,
        b: &[u8],
        map: &[Extent],
        out: &mut Vec<RawAttr>,
    ) -> io::Result<()> {
        let (magic, hdr) = if self.sb.v5 {
            (0x3BEE, 80)
        } else {
            (0xFBEE, 32)
        };
        if be16(b, 8) != magic {
            return Ok(());
        }
        let count = be16(b, if self.sb.v5 { 56 } else { 12 }) as usize;
        for k in 0..count {
            let at = hdr + k * 8;
            if at + 8 > b.len() {
                break;
            }
            let (n, flags) = (be16(b, at + 4) as usize, b[at + 6]);
            if flags & 0x80 != 0 {
                continue; // INCOMPLETE: an interrupted set
            }
            if flags & 0x01 != 0 {
                // Local: value length, name length, name, value.
                if n + 3 > b.len() {
                    continue;
                }
                let (vl, nl) = (be16(b, n) as usize, b[n + 2] as usize);
                if n + 3 + nl + vl <= b.len() {
                    let name = b[n + 3..n + 3 + nl].to_vec();
                    out.push((flags, name, b[n + 3 + nl..n + 3 + nl + vl].to_vec()));
                }
                continue;
            }
            // Remote: first block, value length, name length, name.
            if n + 9 > b.len() {
                continue;
            }
            let (blk, vl, nl) = (
                be32(b, n) as u64,
                be32(b, n + 4) as usize,
                b[n + 8] as usize,
            );
            if n + 9 + nl > b.len() || vl as u64 > MAX_ATTR_BYTES {
                continue;
            }
            let name = b[n + 9..n + 9 + nl].to_vec();
            out.push((flags, name, self.remote_value(ino, map, blk, vl)?));
        }
        Ok(())
    }

    /// An attribute value kept in attribute-fork blocks from `blk`; on v5 each
    /// block starts with a 56-byte header ("XARM").
    fn remote_value(&self, ino: u64, map: &[Extent], blk: u64, len: usize) -> io::Result<Vec<u8>> {
        let bs = self.sb.bs as usize;
        if !self.sb.v5 {
            let mut v = vec![0u8; len];
            self.read_mapped(map, blk.saturating_mul(bs as u64), &mut v)?;
            return Ok(v);
        }
        let mut v = Vec::with_capacity(len);
        let mut b = vec![0u8; bs];
        let mut k = blk;
        while v.len() < len {
            self.read_mapped(map, k.saturating_mul(bs as u64), &mut b)?;
            if be32(&b, 0) != 0x5841_524D {
                return Err(corrupt(format!(
                    "{}: inode {ino}: attribute value block {k} is damaged",
                    self.label
                )));
            }
            let take = (len - v.len()).min(bs - 56);
            v.extend_from_slice(&b[56..56 + take]);
            k += 1;
        }
        Ok(v)
    }

    /// The data fork's byte ranges on the volume for `offset..end` of a file.
    fn spans(&self, i: &Inode, offset: u64, end: u64) -> io::Result<Vec<(u64, u64)>> {
        let map = self.extents(i)?;
        let sb = &self.sb;
        let runs: Vec<(u64, u64, Option<u64>)> = map
            .0
            .iter()
            .map(|e| {
                let phys = sb.fsb_bytes(e.fsb, e.len).ok().filter(|_| !e.unwritten);
                (e.off, e.len, phys.map(|p| p / sb.bs))
            })
            .collect();
        Ok(run_spans(&runs, |r| *r, offset, end, sb.bs))
    }
}

/// An XFS ACL (big-endian count and 12-byte entries) in the kernel's xattr form.
fn acl_to_vfs(v: &[u8]) -> Option<Vec<u8>> {
    let n = be32(v.get(..4)?, 0) as usize;
    if v.len() != 4 + n.checked_mul(12)? {
        return None;
    }
    let mut out = 2u32.to_le_bytes().to_vec();
    for e in v[4..].chunks_exact(12) {
        let tag = be32(e, 0) as u16;
        // USER (2) and GROUP (8) carry an id; the others none.
        let id = if tag == 2 || tag == 8 {
            be32(e, 4)
        } else {
            u32::MAX
        };
        out.extend_from_slice(&tag.to_le_bytes());
        out.extend_from_slice(&be16(e, 8).to_le_bytes());
        out.extend_from_slice(&id.to_le_bytes());
    }
    Some(out)
}

impl FsTree for XfsFs {
    fn root(&self) -> u64 {
        self.sb.rootino
    }

    fn stat(&self, ino: u64) -> io::Result<Stat> {
        let i = self.inode(ino)?;
        let kind = i
            .kind()
            .ok_or_else(|| corrupt(format!("{}: inode {ino}: mode {:#o}", self.label, i.mode)))?;
        let rdev = if matches!(kind, NodeKind::CharDev | NodeKind::BlockDev)
            && i.format == FMT_DEV
            && i.data.len() >= 4
        {
            // XFS packs 14 bits of major over 18 of minor; FUSE takes Linux's encoding.
            let d = be32(&i.data, 0);
            linux_dev(d >> 18, d & 0x3FFFF)
        } else {
            0
        };
        let [atime, mtime, ctime, crtime] = i.times;
        Ok(Stat {
            ino,
            kind,
            perm: i.mode & 0o7777,
            nlink: i.nlink,
            uid: i.uid,
            gid: i.gid,
            size: if kind == NodeKind::File || kind == NodeKind::Dir || kind == NodeKind::Symlink {
                i.size()?
            } else {
                0
            },
            blocks: i.nblocks.saturating_mul(self.sb.bs / 512),
            atime,
            mtime,
            ctime,
            crtime,
            rdev,
        })
    }

    fn read_dir(&self, ino: u64) -> io::Result<Arc<Vec<DirEntry>>> {
        Ok(self.listing(ino)?.entries.clone())
    }

    fn lookup(&self, dir: u64, name: &[u8]) -> io::Result<Option<u64>> {
        Ok(self.listing(dir)?.index.get(name).copied())
    }

    fn read(&self, ino: u64, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let i = self.inode(ino)?;
        if i.kind() != Some(NodeKind::File) {
            return Err(io::Error::from_raw_os_error(libc::EISDIR));
        }
        let size = i.size()?;
        if offset >= size {
            return Ok(0);
        }
        let n = ((size - offset) as usize).min(buf.len());
        let map = self.extents(&i)?;
        self.read_mapped(&map.0, offset, &mut buf[..n])?;
        Ok(n)
    }

    fn prefetch(&self, ino: u64, offset: u64, len: u64) {
        let Ok(i) = self.inode(ino) else { return };
        if let Ok(spans) = self.spans(&i, offset, offset.saturating_add(len)) {
            self.dev.prefetch(&spans);
        }
    }

    fn seek(&self, ino: u64, offset: u64, data: bool) -> io::Result<Option<u64>> {
        let i = self.inode(ino)?;
        let size = i.size()?;
        if offset >= size {
            return Ok(None);
        }
        if i.kind() != Some(NodeKind::File) {
            return Ok(Some(if data { offset } else { size }));
        }
        let map = self.extents(&i)?;
        let bs = self.sb.bs;
        // Unwritten extents are holes to SEEK_DATA, as the kernel reports them.
        let runs = map.0.iter().filter(|e| !e.unwritten).map(|e| {
            (
                e.off.saturating_mul(bs),
                e.off.saturating_add(e.len).saturating_mul(bs),
            )
        });
        Ok(seek_runs(runs, offset, size, data))
    }

    fn read_link(&self, ino: u64) -> io::Result<Vec<u8>> {
        let i = self.inode(ino)?;
        if i.kind() != Some(NodeKind::Symlink) {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        let size = i.size()?;
        if size == 0 || size > 1024 {
            return Err(corrupt(format!(
                "{}: symlink {ino} of {size} bytes",
                self.label
            )));
        }
        let size = size as usize;
        if i.format == FMT_LOCAL {
            return i
                .data
                .get(..size)
                .map(<[u8]>::to_vec)
                .ok_or_else(|| corrupt(format!("{}: symlink {ino} past its inode", self.label)));
        }
        let map = self.extents(&i)?;
        if !self.sb.v5 {
            let mut b = vec![0u8; size];
            self.read_mapped(&map.0, 0, &mut b)?;
            return Ok(b);
        }
        // v5: each extent starts with a 56-byte header ("XSLM"), then its share.
        let bs = self.sb.bs;
        let mut out = Vec::with_capacity(size);
        for e in map.0.iter().take(4) {
            if out.len() >= size {
                break;
            }
            let len = e.len.min(4).saturating_mul(bs) as usize;
            let mut b = vec![0u8; len];
            self.read_mapped(&map.0, e.off.saturating_mul(bs), &mut b)?;
            if be32(&b, 0) != 0x5853_4C4D {
                return Err(corrupt(format!("{}: symlink {ino}: bad block", self.label)));
            }
            let take = (size - out.len()).min(len - 56);
            out.extend_from_slice(&b[56..56 + take]);
        }
        if out.len() < size {
            return Err(corrupt(format!(
                "{}: symlink {ino} is cut short",
                self.label
            )));
        }
        Ok(out)
    }

    fn flags(&self, ino: u64) -> io::Result<Option<u32>> {
        let i = self.inode(ino)?;
        // XFS's inode flags as FS_IOC_GETFLAGS reports them (xfs_ip2xflags, then the
        // fileattr conversion).
        const MAP: [(u16, u32); 6] = [
            (0x0008, 0x10),        // immutable
            (0x0010, 0x20),        // append-only
            (0x0020, 0x8),         // sync
            (0x0040, 0x80),        // noatime
            (0x0080, 0x40),        // nodump
            (0x0200, 0x2000_0000), // project inherit
        ];
        let mut f = MAP
            .iter()
            .filter(|(x, _)| i.flags & x != 0)
            .fold(0, |acc, (_, l)| acc | l);
        if i.flags2 & 0x1 != 0 {
            f |= 0x0200_0000; // DAX
        }
        Ok(Some(f))
    }

    fn xattrs(&self, ino: u64) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let i = self.inode(ino)?;
        let mut out = Vec::new();
        for (flags, name, value) in self.raw_xattrs(&i)? {
            let (ns, name, value): (&[u8], Vec<u8>, Vec<u8>) = if flags & 0x02 != 0 {
                match name.as_slice() {
                    // ACLs: the kernel lists them in both forms.
                    b"SGI_ACL_FILE" | b"SGI_ACL_DEFAULT" => {
                        if let Some(v) = acl_to_vfs(&value) {
                            let n: &[u8] = if name == b"SGI_ACL_FILE" {
                                b"system.posix_acl_access"
                            } else {
                                b"system.posix_acl_default"
                            };
                            out.push((n.to_vec(), v));
                        }
                        (b"trusted.", name, value)
                    }
                    _ => (b"trusted.", name, value),
                }
            } else if flags & 0x04 != 0 {
                (b"security.", name, value)
            } else if flags & 0x78 != 0 {
                continue; // parent pointers and other internal namespaces
            } else {
                (b"user.", name, value)
            };
            let mut full = ns.to_vec();
            full.extend_from_slice(&name);
            out.push((full, value));
        }
        Ok(out)
    }

    fn statfs(&self) -> StatFs {
        *self.statfs.get_or_init(|| self.count_statfs())
    }
}

impl XfsFs {
    /// What `df` shows on the kernel's read-only mount (xfs_fs_statfs): the internal
    /// log left out of the size; set aside from the free count, 8 blocks per AG and
    /// the free-space btrees' blocks past their roots (the AGFs' btreeblks, less the
    /// reverse-map btree's); inodes as those in use plus what the free space could
    /// hold, capped by imaxpct.
    fn count_statfs(&self) -> StatFs {
        let sb = &self.sb;
        let log = if sb.logstart != 0 { sb.logblocks } else { 0 };
        let (mut allocbt, mut fdblocks, mut icount, mut ifree) = (0u64, 0u64, 0u64, 0u64);
        let mut all = sb.agcount <= 1 << 16;
        let mut released = unlinked::Released::default();
        let mut staging = 0u64;
        if all {
            let (mut agf, mut agi) = ([0u8; 96], [0u8; 296]);
            for ag in 0..sb.agcount {
                let at = ag * sb.agblocks * sb.bs + sb.sectsize;
                // The AGIs' inode counts are used only after a replay.
                if self.dev.read_exact_at(at, &mut agf).is_err()
                    || be32(&agf, 0) != 0x5841_4746
                    || self.replayed
                        && (self.dev.read_exact_at(at + sb.sectsize, &mut agi).is_err()
                            || be32(&agi, 0) != 0x5841_4749)
                {
                    all = false;
                    continue;
                }
                let btree = be32(&agf, 60) as u64;
                let mut n = btree as i64;
                if sb.rmapbt {
                    n -= be32(&agf, 80) as i64 - 1;
                }
                allocbt += n.max(0) as u64;
                fdblocks += be32(&agf, 52) as u64 + be32(&agf, 48) as u64 + btree;
                icount += be32(&agi, 16) as u64;
                ifree += be32(&agi, 28) as u64;
                if sb.reflink {
                    match refcount::staging_blocks(&*self.dev, sb, ag, &agf) {
                        Ok(n) => staging += n,
                        Err(e) => tracing::warn!(
                            "{}: AG {ag}: {e}; its CoW staging blocks count as used",
                            self.label
                        ),
                    }
                }
                if !self.replayed {
                    continue;
                }
                match unlinked::released(&*self.dev, sb, ag, &agi) {
                    Ok(r) => released += r,
                    Err(e) => tracing::warn!(
                        "{}: AG {ag}: {e}; free counts leave its unlinked inodes as used",
                        self.label
                    ),
                }
            }
        }
        if released.inodes != 0 {
            tracing::info!(
                "{}: {} inode(s) left unlinked at the crash count as freed, as the kernel frees them after replaying ({} blocks, {} inode(s) in freed chunks)",
                self.label,
                released.inodes,
                released.blocks,
                released.gone
            );
        }
        if released.shared != 0 {
            tracing::warn!(
                "{}: {} block(s) of unlinked files that shared extents count as used; the kernel frees those no other file shares",
                self.label,
                released.shared
            );
        }
        let fdblocks = fdblocks + released.blocks;
        let icount = icount.saturating_sub(released.gone);
        let ifree = (ifree + released.inodes).saturating_sub(released.gone);
        // After a replay the kernel recounts from the AG headers (the superblock's lazy
        // counters lag); a clean volume's superblock holds the same sums.
        let (fdblocks, icount, ifree) = if self.replayed && all {
            (fdblocks, icount, ifree)
        } else {
            (sb.fdblocks, sb.icount, sb.ifree)
        };
        // Every mount frees the CoW staging extents first.
        if staging != 0 {
            tracing::info!(
                "{}: {staging} CoW staging block(s) count as free, as every mount frees them",
                self.label
            );
        }
        let fdblocks = fdblocks + staging;
        let free = fdblocks
            .min(sb.dblocks)
            .saturating_sub(sb.agcount * 8)
            .saturating_sub(allocbt);
        let mut files = icount.saturating_add(free << sb.inopblog);
        if sb.maxicount != 0 {
            files = files.min(sb.maxicount);
        }
        let files = files.max(icount);
        StatFs {
            bsize: sb.bs as u32,
            blocks: sb.dblocks.saturating_sub(log),
            bfree: free,
            bavail: free,
            files,
            ffree: files.saturating_sub(icount.saturating_sub(ifree)),
            namelen: 255,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extent_records_unpack() {
        // unwritten, logical block 5, a block number using all 52 bits' top, 7 blocks
        let fsb: u64 = (3 << 43) | 0x12345;
        let l0: u64 = (1 << 63) | (5 << 9) | (fsb >> 43);
        let l1: u64 = ((fsb & ((1 << 43) - 1)) << 21) | 7;
        let mut r = l0.to_be_bytes().to_vec();
        r.extend_from_slice(&l1.to_be_bytes());
        assert_eq!(
            Extent::parse(&r),
            Extent {
                off: 5,
                fsb,
                len: 7,
                unwritten: true
            }
        );
    }

    #[test]
    fn bigtime_counts_from_1901() {
        let mut b = [0u8; 8];
        b.copy_from_slice(&((1u64 << 31) * 1_000_000_000 + 7).to_be_bytes());
        assert_eq!(xfs_time(&b, 0, true), Timespec { secs: 0, nsecs: 7 });
    }

    #[test]
    fn acls_convert_to_the_kernel_form() {
        let mut v = 2u32.to_be_bytes().to_vec();
        for (tag, id, perm) in [(1u32, 0u32, 6u16), (2, 1000, 4)] {
            v.extend_from_slice(&tag.to_be_bytes());
            v.extend_from_slice(&id.to_be_bytes());
            v.extend_from_slice(&perm.to_be_bytes());
            v.extend_from_slice(&[0, 0]);
        }
        let got = acl_to_vfs(&v).unwrap();
        assert_eq!(&got[..4], &2u32.to_le_bytes());
        assert_eq!(&got[4..12], &[1, 0, 6, 0, 0xFF, 0xFF, 0xFF, 0xFF]);
        assert_eq!(&got[12..20], &[2, 0, 4, 0, 0xE8, 0x03, 0, 0]);
        assert!(acl_to_vfs(&v[..20]).is_none());
    }
}
