//! The kernel nbd driver's generic-netlink interface (`linux/nbd-netlink.h`).
//!
//! `CONNECT` hands the kernel sockets whose handshake is already done (for us: one end of a
//! socketpair the daemon serves in the transmission phase) plus the size, block size, flags and
//! timeout; the kernel picks a free /dev/nbdN when no index is given and answers with it.
//! `DISCONNECT` makes the kernel flush, send NBD_CMD_DISC on every socket and drop them.
//!
//! Messages are built and parsed by hand: a netlink header, a genetlink header and a flat list
//! of attributes (one level of nesting for the sockets) is all this needs.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// The attributes of one reply, as (type, payload).
type Attributes = Vec<(u16, Vec<u8>)>;

const NETLINK_GENERIC: libc::c_int = 16;
const GENL_ID_CTRL: u16 = 0x10;
const CTRL_CMD_GETFAMILY: u8 = 3;
const CTRL_ATTR_FAMILY_ID: u16 = 1;
const CTRL_ATTR_FAMILY_NAME: u16 = 2;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const NLA_F_NESTED: u16 = 1 << 15;
const NLA_TYPE_MASK: u16 = !(NLA_F_NESTED | (1 << 14));

const NBD_FAMILY: &str = "nbd";
const NBD_VERSION: u8 = 1;
const NBD_CMD_CONNECT: u8 = 1;
const NBD_CMD_DISCONNECT: u8 = 2;
const NBD_ATTR_INDEX: u16 = 1;
const NBD_ATTR_SIZE_BYTES: u16 = 2;
const NBD_ATTR_BLOCK_SIZE_BYTES: u16 = 3;
const NBD_ATTR_TIMEOUT: u16 = 4;
const NBD_ATTR_SERVER_FLAGS: u16 = 5;
const NBD_ATTR_SOCKETS: u16 = 7;
const NBD_ATTR_BACKEND_IDENTIFIER: u16 = 10;
const NBD_SOCK_ITEM: u16 = 1;
const NBD_SOCK_FD: u16 = 1;

/// What `connect` asks of the kernel.
#[derive(Clone, Debug)]
pub struct ConnectRequest {
    /// /dev/nbdN to use; None lets the kernel pick a free one.
    pub index: Option<u32>,
    pub size_bytes: u64,
    pub block_size: u64,
    /// Seconds before the kernel gives up on a request (0: never).
    pub timeout_s: u64,
    /// NBD transmission flags, as the handshake would have sent them.
    pub server_flags: u64,
    /// Connected sockets, already in the transmission phase. The kernel takes its own
    /// reference; the caller may close them after `connect` returns.
    pub sockets: Vec<RawFd>,
    /// Shown in /sys/block/nbdN/backend (kernels from 5.19; older ones refuse it, and we retry
    /// without).
    pub backend: Option<String>,
}

/// Connects the sockets to a /dev/nbdN and returns N.
pub fn connect(req: &ConnectRequest) -> io::Result<u32> {
    let sock = GenlSocket::open()?;
    let family = sock.resolve(NBD_FAMILY)?;
    let attempt = |with_backend: bool| {
        let mut msg = GenlMessage::new(family, NBD_CMD_CONNECT, NBD_VERSION);
        if let Some(i) = req.index {
            msg.put_u32(NBD_ATTR_INDEX, i);
        }
        msg.put_u64(NBD_ATTR_SIZE_BYTES, req.size_bytes);
        msg.put_u64(NBD_ATTR_BLOCK_SIZE_BYTES, req.block_size);
        msg.put_u64(NBD_ATTR_TIMEOUT, req.timeout_s);
        msg.put_u64(NBD_ATTR_SERVER_FLAGS, req.server_flags);
        let sockets = msg.begin_nested(NBD_ATTR_SOCKETS);
        for &fd in &req.sockets {
            let item = msg.begin_nested(NBD_SOCK_ITEM);
            msg.put_u32(NBD_SOCK_FD, fd as u32);
            msg.end_nested(item);
        }
        msg.end_nested(sockets);
        if let (true, Some(b)) = (with_backend, &req.backend) {
            msg.put_string(NBD_ATTR_BACKEND_IDENTIFIER, b);
        }
        sock.request(msg)
    };
    let replies = match attempt(true) {
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) && req.backend.is_some() => {
            attempt(false)?
        }
        other => other?,
    };
    replies
        .iter()
        .find_map(|attrs| find_attr(attrs, NBD_ATTR_INDEX).and_then(read_u32))
        .or(req.index)
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                "the kernel connected an nbd device but did not say which",
            )
        })
}

/// Disconnects /dev/nbdN.
pub fn disconnect(index: u32) -> io::Result<()> {
    let sock = GenlSocket::open()?;
    let family = sock.resolve(NBD_FAMILY)?;
    let mut msg = GenlMessage::new(family, NBD_CMD_DISCONNECT, NBD_VERSION);
    msg.put_u32(NBD_ATTR_INDEX, index);
    sock.request(msg).map(|_| ())
}

