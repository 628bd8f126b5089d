//! `raidctl cache`: show or change the write-back cache policy of a running array.

use std::time::Duration;

use raidcore::cache::CacheReport;
use raidcore::daemon::control::ControlRequest;
use raidcore::daemon::rundir::RunDir;
use raidcore::{Error, ErrorKind, Result};

use crate::cli::CacheArgs;
use raidcore::size::format_size;

use crate::cmd_status::call;

pub fn run(args: CacheArgs, run_dir: Option<&str>) -> Result<i32> {
    let run_dir = RunDir::resolve(run_dir);
    let changing = args.mode.is_some() || args.battery.is_some() || args.battery_file.is_some();
    let req = if changing {
        ControlRequest::Cache {
            mode: args.mode.clone(),
            battery: args.battery.clone(),
            battery_file: args.battery_file.clone(),
        }
    } else {
        ControlRequest::Status
    };
    // A change to write-through drains the cache first: allow for a slow array.
    let answer = call(&run_dir, &args.name, &req, Duration::from_secs(600))?;
    let cache = answer
        .status
        .and_then(|s| s.cache)
        .ok_or_else(|| Error::new(ErrorKind::Io, "the daemon did not report its cache"))?;
    if args.json {
        let text =
            serde_json::to_string_pretty(&cache).map_err(|e| Error::invalid(e.to_string()))?;
        println!("{text}");
    } else {
        print_cache(&args.name, &cache);
    }
    Ok(0)
}

/// The cache lines of `status` and `cache`.
pub fn print_cache(name: &str, c: &CacheReport) {
    println!(
        "  cache: {} (configured {}): {}",
        c.effective, c.mode, c.reason
    );
    let battery = match &c.battery_file {
        Some(f) => format!("{} (from {f})", c.battery),
        None => c.battery.clone(),
    };
    println!(
        "  cache: battery {battery}, {} dirty, {} cached of {}, hit ratio {}, destaging {}/s",
        format_size(c.dirty_bytes),
        format_size(c.cached_bytes),
        format_size(c.capacity_bytes),
        c.hit_ratio
            .map_or("-".to_string(), |r| format!("{:.1}%", r * 100.0)),
        format_size(c.destage_bytes_per_sec as u64)
    );
    if c.cached_block_writes > 0 {
        println!(
            "  cache: {} blocks written into the cache, {} destaged; {} writes found it full",
            c.cached_block_writes,
            format_size(c.destaged_bytes),
            c.writes_through_full
        );
    }
    let _ = name;
}
