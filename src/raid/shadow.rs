//! The replacement's shadow target: while `replace` builds NEW, writes to its slot below the
//! copy cursor go to NEW as well, and a NEW that fails is given up (or failed in the slot it
//! has meanwhile taken) before the write is acknowledged. The copy itself is control-plane
//! work (`control::replace`).

use std::cell::Cell;
use std::rc::Rc;

use super::events::Event;
use super::slots::{Disk, SlotState};
use super::Array;
use crate::buf::BufSlice;
use crate::metadata::Role;

/// A replacement being built.
pub(crate) struct Replacement {
    pub slot: usize,
    pub old: Rc<Disk>,
    pub new: Rc<Disk>,
    pub cursor: Rc<Cell<u64>>,
}

impl Array {
    /// The new member of the replacement under way, if any.
    pub(super) fn replacement_target(&self) -> Option<Rc<Disk>> {
        self.replacement.borrow().as_ref().map(|r| r.new.clone())
    }

    pub(crate) fn is_replacement(&self, disk: &Rc<Disk>) -> bool {
        self.replacement
            .borrow()
            .as_ref()
            .is_some_and(|r| Rc::ptr_eq(&r.new, disk))
    }

    /// The replacement's new member and copy cursor when it is building `slot` and the old
    /// member is no longer active: the new member then carries the slot below its cursor.
    pub(crate) fn orphaned_replacement(&self, slot: usize) -> Option<(Rc<Disk>, u64)> {
        let r = self.replacement.borrow();
        let r = r.as_ref().filter(|r| r.slot == slot)?;
        let old_active = matches!(
            self.slots.borrow().get(slot),
            Some(SlotState::Active(d)) if Rc::ptr_eq(d, &r.old)
        );
        (!old_active).then(|| (r.new.clone(), r.cursor.get()))
    }

    /// Whether a replacement is filling `slot` (a spare must not take it meanwhile).
    pub(crate) fn slot_being_replaced(&self, slot: usize) -> bool {
        self.replacement
            .borrow()
            .as_ref()
            .is_some_and(|r| r.slot == slot)
    }

    /// Writes to the replacement's new member; a failed write gives the replacement up.
    pub(super) async fn write_replacement(
        &self,
        new: &Rc<Disk>,
        member_offset: u64,
        buf: BufSlice,
        fua: bool,
    ) {
        if let Err(e) = new
            .member
            .write(new.data_offset + member_offset, buf, fua)
            .await
        {
            self.new_member_failed(new, "write", member_offset, e).await;
        }
    }

    /// The replacement's new member failed an operation: give the replacement up, or, when
    /// the new member has meanwhile taken the slot (swap, or recovery after the old one
    /// failed), fail it there like any member.
    pub(super) async fn new_member_failed(
        &self,
        new: &Rc<Disk>,
        op: &str,
        member_offset: u64,
        e: std::io::Error,
    ) {
        if self.is_replacement(new) {
            let reason = format!("{op} on the new member failed: {e}");
            return self.abort_replacement(&reason, true).await;
        }
        let slot = self
            .slots
            .borrow()
            .iter()
            .position(|s| s.disk().is_some_and(|d| Rc::ptr_eq(d, new)));
        if let Some(slot) = slot {
            let _ = self.slot_failed(slot, new, op, member_offset, e).await;
        }
    }

    /// The part of a foreground write that the replacement must get too (below its cursor).
    pub(super) fn replacement_write(
        &self,
        slot: usize,
        member_offset: u64,
        buf: &BufSlice,
        fua: bool,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + '_>> {
        let target = self.replacement_in(slot);
        let Some((new, cursor)) = target else {
            return Box::pin(async {});
        };
        if member_offset >= cursor {
            return Box::pin(async {});
        }
        let n = (cursor - member_offset).min(buf.len() as u64) as usize;
        let part = buf.slice(0, n);
        Box::pin(async move { self.write_replacement(&new, member_offset, part, fua).await })
    }

    /// The new member replacing `slot`'s member, and its copy cursor, if one is being built.
    fn replacement_in(&self, slot: usize) -> Option<(Rc<Disk>, u64)> {
        self.replacement
            .borrow()
            .as_ref()
            .filter(|r| r.slot == slot)
            .map(|r| (r.new.clone(), r.cursor.get()))
    }

    pub(super) async fn replacement_zero(
        &self,
        slot: usize,
        member_offset: u64,
        len: u64,
        discard: bool,
    ) {
        let target = self.replacement_in(slot);
        let Some((new, cursor)) = target else { return };
        if member_offset >= cursor {
            return;
        }
        let n = (cursor - member_offset).min(len);
        let at = new.data_offset + member_offset;
        let r = if discard {
            new.member.discard(at, n).await
        } else {
            new.member.write_zeroes(at, n).await
        };
        if let Err(e) = r {
            self.abort_replacement(&format!("zeroing on the new member failed: {e}"), true)
                .await;
        }
    }

    /// Gives up. The new member goes back to being a spare, unless it failed (`new_failed`):
    /// then it is recorded as faulty and kept off the spare list. Either way the scheduler
    /// looks again (the slot may need a spare now).
    pub(crate) async fn abort_replacement(&self, reason: &str, new_failed: bool) {
        let Some(r) = self.replacement.borrow_mut().take() else {
            return;
        };
        self.emit(Event::RebuildAborted {
            slot: r.slot,
            member: r.new.member.path().to_string(),
            reason: reason.into(),
        });
        if new_failed {
            tracing::error!(array = %self.name, member = r.new.member.path(), "the replacement failed: {reason}; marking it faulty");
            self.retire_failed_spare(&r.new).await;
        } else {
            self.spares.borrow_mut().push(r.new);
        }
        self.needs_attention();
    }

    /// Records a device that is in no slot (a spare or a replacement) as faulty and stops
    /// writing metadata to it.
    async fn retire_failed_spare(&self, disk: &Rc<Disk>) {
        let _meta = self.meta_lock.lock().await;
        for m in self.meta.disks.borrow_mut().iter_mut() {
            if Rc::ptr_eq(&m.disk, disk) {
                m.present = false;
            }
        }
        let _ = self
            .meta
            .reference
            .borrow_mut()
            .set_role(disk.dev_number, Role::Faulty);
        if let Err(e) = self.write_all_superblocks().await {
            tracing::error!(array = %self.name, "recording the failed replacement failed: {e}");
        }
    }
}
