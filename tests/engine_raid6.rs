//! RAID6 on simulated members: every md layout reads back what was written and keeps P and Q
//! right; any two members may vanish and the array still reads and takes writes; two spares
//! rebuild two failed members at once; check counts P/Q mismatches and repair fixes them;
//! an unreadable sector with one member already gone is rebuilt from Q; the initial resync
//! makes P and Q of a non-fresh array right.

use raidcore::buf::BufSlice;
use raidcore::layout::{LayoutKind, Raid6Algorithm};
use raidcore::member::FaultKind;
use raidcore::reactor::block_on;

mod common;
use common::{assert_reads_model, pattern, read_array, rig, wait_complete, write_model, Rig};

const MEMBER: u64 = 4 << 20;
const CHUNK: u64 = 64 << 10;

fn raid6(algorithm: Raid6Algorithm) -> LayoutKind {
    LayoutKind::Raid6(algorithm)
}

/// Writes that cut rows every way: inside a chunk, across chunks, across rows, whole rows.
async fn scribble(r: &Rig, model: &mut [u8], seed: u64) {
    let row = r.array.geometry().stripe_bytes();
    let size = r.array.size_bytes();
    for (i, (at, len)) in [
        (4096, 4096),
        (CHUNK - 512, 1024),
        (row - 8192, 3 * CHUNK),
        (2 * row, row),
        (size - 12 * 1024, 12 * 1024),
        (5 * row + 512, 7 * 512),
    ]
    .into_iter()
    .enumerate()
    {
        let data = pattern(len as usize, seed + i as u64);
        write_model(&r.array, model, at, data).await;
    }
}

/// A left-symmetric RAID6 of five members, filled with `seed` and flushed: the rig, the model
/// and where data starts on the members.
async fn filled_left_symmetric(seed: u64) -> (Rig, Vec<u8>, u64) {
    let r = rig(raid6(Raid6Algorithm::LeftSymmetric), 5, 0, MEMBER).await;
    let model = common::fill(&r.array, seed).await;
    r.array.flush().await.unwrap();
    let data_offset = r.array.slots()[0].disk().unwrap().data_offset;
    (r, model, data_offset)
}

#[test]
fn every_layout_keeps_p_and_q_and_reads_back_with_two_members_gone() {
    for algorithm in Raid6Algorithm::ALL {
        block_on(async move {
            let r = rig(raid6(algorithm), 5, 0, MEMBER).await;
            let mut model = common::fill(&r.array, 1).await;
            scribble(&r, &mut model, 10).await;
            r.array.flush().await.unwrap();
            let context = format!("{algorithm:?}");
            common::assert_redundancy_consistent(&r.array, &r.sims, &context);
            r.faults[1].vanish();
            r.faults[3].vanish();
            assert_reads_model(&r.array, &model, &format!("{context}, two gone")).await;
            assert!(r.array.counters().degraded_reads > 0);
            r.array.close().await.unwrap();
        })
        .unwrap();
    }
}

#[test]
fn any_two_members_may_go_and_writes_still_land() {
    for (a, b) in [(0, 1), (0, 4), (1, 3), (2, 4), (3, 4)] {
        block_on(async move {
            let r = rig(raid6(Raid6Algorithm::LeftSymmetric), 5, 0, MEMBER).await;
            let mut model = common::fill(&r.array, 2).await;
            r.faults[a].vanish();
            r.faults[b].vanish();
            scribble(&r, &mut model, 20).await;
            assert!(!r.array.is_failed(), "m{a} and m{b} gone: RAID6 runs on");
            let context = format!("m{a} and m{b} gone, written degraded");
            assert_reads_model(&r.array, &model, &context).await;
            // A third member gone is one too many.
            let c = (0..5).find(|c| *c != a && *c != b).unwrap();
            r.faults[c].vanish();
            let _ = read_array(&r.array, 0, r.array.size_bytes() as usize).await;
            assert!(r.array.is_failed(), "three of five gone");
            r.array.close().await.unwrap();
        })
        .unwrap();
    }
}

#[test]
fn two_spares_rebuild_two_failed_members_at_once() {
    block_on(async {
        let r = rig(raid6(Raid6Algorithm::LeftSymmetric), 5, 2, MEMBER).await;
        let mut model = common::fill(&r.array, 3).await;
        r.faults[0].vanish();
        r.faults[2].vanish();
        // The failures are found by the next I/O; writes go on while the spares rebuild.
        scribble(&r, &mut model, 30).await;
        wait_complete(&r.control).await;
        let paths: Vec<String> = r
            .array
            .slots()
            .iter()
            .map(|s| s.disk().unwrap().member.path().to_string())
            .collect();
        assert!(
            paths.contains(&"s0".to_string()) && paths.contains(&"s1".to_string()),
            "both spares took a slot: {paths:?}"
        );
        common::assert_redundancy_consistent(&r.array, &r.sims, "after two rebuilds");
        assert_reads_model(&r.array, &model, "after two rebuilds").await;
        r.array.close().await.unwrap();
    })
    .unwrap();
}

