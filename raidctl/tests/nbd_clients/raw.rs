//! A small NBD client of our own (fixed newstyle, GO, simple replies) for raw protocol tests.

#[allow(unused_imports)]
use crate::*;

pub(crate) const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
pub(crate) const IHAVEOPT: u64 = 0x4948_4156_454F_5054;
pub(crate) const OPT_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
pub(crate) const REQUEST_MAGIC: u32 = 0x2560_9513;
pub(crate) const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
pub(crate) const OPT_EXPORT_NAME: u32 = 1;
pub(crate) const OPT_ABORT: u32 = 2;
pub(crate) const OPT_LIST: u32 = 3;
pub(crate) const OPT_INFO: u32 = 6;
pub(crate) const OPT_GO: u32 = 7;
pub(crate) const OPT_STRUCTURED_REPLY: u32 = 8;
pub(crate) const OPT_LIST_META_CONTEXT: u32 = 9;
pub(crate) const OPT_SET_META_CONTEXT: u32 = 10;
pub(crate) const REP_ACK: u32 = 1;
pub(crate) const REP_SERVER: u32 = 2;
pub(crate) const REP_INFO: u32 = 3;
pub(crate) const REP_ERR_UNSUP: u32 = 0x8000_0001;
pub(crate) const REP_ERR_UNKNOWN: u32 = 0x8000_0006;
pub(crate) const CMD_READ: u16 = 0;
pub(crate) const CMD_WRITE: u16 = 1;
pub(crate) const CMD_DISC: u16 = 2;
pub(crate) const CMD_FLUSH: u16 = 3;
pub(crate) const CMD_TRIM: u16 = 4;
pub(crate) const CMD_BLOCK_STATUS: u16 = 7;
pub(crate) const EINVAL: u32 = 22;
pub(crate) const ENOSPC: u32 = 28;

pub(crate) fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes(b[..4].try_into().expect("4 bytes"))
}
pub(crate) fn be64(b: &[u8]) -> u64 {
    u64::from_be_bytes(b[..8].try_into().expect("8 bytes"))
}

pub(crate) fn option_bytes(option: u32, data: &[u8]) -> Vec<u8> {
    let mut v = IHAVEOPT.to_be_bytes().to_vec();
    v.extend_from_slice(&option.to_be_bytes());
    v.extend_from_slice(&(data.len() as u32).to_be_bytes());
    v.extend_from_slice(data);
    v
}

/// INFO/GO data: u32 namelen, name, u16 count, count x u16.
pub(crate) fn go_data(name: &[u8], infos: &[u16]) -> Vec<u8> {
    let mut v = (name.len() as u32).to_be_bytes().to_vec();
    v.extend_from_slice(name);
    v.extend_from_slice(&(infos.len() as u16).to_be_bytes());
    for i in infos {
        v.extend_from_slice(&i.to_be_bytes());
    }
    v
}

/// META_CONTEXT data: u32 namelen, name, u32 count, count x (u32 len, query).
pub(crate) fn meta_data(name: &[u8], queries: &[&[u8]]) -> Vec<u8> {
    let mut v = (name.len() as u32).to_be_bytes().to_vec();
    v.extend_from_slice(name);
    v.extend_from_slice(&(queries.len() as u32).to_be_bytes());
    for q in queries {
        v.extend_from_slice(&(q.len() as u32).to_be_bytes());
        v.extend_from_slice(q);
    }
    v
}

pub(crate) fn request_bytes(
    flags: u16,
    kind: u16,
    cookie: u64,
    offset: u64,
    length: u32,
) -> Vec<u8> {
    let mut v = REQUEST_MAGIC.to_be_bytes().to_vec();
    v.extend_from_slice(&flags.to_be_bytes());
    v.extend_from_slice(&kind.to_be_bytes());
    v.extend_from_slice(&cookie.to_be_bytes());
    v.extend_from_slice(&offset.to_be_bytes());
    v.extend_from_slice(&length.to_be_bytes());
    v
}

pub(crate) struct OptReply {
    pub(crate) option: u32,
    pub(crate) kind: u32,
    pub(crate) data: Vec<u8>,
}

/// A simple reply: its error (0 for success) and the data of a successful READ.
pub(crate) type Reply = io::Result<(u32, Vec<u8>)>;

pub(crate) struct RawClient {
    pub(crate) s: UnixStream,
    pub(crate) size: u64,
    pub(crate) cookie: u64,
}

