//! The failures real disks produce, on simulated members: a member dying part-way through a
//! `replace`, a power cut after a flush while a spare is rebuilt, a read error racing a write
//! on a mirror, a resync deferred behind a rebuild, a stop with a write stuck on a slow member,
//! a replacement that fails a write. Each test fails on the engine as it was before the fix it
//! names (issue 11, items 2 to 7 and 10).

use std::rc::Rc;
use std::time::Duration;

use raidcore::control::AssembleOptions;
use raidcore::layout::LayoutKind;
use raidcore::member::{FaultKind, FaultRule, MemMember};
use raidcore::raid::events::Event;
use raidcore::raid::SlotState;
use raidcore::reactor::{block_on, sleep, spawn};

mod common;
use common::{assert_reads_model, pattern, raid5, read_array, rig, rig_on, sim_members};
use common::{wait_complete, wait_until, write_model};

const MEMBER: u64 = 12 << 20;

/// Item 2: the old member fails part-way through `replace`, writes continue. The replacement
/// must turn into a recovery of the slot that keeps its cursor, the spare must stay a spare,
/// and every byte written after the failure must read back.
#[test]
fn replace_whose_old_member_fails_midway_ends_as_a_recovery_with_every_write() {
    block_on(async {
        let r = rig(raid5(), 4, 1, MEMBER).await;
        let size = r.array.size_bytes() as usize;
        let mut model = common::fill(&r.array, 1).await;
        r.control.set_speed_limits(Some(1000), Some(1000));
        let new = Rc::new(MemMember::new("new", MEMBER, 77));
        r.control
            .replace_member("m1", new.clone(), false)
            .await
            .expect("replace starts");
        wait_until("the copy to pass its first step", || {
            r.control.replacement_state().is_some_and(|s| s.2 > 0)
        })
        .await;
        r.control.fail_member("m1", false).await.expect("fail m1");
        // Writes over the whole array after the failure: below the copy cursor they must
        // reach the new member, above it the recovery copies them.
        for i in 0..(size as u64 / (256 << 10)) {
            let at = i * (256 << 10);
            write_model(&r.array, &mut model, at, pattern(128 << 10, 100 + i)).await;
        }
        assert!(
            r.array.spares().iter().any(|d| d.member.path() == "s0"),
            "the spare must not take a slot that a replacement is filling"
        );
        r.control.set_speed_limits(Some(200_000), Some(200_000));
        wait_complete(&r.control).await;
        assert!(
            matches!(&r.array.slots()[1], SlotState::Active(d) if d.member.path() == "new"),
            "the new member carries slot 1: {}",
            r.array.missing_description()
        );
        assert!(r.array.spares().iter().any(|d| d.member.path() == "s0"));
        assert_reads_model(&r.array, &model, "after the replacement became a recovery").await;
        let mut sims = r.sims.clone();
        sims.push(new);
        common::assert_redundancy_consistent(&r.array, &sims, "after replace + failure");
        r.array.close().await.unwrap();
    })
    .unwrap();
}

/// Item 3: the swap at the end of `replace` waits for the meta lock; writes meanwhile must
/// reach the new member. Here another member fails just as the copy ends, so its (slowed)
/// superblock update holds the lock while a writer keeps going; afterwards the array runs on
/// the new member, and every write must read back.
#[test]
fn replace_swap_loses_no_write_while_it_waits_for_the_metadata_lock() {
    use std::cell::{Cell, RefCell};
    block_on(async {
        let r = rig(raid5(), 4, 0, MEMBER).await;
        let size = r.array.size_bytes();
        let model = Rc::new(RefCell::new(common::fill(&r.array, 1).await));
        // The new member's flush (the copy's last step) and every superblock write are slow.
        let new_faults = raidcore::member::FaultHandle::default();
        new_faults.inject(common::on_range(
            FaultKind::Delay(Duration::from_millis(100)),
            0,
            1,
        ));
        for f in &r.faults {
            f.inject(common::on_range(
                FaultKind::Delay(Duration::from_millis(400)),
                4096,
                4096,
            ));
        }
        let new_sim = Rc::new(MemMember::new("new", MEMBER, 5));
        let new = Rc::new(raidcore::member::FaultMember::new(
            new_sim.clone(),
            new_faults.clone(),
        ));
        // No throttle pause between the last copy step and the swap.
        r.control.set_speed_limits(Some(500_000), Some(500_000));
        r.control.replace_member("m2", new, false).await.unwrap();
        let total = r.control.replacement_state().unwrap().3;
        let stop = Rc::new(Cell::new(false));
        let writer = spawn({
            let (array, model, stop) = (r.array.clone(), model.clone(), stop.clone());
            async move {
                let mut i = 0u64;
                while !stop.get() {
                    let at = (i * 7919 * 4096) % (size - 65536);
                    let data = pattern(65536, 1000 + i);
                    array.write(at, data.clone(), false).await.unwrap();
                    model.borrow_mut()[at as usize..at as usize + 65536]
                        .copy_from_slice(&data.to_vec());
                    i += 1;
                    sleep(Duration::from_millis(2)).await;
                }
            }
        });
        wait_until("the copy to reach the end", || {
            r.control.replacement_state().is_none_or(|s| s.2 == total)
        })
        .await;
        r.control.fail_member("m0", false).await.unwrap();
        wait_until("the swap", || r.control.replacement_state().is_none()).await;
        sleep(Duration::from_millis(50)).await;
        stop.set(true);
        writer.await;
        assert!(matches!(&r.array.slots()[2], SlotState::Active(d) if d.member.path() == "new"));
        for f in &r.faults {
            f.clear();
        }
        let model = model.borrow().clone();
        assert_reads_model(&r.array, &model, "after the swap, degraded").await;
        r.array.close().await.unwrap();
    })
    .unwrap();
}

