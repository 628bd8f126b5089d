//! The simulator: seeded, reproducible runs of the whole stack below the frontends (write-back
//! cache + engine + rebuild + replace + check + bitmap daemon) on simulated members with
//! volatile write caches, with random member failures, read errors, spares, replacements,
//! checks and battery flips, ended by a power cut at a random step, then reassembled by the
//! daemon's rules and checked (the way TigerBeetle's VOPR and ZFS's ztest work).
//!
//! What every run checks:
//! - while running: every read returns, for each 512-byte sector, a version of it that was
//!   written there (self-checking sectors: block, sector, generation, checksum), never older
//!   than the last version acknowledged before the read began;
//! - after the power cut and reassembly: every sector holds the version acknowledged before
//!   the last acknowledged FLUSH (or with FUA), or a later one that was written; nothing else;
//! - after the array is complete and resynced: parity and copies agree on the members.
//!
//! `RAIDCTL_SIM_SEED=N` runs one seed (a failure prints the seed to use);
//! `RAIDCTL_SIM_SEEDS=N` runs seeds 0..N (default 16, what `ci/test` runs; `RAIDCTL_SIM_FIRST`
//! moves the start);
//! `RAIDCTL_SIM_MINUTES=M` keeps running new seeds for M minutes (the long mode).

pub(crate) use std::cell::{Cell, RefCell};
pub(crate) use std::rc::Rc;
pub(crate) use std::time::{Duration, Instant};

pub(crate) use rand::rngs::SmallRng;
pub(crate) use rand::{Rng, SeedableRng};

pub(crate) use raidcore::buf::BufSlice;
pub(crate) use raidcore::cache::{Battery, Cache, CacheConfig};
pub(crate) use raidcore::control::AssembleOptions;
pub(crate) use raidcore::layout::LayoutKind;
pub(crate) use raidcore::member::{FaultKind, FaultRule, MemMember, Member};
pub(crate) use raidcore::raid::{Array, SlotState};
pub(crate) use raidcore::reactor::{block_on, sleep, spawn};
pub(crate) use raidcore::volume::Volume;

mod chaos;
#[path = "../common/mod.rs"]
mod common;
mod live;
mod model;
mod recovery;

pub(crate) use chaos::*;
pub(crate) use live::*;
pub(crate) use model::*;
pub(crate) use recovery::*;

pub(crate) const MEMBER: u64 = 6 << 20;
pub(crate) const BLOCK: u64 = 4096;
pub(crate) const SECTOR: usize = 512;
/// The part of the array the clients use (keeps runs short while rows are shared a lot).
pub(crate) const WORKING_SET: u64 = 2 << 20;
pub(crate) const CLIENTS: u64 = 3;

/// What the run is built on, drawn from the seed.
#[derive(Debug)]
pub(crate) struct Setup {
    pub(crate) kind: LayoutKind,
    pub(crate) members: usize,
    pub(crate) spares: usize,
    pub(crate) write_back: bool,
}

pub(crate) fn setup(rng: &mut SmallRng) -> Setup {
    let (kind, members) = match rng.gen_range(0..6) {
        0 => (LayoutKind::Raid1, rng.gen_range(2..4)),
        1 | 2 => (common::raid5(), rng.gen_range(3..6)),
        3 => (common::raid6(), rng.gen_range(4..7)),
        4 => {
            let parity = rng.gen_range(1..=3);
            (
                LayoutKind::Ec { parity },
                rng.gen_range(parity + 2..parity + 4),
            )
        }
        _ => (common::raid10(), 4),
    };
    Setup {
        kind,
        members,
        spares: rng.gen_range(0..3),
        write_back: rng.gen_bool(0.5),
    }
}

/// Anything a run found wrong, with the seed to reproduce it.
pub(crate) type Outcome = Result<Report, String>;

#[derive(Default, Debug)]
pub(crate) struct Report {
    pub(crate) ops: u64,
    pub(crate) reads_checked: u64,
    pub(crate) faults: u64,
    pub(crate) forced: bool,
}

#[test]
fn simulator() {
    let seeds: Vec<u64> = if let Ok(s) = std::env::var("RAIDCTL_SIM_SEED") {
        vec![s.parse().expect("RAIDCTL_SIM_SEED is a number")]
    } else {
        let n = common::env_u64("RAIDCTL_SIM_SEEDS", 16);
        let first = common::env_u64("RAIDCTL_SIM_FIRST", 0);
        (first..first + n).collect()
    };
    let minutes = common::env_u64("RAIDCTL_SIM_MINUTES", 0);
    let deadline = Instant::now() + Duration::from_secs(minutes * 60);
    let mut total = Report::default();
    let mut runs = 0;
    let mut seed_iter = seeds.clone().into_iter();
    let mut next_seed = seeds.last().map_or(0, |s| s + 1);
    loop {
        let seed = match seed_iter.next() {
            Some(s) => s,
            None if Instant::now() < deadline => {
                next_seed += 1;
                next_seed - 1
            }
            None => break,
        };
        TRACE.with(|t| t.borrow_mut().clear());
        match run(seed) {
            Ok(r) => {
                total.ops += r.ops;
                total.reads_checked += r.reads_checked;
                total.faults += r.faults;
                total.forced |= r.forced;
                runs += 1;
            }
            Err(e) => {
                let trace = save_trace(seed);
                panic!("simulator seed {seed} failed (rerun with RAIDCTL_SIM_SEED={seed}; its steps are in {trace}): {e}")
            }
        }
    }
    eprintln!(
        "simulator: {runs} seeds, {} operations, {} reads checked, {} faults injected",
        total.ops, total.reads_checked, total.faults
    );
}

pub(crate) fn run(seed: u64) -> Outcome {
    let mut rng = SmallRng::seed_from_u64(seed);
    let setup = setup(&mut rng);
    trace(|| format!("setup: {setup:?}"));
    let cut_seed = rng.gen::<u64>();
    let (sims, model, mut report) =
        block_on(live_phase(seed, setup)).map_err(|e| format!("reactor: {e}"))??;
    // The machine loses power: each member keeps a random part of what it had not flushed.
    for (i, s) in sims.iter().enumerate() {
        s.power_cut(cut_seed.wrapping_add(i as u64));
    }
    let forced = block_on(recovery_phase(sims, model)).map_err(|e| format!("reactor: {e}"))??;
    report.forced = forced;
    Ok(report)
}

thread_local! {
    /// The current seed's steps, written out when it fails (a seed that fails only under
    /// some timing may pass when rerun with RAIDCTL_SIM_TRACE).
    static TRACE: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
}

/// Records a step; with RAIDCTL_SIM_TRACE set, prints it on stderr as it happens.
pub(crate) fn trace(line: impl FnOnce() -> String) {
    let line = line();
    if std::env::var_os("RAIDCTL_SIM_TRACE").is_some() {
        eprintln!("{line}");
    }
    TRACE.with(|t| t.borrow_mut().push(line));
}

/// Writes the failed seed's steps to a file under the target directory; returns its path.
pub(crate) fn save_trace(seed: u64) -> String {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    let path = dir.join(format!("sim-trace-{seed}.log"));
    let text = TRACE.with(|t| t.borrow().join("\n"));
    match std::fs::write(&path, text) {
        Ok(()) => path.display().to_string(),
        Err(e) => format!("(not written: {e})"),
    }
}

pub(crate) fn pick(rng: &mut SmallRng, from: &[String]) -> Option<String> {
    (!from.is_empty()).then(|| from[rng.gen_range(0..from.len())].clone())
}
