//! Integration tests of `raidctl attach` / `detach` on a host without the kernel nbd driver:
//! the daemon mounts its FUSE frontend (RUN_DIR/NAME.fuse/NAME) and puts a loop device on that
//! file. On top of it: ext4 (mkfs, mount, 200 files written from this process and checked by
//! sha256, e2fsck), members that vanish in the middle of the writes, a RAID0 that fails, the
//! refusal to detach or stop while mounted, and a `kill -9` of the daemon while attached.
//!
//! Every test works in its own temporary directory under cargo's target tmp dir (a real
//! filesystem) with its own run directory (`RAIDCTL_RUN_DIR`). A [`Harness`] guard undoes
//! everything when dropped, also when the test fails: `umount -l` of the test's mounts,
//! `raidctl detach` and `raidctl stop`, `kill -9` of a daemon still alive, `losetup -d` of loop
//! devices backed by files of the test, and a lazy unmount of the FUSE directory. Each test ends
//! by asserting that no mount, loop device or FUSE mount of its own remains.
//!
//! Needs root, /dev/fuse, losetup, mkfs.ext4, e2fsck, mount, dd and sha256sum: a missing one
//! fails the test saying what to install. Nothing here asserts a duration; timeouts only stop
//! hangs.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

mod common;
use common::{is_raidctl, process_alive, s, tail, wait_until_dead};

const KIB: u64 = 1 << 10;
/// How many files the ext4 tests write.
const FILES: usize = 200;
/// Hang guard for one external command (never a performance expectation).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(300);
/// Hang guard for the commands of the cleanup.
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(120);

// ---------------------------------------------------------------------------------------------
// A tiny seeded RNG (xorshift64*): reproducible file sizes and contents
// ---------------------------------------------------------------------------------------------

struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in lo..=hi.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo + 1)
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = vec![0u8; n];
        for chunk in v.chunks_mut(8) {
            let x = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&x[..chunk.len()]);
        }
        v
    }
}

// ---------------------------------------------------------------------------------------------
// Running commands (bounded by a hang guard, output captured for failure messages)
// ---------------------------------------------------------------------------------------------

struct Ran {
    what: String,
    status: Option<ExitStatus>,
    stdout: String,
    stderr: String,
}

impl Ran {
    fn success(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }
    fn describe(&self) -> String {
        format!(
            "$ {}\n  status: {}\n  stdout: {}\n  stderr: {}",
            self.what,
            match self.status {
                Some(s) => format!("{s}"),
                None => "killed by the test's hang guard".into(),
            },
            tail(&self.stdout, 4000),
            tail(&self.stderr, 4000)
        )
    }
    /// Panics unless the command exited 0.
    fn ok(self) -> Ran {
        assert!(self.success(), "command failed:\n{}", self.describe());
        self
    }
}

fn describe_command(cmd: &Command) -> String {
    let mut parts = vec![cmd.get_program().to_string_lossy().into_owned()];
    parts.extend(cmd.get_args().map(|a| {
        let a = a.to_string_lossy();
        if a.contains(char::is_whitespace) || a.is_empty() {
            format!("'{a}'")
        } else {
            a.into_owned()
        }
    }));
    parts.join(" ")
}

/// Runs `cmd` to completion with captured output, killing it after `timeout` (a hang guard).
fn run_with_timeout(mut cmd: Command, timeout: Duration) -> Ran {
    let what = describe_command(&cmd);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            return Ran {
                what,
                status: None,
                stdout: String::new(),
                stderr: format!("cannot run it: {e}"),
            }
        }
    };
    let (tx, rx) = mpsc::channel::<(bool, Vec<u8>)>();
    let mut out = child.stdout.take().expect("piped stdout");
    let mut err = child.stderr.take().expect("piped stderr");
    let tx2 = tx.clone();
    thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        let _ = tx.send((true, v));
    });
    thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        let _ = tx2.send((false, v));
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break Some(s),
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(10)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
        }
    };
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    for _ in 0..2 {
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok((true, v)) => stdout = v,
            Ok((false, v)) => stderr = v,
            Err(_) => break,
        }
    }
    Ran {
        what,
        status,
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    }
}

fn run(cmd: Command) -> Ran {
    run_with_timeout(cmd, COMMAND_TIMEOUT)
}

fn cmd(program: &str, args: &[&str]) -> Command {
    let mut c = Command::new(program);
    c.args(args);
    c
}

/// Where a tool is on $PATH (plus the sbin directories root has).
fn find_tool(tool: &str) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.extend(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from));
    dirs.into_iter().map(|d| d.join(tool)).find(|p| p.is_file())
}

/// Panics (never skips) when the environment cannot run these tests, saying what is missing.
fn require_environment() {
    // SAFETY: geteuid has no preconditions and touches no memory.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "these tests attach loop devices and mount filesystems: run them as root"
    );
    assert!(
        Path::new("/dev/fuse").exists(),
        "/dev/fuse is missing: `raidctl attach` serves the array through FUSE (modprobe fuse)"
    );
    for (tool, package) in [
        ("losetup", "mount"),
        ("mount", "mount"),
        ("umount", "mount"),
        ("mkfs.ext4", "e2fsprogs"),
        ("e2fsck", "e2fsprogs"),
        ("dd", "coreutils"),
        ("sha256sum", "coreutils"),
    ] {
        assert!(
            find_tool(tool).is_some(),
            "`{tool}` is not installed: these tests need it (Debian/Ubuntu: apt-get install -y {package})"
        );
    }
}

