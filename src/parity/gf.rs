//! The fast GF(2^8) kernels behind RAID6: P+Q generation and multiplying a buffer by a
//! constant, picked once at run time like the XOR engine:
//!
//! ```text
//!   x86_64 with AVX2  ──▶ "avx2": Q by Horner's rule, x2 as compare/add/mask on four 32-byte
//!                         vectors (the kernel's raid6 avx2x4 gen); c*x by two 16-entry nibble
//!                         tables and vpshufb (the kernel's raid6 avx2 recovery)
//!   anything else     ──▶ "u64": the same x2 on 8-byte words (the kernel's int64 gen);
//!                         c*x by a 256-entry table
//! ```
//!
//! Both are checked against the byte-wise definitions in `raid6.rs` and against
//! `reed_solomon_erasure::galois_8` by the tests.

use std::sync::OnceLock;

use super::raid6::mul;

const LOW_BITS: u64 = 0xfefe_fefe_fefe_fefe;
const HIGH_BITS: u64 = 0x0101_0101_0101_0101;

/// Every byte of `x` times g (= 2) in GF(2^8), eight at once.
#[inline(always)]
fn mul2_u64(x: u64) -> u64 {
    ((x << 1) & LOW_BITS) ^ (((x >> 7) & HIGH_BITS) * 0x1d)
}

#[inline(always)]
fn mul2_u8(x: u8) -> u8 {
    (x << 1) ^ if x & 0x80 != 0 { 0x1d } else { 0 }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Engine {
    Portable,
    #[cfg(target_arch = "x86_64")]
    Avx2,
}

fn engine() -> Engine {
    static SELECTED: OnceLock<Engine> = OnceLock::new();
    *SELECTED.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            return Engine::Avx2;
        }
        Engine::Portable
    })
}

/// Name of the kernels in use: `"avx2"` or `"u64"`.
pub fn implementation_name() -> &'static str {
    match engine() {
        Engine::Portable => "u64",
        #[cfg(target_arch = "x86_64")]
        Engine::Avx2 => "avx2",
    }
}

/// P and Q of `data` (syndrome order, every chunk as long as `p` and `q`).
pub(super) fn gen_syndrome(data: &[&[u8]], p: &mut [u8], q: &mut [u8]) {
    match engine() {
        Engine::Portable => gen_portable(data, p, q),
        // SAFETY: AVX2 was detected on this CPU.
        #[cfg(target_arch = "x86_64")]
        Engine::Avx2 => unsafe { avx2::gen(data, p, q) },
    }
}

/// `dst ^= c * src` (`XOR` true) or `dst = c * src`, byte by byte.
pub(super) fn mul_const<const XOR: bool>(dst: &mut [u8], src: &[u8], c: u8) {
    assert_eq!(dst.len(), src.len(), "mul_const: length mismatch");
    match engine() {
        Engine::Portable => mul_const_portable::<XOR>(dst, src, c),
        // SAFETY: AVX2 was detected on this CPU.
        #[cfg(target_arch = "x86_64")]
        Engine::Avx2 => unsafe { avx2::mul_const::<XOR>(dst, src, c) },
    }
}

/// The portable generator, also what the AVX2 one does for the tail it leaves.
pub(super) fn gen_portable(data: &[&[u8]], p: &mut [u8], q: &mut [u8]) {
    const STEP: usize = 32;
    let len = p.len();
    let body = len - len % STEP;
    let word = |d: &[u8], at: usize| u64::from_ne_bytes(d[at..at + 8].try_into().unwrap());
    let (last, rest) = data.split_last().expect("a stripe has data");
    for off in (0..body).step_by(STEP) {
        let mut wp = [0u64; 4];
        let mut wq = [0u64; 4];
        for k in 0..4 {
            wp[k] = word(last, off + 8 * k);
            wq[k] = wp[k];
        }
        for d in rest.iter().rev() {
            for k in 0..4 {
                let w = word(d, off + 8 * k);
                wp[k] ^= w;
                wq[k] = mul2_u64(wq[k]) ^ w;
            }
        }
        for k in 0..4 {
            p[off + 8 * k..off + 8 * k + 8].copy_from_slice(&wp[k].to_ne_bytes());
            q[off + 8 * k..off + 8 * k + 8].copy_from_slice(&wq[k].to_ne_bytes());
        }
    }
    gen_bytes(data, p, q, body);
}

