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

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use raidcore::buf::BufSlice;
use raidcore::cache::{Battery, Cache, CacheConfig};
use raidcore::control::AssembleOptions;
use raidcore::layout::{LayoutKind, Level};
use raidcore::member::{FaultKind, FaultRule, MemMember, Member};
use raidcore::raid::{Array, SlotState};
use raidcore::reactor::{block_on, sleep, spawn};

mod common;

const MEMBER: u64 = 6 << 20;
const BLOCK: u64 = 4096;
const SECTOR: usize = 512;
/// The part of the array the clients use (keeps runs short while rows are shared a lot).
const WORKING_SET: u64 = 2 << 20;
const CLIENTS: u64 = 3;

/// The version history of every sector, shared by the clients and the checker.
struct Model {
    /// Per sector: generations in the order they were issued (0 = zeroes, as created).
    issued: Vec<Vec<u64>>,
    /// Per sector: index into `issued` of the newest version acknowledged.
    acked: Vec<usize>,
    /// Per sector: index of the newest version known durable (acknowledged before an
    /// acknowledged flush began, or acknowledged with FUA).
    durable: Vec<usize>,
    next_gen: u64,
    /// Reads that were checked, for the report.
    reads_checked: u64,
}

impl Model {
    /// What the final check needs (so no borrow is held across its awaits).
    fn clone_for_check(&self) -> Model {
        Model {
            issued: self.issued.clone(),
            acked: self.acked.clone(),
            durable: self.durable.clone(),
            next_gen: self.next_gen,
            reads_checked: self.reads_checked,
        }
    }

    fn new(sectors: usize) -> Model {
        Model {
            issued: vec![vec![0]; sectors],
            acked: vec![0; sectors],
            durable: vec![0; sectors],
            next_gen: 1,
            reads_checked: 0,
        }
    }
}

/// Sector `s` of version `gen`: words of (s, gen, checksum), so any mix-up is detected.
fn sector_bytes(s: u64, gen: u64, out: &mut [u8]) {
    if gen == 0 {
        out.fill(0);
        return;
    }
    let sum = s.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ gen.wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
    for (i, w) in out.chunks_exact_mut(8).enumerate() {
        let v = match i % 3 {
            0 => s,
            1 => gen,
            _ => sum ^ i as u64,
        };
        w.copy_from_slice(&v.to_le_bytes());
    }
}

/// The generation sector `s` holds, or None if the bytes are no version of it.
fn decode(s: u64, bytes: &[u8]) -> Option<u64> {
    if bytes.iter().all(|&b| b == 0) {
        return Some(0);
    }
    let gen = u64::from_le_bytes(bytes[8..16].try_into().unwrap());
    let mut want = vec![0u8; SECTOR];
    sector_bytes(s, gen, &mut want);
    (want == bytes).then_some(gen)
}

/// What the run is built on, drawn from the seed.
#[derive(Debug)]
struct Setup {
    kind: LayoutKind,
    members: usize,
    spares: usize,
    write_back: bool,
}

