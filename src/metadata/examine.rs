//! `raidctl examine`: what a member's metadata says, for people and for `--json`.
//!
//! The text form follows `mdadm --examine` line by line (same labels, same order, same
//! wording) so that anyone who knows md can read it, and adds our extension block at the end.
//! The JSON form (serde) has stable snake_case field names with units in the names; it is part
//! of the documented interface, so fields are only ever added.
//!
//! Differences from mdadm, on purpose:
//! * times are printed in UTC (a pure module has no time-zone database);
//! * "Array Size" is shown only for levels above 0, as mdadm does: a RAID0 array's size is
//!   the sum of all members' sizes, which one member cannot know (members may differ);
//! * "Unused Space before" counts from the real end of the bitmap (mdadm compares the
//!   bitmap's end relative to the superblock with absolute sectors; the two agree whenever
//!   the bitmap ends below superblock + 72 sectors, as on every array mdadm creates).

use super::names::human_size;
use super::time::format_unix_utc;
use super::{
    array_size_sectors, format_uuid, level_name, metadata_end_sectors, superblock_layout_name,
    BitmapSuper, ChecksumStatus, Extension, MetadataError, Superblock, FEATURE_BITMAP_OFFSET,
    FEATURE_RECOVERY_OFFSET, FEATURE_REPLACEMENT, MD_SB_MAGIC, SECTOR_BYTES,
};
use std::fmt;

/// What the write-intent bitmap superblock says.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BitmapReport {
    /// Bitmap format version.
    pub version: u32,
    /// Bytes per bit.
    pub chunk_bytes: u32,
    /// Bitmap events.
    pub events: u64,
    /// Events at the last clearing of bits.
    pub events_cleared: u64,
    /// Sectors covered.
    pub sync_size_sectors: u64,
    /// Bits in use.
    pub bits: u64,
    /// The STALE state bit is set.
    pub stale: bool,
    /// The bitmap's uuid is the array's.
    pub uuid_matches: bool,
}

/// Where the bad-block log is.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BadBlockLogReport {
    /// Entries the log can hold (8 bytes each).
    pub entries: u64,
    /// Position relative to the superblock.
    pub offset_sectors: i32,
}

/// One member's metadata, ready to print or serialize.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ExamineReport {
    /// Device path.
    pub device: String,
    /// Superblock magic, hex.
    pub magic: String,
    /// Metadata version ("1.2").
    pub version: String,
    /// Feature bits.
    pub feature_map: u32,
    /// Array UUID.
    pub array_uuid: String,
    /// set_name.
    pub name: String,
    /// Creation time, Unix seconds.
    pub creation_time_secs: u64,
    /// Creation time as text (UTC).
    pub creation_time: String,
    /// Level number.
    pub level: i32,
    /// Level name ("raid5").
    pub raid_level: String,
    /// Active slots.
    pub raid_devices: u32,
    /// data_size.
    pub avail_dev_size_sectors: u64,
    /// Array size for levels above 0.
    pub array_size_kib: Option<u64>,
    /// sb.size when it differs from data_size (levels above 0).
    pub used_dev_size_sectors: Option<u64>,
    /// Where data starts.
    pub data_offset_sectors: u64,
    /// Where the superblock is.
    pub super_offset_sectors: u64,
    /// Rebuild progress of this member (feature 0x2).
    pub recovery_offset_sectors: Option<u64>,
    /// Free sectors between md's metadata and the data.
    pub unused_space_before_sectors: u64,
    /// Free sectors after the data; None when the device is too small for its data.
    pub unused_space_after_sectors: Option<u64>,
    /// "clean" or "active".
    pub state: String,
    /// This device's UUID.
    pub device_uuid: String,
    /// Bitmap position relative to the superblock (feature 0x1).
    pub internal_bitmap_offset_sectors: Option<i32>,
    /// The bitmap superblock, when it was read and valid.
    pub bitmap: Option<BitmapReport>,
    /// "write-mostly", "failfast".
    pub flags: Vec<String>,
    /// Update time, Unix seconds.
    pub update_time_secs: u64,
    /// Update time as text (UTC).
    pub update_time: String,
    /// The bad-block log, if any.
    pub bad_block_log: Option<BadBlockLogReport>,
    /// Stored checksum.
    pub checksum: u32,
    /// Checksum the bytes should have.
    pub checksum_expected: u32,
    /// Stored checksum is right.
    pub checksum_ok: bool,
    /// Update counter.
    pub events: u64,
    /// Layout name, where mdadm prints one.
    pub layout: Option<String>,
    /// Chunk size, where there is one.
    pub chunk_size_kib: Option<u32>,
    /// RAID5/6: what each slot holds in the first rows ("Q D0 D1 D2 P"), one row a line.
    #[serde(default)]
    pub placement: Vec<String>,
    /// Permanent device index.
    pub dev_number: u32,
    /// "Active device N", "Replacement device N", "spare", "faulty", "Journal".
    pub device_role: String,
    /// One character per slot ('A', '.', 'R', '?').
    pub array_state: String,
    /// Our extension block, when present and valid.
    pub extension: Option<Extension>,
    /// Why the extension block could not be read, when it is damaged.
    pub extension_error: Option<String>,
}

