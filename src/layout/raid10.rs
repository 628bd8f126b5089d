//! RAID10 near / far / offset copy placement (md `raid10.c`: `__raid10_find_phys`,
//! `raid10_find_virt`, `calc_sectors`), original far-set variant only (far set = all members).
//!
//! Chunk `c` gets `near` consecutive slots of the "virtual" sequence `idx = c*near + j`, laid
//! row by row over the N members (`row = idx / N`, `slot = idx % N`). Each of those copies is
//! repeated `far - 1` more times, each time `near` slots to the right (mod N) and one stride
//! further down:
//!
//! ```text
//!   far=2, N=3, 4 chunks per member (stride 2 rows)    offset=2, N=3
//!          slot0 slot1 slot2                               slot0 slot1 slot2
//!   row0     0     1     2      first copies         row0    0     1     2
//!   row1     3     4     5                           row1    2     0     1
//!   row2     2     0     1      far copies           row2    3     4     5
//!   row3     5     3     4      (shifted by near)    row3    5     3     4
//! ```
//!
//! Far layouts use a stride of `used_rows / far` rows, where `used_rows` is md's per-member
//! size (`dev_sectors`); offset layouts put the far copies in the rows right below (stride one
//! row, and each group of first copies takes `far` rows).

use super::{Copies, LayoutError, Placement, Raid10Layout, Reverse};

/// Precomputed RAID10 geometry. All fields are in chunks or bytes as named.
#[derive(Clone, Debug)]
pub(super) struct Raid10Map {
    near: u64,
    far: u64,
    offset: bool,
    members: u64,
    chunk_bytes: u64,
    /// Member offset distance between consecutive far copies.
    stride_bytes: u64,
    /// Chunks of array data (each stored `near * far` times).
    array_chunks: u64,
    /// Rows of each member the layout may touch (md `dev_sectors / chunk`).
    used_rows: u64,
}

impl Raid10Map {
    /// Builds the map; returns it with the array size in bytes.
    pub(super) fn new(
        layout: Raid10Layout,
        members: usize,
        chunk_bytes: u64,
        member_bytes: u64,
    ) -> Result<(Raid10Map, u64), LayoutError> {
        let too_big = || LayoutError::Invalid("RAID10 array size overflows".into());
        let near = u64::from(layout.near);
        let far = u64::from(layout.far);
        let n = members as u64;
        if layout.offset && far > 1 && near > 1 && !n.is_multiple_of(near) {
            // md accepts this, but a near copy that wraps to the next row lands on the row that
            // holds another chunk's offset copy, so two chunks would share a place.
            return Err(LayoutError::Unsupported(format!(
                "RAID10 {} on {members} members: offset copies with near copies that do not \
                 divide the member count overlap in md",
                layout.name()
            )));
        }
        // md raid10_size: member chunks, split between the far copies, spread over the members,
        // divided by the near copies -- integer division in exactly this order.
        let member_chunks = member_bytes / chunk_bytes;
        let array_chunks = (member_chunks / far).checked_mul(n).ok_or_else(too_big)? / near;
        if array_chunks == 0 {
            return Err(LayoutError::Invalid(format!(
                "RAID10 {} members of {member_bytes} bytes hold no whole chunk",
                layout.name()
            )));
        }
        // md calc_sectors: used chunks per member, rounded up.
        let copies = near * far;
        let used_rows = array_chunks
            .checked_mul(copies)
            .ok_or_else(too_big)?
            .div_ceil(n);
        let stride_rows = if layout.offset { 1 } else { used_rows / far };
        if stride_rows == 0 {
            // Cannot happen for a non-empty array (md's rounding guarantees a stride of at
            // least one row); checked so that reverse() never divides by zero.
            return Err(LayoutError::Invalid("RAID10 far stride is empty".into()));
        }
        let map = Raid10Map {
            near,
            far,
            offset: layout.offset,
            members: n,
            chunk_bytes,
            stride_bytes: stride_rows * chunk_bytes,
            array_chunks,
            used_rows,
        };
        let array_bytes = array_chunks.checked_mul(chunk_bytes).ok_or_else(too_big)?;
        Ok((map, array_bytes))
    }

    /// Bytes of each member the layout may touch.
    pub(super) fn used_bytes(&self) -> u64 {
        self.used_rows * self.chunk_bytes
    }

    /// Every copy of `array_offset`, in md's order (near copy, then its far copies).
    pub(super) fn map(&self, array_offset: u64, out: &mut Copies) {
        let chunk = self.chunk_bytes;
        let virtual_index = (array_offset / chunk) * self.near;
        let mut row = virtual_index / self.members;
        let mut slot = virtual_index % self.members;
        if self.offset {
            row *= self.far;
        }
        let mut member_offset = row * chunk + array_offset % chunk;
        for _ in 0..self.near {
            let (mut far_slot, mut far_offset) = (slot, member_offset);
            out.push(Placement {
                slot: far_slot as usize,
                member_offset: far_offset,
            });
            for _ in 1..self.far {
                // near <= members, so one subtraction is a full modulo.
                far_slot += self.near;
                if far_slot >= self.members {
                    far_slot -= self.members;
                }
                far_offset += self.stride_bytes;
                out.push(Placement {
                    slot: far_slot as usize,
                    member_offset: far_offset,
                });
            }
            slot += 1;
            if slot == self.members {
                slot = 0;
                member_offset += chunk;
            }
        }
    }

    /// Which array byte `slot` holds at `member_offset`.
    pub(super) fn reverse(&self, slot: usize, member_offset: u64) -> Reverse {
        let chunk = self.chunk_bytes;
        let row = member_offset / chunk;
        if row >= self.used_rows {
            return Reverse::Unused;
        }
        let stride_rows = self.stride_bytes / chunk;
        let (far_copy, first_row) = if self.offset {
            (row % self.far, row / self.far)
        } else {
            (row / stride_rows, row % stride_rows)
        };
        if far_copy >= self.far {
            return Reverse::Unused;
        }
        // Undo the far copy's shift of far_copy * near slots to the right.
        let shift = (far_copy * self.near) % self.members;
        let first_slot = (slot as u64 + self.members - shift) % self.members;
        let array_chunk = (first_row * self.members + first_slot) / self.near;
        if array_chunk >= self.array_chunks {
            return Reverse::Unused;
        }
        Reverse::Data {
            array_offset: array_chunk * chunk + member_offset % chunk,
        }
    }
}
