//! `disksafe mount` / `umount`: checks, daemonising, signals and kernel tuning around
//! the FUSE session.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use anyhow::{bail, Context};

use super::{FsOptions, SafeFs};
use crate::cache::CachedSafe;
use crate::safe_reader::Safe;

/// Default size of the decompressed-block cache.
pub const DEFAULT_CACHE: u64 = 256 << 20;

/// Smallest `--cache` accepted: the block maps, file-tree metadata and blocks each
/// need a few MiB to work at all, and a smaller request could not be honoured.
pub const MIN_CACHE: u64 = 16 << 20;

/// What `disksafe mount` was asked.
#[derive(Debug, Clone)]
pub struct MountArgs {
    /// The safe.
    pub safe: PathBuf,
    /// Where to mount.
    pub mountpoint: PathBuf,
    /// Show only this point (`latest` allowed).
    pub point: Option<String>,
    /// Stay attached; unmount on SIGINT/SIGTERM.
    pub foreground: bool,
    /// Block cache bytes.
    pub cache: u64,
    /// Let other users in (kernel permission checks).
    pub allow_other: bool,
    /// Log file of the background server.
    pub log: Option<PathBuf>,
    /// Show file trees without journal replay (forensics).
    pub no_replay: bool,
    /// Show NTFS metadata files ($MFT, ...) (forensics).
    pub show_system: bool,
    /// Internal: we are the background server started by `mount`.
    pub daemon_child: bool,
    /// Passphrases to try on LUKS volumes.
    pub passphrases: Vec<crate::passphrase::Secret>,
}

/// Hex digits of the passphrase lines `mount` writes to its background server.
const HEX: &[u8; 16] = b"0123456789abcdef";

/// The passphrases the parent `mount` hands its background server on standard input,
/// one hex-encoded line each.
pub fn keys_from_parent() -> anyhow::Result<Vec<crate::passphrase::Secret>> {
    use std::io::BufRead;
    let mut out = Vec::new();
    let mut stdin = std::io::stdin().lock();
    let mut line = zeroize::Zeroizing::new(String::new());
    loop {
        line.clear();
        if stdin.read_line(&mut line)? == 0 {
            break;
        }
        let hex = line.trim().as_bytes();
        if hex.len() % 2 != 0 {
            bail!("malformed passphrase line from the parent");
        }
        let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
        let mut p = crate::passphrase::Secret::zeroed(hex.len() / 2);
        for (i, pair) in hex.chunks(2).enumerate() {
            match (digit(pair[0]), digit(pair[1])) {
                (Some(a), Some(b)) => p[i] = a << 4 | b,
                _ => bail!("malformed passphrase line from the parent"),
            }
        }
        out.push(p);
    }
    Ok(out)
}

/// True when `mp` (whose metadata is `md`) is the root of a filesystem of its own: on
/// another device than its parent, or its own parent (`/`).
fn is_mount_root(mp: &Path, md: &std::fs::Metadata) -> std::io::Result<bool> {
    let parent = std::fs::metadata(mp.join(".."))?;
    Ok(parent.dev() != md.dev() || parent.ino() == md.ino())
}

/// Fails unless `mp` is an existing directory that is not already a mount point.
fn check_mountpoint(mp: &Path) -> anyhow::Result<()> {
    let dead = || {
        anyhow::anyhow!(
            "mount point {} is a dead FUSE mount; run `disksafe umount {}` first",
            mp.display(),
            mp.display()
        )
    };
    let md = match std::fs::metadata(mp) {
        Ok(m) => m,
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => return Err(dead()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!("mount point {} does not exist", mp.display())
        }
        Err(e) => bail!("mount point {}: {e}", mp.display()),
    };
    if !md.is_dir() {
        bail!("mount point {} is not a directory", mp.display());
    }
    if is_mount_root(mp, &md).with_context(|| format!("mount point {}", mp.display()))? {
        // A FUSE mount whose server died still answers stat from the attributes the
        // kernel kept (for up to a second here); a listing asks the server.
        if std::fs::read_dir(mp).is_err_and(|e| e.raw_os_error() == Some(libc::ENOTCONN)) {
            return Err(dead());
        }
        bail!("{} is already a mount point", mp.display());
    }
    Ok(())
}

