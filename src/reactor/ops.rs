//! io_uring operations as futures, and the table that owns them while the kernel does.

use std::any::Any;
use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use io_uring::{opcode, squeue, types, IoUring};

use super::executor::Reactor;

/// Whatever the kernel may touch while an operation is in flight (buffers, a timespec). The
/// table holds it until the completion arrives, so dropping an [`Op`] early is memory-safe.
pub type Keep = Box<dyn Any>;

enum Slot {
    Free,
    Waiting {
        waker: Option<Waker>,
        keep: Option<Keep>,
    },
    Done {
        result: i32,
    },
    Abandoned {
        _keep: Option<Keep>,
    },
}

/// In-flight operations keyed by their `user_data` (the slot index).
#[derive(Default)]
pub(crate) struct OpTable {
    slots: RefCell<Vec<Slot>>,
    free: RefCell<Vec<usize>>,
    in_flight: std::cell::Cell<usize>,
    /// The completions of one reap, kept so reaping allocates nothing.
    scratch: std::cell::Cell<Vec<(u64, i32)>>,
}

impl OpTable {
    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.get()
    }

    fn insert(&self, waker: Waker, keep: Option<Keep>) -> usize {
        let mut slots = self.slots.borrow_mut();
        let id = self.free.borrow_mut().pop().unwrap_or_else(|| {
            slots.push(Slot::Free);
            slots.len() - 1
        });
        slots[id] = Slot::Waiting {
            waker: Some(waker),
            keep,
        };
        self.in_flight.set(self.in_flight.get() + 1);
        id
    }

    fn push(&self, ring: &RefCell<IoUring>, entry: squeue::Entry) -> std::io::Result<()> {
        let mut ring = ring.borrow_mut();
        loop {
            // SAFETY: every pointer inside `entry` refers to memory owned by the slot's `keep`
            // (or by a live fd), which the table keeps alive until the CQE is reaped.
            if unsafe { ring.submission().push(&entry) }.is_ok() {
                return Ok(());
            }
            // Submission queue full: hand the batch to the kernel and retry.
            ring.submit()?;
        }
    }

    pub(crate) fn submit_and_wait(
        &self,
        ring: &RefCell<IoUring>,
        want: usize,
    ) -> std::io::Result<()> {
        {
            let ring = ring.borrow_mut();
            match ring.submit_and_wait(want) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {}
                Err(e) => return Err(e),
            }
        }
        self.reap(ring);
        Ok(())
    }

    /// Entries queued for the kernel but not submitted yet.
    pub(crate) fn unsubmitted(&self, ring: &RefCell<IoUring>) -> usize {
        ring.borrow_mut().submission().len()
    }

    /// Takes the completions the kernel has posted, without a system call.
    pub(crate) fn reap(&self, ring: &RefCell<IoUring>) {
        let mut completions = self.scratch.take();
        {
            let mut ring = ring.borrow_mut();
            completions.extend(ring.completion().map(|c| (c.user_data(), c.result())));
        }
        let mut slots = self.slots.borrow_mut();
        for &(user_data, result) in &completions {
            let id = user_data as usize;
            let Some(slot) = slots.get_mut(id) else {
                continue;
            };
            match std::mem::replace(slot, Slot::Done { result }) {
                Slot::Waiting { waker, keep } => {
                    drop(keep);
                    if let Some(w) = waker {
                        w.wake();
                    }
                }
                Slot::Abandoned { .. } => {
                    *slot = Slot::Free;
                    self.free.borrow_mut().push(id);
                }
                other => *slot = other,
            }
            self.in_flight.set(self.in_flight.get() - 1);
        }
        drop(slots);
        completions.clear();
        self.scratch.replace(completions);
    }

    /// Cancels every operation still in flight (accepts and reads that would never finish on
    /// their own) and waits, bounded, for the kernel to give all of them back, so no kernel
    /// write can hit freed memory.
    pub(crate) fn drain(&self, ring: &RefCell<IoUring>) {
        let pending: Vec<u64> = self
            .slots
            .borrow()
            .iter()
            .enumerate()
            .filter(|(_, s)| matches!(s, Slot::Waiting { .. } | Slot::Abandoned { .. }))
            .map(|(i, _)| i as u64)
            .collect();
        for user_data in pending {
            let cancel = opcode::AsyncCancel::new(user_data)
                .build()
                .user_data(CANCEL_USER_DATA);
            let _ = self.push(ring, cancel);
        }
        for _ in 0..10_000 {
            if self.in_flight() == 0 {
                return;
            }
            if self.submit_and_wait(ring, 1).is_err() {
                break;
            }
        }
        // The kernel did not give everything back: leak the kept memory rather than free it.
        for slot in self.slots.borrow_mut().drain(..) {
            std::mem::forget(slot);
        }
    }
}

