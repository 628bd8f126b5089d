//! Member management on a running array: fail, remove, add a spare.
//!
//! Each change is written to every present member's superblock (roles, events) before it is
//! reported done, so `raidctl examine` and `mdadm --examine` agree with `status` after every
//! step. Adding a spare to a degraded array starts its rebuild at once (the scheduler runs).

use std::rc::Rc;

use super::create::{random_bytes, read_superblock, write_member_metadata};
use super::Controller;
use crate::buf::AlignedBuf;
use crate::error::{Error, ErrorKind, Result};
use crate::member::Member;
use crate::metadata::{format_uuid, Role, FEATURE_RECOVERY_OFFSET, FEATURE_REPLACEMENT};
use crate::raid::events::Event;
use crate::raid::meta::SUPERBLOCK_OFFSET_BYTES;
use crate::raid::slots::{Disk, SlotState};

impl Controller {
    /// Members that failed and whose slot a spare has taken: md lists them as faulty until
    /// they are removed.
    pub fn replaced_faulty(&self) -> Vec<Rc<Disk>> {
        let reference = self.array.meta.reference.borrow();
        let slots = self.array.slots.borrow();
        self.array
            .meta
            .disks
            .borrow()
            .iter()
            .filter(|m| reference.role_of(m.disk.dev_number) == Role::Faulty)
            .filter(|m| {
                !slots
                    .iter()
                    .any(|s| s.disk().is_some_and(|d| Rc::ptr_eq(d, &m.disk)))
            })
            .map(|m| m.disk.clone())
            .collect()
    }

    fn slot_of(&self, path: &str) -> Option<usize> {
        self.array
            .slots
            .borrow()
            .iter()
            .position(|s| s.disk().is_some_and(|d| d.member.path() == path))
    }

    /// Refuses, as "array NAME {state} (what is missing): {fix}", unless every slot is active.
    pub(super) fn require_complete(&self, state: &str, fix: &str) -> Result<()> {
        if self.array.slots.borrow().iter().all(|s| s.is_active()) {
            return Ok(());
        }
        Err(Error::new(
            ErrorKind::Inconsistent,
            format!(
                "array {} {state} ({}): {fix}",
                self.array.name,
                self.array.missing_description()
            ),
        ))
    }

    /// Whether `path` is one of the array's spares.
    fn is_spare(&self, path: &str) -> bool {
        self.array
            .spares
            .borrow()
            .iter()
            .any(|d| d.member.path() == path)
    }

    /// Marks a member faulty, as if it had failed (the spare, if any, takes over). Refused,
    /// unless `force`, when the member holds the last copy of some data: the array would fail
    /// (mdadm refuses the same; md keeps the last member of a mirror).
    pub async fn fail_member(&self, path: &str, force: bool) -> Result<()> {
        let Some(slot) = self.slot_of(path) else {
            if self.is_spare(path) {
                return Err(Error::invalid(format!(
                    "{path} is a spare, not an active member: use remove"
                )));
            }
            return Err(Error::invalid(format!(
                "{path} is not a member of array {}",
                self.array.name
            )));
        };
        if !force {
            self.check_redundancy_floor(slot, path)?;
        }
        let disk = {
            let mut slots = self.array.slots.borrow_mut();
            match &slots[slot] {
                SlotState::Active(d) | SlotState::Recovering(d, _) => {
                    let d = d.clone();
                    crate::raid::slots::set_slot(&mut slots, slot, SlotState::Faulty(d.clone()));
                    d
                }
                _ => return Err(Error::invalid(format!("{path} is already faulty"))),
            }
        };
        if !self.array.has_redundancy_for_all_data() {
            self.array.failed.set(true);
        }
        self.array.record_failures().await?;
        self.array.emit(Event::MemberFailed {
            slot,
            member: disk.member.path().to_string(),
        });
        if self.array.failed.get() {
            self.array.emit(Event::ArrayFailed {
                missing: self.array.missing_description(),
            });
        } else {
            self.array.emit(Event::DegradedArray {
                missing: self.array.missing_description(),
            });
        }
        self.array.needs_attention();
        Ok(())
    }