#[test]
fn check_counts_p_and_q_mismatches_and_repair_fixes_them() {
    block_on(async {
        let (r, model, data_offset) = filled_left_symmetric(4).await;
        let geo = r.array.geometry().clone();
        // One byte of P in row 0, one of Q in row 1: a 4 KiB block each.
        for (slot, at) in [(geo.p_slot(0), 100), (geo.q_slot(1).unwrap(), CHUNK + 5000)] {
            let store = r.sims[slot].store();
            store.lock().unwrap()[(data_offset + at) as usize] ^= 0x5a;
        }
        r.control.start_scrub(false).unwrap();
        let check = common::wait_scrub(&r.control).await;
        assert_eq!(check.mismatch_sectors, 16, "{check:?}");
        r.control.start_scrub(true).unwrap();
        let repair = common::wait_scrub(&r.control).await;
        assert_eq!(repair.mismatch_sectors, 16, "{repair:?}");
        common::assert_redundancy_consistent(&r.array, &r.sims, "after repair");
        r.control.start_scrub(false).unwrap();
        assert_eq!(common::wait_scrub(&r.control).await.mismatch_sectors, 0);
        assert_reads_model(&r.array, &model, "after repair").await;
        r.array.close().await.unwrap();
    })
    .unwrap();
}

#[test]
fn an_unreadable_sector_with_one_member_gone_is_rebuilt_from_q_and_rewritten() {
    block_on(async {
        let (r, model, data_offset) = filled_left_symmetric(5).await;
        let geo = r.array.geometry().clone();
        // Row 0 (Q D0 D1 D2 P): m4 (P) gone, and D1 on m2 unreadable: only Q can give it.
        r.faults[4].vanish();
        let bad = 8192;
        r.faults[2].inject(common::on_range(
            FaultKind::ReadError,
            data_offset + bad,
            4096,
        ));
        let at = CHUNK + bad;
        assert_eq!(geo.parity_locate(at).slot, 2);
        let got = read_array(&r.array, at, 4096).await.unwrap();
        assert!(
            got == model[at as usize..at as usize + 4096],
            "rebuilt wrong"
        );
        assert!(!r.array.is_failed() && r.array.slots()[2].is_active());
        // The rewrite put the data back on m2 itself.
        r.faults[2].clear();
        let sector = &r.sims[2].store().lock().unwrap()
            [(data_offset + bad) as usize..(data_offset + bad + 4096) as usize]
            .to_vec();
        assert!(*sector == model[at as usize..at as usize + 4096]);
        assert_reads_model(&r.array, &model, "P gone, after the repair").await;
        r.array.close().await.unwrap();
    })
    .unwrap();
}

#[test]
fn the_initial_resync_makes_p_and_q_right() {
    block_on(async {
        let sims = common::sim_members(6, 0, MEMBER, false);
        // Old bytes on the members: an array made without --assume-clean must resync them.
        for (i, s) in sims.iter().enumerate() {
            let junk = pattern(MEMBER as usize, 99 + i as u64);
            s.store().lock().unwrap().copy_from_slice(&junk.to_vec());
        }
        let r = common::rig_on(raid6(Raid6Algorithm::RightAsymmetric6), sims, 6, false).await;
        let resync = common::wait_scrub(&r.control).await;
        assert!(resync.resync && resync.mismatch_sectors > 0, "{resync:?}");
        assert_eq!(r.array.sync_offset(), u64::MAX);
        common::assert_redundancy_consistent(&r.array, &r.sims, "after the resync");
        let buf = BufSlice::zeroed(4096);
        r.array.read(0, buf).await.unwrap();
        r.array.close().await.unwrap();
    })
    .unwrap();
}

/// On a wide row a small write is a read-modify-write: old P, Q and the old data of the
/// written piece only. The other data members of the row are not read (an unreadable sector
/// there is never met), and P and Q come out right.
#[test]
fn a_small_write_on_a_wide_row_reads_only_what_it_changes() {
    block_on(async {
        let r = rig(raid6(Raid6Algorithm::LeftSymmetric), 7, 0, MEMBER).await;
        let mut model = common::fill(&r.array, 6).await;
        r.array.flush().await.unwrap();
        let geo = r.array.geometry().clone();
        let data_offset = r.array.slots()[0].disk().unwrap().data_offset;
        let at = 8192;
        let written = geo.parity_locate(at).slot;
        let others: Vec<usize> = (0..7)
            .filter(|&s| s != written && geo.parity_data_index(0, s).is_some())
            .collect();
        assert_eq!(others.len(), 4);
        for &s in &others {
            r.faults[s].inject(common::on_range(FaultKind::ReadError, data_offset, CHUNK));
        }
        write_model(&r.array, &mut model, at, pattern(4096, 60)).await;
        for &s in &others {
            assert_eq!(
                r.faults[s].fired(),
                0,
                "slot {s} was read for a small write"
            );
            r.faults[s].clear();
        }
        common::assert_redundancy_consistent(&r.array, &r.sims, "after a read-modify-write");
        assert_reads_model(&r.array, &model, "after a read-modify-write").await;
        r.array.close().await.unwrap();
    })
    .unwrap();
}

