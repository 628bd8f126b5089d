//! ext4 on a block device of the array, mounted at the fixture's mount point.

use super::array::Array;
use super::process::{cmd, run};
use super::s;

impl Array {
    pub fn mkfs(&self, dev: &str) {
        run(cmd("mkfs.ext4", &["-q", "-F", dev])).ok();
    }

    pub fn mount(&self, dev: &str) {
        run(cmd("mount", &[dev, &s(&self.mnt)])).ok();
    }

    pub fn umount(&self) {
        run(cmd("umount", &[&s(&self.mnt)])).ok();
    }

    /// `e2fsck -fn DEV` must find a clean filesystem (`when` says at which point of the test).
    pub fn fsck(&self, dev: &str, when: &str) {
        let ran = run(cmd("e2fsck", &["-fn", dev]));
        assert!(
            ran.success(),
            "e2fsck -fn {dev} must find a clean filesystem {when}:\n{}\n  daemon log: {}",
            ran.describe(),
            self.log_tail()
        );
    }
}
