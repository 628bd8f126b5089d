//! Socket I/O on the reactor's ring: exact reads, whole writes, vectored writes, accept.
//!
//! A connection's bytes never block the reactor thread: every call is an io_uring operation
//! whose buffers the op table keeps alive until completion.

use std::io;
use std::os::fd::RawFd;

use io_uring::{opcode, types};

use crate::buf::BufSlice;
use crate::reactor::submit;

fn check(res: i32) -> io::Result<usize> {
    if res < 0 {
        Err(io::Error::from_raw_os_error(-res))
    } else {
        Ok(res as usize)
    }
}

/// Fills `buf` completely; `UnexpectedEof` when the peer closes first.
pub async fn read_exact(fd: RawFd, buf: &BufSlice) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        let part = buf.slice(done, buf.len() - done);
        let entry = opcode::Recv::new(types::Fd(fd), part.as_mut_ptr(), part.len() as u32).build();
        done += received(check(submit(entry, Some(Box::new(part))).await)?)?;
    }
    Ok(())
}

/// A receive's byte count; a peer that closed the connection (0 bytes) is `UnexpectedEof`.
fn received(n: usize) -> io::Result<usize> {
    if n == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "peer closed the connection",
        ));
    }
    Ok(n)
}

/// Reads and throws away `len` bytes (the payload of a rejected WRITE).
pub async fn discard(fd: RawFd, mut len: u64) -> io::Result<()> {
    const STEP: usize = 1 << 20;
    let scratch = BufSlice::zeroed(STEP.min(len as usize).max(1));
    while len > 0 {
        let n = (len as usize).min(STEP);
        read_exact(fd, &scratch.slice(0, n)).await?;
        len -= n as u64;
    }
    Ok(())
}

/// Writes every byte of every slice, in order (one `writev` per round, no copying).
/// What is left of `parts` once the first `sent` bytes went out; a write that took nothing
/// means the peer stopped reading.
fn after_sent(parts: Vec<BufSlice>, mut sent: usize) -> io::Result<Vec<BufSlice>> {
    if sent == 0 {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            "peer stopped reading",
        ));
    }
    let mut rest = Vec::new();
    for p in parts {
        if sent >= p.len() {
            sent -= p.len();
        } else {
            rest.push(p.slice(sent, p.len() - sent));
            sent = 0;
        }
    }
    Ok(rest)
}

/// Finishes `messages` after a `writev` that took only `sent` of their bytes (rare on a
/// socket): the rest piece by piece, headers copied into buffers of their own.
async fn finish_short_write<'a>(
    fd: RawFd,
    messages: impl Iterator<Item = &'a Message>,
    sent: usize,
) -> io::Result<()> {
    let parts: Vec<BufSlice> = messages
        .flat_map(|m| std::iter::once(BufSlice::copy_of(m.head())).chain(m.data.clone()))
        .collect();
    write_all(fd, &after_sent(parts, sent)?).await
}

pub async fn write_all(fd: RawFd, parts: &[BufSlice]) -> io::Result<()> {
    let mut parts: Vec<BufSlice> = parts.iter().filter(|p| !p.is_empty()).cloned().collect();
    while !parts.is_empty() {
        let iovecs: Box<Vec<libc::iovec>> = Box::new(
            parts
                .iter()
                .map(|p| libc::iovec {
                    iov_base: p.as_mut_ptr() as *mut libc::c_void,
                    iov_len: p.len(),
                })
                .collect(),
        );
        let entry =
            opcode::Writev::new(types::Fd(fd), iovecs.as_ptr(), iovecs.len() as u32).build();
        let keep: Box<(Box<Vec<libc::iovec>>, Vec<BufSlice>)> = Box::new((iovecs, parts.clone()));
        let n = check(submit(entry, Some(keep)).await)?;
        parts = after_sent(parts, n)?;
    }
    Ok(())
}

