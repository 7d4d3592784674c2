//! `backup --skip-free`: the blocks of a source its filesystems mark free (ext2/3/4
//! and XFS after their journal or log is replayed in memory, NTFS left with nothing
//! in `$LogFile` to redo, FAT, exFAT, btrfs's unallocated space and what no extent
//! holds in its chunks that keep whole copies, all its devices searched together), which the backup
//! records as zeros without reading them. Filesystems are looked for through
//! partition tables (nested ones too: a VM's disk on an LV), md RAID1 members and LVM
//! PVs, whose extents no LV uses are free as well, whose LVs' free space is mapped back
//! onto the device, and whose thin pools give up the chunks no thin LV maps and those
//! one maps alone inside its filesystems' free space. Only blocks a
//! filesystem vouches for are skipped: anything it cannot read, a partition table
//! whose partitions overlap, or a filesystem of another kind keeps every block.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use crate::ntfs_ext::merged;
use crate::readat::{FileReader, ReadAt, Slice};
use crate::size::human;
use crate::volumes::luks::{Keyring, Opened};
use crate::volumes::md;
use crate::volumes::thin;

/// How deep partition tables and LVs may nest (a disk, its PV partition, an LV of a
/// VM's disk, that disk's partition): a bound on hostile tables that contain
/// themselves.
const MAX_DEPTH: u32 = 4;

/// For each device `(name, path)` of one backup, the block ranges (first block, count;
/// sorted, disjoint) whose every byte lies in space a filesystem on it marks free,
/// LVs spanning several of these devices included. A device that cannot be opened
/// gets none.
pub(super) fn free_blocks(
    devices: &[(&str, &Path)],
    block_size: u64,
    passphrases: &[crate::passphrase::Secret],
) -> Vec<Vec<(u64, u64)>> {
    let mut open = Vec::new();
    let mut index = Vec::new();
    for (name, path) in devices {
        match FileReader::open(path) {
            Ok(d) => {
                index.push(Some(open.len()));
                open.push((name.to_string(), Arc::new(d) as Arc<dyn ReadAt>));
            }
            Err(e) => {
                tracing::warn!("device {name}: free space not skipped: {e}");
                index.push(None);
            }
        }
    }
    let mut found = free_blocks_of(&open, block_size, Keyring::new(passphrases.to_vec()));
    index
        .into_iter()
        .map(|i| i.map(|i| std::mem::take(&mut found[i])).unwrap_or_default())
        .collect()
}

/// [`free_blocks`] of one device already open (what the disk fuzz target checks:
/// sorted, disjoint and inside the device, whatever its bytes).
pub fn free_blocks_in(dev: Arc<dyn ReadAt>, name: &str, block_size: u64) -> Vec<(u64, u64)> {
    free_blocks_of(&[(name.to_string(), dev)], block_size, Keyring::default())
        .pop()
        .unwrap_or_default()
}

/// [`free_blocks`] of devices already open (name, reader).
fn free_blocks_of(
    devices: &[(String, Arc<dyn ReadAt>)],
    block_size: u64,
    keyring: Keyring,
) -> Vec<Vec<(u64, u64)>> {
    let (arrays, striped) = md_arrays(devices);
    let mut finder = Finder {
        arrays,
        keyring,
        ..Finder::default()
    };
    let mut bytes = Vec::with_capacity(devices.len());
    for (i, (name, dev)) in devices.iter().enumerate() {
        finder.name = name.clone();
        finder.device = i;
        finder.known = 0;
        bytes.push(finder.volume(dev.clone(), "", 0, Some(0)));
        if finder.known == 0 {
            eprintln!(
                "note: device {name}: no ext2/3/4, XFS, NTFS, btrfs, FAT or exFAT volume found on it, so --skip-free leaves nothing out"
            );
        }
    }
    finder.spanning_lvs(&mut bytes);
    finder.spanning_btrfs(devices, &mut bytes);
    finder.striped_arrays(&striped, devices, &mut bytes);
    bytes
        .into_iter()
        .map(|b| whole_blocks(&merged(b), block_size))
        .collect()
}

