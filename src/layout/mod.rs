//! Where every array byte lives: the md RAID0/1/5/6/10 data layouts as pure arithmetic.
//!
//! The engine asks three questions, all answered here without I/O and, per request, without
//! allocation:
//!
//! * how to cut a request into pieces that stay inside one chunk ([`Geometry::pieces`]),
//! * where the copies of a byte are ([`Geometry::map_copies`], RAID0/1/10) or where its data
//!   and parity chunks are ([`Geometry::parity_locate`], RAID5/6),
//! * and backwards, for rebuild and check, which array byte a member byte holds
//!   ([`Geometry::reverse`]).
//!
//! ```text
//!   array offset ──pieces()──▶ Piece (never crosses a chunk)
//!        │
//!        ├─map_copies()──▶ [Placement { slot, member_offset }; copies()]   RAID0/1/10
//!        └─parity_locate()──▶ ParityLoc { stripe, slot, parity_slot, q_slot, .. }  RAID5/6, k+m
//!   (slot, member_offset) ──reverse()──▶ Data | Parity { stripe } | Syndrome { stripe } | Unused
//! ```
//!
//! k+m erasure-coded arrays (`ec.rs`) are not md's, but map the same way as RAID5/6: one row
//! of chunks per stripe, `parity_slots` of them holding the code's parity.
//!
//! Sizes and offsets are bytes. Member offsets count from the member's data area; the caller
//! adds md's `data_offset`. The arithmetic follows the Linux md drivers so that arrays made by
//! mdadm read back byte for byte, and array sizes equal md's to the sector.

mod ec;
mod kinds;
mod place;
mod raid0;
mod raid10;
mod raid5;
mod raid6;
#[cfg(test)]
mod tests;
mod validate;

use validate::{check_chunk, check_members, check_raid10, invalid, overflow};

pub use kinds::{
    LayoutError, LayoutKind, Level, Raid0Layout, Raid10Layout, Raid5Algorithm, Raid6Algorithm,
    EC_MD_LEVEL,
};
pub use place::{Copies, Piece, Pieces, Placement};

/// RAID1 has no chunk; requests are still split and locked in units of this size.
pub const RAID1_UNIT_BYTES: u64 = 64 * 1024;
/// Most copies [`Copies`] can hold, hence most RAID1 members and RAID10 copies we accept.
pub const MAX_COPIES: usize = 32;
/// Most members md supports in a v1.x superblock.
pub const MAX_MEMBERS: usize = 1920;
const SECTOR_BYTES: u64 = 512;
const PAGE_BYTES: u64 = 4096;

/// Most parity chunks a row may have.
pub const MAX_PARITIES: usize = crate::parity::ec::MAX_PARITY;

/// The slots holding one row's parity chunks, in the code's order (RAID6: P, Q).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParitySlots {
    slots: [usize; MAX_PARITIES],
    len: usize,
}

impl ParitySlots {
    fn new(len: usize, slot_of: impl Fn(usize) -> usize) -> ParitySlots {
        let mut slots = [0; MAX_PARITIES];
        for (index, slot) in slots.iter_mut().enumerate().take(len) {
            *slot = slot_of(index);
        }
        ParitySlots { slots, len }
    }

    /// The slots, parity chunk 0 first.
    pub fn as_slice(&self) -> &[usize] {
        &self.slots[..self.len]
    }

    /// Which parity chunk `slot` holds, if any.
    pub fn index_of(&self, slot: usize) -> Option<usize> {
        self.as_slice().iter().position(|&s| s == slot)
    }

    /// Whether `slot` holds one of the row's parity chunks.
    pub fn contains(&self, slot: usize) -> bool {
        self.index_of(slot).is_some()
    }
}

