//! A fast hash for the engine's `u64`-keyed maps (stripe locks, cache blocks), which every
//! request touches: one 64x64->128 multiply of the key, mixed with a per-process random seed,
//! folded to 64 bits. std's SipHash costs several times that; this one still keeps a client
//! from predicting which stripe numbers share a bucket.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::OnceLock;

/// A `HashMap` keyed by `u64` with [`KeyHash`].
pub type U64Map<V> = HashMap<u64, V, KeyHash>;

/// Builds [`U64Hasher`]s seeded once per process.
#[derive(Clone, Copy, Debug)]
pub struct KeyHash {
    seed: u64,
}

impl Default for KeyHash {
    fn default() -> KeyHash {
        static SEED: OnceLock<u64> = OnceLock::new();
        let seed =
            *SEED.get_or_init(|| std::collections::hash_map::RandomState::new().hash_one(0u64));
        KeyHash { seed }
    }
}

impl BuildHasher for KeyHash {
    type Hasher = U64Hasher;
    fn build_hasher(&self) -> U64Hasher {
        U64Hasher { state: self.seed }
    }
}

/// The hasher: meant for one `u64` (other input is folded in a word at a time).
pub struct U64Hasher {
    state: u64,
}

const MULTIPLIER: u64 = 0x9e37_79b9_7f4a_7c15;

fn fold(a: u64, b: u64) -> u64 {
    let wide = u128::from(a) * u128::from(b);
    (wide as u64) ^ ((wide >> 64) as u64)
}

impl Hasher for U64Hasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.state = fold(self.state ^ n, MULTIPLIER);
    }

    fn finish(&self) -> u64 {
        fold(self.state, MULTIPLIER ^ 0x2d35_8dcc_aa6c_78a5)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Goal: consecutive stripe numbers spread over the buckets (the low bits hashbrown
    /// indexes with and the top bits it tags with), and the map works as a map.
    #[test]
    fn consecutive_keys_spread_and_the_map_works() {
        let build = KeyHash::default();
        let mut low = [0u32; 64];
        let mut top = [0u32; 128];
        for key in 0..64 * 1024u64 {
            let h = build.hash_one(key);
            low[(h & 63) as usize] += 1;
            top[(h >> 57) as usize] += 1;
        }
        assert!(low.iter().all(|&n| (768..=1280).contains(&n)), "{low:?}");
        assert!(top.iter().all(|&n| (384..=640).contains(&n)), "{top:?}");
        let mut map: U64Map<u64> = U64Map::default();
        for key in 0..1000 {
            map.insert(key * 4096, key);
        }
        assert_eq!(map.len(), 1000);
        assert_eq!(map.remove(&(999 * 4096)), Some(999));
        assert_eq!(map.get(&4096), Some(&1));
    }
}
