//! Failure paths of the engine, each with an injected fault on simulated members: a read error
//! is answered from redundancy and fails the member (recorded in the other superblocks); a
//! second failure fails a RAID5 cleanly; RAID0 loses data at the first failure and says so;
//! arrays built on old contents are written with reconstruct-write until synced, so parity ends
//! up right even over garbage.

use raidcore::buf::BufSlice;
use raidcore::control::{assemble, AssembleOptions, CreateOptions};
use raidcore::layout::{LayoutKind, Raid0Layout};
use raidcore::member::FaultKind;
use raidcore::metadata::Role;
use raidcore::raid::ArrayState;
use raidcore::reactor::block_on;

mod common;
use common::{raid10, raid5, read_array, Rig};
use raidcore::ErrorKind;

const MEMBER: u64 = 8 << 20;

/// `members` fresh 8 MiB members, created with the bitmap chunk `create` picks.
async fn rig(kind: LayoutKind, members: usize, fresh: bool, junk: bool) -> Rig {
    rig_with(kind, members, fresh, junk, AssembleOptions::default()).await
}

/// As [`rig`], assembled with `assemble_opts`; `junk` fills the members with old contents
/// first (what `fresh` false leaves for a resync to put right).
async fn rig_with(
    kind: LayoutKind,
    members: usize,
    fresh: bool,
    junk: bool,
    assemble_opts: AssembleOptions,
) -> Rig {
    let sims = common::sim_members(members, 0, MEMBER, false);
    if junk {
        for (i, s) in sims.iter().enumerate() {
            let store = s.store();
            let mut bytes = store.lock().unwrap();
            for (j, b) in bytes.iter_mut().enumerate() {
                *b = (j as u64).wrapping_mul(31).wrapping_add(i as u64 * 7) as u8;
            }
        }
    }
    let create = CreateOptions {
        fresh,
        ..common::create_options("t", kind)
    };
    common::rig_with(sims, members, &create, &assemble_opts).await
}

fn filled(len: usize, seed: u8) -> BufSlice {
    BufSlice::filled(len, |b| {
        for (i, x) in b.iter_mut().enumerate() {
            *x = (i as u8).wrapping_mul(13).wrapping_add(seed);
        }
    })
}

/// A fresh array of 4 members, written all over with `filled(size, seed)`; returns that too.
async fn filled_rig(kind: LayoutKind, seed: u8) -> (Rig, Vec<u8>) {
    let r = rig(kind, 4, true, false).await;
    let data = filled(r.array.size_bytes() as usize, seed);
    r.array.write(0, data.clone(), false).await.unwrap();
    (r, data.to_vec())
}

/// The members in `slots` vanish; the array must still read `data` in full.
async fn vanish_and_read_all(r: &Rig, slots: &[usize], data: &[u8]) {
    for &slot in slots {
        r.faults[slot].vanish();
    }
    let got = read_array(&r.array, 0, data.len()).await.unwrap();
    assert_eq!(got, data, "degraded read");
}

#[test]
fn read_errors_are_repaired_counted_and_fail_the_member_only_when_persistent() {
    for kind in [LayoutKind::Raid1, raid5()] {
        block_on(async move {
            let r = rig(kind.clone(), 3, true, false).await;
            let data = filled(1 << 20, 1);
            r.array.write(0, data.clone(), false).await.unwrap();
            // One bad read on member 0 (wherever it is read): answered from redundancy and
            // rewritten; the member stays.
            r.faults[0].inject(common::once(FaultKind::ReadError));
            let mut reads = 0;
            while r.faults[0].fired() == 0 && reads < 64 {
                let got = read_array(&r.array, (reads % 16) * 65536, 65536)
                    .await
                    .expect("read answered");
                assert_eq!(
                    got,
                    data.to_vec()[(reads as usize % 16) * 65536..][..65536],
                    "{kind:?}"
                );
                reads += 1;
            }
            assert_eq!(r.faults[0].fired(), 1, "{kind:?}: the bad read happened");
            assert!(
                r.array.slots()[0].is_active(),
                "{kind:?}: one corrected read error must not fail the member"
            );
            assert_eq!(r.array.state(), ArrayState::Active, "{kind:?}");
            // More than 20 corrected errors: the member is failed.
            for _ in 0..30 {
                r.faults[0].inject(common::once(FaultKind::ReadError));
                for at in 0..16 {
                    let got = read_array(&r.array, at * 65536, 65536)
                        .await
                        .expect("read answered");
                    assert_eq!(got, data.to_vec()[at as usize * 65536..][..65536]);
                }
            }
            assert!(
                !r.array.slots()[0].is_active(),
                "{kind:?}: persistent read errors must fail the member"
            );
            assert_eq!(r.array.superblock().role_of(0), Role::Faulty, "{kind:?}");
        })
        .unwrap();
    }
}

