//! Integration tests of failures, hot spares and rebuilds, driven through the `raidctl` binary
//! and real NBD clients: `fail` / `remove` / `add` / `rebuild --wait` while fio writes with
//! verification, a `kill -9` of the daemon in the middle of a rebuild (resumed from its
//! checkpoint), `inject` fault drills (read errors corrected, a write error that fails a member,
//! a vanished disk), a second failure that fails a RAID5, `check` / `check --repair` of flipped
//! bytes, and `monitor` (a `--program` hook and `--json`).
//!
//! Every test works in its own temporary directory under cargo's target tmp dir with its own
//! run directory (`RAIDCTL_RUN_DIR`). A [`Harness`] guard undoes everything when dropped, also
//! when the test fails: background children (fio, monitors) are killed, `raidctl stop` is
//! asked, and a daemon still alive is killed (SIGKILL of the pid in RUN/NAME.pid).
//!
//! Needs root, mdadm, nbdcopy, fio (nbd engine) and qemu-io: a missing one fails the test
//! saying what to install. Nothing here asserts a duration; timeouts only stop hangs.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

mod common;
use common::{is_raidctl, process_alive, s, tail, wait_until_dead};

const MIB: u64 = 1 << 20;
/// Hang guard for one external command (never a performance expectation).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(300);
/// Hang guard for waiting on a state the array must reach.
const STATE_TIMEOUT: Duration = Duration::from_secs(180);
/// Hang guard for the commands of the cleanup.
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(60);
/// The region fio writes (and verifies) at the end of the export.
const FIO_BYTES: u64 = 16 * MIB;

// ---------------------------------------------------------------------------------------------
// A tiny seeded RNG (xorshift64*): reproducible contents
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
    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let x = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&x[..chunk.len()]);
        }
    }
}

/// Writes `len` bytes of seeded random data to `path` (created or truncated).
fn fill_random(path: &Path, len: u64, seed: u64) {
    let mut rng = Rng::new(seed);
    let mut f = File::create(path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    let mut buf = vec![0u8; MIB as usize];
    let mut left = len;
    while left > 0 {
        let n = left.min(MIB) as usize;
        rng.fill(&mut buf[..n]);
        f.write_all(&buf[..n])
            .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        left -= n as u64;
    }
    f.sync_all().expect("sync the data file");
}

/// The first offset in `start..end` where the two files differ (a short file differs where it
/// ends).
fn first_difference(a: &Path, b: &Path, start: u64, end: u64) -> Option<u64> {
    let open = |p: &Path| File::open(p).unwrap_or_else(|e| panic!("open {}: {e}", p.display()));
    let (mut fa, mut fb) = (open(a), open(b));
    fa.seek(SeekFrom::Start(start)).expect("seek");
    fb.seek(SeekFrom::Start(start)).expect("seek");
    let (mut ba, mut bb) = (vec![0u8; MIB as usize], vec![0u8; MIB as usize]);
    let mut at = start;
    while at < end {
        let n = (end - at).min(MIB) as usize;
        let ra = read_full(&mut fa, &mut ba[..n]);
        let rb = read_full(&mut fb, &mut bb[..n]);
        if let Some(i) = (0..ra.min(rb)).find(|&i| ba[i] != bb[i]) {
            return Some(at + i as u64);
        }
        if ra < n || rb < n {
            return Some(at + ra.min(rb) as u64);
        }
        at += n as u64;
    }
    None
}

fn read_full(f: &mut File, buf: &mut [u8]) -> usize {
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

/// Panics unless `actual` holds what `expected` holds in `start..end`.
fn assert_same_range(expected: &Path, actual: &Path, start: u64, end: u64, context: &str) {
    if let Some(at) = first_difference(expected, actual, start, end) {
        panic!(
            "{context}: {} differs from {} at byte {at} (compared {start}..{end})",
            actual.display(),
            expected.display()
        );
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
    fn code(&self) -> Option<i32> {
        self.status.and_then(|s| s.code())
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

/// Where a tool is on $PATH (plus the sbin directories root has).
fn find_tool(tool: &str) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.extend(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from));
    dirs.into_iter().map(|d| d.join(tool)).find(|p| p.is_file())
}

/// The tool's path; panics (never skips) when it is not installed, saying what to install.
fn require(tool: &str, package: &str) -> PathBuf {
    find_tool(tool).unwrap_or_else(|| {
        panic!("`{tool}` is not installed: these tests need it (Debian/Ubuntu: apt-get install -y {package})")
    })
}

fn require_environment() {
    // SAFETY: geteuid has no preconditions and touches no memory.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "these tests claim member files and run daemons: run them as root"
    );
    for (tool, package) in [
        ("mdadm", "mdadm"),
        ("nbdcopy", "libnbd-bin"),
        ("fio", "fio"),
        ("qemu-io", "qemu-utils"),
    ] {
        require(tool, package);
    }
}

/// Polls `ready` until it returns Some, panicking with `what` (and `context()`) after
/// `timeout` (a hang guard).
fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut ready: impl FnMut() -> Option<T>,
    context: impl Fn() -> String,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = ready() {
            return v;
        }
        if Instant::now() > deadline {
            panic!("gave up waiting for {what}\n{}", context());
        }
        thread::sleep(Duration::from_millis(100));
    }
}

// ---------------------------------------------------------------------------------------------
// mdadm --examine
// ---------------------------------------------------------------------------------------------

/// One device's `mdadm --examine` output, with its "label : value" fields.
struct Examined {
    what: String,
    text: String,
}

impl Examined {
    fn field(&self, label: &str) -> Option<&str> {
        self.text.lines().find_map(|line| {
            let (l, v) = line.split_once(" : ")?;
            (l.trim() == label).then(|| v.trim())
        })
    }
    fn get(&self, label: &str) -> &str {
        self.field(label).unwrap_or_else(|| {
            panic!(
                "{}: no {label:?} line in the output:\n{}",
                self.what, self.text
            )
        })
    }
    fn events(&self) -> u64 {
        self.get("Events")
            .parse()
            .unwrap_or_else(|_| panic!("{}: odd Events line:\n{}", self.what, self.text))
    }
    /// The "Array State" slots, without mdadm's legend.
    fn array_state(&self) -> &str {
        self.get("Array State")
            .split_whitespace()
            .next()
            .unwrap_or_default()
    }
}

fn mdadm_examine(dev: &str) -> Examined {
    let mut c = Command::new(require("mdadm", "mdadm"));
    c.args(["--examine", dev]);
    let ran = run(c);
    assert!(ran.success(), "mdadm --examine failed:\n{}", ran.describe());
    Examined {
        what: format!("mdadm --examine {dev}"),
        text: ran.stdout,
    }
}

// ---------------------------------------------------------------------------------------------
// The harness: one array, its run directory, its daemon and background children
// ---------------------------------------------------------------------------------------------

struct Harness {
    /// The test's directory (canonical: the daemon reports canonical member paths).
    dir: PathBuf,
    run_dir: PathBuf,
    name: String,
    /// Active members in slot order, then spares: absolute paths.
    members: Vec<String>,
    spares: Vec<String>,
    /// Daemon pids seen (for the kill -9 fallback).
    pids: Vec<u32>,
    /// Background children (fio, monitors), killed by the cleanup if still running.
    children: Vec<(String, Child)>,
    // Last: removed after Drop::drop has cleaned up what lives inside it.
    _tmp: tempfile::TempDir,
}

impl Harness {
    /// `raidctl create NAME --level L --chunk 64K --size 96M --spare S... M...`.
    fn create(name: &str, level: &str, members: usize, spares: usize) -> Harness {
        Harness::create_with(name, level, members, spares, &[])
    }

