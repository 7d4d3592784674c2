//! NTFS as an [`FsTree`]: $MFT records with fixups and attribute lists, resident and
//! non-resident data (sparse, LZNT1-compressed, partly initialized), $I30 directory
//! B+ trees, hard links, reparse points and Interix special files, and alternate data
//! streams (as `user.*` xattrs and `FILE:STREAM` paths).
//!
//! Volumes are shown as recorded: $LogFile is not replayed (a dirty volume is logged).

mod alloc;
mod huffman;
mod index;
mod lznt1;
mod lzx;
pub(crate) mod names;
mod record;
mod reparse;
mod xpress;

use std::collections::{HashMap, HashSet};
use std::io;
use std::sync::{Arc, Mutex, OnceLock};

use crate::cache::{Weigh, WeightedLru};
use crate::ntfs_ext::corrupt;
use crate::ntfs_ext::tree::{DirEntry, FsTree, NodeKind, Stat, StatFs, Timespec, TreeOptions};
use crate::readat::ReadAt;
use index::{fattr, ns, Entry, FileName};
use names::UpCase;
use record::{aflag, mref, mseq, ty, Attr, Body, Boot, Record, Run};
use reparse::{Interix, Reparse, WofAlgorithm};

pub use alloc::free_ranges;

/// Record number of the root directory.
const ROOT: u64 = 5;
/// Records below this are the volume's own metadata files.
const FIRST_USER: u64 = 16;
/// Record of `$Secure` (security descriptors shared by id).
const SECURE: u64 = 9;
/// Record of `$Extend` (the directory of `$ObjId`, `$Reparse`, `$UsnJrnl`).
const EXTEND: u64 = 11;
/// Inode numbers at or above this name alternate data streams (see `StreamTable`).
const STREAM_BIT: u64 = 1 << 39;
/// Per-volume cache caps (bytes) without a shared budget; under one (a mount's),
/// the budget bounds them instead.
const NODE_CACHE: usize = 4 << 20;
const INDEX_CACHE: usize = 4 << 20;
const DIR_CACHE: usize = 8 << 20;
const UNIT_CACHE: usize = 4 << 20;
/// The named stream holding a WOF-compressed file's data, in UTF-16.
const WOF_STREAM: &[u16] = &names::ascii_utf16(b"WofCompressedData");
/// Largest value read whole for metadata (attribute lists, reparse data).
const MAX_META: u64 = 1 << 20;
/// Most extension records one file may spread over.
const MAX_EXTENSIONS: usize = 65_536;
/// Largest compression unit accepted.
const MAX_UNIT: u64 = 4 << 20;
/// Largest stream served as an xattr value (the kernel's limit).
const MAX_XATTR: u64 = 65_536;
/// Levels a view index lookup descends at most: a B+ tree of 4 KiB nodes holding
/// billions of keys is a handful deep, so more means a loop.
const MAX_INDEX_DEPTH: usize = 32;
/// How much of $MFT is warmed in the background when a volume opens.
const MFT_WARM: u64 = 64 << 20;
/// Separate ranges hinted at most by the index warm-up at open.
const WARM_RANGES: usize = 2048;
/// How much of a directory's index allocation is fetched in one batch before walking.
const INDEX_WARM: u64 = 32 << 20;

/// True when the volume carries an NTFS boot sector.
pub fn probe(dev: &dyn ReadAt) -> io::Result<bool> {
    if dev.size() < 512 {
        return Ok(false);
    }
    let mut b = [0u8; 16];
    dev.read_exact_at(0, &mut b)?;
    Ok(record::is_ntfs(&b))
}

/// The volume read through its backup boot sector when its own first sector is
/// unreadable, damaged (`why` says how it failed) or wiped: the copy mkntfs and
/// Windows keep in the volume's last sector (512 or 4096 bytes), checked by its
/// signature, its geometry and a sector count that ends the volume just before it,
/// as a repair would copy it back (in memory here). `None` when no
/// such copy is there or the first sector holds something else.
pub fn open_backup(
    dev: &Arc<dyn ReadAt>,
    opts: &TreeOptions,
    why: &str,
) -> Option<io::Result<Arc<NtfsFs>>> {
    let size = dev.size();
    if !super::start_gone_or_ours(&**dev, |b| record::is_ntfs(b), true) {
        return None;
    }
    for ss in [512u64, 4096] {
        let Some(at) = size.checked_sub(ss).filter(|&a| a >= ss) else {
            continue;
        };
        let mut b = [0u8; 512];
        if dev.read_exact_at(at, &mut b).is_err() || Boot::parse(&b).is_err() {
            continue;
        }
        let sectors = u64::from_le_bytes(b[0x28..0x30].try_into().unwrap());
        let ends = sectors
            .checked_mul(ss)
            .filter(|&e| e <= at && at - e < 1 << 20);
        if u16::from_le_bytes([b[0x0B], b[0x0C]]) as u64 != ss || ends.is_none() {
            continue;
        }
        tracing::warn!(
            "{}: NTFS boot sector unusable ({why}); read through its backup in the volume's last sector (byte {at})",
            opts.label
        );
        let patched = crate::readat::Patched::new(dev.clone(), vec![(0, b.to_vec())]);
        return Some(NtfsFs::open(Arc::new(patched), opts));
    }
    None
}

/// Records $MFTMirr keeps a copy of ($MFT, $MFTMirr, $LogFile, $Volume).
const MIRRORED: u64 = 4;

/// MFT record `n` (below [`MIRRORED`]) as $MFTMirr keeps it: what Windows and ntfs-3g
/// fall back on when $MFT's own copy is unreadable or torn.
fn mirror_record(dev: &dyn ReadAt, boot: &Boot, n: u64) -> io::Result<Record> {
    let rs = boot.record_size as u64;
    let at = boot
        .mft_mirr_lcn
        .checked_mul(boot.cluster_size)
        .and_then(|a| a.checked_add(n * rs))
        .ok_or_else(|| corrupt("boot sector: $MFTMirr location overflows"))?;
    let mut buf = vec![0u8; rs as usize];
    dev.read_exact_at(at, &mut buf)?;
    record::apply_fixups(&mut buf, b"FILE", &|| format!("$MFTMirr record {n}"))?;
    Record::parse(&buf, n)
}

/// Where a stream's bytes are.
#[derive(Debug, Clone)]
enum Data {
    Resident(Arc<Vec<u8>>),
    Mapped(Arc<Mapped>),
    /// Fragments that do not fit together; reads fail with this reason.
    Broken(String),
}

#[derive(Debug)]
struct Mapped {
    runs: Vec<Run>,
    size: u64,
    init: u64,
    alloc: u64,
    /// log2 clusters per compression unit, when LZNT1-compressed.
    comp_unit: Option<u8>,
    used: u64,
}

impl Data {
    fn size(&self) -> u64 {
        match self {
            Data::Resident(v) => v.len() as u64,
            Data::Mapped(m) => m.size,
            Data::Broken(_) => 0,
        }
    }
    fn blocks(&self) -> u64 {
        match self {
            Data::Mapped(m) => m.used.div_ceil(512),
            _ => 0,
        }
    }
    fn weight(&self) -> usize {
        match self {
            Data::Resident(v) => v.len(),
            Data::Mapped(m) => m.runs.len() * 24,
            Data::Broken(s) => s.len(),
        }
    }
}

#[derive(Debug)]
struct Stream {
    name: Vec<u16>,
    data: Data,
}

/// One file as parsed from its base record and extension records.
#[derive(Debug)]
struct Node {
    rec: u64,
    seq: u16,
    dir: bool,
    /// Creation, data change, MFT change, access (NTFS time).
    times: [u64; 4],
    attrs: u32,
    names: Vec<FileName>,
    /// $DATA streams; the unnamed one has an empty name.
    streams: Vec<Stream>,
    index_root: Option<Vec<u8>>,
    index_alloc: Option<Data>,
    kind: NodeKind,
    target: Option<Vec<u8>>,
    rdev: u32,
    /// Why the data cannot be read (encrypted, WIMBoot, dedup).
    opaque: Option<Opaque>,
    /// WOF-compressed ("Compact OS"): how the chunks of the `WofCompressedData`
    /// stream that hold the unnamed stream's data are compressed.
    wof: Option<WofAlgorithm>,
    vol_flags: Option<u16>,
}

/// Why a file's data cannot be decoded, and whether that covers its named streams too
/// (EFS encrypts every stream; WOF and dedup move only the unnamed one).
#[derive(Debug)]
struct Opaque {
    why: String,
    every_stream: bool,
}

/// A WOF file's `WofCompressedData` stream, as [`NtfsFs::wof_view`] checked it.
struct WofView<'a> {
    /// Record and stream index, for [`NtfsFs::read_data`].
    key: (u64, usize),
    data: &'a Data,
    alg: WofAlgorithm,
    chunk: u64,
    size: u64,
    /// Bytes per table entry, and of the whole table.
    entry: u64,
    table: u64,
}

impl Node {
    fn stream(&self, name: &[u16]) -> Option<(usize, &Stream)> {
        self.streams
            .iter()
            .enumerate()
            .find(|(_, s)| s.name == name)
    }

    /// The stream a file inode's data comes from: the named one it stands for, or the
    /// unnamed one.
    fn data_index(&self, stream: Option<usize>) -> Option<usize> {
        stream.or_else(|| self.stream(&[]).map(|(i, _)| i))
    }

    /// Why `stream` (`None`: the unnamed one) cannot be decoded, if it cannot.
    fn opaque_for(&self, stream: Option<usize>) -> Option<&Opaque> {
        self.opaque
            .as_ref()
            .filter(|o| stream.is_none() || o.every_stream)
    }
}

impl Weigh for Arc<Node> {
    fn weight(&self) -> usize {
        256 + self
            .names
            .iter()
            .map(|n| n.name.len() * 2 + 48)
            .sum::<usize>()
            + self
                .streams
                .iter()
                .map(|s| s.data.weight() + 48)
                .sum::<usize>()
            + self.index_root.as_ref().map_or(0, |v| v.len())
    }
}

