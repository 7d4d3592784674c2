//! The FUSE adapter: every recovery point of a safe as a read-only directory tree.
//!
//! ```text
//! latest -> N                 newest point
//! by-time/TIME -> ../N        one per point (YYYY-MM-DDTHH:MM:SSZ, clashes get .N)
//! N/DEVICE/disk.img           the device at N, byte-exact
//! N/DEVICE/partK.img          partition K (MBR or GPT)
//! N/DEVICE/files/             file tree of a filesystem on the whole device
//! N/DEVICE/partK/             file tree of partition K
//! N/DEVICE/lvm/VG-LV.img      an LVM logical volume with a PV on DEVICE
//! N/DEVICE/lvm/VG-LV/         its file tree, or for an LV holding a partition
//!                             table (a VM disk) its partK.img and partK/
//! ```
//!
//! File trees come from `ntfs_ext` through the [`FsTree`] trait; their inodes are
//! numbered `tree_id << 40 | inode`, so hard links keep one inode number.
//!
//! This module knows no on-disk format: it asks `safe_reader` for points, `volumes` for
//! partitions and reads through [`PointDevice`]. Recovery points never change, so
//! attributes, entries and page-cache contents are kept long; only the root (where new
//! points appear) is short-lived.

pub mod mount;
mod readahead;

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Generation, INodeNo, KernelConfig, OpenFlags, ReplyAttr,
    ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyLseek, ReplyOpen, ReplyStatfs,
    ReplyXattr, Request,
};

use crate::cache::CachedSafe;
use crate::device::PointDevice;
use crate::ntfs_ext::{FsTree, NodeKind, TreeOptions};
use crate::readat::{ReadAt, Slice};
use crate::safe_reader::PointInfo;

/// An extended attribute: name and value.
pub type Xattr = (Vec<u8>, Vec<u8>);

/// Inode numbers at or above this belong to file trees.
const TREE_SHIFT: u32 = 40;
const TREE_MASK: u64 = (1 << TREE_SHIFT) - 1;
const _: () = assert!(TREE_MASK == crate::ntfs_ext::tree::MAX_INO);

/// Entries and attributes of recovery points never change.
const LONG_TTL: Duration = Duration::from_secs(24 * 3600);
/// Files of file trees up to this size get no readahead of their own.
const TREE_RA_MIN_FILE: u64 = 4 << 20;
/// The root, `latest` and `by-time` change when a point completes.
const SHORT_TTL: Duration = Duration::from_secs(1);

/// What an inode stands for; equal kinds share one inode number for the whole mount.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Kind {
    Root,
    ByTime,
    Latest,
    TimeLink(String),
    Point(i64),
    Device {
        point: i64,
        dev: i64,
    },
    Image {
        point: i64,
        dev: i64,
        part: Option<u32>,
    },
    /// The LVM logical volumes with a PV on a device.
    Lvm {
        point: i64,
        dev: i64,
    },
    /// One logical volume's image (VG by `FoundVg::key`, LV by name), or of partition `part` in
    /// it (a VM disk kept in an LV).
    LvImage {
        point: i64,
        vg: String,
        lv: String,
        part: Option<u32>,
    },
    /// The partitions of an LV that holds a partition table rather than a filesystem.
    LvParts {
        point: i64,
        vg: String,
        lv: String,
    },
    /// The opened LUKS volumes on a device.
    Luks {
        point: i64,
        dev: i64,
    },
    /// The md arrays assembled from members of which one is on a device.
    Md {
        point: i64,
        dev: i64,
    },
    /// The image of an md array listed under a device's `md/` by name, or of
    /// partition `part` in it.
    MdImage {
        point: i64,
        dev: i64,
        name: String,
        part: Option<u32>,
    },
    /// The partitions of an md array that holds a partition table rather than a
    /// filesystem.
    MdParts {
        point: i64,
        dev: i64,
        name: String,
    },
    /// One opened LUKS volume's plaintext, named as systemd names its mapping
    /// (`luks-UUID`).
    LuksImage {
        point: i64,
        dev: i64,
        name: String,
    },
}

struct Node {
    kind: Kind,
    parent: u64,
    /// Directory listing, filled on first use (never for the root, which is live).
    children: Option<Arc<Vec<(OsString, u64)>>>,
}

#[derive(Default)]
struct Nodes {
    list: Vec<Node>,
    by_kind: HashMap<Kind, u64>,
}

/// The md arrays of a point: the freshest superblock of each, those assembled
/// from members spread over its devices, and what each device's `md/` lists.
struct PointMd {
    arrays: crate::volumes::md::Arrays,
    /// Members holding a whole current copy of their array (RAID1), with its data:
    /// each reads around its own failures from the others.
    copies: Vec<(crate::volumes::md::Member, Arc<dyn ReadAt>)>,
    /// Name, the devices holding members, the array.
    assembled: Vec<(String, Vec<i64>, Arc<dyn ReadAt>)>,
    shown: Vec<MdShown>,
}

/// The array data of RAID1 member `m` (on `vol`), reading around its failures from
/// the other current copies of its array in `copies`, as md does.
fn copy_with_others(
    copies: &[(crate::volumes::md::Member, Arc<dyn ReadAt>)],
    m: &crate::volumes::md::Member,
    vol: &Arc<dyn ReadAt>,
    what: String,
) -> Arc<dyn ReadAt> {
    let legs = std::iter::once(m.data(vol))
        .chain(
            copies
                .iter()
                .filter(|(c, _)| c.array == m.array && c != m)
                .map(|(_, d)| d.clone()),
        )
        .collect();
    crate::volumes::mirror::Mirrored::over(what, legs)
}

/// An md array listed under a device's `md/`.
struct MdShown {
    dev: i64,
    /// Its name in that listing (unique there).
    name: String,
    at: MdAt,
    /// The array's data.
    data: Arc<dyn ReadAt>,
}

/// Where an md array listed under a device comes from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum MdAt {
    /// Assembled from the point's members, by its name in the point.
    Assembled(String),
    /// The copy a RAID1 member holds: the member's device and partition (`None`: the
    /// whole device).
    Copy(i64, Option<u32>),
}

/// An opened LUKS volume of a point: its device, name (`luks-UUID`) and plaintext.
type OpenLuks = (i64, String, Arc<dyn ReadAt>);

/// What a LUKS header on a volume says about reading it.
enum LuksView {
    /// No LUKS volume: read as it is.
    Plain,
    /// Opened by a passphrase: its plaintext is read instead.
    Open(Arc<dyn ReadAt>),
    /// A LUKS volume no passphrase given opens: nothing inside is read.
    Locked,
}

/// What an md superblock on a volume says about reading it.
enum MdView {
    /// No md member: the volume is read as it is.
    Plain,
    /// A member holding a whole, current copy of the array: its data, the array's
    /// name, whether the data starts at the member's start (0.90, 1.0), and the
    /// array's UUID.
    Array(Arc<dyn ReadAt>, String, bool, [u8; 16]),
    /// A member whose bytes are not the array's as it stands (logged): neither it
    /// nor its data is read as a filesystem or a PV.
    NotRead,
}

impl Nodes {
    fn get_or_add(&mut self, kind: Kind, parent: u64) -> u64 {
        if let Some(&ino) = self.by_kind.get(&kind) {
            return ino;
        }
        self.list.push(Node {
            kind: kind.clone(),
            parent,
            children: None,
        });
        let ino = self.list.len() as u64;
        self.by_kind.insert(kind, ino);
        ino
    }
}

/// Where a raw image's bytes are.
#[derive(Clone)]
enum Source {
    /// A byte range of one device at one point (disk and partition images): holes
    /// come from its block map.
    Range { dev: Arc<PointDevice>, start: u64 },
    /// A logical volume, mapped over one or more devices.
    Lv(Arc<dyn ReadAt>),
}

/// A raw image.
#[derive(Clone)]
struct Image {
    src: Source,
    len: u64,
    /// Bytes in blocks holding data (stat's blocks): below the size, `cp` and `du` see
    /// a sparse file, and `cp` then skips the holes with SEEK_DATA.
    alloc: u64,
}

impl Image {
    fn read_exact(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        match &self.src {
            Source::Range { dev, start } => dev.read_exact_at(start + offset, buf),
            Source::Lv(lv) => lv.read_exact_at(offset, buf),
        }
    }

    fn prefetch(&self, offset: u64, len: u64) {
        match &self.src {
            Source::Range { dev, start } => dev.prefetch(&[(start + offset, len)]),
            Source::Lv(lv) => lv.prefetch(&[(offset, len)]),
        }
    }

    /// SEEK_DATA (`data`) or SEEK_HOLE from `offset`, below the length.
    fn seek(&self, offset: u64, data: bool) -> std::io::Result<Option<u64>> {
        match &self.src {
            Source::Range { dev, start } => {
                let (at, end) = (start + offset, start + self.len);
                let found = if data {
                    dev.next_data(at, end)?
                } else {
                    Some(dev.next_hole(at, end)?)
                };
                Ok(found.map(|o| o - start))
            }
            // A logical volume answers through its segments, where they know.
            Source::Lv(lv) => {
                if data {
                    lv.data_from(offset, self.len).unwrap_or(Ok(Some(offset)))
                } else {
                    lv.hole_from(offset, self.len)
                        .unwrap_or(Ok(self.len))
                        .map(Some)
                }
            }
        }
    }
}

/// A volume of a point: the devices holding it, a name for the log, its bytes, and,
/// for an md RAID1 member's copy of its array (or a partition in it), the array's
/// UUID: the same bytes as every other current member's, not a clone.
type PointVol = (Vec<i64>, String, Arc<dyn ReadAt>, Option<[u8; 16]>);

/// A device or a partition on it (by number): its device, partition, a name for the
/// log, and its bytes.
type DevOrPart = (i64, Option<u32>, String, Arc<dyn ReadAt>);