    /// `create` with extra flags (e.g. `--bitmap-chunk 1M`).
    fn create_with(
        name: &str,
        level: &str,
        members: usize,
        spares: usize,
        extra: &[&str],
    ) -> Harness {
        require_environment();
        let tmp = tempfile::Builder::new()
            .prefix("rebuild-")
            .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
            .expect("cannot create a temporary directory");
        let dir = fs::canonicalize(tmp.path()).expect("canonicalize the temporary directory");
        let h = Harness {
            run_dir: dir.join("run"),
            name: name.to_string(),
            members: (0..members)
                .map(|i| s(&dir.join(format!("m{i}"))))
                .collect(),
            spares: (0..spares).map(|i| s(&dir.join(format!("s{i}")))).collect(),
            dir,
            pids: Vec::new(),
            children: Vec::new(),
            _tmp: tmp,
        };
        let mut args = vec![
            "create", name, "--level", level, "--chunk", "64K", "--size", "96M",
        ];
        for sp in &h.spares {
            args.extend(["--spare", sp.as_str()]);
        }
        args.extend(extra);
        args.extend(h.members.iter().map(String::as_str));
        h.raidctl(&args).ok();
        h
    }

    fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }

    fn command(&self, program: &Path, args: &[&str]) -> Command {
        let mut c = Command::new(program);
        c.args(args)
            .env("RAIDCTL_RUN_DIR", &self.run_dir)
            .env_remove("RAIDCTL_LOG")
            .current_dir(&self.dir);
        c
    }

    fn raidctl_command(&self, args: &[&str]) -> Command {
        self.command(Path::new(env!("CARGO_BIN_EXE_raidctl")), args)
    }

    fn raidctl(&self, args: &[&str]) -> Ran {
        run(self.raidctl_command(args))
    }

    /// raidctl with `args`, which must exit 0 (the daemon log is shown if not).
    fn ok(&self, args: &[&str]) -> Ran {
        let ran = self.raidctl(args);
        assert!(
            ran.success(),
            "expected success:\n{}\n  daemon log: {}",
            ran.describe(),
            tail(&self.log(), 4000)
        );
        ran
    }

    fn all_members(&self) -> Vec<String> {
        self.members.iter().chain(&self.spares).cloned().collect()
    }

    /// `raidctl assemble NAME DEV... FLAGS...`, whatever its outcome.
    fn try_assemble(&mut self, devices: &[String], flags: &[&str]) -> Ran {
        let mut args = vec!["assemble", self.name.as_str()];
        args.extend(devices.iter().map(String::as_str));
        args.extend_from_slice(flags);
        let ran = self.raidctl(&args);
        if let Some(pid) = self.pid_from_file() {
            self.pids.push(pid);
        }
        ran
    }

    /// Assembles every member and spare; returns once the array is served.
    fn assemble(&mut self) {
        let devices = self.all_members();
        self.assemble_devices(&devices, &[]);
    }

    fn assemble_devices(&mut self, devices: &[String], flags: &[&str]) {
        let ran = self.try_assemble(devices, flags);
        assert!(
            ran.success(),
            "assemble failed:\n{}\n  daemon log: {}",
            ran.describe(),
            tail(&self.log(), 4000)
        );
        assert!(
            self.running_pid().is_some_and(process_alive),
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
        let file = File::open(self.pid_file()).ok()?;
        // SAFETY: flock on a descriptor we own; no memory is passed.
        let free = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) } == 0;
        if free {
            return None;
        }
        Some(self.pid_from_file().unwrap_or(0))
    }

    fn log(&self) -> String {
        fs::read_to_string(self.run_dir.join(format!("{}.log", self.name)))
            .unwrap_or_else(|e| format!("(no log: {e})"))
    }

    fn uri(&self) -> String {
        format!(
            "nbd+unix:///{}?socket={}",
            self.name,
            s(&self.run_dir.join(format!("{}.sock", self.name)))
        )
    }

    fn status(&self) -> Value {
        let ran = self.raidctl(&["status", &self.name, "--json"]);
        assert!(
            ran.success(),
            "status failed:\n{}\n  daemon log: {}",
            ran.describe(),
            tail(&self.log(), 4000)
        );
        serde_json::from_str(&ran.stdout)
            .unwrap_or_else(|e| panic!("status --json is not JSON ({e}):\n{}", ran.stdout))
    }

    fn size(&self) -> u64 {
        let st = self.status();
        st["size_bytes"]
            .as_u64()
            .unwrap_or_else(|| panic!("status has no size_bytes:\n{st:#}"))
    }

    /// `raidctl stop NAME`, which must succeed; the daemon must be gone afterwards.
    fn stop(&mut self) {
        let pid = self.running_pid();
        self.ok(&["stop", &self.name]);
        self.assert_daemon_gone(pid);
    }

    fn assert_daemon_gone(&self, pid: Option<u32>) {
        if let Some(pid) = pid.filter(|&p| p > 0) {
            assert!(
                wait_until_dead(pid, Duration::from_secs(60)),
                "the daemon (pid {pid}) is still running after stop"
            );
        }
        assert_eq!(
            self.running_pid(),
            None,
            "a daemon still holds the pid file"
        );
    }

    /// `nbdcopy SRC DST` (either may be the export's URI).
    fn nbdcopy(&self, src: &str, dst: &str) {
        let ran = run(self.command(&require("nbdcopy", "libnbd-bin"), &[src, dst]));
        assert!(
            ran.success(),
            "nbdcopy failed:\n{}\n  daemon log: {}",
            ran.describe(),
            tail(&self.log(), 4000)
        );
    }

    /// Reads the whole export into `file`.
    fn read_export(&self, file: &str) -> PathBuf {
        let out = self.path(file);
        let _ = fs::remove_file(&out);
        self.nbdcopy(&self.uri(), &s(&out));
        out
    }

    /// Starts a background child whose stdout and stderr go to DIR/LABEL.out and .err.
    fn spawn(&mut self, label: &str, mut cmd: Command) -> usize {
        let out = File::create(self.path(&format!("{label}.out"))).expect("create .out");
        let err = File::create(self.path(&format!("{label}.err"))).expect("create .err");
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", describe_command(&cmd)));
        self.children.push((label.to_string(), child));
        self.children.len() - 1
    }

    fn child_output(&self, label: &str) -> (String, String) {
        let read = |ext: &str| {
            fs::read_to_string(self.path(&format!("{label}.{ext}"))).unwrap_or_default()
        };
        (read("out"), read("err"))
    }

    /// Waits for a background child (hang guard: killed after `timeout`); returns its status
    /// (None when the guard killed it) and its output.
    fn wait_child(&mut self, index: usize, timeout: Duration) -> (Option<ExitStatus>, String) {
        let deadline = Instant::now() + timeout;
        let label = self.children[index].0.clone();
        let status = loop {
            let child = &mut self.children[index].1;
            match child.try_wait() {
                Ok(Some(st)) => break Some(st),
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(50)),
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break None;
                }
            }
        };
        let (out, err) = self.child_output(&label);
        (status, format!("{out}{err}"))
    }

    /// fio (nbd engine): random 4k writes over the last FIO_BYTES of the export, 16 in flight,
    /// crc32c-verified. `mode` is "--do_verify=1" (write, then read back and verify) or
    /// "--verify_only=1" (verify what an earlier run wrote).
    fn fio_command(&self, offset: u64, mode: &str) -> Command {
        let uri = format!("--uri={}", self.uri());
        let offset = format!("--offset={offset}");
        let size = format!("--size={FIO_BYTES}");
        self.command(
            &require("fio", "fio"),
            &[
                "--name=rebuildjob",
                "--ioengine=nbd",
                &uri,
                "--rw=randwrite",
                "--bs=4k",
                "--iodepth=16",
                &size,
                &offset,
                "--verify=crc32c",
                "--randrepeat=1",
                mode,
            ],
        )
    }

    /// Undoes everything; never panics (it also runs while a failed test unwinds).
    fn cleanup(&mut self) {
        for (_, child) in &mut self.children {
            if let Ok(None) = child.try_wait() {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
        if self.running_pid().is_some() {
            let mut c = self.raidctl_command(&["stop", &self.name]);
            c.stdin(Stdio::null());
            let _ = run_with_timeout(c, CLEANUP_TIMEOUT);
        }
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
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.cleanup();
    }
}

// ---------------------------------------------------------------------------------------------
// Status helpers
// ---------------------------------------------------------------------------------------------

fn members_of(status: &Value) -> &Vec<Value> {
    status["members"]
        .as_array()
        .unwrap_or_else(|| panic!("status has no \"members\" array:\n{status:#}"))
}

/// The member entry of `path` in a status report, if listed.
fn find_member<'v>(status: &'v Value, path: &str) -> Option<&'v Value> {
    members_of(status)
        .iter()
        .find(|m| m["path"].as_str() == Some(path))
}

