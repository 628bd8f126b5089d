//! The run directory contract: per array `NAME.sock` (NBD, 0660), `NAME.ctl` (control, 0600),
//! `NAME.pid` (holds the daemon's lock) and `NAME.log`.
//!
//! The daemon keeps an exclusive flock on `NAME.pid` for its whole life; the kernel drops it
//! when the process dies, however it dies. So "is NAME running?" is "is the pid file locked?",
//! and files left behind by a `kill -9` are recognised as stale and replaced.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, ErrorKind, Result};

/// Default location; `RAIDCTL_RUN_DIR` or `--run-dir` move it.
pub const DEFAULT_RUN_DIR: &str = "/run/raidctl";

#[derive(Clone, Debug)]
pub struct RunDir {
    pub dir: PathBuf,
}

/// Held by the daemon: the locked pid file.
pub struct RunLock {
    _file: File,
}

/// How long a lock held by an exiting process is waited for.
const EXITING_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// Whether `pid` is on its way out: its main thread is a zombie (other threads may still be
/// leaving the kernel, holding its files and locks).
fn is_exiting(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let state = stat
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .next()?
                .to_string();
            Some(state == "Z" || state == "X")
        })
        .unwrap_or(false)
}

impl RunDir {
    /// `explicit`, else $RAIDCTL_RUN_DIR, else /run/raidctl.
    pub fn resolve(explicit: Option<&str>) -> RunDir {
        let dir = explicit
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("RAIDCTL_RUN_DIR").map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from(DEFAULT_RUN_DIR));
        RunDir { dir }
    }

    pub fn sock(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.sock"))
    }
    pub fn ctl(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.ctl"))
    }
    pub fn pid(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.pid"))
    }
    pub fn log(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.log"))
    }

    pub fn create(&self) -> Result<()> {
        std::fs::create_dir_all(&self.dir).map_err(|e| {
            Error::io(
                format!("cannot create run directory {}", self.dir.display()),
                e,
            )
        })
    }

    /// The pid of the daemon serving `name`, if one is alive (its pid file is locked).
    pub fn running_pid(&self, name: &str) -> Option<u32> {
        let mut file = File::open(self.pid(name)).ok()?;
        let mut text = String::new();
        file.read_to_string(&mut text).ok()?;
        let pid = text.trim().parse().ok();
        // A daemon killed a moment ago may still be exiting (its main thread a zombie while
        // another thread leaves the kernel): its lock goes with its last thread, so wait.
        let deadline = std::time::Instant::now() + EXITING_GRACE;
        loop {
            // SAFETY: flock on a descriptor we own; no memory is passed.
            let free = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) } == 0;
            if free {
                return None;
            }
            if !pid.is_some_and(is_exiting) || std::time::Instant::now() > deadline {
                return pid.or(Some(0));
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// Takes the array's lock, or says who holds it. Stale files of a dead daemon are removed.
    pub fn lock(&self, name: &str) -> Result<RunLock> {
        self.create()?;
        let path = self.pid(name);
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .custom_flags(libc::O_CLOEXEC)
            .open(&path)
            .map_err(|e| Error::io(format!("cannot open {}", path.display()), e))?;
        let deadline = std::time::Instant::now() + EXITING_GRACE;
        let try_lock = || {
            // SAFETY: flock on a descriptor we own; no memory is passed.
            unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) }
        };
        while try_lock() != 0 {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let exiting = text.trim().parse().ok().is_some_and(is_exiting);
            if exiting && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(20));
                continue;
            }
            return Err(Error::new(
                ErrorKind::Busy,
                format!(
                    "array {name} is already running (pid {}): see raidctl status {name}, or raidctl stop {name}",
                    text.trim()
                ),
            ));
        }
        for stale in [self.sock(name), self.ctl(name)] {
            if stale.exists() {
                tracing::info!(
                    "removing stale {} left by a daemon that is gone",
                    stale.display()
                );
                let _ = std::fs::remove_file(&stale);
            }
        }
        super::attach::cleanup_stale(self, name);
        file.set_len(0).map_err(|e| Error::io(path.display(), e))?;
        writeln!(file, "{}", std::process::id()).map_err(|e| Error::io(path.display(), e))?;
        Ok(RunLock { _file: file })
    }

    /// Removes the array's socket and pid files (the log stays).
    pub fn cleanup(&self, name: &str) {
        for p in [self.sock(name), self.ctl(name), self.pid(name)] {
            let _ = std::fs::remove_file(p);
        }
    }

    /// Names of arrays with a control socket here.
    pub fn arrays(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                e.file_name()
                    .to_str()
                    .and_then(|n| n.strip_suffix(".ctl"))
                    .map(str::to_string)
            })
            .collect();
        names.sort();
        names
    }
}

/// Sets a socket file's mode.
pub fn chmod(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| Error::io(path.display(), e))
}
