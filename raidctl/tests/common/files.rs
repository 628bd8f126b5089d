//! Data files of a test: seeded random contents, byte-exact comparisons, sha256 sums.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::process::{Command, Stdio};

use super::rng::Rng;

const MIB: u64 = 1 << 20;

/// Writes `len` bytes of seeded random data to `path` (created or truncated), with the
/// `zeroes` ranges (offset, length) zeroed, and syncs it.
pub fn fill_random(path: &Path, len: u64, seed: u64, zeroes: &[(u64, u64)]) {
    let mut rng = Rng::new(seed);
    let mut f = File::create(path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    let mut buf = vec![0u8; MIB as usize];
    let mut at = 0;
    while at < len {
        let n = (len - at).min(MIB) as usize;
        rng.fill(&mut buf[..n]);
        for &(off, zlen) in zeroes {
            let (from, to) = (off.max(at), (off + zlen).min(at + n as u64));
            if from < to {
                buf[(from - at) as usize..(to - at) as usize].fill(0);
            }
        }
        f.write_all(&buf[..n])
            .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        at += n as u64;
    }
    f.sync_all().expect("sync the data file");
}

/// Reads until `buf` is full or the file ends; returns how much it read.
pub fn read_full(f: &mut File, buf: &mut [u8]) -> usize {
    let mut done = 0;
    while done < buf.len() {
        match f.read(&mut buf[done..]) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) => panic!("read: {e}"),
        }
    }
    done
}

/// Panics unless `actual` holds what `expected` holds in `start..end`, saying how many bytes
/// differ and where (a file that ends before `end` differs).
pub fn assert_same_range(expected: &Path, actual: &Path, start: u64, end: u64, context: &str) {
    let open = |p: &Path| File::open(p).unwrap_or_else(|e| panic!("open {}: {e}", p.display()));
    let (mut fa, mut fb) = (open(expected), open(actual));
    let lens = (len_of(&fa), len_of(&fb));
    assert!(
        lens.0 >= end && lens.1 >= end,
        "{context}: {} has {} bytes and {} has {} bytes, expected at least {end}",
        expected.display(),
        lens.0,
        actual.display(),
        lens.1
    );
    fa.seek(SeekFrom::Start(start)).expect("seek");
    fb.seek(SeekFrom::Start(start)).expect("seek");
    let (mut ba, mut bb) = (vec![0u8; MIB as usize], vec![0u8; MIB as usize]);
    let mut diff = Difference::default();
    let mut at = start;
    while at < end {
        let n = (end - at).min(MIB) as usize;
        read_full(&mut fa, &mut ba[..n]);
        read_full(&mut fb, &mut bb[..n]);
        diff.scan(at, &ba[..n], &bb[..n]);
        at += n as u64;
    }
    if let Some((first, want, got)) = diff.first {
        panic!(
            "{context}: {} differs from {}: {} bytes between offsets {first} and {} \
             (first: {got:#04x}, expected {want:#04x}; compared {start}..{end})",
            actual.display(),
            expected.display(),
            diff.count,
            diff.last
        );
    }
}

fn len_of(f: &File) -> u64 {
    f.metadata().expect("metadata").len()
}

/// Where two byte ranges differ: the first difference (offset, expected, actual), the last
/// offset and the count.
#[derive(Default)]
struct Difference {
    first: Option<(u64, u8, u8)>,
    last: u64,
    count: u64,
}

impl Difference {
    fn scan(&mut self, at: u64, expected: &[u8], actual: &[u8]) {
        for (i, (a, b)) in expected.iter().zip(actual).enumerate() {
            if a != b {
                let offset = at + i as u64;
                self.first.get_or_insert((offset, *a, *b));
                self.last = offset;
                self.count += 1;
            }
        }
    }
}

/// The sha256 of `data`, in hex (sha256sum reads it on stdin).
pub fn sha256_of(data: &[u8]) -> String {
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot run sha256sum (coreutils)");
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(data)
        .expect("write to sha256sum");
    let out = child.wait_with_output().expect("sha256sum");
    assert!(out.status.success(), "sha256sum failed: {out:?}");
    let text = String::from_utf8(out.stdout).expect("UTF-8");
    let hash = text
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string();
    assert_eq!(hash.len(), 64, "odd sha256sum output {text:?}");
    hash
}
