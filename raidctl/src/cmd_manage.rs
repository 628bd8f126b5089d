//! `raidctl fail / remove / add / rebuild`: member management through the control socket.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use raidcore::control::ScrubState;
use raidcore::daemon::control::ControlRequest;
use raidcore::daemon::rundir::RunDir;
use raidcore::size::format_size;
use raidcore::{Error, ErrorKind, Result};

use crate::cli::{AddArgs, CheckArgs, FailArgs, MemberArgs, RebuildArgs, ReplaceArgs};
use crate::cmd_status::{call, query};

/// One request, then one line saying what was done.
pub fn simple(run_dir: Option<&str>, name: &str, req: ControlRequest, done: String) -> Result<i32> {
    call(
        &RunDir::resolve(run_dir),
        name,
        &req,
        Duration::from_secs(60),
    )?;
    println!("{done}");
    Ok(0)
}

pub fn fail(args: FailArgs, run_dir: Option<&str>) -> Result<i32> {
    let done = format!("{} marked faulty in array {}", args.device, args.name);
    simple(
        run_dir,
        &args.name,
        ControlRequest::Fail {
            device: args.device,
            force: args.force,
        },
        done,
    )
}

pub fn remove(args: MemberArgs, run_dir: Option<&str>) -> Result<i32> {
    let done = format!("{} removed from array {}", args.device, args.name);
    simple(
        run_dir,
        &args.name,
        ControlRequest::Remove {
            device: args.device,
        },
        done,
    )
}

pub fn add(args: AddArgs, run_dir: Option<&str>) -> Result<i32> {
    let done = format!("{} added to array {} as a spare", args.device, args.name);
    simple(
        run_dir,
        &args.name,
        ControlRequest::Add {
            device: args.device,
            force: args.force,
        },
        done,
    )
}

pub fn rebuild(args: RebuildArgs, run_dir: Option<&str>) -> Result<i32> {
    let run_dir = RunDir::resolve(run_dir);
    call(
        &run_dir,
        &args.name,
        &ControlRequest::Rebuild {
            speed_min_kib: args.speed_min,
            speed_max_kib: args.speed_max,
        },
        Duration::from_secs(60),
    )?;
    if !args.wait {
        println!(
            "rebuild of array {} started or resumed (if a member needs one)",
            args.name
        );
        return Ok(0);
    }
    wait_for_rebuild(&run_dir, &args.name)
}

/// Shows progress until no member is recovering: a bar with rate and ETA on a terminal, a
/// plain line per 10 % otherwise.
fn wait_for_rebuild(run_dir: &RunDir, name: &str) -> Result<i32> {
    let mut progress = Progress::new();
    let start = Instant::now();
    let mut first: Option<u64> = None;
    loop {
        let status = query(run_dir, name)?;
        let rec: Vec<_> = status
            .members
            .iter()
            .filter(|m| m.state == "recovering")
            .collect();
        if rec.is_empty() {
            progress.finish();
            println!("array {name}: no rebuild running, state {}", status.state);
            return Ok(if status.state == "failed" { 1 } else { 0 });
        }
        let done: u64 = rec.iter().filter_map(|m| m.recovered_bytes).sum();
        let total: u64 = rec
            .iter()
            .filter_map(|m| m.recovery_total_bytes)
            .sum::<u64>()
            .max(1);
        let base = *first.get_or_insert(done);
        let secs = start.elapsed().as_secs_f64().max(0.001);
        let rate = (done.saturating_sub(base)) as f64 / secs;
        let eta = if rate > 0.0 {
            ((total - done) as f64 / rate) as u64
        } else {
            0
        };
        let pct = done as f64 * 100.0 / total as f64;
        progress.show(
            pct,
            || {
                let (rate, m, s) = (format_size(rate as u64), eta / 60, eta % 60);
                format!("{rate}/s  ETA {m}:{s:02}")
            },
            || {
                let (done, total) = (format_size(done), format_size(total));
                format!(
                    "rebuild {name}: {pct:.1}% ({done} of {total}), {}/s",
                    format_size(rate as u64)
                )
            },
        );
    }
}