fn member<'v>(status: &'v Value, path: &str) -> &'v Value {
    find_member(status, path)
        .unwrap_or_else(|| panic!("status does not list member {path}:\n{status:#}"))
}

/// The entry of slot `slot`.
fn slot_entry(status: &Value, slot: u64) -> &Value {
    members_of(status)
        .iter()
        .find(|m| m["slot"].as_u64() == Some(slot))
        .unwrap_or_else(|| panic!("status has no slot {slot}:\n{status:#}"))
}

/// Every slot holds an in-sync member, nothing is missing, and `spare_in` (slot, path) holds.
fn assert_all_in_sync(status: &Value, expect_in_slot: &[(u64, &str)], when: &str) {
    let n = status["raid_devices"].as_u64().expect("raid_devices");
    for slot in 0..n {
        assert_eq!(
            slot_entry(status, slot)["state"].as_str(),
            Some("in_sync"),
            "{when}: slot {slot} is not in sync:\n{status:#}"
        );
    }
    for &(slot, path) in expect_in_slot {
        assert_eq!(
            slot_entry(status, slot)["path"].as_str(),
            Some(path),
            "{when}: slot {slot} should hold {path}:\n{status:#}"
        );
    }
    assert!(
        matches!(status["state"].as_str(), Some("clean" | "active")),
        "{when}: a complete array is clean or active:\n{status:#}"
    );
    assert_eq!(
        status["missing"].as_str(),
        Some("none"),
        "{when}: nothing is missing:\n{status:#}"
    );
}

/// The (done, total) of the first recovering member, if any.
fn recovery_progress(status: &Value) -> Option<(u64, u64)> {
    members_of(status)
        .iter()
        .find(|m| m["state"].as_str() == Some("recovering"))
        .map(|m| {
            (
                m["recovered_bytes"].as_u64().unwrap_or_else(|| {
                    panic!("a recovering member without recovered_bytes:\n{status:#}")
                }),
                m["recovery_total_bytes"].as_u64().unwrap_or_else(|| {
                    panic!("a recovering member without recovery_total_bytes:\n{status:#}")
                }),
            )
        })
}

/// Waits until the daemon log holds a line with `needle` (events are logged after the state
/// change that `rebuild --wait` and status see, so they may trail it a little).
fn wait_for_log(h: &Harness, needle: &str) -> String {
    wait_for(
        &format!("{needle:?} in the daemon log"),
        STATE_TIMEOUT,
        || {
            let log = h.log();
            log.contains(needle).then_some(log)
        },
        || tail(&h.log(), 4000).to_string(),
    )
}

/// Waits until no check, repair or resync runs (a resync may follow an unclean stop).
fn wait_scrub_idle(h: &Harness) {
    wait_for(
        "no check or resync running",
        STATE_TIMEOUT,
        || {
            let st = h.status();
            (!st["check"]["running"].as_bool().unwrap_or(false)).then_some(())
        },
        || format!("{:#}", h.status()),
    );
}

/// `raidctl check NAME [--repair] --wait`, once no other scrub runs (a resync that the
/// daemon starts by itself is waited for, and the check retried if it slipped in first).
fn check(h: &Harness, repair: bool, expect_code: i32) -> Ran {
    let mut args = vec!["check", h.name.as_str()];
    if repair {
        args.push("--repair");
    }
    args.push("--wait");
    let deadline = Instant::now() + STATE_TIMEOUT;
    loop {
        wait_scrub_idle(h);
        let ran = h.raidctl(&args);
        if !ran.success() && ran.stderr.contains("already running") && Instant::now() < deadline {
            continue;
        }
        assert_eq!(
            ran.code(),
            Some(expect_code),
            "check should exit {expect_code}:\n{}\n  daemon log: {}",
            ran.describe(),
            tail(&h.log(), 4000)
        );
        return ran;
    }
}

/// The number in "N mismatched sectors" of the last result line of `check --wait`.
fn mismatches(ran: &Ran) -> u64 {
    ran.stdout
        .lines()
        .rev()
        .find(|l| l.contains(" of array ") && l.contains(" mismatched sectors"))
        .and_then(|l| {
            let before = l.split(" mismatched sectors").next()?;
            before.rsplit(' ').next()?.parse().ok()
        })
        .unwrap_or_else(|| panic!("no result line in the check output:\n{}", ran.describe()))
}

// ---------------------------------------------------------------------------------------------
// 1. fail a member while fio writes: the spare takes its slot and is rebuilt online
// ---------------------------------------------------------------------------------------------

fn fail_rebuild_under_fio(name: &str, level: &str, members: usize, seed: u64) {
    let mut h = Harness::create(name, level, members, 1);
    h.assemble();
    let size = h.size();
    assert!(size > 2 * FIO_BYTES, "odd array size {size}");
    let fio_offset = size - FIO_BYTES;
    let victim = h.members[1].clone();
    let spare = h.spares[0].clone();

    // Random data everywhere but fio's region.
    let expected = h.path("expected.img");
    fill_random(&expected, fio_offset, seed);
    h.nbdcopy(&s(&expected), &h.uri());

    // Held to 10 MB/s, the rebuild of these members outlasts fio's writes, so both run at
    // once (the default maximum speed is restored once fio is done).
    h.ok(&[
        "rebuild",
        name,
        "--speed-min",
        "10000",
        "--speed-max",
        "10000",
    ]);
    let before = h.status();
    let writes_before = before["io"]["writes"].as_u64().expect("io.writes");
    let fio = h.spawn("fio-write", h.fio_command(fio_offset, "--do_verify=1"));
    wait_for(
        "fio to be writing",
        STATE_TIMEOUT,
        || {
            let st = h.status();
            (st["io"]["writes"].as_u64() > Some(writes_before)).then_some(())
        },
        || format!("{:?}", h.child_output("fio-write")),
    );
    let ran = h.ok(&["fail", name, &victim]);
    assert!(
        ran.stdout.contains(&victim) && ran.stdout.contains("faulty"),
        "fail should say what it did:\n{}",
        ran.describe()
    );
    let st = h.status();
    assert_eq!(
        member(&st, &victim)["state"].as_str(),
        Some("faulty"),
        "right after fail:\n{st:#}"
    );

    let (fio_status, fio_out) = h.wait_child(fio, COMMAND_TIMEOUT);
    eprintln!(
        "{name}: fio done; rebuild progress then: {:?}",
        recovery_progress(&h.status())
    );
    assert!(
        fio_status.is_some_and(|s| s.success())
            && !fio_out.contains("verify:")
            && fio_out.contains("err= 0"),
        "fio (writing while {victim} failed and the spare was rebuilt) failed or found bad data \
         (status {fio_status:?}):\n{fio_out}\n  daemon log: {}",
        tail(&h.log(), 4000)
    );

    h.ok(&[
        "rebuild",
        name,
        "--speed-min",
        "1000",
        "--speed-max",
        "200000",
    ]);
    let ran = h.ok(&["rebuild", name, "--wait"]);
    assert!(
        ran.stdout.contains("no rebuild running"),
        "rebuild --wait should end saying so:\n{}",
        ran.describe()
    );
    // RebuildFinished is logged once the finished rebuild is on disk.
    wait_for_log(&h, "RebuildFinished");

    let st = h.status();
    assert_all_in_sync(&st, &[(1, &spare)], "after rebuild --wait");
    let failed = member(&st, &victim);
    assert_eq!(failed["role"].as_str(), Some("faulty"), "{st:#}");
    assert_eq!(failed["state"].as_str(), Some("faulty"), "{st:#}");
    assert!(
        failed["slot"].is_null(),
        "a replaced member has no slot:\n{st:#}"
    );
    assert!(
        members_of(&st)
            .iter()
            .all(|m| m["role"].as_str() != Some("spare")),
        "the only spare is in use now:\n{st:#}"
    );

    // What md would see.
    let new = mdadm_examine(&spare);
    assert_eq!(new.get("Device Role"), "Active device 1", "{}", new.text);
    assert!(
        new.field("Recovery Offset").is_none(),
        "the rebuilt member still records a recovery offset:\n{}",
        new.text
    );
    let all_active = "A".repeat(members);
    let mut survivor_events = Vec::new();
    for (i, m) in h.members.iter().enumerate().filter(|(i, _)| *i != 1) {
        let e = mdadm_examine(m);
        assert_eq!(e.array_state(), all_active, "member {i}:\n{}", e.text);
        survivor_events.push(e.events());
    }
    let old = mdadm_examine(&victim);
    assert!(
        survivor_events.iter().all(|&e| old.events() < e),
        "the failed member must be behind (events {} vs the survivors' {survivor_events:?}):\n{}",
        old.events(),
        old.text
    );

    // Every byte: the random data, and fio's region by fio itself.
    let out = h.read_export("readback.img");
    assert_same_range(&expected, &out, 0, fio_offset, "after the rebuild");
    let _ = fs::remove_file(&out);
    let verify = h.spawn("fio-verify", h.fio_command(fio_offset, "--verify_only=1"));
    let (fio_status, fio_out) = h.wait_child(verify, COMMAND_TIMEOUT);
    assert!(
        fio_status.is_some_and(|s| s.success())
            && !fio_out.contains("verify:")
            && fio_out.contains("err= 0")
            && fio_out.contains("READ:"),
        "fio --verify_only=1 after the rebuild failed (status {fio_status:?}):\n{fio_out}"
    );

    // The failed member goes away for good.
    h.ok(&["remove", name, &victim]);
    let st = h.status();
    assert!(
        find_member(&st, &victim).is_none(),
        "{victim} is still listed after remove:\n{st:#}"
    );
    assert_all_in_sync(&st, &[(1, &spare)], "after remove");

    // A clean stop and a fresh assembly from the current members.
    h.stop();
    let current: Vec<String> = h
        .members
        .iter()
        .map(|m| {
            if *m == victim {
                spare.clone()
            } else {
                m.clone()
            }
        })
        .collect();
    h.assemble_devices(&current, &[]);
    let st = h.status();
    assert_all_in_sync(&st, &[(1, &spare)], "after stop and assemble");
    assert_eq!(st["state"].as_str(), Some("clean"), "{st:#}");
    let out = h.read_export("readback2.img");
    assert_same_range(&expected, &out, 0, fio_offset, "after stop and assemble");
    h.stop();
}

