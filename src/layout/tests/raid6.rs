//! RAID6 placement by hand: md's left-symmetric rows, the asymmetric wrap of Q, the `-6`
//! algorithms, and md's syndrome order (which follows the walk from the member after Q, not
//! the data order).

use super::*;

fn raid6(algorithm: Raid6Algorithm, members: usize) -> Geometry {
    Geometry::new(
        LayoutKind::Raid6(algorithm),
        64 * KIB,
        &vec![1024 * KIB; members],
    )
    .unwrap()
}

fn row(g: &Geometry, stripe: u64) -> Vec<String> {
    g.row_picture(stripe)
}

#[test]
fn left_symmetric_rows_are_mds() {
    let g = raid6(Raid6Algorithm::LeftSymmetric, 5);
    assert_eq!(row(&g, 0), ["Q", "D0", "D1", "D2", "P"]);
    assert_eq!(row(&g, 1), ["D3", "D4", "D5", "P", "Q"]);
    assert_eq!(row(&g, 2), ["D7", "D8", "P", "Q", "D6"]);
    assert_eq!(g.array_bytes(), 3 * 1024 * KIB);
    assert_eq!(g.stripe_bytes(), 3 * 64 * KIB);
}

#[test]
fn asymmetric_layouts_wrap_q_to_slot_0_when_p_is_last() {
    let g = raid6(Raid6Algorithm::LeftAsymmetric, 5);
    assert_eq!(row(&g, 0), ["Q", "D0", "D1", "D2", "P"]);
    assert_eq!(row(&g, 1), ["D3", "D4", "D5", "P", "Q"]);
    assert_eq!(row(&g, 2), ["D6", "D7", "P", "Q", "D8"]);
    let g = raid6(Raid6Algorithm::RightAsymmetric, 5);
    assert_eq!(row(&g, 0), ["P", "Q", "D0", "D1", "D2"]);
    assert_eq!(row(&g, 4), ["Q", "D12", "D13", "D14", "P"]);
}

#[test]
fn fixed_and_dash_6_layouts() {
    let g = raid6(Raid6Algorithm::ParityFirst, 5);
    assert_eq!(row(&g, 3), ["P", "Q", "D9", "D10", "D11"]);
    let g = raid6(Raid6Algorithm::ParityLast, 5);
    assert_eq!(row(&g, 3), ["D9", "D10", "D11", "P", "Q"]);
    // The RAID5 algorithm of the same name over the first four, Q on the last.
    let g = raid6(Raid6Algorithm::LeftSymmetric6, 5);
    assert_eq!(row(&g, 0), ["D0", "D1", "D2", "P", "Q"]);
    assert_eq!(row(&g, 1), ["D4", "D5", "P", "D3", "Q"]);
    let g = raid6(Raid6Algorithm::LeftAsymmetric6, 5);
    assert_eq!(row(&g, 1), ["D3", "D4", "P", "D5", "Q"]);
    let g = raid6(Raid6Algorithm::ParityFirst6, 5);
    assert_eq!(row(&g, 2), ["P", "D6", "D7", "D8", "Q"]);
}

/// md numbers Q's coefficients walking from the member after Q (member 0 when Q is last):
/// in an asymmetric "D D P Q D" row the last data chunk comes first.
#[test]
fn syndrome_order_is_mds_walk_from_the_member_after_q() {
    let g = raid6(Raid6Algorithm::LeftAsymmetric, 5);
    assert_eq!(row(&g, 2), ["D6", "D7", "P", "Q", "D8"]);
    let order: Vec<Option<usize>> = (0..5).map(|s| g.code_index(2, s)).collect();
    assert_eq!(order, [Some(1), Some(2), None, None, Some(0)]);
    // Symmetric layouts start their data right after Q: syndrome order is data order.
    let g = raid6(Raid6Algorithm::LeftSymmetric, 6);
    for stripe in 0..12 {
        for slot in 0..6 {
            assert_eq!(
                g.code_index(stripe, slot),
                g.parity_data_index(stripe, slot)
            );
        }
    }
    // -6: Q is last, so the walk starts at member 0 and follows the slots.
    let g = raid6(Raid6Algorithm::LeftSymmetric6, 5);
    let order: Vec<Option<usize>> = (0..5).map(|s| g.code_index(1, s)).collect();
    assert_eq!(order, [Some(0), Some(1), None, Some(2), None]);
}

#[test]
fn syndrome_slots_follow_syndrome_index() {
    for algorithm in Raid6Algorithm::ALL {
        for members in 4..=9 {
            let g = raid6(algorithm, members);
            for stripe in 0..2 * members as u64 {
                for (i, slot) in g.code_slots(stripe).enumerate() {
                    assert_eq!(g.code_index(stripe, slot), Some(i), "{algorithm:?}");
                }
                assert_eq!(g.code_slots(stripe).count(), members - 2);
            }
        }
    }
}

#[test]
fn syndrome_order_is_a_permutation_for_every_algorithm() {
    for algorithm in Raid6Algorithm::ALL {
        for members in 4..=9 {
            let g = raid6(algorithm, members);
            for stripe in 0..2 * members as u64 {
                let mut seen: Vec<usize> = (0..members)
                    .filter_map(|s| g.code_index(stripe, s))
                    .collect();
                seen.sort();
                let all: Vec<usize> = (0..members - 2).collect();
                assert_eq!(seen, all, "{algorithm:?} {members} stripe {stripe}");
            }
        }
    }
}

#[test]
fn raid6_codes_and_names_round_trip() {
    for algorithm in Raid6Algorithm::ALL {
        assert_eq!(Raid6Algorithm::from_md(algorithm.to_md()), Ok(algorithm));
        assert_eq!(Raid6Algorithm::parse(algorithm.name()), Ok(algorithm));
    }
    assert_eq!(Raid6Algorithm::LeftSymmetric6.to_md(), 18);
    assert_eq!(
        Raid6Algorithm::parse("ls-6"),
        Ok(Raid6Algorithm::LeftSymmetric6)
    );
    assert!(matches!(
        Raid6Algorithm::from_md(9),
        Err(LayoutError::Unsupported(_))
    ));
    assert!(Geometry::new(
        LayoutKind::Raid6(Raid6Algorithm::LeftSymmetric),
        64 * KIB,
        &[1024 * KIB; 3]
    )
    .is_err());
}

#[test]
fn placement_shows_one_rotation() {
    let g = raid6(Raid6Algorithm::LeftSymmetric, 5);
    assert_eq!(
        g.placement(),
        [
            "Q D0 D1 D2 P",
            "D3 D4 D5 P Q",
            "D7 D8 P Q D6",
            "D11 P Q D9 D10",
            "P Q D12 D13 D14"
        ]
    );
    let mirror = Geometry::new(LayoutKind::Raid1, 0, &[1024 * KIB; 2]).unwrap();
    assert!(mirror.placement().is_empty());
}
