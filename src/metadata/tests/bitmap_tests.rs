//! Bitmap superblock and bit helpers, against md-written bitmaps.

use super::fixtures;
use crate::metadata::*;

fn fixture_bitmap(name: &str) -> (Superblock, BitmapSuper, &'static [u8]) {
    let member = fixtures::member(name);
    let sb = Superblock::decode(member.superblock_block()).unwrap();
    let start = 8 + i64::from(sb.bitmap_offset_sectors) as u64;
    let area = member.sectors(start, 4096);
    let bitmap = BitmapSuper::decode(area).unwrap();
    (sb, bitmap, area)
}

/// Goal: md's bitmap of raid5-4 decodes, belongs to the array, and re-encodes byte for byte.
#[test]
fn raid5_fixture_bitmap() {
    for dev in 0..4 {
        let (sb, bitmap, area) = fixture_bitmap(&format!("raid5-4.m{dev}"));
        assert_eq!(bitmap.version, 4);
        bitmap.check_uuid(&sb.set_uuid).unwrap();
        assert_eq!(bitmap.chunk_bytes, 64 << 20);
        assert_eq!(bitmap.sync_size_sectors, sb.size_sectors);
        assert_eq!(bitmap.sync_size_sectors, 47104);
        assert_eq!(bitmap.daemon_sleep_secs, 5);
        assert_eq!((bitmap.events, bitmap.events_cleared), (1, 1));
        assert_eq!(bitmap.nbits(), 1);
        assert_eq!(bitmap.bytes_on_disk(), 4096);
        assert!(!bitmap.is_stale());
        assert_eq!(bitmap.encode(), &area[..256]);
        // md cleared the only chunk's bit after the initial sync; the padding stays ones.
        let bits = &area[256..];
        assert!(!test_bit(bits, 0).unwrap());
        assert!(test_bit(bits, 1).unwrap());
        assert_eq!(count_bits(bits, bitmap.nbits()), 0);
        assert_eq!(bitmap_sync_size_sectors(&sb), Some(47104));
    }
}

/// Goal: the degraded array's bitmap shows what md does while degraded: events_cleared
/// frozen at the failure, the dirty bit kept; the stale member's bitmap is older.
#[test]
fn degraded_fixture_bitmaps() {
    let (_, fresh, area) = fixture_bitmap("raid5-4-degraded.m0");
    assert_eq!((fresh.events, fresh.events_cleared), (7, 2));
    assert_eq!(count_bits(&area[256..], fresh.nbits()), 1);
    let (sb, stale, _) = fixture_bitmap("raid5-4-degraded.m2");
    assert_eq!((stale.events, stale.events_cleared), (2, 0));
    stale.check_uuid(&sb.set_uuid).unwrap();
    let other = Superblock::decode(fixtures::member("raid5-4.m0").superblock_block()).unwrap();
    let error = stale.check_uuid(&other.set_uuid).unwrap_err();
    assert!(
        error
            .to_string()
            .contains("does not match array uuid b6b00909:"),
        "{error}"
    );
}

/// Goal: each bitmap load check fires on its own.
#[test]
fn bitmap_load_checks() {
    let (_, bitmap, _) = fixture_bitmap("raid5-4.m0");
    let patched = |patch: &dyn Fn(&mut BitmapSuper)| {
        let mut copy = bitmap.clone();
        patch(&mut copy);
        // Build the bytes by hand: encode() asserts validity in debug builds.
        let mut bytes = bitmap.encode();
        bytes[4..8].copy_from_slice(&copy.version.to_le_bytes());
        bytes[52..56].copy_from_slice(&copy.chunk_bytes.to_le_bytes());
        bytes[56..60].copy_from_slice(&copy.daemon_sleep_secs.to_le_bytes());
        bytes[60..64].copy_from_slice(&copy.write_behind.to_le_bytes());
        BitmapSuper::decode(&bytes)
    };
    use MetadataError as E;
    assert_eq!(patched(&|b| b.version = 6), Err(E::BitmapBadVersion(6)));
    assert_eq!(patched(&|b| b.version = 2), Err(E::BitmapBadVersion(2)));
    assert!(patched(&|b| b.version = 3).is_ok());
    assert!(patched(&|b| b.version = 5).is_ok());
    assert_eq!(
        patched(&|b| b.chunk_bytes = 256),
        Err(E::BitmapBadChunk(256))
    );
    assert_eq!(
        patched(&|b| b.chunk_bytes = 3 << 20),
        Err(E::BitmapBadChunk(3 << 20))
    );
    assert!(patched(&|b| b.chunk_bytes = 512).is_ok());
    assert_eq!(
        patched(&|b| b.daemon_sleep_secs = 0),
        Err(E::BitmapBadDaemonSleep(0))
    );
    assert_eq!(
        patched(&|b| b.daemon_sleep_secs = 86_401),
        Err(E::BitmapBadDaemonSleep(86_401))
    );
    assert_eq!(
        patched(&|b| b.write_behind = 16_384),
        Err(E::BitmapBadWriteBehind(16_384))
    );
    assert!(patched(&|b| b.write_behind = 16_383).is_ok());
    let mut wrong_magic = bitmap.encode();
    wrong_magic[0] = 0;
    assert!(matches!(
        BitmapSuper::decode(&wrong_magic),
        Err(E::BitmapBadMagic { .. })
    ));
    assert!(matches!(
        BitmapSuper::decode(&wrong_magic[..10]),
        Err(E::TooShort { .. })
    ));
}

