//! Mapping cost per request: split into pieces, then find every copy (RAID0/10) or the data
//! and parity slots (RAID5), for a random 4 KiB request and a 1 MiB request.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use raidcore::layout::{Geometry, LayoutKind, Raid0Layout, Raid10Layout, Raid5Algorithm, Reverse};
use std::hint::black_box;

const KIB: u64 = 1024;
const TIB: u64 = KIB * KIB * KIB * KIB;
const CHUNK_BYTES: u64 = 512 * KIB;
const OFFSETS: usize = 4096;

/// 4 KiB-aligned request starts spread over the whole array (xorshift, fixed seed).
fn random_offsets(array_bytes: u64, len: u64) -> Vec<u64> {
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    (0..OFFSETS)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % (array_bytes - len)) & !(4 * KIB - 1)
        })
        .collect()
}

/// Maps one request and folds the answer into a number so none of it is optimised away.
fn map_request(geometry: &Geometry, offset: u64, len: u64) -> u64 {
    let mut sum = 0;
    for piece in geometry.pieces(offset, len) {
        if let LayoutKind::Raid5(_) = geometry.kind() {
            let loc = geometry.parity_locate(piece.array_offset);
            sum += loc.member_offset + (loc.slot ^ loc.parity_slot) as u64;
        } else {
            for place in &geometry.map_copies(piece.array_offset) {
                sum += place.member_offset + place.slot as u64;
            }
        }
    }
    sum
}

fn mapping(c: &mut Criterion) {
    let geometries = [
        ("raid0-4", LayoutKind::Raid0(Raid0Layout::Original), 4),
        ("raid10-n2-4", LayoutKind::Raid10(Raid10Layout::NEAR2), 4),
        (
            "raid10-f2-4",
            LayoutKind::Raid10(Raid10Layout::from_md(0x201).unwrap()),
            4,
        ),
        (
            "raid5-ls-5",
            LayoutKind::Raid5(Raid5Algorithm::LeftSymmetric),
            5,
        ),
    ];
    let mut group = c.benchmark_group("layout");
    for (name, kind, members) in geometries {
        let geometry = Geometry::new(kind, CHUNK_BYTES, &vec![TIB; members]).unwrap();
        for len in [4 * KIB, 1024 * KIB] {
            let offsets = random_offsets(geometry.array_bytes(), len);
            let mut next = 0;
            let id = BenchmarkId::new(name, format!("{}KiB", len / KIB));
            group.bench_function(id, |b| {
                b.iter(|| {
                    next = (next + 1) % OFFSETS;
                    map_request(black_box(&geometry), black_box(offsets[next]), len)
                })
            });
        }
    }
    // Rebuild walks members sector by sector through the inverse map.
    let geometry = Geometry::new(
        LayoutKind::Raid5(Raid5Algorithm::LeftSymmetric),
        CHUNK_BYTES,
        &[TIB; 5],
    )
    .unwrap();
    let offsets = random_offsets(TIB, 0);
    let mut next = 0;
    group.bench_function("raid5-ls-5/reverse", |b| {
        b.iter(|| {
            next = (next + 1) % OFFSETS;
            match geometry.reverse(next % 5, black_box(offsets[next])) {
                Reverse::Data { array_offset } => array_offset,
                Reverse::Parity { stripe } | Reverse::Syndrome { stripe } => stripe,
                Reverse::Unused => 0,
            }
        })
    });
    group.finish();
}

criterion_group!(benches, mapping);
criterion_main!(benches);