/// Where a RAID5/6 array byte lives, with its stripe's parity slots.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParityLoc {
    /// Stripe (row) number; every chunk of the stripe sits at `stripe * chunk` on its member.
    pub stripe: u64,
    /// Position of the byte's chunk among the stripe's data chunks, `0..members-parities`.
    pub data_index: usize,
    /// Member slot holding the byte.
    pub slot: usize,
    /// Member slot holding the stripe's parity (RAID6: P).
    pub parity_slot: usize,
    /// RAID6: the member slot holding the stripe's Q syndrome.
    pub q_slot: Option<usize>,
    /// `stripe * chunk + offset in chunk`.
    pub member_offset: u64,
}

/// What a member byte holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reverse {
    /// A copy of this array byte.
    Data {
        /// The array byte stored there.
        array_offset: u64,
    },
    /// Parity of this RAID5 stripe (RAID6: its P).
    Parity {
        /// The stripe.
        stripe: u64,
    },
    /// The Q syndrome of this RAID6 stripe.
    Syndrome {
        /// The stripe.
        stripe: u64,
    },
    /// Nothing: past the part of the member the layout uses.
    Unused,
}

#[derive(Clone, Debug)]
enum Detail {
    Raid0(raid0::Zones),
    Raid1,
    Raid5(Raid5Algorithm),
    Raid6(Raid6Algorithm),
    Raid10(raid10::Raid10Map),
    Ec(usize),
}

/// The validated shape of one array: level, layout, chunk, members and their sizes.
#[derive(Clone, Debug)]
pub struct Geometry {
    kind: LayoutKind,
    detail: Detail,
    members: usize,
    chunk_bytes: u64,
    array_bytes: u64,
    member_used_bytes: u64,
    stripe_bytes: u64,
    copies: usize,
}

impl Geometry {
    /// Validates a geometry. `member_bytes` has one entry per slot (`raid_disks`):
    /// for RAID0 each member's usable data bytes (md `data_size`), rounded down to the chunk
    /// here; for RAID1/5/10 md's `sb.size` in bytes, the same value for every slot.
    /// `chunk_bytes` is ignored for RAID1 (pass 0). Never panics.
    pub fn new(
        kind: LayoutKind,
        chunk_bytes: u64,
        member_bytes: &[u64],
    ) -> Result<Geometry, LayoutError> {
        let level = kind.level();
        let members = member_bytes.len();
        check_members(level, members, member_bytes)?;
        let chunk_bytes = if level == Level::Raid1 {
            0
        } else {
            chunk_bytes
        };
        check_chunk(level, chunk_bytes)?;
        let size = member_bytes[0];
        let (detail, array_bytes, member_used_bytes, copies) = match &kind {
            LayoutKind::Raid0(layout) => {
                let (zones, array_bytes) = raid0::Zones::new(*layout, chunk_bytes, member_bytes)?;
                let used = zones.max_member_bytes();
                (Detail::Raid0(zones), array_bytes, used, 1)
            }
            LayoutKind::Raid1 => {
                if members > MAX_COPIES {
                    return Err(LayoutError::Unsupported(format!(
                        "RAID1 with {members} members; at most {MAX_COPIES} mirrors are supported"
                    )));
                }
                (Detail::Raid1, size, size, members)
            }
            LayoutKind::Raid5(algorithm) => {
                let used = size - size % chunk_bytes;
                let array_bytes = used.checked_mul(members as u64 - 1);
                let array_bytes = array_bytes.ok_or_else(|| overflow(level))?;
                (Detail::Raid5(*algorithm), array_bytes, used, 1)
            }
            LayoutKind::Raid6(algorithm) => {
                let used = size - size % chunk_bytes;
                let array_bytes = used.checked_mul(members as u64 - 2);
                let array_bytes = array_bytes.ok_or_else(|| overflow(level))?;
                (Detail::Raid6(*algorithm), array_bytes, used, 1)
            }
            LayoutKind::Ec { parity } => {
                validate::check_ec(*parity, members)?;
                let used = size - size % chunk_bytes;
                let array_bytes = used.checked_mul((members - parity) as u64);
                let array_bytes = array_bytes.ok_or_else(|| overflow(level))?;
                (Detail::Ec(*parity), array_bytes, used, 1)
            }
            LayoutKind::Raid10(layout) => {
                let copies = check_raid10(*layout, members)?;
                let (map, array_bytes) =
                    raid10::Raid10Map::new(*layout, members, chunk_bytes, size)?;
                let used = map.used_bytes();
                (Detail::Raid10(map), array_bytes, used, copies)
            }
        };
        if array_bytes == 0 {
            return invalid(format!(
                "{level} members of {size} bytes are too small to hold any data"
            ));
        }
        let stripe_bytes = match level {
            Level::Raid1 => RAID1_UNIT_BYTES,
            Level::Raid5 | Level::Raid6 | Level::Ec => chunk_bytes
                .checked_mul((members - kind.parities()) as u64)
                .ok_or_else(|| overflow(level))?,
            Level::Raid0 | Level::Raid10 => chunk_bytes,
        };
        Ok(Geometry {
            kind,
            detail,
            members,
            chunk_bytes,
            array_bytes,
            member_used_bytes,
            stripe_bytes,
            copies,
        })
    }

