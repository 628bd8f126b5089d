//! The cache as a [`Volume`]: it serves what its array serves, through the cache.

use crate::buf::BufSlice;
use crate::error::Result;
use crate::volume::{Volume, VolumeInfo};

use super::Cache;

impl Volume for Cache {
    fn info(&self) -> VolumeInfo {
        self.array.info()
    }

    fn size_bytes(&self) -> u64 {
        Cache::size_bytes(self)
    }

    async fn read(&self, offset: u64, buf: BufSlice) -> Result<()> {
        Cache::read(self, offset, buf).await
    }

    async fn write(&self, offset: u64, data: BufSlice, fua: bool) -> Result<()> {
        Cache::write(self, offset, data, fua).await
    }

    async fn flush(&self) -> Result<()> {
        Cache::flush(self).await
    }

    async fn trim(&self, offset: u64, len: u64) -> Result<()> {
        Cache::trim(self, offset, len).await
    }

    async fn write_zeroes(&self, offset: u64, len: u64) -> Result<()> {
        Cache::write_zeroes(self, offset, len).await
    }

    fn zeroes_fast(&self, offset: u64, len: u64) -> bool {
        Cache::zeroes_fast(self, offset, len)
    }
}
