//! Unreadable sectors, as md handles them (issue 11 items 1 and 8): a read error never fails a
//! member outside the foreground path either; what redundancy covers is corrected, what it
//! cannot is recorded in md's bad-block log of the member concerned and reads of it fail with
//! EIO, while the array stays up; the record survives a restart and is cleared once the data
//! is had again.

use raidcore::control::AssembleOptions;
use raidcore::layout::{LayoutKind, Raid0Layout};
use raidcore::member::{FaultKind, FaultRule};
use raidcore::metadata::{BadBlocks, Superblock};
use raidcore::raid::events::Event;
use raidcore::raid::ArrayState;
use raidcore::reactor::block_on;

mod common;
use common::{pattern, raid5, read_array, rig, wait_complete, Rig};

const MEMBER: u64 = 12 << 20;
const CHUNK: u64 = 64 << 10;

/// The array offset whose data lives at member offset `member_offset` of `slot` (RAID5,
/// left-symmetric, 4 members, 64 KiB chunks), if that chunk holds data in its row.
fn array_offset_of(array: &raidcore::raid::Array, slot: usize, member_offset: u64) -> Option<u64> {
    match array.geometry().reverse(slot, member_offset) {
        raidcore::layout::Reverse::Data { array_offset } => Some(array_offset),
        _ => None,
    }
}

/// Makes one sector of m2 unreadable, in a row where m1 and m2 both hold data, then fails m1
/// and waits for the spare's rebuild, which cannot copy that row's block of m1. Returns the
/// member offset of the sector.
async fn rebuild_m1_past_a_bad_sector_of_m2(r: &Rig) -> u64 {
    let bad_at = (0..)
        .map(|row| row * CHUNK + 8192)
        .find(|&off| {
            array_offset_of(&r.array, 1, off).is_some()
                && array_offset_of(&r.array, 2, off).is_some()
        })
        .unwrap();
    let data_offset = r.array.slots()[2].disk().unwrap().data_offset;
    r.faults[2].inject(common::on_range(
        FaultKind::ReadError,
        data_offset + bad_at,
        4096,
    ));
    r.control.fail_member("m1", false).await.unwrap();
    wait_complete(&r.control).await;
    bad_at
}

#[test]
fn a_read_error_on_a_survivor_during_a_rebuild_is_recorded_and_the_array_stays_up() {
    let sims = block_on(async {
        let r = rig(raid5(), 4, 1, MEMBER).await;
        let size = r.array.size_bytes() as usize;
        let model = common::fill(&r.array, 11).await;
        let bad_at = rebuild_m1_past_a_bad_sector_of_m2(&r).await;
        assert_eq!(r.array.state(), ArrayState::Active, "the array stays up");
        assert!(r.array.slots()[2].is_active(), "m2 stays in");
        let bad = r.array.bad_blocks();
        assert_eq!(
            bad,
            vec![("s0".to_string(), vec![(bad_at, 4096)])],
            "the block the spare could not be given is recorded on it"
        );
        assert!(r
            .events
            .borrow()
            .iter()
            .any(|e| matches!(e, Event::BadBlocksRecorded { member, .. } if member == "s0")));
        // The two lost blocks read EIO; every other byte reads right.
        let lost = [
            array_offset_of(&r.array, 1, bad_at).unwrap(),
            array_offset_of(&r.array, 2, bad_at).unwrap(),
        ];
        for at in lost {
            let err = read_array(&r.array, at, 4096)
                .await
                .expect_err("lost data reads EIO");
            assert_eq!(err.kind(), raidcore::ErrorKind::Io, "{err}");
        }
        for at in (0..size as u64).step_by(65536) {
            if lost.iter().any(|&l| l / 65536 == at / 65536) {
                continue;
            }
            let got = read_array(&r.array, at, 65536).await.unwrap();
            assert!(
                got[..] == model[at as usize..at as usize + 65536],
                "offset {at}"
            );
        }
        // The record is in md's bad-block log on the spare's disk, with the feature bit.
        let s0 = &r.sims[4];
        let bytes = s0.store().lock().unwrap().clone();
        let sb = Superblock::decode(&bytes[4096..4096 + 4096]).unwrap();
        assert!(sb.has_feature(raidcore::metadata::FEATURE_BAD_BLOCKS));
        let at = (4096 + sb.bblog_offset_sectors as i64 * 512) as usize;
        let log =
            BadBlocks::decode(&bytes[at..at + sb.bblog_size_sectors as usize * 512], 0).unwrap();
        let d0 = r.array.slots()[1].disk().unwrap().data_offset;
        assert_eq!(log.ranges(), &[((d0 + bad_at) / 512, 8)]);
        r.array.close().await.unwrap();
        r.sims.clone()
    })
    .unwrap();
    // A restart keeps the record; once m2's sector reads again, a read of the lost range
    // reconstructs it, rewrites the spare's block and clears the record.
    block_on(async move {
        let opts = AssembleOptions::default();
        let array = common::reassemble(&sims, &opts).await.unwrap().array;
        assert_eq!(array.bad_blocks().len(), 1, "loaded from the log");
        let at = (0..)
            .map(|row| row * CHUNK + 8192)
            .find_map(|off| {
                let _ = array_offset_of(&array, 2, off)?;
                array.bad_blocks()[0]
                    .1
                    .iter()
                    .any(|r| r.0 == off)
                    .then(|| array_offset_of(&array, 1, off))?
            })
            .unwrap();
        let got = read_array(&array, at, 4096).await.expect("readable again");
        assert!(
            got[..]
                == pattern(array.size_bytes() as usize, 11).to_vec()
                    [at as usize..at as usize + 4096]
        );
        assert!(
            array.bad_blocks().is_empty(),
            "the record is cleared once rewritten"
        );
        array.close().await.unwrap();
    })
    .unwrap();
}

