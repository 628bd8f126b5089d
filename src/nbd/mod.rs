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

use crate::cache::Cache;
use crate::reactor::{sleep, spawn};
pub use handshake::Negotiated;
use proto::*;

/// What the server exports: the array (through its cache) plus how it is described to clients.
pub struct Export {
    pub name: String,
    pub description: String,
    pub volume: Rc<Cache>,
    pub read_only: bool,
    pub min_block: u32,
    pub preferred_block: u32,
    pub max_payload: u32,
    /// The most buffer memory one TRIM or WRITE_ZEROES can need (RAID5 writes the partial
    /// rows at either end as zeroes): what it counts against the connection's budget.
    pub zero_buffer_bytes: u64,
}

/// The largest READ/WRITE payload we accept (what clients default to).
pub const MAX_PAYLOAD: u32 = 32 << 20;

impl Export {
    pub fn new(volume: Rc<Cache>, read_only: bool) -> Export {
        let array = volume.array().clone();
        let geo = array.geometry();
        let chunk = geo.chunk_bytes();
        let stripe = match geo.level() {
            crate::layout::Level::Raid1 => 4096,
            crate::layout::Level::Raid5 => chunk * (geo.members() as u64 - 1),
            crate::layout::Level::Raid0 => chunk * geo.members() as u64,
            crate::layout::Level::Raid10 => chunk * geo.members() as u64 / geo.copies() as u64,
        };
        // Clients reject a preferred size that is not a power of two.
        let preferred = if stripe.is_power_of_two() {
            stripe
        } else {
            chunk.max(4096)
        };
        let preferred = preferred.clamp(4096, MAX_PAYLOAD as u64) as u32;
        let description = format!(
            "raidctl {} array {} ({} members, {} bytes)",
            geo.level(),
            array.name(),
            geo.members(),
            array.size_bytes()
        );
        Export {
            name: array.name().to_string(),
            description,
            read_only: read_only || array.is_read_only(),
            volume,
            min_block: 512,
            preferred_block: preferred,
            max_payload: MAX_PAYLOAD,
            zero_buffer_bytes: match geo.level() {
                crate::layout::Level::Raid5 => 2 * geo.stripe_bytes(),
                _ => 0,
            },
        }
    }

    pub fn size_bytes(&self) -> u64 {
        self.volume.size_bytes()
    }

    /// The default export ("") is ours too.
    pub fn matches(&self, name: &str) -> bool {
        name.is_empty() || name == self.name
    }

    pub fn transmission_flags(&self, structured: bool) -> u16 {
        let mut f = TF_HAS_FLAGS | TF_SEND_FLUSH | TF_SEND_FUA | TF_CAN_MULTI_CONN | TF_SEND_CACHE;
        if self.read_only {
            f |= TF_READ_ONLY;
        } else {
            f |= TF_SEND_TRIM | TF_SEND_WRITE_ZEROES | TF_SEND_FAST_ZERO;
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
pub struct Server {
    export: Rc<Export>,
    pub stats: Rc<ServerStats>,
    stopping: Cell<bool>,
    listeners: RefCell<Vec<RawFd>>,
    connections: RefCell<Vec<RawFd>>,
    /// Buffer memory (MiB) all connections together may hold for requests in flight.
    budget: Rc<crate::reactor::Semaphore>,
}

impl Server {
    pub fn new(export: Export) -> Rc<Server> {
        Rc::new(Server {
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
            server.connections.borrow_mut().retain(|&c| c != fd);
            sock::close(fd);
            server
                .stats
                .connections
                .set(server.stats.connections.get() - 1);
        });
    }

    async fn transmit(self: &Rc<Self>, fd: RawFd, negotiated: Negotiated) {
        let conn = conn::Conn::new(fd, self.export.clone(), negotiated, self.budget.clone());
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
            server.connections.borrow_mut().retain(|&c| c != fd);
            sock::close(fd);
            server
                .stats
                .connections
                .set(server.stats.connections.get() - 1);
        });
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
