//! Read errors on a redundant array are repaired, not fatal (md's behaviour).
//!
//! A member that answers a read with an I/O error (a bad sector, not a vanished device) stays
//! in the array: the data is rebuilt from redundancy, handed to the client, and written back
//! to that member so the drive can remap the sector. Each repair is counted in the member's
//! `cnt_corrected_read`; after [`MAX_CORRECTED_READS`] repairs, or when the rewrite itself
//! fails, the member is failed like any other.

use std::rc::Rc;

use super::events::Event;
use super::slots::{Disk, SlotGone};
use super::Array;
use crate::buf::BufSlice;

/// md's default max_corrected_read_errors.
pub const MAX_CORRECTED_READS: u32 = 20;

/// Why a correctable read did not deliver data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReadMiss {
    /// The member is gone (or was never there): use redundancy, nothing to repair.
    Gone,
    /// The member is there but this range failed: use redundancy, then repair it.
    Bad,
    /// The range is in the member's bad-block log: use redundancy, then write it (not a new
    /// read error, so not counted).
    Recorded,
}

impl Array {
    /// Like `read_slot`, but an I/O error on a redundant array leaves the member in place and
    /// reports `Bad` so the caller can repair the range with [`Array::repair_range`].
    pub(super) async fn read_slot_correctable(
        &self,
        slot: usize,
        member_offset: u64,
        buf: BufSlice,
    ) -> Result<(), ReadMiss> {
        let Some(disk) = self.active_disk(slot) else {
            return Err(ReadMiss::Gone);
        };
        if disk.has_bad(member_offset, buf.len() as u64) {
            // Recorded bad: redundancy answers and the repair writes the range (clearing the
            // record) when it can.
            return Err(ReadMiss::Recorded);
        }
        match disk
            .member
            .read(disk.data_offset + member_offset, buf)
            .await
        {
            Ok(()) => Ok(()),
            // RAID0 too: the caller finds no other copy and answers EIO, as md's raid0 does,
            // without taking the whole array down for one sector.
            Err(e) if is_media_error(&e) => {
                tracing::warn!(array = %self.name, slot, member = disk.member.path(), "read error at data offset {member_offset}: {e}; rebuilding the range from redundancy");
                Err(ReadMiss::Bad)
            }
            Err(e) => {
                let _: SlotGone = self
                    .slot_failed(slot, &disk, "read", member_offset, e)
                    .await;
                Err(ReadMiss::Gone)
            }
        }
    }

    /// Why `slot` could not deliver `len` bytes at `member_offset` that `read_slot` refused:
    /// a range in its bad-block log (rewriting it is no corrected read error) or a new one.
    pub(crate) fn miss_kind(&self, slot: usize, member_offset: u64, len: u64) -> ReadMiss {
        match self.active_disk(slot) {
            Some(d) if d.has_bad(member_offset, len) => ReadMiss::Recorded,
            Some(_) => ReadMiss::Bad,
            None => ReadMiss::Gone,
        }
    }

    /// Writes reconstructed `data` back over a range that failed to read (`miss`), and counts
    /// it when it was a read error.
    pub(crate) async fn repair_range(
        &self,
        slot: usize,
        member_offset: u64,
        data: BufSlice,
        miss: ReadMiss,
    ) {
        let Some(disk) = self.active_disk(slot) else {
            return;
        };
        if self.read_only {
            return; // nothing is written to a read-only array; the data was answered anyway
        }
        if self
            .write_slot(slot, member_offset, data, false)
            .await
            .is_err()
        {
            return; // write_slot failed the member already
        }
        if miss != ReadMiss::Bad {
            return;
        }
        let count = self.count_corrected(&disk);
        self.emit(Event::ReadErrorCorrected {
            slot,
            member: disk.member.path().to_string(),
            corrected: count,
        });
        if count > MAX_CORRECTED_READS {
            let e = std::io::Error::other(format!(
                "more than {MAX_CORRECTED_READS} corrected read errors"
            ));
            let _ = self
                .slot_failed(slot, &disk, "read", member_offset, e)
                .await;
        }
    }

    fn count_corrected(&self, disk: &Rc<Disk>) -> u32 {
        let mut disks = self.meta.disks.borrow_mut();
        let Some(m) = disks.iter_mut().find(|m| Rc::ptr_eq(&m.disk, disk)) else {
            return 0;
        };
        m.sb.cnt_corrected_read = m.sb.cnt_corrected_read.saturating_add(1);
        m.sb.cnt_corrected_read
    }
}

/// A media error (the range is bad) as opposed to a device that went away.
pub(super) fn is_media_error(e: &std::io::Error) -> bool {
    !matches!(
        e.raw_os_error(),
        Some(libc::ENODEV) | Some(libc::ENXIO) | Some(libc::ENOENT) | Some(libc::EBADF)
    )
}
