//! Page-aligned I/O buffers shared between a request and the kernel.
//!
//! O_DIRECT needs buffers aligned to the device's logical block. Buffers of 4 KiB and more are
//! 4096-aligned, so any member accepts them; buffers of whole 512-byte sectors below that are
//! 512-aligned (members that need more fall back to buffered I/O at open); smaller ones (reply
//! headers, never given to O_DIRECT) only get a cache line, so they cost no page each. A request often splits one buffer into many member I/Os (one per chunk),
//! so a buffer is reference-counted and handed out as [`BufSlice`]s: each in-flight operation
//! keeps its own `Arc` until its completion arrives, which keeps the memory alive even if the
//! future that started it were dropped.
//!
//! Aliasing rule (the one `unsafe` contract of this module): while an operation is in flight on
//! a slice, no other code reads or writes those bytes. The engine upholds it by never issuing two
//! operations on overlapping slices and by touching bytes only after their I/O completed.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::cell::RefCell;
use std::ptr::NonNull;
use std::sync::Arc;

/// Alignment of buffers of 4 KiB and more: the largest logical block size of real devices.
pub const BUF_ALIGN: usize = 4096;
/// Alignment of buffers of at least one sector but less than 4 KiB.
pub const SECTOR_ALIGN: usize = 512;
/// Alignment of buffers smaller than a sector.
const SMALL_ALIGN: usize = 64;

/// The alignment a buffer of `len` bytes gets.
pub fn alignment_for(len: usize) -> usize {
    if len >= BUF_ALIGN {
        BUF_ALIGN
    } else if len >= SECTOR_ALIGN {
        SECTOR_ALIGN
    } else {
        SMALL_ALIGN
    }
}

/// An aligned heap buffer (see [`alignment_for`]), zero-initialised unless made by
/// [`AlignedBuf::recycled`].
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: AlignedBuf owns its allocation exclusively (like Vec<u8>); concurrent access to the
// bytes is governed by the aliasing rule in the module docs.
unsafe impl Send for AlignedBuf {}
// SAFETY: see above; shared references only hand out raw pointers or slices under that rule.
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    /// A zeroed buffer of `len` bytes (a zero-length buffer still owns a small allocation).
    pub fn zeroed(len: usize) -> AlignedBuf {
        match pool::take(len) {
            Some(ptr) => {
                let mut buf = AlignedBuf { ptr, len };
                buf.as_mut_slice().fill(0);
                buf
            }
            None => AlignedBuf::fresh(len),
        }
    }

    /// A buffer of `len` bytes whose contents are left from an earlier use (zeroes if it is
    /// new): for I/O that fills it whole before anyone reads it (a socket receive, a READ
    /// reply), where zeroing is wasted work. Never hand its bytes out before they are written.
    pub fn recycled(len: usize) -> AlignedBuf {
        match pool::take(len) {
            Some(ptr) => AlignedBuf { ptr, len },
            None => AlignedBuf::fresh(len),
        }
    }

    fn fresh(len: usize) -> AlignedBuf {
        let layout = Self::layout(len);
        // SAFETY: layout has non-zero size (at least one page) and a power-of-two alignment.
        let raw = unsafe { alloc_zeroed(layout) };
        let ptr = NonNull::new(raw).unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
        AlignedBuf { ptr, len }
    }

    /// A buffer holding a copy of `data`.
    pub fn from_slice(data: &[u8]) -> AlignedBuf {
        let mut buf = AlignedBuf::zeroed(data.len());
        buf.as_mut_slice().copy_from_slice(data);
        buf
    }

    fn layout(len: usize) -> Layout {
        let align = alignment_for(len);
        let size = len.max(1).next_multiple_of(align);
        Layout::from_size_align(size, align).expect("buffer size overflows")
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: ptr is valid for len initialised bytes for the lifetime of &self.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: ptr is valid for len bytes and &mut self guarantees exclusive access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }

    /// Shares the buffer so it can be split into slices for concurrent member I/O.
    pub fn into_shared(self) -> BufSlice {
        let len = self.len;
        BufSlice {
            buf: Arc::new(self),
            start: 0,
            len,
        }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        if pool::give(self.ptr, self.len) {
            return;
        }
        // SAFETY: ptr came from alloc_zeroed with exactly this layout.
        unsafe { dealloc(self.ptr.as_ptr(), Self::layout(self.len)) }
    }
}