/// The partitions of `vol`'s partition table, by number, as volumes (none without
/// a readable table).
fn partitions_of(vol: &Arc<dyn ReadAt>) -> Vec<(u32, Arc<dyn ReadAt>)> {
    match crate::volumes::read_table(&**vol) {
        Ok(Some(t)) => t
            .partitions
            .iter()
            .map(|p| {
                let part: Arc<dyn ReadAt> = Arc::new(Slice::new(vol.clone(), p.start, p.len));
                (p.number, part)
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// The image of a whole volume (an assembled array, a LUKS plaintext): reported as
/// fully allocated.
fn whole_volume(vol: Option<Arc<dyn ReadAt>>) -> Result<Image, Errno> {
    let vol = vol.ok_or(Errno::ENOENT)?;
    let len = vol.size();
    Ok(Image {
        src: Source::Lv(vol),
        len,
        alloc: len,
    })
}

/// A raw image as a volume of its own.
struct ImageVolume(Image);

impl ReadAt for ImageVolume {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = (buf.len() as u64).min(self.0.len.saturating_sub(offset)) as usize;
        self.0.read_exact(offset, &mut buf[..n])?;
        Ok(n)
    }

    fn size(&self) -> u64 {
        self.0.len
    }

    fn prefetch(&self, ranges: &[(u64, u64)]) {
        for &(o, l) in ranges {
            self.0.prefetch(o, l);
        }
    }
}

/// A PV found in a point: the device holding it and the volume it is.
struct FoundPv {
    /// The devices holding it: one, or every member of an assembled md array.
    devs: Vec<i64>,
    vol: Arc<dyn ReadAt>,
}

/// The volume groups of one point, from the PVs on its devices and partitions.
#[derive(Default)]
struct PointLvm {
    vgs: Vec<FoundVg>,
}

/// A VG as a point holds it. A VG whose PVs are found more than once (disks cloned
/// from one template, each going on alone) is found once per device holding a copy,
/// read from that device's copies and their own metadata: LVM's UUIDs cannot tell the
/// clones apart, and one clone's LVs must never be read from another's disk.
struct FoundVg {
    /// Unique in the point: the VG id, or for a device's own copy `ID@DEVICE`.
    key: String,
    /// The newest metadata among the PVs it is read from.
    vg: crate::volumes::lvm::Vg,
    /// Its PVs found, by UUID.
    pvs: HashMap<String, FoundPv>,
    /// The one device whose copy this is.
    only: Option<i64>,
}

impl FoundVg {
    /// The devices holding extents of `lv` (for a device's own copy of a cloned VG,
    /// that device only), sorted.
    fn lv_devs(&self, lv: &crate::volumes::lvm::Lv) -> Vec<i64> {
        let mut devs: Vec<i64> = crate::volumes::lvm::lv_pvs(&self.vg, lv)
            .iter()
            .filter_map(|&i| self.vg.pvs.get(i).and_then(|pv| self.pvs.get(&pv.uuid)))
            .flat_map(|pv| pv.devs.iter().copied())
            .filter(|d| self.only.is_none_or(|o| o == *d))
            .collect();
        devs.sort_unstable();
        devs.dedup();
        devs
    }
}

/// A path [`SafeFs::resolve`] did not find, so callers can tell "not in this point"
/// from a failure to read it.
#[derive(Debug)]
pub struct NoSuchEntry(pub String);

impl std::fmt::Display for NoSuchEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for NoSuchEntry {}

/// Options of the mounted tree.
#[derive(Debug, Clone)]
pub struct FsOptions {
    /// Show only this point, at the root.
    pub only_point: Option<i64>,
    /// Other users may enter (the kernel checks permissions).
    pub allow_other: bool,
    /// Show file trees as recorded, without journal replay (forensics).
    pub no_replay: bool,
    /// Show NTFS metadata files ($MFT, $LogFile, ...) (forensics).
    pub show_system: bool,
    /// Passphrases for LUKS volumes, and the keys they opened.
    pub keyring: Arc<crate::volumes::luks::Keyring>,
}

impl FsOptions {
    /// One point shown at the root, nothing else changed: what commands that read a
    /// point without mounting it (restore --volume, ls, extract) start from.
    pub fn for_point(point: i64, passphrases: Vec<crate::passphrase::Secret>) -> FsOptions {
        FsOptions {
            only_point: Some(point),
            allow_other: false,
            no_replay: false,
            show_system: false,
            keyring: Arc::new(crate::volumes::luks::Keyring::new(passphrases)),
        }
    }
}

/// A volume whose file tree was probed: (point, device, partition) or (point, VG id,
/// LV name).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum VolumeKey {
    Part(i64, i64, Option<u32>),
    Lv(i64, String, String, Option<u32>),
    /// An assembled md array, or partition K of an md array (a RAID1 copy's array by
    /// the member's device and partition).
    Md(i64, MdAt, Option<u32>),
}

/// File trees kept open at once. A tree's parse of its volume (NTFS's 128 KiB `$UpCase`,
/// ext's group descriptors, ...) lies outside the cache budget; walking the trees of
/// hundreds of points would otherwise grow the server by that much per point. A closed
/// tree reopens on its next use under the same inode numbers.
const OPEN_TREES: usize = 16;

/// One file tree, where it hangs in the synthetic tree, and how to reopen it.
struct TreeSlot {
    /// The open tree, or `None` while closed to bound memory.
    tree: Mutex<Option<Arc<dyn FsTree>>>,
    /// The device directory holding it (its `..`).
    parent: u64,
    vol: Arc<dyn ReadAt>,
    opts: TreeOptions,
    /// When it was last used, on the mount's use counter (least recent closes first).
    used: AtomicU64,
}

/// LVs kept opened (see `SafeFs::lv_opened`).
const LV_OPENED: usize = 32;

/// An LV of a point: (point, VG key, LV name).
type LvKey = (i64, String, String);

/// The mounted filesystem.
pub struct SafeFs {
    cache: Arc<CachedSafe>,
    opts: FsOptions,
    uid: u32,
    gid: u32,
    mounted_at: SystemTime,
    nodes: RwLock<Nodes>,
    points: RwLock<Arc<Vec<PointInfo>>>,
    devices: Mutex<HashMap<(i64, i64), Arc<PointDevice>>>,
    images: Mutex<HashMap<u64, Image>>,
    trees: RwLock<Vec<Arc<TreeSlot>>>,
    /// Ticks once per use of a tree: the trees' recency.
    tree_clock: AtomicU64,
    tree_ids: Mutex<HashMap<VolumeKey, Option<u64>>>,
    /// Each point's LVM volume groups, scanned on first use.
    lvm: Mutex<HashMap<i64, Arc<PointLvm>>>,
    /// Each point's md arrays, scanned on first use.
    md: Mutex<HashMap<i64, Arc<PointMd>>>,
    /// Each point's opened LUKS volumes, scanned on first use.
    luks: Mutex<HashMap<i64, Arc<Vec<OpenLuks>>>>,
    /// Warnings about a volume already logged (a volume is met by several paths).
    warned: Mutex<std::collections::HashSet<String>>,
    /// LVs opened lately, by point, VG key and name (`None`: could not be): a RAID,
    /// mirror or cached LV is mapped (superblocks judged, a cache's map read) and
    /// logged once, not at every listing or open; bounded, whatever the points.
    lv_opened: Mutex<lru::LruCache<LvKey, Option<Arc<dyn ReadAt>>>>,
    /// Readahead streams per image or large tree-file inode (files are opened without
    /// a handle).
    streams: readahead::Streams,
    /// What every tree opened left out of its listings as damaged.
    left_out: crate::ntfs_ext::LeftOut,
}

fn time(secs: i64) -> SystemTime {
    if secs >= 0 {
        UNIX_EPOCH + Duration::from_secs(secs as u64)
    } else {
        UNIX_EPOCH
    }
}

/// The mtime of the directories that list points (the root, `by-time`): the newest
/// point's creation time, its nanoseconds the point's id, so that it moves with every
/// point that completes, two in one second too, and the kernel drops the listing it
/// kept.
fn changes_mtime(newest: &PointInfo) -> SystemTime {
    time(newest.created) + Duration::from_nanos(newest.id.rem_euclid(1_000_000_000) as u64)
}

impl SafeFs {
    /// Builds the tree over a cached safe; reads the point list once.
    pub fn new(cache: Arc<CachedSafe>, opts: FsOptions) -> anyhow::Result<SafeFs> {
        let points = cache.safe().points()?;
        let mut nodes = Nodes::default();
        nodes.get_or_add(Kind::Root, 1);
        let streams = readahead::Streams::new(cache.block_capacity() as u64);
        Ok(SafeFs {
            cache,
            opts,
            uid: unsafe { libc::getuid() },
            gid: unsafe { libc::getgid() },
            mounted_at: SystemTime::now(),
            nodes: RwLock::new(nodes),
            points: RwLock::new(Arc::new(points)),
            devices: Mutex::new(HashMap::new()),
            images: Mutex::new(HashMap::new()),
            trees: RwLock::new(Vec::new()),
            tree_clock: AtomicU64::new(0),
            tree_ids: Mutex::new(HashMap::new()),
            lvm: Mutex::new(HashMap::new()),
            md: Mutex::new(HashMap::new()),
            warned: Mutex::new(std::collections::HashSet::new()),
            lv_opened: Mutex::new(lru::LruCache::new(
                std::num::NonZeroUsize::new(LV_OPENED).unwrap(),
            )),
            luks: Mutex::new(HashMap::new()),
            streams,
            left_out: Default::default(),
        })
    }

    /// The raw image at `path` under the root (as the mount names it: `N/DEVICE/
    /// lvm/VG-LV.img`, or `DEVICE/...` with `only_point`) as a volume: what `restore
    /// --volume` writes, read without a mount.
    pub fn volume_at(&self, path: &Path) -> anyhow::Result<Arc<dyn ReadAt>> {
        let ino = self.resolve(path)?;
        let img = self
            .image_of(ino)
            .map_err(|_| anyhow::anyhow!("{}: not a raw image", path.display()))?;
        Ok(Arc::new(ImageVolume(img)))
    }

    /// The inode at `path` (names as the mount shows them, from its root; into file
    /// trees too), so commands can reach what the mount shows without mounting it. A
    /// name that is not there is a [`NoSuchEntry`] error, told apart from failures.
    pub fn resolve(&self, path: &Path) -> anyhow::Result<u64> {
        let mut ino = 1;
        let mut seen = PathBuf::new();
        for part in path.components() {
            let std::path::Component::Normal(name) = part else {
                anyhow::bail!(
                    "{}: only plain names, as the mount shows them",
                    path.display()
                );
            };
            seen.push(name);
            if self.tree_of(ino).is_some() {
                ino = match self.lookup_child(ino, name) {
                    Ok(i) => i,
                    Err(e) if e == Errno::ENOENT => {
                        return Err(NoSuchEntry(format!("{}: no such entry", seen.display())).into())
                    }
                    Err(e) => anyhow::bail!(
                        "{}: {}",
                        seen.display(),
                        std::io::Error::from_raw_os_error(e.code())
                    ),
                };
                continue;
            }
            let children = self
                .children(ino)
                .map_err(|_| anyhow::anyhow!("{}: not a directory", seen.display()))?;
            ino = children
                .iter()
                .find(|(n, _)| n == name)
                .map(|&(_, i)| i)
                .ok_or_else(|| {
                    let here = children.iter().map(|(n, _)| n.to_string_lossy());
                    NoSuchEntry(format!(
                        "{}: no such entry (there: {})",
                        seen.display(),
                        crate::format::list_or_none(here)
                    ))
                })?;
        }
        Ok(ino)
    }

    /// The child `name` of directory `parent`, as a lookup through the mount finds it.
    fn lookup_child(&self, parent: u64, name: &OsStr) -> Result<u64, Errno> {
        if let Some((tree, dir, _)) = self.tree_of(parent) {
            let base = parent & !TREE_MASK;
            return match tree.lookup(dir, name.as_encoded_bytes()) {
                Ok(Some(child)) if child > TREE_MASK => {
                    tracing::error!("lookup in tree inode {parent}: inode {child} out of range");
                    Err(Errno::EIO)
                }
                Ok(Some(child)) => Ok(base | child),
                Ok(None) => Err(Errno::ENOENT),
                Err(e) => Err(self.tree_errno(parent, "lookup", e)),
            };
        }
        let children = self.children(parent)?;
        children
            .iter()
            .find(|(n, _)| n == name)
            .map(|&(_, ino)| ino)
            .ok_or(Errno::ENOENT)
    }

    /// Attributes of `ino`, as stat through the mount gives them.
    pub fn stat(&self, ino: u64) -> Result<FileAttr, Errno> {
        self.attr(ino).map(|(a, _)| a)
    }

    /// Entries and directory blocks the file trees opened so far left out of their
    /// listings as damaged (each logged), so a copy can tell it is incomplete.
    pub fn left_out(&self) -> u64 {
        self.left_out.count()
    }

    /// The entries of directory `ino` (without `.` and `..`).
    pub fn list(&self, ino: u64) -> Result<Vec<(OsString, u64)>, Errno> {
        let mut out = Vec::new();
        self.each_entry(ino, 2, |child, _, _, name| {
            out.push((name.to_os_string(), child));
            false
        })?;
        Ok(out)
    }

    /// Reads file `ino` at `offset` into `buf`: the bytes read (fewer only at its end).
    pub fn read_file(&self, ino: u64, offset: u64, buf: &mut [u8]) -> Result<usize, Errno> {
        if let Some((tree, fino, _)) = self.tree_of(ino) {
            self.tree_readahead(ino, &tree, fino, offset, buf.len() as u64);
            let mut done = 0;
            while done < buf.len() {
                match tree.read(fino, offset + done as u64, &mut buf[done..]) {
                    Ok(0) => break,
                    Ok(n) => done += n,
                    Err(e) => return Err(self.tree_errno(ino, "read", e)),
                }
            }
            return Ok(done);
        }
        let img = self.image_of(ino)?;
        if offset >= img.len {
            return Ok(0);
        }
        let n = (buf.len() as u64).min(img.len - offset) as usize;
        self.readahead(ino, &img, offset, n as u64);
        match img.read_exact(offset, &mut buf[..n]) {
            Ok(()) => Ok(n),
            Err(e) => {
                tracing::error!("read failed, answering EIO: {e}");
                Err(Errno::EIO)
            }
        }
    }

    /// SEEK_DATA (`data`) or SEEK_HOLE from `offset` in file `ino`: `None` past the
    /// last data (or the end).
    pub fn seek_file(&self, ino: u64, offset: u64, data: bool) -> Result<Option<u64>, Errno> {
        if let Some((tree, fino, _)) = self.tree_of(ino) {
            return tree
                .seek(fino, offset, data)
                .map_err(|e| self.tree_errno(ino, "lseek", e));
        }
        let img = self.image_of(ino)?;
        if offset >= img.len {
            return Ok(None);
        }
        img.seek(offset, data).map_err(|e| {
            tracing::error!("lseek failed: {e}");
            Errno::EIO
        })
    }

    /// The target of symlink `ino`.
    pub fn read_link(&self, ino: u64) -> Result<Vec<u8>, Errno> {
        if let Some((tree, fino, _)) = self.tree_of(ino) {
            return tree
                .read_link(fino)
                .map_err(|e| self.tree_errno(ino, "readlink", e));
        }
        match self.kind(ino) {
            Some(Kind::Latest) => self
                .latest_target()
                .map(String::into_bytes)
                .ok_or(Errno::ENOENT),
            Some(Kind::TimeLink(t)) => Ok(format!("../{t}").into_bytes()),
            Some(_) => Err(Errno::EINVAL),
            None => Err(Errno::ENOENT),
        }
    }

    /// Whether `ino` belongs to a parsed file tree rather than to the product's own
    /// layout (points, devices, raw images), whose times are the point's, not a file's.
    pub fn in_file_tree(&self, ino: u64) -> bool {
        self.tree_of(ino).is_some()
    }

    /// The extended attributes of `ino` (names and values), as the mount lists them.
    pub fn xattrs(&self, ino: u64) -> Result<Vec<Xattr>, Errno> {
        let Some((tree, fino, _)) = self.tree_of(ino) else {
            return Ok(Vec::new());
        };
        let names = tree
            .xattr_names(fino)
            .map_err(|e| self.tree_errno(ino, "listxattr", e))?;
        let mut out = Vec::with_capacity(names.len());
        for n in names {
            match tree.xattr(fino, &n) {
                Ok(Some(v)) => out.push((n, v)),
                Ok(None) => {}
                Err(e) => return Err(self.tree_errno(ino, "getxattr", e)),
            }
        }
        Ok(out)
    }

    /// Re-reads the point list so points completed since the mount appear.
    fn refresh_points(&self) -> Arc<Vec<PointInfo>> {
        match self.cache.safe().points() {
            Ok(p) => {
                let p = Arc::new(p);
                *self.points.write().unwrap() = p.clone();
                p
            }
            Err(e) => {
                tracing::warn!("cannot re-read the point list: {e:#}");
                self.points.read().unwrap().clone()
            }
        }
    }

    fn point(&self, id: i64) -> Option<PointInfo> {
        let p = self
            .points
            .read()
            .unwrap()
            .iter()
            .find(|p| p.id == id)
            .cloned();
        p.or_else(|| self.refresh_points().iter().find(|p| p.id == id).cloned())
    }

    fn kind(&self, ino: u64) -> Option<Kind> {
        if ino >> TREE_SHIFT != 0 {
            return None;
        }
        let n = self.nodes.read().unwrap();
        n.list
            .get((ino as usize).wrapping_sub(1))
            .map(|n| n.kind.clone())
    }

    fn device(&self, point: i64, dev: i64) -> Option<Arc<PointDevice>> {
        if let Some(d) = self.devices.lock().unwrap().get(&(point, dev)) {
            return Some(d.clone());
        }
        let p = self.point(point)?;
        let d = p.devices.iter().find(|d| d.id == dev)?;
        let pd = Arc::new(PointDevice::new(
            self.cache.clone(),
            point,
            dev,
            &d.name,
            d.size,
        ));
        self.devices
            .lock()
            .unwrap()
            .insert((point, dev), pd.clone());
        Some(pd)
    }

    fn image(&self, ino: u64, point: i64, dev: i64, part: Option<u32>) -> Option<Image> {
        if let Some(i) = self.images.lock().unwrap().get(&ino) {
            return Some(i.clone());
        }
        let d = self.device(point, dev)?;
        let (start, len) = match part {
            None => (0, d.size()),
            Some(k) => {
                let t = crate::volumes::read_table(&*d).ok().flatten()?;
                let p = t.partitions.iter().find(|p| p.number == k)?;
                (p.start, p.len)
            }
        };
        let alloc = match d.data_bytes(start, start + len) {
            Ok(Some(n)) => n,
            Ok(None) => len,
            Err(e) => {
                tracing::warn!("{e}; its image is reported fully allocated");
                len
            }
        };
        let img = Image {
            src: Source::Range { dev: d, start },
            len,
            alloc,
        };
        self.images.lock().unwrap().insert(ino, img.clone());
        Some(img)
    }

    /// The image of logical volume `lv` of VG `vg` at `point`, or of its partition.
    fn lv_image(
        &self,
        ino: u64,
        point: i64,
        vg: &str,
        lv: &str,
        part: Option<u32>,
    ) -> Option<Image> {
        if let Some(i) = self.images.lock().unwrap().get(&ino) {
            return Some(i.clone());
        }
        let vol = self.lv_part(point, vg, lv, part)?;
        let len = vol.size();
        let alloc = vol.allocated().unwrap_or(len);
        let img = Image {
            src: Source::Lv(vol),
            len,
            alloc,
        };
        self.images.lock().unwrap().insert(ino, img.clone());
        Some(img)
    }

    /// The raw image an inode stands for: EINVAL for other inodes, ENOENT when its
    /// point, device or partition is gone.
    fn image_of(&self, ino: u64) -> Result<Image, Errno> {
        match self.kind(ino) {
            Some(Kind::Image { point, dev, part }) => {
                self.image(ino, point, dev, part).ok_or(Errno::ENOENT)
            }
            Some(Kind::LvImage {
                point,
                vg,
                lv,
                part,
            }) => self
                .lv_image(ino, point, &vg, &lv, part)
                .ok_or(Errno::ENOENT),
            Some(Kind::MdImage {
                point,
                dev,
                name,
                part,
            }) => {
                let found = self.point_md(point);
                let vol = found
                    .shown
                    .iter()
                    .find(|a| a.dev == dev && a.name == name)
                    .map(|a| a.data.clone());
                whole_volume(match part {
                    None => vol,
                    Some(k) => vol
                        .and_then(|v| partitions_of(&v).into_iter().find(|p| p.0 == k))
                        .map(|p| p.1),
                })
            }
            Some(Kind::LuksImage { point, dev, name }) => {
                let found = self.point_luks(point);
                let vol = found
                    .iter()
                    .find(|l| l.0 == dev && l.1 == name)
                    .map(|l| l.2.clone());
                whole_volume(vol)
            }
            _ => Err(Errno::EINVAL),
        }
    }

    /// Each device of a point and each partition on it (by number), with a name for
    /// the log.
    fn point_devices_and_parts(&self, point: i64) -> Vec<DevOrPart> {
        let mut out: Vec<DevOrPart> = Vec::new();
        let Some(p) = self.point(point) else {
            return out;
        };
        for d in &p.devices {
            let Some(pd) = self.device(point, d.id) else {
                continue;
            };
            out.push((d.id, None, format!("device {}", d.name), pd.clone()));
            if let Ok(Some(t)) = crate::volumes::read_table(&*pd) {
                for part in &t.partitions {
                    out.push((
                        d.id,
                        Some(part.number),
                        format!("device {}, partition {}", d.name, part.number),
                        Arc::new(Slice::new(pd.clone(), part.start, part.len)),
                    ));
                }
            }
        }
        out
    }

    /// The md arrays of a point: the freshest superblock of each among its devices
    /// and partitions (scanned once: points never change).
    fn point_md(&self, point: i64) -> Arc<PointMd> {
        use crate::volumes::md;
        if let Some(a) = self.md.lock().unwrap().get(&point) {
            return a.clone();
        }
        let mut arrays = md::Arrays::default();
        let mut spread: Vec<(i64, md::Member, Arc<dyn ReadAt>)> = Vec::new();
        let mut copies: Vec<(md::Member, DevOrPart)> = Vec::new();
        for (dev, part, what, vol) in self.point_devices_and_parts(point) {
            if let Ok(Some(m)) = md::member(&*vol) {
                arrays.add(&m);
                if m.spread() {
                    spread.push((dev, m, vol));
                } else {
                    copies.push((m, (dev, part, what, vol)));
                }
            }
        }
        // Members of one array, wherever they lie in the point, put together.
        let mut assembled = Vec::new();
        let mut done: Vec<[u8; 16]> = Vec::new();
        for (_, m, _) in &spread {
            if done.contains(&m.array) {
                continue;
            }
            done.push(m.array);
            let group: Vec<_> = spread.iter().filter(|x| x.1.array == m.array).collect();
            let members: Vec<(md::Member, Arc<dyn ReadAt>)> =
                group.iter().map(|x| (x.1.clone(), x.2.clone())).collect();
            let mut name = m.file_name();
            if assembled
                .iter()
                .any(|a: &(String, Vec<i64>, Arc<dyn ReadAt>)| a.0 == name)
            {
                name = format!("{name}-{}", assembled.len() + 1);
            }
            match md::assemble(&members, &arrays) {
                Ok(a) => {
                    let (missing, disks) = a.missing();
                    if missing > 0 {
                        self.warn_once(format!(
                            "point {point}, md array {name}: assembled degraded, {missing} of {disks} members missing: their chunks are rebuilt from parity or copies"
                        ));
                    }
                    let mut devs: Vec<i64> = group.iter().map(|x| x.0).collect();
                    devs.dedup();
                    assembled.push((name, devs, Arc::new(a) as Arc<dyn ReadAt>));
                }
                Err(why) => self.warn_once(format!(
                    "point {point}, md array {name}: not assembled: {why}"
                )),
            }
        }
        // Each device lists the arrays it holds members of: assembled ones, then the
        // copy each current RAID1 member holds (the member's own, read as it is).
        let mut shown: Vec<MdShown> = Vec::new();
        for (name, devs, a) in &assembled {
            for &dev in devs {
                shown.push(MdShown {
                    dev,
                    name: name.clone(),
                    at: MdAt::Assembled(name.clone()),
                    data: a.clone(),
                });
            }
        }
        let usable: Vec<(md::Member, Arc<dyn ReadAt>)> = copies
            .iter()
            .filter(|(m, _)| arrays.unusable(m).is_none())
            .map(|(m, (_, _, _, vol))| (m.clone(), m.data(vol)))
            .collect();
        for (m, (dev, part, _, vol)) in copies {
            if arrays.unusable(&m).is_some() {
                continue;
            }
            let base = m.file_name();
            let mut name = base.clone();
            for n in 2.. {
                if !shown.iter().any(|s| s.dev == dev && s.name == name) {
                    break;
                }
                name = format!("{base}-{n}");
            }
            let data =
                copy_with_others(&usable, &m, &vol, format!("point {point}, md array {name}"));
            shown.push(MdShown {
                dev,
                name,
                at: MdAt::Copy(dev, part),
                data,
            });
        }
        let found = Arc::new(PointMd {
            arrays,
            copies: usable,
            assembled,
            shown,
        });
        self.md.lock().unwrap().insert(point, found.clone());
        found
    }

    /// How to read `vol` of `point` when it is an md member ([`MdView`]); `what` names
    /// it in the log.
    fn md_view(&self, point: i64, vol: &Arc<dyn ReadAt>, what: &str) -> MdView {
        let m = match crate::volumes::md::member(&**vol) {
            Ok(Some(m)) => m,
            Ok(None) => return MdView::Plain,
            Err(e) => {
                tracing::error!("{what}: reading an md superblock: {e}");
                return MdView::Plain;
            }
        };
        if m.spread() {
            // Read through the assembled array instead.
            return MdView::NotRead;
        }
        let md = self.point_md(point);
        match md.arrays.unusable(&m) {
            Some(why) => {
                self.warn_once(format!(
                    "{what}: md member (superblock {}) {why}; its contents are not read as a filesystem or PV",
                    m.version
                ));
                MdView::NotRead
            }
            None => {
                let data = copy_with_others(&md.copies, &m, vol, format!("{what}, md array"));
                MdView::Array(data, m.name, m.offset == 0, m.array)
            }
        }
    }

    /// The volumes of a point below any encryption, each with the devices holding it:
    /// every device and partition, an md RAID1 member's array data (in place of the
    /// member: a PV at the start of a 0.90/1.0 member's data is the array's, found
    /// once) and the partitions in it, and every assembled array and its partitions
    /// (held by each member's device). Members whose copy is not the array's are left
    /// out.
    fn point_md_volumes(&self, point: i64) -> Vec<PointVol> {
        let mut found: Vec<PointVol> = Vec::new();
        // An md array's data is a volume too (an LVM PV on md, say), and so is each
        // partition in it.
        fn with_parts(
            found: &mut Vec<PointVol>,
            devs: Vec<i64>,
            what: String,
            vol: Arc<dyn ReadAt>,
            parts: bool,
            mirror: Option<[u8; 16]>,
        ) {
            if parts {
                for (k, part) in partitions_of(&vol) {
                    let what = format!("{what}, partition {k}");
                    found.push((devs.clone(), what, part, mirror));
                }
            }
            found.push((devs, what, vol, mirror));
        }
        for (dev, part, what, vol) in self.point_devices_and_parts(point) {
            match self.md_view(point, &vol, &format!("point {point}, {what}")) {
                MdView::Plain => found.push((vec![dev], what, vol, None)),
                MdView::Array(inner, name, at_start, array) => {
                    // A whole disk whose array data starts at its start: the disk's
                    // own partitions (listed already) are the array's.
                    let listed = at_start && part.is_none() && !partitions_of(&vol).is_empty();
                    let what = format!("{what}, md array {name}");
                    with_parts(&mut found, vec![dev], what, inner, !listed, Some(array))
                }
                MdView::NotRead => {}
            }
        }
        for (name, devs, a) in &self.point_md(point).assembled {
            let what = format!("md array {name}");
            with_parts(&mut found, devs.clone(), what, a.clone(), true, None);
        }
        found
    }

    /// Every volume of a point that may be a PV ([`Self::point_md_volumes`]), an
    /// opened LUKS volume's plaintext in place of its ciphertext.
    fn point_volumes(&self, point: i64) -> Vec<PointVol> {
        let mut out = Vec::new();
        for (devs, what, vol, mirror) in self.point_md_volumes(point) {
            // An opened LUKS volume (encrypted LVM, say) in place of its ciphertext.
            match self.luks_view(&vol, &format!("point {point}, {what}")) {
                LuksView::Open(plain) => out.push((devs, format!("{what}, opened"), plain, mirror)),
                LuksView::Locked => {}
                LuksView::Plain => out.push((devs, what, vol, mirror)),
            }
        }
        out
    }

    /// The LUKS volumes of a point a passphrase opened (scanned once): device, name
    /// (`luks-UUID`) and plaintext, for each of [`Self::point_md_volumes`] (an
    /// assembled array's under each member's device) and each LV (under the devices
    /// holding its extents).
    fn point_luks(&self, point: i64) -> Arc<Vec<OpenLuks>> {
        if let Some(l) = self.luks.lock().unwrap().get(&point) {
            return l.clone();
        }
        let mut out: Vec<OpenLuks> = Vec::new();
        let mut add = |devs: Vec<i64>, vol: &Arc<dyn ReadAt>| {
            if let crate::volumes::luks::Opened::Open(plain) = self.opts.keyring.open(vol) {
                // A hostile header's UUID must still make one plain file name.
                let uuid: String = plain
                    .uuid()
                    .chars()
                    .map(|c| {
                        if c.is_ascii_alphanumeric() || c == '-' {
                            c
                        } else {
                            '_'
                        }
                    })
                    .collect();
                let name = format!("luks-{uuid}");
                for dev in devs {
                    if !out.iter().any(|l| l.0 == dev && l.1 == name) {
                        out.push((dev, name.clone(), plain.clone()));
                    }
                }
            }
        };
        for (devs, _, vol, _) in self.point_md_volumes(point) {
            add(devs, &vol);
        }
        // LUKS in an LV (an encrypted LV, a VM's encrypted disk): under the devices
        // holding the LV's extents.
        let lvm = self.point_lvm(point);
        for f in &lvm.vgs {
            for lv in f.vg.lvs.iter().filter(|l| l.visible && !l.is_pool()) {
                if lv.unsupported().is_some() {
                    continue;
                }
                if let Some(vol) = self.lv_volume(point, &f.key, &lv.name) {
                    add(f.lv_devs(lv), &vol);
                }
            }
        }
        let out = Arc::new(out);
        self.luks.lock().unwrap().insert(point, out.clone());
        out
    }

    /// How to read `vol` when it may be a LUKS volume ([`LuksView`]); a locked one is
    /// logged once, `what` naming it.
    fn luks_view(&self, vol: &Arc<dyn ReadAt>, what: &str) -> LuksView {
        use crate::volumes::luks::Opened;
        match self.opts.keyring.open(vol) {
            Opened::NotLuks => LuksView::Plain,
            Opened::Open(plain) => LuksView::Open(plain),
            Opened::Locked(why) => {
                self.warn_once(format!("{what}: {why}; its contents are not shown"));
                LuksView::Locked
            }
        }
    }

    /// Logs `msg` as a warning the first time only.
    fn warn_once(&self, msg: String) {
        if self.warned.lock().unwrap().insert(msg.clone()) {
            tracing::warn!("{msg}");
        }
    }

    /// The LVM volume groups of a point (scanned once: points never change).
    fn point_lvm(&self, point: i64) -> Arc<PointLvm> {
        if let Some(l) = self.lvm.lock().unwrap().get(&point) {
            return l.clone();
        }
        use crate::volumes::lvm;
        // Every PV found: UUID, devices, volume, and the metadata it holds. The copies
        // of one PV on the current members of an md RAID1 array are one PV, held by
        // every member's device.
        let mut finds: Vec<(String, FoundPv, Option<lvm::Vg>)> = Vec::new();
        let mut mirrors: Vec<(String, [u8; 16], usize)> = Vec::new();
        for (devs, what, vol, mirror) in self.point_volumes(point) {
            let label = match lvm::read_label(&*vol) {
                Ok(Some(l)) => l,
                Ok(None) => continue,
                Err(e) => {
                    tracing::error!("point {point}, {what}: {e}");
                    continue;
                }
            };
            let vg = match lvm::read_metadata(&*vol, &label) {
                Ok(vg) => vg,
                Err(e) => {
                    tracing::error!("point {point}, {what}: {e}");
                    None
                }
            };
            if let Some(array) = mirror {
                let seen = mirrors.iter().find(|m| m.0 == label.uuid && m.1 == array);
                if let Some(&(_, _, i)) = seen {
                    finds[i].1.devs.extend(devs);
                    continue;
                }
                mirrors.push((label.uuid.clone(), array, finds.len()));
            }
            finds.push((label.uuid, FoundPv { devs, vol }, vg));
        }
        let mut ids: Vec<&str> = finds
            .iter()
            .filter_map(|f| f.2.as_ref().map(|v| v.id.as_str()))
            .collect();
        ids.sort_unstable();
        ids.dedup();
        let mut found = PointLvm::default();
        for id in ids {
            // The VG's PVs as any of its metadata copies names them, and each one's
            // copies found (a PV without metadata of its own belongs by its UUID).
            let mut uuids: Vec<&str> = finds
                .iter()
                .filter_map(|f| f.2.as_ref().filter(|v| v.id == id))
                .flat_map(|v| v.pvs.iter().map(|p| p.uuid.as_str()))
                .collect();
            uuids.sort_unstable();
            uuids.dedup();
            let copies = |uuid: &str| -> Vec<&(String, FoundPv, Option<lvm::Vg>)> {
                finds
                    .iter()
                    .filter(|f| f.0 == uuid && f.2.as_ref().is_none_or(|v| v.id == id))
                    .collect()
            };
            let newest = |chosen: &[&(String, FoundPv, Option<lvm::Vg>)]| {
                chosen
                    .iter()
                    .filter_map(|f| f.2.as_ref().filter(|v| v.id == id))
                    .max_by_key(|v| v.seqno)
                    .cloned()
            };
            let pvs_of = |chosen: &[&(String, FoundPv, Option<lvm::Vg>)]| {
                chosen
                    .iter()
                    .map(|f| {
                        let pv = FoundPv {
                            devs: f.1.devs.clone(),
                            vol: f.1.vol.clone(),
                        };
                        (f.0.clone(), pv)
                    })
                    .collect::<HashMap<_, _>>()
            };
            if uuids.iter().all(|u| copies(u).len() <= 1) {
                let chosen: Vec<_> = uuids.iter().flat_map(|u| copies(u)).collect();
                if let Some(vg) = newest(&chosen) {
                    let pvs = pvs_of(&chosen);
                    let key = vg.id.clone();
                    found.vgs.push(FoundVg {
                        key,
                        vg,
                        pvs,
                        only: None,
                    });
                }
                continue;
            }
            // Copies: each device holding one reads the VG from its own copies (the
            // one copy there is of the others).
            let mut devs: Vec<i64> = uuids
                .iter()
                .flat_map(|u| copies(u))
                .flat_map(|f| f.1.devs.iter().copied())
                .collect();
            devs.sort_unstable();
            devs.dedup();
            for dev in devs {
                let mut chosen = Vec::new();
                for u in &uuids {
                    let c = copies(u);
                    let here: Vec<_> = c.iter().filter(|f| f.1.devs.contains(&dev)).collect();
                    match (here.first(), c.len()) {
                        (Some(f), _) => chosen.push(**f),
                        (None, 1) => chosen.push(c[0]),
                        _ => {}
                    }
                }
                let Some(vg) = newest(&chosen) else {
                    continue;
                };
                self.warn_once(format!(
                    "point {point}, VG {}: its PVs are found more than once (cloned disks?); each device's LVs are read from the copies on it",
                    vg.name
                ));
                let pvs = pvs_of(&chosen);
                found.vgs.push(FoundVg {
                    key: format!("{id}@{dev}"),
                    vg,
                    pvs,
                    only: Some(dev),
                });
            }
        }
        found
            .vgs
            .sort_by(|a, b| (&a.vg.name, &a.key).cmp(&(&b.vg.name, &b.key)));
        for vg in found.vgs.iter().map(|v| &v.vg) {
            for lv in vg.lvs.iter().filter(|l| l.visible && !l.is_pool()) {
                if let Some(t) = lv.unsupported() {
                    tracing::warn!(
                        "point {point}, LV {}/{}: segment type {t} is not read; not shown",
                        vg.name,
                        lv.name
                    );
                }
            }
        }
        let found = Arc::new(found);
        self.lvm.lock().unwrap().insert(point, found.clone());
        found
    }

    /// An LV, or partition `part` of the table it holds.
    fn lv_part(
        &self,
        point: i64,
        vg: &str,
        lv: &str,
        part: Option<u32>,
    ) -> Option<Arc<dyn ReadAt>> {
        let vol = self.lv_volume(point, vg, lv)?;
        let Some(k) = part else {
            return Some(vol);
        };
        let t = crate::volumes::read_table(&*vol).ok().flatten()?;
        let p = t.partitions.iter().find(|p| p.number == k)?;
        Some(Arc::new(Slice::new(vol, p.start, p.len)))
    }

    /// Maps an LV onto the PVs of its point; `None` (logged) when it cannot be. What
    /// the mapping logs (a degraded array, a leg left out) names the point.
    fn lv_volume(&self, point: i64, vg: &str, lv: &str) -> Option<Arc<dyn ReadAt>> {
        let key = (point, vg.to_string(), lv.to_string());
        if let Some(v) = self.lv_opened.lock().unwrap().get(&key) {
            return v.clone();
        }
        let _span = tracing::warn_span!("point", id = point).entered();
        let v = self.open_lv_volume(point, vg, lv);
        self.lv_opened.lock().unwrap().put(key, v.clone());
        v
    }

    /// [`SafeFs::lv_volume`] without the cache.
    fn open_lv_volume(&self, point: i64, vg: &str, lv: &str) -> Option<Arc<dyn ReadAt>> {
        let found = self.point_lvm(point);
        let f = found.vgs.iter().find(|v| v.key == vg)?;
        let vg = &f.vg;
        let l = vg.lvs.iter().find(|l| l.name == lv)?;
        let pvs: HashMap<String, Arc<dyn ReadAt>> = f
            .pvs
            .iter()
            .map(|(k, p)| (k.clone(), p.vol.clone()))
            .collect();
        match crate::volumes::lvm::open_lv(vg, l, &pvs) {
            Ok(v) => Some(v),
            Err(e) => {
                tracing::warn!("point {point}, LV {}/{}: {e}; not shown", vg.name, l.name);
                None
            }
        }
    }

    /// Children of a directory, built on first use (the root and by-time: every time).
    fn children(&self, ino: u64) -> Result<Arc<Vec<(OsString, u64)>>, Errno> {
        let kind = self.kind(ino).ok_or(Errno::ENOENT)?;
        if !matches!(kind, Kind::Root | Kind::ByTime) {
            let n = self.nodes.read().unwrap();
            if let Some(c) = &n.list[ino as usize - 1].children {
                return Ok(c.clone());
            }
        }
        let names: Vec<(OsString, Kind)> = match &kind {
            Kind::Root => match self.opts.only_point {
                Some(p) => self.device_entries(p),
                None => {
                    let points = self.refresh_points();
                    let mut v = Vec::with_capacity(points.len() + 2);
                    if !points.is_empty() {
                        v.push(("latest".into(), Kind::Latest));
                    }
                    v.push(("by-time".into(), Kind::ByTime));
                    v.extend(
                        points
                            .iter()
                            .map(|p| (p.id.to_string().into(), Kind::Point(p.id))),
                    );
                    v
                }
            },
            Kind::ByTime => {
                let points = self.refresh_points();
                let mut v = Vec::new();
                let mut seen: HashMap<String, u32> = HashMap::new();
                for p in points.iter() {
                    let base = crate::format::utc_string(p.created);
                    let n = seen.entry(base.clone()).or_insert(0);
                    *n += 1;
                    let name = if *n == 1 { base } else { format!("{base}.{n}") };
                    v.push((name.into(), Kind::TimeLink(p.id.to_string())));
                }
                v
            }
            Kind::Point(p) => self.device_entries(*p),
            Kind::Device { point, dev } => {
                let mut v = vec![(
                    "disk.img".into(),
                    Kind::Image {
                        point: *point,
                        dev: *dev,
                        part: None,
                    },
                )];
                let mut trees = Vec::new();
                if let Some(d) = self.device(*point, *dev) {
                    let whole: Arc<dyn ReadAt> = d.clone();
                    let key = VolumeKey::Part(*point, *dev, None);
                    if let Some(root) = self.tree_root(key, whole, ino) {
                        trees.push((OsString::from("files"), root));
                    }
                    match crate::volumes::read_table(&*d) {
                        Ok(Some(t)) => {
                            for p in &t.partitions {
                                v.push((
                                    format!("part{}.img", p.number).into(),
                                    Kind::Image {
                                        point: *point,
                                        dev: *dev,
                                        part: Some(p.number),
                                    },
                                ));
                                let slice: Arc<dyn ReadAt> =
                                    Arc::new(Slice::new(d.clone(), p.start, p.len));
                                let key = VolumeKey::Part(*point, *dev, Some(p.number));
                                if let Some(root) = self.tree_root(key, slice, ino) {
                                    trees.push((format!("part{}", p.number).into(), root));
                                }
                            }
                        }
                        Ok(None) => {}
                        Err(e) => tracing::error!(
                            "point {point}, device {}: reading the partition table: {e}",
                            d.name()
                        ),
                    }
                    if !self.lvs_on(*point, *dev).is_empty() {
                        v.push((
                            "lvm".into(),
                            Kind::Lvm {
                                point: *point,
                                dev: *dev,
                            },
                        ));
                    }
                    if self.point_md(*point).shown.iter().any(|a| a.dev == *dev) {
                        v.push((
                            "md".into(),
                            Kind::Md {
                                point: *point,
                                dev: *dev,
                            },
                        ));
                    }
                    if self.point_luks(*point).iter().any(|l| l.0 == *dev) {
                        v.push((
                            "luks".into(),
                            Kind::Luks {
                                point: *point,
                                dev: *dev,
                            },
                        ));
                    }
                }
                return Ok(self.keep_listing(ino, v, trees));
            }
            Kind::Md { point, dev } => {
                let (mut v, mut trees) = (Vec::new(), Vec::new());
                let found = self.point_md(*point);
                for a in found.shown.iter().filter(|a| a.dev == *dev) {
                    v.push((
                        format!("{}.img", a.name).into(),
                        Kind::MdImage {
                            point: *point,
                            dev: *dev,
                            name: a.name.clone(),
                            part: None,
                        },
                    ));
                    // A RAID1 copy's tree is its member's (also at the member's partK/).
                    let (key, vol) = match &a.at {
                        MdAt::Copy(_, part) => {
                            let member = self
                                .point_devices_and_parts(*point)
                                .into_iter()
                                .find(|(d, p, ..)| d == dev && p == part);
                            let Some((.., member)) = member else {
                                continue;
                            };
                            (VolumeKey::Part(*point, *dev, *part), member)
                        }
                        MdAt::Assembled(_) => {
                            (VolumeKey::Md(*point, a.at.clone(), None), a.data.clone())
                        }
                    };
                    if let Some(root) = self.tree_root(key, vol, ino) {
                        trees.push((OsString::from(&a.name), root));
                    } else if !partitions_of(&a.data).is_empty() {
                        v.push((
                            OsString::from(&a.name),
                            Kind::MdParts {
                                point: *point,
                                dev: *dev,
                                name: a.name.clone(),
                            },
                        ));
                    }
                }
                return Ok(self.keep_listing(ino, v, trees));
            }
            Kind::MdParts { point, dev, name } => {
                let (mut v, mut trees) = (Vec::new(), Vec::new());
                let found = self.point_md(*point);
                if let Some(a) = found
                    .shown
                    .iter()
                    .find(|a| a.dev == *dev && &a.name == name)
                {
                    for (k, part) in partitions_of(&a.data) {
                        v.push((
                            format!("part{k}.img").into(),
                            Kind::MdImage {
                                point: *point,
                                dev: *dev,
                                name: name.clone(),
                                part: Some(k),
                            },
                        ));
                        let key = VolumeKey::Md(*point, a.at.clone(), Some(k));
                        if let Some(root) = self.tree_root(key, part, ino) {
                            trees.push((format!("part{k}").into(), root));
                        }
                    }
                }
                return Ok(self.keep_listing(ino, v, trees));
            }
            Kind::Luks { point, dev } => {
                let v = self
                    .point_luks(*point)
                    .iter()
                    .filter(|l| l.0 == *dev)
                    .map(|l| {
                        (
                            format!("{}.img", l.1).into(),
                            Kind::LuksImage {
                                point: *point,
                                dev: *dev,
                                name: l.1.clone(),
                            },
                        )
                    })
                    .collect();
                return Ok(self.keep_listing(ino, v, Vec::new()));
            }
            Kind::Lvm { point, dev } => {
                let mut v = Vec::new();
                let mut trees = Vec::new();
                for (vg, lv, name) in self.lvs_on(*point, *dev) {
                    let Some(vol) = self.lv_volume(*point, &vg, &lv) else {
                        continue;
                    };
                    let key = VolumeKey::Lv(*point, vg.clone(), lv.clone(), None);
                    if let Some(root) = self.tree_root(key, vol.clone(), ino) {
                        trees.push((OsString::from(&name), root));
                    } else if crate::volumes::read_table(&*vol).is_ok_and(|t| t.is_some()) {
                        v.push((
                            OsString::from(&name),
                            Kind::LvParts {
                                point: *point,
                                vg: vg.clone(),
                                lv: lv.clone(),
                            },
                        ));
                    }
                    v.push((
                        format!("{name}.img").into(),
                        Kind::LvImage {
                            point: *point,
                            vg,
                            lv,
                            part: None,
                        },
                    ));
                }
                return Ok(self.keep_listing(ino, v, trees));
            }
            Kind::LvParts { point, vg, lv } => {
                let (mut v, mut trees) = (Vec::new(), Vec::new());
                let vol = self.lv_volume(*point, vg, lv);
                let table = vol
                    .as_ref()
                    .and_then(|vol| crate::volumes::read_table(&**vol).ok().flatten());
                if let (Some(vol), Some(t)) = (vol, table) {
                    for p in &t.partitions {
                        v.push((
                            format!("part{}.img", p.number).into(),
                            Kind::LvImage {
                                point: *point,
                                vg: vg.clone(),
                                lv: lv.clone(),
                                part: Some(p.number),
                            },
                        ));
                        let slice: Arc<dyn ReadAt> =
                            Arc::new(Slice::new(vol.clone(), p.start, p.len));
                        let key = VolumeKey::Lv(*point, vg.clone(), lv.clone(), Some(p.number));
                        if let Some(root) = self.tree_root(key, slice, ino) {
                            trees.push((format!("part{}", p.number).into(), root));
                        }
                    }
                }
                return Ok(self.keep_listing(ino, v, trees));
            }
            _ => return Err(Errno::ENOTDIR),
        };
        let mut n = self.nodes.write().unwrap();
        let list: Vec<(OsString, u64)> = names
            .into_iter()
            .map(|(name, k)| {
                let child = n.get_or_add(k, ino);
                (name, child)
            })
            .collect();
        let list = Arc::new(list);
        if !matches!(kind, Kind::Root | Kind::ByTime) {
            n.list[ino as usize - 1].children = Some(list.clone());
        }
        Ok(list)
    }

    /// Numbers the synthetic entries of directory `ino`, appends its tree roots and
    /// keeps the listing (such directories never change).
    fn keep_listing(
        &self,
        ino: u64,
        synthetic: Vec<(OsString, Kind)>,
        trees: Vec<(OsString, u64)>,
    ) -> Arc<Vec<(OsString, u64)>> {
        let mut n = self.nodes.write().unwrap();
        let mut list: Vec<(OsString, u64)> = synthetic
            .into_iter()
            .map(|(name, k)| (name, n.get_or_add(k, ino)))
            .collect();
        list.extend(trees);
        let list = Arc::new(list);
        n.list[ino as usize - 1].children = Some(list.clone());
        list
    }

    fn device_entries(&self, point: i64) -> Vec<(OsString, Kind)> {
        self.point(point)
            .map(|p| {
                p.devices
                    .iter()
                    .map(|d| (d.name.clone().into(), Kind::Device { point, dev: d.id }))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The visible LVs with extents on device `dev` of `point`, as (VG key, LV name,
    /// device-mapper name), by name.
    fn lvs_on(&self, point: i64, dev: i64) -> Vec<(String, String, String)> {
        let found = self.point_lvm(point);
        let mut out = Vec::new();
        for f in &found.vgs {
            let vg = &f.vg;
            for lv in vg.lvs.iter().filter(|l| l.visible && !l.is_pool()) {
                if !f.lv_devs(lv).contains(&dev) {
                    continue;
                }
                let name = crate::volumes::lvm::mapper_name(&vg.name, &lv.name);
                out.push((f.key.clone(), lv.name.clone(), name));
            }
        }
        out.sort_by(|a, b| a.2.cmp(&b.2));
        out
    }

    /// Opens (once) the file tree of a device, partition or LV; returns its root's inode.
    fn tree_root(&self, key: VolumeKey, vol: Arc<dyn ReadAt>, parent: u64) -> Option<u64> {
        if let Some(r) = self.tree_ids.lock().unwrap().get(&key) {
            return *r;
        }
        let label = match &key {
            VolumeKey::Md(point, at, part) => {
                let name = match at {
                    MdAt::Assembled(name) => format!("md array {name}"),
                    MdAt::Copy(dev, p) => {
                        let dname = self
                            .device(*point, *dev)
                            .map(|d| d.name().to_string())
                            .unwrap_or_default();
                        match p {
                            Some(k) => format!("device {dname}, partition {k}, md array"),
                            None => format!("device {dname}, md array"),
                        }
                    }
                };
                match part {
                    Some(k) => format!("point {point}, {name}, partition {k}"),
                    None => format!("point {point}, {name}"),
                }
            }
            VolumeKey::Part(point, dev, part) => {
                let dname = self
                    .device(*point, *dev)
                    .map(|d| d.name().to_string())
                    .unwrap_or_default();
                match part {
                    Some(k) => format!("point {point}, device {dname}, partition {k}"),
                    None => format!("point {point}, device {dname}"),
                }
            }
            VolumeKey::Lv(point, vg, lv, part) => {
                let vgname = self
                    .point_lvm(*point)
                    .vgs
                    .iter()
                    .find(|v| &v.key == vg)
                    .map(|v| v.vg.name.clone())
                    .unwrap_or_default();
                match part {
                    Some(k) => format!("point {point}, LV {vgname}/{lv}, partition {k}"),
                    None => format!("point {point}, LV {vgname}/{lv}"),
                }
            }
        };
        let point = match &key {
            VolumeKey::Part(point, ..) | VolumeKey::Lv(point, ..) | VolumeKey::Md(point, ..) => {
                *point
            }
        };
        // A RAID1 member holds the array's filesystem (past its md superblock, or
        // before it); a stale, spare or striped member's is not the array's.
        let vol = match self.md_view(point, &vol, &label) {
            MdView::Plain => vol,
            MdView::Array(inner, ..) => inner,
            MdView::NotRead => {
                self.tree_ids.lock().unwrap().insert(key, None);
                return None;
            }
        };
        // An encrypted volume shows its plaintext's tree once a passphrase opens it.
        let vol = match self.luks_view(&vol, &label) {
            LuksView::Plain => vol,
            LuksView::Open(plain) => plain,
            LuksView::Locked => {
                self.tree_ids.lock().unwrap().insert(key, None);
                return None;
            }
        };
        // A btrfs volume spanning devices finds the others among the point's volumes,
        // an XFS its external log, an ext3/4 its external journal.
        let members = if crate::ntfs_ext::btrfs::spans_devices(&*vol)
            || crate::ntfs_ext::xfs::has_external_log(&*vol)
            || crate::ntfs_ext::ext::has_external_journal(&*vol)
        {
            let all = self.point_volumes(point).into_iter().map(|v| v.2);
            crate::ntfs_ext::Members(all.collect())
        } else {
            crate::ntfs_ext::Members::default()
        };
        let opts = TreeOptions {
            no_replay: self.opts.no_replay,
            label: label.clone(),
            uid: self.uid,
            gid: self.gid,
            show_system: self.opts.show_system,
            budget: Some(self.cache.tree_budget().clone()),
            members,
            left_out: self.left_out.clone(),
        };
        let root = match crate::ntfs_ext::open_tree(vol.clone(), &opts) {
            Ok(Some(tree)) => {
                let root = tree.root();
                let slot = Arc::new(TreeSlot {
                    tree: Mutex::new(Some(tree)),
                    parent,
                    vol,
                    opts,
                    used: AtomicU64::new(self.tree_clock.fetch_add(1, Ordering::Relaxed)),
                });
                let id = {
                    let mut trees = self.trees.write().unwrap();
                    trees.push(slot);
                    trees.len() as u64
                };
                self.close_idle_trees();
                Some(id << TREE_SHIFT | root)
            }
            Ok(None) => None,
            Err(e) => {
                tracing::error!("{label}: cannot open the filesystem: {e}");
                None
            }
        };
        self.tree_ids.lock().unwrap().insert(key, root);
        root
    }

    /// The tree and in-tree inode of a tree inode number.
    fn tree_of(&self, ino: u64) -> Option<(Arc<dyn FsTree>, u64, u64)> {
        let id = (ino >> TREE_SHIFT) as usize;
        if id == 0 {
            return None;
        }
        let slot = self.trees.read().unwrap().get(id - 1)?.clone();
        slot.used.store(
            self.tree_clock.fetch_add(1, Ordering::Relaxed),
            Ordering::Relaxed,
        );
        let mut open = slot.tree.lock().unwrap();
        if let Some(t) = &*open {
            return Some((t.clone(), ino & TREE_MASK, slot.parent));
        }
        // Reopened as first opened: the same volume and options, so the same numbers.
        let tree = match crate::ntfs_ext::open_tree(slot.vol.clone(), &slot.opts) {
            Ok(Some(t)) => t,
            Ok(None) => {
                tracing::error!("{}: the filesystem is gone on reopening", slot.opts.label);
                return None;
            }
            Err(e) => {
                tracing::error!("{}: cannot reopen the filesystem: {e}", slot.opts.label);
                return None;
            }
        };
        *open = Some(tree.clone());
        drop(open);
        self.close_idle_trees();
        Some((tree, ino & TREE_MASK, slot.parent))
    }

    /// Closes the least recently used trees beyond [`OPEN_TREES`] that may close and
    /// that no request or background job holds (clones are only made under the slot's
    /// lock, held here, so none can appear meanwhile, and no stream number can be
    /// handed out by an instance already closed).
    fn close_idle_trees(&self) {
        let trees = self.trees.read().unwrap();
        let mut open: Vec<&Arc<TreeSlot>> = trees
            .iter()
            .filter(|s| s.tree.lock().unwrap().is_some())
            .collect();
        if open.len() <= OPEN_TREES {
            return;
        }
        open.sort_by_key(|s| s.used.load(Ordering::Relaxed));
        let mut excess = open.len() - OPEN_TREES;
        for s in open {
            if excess == 0 {
                break;
            }
            let mut t = s.tree.lock().unwrap();
            if t.as_ref()
                .is_some_and(|t| Arc::strong_count(t) == 1 && t.can_close())
            {
                *t = None;
                excess -= 1;
            }
        }
    }

    fn tree_errno(&self, ino: u64, what: &str, e: std::io::Error) -> Errno {
        match e.raw_os_error() {
            Some(n) if n != libc::EIO => Errno::from_i32(n),
            _ => {
                tracing::error!(
                    "{what} of inode {} in tree {} failed, answering EIO: {e}",
                    ino & TREE_MASK,
                    ino >> TREE_SHIFT
                );
                Errno::EIO
            }
        }
    }

    fn tree_attr(&self, ino: u64) -> Result<(FileAttr, Duration), Errno> {
        let (tree, fino, _) = self.tree_of(ino).ok_or(Errno::ENOENT)?;
        let st = tree
            .stat(fino)
            .map_err(|e| self.tree_errno(ino, "stat", e))?;
        let t = |ts: crate::ntfs_ext::Timespec| {
            if ts.secs >= 0 {
                UNIX_EPOCH + Duration::new(ts.secs as u64, ts.nsecs)
            } else {
                UNIX_EPOCH - Duration::new(ts.secs.unsigned_abs(), 0) + Duration::new(0, ts.nsecs)
            }
        };
        Ok((
            FileAttr {
                ino: INodeNo(ino),
                size: st.size,
                blocks: st.blocks,
                atime: t(st.atime),
                mtime: t(st.mtime),
                ctime: t(st.ctime),
                crtime: t(st.crtime),
                kind: file_type(st.kind),
                perm: st.perm,
                nlink: st.nlink,
                uid: st.uid,
                gid: st.gid,
                rdev: st.rdev,
                blksize: 65536,
                flags: 0,
            },
            LONG_TTL,
        ))
    }

    fn attr(&self, ino: u64) -> Result<(FileAttr, Duration), Errno> {
        if ino >> TREE_SHIFT != 0 {
            return self.tree_attr(ino);
        }
        let kind = self.kind(ino).ok_or(Errno::ENOENT)?;
        // What lists or names the newest point reads the list afresh: its attributes
        // are what tells the kernel to drop the listing it kept.
        let points = match kind {
            Kind::Root | Kind::ByTime | Kind::Latest => self.refresh_points(),
            _ => self.points.read().unwrap().clone(),
        };
        let newest = points.last().map(changes_mtime);
        let mut alloc = None;
        let (ftype, perm, size, mtime, ttl) = match &kind {
            Kind::Root => {
                let t = match self.opts.only_point {
                    Some(p) => self.point(p).map(|p| changes_mtime(&p)),
                    None => newest,
                };
                (
                    FileType::Directory,
                    0o555,
                    0,
                    t.unwrap_or(self.mounted_at),
                    SHORT_TTL,
                )
            }
            Kind::ByTime => (
                FileType::Directory,
                0o555,
                0,
                newest.unwrap_or(self.mounted_at),
                SHORT_TTL,
            ),
            Kind::Latest => {
                let target = self.latest_target().ok_or(Errno::ENOENT)?;
                (
                    FileType::Symlink,
                    0o777,
                    target.len() as u64,
                    newest.unwrap_or(self.mounted_at),
                    SHORT_TTL,
                )
            }
            Kind::TimeLink(t) => {
                let p = self.point(t.parse().unwrap_or(0)).ok_or(Errno::ENOENT)?;
                (
                    FileType::Symlink,
                    0o777,
                    3 + t.len() as u64,
                    time(p.created),
                    LONG_TTL,
                )
            }
            Kind::Point(p)
            | Kind::Device { point: p, .. }
            | Kind::Lvm { point: p, .. }
            | Kind::Luks { point: p, .. }
            | Kind::Md { point: p, .. }
            | Kind::MdParts { point: p, .. }
            | Kind::LvParts { point: p, .. } => {
                let p = self.point(*p).ok_or(Errno::ENOENT)?;
                (FileType::Directory, 0o555, 0, time(p.created), LONG_TTL)
            }
            Kind::Image { point, .. }
            | Kind::LvImage { point, .. }
            | Kind::LuksImage { point, .. }
            | Kind::MdImage { point, .. } => {
                let p = self.point(*point).ok_or(Errno::ENOENT)?;
                let img = self.image_of(ino)?;
                let perm = if self.opts.allow_other { 0o400 } else { 0o444 };
                alloc = Some(img.alloc);
                (
                    FileType::RegularFile,
                    perm,
                    img.len,
                    time(p.created),
                    LONG_TTL,
                )
            }
        };
        let nlink = if ftype == FileType::Directory { 2 } else { 1 };
        Ok((
            FileAttr {
                ino: INodeNo(ino),
                size,
                blocks: alloc.unwrap_or(size).div_ceil(512),
                atime: mtime,
                mtime,
                ctime: mtime,
                crtime: mtime,
                kind: ftype,
                perm,
                nlink,
                uid: self.uid,
                gid: self.gid,
                rdev: 0,
                blksize: 65536,
                flags: 0,
            },
            ttl,
        ))
    }

    /// Calls `add(child, next offset, type, name)` for each entry of directory `ino`
    /// from `offset` on, `.` and `..` first, until it returns true (reply full).
    fn each_entry(
        &self,
        ino: u64,
        offset: u64,
        mut add: impl FnMut(u64, u64, FileType, &OsStr) -> bool,
    ) -> Result<(), Errno> {
        if let Some((tree, dir, parent)) = self.tree_of(ino) {
            let base = ino & !TREE_MASK;
            let entries = tree
                .read_dir(dir)
                .map_err(|e| self.tree_errno(ino, "readdir", e))?;
            let up = if dir == tree.root() {
                parent
            } else {
                base | tree.root()
            };
            if offset == 0 {
                walk_ahead(&tree, &entries);
            }
            for i in offset as usize..entries.len() + 2 {
                let full = match i {
                    0 => add(ino, 1, FileType::Directory, OsStr::new(".")),
                    1 => add(up, 2, FileType::Directory, OsStr::new("..")),
                    _ => {
                        let e = &entries[i - 2];
                        if e.ino > TREE_MASK {
                            // Would name a node of another tree: the parser's promise broken.
                            tracing::error!("tree inode {ino}: entry with inode {} skipped", e.ino);
                            continue;
                        }
                        add(
                            base | e.ino,
                            i as u64 + 1,
                            file_type(e.kind),
                            OsStr::from_bytes(&e.name),
                        )
                    }
                };
                if full {
                    break;
                }
            }
            return Ok(());
        }
        let children = self.children(ino)?;
        let parent = self.nodes.read().unwrap().list[ino as usize - 1].parent;
        let dots = [(OsString::from("."), ino), (OsString::from(".."), parent)];
        let all = dots.iter().chain(children.iter());
        for (i, (name, child)) in all.enumerate().skip(offset as usize) {
            let ft = match self.kind(*child) {
                Some(Kind::Latest | Kind::TimeLink(_)) => FileType::Symlink,
                Some(
                    Kind::Image { .. }
                    | Kind::LvImage { .. }
                    | Kind::LuksImage { .. }
                    | Kind::MdImage { .. },
                ) => FileType::RegularFile,
                _ => FileType::Directory, // synthetic directories and tree roots
            };
            if add(*child, i as u64 + 1, ft, name) {
                break;
            }
        }
        Ok(())
    }

    fn latest_target(&self) -> Option<String> {
        self.points.read().unwrap().last().map(|p| p.id.to_string())
    }

    /// The same for a file of a file tree (copying a database file out of `files/`):
    /// the tree maps the range ahead to the device.
    fn tree_readahead(&self, ino: u64, tree: &Arc<dyn FsTree>, fino: u64, offset: u64, len: u64) {
        let Ok(st) = tree.stat(fino) else { return };
        if st.size <= TREE_RA_MIN_FILE {
            return; // read whole in a request or two: nothing to gain, no stream to keep
        }
        if let Some(r) = self.streams.advance(ino, offset, len, st.size) {
            let tree = tree.clone();
            rayon::spawn(move || tree.prefetch(fino, r.start, r.end - r.start));
        }
    }

    /// Starts background decompression ahead of a sequential reader, so it overlaps
    /// the reader instead of stalling it.
    fn readahead(&self, ino: u64, img: &Image, offset: u64, len: u64) {
        if let Some(r) = self.streams.advance(ino, offset, len, img.len) {
            let img = img.clone();
            rayon::spawn(move || img.prefetch(r.start, r.end - r.start));
        }
    }
}

thread_local! {
    /// Each worker's reply buffer for reads, kept: a fresh zeroed MiB per read cost a
    /// memset as long as the copy it was for.
    static READ_BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Runs `f` on `n` bytes of this thread's read buffer (contents unspecified: callers
/// send only what they wrote).
fn with_read_buf<R>(n: usize, f: impl FnOnce(&mut [u8]) -> R) -> R {
    READ_BUF.with(|b| {
        let mut b = b.borrow_mut();
        if b.len() < n {
            b.resize(n, 0);
        }
        f(&mut b[..n])
    })
}

/// Subdirectories listed ahead of a walker, per listing.
const WALK_AHEAD: usize = 32;
/// Walk-ahead jobs queued at most; a walker that outruns them loses nothing.
const WALK_JOBS: usize = 4;
static WALK_QUEUED: AtomicU64 = AtomicU64::new(0);

/// A listing predicts the next ones: walkers (`find`, `tar`, `cp -r`) descend into the
/// subdirectories next. Loading the first few in the background overlaps their cold
/// reads with the walker's round trips; errors are left for the walker to meet.
fn walk_ahead(tree: &Arc<dyn FsTree>, entries: &Arc<Vec<crate::ntfs_ext::DirEntry>>) {
    if !entries.iter().any(|e| e.kind == NodeKind::Dir) {
        return;
    }
    if WALK_QUEUED.fetch_add(1, Ordering::AcqRel) >= WALK_JOBS as u64 {
        WALK_QUEUED.fetch_sub(1, Ordering::AcqRel);
        return;
    }
    let (tree, entries) = (tree.clone(), entries.clone());
    crate::background::spawn(move || {
        for e in entries
            .iter()
            .filter(|e| e.kind == NodeKind::Dir)
            .take(WALK_AHEAD)
        {
            let _ = tree.read_dir(e.ino);
        }
        WALK_QUEUED.fetch_sub(1, Ordering::AcqRel);
    });
}

fn file_type(k: NodeKind) -> FileType {
    match k {
        NodeKind::File => FileType::RegularFile,
        NodeKind::Dir => FileType::Directory,
        NodeKind::Symlink => FileType::Symlink,
        NodeKind::CharDev => FileType::CharDevice,
        NodeKind::BlockDev => FileType::BlockDevice,
        NodeKind::Fifo => FileType::NamedPipe,
        NodeKind::Socket => FileType::Socket,
    }
}

/// Attributes for an entry whose inode cannot be read: listed with its type and no
/// caching, so any use of it asks again and gets the real error.
fn unknown_attr(ino: u64, kind: FileType) -> (FileAttr, Duration) {
    let attr = FileAttr {
        ino: INodeNo(ino),
        size: 0,
        blocks: 0,
        atime: UNIX_EPOCH,
        mtime: UNIX_EPOCH,
        ctime: UNIX_EPOCH,
        crtime: UNIX_EPOCH,
        kind,
        perm: 0,
        nlink: 1,
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: 65536,
        flags: 0,
    };
    (attr, Duration::ZERO)
}

/// Answers a getxattr/listxattr size probe or data request.
fn reply_xattr(reply: ReplyXattr, size: u32, data: &[u8]) {
    if size == 0 {
        reply.size(data.len() as u32)
    } else if data.len() > size as usize {
        reply.error(Errno::ERANGE)
    } else {
        reply.data(data)
    }
}

impl fuser::Filesystem for SafeFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.set_max_readahead(1 << 20);
        let _ = config.set_max_write(1 << 20);
        let _ = config.add_capabilities(fuser::InitFlags::FUSE_MAX_PAGES);
        // Listings carry attributes: a walk that stats what it lists (`tar`, `ls -l`,
        // `cp -a`) then costs no LOOKUP per entry.
        let _ = config.add_capabilities(fuser::InitFlags::FUSE_DO_READDIRPLUS);
        // The kernel keeps every listing (no OPENDIR: its default is to cache them),
        // which suits directories that never change but not the root or `by-time`.
        // With this, a listing from the start first refreshes the directory's expired
        // attributes and drops the kept listing when its mtime moved, as theirs does
        // when a point completes (see `changes_mtime`). Files never change, so their
        // pages are never dropped by it.
        let _ = config.add_capabilities(fuser::InitFlags::FUSE_AUTO_INVAL_DATA);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self
            .lookup_child(parent.0, name)
            .and_then(|ino| self.attr(ino))
        {
            Ok((a, ttl)) => reply.entry(&ttl, &a, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.attr(ino.0) {
            Ok((a, ttl)) => reply.attr(&ttl, &a),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.read_link(ino.0) {
            Ok(t) => reply.data(&t),
            Err(e) => reply.error(e),
        }
    }

    /// Files need no handle either: ENOSYS (the kernel offers FUSE_NO_OPEN_SUPPORT)
    /// stops OPEN and RELEASE for good, and the kernel then opens every file
    /// FOPEN_KEEP_CACHE. The mount is read-only, so the VFS refuses opens for writing.
    fn open(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        reply.error(Errno::ENOSYS)
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: ReplyData,
    ) {
        with_read_buf(size as usize, |buf| {
            match self.read_file(ino.0, offset, buf) {
                Ok(n) => reply.data(&buf[..n]),
                Err(e) => reply.error(e),
            }
        })
    }

    /// SEEK_DATA and SEEK_HOLE (the kernel answers the other whences itself). Images
    /// skip the blocks the safe holds no data for, so `cp`, `qemu-img convert` and the
    /// like copy a mostly empty disk in the time its data takes; files of file trees
    /// answer from their maps. ENOSYS would end lseek calls for the whole mount, so
    /// every case answers.
    fn lseek(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        if whence != libc::SEEK_DATA && whence != libc::SEEK_HOLE {
            return reply.error(Errno::EINVAL);
        }
        // A negative offset is past any end, as the kernel's own lseek takes it.
        match self.seek_file(ino.0, offset as u64, whence == libc::SEEK_DATA) {
            Ok(Some(o)) => reply.offset(o as i64),
            Ok(None) => reply.error(Errno::ENXIO),
            Err(e) => reply.error(e),
        }
    }

    /// Nothing is ever dirty: ENOSYS stops FLUSH on every close for good.
    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: fuser::LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::ENOSYS);
    }

    /// Directories need no handle: answering ENOSYS (the kernel offers
    /// FUSE_NO_OPENDIR_SUPPORT) makes the kernel stop sending OPENDIR and RELEASEDIR,
    /// two of the five round trips `find` costs per directory, and keep the listing in
    /// its own cache (it then opens directories as FOPEN_KEEP_CACHE | FOPEN_CACHE_DIR).
    /// Type checks stay with the kernel and readdir.
    fn opendir(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        reply.error(Errno::ENOSYS)
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        match self.each_entry(ino.0, offset, |child, next, ft, name| {
            reply.add(INodeNo(child), next, ft, name)
        }) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    /// Listing with attributes: the kernel then knows every child without a LOOKUP
    /// each, which is what a tree walk (`find`, `du`, `cp -a`) asks next.
    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: fuser::ReplyDirectoryPlus,
    ) {
        match self.each_entry(ino.0, offset, |child, next, ft, name| {
            let (attr, ttl) = self.attr(child).unwrap_or_else(|_| unknown_attr(child, ft));
            reply.add(INodeNo(child), next, name, &ttl, &attr, Generation(0))
        }) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn statfs(&self, _req: &Request, ino: INodeNo, reply: ReplyStatfs) {
        if let Some((tree, _, _)) = self.tree_of(ino.0) {
            let s = tree.statfs();
            return reply.statfs(
                s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.bsize, s.namelen, s.bsize,
            );
        }
        let used: u64 = std::fs::read_dir(self.cache.safe().dir().join("packs"))
            .map(|d| {
                d.filter_map(|e| e.ok()?.metadata().ok())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0);
        let files = self.nodes.read().unwrap().list.len() as u64;
        reply.statfs(used.div_ceil(4096), 0, 0, files, 0, 4096, 255, 4096);
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let Some((tree, fino, _)) = self.tree_of(ino.0) else {
            return reply.error(Errno::NO_XATTR);
        };
        match tree.xattr(fino, name.as_encoded_bytes()) {
            Ok(Some(v)) => reply_xattr(reply, size, &v),
            Ok(None) => reply.error(Errno::NO_XATTR),
            Err(e) => reply.error(self.tree_errno(ino.0, "getxattr", e)),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let names: Vec<u8> = match self.tree_of(ino.0) {
            Some((tree, fino, _)) => match tree.xattr_names(fino) {
                Ok(list) => list
                    .into_iter()
                    .flat_map(|mut n| {
                        n.push(0);
                        n
                    })
                    .collect(),
                Err(e) => return reply.error(self.tree_errno(ino.0, "listxattr", e)),
            },
            None => Vec::new(),
        };
        reply_xattr(reply, size, &names)
    }

    fn access(&self, _req: &Request, ino: INodeNo, mask: fuser::AccessFlags, reply: ReplyEmpty) {
        if self.kind(ino.0).is_none() && self.tree_of(ino.0).is_none() {
            return reply.error(Errno::ENOENT);
        }
        if mask.contains(fuser::AccessFlags::W_OK) {
            return reply.error(Errno::EROFS);
        }
        reply.ok()
    }

    // Every write operation: read-only, always.
    fn setattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        _size: Option<u64>,
        _atime: Option<fuser::TimeOrNow>,
        _mtime: Option<fuser::TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        reply.error(Errno::EROFS)
    }
    fn mknod(
        &self,
        _r: &Request,
        _p: INodeNo,
        _n: &OsStr,
        _m: u32,
        _u: u32,
        _d: u32,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EROFS)
    }
    fn mkdir(&self, _r: &Request, _p: INodeNo, _n: &OsStr, _m: u32, _u: u32, reply: ReplyEntry) {
        reply.error(Errno::EROFS)
    }
    fn unlink(&self, _r: &Request, _p: INodeNo, _n: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS)
    }
    fn rmdir(&self, _r: &Request, _p: INodeNo, _n: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS)
    }
    fn symlink(
        &self,
        _r: &Request,
        _p: INodeNo,
        _n: &OsStr,
        _t: &std::path::Path,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EROFS)
    }
    fn rename(
        &self,
        _r: &Request,
        _p: INodeNo,
        _n: &OsStr,
        _np: INodeNo,
        _nn: &OsStr,
        _f: fuser::RenameFlags,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::EROFS)
    }
    fn link(&self, _r: &Request, _i: INodeNo, _p: INodeNo, _n: &OsStr, reply: ReplyEntry) {
        reply.error(Errno::EROFS)
    }
    fn write(
        &self,
        _r: &Request,
        _i: INodeNo,
        _fh: FileHandle,
        _o: u64,
        _d: &[u8],
        _wf: fuser::WriteFlags,
        _f: OpenFlags,
        _l: Option<fuser::LockOwner>,
        reply: fuser::ReplyWrite,
    ) {
        reply.error(Errno::EROFS)
    }
    fn create(
        &self,
        _r: &Request,
        _p: INodeNo,
        _n: &OsStr,
        _m: u32,
        _u: u32,
        _f: i32,
        reply: fuser::ReplyCreate,
    ) {
        reply.error(Errno::EROFS)
    }
    fn setxattr(
        &self,
        _r: &Request,
        _i: INodeNo,
        _n: &OsStr,
        _v: &[u8],
        _f: i32,
        _p: u32,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::EROFS)
    }
    fn removexattr(&self, _r: &Request, _i: INodeNo, _n: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS)
    }
    /// No ioctls are served; answering ENOTTY quietly (as a regular file does for
    /// isatty's TCGETS) keeps fuser from logging every probe.
    fn ioctl(
        &self,
        _r: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _flags: fuser::IoctlFlags,
        cmd: u32,
        _in: &[u8],
        out: u32,
        reply: fuser::ReplyIoctl,
    ) {
        // lsattr's FS_IOC_GETFLAGS (the kernel asks it with a 4-byte answer, as
        // ext4 gives); nothing else is answered.
        let getflags = [libc::FS_IOC_GETFLAGS as u32, libc::FS_IOC32_GETFLAGS as u32];
        if !getflags.contains(&cmd) {
            return reply.error(Errno::ENOTTY);
        }
        let Some((tree, fino, _)) = self.tree_of(ino.0) else {
            return reply.error(Errno::ENOTTY);
        };
        match tree.flags(fino) {
            Ok(Some(f)) => reply.ioctl(0, &f.to_ne_bytes()[..(out as usize).min(4)]),
            Ok(None) => reply.error(Errno::ENOTTY),
            Err(e) => reply.error(self.tree_errno(ino.0, "ioctl", e)),
        }
    }
    fn fallocate(
        &self,
        _r: &Request,
        _i: INodeNo,
        _fh: FileHandle,
        _o: u64,
        _l: u64,
        _m: i32,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::EROFS)
    }
}
