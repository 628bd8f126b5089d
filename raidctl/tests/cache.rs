//! Integration tests of the write-back cache, driven through the `raidctl` binary and libnbd:
//! what survives a `kill -9` of the daemon in write-through and in write-back (data flushed on
//! one connection or another), the battery flag and battery file switching the effective
//! policy (with the drain, the events in the log and in `monitor --json`), bad input, the
//! policy persisting across stop/assemble, and read hits.
//!
//! Every test works in its own temporary directory under cargo's target tmp dir with its own
//! run directory (`RAIDCTL_RUN_DIR`). A [`Harness`] guard undoes everything when dropped, also
//! when the test fails: background children (python, fio, monitors) are killed, `raidctl stop`
//! is asked, and a daemon still alive is killed. Needs root, nbdcopy, fio (nbd engine) and the
//! libnbd Python module; a missing one fails the test saying what to install. Nothing here
//! asserts a duration; timeouts only stop hangs.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

const MIB: u64 = 1 << 20;
const BLOCK: u64 = 4096;
/// Hang guards (never performance expectations).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(300);
const STATE_TIMEOUT: Duration = Duration::from_secs(120);
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------------
// Small helpers: seeded data, commands with a hang guard, tools
// ---------------------------------------------------------------------------------------------

/// xorshift64*: reproducible contents and offsets.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(len + 8);
        while v.len() < len {
            v.extend_from_slice(&self.next_u64().to_le_bytes());
        }
        v.truncate(len);
        v
    }
}

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
            self.status
                .map_or("killed by the hang guard".into(), |s| s.to_string()),
            tail(&self.stdout, 4000),
            tail(&self.stderr, 4000)
        )
    }
}

fn tail(s: &str, max: usize) -> &str {
    let mut start = s.len().saturating_sub(max);
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

fn describe_command(cmd: &Command) -> String {
    let mut parts = vec![cmd.get_program().to_string_lossy().into_owned()];
    parts.extend(cmd.get_args().map(|a| a.to_string_lossy().into_owned()));
    parts.join(" ")
}

/// Runs `cmd` with captured output, killing it after `timeout` (a hang guard).
fn run_with_timeout(mut cmd: Command, timeout: Duration) -> Ran {
    let what = describe_command(&cmd);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            let stderr = format!("cannot run it: {e}");
            return Ran {
                what,
                status: None,
                stdout: String::new(),
                stderr,
            };
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

fn s(p: &Path) -> String {
    p.to_str().expect("temporary paths are UTF-8").to_string()
}

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

/// A python3 that can `import nbd`: the first on $PATH, else the system one (a pyenv python3
/// cannot import the Debian module).
fn python() -> &'static Path {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON.get_or_init(|| {
        let candidates = [find_tool("python3"), Some(PathBuf::from("/usr/bin/python3"))];
        for p in candidates.into_iter().flatten() {
            let mut c = Command::new(&p);
            c.args(["-c", "import nbd"]);
            if run_with_timeout(c, Duration::from_secs(60)).success() {
                return p;
            }
        }
        panic!("no python3 can import the libnbd module (Debian/Ubuntu: apt-get install -y python3-libnbd)")
    })
}

fn process_alive(pid: u32) -> bool {
    // A zombie (dead, not yet reaped) counts as gone.
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

fn is_raidctl(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "raidctl")
}

fn wait_until_dead(pid: u32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while process_alive(pid) {
        if Instant::now() > deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(20));
    }
    true
}

/// Polls `ready` until it returns Some, panicking with `what` and `context()` after `timeout`.
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

/// A tiny libnbd driver. argv: URI PLAN. Plan lines (handles are numbers, connected on first use):
///   c H                        connect handle H
///   w H OFFSET FILE AT LEN     pwrite LEN bytes of FILE (from AT) at OFFSET, no flush, no FUA
///   f H                        flush
///   r H OFFSET LEN FILE        pread into FILE
///   hold MARKER                create MARKER, then keep every handle open until killed
const DRIVER: &str = r#"
import nbd, sys, time
uri, plan = sys.argv[1], sys.argv[2]
hs = {}
def h(n):
    if n not in hs:
        hs[n] = nbd.NBD()
        hs[n].connect_uri(uri)
    return hs[n]
