//! Getting dirty data out of the cache, and the policy that decides when it may stay in.
//!
//! The destager wakes on pressure (high watermark, until low), every 20 ms to look for data
//! older than `max_age`, and whenever the cache must drain (the battery went away: everything
//! dirty is written out, then the members are flushed). `flush` and `close` destage what is
//! dirty themselves. Each stripe is written under its cache-stripe lock, in contiguous runs, so
//! a stripe whose blocks are all dirty goes out as one full-stripe write (no read-modify-write).

use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures::future::join_all;

use super::index::{DestageStripe, BLOCK_SIZE};
use super::layer::{BatterySource, Cache};
use super::policy::{Battery, CacheMode};
use crate::buf::BufSlice;
use crate::error::{Error, Result};
use crate::raid::events::Event;
use crate::reactor::sleep;

/// Stripes destaged at once. More is not faster: foreground writes to a stripe being
/// destaged wait for it (measured on RAID5 4k random writes: 4-8 best, 64 halves the rate).
const BATCH_STRIPES: usize = 8;
/// How often the destager and the battery-file watcher look.
const TICK: Duration = Duration::from_millis(20);
const BATTERY_POLL: Duration = Duration::from_millis(250);

/// The cache as `status` shows it.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CacheReport {
    /// Configured: "write-back", "write-through" or "always-write-back".
    pub mode: String,
    /// What writes get now: "write-back" or "write-through".
    pub effective: String,
    /// Why (e.g. "battery absent: write-through until it is present").
    pub reason: String,
    /// "present", "absent", "charging" or "failed".
    pub battery: String,
    /// The file the battery state is read from, if any (else it is set by `raidctl cache`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub battery_file: Option<String>,
    pub capacity_bytes: u64,
    pub cached_bytes: u64,
    pub dirty_bytes: u64,
    /// Read hits / (hits + misses) over the cache's life; null before any read.
    pub hit_ratio: Option<f64>,
    /// Bytes written out by the destager per second, averaged over the last second or so.
    pub destage_bytes_per_sec: f64,
    pub destaged_bytes: u64,
    /// 4 KiB blocks written into the cache (acknowledged from RAM); `io` in the status counts
    /// engine requests, so these reach it only when destaged.
    #[serde(default)]
    pub cached_block_writes: u64,
    /// Writes that found the cache full of dirty data and went through instead.
    #[serde(default)]
    pub writes_through_full: u64,
}

impl Cache {
    /// Recomputes the effective mode from the policy; with `announce`, a change is logged
    /// and sent as an event, and losing write-back wakes the destager to drain.
    pub(super) fn apply_policy(&self, announce: bool) {
        let eff = self.policy.get().effective();
        let was = self.write_back.replace(eff.write_back);
        *self.reason.borrow_mut() = eff.reason.clone();
        if self.policy.get().mode == CacheMode::AlwaysWriteBack && !announce {
            tracing::warn!(array = %self.array.name(), "cache mode always-write-back: writes are acknowledged from RAM whatever the battery says; a power loss or crash can lose acknowledged writes");
        }
        if !announce || was == eff.write_back {
            return;
        }
        if eff.write_back {
            tracing::info!(array = %self.array.name(), "cache: write-back ({})", eff.reason);
            self.array
                .emit(Event::CacheWriteBack { reason: eff.reason });
        } else {
            tracing::warn!(array = %self.array.name(), "cache: write-through ({}); draining", eff.reason);
            self.array
                .emit(Event::CacheWriteThrough { reason: eff.reason });
            self.wake_destager();
        }
    }

