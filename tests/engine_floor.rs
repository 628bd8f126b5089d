//! `fail` never takes away the last copy of data unless forced (mdadm's "array will be
//! failed" refusal): per level, with and without a member already out, during a rebuild; a
//! refusal changes no byte on any member, and `force` behaves as before.

use raidcore::layout::{LayoutKind, Raid0Layout};
use raidcore::raid::ArrayState;
use raidcore::reactor::block_on;
use raidcore::ErrorKind;

mod common;
use common::{raid10, raid5, rig, snapshot};

const MEMBER: u64 = 8 << 20;

/// Fails `path`, which must be refused with a message naming the array and `path`; checks
/// that no member byte changed and the state is as before.
async fn assert_refused(r: &common::Rig, path: &str, also_named: &[&str]) {
    let before = snapshot(&r.sims);
    let state = r.array.state();
    let err = r
        .control
        .fail_member(path, false)
        .await
        .expect_err("fail must be refused");
    let msg = err.to_string();
    assert_eq!(err.kind(), ErrorKind::Inconsistent, "{msg}");
    assert!(
        msg.contains("array t would fail") && msg.contains(path) && msg.contains("--force"),
        "{msg}"
    );
    for other in also_named {
        assert!(
            msg.contains(other),
            "the refusal should name {other}: {msg}"
        );
    }
    assert_eq!(r.array.state(), state, "a refusal changes nothing: {msg}");
    assert!(
        snapshot(&r.sims) == before,
        "a refused fail must not touch any member: {msg}"
    );
}

#[test]
fn raid0_fail_is_always_refused_without_force() {
    block_on(async {
        let r = rig(LayoutKind::Raid0(Raid0Layout::Alternate), 2, 0, MEMBER).await;
        assert_refused(&r, "m1", &["RAID0"]).await;
        r.control
            .fail_member("m1", true)
            .await
            .expect("--force fails it");
        assert_eq!(r.array.state(), ArrayState::Failed);
    })
    .unwrap();
}

#[test]
fn the_last_copy_is_kept_per_level() {
    // (kind, members, first failure allowed, second refused)
    let cases = [
        (LayoutKind::Raid1, 2, "m1", "m0"),
        (LayoutKind::Raid1, 3, "m0", "m1"),
        (raid5(), 4, "m2", "m0"),
        // RAID10 n2 over 4: m0/m1 and m2/m3 are mirror pairs.
        (raid10(), 4, "m0", "m1"),
    ];
    for (kind, members, first, second) in cases {
        block_on(async move {
            let r = rig(kind.clone(), members, 0, MEMBER).await;
            if members == 3 {
                // A three-way mirror loses two before its last copy is at stake.
                r.control.fail_member(first, false).await.expect("first");
                r.control.fail_member(second, false).await.expect("second");
                assert_refused(&r, "m2", &[first, second]).await;
                return;
            }
            r.control
                .fail_member(first, false)
                .await
                .unwrap_or_else(|e| panic!("{kind:?}: one failure is allowed: {e}"));
            assert_eq!(r.array.state(), ArrayState::Degraded, "{kind:?}");
            assert_refused(&r, second, &[first]).await;
            if kind == raid10() {
                // The other mirror pair still has both copies: one of it may go.
                r.control
                    .fail_member("m3", false)
                    .await
                    .expect("other pair");
                assert_refused(&r, "m2", &["m0", "m3"]).await;
            }
            r.control
                .fail_member(second, true)
                .await
                .expect("--force fails it anyway");
            assert_eq!(r.array.state(), ArrayState::Failed, "{kind:?}");
        })
        .unwrap();
    }
}

#[test]
fn a_recovering_member_is_no_copy_and_failing_it_is_allowed() {
    block_on(async {
        let r = rig(LayoutKind::Raid1, 2, 1, MEMBER).await;
        let size = r.array.size_bytes() as usize;
        r.array
            .write(0, common::pattern(size, 3), false)
            .await
            .unwrap();
        // Slow the spare down so the rebuild is still running when we look.
        r.faults[2].inject(raidcore::member::FaultRule::new(
            raidcore::member::FaultKind::Delay(std::time::Duration::from_millis(20)),
        ));
        r.control.fail_member("m1", false).await.unwrap();
        common::wait_until("the spare to start recovering", || {
            !r.control.rebuild_states().is_empty()
        })
        .await;
        // m0 is the only source of the rebuild: failing it would fail the array.
        assert_refused(&r, "m0", &["s0"]).await;
        // The recovering spare holds no copy the array relies on: failing it is fine.
        r.control
            .fail_member("s0", false)
            .await
            .expect("recovering");
        assert_eq!(r.array.state(), ArrayState::Degraded);
        r.faults[2].clear();
        r.array.close().await.unwrap();
    })
    .unwrap();
}