/// The md arrays whose members are the devices or their partitions: the freshest
/// superblock of each.
fn md_arrays(devices: &[(String, Arc<dyn ReadAt>)]) -> (md::Arrays, Vec<Striped>) {
    let mut arrays = md::Arrays::default();
    let mut striped = Vec::new();
    for (i, (_, dev)) in devices.iter().enumerate() {
        let mut vols: Vec<(u64, Arc<dyn ReadAt>)> = vec![(0, dev.clone())];
        if let Ok(Some(t)) = crate::volumes::read_table(&**dev) {
            for p in &t.partitions {
                vols.push((p.start, Arc::new(Slice::new(dev.clone(), p.start, p.len))));
            }
        }
        for (base, v) in vols {
            if let Ok(Some(m)) = md::member(&*v) {
                arrays.add(&m);
                if m.spread() {
                    striped.push(Striped {
                        device: i,
                        base,
                        member: m,
                        vol: v,
                    });
                }
            }
        }
    }
    (arrays, striped)
}

/// A member of an array that spreads its data over its members, found on a device.
struct Striped {
    device: usize,
    /// Byte offset of the member on its device.
    base: u64,
    member: md::Member,
    vol: Arc<dyn ReadAt>,
}

/// Looks through devices' layers for the free space of their filesystems.
#[derive(Default)]
struct Finder {
    /// The device being searched, for the log.
    name: String,
    /// Its index among the devices searched together.
    device: usize,
    /// Filesystems and LVM PVs whose free space was asked for.
    known: usize,
    /// The PVs found at known places on the devices.
    pvs: Vec<FoundPv>,
    /// The freshest superblock of each md array among the devices and their
    /// partitions, to tell stale members.
    arrays: crate::volumes::md::Arrays,
    /// Passphrases for LUKS volumes.
    keyring: Keyring,
    /// Devices of btrfs volumes spanning several, found at known places: searched
    /// together once all devices are.
    btrfs: Vec<SpreadBtrfs>,
}

/// A device of a btrfs volume spanning several, found on one of the devices.
struct SpreadBtrfs {
    device: usize,
    /// Byte offset of it on its device.
    base: u64,
    vol: Arc<dyn ReadAt>,
    fsid: [u8; 16],
}

/// An LVM PV found on one of the devices.
struct FoundPv {
    device: usize,
    /// Byte offset of the PV on its device.
    base: u64,
    vol: Arc<dyn ReadAt>,
    uuid: String,
    vg: crate::volumes::lvm::Vg,
}

