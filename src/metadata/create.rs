//! Superblocks for a new array, laid out the way mdadm 4.x lays them out.
//!
//! The caller decides policy (level, sizes, which devices, resync or `--assume-clean`, the
//! random UUIDs and the clock); this module turns those decisions into one superblock per
//! member, with md's placement rules:
//!
//! * max_dev from mdadm's formula (128 for up to 128 devices), every role entry spare except
//!   the members';
//! * an internal bitmap at superblock + 8 sectors (feature 0x1) when asked for;
//! * a bad-block log of 8 sectors right after the bitmap space (superblock + 8 + bitmap
//!   sectors) when it fits below our extension block; otherwise directly below the extension
//!   block (mdadm would use `data_offset - 8`, which is where our extension block lives, so we
//!   move it 8 sectors lower); otherwise no log;
//! * data_size = device size - data_offset, events 0 (the kernel counts from there).
//!
//! For the fixtures' geometry (24 MiB members, 64 KiB chunk) this reproduces what mdadm 4.2
//! wrote: bitmap at +8, bad-block log at +16 (at +8 for RAID0, whose size field is 0 and so
//! gets no bitmap reserve), data_offset 2048.

use super::{
    choose_bm_space_sectors, extension_offset_sectors, md_time, new_bitmap_superblock, BitmapSuper,
    MetadataError, Role, Superblock, EXTENSION_SECTORS, FEATURE_BITMAP_OFFSET,
    FEATURE_RAID0_LAYOUT, MAX_DEV_LIMIT, ROLE_SPARE, SECTOR_BYTES, SUPERBLOCK_OFFSET_SECTORS,
};

/// Bitmap position relative to the superblock, as mdadm writes it at create.
const BITMAP_OFFSET_CREATE_SECTORS: i32 = 8;
/// Bad-block log size mdadm reserves (4 KiB, 512 entries).
const BBLOG_SIZE_SECTORS: u16 = 8;
/// Sectors of the superblock slot.
const SUPERBLOCK_SLOT_SECTORS: u64 = 8;

/// Everything about a new array that every member's superblock shares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateParams {
    /// set_name, e.g. "host:name" (at most 32 bytes).
    pub name: String,
    /// Array UUID (random, chosen by the caller).
    pub uuid: [u8; 16],
    /// RAID level.
    pub level: i32,
    /// Layout code (RAID0: 1 with feature 0x1000; RAID5: 2; RAID10: 0x102).
    pub layout: u32,
    /// Chunk in sectors (0 for RAID1).
    pub chunk_sectors: u32,
    /// Active slots.
    pub raid_disks: u32,
    /// Role of every device, indexed by dev_number; spares included. Its length is the total
    /// device count that sizes max_dev.
    pub roles: Vec<Role>,
    /// sb.size: per-member data sectors (0 for RAID0, which ignores it).
    pub size_sectors: u64,
    /// Where data starts on every member.
    pub data_offset_sectors: u64,
    /// Add an internal write-intent bitmap.
    pub bitmap: bool,
    /// Bytes of resync space per bitmap bit (mdadm's --bitmap-chunk); None: mdadm's choice
    /// (the smallest of at least 64 MiB that fits).
    pub bitmap_chunk_bytes: Option<u32>,
    /// u64::MAX for a clean array, 0 for a full initial resync.
    pub resync_offset: u64,
    /// Creation time, Unix seconds.
    pub ctime_secs: u64,
    /// Feature bits beyond the bitmap; only `FEATURE_RAID0_LAYOUT` is allowed.
    pub extra_features: u32,
}

/// mdadm's max_dev: room for every device, rounded so the superblock fills whole 512-byte
/// sectors: (round_up(256 + 2*devices, 512) - 256) / 2, i.e. 128 for up to 128 devices.
pub fn max_dev_for(total_devices: u32) -> u32 {
    let bytes = 256 + 2 * u64::from(total_devices.min(MAX_DEV_LIMIT));
    let rounded = bytes.div_ceil(512) * 512;
    // (rounded - 256) / 2 <= 1920 because total_devices is capped at 1920.
    ((rounded - 256) / 2) as u32
}

