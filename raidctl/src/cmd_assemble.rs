//! `raidctl assemble`: start the daemon for an array.
//!
//! With `--foreground` the daemon runs in this process. Otherwise this process starts itself
//! again as a detached daemon (new session, stderr to NAME.log) with its stdout on a pipe, and
//! waits for one line: `{"ready":...}` once the export is served, or `{"error":"..."}` if the
//! assembly failed. So the command returns only when clients can connect, with the daemon's
//! own error message when they cannot.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use raidcore::control::AssembleOptions;
use raidcore::daemon::rundir::RunDir;
use raidcore::daemon::{self, DaemonConfig, Listen, Ready};
use raidcore::{Error, ErrorKind, Result};
use serde::{Deserialize, Serialize};

use crate::cli::AssembleArgs;

/// Set in the detached daemon: report readiness or failure as one JSON line on stdout.
const NOTIFY_ENV: &str = "RAIDCTL_NOTIFY_STDOUT";

#[derive(Serialize, Deserialize)]
struct Notice {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ready: Option<ReadyNotice>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct ReadyNotice {
    summary: String,
    uris: Vec<String>,
    notes: Vec<String>,
}

pub fn notify_mode() -> bool {
    std::env::var_os(NOTIFY_ENV).is_some()
}

pub fn notify_error(message: &str) {
    let line = serde_json::to_string(&Notice {
        ready: None,
        error: Some(message.to_string()),
    })
    .unwrap_or_default();
    println!("{line}");
}

pub fn run(args: AssembleArgs, run_dir: Option<&str>) -> Result<i32> {
    let run_dir = RunDir::resolve(run_dir);
    if args.devices.is_empty() {
        return Err(Error::invalid(format!(
            "no member devices given: raidctl assemble {} DEV... (every member and spare)",
            args.name
        )));
    }
    let listen = args
        .listen
        .iter()
        .map(|l| Listen::parse(l))
        .collect::<Result<Vec<_>>>()?;
    if let Some(pid) = run_dir.running_pid(&args.name) {
        return Err(Error::new(
            ErrorKind::Busy,
            format!(
                "array {} is already running (pid {pid}): see raidctl status {}",
                args.name, args.name
            ),
        ));
    }
    // Absolute paths: the daemon reports them, and they must mean the same from anywhere.
    let devices: Vec<String> = args
        .devices
        .iter()
        .map(|d| {
            std::fs::canonicalize(d)
                .map(|p| p.display().to_string())
                .unwrap_or_else(|_| d.clone())
        })
        .collect();
    let args = AssembleArgs { devices, ..args };
    let mut cache = raidcore::cache::CacheConfig::default();
    if let Some(text) = &args.cache_size {
        cache.capacity_bytes = raidcore::size::parse_size(text)
            .map_err(|e| Error::invalid(format!("invalid --cache-size {text}: {e}")))?;
        // The cache is allocated up front: more than half the machine's memory is a typo.
        if let Some(total) = memory_bytes() {
            if cache.capacity_bytes > total / 2 {
                return Err(Error::invalid(format!(
                    "--cache-size {text} is more than half of this machine's memory ({}): pick a smaller size",
                    raidcore::size::format_size(total)
                )));
            }
        }
    }
    let config = DaemonConfig {
        name: args.name.clone(),
        devices: args.devices.clone(),
        run_dir: run_dir.clone(),
        listen,
        fuse: Some(std::sync::Arc::new(crate::cmd_attach::FuseFrontend)),
        assemble: AssembleOptions {
            run: args.run,
            force: args.force,
            read_only: args.read_only,
            expected_uuid: None,
            no_resync: false,
        },
        cache,
    };
    if args.foreground {
        return foreground(config).map(|()| 0);
    }
    background(&args, &run_dir)
}

fn foreground(config: DaemonConfig) -> Result<()> {
    let notify = notify_mode();
    daemon::run(config, move |ready: &Ready| {
        let notice = ReadyNotice {
            summary: summary(ready),
            uris: ready.status.export_uris.clone(),
            notes: ready.notes.clone(),
        };
        if notify {
            let line = serde_json::to_string(&Notice {
                ready: Some(notice),
                error: None,
            })
            .unwrap_or_default();
            println!("{line}");
            let _ = std::io::stdout().flush();
            detach_stdout();
        } else {
            for n in &notice.notes {
                eprintln!("raidctl: warning: {n}");
            }
            println!("{}", notice.summary);
            for u in &notice.uris {
                println!("serving {u}");
            }
            let _ = std::io::stdout().flush();
        }
    })
}

fn summary(ready: &Ready) -> String {
    let s = &ready.status;
    let degraded = if s.missing == "none" {
        String::new()
    } else {
        format!(" ({}: {})", s.state, s.missing)
    };
    format!(
        "array {} assembled: {} {}, {} members{}, {} bytes, state {}",
        s.name, s.level, s.layout, s.raid_devices, degraded, s.size_bytes, s.state
    )
}

/// Points stdout at /dev/null so the parent's pipe sees end-of-file.
fn detach_stdout() {
    if let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") {
        use std::os::fd::AsRawFd;
        // SAFETY: dup2 between two descriptors we own; stdout (1) is replaced atomically.
        unsafe {
            libc::dup2(null.as_raw_fd(), 1);
        }
    }
}

