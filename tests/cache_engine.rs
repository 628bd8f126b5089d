//! The write-back cache on simulated members: what is acknowledged from RAM, what reaches the
//! members when, and a randomized model check (concurrent writers on disjoint regions, FUA,
//! large writes that bypass, trims, zeroes, flushes, battery flips, a cache small enough to fill
//! up) whose result must match a plain byte model both through the cache and after a fresh
//! assembly of the members.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use raidcore::buf::BufSlice;
use raidcore::cache::policy::Battery;
use raidcore::cache::{Cache, CacheConfig};
use raidcore::layout::LayoutKind;
use raidcore::member::MemMember;
use raidcore::raid::Array;
use raidcore::reactor::{block_on, sleep, spawn};
use raidcore::volume::Volume;

mod common;
use common::{raid5, Rig};

const MEMBER: u64 = 8 << 20;

/// Four fresh 8 MiB members in a RAID5, each behind a fault wrapper.
async fn raid5_rig() -> Rig {
    let sims = common::sim_members(4, 0, MEMBER, false);
    let create = common::create_options("c", raid5());
    // run: as when a test assembles the survivors of a lost member.
    common::rig_with(sims, 4, &create, &common::run_degraded()).await
}

/// The array on `sims` as it is (no create), assembled even with a member lost.
async fn reassembled(sims: Vec<Rc<MemMember>>) -> Rc<Array> {
    Rig::assemble(sims, &common::run_degraded())
        .await
        .expect("assemble")
        .array
}

fn cache_on(r: &Rig, config: CacheConfig) -> Rc<Cache> {
    let cache = Cache::new(r.array.clone(), config, r.control.clone());
    spawn(cache.clone().run_destager());
    cache
}

/// A cache of `config` in front of a fresh [`raid5_rig`]; with a `battery` it writes back,
/// without one it writes through.
async fn cached(config: CacheConfig, battery: bool) -> (Rig, Rc<Cache>) {
    let r = raid5_rig().await;
    let cache = cache_on(&r, config);
    if battery {
        set_battery(&cache, Battery::Present).await;
    }
    (r, cache)
}

/// A long max age: only a flush or a drain writes the data out.
fn long_max_age() -> CacheConfig {
    CacheConfig {
        max_age: Duration::from_secs(3600),
        ..CacheConfig::default()
    }
}

async fn set_battery(cache: &Cache, battery: Battery) {
    cache.set_policy(None, Some(battery), None).await.unwrap();
}

/// Closes the cache (which writes out what is dirty), then the array.
async fn close(cache: &Cache, array: &Array) {
    cache.close().await.unwrap();
    array.close().await.unwrap();
}

fn bytes(len: usize, seed: u64) -> BufSlice {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    BufSlice::filled(len, |b| {
        for byte in b {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *byte = x as u8;
        }
    })
}

async fn engine_read(array: &Array, at: u64, len: usize) -> Vec<u8> {
    common::read_array(array, at, len).await.unwrap()
}

async fn cache_read(cache: &Cache, at: u64, len: usize) -> Vec<u8> {
    let buf = BufSlice::zeroed(len);
    cache.read(at, buf.clone()).await.unwrap();
    buf.to_vec()
}

/// Writes 64 blocks of 4 KiB through the cache, one every 64 KiB, block `i` of
/// `bytes(4096, first_seed + i)`.
async fn write_blocks(cache: &Cache, first_seed: u64) {
    for i in 0..64u64 {
        cache
            .write(i * 65536, bytes(4096, first_seed + i), false)
            .await
            .unwrap();
    }
}

/// The blocks of [`write_blocks`] are on the array itself (`on`, in the message).
async fn assert_blocks_on(array: &Array, first_seed: u64, on: &str) {
    for i in 0..64u64 {
        assert_eq!(
            engine_read(array, i * 65536, 4096).await,
            bytes(4096, first_seed + i).to_vec(),
            "block {i} on {on}"
        );
    }
}

