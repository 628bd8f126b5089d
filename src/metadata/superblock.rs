//! The md version-1 superblock (`struct mdp_superblock_1`) at byte 4096 of a 1.2 member.
//!
//! `Superblock` holds every on-disk field except the three that are implied: the magic, the
//! checksum (computed on encode) and max_dev (the length of `dev_roles`, so the two can never
//! disagree). `decode` applies the checks the kernel applies when it loads a superblock
//! (md.c `super_1_load`), so anything we accept the kernel would accept too. `decode_unchecked`
//! parses a superblock whose checksum or padding is wrong, because `examine` must still show it
//! (mdadm prints "Checksum : X - expected Y"). `encode` produces a whole 4 KiB block and, in
//! debug builds, decodes it again (a pair assertion: we check what we are about to write).

use super::{MetadataError, SUPERBLOCK_BLOCK_BYTES, SUPERBLOCK_OFFSET_SECTORS};

/// `MD_SB_MAGIC`, stored little-endian at byte 0.
pub const MD_SB_MAGIC: u32 = 0xa92b_4efc;
/// Bytes before `dev_roles`.
pub const SUPERBLOCK_FIXED_BYTES: usize = 256;
/// Largest max_dev the kernel accepts: (4096 - 256) / 2 role entries fill one 4 KiB block.
pub const MAX_DEV_LIMIT: u32 = 1920;

/// An internal bitmap is at `bitmap_offset`.
pub const FEATURE_BITMAP_OFFSET: u32 = 0x1;
/// This member is part-way through a rebuild; obey `recovery_offset`.
pub const FEATURE_RECOVERY_OFFSET: u32 = 0x2;
/// A reshape is active; the `new_*` fields are valid.
pub const FEATURE_RESHAPE_ACTIVE: u32 = 0x4;
/// The bad-block list is not empty.
pub const FEATURE_BAD_BLOCKS: u32 = 0x8;
/// This device replaces the active device with the same role.
pub const FEATURE_REPLACEMENT: u32 = 0x10;
/// The reshape runs backwards.
pub const FEATURE_RESHAPE_BACKWARDS: u32 = 0x20;
/// `new_offset` must be obeyed.
pub const FEATURE_NEW_OFFSET: u32 = 0x40;
/// The current recovery is guided by the bitmap.
pub const FEATURE_RECOVERY_BITMAP: u32 = 0x80;
/// Clustered md.
pub const FEATURE_CLUSTERED: u32 = 0x100;
/// The array has a raid5-cache journal device.
pub const FEATURE_JOURNAL: u32 = 0x200;
/// Partial parity log.
pub const FEATURE_PPL: u32 = 0x400;
/// Several partial parity logs.
pub const FEATURE_MULTIPLE_PPLS: u32 = 0x800;
/// `layout` is meaningful for RAID0 (only legal with level 0).
pub const FEATURE_RAID0_LAYOUT: u32 = 0x1000;
/// Every feature bit the kernel knows (`MD_FEATURE_ALL`).
pub const FEATURE_ALL: u32 = 0x1fff;

// Byte offsets of the fields (md_p.h). The layout is fixed by the on-disk format.
const OFF_MAGIC: usize = 0;
const OFF_MAJOR: usize = 4;
const OFF_FEATURE_MAP: usize = 8;
const OFF_PAD0: usize = 12;
const OFF_SET_UUID: usize = 16;
const OFF_SET_NAME: usize = 32;
const OFF_CTIME: usize = 64;
const OFF_LEVEL: usize = 72;
const OFF_LAYOUT: usize = 76;
const OFF_SIZE: usize = 80;
const OFF_CHUNK: usize = 88;
const OFF_RAID_DISKS: usize = 92;
const OFF_BITMAP_OFFSET: usize = 96;
const OFF_NEW_LEVEL: usize = 100;
const OFF_RESHAPE_POSITION: usize = 104;
const OFF_DELTA_DISKS: usize = 112;
const OFF_NEW_LAYOUT: usize = 116;
const OFF_NEW_CHUNK: usize = 120;
const OFF_NEW_OFFSET: usize = 124;
const OFF_DATA_OFFSET: usize = 128;
const OFF_DATA_SIZE: usize = 136;
const OFF_SUPER_OFFSET: usize = 144;
const OFF_RECOVERY_OFFSET: usize = 152;
const OFF_DEV_NUMBER: usize = 160;
const OFF_CNT_CORRECTED_READ: usize = 164;
const OFF_DEVICE_UUID: usize = 168;
const OFF_DEVFLAGS: usize = 184;
const OFF_BBLOG_SHIFT: usize = 185;
const OFF_BBLOG_SIZE: usize = 186;
const OFF_BBLOG_OFFSET: usize = 188;
const OFF_UTIME: usize = 192;
const OFF_EVENTS: usize = 200;
const OFF_RESYNC_OFFSET: usize = 208;
const OFF_SB_CSUM: usize = 216;
const OFF_MAX_DEV: usize = 220;
const OFF_PAD3: usize = 224;

