//! Tests of the cache index (kept apart: the rules are many, the code is not).
use super::*;
use proptest::prelude::*;
use std::collections::HashMap;

fn index(slots: u64, blocks_per_stripe: u64) -> CacheIndex {
    CacheIndex::new(slots * BLOCK_SIZE, blocks_per_stripe * BLOCK_SIZE)
}

/// Recomputes every derived structure from `entries` and compares.
fn check(ix: &CacheIndex) {
    let mut slots: Vec<Slot> = ix.entries.values().map(|e| e.slot).collect();
    slots.extend(ix.orphans.values().copied());
    slots.extend(ix.free.iter().copied());
    slots.sort_unstable();
    assert_eq!(
        slots,
        (0..ix.slot_count).collect::<Vec<_>>(),
        "slots leak or repeat"
    );
    let clean: BTreeMap<u64, u64> = ix
        .entries
        .iter()
        .filter(|(_, e)| !e.dirty)
        .map(|(&b, e)| (e.lru, b))
        .collect();
    assert_eq!(clean, ix.lru);
    let ages: BTreeSet<(u64, u64)> = ix
        .entries
        .iter()
        .filter(|(_, e)| e.dirty)
        .map(|(&b, e)| (e.dirty_since, b))
        .collect();
    assert_eq!(ages, ix.by_age);
    let mut stripes: HashMap<u64, (u32, u32)> = HashMap::new();
    for (&b, e) in &ix.entries {
        assert!(!e.destaging || e.dirty, "block {b} destaging but clean");
        assert!(
            !(e.destaging && ix.orphans.contains_key(&b)),
            "block {b} destaged twice"
        );
        if e.dirty {
            let c = stripes.entry(b / ix.blocks_per_stripe).or_default();
            c.0 += 1;
            c.1 += u32::from(e.destaging);
        }
    }
    let actual: HashMap<u64, (u32, u32)> = ix
        .stripes
        .iter()
        .map(|(&s, c)| (s, (c.dirty, c.destaging)))
        .collect();
    assert_eq!(stripes, actual);
    assert_eq!(ix.dirty_blocks, ages.len() as u64);
}

/// Writes `blocks` (each must get a slot) at time `now`.
fn write_all(ix: &mut CacheIndex, blocks: impl IntoIterator<Item = u64>, now: u64) {
    for b in blocks {
        ix.write(b, now).unwrap();
    }
}

fn stripes_of(batch: &[DestageStripe]) -> Vec<u64> {
    batch.iter().map(|d| d.stripe).collect()
}

#[test]
fn new_rounds_capacity_down_and_starts_empty() {
    let ix = CacheIndex::new(10 * BLOCK_SIZE + 100, 4 * BLOCK_SIZE);
    assert_eq!(ix.capacity_bytes(), 10 * BLOCK_SIZE);
    assert_eq!(ix.slot_count(), 10);
    assert_eq!((ix.cached_bytes(), ix.dirty_bytes()), (0, 0));
    assert_eq!(ix.blocks_per_stripe(), 4);
    assert_eq!(ix.stats(), CacheStats::default());
    assert_eq!(ix.stats().read_hit_ratio(), None);
    assert_eq!(ix.oldest_dirty(), None);
    check(&ix);
}

#[test]
#[should_panic(expected = "not a non-zero multiple")]
fn new_rejects_stripe_not_a_block_multiple() {
    CacheIndex::new(BLOCK_SIZE, 1000);
}

#[test]
#[should_panic(expected = "not a non-zero multiple")]
fn new_rejects_zero_stripe() {
    CacheIndex::new(BLOCK_SIZE, 0);
}

#[test]
fn read_miss_fill_then_hit_and_counters() {
    let mut ix = index(4, 4);
    assert_eq!(ix.lookup(5), None);
    let s = ix.insert_clean(5).unwrap();
    assert_eq!(ix.lookup(5), Some(s));
    assert_eq!(ix.insert_clean(5), None, "already cached: do not fill");
    let st = ix.stats();
    assert_eq!((st.read_hits, st.read_misses), (1, 1));
    assert_eq!(st.read_hit_ratio(), Some(0.5));
    assert_eq!((ix.cached_bytes(), ix.dirty_bytes()), (BLOCK_SIZE, 0));
    check(&ix);
}

