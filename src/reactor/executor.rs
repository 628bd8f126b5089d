//! A minimal single-threaded executor driven by io_uring completions.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

use io_uring::IoUring;

use super::ops::OpTable;

type LocalTask = Pin<Box<dyn Future<Output = ()>>>;

/// Ring entries: enough for many members times a deep queue; the SQ is flushed when full.
const RING_ENTRIES: u32 = 1024;

thread_local! {
    static CURRENT: RefCell<Option<Rc<Reactor>>> = const { RefCell::new(None) };
}

/// Task ids woken and waiting to be polled. A mutex because `Waker` must be `Send`; in practice
/// only the reactor thread touches it (other threads go through the [`super::Inbox`]).
#[derive(Default)]
struct ReadyQueue {
    ids: Mutex<VecDeque<usize>>,
}

struct TaskWaker {
    id: usize,
    queued: AtomicBool,
    ready: Arc<ReadyQueue>,
}

impl Wake for TaskWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref()
    }
    fn wake_by_ref(self: &Arc<Self>) {
        if !self.queued.swap(true, Ordering::AcqRel) {
            self.ready.ids.lock().unwrap().push_back(self.id);
        }
    }
}

struct TaskSlot {
    future: Option<LocalTask>,
    waker: Arc<TaskWaker>,
}

/// The reactor of the current thread. Create one with [`Reactor::new`] and drive it with
/// [`block_on`]; tasks and ops find it through a thread-local.
pub struct Reactor {
    pub(crate) ring: RefCell<IoUring>,
    pub(crate) ops: OpTable,
    tasks: RefCell<Vec<Option<TaskSlot>>>,
    free_tasks: RefCell<Vec<usize>>,
    ready: Arc<ReadyQueue>,
    live_tasks: Cell<usize>,
}

/// Reactor turns with tasks ready that may pass without entering the kernel.
const MAX_TURNS_WITHOUT_KERNEL: u32 = 4;
/// Queued entries that make the reactor enter the kernel even with tasks ready.
const MAX_UNSUBMITTED: usize = 32;

/// The ring of one reactor thread. Only this thread submits and reaps, so completions' work
/// is deferred to when it asks for them (DEFER_TASKRUN, Linux 6.1+): no interrupt of the thread
/// for each completion (measured: 10% of the daemon's CPU went to reschedule interrupts).
/// Older kernels refuse the flags; they get a plain ring.
fn new_ring() -> std::io::Result<IoUring> {
    let deferred = IoUring::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .setup_taskrun_flag()
        .build(RING_ENTRIES);
    match deferred {
        Ok(ring) => Ok(ring),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => IoUring::new(RING_ENTRIES),
        Err(e) => Err(e),
    }
}

impl Reactor {
    fn new() -> std::io::Result<Rc<Reactor>> {
        let ring = new_ring()?;
        Ok(Rc::new(Reactor {
            ring: RefCell::new(ring),
            ops: OpTable::default(),
            tasks: RefCell::new(Vec::new()),
            free_tasks: RefCell::new(Vec::new()),
            ready: Arc::new(ReadyQueue::default()),
            live_tasks: Cell::new(0),
        }))
    }

    /// The reactor of this thread, if there is one (None also during thread teardown).
    pub fn try_current() -> Option<Rc<Reactor>> {
        CURRENT.try_with(|c| c.borrow().clone()).ok().flatten()
    }

    /// The reactor of this thread. Panics outside [`block_on`]: a programming error.
    pub fn current() -> Rc<Reactor> {
        CURRENT
            .with(|c| c.borrow().clone())
            .expect("no reactor on this thread: use reactor::block_on")
    }

    fn spawn_local(&self, future: LocalTask) {
        let id = self.free_tasks.borrow_mut().pop().unwrap_or_else(|| {
            let mut tasks = self.tasks.borrow_mut();
            tasks.push(None);
            tasks.len() - 1
        });
        let waker = Arc::new(TaskWaker {
            id,
            queued: AtomicBool::new(false),
            ready: self.ready.clone(),
        });
        self.tasks.borrow_mut()[id] = Some(TaskSlot {
            future: Some(future),
            waker: waker.clone(),
        });
        self.live_tasks.set(self.live_tasks.get() + 1);
        waker.wake_by_ref();
    }

    /// Polls every ready task until none is ready. Returns how many polls ran.
    /// Polls the tasks that were ready when the pass began; tasks woken during it (a task
    /// that yields, one woken by another) wait for the next pass, after the ring's completions
    /// are reaped, so a task yielding in a loop cannot starve I/O.
    fn run_ready(&self) -> usize {
        let mut polls = 0;
        let budget = self.ready.ids.lock().unwrap().len();
        for _ in 0..budget {
            let next = self.ready.ids.lock().unwrap().pop_front();
            let Some(id) = next else { return polls };
            // Take the future out so the task may spawn or wake others while it runs.
            let (mut future, waker) = {
                let mut tasks = self.tasks.borrow_mut();
                let Some(slot) = tasks.get_mut(id).and_then(|s| s.as_mut()) else {
                    continue;
                };
                slot.waker.queued.store(false, Ordering::Release);
                let Some(f) = slot.future.take() else {
                    continue;
                };
                (f, slot.waker.clone())
            };
            let std_waker = Waker::from(waker);
            let mut cx = Context::from_waker(&std_waker);
            polls += 1;
            match future.as_mut().poll(&mut cx) {
                Poll::Ready(()) => {
                    self.tasks.borrow_mut()[id] = None;
                    self.free_tasks.borrow_mut().push(id);
                    self.live_tasks.set(self.live_tasks.get() - 1);
                }
                Poll::Pending => {
                    if let Some(slot) = self.tasks.borrow_mut()[id].as_mut() {
                        slot.future = Some(future);
                    }
                }
            }
        }
        polls
    }
}

