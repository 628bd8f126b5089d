//! Superblock decode/encode against md-written fixtures and against deliberate damage.

use super::fixtures;
use crate::metadata::*;

/// One fixture array's expected superblock values: (array, level, layout, raid_disks,
/// feature_map, bitmap_offset, bblog_offset, events per member).
type Expected = (&'static str, i32, u32, u32, u32, i32, i32, &'static [u64]);

/// What each fixture array's superblocks must say (read with mdadm 4.2 --examine and a
/// byte dump).
const EXPECTED: &[Expected] = &[
    ("raid0-3-unequal", 0, 1, 3, 0x1000, 0, 8, &[0, 0, 0]),
    ("raid0-4", 0, 1, 4, 0, 0, 8, &[0, 0, 0, 0]),
    ("raid1-2", 1, 0, 2, 0, 0, 16, &[1, 1]),
    ("raid10f2-4", 10, 0x201, 4, 0, 0, 16, &[1, 1, 1, 1]),
    ("raid10n2-4", 10, 0x102, 4, 0, 0, 16, &[1, 1, 1, 1]),
    ("raid5-4", 5, 2, 4, 0x1, 8, 16, &[1, 1, 1, 1]),
    ("raid5-4-degraded", 5, 2, 4, 0x1, 8, 16, &[7, 7, 2, 7]),
    ("raid6-5", 6, 2, 5, 0, 0, 16, &[2, 2, 2, 2, 2]),
];

/// Goal: every member md wrote decodes with all kernel checks (so our checksum is md's), and
/// its fields are the ones mdadm reported. Method: decode each fixture superblock.
#[test]
fn decodes_every_fixture_member() {
    let mut decoded = 0;
    for (array, level, layout, raid_disks, features, bitmap_offset, bblog_offset, events) in
        EXPECTED
    {
        let members = fixtures::array(array);
        assert_eq!(members.len(), events.len(), "{array}: member count");
        for (dev_number, member) in members.iter().enumerate() {
            let sb = Superblock::decode(member.superblock_block())
                .unwrap_or_else(|error| panic!("{}: {error}", member.name));
            let what = &member.name;
            assert_eq!(sb.level, *level, "{what}");
            assert_eq!(sb.layout, *layout, "{what}");
            assert_eq!(sb.raid_disks, *raid_disks, "{what}");
            assert_eq!(sb.feature_map, *features, "{what}");
            assert_eq!(sb.bitmap_offset_sectors, *bitmap_offset, "{what}");
            assert_eq!(sb.bblog_offset_sectors, *bblog_offset, "{what}");
            assert_eq!(sb.bblog_size_sectors, 8, "{what}");
            assert_eq!(sb.events, events[dev_number], "{what}");
            assert_eq!(sb.dev_number as usize, dev_number, "{what}");
            assert_eq!(sb.max_dev(), 128, "{what}");
            assert_eq!(sb.data_offset_sectors, 2048, "{what}");
            assert_eq!(sb.super_offset_sectors, 8, "{what}");
            assert_eq!(
                sb.chunk_sectors,
                if *level == 1 { 0 } else { 128 },
                "{what}"
            );
            assert_eq!(sb.name(), "(none):0", "{what}");
            assert_eq!(sb.array_name(), "0", "{what}");
            assert_eq!(
                sb.data_offset_sectors + sb.data_size_sectors,
                member.device_bytes / 512,
                "{what}: data runs to the end of the device"
            );
            sb.check_fits_device(member.device_bytes / 512).unwrap();
            decoded += 1;
        }
    }
    assert_eq!(decoded, 30);
    assert_eq!(
        fixtures::all().len(),
        30,
        "a fixture is not covered by EXPECTED"
    );
}

/// Goal: the struct covers every byte md writes. Method: re-encode each decoded fixture
/// superblock and compare the whole 4 KiB block byte for byte.
#[test]
fn reencoding_fixtures_is_byte_identical() {
    for member in fixtures::all().values() {
        let block = member.superblock_block();
        let sb = Superblock::decode(block).unwrap();
        assert_eq!(sb.encode(), block, "{}", member.name);
    }
}