    /// The RAID level.
    pub fn level(&self) -> Level {
        self.kind.level()
    }

    /// Level and layout.
    pub fn kind(&self) -> &LayoutKind {
        &self.kind
    }

    /// Number of member slots (`raid_disks`).
    pub fn members(&self) -> usize {
        self.members
    }

    /// Chunk size in bytes; 0 for RAID1.
    pub fn chunk_bytes(&self) -> u64 {
        self.chunk_bytes
    }

    /// Array size in bytes, equal to md's.
    pub fn array_bytes(&self) -> u64 {
        self.array_bytes
    }

    /// Parity chunks per stripe row: 1 for RAID5, 2 for RAID6, m for k+m, else 0.
    pub fn parities(&self) -> usize {
        self.kind.parities()
    }

    /// How many places hold each array byte: RAID0, RAID5 and RAID6 1, RAID1 members, RAID10
    /// near * far.
    pub fn copies(&self) -> usize {
        self.copies
    }

    /// Bytes of a member's data area the layout can touch (RAID0: of the largest member).
    pub fn member_used_bytes(&self) -> u64 {
        self.member_used_bytes
    }

    /// Bytes of one slot's data area the layout can touch (differs per slot only for RAID0).
    pub fn slot_used_bytes(&self, slot: usize) -> u64 {
        assert!(slot < self.members, "slot {slot} out of range");
        match &self.detail {
            Detail::Raid0(zones) => zones.member_used_bytes(slot),
            _ => self.member_used_bytes,
        }
    }

    /// True for a RAID0 whose members differ in size (after chunk rounding): only then do
    /// the original and alternate layouts differ.
    pub fn is_multi_zone(&self) -> bool {
        matches!(&self.detail, Detail::Raid0(zones) if zones.zone_count() > 1)
    }

    /// Unit of locking and splitting: the chunk for RAID0/10, a full stripe row's data bytes
    /// (`chunk * (members - parities)`) for RAID5/6, 64 KiB for RAID1.
    pub fn stripe_bytes(&self) -> u64 {
        self.stripe_bytes
    }

    /// The write that covers a whole row of data, touching each member's chunk once: no
    /// read-modify-write on RAID5/6 (`stripe_bytes`), every member busy on RAID0/10.
    /// RAID1 has no rows: a 4 KiB block.
    pub fn full_row_bytes(&self) -> u64 {
        let chunk = self.chunk_bytes;
        let members = self.members as u64;
        match self.level() {
            Level::Raid1 => 4096,
            Level::Raid5 | Level::Raid6 | Level::Ec => self.stripe_bytes,
            Level::Raid0 => chunk * members,
            Level::Raid10 => chunk * members / self.copies() as u64,
        }
    }

