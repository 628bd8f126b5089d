//! The live phase: clients writing, reading and flushing through the cache while the
//! chaos runs, every read checked against the model.

use crate::*;

/// Clients and chaos until the power cut; returns the members and the model at that moment.
pub(crate) async fn live_phase(
    seed: u64,
    setup: Setup,
) -> Result<(Vec<Rc<MemMember>>, Rc<RefCell<Model>>, Report), String> {
    let sims = common::sim_members(setup.members, setup.spares, MEMBER, true);
    let r = common::rig_on(setup.kind.clone(), sims, setup.members, true).await;
    r.control
        .subscribe(|e| trace(|| format!("event: {} {e:?}", e.name())));
    r.control
        .set_checkpoint_every(256 << 10, Duration::from_millis(20));
    // Rebuilds, copies and checks make progress under the clients' load.
    r.control.set_speed_limits(Some(100_000), Some(400_000));
    let cache = Cache::new(
        r.array.clone(),
        CacheConfig {
            capacity_bytes: 64 * BLOCK,
            max_age: Duration::from_millis(30),
            ..CacheConfig::default()
        },
        r.control.clone(),
    );
    spawn(cache.clone().run_destager());
    if setup.write_back {
        cache
            .set_policy(None, Some(Battery::Present), None)
            .await
            .map_err(|e| e.to_string())?;
    }
    let sectors = (WORKING_SET.min(r.array.size_bytes()) / SECTOR as u64) as usize;
    let model = Rc::new(RefCell::new(Model::new(sectors)));
    let error: Rc<RefCell<Option<String>>> = Rc::new(RefCell::new(None));
    let ops = Rc::new(Cell::new(0u64));
    let faults = Rc::new(Cell::new(0u64));
    let mut rng = SmallRng::seed_from_u64(seed ^ 0x5EED);
    // The power cut comes after a random number of client operations.
    let cut_at = rng.gen_range(50..1200u64);
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            spawn(client(
                c,
                rng.gen(),
                cache.clone(),
                model.clone(),
                error.clone(),
                ops.clone(),
                cut_at,
            ))
        })
        .collect();
    let replacement = Rc::new(MemMember::new("replacement", MEMBER, seed).with_volatile_cache());
    let data_offset = r.array.slots()[0].disk().map_or(0, |d| d.data_offset);
    let chaos = spawn(chaos(
        rng.gen(),
        Chaos {
            array: r.array.clone(),
            control: r.control.clone(),
            cache: cache.clone(),
            faults: r.faults.clone(),
            data_offset,
            replacement: replacement.clone(),
        },
        ops.clone(),
        faults.clone(),
        cut_at,
    ));
    for c in clients {
        c.await;
    }
    // The clients stop at the cut or at the first error; chaos with them.
    ops.set(u64::MAX);
    let replaced = chaos.await;
    if let Some(e) = error.borrow_mut().take() {
        return Err(e);
    }
    let reads_checked = model.borrow().reads_checked;
    let mut sims = r.sims.clone();
    if replaced {
        sims.push(replacement);
    }
    Ok((
        sims,
        model,
        Report {
            ops: cut_at,
            reads_checked,
            faults: faults.get(),
            forced: false,
        },
    ))
}

/// One client: reads (checked), writes (some FUA), trims, zeroes and flushes on its own
/// blocks (block % CLIENTS == c), so each sector's versions have one order.
pub(crate) async fn client(
    c: u64,
    seed: u64,
    cache: Rc<Cache>,
    model: Rc<RefCell<Model>>,
    error: Rc<RefCell<Option<String>>>,
    ops: Rc<Cell<u64>>,
    cut_at: u64,
) {
    let mut rng = SmallRng::seed_from_u64(seed);
    let blocks = WORKING_SET.min(cache.size_bytes()) / BLOCK;
    while ops.get() < cut_at && error.borrow().is_none() {
        ops.set(ops.get() + 1);
        let first = rng.gen_range(0..blocks / CLIENTS) * CLIENTS + c;
        let at = first * BLOCK;
        let op = rng.gen_range(0..100);
        trace(|| format!("client {c}: op {op} at {at}"));
        let result = match op {
            0..=39 => read_checked(&cache, &model, at, BLOCK).await,
            40..=79 => write_gen(&cache, &model, at, rng.gen_bool(0.2), &mut rng).await,
            80..=84 => zero(&cache, &model, at, rng.gen_bool(0.5)).await,
            _ => flush(&cache, &model).await,
        };
        trace(|| format!("client {c}: op {op} done"));
        if rng.gen_bool(0.1) {
            // Let background work (destage, rebuild, copy, check) interleave.
            sleep(Duration::from_micros(rng.gen_range(100..2000))).await;
        }
        if let Err(e) = result {
            *error.borrow_mut() = Some(e);
        }
    }
}

/// Sectors of `at..at+len`.
pub(crate) fn sector_range(at: u64, len: u64) -> std::ops::Range<usize> {
    (at / SECTOR as u64) as usize..((at + len) / SECTOR as u64) as usize
}

