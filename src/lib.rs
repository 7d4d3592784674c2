//! disksafe: block-level backups of disks in a deduplicated *disk safe*, with every
//! recovery point browsable read-only through FUSE.
//!
//! Data flows one way, each layer reading the one below through [`readat::ReadAt`]:
//! `safe_reader` (SQLite index + pack files) → `cache` (LRU of blocks) → `device`
//! → `volumes` (partition tables) → `fs` (FUSE adapter). The writer side lives in
//! `backup`, apart from the readers.

pub mod background;
pub mod backup;
pub mod cache;
pub mod demo;
pub mod device;
pub mod diff;
pub mod extract;
pub mod format;
pub mod fs;
pub mod ntfs_ext;
pub mod parity;
pub mod passphrase;
pub mod readat;
pub mod restore;
pub mod safe_reader;
pub mod size;
pub mod unzstd;
pub mod verify;
pub mod volumes;
