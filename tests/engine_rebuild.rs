//! Hot spares and rebuilds on simulated members: a failed member is replaced by the spare
//! without any command, the rebuild runs while foreground writes continue, and afterwards the
//! data matches a model, the members are consistent on their own (parity / copies), and a
//! fresh assembly without the failed member is complete. A crash part-way through a rebuild
//! resumes from a checkpoint, not from zero.

use std::rc::Rc;
use std::time::Duration;

use raidcore::buf::BufSlice;
use raidcore::layout::{LayoutKind, Raid10Layout, Raid5Algorithm};
use raidcore::member::{MemMember, Member};
use raidcore::raid::events::Event;
use raidcore::raid::{assemble, Array, AssembleOptions, SlotState};
use raidcore::reactor::{block_on, sleep, spawn};

mod common;

const MEMBER: u64 = 12 << 20;

async fn rig(kind: LayoutKind, members: usize, spares: usize) -> common::Rig {
    common::rig(kind, members, spares, MEMBER).await
}

use common::pattern;

async fn wait_rebuilt(array: &Array) {
    common::wait_complete(array).await
}

fn check_consistent(array: &Array, sims: &[Rc<MemMember>]) {
    common::assert_redundancy_consistent(array, sims, "after the rebuild");
}

#[test]
fn spare_takes_over_and_rebuilds_under_foreground_writes() {
    for (kind, members) in [
        (LayoutKind::Raid1, 2),
        (LayoutKind::Raid5(Raid5Algorithm::LeftSymmetric), 4),
        (
            LayoutKind::Raid10(Raid10Layout {
                near: 2,
                far: 1,
                offset: false,
            }),
            4,
        ),
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
            let size = r.array.size_bytes() as usize;
            let mut model = pattern(size, 1).to_vec();
            r.array.write(0, pattern(size, 1), false).await.unwrap();
            r.faults[1].vanish();
            // The read notices the failure; the scheduler promotes the spare on its own.
            let got = BufSlice::zeroed(size);
            r.array.read(0, got.clone()).await.unwrap();
            assert_eq!(got.to_vec(), model, "{kind:?}: degraded read");
            // Foreground writes while the rebuild runs, below and above its cursor.
            let writer = {
                let array = r.array.clone();
                spawn(async move {
                    let mut done = Vec::new();
                    for i in 0..64u64 {
                        let at = (i * 7919 * 4096) % (array.size_bytes() - 65536);
                        let data = pattern(65536, 100 + i);
                        array.write(at, data.clone(), false).await.unwrap();
                        done.push((at, data.to_vec()));
                        sleep(Duration::from_micros(200)).await;
                    }
                    done
                })
            };
            for (at, data) in writer.await {
                model[at as usize..at as usize + data.len()].copy_from_slice(&data);
            }
            wait_rebuilt(&r.array).await;
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
            r.array.read(0, got.clone()).await.unwrap();
            assert!(got.to_vec() == model, "{kind:?}: data after the rebuild");
            check_consistent(&r.array, &r.sims);
            r.array.close().await.unwrap();
            // Without the failed member, the array is complete and reads the same.
            let survivors: Vec<Rc<dyn Member>> = r
                .sims
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != 1)
                .map(|(i, s)| {
                    Rc::new(MemMember::with_store(&format!("m{i}"), s.store(), 9)) as Rc<dyn Member>
                })
                .collect();
            let again = assemble(survivors, &AssembleOptions::default())
                .await
                .expect("reassemble without the failed member");
            assert!(
                again.array.slots().iter().all(|s| s.is_active()),
                "{kind:?}: complete after reassembly"
            );
            let got = BufSlice::zeroed(size);
            again.array.read(0, got.clone()).await.unwrap();
            assert!(got.to_vec() == model, "{kind:?}: data after reassembly");
            again.array.close().await.unwrap();
        })
        .unwrap();
    }
}

#[test]
fn no_spare_waits_and_says_so() {
    block_on(async {
        let r = rig(LayoutKind::Raid5(Raid5Algorithm::LeftSymmetric), 3, 0).await;
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
        assert!(r.array.rebuild_states().is_empty());
        r.array.close().await.unwrap();
    })
    .unwrap();
}