#[test]
fn a_read_error_during_check_is_corrected_not_a_failure() {
    for kind in [raid5(), LayoutKind::Raid1] {
        block_on(async move {
            let r = rig(
                kind.clone(),
                if kind == LayoutKind::Raid1 { 2 } else { 4 },
                0,
                MEMBER,
            )
            .await;
            let size = r.array.size_bytes() as usize;
            r.array.write(0, pattern(size, 5), false).await.unwrap();
            let data_offset = r.array.slots()[0].disk().unwrap().data_offset;
            r.faults[0].inject(FaultRule {
                kind: FaultKind::ReadError,
                range: Some((data_offset + (1 << 20), 4096)),
                // A pending sector: it fails until rewritten (the check reads it twice).
                count: Some(2),
            });
            r.control.start_scrub(false).unwrap();
            let s = common::wait_scrub(&r.control).await;
            assert_eq!(
                r.faults[0].fired(),
                2,
                "{kind:?}: the check hit the bad sector"
            );
            assert_eq!(s.mismatch_sectors, 0, "{kind:?}");
            assert!(
                r.array.slots().iter().all(|s| s.is_active()),
                "{kind:?}: nobody failed"
            );
            assert!(
                r.events
                    .borrow()
                    .iter()
                    .any(|e| matches!(e, Event::ReadErrorCorrected { slot: 0, .. })),
                "{kind:?}: the sector was rewritten from redundancy"
            );
            common::assert_redundancy_consistent(&r.array, &r.sims, "after the check");
            r.array.close().await.unwrap();
        })
        .unwrap();
    }
}

#[test]
fn a_read_error_under_a_partial_raid5_write_is_worked_around_and_repaired() {
    block_on(async {
        let r = rig(raid5(), 4, 0, MEMBER).await;
        let mut model = common::fill(&r.array, 21).await;
        let data_offset = r.array.slots()[1].disk().unwrap().data_offset;
        // m1 cannot read its first rows; writes into those rows must not need it.
        r.faults[1].inject(common::on_range(
            FaultKind::ReadError,
            data_offset,
            4 * CHUNK,
        ));
        for at in [0u64, 4096, 3 * CHUNK + 512, 5 * CHUNK] {
            common::write_model(&r.array, &mut model, at, pattern(8192, 100 + at)).await;
        }
        assert!(r.array.slots().iter().all(|s| s.is_active()), "m1 stays in");
        r.faults[1].clear();
        common::assert_reads_model(
            &r.array,
            &model,
            "data after writes around an unreadable member",
        )
        .await;
        common::assert_redundancy_consistent(&r.array, &r.sims, "after the writes");
        r.array.close().await.unwrap();
    })
    .unwrap();
}

