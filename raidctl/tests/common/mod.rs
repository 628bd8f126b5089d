//! Helpers the raidctl integration tests share (each test file is its own crate and uses
//! some of them). Process checks read /proc: a zombie counts as gone, since it holds nothing.
#![allow(dead_code)]

use std::fs;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

/// A path as a string (test paths are UTF-8).
pub fn s(p: &Path) -> String {
    p.to_str().expect("temporary paths are UTF-8").to_string()
}

/// The last `max` bytes of `s`, cut at a character boundary.
pub fn tail(s: &str, max: usize) -> &str {
    let mut start = s.len().saturating_sub(max);
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

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
