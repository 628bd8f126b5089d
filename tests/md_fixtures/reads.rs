//! Reading md's arrays: every level's exact bytes, a degraded RAID5 with a stale member, and
//! RAID6.

use crate::fixture::*;
use crate::pattern::*;

// ---------------------------------------------------------------------------------------------
// 1. Every md level raidcore supports reads back exactly md's bytes

/// Assembles all of `name`'s members read-only and checks the size, every block and the md5.
fn check_reads_md_bytes(name: &'static str) {
    let fx = Fixture::load(name);
    let expected = pattern_array(fx.size, |_| name);
    assert_eq!(
        md5_hex(&expected),
        fx.md5,
        "{name}: the pattern this test computes does not have the md5 in {name}.md5 \
         (a bug in the test or the fixture, not in raidcore)"
    );
    let (size, data) = with_assembled(&fx.members, read_only_opts(), |a| async move {
        let size = a.array.size_bytes();
        if !a.notes.is_empty() {
            return Err(format!("notes on a complete array: {:?}", a.notes));
        }
        Ok((size, read_all(&a.array).await?))
    })
    .unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(
        size, fx.size,
        "{name}: array size differs from md's ({name}.size)"
    );
    if let Err(e) = compare(name, "array content", &data, &expected) {
        panic!("{e}");
    }
    assert_eq!(
        md5_hex(&data),
        fx.md5,
        "{name}: md5 of the array differs from md's"
    );
}

#[test]
fn raid0_4_reads_md_bytes() {
    check_reads_md_bytes("raid0-4");
}

#[test]
fn raid0_3_unequal_reads_md_bytes() {
    check_reads_md_bytes("raid0-3-unequal");
}

#[test]
fn raid1_2_reads_md_bytes() {
    check_reads_md_bytes("raid1-2");
}

#[test]
fn raid5_4_reads_md_bytes() {
    check_reads_md_bytes("raid5-4");
}

#[test]
fn raid10n2_4_reads_md_bytes() {
    check_reads_md_bytes("raid10n2-4");
}

#[test]
fn raid10f2_4_reads_md_bytes() {
    check_reads_md_bytes("raid10f2-4");
}

// ---------------------------------------------------------------------------------------------
// 2. A degraded RAID5 with a stale member

#[test]
fn raid5_degraded_with_stale_member() {
    let name = "raid5-4-degraded";
    let fx = Fixture::load(name);
    let half = fx.size / 2;
    let expected = pattern_array(fx.size, |o| {
        if o < half {
            "raid5-4-degraded-after"
        } else {
            "raid5-4-degraded-before"
        }
    });
    assert_eq!(
        md5_hex(&expected),
        fx.md5,
        "{name}: the pattern this test computes (first half -after, second half -before) does \
         not have the md5 in {name}.md5 (a bug in the test or the fixture, not in raidcore)"
    );
    let fresh = fx.members_of(&[0, 1, 3]);
    let m2 = fx.member(2).to_string();

    // Members 0, 1, 3 with --run: md's bytes.
    let run_ro = AssembleOptions {
        run: true,
        read_only: true,
        ..AssembleOptions::default()
    };
    let (slot2_active, data) = with_assembled(&fresh, run_ro.clone(), |a| async move {
        let active = a.array.slots()[2].is_active();
        Ok((active, read_all(&a.array).await?))
    })
    .unwrap_or_else(|e| panic!("{name}: members 0, 1, 3 with run: {e}"));
    assert!(!slot2_active, "{name}: slot 2 active with m2 not given");
    if let Err(e) = compare(name, "members 0, 1, 3 (degraded)", &data, &expected) {
        panic!("{e}");
    }
    assert_eq!(
        md5_hex(&data),
        fx.md5,
        "{name}: members 0, 1, 3: md5 differs from md's"
    );
    drop(data);

    // Without --run the degraded start is refused, pointing at --run.
    let err = assembly_error(
        &format!("{name}: members 0, 1, 3 without run"),
        &fresh,
        read_only_opts(),
    );
    assert!(
        err.contains("--run"),
        "{name}: members 0, 1, 3 without run: the refusal does not mention --run: {err}"
    );

    // All four members: the stale m2 is left out, and the notes say why.
    let (notes, slot2_active, data) = with_assembled(&fx.members, run_ro, |a| async move {
        let active = a.array.slots()[2].is_active();
        Ok((a.notes.clone(), active, read_all(&a.array).await?))
    })
    .unwrap_or_else(|e| panic!("{name}: all four members with run: {e}"));
    assert!(
        notes.iter().any(|n| n.contains(&m2) && n.contains("stale")),
        "{name}: all four members: no note names {m2} as stale; notes: {notes:?}"
    );
    assert!(
        !slot2_active,
        "{name}: all four members: the stale member 2 was put in slot 2 without force"
    );
    if let Err(e) = compare(name, "all four members (m2 stale)", &data, &expected) {
        panic!("{e}");
    }
    assert_eq!(
        md5_hex(&data),
        fx.md5,
        "{name}: all four members: md5 differs from md's"
    );
    drop(data);

    // --force uses the stale member only where the array cannot start without it (mdadm's
    // rule): with the three fresh members there, it stays out.
    let force_ro = AssembleOptions {
        force: true,
        read_only: true,
        run: true,
        ..AssembleOptions::default()
    };
    let slot2 = with_assembled(&fx.members, force_ro.clone(), |a| async move {
        Ok(a.array.slots()[2].is_active())
    })
    .unwrap_or_else(|e| panic!("{name}: all four members with force: {e}"));
    assert!(
        !slot2,
        "{name}: with force and enough fresh members, the stale {m2} must stay out"
    );
    // Without member 1 the array needs it: slot 2 is then active and holds it.
    let without_m1: Vec<String> = fx
        .members
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 1)
        .map(|(_, m)| m.clone())
        .collect();
    let m2_for_check = m2.clone();
    let slot2 = with_assembled(&without_m1, force_ro, |a| async move {
        let slots = a.array.slots();
        Ok((
            slots[2].is_active(),
            slots[2].disk().map(|d| d.member.path().to_string()),
        ))
    })
    .unwrap_or_else(|e| panic!("{name}: members 0, 2, 3 with force: {e}"));
    assert_eq!(
        slot2,
        (true, Some(m2_for_check)),
        "{name}: with force and member 1 absent, slot 2 should be active and hold {m2}"
    );
}

// ---------------------------------------------------------------------------------------------
// 3. RAID6: md's bytes, whole and with any two members left out

#[test]
fn raid6_5_reads_md_bytes() {
    check_reads_md_bytes("raid6-5");
}

/// Every pair of raid6-5's five members left out: the three left rebuild md's exact bytes
/// (data from P and Q, from P alone, from Q alone, as the pair demands).
#[test]
fn raid6_5_reads_md_bytes_with_any_two_members_left_out() {
    let name = "raid6-5";
    let fx = Fixture::load(name);
    let expected = pattern_array(fx.size, |_| name);
    for a in 0..5 {
        for b in a + 1..5 {
            let left: Vec<String> = (0..5)
                .filter(|m| *m != a && *m != b)
                .map(|m| fx.members[m].clone())
                .collect();
            let opts = AssembleOptions {
                run: true,
                ..read_only_opts()
            };
            let data = with_assembled(&left, opts, |a| async move { read_all(&a.array).await })
                .unwrap_or_else(|e| panic!("{name} without m{a} and m{b}: {e}"));
            let what = format!("array content without m{a} and m{b}");
            if let Err(e) = compare(name, &what, &data, &expected) {
                panic!("{e}");
            }
        }
    }
}
