//! k+m erasure coding for the arrays md has no level for: each stripe row holds k data chunks
//! and m parity chunks (m from 1 to 4), and any m of the k+m chunks can be had again from the
//! others.
//!
//! The code is `reed_solomon_erasure`'s (GF(2^8), the same field as RAID6's Q; its systematic
//! matrix). Its parity bytes are our on-disk format, so a known-answer test pins them: a new
//! version of the crate that encoded differently would make existing arrays unreadable, and
//! that test fails first. Encoding, which every write pays, runs on our own vector kernels
//! (`gf::mul_const`) with the crate's coefficients, read off it once per code by encoding unit
//! rows; reconstruction, which only degraded rows pay, is the crate's. Not with its
//! `simd-accel` feature: that builds here, but compiles its C kernels with `-march=haswell`
//! and no run-time check, so a degraded read on an older x86-64 would die of SIGILL; our own
//! kernels pick AVX2 at run time instead.

use reed_solomon_erasure::galois_8::ReedSolomon;

/// The most parity chunks a row may have (md stops at 2, ZFS raidz at 3).
pub const MAX_PARITY: usize = 4;

/// Why a k+m code cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EcError {
    #[error("{0} parity chunks per row: use 1 to {MAX_PARITY}")]
    Parity(usize),
    #[error("{data} data chunks with {parity} parity: a row needs at least one data chunk and at most 256 chunks in all")]
    Width { data: usize, parity: usize },
}

/// A k+m code.
pub struct ErasureCode {
    data: usize,
    parity: usize,
    rs: ReedSolomon,
    /// `coeffs[j][i]`: what data chunk i is multiplied by in parity chunk j.
    coeffs: Vec<Vec<u8>>,
}

impl ErasureCode {
    /// The code with `data` data chunks and `parity` parity chunks per row.
    pub fn new(data: usize, parity: usize) -> Result<ErasureCode, EcError> {
        if !(1..=MAX_PARITY).contains(&parity) {
            return Err(EcError::Parity(parity));
        }
        let bad_width = || EcError::Width { data, parity };
        if data == 0 || data + parity > 256 {
            return Err(bad_width());
        }
        let rs = ReedSolomon::new(data, parity).map_err(|_| bad_width())?;
        // Column i of the matrix: the parity of a row whose only non-zero byte is a 1 in chunk i.
        let mut columns = Vec::with_capacity(data);
        for i in 0..data {
            let unit: Vec<[u8; 1]> = (0..data).map(|x| [u8::from(x == i)]).collect();
            let mut out = vec![[0u8; 1]; parity];
            rs.encode_sep(&unit, &mut out).map_err(|_| bad_width())?;
            columns.push(out);
        }
        let coeffs = (0..parity)
            .map(|j| columns.iter().map(|column| column[j][0]).collect())
            .collect();
        Ok(ErasureCode {
            data,
            parity,
            rs,
            coeffs,
        })
    }

    pub fn data_chunks(&self) -> usize {
        self.data
    }

    pub fn parity_chunks(&self) -> usize {
        self.parity
    }

    /// Computes the parity chunks of `data` (k chunks, all as long as each parity chunk).
    ///
    /// # Panics
    /// If the chunk counts or lengths do not match the code.
    pub fn encode(&self, data: &[&[u8]], parity: &mut [&mut [u8]]) {
        assert_eq!(data.len(), self.data, "data chunk count");
        assert_eq!(parity.len(), self.parity, "parity chunk count");
        for (p, row) in parity.iter_mut().zip(&self.coeffs) {
            super::gf::mul_const::<false>(p, data[0], row[0]);
            for (d, &c) in data.iter().zip(row).skip(1) {
                super::gf::mul_const::<true>(p, d, c);
            }
        }
    }

    /// Updates the parity chunks for data chunk `index` changing from `old` to `new`:
    /// `parity_j ^= c_ji * (old ^ new)`, done as two multiplies (the code is linear) so no
    /// delta buffer is needed.
    ///
    /// # Panics
    /// If the counts or lengths do not match.
    pub fn update(&self, index: usize, old: &[u8], new: &[u8], parity: &mut [&mut [u8]]) {
        assert!(index < self.data, "data index {index} out of range");
        assert_eq!(parity.len(), self.parity, "parity chunk count");
        for (p, row) in parity.iter_mut().zip(&self.coeffs) {
            super::gf::mul_const::<true>(p, old, row[index]);
            super::gf::mul_const::<true>(p, new, row[index]);
        }
    }

    /// Whether parity chunk 0 is the plain XOR of the data (every coefficient 1), so one
    /// lost data chunk can be had by XOR alone.
    pub fn first_parity_is_xor(&self) -> bool {
        self.coeffs[0].iter().all(|&c| c == 1)
    }