fn background(args: &AssembleArgs, run_dir: &RunDir) -> Result<i32> {
    run_dir.create()?;
    let log_path = run_dir.log(&args.name);
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|e| Error::io(format!("cannot open {}", log_path.display()), e))?;
    let mut cmd = daemon_command(args, run_dir)?;
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(log);
    // SAFETY: setsid is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .map_err(|e| Error::io("cannot start the daemon", e))?;
    await_ready(child, &log_path)
}

/// This same executable, asked to run the array in the foreground with the same options and
/// to report on stdout (with the caller's log level, default info).
fn daemon_command(args: &AssembleArgs, run_dir: &RunDir) -> Result<Command> {
    let exe =
        std::env::current_exe().map_err(|e| Error::io("cannot find the raidctl executable", e))?;
    let mut cmd = Command::new(exe);
    cmd.arg("--run-dir")
        .arg(&run_dir.dir)
        .arg("assemble")
        .arg(&args.name)
        .args(&args.devices)
        .arg("--foreground");
    if let Some(size) = &args.cache_size {
        cmd.arg("--cache-size").arg(size);
    }
    for l in &args.listen {
        cmd.arg("--listen").arg(l);
    }
    for (flag, on) in [
        ("--run", args.run),
        ("--force", args.force),
        ("--read-only", args.read_only),
    ] {
        if on {
            cmd.arg(flag);
        }
    }
    cmd.env(NOTIFY_ENV, "1").env(
        "RAIDCTL_LOG",
        std::env::var("RAIDCTL_LOG").unwrap_or_else(|_| "info".into()),
    );
    Ok(cmd)
}

/// Waits for the daemon's one notice line: prints what it serves once ready, or returns its
/// error (or points at the log if it died without a word).
fn await_ready(mut child: Child, log_path: &Path) -> Result<i32> {
    let stdout = child.stdout.take().expect("piped stdout");
    let mut line = String::new();
    let _ = BufReader::new(stdout).read_line(&mut line);
    let notice: Option<Notice> = serde_json::from_str(line.trim()).ok();
    match notice {
        Some(Notice { ready: Some(r), .. }) => {
            for n in &r.notes {
                eprintln!("raidctl: warning: {n}");
            }
            println!("{}", r.summary);
            for u in &r.uris {
                println!("serving {u}");
            }
            println!("daemon pid {}, log {}", child.id(), log_path.display());
            Ok(0)
        }
        Some(Notice { error: Some(e), .. }) => {
            let _ = child.wait();
            Err(Error::new(ErrorKind::Inconsistent, e))
        }
        _ => {
            let status = child.wait().ok();
            Err(Error::new(
                ErrorKind::Io,
                format!(
                    "the daemon exited before serving ({status:?}); see {}",
                    log_path.display()
                ),
            ))
        }
    }
}

/// MemTotal from /proc/meminfo.
fn memory_bytes() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}