    /// Splits `[offset, offset + len)` into pieces that never cross a chunk boundary (RAID1:
    /// a 64 KiB boundary).
    ///
    /// # Panics
    /// If the range is not inside the array.
    pub fn pieces(&self, offset: u64, len: u64) -> Pieces {
        let end = offset.checked_add(len);
        assert!(
            end.is_some_and(|end| end <= self.array_bytes),
            "range {offset}+{len} outside array of {} bytes",
            self.array_bytes
        );
        let unit = match self.detail {
            Detail::Raid1 => RAID1_UNIT_BYTES,
            _ => self.chunk_bytes,
        };
        Pieces {
            next: offset,
            end: offset + len,
            unit,
        }
    }

    /// Every place that holds `array_offset` (exactly [`Geometry::copies`] of them). Each stays
    /// valid for the rest of the byte's piece: `array_offset + d` is at `member_offset + d`.
    /// For RAID5/6 this is the single data place; parity is found with
    /// [`Geometry::parity_locate`].
    ///
    /// # Panics
    /// If `array_offset` is not inside the array.
    pub fn map_copies(&self, array_offset: u64) -> Copies {
        self.assert_in_array(array_offset);
        let mut out = Copies::new();
        match &self.detail {
            Detail::Raid0(zones) => out.push(zones.map(array_offset)),
            Detail::Raid1 => (0..self.members).for_each(|slot| {
                out.push(Placement {
                    slot,
                    member_offset: array_offset,
                })
            }),
            Detail::Raid5(_) | Detail::Raid6(_) | Detail::Ec(_) => {
                let loc = self.parity_locate(array_offset);
                out.push(Placement {
                    slot: loc.slot,
                    member_offset: loc.member_offset,
                });
            }
            Detail::Raid10(map) => map.map(array_offset, &mut out),
        }
        out
    }

    /// RAID5/6: where `array_offset` lives and where its stripe's parity chunks are.
    ///
    /// # Panics
    /// If the geometry is not RAID5/6 or `array_offset` is not inside the array.
    pub fn parity_locate(&self, array_offset: u64) -> ParityLoc {
        let rows = self.rows();
        self.assert_in_array(array_offset);
        let chunk = self.chunk_bytes;
        let chunk_number = array_offset / chunk;
        let data_chunks = (self.members - self.parities()) as u64;
        let stripe = chunk_number / data_chunks;
        let data_index = (chunk_number % data_chunks) as usize;
        let parity = rows.parity_slots(self.members, stripe);
        ParityLoc {
            stripe,
            data_index,
            slot: rows.data_slot(self.members, stripe, data_index),
            parity_slot: parity.as_slice()[0],
            q_slot: self.q_slot(stripe),
            member_offset: stripe * chunk + array_offset % chunk,
        }
    }

    /// RAID5/6: the slot of data chunk `data_index` (`0..members-parities`) of `stripe`.
    ///
    /// # Panics
    /// If the geometry is not RAID5/6 or `data_index` is out of range.
    pub fn parity_data_slot(&self, stripe: u64, data_index: usize) -> usize {
        let rows = self.rows();
        assert!(
            data_index < self.members - self.parities(),
            "data index {data_index} out of range"
        );
        rows.data_slot(self.members, stripe, data_index)
    }

    /// RAID5/6: the slot holding the parity (RAID6: P) of `stripe`.
    ///
    /// # Panics
    /// If the geometry is not RAID5/6.
    pub fn p_slot(&self, stripe: u64) -> usize {
        self.parity_slots(stripe).as_slice()[0]
    }

    /// RAID6: the slot holding the Q syndrome of `stripe`; None for RAID5 and k+m.
    ///
    /// # Panics
    /// If the geometry has no parity.
    pub fn q_slot(&self, stripe: u64) -> Option<usize> {
        match self.rows() {
            Rows::Raid6(_) => Some(self.parity_slots(stripe).as_slice()[1]),
            _ => None,
        }
    }

    /// The slots of `stripe`'s parity chunks in the code's order: RAID5 its parity, RAID6 P
    /// and Q, k+m parity chunks 0..m.
    ///
    /// # Panics
    /// If the geometry has no parity.
    pub fn parity_slots(&self, stripe: u64) -> ParitySlots {
        self.rows().parity_slots(self.members, stripe)
    }

