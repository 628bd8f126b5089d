//! Attaching an array as a block device.
//!
//! Where the kernel has the nbd driver, /dev/nbdN is the natural device: the daemon serves one
//! end of a socketpair per kernel connection (already past the handshake) and hands the other
//! ends to the kernel with netlink NBD_CMD_CONNECT. Otherwise the daemon mounts the FUSE
//! frontend, which shows the array as one file, and puts a loop device on that file (direct
//! I/O when the kernel allows it). `detach` and `stop` refuse while the device is mounted, and
//! name the mount point. A record in `NAME.attach` lets the next daemon clean up after a
//! `kill -9`: a loop device on our dead FUSE file is detached and the mount lazily unmounted; an
//! nbd device still connected to the dead daemon's sockets is disconnected.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

use super::rundir::RunDir;
use crate::cache::EngineHandle;
use crate::error::{Error, ErrorKind, Result};

/// Mounts the FUSE frontend (provided by the `raidctl` binary, which links `fuse-frontend`).
pub trait FuseMounter: Send + Sync {
    /// Mounts a filesystem showing `name` under `dir`; dropping the guard unmounts it.
    fn mount(&self, handle: EngineHandle, name: &str, dir: &Path)
        -> std::io::Result<Box<dyn Send>>;
}

/// One attachment, as `status` shows it and as `NAME.attach` records it.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct AttachReport {
    /// The block device: /dev/loopN (or /dev/nbdN).
    pub device: String,
    /// "fuse+loop" or "nbd".
    pub method: String,
    /// The file behind the loop device.
    pub file: String,
    /// Whether the loop device does direct I/O on the file.
    pub direct_io: bool,
    /// Why this path was used, and what the other one needs.
    pub reason: String,
    /// For nbd: /sys/block/nbdN/pid as the kernel wrote it at connect, which tells a later
    /// daemon whether the device is still the one we connected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_pid: Option<String>,
    /// For nbd: how many sockets the kernel has to the daemon.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connections: Option<usize>,
}

impl AttachReport {
    /// "DEVICE through METHOD (details)", for people.
    pub fn describe(&self) -> String {
        match self.connections {
            Some(n) => format!(
                "{} through the kernel nbd driver ({n} connection{} to the daemon)",
                self.device,
                if n == 1 { "" } else { "s" }
            ),
            None => format!(
                "{} through {} ({}direct I/O on {})",
                self.device,
                self.method,
                if self.direct_io { "" } else { "no " },
                self.file
            ),
        }
    }
}

/// Whether the kernel nbd driver is usable here, and if not, why.
pub fn kernel_nbd() -> std::result::Result<(), String> {
    if !Path::new("/sys/module/nbd").exists() {
        return Err("the kernel has no nbd driver loaded (no /sys/module/nbd; `modprobe nbd` where the module exists)".into());
    }
    super::nbd_netlink::family_available().map_err(|e| {
        format!("the nbd module is loaded but its netlink family does not answer ({e}); the kernel is too old for netlink nbd")
    })
}

/// N of /dev/nbdN.
pub fn nbd_index(device: &str) -> Option<u32> {
    device.strip_prefix("/dev/nbd")?.parse().ok()
}

/// /sys/block/nbdN/pid: present while the device is connected.
pub fn nbd_pid(index: u32) -> Option<String> {
    std::fs::read_to_string(format!("/sys/block/nbd{index}/pid"))
        .ok()
        .map(|s| s.trim().to_string())
}

/// Disconnects /dev/nbdN through netlink.
pub fn nbd_disconnect(index: u32) -> Result<()> {
    super::nbd_netlink::disconnect(index)
        .map_err(|e| Error::io(format!("netlink NBD_CMD_DISCONNECT of /dev/nbd{index}"), e))
}

pub fn fuse_dir(run_dir: &RunDir, name: &str) -> PathBuf {
    run_dir.dir.join(format!("{name}.fuse"))
}

pub fn record_path(run_dir: &RunDir, name: &str) -> PathBuf {
    run_dir.dir.join(format!("{name}.attach"))
}

