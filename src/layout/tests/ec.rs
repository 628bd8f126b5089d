//! k+m placement by hand: the rotation drawn in `ec.rs`, that it is RAID5's and RAID6's
//! left-symmetric rows for one and two parity chunks, and what md's fields hold.

use super::*;

fn ec(parity: usize, members: usize) -> Geometry {
    Geometry::new(
        LayoutKind::Ec { parity },
        64 * KIB,
        &vec![1024 * KIB; members],
    )
    .unwrap()
}

#[test]
fn rows_rotate_with_the_parity_chunks_side_by_side() {
    let g = ec(3, 6);
    assert_eq!(g.row_picture(0), ["P2", "P3", "D0", "D1", "D2", "P1"]);
    assert_eq!(g.row_picture(1), ["P3", "D3", "D4", "D5", "P1", "P2"]);
    assert_eq!(g.row_picture(2), ["D6", "D7", "D8", "P1", "P2", "P3"]);
    assert_eq!(
        g.row_picture(6),
        g.row_picture(0)
            .iter()
            .map(|c| match c.as_str() {
                "D0" => "D18".to_string(),
                "D1" => "D19".into(),
                "D2" => "D20".into(),
                other => other.into(),
            })
            .collect::<Vec<_>>()
    );
    assert_eq!(g.parity_slots(1).as_slice(), [4, 5, 0]);
    assert_eq!(g.array_bytes(), 3 * 1024 * KIB);
    assert_eq!(g.stripe_bytes(), 3 * 64 * KIB);
    // The code's data order is the data order.
    assert_eq!(g.code_slots(1).collect::<Vec<_>>(), [1, 2, 3]);
    assert_eq!(g.placement().len(), 6);
}

/// Goal: the rotation generalises md's left-symmetric: with m = 1 and 2 every row puts data
/// and parity where RAID5 and RAID6 left-symmetric do.
#[test]
fn one_and_two_parity_chunks_place_as_raid5_and_raid6_left_symmetric() {
    for members in 4..=9 {
        let r5 = Geometry::new(
            LayoutKind::Raid5(Raid5Algorithm::LeftSymmetric),
            64 * KIB,
            &vec![1024 * KIB; members],
        )
        .unwrap();
        let r6 = Geometry::new(
            LayoutKind::Raid6(Raid6Algorithm::LeftSymmetric),
            64 * KIB,
            &vec![1024 * KIB; members],
        )
        .unwrap();
        let (e1, e2) = (ec(1, members), ec(2, members));
        for stripe in 0..2 * members as u64 {
            assert_eq!(
                e1.parity_slots(stripe).as_slice(),
                r5.parity_slots(stripe).as_slice()
            );
            assert_eq!(
                e2.parity_slots(stripe).as_slice(),
                r6.parity_slots(stripe).as_slice()
            );
            for slot in 0..members {
                assert_eq!(
                    e1.parity_data_index(stripe, slot),
                    r5.parity_data_index(stripe, slot)
                );
                assert_eq!(
                    e2.parity_data_index(stripe, slot),
                    r6.parity_data_index(stripe, slot)
                );
            }
        }
    }
}

#[test]
fn md_fields_hold_the_parity_count_under_a_level_md_has_no_personality_for() {
    let kind = LayoutKind::Ec { parity: 3 };
    assert_eq!(kind.level().to_md(), EC_MD_LEVEL);
    assert_eq!(kind.md_layout(), 3);
    assert_eq!(LayoutKind::from_md(EC_MD_LEVEL, 3), Ok(kind));
    for bad in [0, 5, 0x102] {
        assert!(matches!(
            LayoutKind::from_md(EC_MD_LEVEL, bad),
            Err(LayoutError::Invalid(_))
        ));
    }
    assert!(![-5, -4, -1, 0, 1, 4, 5, 6, 10].contains(&EC_MD_LEVEL));
}

#[test]
fn too_few_members_or_too_many_parities_are_refused() {
    let mib = vec![1024 * KIB; 5];
    for (parity, members) in [(3, 4), (4, 5), (0, 5), (5, 8)] {
        let sizes = &vec![1024 * KIB; members][..];
        let result = Geometry::new(LayoutKind::Ec { parity }, 64 * KIB, sizes);
        assert!(
            matches!(result, Err(LayoutError::Invalid(_))),
            "{parity}+{members}"
        );
    }
    assert!(Geometry::new(LayoutKind::Ec { parity: 3 }, 64 * KIB, &mib).is_ok());
}
