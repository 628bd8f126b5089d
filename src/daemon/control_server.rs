//! The control socket's server side: one task per connection reading JSON lines, dispatching
//! each request to the daemon, and (for `monitor`) streaming events; plus the spare-group
//! exchange, which is daemons asking each other over the same sockets.

use super::*;

/// With a spare group, a SparesMissing event makes us ask the other daemons of the group for
/// a spare; the first that gives one up loses its claim, and our `add` takes it (first
/// claimant wins: the claim is an exclusive lock).
pub(super) fn watch_for_missing_spares(daemon: &Rc<Daemon>) {
    let Some(group) = daemon.control.spare_group() else {
        return;
    };
    let weak = Rc::downgrade(daemon);
    let asking = Rc::new(std::cell::Cell::new(false));
    daemon.control.subscribe(move |event| {
        if !matches!(event, crate::raid::events::Event::SparesMissing { .. }) || asking.get() {
            return;
        }
        let Some(daemon) = weak.upgrade() else { return };
        asking.set(true);
        let (group, asking) = (group.clone(), asking.clone());
        spawn(async move {
            let run_dir = daemon.config.run_dir.clone();
            let me = daemon.config.name.clone();
            let wanted = group.clone();
            let found = blocking(&daemon.inbox, move || borrow_spare(&run_dir, &me, &wanted)).await;
            if let Some((path, from)) = found {
                match daemon.add(&path, true).await {
                    Ok(()) => daemon.array.emit(crate::raid::events::Event::SpareMoved { member: path, from }),
                    Err(e) => tracing::warn!(array = %daemon.config.name, "could not take spare {path} from {from}: {e}"),
                }
            }
            asking.set(false);
        });
    });
}

/// Asks every other running array's daemon for a spare of `group` (blocking; off-reactor).
fn borrow_spare(run_dir: &RunDir, me: &str, group: &str) -> Option<(String, String)> {
    for name in run_dir.arrays().into_iter().filter(|n| n != me) {
        let req = ControlRequest::GiveSpare {
            group: group.to_string(),
        };
        if let Ok(answer) = control::request(&run_dir.ctl(&name), &req, Duration::from_secs(10)) {
            if let (true, Some(device)) = (answer.ok, answer.device) {
                return Some((device, name));
            }
        }
    }
    None
}

fn reply(r: Result<()>) -> ControlResponse {
    match r {
        Ok(()) => ControlResponse {
            ok: true,
            ..Default::default()
        },
        Err(e) => ControlResponse::error(e.to_string()),
    }
}