/// A window onto a shared [`AlignedBuf`]. Cheap to clone and to narrow.
#[derive(Clone)]
pub struct BufSlice {
    buf: Arc<AlignedBuf>,
    start: usize,
    len: usize,
}

impl BufSlice {
    /// A new zeroed buffer of `len` bytes, shared.
    pub fn zeroed(len: usize) -> BufSlice {
        AlignedBuf::zeroed(len).into_shared()
    }

    /// A buffer for I/O that fills it whole before it is read: see [`AlignedBuf::recycled`].
    pub fn recycled(len: usize) -> BufSlice {
        AlignedBuf::recycled(len).into_shared()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// A narrower window: `offset..offset+len` relative to this slice.
    pub fn slice(&self, offset: usize, len: usize) -> BufSlice {
        assert!(
            offset + len <= self.len,
            "slice {offset}+{len} beyond {}",
            self.len
        );
        BufSlice {
            buf: self.buf.clone(),
            start: self.start + offset,
            len,
        }
    }

    pub fn as_ptr(&self) -> *const u8 {
        // SAFETY: start <= buf.len by construction, so the offset stays inside the allocation.
        unsafe { self.buf.ptr.as_ptr().add(self.start) }
    }

    pub fn as_mut_ptr(&self) -> *mut u8 {
        self.as_ptr() as *mut u8
    }

    /// The bytes. Caller guarantees no operation writing them is in flight.
    pub fn bytes(&self) -> &[u8] {
        // SAFETY: the window lies within the allocation; the aliasing rule (module docs) rules
        // out concurrent writes while this borrow lives.
        unsafe { std::slice::from_raw_parts(self.as_ptr(), self.len) }
    }

    /// Mutable bytes.
    ///
    /// # Safety
    /// Nothing else may read or write this window while the returned slice lives: no I/O in
    /// flight on it, and no other `bytes`/`bytes_mut` borrow of it through a clone. A buffer
    /// that was never shared is safe to fill with [`BufSlice::filled`] instead.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn bytes_mut(&self) -> &mut [u8] {
        // SAFETY: the window lies within the allocation; exclusivity is the caller's promise
        // (this function's contract).
        unsafe { std::slice::from_raw_parts_mut(self.as_mut_ptr(), self.len) }
    }

    /// A new buffer of `len` bytes, zeroed and then given to `fill`.
    pub fn filled(len: usize, fill: impl FnOnce(&mut [u8])) -> BufSlice {
        let buf = BufSlice::zeroed(len);
        // SAFETY: the buffer was just made and no clone of it exists yet.
        fill(unsafe { buf.bytes_mut() });
        buf
    }

    /// A new buffer holding a copy of `src`.
    pub fn copy_of(src: &[u8]) -> BufSlice {
        BufSlice::filled(src.len(), |b| b.copy_from_slice(src))
    }

    /// Copies the bytes out (tests and the control plane).
    pub fn to_vec(&self) -> Vec<u8> {
        self.bytes().to_vec()
    }
}

impl std::fmt::Debug for BufSlice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BufSlice({}..{})", self.start, self.start + self.len)
    }
}

/// Freed buffers of the common request sizes kept for reuse on the thread that freed them, so
/// a request's payload and reply buffers are neither allocated nor page-faulted in each time.
/// Only power-of-two sizes from 4 KiB to 1 MiB are kept: at most `CLASS_BYTES` of one size
/// (and at least `CLASS_MIN` buffers, enough for a client's queue of 1 MiB requests), and at
/// most `POOL_BYTES` in all.
mod pool {
    use super::*;

    const MIN_SHIFT: u32 = 12;
    const MAX_SHIFT: u32 = 20;
    const CLASSES: usize = (MAX_SHIFT - MIN_SHIFT + 1) as usize;
    const CLASS_BYTES: usize = 8 << 20;
    const CLASS_MIN: usize = 16;
    const POOL_BYTES: usize = 32 << 20;

