//! md's rebuild throttle: background copies run at speed-max while the array is idle and
//! fall to speed-min while clients use it.

use std::time::{Duration, Instant};

use super::Controller;
use crate::reactor::sleep;

impl Controller {
    /// Whether clients used the array in the last half second (md's "not idle"): a moment
    /// with no new request is not idleness, a queue-depth-32 client may simply be waiting.
    pub(super) fn foreground_busy(&self) -> bool {
        const HOLD: Duration = Duration::from_millis(500);
        let count = {
            let c = self.array.counters.borrow();
            c.reads + c.writes
        };
        let (seen, at) = self.foreground_seen.get();
        if count != seen {
            self.foreground_seen.set((count, Instant::now()));
            return true;
        }
        at.elapsed() < HOLD
    }

    /// md's throttle: at most speed-max, and at speed-min while the array has other I/O.
    /// `window` is (start, rebuild bytes since, foreground requests last seen). Sleeps in
    /// short slices and re-checks, so the rebuild speeds up as soon as the foreground stops.
    pub(super) async fn throttle(
        &self,
        window: (Instant, u64, u64),
        just_done: u64,
    ) -> (Instant, u64, u64) {
        const SLICE: Duration = Duration::from_millis(20);
        let (start, bytes, _) = window;
        let bytes = bytes + just_done;
        loop {
            let busy = self.foreground_busy();
            let rate_kib = if busy {
                self.speed_min_kib.get()
            } else {
                self.speed_max_kib.get()
            };
            let allowed = Duration::from_secs_f64(bytes as f64 / 1024.0 / rate_kib as f64);
            let elapsed = start.elapsed();
            if allowed <= elapsed || self.array.stopping.get() {
                break;
            }
            sleep((allowed - elapsed).min(SLICE)).await;
        }
        // The third field is unused (kept so callers' windows stay one type).
        if start.elapsed() >= Duration::from_secs(1) {
            (Instant::now(), 0, 0)
        } else {
            (start, bytes, 0)
        }
    }
}
