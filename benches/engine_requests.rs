//! The engine's cost per request on simulated members that complete at once (only the
//! engine's own work is timed): 4 KiB reads and writes on RAID0, RAID1, RAID5 and RAID6 of four
//! to six members, through `raid::Array` (the request path below the NBD server). Besides the
//! time, it prints the heap allocations per request, counted by a counting global allocator
//! around a fixed number of requests after a warm-up: the figure the "no allocation per request
//! that a pool or a borrowed buffer can avoid" rule is checked against.

use std::alloc::{GlobalAlloc, Layout, System};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use raidcore::buf::BufSlice;
use raidcore::control::{assemble, create, AssembleOptions, CreateOptions};
use raidcore::layout::{LayoutKind, Raid5Algorithm, Raid6Algorithm};
use raidcore::member::{MemMember, Member};
use raidcore::raid::Array;
use raidcore::reactor::block_on;

/// Counts allocations (not frees) made through the global allocator.
struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards every call to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's contract is passed on as is.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const MEMBER: u64 = 64 << 20;
const CHUNK: u64 = 64 << 10;
const LEN: u64 = 4096;

async fn array(kind: LayoutKind, members: usize) -> Rc<Array> {
    let sims: Vec<Rc<dyn Member>> = (0..members)
        .map(|i| {
            Rc::new(MemMember::new(&format!("m{i}"), MEMBER, i as u64).immediate())
                as Rc<dyn Member>
        })
        .collect();
    let opts = CreateOptions {
        chunk_bytes: CHUNK,
        bitmap: false,
        force: true,
        fresh: true,
        ..CreateOptions::new("b", kind)
    };
    create(&sims, &[], &opts).await.expect("create");
    assemble(sims, &AssembleOptions::default())
        .await
        .expect("assemble")
        .array
}

/// Runs `iters` 4 KiB requests spread over the array; returns the time and the allocations.
fn run(kind: LayoutKind, members: usize, write: bool, iters: u64) -> (Duration, u64) {
    block_on(async move {
        let array = array(kind, members).await;
        let size = array.size_bytes() / LEN * LEN;
        let data = BufSlice::filled(LEN as usize, |b| b.fill(0x5a));
        let at = |i: u64| (i * LEN * 7919) % size;
        let one = |i: u64| {
            let array = array.clone();
            let data = data.clone();
            async move {
                if write {
                    array.write(at(i), data, false).await.unwrap();
                } else {
                    array
                        .read(at(i), BufSlice::recycled(LEN as usize))
                        .await
                        .unwrap();
                }
            }
        };
        for i in 0..64 {
            one(i).await; // warm the pools
        }
        let allocations = ALLOCATIONS.load(Ordering::Relaxed);
        let start = Instant::now();
        for i in 0..iters {
            one(i).await;
        }
        let took = start.elapsed();
        (took, ALLOCATIONS.load(Ordering::Relaxed) - allocations)
    })
    .expect("reactor")
}

fn engine_requests(c: &mut Criterion) {
    let mut group = c.benchmark_group("engine-4k");
    let kinds = [
        (
            "raid0 x4",
            LayoutKind::Raid0(raidcore::layout::Raid0Layout::Original),
            4,
        ),
        ("raid1 x2", LayoutKind::Raid1, 2),
        (
            "raid5 x4",
            LayoutKind::Raid5(Raid5Algorithm::LeftSymmetric),
            4,
        ),
        (
            "raid6 x6",
            LayoutKind::Raid6(Raid6Algorithm::LeftSymmetric),
            6,
        ),
    ];
    for (name, kind, members) in kinds {
        for write in [false, true] {
            let label = format!("{name} {}", if write { "write" } else { "read" });
            let (_, allocations) = run(kind.clone(), members, write, 10_000);
            println!(
                "{label}: {:.1} allocations per request",
                allocations as f64 / 10_000.0
            );
            group.throughput(Throughput::Elements(1));
            group.bench_function(&label, |b| {
                b.iter_custom(|iters| run(kind.clone(), members, write, iters).0)
            });
        }
    }
    group.finish();
}

criterion_group!(benches, engine_requests);
criterion_main!(benches);
