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

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

mod common;
use common::array::{Array, Spec};
use common::files::{assert_same_range, fill_random, sha256_of};
use common::pids::{is_raidctl, process_alive};
use common::process::{cmd, run, run_with_timeout};
use common::rng::Rng;
use common::s;
use common::tools::require;

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
/// How much the copy tests move (or the export size, if smaller).
const COPY_BYTES: u64 = 64 * MIB;
/// The largest READ/WRITE payload the server advertises (and every client defaults to).
const MAX_PAYLOAD: u64 = 32 * MIB;

/// `raidctl create NAME --level L --chunk 64K --size 64M m0..m{n-1}` in a fresh directory.
fn create(name: &str, level: &str, members: usize) -> Array {
    require_root();
    Array::create(Spec::new(name, level, members))
}

/// The array, created and assembled from all its members.
fn assembled(name: &str, level: &str, members: usize) -> Array {
    let mut fx = create(name, level, members);
    fx.assemble();
    fx
}

fn require_root() {
    common::tools::require_root("attach loop devices and mount filesystems");
}

/// Asserts the first `len` bytes of `a` and `b` are equal.
fn assert_same_prefix(a: &Path, b: &Path, len: u64, what: &str) {
    assert_same_range(a, b, 0, len, what);
}

/// nbdsh runs `python3 -m nbd` with the first python3 on $PATH. A python3 from pyenv and the
/// like cannot import the Debian module, so fall back to the system one if needed.
fn nbdsh() -> Command {
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

// ---------------------------------------------------------------------------------------------
// The client suite: nbdinfo, qemu-img, qemu-io, nbdcopy, fio, nbdsh
// ---------------------------------------------------------------------------------------------

/// nbdinfo --json / --list / --map agree with `raidctl status`.
fn check_nbdinfo(fx: &Array, uri: &str, read_only: bool) {
    let nbdinfo = require("nbdinfo", "libnbd-bin");
    let size = fx.size();
    let ran = run(fx.command(&nbdinfo, &["--json", uri])).ok();
    let info: Value = serde_json::from_str(&ran.stdout)
        .unwrap_or_else(|e| panic!("nbdinfo --json is not JSON ({e}):\n{}", ran.describe()));
    let exports = info["exports"].as_array().expect("nbdinfo lists exports");
    assert_eq!(exports.len(), 1, "one export expected:\n{}", ran.stdout);
    let e = &exports[0];
    let ctx = format!("nbdinfo --json {uri}:\n{}", ran.stdout);
    assert_eq!(
        e["export-size"].as_u64(),
        Some(size),
        "export size vs status size_bytes: {ctx}"
    );
    let mut expect_true = vec!["can_flush", "can_fua", "can_multi_conn"];
    if !read_only {
        expect_true.extend(["can_trim", "can_zero"]);
    }
    for flag in expect_true {
        assert_eq!(e[flag].as_bool(), Some(true), "{flag}: {ctx}");
    }
    assert_eq!(
        e["is_read_only"].as_bool(),
        Some(read_only),
        "is_read_only: {ctx}"
    );
    if read_only {
        // Write-type commands must not be advertised on a read-only export.
        assert_eq!(e["can_trim"].as_bool(), Some(false), "can_trim: {ctx}");
        assert_eq!(e["can_zero"].as_bool(), Some(false), "can_zero: {ctx}");
    }
    assert_eq!(
        e["block_size_minimum"].as_u64(),
        Some(512),
        "minimum: {ctx}"
    );
    let preferred = e["block_size_preferred"]
        .as_u64()
        .expect("preferred block size");
    assert!(
        preferred.is_power_of_two() && (512..=MAX_PAYLOAD).contains(&preferred),
        "preferred block size {preferred} must be a power of two in 512..=32M: {ctx}"
    );
    assert_eq!(
        e["block_size_maximum"].as_u64(),
        Some(MAX_PAYLOAD),
        "maximum: {ctx}"
    );
    assert_eq!(
        size % 512,
        0,
        "the export size must be a multiple of the minimum block size"
    );

    let ran = run(fx.command(&nbdinfo, &["--list", uri])).ok();
    assert!(
        ran.stdout.contains(&format!("export=\"{}\"", fx.name)),
        "nbdinfo --list does not list export {:?}:\n{}",
        fx.name,
        ran.describe()
    );

    // --map: contiguous extents from 0 covering the whole export.
    let ran = run(fx.command(&nbdinfo, &["--map", uri])).ok();
    let mut next = 0u64;
    for line in ran.stdout.lines().filter(|l| !l.trim().is_empty()) {
        let f: Vec<&str> = line.split_whitespace().collect();
        let parsed = (f.len() >= 3)
            .then(|| Some((f[0].parse::<u64>().ok()?, f[1].parse::<u64>().ok()?)))
            .flatten();
        let (off, len) =
            parsed.unwrap_or_else(|| panic!("odd --map line {line:?}:\n{}", ran.stdout));
        assert_eq!(
            off, next,
            "--map extents are not contiguous:\n{}",
            ran.stdout
        );
        assert!(len > 0, "empty extent in --map:\n{}", ran.stdout);
        next = off + len;
    }
    assert_eq!(
        next, size,
        "--map does not cover the export:\n{}",
        ran.stdout
    );
}

/// qemu-img convert a file into the export and back out.
fn check_qemu_img(fx: &Array, uri: &str, n: u64, seed: u64) {
    let qemu_img = require("qemu-img", "qemu-utils");
    let src = fx.path("qemu-src.img");
    let out = fx.path("qemu-out.img");
    // Some zeroes too: qemu-img writes those as WRITE_ZEROES or skips them.
    fill_random(&src, n, seed, &[(n / 3, 2 * MIB)]);
    run(fx.command(
        &qemu_img,
        &["convert", "-n", "-f", "raw", "-O", "raw", &s(&src), uri],
    ))
    .ok();
    run(fx.command(
        &qemu_img,
        &["convert", "-f", "raw", "-O", "raw", uri, &s(&out)],
    ))
    .ok();
    assert_same_prefix(&src, &out, n, "qemu-img convert in and out");
    let _ = fs::remove_file(&out);
    // qemu-img map: base:allocation block status (qemu always sets REQ_ONE).
    let ran = run(fx.command(&qemu_img, &["map", "--output=json", "-f", "raw", uri])).ok();
    let map: Value = serde_json::from_str(&ran.stdout)
        .unwrap_or_else(|e| panic!("qemu-img map is not JSON ({e}):\n{}", ran.describe()));
    let mut next = 0;
    for e in map.as_array().expect("a list of extents") {
        assert_eq!(
            e["start"].as_u64(),
            Some(next),
            "qemu-img map:\n{}",
            ran.stdout
        );
        next += e["length"].as_u64().expect("extent length");
    }
    assert_eq!(
        next,
        fx.size(),
        "qemu-img map does not cover the export:\n{}",
        ran.stdout
    );
}

/// One qemu-io command list on one connection; fails on a bad status or pattern.
fn qemu_io(fx: &Array, uri: &str, commands: &[String]) {
    qemu_io_opts(fx, uri, &[], commands)
}

fn qemu_io_opts(fx: &Array, uri: &str, opts: &[&str], commands: &[String]) {
    let qemu_io = require("qemu-io", "qemu-utils");
    let mut args: Vec<String> = opts.iter().map(|o| o.to_string()).collect();
    args.extend(["-f".into(), "raw".into(), uri.into()]);
    for c in commands {
        args.push("-c".into());
        args.push(c.clone());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let ran = run(fx.command(&qemu_io, &args));
    let out = format!("{}{}", ran.stdout, ran.stderr);
    assert!(
        ran.success()
            && !out.contains("Pattern verification failed")
            && !out.to_lowercase().contains("failed"),
        "qemu-io reported a failure:\n{}",
        ran.describe()
    );
}

/// Unaligned (512- but not 4K-aligned) pattern writes, including across chunk and stripe
/// boundaries and at the very end, with the bytes around them checked untouched.
fn check_qemu_io(fx: &Array, uri: &str, size: u64) {
    let head_bg = 0x11u8;
    let tail_bg = 0x22u8;
    let tail_start = size - 64 * KIB;
    // (offset, length, pattern): non-overlapping, 512-aligned, none 4K-aligned at both ends.
    let writes: Vec<(u64, u64, u8)> = vec![
        (1536, 7680, 0xab),
        (12800, 512, 0xcd),
        (64 * KIB - 1024, 2048, 0x5c), // across the first chunk boundary
        (192 * KIB - 512, 1024, 0x3e), // across a RAID5 (3 data chunks) stripe
        (256 * KIB - 2560, 5120, 0x77), // across a 4-chunk stripe
        (500 * KIB + 512, 6656, 0x9d), // inside a chunk
        (size - 3584, 2560, 0xe1),     // near the end
        (size - 512, 512, 0xe2),       // the last sector
    ];
    let mut c = vec![
        format!("write -P {head_bg:#x} 0 1M"),
        format!("write -P {tail_bg:#x} {tail_start} 64k"),
    ];
    for &(off, len, pat) in &writes {
        c.push(format!("write -P {pat:#x} {off} {len}"));
    }
    // Reads: every pattern, and every gap between them at its background.
    let mut reads = Vec::new();
    for (region_start, region_end, bg) in [(0, MIB, head_bg), (tail_start, size, tail_bg)] {
        let mut pos = region_start;
        for &(off, len, pat) in writes
            .iter()
            .filter(|w| w.0 >= region_start && w.0 < region_end)
        {
            if off > pos {
                reads.push(format!("read -P {bg:#x} {pos} {}", off - pos));
            }
            reads.push(format!("read -P {pat:#x} {off} {len}"));
            pos = off + len;
        }
        if pos < region_end {
            reads.push(format!("read -P {bg:#x} {pos} {}", region_end - pos));
        }
    }
    c.extend(reads.iter().cloned());
    qemu_io(fx, uri, &c);
    // Again on a fresh connection: nothing was only in a per-connection cache.
    qemu_io(fx, uri, &reads);
}

/// nbdcopy with 4 connections: file -> export -> file.
fn check_nbdcopy(fx: &Array, uri: &str, n: u64, seed: u64) {
    let nbdcopy = require("nbdcopy", "libnbd-bin");
    let src = fx.path("nbdcopy-src.img");
    let out = fx.path("nbdcopy-out.img");
    // Zero ranges make nbdcopy send zero requests over what qemu-img left there.
    fill_random(&src, n, seed, &[(0, MIB), (n / 2, 3 * MIB + 512 * 3)]);
    run(fx.command(&nbdcopy, &["-C", "4", &s(&src), uri])).ok();
    run(fx.command(&nbdcopy, &["-C", "4", uri, &s(&out)])).ok();
    assert_same_prefix(&src, &out, n, "nbdcopy -C 4 in and out");
    let _ = fs::remove_file(&out);
    let _ = fs::remove_file(&src);
}

/// fio ioengine=nbd: random 4k writes with crc32c verification, then a verify-only pass.
fn check_fio(fx: &Array, uri: &str) {
    let fio = require("fio", "fio");
    let uri_arg = format!("--uri={uri}");
    let common = [
        "--name=nbdjob",
        "--ioengine=nbd",
        uri_arg.as_str(),
        "--rw=randwrite",
        "--bs=4k",
        "--iodepth=32",
        "--size=16M",
        "--offset=4M",
        "--verify=crc32c",
        "--randrepeat=1",
    ];
    for extra in ["--do_verify=1", "--verify_only=1"] {
        let mut args = common.to_vec();
        args.push(extra);
        let ran = run(fx.command(&fio, &args));
        let out = format!("{}{}", ran.stdout, ran.stderr);
        assert!(
            ran.success()
                && !out.contains("verify:")
                && out.contains("err= 0")
                && out.contains("READ:"),
            "fio {extra} failed or found bad data:\n{}",
            ran.describe()
        );
    }
}

/// Protocol errors with libnbd, strict mode off: every bad request gets the spec's errno and
/// the connection stays usable.
const NBDSH_ERRORS: &str = r#"
uri = os.environ["NBD_URI"]
size = int(os.environ["NBD_SIZE"])
h = nbd.NBD()
h.set_strict_mode(0)
h.connect_uri(uri)
assert h.get_size() == size, ("size", h.get_size(), size)

def tolerated(what, f):
    try:
        f()
        print("%s -> success" % what)
    except nbd.Error as e:
        if e.errnum != errno.EINVAL:
            raise AssertionError("%s: got errno %s (%s), expected success or EINVAL" % (what, e.errnum, e.string))
        print("%s -> EINVAL" % what)

n = [0]
def still_works(after):
    n[0] += 1
    data = bytes([n[0] & 0xff]) * 1024 + os.urandom(3072)
    h.pwrite(data, 8192)
    got = h.pread(4096, 8192)
    if got != data:
        raise AssertionError("read-back after %s differs" % after)

expect("misaligned read (offset 1, length 512)", errno.EINVAL, lambda: h.pread(512, 1))
still_works("misaligned read")
expect("misaligned read length (offset 0, length 100)", errno.EINVAL, lambda: h.pread(100, 0))
expect("misaligned write (offset 3)", errno.EINVAL, lambda: h.pwrite(b"x" * 512, 3))
still_works("misaligned write")
expect("read past the end", errno.EINVAL, lambda: h.pread(1024, size - 512))
expect("read at the end", errno.EINVAL, lambda: h.pread(512, size))
expect("read with offset overflow", errno.EINVAL, lambda: h.pread(512, 2**64 - 512))
expect("write past the end", errno.ENOSPC, lambda: h.pwrite(b"y" * 1024, size - 512))
expect("write at the end", errno.ENOSPC, lambda: h.pwrite(b"y" * 512, size))
expect("write with offset overflow", errno.ENOSPC, lambda: h.pwrite(b"y" * 512, 2**64 - 512))
still_works("writes past the end")
tolerated("zero-length read", lambda: h.pread(0, 4096))
tolerated("zero-length write", lambda: h.pwrite(b"", 4096))
tolerated("zero-length trim", lambda: h.trim(0, 4096))
still_works("zero-length requests")
expect("unknown flag 0x100 on a read", errno.EINVAL, lambda: h.pread(512, 0, 0x100))
expect("unknown flag 0x100 on a write", errno.EINVAL, lambda: h.pwrite(b"z" * 512, 0, 0x100))
expect("unknown flag 0x100 on a flush", errno.EINVAL, lambda: h.flush(0x100))
still_works("unknown flags")
expect("trim past the end", errno.EINVAL, lambda: h.trim(4096, size - 2048))
expect("write-zeroes past the end", errno.ENOSPC, lambda: h.zero(4096, size - 2048))
expect("block status without a meta context", errno.EINVAL, lambda: h.block_status(4096, 0, lambda *a: 0))
still_works("bad trim and zero")

# Normal I/O on the same connection: FUA write, DF read, flush, write-zeroes, trim.
data = os.urandom(66048)
h.pwrite(data, 1048576 + 512, nbd.CMD_FLAG_FUA)
assert h.pread(len(data), 1048576 + 512) == data, "FUA write read-back"
assert h.pread(len(data), 1048576 + 512, nbd.CMD_FLAG_DF) == data, "DF read"
h.flush()
h.zero(8192, 1048576 + 4096)
assert h.pread(8192, 1048576 + 4096) == bytes(8192), "write-zeroes read-back"
h.zero(4096, 1048576 + 4096 * 4, nbd.CMD_FLAG_NO_HOLE)
assert h.pread(4096, 1048576 + 4096 * 4) == bytes(4096), "write-zeroes NO_HOLE read-back"
h.trim(65536, 2 * 1048576)
again = os.urandom(65536)
h.pwrite(again, 2 * 1048576)
assert h.pread(65536, 2 * 1048576) == again, "write after trim read-back"
h.flush()
h.shutdown()

# A second connection sees the first one's data (multi-conn, no per-connection cache).
g = nbd.NBD()
g.connect_uri(uri)
got = g.pread(512, 1048576 + 512)
assert got == data[:512], "second connection read-back"
g.shutdown()
print("ALL OK")
"#;

/// What every nbdsh script starts with: the modules, and `expect(what, errno, f)`, which
/// asserts that `f()` fails with `errno`.
const NBDSH_PRELUDE: &str = r#"
import errno, os, nbd

def expect(what, want, f):
    try:
        f()
    except nbd.Error as e:
        if e.errnum != want:
            raise AssertionError("%s: got errno %s (%s), expected %d" % (what, e.errnum, e.string, want))
        print("%s -> errno %d" % (what, e.errnum))
        return
    raise AssertionError("%s: succeeded, expected errno %d" % (what, want))
"#;

/// Runs `script` (after [`NBDSH_PRELUDE`]) in nbdsh, with NBD_URI and NBD_SIZE set; it must
/// succeed and print "ALL OK" (`what` names it in the failure message).
fn run_nbdsh_all_ok(fx: &Array, uri: &str, script: &str, what: &str) {
    let mut c = nbdsh();
    c.args(["-c", &format!("{NBDSH_PRELUDE}{script}")])
        .env("NBD_URI", uri)
        .env("NBD_SIZE", fx.size().to_string())
        .current_dir(&fx.dir);
    let ran = run(c);
    assert!(
        ran.success() && ran.stdout.contains("ALL OK"),
        "{what} failed:\n{}\n  daemon log: {}",
        ran.describe(),
        fx.log_tail()
    );
}

fn check_nbdsh_errors(fx: &Array, uri: &str) {
    run_nbdsh_all_ok(fx, uri, NBDSH_ERRORS, "the nbdsh protocol-error script");
}

/// The whole client suite on one array.
fn client_suite(fx: &mut Array, extra_uris: &[String]) {
    let uri = fx.export_uri();
    let size = fx.size();
    let n = COPY_BYTES.min(size);
    check_nbdinfo(fx, &uri, false);
    for u in extra_uris {
        check_nbdinfo(fx, u, false);
    }
    check_qemu_img(fx, &uri, n, 0x5eed_0001);
    check_qemu_io(fx, &uri, size);
    check_nbdcopy(fx, &uri, n, 0x5eed_0002);
    check_fio(fx, extra_uris.first().unwrap_or(&uri));
    check_nbdsh_errors(fx, &uri);
    // The daemon survived all of it and every client has gone.
    assert!(
        process_alive(fx.pid()),
        "the daemon died:\n{}",
        fx.log_tail()
    );
    wait_for_no_connections(fx);
}

/// Whatever the clients left on the array (writes, zeroes, trims through every path) must
/// read the same with a member missing: copies and parity are consistent. Stops the array.
/// The degraded assemblies are read-only: a writable degraded start records the absent member
/// as faulty (as md does), which would make it stale for the next comparison.
fn check_redundancy(fx: &mut Array, missing_slots: &[usize]) {
    let nbdcopy = require("nbdcopy", "libnbd-bin");
    let size = fx.size();
    let reference = fx.path("full.img");
    run(fx.command(&nbdcopy, &[&fx.export_uri(), &s(&reference)])).ok();
    fx.stop();
    for &k in missing_slots {
        let subset: Vec<String> = (0..fx.members.len())
            .filter(|&i| i != k)
            .map(|i| fx.members[i].clone())
            .collect();
        fx.assemble_devices(&subset, &["--run", "--read-only"]);
        let st = fx.status();
        assert_eq!(st["state"], "degraded", "without slot {k}: {st:#}");
        let out = fx.path(&format!("without-{k}.img"));
        run(fx.command(&nbdcopy, &[&fx.export_uri(), &s(&out)])).ok();
        fx.stop();
        assert_same_prefix(
            &reference,
            &out,
            size,
            &format!("the array read whole vs. without slot {k}"),
        );
        let _ = fs::remove_file(&out);
    }
    let _ = fs::remove_file(&reference);
}

fn wait_for_no_connections(fx: &Array) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let st = fx.status();
        let n = st["connections"].as_u64().expect("status has connections");
        if n == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "status still shows {n} connection(s) 10 s after every client closed:\n{st:#}\n  daemon log: {}",
            fx.log_tail()
        );
        thread::sleep(Duration::from_millis(100));
    }
}