    /// Refuses to take `slot` (member `path`) away when some data would then have no copy.
    /// Members that are recovering or spares hold no copy of their own, so they never count.
    fn check_redundancy_floor(&self, slot: usize, path: &str) -> Result<()> {
        if !self.array.slots.borrow()[slot].is_active() {
            return Ok(()); // a recovering member holds no data the array relies on
        }
        if self.array.has_redundancy_without(Some(slot)) {
            return Ok(());
        }
        let why = if self.array.geo.level() == crate::layout::Level::Raid0 {
            format!("RAID0 has no redundancy and {path} holds the only copy of its data")
        } else {
            let others = self.array.missing_description_except(slot);
            if others == "none" {
                format!("{path} holds the last copy of some data")
            } else {
                format!("{others} already, and {path} holds the last copy of some data")
            }
        };
        Err(Error::new(
            ErrorKind::Inconsistent,
            format!(
                "array {} would fail: {why}; nothing changed (use --force to fail it anyway)",
                self.array.name
            ),
        ))
    }

    /// Removes a faulty member or a spare from the array (an active one must be failed first).
    pub async fn remove_member(&self, path: &str) -> Result<()> {
        let disk = if let Some(slot) = self.slot_of(path) {
            let mut slots = self.array.slots.borrow_mut();
            match &slots[slot] {
                SlotState::Faulty(d) => {
                    let d = d.clone();
                    crate::raid::slots::set_slot(&mut slots, slot, SlotState::Missing);
                    d
                }
                _ => {
                    return Err(Error::invalid(format!(
                        "{path} is in use in slot {slot}: fail it first (raidctl fail {} {path})",
                        self.array.name
                    )))
                }
            }
        } else if let Some(d) = self
            .replaced_faulty()
            .into_iter()
            .find(|d| d.member.path() == path)
        {
            // Failed and already replaced by a spare: only its metadata entry is left.
            d
        } else {
            let mut spares = self.array.spares.borrow_mut();
            let Some(i) = spares.iter().position(|d| d.member.path() == path) else {
                return Err(Error::invalid(format!(
                    "{path} is not a member of array {}",
                    self.array.name
                )));
            };
            spares.remove(i)
        };
        {
            let _guard = self.array.meta_lock.lock().await;
            // md's removed devices leave the roles table: their entry is "unused" again.
            let _ = self
                .array
                .meta
                .reference
                .borrow_mut()
                .set_role(disk.dev_number, Role::Spare);
            self.array
                .meta
                .disks
                .borrow_mut()
                .retain(|m| !Rc::ptr_eq(&m.disk, &disk));
            self.array.write_all_superblocks().await?;
        }
        self.array.emit(Event::MemberRemoved {
            member: path.to_string(),
        });
        Ok(())
    }

    /// Gives up one spare to another array of our spare group, if we have one and are complete
    /// ourselves. Returns its path; its claim is released when the last reference goes.
    pub async fn give_spare(&self, group: &str) -> Option<String> {
        if self.extension.borrow().spare_group.as_deref() != Some(group)
            || self.array.slots.borrow().iter().any(|s| !s.is_active())
        {
            return None;
        }
        let path = self
            .array
            .spares
            .borrow()
            .first()
            .map(|d| d.member.path().to_string())?;
        self.remove_member(&path).await.ok()?;
        Some(path)
    }

