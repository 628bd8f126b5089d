//! The cache layer: what the frontends call instead of the engine.
//!
//! ```text
//!   write ─┬─ write-through (battery not healthy, FUA, large, cache full) ─► engine, then
//!          │    cached copies of those blocks are updated so they stay the newest
//!          └─ write-back: copy into 4 KiB slots, mark dirty, acknowledge ─► destager later
//!   read  ─► blocks in the cache come from it; the rest from the engine (and fill the cache)
//!   flush ─► destage every block dirty before it, then flush the members
//! ```
//!
//! Writes and destages of the same cache stripe are ordered by stripe locks, so a destage can
//! never write older data over a newer write-through. Everything runs on the array's reactor.

use std::cell::{Cell, RefCell};
use std::ops::Range;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

use super::index::{CacheIndex, BLOCK_SIZE};
use super::policy::{Battery, CacheMode, CachePolicy};
use crate::buf::BufSlice;
use crate::error::Result;
use crate::raid::Array;
use crate::reactor::{KeyedLockGuard, KeyedLocks, Semaphore};

/// Sizes and thresholds of a cache.
#[derive(Clone, Debug)]
pub struct CacheConfig {
    /// RAM for cached blocks (0: no cache, every write goes through).
    pub capacity_bytes: u64,
    /// Dirty data older than this is destaged even without pressure.
    pub max_age: Duration,
    /// The destager starts above this share of the cache dirty and stops below `low_pct`.
    pub high_pct: u32,
    pub low_pct: u32,
    /// Writes (and reads) of at least this many bytes bypass the cache: large sequential I/O
    /// gains nothing from it and would push out the small writes that do (bcache's cutoff).
    pub bypass_bytes: u64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            capacity_bytes: 256 << 20,
            max_age: Duration::from_secs(5),
            high_pct: 50,
            low_pct: 25,
            bypass_bytes: 1 << 20,
        }
    }
}

/// Where the battery state comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum BatterySource {
    /// `raidctl cache --battery`, kept in the extension block.
    Manual,
    /// A file a UPS daemon writes one word into.
    File(PathBuf),
}

/// The cache's settings as kept across restarts (words as `CacheMode`/`Battery` print them).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SavedPolicy {
    pub mode: Option<String>,
    pub battery: Option<String>,
    pub battery_file: Option<String>,
}

/// Where the cache keeps its settings across restarts. The control plane implements it (in
/// the array's extension block); the cache knows nothing of it beyond this.
pub trait PolicyStore {
    /// What was saved (at assembly, or by the last `save`).
    fn load(&self) -> SavedPolicy;
    /// Writes `policy` where the next assembly finds it.
    fn save(&self, policy: SavedPolicy) -> futures::future::LocalBoxFuture<'_, Result<()>>;
}

/// A write-back cache in front of one array.
pub struct Cache {
    pub(super) array: Rc<Array>,
    pub(super) store: Rc<dyn PolicyStore>,
    pub(super) config: CacheConfig,
    pub(super) index: RefCell<CacheIndex>,
    /// `capacity / 4096` blocks; slot n is bytes n*4096.. of it.
    pool: BufSlice,
    /// Cache-stripe locks (a stripe is the array's stripe unit, a whole row on RAID5).
    pub(super) locks: Rc<KeyedLocks>,
    pub(super) policy: Cell<CachePolicy>,
    pub(super) battery_source: RefCell<BatterySource>,
    /// The flag `raidctl cache --battery` sets (what the battery is when no file is used).
    pub(super) manual_battery: Cell<Battery>,
    /// Effective: writes may be acknowledged from the cache.
    pub(super) write_back: Cell<bool>,
    pub(super) reason: RefCell<String>,
    started: Instant,
    /// Bumped by every write that goes around the cache, so a read started before it does
    /// not fill the cache with what it read.
    pub(super) bypass_epoch: Cell<u64>,
    /// Wakes the destager.
    pub(super) wake: Semaphore,
    /// Destager state: whether the high watermark started a run that has not reached low.
    pub(super) pressure: Cell<bool>,
    pub(super) destaged_bytes: Cell<u64>,
    pub(super) rate: Cell<(Instant, u64, f64)>,
    pub(super) stopping: Cell<bool>,
}

