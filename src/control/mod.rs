//! The control plane: the jobs that run beside the data path and drive it. Assembly and
//! creation build the engine; the scheduler promotes spares and runs recoveries (with
//! `region` to read a slot's region from the others and `throttle` for md's speed limits);
//! `scrub` checks, repairs and resyncs; `replace` copies a member onto its successor;
//! `manage` fails, removes and adds members; `settings` keeps what md has no field for.
//!
//! [`Controller`] holds the engine ([`Array`]) and the state of these jobs; the engine knows
//! nothing of it (nothing under `raid/` imports `control`). The engine tells the control
//! plane what happened through its queues: events (`Array::emit`, delivered to subscribers by
//! [`Controller::deliver_events`]) and wake-ups for the scheduler (`Array::needs_attention`).
//! A job that must finish before the array closes holds a [`crate::raid::Worker`] ticket.

mod assemble;
mod create;
mod manage;
mod rebuild;
mod region;
mod replace;
mod scrub;
mod scrub_coded;
mod settings;
mod throttle;

use std::cell::{Cell, RefCell};
use std::collections::HashSet;
use std::rc::Rc;
use std::time::Instant;

use crate::raid::events::{Event, Subscriber};
use crate::raid::{Array, Disk};

pub use assemble::{assemble, AssembleOptions, Assembled};
pub use create::{create, CreateOptions, CreatedArray};
pub use rebuild::RebuildState;
pub use scrub::ScrubState;

/// An assembled array with its control plane: the engine, and the jobs that drive it.
pub struct Controller {
    array: Rc<Array>,
    /// Slots whose rebuild task runs.
    rebuilding: RefCell<HashSet<usize>>,
    /// Foreground requests counted, and when that count last changed (the throttle's idea of
    /// a busy array).
    foreground_seen: Cell<(u64, Instant)>,
    /// Rebuild throttle in KiB/s (md's speed_limit_min / speed_limit_max).
    speed_min_kib: Cell<u64>,
    speed_max_kib: Cell<u64>,
    checkpoint_every: Cell<(u64, std::time::Duration)>,
    scrub: Cell<Option<ScrubState>>,
    resync_wanted: Cell<bool>,
    /// Our extension block as read at assembly (settings md has no field for).
    extension: RefCell<crate::metadata::Extension>,
    /// Members re-added with the bitmap: only chunks it marks dirty are rebuilt on them. By
    /// identity (a dev_number is reused once its member is removed), and forgotten whenever
    /// their recovery ends, however it ends.
    readded: RefCell<Vec<Rc<Disk>>>,
    subscribers: RefCell<Vec<Subscriber>>,
}

impl Controller {
    /// The control plane of a freshly assembled engine: nothing running, default settings.
    fn new(array: Rc<Array>) -> Controller {
        Controller {
            array,
            rebuilding: RefCell::new(HashSet::new()),
            foreground_seen: Cell::new((0, Instant::now())),
            speed_min_kib: Cell::new(settings::SPEED_MIN_KIB_DEFAULT),
            speed_max_kib: Cell::new(settings::SPEED_MAX_KIB_DEFAULT),
            checkpoint_every: Cell::new((
                settings::CHECKPOINT_BYTES_DEFAULT,
                settings::CHECKPOINT_INTERVAL_DEFAULT,
            )),
            scrub: Cell::new(None),
            resync_wanted: Cell::new(false),
            extension: RefCell::new(crate::metadata::Extension::default()),
            readded: RefCell::new(Vec::new()),
            subscribers: RefCell::new(Vec::new()),
        }
    }

    /// The engine this controls (the [`crate::volume::Volume`] to serve).
    pub fn array(&self) -> &Rc<Array> {
        &self.array
    }

    /// Calls `f` for every later event (on the reactor thread).
    pub fn subscribe(&self, f: impl Fn(&Event) + 'static) {
        self.subscribers.borrow_mut().push(Box::new(f));
    }

    /// The delivery task: hands the engine's queued events to the subscribers, in order,
    /// until the array stops (and then what is left).
    pub async fn deliver_events(self: Rc<Self>) {
        while let Some(events) = self.array.next_events().await {
            for event in &events {
                self.hand_out(event);
            }
        }
    }

    fn hand_out(&self, event: &Event) {
        for s in self.subscribers.borrow().iter() {
            s(event);
        }
    }
}
