//! RAID0, RAID1 and RAID10: every array byte has `copies` places and no parity.
//!
//! Reads pick one copy per piece (spreading requests over the copies) and fall back on the
//! others when a member fails. Writes go to every active copy; a piece is lost only when no
//! copy took it. Consecutive pieces that land contiguously on the same member and come from
//! contiguous buffer bytes (all of RAID1) are merged into one member I/O.

use futures::future::join_all;

use super::slots::SlotGone;
use super::Array;
use crate::buf::BufSlice;
use crate::error::Result;
use crate::layout::Level;

/// One member I/O: `len` bytes at `member_offset` of `slot`, from buffer offset `buf_offset`.
#[derive(Clone, Copy, Debug)]
struct Extent {
    slot: usize,
    member_offset: u64,
    buf_offset: u64,
    len: u64,
}

/// Requests are spread over the copies in units of this many array bytes.
const READ_BALANCE_BYTES: u64 = 1 << 20;

/// Largest single member I/O the merger builds (keeps big requests parallel across members).
const MAX_MERGED_BYTES: u64 = 4 << 20;

impl Array {
    /// Extents for copy `copy_index` of every piece of the request, merged where contiguous.
    /// With `active_only`, a piece whose chosen copy sits on an inactive member uses the next
    /// active copy instead (so a degraded mirror does not fail every read first).
    fn copy_extents(
        &self,
        offset: u64,
        len: u64,
        copy_index: usize,
        active_only: bool,
    ) -> Vec<Extent> {
        let mut out: Vec<Extent> = Vec::new();
        for piece in self.geo.pieces(offset, len) {
            let copies = self.geo.map_copies(piece.array_offset);
            let all = copies.as_slice();
            let mut place = all[copy_index];
            if active_only && !self.is_slot_active(place.slot) {
                let n = all.len();
                if let Some(alt) = (1..n)
                    .map(|i| all[(copy_index + i) % n])
                    .find(|p| self.is_slot_active(p.slot))
                {
                    place = alt;
                }
            }
            let ext = Extent {
                slot: place.slot,
                member_offset: place.member_offset,
                buf_offset: piece.array_offset - offset,
                len: piece.len,
            };
            if let Some(last) = out.last_mut() {
                if last.slot == ext.slot
                    && last.member_offset + last.len == ext.member_offset
                    && last.buf_offset + last.len == ext.buf_offset
                    && last.len + ext.len <= MAX_MERGED_BYTES
                {
                    last.len += ext.len;
                    continue;
                }
            }
            out.push(ext);
        }
        out
    }

    pub(super) async fn read_striped(&self, offset: u64, buf: BufSlice) -> Result<()> {
        let len = buf.len() as u64;
        if len == 0 {
            return Ok(());
        }
        let copies = self.geo.copies();
        // Beyond the sync point copies may differ: always read the first one, as md does.
        let preferred = if self.sync_offset.get() == u64::MAX {
            ((offset / READ_BALANCE_BYTES) % copies as u64) as usize
        } else {
            0
        };
        let first_try = self.copy_extents(offset, len, preferred, true);
        let results = join_all(first_try.iter().map(|e| {
            let part = buf.slice(e.buf_offset as usize, e.len as usize);
            self.read_slot_correctable(e.slot, e.member_offset, part)
        }))
        .await;
        // Pieces whose preferred copy failed: retry piece by piece on the other copies, then
        // repair a copy that had a bad range (it is still a member).
        for (ext, result) in first_try.iter().zip(results) {
            let Err(miss) = result else { continue };
            self.count(|c| c.degraded_reads += 1);
            let part = buf.slice(ext.buf_offset as usize, ext.len as usize);
            let at = offset + ext.buf_offset;
            if miss == super::correct::ReadMiss::Gone {
                self.read_from_any_copy(at, part, Some(ext.slot)).await?;
                continue;
            }
            // The good copy is read and the bad one rewritten under the stripe locks, as
            // writes hold them: else a write could land on both copies between our read and
            // our repair, and the repair would put the old bytes back on one of them.
            let unit = self.geo.stripe_bytes();
            let _guards = self
                .locks
                .lock_range(at / unit..(at + ext.len - 1) / unit + 1)
                .await;
            self.read_from_any_copy(at, part.clone(), Some(ext.slot))
                .await?;
            self.repair_range(ext.slot, ext.member_offset, part, miss)
                .await;
        }
        Ok(())
    }

    /// Reads `buf.len()` bytes at array `offset`, piece by piece, from the first copy that works
    /// (failed members are inactive by now, so they are skipped at once).
    async fn read_from_any_copy(
        &self,
        offset: u64,
        buf: BufSlice,
        skip: Option<usize>,
    ) -> Result<()> {
        for piece in self.geo.pieces(offset, buf.len() as u64) {
            let part = buf.slice((piece.array_offset - offset) as usize, piece.len as usize);
            if !self.read_a_copy(piece.array_offset, part, skip).await {
                return Err(self.lost_error(piece.array_offset));
            }
        }
        Ok(())
    }

