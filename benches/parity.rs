//! Parity throughput: P from 4 or 8 data chunks (`xor_all`), RAID6's P+Q of the same stripes
//! (`gen_syndrome`) and k+m erasure coding with 2, 3 and 4 parity chunks (`ec_k+m`), next to
//! a memcpy of the same data bytes, so the report shows how close parity runs to plain memory
//! bandwidth and what each extra parity chunk costs.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use raidcore::parity;
use std::hint::black_box;

/// Cheap non-constant contents so nothing can be folded away.
fn filled(seed: usize, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i.wrapping_mul(31) ^ seed.wrapping_mul(131)) as u8)
        .collect()
}

fn xor_parity(c: &mut Criterion) {
    let mut group = c.benchmark_group(format!(
        "parity/{}+{}",
        parity::implementation_name(),
        parity::gf_implementation_name()
    ));
    for data_chunks in [4usize, 8] {
        for chunk_kib in [64usize, 512] {
            let chunk_bytes = chunk_kib * 1024;
            let data: Vec<Vec<u8>> = (0..data_chunks).map(|i| filled(i, chunk_bytes)).collect();
            let srcs: Vec<&[u8]> = data.iter().map(Vec::as_slice).collect();
            let label = format!("{data_chunks}data/{chunk_kib}KiB");
            // Both lines count the data bytes read, so their GB/s compare directly.
            group.throughput(Throughput::Bytes((data_chunks * chunk_bytes) as u64));

            let mut parity_chunk = vec![0u8; chunk_bytes];
            group.bench_function(BenchmarkId::new("xor_all", &label), |b| {
                b.iter(|| parity::xor_all(black_box(&mut parity_chunk), black_box(&srcs)))
            });

            let mut q_chunk = vec![0u8; chunk_bytes];
            group.bench_function(BenchmarkId::new("raid6_pq", &label), |b| {
                b.iter(|| {
                    parity::raid6::gen_syndrome(
                        black_box(&srcs),
                        black_box(&mut parity_chunk),
                        black_box(&mut q_chunk),
                    )
                })
            });

            for parity_chunks in [2usize, 3, 4] {
                let code = parity::ec::ErasureCode::new(data_chunks, parity_chunks).unwrap();
                let mut out = vec![vec![0u8; chunk_bytes]; parity_chunks];
                let id = BenchmarkId::new(format!("ec_k+{parity_chunks}"), &label);
                group.bench_function(id, |b| {
                    b.iter(|| {
                        let mut view: Vec<&mut [u8]> =
                            out.iter_mut().map(|p| p.as_mut_slice()).collect();
                        code.encode(black_box(&srcs), black_box(&mut view))
                    })
                });
            }

            let mut copy = vec![0u8; data_chunks * chunk_bytes];
            group.bench_function(BenchmarkId::new("memcpy", &label), |b| {
                b.iter(|| {
                    for (dst, src) in copy.chunks_exact_mut(chunk_bytes).zip(black_box(&srcs)) {
                        dst.copy_from_slice(src);
                    }
                    black_box(&mut copy);
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, xor_parity);
criterion_main!(benches);
