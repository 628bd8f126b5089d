//! After the power cut: reassembly by the daemon's rules, recovery, and the check of every
//! sector and of the members' redundancy.

use crate::*;

/// Reassembles after the power cut by the daemon's rules, lets recovery finish, and checks
/// every sector against the model. Returns whether `--force` was needed (md's rule for a
/// dirty degraded RAID5).
pub(crate) async fn recovery_phase(
    sims: Vec<Rc<MemMember>>,
    model: Rc<RefCell<Model>>,
) -> Result<bool, String> {
    let run = AssembleOptions {
        run: true,
        ..Default::default()
    };
    let (assembled, forced) = match common::reassemble(&sims, &run).await {
        Ok(a) => (a, false),
        Err(e) if e.to_string().contains("--force") => {
            let force = AssembleOptions {
                run: true,
                force: true,
                ..Default::default()
            };
            let a = common::reassemble(&sims, &force)
                .await
                .map_err(|e| format!("assemble --force after the power cut: {e}"))?;
            (a, true)
        }
        Err(e) => return Err(format!("assemble after the power cut: {e}")),
    };
    let (array, control) = (assembled.array, assembled.control);
    trace(|| {
        format!(
            "reassembled (forced: {forced}): {}, sync offset {}, slots {:?}",
            array.missing_description(),
            array.sync_offset(),
            array
                .slots()
                .iter()
                .map(|s| s.disk().map(|d| d.member.path().to_string()))
                .collect::<Vec<_>>()
        )
    });
    // Slots not in sync at assembly: after a forced start their bytes are rebuilt from
    // parity that may be stale (known before the recovery below makes them active).
    let absent: Vec<usize> = (0..array.geometry().members())
        .filter(|&s| !array.slots()[s].is_active())
        .collect();
    // Rebuilds (with a spare) and the resync (once complete) run by themselves.
    for _ in 0..5000 {
        let busy = !control.rebuild_states().is_empty()
            || control.scrub_state().is_some_and(|s| s.running)
            || control.replacement_state().is_some();
        let complete = array.slots().iter().all(|s| s.is_active());
        if !busy && (!complete || array.sync_offset() == u64::MAX) {
            break;
        }
        sleep(Duration::from_millis(2)).await;
    }
    let m = model.borrow().clone_for_check();
    let len = (m.issued.len() * SECTOR) as u64;
    let (bytes, lost) = read_all(&array, len).await?;
    for s in 0..m.issued.len() {
        let at = (s * SECTOR) as u64;
        if lost.contains(&(at / BLOCK)) {
            continue; // recorded lost: EIO is the honest answer
        }
        if forced && write_hole_exposed(&array, at, &absent) {
            // md's write hole: a dirty degraded RAID5 started with --force may rebuild the
            // missing member's bytes from stale parity. That is why assembly refuses it.
            continue;
        }
        let Some(got) = decode(s as u64, &bytes[s * SECTOR..(s + 1) * SECTOR]) else {
            trace_sector(&array, &sims, &m, s);
            return Err(format!(
                "after the power cut sector {s} holds bytes never written there"
            ));
        };
        let pos = m.issued[s].iter().rposition(|&g| g == got).ok_or_else(|| {
            format!("after the power cut sector {s} holds generation {got}, never issued there")
        })?;
        if pos < m.durable[s] {
            trace_sector(&array, &sims, &m, s);
            return Err(format!(
                "after the power cut sector {s} went back to generation {got}; generation {} was durable (flushed or FUA)",
                m.issued[s][m.durable[s]]
            ));
        }
    }
    let complete = array.slots().iter().all(|s| s.is_active());
    if complete && array.sync_offset() == u64::MAX {
        check_redundancy(&array, &sims);
    }
    array.close().await.map_err(|e| format!("close: {e}"))?;
    Ok(forced)
}