/// Says why a mount cannot happen when /dev/fuse is missing, or closed to a user who
/// is not root (root mounts directly; others mount through fusermount3, but the
/// session still opens the device itself), instead of a bare "Permission denied".
fn check_fuse_device() -> anyhow::Result<()> {
    let dev = Path::new("/dev/fuse");
    if !dev.exists() {
        bail!(
            "FUSE is not available: /dev/fuse does not exist (load the fuse module: modprobe fuse)"
        );
    }
    if unsafe { libc::geteuid() } != 0 {
        if let Err(e) = std::fs::OpenOptions::new().read(true).write(true).open(dev) {
            bail!(
                "cannot open /dev/fuse ({e}): mount as root, or give this user read and write access to it (the fuse3 package's udev rule makes it 0666)"
            );
        }
    }
    Ok(())
}

/// Mounts the safe; returns once the mount is live (or, in the foreground, once it is
/// unmounted again).
pub fn mount(args: MountArgs) -> anyhow::Result<()> {
    let r = mount_inner(&args);
    if args.daemon_child {
        if let Err(e) = &r {
            // The parent waits on our stdout for "ready" or an error line.
            println!("error: {e:#}");
        }
    }
    r
}

fn mount_inner(args: &MountArgs) -> anyhow::Result<()> {
    if args.cache < MIN_CACHE {
        bail!(
            "--cache must be at least {}M (got {} bytes)",
            MIN_CACHE >> 20,
            args.cache
        );
    }
    let safe = Arc::new(Safe::open(&args.safe)?);
    let only_point = match &args.point {
        Some(p) => Some(safe.point(p)?.id),
        None => None,
    };
    let mp = std::fs::canonicalize(&args.mountpoint).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            anyhow::anyhow!("mount point {} does not exist", args.mountpoint.display())
        } else {
            anyhow::anyhow!("mount point {}: {e}", args.mountpoint.display())
        }
    })?;
    check_mountpoint(&mp)?;
    check_fuse_device()?;
    if !args.foreground && !args.daemon_child {
        return spawn_server(args, only_point, &mp);
    }
    serve(args, safe, only_point, &mp)
}

/// Starts the server as a detached child and waits until it reports the mount live.
fn spawn_server(args: &MountArgs, only_point: Option<i64>, mp: &Path) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("locating the disksafe binary")?;
    let log = args.log.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!(
            "disksafe-mount-{}-{}.log",
            unsafe { libc::getuid() },
            std::process::id()
        ))
    });
    let logf = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .with_context(|| format!("opening log file {}", log.display()))?;
    let safe = std::fs::canonicalize(&args.safe)?;
    let mut cmd = Command::new(exe);
    cmd.arg("mount")
        .arg(&safe)
        .arg(mp)
        .arg("--cache")
        .arg(args.cache.to_string())
        .arg("--daemon-child");
    if let Some(p) = only_point {
        cmd.arg("--point").arg(p.to_string());
    }
    if args.allow_other {
        cmd.arg("--allow-other");
    }
    if args.no_replay {
        cmd.arg("--no-replay");
    }
    if args.show_system {
        cmd.arg("--show-system");
    }
    if !args.passphrases.is_empty() {
        cmd.arg("--keys-on-stdin");
    }
    cmd.stdin(if args.passphrases.is_empty() {
        Stdio::null()
    } else {
        Stdio::piped()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::from(logf));
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = cmd.spawn().context("starting the mount server")?;
    if let Some(mut stdin) = child.stdin.take() {
        // Passphrases never go on the command line, where `ps` would show them.
        // Sized up front: a growing buffer would leave copies behind unwiped.
        let len = args.passphrases.iter().map(|p| 2 * p.len() + 1).sum();
        let mut text = zeroize::Zeroizing::new(Vec::<u8>::with_capacity(len));
        for p in &args.passphrases {
            for &b in p.iter() {
                text.extend_from_slice(&[HEX[(b >> 4) as usize], HEX[(b & 15) as usize]]);
            }
            text.push(b'\n');
        }
        stdin.write_all(&text)?;
    }
    let mut line = String::new();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    out.read_line(&mut line)?;
    if line.trim() == "ready" {
        eprintln!(
            "mounted {} at {} (server pid {}, log {})",
            safe.display(),
            mp.display(),
            child.id(),
            log.display()
        );
        return Ok(());
    }
    let _ = child.wait();
    let msg = line
        .trim()
        .strip_prefix("error: ")
        .unwrap_or(line.trim())
        .to_string();
    if msg.is_empty() {
        bail!(
            "the mount server exited without mounting; see {}",
            log.display()
        );
    }
    bail!("{msg}")
}

