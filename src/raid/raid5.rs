//! RAID5: one parity chunk per stripe row, rotating over the members (md's six algorithms).
//! The row-level paths here (reads, row locks, zeroing) serve RAID6 too; its parity and
//! reconstruction (and k+m rows') are in `coded.rs`.
//!
//! Writes, per stripe row and under that row's lock, pick the cheapest safe way:
//! - full-stripe write: every data chunk is new, parity = XOR of the new data, no reads;
//! - read-modify-write: read old data of the written pieces and old parity, parity ^= old ^ new;
//! - reconstruct-write: read the data the request does not cover, parity = XOR of all data.
//!
//! RMW trusts the old parity, so it is only used below the sync point (md's resync_offset);
//! past it, and whenever the read count favours it, reconstruct-write recomputes parity.
//!
//! Degraded (one member missing): a lost parity member means data is simply written; a lost
//! data member is reconstructed from the row before its new parity is computed. A read or write
//! error part-way marks the member faulty and the row is retried in the new (degraded) mode.

use futures::future::join_all;

use super::slots::SlotGone;
use super::Array;
use crate::buf::BufSlice;
use crate::error::Result;
use crate::parity::{xor_all, xor_into};

/// A write's part in one data chunk of a row: `chunk_offset..+len` from `src`.
#[derive(Clone)]
pub(super) struct ChunkWrite {
    pub(super) chunk_offset: u64,
    pub(super) src: BufSlice,
}

impl ChunkWrite {
    pub(super) fn end(&self) -> u64 {
        self.chunk_offset + self.src.len() as u64
    }
}

/// Why one attempt at a row did not finish: a member dropped out while reading (it is no
/// longer active, so the next attempt is degraded), or `unreadable` could not deliver a read
/// but is still in (a bad sector: the next attempt treats it as missing for this row, and
/// writing it repairs it).
pub(super) struct Retry {
    pub(super) unreadable: Option<usize>,
}

/// Where a row write goes: the row's slots and the span `lo..hi` of chunk offsets it covers.
pub(super) struct RowWrite {
    /// Member offset of the row.
    pub(super) base: u64,
    /// The row's parity slots (RAID5 one, RAID6 P and Q, k+m m).
    pub(super) parity: crate::layout::ParitySlots,
    /// Data slot of each data index.
    pub(super) data_slots: Vec<usize>,
    pub(super) lo: u64,
    pub(super) hi: u64,
    /// Every data chunk written whole: parity from the new data alone.
    pub(super) full: bool,
}

impl RowWrite {
    /// The row's (first) parity slot: RAID5's only one.
    pub(super) fn parity_slot(&self) -> usize {
        self.parity.as_slice()[0]
    }

    pub(super) fn new(array: &Array, stripe: u64, writes: &[Option<ChunkWrite>]) -> RowWrite {
        let chunk = array.geo.chunk_bytes();
        let pieces = || writes.iter().flatten();
        debug_assert!(
            pieces().all(|w| !w.src.is_empty() && w.end() <= chunk),
            "row {stripe}: a piece is empty or crosses its chunk"
        );
        RowWrite {
            base: stripe * chunk,
            parity: array.geo.parity_slots(stripe),
            data_slots: (0..writes.len())
                .map(|k| array.geo.parity_data_slot(stripe, k))
                .collect(),
            lo: pieces().map(|w| w.chunk_offset).min().unwrap_or(0),
            hi: pieces().map(|w| w.end()).max().unwrap_or(0),
            full: writes.iter().all(|w| {
                w.as_ref()
                    .is_some_and(|w| w.chunk_offset == 0 && w.end() == chunk)
            }),
        }
    }
}

impl Array {
    /// Whether parity is known to match the data in every row below member offset `end`.
    pub(crate) fn parity_in_sync(&self, end: u64) -> bool {
        end <= self.sync_offset.get()
    }

    /// The outcome of a row's member reads, `(slot, result)` each.
    pub(super) fn row_reads_ok(
        &self,
        reads: impl IntoIterator<Item = (usize, std::result::Result<(), SlotGone>)>,
    ) -> std::result::Result<(), Retry> {
        let mut failed = false;
        for (slot, r) in reads {
            if r.is_err() {
                failed = true;
                if self.is_slot_active(slot) {
                    return Err(Retry {
                        unreadable: Some(slot),
                    });
                }
            }
        }
        if failed {
            Err(Retry { unreadable: None })
        } else {
            Ok(())
        }
    }
}