    /// `raidctl cache`: changes the mode, the manual battery flag or the battery file (Some(None)
    /// goes back to the manual flag), persists them in the extension block, and, when writes
    /// are now written through, returns only once the cache is drained and the members flushed.
    pub async fn set_policy(
        &self,
        mode: Option<CacheMode>,
        battery: Option<Battery>,
        battery_file: Option<Option<PathBuf>>,
    ) -> Result<()> {
        let mut policy = self.policy.get();
        if let Some(m) = mode {
            policy.mode = m;
        }
        if let Some(file) = battery_file {
            *self.battery_source.borrow_mut() = match file {
                Some(p) => BatterySource::File(p),
                None => BatterySource::Manual,
            };
        }
        if let Some(b) = battery {
            self.manual_battery.set(b);
        }
        let source = self.battery_source.borrow().clone();
        policy.battery = match &source {
            BatterySource::File(path) => read_battery_file(path).0,
            BatterySource::Manual => self.manual_battery.get(),
        };
        self.policy.set(policy);
        self.apply_policy(true);
        let manual = self.manual_battery.get();
        let persisted = self
            .store
            .save(super::SavedPolicy {
                mode: Some(policy.mode.as_str().to_string()),
                battery: Some(manual.as_str().to_string()),
                battery_file: match &source {
                    BatterySource::File(p) => Some(p.display().to_string()),
                    BatterySource::Manual => None,
                },
            })
            .await;
        if let Err(e) = persisted {
            tracing::warn!(array = %self.array.name(), "cache policy not persisted: {e}");
        }
        if !self.write_back.get() {
            self.destage_until(u64::MAX).await?;
            self.array.flush().await?;
        }
        Ok(())
    }

    /// Destages every block dirty since `tick` or earlier (u64::MAX: everything).
    pub(super) async fn destage_until(&self, tick: u64) -> Result<()> {
        loop {
            match self.index.borrow().oldest_dirty() {
                None => return Ok(()),
                Some(t) if t > tick => return Ok(()),
                Some(_) => {}
            }
            let batch = self
                .index
                .borrow_mut()
                .take_destage_batch(BATCH_STRIPES, self.now(), 0);
            if batch.is_empty() {
                // The destager has the rest in flight: wait for it.
                sleep(Duration::from_millis(1)).await;
                continue;
            }
            self.destage_batch(batch).await?;
        }
    }

    async fn destage_batch(&self, batch: Vec<DestageStripe>) -> Result<()> {
        let results = join_all(batch.into_iter().map(|s| self.destage_stripe(s))).await;
        results.into_iter().collect()
    }

    /// Writes one stripe's dirty blocks to the engine: in contiguous runs, or, on RAID5 when
    /// enough of the row is dirty, as the whole row (the clean part read first), which the
    /// engine writes as one full stripe instead of a read-modify-write per run.
    async fn destage_stripe(&self, stripe: DestageStripe) -> Result<()> {
        let _lock = self.locks.lock(stripe.stripe).await;
        // Blocks a trim dropped since they were picked are not written.
        let live: Vec<(u64, u32)> = {
            let index = self.index.borrow();
            stripe
                .blocks
                .iter()
                .copied()
                .filter(|&(b, slot)| index.peek(b) == Some(slot))
                .collect()
        };
        let result = if self.whole_row_pays(stripe.stripe, live.len()) {
            self.destage_row(stripe.stripe, &live).await
        } else {
            self.destage_runs(&live).await
        };
        self.index
            .borrow_mut()
            .destage_done(&stripe.block_list(), result.is_ok());
        result
    }

    /// Whether writing the whole RAID5 row beats a read-modify-write per run: from an eighth
    /// of the row dirty (a row write reads the clean data once and writes every member once;
    /// each run costs two reads and two writes on its own).
    fn whole_row_pays(&self, stripe: u64, dirty_blocks: usize) -> bool {
        let per_stripe = self.index.borrow().blocks_per_stripe();
        let geo = self.array.geometry();
        geo.parities() > 0
            && dirty_blocks as u64 * 8 >= per_stripe
            && (stripe + 1) * per_stripe * BLOCK_SIZE <= self.array.size_bytes()
    }

