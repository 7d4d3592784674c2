//! WOF-compressed ("Compact OS") NTFS files: data compressed with XPRESS+Huffman or
//! LZX in the `WofCompressedData` stream behind a WOF reparse point. No Linux tool
//! writes them, so these tests write them through ntfs-3g: XPRESS chunks from the
//! compressor below (an encoder independent of the product's decoder), checked also
//! by libfsntfs (a second, independent reader); LZX chunks from wimlib, whose WIM
//! resources are laid out as WOF streams are.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use rand::{rngs::StdRng, Rng, SeedableRng};

/// XPRESS+Huffman compression of one chunk (MS-XCA 2.1): greedy LZ77 matches, a
/// Huffman code built from the chunk's symbol counts (lengths 1 to 15), and the
/// stream laid out as a decoder reads it: 16-bit words reserved when it would load
/// them, match-length bytes between them.
fn xpress_compress(data: &[u8]) -> Vec<u8> {
    // Tokens: literal byte, or (length, offset).
    enum Tok {
        Lit(u8),
        Match(usize, usize),
    }
    let mut toks = Vec::new();
    // Earlier positions of each 3-byte string; the last 64 are tried.
    let mut seen: std::collections::HashMap<&[u8], Vec<usize>> = Default::default();
    let mut p = 0;
    while p < data.len() {
        let (mut best, mut best_off) = (0, 0);
        if p + 3 <= data.len() {
            for &q in seen
                .get(&data[p..p + 3])
                .into_iter()
                .flatten()
                .rev()
                .take(64)
            {
                let off = p - q;
                let mut l = 0;
                while p + l < data.len() && data[p + l] == data[p + l - off] {
                    l += 1;
                }
                if l > best {
                    (best, best_off) = (l, off);
                }
            }
        }
        let step = if best >= 3 { best } else { 1 };
        for q in p..(p + step).min(data.len().saturating_sub(2)) {
            seen.entry(&data[q..q + 3]).or_default().push(q);
        }
        if best >= 3 {
            toks.push(Tok::Match(best, best_off));
        } else {
            toks.push(Tok::Lit(data[p]));
        }
        p += step;
    }
    let sym = |t: &Tok| -> usize {
        match *t {
            Tok::Lit(b) => b as usize,
            Tok::Match(len, off) => {
                256 + (len - 3).min(15) + 16 * (usize::BITS - 1 - off.leading_zeros()) as usize
            }
        }
    };
    let mut freq = vec![0u64; 512];
    for t in &toks {
        freq[sym(t)] += 1;
    }
    if freq.iter().filter(|&&f| f > 0).count() < 2 {
        let spare = if freq[0] == 0 { 0 } else { 1 };
        freq[spare] = 1; // a code needs two symbols to be complete
    }
    let lens = huffman_lengths(&freq);
    // Canonical codes: by length, then by symbol.
    let mut codes = vec![0u32; 512];
    let mut code = 0u32;
    for l in 1..=15u8 {
        for s in 0..512 {
            if lens[s] == l {
                codes[s] = code;
                code += 1;
            }
        }
        code <<= 1;
    }
    let mut out = vec![0u8; 256];
    for s in 0..512 {
        out[s / 2] |= lens[s] << (4 * (s % 2));
    }
    // Bits in decoder order; word k of the bit stream is read at words[k].
    let mut bits: Vec<bool> = Vec::new();
    let mut words = vec![256usize, 258];
    out.extend_from_slice(&[0; 4]);
    let emit = |bits: &mut Vec<bool>, words: &mut Vec<usize>, out: &mut Vec<u8>, v: u32, n: u32| {
        for i in (0..n).rev() {
            bits.push(v >> i & 1 == 1);
        }
        // The decoder loads a word whenever fewer than 16 unread bits remain.
        while words.len() * 16 - bits.len() < 16 {
            words.push(out.len());
            out.extend_from_slice(&[0, 0]);
        }
    };
    for t in &toks {
        let s = sym(t);
        emit(&mut bits, &mut words, &mut out, codes[s], lens[s] as u32);
        if let Tok::Match(len, off) = *t {
            let l = len - 3;
            if l >= 15 {
                if l - 15 < 255 {
                    out.push((l - 15) as u8);
                } else {
                    out.push(255);
                    out.extend_from_slice(&(l as u16).to_le_bytes());
                }
            }
            let ob = usize::BITS - 1 - off.leading_zeros();
            emit(
                &mut bits,
                &mut words,
                &mut out,
                (off - (1 << ob)) as u32,
                ob,
            );
        }
    }
    for (k, &at) in words.iter().enumerate() {
        let mut w = 0u16;
        for i in 0..16 {
            if bits.get(k * 16 + i) == Some(&true) {
                w |= 1 << (15 - i);
            }
        }
        out[at..at + 2].copy_from_slice(&w.to_le_bytes());
    }
    out
}