/// Reads the first `len` bytes of the array; where that fails, block by block. A block may
/// fail only where the array has recorded its data lost (every place that could answer it is
/// absent or in a bad-block log): returns the bytes and those blocks.
pub(crate) async fn read_all(array: &Array, len: u64) -> Result<(Vec<u8>, Vec<u64>), String> {
    let buf = BufSlice::zeroed(len as usize);
    if array.read(0, buf.clone()).await.is_ok() {
        return Ok((buf.to_vec(), Vec::new()));
    }
    let mut lost = Vec::new();
    for block in 0..len / BLOCK {
        let part = buf.slice((block * BLOCK) as usize, BLOCK as usize);
        if let Err(e) = array.read(block * BLOCK, part).await {
            if !recorded_lost(array, block * BLOCK) {
                return Err(format!(
                    "read after the power cut at {}: {e}",
                    block * BLOCK
                ));
            }
            trace(|| format!("block {block} reads EIO: recorded lost"));
            lost.push(block);
        }
    }
    Ok((buf.to_vec(), lost))
}

/// Whether the array block at `at` has no place left that could answer it: each copy (RAID5:
/// the data member and another member) is absent or has the block in its bad-block log.
pub(crate) fn recorded_lost(array: &Array, at: u64) -> bool {
    let bad = array.bad_blocks();
    let slots = array.slots();
    let gone = |slot: usize, member_offset: u64| match slots[slot].disk() {
        Some(d) if slots[slot].is_active() => bad.iter().any(|(path, ranges)| {
            path == d.member.path()
                && ranges
                    .iter()
                    .any(|&(o, l)| o <= member_offset && member_offset + BLOCK <= o + l)
        }),
        _ => true,
    };
    let geo = array.geometry();
    if geo.parities() > 0 {
        // Lost when the data member and more others than there are parities are gone.
        let loc = geo.parity_locate(at);
        let off = loc.member_offset / BLOCK * BLOCK;
        let others = (0..geo.members())
            .filter(|&s| s != loc.slot && gone(s, off))
            .count();
        gone(loc.slot, off) && others >= geo.parities()
    } else {
        geo.map_copies(at)
            .iter()
            .all(|c| gone(c.slot, c.member_offset / BLOCK * BLOCK))
    }
}

/// Traces what each copy of sector `s` holds on the members, and its history in the model.
pub(crate) fn trace_sector(array: &Array, sims: &[Rc<MemMember>], m: &Model, s: usize) {
    let at = (s * SECTOR) as u64;
    trace(|| {
        let copies = array.geometry().map_copies(at);
        let slots = array.slots();
        copies
            .iter()
            .map(|c| {
                let d = slots[c.slot].disk().cloned();
                let held = d.and_then(|d| {
                    let sim = sims.iter().find(|m| m.path() == d.member.path())?;
                    let bytes = sim.store().lock().unwrap().clone();
                    let o = (d.data_offset + c.member_offset) as usize;
                    Some((
                        d.member.path().to_string(),
                        decode(s as u64, &bytes[o..o + SECTOR]),
                    ))
                });
                format!("slot {}: {held:?}", c.slot)
            })
            .collect::<Vec<_>>()
            .join("; ")
    });
    trace(|| {
        format!(
            "sector {s} issued {:?} acked {} durable {}",
            m.issued[s], m.acked[s], m.durable[s]
        )
    });
}

pub(crate) fn write_hole_exposed(array: &Array, at: u64, absent: &[usize]) -> bool {
    array.geometry().parities() > 0 && absent.contains(&array.geometry().parity_locate(at).slot)
}

pub(crate) fn check_redundancy(array: &Array, sims: &[Rc<MemMember>]) {
    // The replacement member, when one took a slot, is not among `sims`: skip then.
    let all_known = array.slots().iter().all(|s| {
        s.disk()
            .is_some_and(|d| sims.iter().any(|m| m.path() == d.member.path()))
    });
    if all_known {
        common::assert_redundancy_consistent(array, sims, "after recovery");
    }
}