impl Finder {
    /// Free byte ranges of `vol` (offsets in it), through a partition table on it or,
    /// without one, what it holds. `what` names `vol` for the log ("" for the device).
    fn volume(
        &mut self,
        vol: Arc<dyn ReadAt>,
        what: &str,
        depth: u32,
        base: Option<u64>,
    ) -> Vec<(u64, u64)> {
        let name = self.name.clone();
        if let Some(free) = self.md_member(&vol, what, depth, base) {
            return free;
        }
        let table = match crate::volumes::read_table(&*vol) {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!("device {name}: free space not skipped: partition table: {e}");
                return Vec::new();
            }
        };
        let Some(t) = table else {
            let what = if what.is_empty() {
                "the whole device"
            } else {
                what
            };
            return self.contents(vol, what, depth, base);
        };
        if depth >= MAX_DEPTH {
            tracing::warn!("device {name}: {what}: partition tables nest too deep; kept whole");
            return Vec::new();
        }
        // An extended partition holds the logical ones (and their EBRs).
        let mut parts: Vec<(String, u64, u64)> = t
            .partitions
            .iter()
            .filter(|p| !matches!(p.kind.as_str(), "0x05" | "0x0f" | "0x85"))
            .map(|p| {
                (
                    within(what, &format!("partition {}", p.number)),
                    p.start,
                    p.len,
                )
            })
            .collect();
        parts.sort_by_key(|p| p.1);
        if parts.windows(2).any(|w| w[0].1 + w[0].2 > w[1].1) {
            tracing::warn!("device {name}: free space not skipped: {what} partitions overlap");
            return Vec::new();
        }
        let mut out = Vec::new();
        for (what, start, len) in parts {
            let part: Arc<dyn ReadAt> = Arc::new(Slice::new(vol.clone(), start, len));
            let free = self.volume(part, &what, depth + 1, base.map(|b| b + start));
            out.extend(free.into_iter().map(|(o, l)| (start + o, l)));
        }
        out
    }

    /// Free byte ranges of `vol` when it is an md member (`None` when it is not): in
    /// a RAID1 member's array data (a partition table or what it holds), past or
    /// before its superblock (and any write-intent bitmap), which are kept whole;
    /// none in a member whose bytes are not the array's as it stands (a spare, one
    /// being rebuilt, one behind another member of these devices, one of a striped
    /// level), which is kept whole.
    fn md_member(
        &mut self,
        vol: &Arc<dyn ReadAt>,
        what: &str,
        depth: u32,
        base: Option<u64>,
    ) -> Option<Vec<(u64, u64)>> {
        let m = md::member(&**vol).ok()??;
        let what = if what.is_empty() {
            "the whole device"
        } else {
            what
        };
        if m.spread() {
            // Searched with its array, once all devices are known.
            self.known += 1;
            return Some(Vec::new());
        }
        if let Some(why) = self.arrays.unusable(&m) {
            eprintln!(
                "note: device {}: {what}: md member (superblock {}) {why}; kept whole",
                self.name, m.version
            );
            return Some(Vec::new());
        }
        if depth >= MAX_DEPTH {
            return Some(Vec::new());
        }
        let inner = format!("{what} (md array {})", m.name);
        let free = self.volume(m.data(vol), &inner, depth + 1, base.map(|b| b + m.offset));
        Some(free.into_iter().map(|(o, l)| (m.offset + o, l)).collect())
    }

    /// Free byte ranges of `vol` when it is a LUKS volume (`None` when it is not):
    /// once a passphrase opens it, what its plaintext holds marks free, cut to whole
    /// encrypted sectors and moved to where their ciphertext lies. Restored, such a
    /// sector holds zeros, which decrypt to noise: free space either way. A PV inside
    /// is searched on its own (its LVs are not matched with other devices').
    fn luks(&mut self, vol: &Arc<dyn ReadAt>, what: &str, depth: u32) -> Option<Vec<(u64, u64)>> {
        let plain = match self.keyring.open(vol) {
            Opened::NotLuks => return None,
            Opened::Open(plain) => plain,
            Opened::Locked(why) => {
                eprintln!(
                    "note: device {}: {what}: {why}: its free space is kept{}",
                    self.name,
                    if why.contains("no --key-file") {
                        " (--key-file lets --skip-free look inside)"
                    } else {
                        ""
                    }
                );
                return Some(Vec::new());
            }
        };
        if depth >= MAX_DEPTH {
            return Some(Vec::new());
        }
        let (start, sector) = (plain.data_start(), plain.sector());
        let inner = format!("{what} (LUKS)");
        let free = self.volume(plain, &inner, depth + 1, None);
        let mut out = Vec::new();
        for (o, l) in free {
            let (a, b) = (o.div_ceil(sector) * sector, (o + l) / sector * sector);
            if b > a {
                crate::readat::push_range(&mut out, start + a, b - a);
            }
        }
        Some(out)
    }

    /// Free byte ranges of an unpartitioned `vol`: an LVM PV or a filesystem.
    fn contents(
        &mut self,
        vol: Arc<dyn ReadAt>,
        what: &str,
        depth: u32,
        base: Option<u64>,
    ) -> Vec<(u64, u64)> {
        let name = self.name.clone();
        if let Some(free) = self.luks(&vol, what, depth) {
            return free;
        }
        if let Some(free) = self.lvm(&vol, what, depth, base) {
            return free;
        }
        if let Some(base) = base {
            if let Some(fsid) = crate::ntfs_ext::btrfs::spanning_fsid(&*vol) {
                // Searched with its other devices, once all devices are.
                self.known += 1;
                self.btrfs.push(SpreadBtrfs {
                    device: self.device,
                    base,
                    vol,
                    fsid,
                });
                return Vec::new();
            }
        }
        let Some((kind, found)) = crate::ntfs_ext::free_space(vol, &format!("{name} {what}"))
        else {
            return Vec::new();
        };
        self.known += 1;
        match found {
            Ok(free) => {
                let total: u64 = free.iter().map(|r| r.1).sum();
                tracing::info!("device {name}: {what} ({kind}): {} free", human(total));
                free
            }
            Err(e) => {
                eprintln!("warning: device {name}: {what} ({kind}): free space not skipped: {e}");
                Vec::new()
            }
        }
    }

    /// When `vol` is an LVM PV: its extents no LV uses and, mapped back onto it, the
    /// free space inside the LVs that lie wholly on it and the chunks of its thin
    /// pools no thin LV maps. `None` when it is not a PV.
    fn lvm(
        &mut self,
        vol: &Arc<dyn ReadAt>,
        what: &str,
        depth: u32,
        base: Option<u64>,
    ) -> Option<Vec<(u64, u64)>> {
        use crate::volumes::lvm;
        let name = self.name.clone();
        let label = lvm::read_label(&**vol).ok()??;
        let vg = lvm::read_metadata(&**vol, &label).ok()??;
        let (Some(unused), Some(lvs)) = (
            lvm::unused_extents(&vg, &label.uuid),
            lvm::lvs_within(&vg, &label.uuid),
        ) else {
            self.known += 1;
            eprintln!(
                "note: device {name}: {what}: VG {} has volumes this reader does not map (or that overlap), so nothing in it is left out",
                vg.name
            );
            return Some(Vec::new());
        };
        self.known += 1;
        // A PV lying at a known place on the device: LVs spanning it and PVs on other
        // devices of this backup are searched once all devices are.
        if let Some(base) = base {
            self.pvs.push(FoundPv {
                device: self.device,
                base,
                vol: vol.clone(),
                uuid: label.uuid.clone(),
                vg: vg.clone(),
            });
        }
        let size = vol.size();
        let mut out: Vec<(u64, u64)> = unused
            .into_iter()
            .filter(|&(o, _)| o < size)
            .map(|(o, l)| (o, l.min(size - o)))
            .collect();
        let total: u64 = out.iter().map(|r| r.1).sum();
        tracing::info!("device {name}: {what} (LVM PV): {} in no LV", human(total));
        if depth >= MAX_DEPTH {
            return Some(out);
        }
        let found = HashMap::from([(label.uuid.clone(), vol.clone())]);
        for lv in lvs {
            let lv_what = within(what, &format!("LV {}/{}", vg.name, lv.name));
            let lv_vol = match lvm::LvVolume::open(&vg, lv, &found) {
                Ok(v) => Arc::new(v),
                Err(e) => {
                    tracing::info!("device {name}: {lv_what}: kept whole: {e}");
                    continue;
                }
            };
            let free = self.volume(lv_vol.clone(), &lv_what, depth + 1, None);
            out.extend(on_pv(&lv_vol, vol, free));
        }
        out.extend(self.thin_pools(&vg, &found, vol, what, depth));
        Some(out)
    }

    /// Searches each striped md array (RAID0/4/5/6/10) whose members are among the
    /// devices, assembled as the mount assembles it, and adds to each member's
    /// device what the array's free space lets go unread
    /// ([`md::Assembled::free_member_ranges`]: whole stripes on parity levels).
    fn striped_arrays(
        &mut self,
        striped: &[Striped],
        devices: &[(String, Arc<dyn ReadAt>)],
        bytes: &mut [Vec<(u64, u64)>],
    ) {
        for group in grouped(striped, |x| x.member.array) {
            let s = group[0];
            let members: Vec<(md::Member, Arc<dyn ReadAt>)> = group
                .iter()
                .map(|x| (x.member.clone(), x.vol.clone()))
                .collect();
            let name = s.member.file_name();
            let array = match md::assemble(&members, &self.arrays) {
                Ok(a) => Arc::new(a),
                Err(why) => {
                    eprintln!(
                        "note: md array {name}: not assembled ({why}): its members are kept whole"
                    );
                    continue;
                }
            };
            self.name = devices[s.device].0.clone();
            self.device = s.device;
            let what = format!("md array {name}");
            let free = self.volume(array.clone(), &what, 1, None);
            for (i, off, len) in array.free_member_ranges(&merged(free)) {
                let m = group[i];
                bytes[m.device].push((m.base + m.member.offset + off, len));
            }
        }
    }

    /// Searches each btrfs volume spanning several of the devices (all of its
    /// devices among them, at known places), adding to each device what the volume
    /// holds nothing in there ([`crate::ntfs_ext::btrfs::free_ranges_of`]).
    fn spanning_btrfs(
        &mut self,
        devices: &[(String, Arc<dyn ReadAt>)],
        bytes: &mut [Vec<(u64, u64)>],
    ) {
        let found = std::mem::take(&mut self.btrfs);
        for group in grouped(&found, |x| x.fsid) {
            let vols: Vec<Arc<dyn ReadAt>> = group.iter().map(|x| x.vol.clone()).collect();
            let names: Vec<&str> = group.iter().map(|x| devices[x.device].0.as_str()).collect();
            let label = format!("btrfs over {}", names.join(", "));
            match crate::ntfs_ext::btrfs::free_ranges_of(&vols, &label) {
                Ok(per) => {
                    for (m, free) in group.iter().zip(per) {
                        let total: u64 = free.iter().map(|r| r.1).sum();
                        tracing::info!(
                            "device {}: {label}: {} free",
                            devices[m.device].0,
                            human(total)
                        );
                        bytes[m.device].extend(free.into_iter().map(|(o, l)| (m.base + o, l)));
                    }
                }
                Err(e) => eprintln!("note: {label}: free space not skipped: {e}"),
            }
        }
    }

    /// The free space of LVs spanning several of the PVs found (a VG over two disks),
    /// searched once every device has been, added to each PV's device's `bytes`. A VG
    /// whose PVs' metadata copies differ, that maps a segment type this reader does not,
    /// whose extents overlap, or whose PV is found twice (RAID1 members) is left alone.
    fn spanning_lvs(&mut self, bytes: &mut [Vec<(u64, u64)>]) {
        use crate::volumes::lvm;
        let pvs = std::mem::take(&mut self.pvs);
        let mut ids: Vec<&str> = pvs.iter().map(|p| p.vg.id.as_str()).collect();
        ids.sort_unstable();
        ids.dedup();
        for id in ids {
            let members: Vec<&FoundPv> = pvs.iter().filter(|p| p.vg.id == id).collect();
            let vg = &members[0].vg;
            if members.len() < 2 {
                continue;
            }
            let found: HashMap<String, Arc<dyn ReadAt>> = members
                .iter()
                .map(|p| (p.uuid.clone(), p.vol.clone()))
                .collect();
            if members.iter().any(|p| p.vg != *vg)
                || found.len() != members.len()
                || members
                    .iter()
                    .any(|p| lvm::lvs_within(vg, &p.uuid).is_none())
            {
                eprintln!(
                    "note: VG {}: its PVs disagree, repeat, or hold volumes this reader does not map, so the LVs spanning them are read whole",
                    vg.name
                );
                continue;
            }
            self.name = format!("VG {}", vg.name);
            for lv in vg.lvs.iter().filter(|l| l.visible) {
                let on = lvm::lv_pvs(vg, lv);
                if !lv.is_striped_or_raid()
                    || on.len() < 2
                    || !on
                        .iter()
                        .all(|&i| vg.pvs.get(i).is_some_and(|d| found.contains_key(&d.uuid)))
                {
                    continue;
                }
                let lv_vol = match lvm::LvVolume::open(vg, lv, &found) {
                    Ok(v) => Arc::new(v),
                    Err(e) => {
                        tracing::info!("VG {}: LV {}: kept whole: {e}", vg.name, lv.name);
                        continue;
                    }
                };
                let what = format!("LV {}/{}", vg.name, lv.name);
                let free = merged(self.volume(lv_vol.clone(), &what, 1, None));
                for (pv, at, n) in lv_vol.free_pv_ranges(&free) {
                    if let Some(p) = members.iter().find(|p| Arc::ptr_eq(&p.vol, &pv)) {
                        bytes[p.device].push((p.base + at, n));
                    }
                }
            }
        }
    }

    /// From `vg`'s thin pools whose metadata and data sub-LVs lie on `vol` (`found`
    /// holds only it), as ranges of `vol`: the data chunks no thin LV maps, and those
    /// a single thin LV maps alone whose filesystem calls them wholly free.
    fn thin_pools(
        &mut self,
        vg: &crate::volumes::lvm::Vg,
        found: &HashMap<String, Arc<dyn ReadAt>>,
        vol: &Arc<dyn ReadAt>,
        what: &str,
        depth: u32,
    ) -> Vec<(u64, u64)> {
        use crate::volumes::lvm;
        let name = self.name.clone();
        let mut out = Vec::new();
        for (pool, meta, data, chunk) in vg.lvs.iter().filter_map(|l| {
            l.segments.iter().find_map(|s| match &s.kind {
                lvm::SegKind::ThinPool {
                    metadata,
                    data,
                    chunk,
                } => Some((&l.name, metadata, data, *chunk)),
                _ => None,
            })
        }) {
            let pool_what = within(what, &format!("thin pool {}/{pool}", vg.name));
            let sub = |n: &str| -> Result<Arc<lvm::LvVolume>, String> {
                let lv = vg
                    .lvs
                    .iter()
                    .find(|l| l.name == n)
                    .ok_or(format!("no LV {n}"))?;
                Ok(Arc::new(lvm::LvVolume::open(vg, lv, found)?))
            };
            let (meta, data) = match (sub(meta), sub(data)) {
                (Ok(m), Ok(d)) => (m, d),
                (Err(e), _) | (_, Err(e)) => {
                    tracing::info!("device {name}: {pool_what}: kept whole: {e}");
                    continue;
                }
            };
            let usage = match thin::pool_usage(meta.clone(), data.clone(), chunk) {
                Ok(u) => u,
                Err(e) => {
                    eprintln!(
                        "warning: device {name}: {pool_what}: unmapped space not skipped: {e}"
                    );
                    continue;
                }
            };
            let free: Vec<(u64, u64)> = usage
                .unmapped()
                .into_iter()
                .map(|(c, n)| (c * chunk, n * chunk))
                .collect();
            let total: u64 = free.iter().map(|r| r.1).sum();
            tracing::info!("device {name}: {pool_what}: {} in no thin LV", human(total));
            out.extend(on_pv(&data, vol, free));
            if depth >= MAX_DEPTH {
                continue;
            }
            // Each visible thin LV of the pool, searched like a device.
            for lv in vg.lvs.iter().filter(|l| l.visible) {
                let Some((device_id, extents)) = lv.segments.iter().find_map(|s| match &s.kind {
                    lvm::SegKind::Thin { pool: p, device_id } if p == pool => {
                        Some((*device_id, s.count))
                    }
                    _ => None,
                }) else {
                    continue;
                };
                let lv_what = within(what, &format!("LV {}/{}", vg.name, lv.name));
                let thin = match thin::ThinVolume::open(
                    meta.clone(),
                    data.clone(),
                    device_id,
                    chunk,
                    extents.saturating_mul(vg.extent_bytes),
                ) {
                    Ok(t) => Arc::new(t),
                    Err(e) => {
                        tracing::info!("device {name}: {lv_what}: kept whole: {e}");
                        continue;
                    }
                };
                let free = merged(self.volume(thin.clone(), &lv_what, depth + 1, None));
                match alone_and_free(&thin, &usage, &free) {
                    Ok(chunks) => out.extend(on_pv(&data, vol, chunks)),
                    Err(e) => {
                        eprintln!("warning: device {name}: {lv_what}: free space not skipped: {e}")
                    }
                }
            }
        }
        out
    }
}

