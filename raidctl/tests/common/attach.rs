//! `raidctl attach` / `detach` of the fixture's array: on a host without the kernel nbd
//! driver the daemon mounts its FUSE frontend (RUN_DIR/NAME.fuse/NAME) and puts a loop device
//! on that file.

use std::fs;
use std::os::unix::fs::FileTypeExt;
use std::path::PathBuf;

use super::array::Array;
use super::mounts::{backing_file, is_mount_point};
use super::s;

impl Array {
    pub fn fuse_dir(&self) -> PathBuf {
        self.run_dir.join(format!("{}.fuse", self.name))
    }

    pub fn fuse_file(&self) -> PathBuf {
        self.fuse_dir().join(&self.name)
    }

    /// `raidctl attach NAME`: stdout must be exactly one line, a /dev/loopN block device on
    /// the FUSE file, which must be mounted.
    pub fn attach(&mut self) -> String {
        self.attaching = true;
        let ran = self.ok(&["attach", &self.name]);
        let dev = ran.stdout.trim_end_matches('\n').to_string();
        assert!(
            !dev.contains('\n') && ran.stdout == format!("{dev}\n"),
            "attach must print exactly one line (the device) on stdout:\n{}",
            ran.describe()
        );
        let number = dev.strip_prefix("/dev/loop").unwrap_or_default();
        assert!(
            !number.is_empty() && number.bytes().all(|b| b.is_ascii_digit()),
            "attach printed {dev:?}, expected /dev/loopN:\n{}",
            ran.describe()
        );
        self.attached_devices.push(dev.clone());
        self.assert_loop_on_fuse(&dev);
        dev
    }

    fn assert_loop_on_fuse(&self, dev: &str) {
        let meta = fs::metadata(dev).unwrap_or_else(|e| panic!("{dev} does not exist: {e}"));
        assert!(
            meta.file_type().is_block_device(),
            "{dev} is not a block device"
        );
        assert_eq!(
            backing_file(dev).as_deref(),
            Some(s(&self.fuse_file()).as_str()),
            "{dev} should be a loop device on the FUSE file"
        );
        assert!(
            is_mount_point(&self.fuse_dir()),
            "attach succeeded but {} is not mounted",
            self.fuse_dir().display()
        );
    }

    /// `raidctl detach NAME`, which must succeed and leave neither loop device nor FUSE mount.
    pub fn detach(&mut self, dev: &str) {
        self.ok(&["detach", &self.name]);
        assert_ne!(
            backing_file(dev),
            Some(s(&self.fuse_file())),
            "after detach, {dev} is still a loop device on the FUSE file\n  daemon log: {}",
            self.log_tail()
        );
        assert!(
            !is_mount_point(&self.fuse_dir()),
            "after detach, {} is still mounted",
            self.fuse_dir().display()
        );
        let st = self.status();
        assert_eq!(
            st["attachments"].as_array().map(Vec::len),
            Some(0),
            "after detach, status still shows attachments:\n{st:#}"
        );
    }
}