for line in open(plan):
    op, *a = line.split()
    if op == "c":
        h(a[0])
    elif op == "w":
        with open(a[2], "rb") as f:
            f.seek(int(a[3]))
            data = f.read(int(a[4]))
        h(a[0]).pwrite(data, int(a[1]))
    elif op == "f":
        h(a[0]).flush()
    elif op == "r":
        data = h(a[0]).pread(int(a[2]), int(a[1]))
        with open(a[3], "wb") as f:
            f.write(data)
    elif op == "hold":
        open(a[0], "w").close()
        while True:
            time.sleep(1)
    else:
        sys.exit("unknown op " + op)
"#;

// ---------------------------------------------------------------------------------------------
// The harness: one RAID5 of four 64M member files, its run directory, daemon and children
// ---------------------------------------------------------------------------------------------

struct Harness {
    dir: PathBuf,
    run_dir: PathBuf,
    name: String,
    members: Vec<String>,
    /// Daemon pids seen (for the kill -9 fallback).
    pids: Vec<u32>,
    /// Background children, killed by the cleanup if still running.
    children: Vec<(String, Child)>,
    // Last: removed after Drop::drop has cleaned up what lives inside it.
    _tmp: tempfile::TempDir,
}

impl Harness {
    /// Creates and assembles `raidctl create NAME --level 5 --chunk 64K --size 64M m0..m3`.
    fn new(name: &str, assemble_flags: &[&str]) -> Harness {
        // SAFETY: geteuid has no preconditions.
        assert_eq!(
            unsafe { libc::geteuid() },
            0,
            "these tests run daemons: run them as root"
        );
        let tmp = tempfile::Builder::new()
            .prefix("cache-")
            .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
            .expect("create a temporary directory");
        let dir = fs::canonicalize(tmp.path()).expect("canonicalize the temporary directory");
        let mut h = Harness {
            run_dir: dir.join("run"),
            name: name.to_string(),
            members: (0..4).map(|i| s(&dir.join(format!("m{i}")))).collect(),
            dir,
            pids: Vec::new(),
            children: Vec::new(),
            _tmp: tmp,
        };
        let mut args = vec![
            "create", name, "--level", "5", "--chunk", "64K", "--size", "64M",
        ];
        args.extend(h.members.iter().map(String::as_str));
        h.ok(&args);
        h.assemble(assemble_flags);
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
        run_with_timeout(self.raidctl_command(args), COMMAND_TIMEOUT)
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

    /// `raidctl assemble NAME m0..m3 FLAGS`, which must succeed.
    fn assemble(&mut self, flags: &[&str]) {
        let mut args = vec!["assemble", self.name.as_str()];
        args.extend(self.members.iter().map(String::as_str));
        args.extend_from_slice(flags);
        let args: Vec<String> = args.into_iter().map(String::from).collect();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.ok(&args);
        let pid = self.pid();
        assert!(
            process_alive(pid),
            "assemble succeeded but pid {pid} is not running"
        );
        self.pids.push(pid);
    }

    fn log(&self) -> String {
        fs::read_to_string(self.run_dir.join(format!("{}.log", self.name)))
            .unwrap_or_else(|e| format!("(no log: {e})"))
    }

    fn uri(&self) -> String {
        let sock = self.run_dir.join(format!("{}.sock", self.name));
        format!("nbd+unix:///{}?socket={}", self.name, s(&sock))
    }

    fn status(&self) -> Value {
        let ran = self.ok(&["status", &self.name, "--json"]);
        serde_json::from_str(&ran.stdout)
            .unwrap_or_else(|e| panic!("status --json is not JSON ({e}):\n{}", ran.stdout))
    }

    /// The `cache` object of `status --json`.
    fn cache(&self) -> Value {
        let st = self.status();
        assert!(
            st["cache"].is_object(),
            "status has no cache object:\n{st:#}"
        );
        st["cache"].clone()
    }

    /// `raidctl cache NAME ARGS --json`, which must succeed; returns what it printed.
    fn set_cache(&self, args: &[&str]) -> Value {
        let mut all = vec!["cache", self.name.as_str()];
        all.extend_from_slice(args);
        all.push("--json");
        let ran = self.ok(&all);
        serde_json::from_str(&ran.stdout)
            .unwrap_or_else(|e| panic!("cache --json is not JSON ({e}):\n{}", ran.stdout))
    }

    fn pid(&self) -> u32 {
        let st = self.status();
        st["pid"]
            .as_u64()
            .unwrap_or_else(|| panic!("status has no pid:\n{st:#}")) as u32
    }

    /// SIGKILL to the daemon; returns once it is gone.
    fn kill9(&mut self) {
        let pid = self.pid();
        assert!(is_raidctl(pid), "pid {pid} from status is not raidctl");
        // SAFETY: plain syscall on the pid of the daemon this test started.
        assert_eq!(
            unsafe { libc::kill(pid as i32, libc::SIGKILL) },
            0,
            "kill -9 {pid}"
        );
        assert!(
            wait_until_dead(pid, Duration::from_secs(30)),
            "pid {pid} survived kill -9"
        );
    }

    fn stop(&mut self) {
        let pid = self.pid();
        self.ok(&["stop", &self.name]);
        assert!(
            wait_until_dead(pid, Duration::from_secs(60)),
            "daemon {pid} alive after stop"
        );
    }

    /// Reads the whole export into DIR/`file` with nbdcopy.
    fn read_export(&self, file: &str) -> PathBuf {
        let out = self.path(file);
        let _ = fs::remove_file(&out);
        let nbdcopy = require("nbdcopy", "libnbd-bin");
        let ran = run_with_timeout(
            self.command(&nbdcopy, &[&self.uri(), &s(&out)]),
            COMMAND_TIMEOUT,
        );
        assert!(
            ran.success(),
            "nbdcopy failed:\n{}\n  log: {}",
            ran.describe(),
            tail(&self.log(), 4000)
        );
        out
    }

    fn python_command(&self, label: &str, plan: &str) -> Command {
        let script = self.path("driver.py");
        fs::write(&script, DRIVER).expect("write the driver");
        let plan_file = self.path(&format!("{label}.plan"));
        fs::write(&plan_file, plan).expect("write the plan");
        self.command(python(), &[&s(&script), &self.uri(), &s(&plan_file)])
    }

    /// Runs a driver plan to its end; it must succeed.
    fn python(&self, label: &str, plan: &str) {
        let ran = run_with_timeout(self.python_command(label, plan), COMMAND_TIMEOUT);
        assert!(
            ran.success(),
            "libnbd driver failed:\n{}\n  log: {}",
            ran.describe(),
            tail(&self.log(), 4000)
        );
    }

    /// Runs a driver plan in the background, then `hold`: returns once every step before it
    /// is done, with the handles still open (the child is the returned index).
    fn python_hold(&mut self, label: &str, plan: &str) -> usize {
        let marker = self.path(&format!("{label}.held"));
        let plan = format!("{plan}hold {}\n", s(&marker));
        let cmd = self.python_command(label, &plan);
        let index = self.spawn(label, cmd);
        let deadline = Instant::now() + STATE_TIMEOUT;
        while !marker.exists() {
            if let Ok(Some(st)) = self.children[index].1.try_wait() {
                panic!(
                    "the {label} driver exited ({st}): {:?}",
                    self.child_output(label)
                );
            }
            assert!(
                Instant::now() < deadline,
                "the {label} driver hangs: {:?}",
                self.child_output(label)
            );
            thread::sleep(Duration::from_millis(20));
        }
        index
    }

    /// Reads `len` bytes at `offset` on a fresh connection.
    fn pread(&self, offset: u64, len: u64) -> Vec<u8> {
        let out = self.path("pread.out");
        self.python("pread", &format!("r 0 {offset} {len} {}\n", s(&out)));
        fs::read(&out).expect("read the driver's output")
    }

    /// Starts a background child whose output goes to DIR/LABEL.out and .err.
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

    fn kill_child(&mut self, index: usize) {
        let child = &mut self.children[index].1;
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Waits for a background child (killed after `timeout`: a hang guard).
    fn wait_child(&mut self, index: usize, timeout: Duration) -> (Option<ExitStatus>, String) {
        let deadline = Instant::now() + timeout;
        let status = loop {
            match self.children[index].1.try_wait() {
                Ok(Some(st)) => break Some(st),
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(50)),
                _ => {
                    self.kill_child(index);
                    break None;
                }
            }
        };
        let (out, err) = self.child_output(&self.children[index].0);
        (status, format!("{out}{err}"))
    }

    /// Undoes everything; never panics (it also runs while a failed test unwinds).
    fn cleanup(&mut self) {
        for i in 0..self.children.len() {
            self.kill_child(i);
        }
        if self.pids.iter().any(|&p| process_alive(p) && is_raidctl(p)) {
            let mut c = self.raidctl_command(&["stop", &self.name]);
            c.stdin(Stdio::null());
            let _ = run_with_timeout(c, CLEANUP_TIMEOUT);
        }
        for &pid in &self.pids {
            if process_alive(pid) && is_raidctl(pid) {
                // SAFETY: plain syscall on the pid of a daemon this test started.
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
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

/// Waits until the daemon log holds `count` lines with `needle`.
fn wait_for_log(h: &Harness, needle: &str, count: usize) {
    wait_for(
        &format!("{count} x {needle:?} in the daemon log"),
        STATE_TIMEOUT,
        || (h.log().matches(needle).count() >= count).then_some(()),
        || tail(&h.log(), 4000).to_string(),
    )
}

fn str_of<'v>(v: &'v Value, key: &str) -> &'v str {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("no string {key:?} in:\n{v:#}"))
}

fn u64_of(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("no number {key:?} in:\n{v:#}"))
}

/// `(mode, effective, battery, battery_file)` of a cache report.
fn policy_of(c: &Value) -> (String, String, String, Option<String>) {
    let battery_file = c["battery_file"].as_str().map(String::from);
    (
        str_of(c, "mode").into(),
        str_of(c, "effective").into(),
        str_of(c, "battery").into(),
        battery_file,
    )
}

/// Writes a 4 KiB seeded pattern to DIR/`file` and returns it.
fn pattern(h: &Harness, file: &str, seed: u64) -> Vec<u8> {
    let data = Rng::new(seed).bytes(BLOCK as usize);
    fs::write(h.path(file), &data).expect("write the pattern");
    data
}

// ---------------------------------------------------------------------------------------------
// 1. Write-through (the default): a write without flush survives kill -9
// ---------------------------------------------------------------------------------------------

#[test]
fn write_through_write_survives_kill_9() {
    let mut h = Harness::new("wt", &[]);
    let c = h.set_cache(&[]);
    assert_eq!(
        policy_of(&c),
        (
            "write-back".into(),
            "write-through".into(),
            "absent".into(),
            None
        ),
        "{c:#}"
    );
    assert!(str_of(&c, "reason").contains("battery absent"), "{c:#}");
    let text = h.ok(&["cache", "wt"]).stdout;
    assert!(
        text.contains("write-through") && text.contains("absent"),
        "raidctl cache wt:\n{text}"
    );

    let offset = 5 * MIB + 3 * BLOCK;
    let data = pattern(&h, "a.bin", 1);
    let held = h.python_hold(
        "writer",
        &format!("w 0 {offset} {} 0 {BLOCK}\n", s(&h.path("a.bin"))),
    );
    h.kill9();
    h.kill_child(held);
    h.assemble(&[]);
    assert!(
        h.pread(offset, BLOCK) == data,
        "the write-through write is not on the array after kill -9"
    );
}

// ---------------------------------------------------------------------------------------------
// 2. Write-back: flushed data survives kill -9; unflushed blocks are old or new, never torn
// ---------------------------------------------------------------------------------------------

#[test]
fn write_back_flushed_data_survives_kill_9() {
    // Dense (half the blocks of 21 RAID5 rows): rows are destaged with many dirty blocks.
    const REGION: u64 = 4 * MIB;
    const WRITES: usize = 256;
    let mut h = Harness::new("wb", &[]);
    // Random old contents in the region the writes go to (written through, then flushed).
    fs::write(h.path("fill.bin"), Rng::new(2).bytes(REGION as usize)).expect("write the fill");
    let nbdcopy = require("nbdcopy", "libnbd-bin");
    let ran = run_with_timeout(
        h.command(&nbdcopy, &[&s(&h.path("fill.bin")), &h.uri()]),
        COMMAND_TIMEOUT,
    );
    assert!(ran.success(), "nbdcopy fill failed:\n{}", ran.describe());
    let before = h.read_export("before.img");

    let c = h.set_cache(&["--battery", "present"]);
    assert_eq!(str_of(&c, "effective"), "write-back", "{c:#}");
    assert_eq!(str_of(&h.cache(), "effective"), "write-back");

    // 2 x 256 distinct random blocks: A (then flush), B (no flush).
    let mut rng = Rng::new(3);
    let mut kind: HashMap<u64, (bool, usize)> = HashMap::new(); // block -> (in A, index)
    let mut order = Vec::new();
    while order.len() < 2 * WRITES {
        let b = rng.next_u64() % (REGION / BLOCK);
        if !kind.contains_key(&b) {
            kind.insert(b, (order.len() < WRITES, order.len()));
            order.push(b);
        }
    }
    let new_data = Rng::new(4).bytes(2 * WRITES * BLOCK as usize);
    fs::write(h.path("new.bin"), &new_data).expect("write the new data");
    let new_file = s(&h.path("new.bin"));
    let mut plan = String::new();
    for (i, b) in order.iter().enumerate() {
        if i == WRITES {
            plan.push_str("f 0\n");
        }
        plan.push_str(&format!(
            "w 0 {} {new_file} {} {BLOCK}\n",
            b * BLOCK,
            i as u64 * BLOCK
        ));
    }
    let held = h.python_hold("writer", &plan);
    let c = h.cache();
    let dirty = u64_of(&c, "dirty_bytes");
    if dirty == 0 {
        eprintln!("note: region B was already destaged (max age) before the kill: {c}");
    } else {
        eprintln!("{dirty} bytes dirty in the cache at the kill");
    }
    h.kill9();
    h.kill_child(held);
    h.assemble(&[]);
    let after = h.read_export("after.img");

    // Block by block: A new, B old or new, everything else as before.
    let (mut fb, mut fa) = (File::open(&before).unwrap(), File::open(&after).unwrap());
    assert_eq!(
        fb.metadata().unwrap().len(),
        fa.metadata().unwrap().len(),
        "export size changed"
    );
    let (mut bb, mut ba) = (vec![0u8; MIB as usize], vec![0u8; MIB as usize]);
    let (mut problems, mut b_new, mut block) = (Vec::new(), 0, 0u64);
    loop {
        let n = fb.read(&mut bb).unwrap();
        if n == 0 {
            break;
        }
        fa.read_exact(&mut ba[..n])
            .expect("after.img is as long as before.img");
        for (old, now) in bb[..n]
            .chunks(BLOCK as usize)
            .zip(ba[..n].chunks(BLOCK as usize))
        {
            let new = kind
                .get(&block)
                .map(|&(_, i)| &new_data[i * BLOCK as usize..][..BLOCK as usize]);
            let fine = match kind.get(&block) {
                Some((true, _)) => now == new.unwrap(),
                Some((false, _)) => {
                    b_new += usize::from(now == new.unwrap());
                    now == old || now == new.unwrap()
                }
                None => now == old,
            };
            if !fine && problems.len() < 20 {
                let what = match kind.get(&block) {
                    Some((true, _)) => "flushed (A) block lost",
                    Some((false, _)) => "unflushed (B) block neither old nor new",
                    None => "block nobody wrote changed",
                };
                problems.push(format!("block {block} (byte {}): {what}", block * BLOCK));
            }
            block += 1;
        }
    }
    eprintln!("{b_new} of {WRITES} unflushed blocks reached the members before the kill");
    assert!(
        problems.is_empty(),
        "after kill -9 and assemble:\n{}",
        problems.join("\n")
    );
}

// ---------------------------------------------------------------------------------------------
// 3. Losing the battery under random writes drains the cache and is reported
// ---------------------------------------------------------------------------------------------

/// The JSON events a `monitor --json` child printed so far.
fn monitor_events(h: &Harness, label: &str) -> Vec<String> {
    h.child_output(label)
        .0
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap_or_else(|e| {
                panic!("monitor --json printed a line that is not JSON ({e}): {l:?}")
            });
            str_of(&v, "event").to_string()
        })
        .collect()
}

