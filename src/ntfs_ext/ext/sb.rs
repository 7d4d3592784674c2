//! The ext2/3/4 superblock and group descriptors.

use std::io;

use crate::ntfs_ext::corrupt;
use crate::readat::ReadAt;

/// Little-endian field readers over a buffer whose length the caller checked.
pub(crate) fn u16le(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}
pub(crate) fn u32le(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
}

/// Feature bits this parser looks at.
pub mod feat {
    pub const COMPAT_HAS_JOURNAL: u32 = 0x4;
    pub const COMPAT_SPARSE_SUPER2: u32 = 0x200;
    pub const COMPAT_ORPHAN_FILE: u32 = 0x1000;
    pub const INCOMPAT_COMPRESSION: u32 = 0x1;
    pub const INCOMPAT_FILETYPE: u32 = 0x2;
    pub const INCOMPAT_RECOVER: u32 = 0x4;
    pub const INCOMPAT_JOURNAL_DEV: u32 = 0x8;
    pub const INCOMPAT_META_BG: u32 = 0x10;
    pub const INCOMPAT_EXTENTS: u32 = 0x40;
    pub const INCOMPAT_64BIT: u32 = 0x80;
    pub const INCOMPAT_MMP: u32 = 0x100;
    pub const INCOMPAT_FLEX_BG: u32 = 0x200;
    pub const INCOMPAT_EA_INODE: u32 = 0x400;
    pub const INCOMPAT_CSUM_SEED: u32 = 0x2000;
    pub const INCOMPAT_LARGEDIR: u32 = 0x4000;
    pub const INCOMPAT_INLINE_DATA: u32 = 0x8000;
    pub const INCOMPAT_ENCRYPT: u32 = 0x10000;
    pub const INCOMPAT_CASEFOLD: u32 = 0x20000;
    pub const RO_COMPAT_SPARSE_SUPER: u32 = 0x1;
    pub const RO_COMPAT_HUGE_FILE: u32 = 0x8;
    pub const RO_COMPAT_GDT_CSUM: u32 = 0x10;
    pub const RO_COMPAT_BIGALLOC: u32 = 0x200;
    pub const RO_COMPAT_METADATA_CSUM: u32 = 0x400;
    /// Incompat features whose on-disk effects this parser understands.
    pub const INCOMPAT_KNOWN: u32 = INCOMPAT_FILETYPE
        | INCOMPAT_RECOVER
        | INCOMPAT_META_BG
        | INCOMPAT_EXTENTS
        | INCOMPAT_64BIT
        | INCOMPAT_MMP
        | INCOMPAT_FLEX_BG
        | INCOMPAT_EA_INODE
        | INCOMPAT_CSUM_SEED
        | INCOMPAT_LARGEDIR
        | INCOMPAT_INLINE_DATA
        | INCOMPAT_ENCRYPT
        | INCOMPAT_CASEFOLD;
}

/// ext4's crc32c: the raw CRC state, no final inversion, chained from `seed`.
pub fn ext4_crc(seed: u32, data: &[u8]) -> u32 {
    !crc32c::crc32c_append(!seed, data)
}

/// The fields of the superblock this parser uses.
#[derive(Debug, Clone, Default)]
pub struct Superblock {
    pub inodes_count: u32,
    pub blocks_count: u64,
    pub free_blocks: u64,
    pub free_inodes: u32,
    pub first_data_block: u32,
    pub block_size: u32,
    pub blocks_per_group: u32,
    pub inodes_per_group: u32,
    pub rev_level: u32,
    pub first_ino: u32,
    pub inode_size: u16,
    pub compat: u32,
    pub incompat: u32,
    pub ro_compat: u32,
    pub uuid: [u8; 16],
    pub journal_inum: u32,
    /// The external journal device's UUID (when `journal_inum` is 0).
    pub journal_uuid: [u8; 16],
    pub desc_size: u16,
    pub first_meta_bg: u32,
    pub backup_bgs: [u32; 2],
    pub hash_seed: [u32; 4],
    pub def_hash_version: u8,
    pub csum_seed: u32,
    pub flags: u32,
    pub state: u16,
    /// Blocks per allocation cluster, as a power of two (0 without bigalloc).
    pub cluster_shift: u32,
    /// Blocks reserved for root (`df` leaves them out of what is available).
    pub r_blocks: u64,
    /// Blocks after each descriptor table kept for growing it (resize_inode).
    pub reserved_gdt_blocks: u16,
    /// Clusters of metadata as mke2fs counted them (0 when not recorded).
    pub overhead_clusters: u32,
    /// Head of the orphan list threaded through the inodes' i_dtime (0: empty).
    pub last_orphan: u32,
    /// The orphan file's inode (orphan_file feature; 0 without it).
    pub orphan_file_inum: u32,
}

