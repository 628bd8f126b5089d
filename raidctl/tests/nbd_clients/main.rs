//! Integration tests of the NBD server of `raidctl` against real clients: nbdinfo, qemu-img,
//! qemu-io, nbdcopy, fio (`ioengine=nbd`), nbdsh (libnbd's Python shell, strict mode off to send
//! bad requests), ext4 through nbdfuse + a loop device, and a flood of garbage connections.
//!
//! Every test works on its own [`Array`] fixture, whose cleanup undoes everything the test set
//! up (mounts, loop devices, nbdfuse, daemons), also on failure.
//!
//! The client tools are required: a missing one fails the test with the Debian package to
//! install (CI installs them). Nothing here asserts a duration; timeouts only stop hangs.
//! Must run as root (loop devices, mount).

pub(crate) use common::prelude::*;

#[path = "../common/mod.rs"]
mod common;
mod ext4;
mod garbage;
mod pressure;
mod raw;
mod suite;

// Topic modules reach each other's helpers through the crate root.
#[allow(unused_imports)]
pub(crate) use self::{ext4::*, garbage::*, pressure::*, raw::*, suite::*};

pub(crate) const KIB: u64 = 1 << 10;
pub(crate) const MIB: u64 = 1 << 20;
/// How much the copy tests move (or the export size, if smaller).
pub(crate) const COPY_BYTES: u64 = 64 * MIB;
/// The largest READ/WRITE payload the server advertises (and every client defaults to).
pub(crate) const MAX_PAYLOAD: u64 = 32 * MIB;

/// `raidctl create NAME --level L --chunk 64K --size 64M m0..m{n-1}` in a fresh directory.
pub(crate) fn create(name: &str, level: &str, members: usize) -> Array {
    require_root();
    Array::create(Spec::new(name, level, members))
}

/// The array, created and assembled from all its members.
pub(crate) fn assembled(name: &str, level: &str, members: usize) -> Array {
    let mut fx = create(name, level, members);
    fx.assemble();
    fx
}

pub(crate) fn require_root() {
    common::tools::require_root("attach loop devices and mount filesystems");
}

/// Asserts the first `len` bytes of `a` and `b` are equal.
pub(crate) fn assert_same_prefix(a: &Path, b: &Path, len: u64, what: &str) {
    assert_same_range(a, b, 0, len, what);
}

/// nbdsh runs `python3 -m nbd` with the first python3 on $PATH. A python3 from pyenv and the
/// like cannot import the Debian module, so fall back to the system one if needed.
pub(crate) fn nbdsh() -> Command {
    static PATH_FOR_NBDSH: OnceLock<String> = OnceLock::new();
    let nbdsh = require("nbdsh", "python3-libnbd");
    let path = PATH_FOR_NBDSH.get_or_init(|| {
        let current = std::env::var("PATH").unwrap_or_default();
        for candidate in [current.clone(), format!("/usr/bin:/bin:{current}")] {
            let mut c = Command::new(&nbdsh);
            c.args(["-c", "import nbd"]).env("PATH", &candidate);
            if run_with_timeout(c, Duration::from_secs(60)).success() {
                return candidate;
            }
        }
        panic!(
            "nbdsh cannot import the libnbd Python module (Debian/Ubuntu: apt-get install -y python3-libnbd)"
        )
    });
    let mut c = Command::new(nbdsh);
    c.env("PATH", path);
    c
}
