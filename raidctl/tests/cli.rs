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
use std::process::{Command, Output};

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

fn s(p: &Path) -> String {
    p.to_str().expect("temporary paths are UTF-8").to_string()
}

/// Runs raidctl with `args` (logging at its default level, whatever the caller's environment).
fn raidctl(args: &[String]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_raidctl"))
        .args(args)
        .env_remove("RAIDCTL_LOG")
        .output()
        .expect("cannot run the raidctl binary")
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|a| a.to_string()).collect()
}

fn describe(args: &[String], out: &Output) -> String {
    format!(
        "raidctl {}\n  status: {:?}\n  stdout: {}\n  stderr: {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs raidctl and requires exit code 0.
fn raidctl_ok(args: &[String]) -> Output {
    let out = raidctl(args);
    assert_eq!(
        out.status.code(),
        Some(0),
        "expected success:\n{}",
        describe(args, &out)
    );
    out
}

/// Where mdadm is; panics (never skips) when it is not installed.
fn mdadm_bin() -> PathBuf {
    let mut candidates: Vec<PathBuf> = ["/usr/sbin/mdadm", "/sbin/mdadm"]
        .iter()
        .map(PathBuf::from)
        .collect();
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path).map(|d| d.join("mdadm")));
    }
    candidates
        .into_iter()
        .find(|c| c.is_file())
        .unwrap_or_else(|| {
            panic!(
                "mdadm is not installed (looked in /usr/sbin, /sbin and $PATH): these tests compare \
                 raidctl's metadata with `mdadm --examine`; install it (apt-get install mdadm)"
            )
        })
}

/// "label : value" lines, as mdadm (and `raidctl examine`) print them: labels right-aligned
/// with leading spaces, a " : " separator. The first occurrence of a label wins.
fn parse_fields(text: &str) -> BTreeMap<String, String> {
    let mut map = BTreeMap::new();
    for line in text.lines() {
        if let Some((label, value)) = line.split_once(" : ") {
            map.entry(label.trim().to_string())
                .or_insert_with(|| value.trim().to_string());
        }
    }
    map
}

/// One device's examine output, text and fields.
struct Examined {
    what: String,
    text: String,
    fields: BTreeMap<String, String>,
}

impl Examined {
    fn new(what: String, text: String) -> Examined {
        let fields = parse_fields(&text);
        Examined { what, text, fields }
    }

    fn get(&self, label: &str) -> &str {
        self.fields
            .get(label)
            .map(String::as_str)
            .unwrap_or_else(|| {
                panic!(
                    "{}: no {label:?} line in the output:\n{}",
                    self.what, self.text
                )
            })
    }

    fn has(&self, label: &str) -> bool {
        self.fields.contains_key(label)
    }

    /// The "Array State" slots, without mdadm's legend.
    fn array_state(&self) -> &str {
        self.get("Array State")
            .split_whitespace()
            .next()
            .unwrap_or_default()
    }

    /// The whole line carrying `label`, leading spaces included.
    fn line(&self, label: &str) -> &str {
        self.text
            .lines()
            .find(|l| {
                l.split_once(" : ")
                    .is_some_and(|(left, _)| left.trim() == label)
            })
            .unwrap_or_else(|| panic!("{}: no {label:?} line:\n{}", self.what, self.text))
    }

    /// Asserts "Checksum : <hex> - correct".
    fn assert_checksum_correct(&self) {
        let value = self.get("Checksum");
        let (hex, verdict) = value
            .split_once(" - ")
            .unwrap_or_else(|| panic!("{}: odd Checksum value {value:?}", self.what));
        assert!(
            !hex.is_empty() && u32::from_str_radix(hex, 16).is_ok(),
            "{}: checksum {hex:?} is not hex",
            self.what
        );
        assert_eq!(
            verdict, "correct",
            "{}: checksum not correct:\n{}",
            self.what, self.text
        );
    }
}

