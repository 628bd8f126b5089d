//! Reading a member's metadata for people: what `raidctl examine` prints.
//!
//! Unlike assembly this never refuses: a bad checksum is reported (as mdadm does), a bitmap or
//! extension block that does not decode is shown as such. Devices are opened read-only and
//! without a claim, so a member of a running array can be examined.

use crate::buf::AlignedBuf;
use crate::error::{Error, Result};
use crate::member::{FileMember, Member, OpenOptions};
use crate::metadata::{
    extension_offset_sectors, BitmapSuper, ExamineReport, Extension, Superblock,
    FEATURE_BITMAP_OFFSET, MD_SB_MAGIC,
};

const SB_OFFSET: u64 = 4096;

/// The report for `path`, or None when it carries no md superblock.
pub fn examine_device(path: &str) -> Result<Option<ExamineReport>> {
    let dev = FileMember::open(
        path,
        OpenOptions {
            read_only: true,
            no_claim: true,
        },
    )?;
    let size = dev.size_bytes();
    if size < SB_OFFSET + 4096 {
        return Ok(None);
    }
    let mut buf = AlignedBuf::zeroed(4096);
    dev.read_exact_at(&mut buf, SB_OFFSET)?;
    let magic = u32::from_le_bytes(buf.as_slice()[..4].try_into().expect("4 bytes"));
    if magic != MD_SB_MAGIC {
        return Ok(None);
    }
    let (sb, checksum) = Superblock::decode_unchecked(buf.as_slice()).map_err(|e| {
        Error::new(
            crate::ErrorKind::Corrupt,
            format!("{path}: unreadable md superblock: {e}"),
        )
    })?;
    let bitmap = if sb.has_feature(FEATURE_BITMAP_OFFSET) {
        read_at(
            &dev,
            SB_OFFSET as i64 + sb.bitmap_offset_sectors as i64 * 512,
            512,
        )
        .and_then(|b| BitmapSuper::decode(b.as_slice()).ok())
        .filter(|b| b.check_uuid(&sb.set_uuid).is_ok())
    } else {
        None
    };
    let mut extension_error = None;
    let extension = match extension_offset_sectors(&sb, bitmap.as_ref()) {
        Ok(at) => match read_at(&dev, (at * 512) as i64, 4096)
            .map(|b| Extension::decode(b.as_slice(), &sb.set_uuid))
        {
            Some(Ok(ext)) => ext,
            Some(Err(e)) => {
                extension_error = Some(e);
                None
            }
            None => None,
        },
        Err(_) => None,
    };
    let mut report = ExamineReport::new(
        path,
        size,
        &sb,
        checksum,
        bitmap.as_ref(),
        extension.as_ref(),
    );
    if let Some(e) = extension_error {
        report = report.with_extension_error(&e);
    }
    Ok(Some(report))
}

fn read_at(dev: &FileMember, offset: i64, len: usize) -> Option<AlignedBuf> {
    if offset < 0 || offset as u64 + len as u64 > dev.size_bytes() {
        return None;
    }
    let mut buf = AlignedBuf::zeroed(len);
    dev.read_exact_at(&mut buf, offset as u64).ok()?;
    Some(buf)
}
