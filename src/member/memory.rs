//! A deterministic simulated member (tests): memory-backed, with seeded completion reordering.
//!
//! Each operation yields to the reactor a pseudo-random number of times before it takes effect,
//! so concurrent requests complete out of order, reproducibly for a given seed. The member also
//! counts overlapping writes in flight: with stripe locks in place a redundant array must never
//! issue two at once to the same bytes (TigerBeetle's simulated storage asserts the same).
//!
//! With [`MemMember::with_volatile_cache`] it behaves like a disk with a write cache: a write
//! is visible to reads at once but durable only after a flush, or at once when written with
//! FUA. [`MemMember::power_cut`] then keeps a seeded random subset of the sectors written since
//! the last flush (so a multi-sector write may be torn at any sector boundary) and drops the
//! rest, as a power loss does.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::io;
use std::sync::{Arc, Mutex};

use super::{LocalFuture, Member};
use crate::buf::BufSlice;
use crate::reactor::yield_now;

/// Simulated device contents, shareable across reactors (to "reassemble" in tests).
pub type MemStore = Arc<Mutex<Vec<u8>>>;

pub struct MemMember {
    path: String,
    data: MemStore,
    rng: Cell<u64>,
    max_yields: u32,
    writes_in_flight: RefCell<Vec<(u64, u64)>>,
    overlapping_writes: Cell<u64>,
    /// With a simulated volatile write cache: for every sector written since the last flush
    /// and not yet durable, what the medium held before (what a power cut falls back to).
    /// `data` always holds what reads see.
    unflushed: RefCell<Option<BTreeMap<u64, Box<[u8]>>>>,
}

const SECTOR: u64 = 512;

impl MemMember {
    /// A zeroed device of `size_bytes`.
    pub fn new(path: &str, size_bytes: u64, seed: u64) -> MemMember {
        Self::with_store(
            path,
            Arc::new(Mutex::new(vec![0; size_bytes as usize])),
            seed,
        )
    }

    /// A device over existing contents.
    pub fn with_store(path: &str, data: MemStore, seed: u64) -> MemMember {
        MemMember {
            path: path.to_string(),
            data,
            rng: Cell::new(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1),
            max_yields: 4,
            writes_in_flight: RefCell::new(Vec::new()),
            overlapping_writes: Cell::new(0),
            unflushed: RefCell::new(None),
        }
    }

    /// Simulates a volatile write cache: writes are durable only once flushed (or with FUA).
    pub fn with_volatile_cache(self) -> MemMember {
        *self.unflushed.borrow_mut() = Some(BTreeMap::new());
        self
    }

    /// Sectors written and not yet made durable.
    pub fn unflushed_sectors(&self) -> usize {
        self.unflushed.borrow().as_ref().map_or(0, |u| u.len())
    }

    /// A power loss: of the sectors written since the last flush, each survives with
    /// probability one half (from `seed`); the others go back to their durable contents.
    /// Returns how many sectors were lost.
    pub fn power_cut(&self, seed: u64) -> usize {
        let mut rng = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut lost = 0;
        let mut unflushed = self.unflushed.borrow_mut();
        let Some(pending) = unflushed.as_mut() else {
            return 0;
        };
        let mut data = self.data.lock().unwrap();
        for (sector, old) in std::mem::take(pending) {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            if rng & 1 == 0 {
                let at = (sector * SECTOR) as usize;
                data[at..at + SECTOR as usize].copy_from_slice(&old);
                lost += 1;
            }
        }
        lost
    }

    /// Records that `start..end` is about to be written (`data` still holds the old bytes):
    /// durable at once with `fua`, else held in the simulated cache until a flush.
    fn note_write(&self, data: &[u8], start: usize, end: usize, fua: bool) {
        let mut unflushed = self.unflushed.borrow_mut();
        let Some(pending) = unflushed.as_mut() else {
            return;
        };
        for sector in start as u64 / SECTOR..(end as u64).div_ceil(SECTOR) {
            if fua {
                // Written through: this sector's latest contents are on the medium now.
                pending.remove(&sector);
            } else {
                let at = (sector * SECTOR) as usize;
                pending
                    .entry(sector)
                    .or_insert_with(|| data[at..at + SECTOR as usize].into());
            }
        }
    }

    fn flush_cache(&self) {
        if let Some(pending) = self.unflushed.borrow_mut().as_mut() {
            pending.clear();
        }
    }

    /// No reordering: every operation completes at its first poll.
    pub fn immediate(mut self) -> MemMember {
        self.max_yields = 0;
        self
    }

    pub fn store(&self) -> MemStore {
        self.data.clone()
    }

    /// How many writes overlapped another write still in flight.
    pub fn overlapping_writes(&self) -> u64 {
        self.overlapping_writes.get()
    }

