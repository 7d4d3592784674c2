//! Passphrases for encrypted volumes, as users give them: `--key-file FILE` (the
//! file's bytes) or `--key-file -` (typed at a terminal without echo, or piped).

use anyhow::Context;

/// Pages of their own for key material: locked in memory (never written to swap, as
/// cryptsetup keeps its keys), left out of core dumps, wiped and unmapped when dropped.
struct Locked {
    ptr: std::ptr::NonNull<u8>,
    map_len: usize,
}

// SAFETY: the mapping is owned by this value alone; access goes through `&`/`&mut`.
unsafe impl Send for Locked {}
unsafe impl Sync for Locked {}

impl Locked {
    /// At least `len` zeroed bytes aligned to a page. Out of memory aborts, as a `Vec`
    /// does; a refused lock (RLIMIT_MEMLOCK) is warned of once and the pages used
    /// unlocked, as cryptsetup goes on.
    fn new(len: usize) -> Locked {
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as usize;
        let map_len = len.max(1).div_ceil(page) * page;
        // SAFETY: an anonymous private mapping, no address hint.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            std::alloc::handle_alloc_error(
                std::alloc::Layout::from_size_align(map_len, page).unwrap(),
            );
        }
        // SAFETY: the mapping just made, its whole length.
        unsafe {
            if libc::mlock(p, map_len) != 0 {
                static WARNED: std::sync::Once = std::sync::Once::new();
                let e = std::io::Error::last_os_error();
                WARNED.call_once(|| {
                    tracing::warn!(
                        "cannot lock key material in memory ({e}); it could reach swap (raise RLIMIT_MEMLOCK, or run as root)"
                    )
                });
            }
            libc::madvise(p, map_len, libc::MADV_DONTDUMP);
        }
        Locked {
            ptr: std::ptr::NonNull::new(p.cast()).expect("mmap gave a null mapping"),
            map_len,
        }
    }
}

impl Drop for Locked {
    fn drop(&mut self) {
        use zeroize::Zeroize;
        // SAFETY: the mapping is ours and no borrow outlives `self`.
        unsafe {
            std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.map_len).zeroize();
            libc::munmap(self.ptr.as_ptr().cast(), self.map_len);
        }
    }
}

/// Key material (passphrases, derived and volume keys) in locked pages of its own: not
/// swapped out, not in core dumps, wiped when dropped.
pub struct Secret {
    mem: Locked,
    len: usize,
}

impl Secret {
    /// Moves `bytes` into locked memory, wiping the vector's copy.
    pub fn new(mut bytes: Vec<u8>) -> Secret {
        use zeroize::Zeroize;
        let s = Secret::from_slice(&bytes);
        bytes.zeroize();
        s
    }

    /// `len` zero bytes, to be filled in place.
    pub fn zeroed(len: usize) -> Secret {
        Secret {
            mem: Locked::new(len),
            len,
        }
    }

    /// A locked copy of `b`.
    pub fn from_slice(b: &[u8]) -> Secret {
        let mut s = Secret::zeroed(b.len());
        s.copy_from_slice(b);
        s
    }
}

impl std::ops::Deref for Secret {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: `len` bytes of the mapping, initialised (zeroed by mmap).
        unsafe { std::slice::from_raw_parts(self.mem.ptr.as_ptr(), self.len) }
    }
}

impl std::ops::DerefMut for Secret {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as above, borrowed mutably through `&mut self`.
        unsafe { std::slice::from_raw_parts_mut(self.mem.ptr.as_ptr(), self.len) }
    }
}

impl Clone for Secret {
    fn clone(&self) -> Secret {
        Secret::from_slice(self)
    }
}

impl PartialEq for Secret {
    fn eq(&self, other: &Secret) -> bool {
        **self == **other
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secret({} bytes)", self.len)
    }
}

/// A value (a cipher's key schedule) in locked pages of its own, as [`Secret`]; its
/// own `Drop` runs (the cipher's zeroizing one), then the pages are wiped.
pub struct LockedBox<T> {
    mem: Locked,
    _owns: std::marker::PhantomData<T>,
}

// SAFETY: owns its `T` as a `Box` does.
unsafe impl<T: Send> Send for LockedBox<T> {}
unsafe impl<T: Sync> Sync for LockedBox<T> {}

impl<T> LockedBox<T> {
    pub fn new(value: T) -> LockedBox<T> {
        assert!(std::mem::align_of::<T>() <= 4096);
        let mem = Locked::new(std::mem::size_of::<T>());
        // SAFETY: page-aligned, large enough, and not yet holding a value.
        unsafe { mem.ptr.as_ptr().cast::<T>().write(value) };
        LockedBox {
            mem,
            _owns: std::marker::PhantomData,
        }
    }
}

