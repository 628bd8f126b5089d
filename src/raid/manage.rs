//! Member management on a running array: fail, remove, add a spare.
//!
//! Each change is written to every present member's superblock (roles, events) before it is
//! reported done, so `raidctl examine` and `mdadm --examine` agree with `status` after every
//! step. Adding a spare to a degraded array starts its rebuild at once (the scheduler runs).

use std::rc::Rc;

use super::create::{random_bytes, read_superblock, write_member_metadata};
use super::events::Event;
use super::meta::SUPERBLOCK_OFFSET_BYTES;
use super::slots::{Disk, SlotState};
use super::Array;
use crate::buf::AlignedBuf;
use crate::error::{Error, ErrorKind, Result};
use crate::member::Member;
use crate::metadata::{format_uuid, Role, FEATURE_RECOVERY_OFFSET, FEATURE_REPLACEMENT};

impl Array {
    /// Members that failed and whose slot a spare has taken: md lists them as faulty until
    /// they are removed.
    pub fn replaced_faulty(&self) -> Vec<Rc<Disk>> {
        let reference = self.meta.reference.borrow();
        let slots = self.slots.borrow();
        self.meta
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
        self.slots
            .borrow()
            .iter()
            .position(|s| s.disk().is_some_and(|d| d.member.path() == path))
    }

    /// Marks a member faulty, as if it had failed (the spare, if any, takes over).
    pub async fn fail_member(&self, path: &str) -> Result<()> {
        let Some(slot) = self.slot_of(path) else {
            if self.spares.borrow().iter().any(|d| d.member.path() == path) {
                return Err(Error::invalid(format!(
                    "{path} is a spare, not an active member: use remove"
                )));
            }
            return Err(Error::invalid(format!(
                "{path} is not a member of array {}",
                self.name
            )));
        };
        let disk = {
            let mut slots = self.slots.borrow_mut();
            match &slots[slot] {
                SlotState::Active(d) | SlotState::Recovering(d, _) => {
                    let d = d.clone();
                    slots[slot] = SlotState::Faulty(d.clone());
                    d
                }
                _ => return Err(Error::invalid(format!("{path} is already faulty"))),
            }
        };
        if !self.has_redundancy_for_all_data() {
            self.failed.set(true);
        }
        self.record_failures().await?;
        self.emit(Event::MemberFailed {
            slot,
            member: disk.member.path().to_string(),
        });
        if self.failed.get() {
            self.emit(Event::ArrayFailed {
                missing: self.missing_description(),
            });
        } else {
            self.emit(Event::DegradedArray {
                missing: self.missing_description(),
            });
        }
        self.needs_attention();
        Ok(())
    }