fn invalid(message: String) -> MetadataError {
    MetadataError::InvalidParams(message)
}

fn check_params(params: &CreateParams, dev_number: u32) -> Result<(), MetadataError> {
    let total = params.roles.len();
    if params.raid_disks == 0 || params.raid_disks > MAX_DEV_LIMIT {
        return Err(invalid(format!(
            "raid_disks {} out of range",
            params.raid_disks
        )));
    }
    if total > MAX_DEV_LIMIT as usize || total < params.raid_disks as usize {
        return Err(invalid(format!(
            "{total} devices for {} slots (at most 1920)",
            params.raid_disks
        )));
    }
    if dev_number as usize >= total {
        return Err(invalid(format!(
            "dev_number {dev_number} but only {total} devices"
        )));
    }
    for (index, role) in params.roles.iter().enumerate() {
        if let Role::Active(slot) = role {
            if u32::from(*slot) >= params.raid_disks {
                return Err(invalid(format!(
                    "device {index} has slot {slot}, but there are {} slots",
                    params.raid_disks
                )));
            }
        }
    }
    if params.extra_features & !FEATURE_RAID0_LAYOUT != 0 {
        return Err(invalid(format!(
            "extra feature bits 0x{:x} are not ours to set",
            params.extra_features
        )));
    }
    if params.extra_features & FEATURE_RAID0_LAYOUT != 0 && params.level != 0 {
        return Err(MetadataError::Raid0LayoutOnWrongLevel(params.level));
    }
    Ok(())
}

/// The bitmap superblock of a new array: mdadm sizes it for `choose_bm_space(sb.size)`
/// (4 KiB on small members), with the smallest chunk of at least 64 MiB that fits.
/// With `chunk_bytes`, that chunk instead, if its bits fit the space.
pub fn create_bitmap_superblock(
    sb: &Superblock,
    chunk_bytes: Option<u32>,
) -> Result<BitmapSuper, MetadataError> {
    let space_bytes = choose_bm_space_sectors(sb.size_sectors) * SECTOR_BYTES;
    let mut bsb = new_bitmap_superblock(sb, space_bytes.max(4096))?;
    if let Some(chunk) = chunk_bytes {
        let needed = 256 + super::bitmap::nbits(bsb.sync_size_sectors, chunk as u64).div_ceil(8);
        if !chunk.is_power_of_two() || chunk < 4096 || needed > space_bytes.max(4096) {
            return Err(MetadataError::BitmapTooLarge {
                sync_size_sectors: bsb.sync_size_sectors,
                space_bytes: space_bytes.max(4096),
            });
        }
        bsb.chunk_bytes = chunk;
    }
    Ok(bsb)
}

