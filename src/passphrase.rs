//! Passphrases for encrypted volumes, as users give them: `--key-file FILE` (the
//! file's bytes) or `--key-file -` (typed at a terminal without echo, or piped).

use anyhow::Context;

/// Key material (passphrases, derived and volume keys): wiped from memory when
/// dropped, so a freed buffer or a later core dump does not keep it.
pub type Secret = zeroize::Zeroizing<Vec<u8>>;

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
            variants.push(Secret::new(b.strip_suffix(b"\r").unwrap_or(b).to_vec()));
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
        let mut b = Secret::new(Vec::with_capacity(8192));
        std::io::stdin().read_to_end(&mut b)?;
        return Ok(b);
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
    Ok(Secret::new(
        line.trim_end_matches(['\n', '\r']).as_bytes().to_vec(),
    ))
}
