//! Linux md v1.2 metadata: encode, decode and validate, plus the rules that decide where
//! things live on a member and which members make up an array.
//!
//! Our members carry the same on-disk format as Linux md (superblock format 1.2), so
//! `mdadm --examine` reads what we write and the md driver can assemble our arrays, and we can
//! open arrays that md created. Everything here is pure: the caller reads and writes the bytes,
//! this module only turns bytes into values and values into bytes, and never panics on bytes
//! that came from a disk (every offset and size read from disk goes through checked
//! arithmetic). Facts and their sources are in `shared/reference/md-v1.2-format.md`.
//!
//! Layout of a 1.2 member (sectors of 512 bytes, offsets from the start of the device):
//!
//! ```text
//!   0 ..   8   untouched (partition table, boot sector)
//!   8 ..  16   md superblock (`superblock`): 256 bytes + 2 bytes per dev_roles entry
//!  16 ..       write-intent bitmap (`bitmap`), at superblock + bitmap_offset (+8)
//!  .. ..       bad-block log, 8 sectors, at superblock + bblog_offset
//!  ...         free (headroom for a reshape)
//!  data_offset - 8 .. data_offset   raidctl extension block (`extension`), md ignores it
//!  data_offset ..                   array data
//! ```
//!
//! Submodules, one job each:
//! * `superblock`: the `mdp_superblock_1` struct, checksum, encode/decode with the kernel's
//!   load checks; `roles`: dev_roles and the "Array State" string; `time`: md timestamps.
//! * `bitmap`: the write-intent bitmap superblock and its bits.
//! * `geometry`: mdadm's data_offset and bitmap-space rules, array sizes.
//! * `extension`: our own block for what md has no field for (cache mode, spare group, ...).
//! * `create`: builds the superblocks of a new array the way mdadm does.
//! * `assembly`: decides from a set of superblocks which member goes in which slot.
//! * `examine`: a report like `mdadm --examine`, for people and for `--json`.

mod assembly;
mod badblocks;
mod bitmap;
mod create;
mod examine;
mod extension;
mod geometry;
mod names;
mod roles;
mod superblock;
mod time;

#[cfg(test)]
mod tests;

pub use assembly::{
    plan_assembly, AssemblyError, AssemblyOptions, AssemblyPlan, Candidate, ExclusionReason,
};
pub use badblocks::{BadBlockError, BadBlocks};
pub use bitmap::{
    bitmap_bytes_on_disk, choose_bitmap_chunk_bytes, clear_bit, count_bits, nbits,
    new_bitmap_superblock, set_bit, test_bit, BitmapSuper, BITMAP_CHUNK_MIN_DEFAULT_BYTES,
    BITMAP_MAGIC, BITMAP_STATE_STALE, BITMAP_STATE_WRITE_ERROR, BITMAP_SUPER_BYTES,
    BITMAP_VERSION_WRITTEN,
};
pub use create::{create_bitmap_superblock, max_dev_for, new_member_superblock, CreateParams};
pub use examine::{BadBlockLogReport, BitmapReport, ExamineReport};
pub use extension::{
    extension_offset_sectors, metadata_end_sectors, Extension, EXTENSION_BLOCK_BYTES,
    EXTENSION_MAGIC, EXTENSION_PAYLOAD_MAX_BYTES, EXTENSION_SECTORS, EXTENSION_VERSION,
};
pub use geometry::{
    array_size_sectors, bitmap_sync_size_sectors, choose_bm_space_sectors,
    default_data_offset_sectors, Raid10Layout,
};
pub use names::{format_uuid, layout_name, level_name, superblock_layout_name};
pub use roles::{Role, ROLE_FAULTY, ROLE_JOURNAL, ROLE_MAX_ACTIVE, ROLE_SPARE};
pub use superblock::{
    rewrite_checksum, superblock_checksum, ChecksumStatus, Superblock, FEATURE_ALL,
    FEATURE_BAD_BLOCKS, FEATURE_BITMAP_OFFSET, FEATURE_CLUSTERED, FEATURE_JOURNAL,
    FEATURE_MULTIPLE_PPLS, FEATURE_NEW_OFFSET, FEATURE_PPL, FEATURE_RAID0_LAYOUT,
    FEATURE_RECOVERY_BITMAP, FEATURE_RECOVERY_OFFSET, FEATURE_REPLACEMENT, FEATURE_RESHAPE_ACTIVE,
    FEATURE_RESHAPE_BACKWARDS, MAX_DEV_LIMIT, MD_SB_MAGIC, SUPERBLOCK_FIXED_BYTES,
};
pub use time::{md_time, md_time_micros, md_time_secs};

