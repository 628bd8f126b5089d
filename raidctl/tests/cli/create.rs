//! Creating every level, read back by mdadm and by raidctl examine; the internal bitmap.

#[allow(unused_imports)]
use crate::*;

pub(crate) struct Case {
    pub(crate) name: &'static str,
    pub(crate) level: &'static str,
    pub(crate) layout: Option<&'static str>,
    pub(crate) members: usize,
    pub(crate) spares: usize,
    pub(crate) md_level: &'static str,
    /// mdadm's Layout line; None when mdadm prints none (RAID1).
    pub(crate) md_layout: Option<&'static str>,
    /// Whether mdadm shows a chunk size (not for RAID1).
    pub(crate) chunk: bool,
}

/// Creates the array of `case` on new 64M files and checks every member (and spare) with
/// mdadm and with both forms of `raidctl examine`. Returns the fixture and the devices.
pub(crate) fn create_and_check(case: &Case) -> (Fixture, Vec<PathBuf>) {
    let fx = Fixture::new();
    let members: Vec<PathBuf> = (0..case.members)
        .map(|i| fx.path(&format!("d{i}.img")))
        .collect();
    let spares: Vec<PathBuf> = (0..case.spares)
        .map(|i| fx.path(&format!("spare{i}.img")))
        .collect();
    let mut rest = vec!["--level", case.level];
    if let Some(l) = case.layout {
        rest.extend(["--layout", l]);
    }
    rest.extend(["--chunk", "64K", "--size", "64M"]);
    let spare_args: Vec<String> = spares.iter().map(|p| s(p)).collect();
    let mut a = args(&["create", case.name]);
    a.extend(args(&rest));
    for sp in &spare_args {
        a.push("--spare".into());
        a.push(sp.clone());
    }
    a.extend(members.iter().map(|d| s(d)));
    let stdout = raidctl_ok(&a).stdout;
    let printed_uuid = stdout
        .lines()
        .next()
        .and_then(|l| l.rsplit("UUID ").next())
        .unwrap_or_default()
        .trim()
        .to_string();

    let all: Vec<(PathBuf, Option<usize>)> = members
        .iter()
        .enumerate()
        .map(|(i, p)| (p.clone(), Some(i)))
        .chain(spares.iter().map(|p| (p.clone(), None)))
        .collect();
    let mut uuids = Vec::new();
    for (dev, slot) in &all {
        assert_eq!(
            fs::metadata(dev).expect("member file exists").len(),
            MEMBER_BYTES,
            "{} was created with --size 64M",
            dev.display()
        );
        let md = mdadm_examine(dev);
        md.assert_checksum_correct();
        assert_eq!(md.get("Version"), "1.2", "{}", md.what);
        assert_eq!(md.get("Raid Level"), case.md_level, "{}", md.what);
        assert_eq!(
            md.get("Raid Devices"),
            case.members.to_string(),
            "{}",
            md.what
        );
        match case.md_layout {
            Some(l) => assert_eq!(md.get("Layout"), l, "{}", md.what),
            None => assert!(!md.has("Layout"), "{}: no layout expected", md.what),
        }
        if case.chunk {
            assert_eq!(md.get("Chunk Size"), "64K", "{}", md.what);
        } else {
            assert!(
                !md.has("Chunk Size"),
                "{}: RAID1 has no chunk:\n{}",
                md.what,
                md.text
            );
        }
        let role = match slot {
            Some(k) => format!("Active device {k}"),
            None => "spare".to_string(),
        };
        assert_eq!(md.get("Device Role"), role, "{}", md.what);
        assert_eq!(md.array_state(), "A".repeat(case.members), "{}", md.what);
        let name = md.get("Name").split_whitespace().next().unwrap_or_default();
        assert!(
            name == case.name || name.ends_with(&format!(":{}", case.name)),
            "{}: Name {name:?} should be {:?} or HOST:{}",
            md.what,
            case.name,
            case.name
        );
        let uuid = md.get("Array UUID").to_string();
        assert_eq!(
            uuid, printed_uuid,
            "create printed a different UUID:\n{stdout}"
        );
        uuids.push(uuid.clone());

        // raidctl examine --json agrees with mdadm.
        let j = raidctl_examine_json(dev);
        assert_eq!(j["device"], s(dev), "{j:#}");
        assert_eq!(j["array_uuid"], uuid.as_str(), "{j:#}");
        let events: u64 = md.get("Events").parse().expect("Events is a number");
        assert_eq!(j["events"], events, "{j:#}");
        assert_eq!(j["raid_devices"], case.members as u64, "{j:#}");
        if case.chunk {
            let kib = j["chunk_size_kib"]
                .as_u64()
                .unwrap_or_else(|| panic!("chunk_size_kib missing: {j:#}"));
            assert_eq!(format!("{kib}K"), md.get("Chunk Size"), "{j:#}");
        } else {
            assert!(j["chunk_size_kib"].is_null(), "{j:#}");
        }
        assert_eq!(j["device_role"], md.get("Device Role"), "{j:#}");
        assert_eq!(j["array_state"], md.array_state(), "{j:#}");
        assert_eq!(j["checksum_ok"], true, "{j:#}");

        // raidctl examine (text) prints mdadm's Array UUID line.
        let text = raidctl_examine_text(dev);
        assert_eq!(
            text.line("Array UUID"),
            md.line("Array UUID"),
            "{}\n---\n{}",
            text.text,
            md.text
        );
    }
    assert!(
        uuids.iter().all(|u| *u == uuids[0]),
        "members disagree on the Array UUID: {uuids:?}"
    );
    let mut devices = members;
    devices.extend(spares);
    (fx, devices)
}

