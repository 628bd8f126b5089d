//! md's internal write-intent bitmap: its 256-byte superblock and the bits after it.
//!
//! One bit per chunk of the resync space: 1 means "this chunk may differ between members".
//! md sets a bit (and writes it to every member) before it writes data there, and clears it
//! lazily once all members have the data, so after a crash only the set chunks need a resync,
//! and a member that was briefly missing needs only the set chunks rebuilt. The bits start at
//! byte 256 of the bitmap area; chunk c is bit c%8 (least significant first) of byte c/8.
//! Format and load rules: reference §2 (md-bitmap.c `md_bitmap_read_sb`, mdadm `bitmap.h`).

use super::{bitmap_sync_size_sectors, format_uuid, MetadataError, Superblock};

/// Bitmap magic, bytes "bitm" on disk.
pub const BITMAP_MAGIC: u32 = 0x6d74_6962;
/// Size of the bitmap superblock; the bits follow it.
pub const BITMAP_SUPER_BYTES: usize = 256;
/// The version we write: 4, bits little-endian.
pub const BITMAP_VERSION_WRITTEN: u32 = 4;
/// mdadm's smallest default chunk: 64 MiB per bit.
pub const BITMAP_CHUNK_MIN_DEFAULT_BYTES: u32 = 64 * 1024 * 1024;
/// State bit: the bitmap is out of date, the whole array must be resynced.
pub const BITMAP_STATE_STALE: u32 = 1 << 1;
/// State bit: a write to the bitmap failed.
pub const BITMAP_STATE_WRITE_ERROR: u32 = 1 << 2;

/// Largest daemon_sleep we accept. The kernel only refuses 0 and overflow; a day between
/// flushes is already absurd, and a bigger number is more likely garbage than intent.
const DAEMON_SLEEP_MAX_SECS: u32 = 86_400;
/// md's limit on outstanding write-behind I/Os (COUNTER_MAX / 2).
const WRITE_BEHIND_MAX: u32 = 16_383;
/// Bitmap space on disk is allocated in 4 KiB pages.
const BITMAP_PAGE_BYTES: u64 = 4096;

const OFF_MAGIC: usize = 0;
const OFF_VERSION: usize = 4;
const OFF_UUID: usize = 8;
const OFF_EVENTS: usize = 24;
const OFF_EVENTS_CLEARED: usize = 32;
const OFF_SYNC_SIZE: usize = 40;
const OFF_STATE: usize = 48;
const OFF_CHUNK: usize = 52;
const OFF_DAEMON_SLEEP: usize = 56;
const OFF_WRITE_BEHIND: usize = 60;
const OFF_SECTORS_RESERVED: usize = 64;
const OFF_NODES: usize = 68;
const OFF_CLUSTER_NAME: usize = 72;
const _: () = assert!(OFF_CLUSTER_NAME + 64 + 120 == BITMAP_SUPER_BYTES);

/// The bitmap superblock (`bitmap_super_t`), every field except magic and the zero pad.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BitmapSuper {
    /// 3 (host-endian bits), 4 (little-endian, what md writes), 5 (clustered).
    pub version: u32,
    /// Must equal the array's set_uuid.
    pub uuid: [u8; 16],
    /// Bitmap event count; below the superblock's events means the bitmap is stale.
    pub events: u64,
    /// Events when bits were last cleared; frozen while the array is degraded.
    pub events_cleared: u64,
    /// Sectors of resync space the bits cover.
    pub sync_size_sectors: u64,
    /// `BITMAP_STATE_*` bits.
    pub state: u32,
    /// Bytes of resync space per bit.
    pub chunk_bytes: u32,
    /// Seconds between flushes of cleared bits.
    pub daemon_sleep_secs: u32,
    /// Outstanding write-behind I/Os allowed.
    pub write_behind: u32,
    /// Sectors reserved for the bitmap (0 = not recorded).
    pub sectors_reserved: u32,
    /// Cluster nodes (version 5).
    pub nodes: u32,
    /// Cluster name (version 5), NUL-padded.
    pub cluster_name: [u8; 64],
}

