//! Memory and fairness under pressure: pipelined maximum reads, clients that never read
//! replies, stop requests during shutdown.

#[allow(unused_imports)]
use crate::*;

/// Resident memory of a process, in bytes.
pub(crate) fn rss_bytes(pid: u32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// A client that pipelines maximum-size READs and never reads the replies must not make the
/// daemon hold unbounded memory: each 28-byte request can pin a 32 MiB buffer, and one
/// connection may have 128 in flight (4 GiB), with no limit across connections. The test stops
/// (closes the socket, which frees everything) as soon as the daemon has grown by 1 GiB, so it
/// never pushes the machine further than that.
#[test]
fn pipelined_max_size_reads_do_not_pin_unbounded_memory() {
    const LIMIT: u64 = 1 << 30;
    let fx = assembled("mem", "0", 4);
    let pid = fx.pid();
    let base = rss_bytes(pid).expect("daemon RSS");
    let mut c = RawClient::connect(&fx.sock(), Duration::from_secs(30)).expect("connect");
    for _ in 0..128 {
        c.send(0, CMD_READ, 0, MAX_PAYLOAD as u32, &[])
            .expect("send a READ");
    }
    // Sample until the daemon's memory stops growing (it cannot send more than the socket
    // buffer holds) or passes the limit.
    let mut peak = base;
    let mut last_growth = Instant::now();
    let started = Instant::now();
    while last_growth.elapsed() < Duration::from_secs(2)
        && started.elapsed() < Duration::from_secs(60)
    {
        let now = rss_bytes(pid).unwrap_or(0);
        if now > peak + (16 << 20) {
            last_growth = Instant::now();
        }
        peak = peak.max(now);
        if peak - base > LIMIT {
            break;
        }
        thread::sleep(Duration::from_millis(5));
    }
    drop(c);
    assert!(process_alive(pid), "the daemon died:\n{}", fx.log_tail());
    wait_for_no_connections(&fx);
    assert!(
        peak - base <= LIMIT,
        "one connection with 128 pipelined 32 MiB READs (3.5 KiB of requests, replies never read) \
         made the daemon grow by more than {} MiB (from {} MiB to {} MiB, stopped there): \
         per-connection buffers are bounded only by MAX_IN_FLIGHT x MAX_PAYLOAD = 4 GiB \
         (src/nbd/conn.rs), with no cap across connections",
        LIMIT >> 20,
        base >> 20,
        peak >> 20
    );
}

/// Clients that pipeline big READs and never read the replies must stall only themselves:
/// each connection's buffers are bounded and it keeps a reserve of its own, so a polite client
/// on another connection is still answered (nbdkit and qemu-nbd answer it at once). Before,
/// 24 such clients took the whole server-wide budget and the polite READ never came back.
#[test]
fn clients_that_never_read_replies_do_not_starve_a_polite_one() {
    let fx = assembled("hostile", "0", 4);
    let pid = fx.pid();
    let mut hostile = Vec::new();
    for _ in 0..24 {
        let mut c = RawClient::connect(&fx.sock(), Duration::from_secs(30)).expect("connect");
        // 96 MiB of READs: more than the connection may hold, so it stops being read from.
        for i in 0..96u64 {
            c.send(0, CMD_READ, (i % 8) << 20, 1 << 20, &[])
                .expect("send a READ");
        }
        hostile.push(c);
    }
    // Give the daemon time to take in what it will of the hostile requests.
    thread::sleep(Duration::from_millis(500));
    // The read timeout is a hang guard: without the fix the answer never comes.
    let mut polite = RawClient::connect(&fx.sock(), Duration::from_secs(20)).expect("connect");
    for i in 0..8u64 {
        let data = polite.read(i * 4096, 4096);
        assert!(
            data.is_ok(),
            "the polite client got no answer to READ {i} while 24 clients do not read their replies: {data:?}\n{}",
            fx.log_tail()
        );
    }
    polite
        .write(0, &vec![7u8; 65536])
        .expect("a polite WRITE is answered too");
    drop(polite);
    drop(hostile);
    assert!(process_alive(pid), "the daemon died:\n{}", fx.log_tail());
    wait_for_no_connections(&fx);
}

/// Stop requests that arrive while the daemon is answering earlier ones (over the control
/// socket, as `raidctl stop` sends them) must not crash it: each waiter that gets its answer
/// immediately asks again, as a retrying supervisor would.
#[test]
fn stop_requests_during_shutdown_do_not_crash_the_daemon() {
    use std::io::BufRead;
    const CLIENTS: usize = 48;
    let mut fx = assembled("stops", "1", 2);
    let pid = fx.pid();
    let ctl = fx.run_dir.join("stops.ctl");
    let barrier = Arc::new(std::sync::Barrier::new(CLIENTS));
    let answered = Arc::new(AtomicU64::new(0));
    let (tx, rx) = mpsc::channel();
    let ask = |ctl: &Path| -> io::Result<String> {
        let s = UnixStream::connect(ctl)?;
        s.set_read_timeout(Some(Duration::from_secs(60)))?;
        s.set_write_timeout(Some(Duration::from_secs(60)))?;
        (&s).write_all(b"{\"cmd\":\"stop\"}\n")?;
        let mut line = String::new();
        io::BufReader::new(&s).read_line(&mut line)?;
        Ok(line)
    };
    for _ in 0..CLIENTS {
        let (ctl, barrier, answered, tx) =
            (ctl.clone(), barrier.clone(), answered.clone(), tx.clone());
        thread::spawn(move || {
            barrier.wait();
            if ask(&ctl).is_ok_and(|l| l.contains("\"ok\":true")) {
                answered.fetch_add(1, Ordering::Relaxed);
            }
            for _ in 0..3 {
                if ask(&ctl).is_err() {
                    break;
                }
            }
            let _ = tx.send(());
        });
    }
    drop(tx);
    let deadline = Instant::now() + Duration::from_secs(120);
    for _ in 0..CLIENTS {
        rx.recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .unwrap_or_else(|_| panic!("stop clients stuck; daemon log: {}", fx.log_tail()));
    }
    while process_alive(pid) && is_raidctl(pid) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
    let log = fx.log_panics();
    assert!(
        log.is_empty(),
        "the daemon panicked while answering stop requests ({} of {CLIENTS} first requests \
         answered): src/daemon/mod.rs holds daemon.stop_waiters.borrow_mut() across \
         send_line(..).await, and a stop request handled meanwhile calls borrow_mut() again.\n\
         daemon log:\n{log}",
        answered.load(Ordering::Relaxed)
    );
    assert!(
        answered.load(Ordering::Relaxed) > 0,
        "no stop request got an answer; daemon log:\n{}",
        fx.log_tail()
    );
    // Stopped cleanly: it assembles again as clean.
    fx.assemble();
    assert_eq!(fx.status()["state"], "clean");
}
