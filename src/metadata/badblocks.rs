//! md's bad-block log: the sectors of one member that could not be read or given their data.
//!
//! On disk (md.c super_1_load / super_1_sync): `bblog_size` sectors at `bblog_offset` sectors
//! from the superblock, an array of little-endian u64 entries `(start << 10) | len`, start and
//! len in units of `2^bblog_shift` sectors, len 1..=512, the rest of the area filled with 0xff
//! (reading stops at the first all-ones entry). Starts are absolute device sectors (md adds
//! data_offset before recording). The superblock's BAD_BLOCKS feature bit says the list is
//! not empty.
//!
//! In memory the list is sorted, merged ranges of absolute device sectors.

/// Largest length one entry can hold, in units.
const MAX_ENTRY_UNITS: u64 = 512;

/// Sorted, non-overlapping, non-adjacent ranges (start sector, sectors).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BadBlocks {
    ranges: Vec<(u64, u64)>,
}

/// The log is full or malformed.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum BadBlockError {
    #[error("bad-block log entry {index} has length 0")]
    ZeroLength { index: usize },
    #[error("the bad-block log holds at most {capacity} entries; {needed} are needed")]
    Full { capacity: usize, needed: usize },
}

impl BadBlocks {
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// The ranges, as (start sector, sectors), in order.
    pub fn ranges(&self) -> &[(u64, u64)] {
        &self.ranges
    }

    /// Total sectors recorded.
    pub fn sectors(&self) -> u64 {
        self.ranges.iter().map(|r| r.1).sum()
    }

    /// Whether any sector of `start..start+len` is recorded.
    pub fn overlaps(&self, start: u64, len: u64) -> bool {
        let end = start + len;
        self.ranges.iter().any(|&(s, l)| s < end && start < s + l)
    }

    /// Records `start..start+len` (merged with what touches it). Returns whether it changed.
    pub fn add(&mut self, start: u64, len: u64) -> bool {
        if len == 0 {
            return false;
        }
        let (mut lo, mut hi) = (start, start + len);
        let before = self.ranges.clone();
        self.ranges.retain(|&(s, l)| {
            let touches = s <= hi && lo <= s + l;
            if touches {
                lo = lo.min(s);
                hi = hi.max(s + l);
            }
            !touches
        });
        let at = self.ranges.partition_point(|&(s, _)| s < lo);
        self.ranges.insert(at, (lo, hi - lo));
        self.ranges != before
    }

    /// Forgets `start..start+len` (the sectors were written successfully). Returns whether it
    /// changed.
    pub fn clear(&mut self, start: u64, len: u64) -> bool {
        let end = start + len;
        let mut out = Vec::with_capacity(self.ranges.len() + 1);
        let mut changed = false;
        for &(s, l) in &self.ranges {
            let e = s + l;
            if e <= start || end <= s {
                out.push((s, l));
                continue;
            }
            changed = true;
            if s < start {
                out.push((s, start - s));
            }
            if end < e {
                out.push((end, e - end));
            }
        }
        self.ranges = out;
        changed
    }

    /// Reads a log area as md wrote it.
    pub fn decode(area: &[u8], shift: u8) -> Result<BadBlocks, BadBlockError> {
        let mut list = BadBlocks::default();
        for (index, word) in area.chunks_exact(8).enumerate() {
            let v = u64::from_le_bytes(word.try_into().expect("8 bytes"));
            if v == u64::MAX {
                break;
            }
            let units = v & 0x3ff;
            if units == 0 {
                return Err(BadBlockError::ZeroLength { index });
            }
            list.add((v >> 10) << shift, units << shift);
        }
        Ok(list)
    }

    /// The log area (`area_bytes` long) holding this list, in units of `2^shift` sectors
    /// (ranges are widened to whole units).
    pub fn encode(&self, area_bytes: usize, shift: u8) -> Result<Vec<u8>, BadBlockError> {
        let mut words = Vec::new();
        for &(s, l) in &self.ranges {
            let first = s >> shift;
            let end = (s + l).div_ceil(1 << shift);
            let mut at = first;
            while at < end {
                let units = (end - at).min(MAX_ENTRY_UNITS);
                // md keeps len in bits 0..10 (1..=512) and the start above them.
                words.push((at << 10) | units);
                at += units;
            }
        }
        let capacity = area_bytes / 8;
        if words.len() > capacity {
            return Err(BadBlockError::Full {
                capacity,
                needed: words.len(),
            });
        }
        let mut area = vec![0xff; area_bytes];
        for (i, w) in words.iter().enumerate() {
            area[i * 8..i * 8 + 8].copy_from_slice(&w.to_le_bytes());
        }
        Ok(area)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_merges_and_clear_splits() {
        let mut b = BadBlocks::default();
        assert!(b.add(100, 8));
        assert!(b.add(108, 8)); // adjacent: merged
        assert!(!b.add(104, 4)); // inside: no change
        assert!(b.add(10, 2));
        assert_eq!(b.ranges(), &[(10, 2), (100, 16)]);
        assert!(b.overlaps(115, 10) && !b.overlaps(116, 10) && !b.overlaps(12, 88));
        assert!(b.clear(104, 4));
        assert_eq!(b.ranges(), &[(10, 2), (100, 4), (108, 8)]);
        assert!(!b.clear(0, 10));
        assert!(b.clear(0, 1000));
        assert!(b.is_empty());
    }

    #[test]
    fn encode_decode_round_trip_as_md_lays_it_out() {
        let mut b = BadBlocks::default();
        b.add(2048, 8);
        b.add(1 << 30, 1000); // longer than one entry: split
        let area = b.encode(4096, 0).unwrap();
        assert_eq!(
            u64::from_le_bytes(area[0..8].try_into().unwrap()),
            (2048 << 10) | 8
        );
        assert_eq!(
            u64::from_le_bytes(area[8..16].try_into().unwrap()),
            ((1u64 << 30) << 10) | 512
        );
        assert!(area[24..].iter().all(|&x| x == 0xff));
        assert_eq!(BadBlocks::decode(&area, 0).unwrap(), b);
        // With a shift, units are 2^shift sectors and ranges widen to whole units.
        let mut c = BadBlocks::default();
        c.add(9, 3);
        let area = c.encode(4096, 3).unwrap();
        assert_eq!(BadBlocks::decode(&area, 3).unwrap().ranges(), &[(8, 8)]);
    }

    #[test]
    fn a_full_log_and_a_zero_length_entry_are_errors() {
        let mut b = BadBlocks::default();
        for i in 0..3 {
            b.add(i * 100, 1);
        }
        assert_eq!(
            b.encode(16, 0),
            Err(BadBlockError::Full {
                capacity: 2,
                needed: 3
            })
        );
        let mut area = vec![0xff; 16];
        area[0..8].copy_from_slice(&(5u64 << 10).to_le_bytes());
        assert_eq!(
            BadBlocks::decode(&area, 0),
            Err(BadBlockError::ZeroLength { index: 0 })
        );
    }
}
