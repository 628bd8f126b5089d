//! md's fill pattern and the comparison that names the first differing block and lines.

use crate::fixture::*;

// ---------------------------------------------------------------------------------------------
// The pattern and comparisons

/// The 4 KiB block md's pattern puts at array offset `offset`.
pub fn pattern_block(tag: &str, offset: u64) -> Vec<u8> {
    let line = format!("{tag} {offset:016}\n");
    line.bytes().cycle().take(BLOCK).collect()
}

/// A whole array of pattern blocks, the tag chosen per block offset.
pub fn pattern_array<'a>(size: u64, tag_at: impl Fn(u64) -> &'a str) -> Vec<u8> {
    let mut out = Vec::with_capacity(size as usize);
    let mut offset = 0;
    while offset < size {
        let block = pattern_block(tag_at(offset), offset);
        let n = (size - offset).min(BLOCK as u64) as usize;
        out.extend_from_slice(&block[..n]);
        offset += BLOCK as u64;
    }
    out
}

/// The bytes `offset..offset+len` of an array filled entirely with `tag`'s pattern.
pub fn pattern_range(tag: &str, offset: u64, len: usize) -> Vec<u8> {
    let first = offset / BLOCK as u64 * BLOCK as u64;
    let mut out = Vec::with_capacity(len + BLOCK * 2);
    let mut at = first;
    while at < offset + len as u64 {
        out.extend_from_slice(&pattern_block(tag, at));
        at += BLOCK as u64;
    }
    let skip = (offset - first) as usize;
    out[skip..skip + len].to_vec()
}

pub fn md5_hex(data: &[u8]) -> String {
    Md5::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The pattern line of `block` that holds byte `at` (the whole line, as text).
pub fn line_at(block: &[u8], at: usize) -> String {
    let start = block[..at]
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |p| p + 1);
    let end = block[at..]
        .iter()
        .position(|&b| b == b'\n')
        .map_or(block.len(), |p| at + p + 1);
    let line = &block[start..end.min(start + 96)];
    format!("{:?}", String::from_utf8_lossy(line))
}

/// Where a pattern line says it belongs: "TAG 0000000000123456\n" -> " (written for offset ...)"
/// when that is a block offset inside an array of `array_len` bytes (misplaced data), else "".
pub fn line_origin(block: &[u8], at: usize, array_len: usize) -> String {
    let line = line_at(block, at);
    let digits: String = line
        .trim_matches('"')
        .trim_end_matches("\\n")
        .rsplit(' ')
        .next()
        .unwrap_or("")
        .to_string();
    match digits.parse::<u64>() {
        Ok(o) if digits.len() == 16 && o % BLOCK as u64 == 0 && o < array_len as u64 => {
            format!(" (a pattern line written for array offset {o})")
        }
        _ => String::new(),
    }
}

/// Compares `found` with `expected` block by block; the error names the first differing 4 KiB
/// block's array offset and the pattern line found there versus the one expected.
pub fn compare(fixture: &str, what: &str, found: &[u8], expected: &[u8]) -> Result<(), String> {
    if found.len() != expected.len() {
        return Err(format!(
            "{fixture}: {what}: {} bytes read, {} expected",
            found.len(),
            expected.len()
        ));
    }
    let mut first = None;
    let mut differing = 0u64;
    // Runs of differing blocks, as array byte ranges (the first few).
    let mut runs: Vec<(usize, usize)> = Vec::new();
    for (i, (f, e)) in found.chunks(BLOCK).zip(expected.chunks(BLOCK)).enumerate() {
        if f != e {
            differing += 1;
            match runs.last_mut() {
                Some(run) if run.1 == i * BLOCK => run.1 += f.len(),
                _ => runs.push((i * BLOCK, i * BLOCK + f.len())),
            }
            if first.is_none() {
                let at = f.iter().zip(e).position(|(a, b)| a != b).expect("differ");
                first = Some((i * BLOCK, at, f, e));
            }
        }
    }
    let shown: Vec<String> = runs
        .iter()
        .take(8)
        .map(|(a, b)| format!("{a}..{b}"))
        .collect();
    let more = if runs.len() > 8 { ", ..." } else { "" };
    match first {
        None => Ok(()),
        Some((offset, at, f, e)) => Err(format!(
            "{fixture}: {what}: first differing 4 KiB block at array offset {offset} \
             (first differing byte at {}; {differing} of {} blocks differ, in array byte ranges \
             {}{more}): found {}{}, expected {}",
            offset + at,
            found.len().div_ceil(BLOCK),
            shown.join(", "),
            line_at(f, at),
            line_origin(f, at, found.len()),
            line_at(e, at),
        )),
    }
}

// ---------------------------------------------------------------------------------------------
// The failure report itself

#[test]
pub fn mismatch_report_names_block_and_lines() {
    let expected = pattern_array(4 * BLOCK as u64, |_| "t");
    let mut found = expected.clone();
    // Block 2 holds block 1's data, as a misplaced chunk would.
    found[2 * BLOCK..3 * BLOCK].copy_from_slice(&pattern_block("t", BLOCK as u64));
    let err = compare("fx", "content", &found, &expected).unwrap_err();
    assert!(err.starts_with("fx: content: "), "{err}");
    assert!(err.contains("array offset 8192 "), "{err}");
    assert!(err.contains("1 of 4 blocks differ"), "{err}");
    assert!(err.contains(r#"found "t 0000000000004096\n""#), "{err}");
    assert!(err.contains("written for array offset 4096"), "{err}");
    assert!(err.contains(r#"expected "t 0000000000008192\n""#), "{err}");
    assert_eq!(
        &pattern_range("t", 4096 + 512, 20)[..],
        &found[4096 + 512..4096 + 532]
    );
}