/// Huffman code lengths (at most 15) for the symbols with a count; 0 for the rest.
fn huffman_lengths(freq: &[u64]) -> Vec<u8> {
    // Scaling the counts down flattens the tree until it fits in 15 bits.
    for shift in 0.. {
        let mut nodes: Vec<(u64, Vec<usize>)> = freq
            .iter()
            .enumerate()
            .filter(|(_, &f)| f > 0)
            .map(|(s, &f)| ((f >> shift).max(1), vec![s]))
            .collect();
        let mut lens = vec![0u8; freq.len()];
        while nodes.len() > 1 {
            nodes.sort_by_key(|n| std::cmp::Reverse(n.0));
            let (a, b) = (nodes.pop().unwrap(), nodes.pop().unwrap());
            for &s in a.1.iter().chain(&b.1) {
                lens[s] += 1;
            }
            nodes.push((a.0 + b.0, [a.1, b.1].concat()));
        }
        if lens.iter().all(|&l| l <= 15) {
            return lens;
        }
    }
    unreachable!()
}

/// The `WofCompressedData` stream for `data`: the chunk offset table (4-byte entries,
/// from the table's end, none for the first chunk), then each chunk compressed, or
/// raw where compressing does not make it smaller.
fn wof_stream(data: &[u8], chunk: usize) -> Vec<u8> {
    let chunks: Vec<Vec<u8>> = data
        .chunks(chunk)
        .map(|c| {
            let z = xpress_compress(c);
            if z.len() < c.len() {
                z
            } else {
                c.to_vec()
            }
        })
        .collect();
    let mut out = Vec::new();
    let mut at = 0u32;
    for c in &chunks[..chunks.len().saturating_sub(1)] {
        at += c.len() as u32;
        out.extend_from_slice(&at.to_le_bytes());
    }
    for c in &chunks {
        out.extend_from_slice(c);
    }
    out
}

/// The WOF reparse point: WOF version 1, file provider (2), its version 1, algorithm.
fn wof_reparse(algorithm: u32) -> Vec<u8> {
    let mut b = 0x8000_0017u32.to_le_bytes().to_vec();
    b.extend_from_slice(&16u16.to_le_bytes());
    b.extend_from_slice(&[0, 0]);
    for f in [1u32, 2, 1, algorithm] {
        b.extend_from_slice(&f.to_le_bytes());
    }
    b
}

/// Writes `data` at `path` as Windows' `compact /exe:ALG` leaves it: the named stream,
/// a sparse unnamed stream of the data's size, the reparse point last.
fn write_wof(path: &Path, data: &[u8], algorithm: u32, stream: &[u8]) {
    let f = std::fs::File::create(path).unwrap();
    f.set_len(data.len() as u64).unwrap();
    drop(f);
    let named = format!("{}:WofCompressedData", path.display());
    std::fs::write(named, stream).unwrap();
    set_xattr(path, "system.ntfs_reparse_data", &wof_reparse(algorithm));
}

struct Case {
    name: &'static str,
    data: Vec<u8>,
    algorithm: u32,
}

/// Log-like lines ("event N user V ok") up to at least `len` bytes: text that
/// compresses as real logs do.
fn log_text(rng: &mut StdRng, len: usize) -> Vec<u8> {
    let mut text = Vec::new();
    while text.len() < len {
        let v: u32 = rng.gen_range(0..5000);
        text.extend_from_slice(format!("event {} user {v} ok\n", text.len() % 977).as_bytes());
    }
    text
}

