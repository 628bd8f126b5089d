//! Every engine usable on this CPU (not only the selected one) is compared with the byte-wise
//! reference on random lengths, random source counts and unaligned slice starts.

use super::*;
use proptest::prelude::*;

/// Deterministic filler so a case is reproducible from its parameters.
fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

/// Sources of `len` bytes starting `shift` bytes into their buffers (so unaligned).
fn sources(count: usize, len: usize, shift: usize, seed: u64) -> Vec<Vec<u8>> {
    (0..count)
        .map(|index| pattern(seed + index as u64, len + shift))
        .collect()
}

fn engines() -> Vec<Engine> {
    Engine::available().collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn xor_all_matches_reference(
        count in 0usize..=11,
        len in prop_oneof![0usize..300, 0usize..20_000],
        src_shift in 0usize..32,
        dst_shift in 0usize..32,
        seed: u64,
    ) {
        let buffers = sources(count, len, src_shift, seed);
        let srcs: Vec<&[u8]> = buffers.iter().map(|b| &b[src_shift..]).collect();
        let mut expected = vec![0u8; len];
        xor_reference(&mut expected, &srcs);
        for engine in engines() {
            // Stale contents must not leak into the result.
            let mut out = pattern(!seed, len + dst_shift);
            engine.xor_all(&mut out[dst_shift..], &srcs);
            prop_assert_eq!(&out[dst_shift..], &expected[..], "engine {}", engine.name());
            prop_assert_eq!(&out[..dst_shift], &pattern(!seed, dst_shift)[..]);
        }
        let mut out = vec![0xA5; len];
        xor_all(&mut out, &srcs);
        prop_assert_eq!(out, expected);
    }

    #[test]
    fn xor_into_matches_reference(
        len in prop_oneof![0usize..300, 0usize..20_000],
        src_shift in 0usize..32,
        dst_shift in 0usize..32,
        seed: u64,
    ) {
        let src_buffer = pattern(seed, len + src_shift);
        let src = &src_buffer[src_shift..];
        let original = pattern(seed ^ 0x55, len + dst_shift);
        let mut expected = vec![0u8; len];
        xor_reference(&mut expected, &[&original[dst_shift..], src]);
        for engine in engines() {
            let mut out = original.clone();
            engine.xor_into(&mut out[dst_shift..], src);
            prop_assert_eq!(&out[dst_shift..], &expected[..], "engine {}", engine.name());
            prop_assert_eq!(&out[..dst_shift], &original[..dst_shift]);
        }
        let mut out = original[dst_shift..].to_vec();
        xor_into(&mut out, src);
        prop_assert_eq!(out, expected);
    }
}

#[test]
fn reference_is_plain_xor() {
    let mut out = [0xFFu8; 3];
    xor_reference(&mut out, &[&[1, 2, 3], &[1, 0, 0xF0], &[0, 2, 0x0F]]);
    assert_eq!(out, [0, 0, 0xFC]);
    xor_reference(&mut out, &[]);
    assert_eq!(out, [0, 0, 0]);
}

#[test]
fn parity_rebuilds_a_lost_chunk() {
    let data = sources(8, 64 * 1024 + 5, 0, 7);
    let refs: Vec<&[u8]> = data.iter().map(Vec::as_slice).collect();
    let mut parity = vec![0u8; refs[0].len()];
    xor_all(&mut parity, &refs);
    let mut survivors: Vec<&[u8]> = refs.clone();
    survivors[3] = &parity;
    let mut rebuilt = vec![0u8; parity.len()];
    xor_all(&mut rebuilt, &survivors);
    assert_eq!(rebuilt, data[3]);
}

#[test]
fn selected_engine_is_the_fastest_available() {
    let name = implementation_name();
    assert_eq!(name, engines()[0].name());
    #[cfg(target_arch = "x86_64")]
    assert_eq!(name == "avx2", is_x86_feature_detected!("avx2"));
    assert!(engines().iter().any(|engine| engine.name() == "u64"));
}

#[test]
#[should_panic(expected = "length mismatch")]
fn xor_all_refuses_short_source() {
    let mut out = [0u8; 8];
    xor_all(&mut out, &[&[0u8; 8], &[0u8; 7]]);
}

#[test]
#[should_panic(expected = "length mismatch")]
fn xor_into_refuses_short_source() {
    xor_into(&mut [0u8; 8], &[0u8; 9]);
}