impl RawClient {
    pub(crate) fn open(sock: &Path, timeout: Duration) -> io::Result<UnixStream> {
        let s = UnixStream::connect(sock)?;
        s.set_read_timeout(Some(timeout))?;
        s.set_write_timeout(Some(timeout))?;
        Ok(s)
    }

    /// Reads the greeting and sends the client flags (FIXED_NEWSTYLE | NO_ZEROES).
    pub(crate) fn greet(s: &mut UnixStream) -> io::Result<()> {
        let mut g = [0u8; 18];
        s.read_exact(&mut g)?;
        if be64(&g) != NBDMAGIC || be64(&g[8..]) != IHAVEOPT {
            return Err(io::Error::other(format!("bad greeting {g:02x?}")));
        }
        s.write_all(&3u32.to_be_bytes())
    }

    pub(crate) fn read_opt_reply(s: &mut UnixStream) -> io::Result<OptReply> {
        let mut h = [0u8; 20];
        s.read_exact(&mut h)?;
        if be64(&h) != OPT_REPLY_MAGIC {
            return Err(io::Error::other(format!("bad option reply magic {h:02x?}")));
        }
        let len = be32(&h[16..]) as usize;
        if len > 1 << 20 {
            return Err(io::Error::other(format!("option reply of {len} bytes")));
        }
        let mut data = vec![0u8; len];
        s.read_exact(&mut data)?;
        Ok(OptReply {
            option: be32(&h[8..]),
            kind: be32(&h[12..]),
            data,
        })
    }

    /// GO with `name`, reading replies until ACK. Returns the export size.
    pub(crate) fn go(s: &mut UnixStream, name: &[u8]) -> io::Result<u64> {
        s.write_all(&option_bytes(OPT_GO, &go_data(name, &[])))?;
        let mut size = None;
        loop {
            let r = Self::read_opt_reply(s)?;
            match r.kind {
                REP_INFO if r.data.len() >= 12 && r.data[..2] == [0, 0] => {
                    size = Some(be64(&r.data[2..]));
                }
                REP_INFO => {}
                REP_ACK => break,
                k => return Err(io::Error::other(format!("GO answered with {k:#x}"))),
            }
        }
        size.ok_or_else(|| io::Error::other("GO succeeded without INFO_EXPORT"))
    }

    pub(crate) fn connect(sock: &Path, timeout: Duration) -> io::Result<RawClient> {
        let mut s = Self::open(sock, timeout)?;
        Self::greet(&mut s)?;
        let size = Self::go(&mut s, b"")?;
        Ok(RawClient { s, size, cookie: 1 })
    }

    /// Sends one request (and its payload); returns its cookie.
    pub(crate) fn send(
        &mut self,
        flags: u16,
        kind: u16,
        offset: u64,
        length: u32,
        data: &[u8],
    ) -> io::Result<u64> {
        self.cookie += 1;
        let mut msg = request_bytes(flags, kind, self.cookie, offset, length);
        msg.extend_from_slice(data);
        self.s.write_all(&msg)?;
        Ok(self.cookie)
    }

    /// Reads one simple reply; `data_len` bytes follow a successful READ.
    pub(crate) fn reply(&mut self, cookie: u64, data_len: usize) -> Reply {
        let mut h = [0u8; 16];
        self.s.read_exact(&mut h)?;
        if be32(&h) != SIMPLE_REPLY_MAGIC {
            return Err(io::Error::other(format!("bad reply magic {h:02x?}")));
        }
        let (err, got) = (be32(&h[4..]), be64(&h[8..]));
        if got != cookie {
            return Err(io::Error::other(format!(
                "reply cookie {got}, expected {cookie}"
            )));
        }
        let mut data = Vec::new();
        if err == 0 && data_len > 0 {
            data = vec![0u8; data_len];
            self.s.read_exact(&mut data)?;
        }
        Ok((err, data))
    }

    /// Sends one request and reads its reply.
    pub(crate) fn call(
        &mut self,
        flags: u16,
        kind: u16,
        offset: u64,
        length: u32,
        data: &[u8],
    ) -> Reply {
        let cookie = self.send(flags, kind, offset, length, data)?;
        let data_len = if kind == CMD_READ { length as usize } else { 0 };
        self.reply(cookie, data_len)
    }

