//! LUKS1 and LUKS2 encrypted volumes (cryptsetup's on-disk format), opened with a
//! passphrase the user gives: a laptop's or server's encrypted partition, or the
//! "encrypted LVM" that Debian's and Ubuntu's installers set up, shows its contents
//! the way `cryptsetup open` would. Nothing here writes; without a passphrase that
//! opens a keyslot the volume stays a raw image of ciphertext.
//!
//! Opening follows the format's specifications (LUKS1 1.2.3, LUKS2 on-disk format
//! 1.1.x): the passphrase is stretched by the keyslot's KDF (PBKDF2 with SHA-1/256/
//! 512, Argon2i, Argon2id), decrypts the keyslot's key material, which the
//! anti-forensic split merges into a candidate volume key, accepted only when it
//! matches the header's digest. LUKS2 headers are checked by their SHA-256 checksum,
//! the primary or the secondary copy (the newer intact one). Data is decrypted per
//! sector: AES in XTS (`plain64`/`plain` tweaks) or CBC (`essiv:sha256`, `plain64`,
//! `plain`), LUKS2 sectors of 512 to 4096 bytes. Every field is treated as hostile:
//! sizes, offsets and KDF costs are bounded before any work.

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex};

use aes::cipher::{BlockDecrypt, BlockEncrypt, KeyInit};
use base64::Engine;
use sha2::Digest;

use crate::passphrase::{LockedBox, Secret};
use crate::readat::ReadAt;

const MAGIC1: &[u8; 6] = b"LUKS\xba\xbe";
const MAGIC2: &[u8; 6] = b"SKUL\xba\xbe";
/// LUKS1 keyslot marker of an enabled slot.
const SLOT_ACTIVE: u32 = 0x00AC_71F3;
/// Bounds on what a header may ask for: cryptsetup's own limits or above them.
const MAX_KEY: usize = 64;
/// Largest data sector (LUKS2 allows 512 to 4096 bytes).
const MAX_SECTOR: usize = 4096;
const MAX_STRIPES: u64 = 1 << 16;
/// PBKDF2 iterations: 8x what cryptsetup's 2-second benchmark picks on a fast CPU.
const MAX_PBKDF2_ITER: u64 = 1 << 25;
/// Argon2: cryptsetup's memory ceiling (4 GiB), passes, and their product (KiB
/// passes: 1 GiB x 32), so a hostile header cannot ask for hours of work.
const MAX_ARGON_KIB: u64 = 4 << 20;
const MAX_ARGON_TIME: u64 = 1 << 12;
const MAX_ARGON_WORK: u64 = 1 << 25;

fn bad(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

fn be16(b: &[u8], o: usize) -> u16 {
    u16::from_be_bytes(b[o..o + 2].try_into().unwrap())
}

fn be32(b: &[u8], o: usize) -> u32 {
    u32::from_be_bytes(b[o..o + 4].try_into().unwrap())
}

fn be64(b: &[u8], o: usize) -> u64 {
    u64::from_be_bytes(b[o..o + 8].try_into().unwrap())
}

/// A NUL-padded text field.
fn text(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

/// Hash functions LUKS names for its KDFs, digests and the anti-forensic split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hash {
    Sha1,
    Sha256,
    Sha512,
}

impl Hash {
    fn parse(name: &str) -> io::Result<Hash> {
        match name.to_ascii_lowercase().as_str() {
            "sha1" => Ok(Hash::Sha1),
            "sha256" => Ok(Hash::Sha256),
            "sha512" => Ok(Hash::Sha512),
            other => Err(bad(format!("hash {other} is not supported"))),
        }
    }

    fn len(self) -> usize {
        match self {
            Hash::Sha1 => 20,
            Hash::Sha256 => 32,
            Hash::Sha512 => 64,
        }
    }

    fn digest(self, parts: &[&[u8]]) -> Vec<u8> {
        fn run<D: Digest>(parts: &[&[u8]]) -> Vec<u8> {
            let mut d = D::new();
            for p in parts {
                d.update(p);
            }
            d.finalize().to_vec()
        }
        match self {
            Hash::Sha1 => run::<sha1::Sha1>(parts),
            Hash::Sha256 => run::<sha2::Sha256>(parts),
            Hash::Sha512 => run::<sha2::Sha512>(parts),
        }
    }

    fn pbkdf2(self, pass: &[u8], salt: &[u8], iter: u32, out: &mut [u8]) {
        match self {
            Hash::Sha1 => pbkdf2::pbkdf2_hmac::<sha1::Sha1>(pass, salt, iter, out),
            Hash::Sha256 => pbkdf2::pbkdf2_hmac::<sha2::Sha256>(pass, salt, iter, out),
            Hash::Sha512 => pbkdf2::pbkdf2_hmac::<sha2::Sha512>(pass, salt, iter, out),
        }
    }
}

/// How a keyslot stretches a passphrase.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Kdf {
    Pbkdf2 {
        hash: Hash,
        iterations: u32,
        salt: Vec<u8>,
    },
    Argon2 {
        id: bool,
        time: u32,
        kib: u32,
        lanes: u32,
        salt: Vec<u8>,
    },
}

