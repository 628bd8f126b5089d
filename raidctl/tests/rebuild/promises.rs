//! What `rebuild --wait` and `rebuild --speed-*` promise, and a re-added member's partial
//! recovery.

#[allow(unused_imports)]
use crate::*;

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