struct Listing {
    entries: Arc<Vec<DirEntry>>,
    /// Indexes into `entries`, sorted by name: a name map costing 4 bytes an entry
    /// rather than a second copy of every name.
    by_name: Vec<u32>,
}

impl Listing {
    fn new(entries: Vec<DirEntry>) -> Listing {
        let mut by_name: Vec<u32> = (0..entries.len() as u32).collect();
        by_name.sort_unstable_by(|&a, &b| entries[a as usize].name.cmp(&entries[b as usize].name));
        Listing {
            entries: Arc::new(entries),
            by_name,
        }
    }

    fn get(&self, name: &[u8]) -> Option<u64> {
        let i = self
            .by_name
            .binary_search_by(|&i| self.entries[i as usize].name.as_slice().cmp(name))
            .ok()?;
        Some(self.entries[self.by_name[i] as usize].ino)
    }
}

impl Weigh for Arc<Listing> {
    fn weight(&self) -> usize {
        64 + self
            .entries
            .iter()
            .map(|e| e.name.len() + 52)
            .sum::<usize>()
    }
}

/// Parsed entries of one index node.
struct IndexNode(Vec<Entry>);

impl Weigh for Arc<IndexNode> {
    fn weight(&self) -> usize {
        64 + self
            .0
            .iter()
            .map(|e| 64 + e.key.as_ref().map_or(0, |k| k.name.len() * 2))
            .sum::<usize>()
    }
}

/// Inode numbers handed out for `FILE:STREAM` lookups.
#[derive(Default)]
struct StreamTable {
    ids: HashMap<(u64, Vec<u16>), u64>,
    list: Vec<(u64, Vec<u16>)>,
}

/// An open NTFS volume.
pub struct NtfsFs {
    dev: Arc<dyn ReadAt>,
    boot: Boot,
    label: String,
    /// Where listings count entries left out as damaged.
    left_out: crate::ntfs_ext::LeftOut,
    uid: u32,
    gid: u32,
    show_system: bool,
    mft: Arc<Mapped>,
    records: u64,
    upcase: UpCase,
    nodes: WeightedLru<u64, Arc<Node>>,
    index_nodes: WeightedLru<(u64, u64), Arc<IndexNode>>,
    dirs: WeightedLru<u64, Arc<Listing>>,
    units: WeightedLru<(u64, usize, u64), Arc<Vec<u8>>>,
    streams: Mutex<StreamTable>,
    logged: Mutex<HashSet<String>>,
    free_clusters: OnceLock<u64>,
    /// The mount's shared cache budget, which bounds the warm-ups.
    budget: Option<Arc<crate::cache::Budget>>,
}

fn ntfs_time(t: u64) -> Timespec {
    const EPOCH_DIFF: i64 = 11_644_473_600;
    Timespec {
        secs: (t / 10_000_000) as i64 - EPOCH_DIFF,
        nsecs: (t % 10_000_000) as u32 * 100,
    }
}

/// Joins the fragments of one attribute (one per record holding a VCN range).
fn merge(frags: &[&Attr]) -> Data {
    if let [a] = frags {
        if let Body::Resident(v) = &a.body {
            return Data::Resident(Arc::new(v.clone()));
        }
    }
    let mut nr: Vec<(&Attr, &record::NonResident)> = Vec::new();
    for a in frags {
        match &a.body {
            Body::NonResident(n) => nr.push((a, n)),
            Body::Resident(_) => {
                return Data::Broken("resident and non-resident fragments mixed".into())
            }
        }
    }
    nr.sort_by_key(|(_, n)| n.lowest_vcn);
    let Some(&(first_attr, first)) = nr.first() else {
        return Data::Broken("no fragments".into());
    };
    if first.lowest_vcn != 0 {
        return Data::Broken("the first fragment is missing".into());
    }
    let mut runs: Vec<Run> = Vec::new();
    let mut next = 0u64;
    for (_, n) in &nr {
        if n.lowest_vcn != next {
            return Data::Broken(format!(
                "runlist fragments do not join (VCN {} expected, {} found)",
                next, n.lowest_vcn
            ));
        }
        runs.extend_from_slice(&n.runs);
        next = runs.last().map_or(next, |r| r.vcn + r.len);
        if n.highest_vcn.checked_add(1) > Some(next) && n.runs.is_empty() {
            next = n.highest_vcn + 1;
        }
    }
    let compressed = first_attr.flags & aflag::COMPRESSED != 0 && first.comp_unit > 0;
    Data::Mapped(Arc::new(Mapped {
        runs,
        size: first.data_size,
        init: first.init_size.min(first.data_size),
        alloc: first.alloc_size,
        comp_unit: compressed.then_some(first.comp_unit),
        used: first.compressed_size.unwrap_or(first.alloc_size),
    }))
}