impl<T> std::ops::Deref for LockedBox<T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: holds a `T` written in `new`, dropped only in `drop`.
        unsafe { &*self.mem.ptr.as_ptr().cast::<T>() }
    }
}

impl<T> Drop for LockedBox<T> {
    fn drop(&mut self) {
        // SAFETY: the `T` written in `new`, dropped once; `mem` unmaps after.
        unsafe { std::ptr::drop_in_place(self.mem.ptr.as_ptr().cast::<T>()) }
    }
}

/// The passphrases of `--key-file` arguments: each file's bytes, and those without a
/// final newline when they end in one (`echo secret > key` writes one, the prompt
/// of `cryptsetup luksFormat` does not take one); `-` reads standard input, at a
/// terminal without echo.
pub fn read(files: &[String]) -> anyhow::Result<Vec<Secret>> {
    let mut out: Vec<Secret> = Vec::new();
    for f in files {
        let bytes = if f == "-" {
            read_stdin_passphrase()?
        } else {
            Secret::new(std::fs::read(f).with_context(|| format!("reading key file {f}"))?)
        };
        let mut variants = vec![bytes.clone()];
        if let Some(b) = bytes.strip_suffix(b"\n") {
            variants.push(Secret::from_slice(b.strip_suffix(b"\r").unwrap_or(b)));
        }
        for v in variants {
            if !out.contains(&v) {
                out.push(v);
            }
        }
    }
    Ok(out)
}

/// A passphrase from standard input: typed at a terminal (prompted, not echoed), or
/// everything a pipe gives.
fn read_stdin_passphrase() -> anyhow::Result<Secret> {
    use std::io::Read;
    let fd = libc::STDIN_FILENO;
    if unsafe { libc::isatty(fd) } == 0 {
        let mut b = zeroize::Zeroizing::new(Vec::with_capacity(8192));
        std::io::stdin().read_to_end(&mut b)?;
        return Ok(Secret::from_slice(&b));
    }
    eprint!("Passphrase for LUKS volumes: ");
    let mut old: libc::termios = unsafe { std::mem::zeroed() };
    let have = unsafe { libc::tcgetattr(fd, &mut old) } == 0;
    if have {
        let mut quiet = old;
        quiet.c_lflag &= !libc::ECHO;
        unsafe { libc::tcsetattr(fd, libc::TCSANOW, &quiet) };
    }
    let mut line = zeroize::Zeroizing::new(String::new());
    let r = std::io::stdin().read_line(&mut line);
    if have {
        unsafe { libc::tcsetattr(fd, libc::TCSANOW, &old) };
    }
    eprintln!();
    r?;
    Ok(Secret::from_slice(
        line.trim_end_matches(['\n', '\r']).as_bytes(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kernel's account of the mapping holding `addr`: its VmFlags line and its
    /// Locked kB.
    fn mapping_of(addr: usize) -> (String, u64) {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let mut inside = false;
        let (mut flags, mut locked) = (String::new(), 0);
        for line in smaps.lines() {
            let head = line.split_whitespace().next().unwrap_or("");
            if let Some((a, b)) = head.split_once('-') {
                if let (Ok(a), Ok(b)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16))
                {
                    inside = (a..b).contains(&addr);
                    continue;
                }
            }
            if !inside {
                continue;
            }
            if let Some(v) = line.strip_prefix("Locked:") {
                locked = v.trim().trim_end_matches(" kB").parse().unwrap();
            } else if let Some(v) = line.strip_prefix("VmFlags:") {
                flags = v.trim().to_string();
            }
        }
        (flags, locked)
    }

    #[test]
    fn key_material_is_locked_and_left_out_of_core_dumps() {
        let s = Secret::from_slice(b"correct horse battery staple");
        assert_eq!(&*s, b"correct horse battery staple");
        let (flags, locked) = mapping_of(s.as_ptr() as usize);
        let flags: Vec<&str> = flags.split(' ').collect();
        assert!(flags.contains(&"dd"), "not left out of dumps: {flags:?}");
        if unsafe { libc::geteuid() } == 0 {
            assert!(flags.contains(&"lo"), "not locked: {flags:?}");
            assert!(locked >= 4, "Locked: {locked} kB");
        }
        let c = s.clone();
        assert!(c == s && c.as_ptr() != s.as_ptr());
        let b = LockedBox::new([7u64; 60]);
        assert_eq!(b[59], 7);
        assert!(mapping_of(b.as_ptr() as usize)
            .0
            .split(' ')
            .any(|f| f == "dd"));
    }

    #[test]
    fn empty_and_page_sized_secrets() {
        assert!(Secret::zeroed(0).is_empty());
        let mut s = Secret::zeroed(4096);
        s[4095] = 1;
        assert_eq!(s.iter().map(|&b| b as u32).sum::<u32>(), 1);
        assert_eq!(Secret::new(vec![1, 2, 3]), Secret::from_slice(&[1, 2, 3]));
    }
}