/// Bytes `from..` of P and Q, one at a time.
fn gen_bytes(data: &[&[u8]], p: &mut [u8], q: &mut [u8], from: usize) {
    for j in from..p.len() {
        let (mut bp, mut bq) = (0u8, 0u8);
        for d in data.iter().rev() {
            bp ^= d[j];
            bq = mul2_u8(bq) ^ d[j];
        }
        p[j] = bp;
        q[j] = bq;
    }
}

fn mul_const_portable<const XOR: bool>(dst: &mut [u8], src: &[u8], c: u8) {
    let mut table = [0u8; 256];
    for (x, t) in table.iter_mut().enumerate() {
        *t = mul(c, x as u8);
    }
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = if XOR {
            *d ^ table[s as usize]
        } else {
            table[s as usize]
        };
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    #![deny(unsafe_op_in_unsafe_fn)]
    use std::arch::x86_64::*;

    use super::mul;

    /// P and Q, 128 bytes (four vectors) per step, Q by Horner's rule from the last chunk
    /// down (four independent chains keep the vector units busy, as the kernel's avx2x4).
    ///
    /// # Safety
    /// The CPU must have AVX2; every chunk of `data` as long as `p` and `q`.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn gen(data: &[&[u8]], p: &mut [u8], q: &mut [u8]) {
        const LANES: usize = 4;
        const STEP: usize = 32 * LANES;
        let len = p.len();
        assert!(data.iter().all(|d| d.len() == len) && q.len() == len);
        let body = len - len % STEP;
        let (last, rest) = data.split_last().expect("a stripe has data");
        let poly = _mm256_set1_epi8(0x1d);
        let zero = _mm256_setzero_si256();
        let load = |d: &[u8], at: usize| {
            // SAFETY: at + 32 <= body <= len == d.len(); unaligned loads are allowed.
            unsafe { _mm256_loadu_si256(d.as_ptr().add(at) as *const __m256i) }
        };
        for off in (0..body).step_by(STEP) {
            let mut vp = [zero; LANES];
            for (k, v) in vp.iter_mut().enumerate() {
                *v = load(last, off + 32 * k);
            }
            let mut vq = vp;
            for d in rest.iter().rev() {
                for k in 0..LANES {
                    let dk = load(d, off + 32 * k);
                    // q = 2q ^ d: bytes with the top bit set get the polynomial after the shift.
                    let m = _mm256_and_si256(_mm256_cmpgt_epi8(zero, vq[k]), poly);
                    let doubled = _mm256_xor_si256(_mm256_add_epi8(vq[k], vq[k]), m);
                    vq[k] = _mm256_xor_si256(doubled, dk);
                    vp[k] = _mm256_xor_si256(vp[k], dk);
                }
            }
            for k in 0..LANES {
                // SAFETY: off + STEP <= body <= len of p and q; unaligned stores are allowed.
                unsafe {
                    _mm256_storeu_si256(p.as_mut_ptr().add(off + 32 * k) as *mut __m256i, vp[k]);
                    _mm256_storeu_si256(q.as_mut_ptr().add(off + 32 * k) as *mut __m256i, vq[k]);
                }
            }
        }
        super::gen_bytes(data, p, q, body);
    }

    /// `dst (^)= c * src` by nibble tables: c*x = LO[x & 15] ^ HI[x >> 4].
    ///
    /// # Safety
    /// The CPU must have AVX2; `dst` and `src` of one length.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn mul_const<const XOR: bool>(dst: &mut [u8], src: &[u8], c: u8) {
        let len = dst.len();
        assert_eq!(src.len(), len);
        let mut lo = [0u8; 32];
        let mut hi = [0u8; 32];
        for x in 0..16u8 {
            lo[x as usize] = mul(c, x);
            lo[x as usize + 16] = lo[x as usize];
            hi[x as usize] = mul(c, x << 4);
            hi[x as usize + 16] = hi[x as usize];
        }
        // SAFETY: 32-byte arrays; unaligned loads are allowed.
        let (tlo, thi) = unsafe {
            (
                _mm256_loadu_si256(lo.as_ptr() as *const __m256i),
                _mm256_loadu_si256(hi.as_ptr() as *const __m256i),
            )
        };
        let nibble = _mm256_set1_epi8(0x0f);
        let body = len - len % 32;
        for off in (0..body).step_by(32) {
            // SAFETY: off + 32 <= body <= len of both buffers; unaligned access is allowed.
            unsafe {
                let s = _mm256_loadu_si256(src.as_ptr().add(off) as *const __m256i);
                let l = _mm256_shuffle_epi8(tlo, _mm256_and_si256(s, nibble));
                let h = _mm256_shuffle_epi8(thi, _mm256_and_si256(_mm256_srli_epi16(s, 4), nibble));
                let mut v = _mm256_xor_si256(l, h);
                let at = dst.as_mut_ptr().add(off) as *mut __m256i;
                if XOR {
                    v = _mm256_xor_si256(v, _mm256_loadu_si256(at));
                }
                _mm256_storeu_si256(at, v);
            }
        }
        super::mul_const_portable::<XOR>(&mut dst[body..], &src[body..], c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use reed_solomon_erasure::galois_8;

    fn stripe() -> impl Strategy<Value = Vec<Vec<u8>>> {
        (1usize..12, 0usize..300).prop_flat_map(|(n, len)| {
            prop::collection::vec(prop::collection::vec(any::<u8>(), len), n)
        })
    }

    /// P and Q by the definition with reed_solomon_erasure's field: sum of g^i * D_i.
    fn reference(data: &[Vec<u8>]) -> (Vec<u8>, Vec<u8>) {
        let len = data[0].len();
        let (mut p, mut q) = (vec![0u8; len], vec![0u8; len]);
        for (i, d) in data.iter().enumerate() {
            for j in 0..len {
                p[j] ^= d[j];
                q[j] ^= galois_8::mul(galois_8::exp(2, i), d[j]);
            }
        }
        (p, q)
    }

    proptest! {
        #[test]
        fn both_generators_give_the_definitions_p_and_q(data in stripe()) {
            let view: Vec<&[u8]> = data.iter().map(|d| d.as_slice()).collect();
            let len = data[0].len();
            let want = reference(&data);
            let (mut p, mut q) = (vec![0xa5; len], vec![0x5a; len]);
            gen_portable(&view, &mut p, &mut q);
            prop_assert_eq!((&p, &q), (&want.0, &want.1));
            let (mut p, mut q) = (vec![0xa5; len], vec![0x5a; len]);
            gen_syndrome(&view, &mut p, &mut q);
            prop_assert_eq!((p, q), want);
        }

        #[test]
        fn both_multipliers_give_the_fields_product(
            src in prop::collection::vec(any::<u8>(), 0..300),
            c in any::<u8>(),
            seed in any::<u8>(),
        ) {
            let want: Vec<u8> = src.iter().map(|&s| galois_8::mul(c, s)).collect();
            let mut set = vec![seed; src.len()];
            mul_const::<false>(&mut set, &src, c);
            prop_assert_eq!(&set, &want);
            let mut acc = vec![seed; src.len()];
            mul_const::<true>(&mut acc, &src, c);
            let want_xor: Vec<u8> = want.iter().map(|w| w ^ seed).collect();
            prop_assert_eq!(&acc, &want_xor);
            let mut portable = vec![seed; src.len()];
            mul_const_portable::<true>(&mut portable, &src, c);
            prop_assert_eq!(portable, want_xor);
        }
    }
}
