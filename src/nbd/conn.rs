//! The transmission phase of one connection.
//!
//! The connection task reads request headers (and WRITE payloads straight into aligned
//! buffers), validates them here at the edge, and spawns one task per request, so replies go
//! out in completion order with up to [`MAX_IN_FLIGHT`] requests running. Each reply is written
//! whole under the connection's write lock, so messages never interleave on the socket.

use std::cell::Cell;
use std::io;
use std::os::fd::RawFd;
use std::rc::Rc;

use super::handshake::Negotiated;
use super::proto::*;
use super::sock::{write_all, write_messages, BufferedReader, Message};
use super::Export;
use crate::buf::{AlignedBuf, BufSlice};
use crate::reactor::{spawn, AsyncMutex, Semaphore};
use crate::volume::Volume;
use crate::Error;

/// Requests a connection may have in flight before we stop reading from it.
pub const MAX_IN_FLIGHT: usize = 128;
/// Buffer memory one connection may hold for requests in flight (1 MiB units): a client that
/// pipelines big READs without reading the replies waits here, alone, instead of growing the
/// daemon; its requests stay unread in its socket.
pub const CONNECTION_BUDGET_MIB: usize = 64;
/// Of that, this much is the connection's own: it never waits on the server-wide pool for
/// it, so a client with a few requests in flight is answered whatever the other connections
/// hold (without it, 16 clients that never read their replies would starve everyone).
pub const CONNECTION_RESERVE_MIB: usize = 8;
/// What connections may hold beyond their reserves, all together.
pub const SERVER_BUDGET_MIB: usize = 1024;
/// A rejected WRITE payload larger than this is not drained: the connection is closed.
const MAX_DRAIN_BYTES: u64 = 128 << 20;

pub(super) struct Conn<V: Volume> {
    pub fd: RawFd,
    volume: Rc<V>,
    pub export: Rc<Export>,
    pub negotiated: Negotiated,
    write_lock: AsyncMutex,
    /// Replies waiting for the writer, and the sequence numbers of the last one queued and
    /// the last one written: whoever holds `write_lock` writes everything queued so far in one
    /// `writev`, and the others find theirs written when they get the lock.
    outbox: std::cell::RefCell<Vec<Message>>,
    queued_seq: Cell<u64>,
    written_seq: Cell<u64>,
    in_flight: Semaphore,
    budget: Semaphore,
    server_budget: Rc<Semaphore>,
    /// MiB this connection's requests hold, and how much of that came from the server pool
    /// (always `held - CONNECTION_RESERVE_MIB`, or 0, once a wait for the pool is over).
    held_mib: Cell<usize>,
    pooled_mib: Cell<usize>,
    broken: Cell<bool>,
}

