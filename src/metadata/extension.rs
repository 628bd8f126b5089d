//! The raidctl extension block: settings md has no field for, kept on every member.
//!
//! Cache mode, battery flag, spare group and rebuild speed limits must survive a crash and
//! travel with the disks, like the rest of the array's state. md has no place for them, so we
//! keep one 4 KiB block in the metadata area at device sector `data_offset - 8`: below the
//! data, above md's superblock, bitmap and bad-block log. md never reads or writes there
//! (that space is reshape headroom), so `mdadm --examine` and the md driver do not see it.
//!
//! ```text
//! byte 0   magic "RAIDCTLX"
//!      8   version u32 le (1)
//!     12   payload length u32 le (<= 4032)
//!     16   crc32 u32 le of the payload
//!     20   array set_uuid (16 bytes): a block left over from an earlier array is ignored
//!     36   zero up to byte 64 (room for later header fields)
//!     64   payload: JSON of `Extension`, then zeros to 4096
//! ```
//!
//! The JSON payload reads with `#[serde(default)]` and ignores unknown fields, so a later
//! version can add settings and an older raidctl still reads the ones it knows.

use super::{
    BitmapSuper, MetadataError, Superblock, FEATURE_BITMAP_OFFSET, FEATURE_MULTIPLE_PPLS,
    FEATURE_PPL, SUPERBLOCK_BLOCK_BYTES,
};

/// Magic at byte 0 of the block.
pub const EXTENSION_MAGIC: [u8; 8] = *b"RAIDCTLX";
/// The version this build writes and reads.
pub const EXTENSION_VERSION: u32 = 1;
/// Size of the block.
pub const EXTENSION_BLOCK_BYTES: usize = 4096;
/// Size of the block in sectors; it ends at data_offset.
pub const EXTENSION_SECTORS: u64 = 8;
/// Header bytes before the payload.
const HEADER_BYTES: usize = 64;
/// Largest JSON payload.
pub const EXTENSION_PAYLOAD_MAX_BYTES: usize = EXTENSION_BLOCK_BYTES - HEADER_BYTES;

const OFF_VERSION: usize = 8;
const OFF_LENGTH: usize = 12;
const OFF_CRC: usize = 16;
const OFF_UUID: usize = 20;
const _: () = assert!(OFF_UUID + 16 <= HEADER_BYTES);

/// raidctl's own array settings. Every field has a default so old blocks keep reading.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct Extension {
    /// Spares may move between arrays of the same group.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spare_group: Option<String>,
    /// "write-back", "write-through" or "always-write-back".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache_mode: Option<String>,
    /// "present", "absent", "charging" or "failed": write-back is used only while a battery is
    /// present (unless the mode is "always-write-back").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub battery: Option<String>,
    /// A file a UPS daemon writes the battery word into; when set it overrides `battery`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub battery_file: Option<String>,
    /// Rebuild speed floor, KiB/s.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub speed_min_kib: Option<u64>,
    /// Rebuild speed ceiling, KiB/s.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub speed_max_kib: Option<u64>,
    /// "raidctl <version>" that wrote the block.
    pub created_by: String,
}

fn header_u32(block: &[u8], offset: usize) -> u32 {
    let mut bytes = [0u8; 4];
    if let Some(source) = block.get(offset..offset + 4) {
        bytes.copy_from_slice(source);
    }
    u32::from_le_bytes(bytes)
}

impl Extension {
    /// Reads an extension block.
    ///
    /// Ok(None) when there is no block (no magic: arrays made by mdadm) or when the block
    /// belongs to another array (a leftover from an earlier array on the same disk).
    /// Err for a block that claims to be ours but is damaged: unknown version, impossible
    /// length, CRC mismatch, or a payload that is not our JSON.
    pub fn decode(
        block: &[u8],
        expected_uuid: &[u8; 16],
    ) -> Result<Option<Extension>, MetadataError> {
        if block.len() < HEADER_BYTES {
            return Err(MetadataError::TooShort {
                what: "raidctl extension block",
                needed: HEADER_BYTES,
                got: block.len(),
            });
        }
        if block[..EXTENSION_MAGIC.len()] != EXTENSION_MAGIC {
            return Ok(None);
        }
        let version = header_u32(block, OFF_VERSION);
        if version != EXTENSION_VERSION {
            return Err(MetadataError::ExtensionBadVersion(version));
        }
        let length_raw = header_u32(block, OFF_LENGTH);
        let length = usize::try_from(length_raw).unwrap_or(usize::MAX);
        let payload = block
            .get(HEADER_BYTES..)
            .and_then(|rest| rest.get(..length))
            .filter(|_| length <= EXTENSION_PAYLOAD_MAX_BYTES)
            .ok_or(MetadataError::ExtensionBadLength(length_raw))?;
        let stored = header_u32(block, OFF_CRC);
        let computed = crc32fast::hash(payload);
        if stored != computed {
            return Err(MetadataError::ExtensionChecksum { stored, computed });
        }
        if block[OFF_UUID..OFF_UUID + 16] != expected_uuid[..] {
            return Ok(None);
        }
        serde_json::from_slice(payload)
            .map(Some)
            .map_err(|error| MetadataError::ExtensionJson(error.to_string()))
    }

