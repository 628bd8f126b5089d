//! The engine as a [`Volume`]: what it serves and how it likes to be asked.

use crate::buf::BufSlice;
use crate::error::Result;
use crate::volume::{Volume, VolumeInfo};

use super::Array;

/// The largest preferred block we announce (clients cap it anyway).
const MAX_PREFERRED: u64 = 32 << 20;

impl Volume for Array {
    fn info(&self) -> VolumeInfo {
        let geo = &self.geo;
        let row = geo.full_row_bytes();
        // Clients reject a preferred size that is not a power of two.
        let preferred = if row.is_power_of_two() {
            row
        } else {
            geo.chunk_bytes().max(4096)
        };
        let writable = !self.read_only;
        VolumeInfo {
            name: self.name.clone(),
            description: format!(
                "raidctl {} array {} ({} members, {} bytes)",
                geo.level(),
                self.name,
                geo.members(),
                self.size_bytes()
            ),
            size_bytes: self.size_bytes(),
            logical_block: 512,
            preferred_block: preferred.clamp(4096, MAX_PREFERRED) as u32,
            read_only: self.read_only,
            can_trim: writable,
            can_zero: writable,
            can_flush: true,
            multi_conn: true,
            zero_buffer_bytes: match geo.level() {
                crate::layout::Level::Raid5
                | crate::layout::Level::Raid6
                | crate::layout::Level::Ec => 2 * geo.stripe_bytes(),
                _ => 0,
            },
        }
    }

    fn size_bytes(&self) -> u64 {
        Array::size_bytes(self)
    }

    async fn read(&self, offset: u64, buf: BufSlice) -> Result<()> {
        Array::read(self, offset, buf).await
    }

    async fn write(&self, offset: u64, data: BufSlice, fua: bool) -> Result<()> {
        Array::write(self, offset, data, fua).await
    }

    async fn flush(&self) -> Result<()> {
        Array::flush(self).await
    }

    async fn trim(&self, offset: u64, len: u64) -> Result<()> {
        Array::trim(self, offset, len).await
    }

    async fn write_zeroes(&self, offset: u64, len: u64) -> Result<()> {
        Array::write_zeroes(self, offset, len).await
    }

    fn zeroes_fast(&self, offset: u64, len: u64) -> bool {
        Array::zeroes_fast(self, offset, len)
    }
}