/// Reads `len` bytes of `sim` at absolute offset `at`, past the fault layer.
async fn sim_bytes(sim: &raidcore::member::MemMember, at: u64, len: usize) -> Vec<u8> {
    use raidcore::member::Member;
    let buf = raidcore::buf::BufSlice::zeroed(len);
    sim.read(at, buf.clone()).await.unwrap();
    buf.to_vec()
}

/// The data slots of the RAID5 row holding member offset `member_offset`, with the array
/// offset of their chunk there.
fn data_in_row(array: &raidcore::raid::Array, member_offset: u64) -> Vec<(usize, u64)> {
    (0..4)
        .filter_map(|s| array_offset_of(array, s, member_offset).map(|a| (s, a)))
        .collect()
}

/// A RAID5 of 4 members created over old contents: its initial resync has yet to run.
async fn unsynced_raid5() -> Rig {
    common::rig_on(raid5(), common::sim_members(4, 0, MEMBER, false), 4, false).await
}

/// Review finding: a bad sector in a row not yet resynced. Parity there need not match the
/// data, so rebuilding the range from it answered bytes nobody wrote, and a write into the
/// row wrote them to the member. Now both get EIO and the member keeps its bytes.
#[test]
fn a_bad_sector_in_a_row_not_yet_resynced_is_eio_not_made_up() {
    block_on(async {
        let r = unsynced_raid5().await;
        r.control.set_speed_limits(Some(1), Some(1));
        let at = 8 << 20;
        let row = data_in_row(&r.array, at);
        let ((bad, bad_array), (_, other_array)) = (row[0], row[1]);
        let data_offset = r.array.slots()[bad].disk().unwrap().data_offset;
        let before = sim_bytes(&r.sims[bad], data_offset + at, CHUNK as usize).await;
        r.faults[bad].inject(common::on_range(
            FaultKind::ReadError,
            data_offset + at,
            CHUNK,
        ));
        assert!(
            r.array.sync_offset() <= at,
            "the resync is still short of the row"
        );
        let read = read_array(&r.array, bad_array, 4096).await;
        assert!(read.is_err(), "read of the bad range: {read:?}");
        let write = r.array.write(other_array, pattern(4096, 9), false).await;
        assert!(
            write.is_err(),
            "a partial write of the row needs the bad range"
        );
        r.faults[bad].clear();
        let after = sim_bytes(&r.sims[bad], data_offset + at, CHUNK as usize).await;
        assert!(
            after == before,
            "the member's bytes were rewritten from stale parity"
        );
        assert!(
            r.array.slots().iter().all(|s| s.is_active()),
            "nobody failed"
        );
        r.array.close().await.unwrap();
    })
    .unwrap();
}