/// Longest header [`write_message`] takes: a structured reply's chunk header and 12 more bytes
/// (a READ's offset, a BLOCK_STATUS descriptor).
pub const MAX_HEAD: usize = 32;

/// One message and its iovecs, in one box that the operation keeps until its completion.
struct Outgoing {
    message: Message,
    iov: [libc::iovec; 2],
}

/// Writes one message with one `writev` and one allocation (the hot path of every reply).
async fn write_message(fd: RawFd, message: Message) -> io::Result<()> {
    let total = message.len();
    let mut out = Box::new(Outgoing {
        message,
        iov: [libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        }; 2],
    });
    let Outgoing { message, iov } = &mut *out;
    let count = message.iovecs(iov);
    // Kept for a short write: the box goes to the operation (a 32-byte copy and a reference
    // count, no allocation).
    let again = Message::new(message.head(), message.data.clone());
    // The iovecs point into the box's own heap memory and the payload, neither of which
    // moves with the box, which the operation keeps until its completion.
    let entry = opcode::Writev::new(types::Fd(fd), iov.as_ptr(), count as u32).build();
    let n = check(submit(entry, Some(out)).await)?;
    if n == total {
        return Ok(());
    }
    finish_short_write(fd, std::iter::once(&again), n).await
}

/// One reply waiting to be written: a short header and an optional payload.
pub struct Message {
    head: [u8; MAX_HEAD],
    head_len: usize,
    data: Option<BufSlice>,
}

impl Message {
    pub fn new(head: &[u8], data: Option<BufSlice>) -> Message {
        assert!(head.len() <= MAX_HEAD, "a header of {} bytes", head.len());
        let mut m = Message {
            head: [0; MAX_HEAD],
            head_len: head.len(),
            data: data.filter(|d| !d.is_empty()),
        };
        m.head[..head.len()].copy_from_slice(head);
        m
    }

    fn len(&self) -> usize {
        self.head_len + self.data.as_ref().map_or(0, |d| d.len())
    }

    fn head(&self) -> &[u8] {
        &self.head[..self.head_len]
    }

    /// Fills `iov` with the header and the payload (if any); returns how many it used.
    fn iovecs(&mut self, iov: &mut [libc::iovec]) -> usize {
        iov[0] = libc::iovec {
            iov_base: self.head.as_mut_ptr() as *mut libc::c_void,
            iov_len: self.head_len,
        };
        let Some(d) = &self.data else { return 1 };
        iov[1] = libc::iovec {
            iov_base: d.as_mut_ptr() as *mut libc::c_void,
            iov_len: d.len(),
        };
        2
    }
}

/// Messages per `writev` (two iovecs each, well under the kernel's 1024).
const BATCH_MESSAGES: usize = 256;

/// Several messages and their iovecs, kept in one box until the kernel is done with them.
struct Batch {
    messages: Vec<Message>,
    iov: Vec<libc::iovec>,
}

/// Writes `messages` in order, as few `writev`s as the kernel allows (replies that finished
/// together go out together: one system call and one wakeup of the client instead of one
/// each).
pub async fn write_messages(fd: RawFd, mut messages: Vec<Message>) -> io::Result<()> {
    while !messages.is_empty() {
        let rest = messages.split_off(messages.len().min(BATCH_MESSAGES));
        if messages.len() == 1 {
            write_message(fd, messages.pop().expect("one message")).await?;
        } else {
            write_batch(fd, messages).await?;
        }
        messages = rest;
    }
    Ok(())
}