impl Kdf {
    fn derive(&self, pass: &[u8], out: &mut [u8]) -> io::Result<()> {
        match self {
            Kdf::Pbkdf2 {
                hash,
                iterations,
                salt,
            } => {
                hash.pbkdf2(pass, salt, *iterations, out);
                Ok(())
            }
            Kdf::Argon2 {
                id,
                time,
                kib,
                lanes,
                salt,
            } => {
                let params = argon2::Params::new(*kib, *time, *lanes, Some(out.len()))
                    .map_err(|e| bad(format!("argon2 parameters: {e}")))?;
                let alg = if *id {
                    argon2::Algorithm::Argon2id
                } else {
                    argon2::Algorithm::Argon2i
                };
                argon2::Argon2::new(alg, argon2::Version::V0x13, params)
                    .hash_password_into(pass, salt, out)
                    .map_err(|e| bad(format!("argon2: {e}")))
            }
        }
    }
}

/// One keyslot: where its key material lies and how to open it.
#[derive(Debug, Clone)]
struct Keyslot {
    name: String,
    kdf: Kdf,
    /// Key material: byte offset and length in the volume.
    area: u64,
    area_len: u64,
    /// Cipher and key length (bytes) the key material is encrypted with.
    cipher: String,
    cipher_key: usize,
    /// Anti-forensic split: stripes and hash.
    stripes: u64,
    af_hash: Hash,
}

/// How the volume key is checked.
#[derive(Debug, Clone)]
struct KeyDigest {
    hash: Hash,
    iterations: u32,
    salt: Vec<u8>,
    digest: Vec<u8>,
    /// The keyslots it vouches for (all, for LUKS1).
    slots: Option<Vec<String>>,
}

/// A LUKS header as far as opening the volume needs.
#[derive(Debug, Clone)]
pub struct Header {
    /// 1 or 2.
    pub version: u16,
    /// The volume's UUID, as `cryptsetup luksUUID` prints it.
    pub uuid: String,
    /// LUKS2 label (empty for LUKS1).
    pub label: String,
    key_len: usize,
    slots: Vec<Keyslot>,
    digest: KeyDigest,
    /// Encrypted data: byte offset in the volume and length (`None`: to the end).
    data: u64,
    data_len: Option<u64>,
    cipher: String,
    sector: u64,
    /// First data sector's IV number.
    iv_tweak: u64,
    /// The header bytes its identity rests on (for the key cache).
    raw: Vec<u8>,
}

/// Reads a LUKS header off `vol`: `Ok(None)` when there is none, an error when one is
/// there but cannot be used (damaged, or a feature not read here).
pub fn header(vol: &dyn ReadAt) -> io::Result<Option<Header>> {
    if vol.size() < 4096 {
        return Ok(None);
    }
    let mut b = vec![0u8; 4096];
    // The primary header unreadable (a failing disk's backup did not give it) or
    // wiped: LUKS2's secondary copy, as cryptsetup looks for it.
    if !super::read_or_unreadable(vol, 0, &mut b)? || b.iter().all(|&x| x == 0) {
        return luks2_secondary_only(vol);
    }
    if &b[..6] != MAGIC1 {
        return Ok(None);
    }
    match be16(&b, 6) {
        1 => luks1(&b[..592]).map(Some),
        2 => luks2(vol, &b).map(Some),
        v => Err(bad(format!("LUKS version {v} is not supported"))),
    }
}

fn luks1(b: &[u8]) -> io::Result<Header> {
    let cipher = format!("{}-{}", text(&b[8..40]), text(&b[40..72]));
    let hash = Hash::parse(&text(&b[72..104]))?;
    let key_len = be32(b, 108) as usize;
    if key_len == 0 || key_len > MAX_KEY {
        return Err(bad(format!("LUKS1 key of {key_len} bytes")));
    }
    let mut slots = Vec::new();
    for k in 0..8 {
        let s = &b[208 + 48 * k..256 + 48 * k];
        if be32(s, 0) != SLOT_ACTIVE {
            continue;
        }
        let stripes = be32(s, 44) as u64;
        let area_len = (key_len as u64 * stripes).div_ceil(512) * 512;
        slots.push(Keyslot {
            name: k.to_string(),
            kdf: Kdf::Pbkdf2 {
                hash,
                iterations: be32(s, 4),
                salt: s[8..40].to_vec(),
            },
            area: be32(s, 40) as u64 * 512,
            area_len,
            cipher: cipher.clone(),
            cipher_key: key_len,
            stripes,
            af_hash: hash,
        });
    }
    Ok(Header {
        version: 1,
        uuid: text(&b[168..208]),
        label: String::new(),
        key_len,
        slots,
        digest: KeyDigest {
            hash,
            iterations: be32(b, 164),
            salt: b[132..164].to_vec(),
            digest: b[112..132].to_vec(),
            slots: None,
        },
        data: be32(b, 104) as u64 * 512,
        data_len: None,
        cipher,
        sector: 512,
        iv_tweak: 0,
        raw: b.to_vec(),
    })
}

