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

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

mod common;
use common::array::{Array, Spec};
use common::process::{run, run_with_timeout, COMMAND_TIMEOUT};
use common::rng::Rng;
use common::status::{str_of, u64_of};
use common::tools::{find_tool, require, require_root};
use common::wait::wait_for;
use common::{s, tail};

const MIB: u64 = 1 << 20;
const BLOCK: u64 = 4096;
/// Hang guard for a state the cache must reach (never a performance expectation).
const STATE_TIMEOUT: Duration = Duration::from_secs(120);

/// `raidctl create NAME --level 5 --chunk 64K --size 64M m0..m3`, then assemble with `flags`.
fn raid5(name: &str, flags: &[&str]) -> Array {
    require_root("run daemons");
    let mut h = Array::create(Spec::new(name, "5", 4));
    h.assemble_with(flags);
    h
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

/// The `cache` object of `status --json`.
fn cache(h: &Array) -> Value {
    let st = h.status();
    assert!(
        st["cache"].is_object(),
        "status has no cache object:\n{st:#}"
    );
    st["cache"].clone()
}

/// `raidctl cache NAME ARGS --json`, which must succeed; returns what it printed.
fn set_cache(h: &Array, args: &[&str]) -> Value {
    let mut all = vec!["cache", h.name.as_str()];
    all.extend_from_slice(args);
    all.push("--json");
    let out = h.ok(&all).stdout;
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("cache is not JSON ({e}):\n{out}"))
}

/// The libnbd driver running `plan` (label names its files).
fn driver(h: &Array, label: &str, plan: &str) -> Command {
    let script = h.path("driver.py");
    fs::write(&script, DRIVER).expect("write the driver");
    let plan_file = h.path(&format!("{label}.plan"));
    fs::write(&plan_file, plan).expect("write the plan");
    h.command(python(), &[&s(&script), &h.uri(), &s(&plan_file)])
}

