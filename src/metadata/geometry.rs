//! Where things go on a member and how big the array is: mdadm's data_offset and bitmap-space
//! rules, and md's array size per level.
//!
//! We follow mdadm (`super1.c`) rather than invent our own numbers so that an array we create
//! looks exactly like one mdadm would have created on the same disks: same data_offset, same
//! bitmap room, same sizes. A different data_offset would still work with md, but it would
//! surprise anyone comparing our members with mdadm's.

use super::Superblock;

/// Sectors in one GiB.
const GIB_SECTORS: u64 = 2 * 1024 * 1024;

/// mdadm `choose_bm_space`: sectors to reserve after the superblock for a bitmap.
///
/// Tiny devices (< 64 sectors) get none, devices of 200 GiB and more get 128 KiB, devices over
/// 8 GiB get 64 KiB, everything else 4 KiB. The reserve exists even without a bitmap so that
/// one can be added later without moving data.
pub fn choose_bm_space_sectors(dev_sectors: u64) -> u64 {
    if dev_sectors < 64 {
        0
    } else if dev_sectors >= 200 * GIB_SECTORS {
        256
    } else if dev_sectors > 8 * GIB_SECTORS {
        128
    } else {
        8
    }
}

/// Reshape headroom mdadm starts from: 128 MiB.
const HEADROOM_START_SECTORS: u64 = 262_144;
/// mdadm's fixed front reserve in sectors (12 KiB): the 4 KiB md leaves untouched before the
/// superblock, the 4 KiB superblock slot, and 4 KiB more.
const RESERVED_FRONT_SECTORS: u64 = 24;
/// data_offset is a whole number of MiB.
const DATA_OFFSET_ALIGN_SECTORS: u64 = 2048;

/// mdadm's default data_offset for a 1.2 member (`validate_geometry1`).
///
/// Headroom for a later reshape starts at 128 MiB and is halved while it is more than 1/1024
/// of the device and, when there is a chunk, while half of it is still at least two chunks.
/// Then data_offset = round_up(24 + bitmap space + headroom, 1 MiB). Checked against mdadm's
/// table (1 GiB -> 4096, 10 GiB -> 18432, 100 GiB -> 133120, >= 128 GiB -> 264192) and against
/// every md-written fixture (24 MiB members, 64 KiB chunk -> 2048).
pub fn default_data_offset_sectors(dev_sectors: u64, chunk_sectors: u32) -> u64 {
    let chunk_sectors = u64::from(chunk_sectors);
    let mut headroom = HEADROOM_START_SECTORS;
    // At most 18 halvings reach 1; the loop is bounded by the value itself.
    while headroom > 1
        && headroom.saturating_mul(1024) > dev_sectors
        && (chunk_sectors == 0 || headroom / 2 >= 2 * chunk_sectors)
    {
        headroom /= 2;
    }
    let wanted = RESERVED_FRONT_SECTORS + choose_bm_space_sectors(dev_sectors) + headroom;
    wanted.div_ceil(DATA_OFFSET_ALIGN_SECTORS) * DATA_OFFSET_ALIGN_SECTORS
}

/// RAID10 layout bits: copies next to each other (near), in the far part of every device
/// (far), and whether the far copies are in the next stripe instead (offset).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Raid10Layout {
    /// Near copies (layout bits 0..8).
    pub near: u32,
    /// Far copies (layout bits 8..16).
    pub far: u32,
    /// Far copies sit in the next stripe (bit 16).
    pub offset: bool,
}

impl Raid10Layout {
    /// Splits a RAID10 layout code; None when md would refuse it (bits above 18 set, or no
    /// copies).
    pub fn from_layout(layout: u32) -> Option<Raid10Layout> {
        let near = layout & 0xff;
        let far = (layout >> 8) & 0xff;
        if layout >> 19 != 0 || near == 0 || far == 0 {
            return None;
        }
        Some(Raid10Layout {
            near,
            far,
            offset: layout & 0x1_0000 != 0,
        })
    }

    /// Copies of each chunk.
    pub fn copies(&self) -> u32 {
        self.near * self.far
    }
}

/// Array size in sectors from raw geometry, per level; None for levels we cannot size or for
/// inconsistent numbers. RAID0 assumes every member has this member's data_size (md sums the
/// real sizes; one superblock cannot know the others).
pub(crate) fn array_size_for(
    level: i32,
    layout: u32,
    size_sectors: u64,
    data_size_sectors: u64,
    chunk_sectors: u32,
    raid_disks: u32,
) -> Option<u64> {
    let disks = u64::from(raid_disks);
    let chunk = u64::from(chunk_sectors);
    let round_to_chunk = |sectors: u64| match chunk {
        0 => sectors,
        _ => sectors / chunk * chunk,
    };
    match level {
        0 if chunk > 0 => round_to_chunk(data_size_sectors).checked_mul(disks),
        1 => Some(size_sectors),
        4 | 5 if disks >= 2 => round_to_chunk(size_sectors).checked_mul(disks - 1),
        6 if disks >= 3 => round_to_chunk(size_sectors).checked_mul(disks - 2),
        crate::layout::EC_MD_LEVEL if chunk > 0 && disks > u64::from(layout) => {
            round_to_chunk(size_sectors).checked_mul(disks - u64::from(layout))
        }
        10 if chunk > 0 => {
            // md raid10_size: whole chunks per device, divided among far copies, times the
            // devices, divided among near copies. The order of the divisions matters.
            let geometry = Raid10Layout::from_layout(layout)?;
            let chunks_per_device = size_sectors / chunk / u64::from(geometry.far);
            let chunks = chunks_per_device.checked_mul(disks)? / u64::from(geometry.near);
            chunks.checked_mul(chunk)
        }
        _ => None,
    }
}