// mdadm's checksum code asserts these three layout facts; so do we, at compile time.
const _: () = assert!(OFF_DATA_OFFSET == 128);
const _: () = assert!(OFF_UTIME == 192);
const _: () = assert!(OFF_PAD3 + 32 == SUPERBLOCK_FIXED_BYTES);
const _: () = assert!(SUPERBLOCK_FIXED_BYTES + 2 * MAX_DEV_LIMIT as usize == 4096);

/// One md v1.2 superblock, every field (see the module doc for the three implied ones).
///
/// Units: `*_sectors` fields count 512-byte sectors. `bitmap_offset_sectors` and
/// `bblog_offset_sectors` are signed and relative to the superblock, as on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Superblock {
    /// Feature bits (`FEATURE_*`).
    pub feature_map: u32,
    /// Array UUID, raw bytes in stored order.
    pub set_uuid: [u8; 16],
    /// NUL-padded array name, usually "homehost:name".
    pub set_name: [u8; 32],
    /// Creation time, md packing (see `md_time`).
    pub ctime: u64,
    /// RAID level: -1 linear, 0, 1, 4, 5, 6, 10, ...
    pub level: i32,
    /// Level-specific layout code.
    pub layout: u32,
    /// Sectors of each member used for data ("Used Dev Size"); RAID0 ignores it.
    pub size_sectors: u64,
    /// Chunk size in sectors (0 for RAID1).
    pub chunk_sectors: u32,
    /// Number of active slots.
    pub raid_disks: u32,
    /// Bitmap position relative to the superblock (valid with `FEATURE_BITMAP_OFFSET`).
    /// Shares its bytes with the PPL offset/size when a PPL feature is set.
    pub bitmap_offset_sectors: i32,
    /// Level after the reshape (with `FEATURE_RESHAPE_ACTIVE`).
    pub new_level: i32,
    /// Array sector the reshape has reached.
    pub reshape_position: u64,
    /// Change in raid_disks during a reshape.
    pub delta_disks: i32,
    /// Layout after the reshape.
    pub new_layout: u32,
    /// Chunk after the reshape, in sectors.
    pub new_chunk_sectors: u32,
    /// Signed change of data_offset in the new layout.
    pub new_offset_sectors: i32,
    /// Device sector where data starts.
    pub data_offset_sectors: u64,
    /// Sectors usable for data on this device ("Avail Dev Size").
    pub data_size_sectors: u64,
    /// Sector of this superblock (8 for 1.2).
    pub super_offset_sectors: u64,
    /// Sectors (from data_offset) already rebuilt, with `FEATURE_RECOVERY_OFFSET`.
    pub recovery_offset_sectors: u64,
    /// Permanent index of this device into `dev_roles` (not its slot).
    pub dev_number: u32,
    /// Read errors corrected by rewriting.
    pub cnt_corrected_read: u32,
    /// Random per-device UUID.
    pub device_uuid: [u8; 16],
    /// bit0 write-mostly, bit1 failfast.
    pub devflags: u8,
    /// Bad-block unit is 2^shift sectors.
    pub bblog_shift: u8,
    /// Sectors reserved for the bad-block log.
    pub bblog_size_sectors: u16,
    /// Bad-block log position relative to the superblock; 0 = none.
    pub bblog_offset_sectors: i32,
    /// Last update time, md packing.
    pub utime: u64,
    /// Update counter.
    pub events: u64,
    /// Resync position; `u64::MAX` means clean.
    pub resync_offset: u64,
    /// Role of each dev_number (`ROLE_*` or a slot). Its length is max_dev.
    pub dev_roles: Vec<u16>,
}

