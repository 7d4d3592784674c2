//! Is a source in use? A block device (or a partition of it, or the loop device an
//! image file backs) mounted read-write is being written while it is read: the point
//! then holds what a machine that lost power would leave. Backups still run (a
//! crash-consistent point is what the mount's journal replay is for); the user is
//! told, once per source, so a snapshot can be taken instead.

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// Where `source` (an opened backup source's path and metadata) is mounted
/// read-write, itself or through a partition or a loop device over it; empty when
/// nowhere or when the mount table cannot be read.
pub fn rw_mounts(source: &Path, md: &fs::Metadata) -> Vec<PathBuf> {
    let Ok(table) = fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let devices = source_devices(source, md);
    if devices.is_empty() {
        return Vec::new();
    }
    let mut out = Vec::new();
    for line in table.lines() {
        let Some((dev, at)) = rw_mount(line) else {
            continue;
        };
        let Some(path) = sysfs_path(dev) else {
            continue;
        };
        let within = devices
            .iter()
            .any(|d| path == *d || path.parent() == Some(d.as_path()));
        if within && !out.contains(&at) {
            out.push(at);
        }
    }
    out
}

/// The sysfs directories of the block devices whose contents `source` is: the
/// device itself, or every loop device an image file backs.
fn source_devices(source: &Path, md: &fs::Metadata) -> Vec<PathBuf> {
    if md.file_type().is_block_device() {
        return sysfs_path((libc::major(md.rdev()), libc::minor(md.rdev())))
            .into_iter()
            .collect();
    }
    if !md.is_file() {
        return Vec::new();
    }
    let Ok(real) = fs::canonicalize(source) else {
        return Vec::new();
    };
    let Ok(blocks) = fs::read_dir("/sys/block") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for b in blocks.flatten() {
        let backing = b.path().join("loop/backing_file");
        let Ok(file) = fs::read_to_string(&backing) else {
            continue;
        };
        if Path::new(file.trim_end_matches('\n')) == real {
            if let Ok(p) = fs::canonicalize(b.path()) {
                out.push(p);
            }
        }
    }
    out
}

/// The device (major, minor) and mount point of a mountinfo line mounted read-write
/// (the mount's own options say `rw`; a read-only view of a filesystem mounted
/// read-write elsewhere has a line of its own for that other place).
fn rw_mount(line: &str) -> Option<((u32, u32), PathBuf)> {
    let (mount, _) = line.split_once(" - ")?;
    let f: Vec<&str> = mount.split(' ').collect();
    let (maj, min) = f.get(2)?.split_once(':')?;
    let dev = (maj.parse().ok()?, min.parse().ok()?);
    let at = PathBuf::from(unescape(f.get(4)?));
    f.get(5)?.split(',').any(|o| o == "rw").then_some((dev, at))
}

/// Mount points in mountinfo escape space, tab, newline and backslash as `\ooo`.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match (b[i], octal) {
            (b'\\', Some(d)) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The canonical sysfs directory of block device (major, minor), where a
/// partition's directory lies inside its disk's.
fn sysfs_path((major, minor): (u32, u32)) -> Option<PathBuf> {
    fs::canonicalize(format!("/sys/dev/block/{major}:{minor}")).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_lines_give_writable_mounts_with_their_escapes() {
        let rw = "36 35 7:3 / /mnt/my\\040disk rw,noatime shared:1 - ext4 /dev/loop3 rw,errors=remount-ro";
        assert_eq!(rw_mount(rw), Some(((7, 3), PathBuf::from("/mnt/my disk"))));
        let ro = "36 35 7:3 / /mnt/x ro - ext4 /dev/loop3 ro";
        assert_eq!(rw_mount(ro), None);
        // A read-only view of a filesystem mounted read-write elsewhere (that other
        // mount has its own line).
        let ro_here = "37 35 7:3 / /mnt/y ro - ext4 /dev/loop3 rw";
        assert_eq!(rw_mount(ro_here), None);
        assert_eq!(rw_mount("garbage"), None);
        assert_eq!(unescape("a\\134b\\011c\\9"), "a\\b\tc\\9");
    }
}