/// Offset of the primary superblock on the volume.
pub const SB_OFFSET: u64 = 1024;

/// The superblock's magic number (at 0x38).
pub const MAGIC: u16 = 0xEF53;

impl Superblock {
    /// Parses and checks the superblock; a bad checksum is logged, not fatal.
    pub fn parse(b: &[u8; 1024], label: &str) -> io::Result<Superblock> {
        if u16le(b, 0x38) != MAGIC {
            return Err(corrupt("no ext2/3/4 superblock (bad magic)"));
        }
        let log_bs = u32le(b, 0x18);
        if log_bs > 6 {
            return Err(corrupt(format!(
                "superblock: block size 2^(10+{log_bs}) is not supported"
            )));
        }
        let block_size = 1024u32 << log_bs;
        let rev_level = u32le(b, 0x4C);
        let (first_ino, inode_size) = if rev_level == 0 {
            (11, 128)
        } else {
            (u32le(b, 0x54), u16le(b, 0x58))
        };
        if inode_size < 128 || !inode_size.is_power_of_two() || inode_size as u32 > block_size {
            return Err(corrupt(format!(
                "superblock: invalid inode size {inode_size}"
            )));
        }
        let incompat = u32le(b, 0x60);
        let ro_compat = u32le(b, 0x64);
        let is64 = incompat & feat::INCOMPAT_64BIT != 0;
        let desc_size = if is64 { u16le(b, 0xFE) } else { 32 };
        if is64 && (!(64..=1024).contains(&desc_size) || !desc_size.is_power_of_two()) {
            return Err(corrupt(format!(
                "superblock: invalid group descriptor size {desc_size}"
            )));
        }
        let blocks_per_group = u32le(b, 0x20);
        let inodes_per_group = u32le(b, 0x28);
        // A group's allocation bitmap is one block, a bit per cluster: with bigalloc
        // a cluster is 2^n blocks (up to 1 GiB, as the kernel allows), else one block.
        let cluster_shift = if ro_compat & feat::RO_COMPAT_BIGALLOC != 0 {
            let log_cs = u32le(b, 0x1C);
            if log_cs < log_bs || log_cs > 20 {
                return Err(corrupt(format!(
                    "superblock: cluster size 2^(10+{log_cs}) with 2^(10+{log_bs})-byte blocks"
                )));
            }
            let clusters_per_group = u32le(b, 0x24) as u64;
            if clusters_per_group << (log_cs - log_bs) != blocks_per_group as u64 {
                return Err(corrupt(format!(
                    "superblock: {blocks_per_group} blocks per group is not \
                     {clusters_per_group} clusters of 2^{} blocks",
                    log_cs - log_bs
                )));
            }
            log_cs - log_bs
        } else {
            0
        };
        if blocks_per_group == 0
            || inodes_per_group == 0
            || blocks_per_group as u64 > (8 * block_size as u64 * 16) << cluster_shift
        {
            return Err(corrupt("superblock: zero or impossible per-group counts"));
        }
        let hi = |o: usize| if is64 { (u32le(b, o) as u64) << 32 } else { 0 };
        // Every block number below the count must give a byte offset: the parser
        // multiplies by the block size without further checks.
        let blocks_count = u32le(b, 0x4) as u64 | hi(0x150);
        if blocks_count.checked_mul(block_size as u64).is_none() {
            return Err(corrupt(format!(
                "superblock: {blocks_count} blocks of {block_size} bytes overflow"
            )));
        }
        let mut uuid = [0u8; 16];
        uuid.copy_from_slice(&b[0x68..0x78]);
        let csum_seed = if incompat & feat::INCOMPAT_CSUM_SEED != 0 {
            u32le(b, 0x270)
        } else {
            ext4_crc(!0, &uuid)
        };
        if ro_compat & feat::RO_COMPAT_METADATA_CSUM != 0 {
            let want = u32le(b, 0x3FC);
            if ext4_crc(!0, &b[..0x3FC]) != want {
                tracing::warn!("{label}: superblock checksum mismatch; reading on");
            }
        }
        Ok(Superblock {
            inodes_count: u32le(b, 0x0),
            blocks_count,
            free_blocks: u32le(b, 0xC) as u64 | hi(0x158),
            free_inodes: u32le(b, 0x10),
            first_data_block: u32le(b, 0x14),
            block_size,
            blocks_per_group,
            inodes_per_group,
            rev_level,
            first_ino,
            inode_size,
            compat: u32le(b, 0x5C),
            incompat,
            ro_compat,
            uuid,
            journal_inum: u32le(b, 0xE0),
            journal_uuid: b[0xD0..0xE0].try_into().unwrap(),
            desc_size,
            first_meta_bg: u32le(b, 0x104),
            backup_bgs: [u32le(b, 0x24C), u32le(b, 0x250)],
            hash_seed: [
                u32le(b, 0xEC),
                u32le(b, 0xF0),
                u32le(b, 0xF4),
                u32le(b, 0xF8),
            ],
            def_hash_version: b[0xFC],
            csum_seed,
            flags: u32le(b, 0x160),
            state: u16le(b, 0x3A),
            cluster_shift,
            r_blocks: u32le(b, 0x8) as u64 | hi(0x154),
            reserved_gdt_blocks: u16le(b, 0xCE),
            overhead_clusters: u32le(b, 0x248),
            last_orphan: u32le(b, 0xE8),
            orphan_file_inum: if u32le(b, 0x5C) & feat::COMPAT_ORPHAN_FILE != 0 {
                u32le(b, 0x280)
            } else {
                0
            },
        })
    }

