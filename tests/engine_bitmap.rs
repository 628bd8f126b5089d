//! The write-intent bitmap on simulated members: writes set bits before data lands, quiet
//! bits clear once the array is complete, a crash resyncs only the marked chunks, and a
//! former member that is added back has only the marked chunks rebuilt (unless the bits were
//! cleared while it was away, when everything is).

use std::rc::Rc;
use std::time::Duration;

use raidcore::control::{assemble, AssembleOptions, Assembled, Controller, CreateOptions};
use raidcore::layout::LayoutKind;
use raidcore::member::{FaultHandle, FaultMember, MemMember, Member};
use raidcore::raid::events::Event;
use raidcore::raid::Array;
use raidcore::reactor::{block_on, sleep};

mod common;
use common::{pattern, raid10, raid5, record_events, wait_complete, Recorded};

const MEMBER: u64 = 12 << 20;
/// Small bits, so a 12 MiB member has a dozen of them.
const BITMAP_CHUNK: u32 = 1 << 20;

fn wrap(sim: &Rc<MemMember>) -> Rc<dyn Member> {
    Rc::new(FaultMember::new(sim.clone(), FaultHandle::default()))
}

/// A fresh array of `kind` ("b", with [`BITMAP_CHUNK`] bits) on all of `sims`, assembled.
async fn new_array(kind: LayoutKind, sims: &[Rc<MemMember>]) -> Assembled {
    let opts = CreateOptions {
        bitmap_chunk_bytes: Some(BITMAP_CHUNK),
        ..common::create_options("b", kind)
    };
    common::create_on(sims, sims.len(), &opts)
        .await
        .expect("create");
    open(sims).await
}

/// Assembles `sims` (behind fault wrappers), with a bitmap daemon quick enough for the tests.
async fn open(sims: &[Rc<MemMember>]) -> Assembled {
    let assembled = assemble(sims.iter().map(wrap).collect(), &AssembleOptions::default())
        .await
        .expect("assemble");
    assembled
        .array
        .set_bitmap_daemon_sleep(Duration::from_millis(20));
    assembled
}

fn sims(n: usize) -> Vec<Rc<MemMember>> {
    common::sim_members(n, 0, MEMBER, false)
}

fn dirty_bits(array: &Array) -> u64 {
    array.bitmap_report().expect("a bitmap").dirty_bits
}

async fn wait_bits_cleared(array: &Array) {
    for _ in 0..2000 {
        if dirty_bits(array) == 0 {
            return;
        }
        sleep(Duration::from_millis(5)).await;
    }
    panic!("bits never cleared: {:?}", array.bitmap_report());
}

/// Fills the array with `pattern(size, seed)` and waits until its bits are clear again:
/// everything written, nothing dirty. Returns the model of what it holds.
async fn fill_and_settle(array: &Array, seed: u64) -> Vec<u8> {
    let model = common::fill(array, seed).await;
    array.flush().await.unwrap();
    wait_bits_cleared(array).await;
    model
}

/// Fails and removes the member at `path`.
async fn take_out(control: &Controller, path: &str) {
    control.fail_member(path, false).await.unwrap();
    control.remove_member(path).await.unwrap();
}

/// A settled RAID1 of `s[0]` and `s[1]` (filled with `seed`) whose m1 is taken out and
/// misses a write (of `seed + 1`); its events recorded from before m1 left.
async fn mirror_that_m1_left(s: &[Rc<MemMember>], seed: u64) -> (Assembled, Recorded) {
    let a = new_array(LayoutKind::Raid1, &s[..2]).await;
    fill_and_settle(&a.array, seed).await;
    let events = record_events(&a.control);
    take_out(&a.control, s[1].path()).await;
    a.array
        .write(4096, pattern(65536, seed + 1), false)
        .await
        .unwrap();
    (a, events)
}

/// The bytes the last finished rebuild copied.
fn rebuilt_bytes(events: &Recorded) -> Option<u64> {
    events.borrow().iter().rev().find_map(|e| match e {
        Event::RebuildFinished { bytes_rebuilt, .. } => Some(*bytes_rebuilt),
        _ => None,
    })
}