/// Item 4: FLUSH must reach a member being rebuilt. A write below the rebuild cursor, an
/// acknowledged FLUSH, then a power cut: the spare's checkpoint vouches for the bytes below
/// its recovery offset, so they must have been made durable on it.
#[test]
fn flush_covers_a_member_being_rebuilt_across_a_power_cut() {
    let sims = block_on(async {
        let r = rig_on(raid5(), sim_members(4, 1, MEMBER, true), 4, true).await;
        let size = r.array.size_bytes() as usize;
        r.array.write(0, pattern(size, 3), false).await.unwrap();
        r.array.flush().await.unwrap();
        r.control.set_checkpoint_every(1, Duration::from_millis(1));
        r.control.set_speed_limits(Some(1000), Some(1000));
        r.control.fail_member("m1", false).await.unwrap();
        wait_until("the rebuild to pass its first step", || {
            r.control
                .rebuild_states()
                .first()
                .is_some_and(|s| s.done_bytes > (1 << 20))
        })
        .await;
        sleep(Duration::from_millis(100)).await; // its checkpoint
                                                 // Rows 0.. of the array: slot 1's part of them lies below the cursor.
        r.array.write(0, pattern(1 << 20, 4), false).await.unwrap();
        r.array.flush().await.unwrap();
        r.sims.clone()
    })
    .unwrap();
    // The process dies with the machine: every member loses part of what was not flushed.
    for (i, s) in sims.iter().enumerate() {
        s.power_cut(40 + i as u64);
    }
    block_on(async move {
        let opts = AssembleOptions {
            run: true,
            force: true,
            ..Default::default()
        };
        let assembled = common::reassemble(&sims, &opts).await.expect("reassemble");
        let array = assembled.array;
        wait_complete(&assembled.control).await;
        let got = read_array(&array, 0, 1 << 20).await.unwrap();
        assert!(
            got == pattern(1 << 20, 4).to_vec(),
            "a flushed write below the rebuild cursor was lost in the power cut"
        );
        wait_until("the resync", || array.sync_offset() == u64::MAX).await;
        let got = read_array(&array, 0, 1 << 20).await.unwrap();
        assert!(got == pattern(1 << 20, 4).to_vec(), "after the resync");
        common::assert_redundancy_consistent(&array, &sims, "after the power cut");
        array.close().await.unwrap();
    })
    .unwrap();
}

/// Item 5: a mirror read error repaired while a write to the same blocks runs. The repair
/// must never put old bytes back over the new ones: afterwards both copies are equal and
/// hold the write.
#[test]
fn mirror_read_repair_never_undoes_a_concurrent_write() {
    // Fresh arrays: more than 20 corrected reads would fail the member (md's limit).
    for round in 0..12u64 {
        mirror_repair_round(round);
    }
}

fn mirror_repair_round(round: u64) {
    block_on(async move {
        let r = rig(LayoutKind::Raid1, 2, 0, 8 << 20).await;
        r.array
            .write(0, pattern(1 << 20, 9), false)
            .await
            .unwrap();
        // Different rounds see the simulated members' completion order from other points.
        for k in 0..round * 3 {
            read_array(&r.array, (k % 16) * 65536, 4096).await.unwrap();
        }
        let data_offset = r.array.slots()[0].disk().unwrap().data_offset;
        for i in 0..18u64 {
            let block = (i % 16) * 65536;
            let unreadable = common::on_range(FaultKind::ReadError, data_offset + block, 65536);
            r.faults[0].inject(FaultRule {
                count: Some(1),
                ..unreadable
            });
            let new = pattern(65536, 500 + i);
            let read = spawn({
                let array = r.array.clone();
                async move { read_array(&array, block, 65536).await }
            });
            r.array.write(block, new.clone(), false).await.unwrap();
            read.await.expect("the read is answered");
            r.faults[0].clear();
            for (k, sim) in r.sims.iter().enumerate() {
                let store = sim.store();
                let bytes = store.lock().unwrap();
                let at = (data_offset + block) as usize;
                assert!(
                    bytes[at..at + 65536] == new.to_vec()[..],
                    "round {round}, iteration {i}: copy {k} lost the write (the repair put old data back)"
                );
            }
        }
        r.array.close().await.unwrap();
    })
    .unwrap();
}

