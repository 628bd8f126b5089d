//! `examine` on things that are not members, and exclusive claims.

#[allow(unused_imports)]
use crate::*;

#[test]
fn examine_zeroed_file_says_no_superblock() {
    let fx = Fixture::new();
    let zero = fx.path("zero.img");
    File::create(&zero)
        .and_then(|f| f.set_len(MEMBER_BYTES))
        .expect("zero file");
    let a = args(&["examine", &s(&zero)]);
    let before = snapshot(fx.dir());
    let ran = raidctl(&a);
    assert_unchanged(&before, &snapshot(fx.dir()), "raidctl examine");
    assert_eq!(ran.code(), Some(1), "{}", ran.describe());
    let line = ran.stderr.trim();
    assert!(!line.contains('\n'), "one line:\n{}", ran.describe());
    assert!(
        line.contains("no md superblock on") && line.contains(&s(&zero)),
        "{}",
        ran.describe()
    );
    assert_eq!(line, format!("raidctl: no md superblock on {}", s(&zero)));
}

#[test]
fn examine_nonexistent_path_names_it() {
    let fx = Fixture::new();
    let missing = fx.path("nothing-here.img");
    let a = args(&["examine", &s(&missing)]);
    let ran = raidctl(&a);
    assert!(ran.code().is_some_and(|c| c != 0), "{}", ran.describe());
    let line = ran.stderr.trim();
    assert!(
        !line.is_empty() && !line.contains('\n'),
        "one line:\n{}",
        ran.describe()
    );
    assert!(line.contains(&s(&missing)), "{}", ran.describe());
    assert!(!missing.exists(), "examine must not create the path");
}

// ---------------------------------------------------------------------------------------------
// 5. Exclusive claims
// ---------------------------------------------------------------------------------------------

#[test]
fn create_refuses_member_locked_by_another_process() {
    let (fx, devs) = pattern_members(3);
    let held = File::options()
        .read(true)
        .write(true)
        .open(&devs[1])
        .expect("open member");
    held.try_lock()
        .expect("the test takes an exclusive flock on the member");
    let pid = format!("pid {}", std::process::id());
    assert_refused(
        "a member locked by another process",
        &fx,
        &create_args("x", &["--level", "5"], &devs),
        &[&s(&devs[1]), "is in use by", &pid],
    );
    // Once the lock is released the same command works: the refusal was the claim.
    held.unlock().expect("unlock");
    drop(held);
    raidctl_ok(&create_args("x", &["--level", "5"], &devs));
    mdadm_examine(&devs[1]).assert_checksum_correct();
}