/// Whether the kernel's nbd netlink family is registered (the nbd module is loaded).
pub fn family_available() -> io::Result<()> {
    GenlSocket::open()?.resolve(NBD_FAMILY).map(|_| ())
}

/// A generic-netlink message under construction.
struct GenlMessage {
    bytes: Vec<u8>,
}

impl GenlMessage {
    fn new(family: u16, cmd: u8, version: u8) -> GenlMessage {
        let mut bytes = vec![0u8; 16];
        bytes[4..6].copy_from_slice(&family.to_ne_bytes());
        bytes[6..8].copy_from_slice(&(NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
        bytes.extend_from_slice(&[cmd, version, 0, 0]);
        GenlMessage { bytes }
    }

    fn put(&mut self, kind: u16, payload: &[u8]) {
        let len = 4 + payload.len();
        self.bytes.extend_from_slice(&(len as u16).to_ne_bytes());
        self.bytes.extend_from_slice(&kind.to_ne_bytes());
        self.bytes.extend_from_slice(payload);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.bytes.len().is_multiple_of(4) {
            self.bytes.push(0);
        }
    }

    fn put_u32(&mut self, kind: u16, v: u32) {
        self.put(kind, &v.to_ne_bytes());
    }

    fn put_u64(&mut self, kind: u16, v: u64) {
        self.put(kind, &v.to_ne_bytes());
    }

    fn put_string(&mut self, kind: u16, s: &str) {
        let mut v = s.as_bytes().to_vec();
        v.push(0);
        self.put(kind, &v);
    }

    /// Starts a nested attribute; returns where its header is, for `end_nested`.
    fn begin_nested(&mut self, kind: u16) -> usize {
        let at = self.bytes.len();
        self.bytes.extend_from_slice(&[0, 0]);
        self.bytes
            .extend_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
        at
    }

    fn end_nested(&mut self, at: usize) {
        let len = (self.bytes.len() - at) as u16;
        self.bytes[at..at + 2].copy_from_slice(&len.to_ne_bytes());
    }

    fn finish(mut self, seq: u32) -> Vec<u8> {
        let len = self.bytes.len() as u32;
        self.bytes[0..4].copy_from_slice(&len.to_ne_bytes());
        self.bytes[8..12].copy_from_slice(&seq.to_ne_bytes());
        self.bytes
    }
}

/// The attributes of a genetlink message body, as (type, payload) pairs.
fn parse_attrs(mut body: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    while body.len() >= 4 {
        let len = u16::from_ne_bytes([body[0], body[1]]) as usize;
        let kind = u16::from_ne_bytes([body[2], body[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > body.len() {
            break;
        }
        out.push((kind, &body[4..len]));
        let next = (len + 3) & !3;
        body = &body[next.min(body.len())..];
    }
    out
}

fn find_attr(attrs: &[(u16, Vec<u8>)], kind: u16) -> Option<&[u8]> {
    attrs
        .iter()
        .find(|(k, _)| *k == kind)
        .map(|(_, v)| v.as_slice())
}

fn read_u32(v: &[u8]) -> Option<u32> {
    Some(u32::from_ne_bytes(v.get(..4)?.try_into().ok()?))
}

fn read_u16(v: &[u8]) -> Option<u16> {
    Some(u16::from_ne_bytes(v.get(..2)?.try_into().ok()?))
}

/// A bound NETLINK_GENERIC socket.
struct GenlSocket {
    fd: OwnedFd,
    seq: std::cell::Cell<u32>,
}

impl GenlSocket {
    fn open() -> io::Result<GenlSocket> {
        // SAFETY: plain socket(2); the result is checked before it is wrapped.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                NETLINK_GENERIC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a new socket nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: sockaddr_nl is plain data; all-zero is "let the kernel pick our port".
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as u16;
        // SAFETY: addr lives across the call and its size is passed with it.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                &addr as *const _ as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(GenlSocket {
            fd,
            seq: std::cell::Cell::new(1),
        })
    }

    /// The id of a genetlink family; ENOENT when it is not registered.
    fn resolve(&self, name: &str) -> io::Result<u16> {
        let mut msg = GenlMessage::new(GENL_ID_CTRL, CTRL_CMD_GETFAMILY, 1);
        msg.put_string(CTRL_ATTR_FAMILY_NAME, name);
        let replies = self.request(msg)?;
        replies
            .iter()
            .find_map(|attrs| find_attr(attrs, CTRL_ATTR_FAMILY_ID).and_then(read_u16))
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("the netlink controller did not give the id of family {name}"),
                )
            })
    }