/// The stored and the computed checksum of a superblock that was parsed without checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChecksumStatus {
    /// Checksum stored at byte 216.
    pub stored: u32,
    /// Checksum computed over the bytes.
    pub computed: u32,
}

impl ChecksumStatus {
    /// True when the stored checksum is the right one.
    pub fn is_ok(&self) -> bool {
        self.stored == self.computed
    }
}

/// Bytes the checksum covers: the fixed part plus one le16 per role. None if max_dev is absurd.
fn covered_bytes(max_dev: u32) -> Option<usize> {
    if max_dev > MAX_DEV_LIMIT {
        return None;
    }
    Some(SUPERBLOCK_FIXED_BYTES + 2 * max_dev as usize)
}

/// md's checksum over `region` (exactly the covered bytes), with the csum field read as zero.
///
/// Sum every little-endian u32 word into 64 bits, add a trailing le16 when max_dev is odd, then
/// fold once: low 32 bits plus high 32 bits, truncated to 32 bits (not a ones'-complement loop).
fn checksum_of(region: &[u8]) -> u32 {
    let mut sum: u64 = 0;
    let mut words = region.chunks_exact(4);
    for (index, word) in words.by_ref().enumerate() {
        if index * 4 == OFF_SB_CSUM {
            continue;
        }
        let mut bytes = [0u8; 4];
        bytes.copy_from_slice(word);
        sum += u64::from(u32::from_le_bytes(bytes));
    }
    if let [low, high] = words.remainder() {
        sum += u64::from(u16::from_le_bytes([*low, *high]));
    }
    ((sum & 0xffff_ffff) + (sum >> 32)) as u32
}

/// Reads max_dev from a superblock buffer and checks the buffer holds all covered bytes.
fn covered_region(buf: &[u8]) -> Result<(u32, &[u8]), MetadataError> {
    let max_dev = read_u32(buf, OFF_MAX_DEV)?;
    let needed = covered_bytes(max_dev).ok_or(MetadataError::TooManyDevices(max_dev))?;
    let region = buf.get(..needed).ok_or(MetadataError::TooShort {
        what: "md superblock with its dev_roles",
        needed,
        got: buf.len(),
    })?;
    Ok((max_dev, region))
}

/// Computes the checksum of the superblock at the start of `buf` (its stored value ignored).
pub fn superblock_checksum(buf: &[u8]) -> Result<u32, MetadataError> {
    let (_, region) = covered_region(buf)?;
    Ok(checksum_of(region))
}

/// Recomputes the checksum of the superblock at the start of `buf` and stores it.
///
/// For tools and tests that patch superblock bytes in place; returns the new checksum.
pub fn rewrite_checksum(buf: &mut [u8]) -> Result<u32, MetadataError> {
    let checksum = superblock_checksum(buf)?;
    write_bytes(buf, OFF_SB_CSUM, &checksum.to_le_bytes());
    Ok(checksum)
}

fn read_array<const N: usize>(buf: &[u8], offset: usize) -> Result<[u8; N], MetadataError> {
    let end = offset.saturating_add(N);
    let bytes = buf.get(offset..end).ok_or(MetadataError::TooShort {
        what: "md superblock",
        needed: end,
        got: buf.len(),
    })?;
    let mut out = [0u8; N];
    out.copy_from_slice(bytes);
    Ok(out)
}

fn read_u16(buf: &[u8], offset: usize) -> Result<u16, MetadataError> {
    Ok(u16::from_le_bytes(read_array(buf, offset)?))
}