/// Goal: no single-bit corruption of the checksummed bytes goes unnoticed. Method: flip every
/// bit of the first 256 + 2*max_dev bytes of one fixture superblock and decode.
#[test]
fn every_single_bit_flip_is_refused() {
    let block = fixtures::member("raid5-4.m1").superblock_block().to_vec();
    let covered = 256 + 2 * 128;
    let mut refused = 0;
    for byte in 0..covered {
        for bit in 0..8 {
            let mut damaged = block.clone();
            damaged[byte] ^= 1 << bit;
            let result = Superblock::decode(&damaged);
            assert!(
                result.is_err(),
                "flip of byte {byte} bit {bit} was accepted"
            );
            refused += 1;
        }
    }
    assert_eq!(refused, covered * 8);
    // The bytes after the roles are not covered: md ignores them, and so do we.
    let mut beyond = block.clone();
    beyond[covered] ^= 1;
    assert!(Superblock::decode(&beyond).is_ok());
}

/// A change to the bytes of a valid superblock.
type Patch = fn(&mut Vec<u8>);

/// Patches a valid superblock with `patch`, fixes the checksum, and decodes it.
fn decode_patched(patch: impl FnOnce(&mut Vec<u8>)) -> Result<Superblock, MetadataError> {
    let mut block = fixtures::member("raid5-4.m0").superblock_block().to_vec();
    patch(&mut block);
    rewrite_checksum(&mut block)?;
    Superblock::decode(&block)
}

fn put_u32(block: &mut [u8], offset: usize, value: u32) {
    block[offset..offset + 4].copy_from_slice(&value.to_le_bytes());
}

fn put_u64(block: &mut [u8], offset: usize, value: u64) {
    block[offset..offset + 8].copy_from_slice(&value.to_le_bytes());
}

/// Goal: each kernel load check has its own error. Method: break one thing at a time in an
/// otherwise valid superblock (checksum recomputed so only that check can fire).
#[test]
fn each_load_check_has_its_own_error() {
    use MetadataError as E;
    let r = decode_patched(|b| put_u32(b, 0, 0x1234));
    assert_eq!(r, Err(E::BadMagic { found: 0x1234 }));
    assert_eq!(
        r.unwrap_err().to_string(),
        "no md superblock (magic 0x00001234, expected 0xa92b4efc)"
    );
    // One patch per check, with the error it must give.
    let cases: [(Patch, E); 10] = [
        (|b| put_u32(b, 4, 2), E::BadMajorVersion(2)),
        (
            |b| put_u32(b, 8, 0x2001),
            E::UnknownFeatures {
                feature_map: 0x2001,
                unknown: 0x2000,
            },
        ),
        (|b| put_u32(b, 12, 7), E::NonZeroPad0(7)),
        (|b| b[230] = 1, E::NonZeroPad3),
        (
            |b| put_u64(b, 144, 0),
            E::WrongSuperOffset {
                found: 0,
                expected: 8,
            },
        ),
        (|b| put_u64(b, 136, 9), E::DataSizeTooSmall(9)),
        (
            |b| put_u64(b, 128, 8),
            E::DataOffsetOverlapsSuperblock {
                data_offset_sectors: 8,
                min_sectors: 9,
            },
        ),
        (|b| put_u32(b, 8, 0x1001), E::Raid0LayoutOnWrongLevel(5)),
        // A reshape moving data into the superblock is refused too.
        (
            |b| {
                put_u32(b, 8, 0x41);
                put_u32(b, 124, (-2045i32) as u32);
            },
            E::DataOffsetOverlapsSuperblock {
                data_offset_sectors: 3,
                min_sectors: 9,
            },
        ),
        (|b| put_u32(b, 220, 1921), E::TooManyDevices(1921)),
    ];
    for (patch, expected) in cases {
        assert_eq!(decode_patched(patch), Err(expected));
    }
    let good = fixtures::member("raid5-4.m0").superblock_block();
    assert!(matches!(
        Superblock::decode(&good[..300]),
        Err(E::TooShort { needed: 512, .. })
    ));
    assert!(matches!(
        Superblock::decode(&good[..100]),
        Err(E::TooShort { .. })
    ));
    let mut bad_sum = good.to_vec();
    bad_sum[216] ^= 0xff;
    let error = Superblock::decode(&bad_sum).unwrap_err();
    assert!(
        error
            .to_string()
            .starts_with("checksum mismatch: stored 0x"),
        "{error}"
    );
}

/// Goal: examine can still show a superblock whose checksum is wrong, with both values.
#[test]
fn unchecked_decode_reports_the_checksum() {
    let mut block = fixtures::member("raid1-2.m0").superblock_block().to_vec();
    block[64] ^= 1; // ctime
    let (sb, checksum) = Superblock::decode_unchecked(&block).unwrap();
    assert!(!checksum.is_ok());
    assert_eq!(checksum.stored, 0xccd4_bacb);
    assert_eq!(checksum.computed, superblock_checksum(&block).unwrap());
    assert_eq!(sb.level, 1);
    let zeros = vec![0u8; 4096];
    assert!(matches!(
        Superblock::decode_unchecked(&zeros),
        Err(MetadataError::BadMagic { found: 0 })
    ));
}