    /// RAID5/6: the data index `slot` holds in `stripe`, or `None` if it holds parity.
    ///
    /// # Panics
    /// If the geometry is not RAID5/6 or `slot` is out of range.
    pub fn parity_data_index(&self, stripe: u64, slot: usize) -> Option<usize> {
        let rows = self.rows();
        assert!(slot < self.members, "slot {slot} out of range");
        rows.data_index(self.members, stripe, slot)
    }

    /// The position of data slot `slot` in the code's order for `stripe`, or None for parity:
    /// RAID6 md's syndrome order (its Q coefficient is g^position), RAID5 and k+m the data
    /// index.
    ///
    /// # Panics
    /// If the geometry has no parity or `slot` is out of range.
    pub fn code_index(&self, stripe: u64, slot: usize) -> Option<usize> {
        assert!(slot < self.members, "slot {slot} out of range");
        match self.rows() {
            Rows::Raid6(a) => raid6::syndrome_index(a, self.members, stripe, slot),
            rows => rows.data_index(self.members, stripe, slot),
        }
    }

    /// RAID5/6: what each slot holds in row `stripe`, as md's notes draw it: `P`, `Q`, or
    /// `D<n>` for the array's data chunk number n.
    ///
    /// # Panics
    /// If the geometry is not RAID5/6.
    pub fn row_picture(&self, stripe: u64) -> Vec<String> {
        let data = (self.members - self.parities()) as u64;
        (0..self.members)
            .map(|slot| match self.parity_data_index(stripe, slot) {
                Some(k) => format!("D{}", stripe * data + k as u64),
                None if self.q_slot(stripe) == Some(slot) => "Q".into(),
                None if self.level() == Level::Ec => {
                    let index = self.parity_slots(stripe).index_of(slot);
                    format!("P{}", index.expect("a parity slot") + 1)
                }
                None => "P".into(),
            })
            .collect()
    }

    /// The first rows of a RAID5/6 rotation (at most eight), each as `row_picture` joined by
    /// spaces ("Q D0 D1 D2 P"); empty for the other levels. What `examine` and `status` show.
    pub fn placement(&self) -> Vec<String> {
        if self.parities() == 0 {
            return Vec::new();
        }
        (0..self.parity_rows().min(self.members as u64).min(8))
            .map(|row| self.row_picture(row).join(" "))
            .collect()
    }

