//! Property tests over random geometries of every level and layout.
//!
//! Small geometries are checked exhaustively, one array sector at a time: each sector must land
//! in exactly `copies()` places, no place may be shared, every place must reverse to its sector,
//! and (RAID5) data plus parity must tile every used member sector exactly once. Large
//! geometries are sampled at random byte offsets to catch overflow and rounding at scale.
//! Capacity is compared with md's formulas, written here again in sectors.

use super::*;
use proptest::prelude::*;

const SECTOR: u64 = 512;
/// Keeps one exhaustive case to roughly 32 Ki sectors per member.
const SECTORS_PER_MEMBER_MAX: u64 = 32 * 1024;

/// md's array size in sectors, written independently of the code under test.
fn md_capacity_sectors(kind: &LayoutKind, chunk_sectors: u64, member_sectors: &[u64]) -> u64 {
    let n = member_sectors.len() as u64;
    let size = member_sectors[0];
    match kind {
        LayoutKind::Raid0(_) => member_sectors
            .iter()
            .map(|s| s / chunk_sectors * chunk_sectors)
            .sum(),
        LayoutKind::Raid1 => size,
        LayoutKind::Raid5(_) => size / chunk_sectors * chunk_sectors * (n - 1),
        LayoutKind::Raid6(_) => size / chunk_sectors * chunk_sectors * (n - 2),
        LayoutKind::Ec { parity } => size / chunk_sectors * chunk_sectors * (n - *parity as u64),
        LayoutKind::Raid10(layout) => {
            let (near, far) = (u64::from(layout.near), u64::from(layout.far));
            ((size / chunk_sectors) / far) * n / near * chunk_sectors
        }
    }
}

/// Maps every array sector and checks the invariants listed in the module doc.
fn check_exhaustively(geometry: &Geometry, member_bytes: &[u64]) {
    let members = geometry.members();
    let used = geometry.member_used_bytes();
    assert!(used <= member_bytes.iter().copied().max().unwrap());
    for (slot, &bytes) in member_bytes.iter().enumerate() {
        assert!(
            geometry.slot_used_bytes(slot) <= bytes.min(used),
            "slot {slot}"
        );
    }
    let unit = match geometry.level() {
        Level::Raid1 => RAID1_UNIT_BYTES,
        _ => geometry.chunk_bytes(),
    };
    let mut hits: Vec<Vec<u8>> = member_bytes
        .iter()
        .map(|bytes| vec![0; (bytes / SECTOR) as usize])
        .collect();
    let mut unit_first = geometry.map_copies(0);
    for sector in 0..geometry.array_bytes() / SECTOR {
        let offset = sector * SECTOR;
        let copies = geometry.map_copies(offset);
        assert_eq!(copies.len(), geometry.copies(), "offset {offset}");
        // Inside one chunk (unit) every copy moves along with the array offset.
        let into_unit = offset % unit;
        if into_unit == 0 {
            unit_first = copies;
        }
        for (place, first) in copies.iter().zip(unit_first.iter()) {
            assert_eq!(place.slot, first.slot, "offset {offset}");
            assert_eq!(place.member_offset, first.member_offset + into_unit);
            assert!(place.member_offset < geometry.slot_used_bytes(place.slot));
            let hit = &mut hits[place.slot][(place.member_offset / SECTOR) as usize];
            *hit += 1;
            assert_eq!(*hit, 1, "{place:?} shared, offset {offset}");
            let byte = (sector * 37) % SECTOR;
            let back = geometry.reverse(place.slot, place.member_offset + byte);
            assert_eq!(
                back,
                Reverse::Data {
                    array_offset: offset + byte
                },
                "{place:?}"
            );
        }
        if geometry.parities() > 0 {
            check_parity_locate(geometry, offset, &copies);
        }
    }
    if geometry.parities() > 0 {
        mark_parity(geometry, &mut hits);
    }
    let mut total = 0u64;
    for (slot, slot_hits) in hits.iter().enumerate() {
        for (sector, &hit) in slot_hits.iter().enumerate() {
            let member_offset = sector as u64 * SECTOR;
            total += u64::from(hit);
            if hit == 0 {
                assert_eq!(geometry.reverse(slot, member_offset), Reverse::Unused);
            }
            if geometry.parities() > 0 && member_offset < used {
                assert_eq!(hit, 1, "RAID5/6 slot {slot} sector {sector} not tiled");
            }
        }
    }
    let array_sectors = geometry.array_bytes() / SECTOR;
    let parities = geometry.parities() as u64;
    let parity_sectors = array_sectors / (members as u64 - parities).max(1) * parities;
    assert_eq!(
        total,
        array_sectors * geometry.copies() as u64 + parity_sectors
    );
}

