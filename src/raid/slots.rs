//! Member I/O by slot, and what happens when a member fails.
//!
//! Every member operation of the engine goes through here. On an I/O error the slot is marked
//! faulty at once (so new requests avoid it), the other members' superblocks record it (events
//! bumped) and only then does the caller see [`SlotGone`] and fall back on redundancy. That
//! order matters: a write must not be acknowledged while the disks still call a member in sync
//! that missed it, or a crash could bring the stale member back as good.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use futures::future::join_all;

use super::Array;
use crate::buf::BufSlice;
use crate::error::{Error, ErrorKind, Result};
use crate::layout::Level;
use crate::member::Member;
use crate::metadata::BadBlocks;

/// One member device of an array, with where its data area begins.
pub struct Disk {
    pub member: Rc<dyn Member>,
    /// Byte offset of the data area on the device (md's data_offset).
    pub data_offset: u64,
    /// Permanent index into the superblocks' dev_roles table.
    pub dev_number: u32,
    /// Sectors of this device recorded as unreadable or never given their data (md's
    /// bad-block log, absolute device sectors): never read as data, cleared when written.
    pub bad: RefCell<BadBlocks>,
}

impl Disk {
    pub fn new(member: Rc<dyn Member>, data_offset: u64, dev_number: u32) -> Disk {
        Disk {
            member,
            data_offset,
            dev_number,
            bad: RefCell::new(BadBlocks::default()),
        }
    }

    /// Whether any sector of the data-area range is recorded bad.
    pub fn has_bad(&self, member_offset: u64, len: u64) -> bool {
        let bad = self.bad.borrow();
        !bad.is_empty() && bad.overlaps((self.data_offset + member_offset) / 512, len.div_ceil(512))
    }
}

#[derive(Clone)]
pub enum SlotState {
    Active(Rc<Disk>),
    Missing,
    Faulty(Rc<Disk>),
    /// Being rebuilt: member bytes below the cursor are valid and take writes; the rest is
    /// rebuilt in order. Never read from. The cursor only moves while the rebuild holds the
    /// stripe lock of the region it just finished.
    Recovering(Rc<Disk>, Rc<Cell<u64>>),
}

impl SlotState {
    pub fn is_active(&self) -> bool {
        matches!(self, SlotState::Active(_))
    }
    pub fn disk(&self) -> Option<&Rc<Disk>> {
        match self {
            SlotState::Active(d) | SlotState::Faulty(d) | SlotState::Recovering(d, _) => Some(d),
            SlotState::Missing => None,
        }
    }
    /// Bytes of the member already rebuilt (None unless recovering).
    pub fn recovered_bytes(&self) -> Option<u64> {
        match self {
            SlotState::Recovering(_, c) => Some(c.get()),
            _ => None,
        }
    }
}

/// Changes a slot's state, asserting that the change is one the engine allows: a member
/// fails (active or recovering -> faulty), a spare or a re-added member or a replacement whose
/// old member failed starts filling an empty slot (faulty or missing -> recovering), a rebuild
/// ends (recovering -> active, same member), a failed member is removed (faulty -> missing),
/// a replacement is swapped in (active or faulty -> active).
pub(crate) fn set_slot(slots: &mut [SlotState], slot: usize, to: SlotState) {
    debug_assert!(
        allowed_transition(&slots[slot], &to),
        "slot {slot}: {} -> {} is not a transition the engine makes",
        slots[slot].name(),
        to.name()
    );
    slots[slot] = to;
}

fn allowed_transition(from: &SlotState, to: &SlotState) -> bool {
    use SlotState::*;
    match (from, to) {
        (Active(_) | Recovering(..), Faulty(_)) => true,
        (Faulty(_) | Missing, Recovering(..)) => true,
        (Recovering(a, _), Active(b)) => Rc::ptr_eq(a, b),
        (Faulty(_), Missing) => true,
        (Active(a) | Faulty(a), Active(b)) => !Rc::ptr_eq(a, b),
        // A replacement swapped in after its old member failed and was removed.
        (Missing, Active(_)) => true,
        _ => false,
    }
}

