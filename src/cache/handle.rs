//! Reaching an array (through its cache) from other threads (the FUSE frontend).
//!
//! The cache and array live on their reactor thread and are not `Send`. An [`EngineHandle`]
//! posts a job through the reactor's inbox; the job runs on the reactor with the cache, starts the
//! operation as a task, and calls the caller's completion (which must be `Send`) when it is
//! done, on the reactor thread. Callers never block the reactor, and many requests from one
//! thread can be in flight at once.

use std::cell::RefCell;
use std::rc::Rc;

use super::Cache as Array;
use crate::buf::BufSlice;
use crate::error::{Error, ErrorKind, Result};
use crate::reactor::{spawn, InboxSender};

thread_local! {
    static ENGINE: RefCell<Option<Rc<Array>>> = const { RefCell::new(None) };
}

/// Makes `array` the one that handles on this (reactor) thread reach.
pub fn install_engine(array: Rc<Array>) {
    ENGINE.with(|e| *e.borrow_mut() = Some(array));
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
    size_bytes: u64,
    read_only: bool,
}

impl EngineHandle {
    pub fn new(sender: InboxSender, size_bytes: u64, read_only: bool) -> EngineHandle {
        EngineHandle {
            sender,
            size_bytes,
            read_only,
        }
    }

    pub fn size_bytes(&self) -> u64 {
        self.size_bytes
    }

    pub fn is_read_only(&self) -> bool {
        self.read_only
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
        self.run(Box::new(done), move |array| {
            Box::pin(async move { array.write(offset, data, fua).await })
        })
    }

    pub fn flush(&self, done: impl FnOnce(Result<()>) + Send + 'static) {
        self.run(Box::new(done), move |array| {
            Box::pin(async move { array.flush().await })
        })
    }

    pub fn trim(&self, offset: u64, len: u64, done: impl FnOnce(Result<()>) + Send + 'static) {
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
        self.run(Box::new(done), move |array| {
            Box::pin(async move { array.write_zeroes(offset, len).await })
        })
    }
}

fn stopped() -> Error {
    Error::new(ErrorKind::Io, "the array is stopping")
}