pub(crate) async fn read_checked(
    cache: &Cache,
    model: &RefCell<Model>,
    at: u64,
    len: u64,
) -> Result<(), String> {
    let floor: Vec<usize> = sector_range(at, len)
        .map(|s| model.borrow().acked[s])
        .collect();
    let buf = BufSlice::zeroed(len as usize);
    let complete_before = complete(cache.array());
    if let Err(e) = cache.read(at, buf.clone()).await {
        return allowed_error(cache.array(), complete_before, || {
            format!("read at {at}: {e}")
        });
    }
    let bytes = buf.to_vec();
    let mut m = model.borrow_mut();
    m.reads_checked += 1;
    for (k, s) in sector_range(at, len).enumerate() {
        let got = decode(s as u64, &bytes[k * SECTOR..(k + 1) * SECTOR])
            .ok_or_else(|| format!("read at {at}: sector {s} holds bytes never written there"))?;
        // The newest instance: zeroes may have been issued more than once.
        let pos = m.issued[s].iter().rposition(|&g| g == got).ok_or_else(|| {
            format!("read at {at}: sector {s} holds generation {got}, never issued there")
        })?;
        if pos < floor[k] {
            return Err(format!(
                "read at {at}: sector {s} went back to generation {got} (acknowledged: {})",
                m.issued[s][floor[k]]
            ));
        }
    }
    Ok(())
}

pub(crate) async fn write_gen(
    cache: &Cache,
    model: &RefCell<Model>,
    at: u64,
    fua: bool,
    rng: &mut SmallRng,
) -> Result<(), String> {
    let _ = rng;
    let gen = {
        let mut m = model.borrow_mut();
        let g = m.next_gen;
        m.next_gen += 1;
        for s in sector_range(at, BLOCK) {
            m.issued[s].push(g);
        }
        g
    };
    let buf = BufSlice::filled(BLOCK as usize, |b| {
        for (k, s) in sector_range(at, BLOCK).enumerate() {
            sector_bytes(s as u64, gen, &mut b[k * SECTOR..(k + 1) * SECTOR]);
        }
    });
    let complete_before = complete(cache.array());
    match cache.write(at, buf, fua).await {
        Ok(()) => {
            acknowledge(model, at, gen, fua);
            Ok(())
        }
        Err(e) => allowed_error(cache.array(), complete_before, || {
            format!("write at {at}: {e}")
        }),
    }
}

pub(crate) async fn zero(
    cache: &Cache,
    model: &RefCell<Model>,
    at: u64,
    discard: bool,
) -> Result<(), String> {
    {
        let mut m = model.borrow_mut();
        for s in sector_range(at, BLOCK) {
            m.issued[s].push(0);
        }
    }
    let complete_before = complete(cache.array());
    let r = if discard {
        cache.trim(at, BLOCK).await
    } else {
        cache.write_zeroes(at, BLOCK).await
    };
    match r {
        Ok(()) => {
            acknowledge(model, at, 0, false);
            Ok(())
        }
        Err(e) => allowed_error(cache.array(), complete_before, || {
            format!("zeroing at {at}: {e}")
        }),
    }
}

/// Records that the version `gen` of the block at `at` was acknowledged.
pub(crate) fn acknowledge(model: &RefCell<Model>, at: u64, gen: u64, fua: bool) {
    let mut m = model.borrow_mut();
    for s in sector_range(at, BLOCK) {
        // The newest issued instance of `gen` (zeroes may have been issued several times).
        let pos = m.issued[s].iter().rposition(|&g| g == gen).expect("issued");
        m.acked[s] = m.acked[s].max(pos);
        if fua {
            m.durable[s] = m.durable[s].max(pos);
        }
    }
}

pub(crate) async fn flush(cache: &Cache, model: &RefCell<Model>) -> Result<(), String> {
    // Everything acknowledged before the flush is sent must be durable once it is answered.
    let acked = model.borrow().acked.clone();
    let complete_before = complete(cache.array());
    match cache.flush().await {
        Ok(()) => {
            let mut m = model.borrow_mut();
            for (d, a) in m.durable.iter_mut().zip(acked) {
                *d = (*d).max(a);
            }
            Ok(())
        }
        Err(e) => allowed_error(cache.array(), complete_before, || format!("flush: {e}")),
    }
}

pub(crate) fn complete(array: &Array) -> bool {
    array.slots().iter().all(|s| s.is_active())
}

/// An error is honest when the array failed, or was not complete (a read error on a survivor
/// of a degraded array cannot be corrected: md answers EIO too). On a complete array every
/// single read error must be corrected, so an error there is a bug.
pub(crate) fn allowed_error(
    array: &Array,
    complete_before: bool,
    what: impl FnOnce() -> String,
) -> Result<(), String> {
    if array.is_failed() || !complete_before || !complete(array) {
        Ok(())
    } else {
        Err(format!("{} (on a complete array)", what()))
    }
}
