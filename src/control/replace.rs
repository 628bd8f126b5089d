//! `replace DEV --with NEW`: NEW is built while DEV stays active, then DEV is failed, so the
//! array never loses redundancy (md's `--replace`).
//!
//! NEW joins as a spare (its superblock says so), is taken off the spare list, and is filled
//! region by region under the stripe locks, from DEV itself (or from redundancy where DEV
//! cannot be read). Foreground writes to the slot also go to NEW below the copy cursor. Only
//! when NEW is complete and flushed do the roles change, in one superblock update: NEW takes
//! the slot and DEV becomes faulty. A crash before that leaves DEV active and NEW a spare.
//!
//! If DEV fails part-way (the usual reason to replace a disk is that it is failing), NEW keeps
//! taking the slot's writes below its cursor (see `Array::writable_disk`), no spare is given
//! the slot, and at its next step the copy turns into an ordinary recovery of the slot onto
//! NEW that starts at the copy cursor. A NEW that fails a write is failed, never put back on
//! the spare list.

use std::cell::Cell;
use std::rc::Rc;
use std::time::Instant;

use super::Controller;
use crate::buf::BufSlice;
use crate::error::{Error, ErrorKind, Result};
use crate::member::Member;
use crate::metadata::Role;
use crate::raid::events::Event;
use crate::raid::shadow::Replacement;
use crate::raid::slots::{Disk, SlotState};

impl Controller {
    /// The replacement under way, as (slot, new member path, bytes copied, total).
    pub fn replacement_state(&self) -> Option<(usize, String, u64, u64)> {
        self.array.replacement.borrow().as_ref().map(|r| {
            (
                r.slot,
                r.new.member.path().to_string(),
                r.cursor.get(),
                self.array.geo.slot_used_bytes(r.slot),
            )
        })
    }

    /// Starts replacing the active member `path` with `new`.
    pub async fn replace_member(
        self: &Rc<Self>,
        path: &str,
        new: Rc<dyn Member>,
        force: bool,
    ) -> Result<()> {
        let slot = self
            .array
            .slots
            .borrow()
            .iter()
            .position(|s| matches!(s, SlotState::Active(d) if d.member.path() == path))
            .ok_or_else(|| {
                Error::invalid(format!(
                    "{path} is not an active member of array {}",
                    self.array.name
                ))
            })?;
        if self.array.replacement.borrow().is_some() {
            return Err(Error::new(
                ErrorKind::Busy,
                format!(
                    "a replacement is already running in array {}",
                    self.array.name
                ),
            ));
        }
        self.require_complete("is degraded", "rebuild it before replacing a member")?;
        let new_path = new.path().to_string();
        self.add_spare(new, force).await?;
        let new_disk = {
            let mut spares = self.array.spares.borrow_mut();
            let i = spares
                .iter()
                .position(|d| d.member.path() == new_path)
                .expect("just added");
            spares.remove(i)
        };
        let old = match &self.array.slots.borrow()[slot] {
            SlotState::Active(d) => d.clone(),
            _ => return Err(Error::invalid(format!("{path} is no longer active"))),
        };
        *self.array.replacement.borrow_mut() = Some(Replacement {
            slot,
            old,
            new: new_disk,
            cursor: Rc::new(Cell::new(0)),
        });
        crate::reactor::spawn(self.clone().replace_copy());
        Ok(())
    }

    /// The old member failed during the copy: the copy becomes an ordinary recovery of the
    /// slot onto the new member, from the copy cursor. Called between steps (no locks held),
    /// in one synchronous section, so writes see the slot filled by the same member with the
    /// same cursor before and after.
    async fn continue_as_recovery(&self) {
        let Some(r) = self.array.replacement.borrow_mut().take() else {
            return;
        };
        let from = r.cursor.get();
        crate::raid::slots::set_slot(
            &mut self.array.slots.borrow_mut(),
            r.slot,
            SlotState::Recovering(r.new.clone(), r.cursor),
        );
        tracing::warn!(array = %self.array.name, slot = r.slot, member = r.new.member.path(),
            "the replaced member failed during the copy: {from} bytes copied, rebuilding the rest from redundancy");
        // Recorded from 0: the copy has not been flushed yet, and recovery_offset must only
        // name durable data. The recovery's first checkpoint moves it up.
        if let Err(e) = self
            .array
            .meta_recovery(r.new.dev_number, Some(r.slot), 0)
            .await
        {
            tracing::error!(array = %self.array.name, "could not record the new member's role: {e}");
        }
        self.array.emit(Event::SpareActivated {
            slot: r.slot,
            member: r.new.member.path().to_string(),
        });
        self.array.needs_attention();
    }

    async fn replace_copy(self: Rc<Self>) {
        let _worker = self.array.worker();
        self.replace_copy_inner().await;
    }

