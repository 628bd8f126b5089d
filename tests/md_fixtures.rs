//! Compatibility with arrays made by Linux md itself.
//!
//! The fixtures (shared/fixtures/md, see its README) are member images of real md arrays, filled
//! through /dev/md0 with a checkable pattern: the 4 KiB block at array offset `o` holds
//! `"<TAG> <o as 16 digits>\n"` repeated and cut at 4096 bytes. raidcore must assemble them and
//! read back exactly md's bytes (block by block, then the md5 md recorded), refuse what md would
//! refuse, and leave arrays it wrote to in a state mdadm accepts.
//!
//! Fixture directory: `$RAIDCORE_MD_FIXTURES`, else `../shared/fixtures/md` beside the crate.
//! Needs `xz` (decompression) and `mdadm` (`--examine` after writes); a missing fixture
//! directory or tool fails the test, saying what is missing.

use std::cell::RefCell;
use std::fs::File;
use std::future::Future;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::rc::Rc;

use md5::{Digest, Md5};
use raidcore::buf::BufSlice;
use raidcore::control::{assemble, AssembleOptions, Assembled};
use raidcore::member::{FileMember, Member, OpenOptions};
use raidcore::raid::{Array, ArrayState};
use raidcore::reactor::{block_on, spawn};

use tempfile::TempDir;

const BLOCK: usize = 4096;
const MIB: u64 = 1 << 20;
/// Size of one array request when reading or writing a whole region.
const IO_BYTES: u64 = MIB;
/// Requests in flight when reading a whole array.
const LANES: u64 = 4;
/// TAG of the pattern the write tests put on md-made arrays.
const WRITE_TAG: &str = "raidcore-wrote";

// ---------------------------------------------------------------------------------------------
// Fixtures

fn fixture_dir() -> PathBuf {
    let dir = match std::env::var_os("RAIDCORE_MD_FIXTURES") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../shared/fixtures/md"
        )),
    };
    assert!(
        dir.is_dir(),
        "md fixture directory {} is missing: set RAIDCORE_MD_FIXTURES to the directory holding \
         the NAME.mK.img.xz, NAME.size and NAME.md5 files, or put shared/ beside the repository \
         (CI provides it)",
        dir.display()
    );
    dir
}

/// One md array's members, decompressed into a private temporary directory (removed on drop).
struct Fixture {
    dir: TempDir,
    members: Vec<String>,
    /// Array size as md reported it (NAME.size).
    size: u64,
    /// md5 of the whole array as md read it (NAME.md5), lowercase hex.
    md5: String,
}

impl Fixture {
    fn load(name: &'static str) -> Fixture {
        let src = fixture_dir();
        let dir = tempfile::Builder::new()
            .prefix(&format!("raidcore-md-{name}-"))
            .tempdir()
            .expect("cannot create a temporary directory");
        let mut members = Vec::new();
        for k in 0.. {
            let xz = src.join(format!("{name}.m{k}.img.xz"));
            if !xz.exists() {
                break;
            }
            let out = dir.path().join(format!("{name}.m{k}.img"));
            decompress(&xz, &out);
            members.push(out.to_str().expect("temp path is UTF-8").to_string());
        }
        assert!(
            !members.is_empty(),
            "fixture {name}: no {name}.m0.img.xz in {}",
            src.display()
        );
        let size = read_text(&src.join(format!("{name}.size")))
            .parse::<u64>()
            .unwrap_or_else(|e| panic!("fixture {name}: {name}.size is not a number: {e}"));
        let md5 = read_text(&src.join(format!("{name}.md5")))
            .split_whitespace()
            .next()
            .unwrap_or_else(|| panic!("fixture {name}: {name}.md5 is empty"))
            .to_ascii_lowercase();
        Fixture {
            dir,
            members,
            size,
            md5,
        }
    }

    fn member(&self, k: usize) -> &str {
        &self.members[k]
    }

    /// The paths of members `ks`, in that order.
    fn members_of(&self, ks: &[usize]) -> Vec<String> {
        ks.iter().map(|&k| self.members[k].clone()).collect()
    }
}

fn read_text(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
        .trim()
        .to_string()
}