fn read_u32(buf: &[u8], offset: usize) -> Result<u32, MetadataError> {
    Ok(u32::from_le_bytes(read_array(buf, offset)?))
}

fn read_i32(buf: &[u8], offset: usize) -> Result<i32, MetadataError> {
    Ok(i32::from_le_bytes(read_array(buf, offset)?))
}

fn read_u64(buf: &[u8], offset: usize) -> Result<u64, MetadataError> {
    Ok(u64::from_le_bytes(read_array(buf, offset)?))
}

/// Copies `bytes` to `offset`; the callers write inside a buffer they sized, so a miss is a
/// programmer error and is ignored rather than allowed to corrupt neighbouring memory.
fn write_bytes(buf: &mut [u8], offset: usize, bytes: &[u8]) {
    if let Some(target) = buf.get_mut(offset..offset + bytes.len()) {
        target.copy_from_slice(bytes);
    }
}

/// What `parse` found besides the fields: the parts `decode` checks and `Superblock` omits.
struct Parsed {
    superblock: Superblock,
    checksum: ChecksumStatus,
    pad0: u32,
    pad3_zero: bool,
}

impl Superblock {
    /// Decodes and validates the superblock at the start of `buf` like the kernel's load.
    ///
    /// `buf` must hold at least 256 + 2*max_dev bytes (callers pass the 4 KiB block read at
    /// byte 4096). Checks, each with its own error: magic, major version 1, max_dev <= 1920,
    /// super_offset == 8, checksum, only known feature bits, pad0 and pad3 zero,
    /// data_size >= 10, data_offset (and the new offset during a reshape) past the superblock,
    /// and RAID0_LAYOUT only on level 0.
    pub fn decode(buf: &[u8]) -> Result<Superblock, MetadataError> {
        let parsed = Self::parse(buf)?;
        let superblock = parsed.superblock;
        if superblock.super_offset_sectors != SUPERBLOCK_OFFSET_SECTORS {
            return Err(MetadataError::WrongSuperOffset {
                found: superblock.super_offset_sectors,
                expected: SUPERBLOCK_OFFSET_SECTORS,
            });
        }
        if !parsed.checksum.is_ok() {
            return Err(MetadataError::ChecksumMismatch {
                stored: parsed.checksum.stored,
                computed: parsed.checksum.computed,
            });
        }
        let unknown = superblock.feature_map & !FEATURE_ALL;
        if unknown != 0 {
            return Err(MetadataError::UnknownFeatures {
                feature_map: superblock.feature_map,
                unknown,
            });
        }
        if parsed.pad0 != 0 {
            return Err(MetadataError::NonZeroPad0(parsed.pad0));
        }
        if !parsed.pad3_zero {
            return Err(MetadataError::NonZeroPad3);
        }
        superblock.check_placement()?;
        Ok(superblock)
    }

    /// Parses a superblock without the checksum, feature, padding and placement checks.
    ///
    /// For `examine`, which must show a damaged superblock and say what is wrong with it.
    /// Still refuses what is not an md 1.x superblock at all (magic, major version), a max_dev
    /// too large to hold, and a buffer too short for the roles.
    pub fn decode_unchecked(buf: &[u8]) -> Result<(Superblock, ChecksumStatus), MetadataError> {
        let parsed = Self::parse(buf)?;
        Ok((parsed.superblock, parsed.checksum))
    }

    /// Checks the data area against the superblock and the level, as the kernel does.
    fn check_placement(&self) -> Result<(), MetadataError> {
        if self.data_size_sectors < 10 {
            return Err(MetadataError::DataSizeTooSmall(self.data_size_sectors));
        }
        let min_sectors = self.super_offset_sectors + self.superblock_sectors();
        if self.data_offset_sectors < min_sectors {
            return Err(MetadataError::DataOffsetOverlapsSuperblock {
                data_offset_sectors: self.data_offset_sectors,
                min_sectors,
            });
        }
        if self.feature_map & FEATURE_NEW_OFFSET != 0 {
            let new_offset = self
                .data_offset_sectors
                .checked_add_signed(i64::from(self.new_offset_sectors))
                .unwrap_or(0);
            if new_offset < min_sectors {
                return Err(MetadataError::DataOffsetOverlapsSuperblock {
                    data_offset_sectors: new_offset,
                    min_sectors,
                });
            }
        }
        if self.feature_map & FEATURE_RAID0_LAYOUT != 0 && self.level != 0 {
            return Err(MetadataError::Raid0LayoutOnWrongLevel(self.level));
        }
        Ok(())
    }

