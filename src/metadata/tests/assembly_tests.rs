//! Assembly rules on md-written arrays (fresh, degraded, stale) and on made-up conflicts.

use super::fixtures;
use crate::metadata::*;

fn path_of(name: &str) -> String {
    format!("/dev/fixture/{name}")
}

fn candidate(name: &str) -> Candidate {
    let member = fixtures::member(name);
    Candidate {
        path: path_of(name),
        superblock: Superblock::decode(member.superblock_block()),
    }
}

fn candidates(names: &[&str]) -> Vec<Candidate> {
    names.iter().map(|name| candidate(name)).collect()
}

/// Members `numbers` of the fixture array `array`, in that order.
fn members(array: &str, numbers: &[usize]) -> Vec<Candidate> {
    numbers
        .iter()
        .map(|n| candidate(&format!("{array}.m{n}")))
        .collect()
}

fn plain() -> AssemblyOptions {
    AssemblyOptions::default()
}

fn forced() -> AssemblyOptions {
    AssemblyOptions {
        force: true,
        expected_uuid: None,
    }
}

/// Goal: a healthy array assembles with every member in its slot, whatever the order given.
#[test]
fn healthy_array() {
    let given = members("raid5-4", &[3, 1, 0, 2]);
    let plan = plan_assembly(&given, &plain()).unwrap();
    assert_eq!(plan.slots, vec![Some(2), Some(1), Some(3), Some(0)]);
    assert!(!plan.degraded);
    assert!(plan.excluded.is_empty() && plan.spares.is_empty() && plan.forced.is_empty());
    assert!(plan.missing_slots().is_empty());
    assert_eq!(plan.reference.events, 1);
    let raid6 = members("raid6-5", &[0, 1, 2, 3, 4]);
    let plan = plan_assembly(&raid6, &plain()).unwrap();
    assert_eq!(plan.reference.level, 6);
    assert!(!plan.degraded);
    let raid0 = members("raid0-3-unequal", &[0, 1, 2]);
    assert!(!plan_assembly(&raid0, &plain()).unwrap().degraded);
}

/// Goal: given all four members of raid5-4-degraded, the stale member 2 is left out with a
/// message naming it and saying it is stale, and the array is degraded in slot 2.
#[test]
fn stale_member_is_left_out() {
    let given = members("raid5-4-degraded", &[0, 1, 2, 3]);
    let plan = plan_assembly(&given, &plain()).unwrap();
    assert_eq!(plan.slots, vec![Some(0), Some(1), None, Some(3)]);
    assert!(plan.degraded);
    assert_eq!(plan.missing_slots(), vec![2]);
    assert_eq!(
        plan.excluded,
        vec![(
            2,
            ExclusionReason::Stale {
                events: 2,
                array_events: 7
            }
        )]
    );
    let messages = plan.exclusion_messages(&given);
    assert_eq!(messages.len(), 1);
    assert_eq!(
        messages[0],
        "/dev/fixture/raid5-4-degraded.m2 is stale (events 2, array at 7): re-add it to recover \
         it, or --force to use it"
    );
    assert_eq!(plan.reference.events, 7);
    assert_eq!(plan.reference_index, 0);
}

/// Goal: --force never brings back a stale member the array can run without (its data is
/// out of date: mdadm forces only what is needed to start). Found by the simulator: a member
/// failed long before a power cut came back as in sync and its old bytes were read.
#[test]
fn force_leaves_out_a_stale_member_the_array_can_do_without() {
    let given = members("raid5-4-degraded", &[2, 0, 1, 3]);
    let plan = plan_assembly(&given, &forced()).unwrap();
    assert_eq!(plan.slots, vec![Some(1), Some(2), None, Some(3)]);
    assert!(plan.forced.is_empty());
    assert!(plan.degraded);
    assert_eq!(plan.reference_index, 1);
    assert!(matches!(
        plan.excluded[..],
        [(0, ExclusionReason::Stale { .. })]
    ));
}

/// Goal: with --force a stale member fills its old slot when the array cannot start without
/// it, and is reported for an events rewrite.
#[test]
fn force_uses_a_stale_member_the_array_needs() {
    let given = members("raid5-4-degraded", &[2, 0, 3]);
    let plan = plan_assembly(&given, &forced()).unwrap();
    assert_eq!(plan.slots, vec![Some(1), None, Some(0), Some(2)]);
    assert_eq!(plan.forced, vec![0]);
    assert!(plan.degraded);
}

/// Goal: the three fresh members assemble degraded with slot 2 missing.
#[test]
fn three_of_four_is_degraded() {
    let given = members("raid5-4-degraded", &[0, 1, 3]);
    let plan = plan_assembly(&given, &plain()).unwrap();
    assert_eq!(plan.slots, vec![Some(0), Some(1), None, Some(2)]);
    assert!(plan.degraded);
    assert_eq!(plan.missing_slots(), vec![2]);
    assert!(plan.excluded.is_empty());
}

