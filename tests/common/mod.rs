//! Helpers shared by the engine tests (each test binary uses some of them).
#![allow(dead_code)]

use std::rc::Rc;
use std::time::Duration;

use raidcore::layout::Level;
use raidcore::member::{MemMember, Member};
use raidcore::raid::{Array, ScrubState};

/// Redundancy read straight from the simulated members' data areas: every RAID5 row XORs to
/// zero, every RAID1/RAID10 copy is equal. `sims` are found by path, so a member may have
/// moved slots (spares, replacements). Panics with `context` and the first bad offset.
pub fn assert_redundancy_consistent(array: &Array, sims: &[Rc<MemMember>], context: &str) {
    let geo = array.geometry();
    let slots = array.slots();
    let member = |slot: usize| {
        let d = slots[slot]
            .disk()
            .unwrap_or_else(|| panic!("{context}: slot {slot} has no member"))
            .clone();
        let sim = sims
            .iter()
            .find(|s| s.path() == d.member.path())
            .unwrap_or_else(|| panic!("{context}: no simulated member {}", d.member.path()));
        (sim.store().lock().unwrap().clone(), d.data_offset as usize)
    };
    match geo.level() {
        Level::Raid5 => {
            let used = geo.member_used_bytes() as usize;
            let mut acc = vec![0u8; used];
            for slot in 0..geo.members() {
                let (bytes, off) = member(slot);
                for (a, b) in acc.iter_mut().zip(&bytes[off..off + used]) {
                    *a ^= b;
                }
            }
            if let Some(i) = acc.iter().position(|&x| x != 0) {
                panic!(
                    "{context}: parity inconsistent at member offset {i} (row {})",
                    i as u64 / geo.chunk_bytes()
                );
            }
        }
        Level::Raid1 | Level::Raid10 => {
            let unit = if geo.level() == Level::Raid1 {
                65536
            } else {
                geo.chunk_bytes()
            };
            let mut at = 0;
            while at < geo.array_bytes() {
                let len = unit.min(geo.array_bytes() - at) as usize;
                let copies = geo.map_copies(at);
                let first = copies.as_slice()[0];
                let (m0, o0) = member(first.slot);
                let want = &m0[o0 + first.member_offset as usize..][..len];
                for p in copies.iter().skip(1) {
                    let (m, o) = member(p.slot);
                    assert!(
                        &m[o + p.member_offset as usize..][..len] == want,
                        "{context}: copies differ at array offset {at}"
                    );
                }
                at += unit;
            }
        }
        Level::Raid0 => {}
    }
}

/// Waits for the running check / repair / resync to end and returns its final state.
pub async fn wait_scrub(array: &Array) -> ScrubState {
    loop {
        raidcore::reactor::sleep(Duration::from_millis(2)).await;
        let s = array.scrub_state().expect("a check was started");
        if !s.running {
            return s;
        }
    }
}

/// An array on simulated members, each behind a fault wrapper, with its events recorded.
pub struct Rig {
    pub array: Rc<Array>,
    /// Members then spares, by index: `m0..`, then `s0..`.
    pub sims: Vec<Rc<MemMember>>,
    pub faults: Vec<raidcore::member::FaultHandle>,
    pub events: Rc<std::cell::RefCell<Vec<raidcore::raid::events::Event>>>,
}

/// Simulated members `m0..` then spares `s0..`, with a volatile write cache if asked.
pub fn sim_members(
    members: usize,
    spares: usize,
    member_bytes: u64,
    volatile: bool,
) -> Vec<Rc<MemMember>> {
    (0..members + spares)
        .map(|i| {
            let name = if i < members {
                format!("m{i}")
            } else {
                format!("s{}", i - members)
            };
            let m = MemMember::new(&name, member_bytes, i as u64);
            Rc::new(if volatile { m.with_volatile_cache() } else { m })
        })
        .collect()
}

/// Creates (fresh, bitmap, 64 KiB chunks) and assembles an array of `members` members of
/// `member_bytes` and `spares` spares.
pub async fn rig(
    kind: raidcore::layout::LayoutKind,
    members: usize,
    spares: usize,
    member_bytes: u64,
) -> Rig {
    rig_on(
        kind,
        sim_members(members, spares, member_bytes, false),
        members,
        true,
    )
    .await
}