/// The sha256 of `data`, in hex (sha256sum reads it on stdin).
fn sha256_of(data: &[u8]) -> String {
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot run sha256sum");
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

// ---------------------------------------------------------------------------------------------
// What the kernel has: mounts (per /proc/self/mountinfo) and loop devices (per /sys/block)
// ---------------------------------------------------------------------------------------------

/// Undoes mountinfo's octal escapes (space is \040, tab \011, newline \012, backslash \134).
fn unescape_mountinfo(field: &str) -> String {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// One line of /proc/self/mountinfo.
#[derive(Debug, Clone)]
struct MountEntry {
    point: String,
    fstype: String,
    source: String,
}

fn mounts() -> Vec<MountEntry> {
    let text = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split(' ').collect();
            let sep = f.iter().position(|x| *x == "-")?;
            Some(MountEntry {
                point: unescape_mountinfo(f.get(4)?),
                fstype: f.get(sep + 1)?.to_string(),
                source: unescape_mountinfo(f.get(sep + 2)?),
            })
        })
        .collect()
}

fn under(path: &str, dir: &Path) -> bool {
    let d = s(dir);
    path == d || path.starts_with(&format!("{d}/"))
}

/// Mounts whose mount point is `dir` or below it.
fn mounts_under(dir: &Path) -> Vec<MountEntry> {
    mounts()
        .into_iter()
        .filter(|m| under(&m.point, dir))
        .collect()
}

fn is_mount_point(dir: &Path) -> bool {
    mounts().iter().any(|m| m.point == s(dir))
}

/// Every attached loop device and its backing file: ("/dev/loopN", path).
fn loop_devices() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for entry in fs::read_dir("/sys/block").into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with("loop") {
            continue;
        }
        if let Ok(b) = fs::read_to_string(entry.path().join("loop/backing_file")) {
            out.push((format!("/dev/{name}"), b.trim_end_matches('\n').to_string()));
        }
    }
    out.sort();
    out
}

fn backing_file(device: &str) -> Option<String> {
    loop_devices()
        .into_iter()
        .find(|(d, _)| d == device)
        .map(|(_, b)| b)
}

// ---------------------------------------------------------------------------------------------
// The harness: one array, its run directory, its block device, its mount point
// ---------------------------------------------------------------------------------------------

/// One array under test. Dropping it undoes everything (see the module documentation).
struct Harness {
    /// The test's directory (canonical: the daemon reports canonical member paths).
    dir: PathBuf,
    run_dir: PathBuf,
    name: String,
    /// Active members, then spares: absolute paths, exactly as given to assemble and inject.
    members: Vec<String>,
    spares: Vec<String>,
    /// Where the test mounts ext4.
    mnt: PathBuf,
    /// Loop devices `raidctl attach` handed out.
    devices: Vec<String>,
    /// Daemon pids seen (for the kill -9 fallback).
    pids: Vec<u32>,
    // Last: removed after Drop::drop has cleaned up what lives inside it.
    _tmp: tempfile::TempDir,
}

/// How to create the array of a test.
struct Spec<'a> {
    name: &'a str,
    level: &'a str,
    members: usize,
    spares: usize,
    size: &'a str,
    extra: &'a [&'a str],
    /// Run directory and mount point names inside the test directory.
    run_sub: &'a str,
    mnt_sub: &'a str,
}

impl<'a> Spec<'a> {
    fn new(name: &'a str, level: &'a str, members: usize, spares: usize, size: &'a str) -> Self {
        Spec {
            name,
            level,
            members,
            spares,
            size,
            extra: &[],
            run_sub: "run",
            mnt_sub: "mnt",
        }
    }
}

impl Harness {
    /// Makes the directories and `raidctl create`s the array (member files of `size`).
    fn create(spec: &Spec) -> Harness {
        require_environment();
        let tmp = tempfile::Builder::new()
            .prefix("attach-")
            .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
            .expect("cannot create a temporary directory");
        let dir = fs::canonicalize(tmp.path()).expect("canonicalize the temporary directory");
        let run_dir = dir.join(spec.run_sub);
        let mnt = dir.join(spec.mnt_sub);
        fs::create_dir_all(&mnt).expect("mkdir mount point");
        let members: Vec<String> = (0..spec.members)
            .map(|i| s(&dir.join(format!("m{i}"))))
            .collect();
        let spares: Vec<String> = (0..spec.spares)
            .map(|i| s(&dir.join(format!("s{i}"))))
            .collect();
        let h = Harness {
            dir,
            run_dir,
            name: spec.name.to_string(),
            members,
            spares,
            mnt,
            devices: Vec::new(),
            pids: Vec::new(),
            _tmp: tmp,
        };
        let mut args = vec![
            "create", spec.name, "--level", spec.level, "--chunk", "64K", "--size", spec.size,
        ];
        args.extend_from_slice(spec.extra);
        for sp in &h.spares {
            args.extend(["--spare", sp.as_str()]);
        }
        args.extend(h.members.iter().map(String::as_str));
        h.raidctl(&args).ok();
        h
    }

