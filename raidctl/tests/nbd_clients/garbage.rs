//! Robustness: thousands of garbage connections next to a well-behaved client.

#[allow(unused_imports)]
use crate::*;

/// The region the well-behaved client owns; garbage only ever touches the upper half.
pub(crate) const GOOD_REGION: u64 = MIB;

/// Writes and read-verifies 1 MiB at offset 0 in a loop until told to stop.
pub(crate) fn good_client(sock: PathBuf, stop: Arc<AtomicBool>) -> Result<u64, String> {
    let mut rng = Rng::new(0x600d);
    let mut iterations = 0u64;
    let mut client = None;
    // At least a few rounds, then until the garbage is done.
    while iterations < 5 || !stop.load(Ordering::Relaxed) {
        if iterations.is_multiple_of(8) {
            // A fresh connection now and then: handshakes must keep working too.
            client = None;
        }
        let c = match client.as_mut() {
            Some(c) => c,
            None => client.insert(
                RawClient::connect(&sock, Duration::from_secs(60))
                    .map_err(|e| format!("iteration {iterations}: connect: {e}"))?,
            ),
        };
        let data = rng.bytes(GOOD_REGION as usize);
        let fail = |what: &str, e: io::Error| format!("iteration {iterations}: {what}: {e}");
        // Write as 4 pipelined 256 KiB requests, then read back in 2 halves.
        let mut cookies = Vec::new();
        for i in 0..4usize {
            let part = &data[i * 256 * 1024..(i + 1) * 256 * 1024];
            cookies.push(
                c.send(
                    0,
                    CMD_WRITE,
                    (i * 256 * 1024) as u64,
                    part.len() as u32,
                    part,
                )
                .map_err(|e| fail("write", e))?,
            );
        }
        for _ in 0..4 {
            let mut h = [0u8; 16];
            c.s.read_exact(&mut h).map_err(|e| fail("write reply", e))?;
            if be32(&h) != SIMPLE_REPLY_MAGIC
                || be32(&h[4..]) != 0
                || !cookies.contains(&be64(&h[8..]))
            {
                return Err(format!("iteration {iterations}: bad write reply {h:02x?}"));
            }
        }
        if iterations.is_multiple_of(3) {
            match c
                .call(0, CMD_FLUSH, 0, 0, &[])
                .map_err(|e| fail("flush", e))?
            {
                (0, _) => {}
                (e, _) => return Err(format!("iteration {iterations}: flush errno {e}")),
            }
        }
        let half = (GOOD_REGION / 2) as u32;
        let mut got = c.read(0, half).map_err(|e| fail("read", e))?;
        got.extend(c.read(half as u64, half).map_err(|e| fail("read", e))?);
        if got != data {
            let first = (0..data.len()).find(|&i| got[i] != data[i]).unwrap_or(0);
            return Err(format!(
                "iteration {iterations}: read-back differs from offset {first} on"
            ));
        }
        iterations += 1;
    }
    Ok(iterations)
}

#[derive(Default)]
pub(crate) struct GarbageStats {
    pub(crate) connections: AtomicU64,
    pub(crate) connect_errors: AtomicU64,
    pub(crate) handshakes: AtomicU64,
    pub(crate) drain_timeouts: AtomicU64,
}

/// An offset for a garbage request: out of range, or in the upper half of the export (never
/// in the well-behaved client's region).
pub(crate) fn garbage_offset(rng: &mut Rng, size: u64) -> u64 {
    match rng.below(7) {
        0 => size / 2 + rng.below(size / 2) / 512 * 512,
        1 => size / 2 + rng.below(size / 2),
        2 => size - rng.below(8) * 512,
        3 => size + rng.below(1 << 20),
        4 => u64::MAX - rng.below(1 << 16),
        5 => rng.next_u64() | (1 << 63),
        _ => size / 2 + rng.below(64) * 512,
    }
}

pub(crate) fn garbage_length(rng: &mut Rng) -> u32 {
    match rng.below(12) {
        0 => 0,
        1 => 1,
        2 => 511,
        3 => 512,
        4 => 4096,
        5 => 65536,
        6 => 1 << 20,
        7 => MAX_PAYLOAD as u32,
        8 => MAX_PAYLOAD as u32 + 512,
        9 => (128 << 20) + 1,
        10 => u32::MAX,
        _ => rng.u32() >> rng.below(32),
    }
}

