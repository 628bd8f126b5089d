//! Bad input to `create`: refused with one line, nothing touched.

#[allow(unused_imports)]
use crate::*;

/// Three (or `n`) 64 MiB pattern members in a fresh fixture.
pub(crate) fn pattern_members(n: usize) -> (Fixture, Vec<PathBuf>) {
    let fx = Fixture::new();
    let names: Vec<String> = (0..n).map(|i| format!("m{i}.img")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let devs = fx.members(&refs);
    (fx, devs)
}

/// One `raidctl create` that must be refused (see [`assert_refused`]), on a fresh fixture of
/// 64 MiB pattern members (DIR/m0.img, DIR/m1.img, ...). In the arguments, "{members}" stands
/// for every member's path and "{dir}" for the fixture's directory (in what the error line
/// must contain too).
pub(crate) struct Refusal(
    /// The case: the test this row was before the table, named in every failure message.
    &'static str,
    /// How many pattern members the fixture holds.
    usize,
    /// The arguments after `create`.
    &'static [&'static str],
    /// What the error line must contain.
    &'static [&'static str],
);

impl Refusal {
    pub(crate) fn check(&self) {
        let Refusal(case, members, arguments, expect) = *self;
        let (fx, devs) = pattern_members(members);
        let dir = s(fx.dir());
        let mut a = args(&["create"]);
        for arg in arguments {
            match *arg {
                "{members}" => a.extend(devs.iter().map(|d| s(d))),
                arg => a.push(arg.replace("{dir}", &dir)),
            }
        }
        let expect: Vec<String> = expect.iter().map(|e| e.replace("{dir}", &dir)).collect();
        let expect: Vec<&str> = expect.iter().map(String::as_str).collect();
        assert_refused(case, &fx, &a, &expect);
    }
}

/// An array name of 40 characters, longer than md's 32.
pub(crate) const LONG_NAME: &str = "nnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnn";

