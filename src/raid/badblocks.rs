//! Bad blocks on the engine's side (md's bad-block log; the format is in
//! [`crate::metadata::BadBlocks`]).
//!
//! A range is recorded on a member when its data cannot be had: a rebuild or a check could
//! not reconstruct it (two unreadable copies of one stripe), so the member being rebuilt never
//! got those bytes. Recorded ranges are never read as data (`read_slot` treats them as
//! unreadable, so redundancy answers or the read fails with EIO), and a successful write over
//! them clears them. The record is on disk (log area, then the superblock's BAD_BLOCKS bit)
//! before anything relies on it; a member whose record cannot be written is failed, as md
//! does. Read errors alone never fail a member on a redundant array: only write errors, too
//! many corrected reads or a vanished device do.

use std::rc::Rc;

use super::slots::Disk;
use super::Array;
use crate::buf::AlignedBuf;
use crate::error::{Error, ErrorKind, Result};
use crate::metadata::{BadBlocks, Superblock, FEATURE_BAD_BLOCKS};

use super::meta::SUPERBLOCK_OFFSET_BYTES;

const SECTOR: u64 = 512;

/// Where a member's bad-block log lives (byte offset, bytes), if it has one.
pub(super) fn log_area(sb: &Superblock) -> Option<(u64, usize)> {
    if sb.bblog_offset_sectors == 0 || sb.bblog_size_sectors == 0 {
        return None;
    }
    let at = SUPERBLOCK_OFFSET_BYTES as i64 + i64::from(sb.bblog_offset_sectors) * SECTOR as i64;
    (at > 0).then_some((
        at as u64,
        usize::from(sb.bblog_size_sectors) * SECTOR as usize,
    ))
}

/// Reads a member's bad-block log at assembly (md's arrays and ours alike).
pub(crate) async fn load(disk: &Disk, sb: &Superblock) -> Result<()> {
    let Some((at, bytes)) = log_area(sb).filter(|_| sb.has_feature(FEATURE_BAD_BLOCKS)) else {
        return Ok(());
    };
    let buf = AlignedBuf::zeroed(bytes).into_shared();
    disk.member.read(at, buf.clone()).await.map_err(|e| {
        Error::io(
            format!("reading the bad-block log of {}", disk.member.path()),
            e,
        )
    })?;
    let list = BadBlocks::decode(buf.bytes(), sb.bblog_shift).map_err(|e| {
        Error::new(
            ErrorKind::Inconsistent,
            format!("{}: bad-block log: {e}", disk.member.path()),
        )
    })?;
    if !list.is_empty() {
        tracing::warn!(
            member = disk.member.path(),
            "{} sectors recorded bad in {} ranges: they are read from redundancy or fail with EIO",
            list.sectors(),
            list.ranges().len()
        );
    }
    *disk.bad.borrow_mut() = list;
    Ok(())
}

impl Array {
    /// Records `len` bytes at `member_offset` of `disk`'s data area as bad, on disk. False
    /// when the member cannot keep the record (no log, log full, write error): the caller
    /// must then not use the member for that data (md fails it).
    pub(crate) async fn record_bad(&self, disk: &Rc<Disk>, member_offset: u64, len: u64) -> bool {
        let start = (disk.data_offset + member_offset) / SECTOR;
        if !disk.bad.borrow_mut().add(start, len.div_ceil(SECTOR)) {
            return true;
        }
        tracing::error!(array = %self.name, member = disk.member.path(), "unrecoverable: data offset {member_offset}+{len} recorded in the bad-block log; reads of it fail with EIO until it is written");
        self.emit(super::events::Event::BadBlocksRecorded {
            member: disk.member.path().to_string(),
            offset: member_offset,
            bytes: len,
        });
        if self.read_only {
            return true; // known for this run; a read-only array writes nothing
        }
        match self.persist_bad(disk).await {
            Ok(()) => true,
            Err(e) => {
                tracing::error!(array = %self.name, member = disk.member.path(), "{e}");
                false
            }
        }
    }

    /// After a write of `len` bytes at `member_offset` reached `disk`: the sectors it covered
    /// hold data again.
    pub(super) async fn clear_bad_after_write(
        &self,
        disk: &Rc<Disk>,
        member_offset: u64,
        len: u64,
    ) {
        let start = (disk.data_offset + member_offset).div_ceil(SECTOR);
        let end = (disk.data_offset + member_offset + len) / SECTOR;
        if end <= start || !disk.bad.borrow_mut().clear(start, end - start) {
            return;
        }
        tracing::info!(array = %self.name, member = disk.member.path(), "data offset {member_offset}+{len} written: no longer recorded bad");
        if let Err(e) = self.persist_bad(disk).await {
            tracing::error!(array = %self.name, "{e}");
        }
    }

    /// Writes `disk`'s list into its log area, then its superblock's BAD_BLOCKS bit.
    async fn persist_bad(&self, disk: &Rc<Disk>) -> Result<()> {
        let _meta = self.meta_lock.lock().await;
        let list = disk.bad.borrow().clone();
        let (area, shift) = {
            let mut disks = self.meta.disks.borrow_mut();
            let Some(m) = disks.iter_mut().find(|m| Rc::ptr_eq(&m.disk, disk)) else {
                return Err(Error::invalid(format!(
                    "{} has no metadata entry",
                    disk.member.path()
                )));
            };
            if list.is_empty() {
                m.sb.feature_map &= !FEATURE_BAD_BLOCKS;
            } else {
                m.sb.feature_map |= FEATURE_BAD_BLOCKS;
            }
            (log_area(&m.sb), m.sb.bblog_shift)
        };
        let (at, bytes) = area.ok_or_else(|| {
            Error::new(
                ErrorKind::Unsupported,
                format!(
                    "{} has no bad-block log to record unreadable sectors in",
                    disk.member.path()
                ),
            )
        })?;
        let encoded = list.encode(bytes, shift).map_err(|e| {
            Error::new(
                ErrorKind::Inconsistent,
                format!("{}: {e}", disk.member.path()),
            )
        })?;
        disk.member
            .write(at, AlignedBuf::from_slice(&encoded).into_shared(), true)
            .await
            .map_err(|e| {
                Error::io(
                    format!("writing the bad-block log of {}", disk.member.path()),
                    e,
                )
            })?;
        self.write_all_superblocks().await
    }

    /// Every member's recorded bad ranges, as (path, [(data-area byte offset, bytes)]).
    pub fn bad_blocks(&self) -> Vec<(String, Vec<(u64, u64)>)> {
        self.meta
            .disks
            .borrow()
            .iter()
            .filter(|m| !m.disk.bad.borrow().is_empty())
            .map(|m| {
                let d = &m.disk;
                let ranges = d
                    .bad
                    .borrow()
                    .ranges()
                    .iter()
                    .map(|&(s, l)| ((s * SECTOR).saturating_sub(d.data_offset), l * SECTOR))
                    .collect();
                (d.member.path().to_string(), ranges)
            })
            .collect()
    }
}
