//! The cache as a [`Volume`], the only way the frontends reach it: reads come from the cache
//! where it holds the blocks, writes are acknowledged from it in write-back (the write-through
//! and cache-filling paths they take are in `layer.rs`), flush destages first.

use crate::buf::BufSlice;
use crate::error::Result;
use crate::volume::{Volume, VolumeInfo};

use super::index::BLOCK_SIZE;
use super::layer::{covers, overlay};
use super::Cache;

impl Volume for Cache {
    fn info(&self) -> VolumeInfo {
        self.array.info()
    }

    fn size_bytes(&self) -> u64 {
        Cache::size_bytes(self)
    }

    /// Reads `buf.len()` bytes at `offset`.
    async fn read(&self, offset: u64, buf: BufSlice) -> Result<()> {
        let len = buf.len() as u64;
        if !self.caching() || len == 0 {
            return self.array.read(offset, buf).await;
        }
        self.array.check_read(offset, len)?;
        let blocks = offset / BLOCK_SIZE..(offset + len).div_ceil(BLOCK_SIZE);
        let hits: Vec<(u64, u32)> = {
            let mut index = self.index.borrow_mut();
            blocks
                .clone()
                .filter_map(|b| index.lookup(b).map(|slot| (b, slot)))
                .collect()
        };
        if hits.len() as u64 == blocks.end - blocks.start {
            // All in the cache: straight from the slots, nothing awaited in between.
            for &(b, slot) in &hits {
                overlay(&buf, offset, b, self.slot_buf(slot).bytes());
            }
            return Ok(());
        }
        // Some: copy them now (one buffer), since what the engine returns may be older than
        // them and the slots may be reused while it reads.
        let mut saved = vec![0u8; hits.len() * BLOCK_SIZE as usize];
        for (i, &(_, slot)) in hits.iter().enumerate() {
            saved[i * BLOCK_SIZE as usize..(i + 1) * BLOCK_SIZE as usize]
                .copy_from_slice(self.slot_buf(slot).bytes());
        }
        let epoch = self.bypass_epoch.get();
        self.array.read(offset, buf.clone()).await?;
        for (i, &(b, _)) in hits.iter().enumerate() {
            overlay(
                &buf,
                offset,
                b,
                &saved[i * BLOCK_SIZE as usize..(i + 1) * BLOCK_SIZE as usize],
            );
        }
        // Fill: whole blocks the read covered, unless a write went around the cache meanwhile
        // (what we read might then be older than the array) or the read is a large one.
        if hits.is_empty() && len < self.config.bypass_bytes && self.bypass_epoch.get() == epoch {
            let mut index = self.index.borrow_mut();
            for b in blocks {
                if !covers(b, offset, len) {
                    continue;
                }
                let at = b * BLOCK_SIZE;
                if let Some(slot) = index.insert_clean(b) {
                    let from = (at - offset) as usize;
                    let src = &buf.bytes()[from..from + BLOCK_SIZE as usize];
                    // SAFETY: the slot was just given to this block; its stripe lock is held.
                    (unsafe { self.slot_buf(slot).bytes_mut() }).copy_from_slice(src);
                }
            }
        }
        Ok(())
    }

    /// Writes `data` at `offset`: acknowledged from the cache in write-back, else once it is
    /// on the members (with `fua`, on their stable storage).
    async fn write(&self, offset: u64, data: BufSlice, fua: bool) -> Result<()> {
        let len = data.len() as u64;
        if !self.caching() || len == 0 {
            return self.array.write(offset, data, fua).await;
        }
        // Checked before the locks: a bad range must not turn into a huge lock range.
        self.array.check_write(offset, len)?;
        let _locks = self.lock_range(offset, len).await;
        let cacheable = self.write_back.get() && !fua && len < self.config.bypass_bytes;
        if cacheable && self.write_into_cache(offset, &data).await? {
            self.kick_if_needed();
            return Ok(());
        }
        self.write_around(offset, data, fua).await
    }

    /// Makes every write acknowledged before this call durable on the members.
    async fn flush(&self) -> Result<()> {
        if self.caching() {
            self.destage_until(self.now()).await?;
        }
        self.array.flush().await
    }

    /// Discards a range (reads back as zeroes afterwards).
    async fn trim(&self, offset: u64, len: u64) -> Result<()> {
        self.zero_around(offset, len, true).await
    }

    /// Zeroes a range.
    async fn write_zeroes(&self, offset: u64, len: u64) -> Result<()> {
        self.zero_around(offset, len, false).await
    }

    fn zeroes_fast(&self, offset: u64, len: u64) -> bool {
        self.array.zeroes_fast(offset, len)
    }
}
