//! The demo, and bad input to `assemble`, the management verbs and the control socket.

#[allow(unused_imports)]
use crate::*;

#[test]
fn demo_leaves_md_readable_members() {
    let fx = Fixture::new();
    let dir = fx.path("demo");
    let a = args(&["demo", "--dir", &s(&dir)]);
    let ran = raidctl_ok(&a);
    assert!(ran.stdout.contains("verified"), "{}", ran.describe());

    let m0 = mdadm_examine(dir.join("m0.img"));
    m0.assert_checksum_correct();
    assert_eq!(m0.get("State"), "clean", "{}", m0.text);
    assert_eq!(m0.get("Raid Level"), "raid5");
    assert_eq!(m0.get("Device Role"), "Active device 0");
    // Slot 2 failed and the hot spare was rebuilt into it: every slot is claimed again.
    assert_eq!(m0.array_state(), "AAAA", "{}", m0.text);
    let events: u64 = m0.get("Events").parse().expect("events");

    // The surviving members and the former spare agree with m0; the spare now holds slot 2.
    for other in ["m1.img", "m3.img", "spare.img"] {
        let md = mdadm_examine(dir.join(other));
        md.assert_checksum_correct();
        assert_eq!(md.get("Array UUID"), m0.get("Array UUID"), "{}", md.what);
        assert_eq!(md.get("Events"), m0.get("Events"), "{}", md.what);
        assert_eq!(md.array_state(), "AAAA", "{}", md.text);
    }
    let spare = mdadm_examine(dir.join("spare.img"));
    assert_eq!(
        spare.get("Device Role"),
        "Active device 2",
        "{}",
        spare.text
    );
    assert!(
        !spare.text.contains("Recovery Offset"),
        "the rebuild finished: {}",
        spare.text
    );

    // The failed member is still examinable: its own (older) superblock is left as it was.
    let m2 = mdadm_examine(dir.join("m2.img"));
    m2.assert_checksum_correct();
    assert_eq!(m2.get("Array UUID"), m0.get("Array UUID"));
    assert_eq!(m2.get("Device Role"), "Active device 2", "{}", m2.text);
    let m2_events: u64 = m2.get("Events").parse().expect("events");
    assert!(
        m2_events < events,
        "the failed member must be behind: m2 {m2_events}, m0 {events}"
    );

    // raidctl examine reads the same state.
    let text = raidctl_examine_text(&dir.join("m0.img"));
    assert_eq!(text.array_state(), "AAAA", "{}", text.text);
    assert_eq!(text.get("State"), "clean", "{}", text.text);
    let j = raidctl_examine_json(&dir.join("m0.img"));
    assert_eq!(j["array_state"], "AAAA", "{j:#}");
    assert_eq!(j["events"], events, "{j:#}");
    assert_eq!(j["state"], "clean", "{j:#}");
}

/// `demo --level` takes 5 or 6 only; anything else is refused in one line before a file is
/// made.
#[test]
fn demo_refuses_other_levels_and_makes_nothing() {
    let fx = Fixture::new();
    let dir = fx.path("demo-bad");
    for level in ["4", "10"] {
        let a = args(&["demo", "--level", level, "--dir", &s(&dir)]);
        assert_refused(
            &format!("demo --level {level}"),
            &fx,
            &a,
            &["--level", level, "5", "6"],
        );
    }
    assert!(!dir.exists(), "the demo directory was made");
}

/// `demo --level 6`: two members vanish, two spares take their slots, and md reads every
/// member as a clean RAID6 with all five slots claimed.
#[test]
fn demo_level_6_rebuilds_two_spares_and_md_agrees() {
    let fx = Fixture::new();
    let dir = fx.path("demo6");
    let ran = raidctl_ok(&args(&["demo", "--level", "6", "--dir", &s(&dir)]));
    assert!(ran.stdout.contains("slots 1 and 3"), "{}", ran.describe());
    assert!(ran.stdout.contains("verified all"), "{}", ran.describe());
    for (file, role) in [
        ("m0.img", "Active device 0"),
        ("spare0.img", "Active device 1"),
        ("spare1.img", "Active device 3"),
    ] {
        let md = mdadm_examine(dir.join(file));
        md.assert_checksum_correct();
        assert_eq!(md.get("Raid Level"), "raid6", "{}", md.text);
        assert_eq!(md.get("State"), "clean", "{}", md.text);
        assert_eq!(md.get("Device Role"), role, "{}", md.text);
        assert_eq!(md.array_state(), "AAAAA", "{}", md.text);
    }
}

/// A run directory outside the fixture, so the refusal checks see member files only.
pub(crate) fn run_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("raidctl-cli-run-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("cannot create a run directory")
}

