//! The rebuild scheduler: hot spares take failed slots and are rebuilt online.
//!
//! ```text
//!  member fails / spare added / rebuild asked ─► attention ─► scheduler task
//!     promote: spare ─► slot (Recovering, cursor 0), roles persisted ─► SpareActivated
//!     recover: region by region in member order, each under its stripe locks:
//!              read the region from redundancy (RAID5: XOR of the row; mirrors: a copy),
//!              write it to the new member, advance the cursor (still under the locks)
//!     checkpoint: new member flushed, then recovery_offset written, every 64 MiB or 5 s
//!     done: member active, RECOVERY_OFFSET cleared ─► RebuildFinished
//! ```
//!
//! Foreground writes and the rebuild never race: a write holds the same stripe locks, so it
//! sees the cursor wholly below its region (and writes the new member too) or wholly above it
//! (and the rebuild copies its data later). Throttling follows md: at most speed-max KiB/s,
//! and at speed-min while foreground I/O is running. After a crash the next assembly resumes
//! from the last checkpoint.

use std::cell::Cell;
use std::rc::Rc;
use std::time::Instant;

use futures::stream::{FuturesOrdered, StreamExt};

use super::Controller;
use crate::buf::BufSlice;
use crate::layout::Level;
use crate::raid::events::Event;
use crate::raid::slots::SlotState;
use crate::reactor::{spawn, KeyedLockGuard};

/// Member bytes rebuilt per step (whole chunks): large sequential reads and writes, while
/// the stripe locks it holds stay few enough not to stall foreground writes for long.
const STEP_BYTES: u64 = 4 << 20;
/// Recovery steps in flight at once (reads of one overlap the write of another).
const PIPELINE_DEPTH: usize = 4;

/// How one recovery step ended.
enum Step {
    Copied(u64, Vec<KeyedLockGuard>),
    Skipped(u64, Vec<KeyedLockGuard>),
    NoSource,
    WriteFailed(std::io::Error),
}

/// Progress of a rebuild, for status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RebuildState {
    pub slot: usize,
    pub done_bytes: u64,
    pub total_bytes: u64,
}

/// A recovery's bookkeeping between steps: progress events by tenths, checkpoints, pacing.
struct Pacing {
    /// Cursor and time of the last checkpoint.
    checkpointed: (u64, Instant),
    /// The throttle's window (see [`Array::throttle`]).
    window: (Instant, u64, u64),
    last_decile: u32,
    total: u64,
}

impl Pacing {
    fn new(control: &Controller, start: u64, total: u64) -> Pacing {
        let counters = control.array.counters();
        let requests = counters.reads + counters.writes;
        Pacing {
            checkpointed: (start, Instant::now()),
            window: (Instant::now(), 0, requests),
            last_decile: (start * 10 / total.max(1)) as u32,
            total,
        }
    }

    /// After a step moved the cursor to `cursor` having copied `moved` bytes.
    async fn after_step(
        &mut self,
        control: &Controller,
        slot: usize,
        disk: &Rc<crate::raid::Disk>,
        cursor: u64,
        moved: u64,
    ) {
        let decile = (cursor * 10 / self.total.max(1)) as u32;
        if decile > self.last_decile && decile < 10 {
            self.last_decile = decile;
            control.array.emit(Event::RebuildProgress {
                slot,
                member: disk.member.path().to_string(),
                percent: decile * 10,
            });
        }
        let (every_bytes, every) = control.checkpoint_every.get();
        let (at, when) = self.checkpointed;
        if cursor - at >= every_bytes || when.elapsed() >= every {
            control.checkpoint(slot, disk, cursor).await;
            self.checkpointed = (cursor, Instant::now());
        }
        self.window = control.throttle(self.window, moved).await;
    }
}

impl Controller {
    /// Rebuilds in progress.
    pub fn rebuild_states(&self) -> Vec<RebuildState> {
        self.array
            .slots
            .borrow()
            .iter()
            .enumerate()
            .filter_map(|(slot, s)| {
                s.recovered_bytes().map(|done| RebuildState {
                    slot,
                    done_bytes: done,
                    total_bytes: self.array.geo.slot_used_bytes(slot),
                })
            })
            .collect()
    }