fn bitmap_report(bitmap: &BitmapSuper, sb: &Superblock) -> BitmapReport {
    BitmapReport {
        version: bitmap.version,
        chunk_bytes: bitmap.chunk_bytes,
        events: bitmap.events,
        events_cleared: bitmap.events_cleared,
        sync_size_sectors: bitmap.sync_size_sectors,
        bits: bitmap.nbits(),
        stale: bitmap.is_stale(),
        uuid_matches: bitmap.check_uuid(&sb.set_uuid).is_ok(),
    }
}

/// Free space before and after the data, as mdadm computes it (see the module doc).
fn unused_space(
    sb: &Superblock,
    bitmap: Option<&BitmapSuper>,
    device_sectors: u64,
) -> (u64, Option<u64>) {
    // The kernel keeps the first 72 sectors after the superblock for itself.
    let earliest = sb
        .super_offset_sectors
        .saturating_add(72)
        .max(metadata_end_sectors(sb, bitmap));
    let before = sb.data_offset_sectors.saturating_sub(earliest);
    let used = if sb.level > 0 {
        sb.size_sectors
    } else {
        sb.data_size_sectors
    };
    let after = device_sectors
        .checked_sub(sb.data_offset_sectors)
        .and_then(|rest| rest.checked_sub(used));
    (before, after)
}

fn device_role(sb: &Superblock) -> String {
    match sb.own_role() {
        super::Role::Active(slot) if sb.has_feature(FEATURE_REPLACEMENT) => {
            format!("Replacement device {slot}")
        }
        // mdadm prints a faulty device as "spare"; we say what it is.
        role => role.to_string(),
    }
}

