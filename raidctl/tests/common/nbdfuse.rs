//! The export as a file through nbdfuse, and a loop device on it: the block device of a host
//! without the kernel nbd driver, set up by the test rather than by `raidctl attach`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use super::array::Array;
use super::process::{cmd, run};
use super::s;
use super::tools::require;

impl Array {
    /// Starts `nbdfuse DIR/ URI` (DIR is fuse-TAG in the test's directory) and returns DIR
    /// and DIR/nbd once the export is served there.
    pub fn nbdfuse(&mut self, tag: &str) -> (PathBuf, PathBuf) {
        let nbdfuse = require("nbdfuse", "nbdfuse");
        require("fusermount3", "fuse3");
        assert!(
            Path::new("/dev/fuse").exists(),
            "/dev/fuse is missing: nbdfuse needs FUSE"
        );
        let mnt = self.path(&format!("fuse-{tag}"));
        fs::create_dir_all(&mnt).expect("mkdir fuse mount point");
        let pidfile = self.path(&format!("nbdfuse-{tag}.pid"));
        let _ = fs::remove_file(&pidfile);
        let uri = self.export_uri();
        let mut c = Command::new(nbdfuse);
        c.arg("-P")
            .arg(&pidfile)
            .arg(format!("{}/", s(&mnt)))
            .arg(&uri);
        let label = format!("nbdfuse-{tag}");
        let index = self.children.spawn(&label, c);
        self.fuse_mounts.push((mnt.clone(), index));
        let file = mnt.join("nbd");
        let deadline = Instant::now() + Duration::from_secs(60);
        while !(pidfile.exists() && file.exists()) {
            let exited = self.children.exited(index);
            if exited.is_some() || Instant::now() > deadline {
                panic!(
                    "nbdfuse {} {uri} did not come up ({exited:?}): {}",
                    mnt.display(),
                    self.children.output(&label).1
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
        (mnt, file)
    }

    /// Unmounts an nbdfuse mount and waits for its process to exit.
    pub fn nbdfuse_stop(&mut self, mnt: &Path) {
        let unmounted = (0..50).any(|_| {
            let done = run(cmd("fusermount3", &["-u", &s(mnt)])).success();
            if !done {
                thread::sleep(Duration::from_millis(100));
            }
            done
        });
        if !unmounted {
            run(cmd("fusermount3", &["-u", "-z", &s(mnt)])).ok();
        }
        let at = self.fuse_mounts.iter().position(|(m, _)| m == mnt);
        let (_, index) = self
            .fuse_mounts
            .remove(at.expect("an nbdfuse mount of the test"));
        // nbdfuse exits once unmounted.
        let (status, _) = self.children.wait(index, Duration::from_secs(60));
        assert!(
            status.is_some(),
            "nbdfuse did not exit after fusermount3 -u {}",
            mnt.display()
        );
    }

    /// `losetup -f --show FILE`: the loop device, removed by the cleanup if still there.
    pub fn losetup(&mut self, file: &Path) -> String {
        let losetup = require("losetup", "mount");
        let ran = run(cmd(losetup, &["-f", "--show", &s(file)])).ok();
        let dev = ran.stdout.trim().to_string();
        assert!(dev.starts_with("/dev/loop"), "losetup printed {dev:?}");
        self.loops.push(dev.clone());
        dev
    }

    pub fn losetup_detach(&mut self, dev: &str) {
        run(cmd("losetup", &["-d", dev])).ok();
        self.loops.retain(|l| l != dev);
    }
}