#[test]
fn raid1_fail_under_fio_rebuilds_onto_spare() {
    fail_rebuild_under_fio("rb-r1", "1", 2, 11);
}

#[test]
fn raid5_fail_under_fio_rebuilds_onto_spare() {
    fail_rebuild_under_fio("rb-r5", "5", 4, 12);
}

#[test]
fn raid10_fail_under_fio_rebuilds_onto_spare() {
    fail_rebuild_under_fio("rb-r10", "10", 4, 13);
}

// ---------------------------------------------------------------------------------------------
// 2. kill -9 in the middle of a rebuild: the next assembly resumes from the checkpoint
// ---------------------------------------------------------------------------------------------

/// The `from_bytes` of the last RebuildStarted line of the log.
fn last_rebuild_from(log: &str) -> Option<u64> {
    let line = log.lines().rev().find(|l| l.contains("RebuildStarted"))?;
    let rest = line.split("from_bytes").nth(1)?;
    let digits: String = rest
        .trim_start_matches(|c: char| !c.is_ascii_digit())
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits.parse().ok()
}

#[test]
fn kill_9_mid_rebuild_resumes_from_checkpoint() {
    let name = "rb-kill";
    let mut h = Harness::create(name, "5", 4, 1);
    h.assemble();
    let size = h.size();
    let expected = h.path("expected.img");
    fill_random(&expected, size, 21);
    h.nbdcopy(&s(&expected), &h.uri());
    let victim = h.members[1].clone();
    let spare = h.spares[0].clone();

    // Slow: 4000 KiB/s, so a checkpoint (every 64 MiB or 5 s) lands well before 40 %.
    h.ok(&[
        "rebuild",
        name,
        "--speed-min",
        "4000",
        "--speed-max",
        "4000",
    ]);
    h.ok(&["fail", name, &victim]);
    let (done, total) = wait_for(
        "the rebuild to reach 40 %",
        STATE_TIMEOUT,
        || {
            let st = h.status();
            let (done, total) = recovery_progress(&st)?;
            (done * 100 >= total * 40).then_some((done, total))
        },
        || format!("{:#}", h.status()),
    );
    assert!(done < total, "the rebuild must not be finished yet");
    eprintln!("{name}: kill -9 at {done} of {total} bytes rebuilt");
    let pid = h.running_pid().expect("daemon running");
    // SAFETY: plain syscall on the pid of the daemon this test started.
    unsafe {
        libc::kill(pid as i32, libc::SIGKILL);
    }
    assert!(
        wait_until_dead(pid, Duration::from_secs(30)),
        "kill -9 did not kill {pid}"
    );

    // The spare's superblock records how far it got.
    let ex = h.raidctl(&["examine", "--json", &spare]).ok();
    let ex: Value = serde_json::from_str(&ex.stdout).expect("examine --json");
    let checkpoint = ex[0]["recovery_offset_sectors"]
        .as_u64()
        .unwrap_or_else(|| {
            panic!("the spare records no recovery offset after kill -9 mid-rebuild:\n{ex:#}")
        })
        * 512;
    assert!(
        checkpoint > 0 && checkpoint <= done,
        "checkpoint {checkpoint} should be above zero and at most the {done} bytes status showed"
    );
    let md = mdadm_examine(&spare);
    assert!(md.field("Recovery Offset").is_some(), "{}", md.text);

    // The array was written to, so it is dirty: md's rule for a dirty RAID5 that is not
    // complete (a member recovering) wants --force.
    let devices = h.all_members();
    let ran = h.try_assemble(&devices, &[]);
    if !ran.success() {
        assert_eq!(ran.code(), Some(1), "{}", ran.describe());
        assert!(
            ran.stderr.contains("not stopped cleanly") && ran.stderr.contains("--force"),
            "the refusal should say why and name --force:\n{}",
            ran.describe()
        );
        assert_eq!(h.running_pid(), None, "a refused assemble leaves no daemon");
        eprintln!("{name}: plain assemble refused: {}", ran.stderr.trim());
        h.assemble_devices(&devices, &["--force"]);
    }
    let st = h.status();
    let entry = slot_entry(&st, 1);
    assert_eq!(entry["path"].as_str(), Some(spare.as_str()), "{st:#}");
    match entry["state"].as_str() {
        Some("recovering") => {
            let rec = entry["recovered_bytes"].as_u64().expect("recovered_bytes");
            assert!(
                rec >= checkpoint && rec > 0,
                "the resumed rebuild restarted below its checkpoint {checkpoint}:\n{st:#}"
            );
        }
        Some("in_sync") => {}
        other => panic!("slot 1 should be recovering or in sync, not {other:?}:\n{st:#}"),
    }
    let log = wait_for_log(&h, "RebuildStarted");
    let resumed = wait_for(
        "the resumed RebuildStarted",
        STATE_TIMEOUT,
        || last_rebuild_from(&h.log()).filter(|&f| f > 0),
        || tail(&log, 4000).to_string(),
    );
    assert_eq!(
        resumed, checkpoint,
        "the rebuild must resume from the checkpoint on disk"
    );

    h.ok(&[
        "rebuild",
        name,
        "--speed-min",
        "1000",
        "--speed-max",
        "200000",
    ]);
    h.ok(&["rebuild", name, "--wait"]);
    wait_for_log(&h, "RebuildFinished");
    let st = h.status();
    assert_all_in_sync(&st, &[(1, &spare)], "after the resumed rebuild");
    let out = h.read_export("readback.img");
    assert_same_range(&expected, &out, 0, size, "after the resumed rebuild");
    let ran = check(&h, false, 0);
    assert_eq!(
        mismatches(&ran),
        0,
        "parity after the resumed rebuild:\n{}",
        ran.describe()
    );
    h.stop();
}

// ---------------------------------------------------------------------------------------------
// 3. fault drills: a read error is corrected, a write error fails the member, a disk vanishes
// ---------------------------------------------------------------------------------------------