pub fn check(args: CheckArgs, run_dir: Option<&str>) -> Result<i32> {
    let run_dir = RunDir::resolve(run_dir);
    call(
        &run_dir,
        &args.name,
        &ControlRequest::Check {
            repair: args.repair,
        },
        Duration::from_secs(60),
    )?;
    let what = if args.repair { "repair" } else { "check" };
    if !args.wait {
        println!(
            "{what} of array {} started (raidctl status {} shows progress)",
            args.name, args.name
        );
        return Ok(0);
    }
    wait_for_check(&run_dir, &args, what)
}

/// `check --wait`: shows progress (a bar on a terminal, a line per 10% otherwise) until the
/// scrub ends, then its result.
fn wait_for_check(run_dir: &RunDir, args: &CheckArgs, what: &str) -> Result<i32> {
    let mut progress = Progress::new();
    let start = Instant::now();
    loop {
        let status = query(run_dir, &args.name)?;
        let Some(s) = status.check else {
            return Err(Error::new(ErrorKind::Io, "the daemon reports no check"));
        };
        let pct = s.done_bytes as f64 * 100.0 / s.total_bytes.max(1) as f64;
        if !s.running {
            progress.finish();
            return Ok(check_finished(args, what, &s));
        }
        let rate = s.done_bytes as f64 / start.elapsed().as_secs_f64().max(0.001);
        progress.show(
            pct,
            || {
                format!(
                    "{}/s  {} mismatched",
                    format_size(rate as u64),
                    s.mismatch_sectors
                )
            },
            || {
                let (name, bad) = (&args.name, s.mismatch_sectors);
                format!("{what} {name}: {pct:.1}%, {bad} mismatched sectors")
            },
        );
    }
}

/// Says how the scrub ended; the exit code is 1 when it stopped early or a check (not a
/// repair) found mismatches.
fn check_finished(args: &CheckArgs, what: &str, s: &ScrubState) -> i32 {
    let complete = s.done_bytes >= s.total_bytes;
    println!(
        "{what} of array {} {}: {} mismatched sectors{}",
        args.name,
        if complete {
            "finished"
        } else {
            "stopped early"
        },
        s.mismatch_sectors,
        if args.repair && s.mismatch_sectors > 0 {
            " (repaired)"
        } else {
            ""
        }
    );
    if s.mismatch_sectors > 0 && !args.repair || !complete {
        1
    } else {
        0
    }
}

pub fn replace(args: ReplaceArgs, run_dir: Option<&str>) -> Result<i32> {
    let run_dir = RunDir::resolve(run_dir);
    call(
        &run_dir,
        &args.name,
        &ControlRequest::Replace {
            device: args.device.clone(),
            with: args.with.clone(),
            force: args.force,
        },
        Duration::from_secs(60),
    )?;
    println!(
        "replacing {} with {} in array {} (the old member stays active until the copy is complete)",
        args.device, args.with, args.name
    );
    if args.wait {
        return wait_for_rebuild(&run_dir, &args.name);
    }
    Ok(0)
}

/// A 20-step progress bar for `pct` percent: `[#####...............]`.
fn bar(pct: f64) -> String {
    let filled = ((pct / 5.0) as usize).min(20);
    format!("[{}{}]", "#".repeat(filled), ".".repeat(20 - filled))
}

/// How a `--wait` shows progress: a bar redrawn in place on a terminal, else a line per 10%.
struct Progress {
    tty: bool,
    last_decile: Option<u64>,
}

impl Progress {
    fn new() -> Progress {
        Progress {
            tty: std::io::stdout().is_terminal(),
            last_decile: None,
        }
    }

    /// Shows `pct` (with `detail` after the bar, or `line` once per decile), then waits
    /// before the next look.
    fn show(&mut self, pct: f64, detail: impl FnOnce() -> String, line: impl FnOnce() -> String) {
        if self.tty {
            print!("\r{} {pct:5.1}%  {}   ", bar(pct), detail());
            let _ = std::io::stdout().flush();
        } else {
            let decile = (pct / 10.0) as u64;
            if self.last_decile != Some(decile) {
                self.last_decile = Some(decile);
                println!("{}", line());
            }
        }
        std::thread::sleep(Duration::from_millis(if self.tty { 250 } else { 500 }));
    }

    /// Ends the bar's line (on a terminal) before the final message.
    fn finish(&self) {
        if self.tty {
            println!();
        }
    }
}
