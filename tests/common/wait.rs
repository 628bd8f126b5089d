//! Waiting, bounded, for the engine's background work: checks, rebuilds, anything else.

use std::time::Duration;

use raidcore::control::{Controller, ScrubState};
use raidcore::reactor::sleep;

/// Waits for the running check / repair / resync to end and returns its final state.
pub async fn wait_scrub(control: &Controller) -> ScrubState {
    loop {
        sleep(Duration::from_millis(2)).await;
        let s = control.scrub_state().expect("a check was started");
        if !s.running {
            return s;
        }
    }
}

/// Waits (bounded) until no slot is recovering and every slot is active.
pub async fn wait_complete(control: &Controller) {
    let array = control.array();
    for _ in 0..20_000 {
        if control.rebuild_states().is_empty() && array.slots().iter().all(|s| s.is_active()) {
            return;
        }
        sleep(Duration::from_millis(2)).await;
    }
    panic!(
        "the array did not become complete: {}",
        array.missing_description()
    );
}

/// Waits (bounded) for `cond`.
pub async fn wait_until(what: &str, cond: impl Fn() -> bool) {
    for _ in 0..20_000 {
        if cond() {
            return;
        }
        sleep(Duration::from_millis(2)).await;
    }
    panic!("timed out waiting for {what}");
}
