//! Integration tests of failures, hot spares and rebuilds, driven through the `raidctl` binary
//! and real NBD clients: `fail` / `remove` / `add` / `rebuild --wait` while fio writes with
//! verification, a `kill -9` of the daemon in the middle of a rebuild (resumed from its
//! checkpoint), `inject` fault drills (read errors corrected, a write error that fails a member,
//! a vanished disk), a second failure that fails a RAID5, `check` / `check --repair` of flipped
//! bytes, and `monitor` (a `--program` hook and `--json`).
//!
//! Every test works on its own [`Array`] fixture, whose cleanup kills background children
//! (fio, monitors), asks `raidctl stop`, and kills a daemon still alive (SIGKILL of the pid in
//! RUN/NAME.pid).
//!
//! Needs root, mdadm, nbdcopy, fio (nbd engine) and qemu-io: a missing one fails the test
//! saying what to install. Nothing here asserts a duration; timeouts only stop hangs.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

mod common;
use common::array::{Array, Spec};
use common::examine::mdadm_examine;
use common::files::{assert_same_range, fill_random};
use common::process::{run, Ran, COMMAND_TIMEOUT};
use common::status::{find_member, member, members_of, slot_entry};
use common::tools::{require, require_root, require_tools};
use common::wait::wait_for;
use common::{s, tail};

const MIB: u64 = 1 << 20;
/// Hang guard for waiting on a state the array must reach.
const STATE_TIMEOUT: Duration = Duration::from_secs(180);
/// The region fio writes (and verifies) at the end of the export.
const FIO_BYTES: u64 = 16 * MIB;

/// `raidctl create NAME --level L --chunk 64K --size 96M --spare S... M...`, assembled.
fn assembled(name: &str, level: &str, members: usize, spares: usize) -> Array {
    assembled_spec(Spec::new(name, level, members).spares(spares))
}

/// The array of `spec` (with 96M members) once the environment is known to be fit, created
/// and assembled from all its members and spares.
fn assembled_spec(spec: Spec) -> Array {
    require_root("claim member files and run daemons");
    require_tools(&[
        ("mdadm", "mdadm"),
        ("nbdcopy", "libnbd-bin"),
        ("fio", "fio"),
        ("qemu-io", "qemu-utils"),
    ]);
    let mut h = Array::create(spec.size("96M"));
    h.assemble();
    h
}

