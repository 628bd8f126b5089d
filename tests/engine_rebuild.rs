//! Hot spares and rebuilds on simulated members: a failed member is replaced by the spare
//! without any command, the rebuild runs while foreground writes continue, and afterwards the
//! data matches a model, the members are consistent on their own (parity / copies), and a
//! fresh assembly without the failed member is complete. A crash part-way through a rebuild
//! resumes from a checkpoint, not from zero.

use std::rc::Rc;
use std::time::Duration;

use raidcore::buf::BufSlice;
use raidcore::control::{assemble, AssembleOptions};
use raidcore::layout::{LayoutKind, Raid10Layout};
use raidcore::member::{MemMember, Member};
use raidcore::raid::events::Event;
use raidcore::raid::{Array, SlotState};
use raidcore::reactor::{block_on, sleep, spawn};

mod common;
use common::{assert_reads_model, pattern, raid10, raid5, wait_complete};

const MEMBER: u64 = 12 << 20;

async fn rig(kind: LayoutKind, members: usize, spares: usize) -> common::Rig {
    common::rig(kind, members, spares, MEMBER).await
}

fn check_consistent(array: &Array, sims: &[Rc<MemMember>]) {
    common::assert_redundancy_consistent(array, sims, "after the rebuild");
}

/// Foreground load while a rebuild or a copy runs: `count` 64 KiB writes spread over the
/// array (the `i`th `i * stride` blocks of 4 KiB in, wrapping; contents seeded
/// `first_seed + i`), `pause` apart, from a task of their own. Once all are done they are
/// put into `model`.
async fn write_meanwhile(
    array: &Rc<Array>,
    model: &mut [u8],
    count: u64,
    stride: u64,
    first_seed: u64,
    pause: Duration,
) {
    let writer = {
        let array = array.clone();
        spawn(async move {
            let mut done = Vec::new();
            for i in 0..count {
                let at = (i * stride * 4096) % (array.size_bytes() - 65536);
                let data = pattern(65536, first_seed + i);
                array.write(at, data.clone(), false).await.unwrap();
                done.push((at, data.to_vec()));
                sleep(pause).await;
            }
            done
        })
    };
    for (at, data) in writer.await {
        model[at as usize..at as usize + data.len()].copy_from_slice(&data);
    }
}

#[test]
fn spare_takes_over_and_rebuilds_under_foreground_writes() {
    for (kind, members) in [
        (LayoutKind::Raid1, 2),
        (raid5(), 4),
        (common::raid6(), 5),
        (raid10(), 4),
        (
            LayoutKind::Raid10(Raid10Layout {
                near: 1,
                far: 2,
                offset: false,
            }),
            3,
        ),
    ] {
        block_on(async move {
            let r = rig(kind.clone(), members, 1).await;
            let mut model = common::fill(&r.array, 1).await;
            r.faults[1].vanish();
            // The read notices the failure; the scheduler promotes the spare on its own.
            assert_reads_model(&r.array, &model, &format!("{kind:?}: degraded read")).await;
            // Foreground writes while the rebuild runs, below and above its cursor.
            let pause = Duration::from_micros(200);
            write_meanwhile(&r.array, &mut model, 64, 7919, 100, pause).await;
            wait_complete(&r.control).await;
            let names: Vec<&str> = r
                .events
                .borrow()
                .iter()
                .map(|e| e.name())
                .collect::<Vec<_>>()
                .leak()
                .to_vec();
            for want in [
                "MemberFailed",
                "SpareActivated",
                "RebuildStarted",
                "RebuildFinished",
            ] {
                assert!(names.contains(&want), "{kind:?}: no {want} in {names:?}");
            }
            let spare = r.sims[members].path().to_string();
            assert!(
                matches!(&r.array.slots()[1], SlotState::Active(d) if d.member.path() == spare),
                "{kind:?}: spare in slot 1"
            );
            let context = format!("{kind:?}: data after the rebuild");
            assert_reads_model(&r.array, &model, &context).await;
            check_consistent(&r.array, &r.sims);
            r.array.close().await.unwrap();
            // Without the failed member, the array is complete and reads the same.
            let mut survivors = common::reopened(&r.sims, 9);
            survivors.remove(1);
            let again = assemble(common::as_members(&survivors), &AssembleOptions::default())
                .await
                .expect("reassemble without the failed member");
            assert!(
                again.array.slots().iter().all(|s| s.is_active()),
                "{kind:?}: complete after reassembly"
            );
            let context = format!("{kind:?}: data after reassembly");
            assert_reads_model(&again.array, &model, &context).await;
            again.array.close().await.unwrap();
        })
        .unwrap();
    }
}

