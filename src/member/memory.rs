//! A deterministic simulated member (tests): memory-backed, with seeded completion reordering.
//!
//! Each operation yields to the reactor a pseudo-random number of times before it takes effect,
//! so concurrent requests complete out of order, reproducibly for a given seed. The member also
//! counts overlapping writes in flight: with stripe locks in place a redundant array must never
//! issue two at once to the same bytes (TigerBeetle's simulated storage asserts the same).

use std::cell::{Cell, RefCell};
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
}

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
            buf.bytes_mut()
                .copy_from_slice(&self.data.lock().unwrap()[start..end]);
            Ok(())
        })
    }
    fn write(&self, offset: u64, buf: BufSlice, _fua: bool) -> LocalFuture<'_, io::Result<()>> {
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
            self.data.lock().unwrap()[start..end].copy_from_slice(buf.bytes());
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
            self.data.lock().unwrap()[start..end].fill(0);
            Ok(())
        })
    }
}
