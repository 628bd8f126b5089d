//! Arrays on simulated members: created, assembled behind fault wrappers, and assembled again
//! over the same bytes after a crash or a power cut.

use std::cell::RefCell;
use std::rc::Rc;

use raidcore::control::{assemble, create, AssembleOptions, Assembled, Controller, CreateOptions};
use raidcore::layout::{LayoutKind, Raid10Layout, Raid5Algorithm};
use raidcore::member::{FaultHandle, FaultKind, FaultMember, FaultRule, MemMember, Member};
use raidcore::raid::events::Event;
use raidcore::raid::Array;

/// RAID5 as mdadm creates it by default (left-symmetric).
pub fn raid5() -> LayoutKind {
    LayoutKind::Raid5(Raid5Algorithm::LeftSymmetric)
}

/// RAID6 as mdadm creates it by default (left-symmetric).
pub fn raid6() -> LayoutKind {
    LayoutKind::Raid6(raidcore::layout::Raid6Algorithm::LeftSymmetric)
}

/// RAID10 with two near copies (mdadm's default, n2): on 4 members, m0/m1 and m2/m3 mirror.
pub fn raid10() -> LayoutKind {
    LayoutKind::Raid10(Raid10Layout {
        near: 2,
        far: 1,
        offset: false,
    })
}

/// Every event an array hands out from the moment it is recorded.
pub type Recorded = Rc<RefCell<Vec<Event>>>;

/// Records every event the array hands out from now on.
pub fn record_events(control: &Controller) -> Recorded {
    let events: Recorded = Rc::new(RefCell::new(Vec::new()));
    let sink = events.clone();
    control.subscribe(move |e| sink.borrow_mut().push(e.clone()));
    events
}

/// An array on simulated members, each behind a fault wrapper, with its events recorded.
pub struct Rig {
    pub array: Rc<Array>,
    pub control: Rc<Controller>,
    /// Members then spares, by index: `m0..`, then `s0..`.
    pub sims: Vec<Rc<MemMember>>,
    pub faults: Vec<FaultHandle>,
    pub events: Recorded,
}

impl Rig {
    /// Assembles `sims`, each behind a fault wrapper of its own (unarmed, in `faults`), and
    /// records the array's events from then on.
    pub async fn assemble(
        sims: Vec<Rc<MemMember>>,
        opts: &AssembleOptions,
    ) -> raidcore::Result<Rig> {
        let (wrapped, faults) = FaultMember::wrap_all(as_members(&sims));
        let assembled = assemble(wrapped, opts).await?;
        let events = record_events(&assembled.control);
        Ok(Rig {
            array: assembled.array,
            control: assembled.control,
            sims,
            faults,
            events,
        })
    }
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

/// `sims` as the engine takes members.
pub fn as_members(sims: &[Rc<MemMember>]) -> Vec<Rc<dyn Member>> {
    sims.iter().map(|m| m.clone() as Rc<dyn Member>).collect()
}

/// What the tests create unless they say otherwise: 64 KiB chunks, a bitmap with the chunk
/// size `create` picks, forced (no prompts), fresh members (nothing to resync).
pub fn create_options(name: &str, kind: LayoutKind) -> CreateOptions {
    CreateOptions {
        chunk_bytes: 64 << 10,
        force: true,
        fresh: true,
        ..CreateOptions::new(name, kind)
    }
}

/// Creates an array with `opts` on `sims`: the first `members` in slot order, the rest spares.
pub async fn create_on(
    sims: &[Rc<MemMember>],
    members: usize,
    opts: &CreateOptions,
) -> raidcore::Result<()> {
    let plain = as_members(sims);
    create(&plain[..members], &plain[members..], opts)
        .await
        .map(|_| ())
}

/// Creates an array with `create` on `sims` (the first `members` in slot order, the rest
/// spares) and assembles it with `assemble`, each member behind a fault wrapper.
pub async fn rig_with(
    sims: Vec<Rc<MemMember>>,
    members: usize,
    create: &CreateOptions,
    assemble: &AssembleOptions,
) -> Rig {
    create_on(&sims, members, create).await.expect("create");
    Rig::assemble(sims, assemble).await.expect("assemble")
}

/// Creates (fresh, bitmap, 64 KiB chunks) and assembles an array of `members` members of
/// `member_bytes` and `spares` spares.
pub async fn rig(kind: LayoutKind, members: usize, spares: usize, member_bytes: u64) -> Rig {
    rig_on(
        kind,
        sim_members(members, spares, member_bytes, false),
        members,
        true,
    )
    .await
}

/// Creates an array on `sims` (the first `members` in slot order, the rest spares) with
/// 1 MiB bitmap chunks and assembles it; `fresh` false leaves an initial resync to do.
pub async fn rig_on(
    kind: LayoutKind,
    sims: Vec<Rc<MemMember>>,
    members: usize,
    fresh: bool,
) -> Rig {
    let create = CreateOptions {
        bitmap_chunk_bytes: Some(1 << 20),
        fresh,
        ..create_options("t", kind)
    };
    rig_with(sims, members, &create, &AssembleOptions::default()).await
}

/// Assembly that starts the array even with members missing (mdadm's `--run`).
pub fn run_degraded() -> AssembleOptions {
    AssembleOptions {
        run: true,
        ..AssembleOptions::default()
    }
}

/// New simulated members over the same bytes and paths, as a restart finds them; `seed`
/// orders their completions.
pub fn reopened(sims: &[Rc<MemMember>], seed: u64) -> Vec<Rc<MemMember>> {
    sims.iter()
        .map(|s| Rc::new(MemMember::with_store(s.path(), s.store(), seed)))
        .collect()
}

/// Assembles whatever the simulated members' stores hold now (after a crash or a power cut),
/// on new simulated members over the same bytes.
pub async fn reassemble(
    sims: &[Rc<MemMember>],
    opts: &AssembleOptions,
) -> raidcore::Result<Assembled> {
    let members: Vec<Rc<dyn Member>> = sims
        .iter()
        .enumerate()
        .map(|(i, s)| {
            Rc::new(MemMember::with_store(s.path(), s.store(), 1000 + i as u64)) as Rc<dyn Member>
        })
        .collect();
    assemble(members, opts).await
}

/// `kind` striking once, on whatever the member is asked first.
pub fn once(kind: FaultKind) -> FaultRule {
    FaultRule {
        count: Some(1),
        ..FaultRule::new(kind)
    }
}

/// `kind` striking every request that touches the `len` bytes at member offset `at`.
pub fn on_range(kind: FaultKind, at: u64, len: u64) -> FaultRule {
    FaultRule {
        range: Some((at, len)),
        ..FaultRule::new(kind)
    }
}