#[test]
fn battery_loss_during_random_writes_drains_and_reports() {
    let mut h = Harness::new("bl", &[]);
    // The monitor is subscribed once it reports an event: flip until it has one.
    let monitor = h.spawn("monitor", h.raidctl_command(&["monitor", "bl", "--json"]));
    wait_for(
        "the monitor to report CacheWriteBack",
        STATE_TIMEOUT,
        || {
            h.set_cache(&["--battery", "absent"]);
            h.set_cache(&["--battery", "present"]);
            thread::sleep(Duration::from_millis(300));
            monitor_events(&h, "monitor")
                .contains(&"CacheWriteBack".to_string())
                .then_some(())
        },
        || format!("{:?}", h.child_output("monitor")),
    );
    let seen = monitor_events(&h, "monitor").len();
    assert_eq!(str_of(&h.cache(), "effective"), "write-back");
    let (wt_before, wb_before) = (
        h.log().matches("CacheWriteThrough").count(),
        h.log().matches("CacheWriteBack").count(),
    );

    // 32 MiB of crc32c-verified random 4k writes, 32 in flight; writes held to 2000/s so the
    // battery goes away while they run.
    let fio = fio_command(&h, "--do_verify=1");
    let fio = h.spawn("fio", fio);
    wait_for(
        "fio to start writing",
        STATE_TIMEOUT,
        // (status.io counts the engine's writes: the cache's show up only once destaged)
        || (u64_of(&h.cache(), "dirty_bytes") > 0).then_some(()),
        String::new,
    );
    thread::sleep(Duration::from_secs(1));
    let c = h.cache();
    eprintln!(
        "before the battery goes: dirty {} bytes, fio running: {}",
        u64_of(&c, "dirty_bytes"),
        h.children[fio].1.try_wait().ok().flatten().is_none()
    );

    let c = h.set_cache(&["--battery", "absent"]);
    for c in [c, h.cache()] {
        assert_eq!(str_of(&c, "effective"), "write-through", "{c:#}");
        assert_eq!(
            u64_of(&c, "dirty_bytes"),
            0,
            "returned before the drain: {c:#}"
        );
        assert!(str_of(&c, "reason").contains("battery absent"), "{c:#}");
        assert_eq!(str_of(&c, "battery"), "absent", "{c:#}");
    }
    wait_for_log(&h, "CacheWriteThrough", wt_before + 1);

    let (status, out) = h.wait_child(fio, COMMAND_TIMEOUT);
    assert!(
        status.is_some_and(|s| s.success()),
        "fio failed ({status:?}):\n{}",
        tail(&out, 6000)
    );
    assert!(
        out.contains("err= 0"),
        "fio reports an error:\n{}",
        tail(&out, 6000)
    );
    assert!(
        !out.to_lowercase().contains("verify: bad"),
        "fio verify errors:\n{}",
        tail(&out, 6000)
    );
    assert_eq!(
        u64_of(&h.cache(), "dirty_bytes"),
        0,
        "write-through left dirty data"
    );

    let c = h.set_cache(&["--battery", "present"]);
    assert_eq!(str_of(&c, "effective"), "write-back", "{c:#}");
    wait_for_log(&h, "CacheWriteBack", wb_before + 1);

    let events = wait_for(
        "CacheWriteThrough then CacheWriteBack from monitor --json",
        STATE_TIMEOUT,
        || {
            let ev = monitor_events(&h, "monitor");
            let new = &ev[seen..];
            let wt = new.iter().position(|e| e == "CacheWriteThrough")?;
            new[wt..]
                .iter()
                .any(|e| e == "CacheWriteBack")
                .then_some(ev)
        },
        || format!("{:?}", h.child_output("monitor")),
    );
    eprintln!("monitor events: {events:?}");
    assert!(
        h.children[monitor].1.try_wait().ok().flatten().is_none(),
        "the monitor ended early"
    );

    // What the drain wrote is on the members: kill -9, assemble, verify what fio wrote.
    assert_eq!(
        u64_of(&h.cache(), "dirty_bytes"),
        0,
        "nothing was written since"
    );
    h.kill9();
    h.assemble(&[]);
    let verify = fio_command(&h, "--verify_only=1");
    let verify = h.spawn("fio-verify", verify);
    let (status, out) = h.wait_child(verify, COMMAND_TIMEOUT);
    assert!(
        status.is_some_and(|s| s.success()) && out.contains("err= 0"),
        "after kill -9 and assemble, fio --verify_only fails ({status:?}): data the drain \
         acknowledged is not on the members:\n{}",
        tail(&out, 6000)
    );
}