/// user_data of cancel requests: matches no slot, so its completion is ignored.
const CANCEL_USER_DATA: u64 = u64::MAX;

/// A future for one io_uring operation. Resolves to the CQE result (negative errno on error).
pub struct Op {
    entry: Option<squeue::Entry>,
    keep: Option<Keep>,
    id: Option<usize>,
}

/// Creates an operation; `keep` owns whatever `entry` points into.
pub fn submit(entry: squeue::Entry, keep: Option<Keep>) -> Op {
    Op {
        entry: Some(entry),
        keep,
        id: None,
    }
}

impl Future for Op {
    type Output = i32;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<i32> {
        let reactor = Reactor::current();
        match self.id {
            None => {
                let keep = self.keep.take();
                let id = reactor.ops.insert(cx.waker().clone(), keep);
                let entry = self
                    .entry
                    .take()
                    .expect("op polled after completion")
                    .user_data(id as u64);
                if let Err(e) = reactor.ops.push(&reactor.ring, entry) {
                    // Could not queue: complete through the same path with the error.
                    let mut slots = reactor.ops.slots.borrow_mut();
                    slots[id] = Slot::Free;
                    reactor.ops.free.borrow_mut().push(id);
                    reactor.ops.in_flight.set(reactor.ops.in_flight.get() - 1);
                    return Poll::Ready(-e.raw_os_error().unwrap_or(libc::EIO));
                }
                self.id = Some(id);
                Poll::Pending
            }
            Some(id) => {
                let mut slots = reactor.ops.slots.borrow_mut();
                match &mut slots[id] {
                    Slot::Done { result } => {
                        let r = *result;
                        slots[id] = Slot::Free;
                        reactor.ops.free.borrow_mut().push(id);
                        self.id = None;
                        self.entry = None;
                        Poll::Ready(r)
                    }
                    Slot::Waiting { waker, .. } => {
                        *waker = Some(cx.waker().clone());
                        Poll::Pending
                    }
                    _ => unreachable!("op slot {id} in an impossible state"),
                }
            }
        }
    }
}

impl Drop for Op {
    fn drop(&mut self) {
        let Some(id) = self.id else { return };
        // During thread teardown (a panic unwinding past block_on) the reactor may be gone;
        // its op table then leaks what it kept rather than freeing memory the kernel may use.
        let Some(reactor) = Reactor::try_current() else {
            return;
        };
        let mut slots = reactor.ops.slots.borrow_mut();
        let Some(slot) = slots.get_mut(id) else {
            return;
        };
        match std::mem::replace(slot, Slot::Free) {
            Slot::Waiting { keep, .. } => *slot = Slot::Abandoned { _keep: keep },
            Slot::Done { .. } => reactor.ops.free.borrow_mut().push(id),
            other => *slot = other,
        }
    }
}

/// Sleeps on the ring (an io_uring timeout), so a sleeping task blocks nothing else.
pub async fn sleep(duration: Duration) {
    let ts = Box::new(
        types::Timespec::new()
            .sec(duration.as_secs())
            .nsec(duration.subsec_nanos()),
    );
    let entry = opcode::Timeout::new(&*ts as *const types::Timespec).build();
    submit(entry, Some(ts)).await;
}
