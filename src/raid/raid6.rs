//! RAID6: P (XOR) and Q (md's Reed-Solomon syndrome) per stripe row, so any two members of a
//! row may be missing or unreadable.
//!
//! Reads and the row-lock discipline are RAID5's (`raid5.rs`); what differs is how a row is
//! made whole and how a write computes its parity:
//! - reconstruction reads the window from every other member and solves for up to two lost
//!   chunks (`parity::raid6::recover`, chunks in md's syndrome order);
//! - writes are full-stripe (P and Q from the new data, no reads), read-modify-write (old P, Q
//!   and the old data of the written pieces read; P ^= delta, Q ^= g^i delta) when that reads
//!   less and every member of the row is there and resynced, or reconstruct-write: the data
//!   the request does not cover is read (with P and Q too when a data chunk is lost and has to
//!   be rebuilt first), the new pieces laid over it, and P and Q recomputed. Reconstruct-write
//!   never trusts old parity, so rows past the sync point need no care unless a data chunk
//!   must be rebuilt from it.

use futures::future::join_all;

use super::raid5::{ChunkWrite, Retry, RowWrite};
use super::slots::SlotGone;
use super::Array;
use crate::buf::BufSlice;
use crate::parity::raid6::{gen_syndrome, recover, update, Lost};

/// A window of one stripe row, one buffer per slot (all at the same member offsets).
struct RowWindow {
    stripe: u64,
    bufs: Vec<BufSlice>,
}

impl RowWindow {
    fn new(members: usize, stripe: u64, width: usize) -> RowWindow {
        RowWindow {
            stripe,
            bufs: (0..members).map(|_| BufSlice::zeroed(width)).collect(),
        }
    }
}

impl Array {
    /// Rebuilds the buffers of the `lost` slots (at most two) of row `stripe` from the other
    /// slots' buffers (`bufs`, one per slot, all over the same member range).
    ///
    /// # Safety
    /// Every buffer in `bufs` must be the caller's own, with no I/O in flight on it, and no
    /// other reference to their bytes may be alive during the call.
    pub(crate) unsafe fn recover_row(&self, stripe: u64, bufs: &[BufSlice], lost: &[usize]) {
        let geo = &self.geo;
        let (p_slot, q_slot) = (geo.p_slot(stripe), geo.q_slot(stripe).expect("RAID6"));
        let as_lost = |slot: usize| match geo.syndrome_index(stripe, slot) {
            Some(i) => Lost::Data(i),
            None if slot == q_slot => Lost::Q,
            None => Lost::P,
        };
        let lost: Vec<Lost> = lost.iter().map(|&s| as_lost(s)).collect();
        let mut data: Vec<(usize, &mut [u8])> = (0..geo.members())
            .filter_map(|s| {
                let i = geo.syndrome_index(stripe, s)?;
                // SAFETY: the caller's promise; each slot's buffer is borrowed exactly once.
                Some((i, unsafe { bufs[s].bytes_mut() }))
            })
            .collect();
        data.sort_by_key(|(i, _)| *i);
        let mut data: Vec<&mut [u8]> = data.into_iter().map(|(_, b)| b).collect();
        // SAFETY: as above; P and Q are not among the data buffers.
        let (p, q) = unsafe { (bufs[p_slot].bytes_mut(), bufs[q_slot].bytes_mut()) };
        recover(&mut data, p, q, &lost);
    }

    /// P and Q of row `stripe` computed from the data slots' buffers (`bufs`, one per slot).
    pub(crate) fn syndrome_of_row(&self, stripe: u64, bufs: &[BufSlice]) -> (BufSlice, BufSlice) {
        let geo = &self.geo;
        let mut data: Vec<(usize, &[u8])> = (0..geo.members())
            .filter_map(|s| Some((geo.syndrome_index(stripe, s)?, bufs[s].bytes())))
            .collect();
        data.sort_by_key(|(i, _)| *i);
        let data: Vec<&[u8]> = data.into_iter().map(|(_, b)| b).collect();
        let width = bufs[0].len();
        let p = BufSlice::zeroed(width);
        let q = BufSlice::zeroed(width);
        // SAFETY: fresh buffers of ours, not shared with anything yet.
        gen_syndrome(&data, unsafe { p.bytes_mut() }, unsafe { q.bytes_mut() });
        (p, q)
    }
}

impl Array {
    /// Fills `out` with what `missing_slot` holds at `member_offset`, solved from the other
    /// members row by row; fails when a row has more than two chunks it cannot read.
    pub(super) async fn reconstruct6(
        &self,
        missing_slot: usize,
        member_offset: u64,
        out: BufSlice,
    ) -> std::result::Result<(), SlotGone> {
        let chunk = self.geo.chunk_bytes();
        let mut done = 0u64;
        while done < out.len() as u64 {
            let at = member_offset + done;
            let len = (chunk - at % chunk).min(out.len() as u64 - done);
            let part = out.slice(done as usize, len as usize);
            self.reconstruct6_in_row(missing_slot, at, part).await?;
            done += len;
        }
        Ok(())
    }