#[test]
fn crash_during_rebuild_resumes_from_a_checkpoint() {
    let stores = block_on(async {
        let r = rig(LayoutKind::Raid5(Raid5Algorithm::LeftSymmetric), 4, 1).await;
        let size = r.array.size_bytes() as usize;
        r.array.write(0, pattern(size, 5), false).await.unwrap();
        r.array.flush().await.unwrap();
        // Slow and frequent checkpoints, so a "crash" lands part-way with progress recorded.
        r.array
            .set_checkpoint_every(1 << 20, Duration::from_secs(3600));
        r.array.set_speed_limits(Some(2048), Some(2048));
        r.faults[0].vanish();
        let got = BufSlice::zeroed(4096);
        r.array.read(0, got.clone()).await.unwrap();
        let total = r.array.geometry().member_used_bytes();
        loop {
            sleep(Duration::from_millis(10)).await;
            let done = r
                .array
                .rebuild_states()
                .first()
                .map(|s| s.done_bytes)
                .unwrap_or(0);
            if done * 10 >= total * 4 {
                break;
            }
        }
        // Crash: the reactor goes away with the rebuild task mid-flight; no close().
        r.sims.iter().map(|s| s.store()).collect::<Vec<_>>()
    })
    .unwrap();
    block_on(async move {
        let members: Vec<Rc<dyn Member>> = stores
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != 0)
            .map(|(i, s)| {
                Rc::new(MemMember::with_store(&format!("m{i}"), s.clone(), 1)) as Rc<dyn Member>
            })
            .collect();
        let assembled = assemble(
            members,
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
        let array = assembled.array;
        let resumed_from = array
            .rebuild_states()
            .first()
            .map(|s| s.done_bytes)
            .expect("a rebuild to resume");
        assert!(resumed_from > 0, "the rebuild restarted from zero");
        wait_rebuilt(&array).await;
        let size = array.size_bytes() as usize;
        let got = BufSlice::zeroed(size);
        array.read(0, got.clone()).await.unwrap();
        assert!(
            got.to_vec() == pattern(size, 5).to_vec(),
            "data after the resumed rebuild"
        );
        array.close().await.unwrap();
    })
    .unwrap();
}

#[test]
fn replace_builds_the_new_member_while_the_old_stays_active() {
    for (kind, members) in [
        (LayoutKind::Raid5(Raid5Algorithm::LeftSymmetric), 4),
        (LayoutKind::Raid1, 2),
        (
            LayoutKind::Raid10(Raid10Layout {
                near: 2,
                far: 1,
                offset: false,
            }),
            4,
        ),
    ] {
        block_on(async move {
            let r = rig(kind.clone(), members, 0).await;
            let size = r.array.size_bytes() as usize;
            let mut model = pattern(size, 7).to_vec();
            r.array.write(0, pattern(size, 7), false).await.unwrap();
            let new = Rc::new(MemMember::new("new", MEMBER, 99));
            r.array
                .replace_member("m1", new.clone(), false)
                .await
                .expect("replace starts");
            let writer = {
                let array = r.array.clone();
                spawn(async move {
                    let mut done = Vec::new();
                    for i in 0..48u64 {
                        let at = (i * 6007 * 4096) % (array.size_bytes() - 65536);
                        let data = pattern(65536, 300 + i);
                        array.write(at, data.clone(), false).await.unwrap();
                        done.push((at, data.to_vec()));
                        sleep(Duration::from_micros(300)).await;
                    }
                    done
                })
            };
            for (at, data) in writer.await {
                model[at as usize..at as usize + data.len()].copy_from_slice(&data);
            }
            for _ in 0..20_000 {
                if r.array.replacement_state().is_none() {
                    break;
                }
                sleep(Duration::from_millis(2)).await;
            }
            assert!(
                r.array.replacement_state().is_none(),
                "{kind:?}: replacement did not finish"
            );
            assert!(
                matches!(&r.array.slots()[1], SlotState::Active(d) if d.member.path() == "new"),
                "{kind:?}"
            );
            assert!(
                r.array
                    .replaced_faulty()
                    .iter()
                    .any(|d| d.member.path() == "m1"),
                "{kind:?}: old member faulty"
            );
            let got = BufSlice::zeroed(size);
            r.array.read(0, got.clone()).await.unwrap();
            assert!(got.to_vec() == model, "{kind:?}: data after replace");
            let mut sims = r.sims.clone();
            sims.push(new);
            check_consistent(&r.array, &sims);
            r.array.close().await.unwrap();
        })
        .unwrap();
    }
}