/// Attaches a loop device to `file`, with direct I/O when the kernel accepts it.
pub fn losetup(file: &Path) -> Result<(String, bool)> {
    for direct in [true, false] {
        let mut cmd = Command::new("losetup");
        cmd.arg("--find").arg("--show");
        if direct {
            cmd.arg("--direct-io=on");
        }
        let out = cmd
            .arg(file)
            .output()
            .map_err(|e| Error::io("cannot run losetup (package mount)", e))?;
        if out.status.success() {
            return Ok((
                String::from_utf8_lossy(&out.stdout).trim().to_string(),
                direct,
            ));
        }
        if !direct {
            return Err(Error::new(
                ErrorKind::Io,
                format!(
                    "losetup {} failed: {}",
                    file.display(),
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            ));
        }
    }
    unreachable!("the loop returns on its last pass")
}

/// Detaches a loop device.
pub fn loop_detach(device: &str) -> Result<()> {
    let out = Command::new("losetup")
        .arg("-d")
        .arg(device)
        .output()
        .map_err(|e| Error::io("cannot run losetup", e))?;
    if !out.status.success() {
        return Err(Error::new(
            ErrorKind::Io,
            format!(
                "losetup -d {device} failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        ));
    }
    Ok(())
}

/// Undoes mountinfo's octal escapes (`\040` for a space, `\011`, `\012`, `\134`).
fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let v = (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether the loop device still exists (still has a backing file).
pub fn loop_still_attached(device: &str) -> bool {
    Path::new(device)
        .file_name()
        .map(|b| {
            Path::new(&format!(
                "/sys/block/{}/loop/backing_file",
                b.to_string_lossy()
            ))
            .exists()
        })
        .unwrap_or(false)
}

/// Where `device` (a block device path) is mounted or held, if anywhere.
pub fn in_use_by(device: &str) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let rdev = std::fs::metadata(device).ok()?.rdev();
    let id = format!("{}:{}", libc::major(rdev), libc::minor(rdev));
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    for line in mounts.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() > 4 && f[2] == id {
            return Some(format!("mounted on {}", unescape_mountinfo(f[4])));
        }
    }
    let base = Path::new(device).file_name()?.to_string_lossy().to_string();
    let holder = std::fs::read_dir(format!("/sys/block/{base}/holders"))
        .ok()?
        .flatten()
        .next()?;
    Some(format!("held by {}", holder.file_name().to_string_lossy()))
}

/// Whether `dir` is a mount point (per /proc/self/mountinfo).
pub fn is_mount_point(dir: &Path) -> bool {
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = dir.to_string_lossy();
    mounts.lines().any(|l| {
        l.split_whitespace()
            .nth(4)
            .is_some_and(|f| unescape_mountinfo(f) == want)
    })
}

/// Lazily unmounts `dir` (works on a dead FUSE mount: "transport endpoint is not connected").
pub fn lazy_unmount(dir: &Path) {
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()) else {
        return;
    };
    // SAFETY: umount2 reads a NUL-terminated path we own.
    unsafe {
        libc::umount2(c.as_ptr(), libc::MNT_DETACH);
    }
}

/// Cleans up after a daemon that died with its array attached: detaches a loop device that
/// still points into our FUSE directory and unmounts the dead mount.
pub fn cleanup_stale(run_dir: &RunDir, name: &str) {
    let record = record_path(run_dir, name);
    let dir = fuse_dir(run_dir, name);
    if let Ok(text) = std::fs::read_to_string(&record) {
        if let Ok(r) = serde_json::from_str::<AttachReport>(&text) {
            if let (Some(index), Some(pid)) = (nbd_index(&r.device), &r.kernel_pid) {
                // Still connected to the sockets of the daemon that wrote the record (the pid
                // is the kernel's record of who connected it): I/O on it can only fail now.
                if nbd_pid(index).as_deref() == Some(pid.as_str()) {
                    tracing::info!(
                        "disconnecting {} left connected by a daemon that is gone",
                        r.device
                    );
                    if let Err(e) = nbd_disconnect(index) {
                        tracing::warn!("{e}");
                    }
                }
            }
            let backing = Path::new(&r.device).file_name().and_then(|b| {
                std::fs::read_to_string(format!(
                    "/sys/block/{}/loop/backing_file",
                    b.to_string_lossy()
                ))
                .ok()
            });
            if backing.is_some_and(|b| b.trim().starts_with(&*dir.to_string_lossy())) {
                tracing::info!(
                    "detaching {} left attached by a daemon that is gone",
                    r.device
                );
                let _ = loop_detach(&r.device);
            }
        }
        let _ = std::fs::remove_file(&record);
    }
    if is_mount_point(&dir) {
        tracing::info!("unmounting the dead FUSE mount {}", dir.display());
        lazy_unmount(&dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(
            unescape_mountinfo("/tmp/sp\\040test/run\\040dir"),
            "/tmp/sp test/run dir"
        );
        assert_eq!(unescape_mountinfo("/a\\011b\\134c"), "/a\tb\\c");
        assert_eq!(unescape_mountinfo("/plain/path"), "/plain/path");
        assert_eq!(unescape_mountinfo("/trailing\\04"), "/trailing\\04");
    }
}
