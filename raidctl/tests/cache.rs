//! Integration tests of the write-back cache, driven through the `raidctl` binary and libnbd:
//! what survives a `kill -9` of the daemon in write-through and in write-back (data flushed on
//! one connection or another, data drained when the battery goes), the battery flag and the
//! battery file switching the effective policy (events in the log and in `monitor --json`), bad
//! input, the policy persisting across stop/assemble, and read hits.
//!
//! Every test works in its own temporary directory under cargo's target tmp dir with its own
//! run directory (`RAIDCTL_RUN_DIR`). A [`Harness`] guard undoes everything when dropped, also
//! when the test fails: background children (python, fio, monitors) are killed, `raidctl stop`
//! is asked, and a daemon still alive is killed. Needs root, nbdcopy, fio (nbd engine) and the
//! libnbd Python module; a missing one fails the test saying what to install. Nothing here
//! asserts a duration; timeouts only stop hangs.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

mod common;
use common::{is_raidctl, process_alive, s, tail, wait_until_dead};

const MIB: u64 = 1 << 20;
const BLOCK: u64 = 4096;
/// Hang guards (never performance expectations): nothing here needs more than seconds.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);
const STATE_TIMEOUT: Duration = Duration::from_secs(120);

// ---------------------------------------------------------------------------------------------
// Small helpers: seeded data, commands with a hang guard, tools, processes
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
        let mut v: Vec<u8> = (0..len.div_ceil(8))
            .flat_map(|_| self.next_u64().to_le_bytes())
            .collect();
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
        let status = self
            .status
            .map_or("killed by the hang guard".into(), |s| s.to_string());
        let (out, err) = (tail(&self.stdout, 4000), tail(&self.stderr, 4000));
        format!(
            "$ {}\n  status: {status}\n  stdout: {out}\n  stderr: {err}",
            self.what
        )
    }
}

fn describe_command(cmd: &Command) -> String {
    let args = cmd.get_args().map(|a| a.to_string_lossy().into_owned());
    let mut parts = vec![cmd.get_program().to_string_lossy().into_owned()];
    parts.extend(args);
    parts.join(" ")
}

/// Waits for `child`, killing it after `timeout` (a hang guard: None then).
fn wait_child(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(s)) => return Some(s),
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    }
}