/// Creates an array on `sims` (the first `members` in slot order, the rest spares) and
/// assembles it; `fresh` false leaves an initial resync to do.
pub async fn rig_on(
    kind: raidcore::layout::LayoutKind,
    sims: Vec<Rc<MemMember>>,
    members: usize,
    fresh: bool,
) -> Rig {
    use raidcore::member::{FaultHandle, FaultMember};
    use raidcore::raid::{assemble, create, AssembleOptions, CreateOptions};
    let plain: Vec<Rc<dyn Member>> = sims.iter().map(|m| m.clone() as Rc<dyn Member>).collect();
    let opts = CreateOptions {
        name: "t".into(),
        kind,
        chunk_bytes: 64 << 10,
        bitmap: true,
        bitmap_chunk_bytes: Some(1 << 20),
        assume_clean: false,
        force: true,
        fresh,
        spare_group: None,
    };
    create(&plain[..members], &plain[members..], &opts)
        .await
        .expect("create");
    let faults: Vec<FaultHandle> = sims.iter().map(|_| FaultHandle::default()).collect();
    let wrapped = sims
        .iter()
        .zip(&faults)
        .map(|(m, f)| Rc::new(FaultMember::new(m.clone(), f.clone())) as Rc<dyn Member>)
        .collect();
    let array = assemble(wrapped, &AssembleOptions::default())
        .await
        .expect("assemble")
        .array;
    let events = Rc::new(std::cell::RefCell::new(Vec::new()));
    let sink = events.clone();
    array.subscribe(move |e| sink.borrow_mut().push(e.clone()));
    Rig {
        array,
        sims,
        faults,
        events,
    }
}

/// Assembles whatever the simulated members' stores hold now (after a crash or a power cut),
/// on new simulated members over the same bytes.
pub async fn reassemble(
    sims: &[Rc<MemMember>],
    opts: &raidcore::raid::AssembleOptions,
) -> raidcore::Result<Rc<Array>> {
    let members: Vec<Rc<dyn Member>> = sims
        .iter()
        .enumerate()
        .map(|(i, s)| {
            Rc::new(MemMember::with_store(s.path(), s.store(), 1000 + i as u64)) as Rc<dyn Member>
        })
        .collect();
    Ok(raidcore::raid::assemble(members, opts).await?.array)
}

/// Deterministic, position-dependent contents (a different `seed` gives different bytes).
pub fn pattern(len: usize, seed: u64) -> raidcore::buf::BufSlice {
    raidcore::buf::BufSlice::filled(len, |b| {
        for (i, w) in b.chunks_exact_mut(8).enumerate() {
            w.copy_from_slice(&((i as u64).wrapping_mul(0x9E37_79B9) ^ seed).to_le_bytes());
        }
    })
}

/// Reads `len` bytes at `offset` through the array.
pub async fn read_array(array: &Array, offset: u64, len: usize) -> raidcore::Result<Vec<u8>> {
    let b = raidcore::buf::BufSlice::zeroed(len);
    array.read(offset, b.clone()).await?;
    Ok(b.to_vec())
}

/// Waits (bounded) until no slot is recovering and every slot is active.
pub async fn wait_complete(array: &Array) {
    for _ in 0..20_000 {
        if array.rebuild_states().is_empty() && array.slots().iter().all(|s| s.is_active()) {
            return;
        }
        raidcore::reactor::sleep(Duration::from_millis(2)).await;
    }
    panic!(
        "the array did not become complete: {}",
        array.missing_description()
    );
}

/// Waits (bounded) for `cond`.
pub async fn wait_until(what: &str, cond: impl Fn() -> bool) {
    for _ in 0..20_000 {
        if cond() {
            return;
        }
        raidcore::reactor::sleep(Duration::from_millis(2)).await;
    }
    panic!("timed out waiting for {what}");
}

/// A copy of every simulated member's bytes (to prove that nothing changed).
pub fn snapshot(sims: &[Rc<MemMember>]) -> Vec<Vec<u8>> {
    sims.iter()
        .map(|s| s.store().lock().unwrap().clone())
        .collect()
}