impl NtfsFs {
    /// Opens the volume: boot sector, $MFT (with its own attribute list), $UpCase,
    /// $Volume's dirty flag and the root directory.
    pub fn open(dev: Arc<dyn ReadAt>, opts: &TreeOptions) -> io::Result<Arc<NtfsFs>> {
        let mut b = [0u8; 512];
        dev.read_exact_at(0, &mut b)?;
        let boot = Boot::parse(&b)?;
        let mft = Self::bootstrap_mft(&*dev, &boot)?;
        let records = (mft.size / boot.record_size as u64).min(STREAM_BIT);
        let mut fs = NtfsFs {
            dev,
            boot,
            label: opts.label.clone(),
            left_out: opts.left_out.clone(),
            uid: opts.uid,
            gid: opts.gid,
            show_system: opts.show_system,
            mft: Arc::new(mft),
            records,
            upcase: UpCase::fallback(),
            nodes: WeightedLru::with_budget(NODE_CACHE, opts.budget.clone()),
            index_nodes: WeightedLru::with_budget(INDEX_CACHE, opts.budget.clone()),
            dirs: WeightedLru::with_budget(DIR_CACHE, opts.budget.clone()),
            units: WeightedLru::with_budget(UNIT_CACHE, opts.budget.clone()),
            streams: Mutex::new(StreamTable::default()),
            logged: Mutex::new(HashSet::new()),
            free_clusters: OnceLock::new(),
            budget: opts.budget.clone(),
        };
        match fs.load_upcase() {
            Ok(u) => fs.upcase = u,
            Err(e) => tracing::warn!(
                "{}: $UpCase unreadable ({e}); ordering names with Unicode's own case table",
                fs.label
            ),
        }
        match fs.node(3) {
            Ok(v) if v.vol_flags.is_some_and(|f| f & 1 != 0) => tracing::warn!(
                "{}: NTFS volume was not cleanly unmounted (dirty flag set); shown as recorded, \
                 $LogFile not replayed",
                fs.label
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!("{}: $Volume unreadable: {e}", fs.label),
        }
        let root = fs.node(ROOT)?;
        if !root.dir {
            return Err(corrupt("NTFS root record is not a directory"));
        }
        let fs = Arc::new(fs);
        // Walks touch records all over $MFT and then every directory's index, and
        // stat what they list. Off the caller's path: one job fetches the first part
        // of $MFT in one sequential batch, then the index allocations it names, then
        // builds listings; another parses the files of those records as their blocks
        // arrive.
        if fs.dev.prefetches() {
            let (fetcher, parser) = (fs.clone(), fs.clone());
            crate::background::spawn(move || {
                let f = fetcher;
                prefetch_runs(&*f.dev, f.boot.cluster_size, &f.mft.runs, MFT_WARM);
                let dirs = f.warm_indexes();
                f.warm_listings(&dirs);
            });
            crate::background::spawn(move || parser.warm_nodes());
        }
        Ok(fs)
    }

    /// Reads record 0 straight from the boot sector's location and follows its
    /// attribute list, so a fragmented $MFT maps completely.
    fn bootstrap_mft(dev: &dyn ReadAt, boot: &Boot) -> io::Result<Mapped> {
        let rs = boot.record_size as usize;
        let at = boot
            .mft_lcn
            .checked_mul(boot.cluster_size)
            .ok_or_else(|| corrupt("boot sector: $MFT location overflows"))?;
        let mut buf = vec![0u8; rs];
        let own = dev
            .read_exact_at(at, &mut buf)
            .and_then(|()| record::apply_fixups(&mut buf, b"FILE", &|| "MFT record 0".into()))
            .and_then(|()| Record::parse(&buf, 0));
        let rec0 = match own {
            Ok(r) => r,
            Err(e) => match mirror_record(dev, boot, 0) {
                Ok(r) => {
                    tracing::warn!("{e}; read from $MFTMirr instead");
                    r
                }
                Err(_) => return Err(e),
            },
        };
        let unnamed_data = |r: &Record, vcn: u64| -> Option<record::NonResident> {
            r.attrs.iter().find_map(|a| match &a.body {
                Body::NonResident(n)
                    if a.ty == ty::DATA && a.name.is_empty() && n.lowest_vcn == vcn =>
                {
                    Some(n.clone())
                }
                _ => None,
            })
        };
        let first = unnamed_data(&rec0, 0).ok_or_else(|| corrupt("$MFT has no data runlist"))?;
        let mut m = Mapped {
            runs: first.runs.clone(),
            size: first.data_size,
            init: first.init_size.min(first.data_size),
            alloc: first.alloc_size,
            comp_unit: None,
            used: first.alloc_size,
        };
        let Some(list_attr) = rec0.attrs.iter().find(|a| a.ty == ty::ATTRIBUTE_LIST) else {
            return Ok(m);
        };
        let list = attr_value(dev, boot.cluster_size, list_attr)?;
        let mut frags: Vec<_> = record::parse_attr_list(&list)?
            .into_iter()
            .filter(|e| e.ty == ty::DATA && e.name.is_empty() && e.record != 0 && e.lowest_vcn > 0)
            .collect();
        frags.sort_by_key(|e| e.lowest_vcn);
        for e in frags.iter().take(MAX_EXTENSIONS) {
            let next = m.runs.last().map_or(0, |r| r.vcn + r.len);
            if e.lowest_vcn != next {
                return Err(corrupt(format!(
                    "$MFT runlist fragments do not join (VCN {next} expected, {} found)",
                    e.lowest_vcn
                )));
            }
            let off = e
                .record
                .checked_mul(rs as u64)
                .ok_or_else(|| corrupt("$MFT extension record number overflows"))?;
            read_runs(dev, boot.cluster_size, &m.runs, off, &mut buf)?;
            record::apply_fixups(&mut buf, b"FILE", &|| format!("MFT record {}", e.record))?;
            let r = Record::parse(&buf, e.record)?;
            let frag = unnamed_data(&r, e.lowest_vcn).ok_or_else(|| {
                corrupt(format!("MFT record {} lacks its $MFT fragment", e.record))
            })?;
            m.runs.extend_from_slice(&frag.runs);
        }
        Ok(m)
    }

    fn load_upcase(&self) -> io::Result<UpCase> {
        let n = self.node(10)?;
        let (_, s) = n
            .stream(&[])
            .ok_or_else(|| corrupt("$UpCase has no data"))?;
        let mut v = vec![0u8; 131_072];
        self.read_data(&s.data, (10, 0), 0, &mut v)?;
        UpCase::from_bytes(&v).ok_or_else(|| corrupt("$UpCase is too short"))
    }

    fn warn_once(&self, key: String, msg: impl FnOnce() -> String) {
        if self.logged.lock().unwrap().insert(key) {
            tracing::warn!("{}: {}", self.label, msg());
        }
    }

    /// Reads and fixes up MFT record `n`.
    fn record(&self, n: u64) -> io::Result<Record> {
        if n >= self.records {
            return Err(corrupt(format!(
                "MFT record {n} is past the end of $MFT ({} records)",
                self.records
            )));
        }
        let rs = self.boot.record_size as u64;
        let mut buf = vec![0u8; rs as usize];
        if (n + 1) * rs > self.mft.init {
            return Err(corrupt(format!(
                "MFT record {n} lies past $MFT's initialized size"
            )));
        }
        let own = read_runs(
            &*self.dev,
            self.boot.cluster_size,
            &self.mft.runs,
            n * rs,
            &mut buf,
        )
        .and_then(|()| record::apply_fixups(&mut buf, b"FILE", &|| format!("MFT record {n}")))
        .and_then(|()| Record::parse(&buf, n));
        match own {
            Err(e) if n < MIRRORED => match mirror_record(&*self.dev, &self.boot, n) {
                Ok(r) => {
                    tracing::warn!("{}: {e}; read from $MFTMirr instead", self.label);
                    Ok(r)
                }
                Err(_) => Err(e),
            },
            r => r,
        }
    }

    /// The parsed file of base record `n` (cached).
    fn node(&self, n: u64) -> io::Result<Arc<Node>> {
        if let Some(x) = self.nodes.get(&n) {
            return Ok(x);
        }
        let node = Arc::new(self.load_node(n)?);
        self.nodes.put(n, node.clone());
        Ok(node)
    }

    /// Calls `f` with each in-use base record (parsed, fixups applied) among the first
    /// [`MFT_WARM`] bytes of $MFT, or each directory's with `dirs_only`, until `f`
    /// returns false. For warm-ups: what is unreadable or damaged is skipped, and met
    /// again by the reads proper.
    fn scan_records(&self, dirs_only: bool, mut f: impl FnMut(u64, Record) -> bool) {
        let (rs, cs) = (self.boot.record_size as usize, self.boot.cluster_size);
        let limit = MFT_WARM.min(self.mft.init) as usize / rs * rs;
        let want = if dirs_only { 3 } else { 1 };
        let mut chunk = vec![0u8; (1 << 20) / rs * rs];
        let mut off = 0usize;
        while off < limit {
            let len = chunk.len().min(limit - off);
            if read_runs(
                &*self.dev,
                cs,
                &self.mft.runs,
                off as u64,
                &mut chunk[..len],
            )
            .is_err()
            {
                return;
            }
            for (i, rec) in chunk[..len].chunks_exact_mut(rs).enumerate() {
                let n = ((off / rs) + i) as u64;
                // Flags and base reference lie in the first sector, which fixups leave
                // alone: records are filtered before being fixed up and parsed.
                let pick = record::le16(rec, 0x16).is_ok_and(|f| f & want == want)
                    && record::le64(rec, 0x20).is_ok_and(|b| mref(b) == 0);
                if !pick || record::apply_fixups(rec, b"FILE", &String::new).is_err() {
                    continue;
                }
                if let Ok(r) = Record::parse(rec, n) {
                    if !f(n, r) {
                        return;
                    }
                }
            }
            off += len;
        }
    }

    /// True while speculative loads may still fill the tree caches: up to half the
    /// mount's budget, leaving the rest to what walks really ask for.
    fn room_to_warm(&self) -> bool {
        self.budget
            .as_ref()
            .is_some_and(|b| b.used() < b.limit() / 2)
    }

    /// Hints the device to fetch the index allocations ($I30) of the directories among
    /// the first [`MFT_WARM`] bytes of $MFT, up to [`INDEX_WARM`] bytes in all, and
    /// returns those directories' record numbers.
    fn warm_indexes(&self) -> Vec<u64> {
        let cs = self.boot.cluster_size;
        let (mut spans, mut dirs, mut left) = (Vec::new(), Vec::new(), INDEX_WARM);
        self.scan_records(true, |n, r| {
            dirs.push(n);
            for a in &r.attrs {
                if let (ty::INDEX_ALLOCATION, Body::NonResident(nr)) = (a.ty, &a.body) {
                    run_spans(cs, &nr.runs, &mut left, &mut spans);
                }
            }
            left > 0
        });
        crate::ntfs_ext::prefetch_spans(&*self.dev, spans, WARM_RANGES);
        dirs
    }

    /// Builds the listings of directories `dirs` (in $MFT order, roughly the order a
    /// walk meets them) while there is room: a walk then finds most listings made.
    fn warm_listings(&self, dirs: &[u64]) {
        let started = std::time::Instant::now();
        let mut built = 0usize;
        for &n in dirs {
            if !self.room_to_warm() {
                break;
            }
            if self.dirs.contains(&n) {
                continue;
            }
            if let Ok(node) = self.node(n) {
                if node.kind == NodeKind::Dir && self.listing(&node).is_ok() {
                    built += 1;
                }
            }
        }
        tracing::debug!(
            "{}: listed {built} of {} directories ahead in {:?}",
            self.label,
            dirs.len(),
            started.elapsed()
        );
    }

    /// Parses the files among the first [`MFT_WARM`] bytes of $MFT into the node cache
    /// while there is room: a walk's replies then carry attributes without parsing a
    /// record each on the reader's time (a cold `find` spent a quarter of its time
    /// there). Runs beside the $MFT fetch, parsing records as their blocks arrive.
    fn warm_nodes(&self) {
        let started = std::time::Instant::now();
        let mut parsed = 0usize;
        let mut full = false;
        self.scan_records(false, |n, r| {
            full = !self.room_to_warm();
            if !full && !self.nodes.contains(&n) {
                if let Ok(node) = self.node_of(n, r) {
                    self.nodes.put(n, Arc::new(node));
                    parsed += 1;
                }
            }
            !full
        });
        tracing::debug!(
            "{}: parsed {parsed} files ahead in {:?} ({})",
            self.label,
            started.elapsed(),
            if full {
                "half the cache budget is used"
            } else {
                "done"
            }
        );
    }

    fn load_node(&self, n: u64) -> io::Result<Node> {
        self.node_of(n, self.record(n)?)
    }

    /// The file whose base record `rec` (number `n`) is, its attributes assembled.
    fn node_of(&self, n: u64, rec: Record) -> io::Result<Node> {
        let (seq, dir_flag) = (rec.seq, rec.flags & 2 != 0);
        let attrs = self.attrs_of(n, rec)?;
        self.assemble(n, seq, dir_flag, &attrs)
    }

    /// Every attribute of the file whose base record `rec` (number `n`) is, its
    /// attribute list followed into extension records.
    fn attrs_of(&self, n: u64, rec: Record) -> io::Result<Vec<Attr>> {
        if rec.flags & 1 == 0 {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("MFT record {n} is not in use"),
            ));
        }
        if rec.base != 0 {
            return Err(corrupt(format!(
                "MFT record {n} is an extension of record {}",
                rec.base
            )));
        }
        let mut attrs = rec.attrs;
        if let Some(al) = attrs.iter().find(|a| a.ty == ty::ATTRIBUTE_LIST) {
            let v = attr_value(&*self.dev, self.boot.cluster_size, al)?;
            let mut exts: Vec<u64> = Vec::new();
            let mut seen = HashSet::new();
            for e in record::parse_attr_list(&v)? {
                if e.record != n && seen.insert(e.record) {
                    exts.push(e.record);
                }
            }
            if exts.len() > MAX_EXTENSIONS {
                return Err(corrupt(format!(
                    "MFT record {n}: attribute list names {} records",
                    exts.len()
                )));
            }
            let mut more = Vec::new();
            for x in exts {
                let r = self.record(x)?;
                if r.flags & 1 == 0 || r.base != n {
                    return Err(corrupt(format!(
                        "MFT record {n}: attribute list points at record {x}, which is not its extension"
                    )));
                }
                more.extend(r.attrs);
            }
            attrs.extend(more);
        }
        Ok(attrs)
    }

    fn assemble(&self, n: u64, seq: u16, dir_flag: bool, attrs: &[Attr]) -> io::Result<Node> {
        let mut node = Node {
            rec: n,
            seq,
            dir: false,
            times: [0; 4],
            attrs: 0,
            names: Vec::new(),
            streams: Vec::new(),
            index_root: None,
            index_alloc: None,
            kind: NodeKind::File,
            target: None,
            rdev: 0,
            opaque: None,
            wof: None,
            vol_flags: None,
        };
        let mut groups: Vec<(u32, &[u16], Vec<&Attr>)> = Vec::new();
        let mut reparse_data = None;
        let mut encrypted = false;
        for a in attrs {
            match (a.ty, &a.body) {
                (ty::STANDARD_INFORMATION, Body::Resident(v)) if v.len() >= 0x24 => {
                    for (i, t) in node.times.iter_mut().enumerate() {
                        *t = record::le64(v, i * 8)?;
                    }
                    node.attrs = record::le32(v, 0x20)?;
                }
                (ty::FILE_NAME, Body::Resident(v)) => node.names.push(FileName::parse(v)?),
                (ty::VOLUME_INFORMATION, Body::Resident(v)) => {
                    node.vol_flags = record::le16(v, 0x0A).ok()
                }
                (ty::INDEX_ROOT, Body::Resident(v)) if a.name == I30 => {
                    node.index_root = Some(v.clone())
                }
                (ty::REPARSE_POINT, _) => {
                    reparse_data = Some(attr_value(&*self.dev, self.boot.cluster_size, a)?)
                }
                (ty::DATA | ty::INDEX_ALLOCATION, _) => {
                    encrypted |= a.flags & aflag::ENCRYPTED != 0;
                    match groups
                        .iter_mut()
                        .find(|(t, nm, _)| *t == a.ty && *nm == a.name.as_slice())
                    {
                        Some(g) => g.2.push(a),
                        None => groups.push((a.ty, &a.name, vec![a])),
                    }
                }
                _ => {}
            }
        }
        for (t, name, frags) in groups {
            let data = merge(&frags);
            if t == ty::DATA {
                node.streams.push(Stream {
                    name: name.to_vec(),
                    data,
                });
            } else if name == I30 {
                node.index_alloc = Some(data);
            }
        }
        node.streams.sort_by(|a, b| a.name.cmp(&b.name));
        node.dir = dir_flag && node.index_root.is_some();
        if dir_flag && node.index_root.is_none() && n != 11 && n >= FIRST_USER {
            self.warn_once(format!("noroot:{n}"), || {
                format!("MFT record {n} is a directory without an $I30 index")
            });
        }
        node.kind = if node.dir {
            NodeKind::Dir
        } else {
            NodeKind::File
        };
        if encrypted || node.attrs & fattr::ENCRYPTED != 0 {
            node.opaque = Some(Opaque {
                why: "data is EFS-encrypted".into(),
                every_stream: true,
            });
        }
        if let Some(rd) = reparse_data {
            match reparse::parse(&rd) {
                Some(Reparse::Link(t)) => {
                    node.kind = NodeKind::Symlink;
                    node.target = Some(t);
                }
                Some(Reparse::Special(tag)) => {
                    node.kind = match tag {
                        reparse::TAG_LX_FIFO => NodeKind::Fifo,
                        reparse::TAG_LX_CHR => NodeKind::CharDev,
                        reparse::TAG_LX_BLK => NodeKind::BlockDev,
                        _ => NodeKind::Socket,
                    }
                }
                Some(Reparse::Opaque(_, why)) => {
                    node.opaque = Some(Opaque {
                        why: why.into(),
                        every_stream: false,
                    })
                }
                Some(Reparse::Wof(alg)) if node.stream(WOF_STREAM).is_some() => {
                    node.wof = Some(alg)
                }
                Some(Reparse::Wof(_)) => {
                    node.opaque = Some(Opaque {
                        why: "WOF-compressed, but its WofCompressedData stream is missing".into(),
                        every_stream: false,
                    })
                }
                Some(Reparse::Other(tag)) => self.warn_once(format!("tag:{tag:#x}"), || {
                    format!("reparse tag {tag:#010x} (first seen on MFT record {n}) is not interpreted; such files are shown as regular entries")
                }),
                None => self.warn_once(format!("badreparse:{n}"), || {
                    format!("MFT record {n}: damaged reparse data (tag {:?}); shown as a regular entry", reparse::tag(&rd))
                }),
            }
        }
        if node.kind == NodeKind::File && node.attrs & fattr::SYSTEM != 0 && node.opaque.is_none() {
            if let Some((_, s)) = node.stream(&[]) {
                if s.data.size() <= reparse::INTERIX_MAX {
                    let mut v = vec![0u8; s.data.size() as usize];
                    if self.read_data(&s.data, (n, 0), 0, &mut v).is_ok() {
                        match reparse::interix(&v) {
                            Some(Interix::Symlink(t)) => {
                                node.kind = NodeKind::Symlink;
                                node.target = Some(t);
                            }
                            Some(Interix::Char(ma, mi)) => {
                                node.kind = NodeKind::CharDev;
                                node.rdev =
                                    super::linux_dev((ma & 0xFFF) as u32, (mi & 0xF_FFFF) as u32);
                            }
                            Some(Interix::Block(ma, mi)) => {
                                node.kind = NodeKind::BlockDev;
                                node.rdev =
                                    super::linux_dev((ma & 0xFFF) as u32, (mi & 0xF_FFFF) as u32);
                            }
                            Some(Interix::Fifo) => node.kind = NodeKind::Fifo,
                            Some(Interix::Socket) => node.kind = NodeKind::Socket,
                            None => {}
                        }
                    }
                }
            }
        }
        Ok(node)
    }

    /// Reads stream bytes at `off`; `key` names the stream for the compression cache.
    fn read_data(
        &self,
        data: &Data,
        key: (u64, usize),
        off: u64,
        buf: &mut [u8],
    ) -> io::Result<usize> {
        match data {
            Data::Broken(why) => Err(corrupt(format!("MFT record {}: {why}", key.0))),
            Data::Resident(v) => {
                if off >= v.len() as u64 {
                    return Ok(0);
                }
                let n = buf.len().min(v.len() - off as usize);
                buf[..n].copy_from_slice(&v[off as usize..off as usize + n]);
                Ok(n)
            }
            Data::Mapped(m) => {
                if off >= m.size {
                    return Ok(0);
                }
                let n = (buf.len() as u64).min(m.size - off) as usize;
                let buf = &mut buf[..n];
                let valid = m.init.saturating_sub(off).min(n as u64) as usize;
                buf[valid..].fill(0);
                if valid > 0 {
                    match m.comp_unit {
                        Some(cu) => self.read_compressed(m, cu, key, off, &mut buf[..valid])?,
                        None => read_runs(
                            &*self.dev,
                            self.boot.cluster_size,
                            &m.runs,
                            off,
                            &mut buf[..valid],
                        )?,
                    }
                }
                Ok(n)
            }
        }
    }

    /// A mapped stream's holes in bytes, sorted and merged, within its size: sparse
    /// runs (shrunk to whole compression units in a compressed stream, where a unit's
    /// tail clusters are sparse by design) and everything past the initialized size.
    fn holes(&self, m: &Mapped) -> io::Result<Vec<(u64, u64)>> {
        let cs = self.boot.cluster_size;
        let per_unit = match m.comp_unit {
            Some(cu) => self.unit_size(cu)? / cs,
            None => 1,
        };
        let mut sparse: Vec<(u64, u64)> = Vec::new();
        let mut runs: Vec<&Run> = m.runs.iter().filter(|r| r.lcn.is_none()).collect();
        runs.sort_by_key(|r| r.vcn);
        for r in runs {
            let end = r.vcn.saturating_add(r.len);
            match sparse.last_mut() {
                Some(last) if last.1 >= r.vcn => last.1 = last.1.max(end),
                _ => sparse.push((r.vcn, end)),
            }
        }
        let limit = m.init.min(m.size);
        let mut holes: Vec<(u64, u64)> = sparse
            .into_iter()
            .filter_map(|(a, b)| {
                let (a, b) = (
                    a.div_ceil(per_unit).saturating_mul(per_unit),
                    b / per_unit * per_unit,
                );
                let (a, b) = (
                    a.saturating_mul(cs).min(limit),
                    b.saturating_mul(cs).min(limit),
                );
                (a < b).then_some((a, b))
            })
            .collect();
        if limit < m.size {
            match holes.last_mut() {
                Some(last) if last.1 >= limit => last.1 = m.size,
                _ => holes.push((limit, m.size)),
            }
        }
        Ok(holes)
    }

    /// Bytes in a compression unit of 2^`cu` clusters, bounded (the value is on disk).
    fn unit_size(&self, cu: u8) -> io::Result<u64> {
        self.boot
            .cluster_size
            .checked_shl(cu as u32)
            .filter(|&u| u <= MAX_UNIT && cu < 32)
            .ok_or_else(|| corrupt(format!("compression unit of 2^{cu} clusters")))
    }

    fn read_compressed(
        &self,
        m: &Mapped,
        cu: u8,
        key: (u64, usize),
        off: u64,
        buf: &mut [u8],
    ) -> io::Result<()> {
        let unit = self.unit_size(cu)?;
        self.read_units(key, unit, u64::MAX, off, buf, |idx, out| {
            self.decode_unit(m, idx, out)
        })
    }

    /// Reads `buf` at byte `off` of data decoded a unit of `unit` bytes at a time (the
    /// last one ending at byte `total`) by `decode(index, out)`. Whole units missing
    /// from the cache are decoded straight into `buf` (sequential copies: the kernel's
    /// page cache keeps them, and a copy and an allocation are saved); parts of units
    /// go through the unit cache under `(key.0, key.1, index)`.
    fn read_units(
        &self,
        key: (u64, usize),
        unit: u64,
        total: u64,
        off: u64,
        buf: &mut [u8],
        decode: impl Fn(u64, &mut [u8]) -> io::Result<()>,
    ) -> io::Result<()> {
        let mut done = 0;
        while done < buf.len() {
            let pos = off + done as u64;
            let idx = pos / unit;
            let within = (pos % unit) as usize;
            let ulen = unit.min(total - idx * unit) as usize;
            let take = (buf.len() - done).min(ulen - within);
            let dst = &mut buf[done..done + take];
            let cache_key = (key.0, key.1, idx);
            if take == ulen && !self.units.contains(&cache_key) {
                decode(idx, dst)?;
            } else {
                let data = match self.units.get(&cache_key) {
                    Some(d) => d,
                    None => {
                        let mut d = vec![0u8; ulen];
                        decode(idx, &mut d)?;
                        let d = Arc::new(d);
                        self.units.put(cache_key, d.clone());
                        d
                    }
                };
                dst.copy_from_slice(&data[within..within + take]);
            }
            done += take;
        }
        Ok(())
    }

    /// One compression unit into `out` (one unit long): all holes → zeros, fully
    /// allocated → stored raw, otherwise its allocated clusters hold LZNT1 data.
    fn decode_unit(&self, m: &Mapped, idx: u64, out: &mut [u8]) -> io::Result<()> {
        let unit = out.len() as u64;
        let cs = self.boot.cluster_size;
        let per = unit / cs;
        let first = idx * per;
        let mut allocated = 0u64;
        let mut pieces: Vec<(u64, u64)> = Vec::new();
        let start = m.runs.partition_point(|r| r.vcn + r.len <= first);
        for r in &m.runs[start..] {
            if r.vcn >= first + per {
                break;
            }
            let lo = r.vcn.max(first);
            let hi = (r.vcn + r.len).min(first + per);
            if let Some(l) = r.lcn {
                allocated += hi - lo;
                pieces.push((l + (lo - r.vcn), hi - lo));
            }
        }
        if allocated >= per {
            return read_runs(&*self.dev, cs, &m.runs, idx * unit, out);
        }
        out.fill(0);
        if allocated == 0 {
            return Ok(());
        }
        let mut src = vec![0u8; (allocated * cs) as usize];
        let mut at = 0usize;
        for (lcn, len) in pieces {
            let bytes = (len * cs) as usize;
            let dev_off = lcn
                .checked_mul(cs)
                .ok_or_else(|| corrupt("compressed run location overflows"))?;
            self.dev.read_exact_at(dev_off, &mut src[at..at + bytes])?;
            at += bytes;
        }
        lznt1::decompress(&src, out)
    }

    /// A WOF file's compressed stream and the size of its chunk table, checked once
    /// per read: `size` bytes of data in chunks of `chunk`, chunks 1.. located by the
    /// table's entries (offsets from its end; 8 bytes each past 4 GiB, else 4).
    fn wof_view<'a>(
        &self,
        node: &'a Node,
        alg: WofAlgorithm,
        size: u64,
    ) -> io::Result<WofView<'a>> {
        let (index, ws) = node
            .stream(WOF_STREAM)
            .ok_or_else(|| corrupt("no WofCompressedData stream"))?;
        let chunk = alg.chunk() as u64;
        let entry = if size > u32::MAX as u64 { 8 } else { 4 };
        let table = size
            .div_ceil(chunk)
            .saturating_sub(1)
            .checked_mul(entry)
            .filter(|&t| t <= ws.data.size())
            .ok_or_else(|| corrupt("chunk table larger than the compressed stream"))?;
        Ok(WofView {
            key: (node.rec, index),
            data: &ws.data,
            alg,
            chunk,
            size,
            entry,
            table,
        })
    }

    /// Reads a WOF-compressed file's data (`size` bytes in chunks): a chunk stored at
    /// its full size is raw, any other is compressed with `alg`. Chunks share the unit
    /// cache under a stream index no stream has.
    fn read_wof(
        &self,
        node: &Node,
        alg: WofAlgorithm,
        size: u64,
        off: u64,
        buf: &mut [u8],
    ) -> io::Result<usize> {
        if off >= size {
            return Ok(0);
        }
        let n = (buf.len() as u64).min(size - off) as usize;
        let w = self.wof_view(node, alg, size)?;
        self.read_units(
            (node.rec, usize::MAX),
            w.chunk,
            size,
            off,
            &mut buf[..n],
            |idx, out| self.decode_wof_chunk(&w, idx, out),
        )?;
        Ok(n)
    }

    /// Where chunk `idx` of a WOF file lies in its `WofCompressedData` stream: byte
    /// range, checked against the stream.
    fn wof_chunk_range(&self, w: &WofView, idx: u64) -> io::Result<(u64, u64)> {
        let csize = w.data.size();
        let at = |i: u64| -> io::Result<u64> {
            let mut b = [0u8; 8];
            let e = &mut b[..w.entry as usize];
            if self.read_data(w.data, w.key, (i - 1) * w.entry, e)? != e.len() {
                return Err(corrupt("chunk table cut short"));
            }
            Ok(u64::from_le_bytes(b))
        };
        let start = if idx == 0 { 0 } else { at(idx)? };
        let end = if idx + 1 == w.size.div_ceil(w.chunk) {
            csize - w.table
        } else {
            at(idx + 1)?
        };
        if start > end || end > csize - w.table {
            return Err(corrupt(format!(
                "chunk {idx} lies outside the compressed stream"
            )));
        }
        Ok((w.table + start, w.table + end))
    }

    /// Decodes chunk `idx` of a WOF file into `out` (its uncompressed length).
    fn decode_wof_chunk(&self, w: &WofView, idx: u64, out: &mut [u8]) -> io::Result<()> {
        let (start, end) = self.wof_chunk_range(w, idx)?;
        let stored = (end - start) as usize;
        if stored > out.len() {
            return Err(corrupt(format!(
                "chunk {idx} is stored larger than it decodes"
            )));
        }
        let cut = || corrupt(format!("chunk {idx} cut short"));
        if stored == out.len() {
            return match self.read_data(w.data, w.key, start, out)? {
                n if n == stored => Ok(()),
                _ => Err(cut()),
            };
        }
        let mut src = vec![0u8; stored];
        if self.read_data(w.data, w.key, start, &mut src)? != stored {
            return Err(cut());
        }
        match w.alg {
            WofAlgorithm::Xpress(_) => xpress::decompress(&src, out),
            WofAlgorithm::Lzx => lzx::decompress(&src, out),
        }
        .map_err(|e| corrupt(format!("chunk {idx}: {e}")))
    }

    /// Reads one INDX node of a directory (cached).
    fn index_node(&self, dir: &Node, block: u32, vcn: u64) -> io::Result<Arc<IndexNode>> {
        if let Some(x) = self.index_nodes.get(&(dir.rec, vcn)) {
            return Ok(x);
        }
        let entries = Arc::new(self.load_index_node(dir, block, vcn)?);
        self.index_nodes.put((dir.rec, vcn), entries.clone());
        Ok(entries)
    }

    /// Reads and parses one INDX node of a directory.
    fn load_index_node(&self, dir: &Node, block: u32, vcn: u64) -> io::Result<IndexNode> {
        let alloc = dir.index_alloc.as_ref().ok_or_else(|| {
            corrupt(format!(
                "directory {} points into a missing $INDEX_ALLOCATION",
                dir.rec
            ))
        })?;
        let buf = self.read_indx(alloc, dir.rec, block, vcn)?;
        Ok(IndexNode(index::parse_node(&buf, 0x18)?))
    }

    /// Reads the INDX node at `vcn` of record `rec`'s index allocation `alloc` (index
    /// records of `block` bytes), its fixups applied and its VCN checked.
    fn read_indx(&self, alloc: &Data, rec: u64, block: u32, vcn: u64) -> io::Result<Vec<u8>> {
        let unit = if block as u64 >= self.boot.cluster_size {
            self.boot.cluster_size
        } else {
            512
        };
        let off = vcn
            .checked_mul(unit)
            .ok_or_else(|| corrupt("index node VCN overflows"))?;
        let mut buf = vec![0u8; block as usize];
        let n = self.read_data(alloc, (rec, usize::MAX), off, &mut buf)?;
        if n < buf.len() {
            return Err(corrupt(format!(
                "MFT record {rec}: index node at VCN {vcn} is past the index"
            )));
        }
        let what = || format!("MFT record {rec} index node at VCN {vcn}");
        record::apply_fixups(&mut buf, b"INDX", &what)?;
        if record::le64(&buf, 0x10)? != vcn {
            return Err(corrupt(format!(
                "{} says it is VCN {}",
                what(),
                record::le64(&buf, 0x10)?
            )));
        }
        Ok(buf)
    }

    /// The whole value of file `n`'s unnamed attribute of type `t` (fragments in
    /// extension records joined), if it has one.
    fn attr_whole(&self, n: u64, attrs: &[Attr], t: u32) -> io::Result<Option<Vec<u8>>> {
        let frags: Vec<&Attr> = attrs
            .iter()
            .filter(|a| a.ty == t && a.name.is_empty())
            .collect();
        if frags.is_empty() {
            return Ok(None);
        }
        let data = merge(&frags);
        if data.size() > MAX_XATTR {
            return Err(io::Error::from_raw_os_error(libc::E2BIG));
        }
        let mut v = vec![0u8; data.size() as usize];
        // Its own key in the compression-unit cache, apart from every stream's.
        let got = self.read_data(&data, (n, usize::MAX - 1 - t as usize), 0, &mut v)?;
        v.truncate(got);
        Ok(Some(v))
    }

    /// A file's object id as ntfs-3g's `system.ntfs_object_id` gives it: the 16-byte
    /// id followed by the birth volume, birth object and domain ids that `$ObjId:$O`
    /// keeps for it (the id alone when the index has no entry; a value of another
    /// size as stored).
    fn object_id(&self, n: u64, attrs: &[Attr]) -> io::Result<Option<Vec<u8>>> {
        const O: &[u16] = &names::ascii_utf16(b"$O");
        let Some(mut id) = self.attr_whole(n, attrs, ty::OBJECT_ID)? else {
            return Ok(None);
        };
        if id.len() != 16 {
            return Ok(Some(id));
        }
        let extend = self.node(EXTEND)?;
        if !extend.dir {
            return Ok(Some(id));
        }
        let Some(objid) = self.find(&extend, &names::ascii_utf16(b"$ObjId"))? else {
            return Ok(Some(id));
        };
        // Collation NTOFS_ULONGS: the GUID as four little-endian 32-bit numbers.
        let words = |b: &[u8]| -> Vec<u32> {
            b.chunks_exact(4)
                .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect()
        };
        let want = words(&id);
        let found = self.view_lookup(mref(objid), O, |k| {
            if k.len() != 16 {
                return Err(corrupt(format!("$ObjId:$O key of {} bytes", k.len())));
            }
            Ok(words(k).cmp(&want))
        })?;
        if let Some(d) = found.filter(|d| d.len() >= 56) {
            id.extend_from_slice(&d[8..56]);
        }
        Ok(Some(id))
    }

    /// A file's security descriptor as ntfs-3g's `system.ntfs_acl` gives it: the one
    /// `$Secure` keeps under the security id in its $STANDARD_INFORMATION, else its
    /// own $SECURITY_DESCRIPTOR attribute (NTFS 1.x).
    fn security_descriptor(&self, n: u64, attrs: &[Attr]) -> io::Result<Option<Vec<u8>>> {
        const SII: &[u16] = &names::ascii_utf16(b"$SII");
        const SDS: &[u16] = &names::ascii_utf16(b"$SDS");
        /// An $SDS entry's header: hash, security id, its own offset, its length.
        const HEADER: usize = 20;
        let id = attrs.iter().find_map(|a| match (a.ty, &a.body) {
            (ty::STANDARD_INFORMATION, Body::Resident(v)) if v.len() >= 0x48 => {
                record::le32(v, 0x34).ok().filter(|&id| id != 0)
            }
            _ => None,
        });
        let Some(id) = id else {
            return self.attr_whole(n, attrs, ty::SECURITY_DESCRIPTOR);
        };
        let found = self.view_lookup(SECURE, SII, |k| {
            Ok(record::le32(k, 0)
                .map_err(|_| corrupt(format!("$Secure:$SII key of {} bytes", k.len())))?
                .cmp(&id))
        })?;
        let Some(d) = found else {
            return self.attr_whole(n, attrs, ty::SECURITY_DESCRIPTOR);
        };
        let bad = |why: String| corrupt(format!("$Secure: security id {id}: {why}"));
        let (at, len) = (record::le64(&d, 8)?, record::le32(&d, 16)? as u64);
        if record::le32(&d, 4)? != id || len < HEADER as u64 || len - HEADER as u64 > MAX_XATTR {
            return Err(bad(format!("$SII entry names {len} bytes at {at}")));
        }
        let secure = self.node(SECURE)?;
        let (i, s) = secure
            .stream(SDS)
            .ok_or_else(|| bad("no $SDS stream".into()))?;
        let mut v = vec![0u8; len as usize];
        if self.read_data(&s.data, (SECURE, i), at, &mut v)? != v.len() {
            return Err(bad(format!("{len} bytes at {at} reach past $SDS")));
        }
        if record::le32(&v, 4)? != id || record::le64(&v, 8)? != at {
            return Err(bad(format!("the $SDS entry at {at} is another's")));
        }
        Ok(Some(v.split_off(HEADER)))
    }

    /// Looks a key up in the view index `name` of record `rec` (`$Secure:$SII`,
    /// `$ObjId:$O`); `cmp` orders an entry's key against the one sought, or refuses a
    /// malformed key. Returns the data of the entry holding it.
    fn view_lookup(
        &self,
        rec: u64,
        name: &[u16],
        cmp: impl Fn(&[u8]) -> io::Result<std::cmp::Ordering>,
    ) -> io::Result<Option<Vec<u8>>> {
        use std::cmp::Ordering;
        let attrs = self.attrs_of(rec, self.record(rec)?)?;
        let Some(root) = attrs
            .iter()
            .find(|a| a.ty == ty::INDEX_ROOT && a.name == name)
        else {
            return Ok(None);
        };
        let Body::Resident(root) = &root.body else {
            return Err(corrupt(format!(
                "MFT record {rec}: non-resident $INDEX_ROOT"
            )));
        };
        let frags: Vec<&Attr> = attrs
            .iter()
            .filter(|a| a.ty == ty::INDEX_ALLOCATION && a.name == name)
            .collect();
        let alloc = (!frags.is_empty()).then(|| merge(&frags));
        let (block, mut entries) = index::parse_view_root(root)?;
        for _ in 0..MAX_INDEX_DEPTH {
            let mut child = None;
            for e in &entries {
                match e.key.as_deref().map(&cmp).transpose()? {
                    Some(Ordering::Equal) => return Ok(Some(e.data.clone())),
                    Some(Ordering::Less) => continue,
                    _ => {
                        child = e.child;
                        break;
                    }
                }
            }
            let Some(vcn) = child else {
                return Ok(None);
            };
            let alloc = alloc.as_ref().ok_or_else(|| {
                corrupt(format!(
                    "MFT record {rec}: index points into a missing $INDEX_ALLOCATION"
                ))
            })?;
            entries = index::parse_view_node(&self.read_indx(alloc, rec, block, vcn)?, 0x18)?;
        }
        Err(corrupt(format!(
            "MFT record {rec}: index deeper than {MAX_INDEX_DEPTH} levels"
        )))
    }

    fn root_of(&self, dir: &Node) -> io::Result<index::Root> {
        let v = dir
            .index_root
            .as_ref()
            .ok_or_else(|| corrupt(format!("MFT record {} is not a directory", dir.rec)))?;
        index::parse_root(v)
    }

    /// True when an entry is shown: not a DOS duplicate, not the root's `.`, and not
    /// a metadata file unless asked.
    fn visible(&self, dir: &Node, e: &Entry, k: &FileName) -> bool {
        let r = mref(e.file);
        k.namespace != ns::DOS && r != dir.rec && (self.show_system || r >= FIRST_USER)
    }

    /// Every entry of a directory's B+ tree (cached with a name map).
    fn listing(&self, dir: &Node) -> io::Result<Arc<Listing>> {
        if let Some(l) = self.dirs.get(&dir.rec) {
            return Ok(l);
        }
        let root = self.root_of(dir)?;
        if let Some(Data::Mapped(m)) = &dir.index_alloc {
            if m.runs.len() > 1 || m.size > root.block_size as u64 {
                prefetch_runs(&*self.dev, self.boot.cluster_size, &m.runs, INDEX_WARM);
            }
        }
        let mut entries = Vec::new();
        let mut seen = HashSet::new();
        let mut visited = HashSet::new();
        // The index nodes are not cached: the listing, cached, answers every lookup
        // in this directory from now on.
        let mut stack: Vec<Arc<IndexNode>> = vec![Arc::new(IndexNode(root.entries))];
        while let Some(node) = stack.pop() {
            for e in node.0.iter() {
                if let Some(c) = e.child {
                    // Bounded: only nodes read from inside the allocation are walked,
                    // each at most once.
                    if !visited.insert(c) {
                        return Err(corrupt(format!(
                            "directory {}: index nodes form a cycle",
                            dir.rec
                        )));
                    }
                    let node = match self.index_nodes.get(&(dir.rec, c)) {
                        Some(n) => Ok(n),
                        None => self.load_index_node(dir, root.block_size, c).map(Arc::new),
                    };
                    match node {
                        Ok(n) => stack.push(n),
                        // A node the volume itself gets wrong (a crash-time state: the
                        // index grew past what its record says, a torn node) costs the
                        // names under it, not the listing; a read that failed below
                        // (a damaged block of the safe) still fails it.
                        Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                            self.left_out.add(1);
                            self.warn_once(format!("badnode:{}:{c}", dir.rec), || {
                                format!(
                                    "directory {}: {e}; listed without the names under it",
                                    dir.rec
                                )
                            });
                        }
                        Err(e) => return Err(e),
                    }
                }
                let Some(k) = &e.key else { continue };
                if !self.visible(dir, e, k) {
                    continue;
                }
                let name = names::to_bytes(&k.name);
                let ino = mref(e.file);
                if ino >= self.records {
                    self.left_out.add(1);
                    self.warn_once(format!("badref:{}:{ino}", dir.rec), || {
                        format!(
                            "directory {} names record {ino}, past the end of $MFT; entry skipped",
                            dir.rec
                        )
                    });
                    continue;
                }
                if !seen.insert(name.clone()) {
                    continue;
                }
                let kind = self.entry_kind(k, ino);
                entries.push(DirEntry { name, ino, kind });
            }
        }
        let l = Arc::new(Listing::new(entries));
        self.dirs.put(dir.rec, l.clone());
        Ok(l)
    }

    /// Type of an entry from its index key, loading the record only for reparse points
    /// and system files (which may be links or special files).
    fn entry_kind(&self, k: &FileName, ino: u64) -> NodeKind {
        if k.attrs & (fattr::REPARSE_POINT | fattr::SYSTEM) != 0 {
            if let Ok(n) = self.node(ino) {
                return n.kind;
            }
        }
        if k.attrs & fattr::DUP_DIR != 0 {
            NodeKind::Dir
        } else {
            NodeKind::File
        }
    }

    /// Walks the B+ tree for an exact name.
    fn find(&self, dir: &Node, target: &[u16]) -> io::Result<Option<u64>> {
        let root = self.root_of(dir)?;
        let mut node = Arc::new(IndexNode(root.entries));
        let mut visited = HashSet::new();
        loop {
            let mut next = None;
            for e in node.0.iter() {
                let Some(k) = &e.key else {
                    next = e.child;
                    break;
                };
                match self.upcase.collate(target, &k.name) {
                    std::cmp::Ordering::Greater => continue,
                    std::cmp::Ordering::Equal => {
                        return Ok(self.visible(dir, e, k).then_some(e.file));
                    }
                    std::cmp::Ordering::Less => {
                        next = e.child;
                        break;
                    }
                }
            }
            let Some(vcn) = next else { return Ok(None) };
            if !visited.insert(vcn) || visited.len() > 64 {
                return Err(corrupt(format!(
                    "directory {}: index nodes form a cycle",
                    dir.rec
                )));
            }
            node = self.index_node(dir, root.block_size, vcn)?;
        }
    }

    /// A node that must be a live base record reachable as an inode.
    fn file(&self, ino: u64) -> io::Result<Arc<Node>> {
        if ino >= self.records {
            return Err(io::Error::from_raw_os_error(libc::ENOENT));
        }
        self.node(ino)
    }

    /// Resolves an inode to its node and, for a stream inode, the stream's index.
    fn resolve(&self, ino: u64) -> io::Result<(Arc<Node>, Option<usize>)> {
        if ino & STREAM_BIT == 0 {
            return Ok((self.file(ino)?, None));
        }
        let (rec, name) = {
            let t = self.streams.lock().unwrap();
            t.list
                .get((ino & !STREAM_BIT) as usize)
                .cloned()
                .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT))?
        };
        let node = self.file(rec)?;
        let (i, _) = node
            .stream(&name)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT))?;
        Ok((node, Some(i)))
    }

    fn stream_ino(&self, rec: u64, name: Vec<u16>) -> u64 {
        let mut t = self.streams.lock().unwrap();
        if let Some(&i) = t.ids.get(&(rec, name.clone())) {
            return i;
        }
        let i = STREAM_BIT | t.list.len() as u64;
        t.list.push((rec, name.clone()));
        t.ids.insert((rec, name), i);
        i
    }

    /// `FILE:STREAM` (optionally `:$DATA`) names a named data stream of FILE.
    fn lookup_stream(&self, dir: u64, name: &[u8]) -> io::Result<Option<u64>> {
        let Some(colon) = name.iter().position(|&b| b == b':') else {
            return Ok(None);
        };
        let (base, rest) = (&name[..colon], &name[colon + 1..]);
        let sname = rest.strip_suffix(b":$DATA").unwrap_or(rest);
        if base.is_empty() || sname.is_empty() {
            return Ok(None);
        }
        let Some(rec) = self.lookup_plain(dir, base)? else {
            return Ok(None);
        };
        let Some(units) = names::from_bytes(sname) else {
            return Ok(None);
        };
        let node = self.file(rec)?;
        let found = node
            .streams
            .iter()
            .find(|s| !s.name.is_empty() && s.name == units)
            .or_else(|| {
                node.streams
                    .iter()
                    .find(|s| !s.name.is_empty() && self.upcase.eq_ignore_case(&s.name, &units))
            });
        Ok(found.map(|s| self.stream_ino(rec, s.name.clone())))
    }

    fn lookup_plain(&self, dir: u64, name: &[u8]) -> io::Result<Option<u64>> {
        let d = self.file(dir)?;
        if !d.dir {
            return Err(io::Error::from_raw_os_error(libc::ENOTDIR));
        }
        if let Some(l) = self.dirs.get(&dir) {
            return Ok(l.get(name));
        }
        if names::has_stand_in(name) {
            return Ok(self.listing(&d)?.get(name));
        }
        let Some(units) = names::from_bytes(name) else {
            return Ok(None);
        };
        let Some(file) = self.find(&d, &units)? else {
            return Ok(None);
        };
        let rec = mref(file);
        if rec >= self.records {
            return Err(corrupt(format!(
                "directory {dir} names record {rec}, past the end of $MFT"
            )));
        }
        let n = self.node(rec)?;
        if mseq(file) != 0 && n.seq != 0 && mseq(file) != n.seq {
            return Err(corrupt(format!(
                "directory {dir}: entry for record {rec} is stale (sequence {} but the record has {})",
                mseq(file),
                n.seq
            )));
        }
        Ok(Some(rec))
    }

    /// The named streams a listing shows: a decoded WOF file's `WofCompressedData` is
    /// left out, as Windows hides it (its content is the file's data; `cp -a` would
    /// copy it as an xattr); `FILE:WofCompressedData` still reads it.
    fn named_streams(node: &Node) -> impl Iterator<Item = &Stream> {
        let wof = node.wof.is_some();
        node.streams
            .iter()
            .filter(move |s| !(s.name.is_empty() || wof && s.name == WOF_STREAM))
    }
}