fn setup(rng: &mut SmallRng) -> Setup {
    let (kind, members) = match rng.gen_range(0..4) {
        0 => (LayoutKind::Raid1, rng.gen_range(2..4)),
        1 | 2 => (common::raid5(), rng.gen_range(3..6)),
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
type Outcome = Result<Report, String>;

#[derive(Default, Debug)]
struct Report {
    ops: u64,
    reads_checked: u64,
    faults: u64,
    forced: bool,
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

fn run(seed: u64) -> Outcome {
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

/// Clients and chaos until the power cut; returns the members and the model at that moment.
async fn live_phase(
    seed: u64,
    setup: Setup,
) -> Result<(Vec<Rc<MemMember>>, Rc<RefCell<Model>>, Report), String> {
    let sims = common::sim_members(setup.members, setup.spares, MEMBER, true);
    let r = common::rig_on(setup.kind.clone(), sims, setup.members, true).await;
    r.control
        .subscribe(|e| trace(|| format!("event: {} {e:?}", e.name())));
    r.control
        .set_checkpoint_every(256 << 10, Duration::from_millis(20));
    // Rebuilds, copies and checks make progress under the clients' load.
    r.control.set_speed_limits(Some(100_000), Some(400_000));
    let cache = Cache::new(
        r.array.clone(),
        CacheConfig {
            capacity_bytes: 64 * BLOCK,
            max_age: Duration::from_millis(30),
            ..CacheConfig::default()
        },
        r.control.clone(),
    );
    spawn(cache.clone().run_destager());
    if setup.write_back {
        cache
            .set_policy(None, Some(Battery::Present), None)
            .await
            .map_err(|e| e.to_string())?;
    }
    let sectors = (WORKING_SET.min(r.array.size_bytes()) / SECTOR as u64) as usize;
    let model = Rc::new(RefCell::new(Model::new(sectors)));
    let error: Rc<RefCell<Option<String>>> = Rc::new(RefCell::new(None));
    let ops = Rc::new(Cell::new(0u64));
    let faults = Rc::new(Cell::new(0u64));
    let mut rng = SmallRng::seed_from_u64(seed ^ 0x5EED);
    // The power cut comes after a random number of client operations.
    let cut_at = rng.gen_range(50..1200u64);
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            spawn(client(
                c,
                rng.gen(),
                cache.clone(),
                model.clone(),
                error.clone(),
                ops.clone(),
                cut_at,
            ))
        })
        .collect();
    let replacement = Rc::new(MemMember::new("replacement", MEMBER, seed).with_volatile_cache());
    let data_offset = r.array.slots()[0].disk().map_or(0, |d| d.data_offset);
    let chaos = spawn(chaos(
        rng.gen(),
        Chaos {
            array: r.array.clone(),
            control: r.control.clone(),
            cache: cache.clone(),
            faults: r.faults.clone(),
            data_offset,
            replacement: replacement.clone(),
        },
        ops.clone(),
        faults.clone(),
        cut_at,
    ));
    for c in clients {
        c.await;
    }
    // The clients stop at the cut or at the first error; chaos with them.
    ops.set(u64::MAX);
    let replaced = chaos.await;
    if let Some(e) = error.borrow_mut().take() {
        return Err(e);
    }
    let reads_checked = model.borrow().reads_checked;
    let mut sims = r.sims.clone();
    if replaced {
        sims.push(replacement);
    }
    Ok((
        sims,
        model,
        Report {
            ops: cut_at,
            reads_checked,
            faults: faults.get(),
            forced: false,
        },
    ))
}

/// One client: reads (checked), writes (some FUA), trims, zeroes and flushes on its own
/// blocks (block % CLIENTS == c), so each sector's versions have one order.
async fn client(
    c: u64,
    seed: u64,
    cache: Rc<Cache>,
    model: Rc<RefCell<Model>>,
    error: Rc<RefCell<Option<String>>>,
    ops: Rc<Cell<u64>>,
    cut_at: u64,
) {
    let mut rng = SmallRng::seed_from_u64(seed);
    let blocks = WORKING_SET.min(cache.size_bytes()) / BLOCK;
    while ops.get() < cut_at && error.borrow().is_none() {
        ops.set(ops.get() + 1);
        let first = rng.gen_range(0..blocks / CLIENTS) * CLIENTS + c;
        let at = first * BLOCK;
        let op = rng.gen_range(0..100);
        trace(|| format!("client {c}: op {op} at {at}"));
        let result = match op {
            0..=39 => read_checked(&cache, &model, at, BLOCK).await,
            40..=79 => write_gen(&cache, &model, at, rng.gen_bool(0.2), &mut rng).await,
            80..=84 => zero(&cache, &model, at, rng.gen_bool(0.5)).await,
            _ => flush(&cache, &model).await,
        };
        trace(|| format!("client {c}: op {op} done"));
        if rng.gen_bool(0.1) {
            // Let background work (destage, rebuild, copy, check) interleave.
            sleep(Duration::from_micros(rng.gen_range(100..2000))).await;
        }
        if let Err(e) = result {
            *error.borrow_mut() = Some(e);
        }
    }
}

/// Sectors of `at..at+len`.
fn sector_range(at: u64, len: u64) -> std::ops::Range<usize> {
    (at / SECTOR as u64) as usize..((at + len) / SECTOR as u64) as usize
}

async fn read_checked(
    cache: &Cache,
    model: &RefCell<Model>,
    at: u64,
    len: u64,
) -> Result<(), String> {
    let floor: Vec<usize> = sector_range(at, len)
        .map(|s| model.borrow().acked[s])
        .collect();
    let buf = BufSlice::zeroed(len as usize);
    let complete_before = complete(cache.array());
    if let Err(e) = cache.read(at, buf.clone()).await {
        return allowed_error(cache.array(), complete_before, || {
            format!("read at {at}: {e}")
        });
    }
    let bytes = buf.to_vec();
    let mut m = model.borrow_mut();
    m.reads_checked += 1;
    for (k, s) in sector_range(at, len).enumerate() {
        let got = decode(s as u64, &bytes[k * SECTOR..(k + 1) * SECTOR])
            .ok_or_else(|| format!("read at {at}: sector {s} holds bytes never written there"))?;
        // The newest instance: zeroes may have been issued more than once.
        let pos = m.issued[s].iter().rposition(|&g| g == got).ok_or_else(|| {
            format!("read at {at}: sector {s} holds generation {got}, never issued there")
        })?;
        if pos < floor[k] {
            return Err(format!(
                "read at {at}: sector {s} went back to generation {got} (acknowledged: {})",
                m.issued[s][floor[k]]
            ));
        }
    }
    Ok(())
}

async fn write_gen(
    cache: &Cache,
    model: &RefCell<Model>,
    at: u64,
    fua: bool,
    rng: &mut SmallRng,
) -> Result<(), String> {
    let _ = rng;
    let gen = {
        let mut m = model.borrow_mut();
        let g = m.next_gen;
        m.next_gen += 1;
        for s in sector_range(at, BLOCK) {
            m.issued[s].push(g);
        }
        g
    };
    let buf = BufSlice::filled(BLOCK as usize, |b| {
        for (k, s) in sector_range(at, BLOCK).enumerate() {
            sector_bytes(s as u64, gen, &mut b[k * SECTOR..(k + 1) * SECTOR]);
        }
    });
    let complete_before = complete(cache.array());
    match cache.write(at, buf, fua).await {
        Ok(()) => {
            acknowledge(model, at, gen, fua);
            Ok(())
        }
        Err(e) => allowed_error(cache.array(), complete_before, || {
            format!("write at {at}: {e}")
        }),
    }
}

async fn zero(cache: &Cache, model: &RefCell<Model>, at: u64, discard: bool) -> Result<(), String> {
    {
        let mut m = model.borrow_mut();
        for s in sector_range(at, BLOCK) {
            m.issued[s].push(0);
        }
    }
    let complete_before = complete(cache.array());
    let r = if discard {
        cache.trim(at, BLOCK).await
    } else {
        cache.write_zeroes(at, BLOCK).await
    };
    match r {
        Ok(()) => {
            acknowledge(model, at, 0, false);
            Ok(())
        }
        Err(e) => allowed_error(cache.array(), complete_before, || {
            format!("zeroing at {at}: {e}")
        }),
    }
}

/// Records that the version `gen` of the block at `at` was acknowledged.
fn acknowledge(model: &RefCell<Model>, at: u64, gen: u64, fua: bool) {
    let mut m = model.borrow_mut();
    for s in sector_range(at, BLOCK) {
        // The newest issued instance of `gen` (zeroes may have been issued several times).
        let pos = m.issued[s].iter().rposition(|&g| g == gen).expect("issued");
        m.acked[s] = m.acked[s].max(pos);
        if fua {
            m.durable[s] = m.durable[s].max(pos);
        }
    }
}

async fn flush(cache: &Cache, model: &RefCell<Model>) -> Result<(), String> {
    // Everything acknowledged before the flush is sent must be durable once it is answered.
    let acked = model.borrow().acked.clone();
    let complete_before = complete(cache.array());
    match cache.flush().await {
        Ok(()) => {
            let mut m = model.borrow_mut();
            for (d, a) in m.durable.iter_mut().zip(acked) {
                *d = (*d).max(a);
            }
            Ok(())
        }
        Err(e) => allowed_error(cache.array(), complete_before, || format!("flush: {e}")),
    }
}

fn complete(array: &Array) -> bool {
    array.slots().iter().all(|s| s.is_active())
}

/// An error is honest when the array failed, or was not complete (a read error on a survivor
/// of a degraded array cannot be corrected: md answers EIO too). On a complete array every
/// single read error must be corrected, so an error there is a bug.
fn allowed_error(
    array: &Array,
    complete_before: bool,
    what: impl FnOnce() -> String,
) -> Result<(), String> {
    if array.is_failed() || !complete_before || !complete(array) {
        Ok(())
    } else {
        Err(format!("{} (on a complete array)", what()))
    }
}

/// What the chaos task acts on.
struct Chaos {
    array: Rc<Array>,
    control: Rc<raidcore::control::Controller>,
    cache: Rc<Cache>,
    faults: Vec<raidcore::member::FaultHandle>,
    data_offset: u64,
    /// The device a `replace` brings in (one per run).
    replacement: Rc<MemMember>,
}

/// Member failures, pulled disks, read errors, slow devices, spares, replacements, checks and
/// battery flips, at random moments while the clients run. Failures that would take the last copy are refused (that
/// is the point of the redundancy floor). Returns whether the replacement device was used.
async fn chaos(
    seed: u64,
    x: Chaos,
    ops: Rc<Cell<u64>>,
    injected: Rc<Cell<u64>>,
    cut_at: u64,
) -> bool {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut replaced = false;
    while ops.get() < cut_at {
        // Act every few dozen client operations (time would let fast clients outrun it).
        let due = ops.get().saturating_add(rng.gen_range(5..40));
        while ops.get() < due.min(cut_at) {
            sleep(Duration::from_millis(1)).await;
        }
        if ops.get() >= cut_at || x.array.is_failed() {
            continue;
        }
        let slots = x.array.slots();
        let active: Vec<String> = slots
            .iter()
            .filter_map(|s| match s {
                SlotState::Active(d) => Some(d.member.path().to_string()),
                _ => None,
            })
            .collect();
        let action = rng.gen_range(0..100);
        trace(|| format!("chaos: {action} ({})", x.array.missing_description()));
        match action {
            0..=9 => {
                if let Some(p) = pick(&mut rng, &active) {
                    let _ = x.control.fail_member(&p, false).await;
                    injected.set(injected.get() + 1);
                }
            }
            10..=29 => {
                // A read error on one block of some device (a bad sector that remaps).
                let dev = rng.gen_range(0..x.faults.len());
                let at = x.data_offset + rng.gen_range(0..WORKING_SET / BLOCK) * BLOCK;
                x.faults[dev].inject(FaultRule {
                    kind: FaultKind::ReadError,
                    range: Some((at, BLOCK)),
                    count: Some(1),
                });
                injected.set(injected.get() + 1);
            }
            30..=34 if !replaced && slots.iter().all(|s| s.is_active()) => {
                if let Some(p) = pick(&mut rng, &active) {
                    let new: Rc<dyn Member> = x.replacement.clone();
                    replaced = x.control.replace_member(&p, new, false).await.is_ok();
                }
            }
            35..=39 => {
                let _ = x.control.start_scrub(rng.gen_bool(0.5));
            }
            45..=47 if slots.iter().all(|s| s.is_active()) => {
                // A disk is pulled (every later I/O fails with ENODEV), never a second one.
                let dev = rng.gen_range(0..x.faults.len());
                x.faults[dev].vanish();
                injected.set(injected.get() + 1);
            }
            48..=57 => {
                // A slow device for a while: completions come back in another order.
                let dev = rng.gen_range(0..x.faults.len());
                x.faults[dev].inject(FaultRule {
                    kind: FaultKind::Delay(Duration::from_millis(rng.gen_range(1..5))),
                    range: None,
                    count: Some(rng.gen_range(1..20)),
                });
                injected.set(injected.get() + 1);
            }
            40..=44 => {
                let battery = if rng.gen_bool(0.5) {
                    Battery::Present
                } else {
                    Battery::Absent
                };
                let _ = x.cache.set_policy(None, Some(battery), None).await;
            }
            _ => {}
        }
    }
    replaced
}

thread_local! {
    /// The current seed's steps, written out when it fails (a seed that fails only under
    /// some timing may pass when rerun with RAIDCTL_SIM_TRACE).
    static TRACE: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
}

/// Records a step; with RAIDCTL_SIM_TRACE set, prints it on stderr as it happens.
fn trace(line: impl FnOnce() -> String) {
    let line = line();
    if std::env::var_os("RAIDCTL_SIM_TRACE").is_some() {
        eprintln!("{line}");
    }
    TRACE.with(|t| t.borrow_mut().push(line));
}

/// Writes the failed seed's steps to a file under the target directory; returns its path.
fn save_trace(seed: u64) -> String {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    let path = dir.join(format!("sim-trace-{seed}.log"));
    let text = TRACE.with(|t| t.borrow().join("\n"));
    match std::fs::write(&path, text) {
        Ok(()) => path.display().to_string(),
        Err(e) => format!("(not written: {e})"),
    }
}

fn pick(rng: &mut SmallRng, from: &[String]) -> Option<String> {
    (!from.is_empty()).then(|| from[rng.gen_range(0..from.len())].clone())
}

/// Reassembles after the power cut by the daemon's rules, lets recovery finish, and checks
/// every sector against the model. Returns whether `--force` was needed (md's rule for a
/// dirty degraded RAID5).
async fn recovery_phase(
    sims: Vec<Rc<MemMember>>,
    model: Rc<RefCell<Model>>,
) -> Result<bool, String> {
    let run = AssembleOptions {
        run: true,
        ..Default::default()
    };
    let (assembled, forced) = match common::reassemble(&sims, &run).await {
        Ok(a) => (a, false),
        Err(e) if e.to_string().contains("--force") => {
            let force = AssembleOptions {
                run: true,
                force: true,
                ..Default::default()
            };
            let a = common::reassemble(&sims, &force)
                .await
                .map_err(|e| format!("assemble --force after the power cut: {e}"))?;
            (a, true)
        }
        Err(e) => return Err(format!("assemble after the power cut: {e}")),
    };
    let (array, control) = (assembled.array, assembled.control);
    trace(|| {
        format!(
            "reassembled (forced: {forced}): {}, sync offset {}, slots {:?}",
            array.missing_description(),
            array.sync_offset(),
            array
                .slots()
                .iter()
                .map(|s| s.disk().map(|d| d.member.path().to_string()))
                .collect::<Vec<_>>()
        )
    });
    // Slots not in sync at assembly: after a forced start their bytes are rebuilt from
    // parity that may be stale (known before the recovery below makes them active).
    let absent: Vec<usize> = (0..array.geometry().members())
        .filter(|&s| !array.slots()[s].is_active())
        .collect();
    // Rebuilds (with a spare) and the resync (once complete) run by themselves.
    for _ in 0..5000 {
        let busy = !control.rebuild_states().is_empty()
            || control.scrub_state().is_some_and(|s| s.running)
            || control.replacement_state().is_some();
        let complete = array.slots().iter().all(|s| s.is_active());
        if !busy && (!complete || array.sync_offset() == u64::MAX) {
            break;
        }
        sleep(Duration::from_millis(2)).await;
    }
    let m = model.borrow().clone_for_check();
    let len = (m.issued.len() * SECTOR) as u64;
    let (bytes, lost) = read_all(&array, len).await?;
    for s in 0..m.issued.len() {
        let at = (s * SECTOR) as u64;
        if lost.contains(&(at / BLOCK)) {
            continue; // recorded lost: EIO is the honest answer
        }
        if forced && write_hole_exposed(&array, at, &absent) {
            // md's write hole: a dirty degraded RAID5 started with --force may rebuild the
            // missing member's bytes from stale parity. That is why assembly refuses it.
            continue;
        }
        let Some(got) = decode(s as u64, &bytes[s * SECTOR..(s + 1) * SECTOR]) else {
            trace_sector(&array, &sims, &m, s);
            return Err(format!(
                "after the power cut sector {s} holds bytes never written there"
            ));
        };
        let pos = m.issued[s].iter().rposition(|&g| g == got).ok_or_else(|| {
            format!("after the power cut sector {s} holds generation {got}, never issued there")
        })?;
        if pos < m.durable[s] {
            trace_sector(&array, &sims, &m, s);
            return Err(format!(
                "after the power cut sector {s} went back to generation {got}; generation {} was durable (flushed or FUA)",
                m.issued[s][m.durable[s]]
            ));
        }
    }
    let complete = array.slots().iter().all(|s| s.is_active());
    if complete && array.sync_offset() == u64::MAX {
        check_redundancy(&array, &sims);
    }
    array.close().await.map_err(|e| format!("close: {e}"))?;
    Ok(forced)
}

/// Reads the first `len` bytes of the array; where that fails, block by block. A block may
/// fail only where the array has recorded its data lost (every place that could answer it is
/// absent or in a bad-block log): returns the bytes and those blocks.
async fn read_all(array: &Array, len: u64) -> Result<(Vec<u8>, Vec<u64>), String> {
    let buf = BufSlice::zeroed(len as usize);
    if array.read(0, buf.clone()).await.is_ok() {
        return Ok((buf.to_vec(), Vec::new()));
    }
    let mut lost = Vec::new();
    for block in 0..len / BLOCK {
        let part = buf.slice((block * BLOCK) as usize, BLOCK as usize);
        if let Err(e) = array.read(block * BLOCK, part).await {
            if !recorded_lost(array, block * BLOCK) {
                return Err(format!(
                    "read after the power cut at {}: {e}",
                    block * BLOCK
                ));
            }
            trace(|| format!("block {block} reads EIO: recorded lost"));
            lost.push(block);
        }
    }
    Ok((buf.to_vec(), lost))
}

/// Whether the array block at `at` has no place left that could answer it: each copy (RAID5:
/// the data member and another member) is absent or has the block in its bad-block log.
fn recorded_lost(array: &Array, at: u64) -> bool {
    let bad = array.bad_blocks();
    let slots = array.slots();
    let gone = |slot: usize, member_offset: u64| match slots[slot].disk() {
        Some(d) if slots[slot].is_active() => bad.iter().any(|(path, ranges)| {
            path == d.member.path()
                && ranges
                    .iter()
                    .any(|&(o, l)| o <= member_offset && member_offset + BLOCK <= o + l)
        }),
        _ => true,
    };
    let geo = array.geometry();
    if geo.level() == Level::Raid5 {
        let loc = geo.raid5_locate(at);
        let off = loc.member_offset / BLOCK * BLOCK;
        gone(loc.slot, off) && (0..geo.members()).any(|s| s != loc.slot && gone(s, off))
    } else {
        geo.map_copies(at)
            .iter()
            .all(|c| gone(c.slot, c.member_offset / BLOCK * BLOCK))
    }
}

/// Traces what each copy of sector `s` holds on the members, and its history in the model.
fn trace_sector(array: &Array, sims: &[Rc<MemMember>], m: &Model, s: usize) {
    let at = (s * SECTOR) as u64;
    trace(|| {
        let copies = array.geometry().map_copies(at);
        let slots = array.slots();
        copies
            .iter()
            .map(|c| {
                let d = slots[c.slot].disk().cloned();
                let held = d.and_then(|d| {
                    let sim = sims.iter().find(|m| m.path() == d.member.path())?;
                    let bytes = sim.store().lock().unwrap().clone();
                    let o = (d.data_offset + c.member_offset) as usize;
                    Some((
                        d.member.path().to_string(),
                        decode(s as u64, &bytes[o..o + SECTOR]),
                    ))
                });
                format!("slot {}: {held:?}", c.slot)
            })
            .collect::<Vec<_>>()
            .join("; ")
    });
    trace(|| {
        format!(
            "sector {s} issued {:?} acked {} durable {}",
            m.issued[s], m.acked[s], m.durable[s]
        )
    });
}

fn write_hole_exposed(array: &Array, at: u64, absent: &[usize]) -> bool {
    array.geometry().level() == Level::Raid5
        && absent.contains(&array.geometry().raid5_locate(at).slot)
}

fn check_redundancy(array: &Array, sims: &[Rc<MemMember>]) {
    // The replacement member, when one took a slot, is not among `sims`: skip then.
    let all_known = array.slots().iter().all(|s| {
        s.disk()
            .is_some_and(|d| sims.iter().any(|m| m.path() == d.member.path()))
    });
    if all_known {
        common::assert_redundancy_consistent(array, sims, "after recovery");
    }
}
