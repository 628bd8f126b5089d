//! The harness of the raidctl integration tests: commands run under a hang guard, the tools
//! they need, one array fixture ([`array::Array`]: member files, run directory, daemon, and
//! what a test layers on top of it: attachments, nbdfuse, loop devices, mounts, background
//! children) and readers of what the daemon and mdadm report.
//!
//! Each test file is its own crate and uses only part of this, hence `allow(dead_code)`.
#![allow(dead_code)]

pub mod array;
pub mod attach;
pub mod children;
pub mod cleanup;
pub mod daemon;
pub mod examine;
pub mod export;
pub mod files;
pub mod filesystem;
pub mod mounts;
pub mod nbdfuse;
pub mod pids;
pub mod prelude;
pub mod process;
pub mod rng;
pub mod status;
pub mod tools;
pub mod wait;

use std::path::Path;

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