/// A random transmission-phase message (sent after a successful handshake).
pub(crate) fn garbage_requests(rng: &mut Rng, size: u64, out: &mut Vec<u8>) {
    for _ in 0..rng.range(1, 12) {
        match rng.below(10) {
            0 => {
                // Bad magic: the server must hang up.
                out.extend(rng.bytes(28));
                return;
            }
            1 => {
                // A WRITE announcing a large payload, then the client goes away.
                let len = rng.pick(&[MAX_PAYLOAD as u32, 1 << 24, u32::MAX, (64 << 20) + 512]);
                out.extend(request_bytes(
                    0,
                    CMD_WRITE,
                    rng.next_u64(),
                    garbage_offset(rng, size),
                    len,
                ));
                let n = rng.below(8192) as usize;
                out.extend(rng.bytes(n));
                return;
            }
            2 => {
                // Unknown command, random flags.
                let kind = rng.range(8, 0xffff) as u16;
                out.extend(request_bytes(
                    rng.u32() as u16,
                    kind,
                    rng.next_u64(),
                    rng.next_u64(),
                    rng.u32(),
                ));
            }
            3 => {
                // A small WRITE with (maybe truncated) payload.
                let len = rng.pick(&[0u32, 1, 512, 1024, 4096, 65536]);
                out.extend(request_bytes(
                    {
                        let r = rng.u32() as u16;
                        rng.pick(&[0, 1, 0x100, r])
                    },
                    CMD_WRITE,
                    rng.next_u64(),
                    garbage_offset(rng, size),
                    len,
                ));
                let sent = if rng.chance(1, 4) {
                    rng.below(len as u64 + 1)
                } else {
                    len as u64
                };
                out.extend(rng.bytes(sent as usize));
                if sent < len as u64 {
                    return;
                }
            }
            4 => {
                // DISC, maybe with junk after it.
                out.extend(request_bytes(
                    rng.u32() as u16,
                    CMD_DISC,
                    rng.next_u64(),
                    rng.next_u64(),
                    rng.u32(),
                ));
                let n = rng.below(64) as usize;
                out.extend(rng.bytes(n));
                return;
            }
            5 => {
                // A truncated header.
                let mut r = request_bytes(0, CMD_READ, 1, garbage_offset(rng, size), 4096);
                r.truncate(rng.below(28) as usize);
                out.extend(r);
                return;
            }
            _ => {
                // Known non-write commands with random flags, offsets and lengths.
                let kind = rng.pick(&[CMD_READ, CMD_FLUSH, CMD_TRIM, 5, 6, CMD_BLOCK_STATUS]);
                let flags = if rng.chance(1, 2) {
                    0
                } else {
                    rng.u32() as u16
                };
                out.extend(request_bytes(
                    flags,
                    kind,
                    rng.next_u64(),
                    garbage_offset(rng, size),
                    garbage_length(rng),
                ));
            }
        }
    }
}

/// No bytes with probability num/den, else what `make` draws.
pub(crate) fn empty_or(
    rng: &mut Rng,
    num: u64,
    den: u64,
    make: impl FnOnce(&mut Rng) -> Vec<u8>,
) -> Vec<u8> {
    if rng.chance(num, den) {
        Vec::new()
    } else {
        make(rng)
    }
}

/// A random option (name, payload) for the handshake fuzzing.
pub(crate) fn garbage_option(rng: &mut Rng) -> Vec<u8> {
    let names: [&[u8]; 4] = [b"", b"fuzz", b"nosuch", b"\xff\xfe\x00bad"];
    let name = rng.pick(&names);
    let (option, mut data) = match rng.below(9) {
        0 => {
            let infos = [0, 1, 2, 3, rng.u32() as u16];
            let n = rng.below(6) as usize;
            (rng.pick(&[OPT_INFO, OPT_GO]), go_data(name, &infos[..n]))
        }
        1 => (OPT_LIST, empty_or(rng, 1, 2, |r| r.bytes_below(16))),
        2 => (OPT_STRUCTURED_REPLY, empty_or(rng, 3, 4, |r| r.bytes(4))),
        3 => (rng.pick(&[OPT_LIST_META_CONTEXT, OPT_SET_META_CONTEXT]), {
            let queries: [&[u8]; 4] = [b"base:allocation", b"base:", b"qemu:dirty-bitmap:x", b""];
            meta_data(name, &queries[..rng.below(5) as usize])
        }),
        4 => {
            let r = rng.u32();
            (
                rng.pick(&[4u32, 5, 11, 12, 0, 0x8000_0001, r]),
                rng.bytes_below(64),
            )
        }
        5 => (rng.range(0, 12) as u32, rng.bytes_below(300)),
        6 => {
            // A length field that lies about the structure inside.
            let mut d = (rng.u32()).to_be_bytes().to_vec();
            d.extend(rng.bytes_below(32));
            (
                rng.pick(&[
                    OPT_INFO,
                    OPT_GO,
                    OPT_SET_META_CONTEXT,
                    OPT_LIST_META_CONTEXT,
                ]),
                d,
            )
        }
        7 => {
            // Meta context with a huge query count.
            let mut d = 0u32.to_be_bytes().to_vec();
            d.extend_from_slice(&rng.u32().to_be_bytes());
            d.extend(rng.bytes_below(64));
            (OPT_LIST_META_CONTEXT, d)
        }
        _ => (OPT_ABORT, rng.bytes_below(4)),
    };
    // Sometimes mutate a byte of an otherwise well-formed payload.
    if !data.is_empty() && rng.chance(1, 4) {
        let i = rng.below(data.len() as u64) as usize;
        data[i] ^= 1 << rng.below(8);
    }
    option_bytes(option, &data)
}