impl<V: Volume + 'static> Conn<V> {
    pub fn new(
        fd: RawFd,
        volume: Rc<V>,
        export: Rc<Export>,
        negotiated: Negotiated,
        server_budget: Rc<Semaphore>,
    ) -> Rc<Conn<V>> {
        Rc::new(Conn {
            fd,
            volume,
            export,
            negotiated,
            write_lock: AsyncMutex::default(),
            outbox: Default::default(),
            queued_seq: Cell::new(0),
            written_seq: Cell::new(0),
            in_flight: Semaphore::new(MAX_IN_FLIGHT),
            budget: Semaphore::new(CONNECTION_BUDGET_MIB),
            server_budget,
            held_mib: Cell::new(0),
            pooled_mib: Cell::new(0),
            broken: Cell::new(false),
        })
    }

    /// Serves requests until the client disconnects, sends DISC, or breaks the protocol.
    /// Returns once every request it started has been answered.
    pub async fn serve(self: &Rc<Self>) -> io::Result<()> {
        let header = BufSlice::zeroed(Request::BYTES);
        let mut reader = BufferedReader::new(self.fd, 64 << 10);
        let result = loop {
            if self.broken.get() {
                break Ok(());
            }
            match reader.read_exact(&header).await {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break Ok(()),
                Err(e) => break Err(e),
            }
            let bytes: &[u8; Request::BYTES] = header.bytes().try_into().expect("28 bytes");
            let Some(req) = Request::parse(bytes) else {
                break Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "bad request magic",
                ));
            };
            if req.kind == CMD_DISC {
                break Ok(());
            }
            if let Err(e) = self.start(req, &mut reader).await {
                break Err(e);
            }
        };
        // Wait for every request still running, so their replies go out before we close.
        for _ in 0..MAX_IN_FLIGHT {
            self.in_flight.acquire().await;
        }
        result
    }

    /// Validates one request and starts it. Errors here end the connection.
    async fn start(self: &Rc<Self>, req: Request, reader: &mut BufferedReader) -> io::Result<()> {
        let payload = if req.kind == CMD_WRITE {
            req.length as u64
        } else {
            0
        };
        if let Err((errno, msg)) = self.validate(&req) {
            if payload > 0 {
                if payload > MAX_DRAIN_BYTES {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "oversized WRITE payload",
                    ));
                }
                reader.discard(payload).await?;
            }
            self.reply_error(&req, errno, &msg).await;
            return Ok(());
        }
        // Reserve the buffer memory first (WRITE payload, READ reply, the zero rows a RAID5
        // partial zeroing writes), then allocate.
        let bytes = match req.kind {
            CMD_READ | CMD_WRITE => req.length as u64,
            CMD_TRIM | CMD_WRITE_ZEROES => (req.length as u64).min(self.export.zero_buffer_bytes),
            _ => 0,
        };
        // Never more than the connection may hold at all, or the wait would never end (a huge
        // RAID5 chunk makes the zero rows of one TRIM larger than that).
        let cost = (bytes.div_ceil(1 << 20) as usize).min(CONNECTION_BUDGET_MIB);
        self.in_flight.acquire().await;
        self.budget.acquire_many(cost).await;
        self.take_from_pool(cost).await;
        let data = if payload > 0 {
            // Filled whole by the receive before anything reads it.
            let buf = BufSlice::recycled(payload as usize);
            if let Err(e) = reader.read_exact(&buf).await {
                self.release(cost);
                return Err(e);
            }
            Some(buf)
        } else {
            None
        };
        let conn = self.clone();
        spawn(async move {
            conn.execute(req, data).await;
            conn.release(cost);
        });
        Ok(())
    }

    /// Counts `cost` MiB more held; what goes beyond the reserve comes from the server pool.
    async fn take_from_pool(&self, cost: usize) {
        self.held_mib.set(self.held_mib.get() + cost);
        let want = self.held_mib.get().saturating_sub(CONNECTION_RESERVE_MIB);
        if want > self.pooled_mib.get() {
            let n = want - self.pooled_mib.get();
            self.server_budget.acquire_many(n).await;
            self.pooled_mib.set(self.pooled_mib.get() + n);
        }
        // Requests that finished during the wait may have made part of it unneeded.
        self.return_to_pool();
    }

    fn return_to_pool(&self) {
        let want = self.held_mib.get().saturating_sub(CONNECTION_RESERVE_MIB);
        let pooled = self.pooled_mib.get();
        if pooled > want {
            self.server_budget.release_many(pooled - want);
            self.pooled_mib.set(want);
        }
    }

    fn release(&self, cost: usize) {
        self.held_mib.set(self.held_mib.get() - cost);
        self.return_to_pool();
        self.budget.release_many(cost);
        self.in_flight.release();
    }

    /// The NBD spec's error for a request, checked before anything is done.
    fn validate(&self, req: &Request) -> Result<(), (u32, String)> {
        self.check_flags(req)?;
        self.check_command(req)?;
        check_range(&self.export, req)
    }

    /// Refuses unknown commands, and flags the command does not take (DF only with
    /// structured replies).
    fn check_flags(&self, req: &Request) -> Result<(), (u32, String)> {
        let allowed = match req.kind {
            CMD_READ => {
                CMD_FLAG_FUA
                    | if self.negotiated.structured {
                        CMD_FLAG_DF
                    } else {
                        0
                    }
            }
            CMD_WRITE | CMD_TRIM | CMD_FLUSH | CMD_CACHE => CMD_FLAG_FUA,
            CMD_WRITE_ZEROES => CMD_FLAG_FUA | CMD_FLAG_NO_HOLE | CMD_FLAG_FAST_ZERO,
            CMD_BLOCK_STATUS => CMD_FLAG_FUA | CMD_FLAG_REQ_ONE,
            other => return Err((EINVAL, format!("unknown command {other}"))),
        };
        if req.flags & !allowed != 0 {
            return Err((
                EINVAL,
                format!("flags {:#x} are not valid for this command", req.flags),
            ));
        }
        Ok(())
    }

    /// Each command's own rules: no writes to a read-only export, FLUSH without a range,
    /// BLOCK_STATUS only when negotiated and non-empty, payloads within the maximum.
    fn check_command(&self, req: &Request) -> Result<(), (u32, String)> {
        let e = &self.export;
        let writes = matches!(req.kind, CMD_WRITE | CMD_TRIM | CMD_WRITE_ZEROES);
        if writes && e.read_only {
            return Err((EPERM, "the export is read-only".into()));
        }
        match req.kind {
            CMD_FLUSH if (req.offset != 0 || req.length != 0) => {
                Err((EINVAL, "FLUSH must have offset and length 0".into()))
            }
            CMD_BLOCK_STATUS if !self.negotiated.base_allocation => Err((
                EINVAL,
                "BLOCK_STATUS needs a negotiated base:allocation context".into(),
            )),
            CMD_BLOCK_STATUS if req.length == 0 => {
                Err((EINVAL, "BLOCK_STATUS of zero bytes".into()))
            }
            CMD_READ | CMD_WRITE if req.length > e.max_payload => Err((
                EINVAL,
                format!(
                    "request of {} bytes exceeds the maximum {}",
                    req.length, e.max_payload
                ),
            )),
            _ => Ok(()),
        }
    }

    async fn execute(&self, req: Request, data: Option<BufSlice>) {
        let array = &*self.volume;
        let fua = req.flags & CMD_FLAG_FUA != 0;
        let len = req.length as u64;
        let result = match req.kind {
            CMD_READ => {
                // Filled whole by the read before it is sent; on an error it is not sent.
                let buf = BufSlice::recycled(req.length as usize);
                match array.read(req.offset, buf.clone()).await {
                    Ok(()) => return self.reply_read(&req, buf).await,
                    Err(e) => Err(e),
                }
            }
            CMD_WRITE => {
                array
                    .write(req.offset, data.unwrap_or_else(|| BufSlice::zeroed(0)), fua)
                    .await
            }
            CMD_FLUSH => array.flush().await,
            CMD_TRIM => with_fua(array.trim(req.offset, len).await, fua, array).await,
            CMD_WRITE_ZEROES => {
                if req.flags & CMD_FLAG_FAST_ZERO != 0 && !array.zeroes_fast(req.offset, len) {
                    return self
                        .reply_error(
                            &req,
                            ENOTSUP,
                            "zeroing this range is not faster than writing",
                        )
                        .await;
                }
                // Without NO_HOLE we may deallocate: both leave zeroes behind.
                let r = if req.flags & CMD_FLAG_NO_HOLE != 0 {
                    array.write_zeroes(req.offset, len).await
                } else {
                    array.trim(req.offset, len).await
                };
                with_fua(r, fua, array).await
            }
            CMD_CACHE => Ok(()),
            CMD_BLOCK_STATUS => return self.reply_block_status(&req).await,
            _ => Ok(()),
        };
        match result {
            Ok(()) => self.reply_ok(&req).await,
            Err(e) => {
                let errno = errno_of(&e);
                self.reply_error(&req, errno, &e.to_string()).await
            }
        }
    }

    async fn reply_ok(&self, req: &Request) {
        if self.negotiated.structured && req.kind == CMD_READ {
            let hdr = chunk_header(REPLY_FLAG_DONE, REPLY_TYPE_NONE, req.cookie, 0);
            return self.send_message(&hdr, None).await;
        }
        self.send_message(&simple_reply(0, req.cookie), None).await
    }

    async fn reply_read(&self, req: &Request, data: BufSlice) {
        if self.negotiated.structured {
            if data.is_empty() {
                return self.reply_ok(req).await;
            }
            let mut head = [0u8; 28];
            head[..20].copy_from_slice(&chunk_header(
                REPLY_FLAG_DONE,
                REPLY_TYPE_OFFSET_DATA,
                req.cookie,
                8 + data.len() as u32,
            ));
            head[20..].copy_from_slice(&req.offset.to_be_bytes());
            return self.send_message(&head, Some(data)).await;
        }
        self.send_message(&simple_reply(0, req.cookie), Some(data))
            .await
    }

    async fn reply_block_status(&self, req: &Request) {
        // Everything is allocated data: always a correct answer, and it never promises zeroes.
        let mut payload = META_BASE_ALLOCATION_ID.to_be_bytes().to_vec();
        payload.extend_from_slice(&req.length.to_be_bytes());
        payload.extend_from_slice(&0u32.to_be_bytes());
        let mut msg = chunk_header(
            REPLY_FLAG_DONE,
            REPLY_TYPE_BLOCK_STATUS,
            req.cookie,
            payload.len() as u32,
        )
        .to_vec();
        msg.extend_from_slice(&payload);
        self.send_message(&msg, None).await
    }

    async fn reply_error(&self, req: &Request, errno: u32, message: &str) {
        tracing::debug!(
            cookie = req.cookie,
            kind = req.kind,
            "request failed: {message}"
        );
        let structured_needed =
            self.negotiated.structured && matches!(req.kind, CMD_READ | CMD_BLOCK_STATUS);
        if structured_needed {
            return self
                .send(vec![bytes(&error_chunk(errno, req.cookie, message))])
                .await;
        }
        self.send_message(&simple_reply(errno, req.cookie), None)
            .await
    }

    /// Sends one reply of a short header and an optional payload; returns once it is written
    /// (replies queued meanwhile by other requests go out in the same `writev`).
    async fn send_message(&self, head: &[u8], data: Option<BufSlice>) {
        self.outbox.borrow_mut().push(Message::new(head, data));
        let seq = self.queued_seq.get() + 1;
        self.queued_seq.set(seq);
        let _guard = self.write_lock.lock().await;
        if self.written_seq.get() >= seq {
            return;
        }
        let batch = std::mem::take(&mut *self.outbox.borrow_mut());
        self.written_seq.set(self.queued_seq.get());
        if self.broken.get() {
            return;
        }
        if let Err(e) = write_messages(self.fd, batch).await {
            self.broke(e);
        }
    }

    fn broke(&self, e: io::Error) {
        tracing::debug!("connection write failed: {e}");
        self.broken.set(true);
        super::sock::shutdown(self.fd);
    }

    async fn send(&self, parts: Vec<BufSlice>) {
        let _guard = self.write_lock.lock().await;
        if self.broken.get() {
            return;
        }
        if let Err(e) = write_all(self.fd, &parts).await {
            self.broke(e);
        }
    }
}