/// Goal: a member of another array is refused with both UUIDs named.
#[test]
fn foreign_member_is_refused() {
    let given = candidates(&["raid5-4.m0", "raid5-4.m1", "raid5-4-degraded.m2"]);
    let error = plan_assembly(&given, &plain()).unwrap_err();
    let message = error.to_string();
    // raid5-4-degraded.m2 (events 2) is the freshest, so its array is the reference.
    assert!(
        message.starts_with("/dev/fixture/raid5-4.m0 belongs to array UUID b6b00909:"),
        "{message}"
    );
    assert!(message.contains(", not ba291590:"), "{message}");
    let expected = Superblock::decode(fixtures::member("raid5-4.m0").superblock_block())
        .unwrap()
        .set_uuid;
    let options = AssemblyOptions {
        force: false,
        expected_uuid: Some(expected),
    };
    let message = plan_assembly(&given, &options).unwrap_err().to_string();
    assert!(
        message.starts_with("/dev/fixture/raid5-4-degraded.m2 belongs to array UUID ba291590:"),
        "{message}"
    );
    let only_other = candidates(&["raid1-2.m0"]);
    assert!(matches!(
        plan_assembly(&only_other, &options),
        Err(AssemblyError::ForeignMember { .. })
    ));
}

/// Goal: a member that disagrees on the chunk (or level/layout/raid_disks) is refused,
/// naming it and the field.
#[test]
fn mismatching_shape_is_refused() {
    let mut given = candidates(&["raid5-4.m0", "raid5-4.m1", "raid5-4.m2"]);
    if let Ok(sb) = &mut given[2].superblock {
        sb.chunk_sectors = 256;
    }
    let error = plan_assembly(&given, &plain()).unwrap_err();
    assert_eq!(
        error.to_string(),
        "/dev/fixture/raid5-4.m2 has chunk 256 sectors, but /dev/fixture/raid5-4.m0 has 128 sectors"
    );
    for patch in [
        (|sb: &mut Superblock| sb.level = 6) as fn(&mut Superblock),
        |sb| sb.layout = 0,
        |sb| sb.raid_disks = 5,
    ] {
        let mut given = candidates(&["raid5-4.m0", "raid5-4.m1"]);
        if let Ok(sb) = &mut given[1].superblock {
            patch(sb);
        }
        assert!(matches!(
            plan_assembly(&given, &plain()),
            Err(AssemblyError::Mismatch { .. })
        ));
    }
}

/// Goal: a device whose superblock failed to decode is an error naming it and the reason.
#[test]
fn corrupt_superblock_is_refused() {
    let mut block = fixtures::member("raid5-4.m1").superblock_block().to_vec();
    block[100] ^= 4;
    let mut given = candidates(&["raid5-4.m0"]);
    given.push(Candidate {
        path: "/dev/sdz".to_string(),
        superblock: Superblock::decode(&block),
    });
    let message = plan_assembly(&given, &plain()).unwrap_err().to_string();
    assert!(
        message.starts_with("/dev/sdz: checksum mismatch: stored 0x"),
        "{message}"
    );
    given[1].superblock = Superblock::decode(&[0u8; 4096]);
    let message = plan_assembly(&given, &plain()).unwrap_err().to_string();
    assert_eq!(
        message,
        "/dev/sdz: no md superblock (magic 0x00000000, expected 0xa92b4efc)"
    );
    assert_eq!(
        plan_assembly(&[], &plain()),
        Err(AssemblyError::NoCandidates)
    );
}

/// A RAID1 array built with our own builder: members 0 and 1 active, 2 a spare.
fn raid1_with_spare() -> Vec<Candidate> {
    let params = CreateParams {
        name: "h:mirror".to_string(),
        uuid: [9; 16],
        level: 1,
        layout: 0,
        chunk_sectors: 0,
        raid_disks: 2,
        roles: vec![Role::Active(0), Role::Active(1), Role::Spare],
        size_sectors: 40_000,
        data_offset_sectors: 2048,
        bitmap: true,
        bitmap_chunk_bytes: None,
        resync_offset: u64::MAX,
        ctime_secs: 1_700_000_000,
        extra_features: 0,
    };
    (0..3)
        .map(|dev| Candidate {
            path: format!("/dev/r1d{dev}"),
            superblock: new_member_superblock(&params, dev, 49_152, [dev as u8; 16]),
        })
        .collect()
}

fn events(candidate: &mut Candidate, events: u64) -> &mut Superblock {
    let sb = candidate.superblock.as_mut().unwrap();
    sb.events = events;
    sb
}

