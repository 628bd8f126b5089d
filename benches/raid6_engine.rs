//! The RAID6 and k+m engine's CPU per request, in process (simulated members that complete at
//! once, so only the engine's own work is timed): full-row writes, small writes (on six members
//! a 4 KiB write is a reconstruct-write: it reads the rest of the row) and 4 KiB reads of chunks
//! whose member is gone (reconstruction), on six members with 64 KiB chunks: RAID6 and a 4+2
//! erasure code side by side, so one run compares the two codes on the same rows.

use std::rc::Rc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use raidcore::buf::BufSlice;
use raidcore::control::{assemble, create, AssembleOptions, CreateOptions};
use raidcore::layout::{LayoutKind, Raid6Algorithm};
use raidcore::member::{FaultHandle, FaultMember, MemMember, Member};
use raidcore::raid::Array;
use raidcore::reactor::block_on;

const MEMBER: u64 = 64 << 20;
const CHUNK: u64 = 64 << 10;

/// A fresh array of `kind` on six immediate members behind fault wrappers (handles returned).
async fn array(kind: LayoutKind) -> (Rc<Array>, Vec<FaultHandle>) {
    let sims: Vec<Rc<dyn Member>> = (0..6)
        .map(|i| Rc::new(MemMember::new(&format!("m{i}"), MEMBER, i).immediate()) as Rc<dyn Member>)
        .collect();
    let opts = CreateOptions {
        chunk_bytes: CHUNK,
        bitmap: false,
        force: true,
        fresh: true,
        ..CreateOptions::new("b", kind)
    };
    create(&sims, &[], &opts).await.expect("create");
    let (wrapped, faults) = FaultMember::wrap_all(sims);
    let array = assemble(wrapped, &AssembleOptions::default())
        .await
        .expect("assemble")
        .array;
    (array, faults)
}

/// Times `iters` requests of `len` bytes spread over the array; with `one_gone`, member 2 is
/// gone and only chunks that lived on it are asked for.
fn timed(kind: LayoutKind, iters: u64, len: u64, write: bool, one_gone: bool) -> Duration {
    block_on(async move {
        let (array, faults) = array(kind).await;
        let size = array.size_bytes() / len * len;
        let data = BufSlice::filled(len as usize, |b| b.fill(0x5a));
        let geo = array.geometry().clone();
        let offsets: Vec<u64> = (0..size / len)
            .map(|i| (i * len * 7) % size)
            .filter(|&at| !one_gone || geo.parity_locate(at).slot == 2)
            .collect();
        if one_gone {
            faults[2].vanish();
            let _ = array.read(offsets[0], BufSlice::zeroed(len as usize)).await;
        }
        let start = Instant::now();
        for i in 0..iters {
            let at = offsets[i as usize % offsets.len()];
            if write {
                array.write(at, data.clone(), false).await.unwrap();
            } else {
                array
                    .read(at, BufSlice::zeroed(len as usize))
                    .await
                    .unwrap();
            }
        }
        start.elapsed()
    })
    .expect("reactor")
}

fn raid6_engine(c: &mut Criterion) {
    let mut group = c.benchmark_group("raid6-engine");
    let row = 4 * CHUNK;
    let kinds = [
        ("raid6", LayoutKind::Raid6(Raid6Algorithm::LeftSymmetric)),
        ("ec 4+2", LayoutKind::Ec { parity: 2 }),
    ];
    for (code, kind) in kinds {
        for (name, len, write, gone) in [
            ("write full rows 1M", 4 * row, true, false),
            ("write 4k", 4096, true, false),
            ("read 4k, one member gone", 4096, false, true),
        ] {
            group.throughput(Throughput::Elements(1));
            group.bench_function(format!("{code}: {name}"), |b| {
                b.iter_custom(|iters| timed(kind.clone(), iters, len, write, gone))
            });
        }
    }
    group.finish();
}

criterion_group!(benches, raid6_engine);
criterion_main!(benches);
