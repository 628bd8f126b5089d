//! The NBD server: one export (the array), many connections, all on the array's reactor.
//!
//! ```text
//!  listener task (unix / tcp) ─accept─► connection task: handshake ─► transmission loop
//!                                                           │ spawn per request
//!                                                           ▼
//!                                        request task: Array op ─► reply (write-locked)
//! ```
//!
//! Fixed newstyle only, with NO_ZEROES; options EXPORT_NAME, GO, INFO, LIST, ABORT,
//! STRUCTURED_REPLY, LIST/SET_META_CONTEXT (`base:allocation`); ERR_UNSUP for the rest.
//! All connections drive the same engine, so FLUSH on any of them covers writes acknowledged on
//! all of them: CAN_MULTI_CONN is advertised.

mod conn;
mod handshake;
pub mod proto;
pub mod sock;

use std::cell::{Cell, RefCell};
use std::os::fd::RawFd;
use std::rc::Rc;
use std::time::Duration;

use crate::reactor::{sleep, spawn};
use crate::volume::{Volume, VolumeInfo};
pub use handshake::Negotiated;
use proto::*;

/// How the server describes its volume to clients: made once from the volume's
/// [`VolumeInfo`] (the name may then be set to the one it is served under).
pub struct Export {
    pub name: String,
    pub description: String,
    pub size_bytes: u64,
    pub read_only: bool,
    pub min_block: u32,
    pub preferred_block: u32,
    pub max_payload: u32,
    /// What the volume can do: the transmission flags come from it.
    caps: VolumeInfo,
    /// The most buffer memory one TRIM or WRITE_ZEROES can need (RAID5 writes the partial
    /// rows at either end as zeroes): what it counts against the connection's budget.
    pub zero_buffer_bytes: u64,
}

/// The largest READ/WRITE payload we accept (what clients default to).
pub const MAX_PAYLOAD: u32 = 32 << 20;

impl Export {
    /// Serves `info`'s volume; `read_only` makes it read-only for clients even if it is not.
    pub fn new(info: VolumeInfo, read_only: bool) -> Export {
        Export {
            name: info.name.clone(),
            description: info.description.clone(),
            size_bytes: info.size_bytes,
            read_only: read_only || info.read_only,
            min_block: info.logical_block,
            preferred_block: info.preferred_block.min(MAX_PAYLOAD),
            max_payload: MAX_PAYLOAD,
            zero_buffer_bytes: info.zero_buffer_bytes,
            caps: info,
        }
    }

    pub fn size_bytes(&self) -> u64 {
        self.size_bytes
    }

    /// The default export ("") is ours too.
    pub fn matches(&self, name: &str) -> bool {
        name.is_empty() || name == self.name
    }

    pub fn transmission_flags(&self, structured: bool) -> u16 {
        let caps = &self.caps;
        let mut f = TF_HAS_FLAGS | TF_SEND_CACHE;
        if caps.can_flush {
            f |= TF_SEND_FLUSH | TF_SEND_FUA;
        }
        if caps.multi_conn {
            f |= TF_CAN_MULTI_CONN;
        }
        if self.read_only {
            f |= TF_READ_ONLY;
        } else {
            if caps.can_trim {
                f |= TF_SEND_TRIM;
            }
            if caps.can_zero {
                f |= TF_SEND_WRITE_ZEROES | TF_SEND_FAST_ZERO;
            }
        }
        if structured {
            // Every READ is answered with one data chunk, so "don't fragment" always holds.
            f |= TF_SEND_DF;
        }
        f
    }
}

/// Connection counts for `status`.
#[derive(Default)]
pub struct ServerStats {
    pub connections: Cell<usize>,
    pub total_connections: Cell<u64>,
}

/// The listeners and connections of one export.
pub struct Server<V: Volume> {
    volume: Rc<V>,
    export: Rc<Export>,
    pub stats: Rc<ServerStats>,
    stopping: Cell<bool>,
    listeners: RefCell<Vec<RawFd>>,
    connections: RefCell<Vec<RawFd>>,
    /// Buffer memory (MiB) all connections together may hold for requests in flight.
    budget: Rc<crate::reactor::Semaphore>,
}

