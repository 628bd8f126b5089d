//! Integration tests of the `raidctl` binary: `create`, `examine` and `demo`, checked against
//! `mdadm --examine` (which must read every member we write as correct).
//!
//! mdadm is required: tests that need it fail with a clear message when it is missing (CI
//! installs it). Every test works in its own temporary directory under cargo's target tmp dir
//! (a real filesystem, so members get O_DIRECT), removed when the test ends.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde_json::Value;

mod common;
use common::array::{Array, Spec};
use common::examine::{mdadm_examine, Examined};
use common::files::read_full;
use common::process::{cmd, raidctl_command, run, Ran};
use common::s;
use common::tools::require;

const MIB: u64 = 1 << 20;
/// Size of the member files the tests make themselves.
const MEMBER_BYTES: u64 = 64 * MIB;
/// The pattern regions of a fixture member: the first and the last MiB (the first includes the
/// md v1.2 superblock at 4096..8192; the last holds where 0.90/1.0 superblocks would be).
const PATTERN_BYTES: usize = MIB as usize;
/// md's superblock magic, which a pattern must never form by accident.
const MD_MAGIC: u32 = 0xa92b_4efc;

// ---------------------------------------------------------------------------------------------
// Running things
// ---------------------------------------------------------------------------------------------

/// Runs raidctl with `args` (logging at its default level, whatever the caller's environment).
fn raidctl(args: &[String]) -> Ran {
    run(raidctl_command(args))
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|a| a.to_string()).collect()
}

/// Runs raidctl and requires exit code 0.
fn raidctl_ok(args: &[String]) -> Ran {
    let ran = raidctl(args);
    assert_eq!(ran.code(), Some(0), "expected success:\n{}", ran.describe());
    ran
}

fn raidctl_examine_text(dev: &Path) -> Examined {
    let ran = raidctl_ok(&args(&["examine", &s(dev)]));
    Examined {
        what: format!("raidctl examine {}", dev.display()),
        text: ran.stdout,
    }
}

/// The one report of `raidctl examine --json DEV`.
fn raidctl_examine_json(dev: &Path) -> Value {
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
struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::Builder::new()
            .prefix("raidctl-cli-")
            .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
            .expect("cannot create a temporary directory");
        Fixture { dir }
    }

    fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir().join(name)
    }

    /// A 64 MiB member file whose first and last MiB hold a pattern unique to `name`.
    fn member(&self, name: &str) -> PathBuf {
        self.member_of_size(name, MEMBER_BYTES)
    }

    fn member_of_size(&self, name: &str, bytes: u64) -> PathBuf {
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

    fn members(&self, names: &[&str]) -> Vec<PathBuf> {
        names.iter().map(|n| self.member(n)).collect()
    }
}