    async fn reconstruct6_in_row(
        &self,
        missing_slot: usize,
        member_offset: u64,
        out: BufSlice,
    ) -> std::result::Result<(), SlotGone> {
        let stripe = member_offset / self.geo.chunk_bytes();
        let window = RowWindow::new(self.geo.members(), stripe, out.len());
        let others: Vec<usize> = (0..self.geo.members())
            .filter(|&s| s != missing_slot)
            .collect();
        let reads = others
            .iter()
            .map(|&s| self.read_slot(s, member_offset, window.bufs[s].clone()));
        let mut lost = vec![missing_slot];
        for (slot, r) in others.iter().zip(join_all(reads).await) {
            if r.is_err() {
                lost.push(*slot);
            }
        }
        if lost.len() > 2 {
            return Err(SlotGone);
        }
        // SAFETY: the window's buffers are ours and their reads have completed.
        unsafe { self.recover_row(stripe, &window.bufs, &lost) };
        // SAFETY: `out` is the caller's buffer, not in any I/O now; ours is complete.
        unsafe { out.bytes_mut() }.copy_from_slice(window.bufs[missing_slot].bytes());
        Ok(())
    }

    /// One attempt at writing `writes` into RAID6 row `stripe` (its lock held), treating
    /// `unreadable` as missing (up to two members of the row may be missing or unreadable;
    /// an unreadable one is rebuilt and rewritten). The retries are `write_row`'s.
    pub(super) async fn write_row6_once(
        &self,
        stripe: u64,
        writes: &[Option<ChunkWrite>],
        fua: bool,
        unreadable: &[usize],
    ) -> std::result::Result<(), Retry> {
        let row = RowWrite::new(self, stripe, writes);
        debug_assert!(
            self.locks.is_locked(stripe),
            "row {stripe} written without its lock"
        );
        let q_slot = row.q_slot.expect("RAID6 has Q");
        let (lo, hi) = if row.full {
            (0, self.geo.chunk_bytes())
        } else {
            (row.lo, row.hi)
        };
        if !row.full && self.rmw_pays(&row, writes, unreadable) {
            return self.write_row6_rmw(&row, writes, fua).await;
        }
        let window = RowWindow::new(self.geo.members(), stripe, (hi - lo) as usize);
        let lost = if row.full {
            Vec::new()
        } else {
            self.read_row_window(&row, &window, writes, unreadable)
                .await?
        };
        // The new data over the old (or over zeroes, where a chunk is written whole).
        for (k, w) in writes.iter().enumerate() {
            if let Some(w) = w {
                let at = (w.chunk_offset - lo) as usize;
                // SAFETY: the window's own buffer; its reads have completed.
                (unsafe { window.bufs[row.data_slots[k]].bytes_mut() })[at..at + w.src.len()]
                    .copy_from_slice(w.src.bytes());
            }
        }
        let (p, q) = self.syndrome_of_row(stripe, &window.bufs);
        let base = row.base;
        let mut ios = Vec::new();
        for (k, w) in writes.iter().enumerate() {
            if let Some(w) = w {
                let at = base + w.chunk_offset;
                ios.push(self.write_slot(row.data_slots[k], at, w.src.clone(), fua));
            }
        }
        // A lost data chunk's window, rebuilt: a member being filled takes it below its
        // cursor, and an unreadable range is rewritten (the drive remaps it).
        for &slot in &lost {
            let written = writes
                .iter()
                .enumerate()
                .any(|(k, w)| w.is_some() && row.data_slots[k] == slot);
            if !written && slot != row.parity_slot && slot != q_slot {
                ios.push(self.write_slot(slot, base + lo, window.bufs[slot].clone(), fua));
            }
        }
        ios.push(self.write_slot(row.parity_slot, base + lo, p, fua));
        ios.push(self.write_slot(q_slot, base + lo, q, fua));
        // A failed write leaves the row consistent for the degraded array: P and Q cover the
        // new data wherever a member missed it.
        join_all(ios).await;
        Ok(())
    }

    /// Whether a read-modify-write of `row` reads less than a reconstruct-write (md picks by the
    /// same count): it needs every member usable and P and Q trusted (the row resynced).
    fn rmw_pays(
        &self,
        row: &RowWrite,
        writes: &[Option<ChunkWrite>],
        unreadable: &[usize],
    ) -> bool {
        let all_usable =
            unreadable.is_empty() && (0..self.geo.members()).all(|s| self.is_slot_active(s));
        let width = row.hi - row.lo;
        let written: u64 = writes.iter().flatten().map(|w| w.src.len() as u64).sum();
        let rmw_reads = 2 * width + written;
        let rcw_reads = (writes.len() as u64 * width).saturating_sub(written);
        all_usable && self.parity_in_sync(row.base + row.hi) && rmw_reads < rcw_reads
    }