/// Review finding: the resync met a bad sector on a data member. It rebuilt it from the
/// parity it was about to recompute (so from nothing) and wrote that back. Now the block is
/// lost on the member and on parity (recorded on both, reads get EIO) until a write of the
/// whole row gives both again.
#[test]
fn a_bad_sector_met_by_the_resync_is_recorded_not_rebuilt_from_stale_parity() {
    block_on(async {
        let r = unsynced_raid5().await;
        r.control.set_speed_limits(Some(1), Some(1));
        let at = 8 << 20;
        let row = data_in_row(&r.array, at);
        let (bad, bad_array) = row[0];
        let parity = r.array.geometry().p_slot(at / CHUNK);
        let data_offset = r.array.slots()[bad].disk().unwrap().data_offset;
        r.faults[bad].inject(common::on_range(
            FaultKind::ReadError,
            data_offset + at,
            4096,
        ));
        r.control.set_speed_limits(Some(500_000), Some(500_000));
        common::wait_until("the resync", || r.array.sync_offset() == u64::MAX).await;
        let mut recorded: Vec<String> = r
            .array
            .bad_blocks()
            .into_iter()
            .filter(|(_, b)| b.contains(&(at, 4096)))
            .map(|(m, _)| m)
            .collect();
        recorded.sort();
        let mut expected = vec![format!("m{bad}"), format!("m{parity}")];
        expected.sort();
        assert_eq!(
            recorded, expected,
            "the block is recorded lost on the member and parity"
        );
        assert!(read_array(&r.array, bad_array, 4096).await.is_err());
        assert!(read_array(&r.array, bad_array + 4096, 4096).await.is_ok());
        r.faults[bad].clear();
        // A write of the whole row has both again.
        let row_start = row.iter().map(|&(_, a)| a).min().unwrap();
        let data = pattern(3 * CHUNK as usize, 77);
        r.array.write(row_start, data.clone(), false).await.unwrap();
        assert!(
            read_array(&r.array, row_start, 3 * CHUNK as usize)
                .await
                .unwrap()
                == data.to_vec()
        );
        assert!(r.array.bad_blocks().iter().all(|(_, b)| b.is_empty()));
        common::assert_redundancy_consistent(&r.array, &r.sims, "after the row write");
        r.array.close().await.unwrap();
    })
    .unwrap();
}

/// Review finding: on RAID0 one unreadable sector failed the member and with it the whole
/// array. md's raid0 answers EIO for that read and nothing more.
#[test]
fn a_bad_sector_on_raid0_is_eio_for_that_read_only() {
    block_on(async {
        let r = rig(LayoutKind::Raid0(Raid0Layout::Original), 3, 0, MEMBER).await;
        let data_offset = r.array.slots()[1].disk().unwrap().data_offset;
        r.faults[1].inject(common::on_range(FaultKind::ReadError, data_offset, 4096));
        let m1 = array_offset_of(&r.array, 1, 0).unwrap();
        assert!(read_array(&r.array, m1, 4096).await.is_err());
        assert!(read_array(&r.array, m1 + 4096, 4096).await.is_ok());
        assert!(!r.array.is_failed());
        assert!(r.array.slots().iter().all(|s| s.is_active()));
        r.faults[1].clear();
        assert!(read_array(&r.array, m1, 4096).await.is_ok());
        r.array.close().await.unwrap();
    })
    .unwrap();
}

/// Review finding: a member with recorded bad blocks that left and came back was re-added
/// with a bitmap-driven rebuild, which skips the ranges it never had (they were not written
/// since it left), and its new superblock carried an empty log: those ranges then read as
/// whatever the disk held. It now gets a full rebuild.
#[test]
fn a_member_with_recorded_bad_blocks_is_rebuilt_in_full_when_re_added() {
    block_on(async {
        let r = rig(raid5(), 4, 1, MEMBER).await;
        let mut model = common::fill(&r.array, 31).await;
        rebuild_m1_past_a_bad_sector_of_m2(&r).await;
        assert_eq!(r.array.bad_blocks().len(), 1, "s0 lacks one block");
        r.faults[2].clear();
        // s0 leaves and comes back after a write elsewhere.
        r.control.fail_member("s0", false).await.unwrap();
        r.control.remove_member("s0").await.unwrap();
        common::write_model(&r.array, &mut model, 6 << 20, pattern(8192, 5)).await;
        let s0: std::rc::Rc<dyn raidcore::member::Member> = r.sims[4].clone();
        r.control.add_spare(s0, false).await.unwrap();
        wait_complete(&r.control).await;
        // Checked on the members themselves: a read through the array would repair it.
        common::assert_redundancy_consistent(&r.array, &r.sims, "after the re-add");
        r.array.close().await.unwrap();
        // And after a restart, from s0 itself (m2 is failed now, so nothing covers for it).
        let assembled = common::reassemble(&r.sims, &AssembleOptions::default())
            .await
            .unwrap();
        let array = assembled.array;
        assembled.control.fail_member("m2", false).await.unwrap();
        common::assert_reads_model(&array, &model, "after a restart, read through s0").await;
        array.close().await.unwrap();
    })
    .unwrap();
}