fn mdadm_examine(dev: &Path) -> Examined {
    let out = Command::new(mdadm_bin())
        .arg("--examine")
        .arg(dev)
        .output()
        .expect("cannot run mdadm");
    assert!(
        out.status.success(),
        "mdadm --examine {} failed ({:?}):\n{}{}",
        dev.display(),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Examined::new(
        format!("mdadm --examine {}", dev.display()),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn raidctl_examine_text(dev: &Path) -> Examined {
    let out = raidctl_ok(&args(&["examine", &s(dev)]));
    Examined::new(
        format!("raidctl examine {}", dev.display()),
        String::from_utf8(out.stdout).expect("UTF-8 output"),
    )
}

/// The one report of `raidctl examine --json DEV`.
fn raidctl_examine_json(dev: &Path) -> serde_json::Value {
    let a = args(&["examine", "--json", &s(dev)]);
    let out = raidctl_ok(&a);
    let value: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}):\n{}", describe(&a, &out)));
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

fn read_full(f: &mut File, buf: &mut [u8]) -> usize {
    let mut done = 0;
    while done < buf.len() {
        match f.read(&mut buf[done..]).expect("read") {
            0 => break,
            n => done += n,
        }
    }
    done
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
/// Returns the stderr line.
fn assert_refused(fx: &Fixture, a: &[String], expect: &[&str]) -> String {
    let before = snapshot(fx.dir());
    let out = raidctl(a);
    let after = snapshot(fx.dir());
    let what = describe(a, &out);
    assert!(
        out.status.code().is_some_and(|c| c != 0),
        "expected a refusal (non-zero exit):\n{what}"
    );
    let stderr = String::from_utf8(out.stderr.clone()).expect("UTF-8 stderr");
    let line = stderr.trim();
    assert!(
        !line.is_empty() && !line.contains('\n'),
        "expected exactly one line on stderr:\n{what}"
    );
    for e in expect {
        assert!(
            line.contains(e),
            "the error line should contain {e:?}:\n{what}"
        );
    }
    assert!(
        out.stdout.is_empty(),
        "a refused command prints nothing on stdout:\n{what}"
    );
    assert_unchanged(&before, &after, &format!("raidctl {}", a.join(" ")));
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
    let out = raidctl_ok(&a);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
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

#[test]
fn raid5_has_internal_bitmap_by_default() {
    let fx = Fixture::new();
    let devs: Vec<PathBuf> = (0..3).map(|i| fx.path(&format!("b{i}.img"))).collect();
    raidctl_ok(&create_args(
        "bm",
        &["--level", "5", "--chunk", "64K", "--size", "64M"],
        &devs,
    ));
    for d in &devs {
        let md = mdadm_examine(d);
        md.assert_checksum_correct();
        assert_eq!(
            md.get("Internal Bitmap"),
            "8 sectors from superblock",
            "{}",
            md.what
        );
        let j = raidctl_examine_json(d);
        assert_eq!(j["internal_bitmap_offset_sectors"], 8, "{j:#}");
    }
}

#[test]
fn raid5_with_bitmap_none_has_no_bitmap() {
    let fx = Fixture::new();
    let devs: Vec<PathBuf> = (0..3).map(|i| fx.path(&format!("b{i}.img"))).collect();
    raidctl_ok(&create_args(
        "nobm",
        &[
            "--level", "5", "--chunk", "64K", "--size", "64M", "--bitmap", "none",
        ],
        &devs,
    ));
    for d in &devs {
        let md = mdadm_examine(d);
        md.assert_checksum_correct();
        assert!(
            !md.has("Internal Bitmap"),
            "{}: --bitmap none, yet:\n{}",
            md.what,
            md.text
        );
        let j = raidctl_examine_json(d);
        assert!(j["internal_bitmap_offset_sectors"].is_null(), "{j:#}");
    }
}

#[test]
fn raid0_with_internal_bitmap_is_refused() {
    let fx = Fixture::new();
    let devs = fx.members(&["a", "b"]);
    assert_refused(
        &fx,
        &create_args("x", &["--level", "0", "--bitmap", "internal"], &devs),
        &["RAID0", "--bitmap internal"],
    );
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
    let out = Command::new("losetup")
        .args(["--find", "--show", "--read-only"])
        .arg(&devs[0])
        .output()
        .expect("losetup");
    assert!(out.status.success(), "losetup: {out:?}");
    let dev = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let x = Command::new(mdadm_bin())
        .args(["-X", &dev])
        .output()
        .expect("mdadm -X");
    let _ = Command::new("losetup").args(["-d", &dev]).status();
    let text = String::from_utf8_lossy(&x.stdout).to_string();
    assert!(text.contains("Chunksize : 1 MB"), "mdadm -X:\n{text}");
}

#[test]
fn refuses_bad_bitmap_chunks() {
    let (fx, devs) = pattern_members(3);
    for chunk in ["3K", "1K", "4G", "lots"] {
        assert_refused(
            &fx,
            &create_args("x", &["--level", "5", "--bitmap-chunk", chunk], &devs),
            &["--bitmap-chunk", chunk],
        );
    }
    assert_refused(
        &fx,
        &create_args(
            "x",
            &["--level", "5", "--bitmap", "none", "--bitmap-chunk", "1M"],
            &devs,
        ),
        &["--bitmap-chunk needs a bitmap"],
    );
}

#[test]
fn refuses_a_cache_larger_than_half_the_memory() {
    let (fx, devs) = pattern_members(3);
    raidctl_ok(&create_args("x", &["--level", "5"], &devs));
    let run = fx.dir().join("run");
    let mut a = args(&[
        "--run-dir",
        &s(&run),
        "assemble",
        "x",
        "--cache-size",
        "64T",
    ]);
    a.extend(devs.iter().map(|d| s(d)));
    assert_refused(&fx, &a, &["--cache-size 64T", "memory"]);
    let mut a = args(&[
        "--run-dir",
        &s(&run),
        "assemble",
        "x",
        "--cache-size",
        "12Q",
    ]);
    a.extend(devs.iter().map(|d| s(d)));
    assert_refused(&fx, &a, &["--cache-size 12Q"]);
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

#[test]
fn refuses_level_7() {
    let (fx, devs) = pattern_members(3);
    assert_refused(
        &fx,
        &create_args("x", &["--level", "7"], &devs),
        &["unknown RAID level", "7"],
    );
}

#[test]
fn refuses_level_6_as_not_supported_yet() {
    let (fx, devs) = pattern_members(4);
    assert_refused(
        &fx,
        &create_args("x", &["--level", "6"], &devs),
        &["RAID6 is not supported yet"],
    );
}

#[test]
fn refuses_bad_chunk_sizes() {
    let (fx, devs) = pattern_members(3);
    for chunk in ["3K", "1000", "0"] {
        assert_refused(
            &fx,
            &create_args("x", &["--level", "5", "--chunk", chunk], &devs),
            &["chunk size", chunk],
        );
    }
}

#[test]
fn refuses_raid5_with_two_members() {
    let (fx, devs) = pattern_members(2);
    assert_refused(
        &fx,
        &create_args("x", &["--level", "5"], &devs),
        &["RAID5", "at least 3"],
    );
}

#[test]
fn refuses_raid1_with_one_member() {
    let (fx, devs) = pattern_members(1);
    assert_refused(
        &fx,
        &create_args("x", &["--level", "1"], &devs),
        &["RAID1", "at least 2"],
    );
}

#[test]
fn refuses_raid10_f3_with_two_members() {
    let (fx, devs) = pattern_members(2);
    assert_refused(
        &fx,
        &create_args("x", &["--level", "10", "--layout", "f3"], &devs),
        &["RAID10", "3 copies"],
    );
}

#[test]
fn refuses_unknown_raid5_layout() {
    let (fx, devs) = pattern_members(3);
    assert_refused(
        &fx,
        &create_args("x", &["--level", "5", "--layout", "diagonal"], &devs),
        &["layout", "diagonal"],
    );
}

#[test]
fn refuses_layout_for_raid1() {
    let (fx, devs) = pattern_members(2);
    assert_refused(
        &fx,
        &create_args("x", &["--level", "1", "--layout", "n2"], &devs),
        &["--layout", "RAID5 and RAID10"],
    );
}

#[test]
fn refuses_member_given_twice() {
    let (fx, devs) = pattern_members(3);
    let twice = vec![
        devs[0].clone(),
        devs[1].clone(),
        devs[2].clone(),
        devs[1].clone(),
    ];
    assert_refused(
        &fx,
        &create_args("x", &["--level", "5"], &twice),
        &[&s(&devs[1]), "twice"],
    );
    // The same file under another spelling, and a member repeated as a spare.
    let dotted = fx.dir().join(".").join("m0.img");
    let again = vec![devs[0].clone(), devs[1].clone(), devs[2].clone(), dotted];
    assert_refused(
        &fx,
        &create_args("x", &["--level", "5"], &again),
        &["twice"],
    );
    let spare = s(&devs[2]);
    assert_refused(
        &fx,
        &create_args("x", &["--level", "5", "--spare", &spare], &devs),
        &["twice"],
    );
}

#[test]
fn refuses_missing_member_without_size_and_does_not_create_it() {
    let (fx, mut devs) = pattern_members(2);
    let missing = fx.path("missing.img");
    devs.push(missing.clone());
    assert_refused(
        &fx,
        &create_args("x", &["--level", "5"], &devs),
        &[&s(&missing), "does not exist"],
    );
    assert!(!missing.exists(), "{} was created", missing.display());
}

#[test]
fn refuses_directory_as_member() {
    let (fx, mut devs) = pattern_members(2);
    let dir = fx.path("subdir");
    fs::create_dir(&dir).expect("mkdir");
    devs.push(dir.clone());
    assert_refused(
        &fx,
        &create_args("x", &["--level", "5"], &devs),
        &[&s(&dir), "not a regular file"],
    );
    // With --size too: it only creates or extends regular files.
    assert_refused(
        &fx,
        &create_args("x", &["--level", "5", "--size", "64M"], &devs),
        &[&s(&dir)],
    );
}

#[test]
fn refuses_nonsense_size() {
    let (fx, mut devs) = pattern_members(2);
    devs.push(fx.path("new.img"));
    assert_refused(
        &fx,
        &create_args("x", &["--level", "5", "--size", "12Q"], &devs),
        &["size", "12Q"],
    );
}

#[test]
fn refuses_invalid_array_names() {
    let (fx, devs) = pattern_members(3);
    let long = "n".repeat(40);
    for name in ["bad/name", "", long.as_str()] {
        assert_refused(
            &fx,
            &create_args(name, &["--level", "5"], &devs),
            &["invalid array name"],
        );
    }
}

#[test]
fn refuses_members_that_are_too_small() {
    // New files of 1M: refused, and none is left behind.
    let fx = Fixture::new();
    let new: Vec<PathBuf> = (0..3).map(|i| fx.path(&format!("n{i}.img"))).collect();
    assert_refused(
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
        &fx,
        &create_args("x", &["--level", "5", "--size", "1M"], &old),
        &["too small"],
    );
    assert_refused(
        &fx,
        &create_args("x", &["--level", "1"], &old[..2]),
        &["too small"],
    );
}

#[test]
fn refuses_raid0_with_spare() {
    let (fx, devs) = pattern_members(3);
    let spare = s(&devs[2]);
    assert_refused(
        &fx,
        &create_args("x", &["--level", "0", "--spare", &spare], &devs[..2]),
        &["RAID0", "spare"],
    );
}

#[test]
fn refuses_member_of_another_array_without_force() {
    let (fx, devs) = pattern_members(3);
    raidctl_ok(&create_args(
        "first",
        &["--level", "5", "--chunk", "64K"],
        &devs,
    ));
    let first_uuid = mdadm_examine(&devs[0]).get("Array UUID").to_string();

    // Every spelling of the refusal keeps the first array's members byte for byte.
    let line = assert_refused(
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

/// Bad input with `--size` larger than the existing members: the refusal must not grow them
/// (cmd_create.rs promises "Bad input touches nothing").
#[test]
fn refused_create_with_size_does_not_grow_members() {
    let (fx, devs) = pattern_members(3);
    let twice = vec![devs[0].clone(), devs[1].clone(), devs[0].clone()];
    assert_refused(
        &fx,
        &create_args("x", &["--level", "5", "--size", "128M"], &twice),
        &["twice"],
    );
}

/// Same, when the refusal is "already belongs to another array".
#[test]
fn refused_create_on_foreign_members_with_size_does_not_grow_them() {
    let (fx, devs) = pattern_members(3);
    raidctl_ok(&create_args(
        "first",
        &["--level", "5", "--chunk", "64K"],
        &devs,
    ));
    assert_refused(
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
    let out = raidctl(&a);
    assert_unchanged(&before, &snapshot(fx.dir()), "raidctl examine");
    assert_eq!(out.status.code(), Some(1), "{}", describe(&a, &out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = stderr.trim();
    assert!(!line.contains('\n'), "one line:\n{}", describe(&a, &out));
    assert!(
        line.contains("no md superblock on") && line.contains(&s(&zero)),
        "{}",
        describe(&a, &out)
    );
    assert_eq!(line, format!("raidctl: no md superblock on {}", s(&zero)));
}

#[test]
fn examine_nonexistent_path_names_it() {
    let fx = Fixture::new();
    let missing = fx.path("nothing-here.img");
    let a = args(&["examine", &s(&missing)]);
    let out = raidctl(&a);
    assert!(
        out.status.code().is_some_and(|c| c != 0),
        "{}",
        describe(&a, &out)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = stderr.trim();
    assert!(
        !line.is_empty() && !line.contains('\n'),
        "one line:\n{}",
        describe(&a, &out)
    );
    assert!(line.contains(&s(&missing)), "{}", describe(&a, &out));
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
    let out = raidctl_ok(&a);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("verified"), "{}", describe(&a, &out));

    let m0 = mdadm_examine(&dir.join("m0.img"));
    m0.assert_checksum_correct();
    assert_eq!(m0.get("State"), "clean", "{}", m0.text);
    assert_eq!(m0.get("Raid Level"), "raid5");
    assert_eq!(m0.get("Device Role"), "Active device 0");
    // Slot 2 failed and the hot spare was rebuilt into it: every slot is claimed again.
    assert_eq!(m0.array_state(), "AAAA", "{}", m0.text);
    let events: u64 = m0.get("Events").parse().expect("events");

    // The surviving members and the former spare agree with m0; the spare now holds slot 2.
    for other in ["m1.img", "m3.img", "spare.img"] {
        let md = mdadm_examine(&dir.join(other));
        md.assert_checksum_correct();
        assert_eq!(md.get("Array UUID"), m0.get("Array UUID"), "{}", md.what);
        assert_eq!(md.get("Events"), m0.get("Events"), "{}", md.what);
        assert_eq!(md.array_state(), "AAAA", "{}", md.text);
    }
    let spare = mdadm_examine(&dir.join("spare.img"));
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
    let m2 = mdadm_examine(&dir.join("m2.img"));
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
    assert_refused(&fx, &assemble(&[]), &["no member devices given"]);
    let all: Vec<String> = devs.iter().map(dev).collect();
    let mut bad_listen = all.clone();
    bad_listen.extend(args(&["--listen", "tcp:nonsense"]));
    assert_refused(
        &fx,
        &assemble(&bad_listen),
        &["invalid --listen", "tcp:nonsense"],
    );
    let missing = s(&fx.path("missing.img"));
    assert_refused(
        &fx,
        &assemble(&[all[0].clone(), all[1].clone(), missing.clone()]),
        &[&missing],
    );
    // Members of two arrays: the foreign one is named.
    let foreign = dev(&other[0]);
    assert_refused(
        &fx,
        &assemble(&[all[0].clone(), all[1].clone(), foreign.clone()]),
        &["belongs to array", &foreign],
    );
    // Degraded without --run is refused and says how to insist.
    assert_refused(
        &fx,
        &assemble(&[all[0].clone(), all[1].clone()]),
        &["degraded", "--run"],
    );
    // No daemon was left behind by any of these.
    let out = raidctl(&args(&["--run-dir", &run_arg, "status", "--json"]));
    assert!(
        out.status.success(),
        "{}",
        describe(&args(&["status"]), &out)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "[]");
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
        assert_refused(&fx, &a, &["ghost", "not running", "raidctl assemble ghost"]);
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
    assert_refused(&fx, &a, &["invalid size", "12Q"]);
}

#[test]
fn the_control_socket_answers_garbage_with_an_error_and_keeps_serving() {
    use std::io::{BufRead, BufReader, Write as _};
    let (fx, devs) = pattern_members(3);
    raidctl_ok(&create_args(
        "cs",
        &["--level", "5", "--chunk", "64K"],
        &devs,
    ));
    let run = run_dir();
    let r = s(run.path());
    let mut a = args(&["--run-dir", &r, "assemble", "cs"]);
    a.extend(devs.iter().map(|d| s(d)));
    raidctl_ok(&a);
    struct Stop(String);
    impl Drop for Stop {
        fn drop(&mut self) {
            let _ = raidctl(&args(&["--run-dir", &self.0, "stop", "cs"]));
        }
    }
    let _stop = Stop(r.clone());
    let ctl = run.path().join("cs.ctl");
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
        let v: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("{bad}: {e}: {line}"));
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
    let ghost = s(&fx.path("not-a-member.img"));
    let out = raidctl(&args(&[
        "--run-dir",
        &r,
        "inject",
        "cs",
        &ghost,
        "--vanish",
    ]));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("not a member") && err.trim().lines().count() == 1,
        "{err}"
    );
    let out = raidctl(&args(&["--run-dir", &r, "status", "cs", "--json"]));
    assert!(out.status.success(), "the daemon is still up");
}