/// Stripes zeroed per lock batch: bounded lock memory and latency for whole-device trims.
const ZERO_BATCH_BYTES: u64 = 64 << 20;

impl Array {
    pub(super) async fn read_raid5(&self, offset: u64, buf: BufSlice) -> Result<()> {
        let results = join_all(self.geo.pieces(offset, buf.len() as u64).map(|p| {
            self.read_raid5_piece(
                p.array_offset,
                buf.slice((p.array_offset - offset) as usize, p.len as usize),
            )
        }))
        .await;
        results.into_iter().collect()
    }

    async fn read_raid5_piece(&self, array_offset: u64, buf: BufSlice) -> Result<()> {
        let loc = self.geo.parity_locate(array_offset);
        let miss = match self
            .read_slot_correctable(loc.slot, loc.member_offset, buf.clone())
            .await
        {
            Ok(()) => return Ok(()),
            Err(miss) => miss,
        };
        self.count(|c| c.degraded_reads += 1);
        // A row not yet resynced has parity that may not match its data: rebuilding a bad
        // range from it would answer bytes nobody wrote. Only a member that is gone (the
        // array runs degraded and accepted that risk at assembly) is reconstructed there.
        let row_end = (loc.stripe + 1) * self.geo.chunk_bytes();
        if miss != super::correct::ReadMiss::Gone && !self.parity_in_sync(row_end) {
            return Err(self.lost_error(array_offset));
        }
        // Reconstruct under the row lock: a concurrent write must not change the row between
        // our reads of its members.
        let _guard = self.locks.lock(loc.stripe).await;
        self.reconstruct(loc.slot, loc.member_offset, buf.clone())
            .await
            .map_err(|_| self.lost_error(array_offset))?;
        if miss != super::correct::ReadMiss::Gone {
            self.repair_range(loc.slot, loc.member_offset, buf, miss)
                .await;
        }
        Ok(())
    }

    /// Fills `out` with the bytes of `missing_slot` at `member_offset` from the other
    /// members: RAID5 the XOR of all of them (data and parity alike), RAID6 solved row by row.
    pub(crate) async fn reconstruct(
        &self,
        missing_slot: usize,
        member_offset: u64,
        out: BufSlice,
    ) -> std::result::Result<(), SlotGone> {
        if self.code.is_some() {
            return self
                .reconstruct_coded(missing_slot, member_offset, out)
                .await;
        }
        let len = out.len();
        let others: Vec<usize> = (0..self.geo.members())
            .filter(|&s| s != missing_slot)
            .collect();
        let bufs: Vec<BufSlice> = others
            .iter()
            .skip(1)
            .map(|_| BufSlice::zeroed(len))
            .collect();
        let mut reads = vec![self.read_slot(others[0], member_offset, out.clone())];
        for (slot, b) in others.iter().skip(1).zip(&bufs) {
            reads.push(self.read_slot(*slot, member_offset, b.clone()));
        }
        for r in join_all(reads).await {
            r?;
        }
        // SAFETY: `out` is the caller's read buffer and its read has completed; `bufs` are ours.
        let dst = unsafe { out.bytes_mut() };
        for b in &bufs {
            xor_into(dst, b.bytes());
        }
        Ok(())
    }

    pub(super) async fn write_raid5(&self, offset: u64, data: BufSlice, fua: bool) -> Result<()> {
        let row = self.geo.stripe_bytes();
        let end = offset + data.len() as u64;
        let _guards = self
            .locks
            .lock_range(offset / row..(end - 1) / row + 1)
            .await;
        let rows = (offset / row..=(end - 1) / row).map(|stripe| {
            let from = offset.max(stripe * row);
            let to = end.min((stripe + 1) * row);
            self.write_row(
                stripe,
                from,
                data.slice((from - offset) as usize, (to - from) as usize),
                fua,
            )
        });
        join_all(rows).await.into_iter().collect()
    }

