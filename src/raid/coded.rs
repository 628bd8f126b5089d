//! Rows with more than one parity chunk: RAID6 (P and md's Q) and k+m erasure-coded rows.
//! Any `parities()` chunks of such a row may be missing or unreadable.
//!
//! Reads and the row-lock discipline are RAID5's (`raid5.rs`); the code itself is
//! `parity::code::RowCode`, which sees a row as its data chunks in the code's order
//! (`Geometry::code_slots`; RAID6 md's syndrome order) and its parity chunks in theirs
//! (`Geometry::parity_slots`). What differs from RAID5 is how a row is made whole and how a
//! write computes its parity:
//! - reconstruction of one chunk reads the other data chunks and parity 0; when parity 0 is
//!   their XOR (RAID6's P) and all of them read, that XOR is the answer. Otherwise further
//!   parity chunks are read, one per chunk that could not be, and the row is solved;
//! - writes are full-stripe (parity from the new data, no reads), read-modify-write (old
//!   parity and the old data of the written pieces read, each parity chunk updated by the
//!   change) when that reads less and every member of the row is there and resynced, or
//!   reconstruct-write: the data the request does not cover is read (every chunk when a data
//!   chunk is lost and has to be rebuilt first), the new pieces laid over it, and parity
//!   recomputed. A chunk the request covers whole is taken from the request itself, never
//!   copied. Reconstruct-write never trusts old parity, so rows past the sync point need no
//!   care unless a data chunk must be rebuilt from it.

use futures::future::join_all;

use super::raid5::{ChunkWrite, Retry, RowWrite};
use super::slots::SlotGone;
use super::Array;
use crate::buf::BufSlice;
use crate::parity::code::{Chunk, RowCode};
use crate::parity::xor_all;

impl Array {
    /// The row code; only arrays with more than one parity chunk per row have one.
    fn code(&self) -> &RowCode {
        self.code.as_ref().expect("a RAID6 or k+m array")
    }

    /// Rebuilds the buffers of the `lost` slots (at most `parities()`) of row `stripe` from
    /// the other slots' buffers (`bufs`, one per slot, all over the same member range).
    ///
    /// # Safety
    /// Every buffer in `bufs` must be the caller's own, with no I/O in flight on it, and no
    /// other reference to their bytes may be alive during the call.
    pub(crate) unsafe fn recover_row(&self, stripe: u64, bufs: &[BufSlice], lost: &[usize]) {
        let geo = &self.geo;
        let parity_slots = geo.parity_slots(stripe);
        let as_chunk = |slot: usize| match geo.code_index(stripe, slot) {
            Some(i) => Chunk::Data(i),
            None => Chunk::Parity(parity_slots.index_of(slot).expect("a parity slot")),
        };
        let lost: Vec<Chunk> = lost.iter().map(|&s| as_chunk(s)).collect();
        let mut data: Vec<&mut [u8]> = geo
            .code_slots(stripe)
            // SAFETY: the caller's promise; each data slot comes once in the code's order.
            .map(|s| unsafe { bufs[s].bytes_mut() })
            .collect();
        let mut parity: Vec<&mut [u8]> = parity_slots
            .as_slice()
            .iter()
            // SAFETY: as above; parity slots are not among the data slots.
            .map(|&s| unsafe { bufs[s].bytes_mut() })
            .collect();
        self.code().recover(&mut data, &mut parity, &lost);
    }