/// One LUKS2 binary header and its JSON area at `at`, when its checksum holds:
/// (sequence id, JSON text, the bytes hashed).
fn luks2_copy(vol: &dyn ReadAt, at: u64, magic: &[u8; 6]) -> io::Result<Option<(u64, Vec<u8>)>> {
    if at.checked_add(4096).is_none_or(|e| e > vol.size()) {
        return Ok(None);
    }
    let mut b = vec![0u8; 4096];
    vol.read_exact_at(at, &mut b)?;
    if &b[..6] != magic || be16(&b, 6) != 2 || be64(&b, 256) != at {
        return Ok(None);
    }
    let size = be64(&b, 8);
    if !(14..=22).any(|k| size == 1 << k) || at + size > vol.size() {
        return Ok(None);
    }
    if text(&b[72..104]) != "sha256" {
        return Ok(None);
    }
    let mut all = vec![0u8; size as usize];
    all[..4096].copy_from_slice(&b);
    vol.read_exact_at(at + 4096, &mut all[4096..])?;
    let want = all[448..480].to_vec();
    all[448..512].fill(0);
    if sha2::Sha256::digest(&all).as_slice() != want.as_slice() {
        return Ok(None);
    }
    all[448..480].copy_from_slice(&want);
    Ok(Some((be64(&b, 16), all)))
}

/// Where LUKS2 may keep its secondary header: after a primary of 16 KiB to 4 MiB.
const SECONDARY_AT: [u64; 9] = [
    16 << 10,
    32 << 10,
    64 << 10,
    128 << 10,
    256 << 10,
    512 << 10,
    1 << 20,
    2 << 20,
    4 << 20,
];

/// A LUKS2 volume read from its secondary header alone (the primary unreadable or
/// wiped); `None` when no intact secondary is at any of its places.
fn luks2_secondary_only(vol: &dyn ReadAt) -> io::Result<Option<Header>> {
    for at in SECONDARY_AT {
        let found = match luks2_copy(vol, at, MAGIC2) {
            Ok(f) => f,
            Err(e) if crate::device::is_unreadable(&e) => None,
            Err(e) => return Err(e),
        };
        if let Some((_, all)) = found {
            tracing::warn!(
                "LUKS2 primary header unreadable or wiped; using the secondary header at byte {at}"
            );
            return luks2_from(all).map(Some);
        }
    }
    Ok(None)
}

fn luks2(vol: &dyn ReadAt, b: &[u8]) -> io::Result<Header> {
    let primary = luks2_copy(vol, 0, MAGIC1)?;
    let size = be64(b, 8);
    let secondary = if (14..=22).any(|k| size == 1 << k) {
        luks2_copy(vol, size, MAGIC2)?
    } else {
        None
    };
    let (_, all) = match (primary, secondary) {
        (Some(p), Some(s)) => {
            if s.0 > p.0 {
                s
            } else {
                p
            }
        }
        (Some(p), None) => p,
        (None, Some(s)) => s,
        (None, None) => return Err(bad("LUKS2 header: both copies fail their checksum")),
    };
    luks2_from(all)
}

/// The header from one checksummed copy's bytes (binary header, then JSON).
fn luks2_from(all: Vec<u8>) -> io::Result<Header> {
    let json_end = all[4096..]
        .iter()
        .position(|&c| c == 0)
        .map_or(all.len(), |p| 4096 + p);
    let j: serde_json::Value = serde_json::from_slice(&all[4096..json_end])
        .map_err(|e| bad(format!("LUKS2 metadata: {e}")))?;
    let uuid = text(&all[168..208]);
    let label = text(&all[24..72]);
    parse_json(&j, uuid, label, all)
}

/// A JSON number written as a decimal string (LUKS2 puts 64-bit values so).
fn num(v: &serde_json::Value, what: &str) -> io::Result<u64> {
    match v {
        serde_json::Value::String(s) => s.parse().ok(),
        serde_json::Value::Number(n) => n.as_u64(),
        _ => None,
    }
    .ok_or_else(|| bad(format!("LUKS2 metadata: {what} is not a number")))
}

fn field<'a>(
    v: &'a serde_json::Value,
    name: &str,
    what: &str,
) -> io::Result<&'a serde_json::Value> {
    v.get(name)
        .ok_or_else(|| bad(format!("LUKS2 metadata: {what} has no {name}")))
}

fn string(v: &serde_json::Value, name: &str, what: &str) -> io::Result<String> {
    field(v, name, what)?
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| bad(format!("LUKS2 metadata: {what}'s {name} is not text")))
}

fn b64(v: &serde_json::Value, name: &str, what: &str) -> io::Result<Vec<u8>> {
    base64::engine::general_purpose::STANDARD
        .decode(string(v, name, what)?)
        .map_err(|e| bad(format!("LUKS2 metadata: {what}'s {name}: {e}")))
}

fn small(v: u64, max: u64, what: &str) -> io::Result<u32> {
    if v == 0 || v > max {
        return Err(bad(format!("LUKS2 metadata: {what} {v} out of range")));
    }
    Ok(v as u32)
}

