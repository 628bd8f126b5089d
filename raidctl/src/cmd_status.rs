//! `raidctl status` and `raidctl stop`: clients of the control socket.

use std::io::IsTerminal;
use std::time::Duration;

use raidcore::daemon::control::{request, ControlRequest, ControlResponse};
use raidcore::daemon::rundir::RunDir;
use raidcore::daemon::status::{IoReport, MemberReport, StatusReport};
use raidcore::size::format_size;
use raidcore::{Error, ErrorKind, Result};

use crate::cli::{StatusArgs, StopArgs};

pub fn run(args: StatusArgs, run_dir: Option<&str>) -> Result<i32> {
    let run_dir = RunDir::resolve(run_dir);
    loop {
        let reports = collect(&args, &run_dir)?;
        if args.watch && std::io::stdout().is_terminal() {
            print!("\x1b[2J\x1b[H");
        }
        if args.json {
            let text = match (&args.name, reports.as_slice()) {
                (Some(_), [one]) => serde_json::to_string_pretty(one),
                _ => serde_json::to_string_pretty(&reports),
            };
            println!("{}", text.map_err(|e| Error::invalid(e.to_string()))?);
        } else if reports.is_empty() {
            println!(
                "no arrays are running (run directory {})",
                run_dir.dir.display()
            );
        } else {
            for (i, r) in reports.iter().enumerate() {
                if i > 0 {
                    println!();
                }
                print_report(r);
            }
        }
        if !args.watch {
            return Ok(0);
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

fn collect(args: &StatusArgs, run_dir: &RunDir) -> Result<Vec<StatusReport>> {
    let names = match &args.name {
        Some(n) => vec![n.clone()],
        None => run_dir.arrays(),
    };
    let mut out = Vec::new();
    for name in names {
        match query(run_dir, &name) {
            Ok(r) => out.push(r),
            Err(e) if args.name.is_some() => return Err(e),
            Err(e) => eprintln!("raidctl: {e}"),
        }
    }
    Ok(out)
}

/// Sends one request to a running array's daemon. Not running, unreachable, or refused: one
/// line saying so (a refusal is the daemon's own message).
pub fn call(
    run_dir: &RunDir,
    name: &str,
    req: &ControlRequest,
    timeout: Duration,
) -> Result<ControlResponse> {
    if run_dir.running_pid(name).is_none() {
        return Err(not_running(run_dir, name));
    }
    let answer = request(&run_dir.ctl(name), req, timeout)?;
    if !answer.ok {
        let why = answer
            .error
            .unwrap_or_else(|| format!("array {name}: the daemon refused the request"));
        return Err(Error::new(ErrorKind::Io, why));
    }
    Ok(answer)
}

pub fn query(run_dir: &RunDir, name: &str) -> Result<StatusReport> {
    call(
        run_dir,
        name,
        &ControlRequest::Status,
        Duration::from_secs(10),
    )?
    .status
    .ok_or_else(|| {
        Error::new(
            ErrorKind::Io,
            format!("array {name}: empty answer from the daemon"),
        )
    })
}

pub fn not_running(run_dir: &RunDir, name: &str) -> Error {
    Error::new(
        ErrorKind::NotFound,
        format!("array {name} is not running (no daemon in {}): start it with raidctl assemble {name} DEV...", run_dir.dir.display()),
    )
}

pub fn stop(args: StopArgs, run_dir: Option<&str>) -> Result<i32> {
    let run_dir = RunDir::resolve(run_dir);
    call(
        &run_dir,
        &args.name,
        &ControlRequest::Stop,
        Duration::from_secs(120),
    )?;
    // The daemon answers after the array is clean; wait for it to let go of its lock.
    for _ in 0..200 {
        if run_dir.running_pid(&args.name).is_none() {
            break;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    println!("array {} stopped: flushed and marked clean", args.name);
    Ok(0)
}

pub fn print_report(r: &StatusReport) {
    print_heading(r);
    for m in &r.members {
        print_member(m);
    }
    if r.missing != "none" {
        println!("  missing: {}", r.missing);
    }
    print_io(&r.io);
    if let Some(c) = &r.cache {
        crate::cmd_cache::print_cache(&r.name, c);
    }
    if let Some(b) = &r.bitmap {
        println!(
            "  bitmap: {} of {} chunks dirty ({} per bit, events_cleared {})",
            b.dirty_bits,
            b.bits,
            format_size(b.chunk_bytes),
            b.events_cleared
        );
    }
    print_service(r);
}

/// The array's shape, size and state, then its identity and sync state.
fn print_heading(r: &StatusReport) {
    println!(
        "{}: {} {}{}, {} ({} bytes), state {}{}",
        r.name,
        r.level,
        r.layout,
        if r.chunk_bytes > 0 {
            format!(", chunk {}", format_size(r.chunk_bytes))
        } else {
            String::new()
        },
        format_size(r.size_bytes),
        r.size_bytes,
        r.state,
        if r.read_only { ", read-only" } else { "" }
    );
    if !r.placement.is_empty() {
        println!(
            "  placement by row (slot 0 first): {}",
            r.placement.join(" | ")
        );
    }
    println!(
        "  uuid {}  events {}  {}",
        r.uuid,
        r.events,
        if r.in_sync {
            "in sync"
        } else {
            "resync pending"
        }
    );
}

/// One member line (slot or role, path, state), and a summary of its bad blocks if any.
fn print_member(m: &MemberReport) {
    let slot = m.slot.map_or(m.role.clone(), |s| format!("slot {s}"));
    println!(
        "  {:<8} {:<40} {}",
        slot,
        m.path.as_deref().unwrap_or("-"),
        m.state
    );
    if !m.bad_blocks.is_empty() {
        let total: u64 = m.bad_blocks.iter().map(|b| b.bytes).sum();
        let first = &m.bad_blocks[0];
        println!(
            "           bad blocks: {} in {} range(s), first at data offset {} (reads there fail with EIO until written)",
            format_size(total),
            m.bad_blocks.len(),
            first.offset
        );
    }
}

fn print_io(io: &IoReport) {
    println!(
        "  io: {} reads ({}), {} writes ({}), {} flushes, {} trims, {} degraded reads, {} errors",
        io.reads,
        format_size(io.read_bytes),
        io.writes,
        format_size(io.write_bytes),
        io.flushes,
        io.trims,
        io.degraded_reads,
        io.errors
    );
}

/// How the array is served: the daemon (when there is one), its exports and attachments.
fn print_service(r: &StatusReport) {
    if r.pid != 0 {
        println!(
            "  daemon pid {}, {} connection(s), {} since start",
            r.pid, r.connections, r.total_connections
        );
    }
    for u in &r.export_uris {
        println!("  export {u}");
    }
    for a in &r.attachments {
        println!("  attached as {}", a.describe());
    }
}