#[test]
fn assemble_refuses_bad_input_and_touches_no_member() {
    let (fx, devs) = pattern_members(3);
    let other = [
        fx.member("n0.img"),
        fx.member("n1.img"),
        fx.member("n2.img"),
    ];
    raidctl_ok(&create_args(
        "a1",
        &["--level", "5", "--chunk", "64K"],
        &devs,
    ));
    raidctl_ok(&create_args(
        "a2",
        &["--level", "5", "--chunk", "64K"],
        &other,
    ));
    let run = run_dir();
    let run_arg = s(run.path());
    let assemble = |rest: &[String]| {
        let mut a = args(&["--run-dir", &run_arg, "assemble", "a1"]);
        a.extend(rest.iter().cloned());
        a
    };
    let dev = |p: &PathBuf| s(p);
    assert_refused(
        "no members",
        &fx,
        &assemble(&[]),
        &["no member devices given"],
    );
    let all: Vec<String> = devs.iter().map(dev).collect();
    let mut bad_listen = all.clone();
    bad_listen.extend(args(&["--listen", "tcp:nonsense"]));
    assert_refused(
        "a bad --listen",
        &fx,
        &assemble(&bad_listen),
        &["invalid --listen", "tcp:nonsense"],
    );
    let missing = s(&fx.path("missing.img"));
    assert_refused(
        "a missing member",
        &fx,
        &assemble(&[all[0].clone(), all[1].clone(), missing.clone()]),
        &[&missing],
    );
    // Members of two arrays: the foreign one is named.
    let foreign = dev(&other[0]);
    assert_refused(
        "a foreign member",
        &fx,
        &assemble(&[all[0].clone(), all[1].clone(), foreign.clone()]),
        &["belongs to array", &foreign],
    );
    // Degraded without --run is refused and says how to insist.
    assert_refused(
        "degraded without --run",
        &fx,
        &assemble(&[all[0].clone(), all[1].clone()]),
        &["degraded", "--run"],
    );
    // No daemon was left behind by any of these.
    let ran = raidctl(&args(&["--run-dir", &run_arg, "status", "--json"]));
    assert!(ran.success(), "{}", ran.describe());
    assert_eq!(ran.stdout.trim(), "[]");
}

#[test]
fn management_verbs_refuse_bad_input_in_one_line() {
    let (fx, devs) = pattern_members(3);
    let run = run_dir();
    let r = s(run.path());
    let d0 = s(&devs[0]);
    // Not running: every verb says so, naming the array and how to start it.
    for verb in [
        vec!["fail", "ghost", &d0],
        vec!["remove", "ghost", &d0],
        vec!["add", "ghost", &d0],
        vec!["rebuild", "ghost"],
        vec!["check", "ghost"],
        vec!["attach", "ghost"],
        vec!["detach", "ghost"],
        vec!["stop", "ghost"],
        vec!["status", "ghost"],
        vec!["inject", "ghost", &d0, "--vanish"],
        vec!["replace", "ghost", &d0, "--with", &d0],
        vec!["monitor", "ghost"],
    ] {
        let mut a = args(&["--run-dir", &r]);
        a.extend(args(&verb));
        let case = format!("{} while not running", verb[0]);
        assert_refused(
            &case,
            &fx,
            &a,
            &["ghost", "not running", "raidctl assemble ghost"],
        );
    }
    // Bad arguments are reported before the daemon is asked anything.
    let a = args(&[
        "--run-dir",
        &r,
        "inject",
        "ghost",
        &d0,
        "--read-error",
        "--offset",
        "12Q",
        "--length",
        "4K",
    ]);
    assert_refused("inject with a bad size", &fx, &a, &["invalid size", "12Q"]);
}

#[test]
fn the_control_socket_answers_garbage_with_an_error_and_keeps_serving() {
    use std::io::{BufRead, BufReader, Write as _};
    let mut h = Array::create(Spec::new("cs", "5", 3));
    h.assemble();
    let ctl = h.run_dir.join("cs.ctl");
    let stream = std::os::unix::net::UnixStream::connect(&ctl).expect("control socket");
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    for bad in [
        "this is not json",
        "{\"cmd\":\"make_coffee\"}",
        "{\"cmd\":\"fail\"}",
        "[1,2,3]",
    ] {
        (&stream).write_all(format!("{bad}\n").as_bytes()).unwrap();
        let mut line = String::new();
        reader.read_line(&mut line).expect("an answer");
        let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{bad}: {e}: {line}"));
        assert_eq!(v["ok"], false, "{bad}: {line}");
        assert!(
            v["error"]
                .as_str()
                .is_some_and(|e| e.contains("bad request") && !e.contains('\n')),
            "{bad}: {line}"
        );
    }
    // The same connection still works, and so does the CLI.
    (&stream).write_all(b"{\"cmd\":\"status\"}\n").unwrap();
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert!(
        line.contains("\"ok\":true") && line.contains("\"name\":\"cs\""),
        "{line}"
    );
    // A drill on something that is not a member names the members.
    let ghost = s(&h.path("not-a-member.img"));
    let ran = h.raidctl(&["inject", "cs", &ghost, "--vanish"]);
    let err = &ran.stderr;
    assert!(
        !ran.success() && err.contains("not a member") && err.trim().lines().count() == 1,
        "{err}"
    );
    let ran = h.raidctl(&["status", "cs", "--json"]);
    assert!(ran.success(), "the daemon is still up");
}

/// The exit status the README documents: 0 success, 1 a refused or failed command (one line on
/// stderr), 2 a usage error (clap's message).
#[test]
fn exit_status_is_0_on_success_1_on_failure_2_on_bad_usage() {
    let fx = Fixture::new();
    let ok = raidctl(&args(&["--help"]));
    assert_eq!(ok.code(), Some(0), "{}", ok.describe());
    let usage = raidctl(&args(&["create", "--no-such-flag"]));
    assert_eq!(usage.code(), Some(2), "{}", usage.describe());
    let missing = fx.path("absent.img");
    let failed = raidctl(&args(&["examine", &s(&missing)]));
    assert_eq!(failed.code(), Some(1), "{}", failed.describe());
    assert_eq!(
        failed.stderr.trim().lines().count(),
        1,
        "{}",
        failed.describe()
    );
}
