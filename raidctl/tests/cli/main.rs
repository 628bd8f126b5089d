//! Integration tests of the `raidctl` binary: `create`, `examine` and `demo`, checked against
//! `mdadm --examine` (which must read every member we write as correct).
//!
//! mdadm is required: tests that need it fail with a clear message when it is missing (CI
//! installs it). Every test works in its own temporary directory under cargo's target tmp dir
//! (a real filesystem, so members get O_DIRECT), removed when the test ends.

pub(crate) use common::prelude::*;

#[path = "../common/mod.rs"]
mod common;
mod create;
mod daemon_input;
mod examine;
mod refusals;

// Topic modules reach each other's helpers through the crate root.
#[allow(unused_imports)]
pub(crate) use self::{create::*, daemon_input::*, examine::*, refusals::*};

pub(crate) const MIB: u64 = 1 << 20;
/// Size of the member files the tests make themselves.
pub(crate) const MEMBER_BYTES: u64 = 64 * MIB;
/// The pattern regions of a fixture member: the first and the last MiB (the first includes the
/// md v1.2 superblock at 4096..8192; the last holds where 0.90/1.0 superblocks would be).
pub(crate) const PATTERN_BYTES: usize = MIB as usize;
/// md's superblock magic, which a pattern must never form by accident.
pub(crate) const MD_MAGIC: u32 = 0xa92b_4efc;

// ---------------------------------------------------------------------------------------------
// Running things
// ---------------------------------------------------------------------------------------------

/// Runs raidctl with `args` (logging at its default level, whatever the caller's environment).
pub(crate) fn raidctl(args: &[String]) -> Ran {
    run(raidctl_command(args))
}

pub(crate) fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|a| a.to_string()).collect()
}

/// Runs raidctl and requires exit code 0.
pub(crate) fn raidctl_ok(args: &[String]) -> Ran {
    let ran = raidctl(args);
    assert_eq!(ran.code(), Some(0), "expected success:\n{}", ran.describe());
    ran
}

pub(crate) fn raidctl_examine_text(dev: &Path) -> Examined {
    let ran = raidctl_ok(&args(&["examine", &s(dev)]));
    Examined {
        what: format!("raidctl examine {}", dev.display()),
        text: ran.stdout,
    }
}

/// The one report of `raidctl examine --json DEV`.
pub(crate) fn raidctl_examine_json(dev: &Path) -> Value {
    let ran = raidctl_ok(&args(&["examine", "--json", &s(dev)]));
    let value: Value = serde_json::from_str(&ran.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}):\n{}", ran.describe()));
    let reports = value
        .as_array()
        .unwrap_or_else(|| panic!("expected a JSON array of reports:\n{value:#}"));
    assert_eq!(reports.len(), 1, "one device, one report:\n{value:#}");
    reports[0].clone()
}

// ---------------------------------------------------------------------------------------------
// Member files and "nothing was touched"
// ---------------------------------------------------------------------------------------------

/// A temporary directory for one test, removed when dropped.
pub(crate) struct Fixture {
    pub(crate) dir: tempfile::TempDir,
}

impl Fixture {
    pub(crate) fn new() -> Fixture {
        let dir = tempfile::Builder::new()
            .prefix("raidctl-cli-")
            .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
            .expect("cannot create a temporary directory");
        Fixture { dir }
    }

    pub(crate) fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.dir().join(name)
    }

    /// A 64 MiB member file whose first and last MiB hold a pattern unique to `name`.
    pub(crate) fn member(&self, name: &str) -> PathBuf {
        self.member_of_size(name, MEMBER_BYTES)
    }

    pub(crate) fn member_of_size(&self, name: &str, bytes: u64) -> PathBuf {
        let path = self.path(name);
        let mut f = File::create(&path).expect("create member file");
        f.set_len(bytes).expect("size member file");
        let seed = name
            .bytes()
            .fold(7u64, |h, b| h.wrapping_mul(31).wrapping_add(b as u64));
        let head = pattern(seed, PATTERN_BYTES.min(bytes as usize));
        f.write_all(&head).expect("write pattern");
        if bytes >= 2 * PATTERN_BYTES as u64 {
            f.seek(SeekFrom::Start(bytes - PATTERN_BYTES as u64))
                .expect("seek");
            f.write_all(&pattern(seed ^ 0xffff, PATTERN_BYTES))
                .expect("write pattern");
        }
        f.sync_all().expect("sync member file");
        path
    }

    pub(crate) fn members(&self, names: &[&str]) -> Vec<PathBuf> {
        names.iter().map(|n| self.member(n)).collect()
    }
}

/// Bytes that are not zero, differ between seeds, and never hold md's magic at 4096.
pub(crate) fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    let mut x = seed | 1;
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&(x | 0x0101_0101_0101_0101).to_le_bytes());
    }
    out.truncate(len);
    if len >= 4100 {
        let magic = u32::from_le_bytes(out[4096..4100].try_into().expect("4 bytes"));
        assert_ne!(magic, MD_MAGIC, "the test pattern must not look like md");
    }
    out
}

/// What a file held: size, a hash of all of it, and its first and last MiB verbatim.
#[derive(Clone, PartialEq, Eq, Debug)]
pub(crate) enum Entry {
    File {
        len: u64,
        hash: u64,
        head: Vec<u8>,
        tail: Vec<u8>,
    },
    Dir,
    Other,
}

