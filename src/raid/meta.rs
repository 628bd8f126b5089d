//! Keeping the members' superblocks in step with what happened to the array.
//!
//! Every state change is written to every present member (active and spare) before the request
//! that caused it completes: a member failed (its role becomes faulty), the array became dirty
//! (first write after a clean start: resync_offset = 0) or clean (stop: resync_offset = the sync
//! point). Each write bumps `events` and `utime`, and the bitmap superblock's events follow so md
//! does not call the bitmap stale. Updates are serialised by the array's meta lock.
//!
//! A superblock write that fails marks that member faulty too and the update is repeated for
//! the remaining members (bounded by the member count).

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use futures::future::join_all;

use super::slots::{Disk, SlotState};
use super::Array;
use crate::buf::AlignedBuf;
use crate::error::{Error, Result};
use crate::metadata::{Role, Superblock, FEATURE_RECOVERY_OFFSET};

/// Byte offset of the md v1.2 superblock on a member.
pub const SUPERBLOCK_OFFSET_BYTES: u64 = 4096;

/// One present member's own superblock (and bitmap superblock sector, if any).
pub(crate) struct MetaDisk {
    pub disk: Rc<Disk>,
    pub sb: Superblock,
    /// The first 512 bytes of the bitmap area (bitmap superblock + first bits), rewritten with
    /// new events; the bits themselves are left as they are.
    pub bitmap_sector: Option<AlignedBuf>,
    /// Whether this member still takes metadata writes.
    pub present: bool,
}

pub(crate) struct MetaState {
    pub(crate) disks: RefCell<Vec<MetaDisk>>,
    /// Roles, events and resync_offset shared by the array (from the freshest superblock).
    pub(crate) reference: RefCell<Superblock>,
    clean: Cell<bool>,
    /// Set only once the dirty mark is on every member: writes wait for it.
    dirty_on_disk: Cell<bool>,
}

impl MetaState {
    pub fn new(reference: Superblock, disks: Vec<MetaDisk>) -> MetaState {
        let clean = reference.is_clean();
        MetaState {
            disks: RefCell::new(disks),
            reference: RefCell::new(reference),
            clean: Cell::new(clean),
            dirty_on_disk: Cell::new(!clean),
        }
    }

    pub fn is_clean(&self) -> bool {
        self.clean.get()
    }

    pub fn events(&self) -> u64 {
        self.reference.borrow().events
    }

    /// A copy of the array-wide superblock (roles, events, state) for status and tests.
    pub fn reference(&self) -> Superblock {
        self.reference.borrow().clone()
    }
}

impl Array {
    /// The dev_numbers of every member the array holds (slots and spares).
    pub(crate) fn dev_numbers(&self) -> Vec<u32> {
        self.meta
            .disks
            .borrow()
            .iter()
            .map(|m| m.disk.dev_number)
            .collect()
    }

    pub fn events(&self) -> u64 {
        self.meta.events()
    }

    /// The array-wide superblock as last written.
    pub fn superblock(&self) -> Superblock {
        self.meta.reference()
    }

    /// Persists faulty roles for every slot the engine has marked faulty.
    pub(crate) async fn record_failures(&self) -> Result<()> {
        let _guard = self.meta_lock.lock().await;
        let faulty: Vec<u32> = self
            .slots
            .borrow()
            .iter()
            .filter_map(|s| match s {
                SlotState::Faulty(d) => Some(d.dev_number),
                _ => None,
            })
            .collect();
        // A faulty member takes no more metadata writes: its superblock stays as it was, which
        // is how md leaves it (its own copy still says active, with an old event count).
        for d in self.meta.disks.borrow_mut().iter_mut() {
            if faulty.contains(&d.disk.dev_number) {
                d.present = false;
            }
        }
        let changed = {
            let mut reference = self.meta.reference.borrow_mut();
            let mut changed = false;
            for dev in faulty {
                if reference.role_of(dev) != Role::Faulty {
                    reference.set_role(dev, Role::Faulty).map_err(Error::from)?;
                    changed = true;
                }
            }
            changed
        };
        if changed {
            self.write_all_superblocks().await?;
        }
        Ok(())
    }

    /// Marks the array dirty on disk before its first write (no-op when already dirty). Every
    /// write waits here until the mark is on the members, so none can land while the disks
    /// still call the array clean. (The bitmap bits of each write are set by `begin_write`.)
    pub(crate) async fn mark_dirty(&self) -> Result<()> {
        if self.meta.dirty_on_disk.get() {
            return Ok(());
        }
        let _guard = self.meta_lock.lock().await;
        if self.meta.dirty_on_disk.get() {
            return Ok(());
        }
        self.meta.reference.borrow_mut().resync_offset = 0;
        self.meta.clean.set(false);
        self.write_all_superblocks().await?;
        self.meta.dirty_on_disk.set(true);
        Ok(())
    }