/// Item 6: a resync that could not run because a member was being rebuilt starts as soon as
/// the array is complete, without a restart.
#[test]
fn resync_deferred_by_a_rebuild_runs_when_the_rebuild_finishes() {
    block_on(async {
        let r = rig_on(raid5(), sim_members(4, 1, MEMBER, false), 4, false).await;
        r.control.set_speed_limits(Some(1000), Some(1000));
        assert_ne!(r.array.sync_offset(), u64::MAX, "an initial resync is due");
        r.control.fail_member("m1", false).await.unwrap();
        r.control.set_speed_limits(Some(200_000), Some(200_000));
        wait_complete(&r.control).await;
        wait_until("the deferred resync to finish", || {
            r.array.sync_offset() == u64::MAX
        })
        .await;
        assert!(r
            .events
            .borrow()
            .iter()
            .any(|e| matches!(e, Event::ResyncFinished { .. })));
        common::assert_redundancy_consistent(&r.array, &r.sims, "after the deferred resync");
        r.array.close().await.unwrap();
    })
    .unwrap();
}

/// Item 7: `close` with a write still waiting on a slow member must not mark the array
/// clean (the next start would skip the resync that write may need).
#[test]
fn close_with_a_write_in_flight_leaves_the_array_dirty() {
    block_on(async {
        let r = rig(LayoutKind::Raid1, 2, 0, 8 << 20).await;
        r.array.write(0, pattern(65536, 1), false).await.unwrap();
        let data_offset = r.array.slots()[1].disk().unwrap().data_offset;
        r.faults[1].inject(FaultRule {
            count: Some(1),
            ..common::on_range(
                FaultKind::Delay(Duration::from_secs(3)),
                data_offset,
                1 << 20,
            )
        });
        let stuck = spawn({
            let array = r.array.clone();
            async move { array.write(0, pattern(65536, 2), false).await }
        });
        sleep(Duration::from_millis(20)).await;
        let closed = r.array.close().await;
        let err = closed.expect_err("close must say the array stays dirty");
        assert!(err.to_string().contains("dirty"), "{err}");
        assert_ne!(
            r.array.superblock().resync_offset,
            u64::MAX,
            "marked clean with a write in flight"
        );
        stuck.await.unwrap();
    })
    .unwrap();
}

/// Item 7, second half: `close` waits for a running check to stop before it marks clean.
#[test]
fn close_waits_for_a_running_check() {
    block_on(async {
        let r = rig(raid5(), 4, 0, MEMBER).await;
        r.control.set_speed_limits(Some(1000), Some(1000));
        r.control.start_scrub(true).unwrap();
        sleep(Duration::from_millis(20)).await;
        r.array.close().await.unwrap();
        assert!(
            !r.control.scrub_state().unwrap().running,
            "close returned while the check was still running"
        );
    })
    .unwrap();
}

/// Item 10: a replacement whose new member fails a write is given up, and that member is
/// recorded faulty, never put on the spare list (where a failure would promote it).
#[test]
fn a_replacement_that_failed_a_write_is_not_lent_to_the_spares() {
    block_on(async {
        let r = rig(raid5(), 4, 0, MEMBER).await;
        let size = r.array.size_bytes() as usize;
        r.array.write(0, pattern(size, 2), false).await.unwrap();
        let faults = raidcore::member::FaultHandle::default();
        let new = Rc::new(raidcore::member::FaultMember::new(
            Rc::new(MemMember::new("new", MEMBER, 8)),
            faults.clone(),
        ));
        r.control.set_speed_limits(Some(1000), Some(1000));
        r.control.replace_member("m3", new, false).await.unwrap();
        faults.inject(FaultRule::new(FaultKind::WriteError));
        r.control.set_speed_limits(Some(200_000), Some(200_000));
        r.array.write(0, pattern(size, 3), false).await.unwrap();
        wait_until("the replacement to be given up", || {
            r.control.replacement_state().is_none()
        })
        .await;
        assert!(
            r.array.spares().iter().all(|d| d.member.path() != "new"),
            "a member that failed a write must not become a spare"
        );
        assert!(r
            .events
            .borrow()
            .iter()
            .any(|e| matches!(e, Event::RebuildAborted { .. })));
        let sb = r.array.superblock();
        assert!(
            (0..sb.dev_roles.len() as u32)
                .any(|d| sb.role_of(d) == raidcore::metadata::Role::Faulty),
            "the failed replacement is recorded faulty"
        );
        assert!(r.array.slots().iter().all(|s| s.is_active()));
        assert_reads_model(&r.array, &pattern(size, 3).to_vec(), "after the abort").await;
        r.array.close().await.unwrap();
    })
    .unwrap();
}
