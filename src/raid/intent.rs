//! The write-intent bitmap at run time: which chunks of the resync space may be inconsistent.
//!
//! ```text
//!   write(offset, len) ─► resync range ─► bits ─► newly set? ─► write the bitmap (FUA, every
//!        │                                         member) ─► only then the data write
//!        └─ guard dropped when the write completes: the bit's in-flight count falls
//!   every daemon_sleep (md: 5 s), only on a complete, in-sync array: bits idle for a whole pass
//!        ─► flush the members ─► clear those with no write since ─► write the bitmap,
//!           events_cleared = events
//! ```
//!
//! The resync space is md's: member bytes for RAID1/RAID5, array bytes for RAID10 (reference
//! §2). After a crash only set bits are resynced; a member that comes back (`add` of a former
//! member) gets only the set chunks rebuilt, which is why bits are never cleared while a slot is
//! missing, faulty or recovering. The bit arithmetic (`IntentMap`) is kept apart from the I/O.

use std::cell::{Cell, RefCell};
use std::ops::Range;
use std::rc::Rc;
use std::time::Duration;

use futures::future::join_all;

use super::meta::SUPERBLOCK_OFFSET_BYTES;
use super::Array;
use crate::buf::AlignedBuf;
use crate::error::Result;
use crate::layout::{Level, Reverse};

/// The bits, with per-bit bookkeeping for lazy clearing. Pure: no I/O.
#[derive(Debug, Clone)]
pub(crate) struct IntentMap {
    chunk: u64,
    nbits: u64,
    /// What the members' bitmaps must say: 1 = the chunk may be inconsistent.
    bits: Vec<u8>,
    /// Writes in flight per bit.
    pending: Vec<u32>,
    /// Writes started per bit (wrapping): a write that started while a clear was flushing
    /// changes it, and that bit is then left set.
    epoch: Vec<u32>,
    /// Set, and no write started since the last clear pass.
    idle: Vec<bool>,
}

impl IntentMap {
    /// `bits` as read from disk (shorter input counts as all set: the safe reading).
    pub fn new(chunk: u64, nbits: u64, mut bits: Vec<u8>) -> IntentMap {
        let bytes = nbits.div_ceil(8) as usize;
        bits.resize(bytes, 0xff);
        let n = nbits as usize;
        IntentMap {
            chunk: chunk.max(1),
            nbits,
            bits,
            pending: vec![0; n],
            epoch: vec![0; n],
            idle: vec![false; n],
        }
    }

    pub fn chunk_bytes(&self) -> u64 {
        self.chunk
    }

    pub fn bytes(&self) -> &[u8] {
        &self.bits
    }

    /// Bits covering resync-space bytes `start..end` (clamped to the map).
    pub fn bit_range(&self, start: u64, end: u64) -> Range<u64> {
        if end <= start {
            return 0..0;
        }
        (start / self.chunk).min(self.nbits)..(end.div_ceil(self.chunk)).min(self.nbits)
    }

    pub fn is_set(&self, bit: u64) -> bool {
        bit < self.nbits && self.bits[(bit / 8) as usize] & (1 << (bit % 8)) != 0
    }

    fn set(&mut self, bit: u64) {
        self.bits[(bit / 8) as usize] |= 1 << (bit % 8);
    }

    fn clear(&mut self, bit: u64) {
        self.bits[(bit / 8) as usize] &= !(1 << (bit % 8));
    }

    /// Whether any bit covering resync-space bytes `start..end` is set.
    pub fn any_set(&self, start: u64, end: u64) -> bool {
        self.bit_range(start, end).any(|b| self.is_set(b))
    }

    pub fn dirty_bits(&self) -> u64 {
        (0..self.nbits).filter(|&b| self.is_set(b)).count() as u64
    }

    pub fn set_all(&mut self) {
        for b in 0..self.nbits {
            self.set(b);
        }
    }

    /// A write to `bits` starts. Returns true when a bit was newly set (the bitmap must reach
    /// the members before the data does).
    pub fn begin(&mut self, bits: Range<u64>) -> bool {
        let mut newly = false;
        for b in bits {
            let i = b as usize;
            self.pending[i] += 1;
            self.epoch[i] = self.epoch[i].wrapping_add(1);
            self.idle[i] = false;
            if !self.is_set(b) {
                self.set(b);
                newly = true;
            }
        }
        newly
    }

