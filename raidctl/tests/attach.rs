//! Integration tests of `raidctl attach` / `detach` on a host without the kernel nbd driver:
//! the daemon mounts its FUSE frontend (RUN_DIR/NAME.fuse/NAME) and puts a loop device on that
//! file. On top of it: ext4 (mkfs, mount, 200 files written from this process and checked by
//! sha256, e2fsck), members that vanish in the middle of the writes, a RAID0 that fails, the
//! refusal to detach or stop while mounted, and a `kill -9` of the daemon while attached.
//!
//! Every test works on its own [`Array`] fixture, whose cleanup also undoes what attach set up
//! (`umount -l` of the test's mounts, `raidctl detach` and `stop`, `kill -9` of a daemon still
//! alive, `losetup -d` of loop devices backed by files of the test, a lazy unmount of the FUSE
//! directory). Each test ends by asserting that no mount, loop device or FUSE mount of its own
//! remains.
//!
//! Needs root, /dev/fuse, losetup, mkfs.ext4, e2fsck, mount, dd and sha256sum: a missing one
//! fails the test saying what to install. Nothing here asserts a duration; timeouts only stop
//! hangs.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

mod common;
use common::array::{Array, Spec};
use common::files::sha256_of;
use common::mounts::{backing_file, is_mount_point, loop_devices};
use common::pids::process_alive;
use common::process::{cmd, run};
use common::rng::Rng;
use common::s;
use common::status::member;
use common::tools::{require_root, require_tools};

const KIB: u64 = 1 << 10;
/// How many files the ext4 tests write.
const FILES: usize = 200;

/// Panics (never skips) when the environment cannot run these tests, saying what is missing.
fn require_environment() {
    require_root("attach loop devices and mount filesystems");
    assert!(
        Path::new("/dev/fuse").exists(),
        "/dev/fuse is missing: `raidctl attach` serves the array through FUSE (modprobe fuse)"
    );
    require_tools(&[
        ("losetup", "mount"),
        ("mount", "mount"),
        ("umount", "mount"),
        ("mkfs.ext4", "e2fsprogs"),
        ("e2fsck", "e2fsprogs"),
        ("dd", "coreutils"),
        ("sha256sum", "coreutils"),
    ]);
}

/// The array of `spec`, created, assembled and attached: the fixture and its loop device.
fn attached(spec: Spec) -> (Array, String) {
    require_environment();
    let mut h = Array::create(spec);
    h.assemble();
    let dev = h.attach();
    (h, dev)
}

// ---------------------------------------------------------------------------------------------
// Files on the mounted filesystem
// ---------------------------------------------------------------------------------------------

/// Writes FILES files of 1 KiB .. 512 KiB of seeded random data under `root` (each written
/// with std::fs and fsynced; the directory synced at the end), calling `midway` once after
/// half of them, while the next file's data is still only in the page cache. Any error fails.
/// Returns each file's sha256 by relative path.
fn write_files(root: &Path, seed: u64, mut midway: impl FnMut()) -> BTreeMap<String, String> {
    let mut rng = Rng::new(seed);
    let mut expected = BTreeMap::new();
    for i in 0..FILES {
        let rel = format!("d{}/f{i:03}.bin", i % 7);
        let path = root.join(&rel);
        fs::create_dir_all(path.parent().expect("parent")).expect("mkdir on the filesystem");
        let len = rng.range(KIB, 512 * KIB) as usize;
        let data = rng.bytes(len);
        let mut f = fs::File::create(&path)
            .unwrap_or_else(|e| panic!("create {} (file {i}): {e}", path.display()));
        f.write_all(&data)
            .unwrap_or_else(|e| panic!("write {} (file {i}): {e}", path.display()));
        if i == FILES / 2 {
            midway();
        }
        f.sync_all()
            .unwrap_or_else(|e| panic!("fsync {} (file {i}): {e}", path.display()));
        expected.insert(rel, sha256_of(&data));
    }
    syncfs(root).unwrap_or_else(|e| panic!("syncfs {}: {e}", root.display()));
    expected
}