#[test]
fn lru_evicts_least_recently_used_clean_block() {
    let mut ix = index(3, 4);
    for b in 1..=3 {
        ix.insert_clean(b).unwrap();
    }
    let s2 = ix.peek(2).unwrap();
    ix.lookup(1); // 2 is now the least recently used
    assert_eq!(ix.insert_clean(4), Some(s2));
    assert_eq!(ix.peek(2), None);
    assert!(ix.peek(1).is_some() && ix.peek(3).is_some() && ix.peek(4).is_some());
    assert_eq!(ix.stats().evictions, 1);
    check(&ix);
}

#[test]
fn eviction_never_drops_a_dirty_block() {
    let mut ix = index(3, 4);
    ix.write(1, 0).unwrap();
    ix.insert_clean(2).unwrap();
    ix.write(3, 0).unwrap();
    ix.lookup(1); // a read hit on a dirty block does not make it evictable
    ix.insert_clean(4).unwrap(); // evicts 2, the only clean block
    assert_eq!(ix.peek(2), None);
    ix.write(5, 0).unwrap(); // evicts 4
    assert_eq!(ix.peek(4), None);
    assert_eq!(ix.insert_clean(6), None);
    assert_eq!(ix.write(7, 0), None);
    for b in [1, 3, 5] {
        assert!(ix.is_dirty(b));
    }
    let st = ix.stats();
    assert_eq!((st.evictions, st.writes, st.writes_rejected), (2, 4, 1));
    assert_eq!(ix.dirty_bytes(), ix.capacity_bytes());
    check(&ix);
}

#[test]
fn write_to_cached_block_is_a_hit_and_leaves_the_lru() {
    let mut ix = index(2, 4);
    ix.write(1, 0).unwrap();
    assert_eq!(ix.write(1, 1), ix.peek(1)); // overwrite of a dirty block
    let s2 = ix.insert_clean(2).unwrap();
    assert_eq!(ix.write(2, 2), Some(s2)); // clean -> dirty, same slot
    let st = ix.stats();
    assert_eq!((st.writes, st.write_hits), (3, 2));
    assert_eq!(ix.dirty_bytes(), 2 * BLOCK_SIZE);
    assert_eq!(ix.cached_bytes(), 2 * BLOCK_SIZE);
    assert!(ix.lru.is_empty());
    assert_eq!(ix.oldest_dirty(), Some(0));
    assert_eq!(ix.insert_clean(3), None);
    check(&ix);
}

#[test]
fn invalidate_drops_clean_and_dirty_and_returns_dirty() {
    let mut ix = index(3, 4);
    let s1 = ix.write(1, 0).unwrap();
    ix.insert_clean(2).unwrap();
    ix.write(3, 0).unwrap();
    assert_eq!(ix.invalidate(0..3), vec![(1, s1)]);
    assert_eq!((ix.peek(1), ix.peek(2)), (None, None));
    assert!(ix.is_dirty(3));
    assert_eq!(
        (ix.cached_bytes(), ix.dirty_bytes()),
        (BLOCK_SIZE, BLOCK_SIZE)
    );
    ix.insert_clean(10).unwrap();
    ix.insert_clean(11).unwrap();
    assert_eq!(ix.stats().evictions, 0, "freed slots are reused first");
    assert_eq!(ix.invalidate(5..5), vec![]);
    check(&ix);
}

#[test]
fn invalidate_huge_range_scans_entries() {
    let mut ix = index(4, 4);
    let a = ix.write(1_000_000, 0).unwrap();
    let b = ix.write(5, 0).unwrap();
    ix.insert_clean(7).unwrap();
    assert_eq!(ix.invalidate(0..u64::MAX), vec![(5, b), (1_000_000, a)]);
    assert_eq!((ix.cached_bytes(), ix.dirty_bytes()), (0, 0));
    assert_eq!(ix.dirty_stripes().count(), 0);
    check(&ix);
}

#[test]
fn stripe_of_and_dirty_stripes() {
    let mut ix = index(16, 4);
    assert_eq!([0, 3, 4, 9].map(|b| ix.stripe_of(b)), [0, 0, 1, 2]);
    ix.write(0, 0);
    ix.write(1, 0);
    ix.write(9, 0);
    ix.insert_clean(5);
    let mut d: Vec<_> = ix.dirty_stripes().collect();
    d.sort();
    assert_eq!(d, vec![(0, 2), (2, 1)]);
    check(&ix);
}

