//! Creating an array: md v1.2 superblocks, bitmap, bad-block log and our extension block on
//! every member, laid out as mdadm lays them out.
//!
//! Everything is checked before the first byte is written. Each member gets its metadata areas
//! first and its superblock last, so an interrupted create leaves no member that looks valid.

use std::rc::Rc;

use futures::future::join_all;

use crate::buf::AlignedBuf;
use crate::error::{Error, ErrorKind, Result};
use crate::layout::{used_dev_bytes, Geometry, LayoutKind, Level};
use crate::member::Member;
use crate::metadata::{
    create_bitmap_superblock, default_data_offset_sectors, extension_offset_sectors, format_uuid,
    new_member_superblock, CreateParams, Extension, Role, Superblock, FEATURE_RAID0_LAYOUT,
};
use crate::raid::meta::SUPERBLOCK_OFFSET_BYTES;

/// What to create.
#[derive(Clone, Debug)]
pub struct CreateOptions {
    pub name: String,
    pub kind: LayoutKind,
    /// Chunk size in bytes (ignored for RAID1).
    pub chunk_bytes: u64,
    /// Internal write-intent bitmap (not for RAID0).
    pub bitmap: bool,
    /// Bytes per bitmap bit (None: mdadm's default, at least 64 MiB).
    pub bitmap_chunk_bytes: Option<u32>,
    /// Declare the members consistent: no initial sync.
    pub assume_clean: bool,
    /// Overwrite members that belong to another array.
    pub force: bool,
    /// Every member is new, all-zero storage: consistent without a sync.
    pub fresh: bool,
    /// Share hot spares with the other arrays of this group (kept in the extension block).
    pub spare_group: Option<String>,
}

impl CreateOptions {
    /// mdadm's defaults: 512 KiB chunks, an internal bitmap with mdadm's bit size, an initial
    /// sync, no overwriting of another array's members, no spare group.
    pub fn new(name: &str, kind: LayoutKind) -> CreateOptions {
        CreateOptions {
            name: name.into(),
            kind,
            chunk_bytes: 512 << 10,
            bitmap: true,
            bitmap_chunk_bytes: None,
            assume_clean: false,
            force: false,
            fresh: false,
            spare_group: None,
        }
    }
}

/// What was created.
#[derive(Clone, Debug)]
pub struct CreatedArray {
    pub uuid: [u8; 16],
    pub uuid_text: String,
    pub size_bytes: u64,
    pub chunk_bytes: u64,
    pub data_offset_bytes: u64,
    /// The members held data before: redundancy must be made consistent by a resync.
    pub needs_sync: bool,
}

const SECTOR: u64 = 512;

/// Writes superblocks for a new array on `members` (in slot order) and `spares`.
pub async fn create(
    members: &[Rc<dyn Member>],
    spares: &[Rc<dyn Member>],
    opts: &CreateOptions,
) -> Result<CreatedArray> {
    let all: Vec<Rc<dyn Member>> = members.iter().chain(spares).cloned().collect();
    if !opts.force {
        refuse_members_of_other_arrays(&all).await?;
    }
    let level = opts.kind.level();
    let chunk_bytes = if level == Level::Raid1 {
        0
    } else {
        opts.chunk_bytes
    };
    let chunk_sectors = (chunk_bytes / SECTOR) as u32;
    let first_sectors = members[0].size_bytes() / SECTOR;
    let data_offset_sectors = default_data_offset_sectors(first_sectors, chunk_sectors);
    let data_offset = data_offset_sectors * SECTOR;
    check_minimum_size(&all, data_offset + chunk_bytes.max(64 << 10) + 4096)?;
    let avail: Vec<u64> = members
        .iter()
        .map(|m| (m.size_bytes() - data_offset) / SECTOR * SECTOR)
        .collect();
    let smallest = *avail.iter().min().expect("at least one member");
    let used = used_dev_bytes(level, chunk_bytes, smallest);
    let member_bytes: Vec<u64> = if level == Level::Raid0 {
        avail.clone()
    } else {
        vec![used; members.len()]
    };
    let geo = Geometry::new(opts.kind.clone(), chunk_bytes, &member_bytes).map_err(Error::from)?;
    for s in spares {
        if s.size_bytes().saturating_sub(data_offset) < used {
            return Err(Error::invalid(format!(
                "spare {} is too small: it needs at least {} bytes to replace a member",
                s.path(),
                data_offset + used
            )));
        }
    }
    let needs_sync = !(opts.assume_clean || opts.fresh || level == Level::Raid0);
    let params = create_params(
        opts,
        members.len(),
        all.len(),
        used,
        data_offset_sectors,
        needs_sync,
    );
    let uuid = params.uuid;
    write_all_metadata(&all, &params, opts).await?;
    Ok(CreatedArray {
        uuid,
        uuid_text: format_uuid(&uuid),
        size_bytes: geo.array_bytes(),
        chunk_bytes,
        data_offset_bytes: data_offset,
        needs_sync,
    })
}