async fn write_batch(fd: RawFd, messages: Vec<Message>) -> io::Result<()> {
    let total: usize = messages.iter().map(Message::len).sum();
    let mut batch = Batch {
        iov: vec![
            libc::iovec {
                iov_base: std::ptr::null_mut(),
                iov_len: 0,
            };
            2 * messages.len()
        ],
        messages,
    };
    let mut used = 0;
    for m in batch.messages.iter_mut() {
        used += m.iovecs(&mut batch.iov[used..]);
    }
    // The iovecs point into the two vectors' heap memory and the payloads, which do not move
    // with the batch; the operation keeps one reference until its completion, we the other
    // for a short write.
    let entry = opcode::Writev::new(types::Fd(fd), batch.iov.as_ptr(), used as u32).build();
    let batch = std::rc::Rc::new(batch);
    let n = check(submit(entry, Some(Box::new(batch.clone()))).await)?;
    if n == total {
        return Ok(());
    }
    finish_short_write(fd, batch.messages.iter(), n).await
}

/// Accepts one connection on a listening socket (close-on-exec).
pub async fn accept(fd: RawFd) -> io::Result<RawFd> {
    let entry = opcode::Accept::new(types::Fd(fd), std::ptr::null_mut(), std::ptr::null_mut())
        .flags(libc::SOCK_CLOEXEC)
        .build();
    check(submit(entry, None).await).map(|fd| fd as RawFd)
}

/// Closes a descriptor (synchronously: close never blocks on a socket without SO_LINGER).
pub fn close(fd: RawFd) {
    // SAFETY: closes a descriptor this module's caller owns and no longer uses.
    unsafe {
        libc::close(fd);
    }
}

/// Shuts a socket down both ways, waking any operation blocked on it.
pub fn shutdown(fd: RawFd) {
    // SAFETY: shutdown takes no memory; an already-closed fd just returns an error.
    unsafe {
        libc::shutdown(fd, libc::SHUT_RDWR);
    }
}

/// A buffered reader for one connection: many small request headers arrive per `recv`, so
/// they are parsed from a buffer; large payloads bypass it and land straight in their own
/// (aligned) buffers with MSG_WAITALL, so the kernel fills them in one operation.
pub struct BufferedReader {
    fd: RawFd,
    buf: BufSlice,
    start: usize,
    end: usize,
}

/// Payloads at least this large skip the buffer.
const DIRECT_READ_MIN: usize = 16 << 10;

impl BufferedReader {
    pub fn new(fd: RawFd, capacity: usize) -> BufferedReader {
        BufferedReader {
            fd,
            buf: BufSlice::zeroed(capacity),
            start: 0,
            end: 0,
        }
    }

    /// Fills `dst` completely, from buffered bytes first.
    pub async fn read_exact(&mut self, dst: &BufSlice) -> io::Result<()> {
        let mut done = 0;
        let buffered = (self.end - self.start).min(dst.len());
        if buffered > 0 {
            // SAFETY: `dst` is the caller's buffer to fill, with no I/O in flight on it.
            (unsafe { dst.bytes_mut() })[..buffered]
                .copy_from_slice(&self.buf.bytes()[self.start..self.start + buffered]);
            self.start += buffered;
            done = buffered;
        }
        while done < dst.len() {
            let want = dst.len() - done;
            if want >= DIRECT_READ_MIN {
                let part = dst.slice(done, want);
                let entry = opcode::Recv::new(types::Fd(self.fd), part.as_mut_ptr(), want as u32)
                    .flags(libc::MSG_WAITALL)
                    .build();
                done += received(check(submit(entry, Some(Box::new(part))).await)?)?;
                continue;
            }
            self.fill().await?;
            let take = (self.end - self.start).min(want);
            // SAFETY: `dst` is the caller's buffer to fill; the ring's read into it completed.
            (unsafe { dst.bytes_mut() })[done..done + take]
                .copy_from_slice(&self.buf.bytes()[self.start..self.start + take]);
            self.start += take;
            done += take;
        }
        Ok(())
    }