/// fio (nbd engine) over the first 32 MiB: random 4k writes, 32 in flight, at most 2000
/// writes/s, crc32c-verified; `mode` is "--do_verify=1" or "--verify_only=1".
fn fio_command(h: &Harness, mode: &str) -> Command {
    let uri = format!("--uri={}", h.uri());
    h.command(
        &require("fio", "fio"),
        &[
            "--name=cachejob",
            "--ioengine=nbd",
            &uri,
            "--rw=randwrite",
            "--bs=4k",
            "--iodepth=32",
            "--size=32M",
            "--verify=crc32c",
            "--randrepeat=1",
            "--rate_iops=,2000",
            mode,
        ],
    )
}

// ---------------------------------------------------------------------------------------------
// 4. A battery file switches the policy within seconds; bad input changes nothing
// ---------------------------------------------------------------------------------------------

/// Writes `word` into `file` the way a UPS daemon would: a temporary file, then rename.
fn write_battery(file: &Path, word: &str) {
    let tmp = file.with_extension("tmp");
    fs::write(&tmp, word).expect("write the battery word");
    fs::rename(&tmp, file).expect("rename the battery file");
}

fn wait_for_battery(h: &Harness, battery: &str, effective: &str) -> Value {
    let started = Instant::now();
    let c = wait_for(
        &format!("battery {battery} / {effective}"),
        Duration::from_secs(10),
        || {
            let c = h.cache();
            (str_of(&c, "battery") == battery && str_of(&c, "effective") == effective).then_some(c)
        },
        || format!("{:#}", h.cache()),
    );
    eprintln!("battery file -> {battery}: took {:?}", started.elapsed());
    c
}

