//! The raidctl extension block: round trip, absence, damage, forward compatibility, place.

use super::fixtures;
use crate::metadata::*;

const UUID: [u8; 16] = [7; 16];

fn sample() -> Extension {
    Extension {
        spare_group: Some("shelf-a".to_string()),
        cache_mode: Some("write-back".to_string()),
        battery: Some("present".to_string()),
        battery_file: None,
        speed_min_kib: Some(1000),
        speed_max_kib: None,
        created_by: "raidctl 0.1.0".to_string(),
    }
}

/// Goal: what we write we read back, and the block has the documented header.
#[test]
fn round_trip() {
    let block = sample().encode(&UUID).unwrap();
    assert_eq!(block.len(), EXTENSION_BLOCK_BYTES);
    assert_eq!(&block[..8], b"RAIDCTLX");
    assert_eq!(u32::from_le_bytes(block[8..12].try_into().unwrap()), 1);
    assert_eq!(&block[20..36], &UUID);
    assert_eq!(Extension::decode(&block, &UUID), Ok(Some(sample())));
    let empty = Extension::default();
    let block = empty.encode(&UUID).unwrap();
    assert_eq!(Extension::decode(&block, &UUID), Ok(Some(empty)));
}

/// Goal: arrays made by mdadm (no magic) and leftovers from another array read as absent.
#[test]
fn absent_or_foreign_is_none() {
    let member = fixtures::member("raid5-4.m0");
    let sb = Superblock::decode(member.superblock_block()).unwrap();
    let offset = extension_offset_sectors(&sb, None).unwrap();
    assert_eq!(offset, 2040);
    let block = member.sectors(offset, EXTENSION_BLOCK_BYTES);
    assert_eq!(Extension::decode(block, &sb.set_uuid), Ok(None));
    assert_eq!(Extension::decode(&[0xff; 4096], &UUID), Ok(None));
    let ours = sample().encode(&UUID).unwrap();
    assert_eq!(Extension::decode(&ours, &[8; 16]), Ok(None));
}

/// Goal: a block that claims to be ours but is damaged is an error naming the problem.
#[test]
fn damage_is_an_error() {
    let block = sample().encode(&UUID).unwrap();
    let mut flipped = block.clone();
    flipped[70] ^= 0x20;
    let error = Extension::decode(&flipped, &UUID).unwrap_err();
    assert!(matches!(error, MetadataError::ExtensionChecksum { .. }));
    assert!(error.to_string().contains("crc mismatch"), "{error}");
    let mut version = block.clone();
    version[8] = 2;
    assert_eq!(
        Extension::decode(&version, &UUID),
        Err(MetadataError::ExtensionBadVersion(2))
    );
    let mut length = block.clone();
    length[12..16].copy_from_slice(&5000u32.to_le_bytes());
    assert_eq!(
        Extension::decode(&length, &UUID),
        Err(MetadataError::ExtensionBadLength(5000))
    );
    length[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(Extension::decode(&length, &UUID).is_err());
    // A short buffer cannot hold the payload its header announces.
    assert!(Extension::decode(&block[..100], &UUID).is_err());
    assert!(Extension::decode(&block[..10], &UUID).is_err());
    // Valid CRC over something that is not our JSON.
    let garbage = with_payload(b"not json");
    assert!(matches!(
        Extension::decode(&garbage, &UUID),
        Err(MetadataError::ExtensionJson(_))
    ));
    let wrong_type = with_payload(br#"{"speed_min_kib":"fast"}"#);
    assert!(matches!(
        Extension::decode(&wrong_type, &UUID),
        Err(MetadataError::ExtensionJson(_))
    ));
}

/// A block with a correct header and CRC around an arbitrary payload.
fn with_payload(payload: &[u8]) -> Vec<u8> {
    let mut block = Extension::default().encode(&UUID).unwrap();
    block[64..].fill(0);
    block[64..64 + payload.len()].copy_from_slice(payload);
    block[12..16].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    block[16..20].copy_from_slice(&crc32fast::hash(payload).to_le_bytes());
    block
}

/// Goal: a later version may add fields, and an older one may lack some.
#[test]
fn forward_and_backward_compatible_payload() {
    let newer = with_payload(
        br#"{"created_by":"raidctl 9","cache_mode":"write-through","future_knob":[1,2]}"#,
    );
    let read = Extension::decode(&newer, &UUID).unwrap().unwrap();
    assert_eq!(read.created_by, "raidctl 9");
    assert_eq!(read.cache_mode.as_deref(), Some("write-through"));
    let older = with_payload(b"{}");
    assert_eq!(
        Extension::decode(&older, &UUID),
        Ok(Some(Extension::default()))
    );
}

/// Goal: settings too large for the block are refused, not truncated.
#[test]
fn oversized_payload_is_refused() {
    let mut big = sample();
    big.spare_group = Some("g".repeat(5000));
    assert!(matches!(
        big.encode(&UUID),
        Err(MetadataError::ExtensionTooLarge { .. })
    ));
    big.spare_group = Some("g".repeat(EXTENSION_PAYLOAD_MAX_BYTES - 200));
    let block = big.encode(&UUID).unwrap();
    assert_eq!(Extension::decode(&block, &UUID), Ok(Some(big)));
}

/// Goal: the block is placed below data and above md's metadata, or refused when md's own
/// bad-block log (mdadm's fallback position) or a big bitmap is in the way.
#[test]
fn placement() {
    let member = fixtures::member("raid5-4.m0");
    let mut sb = Superblock::decode(member.superblock_block()).unwrap();
    let bitmap = BitmapSuper::decode(member.sectors(16, 256)).unwrap();
    assert_eq!(metadata_end_sectors(&sb, Some(&bitmap)), 32);
    assert_eq!(extension_offset_sectors(&sb, Some(&bitmap)), Ok(2040));
    // mdadm puts the log at data_offset - 8 when it does not fit after the bitmap.
    sb.bblog_offset_sectors = 2040 - 8;
    assert_eq!(
        extension_offset_sectors(&sb, Some(&bitmap)),
        Err(MetadataError::NoRoomForExtension {
            metadata_end_sectors: 2048,
            data_offset_sectors: 2048
        })
    );
    sb.bblog_offset_sectors = 0;
    sb.feature_map = 0;
    sb.data_offset_sectors = 24;
    assert_eq!(extension_offset_sectors(&sb, None), Ok(16));
    sb.data_offset_sectors = 23;
    assert!(extension_offset_sectors(&sb, None).is_err());
    sb.data_offset_sectors = 4;
    assert!(extension_offset_sectors(&sb, None).is_err());
    // A negative or absurd offset read from disk must not panic.
    sb.bitmap_offset_sectors = i32::MIN;
    sb.bblog_offset_sectors = i32::MAX;
    sb.bblog_size_sectors = u16::MAX;
    let _ = extension_offset_sectors(&sb, Some(&bitmap));
}