    /// Adds `member` as a hot spare: writes its superblock (this array's, role spare) and
    /// wakes the scheduler, which puts it to work if a slot is empty. A former member whose
    /// slot is empty and whose changes the bitmap still covers is re-added there instead.
    pub async fn add_spare(&self, member: Rc<dyn Member>, force: bool) -> Result<()> {
        let readd = self.check_new_member(member.as_ref(), force).await?;
        let guard = self.array.meta_lock.lock().await;
        let (dev_number, role, readd) = self.choose_identity(readd);
        let mut sb =
            self.new_member_superblock(member.as_ref(), dev_number, role, readd.as_ref())?;
        let group = self.spare_group();
        // The new member's bitmap must have the array's chunk (which may not be the default).
        let chunk = self
            .array
            .intent
            .as_ref()
            .map(|i| i.map.borrow().chunk_bytes() as u32);
        write_member_metadata(member.as_ref(), &sb, chunk, group.as_deref()).await?;
        let data_offset = sb.data_offset_sectors * 512;
        let disk = Rc::new(Disk::new(member.clone(), data_offset, dev_number));
        let bitmap_sector = read_bitmap_sector(member.as_ref(), &sb).await;
        // A spare may have been promoted into the slot while the metadata was written: then
        // this is a spare after all (write_all_superblocks below rewrites its superblock).
        let mut readd_slot = readd.map(|(slot, _)| slot);
        if let Some(slot) = readd_slot {
            if !matches!(self.array.slots.borrow()[slot], SlotState::Missing) {
                readd_slot = None;
                sb.feature_map &= !FEATURE_RECOVERY_OFFSET;
                sb.set_role(dev_number, Role::Spare).map_err(Error::from)?;
            }
        }
        let role = readd_slot.map_or(Role::Spare, |slot| Role::Active(slot as u16));
        let _ = self
            .array
            .meta
            .reference
            .borrow_mut()
            .set_role(dev_number, role);
        self.array
            .meta
            .disks
            .borrow_mut()
            .push(crate::raid::meta::MetaDisk {
                disk: disk.clone(),
                sb,
                bitmap_sector,
                present: true,
            });
        if let Some(slot) = readd_slot {
            self.readded.borrow_mut().push(disk.clone());
            let cursor = Rc::new(std::cell::Cell::new(0));
            let recovering = SlotState::Recovering(disk.clone(), cursor);
            crate::raid::slots::set_slot(&mut self.array.slots.borrow_mut(), slot, recovering);
        }
        self.array.write_all_superblocks().await?;
        // Its bitmap must carry the bits of everything written while it was away.
        self.array.write_bitmaps().await?;
        drop(guard);
        self.announce_added(disk, readd_slot).await;
        Ok(())
    }

    /// Refuses a member that is already in, belongs to another array (without `force`) or
    /// is too small; returns the slot it may be re-added to, with its old superblock.
    async fn check_new_member(
        &self,
        member: &dyn Member,
        force: bool,
    ) -> Result<Option<(usize, crate::metadata::Superblock)>> {
        let path = member.path();
        if self.slot_of(path).is_some() || self.is_spare(path) {
            return Err(Error::invalid(format!(
                "{path} is already a member of array {}",
                self.array.name
            )));
        }
        let reference = self.array.meta.reference();
        let mut readd = None;
        if let Some(sb) = read_superblock(member).await? {
            if sb.set_uuid == reference.set_uuid {
                readd = self.readd_slot(&sb).map(|slot| (slot, sb));
            } else if !force {
                return Err(Error::new(
                    ErrorKind::Busy,
                    format!(
                        "{path} belongs to array {} (UUID {}): use --force to overwrite it",
                        sb.array_name(),
                        format_uuid(&sb.set_uuid)
                    ),
                ));
            }
        }
        let needed = reference.data_offset_sectors * 512 + self.array.geo.member_used_bytes();
        if member.size_bytes() < needed {
            return Err(Error::invalid(format!(
                "{path} is too small: array {} needs {needed} bytes per member, it has {}",
                self.array.name,
                member.size_bytes()
            )));
        }
        Ok(readd)
    }

    /// The new member's dev_number and role (meta lock held). A former member keeps its
    /// dev_number and device UUID (md's re-add) if its slot is still free for it; a new
    /// spare gets the first free number.
    fn choose_identity(
        &self,
        readd: Option<(usize, crate::metadata::Superblock)>,
    ) -> (u32, Role, Option<(usize, crate::metadata::Superblock)>) {
        let used = self.array.dev_numbers();
        match readd {
            // Checked again under the lock: the slot may have been filled meanwhile.
            Some((slot, old))
                if !used.contains(&old.dev_number) && self.readd_slot(&old) == Some(slot) =>
            {
                (old.dev_number, Role::Active(slot as u16), Some((slot, old)))
            }
            _ => {
                let reference = self.array.meta.reference.borrow();
                let n = (0u32..)
                    .find(|n| !used.contains(n) && reference.role_of(*n) == Role::Spare)
                    .expect("a free dev_number exists");
                (n, Role::Spare, None)
            }
        }
    }

