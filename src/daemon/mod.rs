//! The per-array daemon: assemble, serve over NBD, answer the control socket, stop cleanly.
//!
//! ```text
//!  run(): lock NAME.pid ─► block_on {
//!            open + claim members ─► assemble ─► NBD listeners (NAME.sock, --listen ...)
//!            control socket NAME.ctl ─► signals (SIGTERM/SIGINT/SIGHUP via signalfd)
//!            ready() ─► wait for stop ─► drain connections ─► flush, mark clean ─► answer stop
//!         } ─► remove run-dir files
//! ```
//!
//! Crash-only: nothing here is needed for safety after a `kill -9`; the next `assemble` finds
//! the pid file unlocked, replaces the stale sockets and goes on from the superblocks.

pub mod attach;
mod attachment;
pub mod control;
mod control_server;
mod nbd_netlink;
pub mod rundir;
pub mod status;

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::{IntoRawFd, RawFd};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use attach::{AttachReport, FuseMounter};

use control::{ControlRequest, ControlResponse};
use io_uring::{opcode, types};
use rundir::RunDir;
use status::StatusReport;

use crate::buf::{AlignedBuf, BufSlice};
use crate::cache::{install_engine, uninstall_engine, Cache, CacheConfig};
use crate::control::{assemble, AssembleOptions, Controller};
use crate::error::{Error, ErrorKind, Result};
use crate::member::{FaultHandle, FaultMember, FileMember, Member, OpenOptions};
use crate::nbd::{sock, Export, Server};
use crate::raid::Array;
use crate::reactor::{block_on, blocking, spawn, submit, Inbox, InboxSender, Semaphore};
use crate::volume::Volume;

/// An extra NBD listening address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Listen {
    Unix(PathBuf),
    Tcp(SocketAddr),
}

impl Listen {
    /// `unix:PATH`, `tcp:HOST:PORT`, or `tcp::PORT` (binds 127.0.0.1: anything wider must be
    /// written out).
    pub fn parse(text: &str) -> Result<Listen> {
        let bad = || {
            Error::invalid(format!(
                "invalid --listen {text:?}: use unix:PATH, tcp:HOST:PORT or tcp::PORT"
            ))
        };
        if let Some(path) = text.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(bad());
            }
            return Ok(Listen::Unix(PathBuf::from(path)));
        }
        let addr = text.strip_prefix("tcp:").ok_or_else(bad)?;
        let addr = if let Some(port) = addr.strip_prefix(':') {
            format!("127.0.0.1:{port}")
        } else {
            addr.to_string()
        };
        let parsed = if addr.starts_with('[') || addr.matches(':').count() == 1 {
            addr.parse::<SocketAddr>().ok()
        } else {
            None
        };
        parsed.map(Listen::Tcp).ok_or_else(bad)
    }

    fn uri(&self, name: &str) -> String {
        match self {
            Listen::Unix(p) => format!("nbd+unix:///{name}?socket={}", p.display()),
            Listen::Tcp(a) => format!("nbd://{a}/{name}"),
        }
    }
}

/// Everything `raidctl assemble` decided.
#[derive(Clone)]
pub struct DaemonConfig {
    pub name: String,
    pub devices: Vec<String>,
    pub run_dir: RunDir,
    pub listen: Vec<Listen>,
    pub assemble: AssembleOptions,
    /// The FUSE frontend, for `attach` on hosts without nbd (None: attach is refused).
    pub fuse: Option<Arc<dyn FuseMounter>>,
    /// The write-back cache's size and thresholds (its policy lives in the extension block).
    pub cache: CacheConfig,
}

/// A block device attached to the array, and what keeps it alive.
struct Attachment {
    report: AttachReport,
    kind: attachment::Kind,
}

/// Told to the caller once the export is served.
#[derive(Clone, Debug)]
pub struct Ready {
    pub status: StatusReport,
    pub notes: Vec<String>,
}

/// Fault handles by member path.
type FaultHandles = HashMap<String, FaultHandle>;

struct Daemon {
    config: DaemonConfig,
    array: Rc<Array>,
    control: Rc<Controller>,
    cache: Rc<Cache>,
    server: Rc<Server<Cache>>,
    uris: Vec<String>,
    stop: Semaphore,
    stop_waiters: RefCell<Vec<RawFd>>,
    inbox: InboxSender,
    attachment: RefCell<Option<Attachment>>,
    /// Fault handles by member path (for drills; `inject` drives them).
    faults: RefCell<FaultHandles>,
}