/// A TCP port that was free a moment ago (for --listen tcp::PORT).
fn free_tcp_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr").port()
}

#[test]
fn raid0_with_real_clients() {
    let mut fx = create("r0", "0", 4);
    // An extra unix listener: the same export at a second path.
    let extra = fx.path("extra.sock");
    fx.assemble_with(&[&format!("--listen=unix:{}", s(&extra))]);
    let extra_uri = format!("nbd+unix:///r0?socket={}", s(&extra));
    client_suite(&mut fx, &[extra_uri]);
}

#[test]
fn raid1_with_real_clients() {
    let mut fx = assembled("r1", "1", 2);
    assert!(
        fx.size() < COPY_BYTES,
        "RAID1 of 64M members is smaller than 64 MiB"
    );
    client_suite(&mut fx, &[]);
    check_redundancy(&mut fx, &[0]);
}

#[test]
fn raid5_with_real_clients() {
    let mut fx = assembled("r5", "5", 4);
    client_suite(&mut fx, &[]);
    check_redundancy(&mut fx, &[1, 3]);
}

#[test]
fn raid10_with_real_clients_also_over_tcp() {
    let mut fx = create("r10", "10", 4);
    let port = free_tcp_port();
    fx.assemble_with(&[&format!("--listen=tcp::{port}")]);
    let tcp_uri = format!("nbd://127.0.0.1:{port}/r10");
    let listed = fx.status()["export_uris"].to_string();
    assert!(
        listed.contains(&tcp_uri),
        "status does not list {tcp_uri}: {listed}"
    );
    client_suite(&mut fx, &[tcp_uri]);
    // n2: slots 0/1 and 2/3 mirror each other.
    check_redundancy(&mut fx, &[1, 2]);
}