    /// Group descriptors carry checksums (gdt_csum or metadata_csum), so their
    /// INODE_UNINIT flag and unused-inode counts can be trusted.
    pub fn has_group_csums(&self) -> bool {
        self.ro_compat & (feat::RO_COMPAT_GDT_CSUM | feat::RO_COMPAT_METADATA_CSUM) != 0
    }

    /// Number of block groups.
    pub fn groups(&self) -> u64 {
        (self
            .blocks_count
            .saturating_sub(self.first_data_block as u64))
        .div_ceil(self.blocks_per_group as u64)
    }

    /// True when metadata_csum is on.
    pub fn has_csum(&self) -> bool {
        self.ro_compat & feat::RO_COMPAT_METADATA_CSUM != 0
    }

    /// True when group `g` carries a superblock backup (and so, without meta_bg, a
    /// copy of the descriptor table).
    pub fn group_has_super(&self, g: u64) -> bool {
        if g == 0 {
            return true;
        }
        if self.compat & feat::COMPAT_SPARSE_SUPER2 != 0 {
            return g == self.backup_bgs[0] as u64 || g == self.backup_bgs[1] as u64;
        }
        if self.ro_compat & feat::RO_COMPAT_SPARSE_SUPER == 0 || g == 1 {
            return true;
        }
        for base in [3u64, 5, 7] {
            let mut p = base;
            while p < g {
                p *= base;
            }
            if p == g {
                return true;
            }
        }
        false
    }

    /// Block holding the descriptor of group `g`, and its byte offset inside the block.
    pub fn desc_location(&self, g: u64) -> (u64, usize) {
        let per_block = (self.block_size / self.desc_size as u32) as u64;
        let meta_bg = self.incompat & feat::INCOMPAT_META_BG != 0;
        let within = ((g % per_block) * self.desc_size as u64) as usize;
        let mg = g / per_block;
        if meta_bg && mg >= self.first_meta_bg as u64 {
            let first = mg * per_block;
            let start = self.first_data_block as u64 + first * self.blocks_per_group as u64;
            let mut blk = start + u64::from(self.group_has_super(first));
            if first == 0 {
                // 1 KiB blocks with bigalloc start group 0 at block 0, before the
                // superblock's block 1 (the kernel's descriptor_loc adds it too).
                blk += u64::from(self.first_data_block == 0 && self.block_size == 1024);
            }
            (blk, within)
        } else {
            // The table follows the superblock's block: block 2 with 1 KiB blocks
            // (also under bigalloc, whose first data block is 0), else block 1.
            (1024 / self.block_size as u64 + 1 + mg, within)
        }
    }

