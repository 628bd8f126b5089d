//! The battery: losing it drains the cache and is reported; a battery file switches the
//! policy; mode and flag persist across stop/assemble; reads of cached blocks are hits.

#[allow(unused_imports)]
use crate::*;

/// The event names a `monitor --json` child printed so far.
pub(crate) fn monitor_events(h: &Array, label: &str) -> Vec<String> {
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
pub(crate) fn fio_command(h: &Array, mode: &str) -> Command {
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

pub(crate) fn assert_fio_ok(status: Option<ExitStatus>, out: &str, what: &str) {
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
pub(crate) fn write_battery(file: &Path, word: &str) {
    let tmp = file.with_extension("tmp");
    fs::write(&tmp, word).expect("write the battery word");
    fs::rename(&tmp, file).expect("rename the battery file");
}

/// Polls status until the policy reads `expected` (10 s hang guard); prints how long it took.
pub(crate) fn wait_for_policy(h: &Array, expected: &str) -> Value {
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