#[test]
fn a_failed_rewrite_after_a_read_error_fails_the_member() {
    block_on(async {
        let r = rig(LayoutKind::Raid1, 2, true, false).await;
        let data = filled(1 << 20, 2);
        r.array.write(0, data.clone(), false).await.unwrap();
        // Reads at offset 0 go to copy 0 first: it errors, copy 1 answers, and the rewrite of
        // copy 0 fails, which fails member 0.
        r.faults[0].inject(common::once(FaultKind::WriteError));
        r.faults[0].inject(common::once(FaultKind::ReadError));
        let got = read_array(&r.array, 0, 1 << 20)
            .await
            .expect("answered from the other copy");
        assert_eq!(got, data.to_vec());
        assert_eq!(
            r.faults[0].fired(),
            2,
            "the read and the rewrite both hit member 0"
        );
        assert_eq!(
            r.array.state(),
            ArrayState::Degraded,
            "the member whose rewrite failed is out"
        );
        assert!(!r.array.slots()[0].is_active());
    })
    .unwrap();
}

#[test]
fn raid5_second_failure_fails_the_array_cleanly() {
    block_on(async {
        let (r, data) = filled_rig(raid5(), 3).await;
        vanish_and_read_all(&r, &[1], &data).await;
        r.array
            .write(0, filled(65536 * 5, 4), false)
            .await
            .expect("degraded write");
        assert_eq!(r.array.state(), ArrayState::Degraded);
        r.faults[3].vanish();
        let err = r
            .array
            .write(0, filled(4096, 5), false)
            .await
            .expect_err("no redundancy left");
        assert_eq!(err.kind(), ErrorKind::ArrayFailed);
        assert_eq!(err.errno(), libc_eio());
        assert_eq!(r.array.state(), ArrayState::Failed);
        assert!(
            err.to_string().contains("slot 1"),
            "names the missing members: {err}"
        );
        // Every later write is refused; nothing is written to the survivors.
        let before: Vec<Vec<u8>> = [0, 2]
            .iter()
            .map(|&i| r.sims[i].store().lock().unwrap().clone())
            .collect();
        assert!(r
            .array
            .write(1 << 20, filled(4096, 6), false)
            .await
            .is_err());
        assert!(r.array.trim(0, 1 << 20).await.is_err());
        let after: Vec<Vec<u8>> = [0, 2]
            .iter()
            .map(|&i| r.sims[i].store().lock().unwrap().clone())
            .collect();
        assert!(before == after, "a failed array must not write");
        // Reads that need a lost chunk fail with EIO instead of returning garbage.
        assert!(read_array(&r.array, 0, data.len()).await.is_err());
    })
    .unwrap();
}

#[test]
fn raid0_member_loss_is_an_io_error_not_a_crash() {
    block_on(async {
        let r = rig(LayoutKind::Raid0(Raid0Layout::Original), 3, true, false).await;
        r.array.write(0, filled(1 << 20, 7), false).await.unwrap();
        r.faults[2].vanish();
        let err = read_array(&r.array, 0, 1 << 20)
            .await
            .expect_err("data on the lost member");
        assert_eq!(err.errno(), libc_eio());
        assert_eq!(r.array.state(), ArrayState::Failed);
        assert!(r.array.write(0, filled(4096, 1), false).await.is_err());
        assert!(r.array.flush().await.is_err());
    })
    .unwrap();
}

#[test]
fn raid10_survives_one_loss_per_mirror_set_and_not_two_in_one() {
    block_on(async {
        let (r, data) = filled_rig(raid10(), 11).await;
        // n2 on 4 members: sets {0,1} and {2,3}.
        vanish_and_read_all(&r, &[0, 3], &data).await;
        assert_eq!(r.array.state(), ArrayState::Degraded);
        r.faults[1].vanish();
        assert!(read_array(&r.array, 0, data.len()).await.is_err());
        assert_eq!(r.array.state(), ArrayState::Failed);
    })
    .unwrap();
}

