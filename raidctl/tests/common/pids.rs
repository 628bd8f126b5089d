//! Processes by pid, as /proc shows them: a zombie counts as gone, since it holds nothing.

use std::fs;
use std::thread;
use std::time::{Duration, Instant};

/// Whether `pid` runs (a zombie, dead and not yet reaped, counts as gone).
pub fn process_alive(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X")
    })
}

pub fn is_raidctl(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "raidctl")
}

/// Waits until `pid` is gone; false if it still runs after `timeout`.
pub fn wait_until_dead(pid: u32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while process_alive(pid) {
        if Instant::now() > deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(20));
    }
    true
}

/// Sends SIGKILL to `pid` (a daemon the test started); false if the kernel refused.
pub fn kill_9(pid: u32) -> bool {
    // SAFETY: plain syscall on the pid of a daemon the test started; no memory is passed.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) == 0 }
}