impl<V: Volume + 'static> Server<V> {
    pub fn new(volume: Rc<V>, export: Export) -> Rc<Server<V>> {
        Rc::new(Server {
            volume,
            export: Rc::new(export),
            stats: Rc::new(ServerStats::default()),
            stopping: Cell::new(false),
            listeners: RefCell::new(Vec::new()),
            connections: RefCell::new(Vec::new()),
            budget: Rc::new(crate::reactor::Semaphore::new(conn::SERVER_BUDGET_MIB)),
        })
    }

    pub fn export(&self) -> &Rc<Export> {
        &self.export
    }

    /// Accepts connections on a listening socket until [`Server::shutdown`]. Takes ownership of `fd`.
    pub fn listen(self: &Rc<Self>, fd: RawFd) {
        self.listeners.borrow_mut().push(fd);
        let server = self.clone();
        spawn(async move {
            loop {
                match sock::accept(fd).await {
                    Ok(conn) if server.stopping.get() => sock::close(conn),
                    Ok(conn) => server.start_connection(conn),
                    Err(_) if server.stopping.get() => break,
                    Err(e) => {
                        tracing::warn!("accept failed: {e}");
                        sleep(Duration::from_millis(100)).await;
                    }
                }
            }
            sock::close(fd);
        });
    }

    /// Serves a connection whose handshake happened elsewhere (the kernel nbd client gets its
    /// sockets after the handshake: we hand it one end of a socketpair and serve the other).
    /// Takes ownership of `fd`; the connection counts, and `shutdown` ends it, like any other.
    pub fn serve_negotiated(self: &Rc<Self>, fd: RawFd, negotiated: Negotiated) {
        self.count_connection(fd);
        let server = self.clone();
        spawn(async move {
            server.transmit(fd, negotiated).await;
            server.end_connection(fd);
        });
    }

    async fn transmit(self: &Rc<Self>, fd: RawFd, negotiated: Negotiated) {
        let conn = conn::Conn::new(
            fd,
            self.volume.clone(),
            self.export.clone(),
            negotiated,
            self.budget.clone(),
        );
        if let Err(e) = conn.serve().await {
            tracing::info!("connection closed: {e}");
        }
    }

    fn count_connection(&self, fd: RawFd) {
        self.stats.connections.set(self.stats.connections.get() + 1);
        self.stats
            .total_connections
            .set(self.stats.total_connections.get() + 1);
        self.connections.borrow_mut().push(fd);
    }

    fn start_connection(self: &Rc<Self>, fd: RawFd) {
        self.count_connection(fd);
        let server = self.clone();
        spawn(async move {
            match handshake::handshake(fd, &server.export).await {
                Ok(Some(negotiated)) => server.transmit(fd, negotiated).await,
                Ok(None) => {}
                Err(e) => tracing::info!("handshake failed: {e}"),
            }
            server.end_connection(fd);
        });
    }

    /// Forgets a finished connection and closes its socket (the pair of `count_connection`).
    fn end_connection(&self, fd: RawFd) {
        self.connections.borrow_mut().retain(|&c| c != fd);
        sock::close(fd);
        self.stats.connections.set(self.stats.connections.get() - 1);
    }

    /// Stops accepting, lets every connection finish the requests it has started, and returns
    /// when all are closed (or after `timeout`).
    pub async fn shutdown(&self, timeout: Duration) {
        self.stopping.set(true);
        for &fd in self.listeners.borrow().iter() {
            sock::shutdown(fd);
        }
        // Half-close: the reader sees EOF, replies still go out.
        for &fd in self.connections.borrow().iter() {
            // SAFETY: shutdown takes no memory; the fd is a live connection we own.
            unsafe {
                libc::shutdown(fd, libc::SHUT_RD);
            }
        }
        let step = Duration::from_millis(5);
        let mut waited = Duration::ZERO;
        while self.stats.connections.get() > 0 && waited < timeout {
            sleep(step).await;
            waited += step;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> VolumeInfo {
        VolumeInfo {
            name: "a".into(),
            description: "an array".into(),
            size_bytes: 1 << 30,
            logical_block: 512,
            preferred_block: 1 << 20,
            read_only: false,
            can_trim: true,
            can_zero: true,
            can_flush: true,
            multi_conn: true,
            zero_buffer_bytes: 0,
        }
    }

    #[test]
    fn transmission_flags_come_from_the_volume_capabilities() {
        let all = Export::new(info(), false).transmission_flags(false);
        for f in [
            TF_SEND_FLUSH,
            TF_SEND_FUA,
            TF_CAN_MULTI_CONN,
            TF_SEND_TRIM,
            TF_SEND_WRITE_ZEROES,
        ] {
            assert_ne!(all & f, 0, "flag {f:#x}");
        }
        assert_eq!(all & TF_READ_ONLY, 0);
        let ro = Export::new(info(), true).transmission_flags(false);
        assert_ne!(ro & TF_READ_ONLY, 0);
        assert_eq!(ro & (TF_SEND_TRIM | TF_SEND_WRITE_ZEROES), 0);
        let plain = VolumeInfo {
            can_trim: false,
            can_flush: false,
            multi_conn: false,
            ..info()
        };
        let f = Export::new(plain, false).transmission_flags(false);
        assert_eq!(
            f & (TF_SEND_TRIM | TF_SEND_FLUSH | TF_SEND_FUA | TF_CAN_MULTI_CONN),
            0
        );
        assert_ne!(f & TF_SEND_WRITE_ZEROES, 0);
    }
}
