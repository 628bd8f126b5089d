//! What the kernel has: mounts (per /proc/self/mountinfo) and loop devices (per /sys/block,
//! since `losetup -a` opens every loop device, which would disturb other tests).

use std::fs;
use std::path::Path;

use super::s;

/// One line of /proc/self/mountinfo.
#[derive(Debug, Clone)]
pub struct MountEntry {
    pub point: String,
    pub fstype: String,
    pub source: String,
}

pub fn mounts() -> Vec<MountEntry> {
    let text = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split(' ').collect();
            let sep = f.iter().position(|x| *x == "-")?;
            Some(MountEntry {
                point: unescape_mountinfo(f.get(4)?),
                fstype: f.get(sep + 1)?.to_string(),
                source: unescape_mountinfo(f.get(sep + 2)?),
            })
        })
        .collect()
}

/// Undoes mountinfo's octal escapes (space is \040, tab \011, newline \012, backslash \134).
fn unescape_mountinfo(field: &str) -> String {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether `path` is `dir` or below it.
pub fn under(path: &str, dir: &Path) -> bool {
    let d = s(dir);
    path == d || path.starts_with(&format!("{d}/"))
}

/// Mounts whose mount point is `dir` or below it, in the order they were mounted.
pub fn mounts_under(dir: &Path) -> Vec<MountEntry> {
    mounts()
        .into_iter()
        .filter(|m| under(&m.point, dir))
        .collect()
}

pub fn is_mount_point(dir: &Path) -> bool {
    mounts().iter().any(|m| m.point == s(dir))
}

/// Every attached loop device and its backing file: ("/dev/loopN", path).
pub fn loop_devices() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for entry in fs::read_dir("/sys/block").into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with("loop") {
            continue;
        }
        if let Ok(b) = fs::read_to_string(entry.path().join("loop/backing_file")) {
            out.push((format!("/dev/{name}"), b.trim_end_matches('\n').to_string()));
        }
    }
    out.sort();
    out
}

pub fn backing_file(device: &str) -> Option<String> {
    loop_devices()
        .into_iter()
        .find(|(d, _)| d == device)
        .map(|(_, b)| b)
}
