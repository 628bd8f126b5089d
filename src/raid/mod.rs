//! The RAID engine: block requests in, member I/O out.
//!
//! ```text
//!   read / write(fua) / flush / trim / write_zeroes      (byte offsets, 512-aligned)
//!          │
//!          ▼
//!   Array ── layout::Geometry maps bytes to (slot, member offset)
//!     ├── striped.rs  RAID0, RAID1, RAID10: copies, read balancing, per-copy writes
//!     ├── raid5.rs    RAID5: full-stripe / reconstruct-write / read-modify-write, degraded paths
//!     ├── slots.rs    member I/O per slot; an I/O error fails the slot (persisted) before anyone
//!     │               sees the error, and callers fall back on redundancy
//!     ├── meta.rs     superblock updates: member failed, dirty/clean, events
//!     ├── intent.rs   the write-intent bitmap: a bit on disk before its write reaches a member
//!     ├── shadow.rs   a replacement's shadow target below its copy cursor
//!     └── events.rs   the engine's queues to the control plane: events, scheduler wake-ups
//!
//! ```
//!
//! The control plane (`crate::control`: assembly, rebuild, scrub, replace, manage) holds an
//! `Array` and drives it through its `pub(crate)` parts; nothing here calls it. It hears from
//! the engine through the queues in `events.rs`, and its long jobs hold a [`Worker`] ticket
//! so that `close` waits for them.
//!
//! Everything runs on the reactor thread, so state is in `Cell`/`RefCell`. Writes to redundant
//! levels hold stripe locks ([`crate::reactor::KeyedLocks`]) for their whole read-compute-write,
//! so concurrent overlapping writes never interleave on a stripe.

pub(crate) mod badblocks;
mod coded;
pub(crate) mod correct;
pub mod events;
pub(crate) mod intent;
pub(crate) mod meta;
mod raid5;
pub(crate) mod shadow;
pub(crate) mod slots;
mod striped;
mod volume;

use std::cell::{Cell, RefCell};
use std::rc::Rc;

pub use intent::BitmapReport;
pub use slots::{Disk, SlotState};

use crate::buf::BufSlice;
use crate::error::{Error, ErrorKind, Result};
use crate::layout::{Geometry, Level};
use crate::reactor::{AsyncMutex, KeyedLocks};

/// Counters for `raidctl status` (its JSON `io` object: the field names are stable).
#[derive(Default, Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct IoCounters {
    pub reads: u64,
    pub writes: u64,
    pub read_bytes: u64,
    pub write_bytes: u64,
    pub flushes: u64,
    pub trims: u64,
    pub zeroes: u64,
    pub errors: u64,
    pub degraded_reads: u64,
}

/// Overall condition, as `raidctl status` reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ArrayState {
    Clean,
    Active,
    Degraded,
    Failed,
}

/// An assembled array on the current reactor: the engine. Its state is `pub(crate)` for the
/// control plane, which changes it only through the engine's functions (`slots::set_slot`,
/// the stripe locks, `meta`).
pub struct Array {
    pub(crate) name: String,
    pub(crate) geo: Geometry,
    /// The row code of arrays with more than one parity chunk per row (RAID6, k+m).
    code: Option<crate::parity::code::RowCode>,
    pub(crate) slots: RefCell<Vec<SlotState>>,
    pub(crate) spares: RefCell<Vec<Rc<Disk>>>,
    pub(crate) locks: Rc<KeyedLocks>,
    pub(crate) meta: meta::MetaState,
    pub(crate) meta_lock: AsyncMutex,
    /// Member-space byte offset up to which redundancy is known to be consistent (md's
    /// resync_offset). Stripes at or past it are written with reconstruct-write only.
    pub(crate) sync_offset: Cell<u64>,
    pub(crate) failed: Cell<bool>,
    pub(crate) read_only: bool,
    pub(crate) counters: RefCell<IoCounters>,
    /// Client requests inside the engine right now (`close` marks clean only at zero).
    in_flight: Cell<usize>,
    /// Events queued for the control plane (the engine never calls a subscriber itself).
    notices: events::Notices,
    /// Released whenever the scheduler should look at the array (failure, add, rebuild).
    attention: crate::reactor::Semaphore,
    /// Set by `close`: background work checkpoints and stops.
    pub(crate) stopping: Cell<bool>,
    /// Background jobs running (rebuilds, scrubs): `close` waits for them to checkpoint.
    workers: Rc<Cell<usize>>,
    pub(crate) replacement: RefCell<Option<shadow::Replacement>>,
    /// The write-intent bitmap, when the array has one.
    pub(crate) intent: Option<Rc<intent::Intent>>,
}

