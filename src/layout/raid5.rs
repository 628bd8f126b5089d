//! RAID5 parity rotation (md `raid5_compute_sector`, the six md algorithms).
//!
//! A stripe is one chunk-sized row across all N members: N-1 data chunks and one parity chunk,
//! all at the same member offset `stripe * chunk`. The algorithm only decides which slot gets
//! the parity and in which slot order data index 0..N-1 follows. Left-symmetric, N=4:
//!
//! ```text
//!   stripe0: D0  D1  D2  P
//!   stripe1: D4  D5  P   D3
//!   stripe2: D8  P   D6  D7
//!   stripe3: P   D9  D10 D11
//! ```

use super::Raid5Algorithm;

/// The slot holding the parity of `stripe` in an array of `members` slots.
pub(super) fn parity_slot(algorithm: Raid5Algorithm, members: usize, stripe: u64) -> usize {
    let n = members as u64;
    let rotation = (stripe % n) as usize;
    match algorithm {
        Raid5Algorithm::LeftAsymmetric | Raid5Algorithm::LeftSymmetric => members - 1 - rotation,
        Raid5Algorithm::RightAsymmetric | Raid5Algorithm::RightSymmetric => rotation,
        Raid5Algorithm::ParityFirst => 0,
        Raid5Algorithm::ParityLast => members - 1,
    }
}

/// The slot holding data chunk `data_index` (0..members-1) of `stripe`.
pub(super) fn data_slot(
    algorithm: Raid5Algorithm,
    members: usize,
    stripe: u64,
    data_index: usize,
) -> usize {
    let parity = parity_slot(algorithm, members, stripe);
    match algorithm {
        // Asymmetric: data fills the slots in order, stepping over the parity slot.
        Raid5Algorithm::LeftAsymmetric | Raid5Algorithm::RightAsymmetric => {
            data_index + usize::from(data_index >= parity)
        }
        // Symmetric: data starts right after parity and wraps, so consecutive stripes read
        // the members round-robin.
        Raid5Algorithm::LeftSymmetric | Raid5Algorithm::RightSymmetric => {
            (parity + 1 + data_index) % members
        }
        Raid5Algorithm::ParityFirst => data_index + 1,
        Raid5Algorithm::ParityLast => data_index,
    }
}

/// The data index stored in `slot` for `stripe`, or `None` when `slot` holds the parity.
pub(super) fn data_index(
    algorithm: Raid5Algorithm,
    members: usize,
    stripe: u64,
    slot: usize,
) -> Option<usize> {
    let parity = parity_slot(algorithm, members, stripe);
    if slot == parity {
        return None;
    }
    Some(match algorithm {
        Raid5Algorithm::LeftAsymmetric | Raid5Algorithm::RightAsymmetric => {
            slot - usize::from(slot > parity)
        }
        Raid5Algorithm::LeftSymmetric | Raid5Algorithm::RightSymmetric => {
            (slot + members - parity - 1) % members
        }
        Raid5Algorithm::ParityFirst => slot - 1,
        Raid5Algorithm::ParityLast => slot,
    })
}
