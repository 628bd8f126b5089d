//! The array's daemon: assembling it, what it reports (status, log, export), stopping and
//! killing it.

use std::fs::{self, File};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

use super::array::Array;
use super::pids::{is_raidctl, kill_9, process_alive, wait_until_dead};
use super::process::Ran;
use super::wait::wait_for;
use super::{s, tail};

/// Hang guards for a daemon to exit once stopped, or killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(60);
const KILL_TIMEOUT: Duration = Duration::from_secs(30);
/// Hang guard for waiting on a line the daemon must log.
const LOG_TIMEOUT: Duration = Duration::from_secs(180);

impl Array {
    /// `raidctl assemble NAME DEV... FLAGS...`, whatever its outcome.
    pub fn try_assemble(&mut self, devices: &[String], flags: &[&str]) -> Ran {
        let mut args = vec!["assemble", self.name.as_str()];
        args.extend(devices.iter().map(String::as_str));
        args.extend_from_slice(flags);
        let ran = self.raidctl(&args);
        if let Some(pid) = self.pid_from_file() {
            self.pids.push(pid);
        }
        ran
    }

    /// Assembles `devices` with `flags`; returns once the array is served.
    pub fn assemble_devices(&mut self, devices: &[String], flags: &[&str]) {
        let ran = self.try_assemble(devices, flags);
        assert!(
            ran.success(),
            "assemble failed:\n{}\n  daemon log: {}",
            ran.describe(),
            self.log_tail()
        );
        assert!(
            self.running_pid().is_some_and(process_alive),
            "assemble succeeded but no daemon holds {}",
            self.pid_file().display()
        );
    }

    /// Assembles every member and spare.
    pub fn assemble(&mut self) {
        self.assemble_with(&[]);
    }

    /// Assembles every member and spare with `flags`.
    pub fn assemble_with(&mut self, flags: &[&str]) {
        let devices = self.all_members();
        self.assemble_devices(&devices, flags);
    }

    pub fn pid_file(&self) -> PathBuf {
        self.run_dir.join(format!("{}.pid", self.name))
    }

    pub fn pid_from_file(&self) -> Option<u32> {
        fs::read_to_string(self.pid_file())
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// The pid of the daemon, per its pid file, which must hold one.
    pub fn pid(&self) -> u32 {
        self.pid_from_file()
            .unwrap_or_else(|| panic!("no pid in {}", self.pid_file().display()))
    }

    /// The daemon's pid while one holds the lock on NAME.pid (as raidctl itself decides).
    pub fn running_pid(&self) -> Option<u32> {
        let file = File::open(self.pid_file()).ok()?;
        // SAFETY: flock on a descriptor we own; no memory is passed.
        let free = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) } == 0;
        if free {
            return None;
        }
        Some(self.pid_from_file().unwrap_or(0))
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.run_dir.join(format!("{}.log", self.name)))
            .unwrap_or_else(|e| format!("(no log: {e})"))
    }

    pub fn log_tail(&self) -> String {
        tail(&self.log(), 4000).to_string()
    }

    /// The daemon log's panic messages ("panicked at ..." and the line after), if any.
    pub fn log_panics(&self) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        let mut out = String::new();
        for (i, l) in lines.iter().enumerate() {
            if l.contains("panicked at") {
                for line in lines[i..].iter().take(2) {
                    out.push_str(line);
                    out.push('\n');
                }
            }
        }
        out
    }

    /// Waits until the daemon log holds `needle` at least `count` times; returns the log.
    /// (Events are logged after the state change that status shows, so they may trail it.)
    pub fn wait_for_log(&self, needle: &str, count: usize) -> String {
        wait_for(
            &format!("{count} x {needle:?} in the daemon log"),
            LOG_TIMEOUT,
            || {
                let log = self.log();
                (log.matches(needle).count() >= count).then_some(log)
            },
            || self.log_tail(),
        )
    }

    /// `raidctl status NAME --json`, which must succeed.
    pub fn status(&self) -> Value {
        let ran = self.raidctl(&["status", &self.name, "--json"]);
        assert!(
            ran.success(),
            "status failed:\n{}\n  daemon log: {}",
            ran.describe(),
            self.log_tail()
        );
        serde_json::from_str(&ran.stdout)
            .unwrap_or_else(|e| panic!("status --json is not JSON ({e}):\n{}", ran.stdout))
    }

    /// The export's size, as status reports it.
    pub fn size(&self) -> u64 {
        let st = self.status();
        st["size_bytes"]
            .as_u64()
            .unwrap_or_else(|| panic!("status has no size_bytes:\n{st:#}"))
    }

    pub fn sock(&self) -> PathBuf {
        self.run_dir.join(format!("{}.sock", self.name))
    }

    /// The export's URI on the daemon's unix socket.
    pub fn uri(&self) -> String {
        format!("nbd+unix:///{}?socket={}", self.name, s(&self.sock()))
    }

    /// The first export URI `status` lists, which must be the daemon's own unix socket.
    pub fn export_uri(&self) -> String {
        let st = self.status();
        let uri = st["export_uris"][0]
            .as_str()
            .expect("status lists export URIs")
            .to_string();
        assert!(
            uri.starts_with("nbd+unix:///") && uri.contains(&s(&self.sock())),
            "unexpected first export URI {uri} (socket {})",
            self.sock().display()
        );
        uri
    }

    /// `raidctl stop NAME`, which must succeed and leave no daemon (see `assert_stopped`).
    pub fn stop(&mut self) {
        let pid = self.running_pid();
        self.ok(&["stop", &self.name]);
        self.assert_stopped(pid);
    }

    /// The daemon (`pid`) is gone and none holds the pid file; an array the test attached
    /// has left nothing mounted or attached either.
    pub fn assert_stopped(&self, pid: Option<u32>) {
        if let Some(pid) = pid.filter(|&p| p > 0) {
            assert!(
                wait_until_dead(pid, STOP_TIMEOUT),
                "the daemon (pid {pid}) is still running after stop"
            );
        }
        assert_eq!(
            self.running_pid(),
            None,
            "a daemon still holds the pid file"
        );
        if self.attaching {
            self.assert_nothing_left("after stop");
        }
    }

    /// SIGKILL to the daemon `status` names; returns its pid once it is gone.
    pub fn kill9(&self) -> u32 {
        let st = self.status();
        let pid = st["pid"]
            .as_u64()
            .unwrap_or_else(|| panic!("status has no pid:\n{st:#}")) as u32;
        assert!(is_raidctl(pid), "pid {pid} from status is not raidctl");
        assert!(kill_9(pid), "kill -9 {pid}");
        assert!(
            wait_until_dead(pid, KILL_TIMEOUT),
            "the daemon (pid {pid}) survived kill -9"
        );
        pid
    }
}