impl SlotState {
    fn name(&self) -> &'static str {
        match self {
            SlotState::Active(_) => "active",
            SlotState::Missing => "missing",
            SlotState::Faulty(_) => "faulty",
            SlotState::Recovering(..) => "recovering",
        }
    }
}

/// The slot's member is not (or no longer) usable; its failure has been recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotGone;

pub(super) type SlotResult = std::result::Result<(), SlotGone>;

impl Array {
    pub(crate) fn active_disk(&self, slot: usize) -> Option<Rc<Disk>> {
        match self.slots.borrow().get(slot) {
            Some(SlotState::Active(d)) => Some(d.clone()),
            _ => None,
        }
    }

    pub(super) fn is_slot_active(&self, slot: usize) -> bool {
        self.slots.borrow().get(slot).is_some_and(|s| s.is_active())
    }

    /// Reads one member range. Err when the member is not active, the range is recorded
    /// bad, or the read fails. On a redundant array a media error (a bad sector, not a
    /// vanished device) leaves the member in: the caller uses redundancy, as md does; any
    /// other error fails the member first.
    pub(crate) async fn read_slot(
        &self,
        slot: usize,
        member_offset: u64,
        buf: BufSlice,
    ) -> SlotResult {
        self.assert_in_slot(slot, member_offset, buf.len() as u64);
        let disk = self.active_disk(slot).ok_or(SlotGone)?;
        if disk.has_bad(member_offset, buf.len() as u64) {
            return Err(SlotGone);
        }
        match disk
            .member
            .read(disk.data_offset + member_offset, buf)
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if super::correct::is_media_error(&e) => {
                tracing::warn!(array = %self.name, slot, member = disk.member.path(), "read error at data offset {member_offset}: {e}; using redundancy");
                Err(SlotGone)
            }
            Err(e) => Err(self
                .slot_failed(slot, &disk, "read", member_offset, e)
                .await),
        }
    }

    /// The member behind `slot` if it takes a write of `len` bytes at `member_offset`: an
    /// active member, a recovering one whose cursor is past the whole range, or, when the
    /// slot's member failed during a `replace`, the new member below its copy cursor (it
    /// carries the slot from then on).
    pub(super) fn writable_disk(
        &self,
        slot: usize,
        member_offset: u64,
        len: u64,
    ) -> Option<Rc<Disk>> {
        match self.slots.borrow().get(slot) {
            Some(SlotState::Active(d)) => Some(d.clone()),
            Some(SlotState::Recovering(d, cursor)) if member_offset + len <= cursor.get() => {
                Some(d.clone())
            }
            Some(SlotState::Faulty(_) | SlotState::Missing) => self
                .orphaned_replacement(slot)
                .filter(|(_, cursor)| member_offset + len <= *cursor)
                .map(|(new, _)| new),
            _ => None,
        }
    }

    /// How far a slot that is being filled takes writes: the rebuild cursor of a recovering
    /// member, or the copy cursor of a replacement whose old member failed. None for a slot
    /// that takes every write (active) or none (faulty, missing).
    fn fill_cursor(&self, slot: usize) -> Option<u64> {
        match self.slots.borrow().get(slot) {
            Some(SlotState::Recovering(_, c)) => Some(c.get()),
            Some(SlotState::Faulty(_) | SlotState::Missing) => {
                self.orphaned_replacement(slot).map(|(_, c)| c)
            }
            _ => None,
        }
    }

    /// Writes one member range. Ok only when the whole range reached the member; a member
    /// being filled takes only what lies below its cursor (the fill does the rest).
    pub(crate) async fn write_slot(
        &self,
        slot: usize,
        member_offset: u64,
        buf: BufSlice,
        fua: bool,
    ) -> SlotResult {
        self.assert_in_slot(slot, member_offset, buf.len() as u64);
        if let Some(cursor) = self.fill_cursor(slot) {
            if member_offset < cursor && member_offset + buf.len() as u64 > cursor {
                let below = buf.slice(0, (cursor - member_offset) as usize);
                let _ = Box::pin(self.write_slot(slot, member_offset, below, fua)).await;
                return Err(SlotGone);
            }
        }
        let disk = self
            .writable_disk(slot, member_offset, buf.len() as u64)
            .ok_or(SlotGone)?;
        if self.is_replacement(&disk) {
            // The old member is gone: this is the slot's only copy-in-progress, and the
            // slot still counts as missing for the caller (its redundancy covers it).
            self.write_replacement(&disk, member_offset, buf, fua).await;
            return Err(SlotGone);
        }
        // A replacement being built for this slot gets the write too, below its cursor.
        let len = buf.len() as u64;
        let mirror = self.replacement_write(slot, member_offset, &buf, fua);
        let main = disk
            .member
            .write(disk.data_offset + member_offset, buf, fua);
        let (main, ()) = futures::join!(main, mirror);
        match main {
            Ok(()) => {
                if disk.has_bad(member_offset, len) {
                    self.clear_bad_after_write(&disk, member_offset, len).await;
                }
                Ok(())
            }
            Err(e) => Err(self
                .slot_failed(slot, &disk, "write", member_offset, e)
                .await),
        }
    }

    /// Zeroes (or discards) a member range; either way it reads back as zeroes.
    pub(super) async fn zero_slot(
        &self,
        slot: usize,
        member_offset: u64,
        len: u64,
        discard: bool,
    ) -> SlotResult {
        self.assert_in_slot(slot, member_offset, len);
        let len = match self.fill_cursor(slot) {
            Some(c) if member_offset < c => len.min(c - member_offset),
            _ => len,
        };
        let disk = self
            .writable_disk(slot, member_offset, len)
            .ok_or(SlotGone)?;
        let replacing = self.is_replacement(&disk);
        let at = disk.data_offset + member_offset;
        let r = if discard {
            disk.member.discard(at, len).await
        } else {
            disk.member.write_zeroes(at, len).await
        };
        match r {
            Ok(()) if replacing => Err(SlotGone),
            Ok(()) => {
                if disk.has_bad(member_offset, len) {
                    self.clear_bad_after_write(&disk, member_offset, len).await;
                }
                self.replacement_zero(slot, member_offset, len, discard)
                    .await;
                Ok(())
            }
            Err(e) if replacing => {
                self.new_member_failed(&disk, "zero", member_offset, e)
                    .await;
                Err(SlotGone)
            }
            Err(e) => Err(self
                .slot_failed(slot, &disk, "zero", member_offset, e)
                .await),
        }
    }

    /// Flushes every member that holds live data: active members, members being rebuilt
    /// (their bytes below the cursor take writes, and `recovery_offset` will vouch for them)
    /// and a replacement being built. A member whose flush fails is failed (a replacement is
    /// given up) before this returns.
    pub(super) async fn flush_members(&self) -> Result<()> {
        let disks: Vec<(usize, Rc<Disk>)> = self
            .slots
            .borrow()
            .iter()
            .enumerate()
            .filter_map(|(slot, s)| match s {
                SlotState::Active(d) | SlotState::Recovering(d, _) => Some((slot, d.clone())),
                _ => None,
            })
            .collect();
        let replacement = self.replacement_target();
        let members = join_all(disks.iter().map(|(slot, disk)| async move {
            if let Err(e) = disk.member.flush().await {
                self.slot_failed(*slot, disk, "flush", 0, e).await;
            }
        }));
        let new = async {
            if let Some(new) = &replacement {
                if let Err(e) = new.member.flush().await {
                    self.new_member_failed(new, "flush", 0, e).await;
                }
            }
        };
        futures::join!(members, new);
        if self.failed.get() {
            return Err(self.failed_error());
        }
        Ok(())
    }

    /// Member I/O stays inside the part of the slot the layout uses, in whole sectors: the
    /// layers above mapped it there, and a miss would touch metadata or another array's data.
    fn assert_in_slot(&self, slot: usize, member_offset: u64, len: u64) {
        debug_assert!(
            member_offset.is_multiple_of(512) && len.is_multiple_of(512),
            "slot {slot}: I/O at {member_offset}+{len} is not in whole sectors"
        );
        debug_assert!(
            member_offset + len <= self.geo.slot_used_bytes(slot),
            "slot {slot}: I/O at {member_offset}+{len} past its {} bytes",
            self.geo.slot_used_bytes(slot)
        );
    }

    /// Marks `slot` faulty (once), persists it, and decides whether the array has failed.
    pub(super) async fn slot_failed(
        &self,
        slot: usize,
        disk: &Rc<Disk>,
        op: &str,
        member_offset: u64,
        e: std::io::Error,
    ) -> SlotGone {
        let newly = {
            let mut slots = self.slots.borrow_mut();
            match &slots[slot] {
                SlotState::Active(d) | SlotState::Recovering(d, _) if Rc::ptr_eq(d, disk) => {
                    set_slot(&mut slots, slot, SlotState::Faulty(disk.clone()));
                    true
                }
                _ => false,
            }
        };
        if newly {
            tracing::error!(
                array = %self.name, slot, member = disk.member.path(),
                "member failed: {op} at data offset {member_offset}: {e}; marking it faulty"
            );
            if !self.has_redundancy_for_all_data() {
                self.failed.set(true);
                tracing::error!(array = %self.name, "array failed: {}", self.missing_description());
            }
        }
        // Whether we marked it or another request did, wait until the record is on disk.
        if let Err(err) = self.record_failures().await {
            tracing::error!(array = %self.name, "could not record member failure: {err}");
        }
        if newly {
            self.emit(super::events::Event::MemberFailed {
                slot,
                member: disk.member.path().to_string(),
            });
            let missing = self.missing_description();
            if self.failed.get() {
                self.emit(super::events::Event::ArrayFailed { missing });
            } else {
                self.emit(super::events::Event::DegradedArray { missing });
            }
            self.needs_attention();
        }
        SlotGone
    }

    /// Whether every array byte still has at least one readable copy (or can be rebuilt).
    pub(crate) fn has_redundancy_for_all_data(&self) -> bool {
        self.has_redundancy_without(None)
    }

    /// Whether every array byte would keep a readable copy (or be rebuildable) if `without`
    /// were gone too.
    pub(crate) fn has_redundancy_without(&self, without: Option<usize>) -> bool {
        let active: Vec<bool> = self
            .slots
            .borrow()
            .iter()
            .enumerate()
            .map(|(i, s)| s.is_active() && Some(i) != without)
            .collect();
        let missing = active.iter().filter(|a| !**a).count();
        match self.geo.level() {
            Level::Raid0 => missing == 0,
            Level::Raid1 => missing < active.len(),
            Level::Raid5 | Level::Raid6 | Level::Ec => missing <= self.geo.parities(),
            Level::Raid10 => {
                // The pattern of copies repeats; checking a few periods of chunks is exhaustive.
                let chunk = self.geo.chunk_bytes();
                let period = (self.geo.members() * self.geo.copies() * 2) as u64;
                let chunks = self.geo.array_bytes() / chunk;
                (0..period.min(chunks)).all(|c| {
                    self.geo
                        .map_copies(c * chunk)
                        .iter()
                        .any(|p| active[p.slot])
                })
            }
        }
    }

    /// Error for a request whose data is not available any more.
    pub(super) fn lost_error(&self, offset: u64) -> Error {
        if self.failed.get() {
            return self.failed_error();
        }
        Error::new(
            ErrorKind::Io,
            format!("array {}: no readable copy of offset {offset}", self.name),
        )
    }
}