fn decompress(xz: &Path, out: &Path) {
    let file = File::create(out).unwrap_or_else(|e| panic!("cannot create {}: {e}", out.display()));
    let status = Command::new("xz")
        .arg("-dc")
        .arg(xz)
        .stdout(file)
        .stderr(Stdio::inherit())
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => panic!("xz -dc {} failed: {s}", xz.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "xz is not installed: it is needed to decompress the md fixtures \
             (apt-get install xz-utils; CI installs it)"
        ),
        Err(e) => panic!("cannot run xz to decompress {}: {e}", xz.display()),
    }
}

fn mdadm() -> PathBuf {
    for p in ["/usr/sbin/mdadm", "/sbin/mdadm"] {
        if Path::new(p).is_file() {
            return PathBuf::from(p);
        }
    }
    let on_path = Command::new("mdadm")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    assert!(
        on_path,
        "mdadm is not installed (looked for /usr/sbin/mdadm, /sbin/mdadm and mdadm on PATH): it \
         is needed to check what raidcore writes (apt-get install mdadm; CI installs it)"
    );
    PathBuf::from("mdadm")
}

// ---------------------------------------------------------------------------------------------
// Running raidcore

/// Runs `fut` on a fresh reactor on this thread.
fn run<T: 'static>(fut: impl Future<Output = T> + 'static) -> T {
    block_on(fut).unwrap_or_else(|e| panic!("reactor failed: {e}"))
}

fn open_members(paths: &[String], read_only: bool) -> Vec<Rc<dyn Member>> {
    paths
        .iter()
        .map(|p| {
            let opts = OpenOptions {
                read_only,
                no_claim: false,
            };
            // The previous assembly's claim can outlive it for a moment: a process that
            // another test forks copies the descriptor until it execs.
            let mut tries = 0;
            let m = loop {
                match FileMember::open(p, opts) {
                    Err(e) if e.kind() == std::io::ErrorKind::ResourceBusy && tries < 100 => {
                        tries += 1;
                        std::thread::sleep(std::time::Duration::from_millis(20));
                    }
                    r => break r.unwrap_or_else(|e| panic!("cannot open member {p}: {e}")),
                }
            };
            Rc::new(m) as Rc<dyn Member>
        })
        .collect()
}

fn read_only_opts() -> AssembleOptions {
    AssembleOptions {
        read_only: true,
        ..AssembleOptions::default()
    }
}

/// Assembles `paths` (opened read-only when `opts.read_only`) and hands the result to `then`,
/// all on one reactor. Assembly errors come back as their message.
fn with_assembled<T: 'static, F, Fut>(
    paths: &[String],
    opts: AssembleOptions,
    then: F,
) -> Result<T, String>
where
    F: FnOnce(Assembled) -> Fut + 'static,
    Fut: Future<Output = Result<T, String>> + 'static,
{
    let members = open_members(paths, opts.read_only);
    run(async move {
        let assembled = assemble(members, &opts).await.map_err(|e| e.to_string())?;
        then(assembled).await
    })
}

/// The assembly error message, or a panic naming `what` if it assembled.
fn assembly_error(what: &str, paths: &[String], opts: AssembleOptions) -> String {
    match with_assembled(paths, opts, |_| async { Ok(()) }) {
        Ok(()) => panic!("{what}: assembly of {paths:?} succeeded but should have been refused"),
        Err(e) => e,
    }
}

/// Reads the whole array in 1 MiB requests, LANES of them in flight.
async fn read_all(array: &Rc<Array>) -> Result<Vec<u8>, String> {
    let size = array.size_bytes();
    let out = Rc::new(RefCell::new(vec![0u8; size as usize]));
    let mut lanes = Vec::new();
    for lane in 0..LANES {
        let array = array.clone();
        let out = out.clone();
        lanes.push(spawn(async move {
            let mut offset = lane * IO_BYTES;
            while offset < size {
                let len = (size - offset).min(IO_BYTES) as usize;
                let buf = BufSlice::zeroed(len);
                array
                    .read(offset, buf.clone())
                    .await
                    .map_err(|e| format!("read at {offset}+{len} failed: {e}"))?;
                out.borrow_mut()[offset as usize..offset as usize + len]
                    .copy_from_slice(buf.bytes());
                offset += LANES * IO_BYTES;
            }
            Ok::<(), String>(())
        }));
    }
    let mut first_error = None;
    for lane in lanes {
        if let Err(e) = lane.await {
            first_error.get_or_insert(e);
        }
    }
    if let Some(e) = first_error {
        return Err(e);
    }
    let out = Rc::try_unwrap(out).expect("lanes finished");
    Ok(out.into_inner())
}

