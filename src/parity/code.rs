//! One interface over the codes of rows with more than one parity chunk: md's RAID6 P+Q and
//! the k+m erasure code. The engine works on a row as data chunks in the code's order plus
//! parity chunks in theirs, and asks the code to encode, update or recover them; which code it
//! is matters only here.

use super::ec::{EcError, ErasureCode};
use super::raid6;

/// A chunk of a row, by its place in the code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Chunk {
    /// Data chunk at this position of the code's order (RAID6: md's syndrome order).
    Data(usize),
    /// Parity chunk with this index (RAID6: 0 is P, 1 is Q).
    Parity(usize),
}

/// The code of a RAID6 or k+m row.
pub enum RowCode {
    /// md's P (XOR) and Q (syndrome).
    Raid6,
    /// k+m Reed-Solomon.
    Ec(Box<ErasureCode>),
}

impl RowCode {
    /// The k+m code with `data` data and `parity` parity chunks per row.
    pub fn ec(data: usize, parity: usize) -> Result<RowCode, EcError> {
        ErasureCode::new(data, parity).map(|code| RowCode::Ec(Box::new(code)))
    }

    /// Parity chunks per row.
    pub fn parities(&self) -> usize {
        match self {
            RowCode::Raid6 => 2,
            RowCode::Ec(code) => code.parity_chunks(),
        }
    }

    /// Whether parity chunk 0 is the XOR of the data, so one lost chunk among the data and
    /// parity 0 is their XOR and no other parity need be read.
    pub fn first_parity_is_xor(&self) -> bool {
        match self {
            RowCode::Raid6 => true,
            RowCode::Ec(code) => code.first_parity_is_xor(),
        }
    }

    /// Computes every parity chunk from the data chunks (all of one length).
    pub fn encode(&self, data: &[&[u8]], parity: &mut [&mut [u8]]) {
        assert_eq!(parity.len(), self.parities(), "parity chunk count");
        match self {
            RowCode::Raid6 => {
                let [p, q] = parity else { unreachable!() };
                raid6::gen_syndrome(data, p, q);
            }
            RowCode::Ec(code) => code.encode(data, parity),
        }
    }

    /// Updates the parity chunks for data chunk `position` changing from `old` to `new`.
    pub fn update(&self, position: usize, old: &[u8], new: &[u8], parity: &mut [&mut [u8]]) {
        assert_eq!(parity.len(), self.parities(), "parity chunk count");
        match self {
            RowCode::Raid6 => {
                let [p, q] = parity else { unreachable!() };
                raid6::update(position, old, new, p, q);
            }
            RowCode::Ec(code) => code.update(position, old, new, parity),
        }
    }

    /// Rebuilds the `lost` chunks (at most `parities()`) in place from the others; their
    /// contents on entry are ignored.
    ///
    /// # Panics
    /// If more chunks are lost than the code covers, or counts or lengths do not match.
    pub fn recover(&self, data: &mut [&mut [u8]], parity: &mut [&mut [u8]], lost: &[Chunk]) {
        assert!(lost.len() <= self.parities(), "{} chunks lost", lost.len());
        match self {
            RowCode::Raid6 => {
                let lost: Vec<raid6::Lost> = lost
                    .iter()
                    .map(|chunk| match *chunk {
                        Chunk::Data(i) => raid6::Lost::Data(i),
                        Chunk::Parity(0) => raid6::Lost::P,
                        Chunk::Parity(_) => raid6::Lost::Q,
                    })
                    .collect();
                let [p, q] = parity else { unreachable!() };
                raid6::recover(data, p, q, &lost);
            }
            RowCode::Ec(code) => {
                let k = data.len();
                let mut present = vec![true; k + parity.len()];
                for chunk in lost {
                    match *chunk {
                        Chunk::Data(i) => present[i] = false,
                        Chunk::Parity(j) => present[k + j] = false,
                    }
                }
                let mut chunks: Vec<&mut [u8]> = data
                    .iter_mut()
                    .map(|c| &mut **c)
                    .chain(parity.iter_mut().map(|c| &mut **c))
                    .collect();
                code.reconstruct(&mut chunks, &present);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn codes() -> Vec<(RowCode, usize)> {
        let mut codes = vec![(RowCode::Raid6, 4)];
        for m in 1..=4 {
            codes.push((RowCode::ec(5, m).unwrap(), 5));
        }
        codes
    }

    fn encoded(code: &RowCode, data: &[Vec<u8>]) -> Vec<Vec<u8>> {
        let len = data[0].len();
        let mut parity = vec![vec![0u8; len]; code.parities()];
        let views: Vec<&[u8]> = data.iter().map(Vec::as_slice).collect();
        let mut outs: Vec<&mut [u8]> = parity.iter_mut().map(Vec::as_mut_slice).collect();
        code.encode(&views, &mut outs);
        parity
    }

    proptest! {
        /// Goal: for every code, updating parity piece by piece gives what encoding the new
        /// data gives, and any set of at most m lost chunks comes back byte for byte.
        #[test]
        fn update_matches_encode_and_any_m_chunks_recover(
            seed in any::<u64>(),
            len in 1usize..200,
            at in 0usize..5,
            loss in proptest::collection::vec(0usize..9, 0..4),
        ) {
            for (code, k) in codes() {
                let byte = |i: usize| (seed.wrapping_mul(i as u64 + 7) >> 13) as u8;
                let data: Vec<Vec<u8>> =
                    (0..k).map(|d| (0..len).map(|i| byte(d * 1000 + i)).collect()).collect();
                let parity = encoded(&code, &data);
                let (at, mut new_data) = (at % k, data.clone());
                new_data[at] = (0..len).map(|i| byte(i + 99_999)).collect();
                let mut updated = parity.clone();
                let mut outs: Vec<&mut [u8]> = updated.iter_mut().map(Vec::as_mut_slice).collect();
                code.update(at, &data[at], &new_data[at], &mut outs);
                prop_assert_eq!(&updated, &encoded(&code, &new_data));

                let n = k + code.parities();
                let mut lost: Vec<Chunk> = Vec::new();
                for &l in &loss {
                    let chunk = if l % n < k { Chunk::Data(l % n) } else { Chunk::Parity(l % n - k) };
                    if !lost.contains(&chunk) && lost.len() < code.parities() {
                        lost.push(chunk);
                    }
                }
                let (mut d, mut p) = (data.clone(), parity.clone());
                for chunk in &lost {
                    match *chunk {
                        Chunk::Data(i) => d[i].fill(0xa5),
                        Chunk::Parity(j) => p[j].fill(0x5a),
                    }
                }
                let mut dv: Vec<&mut [u8]> = d.iter_mut().map(Vec::as_mut_slice).collect();
                let mut pv: Vec<&mut [u8]> = p.iter_mut().map(Vec::as_mut_slice).collect();
                code.recover(&mut dv, &mut pv, &lost);
                prop_assert_eq!(&d, &data);
                prop_assert_eq!(&p, &parity);
            }
        }
    }

    /// Goal: the XOR shortcut is offered exactly when parity 0 is the XOR of the data.
    #[test]
    fn first_parity_is_xor_only_when_it_is() {
        for (code, k) in codes() {
            let data: Vec<Vec<u8>> = (0..k).map(|d| vec![d as u8 * 37 + 1; 8]).collect();
            let parity = encoded(&code, &data);
            let mut xor = vec![0u8; 8];
            for d in &data {
                crate::parity::xor_into(&mut xor, d);
            }
            assert_eq!(code.first_parity_is_xor(), parity[0] == xor);
        }
    }
}
