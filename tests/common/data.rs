//! What the tests write, and reading it back.

use raidcore::buf::BufSlice;
use raidcore::raid::Array;

/// Deterministic, position-dependent contents (a different `seed` gives different bytes).
pub fn pattern(len: usize, seed: u64) -> BufSlice {
    BufSlice::filled(len, |b| {
        for (i, w) in b.chunks_exact_mut(8).enumerate() {
            w.copy_from_slice(&((i as u64).wrapping_mul(0x9E37_79B9) ^ seed).to_le_bytes());
        }
    })
}

/// Reads `len` bytes at `offset` through the array.
pub async fn read_array(array: &Array, offset: u64, len: usize) -> raidcore::Result<Vec<u8>> {
    let b = BufSlice::zeroed(len);
    array.read(offset, b.clone()).await?;
    Ok(b.to_vec())
}

/// Writes `pattern(size, seed)` over the whole array and returns it: the model of what the
/// array holds, for the test to keep up to date.
pub async fn fill(array: &Array, seed: u64) -> Vec<u8> {
    let size = array.size_bytes() as usize;
    array.write(0, pattern(size, seed), false).await.unwrap();
    pattern(size, seed).to_vec()
}

/// Writes `data` at `at` through the array and into `model`.
pub async fn write_model(array: &Array, model: &mut [u8], at: u64, data: BufSlice) {
    array.write(at, data.clone(), false).await.unwrap();
    model[at as usize..at as usize + data.len()].copy_from_slice(&data.to_vec());
}

/// The number in the environment variable `name`, or `default` when it is unset or not one
/// (how the long-running tests are told to run longer).
pub fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