/// A background job's ticket: while one is alive, [`Array::close`] waits (the job checkpoints
/// and drops it once it sees [`Array::is_stopping`]).
pub struct Worker(Rc<Cell<usize>>);

impl Drop for Worker {
    fn drop(&mut self) {
        self.0.set(self.0.get() - 1);
    }
}

impl Array {
    /// A fresh engine over placed members: no request seen, nothing running.
    pub(crate) fn new(
        name: String,
        geo: Geometry,
        slots: Vec<SlotState>,
        spares: Vec<Rc<Disk>>,
        meta: meta::MetaState,
        intent: Option<Rc<intent::Intent>>,
        read_only: bool,
    ) -> Rc<Array> {
        let resync = meta.reference().resync_offset;
        let sync_offset = if resync == u64::MAX {
            u64::MAX
        } else {
            resync.saturating_mul(512)
        };
        let code = match geo.kind() {
            crate::layout::LayoutKind::Raid6(_) => Some(crate::parity::code::RowCode::Raid6),
            crate::layout::LayoutKind::Ec { parity } => Some(
                crate::parity::code::RowCode::ec(geo.members() - parity, *parity)
                    .expect("the geometry checked the code's shape"),
            ),
            _ => None,
        };
        Rc::new(Array {
            name,
            geo,
            code,
            slots: RefCell::new(slots),
            spares: RefCell::new(spares),
            locks: KeyedLocks::new(),
            meta,
            meta_lock: AsyncMutex::default(),
            sync_offset: Cell::new(sync_offset),
            failed: Cell::new(false),
            read_only,
            counters: RefCell::new(IoCounters::default()),
            in_flight: Cell::new(0),
            notices: Default::default(),
            attention: crate::reactor::Semaphore::new(0),
            stopping: Cell::new(false),
            workers: Rc::new(Cell::new(0)),
            replacement: RefCell::new(None),
            intent,
        })
    }

    /// A ticket that keeps [`Array::close`] waiting while a background job runs.
    pub fn worker(&self) -> Worker {
        self.workers.set(self.workers.get() + 1);
        Worker(self.workers.clone())
    }

    /// Whether `close` has begun: background jobs checkpoint and stop.
    pub fn is_stopping(&self) -> bool {
        self.stopping.get()
    }

    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn geometry(&self) -> &Geometry {
        &self.geo
    }
    pub fn size_bytes(&self) -> u64 {
        self.geo.array_bytes()
    }
    pub fn level(&self) -> Level {
        self.geo.level()
    }
    pub fn is_read_only(&self) -> bool {
        self.read_only
    }
    pub fn is_failed(&self) -> bool {
        self.failed.get()
    }
    pub fn counters(&self) -> IoCounters {
        *self.counters.borrow()
    }
    pub fn slots(&self) -> Vec<SlotState> {
        self.slots.borrow().clone()
    }
    pub fn spares(&self) -> Vec<Rc<Disk>> {
        self.spares.borrow().clone()
    }
    /// Member-space offset up to which parity/copies are known in sync (u64::MAX: all).
    pub fn sync_offset(&self) -> u64 {
        self.sync_offset.get()
    }

    pub fn state(&self) -> ArrayState {
        if self.failed.get() {
            ArrayState::Failed
        } else if self.slots.borrow().iter().any(|s| !s.is_active()) {
            ArrayState::Degraded
        } else if self.meta.is_clean() {
            ArrayState::Clean
        } else {
            ArrayState::Active
        }
    }