/// The name of directory indexes.
const I30: &[u16] = &names::ascii_utf16(b"$I30");

/// Whole value of a small metadata attribute (attribute list, reparse data), resident
/// or not; bytes past its initialized size read as zeros.
fn attr_value(dev: &dyn ReadAt, cs: u64, a: &Attr) -> io::Result<Vec<u8>> {
    match &a.body {
        Body::Resident(v) => Ok(v.clone()),
        Body::NonResident(nr) => {
            if nr.data_size > MAX_META {
                return Err(corrupt(format!(
                    "metadata attribute of {} bytes",
                    nr.data_size
                )));
            }
            let mut v = vec![0u8; nr.data_size as usize];
            let init = nr.init_size.min(nr.data_size) as usize;
            read_runs(dev, cs, &nr.runs, 0, &mut v[..init])?;
            Ok(v)
        }
    }
}

/// Hints the device to fetch the allocated runs of a stream, up to `limit` bytes.
fn prefetch_runs(dev: &dyn ReadAt, cs: u64, runs: &[Run], limit: u64) {
    let (mut spans, mut left) = (Vec::new(), limit);
    run_spans(cs, runs, &mut left, &mut spans);
    dev.prefetch(&spans);
}

/// Appends the byte spans of a runlist's allocated runs to `spans`, taking at most
/// `left` bytes (and reducing it by what was taken); holes and runs whose byte
/// position overflows are left out.
fn run_spans(cs: u64, runs: &[Run], left: &mut u64, spans: &mut Vec<(u64, u64)>) {
    for r in runs {
        if *left == 0 {
            return;
        }
        let Some(lcn) = r.lcn else { continue };
        let (Some(at), Some(len)) = (lcn.checked_mul(cs), r.len.checked_mul(cs)) else {
            continue;
        };
        let len = len.min(*left);
        spans.push((at, len));
        *left -= len;
    }
}

