//! The model: every sector's version history, and self-checking sector contents.

use crate::*;

/// The version history of every sector, shared by the clients and the checker.
pub(crate) struct Model {
    /// Per sector: generations in the order they were issued (0 = zeroes, as created).
    pub(crate) issued: Vec<Vec<u64>>,
    /// Per sector: index into `issued` of the newest version acknowledged.
    pub(crate) acked: Vec<usize>,
    /// Per sector: index of the newest version known durable (acknowledged before an
    /// acknowledged flush began, or acknowledged with FUA).
    pub(crate) durable: Vec<usize>,
    pub(crate) next_gen: u64,
    /// Reads that were checked, for the report.
    pub(crate) reads_checked: u64,
}

impl Model {
    /// What the final check needs (so no borrow is held across its awaits).
    pub(crate) fn clone_for_check(&self) -> Model {
        Model {
            issued: self.issued.clone(),
            acked: self.acked.clone(),
            durable: self.durable.clone(),
            next_gen: self.next_gen,
            reads_checked: self.reads_checked,
        }
    }

    pub(crate) fn new(sectors: usize) -> Model {
        Model {
            issued: vec![vec![0]; sectors],
            acked: vec![0; sectors],
            durable: vec![0; sectors],
            next_gen: 1,
            reads_checked: 0,
        }
    }
}

/// Sector `s` of version `gen`: words of (s, gen, checksum), so any mix-up is detected.
pub(crate) fn sector_bytes(s: u64, gen: u64, out: &mut [u8]) {
    if gen == 0 {
        out.fill(0);
        return;
    }
    let sum = s.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ gen.wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
    for (i, w) in out.chunks_exact_mut(8).enumerate() {
        let v = match i % 3 {
            0 => s,
            1 => gen,
            _ => sum ^ i as u64,
        };
        w.copy_from_slice(&v.to_le_bytes());
    }
}

/// The generation sector `s` holds, or None if the bytes are no version of it.
pub(crate) fn decode(s: u64, bytes: &[u8]) -> Option<u64> {
    if bytes.iter().all(|&b| b == 0) {
        return Some(0);
    }
    let gen = u64::from_le_bytes(bytes[8..16].try_into().unwrap());
    let mut want = vec![0u8; SECTOR];
    sector_bytes(s, gen, &mut want);
    (want == bytes).then_some(gen)
}