/// Without `--force`, a device that already carries an md superblock is not ours to take.
async fn refuse_members_of_other_arrays(all: &[Rc<dyn Member>]) -> Result<()> {
    for m in all {
        if let Some(sb) = read_superblock(m.as_ref()).await? {
            return Err(Error::new(
                ErrorKind::Busy,
                format!(
                    "{} already belongs to array {} (UUID {}): use --force to overwrite it",
                    m.path(),
                    sb.array_name(),
                    format_uuid(&sb.set_uuid)
                ),
            ));
        }
    }
    Ok(())
}

fn check_minimum_size(all: &[Rc<dyn Member>], min_bytes: u64) -> Result<()> {
    for m in all {
        if m.size_bytes() < min_bytes {
            return Err(Error::invalid(format!(
                "{} is too small ({} bytes): members need at least {} bytes here",
                m.path(),
                m.size_bytes(),
                min_bytes
            )));
        }
    }
    Ok(())
}

/// What every new member's superblock is made from: `members` active slots, then spares.
fn create_params(
    opts: &CreateOptions,
    members: usize,
    all: usize,
    used: u64,
    data_offset_sectors: u64,
    needs_sync: bool,
) -> CreateParams {
    let level = opts.kind.level();
    let raid0 = level == Level::Raid0;
    CreateParams {
        name: md_name(&opts.name),
        uuid: random_bytes(),
        level: level.to_md(),
        layout: opts.kind.md_layout(),
        chunk_sectors: if level == Level::Raid1 {
            0
        } else {
            (opts.chunk_bytes / SECTOR) as u32
        },
        raid_disks: members as u32,
        roles: (0..all)
            .map(|i| match i < members {
                true => Role::Active(i as u16),
                false => Role::Spare,
            })
            .collect(),
        // md records no per-member size for RAID0; its zones come from each member's data_size.
        size_sectors: if raid0 { 0 } else { used / SECTOR },
        data_offset_sectors,
        bitmap: opts.bitmap && !raid0,
        bitmap_chunk_bytes: opts.bitmap_chunk_bytes,
        resync_offset: if needs_sync { 0 } else { u64::MAX },
        ctime_secs: unix_now(),
        extra_features: if raid0 { FEATURE_RAID0_LAYOUT } else { 0 },
    }
}

/// Every member's superblock and metadata areas, written in parallel.
async fn write_all_metadata(
    all: &[Rc<dyn Member>],
    params: &CreateParams,
    opts: &CreateOptions,
) -> Result<()> {
    let mut superblocks = Vec::new();
    for (i, m) in all.iter().enumerate() {
        let sb = new_member_superblock(params, i as u32, m.size_bytes() / SECTOR, random_bytes())
            .map_err(|e| Error::metadata(m.path(), e))?;
        superblocks.push(sb);
    }
    let results = join_all(all.iter().zip(&superblocks).map(|(m, sb)| {
        write_member_metadata(
            m.as_ref(),
            sb,
            opts.bitmap_chunk_bytes,
            opts.spare_group.as_deref(),
        )
    }))
    .await;
    results.into_iter().collect()
}

