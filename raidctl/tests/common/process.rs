//! Running a command to completion under a hang guard, its output kept for failure messages.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use super::tail;

/// Hang guard for one external command (never a performance expectation).
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(300);

/// What a command did: its exit status (None when the hang guard killed it or it could not
/// start) and its output.
pub struct Ran {
    pub what: String,
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
}

impl Ran {
    pub fn success(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }

    pub fn code(&self) -> Option<i32> {
        self.status.and_then(|s| s.code())
    }

    /// The command line, its status and the tail of its output, for a failure message.
    pub fn describe(&self) -> String {
        let status = self
            .status
            .map_or("killed by the test's hang guard".into(), |s| s.to_string());
        let (out, err) = (tail(&self.stdout, 6000), tail(&self.stderr, 6000));
        format!(
            "$ {}\n  status: {status}\n  stdout: {out}\n  stderr: {err}",
            self.what
        )
    }

    /// Panics unless the command exited 0.
    pub fn ok(self) -> Ran {
        assert!(self.success(), "command failed:\n{}", self.describe());
        self
    }
}

/// `cmd` as a shell would show it (arguments with white space, or empty, quoted).
pub fn describe_command(cmd: &Command) -> String {
    let mut parts = vec![cmd.get_program().to_string_lossy().into_owned()];
    parts.extend(cmd.get_args().map(|a| {
        let a = a.to_string_lossy();
        if a.contains(char::is_whitespace) || a.is_empty() {
            format!("'{a}'")
        } else {
            a.into_owned()
        }
    }));
    parts.join(" ")
}

pub fn cmd(program: impl AsRef<OsStr>, args: &[&str]) -> Command {
    let mut c = Command::new(program);
    c.args(args);
    c
}

/// The raidctl binary under test with `args`, logging at its default level whatever the
/// caller's environment says.
pub fn raidctl_command<I: IntoIterator<Item = S>, S: AsRef<OsStr>>(args: I) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_raidctl"));
    c.args(args).env_remove("RAIDCTL_LOG");
    c
}

pub fn run(cmd: Command) -> Ran {
    run_with_timeout(cmd, COMMAND_TIMEOUT)
}

/// Runs `cmd` to completion, killing it after `timeout` (a hang guard). Its output goes to
/// anonymous files rather than pipes, so a daemon it starts cannot hold the reading up.
pub fn run_with_timeout(mut cmd: Command, timeout: Duration) -> Ran {
    let what = describe_command(&cmd);
    let (mut out, mut err) = (output_file(), output_file());
    cmd.stdin(Stdio::null())
        .stdout(out.try_clone().expect("clone the stdout file"))
        .stderr(err.try_clone().expect("clone the stderr file"));
    let status = match cmd.spawn() {
        Ok(mut child) => wait_child(&mut child, timeout),
        Err(e) => {
            return Ran {
                what,
                status: None,
                stdout: String::new(),
                stderr: format!("cannot run it: {e}"),
            }
        }
    };
    let (stdout, stderr) = (read_back(&mut out), read_back(&mut err));
    Ran {
        what,
        status,
        stdout,
        stderr,
    }
}

fn output_file() -> File {
    tempfile::tempfile().expect("create a file for a command's output")
}

fn read_back(f: &mut File) -> String {
    let mut v = Vec::new();
    f.seek(SeekFrom::Start(0))
        .and_then(|_| f.read_to_end(&mut v))
        .expect("read a command's output");
    String::from_utf8_lossy(&v).into_owned()
}

/// Waits for `child`, killing it after `timeout` (a hang guard: None then).
pub fn wait_child(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(s)) => return Some(s),
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    }
}