    /// Checks the kernel rule `device_sectors - data_offset >= data_size` for a device size.
    pub fn check_fits_device(&self, device_sectors: u64) -> Result<(), MetadataError> {
        let end = self.data_offset_sectors.checked_add(self.data_size_sectors);
        match end {
            Some(end) if end <= device_sectors => Ok(()),
            _ => Err(MetadataError::DeviceTooSmall {
                device_sectors,
                data_offset_sectors: self.data_offset_sectors,
                data_size_sectors: self.data_size_sectors,
            }),
        }
    }

    /// Sectors the superblock occupies: 256 + 2*max_dev bytes rounded up to whole sectors.
    pub fn superblock_sectors(&self) -> u64 {
        let bytes = (SUPERBLOCK_FIXED_BYTES + 2 * self.dev_roles.len()) as u64;
        bytes.div_ceil(super::SECTOR_BYTES)
    }

    /// max_dev: the number of `dev_roles` entries.
    pub fn max_dev(&self) -> u32 {
        // encode and set_role keep the table at most 1920 entries long.
        u32::try_from(self.dev_roles.len()).unwrap_or(u32::MAX)
    }

    fn parse(buf: &[u8]) -> Result<Parsed, MetadataError> {
        if buf.len() < SUPERBLOCK_FIXED_BYTES {
            return Err(MetadataError::TooShort {
                what: "md superblock",
                needed: SUPERBLOCK_FIXED_BYTES,
                got: buf.len(),
            });
        }
        let magic = read_u32(buf, OFF_MAGIC)?;
        if magic != MD_SB_MAGIC {
            return Err(MetadataError::BadMagic { found: magic });
        }
        let major = read_u32(buf, OFF_MAJOR)?;
        if major != 1 {
            return Err(MetadataError::BadMajorVersion(major));
        }
        let (max_dev, region) = covered_region(buf)?;
        let checksum = ChecksumStatus {
            stored: read_u32(buf, OFF_SB_CSUM)?,
            computed: checksum_of(region),
        };
        let mut dev_roles = Vec::with_capacity(max_dev as usize);
        for index in 0..max_dev as usize {
            dev_roles.push(read_u16(buf, SUPERBLOCK_FIXED_BYTES + 2 * index)?);
        }
        let pad3: [u8; 32] = read_array(buf, OFF_PAD3)?;
        Ok(Parsed {
            superblock: Self::parse_fields(buf, dev_roles)?,
            checksum,
            pad0: read_u32(buf, OFF_PAD0)?,
            pad3_zero: pad3.iter().all(|byte| *byte == 0),
        })
    }