/// One garbage connection. Errors (resets, timeouts, refusals) are expected and ignored.
pub(crate) fn garbage_connection(
    sock: &Path,
    rng: &mut Rng,
    size: u64,
    stats: &GarbageStats,
    parked: &mut Vec<UnixStream>,
) {
    stats.connections.fetch_add(1, Ordering::Relaxed);
    let mut s = match RawClient::open(sock, Duration::from_secs(2)) {
        Ok(s) => s,
        Err(_) => {
            stats.connect_errors.fetch_add(1, Ordering::Relaxed);
            return;
        }
    };
    let mut out = Vec::new();
    let result: io::Result<()> = (|| {
        match rng.below(10) {
            0 => {
                // Random bytes of random length, greeting unread.
                out.extend(rng.bytes_below(4096));
            }
            1 => {
                // A truncated handshake: close after 0..N bytes of a valid exchange.
                if rng.chance(1, 2) {
                    let mut g = vec![0u8; rng.below(19) as usize];
                    s.read_exact(&mut g)?;
                }
                let mut script = 3u32.to_be_bytes().to_vec();
                script.extend(option_bytes(OPT_GO, &go_data(b"", &[3])));
                script.extend(request_bytes(0, CMD_READ, 1, 0, 4096));
                let cut = rng.below(script.len() as u64 + 1) as usize;
                out.extend_from_slice(&script[..cut]);
            }
            2 => {
                // Greeting + flags, then a run of garbage options.
                RawClient::greet(&mut s)?;
                for _ in 0..rng.range(1, 8) {
                    out.extend(garbage_option(rng));
                }
            }
            3 => {
                // Oversized option lengths.
                RawClient::greet(&mut s)?;
                out.extend(IHAVEOPT.to_be_bytes());
                out.extend(rng.range(0, 12).to_be_bytes()[4..].iter());
                let r = rng.u32();
                let len = rng.pick(&[(64 << 10) + 1, 1 << 24, 1 << 31, u32::MAX, r]);
                out.extend(len.to_be_bytes());
                out.extend(rng.bytes_below(2000));
            }
            4 => {
                // Client flags with unknown bits, or a bad option magic.
                let mut g = [0u8; 18];
                s.read_exact(&mut g)?;
                if rng.chance(1, 2) {
                    out.extend((rng.u32() | 4).to_be_bytes());
                } else {
                    out.extend(3u32.to_be_bytes());
                    out.extend(rng.bytes(16));
                }
                out.extend(rng.bytes_below(100));
            }
            5 | 6 => {
                // A valid handshake (GO), then garbage requests.
                RawClient::greet(&mut s)?;
                RawClient::go(&mut s, b"")?;
                stats.handshakes.fetch_add(1, Ordering::Relaxed);
                garbage_requests(rng, size, &mut out);
            }
            7 => {
                // Structured replies + base:allocation, then garbage requests.
                RawClient::greet(&mut s)?;
                s.write_all(&option_bytes(OPT_STRUCTURED_REPLY, &[]))?;
                RawClient::read_opt_reply(&mut s)?;
                s.write_all(&option_bytes(
                    OPT_SET_META_CONTEXT,
                    &meta_data(b"", &[b"base:allocation"]),
                ))?;
                while RawClient::read_opt_reply(&mut s)?.kind != REP_ACK {}
                RawClient::go(&mut s, b"")?;
                stats.handshakes.fetch_add(1, Ordering::Relaxed);
                garbage_requests(rng, size, &mut out);
            }
            8 => {
                // EXPORT_NAME with one of several names (and maybe without NO_ZEROES).
                let mut g = [0u8; 18];
                s.read_exact(&mut g)?;
                out.extend(rng.pick(&[1u32, 3]).to_be_bytes());
                let name: &[u8] = rng.pick(&[&b""[..], b"fuzz", b"other"]);
                out.extend(option_bytes(OPT_EXPORT_NAME, name));
                garbage_requests(rng, size, &mut out);
            }
            _ => {
                // INFO then ABORT, or ABORT straight away, with junk after it.
                RawClient::greet(&mut s)?;
                if rng.chance(1, 2) {
                    out.extend(option_bytes(OPT_INFO, &go_data(b"", &[1, 2, 3])));
                }
                out.extend(option_bytes(OPT_ABORT, &[]));
                out.extend(rng.bytes_below(64));
            }
        }
        // Send it in a few pieces.
        let mut rest = &out[..];
        while !rest.is_empty() {
            let n = (rng.range(1, 4096) as usize).min(rest.len());
            s.write_all(&rest[..n])?;
            rest = &rest[n..];
        }
        Ok(())
    })();
    if result.is_err() || rng.chance(1, 3) {
        return; // abrupt close
    }
    if rng.chance(1, 40) && parked.len() < 16 {
        // Keep a few half-finished connections open for a while.
        parked.push(s);
        return;
    }
    // Half-close and read whatever the server still says until it hangs up.
    let _ = s.shutdown(std::net::Shutdown::Write);
    if drain(&mut s) {
        stats.drain_timeouts.fetch_add(1, Ordering::Relaxed);
    }
    if parked.len() >= 16 {
        parked.clear();
    }
}