    fn raidctl_command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_raidctl"));
        c.args(args)
            .env("RAIDCTL_RUN_DIR", &self.run_dir)
            .env_remove("RAIDCTL_LOG")
            .current_dir(&self.dir);
        c
    }

    fn raidctl(&self, args: &[&str]) -> Ran {
        run(self.raidctl_command(args))
    }

    /// Every member file, active ones first, then spares.
    fn all_members(&self) -> Vec<String> {
        self.members.iter().chain(&self.spares).cloned().collect()
    }

    /// `raidctl assemble NAME <members and spares>`; returns once the array is served.
    fn assemble(&mut self) {
        let devices = self.all_members();
        let mut args = vec!["assemble", self.name.as_str()];
        args.extend(devices.iter().map(String::as_str));
        let ran = self.raidctl(&args);
        if let Some(pid) = self.pid_from_file() {
            self.pids.push(pid);
        }
        assert!(
            ran.success(),
            "assemble failed:\n{}\n  daemon log: {}",
            ran.describe(),
            self.log_tail()
        );
        let pid = self.running_pid();
        assert!(
            pid.is_some_and(process_alive),
            "assemble succeeded but no daemon holds {}",
            self.pid_file().display()
        );
    }

    fn pid_file(&self) -> PathBuf {
        self.run_dir.join(format!("{}.pid", self.name))
    }

    fn pid_from_file(&self) -> Option<u32> {
        fs::read_to_string(self.pid_file())
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// The daemon's pid while one holds the lock on NAME.pid (as raidctl itself decides).
    fn running_pid(&self) -> Option<u32> {
        let file = fs::File::open(self.pid_file()).ok()?;
        // SAFETY: flock on a descriptor we own; no memory is passed.
        let free = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) } == 0;
        if free {
            return None;
        }
        Some(self.pid_from_file().unwrap_or(0))
    }

    fn fuse_dir(&self) -> PathBuf {
        self.run_dir.join(format!("{}.fuse", self.name))
    }

    fn fuse_file(&self) -> PathBuf {
        self.fuse_dir().join(&self.name)
    }

    fn log_tail(&self) -> String {
        let text = fs::read_to_string(self.run_dir.join(format!("{}.log", self.name)))
            .unwrap_or_else(|e| format!("(no log: {e})"));
        tail(&text, 4000).to_string()
    }

    fn status(&self) -> Value {
        let ran = self.raidctl(&["status", &self.name, "--json"]);
        assert!(
            ran.success(),
            "status failed:\n{}\n  daemon log: {}",
            ran.describe(),
            self.log_tail()
        );
        serde_json::from_str(&ran.stdout)
            .unwrap_or_else(|e| panic!("status --json is not JSON ({e}):\n{}", ran.stdout))
    }

    /// `raidctl attach NAME`: stdout must be exactly one line, a /dev/loopN block device.
    fn attach(&mut self) -> String {
        let ran = self.raidctl(&["attach", &self.name]);
        assert!(
            ran.success(),
            "attach failed:\n{}\n  daemon log: {}",
            ran.describe(),
            self.log_tail()
        );
        let dev = ran.stdout.trim_end_matches('\n').to_string();
        assert!(
            !dev.contains('\n') && ran.stdout == format!("{dev}\n"),
            "attach must print exactly one line (the device) on stdout:\n{}",
            ran.describe()
        );
        let number = dev.strip_prefix("/dev/loop").unwrap_or_default();
        assert!(
            !number.is_empty() && number.bytes().all(|b| b.is_ascii_digit()),
            "attach printed {dev:?}, expected /dev/loopN:\n{}",
            ran.describe()
        );
        self.devices.push(dev.clone());
        let meta = fs::metadata(&dev).unwrap_or_else(|e| panic!("{dev} does not exist: {e}"));
        assert!(
            meta.file_type().is_block_device(),
            "{dev} is not a block device"
        );
        assert_eq!(
            backing_file(&dev).as_deref(),
            Some(s(&self.fuse_file()).as_str()),
            "{dev} should be a loop device on the FUSE file"
        );
        assert!(
            is_mount_point(&self.fuse_dir()),
            "attach succeeded but {} is not mounted",
            self.fuse_dir().display()
        );
        dev
    }

    /// `raidctl detach NAME`, which must succeed and leave neither loop device nor FUSE mount.
    fn detach(&mut self, dev: &str) {
        let ran = self.raidctl(&["detach", &self.name]);
        assert!(
            ran.success(),
            "detach failed:\n{}\n  daemon log: {}",
            ran.describe(),
            self.log_tail()
        );
        // Per /sys (losetup -a opens every loop device, which would disturb other tests).
        assert_ne!(
            backing_file(dev),
            Some(s(&self.fuse_file())),
            "after detach, {dev} is still a loop device on the FUSE file\n  daemon log: {}",
            self.log_tail()
        );
        assert!(
            !is_mount_point(&self.fuse_dir()),
            "after detach, {} is still mounted",
            self.fuse_dir().display()
        );
        let st = self.status();
        assert_eq!(
            st["attachments"].as_array().map(Vec::len),
            Some(0),
            "after detach, status still shows attachments:\n{st:#}"
        );
    }

    /// `raidctl stop NAME`, which must succeed and leave nothing behind.
    fn stop(&mut self) {
        let pid = self.running_pid();
        let ran = self.raidctl(&["stop", &self.name]);
        assert!(
            ran.success(),
            "stop failed:\n{}\n  daemon log: {}",
            ran.describe(),
            self.log_tail()
        );
        self.assert_stopped(pid);
    }

    /// The daemon (pid) is gone and nothing of the test is mounted or attached.
    fn assert_stopped(&self, pid: Option<u32>) {
        if let Some(pid) = pid.filter(|&p| p > 0) {
            assert!(
                wait_until_dead(pid, Duration::from_secs(30)),
                "the daemon (pid {pid}) is still running after stop"
            );
        }
        assert_eq!(
            self.running_pid(),
            None,
            "a daemon still holds the pid file"
        );
        self.assert_nothing_left("after stop");
    }

    fn mkfs(&self, dev: &str) {
        run(cmd("mkfs.ext4", &["-q", "-F", dev])).ok();
    }

    fn mount(&self, dev: &str) {
        run(cmd("mount", &[dev, &s(&self.mnt)])).ok();
    }

    fn umount(&self) {
        run(cmd("umount", &[&s(&self.mnt)])).ok();
    }

    fn fsck(&self, dev: &str) {
        let ran = run(cmd("e2fsck", &["-fn", dev]));
        assert!(
            ran.success(),
            "e2fsck -fn {dev} must find a clean filesystem:\n{}\n  daemon log: {}",
            ran.describe(),
            self.log_tail()
        );
    }

    /// Whether a loop device belongs to this test: its backing file is under the test's
    /// directory, or it is a device attach handed out and still points at a file named after
    /// the array (a lazily unmounted FUSE file no longer shows its full path).
    fn owns_loop(&self, dev: &str, backing: &str) -> bool {
        under(backing, &self.dir)
            || (self.devices.iter().any(|d| d == dev)
                && backing.ends_with(&format!("/{}", self.name)))
    }

    /// What of this test is still mounted or attached, described.
    fn leftovers(&self) -> Vec<String> {
        let mut out: Vec<String> = mounts_under(&self.dir)
            .iter()
            .map(|m| format!("mount {} ({} from {})", m.point, m.fstype, m.source))
            .collect();
        for (dev, backing) in loop_devices() {
            if self.owns_loop(&dev, &backing) {
                out.push(format!("loop device {dev} on {backing}"));
            }
        }
        out
    }

    fn assert_nothing_left(&self, context: &str) {
        let left = self.leftovers();
        assert!(
            left.is_empty(),
            "{context}: still mounted or attached:\n  {}\n  daemon log: {}",
            left.join("\n  "),
            self.log_tail()
        );
    }

    /// Undoes everything; never panics (it also runs while a failed test unwinds).
    fn cleanup(&mut self) {
        let quiet = |program: &str, args: &[&str]| {
            let _ = run_with_timeout(cmd(program, args), Duration::from_secs(60));
        };
        // 1. Filesystems the test mounted (everything under the directory but the FUSE mount).
        let fuse_dir = s(&self.fuse_dir());
        for m in mounts_under(&self.dir).iter().rev() {
            if m.point != fuse_dir {
                quiet("umount", &["-l", &m.point]);
            }
        }
        // 2. The daemon's own way out.
        if self.running_pid().is_some() {
            for what in ["detach", "stop"] {
                let mut c = self.raidctl_command(&[what, &self.name]);
                c.stdin(Stdio::null());
                let _ = run_with_timeout(c, CLEANUP_TIMEOUT);
            }
        }
        // 3. kill -9 whatever daemon of ours is still alive.
        if let Some(pid) = self.pid_from_file() {
            self.pids.push(pid);
        }
        for &pid in &self.pids {
            if pid > 0 && process_alive(pid) && is_raidctl(pid) {
                // SAFETY: plain syscall on the pid of a daemon this test started.
                unsafe {
                    libc::kill(pid as i32, libc::SIGKILL);
                }
                wait_until_dead(pid, Duration::from_secs(10));
            }
        }
        // 4. Loop devices on files of the test (before the FUSE mount goes: the path shows).
        for (dev, backing) in loop_devices() {
            if self.owns_loop(&dev, &backing) {
                quiet("losetup", &["-d", &dev]);
            }
        }
        // 5. The FUSE mount and anything else still mounted under the directory.
        for m in mounts_under(&self.dir).iter().rev() {
            quiet("umount", &["-l", &m.point]);
            if is_mount_point(Path::new(&m.point)) {
                quiet("fusermount3", &["-u", "-z", &m.point]);
            }
        }
    }

    /// Ends a test: runs the cleanup, then asserts nothing of the test remains.
    fn finish(mut self) {
        self.cleanup();
        self.assert_nothing_left("after the test's cleanup");
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.cleanup();
    }
}