/// The request's range must lie inside the export and (except for FLUSH) be aligned to its
/// minimum block size.
fn check_range(e: &Export, req: &Request) -> Result<(), (u32, String)> {
    let size = e.size_bytes();
    let end = req.offset.checked_add(req.length as u64);
    let in_range = end.is_some_and(|end| end <= size);
    let aligned = req.offset.is_multiple_of(e.min_block as u64)
        && (req.length as u64).is_multiple_of(e.min_block as u64);
    if !in_range {
        // Writes past the end are "no space"; everything else is an invalid range.
        let errno = if matches!(req.kind, CMD_WRITE | CMD_WRITE_ZEROES) {
            ENOSPC
        } else {
            EINVAL
        };
        return Err((
            errno,
            format!(
                "range {}+{} is beyond the export size {size}",
                req.offset, req.length
            ),
        ));
    }
    if !aligned && req.kind != CMD_FLUSH {
        return Err((
            EINVAL,
            format!(
                "range {}+{} is not aligned to {} bytes",
                req.offset, req.length, e.min_block
            ),
        ));
    }
    Ok(())
}

async fn with_fua(r: crate::Result<()>, fua: bool, array: &impl Volume) -> crate::Result<()> {
    r?;
    if fua {
        array.flush().await?;
    }
    Ok(())
}

fn bytes(b: &[u8]) -> BufSlice {
    AlignedBuf::from_slice(b).into_shared()
}

/// The spec's errno for an engine error (never a raw OS errno outside the spec's list).
fn errno_of(e: &Error) -> u32 {
    match e.errno() {
        libc::EPERM => EPERM,
        libc::EINVAL => EINVAL,
        libc::ENOSPC => ENOSPC,
        libc::ENOTSUP => ENOTSUP,
        _ => EIO,
    }
}
