//! Linux software RAID (md) members. A RAID1 member (or a RAID10 member with as many
//! near copies as devices) holds a whole copy of the array: with a version 1.1 or 1.2
//! superblock at an offset past it, so the filesystem (or LVM PV) on the array is
//! found only through that offset; with 0.90 or 1.0 (superblock at the end) from 0.
//!
//! Not every member's copy is the array's, though: a spare or a member marked faulty
//! holds no array data, one being rebuilt holds it only below its recovery offset,
//! and a member that dropped out of a degraded array keeps the array as it was then.
//! [`Member::problem`] names what the member's own superblock says; [`Arrays`] finds
//! the stale ones among the members of one point (events behind the freshest, as
//! mdadm's assembly judges, or marked out of the array by a fresher member). Members
//! of other levels spread the array over several devices and are not read either:
//! their first bytes can look like a filesystem whose other blocks lie elsewhere.
//!
//! Every field is checked: magic, version, where the superblock says it lies, its
//! checksum, and that the data range lies inside the member.

use std::collections::HashMap;
use std::io;
use std::sync::Arc;

use crate::readat::{ReadAt, Slice};

const MAGIC: u32 = 0xa92b_4efc;
/// Version-1 superblock bytes before the device roles.
const FIXED: usize = 256;
/// Roles a 4 KiB superblock has room for (the kernel's limit too).
const MAX_DEVS: usize = (4096 - FIXED) / 2;
/// Version-1 features: a member being rebuilt, a reshape under way.
const FEATURE_RECOVERY_OFFSET: u32 = 2;
const FEATURE_RESHAPE_ACTIVE: u32 = 4;
/// Roles at or above this are no data slot: journal, faulty, spare.
const ROLE_JOURNAL: u16 = 0xfffd;
const ROLE_FAULTY: u16 = 0xfffe;
const ROLE_SPARE: u16 = 0xffff;
/// 0.90 device descriptor state bits.
const DISK_FAULTY: u32 = 1 << 0;
const DISK_ACTIVE: u32 = 1 << 1;
const DISK_SYNC: u32 = 1 << 2;
/// 0.90 descriptors: 27 of 32 words from word 128; this device's at word 992.
const V090_DISKS: usize = 27;

/// One md member as its superblock describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Superblock version, for messages ("0.90", "1.0", "1.1", "1.2").
    pub version: &'static str,
    /// The array's UUID, shared by its members.
    pub array: [u8; 16],
    /// The array's name, as mdadm stored it ("host:name"; empty for 0.90).
    pub name: String,
    /// RAID level (-1 linear, 0, 1, 4, 5, 6, 10).
    pub level: i32,
    /// Byte offset of the array's first byte on this member.
    pub offset: u64,
    /// Bytes of array data.
    pub len: u64,
    /// Update count: members behind the array's freshest missed writes.
    pub events: u64,
    /// This member's slot in `roles`.
    pub slot: usize,
    /// Role of each slot: a data position, or journal / faulty / spare.
    roles: Vec<u16>,
    /// Every member holds the whole array in order.
    whole: bool,
    /// Array bytes rebuilt so far, when the member is being rebuilt.
    recovering: Option<u64>,
    /// A reshape (level, layout or device count) is under way.
    reshaping: bool,
    /// Layout (RAID5/6 algorithm, RAID10 copies), chunk bytes, devices in the array.
    layout: u32,
    chunk: u64,
    disks: u32,
    /// Bytes of data room on this member (from `offset`).
    room: u64,
}

fn le16(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes(b[o..o + 2].try_into().unwrap())
}

fn le32(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
}

fn le64(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
}

/// 32-bit words summed into 64 bits, the word at `skip` (the checksum field) left
/// out, a trailing half word added, the carry folded back once: the checksum of
/// version-1 and of 0.90 superblocks alike.
fn checksum(sb: &[u8], skip: usize) -> u32 {
    let mut sum: u64 = 0;
    let mut words = sb.chunks_exact(4);
    for (i, w) in words.by_ref().enumerate() {
        if i != skip / 4 {
            sum += u32::from_le_bytes(w.try_into().unwrap()) as u64;
        }
    }
    if let [a, b] = words.remainder() {
        sum += u16::from_le_bytes([*a, *b]) as u64;
    }
    ((sum & 0xFFFF_FFFF) + (sum >> 32)) as u32
}

/// Whether each member of an array of `level`, `layout` and `disks` holds the whole
/// array in order: RAID1, and RAID10 whose near copies are as many as its devices
/// (mdadm's default `near=2` on two devices), where every chunk lies on every member
/// at the same place.
fn whole_copy(level: i32, layout: u32, disks: u32) -> bool {
    let (near, far, offset) = (layout & 0xFF, (layout >> 8) & 0xFF, layout >> 16);
    level == 1 || level == 10 && disks >= 2 && near == disks && far == 1 && offset == 0
}

/// The level's name as mdadm prints it.
fn level_name(level: i32) -> String {
    match level {
        -1 => "linear".into(),
        l => format!("RAID{l}"),
    }
}

/// The md superblock of `vol`, if it has one: version 1.1 at its start, 1.2 at
/// 4 KiB, 1.0 near its end, 0.90 in its last 64 KiB. A superblock that fails its
/// checks is logged and not used.
pub fn member(vol: &dyn ReadAt) -> io::Result<Option<Member>> {
    let size = vol.size();
    let sectors = size / 512;
    let end_v1 = sectors.checked_sub(16).map(|s| (s & !7) * 512);
    let end_v090 = (sectors & !127).checked_sub(128).map(|s| s * 512);
    let places = [(Some(0u64), "1.1"), (Some(4096), "1.2"), (end_v1, "1.0")];
    for (at, version) in places {
        let Some(at) = at.filter(|at| at + 4096 <= size) else {
            continue;
        };
        let mut b = vec![0u8; 4096];
        // Bytes a failing disk's backup could not give hold no superblock we can see;
        // the other places still may.
        if !super::read_or_unreadable(vol, at, &mut b)? {
            continue;
        }
        if le32(&b, 0) == MAGIC && le32(&b, 4) == 1 {
            return Ok(version1(&b, at, size, version));
        }
    }
    if let Some(at) = end_v090.filter(|at| at + 4096 <= size) {
        let mut b = vec![0u8; 4096];
        if !super::read_or_unreadable(vol, at, &mut b)? {
            return Ok(None);
        }
        if le32(&b, 0) == MAGIC && le32(&b, 4) == 0 && matches!(le32(&b, 8), 90 | 91) {
            return Ok(version090(&b, at));
        }
    }
    Ok(None)
}