#[test]
fn garbage_clients_do_not_disturb_a_well_behaved_client() {
    const THREADS: u64 = 4;
    const PER_THREAD: u64 = 750;
    let mut fx = assembled("fuzz", "5", 4);
    let sock = fx.sock();
    let size = fx.size();
    let pid = fx.pid();

    let stop = Arc::new(AtomicBool::new(false));
    let (good_tx, good_rx) = mpsc::channel();
    {
        let (sock, stop) = (sock.clone(), stop.clone());
        thread::spawn(move || {
            let _ = good_tx.send(good_client(sock, stop));
        });
    }
    let stats = Arc::new(GarbageStats::default());
    let (tx, rx) = mpsc::channel();
    for t in 0..THREADS {
        let (sock, stats, tx) = (sock.clone(), stats.clone(), tx.clone());
        thread::spawn(move || {
            let mut rng = Rng::new(0xbad_5eed + t);
            let mut parked = Vec::new();
            for _ in 0..PER_THREAD {
                garbage_connection(&sock, &mut rng, size, &stats, &mut parked);
            }
            drop(parked);
            let _ = tx.send(t);
        });
    }
    drop(tx);
    // Hang guard: if the daemon stops answering, fail instead of waiting forever (the
    // fixture's Drop then kills the daemon, which unblocks the threads).
    let deadline = Instant::now() + Duration::from_secs(240);
    for _ in 0..THREADS {
        let left = deadline.saturating_duration_since(Instant::now());
        rx.recv_timeout(left).unwrap_or_else(|_| {
            panic!(
                "garbage clients still not done after 240 s ({} connections so far); daemon log: {}",
                stats.connections.load(Ordering::Relaxed),
                fx.log_tail()
            )
        });
    }
    stop.store(true, Ordering::Relaxed);
    let good = good_rx
        .recv_timeout(Duration::from_secs(120))
        .unwrap_or_else(|_| {
            panic!(
                "the well-behaved client is stuck; daemon log: {}",
                fx.log_tail()
            )
        });
    eprintln!(
        "garbage: {} connections ({} refused, {} full handshakes, {} drains timed out); good client: {good:?}",
        stats.connections.load(Ordering::Relaxed),
        stats.connect_errors.load(Ordering::Relaxed),
        stats.handshakes.load(Ordering::Relaxed),
        stats.drain_timeouts.load(Ordering::Relaxed),
    );
    let iterations = good.unwrap_or_else(|e| {
        panic!(
            "the well-behaved client saw an error: {e}\n  daemon log: {}",
            fx.log_tail()
        )
    });
    assert!(iterations >= 5);
    assert!(
        stats.handshakes.load(Ordering::Relaxed) > 100,
        "too few garbage connections got through the handshake to test the transmission phase"
    );

    assert!(process_alive(pid), "the daemon died:\n{}", fx.log_tail());
    let ran = fx.raidctl(&["status", "fuzz"]);
    assert!(
        ran.success(),
        "status after the garbage:\n{}",
        ran.describe()
    );
    wait_for_no_connections(&fx);
    // Still serving new clients, with the good client's data intact.
    let mut c = RawClient::connect(&sock, Duration::from_secs(60)).expect("a new connection");
    assert_eq!(c.size, size, "export size over GO");
    let a = c.read(0, GOOD_REGION as u32).expect("read the good region");
    drop(c);
    let mut c = RawClient::connect(&sock, Duration::from_secs(60)).expect("a new connection");
    let b = c
        .read(0, GOOD_REGION as u32)
        .expect("read the good region again");
    assert!(a == b, "two reads of the same region differ");
    drop(c);
    check_nbdinfo(&fx, &fx.export_uri(), false);
    let panics = fx.log_panics();
    assert!(panics.is_empty(), "the daemon logged a panic:\n{panics}");
    fx.stop();
}