    async fn delay(&self) {
        if self.max_yields == 0 {
            return;
        }
        // xorshift64: cheap and reproducible.
        let mut x = self.rng.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng.set(x);
        for _ in 0..(x % (self.max_yields as u64 + 1)) {
            yield_now().await;
        }
    }

    fn check_range(&self, offset: u64, len: u64) -> io::Result<(usize, usize)> {
        let size = self.data.lock().unwrap().len() as u64;
        match offset.checked_add(len) {
            Some(end) if end <= size => Ok((offset as usize, end as usize)),
            _ => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{}: I/O past the end", self.path),
            )),
        }
    }
}

impl Member for MemMember {
    fn path(&self) -> &str {
        &self.path
    }
    fn size_bytes(&self) -> u64 {
        self.data.lock().unwrap().len() as u64
    }
    fn read(&self, offset: u64, buf: BufSlice) -> LocalFuture<'_, io::Result<()>> {
        Box::pin(async move {
            let (start, end) = self.check_range(offset, buf.len() as u64)?;
            self.delay().await;
            // SAFETY: a read's buffer is the read's until it completes (the Member contract,
            // as with the kernel writing it for a FileMember).
            (unsafe { buf.bytes_mut() }).copy_from_slice(&self.data.lock().unwrap()[start..end]);
            Ok(())
        })
    }
    fn write(&self, offset: u64, buf: BufSlice, fua: bool) -> LocalFuture<'_, io::Result<()>> {
        Box::pin(async move {
            let (start, end) = self.check_range(offset, buf.len() as u64)?;
            let range = (start as u64, end as u64);
            {
                let mut inflight = self.writes_in_flight.borrow_mut();
                if inflight.iter().any(|&(s, e)| s < range.1 && range.0 < e) {
                    self.overlapping_writes
                        .set(self.overlapping_writes.get() + 1);
                }
                inflight.push(range);
            }
            self.delay().await;
            {
                let mut data = self.data.lock().unwrap();
                self.note_write(&data, start, end, fua);
                data[start..end].copy_from_slice(buf.bytes());
            }
            let mut inflight = self.writes_in_flight.borrow_mut();
            if let Some(i) = inflight.iter().position(|&r| r == range) {
                inflight.swap_remove(i);
            }
            Ok(())
        })
    }
    fn flush(&self) -> LocalFuture<'_, io::Result<()>> {
        Box::pin(async move {
            self.delay().await;
            self.flush_cache();
            Ok(())
        })
    }
    fn discard(&self, offset: u64, len: u64) -> LocalFuture<'_, io::Result<()>> {
        self.write_zeroes(offset, len)
    }
    fn write_zeroes(&self, offset: u64, len: u64) -> LocalFuture<'_, io::Result<()>> {
        Box::pin(async move {
            let (start, end) = self.check_range(offset, len)?;
            self.delay().await;
            let mut data = self.data.lock().unwrap();
            self.note_write(&data, start, end, false);
            data[start..end].fill(0);
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reactor::block_on;

    fn sector_of(m: &MemMember, sector: usize) -> Vec<u8> {
        m.store().lock().unwrap()[sector * 512..(sector + 1) * 512].to_vec()
    }

    #[test]
    fn volatile_cache_keeps_flushed_and_fua_writes_and_tears_the_rest() {
        let mut lost_any = false;
        let mut kept_any = false;
        for seed in 0..16 {
            block_on(async move {
                let m = MemMember::new("v", 64 * 512, seed).with_volatile_cache();
                let fill =
                    |b: u8, sectors: usize| BufSlice::filled(sectors * 512, |buf| buf.fill(b));
                m.write(0, fill(1, 8), false).await.unwrap();
                m.flush().await.unwrap();
                m.write(0, fill(2, 8), false).await.unwrap();
                m.write(8 * 512, fill(3, 1), true).await.unwrap();
                assert_eq!(m.unflushed_sectors(), 8);
                let lost = m.power_cut(seed);
                assert_eq!(m.unflushed_sectors(), 0);
                assert_eq!(sector_of(&m, 8), vec![3; 512], "FUA is durable");
                let mut old = 0;
                for s in 0..8 {
                    let got = sector_of(&m, s);
                    assert!(got == vec![1; 512] || got == vec![2; 512], "sector {s}");
                    old += usize::from(got == vec![1; 512]);
                }
                assert_eq!(
                    old, lost,
                    "each lost sector is back to its flushed contents"
                );
                (lost > 0, lost < 8)
            })
            .map(|(l, k)| {
                lost_any |= l;
                kept_any |= k;
            })
            .unwrap();
        }
        assert!(
            lost_any && kept_any,
            "power cuts both lose and keep sectors"
        );
    }
}