/// A version-1 superblock `b` found at byte `at` of a member of `size` bytes.
fn version1(b: &[u8], at: u64, size: u64, version: &'static str) -> Option<Member> {
    let max_dev = le32(b, 0xDC) as usize;
    if max_dev > MAX_DEVS || le64(b, 0x90) != at / 512 {
        tracing::warn!("md superblock {version} at {at}: implausible fields; not read");
        return None;
    }
    let sb = &b[..FIXED + 2 * max_dev];
    if checksum(sb, 0xD8) != le32(sb, 0xD8) {
        tracing::warn!("md superblock {version} at {at}: checksum mismatch; not read");
        return None;
    }
    let (level, layout, disks) = (le32(sb, 0x48) as i32, le32(sb, 0x4C), le32(sb, 0x5C));
    let offset = le64(sb, 0x80).checked_mul(512)?;
    let len = le64(sb, 0x50).checked_mul(512)?;
    let whole = whole_copy(level, layout, disks);
    // The data must lie clear of the superblock: after it (1.1, 1.2) or before it.
    let clear = offset >= at + 4096 || offset.checked_add(len).is_some_and(|e| e <= at);
    if whole && (len == 0 || !clear || offset.checked_add(len).is_none_or(|e| e > size)) {
        tracing::warn!(
            "md superblock {version} at {at}: data {offset}+{len} does not fit the member ({size} bytes); not read"
        );
        return None;
    }
    let features = le32(sb, 0x08);
    let mut array = [0u8; 16];
    array.copy_from_slice(&sb[0x10..0x20]);
    Some(Member {
        version,
        array,
        name: String::from_utf8_lossy(&sb[0x20..0x40])
            .trim_end_matches('\0')
            .to_string(),
        level,
        offset,
        len,
        events: le64(sb, 0xC8),
        slot: le32(sb, 0xA0) as usize,
        roles: (0..max_dev).map(|i| le16(sb, FIXED + 2 * i)).collect(),
        whole,
        recovering: (features & FEATURE_RECOVERY_OFFSET != 0)
            .then(|| le64(sb, 0x98).saturating_mul(512)),
        reshaping: features & FEATURE_RESHAPE_ACTIVE != 0,
        layout,
        chunk: le32(sb, 0x58) as u64 * 512,
        disks,
        room: le64(sb, 0x88).saturating_mul(512),
    })
}

/// A 0.90 superblock `b` (little-endian, as x86 writes it) at the end of a member of
/// `size` bytes: the data starts at 0.
fn version090(b: &[u8], at: u64) -> Option<Member> {
    if checksum(b, 38 * 4) != le32(b, 38 * 4) {
        tracing::warn!("md superblock 0.90: checksum mismatch; not read");
        return None;
    }
    let word = |i: usize| le32(b, 4 * i);
    let (level, disks, layout) = (word(7) as i32, word(10), word(64));
    let len = (word(8) as u64) * 1024;
    let whole = whole_copy(level, layout, disks);
    if whole && (len == 0 || len > at) {
        tracing::warn!(
            "md superblock 0.90: {len} bytes of data run into the superblock at {at}; not read"
        );
        return None;
    }
    let mut array = [0u8; 16];
    for (i, w) in [5, 13, 14, 15].into_iter().enumerate() {
        array[4 * i..4 * i + 4].copy_from_slice(&word(w).to_le_bytes());
    }
    // A descriptor's role: its data slot when active and in sync, else faulty/spare.
    let role = |d: usize| {
        let state = word(d + 4);
        if state & DISK_FAULTY != 0 {
            ROLE_FAULTY
        } else if state & (DISK_ACTIVE | DISK_SYNC) == DISK_ACTIVE | DISK_SYNC {
            u16::try_from(word(d + 3))
                .unwrap_or(ROLE_SPARE)
                .min(ROLE_JOURNAL - 1)
        } else {
            ROLE_SPARE
        }
    };
    // Slots are descriptor numbers; this device's own descriptor decides its role.
    let mut roles = vec![ROLE_SPARE; V090_DISKS];
    for k in 0..V090_DISKS {
        let d = 128 + 32 * k;
        if let Some(r) = roles.get_mut(word(d) as usize) {
            *r = role(d);
        }
    }
    let slot = word(992) as usize;
    if slot >= V090_DISKS {
        tracing::warn!("md superblock 0.90: device number {slot} out of range; not read");
        return None;
    }
    roles[slot] = role(992);
    Some(Member {
        version: "0.90",
        array,
        name: String::new(),
        level,
        offset: 0,
        len,
        events: (word(40) as u64) << 32 | word(39) as u64,
        slot,
        roles,
        whole,
        recovering: None,
        // Minor version 91 marks a reshape under way.
        reshaping: word(2) == 91,
        layout,
        chunk: word(65) as u64,
        disks,
        // The data may run up to the superblock.
        room: at,
    })
}

impl Member {
    /// Why this member's own superblock says its data is not the array's, if it does.
    pub fn problem(&self) -> Option<String> {
        if !self.whole {
            return Some(format!(
                "a member of {}, whose data is spread over several devices",
                level_name(self.level)
            ));
        }
        match self.roles.get(self.slot).copied().unwrap_or(ROLE_SPARE) {
            ROLE_SPARE => return Some("a spare (no array data)".into()),
            ROLE_FAULTY => return Some("marked faulty".into()),
            ROLE_JOURNAL => return Some("the array's journal device".into()),
            _ => {}
        }
        if let Some(done) = self.recovering {
            return Some(format!("being rebuilt ({done} of {} bytes done)", self.len));
        }
        if self.reshaping && self.level != 1 {
            return Some("in the middle of a reshape".into());
        }
        None
    }

    /// Whether the array's data is spread over its members (RAID0/4/5/6, RAID10 but
    /// for a near copy per device): read only once [`assemble`]d.
    pub fn spread(&self) -> bool {
        !self.whole
    }