impl Cache {
    pub fn new(array: Rc<Array>, config: CacheConfig, store: Rc<dyn PolicyStore>) -> Rc<Cache> {
        let stripe = array.geometry().stripe_bytes().max(BLOCK_SIZE);
        let stripe = stripe.next_multiple_of(BLOCK_SIZE);
        let capacity = config.capacity_bytes / BLOCK_SIZE * BLOCK_SIZE;
        let index = CacheIndex::new(capacity, stripe);
        let pool = BufSlice::zeroed(capacity as usize);
        let saved = store.load();
        let mode = saved
            .mode
            .as_deref()
            .and_then(|m| CacheMode::parse(m).ok())
            .unwrap_or_default();
        let battery = saved
            .battery
            .as_deref()
            .and_then(|b| Battery::parse(b).ok())
            .unwrap_or_default();
        let source = match saved.battery_file {
            Some(f) => BatterySource::File(PathBuf::from(f)),
            None => BatterySource::Manual,
        };
        // With a battery file, the file decides from the watcher's first look; until then the
        // battery counts as absent (write-through), never as the stale manual flag.
        let effective_battery = match source {
            BatterySource::File(_) => Battery::Absent,
            BatterySource::Manual => battery,
        };
        let cache = Rc::new(Cache {
            array,
            store,
            config,
            index: RefCell::new(index),
            pool,
            locks: KeyedLocks::new(),
            policy: Cell::new(CachePolicy {
                mode,
                battery: effective_battery,
            }),
            battery_source: RefCell::new(source),
            manual_battery: Cell::new(battery),
            write_back: Cell::new(false),
            reason: RefCell::new(String::new()),
            started: Instant::now(),
            bypass_epoch: Cell::new(0),
            wake: Semaphore::new(0),
            pressure: Cell::new(false),
            destaged_bytes: Cell::new(0),
            rate: Cell::new((Instant::now(), 0, 0.0)),
            stopping: Cell::new(false),
        });
        cache.apply_policy(false);
        cache
    }

    pub fn array(&self) -> &Rc<Array> {
        &self.array
    }

    pub fn size_bytes(&self) -> u64 {
        self.array.size_bytes()
    }

