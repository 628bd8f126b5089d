//! Fault drills (a read error is corrected, a write error fails the member, a disk vanishes),
//! a second failure that fails a RAID5, an unreadable sector during a rebuild, and `fail`
//! refusing to take the last copy.

#[allow(unused_imports)]
use crate::*;

#[test]
fn injected_read_error_write_error_and_vanish() {
    let name = "rb-inject";
    let (mut h, size, expected) = filled_raid5(name, 1, 31);
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
pub(crate) fn monitor_events(h: &Array, label: &str) -> Vec<Value> {
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
pub(crate) fn data_offset_bytes(h: &Array, dev: &str) -> u64 {
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
    let (mut h, size, expected) = filled_raid5(name, 1, 77);
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
pub(crate) fn metadata_areas(h: &Array) -> Vec<Vec<u8>> {
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
