//! The write-intent bitmap on simulated members: writes set bits before data lands, quiet
//! bits clear once the array is complete, a crash resyncs only the marked chunks, and a
//! former member that is added back has only the marked chunks rebuilt (unless the bits were
//! cleared while it was away, when everything is).

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use raidcore::buf::BufSlice;
use raidcore::layout::{LayoutKind, Raid10Layout, Raid5Algorithm};
use raidcore::member::{FaultHandle, FaultMember, MemMember, Member};
use raidcore::raid::events::Event;
use raidcore::raid::{assemble, create, Array, AssembleOptions, CreateOptions};
use raidcore::reactor::{block_on, sleep};

mod common;

const MEMBER: u64 = 12 << 20;
/// Small bits, so a 12 MiB member has a dozen of them.
const BITMAP_CHUNK: u32 = 1 << 20;

fn raid5() -> LayoutKind {
    LayoutKind::Raid5(Raid5Algorithm::LeftSymmetric)
}

fn raid10() -> LayoutKind {
    LayoutKind::Raid10(Raid10Layout {
        near: 2,
        far: 1,
        offset: false,
    })
}

fn pattern(len: usize, seed: u64) -> BufSlice {
    BufSlice::filled(len, |b| {
        for (i, w) in b.chunks_exact_mut(8).enumerate() {
            w.copy_from_slice(&((i as u64).wrapping_mul(0x9E37_79B9) ^ seed).to_le_bytes());
        }
    })
}

fn wrap(sim: &Rc<MemMember>) -> Rc<dyn Member> {
    Rc::new(FaultMember::new(sim.clone(), FaultHandle::default()))
}

async fn new_array(kind: LayoutKind, sims: &[Rc<MemMember>]) -> Rc<Array> {
    let plain: Vec<Rc<dyn Member>> = sims.iter().map(|m| m.clone() as Rc<dyn Member>).collect();
    let opts = CreateOptions {
        name: "b".into(),
        kind,
        chunk_bytes: 64 << 10,
        bitmap: true,
        bitmap_chunk_bytes: Some(BITMAP_CHUNK),
        assume_clean: false,
        force: true,
        fresh: true,
        spare_group: None,
    };
    create(&plain, &[], &opts).await.expect("create");
    open(sims).await
}

async fn open(sims: &[Rc<MemMember>]) -> Rc<Array> {
    let array = assemble(sims.iter().map(wrap).collect(), &AssembleOptions::default())
        .await
        .expect("assemble")
        .array;
    array.set_bitmap_daemon_sleep(Duration::from_millis(20));
    array
}

fn sims(n: usize) -> Vec<Rc<MemMember>> {
    (0..n)
        .map(|i| Rc::new(MemMember::new(&format!("m{i}"), MEMBER, i as u64)))
        .collect()
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

async fn wait_complete(array: &Array) {
    for _ in 0..20_000 {
        if array.rebuild_states().is_empty() && array.slots().iter().all(|s| s.is_active()) {
            return;
        }
        sleep(Duration::from_millis(2)).await;
    }
    panic!("rebuild did not finish: {}", array.missing_description());
}

type Recorded = Rc<RefCell<Vec<Event>>>;

/// Every event the array emits from now on.
fn record_events(array: &Array) -> Recorded {
    let events: Recorded = Rc::new(RefCell::new(Vec::new()));
    let sink = events.clone();
    array.subscribe(move |e| sink.borrow_mut().push(e.clone()));
    events
}

/// The bytes the last finished rebuild copied.
fn rebuilt_bytes(events: &Recorded) -> Option<u64> {
    events.borrow().iter().rev().find_map(|e| match e {
        Event::RebuildFinished { bytes_rebuilt, .. } => Some(*bytes_rebuilt),
        _ => None,
    })
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
        let array = new_array(raid5(), &s).await;
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
            let array = new_array(raid5(), &s).await;
            let size = array.size_bytes() as usize;
            array.write(0, pattern(size, 7), false).await.unwrap();
            array.flush().await.unwrap();
            wait_bits_cleared(&array).await;
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
        let fresh: Vec<Rc<MemMember>> = s
            .iter()
            .enumerate()
            .map(|(i, m)| Rc::new(MemMember::with_store(&format!("m{i}"), m.store(), 3)))
            .collect();
        let array = open(&fresh).await;
        let events = record_events(&array);
        let resync = common::wait_scrub(&array).await;
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
        array.start_scrub(false).unwrap();
        let check = common::wait_scrub(&array).await;
        assert_eq!(check.mismatch_sectors, 8, "{check:?}");
        array.close().await.unwrap();
    })
    .unwrap();
}