    /// Runs until the array closes: promotes spares and starts rebuilds when woken.
    pub async fn run_scheduler(self: Rc<Self>) {
        loop {
            self.array.attention_wanted().await;
            if self.array.stopping.get() {
                return;
            }
            if self.array.read_only
                || self.array.failed.get()
                || self.array.geo.level() == Level::Raid0
            {
                continue;
            }
            self.promote_spares().await;
            let complete = self.array.slots.borrow().iter().all(|s| s.is_active());
            if complete && self.resync_wanted.replace(false) {
                self.start_resync_if_needed();
            }
            let recovering: Vec<usize> = (0..self.array.geo.members())
                .filter(|&s| matches!(self.array.slots.borrow()[s], SlotState::Recovering(..)))
                .collect();
            for slot in recovering {
                if self.rebuilding.borrow_mut().insert(slot) {
                    spawn(self.clone().recover(slot));
                }
            }
        }
    }

    /// Gives every failed or missing slot a spare, if there is one.
    async fn promote_spares(&self) {
        let empty: Vec<usize> = (0..self.array.geo.members())
            .filter(|&s| {
                matches!(
                    self.array.slots.borrow()[s],
                    SlotState::Faulty(_) | SlotState::Missing
                )
            })
            .collect();
        for slot in empty {
            // An earlier iteration awaited: the slot may have been filled (a re-add) since.
            // A slot whose replacement is under way is filled by it (see replace.rs).
            if !matches!(
                self.array.slots.borrow()[slot],
                SlotState::Faulty(_) | SlotState::Missing
            ) || self.array.slot_being_replaced(slot)
            {
                continue;
            }
            let spare = {
                let mut spares = self.array.spares.borrow_mut();
                if spares.is_empty() {
                    None
                } else {
                    Some(spares.remove(0))
                }
            };
            let Some(disk) = spare else {
                self.array.emit(Event::SparesMissing { slot });
                continue;
            };
            let cursor = Rc::new(Cell::new(0));
            crate::raid::slots::set_slot(
                &mut self.array.slots.borrow_mut(),
                slot,
                SlotState::Recovering(disk.clone(), cursor),
            );
            if let Err(e) = self
                .array
                .meta_recovery(disk.dev_number, Some(slot), 0)
                .await
            {
                tracing::error!(array = %self.array.name, "could not record the spare's new role: {e}");
            }
            self.array.emit(Event::SpareActivated {
                slot,
                member: disk.member.path().to_string(),
            });
        }
    }

    /// Rebuilds `slot` from its cursor to the end (or until stop / a failure).
    async fn recover(self: Rc<Self>, slot: usize) {
        let worker = self.array.worker();
        let disk = self.array.slots.borrow()[slot].disk().cloned();
        self.recover_inner(slot).await;
        // Finished, failed, aborted or stopped: a later recovery of this disk is a full one.
        if let Some(disk) = disk {
            self.readded.borrow_mut().retain(|d| !Rc::ptr_eq(d, &disk));
        }
        self.rebuilding.borrow_mut().remove(&slot);
        drop(worker);
        // Another disk may have taken the slot while this one was still winding down (an
        // aborted recovery): the scheduler must look again, or that one never starts. A
        // resync deferred until the array was complete starts from there too.
        self.resync_wanted.set(true);
        self.array.needs_attention();
    }

    async fn recover_inner(&self, slot: usize) {
        let (disk, cursor) = match &self.array.slots.borrow()[slot] {
            SlotState::Recovering(d, c) => (d.clone(), c.clone()),
            _ => return,
        };
        let total = self.array.geo.slot_used_bytes(slot);
        let start = cursor.get();
        self.array.emit(Event::RebuildStarted {
            slot,
            member: disk.member.path().to_string(),
            from_bytes: start,
            total_bytes: total,
        });
        let partial = self.readded.borrow().iter().any(|d| Rc::ptr_eq(d, &disk));
        let Some(copied) = self.recover_steps(slot, &disk, &cursor, partial).await else {
            return; // aborted, and said so
        };
        if cursor.get() < total {
            // Stopping: keep what we have for the next assembly.
            self.checkpoint(slot, &disk, cursor.get()).await;
            return;
        }
        self.finish_recovery(slot, &disk, total - start, copied, partial)
            .await;
    }

