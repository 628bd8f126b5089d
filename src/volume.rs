//! The one block interface every layer above the members speaks: the engine
//! ([`crate::raid::Array`]) and the cache ([`crate::cache::Cache`]) implement it; the NBD server,
//! the FUSE frontend (through [`crate::cache::EngineHandle`]) and tests hold one.
//!
//! A request is validated where it enters: an NBD connection (by the protocol's rules, which
//! pick the errno) or a FUSE handle ([`check_request`]), before it costs any work. The engine
//! checks the same bounds again with [`check_range`] as its own API's contract (library users
//! and tests call it directly); the cache in between uses the engine's check before it
//! acknowledges a write itself.

use std::future::Future;

use crate::buf::BufSlice;
use crate::error::{Error, ErrorKind, Result};

/// What a volume can do and how it likes to be asked: NBD's transmission flags and block
/// sizes are made from this.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolumeInfo {
    /// The name it is served under.
    pub name: String,
    /// One line for humans (NBD's export description).
    pub description: String,
    pub size_bytes: u64,
    /// Requests are in multiples of this, at multiples of it.
    pub logical_block: u32,
    /// The size (a power of two) that avoids read-modify-write: a full stripe row where one is.
    pub preferred_block: u32,
    pub read_only: bool,
    /// TRIM and WRITE_ZEROES are answered (a read-only volume does neither).
    pub can_trim: bool,
    pub can_zero: bool,
    /// FLUSH and FUA are honoured: a write is on stable storage once flushed or written FUA.
    pub can_flush: bool,
    /// Several connections may serve it at once and see each other's flushed writes
    /// (NBD's CAN_MULTI_CONN): one engine serves them all.
    pub multi_conn: bool,
    /// The most buffer memory one TRIM or WRITE_ZEROES can need (RAID5 writes the partial rows
    /// at either end as zeroes): what it counts against a connection's memory budget.
    pub zero_buffer_bytes: u64,
}

/// The block interface. Futures are not `Send`: a volume lives on its reactor thread.
pub trait Volume {
    fn info(&self) -> VolumeInfo;

    fn size_bytes(&self) -> u64;

    /// Reads `buf.len()` bytes at `offset` into `buf`.
    fn read(&self, offset: u64, buf: BufSlice) -> impl Future<Output = Result<()>>;

    /// Writes `data` at `offset`; with `fua` it is on stable storage when this returns.
    fn write(&self, offset: u64, data: BufSlice, fua: bool) -> impl Future<Output = Result<()>>;

    /// Makes every acknowledged write durable.
    fn flush(&self) -> impl Future<Output = Result<()>>;

    /// Discards a range; it reads back as zeroes afterwards.
    fn trim(&self, offset: u64, len: u64) -> impl Future<Output = Result<()>>;

    /// Zeroes a range, allocating it.
    fn write_zeroes(&self, offset: u64, len: u64) -> impl Future<Output = Result<()>>;

    /// Whether zeroing this range is cheaper than writing zeroes (NBD's FAST_ZERO).
    fn zeroes_fast(&self, offset: u64, len: u64) -> bool;
}

/// What a request is, for [`check_request`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
}

/// The one validation of a request against a volume: aligned to its logical block, inside
/// it, and not a write to a read-only volume.
pub fn check_request(info: &VolumeInfo, access: Access, offset: u64, len: u64) -> Result<()> {
    check_range(info.size_bytes, info.logical_block, offset, len)?;
    if access == Access::Write && info.read_only {
        return Err(Error::new(
            ErrorKind::ReadOnly,
            format!("{} is read-only", info.name),
        ));
    }
    Ok(())
}

/// Alignment and bounds of `offset..offset+len` in a volume of `size` bytes.
pub fn check_range(size: u64, block: u32, offset: u64, len: u64) -> Result<()> {
    let block = u64::from(block);
    if !offset.is_multiple_of(block) || !len.is_multiple_of(block) {
        return Err(Error::invalid(format!(
            "request at {offset}+{len} is not aligned to {block} bytes"
        )));
    }
    match offset.checked_add(len) {
        Some(end) if end <= size => Ok(()),
        _ => Err(Error::new(
            ErrorKind::OutOfRange,
            format!("request at {offset}+{len} ends past the size {size}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(read_only: bool) -> VolumeInfo {
        VolumeInfo {
            name: "v".into(),
            description: String::new(),
            size_bytes: 1 << 20,
            logical_block: 512,
            preferred_block: 4096,
            read_only,
            can_trim: !read_only,
            can_zero: !read_only,
            can_flush: true,
            multi_conn: true,
            zero_buffer_bytes: 0,
        }
    }

    #[test]
    fn requests_are_checked_for_alignment_bounds_and_writability() {
        let v = info(false);
        assert!(check_request(&v, Access::Write, 0, 1 << 20).is_ok());
        let kind = |r: Result<()>| r.unwrap_err().kind();
        assert_eq!(
            kind(check_request(&v, Access::Read, 100, 512)),
            ErrorKind::InvalidInput
        );
        assert_eq!(
            kind(check_request(&v, Access::Read, 0, 1000)),
            ErrorKind::InvalidInput
        );
        assert_eq!(
            kind(check_request(&v, Access::Read, (1 << 20) - 512, 1024)),
            ErrorKind::OutOfRange
        );
        assert_eq!(
            kind(check_request(&v, Access::Write, u64::MAX - 511, 512)),
            ErrorKind::OutOfRange
        );
        let ro = info(true);
        assert!(check_request(&ro, Access::Read, 0, 512).is_ok());
        assert_eq!(
            kind(check_request(&ro, Access::Write, 0, 512)),
            ErrorKind::ReadOnly
        );
    }
}