fn field<const N: usize>(buf: &[u8], offset: usize) -> [u8; N] {
    // Callers check buf holds BITMAP_SUPER_BYTES first; a miss would give zeros, not a panic.
    let mut out = [0u8; N];
    if let Some(bytes) = buf.get(offset..offset + N) {
        out.copy_from_slice(bytes);
    }
    out
}

fn le_u32(buf: &[u8], offset: usize) -> u32 {
    u32::from_le_bytes(field(buf, offset))
}

fn le_u64(buf: &[u8], offset: usize) -> u64 {
    u64::from_le_bytes(field(buf, offset))
}

impl BitmapSuper {
    /// Decodes the bitmap superblock at the start of `buf` with the kernel's load checks:
    /// magic, version 3..=5, chunk a power of two >= 512, daemon_sleep 1..=86400,
    /// write_behind <= 16383. The uuid is checked separately (`check_uuid`).
    pub fn decode(buf: &[u8]) -> Result<BitmapSuper, MetadataError> {
        if buf.len() < BITMAP_SUPER_BYTES {
            return Err(MetadataError::TooShort {
                what: "bitmap superblock",
                needed: BITMAP_SUPER_BYTES,
                got: buf.len(),
            });
        }
        let magic = le_u32(buf, OFF_MAGIC);
        if magic != BITMAP_MAGIC {
            return Err(MetadataError::BitmapBadMagic { found: magic });
        }
        let bitmap = BitmapSuper {
            version: le_u32(buf, OFF_VERSION),
            uuid: field(buf, OFF_UUID),
            events: le_u64(buf, OFF_EVENTS),
            events_cleared: le_u64(buf, OFF_EVENTS_CLEARED),
            sync_size_sectors: le_u64(buf, OFF_SYNC_SIZE),
            state: le_u32(buf, OFF_STATE),
            chunk_bytes: le_u32(buf, OFF_CHUNK),
            daemon_sleep_secs: le_u32(buf, OFF_DAEMON_SLEEP),
            write_behind: le_u32(buf, OFF_WRITE_BEHIND),
            sectors_reserved: le_u32(buf, OFF_SECTORS_RESERVED),
            nodes: le_u32(buf, OFF_NODES),
            cluster_name: field(buf, OFF_CLUSTER_NAME),
        };
        bitmap.validate()?;
        Ok(bitmap)
    }

    fn validate(&self) -> Result<(), MetadataError> {
        if !(3..=5).contains(&self.version) {
            return Err(MetadataError::BitmapBadVersion(self.version));
        }
        if self.chunk_bytes < 512 || !self.chunk_bytes.is_power_of_two() {
            return Err(MetadataError::BitmapBadChunk(self.chunk_bytes));
        }
        if !(1..=DAEMON_SLEEP_MAX_SECS).contains(&self.daemon_sleep_secs) {
            return Err(MetadataError::BitmapBadDaemonSleep(self.daemon_sleep_secs));
        }
        if self.write_behind > WRITE_BEHIND_MAX {
            return Err(MetadataError::BitmapBadWriteBehind(self.write_behind));
        }
        Ok(())
    }

    /// Refuses a bitmap that belongs to another array (md then ignores the bitmap).
    pub fn check_uuid(&self, array_uuid: &[u8; 16]) -> Result<(), MetadataError> {
        if &self.uuid != array_uuid {
            return Err(MetadataError::BitmapUuidMismatch {
                found: format_uuid(&self.uuid),
                expected: format_uuid(array_uuid),
            });
        }
        Ok(())
    }

