//! `raidctl monitor`: follow the events of running arrays.
//!
//! Each array's daemon streams its events on a control connection; one thread per array reads
//! them and hands them to a single printer, which keeps the order of each array's events and
//! runs `--program PATH EVENT ARRAY [MEMBER]` for each, waiting for it, like
//! `mdadm --monitor --program`.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::sync::mpsc;

use raidcore::daemon::rundir::RunDir;
use raidcore::{Error, ErrorKind, Result};

use crate::cli::MonitorArgs;
use crate::cmd_status::not_running;

pub fn run(args: MonitorArgs, run_dir: Option<&str>) -> Result<i32> {
    let run_dir = RunDir::resolve(run_dir);
    let names = arrays_to_watch(&run_dir, args.name.as_deref())?;
    let (tx, rx) = mpsc::channel::<(String, serde_json::Value)>();
    for name in names {
        subscribe(&run_dir, name, tx.clone())?;
    }
    drop(tx);
    for (array, event) in rx {
        let kind = event["event"].as_str().unwrap_or("?").to_string();
        let member = event["member"].as_str().map(str::to_string);
        if args.json {
            println!("{event}");
        } else {
            print_event(&array, &kind, member.as_deref(), &event);
        }
        let _ = std::io::stdout().flush();
        if let Some(program) = &args.program {
            run_program(program, &kind, &array, member.as_deref());
        }
    }
    Ok(0)
}

/// The array named, which must be running, or else every running array (at least one).
fn arrays_to_watch(run_dir: &RunDir, name: Option<&str>) -> Result<Vec<String>> {
    let names = match name {
        Some(n) => {
            if run_dir.running_pid(n).is_none() {
                return Err(not_running(run_dir, n));
            }
            vec![n.to_string()]
        }
        None => run_dir.arrays(),
    };
    if names.is_empty() {
        return Err(Error::new(
            ErrorKind::NotFound,
            format!(
                "no arrays are running (run directory {})",
                run_dir.dir.display()
            ),
        ));
    }
    Ok(names)
}

/// Asks the daemon of `name` for its events, and starts a thread that forwards them to `tx`.
fn subscribe(
    run_dir: &RunDir,
    name: String,
    tx: mpsc::Sender<(String, serde_json::Value)>,
) -> Result<()> {
    let stream = UnixStream::connect(run_dir.ctl(&name))
        .map_err(|e| Error::io(format!("cannot reach the daemon of {name}"), e))?;
    (&stream)
        .write_all(b"{\"cmd\":\"monitor\"}\n")
        .map_err(|e| Error::io(&name, e))?;
    std::thread::spawn(move || forward_events(stream, name, tx));
    Ok(())
}

/// Reads one daemon's event stream into the channel, ending with a MonitorEnded event when
/// the daemon goes away.
fn forward_events(stream: UnixStream, name: String, tx: mpsc::Sender<(String, serde_json::Value)>) {
    let mut lines = BufReader::new(stream).lines();
    // The daemon's hello comes once the subscription is in place: from here on no
    // event is missed, which scripts (and tests) can wait for on stderr.
    if lines.next().is_some() {
        eprintln!("raidctl: monitoring {name}");
    }
    for line in lines.map_while(|l| l.ok()) {
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
            if tx.send((name.clone(), v)).is_err() {
                return;
            }
        }
    }
    // The daemon stopped: say so once.
    let _ = tx.send((
        name.clone(),
        serde_json::json!({"event": "MonitorEnded", "array": name}),
    ));
}

/// One line per event: `ARRAY: EVENT [MEMBER] (key=value, ...)`, the details sorted.
fn print_event(array: &str, kind: &str, member: Option<&str>, event: &serde_json::Value) {
    let mut details: Vec<String> = event
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(k, _)| !matches!(k.as_str(), "event" | "array" | "member"))
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    details.sort();
    println!(
        "{array}: {kind}{}{}",
        member.map(|m| format!(" {m}")).unwrap_or_default(),
        if details.is_empty() {
            String::new()
        } else {
            format!(" ({})", details.join(", "))
        }
    );
}

/// Runs `--program EVENT ARRAY [MEMBER]` and waits for it; a failure to start it is reported
/// and monitoring goes on.
fn run_program(program: &str, kind: &str, array: &str, member: Option<&str>) {
    let mut cmd = std::process::Command::new(program);
    cmd.arg(kind).arg(array);
    if let Some(m) = member {
        cmd.arg(m);
    }
    if let Err(e) = cmd.status() {
        eprintln!("raidctl: cannot run {program}: {e}");
    }
}