    /// Rebuilds the chunks whose `present` flag is false (data first, then parity, in row
    /// order) from the others. At most m may be missing.
    ///
    /// # Panics
    /// If more than m chunks are missing, or the counts or lengths do not match the code.
    pub fn reconstruct(&self, chunks: &mut [&mut [u8]], present: &[bool]) {
        assert_eq!(chunks.len(), self.data + self.parity, "chunk count");
        assert_eq!(present.len(), chunks.len(), "one flag per chunk");
        let missing = present.iter().filter(|p| !**p).count();
        assert!(
            missing <= self.parity,
            "{missing} chunks missing, the code rebuilds {}",
            self.parity
        );
        let mut shards: Vec<(&mut [u8], bool)> = chunks
            .iter_mut()
            .zip(present)
            .map(|(c, &p)| (&mut **c, p))
            .collect();
        self.rs
            .reconstruct(&mut shards)
            .expect("at most m chunks missing, lengths equal");
    }

    /// Whether the parity chunks are those of the data chunks.
    pub fn verify(&self, chunks: &[&[u8]]) -> bool {
        self.rs.verify(chunks).unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn row(data: usize, len: usize, seed: u8) -> Vec<Vec<u8>> {
        (0..data)
            .map(|i| {
                (0..len)
                    .map(|j| (j as u8).wrapping_mul(31) ^ (i as u8).wrapping_mul(7) ^ seed)
                    .collect()
            })
            .collect()
    }

    fn encoded(code: &ErasureCode, data: &[Vec<u8>]) -> Vec<Vec<u8>> {
        let len = data[0].len();
        let mut parity = vec![vec![0u8; len]; code.parity_chunks()];
        let view: Vec<&[u8]> = data.iter().map(|d| d.as_slice()).collect();
        let mut out: Vec<&mut [u8]> = parity.iter_mut().map(|p| p.as_mut_slice()).collect();
        code.encode(&view, &mut out);
        parity
    }

    /// The on-disk format: these bytes must never change (see the module doc).
    #[test]
    fn parity_bytes_are_pinned() {
        let code = ErasureCode::new(4, 3).unwrap();
        let parity = encoded(&code, &row(4, 8, 0x5a));
        let hex: Vec<String> = parity
            .iter()
            .map(|p| p.iter().map(|b| format!("{b:02x}")).collect())
            .collect();
        assert_eq!(hex, PINNED_4_3, "reed-solomon-erasure changed its encoding");
    }

    /// What `parity_bytes_are_pinned` expects (computed once with reed-solomon-erasure 6.0).
    const PINNED_4_3: [&str; 3] = ["ebf4d5b697705132", "a4bb9af9d83f1e7d", "051a3b58799ebfdc"];

    proptest! {
        /// Our vector encode gives the crate's parity bytes exactly.
        #[test]
        fn encode_is_the_crates(data in 1usize..12, parity in 1usize..=MAX_PARITY, len in 1usize..300, seed in any::<u8>()) {
            let code = ErasureCode::new(data, parity).unwrap();
            let d = row(data, len, seed);
            let ours = encoded(&code, &d);
            let view: Vec<&[u8]> = d.iter().map(|c| c.as_slice()).collect();
            let mut theirs = vec![vec![0u8; len]; parity];
            code.rs.encode_sep(&view, &mut theirs).unwrap();
            prop_assert_eq!(ours, theirs);
        }
    }

    #[test]
    fn refuses_what_it_cannot_build() {
        assert_eq!(ErasureCode::new(4, 0).err(), Some(EcError::Parity(0)));
        assert_eq!(ErasureCode::new(4, 5).err(), Some(EcError::Parity(5)));
        assert!(ErasureCode::new(0, 2).is_err());
        assert!(ErasureCode::new(253, 4).is_err());
        assert!(ErasureCode::new(252, 4).is_ok());
    }

    proptest! {
        /// Any m chunks of a row (data or parity) come back byte for byte.
        #[test]
        fn any_m_lost_chunks_come_back(
            data in 1usize..12,
            parity in 1usize..=MAX_PARITY,
            len in 1usize..200,
            seed in any::<u8>(),
            lost_seed in any::<u64>(),
        ) {
            let code = ErasureCode::new(data, parity).unwrap();
            let d = row(data, len, seed);
            let p = encoded(&code, &d);
            let whole: Vec<Vec<u8>> = d.iter().chain(&p).cloned().collect();
            let mut present = vec![true; data + parity];
            let mut pick = lost_seed;
            for _ in 0..parity {
                present[(pick % (data + parity) as u64) as usize] = false;
                pick = pick.rotate_left(17) ^ 0x9e37_79b9;
            }
            let mut broken = whole.clone();
            for (c, ok) in broken.iter_mut().zip(&present) {
                if !ok {
                    c.fill(0);
                }
            }
            let mut view: Vec<&mut [u8]> = broken.iter_mut().map(|c| c.as_mut_slice()).collect();
            code.reconstruct(&mut view, &present);
            prop_assert_eq!(&broken, &whole);
            let all: Vec<&[u8]> = whole.iter().map(|c| c.as_slice()).collect();
            prop_assert!(code.verify(&all));
        }
    }
}