    /// Reads whatever is available (at least one byte) into the free end of the buffer.
    async fn fill(&mut self) -> io::Result<()> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.end == self.buf.len() {
            let (s, e) = (self.start, self.end);
            // SAFETY: the reader's own buffer; no read into it is in flight between fills.
            (unsafe { self.buf.bytes_mut() }).copy_within(s..e, 0);
            self.end = e - s;
            self.start = 0;
        }
        let free = self.buf.slice(self.end, self.buf.len() - self.end);
        let entry =
            opcode::Recv::new(types::Fd(self.fd), free.as_mut_ptr(), free.len() as u32).build();
        let n = check(submit(entry, Some(Box::new(free))).await)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "peer closed the connection",
            ));
        }
        self.end += n;
        Ok(())
    }

    /// Reads and throws away `len` bytes.
    pub async fn discard(&mut self, mut len: u64) -> io::Result<()> {
        let scratch = BufSlice::zeroed((1usize << 20).min(len as usize).max(1));
        while len > 0 {
            let n = (len as usize).min(scratch.len());
            self.read_exact(&scratch.slice(0, n)).await?;
            len -= n as u64;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reactor::block_on;
    use std::io::Read;
    use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd};
    use std::os::unix::net::UnixStream;

    /// Goal: replies written together arrive whole and in order, also when the socket takes
    /// the batch only in part, and batches larger than one `writev` allows are split.
    #[test]
    fn messages_written_together_arrive_whole_and_in_order() {
        for count in [3, 700] {
            let (ours, theirs) = UnixStream::pair().unwrap();
            let messages: Vec<Message> = (0..count)
                .map(|i| {
                    let head = [i as u8; 16];
                    let data =
                        (i % 3 != 0).then(|| BufSlice::filled(4096 + i, |b| b.fill(!(i as u8))));
                    Message::new(&head, data)
                })
                .collect();
            let want: Vec<u8> = messages
                .iter()
                .flat_map(|m| {
                    let mut v = m.head().to_vec();
                    v.extend(m.data.as_ref().map(BufSlice::to_vec).unwrap_or_default());
                    v
                })
                .collect();
            let len = want.len();
            let reader = std::thread::spawn(move || {
                let mut theirs = theirs;
                let mut got = vec![0u8; len];
                theirs.read_exact(&mut got).unwrap();
                got
            });
            let fd = ours.into_raw_fd();
            block_on(async move { write_messages(fd, messages).await.unwrap() }).unwrap();
            assert!(
                reader.join().unwrap() == want,
                "{count} messages: bytes differ"
            );
            // SAFETY: we own the fd (taken from the stream above).
            drop(unsafe { UnixStream::from_raw_fd(fd) });
        }
    }

    /// Goal: a message the socket takes only in part (a small send buffer, a slow reader)
    /// still arrives whole and in order: header, then payload.
    #[test]
    fn a_message_written_in_parts_arrives_whole() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let small: libc::c_int = 4096;
        // SAFETY: setsockopt reads one c_int from the live variable.
        let rc = unsafe {
            libc::setsockopt(
                ours.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_SNDBUF,
                &small as *const libc::c_int as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0);
        let head: Vec<u8> = (0..28u8).collect();
        let payload = BufSlice::filled(256 << 10, |b| {
            b.iter_mut()
                .enumerate()
                .for_each(|(i, x)| *x = (i % 251) as u8)
        });
        let want: Vec<u8> = head.iter().copied().chain(payload.to_vec()).collect();
        let reader = std::thread::spawn(move || {
            let mut theirs = theirs;
            let mut got = Vec::new();
            let mut chunk = [0u8; 3000];
            while got.len() < (256 << 10) + 28 {
                std::thread::sleep(std::time::Duration::from_micros(200));
                let n = theirs.read(&mut chunk).unwrap();
                assert!(n > 0, "closed early");
                got.extend_from_slice(&chunk[..n]);
            }
            got
        });
        let fd = ours.into_raw_fd();
        let message = Message::new(&head, Some(payload));
        block_on(async move { write_messages(fd, vec![message]).await.unwrap() }).unwrap();
        assert!(reader.join().unwrap() == want, "bytes differ");
        // SAFETY: we own the fd (taken from the stream above).
        drop(unsafe { UnixStream::from_raw_fd(fd) });
    }
}