/// Bytes in one md sector. Every `*_sectors` value in this module counts these.
pub const SECTOR_BYTES: u64 = 512;
/// Device sector where a 1.2 superblock starts (byte 4096).
pub const SUPERBLOCK_OFFSET_SECTORS: u64 = 8;
/// Bytes the superblock slot occupies on disk (we always read and write a whole 4 KiB block).
pub const SUPERBLOCK_BLOCK_BYTES: usize = 4096;

/// Everything that can be wrong with metadata bytes or with a request to build metadata.
///
/// Each variant is one distinct reason, so callers (and tests) can tell them apart, and each
/// message names the values involved so a person can see what was found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MetadataError {
    /// The buffer cannot hold the structure being decoded.
    #[error("{what} needs {needed} bytes, got {got}")]
    TooShort {
        /// What was being decoded.
        what: &'static str,
        /// Bytes needed.
        needed: usize,
        /// Bytes given.
        got: usize,
    },
    /// No md superblock magic at the superblock position.
    #[error("no md superblock (magic 0x{found:08x}, expected 0xa92b4efc)")]
    BadMagic {
        /// The magic that was found.
        found: u32,
    },
    /// major_version is not 1.
    #[error("md superblock major version {0} is not supported (only 1)")]
    BadMajorVersion(u32),
    /// max_dev is above the kernel limit of 1920 role entries.
    #[error("max_dev {0} exceeds the limit of 1920 device roles")]
    TooManyDevices(u32),
    /// super_offset does not name the sector the superblock was read from.
    #[error("super_offset is {found} sectors, expected {expected} for metadata 1.2")]
    WrongSuperOffset {
        /// Stored super_offset.
        found: u64,
        /// Where a 1.2 superblock lives.
        expected: u64,
    },
    /// feature_map has bits the kernel does not know.
    #[error("unknown feature bits 0x{unknown:x} in feature_map 0x{feature_map:x}")]
    UnknownFeatures {
        /// The whole feature_map.
        feature_map: u32,
        /// The unknown bits.
        unknown: u32,
    },
    /// The stored checksum does not match the bytes.
    #[error("checksum mismatch: stored 0x{stored:08x}, computed 0x{computed:08x}")]
    ChecksumMismatch {
        /// Checksum stored in the superblock.
        stored: u32,
        /// Checksum computed over the bytes.
        computed: u32,
    },
    /// pad0 is not zero (the kernel refuses: it might be a newer feature).
    #[error("pad0 is 0x{0:08x}, must be zero")]
    NonZeroPad0(u32),
    /// pad3 is not all zeros.
    #[error("pad3 (bytes 224..256) is not all zeros")]
    NonZeroPad3,
    /// data_size is below the kernel minimum of 10 sectors.
    #[error("data_size {0} sectors is below the minimum of 10")]
    DataSizeTooSmall(u64),
    /// data_offset (or data_offset + new_offset) points into the superblock.
    #[error(
        "data_offset {data_offset_sectors} overlaps the superblock (must be >= {min_sectors})"
    )]
    DataOffsetOverlapsSuperblock {
        /// The offending data offset.
        data_offset_sectors: u64,
        /// The first sector after the superblock.
        min_sectors: u64,
    },
    /// Feature 0x1000 (RAID0 layout) on a level other than 0.
    #[error("feature RAID0_LAYOUT (0x1000) is set on a level {0} array; only raid0 may have it")]
    Raid0LayoutOnWrongLevel(i32),
    /// The device is smaller than data_offset + data_size.
    #[error(
        "device of {device_sectors} sectors is smaller than data_offset {data_offset_sectors} + \
         data_size {data_size_sectors}"
    )]
    DeviceTooSmall {
        /// Device size.
        device_sectors: u64,
        /// Where data starts.
        data_offset_sectors: u64,
        /// Data sectors claimed.
        data_size_sectors: u64,
    },
    /// set_name is longer than its 32-byte field or holds a NUL.
    #[error("array name {0:?} does not fit md's 32-byte name field (or holds a NUL)")]
    BadName(String),
    /// A dev_number outside the role table md can hold.
    #[error("dev_number {0} is outside the 1920-entry role table")]
    DevNumberOutOfRange(u32),
    /// A role value md cannot store (active slots end at 0xfeff).
    #[error("active slot {0} is beyond md's largest slot 0xfeff")]
    SlotOutOfRange(u32),
    /// The bitmap superblock magic is wrong.
    #[error("no bitmap superblock (magic 0x{found:08x}, expected 0x6d746962)")]
    BitmapBadMagic {
        /// The magic that was found.
        found: u32,
    },
    /// The bitmap version is not one md accepts (3..=5).
    #[error("bitmap version {0} is not supported (3..=5)")]
    BitmapBadVersion(u32),
    /// Bitmap chunk size is not a power of two >= 512 bytes.
    #[error("bitmap chunk size {0} bytes is not a power of two >= 512")]
    BitmapBadChunk(u32),
    /// daemon_sleep is zero or absurd.
    #[error("bitmap daemon_sleep {0} seconds is out of range (1..=86400)")]
    BitmapBadDaemonSleep(u32),
    /// write_behind is above md's limit.
    #[error("bitmap write_behind {0} exceeds 16383")]
    BitmapBadWriteBehind(u32),
    /// The bitmap belongs to another array.
    #[error("bitmap uuid {found} does not match array uuid {expected}")]
    BitmapUuidMismatch {
        /// UUID stored in the bitmap.
        found: String,
        /// The array's UUID.
        expected: String,
    },
    /// A bit index past the end of the bitmap.
    #[error("bitmap bit {bit} is beyond the {available} bits available")]
    BitOutOfRange {
        /// Requested bit.
        bit: u64,
        /// Bits available in the given area.
        available: u64,
    },
    /// The level has no write-intent bitmap (raid0 has no redundancy to resync).
    #[error("raid level {0} cannot have a write-intent bitmap")]
    NoBitmapForLevel(i32),
    /// The bitmap cannot describe the array in the space it has.
    #[error("a bitmap for {sync_size_sectors} sectors does not fit in {space_bytes} bytes")]
    BitmapTooLarge {
        /// Sectors the bitmap must cover.
        sync_size_sectors: u64,
        /// Space available.
        space_bytes: u64,
    },
    /// The extension block has a version this build does not read.
    #[error("raidctl extension block version {0} is not supported (this build reads 1)")]
    ExtensionBadVersion(u32),
    /// The extension payload length is impossible.
    #[error("raidctl extension block payload length {0} exceeds 4032 bytes")]
    ExtensionBadLength(u32),
    /// The extension payload CRC does not match.
    #[error(
        "raidctl extension block crc mismatch: stored 0x{stored:08x}, computed 0x{computed:08x}"
    )]
    ExtensionChecksum {
        /// CRC stored in the block.
        stored: u32,
        /// CRC computed over the payload.
        computed: u32,
    },
    /// The extension payload is not the JSON we expect.
    #[error("raidctl extension block payload is not valid: {0}")]
    ExtensionJson(String),
    /// The extension payload would not fit in its block.
    #[error("raidctl extension payload of {len} bytes exceeds {max} bytes")]
    ExtensionTooLarge {
        /// Encoded payload length.
        len: usize,
        /// Room in the block.
        max: usize,
    },
    /// There is no room for the extension block between md's metadata and the data.
    #[error(
        "no room for the raidctl extension block: md metadata ends at sector \
         {metadata_end_sectors} and data starts at sector {data_offset_sectors}"
    )]
    NoRoomForExtension {
        /// First sector after the superblock, bitmap and bad-block log.
        metadata_end_sectors: u64,
        /// Where data starts.
        data_offset_sectors: u64,
    },
    /// Create parameters that cannot produce a valid member.
    #[error("invalid array parameters: {0}")]
    InvalidParams(String),
}
