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

pub(crate) use common::prelude::*;

mod add;
#[path = "../common/mod.rs"]
mod common;
mod crash;
mod drills;
mod monitor;
mod promises;
mod scrub;
mod under_fio;

// Topic modules reach each other's helpers through the crate root.
#[allow(unused_imports)]
pub(crate) use self::{
    add::*, crash::*, drills::*, monitor::*, promises::*, scrub::*, under_fio::*,
};

pub(crate) const MIB: u64 = 1 << 20;
/// Hang guard for waiting on a state the array must reach.
pub(crate) const STATE_TIMEOUT: Duration = Duration::from_secs(180);
/// The region fio writes (and verifies) at the end of the export.
pub(crate) const FIO_BYTES: u64 = 16 * MIB;

/// `raidctl create NAME --level L --chunk 64K --size 96M --spare S... M...`, assembled.
pub(crate) fn assembled(name: &str, level: &str, members: usize, spares: usize) -> Array {
    assembled_spec(Spec::new(name, level, members).spares(spares))
}

/// The array of `spec` (with 96M members) once the environment is known to be fit, created
/// and assembled from all its members and spares.
pub(crate) fn assembled_spec(spec: Spec) -> Array {
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
pub(crate) fn fio_command(h: &Array, offset: u64, mode: &str) -> Command {
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
pub(crate) fn write_random_data(h: &Array, len: u64, seed: u64) -> PathBuf {
    let expected = h.path("expected.img");
    fill_random(&expected, len, seed, &[]);
    h.nbdcopy(&[&s(&expected), &h.uri()]);
    expected
}

/// Writes seeded random data over the whole export; returns its size and the file that
/// keeps the data.
pub(crate) fn fill_export(h: &Array, seed: u64) -> (u64, PathBuf) {
    let size = h.size();
    (size, write_random_data(h, size, seed))
}

/// A RAID5 of four members and `spares` spares named `name`, assembled and filled with
/// random data from `seed`: the array, its size and the file holding what it should read.
pub(crate) fn filled_raid5(name: &str, spares: usize, seed: u64) -> (Array, u64, PathBuf) {
    let h = assembled(name, "5", 4, spares);
    let (size, expected) = fill_export(&h, seed);
    (h, size, expected)
}

/// The export reads what `expected` holds in its first `len` bytes.
pub(crate) fn assert_export_holds(h: &Array, expected: &Path, len: u64, context: &str) {
    let out = h.read_export("readback.img");
    assert_same_range(expected, &out, 0, len, context);
}

/// `raidctl rebuild NAME --speed-min MIN --speed-max MAX` (KiB/s).
pub(crate) fn set_rebuild_speed(h: &Array, min: u32, max: u32) {
    let (min, max) = (min.to_string(), max.to_string());
    h.ok(&["rebuild", &h.name, "--speed-min", &min, "--speed-max", &max]);
}

/// `raidctl rebuild NAME --wait`, then RebuildFinished in the log (it is logged once the
/// finished rebuild is on disk, which may trail what `--wait` and status see).
pub(crate) fn wait_for_rebuild(h: &Array) -> Ran {
    let ran = h.ok(&["rebuild", &h.name, "--wait"]);
    h.wait_for_log("RebuildFinished", 1);
    ran
}

/// Every slot holds an in-sync member, nothing is missing, and `spare_in` (slot, path) holds.
pub(crate) fn assert_all_in_sync(status: &Value, expect_in_slot: &[(u64, &str)], when: &str) {
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
pub(crate) fn recovery_progress(status: &Value) -> Option<(u64, u64)> {
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
pub(crate) fn wait_scrub_idle(h: &Array) {
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
pub(crate) fn check(h: &Array, repair: bool, expect_code: i32) -> Ran {
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
pub(crate) fn mismatches(ran: &Ran) -> u64 {
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
