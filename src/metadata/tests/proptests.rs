//! Property tests: random valid superblocks round-trip, and no bytes make a decoder panic.

use crate::metadata::*;
use proptest::prelude::*;

/// Random values for every field, constrained only where the load checks demand it.
fn superblock() -> impl Strategy<Value = Superblock> {
    let identity = (
        any::<u32>(),
        any::<[u8; 16]>(),
        any::<[u8; 32]>(),
        any::<u64>(),
        prop_oneof![
            Just(0i32),
            Just(1),
            Just(5),
            Just(6),
            Just(10),
            any::<i32>()
        ],
        any::<u32>(),
        any::<u64>(),
        any::<u32>(),
        any::<u32>(),
        any::<i32>(),
    );
    let reshape = (
        any::<i32>(),
        any::<u64>(),
        any::<i32>(),
        any::<u32>(),
        any::<u32>(),
        any::<i32>(),
    );
    let placement = (
        9u64..=u64::MAX,
        10u64..=u64::MAX,
        any::<u64>(),
        any::<u32>(),
        any::<u32>(),
        any::<[u8; 16]>(),
        any::<u8>(),
        any::<u8>(),
        any::<u16>(),
        any::<i32>(),
    );
    let state = (
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
        prop_oneof![
            prop::collection::vec(any::<u16>(), 0..=200),
            prop::collection::vec(any::<u16>(), 1900..=1920),
        ],
    );
    (identity, reshape, placement, state).prop_map(|(i, r, p, s)| {
        let mut sb = Superblock {
            feature_map: i.0 & FEATURE_ALL,
            set_uuid: i.1,
            set_name: i.2,
            ctime: i.3,
            level: i.4,
            layout: i.5,
            size_sectors: i.6,
            chunk_sectors: i.7,
            raid_disks: i.8,
            bitmap_offset_sectors: i.9,
            new_level: r.0,
            reshape_position: r.1,
            delta_disks: r.2,
            new_layout: r.3,
            new_chunk_sectors: r.4,
            new_offset_sectors: r.5,
            data_offset_sectors: p.0,
            data_size_sectors: p.1,
            super_offset_sectors: 8,
            recovery_offset_sectors: p.2,
            dev_number: p.3,
            cnt_corrected_read: p.4,
            device_uuid: p.5,
            devflags: p.6,
            bblog_shift: p.7,
            bblog_size_sectors: p.8,
            bblog_offset_sectors: p.9,
            utime: s.0,
            events: s.1,
            resync_offset: s.2,
            dev_roles: s.3,
        };
        // The two rules that tie fields together: RAID0_LAYOUT only on level 0, and a new
        // data offset (during a reshape) must not reach into the superblock.
        if sb.level != 0 {
            sb.feature_map &= !FEATURE_RAID0_LAYOUT;
        }
        let min = 8 + sb.superblock_sectors();
        let moved = sb
            .data_offset_sectors
            .checked_add_signed(i64::from(sb.new_offset_sectors));
        if sb.data_offset_sectors < min || moved.is_none_or(|offset| offset < min) {
            sb.feature_map &= !FEATURE_NEW_OFFSET;
        }
        if sb.data_offset_sectors < min {
            sb.data_offset_sectors = min;
        }
        sb
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Goal: every field survives encode then decode.
    #[test]
    fn superblock_round_trip(sb in superblock()) {
        let block = sb.encode();
        prop_assert_eq!(block.len(), 4096);
        prop_assert_eq!(Superblock::decode(&block), Ok(sb.clone()));
        let (unchecked, checksum) = Superblock::decode_unchecked(&block).unwrap();
        prop_assert!(checksum.is_ok());
        prop_assert_eq!(unchecked, sb);
    }

    /// Goal: one flipped bit anywhere in the checksummed bytes of a random superblock is
    /// refused (the exhaustive version of this runs on a fixture).
    #[test]
    fn random_bit_flip_refused(
        sb in superblock(),
        position in any::<prop::sample::Index>(),
        bit in 0u8..8,
    ) {
        let mut block = sb.encode();
        let covered = 256 + 2 * sb.dev_roles.len();
        block[position.index(covered)] ^= 1 << bit;
        prop_assert!(Superblock::decode(&block).is_err());
    }

    /// Goal: no input makes any decoder panic, including inputs that start like ours.
    #[test]
    fn decoders_never_panic(
        mut bytes in prop::collection::vec(any::<u8>(), 0..4200),
        prefix in 0u8..4,
        uuid in any::<[u8; 16]>(),
    ) {
        match prefix {
            1 if bytes.len() >= 8 => {
                bytes[..4].copy_from_slice(&MD_SB_MAGIC.to_le_bytes());
                bytes[4..8].copy_from_slice(&1u32.to_le_bytes());
            }
            2 if bytes.len() >= 8 => bytes[..4].copy_from_slice(&BITMAP_MAGIC.to_le_bytes()),
            3 if bytes.len() >= 8 => bytes[..8].copy_from_slice(&EXTENSION_MAGIC),
            _ => {}
        }
        if let Ok((sb, checksum)) = Superblock::decode_unchecked(&bytes) {
            let report = ExamineReport::new("fuzz", u64::MAX, &sb, checksum, None, None);
            let _ = report.to_string();
            let _ = serde_json::to_string(&report);
            let _ = metadata_end_sectors(&sb, None);
            let _ = extension_offset_sectors(&sb, None);
            let _ = array_size_sectors(&sb);
            let _ = sb.array_state_string();
            let _ = sb.check_fits_device(0);
        }
        let _ = Superblock::decode(&bytes);
        let _ = superblock_checksum(&bytes);
        if let Ok(bitmap) = BitmapSuper::decode(&bytes) {
            let _ = bitmap.nbits();
            let _ = bitmap.bytes_on_disk();
            let _ = count_bits(&bytes, bitmap.nbits());
        }
        let _ = Extension::decode(&bytes, &uuid);
    }

    /// Goal: a random superblock from disk never makes assembly panic.
    #[test]
    fn assembly_never_panics(
        sbs in prop::collection::vec(superblock(), 1..5),
        force in any::<bool>(),
    ) {
        let candidates: Vec<Candidate> = sbs
            .into_iter()
            .enumerate()
            .map(|(i, mut sb)| {
                sb.raid_disks %= 2000;
                Candidate { path: format!("/dev/p{i}"), superblock: Ok(sb) }
            })
            .collect();
        let _ = plan_assembly(&candidates, &AssemblyOptions { force, expected_uuid: None });
    }

    /// Goal: the extension block round-trips any strings that fit.
    #[test]
    fn extension_round_trip(
        group in proptest::option::of(".{0,40}"),
        mode in proptest::option::of(".{0,20}"),
        min in proptest::option::of(any::<u64>()),
        created in ".{0,30}",
        uuid in any::<[u8; 16]>(),
    ) {
        let extension = Extension {
            spare_group: group,
            cache_mode: mode,
            battery: None,
            battery_file: None,
            speed_min_kib: min,
            speed_max_kib: None,
            created_by: created,
        };
        let block = extension.encode(&uuid).unwrap();
        prop_assert_eq!(Extension::decode(&block, &uuid), Ok(Some(extension)));
    }
}