/// Builds the superblock of member `dev_number` (its role is `params.roles[dev_number]`) on a
/// device of `dev_sectors` sectors. `device_uuid` is this member's random UUID.
///
/// Refuses parameters md would refuse or that leave no room for our extension block; the
/// result always passes `Superblock::decode`'s checks and fits the device.
pub fn new_member_superblock(
    params: &CreateParams,
    dev_number: u32,
    dev_sectors: u64,
    device_uuid: [u8; 16],
) -> Result<Superblock, MetadataError> {
    check_params(params, dev_number)?;
    let data_size_sectors = dev_sectors
        .checked_sub(params.data_offset_sectors)
        .filter(|size| *size >= params.size_sectors && *size >= 10)
        .ok_or(MetadataError::DeviceTooSmall {
            device_sectors: dev_sectors,
            data_offset_sectors: params.data_offset_sectors,
            data_size_sectors: params.size_sectors.max(10),
        })?;
    let ctime = md_time(params.ctime_secs, 0);
    let max_dev = max_dev_for(u32::try_from(params.roles.len()).unwrap_or(MAX_DEV_LIMIT));
    let mut dev_roles = vec![ROLE_SPARE; max_dev as usize];
    for (index, role) in params.roles.iter().enumerate() {
        dev_roles[index] = role.to_raw();
    }
    let mut sb = Superblock {
        feature_map: params.extra_features,
        set_uuid: params.uuid,
        set_name: [0u8; 32],
        ctime,
        level: params.level,
        layout: params.layout,
        size_sectors: params.size_sectors,
        chunk_sectors: params.chunk_sectors,
        raid_disks: params.raid_disks,
        bitmap_offset_sectors: 0,
        new_level: 0,
        reshape_position: 0,
        delta_disks: 0,
        new_layout: 0,
        new_chunk_sectors: 0,
        new_offset_sectors: 0,
        data_offset_sectors: params.data_offset_sectors,
        data_size_sectors,
        super_offset_sectors: SUPERBLOCK_OFFSET_SECTORS,
        recovery_offset_sectors: 0,
        dev_number,
        cnt_corrected_read: 0,
        device_uuid,
        devflags: 0,
        bblog_shift: 0,
        bblog_size_sectors: 0,
        bblog_offset_sectors: 0,
        utime: ctime,
        events: 0,
        resync_offset: params.resync_offset,
        dev_roles,
    };
    sb.set_name(&params.name)?;
    let bitmap = place_bitmap(&mut sb, params.bitmap, params.bitmap_chunk_bytes)?;
    place_bad_block_log(&mut sb, bitmap.as_ref());
    // Both the kernel's load checks and our own extension block must be satisfied.
    extension_offset_sectors(&sb, bitmap.as_ref())?;
    sb.check_fits_device(dev_sectors)?;
    let encoded = sb.encode();
    debug_assert_eq!(Superblock::decode(&encoded).as_ref(), Ok(&sb));
    Ok(sb)
}

/// Adds the bitmap feature and offset; returns the bitmap superblock so the caller of this
/// helper knows how much space it takes. None without a bitmap.
fn place_bitmap(
    sb: &mut Superblock,
    wanted: bool,
    chunk_bytes: Option<u32>,
) -> Result<Option<BitmapSuper>, MetadataError> {
    if !wanted {
        return Ok(None);
    }
    let bitmap = create_bitmap_superblock(sb, chunk_bytes)?;
    sb.feature_map |= FEATURE_BITMAP_OFFSET;
    sb.bitmap_offset_sectors = BITMAP_OFFSET_CREATE_SECTORS;
    Ok(Some(bitmap))
}

/// Places the bad-block log (see the module doc). Leaves it absent when there is no room.
fn place_bad_block_log(sb: &mut Superblock, bitmap: Option<&BitmapSuper>) {
    let bblog_size = u64::from(BBLOG_SIZE_SECTORS);
    let bitmap_sectors = bitmap.map_or(0, |bitmap| bitmap.bytes_on_disk().div_ceil(SECTOR_BYTES));
    // mdadm keeps room after the superblock for the bitmap: its real size when there is one,
    // otherwise its reserve for adding one later (0 for RAID0, whose size field is 0).
    let reserved_sectors = match bitmap {
        Some(_) => bitmap_sectors,
        None => choose_bm_space_sectors(sb.size_sectors),
    };
    let metadata_start = sb.super_offset_sectors + SUPERBLOCK_SLOT_SECTORS;
    // The extension block ends at data_offset; the log must end at or before it starts.
    let Some(limit) = sb.data_offset_sectors.checked_sub(EXTENSION_SECTORS) else {
        return;
    };
    let preferred = metadata_start + reserved_sectors;
    let start = if preferred + bblog_size <= limit {
        Some(preferred)
    } else {
        // Directly below the extension block, if that is still past the real metadata.
        limit
            .checked_sub(bblog_size)
            .filter(|start| *start >= metadata_start + bitmap_sectors)
    };
    let relative = start.and_then(|start| i32::try_from(start - sb.super_offset_sectors).ok());
    if let Some(relative) = relative {
        sb.bblog_offset_sectors = relative;
        sb.bblog_size_sectors = BBLOG_SIZE_SECTORS;
    }
}