/// Runs `plan` in the background up to a final `hold`: returns once every step is done,
/// with the handles still open (the child's index).
fn driver_hold(h: &mut Array, label: &str, plan: &str) -> usize {
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
fn kill_9_under_held_writes(h: &mut Array, plan: &str) {
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
fn pread(h: &Array, offset: u64, len: u64) -> Vec<u8> {
    let out = h.path("pread.out");
    let plan = format!("r 0 {offset} {len} {}\n", s(&out));
    h.check(run(driver(h, "pread", &plan)));
    fs::read(&out).expect("read the driver's output")
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
fn pattern(h: &Array, file: &str, seed: u64) -> Vec<u8> {
    let data = Rng::new(seed).bytes(BLOCK as usize);
    fs::write(h.path(file), &data).expect("write the pattern");
    data
}

// ---------------------------------------------------------------------------------------------
// 1. Write-through (the default): a write without flush survives kill -9
// ---------------------------------------------------------------------------------------------

#[test]
fn write_through_write_survives_kill_9() {
    let mut h = raid5("wt", &[]);
    let c = set_cache(&h, &[]);
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
    kill_9_under_held_writes(&mut h, &format!("w 0 {offset} {a} 0 {BLOCK}\n"));
    assert!(
        pread(&h, offset, BLOCK) == data,
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
    let mut h = raid5("wb", &[]);
    // Random old contents where the writes go (written through: the battery is absent).
    fs::write(h.path("fill.bin"), Rng::new(2).bytes(REGION as usize)).unwrap();
    h.nbdcopy(&[&s(&h.path("fill.bin")), &h.uri()]);
    h.nbdcopy(&[&h.uri(), &s(&h.path("before.img"))]);

    assert_eq!(
        str_of(&set_cache(&h, &["--battery", "present"]), "effective"),
        "write-back"
    );
    assert_eq!(str_of(&cache(&h), "effective"), "write-back");

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
    kill_9_under_held_writes(&mut h, &plan);
    h.nbdcopy(&[&h.uri(), &s(&h.path("after.img"))]);

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
fn monitor_events(h: &Array, label: &str) -> Vec<String> {
    let out = h.children.output(label).0;
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
fn fio_command(h: &Array, mode: &str) -> Command {
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
    h.command(require("fio", "fio"), &args)
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
    let mut h = raid5("bl", &[]);
    // The monitor is subscribed once it reports an event: flip until it has one.
    let monitor = h
        .children
        .spawn("monitor", h.raidctl_command(&["monitor", "bl", "--json"]));
    wait_for(
        "the monitor to report CacheWriteBack",
        STATE_TIMEOUT,
        || {
            set_cache(&h, &["--battery", "absent"]);
            set_cache(&h, &["--battery", "present"]);
            thread::sleep(Duration::from_millis(300));
            monitor_events(&h, "monitor")
                .iter()
                .any(|e| e == "CacheWriteBack")
                .then_some(())
        },
        || format!("{:?}", h.children.output("monitor")),
    );
    let seen = monitor_events(&h, "monitor").len();
    assert_eq!(str_of(&cache(&h), "effective"), "write-back");
    let count = |h: &Array, event: &str| h.log().matches(event).count();
    let (wt_before, wb_before) = (count(&h, "CacheWriteThrough"), count(&h, "CacheWriteBack"));

    // About 4 s of writes (2000/s): the battery goes away while they run.
    let fio = h.children.spawn("fio", fio_command(&h, "--do_verify=1"));
    wait_for(
        "fio's first writes in the cache",
        STATE_TIMEOUT,
        // (status.io counts the engine's writes: the cache's show up there once destaged)
        || (u64_of(&cache(&h), "dirty_bytes") > 0).then_some(()),
        || format!("{:?}", h.children.output("fio")),
    );
    thread::sleep(Duration::from_secs(1));
    let dirty = u64_of(&cache(&h), "dirty_bytes");
    eprintln!(
        "battery goes with {dirty} bytes dirty, fio running: {}",
        h.children.running(fio)
    );

    let c = set_cache(&h, &["--battery", "absent"]);
    for c in [c, cache(&h)] {
        assert_policy(&c, "write-back write-through absent -", "battery absent");
        assert_eq!(
            u64_of(&c, "dirty_bytes"),
            0,
            "returned before the drain: {c:#}"
        );
        assert!(str_of(&c, "reason").contains("battery absent"), "{c:#}");
    }
    h.wait_for_log("CacheWriteThrough", wt_before + 1);
    let (status, out) = h.children.wait(fio, COMMAND_TIMEOUT);
    assert_fio_ok(status, &out, "fio failed");
    assert_eq!(
        u64_of(&cache(&h), "dirty_bytes"),
        0,
        "write-through left dirty data"
    );

    let c = set_cache(&h, &["--battery", "present"]);
    assert_eq!(str_of(&c, "effective"), "write-back", "{c:#}");
    h.wait_for_log("CacheWriteBack", wb_before + 1);
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
        || format!("{:?}", h.children.output("monitor")),
    );
    eprintln!("monitor events: {events:?}");
    assert!(
        h.children.running(monitor),
        "the monitor ended early: {:?}",
        h.children.output("monitor")
    );

    // What the drain wrote is on the members: kill -9, assemble, verify what fio wrote.
    assert_eq!(
        u64_of(&cache(&h), "dirty_bytes"),
        0,
        "nothing was written since"
    );
    h.kill9();
    h.assemble();
    let verify = h
        .children
        .spawn("fio-verify", fio_command(&h, "--verify_only=1"));
    let (status, out) = h.children.wait(verify, COMMAND_TIMEOUT);
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
fn wait_for_policy(h: &Array, expected: &str) -> Value {
    let started = Instant::now();
    let c = wait_for(
        &format!("the cache policy {expected:?}"),
        Duration::from_secs(10),
        || Some(cache(h)).filter(|c| policy(c) == expected),
        || format!("{:#}", cache(h)),
    );
    eprintln!("{expected:?} after {:?}", started.elapsed());
    c
}

#[test]
fn battery_file_switches_within_seconds() {
    let h = raid5("bf", &[]);
    set_cache(&h, &["--battery", "present"]); // the manual flag the file overrides
    let file = h.path("battery");
    let f = s(&file);
    fs::write(&file, "present\n").unwrap();
    let c = set_cache(&h, &["--battery-file", &f]);
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
    let unchanged = policy(&cache(&h));
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
            policy(&cache(&h)),
            unchanged,
            "a rejected {args:?} changed the policy"
        );
    }

    // Back to the manual flag set before (present).
    let c = set_cache(&h, &["--battery-file", "none"]);
    assert_policy(&c, "write-back write-back present -", "--battery-file none");
}

// ---------------------------------------------------------------------------------------------
// 5. A FLUSH on one connection makes writes acknowledged on another durable
// ---------------------------------------------------------------------------------------------

#[test]
fn flush_on_one_connection_covers_writes_on_another() {
    let mut h = raid5("fl", &[]);
    assert_eq!(
        str_of(&set_cache(&h, &["--battery", "present"]), "effective"),
        "write-back"
    );
    let offset = 17 * MIB + 5 * BLOCK;
    let data = pattern(&h, "a.bin", 5);
    let a = s(&h.path("a.bin"));
    kill_9_under_held_writes(
        &mut h,
        &format!("c 1\nc 2\nw 1 {offset} {a} 0 {BLOCK}\nf 2\n"),
    );
    assert!(
        pread(&h, offset, BLOCK) == data,
        "a write flushed on another connection is lost"
    );
}

// ---------------------------------------------------------------------------------------------
// 6. Mode and battery flag persist across stop/assemble
// ---------------------------------------------------------------------------------------------

#[test]
fn policy_persists_across_restart() {
    let mut h = raid5("pp", &[]);
    let c = set_cache(&h, &["--mode", "write-through"]);
    assert_policy(
        &c,
        "write-through write-through absent -",
        "--mode write-through",
    );
    h.stop();
    h.assemble();
    assert_policy(
        &cache(&h),
        "write-through write-through absent -",
        "after a restart",
    );

    let c = set_cache(&h, &["--mode", "always-write-back"]);
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
    h.assemble();
    assert_policy(
        &cache(&h),
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
    set_cache(&h, &["--mode", "write-back", "--battery", "present"]);
    h.stop();
    h.assemble();
    assert_policy(
        &cache(&h),
        "write-back write-back present -",
        "after a restart",
    );
}

// ---------------------------------------------------------------------------------------------
// 7. Reads of cached blocks are hits
// ---------------------------------------------------------------------------------------------

#[test]
fn read_hits_come_from_the_cache() {
    let h = raid5("rh", &["--cache-size", "16M"]);
    let c = set_cache(&h, &["--battery", "present"]);
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
    h.check(run(driver(&h, "rw", &plan)));
    assert!(
        fs::read(&out).unwrap() == data,
        "the read differs from the write"
    );
    let c = cache(&h);
    let ratio = c["hit_ratio"].as_f64();
    assert!(ratio.is_some_and(|r| r > 0.0), "no read hit: {c:#}");
    assert!(u64_of(&c, "cached_bytes") > 0, "{c:#}");
}