    async fn destage_row(&self, stripe: u64, live: &[(u64, u32)]) -> Result<()> {
        let per_stripe = self.index.borrow().blocks_per_stripe();
        let start = stripe * per_stripe * BLOCK_SIZE;
        let row = BufSlice::zeroed((per_stripe * BLOCK_SIZE) as usize);
        self.array.read(start, row.clone()).await?;
        for &(b, slot) in live {
            let at = (b * BLOCK_SIZE - start) as usize;
            // SAFETY: our own buffer, its read completed; the slots are under the stripe lock.
            (unsafe { row.bytes_mut() })[at..at + BLOCK_SIZE as usize]
                .copy_from_slice(self.slot_buf(slot).bytes());
        }
        let written = self.array.write(start, row, false).await;
        // A read that began before this landed may hold older data: no fill from it.
        self.bump_epoch();
        written?;
        self.destaged_bytes
            .set(self.destaged_bytes.get() + live.len() as u64 * BLOCK_SIZE);
        Ok(())
    }

    /// Writes `live` (sorted blocks) in contiguous runs.
    async fn destage_runs(&self, live: &[(u64, u32)]) -> Result<()> {
        let mut result = Ok(());
        let mut written = 0u64;
        {
            for part in live.chunk_by(|a, b| b.0 == a.0 + 1) {
                let buf = BufSlice::filled(part.len() * BLOCK_SIZE as usize, |buf| {
                    for (i, &(_, slot)) in part.iter().enumerate() {
                        let at = i * BLOCK_SIZE as usize;
                        buf[at..at + BLOCK_SIZE as usize]
                            .copy_from_slice(self.slot_buf(slot).bytes());
                    }
                });
                let landed = self.array.write(part[0].0 * BLOCK_SIZE, buf, false).await;
                self.bump_epoch();
                if let Err(e) = landed {
                    result = Err(e);
                    break;
                }
                written += part.len() as u64 * BLOCK_SIZE;
            }
        }
        self.destaged_bytes.set(self.destaged_bytes.get() + written);
        result
    }

    /// The background destager, until `close`.
    pub async fn run_destager(self: Rc<Self>) {
        let max_age = self.config.max_age.as_millis() as u64;
        // Under pressure or draining, the next batch follows at once; otherwise look again
        // every tick (or when woken).
        let mut busy = false;
        loop {
            if self.wake.available() > 0 {
                self.wake.acquire().await;
            } else if busy {
                crate::reactor::yield_now().await;
            } else {
                sleep(TICK).await;
            }
            busy = false;
            if self.stopping.get() {
                return;
            }
            self.update_rate();
            let now = self.now();
            let (dirty, oldest, pressure) = {
                let index = self.index.borrow();
                let pressure = index.should_destage(
                    self.config.high_pct,
                    self.config.low_pct,
                    self.pressure.get(),
                );
                (index.dirty_bytes(), index.oldest_dirty(), pressure)
            };
            self.pressure.set(pressure);
            if dirty == 0 {
                continue;
            }
            let drain = !self.write_back.get();
            let aged = oldest.is_some_and(|t| now.saturating_sub(t) >= max_age);
            if !(drain || aged || pressure) {
                continue;
            }
            let mut batch = self.index.borrow_mut().take_destage_batch(
                BATCH_STRIPES,
                now,
                if drain { 0 } else { max_age },
            );
            if !(drain || pressure) {
                // Only the old data is due: give the rest back.
                let (due, rest): (Vec<_>, Vec<_>) = batch.into_iter().partition(|s| s.aged);
                for s in rest {
                    self.index.borrow_mut().destage_done(&s.block_list(), false);
                }
                batch = due;
            }
            // Nothing to pick means the rest is in flight elsewhere (a flush): do not spin.
            busy = (drain || pressure) && !batch.is_empty();
            if let Err(e) = self.destage_batch(batch).await {
                tracing::error!(array = %self.array.name(), "destage failed: {e}; the data stays dirty in the cache");
                sleep(Duration::from_secs(1)).await;
                continue;
            }
            if drain && self.index.borrow().dirty_bytes() == 0 {
                match self.array.flush().await {
                    Ok(()) => {
                        tracing::info!(array = %self.array.name(), "cache drained: every write is on the members")
                    }
                    Err(e) => {
                        tracing::error!(array = %self.array.name(), "flush after the drain failed: {e}")
                    }
                }
            }
        }
    }