#[test]
fn injected_read_error_write_error_and_vanish() {
    let name = "rb-inject";
    let mut h = Harness::create(name, "5", 4, 1);
    h.assemble();
    let size = h.size();
    let expected = h.path("expected.img");
    fill_random(&expected, size, 31);
    h.nbdcopy(&s(&expected), &h.uri());
    let (m0, m2, m3) = (
        h.members[0].clone(),
        h.members[2].clone(),
        h.members[3].clone(),
    );
    let spare = h.spares[0].clone();

    // One read error: repaired from parity, the member stays.
    h.ok(&["inject", name, &m0, "--read-error", "--count", "1"]);
    let out = h.read_export("read1.img");
    assert_same_range(&expected, &out, 0, size, "reading through a read error");
    let st = h.status();
    assert_eq!(
        member(&st, &m0)["state"].as_str(),
        Some("in_sync"),
        "a corrected read error must not fail the member:\n{st:#}"
    );
    assert_all_in_sync(&st, &[(0, &m0)], "after the read error");
    let log = wait_for_log(&h, "ReadErrorCorrected");
    assert!(
        log.lines()
            .any(|l| l.contains("ReadErrorCorrected") && l.contains(&m0)),
        "ReadErrorCorrected should name {m0}:\n{}",
        tail(&log, 4000)
    );

    // One write error: the write still succeeds, the member is failed, the spare rebuilds.
    h.ok(&["inject", name, &m2, "--write-error", "--count", "1"]);
    let small = h.path("small.img");
    fill_random(&small, MIB, 32);
    h.nbdcopy(&s(&small), &h.uri());
    {
        let data = fs::read(&small).expect("read small");
        let f = OpenOptions::new()
            .write(true)
            .open(&expected)
            .expect("open expected");
        f.write_all_at(&data, 0).expect("update expected");
    }
    let st = h.status();
    assert_eq!(
        member(&st, &m2)["state"].as_str(),
        Some("faulty"),
        "a member whose write failed must be faulty:\n{st:#}"
    );
    h.ok(&["rebuild", name, "--wait"]);
    wait_for_log(&h, "RebuildFinished");
    let st = h.status();
    assert_all_in_sync(&st, &[(2, &spare)], "after the write error and the rebuild");
    assert_eq!(member(&st, &m2)["role"].as_str(), Some("faulty"), "{st:#}");
    let out = h.read_export("read2.img");
    assert_same_range(
        &expected,
        &out,
        0,
        size,
        "after the write error and the rebuild",
    );

    // No spare left: a vanished disk leaves the array degraded and readable.
    h.ok(&["inject", name, &m3, "--vanish"]);
    let out = h.read_export("read3.img");
    assert_same_range(&expected, &out, 0, size, "with a vanished member");
    let st = h.status();
    assert_eq!(st["state"].as_str(), Some("degraded"), "{st:#}");
    assert_eq!(member(&st, &m3)["state"].as_str(), Some("faulty"), "{st:#}");
    assert!(
        st["missing"].as_str().is_some_and(|m| m.contains(&m3)),
        "missing should name {m3}:\n{st:#}"
    );
    for slot in [0u64, 1, 2] {
        assert_eq!(
            slot_entry(&st, slot)["state"].as_str(),
            Some("in_sync"),
            "{st:#}"
        );
    }
    h.stop();
}

// ---------------------------------------------------------------------------------------------
// 4. a second failure fails a RAID5
// ---------------------------------------------------------------------------------------------

/// The JSON events a `monitor --json` child printed so far.
fn monitor_events(h: &Harness, label: &str) -> Vec<Value> {
    let (out, _) = h.child_output(label);
    out.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| {
                panic!("monitor --json printed a line that is not JSON ({e}): {l:?}")
            })
        })
        .collect()
}

#[test]
fn second_failure_fails_raid5() {
    let name = "rb-fail2";
    let mut h = Harness::create(name, "5", 4, 0);
    h.assemble();
    let expected = h.path("expected.img");
    fill_random(&expected, 8 * MIB, 41);
    h.nbdcopy(&s(&expected), &h.uri());
    let monitor = h.spawn("monitor", h.raidctl_command(&["monitor", name, "--json"]));
    // Subscribed once it says so: events before that are not its to see.
    wait_for(
        "the monitor to subscribe",
        STATE_TIMEOUT,
        || {
            h.child_output("monitor")
                .1
                .contains("monitoring")
                .then_some(())
        },
        || format!("{:?}", h.child_output("monitor")),
    );
    let (m0, m1) = (h.members[0].clone(), h.members[1].clone());

    h.ok(&["fail", name, &m0]);
    let st = h.status();
    assert_eq!(st["state"].as_str(), Some("degraded"), "{st:#}");
    // Reads still work with one member gone.
    let out = h.read_export("degraded.img");
    assert_same_range(&expected, &out, 0, 8 * MIB, "degraded");

    h.ok(&["fail", name, &m1, "--force"]);
    let st = h.status();
    assert_eq!(st["state"].as_str(), Some("failed"), "{st:#}");
    let missing = st["missing"].as_str().unwrap_or_default();
    assert!(
        missing.contains(&m0) && missing.contains(&m1),
        "missing should name both failed members:\n{st:#}"
    );

    let qemu_io = require("qemu-io", "qemu-utils");
    let ran = run(h.command(
        &qemu_io,
        &["-f", "raw", &h.uri(), "-c", "write -P 1 0 4096"],
    ));
    let text = format!("{}{}", ran.stdout, ran.stderr).to_lowercase();
    assert!(
        !ran.success() || text.contains("error") || text.contains("failed"),
        "a write to a failed array must fail:\n{}",
        ran.describe()
    );

    wait_for(
        "ArrayFailed from the monitor",
        STATE_TIMEOUT,
        || {
            monitor_events(&h, "monitor")
                .iter()
                .any(|e| e["event"] == "ArrayFailed")
                .then_some(())
        },
        || format!("{:?}", h.child_output("monitor")),
    );
    let events = monitor_events(&h, "monitor");
    let failed = events
        .iter()
        .find(|e| e["event"] == "ArrayFailed")
        .expect("ArrayFailed");
    assert_eq!(failed["array"].as_str(), Some(name), "{failed}");
    let kinds: Vec<&str> = events.iter().filter_map(|e| e["event"].as_str()).collect();
    assert_eq!(
        kinds.iter().filter(|k| **k == "MemberFailed").count(),
        2,
        "two MemberFailed events expected: {kinds:?}"
    );

    // The daemon still answers and goes away on stop (whose answer may report the failure).
    let pid = h.running_pid();
    let _ = h.raidctl(&["stop", name]);
    h.assert_daemon_gone(pid);
    let (status, out) = h.wait_child(monitor, Duration::from_secs(60));
    assert!(
        status.is_some(),
        "the monitor did not end when its daemon stopped:\n{out}"
    );
}

/// Data offset of a member in bytes, as `raidctl examine --json` reports it.
fn data_offset_bytes(h: &Harness, dev: &str) -> u64 {
    let ran = h.ok(&["examine", dev, "--json"]);
    let v: Value = serde_json::from_str(&ran.stdout).expect("examine --json");
    let entry = if v.is_array() { &v[0] } else { &v };
    entry["data_offset_sectors"]
        .as_u64()
        .unwrap_or_else(|| panic!("no data_offset_sectors in {v:#}"))
        * 512
}