#[test]
fn destage_takes_full_stripes_first_then_fullest() {
    let mut ix = index(64, 4);
    write_all(&mut ix, [7, 5, 4, 6, 1, 0, 8, 10, 9, 12, 17, 16], 0);
    // stripe 0: 2 blocks, 1: full, 2: 3 blocks, 3: 1 block, 4: 2 blocks
    let batch = ix.take_destage_batch(4, 10, 1000);
    assert_eq!(stripes_of(&batch), vec![1, 2, 0, 4]);
    assert_eq!(
        batch.iter().map(|d| d.full).collect::<Vec<_>>(),
        [true, false, false, false]
    );
    assert!(batch.iter().all(|d| !d.aged));
    let s1: Vec<u64> = batch[0].blocks.iter().map(|&(b, _)| b).collect();
    assert_eq!(s1, vec![4, 5, 6, 7]);
    assert_eq!(batch[0].blocks[0].1, ix.peek(4).unwrap());
    assert_eq!(stripes_of(&ix.take_destage_batch(4, 10, 1000)), vec![3]);
    assert!(ix.take_destage_batch(4, 10, 1000).is_empty());
    assert!(ix.take_destage_batch(0, 10, 0).is_empty());
    check(&ix);
}

#[test]
fn destage_takes_aged_stripes_first_oldest_first() {
    let mut ix = index(64, 4);
    ix.write(20, 0).unwrap(); // stripe 5, oldest
    ix.write(13, 30).unwrap(); // stripe 3
    write_all(&mut ix, 4..8, 100); // stripe 1, full but young
    assert_eq!(
        stripes_of(&ix.take_destage_batch(1, 99, 100)),
        vec![1],
        "nothing aged yet"
    );
    ix.destage_done(&[4, 5, 6, 7], false);
    let batch = ix.take_destage_batch(2, 130, 100); // age >= max_age counts
    assert_eq!(stripes_of(&batch), vec![5, 3]);
    assert!(batch.iter().all(|d| d.aged && !d.full));
    let batch = ix.take_destage_batch(2, 130, 100);
    assert_eq!(stripes_of(&batch), vec![1]);
    assert!(!batch[0].aged && batch[0].full);
    check(&ix);
}

#[test]
fn runs_split_at_gaps() {
    let mut ix = index(16, 8);
    write_all(&mut ix, [3, 0, 1, 6, 7], 0);
    let batch = ix.take_destage_batch(1, 0, 0);
    let runs: Vec<Vec<u64>> = batch[0]
        .runs()
        .map(|r| r.iter().map(|&(b, _)| b).collect())
        .collect();
    assert_eq!(runs, vec![vec![0, 1], vec![3], vec![6, 7]]);
    assert_eq!(batch[0].block_list(), vec![0, 1, 3, 6, 7]);
}

#[test]
fn destaging_blocks_are_not_taken_twice() {
    let mut ix = index(16, 4);
    write_all(&mut ix, [0, 1], 0);
    assert_eq!(ix.take_destage_batch(8, 0, 0)[0].block_list(), vec![0, 1]);
    assert!(ix.take_destage_batch(8, 0, 0).is_empty());
    ix.write(2, 1).unwrap();
    let batch = ix.take_destage_batch(8, 1, 0);
    assert_eq!(batch[0].block_list(), vec![2]);
    assert_eq!(ix.dirty_stripes().collect::<Vec<_>>(), vec![(0, 3)]);
    check(&ix);
}

#[test]
fn destage_success_makes_blocks_clean_cached_and_evictable() {
    let mut ix = index(4, 4);
    write_all(&mut ix, 0..4, 0);
    assert_eq!(ix.write(9, 0), None);
    let batch = ix.take_destage_batch(1, 0, 0);
    assert!(batch[0].full);
    ix.destage_done(&batch[0].block_list(), true);
    assert_eq!((ix.dirty_bytes(), ix.cached_bytes()), (0, 4 * BLOCK_SIZE));
    assert_eq!(ix.dirty_stripes().count(), 0);
    assert_eq!(ix.oldest_dirty(), None);
    assert!(ix.lookup(2).is_some());
    ix.write(9, 1).unwrap(); // evicts block 0, the LRU
    assert_eq!(ix.peek(0), None);
    ix.destage_done(&[2, 77], true); // not destaging / unknown: ignored
    assert!(!ix.is_dirty(2));
    check(&ix);
}