#[test]
fn battery_file_switches_within_seconds() {
    let h = Harness::new("bf", &[]);
    // The manual flag the battery file overrides.
    h.set_cache(&["--battery", "present"]);
    let file = h.path("battery");
    let f = s(&file);
    fs::write(&file, "present\n").unwrap();
    let c = h.set_cache(&["--battery-file", &f]);
    assert_eq!(
        policy_of(&c),
        (
            "write-back".into(),
            "write-back".into(),
            "present".into(),
            Some(f.clone())
        ),
        "{c:#}"
    );

    write_battery(&file, "charging");
    let c = wait_for_battery(&h, "charging", "write-through");
    assert_eq!(c["battery_file"].as_str(), Some(f.as_str()), "{c:#}");
    assert!(str_of(&c, "reason").contains("charging"), "{c:#}");
    assert_eq!(u64_of(&c, "dirty_bytes"), 0, "{c:#}");

    write_battery(&file, "bogus");
    let c = wait_for_battery(&h, "failed", "write-through");
    assert_eq!(c["battery_file"].as_str(), Some(f.as_str()), "{c:#}");

    // Bad input: exit 1, one line on stderr, nothing changed.
    let unchanged = policy_of(&h.cache());
    for (args, needles) in [
        (
            &["--battery-file", "/nonexistent"][..],
            &["/nonexistent"][..],
        ),
        (
            &["--mode", "bogus"],
            &["write-back", "write-through", "always-write-back"],
        ),
        (
            &["--battery", "bogus"],
            &["present", "absent", "charging", "failed"],
        ),
    ] {
        let mut all = vec!["cache", "bf"];
        all.extend_from_slice(args);
        let ran = h.raidctl(&all);
        assert_eq!(
            ran.status.and_then(|s| s.code()),
            Some(1),
            "{}",
            ran.describe()
        );
        let err = ran.stderr.trim();
        assert_eq!(
            err.lines().count(),
            1,
            "one line expected:\n{}",
            ran.describe()
        );
        for n in needles {
            assert!(
                err.contains(n),
                "the error should mention {n:?}:\n{}",
                ran.describe()
            );
        }
        assert_eq!(
            policy_of(&h.cache()),
            unchanged,
            "a rejected {args:?} changed the policy"
        );
    }

    // Back to the manual flag (present).
    let c = h.set_cache(&["--battery-file", "none"]);
    assert_eq!(
        policy_of(&c),
        ("write-back".into(), "write-back".into(), "present".into(), None),
        "--battery-file none should go back to the manual flag set before (--battery present):\n{c:#}"
    );
}

