//! The chaos: failures, pulled disks, read errors, slow members, spares, replacements,
//! checks and battery flips at random moments.

use crate::*;

/// What the chaos task acts on.
pub(crate) struct Chaos {
    pub(crate) array: Rc<Array>,
    pub(crate) control: Rc<raidcore::control::Controller>,
    pub(crate) cache: Rc<Cache>,
    pub(crate) faults: Vec<raidcore::member::FaultHandle>,
    pub(crate) data_offset: u64,
    /// The device a `replace` brings in (one per run).
    pub(crate) replacement: Rc<MemMember>,
}

/// Member failures, pulled disks, read errors, slow devices, spares, replacements, checks and
/// battery flips, at random moments while the clients run. Failures that would take the last copy are refused (that
/// is the point of the redundancy floor). Returns whether the replacement device was used.
pub(crate) async fn chaos(
    seed: u64,
    x: Chaos,
    ops: Rc<Cell<u64>>,
    injected: Rc<Cell<u64>>,
    cut_at: u64,
) -> bool {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut replaced = false;
    while ops.get() < cut_at {
        // Act every few dozen client operations (time would let fast clients outrun it).
        let due = ops.get().saturating_add(rng.gen_range(5..40));
        while ops.get() < due.min(cut_at) {
            sleep(Duration::from_millis(1)).await;
        }
        if ops.get() >= cut_at || x.array.is_failed() {
            continue;
        }
        let slots = x.array.slots();
        let active: Vec<String> = slots
            .iter()
            .filter_map(|s| match s {
                SlotState::Active(d) => Some(d.member.path().to_string()),
                _ => None,
            })
            .collect();
        let action = rng.gen_range(0..100);
        trace(|| format!("chaos: {action} ({})", x.array.missing_description()));
        match action {
            0..=9 => {
                if let Some(p) = pick(&mut rng, &active) {
                    let _ = x.control.fail_member(&p, false).await;
                    injected.set(injected.get() + 1);
                }
            }
            10..=29 => {
                // A read error on one block of some device (a bad sector that remaps).
                let dev = rng.gen_range(0..x.faults.len());
                let at = x.data_offset + rng.gen_range(0..WORKING_SET / BLOCK) * BLOCK;
                x.faults[dev].inject(FaultRule {
                    kind: FaultKind::ReadError,
                    range: Some((at, BLOCK)),
                    count: Some(1),
                });
                injected.set(injected.get() + 1);
            }
            30..=34 if !replaced && slots.iter().all(|s| s.is_active()) => {
                if let Some(p) = pick(&mut rng, &active) {
                    let new: Rc<dyn Member> = x.replacement.clone();
                    replaced = x.control.replace_member(&p, new, false).await.is_ok();
                }
            }
            35..=39 => {
                let _ = x.control.start_scrub(rng.gen_bool(0.5));
            }
            45..=47 if slots.iter().all(|s| s.is_active()) => {
                // A disk is pulled (every later I/O fails with ENODEV), never a second one.
                let dev = rng.gen_range(0..x.faults.len());
                x.faults[dev].vanish();
                injected.set(injected.get() + 1);
            }
            48..=57 => {
                // A slow device for a while: completions come back in another order.
                let dev = rng.gen_range(0..x.faults.len());
                x.faults[dev].inject(FaultRule {
                    kind: FaultKind::Delay(Duration::from_millis(rng.gen_range(1..5))),
                    range: None,
                    count: Some(rng.gen_range(1..20)),
                });
                injected.set(injected.get() + 1);
            }
            40..=44 => {
                let battery = if rng.gen_bool(0.5) {
                    Battery::Present
                } else {
                    Battery::Absent
                };
                let _ = x.cache.set_policy(None, Some(battery), None).await;
            }
            _ => {}
        }
    }
    replaced
}