    /// A write to `bits` has completed.
    pub fn end(&mut self, bits: Range<u64>) {
        for b in bits {
            let i = b as usize;
            self.pending[i] = self.pending[i].saturating_sub(1);
        }
    }

    /// One pass of the clearing daemon: returns the bits that have been idle for a whole pass
    /// (with their epochs, for `clear`), and marks the other set, quiet bits idle.
    pub fn clear_candidates(&mut self) -> Vec<(u64, u32)> {
        let mut out = Vec::new();
        for b in 0..self.nbits {
            let i = b as usize;
            if !self.is_set(b) || self.pending[i] > 0 {
                continue;
            }
            if self.idle[i] {
                out.push((b, self.epoch[i]));
            } else {
                self.idle[i] = true;
            }
        }
        out
    }

    /// Clears the candidates that saw no write since they were chosen. Returns how many.
    pub fn clear_idle(&mut self, candidates: &[(u64, u32)]) -> usize {
        let mut n = 0;
        for &(b, epoch) in candidates {
            let i = b as usize;
            if self.pending[i] == 0 && self.epoch[i] == epoch && self.is_set(b) {
                self.clear(b);
                self.idle[i] = false;
                n += 1;
            }
        }
        n
    }
}

/// The array's bitmap state: the map and the write generations that order bitmap writes.
pub(crate) struct Intent {
    pub map: RefCell<IntentMap>,
    /// Bumped whenever the map gains a bit; `written` is the last generation on the members.
    wanted: Cell<u64>,
    written: Cell<u64>,
    /// md's events_cleared: events when bits were last cleared.
    pub events_cleared: Cell<u64>,
    /// Seconds between clearing passes (the bitmap's daemon_sleep; tests shorten it).
    pub daemon_sleep: Cell<Duration>,
    /// Bytes of the bitmap area (superblock + bits) to write, a multiple of 512.
    pub area_bytes: usize,
}

impl Intent {
    pub fn new(map: IntentMap, events_cleared: u64, daemon_sleep: Duration) -> Intent {
        let area_bytes = (256 + map.bytes().len()).next_multiple_of(512);
        Intent {
            map: RefCell::new(map),
            wanted: Cell::new(0),
            written: Cell::new(0),
            events_cleared: Cell::new(events_cleared),
            daemon_sleep: Cell::new(daemon_sleep),
            area_bytes,
        }
    }
}

/// The bitmap as `status` shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BitmapReport {
    /// Resync-space bytes per bit.
    pub chunk_bytes: u64,
    pub bits: u64,
    /// Chunks that may be inconsistent (written recently, or while a member was away).
    pub dirty_bits: u64,
    pub events_cleared: u64,
}

/// Held for the duration of one write: its bits cannot be cleared meanwhile.
pub(super) struct IntentGuard {
    intent: Rc<Intent>,
    bits: Range<u64>,
}

impl Drop for IntentGuard {
    fn drop(&mut self) {
        self.intent.map.borrow_mut().end(self.bits.clone());
    }
}

impl Array {
    /// Sets the pause between bit-clearing passes (md's bitmap daemon_sleep, 5 s by default).
    pub fn set_bitmap_daemon_sleep(&self, pause: Duration) {
        if let Some(intent) = &self.intent {
            intent.daemon_sleep.set(pause);
        }
    }

    pub fn bitmap_report(&self) -> Option<BitmapReport> {
        let intent = self.intent.as_ref()?;
        let map = intent.map.borrow();
        Some(BitmapReport {
            chunk_bytes: map.chunk_bytes(),
            bits: map.nbits,
            dirty_bits: map.dirty_bits(),
            events_cleared: intent.events_cleared.get(),
        })
    }