    /// Reads `buf.len()` bytes at `offset` into `buf`.
    pub async fn read(&self, offset: u64, buf: BufSlice) -> Result<()> {
        let _in_flight = InFlight::enter(&self.in_flight);
        self.check_range(offset, buf.len() as u64)?;
        self.count(|c| {
            c.reads += 1;
            c.read_bytes += buf.len() as u64
        });
        let r = match self.geo.level() {
            Level::Raid5 | Level::Raid6 | Level::Ec => self.read_raid5(offset, buf).await,
            _ => self.read_striped(offset, buf).await,
        };
        self.count_error(&r);
        r
    }

    /// Writes `data` at `offset`. With `fua`, the data is on stable storage of every member
    /// when this returns.
    pub async fn write(&self, offset: u64, data: BufSlice, fua: bool) -> Result<()> {
        let _in_flight = InFlight::enter(&self.in_flight);
        self.check_range(offset, data.len() as u64)?;
        self.check_writable()?;
        self.count(|c| {
            c.writes += 1;
            c.write_bytes += data.len() as u64
        });
        if data.is_empty() {
            return Ok(());
        }
        let _intent = self.begin_write(offset, data.len() as u64).await?;
        let r = match self.geo.level() {
            Level::Raid5 | Level::Raid6 | Level::Ec => self.write_raid5(offset, data, fua).await,
            _ => self.write_striped(offset, data, fua).await,
        };
        self.count_error(&r);
        r
    }

    /// Makes every acknowledged write durable on every active member.
    pub async fn flush(&self) -> Result<()> {
        let _in_flight = InFlight::enter(&self.in_flight);
        self.count(|c| c.flushes += 1);
        let r = self.flush_members().await;
        self.count_error(&r);
        r
    }

    /// Discards a range. Afterwards it reads back as zeroes (members punch holes where they can).
    pub async fn trim(&self, offset: u64, len: u64) -> Result<()> {
        self.zero(offset, len, true).await
    }

    /// Zeroes a range (allocating: later writes there will not fail for lack of space).
    pub async fn write_zeroes(&self, offset: u64, len: u64) -> Result<()> {
        self.zero(offset, len, false).await
    }

    /// A trim (`discard`) or write-zeroes request, checked, counted and under its intent bits.
    async fn zero(&self, offset: u64, len: u64, discard: bool) -> Result<()> {
        let _in_flight = InFlight::enter(&self.in_flight);
        self.check_range(offset, len)?;
        self.check_writable()?;
        self.count(|c| if discard { c.trims += 1 } else { c.zeroes += 1 });
        let _intent = self.begin_write(offset, len).await?;
        let r = self.zero_range(offset, len, discard).await;
        self.count_error(&r);
        r
    }

    /// Whether zeroing this range is cheaper than writing zeroes (NBD FAST_ZERO): RAID5 only
    /// zeroes whole stripe rows without a read-modify-write.
    pub fn zeroes_fast(&self, offset: u64, len: u64) -> bool {
        match self.geo.level() {
            Level::Raid5 | Level::Raid6 | Level::Ec => {
                let row = self.geo.stripe_bytes();
                offset.is_multiple_of(row) && len.is_multiple_of(row)
            }
            _ => true,
        }
    }

    async fn zero_range(&self, offset: u64, len: u64, discard: bool) -> Result<()> {
        if len == 0 {
            return Ok(());
        }
        match self.geo.level() {
            Level::Raid5 | Level::Raid6 | Level::Ec => self.zero_raid5(offset, len, discard).await,
            _ => self.zero_striped(offset, len, discard).await,
        }
    }

