//! The engine against a model: random geometries of every level, thousands of random reads,
//! writes, trims, write-zeroes and flushes, many in flight at once (on simulated members that
//! complete out of order), compared with a plain byte array. Part-way through, a random member
//! fails; redundant levels must keep every byte, and after a clean close a fresh assembly must
//! read the same bytes. Without a failure, parity and mirror copies must be consistent on the
//! members themselves. Every failure message carries the seed that reproduces it.

use std::cell::RefCell;
use std::rc::Rc;

use raidcore::buf::BufSlice;
use raidcore::control::{assemble, AssembleOptions, CreateOptions};
use raidcore::layout::{
    LayoutKind, Level, Raid0Layout, Raid10Layout, Raid5Algorithm, Raid6Algorithm,
};
use raidcore::member::{FaultKind, MemMember};
use raidcore::raid::Array;
use raidcore::reactor::{block_on, spawn};

mod common;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

#[derive(Clone, Debug)]
struct Config {
    seed: u64,
    kind: LayoutKind,
    chunk: u64,
    sizes: Vec<u64>,
    /// Members that fail, and the batch at which each does (RAID6: up to two, k+m up to m).
    fail_at: Vec<(usize, usize)>,
}

fn random_config(seed: u64) -> Config {
    let mut rng = SmallRng::seed_from_u64(seed);
    let (kind, members) = match rng.gen_range(0..6) {
        0 => (
            LayoutKind::Raid0(Raid0Layout::Original),
            rng.gen_range(2..=5),
        ),
        1 => (LayoutKind::Raid1, rng.gen_range(2..=3)),
        2 => {
            let alg = Raid5Algorithm::ALL[rng.gen_range(0..6)];
            (LayoutKind::Raid5(alg), rng.gen_range(3..=6))
        }
        3 => {
            let alg = Raid6Algorithm::ALL[rng.gen_range(0..11)];
            (LayoutKind::Raid6(alg), rng.gen_range(4..=7))
        }
        4 => {
            let parity = rng.gen_range(1..=4);
            (
                LayoutKind::Ec { parity },
                rng.gen_range(parity + 2..=parity + 4),
            )
        }
        _ => {
            let members = rng.gen_range(2..=5);
            let options: Vec<Raid10Layout> =
                [(2, 1, false), (1, 2, false), (1, 2, true), (3, 1, false)]
                    .iter()
                    .map(|&(near, far, offset)| Raid10Layout { near, far, offset })
                    .filter(|l| l.copies() <= members)
                    .collect();
            (
                LayoutKind::Raid10(options[rng.gen_range(0..options.len())]),
                members,
            )
        }
    };
    let chunk = 4096u64 << rng.gen_range(0..5);
    let base = 1_200_000u64 + rng.gen_range(0..1_500_000u64);
    let sizes = (0..members)
        .map(|_| {
            let jitter = if matches!(kind, LayoutKind::Raid0(_)) {
                rng.gen_range(0..600_000u64)
            } else {
                0
            };
            ((base + jitter) / 4096) * 4096 + (3 << 20)
        })
        .collect();
    let mut fail_at = Vec::new();
    if rng.gen_bool(0.6) && !matches!(kind, LayoutKind::Raid0(_)) {
        fail_at.push((rng.gen_range(0..members), rng.gen_range(20..200)));
        // Up to as many members as the rows have parity chunks.
        let mut unfailed: Vec<usize> = (0..members).filter(|&m| m != fail_at[0].0).collect();
        while fail_at.len() < kind.parities() && rng.gen_bool(0.7) {
            let other = unfailed.remove(rng.gen_range(0..unfailed.len()));
            fail_at.push((other, rng.gen_range(20..200)));
        }
    }
    Config {
        seed,
        kind,
        chunk,
        sizes,
        fail_at,
    }
}