    /// Everything a write must do before touching a member: mark the array dirty, and set
    /// (and persist) the bitmap bits of the range. Keep the guard until the write completes.
    pub(super) async fn begin_write(&self, offset: u64, len: u64) -> Result<Option<IntentGuard>> {
        self.mark_dirty().await?;
        let Some(intent) = self.intent.clone() else {
            return Ok(None);
        };
        let (start, end) = self.resync_range(offset, len);
        let bits = intent.map.borrow().bit_range(start, end);
        let newly = intent.map.borrow_mut().begin(bits.clone());
        let guard = IntentGuard {
            intent: intent.clone(),
            bits,
        };
        if newly {
            intent.wanted.set(intent.wanted.get() + 1);
        }
        // Also when another writer set our bit and its bitmap write is still under way.
        let target = intent.wanted.get();
        if intent.written.get() < target {
            self.persist_intent(target).await?;
        }
        Ok(Some(guard))
    }

    /// The resync-space bytes an array range touches: array bytes for mirrors, whole stripe
    /// rows of member bytes for RAID5.
    pub(super) fn resync_range(&self, offset: u64, len: u64) -> (u64, u64) {
        match self.geo.level() {
            Level::Raid5 | Level::Raid6 | Level::Ec => {
                let row = self.geo.stripe_bytes();
                let chunk = self.geo.chunk_bytes();
                let end = offset + len.max(1);
                (offset / row * chunk, end.div_ceil(row) * chunk)
            }
            _ => (offset, offset + len),
        }
    }

    /// Shortens `len` so `at..at+len` ends at the next bitmap chunk boundary (in whole
    /// `unit`s), so one dirty bit does not drag clean neighbours into a resync or re-add.
    pub(crate) fn clip_to_bitmap_chunk(&self, at: u64, len: u64, unit: u64) -> u64 {
        let Some(intent) = &self.intent else {
            return len;
        };
        let chunk = intent.map.borrow().chunk_bytes();
        let to_boundary = (chunk - at % chunk).next_multiple_of(unit.max(1));
        len.min(to_boundary)
    }

    /// Whether `slot`'s member bytes `at..at+len` hold anything the bitmap marks dirty (the
    /// test that lets a re-added member skip a region).
    pub(crate) fn member_range_dirty(&self, slot: usize, at: u64, len: u64) -> bool {
        let Some(intent) = &self.intent else {
            return true;
        };
        let map = intent.map.borrow();
        match self.geo.level() {
            Level::Raid10 => {
                let chunk = self.geo.chunk_bytes();
                let mut off = at;
                while off < at + len {
                    let n = (chunk - off % chunk).min(at + len - off);
                    if let Reverse::Data { array_offset } = self.geo.reverse(slot, off) {
                        if map.any_set(array_offset, array_offset + n) {
                            return true;
                        }
                    }
                    off += n;
                }
                false
            }
            _ => map.any_set(at, at + len),
        }
    }

    /// Writes the bitmap to every present member unless generation `target` is already there.
    async fn persist_intent(&self, target: u64) -> Result<()> {
        let _guard = self.meta_lock.lock().await;
        let Some(intent) = &self.intent else {
            return Ok(());
        };
        if intent.written.get() >= target {
            return Ok(());
        }
        let wanted = intent.wanted.get();
        self.write_bitmaps().await?;
        intent.written.set(wanted);
        Ok(())
    }

    /// Writes the bitmap area (superblock with current events, then the bits) to every present
    /// member with a bitmap. Caller holds the meta lock. A member that cannot take it is
    /// failed, and the superblocks say so before this returns.
    pub(crate) async fn write_bitmaps(&self) -> Result<()> {
        let Some(intent) = &self.intent else {
            return Ok(());
        };
        // The header goes out with the current events and events_cleared (a crash before the
        // next superblock write must not leave an older events_cleared on disk: a re-add
        // would trust bits that were cleared).
        let events = self.meta.events();
        for d in self.meta.disks.borrow_mut().iter_mut() {
            if let Some(sector) = d.bitmap_sector.as_mut() {
                refresh_bitmap_sector(sector, events, Some(intent));
            }
        }
        let jobs: Vec<(usize, Rc<super::Disk>, u64, crate::buf::BufSlice)> = {
            let disks = self.meta.disks.borrow();
            let map = intent.map.borrow();
            disks
                .iter()
                .enumerate()
                .filter(|(_, d)| d.present)
                .filter_map(|(i, d)| {
                    let sector = d.bitmap_sector.as_ref()?;
                    let at = self.bitmap_offset_bytes(i)?;
                    let mut area = AlignedBuf::zeroed(intent.area_bytes);
                    let bytes = area.as_mut_slice();
                    bytes[..256].copy_from_slice(&sector.as_slice()[..256]);
                    bytes[256..256 + map.bytes().len()].copy_from_slice(map.bytes());
                    Some((i, d.disk.clone(), at, area.into_shared()))
                })
                .collect()
        };
        let results = join_all(
            jobs.iter()
                .map(|(_, disk, at, area)| disk.member.write(*at, area.clone(), true)),
        )
        .await;
        let mut failed = false;
        for ((i, ..), r) in jobs.iter().zip(results) {
            if let Err(e) = r {
                failed = true;
                self.drop_metadata_member(*i, &e);
            }
        }
        if failed {
            self.write_all_superblocks().await?;
        }
        Ok(())
    }