    /// The array's superblock as `member` gets it: its own identity and size, no recovery
    /// in progress, except that a re-added member is rebuilt from 0 where the bitmap says.
    fn new_member_superblock(
        &self,
        member: &dyn Member,
        dev_number: u32,
        role: Role,
        readd: Option<&(usize, crate::metadata::Superblock)>,
    ) -> Result<crate::metadata::Superblock> {
        let mut sb = self.array.meta.reference();
        sb.dev_number = dev_number;
        sb.device_uuid = match readd {
            Some((_, old)) => old.device_uuid,
            None => random_bytes(),
        };
        sb.data_size_sectors = member.size_bytes() / 512 - sb.data_offset_sectors;
        sb.feature_map &= !(FEATURE_RECOVERY_OFFSET | FEATURE_REPLACEMENT);
        sb.recovery_offset_sectors = 0;
        sb.devflags = 0;
        sb.cnt_corrected_read = 0;
        if readd.is_some() {
            // Rebuilt from 0, but only where the bitmap says something changed.
            sb.feature_map |= FEATURE_RECOVERY_OFFSET;
        }
        sb.set_role(dev_number, role).map_err(Error::from)?;
        Ok(sb)
    }

    /// Tells everyone about a member just added: a spare (then it joins the spares) or a
    /// re-add into `slot`; copies the array's settings to it.
    async fn announce_added(&self, disk: Rc<Disk>, readd_slot: Option<usize>) {
        let path = disk.member.path().to_string();
        let role = match readd_slot {
            Some(slot) => {
                tracing::info!(array = %self.array.name, member = %path, "re-added to slot {slot}: only the chunks the write-intent bitmap marks dirty are rebuilt");
                format!("re-added to slot {slot}")
            }
            None => {
                self.array.spares.borrow_mut().push(disk);
                "spare".into()
            }
        };
        // The new member's extension block was written fresh: give it the array's settings
        // (cache policy, speed limits), so any member read at the next assembly has them.
        if let Err(e) = self.update_extension(|_| {}).await {
            tracing::warn!(array = %self.array.name, "settings not copied to {path}: {e}");
        }
        self.array.emit(Event::MemberAdded { member: path, role });
        self.array.needs_attention();
    }

    /// The slot a former member may return to with a bitmap-driven rebuild (md's re-add):
    /// it was in sync in that slot when it left (no recovery offset), the slot is empty now,
    /// and the bitmap has not been cleared since it left (events >= events_cleared), so every
    /// chunk written without it is still marked.
    fn readd_slot(&self, sb: &crate::metadata::Superblock) -> Option<usize> {
        let intent = self.array.intent.as_ref()?;
        let reference = self.array.meta.reference.borrow();
        let Role::Active(slot) = sb.role_of(sb.dev_number) else {
            return None;
        };
        let slot = slot as usize;
        let empty = matches!(self.array.slots.borrow().get(slot)?, SlotState::Missing)
            && !self.array.slot_being_replaced(slot);
        // A member with recorded bad blocks is rebuilt in full: the partial rebuild would
        // skip ranges it never had the data for, and its log is rewritten empty.
        (empty
            && !sb.has_feature(FEATURE_RECOVERY_OFFSET)
            && !sb.has_feature(crate::metadata::FEATURE_BAD_BLOCKS)
            && sb.data_offset_sectors == reference.data_offset_sectors
            && sb.events >= intent.events_cleared.get()
            && sb.events <= reference.events)
            .then_some(slot)
    }
}

/// The first sector of `member`'s bitmap, as the metadata writer left it.
async fn read_bitmap_sector(
    member: &dyn Member,
    sb: &crate::metadata::Superblock,
) -> Option<AlignedBuf> {
    if sb.bitmap_offset_sectors == 0 {
        return None;
    }
    let at = (SUPERBLOCK_OFFSET_BYTES as i64 + sb.bitmap_offset_sectors as i64 * 512) as u64;
    let buf = AlignedBuf::zeroed(512).into_shared();
    member.read(at, buf.clone()).await.ok()?;
    Some(AlignedBuf::from_slice(buf.bytes()))
}