    /// Flushes and marks the array clean on disk (the last step of `stop`). A rebuild in
    /// progress checkpoints first and resumes at the next assembly; a check or resync stops
    /// at its current step. Clean is written only when no request is left in the engine: a
    /// write still waiting on a slow member could land after the mark, and the next start
    /// would then skip the resync it needs. Then the array stays dirty and this says so.
    pub async fn close(&self) -> Result<()> {
        const GRACE: std::time::Duration = std::time::Duration::from_secs(1);
        let tick = std::time::Duration::from_millis(5);
        self.stopping.set(true);
        self.needs_attention();
        self.notices.wake();
        while self.workers.get() > 0 {
            crate::reactor::sleep(tick).await;
        }
        let since = std::time::Instant::now();
        while self.in_flight.get() > 0 && since.elapsed() < GRACE {
            crate::reactor::sleep(tick).await;
        }
        if self.read_only {
            return Ok(());
        }
        if self.failed.get() {
            // Flush what is left; the array stays marked dirty and failed on its members.
            let _ = self.flush_members().await;
            tracing::warn!(array = %self.name, "stopped while failed: {}", self.missing_description());
            return Ok(());
        }
        self.flush_members().await?;
        let left = self.in_flight.get();
        if left > 0 {
            return Err(Error::new(
                ErrorKind::Busy,
                format!(
                    "array {} stopped with {left} request(s) still in flight (a slow member?): it stays marked dirty, and the next start resyncs what the bitmap marks",
                    self.name
                ),
            ));
        }
        self.mark_clean().await
    }

    /// The checks `write` makes before touching anything (for layers that acknowledge writes
    /// themselves, such as the write-back cache).
    pub fn check_write(&self, offset: u64, len: u64) -> Result<()> {
        self.check_range(offset, len)?;
        self.check_writable()
    }

    /// The checks `read` makes.
    pub fn check_read(&self, offset: u64, len: u64) -> Result<()> {
        self.check_range(offset, len)
    }

    fn check_range(&self, offset: u64, len: u64) -> Result<()> {
        crate::volume::check_range(self.size_bytes(), 512, offset, len)
    }

    fn check_writable(&self) -> Result<()> {
        if self.read_only {
            return Err(Error::new(
                ErrorKind::ReadOnly,
                format!("array {} is read-only", self.name),
            ));
        }
        if self.failed.get() {
            return Err(self.failed_error());
        }
        Ok(())
    }

    fn failed_error(&self) -> Error {
        Error::new(
            ErrorKind::ArrayFailed,
            format!(
                "array {} has failed: too many members are missing ({})",
                self.name,
                self.missing_description()
            ),
        )
    }

    /// "slot 1 (/tmp/m1) faulty, slot 2 missing".
    pub fn missing_description(&self) -> String {
        self.missing_description_except(usize::MAX)
    }

    /// As [`Array::missing_description`], leaving out slot `except`.
    pub(crate) fn missing_description_except(&self, except: usize) -> String {
        let parts: Vec<String> = self
            .slots
            .borrow()
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != except)
            .filter_map(|(i, s)| match s {
                SlotState::Active(_) => None,
                SlotState::Missing => Some(format!("slot {i} missing")),
                SlotState::Faulty(d) => Some(format!("slot {i} ({}) faulty", d.member.path())),
                SlotState::Recovering(d, c) => Some(format!(
                    "slot {i} ({}) recovering, {} bytes rebuilt",
                    d.member.path(),
                    c.get()
                )),
            })
            .collect();
        if parts.is_empty() {
            "none".into()
        } else {
            parts.join(", ")
        }
    }

    fn count(&self, f: impl FnOnce(&mut IoCounters)) {
        f(&mut self.counters.borrow_mut())
    }

    fn count_error<T>(&self, r: &Result<T>) {
        if r.is_err() {
            self.count(|c| c.errors += 1);
        }
    }
}

/// Counts one client request inside the engine for as long as it lives.
struct InFlight<'a>(&'a Cell<usize>);

impl<'a> InFlight<'a> {
    fn enter(count: &'a Cell<usize>) -> InFlight<'a> {
        count.set(count.get() + 1);
        InFlight(count)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.set(self.0.get() - 1);
    }
}