fn parse_json(
    j: &serde_json::Value,
    uuid: String,
    label: String,
    raw: Vec<u8>,
) -> io::Result<Header> {
    let segs = field(j, "segments", "the header")?
        .as_object()
        .ok_or_else(|| bad("LUKS2 metadata: segments"))?;
    if segs.len() != 1 {
        return Err(bad(format!(
            "LUKS2 volume with {} data segments (a reencryption under way?) is not read",
            segs.len()
        )));
    }
    let (seg_id, seg) = segs.iter().next().unwrap();
    if string(seg, "type", "the segment")? != "crypt" {
        return Err(bad("LUKS2 segment is not of type crypt"));
    }
    if seg
        .get("flags")
        .and_then(|f| f.as_array())
        .is_some_and(|f| !f.is_empty())
        || seg.get("integrity").is_some()
    {
        return Err(bad(
            "LUKS2 segment with flags or integrity protection is not read",
        ));
    }
    let data = num(field(seg, "offset", "the segment")?, "segment offset")?;
    let data_len = match field(seg, "size", "the segment")? {
        serde_json::Value::String(s) if s == "dynamic" => None,
        v => Some(num(v, "segment size")?),
    };
    let sector = num(field(seg, "sector_size", "the segment")?, "sector size")?;
    if !(9..=12).any(|k| sector == 1 << k) || data % 512 != 0 {
        return Err(bad(format!(
            "LUKS2 segment: sector size {sector}, offset {data}"
        )));
    }
    let iv_tweak = num(field(seg, "iv_tweak", "the segment")?, "iv_tweak")?;
    let cipher = string(seg, "encryption", "the segment")?;

    // The digest that vouches for this segment.
    let digests = field(j, "digests", "the header")?
        .as_object()
        .ok_or_else(|| bad("LUKS2 metadata: digests"))?;
    let ids = |d: &serde_json::Value, name: &str| -> Vec<String> {
        d.get(name)
            .and_then(|v| v.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };
    let (_, dg) = digests
        .iter()
        .find(|(_, d)| ids(d, "segments").contains(seg_id))
        .ok_or_else(|| bad("LUKS2 metadata: no digest for the data segment"))?;
    if string(dg, "type", "the digest")? != "pbkdf2" {
        return Err(bad("LUKS2 digest type is not pbkdf2"));
    }
    let digest = KeyDigest {
        hash: Hash::parse(&string(dg, "hash", "the digest")?)?,
        iterations: small(
            num(field(dg, "iterations", "the digest")?, "iterations")?,
            MAX_PBKDF2_ITER,
            "digest iterations",
        )?,
        salt: b64(dg, "salt", "the digest")?,
        digest: b64(dg, "digest", "the digest")?,
        slots: Some(ids(dg, "keyslots")),
    };

    let mut slots = Vec::new();
    let mut key_len = 0;
    let keyslots = field(j, "keyslots", "the header")?
        .as_object()
        .ok_or_else(|| bad("LUKS2 metadata: keyslots"))?;
    for (name, ks) in keyslots {
        if !digest.slots.as_ref().is_some_and(|s| s.contains(name)) {
            continue;
        }
        let what = format!("keyslot {name}");
        if string(ks, "type", &what)? != "luks2" {
            continue;
        }
        let kl = num(field(ks, "key_size", &what)?, "key size")? as usize;
        let kdf_v = field(ks, "kdf", &what)?;
        let kdf = match string(kdf_v, "type", &what)?.as_str() {
            "pbkdf2" => Kdf::Pbkdf2 {
                hash: Hash::parse(&string(kdf_v, "hash", &what)?)?,
                iterations: small(
                    num(field(kdf_v, "iterations", &what)?, "iterations")?,
                    MAX_PBKDF2_ITER,
                    "iterations",
                )?,
                salt: b64(kdf_v, "salt", &what)?,
            },
            t @ ("argon2i" | "argon2id") => {
                let time = num(field(kdf_v, "time", &what)?, "time")?;
                let kib = num(field(kdf_v, "memory", &what)?, "memory")?;
                small(
                    time.saturating_mul(kib),
                    MAX_ARGON_WORK,
                    "argon2 cost (KiB x passes)",
                )?;
                Kdf::Argon2 {
                    id: t == "argon2id",
                    time: small(time, MAX_ARGON_TIME, "argon2 time")?,
                    kib: small(kib, MAX_ARGON_KIB, "argon2 memory")?,
                    lanes: small(
                        num(field(kdf_v, "cpus", &what)?, "cpus")?,
                        64,
                        "argon2 lanes",
                    )?,
                    salt: b64(kdf_v, "salt", &what)?,
                }
            }
            _ => continue,
        };
        let af = field(ks, "af", &what)?;
        if string(af, "type", &what)? != "luks1" {
            continue;
        }
        let area = field(ks, "area", &what)?;
        if string(area, "type", &what)? != "raw" {
            continue;
        }
        slots.push(Keyslot {
            name: name.clone(),
            kdf,
            area: num(field(area, "offset", &what)?, "area offset")?,
            area_len: num(field(area, "size", &what)?, "area size")?,
            cipher: string(area, "encryption", &what)?,
            cipher_key: num(field(area, "key_size", &what)?, "area key size")? as usize,
            stripes: num(field(af, "stripes", &what)?, "stripes")?,
            af_hash: Hash::parse(&string(af, "hash", &what)?)?,
        });
        key_len = kl;
    }
    if key_len == 0 || key_len > MAX_KEY {
        return Err(bad(
            "LUKS2 metadata: no usable keyslot for the data segment",
        ));
    }
    Ok(Header {
        version: 2,
        uuid,
        label,
        key_len,
        slots,
        digest,
        data,
        data_len,
        cipher,
        sector,
        iv_tweak,
        raw,
    })
}

/// AES with a 128-, 192- or 256-bit key.
enum Aes {
    A128(LockedBox<aes::Aes128>),
    A192(LockedBox<aes::Aes192>),
    A256(LockedBox<aes::Aes256>),
}

impl Aes {
    fn new(key: &[u8]) -> io::Result<Aes> {
        Ok(match key.len() {
            16 => Aes::A128(LockedBox::new(aes::Aes128::new_from_slice(key).unwrap())),
            24 => Aes::A192(LockedBox::new(aes::Aes192::new_from_slice(key).unwrap())),
            32 => Aes::A256(LockedBox::new(aes::Aes256::new_from_slice(key).unwrap())),
            n => return Err(bad(format!("AES key of {n} bytes"))),
        })
    }

    fn encrypt(&self, block: &mut [u8; 16]) {
        let b = aes::Block::from_mut_slice(&mut block[..]);
        match self {
            Aes::A128(c) => c.encrypt_block(b),
            Aes::A192(c) => c.encrypt_block(b),
            Aes::A256(c) => c.encrypt_block(b),
        }
    }

    fn decrypt_blocks(&self, blocks: &mut [aes::Block]) {
        match self {
            Aes::A128(c) => c.decrypt_blocks(blocks),
            Aes::A192(c) => c.decrypt_blocks(blocks),
            Aes::A256(c) => c.decrypt_blocks(blocks),
        }
    }
}

/// How a sector's IV comes from its number.
#[derive(Clone, Copy)]
enum Iv {
    /// The number's low 32 bits, little-endian.
    Plain,
    /// The number, 64 bits little-endian.
    Plain64,
}

/// A sector cipher as dm-crypt names them: `aes-xts-plain64`, `aes-cbc-essiv:sha256`.
enum Cipher {
    Xts {
        data: Aes,
        tweak: Aes,
        iv: Iv,
    },
    Cbc {
        data: Aes,
        iv: Iv,
        /// ESSIV: the IV is the sector number encrypted under the key's hash.
        essiv: Option<Aes>,
    },
}

impl Cipher {
    fn new(spec: &str, key: &[u8]) -> io::Result<Cipher> {
        let unsupported = || {
            bad(format!(
                "cipher {spec} is not supported (AES in XTS or CBC only)"
            ))
        };
        let mut parts = spec.splitn(3, '-');
        let (Some(alg), Some(mode), Some(ivs)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(unsupported());
        };
        if alg != "aes" {
            return Err(unsupported());
        }
        let (iv, essiv) = match ivs {
            "plain64" => (Iv::Plain64, None),
            "plain" => (Iv::Plain, None),
            "essiv:sha256" if mode == "cbc" => {
                let salt = zeroize::Zeroizing::new(<[u8; 32]>::from(sha2::Sha256::digest(key)));
                (Iv::Plain64, Some(Aes::new(&*salt)?))
            }
            _ => return Err(unsupported()),
        };
        match mode {
            "xts" if key.len() % 2 == 0 => {
                let (a, b) = key.split_at(key.len() / 2);
                Ok(Cipher::Xts {
                    data: Aes::new(a)?,
                    tweak: Aes::new(b)?,
                    iv,
                })
            }
            "cbc" => Ok(Cipher::Cbc {
                data: Aes::new(key)?,
                iv,
                essiv,
            }),
            _ => Err(unsupported()),
        }
    }

    /// Decrypts one sector (a multiple of 16 bytes) in place.
    fn decrypt(&self, buf: &mut [u8], sector: u64) {
        let number = |iv: Iv| {
            let mut t = [0u8; 16];
            match iv {
                Iv::Plain => t[..4].copy_from_slice(&(sector as u32).to_le_bytes()),
                Iv::Plain64 => t[..8].copy_from_slice(&sector.to_le_bytes()),
            }
            t
        };
        // One sector (at most 4096 bytes: 256 blocks of saved tweaks or ciphertext).
        assert!(buf.len() <= MAX_SECTOR, "one sector at a time");
        let blocks = as_blocks(buf);
        let saved = &mut [0u128; MAX_SECTOR / 16][..blocks.len()];
        match self {
            Cipher::Xts { data, tweak, iv } => {
                let mut t = number(*iv);
                tweak.encrypt(&mut t);
                let mut t = u128::from_le_bytes(t);
                for (b, s) in blocks.iter_mut().zip(saved.iter_mut()) {
                    *s = t;
                    xor(b, t);
                    // Multiply the tweak by x in GF(2^128), little-endian.
                    t = (t << 1) ^ ((t >> 127) * 0x87);
                }
                data.decrypt_blocks(blocks);
                for (b, t) in blocks.iter_mut().zip(saved.iter()) {
                    xor(b, *t);
                }
            }
            Cipher::Cbc { data, iv, essiv } => {
                let mut prev = number(*iv);
                if let Some(e) = essiv {
                    e.encrypt(&mut prev);
                }
                let mut prev = u128::from_le_bytes(prev);
                for (b, s) in blocks.iter().zip(saved.iter_mut()) {
                    *s = u128::from_le_bytes((*b).into());
                }
                data.decrypt_blocks(blocks);
                for (b, c) in blocks.iter_mut().zip(saved.iter()) {
                    xor(b, prev);
                    prev = *c;
                }
            }
        }
    }
}

/// `buf` (a multiple of 16 bytes) as AES blocks.
fn as_blocks(buf: &mut [u8]) -> &mut [aes::Block] {
    assert!(buf.len() % 16 == 0, "sectors are whole AES blocks");
    // SAFETY: a block is a `GenericArray<u8, U16>`, laid out as `[u8; 16]` (alignment
    // 1), and the length is a whole number of blocks.
    unsafe { std::slice::from_raw_parts_mut(buf.as_mut_ptr().cast(), buf.len() / 16) }
}

fn xor(b: &mut aes::Block, t: u128) {
    let v = u128::from_le_bytes((*b).into()) ^ t;
    b.copy_from_slice(&v.to_le_bytes());
}

/// The anti-forensic merge: every stripe but the last diffused into the next, the
/// last XORed in, gives the key.
fn af_merge(material: &[u8], key_len: usize, stripes: usize, hash: Hash) -> Secret {
    let mut d = Secret::zeroed(key_len);
    for s in 0..stripes {
        let stripe = &material[s * key_len..(s + 1) * key_len];
        for (x, y) in d.iter_mut().zip(stripe) {
            *x ^= y;
        }
        if s + 1 < stripes {
            diffuse(&mut d, hash);
        }
    }
    d
}

/// Each digest-sized piece replaced by the hash of its index and itself.
fn diffuse(d: &mut [u8], hash: Hash) {
    let n = hash.len();
    for (i, piece) in d.chunks_mut(n).enumerate() {
        let h = Secret::new(hash.digest(&[&(i as u32).to_be_bytes(), piece]));
        let len = piece.len();
        piece.copy_from_slice(&h[..len]);
    }
}

impl Header {
    /// The volume key when `pass` opens one of its keyslots.
    fn open_with(&self, vol: &dyn ReadAt, pass: &[u8]) -> io::Result<Option<Secret>> {
        for s in &self.slots {
            if s.stripes == 0
                || s.stripes > MAX_STRIPES
                || s.cipher_key == 0
                || s.cipher_key > MAX_KEY
            {
                continue;
            }
            let need = (self.key_len as u64 * s.stripes).div_ceil(512) * 512;
            if need > s.area_len || s.area.checked_add(need).is_none_or(|e| e > vol.size()) {
                continue;
            }
            let mut derived = Secret::zeroed(s.cipher_key);
            s.kdf.derive(pass, &mut derived)?;
            let mut material = Secret::zeroed(need as usize);
            vol.read_exact_at(s.area, &mut material)?;
            let c = match Cipher::new(&s.cipher, &derived) {
                Ok(c) => c,
                Err(e) => {
                    tracing::debug!("LUKS keyslot {}: {e}", s.name);
                    continue;
                }
            };
            for (i, sec) in material.chunks_mut(512).enumerate() {
                c.decrypt(sec, i as u64);
            }
            let key = af_merge(&material, self.key_len, s.stripes as usize, s.af_hash);
            if self.check(&key) {
                return Ok(Some(key));
            }
        }
        Ok(None)
    }

    fn check(&self, key: &[u8]) -> bool {
        let d = &self.digest;
        if d.digest.is_empty() || d.digest.len() > 64 {
            return false;
        }
        let mut out = vec![0u8; d.digest.len()];
        d.hash.pbkdf2(key, &d.salt, d.iterations, &mut out);
        out == d.digest
    }

    /// The header's identity with the key material of its keyslots: two volumes (or
    /// two recovery points) alike in these share a volume key.
    fn identity(&self, vol: &dyn ReadAt) -> io::Result<[u8; 32]> {
        let mut h = sha2::Sha256::new();
        h.update(&self.raw);
        for s in &self.slots {
            let len = s.area_len.min(1 << 20);
            if s.area.checked_add(len).is_some_and(|e| e <= vol.size()) {
                let mut b = vec![0u8; len as usize];
                vol.read_exact_at(s.area, &mut b)?;
                h.update(&b);
            }
        }
        Ok(h.finalize().into())
    }
}

/// An opened LUKS volume: its plaintext, decrypted sector by sector as it is read.
pub struct LuksVolume {
    uuid: String,
    inner: Arc<dyn ReadAt>,
    start: u64,
    len: u64,
    sector: u64,
    /// IV number of the first sector (512-byte units).
    iv_tweak: u64,
    cipher: Cipher,
}

impl LuksVolume {
    fn new(inner: Arc<dyn ReadAt>, h: &Header, key: &[u8]) -> io::Result<LuksVolume> {
        let size = inner.size();
        if h.data >= size {
            return Err(bad(format!(
                "LUKS data offset {} past the volume's end",
                h.data
            )));
        }
        let mut len = h.data_len.unwrap_or(size - h.data).min(size - h.data);
        len -= len % h.sector;
        Ok(LuksVolume {
            uuid: h.uuid.clone(),
            cipher: Cipher::new(&h.cipher, key)?,
            inner,
            start: h.data,
            len,
            sector: h.sector,
            iv_tweak: h.iv_tweak,
        })
    }

    /// The IV number of data sector `index`: dm-crypt counts 512-byte units whatever
    /// the sector size (LUKS never sets `iv_large_sectors`).
    /// The volume's UUID: what systemd and udev name its mapping by.
    pub fn uuid(&self) -> &str {
        &self.uuid
    }

    /// Where the plaintext's first byte lies in the LUKS volume: plaintext byte `p`
    /// is the ciphertext at `data_start() + p`.
    pub fn data_start(&self) -> u64 {
        self.start
    }

    /// Bytes per encrypted sector: ciphertext changes only in whole sectors.
    pub fn sector(&self) -> u64 {
        self.sector
    }

    fn iv(&self, index: u64) -> u64 {
        (index * (self.sector / 512)).wrapping_add(self.iv_tweak)
    }
}

impl ReadAt for LuksVolume {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        if offset >= self.len || buf.is_empty() {
            return Ok(0);
        }
        let n = buf.len().min((self.len - offset) as usize);
        let s = self.sector;
        let first = offset / s;
        if offset % s == 0 && n as u64 % s == 0 {
            // Whole sectors: decrypted in the caller's buffer.
            let out = &mut buf[..n];
            self.inner.read_exact_at(self.start + offset, out)?;
            for (i, sec) in out.chunks_mut(s as usize).enumerate() {
                self.cipher.decrypt(sec, self.iv(first + i as u64));
            }
            return Ok(n);
        }
        let last = (offset + n as u64 - 1) / s;
        let mut tmp = vec![0u8; ((last - first + 1) * s) as usize];
        self.inner.read_exact_at(self.start + first * s, &mut tmp)?;
        for (i, sec) in tmp.chunks_mut(s as usize).enumerate() {
            self.cipher.decrypt(sec, self.iv(first + i as u64));
        }
        let from = (offset - first * s) as usize;
        buf[..n].copy_from_slice(&tmp[from..from + n]);
        Ok(n)
    }

    fn size(&self) -> u64 {
        self.len
    }

    fn prefetch(&self, ranges: &[(u64, u64)]) {
        let moved: Vec<(u64, u64)> = ranges.iter().map(|&(o, l)| (self.start + o, l)).collect();
        self.inner.prefetch(&moved);
    }
}

