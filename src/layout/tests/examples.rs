//! Hand-worked examples: each expected value was derived on paper from the md format notes,
//! not computed by the code under test.

use super::*;

const C: u64 = 64 * KIB;

fn raid10(layout: &str, members: usize, member_chunks: u64) -> Geometry {
    let layout = Raid10Layout::parse(layout).unwrap();
    let sizes = vec![member_chunks * C; members];
    Geometry::new(LayoutKind::Raid10(layout), C, &sizes).unwrap()
}

#[test]
fn raid10_near2_three_members_matches_reference() {
    let geometry = raid10("n2", 3, 10);
    assert_eq!(places(&geometry, 0), [(0, 0), (1, 0)]);
    assert_eq!(places(&geometry, 1), [(2, 0), (0, 1)]);
    assert_eq!(places(&geometry, 2), [(1, 1), (2, 1)]);
    assert_eq!(places(&geometry, 3), [(0, 2), (1, 2)]);
    // (10 / 1) * 3 / 2 = 15 chunks.
    assert_eq!(geometry.array_bytes(), 15 * C);
}

#[test]
fn raid10_far2_three_members_four_chunks() {
    // 6 array chunks, used = ceil(6*2/3) = 4 rows, stride = 4/2 = 2 rows.
    let geometry = raid10("f2", 3, 4);
    assert_eq!(geometry.array_bytes(), 6 * C);
    let expected = [
        [(0, 0), (1, 2)],
        [(1, 0), (2, 2)],
        [(2, 0), (0, 2)],
        [(0, 1), (1, 3)],
        [(1, 1), (2, 3)],
        [(2, 1), (0, 3)],
    ];
    for (chunk, want) in expected.iter().enumerate() {
        assert_eq!(places(&geometry, chunk as u64), want, "chunk {chunk}");
    }
}

#[test]
fn raid10_far2_leaves_odd_row_unused() {
    // 5 chunks per member: (5/2)*3 = 6 array chunks, still 4 used rows; row 4 is spare.
    let geometry = raid10("far=2", 3, 5);
    assert_eq!(geometry.array_bytes(), 6 * C);
    assert_eq!(geometry.member_used_bytes(), 4 * C);
    assert_eq!(geometry.reverse(1, 4 * C + 7), Reverse::Unused);
    assert_eq!(
        geometry.reverse(0, 2 * C + 5),
        Reverse::Data {
            array_offset: 2 * C + 5
        }
    );
}

#[test]
fn raid10_far2_two_members_is_classic_far() {
    let geometry = raid10("f2", 2, 4);
    assert_eq!(places(&geometry, 0), [(0, 0), (1, 2)]);
    assert_eq!(places(&geometry, 1), [(1, 0), (0, 2)]);
    assert_eq!(places(&geometry, 2), [(0, 1), (1, 3)]);
    assert_eq!(places(&geometry, 3), [(1, 1), (0, 3)]);
}

#[test]
fn raid10_offset2_three_members() {
    let geometry = raid10("o2", 3, 4);
    let expected = [
        [(0, 0), (1, 1)],
        [(1, 0), (2, 1)],
        [(2, 0), (0, 1)],
        [(0, 2), (1, 3)],
        [(1, 2), (2, 3)],
        [(2, 2), (0, 3)],
    ];
    for (chunk, want) in expected.iter().enumerate() {
        assert_eq!(places(&geometry, chunk as u64), want, "chunk {chunk}");
    }
}

#[test]
fn raid10_offset_with_wrapping_near_copies_is_refused() {
    let layout = Raid10Layout {
        near: 2,
        far: 2,
        offset: true,
    };
    let result = Geometry::new(LayoutKind::Raid10(layout), C, &[8 * C; 5]);
    assert!(
        matches!(result, Err(LayoutError::Unsupported(_))),
        "{result:?}"
    );
    assert!(Geometry::new(LayoutKind::Raid10(layout), C, &[8 * C; 4]).is_ok());
}