#[test]
fn create_raid0_four_members() {
    create_and_check(&Case {
        name: "r0",
        level: "0",
        layout: None,
        members: 4,
        spares: 0,
        md_level: "raid0",
        md_layout: Some("original"),
        chunk: true,
    });
}

#[test]
fn create_raid1_two_members() {
    create_and_check(&Case {
        name: "r1",
        level: "1",
        layout: None,
        members: 2,
        spares: 0,
        md_level: "raid1",
        md_layout: None,
        chunk: false,
    });
}

#[test]
fn create_raid5_default_layout_with_spare() {
    create_and_check(&Case {
        name: "r5",
        level: "5",
        layout: None,
        members: 4,
        spares: 1,
        md_level: "raid5",
        md_layout: Some("left-symmetric"),
        chunk: true,
    });
}

#[test]
fn create_raid5_right_asymmetric() {
    create_and_check(&Case {
        name: "r5-ra",
        level: "5",
        layout: Some("right-asymmetric"),
        members: 3,
        spares: 0,
        md_level: "raid5",
        md_layout: Some("right-asymmetric"),
        chunk: true,
    });
}

#[test]
fn create_raid10_default_near2() {
    create_and_check(&Case {
        name: "r10",
        level: "10",
        layout: None,
        members: 4,
        spares: 0,
        md_level: "raid10",
        md_layout: Some("near=2"),
        chunk: true,
    });
}

#[test]
fn create_raid10_far2() {
    create_and_check(&Case {
        name: "r10-f2",
        level: "10",
        layout: Some("f2"),
        members: 4,
        spares: 0,
        md_level: "raid10",
        md_layout: Some("far=2"),
        chunk: true,
    });
}

#[test]
fn create_raid10_offset2_three_members() {
    create_and_check(&Case {
        name: "r10-o2",
        level: "10",
        layout: Some("o2"),
        members: 3,
        spares: 0,
        md_level: "raid10",
        md_layout: Some("offset=2"),
        chunk: true,
    });
}

/// Creates RAID5 `name` on three new 64M files with `flags`, then hands every member's
/// `mdadm --examine` (its checksum correct) and `raidctl examine --json` to `check`.
pub(crate) fn create_raid5_and_examine(
    name: &str,
    flags: &[&str],
    check: impl Fn(&Examined, &Value),
) {
    let fx = Fixture::new();
    let devs: Vec<PathBuf> = (0..3).map(|i| fx.path(&format!("b{i}.img"))).collect();
    let mut rest = vec!["--level", "5", "--chunk", "64K", "--size", "64M"];
    rest.extend_from_slice(flags);
    raidctl_ok(&create_args(name, &rest, &devs));
    for d in &devs {
        let md = mdadm_examine(d);
        md.assert_checksum_correct();
        check(&md, &raidctl_examine_json(d));
    }
}

#[test]
fn raid5_has_internal_bitmap_by_default() {
    create_raid5_and_examine("bm", &[], |md, j| {
        assert_eq!(
            md.get("Internal Bitmap"),
            "8 sectors from superblock",
            "{}",
            md.what
        );
        assert_eq!(j["internal_bitmap_offset_sectors"], 8, "{j:#}");
    });
}

#[test]
fn raid5_with_bitmap_none_has_no_bitmap() {
    create_raid5_and_examine("nobm", &["--bitmap", "none"], |md, j| {
        assert!(
            !md.has("Internal Bitmap"),
            "{}: --bitmap none, yet:\n{}",
            md.what,
            md.text
        );
        assert!(j["internal_bitmap_offset_sectors"].is_null(), "{j:#}");
    });
}

#[test]
fn bitmap_chunk_is_honoured_and_mdadm_reads_it() {
    let fx = Fixture::new();
    let devs = fx.members(&["a", "b", "c"]);
    raidctl_ok(&create_args(
        "x",
        &["--level", "5", "--bitmap-chunk", "1M"],
        &devs,
    ));
    let ex = raidctl_examine_json(&devs[0]);
    assert_eq!(ex["bitmap"]["chunk_bytes"], 1 << 20, "{ex:#}");
    // mdadm reads the bitmap of a block device: put the member on a loop device.
    let member = s(&devs[0]);
    let ran = run(cmd(
        "losetup",
        &["--find", "--show", "--read-only", &member],
    ));
    assert!(ran.success(), "losetup: {}", ran.describe());
    let dev = ran.stdout.trim().to_string();
    let text = run(cmd(require("mdadm", "mdadm"), &["-X", &dev])).stdout;
    let _ = run(cmd("losetup", &["-d", &dev]));
    assert!(text.contains("Chunksize : 1 MB"), "mdadm -X:\n{text}");
}

#[test]
fn refuses_a_cache_larger_than_half_the_memory() {
    let (fx, devs) = pattern_members(3);
    raidctl_ok(&create_args("x", &["--level", "5"], &devs));
    let run = s(&fx.dir().join("run"));
    let assemble_with_cache = |size: &str| {
        let mut a = args(&["--run-dir", &run, "assemble", "x", "--cache-size", size]);
        a.extend(devs.iter().map(|d| s(d)));
        a
    };
    let a = assemble_with_cache("64T");
    assert_refused("--cache-size 64T", &fx, &a, &["--cache-size 64T", "memory"]);
    let a = assemble_with_cache("12Q");
    assert_refused("--cache-size 12Q", &fx, &a, &["--cache-size 12Q"]);
}
