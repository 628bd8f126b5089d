//! Integration tests of the write-back cache, driven through the `raidctl` binary and libnbd:
//! what survives a `kill -9` of the daemon in write-through and in write-back (data flushed on
//! one connection or another, data drained when the battery goes), the battery flag and the
//! battery file switching the effective policy (events in the log and in `monitor --json`), bad
//! input, the policy persisting across stop/assemble, and read hits.
//!
//! Every test works on its own [`Array`] fixture (a RAID5 of four 64M members), whose cleanup
//! kills background children (python, fio, monitors), asks `raidctl stop`, and kills a daemon
//! still alive. Needs root, nbdcopy, fio (nbd engine) and the libnbd Python module; a missing
//! one fails the test saying what to install. Nothing here asserts a duration; timeouts only
//! stop hangs.

pub(crate) use common::prelude::*;

mod battery;
#[path = "../common/mod.rs"]
mod common;
mod durability;

// Topic modules reach each other's helpers through the crate root.
#[allow(unused_imports)]
pub(crate) use self::{battery::*, durability::*};

pub(crate) const MIB: u64 = 1 << 20;
pub(crate) const BLOCK: u64 = 4096;
/// Hang guard for a state the cache must reach (never a performance expectation).
pub(crate) const STATE_TIMEOUT: Duration = Duration::from_secs(120);

/// `raidctl create NAME --level 5 --chunk 64K --size 64M m0..m3`, then assemble with `flags`.
pub(crate) fn raid5(name: &str, flags: &[&str]) -> Array {
    require_root("run daemons");
    let mut h = Array::create(Spec::new(name, "5", 4));
    h.assemble_with(flags);
    h
}

/// A python3 that can `import nbd`: the first on $PATH, else the system one (a pyenv python3
/// cannot import the Debian module).
pub(crate) fn python() -> &'static Path {
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

/// A tiny libnbd driver. argv: URI PLAN. Plan lines (handles are numbers, connected on first use):
///   c H                        connect handle H
///   w H OFFSET FILE AT LEN     pwrite LEN bytes of FILE (from AT) at OFFSET, no flush, no FUA
///   f H                        flush
///   r H OFFSET LEN FILE        pread into FILE
///   hold MARKER                create MARKER, then keep every handle open until killed
pub(crate) const DRIVER: &str = r#"
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

/// The `cache` object of `status --json`.
pub(crate) fn cache(h: &Array) -> Value {
    let st = h.status();
    assert!(
        st["cache"].is_object(),
        "status has no cache object:\n{st:#}"
    );
    st["cache"].clone()
}

/// `raidctl cache NAME ARGS --json`, which must succeed; returns what it printed.
pub(crate) fn set_cache(h: &Array, args: &[&str]) -> Value {
    let mut all = vec!["cache", h.name.as_str()];
    all.extend_from_slice(args);
    all.push("--json");
    let out = h.ok(&all).stdout;
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("cache is not JSON ({e}):\n{out}"))
}

/// The libnbd driver running `plan` (label names its files).
pub(crate) fn driver(h: &Array, label: &str, plan: &str) -> Command {
    let script = h.path("driver.py");
    fs::write(&script, DRIVER).expect("write the driver");
    let plan_file = h.path(&format!("{label}.plan"));
    fs::write(&plan_file, plan).expect("write the plan");
    h.command(python(), &[&s(&script), &h.uri(), &s(&plan_file)])
}

/// Runs `plan` in the background up to a final `hold`: returns once every step is done,
/// with the handles still open (the child's index).
pub(crate) fn driver_hold(h: &mut Array, label: &str, plan: &str) -> usize {
    let marker = h.path(&format!("{label}.held"));
    let cmd = driver(h, label, &format!("{plan}hold {}\n", s(&marker)));
    let index = h.children.spawn(label, cmd);
    let deadline = Instant::now() + STATE_TIMEOUT;
    while !marker.exists() {
        let exited = h.children.exited(index);
        let out = || format!("{:?}", h.children.output(label));
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

/// Runs `plan` up to a final hold, then kills the daemon while the writer's connections are
/// still open (what they wrote was acknowledged, nothing was closed) and assembles again.
pub(crate) fn kill_9_under_held_writes(h: &mut Array, plan: &str) {
    let held = driver_hold(h, "writer", plan);
    let c = cache(h);
    match u64_of(&c, "dirty_bytes") {
        0 => eprintln!(
            "note: nothing was dirty in the cache at the kill (destaged or written through): {c}"
        ),
        dirty => eprintln!("{dirty} bytes dirty in the cache at the kill"),
    }
    h.kill9();
    h.children.kill(held);
    h.assemble();
}

/// Reads `len` bytes at `offset` on a fresh connection.
pub(crate) fn pread(h: &Array, offset: u64, len: u64) -> Vec<u8> {
    let out = h.path("pread.out");
    let plan = format!("r 0 {offset} {len} {}\n", s(&out));
    h.check(run(driver(h, "pread", &plan)));
    fs::read(&out).expect("read the driver's output")
}

/// "MODE EFFECTIVE BATTERY BATTERY_FILE" of a cache report ("-" without a battery file).
pub(crate) fn policy(c: &Value) -> String {
    let file = c["battery_file"].as_str().unwrap_or("-");
    let (mode, effective) = (str_of(c, "mode"), str_of(c, "effective"));
    format!("{mode} {effective} {} {file}", str_of(c, "battery"))
}

pub(crate) fn assert_policy(c: &Value, expected: &str, context: &str) {
    assert_eq!(policy(c), expected, "{context}:\n{c:#}");
}

/// Writes a 4 KiB seeded pattern to DIR/`file` and returns it.
pub(crate) fn pattern(h: &Array, file: &str, seed: u64) -> Vec<u8> {
    let data = Rng::new(seed).bytes(BLOCK as usize);
    fs::write(h.path(file), &data).expect("write the pattern");
    data
}