/// With one member gone, a degraded read is the XOR of the row's other data chunks and P:
/// Q is not read (a read error armed on Q's member never fires) and the bytes are right.
#[test]
fn a_degraded_read_with_one_member_gone_does_not_read_q() {
    block_on(async {
        let (r, model, data_offset) = filled_left_symmetric(7).await;
        let geo = r.array.geometry().clone();
        // Row 0 is "Q D0 D1 D2 P": m2 (D1) goes, Q's member m0 must not be asked.
        let q = geo.q_slot(0).unwrap();
        r.faults[q].inject(common::on_range(FaultKind::ReadError, data_offset, CHUNK));
        r.faults[2].vanish();
        let at = CHUNK + 4096;
        assert_eq!(geo.parity_locate(at).slot, 2);
        let got = read_array(&r.array, at, 8192).await.unwrap();
        assert!(
            got == model[at as usize..at as usize + 8192],
            "rebuilt wrong"
        );
        assert_eq!(
            r.faults[q].fired(),
            0,
            "Q was read for a one-member reconstruction"
        );
        r.array.close().await.unwrap();
    })
    .unwrap();
}

/// A partial write into a row whose P member is gone and one of whose data members cannot
/// read the window: the unreadable chunk is rebuilt from Q, the write lands, the sector is
/// rewritten on its member, and everything reads back.
#[test]
fn a_write_into_a_row_with_one_member_gone_and_one_unreadable_lands() {
    block_on(async {
        let (r, mut model, data_offset) = filled_left_symmetric(8).await;
        // Row 0 is "Q D0 D1 D2 P": P (m4) gone, m2 (D1) cannot read; the write goes to D0.
        r.faults[4].vanish();
        r.faults[2].inject(common::on_range(FaultKind::ReadError, data_offset, 4096));
        write_model(&r.array, &mut model, 512, pattern(2048, 80)).await;
        assert!(!r.array.is_failed() && r.array.slots()[2].is_active());
        assert!(r.faults[2].fired() > 0, "the unreadable window was met");
        r.faults[2].clear();
        let on_m2 = r.sims[2].store().lock().unwrap()
            [data_offset as usize..data_offset as usize + 4096]
            .to_vec();
        let d1 = CHUNK as usize;
        assert!(
            on_m2 == model[d1..d1 + 4096],
            "m2's sector was not rewritten"
        );
        assert_reads_model(&r.array, &model, "P gone, m2 unreadable, after the write").await;
        r.array.close().await.unwrap();
    })
    .unwrap();
}

/// Three chunks of a row out of reach (two members gone, a third unreadable): reads and
/// writes of that row fail with EIO, nothing wrong is returned, and no member byte changes.
#[test]
fn a_row_with_three_chunks_lost_is_eio_and_untouched() {
    block_on(async {
        let (r, model, data_offset) = filled_left_symmetric(9).await;
        r.faults[0].vanish();
        r.faults[4].vanish();
        let _ = read_array(&r.array, 0, 4096).await;
        let _ = read_array(&r.array, 3 * CHUNK, 4096).await;
        assert!(!r.array.is_failed(), "two of five gone: RAID6 runs on");
        r.faults[2].inject(common::on_range(FaultKind::ReadError, data_offset, CHUNK));
        let before = common::snapshot(&r.sims);
        // D1 lives on m2 in row 0.
        assert!(
            read_array(&r.array, CHUNK, 4096).await.is_err(),
            "a read of D1"
        );
        let write = r.array.write(512, pattern(1024, 90), false).await;
        assert!(write.is_err(), "a write needing D1 to compute P and Q");
        assert!(common::snapshot(&r.sims) == before, "a member byte changed");
        r.faults[2].clear();
        assert!(
            read_array(&r.array, CHUNK, 4096).await.unwrap() == model[CHUNK as usize..][..4096]
        );
        r.array.close().await.unwrap();
    })
    .unwrap();
}

/// A check that meets an unreadable sector rebuilds it from the rest of the row, rewrites it
/// (a corrected read error), finds no mismatch, and leaves P and Q right.
#[test]
fn a_check_rewrites_an_unreadable_sector_it_meets() {
    block_on(async {
        let (r, model, data_offset) = filled_left_symmetric(10).await;
        r.faults[3].inject(common::on_range(
            FaultKind::ReadError,
            data_offset + 2 * CHUNK + 8192,
            4096,
        ));
        r.control.start_scrub(false).unwrap();
        let check = common::wait_scrub(&r.control).await;
        assert_eq!(check.mismatch_sectors, 0, "{check:?}");
        assert!(r.faults[3].fired() > 0);
        assert!(
            r.events.borrow().iter().any(|e| matches!(
                e,
                raidcore::raid::events::Event::ReadErrorCorrected { slot: 3, .. }
            )),
            "the sector was rewritten from the row"
        );
        r.faults[3].clear();
        common::assert_redundancy_consistent(&r.array, &r.sims, "after the check");
        assert_reads_model(&r.array, &model, "after the check").await;
        r.array.close().await.unwrap();
    })
    .unwrap();
}