/// A sector of a survivor that will not read while a spare rebuilds (`raidctl inject`): the
/// rebuild finishes, the array stays up, the block the spare could not be given is in its
/// md bad-block log (`mdadm --examine-badblocks` lists it) and in `status`, only the lost
/// array blocks read EIO, and once the survivor reads again a read repairs and clears it.
#[test]
fn unreadable_sector_during_a_rebuild_is_recorded_not_fatal() {
    let name = "rb-bad";
    let mut h = Harness::create(name, "5", 4, 1);
    h.assemble();
    let expected = h.path("expected.img");
    let size = h.size();
    fill_random(&expected, size, 77);
    h.nbdcopy(&s(&expected), &h.uri());
    let (m1, m2, s0) = (
        h.members[1].clone(),
        h.members[2].clone(),
        h.spares[0].clone(),
    );
    // Member offset 1 MiB is row 16 (64 KiB chunks): parity on slot 3, data on slots 0..2.
    let member_offset = 1u64 << 20;
    let lost_on_spare = 16 * 3 * 65536 + 65536; // slot 1's data in row 16
    let lost_on_m2 = 16 * 3 * 65536 + 2 * 65536; // slot 2's
    let at = data_offset_bytes(&h, &m2) + member_offset;
    h.ok(&[
        "inject",
        name,
        &m2,
        "--read-error",
        "--offset",
        &at.to_string(),
        "--length",
        "4096",
    ]);
    h.ok(&["fail", name, &m1]);
    h.ok(&["rebuild", name, "--wait"]);
    let st = h.status();
    assert_all_in_sync(
        &st,
        &[(1, &s0)],
        "after the rebuild with an unreadable sector",
    );
    let spare = slot_entry(&st, 1);
    assert_eq!(
        spare["bad_blocks"],
        serde_json::json!([{"offset": member_offset, "bytes": 4096}]),
        "status shows the block the spare could not be given:\n{st:#}"
    );
    let mdadm = require("mdadm", "mdadm");
    let bb = run(h.command(Path::new(&mdadm), &["--examine-badblocks", &s0]));
    let sector = (data_offset_bytes(&h, &s0) + member_offset) / 512;
    assert!(
        bb.stdout.contains(&format!("{sector} for 8 sectors")),
        "mdadm --examine-badblocks should list sector {sector}:\n{}",
        bb.describe()
    );
    let qemu_io = require("qemu-io", "qemu-utils");
    let read = |at: u64| {
        let cmd = format!("read {at} 4096");
        run(h.command(Path::new(&qemu_io), &["-f", "raw", &h.uri(), "-c", &cmd]))
    };
    for lost in [lost_on_spare, lost_on_m2] {
        let ran = read(lost);
        let text = format!("{}{}", ran.stdout, ran.stderr).to_lowercase();
        assert!(
            !ran.success() || text.contains("error"),
            "a lost block must read as an error, not as data:\n{}",
            ran.describe()
        );
    }
    let ran = read(0);
    assert!(
        ran.success() && !ran.stdout.to_lowercase().contains("error"),
        "{}",
        ran.describe()
    );
    // The sector reads again: a read of the lost block rebuilds it, the record goes.
    h.ok(&["inject", name, &m2, "--clear"]);
    let out = h.read_export("after.img");
    assert_same_range(&expected, &out, 0, size, "after the sector reads again");
    let st = h.status();
    assert!(
        slot_entry(&st, 1).get("bad_blocks").is_none(),
        "the record is cleared once the data is back:\n{st:#}"
    );
    let bb = run(h.command(Path::new(&mdadm), &["--examine-badblocks", &s0]));
    assert!(
        !bb.stdout.contains(&format!("{sector} for")),
        "{}",
        bb.describe()
    );
    h.stop();
}

/// Every member's superblock area (first 1 MiB: superblock, bitmap, settings block) as bytes.
fn metadata_areas(h: &Harness) -> Vec<Vec<u8>> {
    h.members
        .iter()
        .map(|m| {
            let mut buf = vec![0u8; 1 << 20];
            File::open(m)
                .and_then(|f| f.read_exact_at(&mut buf, 0))
                .unwrap_or_else(|e| panic!("read {m}: {e}"));
            buf
        })
        .collect()
}

#[test]
fn fail_refuses_to_take_the_last_copy_unless_forced() {
    let name = "rb-floor";
    let mut h = Harness::create(name, "1", 2, 0);
    h.assemble();
    let (m0, m1) = (h.members[0].clone(), h.members[1].clone());
    h.ok(&["fail", name, &m1]);
    let before = metadata_areas(&h);
    let ran = h.raidctl(&["fail", name, &m0]);
    assert_eq!(ran.code(), Some(1), "{}", ran.describe());
    let line = ran.stderr.trim();
    assert_eq!(line.lines().count(), 1, "one line: {}", ran.describe());
    assert!(
        line.contains(&format!("array {name} would fail"))
            && line.contains(&m0)
            && line.contains(&m1)
            && line.contains("--force"),
        "the refusal names the array, both members and the way out: {line}"
    );
    assert!(
        metadata_areas(&h) == before,
        "a refused fail must not change any superblock"
    );
    assert_eq!(h.status()["state"].as_str(), Some("degraded"));
    // --force does what fail always did.
    h.ok(&["fail", name, &m0, "--force"]);
    assert_eq!(h.status()["state"].as_str(), Some("failed"));
    // Stopping a failed array reports the failure; the daemon goes away all the same.
    let pid = h.running_pid();
    let _ = h.raidctl(&["stop", name]);
    h.assert_daemon_gone(pid);
}

// ---------------------------------------------------------------------------------------------
// 5. check and repair
// ---------------------------------------------------------------------------------------------

/// XORs `len` bytes with 0xff at `at` of the data area of `member` (offline).
fn flip_bytes(h: &Harness, member: &str, at: u64, len: usize) -> u64 {
    let ex = h.raidctl(&["examine", "--json", member]).ok();
    let ex: Value = serde_json::from_str(&ex.stdout).expect("examine --json");
    let data_offset = ex[0]["data_offset_sectors"]
        .as_u64()
        .unwrap_or_else(|| panic!("examine --json has no data_offset_sectors:\n{ex:#}"))
        * 512;
    let pos = data_offset + at;
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(member)
        .expect("open member");
    let mut buf = vec![0u8; len];
    f.read_exact_at(&mut buf, pos).expect("read member bytes");
    for b in &mut buf {
        *b ^= 0xff;
    }
    f.write_all_at(&buf, pos).expect("write member bytes");
    f.sync_all().expect("sync member");
    pos
}

fn check_and_repair(name: &str, level: &str, members: usize, seed: u64) {
    let mut h = Harness::create(name, level, members, 0);
    h.assemble();
    let size = h.size();
    let expected = h.path("expected.img");
    fill_random(&expected, size, seed);
    h.nbdcopy(&s(&expected), &h.uri());

    let ran = check(&h, false, 0);
    assert_eq!(
        mismatches(&ran),
        0,
        "a consistent array:\n{}",
        ran.describe()
    );
    let st = h.status();
    assert_eq!(st["check"]["mismatch_sectors"].as_u64(), Some(0), "{st:#}");
    h.stop();

    // Three bytes inside one 4 KiB block of member 1's data area.
    let victim = h.members[1].clone();
    let pos = flip_bytes(&h, &victim, 5 * MIB + 1000, 3);
    let sane = fs::read(&h.members[0]).expect("read member 0");

    h.assemble();
    // Exit 1: mismatches found.
    let ran = check(&h, false, 1);
    let found = mismatches(&ran);
    assert!(
        found >= 8 && found.is_multiple_of(8),
        "3 flipped bytes in one 4 KiB block: 8 mismatched sectors (a multiple of 8) expected, got {found}:\n{}",
        ran.describe()
    );
    let st = h.status();
    assert_eq!(
        st["check"]["mismatch_sectors"].as_u64(),
        Some(found),
        "{st:#}"
    );

    let ran = check(&h, true, 0);
    assert!(
        mismatches(&ran) >= 8,
        "repair should count what it fixed:\n{}",
        ran.describe()
    );
    let ran = check(&h, false, 0);
    assert_eq!(mismatches(&ran), 0, "after repair:\n{}", ran.describe());
    let log = wait_for_log(&h, "CheckFinished");
    assert!(log.contains("repair: true"), "{}", tail(&log, 4000));

    if level == "1" {
        // Repair copies the first member over the others: the flipped copy is whole again,
        // and the export reads the written data everywhere.
        h.stop();
        let repaired = fs::read(&victim).expect("read member 1");
        let p = pos as usize;
        assert_eq!(
            &repaired[p - 4096..p + 4096],
            &sane[p - 4096..p + 4096],
            "repair must restore the flipped copy from member 0"
        );
        h.assemble();
        let out = h.read_export("readback.img");
        assert_same_range(&expected, &out, 0, size, "after repair");
    }
    h.stop();
}

