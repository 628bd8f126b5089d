//! RAID6: P (XOR) and Q (md's Reed-Solomon syndrome) per stripe row, so any two members of a
//! row may be missing or unreadable.
//!
//! Reads and the row-lock discipline are RAID5's (`raid5.rs`); what differs is how a row is
//! made whole and how a write computes its parity:
//! - reconstruction of one chunk reads the other data chunks and P and XORs them, as RAID5
//!   does; only when one of those cannot be read as well is Q read and the row solved for the
//!   two lost chunks (`parity::raid6::recover`, chunks in md's syndrome order);
//! - writes are full-stripe (P and Q from the new data, no reads), read-modify-write (old P, Q
//!   and the old data of the written pieces read; P ^= delta, Q ^= g^i delta) when that reads
//!   less and every member of the row is there and resynced, or reconstruct-write: the data
//!   the request does not cover is read (with P and Q too when a data chunk is lost and has to
//!   be rebuilt first), the new pieces laid over it, and P and Q recomputed. A chunk the
//!   request covers whole is taken from the request itself, never copied. Reconstruct-write
//!   never trusts old parity, so rows past the sync point need no care unless a data chunk
//!   must be rebuilt from it.

use futures::future::join_all;

use super::raid5::{ChunkWrite, Retry, RowWrite};
use super::slots::SlotGone;
use super::Array;
use crate::buf::BufSlice;
use crate::parity::raid6::{gen_syndrome, recover, update, Lost};
use crate::parity::xor_all;

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
        let mut data: Vec<&mut [u8]> = geo
            .syndrome_slots(stripe)
            // SAFETY: the caller's promise; each data slot comes once in the syndrome order.
            .map(|s| unsafe { bufs[s].bytes_mut() })
            .collect();
        // SAFETY: as above; P and Q are not among the data buffers.
        let (p, q) = unsafe { (bufs[p_slot].bytes_mut(), bufs[q_slot].bytes_mut()) };
        recover(&mut data, p, q, &lost);
    }

    /// P and Q of row `stripe` over `width` bytes, from each data slot's bytes as `chunk_of`
    /// gives them.
    pub(crate) fn syndrome_of_row<'a>(
        &self,
        stripe: u64,
        width: usize,
        chunk_of: impl Fn(usize) -> &'a [u8],
    ) -> (BufSlice, BufSlice) {
        let data: Vec<&[u8]> = self.geo.syndrome_slots(stripe).map(chunk_of).collect();
        let p = BufSlice::zeroed(width);
        let q = BufSlice::zeroed(width);
        // SAFETY: fresh buffers of ours, not shared with anything yet.
        gen_syndrome(&data, unsafe { p.bytes_mut() }, unsafe { q.bytes_mut() });
        (p, q)
    }

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

    /// One row's part of `reconstruct6`: the XOR of the other data chunks and P when they all
    /// read (Q is not read then), else the row solved with Q as well.
    async fn reconstruct6_in_row(
        &self,
        missing_slot: usize,
        member_offset: u64,
        out: BufSlice,
    ) -> std::result::Result<(), SlotGone> {
        let stripe = member_offset / self.geo.chunk_bytes();
        let q_slot = self.geo.q_slot(stripe).expect("RAID6 has Q");
        let members = self.geo.members();
        let bufs: Vec<BufSlice> = (0..members).map(|_| BufSlice::zeroed(out.len())).collect();
        let read = |slots: Vec<usize>| {
            let bufs = &bufs;
            async move {
                let reads = slots
                    .iter()
                    .map(|&s| self.read_slot(s, member_offset, bufs[s].clone()));
                let results = join_all(reads).await;
                slots
                    .into_iter()
                    .zip(results)
                    .filter(|(_, r)| r.is_err())
                    .map(|(s, _)| s)
                    .collect::<Vec<usize>>()
            }
        };
        let mut lost = vec![missing_slot];
        let xor_side: Vec<usize> = (0..members)
            .filter(|&s| s != missing_slot && s != q_slot)
            .collect();
        lost.extend(read(xor_side.clone()).await);
        if missing_slot != q_slot && lost.len() == 1 {
            // The missing chunk is the XOR of the row's other data chunks and P.
            let srcs: Vec<&[u8]> = xor_side.iter().map(|&s| bufs[s].bytes()).collect();
            // SAFETY: `out` is the caller's buffer, not in any I/O now.
            xor_all(unsafe { out.bytes_mut() }, &srcs);
            return Ok(());
        }
        if missing_slot != q_slot {
            lost.extend(read(vec![q_slot]).await);
        }
        if lost.len() > 2 {
            return Err(SlotGone);
        }
        // SAFETY: the buffers are ours and their reads have completed.
        unsafe { self.recover_row(stripe, &bufs, &lost) };
        // SAFETY: `out` is the caller's buffer, not in any I/O now; ours is complete.
        unsafe { out.bytes_mut() }.copy_from_slice(bufs[missing_slot].bytes());
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
        if !row.full && self.rmw_pays(&row, writes, unreadable) {
            return self.write_row6_rmw(&row, writes, fua).await;
        }
        let (lo, width) = if row.full {
            (0, self.geo.chunk_bytes())
        } else {
            (row.lo, row.hi - row.lo)
        };
        // A full row needs nothing old; otherwise what the request leaves alone (and what a
        // lost data chunk must be solved from) is read.
        let (old, lost) = if row.full {
            (vec![None; self.geo.members()], Vec::new())
        } else {
            self.read_old(&row, writes, unreadable).await?
        };
        // The new data over the old, where a chunk's old bytes were read.
        for (k, w) in writes.iter().enumerate() {
            if let (Some(w), Some(buf)) = (w, &old[row.data_slots[k]]) {
                let at = (w.chunk_offset - lo) as usize;
                // SAFETY: our own buffer; its read has completed.
                (unsafe { buf.bytes_mut() })[at..at + w.src.len()].copy_from_slice(w.src.bytes());
            }
        }
        // A chunk with no old bytes read is covered by the request: its new bytes are the data.
        let (p, q) = self.syndrome_of_row(stripe, width as usize, |slot| match &old[slot] {
            Some(buf) => buf.bytes(),
            None => {
                let k = self
                    .geo
                    .parity_data_index(stripe, slot)
                    .expect("a data slot");
                writes[k].as_ref().expect("a covering write").src.bytes()
            }
        });
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
            if let (false, Some(buf)) = (written, &old[slot]) {
                if slot != row.parity_slot && slot != q_slot {
                    ios.push(self.write_slot(slot, base + lo, buf.clone(), fua));
                }
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

    /// The old bytes a reconstruct-write of `row` needs over `lo..hi`, one buffer per slot
    /// that has some (None where the request covers the chunk's window and nothing has to be
    /// solved), with the lost data chunks rebuilt; and the slots treated as lost.
    #[allow(clippy::type_complexity)]
    async fn read_old(
        &self,
        row: &RowWrite,
        writes: &[Option<ChunkWrite>],
        unreadable: &[usize],
    ) -> std::result::Result<(Vec<Option<BufSlice>>, Vec<usize>), Retry> {
        let q_slot = row.q_slot.expect("RAID6 has Q");
        let usable = |s: usize| self.is_slot_active(s) && !unreadable.contains(&s);
        let lost: Vec<usize> = (0..self.geo.members()).filter(|&s| !usable(s)).collect();
        if lost.len() > 2 {
            return Err(Retry {
                unreadable: unreadable.first().copied(),
            });
        }
        // Without a lost data chunk only the data the request leaves alone is needed; with
        // one, every chunk (P and Q too) is needed to solve for it.
        let data_lost = row.data_slots.iter().any(|s| lost.contains(s));
        let width = (row.hi - row.lo) as usize;
        let mut old: Vec<Option<BufSlice>> = vec![None; self.geo.members()];
        for (k, &slot) in row.data_slots.iter().enumerate() {
            let covered = writes[k]
                .as_ref()
                .is_some_and(|w| w.chunk_offset <= row.lo && w.end() >= row.hi);
            if data_lost || !covered {
                old[slot] = Some(BufSlice::zeroed(width));
            }
        }
        if data_lost {
            old[row.parity_slot] = Some(BufSlice::zeroed(width));
            old[q_slot] = Some(BufSlice::zeroed(width));
        }
        let wanted: Vec<usize> = (0..old.len())
            .filter(|&s| old[s].is_some() && usable(s))
            .collect();
        let reads = wanted.iter().map(|&s| {
            let buf = old[s].clone().expect("wanted slots have buffers");
            self.read_slot(s, row.base + row.lo, buf)
        });
        let results = join_all(reads).await;
        self.row_reads_ok(wanted.iter().copied().zip(results))?;
        if data_lost {
            let all: Vec<BufSlice> = old.iter().flatten().cloned().collect();
            debug_assert_eq!(all.len(), self.geo.members(), "every slot has a buffer");
            // SAFETY: the buffers are ours and their reads have completed.
            unsafe { self.recover_row(row.base / self.geo.chunk_bytes(), &all, &lost) };
        }
        Ok((old, lost))
    }
}