/// fio (nbd engine): random 4k writes over the last FIO_BYTES of the export, 16 in flight,
/// crc32c-verified. `mode` is "--do_verify=1" (write, then read back and verify) or
/// "--verify_only=1" (verify what an earlier run wrote).
fn fio_command(h: &Array, offset: u64, mode: &str) -> Command {
    let uri = format!("--uri={}", h.uri());
    let offset = format!("--offset={offset}");
    let size = format!("--size={FIO_BYTES}");
    h.command(
        require("fio", "fio"),
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

/// Writes `len` bytes of seeded random data into the export from its start; returns the file
/// that keeps them (DIR/expected.img).
fn write_random_data(h: &Array, len: u64, seed: u64) -> PathBuf {
    let expected = h.path("expected.img");
    fill_random(&expected, len, seed, &[]);
    h.nbdcopy(&[&s(&expected), &h.uri()]);
    expected
}

/// Writes seeded random data over the whole export; returns its size and the file that
/// keeps the data.
fn fill_export(h: &Array, seed: u64) -> (u64, PathBuf) {
    let size = h.size();
    (size, write_random_data(h, size, seed))
}

/// The export reads what `expected` holds in its first `len` bytes.
fn assert_export_holds(h: &Array, expected: &Path, len: u64, context: &str) {
    let out = h.read_export("readback.img");
    assert_same_range(expected, &out, 0, len, context);
}

/// `raidctl rebuild NAME --speed-min MIN --speed-max MAX` (KiB/s).
fn set_rebuild_speed(h: &Array, min: u32, max: u32) {
    let (min, max) = (min.to_string(), max.to_string());
    h.ok(&["rebuild", &h.name, "--speed-min", &min, "--speed-max", &max]);
}

/// `raidctl rebuild NAME --wait`, then RebuildFinished in the log (it is logged once the
/// finished rebuild is on disk, which may trail what `--wait` and status see).
fn wait_for_rebuild(h: &Array) -> Ran {
    let ran = h.ok(&["rebuild", &h.name, "--wait"]);
    h.wait_for_log("RebuildFinished", 1);
    ran
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

/// Waits until no check, repair or resync runs (a resync may follow an unclean stop).
fn wait_scrub_idle(h: &Array) {
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
fn check(h: &Array, repair: bool, expect_code: i32) -> Ran {
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
            h.log_tail()
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
    let mut h = assembled(name, level, members, 1);
    let size = h.size();
    assert!(size > 2 * FIO_BYTES, "odd array size {size}");
    let fio_offset = size - FIO_BYTES;
    let victim = h.members[1].clone();
    let spare = h.spares[0].clone();

    // Random data everywhere but fio's region.
    let expected = write_random_data(&h, fio_offset, seed);

    // Held to 10 MB/s, the rebuild of these members outlasts fio's writes, so both run at
    // once (the default maximum speed is restored once fio is done).
    set_rebuild_speed(&h, 10000, 10000);
    let before = h.status();
    let writes_before = before["io"]["writes"].as_u64().expect("io.writes");
    let fio = h
        .children
        .spawn("fio-write", fio_command(&h, fio_offset, "--do_verify=1"));
    wait_for(
        "fio to be writing",
        STATE_TIMEOUT,
        || {
            let st = h.status();
            (st["io"]["writes"].as_u64() > Some(writes_before)).then_some(())
        },
        || format!("{:?}", h.children.output("fio-write")),
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

    let (fio_status, fio_out) = h.children.wait(fio, COMMAND_TIMEOUT);
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
        h.log_tail()
    );

    set_rebuild_speed(&h, 1000, 200000);
    let ran = wait_for_rebuild(&h);
    assert!(
        ran.stdout.contains("no rebuild running"),
        "rebuild --wait should end saying so:\n{}",
        ran.describe()
    );

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
    assert_export_holds(&h, &expected, fio_offset, "after the rebuild");
    let verify = h
        .children
        .spawn("fio-verify", fio_command(&h, fio_offset, "--verify_only=1"));
    let (fio_status, fio_out) = h.children.wait(verify, COMMAND_TIMEOUT);
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
    assert_export_holds(&h, &expected, fio_offset, "after stop and assemble");
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
    let mut h = assembled(name, "5", 4, 1);
    let (size, expected) = fill_export(&h, 21);
    let victim = h.members[1].clone();
    let spare = h.spares[0].clone();

    // Slow: 4000 KiB/s, so a checkpoint (every 64 MiB or 5 s) lands well before 40 %.
    set_rebuild_speed(&h, 4000, 4000);
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
    h.kill9();

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
    let log = h.wait_for_log("RebuildStarted", 1);
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

    set_rebuild_speed(&h, 1000, 200000);
    wait_for_rebuild(&h);
    let st = h.status();
    assert_all_in_sync(&st, &[(1, &spare)], "after the resumed rebuild");
    assert_export_holds(&h, &expected, size, "after the resumed rebuild");
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
    let mut h = assembled(name, "5", 4, 1);
    let (size, expected) = fill_export(&h, 31);
    let (m0, m2, m3) = (
        h.members[0].clone(),
        h.members[2].clone(),
        h.members[3].clone(),
    );
    let spare = h.spares[0].clone();

    // One read error: repaired from parity, the member stays.
    h.ok(&["inject", name, &m0, "--read-error", "--count", "1"]);
    assert_export_holds(&h, &expected, size, "reading through a read error");
    let st = h.status();
    assert_eq!(
        member(&st, &m0)["state"].as_str(),
        Some("in_sync"),
        "a corrected read error must not fail the member:\n{st:#}"
    );
    assert_all_in_sync(&st, &[(0, &m0)], "after the read error");
    let log = h.wait_for_log("ReadErrorCorrected", 1);
    assert!(
        log.lines()
            .any(|l| l.contains("ReadErrorCorrected") && l.contains(&m0)),
        "ReadErrorCorrected should name {m0}:\n{}",
        tail(&log, 4000)
    );

    // One write error: the write still succeeds, the member is failed, the spare rebuilds.
    h.ok(&["inject", name, &m2, "--write-error", "--count", "1"]);
    let small = h.path("small.img");
    fill_random(&small, MIB, 32, &[]);
    h.nbdcopy(&[&s(&small), &h.uri()]);
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
    wait_for_rebuild(&h);
    let st = h.status();
    assert_all_in_sync(&st, &[(2, &spare)], "after the write error and the rebuild");
    assert_eq!(member(&st, &m2)["role"].as_str(), Some("faulty"), "{st:#}");
    assert_export_holds(&h, &expected, size, "after the write error and the rebuild");

    // No spare left: a vanished disk leaves the array degraded and readable.
    h.ok(&["inject", name, &m3, "--vanish"]);
    assert_export_holds(&h, &expected, size, "with a vanished member");
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
fn monitor_events(h: &Array, label: &str) -> Vec<Value> {
    let (out, _) = h.children.output(label);
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
    let mut h = assembled(name, "5", 4, 0);
    let expected = write_random_data(&h, 8 * MIB, 41);
    let monitor = h
        .children
        .spawn("monitor", h.raidctl_command(&["monitor", name, "--json"]));
    // Subscribed once it says so: events before that are not its to see.
    wait_for(
        "the monitor to subscribe",
        STATE_TIMEOUT,
        || {
            h.children
                .output("monitor")
                .1
                .contains("monitoring")
                .then_some(())
        },
        || format!("{:?}", h.children.output("monitor")),
    );
    let (m0, m1) = (h.members[0].clone(), h.members[1].clone());

    h.ok(&["fail", name, &m0]);
    let st = h.status();
    assert_eq!(st["state"].as_str(), Some("degraded"), "{st:#}");
    // Reads still work with one member gone.
    assert_export_holds(&h, &expected, 8 * MIB, "degraded");

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
        || format!("{:?}", h.children.output("monitor")),
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
    h.assert_stopped(pid);
    let (status, out) = h.children.wait(monitor, Duration::from_secs(60));
    assert!(
        status.is_some(),
        "the monitor did not end when its daemon stopped:\n{out}"
    );
}

/// Data offset of a member in bytes, as `raidctl examine --json` reports it.
fn data_offset_bytes(h: &Array, dev: &str) -> u64 {
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
    let mut h = assembled(name, "5", 4, 1);
    let (size, expected) = fill_export(&h, 77);
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
    assert_export_holds(&h, &expected, size, "after the sector reads again");
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
fn metadata_areas(h: &Array) -> Vec<Vec<u8>> {
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
    let h = assembled(name, "1", 2, 0);
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
    h.assert_stopped(pid);
}

// ---------------------------------------------------------------------------------------------
// 5. check and repair
// ---------------------------------------------------------------------------------------------

/// XORs `len` bytes with 0xff at `at` of the data area of `member` (offline).
fn flip_bytes(h: &Array, member: &str, at: u64, len: usize) -> u64 {
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
    let mut h = assembled(name, level, members, 0);
    let (size, expected) = fill_export(&h, seed);

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
    let log = h.wait_for_log("CheckFinished", 1);
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
        assert_export_holds(&h, &expected, size, "after repair");
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
    let mut h = assembled(name, "5", 4, 1);
    write_random_data(&h, 8 * MIB, 61);

    let hook_log = h.path("hook.log");
    let hook = h.path("hook.sh");
    fs::write(
        &hook,
        format!("#!/bin/sh\necho \"$@\" >> '{}'\n", s(&hook_log)),
    )
    .expect("write hook");
    fs::set_permissions(&hook, fs::Permissions::from_mode(0o755)).expect("chmod hook");

    let program = h.children.spawn(
        "monitor-program",
        h.raidctl_command(&["monitor", name, "--program", &s(&hook)]),
    );
    let json = h.children.spawn(
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
                h.children.output("monitor-program"),
                h.children.output("monitor-json")
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
        || format!("{:?}", h.children.output("monitor-json")),
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
        let (status, out) = h.children.wait(index, Duration::from_secs(60));
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
    let mut h = assembled(name, "5", 4, 0);
    let (size, expected) = fill_export(&h, 71);
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
    let foreign_uuid = |h: &Array| {
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
    wait_for_rebuild(&h);
    let st = h.status();
    assert_all_in_sync(&st, &[(1, &new)], "after add and rebuild");
    assert_export_holds(&h, &expected, size, "after add and rebuild");
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
    let mut h = assembled(name, "1", 2, 1);
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
    h.wait_for_log("RebuildFinished", 1);
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
    let mut h = assembled(name, "1", 2, 0);
    set_rebuild_speed(&h, 4000, 8000);
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
    let mut h = assembled_spec(Spec::new(name, "5", 4).extra(&["--bitmap-chunk", "1M"]));
    let (size, expected) = fill_export(&h, 91);
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
    let log = h.wait_for_log("re-added member", 1);
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
    assert_export_holds(&h, &expected, size, "after the re-add");
    h.stop();
    let md = mdadm_examine(&victim);
    assert_eq!(md.get("Device Role"), "Active device 1", "{}", md.text);
    assert!(md.get("Array State").starts_with("AAAA "), "{}", md.text);
    let other = mdadm_examine(&h.members[0]);
    assert_eq!(md.get("Events"), other.get("Events"), "{}", md.text);
}