pub(super) async fn control_loop(daemon: Rc<Daemon>, fd: RawFd) {
    loop {
        match sock::accept(fd).await {
            Ok(conn) => {
                spawn(control_connection(daemon.clone(), conn));
            }
            Err(e) => {
                tracing::warn!("control socket accept failed: {e}");
                crate::reactor::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Answers requests on one control connection until it closes.
async fn control_connection(daemon: Rc<Daemon>, fd: RawFd) {
    let mut pending: Vec<u8> = Vec::new();
    let chunk = BufSlice::zeroed(4096);
    loop {
        while let Some(end) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            let answer = match serde_json::from_slice::<ControlRequest>(&line) {
                Ok(ControlRequest::Monitor) => return monitor_connection(daemon, fd).await,
                Ok(ControlRequest::Stop) => match stop(&daemon, fd).await {
                    // Answered once the array is stopped and clean.
                    Ok(()) => return,
                    Err(e) => ControlResponse::error(e.to_string()),
                },
                Ok(request) => answer(&daemon, request).await,
                Err(e) => ControlResponse::error(format!("bad request: {e}")),
            };
            if send_line(fd, &answer).await.is_err() {
                sock::close(fd);
                return;
            }
        }
        if pending.len() > 1 << 16 {
            let _ = send_line(fd, &ControlResponse::error("request line too long")).await;
            sock::close(fd);
            return;
        }
        if !receive_more(fd, &chunk, &mut pending).await {
            sock::close(fd);
            return;
        }
    }
}

/// Reads what the peer sent next onto `pending`; false once the peer is gone (or on error).
async fn receive_more(fd: RawFd, chunk: &BufSlice, pending: &mut Vec<u8>) -> bool {
    let entry = opcode::Recv::new(types::Fd(fd), chunk.as_mut_ptr(), chunk.len() as u32).build();
    let n = submit(entry, Some(Box::new(chunk.clone()))).await;
    if n <= 0 {
        return false;
    }
    pending.extend_from_slice(&chunk.bytes()[..n as usize]);
    true
}

/// Detaches, then hands the connection to the stop waiters and asks the daemon to stop.
/// Detach comes first: a mounted or held-open device refuses the stop.
async fn stop(daemon: &Daemon, fd: RawFd) -> Result<()> {
    daemon.check_not_in_use()?;
    daemon.detach().await?;
    daemon.stop_waiters.borrow_mut().push(fd);
    daemon.stop.release();
    Ok(())
}

/// The answer to every request that leaves the connection as it is.
async fn answer(daemon: &Daemon, request: ControlRequest) -> ControlResponse {
    match request {
        ControlRequest::Monitor | ControlRequest::Stop => {
            unreachable!("handled by control_connection")
        }
        ControlRequest::Status => status_response(daemon),
        ControlRequest::GiveSpare { group } => give_spare(daemon, &group).await,
        ControlRequest::Attach { device } => match daemon.attach(device).await {
            Ok(report) => ControlResponse {
                ok: true,
                attach: Some(report),
                ..Default::default()
            },
            Err(e) => ControlResponse::error(e.to_string()),
        },
        ControlRequest::Fail { device, force } => {
            let path = daemon.member_path(&device);
            reply(daemon.control.fail_member(&path, force).await)
        }
        ControlRequest::Remove { device } => reply(remove(daemon, &device).await),
        ControlRequest::Add { device, force } => reply(daemon.add(&device, force).await),
        ControlRequest::Check { repair } => reply(daemon.control.start_scrub(repair)),
        ControlRequest::Replace {
            device,
            with,
            force,
        } => reply(daemon.replace(&device, &with, force).await),
        ControlRequest::Rebuild {
            speed_min_kib,
            speed_max_kib,
        } => rebuild(daemon, speed_min_kib, speed_max_kib).await,
        ControlRequest::Cache {
            mode,
            battery,
            battery_file,
        } => match daemon.set_cache_policy(mode, battery, battery_file).await {
            Ok(()) => status_response(daemon),
            Err(e) => ControlResponse::error(e.to_string()),
        },
        ControlRequest::Inject {
            device,
            fault,
            delay_ms,
            offset,
            length,
            count,
        } => reply(daemon.inject(&device, &fault, delay_ms, offset.zip(length), count)),
        ControlRequest::Detach => reply(detach(daemon).await),
    }
}

/// A success carrying the current status.
fn status_response(daemon: &Daemon) -> ControlResponse {
    ControlResponse {
        ok: true,
        status: Some(daemon.status()),
        ..Default::default()
    }
}

/// Another array of `group` asked for a spare: give one up if we can, and stop drilling it.
async fn give_spare(daemon: &Daemon, group: &str) -> ControlResponse {
    let device = daemon.control.give_spare(group).await;
    if let Some(d) = &device {
        daemon.faults.borrow_mut().remove(d);
        tracing::info!(array = %daemon.config.name, "gave spare {d} to another array of group {group}");
    }
    ControlResponse {
        ok: device.is_some(),
        device,
        ..Default::default()
    }
}

/// Removes a faulty member or a spare, and forgets its fault handle.
async fn remove(daemon: &Daemon, device: &str) -> Result<()> {
    let path = daemon.member_path(device);
    let r = daemon.control.remove_member(&path).await;
    if r.is_ok() {
        daemon.faults.borrow_mut().remove(&path);
    }
    r
}

/// Sets (and saves) the rebuild throttle, then starts any recovery or resync now.
async fn rebuild(
    daemon: &Daemon,
    speed_min_kib: Option<u64>,
    speed_max_kib: Option<u64>,
) -> ControlResponse {
    daemon
        .control
        .set_speed_limits(speed_min_kib, speed_max_kib);
    if speed_min_kib.is_some() || speed_max_kib.is_some() {
        if let Err(e) = daemon.control.save_settings().await {
            tracing::warn!(array = %daemon.config.name, "speed limits not saved: {e}");
        }
    }
    daemon.array.needs_attention();
    daemon.control.start_resync_if_needed();
    status_response(daemon)
}

/// Detaches the block device, unless something still holds it.
async fn detach(daemon: &Daemon) -> Result<()> {
    daemon.check_not_in_use()?;
    daemon.detach().await
}

/// Streams every later event of the array to `fd` as JSON lines ({"event":"...", "array":
/// "...", ...}) until the peer goes away or the daemon stops.
async fn monitor_connection(daemon: Rc<Daemon>, fd: RawFd) {
    use std::collections::VecDeque;
    let queue: Rc<RefCell<VecDeque<Vec<u8>>>> = Rc::new(RefCell::new(VecDeque::new()));
    let ready = Rc::new(Semaphore::new(0));
    let closed = Rc::new(std::cell::Cell::new(false));
    {
        let (queue, ready, closed) = (queue.clone(), ready.clone(), closed.clone());
        let name = daemon.config.name.clone();
        daemon.control.subscribe(move |event| {
            // A monitor that went away, or one that reads far too slowly, gets nothing more.
            if closed.get() || queue.borrow().len() > 10_000 {
                return;
            }
            let mut value = serde_json::to_value(event).unwrap_or_default();
            if let Some(obj) = value.as_object_mut() {
                obj.insert("array".into(), serde_json::Value::String(name.clone()));
            }
            let mut line = serde_json::to_vec(&value).unwrap_or_default();
            line.push(b'\n');
            queue.borrow_mut().push_back(line);
            if ready.available() == 0 {
                ready.release();
            }
        });
    }
    // Tell the client it is subscribed, then forward events as they come.
    let hello = ControlResponse {
        ok: true,
        ..Default::default()
    };
    if send_line(fd, &hello).await.is_err() {
        closed.set(true);
        sock::close(fd);
        return;
    }
    loop {
        ready.acquire().await;
        let lines: Vec<Vec<u8>> = queue.borrow_mut().drain(..).collect();
        for line in lines {
            let buf = AlignedBuf::from_slice(&line).into_shared();
            if sock::write_all(fd, &[buf]).await.is_err() {
                closed.set(true);
                sock::close(fd);
                return;
            }
        }
    }
}

pub(super) async fn send_line(fd: RawFd, answer: &ControlResponse) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(answer).expect("responses serialise");
    line.push(b'\n');
    sock::write_all(fd, &[AlignedBuf::from_slice(&line).into_shared()]).await
}
