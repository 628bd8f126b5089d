//! kill -9 in the middle of a rebuild: the next assembly resumes from the checkpoint.

#[allow(unused_imports)]
use crate::*;

/// The `from_bytes` of the last RebuildStarted line of the log.
pub(crate) fn last_rebuild_from(log: &str) -> Option<u64> {
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
    let (mut h, size, expected) = filled_raid5(name, 1, 21);
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