    /// Follows the battery file, if one is configured, until `close`.
    pub async fn watch_battery_file(self: Rc<Self>) {
        let mut last_error = String::new();
        while !self.stopping.get() {
            let source = self.battery_source.borrow().clone();
            if let BatterySource::File(path) = source {
                let (battery, error) = read_battery_file(&path);
                if error != last_error && !error.is_empty() {
                    tracing::warn!(array = %self.array.name(), "{error}");
                }
                last_error = error;
                let mut policy = self.policy.get();
                if policy.battery != battery {
                    tracing::info!(array = %self.array.name(), "battery file {}: {battery}", path.display());
                    policy.battery = battery;
                    self.policy.set(policy);
                    self.apply_policy(true);
                }
            }
            sleep(BATTERY_POLL).await;
        }
    }

    /// Stops the destager and writes everything out (the first step of `stop`).
    pub async fn close(&self) -> Result<()> {
        self.destage_until(u64::MAX).await?;
        self.stopping.set(true);
        self.wake_destager();
        self.array.flush().await
    }

    fn update_rate(&self) {
        let (since, bytes_then, rate) = self.rate.get();
        let elapsed = since.elapsed();
        if elapsed >= Duration::from_secs(1) {
            let bytes = self.destaged_bytes.get();
            let new_rate = (bytes - bytes_then) as f64 / elapsed.as_secs_f64();
            self.rate.set((Instant::now(), bytes, new_rate));
        } else {
            self.rate.set((since, bytes_then, rate));
        }
    }

    pub fn report(&self) -> CacheReport {
        self.update_rate();
        let policy = self.policy.get();
        let index = self.index.borrow();
        CacheReport {
            mode: policy.mode.as_str().into(),
            effective: if self.write_back.get() {
                "write-back".into()
            } else {
                "write-through".into()
            },
            reason: self.reason.borrow().clone(),
            battery: policy.battery.as_str().into(),
            battery_file: match &*self.battery_source.borrow() {
                BatterySource::File(p) => Some(p.display().to_string()),
                BatterySource::Manual => None,
            },
            capacity_bytes: index.capacity_bytes(),
            cached_bytes: index.cached_bytes(),
            dirty_bytes: index.dirty_bytes(),
            hit_ratio: index.stats().read_hit_ratio(),
            destage_bytes_per_sec: self.rate.get().2,
            destaged_bytes: self.destaged_bytes.get(),
            cached_block_writes: index.stats().writes - index.stats().writes_rejected,
            writes_through_full: index.stats().writes_rejected,
        }
    }
}

/// The battery word in `path`; an unreadable file or an unknown word counts as "failed"
/// (write-through: the safe reading), with the reason as the second value.
fn read_battery_file(path: &std::path::Path) -> (Battery, String) {
    match std::fs::read_to_string(path) {
        Ok(text) => match Battery::parse(&text) {
            Ok(b) => (b, String::new()),
            Err(e) => (
                Battery::Failed,
                format!(
                    "battery file {}: {e}; treating the battery as failed",
                    path.display()
                ),
            ),
        },
        Err(e) => (
            Battery::Failed,
            format!(
                "battery file {} unreadable ({e}); treating the battery as failed",
                path.display()
            ),
        ),
    }
}

/// Checks a `--battery-file` path before it is used: it must be readable and hold a word.
pub fn check_battery_file(path: &std::path::Path) -> Result<Battery> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Error::io(
            format!("cannot read --battery-file {} (a UPS daemon writes present, absent, charging or failed into it)", path.display()),
            e,
        )
    })?;
    Battery::parse(&text)
        .map_err(|e| Error::invalid(format!("--battery-file {}: {e}", path.display())))
}