/// Reads `buf.len()` bytes at byte `off` of a runlist-mapped stream, in pieces as
/// large as the runs allow; holes read as zeros, unmapped ranges are errors.
fn read_runs(dev: &dyn ReadAt, cs: u64, runs: &[Run], off: u64, buf: &mut [u8]) -> io::Result<()> {
    let mut pos = off;
    let mut done = 0usize;
    while done < buf.len() {
        let vcn = pos / cs;
        let i = runs.partition_point(|r| r.vcn <= vcn);
        let r = match i.checked_sub(1).map(|i| runs[i]) {
            Some(r) if vcn < r.vcn + r.len => r,
            _ => return Err(corrupt(format!("no run maps byte {pos} (VCN {vcn})"))),
        };
        let within = pos - r.vcn * cs;
        let avail = r.len.saturating_mul(cs).saturating_sub(within);
        let take = ((buf.len() - done) as u64).min(avail) as usize;
        match r.lcn {
            None => buf[done..done + take].fill(0),
            Some(l) => {
                let at = l
                    .checked_mul(cs)
                    .and_then(|x| x.checked_add(within))
                    .ok_or_else(|| corrupt("run location overflows"))?;
                dev.read_exact_at(at, &mut buf[done..done + take])?;
            }
        }
        done += take;
        pos += take as u64;
    }
    Ok(())
}