    /// A name for the array in a file listing: mdadm's name without its host part, or
    /// the start of the UUID; only letters, digits, `-`, `_` and `.`.
    pub fn file_name(&self) -> String {
        let n = self.name.rsplit(':').next().unwrap_or("");
        let clean: String = n
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        if clean.is_empty() || clean.starts_with('.') {
            let hex: String = self.array[..4].iter().map(|b| format!("{b:02x}")).collect();
            format!("md-{hex}")
        } else {
            clean
        }
    }

    /// The array's data on `vol` (this member) as a volume of its own.
    pub fn data(&self, vol: &Arc<dyn ReadAt>) -> Arc<dyn ReadAt> {
        Arc::new(Slice::new(vol.clone(), self.offset, self.len))
    }
}

/// The freshest superblock seen of each array among the members of one point (or
/// one backup's sources), to tell which of them missed writes.
#[derive(Debug, Default)]
pub struct Arrays(HashMap<[u8; 16], (u64, Vec<u16>)>);

impl Arrays {
    /// Takes `m` into account.
    pub fn add(&mut self, m: &Member) {
        let e = self.0.entry(m.array).or_insert((m.events, m.roles.clone()));
        if m.events > e.0 {
            *e = (m.events, m.roles.clone());
        }
    }

    /// Why `m` holds an older copy than the array's freshest member, if it does: its
    /// events more than one behind (mdadm allows one: the kernel can leave a member
    /// that far behind on a clean shutdown), or its slot marked faulty or spare there.
    pub fn stale(&self, m: &Member) -> Option<String> {
        let (events, roles) = self.0.get(&m.array)?;
        if m.events.saturating_add(1) < *events {
            return Some(format!(
                "stale: {} events against the array's {events}",
                m.events
            ));
        }
        match roles.get(m.slot).copied() {
            Some(ROLE_FAULTY) | Some(ROLE_SPARE) if *events > m.events => {
                Some("stale: a fresher member marks it out of the array".into())
            }
            _ => None,
        }
    }

    /// Why `m`'s copy is not the array's ([`Member::problem`], then [`Self::stale`]).
    pub fn unusable(&self, m: &Member) -> Option<String> {
        m.problem().or_else(|| self.stale(m))
    }
}

/// Why the array of `members` (all of one array UUID, each with its volume) cannot
/// be put together, or the array: RAID0, RAID4/5/6 and RAID10 assembled by md's chunk
/// arithmetic from the members whose copy is current. A RAID4/5/6 array missing one
/// member reads it back from parity (P), as md does when degraded; more missing, or
/// members that disagree on the geometry, and it is not assembled.
pub fn assemble(
    members: &[(Member, Arc<dyn ReadAt>)],
    arrays: &Arrays,
) -> Result<Assembled, String> {
    let Some((first, _)) = members.first() else {
        return Err("no members".into());
    };
    let (level, layout, chunk, disks) =
        (first.level, first.layout, first.chunk, first.disks as usize);
    check_geometry(level, layout, chunk, disks)?;
    if first.reshaping {
        return Err("a reshape is under way".into());
    }
    // Per role: the member (its index in `members`) and where its data starts.
    let mut by_role: Vec<Option<(usize, u64)>> = vec![None; disks];
    let mut room = u64::MAX;
    for (i, (m, vol)) in members.iter().enumerate() {
        if (m.level, m.layout, m.chunk, m.disks as usize) != (level, layout, chunk, disks) {
            return Err("members disagree on the array's geometry".into());
        }
        if let Some(why) = arrays.stale(m) {
            tracing::warn!("md array {}: a member is left out: {why}", m.name);
            continue;
        }
        let Some(&role) = m.roles.get(m.slot).filter(|&&r| (r as usize) < disks) else {
            continue; // a spare, faulty or journal device
        };
        if m.recovering.is_some() {
            continue;
        }
        // RAID0 members may hold less than their room; the others use `len` each.
        let use_len = if level == 0 || m.len == 0 {
            m.room
        } else {
            m.len
        };
        if m.offset.checked_add(use_len).is_none_or(|e| e > vol.size()) || use_len < chunk {
            return Err(format!(
                "a member's data ({} + {use_len} bytes) does not fit it",
                m.offset
            ));
        }
        let rounded = use_len / chunk * chunk;
        if level == 0 && room != u64::MAX && rounded != room {
            // md stripes unequal RAID0 members in zones; only one zone is read here.
            return Err("RAID0 members of unequal size".into());
        }
        room = room.min(rounded);
        if by_role[role as usize].is_some() {
            return Err(format!("two current members claim slot {role}"));
        }
        by_role[role as usize] = Some((i, m.offset));
    }
    let data = by_role
        .iter()
        .map(|r| r.map(|(i, o)| Arc::new(Slice::new(members[i].1.clone(), o, room)) as _))
        .collect();
    Assembled::new(
        level,
        layout,
        chunk,
        data,
        by_role.iter().map(|r| r.map(|(i, _)| i)).collect(),
        room,
    )
}

/// Whether md reads an array of `level`, `layout`, `chunk` bytes and `disks`
/// devices here; the error names what is not.
fn check_geometry(level: i32, layout: u32, chunk: u64, disks: usize) -> Result<(), String> {
    if !matches!(level, 0 | 4 | 5 | 6 | 10) {
        return Err(format!("{} is not assembled", level_name(level)));
    }
    if chunk == 0 || chunk % 512 != 0 || chunk > 1 << 30 || !(2..=256).contains(&disks) {
        return Err(format!(
            "implausible geometry: chunk {chunk} bytes, {disks} devices"
        ));
    }
    let (near, far) = ((layout & 0xFF) as usize, ((layout >> 8) & 0xFF) as usize);
    if level == 10 && (near == 0 || far == 0 || near * far > disks) {
        return Err(format!("RAID10 layout {layout:#x} is not read"));
    }
    let known = match level {
        4 => layout == 0 || layout == 5,
        5 => layout <= 5,
        // The DDF layouts (8-10: rotating parity, Q over every position) and the
        // migration ones (16-20: Q alone on the last device) too.
        6 => layout <= 5 || (8..=10).contains(&layout) || (16..=20).contains(&layout),
        _ => true,
    };
    if !known {
        return Err(format!("{} layout {layout} is not read", level_name(level)));
    }
    Ok(())
}