/// What [`Keyring::open`] made of a volume.
pub enum Opened {
    /// No LUKS header.
    NotLuks,
    /// Opened: the plaintext volume.
    Open(Arc<LuksVolume>),
    /// LUKS, but not opened: why.
    Locked(String),
}

/// A volume key a passphrase opened.
type VolumeKey = Arc<Secret>;

/// The passphrases a user gave, and the volume keys they opened (slow KDFs run once
/// per distinct header, not once per recovery point).
#[derive(Default)]
pub struct Keyring {
    passphrases: Vec<Secret>,
    keys: Mutex<HashMap<[u8; 32], Option<VolumeKey>>>,
}

impl Keyring {
    /// A keyring trying each of `passphrases` in turn.
    pub fn new(passphrases: Vec<Secret>) -> Keyring {
        Keyring {
            passphrases,
            keys: Mutex::new(HashMap::new()),
        }
    }

    /// Opens `vol` when it is a LUKS volume one of the passphrases opens.
    pub fn open(&self, vol: &Arc<dyn ReadAt>) -> Opened {
        let h = match header(&**vol) {
            Ok(Some(h)) => h,
            Ok(None) => return Opened::NotLuks,
            // A first sector the backup could not read says nothing of what the volume
            // is: the filesystems' own backups may still tell.
            Err(e) if crate::device::is_unreadable(&e) => return Opened::NotLuks,
            Err(e) => return Opened::Locked(format!("LUKS header: {e}")),
        };
        let what = format!("LUKS{} volume {}", h.version, h.uuid);
        if self.passphrases.is_empty() {
            return Opened::Locked(format!("{what}: locked (no --key-file given)"));
        }
        let id = match h.identity(&**vol) {
            Ok(id) => id,
            Err(e) => return Opened::Locked(format!("{what}: {e}")),
        };
        // One search per identity at a time: the KDF may take seconds and much memory.
        let mut keys = self.keys.lock().unwrap();
        let key = match keys.get(&id) {
            Some(k) => k.clone(),
            None => {
                let mut found = None;
                for p in &self.passphrases {
                    match h.open_with(&**vol, p) {
                        Ok(Some(k)) => {
                            found = Some(Arc::new(k));
                            break;
                        }
                        Ok(None) => {}
                        Err(e) => return Opened::Locked(format!("{what}: {e}")),
                    }
                }
                keys.insert(id, found.clone());
                found
            }
        };
        drop(keys);
        let Some(key) = key else {
            return Opened::Locked(format!(
                "{what}: no passphrase given opens any of its keyslots"
            ));
        };
        match LuksVolume::new(vol.clone(), &h, &key) {
            Ok(v) => Opened::Open(Arc::new(v)),
            Err(e) => Opened::Locked(format!("{what}: {e}")),
        }
    }
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Keyring({} passphrases)", self.passphrases.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::readat::MemReader;

