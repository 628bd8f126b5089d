//! RAID6 placement (md `raid5_compute_sector`, level 6): per stripe row one P chunk (XOR), one
//! Q chunk (Reed-Solomon syndrome) and `members - 2` data chunks, all at the same member offset.
//! Left-symmetric (md's default), N=5:
//!
//! ```text
//!   stripe0: Q  D0 D1 D2 P
//!   stripe1: D3 D4 D5 P  Q
//!   stripe2: D7 D8 P  Q  D6
//! ```
//!
//! The `-6` algorithms are the RAID5 algorithm of the same name over the first N-1 members,
//! with Q always on the last one. Q's coefficients follow md's syndrome order, which is not
//! always the data order: md walks the members from the one after Q (from member 0 when Q is
//! the last) and numbers the data chunks it meets (lib/raid6, `raid6_d0`).

use super::raid5;
use super::{Raid5Algorithm, Raid6Algorithm};

/// Where P and Q of `stripe` are, in an array of `members` slots.
pub(super) fn parity_slots(
    algorithm: Raid6Algorithm,
    members: usize,
    stripe: u64,
) -> (usize, usize) {
    let n = members as u64;
    let data = members - 2;
    let down = members - 1 - (stripe % n) as usize;
    let up = (stripe % n) as usize;
    let beside = |p: usize| (p, (p + 1) % members);
    match algorithm {
        Raid6Algorithm::LeftAsymmetric | Raid6Algorithm::LeftSymmetric => beside(down),
        Raid6Algorithm::RightAsymmetric | Raid6Algorithm::RightSymmetric => beside(up),
        Raid6Algorithm::ParityFirst => (0, 1),
        Raid6Algorithm::ParityLast => (data, data + 1),
        _ => {
            let p = raid5::parity_slot(raid5_part(algorithm), members - 1, stripe);
            (p, members - 1)
        }
    }
}

/// The slot of data chunk `data_index` (`0..members-2`) of `stripe`.
pub(super) fn data_slot(
    algorithm: Raid6Algorithm,
    members: usize,
    stripe: u64,
    data_index: usize,
) -> usize {
    let (p, q) = parity_slots(algorithm, members, stripe);
    match algorithm {
        // Asymmetric: data in slot order around P and Q, which sit side by side, or with Q
        // wrapped to slot 0 when P is last.
        Raid6Algorithm::LeftAsymmetric | Raid6Algorithm::RightAsymmetric => {
            if q == 0 {
                data_index + 1
            } else if data_index >= p {
                data_index + 2
            } else {
                data_index
            }
        }
        Raid6Algorithm::LeftSymmetric | Raid6Algorithm::RightSymmetric => {
            (p + 2 + data_index) % members
        }
        Raid6Algorithm::ParityFirst => data_index + 2,
        Raid6Algorithm::ParityLast => data_index,
        _ => raid5::data_slot(raid5_part(algorithm), members - 1, stripe, data_index),
    }
}

/// The data index `slot` holds in `stripe`, or None for P and Q.
pub(super) fn data_index(
    algorithm: Raid6Algorithm,
    members: usize,
    stripe: u64,
    slot: usize,
) -> Option<usize> {
    let (p, q) = data_slot_beside(algorithm, members, stripe, slot)?;
    Some(match algorithm {
        Raid6Algorithm::LeftAsymmetric | Raid6Algorithm::RightAsymmetric => {
            if q == 0 {
                slot - 1
            } else if slot > q {
                slot - 2
            } else {
                slot
            }
        }
        Raid6Algorithm::LeftSymmetric | Raid6Algorithm::RightSymmetric => {
            (slot + 2 * members - p - 2) % members
        }
        Raid6Algorithm::ParityFirst => slot - 2,
        Raid6Algorithm::ParityLast => slot,
        _ => raid5::data_index(raid5_part(algorithm), members - 1, stripe, slot)?,
    })
}

/// The position of data slot `slot` in md's syndrome order for `stripe` (its Q coefficient
/// is g^position), or None for P and Q.
pub(super) fn syndrome_index(
    algorithm: Raid6Algorithm,
    members: usize,
    stripe: u64,
    slot: usize,
) -> Option<usize> {
    let (p, q) = data_slot_beside(algorithm, members, stripe, slot)?;
    let first = walk_start(members, q);
    let walked = |s: usize| (s + members - first) % members;
    let at = walked(slot);
    Some(at - usize::from(walked(p) < at) - usize::from(walked(q) < at))
}

/// The data slot at `position` in md's syndrome order for `stripe` (the inverse of
/// `syndrome_index`).
pub(super) fn syndrome_slot(
    algorithm: Raid6Algorithm,
    members: usize,
    stripe: u64,
    position: usize,
) -> usize {
    let (p, q) = parity_slots(algorithm, members, stripe);
    let first = walk_start(members, q);
    let walked = |s: usize| (s + members - first) % members;
    let (near, far) = (walked(p).min(walked(q)), walked(p).max(walked(q)));
    let mut at = position;
    if at >= near {
        at += 1;
    }
    if at >= far {
        at += 1;
    }
    (first + at) % members
}

/// Where md's syndrome walk starts: the member after Q (member 0 when Q is the last).
fn walk_start(members: usize, q: usize) -> usize {
    if q == members - 1 {
        0
    } else {
        q + 1
    }
}

/// P and Q of `stripe`, or None when `slot` is one of them.
fn data_slot_beside(
    algorithm: Raid6Algorithm,
    members: usize,
    stripe: u64,
    slot: usize,
) -> Option<(usize, usize)> {
    let (p, q) = parity_slots(algorithm, members, stripe);
    (slot != p && slot != q).then_some((p, q))
}

/// The RAID5 algorithm a `-6` algorithm uses over the first N-1 members.
fn raid5_part(algorithm: Raid6Algorithm) -> Raid5Algorithm {
    match algorithm {
        Raid6Algorithm::LeftAsymmetric6 => Raid5Algorithm::LeftAsymmetric,
        Raid6Algorithm::RightAsymmetric6 => Raid5Algorithm::RightAsymmetric,
        Raid6Algorithm::LeftSymmetric6 => Raid5Algorithm::LeftSymmetric,
        Raid6Algorithm::RightSymmetric6 => Raid5Algorithm::RightSymmetric,
        Raid6Algorithm::ParityFirst6 => Raid5Algorithm::ParityFirst,
        other => unreachable!("{other:?} is not a -6 algorithm"),
    }
}
