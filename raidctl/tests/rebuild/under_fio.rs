//! Fail a member while fio writes: the spare takes its slot and is rebuilt online.

#[allow(unused_imports)]
use crate::*;

pub(crate) fn fail_rebuild_under_fio(name: &str, level: &str, members: usize, seed: u64) {
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