/// Spawns a task on the current thread's reactor. The task runs until it finishes; its result
/// is available through the returned handle (which may be dropped to detach the task).
pub fn spawn<F>(future: F) -> JoinHandle<F::Output>
where
    F: Future + 'static,
    F::Output: 'static,
{
    let state = Rc::new(RefCell::new(JoinState {
        result: None,
        waiter: None,
    }));
    let task_state = state.clone();
    Reactor::current().spawn_local(Box::pin(async move {
        let out = future.await;
        let mut st = task_state.borrow_mut();
        st.result = Some(out);
        if let Some(w) = st.waiter.take() {
            w.wake();
        }
    }));
    JoinHandle { state }
}

struct JoinState<T> {
    result: Option<T>,
    waiter: Option<Waker>,
}

/// Awaits a spawned task's output.
pub struct JoinHandle<T> {
    state: Rc<RefCell<JoinState<T>>>,
}

impl<T> JoinHandle<T> {
    pub fn is_finished(&self) -> bool {
        self.state.borrow().result.is_some()
    }
}

impl<T> Future for JoinHandle<T> {
    type Output = T;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        let mut st = self.state.borrow_mut();
        match st.result.take() {
            Some(v) => Poll::Ready(v),
            None => {
                st.waiter = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

/// Runs `future` to completion on a new reactor owned by this thread, together with every task
/// it spawns. Tasks still pending when `future` finishes are dropped only after their in-flight
/// I/O has completed (the op table drains).
pub fn block_on<F: Future + 'static>(future: F) -> std::io::Result<F::Output>
where
    F::Output: 'static,
{
    let reactor = Reactor::new()?;
    let previous = CURRENT.with(|c| c.replace(Some(reactor.clone())));
    let result = drive(&reactor, future);
    // Let in-flight kernel operations finish before their buffers can be freed.
    reactor.ops.drain(&reactor.ring);
    reactor.tasks.borrow_mut().clear();
    CURRENT.with(|c| *c.borrow_mut() = previous);
    result
}

fn drive<F: Future + 'static>(reactor: &Rc<Reactor>, future: F) -> std::io::Result<F::Output>
where
    F::Output: 'static,
{
    let handle = spawn(future);
    let mut turns_without_kernel = 0;
    loop {
        reactor.run_ready();
        if let Some(out) = handle.state.borrow_mut().result.take() {
            return Ok(out);
        }
        let more = !reactor.ready.ids.lock().unwrap().is_empty();
        if !more && reactor.ops.in_flight() == 0 {
            // Nothing can wake a task any more: a task awaits something that cannot happen.
            return Err(std::io::Error::other(
                "reactor stalled: tasks wait but no I/O is in flight",
            ));
        }
        // With tasks still ready, take what has completed without a system call, and let a
        // few turns' submissions gather into one; the kernel is entered at least every
        // `MAX_TURNS_WITHOUT_KERNEL` turns (so tasks that keep yielding cannot hold back I/O)
        // and whenever nothing is ready, to sleep until something completes.
        if more
            && turns_without_kernel < MAX_TURNS_WITHOUT_KERNEL
            && reactor.ops.unsubmitted(&reactor.ring) < MAX_UNSUBMITTED
        {
            turns_without_kernel += 1;
            reactor.ops.reap(&reactor.ring);
            continue;
        }
        turns_without_kernel = 0;
        reactor
            .ops
            .submit_and_wait(&reactor.ring, usize::from(!more))?;
    }
}

/// Yields once to let other ready tasks run (used by simulated members to reorder completions).
pub fn yield_now() -> YieldNow {
    YieldNow { yielded: false }
}

pub struct YieldNow {
    yielded: bool,
}

impl Future for YieldNow {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.yielded {
            Poll::Ready(())
        } else {
            self.yielded = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    /// A task that yields in a loop while it waits for I/O must not starve that I/O: each
    /// pass of the executor reaps completions before it polls again.
    #[test]
    fn a_yielding_task_does_not_starve_io_completions() {
        block_on(async {
            let done = Rc::new(Cell::new(false));
            let timer = {
                let done = done.clone();
                spawn(async move {
                    crate::reactor::sleep(std::time::Duration::from_millis(2)).await;
                    done.set(true);
                })
            };
            let mut yields = 0u64;
            while !done.get() {
                yields += 1;
                assert!(
                    yields < 50_000_000,
                    "the timer never completed while a task yielded"
                );
                yield_now().await;
            }
            timer.await;
        })
        .unwrap();
    }
}
