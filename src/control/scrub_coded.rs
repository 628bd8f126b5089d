//! `check` and `repair` of RAID6 and k+m rows: every parity chunk (P and Q) recomputed from
//! the data and compared with what the members hold, 4 KiB block by block (md counts a block
//! whose P or Q differs as 8 mismatched sectors). `repair` rewrites the parity that differs.
//! Sectors a member cannot read are rebuilt from the rest of the row and rewritten there (up to
//! the parity count per row), as md's check does; a data sector that cannot be had is recorded
//! in that member's bad-block log.

use super::Controller;
use crate::buf::BufSlice;

const BLOCK: usize = 4096;

impl Controller {
    /// RAID6 or k+m rows covering member bytes `at..at+len` (whole chunks): mismatching sectors, or
    /// None when a member dropped out (the check ends, as md's does).
    pub(super) async fn scrub_rows_coded(&self, at: u64, len: u64, repair: bool) -> Option<u64> {
        let chunk = self.array.geo.chunk_bytes();
        let _guards = self.lock_units(at, len, chunk).await;
        let mut sectors = 0;
        let mut row_at = at;
        while row_at < at + len {
            let n = (chunk - row_at % chunk).min(at + len - row_at);
            sectors += self.scrub_row_coded(row_at, n, repair).await?;
            row_at += n;
        }
        Some(sectors)
    }

    async fn scrub_row_coded(&self, at: u64, len: u64, repair: bool) -> Option<u64> {
        let geo = &self.array.geo;
        let stripe = at / geo.chunk_bytes();
        let (bufs, unreadable) = self.read_all_members(at, len).await?;
        if !unreadable.is_empty() {
            return self.scrub_row_coded_by_block(stripe, at, len, repair).await;
        }
        self.check_parity_coded(stripe, at, &bufs, repair).await
    }

    /// Compares the parity chunks of `bufs` (one per slot, at member offset `at` of row
    /// `stripe`) with what the data gives, 4 KiB at a time; with `repair` rewrites what
    /// differs.
    async fn check_parity_coded(
        &self,
        stripe: u64,
        at: u64,
        bufs: &[BufSlice],
        repair: bool,
    ) -> Option<u64> {
        let width = bufs[0].len();
        let parity = self.array.parity_of_row(stripe, width, |s| bufs[s].bytes());
        let slots = self.array.geo.parity_slots(stripe);
        let mut sectors = 0;
        for start in (0..width).step_by(BLOCK) {
            let end = (start + BLOCK).min(width);
            let bad: Vec<(usize, &BufSlice)> = slots
                .as_slice()
                .iter()
                .zip(&parity)
                .filter(|(&slot, fixed)| {
                    fixed.bytes()[start..end] != bufs[slot].bytes()[start..end]
                })
                .map(|(&slot, fixed)| (slot, fixed))
                .collect();
            if bad.is_empty() {
                continue;
            }
            sectors += ((end - start) / 512) as u64;
            if !repair {
                continue;
            }
            let off = at + start as u64;
            for (slot, fixed) in bad {
                let block = fixed.slice(start, end - start);
                if self
                    .array
                    .write_slot(slot, off, block, false)
                    .await
                    .is_err()
                {
                    return None;
                }
            }
        }
        Some(sectors)
    }

    /// A row where some member could not read part of the range: each 4 KiB block with at
    /// most `parities()` unreadable members is rebuilt and rewritten there (a data block of a row not
    /// yet resynced cannot be had from its parity: it is recorded lost); with more, the data
    /// blocks concerned are recorded lost. Blocks every member reads are compared as usual.
    async fn scrub_row_coded_by_block(
        &self,
        stripe: u64,
        at: u64,
        len: u64,
        repair: bool,
    ) -> Option<u64> {
        let geo = &self.array.geo;
        let mut sectors = 0;
        for off in (at..at + len).step_by(BLOCK) {
            let n = (BLOCK as u64).min(at + len - off);
            let (bufs, unreadable) = self.read_all_members(off, n).await?;
            if unreadable.is_empty() {
                sectors += self.check_parity_coded(stripe, off, &bufs, repair).await?;
                continue;
            }
            let data_unreadable = unreadable
                .iter()
                .any(|&s| geo.parity_data_index(stripe, s).is_some());
            let trusted = self.array.parity_in_sync(off + n);
            if unreadable.len() > geo.parities() || (data_unreadable && !trusted) {
                for &slot in &unreadable {
                    if let Some(d) = self.array.active_disk(slot) {
                        self.array.record_bad(&d, off, n).await;
                    }
                }
                continue;
            }
            // SAFETY: our own buffers; their reads have completed.
            unsafe { self.array.recover_row(stripe, &bufs, &unreadable) };
            for &slot in &unreadable {
                let miss = self.array.miss_kind(slot, off, n);
                self.array
                    .repair_range(slot, off, bufs[slot].clone(), miss)
                    .await;
            }
        }
        Some(sectors)
    }
}
