//! The client suite (nbdinfo, qemu-img, qemu-io, nbdcopy, fio, nbdsh) on every level, degraded,
//! read-only, and flushed writes across kill -9.

#[allow(unused_imports)]
use crate::*;

/// nbdinfo --json / --list / --map agree with `raidctl status`.
pub(crate) fn check_nbdinfo(fx: &Array, uri: &str, read_only: bool) {
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
pub(crate) fn check_qemu_img(fx: &Array, uri: &str, n: u64, seed: u64) {
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
pub(crate) fn qemu_io(fx: &Array, uri: &str, commands: &[String]) {
    qemu_io_opts(fx, uri, &[], commands)
}

pub(crate) fn qemu_io_opts(fx: &Array, uri: &str, opts: &[&str], commands: &[String]) {
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
pub(crate) fn check_qemu_io(fx: &Array, uri: &str, size: u64) {
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
pub(crate) fn check_nbdcopy(fx: &Array, uri: &str, n: u64, seed: u64) {
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
pub(crate) fn check_fio(fx: &Array, uri: &str) {
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
pub(crate) const NBDSH_ERRORS: &str = r#"
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
pub(crate) const NBDSH_PRELUDE: &str = r#"
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
pub(crate) fn run_nbdsh_all_ok(fx: &Array, uri: &str, script: &str, what: &str) {
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

pub(crate) fn check_nbdsh_errors(fx: &Array, uri: &str) {
    run_nbdsh_all_ok(fx, uri, NBDSH_ERRORS, "the nbdsh protocol-error script");
}

/// The whole client suite on one array.
pub(crate) fn client_suite(fx: &mut Array, extra_uris: &[String]) {
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
pub(crate) fn check_redundancy(fx: &mut Array, missing_slots: &[usize]) {
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

pub(crate) fn wait_for_no_connections(fx: &Array) {
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
pub(crate) fn free_tcp_port() -> u16 {
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
