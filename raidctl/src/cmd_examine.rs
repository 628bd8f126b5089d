//! `raidctl examine`: what `mdadm --examine` shows, plus our extension block.

use raidcore::inspect::examine_device;
use raidcore::{Error, Result};

use crate::cli::ExamineArgs;

pub fn run(args: ExamineArgs) -> Result<i32> {
    let mut reports = Vec::new();
    let mut missing = Vec::new();
    for path in &args.devices {
        match examine_device(path)? {
            Some(report) => reports.push(report),
            None => missing.push(path.clone()),
        }
    }
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&reports).map_err(|e| Error::invalid(e.to_string()))?
        );
    } else {
        for (i, r) in reports.iter().enumerate() {
            if i > 0 {
                println!();
            }
            print!("{r}");
        }
    }
    if let Some(first) = missing.first() {
        for m in &missing[1..] {
            eprintln!("raidctl: no md superblock on {m}");
        }
        return Err(Error::new(
            raidcore::ErrorKind::NotFound,
            format!("no md superblock on {first}"),
        ));
    }
    Ok(0)
}
