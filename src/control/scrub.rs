//! `check` and `repair`: read every stripe and compare its redundancy (md's sync_action).
//!
//! RAID5: the XOR of a row over all members must be zero; RAID1/RAID10: every copy of a chunk
//! must be equal. Mismatches are counted like md's mismatch_cnt: in 512-byte sectors, 8 per
//! mismatching 4 KiB block. `repair` rewrites parity from the data (RAID5) or the other copies
//! from the first (mirrors), as md does. Regions are scrubbed under their stripe locks and
//! throttled like a rebuild.

use std::cell::Cell;
use std::rc::Rc;
use std::time::Instant;

use futures::future::join_all;

use super::Controller;
use crate::buf::BufSlice;
use crate::error::{Error, ErrorKind, Result};
use crate::layout::Level;
use crate::parity::xor_into;
use crate::raid::events::Event;
use crate::reactor::KeyedLockGuard;

const BLOCK: usize = 4096;

/// A scrub in progress (or the last one finished).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ScrubState {
    /// A resync (after an unclean stop or for an initial sync): repair that moves the sync point.
    #[serde(default)]
    pub resync: bool,
    pub repair: bool,
    pub running: bool,
    /// Member bytes (RAID5) or array bytes (mirrors) scrubbed so far, of `total_bytes`.
    pub done_bytes: u64,
    pub total_bytes: u64,
    /// md's mismatch_cnt: sectors found inconsistent (repaired too, with `repair`).
    pub mismatch_sectors: u64,
    /// Of `done_bytes`, how many a resync skipped because the write-intent bitmap calls them
    /// clean.
    #[serde(default)]
    pub skipped_bytes: u64,
    /// Where it started (a resync resumes from the sync point).
    #[serde(default)]
    pub start_bytes: u64,
}

impl Controller {
    pub fn scrub_state(&self) -> Option<ScrubState> {
        self.scrub.get()
    }

    /// Starts a check (or repair) in the background. Refused on a degraded, failed or
    /// RAID0 array, and while a rebuild or another scrub runs.
    pub fn start_scrub(self: &Rc<Self>, repair: bool) -> Result<()> {
        if self.array.geo.level() == Level::Raid0 {
            return Err(Error::invalid("RAID0 has no redundancy to check"));
        }
        self.require_complete("is not complete", "check needs every member; rebuild first")?;
        if self.scrub.get().is_some_and(|s| s.running) {
            return Err(Error::new(
                ErrorKind::Busy,
                format!("a check of array {} is already running", self.array.name),
            ));
        }
        if repair && self.array.read_only {
            return Err(Error::new(
                ErrorKind::ReadOnly,
                format!(
                    "array {} is read-only: check without --repair",
                    self.array.name
                ),
            ));
        }
        self.begin_scrub(repair, false, 0);
        Ok(())
    }

    /// Resyncs from the sync point to the end if the array needs it and can (complete,
    /// writable, redundant, nothing else running). Called at assembly and after a rebuild.
    pub fn start_resync_if_needed(self: &Rc<Self>) {
        let sync = self.array.sync_offset.get();
        let busy = self.scrub.get().is_some_and(|s| s.running)
            || self.array.replacement.borrow().is_some();
        if sync == u64::MAX || self.array.read_only || self.array.geo.level() == Level::Raid0 {
            return;
        }
        // Deferred, not dropped: the scheduler starts it once the array is complete and idle
        // (a rebuild, a replacement or a check wakes it when it ends).
        if busy {
            self.resync_wanted.set(true);
            return;
        }
        if self.array.slots.borrow().iter().any(|s| !s.is_active()) {
            tracing::warn!(array = %self.array.name, "resync needed but the array is not complete: it runs once the rebuild has finished");
            self.resync_wanted.set(true);
            return;
        }
        tracing::info!(array = %self.array.name, "resync from {sync} (after an unclean stop, or the initial sync)");
        let step = self.scrub_step();
        self.begin_scrub(true, true, sync / step * step);
    }

    /// The smallest region a scrub handles: a chunk of rows (RAID5/6), a stripe unit (mirrors).
    pub(super) fn scrub_unit(&self) -> u64 {
        let unit = if self.array.geo.parities() > 0 {
            self.array.geo.chunk_bytes()
        } else {
            self.array.geo.stripe_bytes()
        };
        unit.max(1)
    }

