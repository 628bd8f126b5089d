//! Exclusive claims on member devices, so two daemons can never drive the same disk.
//!
//! Regular files get a non-blocking `flock(LOCK_EX)`; block devices are opened with `O_EXCL`
//! (which the kernel refuses while a filesystem, md or device-mapper holds the device) and
//! flocked too, so another raidctl sees the same "in use" answer. When a claim fails we name
//! the holder: the pid from /proc/locks, or the mount point / holder from /proc and /sys.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt};

/// Proof of an exclusive claim; released when the file is closed (process exit included).
pub struct Claim {
    _file: File,
}

/// Takes the flock on an open member file. Errors read "PATH is in use by ...".
pub fn claim_path(path: &str, file: &File) -> io::Result<Claim> {
    let fd = file.as_raw_fd();
    // SAFETY: flock on a descriptor we own; no memory is passed.
    let rc = unsafe { libc::flock(fd, libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
            return Err(in_use(path, &holder_of(file)));
        }
        return Err(err);
    }
    if file.metadata()?.file_type().is_file() {
        if let Some(dev) = loop_device_using(file) {
            return Err(in_use(
                path,
                &format!("loop device {dev} (detach it with losetup -d {dev})"),
            ));
        }
    }
    Ok(Claim {
        _file: file.try_clone()?,
    })
}

/// The error for a device someone else holds.
pub fn in_use(path: &str, holder: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::ResourceBusy,
        format!("{path} is in use by {holder}"),
    )
}

/// Best-effort description of who holds `file`: "pid 123 (raidctl)", a mount point, or a
/// kernel holder such as md0.
pub fn holder_of(file: &File) -> String {
    let Ok(meta) = file.metadata() else {
        return "another process".into();
    };
    if let Some(pid) = flock_holder(meta.dev(), meta.ino()) {
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        // A raidctl daemon: name its array too ("raidctl ... assemble NAME ...").
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let args: Vec<String> = cmdline
            .split(|&b| b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if let Some(i) = args.iter().position(|a| a == "assemble") {
            if let Some(name) = args.get(i + 1) {
                return format!("pid {pid} ({}, array {name})", comm.trim());
            }
        }
        return format!("pid {pid} ({})", comm.trim());
    }
    if meta.file_type().is_block_device() {
        return block_holder(meta.rdev()).unwrap_or_else(|| "another user (O_EXCL refused)".into());
    }
    "another process".into()
}

/// Finds the pid holding a FLOCK on (dev, ino) in /proc/locks.
fn flock_holder(dev: u64, ino: u64) -> Option<u32> {
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    let want = format!("{major:02x}:{minor:02x}:{ino}");
    for line in locks.lines() {
        // "1: FLOCK  ADVISORY  WRITE 1234 fe:01:5678 0 EOF"
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() >= 6 && fields[1] == "FLOCK" {
            let id = fields[5];
            let same = id.eq_ignore_ascii_case(&want) || {
                let parts: Vec<&str> = id.split(':').collect();
                parts.len() == 3
                    && u32::from_str_radix(parts[0], 16).ok() == Some(major)
                    && u32::from_str_radix(parts[1], 16).ok() == Some(minor)
                    && parts[2].parse::<u64>().ok() == Some(ino)
            };
            if same {
                return fields[4].parse().ok();
            }
        }
    }
    None
}

/// A mount point or a /sys holder (md, dm) of a block device.
fn block_holder(rdev: u64) -> Option<String> {
    let (major, minor) = (libc::major(rdev), libc::minor(rdev));
    let sys = format!("/sys/dev/block/{major}:{minor}");
    if let Ok(mut holders) = std::fs::read_dir(format!("{sys}/holders")) {
        if let Some(Ok(h)) = holders.next() {
            return Some(format!("kernel device {}", h.file_name().to_string_lossy()));
        }
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    for line in mounts.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() > 4 && f[2] == format!("{major}:{minor}") {
            return Some(format!("the filesystem mounted on {}", f[4]));
        }
    }
    None
}

/// The loop device that has `file` as its backing file, if any: a member must not be in use
/// through a loop device (mounted, or given to md) while we drive it.
pub fn loop_device_using(file: &File) -> Option<String> {
    let meta = file.metadata().ok()?;
    for entry in std::fs::read_dir("/sys/block").ok()?.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        if !name.starts_with("loop") {
            continue;
        }
        let Ok(backing) = std::fs::read_to_string(entry.path().join("loop/backing_file")) else {
            continue;
        };
        let Ok(bmeta) = std::fs::metadata(backing.trim()) else {
            continue;
        };
        if bmeta.dev() == meta.dev() && bmeta.ino() == meta.ino() {
            return Some(format!("/dev/{name}"));
        }
    }
    None
}