/// Runs the daemon on this thread until it is stopped. `ready` is called once it serves.
pub fn run(config: DaemonConfig, ready: impl FnOnce(&Ready) + 'static) -> Result<()> {
    let lock = config.run_dir.lock(&config.name)?;
    let signal_fd = block_signals()?;
    let name = config.name.clone();
    let run_dir = config.run_dir.clone();
    let result = block_on(async move { serve(config, signal_fd, ready).await })
        .map_err(|e| Error::io("reactor", e))?;
    run_dir.cleanup(&name);
    drop(lock);
    result
}

async fn serve(config: DaemonConfig, signal_fd: RawFd, ready: impl FnOnce(&Ready)) -> Result<()> {
    let (members, faults) = open_members(&config)?;
    let assembled = assemble(members, &config.assemble).await?;
    let array = assembled.array;
    let control = assembled.control;
    let (inbox, inbox_sender) = Inbox::new().map_err(|e| Error::io("eventfd", e))?;
    spawn(inbox.serve());
    let cache = start_cache(&control, &config);
    if array.name() != config.name {
        tracing::info!(
            "the members call their array {:?}; serving it as {:?}",
            array.name(),
            config.name
        );
    }
    let mut export = Export::new(cache.info(), config.assemble.read_only);
    export.name = config.name.clone();
    let server = Server::new(cache.clone(), export);
    let uris = listen_all(&server, &config)?;
    let ctl = bind_control(&config)?;

    let daemon = Rc::new(Daemon {
        config,
        array: array.clone(),
        control,
        cache: cache.clone(),
        server: server.clone(),
        uris,
        stop: Semaphore::new(0),
        stop_waiters: RefCell::new(Vec::new()),
        inbox: inbox_sender,
        attachment: RefCell::new(None),
        faults: RefCell::new(faults),
    });
    spawn(control_server::control_loop(
        daemon.clone(),
        ctl.into_raw_fd(),
    ));
    control_server::watch_for_missing_spares(&daemon);
    spawn(signal_loop(daemon.clone(), signal_fd));
    let status = daemon.status();
    tracing::info!(array = %daemon.config.name, "serving {} ({} bytes) at {}", status.level, status.size_bytes, daemon.uris.join(" "));
    ready(&Ready {
        status,
        notes: assembled.notes,
    });

    daemon.stop.acquire().await;
    shut_down(&daemon).await
}

/// Opens and claims every member (read-only for a read-only assemble), each behind a fault
/// handle that drills can arm; the handles are keyed by the path as given.
fn open_members(config: &DaemonConfig) -> Result<(Vec<Rc<dyn Member>>, FaultHandles)> {
    let opts = if config.assemble.read_only {
        OpenOptions {
            read_only: true,
            no_claim: false,
        }
    } else {
        OpenOptions::default()
    };
    let mut faults = HashMap::new();
    let mut members: Vec<Rc<dyn Member>> = Vec::new();
    for path in &config.devices {
        let handle = FaultHandle::default();
        let file: Rc<dyn Member> = Rc::new(FileMember::open(path, opts)?);
        members.push(Rc::new(FaultMember::new(file, handle.clone())));
        faults.insert(path.clone(), handle);
    }
    Ok((members, faults))
}

/// Puts the write-back cache in front of the array, with its destager and battery watcher
/// running, and makes it the process's cache engine.
fn start_cache(control: &Rc<Controller>, config: &DaemonConfig) -> Rc<Cache> {
    let cache = Cache::new(
        control.array().clone(),
        config.cache.clone(),
        control.clone(),
    );
    spawn(cache.clone().run_destager());
    spawn(cache.clone().watch_battery_file());
    install_engine(cache.clone());
    cache
}

/// Serves the export on the run-dir socket (group-accessible) and every `--listen` address;
/// returns their URIs.
fn listen_all(server: &Rc<Server<Cache>>, config: &DaemonConfig) -> Result<Vec<String>> {
    let mut listens = vec![Listen::Unix(config.run_dir.sock(&config.name))];
    listens.extend(config.listen.iter().cloned());
    let mut uris = Vec::new();
    for l in &listens {
        server.listen(bind(l)?);
        uris.push(l.uri(&config.name));
    }
    rundir::chmod(&config.run_dir.sock(&config.name), 0o660)?;
    Ok(uris)
}