/// The array `cfg` describes, on simulated members of its sizes (each behind a fault
/// wrapper), created with `create`'s own checks (not forced).
async fn build(cfg: &Config) -> common::Rig {
    let sims: Vec<Rc<MemMember>> = cfg
        .sizes
        .iter()
        .enumerate()
        .map(|(i, &s)| {
            Rc::new(MemMember::new(
                &format!("sim{i}"),
                s,
                cfg.seed * 31 + i as u64,
            ))
        })
        .collect();
    let opts = CreateOptions {
        chunk_bytes: cfg.chunk,
        force: false,
        ..common::create_options("model", cfg.kind.clone())
    };
    common::create_on(&sims, sims.len(), &opts)
        .await
        .unwrap_or_else(|e| panic!("seed {}: create: {e}", cfg.seed));
    common::Rig::assemble(sims, &AssembleOptions::default())
        .await
        .unwrap_or_else(|e| panic!("seed {}: assemble: {e}", cfg.seed))
}

#[derive(Clone, Copy, Debug)]
enum Op {
    Read(u64, u64),
    Write(u64, u64, u64),
    Trim(u64, u64),
    Zero(u64, u64),
    Flush,
}

fn pattern(len: u64, salt: u64) -> Vec<u8> {
    let mut rng = SmallRng::seed_from_u64(salt);
    (0..len).map(|_| rng.gen()).collect()
}

/// A batch of ops whose written ranges do not overlap each other or the batch's reads, so the
/// model's result does not depend on the order they complete in.
fn random_batch(rng: &mut SmallRng, size: u64, stripe: u64) -> Vec<Op> {
    let mut taken: Vec<(u64, u64)> = Vec::new();
    let mut ops = Vec::new();
    let sectors = size / 512;
    // Half the batches crowd one stripe region so writers share stripes.
    let focus = rng.gen_bool(0.5).then(|| {
        rng.gen_range(0..size / stripe.max(1))
            .min(size / stripe - 1)
            * stripe
    });
    for _ in 0..rng.gen_range(1..12) {
        let max_len = (stripe * 3 / 512).clamp(1, 4096);
        let len = rng.gen_range(1..=max_len).min(sectors) * 512;
        let offset = match focus {
            Some(f) => (f + rng.gen_range(0..stripe.max(512)) / 512 * 512).min(size - len),
            None => rng.gen_range(0..=(sectors - len / 512)) * 512,
        };
        if taken.iter().any(|&(a, b)| offset < b && a < offset + len) {
            continue;
        }
        taken.push((offset, offset + len));
        ops.push(match rng.gen_range(0..20) {
            0..=6 => Op::Read(offset, len),
            7..=15 => Op::Write(offset, len, rng.gen()),
            16 => Op::Trim(offset, len),
            17 => Op::Zero(offset, len),
            _ => Op::Flush,
        });
    }
    ops
}

async fn run_op(array: Rc<Array>, op: Op) -> Result<Option<(u64, Vec<u8>)>, String> {
    let r = match op {
        Op::Read(o, l) => {
            let buf = BufSlice::zeroed(l as usize);
            array
                .read(o, buf.clone())
                .await
                .map(|_| Some((o, buf.to_vec())))
        }
        Op::Write(o, l, salt) => {
            let buf = BufSlice::copy_of(&pattern(l, salt));
            array.write(o, buf, salt % 7 == 0).await.map(|_| None)
        }
        Op::Trim(o, l) => array.trim(o, l).await.map(|_| None),
        Op::Zero(o, l) => array.write_zeroes(o, l).await.map(|_| None),
        Op::Flush => array.flush().await.map(|_| None),
    };
    r.map_err(|e| e.to_string())
}

fn apply(model: &mut [u8], op: Op) {
    match op {
        Op::Write(o, l, salt) => {
            model[o as usize..(o + l) as usize].copy_from_slice(&pattern(l, salt))
        }
        Op::Trim(o, l) | Op::Zero(o, l) => model[o as usize..(o + l) as usize].fill(0),
        _ => {}
    }
}

async fn read_all(array: &Array) -> Vec<u8> {
    common::read_array(array, 0, array.size_bytes() as usize)
        .await
        .expect("full read")
}

fn first_difference(a: &[u8], b: &[u8]) -> Option<usize> {
    a.iter().zip(b).position(|(x, y)| x != y)
}

