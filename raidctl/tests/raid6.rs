//! RAID6 through the binary: `create --level 6` writes members `mdadm --examine` reads as
//! raid6 with our layout, the daemon serves it over NBD, two members failed at once leave the
//! data readable, two spares rebuild both, and `check` finds P and Q right afterwards.

use std::thread;
use std::time::Duration;

mod common;
use common::array::{Array, Spec};
use common::examine::mdadm_examine;
use common::files::{assert_same_range, fill_random};
use common::status::member_paths;

#[test]
fn raid6_survives_two_failures_and_two_spares_rebuild_it() {
    let mut a = Array::create(
        Spec::new("r6", "6", 5)
            .spares(2)
            .extra(&["--layout", "left-symmetric-6"]),
    );
    let ex = mdadm_examine(&a.members[0]);
    assert_eq!(ex.get("Raid Level"), "raid6", "{}", ex.text);
    assert_eq!(ex.get("Layout"), "left-symmetric-6", "{}", ex.text);
    assert_eq!(ex.get("Raid Devices"), "5", "{}", ex.text);
    // Our examine shows where P and Q go (left-symmetric-6: Q stays on the last member).
    let ours = a.ok(&["examine", &a.members[0]]).stdout;
    assert!(ours.contains("row 0 : D0 D1 D2 P Q"), "{ours}");
    assert!(ours.contains("row 1 : D4 D5 P D3 Q"), "{ours}");
    let md_kib: u64 = ex
        .get("Array Size")
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    a.assemble();
    let shown = a.ok(&["status", "r6"]).stdout;
    assert!(
        shown.contains("placement by row (slot 0 first): D0 D1 D2 P Q | D4 D5 P D3 Q"),
        "{shown}"
    );
    let size = a.size();
    assert_eq!(
        size,
        md_kib * 1024,
        "the size mdadm computes for these members"
    );
    let data = a.path("data.bin");
    fill_random(&data, size, 6, &[]);
    a.nbdcopy(&[&common::s(&data), &a.uri()]);
    // Two members at once: RAID6 keeps every byte, and the spares take both slots.
    a.ok(&["fail", "r6", &a.members[1]]);
    a.ok(&["fail", "r6", &a.members[3]]);
    let degraded = a.read_export("degraded.bin");
    assert_same_range(&data, &degraded, 0, size, "read with two members failed");
    a.ok(&["rebuild", "r6", "--wait"]);
    for _ in 0..200 {
        if member_paths(&a.status(), "in_sync").len() == 5 {
            break;
        }
        thread::sleep(Duration::from_millis(50));
    }
    let st = a.status();
    let in_sync = member_paths(&st, "in_sync");
    assert!(
        in_sync.contains(&a.spares[0]) && in_sync.contains(&a.spares[1]),
        "{st:#}"
    );
    let check = a.ok(&["check", "r6", "--wait"]);
    assert!(
        check.stdout.contains("0 mismatched sectors"),
        "{}",
        check.stdout
    );
    let rebuilt = a.read_export("rebuilt.bin");
    assert_same_range(&data, &rebuilt, 0, size, "read after two rebuilds");
    a.stop();
    let ex = mdadm_examine(&a.spares[0]);
    assert_eq!(ex.get("State"), "clean", "{}", ex.text);
    assert!(ex.text.contains("Active device"), "{}", ex.text);
}