/// md's RAID5 placement (raid5_compute_sector) over `n` devices: for data slot `dd`
/// of stripe `stripe`, the parity's device and the slot's, in RAID5 layout 0-3 (left
/// or right, asymmetric or symmetric) or 4 (PARITY_0).
fn raid5_place(layout: u32, n: usize, stripe: u64, dd: usize) -> (usize, usize) {
    let r = (stripe % n as u64) as usize;
    let pd = match layout {
        0 | 2 => n - 1 - r,
        1 | 3 => r,
        _ => 0,
    };
    let dd = match layout {
        0 | 1 => dd + (dd >= pd) as usize,
        2 | 3 => (pd + 1 + dd) % n,
        _ => dd + 1,
    };
    (pd, dd)
}

/// An md array assembled from its members (see [`assemble`]).
pub struct Assembled {
    level: i32,
    layout: u32,
    chunk: u64,
    disks: usize,
    /// RAID10: near copies, far copies, and the rows a stripe takes (far copies in
    /// the offset layout).
    near: usize,
    far: usize,
    far_rows: u64,
    /// Which of the members given to [`assemble`] holds each role.
    used: Vec<Option<usize>>,
    /// Each role's data, `None` where the member is missing.
    members: Vec<Option<Arc<dyn ReadAt>>>,
    len: u64,
}

/// Where an array chunk lies: its member (role) and the row on it, and for parity
/// levels the P (and RAID6's Q) member of its stripe.
struct Place {
    dev: usize,
    row: u64,
    p: Option<usize>,
    q: Option<usize>,
}

impl Assembled {
    /// An array in md's geometry (`level`, md's `layout` number, `chunk` bytes) over
    /// one data volume per role (`None` where the member is missing), each `room`
    /// bytes long; `used` names each role's member as the caller counts them. md's
    /// layouts serve other writers of them too (dm-raid under LVM). Errors when the
    /// geometry is not read or more members are missing than the level survives.
    pub fn new(
        level: i32,
        layout: u32,
        chunk: u64,
        members: Vec<Option<Arc<dyn ReadAt>>>,
        used: Vec<Option<usize>>,
        room: u64,
    ) -> Result<Assembled, String> {
        let disks = members.len();
        check_geometry(level, layout, chunk, disks)?;
        let (near, far, offset) = (
            (layout & 0xFF) as usize,
            ((layout >> 8) & 0xFF) as usize,
            layout >> 16 != 0,
        );
        let missing = members.iter().filter(|m| m.is_none()).count();
        let tolerated = match level {
            4 | 5 => 1,
            6 => 2,
            _ => 0,
        };
        if missing > tolerated && level != 10 || missing == disks {
            return Err(format!("{missing} of {disks} members missing"));
        }
        if used.len() != disks {
            return Err("members and their indexes disagree".into());
        }
        let rows = room / chunk;
        let len = match level {
            0 => rows.checked_mul(disks as u64),
            10 => rows
                .checked_mul(disks as u64)
                .map(|r| r / (near * far) as u64),
            _ => rows.checked_mul((disks - tolerated) as u64),
        }
        .and_then(|r| r.checked_mul(chunk))
        .ok_or("array too large")?;
        if len == 0 {
            return Err("no data".into());
        }
        Ok(Assembled {
            level,
            layout,
            chunk,
            disks,
            near,
            far,
            far_rows: if offset { far as u64 } else { 1 },
            used,
            members,
            len,
        })
    }

    /// Members absent from the assembly (their chunks are rebuilt from the others),
    /// and the array's device count.
    pub fn missing(&self) -> (usize, usize) {
        (
            self.members.iter().filter(|m| m.is_none()).count(),
            self.disks,
        )
    }

    /// Where the array's free byte `ranges` (sorted) let member bytes go unread:
    /// (index of the member as given to [`assemble`], offset in its data, length).
    /// RAID0: the chunk pieces themselves; RAID10 with near copies only: every copy;
    /// RAID4/5/6: whole stripes only, data and parity alike (parity of zeros is
    /// zeros, so a restored array stays consistent); none for RAID10 far/offset.
    pub fn free_member_ranges(&self, ranges: &[(u64, u64)]) -> Vec<(usize, u64, u64)> {
        let mut out = Vec::new();
        let mut add = |role: usize, off: u64, len: u64| {
            if let Some(i) = self.used[role] {
                out.push((i, off, len));
            }
        };
        let parity = matches!(self.level, 4..=6);
        if self.level == 10 && self.far > 1 {
            return Vec::new();
        }
        for &(start, len) in ranges {
            let end = start.saturating_add(len).min(self.len);
            if parity {
                let width = self.chunk * (self.disks - if self.level == 6 { 2 } else { 1 }) as u64;
                let (first, last) = (start.div_ceil(width), end / width);
                if last > first {
                    for role in 0..self.disks {
                        add(role, first * self.chunk, (last - first) * self.chunk);
                    }
                }
                continue;
            }
            let mut pos = start;
            while pos < end {
                let (c, at) = (pos / self.chunk, pos % self.chunk);
                let take = (self.chunk - at).min(end - pos);
                let copies = if self.level == 10 { self.near } else { 1 };
                for i in 0..copies {
                    let k = c * copies as u64 + i as u64;
                    let (role, row) = ((k % self.disks as u64) as usize, k / self.disks as u64);
                    add(role, row * self.chunk + at, take);
                }
                pos += take;
            }
        }
        out
    }