    /// Writes `data` (at array offset `array_offset`, inside row `stripe`); the row is locked.
    async fn write_row(
        &self,
        stripe: u64,
        array_offset: u64,
        data: BufSlice,
        fua: bool,
    ) -> Result<()> {
        let chunk = self.geo.chunk_bytes();
        let data_chunks = self.geo.members() - self.geo.parities();
        let mut writes: Vec<Option<ChunkWrite>> = vec![None; data_chunks];
        for p in self.geo.pieces(array_offset, data.len() as u64) {
            let loc = self.geo.parity_locate(p.array_offset);
            debug_assert_eq!(loc.stripe, stripe);
            writes[loc.data_index] = Some(ChunkWrite {
                chunk_offset: loc.member_offset - stripe * chunk,
                src: data.slice((p.array_offset - array_offset) as usize, p.len as usize),
            });
        }
        // Each failure removes a member; past the parity count the array has failed and we
        // stop. A member that cannot be read in this row is treated as missing for it (its part
        // is rebuilt from the others and rewritten); one more than the parities can cover
        // leaves no way to compute parity, and the write fails without touching anything.
        let mut unreadable: Vec<usize> = Vec::new();
        for _ in 0..self.geo.members() + 2 {
            if self.failed.get() {
                return Err(self.failed_error());
            }
            let attempt = if self.code.is_some() {
                self.write_row_coded_once(stripe, &writes, fua, &unreadable)
                    .await
            } else {
                self.write_row_once(stripe, &writes, fua, unreadable.first().copied())
                    .await
            };
            match attempt {
                Ok(()) if self.failed.get() => return Err(self.failed_error()),
                Ok(()) => return Ok(()),
                Err(Retry {
                    unreadable: Some(slot),
                }) => {
                    let absent = (0..self.geo.members())
                        .filter(|&s| !self.is_slot_active(s))
                        .count();
                    // A data member's part of a row not yet resynced cannot be had from its
                    // parity (see read_raid5_piece).
                    let untrusted = self.geo.parity_data_index(stripe, slot).is_some()
                        && !self.parity_in_sync((stripe + 1) * self.geo.chunk_bytes());
                    if absent + unreadable.len() + 1 > self.geo.parities() || untrusted {
                        return Err(self.lost_error(array_offset));
                    }
                    unreadable.push(slot);
                }
                Err(Retry { unreadable: None }) => {}
            }
        }
        Err(self.failed_error())
    }

    /// One attempt at writing `writes` into row `stripe` (its lock held), treating
    /// `unreadable` as missing: parity computed the cheapest way the row's state allows,
    /// then data, a lost member's window and parity written together.
    async fn write_row_once(
        &self,
        stripe: u64,
        writes: &[Option<ChunkWrite>],
        fua: bool,
        unreadable: Option<usize>,
    ) -> std::result::Result<(), Retry> {
        let row = RowWrite::new(self, stripe, writes);
        let (parity, lost_row) = self.row_parity(&row, writes, unreadable).await?;
        // Every parity update happens under its row's lock (taken by write_raid5).
        debug_assert!(
            self.locks.is_locked(stripe),
            "row {stripe} written without its lock"
        );
        let mut ios = Vec::new();
        for (k, w) in writes.iter().enumerate() {
            if let Some(w) = w {
                let at = row.base + w.chunk_offset;
                ios.push(self.write_slot(row.data_slots[k], at, w.src.clone(), fua));
            }
        }
        if let Some((slot, window)) = lost_row {
            ios.push(self.write_slot(slot, row.base + row.lo, window, fua));
        }
        if let Some(p) = parity {
            let at = if row.full {
                row.base
            } else {
                row.base + row.lo
            };
            ios.push(self.write_slot(row.parity_slot(), at, p, fua));
        }
        // A failed write leaves the row consistent for the degraded array: data that missed its
        // member is in the parity, parity that missed its member is not needed.
        join_all(ios).await;
        Ok(())
    }

