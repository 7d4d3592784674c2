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
    pub const COMPAT_SPARSE_SUPER2: u32 = 0x200;
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
    pub desc_size: u16,
    pub first_meta_bg: u32,
    pub backup_bgs: [u32; 2],
    pub hash_seed: [u32; 4],
    pub def_hash_version: u8,
    pub csum_seed: u32,
    pub flags: u32,
    pub state: u16,
}

/// Offset of the primary superblock on the volume.
pub const SB_OFFSET: u64 = 1024;

impl Superblock {
    /// Parses and checks the superblock; a bad checksum is logged, not fatal.
    pub fn parse(b: &[u8; 1024], label: &str) -> io::Result<Superblock> {
        if u16le(b, 0x38) != 0xEF53 {
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
        if blocks_per_group == 0 || inodes_per_group == 0 || blocks_per_group > 8 * block_size * 16
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
            let blk = start + u64::from(self.group_has_super(first));
            (blk, within)
        } else {
            (self.first_data_block as u64 + 1 + mg, within)
        }
    }
}

/// What the parser needs from one group descriptor.
#[derive(Debug, Clone, Copy)]
pub struct GroupDesc {
    pub inode_table: u64,
    pub flags: u16,
    /// Inodes at the end of the table never used (valid with group checksums only).
    pub itable_unused: u32,
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

/// Reads the descriptor of group `g`.
pub fn read_group(dev: &dyn ReadAt, sb: &Superblock, g: u64) -> io::Result<GroupDesc> {
    if g >= sb.groups() {
        return Err(corrupt(format!("group {g} does not exist")));
    }
    let (blk, within) = sb.desc_location(g);
    let mut d = vec![0u8; sb.desc_size as usize];
    dev.read_exact_at(blk * sb.block_size as u64 + within as u64, &mut d)?;
    let mut table = u32le(&d, 0x8) as u64;
    if sb.desc_size >= 64 {
        table |= (u32le(&d, 0x28) as u64) << 32;
    }
    if table == 0 || table >= sb.blocks_count {
        return Err(corrupt(format!(
            "group descriptor {g}: inode table at block {table} is outside the volume"
        )));
    }
    let mut itable_unused = u16le(&d, 0x1C) as u32;
    if sb.desc_size >= 64 {
        itable_unused |= (u16le(&d, 0x32) as u32) << 16;
    }
    Ok(GroupDesc {
        inode_table: table,
        flags: u16le(&d, 0x12),
        itable_unused,
    })
}