/// MB/s of reading a file of `len` bytes whole through `tree`, 1 MiB at a time.
fn tree_read_mbps(tree: &dyn disksafe::ntfs_ext::FsTree, ino: u64, len: u64) -> f64 {
    let mut b = vec![0u8; 1 << 20];
    let t0 = std::time::Instant::now();
    let mut at = 0u64;
    while at < len {
        at += tree.read(ino, at, &mut b).unwrap() as u64;
    }
    len as f64 / t0.elapsed().as_secs_f64() / 1e6
}

/// The median of a benchmark's passes.
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn cases(rng: &mut StdRng) -> Vec<Case> {
    let text = log_text(rng, 100_000);
    // Random stretches (stored raw), runs and repeats (long matches, long lengths).
    let mut mixed = vec![0u8; 70_000];
    rng.fill(&mut mixed[..20_000]);
    for (i, b) in mixed[20_000..40_000].iter_mut().enumerate() {
        *b = (i % 7) as u8;
    }
    let copy = mixed[..5000].to_vec();
    mixed[45_000..50_000].copy_from_slice(&copy);
    let mut exe = Vec::new();
    while exe.len() < 300_001 {
        let op: u8 = rng.gen_range(0..6);
        exe.extend_from_slice(&[0x48, 0x89, op, 0x24, rng.gen(), 0, 0, 0, 0xE8]);
    }
    vec![
        Case {
            name: "text.log",
            data: text,
            algorithm: 0,
        },
        Case {
            name: "mixed.bin",
            data: mixed,
            algorithm: 2,
        },
        Case {
            name: "program.exe",
            data: exe,
            algorithm: 3,
        },
        Case {
            name: "tiny",
            data: b"tiny file".to_vec(),
            algorithm: 0,
        },
        Case {
            name: "empty",
            data: Vec::new(),
            algorithm: 0,
        },
    ]
}