// ---------------------------------------------------------------------------------------------
// Files on the mounted filesystem
// ---------------------------------------------------------------------------------------------

/// Writes FILES files of 1 KiB .. 512 KiB of seeded random data under `root` (each written
/// with std::fs and fsynced; the directory synced at the end), calling `midway` once after
/// half of them, while the next file's data is still only in the page cache. Any error fails.
/// Returns each file's sha256 by relative path.
fn write_files(root: &Path, seed: u64, mut midway: impl FnMut()) -> BTreeMap<String, String> {
    let mut rng = Rng::new(seed);
    let mut expected = BTreeMap::new();
    for i in 0..FILES {
        let rel = format!("d{}/f{i:03}.bin", i % 7);
        let path = root.join(&rel);
        fs::create_dir_all(path.parent().expect("parent")).expect("mkdir on the filesystem");
        let len = rng.range(KIB, 512 * KIB) as usize;
        let data = rng.bytes(len);
        let mut f = fs::File::create(&path)
            .unwrap_or_else(|e| panic!("create {} (file {i}): {e}", path.display()));
        f.write_all(&data)
            .unwrap_or_else(|e| panic!("write {} (file {i}): {e}", path.display()));
        if i == FILES / 2 {
            midway();
        }
        f.sync_all()
            .unwrap_or_else(|e| panic!("fsync {} (file {i}): {e}", path.display()));
        expected.insert(rel, sha256_of(&data));
    }
    syncfs(root).unwrap_or_else(|e| panic!("syncfs {}: {e}", root.display()));
    expected
}

