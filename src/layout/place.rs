//! The small values mapping hands out: pieces of a request and places on members, held
//! inline so that mapping a request never allocates.

use super::MAX_COPIES;

/// One part of a request that stays inside one chunk (RAID1: one 64 KiB unit).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Piece {
    /// First array byte of the piece.
    pub array_offset: u64,
    /// Length in bytes, at least 1.
    pub len: u64,
}

/// Iterator returned by [`Geometry::pieces`].
#[derive(Clone, Debug)]
pub struct Pieces {
    pub(super) next: u64,
    pub(super) end: u64,
    pub(super) unit: u64,
}

impl Iterator for Pieces {
    type Item = Piece;

    fn next(&mut self) -> Option<Piece> {
        if self.next >= self.end {
            return None;
        }
        let unit_start = self.next - self.next % self.unit;
        let piece_end = unit_start.saturating_add(self.unit).min(self.end);
        let piece = Piece {
            array_offset: self.next,
            len: piece_end - self.next,
        };
        self.next = piece_end;
        Some(piece)
    }
}

impl std::iter::FusedIterator for Pieces {}

/// A place on one member.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Placement {
    /// Member slot (raid role), `0..members`.
    pub slot: usize,
    /// Byte offset from the start of the member's data area.
    pub member_offset: u64,
}

/// All copies of one byte, held inline so that mapping never allocates.
#[derive(Clone, Copy, Debug)]
pub struct Copies {
    len: usize,
    places: [Placement; MAX_COPIES],
}

impl Copies {
    pub(super) fn new() -> Copies {
        Copies {
            len: 0,
            places: [Placement {
                slot: 0,
                member_offset: 0,
            }; MAX_COPIES],
        }
    }

    pub(super) fn push(&mut self, place: Placement) {
        // Geometry::new caps copies at MAX_COPIES, so this index is always in range.
        self.places[self.len] = place;
        self.len += 1;
    }

    /// The places, first copy first (md's order).
    pub fn as_slice(&self) -> &[Placement] {
        &self.places[..self.len]
    }

    /// Iterates over the places.
    pub fn iter(&self) -> std::slice::Iter<'_, Placement> {
        self.as_slice().iter()
    }

    /// Number of places (equals [`Geometry::copies`]).
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when there are no places (never for a mapped byte).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl PartialEq for Copies {
    fn eq(&self, other: &Copies) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl Eq for Copies {}

impl<'a> IntoIterator for &'a Copies {
    type Item = &'a Placement;
    type IntoIter = std::slice::Iter<'a, Placement>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}
