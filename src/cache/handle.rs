//! Reaching an array (through its cache) from other threads (the FUSE frontend).
//!
//! The cache and array live on their reactor thread and are not `Send`. An [`EngineHandle`]
//! posts a job through the reactor's inbox; the job runs on the reactor with the cache, starts the
//! operation as a task, and calls the caller's completion (which must be `Send`) when it is
//! done, on the reactor thread. Callers never block the reactor, and many requests from one
//! thread can be in flight at once.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;

use std::future::Future;
use std::pin::Pin;

use crate::buf::BufSlice;
use crate::error::{Error, ErrorKind, Result};
use crate::reactor::{sleep, spawn, InboxSender, KeyedLocks};
use crate::volume::{check_request, Access, Volume, VolumeInfo};

thread_local! {
    static ENGINE: RefCell<Option<Rc<dyn AnyVolume>>> = const { RefCell::new(None) };
    static PATCHES: Rc<SectorPatches> = Rc::new(SectorPatches::default());
}

/// Orders read-modify-writes of partial sectors (a FUSE write not aligned to 512 bytes) against
/// each other and against whole-sector writes over the same blocks; without it two of them on
/// one sector could each read the old bytes and one write would be lost. Whole-sector writes
/// pay nothing while no patch runs.
#[derive(Default)]
struct SectorPatches {
    /// Keyed by 4 KiB block.
    locks: Rc<KeyedLocks>,
    /// Patches in progress: whole-sector writes take the block locks too while there are any.
    patching: Cell<usize>,
    /// Whole-sector writes that started without locks (a patch waits for them to finish).
    unlocked_writes: Cell<usize>,
}

const PATCH_BLOCK: u64 = 4096;

impl SectorPatches {
    fn keys(offset: u64, len: u64) -> std::ops::Range<u64> {
        offset / PATCH_BLOCK..(offset + len.max(1)).div_ceil(PATCH_BLOCK)
    }
}

type BoxedResult<'a> = Pin<Box<dyn Future<Output = Result<()>> + 'a>>;

/// A [`Volume`] of any type, so one thread-local can hold it: its futures are boxed, which
/// costs nothing next to the cross-thread post every handle request makes anyway.
trait AnyVolume {
    fn read(&self, offset: u64, buf: BufSlice) -> BoxedResult<'_>;
    fn write(&self, offset: u64, data: BufSlice, fua: bool) -> BoxedResult<'_>;
    fn flush(&self) -> BoxedResult<'_>;
    fn trim(&self, offset: u64, len: u64) -> BoxedResult<'_>;
    fn write_zeroes(&self, offset: u64, len: u64) -> BoxedResult<'_>;
}

impl<V: Volume> AnyVolume for V {
    fn read(&self, offset: u64, buf: BufSlice) -> BoxedResult<'_> {
        Box::pin(Volume::read(self, offset, buf))
    }
    fn write(&self, offset: u64, data: BufSlice, fua: bool) -> BoxedResult<'_> {
        Box::pin(Volume::write(self, offset, data, fua))
    }
    fn flush(&self) -> BoxedResult<'_> {
        Box::pin(Volume::flush(self))
    }
    fn trim(&self, offset: u64, len: u64) -> BoxedResult<'_> {
        Box::pin(Volume::trim(self, offset, len))
    }
    fn write_zeroes(&self, offset: u64, len: u64) -> BoxedResult<'_> {
        Box::pin(Volume::write_zeroes(self, offset, len))
    }
}

type Array = dyn AnyVolume;

/// Makes `volume` the one that handles on this (reactor) thread reach.
pub fn install_engine<V: Volume + 'static>(volume: Rc<V>) {
    ENGINE.with(|e| *e.borrow_mut() = Some(volume as Rc<dyn AnyVolume>));
}

/// Forgets the installed array (at stop).
pub fn uninstall_engine() {
    ENGINE.with(|e| *e.borrow_mut() = None);
}

type Done<T> = Box<dyn FnOnce(Result<T>) + Send>;

/// A `Send + Sync` way to submit requests to an array on its reactor.
#[derive(Clone)]
pub struct EngineHandle {
    sender: InboxSender,
    info: Arc<VolumeInfo>,
}

impl EngineHandle {
    /// A handle on the volume installed on `sender`'s reactor, which `info` describes.
    pub fn new(sender: InboxSender, info: VolumeInfo) -> EngineHandle {
        EngineHandle {
            sender,
            info: Arc::new(info),
        }
    }

    pub fn info(&self) -> &VolumeInfo {
        &self.info
    }

    pub fn size_bytes(&self) -> u64 {
        self.info.size_bytes
    }

    pub fn is_read_only(&self) -> bool {
        self.info.read_only
    }