#[test]
fn rewrite_during_destage_stays_dirty() {
    let mut ix = index(8, 4);
    write_all(&mut ix, [1, 2], 10);
    let blocks = ix.take_destage_batch(1, 10, 0)[0].block_list();
    ix.write(1, 50).unwrap();
    ix.write(1, 60).unwrap();
    ix.destage_done(&blocks, true);
    assert!(ix.is_dirty(1) && !ix.is_dirty(2));
    assert_eq!(ix.dirty_bytes(), BLOCK_SIZE);
    assert_eq!(ix.oldest_dirty(), Some(50), "aged from the first rewrite");
    let again = ix.take_destage_batch(1, 60, 0);
    assert_eq!(again[0].block_list(), vec![1]);
    ix.destage_done(&again[0].block_list(), true);
    assert_eq!(ix.dirty_bytes(), 0);
    check(&ix);
}

#[test]
fn failed_destage_stays_dirty_with_its_age() {
    let mut ix = index(8, 4);
    write_all(&mut ix, [1, 5], 10);
    let batch = ix.take_destage_batch(2, 10, 0);
    ix.write(5, 40).unwrap(); // rewritten and failed: still the old age
    for d in &batch {
        ix.destage_done(&d.block_list(), false);
    }
    assert!(ix.is_dirty(1) && ix.is_dirty(5));
    assert_eq!(ix.dirty_bytes(), 2 * BLOCK_SIZE);
    assert_eq!(ix.oldest_dirty(), Some(10));
    let retry = ix.take_destage_batch(2, 20, 5);
    assert_eq!(stripes_of(&retry), vec![0, 1]);
    assert!(retry.iter().all(|d| d.aged));
    check(&ix);
}

#[test]
fn invalidate_during_destage_holds_the_slot_until_done() {
    let mut ix = index(3, 4);
    let s = ix.write(1, 0).unwrap();
    let blocks = ix.take_destage_batch(1, 0, 0)[0].block_list();
    assert_eq!(ix.invalidate(0..4), vec![(1, s)]);
    assert_eq!((ix.dirty_bytes(), ix.cached_bytes()), (0, 0));
    let s_new = ix.write(1, 5).unwrap();
    assert_ne!(s_new, s, "the destager may still be reading the old slot");
    ix.write(2, 5).unwrap();
    assert_eq!(ix.write(3, 5), None, "one slot is held by the orphan");
    let other = ix.take_destage_batch(4, 5, 0);
    assert_eq!(
        other[0].block_list(),
        vec![2],
        "no second destage of block 1 in flight"
    );
    check(&ix);
    ix.destage_done(&blocks, true);
    assert!(ix.is_dirty(1), "the new write is not the one destaged");
    assert_eq!(ix.write(3, 6), Some(s));
    assert_eq!(ix.take_destage_batch(4, 6, 0)[0].block_list(), vec![1, 3]);
    check(&ix);
}

#[test]
fn watermarks_have_hysteresis() {
    let mut ix = index(100, 4);
    let fill = |ix: &mut CacheIndex, n: u64| {
        while ix.dirty_bytes() < n * BLOCK_SIZE {
            ix.write(ix.dirty_bytes() / BLOCK_SIZE, 0).unwrap();
        }
    };
    fill(&mut ix, 50);
    assert!(!ix.should_destage(50, 20, false), "at high: not above it");
    fill(&mut ix, 51);
    assert!(ix.should_destage(50, 20, false));
    ix.invalidate(30..100);
    assert!(!ix.should_destage(50, 20, false), "30 %: would not start");
    assert!(ix.should_destage(50, 20, true), "30 %: keeps going");
    ix.invalidate(21..100);
    assert!(ix.should_destage(50, 20, true));
    ix.invalidate(20..100);
    assert!(!ix.should_destage(50, 20, true), "stops at low");
    let empty = index(0, 4);
    assert!(!empty.should_destage(0, 0, true) && !empty.should_destage(0, 0, false));
}