#[test]
fn wof_compressed_files_read_as_their_source() {
    if !ntfs_tools() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let mut rng = StdRng::seed_from_u64(17);
    let cases = cases(&mut rng);
    assert!(
        wof_stream(&cases[0].data, 4096).len() < cases[0].data.len() / 2,
        "the text compresses (its chunks are XPRESS, not stored raw)"
    );
    let img = t.path().join("wof.img");
    make_ntfs(&img, 32 << 20, 512, 4096, |m| {
        for c in &cases {
            let chunk = [4096, 32768, 8192, 16384][c.algorithm as usize];
            write_wof(
                &m.join(c.name),
                &c.data,
                c.algorithm,
                &wof_stream(&c.data, chunk),
            );
        }
        // An algorithm WOF does not define: listed, its reads fail.
        write_wof(&m.join("unknown.bin"), &[7u8; 5000], 9, &[0u8; 100]);
    });
    let tree = open_image_tree(&img);
    for c in &cases {
        let ino = tree
            .lookup(tree.root(), c.name.as_bytes())
            .unwrap()
            .unwrap();
        assert_eq!(
            tree.stat(ino).unwrap().size,
            c.data.len() as u64,
            "{}",
            c.name
        );
        // Whole, then in pieces that cut chunks anywhere.
        let mut whole = vec![0u8; c.data.len() + 10];
        let n = tree.read(ino, 0, &mut whole).unwrap();
        assert!(
            whole[..n] == c.data[..],
            "{} differs from its source",
            c.name
        );
        let mut at = 0;
        while at < c.data.len() {
            let mut b = vec![0u8; rng.gen_range(1..20_000)];
            let n = tree.read(ino, at as u64, &mut b).unwrap();
            assert!(n > 0 && b[..n] == c.data[at..at + n], "{} at {at}", c.name);
            at += n;
        }
    }
    // The compressed stream is not listed as an xattr of a decoded file (as Windows
    // hides it), yet reads as FILE:WofCompressedData; an undecodable file lists it.
    let text = tree.lookup(tree.root(), b"text.log").unwrap().unwrap();
    let names = tree.xattrs(text).unwrap();
    assert!(
        !names.iter().any(|(n, _)| n == b"user.WofCompressedData"),
        "listed: {:?}",
        names
            .iter()
            .map(|(n, _)| String::from_utf8_lossy(n))
            .collect::<Vec<_>>()
    );
    let raw = tree
        .lookup(tree.root(), b"text.log:WofCompressedData")
        .unwrap()
        .expect("FILE:WofCompressedData looks the stream up");
    let want = wof_stream(&cases[0].data, 4096);
    let mut got = vec![0u8; want.len() + 1];
    let n = tree.read(raw, 0, &mut got).unwrap();
    assert!(
        got[..n] == want[..],
        "the compressed stream reads as written"
    );
    let unknown = tree.lookup(tree.root(), b"unknown.bin").unwrap().unwrap();
    assert!(tree
        .xattrs(unknown)
        .unwrap()
        .iter()
        .any(|(n, _)| n == b"user.WofCompressedData"));
    let e = tree.read(unknown, 0, &mut [0u8; 100]).unwrap_err();
    assert!(e.to_string().contains("unknown algorithm"), "{e}");

    drop(tree);

    // Readahead of a WOF file asks for the chunks of the range and their table
    // entries: every device range that reading the range then reads.
    let (offset, len) = (50_000, 120_000);
    let (asked, reads) = prefetch_asks_then_reads(&img, b"program.exe", offset, len);
    assert_reads_asked(&asked, &reads);
    let total: u64 = asked.iter().map(|r| r.1).sum();
    assert!(total <= len + (64 << 10), "{total} bytes asked for");

    // The second reader: libfsntfs decodes the same files to the same bytes, so the
    // compressor above writes what Windows' readers read.
    let script = r"
import hashlib, sys, pyfsntfs
v = pyfsntfs.volume()
v.open(sys.argv[1])
for name in sys.argv[2:]:
    e = v.get_file_entry_by_path('\\' + name)
    data = e.read() if e.get_size() else b''
    print(name, hashlib.sha256(data).hexdigest())
";
    let out = Command::new("/usr/bin/python3")
        .args(["-c", script])
        .arg(&img)
        .args(cases.iter().map(|c| c.name))
        .output();
    let out = match out {
        Ok(o) if o.status.success() => String::from_utf8(o.stdout).unwrap(),
        Ok(o) if String::from_utf8_lossy(&o.stderr).contains("No module named 'pyfsntfs'") => {
            eprintln!("SKIP second reader: pyfsntfs (package python3-libfsntfs) is not installed");
            return;
        }
        Ok(o) => panic!("pyfsntfs: {}", String::from_utf8_lossy(&o.stderr)),
        Err(e) => {
            eprintln!("SKIP second reader: no /usr/bin/python3 ({e})");
            return;
        }
    };
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), cases.len(), "{out}");
    for (line, c) in lines.iter().zip(&cases) {
        assert_eq!(
            *line,
            format!("{} {}", c.name, sha256(&c.data)),
            "libfsntfs reads {} differently",
            c.name
        );
    }
}

/// Compressed streams per file, and the WIM they came from.
type Streams = (Vec<Vec<u8>>, Vec<u8>);

/// The compressed streams wimlib writes for `files` (name, data) with LZX in 32 KiB
/// chunks at compression `level`, by name: each file's WIM resource, a chunk table
/// then chunks (raw where LZX does not shrink them), is what a WOF stream holds. The
/// WIM is parsed here from its header and blob table; files are told apart by size.
/// Returns them and the WIM; `None` where wimlib-imagex is not installed.
fn wimlib_lzx_streams(files: &[(&str, Vec<u8>)], level: u32) -> Option<Streams> {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    std::fs::create_dir(&src).unwrap();
    for (name, data) in files {
        std::fs::write(src.join(name), data).unwrap();
    }
    let wim = t.path().join("lzx.wim");
    let out = match Command::new("wimlib-imagex")
        .arg("capture")
        .arg(&src)
        .arg(&wim)
        .arg(format!("--compress=LZX:{level}"))
        .arg("--chunk-size=32K")
        .output()
    {
        Ok(o) => o,
        Err(_) => return None,
    };
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let w = std::fs::read(&wim).unwrap();
    let u32_at = |b: &[u8], o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
    let u64_at = |b: &[u8], o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap());
    assert_eq!(&w[..8], b"MSWIM\0\0\0");
    assert_eq!(u32_at(&w, 20), 32768, "chunk size");
    // A resource header: 7-byte stored size, flags, offset, original size.
    let reshdr = |b: &[u8], o: usize| {
        let stored = u64_at(b, o) & ((1 << 56) - 1);
        (stored, b[o + 7], u64_at(b, o + 8), u64_at(b, o + 16))
    };
    let (tsize, tflags, toff, _) = reshdr(&w, 48);
    assert_eq!(tflags & 4, 0, "the blob table is stored uncompressed");
    let table = &w[toff as usize..(toff + tsize) as usize];
    let streams = files
        .iter()
        .map(|(name, data)| {
            let e = table
                .chunks_exact(50)
                .map(|e| reshdr(e, 0))
                .find(|&(_, flags, _, orig)| orig == data.len() as u64 && flags & 2 == 0)
                .unwrap_or_else(|| panic!("no resource for {name}"));
            assert_eq!(e.1 & 0x10, 0, "{name}: not in a solid resource");
            w[e.2 as usize..(e.2 + e.0) as usize].to_vec()
        })
        .collect();
    Some((streams, w))
}