/// Metadata areas, then the superblock, then a flush.
pub(super) async fn write_member_metadata(
    m: &dyn Member,
    sb: &Superblock,
    bitmap_chunk_bytes: Option<u32>,
    spare_group: Option<&str>,
) -> Result<()> {
    let ctx = |what: &str| format!("writing {what} to {}", m.path());
    zero_foreign_superblocks(m).await?;
    let bitmap = if sb.bitmap_offset_sectors != 0 {
        let bsb = create_bitmap_superblock(sb, bitmap_chunk_bytes).map_err(Error::from)?;
        let area = AlignedBuf::from_slice(&bsb.encode_initial_area());
        let at = SUPERBLOCK_OFFSET_BYTES as i64 + sb.bitmap_offset_sectors as i64 * SECTOR as i64;
        m.write(at as u64, area.into_shared(), false)
            .await
            .map_err(|e| Error::io(ctx("the bitmap"), e))?;
        Some(bsb)
    } else {
        None
    };
    if sb.bblog_size_sectors != 0 && sb.bblog_offset_sectors != 0 {
        // An empty bad-block log is all ones.
        let mut log = AlignedBuf::zeroed(sb.bblog_size_sectors as usize * SECTOR as usize);
        log.as_mut_slice().fill(0xff);
        let at = SUPERBLOCK_OFFSET_BYTES as i64 + sb.bblog_offset_sectors as i64 * SECTOR as i64;
        m.write(at as u64, log.into_shared(), false)
            .await
            .map_err(|e| Error::io(ctx("the bad-block log"), e))?;
    }
    let ext_at = extension_offset_sectors(sb, bitmap.as_ref()).map_err(Error::from)? * SECTOR;
    let ext = Extension {
        created_by: format!("raidctl {}", env!("CARGO_PKG_VERSION")),
        spare_group: spare_group.map(str::to_string),
        ..Default::default()
    };
    let block = ext.encode(&sb.set_uuid).map_err(Error::from)?;
    m.write(ext_at, AlignedBuf::from_slice(&block).into_shared(), false)
        .await
        .map_err(|e| Error::io(ctx("the extension block"), e))?;
    m.write(
        SUPERBLOCK_OFFSET_BYTES,
        AlignedBuf::from_slice(&sb.encode()).into_shared(),
        false,
    )
    .await
    .map_err(|e| Error::io(ctx("the superblock"), e))?;
    m.flush()
        .await
        .map_err(|e| Error::io(format!("flushing {}", m.path()), e))
}

/// Other md superblock positions (0.90 and 1.0 near the end, 1.1 at the start) are zeroed when
/// they hold md's magic, so `mdadm --examine` cannot pick up an older array there.
async fn zero_foreign_superblocks(m: &dyn Member) -> Result<()> {
    let size = m.size_bytes();
    let mut spots = vec![0u64];
    if size >= 128 << 10 {
        spots.push((size & !(64 * 1024 - 1)) - 64 * 1024); // 0.90
    }
    if size >= 16 * SECTOR {
        spots.push(((size / SECTOR - 16) & !7) * SECTOR); // 1.0
    }
    for at in spots {
        let buf = AlignedBuf::zeroed(4096).into_shared();
        m.read(at, buf.clone())
            .await
            .map_err(|e| Error::io(format!("reading {}", m.path()), e))?;
        let magic = u32::from_le_bytes(buf.bytes()[..4].try_into().expect("4 bytes"));
        if magic == crate::metadata::MD_SB_MAGIC {
            m.write(at, AlignedBuf::zeroed(4096).into_shared(), false)
                .await
                .map_err(|e| Error::io(format!("clearing an old superblock on {}", m.path()), e))?;
        }
    }
    Ok(())
}

/// The superblock at byte 4096, if there is a valid one.
pub(super) async fn read_superblock(m: &dyn Member) -> Result<Option<Superblock>> {
    if m.size_bytes() < SUPERBLOCK_OFFSET_BYTES + 4096 {
        return Ok(None);
    }
    let buf = AlignedBuf::zeroed(4096).into_shared();
    m.read(SUPERBLOCK_OFFSET_BYTES, buf.clone())
        .await
        .map_err(|e| Error::io(format!("reading the superblock of {}", m.path()), e))?;
    Ok(Superblock::decode(buf.bytes()).ok())
}

/// mdadm stores "homehost:name" when it fits in 32 bytes.
fn md_name(name: &str) -> String {
    let host = hostname();
    let full = format!("{host}:{name}");
    if !host.is_empty() && full.len() < 32 {
        full
    } else {
        name.to_string()
    }
}

fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into our stack buffer.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr() as *mut libc::c_char, buf.len()) };
    if rc != 0 {
        return String::new();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end])
        .split('.')
        .next()
        .unwrap_or("")
        .to_string()
}

pub(crate) fn random_bytes() -> [u8; 16] {
    let mut out = [0u8; 16];
    // SAFETY: getrandom fills at most out.len() bytes of our array.
    let n = unsafe { libc::getrandom(out.as_mut_ptr() as *mut libc::c_void, out.len(), 0) };
    if n != out.len() as isize {
        // Fall back on time and pid: uniqueness, not secrecy, is what a UUID needs here.
        let seed = unix_now() as u128
            ^ ((std::process::id() as u128) << 64)
            ^ std::time::Instant::now().elapsed().as_nanos();
        out = seed.to_le_bytes();
    }
    out
}

pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