// ---------------------------------------------------------------------------------------------
// 5. A FLUSH on one connection makes writes acknowledged on another durable
// ---------------------------------------------------------------------------------------------

#[test]
fn flush_on_one_connection_covers_writes_on_another() {
    let mut h = Harness::new("fl", &[]);
    assert_eq!(
        str_of(&h.set_cache(&["--battery", "present"]), "effective"),
        "write-back"
    );
    let offset = 17 * MIB + 5 * BLOCK;
    let data = pattern(&h, "a.bin", 5);
    let a = s(&h.path("a.bin"));
    let held = h.python_hold(
        "writer",
        &format!("c 1\nc 2\nw 1 {offset} {a} 0 {BLOCK}\nf 2\n"),
    );
    eprintln!("cache at the kill: {}", h.cache());
    h.kill9();
    h.kill_child(held);
    h.assemble(&[]);
    assert!(
        h.pread(offset, BLOCK) == data,
        "a write flushed on another connection was lost by kill -9"
    );
}

// ---------------------------------------------------------------------------------------------
// 6. Mode and battery flag persist across stop/assemble
// ---------------------------------------------------------------------------------------------

#[test]
fn policy_persists_across_restart() {
    let mut h = Harness::new("pp", &[]);
    let c = h.set_cache(&["--mode", "write-through"]);
    assert_eq!(
        (str_of(&c, "mode"), str_of(&c, "effective")),
        ("write-through", "write-through")
    );
    h.stop();
    h.assemble(&[]);
    let c = h.cache();
    assert_eq!(
        policy_of(&c),
        (
            "write-through".into(),
            "write-through".into(),
            "absent".into(),
            None
        ),
        "{c:#}"
    );

    let c = h.set_cache(&["--mode", "always-write-back", "--battery", "absent"]);
    assert_eq!(
        policy_of(&c),
        (
            "always-write-back".into(),
            "write-back".into(),
            "absent".into(),
            None
        ),
        "{c:#}"
    );
    h.stop();
    let examined = h.ok(&["examine", &h.members[0], "--json"]).stdout;
    let examined: Value = serde_json::from_str(&examined).expect("examine --json is JSON");
    let ext = &examined[0]["extension"];
    if let Some(mode) = ext.get("cache_mode") {
        assert_eq!(
            mode.as_str(),
            Some("always-write-back"),
            "extension: {ext:#}"
        );
    } else {
        eprintln!("note: examine --json shows no cache_mode in the extension: {ext:#}");
    }
    let log_before = h.log().len();
    h.assemble(&[]);
    let c = h.cache();
    assert_eq!(
        policy_of(&c),
        (
            "always-write-back".into(),
            "write-back".into(),
            "absent".into(),
            None
        ),
        "{c:#}"
    );
    wait_for(
        "the always-write-back warning at start",
        STATE_TIMEOUT,
        || {
            h.log()
                .get(log_before..)
                .is_some_and(|l| l.contains("always-write-back"))
                .then_some(())
        },
        || tail(&h.log(), 4000).to_string(),
    );

    // The manual battery flag persists too.
    h.set_cache(&["--mode", "write-back", "--battery", "present"]);
    h.stop();
    h.assemble(&[]);
    let c = h.cache();
    assert_eq!(
        policy_of(&c),
        (
            "write-back".into(),
            "write-back".into(),
            "present".into(),
            None
        ),
        "{c:#}"
    );
}