/// LZX WOF files (`compact /exe:lzx`) read as their source, whole and in pieces that
/// cut chunks anywhere: text, x86 code whose call operands the compressor translated,
/// random stretches and runs, a single full chunk, one byte past it, a tiny file;
/// compressed by wimlib at two levels (its faster and its slower parser).
#[test]
fn lzx_wof_files_read_as_their_source() {
    if !ntfs_tools() {
        return;
    }
    let mut rng = StdRng::seed_from_u64(29);
    let mut text = Vec::new();
    while text.len() < 150_000 {
        let v: u32 = rng.gen_range(0..5000);
        text.extend_from_slice(format!("row {} value {v} done\n", text.len() % 613).as_bytes());
    }
    // Code-like bytes: CALLs (0xE8 + rel32) to a few targets, which the x86 call
    // translation turns into repeated absolute operands.
    let mut code = Vec::new();
    let targets: Vec<i32> = (0..12).map(|_| rng.gen_range(0..200_000)).collect();
    while code.len() < 200_000 {
        let at = code.len() as i32;
        let t = targets[rng.gen_range(0..targets.len())];
        code.extend_from_slice(&[0x48, 0x8B, rng.gen_range(0..8), 0xE8]);
        code.extend_from_slice(&(t - (at + 8)).to_le_bytes());
        code.extend_from_slice(&[0x90, 0xC3][..rng.gen_range(0..3)]);
    }
    let mut mixed = vec![0u8; 90_001];
    rng.fill(&mut mixed[..30_000]);
    for (i, b) in mixed[30_000..60_000].iter_mut().enumerate() {
        *b = (i / 3 % 11) as u8;
    }
    let copy = mixed[5_000..25_000].to_vec();
    mixed[65_000..85_000].copy_from_slice(&copy);
    let one: Vec<u8> = text[..32768].iter().rev().copied().collect();
    let mut past = text[1000..33769].to_vec();
    past[32768] = b'!';
    let files = vec![
        ("text.log", text),
        ("code.dll", code),
        ("mixed.bin", mixed),
        ("one-chunk", one),
        ("one-past", past),
        ("tiny", b"small file".to_vec()),
    ];
    let t = tempfile::tempdir().unwrap();
    for level in [20, 100] {
        let Some((streams, _)) = wimlib_lzx_streams(&files, level) else {
            eprintln!("SKIP: wimlib-imagex (package wimtools) is not installed");
            return;
        };
        assert!(
            streams[0].len() < files[0].1.len() / 3,
            "the text is LZX-compressed, not stored raw"
        );
        let img = t.path().join(format!("lzx{level}.img"));
        make_ntfs(&img, 32 << 20, 512, 4096, |m| {
            for ((name, data), stream) in files.iter().zip(&streams) {
                write_wof(&m.join(name), data, 1, stream);
            }
        });
        let tree = open_image_tree(&img);
        for (name, data) in &files {
            let ino = tree.lookup(tree.root(), name.as_bytes()).unwrap().unwrap();
            assert_eq!(tree.stat(ino).unwrap().size, data.len() as u64, "{name}");
            let mut whole = vec![0u8; data.len() + 10];
            let n = tree.read(ino, 0, &mut whole).unwrap();
            assert!(
                whole[..n] == data[..],
                "{name} (level {level}) differs from its source"
            );
            let mut at = 0;
            while at < data.len() {
                let mut b = vec![0u8; rng.gen_range(1..50_000)];
                let n = tree.read(ino, at as u64, &mut b).unwrap();
                assert!(n > 0 && b[..n] == data[at..at + n], "{name} at {at}");
                at += n;
            }
        }
        drop(tree);
        // Readahead asks for what reading an LZX file's range reads.
        let (asked, reads) = prefetch_asks_then_reads(&img, b"code.dll", 40_000, 100_000);
        assert_reads_asked(&asked, &reads);
    }
}