    /// The new parity of a row write (None when the parity member does not take this row)
    /// and, when a data member is missing or unreadable but takes the row, its whole new
    /// window, reconstructed and overlaid.
    #[allow(clippy::type_complexity)]
    async fn row_parity(
        &self,
        row: &RowWrite,
        writes: &[Option<ChunkWrite>],
        unreadable: Option<usize>,
    ) -> std::result::Result<(Option<BufSlice>, Option<(usize, BufSlice)>), Retry> {
        let chunk = self.geo.chunk_bytes();
        let (base, lo, hi) = (row.base, row.lo, row.hi);
        let usable = |s: usize| self.is_slot_active(s) && Some(s) != unreadable;
        let missing_data = row.data_slots.iter().position(|&s| !usable(s));
        // The parity member takes this row when active, or when it is being rebuilt and its
        // cursor is past the row (then its old parity is valid but we recompute it anyway).
        let parity_active = usable(row.parity_slot());
        if row.full {
            let srcs: Vec<&[u8]> = writes.iter().flatten().map(|w| w.src.bytes()).collect();
            let p = BufSlice::filled(chunk as usize, |p| xor_all(p, &srcs));
            return Ok((Some(p), None));
        }
        if self.writable_disk(row.parity_slot(), base, chunk).is_none() {
            return Ok((None, None));
        }
        let slots = &row.data_slots;
        if let Some(missing) = missing_data {
            if !parity_active {
                // Two members not usable: failed (checked by the caller) or unreadable.
                return Err(Retry {
                    unreadable: unreadable.or(Some(row.parity_slot())),
                });
            }
            let (p, window) = self
                .parity_reconstructing(base, slots, row.parity_slot(), missing, writes, lo, hi)
                .await?;
            return Ok((Some(p), Some((slots[missing], window))));
        }
        let written: u64 = writes.iter().flatten().map(|w| w.src.len() as u64).sum();
        let rmw_reads = (hi - lo) + written;
        let rcw_reads = writes.len() as u64 * (hi - lo) - written;
        let parity_trusted = self.parity_in_sync(base + hi);
        let p = if parity_active && parity_trusted && rmw_reads < rcw_reads {
            self.parity_read_modify_write(base, slots, row.parity_slot(), writes, lo, hi)
                .await?
        } else {
            self.parity_reconstruct_write(base, slots, writes, lo, hi)
                .await?
        };
        Ok((Some(p), None))
    }

    /// Parity over `lo..hi` when no member is missing, from old parity and old data of the
    /// written pieces.
    async fn parity_read_modify_write(
        &self,
        row_base: u64,
        data_slots: &[usize],
        parity_slot: usize,
        writes: &[Option<ChunkWrite>],
        lo: u64,
        hi: u64,
    ) -> std::result::Result<BufSlice, Retry> {
        let parity = BufSlice::zeroed((hi - lo) as usize);
        let olds: Vec<(usize, BufSlice)> = writes
            .iter()
            .enumerate()
            .filter_map(|(k, w)| w.as_ref().map(|w| (k, BufSlice::zeroed(w.src.len()))))
            .collect();
        let mut slots = vec![parity_slot];
        let mut reads = vec![self.read_slot(parity_slot, row_base + lo, parity.clone())];
        for (k, old) in &olds {
            let w = writes[*k]
                .as_ref()
                .expect("old buffer only for written chunks");
            slots.push(data_slots[*k]);
            reads.push(self.read_slot(data_slots[*k], row_base + w.chunk_offset, old.clone()));
        }
        self.row_reads_ok(slots.into_iter().zip(join_all(reads).await))?;
        // SAFETY: our own buffer; its read has completed and it is not written anywhere yet.
        let p = unsafe { parity.bytes_mut() };
        for (k, old) in &olds {
            let w = writes[*k].as_ref().expect("written chunk");
            let at = (w.chunk_offset - lo) as usize;
            let window = &mut p[at..at + w.src.len()];
            xor_into(window, old.bytes());
            xor_into(window, w.src.bytes());
        }
        Ok(parity)
    }

    /// Parity over `lo..hi` computed from all data: the new pieces plus whatever data the write
    /// does not cover, read from the members.
    async fn parity_reconstruct_write(
        &self,
        row_base: u64,
        data_slots: &[usize],
        writes: &[Option<ChunkWrite>],
        lo: u64,
        hi: u64,
    ) -> std::result::Result<BufSlice, Retry> {
        // (position in lo..hi, buffer) of every byte range read from a member.
        let mut segments: Vec<(u64, BufSlice, usize)> = Vec::new();
        for (k, w) in writes.iter().enumerate() {
            let (gap_a, gap_b) = match w {
                None => ((lo, hi), (hi, hi)),
                Some(w) => ((lo, w.chunk_offset.max(lo)), (w.end().min(hi), hi)),
            };
            for (a, b) in [gap_a, gap_b] {
                if b > a {
                    segments.push((a - lo, BufSlice::zeroed((b - a) as usize), data_slots[k]));
                }
            }
        }
        let reads = segments
            .iter()
            .map(|(at, buf, slot)| self.read_slot(*slot, row_base + lo + at, buf.clone()));
        let results = join_all(reads).await;
        self.row_reads_ok(segments.iter().map(|s| s.2).zip(results))?;
        let parity = BufSlice::filled((hi - lo) as usize, |p| {
            for (at, buf, _) in &segments {
                xor_into(&mut p[*at as usize..*at as usize + buf.len()], buf.bytes());
            }
            for w in writes.iter().flatten() {
                let at = (w.chunk_offset - lo) as usize;
                xor_into(&mut p[at..at + w.src.len()], w.src.bytes());
            }
        });
        Ok(parity)
    }