/// Runs `cmd` to completion, its output captured in anonymous files, under a hang guard.
fn run_with_timeout(mut cmd: Command, timeout: Duration) -> Ran {
    let what = describe_command(&cmd);
    let (mut out, mut err) = (tempfile::tempfile().unwrap(), tempfile::tempfile().unwrap());
    cmd.stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(err.try_clone().unwrap());
    let status = match cmd.spawn() {
        Ok(mut child) => wait_child(&mut child, timeout),
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
    let read = |f: &mut File| {
        let mut v = Vec::new();
        f.seek(SeekFrom::Start(0))
            .and_then(|_| f.read_to_end(&mut v))
            .expect("read output");
        String::from_utf8_lossy(&v).into_owned()
    };
    let (stdout, stderr) = (read(&mut out), read(&mut err));
    Ran {
        what,
        status,
        stdout,
        stderr,
    }
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
        let candidates = [find_tool("python3"), Some("/usr/bin/python3".into())];
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
        thread::sleep(Duration::from_millis(50));
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
    /// Background children (label, child), killed by the cleanup if still running.
    children: Vec<(String, Child)>,
    // Last: removed after Drop::drop has cleaned up what lives inside it.
    _tmp: tempfile::TempDir,
}

impl Harness {
    /// `raidctl create NAME --level 5 --chunk 64K --size 64M m0..m3`, then assemble with `flags`.
    fn new(name: &str, flags: &[&str]) -> Harness {
        // SAFETY: geteuid has no preconditions.
        let euid = unsafe { libc::geteuid() };
        assert_eq!(euid, 0, "these tests run daemons: run them as root");
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
        h.assemble(flags);
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

    /// Panics unless `ran` succeeded, showing the daemon log.
    fn check(&self, ran: Ran) -> Ran {
        let log = self.log();
        assert!(
            ran.success(),
            "failed:\n{}\n  daemon log: {}",
            ran.describe(),
            tail(&log, 4000)
        );
        ran
    }

    fn ok(&self, args: &[&str]) -> Ran {
        self.check(self.raidctl(args))
    }

    /// `raidctl assemble NAME m0..m3 FLAGS`, which must succeed.
    fn assemble(&mut self, flags: &[&str]) {
        let mut args = vec!["assemble".to_string(), self.name.clone()];
        args.extend(self.members.iter().cloned());
        args.extend(flags.iter().map(|f| f.to_string()));
        self.ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
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
        let out = self.ok(&["status", &self.name, "--json"]).stdout;
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("status is not JSON ({e}):\n{out}"))
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
        let out = self.ok(&all).stdout;
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("cache is not JSON ({e}):\n{out}"))
    }

    fn pid(&self) -> u32 {
        u64_of(&self.status(), "pid") as u32
    }

    /// SIGKILL to the daemon; returns once it is gone.
    fn kill9(&mut self) {
        let pid = self.pid();
        assert!(is_raidctl(pid), "pid {pid} from status is not raidctl");
        // SAFETY: plain syscall on the pid of the daemon this test started.
        let killed = unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        assert_eq!(killed, 0, "kill -9 {pid}");
        assert!(
            wait_until_dead(pid, Duration::from_secs(30)),
            "{pid} survived kill -9"
        );
    }

    fn stop(&mut self) {
        let pid = self.pid();
        self.ok(&["stop", &self.name]);
        assert!(
            wait_until_dead(pid, Duration::from_secs(60)),
            "{pid} alive after stop"
        );
    }

    /// nbdcopy SRC DST (either may be the export's URI).
    fn nbdcopy(&self, src: &str, dst: &str) {
        let nbdcopy = require("nbdcopy", "libnbd-bin");
        self.check(run_with_timeout(
            self.command(&nbdcopy, &[src, dst]),
            COMMAND_TIMEOUT,
        ));
    }

    /// The libnbd driver running `plan` (label names its files).
    fn driver(&self, label: &str, plan: &str) -> Command {
        let script = self.path("driver.py");
        fs::write(&script, DRIVER).expect("write the driver");
        let plan_file = self.path(&format!("{label}.plan"));
        fs::write(&plan_file, plan).expect("write the plan");
        self.command(python(), &[&s(&script), &self.uri(), &s(&plan_file)])
    }

    /// Runs `plan` in the background up to a final `hold`: returns once every step is done,
    /// with the handles still open (the child's index).
    fn driver_hold(&mut self, label: &str, plan: &str) -> usize {
        let marker = self.path(&format!("{label}.held"));
        let cmd = self.driver(label, &format!("{plan}hold {}\n", s(&marker)));
        let index = self.spawn(label, cmd);
        let deadline = Instant::now() + STATE_TIMEOUT;
        while !marker.exists() {
            let exited = self.children[index].1.try_wait().ok().flatten();
            let out = || format!("{:?}", self.output(label));
            assert!(
                exited.is_none(),
                "the {label} driver exited ({exited:?}): {}",
                out()
            );
            assert!(
                Instant::now() < deadline,
                "the {label} driver hangs: {}",
                out()
            );
            thread::sleep(Duration::from_millis(20));
        }
        index
    }

    /// Reads `len` bytes at `offset` on a fresh connection.
    fn pread(&self, offset: u64, len: u64) -> Vec<u8> {
        let out = self.path("pread.out");
        let plan = format!("r 0 {offset} {len} {}\n", s(&out));
        self.check(run_with_timeout(
            self.driver("pread", &plan),
            COMMAND_TIMEOUT,
        ));
        fs::read(&out).expect("read the driver's output")
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

    /// A background child's stdout and stderr so far.
    fn output(&self, label: &str) -> (String, String) {
        let read = |ext: &str| fs::read_to_string(self.path(&format!("{label}.{ext}")));
        (
            read("out").unwrap_or_default(),
            read("err").unwrap_or_default(),
        )
    }

    fn running(&mut self, index: usize) -> bool {
        self.children[index].1.try_wait().ok().flatten().is_none()
    }

    fn kill_child(&mut self, index: usize) {
        wait_child(&mut self.children[index].1, Duration::ZERO);
    }

    /// Waits for a background child (hang guard); returns its status and output.
    fn finish(&mut self, index: usize) -> (Option<ExitStatus>, String) {
        let status = wait_child(&mut self.children[index].1, COMMAND_TIMEOUT);
        let (out, err) = self.output(&self.children[index].0);
        (status, format!("{out}{err}"))
    }
}

impl Drop for Harness {
    /// Undoes everything; never panics (it also runs while a failed test unwinds).
    fn drop(&mut self) {
        for i in 0..self.children.len() {
            self.kill_child(i);
        }
        if self.pids.iter().any(|&p| process_alive(p) && is_raidctl(p)) {
            let stop = self.raidctl_command(&["stop", &self.name]);
            let _ = run_with_timeout(stop, Duration::from_secs(60));
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

/// Waits until the daemon log holds `needle` at least `count` times.
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

/// "MODE EFFECTIVE BATTERY BATTERY_FILE" of a cache report ("-" without a battery file).
fn policy(c: &Value) -> String {
    let file = c["battery_file"].as_str().unwrap_or("-");
    let (mode, effective) = (str_of(c, "mode"), str_of(c, "effective"));
    format!("{mode} {effective} {} {file}", str_of(c, "battery"))
}

fn assert_policy(c: &Value, expected: &str, context: &str) {
    assert_eq!(policy(c), expected, "{context}:\n{c:#}");
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
    assert_policy(&c, "write-back write-through absent -", "a new array");
    assert!(str_of(&c, "reason").contains("battery absent"), "{c:#}");
    let text = h.ok(&["cache", "wt"]).stdout;
    assert!(
        text.contains("write-through") && text.contains("absent"),
        "{text}"
    );

    let offset = 5 * MIB + 3 * BLOCK;
    let data = pattern(&h, "a.bin", 1);
    let a = s(&h.path("a.bin"));
    let held = h.driver_hold("writer", &format!("w 0 {offset} {a} 0 {BLOCK}\n"));
    h.kill9();
    h.kill_child(held);
    h.assemble(&[]);
    assert!(
        h.pread(offset, BLOCK) == data,
        "the write-through write is lost after kill -9"
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
    // Random old contents where the writes go (written through: the battery is absent).
    fs::write(h.path("fill.bin"), Rng::new(2).bytes(REGION as usize)).unwrap();
    h.nbdcopy(&s(&h.path("fill.bin")), &h.uri());
    h.nbdcopy(&h.uri(), &s(&h.path("before.img")));

    assert_eq!(
        str_of(&h.set_cache(&["--battery", "present"]), "effective"),
        "write-back"
    );
    assert_eq!(str_of(&h.cache(), "effective"), "write-back");

    // 2 x 256 distinct random blocks: A (then a flush), then B (no flush).
    let mut rng = Rng::new(3);
    let mut index_of: HashMap<u64, usize> = HashMap::new();
    let mut order = Vec::new();
    while order.len() < 2 * WRITES {
        let b = rng.next_u64() % (REGION / BLOCK);
        if let std::collections::hash_map::Entry::Vacant(e) = index_of.entry(b) {
            e.insert(order.len());
            order.push(b);
        }
    }
    let new_data = Rng::new(4).bytes(2 * WRITES * BLOCK as usize);
    fs::write(h.path("new.bin"), &new_data).unwrap();
    let new_file = s(&h.path("new.bin"));
    let mut plan = String::new();
    for (i, b) in order.iter().enumerate() {
        if i == WRITES {
            plan.push_str("f 0\n");
        }
        let (at, from) = (b * BLOCK, i as u64 * BLOCK);
        plan.push_str(&format!("w 0 {at} {new_file} {from} {BLOCK}\n"));
    }
    let held = h.driver_hold("writer", &plan);
    let c = h.cache();
    match u64_of(&c, "dirty_bytes") {
        0 => eprintln!("note: region B was destaged (max age) before the kill: {c}"),
        dirty => eprintln!("{dirty} bytes dirty in the cache at the kill"),
    }
    h.kill9();
    h.kill_child(held);
    h.assemble(&[]);
    h.nbdcopy(&h.uri(), &s(&h.path("after.img")));

    // Block by block: A new, B old or new, everything else as before.
    let before = fs::read(h.path("before.img")).unwrap();
    let after = fs::read(h.path("after.img")).unwrap();
    assert_eq!(before.len(), after.len(), "the export's size changed");
    let (mut problems, mut b_new) = (Vec::new(), 0);
    let blocks = before
        .chunks(BLOCK as usize)
        .zip(after.chunks(BLOCK as usize));
    for (block, (old, now)) in blocks.enumerate() {
        let i = index_of.get(&(block as u64)).copied();
        let new = i.map(|i| &new_data[i * BLOCK as usize..(i + 1) * BLOCK as usize]);
        let problem = match i {
            Some(i) if i < WRITES => (Some(now) != new).then_some("flushed (A) block lost"),
            Some(_) => {
                b_new += usize::from(Some(now) == new);
                (now != old && Some(now) != new)
                    .then_some("unflushed (B) block is neither old nor new")
            }
            None => (now != old).then_some("a block nobody wrote changed"),
        };
        if let Some(p) = problem.filter(|_| problems.len() < 20) {
            problems.push(format!(
                "block {block} (byte {}): {p}",
                block as u64 * BLOCK
            ));
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

/// The event names a `monitor --json` child printed so far.
fn monitor_events(h: &Harness, label: &str) -> Vec<String> {
    let out = h.output(label).0;
    let parse = |l: &str| -> Value {
        serde_json::from_str(l).unwrap_or_else(|e| panic!("monitor --json printed {l:?}: {e}"))
    };
    out.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| str_of(&parse(l), "event").into())
        .collect()
}

/// fio (nbd engine) over the first 32 MiB: random 4k writes, 32 in flight, at most 2000
/// writes/s, crc32c-verified; `mode` is "--do_verify=1" or "--verify_only=1".
fn fio_command(h: &Harness, mode: &str) -> Command {
    let uri = format!("--uri={}", h.uri());
    let args = [
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
    ];
    h.command(&require("fio", "fio"), &args)
}

fn assert_fio_ok(status: Option<ExitStatus>, out: &str, what: &str) {
    let fine = status.is_some_and(|s| s.success()) && out.contains("err= 0");
    assert!(
        fine && !out.contains("verify: bad"),
        "{what} ({status:?}):\n{}",
        tail(out, 6000)
    );
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
                .iter()
                .any(|e| e == "CacheWriteBack")
                .then_some(())
        },
        || format!("{:?}", h.output("monitor")),
    );
    let seen = monitor_events(&h, "monitor").len();
    assert_eq!(str_of(&h.cache(), "effective"), "write-back");
    let count = |h: &Harness, event: &str| h.log().matches(event).count();
    let (wt_before, wb_before) = (count(&h, "CacheWriteThrough"), count(&h, "CacheWriteBack"));

    // About 4 s of writes (2000/s): the battery goes away while they run.
    let fio = h.spawn("fio", fio_command(&h, "--do_verify=1"));
    wait_for(
        "fio's first writes in the cache",
        STATE_TIMEOUT,
        // (status.io counts the engine's writes: the cache's show up there once destaged)
        || (u64_of(&h.cache(), "dirty_bytes") > 0).then_some(()),
        || format!("{:?}", h.output("fio")),
    );
    thread::sleep(Duration::from_secs(1));
    let dirty = u64_of(&h.cache(), "dirty_bytes");
    eprintln!(
        "battery goes with {dirty} bytes dirty, fio running: {}",
        h.running(fio)
    );

    let c = h.set_cache(&["--battery", "absent"]);
    for c in [c, h.cache()] {
        assert_policy(&c, "write-back write-through absent -", "battery absent");
        assert_eq!(
            u64_of(&c, "dirty_bytes"),
            0,
            "returned before the drain: {c:#}"
        );
        assert!(str_of(&c, "reason").contains("battery absent"), "{c:#}");
    }
    wait_for_log(&h, "CacheWriteThrough", wt_before + 1);
    let (status, out) = h.finish(fio);
    assert_fio_ok(status, &out, "fio failed");
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
            let wt = ev[seen..].iter().position(|e| e == "CacheWriteThrough")?;
            ev[seen + wt..]
                .iter()
                .any(|e| e == "CacheWriteBack")
                .then_some(ev)
        },
        || format!("{:?}", h.output("monitor")),
    );
    eprintln!("monitor events: {events:?}");
    assert!(
        h.running(monitor),
        "the monitor ended early: {:?}",
        h.output("monitor")
    );

    // What the drain wrote is on the members: kill -9, assemble, verify what fio wrote.
    assert_eq!(
        u64_of(&h.cache(), "dirty_bytes"),
        0,
        "nothing was written since"
    );
    h.kill9();
    h.assemble(&[]);
    let verify = h.spawn("fio-verify", fio_command(&h, "--verify_only=1"));
    let (status, out) = h.finish(verify);
    assert_fio_ok(
        status,
        &out,
        "after kill -9 and assemble, fio --verify_only fails",
    );
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

/// Polls status until the policy reads `expected` (10 s hang guard); prints how long it took.
fn wait_for_policy(h: &Harness, expected: &str) -> Value {
    let started = Instant::now();
    let c = wait_for(
        &format!("the cache policy {expected:?}"),
        Duration::from_secs(10),
        || Some(h.cache()).filter(|c| policy(c) == expected),
        || format!("{:#}", h.cache()),
    );
    eprintln!("{expected:?} after {:?}", started.elapsed());
    c
}

#[test]
fn battery_file_switches_within_seconds() {
    let h = Harness::new("bf", &[]);
    h.set_cache(&["--battery", "present"]); // the manual flag the file overrides
    let file = h.path("battery");
    let f = s(&file);
    fs::write(&file, "present\n").unwrap();
    let c = h.set_cache(&["--battery-file", &f]);
    assert_policy(
        &c,
        &format!("write-back write-back present {f}"),
        "battery file present",
    );

    write_battery(&file, "charging");
    let c = wait_for_policy(&h, &format!("write-back write-through charging {f}"));
    assert!(str_of(&c, "reason").contains("charging"), "{c:#}");
    assert_eq!(u64_of(&c, "dirty_bytes"), 0, "{c:#}");
    write_battery(&file, "bogus");
    wait_for_policy(&h, &format!("write-back write-through failed {f}"));

    // Bad input: exit 1, one line on stderr, nothing changed.
    let unchanged = policy(&h.cache());
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
        let ran = h.raidctl(&[&["cache", "bf"][..], args].concat());
        let err = ran.stderr.trim();
        let fine = ran.status.and_then(|s| s.code()) == Some(1) && err.lines().count() == 1;
        assert!(
            fine,
            "exit 1 and a one-line error expected:\n{}",
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
            policy(&h.cache()),
            unchanged,
            "a rejected {args:?} changed the policy"
        );
    }

    // Back to the manual flag set before (present).
    let c = h.set_cache(&["--battery-file", "none"]);
    assert_policy(&c, "write-back write-back present -", "--battery-file none");
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
    let held = h.driver_hold(
        "writer",
        &format!("c 1\nc 2\nw 1 {offset} {a} 0 {BLOCK}\nf 2\n"),
    );
    eprintln!("cache at the kill: {}", h.cache());
    h.kill9();
    h.kill_child(held);
    h.assemble(&[]);
    assert!(
        h.pread(offset, BLOCK) == data,
        "a write flushed on another connection is lost"
    );
}

// ---------------------------------------------------------------------------------------------
// 6. Mode and battery flag persist across stop/assemble
// ---------------------------------------------------------------------------------------------

#[test]
fn policy_persists_across_restart() {
    let mut h = Harness::new("pp", &[]);
    let c = h.set_cache(&["--mode", "write-through"]);
    assert_policy(
        &c,
        "write-through write-through absent -",
        "--mode write-through",
    );
    h.stop();
    h.assemble(&[]);
    assert_policy(
        &h.cache(),
        "write-through write-through absent -",
        "after a restart",
    );

    let c = h.set_cache(&["--mode", "always-write-back"]);
    assert_policy(
        &c,
        "always-write-back write-back absent -",
        "--mode always-write-back",
    );
    h.stop();
    let examined = h.ok(&["examine", &h.members[0], "--json"]).stdout;
    let examined: Value = serde_json::from_str(&examined).expect("examine --json is JSON");
    let ext = &examined[0]["extension"];
    match ext.get("cache_mode") {
        Some(mode) => assert_eq!(mode.as_str(), Some("always-write-back"), "{ext:#}"),
        None => eprintln!("note: examine --json shows no cache_mode: {ext:#}"),
    }
    let log_before = h.log().len();
    h.assemble(&[]);
    assert_policy(
        &h.cache(),
        "always-write-back write-back absent -",
        "after a restart",
    );
    wait_for(
        "the always-write-back warning at start",
        STATE_TIMEOUT,
        || {
            h.log()
                .get(log_before..)
                .filter(|l| l.contains("always-write-back"))
                .map(|_| ())
        },
        || tail(&h.log(), 4000).to_string(),
    );

    // The manual battery flag persists too.
    h.set_cache(&["--mode", "write-back", "--battery", "present"]);
    h.stop();
    h.assemble(&[]);
    assert_policy(
        &h.cache(),
        "write-back write-back present -",
        "after a restart",
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
    let (a, out) = (s(&h.path("a.bin")), s(&h.path("read.bin")));
    let read = format!("r 0 {offset} {BLOCK} {out}\n");
    let plan = format!("w 0 {offset} {a} 0 {BLOCK}\n{read}{read}");
    h.check(run_with_timeout(h.driver("rw", &plan), COMMAND_TIMEOUT));
    assert!(
        fs::read(&out).unwrap() == data,
        "the read differs from the write"
    );
    let c = h.cache();
    let ratio = c["hit_ratio"].as_f64();
    assert!(ratio.is_some_and(|r| r > 0.0), "no read hit: {c:#}");
    assert!(u64_of(&c, "cached_bytes") > 0, "{c:#}");
}