#[test]
fn no_spare_waits_and_says_so() {
    block_on(async {
        let r = rig(raid5(), 3, 0).await;
        r.array.write(0, pattern(1 << 20, 3), false).await.unwrap();
        r.faults[2].vanish();
        let got = BufSlice::zeroed(1 << 20);
        r.array.read(0, got.clone()).await.unwrap();
        sleep(Duration::from_millis(20)).await;
        assert!(r
            .events
            .borrow()
            .iter()
            .any(|e| matches!(e, Event::SparesMissing { slot: 2 })));
        assert!(r.control.rebuild_states().is_empty());
        r.array.close().await.unwrap();
    })
    .unwrap();
}

#[test]
fn crash_during_rebuild_resumes_from_a_checkpoint() {
    let sims = block_on(async {
        let r = rig(raid5(), 4, 1).await;
        let model = common::fill(&r.array, 5).await;
        r.array.flush().await.unwrap();
        // Slow and frequent checkpoints, so a "crash" lands part-way with progress recorded.
        r.control
            .set_checkpoint_every(1 << 20, Duration::from_secs(3600));
        r.control.set_speed_limits(Some(2048), Some(2048));
        r.faults[0].vanish();
        let got = BufSlice::zeroed(4096);
        r.array.read(0, got.clone()).await.unwrap();
        let total = r.array.geometry().member_used_bytes();
        loop {
            sleep(Duration::from_millis(10)).await;
            let done = r
                .control
                .rebuild_states()
                .first()
                .map(|s| s.done_bytes)
                .unwrap_or(0);
            if done * 10 >= total * 4 {
                break;
            }
        }
        // Crash: the reactor goes away with the rebuild task mid-flight; no close().
        (r.sims.clone(), model)
    })
    .unwrap();
    block_on(async move {
        let (sims, model) = sims;
        let mut members = common::reopened(&sims, 1);
        members.remove(0);
        let assembled = assemble(
            common::as_members(&members),
            &AssembleOptions {
                force: true,
                ..Default::default()
            },
        )
        .await
        .expect("assemble after the crash");
        assert!(
            assembled.notes.iter().any(|n| n.contains("resumes")),
            "notes: {:?}",
            assembled.notes
        );
        let (array, control) = (assembled.array, assembled.control);
        let resumed_from = control
            .rebuild_states()
            .first()
            .map(|s| s.done_bytes)
            .expect("a rebuild to resume");
        assert!(resumed_from > 0, "the rebuild restarted from zero");
        wait_complete(&control).await;
        assert_reads_model(&array, &model, "data after the resumed rebuild").await;
        array.close().await.unwrap();
    })
    .unwrap();
}

#[test]
fn replace_builds_the_new_member_while_the_old_stays_active() {
    for (kind, members) in [
        (raid5(), 4),
        (LayoutKind::Raid1, 2),
        (raid10(), 4),
        (common::raid6(), 5),
        (LayoutKind::Ec { parity: 3 }, 6),
    ] {
        block_on(async move {
            let r = rig(kind.clone(), members, 0).await;
            let mut model = common::fill(&r.array, 7).await;
            let new = Rc::new(MemMember::new("new", MEMBER, 99));
            r.control
                .replace_member("m1", new.clone(), false)
                .await
                .expect("replace starts");
            let pause = Duration::from_micros(300);
            write_meanwhile(&r.array, &mut model, 48, 6007, 300, pause).await;
            common::wait_until(&format!("{kind:?}: the replacement to finish"), || {
                r.control.replacement_state().is_none()
            })
            .await;
            assert!(
                matches!(&r.array.slots()[1], SlotState::Active(d) if d.member.path() == "new"),
                "{kind:?}"
            );
            assert!(
                r.control
                    .replaced_faulty()
                    .iter()
                    .any(|d| d.member.path() == "m1"),
                "{kind:?}: old member faulty"
            );
            let context = format!("{kind:?}: data after replace");
            assert_reads_model(&r.array, &model, &context).await;
            let mut sims = r.sims.clone();
            sims.push(new);
            check_consistent(&r.array, &sims);
            r.array.close().await.unwrap();
        })
        .unwrap();
    }
}

/// The engine only queues events (the control plane delivers them): a subscriber never runs
/// inside the engine's call, hears every event in order, and hears everything emitted before
/// `close` (the delivery task drains the queue before it ends).
#[test]
fn events_reach_subscribers_from_the_queue_in_order_up_to_close() {
    block_on(async {
        let r = rig(raid5(), 4, 0).await;
        let removed = |r: &common::Rig| -> Vec<String> {
            r.events
                .borrow()
                .iter()
                .filter_map(|e| match e {
                    Event::MemberRemoved { member } => Some(member.clone()),
                    _ => None,
                })
                .collect()
        };
        let gone = |m: &str| Event::MemberRemoved { member: m.into() };
        r.array.emit(gone("a"));
        r.array.emit(gone("b"));
        assert!(removed(&r).is_empty(), "a subscriber ran inside emit");
        common::wait_until("delivery", || removed(&r).len() == 2).await;
        r.array.emit(gone("c"));
        r.array.close().await.unwrap();
        sleep(Duration::from_millis(20)).await;
        assert_eq!(removed(&r), ["a", "b", "c"]);
    })
    .unwrap();
}
