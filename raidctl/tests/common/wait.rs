//! Polling for a state the system under test must reach, with a hang guard.

use std::thread;
use std::time::{Duration, Instant};

/// Polls `ready` until it returns Some, panicking with `what` and `context()` after `timeout`.
pub fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut ready: impl FnMut() -> Option<T>,
    context: impl Fn() -> String,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = ready() {
            return v;
        }
        if Instant::now() > deadline {
            panic!("gave up waiting for {what}\n{}", context());
        }
        thread::sleep(Duration::from_millis(50));
    }
}
