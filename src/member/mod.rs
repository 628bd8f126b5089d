//! Members: the devices an array is made of.
//!
//! One trait, [`Member`], with three implementations that complete through the same reactor:
//! - [`FileMember`]: a regular file, loop device or block device, driven by io_uring, opened
//!   O_DIRECT where the filesystem allows it, and claimed exclusively ([`claim`]);
//! - [`MemMember`]: an in-memory simulated device with seeded, reordered completions (tests);
//! - [`FaultMember`]: a wrapper that injects read/write errors, delays and a vanished device,
//!   driven by a [`FaultHandle`] that another thread (the control socket) can change live.
//!
//! Offsets and lengths are bytes, multiples of 512. `discard` and `write_zeroes` both leave the
//! range reading back as zeroes: the engine relies on that to keep parity consistent.

mod claim;
mod fault;
mod file;
mod memory;

use std::future::Future;
use std::io;
use std::pin::Pin;

pub use claim::{claim_path, Claim};
pub use fault::{FaultHandle, FaultKind, FaultMember, FaultRule};
pub use file::{FileMember, OpenOptions};
pub use memory::MemMember;

use crate::buf::BufSlice;

/// A boxed future on the reactor thread.
pub type LocalFuture<'a, T> = Pin<Box<dyn Future<Output = T> + 'a>>;

/// One device of an array. All methods complete on the reactor.
pub trait Member {
    /// The path (or name) shown to users.
    fn path(&self) -> &str;
    /// Size of the whole device in bytes.
    fn size_bytes(&self) -> u64;
    /// Reads `buf.len()` bytes at `offset`; a short read is an error.
    fn read(&self, offset: u64, buf: BufSlice) -> LocalFuture<'_, io::Result<()>>;
    /// Writes `buf` at `offset`; with `fua` the data is on stable storage when this returns.
    fn write(&self, offset: u64, buf: BufSlice, fua: bool) -> LocalFuture<'_, io::Result<()>>;
    /// Makes every completed write durable.
    fn flush(&self) -> LocalFuture<'_, io::Result<()>>;
    /// Deallocates the range if the device can; it reads back as zeroes afterwards.
    fn discard(&self, offset: u64, len: u64) -> LocalFuture<'_, io::Result<()>>;
    /// Makes the range read back as zeroes, allocating if need be.
    fn write_zeroes(&self, offset: u64, len: u64) -> LocalFuture<'_, io::Result<()>>;
}

/// The error a vanished device reports.
pub fn vanished_error() -> io::Error {
    io::Error::from_raw_os_error(libc::ENODEV)
}
