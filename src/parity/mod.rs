//! XOR parity: `P = D0 ^ D1 ^ ... ^ Dn-1`, byte by byte, as RAID5 stores it ([`raid6`]: P and
//! Q over GF(2^8), as md's RAID6 stores them).
//!
//! Parity is computed on every RAID5 write and read back on every degraded read, so it must run
//! near memory speed. The fastest engine the CPU offers is picked once, on first use, and kept
//! in a [`OnceLock`]:
//!
//! ```text
//!   x86_64 with AVX2  ──▶ "avx2": 32-byte vectors, four of them per loop step
//!   anything else     ──▶ "u64":  portable 8-byte words
//! ```
//!
//! Every engine implements one kernel, "`dst` (= or ^=) up to four sources", and shares the
//! driver [`xor_all_with`]: with more than four sources it walks `dst` in L1-sized blocks and
//! applies the sources four at a time to each block, so `dst` goes through memory once however
//! many sources there are. Lengths need not be multiples of anything; tails are done byte-wise.

use std::sync::OnceLock;

pub mod code;
pub mod ec;
mod gf;
pub mod raid6;

pub use gf::implementation_name as gf_implementation_name;
#[cfg(test)]
mod tests;

/// Bytes of `dst` finished before moving on when there are more than four sources: small
/// enough that the block stays in L1 while each group of sources is folded in.
const BLOCK_BYTES: usize = 4096;
/// Sources folded in per pass over a block.
const SOURCES_PER_PASS: usize = 4;

/// One XOR kernel. `INIT` true: `dst = srcs[0] ^ ... ^ srcs[K-1]`; false: `dst ^= ...`.
/// Callers guarantee every source is exactly as long as `dst`.
trait Kernel: Copy {
    fn run<const K: usize, const INIT: bool>(self, dst: &mut [u8], srcs: [&[u8]; K]);
}

/// An engine the running CPU can execute.
#[derive(Clone, Copy, Debug)]
enum Engine {
    Portable(Portable),
    #[cfg(target_arch = "x86_64")]
    Avx2(avx2::Avx2),
}

impl Engine {
    fn name(self) -> &'static str {
        match self {
            Engine::Portable(_) => "u64",
            #[cfg(target_arch = "x86_64")]
            Engine::Avx2(_) => "avx2",
        }
    }

    fn xor_into(self, dst: &mut [u8], src: &[u8]) {
        match self {
            Engine::Portable(kernel) => kernel.run::<1, false>(dst, [src]),
            #[cfg(target_arch = "x86_64")]
            Engine::Avx2(kernel) => kernel.run::<1, false>(dst, [src]),
        }
    }

    fn xor_all(self, dst: &mut [u8], srcs: &[&[u8]]) {
        match self {
            Engine::Portable(kernel) => xor_all_with(kernel, dst, srcs),
            #[cfg(target_arch = "x86_64")]
            Engine::Avx2(kernel) => xor_all_with(kernel, dst, srcs),
        }
    }

    /// Every engine usable on this CPU, fastest first.
    fn available() -> impl Iterator<Item = Engine> {
        #[cfg(target_arch = "x86_64")]
        let fast = avx2::Avx2::detect().map(Engine::Avx2);
        #[cfg(not(target_arch = "x86_64"))]
        let fast = None;
        fast.into_iter().chain([Engine::Portable(Portable)])
    }
}

fn engine() -> Engine {
    static SELECTED: OnceLock<Engine> = OnceLock::new();
    *SELECTED.get_or_init(|| {
        Engine::available()
            .next()
            .unwrap_or(Engine::Portable(Portable))
    })
}

/// `dst ^= src`.
///
/// # Panics
/// If the lengths differ.
pub fn xor_into(dst: &mut [u8], src: &[u8]) {
    assert_eq!(dst.len(), src.len(), "xor_into: length mismatch");
    engine().xor_into(dst, src);
}

/// `dst = srcs[0] ^ srcs[1] ^ ...`; `dst` is fully overwritten (zeroed when `srcs` is empty).
///
/// # Panics
/// If any source differs in length from `dst`.
pub fn xor_all(dst: &mut [u8], srcs: &[&[u8]]) {
    check_lengths(dst, srcs);
    engine().xor_all(dst, srcs);
}

/// The obvious byte-by-byte version of [`xor_all`], the yardstick for tests.
///
/// # Panics
/// If any source differs in length from `dst`.
pub fn xor_reference(dst: &mut [u8], srcs: &[&[u8]]) {
    check_lengths(dst, srcs);
    dst.fill(0);
    for src in srcs {
        for (byte, &other) in dst.iter_mut().zip(src.iter()) {
            *byte ^= other;
        }
    }
}

/// Name of the engine in use: `"avx2"` or `"u64"`.
pub fn implementation_name() -> &'static str {
    engine().name()
}

fn check_lengths(dst: &[u8], srcs: &[&[u8]]) {
    for (index, src) in srcs.iter().enumerate() {
        assert_eq!(
            src.len(),
            dst.len(),
            "xor_all: source {index} length mismatch"
        );
    }
}

/// Shared driver: one pass over `dst` whatever the number of sources.
fn xor_all_with<X: Kernel>(kernel: X, dst: &mut [u8], srcs: &[&[u8]]) {
    if srcs.len() <= SOURCES_PER_PASS {
        return run_group::<X, true>(kernel, dst, srcs);
    }
    let mut start = 0;
    for block in dst.chunks_mut(BLOCK_BYTES) {
        let end = start + block.len();
        let mut groups = srcs.chunks(SOURCES_PER_PASS);
        // The first group overwrites the block, so stale contents are never read.
        if let Some(group) = groups.next() {
            run_block::<X, true>(kernel, block, group, start..end);
        }
        for group in groups {
            run_block::<X, false>(kernel, block, group, start..end);
        }
        start = end;
    }
}