/// Tables for N=4, four stripes, derived by hand from the algorithm definitions.
/// Entry = data chunk number, or P for parity.
const P: i64 = -1;
const RAID5_TABLES: [(Raid5Algorithm, [[i64; 4]; 4]); 6] = [
    (
        Raid5Algorithm::LeftAsymmetric,
        [[0, 1, 2, P], [3, 4, P, 5], [6, P, 7, 8], [P, 9, 10, 11]],
    ),
    (
        Raid5Algorithm::RightAsymmetric,
        [[P, 0, 1, 2], [3, P, 4, 5], [6, 7, P, 8], [9, 10, 11, P]],
    ),
    (
        Raid5Algorithm::LeftSymmetric,
        [[0, 1, 2, P], [4, 5, P, 3], [8, P, 6, 7], [P, 9, 10, 11]],
    ),
    (
        Raid5Algorithm::RightSymmetric,
        [[P, 0, 1, 2], [5, P, 3, 4], [7, 8, P, 6], [9, 10, 11, P]],
    ),
    (
        Raid5Algorithm::ParityFirst,
        [[P, 0, 1, 2], [P, 3, 4, 5], [P, 6, 7, 8], [P, 9, 10, 11]],
    ),
    (
        Raid5Algorithm::ParityLast,
        [[0, 1, 2, P], [3, 4, 5, P], [6, 7, 8, P], [9, 10, 11, P]],
    ),
];

#[test]
fn raid5_four_members_match_hand_tables() {
    for (algorithm, table) in RAID5_TABLES {
        let geometry = Geometry::new(LayoutKind::Raid5(algorithm), C, &[4 * C + 512; 4]).unwrap();
        assert_eq!(geometry.array_bytes(), 12 * C, "{algorithm:?}");
        for (stripe, row) in table.iter().enumerate() {
            let stripe = stripe as u64;
            for (slot, &entry) in row.iter().enumerate() {
                let got = geometry.reverse(slot, stripe * C + 3);
                if entry == P {
                    assert_eq!(got, Reverse::Parity { stripe }, "{algorithm:?}");
                    assert_eq!(geometry.p_slot(stripe), slot);
                    continue;
                }
                let array_offset = entry as u64 * C + 3;
                assert_eq!(
                    got,
                    Reverse::Data { array_offset },
                    "{algorithm:?} {stripe}"
                );
                let loc = geometry.parity_locate(array_offset);
                assert_eq!((loc.stripe, loc.slot), (stripe, slot), "{algorithm:?}");
                assert_eq!(loc.member_offset, stripe * C + 3);
            }
        }
    }
}

#[test]
fn raid0_unequal_members_orig_and_alt() {
    // C = one chunk, sizes 3, 5, 5 chunks (plus a partial chunk that must be ignored).
    let sizes = [3 * C, 5 * C + 4096, 5 * C];
    for (layout, slot) in [(Raid0Layout::Original, 2), (Raid0Layout::Alternate, 1)] {
        let geometry = Geometry::new(LayoutKind::Raid0(layout), C, &sizes).unwrap();
        assert_eq!(geometry.array_bytes(), 13 * C);
        assert!(geometry.is_multi_zone());
        assert_eq!(places(&geometry, 9), [(slot, 3)], "{layout:?}");
        assert_eq!(places(&geometry, 4), [(1, 1)], "{layout:?}");
        assert_eq!(geometry.member_used_bytes(), 5 * C);
        assert_eq!(geometry.slot_used_bytes(0), 3 * C);
        assert_eq!(geometry.reverse(0, 3 * C), Reverse::Unused);
    }
}

#[test]
fn raid0_non_power_of_two_chunk() {
    let chunk = 3 * 512;
    let geometry = Geometry::new(
        LayoutKind::Raid0(Raid0Layout::Original),
        chunk,
        &[10 * 512; 2],
    )
    .unwrap();
    // Each member rounds down to 3 chunks.
    assert_eq!(geometry.array_bytes(), 6 * chunk);
    let place = geometry.map_copies(3 * chunk + 100).as_slice()[0];
    assert_eq!((place.slot, place.member_offset), (1, chunk + 100));
}