fn signal_set() -> libc::sigset_t {
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            libc::sigaddset(&mut set, s);
        }
        set
    }
}

/// Runs the FUSE session until unmounted or signalled.
fn serve(
    args: &MountArgs,
    safe: Arc<Safe>,
    only_point: Option<i64>,
    mp: &Path,
) -> anyhow::Result<()> {
    // Block the stop signals in every thread; this one collects them with sigtimedwait.
    let set = signal_set();
    unsafe {
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
    limit_malloc_arenas();
    size_decode_pool();
    let cache = Arc::new(CachedSafe::new(safe.clone(), args.cache as usize));
    let fs = SafeFs::new(
        cache,
        FsOptions {
            only_point,
            allow_other: args.allow_other,
            no_replay: args.no_replay,
            show_system: args.show_system,
            keyring: Arc::new(crate::volumes::luks::Keyring::new(args.passphrases.clone())),
        },
    )?;
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        fuser::MountOption::RO,
        fuser::MountOption::FSName(format!("disksafe:{}", safe.dir().display())),
        fuser::MountOption::Subtype("disksafe".into()),
        fuser::MountOption::NoDev,
        fuser::MountOption::NoSuid,
    ];
    if args.allow_other {
        config
            .mount_options
            .push(fuser::MountOption::DefaultPermissions);
        config.acl = fuser::SessionACL::All;
    }
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    config.n_threads = Some((cores * 2).max(4));
    config.clone_fd = true;
    let session = fuser::Session::new(fs, mp, &config)
        .with_context(|| format!("mounting at {}", mp.display()))?;
    let bg = session.spawn().context("starting the FUSE session")?;
    raise_readahead(mp);
    tracing::info!("serving {} at {}", safe.dir().display(), mp.display());
    if args.daemon_child {
        println!("ready");
        std::io::stdout().flush()?;
        // Nobody reads our stdout any more.
        unsafe {
            let null = libc::open(c"/dev/null".as_ptr(), libc::O_WRONLY);
            if null >= 0 {
                libc::dup2(null, 1);
                libc::close(null);
            }
        }
    }
    loop {
        let ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 300_000_000,
        };
        let sig = unsafe { libc::sigtimedwait(&set, std::ptr::null_mut(), &ts) };
        if sig > 0 {
            tracing::info!("signal {sig}: unmounting {}", mp.display());
            if let Err(e) = bg.umount_and_join() {
                // Busy (open files): detach now; the kernel ends the connection when
                // this process exits, and readers of open files get ENOTCONN.
                tracing::warn!(
                    "unmount of {} failed ({e}); detaching it lazily",
                    mp.display()
                );
                let _ = umount_with(mp, true);
                std::process::exit(0);
            }
            return Ok(());
        }
        if bg.guard.is_finished() {
            // The kernel ended the session: someone unmounted us. Joining through
            // fuser would then unmount the mount point once more, by path, and by now
            // it may hold a new mount (`umount; mount` in a script). Take the thread's
            // result and leave the rest (the mount guard) undropped; the process ends.
            // SAFETY: `bg` is forgotten right after, so `guard` is owned exactly once.
            let guard = unsafe { std::ptr::read(&bg.guard) };
            std::mem::forget(bg);
            return match guard.join() {
                Ok(r) => r.context("FUSE session"),
                Err(_) => bail!("the FUSE session thread panicked"),
            };
        }
    }
}

/// glibc gives every thread its own malloc arena, and the server's threads take turns
/// filling and evicting the caches: freed memory then sits in many arenas and the RSS
/// ends up far above `--cache` (110 MiB for a 32 MiB cache after walking 8 file trees,
/// 40 MiB with one arena, no slower here). Small allocations stay per-thread (tcache).
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// Threads of the decoding pool beyond one per core.
const IO_SLACK: usize = 6;