    async fn replace_copy_inner(&self) {
        let Some((slot, new, cursor)) = self
            .array
            .replacement
            .borrow()
            .as_ref()
            .map(|r| (r.slot, r.new.clone(), r.cursor.clone()))
        else {
            return;
        };
        let total = self.array.geo.slot_used_bytes(slot);
        self.array.emit(Event::RebuildStarted {
            slot,
            member: new.member.path().to_string(),
            from_bytes: 0,
            total_bytes: total,
        });
        if !self.copy_to_replacement(slot, &new, &cursor).await {
            return; // given up, failed over to a recovery, or stopped: said so already
        }
        if let Err(e) = new.member.flush().await {
            return self
                .array
                .abort_replacement(&format!("flush of the new member failed: {e}"), true)
                .await;
        }
        self.finish_replacement(slot, &new).await;
    }

    /// Copies the slot onto `new` from its cursor to the end, step by step under the stripe
    /// locks. False when the copy ended early: the replacement was given up (or turned into
    /// a recovery because the old member failed), and whoever ended it has said why.
    async fn copy_to_replacement(&self, slot: usize, new: &Rc<Disk>, cursor: &Cell<u64>) -> bool {
        let total = self.array.geo.slot_used_bytes(slot);
        let chunk = self.array.geo.chunk_bytes().max(1 << 16);
        let step = ((4u64 << 20) / chunk).max(1) * chunk;
        let mut window = (Instant::now(), 0u64, 0u64);
        while cursor.get() < total {
            if !self.array.is_replacement(new) {
                return false; // given up meanwhile
            }
            if self.array.failed.get() {
                self.array
                    .abort_replacement("the array failed", false)
                    .await;
                return false;
            }
            if self.array.stopping.get() {
                let why = "the array is stopping; run replace again";
                self.array.abort_replacement(why, false).await;
                return false;
            }
            if self.array.orphaned_replacement(slot).is_some() {
                self.continue_as_recovery().await;
                return false;
            }
            let at = cursor.get();
            let len = step.min(total - at);
            let guards = self.lock_member_range(slot, at, len).await;
            let buf = BufSlice::zeroed(len as usize);
            if !self.fill_for(slot, new, at, &buf, true).await {
                drop(guards);
                let why = "no readable source for the data, and it could not be recorded as lost";
                self.array.abort_replacement(why, true).await;
                return false;
            }
            if let Err(e) = new.member.write(new.data_offset + at, buf, false).await {
                drop(guards);
                let why = format!("write to the new member failed: {e}");
                self.array.abort_replacement(&why, true).await;
                return false;
            }
            cursor.set(at + len);
            drop(guards);
            window = self.throttle(window, len).await;
        }
        true
    }

    /// Swaps roles in one metadata update. With the cursor at the end every write reaches
    /// the new member (and the old one while it is active); the switch happens in one
    /// synchronous section once the meta lock is held, so no write can find the replacement
    /// gone and the new member not yet in the slot.
    async fn finish_replacement(&self, slot: usize, new: &Rc<Disk>) {
        let meta = self.array.meta_lock.lock().await;
        let Some(r) = self
            .array
            .replacement
            .borrow_mut()
            .take_if(|r| Rc::ptr_eq(&r.new, new))
        else {
            return;
        };
        self.swap_in_replacement(slot, &r).await;
        drop(meta);
        self.array.emit(Event::RebuildFinished {
            slot,
            member: new.member.path().to_string(),
            bytes_rebuilt: self.array.geo.slot_used_bytes(slot),
        });
        self.array.emit(Event::MemberFailed {
            slot,
            member: r.old.member.path().to_string(),
        });
        // A resync deferred while the array was not complete may run now.
        self.array.needs_attention();
    }

    /// Makes the replacement's new member the slot's member and the old one faulty, in memory
    /// and on disk. The caller holds the meta lock and has just taken the replacement.
    async fn swap_in_replacement(&self, slot: usize, r: &Replacement) {
        {
            let mut reference = self.array.meta.reference.borrow_mut();
            let _ = reference.set_role(r.new.dev_number, Role::Active(slot as u16));
            let _ = reference.set_role(r.old.dev_number, Role::Faulty);
        }
        for m in self.array.meta.disks.borrow_mut().iter_mut() {
            if Rc::ptr_eq(&m.disk, &r.old) {
                m.present = false;
            }
        }
        crate::raid::slots::set_slot(
            &mut self.array.slots.borrow_mut(),
            slot,
            SlotState::Active(r.new.clone()),
        );
        if let Err(e) = self.array.write_all_superblocks().await {
            tracing::error!(array = %self.array.name, "recording the replacement failed: {e}");
        }
    }
}