/// Damage in a WOF file's chunk table or in one chunk fails the reads that need it,
/// with an error naming the chunk, and no other: the chunks before it still read.
#[test]
fn damaged_wof_chunks_fail_alone() {
    if !ntfs_tools() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let data: Vec<u8> = (0..12_000u32).map(|i| (i % 251) as u8).collect();
    let good = wof_stream(&data, 4096);
    // Three chunks: table entries at 0 and 4 (starts of chunks 1 and 2).
    let mut far = good.clone();
    far[4..8].copy_from_slice(&0xFFFF_FF00u32.to_le_bytes());
    // Chunk 1 compressed but its Huffman table gutted (no longer a complete code).
    let c1 = u32::from_le_bytes(good[0..4].try_into().unwrap()) as usize + 8;
    let c2 = u32::from_le_bytes(good[4..8].try_into().unwrap()) as usize + 8;
    assert!(c2 - c1 < 4096, "chunk 1 is compressed");
    let mut gutted = good.clone();
    gutted[c1..c1 + 256].fill(0);
    let img = t.path().join("bad.img");
    make_ntfs(&img, 16 << 20, 512, 4096, |m| {
        write_wof(&m.join("far"), &data, 0, &far);
        write_wof(&m.join("gutted"), &data, 0, &gutted);
    });
    let tree = open_image_tree(&img);
    for (name, bad) in [("far", 1), ("gutted", 1)] {
        let ino = tree.lookup(tree.root(), name.as_bytes()).unwrap().unwrap();
        let mut b = vec![0u8; 4096];
        assert_eq!(tree.read(ino, 0, &mut b).unwrap(), 4096, "{name}: chunk 0");
        assert!(b == data[..4096], "{name}: chunk 0 reads as its source");
        let e = tree.read(ino, 4096 * bad, &mut b).unwrap_err();
        assert!(e.to_string().contains("chunk 1"), "{name}: {e}");
        // A read spanning the good chunk and the bad one fails as a whole.
        assert!(tree.read(ino, 100, &mut vec![0u8; 8000]).is_err(), "{name}");
    }
    // The far entry also ends chunk 1 where chunk 2 cannot begin: chunk 2 fails too;
    // the gutted file's chunk 2 is intact.
    let far_ino = tree.lookup(tree.root(), b"far").unwrap().unwrap();
    assert!(tree.read(far_ino, 8192, &mut [0u8; 100]).is_err());
    let gutted_ino = tree.lookup(tree.root(), b"gutted").unwrap().unwrap();
    let mut b = vec![0u8; 12_000 - 8192];
    assert_eq!(tree.read(gutted_ino, 8192, &mut b).unwrap(), b.len());
    assert!(b == data[8192..]);
}

