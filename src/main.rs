//! The `disksafe` command line.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use disksafe::backup::{self, BackupOptions, SourceSpec};
use disksafe::safe_reader::Safe;
use disksafe::size::{human, parse_size};

#[derive(Parser)]
#[command(
    name = "disksafe",
    version,
    about = "Block-level disk backups in a deduplicated safe, browsable read-only through FUSE"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Record one new recovery point holding every listed device.
    Backup {
        /// The safe directory (created if absent).
        safe: PathBuf,
        /// Devices to record, as [NAME=]SOURCE (a regular file or a block device).
        #[arg(required = true)]
        sources: Vec<String>,
        /// zstd level for a new safe, 0 for none (default 1).
        #[arg(long)]
        compression: Option<i32>,
        /// Block size for a new safe, e.g. 64K (default 64K).
        #[arg(long, value_parser = parse_size)]
        block_size: Option<u64>,
        /// NAME=FILE: byte ranges (`offset length` per line) changed since the previous point.
        #[arg(long, value_name = "NAME=FILE")]
        changed_blocks: Vec<String>,
        /// On read errors, keep what reads and record the rest as unreadable (failing disks).
        #[arg(long)]
        skip_unreadable: bool,
        /// With --skip-unreadable: read each sector that fails this many more times
        /// before recording it as unreadable (failing disks often give a sector on a
        /// later try; default 0).
        #[arg(long, value_name = "N", requires = "skip_unreadable", value_parser = clap::value_parser!(u32).range(0..=1000))]
        retries: Option<u32>,
        /// Record blocks the source's filesystems (ext2/3/4, XFS, NTFS, FAT, exFAT; btrfs; in partitions, md arrays, LUKS and LVM volumes too) mark free as zeros, unread.
        #[arg(long)]
        skip_free: bool,
        /// With --skip-free: a passphrase that opens LUKS volumes, so that their
        /// filesystems' free space is left out too (the file's bytes, also tried
        /// without a final newline; `-` reads standard input). Repeatable.
        #[arg(long = "key-file", value_name = "FILE", requires = "skip_free")]
        key_files: Vec<String>,
    },
    /// List the recovery points.
    Points {
        /// The safe directory.
        safe: PathBuf,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Write a device as it was at a point, byte-exact (zero blocks become holes).
    Restore {
        /// The safe directory.
        safe: PathBuf,
        /// Point id or `latest`.
        point: String,
        /// Device name.
        device: String,
        /// Output file or block device, `-` for stdout.
        output: String,
        /// Read OUTPUT (an existing file or device, such as the disk the point was
        /// taken of) and write only the blocks that differ from the point.
        #[arg(long)]
        only_differing: bool,
        /// Write only partition K of the device (numbered as the mount's partK.img).
        #[arg(long, value_name = "K")]
        partition: Option<u32>,
        /// Write only this raw image of the device, named as under the mount's
        /// N/DEVICE/ (e.g. lvm/VG-LV.img, md/NAME.img): one LV or array brought back.
        #[arg(long, value_name = "PATH")]
        volume: Option<PathBuf>,
        /// With --volume: a passphrase that opens LUKS volumes, so that their plaintext
        /// (luks/NAME.img) can be written (the file's bytes, also tried without a
        /// final newline; `-` reads standard input). Repeatable.
        #[arg(long = "key-file", value_name = "FILE", requires = "volume")]
        key_files: Vec<String>,
    },
    /// Copy a file or directory out of a point as the mount shows it, without FUSE
    /// (metadata kept as `cp -a` keeps it).
    Extract {
        /// The safe directory.
        safe: PathBuf,
        /// Point id or `latest`.
        point: String,
        /// What to copy, named as under the mount's point directory: DEVICE/partK/DIR,
        /// DEVICE/files/FILE, DEVICE/lvm/VG-LV/..., or a raw image such as DEVICE/disk.img.
        path: PathBuf,
        /// Where to: into it when an existing directory, else as this new name; `-`
        /// writes a file to standard output.
        dest: PathBuf,
        #[command(flatten)]
        view: PointView,
    },
    /// List a directory of a point (or one entry) as `ls -l` shows it, without FUSE.
    Ls {
        /// The safe directory.
        safe: PathBuf,
        /// Point id or `latest`.
        point: String,
        /// As under the mount's point directory (the point's devices when omitted).
        path: Option<PathBuf>,
        #[command(flatten)]
        view: PointView,
    },
    /// Find files in a point by name or type, as `find` prints them, without FUSE;
    /// the paths it prints are what `extract` takes.
    Find {
        /// The safe directory.
        safe: PathBuf,
        /// Point id or `latest`.
        point: String,
        /// Where to start, as under the mount's point directory (the whole point when
        /// omitted).
        path: Option<PathBuf>,
        /// Only entries whose own name matches this shell pattern (as `find -name`;
        /// quote it).
        #[arg(long, value_name = "PATTERN")]
        name: Option<String>,
        /// As --name, ignoring the case of ASCII letters (as `find -iname`).
        #[arg(long, value_name = "PATTERN", conflicts_with = "name")]
        iname: Option<String>,
        /// Only entries of these types: f (file), d, l, c, b, p, s; several letters for
        /// any of them.
        #[arg(long = "type", value_name = "LETTERS")]
        types: Option<String>,
        /// `ls -l` lines (times in UTC) with the path in place of the name.
        #[arg(short, long, conflicts_with = "print0")]
        long: bool,
        /// End each path with NUL instead of a newline (for `xargs -0`).
        #[arg(long)]
        print0: bool,
        #[command(flatten)]
        view: PointView,
    },
    /// What changed between two points under a path, one line per entry as restic
    /// prints it: + added, - removed, M content, U metadata only, T type; without FUSE.
    Diff {
        /// The safe directory.
        safe: PathBuf,
        /// The older point: an id or `latest`.
        from: String,
        /// The newer point: an id or `latest`.
        to: String,
        /// Where to compare, as under the mount's point directory (DEVICE/partK/DIR;
        /// the whole points when omitted).
        path: Option<PathBuf>,
        /// Compare file bytes (files of equal size) instead of modification times.
        #[arg(long)]
        content: bool,
        #[command(flatten)]
        view: PointView,
    },
    /// Mount every recovery point read-only through FUSE.
    Mount {
        /// The safe directory.
        safe: PathBuf,
        /// An existing, empty directory.
        mountpoint: PathBuf,
        /// Show only this point (a number or `latest`) at the root.
        #[arg(long)]
        point: Option<String>,
        /// Stay attached; unmount cleanly on SIGINT or SIGTERM.
        #[arg(long)]
        foreground: bool,
        /// Size of the server's caches, e.g. 512M (default 256M, at least 16M).
        #[arg(long, value_parser = parse_size)]
        cache: Option<u64>,
        /// Let other users enter; the kernel checks permissions.
        #[arg(long)]
        allow_other: bool,
        /// Show ext file trees as recorded, without replaying their journals (forensics).
        #[arg(long)]
        no_replay: bool,
        /// Show NTFS metadata files ($MFT, $LogFile, $Extend, ...) (forensics).
        #[arg(long)]
        show_system: bool,
        /// Log file of the background server (default: in the temporary directory).
        #[arg(long)]
        log: Option<PathBuf>,
        /// A passphrase for LUKS volumes: the file's bytes (also tried without a final
        /// newline), or `-` to type it (or pipe it) on standard input. Repeatable.
        #[arg(long = "key-file", value_name = "FILE")]
        key_files: Vec<String>,
        #[arg(long, hide = true)]
        daemon_child: bool,
        #[arg(long, hide = true)]
        keys_on_stdin: bool,
    },
    /// Unmount a disksafe mount.
    Umount {
        /// The mount point.
        mountpoint: PathBuf,
    },
    /// A tour on sample data it makes itself: back up, list, restore, verify, mount,
    /// find, ls, extract and diff, forget.
    Demo {
        /// Keep the demo's files here instead of a temporary directory.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Remove recovery points (by id or by --keep-* rules) and free the space only they used.
    Forget {
        /// The safe directory.
        safe: PathBuf,
        /// Points to forget: ids, `latest`, or ranges like 3-7.
        points: Vec<String>,
        /// Keep the N newest points.
        #[arg(long, value_name = "N", default_value_t = 0)]
        keep_last: u32,
        /// Keep the newest point of each of the N newest hours that have points.
        #[arg(long, value_name = "N", default_value_t = 0)]
        keep_hourly: u32,
        /// Keep the newest point of each of the N newest days (UTC) that have points.
        #[arg(long, value_name = "N", default_value_t = 0)]
        keep_daily: u32,
        /// Keep the newest point of each of the N newest weeks (Monday–Sunday, UTC).
        #[arg(long, value_name = "N", default_value_t = 0)]
        keep_weekly: u32,
        /// Keep the newest point of each of the N newest months (UTC).
        #[arg(long, value_name = "N", default_value_t = 0)]
        keep_monthly: u32,
        /// Keep the newest point of each of the N newest years (UTC).
        #[arg(long, value_name = "N", default_value_t = 0)]
        keep_yearly: u32,
        /// Only print what would be forgotten; change nothing.
        #[arg(long, short = 'n')]
        dry_run: bool,
    },
    /// Read every stored block and index entry; exit non-zero on damage.
    Verify {
        /// The safe directory.
        safe: PathBuf,
        /// Check only what this point needs (id or `latest`): its blocks, once each,
        /// and damage named for it alone. Repeatable.
        #[arg(long, value_name = "ID")]
        point: Vec<String>,
    },
}

/// How `ls`, `find`, `diff` and `extract` see a point: the mount's view options.
#[derive(clap::Args)]
struct PointView {
    /// File trees as recorded, without replaying their journals (forensics).
    #[arg(long)]
    no_replay: bool,
    /// Show NTFS metadata files ($MFT, $LogFile, $Extend, ...) (forensics).
    #[arg(long)]
    show_system: bool,
    /// A passphrase for LUKS volumes on the way to PATH: the file's bytes (also tried
    /// without a final newline), or `-` for standard input. Repeatable.
    #[arg(long = "key-file", value_name = "FILE")]
    key_files: Vec<String>,
}

impl PointView {
    fn options(self, progress: bool) -> anyhow::Result<disksafe::extract::ExtractOptions> {
        Ok(disksafe::extract::ExtractOptions {
            passphrases: disksafe::passphrase::read(&self.key_files)?,
            no_replay: self.no_replay,
            show_system: self.show_system,
            progress,
        })
    }
}

fn rfc3339(secs: i64) -> String {
    disksafe::format::utc_string(secs)
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.cmd {
        Cmd::Backup {
            safe,
            sources,
            compression,
            block_size,
            changed_blocks,
            skip_unreadable,
            retries,
            skip_free,
            key_files,
        } => {
            if let Some(level) = compression {
                if !(0..=22).contains(&level) {
                    anyhow::bail!("--compression must be 0 (none) to 22, got {level}");
                }
            }
            let block_size = match block_size {
                Some(bs) => {
                    if !(disksafe::format::MIN_BLOCK_SIZE as u64
                        ..=disksafe::format::MAX_BLOCK_SIZE as u64)
                        .contains(&bs)
                        || !bs.is_power_of_two()
                    {
                        anyhow::bail!(
                            "--block-size must be a power of two from 4K to 4M, got {bs}"
                        );
                    }
                    Some(bs as u32)
                }
                None => None,
            };
            let sources = sources
                .iter()
                .map(|s| SourceSpec::parse(s))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let mut cb = HashMap::new();
            for s in &changed_blocks {
                let (n, f) = s.split_once('=').ok_or_else(|| {
                    anyhow::anyhow!("--changed-blocks takes NAME=FILE, got {s:?}")
                })?;
                cb.insert(n.to_string(), PathBuf::from(f));
            }
            let opts = BackupOptions {
                compression,
                block_size,
                changed_blocks: cb,
                progress: std::io::stderr().is_terminal(),
                skip_unreadable,
                retries: retries.unwrap_or(0),
                skip_free,
                passphrases: disksafe::passphrase::read(&key_files)?,
            };
            let id = backup::backup(&safe, &sources, &opts)?;
            println!("{id}");
        }
        Cmd::Points { safe, json } => {
            let safe = Safe::open(&safe)?;
            let points = safe.points()?;
            let unreadable = safe.unreadable_totals()?;
            let bad = |p: i64, d: i64| unreadable.get(&(p, d)).copied().unwrap_or(0);
            if json {
                let mut v: Vec<serde_json::Value> = Vec::new();
                for p in &points {
                    let mut devs = Vec::new();
                    for d in &p.devices {
                        let bad = bad(p.id, d.id);
                        devs.push(serde_json::json!({"name": d.name, "size": d.size, "unreadable_bytes": bad}));
                    }
                    v.push(serde_json::json!({
                        "id": p.id,
                        "created": rfc3339(p.created),
                        "bytes_added": p.bytes_added,
                        "devices": devs,
                    }));
                }
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!(
                    "{:>6}  {:<20}  {:>12}  devices",
                    "point", "created (UTC)", "added"
                );
                for p in &points {
                    let mut devs: Vec<String> = Vec::new();
                    for d in &p.devices {
                        let bad = bad(p.id, d.id);
                        devs.push(if bad > 0 {
                            format!("{} ({}, {} unreadable)", d.name, human(d.size), human(bad))
                        } else {
                            format!("{} ({})", d.name, human(d.size))
                        });
                    }
                    println!(
                        "{:>6}  {:<20}  {:>12}  {}",
                        p.id,
                        rfc3339(p.created),
                        human(p.bytes_added),
                        devs.join(", ")
                    );
                }
                println!(
                    "{} point(s); the safe occupies {} on disk",
                    points.len(),
                    human(safe.occupied()?)
                );
            }
        }
        Cmd::Restore {
            safe,
            point,
            device,
            output,
            only_differing,
            partition,
            volume,
            key_files,
        } => {
            let opts = disksafe::restore::RestoreOptions {
                only_differing,
                progress: std::io::stderr().is_terminal(),
                partition,
                volume,
                passphrases: disksafe::passphrase::read(&key_files)?,
            };
            let n = disksafe::restore::restore(&safe, &point, &device, &output, opts)?;
            if only_differing {
                eprintln!(
                    "restored {} to {output}: {} ({} bytes) differed and was written; the rest already matched",
                    human(n.bytes),
                    human(n.written),
                    n.written
                );
            } else if output != "-" {
                eprintln!("restored {} to {output}", human(n.bytes));
            }
        }
        Cmd::Ls {
            safe,
            point,
            path,
            view,
        } => {
            let opts = view.options(false)?;
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            let path = path.unwrap_or_default();
            disksafe::extract::list(&safe, &point, &path, opts, &mut out)?;
        }
        Cmd::Diff {
            safe,
            from,
            to,
            path,
            content,
            view,
        } => {
            let opts = view.options(false)?;
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            let how = disksafe::diff::DiffOptions { content };
            let path = path.unwrap_or_default();
            let c = disksafe::diff::diff(&safe, &from, &to, &path, opts, &how, &mut out)?;
            eprintln!(
                "{} added, {} removed, {} changed, {} with metadata changed only, {} changed type",
                c.added, c.removed, c.modified, c.metadata, c.retyped
            );
        }
        Cmd::Find {
            safe,
            point,
            path,
            name,
            iname,
            types,
            long,
            print0,
            view,
        } => {
            let opts = view.options(false)?;
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            let what = disksafe::extract::FindOptions {
                ignore_case: iname.is_some(),
                name: name.or(iname),
                types,
                long,
                print0,
            };
            let path = path.unwrap_or_default();
            disksafe::extract::find(&safe, &point, &path, opts, &what, &mut out)?;
        }
        Cmd::Extract {
            safe,
            point,
            path,
            dest,
            view,
        } => {
            let opts = view.options(std::io::stderr().is_terminal())?;
            let x = disksafe::extract::extract(&safe, &point, &path, &dest, opts)?;
            if x.xattr_refused_count > 0 {
                eprintln!(
                    "warning: {} extended attribute(s) not kept: the destination refused them (e.g. {})",
                    x.xattr_refused_count,
                    x.xattr_refused.join("; ")
                );
            }
            if dest == std::path::Path::new("-") {
                return Ok(ExitCode::SUCCESS);
            }
            eprintln!(
                "extracted {} file(s) ({}), {} director{}, {} other entr{} to {}",
                x.files,
                human(x.bytes),
                x.dirs,
                if x.dirs == 1 { "y" } else { "ies" },
                x.other,
                if x.other == 1 { "y" } else { "ies" },
                dest.display()
            );
        }
        Cmd::Mount {
            safe,
            mountpoint,
            point,
            foreground,
            cache,
            allow_other,
            no_replay,
            show_system,
            log,
            key_files,
            daemon_child,
            keys_on_stdin,
        } => disksafe::fs::mount::mount(disksafe::fs::mount::MountArgs {
            passphrases: if keys_on_stdin {
                disksafe::fs::mount::keys_from_parent()?
            } else {
                disksafe::passphrase::read(&key_files)?
            },
            no_replay,
            show_system,
            safe,
            mountpoint,
            point,
            foreground,
            cache: cache.unwrap_or(disksafe::fs::mount::DEFAULT_CACHE),
            allow_other,
            log,
            daemon_child,
        })?,
        Cmd::Umount { mountpoint } => disksafe::fs::mount::umount(&mountpoint)?,
        Cmd::Demo { dir } => disksafe::demo::run(dir.as_deref())?,
        Cmd::Forget {
            safe,
            points,
            keep_last,
            keep_hourly,
            keep_daily,
            keep_weekly,
            keep_monthly,
            keep_yearly,
            dry_run,
        } => {
            let req = backup::ForgetRequest {
                points,
                policy: backup::Policy {
                    last: keep_last,
                    hourly: keep_hourly,
                    daily: keep_daily,
                    weekly: keep_weekly,
                    monthly: keep_monthly,
                    yearly: keep_yearly,
                },
                dry_run,
            };
            let r = backup::forget(&safe, &req)?;
            let verb = if dry_run { "would forget" } else { "forgot" };
            if r.kept.is_empty() {
                for (id, created) in &r.forgotten {
                    println!("forget {id:>6}  {}", rfc3339(*created));
                }
            } else {
                for (id, created, why) in &r.kept {
                    if why.is_empty() {
                        println!("forget {id:>6}  {}", rfc3339(*created));
                    } else {
                        println!("keep   {id:>6}  {}  {}", rfc3339(*created), why.join(", "));
                    }
                }
            }
            if dry_run {
                eprintln!(
                    "{verb} {} point(s), freeing {} in {} block(s) no point would use; nothing was changed",
                    r.forgotten.len(),
                    human(r.bytes_freed),
                    r.blocks_freed
                );
            } else {
                let rewritten = if r.packs_compacted > 0 {
                    format!(", {} rewritten without unused records", r.packs_compacted)
                } else {
                    String::new()
                };
                eprintln!(
                    "{verb} {} point(s); freed {} in {} block(s) no point uses, {} pack file(s) removed{rewritten}",
                    r.forgotten.len(),
                    human(r.bytes_freed),
                    r.blocks_freed,
                    r.packs_removed
                );
                if r.bytes_not_punched > 0 {
                    eprintln!(
                        "note: the safe's filesystem cannot punch holes: {} of that stays allocated in packs until a tenth of a pack is unused, which a later forget then rewrites",
                        human(r.bytes_not_punched)
                    );
                }
            }
        }
        Cmd::Verify { safe, point } => {
            let report = disksafe::verify::verify_points(&safe, &point)?;
            disksafe::verify::print(&report);
            if !report.intact() {
                eprintln!(
                    "disksafe: {} is damaged: {} damaged range(s), {} other problem(s)",
                    safe.display(),
                    report.damage.len(),
                    report.problems.len()
                );
                return Ok(ExitCode::from(1));
            }
            println!(
                "ok: {} stored blocks and {} index entries verified",
                report.blocks_checked, report.map_entries
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    // Die quietly on a closed pipe (`disksafe points SAFE | head`), as Unix tools do.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        // Blocks are allocated and freed by the thousand: keep freed memory instead of
        // returning it to the kernel (madvise + page faults) on every free.
        libc::mallopt(libc::M_TRIM_THRESHOLD, 256 << 20);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 8 << 20);
    }
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with(disksafe::fs::mount::QuietInterruptedReplies)
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::stderr().is_terminal()),
        )
        .init();
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("disksafe: error: {e:#}");
            ExitCode::from(1)
        }
    }
}