/// A small valid superblock for tests that need one with a chosen shape.
pub fn sample(max_dev: usize) -> Superblock {
    let mut sb = Superblock::decode(fixtures::member("raid5-4.m0").superblock_block()).unwrap();
    sb.dev_roles.resize(max_dev, ROLE_SPARE);
    sb
}

/// Goal: the odd-max_dev checksum path (a trailing le16) agrees with an independent sum.
#[test]
fn odd_max_dev_checksum() {
    let mut sb = sample(5);
    sb.dev_roles[4] = 0xabcd;
    let block = sb.encode();
    assert_eq!(Superblock::decode(&block).unwrap(), sb);
    // Independent computation: words, then the le16 tail, folded once.
    let mut sum: u64 = 0;
    for (i, word) in block[..256 + 8].chunks(4).enumerate() {
        if i != 54 {
            sum += u64::from(u32::from_le_bytes(word.try_into().unwrap()));
        }
    }
    sum += u64::from(u16::from_le_bytes([block[264], block[265]]));
    let expected = ((sum & 0xffff_ffff) + (sum >> 32)) as u32;
    assert_eq!(
        u32::from_le_bytes(block[216..220].try_into().unwrap()),
        expected
    );
}

/// Goal: role helpers follow md's rules, including the dev_number >= max_dev case.
#[test]
fn roles_and_array_state() {
    let degraded =
        Superblock::decode(fixtures::member("raid5-4-degraded.m0").superblock_block()).unwrap();
    assert_eq!(degraded.array_state_string(), "AA.A");
    assert_eq!(degraded.role_of(2), Role::Faulty);
    assert_eq!(degraded.role_of(3), Role::Active(3));
    assert_eq!(degraded.role_of(127), Role::Spare);
    assert_eq!(degraded.role_of(5000), Role::Spare);
    let stale =
        Superblock::decode(fixtures::member("raid5-4-degraded.m2").superblock_block()).unwrap();
    assert_eq!(stale.array_state_string(), "AAAA");
    assert_eq!(stale.own_role(), Role::Active(2));

    let mut sb = sample(4);
    sb.set_role(9, Role::Active(1)).unwrap();
    assert_eq!(sb.max_dev(), 10);
    assert_eq!(sb.role_of(8), Role::Spare);
    assert_eq!(sb.array_state_string(), "ARAA");
    sb.set_role(8, Role::Active(1)).unwrap();
    assert_eq!(sb.array_state_string(), "A?AA");
    sb.set_role(0, Role::Journal).unwrap();
    assert_eq!(sb.role_of(0), Role::Journal);
    assert_eq!(sb.array_state_string(), ".?AA");
    assert_eq!(
        sb.set_role(1920, Role::Spare),
        Err(MetadataError::DevNumberOutOfRange(1920))
    );
    assert_eq!(
        sb.set_role(1, Role::Active(0xff00)),
        Err(MetadataError::SlotOutOfRange(0xff00))
    );
    assert_eq!(Role::from_raw(0xfffe), Role::Faulty);
    assert_eq!(Role::Active(3).to_string(), "Active device 3");
    // A garbage raid_disks must not make the state string enormous.
    sb.raid_disks = u32::MAX;
    assert_eq!(sb.array_state_string().len(), 1920);
}

/// Goal: name helpers respect md's 32-byte field and the "homehost:name" convention.
#[test]
fn names() {
    let mut sb = sample(4);
    sb.set_name("myhost:data").unwrap();
    assert_eq!(sb.name(), "myhost:data");
    assert_eq!(sb.array_name(), "data");
    sb.set_name("plain").unwrap();
    assert_eq!(sb.array_name(), "plain");
    let full = "x".repeat(32);
    sb.set_name(&full).unwrap();
    assert_eq!(sb.name(), full);
    assert!(sb.set_name(&"x".repeat(33)).is_err());
    assert!(sb.set_name("a\0b").is_err());
    assert_eq!(Superblock::decode(&sb.encode()).unwrap().name(), full);
    sb.set_ctime_secs(1_700_000_000);
    assert_eq!(sb.ctime_secs(), 1_700_000_000);
    sb.set_utime_secs(1_700_000_001);
    assert_eq!(sb.utime_secs(), 1_700_000_001);
    assert!(sb.is_clean());
    sb.resync_offset = 0;
    assert!(!sb.is_clean());
}
