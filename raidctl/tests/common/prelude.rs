//! What the topic-split test crates (`tests/NAME/main.rs`) use all over, in one import:
//! `pub(crate) use common::prelude::*;` in their root, `use crate::*;` in their modules. Each crate uses part of it, as with the rest of `common`.
#![allow(unused_imports)]

pub use std::collections::{BTreeMap, HashMap};
pub use std::fs::{self, File, OpenOptions};
pub use std::io::{self, Read, Seek, SeekFrom, Write};
pub use std::os::unix::fs::{FileExt, PermissionsExt};
pub use std::os::unix::net::UnixStream;
pub use std::path::{Path, PathBuf};
pub use std::process::{Command, ExitStatus};
pub use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
pub use std::sync::{mpsc, Arc, OnceLock};
pub use std::thread;
pub use std::time::{Duration, Instant};

pub use serde_json::Value;

pub use super::array::{Array, Spec};
pub use super::examine::{mdadm_examine, Examined};
pub use super::files::{assert_same_range, fill_random, read_full, sha256_of};
pub use super::pids::{is_raidctl, process_alive};
pub use super::process::{cmd, raidctl_command, run, run_with_timeout, Ran, COMMAND_TIMEOUT};
pub use super::rng::Rng;
pub use super::status::{find_member, member, members_of, slot_entry, str_of, u64_of};
pub use super::tools::{find_tool, require, require_root, require_tools};
pub use super::wait::wait_for;
pub use super::{s, tail};