/// Benchmark (run with `cargo test --release --test ntfs_wof -- --ignored --nocapture`):
/// reading a 1 MiB XPRESS4K WOF file of log text from an image in the page cache,
/// through this crate's tree in 1 MiB reads and through libfsntfs (its Python
/// binding, the peer; the interpreter's start is not timed), 15 passes each,
/// alternated; prints the median MB/s of each and the ratio.
#[test]
#[ignore]
fn bench_wof_read_vs_libfsntfs() {
    if !ntfs_tools() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let mut rng = StdRng::seed_from_u64(5);
    // 1 MiB: libfsntfs 20200921 (Debian 12) fails on WOF files of 2 MiB and more
    // ("invalid compressed block offset: 1 value out of bounds") that this crate and
    // the format's description read; WOF_BENCH_MIB=N tries others.
    let mib: usize = std::env::var("WOF_BENCH_MIB").map_or(1, |v| v.parse().unwrap());
    let mut data = log_text(&mut rng, mib << 20);
    data.truncate(mib << 20);
    let stream = wof_stream(&data, 4096);
    let img = t.path().join("bench.img");
    make_ntfs(&img, 96 << 20, 512, 4096, |m| {
        write_wof(&m.join("big"), &data, 0, &stream)
    });
    let tree = open_image_tree(&img);
    let ino = tree.lookup(tree.root(), b"big").unwrap().unwrap();
    let script = r"
import sys, time, pyfsntfs
v = pyfsntfs.volume()
v.open(sys.argv[1])
e = v.get_file_entry_by_path('\\big')
t = time.monotonic()
n = 0
while True:
    b = e.read(1 << 20)
    if not b:
        break
    n += len(b)
print(n, time.monotonic() - t)
";
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for _ in 0..15 {
        ours.push(tree_read_mbps(&*tree, ino, data.len() as u64));
        let o = Command::new("/usr/bin/python3")
            .args(["-c", script])
            .arg(&img)
            .output()
            .expect("/usr/bin/python3 with pyfsntfs (python3-libfsntfs)");
        let out = String::from_utf8_lossy(&o.stdout);
        let f: Vec<f64> = out
            .split_whitespace()
            .filter_map(|w| w.parse().ok())
            .collect();
        assert!(
            f.len() == 2 && f[0] as usize == data.len(),
            "pyfsntfs: {out} {}",
            String::from_utf8_lossy(&o.stderr)
        );
        theirs.push(f[0] / f[1] / 1e6);
    }
    let (o, t) = (median(ours), median(theirs));
    eprintln!(
        "WOF XPRESS4K read, {mib} MiB: disksafe {o:.0} MB/s, libfsntfs {t:.0} MB/s, ratio {:.2}",
        o / t
    );
}

/// LZX WOF reads against wimlib, the only other LZX decoder on this machine, decoding
/// the same chunks: `wimlib-imagex extract --to-stdout` of the file from the WIM whose
/// resource is the WOF stream (its time includes starting the process and opening
/// the WIM, under 5 ms against the ~55 ms of the read). Run with `cargo test --release
/// --test ntfs_wof -- --ignored --nocapture`.
#[test]
#[ignore]
fn bench_wof_lzx_read_vs_wimlib() {
    if !ntfs_tools() {
        return;
    }
    let mut rng = StdRng::seed_from_u64(6);
    let mib: usize = std::env::var("WOF_BENCH_MIB").map_or(16, |v| v.parse().unwrap());
    let mut data = log_text(&mut rng, mib << 20);
    data.truncate(mib << 20);
    let Some((mut streams, w)) = wimlib_lzx_streams(&[("big", data.clone())], 50) else {
        eprintln!("SKIP: wimlib-imagex (package wimtools) is not installed");
        return;
    };
    let stream = streams.remove(0);
    let t = tempfile::tempdir().unwrap();
    let wim = t.path().join("big.wim");
    std::fs::write(&wim, w).unwrap();
    let img = t.path().join("bench.img");
    make_ntfs(&img, (mib as u64 + 32) << 20, 512, 4096, |m| {
        write_wof(&m.join("big"), &data, 1, &stream)
    });
    let tree = open_image_tree(&img);
    let ino = tree.lookup(tree.root(), b"big").unwrap().unwrap();
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for _ in 0..11 {
        ours.push(tree_read_mbps(&*tree, ino, data.len() as u64));
        let t0 = std::time::Instant::now();
        let o = Command::new("wimlib-imagex")
            .arg("extract")
            .arg(&wim)
            .args(["1", "/big", "--to-stdout"])
            .output()
            .unwrap();
        let secs = t0.elapsed().as_secs_f64();
        assert!(
            o.status.success() && o.stdout == data,
            "wimlib-imagex extract"
        );
        theirs.push(data.len() as f64 / secs / 1e6);
    }
    let (o, w) = (median(ours), median(theirs));
    eprintln!(
        "WOF LZX read, {mib} MiB: disksafe {o:.0} MB/s, wimlib {w:.0} MB/s, ratio {:.2}",
        o / w
    );
}