#[test]
fn degraded_raid5_with_real_clients() {
    let mut fx = create("r5deg", "5", 4);
    // Slot 2 missing: reads of its chunks are reconstructed, writes to it are parity-only.
    let three: Vec<String> = [0, 1, 3].iter().map(|&i| fx.members[i].clone()).collect();
    fx.assemble_devices(&three, &["--run"]);
    let st = fx.status();
    assert_eq!(st["state"], "degraded", "status: {st:#}");
    client_suite(&mut fx, &[]);
    let st = fx.status();
    assert!(
        st["io"]["degraded_reads"].as_u64().unwrap_or(0) > 0,
        "the clients never went through the degraded read path: {st:#}"
    );
}

#[test]
fn read_only_assembly_refuses_writes_with_eperm() {
    let mut fx = assembled("r1ro", "1", 2);
    let uri = fx.export_uri();
    qemu_io(&fx, &uri, &["write -P 0x6b 0 64k".to_string()]);
    fx.stop();
    fx.assemble_with(&["--read-only"]);
    let uri = fx.export_uri();
    assert_eq!(fx.status()["read_only"], true);
    check_nbdinfo(&fx, &uri, true);
    let script = r#"
h = nbd.NBD()
h.set_strict_mode(0)
h.connect_uri(os.environ["NBD_URI"])
assert h.is_read_only(), "the export must say read-only"
expect("write", errno.EPERM, lambda: h.pwrite(b"w" * 4096, 0))
expect("FUA write", errno.EPERM, lambda: h.pwrite(b"w" * 512, 4096, nbd.CMD_FLAG_FUA))
expect("trim", errno.EPERM, lambda: h.trim(4096, 0))
expect("write-zeroes", errno.EPERM, lambda: h.zero(4096, 0))
assert h.pread(65536, 0) == b"\x6b" * 65536, "read-back of what was written before"
h.flush()
h.shutdown()
print("ALL OK")
"#;
    run_nbdsh_all_ok(&fx, &uri, script, "the read-only nbdsh script");
    // qemu-io over the read-only export: reads fine, the data is unchanged.
    qemu_io_opts(&fx, &uri, &["-r"], &["read -P 0x6b 0 64k".to_string()]);
}

/// What FLUSH and FUA acknowledged survives a `kill -9` of the daemon (crash-only design).
#[test]
fn flushed_and_fua_writes_survive_kill_9() {
    let nbdcopy = require("nbdcopy", "libnbd-bin");
    let mut fx = assembled("crash", "5", 4);
    let uri = fx.export_uri();
    let flushed = fx.path("flushed.img");
    fill_random(&flushed, 8 * MIB, 0xc0ffee, &[]);
    run(fx.command(&nbdcopy, &["--flush", "-C", "4", &s(&flushed), &uri])).ok();
    let script = r#"
h = nbd.NBD()
h.connect_uri(os.environ["NBD_URI"])
data = bytes((i * 13 + 7) & 0xff for i in range(1048576))
h.pwrite(data, 16 * 1048576 + 512, nbd.CMD_FLAG_FUA)
print("ALL OK")
"#;
    run_nbdsh_all_ok(&fx, &uri, script, "the FUA write");
    fx.kill9();
    // The stale pid file and sockets are replaced; the array was not stopped cleanly.
    fx.assemble();
    let uri = fx.export_uri();
    let out = fx.path("after-crash.img");
    run(fx.command(&nbdcopy, &[&uri, &s(&out)])).ok();
    assert_same_prefix(&flushed, &out, 8 * MIB, "flushed data after kill -9");
    let got = fs::read(&out).expect("read the copy");
    let want: Vec<u8> = (0..MIB as usize)
        .map(|i| ((i * 13 + 7) & 0xff) as u8)
        .collect();
    let at = (16 * MIB + 512) as usize;
    assert!(
        got[at..at + MIB as usize] == want[..],
        "a FUA write was lost by kill -9"
    );
}

// ---------------------------------------------------------------------------------------------
// ext4 on top: nbdfuse -> loop device -> mkfs.ext4 -> files -> e2fsck -> remount, verify
// ---------------------------------------------------------------------------------------------