#[derive(Debug, Clone)]
enum Op {
    Lookup(u64),
    Fill(u64),
    Write(u64, u64),
    Invalidate(u64, u64),
    Take(usize, u64),
    Done(usize, bool),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        1 => (0..48u64).prop_map(Op::Lookup),
        1 => (0..48u64).prop_map(Op::Fill),
        4 => (0..48u64, 0..5u64).prop_map(|(b, dt)| Op::Write(b, dt)),
        1 => (0..48u64, 0..10u64).prop_map(|(b, n)| Op::Invalidate(b, n)),
        1 => (0..14usize, 0..20u64).prop_map(|(n, age)| Op::Take(n, age)),
        2 => (0..4usize, any::<bool>()).prop_map(|(i, ok)| Op::Done(i, ok)),
    ]
}

#[derive(Debug, Default)]
struct Model {
    /// dirty block -> (destaging, rewritten since destage started)
    dirty: HashMap<u64, (bool, bool)>,
    orphans: HashSet<u64>,
    inflight: Vec<Vec<u64>>,
}

proptest! {
    #[test]
    fn random_ops_match_a_dirty_model(ops in proptest::collection::vec(op(), 1..200)) {
        const SLOTS: usize = 12;
        let mut ix = index(SLOTS as u64, 4);
        let mut m = Model::default();
        let mut now = 0;
        for op in ops {
            let full = m.dirty.len() + m.orphans.len() == SLOTS;
            match op {
                Op::Lookup(b) => {
                    let hit = ix.lookup(b);
                    prop_assert!(hit.is_some() || !m.dirty.contains_key(&b));
                }
                Op::Fill(b) => {
                    let got = ix.insert_clean(b);
                    prop_assert!(got.is_none() || !(full || m.dirty.contains_key(&b)));
                }
                Op::Write(b, dt) => {
                    now += dt;
                    let got = ix.write(b, now);
                    let cached = m.dirty.contains_key(&b);
                    prop_assert_eq!(got.is_none(), !cached && full);
                    if let Some(d) = m.dirty.get_mut(&b) {
                        d.1 |= d.0;
                    } else if got.is_some() {
                        m.dirty.insert(b, (false, false));
                    }
                }
                Op::Invalidate(b, n) => {
                    let got: Vec<u64> = ix.invalidate(b..b + n).iter().map(|&(b, _)| b).collect();
                    let mut want: Vec<u64> = m.dirty.keys().copied().filter(|x| (b..b + n).contains(x)).collect();
                    want.sort();
                    prop_assert_eq!(&got, &want);
                    for x in want {
                        if m.dirty.remove(&x).unwrap().0 {
                            m.orphans.insert(x);
                        }
                    }
                }
                Op::Take(n, age) => {
                    let batch = ix.take_destage_batch(n, now, age);
                    prop_assert!(batch.len() <= n);
                    let mut taken = Vec::new();
                    for d in &batch {
                        for &(b, _) in &d.blocks {
                            prop_assert_eq!(ix.stripe_of(b), d.stripe);
                            let st = m.dirty.get_mut(&b).expect("only dirty blocks are destaged");
                            prop_assert!(!st.0 && !m.orphans.contains(&b));
                            *st = (true, false);
                            taken.push(b);
                        }
                    }
                    if n >= 12 {
                        let left = m.dirty.iter().filter(|(b, d)| !d.0 && !m.orphans.contains(b)).count();
                        prop_assert_eq!(left, 0, "enough stripes requested to take everything");
                    }
                    if !taken.is_empty() {
                        m.inflight.push(taken);
                    }
                }
                Op::Done(i, ok) => {
                    if m.inflight.is_empty() {
                        continue;
                    }
                    let blocks = m.inflight.remove(i % m.inflight.len());
                    ix.destage_done(&blocks, ok);
                    for b in blocks {
                        if m.orphans.remove(&b) {
                            continue;
                        }
                        let d = m.dirty.get_mut(&b).expect("in flight");
                        prop_assert!(d.0);
                        if ok && !d.1 {
                            m.dirty.remove(&b);
                        } else {
                            *d = (false, false);
                        }
                    }
                }
            }
            prop_assert_eq!(ix.dirty_bytes(), m.dirty.len() as u64 * BLOCK_SIZE);
            prop_assert!(ix.cached_bytes() <= ix.capacity_bytes());
            check(&ix);
        }
    }
}