impl FsTree for NtfsFs {
    fn root(&self) -> u64 {
        ROOT
    }

    fn stat(&self, ino: u64) -> io::Result<Stat> {
        let (node, stream) = self.resolve(ino)?;
        let t = |i: usize| ntfs_time(node.times[i]);
        let (kind, size, blocks) = match stream {
            Some(i) => {
                let d = &node.streams[i].data;
                (NodeKind::File, d.size(), d.blocks())
            }
            None => match node.kind {
                NodeKind::Dir => {
                    let a = node.index_alloc.as_ref();
                    (
                        NodeKind::Dir,
                        a.map_or(0, |a| a.size()),
                        a.map_or(0, |a| a.blocks()),
                    )
                }
                NodeKind::Symlink => (
                    NodeKind::Symlink,
                    node.target.as_ref().map_or(0, |t| t.len() as u64),
                    0,
                ),
                NodeKind::File => match node.stream(&[]) {
                    // A WOF file's clusters are those of its compressed stream.
                    Some((_, s)) => match node.wof.and(node.stream(WOF_STREAM)) {
                        Some((_, w)) => (NodeKind::File, s.data.size(), w.data.blocks()),
                        None => (NodeKind::File, s.data.size(), s.data.blocks()),
                    },
                    None => (NodeKind::File, 0, 0),
                },
                k => (k, 0, 0),
            },
        };
        let perm = match kind {
            NodeKind::Dir => 0o555,
            NodeKind::Symlink => 0o777,
            _ => 0o444,
        };
        let nlink = if stream.is_some() || kind == NodeKind::Dir {
            1
        } else {
            node.names
                .iter()
                .filter(|n| n.namespace != ns::DOS)
                .count()
                .max(1) as u32
        };
        Ok(Stat {
            ino,
            kind,
            perm,
            nlink,
            uid: self.uid,
            gid: self.gid,
            size,
            blocks,
            atime: t(3),
            mtime: t(1),
            ctime: t(2),
            crtime: t(0),
            rdev: node.rdev,
        })
    }