fn ext4_roundtrip(name: &str, level: &str, members: usize) {
    require("mkfs.ext4", "e2fsprogs");
    require("e2fsck", "e2fsprogs");
    require("sha256sum", "coreutils");
    let mut fx = assembled(name, level, members);
    let fsdir = fx.mnt.clone();

    // Phase 1: make the filesystem and a tree of files.
    let (mnt, file) = fx.nbdfuse("1");
    let dev = fx.losetup(&file);
    fx.mkfs(&dev);
    fx.mount(&dev);
    let mut rng = Rng::new(0xe47 ^ members as u64);
    let mut sums: BTreeMap<String, String> = BTreeMap::new();
    let dirs = ["a", "b/c", "d", "e/f/g"];
    for d in dirs {
        fs::create_dir_all(fsdir.join(d)).expect("mkdir in the filesystem");
    }
    let mut total = 0u64;
    for i in 0..50 {
        // Mostly small files, some up to 2 MiB (about 20 MiB in all: RAID1 is only ~63 MiB).
        let len = if i == 0 {
            2 * MIB
        } else if rng.chance(1, 4) {
            rng.range(256 * KIB, 2 * MIB)
        } else {
            rng.range(KIB, 256 * KIB)
        };
        let data = rng.bytes(len as usize);
        let rel = format!("{}/file{i:02}.bin", rng.pick(&dirs));
        fs::write(fsdir.join(&rel), &data).expect("write a file in the filesystem");
        sums.insert(rel, sha256_of(&data));
        total += len;
    }
    assert!(total > 10 * MIB, "the tree is too small to mean much");
    run(cmd("sync", &[])).ok();
    fx.umount();
    fx.fsck(&dev, "after writing the tree");
    fx.losetup_detach(&dev);
    fx.nbdfuse_stop(&mnt);

    // Phase 2: stop and reassemble the array (data must be on the members), reattach through
    // a new nbdfuse and loop device (no page cache survives), check and verify every file.
    fx.stop();
    fx.assemble();
    let (mnt, file) = fx.nbdfuse("2");
    let dev = fx.losetup(&file);
    fx.fsck(&dev, "after reassembly");
    fx.mount(&dev);
    let list: String = sums
        .iter()
        .map(|(path, sum)| format!("{sum}  {path}\n"))
        .collect();
    let listfile = fx.path("sha256sums");
    fs::write(&listfile, list).expect("write the checksum list");
    let mut c = cmd("sha256sum", &["--strict", "-c", &s(&listfile)]);
    c.current_dir(&fsdir);
    let ran = run(c);
    assert!(
        ran.success(),
        "files changed on the array:\n{}",
        ran.describe()
    );
    fx.umount();
    fx.losetup_detach(&dev);
    fx.nbdfuse_stop(&mnt);
    assert!(
        process_alive(fx.pid()),
        "the daemon died:\n{}",
        fx.log_tail()
    );
    wait_for_no_connections(&fx);
}

#[test]
fn ext4_on_raid5_through_nbdfuse_and_loop() {
    ext4_roundtrip("ext5", "5", 4);
}

#[test]
fn ext4_on_raid1_through_nbdfuse_and_loop() {
    ext4_roundtrip("ext1", "1", 2);
}

// ---------------------------------------------------------------------------------------------
// A small NBD client of our own (fixed newstyle, GO, simple replies) for raw protocol tests
// ---------------------------------------------------------------------------------------------

const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
const IHAVEOPT: u64 = 0x4948_4156_454F_5054;
const OPT_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
const REQUEST_MAGIC: u32 = 0x2560_9513;
const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
const OPT_EXPORT_NAME: u32 = 1;
const OPT_ABORT: u32 = 2;
const OPT_LIST: u32 = 3;
const OPT_INFO: u32 = 6;
const OPT_GO: u32 = 7;
const OPT_STRUCTURED_REPLY: u32 = 8;
const OPT_LIST_META_CONTEXT: u32 = 9;
const OPT_SET_META_CONTEXT: u32 = 10;
const REP_ACK: u32 = 1;
const REP_SERVER: u32 = 2;
const REP_INFO: u32 = 3;
const REP_ERR_UNSUP: u32 = 0x8000_0001;
const REP_ERR_UNKNOWN: u32 = 0x8000_0006;
const CMD_READ: u16 = 0;
const CMD_WRITE: u16 = 1;
const CMD_DISC: u16 = 2;
const CMD_FLUSH: u16 = 3;
const CMD_TRIM: u16 = 4;
const CMD_BLOCK_STATUS: u16 = 7;
const EINVAL: u32 = 22;
const ENOSPC: u32 = 28;

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes(b[..4].try_into().expect("4 bytes"))
}
fn be64(b: &[u8]) -> u64 {
    u64::from_be_bytes(b[..8].try_into().expect("8 bytes"))
}

fn option_bytes(option: u32, data: &[u8]) -> Vec<u8> {
    let mut v = IHAVEOPT.to_be_bytes().to_vec();
    v.extend_from_slice(&option.to_be_bytes());
    v.extend_from_slice(&(data.len() as u32).to_be_bytes());
    v.extend_from_slice(data);
    v
}

/// INFO/GO data: u32 namelen, name, u16 count, count x u16.
fn go_data(name: &[u8], infos: &[u16]) -> Vec<u8> {
    let mut v = (name.len() as u32).to_be_bytes().to_vec();
    v.extend_from_slice(name);
    v.extend_from_slice(&(infos.len() as u16).to_be_bytes());
    for i in infos {
        v.extend_from_slice(&i.to_be_bytes());
    }
    v
}

/// META_CONTEXT data: u32 namelen, name, u32 count, count x (u32 len, query).
fn meta_data(name: &[u8], queries: &[&[u8]]) -> Vec<u8> {
    let mut v = (name.len() as u32).to_be_bytes().to_vec();
    v.extend_from_slice(name);
    v.extend_from_slice(&(queries.len() as u32).to_be_bytes());
    for q in queries {
        v.extend_from_slice(&(q.len() as u32).to_be_bytes());
        v.extend_from_slice(q);
    }
    v
}

fn request_bytes(flags: u16, kind: u16, cookie: u64, offset: u64, length: u32) -> Vec<u8> {
    let mut v = REQUEST_MAGIC.to_be_bytes().to_vec();
    v.extend_from_slice(&flags.to_be_bytes());
    v.extend_from_slice(&kind.to_be_bytes());
    v.extend_from_slice(&cookie.to_be_bytes());
    v.extend_from_slice(&offset.to_be_bytes());
    v.extend_from_slice(&length.to_be_bytes());
    v
}

struct OptReply {
    option: u32,
    kind: u32,
    data: Vec<u8>,
}

/// A simple reply: its error (0 for success) and the data of a successful READ.
type Reply = io::Result<(u32, Vec<u8>)>;

struct RawClient {
    s: UnixStream,
    size: u64,
    cookie: u64,
}

impl RawClient {
    fn open(sock: &Path, timeout: Duration) -> io::Result<UnixStream> {
        let s = UnixStream::connect(sock)?;
        s.set_read_timeout(Some(timeout))?;
        s.set_write_timeout(Some(timeout))?;
        Ok(s)
    }

    /// Reads the greeting and sends the client flags (FIXED_NEWSTYLE | NO_ZEROES).
    fn greet(s: &mut UnixStream) -> io::Result<()> {
        let mut g = [0u8; 18];
        s.read_exact(&mut g)?;
        if be64(&g) != NBDMAGIC || be64(&g[8..]) != IHAVEOPT {
            return Err(io::Error::other(format!("bad greeting {g:02x?}")));
        }
        s.write_all(&3u32.to_be_bytes())
    }

    fn read_opt_reply(s: &mut UnixStream) -> io::Result<OptReply> {
        let mut h = [0u8; 20];
        s.read_exact(&mut h)?;
        if be64(&h) != OPT_REPLY_MAGIC {
            return Err(io::Error::other(format!("bad option reply magic {h:02x?}")));
        }
        let len = be32(&h[16..]) as usize;
        if len > 1 << 20 {
            return Err(io::Error::other(format!("option reply of {len} bytes")));
        }
        let mut data = vec![0u8; len];
        s.read_exact(&mut data)?;
        Ok(OptReply {
            option: be32(&h[8..]),
            kind: be32(&h[12..]),
            data,
        })
    }

    /// GO with `name`, reading replies until ACK. Returns the export size.
    fn go(s: &mut UnixStream, name: &[u8]) -> io::Result<u64> {
        s.write_all(&option_bytes(OPT_GO, &go_data(name, &[])))?;
        let mut size = None;
        loop {
            let r = Self::read_opt_reply(s)?;
            match r.kind {
                REP_INFO if r.data.len() >= 12 && r.data[..2] == [0, 0] => {
                    size = Some(be64(&r.data[2..]));
                }
                REP_INFO => {}
                REP_ACK => break,
                k => return Err(io::Error::other(format!("GO answered with {k:#x}"))),
            }
        }
        size.ok_or_else(|| io::Error::other("GO succeeded without INFO_EXPORT"))
    }

    fn connect(sock: &Path, timeout: Duration) -> io::Result<RawClient> {
        let mut s = Self::open(sock, timeout)?;
        Self::greet(&mut s)?;
        let size = Self::go(&mut s, b"")?;
        Ok(RawClient { s, size, cookie: 1 })
    }