/// Refusals of `create`, one a line: (case, members, arguments, what the error line contains).
#[rustfmt::skip]
pub(crate) const CREATE_REFUSALS: &[Refusal] = &[
    Refusal("raid0_with_internal_bitmap_is_refused", 2, &["x", "--level", "0", "--bitmap", "internal", "{members}"], &["RAID0", "--bitmap internal"]),
    Refusal("refuses_bad_bitmap_chunks (3K)", 3, &["x", "--level", "5", "--bitmap-chunk", "3K", "{members}"], &["--bitmap-chunk", "3K"]),
    Refusal("refuses_bad_bitmap_chunks (1K)", 3, &["x", "--level", "5", "--bitmap-chunk", "1K", "{members}"], &["--bitmap-chunk", "1K"]),
    Refusal("refuses_bad_bitmap_chunks (4G)", 3, &["x", "--level", "5", "--bitmap-chunk", "4G", "{members}"], &["--bitmap-chunk", "4G"]),
    Refusal("refuses_bad_bitmap_chunks (lots)", 3, &["x", "--level", "5", "--bitmap-chunk", "lots", "{members}"], &["--bitmap-chunk", "lots"]),
    Refusal("refuses_bad_bitmap_chunks (no bitmap)", 3, &["x", "--level", "5", "--bitmap", "none", "--bitmap-chunk", "1M", "{members}"], &["--bitmap-chunk needs a bitmap"]),
    Refusal("refuses_level_7", 3, &["x", "--level", "7", "{members}"], &["unknown RAID level", "7", "ec"]),
    Refusal("refuses_raid6_with_three_members", 3, &["x", "--level", "6", "{members}"], &["RAID6", "at least 4"]),
    Refusal("refuses_ec_with_too_few_members", 4, &["x", "--level", "ec", "--parity", "3", "{members}"], &["--parity 3", "at least 5"]),
    Refusal("refuses_ec_with_five_parity_chunks", 8, &["x", "--level", "ec", "--parity", "5", "{members}"], &["--parity 5", "1 to 4"]),
    Refusal("refuses_parity_for_raid5", 4, &["x", "--level", "5", "--parity", "2", "{members}"], &["--parity", "--level ec"]),
    Refusal("refuses_layout_for_ec", 4, &["x", "--level", "ec", "--layout", "left-symmetric", "{members}"], &["--layout", "ec"]),
    Refusal("refuses_unknown_raid6_layout", 4, &["x", "--level", "6", "--layout", "diagonal", "{members}"], &["RAID6 layout", "diagonal", "-6"]),
    Refusal("refuses_bad_chunk_sizes (3K)", 3, &["x", "--level", "5", "--chunk", "3K", "{members}"], &["chunk size", "3K"]),
    Refusal("refuses_bad_chunk_sizes (1000)", 3, &["x", "--level", "5", "--chunk", "1000", "{members}"], &["chunk size", "1000"]),
    Refusal("refuses_bad_chunk_sizes (0)", 3, &["x", "--level", "5", "--chunk", "0", "{members}"], &["chunk size", "0"]),
    Refusal("refuses_raid5_with_two_members", 2, &["x", "--level", "5", "{members}"], &["RAID5", "at least 3"]),
    Refusal("refuses_raid1_with_one_member", 1, &["x", "--level", "1", "{members}"], &["RAID1", "at least 2"]),
    Refusal("refuses_raid10_f3_with_two_members", 2, &["x", "--level", "10", "--layout", "f3", "{members}"], &["RAID10", "3 copies"]),
    Refusal("refuses_unknown_raid5_layout", 3, &["x", "--level", "5", "--layout", "diagonal", "{members}"], &["layout", "diagonal"]),
    Refusal("refuses_layout_for_raid1", 2, &["x", "--level", "1", "--layout", "n2", "{members}"], &["--layout", "RAID5, RAID6 and RAID10"]),
    Refusal("refuses_member_given_twice", 3, &["x", "--level", "5", "{members}", "{dir}/m1.img"], &["{dir}/m1.img", "twice"]),
    // The same file under another spelling, and a member repeated as a spare.
    Refusal("refuses_member_given_twice (spelt otherwise)", 3, &["x", "--level", "5", "{members}", "{dir}/./m0.img"], &["twice"]),
    Refusal("refuses_member_given_twice (as a spare)", 3, &["x", "--level", "5", "--spare", "{dir}/m2.img", "{members}"], &["twice"]),
    // Bad input with `--size` larger than the existing members: the refusal must not grow them
    // (cmd_create.rs promises "Bad input touches nothing").
    Refusal("refused_create_with_size_does_not_grow_members", 3, &["x", "--level", "5", "--size", "128M", "{dir}/m0.img", "{dir}/m1.img", "{dir}/m0.img"], &["twice"]),
    // Without --size a missing member is named and not created (no file of the fixture changes).
    Refusal("refuses_missing_member_without_size_and_does_not_create_it", 2, &["x", "--level", "5", "{members}", "{dir}/missing.img"], &["{dir}/missing.img", "does not exist"]),
    Refusal("refuses_nonsense_size", 2, &["x", "--level", "5", "--size", "12Q", "{members}", "{dir}/new.img"], &["size", "12Q"]),
    Refusal("refuses_invalid_array_names (bad/name)", 3, &["bad/name", "--level", "5", "{members}"], &["invalid array name"]),
    Refusal("refuses_invalid_array_names (empty)", 3, &["", "--level", "5", "{members}"], &["invalid array name"]),
    Refusal("refuses_invalid_array_names (40 characters)", 3, &[LONG_NAME, "--level", "5", "{members}"], &["invalid array name"]),
    Refusal("refuses_raid0_with_spare", 3, &["x", "--level", "0", "--spare", "{dir}/m2.img", "{dir}/m0.img", "{dir}/m1.img"], &["RAID0", "spare"]),
];

/// Each of [`CREATE_REFUSALS`] is refused with one line, touching no file.
#[test]
fn create_refuses_bad_input_and_touches_nothing() {
    assert_eq!(LONG_NAME.len(), 40);
    for refusal in CREATE_REFUSALS {
        refusal.check();
    }
}

