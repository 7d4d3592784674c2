//! Code page 437, which 8.3 names use for bytes above 0x7F (Linux's default
//! `codepage=437`).

/// Bytes 0x80..=0xFF of code page 437.
const HIGH: [char; 128] = [
    'Ç', 'ü', 'é', 'â', 'ä', 'à', 'å', 'ç', 'ê', 'ë', 'è', 'ï', 'î', 'ì', 'Ä', 'Å', //
    'É', 'æ', 'Æ', 'ô', 'ö', 'ò', 'û', 'ù', 'ÿ', 'Ö', 'Ü', '¢', '£', '¥', '₧', 'ƒ', //
    'á', 'í', 'ó', 'ú', 'ñ', 'Ñ', 'ª', 'º', '¿', '⌐', '¬', '½', '¼', '¡', '«', '»', //
    '░', '▒', '▓', '│', '┤', '╡', '╢', '╖', '╕', '╣', '║', '╗', '╝', '╜', '╛', '┐', //
    '└', '┴', '┬', '├', '─', '┼', '╞', '╟', '╚', '╔', '╩', '╦', '╠', '═', '╬', '╧', //
    '╨', '╤', '╥', '╙', '╘', '╒', '╓', '╫', '╪', '┘', '┌', '█', '▄', '▌', '▐', '▀', //
    'α', 'ß', 'Γ', 'π', 'Σ', 'σ', 'µ', 'τ', 'Φ', 'Θ', 'Ω', 'δ', '∞', 'φ', 'ε', '∩', //
    '≡', '±', '≥', '≤', '⌠', '⌡', '÷', '≈', '°', '∙', '·', '√', 'ⁿ', '²', '■', '\u{a0}',
];

/// The character a byte of an 8.3 name stands for; `/` and NUL, never valid there but
/// possible in a damaged entry, become the stand-ins the NTFS names use.
pub fn to_char(b: u8) -> char {
    match b {
        0 => crate::ntfs_ext::ntfs::names::NUL_STAND_IN,
        b'/' => crate::ntfs_ext::ntfs::names::SLASH_STAND_IN,
        0x80.. => HIGH[(b - 0x80) as usize],
        _ => b as char,
    }
}

/// The lower-case form of a code page 437 character where the code page has one
/// (`Ü` → `ü`, not `Γ`), as Linux's cp437 table lowers 8.3 names flagged lower-case.
pub fn to_lower(c: char) -> char {
    let mut l = c.to_lowercase();
    match (l.next(), l.next()) {
        (Some(low), None) if low.is_ascii() || HIGH.contains(&low) => low,
        _ => c,
    }
}