    fn scrub_step(&self) -> u64 {
        let unit = self.scrub_unit();
        ((4u64 << 20) / unit).max(1) * unit
    }

    fn begin_scrub(self: &Rc<Self>, repair: bool, resync: bool, from: u64) {
        let total = match self.array.geo.parities() {
            0 => self.array.geo.array_bytes(),
            _ => self.array.geo.member_used_bytes(),
        };
        let from = from.min(total);
        let state = ScrubState {
            resync,
            repair,
            running: true,
            done_bytes: from,
            total_bytes: total,
            mismatch_sectors: 0,
            skipped_bytes: 0,
            start_bytes: from,
        };
        self.scrub.set(Some(state));
        // Taken now, not in the task: a close from here on waits for the scrub to stop.
        let worker = self.array.worker();
        crate::reactor::spawn(self.clone().scrub(repair, resync, from, total, worker));
    }

    async fn scrub(
        self: Rc<Self>,
        repair: bool,
        resync: bool,
        from: u64,
        total: u64,
        _worker: crate::raid::Worker,
    ) {
        if repair && self.array.mark_dirty().await.is_err() {
            return self.finish_scrub(false);
        }
        let step = self.scrub_step();
        let done = Cell::new(from);
        let mut window = (Instant::now(), 0u64, 0u64);
        while done.get() < total {
            if self.array.stopping.get()
                || self.array.failed.get()
                || self.array.slots.borrow().iter().any(|s| !s.is_active())
            {
                return self.finish_scrub(false);
            }
            let mut len = step.min(total - done.get());
            if resync {
                len = self
                    .array
                    .clip_to_bitmap_chunk(done.get(), len, self.scrub_unit());
            }
            if resync && !self.resync_region_dirty(done.get(), len) {
                done.set(done.get() + len);
                self.array.sync_offset.set(done.get());
                if let Some(mut s) = self.scrub.get() {
                    s.done_bytes = done.get();
                    s.skipped_bytes += len;
                    self.scrub.set(Some(s));
                }
                continue;
            }
            let found = match self.array.geo.level() {
                Level::Raid5 => self.scrub_rows(done.get(), len, repair).await,
                Level::Raid6 | Level::Ec => self.scrub_rows_coded(done.get(), len, repair).await,
                _ => self.scrub_copies(done.get(), len, repair).await,
            };
            let Some(found) = found else {
                return self.finish_scrub(false);
            };
            done.set(done.get() + len);
            if resync {
                // Everything below here is consistent now: writes there may trust parity.
                self.array.sync_offset.set(done.get());
            }
            if let Some(mut s) = self.scrub.get() {
                s.done_bytes = done.get();
                s.mismatch_sectors += found;
                self.scrub.set(Some(s));
            }
            window = self.throttle(window, len).await;
        }
        if resync {
            self.array.sync_offset.set(u64::MAX);
        }
        self.finish_scrub(true);
    }

    /// Whether a resync must look at resync-space bytes `at..at+len`: always without a
    /// bitmap, else only where a bit is set.
    fn resync_region_dirty(&self, at: u64, len: u64) -> bool {
        self.array
            .intent
            .as_ref()
            .is_none_or(|i| i.map.borrow().any_set(at, at + len))
    }

    fn finish_scrub(&self, complete: bool) {
        self.array.needs_attention();
        if let Some(mut s) = self.scrub.get() {
            s.running = false;
            self.scrub.set(Some(s));
            if complete && s.resync {
                self.array.emit(Event::ResyncFinished {
                    mismatch_sectors: s.mismatch_sectors,
                    bytes_resynced: s.total_bytes - s.start_bytes - s.skipped_bytes,
                });
            } else if complete {
                self.array.emit(Event::CheckFinished {
                    repair: s.repair,
                    mismatch_sectors: s.mismatch_sectors,
                });
            }
        }
    }

    /// The stripe locks of units `at / unit ..= (at + len - 1) / unit` (`len` > 0).
    pub(super) async fn lock_units(&self, at: u64, len: u64, unit: u64) -> Vec<KeyedLockGuard> {
        self.array
            .locks
            .lock_range(at / unit..(at + len - 1) / unit + 1)
            .await
    }

