//! RAID0 striping over members of possibly different sizes (md `raid0.c` strip zones).
//!
//! Each member's size is first rounded down to the chunk. Zone 0 stripes over every member up
//! to the smallest size; each later zone stripes over the members that are still larger, from
//! the previous zone's limit up to the next smallest size:
//!
//! ```text
//!   sizes 3,5,5 chunks      slot0 slot1 slot2
//!   zone 0 (3 devices)       0     1     2      rows 0..3
//!                            3     4     5
//!                            6     7     8
//!   zone 1 (2 devices)       -    10     9      ORIG: device = absolute chunk % 2
//!                            -    11    12      (ALT would put 9 on slot1, 10 on slot2)
//! ```

use super::{LayoutError, Placement, Raid0Layout, Reverse};

/// One strip zone: a rectangle of `devices` members, rows `dev_start..dev_end` on each.
#[derive(Clone, Debug)]
pub(super) struct Zone {
    /// First array byte of the zone.
    array_start: u64,
    /// One past the last array byte of the zone.
    array_end: u64,
    /// Member offset where the zone starts on each of its devices.
    dev_start: u64,
    /// Member offset where the zone ends.
    dev_end: u64,
    /// Index into [`Zones::slots`] of the zone's first device.
    first: usize,
    /// Number of devices in the zone.
    devices: usize,
}

/// All zones of one RAID0 geometry. Built once; mapping never allocates.
#[derive(Clone, Debug)]
pub(super) struct Zones {
    layout: Raid0Layout,
    chunk_bytes: u64,
    zones: Vec<Zone>,
    /// The member slots of every zone, zone after zone, each run in slot order.
    slots: Vec<usize>,
    /// Each member's size rounded down to the chunk.
    rounded: Vec<u64>,
}

impl Zones {
    /// Builds the zones; returns the array size along with them.
    pub(super) fn new(
        layout: Raid0Layout,
        chunk_bytes: u64,
        member_bytes: &[u64],
    ) -> Result<(Zones, u64), LayoutError> {
        let rounded: Vec<u64> = member_bytes
            .iter()
            .map(|&bytes| bytes - bytes % chunk_bytes)
            .collect();
        if let Some(slot) = rounded.iter().position(|&bytes| bytes == 0) {
            return Err(LayoutError::Invalid(format!(
                "RAID0 member {slot} is smaller than one {chunk_bytes}-byte chunk"
            )));
        }
        let mut zones = Vec::new();
        let mut slots = Vec::new();
        let mut array_end = 0u64;
        let mut dev_start = 0u64;
        // Each pass takes the members still larger than the previous limit; the distinct sizes
        // bound the number of passes by the member count.
        while let Some(dev_end) = rounded.iter().copied().filter(|&b| b > dev_start).min() {
            let first = slots.len();
            slots.extend((0..rounded.len()).filter(|&slot| rounded[slot] > dev_start));
            let devices = slots.len() - first;
            let zone_bytes = (dev_end - dev_start)
                .checked_mul(devices as u64)
                .and_then(|bytes| bytes.checked_add(array_end))
                .ok_or_else(|| LayoutError::Invalid("RAID0 array size overflows".into()))?;
            zones.push(Zone {
                array_start: array_end,
                array_end: zone_bytes,
                dev_start,
                dev_end,
                first,
                devices,
            });
            array_end = zone_bytes;
            dev_start = dev_end;
        }
        let zones = Zones {
            layout,
            chunk_bytes,
            zones,
            slots,
            rounded,
        };
        Ok((zones, array_end))
    }

    /// The largest rounded member size: the last zone's end.
    pub(super) fn max_member_bytes(&self) -> u64 {
        self.zones.last().map_or(0, |zone| zone.dev_end)
    }

    /// The rounded size of one member: the part the layout uses.
    pub(super) fn member_used_bytes(&self, slot: usize) -> u64 {
        self.rounded[slot]
    }

    /// Number of zones (1 when all members are equal after rounding).
    pub(super) fn zone_count(&self) -> usize {
        self.zones.len()
    }

    /// The one place that holds `array_offset`.
    pub(super) fn map(&self, array_offset: u64) -> Placement {
        // Zones are few (one per distinct member size) and sorted by array offset.
        let index = self
            .zones
            .partition_point(|zone| zone.array_end <= array_offset);
        let zone = &self.zones[index];
        let chunk = self.chunk_bytes;
        let zone_chunk = (array_offset - zone.array_start) / chunk;
        let devices = zone.devices as u64;
        let column = match self.layout {
            Raid0Layout::Original => (array_offset / chunk) % devices,
            Raid0Layout::Alternate => zone_chunk % devices,
        };
        Placement {
            slot: self.slots[zone.first + column as usize],
            member_offset: zone.dev_start + (zone_chunk / devices) * chunk + array_offset % chunk,
        }
    }

    /// Which array byte `slot` holds at `member_offset`.
    pub(super) fn reverse(&self, slot: usize, member_offset: u64) -> Reverse {
        if member_offset >= self.rounded[slot] {
            return Reverse::Unused;
        }
        let index = self
            .zones
            .partition_point(|zone| zone.dev_end <= member_offset);
        let zone = &self.zones[index];
        let zone_slots = &self.slots[zone.first..zone.first + zone.devices];
        // Every member larger than dev_start is in the zone, and this one is.
        let Some(position) = zone_slots.iter().position(|&s| s == slot) else {
            return Reverse::Unused;
        };
        let chunk = self.chunk_bytes;
        let devices = zone.devices as u64;
        let row = (member_offset - zone.dev_start) / chunk;
        let column = match self.layout {
            Raid0Layout::Alternate => position as u64,
            Raid0Layout::Original => {
                // The row's chunks are consecutive absolute numbers; pick the one whose
                // residue modulo the device count is this device's position.
                let first_chunk = zone.array_start / chunk + row * devices;
                (position as u64 + devices - first_chunk % devices) % devices
            }
        };
        Reverse::Data {
            array_offset: zone.array_start
                + (row * devices + column) * chunk
                + member_offset % chunk,
        }
    }
}