#[test]
fn readded_member_rebuilds_only_the_chunks_written_while_it_was_away() {
    for (kind, n) in [(LayoutKind::Raid1, 2), (raid5(), 4), (raid10(), 4)] {
        block_on(async move {
            let s = sims(n);
            let array = new_array(kind.clone(), &s).await;
            let size = array.size_bytes() as usize;
            let mut model = pattern(size, 11).to_vec();
            array.write(0, pattern(size, 11), false).await.unwrap();
            array.flush().await.unwrap();
            wait_bits_cleared(&array).await;
            let events = record_events(&array);

            let gone = s[1].path().to_string();
            array.fail_member(&gone, false).await.unwrap();
            array.remove_member(&gone).await.unwrap();
            // Written while it is away: two small writes, far apart.
            for (at, seed) in [(4096u64, 21u64), (size as u64 / 2 + 8192, 22)] {
                let data = pattern(65536, seed);
                array.write(at, data.clone(), false).await.unwrap();
                model[at as usize..at as usize + 65536].copy_from_slice(&data.to_vec());
            }
            // Bits are kept while the array is degraded.
            sleep(Duration::from_millis(200)).await;
            let dirty = dirty_bits(&array);
            assert!(dirty >= 2, "{kind:?}: {:?}", array.bitmap_report());

            array.add_spare(wrap(&s[1]), false).await.unwrap();
            // Events reach subscribers from the delivery task, so after the next wait.
            wait_complete(&array).await;
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
            let got = BufSlice::zeroed(size);
            array.read(0, got.clone()).await.unwrap();
            assert!(got.to_vec() == model, "{kind:?}: data after the re-add");
            array.close().await.unwrap();
        })
        .unwrap();
    }
}

#[test]
fn readd_after_the_bits_were_cleared_rebuilds_everything() {
    block_on(async {
        let s = sims(3);
        let array = new_array(LayoutKind::Raid1, &s[..2]).await;
        let size = array.size_bytes() as usize;
        array.write(0, pattern(size, 31), false).await.unwrap();
        array.flush().await.unwrap();
        wait_bits_cleared(&array).await;
        let events = record_events(&array);

        let m1 = s[1].path().to_string();
        array.fail_member(&m1, false).await.unwrap();
        array.remove_member(&m1).await.unwrap();
        array.write(4096, pattern(65536, 32), false).await.unwrap();
        // A new member takes the slot, the array is complete again and the bits clear: the
        // bitmap no longer knows what m1 missed.
        array.add_spare(wrap(&s[2]), false).await.unwrap();
        wait_complete(&array).await;
        wait_bits_cleared(&array).await;
        let m2 = s[2].path().to_string();
        array.fail_member(&m2, false).await.unwrap();
        array.remove_member(&m2).await.unwrap();
        events.borrow_mut().clear();
        array.add_spare(wrap(&s[1]), false).await.unwrap();
        wait_complete(&array).await;
        let rebuilt = rebuilt_bytes(&events);
        assert_eq!(rebuilt, Some(array.geometry().slot_used_bytes(1)));
        common::assert_redundancy_consistent(&array, &s, "after a full rebuild of m1");
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
        let array = new_array(LayoutKind::Raid1, &s[..2]).await;
        let size = array.size_bytes() as usize;
        array.write(0, pattern(size, 41), false).await.unwrap();
        array.flush().await.unwrap();
        wait_bits_cleared(&array).await;
        let events = record_events(&array);
        let m1 = s[1].path().to_string();
        array.fail_member(&m1, false).await.unwrap();
        array.remove_member(&m1).await.unwrap();
        array.write(4096, pattern(65536, 42), false).await.unwrap();
        // Re-add m1 slowly, and fail it part-way.
        array.set_speed_limits(Some(64), Some(64));
        array.add_spare(wrap(&s[1]), false).await.unwrap();
        sleep(Duration::from_millis(50)).await;
        array.fail_member(&m1, false).await.unwrap();
        array.remove_member(&m1).await.unwrap();
        array.set_speed_limits(Some(1000), Some(1_000_000));
        events.borrow_mut().clear();
        // A blank disk now: every byte must be copied onto it.
        array.add_spare(wrap(&s[2]), false).await.unwrap();
        wait_complete(&array).await;
        let rebuilt = rebuilt_bytes(&events);
        assert_eq!(rebuilt, Some(array.geometry().slot_used_bytes(1)));
        common::assert_redundancy_consistent(&array, &s, "after the blank disk's rebuild");
        array.close().await.unwrap();
    })
    .unwrap();
}