    /// Parity over `lo..hi` when data member `missing` (a data index) is gone: rebuild its old
    /// bytes from the row, lay the new pieces over the row, and XOR it all.
    #[allow(clippy::too_many_arguments)]
    async fn parity_reconstructing(
        &self,
        row_base: u64,
        data_slots: &[usize],
        parity_slot: usize,
        missing: usize,
        writes: &[Option<ChunkWrite>],
        lo: u64,
        hi: u64,
    ) -> std::result::Result<(BufSlice, BufSlice), Retry> {
        let width = (hi - lo) as usize;
        let row: Vec<BufSlice> = data_slots.iter().map(|_| BufSlice::zeroed(width)).collect();
        let parity = BufSlice::zeroed(width);
        let mut slots = vec![parity_slot];
        let mut reads = vec![self.read_slot(parity_slot, row_base + lo, parity.clone())];
        for (k, slot) in data_slots.iter().enumerate() {
            if k != missing {
                slots.push(*slot);
                reads.push(self.read_slot(*slot, row_base + lo, row[k].clone()));
            }
        }
        self.row_reads_ok(slots.into_iter().zip(join_all(reads).await))?;
        // `row` and `parity` are our own buffers; their reads have completed and none of them
        // is handed to a write until this function returns.
        {
            // SAFETY: see above.
            let lost = unsafe { row[missing].bytes_mut() };
            lost.copy_from_slice(parity.bytes());
            for (k, b) in row.iter().enumerate() {
                if k != missing {
                    xor_into(lost, b.bytes());
                }
            }
        }
        for (k, w) in writes.iter().enumerate() {
            if let Some(w) = w {
                let at = (w.chunk_offset - lo) as usize;
                // SAFETY: see above.
                (unsafe { row[k].bytes_mut() })[at..at + w.src.len()]
                    .copy_from_slice(w.src.bytes());
            }
        }
        let srcs: Vec<&[u8]> = row.iter().map(|b| b.bytes()).collect();
        // SAFETY: see above; `srcs` borrow `row`, never `parity`.
        xor_all(unsafe { parity.bytes_mut() }, &srcs);
        let lost = row[missing].clone();
        Ok((parity, lost))
    }

    /// Zeroes: whole rows by zeroing every member (parity of zeroes is zeroes), partial rows
    /// through the normal write path.
    pub(super) async fn zero_raid5(&self, offset: u64, len: u64, discard: bool) -> Result<()> {
        let row = self.geo.stripe_bytes();
        let end = offset + len;
        let first_full = offset.div_ceil(row);
        let end_full = end / row;
        if first_full >= end_full {
            return self
                .write_raid5(offset, BufSlice::zeroed(len as usize), false)
                .await;
        }
        if offset < first_full * row {
            let head = first_full * row - offset;
            self.write_raid5(offset, BufSlice::zeroed(head as usize), false)
                .await?;
        }
        let chunk = self.geo.chunk_bytes();
        let batch = (ZERO_BATCH_BYTES / row).max(1);
        let mut stripe = first_full;
        while stripe < end_full {
            let upto = end_full.min(stripe + batch);
            let _guards = self.locks.lock_range(stripe..upto).await;
            let zeroing = (0..self.geo.members())
                .map(|slot| self.zero_slot(slot, stripe * chunk, (upto - stripe) * chunk, discard));
            join_all(zeroing).await;
            if self.failed.get() {
                return Err(self.failed_error());
            }
            stripe = upto;
        }
        if end > end_full * row {
            self.write_raid5(
                end_full * row,
                BufSlice::zeroed((end - end_full * row) as usize),
                false,
            )
            .await?;
        }
        Ok(())
    }
}
