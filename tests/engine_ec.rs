//! k+m erasure-coded arrays on simulated members: for every m from 1 to 4 the array reads
//! back what was written with its parity right on the members; any m members may vanish and
//! it still reads and takes writes; m spares rebuild m failed members at once; check counts
//! mismatches in any parity chunk and repair fixes them; a sector unreadable with m-1 members
//! gone is rebuilt and rewritten; a row with m+1 chunks out of reach is EIO and untouched.

use raidcore::layout::LayoutKind;
use raidcore::member::FaultKind;
use raidcore::reactor::block_on;

mod common;
use common::{assert_reads_model, pattern, read_array, rig, wait_complete, write_model, Rig};

const MEMBER: u64 = 4 << 20;
const CHUNK: u64 = 64 << 10;

fn ec(parity: usize) -> LayoutKind {
    LayoutKind::Ec { parity }
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

/// A k+m array of `members`, filled with `seed` and flushed: the rig, the model and where
/// data starts on the members.
async fn filled(parity: usize, members: usize, seed: u64) -> (Rig, Vec<u8>, u64) {
    let r = rig(ec(parity), members, 0, MEMBER).await;
    let model = common::fill(&r.array, seed).await;
    r.array.flush().await.unwrap();
    let data_offset = r.array.slots()[0].disk().unwrap().data_offset;
    (r, model, data_offset)
}

#[test]
fn every_parity_count_reads_back_with_m_members_gone_and_takes_writes() {
    for parity in 1..=4 {
        let members = parity + 3;
        // Members gone: the first m, then m spread out (every second slot, wrapping).
        for gone in [
            (0..parity).collect::<Vec<_>>(),
            (0..parity).map(|i| (2 * i + 1) % members).collect(),
        ] {
            block_on(async move {
                let (r, mut model, _) = filled(parity, members, parity as u64).await;
                scribble(&r, &mut model, 10).await;
                r.array.flush().await.unwrap();
                let context = format!("{}+{parity}, {gone:?} gone", members - parity);
                common::assert_redundancy_consistent(&r.array, &r.sims, &context);
                for &slot in &gone {
                    r.faults[slot].vanish();
                }
                assert_reads_model(&r.array, &model, &context).await;
                assert!(
                    !r.array.is_failed(),
                    "{context}: m members gone is not a failure"
                );
                scribble(&r, &mut model, 40).await;
                assert_reads_model(&r.array, &model, &format!("{context}, written")).await;
                r.array.close().await.unwrap();
            })
            .unwrap();
        }
    }
}

#[test]
fn three_spares_rebuild_three_failed_members_at_once() {
    block_on(async {
        let r = rig(ec(3), 7, 3, MEMBER).await;
        let mut model = common::fill(&r.array, 3).await;
        for slot in [0, 2, 5] {
            r.faults[slot].vanish();
        }
        // The failures are found by the next I/O; writes go on while the spares rebuild.
        scribble(&r, &mut model, 30).await;
        wait_complete(&r.control).await;
        let paths: Vec<String> = r
            .array
            .slots()
            .iter()
            .map(|s| s.disk().unwrap().member.path().to_string())
            .collect();
        for spare in ["s0", "s1", "s2"] {
            assert!(
                paths.contains(&spare.to_string()),
                "{spare} took no slot: {paths:?}"
            );
        }
        common::assert_redundancy_consistent(&r.array, &r.sims, "after three rebuilds");
        assert_reads_model(&r.array, &model, "after three rebuilds").await;
        r.array.close().await.unwrap();
    })
    .unwrap();
}

#[test]
fn check_counts_mismatches_in_every_parity_chunk_and_repair_fixes_them() {
    block_on(async {
        let (r, model, data_offset) = filled(4, 7, 4).await;
        let geo = r.array.geometry().clone();
        // One byte of parity chunk j in row j: a 4 KiB block each, four in all.
        for j in 0..4u64 {
            let slot = geo.parity_slots(j).as_slice()[j as usize];
            let store = r.sims[slot].store();
            store.lock().unwrap()[(data_offset + j * CHUNK + 100) as usize] ^= 0x5a;
        }
        r.control.start_scrub(false).unwrap();
        let check = common::wait_scrub(&r.control).await;
        assert_eq!(check.mismatch_sectors, 32, "{check:?}");
        r.control.start_scrub(true).unwrap();
        let repair = common::wait_scrub(&r.control).await;
        assert_eq!(repair.mismatch_sectors, 32, "{repair:?}");
        common::assert_redundancy_consistent(&r.array, &r.sims, "after repair");
        r.control.start_scrub(false).unwrap();
        assert_eq!(common::wait_scrub(&r.control).await.mismatch_sectors, 0);
        assert_reads_model(&r.array, &model, "after repair").await;
        r.array.close().await.unwrap();
    })
    .unwrap();
}

/// 3+3, row 0 is "P2 P3 D0 D1 D2 P1": P1 and P2 gone, and D1 (slot 3) unreadable: only P3
/// can give it. The read is right and the sector is rewritten on its member.
#[test]
fn an_unreadable_sector_with_m_minus_one_members_gone_is_rebuilt_and_rewritten() {
    block_on(async {
        let (r, model, data_offset) = filled(3, 6, 5).await;
        let geo = r.array.geometry().clone();
        assert_eq!(geo.row_picture(0), ["P2", "P3", "D0", "D1", "D2", "P1"]);
        r.faults[5].vanish();
        r.faults[0].vanish();
        let bad = 8192;
        r.faults[3].inject(common::on_range(
            FaultKind::ReadError,
            data_offset + bad,
            4096,
        ));
        let at = CHUNK + bad;
        let got = read_array(&r.array, at, 4096).await.unwrap();
        assert!(
            got == model[at as usize..at as usize + 4096],
            "rebuilt wrong"
        );
        assert!(!r.array.is_failed() && r.array.slots()[3].is_active());
        assert!(r.faults[3].fired() > 0, "the unreadable sector was met");
        r.faults[3].clear();
        let sector = r.sims[3].store().lock().unwrap()
            [(data_offset + bad) as usize..(data_offset + bad + 4096) as usize]
            .to_vec();
        assert!(
            sector == model[at as usize..at as usize + 4096],
            "not rewritten"
        );
        assert_reads_model(&r.array, &model, "two gone, after the repair").await;
        r.array.close().await.unwrap();
    })
    .unwrap();
}

/// m+1 chunks of a row out of reach (m members gone, one more unreadable): reads and writes
/// of that row fail with EIO, nothing wrong is returned, and no member byte changes.
#[test]
fn a_row_with_more_chunks_lost_than_parity_is_eio_and_untouched() {
    block_on(async {
        let (r, model, data_offset) = filled(2, 5, 9).await;
        r.faults[0].vanish();
        r.faults[4].vanish();
        let _ = read_array(&r.array, 0, 4096).await;
        let _ = read_array(&r.array, 3 * CHUNK, 4096).await;
        assert!(!r.array.is_failed(), "two of five gone: 3+2 runs on");
        r.faults[2].inject(common::on_range(FaultKind::ReadError, data_offset, CHUNK));
        let before = common::snapshot(&r.sims);
        // Row 0 is "P2 D0 D1 D2 P1": D1 lives on m2.
        assert!(
            read_array(&r.array, CHUNK, 4096).await.is_err(),
            "a read of D1"
        );
        let write = r.array.write(512, pattern(1024, 90), false).await;
        assert!(write.is_err(), "a write needing D1 to compute parity");
        assert!(common::snapshot(&r.sims) == before, "a member byte changed");
        r.faults[2].clear();
        let d1 = read_array(&r.array, CHUNK, 4096).await.unwrap();
        assert!(d1 == model[CHUNK as usize..][..4096]);
        r.array.close().await.unwrap();
    })
    .unwrap();
}

/// A small write on a wide row is a read-modify-write: old parity and the old data of the
/// written piece only; the other data members of the row are not read.
#[test]
fn a_small_write_on_a_wide_row_reads_only_what_it_changes() {
    block_on(async {
        let (r, mut model, data_offset) = filled(3, 10, 6).await;
        let geo = r.array.geometry().clone();
        let at = 8192;
        let written = geo.parity_locate(at).slot;
        let others: Vec<usize> = (0..10)
            .filter(|&s| s != written && geo.parity_data_index(0, s).is_some())
            .collect();
        assert_eq!(others.len(), 6);
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