#[test]
fn write_back_acknowledges_from_ram_and_flush_puts_it_on_the_members() {
    block_on(async {
        let (r, cache) = cached(CacheConfig::default(), true).await;
        let data = bytes(4096, 1);
        cache.write(1 << 20, data.clone(), false).await.unwrap();
        // Acknowledged, in the cache, not on the members yet.
        assert_eq!(cache.report().dirty_bytes, 4096);
        assert_eq!(engine_read(&r.array, 1 << 20, 4096).await, vec![0u8; 4096]);
        assert_eq!(cache_read(&cache, 1 << 20, 4096).await, data.to_vec());
        // A partial overwrite of the cached block, and a read straddling it.
        cache
            .write((1 << 20) + 512, bytes(512, 2), false)
            .await
            .unwrap();
        let mut want = data.to_vec();
        want[512..1024].copy_from_slice(&bytes(512, 2).to_vec());
        assert_eq!(cache_read(&cache, 1 << 20, 4096).await, want);
        cache.flush().await.unwrap();
        assert_eq!(cache.report().dirty_bytes, 0);
        assert_eq!(engine_read(&r.array, 1 << 20, 4096).await, want);
        common::assert_redundancy_consistent(&r.array, &r.sims, "after the flush");
        // A FUA write goes through at once, and the cached copy follows it.
        cache.write(1 << 20, bytes(4096, 3), true).await.unwrap();
        assert_eq!(
            engine_read(&r.array, 1 << 20, 4096).await,
            bytes(4096, 3).to_vec()
        );
        assert_eq!(
            cache_read(&cache, 1 << 20, 4096).await,
            bytes(4096, 3).to_vec()
        );
        assert!(cache.report().hit_ratio.unwrap() > 0.0);
        close(&cache, &r.array).await;
    })
    .unwrap();
}

#[test]
fn without_a_battery_writes_go_through() {
    block_on(async {
        let (r, cache) = cached(CacheConfig::default(), false).await;
        let report = cache.report();
        assert_eq!(
            (
                report.mode.as_str(),
                report.effective.as_str(),
                report.battery.as_str()
            ),
            ("write-back", "write-through", "absent")
        );
        cache.write(8192, bytes(4096, 4), false).await.unwrap();
        assert_eq!(cache.report().dirty_bytes, 0);
        assert_eq!(
            engine_read(&r.array, 8192, 4096).await,
            bytes(4096, 4).to_vec()
        );
        close(&cache, &r.array).await;
    })
    .unwrap();
}

#[test]
fn losing_the_battery_drains_the_cache_before_the_command_returns() {
    block_on(async {
        let r = raid5_rig().await;
        let events = Rc::new(RefCell::new(Vec::new()));
        let sink = events.clone();
        r.control
            .subscribe(move |e| sink.borrow_mut().push(e.name()));
        // A long max age: only the drain may write the data out.
        let cache = cache_on(&r, long_max_age());
        set_battery(&cache, Battery::Present).await;
        write_blocks(&cache, 10).await;
        assert_eq!(cache.report().dirty_bytes, 64 * 4096);
        set_battery(&cache, Battery::Absent).await;
        let report = cache.report();
        assert_eq!(report.dirty_bytes, 0);
        assert_eq!(report.effective, "write-through");
        assert!(report.reason.contains("battery absent"), "{report:?}");
        assert_blocks_on(&r.array, 10, "the members").await;
        set_battery(&cache, Battery::Present).await;
        assert_eq!(cache.report().effective, "write-back");
        assert_eq!(
            *events.borrow(),
            vec!["CacheWriteBack", "CacheWriteThrough", "CacheWriteBack"]
        );
        close(&cache, &r.array).await;
    })
    .unwrap();
}