    fn run<T: Send + 'static, F>(&self, done: Done<T>, op: F)
    where
        F: FnOnce(Rc<Array>) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<T>>>>
            + Send
            + 'static,
    {
        let posted = self
            .sender
            .post(move || match ENGINE.with(|e| e.borrow().clone()) {
                Some(array) => {
                    spawn(async move { done(op(array).await) });
                }
                None => done(Err(stopped())),
            });
        if !posted {
            // The inbox is closed: the daemon is stopping. `done` went with the job, so the
            // caller learns it from its request timing out on drop of the reply instead; we
            // cannot call it here without the closure.
            tracing::debug!("request after the engine stopped");
        }
    }

    /// Reads `len` bytes at `offset`; `done` gets the buffer.
    pub fn read(
        &self,
        offset: u64,
        len: usize,
        done: impl FnOnce(Result<BufSlice>) + Send + 'static,
    ) {
        if let Err(e) = check_request(&self.info, Access::Read, offset, len as u64) {
            return done(Err(e));
        }
        self.run(Box::new(done), move |array| {
            Box::pin(async move {
                let buf = BufSlice::zeroed(len);
                array.read(offset, buf.clone()).await.map(|()| buf)
            })
        })
    }

    pub fn write(
        &self,
        offset: u64,
        data: BufSlice,
        fua: bool,
        done: impl FnOnce(Result<()>) + Send + 'static,
    ) {
        if let Err(e) = check_request(&self.info, Access::Write, offset, data.len() as u64) {
            return done(Err(e));
        }
        self.run(Box::new(done), move |array| {
            Box::pin(async move {
                let patches = PATCHES.with(|p| p.clone());
                if patches.patching.get() == 0 {
                    patches
                        .unlocked_writes
                        .set(patches.unlocked_writes.get() + 1);
                    let r = array.write(offset, data, fua).await;
                    patches
                        .unlocked_writes
                        .set(patches.unlocked_writes.get() - 1);
                    return r;
                }
                let len = data.len() as u64;
                let _guards = patches
                    .locks
                    .lock_range(SectorPatches::keys(offset, len))
                    .await;
                array.write(offset, data, fua).await
            })
        })
    }

    /// Writes `data` at a byte `offset` that need not be sector-aligned: the covering sectors
    /// are read, patched and written back, with the blocks locked against other writes.
    pub fn write_unaligned(
        &self,
        offset: u64,
        data: Vec<u8>,
        fua: bool,
        done: impl FnOnce(Result<()>) + Send + 'static,
    ) {
        let start = offset / SECTOR * SECTOR;
        let end = (offset + data.len() as u64).div_ceil(SECTOR) * SECTOR;
        if let Err(e) = check_request(&self.info, Access::Write, start, end - start) {
            return done(Err(e));
        }
        self.run(Box::new(done), move |array| {
            Box::pin(async move {
                let patches = PATCHES.with(|p| p.clone());
                patches.patching.set(patches.patching.get() + 1);
                // Whole-sector writes started before this one did not lock: let them land.
                while patches.unlocked_writes.get() > 0 {
                    sleep(std::time::Duration::from_millis(1)).await;
                }
                let guards = patches
                    .locks
                    .lock_range(SectorPatches::keys(start, end - start))
                    .await;
                let buf = BufSlice::zeroed((end - start) as usize);
                let mut r = array.read(start, buf.clone()).await;
                if r.is_ok() {
                    let at = (offset - start) as usize;
                    // SAFETY: our own buffer; its read has completed and nothing else has it.
                    (unsafe { buf.bytes_mut() })[at..at + data.len()].copy_from_slice(&data);
                    r = array.write(start, buf, fua).await;
                }
                drop(guards);
                patches.patching.set(patches.patching.get() - 1);
                r
            })
        })
    }

    pub fn flush(&self, done: impl FnOnce(Result<()>) + Send + 'static) {
        self.run(Box::new(done), move |array| {
            Box::pin(async move { array.flush().await })
        })
    }

    pub fn trim(&self, offset: u64, len: u64, done: impl FnOnce(Result<()>) + Send + 'static) {
        if let Err(e) = check_request(&self.info, Access::Write, offset, len) {
            return done(Err(e));
        }
        self.run(Box::new(done), move |array| {
            Box::pin(async move { array.trim(offset, len).await })
        })
    }

    pub fn write_zeroes(
        &self,
        offset: u64,
        len: u64,
        done: impl FnOnce(Result<()>) + Send + 'static,
    ) {
        if let Err(e) = check_request(&self.info, Access::Write, offset, len) {
            return done(Err(e));
        }
        self.run(Box::new(done), move |array| {
            Box::pin(async move { array.write_zeroes(offset, len).await })
        })
    }
}

const SECTOR: u64 = 512;

fn stopped() -> Error {
    Error::new(ErrorKind::Io, "the array is stopping")
}
