//! The control socket: one JSON object per line each way.
//!
//! Request:  `{"cmd":"status"}` or `{"cmd":"stop"}`
//! Response: `{"ok":true,"status":{...}}` or `{"ok":false,"error":"one line"}`
//!
//! `raidctl` is the usual client ([`request`]); anything that can write a line to a unix socket
//! can drive the daemon the same way.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::status::StatusReport;
use crate::error::{Error, ErrorKind, Result};

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum ControlRequest {
    Status,
    Stop,
    /// Attach as a block device: `device` is "fuse", "/dev/nbdN", or None for the best path.
    Attach {
        #[serde(default)]
        device: Option<String>,
    },
    Detach,
    /// Mark a member faulty; refused where the array would fail, unless `force`.
    Fail {
        device: String,
        #[serde(default)]
        force: bool,
    },
    /// Remove a faulty member or a spare.
    Remove {
        device: String,
    },
    /// Add a device as a hot spare.
    Add {
        device: String,
        #[serde(default)]
        force: bool,
    },
    /// Build `with` as a copy of the active member `device`, then fail `device`.
    Replace {
        device: String,
        with: String,
        #[serde(default)]
        force: bool,
    },
    /// Start or resume recovery now; optionally change the throttle (KiB/s).
    Rebuild {
        #[serde(default)]
        speed_min_kib: Option<u64>,
        #[serde(default)]
        speed_max_kib: Option<u64>,
    },
    /// Stream events on this connection, one JSON object per line, until it closes.
    Monitor,
    /// Another array of spare group `group` needs a spare: give one up if we can spare it.
    GiveSpare {
        group: String,
    },
    /// Scrub every stripe, counting mismatches; `repair` also fixes them.
    Check {
        #[serde(default)]
        repair: bool,
    },
    /// Change the cache policy (each field optional; `battery_file` "" goes back to the manual
    /// battery flag). Answers with the status, which has the cache's state.
    Cache {
        #[serde(default)]
        mode: Option<String>,
        #[serde(default)]
        battery: Option<String>,
        #[serde(default)]
        battery_file: Option<String>,
    },
    /// A fault drill on a live array (see `raidctl inject`).
    Inject {
        device: String,
        /// "read-error", "write-error", "delay", "vanish" or "clear".
        fault: String,
        #[serde(default)]
        delay_ms: Option<u64>,
        #[serde(default)]
        offset: Option<u64>,
        #[serde(default)]
        length: Option<u64>,
        #[serde(default)]
        count: Option<u64>,
    },
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ControlResponse {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<StatusReport>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attach: Option<super::attach::AttachReport>,
    /// The device given up by GiveSpare.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
}

impl ControlResponse {
    pub fn error(message: impl Into<String>) -> ControlResponse {
        ControlResponse {
            ok: false,
            error: Some(message.into()),
            ..Default::default()
        }
    }
}

/// Sends one request to the daemon behind `ctl` and waits for its answer.
pub fn request(ctl: &Path, req: &ControlRequest, timeout: Duration) -> Result<ControlResponse> {
    let stream = UnixStream::connect(ctl).map_err(|e| {
        Error::new(
            ErrorKind::NotFound,
            format!("cannot reach the daemon at {}: {e}", ctl.display()),
        )
    })?;
    stream.set_read_timeout(Some(timeout)).ok();
    let mut line = serde_json::to_string(req).expect("requests serialise");
    line.push('\n');
    (&stream)
        .write_all(line.as_bytes())
        .map_err(|e| Error::io(ctl.display(), e))?;
    let mut answer = String::new();
    BufReader::new(&stream)
        .read_line(&mut answer)
        .map_err(|e| Error::io(ctl.display(), e))?;
    if answer.is_empty() {
        return Err(Error::new(
            ErrorKind::Io,
            format!("the daemon at {} closed the connection", ctl.display()),
        ));
    }
    serde_json::from_str(&answer).map_err(|e| {
        Error::new(
            ErrorKind::Corrupt,
            format!("bad answer from the daemon at {}: {e}", ctl.display()),
        )
    })
}