    /// Reads one piece (inside a chunk) at `array_offset` from the first copy other than
    /// `skip`'s that answers; false when none does.
    pub(crate) async fn read_a_copy(
        &self,
        array_offset: u64,
        part: BufSlice,
        skip: Option<usize>,
    ) -> bool {
        for place in self.geo.map_copies(array_offset).iter() {
            if Some(place.slot) != skip
                && self
                    .read_slot(place.slot, place.member_offset, part.clone())
                    .await
                    .is_ok()
            {
                return true;
            }
        }
        false
    }

    pub(super) async fn write_striped(&self, offset: u64, data: BufSlice, fua: bool) -> Result<()> {
        let len = data.len() as u64;
        // RAID0 has one copy: nothing can diverge, so no stripe lock is needed.
        let _guards = if self.geo.level() == Level::Raid0 {
            Vec::new()
        } else {
            let unit = self.geo.stripe_bytes();
            self.locks
                .lock_range(offset / unit..(offset + len - 1) / unit + 1)
                .await
        };
        let mut extents = Vec::new();
        for copy in 0..self.geo.copies() {
            extents.extend(
                self.copy_extents(offset, len, copy, false)
                    .into_iter()
                    .map(|e| (copy, e)),
            );
        }
        let results = join_all(extents.iter().map(|(_, e)| {
            self.write_slot(
                e.slot,
                e.member_offset,
                data.slice(e.buf_offset as usize, e.len as usize),
                fua,
            )
        }))
        .await;
        self.check_every_piece_landed(offset, len, &extents, &results)
    }

    /// A write succeeded if every byte reached at least one copy.
    fn check_every_piece_landed(
        &self,
        offset: u64,
        len: u64,
        extents: &[(usize, Extent)],
        results: &[std::result::Result<(), SlotGone>],
    ) -> Result<()> {
        if self.failed.get() {
            return Err(self.failed_error());
        }
        // Without a failed array, a byte is lost only if all of its copies failed; check each
        // piece against the successful extents.
        for piece in self.geo.pieces(offset, len) {
            let at = piece.array_offset - offset;
            let landed = extents
                .iter()
                .zip(results)
                .any(|((_, e), r)| r.is_ok() && e.buf_offset <= at && at < e.buf_offset + e.len);
            if !landed {
                return Err(self.lost_error(piece.array_offset));
            }
        }
        Ok(())
    }

    pub(super) async fn zero_striped(&self, offset: u64, len: u64, discard: bool) -> Result<()> {
        // Lock and zero in batches so a whole-device trim neither allocates a lock per chunk at
        // once nor stalls other requests for long.
        const BATCH_BYTES: u64 = 64 << 20;
        let unit = self.geo.stripe_bytes();
        let mut at = offset;
        let end = offset + len;
        while at < end {
            let batch_end = end.min((at / BATCH_BYTES + 1) * BATCH_BYTES);
            let _guards = if self.geo.level() == Level::Raid0 {
                Vec::new()
            } else {
                self.locks
                    .lock_range(at / unit..(batch_end - 1) / unit + 1)
                    .await
            };
            let ranges = self.member_ranges(at, batch_end - at);
            let results = join_all(
                ranges
                    .iter()
                    .map(|&(slot, moff, mlen)| self.zero_slot(slot, moff, mlen, discard)),
            )
            .await;
            drop(results);
            if self.failed.get() {
                return Err(self.failed_error());
            }
            at = batch_end;
        }
        Ok(())
    }

    /// Every (slot, member_offset, len) holding any copy of the range, merged per slot.
    fn member_ranges(&self, offset: u64, len: u64) -> Vec<(usize, u64, u64)> {
        let mut pending: Vec<Option<(u64, u64)>> = vec![None; self.geo.members()];
        let mut out = Vec::new();
        for piece in self.geo.pieces(offset, len) {
            for place in self.geo.map_copies(piece.array_offset).iter() {
                match &mut pending[place.slot] {
                    Some((start, plen)) if *start + *plen == place.member_offset => {
                        *plen += piece.len
                    }
                    slot_pending => {
                        if let Some((s, l)) = slot_pending.take() {
                            out.push((place.slot, s, l));
                        }
                        *slot_pending = Some((place.member_offset, piece.len));
                    }
                }
            }
        }
        for (slot, p) in pending.into_iter().enumerate() {
            if let Some((s, l)) = p {
                out.push((slot, s, l));
            }
        }
        out
    }
}