    /// Encodes the 4096-byte block for the array `uuid`. Fails only when the settings do not
    /// fit in 4032 bytes of JSON (for example an absurdly long spare group name).
    pub fn encode(&self, uuid: &[u8; 16]) -> Result<Vec<u8>, MetadataError> {
        let payload = serde_json::to_vec(self)
            .map_err(|error| MetadataError::ExtensionJson(error.to_string()))?;
        if payload.len() > EXTENSION_PAYLOAD_MAX_BYTES {
            return Err(MetadataError::ExtensionTooLarge {
                len: payload.len(),
                max: EXTENSION_PAYLOAD_MAX_BYTES,
            });
        }
        let mut block = vec![0u8; EXTENSION_BLOCK_BYTES];
        block[..EXTENSION_MAGIC.len()].copy_from_slice(&EXTENSION_MAGIC);
        block[OFF_VERSION..OFF_VERSION + 4].copy_from_slice(&EXTENSION_VERSION.to_le_bytes());
        // payload.len() <= 4032, so it fits in u32.
        let length = payload.len() as u32;
        block[OFF_LENGTH..OFF_LENGTH + 4].copy_from_slice(&length.to_le_bytes());
        block[OFF_CRC..OFF_CRC + 4].copy_from_slice(&crc32fast::hash(&payload).to_le_bytes());
        block[OFF_UUID..OFF_UUID + 16].copy_from_slice(uuid);
        block[HEADER_BYTES..HEADER_BYTES + payload.len()].copy_from_slice(&payload);
        debug_assert_eq!(
            Extension::decode(&block, uuid).as_ref(),
            Ok(&Some(self.clone()))
        );
        Ok(block)
    }
}

/// Sector where `[start, start + len)` ends when start is relative to the superblock;
/// None for a region that would start before sector 0.
fn region_end(super_offset_sectors: u64, start: i64, len: u64) -> Option<u64> {
    super_offset_sectors
        .checked_add_signed(start)?
        .checked_add(len)
}

/// First device sector after all of md's metadata: the 4 KiB superblock slot, the bitmap
/// (or PPL area) and the bad-block log. `bitmap` gives the bitmap's real size; without it a
/// bitmap is assumed to take 8 sectors, the least mdadm ever reserves.
pub fn metadata_end_sectors(sb: &Superblock, bitmap: Option<&BitmapSuper>) -> u64 {
    let slot_sectors = (SUPERBLOCK_BLOCK_BYTES as u64) / super::SECTOR_BYTES;
    let mut end = sb.super_offset_sectors.saturating_add(slot_sectors);
    if sb.has_feature(FEATURE_BITMAP_OFFSET) {
        let bitmap_sectors = bitmap
            .map(|bitmap| bitmap.bytes_on_disk().div_ceil(super::SECTOR_BYTES))
            .unwrap_or(8);
        let start = i64::from(sb.bitmap_offset_sectors);
        if let Some(bitmap_end) = region_end(sb.super_offset_sectors, start, bitmap_sectors) {
            end = end.max(bitmap_end);
        }
    } else if sb.feature_map & (FEATURE_PPL | FEATURE_MULTIPLE_PPLS) != 0 {
        // With a PPL the bitmap_offset bytes hold ppl.offset (s16) and ppl.size (u16).
        let raw = sb.bitmap_offset_sectors as u32;
        let ppl_offset = i64::from(raw as u16 as i16);
        let ppl_size = u64::from((raw >> 16) as u16);
        if let Some(ppl_end) = region_end(sb.super_offset_sectors, ppl_offset, ppl_size) {
            end = end.max(ppl_end);
        }
    }
    if sb.bblog_offset_sectors != 0 && sb.bblog_size_sectors != 0 {
        let start = i64::from(sb.bblog_offset_sectors);
        let size = u64::from(sb.bblog_size_sectors);
        if let Some(bblog_end) = region_end(sb.super_offset_sectors, start, size) {
            end = end.max(bblog_end);
        }
    }
    end
}

/// Device sector of the extension block: `data_offset - 8`, provided that lies at or after
/// the end of md's metadata (`metadata_end_sectors`). Err(NoRoomForExtension) otherwise, for
/// example on an md array whose bad-block log sits right below the data.
pub fn extension_offset_sectors(
    sb: &Superblock,
    bitmap: Option<&BitmapSuper>,
) -> Result<u64, MetadataError> {
    let metadata_end_sectors = metadata_end_sectors(sb, bitmap);
    match sb.data_offset_sectors.checked_sub(EXTENSION_SECTORS) {
        Some(offset) if offset >= metadata_end_sectors => Ok(offset),
        _ => Err(MetadataError::NoRoomForExtension {
            metadata_end_sectors,
            data_offset_sectors: sb.data_offset_sectors,
        }),
    }
}