    /// Sends one request (and its payload); returns its cookie.
    fn send(
        &mut self,
        flags: u16,
        kind: u16,
        offset: u64,
        length: u32,
        data: &[u8],
    ) -> io::Result<u64> {
        self.cookie += 1;
        let mut msg = request_bytes(flags, kind, self.cookie, offset, length);
        msg.extend_from_slice(data);
        self.s.write_all(&msg)?;
        Ok(self.cookie)
    }

    /// Reads one simple reply; `data_len` bytes follow a successful READ.
    fn reply(&mut self, cookie: u64, data_len: usize) -> Reply {
        let mut h = [0u8; 16];
        self.s.read_exact(&mut h)?;
        if be32(&h) != SIMPLE_REPLY_MAGIC {
            return Err(io::Error::other(format!("bad reply magic {h:02x?}")));
        }
        let (err, got) = (be32(&h[4..]), be64(&h[8..]));
        if got != cookie {
            return Err(io::Error::other(format!(
                "reply cookie {got}, expected {cookie}"
            )));
        }
        let mut data = Vec::new();
        if err == 0 && data_len > 0 {
            data = vec![0u8; data_len];
            self.s.read_exact(&mut data)?;
        }
        Ok((err, data))
    }

    /// Sends one request and reads its reply.
    fn call(&mut self, flags: u16, kind: u16, offset: u64, length: u32, data: &[u8]) -> Reply {
        let cookie = self.send(flags, kind, offset, length, data)?;
        let data_len = if kind == CMD_READ { length as usize } else { 0 };
        self.reply(cookie, data_len)
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        match self.call(0, CMD_WRITE, offset, data.len() as u32, data)? {
            (0, _) => Ok(()),
            (e, _) => Err(io::Error::other(format!(
                "WRITE {offset}+{} failed: errno {e}",
                data.len()
            ))),
        }
    }

    fn read(&mut self, offset: u64, len: u32) -> io::Result<Vec<u8>> {
        match self.call(0, CMD_READ, offset, len, &[])? {
            (0, d) => Ok(d),
            (e, _) => Err(io::Error::other(format!(
                "READ {offset}+{len} failed: errno {e}"
            ))),
        }
    }

    /// Reads until the server closes (Ok) or the timeout (Err).
    fn expect_closed(&mut self) -> io::Result<()> {
        let mut buf = [0u8; 4096];
        loop {
            match self.s.read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    }
}

/// Reads and discards until EOF or an error; true if it ended by a timeout.
fn drain(s: &mut UnixStream) -> bool {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return false,
            Ok(_) => {}
            Err(e) => {
                return matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                )
            }
        }
    }
}

#[test]
fn raw_protocol_errors_keep_the_stream_in_sync() {
    let fx = assembled("raw", "0", 4);
    let sock = fx.sock();
    let size = fx.size();
    let t = Duration::from_secs(30);

    // Option haggling: unknown option -> ERR_UNSUP and the haggle goes on; LIST; INFO for an
    // unknown name -> ERR_UNKNOWN; then GO.
    let mut s = RawClient::open(&sock, t).unwrap();
    RawClient::greet(&mut s).unwrap();
    s.write_all(&option_bytes(99, b"whatever")).unwrap();
    let r = RawClient::read_opt_reply(&mut s).unwrap();
    assert_eq!((r.option, r.kind), (99, REP_ERR_UNSUP), "unknown option");
    s.write_all(&option_bytes(OPT_LIST, &[])).unwrap();
    let r = RawClient::read_opt_reply(&mut s).unwrap();
    assert_eq!(r.kind, REP_SERVER, "LIST");
    assert!(r.data.len() >= 4 + 3 && &r.data[4..4 + be32(&r.data) as usize] == b"raw");
    assert_eq!(RawClient::read_opt_reply(&mut s).unwrap().kind, REP_ACK);
    s.write_all(&option_bytes(OPT_INFO, &go_data(b"nosuch", &[])))
        .unwrap();
    assert_eq!(
        RawClient::read_opt_reply(&mut s).unwrap().kind,
        REP_ERR_UNKNOWN
    );
    assert_eq!(RawClient::go(&mut s, b"raw").unwrap(), size);
    let mut c = RawClient { s, size, cookie: 1 };

    let pattern: Vec<u8> = (0..65536u32).map(|i| (i * 7 + 3) as u8).collect();
    c.write(MIB, &pattern).unwrap();
    let check = |c: &mut RawClient, after: &str| {
        let got = c
            .read(MIB, 65536)
            .unwrap_or_else(|e| panic!("after {after}: {e}"));
        assert!(got == pattern, "after {after}: read-back differs");
    };
    // Unknown command: EINVAL, connection goes on.
    assert_eq!(
        c.call(0, 42, 0, 512, &[]).unwrap().0,
        EINVAL,
        "unknown command"
    );
    check(&mut c, "an unknown command");
    // Rejected WRITEs: the payload must be drained to stay in sync.
    let junk = vec![0xeeu8; 65536];
    assert_eq!(
        c.call(0, CMD_WRITE, size - 4096, 65536, &junk).unwrap().0,
        ENOSPC
    );
    check(&mut c, "a WRITE past the end with its payload");
    assert_eq!(
        c.call(0x100, CMD_WRITE, MIB, 4096, &junk[..4096])
            .unwrap()
            .0,
        EINVAL
    );
    check(&mut c, "a WRITE with an unknown flag");
    assert_eq!(
        c.call(0, CMD_WRITE, MIB + 1, 4096, &junk[..4096])
            .unwrap()
            .0,
        EINVAL
    );
    check(&mut c, "a misaligned WRITE");
    let big = vec![0xddu8; (MAX_PAYLOAD + 512) as usize];
    assert_eq!(
        c.call(0, CMD_WRITE, MIB, big.len() as u32, &big).unwrap().0,
        EINVAL,
        "a WRITE above the maximum payload"
    );
    check(&mut c, "a WRITE above the maximum payload");
    drop(big);
    assert_eq!(
        c.call(0, CMD_READ, 0, (MAX_PAYLOAD + 512) as u32, &[])
            .unwrap()
            .0,
        EINVAL
    );
    assert_eq!(
        c.call(0, CMD_FLUSH, 0, 512, &[]).unwrap().0,
        EINVAL,
        "FLUSH with a length"
    );
    assert_eq!(
        c.call(0, CMD_BLOCK_STATUS, 0, 4096, &[]).unwrap().0,
        EINVAL,
        "BLOCK_STATUS without a context"
    );
    assert_eq!(
        c.call(0, CMD_TRIM, size, 4096, &[]).unwrap().0,
        EINVAL,
        "TRIM past the end"
    );
    check(&mut c, "bad FLUSH, READ, TRIM and BLOCK_STATUS");
    // Pipelined: several requests in one go, replies matched by cookie in any order.
    let mut cookies = Vec::new();
    for i in 0..16u64 {
        cookies.push(c.send(0, CMD_READ, MIB + i * 4096, 4096, &[]).unwrap());
    }
    let mut seen = std::collections::HashSet::new();
    for _ in 0..16 {
        let mut h = [0u8; 16];
        c.s.read_exact(&mut h).unwrap();
        assert_eq!((be32(&h), be32(&h[4..])), (SIMPLE_REPLY_MAGIC, 0));
        let cookie = be64(&h[8..]);
        let i = cookies
            .iter()
            .position(|&k| k == cookie)
            .expect("a cookie we sent");
        let mut d = vec![0u8; 4096];
        c.s.read_exact(&mut d).unwrap();
        assert!(
            d[..] == pattern[i * 4096..(i + 1) * 4096],
            "pipelined read {i}"
        );
        assert!(seen.insert(cookie), "cookie {cookie} answered twice");
    }
    // DISC: the server closes.
    c.send(0, CMD_DISC, 0, 0, &[]).unwrap();
    c.expect_closed().expect("the server closes after DISC");

    // Bad request magic: the stream cannot be resynchronised, the server closes.
    let mut c = RawClient::connect(&sock, t).unwrap();
    c.s.write_all(&[0x55u8; 28]).unwrap();
    c.expect_closed()
        .expect("the server closes after a bad request magic");

    // A WRITE whose payload is too large to drain (> 128 MiB): closed, not read forever.
    let mut c = RawClient::connect(&sock, t).unwrap();
    c.send(0, CMD_WRITE, 0, u32::MAX, &[0u8; 4096]).unwrap();
    let _ = c.reply(c.cookie, 0); // an EINVAL reply may come first
    c.expect_closed()
        .expect("the server closes after an undrainable WRITE");

    // An option longer than the server will read: closed.
    let mut s = RawClient::open(&sock, t).unwrap();
    RawClient::greet(&mut s).unwrap();
    let mut hdr = IHAVEOPT.to_be_bytes().to_vec();
    hdr.extend_from_slice(&OPT_GO.to_be_bytes());
    hdr.extend_from_slice(&u32::MAX.to_be_bytes());
    s.write_all(&hdr).unwrap();
    let mut c = RawClient { s, size, cookie: 0 };
    c.expect_closed()
        .expect("the server closes after an oversized option");

    // Unknown client flags: closed.
    let mut s = RawClient::open(&sock, t).unwrap();
    let mut g = [0u8; 18];
    s.read_exact(&mut g).unwrap();
    s.write_all(&0x8000_0003u32.to_be_bytes()).unwrap();
    let mut c = RawClient { s, size, cookie: 0 };
    c.expect_closed()
        .expect("the server closes after unknown client flags");

    // EXPORT_NAME (no option reply header): size, flags, then transmission.
    let mut s = RawClient::open(&sock, t).unwrap();
    s.read_exact(&mut g).unwrap();
    s.write_all(&3u32.to_be_bytes()).unwrap();
    s.write_all(&option_bytes(OPT_EXPORT_NAME, b"raw")).unwrap();
    let mut e = [0u8; 10];
    s.read_exact(&mut e).unwrap();
    assert_eq!(be64(&e), size, "EXPORT_NAME size");
    let mut c = RawClient { s, size, cookie: 0 };
    check(&mut c, "EXPORT_NAME");
    drop(c);

    assert!(
        process_alive(fx.pid()),
        "the daemon died:\n{}",
        fx.log_tail()
    );
    wait_for_no_connections(&fx);
}