    /// Whether bits may be cleared now: every slot active and in sync, nothing resyncing,
    /// nobody being replaced. (A missing member is what the bits are kept for.)
    fn may_clear_bits(&self) -> bool {
        !self.read_only
            && !self.failed.get()
            && self.sync_offset.get() == u64::MAX
            && self.replacement.borrow().is_none()
            && self.slots.borrow().iter().all(|s| s.is_active())
    }

    /// The clearing daemon (md's bitmap daemon), until the array stops.
    pub(crate) async fn run_intent_daemon(self: Rc<Self>) {
        let Some(intent) = self.intent.clone() else {
            return;
        };
        let slice = Duration::from_millis(20);
        loop {
            let mut slept = Duration::ZERO;
            while slept < intent.daemon_sleep.get() {
                if self.stopping.get() {
                    return;
                }
                crate::reactor::sleep(slice).await;
                slept += slice;
            }
            if !self.may_clear_bits() {
                continue;
            }
            let candidates = intent.map.borrow_mut().clear_candidates();
            if candidates.is_empty() {
                continue;
            }
            // The data under a bit must be durable before the bit says "in sync".
            if self.flush_members().await.is_err() || !self.may_clear_bits() {
                continue;
            }
            if intent.map.borrow_mut().clear_idle(&candidates) == 0 {
                continue;
            }
            let _guard = self.meta_lock.lock().await;
            intent.events_cleared.set(self.meta.events());
            if let Err(e) = self.write_bitmaps().await {
                tracing::warn!(array = %self.name, "writing cleared bitmap bits failed: {e}");
            }
        }
    }
}

/// Reads the bitmap of every member that has one and merges the bits (a chunk is dirty if
/// any member says so). Bits are not trusted, and all count as dirty, when a bitmap is older
/// than the superblocks (md's "stale bitmap") or says it is stale.
pub(crate) async fn load_intent(
    reference: &crate::metadata::Superblock,
    disks: &[super::meta::MetaDisk],
) -> Option<Rc<Intent>> {
    use crate::metadata::BitmapSuper;
    let mut merged: Option<(IntentMap, u64, u32)> = None;
    let mut trusted = true;
    for d in disks {
        let Some(sector) = d.bitmap_sector.as_ref() else {
            continue;
        };
        let Ok(bsb) = BitmapSuper::decode(sector.as_slice()) else {
            continue;
        };
        let Some(at) = bitmap_area_offset(&d.sb) else {
            continue;
        };
        let nbits = bsb.nbits();
        let area = (256 + nbits.div_ceil(8) as usize).next_multiple_of(512);
        let buf = AlignedBuf::zeroed(area).into_shared();
        if d.disk.member.read(at, buf.clone()).await.is_err() {
            trusted = false;
            continue;
        }
        if bsb.is_stale() || bsb.events < reference.events {
            trusted = false;
        }
        let bits = buf.bytes()[256..256 + nbits.div_ceil(8) as usize].to_vec();
        let map = IntentMap::new(bsb.chunk_bytes as u64, nbits, bits);
        merged = Some(match merged {
            None => (map, bsb.events_cleared, bsb.daemon_sleep_secs),
            Some((mut acc, cleared, sleep)) => {
                if acc.chunk_bytes() != map.chunk_bytes() || acc.bytes().len() != map.bytes().len()
                {
                    trusted = false;
                } else {
                    for (a, b) in acc.bits.iter_mut().zip(map.bytes()) {
                        *a |= b;
                    }
                }
                (acc, cleared.max(bsb.events_cleared), sleep)
            }
        });
    }
    let (mut map, events_cleared, sleep_secs) = merged?;
    if !trusted {
        tracing::warn!(
            "the write-intent bitmap is older than the superblocks: every chunk counts as dirty"
        );
        map.set_all();
    }
    Some(Rc::new(Intent::new(
        map,
        events_cleared,
        Duration::from_secs(sleep_secs.max(1) as u64),
    )))
}