fn syncfs(root: &Path) -> std::io::Result<()> {
    let dir = fs::File::open(root)?;
    // SAFETY: syncfs on a descriptor we own.
    if unsafe { libc::syncfs(dir.as_raw_fd()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Every file under `root` has the recorded sha256 (one sha256sum run over all of them).
fn verify_files(root: &Path, expected: &BTreeMap<String, String>) {
    let mut c = cmd("sha256sum", &["--"]);
    c.args(expected.keys()).current_dir(root);
    let ran = run(c);
    let mut got = BTreeMap::new();
    for line in ran.stdout.lines() {
        if let Some((hash, name)) = line.split_once("  ") {
            got.insert(name.to_string(), hash.to_string());
        }
    }
    let bad: Vec<String> = expected
        .iter()
        .filter_map(|(name, hash)| match got.get(name) {
            Some(h) if h == hash => None,
            Some(h) => Some(format!("{name}: sha256 {h}, expected {hash}")),
            None => Some(format!("{name}: unreadable")),
        })
        .collect();
    assert!(
        bad.is_empty() && ran.success(),
        "{} of {} files do not verify:\n  {}\n{}",
        bad.len(),
        expected.len(),
        bad.iter()
            .take(20)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n  "),
        ran.describe()
    );
}

/// Status lists exactly one attachment: `dev`, through FUSE and a loop device.
fn assert_attached(h: &Array, status: &Value, dev: &str) {
    let atts = status["attachments"]
        .as_array()
        .unwrap_or_else(|| panic!("status has no \"attachments\" array:\n{status:#}"));
    assert_eq!(atts.len(), 1, "one attachment expected:\n{status:#}");
    assert_eq!(atts[0]["device"].as_str(), Some(dev), "{status:#}");
    assert_eq!(atts[0]["method"].as_str(), Some("fuse+loop"), "{status:#}");
    assert_eq!(
        atts[0]["file"].as_str(),
        Some(s(&h.fuse_file()).as_str()),
        "{status:#}"
    );
}

/// Status of an attached array: healthy, or (with `victim`) degraded with `victim` faulty and
/// every other active member in sync.
fn check_array_status(h: &Array, dev: &str, victim: Option<&str>, when: &str) {
    let st = h.status();
    assert_attached(h, &st, dev);
    let Some(v) = victim else {
        assert!(
            matches!(st["state"].as_str(), Some("clean" | "active")),
            "{when}: a healthy array is clean or active:\n{st:#}"
        );
        for m in &h.members {
            assert_eq!(
                member(&st, m)["state"].as_str(),
                Some("in_sync"),
                "{when}: {m}:\n{st:#}"
            );
        }
        return;
    };
    assert_eq!(
        st["state"].as_str(),
        Some("degraded"),
        "{when}: the array lost {v}:\n{st:#}"
    );
    assert_eq!(
        member(&st, v)["state"].as_str(),
        Some("faulty"),
        "{when}: {v} vanished:\n{st:#}"
    );
    for m in h.members.iter().filter(|m| *m != v) {
        assert_eq!(
            member(&st, m)["state"].as_str(),
            Some("in_sync"),
            "{when}: {m}:\n{st:#}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 1. and 2. ext4 on an attached array, optionally with a member vanishing mid-writes
// ---------------------------------------------------------------------------------------------

/// Create, assemble, attach, mkfs, mount, write FILES files (with `vanish`: the member of that
/// index vanishes after half of them), sync, umount, e2fsck, mount, verify, check status,
/// umount, detach, stop.
fn ext4_files(spec: Spec, vanish: Option<usize>, seed: u64) {
    let (mut h, dev) = attached(spec);
    assert_attached(&h, &h.status(), &dev);
    h.mkfs(&dev);
    h.mount(&dev);

    let victim = vanish.map(|i| h.members[i].clone());
    if victim.is_some() && !h.spares.is_empty() {
        // The spare takes the vanished member's slot and is rebuilt online. Held to 1000 KiB/s
        // (md's default minimum), the rebuild of these members cannot finish before the checks
        // below, so "degraded" is what status must say throughout.
        h.raidctl(&[
            "rebuild",
            &h.name,
            "--speed-min",
            "1000",
            "--speed-max",
            "1000",
        ])
        .ok();
    }
    let mnt = h.mnt.clone();
    let expected = write_files(&mnt, seed, || {
        if let Some(v) = &victim {
            let ran = h.raidctl(&["inject", &h.name, v, "--vanish"]);
            assert!(ran.success(), "inject --vanish failed:\n{}", ran.describe());
        }
    });
    check_array_status(&h, &dev, victim.as_deref(), "right after the writes");

    h.umount();
    h.fsck(&dev, "after the writes");
    h.mount(&dev);
    verify_files(&h.mnt, &expected);
    check_array_status(&h, &dev, victim.as_deref(), "after e2fsck and verification");
    let log = h.log_tail();
    assert!(!log.contains("panicked"), "the daemon panicked:\n{log}");

    h.umount();
    h.detach(&dev);
    h.stop();
    h.finish();
}

/// A RAID5 of four 96M members and a spare.
fn r5_with_spare(name: &str) -> Spec {
    Spec::new(name, "5", 4).spares(1).size("96M")
}

#[test]
fn raid5_ext4_through_attach() {
    ext4_files(r5_with_spare("at-r5"), None, 1);
}

#[test]
fn raid5_member_vanishes_during_writes() {
    ext4_files(r5_with_spare("at-r5v"), Some(2), 2);
}

#[test]
fn raid1_member_vanishes_during_writes() {
    let spec = Spec::new("at-r1v", "1", 2).spares(1).size("96M");
    ext4_files(spec, Some(0), 3);
}

#[test]
fn raid10_member_vanishes_during_writes() {
    let spec = Spec::new("at-r10v", "10", 4).extra(&["--layout", "n2"]);
    ext4_files(spec, Some(1), 4);
}

// ---------------------------------------------------------------------------------------------
// 3. RAID0 loses a member: I/O errors, the daemon stays up and says "failed"
// ---------------------------------------------------------------------------------------------

#[test]
fn raid0_member_vanishes_io_fails_and_daemon_stays_up() {
    let (mut h, dev) = attached(Spec::new("at-r0", "0", 3));
    let pid = h.running_pid().expect("daemon running");
    h.mkfs(&dev);
    h.mount(&dev);
    // Some data first, which the array serves fine.
    let mut rng = Rng::new(5);
    for i in 0..10 {
        let len = rng.range(KIB, 512 * KIB) as usize;
        let data = rng.bytes(len);
        fs::write(h.mnt.join(format!("before{i}")), &data).expect("write before the fault");
    }
    syncfs(&h.mnt).expect("syncfs before the fault");

    let victim = h.members[1].clone();
    h.raidctl(&["inject", &h.name, &victim, "--vanish"]).ok();

    // 4 MiB (many 64K chunks) certainly touches every member: the fsync must fail with EIO.
    let data = rng.bytes(4 << 20);
    let path = h.mnt.join("after");
    let result =
        fs::File::create(&path).and_then(|mut f| f.write_all(&data).and_then(|()| f.sync_all()));
    match result {
        Ok(()) => panic!(
            "writing and fsyncing {} succeeded on a RAID0 missing a member\n  daemon log: {}",
            path.display(),
            h.log_tail()
        ),
        Err(e) => assert_eq!(
            e.raw_os_error(),
            Some(libc::EIO),
            "the filesystem should see EIO, got {e}"
        ),
    }
    // Direct reads of the device itself fail too.
    let ran = run(cmd(
        "dd",
        &[
            &format!("if={dev}"),
            "of=/dev/null",
            "bs=1M",
            "count=8",
            "iflag=direct",
        ],
    ));
    assert!(
        !ran.success() && ran.stderr.contains("Input/output error"),
        "dd iflag=direct on {dev} should fail with an I/O error:\n{}",
        ran.describe()
    );

    // The daemon stays up and tells what happened.
    assert!(process_alive(pid), "the daemon died:\n{}", h.log_tail());
    let st = h.status();
    assert_eq!(st["state"].as_str(), Some("failed"), "{st:#}");
    assert_eq!(
        member(&st, &victim)["state"].as_str(),
        Some("faulty"),
        "{st:#}"
    );
    assert_attached(&h, &st, &dev);

    // Cleanup still works: umount (lazily if need be), detach, stop.
    let ran = run(cmd("umount", &[&s(&h.mnt)]));
    if !ran.success() {
        run(cmd("umount", &["-l", &s(&h.mnt)])).ok();
    }
    assert!(!is_mount_point(&h.mnt), "{} still mounted", h.mnt.display());
    h.detach(&dev);
    // Stopping a failed array may report the failure, but the daemon must go away.
    let ran = h.raidctl(&["stop", &h.name]);
    if !ran.success() {
        assert!(
            ran.stderr.trim().lines().count() == 1 && ran.stderr.contains("failed"),
            "stop of a failed array: one stderr line saying it failed expected:\n{}",
            ran.describe()
        );
    }
    h.assert_stopped(Some(pid));
    h.finish();
}

// ---------------------------------------------------------------------------------------------
// 4. detach and stop are refused while the device is mounted
// ---------------------------------------------------------------------------------------------

/// `raidctl WHAT NAME` must be refused: non-zero exit, nothing on stdout, one stderr line
/// naming the mount point; and the daemon, the attachment and the FUSE mount all stay.
fn assert_refused_while_mounted(h: &Array, what: &str, dev: &str, pid: u32) {
    let ran = h.raidctl(&[what, &h.name]);
    let line = ran.stderr.trim();
    assert!(
        !ran.success() && ran.status.is_some(),
        "{what} while mounted must be refused:\n{}",
        ran.describe()
    );
    assert!(
        !line.is_empty() && !line.contains('\n'),
        "{what}: exactly one line on stderr expected:\n{}",
        ran.describe()
    );
    assert!(
        line.contains(&s(&h.mnt)),
        "{what}: the refusal should name the mount point {}:\n{}",
        h.mnt.display(),
        ran.describe()
    );
    assert!(
        ran.stdout.is_empty(),
        "{what}: a refused command prints nothing on stdout:\n{}",
        ran.describe()
    );
    assert!(
        process_alive(pid) && h.running_pid() == Some(pid),
        "{what}: the daemon must still be running:\n{}",
        h.log_tail()
    );
    assert_attached(h, &h.status(), dev);
    assert!(
        is_mount_point(&h.mnt) && is_mount_point(&h.fuse_dir()),
        "{what}: the filesystem and the FUSE mount must stay"
    );
    assert_eq!(backing_file(dev), Some(s(&h.fuse_file())), "{what}: {dev}");
}

#[test]
fn detach_and_stop_refused_while_mounted() {
    let (mut h, dev) = attached(Spec::new("at-busy", "1", 2));
    let pid = h.running_pid().expect("daemon running");
    // A second attach is answered with the same device.
    let again = h.raidctl(&["attach", &h.name]).ok();
    assert_eq!(again.stdout, format!("{dev}\n"), "{}", again.describe());
    h.mkfs(&dev);
    h.mount(&dev);
    fs::write(h.mnt.join("kept"), b"still here").expect("write on the filesystem");

    assert_refused_while_mounted(&h, "detach", &dev, pid);
    assert_refused_while_mounted(&h, "stop", &dev, pid);
    // The filesystem is still served after the refusals.
    syncfs(&h.mnt).expect("syncfs after the refusals");
    assert_eq!(fs::read(h.mnt.join("kept")).expect("read"), b"still here");

    h.umount();
    h.detach(&dev);
    let listed = run(cmd("losetup", &["-a"])).ok();
    assert!(
        !listed
            .stdout
            .lines()
            .any(|l| l.starts_with(&format!("{dev}:")) && l.contains(&s(&h.fuse_file()))),
        "after detach, losetup -a still lists {dev} on the FUSE file:\n{}",
        listed.stdout
    );
    assert!(
        process_alive(pid),
        "detach must not stop the daemon:\n{}",
        h.log_tail()
    );

    // Attach again: a loop device again, with the filesystem intact.
    let dev2 = h.attach();
    assert_attached(&h, &h.status(), &dev2);
    h.fsck(&dev2, "after attaching again");
    h.mount(&dev2);
    assert_eq!(fs::read(h.mnt.join("kept")).expect("read"), b"still here");
    h.umount();

    // Stop while attached but not mounted: detaches and stops.
    h.stop();
    h.finish();
}

/// The loop device is not mounted but held open by a process (as `losetup -a`, blkid or any
/// reader does for a moment). `detach` may refuse, or succeed; if it says it detached, then
/// once the holder lets go neither the loop device nor the FUSE mount may remain.
#[test]
fn detach_while_the_device_is_held_open() {
    let (mut h, dev) = attached(Spec::new("at-held", "1", 2));
    let holder = fs::File::open(&dev).unwrap_or_else(|e| panic!("open {dev}: {e}"));
    let ran = h.raidctl(&["detach", &h.name]);
    if ran.success() {
        drop(holder);
        // Settle guard only: a pending loop autoclear completes when the holder closes.
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline
            && (backing_file(&dev) == Some(s(&h.fuse_file())) || is_mount_point(&h.fuse_dir()))
        {
            thread::sleep(Duration::from_millis(50));
        }
        let fuse_state = match fs::metadata(h.fuse_file()) {
            Ok(_) => "still served".to_string(),
            Err(e) => format!("{e}"),
        };
        assert!(
            !is_mount_point(&h.fuse_dir()) && backing_file(&dev) != Some(s(&h.fuse_file())),
            "detach reported success while {dev} was held open, but after the holder closed \
             it: loop device {dev} backing file {:?}; FUSE mount {} still mounted: {} \
             (its file: {fuse_state})\n{}\n  daemon log: {}",
            backing_file(&dev),
            h.fuse_dir().display(),
            is_mount_point(&h.fuse_dir()),
            ran.describe(),
            h.log_tail()
        );
    } else {
        let line = ran.stderr.trim();
        assert!(
            !line.is_empty() && !line.contains('\n') && line.contains(&dev),
            "a refused detach says why on one stderr line naming {dev}:\n{}",
            ran.describe()
        );
        assert_attached(&h, &h.status(), &dev);
        drop(holder);
        h.detach(&dev);
    }
    h.stop();
    h.finish();
}

// ---------------------------------------------------------------------------------------------
// 5. kill -9 while attached: the next daemon cleans up
// ---------------------------------------------------------------------------------------------

/// Attach, put files on ext4, umount, kill -9 the daemon; the stale FUSE mount and loop device
/// stay. A new `assemble` must clean them up; attach works again and the files are intact.
fn kill9_while_attached(spec: Spec) {
    let (mut h, dev) = attached(spec);
    h.mkfs(&dev);
    h.mount(&dev);
    let mut rng = Rng::new(6);
    let mut expected = BTreeMap::new();
    for i in 0..20 {
        let len = rng.range(KIB, 512 * KIB) as usize;
        let data = rng.bytes(len);
        let rel = format!("f{i:02}");
        fs::write(h.mnt.join(&rel), &data).expect("write");
        expected.insert(rel, sha256_of(&data));
    }
    h.umount();

    let old_pid = h.kill9();
    // What the dead daemon left: the test is only meaningful if this is there to clean up.
    assert!(
        is_mount_point(&h.fuse_dir()),
        "expected the dead FUSE mount {} to remain after kill -9",
        h.fuse_dir().display()
    );
    assert_eq!(
        backing_file(&dev),
        Some(s(&h.fuse_file())),
        "expected {dev} to remain on the dead FUSE file after kill -9"
    );

    h.assemble();
    let new_pid = h.running_pid().expect("daemon running");
    assert_ne!(new_pid, old_pid);
    assert!(
        !is_mount_point(&h.fuse_dir()),
        "the new daemon left the dead FUSE mount {} in place\n  daemon log: {}",
        h.fuse_dir().display(),
        h.log_tail()
    );
    let stale: Vec<(String, String)> = loop_devices()
        .into_iter()
        .filter(|(d, b)| h.owns_loop(d, b))
        .collect();
    assert!(
        stale.is_empty(),
        "the new daemon left loop devices of the old one: {stale:?}\n  daemon log: {}",
        h.log_tail()
    );
    assert_eq!(
        h.status()["attachments"].as_array().map(Vec::len),
        Some(0),
        "a new daemon starts detached"
    );

    let dev2 = h.attach();
    assert_attached(&h, &h.status(), &dev2);
    h.fsck(&dev2, "after a new daemon attached");
    h.mount(&dev2);
    verify_files(&h.mnt, &expected);
    h.umount();
    h.stop();
    h.finish();
}

#[test]
fn kill_9_while_attached_next_assemble_cleans_up() {
    kill9_while_attached(Spec::new("at-kill", "5", 4));
}

// ---------------------------------------------------------------------------------------------
// 6. Paths with a space: /proc/self/mountinfo escapes it as \040
// ---------------------------------------------------------------------------------------------

#[test]
fn refusal_names_a_mount_point_that_contains_a_space() {
    let (mut h, dev) = attached(Spec::new("at-space", "1", 2).mount_point("mnt point"));
    let pid = h.running_pid().expect("daemon running");
    h.mkfs(&dev);
    h.mount(&dev);
    assert_refused_while_mounted(&h, "detach", &dev, pid);
    h.umount();
    h.detach(&dev);
    h.stop();
    h.finish();
}

#[test]
fn kill_9_cleanup_with_a_space_in_the_run_directory() {
    kill9_while_attached(Spec::new("at-kill-sp", "1", 2).run_dir("run dir"));
}