/// Binds the control socket, readable by its owner only.
fn bind_control(config: &DaemonConfig) -> Result<std::os::unix::net::UnixListener> {
    let ctl_path = config.run_dir.ctl(&config.name);
    let ctl = std::os::unix::net::UnixListener::bind(&ctl_path)
        .map_err(|e| Error::io(ctl_path.display(), e))?;
    rundir::chmod(&ctl_path, 0o600)?;
    Ok(ctl)
}

/// The orderly stop: detach, drain NBD connections, write the cache out and mark the array
/// clean, then answer everyone who asked for the stop with how it went.
async fn shut_down(daemon: &Daemon) -> Result<()> {
    tracing::info!(array = %daemon.config.name, "stopping: finishing requests in flight");
    if let Err(e) = daemon.detach().await {
        tracing::error!(array = %daemon.config.name, "detach at stop: {e}");
    }
    daemon.server.shutdown(Duration::from_secs(30)).await;
    // The cache writes everything out first; a failure there leaves the array dirty.
    let closed = match daemon.cache.close().await {
        Ok(()) => daemon.array.close().await,
        Err(e) => Err(e),
    };
    match &closed {
        Ok(()) => {
            tracing::info!(array = %daemon.config.name, "stopped cleanly (events {})", daemon.array.events())
        }
        Err(e) => tracing::error!(array = %daemon.config.name, "stop: {e}"),
    }
    let answer = match &closed {
        Ok(()) => ControlResponse {
            ok: true,
            ..Default::default()
        },
        Err(e) => ControlResponse::error(e.to_string()),
    };
    let waiters: Vec<RawFd> = daemon.stop_waiters.borrow_mut().drain(..).collect();
    for fd in waiters {
        let _ = control_server::send_line(fd, &answer).await;
        sock::close(fd);
    }
    uninstall_engine();
    daemon.inbox.close();
    closed
}

impl Daemon {
    /// The member path as the array knows it (absolute), for a path as the user typed it.
    fn member_path(&self, device: &str) -> String {
        std::fs::canonicalize(device)
            .map(|p| p.display().to_string())
            .unwrap_or_else(|_| device.to_string())
    }

    /// Opens and claims NEW, and starts replacing DEV with it.
    async fn replace(&self, device: &str, with: &str, force: bool) -> Result<()> {
        let old = self.member_path(device);
        let path = self.member_path(with);
        let file: Rc<dyn Member> = Rc::new(FileMember::open(&path, OpenOptions::default())?);
        let handle = FaultHandle::default();
        let member: Rc<dyn Member> = Rc::new(FaultMember::new(file, handle.clone()));
        self.control.replace_member(&old, member, force).await?;
        self.faults.borrow_mut().insert(path, handle);
        Ok(())
    }

    /// Opens, claims and adds a hot spare.
    async fn add(&self, device: &str, force: bool) -> Result<()> {
        let path = self.member_path(device);
        let opts = OpenOptions::default();
        let file: Rc<dyn Member> = Rc::new(FileMember::open(&path, opts)?);
        let handle = FaultHandle::default();
        let member: Rc<dyn Member> = Rc::new(FaultMember::new(file, handle.clone()));
        self.control.add_spare(member, force).await?;
        self.faults.borrow_mut().insert(path, handle);
        Ok(())
    }

    /// Arms a fault on one member (a drill). Device paths match as given or canonicalised.
    fn inject(
        &self,
        device: &str,
        fault: &str,
        delay_ms: Option<u64>,
        range: Option<(u64, u64)>,
        count: Option<u64>,
    ) -> Result<()> {
        use crate::member::{FaultKind, FaultRule};
        let canonical = std::fs::canonicalize(device)
            .map(|p| p.display().to_string())
            .unwrap_or_else(|_| device.to_string());
        let faults = self.faults.borrow();
        let Some(handle) = faults.get(device).or_else(|| faults.get(&canonical)) else {
            let known: Vec<&String> = faults.keys().collect();
            return Err(Error::invalid(format!(
                "{device} is not a member of array {} (members: {known:?})",
                self.config.name
            )));
        };
        let kind = match fault {
            "read-error" => FaultKind::ReadError,
            "write-error" => FaultKind::WriteError,
            "delay" => FaultKind::Delay(Duration::from_millis(delay_ms.unwrap_or(100))),
            "vanish" => FaultKind::Vanish,
            "clear" => {
                handle.clear();
                return Ok(());
            }
            other => return Err(Error::invalid(format!("unknown fault {other:?}"))),
        };
        tracing::warn!(array = %self.config.name, member = device, "fault drill: {fault} injected (range {range:?}, count {count:?})");
        handle.inject(FaultRule { kind, range, count });
        Ok(())
    }