    /// A volume of `size` bytes whose LUKS2 primary header holds `json` (16 KiB
    /// header, checksummed).
    fn luks2_volume(json: &str, size: usize) -> Vec<u8> {
        let mut v = vec![0u8; size];
        let h = &mut v[..16384];
        h[..6].copy_from_slice(MAGIC1);
        h[6..8].copy_from_slice(&2u16.to_be_bytes());
        h[8..16].copy_from_slice(&16384u64.to_be_bytes());
        h[16..24].copy_from_slice(&1u64.to_be_bytes());
        h[72..78].copy_from_slice(b"sha256");
        h[168..172].copy_from_slice(b"uuid");
        h[4096..4096 + json.len()].copy_from_slice(json.as_bytes());
        let sum = sha2::Sha256::digest(&h[..]);
        h[448..480].copy_from_slice(&sum);
        v
    }

    fn json(kdf: &str, segments: &str, area_offset: u64) -> String {
        format!(
            r#"{{"keyslots":{{"0":{{"type":"luks2","key_size":64,"kdf":{kdf},
            "af":{{"type":"luks1","stripes":4000,"hash":"sha256"}},
            "area":{{"type":"raw","offset":"{area_offset}","size":"258048",
            "encryption":"aes-xts-plain64","key_size":64}}}}}},
            "segments":{segments},
            "digests":{{"0":{{"type":"pbkdf2","keyslots":["0"],"segments":["0"],
            "hash":"sha256","iterations":1000,"salt":"AAAA","digest":"AAAA"}}}}}}"#
        )
    }

    const KDF: &str = r#"{"type":"pbkdf2","hash":"sha256","iterations":1000,"salt":"AAAA"}"#;
    const SEGMENT: &str = r#"{"0":{"type":"crypt","offset":"16777216","size":"dynamic",
        "iv_tweak":"0","encryption":"aes-xts-plain64","sector_size":512}}"#;

    fn read(v: Vec<u8>) -> io::Result<Option<Header>> {
        header(&MemReader(v))
    }

    #[test]
    fn a_luks2_header_is_read_and_checked() {
        let h = read(luks2_volume(&json(KDF, SEGMENT, 32768), 1 << 20))
            .unwrap()
            .unwrap();
        assert_eq!((h.version, h.uuid.as_str(), h.data), (2, "uuid", 16 << 20));
        assert_eq!((h.key_len, h.slots.len(), h.sector), (64, 1, 512));
        let mut v = luks2_volume(&json(KDF, SEGMENT, 32768), 1 << 20);
        v[5000] ^= 1;
        let e = read(v).unwrap_err().to_string();
        assert!(e.contains("checksum"), "{e}");
        assert!(read(vec![0; 8192]).unwrap().is_none(), "no LUKS");
    }

    #[test]
    fn hostile_luks2_metadata_gives_errors() {
        let cases = [
            ("{not json", "LUKS2 metadata"),
            (&json(KDF, r#"{"0":{},"1":{}}"#, 32768), "reencryption"),
            (
                &json(
                    r#"{"type":"pbkdf2","hash":"sha256","iterations":99999999999,"salt":"AAAA"}"#,
                    SEGMENT,
                    32768,
                ),
                "out of range",
            ),
            (
                &json(
                    r#"{"type":"argon2id","time":4,"memory":99999999,"cpus":1,"salt":"AAAA"}"#,
                    SEGMENT,
                    32768,
                ),
                "out of range",
            ),
            (
                &json(KDF, SEGMENT, 32768).replace(
                    "sha256\",\"iterations\":1000,\"salt\":\"AAAA\",\"digest",
                    "md4\",\"iterations\":1000,\"salt\":\"AAAA\",\"digest",
                ),
                "not supported",
            ),
            (
                &json(KDF, &SEGMENT.replace("512}", "1000}"), 32768),
                "sector size",
            ),
        ];
        for (j, want) in cases {
            let e = read(luks2_volume(j, 1 << 20)).unwrap_err().to_string();
            assert!(e.contains(want), "{want}: {e}");
        }
    }

    #[test]
    fn key_material_out_of_the_volume_opens_nothing() {
        // The area lies past the volume's end; the data offset too.
        let v: Arc<dyn ReadAt> = Arc::new(MemReader(luks2_volume(
            &json(KDF, SEGMENT, 1 << 40),
            1 << 20,
        )));
        let ring = Keyring::new(vec![Secret::new(b"x".to_vec())]);
        match ring.open(&v) {
            Opened::Locked(why) => assert!(why.contains("no passphrase"), "{why}"),
            _ => panic!("opened"),
        }
        assert!(matches!(Keyring::default().open(&v), Opened::Locked(_)));
    }

    #[test]
    fn luks1_slots_past_their_bounds_are_skipped() {
        let mut b = vec![0u8; 1 << 20];
        b[..6].copy_from_slice(MAGIC1);
        b[6..8].copy_from_slice(&1u16.to_be_bytes());
        b[8..11].copy_from_slice(b"aes");
        b[40..51].copy_from_slice(b"xts-plain64");
        b[72..78].copy_from_slice(b"sha256");
        b[104..108].copy_from_slice(&4096u32.to_be_bytes());
        b[108..112].copy_from_slice(&64u32.to_be_bytes());
        b[164..168].copy_from_slice(&1000u32.to_be_bytes());
        let slot = &mut b[208..256];
        slot[..4].copy_from_slice(&SLOT_ACTIVE.to_be_bytes());
        slot[4..8].copy_from_slice(&1000u32.to_be_bytes());
        slot[40..44].copy_from_slice(&u32::MAX.to_be_bytes()); // key material far away
        slot[44..48].copy_from_slice(&u32::MAX.to_be_bytes()); // absurd stripes
        let v: Arc<dyn ReadAt> = Arc::new(MemReader(b));
        let h = header(&*v).unwrap().unwrap();
        assert_eq!((h.version, h.slots.len(), h.data), (1, 1, 4096 * 512));
        assert_eq!(h.open_with(&*v, b"x").unwrap(), None);
    }
}
