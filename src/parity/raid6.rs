//! RAID6 parity as md computes it: P is the XOR of the data chunks, Q is
//! `sum(g^i * D_i)` in GF(2^8) with the polynomial x^8+x^4+x^3+x^2+1 (0x11d) and g = 2, where
//! `i` is the chunk's index in the stripe's syndrome order. Any two missing chunks of a stripe
//! (data and data, data and P, data and Q, P and Q) can be had again from the others.
//!
//! Pure arithmetic, no I/O. The bulk work (P+Q generation, multiplying by a constant) runs in
//! the kernels of `gf.rs`, picked for the CPU at run time; the field itself (`mul`, `inv`,
//! `pow_g`) is here, by log tables. Recovery allocates its scratch rows.

/// The field's reduction polynomial without its x^8 term.
const POLY: u16 = 0x11d;

/// `EXP[k] = g^k` for k in 0..510 (doubled so a product needs no modulo).
static EXP: [u8; 510] = exp_table();
/// `LOG[x]` for x != 0 (`LOG[0]` is unused).
static LOG: [u8; 256] = log_table();

const fn exp_table() -> [u8; 510] {
    let mut t = [0u8; 510];
    let mut x: u16 = 1;
    let mut k = 0;
    while k < 510 {
        t[k] = x as u8;
        x <<= 1;
        if x & 0x100 != 0 {
            x ^= POLY;
        }
        k += 1;
    }
    t
}

const fn log_table() -> [u8; 256] {
    let exp = exp_table();
    let mut t = [0u8; 256];
    let mut k = 0;
    while k < 255 {
        t[exp[k] as usize] = k as u8;
        k += 1;
    }
    t
}

/// `a * b` in GF(2^8).
pub fn mul(a: u8, b: u8) -> u8 {
    if a == 0 || b == 0 {
        return 0;
    }
    EXP[LOG[a as usize] as usize + LOG[b as usize] as usize]
}

/// `g^k`.
pub fn pow_g(k: usize) -> u8 {
    EXP[k % 255]
}

/// `1 / a`; `a` must not be 0.
pub fn inv(a: u8) -> u8 {
    assert!(a != 0, "0 has no inverse");
    EXP[255 - LOG[a as usize] as usize]
}

/// Computes P and Q of `data` (in syndrome order, all the same length as `p` and `q`).
pub fn gen_syndrome(data: &[&[u8]], p: &mut [u8], q: &mut [u8]) {
    assert!(!data.is_empty(), "a stripe has data");
    assert!(
        data.iter().all(|d| d.len() == p.len()) && q.len() == p.len(),
        "chunks of one length"
    );
    // Horner from the highest index down: q = (...(D_{n-1} * g + D_{n-2}) * g ...) + D_0.
    super::gf::gen_syndrome(data, p, q);
}

/// Updates P and Q for data chunk `i` changing from `old` to `new` (md's read-modify-write):
/// `P ^= old ^ new`, `Q ^= g^i * (old ^ new)`.
pub fn update(i: usize, old: &[u8], new: &[u8], p: &mut [u8], q: &mut [u8]) {
    // Multiplying is linear, so g^i (old ^ new) = g^i old ^ g^i new: no delta buffer.
    let g = pow_g(i);
    super::xor_into(p, old);
    super::xor_into(p, new);
    super::gf::mul_const::<true>(q, old, g);
    super::gf::mul_const::<true>(q, new, g);
}

/// What a stripe has lost, by syndrome index (`P` and `Q` are the parity chunks).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lost {
    Data(usize),
    P,
    Q,
}

/// Rebuilds the (at most two) `lost` chunks of a stripe in place. `data` holds the data chunks
/// in syndrome order, `p` and `q` the parity; lost chunks' contents are ignored and
/// overwritten.
pub fn recover(data: &mut [&mut [u8]], p: &mut [u8], q: &mut [u8], lost: &[Lost]) {
    assert!(lost.len() <= 2, "RAID6 rebuilds at most two chunks");
    let mut data_lost: Vec<usize> = lost
        .iter()
        .filter_map(|l| match l {
            Lost::Data(i) => Some(*i),
            _ => None,
        })
        .collect();
    data_lost.sort_unstable();
    let p_lost = lost.contains(&Lost::P);
    match data_lost.as_slice() {
        [] => {}
        [x] if !p_lost => from_p(data, p, *x),
        [x] => from_q(data, q, *x),
        [x, y] => two_data(data, p, q, *x, *y),
        _ => unreachable!("at most two chunks"),
    }
    // The data is whole now; a lost parity chunk is computed from it.
    let view: Vec<&[u8]> = data.iter().map(|d| &**d).collect();
    match (p_lost, lost.contains(&Lost::Q)) {
        (true, true) => gen_syndrome(&view, p, q),
        (true, false) => super::xor_all(p, &view),
        (false, true) => gen_syndrome(&view, &mut vec![0u8; p.len()], q),
        (false, false) => {}
    }
}

/// D_x = P ^ (the other data).
fn from_p(data: &mut [&mut [u8]], p: &[u8], x: usize) {
    let (before, rest) = data.split_at_mut(x);
    let (target, after) = rest.split_first_mut().expect("x is a data index");
    let mut srcs: Vec<&[u8]> = vec![p];
    srcs.extend(before.iter().chain(after.iter()).map(|d| &**d));
    super::xor_all(target, &srcs);
}