fn check_parity_locate(geometry: &Geometry, offset: u64, copies: &Copies) {
    let loc = geometry.parity_locate(offset);
    assert_ne!(loc.slot, loc.parity_slot);
    let parity = geometry.parity_slots(loc.stripe);
    assert_eq!(parity.as_slice().len(), geometry.parities());
    assert!(
        !parity.contains(loc.slot),
        "data on a parity slot of its stripe"
    );
    for (j, &slot) in parity.as_slice().iter().enumerate() {
        assert_eq!(
            parity.index_of(slot),
            Some(j),
            "parity slots of a stripe repeat"
        );
        assert_eq!(geometry.code_index(loc.stripe, slot), None);
    }
    let code_order: Vec<usize> = geometry.code_slots(loc.stripe).collect();
    assert_eq!(
        code_order[geometry.code_index(loc.stripe, loc.slot).unwrap()],
        loc.slot
    );
    assert_eq!(loc.q_slot, geometry.q_slot(loc.stripe));
    assert_ne!(Some(loc.slot), loc.q_slot, "data on Q");
    assert_ne!(Some(loc.parity_slot), loc.q_slot, "P and Q on one member");
    assert_eq!(copies.as_slice()[0].slot, loc.slot);
    assert_eq!(loc.member_offset, copies.as_slice()[0].member_offset);
    assert_eq!(
        geometry.parity_data_slot(loc.stripe, loc.data_index),
        loc.slot
    );
    assert_eq!(geometry.p_slot(loc.stripe), loc.parity_slot);
    assert_eq!(
        geometry.parity_data_index(loc.stripe, loc.slot),
        Some(loc.data_index)
    );
    assert_eq!(
        geometry.parity_data_index(loc.stripe, loc.parity_slot),
        None
    );
    if let Some(q) = loc.q_slot {
        assert_eq!(geometry.parity_data_index(loc.stripe, q), None);
        assert_eq!(geometry.code_index(loc.stripe, q), None);
    }
    let stripe_start = geometry.parity_row_offset(loc.stripe);
    assert!(stripe_start <= offset && offset < stripe_start + geometry.stripe_bytes());
}

/// Adds every stripe's parity chunks (P, and Q for RAID6) to `hits`, refusing any place
/// already used by data.
fn mark_parity(geometry: &Geometry, hits: &mut [Vec<u8>]) {
    let chunk = geometry.chunk_bytes();
    assert_eq!(
        geometry.parity_row_offset(geometry.parity_rows()),
        geometry.array_bytes()
    );
    for stripe in 0..geometry.parity_rows() {
        for &slot in geometry.parity_slots(stripe).as_slice() {
            let holds = if geometry.q_slot(stripe) == Some(slot) {
                Reverse::Syndrome { stripe }
            } else {
                Reverse::Parity { stripe }
            };
            for member_offset in (stripe * chunk..(stripe + 1) * chunk).step_by(SECTOR as usize) {
                let hit = &mut hits[slot][(member_offset / SECTOR) as usize];
                *hit += 1;
                assert_eq!(*hit, 1, "parity of stripe {stripe} lands on data");
                assert_eq!(geometry.reverse(slot, member_offset), holds);
            }
        }
    }
}