/// Goal: bit helpers use md's order (byte c/8, bit c%8, LSB first) and refuse out-of-range
/// bits instead of dropping them.
#[test]
fn bit_helpers() {
    let mut bits = vec![0u8; 4];
    set_bit(&mut bits, 0).unwrap();
    set_bit(&mut bits, 9).unwrap();
    set_bit(&mut bits, 31).unwrap();
    assert_eq!(bits, [0x01, 0x02, 0x00, 0x80]);
    assert!(test_bit(&bits, 9).unwrap());
    assert!(!test_bit(&bits, 10).unwrap());
    assert_eq!(count_bits(&bits, 32), 3);
    assert_eq!(count_bits(&bits, 31), 2);
    assert_eq!(count_bits(&bits, 10), 2);
    assert_eq!(count_bits(&bits, 9), 1);
    assert_eq!(count_bits(&bits, 1000), 3);
    clear_bit(&mut bits, 9).unwrap();
    assert_eq!(bits, [0x01, 0x00, 0x00, 0x80]);
    assert_eq!(
        set_bit(&mut bits, 32),
        Err(MetadataError::BitOutOfRange {
            bit: 32,
            available: 32
        })
    );
    assert!(clear_bit(&mut bits, u64::MAX).is_err());
    assert!(test_bit(&[], 0).is_err());
}

/// Goal: sizes and mdadm's chunk choice, including the edges.
#[test]
fn sizes_and_chunk_choice() {
    assert_eq!(nbits(47104, 64 << 20), 1);
    assert_eq!(nbits(131_072, 64 << 20), 1);
    assert_eq!(nbits(131_073, 64 << 20), 2);
    assert_eq!(nbits(0, 64 << 20), 0);
    assert_eq!(nbits(10, 0), 10);
    assert_eq!(bitmap_bytes_on_disk(0), 4096);
    assert_eq!(bitmap_bytes_on_disk((4096 - 256) * 8), 4096);
    assert_eq!(bitmap_bytes_on_disk((4096 - 256) * 8 + 1), 8192);
    assert_eq!(bitmap_bytes_on_disk(u64::MAX), (1u64 << 61) + 4096);
    // Small arrays: the 64 MiB minimum.
    assert_eq!(choose_bitmap_chunk_bytes(47104, 4096), Some(64 << 20));
    // 16 TiB per member with 128 KiB of space: 64 MiB chunks give 256 Ki bits = 32 KiB.
    let sixteen_tib = 16u64 << 31;
    assert_eq!(
        choose_bitmap_chunk_bytes(sixteen_tib, 128 << 10),
        Some(64 << 20)
    );
    // The same member with only 4 KiB: bits must fit in 3840 bytes = 30720 bits.
    let chunk = choose_bitmap_chunk_bytes(sixteen_tib, 4096).unwrap();
    assert_eq!(chunk, 1 << 30);
    assert!(256 + nbits(sixteen_tib, u64::from(chunk)).div_ceil(8) <= 4096);
    assert!(256 + nbits(sixteen_tib, u64::from(chunk / 2)).div_ceil(8) > 4096);
    assert_eq!(choose_bitmap_chunk_bytes(u64::MAX, 4096), None);
    assert_eq!(choose_bitmap_chunk_bytes(1, 0), None);
}

/// Goal: the create-time bitmap matches what mdadm wrote for raid5-4, is all ones, and
/// covers the array size for RAID10; RAID0 gets none.
#[test]
fn new_bitmap_like_mdadm() {
    let (sb, fixture, _) = fixture_bitmap("raid5-4.m0");
    let mut fresh_sb = sb.clone();
    fresh_sb.events = 0;
    let bitmap = create_bitmap_superblock(&fresh_sb, None).unwrap();
    assert_eq!(bitmap.version, BITMAP_VERSION_WRITTEN);
    assert_eq!(bitmap.chunk_bytes, fixture.chunk_bytes);
    assert_eq!(bitmap.sync_size_sectors, fixture.sync_size_sectors);
    assert_eq!(bitmap.daemon_sleep_secs, fixture.daemon_sleep_secs);
    assert_eq!(bitmap.uuid, sb.set_uuid);
    let area = bitmap.encode_initial_area();
    assert_eq!(area.len(), 4096);
    assert!(area[256..].iter().all(|byte| *byte == 0xff));
    assert_eq!(BitmapSuper::decode(&area).unwrap(), bitmap);

    let raid10 = Superblock::decode(fixtures::member("raid10n2-4.m0").superblock_block()).unwrap();
    assert_eq!(
        create_bitmap_superblock(&raid10, None)
            .unwrap()
            .sync_size_sectors,
        94208
    );
    let raid0 = Superblock::decode(fixtures::member("raid0-4.m0").superblock_block()).unwrap();
    assert_eq!(
        create_bitmap_superblock(&raid0, None),
        Err(MetadataError::NoBitmapForLevel(0))
    );
    assert!(matches!(
        new_bitmap_superblock(&sb, 100),
        Err(MetadataError::BitmapTooLarge { .. })
    ));
}