    /// Every member's bytes `at..at+len` and the slots that could not read them; None when a
    /// member dropped out (a scrub ends then, as md's does).
    pub(super) async fn read_all_members(
        &self,
        at: u64,
        len: u64,
    ) -> Option<(Vec<BufSlice>, Vec<usize>)> {
        let bufs: Vec<BufSlice> = (0..self.array.geo.members())
            .map(|_| BufSlice::zeroed(len as usize))
            .collect();
        let reads = bufs
            .iter()
            .enumerate()
            .map(|(slot, b)| self.array.read_slot(slot, at, b.clone()));
        let results = join_all(reads).await;
        if self.array.slots.borrow().iter().any(|s| !s.is_active()) {
            return None;
        }
        let unreadable = (0..results.len())
            .filter(|&i| results[i].is_err())
            .collect();
        Some((bufs, unreadable))
    }

    /// RAID5 rows covering member bytes `at..at+len`: returns mismatching sectors.
    async fn scrub_rows(&self, at: u64, len: u64, repair: bool) -> Option<u64> {
        let chunk = self.array.geo.chunk_bytes();
        let _guards = self.lock_units(at, len, chunk).await;
        // A member gone ends the check; unreadable sectors are dealt with block by block.
        let (bufs, unreadable) = self.read_all_members(at, len).await?;
        if !unreadable.is_empty() {
            return self.scrub_rows_by_block(at, len, repair).await;
        }
        let acc = BufSlice::filled(len as usize, |acc| {
            for b in &bufs {
                xor_into(acc, b.bytes());
            }
        });
        let mut sectors = 0;
        for (i, block) in acc.bytes().chunks(BLOCK).enumerate() {
            if block.iter().all(|&x| x == 0) {
                continue;
            }
            sectors += (block.len() / 512) as u64;
            if repair {
                // The parity member of this row gets parity recomputed from the data.
                let off = at + (i * BLOCK) as u64;
                let stripe = off / chunk;
                let pslot = self.array.geo.p_slot(stripe);
                let fixed = BufSlice::filled(block.len(), |fixed| {
                    for (slot, b) in bufs.iter().enumerate() {
                        if slot != pslot {
                            xor_into(fixed, &b.bytes()[i * BLOCK..i * BLOCK + block.len()]);
                        }
                    }
                });
                if self
                    .array
                    .write_slot(pslot, off, fixed, false)
                    .await
                    .is_err()
                {
                    return None;
                }
            }
        }
        Some(sectors)
    }

    /// `scrub_rows` where some member could not read part of the region (locks held): each
    /// 4 KiB block with one unreadable member is rebuilt from the others and rewritten there
    /// (a corrected read error, as md's check does); one with two is lost and recorded bad on
    /// both; the others are compared as usual.
    async fn scrub_rows_by_block(&self, at: u64, len: u64, repair: bool) -> Option<u64> {
        let chunk = self.array.geo.chunk_bytes();
        let mut sectors = 0;
        for off in (at..at + len).step_by(BLOCK) {
            let n = (BLOCK as u64).min(at + len - off) as usize;
            let (bufs, unreadable) = self.read_all_members(off, n as u64).await?;
            let acc = BufSlice::filled(n, |acc| {
                for (slot, b) in bufs.iter().enumerate() {
                    if !unreadable.contains(&slot) {
                        xor_into(acc, b.bytes());
                    }
                }
            });
            match unreadable.as_slice() {
                [] if acc.bytes().iter().any(|&x| x != 0) => {
                    sectors += (n / 512) as u64;
                    if repair {
                        let pslot = self.array.geo.p_slot(off / chunk);
                        // SAFETY: our own buffer, not handed to any I/O yet.
                        xor_into(unsafe { acc.bytes_mut() }, bufs[pslot].bytes());
                        if self.array.write_slot(pslot, off, acc, false).await.is_err() {
                            return None;
                        }
                    }
                }
                [] => {}
                // Parity not yet resynced says nothing of a data block: it is lost, and so is
                // this block of parity (it is not computed from the data; a later write of
                // the row must not trust it).
                [slot]
                    if *slot != self.array.geo.p_slot(off / chunk)
                        && !self.array.parity_in_sync(off + n as u64) =>
                {
                    let pslot = self.array.geo.p_slot(off / chunk);
                    for s in [*slot, pslot] {
                        if let Some(d) = self.array.active_disk(s) {
                            self.array.record_bad(&d, off, n as u64).await;
                        }
                    }
                }
                // The XOR of the others is exactly what the unreadable member holds.
                [slot] => {
                    let miss = self.array.miss_kind(*slot, off, n as u64);
                    self.array.repair_range(*slot, off, acc, miss).await
                }
                lost => {
                    for &slot in lost {
                        if let Some(d) = self.array.active_disk(slot) {
                            self.array.record_bad(&d, off, n as u64).await;
                        }
                    }
                }
            }
        }
        Some(sectors)
    }