    /// Records a member's rebuild: `Some(slot)` with the bytes rebuilt so far (feature
    /// RECOVERY_OFFSET set on that member, role = the slot in every superblock), or `None` when
    /// it is complete (the feature cleared). Bumps events like every metadata update.
    pub(crate) async fn meta_recovery(
        &self,
        dev_number: u32,
        slot: Option<usize>,
        done_bytes: u64,
    ) -> Result<()> {
        let _guard = self.meta_lock.lock().await;
        if let Some(slot) = slot {
            self.meta
                .reference
                .borrow_mut()
                .set_role(dev_number, Role::Active(slot as u16))
                .map_err(Error::from)?;
        }
        for d in self.meta.disks.borrow_mut().iter_mut() {
            if d.disk.dev_number == dev_number {
                if slot.is_some() {
                    d.sb.feature_map |= FEATURE_RECOVERY_OFFSET;
                    d.sb.recovery_offset_sectors = done_bytes / 512;
                } else {
                    d.sb.feature_map &= !FEATURE_RECOVERY_OFFSET;
                    d.sb.recovery_offset_sectors = 0;
                }
            }
        }
        self.write_all_superblocks().await
    }

    /// Marks the array clean on disk, recording how far redundancy is known good.
    pub(super) async fn mark_clean(&self) -> Result<()> {
        let _guard = self.meta_lock.lock().await;
        let sync = self.sync_offset.get();
        self.meta.reference.borrow_mut().resync_offset = if sync == u64::MAX {
            u64::MAX
        } else {
            sync / 512
        };
        self.meta.clean.set(true);
        self.write_all_superblocks().await
    }

    /// Bumps events and writes the shared state into every present member's superblock.
    /// Caller holds the meta lock.
    pub(crate) async fn write_all_superblocks(&self) -> Result<()> {
        let attempts = self.meta.disks.borrow().len() + 1;
        for _attempt in 0..attempts {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            let writes: Vec<(usize, Rc<Disk>, AlignedBuf, Option<AlignedBuf>)> = {
                let mut reference = self.meta.reference.borrow_mut();
                reference.events += 1;
                reference.set_utime_secs(now);
                let mut disks = self.meta.disks.borrow_mut();
                disks
                    .iter_mut()
                    .enumerate()
                    .filter(|(_, d)| d.present)
                    .map(|(i, d)| {
                        d.sb.dev_roles = reference.dev_roles.clone();
                        d.sb.events = reference.events;
                        d.sb.resync_offset = reference.resync_offset;
                        d.sb.utime = reference.utime;
                        let sb = AlignedBuf::from_slice(&d.sb.encode());
                        let bitmap = d.bitmap_sector.as_mut().map(|sector| {
                            super::intent::refresh_bitmap_sector(
                                sector,
                                reference.events,
                                self.intent.as_deref(),
                            );
                            AlignedBuf::from_slice(sector.as_slice())
                        });
                        (i, d.disk.clone(), sb, bitmap)
                    })
                    .collect()
            };
            let results = join_all(writes.into_iter().map(|(i, disk, sb, bitmap)| async move {
                let bitmap_at = self.bitmap_offset_bytes(i);
                if let (Some(b), Some(at)) = (bitmap, bitmap_at) {
                    disk.member.write(at, b.into_shared(), true).await?;
                }
                disk.member
                    .write(SUPERBLOCK_OFFSET_BYTES, sb.into_shared(), true)
                    .await?;
                Ok::<_, std::io::Error>(())
            }))
            .await;
            let mut failed_any = false;
            for (i, r) in self.present_indices().into_iter().zip(results) {
                if let Err(e) = r {
                    failed_any = true;
                    self.drop_metadata_member(i, &e);
                }
            }
            if !failed_any {
                return Ok(());
            }
        }
        Err(Error::new(
            crate::error::ErrorKind::Io,
            format!("array {}: could not write superblocks", self.name),
        ))
    }

    fn present_indices(&self) -> Vec<usize> {
        self.meta
            .disks
            .borrow()
            .iter()
            .enumerate()
            .filter(|(_, d)| d.present)
            .map(|(i, _)| i)
            .collect()
    }

    pub(super) fn bitmap_offset_bytes(&self, index: usize) -> Option<u64> {
        let disks = self.meta.disks.borrow();
        let sb = &disks[index].sb;
        let off = sb.bitmap_offset_sectors as i64 * 512 + SUPERBLOCK_OFFSET_BYTES as i64;
        (disks[index].bitmap_sector.is_some() && off > 0).then_some(off as u64)
    }

    /// A member whose superblock cannot be written is failed (without persisting from here:
    /// the caller's retry loop writes the new roles).
    pub(super) fn drop_metadata_member(&self, index: usize, e: &std::io::Error) {
        let disk = {
            let mut disks = self.meta.disks.borrow_mut();
            disks[index].present = false;
            disks[index].disk.clone()
        };
        tracing::error!(array = %self.name, member = disk.member.path(), "superblock write failed: {e}; marking it faulty");
        let mut slots = self.slots.borrow_mut();
        for slot in 0..slots.len() {
            if let SlotState::Active(d) | SlotState::Recovering(d, _) = &slots[slot] {
                if Rc::ptr_eq(d, &disk) {
                    super::slots::set_slot(&mut slots, slot, SlotState::Faulty(disk.clone()));
                }
            }
        }
        self.spares.borrow_mut().retain(|d| !Rc::ptr_eq(d, &disk));
        let _ = self
            .meta
            .reference
            .borrow_mut()
            .set_role(disk.dev_number, Role::Faulty);
        drop(slots);
        if !self.has_redundancy_for_all_data() {
            self.failed.set(true);
        }
    }
}