/// Array size in sectors for the levels md sizes from one superblock (0, 1, 4, 5, 6, 10).
///
/// RAID0 is computed as if all members were the size of this one; for unequal RAID0 members
/// the caller must sum the real sizes.
pub fn array_size_sectors(sb: &Superblock) -> Option<u64> {
    array_size_for(
        sb.level,
        sb.layout,
        sb.size_sectors,
        sb.data_size_sectors,
        sb.chunk_sectors,
        sb.raid_disks,
    )
}

/// Sectors the write-intent bitmap covers (its sync_size): the per-device size for
/// RAID1/4/5/6 and the array size for RAID10, whose resync walks array sectors. None for
/// levels without a bitmap.
pub fn bitmap_sync_size_sectors(sb: &Superblock) -> Option<u64> {
    match sb.level {
        1 | 4..=6 | crate::layout::EC_MD_LEVEL => Some(sb.size_sectors),
        10 => array_size_sectors(sb),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB_SECTORS: u64 = 2048;

    /// Goal: the rule reproduces the table in reference §3 (512 KiB chunk, and RAID1).
    #[test]
    fn data_offset_matches_mdadm_table() {
        let chunk = 1024; // 512 KiB
        assert_eq!(default_data_offset_sectors(64 * MIB_SECTORS, chunk), 4096);
        assert_eq!(default_data_offset_sectors(100 * MIB_SECTORS, chunk), 4096);
        assert_eq!(default_data_offset_sectors(64 * MIB_SECTORS, 0), 2048);
        assert_eq!(default_data_offset_sectors(GIB_SECTORS, chunk), 4096);
        assert_eq!(default_data_offset_sectors(10 * GIB_SECTORS, chunk), 18432);
        assert_eq!(
            default_data_offset_sectors(100 * GIB_SECTORS, chunk),
            133_120
        );
        assert_eq!(
            default_data_offset_sectors(128 * GIB_SECTORS, chunk),
            264_192
        );
        assert_eq!(
            default_data_offset_sectors(4096 * GIB_SECTORS, chunk),
            264_192
        );
        // The fixtures: 24 MiB members with a 64 KiB chunk, and RAID1.
        assert_eq!(default_data_offset_sectors(24 * MIB_SECTORS, 128), 2048);
        assert_eq!(default_data_offset_sectors(24 * MIB_SECTORS, 0), 2048);
        // Degenerate inputs must not panic or loop.
        assert_eq!(default_data_offset_sectors(0, 0), 2048);
        assert_eq!(default_data_offset_sectors(u64::MAX, u32::MAX), 264_192);
    }

    /// Goal: bitmap space follows mdadm's thresholds, including both edges.
    #[test]
    fn bm_space_thresholds() {
        assert_eq!(choose_bm_space_sectors(63), 0);
        assert_eq!(choose_bm_space_sectors(64), 8);
        assert_eq!(choose_bm_space_sectors(8 * GIB_SECTORS), 8);
        assert_eq!(choose_bm_space_sectors(8 * GIB_SECTORS + 1), 128);
        assert_eq!(choose_bm_space_sectors(200 * GIB_SECTORS - 1), 128);
        assert_eq!(choose_bm_space_sectors(200 * GIB_SECTORS), 256);
    }

    /// Goal: array sizes agree with what md reported for the fixtures (NAME.size files).
    #[test]
    fn array_sizes_match_fixtures() {
        let size = 47104;
        assert_eq!(array_size_for(5, 2, size, size, 128, 4), Some(141_312));
        assert_eq!(array_size_for(6, 2, size, size, 128, 5), Some(141_312));
        assert_eq!(array_size_for(1, 0, size, size, 0, 2), Some(47104));
        assert_eq!(array_size_for(10, 0x102, size, size, 128, 4), Some(94208));
        assert_eq!(array_size_for(10, 0x201, size, size, 128, 4), Some(94208));
        assert_eq!(array_size_for(0, 1, 0, size, 128, 4), Some(188_416));
        assert_eq!(array_size_for(10, 0, size, size, 128, 4), None);
        assert_eq!(array_size_for(5, 2, u64::MAX, 0, 1, u32::MAX), None);
        assert_eq!(array_size_for(-1, 0, size, size, 0, 2), None);
    }
}