/// Brings a member's cached first bitmap sector up to date: the header's events and
/// events_cleared, and the first bits as the map says. Shared by the superblock writes (which
/// rewrite this sector) and the bitmap writes.
pub(super) fn refresh_bitmap_sector(sector: &mut AlignedBuf, events: u64, intent: Option<&Intent>) {
    let Ok(mut bsb) = crate::metadata::BitmapSuper::decode(sector.as_slice()) else {
        return;
    };
    bsb.events = events;
    if let Some(intent) = intent {
        bsb.events_cleared = intent.events_cleared.get();
    }
    let encoded = bsb.encode();
    let s = sector.as_mut_slice();
    s[..encoded.len()].copy_from_slice(&encoded);
    if let Some(intent) = intent {
        let map = intent.map.borrow();
        let n = map.bytes().len().min(s.len() - 256);
        s[256..256 + n].copy_from_slice(&map.bytes()[..n]);
    }
}

/// Where a member's bitmap area starts, from its superblock.
pub(super) fn bitmap_area_offset(sb: &crate::metadata::Superblock) -> Option<u64> {
    let off = sb.bitmap_offset_sectors as i64 * 512 + SUPERBLOCK_OFFSET_BYTES as i64;
    (sb.bitmap_offset_sectors != 0 && off > 0).then_some(off as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bit_ranges_cover_every_touched_chunk() {
        let m = IntentMap::new(1 << 20, 10, vec![0; 2]);
        assert_eq!(m.bit_range(0, 1), 0..1);
        assert_eq!(m.bit_range(0, 1 << 20), 0..1);
        assert_eq!(m.bit_range((1 << 20) - 1, (1 << 20) + 1), 0..2);
        assert_eq!(m.bit_range(5 << 20, 100 << 20), 5..10);
        assert_eq!(m.bit_range(3, 3), 0..0);
    }

    #[test]
    fn only_the_first_write_to_a_chunk_needs_a_bitmap_write() {
        let mut m = IntentMap::new(4096, 16, vec![0; 2]);
        assert!(m.begin(2..4));
        assert!(!m.begin(3..4));
        assert!(m.begin(3..5));
        assert_eq!(m.dirty_bits(), 3);
        assert_eq!(m.bytes()[0], 0b0001_1100);
    }

    #[test]
    fn bits_clear_only_after_a_whole_idle_pass_without_writes() {
        let mut m = IntentMap::new(4096, 8, vec![0]);
        m.begin(1..3);
        m.end(1..2);
        // Pass 1: bit 1 becomes idle, bit 2 is still being written.
        assert!(m.clear_candidates().is_empty());
        // Pass 2: bit 1 has been idle a whole pass.
        let c = m.clear_candidates();
        assert_eq!(c.iter().map(|x| x.0).collect::<Vec<_>>(), vec![1]);
        assert_eq!(m.clear_idle(&c), 1);
        assert!(!m.is_set(1) && m.is_set(2));
        // A write that starts and ends between choosing and clearing keeps its bit.
        m.end(2..3);
        m.clear_candidates();
        let c = m.clear_candidates();
        assert_eq!(c.len(), 1);
        m.begin(2..3);
        m.end(2..3);
        assert_eq!(m.clear_idle(&c), 0);
        assert!(m.is_set(2));
    }

    #[test]
    fn a_short_bitmap_reads_as_all_dirty() {
        let m = IntentMap::new(4096, 20, vec![0]);
        assert!(!m.any_set(0, 8 * 4096));
        assert!(m.any_set(8 * 4096, 8 * 4096 + 1));
        assert_eq!(m.dirty_bits(), 12);
    }
}