/// The data-volume byte ranges of the chunks of thin volume `thin` lying wholly in its
/// filesystems' `free` ranges (sorted, joined) that no other mapping shares.
fn alone_and_free(
    thin: &crate::volumes::thin::ThinVolume,
    usage: &crate::volumes::thin::PoolUsage,
    free: &[(u64, u64)],
) -> std::io::Result<Vec<(u64, u64)>> {
    let chunk = thin.chunk();
    let mut out = Vec::new();
    for &(o, l) in free {
        for v in o.div_ceil(chunk)..(o + l) / chunk {
            if let Some(at) = thin.data_offset(v)? {
                if usage.exclusive(at / chunk) {
                    out.push((at, chunk));
                }
            }
        }
    }
    Ok(out)
}

/// Byte ranges `free` of LV `lv`, as ranges of the PV `pv` (a part on another PV is
/// dropped: that device's own backup would need to vouch for it).
fn on_pv(
    lv: &crate::volumes::lvm::LvVolume,
    pv: &Arc<dyn ReadAt>,
    free: Vec<(u64, u64)>,
) -> Vec<(u64, u64)> {
    free.into_iter()
        .flat_map(|(o, l)| lv.pv_ranges(o, l))
        .filter(|(d, _, _)| Arc::ptr_eq(d, pv))
        .map(|(_, at, n)| (at, n))
        .collect()
}

