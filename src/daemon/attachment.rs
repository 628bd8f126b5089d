//! The daemon's side of `attach` / `detach`: which path, and bringing it up and down.
//! (The OS plumbing, losetup, mountinfo and stale cleanup, is in `attach.rs`.)

use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use super::attach::{self, AttachReport};
use super::nbd_netlink::{self, ConnectRequest};
use super::{Attachment, Daemon};
use crate::cache::EngineHandle;
use crate::error::{Error, ErrorKind, Result};
use crate::nbd::Negotiated;
use crate::reactor::blocking;
use crate::volume::Volume;

/// Seconds the kernel waits for one nbd request before failing it. A crashed daemon closes
/// its sockets, which the kernel notices at once; this only bounds a daemon that is alive but
/// stuck, so it is long enough for the slowest request under a rebuild and member retries.
const NBD_TIMEOUT_S: u64 = 300;
/// Kernel nbd connections (blk-mq hardware queues); more than the cores buys nothing.
const MAX_NBD_CONNECTIONS: usize = 4;

/// What keeps an attachment alive.
pub(super) enum Kind {
    /// The FUSE session: dropping it unmounts.
    Fuse(Box<dyn Send>),
    /// /dev/nbdN, connected to our sockets.
    Nbd(u32),
}

impl Daemon {
    /// Refuses while the attached device is mounted or held, naming where.
    pub(super) fn check_not_in_use(&self) -> Result<()> {
        if let Some(a) = self.attachment.borrow().as_ref() {
            if let Some(user) = attach::in_use_by(&a.report.device) {
                return Err(Error::new(
                    ErrorKind::Busy,
                    format!(
                        "array {} is attached as {}, which is {user}: unmount it first",
                        self.config.name, a.report.device
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Attaches the array: `device` is None (kernel nbd where it is usable, else FUSE),
    /// "nbd" or "/dev/nbdN" (kernel nbd, or an error saying what is missing), or "fuse".
    pub(super) async fn attach(&self, device: Option<String>) -> Result<AttachReport> {
        if let Some(a) = self.attachment.borrow().as_ref() {
            return Ok(a.report.clone());
        }
        let nbd = attach::kernel_nbd();
        match device.as_deref() {
            Some("fuse") => {
                let other = match &nbd {
                    Ok(()) => "kernel nbd is available too".to_string(),
                    Err(why) => format!("kernel nbd would not work here: {why}"),
                };
                self.attach_fuse(format!("--device fuse was asked for ({other})"))
                    .await
            }
            Some(d) if d == "nbd" || d.starts_with("/dev/nbd") => {
                if let Err(why) = nbd {
                    return Err(Error::new(
                        ErrorKind::Unsupported,
                        format!("cannot attach to {d}: {why}; use --device fuse"),
                    ));
                }
                let index = match d {
                    "nbd" => None,
                    _ => Some(attach::nbd_index(d).ok_or_else(|| {
                        Error::invalid(format!(
                            "invalid --device {d:?}: use /dev/nbdN, nbd or fuse"
                        ))
                    })?),
                };
                self.attach_nbd(index, format!("--device {d} was asked for"))
                    .await
            }
            Some(other) => Err(Error::invalid(format!(
                "unknown --device {other:?}: use /dev/nbdN, nbd or fuse"
            ))),
            None => match nbd {
                Ok(()) => {
                    self.attach_nbd(None, "the kernel nbd driver is loaded".into())
                        .await
                }
                Err(why) => {
                    self.attach_fuse(format!(
                        "{why}, so the FUSE frontend and a loop device are used"
                    ))
                    .await
                }
            },
        }
    }

    /// Connects /dev/nbdN (N chosen by the kernel when `index` is None) to socketpairs whose
    /// other ends this daemon serves, already in the transmission phase.
    async fn attach_nbd(&self, index: Option<u32>, reason: String) -> Result<AttachReport> {
        let connections = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .clamp(1, MAX_NBD_CONNECTIONS);
        // The kernel client never negotiates structured replies or block status.
        let negotiated = Negotiated::default();
        let mut kernel_ends = Vec::with_capacity(connections);
        for _ in 0..connections {
            let (ours, theirs) = socketpair()?;
            self.server.serve_negotiated(ours, negotiated);
            kernel_ends.push(theirs);
        }
        let export = self.server.export();
        let req = ConnectRequest {
            index,
            size_bytes: export.size_bytes(),
            // 512-byte logical sectors, as a disk image or partition table made elsewhere
            // expects; file systems still do 4 KiB I/O on top.
            block_size: export.min_block as u64,
            timeout_s: NBD_TIMEOUT_S,
            server_flags: export.transmission_flags(false) as u64,
            sockets: kernel_ends
                .iter()
                .map(std::os::fd::AsRawFd::as_raw_fd)
                .collect(),
            backend: Some(format!("raidctl:{}", self.config.name)),
        };
        // Off the reactor: the kernel reads the partition table through our sockets before
        // CONNECT returns. Our copies of the kernel's ends close once it holds them; on an
        // error that closes the sockets and our side of each ends by itself.
        let connected = blocking(&self.inbox, move || {
            let r = nbd_netlink::connect(&req);
            drop(kernel_ends);
            r
        })
        .await;
        let n = connected.map_err(|e| {
            let target = index.map_or("an nbd device".to_string(), |i| format!("/dev/nbd{i}"));
            let hint = match e.raw_os_error() {
                Some(libc::EBUSY) => {
                    ": it is in use (pick another /dev/nbdN, or leave --device out)"
                }
                Some(libc::EPERM) => ": connecting nbd devices needs root (CAP_SYS_ADMIN)",
                _ => "",
            };
            Error::io(format!("cannot connect {target}{hint}"), e)
        })?;
        let report = AttachReport {
            device: format!("/dev/nbd{n}"),
            method: "nbd".into(),
            file: String::new(),
            direct_io: false,
            reason,
            kernel_pid: attach::nbd_pid(n),
            connections: Some(connections),
        };
        self.record(&report);
        *self.attachment.borrow_mut() = Some(Attachment {
            report: report.clone(),
            kind: Kind::Nbd(n),
        });
        Ok(report)
    }

    fn record(&self, report: &AttachReport) {
        let record = attach::record_path(&self.config.run_dir, &self.config.name);
        let _ = std::fs::write(&record, serde_json::to_vec(report).unwrap_or_default());
        tracing::info!(array = %self.config.name, "attached as {}: {}", report.describe(), report.reason);
    }

    /// Mounts the FUSE frontend and puts a loop device on its file.
    async fn attach_fuse(&self, reason: String) -> Result<AttachReport> {
        let Some(mounter) = self.config.fuse.clone() else {
            return Err(Error::new(
                ErrorKind::Unsupported,
                "this daemon was started without the FUSE frontend",
            ));
        };
        let name = self.config.name.clone();
        let dir = attach::fuse_dir(&self.config.run_dir, &name);
        // A dead mount left behind first (stat on it fails, so create_dir_all would too).
        if attach::is_mount_point(&dir) {
            attach::lazy_unmount(&dir);
        }
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(dir.display(), e))?;
        let handle = EngineHandle::new(self.inbox.clone(), self.cache.info());
        let mount_dir = dir.clone();
        let mount_name = name.clone();
        let session = blocking(&self.inbox, move || {
            mounter.mount(handle, &mount_name, &mount_dir)
        })
        .await
        .map_err(|e| {
            Error::io(
                format!("cannot mount the FUSE frontend on {}", dir.display()),
                e,
            )
        })?;
        let file = dir.join(&name);
        let loop_file = file.clone();
        let (device, direct_io) =
            match blocking(&self.inbox, move || attach::losetup(&loop_file)).await {
                Ok(v) => v,
                Err(e) => {
                    drop(session);
                    return Err(e);
                }
            };
        let report = AttachReport {
            device,
            method: "fuse+loop".into(),
            file: file.display().to_string(),
            direct_io,
            reason,
            kernel_pid: None,
            connections: None,
        };
        let record = attach::record_path(&self.config.run_dir, &name);
        let _ = std::fs::write(&record, serde_json::to_vec(&report).unwrap_or_default());
        tracing::info!(array = %name, "attached as {} ({}): {}", report.device, report.method, report.reason);
        *self.attachment.borrow_mut() = Some(Attachment {
            report: report.clone(),
            kind: Kind::Fuse(session),
        });
        Ok(report)
    }

    /// Detaches the device (no-op when not attached).
    pub(super) async fn detach(&self) -> Result<()> {
        let Some(a) = self.attachment.borrow_mut().take() else {
            return Ok(());
        };
        match a.kind {
            Kind::Nbd(index) => self.detach_nbd(a.report, index).await,
            Kind::Fuse(session) => self.detach_fuse(a.report, session).await,
        }
    }

    async fn detach_nbd(&self, report: AttachReport, index: u32) -> Result<()> {
        let connections = self.server.stats.connections.get();
        if let Err(e) = blocking(&self.inbox, move || attach::nbd_disconnect(index)).await {
            *self.attachment.borrow_mut() = Some(Attachment {
                report,
                kind: Kind::Nbd(index),
            });
            return Err(e);
        }
        // The kernel flushes, sends NBD_CMD_DISC on each socket and drops them: wait for
        // our sides to close, so `stop` drains nothing of the kernel's.
        let ours = report.connections.unwrap_or(0);
        for _ in 0..250 {
            if self.server.stats.connections.get() + ours <= connections {
                break;
            }
            crate::reactor::sleep(Duration::from_millis(20)).await;
        }
        let _ = std::fs::remove_file(attach::record_path(&self.config.run_dir, &self.config.name));
        tracing::info!(array = %self.config.name, "detached {}", report.device);
        Ok(())
    }

    async fn detach_fuse(&self, report: AttachReport, session: Box<dyn Send>) -> Result<()> {
        let device = report.device.clone();
        // Already gone (an earlier detach set autoclear and the last user closed it): fine.
        let gone = !attach::loop_still_attached(&device);
        if let Err(e) = blocking(&self.inbox, move || {
            if gone {
                Ok(())
            } else {
                attach::loop_detach(&device)
            }
        })
        .await
        {
            *self.attachment.borrow_mut() = Some(Attachment {
                report,
                kind: Kind::Fuse(session),
            });
            return Err(e);
        }
        // A loop device someone holds open only gets autoclear: it goes when they close it.
        // Until then the FUSE file must stay served, and the detach has not happened.
        for _ in 0..100 {
            if !attach::loop_still_attached(&report.device) {
                break;
            }
            crate::reactor::sleep(Duration::from_millis(20)).await;
        }
        if attach::loop_still_attached(&report.device) {
            let device = report.device.clone();
            *self.attachment.borrow_mut() = Some(Attachment {
                report,
                kind: Kind::Fuse(session),
            });
            return Err(Error::new(
                ErrorKind::Busy,
                format!(
                    "{device} is held open by a process, so it cannot be detached yet (it detaches by itself when closed; retry then)"
                ),
            ));
        }
        // Unmounting waits for the FUSE session thread: keep it off the reactor.
        blocking(&self.inbox, move || drop(session)).await;
        let _ = std::fs::remove_file(attach::record_path(&self.config.run_dir, &self.config.name));
        let _ = std::fs::remove_dir(attach::fuse_dir(&self.config.run_dir, &self.config.name));
        tracing::info!(array = %self.config.name, "detached {}", report.device);
        Ok(())
    }
}

/// A connected pair of Unix stream sockets: (ours as a raw fd the server owns, the kernel's).
fn socketpair() -> Result<(RawFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: socketpair writes two fds into the array we pass; checked before use.
    let rc = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    if rc < 0 {
        return Err(Error::io("socketpair", std::io::Error::last_os_error()));
    }
    // SAFETY: fds[1] is a new socket nobody else owns.
    Ok((fds[0], unsafe { OwnedFd::from_raw_fd(fds[1]) }))
}
