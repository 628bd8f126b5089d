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
    let names = match &args.name {
        Some(n) => {
            if run_dir.running_pid(n).is_none() {
                return Err(not_running(&run_dir, n));
            }
            vec![n.clone()]
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
    let (tx, rx) = mpsc::channel::<(String, serde_json::Value)>();
    for name in names {
        let stream = UnixStream::connect(run_dir.ctl(&name))
            .map_err(|e| Error::io(format!("cannot reach the daemon of {name}"), e))?;
        (&stream)
            .write_all(b"{\"cmd\":\"monitor\"}\n")
            .map_err(|e| Error::io(&name, e))?;
        let tx = tx.clone();
        std::thread::spawn(move || {
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
        });
    }
    drop(tx);
    for (array, event) in rx {
        let kind = event["event"].as_str().unwrap_or("?").to_string();
        let member = event["member"].as_str().map(str::to_string);
        if args.json {
            println!("{event}");
        } else {
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
                member.as_ref().map(|m| format!(" {m}")).unwrap_or_default(),
                if details.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", details.join(", "))
                }
            );
        }
        let _ = std::io::stdout().flush();
        if let Some(program) = &args.program {
            let mut cmd = std::process::Command::new(program);
            cmd.arg(&kind).arg(&array);
            if let Some(m) = &member {
                cmd.arg(m);
            }
            if let Err(e) = cmd.status() {
                eprintln!("raidctl: cannot run {program}: {e}");
            }
        }
    }
    Ok(0)
}