    fn parse_fields(buf: &[u8], dev_roles: Vec<u16>) -> Result<Superblock, MetadataError> {
        Ok(Superblock {
            feature_map: read_u32(buf, OFF_FEATURE_MAP)?,
            set_uuid: read_array(buf, OFF_SET_UUID)?,
            set_name: read_array(buf, OFF_SET_NAME)?,
            ctime: read_u64(buf, OFF_CTIME)?,
            level: read_i32(buf, OFF_LEVEL)?,
            layout: read_u32(buf, OFF_LAYOUT)?,
            size_sectors: read_u64(buf, OFF_SIZE)?,
            chunk_sectors: read_u32(buf, OFF_CHUNK)?,
            raid_disks: read_u32(buf, OFF_RAID_DISKS)?,
            bitmap_offset_sectors: read_i32(buf, OFF_BITMAP_OFFSET)?,
            new_level: read_i32(buf, OFF_NEW_LEVEL)?,
            reshape_position: read_u64(buf, OFF_RESHAPE_POSITION)?,
            delta_disks: read_i32(buf, OFF_DELTA_DISKS)?,
            new_layout: read_u32(buf, OFF_NEW_LAYOUT)?,
            new_chunk_sectors: read_u32(buf, OFF_NEW_CHUNK)?,
            new_offset_sectors: read_i32(buf, OFF_NEW_OFFSET)?,
            data_offset_sectors: read_u64(buf, OFF_DATA_OFFSET)?,
            data_size_sectors: read_u64(buf, OFF_DATA_SIZE)?,
            super_offset_sectors: read_u64(buf, OFF_SUPER_OFFSET)?,
            recovery_offset_sectors: read_u64(buf, OFF_RECOVERY_OFFSET)?,
            dev_number: read_u32(buf, OFF_DEV_NUMBER)?,
            cnt_corrected_read: read_u32(buf, OFF_CNT_CORRECTED_READ)?,
            device_uuid: read_array(buf, OFF_DEVICE_UUID)?,
            devflags: read_array::<1>(buf, OFF_DEVFLAGS)?[0],
            bblog_shift: read_array::<1>(buf, OFF_BBLOG_SHIFT)?[0],
            bblog_size_sectors: read_u16(buf, OFF_BBLOG_SIZE)?,
            bblog_offset_sectors: read_i32(buf, OFF_BBLOG_OFFSET)?,
            utime: read_u64(buf, OFF_UTIME)?,
            events: read_u64(buf, OFF_EVENTS)?,
            resync_offset: read_u64(buf, OFF_RESYNC_OFFSET)?,
            dev_roles,
        })
    }

    /// Encodes a 4096-byte block: the superblock with its checksum, then zeros.
    ///
    /// Panics if `dev_roles` has more than 1920 entries (a programmer error: decode and
    /// `set_role` never produce that). In debug builds the bytes are decoded again and must
    /// pass every load check and give back `self`, so we never write what md would refuse.
    pub fn encode(&self) -> Vec<u8> {
        assert!(
            self.dev_roles.len() <= MAX_DEV_LIMIT as usize,
            "dev_roles has {} entries, md allows {}",
            self.dev_roles.len(),
            MAX_DEV_LIMIT
        );
        let mut buf = vec![0u8; SUPERBLOCK_BLOCK_BYTES];
        self.write_fields(&mut buf);
        for (index, role) in self.dev_roles.iter().enumerate() {
            write_bytes(
                &mut buf,
                SUPERBLOCK_FIXED_BYTES + 2 * index,
                &role.to_le_bytes(),
            );
        }
        let covered = SUPERBLOCK_FIXED_BYTES + 2 * self.dev_roles.len();
        let checksum = checksum_of(&buf[..covered]);
        write_bytes(&mut buf, OFF_SB_CSUM, &checksum.to_le_bytes());
        debug_assert_eq!(Superblock::decode(&buf).as_ref(), Ok(self));
        buf
    }

