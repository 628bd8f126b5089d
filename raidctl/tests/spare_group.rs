//! Spare groups: arrays created with the same `--spare-group` share hot spares. When one loses
//! a member and has no spare, it takes a spare from another running array of its group (the
//! donor gives it up only while complete itself), rebuilds onto it, and md sees the device as
//! a member of its new array.

use std::path::Path;
use std::thread;
use std::time::Duration;

mod common;
use common::array::{Array, Spec};
use common::examine::mdadm_examine;
use common::status::member_paths;

/// A RAID1 of two 64M members in a spare group `g` (or none).
fn raid1(name: &str, spares: usize, group: Option<&str>) -> Spec {
    let spec = Spec::new(name, "1", 2).spares(spares);
    match group {
        Some(g) => spec.extra(&["--spare-group", g]),
        None => spec,
    }
}

#[test]
fn a_degraded_array_takes_a_spare_from_its_group() {
    // The three arrays share one run directory, where the daemons of a group find each other.
    let mut ga = Array::create(raid1("ga", 1, Some("g")));
    let mut gb = Array::create_beside(&ga, raid1("gb", 0, Some("g")));
    let mut gc = Array::create_beside(&ga, raid1("gc", 1, None));
    for array in [&mut ga, &mut gb, &mut gc] {
        array.assemble();
    }
    gb.ok(&["fail", "gb", &gb.members[1]]);
    // The scheduler finds no spare of its own, asks the group, rebuilds onto the moved spare.
    for _ in 0..200 {
        if member_paths(&gb.status(), "in_sync").len() == 2 {
            break;
        }
        thread::sleep(Duration::from_millis(50));
    }
    let moved = ga.spares[0].clone();
    let st = gb.status();
    assert_eq!(
        member_paths(&st, "in_sync"),
        vec![gb.members[0].clone(), moved.clone()],
        "{st:#}"
    );
    assert!(
        st["state"] == "clean" || st["state"] == "active",
        "complete again: {st:#}"
    );
    // The donor gave up its only spare and stays complete; the array outside the group kept its.
    let donor = ga.status();
    assert!(member_paths(&donor, "spare").is_empty(), "{donor:#}");
    assert_eq!(member_paths(&donor, "in_sync").len(), 2);
    assert_eq!(member_paths(&gc.status(), "spare"), gc.spares);
    // md agrees: the moved device carries gb's UUID now.
    let uuid = st["uuid"].as_str().unwrap().to_string();
    let text = mdadm_examine(&moved).text;
    assert!(
        text.contains(&uuid),
        "mdadm --examine of the moved spare:\n{text}"
    );
    assert!(text.contains("Active device 1"), "{text}");
    assert!(Path::new(&moved).exists());
}