fn syncfs(root: &Path) -> std::io::Result<()> {
    let dir = fs::File::open(root)?;
    // SAFETY: syncfs on a descriptor we own.
    if unsafe { libc::syncfs(dir.as_raw_fd()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Every file under `root` has the recorded sha256 (one sha256sum run over all of them).
fn verify_files(root: &Path, expected: &BTreeMap<String, String>) {
    let mut c = cmd("sha256sum", &["--"]);
    c.args(expected.keys()).current_dir(root);
    let ran = run(c);
    let mut got = BTreeMap::new();
    for line in ran.stdout.lines() {
        if let Some((hash, name)) = line.split_once("  ") {
            got.insert(name.to_string(), hash.to_string());
        }
    }
    let bad: Vec<String> = expected
        .iter()
        .filter_map(|(name, hash)| match got.get(name) {
            Some(h) if h == hash => None,
            Some(h) => Some(format!("{name}: sha256 {h}, expected {hash}")),
            None => Some(format!("{name}: unreadable")),
        })
        .collect();
    assert!(
        bad.is_empty() && ran.success(),
        "{} of {} files do not verify:\n  {}\n{}",
        bad.len(),
        expected.len(),
        bad.iter()
            .take(20)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n  "),
        ran.describe()
    );
}

/// The member entry of `path` in a status report.
fn member<'v>(status: &'v Value, path: &str) -> &'v Value {
    status["members"]
        .as_array()
        .and_then(|ms| ms.iter().find(|m| m["path"].as_str() == Some(path)))
        .unwrap_or_else(|| panic!("status does not list member {path}:\n{status:#}"))
}

/// Status lists exactly one attachment: `dev`, through FUSE and a loop device.
fn assert_attached(h: &Harness, status: &Value, dev: &str) {
    let atts = status["attachments"]
        .as_array()
        .unwrap_or_else(|| panic!("status has no \"attachments\" array:\n{status:#}"));
    assert_eq!(atts.len(), 1, "one attachment expected:\n{status:#}");
    assert_eq!(atts[0]["device"].as_str(), Some(dev), "{status:#}");
    assert_eq!(atts[0]["method"].as_str(), Some("fuse+loop"), "{status:#}");
    assert_eq!(
        atts[0]["file"].as_str(),
        Some(s(&h.fuse_file()).as_str()),
        "{status:#}"
    );
}

/// Status of an attached array: healthy, or (with `victim`) degraded with `victim` faulty and
/// every other active member in sync.
fn check_array_status(h: &Harness, dev: &str, victim: Option<&str>, when: &str) {
    let st = h.status();
    assert_attached(h, &st, dev);
    let Some(v) = victim else {
        assert!(
            matches!(st["state"].as_str(), Some("clean" | "active")),
            "{when}: a healthy array is clean or active:\n{st:#}"
        );
        for m in &h.members {
            assert_eq!(
                member(&st, m)["state"].as_str(),
                Some("in_sync"),
                "{when}: {m}:\n{st:#}"
            );
        }
        return;
    };
    assert_eq!(
        st["state"].as_str(),
        Some("degraded"),
        "{when}: the array lost {v}:\n{st:#}"
    );
    assert_eq!(
        member(&st, v)["state"].as_str(),
        Some("faulty"),
        "{when}: {v} vanished:\n{st:#}"
    );
    for m in h.members.iter().filter(|m| *m != v) {
        assert_eq!(
            member(&st, m)["state"].as_str(),
            Some("in_sync"),
            "{when}: {m}:\n{st:#}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 1. and 2. ext4 on an attached array, optionally with a member vanishing mid-writes
// ---------------------------------------------------------------------------------------------

/// Create, assemble, attach, mkfs, mount, write FILES files (with `vanish`: the member of that
/// index vanishes after half of them), sync, umount, e2fsck, mount, verify, check status,
/// umount, detach, stop.
fn ext4_files(spec: &Spec, vanish: Option<usize>, seed: u64) {
    let mut h = Harness::create(spec);
    h.assemble();
    let dev = h.attach();
    assert_attached(&h, &h.status(), &dev);
    h.mkfs(&dev);
    h.mount(&dev);

    let victim = vanish.map(|i| h.members[i].clone());
    if victim.is_some() && !h.spares.is_empty() {
        // The spare takes the vanished member's slot and is rebuilt online. Held to 1000 KiB/s
        // (md's default minimum), the rebuild of these members cannot finish before the checks
        // below, so "degraded" is what status must say throughout.
        h.raidctl(&[
            "rebuild",
            &h.name,
            "--speed-min",
            "1000",
            "--speed-max",
            "1000",
        ])
        .ok();
    }
    let mnt = h.mnt.clone();
    let expected = write_files(&mnt, seed, || {
        if let Some(v) = &victim {
            let ran = h.raidctl(&["inject", &h.name, v, "--vanish"]);
            assert!(ran.success(), "inject --vanish failed:\n{}", ran.describe());
        }
    });
    check_array_status(&h, &dev, victim.as_deref(), "right after the writes");

    h.umount();
    h.fsck(&dev);
    h.mount(&dev);
    verify_files(&h.mnt, &expected);
    check_array_status(&h, &dev, victim.as_deref(), "after e2fsck and verification");
    let log = h.log_tail();
    assert!(!log.contains("panicked"), "the daemon panicked:\n{log}");

    h.umount();
    h.detach(&dev);
    h.stop();
    h.finish();
}

#[test]
fn raid5_ext4_through_attach() {
    let spec = Spec::new("at-r5", "5", 4, 1, "96M");
    ext4_files(&spec, None, 1);
}

#[test]
fn raid5_member_vanishes_during_writes() {
    let spec = Spec::new("at-r5v", "5", 4, 1, "96M");
    ext4_files(&spec, Some(2), 2);
}

#[test]
fn raid1_member_vanishes_during_writes() {
    let spec = Spec::new("at-r1v", "1", 2, 1, "96M");
    ext4_files(&spec, Some(0), 3);
}

#[test]
fn raid10_member_vanishes_during_writes() {
    let spec = Spec {
        extra: &["--layout", "n2"],
        ..Spec::new("at-r10v", "10", 4, 0, "64M")
    };
    ext4_files(&spec, Some(1), 4);
}

// ---------------------------------------------------------------------------------------------
// 3. RAID0 loses a member: I/O errors, the daemon stays up and says "failed"
// ---------------------------------------------------------------------------------------------

#[test]
fn raid0_member_vanishes_io_fails_and_daemon_stays_up() {
    let mut h = Harness::create(&Spec::new("at-r0", "0", 3, 0, "64M"));
    h.assemble();
    let pid = h.running_pid().expect("daemon running");
    let dev = h.attach();
    h.mkfs(&dev);
    h.mount(&dev);
    // Some data first, which the array serves fine.
    let mut rng = Rng::new(5);
    for i in 0..10 {
        let len = rng.range(KIB, 512 * KIB) as usize;
        let data = rng.bytes(len);
        fs::write(h.mnt.join(format!("before{i}")), &data).expect("write before the fault");
    }
    syncfs(&h.mnt).expect("syncfs before the fault");

    let victim = h.members[1].clone();
    h.raidctl(&["inject", &h.name, &victim, "--vanish"]).ok();

    // 4 MiB (many 64K chunks) certainly touches every member: the fsync must fail with EIO.
    let data = rng.bytes(4 << 20);
    let path = h.mnt.join("after");
    let result =
        fs::File::create(&path).and_then(|mut f| f.write_all(&data).and_then(|()| f.sync_all()));
    match result {
        Ok(()) => panic!(
            "writing and fsyncing {} succeeded on a RAID0 missing a member\n  daemon log: {}",
            path.display(),
            h.log_tail()
        ),
        Err(e) => assert_eq!(
            e.raw_os_error(),
            Some(libc::EIO),
            "the filesystem should see EIO, got {e}"
        ),
    }
    // Direct reads of the device itself fail too.
    let ran = run(cmd(
        "dd",
        &[
            &format!("if={dev}"),
            "of=/dev/null",
            "bs=1M",
            "count=8",
            "iflag=direct",
        ],
    ));
    assert!(
        !ran.success() && ran.stderr.contains("Input/output error"),
        "dd iflag=direct on {dev} should fail with an I/O error:\n{}",
        ran.describe()
    );

    // The daemon stays up and tells what happened.
    assert!(process_alive(pid), "the daemon died:\n{}", h.log_tail());
    let st = h.status();
    assert_eq!(st["state"].as_str(), Some("failed"), "{st:#}");
    assert_eq!(
        member(&st, &victim)["state"].as_str(),
        Some("faulty"),
        "{st:#}"
    );
    assert_attached(&h, &st, &dev);

    // Cleanup still works: umount (lazily if need be), detach, stop.
    let ran = run(cmd("umount", &[&s(&h.mnt)]));
    if !ran.success() {
        run(cmd("umount", &["-l", &s(&h.mnt)])).ok();
    }
    assert!(!is_mount_point(&h.mnt), "{} still mounted", h.mnt.display());
    h.detach(&dev);
    // Stopping a failed array may report the failure, but the daemon must go away.
    let ran = h.raidctl(&["stop", &h.name]);
    if !ran.success() {
        assert!(
            ran.stderr.trim().lines().count() == 1 && ran.stderr.contains("failed"),
            "stop of a failed array: one stderr line saying it failed expected:\n{}",
            ran.describe()
        );
    }
    h.assert_stopped(Some(pid));
    h.finish();
}

// ---------------------------------------------------------------------------------------------
// 4. detach and stop are refused while the device is mounted
// ---------------------------------------------------------------------------------------------

/// `raidctl WHAT NAME` must be refused: non-zero exit, nothing on stdout, one stderr line
/// naming the mount point; and the daemon, the attachment and the FUSE mount all stay.
fn assert_refused_while_mounted(h: &Harness, what: &str, dev: &str, pid: u32) {
    let ran = h.raidctl(&[what, &h.name]);
    let line = ran.stderr.trim();
    assert!(
        !ran.success() && ran.status.is_some(),
        "{what} while mounted must be refused:\n{}",
        ran.describe()
    );
    assert!(
        !line.is_empty() && !line.contains('\n'),
        "{what}: exactly one line on stderr expected:\n{}",
        ran.describe()
    );
    assert!(
        line.contains(&s(&h.mnt)),
        "{what}: the refusal should name the mount point {}:\n{}",
        h.mnt.display(),
        ran.describe()
    );
    assert!(
        ran.stdout.is_empty(),
        "{what}: a refused command prints nothing on stdout:\n{}",
        ran.describe()
    );
    assert!(
        process_alive(pid) && h.running_pid() == Some(pid),
        "{what}: the daemon must still be running:\n{}",
        h.log_tail()
    );
    assert_attached(h, &h.status(), dev);
    assert!(
        is_mount_point(&h.mnt) && is_mount_point(&h.fuse_dir()),
        "{what}: the filesystem and the FUSE mount must stay"
    );
    assert_eq!(backing_file(dev), Some(s(&h.fuse_file())), "{what}: {dev}");
}

#[test]
fn detach_and_stop_refused_while_mounted() {
    let mut h = Harness::create(&Spec::new("at-busy", "1", 2, 0, "64M"));
    h.assemble();
    let pid = h.running_pid().expect("daemon running");
    let dev = h.attach();
    // A second attach is answered with the same device.
    let again = h.raidctl(&["attach", &h.name]).ok();
    assert_eq!(again.stdout, format!("{dev}\n"), "{}", again.describe());
    h.mkfs(&dev);
    h.mount(&dev);
    fs::write(h.mnt.join("kept"), b"still here").expect("write on the filesystem");

    assert_refused_while_mounted(&h, "detach", &dev, pid);
    assert_refused_while_mounted(&h, "stop", &dev, pid);
    // The filesystem is still served after the refusals.
    syncfs(&h.mnt).expect("syncfs after the refusals");
    assert_eq!(fs::read(h.mnt.join("kept")).expect("read"), b"still here");

    h.umount();
    h.detach(&dev);
    let listed = run(cmd("losetup", &["-a"])).ok();
    assert!(
        !listed
            .stdout
            .lines()
            .any(|l| l.starts_with(&format!("{dev}:")) && l.contains(&s(&h.fuse_file()))),
        "after detach, losetup -a still lists {dev} on the FUSE file:\n{}",
        listed.stdout
    );
    assert!(
        process_alive(pid),
        "detach must not stop the daemon:\n{}",
        h.log_tail()
    );

    // Attach again: a loop device again, with the filesystem intact.
    let dev2 = h.attach();
    assert_attached(&h, &h.status(), &dev2);
    h.fsck(&dev2);
    h.mount(&dev2);
    assert_eq!(fs::read(h.mnt.join("kept")).expect("read"), b"still here");
    h.umount();

    // Stop while attached but not mounted: detaches and stops.
    h.stop();
    h.finish();
}

/// The loop device is not mounted but held open by a process (as `losetup -a`, blkid or any
/// reader does for a moment). `detach` may refuse, or succeed; if it says it detached, then
/// once the holder lets go neither the loop device nor the FUSE mount may remain.
#[test]
fn detach_while_the_device_is_held_open() {
    let mut h = Harness::create(&Spec::new("at-held", "1", 2, 0, "64M"));
    h.assemble();
    let dev = h.attach();
    let holder = fs::File::open(&dev).unwrap_or_else(|e| panic!("open {dev}: {e}"));
    let ran = h.raidctl(&["detach", &h.name]);
    if ran.success() {
        drop(holder);
        // Settle guard only: a pending loop autoclear completes when the holder closes.
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline
            && (backing_file(&dev) == Some(s(&h.fuse_file())) || is_mount_point(&h.fuse_dir()))
        {
            thread::sleep(Duration::from_millis(50));
        }
        let fuse_state = match fs::metadata(h.fuse_file()) {
            Ok(_) => "still served".to_string(),
            Err(e) => format!("{e}"),
        };
        assert!(
            !is_mount_point(&h.fuse_dir()) && backing_file(&dev) != Some(s(&h.fuse_file())),
            "detach reported success while {dev} was held open, but after the holder closed \
             it: loop device {dev} backing file {:?}; FUSE mount {} still mounted: {} \
             (its file: {fuse_state})\n{}\n  daemon log: {}",
            backing_file(&dev),
            h.fuse_dir().display(),
            is_mount_point(&h.fuse_dir()),
            ran.describe(),
            h.log_tail()
        );
    } else {
        let line = ran.stderr.trim();
        assert!(
            !line.is_empty() && !line.contains('\n') && line.contains(&dev),
            "a refused detach says why on one stderr line naming {dev}:\n{}",
            ran.describe()
        );
        assert_attached(&h, &h.status(), &dev);
        drop(holder);
        h.detach(&dev);
    }
    h.stop();
    h.finish();
}

// ---------------------------------------------------------------------------------------------
// 5. kill -9 while attached: the next daemon cleans up
// ---------------------------------------------------------------------------------------------

/// Attach, put files on ext4, umount, kill -9 the daemon; the stale FUSE mount and loop device
/// stay. A new `assemble` must clean them up; attach works again and the files are intact.
fn kill9_while_attached(spec: &Spec) {
    let mut h = Harness::create(spec);
    h.assemble();
    let old_pid = h.running_pid().expect("daemon running");
    let dev = h.attach();
    h.mkfs(&dev);
    h.mount(&dev);
    let mut rng = Rng::new(6);
    let mut expected = BTreeMap::new();
    for i in 0..20 {
        let len = rng.range(KIB, 512 * KIB) as usize;
        let data = rng.bytes(len);
        let rel = format!("f{i:02}");
        fs::write(h.mnt.join(&rel), &data).expect("write");
        expected.insert(rel, sha256_of(&data));
    }
    h.umount();

    // SAFETY: plain syscall on the daemon this test started.
    unsafe {
        libc::kill(old_pid as i32, libc::SIGKILL);
    }
    assert!(
        wait_until_dead(old_pid, Duration::from_secs(30)),
        "the daemon survived kill -9"
    );
    // What the dead daemon left: the test is only meaningful if this is there to clean up.
    assert!(
        is_mount_point(&h.fuse_dir()),
        "expected the dead FUSE mount {} to remain after kill -9",
        h.fuse_dir().display()
    );
    assert_eq!(
        backing_file(&dev),
        Some(s(&h.fuse_file())),
        "expected {dev} to remain on the dead FUSE file after kill -9"
    );

    h.assemble();
    let new_pid = h.running_pid().expect("daemon running");
    assert_ne!(new_pid, old_pid);
    assert!(
        !is_mount_point(&h.fuse_dir()),
        "the new daemon left the dead FUSE mount {} in place\n  daemon log: {}",
        h.fuse_dir().display(),
        h.log_tail()
    );
    let stale: Vec<(String, String)> = loop_devices()
        .into_iter()
        .filter(|(d, b)| h.owns_loop(d, b))
        .collect();
    assert!(
        stale.is_empty(),
        "the new daemon left loop devices of the old one: {stale:?}\n  daemon log: {}",
        h.log_tail()
    );
    assert_eq!(
        h.status()["attachments"].as_array().map(Vec::len),
        Some(0),
        "a new daemon starts detached"
    );

    let dev2 = h.attach();
    assert_attached(&h, &h.status(), &dev2);
    h.fsck(&dev2);
    h.mount(&dev2);
    verify_files(&h.mnt, &expected);
    h.umount();
    h.stop();
    h.finish();
}

#[test]
fn kill_9_while_attached_next_assemble_cleans_up() {
    kill9_while_attached(&Spec::new("at-kill", "5", 4, 0, "64M"));
}

// ---------------------------------------------------------------------------------------------
// 6. Paths with a space: /proc/self/mountinfo escapes it as \040
// ---------------------------------------------------------------------------------------------

#[test]
fn refusal_names_a_mount_point_that_contains_a_space() {
    let mut h = Harness::create(&Spec {
        mnt_sub: "mnt point",
        ..Spec::new("at-space", "1", 2, 0, "64M")
    });
    h.assemble();
    let pid = h.running_pid().expect("daemon running");
    let dev = h.attach();
    h.mkfs(&dev);
    h.mount(&dev);
    assert_refused_while_mounted(&h, "detach", &dev, pid);
    h.umount();
    h.detach(&dev);
    h.stop();
    h.finish();
}

#[test]
fn kill_9_cleanup_with_a_space_in_the_run_directory() {
    kill9_while_attached(&Spec {
        run_sub: "run dir",
        ..Spec::new("at-kill-sp", "1", 2, 0, "64M")
    });
}