// ---------------------------------------------------------------------------------------------
// Robustness: thousands of garbage connections next to a well-behaved client
// ---------------------------------------------------------------------------------------------

/// The region the well-behaved client owns; garbage only ever touches the upper half.
const GOOD_REGION: u64 = MIB;

/// Writes and read-verifies 1 MiB at offset 0 in a loop until told to stop.
fn good_client(sock: PathBuf, stop: Arc<AtomicBool>) -> Result<u64, String> {
    let mut rng = Rng::new(0x600d);
    let mut iterations = 0u64;
    let mut client = None;
    // At least a few rounds, then until the garbage is done.
    while iterations < 5 || !stop.load(Ordering::Relaxed) {
        if iterations.is_multiple_of(8) {
            // A fresh connection now and then: handshakes must keep working too.
            client = None;
        }
        let c = match client.as_mut() {
            Some(c) => c,
            None => client.insert(
                RawClient::connect(&sock, Duration::from_secs(60))
                    .map_err(|e| format!("iteration {iterations}: connect: {e}"))?,
            ),
        };
        let data = rng.bytes(GOOD_REGION as usize);
        let fail = |what: &str, e: io::Error| format!("iteration {iterations}: {what}: {e}");
        // Write as 4 pipelined 256 KiB requests, then read back in 2 halves.
        let mut cookies = Vec::new();
        for i in 0..4usize {
            let part = &data[i * 256 * 1024..(i + 1) * 256 * 1024];
            cookies.push(
                c.send(
                    0,
                    CMD_WRITE,
                    (i * 256 * 1024) as u64,
                    part.len() as u32,
                    part,
                )
                .map_err(|e| fail("write", e))?,
            );
        }
        for _ in 0..4 {
            let mut h = [0u8; 16];
            c.s.read_exact(&mut h).map_err(|e| fail("write reply", e))?;
            if be32(&h) != SIMPLE_REPLY_MAGIC
                || be32(&h[4..]) != 0
                || !cookies.contains(&be64(&h[8..]))
            {
                return Err(format!("iteration {iterations}: bad write reply {h:02x?}"));
            }
        }
        if iterations.is_multiple_of(3) {
            match c
                .call(0, CMD_FLUSH, 0, 0, &[])
                .map_err(|e| fail("flush", e))?
            {
                (0, _) => {}
                (e, _) => return Err(format!("iteration {iterations}: flush errno {e}")),
            }
        }
        let half = (GOOD_REGION / 2) as u32;
        let mut got = c.read(0, half).map_err(|e| fail("read", e))?;
        got.extend(c.read(half as u64, half).map_err(|e| fail("read", e))?);
        if got != data {
            let first = (0..data.len()).find(|&i| got[i] != data[i]).unwrap_or(0);
            return Err(format!(
                "iteration {iterations}: read-back differs from offset {first} on"
            ));
        }
        iterations += 1;
    }
    Ok(iterations)
}

#[derive(Default)]
struct GarbageStats {
    connections: AtomicU64,
    connect_errors: AtomicU64,
    handshakes: AtomicU64,
    drain_timeouts: AtomicU64,
}

/// An offset for a garbage request: out of range, or in the upper half of the export (never
/// in the well-behaved client's region).
fn garbage_offset(rng: &mut Rng, size: u64) -> u64 {
    match rng.below(7) {
        0 => size / 2 + rng.below(size / 2) / 512 * 512,
        1 => size / 2 + rng.below(size / 2),
        2 => size - rng.below(8) * 512,
        3 => size + rng.below(1 << 20),
        4 => u64::MAX - rng.below(1 << 16),
        5 => rng.next_u64() | (1 << 63),
        _ => size / 2 + rng.below(64) * 512,
    }
}

fn garbage_length(rng: &mut Rng) -> u32 {
    match rng.below(12) {
        0 => 0,
        1 => 1,
        2 => 511,
        3 => 512,
        4 => 4096,
        5 => 65536,
        6 => 1 << 20,
        7 => MAX_PAYLOAD as u32,
        8 => MAX_PAYLOAD as u32 + 512,
        9 => (128 << 20) + 1,
        10 => u32::MAX,
        _ => rng.u32() >> rng.below(32),
    }
}

/// A random transmission-phase message (sent after a successful handshake).
fn garbage_requests(rng: &mut Rng, size: u64, out: &mut Vec<u8>) {
    for _ in 0..rng.range(1, 12) {
        match rng.below(10) {
            0 => {
                // Bad magic: the server must hang up.
                out.extend(rng.bytes(28));
                return;
            }
            1 => {
                // A WRITE announcing a large payload, then the client goes away.
                let len = rng.pick(&[MAX_PAYLOAD as u32, 1 << 24, u32::MAX, (64 << 20) + 512]);
                out.extend(request_bytes(
                    0,
                    CMD_WRITE,
                    rng.next_u64(),
                    garbage_offset(rng, size),
                    len,
                ));
                let n = rng.below(8192) as usize;
                out.extend(rng.bytes(n));
                return;
            }
            2 => {
                // Unknown command, random flags.
                let kind = rng.range(8, 0xffff) as u16;
                out.extend(request_bytes(
                    rng.u32() as u16,
                    kind,
                    rng.next_u64(),
                    rng.next_u64(),
                    rng.u32(),
                ));
            }
            3 => {
                // A small WRITE with (maybe truncated) payload.
                let len = rng.pick(&[0u32, 1, 512, 1024, 4096, 65536]);
                out.extend(request_bytes(
                    {
                        let r = rng.u32() as u16;
                        rng.pick(&[0, 1, 0x100, r])
                    },
                    CMD_WRITE,
                    rng.next_u64(),
                    garbage_offset(rng, size),
                    len,
                ));
                let sent = if rng.chance(1, 4) {
                    rng.below(len as u64 + 1)
                } else {
                    len as u64
                };
                out.extend(rng.bytes(sent as usize));
                if sent < len as u64 {
                    return;
                }
            }
            4 => {
                // DISC, maybe with junk after it.
                out.extend(request_bytes(
                    rng.u32() as u16,
                    CMD_DISC,
                    rng.next_u64(),
                    rng.next_u64(),
                    rng.u32(),
                ));
                let n = rng.below(64) as usize;
                out.extend(rng.bytes(n));
                return;
            }
            5 => {
                // A truncated header.
                let mut r = request_bytes(0, CMD_READ, 1, garbage_offset(rng, size), 4096);
                r.truncate(rng.below(28) as usize);
                out.extend(r);
                return;
            }
            _ => {
                // Known non-write commands with random flags, offsets and lengths.
                let kind = rng.pick(&[CMD_READ, CMD_FLUSH, CMD_TRIM, 5, 6, CMD_BLOCK_STATUS]);
                let flags = if rng.chance(1, 2) {
                    0
                } else {
                    rng.u32() as u16
                };
                out.extend(request_bytes(
                    flags,
                    kind,
                    rng.next_u64(),
                    garbage_offset(rng, size),
                    garbage_length(rng),
                ));
            }
        }
    }
}

/// No bytes with probability num/den, else what `make` draws.
fn empty_or(rng: &mut Rng, num: u64, den: u64, make: impl FnOnce(&mut Rng) -> Vec<u8>) -> Vec<u8> {
    if rng.chance(num, den) {
        Vec::new()
    } else {
        make(rng)
    }
}