#[test]
fn write_error_fails_the_member_and_the_write_still_lands() {
    for kind in [LayoutKind::Raid1, raid5(), raid10()] {
        block_on(async move {
            let r = rig(kind.clone(), 4, true, false).await;
            r.faults[2].inject(common::once(FaultKind::WriteError));
            let size = r.array.size_bytes() as usize;
            let data = filled(size, 21);
            r.array
                .write(0, data.clone(), true)
                .await
                .unwrap_or_else(|e| panic!("{kind:?}: {e}"));
            assert_eq!(r.faults[2].fired(), 1);
            assert!(!r.array.slots()[2].is_active(), "{kind:?}");
            assert_eq!(
                read_array(&r.array, 0, size).await.unwrap(),
                data.to_vec(),
                "{kind:?}"
            );
        })
        .unwrap();
    }
}

#[test]
fn unsynced_raid5_is_written_by_reconstruct_write_so_parity_ends_up_right() {
    block_on(async {
        // Members full of junk, created without --assume-clean: parity is not trustworthy.
        // The resync is held back (as md's frozen sync_action) so the writes alone are seen.
        let frozen = AssembleOptions {
            no_resync: true,
            ..Default::default()
        };
        let r = rig_with(raid5(), 6, false, true, frozen).await;
        assert_ne!(
            r.array.sync_offset(),
            u64::MAX,
            "an array on old contents needs a sync"
        );
        let size = r.array.size_bytes();
        // Small writes everywhere: read-modify-write would carry the junk parity forward.
        let mut at = 0;
        while at < size {
            r.array
                .write(at, filled(4096, (at / 4096) as u8), false)
                .await
                .unwrap();
            at += 8192;
        }
        // Rows were touched only partly: in each chunk, the first 4K of every 8K. RCW
        // recomputes parity from all data over the written window, so those windows are
        // consistent; the others still hold the junk until a resync.
        let geo = r.array.geometry().clone();
        let used = geo.member_used_bytes() as usize;
        let data_offset = r.array.slots()[0].disk().unwrap().data_offset as usize;
        let mut acc = vec![0u8; used];
        for s in &r.sims {
            let bytes = s.store().lock().unwrap().clone();
            for (a, b) in acc.iter_mut().zip(&bytes[data_offset..data_offset + used]) {
                *a ^= b;
            }
        }
        for (window, bytes) in acc.chunks(4096).enumerate() {
            let written = window % 2 == 0;
            let consistent = bytes.iter().all(|&x| x == 0);
            if written {
                assert!(
                    consistent,
                    "parity of written window {window} is inconsistent"
                );
            } else if window < 16 {
                assert!(
                    !consistent,
                    "junk expected in unwritten window {window}: the test would be vacuous"
                );
            }
        }
    })
    .unwrap();
}

/// The kind of error a request the engine must refuse was refused with.
fn refused_as<T: std::fmt::Debug>(answer: raidcore::Result<T>) -> ErrorKind {
    answer.expect_err("the request must be refused").kind()
}

#[test]
fn requests_are_validated() {
    block_on(async {
        let r = rig(raid5(), 3, true, false).await;
        let a = &r.array;
        let size = a.size_bytes();
        let past_the_end = a.write(size, filled(512, 0), false).await;
        assert_eq!(refused_as(past_the_end), ErrorKind::OutOfRange);
        let across_the_end = a.read(size - 512, BufSlice::zeroed(1024)).await;
        assert_eq!(refused_as(across_the_end), ErrorKind::OutOfRange);
        let unaligned = a.read(100, BufSlice::zeroed(512)).await;
        assert_eq!(refused_as(unaligned), ErrorKind::InvalidInput);
        let overflowing = a.trim(u64::MAX - 511, 512).await;
        assert_eq!(refused_as(overflowing), ErrorKind::OutOfRange);
        a.write(0, BufSlice::zeroed(0), false).await.unwrap();
    })
    .unwrap();
}

fn libc_eio() -> i32 {
    5
}

#[test]
fn first_write_marks_superblocks_and_whole_bitmap_dirty_before_data() {
    block_on(async {
        let r = rig(raid5(), 3, true, false).await;
        // As md leaves a clean array: bitmap bits cleared.
        let sb0 = common::superblock_of(&r.sims[0]);
        let bitmap_at = (4096 + sb0.bitmap_offset_sectors as i64 * 512) as usize;
        for s in &r.sims {
            s.store().lock().unwrap()[bitmap_at + 256..bitmap_at + 512].fill(0);
        }
        assert_eq!(r.array.state(), ArrayState::Clean);
        r.array.write(0, filled(4096, 1), false).await.unwrap();
        for (i, s) in r.sims.iter().enumerate() {
            let bytes = s.store().lock().unwrap().clone();
            let sb = raidcore::metadata::Superblock::decode(&bytes[4096..8192]).unwrap();
            assert_eq!(sb.resync_offset, 0, "member {i} must say dirty");
            let bsb = raidcore::metadata::BitmapSuper::decode(&bytes[bitmap_at..bitmap_at + 256])
                .unwrap();
            let nbytes = bsb.nbits().div_ceil(8) as usize;
            assert!(
                bytes[bitmap_at + 256..bitmap_at + 256 + nbytes]
                    .iter()
                    .all(|&b| b == 0xff),
                "member {i}: bitmap not all dirty"
            );
            assert_eq!(
                bsb.events, sb.events,
                "member {i}: bitmap events follow the superblock"
            );
        }
        r.array.close().await.unwrap();
        let sb = common::superblock_of(&r.sims[1]);
        assert!(sb.is_clean(), "clean after close");
    })
    .unwrap();
}