    /// Mirror chunks covering array bytes `at..at+len`: returns mismatching sectors.
    async fn scrub_copies(&self, at: u64, len: u64, repair: bool) -> Option<u64> {
        let _guards = self
            .lock_units(at, len, self.array.geo.stripe_bytes())
            .await;
        let mut sectors = 0;
        for piece in self.array.geo.pieces(at, len) {
            let copies = self.array.geo.map_copies(piece.array_offset);
            let bufs: Vec<BufSlice> = copies
                .iter()
                .map(|_| BufSlice::zeroed(piece.len as usize))
                .collect();
            let reads = copies
                .iter()
                .zip(&bufs)
                .map(|(c, b)| self.array.read_slot(c.slot, c.member_offset, b.clone()));
            if join_all(reads).await.iter().any(|r| r.is_err()) {
                if self.array.slots.borrow().iter().any(|s| !s.is_active()) {
                    return None;
                }
                sectors += self
                    .scrub_piece_by_block(copies.as_slice(), piece.len, repair)
                    .await?;
                continue;
            }
            for (i, block) in bufs[0].bytes().chunks(BLOCK).enumerate() {
                let range = i * BLOCK..i * BLOCK + block.len();
                let differs: Vec<usize> = (1..bufs.len())
                    .filter(|&k| bufs[k].bytes()[range.clone()] != *block)
                    .collect();
                if differs.is_empty() {
                    continue;
                }
                sectors += (block.len() / 512) as u64;
                if repair {
                    for k in differs {
                        let c = copies.as_slice()[k];
                        let fixed = bufs[0].slice(range.start, block.len());
                        if self
                            .array
                            .write_slot(c.slot, c.member_offset + range.start as u64, fixed, false)
                            .await
                            .is_err()
                        {
                            return None;
                        }
                    }
                }
            }
        }
        Some(sectors)
    }

    /// One mirror piece where a copy could not be read (locks held), block by block: an
    /// unreadable copy is rewritten from a readable one (a corrected read error); a block no
    /// copy can read is lost and recorded bad on every copy; readable copies are compared.
    async fn scrub_piece_by_block(
        &self,
        copies: &[crate::layout::Placement],
        len: u64,
        repair: bool,
    ) -> Option<u64> {
        let mut sectors = 0;
        for start in (0..len).step_by(BLOCK) {
            let n = (BLOCK as u64).min(len - start) as usize;
            let bufs: Vec<BufSlice> = copies.iter().map(|_| BufSlice::zeroed(n)).collect();
            let reads = copies.iter().zip(&bufs).map(|(c, b)| {
                self.array
                    .read_slot(c.slot, c.member_offset + start, b.clone())
            });
            let ok: Vec<bool> = join_all(reads).await.iter().map(|r| r.is_ok()).collect();
            if self.array.slots.borrow().iter().any(|s| !s.is_active()) {
                return None;
            }
            let Some(good) = ok.iter().position(|&o| o) else {
                for c in copies {
                    if let Some(d) = self.array.active_disk(c.slot) {
                        self.array
                            .record_bad(&d, c.member_offset + start, n as u64)
                            .await;
                    }
                }
                continue;
            };
            let mut differs = false;
            for (k, c) in copies.iter().enumerate() {
                let at = c.member_offset + start;
                if !ok[k] {
                    let data = bufs[good].clone();
                    let miss = self.array.miss_kind(c.slot, at, n as u64);
                    self.array.repair_range(c.slot, at, data, miss).await;
                } else if bufs[k].bytes() != bufs[good].bytes() {
                    differs = true;
                    if repair
                        && self
                            .array
                            .write_slot(c.slot, at, bufs[good].clone(), false)
                            .await
                            .is_err()
                    {
                        return None;
                    }
                }
            }
            if differs {
                sectors += (n / 512) as u64;
            }
        }
        Some(sectors)
    }
}
