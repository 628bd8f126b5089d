//! `add`: a new device rebuilds a degraded array; foreign and small devices are refused.

#[allow(unused_imports)]
use crate::*;

#[test]
fn add_rebuilds_degraded_raid5_and_refuses_foreign_or_small_devices() {
    let name = "rb-add";
    let (mut h, size, expected) = filled_raid5(name, 0, 71);
    let victim = h.members[1].clone();
    h.ok(&["fail", name, &victim]);
    let st = h.status();
    assert_eq!(st["state"].as_str(), Some("degraded"), "{st:#}");

    // A member of another array (created, never assembled).
    let foreign: Vec<String> = (0..2).map(|i| s(&h.path(&format!("other{i}")))).collect();
    let mut args = vec![
        "create", "rb-other", "--level", "1", "--chunk", "64K", "--size", "96M",
    ];
    args.extend(foreign.iter().map(String::as_str));
    h.ok(&args);
    let foreign_uuid = |h: &Array| {
        let ex = h.raidctl(&["examine", "--json", &foreign[0]]).ok();
        let ex: Value = serde_json::from_str(&ex.stdout).expect("examine --json");
        ex[0]["array_uuid"].as_str().unwrap_or_default().to_string()
    };
    let uuid_before = foreign_uuid(&h);
    let ran = h.raidctl(&["add", name, &foreign[0]]);
    assert_eq!(ran.code(), Some(1), "{}", ran.describe());
    assert!(
        ran.stderr.contains("--force"),
        "adding another array's member must be refused naming --force:\n{}",
        ran.describe()
    );
    assert_eq!(
        foreign_uuid(&h),
        uuid_before,
        "a refused add must not touch the device"
    );

    // Too small.
    let small = h.path("small");
    let small_bytes = 32 * MIB;
    File::create(&small)
        .and_then(|f| f.set_len(small_bytes))
        .expect("create small file");
    let ran = h.raidctl(&["add", name, &s(&small)]);
    assert_eq!(ran.code(), Some(1), "{}", ran.describe());
    assert!(
        ran.stderr.contains("too small")
            && (ran.stderr.contains(&small_bytes.to_string()) || ran.stderr.contains("32M")),
        "adding a small device must be refused naming its size:\n{}",
        ran.describe()
    );
    let st = h.status();
    assert_eq!(
        st["state"].as_str(),
        Some("degraded"),
        "refusals change nothing:\n{st:#}"
    );
    assert!(
        find_member(&st, &foreign[0]).is_none() && find_member(&st, &s(&small)).is_none(),
        "refused devices must not be listed:\n{st:#}"
    );

    // A new, empty file: it becomes a spare and the degraded array rebuilds onto it.
    let new = s(&h.path("new0"));
    File::create(&new)
        .and_then(|f| f.set_len(96 * MIB))
        .expect("create new member");
    let ran = h.ok(&["add", name, &new]);
    assert!(ran.stdout.contains(&new), "{}", ran.describe());
    wait_for_rebuild(&h);
    let st = h.status();
    assert_all_in_sync(&st, &[(1, &new)], "after add and rebuild");
    assert_export_holds(&h, &expected, size, "after add and rebuild");
    let md = mdadm_examine(&new);
    assert_eq!(md.get("Device Role"), "Active device 1", "{}", md.text);

    // With --force the foreign device is taken, as a hot spare now.
    h.ok(&["add", name, &foreign[0], "--force"]);
    let st = h.status();
    let entry = member(&st, &foreign[0]);
    assert_eq!(entry["role"].as_str(), Some("spare"), "{st:#}");
    assert_ne!(
        foreign_uuid(&h),
        uuid_before,
        "the forced add rewrites its superblock"
    );
    h.stop();
}