/// A random option (name, payload) for the handshake fuzzing.
fn garbage_option(rng: &mut Rng) -> Vec<u8> {
    let names: [&[u8]; 4] = [b"", b"fuzz", b"nosuch", b"\xff\xfe\x00bad"];
    let name = rng.pick(&names);
    let (option, mut data) = match rng.below(9) {
        0 => {
            let infos = [0, 1, 2, 3, rng.u32() as u16];
            let n = rng.below(6) as usize;
            (rng.pick(&[OPT_INFO, OPT_GO]), go_data(name, &infos[..n]))
        }
        1 => (OPT_LIST, empty_or(rng, 1, 2, |r| r.bytes_below(16))),
        2 => (OPT_STRUCTURED_REPLY, empty_or(rng, 3, 4, |r| r.bytes(4))),
        3 => (rng.pick(&[OPT_LIST_META_CONTEXT, OPT_SET_META_CONTEXT]), {
            let queries: [&[u8]; 4] = [b"base:allocation", b"base:", b"qemu:dirty-bitmap:x", b""];
            meta_data(name, &queries[..rng.below(5) as usize])
        }),
        4 => {
            let r = rng.u32();
            (
                rng.pick(&[4u32, 5, 11, 12, 0, 0x8000_0001, r]),
                rng.bytes_below(64),
            )
        }
        5 => (rng.range(0, 12) as u32, rng.bytes_below(300)),
        6 => {
            // A length field that lies about the structure inside.
            let mut d = (rng.u32()).to_be_bytes().to_vec();
            d.extend(rng.bytes_below(32));
            (
                rng.pick(&[
                    OPT_INFO,
                    OPT_GO,
                    OPT_SET_META_CONTEXT,
                    OPT_LIST_META_CONTEXT,
                ]),
                d,
            )
        }
        7 => {
            // Meta context with a huge query count.
            let mut d = 0u32.to_be_bytes().to_vec();
            d.extend_from_slice(&rng.u32().to_be_bytes());
            d.extend(rng.bytes_below(64));
            (OPT_LIST_META_CONTEXT, d)
        }
        _ => (OPT_ABORT, rng.bytes_below(4)),
    };
    // Sometimes mutate a byte of an otherwise well-formed payload.
    if !data.is_empty() && rng.chance(1, 4) {
        let i = rng.below(data.len() as u64) as usize;
        data[i] ^= 1 << rng.below(8);
    }
    option_bytes(option, &data)
}

/// One garbage connection. Errors (resets, timeouts, refusals) are expected and ignored.
fn garbage_connection(
    sock: &Path,
    rng: &mut Rng,
    size: u64,
    stats: &GarbageStats,
    parked: &mut Vec<UnixStream>,
) {
    stats.connections.fetch_add(1, Ordering::Relaxed);
    let mut s = match RawClient::open(sock, Duration::from_secs(2)) {
        Ok(s) => s,
        Err(_) => {
            stats.connect_errors.fetch_add(1, Ordering::Relaxed);
            return;
        }
    };
    let mut out = Vec::new();
    let result: io::Result<()> = (|| {
        match rng.below(10) {
            0 => {
                // Random bytes of random length, greeting unread.
                out.extend(rng.bytes_below(4096));
            }
            1 => {
                // A truncated handshake: close after 0..N bytes of a valid exchange.
                if rng.chance(1, 2) {
                    let mut g = vec![0u8; rng.below(19) as usize];
                    s.read_exact(&mut g)?;
                }
                let mut script = 3u32.to_be_bytes().to_vec();
                script.extend(option_bytes(OPT_GO, &go_data(b"", &[3])));
                script.extend(request_bytes(0, CMD_READ, 1, 0, 4096));
                let cut = rng.below(script.len() as u64 + 1) as usize;
                out.extend_from_slice(&script[..cut]);
            }
            2 => {
                // Greeting + flags, then a run of garbage options.
                RawClient::greet(&mut s)?;
                for _ in 0..rng.range(1, 8) {
                    out.extend(garbage_option(rng));
                }
            }
            3 => {
                // Oversized option lengths.
                RawClient::greet(&mut s)?;
                out.extend(IHAVEOPT.to_be_bytes());
                out.extend(rng.range(0, 12).to_be_bytes()[4..].iter());
                let r = rng.u32();
                let len = rng.pick(&[(64 << 10) + 1, 1 << 24, 1 << 31, u32::MAX, r]);
                out.extend(len.to_be_bytes());
                out.extend(rng.bytes_below(2000));
            }
            4 => {
                // Client flags with unknown bits, or a bad option magic.
                let mut g = [0u8; 18];
                s.read_exact(&mut g)?;
                if rng.chance(1, 2) {
                    out.extend((rng.u32() | 4).to_be_bytes());
                } else {
                    out.extend(3u32.to_be_bytes());
                    out.extend(rng.bytes(16));
                }
                out.extend(rng.bytes_below(100));
            }
            5 | 6 => {
                // A valid handshake (GO), then garbage requests.
                RawClient::greet(&mut s)?;
                RawClient::go(&mut s, b"")?;
                stats.handshakes.fetch_add(1, Ordering::Relaxed);
                garbage_requests(rng, size, &mut out);
            }
            7 => {
                // Structured replies + base:allocation, then garbage requests.
                RawClient::greet(&mut s)?;
                s.write_all(&option_bytes(OPT_STRUCTURED_REPLY, &[]))?;
                RawClient::read_opt_reply(&mut s)?;
                s.write_all(&option_bytes(
                    OPT_SET_META_CONTEXT,
                    &meta_data(b"", &[b"base:allocation"]),
                ))?;
                while RawClient::read_opt_reply(&mut s)?.kind != REP_ACK {}
                RawClient::go(&mut s, b"")?;
                stats.handshakes.fetch_add(1, Ordering::Relaxed);
                garbage_requests(rng, size, &mut out);
            }
            8 => {
                // EXPORT_NAME with one of several names (and maybe without NO_ZEROES).
                let mut g = [0u8; 18];
                s.read_exact(&mut g)?;
                out.extend(rng.pick(&[1u32, 3]).to_be_bytes());
                let name: &[u8] = rng.pick(&[&b""[..], b"fuzz", b"other"]);
                out.extend(option_bytes(OPT_EXPORT_NAME, name));
                garbage_requests(rng, size, &mut out);
            }
            _ => {
                // INFO then ABORT, or ABORT straight away, with junk after it.
                RawClient::greet(&mut s)?;
                if rng.chance(1, 2) {
                    out.extend(option_bytes(OPT_INFO, &go_data(b"", &[1, 2, 3])));
                }
                out.extend(option_bytes(OPT_ABORT, &[]));
                out.extend(rng.bytes_below(64));
            }
        }
        // Send it in a few pieces.
        let mut rest = &out[..];
        while !rest.is_empty() {
            let n = (rng.range(1, 4096) as usize).min(rest.len());
            s.write_all(&rest[..n])?;
            rest = &rest[n..];
        }
        Ok(())
    })();
    if result.is_err() || rng.chance(1, 3) {
        return; // abrupt close
    }
    if rng.chance(1, 40) && parked.len() < 16 {
        // Keep a few half-finished connections open for a while.
        parked.push(s);
        return;
    }
    // Half-close and read whatever the server still says until it hangs up.
    let _ = s.shutdown(std::net::Shutdown::Write);
    if drain(&mut s) {
        stats.drain_timeouts.fetch_add(1, Ordering::Relaxed);
    }
    if parked.len() >= 16 {
        parked.clear();
    }
}