    /// `raidctl cache`: parses and applies a policy change (nothing changes on bad input).
    async fn set_cache_policy(
        &self,
        mode: Option<String>,
        battery: Option<String>,
        battery_file: Option<String>,
    ) -> Result<()> {
        use crate::cache::policy::{Battery, CacheMode};
        let mode = mode
            .map(|m| CacheMode::parse(&m).map_err(|e| Error::invalid(format!("--mode: {e}"))))
            .transpose()?;
        let battery = battery
            .map(|b| Battery::parse(&b).map_err(|e| Error::invalid(format!("--battery: {e}"))))
            .transpose()?;
        let battery_file = match battery_file.as_deref() {
            None => None,
            Some("") | Some("none") => Some(None),
            Some(path) => {
                let path = std::fs::canonicalize(path).map_err(|e| {
                    Error::io(format!("--battery-file {path}: the file must exist (a UPS daemon writes present, absent, charging or failed into it)"), e)
                })?;
                crate::cache::check_battery_file(&path)?;
                Some(Some(path))
            }
        };
        if self.array.is_read_only() && mode.is_some() {
            return Err(Error::new(
                ErrorKind::ReadOnly,
                format!(
                    "array {} is read-only: it has no writes to cache",
                    self.config.name
                ),
            ));
        }
        self.cache.set_policy(mode, battery, battery_file).await
    }

    fn status(&self) -> StatusReport {
        let mut status = StatusReport::build(&self.control, Some(&self.server), self.uris.clone());
        status.cache = Some(self.cache.report());
        status.attachments = self
            .attachment
            .borrow()
            .iter()
            .map(|a| a.report.clone())
            .collect();
        status
    }
}

fn bind(l: &Listen) -> Result<RawFd> {
    match l {
        Listen::Unix(path) => {
            if path.exists() {
                // Only a socket may be replaced: a stale one from a dead daemon.
                let meta =
                    std::fs::symlink_metadata(path).map_err(|e| Error::io(path.display(), e))?;
                use std::os::unix::fs::FileTypeExt;
                if !meta.file_type().is_socket() {
                    return Err(Error::invalid(format!(
                        "{} exists and is not a socket",
                        path.display()
                    )));
                }
                let _ = std::fs::remove_file(path);
            }
            let listener = std::os::unix::net::UnixListener::bind(path)
                .map_err(|e| Error::io(format!("cannot listen on {}", path.display()), e))?;
            Ok(listener.into_raw_fd())
        }
        Listen::Tcp(addr) => {
            let listener = std::net::TcpListener::bind(addr)
                .map_err(|e| Error::io(format!("cannot listen on {addr}"), e))?;
            Ok(listener.into_raw_fd())
        }
    }
}

async fn signal_loop(daemon: Rc<Daemon>, fd: RawFd) {
    let info = BufSlice::zeroed(std::mem::size_of::<libc::signalfd_siginfo>());
    let entry = opcode::Read::new(types::Fd(fd), info.as_mut_ptr(), info.len() as u32).build();
    let n = submit(entry, Some(Box::new(info.clone()))).await;
    if n > 0 {
        let signo = u32::from_ne_bytes(info.bytes()[..4].try_into().expect("4 bytes"));
        tracing::info!("signal {signo} received: stopping");
        daemon.stop.release();
    }
}

/// Blocks SIGTERM, SIGINT and SIGHUP for this thread and returns a signalfd that reports them.
fn block_signals() -> Result<RawFd> {
    // SAFETY: sigset_t is plain data; the libc calls only read/write the set we own, and
    // signalfd returns a new descriptor or -1 (checked).
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
            libc::sigaddset(&mut set, s);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
        let fd = libc::signalfd(-1, &set, libc::SFD_CLOEXEC);
        if fd < 0 {
            return Err(Error::new(
                ErrorKind::Io,
                format!("signalfd: {}", std::io::Error::last_os_error()),
            ));
        }
        Ok(fd)
    }
}