    /// Sends one request and collects the attribute lists of its replies until the ACK.
    /// A negative ACK becomes the matching OS error.
    fn request(&self, msg: GenlMessage) -> io::Result<Vec<Attributes>> {
        let seq = self.seq.get();
        self.seq.set(seq + 1);
        let bytes = msg.finish(seq);
        // SAFETY: bytes is a live buffer of the given length; the kernel is the destination
        // (the socket is bound; send goes to pid 0 by default).
        let sent =
            unsafe { libc::send(self.fd.as_raw_fd(), bytes.as_ptr().cast(), bytes.len(), 0) };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut replies = Vec::new();
        let mut buf = vec![0u8; 64 << 10];
        loop {
            // SAFETY: buf is ours and writable for its whole length.
            let n =
                unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            let mut data = &buf[..n as usize];
            while data.len() >= 16 {
                let len = u32::from_ne_bytes(data[0..4].try_into().expect("4 bytes")) as usize;
                let kind = u16::from_ne_bytes([data[4], data[5]]);
                let rseq = u32::from_ne_bytes(data[8..12].try_into().expect("4 bytes"));
                if len < 16 || len > data.len() {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "truncated netlink reply",
                    ));
                }
                let body = &data[16..len];
                data = &data[((len + 3) & !3).min(data.len())..];
                if rseq != seq {
                    continue;
                }
                if kind == NLMSG_ERROR {
                    let err = body
                        .get(..4)
                        .map(|b| i32::from_ne_bytes(b.try_into().expect("4 bytes")))
                        .unwrap_or(-libc::EIO);
                    if err == 0 {
                        return Ok(replies);
                    }
                    return Err(io::Error::from_raw_os_error(-err));
                }
                if body.len() >= 4 {
                    replies.push(
                        parse_attrs(&body[4..])
                            .into_iter()
                            .map(|(k, v)| (k, v.to_vec()))
                            .collect(),
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_laid_out_as_the_kernel_reads_them() {
        let mut m = GenlMessage::new(0x1c, NBD_CMD_CONNECT, NBD_VERSION);
        m.put_u64(NBD_ATTR_SIZE_BYTES, 1 << 30);
        let nest = m.begin_nested(NBD_ATTR_SOCKETS);
        let item = m.begin_nested(NBD_SOCK_ITEM);
        m.put_u32(NBD_SOCK_FD, 7);
        m.end_nested(item);
        m.end_nested(nest);
        m.put_string(NBD_ATTR_BACKEND_IDENTIFIER, "ab");
        let bytes = m.finish(9);
        assert_eq!(bytes.len() % 4, 0);
        assert_eq!(
            u32::from_ne_bytes(bytes[0..4].try_into().unwrap()) as usize,
            bytes.len()
        );
        assert_eq!(u16::from_ne_bytes([bytes[4], bytes[5]]), 0x1c);
        assert_eq!(u32::from_ne_bytes(bytes[8..12].try_into().unwrap()), 9);
        assert_eq!(&bytes[16..18], &[NBD_CMD_CONNECT, NBD_VERSION]);
        let attrs = parse_attrs(&bytes[20..]);
        assert_eq!(attrs.len(), 3);
        assert_eq!(attrs[0].0, NBD_ATTR_SIZE_BYTES);
        assert_eq!(attrs[0].1, (1u64 << 30).to_ne_bytes());
        // The nest: header 4 + item (header 4 + fd attr 8) = 16 bytes.
        assert_eq!(attrs[1].0, NBD_ATTR_SOCKETS);
        assert_eq!(attrs[1].1.len(), 12);
        let items = parse_attrs(attrs[1].1);
        assert_eq!(items.len(), 1);
        assert_eq!(items[0].0, NBD_SOCK_ITEM);
        let fds = parse_attrs(items[0].1);
        assert_eq!(fds, vec![(NBD_SOCK_FD, &7u32.to_ne_bytes()[..])]);
        assert_eq!(attrs[2], (NBD_ATTR_BACKEND_IDENTIFIER, &b"ab\0"[..]));
    }

    #[test]
    fn truncated_or_garbage_attributes_end_the_parse() {
        assert!(parse_attrs(&[8, 0, 1, 0, 1, 2]).is_empty());
        assert!(parse_attrs(&[2, 0, 1, 0]).is_empty());
        let ok = parse_attrs(&[6, 0, 1, 0, 0xab, 0xcd, 0, 0, 99]);
        assert_eq!(ok, vec![(1, &[0xab, 0xcd][..])]);
    }

    #[test]
    fn the_generic_netlink_controller_answers_on_this_kernel() {
        // The controller family is always there; nbd usually is not on CI machines. (Names
        // are at most 15 bytes: a longer one is EINVAL, not ENOENT.)
        let sock = GenlSocket::open().expect("netlink socket");
        assert_eq!(
            sock.resolve("nlctrl").expect("nlctrl resolves"),
            GENL_ID_CTRL
        );
        let missing = sock.resolve("raidctl-nofam").unwrap_err();
        assert_eq!(missing.raw_os_error(), Some(libc::ENOENT));
    }
}