#[test]
fn garbage_clients_do_not_disturb_a_well_behaved_client() {
    const THREADS: u64 = 4;
    const PER_THREAD: u64 = 750;
    let mut fx = assembled("fuzz", "5", 4);
    let sock = fx.sock();
    let size = fx.size();
    let pid = fx.pid();

    let stop = Arc::new(AtomicBool::new(false));
    let (good_tx, good_rx) = mpsc::channel();
    {
        let (sock, stop) = (sock.clone(), stop.clone());
        thread::spawn(move || {
            let _ = good_tx.send(good_client(sock, stop));
        });
    }
    let stats = Arc::new(GarbageStats::default());
    let (tx, rx) = mpsc::channel();
    for t in 0..THREADS {
        let (sock, stats, tx) = (sock.clone(), stats.clone(), tx.clone());
        thread::spawn(move || {
            let mut rng = Rng::new(0xbad_5eed + t);
            let mut parked = Vec::new();
            for _ in 0..PER_THREAD {
                garbage_connection(&sock, &mut rng, size, &stats, &mut parked);
            }
            drop(parked);
            let _ = tx.send(t);
        });
    }
    drop(tx);
    // Hang guard: if the daemon stops answering, fail instead of waiting forever (the
    // fixture's Drop then kills the daemon, which unblocks the threads).
    let deadline = Instant::now() + Duration::from_secs(240);
    for _ in 0..THREADS {
        let left = deadline.saturating_duration_since(Instant::now());
        rx.recv_timeout(left).unwrap_or_else(|_| {
            panic!(
                "garbage clients still not done after 240 s ({} connections so far); daemon log: {}",
                stats.connections.load(Ordering::Relaxed),
                fx.log_tail()
            )
        });
    }
    stop.store(true, Ordering::Relaxed);
    let good = good_rx
        .recv_timeout(Duration::from_secs(120))
        .unwrap_or_else(|_| {
            panic!(
                "the well-behaved client is stuck; daemon log: {}",
                fx.log_tail()
            )
        });
    eprintln!(
        "garbage: {} connections ({} refused, {} full handshakes, {} drains timed out); good client: {good:?}",
        stats.connections.load(Ordering::Relaxed),
        stats.connect_errors.load(Ordering::Relaxed),
        stats.handshakes.load(Ordering::Relaxed),
        stats.drain_timeouts.load(Ordering::Relaxed),
    );
    let iterations = good.unwrap_or_else(|e| {
        panic!(
            "the well-behaved client saw an error: {e}\n  daemon log: {}",
            fx.log_tail()
        )
    });
    assert!(iterations >= 5);
    assert!(
        stats.handshakes.load(Ordering::Relaxed) > 100,
        "too few garbage connections got through the handshake to test the transmission phase"
    );

    assert!(process_alive(pid), "the daemon died:\n{}", fx.log_tail());
    let ran = fx.raidctl(&["status", "fuzz"]);
    assert!(
        ran.success(),
        "status after the garbage:\n{}",
        ran.describe()
    );
    wait_for_no_connections(&fx);
    // Still serving new clients, with the good client's data intact.
    let mut c = RawClient::connect(&sock, Duration::from_secs(60)).expect("a new connection");
    assert_eq!(c.size, size, "export size over GO");
    let a = c.read(0, GOOD_REGION as u32).expect("read the good region");
    drop(c);
    let mut c = RawClient::connect(&sock, Duration::from_secs(60)).expect("a new connection");
    let b = c
        .read(0, GOOD_REGION as u32)
        .expect("read the good region again");
    assert!(a == b, "two reads of the same region differ");
    drop(c);
    check_nbdinfo(&fx, &fx.export_uri(), false);
    let panics = fx.log_panics();
    assert!(panics.is_empty(), "the daemon logged a panic:\n{panics}");
    fx.stop();
}

/// Resident memory of a process, in bytes.
fn rss_bytes(pid: u32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// A client that pipelines maximum-size READs and never reads the replies must not make the
/// daemon hold unbounded memory: each 28-byte request can pin a 32 MiB buffer, and one
/// connection may have 128 in flight (4 GiB), with no limit across connections. The test stops
/// (closes the socket, which frees everything) as soon as the daemon has grown by 1 GiB, so it
/// never pushes the machine further than that.
#[test]
fn pipelined_max_size_reads_do_not_pin_unbounded_memory() {
    const LIMIT: u64 = 1 << 30;
    let fx = assembled("mem", "0", 4);
    let pid = fx.pid();
    let base = rss_bytes(pid).expect("daemon RSS");
    let mut c = RawClient::connect(&fx.sock(), Duration::from_secs(30)).expect("connect");
    for _ in 0..128 {
        c.send(0, CMD_READ, 0, MAX_PAYLOAD as u32, &[])
            .expect("send a READ");
    }
    // Sample until the daemon's memory stops growing (it cannot send more than the socket
    // buffer holds) or passes the limit.
    let mut peak = base;
    let mut last_growth = Instant::now();
    let started = Instant::now();
    while last_growth.elapsed() < Duration::from_secs(2)
        && started.elapsed() < Duration::from_secs(60)
    {
        let now = rss_bytes(pid).unwrap_or(0);
        if now > peak + (16 << 20) {
            last_growth = Instant::now();
        }
        peak = peak.max(now);
        if peak - base > LIMIT {
            break;
        }
        thread::sleep(Duration::from_millis(5));
    }
    drop(c);
    assert!(process_alive(pid), "the daemon died:\n{}", fx.log_tail());
    wait_for_no_connections(&fx);
    assert!(
        peak - base <= LIMIT,
        "one connection with 128 pipelined 32 MiB READs (3.5 KiB of requests, replies never read) \
         made the daemon grow by more than {} MiB (from {} MiB to {} MiB, stopped there): \
         per-connection buffers are bounded only by MAX_IN_FLIGHT x MAX_PAYLOAD = 4 GiB \
         (src/nbd/conn.rs), with no cap across connections",
        LIMIT >> 20,
        base >> 20,
        peak >> 20
    );
}

/// Clients that pipeline big READs and never read the replies must stall only themselves:
/// each connection's buffers are bounded and it keeps a reserve of its own, so a polite client
/// on another connection is still answered (nbdkit and qemu-nbd answer it at once). Before,
/// 24 such clients took the whole server-wide budget and the polite READ never came back.
#[test]
fn clients_that_never_read_replies_do_not_starve_a_polite_one() {
    let fx = assembled("hostile", "0", 4);
    let pid = fx.pid();
    let mut hostile = Vec::new();
    for _ in 0..24 {
        let mut c = RawClient::connect(&fx.sock(), Duration::from_secs(30)).expect("connect");
        // 96 MiB of READs: more than the connection may hold, so it stops being read from.
        for i in 0..96u64 {
            c.send(0, CMD_READ, (i % 8) << 20, 1 << 20, &[])
                .expect("send a READ");
        }
        hostile.push(c);
    }
    // Give the daemon time to take in what it will of the hostile requests.
    thread::sleep(Duration::from_millis(500));
    // The read timeout is a hang guard: without the fix the answer never comes.
    let mut polite = RawClient::connect(&fx.sock(), Duration::from_secs(20)).expect("connect");
    for i in 0..8u64 {
        let data = polite.read(i * 4096, 4096);
        assert!(
            data.is_ok(),
            "the polite client got no answer to READ {i} while 24 clients do not read their replies: {data:?}\n{}",
            fx.log_tail()
        );
    }
    polite
        .write(0, &vec![7u8; 65536])
        .expect("a polite WRITE is answered too");
    drop(polite);
    drop(hostile);
    assert!(process_alive(pid), "the daemon died:\n{}", fx.log_tail());
    wait_for_no_connections(&fx);
}

/// Stop requests that arrive while the daemon is answering earlier ones (over the control
/// socket, as `raidctl stop` sends them) must not crash it: each waiter that gets its answer
/// immediately asks again, as a retrying supervisor would.
#[test]
fn stop_requests_during_shutdown_do_not_crash_the_daemon() {
    use std::io::BufRead;
    const CLIENTS: usize = 48;
    let mut fx = assembled("stops", "1", 2);
    let pid = fx.pid();
    let ctl = fx.run_dir.join("stops.ctl");
    let barrier = Arc::new(std::sync::Barrier::new(CLIENTS));
    let answered = Arc::new(AtomicU64::new(0));
    let (tx, rx) = mpsc::channel();
    let ask = |ctl: &Path| -> io::Result<String> {
        let s = UnixStream::connect(ctl)?;
        s.set_read_timeout(Some(Duration::from_secs(60)))?;
        s.set_write_timeout(Some(Duration::from_secs(60)))?;
        (&s).write_all(b"{\"cmd\":\"stop\"}\n")?;
        let mut line = String::new();
        io::BufReader::new(&s).read_line(&mut line)?;
        Ok(line)
    };
    for _ in 0..CLIENTS {
        let (ctl, barrier, answered, tx) =
            (ctl.clone(), barrier.clone(), answered.clone(), tx.clone());
        thread::spawn(move || {
            barrier.wait();
            if ask(&ctl).is_ok_and(|l| l.contains("\"ok\":true")) {
                answered.fetch_add(1, Ordering::Relaxed);
            }
            for _ in 0..3 {
                if ask(&ctl).is_err() {
                    break;
                }
            }
            let _ = tx.send(());
        });
    }
    drop(tx);
    let deadline = Instant::now() + Duration::from_secs(120);
    for _ in 0..CLIENTS {
        rx.recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .unwrap_or_else(|_| panic!("stop clients stuck; daemon log: {}", fx.log_tail()));
    }
    while process_alive(pid) && is_raidctl(pid) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
    let log = fx.log_panics();
    assert!(
        log.is_empty(),
        "the daemon panicked while answering stop requests ({} of {CLIENTS} first requests \
         answered): src/daemon/mod.rs holds daemon.stop_waiters.borrow_mut() across \
         send_line(..).await, and a stop request handled meanwhile calls borrow_mut() again.\n\
         daemon log:\n{log}",
        answered.load(Ordering::Relaxed)
    );
    assert!(
        answered.load(Ordering::Relaxed) > 0,
        "no stop request got an answer; daemon log:\n{}",
        fx.log_tail()
    );
    // Stopped cleanly: it assembles again as clean.
    fx.assemble();
    assert_eq!(fx.status()["state"], "clean");
}