    fn write_fields(&self, buf: &mut [u8]) {
        let fields: [(usize, &[u8]); 35] = [
            (OFF_MAGIC, &MD_SB_MAGIC.to_le_bytes()),
            (OFF_MAJOR, &1u32.to_le_bytes()),
            (OFF_FEATURE_MAP, &self.feature_map.to_le_bytes()),
            (OFF_SET_UUID, &self.set_uuid),
            (OFF_SET_NAME, &self.set_name),
            (OFF_CTIME, &self.ctime.to_le_bytes()),
            (OFF_LEVEL, &self.level.to_le_bytes()),
            (OFF_LAYOUT, &self.layout.to_le_bytes()),
            (OFF_SIZE, &self.size_sectors.to_le_bytes()),
            (OFF_CHUNK, &self.chunk_sectors.to_le_bytes()),
            (OFF_RAID_DISKS, &self.raid_disks.to_le_bytes()),
            (OFF_BITMAP_OFFSET, &self.bitmap_offset_sectors.to_le_bytes()),
            (OFF_NEW_LEVEL, &self.new_level.to_le_bytes()),
            (OFF_RESHAPE_POSITION, &self.reshape_position.to_le_bytes()),
            (OFF_DELTA_DISKS, &self.delta_disks.to_le_bytes()),
            (OFF_NEW_LAYOUT, &self.new_layout.to_le_bytes()),
            (OFF_NEW_CHUNK, &self.new_chunk_sectors.to_le_bytes()),
            (OFF_NEW_OFFSET, &self.new_offset_sectors.to_le_bytes()),
            (OFF_DATA_OFFSET, &self.data_offset_sectors.to_le_bytes()),
            (OFF_DATA_SIZE, &self.data_size_sectors.to_le_bytes()),
            (OFF_SUPER_OFFSET, &self.super_offset_sectors.to_le_bytes()),
            (
                OFF_RECOVERY_OFFSET,
                &self.recovery_offset_sectors.to_le_bytes(),
            ),
            (OFF_DEV_NUMBER, &self.dev_number.to_le_bytes()),
            (
                OFF_CNT_CORRECTED_READ,
                &self.cnt_corrected_read.to_le_bytes(),
            ),
            (OFF_DEVICE_UUID, &self.device_uuid),
            (OFF_DEVFLAGS, &[self.devflags]),
            (OFF_BBLOG_SHIFT, &[self.bblog_shift]),
            (OFF_BBLOG_SIZE, &self.bblog_size_sectors.to_le_bytes()),
            (OFF_BBLOG_OFFSET, &self.bblog_offset_sectors.to_le_bytes()),
            (OFF_UTIME, &self.utime.to_le_bytes()),
            (OFF_EVENTS, &self.events.to_le_bytes()),
            (OFF_RESYNC_OFFSET, &self.resync_offset.to_le_bytes()),
            (OFF_MAX_DEV, &self.max_dev().to_le_bytes()),
            // pad0 and pad3 stay zero; the checksum is written last.
            (OFF_PAD0, &0u32.to_le_bytes()),
            (OFF_SB_CSUM, &0u32.to_le_bytes()),
        ];
        for (offset, bytes) in fields {
            write_bytes(buf, offset, bytes);
        }
    }

    /// The array name: set_name up to the first NUL, invalid UTF-8 replaced.
    pub fn name(&self) -> String {
        let end = self
            .set_name
            .iter()
            .position(|byte| *byte == 0)
            .unwrap_or(self.set_name.len());
        String::from_utf8_lossy(&self.set_name[..end]).into_owned()
    }

    /// Sets set_name. Refuses a name longer than 32 bytes or one holding a NUL.
    pub fn set_name(&mut self, name: &str) -> Result<(), MetadataError> {
        let bytes = name.as_bytes();
        if bytes.len() > self.set_name.len() || bytes.contains(&0) {
            return Err(MetadataError::BadName(name.to_string()));
        }
        self.set_name = [0u8; 32];
        self.set_name[..bytes.len()].copy_from_slice(bytes);
        Ok(())
    }

    /// The name without the "homehost:" prefix (what /dev/md/NAME uses).
    pub fn array_name(&self) -> String {
        let name = self.name();
        match name.split_once(':') {
            Some((_, after)) => after.to_string(),
            None => name,
        }
    }

    /// True when no resync is pending (resync_offset is MaxSector).
    pub fn is_clean(&self) -> bool {
        self.resync_offset == u64::MAX
    }

    /// Creation time in Unix seconds.
    pub fn ctime_secs(&self) -> u64 {
        super::md_time_secs(self.ctime)
    }

    /// Update time in Unix seconds.
    pub fn utime_secs(&self) -> u64 {
        super::md_time_secs(self.utime)
    }

    /// Sets the creation time (whole seconds, no microseconds, as mdadm writes it).
    pub fn set_ctime_secs(&mut self, unix_secs: u64) {
        self.ctime = super::md_time(unix_secs, 0);
    }

    /// Sets the update time.
    pub fn set_utime_secs(&mut self, unix_secs: u64) {
        self.utime = super::md_time(unix_secs, 0);
    }

    /// True when the feature bit (one of `FEATURE_*`) is set.
    pub fn has_feature(&self, feature: u32) -> bool {
        self.feature_map & feature != 0
    }
}