/// Adds `s[added]` to the mirror missing slot 1 and checks that the rebuild copies all of
/// slot 1 (the bitmap cannot say what it lacks) and that the copies agree afterwards.
async fn add_and_expect_a_full_rebuild(
    control: &Controller,
    events: &Recorded,
    s: &[Rc<MemMember>],
    added: usize,
    context: &str,
) {
    events.borrow_mut().clear();
    control.add_spare(wrap(&s[added]), false).await.unwrap();
    wait_complete(control).await;
    let array = control.array();
    let rebuilt = rebuilt_bytes(events);
    assert_eq!(rebuilt, Some(array.geometry().slot_used_bytes(1)));
    common::assert_redundancy_consistent(array, s, context);
}

/// Flips one byte of `sim`'s data area at `member_offset`.
fn flip(sim: &MemMember, data_offset: u64, member_offset: u64) {
    let store = sim.store();
    let mut bytes = store.lock().unwrap();
    bytes[(data_offset + member_offset) as usize] ^= 0x5a;
}

#[test]
fn writes_set_bits_that_clear_once_quiet() {
    block_on(async {
        let s = sims(4);
        let Assembled { array, .. } = new_array(raid5(), &s).await;
        // create writes every bit set (as mdadm does); on a clean array they clear lazily.
        wait_bits_cleared(&array).await;
        // Array offset 9 MiB is stripe row 48 (3 data chunks of 64K), member offset 3 MiB:
        // bit 3. Offset 0: bit 0.
        array.write(0, pattern(4096, 1), false).await.unwrap();
        array.write(9 << 20, pattern(4096, 2), false).await.unwrap();
        let report = array.bitmap_report().unwrap();
        assert_eq!(report.chunk_bytes, BITMAP_CHUNK as u64);
        assert_eq!(report.dirty_bits, 2, "{report:?}");
        wait_bits_cleared(&array).await;
        assert!(array.bitmap_report().unwrap().events_cleared > 0);
        array.close().await.unwrap();
    })
    .unwrap();
}

#[test]
fn crash_resyncs_only_the_chunks_the_bitmap_marks() {
    let s = sims(4);
    let data_offset = block_on({
        let s = s.clone();
        async move {
            let Assembled { array, .. } = new_array(raid5(), &s).await;
            fill_and_settle(&array, 7).await;
            // Two writes, then a crash (no close: the reactor goes away): bits 0 and 3 stay
            // set on the members.
            array.write(0, pattern(4096, 8), false).await.unwrap();
            array.write(9 << 20, pattern(4096, 9), true).await.unwrap();
            assert_eq!(dirty_bits(&array), 2);
            array.slots()[1].disk().unwrap().data_offset
        }
    })
    .unwrap();
    // A torn stripe in a marked chunk (bit 3) and one in an unmarked chunk (bit 6): the
    // resync must repair the first and, trusting the bitmap, never look at the second.
    flip(&s[1], data_offset, (3 << 20) + 8192);
    flip(&s[1], data_offset, (6 << 20) + 8192);
    block_on(async move {
        let Assembled { array, control, .. } = open(&common::reopened(&s, 3)).await;
        let events = record_events(&control);
        let resync = common::wait_scrub(&control).await;
        assert!(resync.resync, "{resync:?}");
        let member = array.geometry().member_used_bytes();
        assert_eq!(
            resync.total_bytes - resync.skipped_bytes,
            2 * BITMAP_CHUNK as u64,
            "only the two marked chunks are resynced: {resync:?}"
        );
        assert_eq!(
            resync.mismatch_sectors, 8,
            "the torn block in bit 3: {resync:?}"
        );
        let resynced = events.borrow().iter().find_map(|e| match e {
            Event::ResyncFinished { bytes_resynced, .. } => Some(*bytes_resynced),
            _ => None,
        });
        assert_eq!(resynced, Some(2 * BITMAP_CHUNK as u64));
        assert!(resynced.unwrap() * 4 < member);
        // The unmarked chunk was never read: a full check still finds its flipped byte.
        control.start_scrub(false).unwrap();
        let check = common::wait_scrub(&control).await;
        assert_eq!(check.mismatch_sectors, 8, "{check:?}");
        array.close().await.unwrap();
    })
    .unwrap();
}