    pub(crate) fn write(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        match self.call(0, CMD_WRITE, offset, data.len() as u32, data)? {
            (0, _) => Ok(()),
            (e, _) => Err(io::Error::other(format!(
                "WRITE {offset}+{} failed: errno {e}",
                data.len()
            ))),
        }
    }

    pub(crate) fn read(&mut self, offset: u64, len: u32) -> io::Result<Vec<u8>> {
        match self.call(0, CMD_READ, offset, len, &[])? {
            (0, d) => Ok(d),
            (e, _) => Err(io::Error::other(format!(
                "READ {offset}+{len} failed: errno {e}"
            ))),
        }
    }

    /// Reads until the server closes (Ok) or the timeout (Err).
    pub(crate) fn expect_closed(&mut self) -> io::Result<()> {
        let mut buf = [0u8; 4096];
        loop {
            match self.s.read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    }
}

/// Reads and discards until EOF or an error; true if it ended by a timeout.
pub(crate) fn drain(s: &mut UnixStream) -> bool {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return false,
            Ok(_) => {}
            Err(e) => {
                return matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                )
            }
        }
    }
}

#[test]
fn raw_protocol_errors_keep_the_stream_in_sync() {
    let fx = assembled("raw", "0", 4);
    let sock = fx.sock();
    let size = fx.size();
    let t = Duration::from_secs(30);

    // Option haggling: unknown option -> ERR_UNSUP and the haggle goes on; LIST; INFO for an
    // unknown name -> ERR_UNKNOWN; then GO.
    let mut s = RawClient::open(&sock, t).unwrap();
    RawClient::greet(&mut s).unwrap();
    s.write_all(&option_bytes(99, b"whatever")).unwrap();
    let r = RawClient::read_opt_reply(&mut s).unwrap();
    assert_eq!((r.option, r.kind), (99, REP_ERR_UNSUP), "unknown option");
    s.write_all(&option_bytes(OPT_LIST, &[])).unwrap();
    let r = RawClient::read_opt_reply(&mut s).unwrap();
    assert_eq!(r.kind, REP_SERVER, "LIST");
    assert!(r.data.len() >= 4 + 3 && &r.data[4..4 + be32(&r.data) as usize] == b"raw");
    assert_eq!(RawClient::read_opt_reply(&mut s).unwrap().kind, REP_ACK);
    s.write_all(&option_bytes(OPT_INFO, &go_data(b"nosuch", &[])))
        .unwrap();
    assert_eq!(
        RawClient::read_opt_reply(&mut s).unwrap().kind,
        REP_ERR_UNKNOWN
    );
    assert_eq!(RawClient::go(&mut s, b"raw").unwrap(), size);
    let mut c = RawClient { s, size, cookie: 1 };

    let pattern: Vec<u8> = (0..65536u32).map(|i| (i * 7 + 3) as u8).collect();
    c.write(MIB, &pattern).unwrap();
    let check = |c: &mut RawClient, after: &str| {
        let got = c
            .read(MIB, 65536)
            .unwrap_or_else(|e| panic!("after {after}: {e}"));
        assert!(got == pattern, "after {after}: read-back differs");
    };
    // Unknown command: EINVAL, connection goes on.
    assert_eq!(
        c.call(0, 42, 0, 512, &[]).unwrap().0,
        EINVAL,
        "unknown command"
    );
    check(&mut c, "an unknown command");
    // Rejected WRITEs: the payload must be drained to stay in sync.
    let junk = vec![0xeeu8; 65536];
    assert_eq!(
        c.call(0, CMD_WRITE, size - 4096, 65536, &junk).unwrap().0,
        ENOSPC
    );
    check(&mut c, "a WRITE past the end with its payload");
    assert_eq!(
        c.call(0x100, CMD_WRITE, MIB, 4096, &junk[..4096])
            .unwrap()
            .0,
        EINVAL
    );
    check(&mut c, "a WRITE with an unknown flag");
    assert_eq!(
        c.call(0, CMD_WRITE, MIB + 1, 4096, &junk[..4096])
            .unwrap()
            .0,
        EINVAL
    );
    check(&mut c, "a misaligned WRITE");
    let big = vec![0xddu8; (MAX_PAYLOAD + 512) as usize];
    assert_eq!(
        c.call(0, CMD_WRITE, MIB, big.len() as u32, &big).unwrap().0,
        EINVAL,
        "a WRITE above the maximum payload"
    );
    check(&mut c, "a WRITE above the maximum payload");
    drop(big);
    assert_eq!(
        c.call(0, CMD_READ, 0, (MAX_PAYLOAD + 512) as u32, &[])
            .unwrap()
            .0,
        EINVAL
    );
    assert_eq!(
        c.call(0, CMD_FLUSH, 0, 512, &[]).unwrap().0,
        EINVAL,
        "FLUSH with a length"
    );
    assert_eq!(
        c.call(0, CMD_BLOCK_STATUS, 0, 4096, &[]).unwrap().0,
        EINVAL,
        "BLOCK_STATUS without a context"
    );
    assert_eq!(
        c.call(0, CMD_TRIM, size, 4096, &[]).unwrap().0,
        EINVAL,
        "TRIM past the end"
    );
    check(&mut c, "bad FLUSH, READ, TRIM and BLOCK_STATUS");
    // Pipelined: several requests in one go, replies matched by cookie in any order.
    let mut cookies = Vec::new();
    for i in 0..16u64 {
        cookies.push(c.send(0, CMD_READ, MIB + i * 4096, 4096, &[]).unwrap());
    }
    let mut seen = std::collections::HashSet::new();
    for _ in 0..16 {
        let mut h = [0u8; 16];
        c.s.read_exact(&mut h).unwrap();
        assert_eq!((be32(&h), be32(&h[4..])), (SIMPLE_REPLY_MAGIC, 0));
        let cookie = be64(&h[8..]);
        let i = cookies
            .iter()
            .position(|&k| k == cookie)
            .expect("a cookie we sent");
        let mut d = vec![0u8; 4096];
        c.s.read_exact(&mut d).unwrap();
        assert!(
            d[..] == pattern[i * 4096..(i + 1) * 4096],
            "pipelined read {i}"
        );
        assert!(seen.insert(cookie), "cookie {cookie} answered twice");
    }
    // DISC: the server closes.
    c.send(0, CMD_DISC, 0, 0, &[]).unwrap();
    c.expect_closed().expect("the server closes after DISC");

    // Bad request magic: the stream cannot be resynchronised, the server closes.
    let mut c = RawClient::connect(&sock, t).unwrap();
    c.s.write_all(&[0x55u8; 28]).unwrap();
    c.expect_closed()
        .expect("the server closes after a bad request magic");

    // A WRITE whose payload is too large to drain (> 128 MiB): closed, not read forever.
    let mut c = RawClient::connect(&sock, t).unwrap();
    c.send(0, CMD_WRITE, 0, u32::MAX, &[0u8; 4096]).unwrap();
    let _ = c.reply(c.cookie, 0); // an EINVAL reply may come first
    c.expect_closed()
        .expect("the server closes after an undrainable WRITE");

    // An option longer than the server will read: closed.
    let mut s = RawClient::open(&sock, t).unwrap();
    RawClient::greet(&mut s).unwrap();
    let mut hdr = IHAVEOPT.to_be_bytes().to_vec();
    hdr.extend_from_slice(&OPT_GO.to_be_bytes());
    hdr.extend_from_slice(&u32::MAX.to_be_bytes());
    s.write_all(&hdr).unwrap();
    let mut c = RawClient { s, size, cookie: 0 };
    c.expect_closed()
        .expect("the server closes after an oversized option");

    // Unknown client flags: closed.
    let mut s = RawClient::open(&sock, t).unwrap();
    let mut g = [0u8; 18];
    s.read_exact(&mut g).unwrap();
    s.write_all(&0x8000_0003u32.to_be_bytes()).unwrap();
    let mut c = RawClient { s, size, cookie: 0 };
    c.expect_closed()
        .expect("the server closes after unknown client flags");

    // EXPORT_NAME (no option reply header): size, flags, then transmission.
    let mut s = RawClient::open(&sock, t).unwrap();
    s.read_exact(&mut g).unwrap();
    s.write_all(&3u32.to_be_bytes()).unwrap();
    s.write_all(&option_bytes(OPT_EXPORT_NAME, b"raw")).unwrap();
    let mut e = [0u8; 10];
    s.read_exact(&mut e).unwrap();
    assert_eq!(be64(&e), size, "EXPORT_NAME size");
    let mut c = RawClient { s, size, cookie: 0 };
    check(&mut c, "EXPORT_NAME");
    drop(c);

    assert!(
        process_alive(fx.pid()),
        "the daemon died:\n{}",
        fx.log_tail()
    );
    wait_for_no_connections(&fx);
}

// ---------------------------------------------------------------------------------------------
