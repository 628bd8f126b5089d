//! Async locks for the single-threaded reactor: no atomics, FIFO hand-over.
//!
//! [`KeyedLocks`] is the stripe lock: one lock per stripe number, created on demand and removed
//! when free, so memory follows the number of contended stripes, not the array size. A request
//! that spans stripes takes them in ascending order, which rules out deadlock.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

struct Waiter {
    granted: Rc<Cell<bool>>,
    waker: Rc<RefCell<Option<Waker>>>,
}

#[derive(Default)]
struct LockQueue {
    waiters: VecDeque<Waiter>,
}

/// Exclusive locks keyed by a number (stripe index).
#[derive(Default)]
pub struct KeyedLocks {
    held: RefCell<crate::fasthash::U64Map<LockQueue>>,
}

impl KeyedLocks {
    pub fn new() -> Rc<KeyedLocks> {
        Rc::new(KeyedLocks::default())
    }

    /// Waits for the lock on `key`. Fair: waiters are served in arrival order.
    pub async fn lock(self: &Rc<Self>, key: u64) -> KeyedLockGuard {
        let wait = {
            let mut held = self.held.borrow_mut();
            match held.get_mut(&key) {
                None => {
                    held.insert(key, LockQueue::default());
                    None
                }
                Some(q) => {
                    let w = Waiter {
                        granted: Rc::new(Cell::new(false)),
                        waker: Rc::new(RefCell::new(None)),
                    };
                    let wait = Grant {
                        granted: w.granted.clone(),
                        waker: w.waker.clone(),
                    };
                    q.waiters.push_back(w);
                    Some(wait)
                }
            }
        };
        if let Some(wait) = wait {
            wait.await;
        }
        KeyedLockGuard {
            locks: self.clone(),
            key,
        }
    }

    /// Locks every key in `keys` (must be ascending) and returns the guards.
    pub async fn lock_range(self: &Rc<Self>, keys: std::ops::Range<u64>) -> Vec<KeyedLockGuard> {
        let mut guards = Vec::with_capacity((keys.end - keys.start) as usize);
        for key in keys {
            guards.push(self.lock(key).await);
        }
        guards
    }

    pub fn is_locked(&self, key: u64) -> bool {
        self.held.borrow().contains_key(&key)
    }

    fn unlock(&self, key: u64) {
        let mut held = self.held.borrow_mut();
        let Some(q) = held.get_mut(&key) else { return };
        match q.waiters.pop_front() {
            Some(next) => {
                next.granted.set(true);
                if let Some(w) = next.waker.borrow_mut().take() {
                    w.wake();
                }
            }
            None => {
                held.remove(&key);
            }
        }
    }
}

struct Grant {
    granted: Rc<Cell<bool>>,
    waker: Rc<RefCell<Option<Waker>>>,
}

impl Future for Grant {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.granted.get() {
            Poll::Ready(())
        } else {
            *self.waker.borrow_mut() = Some(cx.waker().clone());
            Poll::Pending
        }
    }
}

/// Releases its key on drop, handing the lock to the next waiter.
pub struct KeyedLockGuard {
    locks: Rc<KeyedLocks>,
    key: u64,
}

impl Drop for KeyedLockGuard {
    fn drop(&mut self) {
        self.locks.unlock(self.key)
    }
}

/// A single async mutex (used to serialise superblock updates).
pub struct AsyncMutex {
    locks: Rc<KeyedLocks>,
}

impl Default for AsyncMutex {
    fn default() -> Self {
        AsyncMutex {
            locks: KeyedLocks::new(),
        }
    }
}

pub type AsyncMutexGuard = KeyedLockGuard;

impl AsyncMutex {
    pub async fn lock(&self) -> AsyncMutexGuard {
        self.locks.lock(0).await
    }
}

/// A counting semaphore (bounds requests in flight per connection). The default has no
/// permits (a wake-up signal).
#[derive(Default)]
pub struct Semaphore {
    permits: Cell<usize>,
    waiters: RefCell<VecDeque<Waker>>,
}

impl Semaphore {
    pub fn new(permits: usize) -> Semaphore {
        Semaphore {
            permits: Cell::new(permits),
            waiters: RefCell::new(VecDeque::new()),
        }
    }

    /// Waits for a permit; give it back with [`Semaphore::release`].
    pub async fn acquire(&self) {
        std::future::poll_fn(|cx| {
            if self.permits.get() > 0 {
                self.permits.set(self.permits.get() - 1);
                Poll::Ready(())
            } else {
                self.waiters.borrow_mut().push_back(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }

    pub fn release(&self) {
        self.permits.set(self.permits.get() + 1);
        if let Some(w) = self.waiters.borrow_mut().pop_front() {
            w.wake();
        }
    }

    pub fn available(&self) -> usize {
        self.permits.get()
    }
}

impl Semaphore {
    /// Takes `n` permits at once (never part of them, so two waiters cannot each hold half
    /// of what both need). `n` must not exceed the semaphore's capacity.
    pub async fn acquire_many(&self, n: usize) {
        std::future::poll_fn(|cx| {
            if self.permits.get() >= n {
                self.permits.set(self.permits.get() - n);
                Poll::Ready(())
            } else {
                self.waiters.borrow_mut().push_back(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }

    /// Returns `n` permits and lets every waiter re-check.
    pub fn release_many(&self, n: usize) {
        self.permits.set(self.permits.get() + n);
        for w in self.waiters.borrow_mut().drain(..) {
            w.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reactor::{block_on, spawn, yield_now};

    #[test]
    fn keyed_locks_serialise_holders_in_order() {
        let order = block_on(async {
            let locks = KeyedLocks::new();
            let order = Rc::new(RefCell::new(Vec::new()));
            let mut handles = Vec::new();
            for i in 0..5u32 {
                let (locks, order) = (locks.clone(), order.clone());
                handles.push(spawn(async move {
                    let _g = locks.lock(7).await;
                    order.borrow_mut().push((i, "in"));
                    yield_now().await;
                    yield_now().await;
                    order.borrow_mut().push((i, "out"));
                }));
            }
            for h in handles {
                h.await;
            }
            assert!(!locks.is_locked(7));
            Rc::try_unwrap(order).unwrap().into_inner()
        })
        .unwrap();
        // Every holder leaves before the next one enters, in arrival order.
        let expected: Vec<_> = (0..5).flat_map(|i| [(i, "in"), (i, "out")]).collect();
        assert_eq!(order, expected);
    }
}