#[test]
fn readded_member_rebuilds_only_the_chunks_written_while_it_was_away() {
    for (kind, n) in [
        (LayoutKind::Raid1, 2),
        (raid5(), 4),
        (common::raid6(), 5),
        (raid10(), 4),
    ] {
        block_on(async move {
            let s = sims(n);
            let Assembled { array, control, .. } = new_array(kind.clone(), &s).await;
            let size = array.size_bytes() as usize;
            let mut model = fill_and_settle(&array, 11).await;
            let events = record_events(&control);

            take_out(&control, s[1].path()).await;
            // Written while it is away: two small writes, far apart.
            for (at, seed) in [(4096u64, 21u64), (size as u64 / 2 + 8192, 22)] {
                common::write_model(&array, &mut model, at, pattern(65536, seed)).await;
            }
            // Bits are kept while the array is degraded.
            sleep(Duration::from_millis(200)).await;
            let dirty = dirty_bits(&array);
            assert!(dirty >= 2, "{kind:?}: {:?}", array.bitmap_report());

            control.add_spare(wrap(&s[1]), false).await.unwrap();
            // Events reach subscribers from the delivery task, so after the next wait.
            wait_complete(&control).await;
            let role = events.borrow().iter().find_map(|e| match e {
                Event::MemberAdded { role, .. } => Some(role.clone()),
                _ => None,
            });
            assert_eq!(role.as_deref(), Some("re-added to slot 1"), "{kind:?}");
            let rebuilt = rebuilt_bytes(&events);
            let member = array.geometry().slot_used_bytes(1);
            let rebuilt = rebuilt.expect("RebuildFinished");
            assert!(
                rebuilt > 0 && rebuilt <= 4 * BITMAP_CHUNK as u64 && rebuilt * 2 < member,
                "{kind:?}: rebuilt {rebuilt} of {member}"
            );
            // The re-added member carries the new data: copies / parity agree everywhere.
            common::assert_redundancy_consistent(&array, &s, &format!("{kind:?} after re-add"));
            common::assert_reads_model(&array, &model, &format!("{kind:?}: data after the re-add"))
                .await;
            array.close().await.unwrap();
        })
        .unwrap();
    }
}

#[test]
fn readd_after_the_bits_were_cleared_rebuilds_everything() {
    block_on(async {
        let s = sims(3);
        let (Assembled { array, control, .. }, events) = mirror_that_m1_left(&s, 31).await;
        // A new member takes the slot, the array is complete again and the bits clear: the
        // bitmap no longer knows what m1 missed.
        control.add_spare(wrap(&s[2]), false).await.unwrap();
        wait_complete(&control).await;
        wait_bits_cleared(&array).await;
        take_out(&control, s[2].path()).await;
        add_and_expect_a_full_rebuild(&control, &events, &s, 1, "after a full rebuild of m1").await;
        array.close().await.unwrap();
    })
    .unwrap();
}

/// A re-added member that fails during its rebuild is forgotten as "re-added": a blank disk
/// added next (which may get the same dev_number) is rebuilt in full, never by the bitmap.
#[test]
fn a_new_disk_after_a_failed_readd_is_rebuilt_in_full() {
    block_on(async {
        let s = sims(4);
        let (Assembled { array, control, .. }, events) = mirror_that_m1_left(&s, 41).await;
        // Re-add m1 slowly, and fail it part-way.
        control.set_speed_limits(Some(64), Some(64));
        control.add_spare(wrap(&s[1]), false).await.unwrap();
        sleep(Duration::from_millis(50)).await;
        take_out(&control, s[1].path()).await;
        control.set_speed_limits(Some(1000), Some(1_000_000));
        // A blank disk now: every byte must be copied onto it.
        let context = "after the blank disk's rebuild";
        add_and_expect_a_full_rebuild(&control, &events, &s, 2, context).await;
        array.close().await.unwrap();
    })
    .unwrap();
}