/// Everything under a directory, recursively, keyed by relative path.
pub(crate) type Snapshot = BTreeMap<String, Entry>;

pub(crate) fn snapshot(dir: &Path) -> Snapshot {
    let mut out = Snapshot::new();
    snapshot_into(dir, dir, &mut out);
    out
}

pub(crate) fn snapshot_into(root: &Path, dir: &Path, out: &mut Snapshot) {
    for entry in fs::read_dir(dir).expect("read_dir") {
        let entry = entry.expect("dir entry");
        let path = entry.path();
        let rel = s(path.strip_prefix(root).expect("under root"));
        let ft = entry.file_type().expect("file type");
        if ft.is_dir() {
            out.insert(rel, Entry::Dir);
            snapshot_into(root, &path, out);
        } else if ft.is_file() {
            out.insert(rel, file_entry(&path));
        } else {
            out.insert(rel, Entry::Other);
        }
    }
}

pub(crate) fn file_entry(path: &Path) -> Entry {
    let mut f = File::open(path).expect("open for snapshot");
    let len = f.metadata().expect("metadata").len();
    let mut hash = 0xcbf2_9ce4_8422_2325u64 ^ len;
    let mut buf = vec![0u8; 4 * MIB as usize];
    let mut head = Vec::new();
    loop {
        let n = read_full(&mut f, &mut buf);
        if n == 0 {
            break;
        }
        if head.len() < PATTERN_BYTES {
            let take = (PATTERN_BYTES - head.len()).min(n);
            head.extend_from_slice(&buf[..take]);
        }
        let mut words = buf[..n].chunks(8);
        for w in &mut words {
            let mut word = [0u8; 8];
            word[..w.len()].copy_from_slice(w);
            hash = (hash.rotate_left(23) ^ u64::from_le_bytes(word))
                .wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }
    let tail_len = (PATTERN_BYTES as u64).min(len);
    let mut tail = vec![0u8; tail_len as usize];
    f.seek(SeekFrom::Start(len - tail_len)).expect("seek");
    f.read_exact(&mut tail).expect("read tail");
    Entry::File {
        len,
        hash,
        head,
        tail,
    }
}

/// Fails with a description of every file that appeared, vanished or changed.
pub(crate) fn assert_unchanged(before: &Snapshot, after: &Snapshot, context: &str) {
    let mut problems = Vec::new();
    for (name, old) in before {
        match after.get(name) {
            None => problems.push(format!("{name} was removed")),
            Some(new) if new != old => problems.push(format!("{name} changed: {}", diff(old, new))),
            Some(_) => {}
        }
    }
    for name in after.keys().filter(|n| !before.contains_key(*n)) {
        problems.push(format!("{name} was created"));
    }
    assert!(
        problems.is_empty(),
        "{context}: the command must touch nothing, but:\n  {}",
        problems.join("\n  ")
    );
}

pub(crate) fn diff(old: &Entry, new: &Entry) -> String {
    match (old, new) {
        (
            Entry::File {
                len: l0,
                head: h0,
                tail: t0,
                ..
            },
            Entry::File {
                len: l1,
                head: h1,
                tail: t1,
                ..
            },
        ) => {
            let first = |a: &[u8], b: &[u8]| a.iter().zip(b).position(|(x, y)| x != y);
            let mut parts = Vec::new();
            if l0 != l1 {
                parts.push(format!("size {l0} -> {l1} bytes"));
            }
            if let Some(at) = first(h0, h1) {
                parts.push(format!("first MiB differs at byte {at}"));
            }
            if t0 != t1 {
                parts.push("last MiB differs".to_string());
            }
            if parts.is_empty() {
                parts.push("content differs".to_string());
            }
            parts.join(", ")
        }
        (a, b) => format!("{a:?} -> {b:?}"),
    }
}

/// Runs a command that must be refused: exit code non-zero, exactly one line on stderr that
/// contains every string of `expect`, nothing on stdout, and no file in the fixture touched.
/// Every failure message names the `case`. Returns the stderr line.
pub(crate) fn assert_refused(case: &str, fx: &Fixture, a: &[String], expect: &[&str]) -> String {
    let before = snapshot(fx.dir());
    let ran = raidctl(a);
    let after = snapshot(fx.dir());
    let what = ran.describe();
    assert!(
        ran.code().is_some_and(|c| c != 0),
        "{case}: expected a refusal (non-zero exit):\n{what}"
    );
    let line = ran.stderr.trim();
    assert!(
        !line.is_empty() && !line.contains('\n'),
        "{case}: expected exactly one line on stderr:\n{what}"
    );
    for e in expect {
        assert!(
            line.contains(e),
            "{case}: the error line should contain {e:?}:\n{what}"
        );
    }
    assert!(
        ran.stdout.is_empty(),
        "{case}: a refused command prints nothing on stdout:\n{what}"
    );
    assert_unchanged(&before, &after, &format!("{case}: raidctl {}", a.join(" ")));
    line.to_string()
}

pub(crate) fn create_args(name: &str, rest: &[&str], devices: &[PathBuf]) -> Vec<String> {
    let mut a = args(&["create", name]);
    a.extend(args(rest));
    a.extend(devices.iter().map(|d| s(d)));
    a
}