#[test]
fn a_trim_wins_over_a_destage_that_picked_the_block_before_it() {
    block_on(async {
        let (r, cache) = cached(long_max_age(), true).await;
        cache.write(65536, bytes(4096, 7), false).await.unwrap();
        // The trim takes the stripe lock first; the flush picks the dirty block for destaging
        // and then waits for that lock. When it gets it, the block is gone: nothing of it may
        // be written over the trimmed range.
        let trim = spawn({
            let cache = cache.clone();
            async move { cache.trim(65536, 4096).await.unwrap() }
        });
        let flush = spawn({
            let cache = cache.clone();
            async move { cache.flush().await.unwrap() }
        });
        trim.await;
        flush.await;
        assert_eq!(cache_read(&cache, 65536, 4096).await, vec![0u8; 4096]);
        assert_eq!(engine_read(&r.array, 65536, 4096).await, vec![0u8; 4096]);
        close(&cache, &r.array).await;
    })
    .unwrap();
}

/// A member lost while data is dirty: the destager writes it out degraded, nothing is lost,
/// and the survivors alone hold it.
#[test]
fn a_member_lost_with_dirty_data_in_the_cache_loses_nothing() {
    let sims = block_on(async {
        let (r, cache) = cached(CacheConfig::default(), true).await;
        write_blocks(&cache, 50).await;
        assert_eq!(cache.report().dirty_bytes, 64 * 4096);
        r.faults[2].vanish();
        cache.flush().await.unwrap();
        assert_eq!(cache.report().dirty_bytes, 0);
        assert!(r.array.slots()[2].disk().is_none() || !r.array.slots()[2].is_active());
        close(&cache, &r.array).await;
        r.sims.clone()
    })
    .unwrap();
    block_on(async move {
        let mut survivors = common::reopened(&sims, 7);
        survivors.remove(2);
        let array = reassembled(survivors).await;
        assert_blocks_on(&array, 50, "the survivors").await;
        array.close().await.unwrap();
    })
    .unwrap();
}

/// When the array fails, dirty data cannot be written out: FLUSH says so, the data stays in
/// the cache (and reads still see it), and nothing is reported clean that is not.
#[test]
fn a_failed_array_keeps_dirty_data_and_flush_reports_the_error() {
    block_on(async {
        let (r, cache) = cached(CacheConfig::default(), true).await;
        cache.write(1 << 20, bytes(4096, 60), false).await.unwrap();
        r.faults[1].vanish();
        r.faults[3].vanish();
        assert!(
            cache.flush().await.is_err(),
            "flush must fail on a failed array"
        );
        assert_eq!(cache.report().dirty_bytes, 4096);
        assert_eq!(
            cache_read(&cache, 1 << 20, 4096).await,
            bytes(4096, 60).to_vec()
        );
        assert!(
            cache.close().await.is_err(),
            "close cannot write the data out"
        );
    })
    .unwrap();
}

/// xorshift for the model check.
struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

#[test]
fn random_operations_match_a_byte_model_through_the_cache_and_on_the_members() {
    for seed in 0..6 {
        random_operations(seed);
    }
}