/// Closed forms for RAID10 derived on paper from md's loop (near copies are consecutive
/// virtual slots, far copy f is f*near slots right and f strides down).
fn raid10_model(geometry: &Geometry, layout: Raid10Layout, chunk: u64) -> Vec<(usize, u64)> {
    let n = geometry.members() as u64;
    let (near, far) = (u64::from(layout.near), u64::from(layout.far));
    // md calc_sectors: used rows = ceil(array chunks * copies / members).
    let array_chunks = geometry.array_bytes() / geometry.chunk_bytes();
    let used_rows = (array_chunks * near * far).div_ceil(n);
    let mut out = Vec::new();
    for j in 0..near {
        let index = chunk * near + j;
        for f in 0..far {
            let slot = (index % n + f * near) % n;
            let row = if layout.offset {
                let first_row = chunk * near / n;
                first_row * far + (index / n - first_row) + f
            } else {
                index / n + f * (used_rows / far)
            };
            out.push((slot as usize, row));
        }
    }
    out
}

/// Member sizes in sectors: `raw` picks whole chunks (at least one) plus a partial chunk.
fn sizes(raw: &[(u64, u64)], members: usize, chunk_sectors: u64) -> Vec<u64> {
    let chunks_max = (SECTORS_PER_MEMBER_MAX / chunk_sectors).clamp(1, 64);
    raw.iter()
        .take(members)
        .map(|&(chunks, extra)| (1 + chunks % chunks_max) * chunk_sectors + extra % chunk_sectors)
        .collect()
}

fn to_bytes(sectors: &[u64]) -> Vec<u64> {
    sectors.iter().map(|s| s * SECTOR).collect()
}

fn raw_sizes() -> impl Strategy<Value = Vec<(u64, u64)>> {
    prop::collection::vec((0u64..1 << 20, 0u64..1 << 20), 8)
}