/// Bytes that are not zero, differ between seeds, and never hold md's magic at 4096.
fn pattern(seed: u64, len: usize) -> Vec<u8> {
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
enum Entry {
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
type Snapshot = BTreeMap<String, Entry>;

fn snapshot(dir: &Path) -> Snapshot {
    let mut out = Snapshot::new();
    snapshot_into(dir, dir, &mut out);
    out
}

fn snapshot_into(root: &Path, dir: &Path, out: &mut Snapshot) {
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

fn file_entry(path: &Path) -> Entry {
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
fn assert_unchanged(before: &Snapshot, after: &Snapshot, context: &str) {
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

fn diff(old: &Entry, new: &Entry) -> String {
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
fn assert_refused(case: &str, fx: &Fixture, a: &[String], expect: &[&str]) -> String {
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

fn create_args(name: &str, rest: &[&str], devices: &[PathBuf]) -> Vec<String> {
    let mut a = args(&["create", name]);
    a.extend(args(rest));
    a.extend(devices.iter().map(|d| s(d)));
    a
}

// ---------------------------------------------------------------------------------------------
// 1. Creating every level, read back by mdadm and by raidctl examine
// ---------------------------------------------------------------------------------------------

struct Case {
    name: &'static str,
    level: &'static str,
    layout: Option<&'static str>,
    members: usize,
    spares: usize,
    md_level: &'static str,
    /// mdadm's Layout line; None when mdadm prints none (RAID1).
    md_layout: Option<&'static str>,
    /// Whether mdadm shows a chunk size (not for RAID1).
    chunk: bool,
}

/// Creates the array of `case` on new 64M files and checks every member (and spare) with
/// mdadm and with both forms of `raidctl examine`. Returns the fixture and the devices.
fn create_and_check(case: &Case) -> (Fixture, Vec<PathBuf>) {
    let fx = Fixture::new();
    let members: Vec<PathBuf> = (0..case.members)
        .map(|i| fx.path(&format!("d{i}.img")))
        .collect();
    let spares: Vec<PathBuf> = (0..case.spares)
        .map(|i| fx.path(&format!("spare{i}.img")))
        .collect();
    let mut rest = vec!["--level", case.level];
    if let Some(l) = case.layout {
        rest.extend(["--layout", l]);
    }
    rest.extend(["--chunk", "64K", "--size", "64M"]);
    let spare_args: Vec<String> = spares.iter().map(|p| s(p)).collect();
    let mut a = args(&["create", case.name]);
    a.extend(args(&rest));
    for sp in &spare_args {
        a.push("--spare".into());
        a.push(sp.clone());
    }
    a.extend(members.iter().map(|d| s(d)));
    let stdout = raidctl_ok(&a).stdout;
    let printed_uuid = stdout
        .lines()
        .next()
        .and_then(|l| l.rsplit("UUID ").next())
        .unwrap_or_default()
        .trim()
        .to_string();

    let all: Vec<(PathBuf, Option<usize>)> = members
        .iter()
        .enumerate()
        .map(|(i, p)| (p.clone(), Some(i)))
        .chain(spares.iter().map(|p| (p.clone(), None)))
        .collect();
    let mut uuids = Vec::new();
    for (dev, slot) in &all {
        assert_eq!(
            fs::metadata(dev).expect("member file exists").len(),
            MEMBER_BYTES,
            "{} was created with --size 64M",
            dev.display()
        );
        let md = mdadm_examine(dev);
        md.assert_checksum_correct();
        assert_eq!(md.get("Version"), "1.2", "{}", md.what);
        assert_eq!(md.get("Raid Level"), case.md_level, "{}", md.what);
        assert_eq!(
            md.get("Raid Devices"),
            case.members.to_string(),
            "{}",
            md.what
        );
        match case.md_layout {
            Some(l) => assert_eq!(md.get("Layout"), l, "{}", md.what),
            None => assert!(!md.has("Layout"), "{}: no layout expected", md.what),
        }
        if case.chunk {
            assert_eq!(md.get("Chunk Size"), "64K", "{}", md.what);
        } else {
            assert!(
                !md.has("Chunk Size"),
                "{}: RAID1 has no chunk:\n{}",
                md.what,
                md.text
            );
        }
        let role = match slot {
            Some(k) => format!("Active device {k}"),
            None => "spare".to_string(),
        };
        assert_eq!(md.get("Device Role"), role, "{}", md.what);
        assert_eq!(md.array_state(), "A".repeat(case.members), "{}", md.what);
        let name = md.get("Name").split_whitespace().next().unwrap_or_default();
        assert!(
            name == case.name || name.ends_with(&format!(":{}", case.name)),
            "{}: Name {name:?} should be {:?} or HOST:{}",
            md.what,
            case.name,
            case.name
        );
        let uuid = md.get("Array UUID").to_string();
        assert_eq!(
            uuid, printed_uuid,
            "create printed a different UUID:\n{stdout}"
        );
        uuids.push(uuid.clone());

        // raidctl examine --json agrees with mdadm.
        let j = raidctl_examine_json(dev);
        assert_eq!(j["device"], s(dev), "{j:#}");
        assert_eq!(j["array_uuid"], uuid.as_str(), "{j:#}");
        let events: u64 = md.get("Events").parse().expect("Events is a number");
        assert_eq!(j["events"], events, "{j:#}");
        assert_eq!(j["raid_devices"], case.members as u64, "{j:#}");
        if case.chunk {
            let kib = j["chunk_size_kib"]
                .as_u64()
                .unwrap_or_else(|| panic!("chunk_size_kib missing: {j:#}"));
            assert_eq!(format!("{kib}K"), md.get("Chunk Size"), "{j:#}");
        } else {
            assert!(j["chunk_size_kib"].is_null(), "{j:#}");
        }
        assert_eq!(j["device_role"], md.get("Device Role"), "{j:#}");
        assert_eq!(j["array_state"], md.array_state(), "{j:#}");
        assert_eq!(j["checksum_ok"], true, "{j:#}");

        // raidctl examine (text) prints mdadm's Array UUID line.
        let text = raidctl_examine_text(dev);
        assert_eq!(
            text.line("Array UUID"),
            md.line("Array UUID"),
            "{}\n---\n{}",
            text.text,
            md.text
        );
    }
    assert!(
        uuids.iter().all(|u| *u == uuids[0]),
        "members disagree on the Array UUID: {uuids:?}"
    );
    let mut devices = members;
    devices.extend(spares);
    (fx, devices)
}

#[test]
fn create_raid0_four_members() {
    create_and_check(&Case {
        name: "r0",
        level: "0",
        layout: None,
        members: 4,
        spares: 0,
        md_level: "raid0",
        md_layout: Some("original"),
        chunk: true,
    });
}

#[test]
fn create_raid1_two_members() {
    create_and_check(&Case {
        name: "r1",
        level: "1",
        layout: None,
        members: 2,
        spares: 0,
        md_level: "raid1",
        md_layout: None,
        chunk: false,
    });
}

#[test]
fn create_raid5_default_layout_with_spare() {
    create_and_check(&Case {
        name: "r5",
        level: "5",
        layout: None,
        members: 4,
        spares: 1,
        md_level: "raid5",
        md_layout: Some("left-symmetric"),
        chunk: true,
    });
}

#[test]
fn create_raid5_right_asymmetric() {
    create_and_check(&Case {
        name: "r5-ra",
        level: "5",
        layout: Some("right-asymmetric"),
        members: 3,
        spares: 0,
        md_level: "raid5",
        md_layout: Some("right-asymmetric"),
        chunk: true,
    });
}

#[test]
fn create_raid10_default_near2() {
    create_and_check(&Case {
        name: "r10",
        level: "10",
        layout: None,
        members: 4,
        spares: 0,
        md_level: "raid10",
        md_layout: Some("near=2"),
        chunk: true,
    });
}

#[test]
fn create_raid10_far2() {
    create_and_check(&Case {
        name: "r10-f2",
        level: "10",
        layout: Some("f2"),
        members: 4,
        spares: 0,
        md_level: "raid10",
        md_layout: Some("far=2"),
        chunk: true,
    });
}

#[test]
fn create_raid10_offset2_three_members() {
    create_and_check(&Case {
        name: "r10-o2",
        level: "10",
        layout: Some("o2"),
        members: 3,
        spares: 0,
        md_level: "raid10",
        md_layout: Some("offset=2"),
        chunk: true,
    });
}

// ---------------------------------------------------------------------------------------------
// 2. The internal bitmap
// ---------------------------------------------------------------------------------------------

/// Creates RAID5 `name` on three new 64M files with `flags`, then hands every member's
/// `mdadm --examine` (its checksum correct) and `raidctl examine --json` to `check`.
fn create_raid5_and_examine(name: &str, flags: &[&str], check: impl Fn(&Examined, &Value)) {
    let fx = Fixture::new();
    let devs: Vec<PathBuf> = (0..3).map(|i| fx.path(&format!("b{i}.img"))).collect();
    let mut rest = vec!["--level", "5", "--chunk", "64K", "--size", "64M"];
    rest.extend_from_slice(flags);
    raidctl_ok(&create_args(name, &rest, &devs));
    for d in &devs {
        let md = mdadm_examine(d);
        md.assert_checksum_correct();
        check(&md, &raidctl_examine_json(d));
    }
}

#[test]
fn raid5_has_internal_bitmap_by_default() {
    create_raid5_and_examine("bm", &[], |md, j| {
        assert_eq!(
            md.get("Internal Bitmap"),
            "8 sectors from superblock",
            "{}",
            md.what
        );
        assert_eq!(j["internal_bitmap_offset_sectors"], 8, "{j:#}");
    });
}

#[test]
fn raid5_with_bitmap_none_has_no_bitmap() {
    create_raid5_and_examine("nobm", &["--bitmap", "none"], |md, j| {
        assert!(
            !md.has("Internal Bitmap"),
            "{}: --bitmap none, yet:\n{}",
            md.what,
            md.text
        );
        assert!(j["internal_bitmap_offset_sectors"].is_null(), "{j:#}");
    });
}

#[test]
fn bitmap_chunk_is_honoured_and_mdadm_reads_it() {
    let fx = Fixture::new();
    let devs = fx.members(&["a", "b", "c"]);
    raidctl_ok(&create_args(
        "x",
        &["--level", "5", "--bitmap-chunk", "1M"],
        &devs,
    ));
    let ex = raidctl_examine_json(&devs[0]);
    assert_eq!(ex["bitmap"]["chunk_bytes"], 1 << 20, "{ex:#}");
    // mdadm reads the bitmap of a block device: put the member on a loop device.
    let member = s(&devs[0]);
    let ran = run(cmd(
        "losetup",
        &["--find", "--show", "--read-only", &member],
    ));
    assert!(ran.success(), "losetup: {}", ran.describe());
    let dev = ran.stdout.trim().to_string();
    let text = run(cmd(require("mdadm", "mdadm"), &["-X", &dev])).stdout;
    let _ = run(cmd("losetup", &["-d", &dev]));
    assert!(text.contains("Chunksize : 1 MB"), "mdadm -X:\n{text}");
}

#[test]
fn refuses_a_cache_larger_than_half_the_memory() {
    let (fx, devs) = pattern_members(3);
    raidctl_ok(&create_args("x", &["--level", "5"], &devs));
    let run = s(&fx.dir().join("run"));
    let assemble_with_cache = |size: &str| {
        let mut a = args(&["--run-dir", &run, "assemble", "x", "--cache-size", size]);
        a.extend(devs.iter().map(|d| s(d)));
        a
    };
    let a = assemble_with_cache("64T");
    assert_refused("--cache-size 64T", &fx, &a, &["--cache-size 64T", "memory"]);
    let a = assemble_with_cache("12Q");
    assert_refused("--cache-size 12Q", &fx, &a, &["--cache-size 12Q"]);
}

// ---------------------------------------------------------------------------------------------
// 3. Bad input: refused with one line, nothing touched
// ---------------------------------------------------------------------------------------------

/// Three (or `n`) 64 MiB pattern members in a fresh fixture.
fn pattern_members(n: usize) -> (Fixture, Vec<PathBuf>) {
    let fx = Fixture::new();
    let names: Vec<String> = (0..n).map(|i| format!("m{i}.img")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let devs = fx.members(&refs);
    (fx, devs)
}

/// One `raidctl create` that must be refused (see [`assert_refused`]), on a fresh fixture of
/// 64 MiB pattern members (DIR/m0.img, DIR/m1.img, ...). In the arguments, "{members}" stands
/// for every member's path and "{dir}" for the fixture's directory (in what the error line
/// must contain too).
struct Refusal(
    /// The case: the test this row was before the table, named in every failure message.
    &'static str,
    /// How many pattern members the fixture holds.
    usize,
    /// The arguments after `create`.
    &'static [&'static str],
    /// What the error line must contain.
    &'static [&'static str],
);

impl Refusal {
    fn check(&self) {
        let Refusal(case, members, arguments, expect) = *self;
        let (fx, devs) = pattern_members(members);
        let dir = s(fx.dir());
        let mut a = args(&["create"]);
        for arg in arguments {
            match *arg {
                "{members}" => a.extend(devs.iter().map(|d| s(d))),
                arg => a.push(arg.replace("{dir}", &dir)),
            }
        }
        let expect: Vec<String> = expect.iter().map(|e| e.replace("{dir}", &dir)).collect();
        let expect: Vec<&str> = expect.iter().map(String::as_str).collect();
        assert_refused(case, &fx, &a, &expect);
    }
}

/// An array name of 40 characters, longer than md's 32.
const LONG_NAME: &str = "nnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnn";

/// Refusals of `create`, one a line: (case, members, arguments, what the error line contains).
#[rustfmt::skip]
const CREATE_REFUSALS: &[Refusal] = &[
    Refusal("raid0_with_internal_bitmap_is_refused", 2, &["x", "--level", "0", "--bitmap", "internal", "{members}"], &["RAID0", "--bitmap internal"]),
    Refusal("refuses_bad_bitmap_chunks (3K)", 3, &["x", "--level", "5", "--bitmap-chunk", "3K", "{members}"], &["--bitmap-chunk", "3K"]),
    Refusal("refuses_bad_bitmap_chunks (1K)", 3, &["x", "--level", "5", "--bitmap-chunk", "1K", "{members}"], &["--bitmap-chunk", "1K"]),
    Refusal("refuses_bad_bitmap_chunks (4G)", 3, &["x", "--level", "5", "--bitmap-chunk", "4G", "{members}"], &["--bitmap-chunk", "4G"]),
    Refusal("refuses_bad_bitmap_chunks (lots)", 3, &["x", "--level", "5", "--bitmap-chunk", "lots", "{members}"], &["--bitmap-chunk", "lots"]),
    Refusal("refuses_bad_bitmap_chunks (no bitmap)", 3, &["x", "--level", "5", "--bitmap", "none", "--bitmap-chunk", "1M", "{members}"], &["--bitmap-chunk needs a bitmap"]),
    Refusal("refuses_level_7", 3, &["x", "--level", "7", "{members}"], &["unknown RAID level", "7"]),
    Refusal("refuses_raid6_with_three_members", 3, &["x", "--level", "6", "{members}"], &["RAID6", "at least 4"]),
    Refusal("refuses_unknown_raid6_layout", 4, &["x", "--level", "6", "--layout", "diagonal", "{members}"], &["RAID6 layout", "diagonal", "-6"]),
    Refusal("refuses_bad_chunk_sizes (3K)", 3, &["x", "--level", "5", "--chunk", "3K", "{members}"], &["chunk size", "3K"]),
    Refusal("refuses_bad_chunk_sizes (1000)", 3, &["x", "--level", "5", "--chunk", "1000", "{members}"], &["chunk size", "1000"]),
    Refusal("refuses_bad_chunk_sizes (0)", 3, &["x", "--level", "5", "--chunk", "0", "{members}"], &["chunk size", "0"]),
    Refusal("refuses_raid5_with_two_members", 2, &["x", "--level", "5", "{members}"], &["RAID5", "at least 3"]),
    Refusal("refuses_raid1_with_one_member", 1, &["x", "--level", "1", "{members}"], &["RAID1", "at least 2"]),
    Refusal("refuses_raid10_f3_with_two_members", 2, &["x", "--level", "10", "--layout", "f3", "{members}"], &["RAID10", "3 copies"]),
    Refusal("refuses_unknown_raid5_layout", 3, &["x", "--level", "5", "--layout", "diagonal", "{members}"], &["layout", "diagonal"]),
    Refusal("refuses_layout_for_raid1", 2, &["x", "--level", "1", "--layout", "n2", "{members}"], &["--layout", "RAID5, RAID6 and RAID10"]),
    Refusal("refuses_member_given_twice", 3, &["x", "--level", "5", "{members}", "{dir}/m1.img"], &["{dir}/m1.img", "twice"]),
    // The same file under another spelling, and a member repeated as a spare.
    Refusal("refuses_member_given_twice (spelt otherwise)", 3, &["x", "--level", "5", "{members}", "{dir}/./m0.img"], &["twice"]),
    Refusal("refuses_member_given_twice (as a spare)", 3, &["x", "--level", "5", "--spare", "{dir}/m2.img", "{members}"], &["twice"]),
    // Bad input with `--size` larger than the existing members: the refusal must not grow them
    // (cmd_create.rs promises "Bad input touches nothing").
    Refusal("refused_create_with_size_does_not_grow_members", 3, &["x", "--level", "5", "--size", "128M", "{dir}/m0.img", "{dir}/m1.img", "{dir}/m0.img"], &["twice"]),
    // Without --size a missing member is named and not created (no file of the fixture changes).
    Refusal("refuses_missing_member_without_size_and_does_not_create_it", 2, &["x", "--level", "5", "{members}", "{dir}/missing.img"], &["{dir}/missing.img", "does not exist"]),
    Refusal("refuses_nonsense_size", 2, &["x", "--level", "5", "--size", "12Q", "{members}", "{dir}/new.img"], &["size", "12Q"]),
    Refusal("refuses_invalid_array_names (bad/name)", 3, &["bad/name", "--level", "5", "{members}"], &["invalid array name"]),
    Refusal("refuses_invalid_array_names (empty)", 3, &["", "--level", "5", "{members}"], &["invalid array name"]),
    Refusal("refuses_invalid_array_names (40 characters)", 3, &[LONG_NAME, "--level", "5", "{members}"], &["invalid array name"]),
    Refusal("refuses_raid0_with_spare", 3, &["x", "--level", "0", "--spare", "{dir}/m2.img", "{dir}/m0.img", "{dir}/m1.img"], &["RAID0", "spare"]),
];

/// Each of [`CREATE_REFUSALS`] is refused with one line, touching no file.
#[test]
fn create_refuses_bad_input_and_touches_nothing() {
    assert_eq!(LONG_NAME.len(), 40);
    for refusal in CREATE_REFUSALS {
        refusal.check();
    }
}

#[test]
fn refuses_directory_as_member() {
    let (fx, mut devs) = pattern_members(2);
    let dir = fx.path("subdir");
    fs::create_dir(&dir).expect("mkdir");
    devs.push(dir.clone());
    assert_refused(
        "a directory",
        &fx,
        &create_args("x", &["--level", "5"], &devs),
        &[&s(&dir), "not a regular file"],
    );
    // With --size too: it only creates or extends regular files.
    assert_refused(
        "a directory with --size",
        &fx,
        &create_args("x", &["--level", "5", "--size", "64M"], &devs),
        &[&s(&dir)],
    );
}

#[test]
fn refuses_members_that_are_too_small() {
    // New files of 1M: refused, and none is left behind.
    let fx = Fixture::new();
    let new: Vec<PathBuf> = (0..3).map(|i| fx.path(&format!("n{i}.img"))).collect();
    assert_refused(
        "new 1M files",
        &fx,
        &create_args("x", &["--level", "5", "--size", "1M"], &new),
        &["too small"],
    );
    for p in &new {
        assert!(!p.exists(), "{} was left behind", p.display());
    }
    // Existing 1 MiB files with data: refused and unchanged.
    let old: Vec<PathBuf> = (0..3)
        .map(|i| fx.member_of_size(&format!("o{i}.img"), MIB))
        .collect();
    assert_refused(
        "1 MiB files with data",
        &fx,
        &create_args("x", &["--level", "5", "--size", "1M"], &old),
        &["too small"],
    );
    assert_refused(
        "1 MiB files as RAID1",
        &fx,
        &create_args("x", &["--level", "1"], &old[..2]),
        &["too small"],
    );
}

/// Three 64 MiB pattern members of an array "first" (RAID5), in a fresh fixture.
fn members_of_first() -> (Fixture, Vec<PathBuf>) {
    let (fx, devs) = pattern_members(3);
    raidctl_ok(&create_args(
        "first",
        &["--level", "5", "--chunk", "64K"],
        &devs,
    ));
    (fx, devs)
}

#[test]
fn refuses_member_of_another_array_without_force() {
    let (fx, devs) = members_of_first();
    let first_uuid = mdadm_examine(&devs[0]).get("Array UUID").to_string();

    // Every spelling of the refusal keeps the first array's members byte for byte.
    let line = assert_refused(
        "members of another array",
        &fx,
        &create_args("second", &["--level", "5"], &devs),
        &["already belongs", "--force"],
    );
    assert!(
        line.contains(&first_uuid) || line.contains("first"),
        "the refusal should name the array: {line}"
    );
    let mut reordered = devs.clone();
    reordered.reverse();
    assert_refused(
        "reordered, as RAID1",
        &fx,
        &create_args("second", &["--level", "1"], &reordered[..2]),
        &["already belongs", "--force"],
    );
    for d in &devs {
        let md = mdadm_examine(d);
        md.assert_checksum_correct();
        assert_eq!(md.get("Array UUID"), first_uuid);
    }

    // With --force it succeeds and the members carry the new array.
    raidctl_ok(&create_args(
        "second",
        &["--level", "5", "--chunk", "64K", "--force"],
        &devs,
    ));
    let mut second = Vec::new();
    for (k, d) in devs.iter().enumerate() {
        let md = mdadm_examine(d);
        md.assert_checksum_correct();
        assert_ne!(md.get("Array UUID"), first_uuid, "{}", md.what);
        assert_eq!(md.get("Device Role"), format!("Active device {k}"));
        let name = md.get("Name").split_whitespace().next().unwrap_or_default();
        assert!(name == "second" || name.ends_with(":second"), "{name}");
        second.push(md.get("Array UUID").to_string());
    }
    assert!(second.iter().all(|u| *u == second[0]), "{second:?}");
}

/// A refusal with `--size` larger than the existing members must not grow them (see
/// refused_create_with_size_does_not_grow_members), also when it is "already belongs to
/// another array".
#[test]
fn refused_create_on_foreign_members_with_size_does_not_grow_them() {
    let (fx, devs) = members_of_first();
    assert_refused(
        "foreign members with --size",
        &fx,
        &create_args("second", &["--level", "5", "--size", "128M"], &devs),
        &["already belongs", "--force"],
    );
}

// ---------------------------------------------------------------------------------------------
// 4. examine on things that are not members
// ---------------------------------------------------------------------------------------------

#[test]
fn examine_zeroed_file_says_no_superblock() {
    let fx = Fixture::new();
    let zero = fx.path("zero.img");
    File::create(&zero)
        .and_then(|f| f.set_len(MEMBER_BYTES))
        .expect("zero file");
    let a = args(&["examine", &s(&zero)]);
    let before = snapshot(fx.dir());
    let ran = raidctl(&a);
    assert_unchanged(&before, &snapshot(fx.dir()), "raidctl examine");
    assert_eq!(ran.code(), Some(1), "{}", ran.describe());
    let line = ran.stderr.trim();
    assert!(!line.contains('\n'), "one line:\n{}", ran.describe());
    assert!(
        line.contains("no md superblock on") && line.contains(&s(&zero)),
        "{}",
        ran.describe()
    );
    assert_eq!(line, format!("raidctl: no md superblock on {}", s(&zero)));
}

#[test]
fn examine_nonexistent_path_names_it() {
    let fx = Fixture::new();
    let missing = fx.path("nothing-here.img");
    let a = args(&["examine", &s(&missing)]);
    let ran = raidctl(&a);
    assert!(ran.code().is_some_and(|c| c != 0), "{}", ran.describe());
    let line = ran.stderr.trim();
    assert!(
        !line.is_empty() && !line.contains('\n'),
        "one line:\n{}",
        ran.describe()
    );
    assert!(line.contains(&s(&missing)), "{}", ran.describe());
    assert!(!missing.exists(), "examine must not create the path");
}

// ---------------------------------------------------------------------------------------------
// 5. Exclusive claims
// ---------------------------------------------------------------------------------------------

#[test]
fn create_refuses_member_locked_by_another_process() {
    let (fx, devs) = pattern_members(3);
    let held = File::options()
        .read(true)
        .write(true)
        .open(&devs[1])
        .expect("open member");
    held.try_lock()
        .expect("the test takes an exclusive flock on the member");
    let pid = format!("pid {}", std::process::id());
    assert_refused(
        "a member locked by another process",
        &fx,
        &create_args("x", &["--level", "5"], &devs),
        &[&s(&devs[1]), "is in use by", &pid],
    );
    // Once the lock is released the same command works: the refusal was the claim.
    held.unlock().expect("unlock");
    drop(held);
    raidctl_ok(&create_args("x", &["--level", "5"], &devs));
    mdadm_examine(&devs[1]).assert_checksum_correct();
}

// ---------------------------------------------------------------------------------------------
// 6. The demo
// ---------------------------------------------------------------------------------------------

#[test]
fn demo_leaves_md_readable_members() {
    let fx = Fixture::new();
    let dir = fx.path("demo");
    let a = args(&["demo", "--dir", &s(&dir)]);
    let ran = raidctl_ok(&a);
    assert!(ran.stdout.contains("verified"), "{}", ran.describe());

    let m0 = mdadm_examine(dir.join("m0.img"));
    m0.assert_checksum_correct();
    assert_eq!(m0.get("State"), "clean", "{}", m0.text);
    assert_eq!(m0.get("Raid Level"), "raid5");
    assert_eq!(m0.get("Device Role"), "Active device 0");
    // Slot 2 failed and the hot spare was rebuilt into it: every slot is claimed again.
    assert_eq!(m0.array_state(), "AAAA", "{}", m0.text);
    let events: u64 = m0.get("Events").parse().expect("events");

    // The surviving members and the former spare agree with m0; the spare now holds slot 2.
    for other in ["m1.img", "m3.img", "spare.img"] {
        let md = mdadm_examine(dir.join(other));
        md.assert_checksum_correct();
        assert_eq!(md.get("Array UUID"), m0.get("Array UUID"), "{}", md.what);
        assert_eq!(md.get("Events"), m0.get("Events"), "{}", md.what);
        assert_eq!(md.array_state(), "AAAA", "{}", md.text);
    }
    let spare = mdadm_examine(dir.join("spare.img"));
    assert_eq!(
        spare.get("Device Role"),
        "Active device 2",
        "{}",
        spare.text
    );
    assert!(
        !spare.text.contains("Recovery Offset"),
        "the rebuild finished: {}",
        spare.text
    );

    // The failed member is still examinable: its own (older) superblock is left as it was.
    let m2 = mdadm_examine(dir.join("m2.img"));
    m2.assert_checksum_correct();
    assert_eq!(m2.get("Array UUID"), m0.get("Array UUID"));
    assert_eq!(m2.get("Device Role"), "Active device 2", "{}", m2.text);
    let m2_events: u64 = m2.get("Events").parse().expect("events");
    assert!(
        m2_events < events,
        "the failed member must be behind: m2 {m2_events}, m0 {events}"
    );

    // raidctl examine reads the same state.
    let text = raidctl_examine_text(&dir.join("m0.img"));
    assert_eq!(text.array_state(), "AAAA", "{}", text.text);
    assert_eq!(text.get("State"), "clean", "{}", text.text);
    let j = raidctl_examine_json(&dir.join("m0.img"));
    assert_eq!(j["array_state"], "AAAA", "{j:#}");
    assert_eq!(j["events"], events, "{j:#}");
    assert_eq!(j["state"], "clean", "{j:#}");
}

/// A run directory outside the fixture, so the refusal checks see member files only.
fn run_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("raidctl-cli-run-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("cannot create a run directory")
}

#[test]
fn assemble_refuses_bad_input_and_touches_no_member() {
    let (fx, devs) = pattern_members(3);
    let other = [
        fx.member("n0.img"),
        fx.member("n1.img"),
        fx.member("n2.img"),
    ];
    raidctl_ok(&create_args(
        "a1",
        &["--level", "5", "--chunk", "64K"],
        &devs,
    ));
    raidctl_ok(&create_args(
        "a2",
        &["--level", "5", "--chunk", "64K"],
        &other,
    ));
    let run = run_dir();
    let run_arg = s(run.path());
    let assemble = |rest: &[String]| {
        let mut a = args(&["--run-dir", &run_arg, "assemble", "a1"]);
        a.extend(rest.iter().cloned());
        a
    };
    let dev = |p: &PathBuf| s(p);
    assert_refused(
        "no members",
        &fx,
        &assemble(&[]),
        &["no member devices given"],
    );
    let all: Vec<String> = devs.iter().map(dev).collect();
    let mut bad_listen = all.clone();
    bad_listen.extend(args(&["--listen", "tcp:nonsense"]));
    assert_refused(
        "a bad --listen",
        &fx,
        &assemble(&bad_listen),
        &["invalid --listen", "tcp:nonsense"],
    );
    let missing = s(&fx.path("missing.img"));
    assert_refused(
        "a missing member",
        &fx,
        &assemble(&[all[0].clone(), all[1].clone(), missing.clone()]),
        &[&missing],
    );
    // Members of two arrays: the foreign one is named.
    let foreign = dev(&other[0]);
    assert_refused(
        "a foreign member",
        &fx,
        &assemble(&[all[0].clone(), all[1].clone(), foreign.clone()]),
        &["belongs to array", &foreign],
    );
    // Degraded without --run is refused and says how to insist.
    assert_refused(
        "degraded without --run",
        &fx,
        &assemble(&[all[0].clone(), all[1].clone()]),
        &["degraded", "--run"],
    );
    // No daemon was left behind by any of these.
    let ran = raidctl(&args(&["--run-dir", &run_arg, "status", "--json"]));
    assert!(ran.success(), "{}", ran.describe());
    assert_eq!(ran.stdout.trim(), "[]");
}

#[test]
fn management_verbs_refuse_bad_input_in_one_line() {
    let (fx, devs) = pattern_members(3);
    let run = run_dir();
    let r = s(run.path());
    let d0 = s(&devs[0]);
    // Not running: every verb says so, naming the array and how to start it.
    for verb in [
        vec!["fail", "ghost", &d0],
        vec!["remove", "ghost", &d0],
        vec!["add", "ghost", &d0],
        vec!["rebuild", "ghost"],
        vec!["check", "ghost"],
        vec!["attach", "ghost"],
        vec!["detach", "ghost"],
        vec!["stop", "ghost"],
        vec!["status", "ghost"],
        vec!["inject", "ghost", &d0, "--vanish"],
        vec!["replace", "ghost", &d0, "--with", &d0],
        vec!["monitor", "ghost"],
    ] {
        let mut a = args(&["--run-dir", &r]);
        a.extend(args(&verb));
        let case = format!("{} while not running", verb[0]);
        assert_refused(
            &case,
            &fx,
            &a,
            &["ghost", "not running", "raidctl assemble ghost"],
        );
    }
    // Bad arguments are reported before the daemon is asked anything.
    let a = args(&[
        "--run-dir",
        &r,
        "inject",
        "ghost",
        &d0,
        "--read-error",
        "--offset",
        "12Q",
        "--length",
        "4K",
    ]);
    assert_refused("inject with a bad size", &fx, &a, &["invalid size", "12Q"]);
}

#[test]
fn the_control_socket_answers_garbage_with_an_error_and_keeps_serving() {
    use std::io::{BufRead, BufReader, Write as _};
    let mut h = Array::create(Spec::new("cs", "5", 3));
    h.assemble();
    let ctl = h.run_dir.join("cs.ctl");
    let stream = std::os::unix::net::UnixStream::connect(&ctl).expect("control socket");
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    for bad in [
        "this is not json",
        "{\"cmd\":\"make_coffee\"}",
        "{\"cmd\":\"fail\"}",
        "[1,2,3]",
    ] {
        (&stream).write_all(format!("{bad}\n").as_bytes()).unwrap();
        let mut line = String::new();
        reader.read_line(&mut line).expect("an answer");
        let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{bad}: {e}: {line}"));
        assert_eq!(v["ok"], false, "{bad}: {line}");
        assert!(
            v["error"]
                .as_str()
                .is_some_and(|e| e.contains("bad request") && !e.contains('\n')),
            "{bad}: {line}"
        );
    }
    // The same connection still works, and so does the CLI.
    (&stream).write_all(b"{\"cmd\":\"status\"}\n").unwrap();
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert!(
        line.contains("\"ok\":true") && line.contains("\"name\":\"cs\""),
        "{line}"
    );
    // A drill on something that is not a member names the members.
    let ghost = s(&h.path("not-a-member.img"));
    let ran = h.raidctl(&["inject", "cs", &ghost, "--vanish"]);
    let err = &ran.stderr;
    assert!(
        !ran.success() && err.contains("not a member") && err.trim().lines().count() == 1,
        "{err}"
    );
    let ran = h.raidctl(&["status", "cs", "--json"]);
    assert!(ran.success(), "the daemon is still up");
}

/// The exit status the README documents: 0 success, 1 a refused or failed command (one line on
/// stderr), 2 a usage error (clap's message).
#[test]
fn exit_status_is_0_on_success_1_on_failure_2_on_bad_usage() {
    let fx = Fixture::new();
    let ok = raidctl(&args(&["--help"]));
    assert_eq!(ok.code(), Some(0), "{}", ok.describe());
    let usage = raidctl(&args(&["create", "--no-such-flag"]));
    assert_eq!(usage.code(), Some(2), "{}", usage.describe());
    let missing = fx.path("absent.img");
    let failed = raidctl(&args(&["examine", &s(&missing)]));
    assert_eq!(failed.code(), Some(1), "{}", failed.describe());
    assert_eq!(
        failed.stderr.trim().lines().count(),
        1,
        "{}",
        failed.describe()
    );
}