fn run_block<X: Kernel, const INIT: bool>(
    kernel: X,
    block: &mut [u8],
    group: &[&[u8]],
    range: std::ops::Range<usize>,
) {
    let mut slices: [&[u8]; SOURCES_PER_PASS] = [&[]; SOURCES_PER_PASS];
    for (slice, src) in slices.iter_mut().zip(group) {
        *slice = &src[range.clone()];
    }
    run_group::<X, INIT>(kernel, block, &slices[..group.len()]);
}

/// Applies up to [`SOURCES_PER_PASS`] sources with a kernel specialised for their count.
fn run_group<X: Kernel, const INIT: bool>(kernel: X, dst: &mut [u8], group: &[&[u8]]) {
    match *group {
        [] if INIT => dst.fill(0),
        [] => {}
        [a] if INIT => dst.copy_from_slice(a),
        [a] => kernel.run::<1, INIT>(dst, [a]),
        [a, b] => kernel.run::<2, INIT>(dst, [a, b]),
        [a, b, c] => kernel.run::<3, INIT>(dst, [a, b, c]),
        [a, b, c, d] => kernel.run::<4, INIT>(dst, [a, b, c, d]),
        _ => unreachable!("groups hold at most {SOURCES_PER_PASS} sources"),
    }
}

/// Portable engine: 8-byte words, four independent words per step, bytes for the tail.
#[derive(Clone, Copy, Debug)]
struct Portable;

const WORD: usize = 8;

fn load_word(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0u8; WORD];
    word.copy_from_slice(&bytes[at..at + WORD]);
    u64::from_ne_bytes(word)
}

impl Kernel for Portable {
    fn run<const K: usize, const INIT: bool>(self, dst: &mut [u8], srcs: [&[u8]; K]) {
        let len = dst.len();
        // Re-slicing to exactly `len` lets the compiler drop the per-word bounds checks.
        let srcs = srcs.map(|src| &src[..len]);
        let words_end = len - len % WORD;
        for at in (0..words_end).step_by(WORD) {
            let mut acc = if INIT { 0 } else { load_word(dst, at) };
            for src in &srcs {
                acc ^= load_word(src, at);
            }
            dst[at..at + WORD].copy_from_slice(&acc.to_ne_bytes());
        }
        for at in words_end..len {
            let mut acc = if INIT { 0 } else { dst[at] };
            for src in &srcs {
                acc ^= src[at];
            }
            dst[at] = acc;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    //! AVX2 engine: 256-bit unaligned loads and stores, 128 bytes per loop step.
    #![deny(unsafe_op_in_unsafe_fn)]

    use super::{Kernel, Portable};
    use std::arch::x86_64::{
        __m256i, _mm256_loadu_si256, _mm256_setzero_si256, _mm256_storeu_si256, _mm256_xor_si256,
    };

    /// Proof that the CPU has AVX2: the private field means only [`Avx2::detect`] makes one.
    #[derive(Clone, Copy, Debug)]
    pub(super) struct Avx2(());

    impl Avx2 {
        pub(super) fn detect() -> Option<Avx2> {
            is_x86_feature_detected!("avx2").then_some(Avx2(()))
        }
    }

    impl Kernel for Avx2 {
        fn run<const K: usize, const INIT: bool>(self, dst: &mut [u8], srcs: [&[u8]; K]) {
            // SAFETY: `self` exists only when detect() saw AVX2 on this CPU.
            unsafe { run_avx2::<K, INIT>(dst, srcs) }
        }
    }

    const VECTOR: usize = 32;
    const LANES: usize = 4;
    const STEP: usize = VECTOR * LANES;

    /// # Safety
    /// The CPU must support AVX2.
    #[target_feature(enable = "avx2")]
    unsafe fn run_avx2<const K: usize, const INIT: bool>(dst: &mut [u8], srcs: [&[u8]; K]) {
        let len = dst.len();
        for src in &srcs {
            // The raw-pointer reads below rely on this.
            assert_eq!(src.len(), len);
        }
        let out = dst.as_mut_ptr();
        let mut at = 0;
        while at + STEP <= len {
            // SAFETY: AVX2 is enabled for this function; `at + STEP <= len` and every source
            // is `len` long, so all 128 bytes read and written at `at` are in bounds.
            // loadu/storeu accept any alignment.
            unsafe {
                let mut acc: [__m256i; LANES] = [_mm256_setzero_si256(); LANES];
                for (lane, value) in acc.iter_mut().enumerate() {
                    let offset = at + lane * VECTOR;
                    if !INIT {
                        *value = _mm256_loadu_si256(out.add(offset).cast());
                    }
                    for src in &srcs {
                        let data = _mm256_loadu_si256(src.as_ptr().add(offset).cast());
                        *value = _mm256_xor_si256(*value, data);
                    }
                }
                for (lane, value) in acc.iter().enumerate() {
                    _mm256_storeu_si256(out.add(at + lane * VECTOR).cast(), *value);
                }
            }
            at += STEP;
        }
        while at + VECTOR <= len {
            // SAFETY: as above, for the 32 bytes at `at`.
            unsafe {
                let mut value = if INIT {
                    _mm256_setzero_si256()
                } else {
                    _mm256_loadu_si256(out.add(at).cast())
                };
                for src in &srcs {
                    let data = _mm256_loadu_si256(src.as_ptr().add(at).cast());
                    value = _mm256_xor_si256(value, data);
                }
                _mm256_storeu_si256(out.add(at).cast(), value);
            }
            at += VECTOR;
        }
        // Fewer than 32 bytes remain.
        Portable.run::<K, INIT>(&mut dst[at..], srcs.map(|src| &src[at..]));
    }
}