/// Readahead and large reads run on rayon's global pool, and each job first waits on
/// its pack read (O_DIRECT, so no kernel readahead hides it), then decodes. With one
/// thread per core, cores sat idle while every thread waited on the disk (10-15 %
/// iowait in a cold `dd`); a few threads more keep decoding going meanwhile.
/// `RAYON_NUM_THREADS`, when set, wins.
fn size_decode_pool() {
    if std::env::var_os("RAYON_NUM_THREADS").is_some() {
        return;
    }
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    if let Err(e) = rayon::ThreadPoolBuilder::new()
        .num_threads(cores + IO_SLACK)
        .thread_name(|i| format!("disksafe-dec-{i}"))
        .build_global()
    {
        tracing::debug!("decoding pool left as it was: {e}");
    }
}

/// Raises the kernel readahead of the mount to 1 MiB so sequential reads arrive in
/// large pieces; best effort (needs root).
fn raise_readahead(mp: &Path) {
    let Ok(md) = std::fs::metadata(mp) else {
        return;
    };
    let dev = md.dev();
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    let path = format!("/sys/class/bdi/{major}:{minor}/read_ahead_kb");
    match std::fs::write(&path, "1024") {
        Ok(()) => tracing::debug!("set {path} to 1024"),
        Err(e) => tracing::debug!("cannot raise readahead ({path}): {e}"),
    }
}

/// Unmounts a disksafe mount, as `fusermount3 -u` does.
pub fn umount(mp: &Path) -> anyhow::Result<()> {
    umount_with(mp, false)
}

fn umount_with(mp: &Path, lazy: bool) -> anyhow::Result<()> {
    match std::fs::metadata(mp) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!("{} does not exist", mp.display())
        }
        // A dead FUSE mount (ENOTCONN), or another user's mount that even root may not
        // enter (EACCES): still mounts, which the unmount below handles or refuses.
        Err(_) => {}
        Ok(md) => {
            if let Ok(false) = is_mount_root(mp, &md) {
                bail!("{} is not a mount point", mp.display());
            }
        }
    }
    let mut cmd = Command::new("fusermount3");
    cmd.arg(if lazy { "-uz" } else { "-u" }).arg(mp);
    let out = cmd.output();
    match out {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => {
            let msg = String::from_utf8_lossy(&o.stderr).trim().to_string();
            bail!("cannot unmount {}: {msg}", mp.display())
        }
        Err(_) => {
            let c = std::ffi::CString::new(mp.as_os_str().as_encoded_bytes())?;
            let flags = if lazy { libc::MNT_DETACH } else { 0 };
            if unsafe { libc::umount2(c.as_ptr(), flags) } != 0 {
                bail!(
                    "cannot unmount {}: {}",
                    mp.display(),
                    std::io::Error::last_os_error()
                );
            }
            Ok(())
        }
    }
}

/// Keeps fuser's "Failed to send FUSE reply: ... (os error 2)" out of the log: the
/// kernel answers ENOENT when the request a reply names is gone, which is how every
/// interrupted reader ends (a signal to `dd`, `cp` or a shell's Ctrl-C). fuser answers
/// the kernel's FUSE_INTERRUPT itself, on whichever cloned device the interrupt was
/// read from, so the kernel rarely finds the request there; the read it interrupted
/// still completes. A log full of ERROR lines for that would hide real errors.
pub struct QuietInterruptedReplies;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for QuietInterruptedReplies {
    fn event_enabled(
        &self,
        event: &tracing::Event<'_>,
        _: tracing_subscriber::layer::Context<'_, S>,
    ) -> bool {
        // fuser logs through the `log` crate: its target arrives as a field.
        let mut fields = LogFields::default();
        event.record(&mut fields);
        !is_interrupted_reply(&fields.target, &fields.message)
    }
}

#[derive(Default)]
struct LogFields {
    target: String,
    message: String,
}

impl tracing::field::Visit for LogFields {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if field.name() == "log.target" {
            self.target = value.to_string();
        }
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.message = format!("{value:?}");
        }
    }
}

fn is_interrupted_reply(target: &str, message: &str) -> bool {
    target == "fuser::reply"
        && message.starts_with("Failed to send FUSE reply")
        && message.ends_with("(os error 2)")
}