    /// Recovery steps in flight while clients are idle (while they are busy, one: speed-min
    /// is then the target, and a deep pipeline would put several steps of member reads in
    /// front of their requests). Layouts whose stripe keys do not rise with the member offset
    /// (RAID10 far/offset copies) recover one step at a time: a deeper pipeline could take
    /// keys out of order.
    fn max_recovery_depth(&self) -> usize {
        match self.array.geo.kind() {
            crate::layout::LayoutKind::Raid10(l) if l.far > 1 || l.offset => 1,
            _ => PIPELINE_DEPTH,
        }
    }

    /// Member bytes per recovery step: whole chunks.
    fn recovery_step_bytes(&self) -> u64 {
        match self.array.geo.level() {
            Level::Raid1 => STEP_BYTES,
            _ => {
                let chunk = self.array.geo.chunk_bytes();
                (STEP_BYTES / chunk).max(1) * chunk
            }
        }
    }

    /// Steps the recovery of `slot` onto `disk` from its cursor to the end of the slot (or
    /// until the array stops). Returns the bytes copied, or None when it was aborted.
    async fn recover_steps(
        &self,
        slot: usize,
        disk: &Rc<crate::raid::Disk>,
        cursor: &Rc<Cell<u64>>,
        partial: bool,
    ) -> Option<u64> {
        let total = self.array.geo.slot_used_bytes(slot);
        let step = self.recovery_step_bytes();
        let mut pacing = Pacing::new(self, cursor.get(), total);
        let mut copied = 0u64;
        // Up to PIPELINE_DEPTH steps in flight: each locks its region, reads the sources and
        // writes the new member; results come back in order, and a step's locks are dropped
        // only once the cursor has passed it, so a foreground write waiting on them lands
        // below the cursor and reaches the new member itself.
        let mut pipeline = FuturesOrdered::new();
        let mut next = cursor.get();
        let max_depth = self.max_recovery_depth();
        let mut depth = if self.foreground_busy() { 1 } else { max_depth };
        loop {
            while pipeline.len() < depth && next < total && !self.array.stopping.get() {
                let mut len = step.min(total - next);
                if partial {
                    let unit = step.min(self.array.geo.chunk_bytes().max(4096));
                    len = self.array.clip_to_bitmap_chunk(next, len, unit);
                }
                // Locks are taken here, step after step, so every step holds its locks before
                // the next asks for any: steps and foreground writes then take keys in one
                // ascending order and cannot wait on each other in a circle.
                let guards = self.lock_member_range(slot, next, len).await;
                pipeline.push_back(self.recovery_step(slot, disk, next, len, partial, guards));
                next += len;
            }
            let Some(done) = pipeline.next().await else {
                break;
            };
            let still_ours = matches!(&self.array.slots.borrow()[slot], SlotState::Recovering(d, _) if Rc::ptr_eq(d, disk));
            let outcome = if !still_ours || self.array.failed.get() {
                Err("a member failed during the rebuild".to_string())
            } else {
                Ok(done)
            };
            let (len, guards, moved) = match outcome {
                Ok(Step::Skipped(len, guards)) => (len, guards, 0),
                Ok(Step::Copied(len, guards)) => (len, guards, len),
                Ok(Step::NoSource) => {
                    drop(pipeline);
                    let why =
                        "no readable source for the data, and it could not be recorded as lost";
                    // Retrying would hit the same sectors: the member cannot take this slot.
                    return self.abort_recovery(slot, disk, why.into(), true).await;
                }
                Ok(Step::WriteFailed(e)) => {
                    drop(pipeline);
                    let why = format!("write failed: {e}");
                    return self.abort_recovery(slot, disk, why, true).await;
                }
                Err(why) => return self.abort_recovery(slot, disk, why, false).await,
            };
            copied += moved;
            // The cursor only moves forward, over the region whose locks this step holds.
            debug_assert!(cursor.get() + len <= total, "rebuild cursor past the end");
            cursor.set(cursor.get() + len);
            drop(guards);
            // Skipped regions (a re-add's clean chunks) cost nothing: only copies are paced.
            pacing
                .after_step(self, slot, disk, cursor.get(), moved)
                .await;
            depth = if self.foreground_busy() { 1 } else { max_depth };
        }
        Some(copied)
    }