#[test]
fn raid1_mirrors_every_byte() {
    let geometry = Geometry::new(LayoutKind::Raid1, 0, &[1000 * 512; 3]).unwrap();
    assert_eq!(geometry.array_bytes(), 1000 * 512);
    assert_eq!(geometry.copies(), 3);
    let copies = geometry.map_copies(777);
    let slots: Vec<_> = copies.iter().map(|p| (p.slot, p.member_offset)).collect();
    assert_eq!(slots, [(0, 777), (1, 777), (2, 777)]);
    let pieces: Vec<_> = geometry.pieces(60 * KIB, 70 * KIB).collect();
    assert_eq!(
        pieces,
        [
            Piece {
                array_offset: 60 * KIB,
                len: 4 * KIB
            },
            Piece {
                array_offset: 64 * KIB,
                len: 64 * KIB
            },
            Piece {
                array_offset: 128 * KIB,
                len: 2 * KIB
            },
        ]
    );
}

#[test]
fn capacities_of_typical_arrays() {
    let gib = 1024 * 1024 * KIB;
    let chunk = 512 * KIB;
    let raid5 = Geometry::new(
        LayoutKind::Raid5(Raid5Algorithm::LeftSymmetric),
        chunk,
        &[gib; 4],
    );
    assert_eq!(raid5.unwrap().array_bytes(), 3 * gib);
    let raid10 = Geometry::new(LayoutKind::Raid10(Raid10Layout::NEAR2), chunk, &[gib; 3]);
    assert_eq!(raid10.unwrap().array_bytes(), 1536 * 1024 * KIB);
    assert_eq!(
        used_dev_bytes(Level::Raid5, chunk, gib + 700 * KIB),
        gib + 512 * KIB
    );
    assert_eq!(
        used_dev_bytes(Level::Raid1, 0, gib + 100 * KIB),
        gib + 64 * KIB
    );
    assert_eq!(used_dev_bytes(Level::Raid0, 0, gib), 0);
}

#[test]
fn levels_decode_and_refuse_clearly() {
    assert_eq!(Level::from_md(6), Ok(Level::Raid6));
    for level in [-1, 4, -4, 7] {
        assert!(matches!(
            Level::from_md(level),
            Err(LayoutError::Unsupported(_))
        ));
    }
    for level in [Level::Raid0, Level::Raid1, Level::Raid5, Level::Raid10] {
        assert_eq!(Level::from_md(level.to_md()), Ok(level));
    }
    assert_eq!(Level::Raid5.min_members(), 3);
    assert_eq!(Level::Raid0.min_members(), 1);
    assert_eq!(Level::Raid0.min_create_members(), 2);
    let shown = LayoutError::Unsupported("RAID4 is not supported".into()).to_string();
    assert_eq!(shown, "unsupported layout: RAID4 is not supported");
}

#[test]
fn raid5_names_and_codes() {
    for (code, algorithm) in Raid5Algorithm::ALL.into_iter().enumerate() {
        assert_eq!(algorithm.to_md(), code as u32);
        assert_eq!(Raid5Algorithm::from_md(code as u32), Ok(algorithm));
        assert_eq!(Raid5Algorithm::parse(algorithm.name()), Ok(algorithm));
    }
    assert_eq!(Raid5Algorithm::LeftSymmetric.name(), "left-symmetric");
    assert_eq!(Raid5Algorithm::ParityLast.name(), "parity-last");
    assert_eq!(
        Raid5Algorithm::parse("ra"),
        Ok(Raid5Algorithm::RightAsymmetric)
    );
    assert_eq!(
        Raid5Algorithm::parse("ls"),
        Ok(Raid5Algorithm::LeftSymmetric)
    );
    assert!(Raid5Algorithm::parse("left").is_err());
    assert!(Raid5Algorithm::from_md(6).is_err());
    assert!(Raid5Algorithm::from_md(18).is_err());
}