    /// Milliseconds since the cache started: the index's clock.
    pub(super) fn now(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Slot `slot`'s 4 KiB of the pool.
    pub(super) fn slot_buf(&self, slot: u32) -> BufSlice {
        self.pool
            .slice(slot as usize * BLOCK_SIZE as usize, BLOCK_SIZE as usize)
    }

    pub(super) fn caching(&self) -> bool {
        self.index.borrow().slot_count() > 0
    }

    /// Locks the cache stripes covering array bytes `offset..offset+len`, in ascending order.
    pub(super) async fn lock_range(&self, offset: u64, len: u64) -> Vec<KeyedLockGuard> {
        let (first, last) = {
            let index = self.index.borrow();
            let end_block = (offset + len.max(1)).div_ceil(BLOCK_SIZE);
            (
                index.stripe_of(offset / BLOCK_SIZE),
                index.stripe_of(end_block - 1),
            )
        };
        self.locks.lock_range(first..last + 1).await
    }

    /// The write-through path: the engine first, then the cached copies (clean or dirty) of
    /// the blocks it touched take the new bytes, so neither a read nor a later destage sees
    /// older data.
    pub(super) async fn write_around(&self, offset: u64, data: BufSlice, fua: bool) -> Result<()> {
        self.bump_epoch();
        let written = self.array.write(offset, data.clone(), fua).await;
        // Again once it has landed: a read that began before and was served older data must
        // not fill the cache with it.
        self.bump_epoch();
        written?;
        let index = self.index.borrow();
        let len = data.len() as u64;
        for b in offset / BLOCK_SIZE..(offset + len).div_ceil(BLOCK_SIZE) {
            if let Some(slot) = index.peek(b) {
                merge(&self.slot_buf(slot), b, offset, data.bytes());
            }
        }
        Ok(())
    }

    /// Puts a write into the cache. Returns false (nothing changed that matters: blocks it
    /// already dirtied hold its bytes, and the caller writes it through) when the cache is
    /// full of dirty data.
    pub(super) async fn write_into_cache(&self, offset: u64, data: &BufSlice) -> Result<bool> {
        let len = data.len() as u64;
        let first = offset / BLOCK_SIZE;
        let last = (offset + len).div_ceil(BLOCK_SIZE) - 1;
        // A partly written block that is not cached needs its other bytes from the engine
        // first (read before anything is marked, so no reader sees a half-filled block).
        let mut fills = Vec::new();
        for b in [first, last] {
            let partial = !covers(b, offset, len);
            if partial
                && self.index.borrow().peek(b).is_none()
                && !fills.iter().any(|(x, _)| *x == b)
            {
                let buf = BufSlice::zeroed(BLOCK_SIZE as usize);
                self.array.read(b * BLOCK_SIZE, buf.clone()).await?;
                fills.push((b, buf));
            }
        }
        // The mode may have changed to write-through while the fills were read; a drain may
        // already have finished: this write must not stay in RAM then.
        if !self.write_back.get() {
            return Ok(false);
        }
        let now = self.now();
        let mut index = self.index.borrow_mut();
        for b in first..=last {
            let partial = !covers(b, offset, len);
            let fill = fills.iter().find(|(x, _)| *x == b).map(|(_, f)| f);
            if partial && index.peek(b).is_none() && fill.is_none() {
                // It was cached when we looked and has been evicted while the other end was
                // read: its other bytes are not at hand, so this write goes through instead.
                return Ok(false);
            }
            let fresh = index.peek(b).is_none();
            let Some(slot) = index.write(b, now) else {
                return Ok(false);
            };
            let dst = self.slot_buf(slot);
            if let (true, Some(fill)) = (fresh, fill) {
                // SAFETY: the slot is this block's, and its stripe lock is held.
                (unsafe { dst.bytes_mut() }).copy_from_slice(fill.bytes());
            }
            merge(&dst, b, offset, data.bytes());
        }
        Ok(true)
    }

    pub(super) async fn zero_around(&self, offset: u64, len: u64, discard: bool) -> Result<()> {
        if !self.caching() || len == 0 {
            return match discard {
                true => self.array.trim(offset, len).await,
                false => self.array.write_zeroes(offset, len).await,
            };
        }
        self.array.check_write(offset, len)?;
        let _locks = self.lock_range(offset, len).await;
        self.bump_epoch();
        let done = match discard {
            true => self.array.trim(offset, len).await,
            false => self.array.write_zeroes(offset, len).await,
        };
        self.bump_epoch();
        done?;
        // Whole blocks leave the cache (dirty ones too: the zeroes supersede them); the
        // cached part of a partly covered block becomes zeroes.
        let first_whole = offset.div_ceil(BLOCK_SIZE);
        let end_whole = (offset + len) / BLOCK_SIZE;
        let mut index = self.index.borrow_mut();
        if end_whole > first_whole {
            index.invalidate(first_whole..end_whole);
        }
        let zeroes = vec![0u8; len.min(2 * BLOCK_SIZE) as usize];
        for b in [offset / BLOCK_SIZE, (offset + len - 1) / BLOCK_SIZE] {
            if let Some(slot) = index.peek(b) {
                let at = b * BLOCK_SIZE;
                let from = offset.max(at);
                let to = (offset + len).min(at + BLOCK_SIZE);
                let buf = self.slot_buf(slot);
                // SAFETY: the slot is this block's, and its stripe lock is held.
                (unsafe { buf.bytes_mut() })[(from - at) as usize..(to - at) as usize]
                    .copy_from_slice(&zeroes[..(to - from) as usize]);
            }
        }
        Ok(())
    }

    /// Marks that the engine's data changed underneath the cache (see `read`'s fill).
    pub(super) fn bump_epoch(&self) {
        self.bypass_epoch.set(self.bypass_epoch.get() + 1);
    }

    /// Wakes the destager when the dirty share passed the high watermark.
    pub(super) fn kick_if_needed(&self) {
        let pressure = {
            let index = self.index.borrow();
            index.should_destage(
                self.config.high_pct,
                self.config.low_pct,
                self.pressure.get(),
            )
        };
        if pressure && !self.pressure.get() {
            self.pressure.set(true);
            self.wake_destager();
        }
    }

    pub(super) fn wake_destager(&self) {
        if self.wake.available() == 0 {
            self.wake.release();
        }
    }
}

/// Whether a request of `len` bytes at `offset` covers all of block `b`.
pub(super) fn covers(b: u64, offset: u64, len: u64) -> bool {
    b * BLOCK_SIZE >= offset && (b + 1) * BLOCK_SIZE <= offset + len
}

/// Where block `b` and a request of `len` bytes at array offset `offset` overlap: the shared
/// bytes' range within the block and within the request, or None when they do not meet.
fn overlap(b: u64, offset: u64, len: u64) -> Option<(Range<usize>, Range<usize>)> {
    let at = b * BLOCK_SIZE;
    let from = offset.max(at);
    let to = (offset + len).min(at + BLOCK_SIZE);
    (from < to).then(|| {
        (
            (from - at) as usize..(to - at) as usize,
            (from - offset) as usize..(to - offset) as usize,
        )
    })
}

/// Copies block `b`'s bytes of a request (`data` at array offset `offset`) into its slot.
fn merge(slot: &BufSlice, b: u64, offset: u64, data: &[u8]) {
    if let Some((in_block, in_request)) = overlap(b, offset, data.len() as u64) {
        // SAFETY: callers hold the block's stripe lock, so nothing else touches its slot.
        (unsafe { slot.bytes_mut() })[in_block].copy_from_slice(&data[in_request]);
    }
}

/// Copies the part of block `b` (its bytes `block`) that a read of `buf` at `offset` covers.
pub(super) fn overlay(buf: &BufSlice, offset: u64, b: u64, block: &[u8]) {
    if let Some((in_block, in_request)) = overlap(b, offset, buf.len() as u64) {
        // SAFETY: `buf` is the caller's read buffer, with no I/O in flight on it any more.
        (unsafe { buf.bytes_mut() })[in_request].copy_from_slice(&block[in_block]);
    }
}