    /// Ends a recovery that cannot go on: says why, and fails the new member when it is the
    /// cause (`its_fault`). Always None, for `recover_steps` to return.
    async fn abort_recovery(
        &self,
        slot: usize,
        disk: &Rc<crate::raid::Disk>,
        reason: String,
        its_fault: bool,
    ) -> Option<u64> {
        self.array.emit(Event::RebuildAborted {
            slot,
            member: disk.member.path().to_string(),
            reason,
        });
        if its_fault {
            self.fail_recovering(slot, disk).await;
        }
        None
    }

    /// The last step of a recovery: the new member flushed, the end recorded on disk, and
    /// only then the member active.
    async fn finish_recovery(
        &self,
        slot: usize,
        disk: &Rc<crate::raid::Disk>,
        walked: u64,
        copied: u64,
        partial: bool,
    ) {
        let member = disk.member.path().to_string();
        if let Err(e) = disk.member.flush().await {
            let _ = self
                .abort_recovery(slot, disk, format!("flush failed: {e}"), true)
                .await;
            return;
        }
        // Record the finished rebuild on disk first, and only then call the member in sync:
        // whoever sees it active (status, rebuild --wait) may rely on the superblocks. Until
        // then it is still "recovering" with its cursor at the end, so writes reach it.
        let total = self.array.geo.slot_used_bytes(slot);
        if let Err(e) = self.array.meta_recovery(disk.dev_number, None, total).await {
            tracing::error!(array = %self.array.name, "could not record the finished rebuild: {e}");
            return;
        }
        {
            let mut slots = self.array.slots.borrow_mut();
            if matches!(&slots[slot], SlotState::Recovering(d, _) if Rc::ptr_eq(d, disk)) {
                crate::raid::slots::set_slot(&mut slots, slot, SlotState::Active(disk.clone()));
            }
        }
        tracing::info!(array = %self.array.name, member = %member, "rebuild of slot {slot} finished: {copied} of {walked} bytes copied{}",
            if partial { " (a re-added member: only what the bitmap marks dirty)" } else { "" });
        self.array.emit(Event::RebuildFinished {
            slot,
            member,
            bytes_rebuilt: copied,
        });
        // Another slot may still wait for a spare.
        self.array.needs_attention();
    }

    /// One region of a recovery, its locks held: skip it (a re-added member, nothing dirty
    /// there), or read it from the other members and write it to the new one.
    async fn recovery_step(
        &self,
        slot: usize,
        disk: &Rc<crate::raid::Disk>,
        at: u64,
        len: u64,
        partial: bool,
        guards: Vec<KeyedLockGuard>,
    ) -> Step {
        // Checked under the stripe locks: a write that sets a bit here after this has to wait
        // for them, and by then the cursor is past, so it reaches the member itself.
        if partial && !self.array.member_range_dirty(slot, at, len) {
            return Step::Skipped(len, guards);
        }
        let buf = BufSlice::zeroed(len as usize);
        if !self.fill_for(slot, disk, at, &buf, false).await {
            return Step::NoSource;
        }
        match disk.member.write(disk.data_offset + at, buf, false).await {
            Ok(()) => Step::Copied(len, guards),
            Err(e) => Step::WriteFailed(e),
        }
    }

    /// Flushes the new member, then records how far it is rebuilt.
    async fn checkpoint(&self, slot: usize, disk: &Rc<crate::raid::Disk>, done: u64) {
        if disk.member.flush().await.is_err() {
            return self.fail_recovering(slot, disk).await;
        }
        if let Err(e) = self
            .array
            .meta_recovery(disk.dev_number, Some(slot), done)
            .await
        {
            tracing::error!(array = %self.array.name, "rebuild checkpoint failed: {e}");
        }
    }

    async fn fail_recovering(&self, slot: usize, disk: &Rc<crate::raid::Disk>) {
        {
            let mut slots = self.array.slots.borrow_mut();
            if matches!(&slots[slot], SlotState::Recovering(d, _) if Rc::ptr_eq(d, disk)) {
                crate::raid::slots::set_slot(&mut slots, slot, SlotState::Faulty(disk.clone()));
            }
        }
        let _ = self.array.record_failures().await;
        self.array.needs_attention();
    }
}