#[test]
fn raid10_names_and_codes() {
    let cases = [
        ("n2", 0x102, "near=2"),
        ("f2", 0x201, "far=2"),
        ("o2", 0x10201, "offset=2"),
        ("near=3", 0x103, "near=3"),
        ("far=3", 0x301, "far=3"),
        ("offset=2", 0x10201, "offset=2"),
        ("near=2,far=2", 0x202, "near=2,far=2"),
        ("n2,o3", 0x10302, "near=2,offset=3"),
    ];
    for (text, code, name) in cases {
        let layout = Raid10Layout::parse(text).unwrap();
        assert_eq!(layout.to_md(), code, "{text}");
        assert_eq!(layout.name(), name, "{text}");
        assert_eq!(Raid10Layout::from_md(code), Ok(layout));
        assert_eq!(Raid10Layout::parse(name), Ok(layout));
    }
    assert_eq!(Raid10Layout::parse("f2").unwrap().copies(), 2);
    for bad in [
        "", "n", "x2", "n1", "f2,o2", "n2,n2", "near=0", "nĀ2", "f256",
    ] {
        assert!(Raid10Layout::parse(bad).is_err(), "{bad:?}");
    }
    assert!(matches!(
        Raid10Layout::from_md(0x20102),
        Err(LayoutError::Unsupported(_))
    ));
    assert!(matches!(
        Raid10Layout::from_md(0x40201),
        Err(LayoutError::Unsupported(_))
    ));
    assert!(matches!(
        Raid10Layout::from_md(0x80102),
        Err(LayoutError::Invalid(_))
    ));
    assert!(Raid10Layout::from_md(0x101).is_err());
}

#[test]
fn raid0_layout_codes() {
    assert_eq!(Raid0Layout::from_md(1), Ok(Raid0Layout::Original));
    assert_eq!(Raid0Layout::from_md(2), Ok(Raid0Layout::Alternate));
    assert!(Raid0Layout::from_md(0).is_err());
    assert_eq!(
        Raid0Layout::parse("layout-alternate"),
        Ok(Raid0Layout::Alternate)
    );
    let kind = LayoutKind::from_md(10, 0x201).unwrap();
    assert_eq!(kind.md_layout(), 0x201);
    assert_eq!(kind.level(), Level::Raid10);
}

#[test]
fn geometry_rejects_bad_shapes() {
    let ls = LayoutKind::Raid5(Raid5Algorithm::LeftSymmetric);
    let n2 = LayoutKind::Raid10(Raid10Layout::NEAR2);
    let orig = LayoutKind::Raid0(Raid0Layout::Original);
    let bad = [
        Geometry::new(ls.clone(), C, &[C * 4; 2]),
        Geometry::new(ls.clone(), 96 * KIB, &[C * 4; 3]),
        Geometry::new(ls.clone(), 2 * KIB, &[C * 4; 3]),
        Geometry::new(ls.clone(), C, &[C * 4, C * 4, C * 8]),
        Geometry::new(ls, C, &[C - 512; 3]),
        Geometry::new(n2.clone(), C, &[C * 4]),
        Geometry::new(n2, C, &[C / 2; 2]),
        Geometry::new(LayoutKind::Raid1, 0, &[C; 1]),
        Geometry::new(LayoutKind::Raid1, 0, &[0; 2]),
        Geometry::new(LayoutKind::Raid1, 0, &[C; 33]),
        Geometry::new(orig.clone(), 0, &[C; 2]),
        Geometry::new(orig.clone(), 1000, &[C; 2]),
        Geometry::new(orig.clone(), C, &[C, C / 2]),
        Geometry::new(orig.clone(), C, &[C + 1, C]),
        Geometry::new(orig, C, &[]),
        Geometry::new(
            LayoutKind::Raid10(Raid10Layout::parse("n3").unwrap()),
            C,
            &[C * 4; 2],
        ),
    ];
    for (case, result) in bad.iter().enumerate() {
        let Err(error) = result else {
            panic!("case {case} accepted: {result:?}");
        };
        assert!(!error.to_string().is_empty());
    }
}
