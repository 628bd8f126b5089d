//! Reading a region of one slot from the others, for a rebuild or a `replace` copy: the
//! stripe locks that cover it, and the data it should hold (reconstructed, or recorded lost).

use std::rc::Rc;

use super::Controller;
use crate::buf::BufSlice;
use crate::layout::{Level, Reverse};
use crate::reactor::KeyedLockGuard;

impl Controller {
    /// Stripe locks covering `len` bytes of `slot` at `member_offset`, in ascending order.
    pub(super) async fn lock_member_range(
        &self,
        slot: usize,
        member_offset: u64,
        len: u64,
    ) -> Vec<KeyedLockGuard> {
        let mut keys: Vec<u64> = match self.array.geo.level() {
            Level::Raid5 | Level::Raid6 | Level::Ec => {
                let chunk = self.array.geo.chunk_bytes();
                (member_offset / chunk..(member_offset + len - 1) / chunk + 1).collect()
            }
            Level::Raid1 => {
                let unit = self.array.geo.stripe_bytes();
                (member_offset / unit..(member_offset + len - 1) / unit + 1).collect()
            }
            _ => {
                let chunk = self.array.geo.chunk_bytes();
                let mut keys = Vec::new();
                let mut at = member_offset;
                while at < member_offset + len {
                    if let Reverse::Data { array_offset } = self.array.geo.reverse(slot, at) {
                        keys.push(array_offset / self.array.geo.stripe_bytes());
                    }
                    at = (at / chunk + 1) * chunk;
                }
                keys
            }
        };
        keys.sort_unstable();
        keys.dedup();
        let mut guards = Vec::with_capacity(keys.len());
        for k in keys {
            guards.push(self.array.locks.lock(k).await);
        }
        guards
    }

    /// Fills `buf` with what `slot` must hold at `member_offset`, for `target` (the member
    /// being rebuilt or the replacement): from `slot`'s own member first when `own_first`,
    /// else from redundancy. Where neither has the data (unreadable sectors on the sources),
    /// the 4 KiB blocks concerned are recorded bad on `target` and the rest is filled; false
    /// when the array has no sources left at all (it failed) or `target` cannot keep the
    /// record.
    pub(super) async fn fill_for(
        &self,
        slot: usize,
        target: &Rc<crate::raid::Disk>,
        member_offset: u64,
        buf: &BufSlice,
        own_first: bool,
    ) -> bool {
        let whole = (own_first
            && self
                .array
                .read_slot(slot, member_offset, buf.clone())
                .await
                .is_ok())
            || self.read_for_rebuild(slot, member_offset, buf).await;
        if whole {
            return true;
        }
        if self.array.failed.get() {
            return false;
        }
        const BLOCK: usize = 4096;
        for start in (0..buf.len()).step_by(BLOCK) {
            let part = buf.slice(start, BLOCK.min(buf.len() - start));
            let at = member_offset + start as u64;
            let got = (own_first && self.array.read_slot(slot, at, part.clone()).await.is_ok())
                || self.read_for_rebuild(slot, at, &part).await;
            if self.array.failed.get() {
                return false;
            }
            if !got {
                // SAFETY: our own buffer; the reads into it have completed (and failed).
                (unsafe { part.bytes_mut() }).fill(0);
                if !self.array.record_bad(target, at, part.len() as u64).await {
                    return false;
                }
            }
        }
        true
    }

    /// Fills `buf` with what `slot` must hold at `member_offset`, from the other members.
    pub(super) async fn read_for_rebuild(
        &self,
        slot: usize,
        member_offset: u64,
        buf: &BufSlice,
    ) -> bool {
        match self.array.geo.level() {
            Level::Raid5 | Level::Raid6 | Level::Ec => self
                .array
                .reconstruct(slot, member_offset, buf.clone())
                .await
                .is_ok(),
            _ => {
                let chunk = if self.array.geo.level() == Level::Raid1 {
                    buf.len() as u64
                } else {
                    self.array.geo.chunk_bytes()
                };
                let mut done = 0u64;
                while done < buf.len() as u64 {
                    let at = member_offset + done;
                    let n = (chunk - at % chunk).min(buf.len() as u64 - done);
                    let part = buf.slice(done as usize, n as usize);
                    let array_offset = match self.array.geo.level() {
                        Level::Raid1 => at,
                        _ => match self.array.geo.reverse(slot, at) {
                            Reverse::Data { array_offset } => array_offset,
                            _ => {
                                done += n;
                                continue;
                            }
                        },
                    };
                    if !self.array.read_a_copy(array_offset, part, Some(slot)).await {
                        return false;
                    }
                    done += n;
                }
                true
            }
        }
    }
}