    /// Encodes the 256-byte bitmap superblock (pad zeroed). In debug builds the bytes are
    /// decoded again and must pass the load checks and give back `self`.
    pub fn encode(&self) -> Vec<u8> {
        let mut buf = vec![0u8; BITMAP_SUPER_BYTES];
        let fields: [(usize, &[u8]); 13] = [
            (OFF_MAGIC, &BITMAP_MAGIC.to_le_bytes()),
            (OFF_VERSION, &self.version.to_le_bytes()),
            (OFF_UUID, &self.uuid),
            (OFF_EVENTS, &self.events.to_le_bytes()),
            (OFF_EVENTS_CLEARED, &self.events_cleared.to_le_bytes()),
            (OFF_SYNC_SIZE, &self.sync_size_sectors.to_le_bytes()),
            (OFF_STATE, &self.state.to_le_bytes()),
            (OFF_CHUNK, &self.chunk_bytes.to_le_bytes()),
            (OFF_DAEMON_SLEEP, &self.daemon_sleep_secs.to_le_bytes()),
            (OFF_WRITE_BEHIND, &self.write_behind.to_le_bytes()),
            (OFF_SECTORS_RESERVED, &self.sectors_reserved.to_le_bytes()),
            (OFF_NODES, &self.nodes.to_le_bytes()),
            (OFF_CLUSTER_NAME, &self.cluster_name),
        ];
        for (offset, bytes) in fields {
            buf[offset..offset + bytes.len()].copy_from_slice(bytes);
        }
        debug_assert_eq!(BitmapSuper::decode(&buf).as_ref(), Ok(self));
        buf
    }

    /// The whole bitmap area as mdadm writes it at create: the superblock, then every bit set
    /// (all chunks "may be out of sync") up to the 4 KiB-rounded size. The kernel ignores bits
    /// below resync_offset on a clean array, so this does not cause a resync by itself.
    pub fn encode_initial_area(&self) -> Vec<u8> {
        let total = bitmap_bytes_on_disk(self.nbits());
        let mut area = self.encode();
        // total >= 256 always; a bitmap larger than memory would have failed earlier.
        area.resize(usize::try_from(total).unwrap_or(BITMAP_SUPER_BYTES), 0xff);
        area
    }

    /// Bits in use: one per chunk of sync_size.
    pub fn nbits(&self) -> u64 {
        nbits(self.sync_size_sectors, u64::from(self.chunk_bytes))
    }

    /// Bytes the bitmap occupies on disk (superblock + bits, rounded to 4 KiB).
    pub fn bytes_on_disk(&self) -> u64 {
        bitmap_bytes_on_disk(self.nbits())
    }

    /// True when the STALE state bit is set (md resyncs everything).
    pub fn is_stale(&self) -> bool {
        self.state & BITMAP_STATE_STALE != 0
    }
}

/// Bits needed to cover `sync_size_sectors` with `chunk_bytes` per bit (a chunk below one
/// sector counts as one sector, so garbage input cannot divide by zero).
pub fn nbits(sync_size_sectors: u64, chunk_bytes: u64) -> u64 {
    let chunk_sectors = (chunk_bytes / 512).max(1);
    sync_size_sectors.div_ceil(chunk_sectors)
}

/// Bytes on disk for `nbits` bits: 256 + ceil(nbits/8), rounded up to 4 KiB (mdadm
/// `calc_bitmap_size`).
pub fn bitmap_bytes_on_disk(nbits: u64) -> u64 {
    let bytes = (BITMAP_SUPER_BYTES as u64).saturating_add(nbits.div_ceil(8));
    bytes
        .div_ceil(BITMAP_PAGE_BYTES)
        .saturating_mul(BITMAP_PAGE_BYTES)
}