async fn write_range(array: &Array, offset: u64, data: &[u8], fua: bool) -> Result<(), String> {
    let buf = BufSlice::copy_of(data);
    array
        .write(offset, buf, fua)
        .await
        .map_err(|e| format!("write at {offset}+{} failed: {e}", data.len()))
}

// ---------------------------------------------------------------------------------------------
// The pattern and comparisons

/// The 4 KiB block md's pattern puts at array offset `offset`.
fn pattern_block(tag: &str, offset: u64) -> Vec<u8> {
    let line = format!("{tag} {offset:016}\n");
    line.bytes().cycle().take(BLOCK).collect()
}

/// A whole array of pattern blocks, the tag chosen per block offset.
fn pattern_array<'a>(size: u64, tag_at: impl Fn(u64) -> &'a str) -> Vec<u8> {
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
fn pattern_range(tag: &str, offset: u64, len: usize) -> Vec<u8> {
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

fn md5_hex(data: &[u8]) -> String {
    Md5::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The pattern line of `block` that holds byte `at` (the whole line, as text).
fn line_at(block: &[u8], at: usize) -> String {
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
fn line_origin(block: &[u8], at: usize, array_len: usize) -> String {
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
fn compare(fixture: &str, what: &str, found: &[u8], expected: &[u8]) -> Result<(), String> {
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
// 1. Every md level raidcore supports reads back exactly md's bytes

/// Assembles all of `name`'s members read-only and checks the size, every block and the md5.
fn check_reads_md_bytes(name: &'static str) {
    let fx = Fixture::load(name);
    let expected = pattern_array(fx.size, |_| name);
    assert_eq!(
        md5_hex(&expected),
        fx.md5,
        "{name}: the pattern this test computes does not have the md5 in {name}.md5 \
         (a bug in the test or the fixture, not in raidcore)"
    );
    let (size, data) = with_assembled(&fx.members, read_only_opts(), |a| async move {
        let size = a.array.size_bytes();
        if !a.notes.is_empty() {
            return Err(format!("notes on a complete array: {:?}", a.notes));
        }
        Ok((size, read_all(&a.array).await?))
    })
    .unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(
        size, fx.size,
        "{name}: array size differs from md's ({name}.size)"
    );
    if let Err(e) = compare(name, "array content", &data, &expected) {
        panic!("{e}");
    }
    assert_eq!(
        md5_hex(&data),
        fx.md5,
        "{name}: md5 of the array differs from md's"
    );
}

#[test]
fn raid0_4_reads_md_bytes() {
    check_reads_md_bytes("raid0-4");
}

#[test]
fn raid0_3_unequal_reads_md_bytes() {
    check_reads_md_bytes("raid0-3-unequal");
}

#[test]
fn raid1_2_reads_md_bytes() {
    check_reads_md_bytes("raid1-2");
}

#[test]
fn raid5_4_reads_md_bytes() {
    check_reads_md_bytes("raid5-4");
}

#[test]
fn raid10n2_4_reads_md_bytes() {
    check_reads_md_bytes("raid10n2-4");
}

#[test]
fn raid10f2_4_reads_md_bytes() {
    check_reads_md_bytes("raid10f2-4");
}

// ---------------------------------------------------------------------------------------------
// 2. A degraded RAID5 with a stale member

#[test]
fn raid5_degraded_with_stale_member() {
    let name = "raid5-4-degraded";
    let fx = Fixture::load(name);
    let half = fx.size / 2;
    let expected = pattern_array(fx.size, |o| {
        if o < half {
            "raid5-4-degraded-after"
        } else {
            "raid5-4-degraded-before"
        }
    });
    assert_eq!(
        md5_hex(&expected),
        fx.md5,
        "{name}: the pattern this test computes (first half -after, second half -before) does \
         not have the md5 in {name}.md5 (a bug in the test or the fixture, not in raidcore)"
    );
    let fresh = fx.members_of(&[0, 1, 3]);
    let m2 = fx.member(2).to_string();

    // Members 0, 1, 3 with --run: md's bytes.
    let run_ro = AssembleOptions {
        run: true,
        read_only: true,
        ..AssembleOptions::default()
    };
    let (slot2_active, data) = with_assembled(&fresh, run_ro.clone(), |a| async move {
        let active = a.array.slots()[2].is_active();
        Ok((active, read_all(&a.array).await?))
    })
    .unwrap_or_else(|e| panic!("{name}: members 0, 1, 3 with run: {e}"));
    assert!(!slot2_active, "{name}: slot 2 active with m2 not given");
    if let Err(e) = compare(name, "members 0, 1, 3 (degraded)", &data, &expected) {
        panic!("{e}");
    }
    assert_eq!(
        md5_hex(&data),
        fx.md5,
        "{name}: members 0, 1, 3: md5 differs from md's"
    );
    drop(data);

    // Without --run the degraded start is refused, pointing at --run.
    let err = assembly_error(
        &format!("{name}: members 0, 1, 3 without run"),
        &fresh,
        read_only_opts(),
    );
    assert!(
        err.contains("--run"),
        "{name}: members 0, 1, 3 without run: the refusal does not mention --run: {err}"
    );

    // All four members: the stale m2 is left out, and the notes say why.
    let (notes, slot2_active, data) = with_assembled(&fx.members, run_ro, |a| async move {
        let active = a.array.slots()[2].is_active();
        Ok((a.notes.clone(), active, read_all(&a.array).await?))
    })
    .unwrap_or_else(|e| panic!("{name}: all four members with run: {e}"));
    assert!(
        notes.iter().any(|n| n.contains(&m2) && n.contains("stale")),
        "{name}: all four members: no note names {m2} as stale; notes: {notes:?}"
    );
    assert!(
        !slot2_active,
        "{name}: all four members: the stale member 2 was put in slot 2 without force"
    );
    if let Err(e) = compare(name, "all four members (m2 stale)", &data, &expected) {
        panic!("{e}");
    }
    assert_eq!(
        md5_hex(&data),
        fx.md5,
        "{name}: all four members: md5 differs from md's"
    );
    drop(data);

    // --force uses the stale member only where the array cannot start without it (mdadm's
    // rule): with the three fresh members there, it stays out.
    let force_ro = AssembleOptions {
        force: true,
        read_only: true,
        run: true,
        ..AssembleOptions::default()
    };
    let slot2 = with_assembled(&fx.members, force_ro.clone(), |a| async move {
        Ok(a.array.slots()[2].is_active())
    })
    .unwrap_or_else(|e| panic!("{name}: all four members with force: {e}"));
    assert!(
        !slot2,
        "{name}: with force and enough fresh members, the stale {m2} must stay out"
    );
    // Without member 1 the array needs it: slot 2 is then active and holds it.
    let without_m1: Vec<String> = fx
        .members
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 1)
        .map(|(_, m)| m.clone())
        .collect();
    let m2_for_check = m2.clone();
    let slot2 = with_assembled(&without_m1, force_ro, |a| async move {
        let slots = a.array.slots();
        Ok((
            slots[2].is_active(),
            slots[2].disk().map(|d| d.member.path().to_string()),
        ))
    })
    .unwrap_or_else(|e| panic!("{name}: members 0, 2, 3 with force: {e}"));
    assert_eq!(
        slot2,
        (true, Some(m2_for_check)),
        "{name}: with force and member 1 absent, slot 2 should be active and hold {m2}"
    );
}

// ---------------------------------------------------------------------------------------------
// 3. RAID6 is refused with a clear message

#[test]
fn raid6_is_refused() {
    let fx = Fixture::load("raid6-5");
    let err = assembly_error("raid6-5", &fx.members, read_only_opts());
    assert!(
        err.contains("RAID6 is not supported yet"),
        "raid6-5: unexpected refusal: {err}"
    );
}

// ---------------------------------------------------------------------------------------------
// 4. Writing to an md-made array keeps it valid for mdadm

/// What `mdadm --examine` says about one member.
#[derive(Debug)]
struct Examine {
    text: String,
}

impl Examine {
    fn of(mdadm: &Path, member: &str) -> Examine {
        let out = Command::new(mdadm)
            .arg("--examine")
            .arg(member)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {} --examine: {e}", mdadm.display()));
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "mdadm --examine {member} failed ({}): {}{}",
            out.status,
            text,
            String::from_utf8_lossy(&out.stderr)
        );
        Examine { text }
    }

    fn field(&self, key: &str) -> Option<&str> {
        self.text.lines().find_map(|line| {
            let (k, v) = line.split_once(" : ")?;
            (k.trim() == key).then_some(v.trim())
        })
    }

    fn must(&self, key: &str) -> &str {
        self.field(key)
            .unwrap_or_else(|| panic!("mdadm --examine shows no {key:?}:\n{}", self.text))
    }

    fn events(&self) -> u64 {
        self.must("Events")
            .parse()
            .unwrap_or_else(|e| panic!("Events is not a number ({e}):\n{}", self.text))
    }

    fn raid_devices(&self) -> usize {
        self.must("Raid Devices")
            .parse()
            .unwrap_or_else(|e| panic!("Raid Devices is not a number ({e}):\n{}", self.text))
    }

    /// "Internal Bitmap : 8 sectors from superblock" -> Some(8).
    fn bitmap_sectors_from_superblock(&self) -> Option<i64> {
        let v = self.field("Internal Bitmap")?;
        v.split_whitespace().next()?.parse().ok()
    }
}

/// The ranges written after the first 8 MiB: 512-aligned, not 4 KiB-aligned, crossing chunk and
/// stripe boundaries, up to the array's last sector. They do not overlap.
fn unaligned_ranges(size: u64) -> Vec<(u64, usize)> {
    let k = 1024u64;
    let ranges = vec![
        (8 * MIB + 512, 1024),
        (9 * MIB + 64 * k - 1536, 3072),
        (10 * MIB + 192 * k - 2560, 192 * 1024 + 5120),
        (size / 2 + 3584, 512),
        (size - 64 * k - 1536, 64 * 1024 + 1024),
        (size - 512, 512),
    ];
    for w in ranges.windows(2) {
        assert!(w[0].0 + w[0].1 as u64 <= w[1].0, "ranges overlap: {w:?}");
    }
    ranges
}

fn check_write_keeps_md_valid(name: &'static str) {
    let mdadm = mdadm();
    let fx = Fixture::load(name);
    let before: Vec<Examine> = fx.members.iter().map(|m| Examine::of(&mdadm, m)).collect();

    // What the array must hold afterwards: md's pattern with our writes on top.
    let mut model = pattern_array(fx.size, |_| name);
    assert_eq!(
        md5_hex(&model),
        fx.md5,
        "{name}: the pattern this test computes does not have the md5 in {name}.md5"
    );
    let mut writes: Vec<(u64, Vec<u8>, bool)> = Vec::new();
    let head = pattern_range(WRITE_TAG, 0, (8 * MIB) as usize);
    for (i, (offset, len)) in unaligned_ranges(fx.size).into_iter().enumerate() {
        writes.push((offset, pattern_range(WRITE_TAG, offset, len), i % 2 == 1));
    }
    model[..head.len()].copy_from_slice(&head);
    for (offset, data, _) in &writes {
        model[*offset as usize..*offset as usize + data.len()].copy_from_slice(data);
    }

    let head = Rc::new(head);
    let state_after_writes = with_assembled(&fx.members, AssembleOptions::default(), {
        move |a| async move {
            let array = a.array;
            // The first 8 MiB: 1 MiB requests, all in flight together.
            let mut tasks = Vec::new();
            for i in 0..8u64 {
                let array = array.clone();
                let head = head.clone();
                tasks.push(spawn(async move {
                    let at = (i * MIB) as usize;
                    write_range(&array, i * MIB, &head[at..at + MIB as usize], false).await
                }));
            }
            for t in tasks {
                t.await?;
            }
            for (offset, data, fua) in &writes {
                write_range(&array, *offset, data, *fua).await?;
            }
            let state = array.state();
            array
                .close()
                .await
                .map_err(|e| format!("close failed: {e}"))?;
            Ok(state)
        }
    })
    .unwrap_or_else(|e| panic!("{name}: read-write assembly and writes: {e}"));
    assert_eq!(
        state_after_writes,
        ArrayState::Active,
        "{name}: the array should be active (dirty) while written to"
    );

    // mdadm must find every member clean, checksummed, with newer events and all slots active.
    let mut events_after = Vec::new();
    for (k, (member, old)) in fx.members.iter().zip(&before).enumerate() {
        let now = Examine::of(&mdadm, member);
        let ctx = format!(
            "{name} m{k} ({member}) after raidcore wrote and closed:\n{}",
            now.text
        );
        assert!(
            now.must("Checksum").ends_with("- correct"),
            "mdadm finds a bad superblock checksum on {ctx}"
        );
        assert_eq!(now.must("State"), "clean", "not clean on {ctx}");
        assert!(
            now.events() > old.events(),
            "events did not advance ({} before, {} now) on {ctx}",
            old.events(),
            now.events()
        );
        let array_state = now
            .must("Array State")
            .split_whitespace()
            .next()
            .unwrap_or("");
        assert!(
            array_state.len() == now.raid_devices() && array_state.chars().all(|c| c == 'A'),
            "Array State is {array_state:?}, expected all active on {ctx}"
        );
        assert_eq!(
            now.field("Device Role"),
            old.field("Device Role"),
            "the member's role changed on {ctx}"
        );
        assert_eq!(
            now.field("Array UUID"),
            old.field("Array UUID"),
            "the array UUID changed on {ctx}"
        );
        // md reads an internal bitmap whose events are behind the superblock's as out of date
        // and resyncs everything: a clean stop leaves them equal.
        if let Some(sectors) = now.bitmap_sectors_from_superblock() {
            let at = (4096 + sectors * 512) as u64;
            let mut sb = [0u8; 512];
            File::open(member)
                .and_then(|f| f.read_exact_at(&mut sb, at))
                .unwrap_or_else(|e| panic!("cannot read the bitmap superblock of {member}: {e}"));
            assert_eq!(&sb[..4], b"bitm", "bitmap superblock magic lost on {ctx}");
            let bitmap_events = u64::from_le_bytes(sb[24..32].try_into().unwrap());
            assert_eq!(
                bitmap_events,
                now.events(),
                "bitmap events differ from the superblock's (md would call the bitmap out of \
                 date and resync the whole array) on {ctx}"
            );
        }
        events_after.push(now.events());
    }
    assert!(
        events_after.windows(2).all(|w| w[0] == w[1]),
        "{name}: members disagree on events after close: {events_after:?}"
    );

    // Assembled again, the array holds what we wrote and md's pattern everywhere else.
    let (state, data) = with_assembled(&fx.members, read_only_opts(), |a| async move {
        Ok((a.array.state(), read_all(&a.array).await?))
    })
    .unwrap_or_else(|e| panic!("{name}: assembling again after the writes: {e}"));
    assert_eq!(
        state,
        ArrayState::Clean,
        "{name}: the array is not clean when assembled after close"
    );
    if let Err(e) = compare(name, "content after raidcore's writes", &data, &model) {
        panic!("{e}");
    }
    assert_eq!(
        md5_hex(&data),
        md5_hex(&model),
        "{name}: md5 after raidcore's writes"
    );
    drop(data);

    // The redundancy is consistent too: with any one member left out (md rebuilding from
    // parity, or reading the other mirror), the array still reads back the same.
    let mut failures = Vec::new();
    for k in 0..fx.members.len() {
        let others: Vec<usize> = (0..fx.members.len()).filter(|&j| j != k).collect();
        let opts = AssembleOptions {
            run: true,
            read_only: true,
            ..AssembleOptions::default()
        };
        let data = with_assembled(&fx.members_of(&others), opts, |a| async move {
            read_all(&a.array).await
        })
        .unwrap_or_else(|e| panic!("{name}: assembling without m{k} after the writes: {e}"));
        let what = format!("content after raidcore's writes, read without m{k}");
        if let Err(e) = compare(name, &what, &data, &model) {
            failures.push(e);
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn raid5_4_write_keeps_md_valid() {
    check_write_keeps_md_valid("raid5-4");
}

#[test]
fn raid1_2_write_keeps_md_valid() {
    check_write_keeps_md_valid("raid1-2");
}

// ---------------------------------------------------------------------------------------------
// 5. Members that do not belong are named

#[test]
fn foreign_member_is_named() {
    let r5 = Fixture::load("raid5-4");
    let r1 = Fixture::load("raid1-2");
    let mut paths = r5.members_of(&[0, 1, 2]);
    paths.push(r1.member(0).to_string());
    let err = assembly_error("raid5-4 m0-m2 with raid1-2 m0", &paths, read_only_opts());
    assert!(
        err.contains(r1.member(0)),
        "raid5-4 m0-m2 with raid1-2 m0: the error does not name {}: {err}",
        r1.member(0)
    );
}

#[test]
fn corrupted_superblock_is_named() {
    let fx = Fixture::load("raid1-2");
    let corrupt = fx.dir.path().join("raid1-2.m1.corrupt.img");
    std::fs::copy(fx.member(1), &corrupt).expect("copy raid1-2 m1");
    let corrupt = corrupt.to_str().expect("UTF-8 path").to_string();
    {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&corrupt)
            .expect("open the copy");
        let mut b = [0u8; 1];
        f.read_exact_at(&mut b, 4096 + 100).expect("read");
        b[0] ^= 0x01;
        f.write_all_at(&b, 4096 + 100).expect("write");
    }
    let paths = vec![fx.member(0).to_string(), corrupt.clone()];
    let err = assembly_error(
        "raid1-2 with a corrupted m1 superblock",
        &paths,
        read_only_opts(),
    );
    assert!(
        err.contains(&corrupt) && err.to_lowercase().contains("checksum"),
        "raid1-2 with a corrupted m1 superblock: the error should name {corrupt} and say \
         checksum: {err}"
    );
}

// ---------------------------------------------------------------------------------------------
// The failure report itself

#[test]
fn mismatch_report_names_block_and_lines() {
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

// ---------------------------------------------------------------------------------------------
// 5. md's bad-block log is honoured

/// A range md recorded in a member's bad-block log is never read as data: here the sectors
/// are also overwritten with garbage, and the array still reads back md's exact bytes
/// (redundancy answers for them), read-only, as md itself would.
#[test]
fn md_bad_block_log_is_honoured() {
    use raidcore::metadata::{Superblock, FEATURE_BAD_BLOCKS};
    let fx = Fixture::load("raid5-4");
    let m1 = &fx.members[1];
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(m1)
        .unwrap();
    let mut sb_bytes = vec![0u8; 4096];
    f.read_exact_at(&mut sb_bytes, 4096).unwrap();
    let mut sb = Superblock::decode(&sb_bytes).expect("md's superblock");
    assert!(
        sb.bblog_offset_sectors != 0,
        "mdadm reserved a bad-block log"
    );
    // Eight sectors 64 KiB into the data area, as md records them: absolute device sectors.
    let start = sb.data_offset_sectors + 128;
    let mut log = vec![0xffu8; sb.bblog_size_sectors as usize * 512];
    log[..8].copy_from_slice(&((start << 10) | 8).to_le_bytes());
    let log_at = (4096 + sb.bblog_offset_sectors as i64 * 512) as u64;
    f.write_all_at(&log, log_at).unwrap();
    sb.feature_map |= FEATURE_BAD_BLOCKS;
    f.write_all_at(&sb.encode(), 4096).unwrap();
    f.write_all_at(&[0x5a; 4096], start * 512).unwrap();
    drop(f);
    let (bad, data) = with_assembled(&fx.members, read_only_opts(), |a| async move {
        Ok((a.array.bad_blocks(), read_all(&a.array).await?))
    })
    .unwrap_or_else(|e| panic!("raid5-4 with a bad-block log entry: {e}"));
    assert_eq!(bad.len(), 1, "the log entry is loaded: {bad:?}");
    assert_eq!(
        md5_hex(&data),
        fx.md5,
        "raid5-4: the recorded (and garbage) sectors were read as data"
    );
}