fn random_operations(seed: u64) {
    let (model, sims) = block_on(async move {
            // A small cache (64 blocks) with a short max age: eviction, a full cache, aged
            // destages and watermarks all happen.
            let config = CacheConfig {
                capacity_bytes: 256 << 10,
                max_age: Duration::from_millis(10),
                high_pct: 50,
                low_pct: 25,
                bypass_bytes: 256 << 10,
            };
            let (r, cache) = cached(config, false).await;
            let array = r.array.clone();
            let size = array.size_bytes();
            let model = Rc::new(RefCell::new(vec![0u8; size as usize]));
            let writers = 4u64;
            let region = size / writers / 4096 * 4096;
            let mut tasks = Vec::new();
            for w in 0..writers {
                let cache = cache.clone();
                let model = model.clone();
                tasks.push(spawn(async move {
                    let mut rng = Rng(0x1234_5678 + w * 7919 + seed * 1_000_003);
                    let base = w * region;
                    for op in 0..1000u64 {
                        let sector = 512u64;
                        let at = base + rng.below(region / sector - 1) * sector;
                        let max = (base + region - at) / sector;
                        let cap = if rng.below(8) == 0 { 1024 } else { 24 };
                        let len = (1 + rng.below(max.min(cap))) * sector;
                        match rng.below(20) {
                            0..=9 => {
                                let fua = rng.below(6) == 0;
                                let data = bytes(len as usize, (seed << 32) | (op * 100 + w));
                                cache.write(at, data.clone(), fua).await.unwrap();
                                model.borrow_mut()[at as usize..(at + len) as usize]
                                    .copy_from_slice(&data.to_vec());
                            }
                            10..=13 => {
                                let got = cache_read(&cache, at, len as usize).await;
                                assert!(
                                    got == model.borrow()[at as usize..(at + len) as usize],
                                    "seed {seed} writer {w} op {op}: read {at}+{len} differs from the model"
                                );
                            }
                            14 => {
                                cache.trim(at, len).await.unwrap();
                                model.borrow_mut()[at as usize..(at + len) as usize].fill(0);
                            }
                            15 => {
                                cache.write_zeroes(at, len).await.unwrap();
                                model.borrow_mut()[at as usize..(at + len) as usize].fill(0);
                            }
                            16 => cache.flush().await.unwrap(),
                            17 => {
                                let battery = if rng.below(2) == 0 {
                                    Battery::Present
                                } else {
                                    Battery::Absent
                                };
                                cache.set_policy(None, Some(battery), None).await.unwrap();
                            }
                            _ => sleep(Duration::from_millis(rng.below(3))).await,
                        }
                    }
                }));
            }
            for t in tasks {
                t.await;
            }
            let all = cache_read(&cache, 0, size as usize).await;
            let first_wrong = all.iter().zip(model.borrow().iter()).position(|(a, b)| a != b);
            if let Some(i) = first_wrong {
                let small = cache_read(&cache, i as u64 / 512 * 512, 512).await;
                let eng = engine_read(&array, i as u64 / 512 * 512, 512).await;
                let m = &model.borrow()[i / 512 * 512..i / 512 * 512 + 512];
                panic!(
                    "whole array through the cache differs at {i}: small read matches model {}, engine matches model {}, big read matches engine {}",
                    small == m, eng == m, all[i / 512 * 512..i / 512 * 512 + 512] == eng[..]
                );
            }
            cache.close().await.unwrap();
            assert_eq!(cache.report().dirty_bytes, 0);
            common::assert_redundancy_consistent(&array, &r.sims, "after close");
            array.close().await.unwrap();
            let model = model.borrow().clone();
            (model, r.sims)
    })
    .unwrap();
    // The members alone, freshly assembled, hold exactly the model.
    block_on(async move {
        let array = reassembled(common::reopened(&sims, 5)).await;
        let got = engine_read(&array, 0, model.len()).await;
        assert!(got == model, "the members after a fresh assembly");
        array.close().await.unwrap();
    })
    .unwrap();
}

