//! Undoing everything an [`Array`] test set up, newest layer first: the test's filesystem
//! mounts (`umount -l`), its loop devices (`losetup -d`) and nbdfuse mounts (`fusermount3 -u
//! -z`), background children, then the daemon's own way out (`raidctl detach` if attached,
//! `raidctl stop`), `kill -9` of a daemon still alive, and last whatever a dead daemon left:
//! loop devices on files of the test and the FUSE mount of `raidctl attach`.

use std::path::Path;
use std::time::Duration;

use super::array::Array;
use super::mounts::{is_mount_point, loop_devices, mounts_under, under};
use super::pids::{is_raidctl, kill_9, process_alive, wait_until_dead};
use super::process::{cmd, run_with_timeout};
use super::s;

/// Hang guard for one command of the cleanup.
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(120);

/// Runs a cleanup command, whatever its outcome.
fn quiet(program: &str, args: &[&str]) {
    let _ = run_with_timeout(cmd(program, args), Duration::from_secs(60));
}

impl Array {
    /// Undoes everything; never panics (it also runs while a failed test unwinds).
    pub fn cleanup(&mut self) {
        self.unmount_test_filesystems();
        for dev in self.loops.drain(..).rev() {
            quiet("losetup", &["-d", &dev]);
        }
        for (mnt, _) in self.fuse_mounts.drain(..).rev() {
            quiet("fusermount3", &["-u", "-z", &s(&mnt)]);
        }
        self.children.kill_all();
        self.stop_daemon_quietly();
        self.remove_daemon_leftovers();
    }

    /// Ends a test: runs the cleanup, then asserts nothing of the test remains.
    pub fn finish(mut self) {
        self.cleanup();
        self.assert_nothing_left("after the test's cleanup");
    }

    /// Filesystems mounted under the test's directory, but for FUSE mounts (the daemon's and
    /// nbdfuse's), which go after what is layered on them.
    fn unmount_test_filesystems(&self) {
        let fuse_dir = s(&self.fuse_dir());
        let is_nbdfuse = |point: &str| self.fuse_mounts.iter().any(|(m, _)| s(m) == point);
        for m in mounts_under(&self.dir).iter().rev() {
            if m.point != fuse_dir && !is_nbdfuse(&m.point) {
                quiet("umount", &["-l", &m.point]);
            }
        }
    }

    /// `raidctl detach` (if the test attached) and `raidctl stop`, then `kill -9` of any
    /// daemon of the test still alive.
    fn stop_daemon_quietly(&mut self) {
        if self.running_pid().is_some() {
            let verbs: &[&str] = if self.attaching {
                &["detach", "stop"]
            } else {
                &["stop"]
            };
            for verb in verbs {
                let _ =
                    run_with_timeout(self.raidctl_command(&[verb, &self.name]), CLEANUP_TIMEOUT);
            }
        }
        if let Some(pid) = self.pid_from_file() {
            self.pids.push(pid);
        }
        for &pid in &self.pids {
            if pid > 0 && process_alive(pid) && is_raidctl(pid) {
                kill_9(pid);
                wait_until_dead(pid, Duration::from_secs(10));
            }
        }
    }

    /// What a dead daemon left: loop devices on files of the test (before the FUSE mount
    /// goes, while the path shows), then anything still mounted under the directory.
    fn remove_daemon_leftovers(&self) {
        for (dev, backing) in loop_devices() {
            if self.owns_loop(&dev, &backing) {
                quiet("losetup", &["-d", &dev]);
            }
        }
        for m in mounts_under(&self.dir).iter().rev() {
            quiet("umount", &["-l", &m.point]);
            if is_mount_point(Path::new(&m.point)) {
                quiet("fusermount3", &["-u", "-z", &m.point]);
            }
        }
    }

    /// Whether a loop device belongs to this test: its backing file is under the test's
    /// directory, or it is a device attach handed out and still points at a file named after
    /// the array (a lazily unmounted FUSE file no longer shows its full path).
    pub fn owns_loop(&self, dev: &str, backing: &str) -> bool {
        under(backing, &self.dir)
            || (self.attached_devices.iter().any(|d| d == dev)
                && backing.ends_with(&format!("/{}", self.name)))
    }

    /// What of this test is still mounted or attached, described.
    pub fn leftovers(&self) -> Vec<String> {
        let mut out: Vec<String> = mounts_under(&self.dir)
            .iter()
            .map(|m| format!("mount {} ({} from {})", m.point, m.fstype, m.source))
            .collect();
        for (dev, backing) in loop_devices() {
            if self.owns_loop(&dev, &backing) {
                out.push(format!("loop device {dev} on {backing}"));
            }
        }
        out
    }

    pub fn assert_nothing_left(&self, context: &str) {
        let left = self.leftovers();
        assert!(
            left.is_empty(),
            "{context}: still mounted or attached:\n  {}\n  daemon log: {}",
            left.join("\n  "),
            self.log_tail()
        );
    }
}

impl Drop for Array {
    fn drop(&mut self) {
        self.cleanup();
    }
}