/// `inner` named as a part of `outer` (the device itself when `outer` is empty).
fn within(outer: &str, inner: &str) -> String {
    if outer.is_empty() {
        inner.to_string()
    } else {
        format!("{outer}, {inner}")
    }
}

/// `items` in groups of equal `key`, groups in the order their first item comes.
fn grouped<T, K: PartialEq>(items: &[T], key: impl Fn(&T) -> K) -> Vec<Vec<&T>> {
    let mut out: Vec<Vec<&T>> = Vec::new();
    for it in items {
        match out.iter_mut().find(|g| key(g[0]) == key(it)) {
            Some(g) => g.push(it),
            None => out.push(vec![it]),
        }
    }
    out
}

/// The blocks of `block_size` bytes lying wholly inside the sorted byte `ranges`,
/// as (first block, count), merged.
fn whole_blocks(ranges: &[(u64, u64)], block_size: u64) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for &(off, len) in ranges {
        let first = off.div_ceil(block_size);
        let end = (off + len) / block_size;
        if first >= end {
            continue;
        }
        crate::readat::push_range(&mut out, first, end - first);
    }
    out
}

/// Blocks in both lists of sorted, disjoint (first block, count) ranges.
pub(super) fn overlap_blocks(a: &[(u64, u64)], b: &[(u64, u64)]) -> u64 {
    let (mut i, mut j, mut n) = (0, 0, 0);
    while i < a.len() && j < b.len() {
        let (a0, a1) = (a[i].0, a[i].0 + a[i].1);
        let (b0, b1) = (b[j].0, b[j].0 + b[j].1);
        n += a1.min(b1).saturating_sub(a0.max(b0));
        if a1 <= b1 {
            i += 1;
        } else {
            j += 1;
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlap_counts_blocks_in_both_lists() {
        let free = [(0, 10), (20, 5), (40, 100)];
        let read = [(5, 20), (30, 15), (200, 1)];
        // 5..10, 20..25, 40..45.
        assert_eq!(overlap_blocks(&free, &read), 15);
        assert_eq!(overlap_blocks(&free, &[]), 0);
    }

    #[test]
    fn pieces_of_free_space_join() {
        // Out of order, touching, overlapping, apart.
        let got = merged(vec![(100, 50), (0, 10), (10, 5), (140, 20), (300, 1)]);
        assert_eq!(got, vec![(0, 15), (100, 60), (300, 1)]);
        // Two halves of a 64-byte block make it whole only once joined.
        assert_eq!(
            whole_blocks(&merged(vec![(32, 32), (0, 32)]), 64),
            vec![(0, 1)]
        );
    }

    #[test]
    fn only_whole_blocks_count() {
        let k = 1024;
        // 4 KiB free from 2 KiB: no whole 4 KiB block; 12 KiB from 4 KiB: three.
        assert_eq!(whole_blocks(&[(2 * k, 4 * k)], 4 * k), vec![]);
        assert_eq!(whole_blocks(&[(4 * k, 12 * k)], 4 * k), vec![(1, 3)]);
        // Adjacent ranges make one run; a range ending mid-block stops before it.
        assert_eq!(
            whole_blocks(&[(0, 8 * k), (8 * k, 6 * k), (20 * k, 4 * k)], 4 * k),
            vec![(0, 3), (5, 1)]
        );
    }
}
