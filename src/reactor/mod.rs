//! The per-array reactor: one thread, one io_uring ring, many requests in flight.
//!
//! ```text
//!   other threads ──post(closure)──► Inbox (mutex queue + eventfd) ──┐
//!                                                                    ▼
//!   ┌──────────── reactor thread ──────────────────────────────────────────┐
//!   │  ready queue ─► poll task ─► task pushes SQEs (Op futures) ─┐        │
//!   │       ▲                                                    ▼        │
//!   │       └──── wake ◄── reap CQEs ◄── submit_and_wait(1) ◄── ring       │
//!   └──────────────────────────────────────────────────────────────────────┘
//! ```
//!
//! Requests are `async fn`s spawned as tasks; member I/O is an [`Op`] future that owns what the
//! kernel will touch (buffers, timespecs) until its completion arrives, even if the future is
//! dropped. SQEs queued while tasks run are submitted together, so a QD32 client turns into one
//! `io_uring_enter` per batch. Everything here is `!Send`: the array state lives on this thread
//! and needs no locks on the data path.

mod executor;
mod inbox;
mod ops;
mod sync;

pub use executor::{block_on, spawn, yield_now, JoinHandle, Reactor};
pub use inbox::{blocking, Inbox, InboxSender};
pub use ops::{sleep, submit, Keep, Op};
pub use sync::{AsyncMutex, AsyncMutexGuard, KeyedLockGuard, KeyedLocks, Semaphore};