/// Checks construction, capacity and every sector of one small geometry.
fn check_small(kind: LayoutKind, chunk_sectors: u64, member_sectors: &[u64]) {
    let expected = md_capacity_sectors(&kind, chunk_sectors, member_sectors);
    let member_bytes = to_bytes(member_sectors);
    let geometry = Geometry::new(kind, chunk_sectors * SECTOR, &member_bytes);
    if expected == 0 {
        assert!(
            matches!(geometry, Err(LayoutError::Invalid(_))),
            "{geometry:?}"
        );
        return;
    }
    let geometry = geometry.unwrap();
    assert_eq!(geometry.array_bytes(), expected * SECTOR);
    check_exhaustively(&geometry, &member_bytes);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn raid0_every_sector(
        members in 1usize..=8,
        alternate: bool,
        chunk_sectors in prop_oneof![(3u32..=11).prop_map(|s| 1u64 << s), 1u64..=40],
        raw in raw_sizes(),
    ) {
        let layout = if alternate { Raid0Layout::Alternate } else { Raid0Layout::Original };
        let member_sectors = sizes(&raw, members, chunk_sectors);
        check_small(LayoutKind::Raid0(layout), chunk_sectors, &member_sectors);
    }

    #[test]
    fn raid1_every_sector(members in 2usize..=8, size in 1u64..=20_000) {
        check_small(LayoutKind::Raid1, 0, &vec![size; members]);
    }

    /// RAID5 (its six algorithms), RAID6 (its eleven) and k+m (m 1 to 4), 3 (or m+2) to 9
    /// members.
    #[test]
    fn parity_levels_every_sector(
        members in 3usize..=9,
        which in 0usize..21,
        shift in 3u32..=11,
        raw in raw_sizes(),
    ) {
        let (kind, members) = match which {
            0..=5 => (LayoutKind::Raid5(Raid5Algorithm::ALL[which]), members.min(8)),
            6..=16 => (LayoutKind::Raid6(Raid6Algorithm::ALL[which - 6]), members.max(4)),
            _ => (LayoutKind::Ec { parity: which - 16 }, members.max(which - 14)),
        };
        let member_sectors = vec![sizes(&raw, 1, 1 << shift)[0]; members];
        check_small(kind, 1 << shift, &member_sectors);
    }

    #[test]
    fn raid10_every_sector(
        (near, far, members) in (1u32..=4, 1u32..=4)
            .prop_filter("2..=8 copies", |(n, f)| (2..=8).contains(&(n * f)))
            .prop_flat_map(|(n, f)| (Just(n), Just(f), (n * f) as usize..=8)),
        offset: bool,
        shift in 3u32..=11,
        raw in raw_sizes(),
    ) {
        let layout = Raid10Layout { near, far, offset };
        let chunk_sectors = 1u64 << shift;
        let member_sectors = vec![sizes(&raw, 1, chunk_sectors)[0] * u64::from(far); members];
        let wraps = offset && far > 1 && near > 1 && members % near as usize != 0;
        if wraps {
            let result = Geometry::new(
                LayoutKind::Raid10(layout), chunk_sectors * SECTOR, &to_bytes(&member_sectors));
            prop_assert!(matches!(result, Err(LayoutError::Unsupported(_))));
            return Ok(());
        }
        check_small(LayoutKind::Raid10(layout), chunk_sectors, &member_sectors);
        let geometry = Geometry::new(
            LayoutKind::Raid10(layout), chunk_sectors * SECTOR, &to_bytes(&member_sectors))
            .unwrap();
        for chunk in 0..geometry.array_bytes() / geometry.chunk_bytes() {
            prop_assert_eq!(places(&geometry, chunk), raid10_model(&geometry, layout, chunk));
        }
    }

    #[test]
    fn pieces_cover_the_range_without_crossing_units(
        raid1: bool,
        chunk_sectors in 1u64..=2048,
        start in any::<u64>(),
        len in 0u64..4 << 20,
    ) {
        let member_bytes = [64 << 20; 3];
        let (kind, unit) = if raid1 {
            (LayoutKind::Raid1, RAID1_UNIT_BYTES)
        } else {
            (LayoutKind::Raid0(Raid0Layout::Original), chunk_sectors * SECTOR)
        };
        let geometry = Geometry::new(kind, chunk_sectors * SECTOR, &member_bytes).unwrap();
        let len = len.min(geometry.array_bytes());
        let start = start % (geometry.array_bytes() - len + 1);
        let mut next = start;
        for piece in geometry.pieces(start, len) {
            prop_assert_eq!(piece.array_offset, next);
            prop_assert!(piece.len > 0);
            let last = piece.array_offset + piece.len - 1;
            prop_assert_eq!(piece.array_offset / unit, last / unit);
            // Pieces are as long as allowed: each ends at a unit boundary or at the range end.
            prop_assert!((last + 1) % unit == 0 || last + 1 == start + len);
            next += piece.len;
        }
        prop_assert_eq!(next, start + len);
    }

    #[test]
    fn large_geometries_map_and_reverse_agree(
        level in 0usize..6,
        members in 4usize..=16,
        variant in 0u32..6,
        shift in 12u32..=24,
        member_sectors in 1u64 << 20..1 << 40,
        samples in prop::collection::vec((any::<u64>(), any::<u64>()), 16),
    ) {
        let kind = match level {
            0 => LayoutKind::Raid0(Raid0Layout::Alternate),
            1 => LayoutKind::Raid1,
            2 => LayoutKind::Raid5(Raid5Algorithm::from_md(variant).unwrap()),
            4 => LayoutKind::Raid6(Raid6Algorithm::ALL[variant as usize * 2 % 11]),
            5 => LayoutKind::Ec { parity: (variant as usize % 4 + 1).min(members - 2) },
            _ => LayoutKind::Raid10([
                Raid10Layout::parse("n2").unwrap(), Raid10Layout::parse("f2").unwrap(),
                Raid10Layout::parse("o2").unwrap(), Raid10Layout::parse("n3").unwrap(),
                Raid10Layout::parse("f3").unwrap(), Raid10Layout::parse("o3").unwrap(),
            ][variant as usize]),
        };
        let chunk_sectors = 1u64 << (shift - 9);
        let sizes: Vec<u64> = match level {
            0 => (0..members as u64).map(|i| member_sectors + i * 8 * chunk_sectors).collect(),
            _ => vec![member_sectors; members],
        };
        let expected = md_capacity_sectors(&kind, chunk_sectors, &sizes);
        let member_bytes = to_bytes(&sizes);
        let geometry = Geometry::new(kind, 1 << shift, &member_bytes).unwrap();
        prop_assert_eq!(geometry.array_bytes(), expected * SECTOR);
        for (array_seed, member_seed) in samples {
            let offset = array_seed % geometry.array_bytes();
            for place in &geometry.map_copies(offset) {
                prop_assert!(place.member_offset < geometry.slot_used_bytes(place.slot));
                let back = geometry.reverse(place.slot, place.member_offset);
                prop_assert_eq!(back, Reverse::Data { array_offset: offset });
            }
            let slot = (member_seed % members as u64) as usize;
            let member_offset = member_seed % member_bytes[slot];
            match geometry.reverse(slot, member_offset) {
                Reverse::Data { array_offset } => {
                    let wanted = Placement { slot, member_offset };
                    prop_assert!(geometry.map_copies(array_offset).iter().any(|p| *p == wanted));
                }
                Reverse::Parity { stripe } => {
                    prop_assert!(geometry.parity_slots(stripe).contains(slot));
                    prop_assert_ne!(geometry.q_slot(stripe), Some(slot));
                    prop_assert_eq!(member_offset / geometry.chunk_bytes(), stripe);
                }
                Reverse::Syndrome { stripe } => {
                    prop_assert_eq!(geometry.q_slot(stripe), Some(slot));
                    prop_assert_eq!(member_offset / geometry.chunk_bytes(), stripe);
                }
                // RAID10 far layouts also leave the tail of each far region unused.
                Reverse::Unused if level != 3 => {
                    prop_assert!(member_offset >= geometry.slot_used_bytes(slot));
                }
                Reverse::Unused => {}
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Construction never panics, whatever it is given; accepted geometries map both ends.
    #[test]
    fn new_never_panics(
        level in 0usize..5,
        layout_code in any::<u32>(),
        near in 0u32..6,
        far in 0u32..6,
        offset: bool,
        chunk in prop_oneof![any::<u64>(), (0u32..64).prop_map(|s| 1u64 << s)],
        sizes in prop::collection::vec(
            prop_oneof![any::<u64>(), any::<u64>().prop_map(|s| s & !511)], 0..10),
    ) {
        let kind = match level {
            0 => LayoutKind::Raid0(if offset { Raid0Layout::Original } else { Raid0Layout::Alternate }),
            1 => LayoutKind::Raid1,
            2 => LayoutKind::Raid5(Raid5Algorithm::ALL[(layout_code % 6) as usize]),
            3 => LayoutKind::Ec { parity: (layout_code % 6) as usize },
            _ => LayoutKind::Raid10(Raid10Layout { near, far, offset }),
        };
        let _ = LayoutKind::from_md(EC_MD_LEVEL, layout_code);
        let _ = Raid10Layout::from_md(layout_code);
        let _ = Raid5Algorithm::from_md(layout_code);
        if let Ok(geometry) = Geometry::new(kind, chunk, &sizes) {
            let last = geometry.array_bytes() - 1;
            for offset in [0, last / 2, last] {
                let copies = geometry.map_copies(offset);
                prop_assert_eq!(copies.len(), geometry.copies());
                for place in &copies {
                    let back = geometry.reverse(place.slot, place.member_offset);
                    prop_assert_eq!(back, Reverse::Data { array_offset: offset });
                }
            }
            prop_assert!(geometry.pieces(0, geometry.array_bytes()).next().is_some());
        }
    }

    #[test]
    fn parsers_never_panic(text in ".{0,12}") {
        let _ = Raid10Layout::parse(&text);
        let _ = Raid5Algorithm::parse(&text);
        let _ = Raid0Layout::parse(&text);
    }
}