    /// Blocks holding descriptor tables in group `g` (the kernel's ext4_bg_num_gdb).
    fn descriptor_blocks(&self, g: u64) -> u64 {
        let per_block = (self.block_size / self.desc_size as u32) as u64;
        let mg = g / per_block;
        if self.incompat & feat::INCOMPAT_META_BG == 0 || mg < self.first_meta_bg as u64 {
            if !self.group_has_super(g) {
                0
            } else if self.incompat & feat::INCOMPAT_META_BG != 0 {
                self.first_meta_bg as u64
            } else {
                self.groups().div_ceil(per_block)
            }
        } else {
            let first = mg * per_block;
            u64::from(g == first || g == first + 1 || g == first + per_block - 1)
        }
    }

    /// Blocks at the start of group `g` its superblock copy, descriptor tables and
    /// their reserve take (the kernel's ext4_num_base_meta_clusters, without bigalloc).
    pub fn base_metadata_blocks(&self, g: u64) -> u64 {
        let per_block = (self.block_size / self.desc_size as u32) as u64;
        let sup = u64::from(self.group_has_super(g));
        let meta_region = self.incompat & feat::INCOMPAT_META_BG != 0
            && g / per_block >= self.first_meta_bg as u64;
        let reserve = if meta_region {
            0
        } else {
            self.reserved_gdt_blocks as u64
        };
        sup + self.descriptor_blocks(g) + sup * reserve
    }

    /// Clusters of metadata outside any file, which `df` leaves out of the volume's
    /// size as the kernel does (its ext4_calculate_overhead): superblock copies,
    /// descriptor tables and their reserve, two bitmaps and the inode table per
    /// group; the caller adds the journal. With bigalloc, mke2fs's recorded count
    /// (journal included) is used as the kernel uses it, which walks bitmaps only when
    /// it is missing; `None` then, or for more groups than `max_groups`.
    pub fn overhead_clusters(&self, max_groups: u64) -> Option<u64> {
        if self.cluster_shift > 0 {
            let o = self.overhead_clusters as u64;
            return (o != 0 && o <= self.blocks_count).then_some(o);
        }
        let groups = self.groups();
        if groups > max_groups {
            return None;
        }
        let itb = (self.inodes_per_group as u64)
            .div_ceil((self.block_size / self.inode_size as u32) as u64);
        let mut sum = self.first_data_block as u64;
        for g in 0..groups {
            let sup = u64::from(self.group_has_super(g));
            sum +=
                sup + self.descriptor_blocks(g) + sup * self.reserved_gdt_blocks as u64 + itb + 2;
        }
        Some(sum)
    }
}

/// What the parser needs from one group descriptor.
#[derive(Debug, Clone, Copy)]
pub struct GroupDesc {
    pub inode_table: u64,
    /// Block of the group's inode bitmap (which inodes are in use).
    pub inode_bitmap: u64,
    pub flags: u16,
    /// Inodes at the end of the table never used (valid with group checksums only).
    pub itable_unused: u32,
    /// Free clusters in the group (what the kernel sums for `df`).
    pub free_clusters: u32,
    /// Free inodes in the group.
    pub free_inodes: u32,
}

impl GroupDesc {
    /// Inodes at the start of the group's table that may be in use: none when the
    /// table was never initialised (INODE_UNINIT), the table minus its never-used tail
    /// when group checksums vouch for these fields, else the whole table.
    pub fn inodes_used(&self, sb: &Superblock) -> u64 {
        let ipg = sb.inodes_per_group as u64;
        if !sb.has_group_csums() {
            ipg
        } else if self.inode_uninit(sb) {
            0
        } else {
            ipg.saturating_sub(self.itable_unused as u64)
        }
    }

    /// True when the group's inode table was never initialised (INODE_UNINIT, trusted
    /// only with group checksums): nothing in it was ever allocated.
    pub fn inode_uninit(&self, sb: &Superblock) -> bool {
        self.flags & 0x1 != 0 && sb.has_group_csums()
    }
}

