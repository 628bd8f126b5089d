//! Typed events: every change people must hear about goes to the log and to subscribers
//! (`raidctl monitor`, alert programs).

use std::cell::RefCell;
use std::collections::VecDeque;

use serde::Serialize;

use super::Array;
use crate::reactor::Semaphore;

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "event")]
pub enum Event {
    MemberFailed {
        slot: usize,
        member: String,
    },
    SpareActivated {
        slot: usize,
        member: String,
    },
    RebuildStarted {
        slot: usize,
        member: String,
        from_bytes: u64,
        total_bytes: u64,
    },
    RebuildProgress {
        slot: usize,
        member: String,
        percent: u32,
    },
    RebuildFinished {
        slot: usize,
        member: String,
        bytes_rebuilt: u64,
    },
    RebuildAborted {
        slot: usize,
        member: String,
        reason: String,
    },
    DegradedArray {
        missing: String,
    },
    ArrayFailed {
        missing: String,
    },
    SparesMissing {
        slot: usize,
    },
    MemberAdded {
        member: String,
        role: String,
    },
    MemberRemoved {
        member: String,
    },
    ReadErrorCorrected {
        slot: usize,
        member: String,
        corrected: u32,
    },
    /// Data that could not be had (unreadable on every source) recorded in a member's
    /// bad-block log: reads of it fail with EIO until it is written.
    BadBlocksRecorded {
        member: String,
        offset: u64,
        bytes: u64,
    },
    CheckFinished {
        repair: bool,
        mismatch_sectors: u64,
    },
    ResyncFinished {
        mismatch_sectors: u64,
        /// Bytes actually compared and fixed (the rest the bitmap called clean).
        bytes_resynced: u64,
    },
    /// The cache stopped acknowledging writes from RAM (battery lost, or configured so).
    CacheWriteThrough {
        reason: String,
    },
    /// The cache acknowledges writes from RAM again.
    CacheWriteBack {
        reason: String,
    },
    /// A spare came from another array of the spare group (md's MoveSpare).
    SpareMoved {
        member: String,
        from: String,
    },
}

impl Event {
    /// mdadm-style name: "RebuildStarted", ...
    pub fn name(&self) -> &'static str {
        match self {
            Event::MemberFailed { .. } => "MemberFailed",
            Event::SpareActivated { .. } => "SpareActivated",
            Event::RebuildStarted { .. } => "RebuildStarted",
            Event::RebuildProgress { .. } => "RebuildProgress",
            Event::RebuildFinished { .. } => "RebuildFinished",
            Event::RebuildAborted { .. } => "RebuildAborted",
            Event::DegradedArray { .. } => "DegradedArray",
            Event::ArrayFailed { .. } => "ArrayFailed",
            Event::SparesMissing { .. } => "SparesMissing",
            Event::MemberAdded { .. } => "MemberAdded",
            Event::ReadErrorCorrected { .. } => "ReadErrorCorrected",
            Event::BadBlocksRecorded { .. } => "BadBlocksRecorded",
            Event::CheckFinished { .. } => "CheckFinished",
            Event::ResyncFinished { .. } => "ResyncFinished",
            Event::SpareMoved { .. } => "SpareMoved",
            Event::MemberRemoved { .. } => "MemberRemoved",
            Event::CacheWriteThrough { .. } => "CacheWriteThrough",
            Event::CacheWriteBack { .. } => "CacheWriteBack",
        }
    }

    /// The member the event is about, if any.
    pub fn member(&self) -> Option<&str> {
        match self {
            Event::MemberFailed { member, .. }
            | Event::SpareActivated { member, .. }
            | Event::RebuildStarted { member, .. }
            | Event::RebuildProgress { member, .. }
            | Event::RebuildFinished { member, .. }
            | Event::RebuildAborted { member, .. }
            | Event::MemberAdded { member, .. }
            | Event::ReadErrorCorrected { member, .. }
            | Event::BadBlocksRecorded { member, .. }
            | Event::SpareMoved { member, .. }
            | Event::MemberRemoved { member } => Some(member),
            _ => None,
        }
    }
}

/// A callback that hears every event (on the reactor thread).
pub type Subscriber = Box<dyn Fn(&Event)>;

/// Events on their way to the subscribers. The engine only queues them, so no subscriber (the
/// daemon's monitors, alerts, the spare-group exchange) ever runs inside a request; the control
/// plane's delivery task takes them out in order ([`Array::next_events`]).
#[derive(Default)]
pub(super) struct Notices {
    queue: RefCell<VecDeque<Event>>,
    ready: Semaphore,
}

impl Notices {
    /// Wakes the delivery task (at `close`, so it can end).
    pub(super) fn wake(&self) {
        if self.ready.available() == 0 {
            self.ready.release();
        }
    }
}

impl Array {
    /// Logs `event` and queues it for the control plane's subscribers.
    pub fn emit(&self, event: Event) {
        match &event {
            Event::MemberFailed { .. }
            | Event::ArrayFailed { .. }
            | Event::RebuildAborted { .. }
            | Event::BadBlocksRecorded { .. } => {
                tracing::error!(array = %self.name, "{}: {event:?}", event.name())
            }
            Event::DegradedArray { .. }
            | Event::SparesMissing { .. }
            | Event::CacheWriteThrough { .. } => {
                tracing::warn!(array = %self.name, "{}: {event:?}", event.name())
            }
            _ => tracing::info!(array = %self.name, "{}: {event:?}", event.name()),
        }
        self.notices.queue.borrow_mut().push_back(event);
        self.notices.wake();
    }

    /// Waits for queued events and takes them all, oldest first. None once the array is
    /// closing and nothing is left: the delivery task then ends (later events are logged only).
    pub async fn next_events(&self) -> Option<Vec<Event>> {
        loop {
            let events: Vec<Event> = self.notices.queue.borrow_mut().drain(..).collect();
            if !events.is_empty() {
                return Some(events);
            }
            if self.stopping.get() {
                return None;
            }
            self.notices.ready.acquire().await;
        }
    }

    /// Wakes the scheduler (coalesced: one pending wake-up is enough): the engine's other
    /// way of telling the control plane that something changed (a failure, a member added).
    pub fn needs_attention(&self) {
        if self.attention.available() == 0 {
            self.attention.release();
        }
    }

    /// Waits for a wake-up from [`Array::needs_attention`] (the scheduler's loop).
    pub async fn attention_wanted(&self) {
        self.attention.acquire().await
    }
}