    /// The kept buffers of each class and their bytes; freed when the thread ends.
    #[derive(Default)]
    struct Free {
        lists: [Vec<NonNull<u8>>; CLASSES],
        bytes: usize,
    }

    impl Drop for Free {
        fn drop(&mut self) {
            for (class, list) in self.lists.iter_mut().enumerate() {
                let layout = AlignedBuf::layout(1 << (class as u32 + MIN_SHIFT));
                for ptr in list.drain(..) {
                    // SAFETY: every kept pointer came from `alloc_zeroed(layout)` of its class.
                    unsafe { dealloc(ptr.as_ptr(), layout) }
                }
            }
        }
    }

    thread_local! {
        static FREE: RefCell<Free> = RefCell::new(Free::default());
    }

    fn class(len: usize) -> Option<usize> {
        let shift = len.trailing_zeros();
        (len.is_power_of_two() && (MIN_SHIFT..=MAX_SHIFT).contains(&shift))
            .then(|| (shift - MIN_SHIFT) as usize)
    }

    /// A kept buffer of exactly `len` bytes (allocated with `AlignedBuf::layout(len)`).
    pub(super) fn take(len: usize) -> Option<NonNull<u8>> {
        let class = class(len)?;
        FREE.try_with(|free| {
            let mut free = free.borrow_mut();
            let ptr = free.lists[class].pop()?;
            free.bytes -= len;
            Some(ptr)
        })
        .ok()
        .flatten()
    }

    /// Keeps `ptr` (a buffer of `len` bytes) for reuse; false when it is not kept and must be
    /// freed.
    pub(super) fn give(ptr: NonNull<u8>, len: usize) -> bool {
        let Some(class) = class(len) else {
            return false;
        };
        let depth = (CLASS_BYTES / len).max(CLASS_MIN);
        FREE.try_with(|free| {
            let mut free = free.borrow_mut();
            if free.lists[class].len() >= depth || free.bytes + len > POOL_BYTES {
                return false;
            }
            free.lists[class].push(ptr);
            free.bytes += len;
            true
        })
        .unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_aligned_and_zeroed() {
        for (len, align) in [
            (0, 64),
            (1, 64),
            (28, 64),
            (512, 512),
            (4095, 512),
            (4096, 4096),
            (1 << 20, 4096),
        ] {
            assert_eq!(alignment_for(len), align, "len {len}");
            let b = AlignedBuf::zeroed(len);
            assert_eq!(b.as_slice().as_ptr() as usize % align, 0, "len {len}");
            assert!(b.as_slice().iter().all(|&x| x == 0));
        }
    }

    /// Goal: a freed request-sized buffer is used again (no allocation, no page faults), and
    /// `zeroed` still hands it out zeroed after someone wrote into it.
    #[test]
    fn freed_buffers_are_reused_and_zeroed_when_asked() {
        for len in [4096, 65536, 1 << 20] {
            let mut first = AlignedBuf::recycled(len);
            first.as_mut_slice().fill(0xa5);
            let ptr = first.as_slice().as_ptr();
            drop(first);
            let again = AlignedBuf::recycled(len);
            assert_eq!(again.as_slice().as_ptr(), ptr, "len {len}: not reused");
            drop(again);
            let zeroed = AlignedBuf::zeroed(len);
            assert_eq!(zeroed.as_slice().as_ptr(), ptr, "len {len}: not reused");
            assert!(
                zeroed.as_slice().iter().all(|&x| x == 0),
                "len {len}: not zeroed"
            );
            assert_eq!(zeroed.as_slice().as_ptr() as usize % BUF_ALIGN, 0);
        }
        // Sizes outside the classes are plain allocations.
        assert_eq!(pool::take(4096 + 512), None);
        assert_eq!(pool::take(2 << 20), None);
    }

    #[test]
    fn slices_share_memory() {
        let s = BufSlice::zeroed(8192);
        // SAFETY: no I/O is in flight and no other borrow of the window exists.
        (unsafe { s.slice(4096, 4096).bytes_mut() }).fill(7);
        assert_eq!(s.bytes()[4095], 0);
        assert_eq!(s.bytes()[4096], 7);
        assert_eq!(s.slice(4096, 4096).as_ptr() as usize % BUF_ALIGN, 0);
    }
}