// ---------------------------------------------------------------------------------------------
// 7. Reads of cached blocks are hits
// ---------------------------------------------------------------------------------------------

#[test]
fn read_hits_come_from_the_cache() {
    let h = Harness::new("rh", &["--cache-size", "16M"]);
    let c = h.set_cache(&["--battery", "present"]);
    assert_eq!(str_of(&c, "effective"), "write-back", "{c:#}");
    assert_eq!(
        u64_of(&c, "capacity_bytes"),
        16 * MIB,
        "--cache-size 16M: {c:#}"
    );
    let offset = 9 * MIB + 7 * BLOCK;
    let data = pattern(&h, "a.bin", 7);
    let a = s(&h.path("a.bin"));
    let out = s(&h.path("read.bin"));
    h.python(
        "rw",
        &format!(
            "w 0 {offset} {a} 0 {BLOCK}\nr 0 {offset} {BLOCK} {out}\nr 0 {offset} {BLOCK} {out}\n"
        ),
    );
    assert!(
        fs::read(&out).unwrap() == data,
        "read back differs from what was written"
    );
    let c = h.cache();
    let ratio = c["hit_ratio"]
        .as_f64()
        .unwrap_or_else(|| panic!("no hit_ratio after reads: {c:#}"));
    assert!(ratio > 0.0, "no read hit: {c:#}");
    assert!(u64_of(&c, "cached_bytes") > 0, "{c:#}");
}