/// Writes not aligned to 512 bytes (FUSE can pass them) are read-modify-writes of their
/// sectors, done on the engine side under block locks: many such writes into one sector from
/// other threads, each to its own bytes, and whole-sector writes around them, lose nothing
/// (the frontend used to read, patch and write back unlocked, so two of them lost one).
#[test]
fn unaligned_writes_through_the_handle_do_not_lose_each_other() {
    use raidcore::cache::{install_engine, uninstall_engine, EngineHandle};
    use raidcore::reactor::Inbox;
    use std::sync::mpsc;
    block_on(async {
        let r = common::rig(LayoutKind::Raid1, 2, 0, 8 << 20).await;
        let cache = Cache::new(r.array.clone(), CacheConfig::default(), r.control.clone());
        install_engine(cache.clone());
        let (inbox, sender) = Inbox::new().unwrap();
        spawn(inbox.serve());
        let handle = EngineHandle::new(sender.clone(), raidcore::volume::Volume::info(&*cache));
        let writers = std::thread::spawn(move || {
            let (tx, rx) = mpsc::channel();
            for round in 0..20u64 {
                // 8 writers patch 64-byte pieces of sector `round`, plus a whole-sector
                // write of the next sector in between.
                for i in 0..8u64 {
                    let tx1 = tx.clone();
                    let at = round * 512 + i * 64;
                    handle.write_unaligned(
                        at,
                        vec![(round * 8 + i + 1) as u8; 64],
                        false,
                        move |r| tx1.send(r.map_err(|e| e.to_string())).unwrap(),
                    );
                    let tx2 = tx.clone();
                    let whole = raidcore::buf::BufSlice::filled(512, |b| b.fill(0xee));
                    handle.write(4 << 20 | (round * 512), whole, false, move |r| {
                        tx2.send(r.map_err(|e| e.to_string())).unwrap()
                    });
                }
            }
            drop(tx);
            rx.iter().collect::<Vec<_>>()
        });
        // The writers' requests run on this reactor: keep it turning until they are answered.
        while !writers.is_finished() {
            raidcore::reactor::sleep(std::time::Duration::from_millis(2)).await;
        }
        let results = writers.join().unwrap();
        assert_eq!(results.len(), 320);
        assert!(results.iter().all(|r| r.is_ok()), "{results:?}");
        let got = common::read_array(&r.array, 0, 20 * 512).await.unwrap();
        for round in 0..20usize {
            for i in 0..8usize {
                let piece = &got[round * 512 + i * 64..round * 512 + i * 64 + 64];
                assert!(
                    piece.iter().all(|&b| b == (round * 8 + i + 1) as u8),
                    "sector {round}: the write of bytes {}..{} was lost",
                    i * 64,
                    i * 64 + 64
                );
            }
        }
        sender.close();
        uninstall_engine();
        r.array.close().await.unwrap();
    })
    .unwrap();
}

/// A request from the FUSE side that cannot be valid (past the end, not sector-aligned, a
/// write to a read-only array) is refused by the handle itself, before it is posted to the
/// reactor: here no reactor serves the inbox, so only a refusal at the edge answers at all.
#[test]
fn the_handle_refuses_invalid_requests_before_posting_them() {
    use raidcore::cache::EngineHandle;
    use raidcore::reactor::Inbox;
    use raidcore::volume::VolumeInfo;
    use raidcore::ErrorKind;
    use std::sync::mpsc;
    let (_inbox, sender) = Inbox::new().unwrap();
    let info = VolumeInfo {
        name: "t".into(),
        description: String::new(),
        size_bytes: 1 << 20,
        logical_block: 512,
        preferred_block: 4096,
        read_only: true,
        can_trim: false,
        can_zero: false,
        can_flush: true,
        multi_conn: true,
        zero_buffer_bytes: 0,
    };
    let handle = EngineHandle::new(sender, info);
    let (tx, rx) = mpsc::channel();
    let answer = |tx: &mpsc::Sender<ErrorKind>| {
        let tx = tx.clone();
        move |r: raidcore::Result<()>| tx.send(r.unwrap_err().kind()).unwrap()
    };
    let t = tx.clone();
    handle.read(1 << 20, 512, move |r| {
        t.send(r.unwrap_err().kind()).unwrap()
    });
    assert_eq!(
        rx.try_recv(),
        Ok(ErrorKind::OutOfRange),
        "read past the end"
    );
    let t = tx.clone();
    handle.read(100, 512, move |r| t.send(r.unwrap_err().kind()).unwrap());
    assert_eq!(rx.try_recv(), Ok(ErrorKind::InvalidInput), "unaligned read");
    handle.write(0, BufSlice::zeroed(512), false, answer(&tx));
    assert_eq!(
        rx.try_recv(),
        Ok(ErrorKind::ReadOnly),
        "write to a read-only array"
    );
    handle.trim(0, 4096, answer(&tx));
    assert_eq!(
        rx.try_recv(),
        Ok(ErrorKind::ReadOnly),
        "trim of a read-only array"
    );
    handle.write_unaligned(5, vec![1; 10], false, answer(&tx));
    assert_eq!(
        rx.try_recv(),
        Ok(ErrorKind::ReadOnly),
        "unaligned write, read-only"
    );
}