#[test]
fn refuses_directory_as_member() {
    let (fx, mut devs) = pattern_members(2);
    let dir = fx.path("subdir");
    fs::create_dir(&dir).expect("mkdir");
    devs.push(dir.clone());
    assert_refused(
        "a directory",
        &fx,
        &create_args("x", &["--level", "5"], &devs),
        &[&s(&dir), "not a regular file"],
    );
    // With --size too: it only creates or extends regular files.
    assert_refused(
        "a directory with --size",
        &fx,
        &create_args("x", &["--level", "5", "--size", "64M"], &devs),
        &[&s(&dir)],
    );
}

#[test]
fn refuses_members_that_are_too_small() {
    // New files of 1M: refused, and none is left behind.
    let fx = Fixture::new();
    let new: Vec<PathBuf> = (0..3).map(|i| fx.path(&format!("n{i}.img"))).collect();
    assert_refused(
        "new 1M files",
        &fx,
        &create_args("x", &["--level", "5", "--size", "1M"], &new),
        &["too small"],
    );
    for p in &new {
        assert!(!p.exists(), "{} was left behind", p.display());
    }
    // Existing 1 MiB files with data: refused and unchanged.
    let old: Vec<PathBuf> = (0..3)
        .map(|i| fx.member_of_size(&format!("o{i}.img"), MIB))
        .collect();
    assert_refused(
        "1 MiB files with data",
        &fx,
        &create_args("x", &["--level", "5", "--size", "1M"], &old),
        &["too small"],
    );
    assert_refused(
        "1 MiB files as RAID1",
        &fx,
        &create_args("x", &["--level", "1"], &old[..2]),
        &["too small"],
    );
}

/// Three 64 MiB pattern members of an array "first" (RAID5), in a fresh fixture.
pub(crate) fn members_of_first() -> (Fixture, Vec<PathBuf>) {
    let (fx, devs) = pattern_members(3);
    raidctl_ok(&create_args(
        "first",
        &["--level", "5", "--chunk", "64K"],
        &devs,
    ));
    (fx, devs)
}

#[test]
fn refuses_member_of_another_array_without_force() {
    let (fx, devs) = members_of_first();
    let first_uuid = mdadm_examine(&devs[0]).get("Array UUID").to_string();

    // Every spelling of the refusal keeps the first array's members byte for byte.
    let line = assert_refused(
        "members of another array",
        &fx,
        &create_args("second", &["--level", "5"], &devs),
        &["already belongs", "--force"],
    );
    assert!(
        line.contains(&first_uuid) || line.contains("first"),
        "the refusal should name the array: {line}"
    );
    let mut reordered = devs.clone();
    reordered.reverse();
    assert_refused(
        "reordered, as RAID1",
        &fx,
        &create_args("second", &["--level", "1"], &reordered[..2]),
        &["already belongs", "--force"],
    );
    for d in &devs {
        let md = mdadm_examine(d);
        md.assert_checksum_correct();
        assert_eq!(md.get("Array UUID"), first_uuid);
    }

    // With --force it succeeds and the members carry the new array.
    raidctl_ok(&create_args(
        "second",
        &["--level", "5", "--chunk", "64K", "--force"],
        &devs,
    ));
    let mut second = Vec::new();
    for (k, d) in devs.iter().enumerate() {
        let md = mdadm_examine(d);
        md.assert_checksum_correct();
        assert_ne!(md.get("Array UUID"), first_uuid, "{}", md.what);
        assert_eq!(md.get("Device Role"), format!("Active device {k}"));
        let name = md.get("Name").split_whitespace().next().unwrap_or_default();
        assert!(name == "second" || name.ends_with(":second"), "{name}");
        second.push(md.get("Array UUID").to_string());
    }
    assert!(second.iter().all(|u| *u == second[0]), "{second:?}");
}

/// A refusal with `--size` larger than the existing members must not grow them (see
/// refused_create_with_size_does_not_grow_members), also when it is "already belongs to
/// another array".
#[test]
fn refused_create_on_foreign_members_with_size_does_not_grow_them() {
    let (fx, devs) = members_of_first();
    assert_refused(
        "foreign members with --size",
        &fx,
        &create_args("second", &["--level", "5", "--size", "128M"], &devs),
        &["already belongs", "--force"],
    );
}
