//! Work posted to the reactor from other threads (NBD connections, FUSE, the control socket).
//!
//! A sender pushes a closure on a mutex-protected queue and bumps an eventfd; the reactor keeps
//! one io_uring read armed on that eventfd, runs the queued closures on its own thread when it
//! fires, and re-arms. Closures usually spawn a task that answers through a channel.

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::{Arc, Mutex};

use io_uring::{opcode, types};

use super::ops::submit;

type Job = Box<dyn FnOnce() + Send>;

struct Shared {
    queue: Mutex<InboxState>,
    eventfd: OwnedFd,
}

struct InboxState {
    jobs: VecDeque<Job>,
    closed: bool,
}

/// The receiving end, owned by the reactor thread.
pub struct Inbox {
    shared: Arc<Shared>,
}

/// The sending end: `Send + Sync + Clone`, held by frontend threads.
#[derive(Clone)]
pub struct InboxSender {
    shared: Arc<Shared>,
}

impl Inbox {
    pub fn new() -> std::io::Result<(Inbox, InboxSender)> {
        // SAFETY: eventfd has no memory arguments; a negative return is checked below.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor we own.
        let eventfd = unsafe { OwnedFd::from_raw_fd(fd) };
        let shared = Arc::new(Shared {
            queue: Mutex::new(InboxState {
                jobs: VecDeque::new(),
                closed: false,
            }),
            eventfd,
        });
        Ok((
            Inbox {
                shared: shared.clone(),
            },
            InboxSender { shared },
        ))
    }

    /// Runs posted jobs until every sender has called [`InboxSender::close`]. Run it as a task.
    pub async fn serve(self) {
        loop {
            let jobs: Vec<Job> = {
                let mut st = self.shared.queue.lock().unwrap();
                if st.closed && st.jobs.is_empty() {
                    return;
                }
                st.jobs.drain(..).collect()
            };
            if jobs.is_empty() {
                let counter = Box::new([0u8; 8]);
                let entry = opcode::Read::new(
                    types::Fd(self.shared.eventfd.as_raw_fd()),
                    counter.as_ptr() as *mut u8,
                    8,
                )
                .build();
                submit(entry, Some(counter)).await;
                continue;
            }
            for job in jobs {
                job();
            }
        }
    }
}

impl InboxSender {
    /// Queues `job` to run on the reactor thread. Returns false once the inbox is closed.
    pub fn post(&self, job: impl FnOnce() + Send + 'static) -> bool {
        {
            let mut st = self.shared.queue.lock().unwrap();
            if st.closed {
                return false;
            }
            st.jobs.push_back(Box::new(job));
        }
        self.kick();
        true
    }

    /// Stops the reactor's inbox task once the queued jobs have run.
    pub fn close(&self) {
        self.shared.queue.lock().unwrap().closed = true;
        self.kick();
    }

    fn kick(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to our own eventfd.
        unsafe {
            libc::write(
                self.shared.eventfd.as_raw_fd(),
                &one as *const u64 as *const libc::c_void,
                8,
            );
        }
    }
}

/// Runs `f` on a new thread and resolves with its result, without blocking the reactor
/// (for blocking system tools such as losetup, or mount).
pub async fn blocking<T: Send + 'static>(
    sender: &InboxSender,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    use std::sync::Mutex as StdMutex;
    use std::task::{Poll, Waker};
    struct Shared<T> {
        value: Option<T>,
        waker: Option<Waker>,
    }
    let shared = Arc::new(StdMutex::new(Shared {
        value: None,
        waker: None,
    }));
    let worker_shared = shared.clone();
    let sender = sender.clone();
    std::thread::spawn(move || {
        let value = f();
        worker_shared.lock().unwrap().value = Some(value);
        // Wake the waiting task from the reactor thread, through the inbox (which also
        // wakes the reactor if it is asleep in the ring).
        let wake_shared = worker_shared.clone();
        sender.post(move || {
            if let Some(w) = wake_shared.lock().unwrap().waker.take() {
                w.wake();
            }
        });
    });
    std::future::poll_fn(move |cx| {
        let mut st = shared.lock().unwrap();
        match st.value.take() {
            Some(v) => Poll::Ready(v),
            None => {
                st.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    })
    .await
}