/// Group `g`'s descriptor as it lies on the volume (`desc_size` bytes).
pub fn raw_descriptor(dev: &dyn ReadAt, sb: &Superblock, g: u64) -> io::Result<Vec<u8>> {
    let (blk, within) = sb.desc_location(g);
    let mut d = vec![0u8; sb.desc_size as usize];
    dev.read_exact_at(blk * sb.block_size as u64 + within as u64, &mut d)?;
    Ok(d)
}

/// A block number of descriptor `d` (its low half at `lo`, its high half at `hi`,
/// which only 64-byte descriptors have).
pub fn desc_block(sb: &Superblock, d: &[u8], lo: usize, hi: usize) -> u64 {
    let h = if sb.desc_size >= 64 { u32le(d, hi) } else { 0 };
    u32le(d, lo) as u64 | (h as u64) << 32
}

/// Reads the descriptor of group `g`.
pub fn read_group(dev: &dyn ReadAt, sb: &Superblock, g: u64) -> io::Result<GroupDesc> {
    if g >= sb.groups() {
        return Err(corrupt(format!("group {g} does not exist")));
    }
    let d = raw_descriptor(dev, sb, g)?;
    let block = |lo, hi| desc_block(sb, &d, lo, hi);
    let table = block(0x8, 0x28);
    if table == 0 || table >= sb.blocks_count {
        return Err(corrupt(format!(
            "group descriptor {g}: inode table at block {table} is outside the volume"
        )));
    }
    let mut itable_unused = u16le(&d, 0x1C) as u32;
    if sb.desc_size >= 64 {
        itable_unused |= (u16le(&d, 0x32) as u32) << 16;
    }
    let lo_hi = |lo: usize, hi: usize| {
        let h = if sb.desc_size >= 64 { u16le(&d, hi) } else { 0 };
        u16le(&d, lo) as u32 | (h as u32) << 16
    };
    Ok(GroupDesc {
        inode_table: table,
        inode_bitmap: block(0x4, 0x24),
        flags: u16le(&d, 0x12),
        itable_unused,
        free_clusters: lo_hi(0xC, 0x2C),
        free_inodes: lo_hi(0xE, 0x2E),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal superblock: 1 KiB blocks, bigalloc with 2^`log_cs` KiB clusters and
    /// the given per-group counts.
    fn bigalloc_sb(log_cs: u32, blocks_per_group: u32, clusters_per_group: u32) -> [u8; 1024] {
        let mut b = [0u8; 1024];
        let put =
            |b: &mut [u8; 1024], o: usize, v: u32| b[o..o + 4].copy_from_slice(&v.to_le_bytes());
        put(&mut b, 0x0, 64); // inodes
        put(&mut b, 0x4, 4096); // blocks
        put(&mut b, 0x1C, log_cs);
        put(&mut b, 0x20, blocks_per_group);
        put(&mut b, 0x24, clusters_per_group);
        put(&mut b, 0x28, 64);
        put(&mut b, 0x4C, 1);
        put(&mut b, 0x54, 11);
        b[0x58..0x5A].copy_from_slice(&256u16.to_le_bytes());
        put(&mut b, 0x64, feat::RO_COMPAT_BIGALLOC);
        b[0x38..0x3A].copy_from_slice(&0xEF53u16.to_le_bytes());
        b
    }

    #[test]
    fn bigalloc_groups_are_counted_in_clusters() {
        // 16 KiB clusters of 1 KiB blocks: 8192 clusters a group are 131072 blocks,
        // past the 8192 a one-block bitmap covers without bigalloc.
        let sb = Superblock::parse(&bigalloc_sb(4, 131072, 8192), "t").unwrap();
        assert_eq!(sb.cluster_shift, 4);
        // Group 0 starts at block 0: the descriptor table follows the superblock's
        // block 1.
        assert_eq!(sb.desc_location(0), (2, 0));
        assert!(Superblock::parse(&bigalloc_sb(4, 131072, 4096), "t").is_err());
        assert!(Superblock::parse(&bigalloc_sb(4, 0, 0), "t").is_err());
        // Clusters smaller than a block, or past 1 GiB.
        let mut small = bigalloc_sb(0, 8192, 8192);
        small[0x18] = 1;
        assert!(Superblock::parse(&small, "t").is_err());
        assert!(Superblock::parse(&bigalloc_sb(21, 8192, 8192), "t").is_err());
    }
}