impl ExamineReport {
    /// Builds the report for `device` (`device_size_bytes` long) from its superblock, the
    /// checksum found when parsing it (`Superblock::decode_unchecked`), and the bitmap and
    /// extension block if the caller read them.
    pub fn new(
        device: &str,
        device_size_bytes: u64,
        sb: &Superblock,
        checksum: ChecksumStatus,
        bitmap: Option<&BitmapSuper>,
        extension: Option<&Extension>,
    ) -> ExamineReport {
        let (before, after) = unused_space(sb, bitmap, device_size_bytes / SECTOR_BYTES);
        let has_bitmap = sb.has_feature(FEATURE_BITMAP_OFFSET);
        let has_bblog = sb.bblog_offset_sectors != 0 && sb.bblog_size_sectors != 0;
        ExamineReport {
            device: device.to_string(),
            magic: format!("{MD_SB_MAGIC:08x}"),
            version: "1.2".to_string(),
            feature_map: sb.feature_map,
            array_uuid: format_uuid(&sb.set_uuid),
            name: sb.name(),
            creation_time_secs: sb.ctime_secs(),
            creation_time: format_unix_utc(sb.ctime_secs()),
            level: sb.level,
            raid_level: level_name(sb.level),
            raid_devices: sb.raid_disks,
            avail_dev_size_sectors: sb.data_size_sectors,
            array_size_kib: array_size_sectors(sb)
                .filter(|_| sb.level > 0)
                .map(|sectors| sectors / 2),
            used_dev_size_sectors: Some(sb.size_sectors)
                .filter(|size| sb.level > 0 && *size != sb.data_size_sectors),
            data_offset_sectors: sb.data_offset_sectors,
            super_offset_sectors: sb.super_offset_sectors,
            recovery_offset_sectors: Some(sb.recovery_offset_sectors)
                .filter(|_| sb.has_feature(FEATURE_RECOVERY_OFFSET)),
            unused_space_before_sectors: before,
            unused_space_after_sectors: after,
            state: if sb.is_clean() { "clean" } else { "active" }.to_string(),
            device_uuid: format_uuid(&sb.device_uuid),
            internal_bitmap_offset_sectors: Some(sb.bitmap_offset_sectors).filter(|_| has_bitmap),
            bitmap: bitmap.map(|bitmap| bitmap_report(bitmap, sb)),
            flags: [(1u8, "write-mostly"), (2u8, "failfast")]
                .iter()
                .filter(|(bit, _)| sb.devflags & bit != 0)
                .map(|(_, name)| name.to_string())
                .collect(),
            update_time_secs: sb.utime_secs(),
            update_time: format_unix_utc(sb.utime_secs()),
            bad_block_log: Some(BadBlockLogReport {
                entries: u64::from(sb.bblog_size_sectors) * SECTOR_BYTES / 8,
                offset_sectors: sb.bblog_offset_sectors,
            })
            .filter(|_| has_bblog),
            checksum: checksum.stored,
            checksum_expected: checksum.computed,
            checksum_ok: checksum.is_ok(),
            events: sb.events,
            layout: superblock_layout_name(sb),
            chunk_size_kib: Some(sb.chunk_sectors / 2).filter(|_| sb.chunk_sectors != 0),
            placement: placement(sb),
            dev_number: sb.dev_number,
            device_role: device_role(sb),
            array_state: sb.array_state_string(),
            extension: extension.cloned(),
            extension_error: None,
        }
    }

    /// Records that the extension block exists but could not be read.
    pub fn with_extension_error(mut self, error: &MetadataError) -> ExamineReport {
        self.extension = None;
        self.extension_error = Some(error.to_string());
        self
    }
}

/// The first rows of a RAID5/6 layout (`Geometry::placement`), or nothing.
fn placement(sb: &Superblock) -> Vec<String> {
    let Ok(kind) = crate::layout::LayoutKind::from_md(sb.level, sb.layout) else {
        return Vec::new();
    };
    let members = vec![sb.size_sectors * SECTOR_BYTES; sb.raid_disks as usize];
    let chunk = u64::from(sb.chunk_sectors) * SECTOR_BYTES;
    crate::layout::Geometry::new(kind, chunk, &members)
        .map(|geo| geo.placement())
        .unwrap_or_default()
}

/// One "label : value" line with mdadm's right-aligned labels.
fn line(f: &mut fmt::Formatter<'_>, label: &str, value: impl fmt::Display) -> fmt::Result {
    writeln!(f, "{label:>15} : {value}")
}