    /// Removes a faulty member or a spare from the array (an active one must be failed first).
    pub async fn remove_member(&self, path: &str) -> Result<()> {
        let disk = if let Some(slot) = self.slot_of(path) {
            let mut slots = self.slots.borrow_mut();
            match &slots[slot] {
                SlotState::Faulty(d) => {
                    let d = d.clone();
                    slots[slot] = SlotState::Missing;
                    d
                }
                _ => {
                    return Err(Error::invalid(format!(
                        "{path} is in use in slot {slot}: fail it first (raidctl fail {} {path})",
                        self.name
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
            let mut spares = self.spares.borrow_mut();
            let Some(i) = spares.iter().position(|d| d.member.path() == path) else {
                return Err(Error::invalid(format!(
                    "{path} is not a member of array {}",
                    self.name
                )));
            };
            spares.remove(i)
        };
        {
            let _guard = self.meta_lock.lock().await;
            // md's removed devices leave the roles table: their entry is "unused" again.
            let _ = self
                .meta
                .reference
                .borrow_mut()
                .set_role(disk.dev_number, Role::Spare);
            self.meta
                .disks
                .borrow_mut()
                .retain(|m| !Rc::ptr_eq(&m.disk, &disk));
            self.write_all_superblocks().await?;
        }
        self.emit(Event::MemberRemoved {
            member: path.to_string(),
        });
        Ok(())
    }

    /// Gives up one spare to another array of our spare group, if we have one and are complete
    /// ourselves. Returns its path; its claim is released when the last reference goes.
    pub async fn give_spare(&self, group: &str) -> Option<String> {
        if self.extension.borrow().spare_group.as_deref() != Some(group)
            || self.slots.borrow().iter().any(|s| !s.is_active())
        {
            return None;
        }
        let path = self
            .spares
            .borrow()
            .first()
            .map(|d| d.member.path().to_string())?;
        self.remove_member(&path).await.ok()?;
        Some(path)
    }

    /// Adds `member` as a hot spare: writes its superblock (this array's, role spare) and
    /// wakes the scheduler, which puts it to work if a slot is empty.
    pub async fn add_spare(&self, member: Rc<dyn Member>, force: bool) -> Result<()> {
        let path = member.path().to_string();
        if self.slot_of(&path).is_some()
            || self.spares.borrow().iter().any(|d| d.member.path() == path)
        {
            return Err(Error::invalid(format!(
                "{path} is already a member of array {}",
                self.name
            )));
        }
        let reference = self.meta.reference();
        if let Some(sb) = read_superblock(member.as_ref()).await? {
            if sb.set_uuid != reference.set_uuid && !force {
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
        let data_offset = reference.data_offset_sectors * 512;
        let needed = data_offset + self.geo.member_used_bytes();
        if member.size_bytes() < needed {
            return Err(Error::invalid(format!(
                "{path} is too small: array {} needs {needed} bytes per member, it has {}",
                self.name,
                member.size_bytes()
            )));
        }
        let _guard = self.meta_lock.lock().await;
        let used: Vec<u32> = self
            .meta
            .disks
            .borrow()
            .iter()
            .map(|m| m.disk.dev_number)
            .collect();
        let dev_number = (0u32..)
            .find(|n| !used.contains(n) && reference.role_of(*n) == Role::Spare)
            .expect("a free dev_number exists");
        let mut sb = reference.clone();
        sb.dev_number = dev_number;
        sb.device_uuid = random_bytes();
        sb.data_size_sectors = member.size_bytes() / 512 - reference.data_offset_sectors;
        sb.feature_map &= !(FEATURE_RECOVERY_OFFSET | FEATURE_REPLACEMENT);
        sb.recovery_offset_sectors = 0;
        sb.devflags = 0;
        sb.cnt_corrected_read = 0;
        sb.set_role(dev_number, Role::Spare)
            .map_err(|e| Error::invalid(e.to_string()))?;
        let group = self.spare_group();
        write_member_metadata(member.as_ref(), &sb, group.as_deref()).await?;
        let disk = Rc::new(Disk {
            member: member.clone(),
            data_offset,
            dev_number,
        });
        let bitmap_sector = if sb.bitmap_offset_sectors != 0 {
            let at =
                (SUPERBLOCK_OFFSET_BYTES as i64 + sb.bitmap_offset_sectors as i64 * 512) as u64;
            let buf = AlignedBuf::zeroed(512).into_shared();
            member
                .read(at, buf.clone())
                .await
                .ok()
                .map(|()| AlignedBuf::from_slice(buf.bytes()))
        } else {
            None
        };
        {
            let mut r = self.meta.reference.borrow_mut();
            let _ = r.set_role(dev_number, Role::Spare);
        }
        self.meta.disks.borrow_mut().push(super::meta::MetaDisk {
            disk: disk.clone(),
            sb,
            bitmap_sector,
            present: true,
        });
        self.write_all_superblocks().await?;
        drop(_guard);
        self.spares.borrow_mut().push(disk);
        self.emit(Event::MemberAdded {
            member: path,
            role: "spare".into(),
        });
        self.needs_attention();
        Ok(())
    }
}