    /// md's raid5_compute_sector and its RAID0/RAID10 counterparts, for chunk `c`.
    fn place(&self, c: u64) -> Place {
        let n = self.disks;
        match self.level {
            0 => Place {
                dev: (c % n as u64) as usize,
                row: c / n as u64,
                p: None,
                q: None,
            },
            10 => {
                let k = c * self.near as u64;
                Place {
                    dev: (k % n as u64) as usize,
                    row: k / n as u64 * self.far_rows,
                    p: None,
                    q: None,
                }
            }
            _ => {
                let parity = if self.level == 6 { 2 } else { 1 };
                let data = (n - parity) as u64;
                let (stripe, mut dd) = (c / data, (c % data) as usize);
                let r = (stripe % n as u64) as usize;
                let data = data as usize;
                let (pd, qd);
                if self.level == 4 || self.layout == 5 {
                    // Parity on the last device(s) (RAID4, PARITY_N): data in order.
                    pd = data;
                    qd = (self.level == 6).then_some(data + 1);
                } else if self.level == 6 && self.layout >= 16 {
                    // The "_6" layouts (md's RAID5-to-6 migration): RAID5's layout
                    // 0-4 (layout - 16) over all devices but the last, which holds Q.
                    (pd, dd) = raid5_place(self.layout - 16, n - 1, stripe, dd);
                    qd = Some(n - 1);
                } else if self.level == 5 {
                    (pd, dd) = raid5_place(self.layout, n, stripe, dd);
                    qd = None;
                } else {
                    pd = match self.layout {
                        0 | 2 | 10 => n - 1 - r,
                        // ROTATING_ZERO_RESTART is right-asymmetric placement.
                        1 | 3 | 8 => r,
                        // ROTATING_N_RESTART: left-asymmetric, one stripe on.
                        9 => n - 1 - ((stripe + 1) % n as u64) as usize,
                        _ => 0,
                    };
                    let q;
                    match self.layout {
                        0 | 1 | 8 | 9 => {
                            if pd == n - 1 {
                                dd += 1;
                                q = 0;
                            } else {
                                q = pd + 1;
                                if dd >= pd {
                                    dd += 2;
                                }
                            }
                        }
                        2 | 3 => {
                            q = (pd + 1) % n;
                            dd = (pd + 2 + dd) % n;
                        }
                        // ROTATING_N_CONTINUE: left-symmetric with Q before P.
                        10 => {
                            q = (pd + n - 1) % n;
                            dd = (pd + 1 + dd) % n;
                        }
                        _ => {
                            q = 1;
                            dd += 2;
                        }
                    }
                    qd = Some(q);
                }
                Place {
                    dev: dd,
                    row: stripe,
                    p: Some(pd),
                    q: qd,
                }
            }
        }
    }

    /// Reads `buf.len()` bytes at `at` of row `row` of the member in role `dev`,
    /// rebuilding it from the others when the member is missing, or, as md does, when
    /// its read fails (bytes its backup could not read, a damaged block): the read
    /// then succeeds with a warning naming the failure, or fails with it.
    fn read_piece(&self, place: &Place, at: u64, buf: &mut [u8]) -> io::Result<()> {
        let off = place.row * self.chunk + at;
        let Some(m) = &self.members[place.dev] else {
            return self.rebuild(place, at, buf);
        };
        let Err(e) = m.read_exact_at(off, buf) else {
            return Ok(());
        };
        if !matches!(self.level, 4..=6 | 10) || self.rebuild(place, at, buf).is_err() {
            return Err(e);
        }
        tracing::warn!("md array: {e}; read from the other members instead");
        Ok(())
    }

    /// [`Assembled::read_piece`] without the member in role `place.dev`: from its
    /// next near copy (RAID10), or the others and parity.
    fn rebuild(&self, place: &Place, at: u64, buf: &mut [u8]) -> io::Result<()> {
        let off = place.row * self.chunk + at;
        if self.level == 10 {
            let mut failed = None;
            for i in 1..self.near {
                let k = (place.dev + i) % self.disks;
                let row = place.row + ((place.dev + i) / self.disks) as u64 * self.far_rows;
                if let Some(m) = &self.members[k] {
                    match m.read_exact_at(row * self.chunk + at, buf) {
                        Ok(()) => return Ok(()),
                        Err(e) => failed = Some(e),
                    }
                }
            }
            return Err(failed.unwrap_or_else(|| {
                io::Error::other("md array: every copy of this chunk is missing")
            }));
        }
        if self.level == 6 {
            return self.rebuild6(place, off, buf);
        }
        // RAID4/5: the XOR of P and every other data member.
        buf.fill(0);
        let mut tmp = vec![0u8; buf.len()];
        for (d, m) in self.members.iter().enumerate() {
            if d == place.dev || Some(d) == place.q {
                continue;
            }
            let m = m
                .as_ref()
                .ok_or_else(|| io::Error::other("md array: two members missing"))?;
            m.read_exact_at(off, &mut tmp)?;
            for (x, y) in buf.iter_mut().zip(&tmp) {
                *x ^= y;
            }
        }
        Ok(())
    }
}

impl Assembled {
    /// A RAID6 chunk whose member is missing, rebuilt as md rebuilds it
    /// ([`rebuild_slot`]); Q weighs each data member by g^slot, slots counted from
    /// the member after Q, or in the DDF layouts (8-10) by its position among all
    /// members (P's and Q's slots then count as zeros).
    fn rebuild6(&self, place: &Place, off: u64, buf: &mut [u8]) -> io::Result<()> {
        let (n, p, q) = (self.disks, place.p.unwrap_or(0), place.q.unwrap_or(0));
        let ddf = (8..=10).contains(&self.layout);
        let d0 = if q == n - 1 || ddf { 0 } else { q + 1 };
        // The slot rebuilt and members that are missing or fail to read are the
        // unknowns (up to two).
        let read = |d: usize| -> io::Result<Option<Vec<u8>>> {
            let Some(m) = self.members[d].as_ref().filter(|_| d != place.dev) else {
                return Ok(None);
            };
            let mut b = vec![0u8; buf.len()];
            Ok(m.read_exact_at(off, &mut b).ok().map(|()| b))
        };
        let (mut data, mut x) = (Vec::with_capacity(n), 0);
        for i in 0..n {
            let d = (d0 + i) % n;
            if d != p && d != q {
                if d == place.dev {
                    x = data.len();
                }
                data.push(read(d)?);
            } else if ddf {
                data.push(Some(vec![0u8; buf.len()]));
            }
        }
        let (pb, qb) = (read(p)?, read(q)?);
        crate::parity::rebuild_slot(&data, pb.as_deref(), qb.as_deref(), x, buf)
            .map_err(|e| io::Error::other(format!("md array: {e}")))
    }
}