impl ExamineReport {
    fn fmt_array(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}:", self.device)?;
        line(f, "Magic", &self.magic)?;
        line(f, "Version", &self.version)?;
        line(f, "Feature Map", format!("0x{:x}", self.feature_map))?;
        line(f, "Array UUID", &self.array_uuid)?;
        line(f, "Name", &self.name)?;
        line(f, "Creation Time", &self.creation_time)?;
        line(f, "Raid Level", &self.raid_level)?;
        line(f, "Raid Devices", self.raid_devices)?;
        writeln!(f)?;
        let sectors = |count: u64| {
            format!(
                "{count} sectors{}",
                human_size(count.saturating_mul(SECTOR_BYTES))
            )
        };
        line(f, "Avail Dev Size", sectors(self.avail_dev_size_sectors))?;
        if let Some(kib) = self.array_size_kib {
            line(
                f,
                "Array Size",
                format!("{kib} KiB{}", human_size(kib.saturating_mul(1024))),
            )?;
        }
        if let Some(used) = self.used_dev_size_sectors {
            line(f, "Used Dev Size", sectors(used))?;
        }
        line(
            f,
            "Data Offset",
            format!("{} sectors", self.data_offset_sectors),
        )?;
        line(
            f,
            "Super Offset",
            format!("{} sectors", self.super_offset_sectors),
        )?;
        if let Some(recovery) = self.recovery_offset_sectors {
            line(f, "Recovery Offset", format!("{recovery} sectors"))?;
        }
        let after = match self.unused_space_after_sectors {
            Some(after) => format!("after={after} sectors"),
            None => "after=? sectors DEVICE TOO SMALL".to_string(),
        };
        let before = self.unused_space_before_sectors;
        line(
            f,
            "Unused Space",
            format!("before={before} sectors, {after}"),
        )?;
        line(f, "State", &self.state)?;
        line(f, "Device UUID", &self.device_uuid)?;
        writeln!(f)
    }

    fn fmt_member(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(offset) = self.internal_bitmap_offset_sectors {
            line(
                f,
                "Internal Bitmap",
                format!("{offset} sectors from superblock"),
            )?;
        }
        if !self.flags.is_empty() {
            line(f, "Flags", self.flags.join(" "))?;
        }
        line(f, "Update Time", &self.update_time)?;
        if let Some(log) = &self.bad_block_log {
            let text = format!(
                "{} entries available at offset {} sectors",
                log.entries, log.offset_sectors
            );
            line(f, "Bad Block Log", text)?;
        }
        let verdict = if self.checksum_ok {
            "correct".to_string()
        } else {
            format!("expected {:x}", self.checksum_expected)
        };
        line(f, "Checksum", format!("{:x} - {verdict}", self.checksum))?;
        line(f, "Events", self.events)?;
        writeln!(f)?;
        if let Some(layout) = &self.layout {
            line(f, "Layout", layout)?;
        }
        if let Some(chunk) = self.chunk_size_kib {
            line(f, "Chunk Size", format!("{chunk}K"))?;
        }
        writeln!(f)?;
        // mdadm aligns these two labels one column to the left of the others.
        writeln!(f, "{:>14} : {}", "Device Role", self.device_role)?;
        writeln!(
            f,
            "{:>14} : {} ('A' == active, '.' == missing, 'R' == replacing)",
            "Array State", self.array_state
        )
    }

    fn fmt_extension(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f)?;
        if let Some(error) = &self.extension_error {
            return writeln!(f, "raidctl extension : damaged: {error}");
        }
        let Some(extension) = &self.extension else {
            return writeln!(f, "raidctl extension : none (not created by raidctl)");
        };
        writeln!(f, "raidctl extension :")?;
        line(f, "Created By", &extension.created_by)?;
        let optional = |value: &Option<String>| value.clone().unwrap_or_else(|| "-".to_string());
        line(f, "Spare Group", optional(&extension.spare_group))?;
        line(f, "Cache Mode", optional(&extension.cache_mode))?;
        line(f, "Battery", optional(&extension.battery))?;
        let speed = |value: Option<u64>| {
            value.map_or_else(|| "default".to_string(), |kib| format!("{kib} KiB/s"))
        };
        let speeds = format!(
            "min {}, max {}",
            speed(extension.speed_min_kib),
            speed(extension.speed_max_kib)
        );
        line(f, "Rebuild Speed", speeds)
    }

    fn fmt_placement(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.placement.is_empty() {
            return Ok(());
        }
        writeln!(f)?;
        writeln!(f, "raidctl placement : slot 0 first, one row per line")?;
        for (row, picture) in self.placement.iter().enumerate() {
            line(f, &format!("row {row}"), picture)?;
        }
        Ok(())
    }
}

impl fmt::Display for ExamineReport {
    /// The `mdadm --examine`-like text, then our extension block.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.fmt_array(f)?;
        self.fmt_member(f)?;
        self.fmt_extension(f)?;
        self.fmt_placement(f)
    }
}