    fn read_dir(&self, ino: u64) -> io::Result<Arc<Vec<DirEntry>>> {
        let d = self.file(ino)?;
        if !d.dir || d.kind != NodeKind::Dir {
            return Err(io::Error::from_raw_os_error(libc::ENOTDIR));
        }
        Ok(self.listing(&d)?.entries.clone())
    }

    fn lookup(&self, dir: u64, name: &[u8]) -> io::Result<Option<u64>> {
        if dir & STREAM_BIT != 0 {
            return Err(io::Error::from_raw_os_error(libc::ENOTDIR));
        }
        match self.lookup_plain(dir, name)? {
            Some(r) => Ok(Some(r)),
            None => self.lookup_stream(dir, name),
        }
    }

    fn read(&self, ino: u64, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let (node, stream) = self.resolve(ino)?;
        if stream.is_none() && node.kind != NodeKind::File {
            return Err(io::Error::from_raw_os_error(libc::EISDIR));
        }
        let Some(i) = node.data_index(stream) else {
            return Ok(0);
        };
        if let Some(o) = node.opaque_for(stream) {
            return Err(io::Error::other(format!(
                "{}: MFT record {}: {}; its data cannot be read",
                self.label, node.rec, o.why
            )));
        }
        if let (None, Some(alg)) = (stream, node.wof) {
            let size = node.streams[i].data.size();
            return self
                .read_wof(&node, alg, size, offset, buf)
                .map_err(|e| corrupt(format!("MFT record {}: WOF data: {e}", node.rec)));
        }
        self.read_data(&node.streams[i].data, (node.rec, i), offset, buf)
    }