#[test]
fn a_member_left_out_of_a_degraded_start_never_comes_back_as_current() {
    // Start degraded without member 3, write, crash (no close), then offer all four: the
    // out-of-date member must be left out, and the data must be what was written.
    let sims = common::sim_members(4, 0, MEMBER, false);
    let size = block_on({
        let sims = sims.clone();
        async move {
            let opts = common::create_options("d", raid5());
            common::create_on(&sims, 4, &opts).await.unwrap();
            let three = common::as_members(&sims[..3]);
            let array = assemble(three, &common::run_degraded())
                .await
                .unwrap()
                .array;
            let size = array.size_bytes() as usize;
            array.write(0, filled(size, 77), true).await.unwrap();
            size
        }
    })
    .unwrap();
    block_on(async move {
        let all = common::as_members(&common::reopened(&sims, 5));
        // Dirty and degraded: refusing (md does too) is as good as leaving m3 out; taking m3
        // back as a current member is the one wrong answer.
        match assemble(
            all,
            &AssembleOptions {
                run: true,
                read_only: true,
                ..Default::default()
            },
        )
        .await
        {
            Err(e) => assert!(e.to_string().contains("--force"), "unexpected refusal: {e}"),
            Ok(assembled) => {
                assert!(
                    !assembled.array.slots()[3].is_active(),
                    "the out-of-date member was taken back"
                );
                assert_eq!(
                    read_array(&assembled.array, 0, size).await.unwrap(),
                    filled(size, 77).to_vec()
                );
            }
        }
    })
    .unwrap();
}

#[test]
fn check_counts_flipped_bytes_and_repair_fixes_them() {
    for kind in [raid5(), LayoutKind::Raid1, raid10()] {
        block_on(async move {
            let (r, _) = filled_rig(kind.clone(), 9).await;
            let off = r.array.slots()[1].disk().unwrap().data_offset as usize;
            // Flip one byte in two different 4 KiB blocks of member 1's data area.
            for at in [off + 5000, off + 3 * 65536 + 17] {
                r.sims[1].store().lock().unwrap()[at] ^= 0x5a;
            }
            r.control.start_scrub(false).unwrap();
            let checked = common::wait_scrub(&r.control).await;
            assert_eq!(
                checked.done_bytes, checked.total_bytes,
                "{kind:?}: check ran to the end"
            );
            assert_eq!(
                checked.mismatch_sectors, 16,
                "{kind:?}: two 4 KiB blocks = 16 sectors"
            );
            r.control.start_scrub(true).unwrap();
            let repaired = common::wait_scrub(&r.control).await;
            assert_eq!(
                repaired.mismatch_sectors, 16,
                "{kind:?}: repair counts what it fixes"
            );
            r.control.start_scrub(false).unwrap();
            assert_eq!(
                common::wait_scrub(&r.control).await.mismatch_sectors,
                0,
                "{kind:?}: consistent after repair"
            );
            r.array.close().await.unwrap();
        })
        .unwrap();
    }
}

#[test]
fn resync_makes_an_array_on_old_contents_consistent_by_itself() {
    for kind in [raid5(), LayoutKind::Raid1, raid10()] {
        block_on(async move {
            let r = rig(kind.clone(), 4, false, true).await;
            common::wait_until(&format!("{kind:?}: the resync to finish"), || {
                r.array.sync_offset() == u64::MAX
            })
            .await;
            r.control.start_scrub(false).unwrap();
            let s = common::wait_scrub(&r.control).await;
            assert_eq!(
                s.mismatch_sectors, 0,
                "{kind:?}: consistent after the resync"
            );
            r.array.close().await.unwrap();
            let sb = common::superblock_of(&r.sims[0]);
            assert!(
                sb.is_clean(),
                "{kind:?}: a clean stop after the resync records it as in sync"
            );
        })
        .unwrap();
    }
}
