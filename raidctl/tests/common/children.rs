//! Background children of a test (fio, monitors, libnbd drivers, nbdfuse): their output goes
//! to files in the test's directory, where a failure message can show it even after a kill.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use super::process::{describe_command, wait_child};

pub struct Children {
    dir: PathBuf,
    /// (label, child), in the order started; an index is a child's handle.
    list: Vec<(String, Child)>,
}

impl Children {
    pub fn new(dir: &Path) -> Children {
        Children {
            dir: dir.to_path_buf(),
            list: Vec::new(),
        }
    }

    /// Starts `cmd` with stdout and stderr in DIR/LABEL.out and .err; returns its index.
    pub fn spawn(&mut self, label: &str, mut cmd: Command) -> usize {
        let file = |ext: &str| {
            let path = self.dir.join(format!("{label}.{ext}"));
            File::create(&path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()))
        };
        cmd.stdin(Stdio::null())
            .stdout(file("out"))
            .stderr(file("err"));
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", describe_command(&cmd)));
        self.list.push((label.to_string(), child));
        self.list.len() - 1
    }

    /// A child's stdout and stderr so far.
    pub fn output(&self, label: &str) -> (String, String) {
        let read = |ext: &str| {
            fs::read_to_string(self.dir.join(format!("{label}.{ext}"))).unwrap_or_default()
        };
        (read("out"), read("err"))
    }

    /// The child's exit status once it has exited.
    pub fn exited(&mut self, index: usize) -> Option<ExitStatus> {
        self.list[index].1.try_wait().ok().flatten()
    }

    pub fn running(&mut self, index: usize) -> bool {
        self.exited(index).is_none()
    }

    /// Waits for a child (hang guard: killed after `timeout`); returns its status (None when
    /// the guard killed it) and its output.
    pub fn wait(&mut self, index: usize, timeout: Duration) -> (Option<ExitStatus>, String) {
        let status = wait_child(&mut self.list[index].1, timeout);
        let (out, err) = self.output(&self.list[index].0);
        (status, format!("{out}{err}"))
    }

    /// Kills a child unless it has exited already.
    pub fn kill(&mut self, index: usize) {
        wait_child(&mut self.list[index].1, Duration::ZERO);
    }

    pub fn kill_all(&mut self) {
        for i in 0..self.list.len() {
            self.kill(i);
        }
    }
}