impl ReadAt for Assembled {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        if offset >= self.len || buf.is_empty() {
            return Ok(0);
        }
        let n = buf.len().min((self.len - offset) as usize);
        let mut done = 0;
        while done < n {
            let pos = offset + done as u64;
            let (c, at) = (pos / self.chunk, pos % self.chunk);
            let take = ((self.chunk - at) as usize).min(n - done);
            let place = self.place(c);
            self.read_piece(&place, at, &mut buf[done..done + take])?;
            done += take;
        }
        Ok(n)
    }

    fn size(&self) -> u64 {
        self.len
    }

    fn prefetch(&self, ranges: &[(u64, u64)]) {
        let mut per: Vec<Vec<(u64, u64)>> = vec![Vec::new(); self.disks];
        for &(offset, len) in ranges {
            let end = offset.saturating_add(len).min(self.len);
            let mut pos = offset;
            while pos < end {
                let (c, at) = (pos / self.chunk, pos % self.chunk);
                let take = (self.chunk - at).min(end - pos);
                let p = self.place(c);
                per[p.dev].push((p.row * self.chunk + at, take));
                pos += take;
            }
        }
        for (m, r) in self.members.iter().zip(per) {
            if let (Some(m), false) = (m, r.is_empty()) {
                m.prefetch(&r);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::readat::MemReader;

    /// Fields of a hand-made version-1 superblock.
    struct Sb {
        level: u32,
        layout: u32,
        offset: u64,
        len: u64,
        events: u64,
        slot: u32,
        roles: Vec<u16>,
        features: u32,
        recovery: u64,
        uuid: u8,
        chunk: u32,
    }

    impl Default for Sb {
        fn default() -> Sb {
            Sb {
                level: 1,
                layout: 0,
                offset: 64,
                len: 1000,
                events: 10,
                slot: 0,
                roles: vec![0, 1],
                features: 0,
                recovery: 0,
                uuid: 7,
                chunk: 0,
            }
        }
    }

    /// A member of `size` bytes with `sb` written as version `minor` (0, 1 or 2).
    fn member_v1(size: usize, minor: u32, sb: &Sb) -> Vec<u8> {
        let at = match minor {
            0 => ((size as u64 / 512 - 16) & !7) * 512,
            1 => 0,
            _ => 4096,
        } as usize;
        let mut v = vec![0u8; size];
        let b = &mut v[at..at + 4096];
        let put = |b: &mut [u8], o: usize, x: &[u8]| b[o..o + x.len()].copy_from_slice(x);
        put(b, 0, &MAGIC.to_le_bytes());
        put(b, 4, &1u32.to_le_bytes());
        put(b, 0x08, &sb.features.to_le_bytes());
        put(b, 0x10, &[sb.uuid; 16]);
        put(b, 0x20, b"host:0");
        put(b, 0x48, &sb.level.to_le_bytes());
        put(b, 0x4C, &sb.layout.to_le_bytes());
        put(b, 0x50, &sb.len.to_le_bytes());
        put(b, 0x58, &sb.chunk.to_le_bytes());
        put(b, 0x5C, &(sb.roles.len() as u32).to_le_bytes());
        put(b, 0x80, &sb.offset.to_le_bytes());
        put(b, 0x90, &(at as u64 / 512).to_le_bytes());
        put(b, 0x98, &sb.recovery.to_le_bytes());
        put(b, 0xA0, &sb.slot.to_le_bytes());
        put(b, 0xC8, &sb.events.to_le_bytes());
        put(b, 0xDC, &(sb.roles.len() as u32).to_le_bytes());
        for (i, r) in sb.roles.iter().enumerate() {
            put(b, FIXED + 2 * i, &r.to_le_bytes());
        }
        let c = checksum(&b[..FIXED + 2 * sb.roles.len()], 0xD8);
        put(b, 0xD8, &c.to_le_bytes());
        v
    }

    fn read(v: Vec<u8>) -> Option<Member> {
        member(&MemReader(v)).unwrap()
    }

    #[test]
    fn a_raid1_member_gives_its_data_range() {
        let m = read(member_v1(1 << 20, 2, &Sb::default())).unwrap();
        assert_eq!((m.version, m.offset, m.len), ("1.2", 64 * 512, 1000 * 512));
        assert_eq!((m.name.as_str(), m.events, m.slot), ("host:0", 10, 0));
        assert_eq!(m.problem(), None);
        let m = read(member_v1(1 << 20, 1, &Sb::default())).unwrap();
        assert_eq!((m.version, m.offset), ("1.1", 64 * 512));
        // 1.0: the superblock at the end, the data from 0.
        let sb = Sb {
            offset: 0,
            len: 2000,
            ..Sb::default()
        };
        let m = read(member_v1(1 << 20, 0, &sb)).unwrap();
        assert_eq!((m.version, m.offset, m.len), ("1.0", 0, 2000 * 512));
        assert_eq!(m.problem(), None);
    }

    #[test]
    fn raid10_members_with_a_copy_per_device_give_their_data_range() {
        let problem = |level, layout| {
            let sb = Sb {
                level,
                layout,
                ..Sb::default()
            };
            read(member_v1(1 << 20, 2, &sb)).unwrap().problem()
        };
        assert_eq!(problem(10, 0x102), None, "near=2 on two devices");
        for (level, layout, what) in [
            (10, 0x201, "far=2 spreads chunks"),
            (10, 0x10102, "offset layout"),
            (10, 0x103, "three near copies on two devices"),
            (5, 2, "RAID5"),
            (0, 0, "RAID0"),
        ] {
            let p = problem(level, layout).unwrap_or_else(|| panic!("{what}"));
            assert!(p.contains("spread over several devices"), "{what}: {p}");
        }
    }

    #[test]
    fn spares_faulty_and_rebuilding_members_are_not_the_array() {
        let problem = |sb: Sb| read(member_v1(1 << 20, 2, &sb)).unwrap().problem();
        let spare = Sb {
            slot: 2,
            roles: vec![0, 1, ROLE_SPARE],
            ..Sb::default()
        };
        assert!(problem(spare).unwrap().contains("spare"));
        let past = Sb {
            slot: 5,
            ..Sb::default()
        };
        assert!(
            problem(past).unwrap().contains("spare"),
            "slot past the roles"
        );
        let faulty = Sb {
            roles: vec![ROLE_FAULTY, 1],
            ..Sb::default()
        };
        assert!(problem(faulty).unwrap().contains("faulty"));
        let rebuilding = Sb {
            features: FEATURE_RECOVERY_OFFSET,
            recovery: 100,
            ..Sb::default()
        };
        assert_eq!(
            problem(rebuilding).unwrap(),
            "being rebuilt (51200 of 512000 bytes done)"
        );
        let reshape = Sb {
            level: 10,
            layout: 0x102,
            features: FEATURE_RESHAPE_ACTIVE,
            ..Sb::default()
        };
        assert!(problem(reshape).unwrap().contains("reshape"));
    }

    #[test]
    fn members_behind_the_freshest_are_stale() {
        let m = |events, slot, roles: Vec<u16>, uuid| {
            let sb = Sb {
                events,
                slot,
                roles,
                uuid,
                ..Sb::default()
            };
            read(member_v1(1 << 20, 2, &sb)).unwrap()
        };
        let fresh = m(20, 0, vec![0, 1], 1);
        let one_behind = m(19, 1, vec![0, 1], 1);
        let behind = m(12, 1, vec![0, 1], 1);
        let other_array = m(3, 1, vec![0, 1], 2);
        let mut arrays = Arrays::default();
        for x in [&behind, &fresh, &one_behind, &other_array] {
            arrays.add(x);
        }
        assert_eq!(arrays.unusable(&fresh), None);
        assert_eq!(arrays.unusable(&one_behind), None, "one event is allowed");
        assert_eq!(
            arrays.unusable(&behind).unwrap(),
            "stale: 12 events against the array's 20"
        );
        assert_eq!(arrays.unusable(&other_array), None, "its own array");
        // Marked faulty by a fresher member, however close its events.
        let marks = m(21, 0, vec![0, ROLE_FAULTY], 1);
        arrays.add(&marks);
        assert!(arrays
            .stale(&m(20, 1, vec![0, 1], 1))
            .unwrap()
            .contains("marks it out"));
        assert_eq!(arrays.stale(&marks), None);
    }

    /// A member of `size` bytes with a 0.90 superblock: RAID1 of two devices, this one
    /// number `slot` in `state`, `kib` KiB of data.
    fn member_v090(size: usize, slot: u32, state: u32, kib: u32, events: u64) -> Vec<u8> {
        let at = ((size / 512) & !127) * 512 - 65536;
        let mut v = vec![0u8; size];
        let b = &mut v[at..at + 4096];
        let mut put = |w: usize, x: u32| b[4 * w..4 * w + 4].copy_from_slice(&x.to_le_bytes());
        put(0, MAGIC);
        put(2, 90);
        put(5, 0x1111);
        put(7, 1);
        put(8, kib);
        put(9, 2);
        put(10, 2);
        put(39, events as u32);
        put(40, (events >> 32) as u32);
        for d in 0..2u32 {
            let w = 128 + 32 * d as usize;
            put(w, d);
            put(w + 3, d);
            put(w + 4, DISK_ACTIVE | DISK_SYNC);
        }
        put(992, slot);
        put(992 + 3, slot);
        put(992 + 4, state);
        let c = checksum(b, 38 * 4);
        b[38 * 4..39 * 4].copy_from_slice(&c.to_le_bytes());
        v
    }

    #[test]
    fn version_090_members_are_read_from_their_end() {
        let m = read(member_v090(
            1 << 20,
            1,
            DISK_ACTIVE | DISK_SYNC,
            900,
            1 << 33,
        ))
        .unwrap();
        assert_eq!((m.version, m.offset, m.len), ("0.90", 0, 900 * 1024));
        assert_eq!((m.slot, m.events), (1, 1 << 33));
        assert_eq!(m.problem(), None);
        let spare = read(member_v090(1 << 20, 1, 0, 900, 5)).unwrap();
        assert!(spare.problem().unwrap().contains("spare"));
        let faulty = read(member_v090(1 << 20, 1, DISK_FAULTY, 900, 5)).unwrap();
        assert!(faulty.problem().unwrap().contains("faulty"));
        let mut bad = member_v090(1 << 20, 1, DISK_ACTIVE | DISK_SYNC, 900, 5);
        bad[(1 << 20) - 65536 + 40] ^= 1;
        assert_eq!(read(bad), None, "checksum");
        assert_eq!(
            read(member_v090(1 << 20, 1, 6, 2000, 5)),
            None,
            "data past the end"
        );
    }

    #[test]
    fn arrays_that_do_not_add_up_are_not_assembled() {
        let err = |r: Result<Assembled, String>| r.err().unwrap_or_default();
        // RAID5 of three, 4 KiB chunks, 64 KiB of data per member from 32 KiB.
        let m = |slot: u32, chunk: u32, len: u64| {
            let sb = Sb {
                level: 5,
                layout: 2,
                offset: 64,
                len,
                slot,
                roles: vec![0, 1, 2],
                chunk,
                ..Sb::default()
            };
            let v = member_v1(1 << 20, 2, &sb);
            let vol: Arc<dyn ReadAt> = Arc::new(MemReader(v.clone()));
            (read(v).unwrap(), vol)
        };
        let arrays = Arrays::default();
        let all = [m(0, 8, 128), m(1, 8, 128), m(2, 8, 128)];
        let a = assemble(&all, &arrays).unwrap();
        assert_eq!(a.size(), 2 * 128 * 512, "two data members' worth");
        let one_missing = [m(0, 8, 128), m(2, 8, 128)];
        assert!(assemble(&one_missing, &arrays).is_ok(), "read back from P");
        let two_missing = [m(0, 8, 128)];
        assert!(err(assemble(&two_missing, &arrays)).contains("2 of 3"));
        let mixed = [m(0, 8, 128), m(1, 16, 128), m(2, 8, 128)];
        assert!(err(assemble(&mixed, &arrays)).contains("geometry"));
        let twice = [m(0, 8, 128), m(0, 8, 128), m(2, 8, 128)];
        assert!(err(assemble(&twice, &arrays)).contains("slot 0"));
        let no_chunk = [m(0, 0, 128), m(1, 0, 128), m(2, 0, 128)];
        assert!(err(assemble(&no_chunk, &arrays)).contains("implausible"));
        let past_end = [m(0, 8, 1 << 20), m(1, 8, 1 << 20), m(2, 8, 1 << 20)];
        assert!(read(member_v1(
            1 << 20,
            2,
            &Sb {
                level: 5,
                len: 1 << 20,
                chunk: 8,
                roles: vec![0, 1, 2],
                ..Sb::default()
            }
        ))
        .is_some());
        assert!(err(assemble(&past_end, &arrays)).contains("does not fit"));
    }

    #[test]
    fn damaged_or_oversized_superblocks_are_not_read() {
        let mut v = member_v1(1 << 20, 2, &Sb::default());
        v[4096 + 0x60] ^= 1; // covered by the checksum
        assert_eq!(read(v), None);
        let big = Sb {
            len: 4000, // past the member's end
            ..Sb::default()
        };
        assert_eq!(read(member_v1(1 << 20, 2, &big)), None);
        let overlapping = Sb {
            offset: 0,
            len: 2047,
            ..Sb::default()
        };
        assert_eq!(
            read(member_v1(1 << 20, 0, &overlapping)),
            None,
            "data over the 1.0 superblock"
        );
        assert_eq!(read(vec![0; 100]), None);
    }

    /// An array of `n` members in RAID6 `layout` over `rows` rows of `chunk` bytes,
    /// whose members are `vols` (None where missing).
    fn raid6(layout: u32, chunk: u64, vols: Vec<Option<Vec<u8>>>) -> Result<Assembled, String> {
        let room = vols
            .iter()
            .flatten()
            .map(|v| v.len() as u64)
            .min()
            .unwrap_or(0);
        let n = vols.len();
        let members = vols
            .into_iter()
            .map(|v| v.map(|v| Arc::new(MemReader(v)) as Arc<dyn ReadAt>))
            .collect();
        Assembled::new(6, layout, chunk, members, (0..n).map(Some).collect(), room)
    }

    #[test]
    fn ddf_and_migration_raid6_layouts_place_p_q_and_data_as_md_does() {
        // Five devices, stripes 0, 1 and 4: (P, Q, data devices in order), from md's
        // raid5_compute_sector (zero restart: right-asymmetric; N restart: left-
        // asymmetric one stripe on; N continue: left-symmetric with Q before P).
        let want = [
            (8, [(0, 1, [2, 3, 4]), (1, 2, [0, 3, 4]), (4, 0, [1, 2, 3])]),
            (9, [(3, 4, [0, 1, 2]), (2, 3, [0, 1, 4]), (4, 0, [1, 2, 3])]),
            (
                10,
                [(4, 3, [0, 1, 2]), (3, 2, [4, 0, 1]), (0, 4, [1, 2, 3])],
            ),
            // The "_6" migration layouts: RAID5's over devices 0-3, Q on device 4.
            (
                16,
                [(3, 4, [0, 1, 2]), (2, 4, [0, 1, 3]), (3, 4, [0, 1, 2])],
            ),
            (
                17,
                [(0, 4, [1, 2, 3]), (1, 4, [0, 2, 3]), (0, 4, [1, 2, 3])],
            ),
            (
                18,
                [(3, 4, [0, 1, 2]), (2, 4, [3, 0, 1]), (3, 4, [0, 1, 2])],
            ),
            (
                19,
                [(0, 4, [1, 2, 3]), (1, 4, [2, 3, 0]), (0, 4, [1, 2, 3])],
            ),
            (
                20,
                [(0, 4, [1, 2, 3]), (0, 4, [1, 2, 3]), (0, 4, [1, 2, 3])],
            ),
        ];
        for (layout, stripes) in want {
            let a = raid6(layout, 512, vec![Some(vec![0; 4096]); 5]).unwrap();
            for ((p, q, data), stripe) in stripes.into_iter().zip([0u64, 1, 4]) {
                for (k, d) in data.into_iter().enumerate() {
                    let pl = a.place(stripe * 3 + k as u64);
                    assert_eq!(
                        (pl.p, pl.q, pl.dev, pl.row),
                        (Some(p), Some(q), d, stripe),
                        "layout {layout}, stripe {stripe}, data {k}"
                    );
                }
            }
        }
    }

    /// a·b in GF(2^8) (x^8+x^4+x^3+x^2+1) by shifts and adds.
    fn gf_mul_slow(mut a: u8, mut b: u8) -> u8 {
        let mut r = 0;
        while b != 0 {
            if b & 1 != 0 {
                r ^= a;
            }
            a = (a << 1) ^ if a & 0x80 != 0 { 0x1d } else { 0 };
            b >>= 1;
        }
        r
    }

    /// Members of the DDF layouts and the "_6" ones rebuilt from P and Q. Q weighs
    /// each data chunk by 2^slot: in the DDF layouts the slot is the device's
    /// position, in the others its rank among the stripe's data devices.
    #[test]
    fn ddf_and_migration_raid6_missing_members_are_rebuilt() {
        let (n, chunk, rows) = (5usize, 512usize, 10usize);
        for layout in [8, 9, 10, 16, 17, 18, 19, 20] {
            let whole = raid6(layout, chunk as u64, vec![Some(vec![0; rows * chunk]); n]).unwrap();
            let mut vols = vec![vec![0u8; rows * chunk]; n];
            let data: Vec<u8> = (0..rows * 3 * chunk)
                .map(|i| (i * 7 + i / 509 + layout as usize) as u8)
                .collect();
            for row in 0..rows {
                let (mut p, mut q) = (vec![0u8; chunk], vec![0u8; chunk]);
                let mut pq = (0, 0);
                let mut devs: Vec<usize> = (0..3)
                    .map(|k| whole.place((row * 3 + k) as u64).dev)
                    .collect();
                devs.sort_unstable();
                for k in 0..3 {
                    let c = (row * 3 + k) as u64;
                    let pl = whole.place(c);
                    let piece = &data[c as usize * chunk..][..chunk];
                    vols[pl.dev][row * chunk..][..chunk].copy_from_slice(piece);
                    let slot = if layout < 16 {
                        pl.dev
                    } else {
                        devs.iter().position(|&d| d == pl.dev).unwrap()
                    };
                    let g = (0..slot).fold(1u8, |x, _| gf_mul_slow(x, 2));
                    for i in 0..chunk {
                        p[i] ^= piece[i];
                        q[i] ^= gf_mul_slow(piece[i], g);
                    }
                    pq = (pl.p.unwrap(), pl.q.unwrap());
                }
                vols[pq.0][row * chunk..][..chunk].copy_from_slice(&p);
                vols[pq.1][row * chunk..][..chunk].copy_from_slice(&q);
            }
            for gone in [vec![], vec![0], vec![3], vec![0, 1], vec![2, 4], vec![1, 3]] {
                let members = (0..n)
                    .map(|i| (!gone.contains(&i)).then(|| vols[i].clone()))
                    .collect();
                let a = raid6(layout, chunk as u64, members).unwrap();
                let mut got = vec![0u8; data.len()];
                a.read_exact_at(0, &mut got).unwrap();
                assert!(got == data, "layout {layout}, members {gone:?} missing");
            }
            let three = (0..n).map(|i| (i > 2).then(|| vols[i].clone())).collect();
            assert!(raid6(layout, chunk as u64, three).is_err(), "three missing");
        }
    }
}