#[test]
fn raid5_check_finds_and_repairs_flipped_bytes() {
    check_and_repair("rb-chk5", "5", 4, 51);
}

#[test]
fn raid1_check_finds_and_repairs_flipped_bytes() {
    check_and_repair("rb-chk1", "1", 2, 52);
}

// ---------------------------------------------------------------------------------------------
// 6. monitor: --program hook and --json
// ---------------------------------------------------------------------------------------------

#[test]
fn monitor_program_and_json_see_the_rebuild() {
    let name = "rb-mon";
    let mut h = Harness::create(name, "5", 4, 1);
    h.assemble();
    let expected = h.path("expected.img");
    fill_random(&expected, 8 * MIB, 61);
    h.nbdcopy(&s(&expected), &h.uri());

    let hook_log = h.path("hook.log");
    let hook = h.path("hook.sh");
    fs::write(
        &hook,
        format!("#!/bin/sh\necho \"$@\" >> '{}'\n", s(&hook_log)),
    )
    .expect("write hook");
    fs::set_permissions(&hook, fs::Permissions::from_mode(0o755)).expect("chmod hook");

    let program = h.spawn(
        "monitor-program",
        h.raidctl_command(&["monitor", name, "--program", &s(&hook)]),
    );
    let json = h.spawn(
        "monitor-json",
        h.raidctl_command(&["monitor", name, "--json"]),
    );
    // Both monitors are subscribed once they report an event: a check makes one.
    let ran = check(&h, false, 0);
    assert_eq!(mismatches(&ran), 0, "{}", ran.describe());
    wait_for(
        "both monitors to report CheckFinished",
        STATE_TIMEOUT,
        || {
            let hooked = fs::read_to_string(&hook_log).unwrap_or_default();
            let json_seen = monitor_events(&h, "monitor-json")
                .iter()
                .any(|e| e["event"] == "CheckFinished");
            (hooked.contains("CheckFinished") && json_seen).then_some(())
        },
        || {
            format!(
                "hook log: {:?}\nprogram monitor: {:?}\njson monitor: {:?}",
                fs::read_to_string(&hook_log),
                h.child_output("monitor-program"),
                h.child_output("monitor-json")
            )
        },
    );

    let victim = h.members[1].clone();
    let spare = h.spares[0].clone();
    h.ok(&["fail", name, &victim]);
    h.ok(&["rebuild", name, "--wait"]);
    let wanted = [
        "MemberFailed",
        "SpareActivated",
        "RebuildStarted",
        "RebuildFinished",
    ];
    let lines: Vec<String> = wait_for(
        "RebuildFinished from the hook",
        STATE_TIMEOUT,
        || {
            let text = fs::read_to_string(&hook_log).unwrap_or_default();
            text.lines()
                .any(|l| l.starts_with("RebuildFinished "))
                .then(|| text.lines().map(str::to_string).collect())
        },
        || format!("hook log: {:?}", fs::read_to_string(&hook_log)),
    );
    let mut at = 0;
    for event in wanted {
        let i = lines[at..]
            .iter()
            .position(|l| l.split_whitespace().next() == Some(event))
            .map(|i| i + at)
            .unwrap_or_else(|| {
                panic!("the hook saw no {event} after line {at}, in order {wanted:?}:\n{lines:#?}")
            });
        let words: Vec<&str> = lines[i].split_whitespace().collect();
        assert_eq!(words.get(1), Some(&name), "line {:?}", lines[i]);
        let member = if event == "MemberFailed" {
            &victim
        } else {
            &spare
        };
        assert_eq!(
            words.get(2).copied(),
            Some(member.as_str()),
            "{event} should name its member: {:?}",
            lines[i]
        );
        at = i + 1;
    }
    for l in &lines {
        let words: Vec<&str> = l.split_whitespace().collect();
        assert_eq!(
            words.get(1),
            Some(&name),
            "every hook call names the array: {l:?}"
        );
    }

    let events = wait_for(
        "RebuildFinished from monitor --json",
        STATE_TIMEOUT,
        || {
            let ev = monitor_events(&h, "monitor-json");
            ev.iter()
                .any(|e| e["event"] == "RebuildFinished")
                .then_some(ev)
        },
        || format!("{:?}", h.child_output("monitor-json")),
    );
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| {
            assert_eq!(e["array"].as_str(), Some(name), "{e}");
            e["event"]
                .as_str()
                .unwrap_or_else(|| panic!("an event without an \"event\" field: {e}"))
        })
        .collect();
    let mut at = 0;
    for event in wanted {
        at += kinds[at..]
            .iter()
            .position(|k| *k == event)
            .unwrap_or_else(|| panic!("monitor --json: no {event} in order in {kinds:?}"))
            + 1;
    }
    let started = events
        .iter()
        .find(|e| e["event"] == "RebuildStarted")
        .expect("RebuildStarted");
    assert_eq!(
        started["member"].as_str(),
        Some(spare.as_str()),
        "{started}"
    );
    assert_eq!(started["slot"].as_u64(), Some(1), "{started}");
    assert_eq!(started["from_bytes"].as_u64(), Some(0), "{started}");

    // Both monitors end by themselves when the daemon stops.
    h.stop();
    for (index, label) in [(program, "monitor-program"), (json, "monitor-json")] {
        let (status, out) = h.wait_child(index, Duration::from_secs(60));
        assert!(
            status.is_some_and(|s| s.success()),
            "{label} should exit 0 once its daemon stopped (status {status:?}):\n{out}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 7. add: a new device rebuilds a degraded array; foreign and small devices are refused
// ---------------------------------------------------------------------------------------------

#[test]
fn add_rebuilds_degraded_raid5_and_refuses_foreign_or_small_devices() {
    let name = "rb-add";
    let mut h = Harness::create(name, "5", 4, 0);
    h.assemble();
    let size = h.size();
    let expected = h.path("expected.img");
    fill_random(&expected, size, 71);
    h.nbdcopy(&s(&expected), &h.uri());
    let victim = h.members[1].clone();
    h.ok(&["fail", name, &victim]);
    let st = h.status();
    assert_eq!(st["state"].as_str(), Some("degraded"), "{st:#}");

    // A member of another array (created, never assembled).
    let foreign: Vec<String> = (0..2).map(|i| s(&h.path(&format!("other{i}")))).collect();
    let mut args = vec![
        "create", "rb-other", "--level", "1", "--chunk", "64K", "--size", "96M",
    ];
    args.extend(foreign.iter().map(String::as_str));
    h.ok(&args);
    let foreign_uuid = |h: &Harness| {
        let ex = h.raidctl(&["examine", "--json", &foreign[0]]).ok();
        let ex: Value = serde_json::from_str(&ex.stdout).expect("examine --json");
        ex[0]["array_uuid"].as_str().unwrap_or_default().to_string()
    };
    let uuid_before = foreign_uuid(&h);
    let ran = h.raidctl(&["add", name, &foreign[0]]);
    assert_eq!(ran.code(), Some(1), "{}", ran.describe());
    assert!(
        ran.stderr.contains("--force"),
        "adding another array's member must be refused naming --force:\n{}",
        ran.describe()
    );
    assert_eq!(
        foreign_uuid(&h),
        uuid_before,
        "a refused add must not touch the device"
    );

    // Too small.
    let small = h.path("small");
    let small_bytes = 32 * MIB;
    File::create(&small)
        .and_then(|f| f.set_len(small_bytes))
        .expect("create small file");
    let ran = h.raidctl(&["add", name, &s(&small)]);
    assert_eq!(ran.code(), Some(1), "{}", ran.describe());
    assert!(
        ran.stderr.contains("too small")
            && (ran.stderr.contains(&small_bytes.to_string()) || ran.stderr.contains("32M")),
        "adding a small device must be refused naming its size:\n{}",
        ran.describe()
    );
    let st = h.status();
    assert_eq!(
        st["state"].as_str(),
        Some("degraded"),
        "refusals change nothing:\n{st:#}"
    );
    assert!(
        find_member(&st, &foreign[0]).is_none() && find_member(&st, &s(&small)).is_none(),
        "refused devices must not be listed:\n{st:#}"
    );

    // A new, empty file: it becomes a spare and the degraded array rebuilds onto it.
    let new = s(&h.path("new0"));
    File::create(&new)
        .and_then(|f| f.set_len(96 * MIB))
        .expect("create new member");
    let ran = h.ok(&["add", name, &new]);
    assert!(ran.stdout.contains(&new), "{}", ran.describe());
    h.ok(&["rebuild", name, "--wait"]);
    wait_for_log(&h, "RebuildFinished");
    let st = h.status();
    assert_all_in_sync(&st, &[(1, &new)], "after add and rebuild");
    let out = h.read_export("readback.img");
    assert_same_range(&expected, &out, 0, size, "after add and rebuild");
    let md = mdadm_examine(&new);
    assert_eq!(md.get("Device Role"), "Active device 1", "{}", md.text);

    // With --force the foreign device is taken, as a hot spare now.
    h.ok(&["add", name, &foreign[0], "--force"]);
    let st = h.status();
    let entry = member(&st, &foreign[0]);
    assert_eq!(entry["role"].as_str(), Some("spare"), "{st:#}");
    assert_ne!(
        foreign_uuid(&h),
        uuid_before,
        "the forced add rewrites its superblock"
    );
    h.stop();
}

// ---------------------------------------------------------------------------------------------
// 8. what `rebuild --wait` and `rebuild --speed-*` promise
// ---------------------------------------------------------------------------------------------

/// `rebuild --wait` must not return before the finished rebuild is recorded: once it says
/// "no rebuild running", the rebuilt member's superblock must no longer carry a recovery
/// offset (else `mdadm --examine` still calls it recovering and a crash right then rebuilds it
/// again) and RebuildFinished must have been emitted. A slow superblock write on the new
/// member (a delay drill on its superblock sector only) widens the window in which the daemon
/// already reports the slot in sync but has not written that down yet.
#[test]
fn rebuild_wait_returns_only_once_the_finished_rebuild_is_recorded() {
    let name = "rb-waitrec";
    let mut h = Harness::create(name, "1", 2, 1);
    h.assemble();
    let victim = h.members[1].clone();
    let spare = h.spares[0].clone();
    // The md superblock is the 4 KiB at byte 4096 of every member.
    h.ok(&[
        "inject", name, &spare, "--delay", "3000", "--offset", "4096", "--length", "4096",
    ]);
    h.ok(&["fail", name, &victim]);
    let ran = h.ok(&["rebuild", name, "--wait"]);
    assert!(
        ran.stdout.contains("no rebuild running"),
        "{}",
        ran.describe()
    );
    // Right away, as a script would.
    let md = mdadm_examine(&spare);
    let log = h.log();
    let st = h.status();
    h.ok(&["inject", name, &spare, "--clear"]);
    wait_for_log(&h, "RebuildFinished");
    assert!(
        md.field("Recovery Offset").is_none() && log.contains("RebuildFinished"),
        "`rebuild --wait` returned (and status showed slot 1 {:?}) while the rebuilt member's \
         superblock still records a recovery offset ({:?}) and RebuildFinished was not emitted \
         yet (in the log: {}):\n{}",
        slot_entry(&st, 1)["state"],
        md.field("Recovery Offset"),
        log.contains("RebuildFinished"),
        md.text
    );
    h.stop();
}

/// The rebuild speed limits are array settings kept in raidctl's extension block ("rebuild
/// speed limits must survive a crash and travel with the disks", src/metadata/extension.rs):
/// after `raidctl rebuild --speed-min/--speed-max` and a restart, the array must still use them.
#[test]
fn rebuild_speed_limits_survive_a_restart() {
    let name = "rb-speed";
    let mut h = Harness::create(name, "1", 2, 0);
    h.assemble();
    h.ok(&[
        "rebuild",
        name,
        "--speed-min",
        "4000",
        "--speed-max",
        "8000",
    ]);
    let st = h.status();
    assert_eq!(st["speed_min_kib"].as_u64(), Some(4000), "{st:#}");
    assert_eq!(st["speed_max_kib"].as_u64(), Some(8000), "{st:#}");
    h.stop();
    let ex = h.raidctl(&["examine", "--json", &h.members[0]]).ok();
    let ex: Value = serde_json::from_str(&ex.stdout).expect("examine --json");
    h.assemble();
    let st = h.status();
    assert_eq!(
        (st["speed_min_kib"].as_u64(), st["speed_max_kib"].as_u64()),
        (Some(4000), Some(8000)),
        "the speed limits set with `raidctl rebuild` were lost by a stop and assemble \
         (status after the restart: {}/{} KiB/s; extension block on m0: {})",
        st["speed_min_kib"],
        st["speed_max_kib"],
        ex[0]["extension"]
    );
    h.stop();
}

/// A member that was failed and removed comes back with `add`: the write-intent bitmap still
/// marks every chunk written while it was away, so only those are rebuilt (md's re-add), the
/// daemon says how many bytes that was, and afterwards the array reads what was written and
/// mdadm sees the member active again.
#[test]
fn readded_member_recovers_only_the_dirty_chunks() {
    let name = "rb-readd";
    let mut h = Harness::create_with(name, "5", 4, 0, &["--bitmap-chunk", "1M"]);
    h.assemble();
    let size = h.size();
    let expected = h.path("expected.img");
    fill_random(&expected, size, 91);
    h.nbdcopy(&s(&expected), &h.uri());
    // Quiet bits clear after two passes of the bitmap daemon (5 s each, md's default).
    wait_for(
        "the bitmap to be clean",
        STATE_TIMEOUT,
        || (h.status()["bitmap"]["dirty_bits"].as_u64() == Some(0)).then_some(()),
        || format!("{:#}", h.status()),
    );
    let text = h.ok(&["status", name]).stdout;
    assert!(
        text.contains("bitmap: 0 of "),
        "status shows the bitmap:\n{text}"
    );

    let victim = h.members[1].clone();
    h.ok(&["fail", name, &victim]);
    h.ok(&["remove", name, &victim]);
    // Two 64 KiB writes while it is away, far apart.
    let qemu_io = require("qemu-io", "qemu-utils");
    let second = size / 2 / MIB * MIB;
    for (at, byte) in [(0u64, 0x5au8), (second, 0xa5)] {
        let cmd = format!("write -P {byte} {at} 65536");
        let ran = run(h.command(&qemu_io, &["-f", "raw", &h.uri(), "-c", &cmd]));
        assert!(ran.success(), "{}", ran.describe());
        let f = OpenOptions::new().write(true).open(&expected).unwrap();
        f.write_all_at(&vec![byte; 65536], at).unwrap();
    }
    let dirty = h.status()["bitmap"]["dirty_bits"].as_u64().unwrap_or(0);
    assert!((2..=4).contains(&dirty), "{:#}", h.status());

    let ran = h.ok(&["add", name, &victim]);
    assert!(ran.stdout.contains(&victim), "{}", ran.describe());
    h.ok(&["rebuild", name, "--wait"]);
    let log = wait_for_log(&h, "re-added member");
    let line = log
        .lines()
        .find(|l| l.contains("finished:") && l.contains("re-added member"))
        .unwrap_or_else(|| panic!("no rebuild line for the re-add:\n{}", tail(&log, 4000)));
    let copied: u64 = line
        .split("finished: ")
        .nth(1)
        .and_then(|t| t.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no byte count in {line:?}"));
    let member = 96 * MIB;
    assert!(
        copied > 0 && copied <= 4 * MIB && copied * 10 < member,
        "a re-add copies only the dirty chunks, got {copied} bytes: {line}"
    );
    assert!(log.contains("MemberAdded"), "{}", tail(&log, 4000));
    let st = h.status();
    assert_all_in_sync(&st, &[(1, &victim)], "after the re-add");
    let out = h.read_export("readback.img");
    assert_same_range(&expected, &out, 0, size, "after the re-add");
    h.stop();
    let md = mdadm_examine(&victim);
    assert_eq!(md.get("Device Role"), "Active device 1", "{}", md.text);
    assert!(md.get("Array State").starts_with("AAAA "), "{}", md.text);
    let other = mdadm_examine(&h.members[0]);
    assert_eq!(md.get("Events"), other.get("Events"), "{}", md.text);
}