    /// The data slots of `stripe` in the code's order (`code_index` 0 first; RAID6 md's
    /// syndrome order), so parity can be computed straight from per-slot buffers.
    ///
    /// # Panics
    /// If the geometry has no parity.
    pub fn code_slots(&self, stripe: u64) -> impl Iterator<Item = usize> + '_ {
        let rows = self.rows();
        let data = self.members - self.parities();
        (0..data).map(move |position| rows.code_slot(self.members, stripe, position))
    }

    /// RAID5/6: number of stripes (rows) in the array.
    ///
    /// # Panics
    /// If the geometry is not RAID5/6.
    pub fn parity_rows(&self) -> u64 {
        self.rows();
        self.member_used_bytes / self.chunk_bytes
    }

    /// RAID5/6: array offset of the first byte of `stripe` (`stripe * stripe_bytes()`);
    /// `stripe == parity_rows()` gives the array end.
    ///
    /// # Panics
    /// If the geometry is not RAID5/6 or `stripe` is past the end.
    pub fn parity_row_offset(&self, stripe: u64) -> u64 {
        assert!(stripe <= self.parity_rows(), "stripe {stripe} out of range");
        stripe * self.stripe_bytes
    }

    /// The inverse map: what `slot` holds at `member_offset`. For mirrored layouts every copy
    /// reverses to the same array byte.
    ///
    /// # Panics
    /// If `slot` is out of range.
    pub fn reverse(&self, slot: usize, member_offset: u64) -> Reverse {
        assert!(slot < self.members, "slot {slot} out of range");
        match &self.detail {
            Detail::Raid0(zones) => zones.reverse(slot, member_offset),
            Detail::Raid10(map) => map.reverse(slot, member_offset),
            _ if member_offset >= self.member_used_bytes => Reverse::Unused,
            Detail::Raid1 => Reverse::Data {
                array_offset: member_offset,
            },
            Detail::Raid5(_) | Detail::Raid6(_) | Detail::Ec(_) => {
                let chunk = self.chunk_bytes;
                let stripe = member_offset / chunk;
                match self.rows().data_index(self.members, stripe, slot) {
                    None if self.q_slot(stripe) == Some(slot) => Reverse::Syndrome { stripe },
                    None => Reverse::Parity { stripe },
                    Some(index) => Reverse::Data {
                        array_offset: stripe * self.stripe_bytes
                            + index as u64 * chunk
                            + member_offset % chunk,
                    },
                }
            }
        }
    }

    fn rows(&self) -> Rows {
        match self.detail {
            Detail::Raid5(algorithm) => Rows::Raid5(algorithm),
            Detail::Raid6(algorithm) => Rows::Raid6(algorithm),
            Detail::Ec(parity) => Rows::Ec(parity),
            _ => panic!("parity mapping asked of a {} geometry", self.level()),
        }
    }

    fn assert_in_array(&self, array_offset: u64) {
        assert!(
            array_offset < self.array_bytes,
            "offset {array_offset} outside array of {} bytes",
            self.array_bytes
        );
    }
}

/// mdadm's `sb.size` ("Used Dev Size") from the smallest member's available data bytes:
/// rounded down to the chunk for RAID0/5/10 and to 64 KiB for RAID1.
pub fn used_dev_bytes(level: Level, chunk_bytes: u64, smallest_available_bytes: u64) -> u64 {
    let unit = match level {
        Level::Raid1 => RAID1_UNIT_BYTES,
        _ => chunk_bytes,
    };
    match unit {
        0 => 0,
        unit => smallest_available_bytes - smallest_available_bytes % unit,
    }
}

/// The parity rotation of a RAID5, RAID6 or k+m geometry.
#[derive(Clone, Copy)]
enum Rows {
    Raid5(Raid5Algorithm),
    Raid6(Raid6Algorithm),
    Ec(usize),
}

impl Rows {
    fn parity_slots(self, members: usize, stripe: u64) -> ParitySlots {
        match self {
            Rows::Raid5(a) => ParitySlots::new(1, |_| raid5::parity_slot(a, members, stripe)),
            Rows::Raid6(a) => {
                let (p, q) = raid6::parity_slots(a, members, stripe);
                ParitySlots::new(2, |index| [p, q][index])
            }
            Rows::Ec(m) => ParitySlots::new(m, |index| ec::parity_slot(m, members, stripe, index)),
        }
    }

    /// The data slot at `position` in the code's order.
    fn code_slot(self, members: usize, stripe: u64, position: usize) -> usize {
        match self {
            Rows::Raid6(a) => raid6::syndrome_slot(a, members, stripe, position),
            _ => self.data_slot(members, stripe, position),
        }
    }

    fn data_slot(self, members: usize, stripe: u64, data_index: usize) -> usize {
        match self {
            Rows::Raid5(a) => raid5::data_slot(a, members, stripe, data_index),
            Rows::Raid6(a) => raid6::data_slot(a, members, stripe, data_index),
            Rows::Ec(m) => ec::data_slot(m, members, stripe, data_index),
        }
    }

    fn data_index(self, members: usize, stripe: u64, slot: usize) -> Option<usize> {
        match self {
            Rows::Raid5(a) => raid5::data_index(a, members, stripe, slot),
            Rows::Raid6(a) => raid6::data_index(a, members, stripe, slot),
            Rows::Ec(m) => ec::role(m, members, stripe, slot).ok(),
        }
    }
}