fn run_model(seed: u64, batches: usize) {
    let cfg = random_config(seed);
    let cfg2 = cfg.clone();
    let outcome = block_on(async move {
        let cfg = cfg2;
        let rig = build(&cfg).await;
        let array = rig.array.clone();
        let size = array.size_bytes();
        let mut model = vec![0u8; size as usize];
        let mut rng = SmallRng::seed_from_u64(seed ^ 0xABCD);
        for batch in 0..batches {
            for &(slot, at) in &cfg.fail_at {
                if batch == at {
                    // Half the time the disk vanishes, half the time one write errors.
                    if seed.is_multiple_of(2) {
                        rig.faults[slot].vanish();
                    } else {
                        rig.faults[slot].inject(common::once(FaultKind::WriteError));
                    }
                }
            }
            let ops = random_batch(&mut rng, size, array.geometry().stripe_bytes());
            let handles: Vec<_> = ops.iter().map(|&op| spawn(run_op(array.clone(), op))).collect();
            let results = Rc::new(RefCell::new(Vec::new()));
            for (op, h) in ops.iter().zip(handles) {
                let r = h.await;
                results.borrow_mut().push((*op, r));
            }
            for (op, r) in results.borrow().iter() {
                match r {
                    Err(e) => panic!("seed {seed} {cfg:?}: batch {batch}: {op:?} failed: {e}"),
                    Ok(Some((o, data))) => {
                        let want = &model[*o as usize..*o as usize + data.len()];
                        if let Some(i) = first_difference(data, want) {
                            panic!("seed {seed} {cfg:?}: batch {batch}: {op:?} returned wrong data at array offset {}", *o as usize + i);
                        }
                    }
                    Ok(None) => {}
                }
            }
            for (op, _) in results.borrow().iter() {
                apply(&mut model, *op);
            }
        }
        let all = read_all(&array).await;
        if let Some(i) = first_difference(&all, &model) {
            panic!("seed {seed} {cfg:?}: final read differs at array offset {i}");
        }
        let failed: Vec<usize> = cfg
            .fail_at
            .iter()
            .filter(|&&(_, at)| at < batches)
            .map(|&(s, _)| s)
            .collect();
        for &slot in &failed {
            // The write-error variant fires only if a write reached that member.
            if rig.faults[slot].fired() > 0 {
                assert!(!array.slots()[slot].is_active(), "seed {seed}: failed member still active");
                assert_ne!(
                    array.superblock().role_of(slot as u32),
                    raidcore::metadata::Role::Active(slot as u16),
                    "seed {seed}: failure not recorded in the superblock"
                );
            }
        }
        if failed.is_empty() {
            common::assert_redundancy_consistent(&array, &rig.sims, &format!("seed {}", cfg.seed));
        }
        if array.level() != Level::Raid0 {
            for (i, m) in rig.sims.iter().enumerate() {
                assert_eq!(m.overlapping_writes(), 0, "seed {seed}: overlapping writes on member {i}");
            }
        }
        array.close().await.unwrap_or_else(|e| panic!("seed {seed}: close: {e}"));
        (model, rig.sims.clone())
    })
    .expect("reactor");

    // A fresh assembly of the same members reads the same bytes.
    let (model, sims) = outcome;
    block_on(async move {
        let members = common::as_members(&common::reopened(&sims, seed));
        let assembled = assemble(members, &common::run_degraded())
            .await
            .unwrap_or_else(|e| panic!("seed {seed}: reassemble: {e}"));
        let all = read_all(&assembled.array).await;
        if let Some(i) = first_difference(&all, &model) {
            panic!("seed {seed}: after reassembly, data differs at array offset {i}");
        }
    })
    .expect("reactor");
}

#[test]
fn random_geometries_match_the_model() {
    let count = common::env_u64("RAIDCORE_MODEL_RUNS", 48);
    let base = common::env_u64("RAIDCORE_MODEL_SEED", 1);
    for seed in base..base + count {
        run_model(seed, 250);
    }
}
