//! k+m arrays through the binary: `create --level ec --parity 3` writes members md can read
//! but will not take for an array it runs (`mdadm --examine` shows no md level), our `examine`
//! and `status` explain k, m, chunk and rotation, the daemon serves the array over NBD, three
//! members failed at once leave the data readable, three spares rebuild all three, and
//! `check` finds every parity chunk right afterwards.

use std::thread;
use std::time::Duration;

mod common;
use common::array::{Array, Spec};
use common::examine::mdadm_examine;
use common::files::{assert_same_range, fill_random};
use common::status::member_paths;

#[test]
fn a_3_plus_3_array_survives_three_failures_and_three_spares_rebuild_it() {
    let mut a = Array::create(Spec::new("e3", "ec", 6).spares(3).extra(&["--parity", "3"]));
    let ex = mdadm_examine(&a.members[0]);
    assert_eq!(ex.get("Raid Level"), "-unknown-", "{}", ex.text);
    assert_eq!(ex.get("Raid Devices"), "6", "{}", ex.text);
    let ours = a.ok(&["examine", &a.members[0]]).stdout;
    for shown in [
        "k+m erasure code",
        "k=3 data + m=3 parity chunks per row",
        "Chunk Size : 64K",
        "row 0 : P2 P3 D0 D1 D2 P1",
        "row 1 : P3 D3 D4 D5 P1 P2",
    ] {
        assert!(ours.contains(shown), "examine lacks {shown:?}:\n{ours}");
    }
    a.assemble();
    let status = a.ok(&["status", "e3"]).stdout;
    assert!(status.contains("ec 3+3"), "{status}");
    assert!(
        status.contains("placement by row (slot 0 first): P2 P3 D0 D1 D2 P1 | P3 D3 D4 D5 P1 P2"),
        "{status}"
    );
    let size = a.size();
    let data = a.path("data.bin");
    fill_random(&data, size, 7, &[]);
    a.nbdcopy(&[&common::s(&data), &a.uri()]);
    for m in [0, 2, 5] {
        a.ok(&["fail", "e3", &a.members[m]]);
    }
    let degraded = a.read_export("degraded.bin");
    assert_same_range(&data, &degraded, 0, size, "read with three members failed");
    a.ok(&["rebuild", "e3", "--wait"]);
    for _ in 0..200 {
        if member_paths(&a.status(), "in_sync").len() == 6 {
            break;
        }
        thread::sleep(Duration::from_millis(50));
    }
    let st = a.status();
    let in_sync = member_paths(&st, "in_sync");
    for spare in &a.spares {
        assert!(in_sync.contains(spare), "{spare} not in sync: {st:#}");
    }
    let check = a.ok(&["check", "e3", "--wait"]);
    assert!(
        check.stdout.contains("0 mismatched sectors"),
        "{}",
        check.stdout
    );
    let rebuilt = a.read_export("rebuilt.bin");
    assert_same_range(&data, &rebuilt, 0, size, "read after three rebuilds");
    a.stop();
    let ex = mdadm_examine(&a.spares[0]);
    assert_eq!(ex.get("State"), "clean", "{}", ex.text);
    assert!(ex.text.contains("Active device"), "{}", ex.text);
}
