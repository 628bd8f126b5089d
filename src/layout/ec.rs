//! k+m placement (ours; md has no such level): per stripe row `parity` parity chunks side by
//! side and `members - parity` data chunks after them, all at the same member offset, the
//! whole row turning one slot left per stripe as md's left-symmetric does. With one parity
//! chunk this is RAID5 left-symmetric, with two RAID6 left-symmetric (only the code differs).
//! N=6, m=3:
//!
//! ```text
//!   stripe0: P2 P3 D0 D1 D2 P1
//!   stripe1: P3 D3 D4 D5 P1 P2
//!   stripe2: D6 D7 D8 P1 P2 P3
//! ```
//!
//! Data chunks are in the code's order: data index i is the code's data chunk i.

/// The slot of parity chunk 0 of `stripe`.
fn first_parity_slot(members: usize, stripe: u64) -> usize {
    members - 1 - (stripe % members as u64) as usize
}

/// Slot of parity chunk `index` (`0..parity`) of `stripe`.
pub(super) fn parity_slot(parity: usize, members: usize, stripe: u64, index: usize) -> usize {
    debug_assert!(index < parity);
    (first_parity_slot(members, stripe) + index) % members
}

/// Slot of data chunk `data_index` of `stripe`.
pub(super) fn data_slot(parity: usize, members: usize, stripe: u64, data_index: usize) -> usize {
    (first_parity_slot(members, stripe) + parity + data_index) % members
}

/// Where `slot` sits in the row of `stripe`: `Ok(data index)` or `Err(parity index)`.
pub(super) fn role(
    parity: usize,
    members: usize,
    stripe: u64,
    slot: usize,
) -> Result<usize, usize> {
    let from_first = (slot + members - first_parity_slot(members, stripe)) % members;
    match from_first.checked_sub(parity) {
        Some(data_index) => Ok(data_index),
        None => Err(from_first),
    }
}