    /// The parity chunks of row `stripe` over `width` bytes, in the code's order, from each
    /// data slot's bytes as `chunk_of` gives them.
    pub(crate) fn parity_of_row<'a>(
        &self,
        stripe: u64,
        width: usize,
        chunk_of: impl Fn(usize) -> &'a [u8],
    ) -> Vec<BufSlice> {
        let data: Vec<&[u8]> = self.geo.code_slots(stripe).map(chunk_of).collect();
        let parity: Vec<BufSlice> = (0..self.geo.parities())
            .map(|_| BufSlice::zeroed(width))
            .collect();
        // SAFETY: fresh buffers of ours, not shared with anything yet.
        let mut outs: Vec<&mut [u8]> = parity.iter().map(|b| unsafe { b.bytes_mut() }).collect();
        self.code().encode(&data, &mut outs);
        parity
    }

    /// Fills `out` with what `missing_slot` holds at `member_offset`, solved from the other
    /// members row by row; fails when a row has more chunks it cannot read than parity.
    pub(super) async fn reconstruct_coded(
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
            self.reconstruct_in_row(missing_slot, at, part).await?;
            done += len;
        }
        Ok(())
    }

    /// One row's part of `reconstruct_coded`: the other data chunks and parity 0 are read;
    /// their XOR when that is the answer, else one more parity chunk for each that failed,
    /// and the row solved.
    async fn reconstruct_in_row(
        &self,
        missing_slot: usize,
        member_offset: u64,
        out: BufSlice,
    ) -> std::result::Result<(), SlotGone> {
        let stripe = member_offset / self.geo.chunk_bytes();
        let parity_slots = self.geo.parity_slots(stripe);
        let members = self.geo.members();
        let data_chunks = members - parity_slots.as_slice().len();
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
                    .filter(|(_, r)| r.is_ok())
                    .map(|(s, _)| s)
                    .collect::<Vec<usize>>()
            }
        };
        let first: Vec<usize> = (0..members)
            .filter(|&s| s != missing_slot)
            .filter(|&s| !parity_slots.contains(s) || parity_slots.index_of(s) == Some(0))
            .collect();
        let mut present = read(first.clone()).await;
        let xor_answers = parity_slots.index_of(missing_slot).unwrap_or(0) == 0;
        if present.len() == first.len() && xor_answers && self.code().first_parity_is_xor() {
            let srcs: Vec<&[u8]> = first.iter().map(|&s| bufs[s].bytes()).collect();
            // SAFETY: `out` is the caller's buffer, not in any I/O now.
            xor_all(unsafe { out.bytes_mut() }, &srcs);
            return Ok(());
        }
        let mut more = parity_slots.as_slice()[1..]
            .iter()
            .copied()
            .filter(|&s| s != missing_slot);
        while present.len() < data_chunks {
            let wanted: Vec<usize> = more.by_ref().take(data_chunks - present.len()).collect();
            if wanted.is_empty() {
                return Err(SlotGone);
            }
            present.extend(read(wanted).await);
        }
        let lost: Vec<usize> = (0..members).filter(|s| !present.contains(s)).collect();
        // SAFETY: the buffers are ours and their reads have completed.
        unsafe { self.recover_row(stripe, &bufs, &lost) };
        // SAFETY: `out` is the caller's buffer, not in any I/O now; ours is complete.
        unsafe { out.bytes_mut() }.copy_from_slice(bufs[missing_slot].bytes());
        Ok(())
    }

    /// One attempt at writing `writes` into row `stripe` (its lock held), treating
    /// `unreadable` as missing (up to `parities()` members of the row may be missing or
    /// unreadable; an unreadable one is rebuilt and rewritten). The retries are `write_row`'s.
    pub(super) async fn write_row_coded_once(
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
        if !row.full && self.rmw_pays(&row, writes, unreadable) {
            return self.write_row_rmw(&row, writes, fua).await;
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
        let parity = self.parity_of_row(stripe, width as usize, |slot| match &old[slot] {
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
                if !row.parity.contains(slot) {
                    ios.push(self.write_slot(slot, base + lo, buf.clone(), fua));
                }
            }
        }
        for (&slot, buf) in row.parity.as_slice().iter().zip(parity) {
            ios.push(self.write_slot(slot, base + lo, buf, fua));
        }
        // A failed write leaves the row consistent for the degraded array: the parity covers
        // the new data wherever a member missed it.
        join_all(ios).await;
        Ok(())
    }

    /// Whether a read-modify-write of `row` reads less than a reconstruct-write (md picks by the
    /// same count): it needs every member usable and the parity trusted (the row resynced).
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
        let rmw_reads = self.geo.parities() as u64 * width + written;
        let rcw_reads = (writes.len() as u64 * width).saturating_sub(written);
        all_usable && self.parity_in_sync(row.base + row.hi) && rmw_reads < rcw_reads
    }

    /// Read-modify-write: the old parity over `lo..hi` and the old data of the written pieces
    /// are read; each parity chunk is updated by each piece's change (`RowCode::update`); the
    /// pieces and the parity are written together.
    async fn write_row_rmw(
        &self,
        row: &RowWrite,
        writes: &[Option<ChunkWrite>],
        fua: bool,
    ) -> std::result::Result<(), Retry> {
        let width = (row.hi - row.lo) as usize;
        let parity_slots = row.parity.as_slice();
        let parity: Vec<BufSlice> = parity_slots
            .iter()
            .map(|_| BufSlice::zeroed(width))
            .collect();
        let pieces: Vec<(usize, &ChunkWrite, BufSlice)> = writes
            .iter()
            .enumerate()
            .filter_map(|(k, w)| w.as_ref().map(|w| (k, w, BufSlice::zeroed(w.src.len()))))
            .collect();
        let mut slots = parity_slots.to_vec();
        let mut reads: Vec<_> = parity_slots
            .iter()
            .zip(&parity)
            .map(|(&s, buf)| self.read_slot(s, row.base + row.lo, buf.clone()))
            .collect();
        for (k, w, old) in &pieces {
            slots.push(row.data_slots[*k]);
            reads.push(self.read_slot(row.data_slots[*k], row.base + w.chunk_offset, old.clone()));
        }
        self.row_reads_ok(slots.into_iter().zip(join_all(reads).await))?;
        let stripe = row.base / self.geo.chunk_bytes();
        for (k, w, old) in &pieces {
            let i = self
                .geo
                .code_index(stripe, row.data_slots[*k])
                .expect("a data slot");
            let at = (w.chunk_offset - row.lo) as usize;
            let n = w.src.len();
            // SAFETY: the parity buffers are our own; their reads have completed and they are
            // not handed to a write before this loop ends.
            let mut outs: Vec<&mut [u8]> = parity
                .iter()
                .map(|b| unsafe { &mut b.bytes_mut()[at..at + n] })
                .collect();
            self.code().update(i, old.bytes(), w.src.bytes(), &mut outs);
        }
        let mut ios = Vec::new();
        for (k, w, _) in &pieces {
            let at = row.base + w.chunk_offset;
            ios.push(self.write_slot(row.data_slots[*k], at, w.src.clone(), fua));
        }
        for (&slot, buf) in parity_slots.iter().zip(parity) {
            ios.push(self.write_slot(slot, row.base + row.lo, buf, fua));
        }
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
        let usable = |s: usize| self.is_slot_active(s) && !unreadable.contains(&s);
        let lost: Vec<usize> = (0..self.geo.members()).filter(|&s| !usable(s)).collect();
        if lost.len() > self.geo.parities() {
            return Err(Retry {
                unreadable: unreadable.first().copied(),
            });
        }
        // Without a lost data chunk only the data the request leaves alone is needed; with
        // one, every chunk (parity too) is needed to solve for it.
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
            for &slot in row.parity.as_slice() {
                old[slot] = Some(BufSlice::zeroed(width));
            }
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
