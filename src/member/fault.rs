//! Fault injection: a member wrapper for drills (`raidctl inject`) and tests.
//!
//! Rules are kept behind a mutex in a [`FaultHandle`] that the control plane can change while the
//! array runs. A rule fires on operations that touch its byte range (or any range), optionally
//! only `count` times. `Vanish` makes every later operation fail with ENODEV, as a pulled disk.

use std::io;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{vanished_error, LocalFuture, Member};
use crate::buf::BufSlice;
use crate::reactor::sleep;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultKind {
    ReadError,
    WriteError,
    Delay(Duration),
    Vanish,
}

/// One injected fault. `range` is (offset, length) in device bytes; `count` None = unlimited.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FaultRule {
    pub kind: FaultKind,
    pub range: Option<(u64, u64)>,
    pub count: Option<u64>,
}

impl FaultRule {
    pub fn new(kind: FaultKind) -> FaultRule {
        FaultRule {
            kind,
            range: None,
            count: None,
        }
    }
    fn covers(&self, offset: u64, len: u64) -> bool {
        match self.range {
            None => true,
            Some((start, rlen)) => {
                offset < start.saturating_add(rlen) && start < offset.saturating_add(len.max(1))
            }
        }
    }
}

#[derive(Default)]
struct FaultState {
    rules: Vec<FaultRule>,
    vanished: bool,
    fired: u64,
}

/// Shared, thread-safe control of one member's faults.
#[derive(Clone, Default)]
pub struct FaultHandle {
    state: Arc<Mutex<FaultState>>,
    /// Whether any rule is set or the member has vanished: when not, operations pass
    /// straight to the member without the lock or a wrapper future (the daemon wraps every
    /// member, and almost none is ever armed).
    armed: Arc<AtomicBool>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum OpKind {
    Read,
    Write,
    Other,
}

impl FaultHandle {
    pub fn inject(&self, rule: FaultRule) {
        let mut st = self.state.lock().unwrap();
        st.rules.push(rule);
        self.rearm(&st);
    }
    pub fn vanish(&self) {
        let mut st = self.state.lock().unwrap();
        st.vanished = true;
        self.rearm(&st);
    }
    pub fn clear(&self) {
        let mut st = self.state.lock().unwrap();
        st.rules.clear();
        st.vanished = false;
        self.rearm(&st);
    }
    /// Records whether anything is armed (called with the state locked, after each change).
    fn rearm(&self, st: &FaultState) {
        self.armed
            .store(st.vanished || !st.rules.is_empty(), Ordering::Release);
    }
    fn is_armed(&self) -> bool {
        self.armed.load(Ordering::Acquire)
    }
    pub fn is_vanished(&self) -> bool {
        self.state.lock().unwrap().vanished
    }
    /// How many operations a rule has failed or delayed so far.
    pub fn fired(&self) -> u64 {
        self.state.lock().unwrap().fired
    }

    /// Decides the fate of one operation: Err to fail it, Ok(delay) to go ahead.
    fn check(&self, op: OpKind, offset: u64, len: u64) -> Result<Option<Duration>, io::Error> {
        let mut st = self.state.lock().unwrap();
        if st.vanished {
            return Err(vanished_error());
        }
        let mut delay = None;
        let mut fail = None;
        let mut vanish = false;
        for rule in st.rules.iter_mut() {
            if rule.count == Some(0) || !rule.covers(offset, len) {
                continue;
            }
            let applies = match rule.kind {
                FaultKind::ReadError => op == OpKind::Read,
                FaultKind::WriteError => op == OpKind::Write,
                FaultKind::Delay(_) | FaultKind::Vanish => true,
            };
            if !applies {
                continue;
            }
            if let Some(c) = rule.count.as_mut() {
                *c -= 1;
            }
            match rule.kind {
                FaultKind::Delay(d) => delay = Some(d),
                FaultKind::Vanish => vanish = true,
                _ => fail = Some(io::Error::from_raw_os_error(libc::EIO)),
            }
        }
        st.rules.retain(|r| r.count != Some(0));
        if vanish {
            st.vanished = true;
        }
        self.rearm(&st);
        if vanish {
            st.fired += 1;
            return Err(vanished_error());
        }
        if let Some(e) = fail {
            st.fired += 1;
            return Err(e);
        }
        if delay.is_some() {
            st.fired += 1;
        }
        Ok(delay)
    }
}

/// Wraps a member and applies the rules of its [`FaultHandle`].
pub struct FaultMember {
    inner: Rc<dyn Member>,
    faults: FaultHandle,
}

impl FaultMember {
    /// Puts each of `members` behind a fault wrapper of its own (unarmed); the handles come in
    /// the same order.
    pub fn wrap_all(
        members: impl IntoIterator<Item = Rc<dyn Member>>,
    ) -> (Vec<Rc<dyn Member>>, Vec<FaultHandle>) {
        members
            .into_iter()
            .map(|m| {
                let handle = FaultHandle::default();
                let wrapped = Rc::new(FaultMember::new(m, handle.clone())) as Rc<dyn Member>;
                (wrapped, handle)
            })
            .unzip()
    }

    pub fn new(inner: Rc<dyn Member>, faults: FaultHandle) -> FaultMember {
        FaultMember { inner, faults }
    }

    async fn gate(&self, op: OpKind, offset: u64, len: u64) -> io::Result<()> {
        if let Some(d) = self.faults.check(op, offset, len)? {
            sleep(d).await;
        }
        Ok(())
    }
}

impl Member for FaultMember {
    fn path(&self) -> &str {
        self.inner.path()
    }
    fn size_bytes(&self) -> u64 {
        self.inner.size_bytes()
    }
    fn read(&self, offset: u64, buf: BufSlice) -> LocalFuture<'_, io::Result<()>> {
        if !self.faults.is_armed() {
            return self.inner.read(offset, buf);
        }
        Box::pin(async move {
            self.gate(OpKind::Read, offset, buf.len() as u64).await?;
            self.inner.read(offset, buf).await
        })
    }
    fn write(&self, offset: u64, buf: BufSlice, fua: bool) -> LocalFuture<'_, io::Result<()>> {
        if !self.faults.is_armed() {
            return self.inner.write(offset, buf, fua);
        }
        Box::pin(async move {
            self.gate(OpKind::Write, offset, buf.len() as u64).await?;
            self.inner.write(offset, buf, fua).await
        })
    }
    fn flush(&self) -> LocalFuture<'_, io::Result<()>> {
        Box::pin(async move {
            self.gate(OpKind::Other, 0, 0).await?;
            self.inner.flush().await
        })
    }
    fn discard(&self, offset: u64, len: u64) -> LocalFuture<'_, io::Result<()>> {
        Box::pin(async move {
            self.gate(OpKind::Write, offset, len).await?;
            self.inner.discard(offset, len).await
        })
    }
    fn write_zeroes(&self, offset: u64, len: u64) -> LocalFuture<'_, io::Result<()>> {
        Box::pin(async move {
            self.gate(OpKind::Write, offset, len).await?;
            self.inner.write_zeroes(offset, len).await
        })
    }
}