/// D_x = (Q ^ Q without D_x) / g^x.
fn from_q(data: &mut [&mut [u8]], q: &[u8], x: usize) {
    data[x].fill(0);
    let mut out = q_of(data);
    super::xor_into(&mut out, q);
    super::gf::mul_const::<false>(data[x], &out, inv(pow_g(x)));
}

/// Two data chunks x < y (md's raid6_2data_recov): with Pxy = P ^ (other data) = D_x ^ D_y
/// and Qxy = Q ^ (Q of other data) = g^x D_x ^ g^y D_y,
/// D_x = (g^(y-x) Pxy ^ g^-x Qxy) / (g^(y-x) ^ 1), D_y = Pxy ^ D_x.
fn two_data(data: &mut [&mut [u8]], p: &[u8], q: &[u8], x: usize, y: usize) {
    data[x].fill(0);
    data[y].fill(0);
    let mut pxy = p.to_vec();
    for d in data.iter() {
        super::xor_into(&mut pxy, d);
    }
    let mut qxy = q_of(data);
    super::xor_into(&mut qxy, q);
    let gyx = pow_g(y - x);
    let denom = inv(gyx ^ 1);
    let a = mul(gyx, denom);
    let b = mul(inv(pow_g(x)), denom);
    super::gf::mul_const::<false>(data[x], &pxy, a);
    super::gf::mul_const::<true>(data[x], &qxy, b);
    // D_y = Pxy ^ D_x, computed in Pxy (no longer needed) and copied over.
    super::xor_into(&mut pxy, data[x]);
    data[y].copy_from_slice(&pxy);
}

/// Q of `data` alone.
fn q_of(data: &[&mut [u8]]) -> Vec<u8> {
    let len = data[0].len();
    let view: Vec<&[u8]> = data.iter().map(|d| &**d).collect();
    let (mut p, mut q) = (vec![0u8; len], vec![0u8; len]);
    super::gf::gen_syndrome(&view, &mut p, &mut q);
    q
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use reed_solomon_erasure::galois_8;

    #[test]
    fn field_arithmetic_is_reed_solomon_erasures_gf256() {
        // Same field (0x11d, generator 2) as the crate's galois_8.
        for a in 0..=255u8 {
            for b in 0..=255u8 {
                assert_eq!(mul(a, b), galois_8::mul(a, b), "{a} * {b}");
            }
            if a != 0 {
                assert_eq!(mul(a, inv(a)), 1, "{a} * 1/{a}");
            }
        }
        for k in 0..600 {
            assert_eq!(pow_g(k), galois_8::exp(2, k), "g^{k}");
        }
    }

    /// Q by the definition, one byte at a time: sum of g^i * D_i.
    fn q_reference(data: &[Vec<u8>]) -> Vec<u8> {
        let mut q = vec![0u8; data[0].len()];
        for (i, d) in data.iter().enumerate() {
            for j in 0..q.len() {
                q[j] ^= galois_8::mul(galois_8::exp(2, i), d[j]);
            }
        }
        q
    }

    fn stripe() -> impl Strategy<Value = Vec<Vec<u8>>> {
        (2usize..10, 1usize..64).prop_flat_map(|(n, len)| {
            prop::collection::vec(prop::collection::vec(any::<u8>(), len), n)
        })
    }

    fn syndrome(data: &[Vec<u8>]) -> (Vec<u8>, Vec<u8>) {
        let view: Vec<&[u8]> = data.iter().map(|d| d.as_slice()).collect();
        let (mut p, mut q) = (vec![0; data[0].len()], vec![0; data[0].len()]);
        gen_syndrome(&view, &mut p, &mut q);
        (p, q)
    }

    proptest! {
        #[test]
        fn syndrome_matches_the_definition(data in stripe()) {
            let (p, q) = syndrome(&data);
            let mut p_ref = vec![0u8; p.len()];
            for d in &data {
                crate::parity::xor_into(&mut p_ref, d);
            }
            prop_assert_eq!(p, p_ref);
            prop_assert_eq!(q, q_reference(&data));
        }

        #[test]
        fn update_equals_recomputing(data in stripe(), i in 0usize..10, fill in any::<u8>()) {
            let i = i % data.len();
            let (mut p, mut q) = syndrome(&data);
            let mut changed = data.clone();
            changed[i].iter_mut().for_each(|b| *b ^= fill);
            update(i, &data[i], &changed[i], &mut p, &mut q);
            prop_assert_eq!((p, q), syndrome(&changed));
        }

        #[test]
        fn any_two_lost_chunks_come_back(data in stripe(), a in 0usize..12, b in 0usize..12) {
            let n = data.len();
            let pick = |k: usize| match k % (n + 2) {
                k if k == n => Lost::P,
                k if k == n + 1 => Lost::Q,
                k => Lost::Data(k),
            };
            let mut lost = vec![pick(a)];
            if pick(b) != pick(a) {
                lost.push(pick(b));
            }
            let (p, q) = syndrome(&data);
            let mut broken = data.clone();
            let (mut p2, mut q2) = (p.clone(), q.clone());
            for l in &lost {
                match l {
                    Lost::Data(i) => broken[*i].fill(0xa5),
                    Lost::P => p2.fill(0x5a),
                    Lost::Q => q2.fill(0x3c),
                }
            }
            let mut view: Vec<&mut [u8]> = broken.iter_mut().map(|d| d.as_mut_slice()).collect();
            recover(&mut view, &mut p2, &mut q2, &lost);
            prop_assert_eq!(&broken, &data, "data after losing {:?}", lost);
            prop_assert_eq!((p2, q2), (p, q), "parity after losing {:?}", lost);
        }
    }
}