/// Goal: spares need no matching events; members the array marks faulty are left out;
/// one event behind is still fresh.
#[test]
fn spares_and_faulty() {
    let mut given = raid1_with_spare();
    events(&mut given[0], 10);
    events(&mut given[1], 9);
    events(&mut given[2], 3);
    let plan = plan_assembly(&given, &plain()).unwrap();
    assert_eq!(plan.slots, vec![Some(0), Some(1)]);
    assert_eq!(plan.spares, vec![2]);
    assert!(plan.excluded.is_empty());

    events(&mut given[0], 12).set_role(1, Role::Faulty).unwrap();
    events(&mut given[1], 11);
    let plan = plan_assembly(&given, &plain()).unwrap();
    assert_eq!(plan.excluded, vec![(1, ExclusionReason::MarkedFaulty)]);
    assert_eq!(plan.missing_slots(), vec![1]);
    assert_eq!(
        plan.exclusion_messages(&given),
        vec!["/dev/r1d1 is marked faulty by the other members".to_string()]
    );
}

/// Goal: a spare whose activation was cut short (the others' superblocks already name it in
/// slot 1, its own, one event behind, still says spare and carries no recovery offset) is a
/// spare, not an in-sync member: it never got the slot's data. Found by the simulator (a
/// power cut during a spare's promotion served zeroes from it).
#[test]
fn a_spare_whose_activation_was_cut_short_is_still_a_spare() {
    let mut given = raid1_with_spare();
    // Member 1 failed; the update that gives slot 1 to the spare (dev 2) reached devs 0 only.
    let sb0 = events(&mut given[0], 12);
    sb0.set_role(1, Role::Faulty).unwrap();
    sb0.set_role(2, Role::Active(1)).unwrap();
    events(&mut given[2], 11).set_role(1, Role::Faulty).unwrap();
    given.remove(1);
    let plan = plan_assembly(&given, &plain()).unwrap();
    assert_eq!(plan.slots, vec![Some(0), None]);
    assert_eq!(plan.spares, vec![1]);
    assert!(plan.degraded);
}

/// Goal: two devices claiming one slot: the fresher wins, the other is named as the loser;
/// the same device given twice is caught the same way.
#[test]
fn duplicate_slot_claims() {
    let mut given = raid1_with_spare();
    given.push(given[1].clone());
    given[3].path = "/dev/copy".to_string();
    events(&mut given[0], 5);
    events(&mut given[1], 4);
    events(&mut given[3], 5);
    let plan = plan_assembly(&given, &plain()).unwrap();
    assert_eq!(plan.slots, vec![Some(0), Some(3)]);
    assert_eq!(
        plan.exclusion_messages(&given),
        vec!["/dev/r1d1 claims slot 1, which /dev/copy holds with newer metadata".to_string()]
    );
    events(&mut given[1], 5);
    let plan = plan_assembly(&given, &plain()).unwrap();
    assert_eq!(plan.slots, vec![Some(0), Some(1)]);
    assert_eq!(plan.excluded.len(), 1);
    assert_eq!(plan.excluded[0].0, 3);
}

/// Goal: roles the array cannot have and journal devices are left out, and a garbage
/// raid_disks read from disk is an error rather than a huge allocation.
#[test]
fn odd_roles_and_geometry() {
    let mut given = raid1_with_spare();
    given[0].superblock.as_mut().unwrap().dev_roles[2] = 7;
    given[1].superblock.as_mut().unwrap().dev_roles[2] = ROLE_JOURNAL;
    // Member 0 is the freshest; the others are one event behind, so still fresh.
    events(&mut given[0], 1);
    let plan = plan_assembly(&given, &plain()).unwrap();
    assert_eq!(
        plan.excluded,
        vec![(
            2,
            ExclusionReason::InvalidSlot {
                slot: 7,
                raid_disks: 2
            }
        )]
    );
    // Now member 1's table (journal for device 2) is the freshest.
    events(&mut given[1], 2);
    events(&mut given[2], 2);
    let plan = plan_assembly(&given, &plain()).unwrap();
    assert_eq!(plan.excluded, vec![(2, ExclusionReason::Journal)]);
    for candidate in &mut given {
        candidate.superblock.as_mut().unwrap().raid_disks = u32::MAX;
    }
    assert!(matches!(
        plan_assembly(&given, &plain()),
        Err(AssemblyError::BadGeometry {
            raid_disks: u32::MAX,
            ..
        })
    ));
}

/// Goal: a k+m array runs with any m members missing and no more. Found by the simulator: a
/// 2+3 array that had lost three members was taken for one that cannot run, so assembly after
/// a power cut used `--force` and brought stale members back as in sync.
#[test]
fn a_k_plus_m_array_is_enough_with_m_missing() {
    let mut sb = candidate("raid6-5.m0").superblock.unwrap();
    sb.level = crate::layout::EC_MD_LEVEL;
    sb.layout = 3;
    let with = |present: usize| {
        (0..5)
            .map(|s| (s < present).then_some(s))
            .collect::<Vec<_>>()
    };
    assert!(crate::metadata::assembly::enough(&sb, &with(5)));
    assert!(crate::metadata::assembly::enough(&sb, &with(2)));
    assert!(!crate::metadata::assembly::enough(&sb, &with(1)));
    sb.layout = 1;
    assert!(crate::metadata::assembly::enough(&sb, &with(4)));
    assert!(!crate::metadata::assembly::enough(&sb, &with(3)));
}