    /// Read-modify-write: old P and Q over `lo..hi` and the old data of the written pieces are
    /// read; P ^= old ^ new and Q ^= g^i (old ^ new) for each piece (its syndrome index i);
    /// the pieces, P and Q are written together.
    async fn write_row6_rmw(
        &self,
        row: &RowWrite,
        writes: &[Option<ChunkWrite>],
        fua: bool,
    ) -> std::result::Result<(), Retry> {
        let q_slot = row.q_slot.expect("RAID6 has Q");
        let width = (row.hi - row.lo) as usize;
        let (p, q) = (BufSlice::zeroed(width), BufSlice::zeroed(width));
        let pieces: Vec<(usize, &ChunkWrite, BufSlice)> = writes
            .iter()
            .enumerate()
            .filter_map(|(k, w)| w.as_ref().map(|w| (k, w, BufSlice::zeroed(w.src.len()))))
            .collect();
        let mut slots = vec![row.parity_slot, q_slot];
        let mut reads = vec![
            self.read_slot(row.parity_slot, row.base + row.lo, p.clone()),
            self.read_slot(q_slot, row.base + row.lo, q.clone()),
        ];
        for (k, w, old) in &pieces {
            slots.push(row.data_slots[*k]);
            reads.push(self.read_slot(row.data_slots[*k], row.base + w.chunk_offset, old.clone()));
        }
        self.row_reads_ok(slots.into_iter().zip(join_all(reads).await))?;
        let stripe = row.base / self.geo.chunk_bytes();
        for (k, w, old) in &pieces {
            let i = self
                .geo
                .syndrome_index(stripe, row.data_slots[*k])
                .expect("a data slot");
            let at = (w.chunk_offset - row.lo) as usize;
            let n = w.src.len();
            // SAFETY: P and Q are our own buffers; their reads have completed and they are not
            // handed to a write before this loop ends.
            let (pw, qw) = unsafe {
                (
                    &mut p.bytes_mut()[at..at + n],
                    &mut q.bytes_mut()[at..at + n],
                )
            };
            update(i, old.bytes(), w.src.bytes(), pw, qw);
        }
        let mut ios = Vec::new();
        for (k, w, _) in &pieces {
            let at = row.base + w.chunk_offset;
            ios.push(self.write_slot(row.data_slots[*k], at, w.src.clone(), fua));
        }
        ios.push(self.write_slot(row.parity_slot, row.base + row.lo, p, fua));
        ios.push(self.write_slot(q_slot, row.base + row.lo, q, fua));
        join_all(ios).await;
        Ok(())
    }

    /// Reads what a reconstruct-write of `row` needs into `window` and rebuilds the data
    /// chunks that could not be read; returns the slots it treated as lost.
    async fn read_row_window(
        &self,
        row: &RowWrite,
        window: &RowWindow,
        writes: &[Option<ChunkWrite>],
        unreadable: &[usize],
    ) -> std::result::Result<Vec<usize>, Retry> {
        let q_slot = row.q_slot.expect("RAID6 has Q");
        let usable = |s: usize| self.is_slot_active(s) && !unreadable.contains(&s);
        let lost: Vec<usize> = (0..self.geo.members()).filter(|&s| !usable(s)).collect();
        let data_lost = row.data_slots.iter().any(|s| lost.contains(s));
        if lost.len() > 2 {
            return Err(Retry {
                unreadable: unreadable.first().copied(),
            });
        }
        // Without a lost data chunk only the data the request leaves alone is needed; with
        // one, every chunk (P and Q too) is needed to solve for it.
        let covers = |k: usize| {
            writes[k]
                .as_ref()
                .is_some_and(|w| w.chunk_offset <= row.lo && w.end() >= row.hi)
        };
        let mut wanted: Vec<usize> = (0..writes.len())
            .filter(|&k| data_lost || !covers(k))
            .map(|k| row.data_slots[k])
            .collect();
        if data_lost {
            wanted.extend([row.parity_slot, q_slot]);
        }
        wanted.retain(|s| usable(*s));
        let reads = wanted
            .iter()
            .map(|&s| self.read_slot(s, row.base + row.lo, window.bufs[s].clone()));
        let results = join_all(reads).await;
        self.row_reads_ok(wanted.iter().copied().zip(results))?;
        if data_lost {
            // SAFETY: the window's buffers are ours and their reads have completed.
            unsafe { self.recover_row(window.stripe, &window.bufs, &lost) };
        }
        Ok(lost)
    }
}