/// mdadm's default chunk: the smallest power of two, at least 64 MiB, whose bits fit in
/// `space_bytes` together with the 256-byte superblock. None when even the largest chunk
/// the field can hold (2 GiB) does not fit.
pub fn choose_bitmap_chunk_bytes(sync_size_sectors: u64, space_bytes: u64) -> Option<u32> {
    let mut chunk_bytes = BITMAP_CHUNK_MIN_DEFAULT_BYTES;
    loop {
        let needed = (BITMAP_SUPER_BYTES as u64)
            .saturating_add(nbits(sync_size_sectors, u64::from(chunk_bytes)).div_ceil(8));
        if needed <= space_bytes {
            return Some(chunk_bytes);
        }
        chunk_bytes = chunk_bytes.checked_mul(2)?;
    }
}

/// The bitmap superblock for a new array: version 4, chunk from `choose_bitmap_chunk_bytes`
/// for `space_bytes`, events equal to the superblock's, daemon_sleep 5 s, no write-behind.
/// sync_size is the member size for RAID1/4/5/6 and the array size for RAID10; RAID0 (and
/// every other level) has no bitmap.
pub fn new_bitmap_superblock(
    sb: &Superblock,
    space_bytes: u64,
) -> Result<BitmapSuper, MetadataError> {
    let sync_size_sectors =
        bitmap_sync_size_sectors(sb).ok_or(MetadataError::NoBitmapForLevel(sb.level))?;
    let chunk_bytes = choose_bitmap_chunk_bytes(sync_size_sectors, space_bytes).ok_or(
        MetadataError::BitmapTooLarge {
            sync_size_sectors,
            space_bytes,
        },
    )?;
    Ok(BitmapSuper {
        version: BITMAP_VERSION_WRITTEN,
        uuid: sb.set_uuid,
        events: sb.events,
        events_cleared: sb.events,
        sync_size_sectors,
        state: 0,
        chunk_bytes,
        daemon_sleep_secs: 5,
        write_behind: 0,
        sectors_reserved: 0,
        nodes: 0,
        cluster_name: [0u8; 64],
    })
}

/// Byte index and mask of `bit` in a bit area, or an error when it is past the end.
fn locate(bits_len: usize, bit: u64) -> Result<(usize, u8), MetadataError> {
    let available = (bits_len as u64).saturating_mul(8);
    if bit >= available {
        return Err(MetadataError::BitOutOfRange { bit, available });
    }
    // bit < len * 8, so bit / 8 < len fits in usize.
    Ok(((bit / 8) as usize, 1u8 << (bit % 8)))
}

/// Sets `bit` in `bits` (the area after the 256-byte superblock). An out-of-range bit is an
/// error rather than ignored: a dropped write-intent bit would lose a resync after a crash.
pub fn set_bit(bits: &mut [u8], bit: u64) -> Result<(), MetadataError> {
    let (index, mask) = locate(bits.len(), bit)?;
    bits[index] |= mask;
    Ok(())
}

/// Clears `bit` in `bits`.
pub fn clear_bit(bits: &mut [u8], bit: u64) -> Result<(), MetadataError> {
    let (index, mask) = locate(bits.len(), bit)?;
    bits[index] &= !mask;
    Ok(())
}

/// Whether `bit` is set in `bits`.
pub fn test_bit(bits: &[u8], bit: u64) -> Result<bool, MetadataError> {
    let (index, mask) = locate(bits.len(), bit)?;
    Ok(bits[index] & mask != 0)
}

/// Set bits among the first `nbits` bits (bits past the area count as clear). The padding
/// after the last chunk is usually all ones (mdadm fills it), so it must not be counted.
pub fn count_bits(bits: &[u8], nbits: u64) -> u64 {
    let whole_bytes = usize::try_from(nbits / 8)
        .unwrap_or(usize::MAX)
        .min(bits.len());
    let mut count: u64 = bits[..whole_bytes]
        .iter()
        .map(|byte| u64::from(byte.count_ones()))
        .sum();
    let tail_bits = nbits % 8;
    if tail_bits != 0 {
        if let Some(byte) = bits.get(whole_bytes) {
            let mask = (1u8 << tail_bits) - 1;
            count += u64::from((byte & mask).count_ones());
        }
    }
    count
}