    /// Not once a named stream (`FILE:NAME`) was looked up: its number is an index
    /// into this instance's stream table.
    fn can_close(&self) -> bool {
        self.streams.lock().unwrap().list.is_empty()
    }

    /// Holes are sparse runs (in a compressed stream, whole compression units with no
    /// cluster stored) and the bytes past the initialized size. Resident, WOF and
    /// undecodable data, and clusters no run maps, count as data: their reads give
    /// the bytes or the error.
    fn seek(&self, ino: u64, offset: u64, data: bool) -> io::Result<Option<u64>> {
        let (node, stream) = self.resolve(ino)?;
        if stream.is_none() && node.kind != NodeKind::File {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        let Some(i) = node.data_index(stream) else {
            return Ok(None);
        };
        let size = node.streams[i].data.size();
        if offset >= size {
            return Ok(None);
        }
        let all_data = Ok(Some(if data { offset } else { size }));
        if node.opaque_for(stream).is_some() || stream.is_none() && node.wof.is_some() {
            return all_data;
        }
        let Data::Mapped(m) = &node.streams[i].data else {
            return all_data;
        };
        let holes = self.holes(m)?;
        Ok(match holes.iter().find(|h| h.1 > offset) {
            // Inside a hole: data resumes at its end (none when it reaches the end).
            Some(&(h0, h1)) if h0 <= offset => {
                if data {
                    (h1 < size).then_some(h1)
                } else {
                    Some(offset)
                }
            }
            // Data up to the next hole.
            Some(&(h0, _)) => Some(if data { offset } else { h0 }),
            None => Some(if data { offset } else { size }),
        })
    }

    /// Maps the range through the stream's runs (non-resident data; a compressed
    /// stream's range widened to whole compression units) and hands the clusters to the
    /// device in one batch: their decompression from the safe runs ahead, the units'
    /// LZNT1 decoding stays with the reader.
    fn prefetch(&self, ino: u64, offset: u64, len: u64) {
        let Ok((node, stream)) = self.resolve(ino) else {
            return;
        };
        if node.opaque.is_some() {
            return;
        }
        let Some(mut i) = node.data_index(stream) else {
            return;
        };
        // Byte ranges of stream i to fetch.
        let mut ranges = vec![(offset, offset.saturating_add(len))];
        if let (None, Some(alg)) = (stream, node.wof) {
            // The range's chunks in the compressed stream, and their table entries.
            let size = node.streams[i].data.size();
            let end = offset.saturating_add(len).min(size);
            let Ok(w) = self.wof_view(&node, alg, size) else {
                return;
            };
            if offset >= end {
                return;
            }
            let (c0, c1) = (offset / w.chunk, (end - 1) / w.chunk);
            let (Ok((start, _)), Ok((_, stop))) =
                (self.wof_chunk_range(&w, c0), self.wof_chunk_range(&w, c1))
            else {
                return;
            };
            let table = (c0.saturating_sub(1) * w.entry, (c1 + 1) * w.entry);
            (i, ranges) = (w.key.1, vec![table, (start, stop)]);
        }
        let Some(Data::Mapped(m)) = node.streams.get(i).map(|s| &s.data) else {
            return;
        };
        let mut spans = Vec::new();
        for (offset, end) in ranges {
            let (mut offset, mut end) = (offset, end.min(m.init));
            if let Some(cu) = m.comp_unit {
                // Whole units: a unit's compressed clusters lie at its start.
                let Ok(unit) = self.unit_size(cu) else { return };
                if offset >= end {
                    continue;
                }
                offset -= offset % unit;
                end = end.div_ceil(unit).saturating_mul(unit);
            }
            spans.extend(crate::ntfs_ext::run_spans(
                &m.runs,
                |r| (r.vcn, r.len, r.lcn),
                offset,
                end,
                self.boot.cluster_size,
            ));
        }
        crate::ntfs_ext::prefetch_spans(&*self.dev, spans, 64);
    }

    fn read_link(&self, ino: u64) -> io::Result<Vec<u8>> {
        let (node, _) = self.resolve(ino)?;
        node.target
            .clone()
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))
    }

    fn xattrs(&self, ino: u64) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut out = Vec::new();
        for n in self.xattr_names(ino)? {
            match self.xattr(ino, &n) {
                Ok(Some(v)) => out.push((n, v)),
                Ok(None) => {}
                Err(e) if e.raw_os_error() == Some(libc::E2BIG) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    fn xattr_names(&self, ino: u64) -> io::Result<Vec<Vec<u8>>> {
        let (node, stream) = self.resolve(ino)?;
        if stream.is_some() {
            return Ok(Vec::new());
        }
        Ok(Self::named_streams(&node)
            .map(|s| {
                let mut n = b"user.".to_vec();
                n.extend(names::to_bytes(&s.name));
                n
            })
            .collect())
    }

    fn xattr(&self, ino: u64, name: &[u8]) -> io::Result<Option<Vec<u8>>> {
        let (node, stream) = self.resolve(ino)?;
        let mut attrs = node.attrs;
        if node.dir {
            attrs |= fattr::DIRECTORY;
        }
        // ntfs-3g's order: creation, data change, access, MFT change.
        let [cr, data, mft, access] = node.times;
        let times = [cr, data, access, mft];
        // The rest are read from the record when asked for (the node keeps none).
        let attrs_of = || self.attrs_of(node.rec, self.record(node.rec)?);
        match name {
            b"system.ntfs_attrib" => return Ok(Some(attrs.to_le_bytes().to_vec())),
            b"system.ntfs_attrib_be" => return Ok(Some(attrs.to_be_bytes().to_vec())),
            b"system.ntfs_crtime" => return Ok(Some(cr.to_le_bytes().to_vec())),
            b"system.ntfs_crtime_be" => return Ok(Some(cr.to_be_bytes().to_vec())),
            b"system.ntfs_times" => return Ok(Some(times.map(u64::to_le_bytes).concat())),
            b"system.ntfs_times_be" => return Ok(Some(times.map(u64::to_be_bytes).concat())),
            b"system.ntfs_dos_name" => {
                return Ok(node
                    .names
                    .iter()
                    .find(|f| f.namespace == ns::DOS)
                    .map(|f| names::to_bytes(&f.name)))
            }
            b"system.ntfs_reparse_data" => {
                return self.attr_whole(node.rec, &attrs_of()?, ty::REPARSE_POINT)
            }
            b"system.ntfs_ea" => return self.attr_whole(node.rec, &attrs_of()?, ty::EA),
            b"system.ntfs_object_id" => return self.object_id(node.rec, &attrs_of()?),
            b"system.ntfs_acl" => return self.security_descriptor(node.rec, &attrs_of()?),
            _ => {}
        }
        let Some(sname) = name.strip_prefix(b"user.") else {
            return Ok(None);
        };
        if stream.is_some() {
            return Ok(None);
        }
        let Some(units) = names::from_bytes(sname) else {
            return Ok(None);
        };
        let Some((i, s)) = node.stream(&units).filter(|(_, s)| !s.name.is_empty()) else {
            return Ok(None);
        };
        if s.data.size() > MAX_XATTR {
            return Err(io::Error::from_raw_os_error(libc::E2BIG));
        }
        if let Some(o) = node.opaque.as_ref().filter(|o| o.every_stream) {
            return Err(io::Error::other(format!(
                "MFT record {}: {}",
                node.rec, o.why
            )));
        }
        let mut v = vec![0u8; s.data.size() as usize];
        let n = self.read_data(&s.data, (node.rec, i), 0, &mut v)?;
        v.truncate(n);
        Ok(Some(v))
    }

    fn statfs(&self) -> StatFs {
        let free = *self
            .free_clusters
            .get_or_init(|| self.count_free().unwrap_or(0));
        StatFs {
            bsize: self.boot.cluster_size.min(u32::MAX as u64) as u32,
            blocks: self.boot.total_clusters,
            bfree: free,
            bavail: free,
            files: self.records,
            ffree: 0,
            namelen: 255,
        }
    }
}

impl NtfsFs {
    /// Free clusters from $Bitmap.
    fn count_free(&self) -> io::Result<u64> {
        let total = self.boot.total_clusters;
        let mut used = 0u64;
        self.bitmap_chunks(total, |_, chunk| {
            used += chunk.iter().map(|b| b.count_ones() as u64).sum::<u64>();
            Ok(())
        })?;
        Ok(total.saturating_sub(used))
    }

    /// Hands $Bitmap's bytes covering `clusters` clusters (at most the stream's size)
    /// to `f` in 1 MiB chunks, with each chunk's byte offset. Returns false when the
    /// stream's data ended before its size (the last chunk was short).
    fn bitmap_chunks(
        &self,
        clusters: u64,
        mut f: impl FnMut(u64, &[u8]) -> io::Result<()>,
    ) -> io::Result<bool> {
        let n = self.node(6)?;
        let (i, s) = n
            .stream(&[])
            .ok_or_else(|| corrupt("$Bitmap has no data"))?;
        let bytes = clusters.div_ceil(8).min(s.data.size());
        let mut buf = vec![0u8; 1 << 20];
        let mut off = 0;
        while off < bytes {
            let take = (bytes - off).min(buf.len() as u64) as usize;
            let got = self.read_data(&s.data, (6, i), off, &mut buf[..take])?;
            f(off, &buf[..got])?;
            if got < take {
                return Ok(false);
            }
            off += take as u64;
        }
        Ok(true)
    }

    /// Size of $MFT's data and allocation, for tests and diagnostics.
    pub fn mft_extent(&self) -> (u64, u64) {
        (self.mft.size, self.mft.alloc)
    }
}
