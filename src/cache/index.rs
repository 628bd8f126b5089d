//! Bookkeeping for the write-back cache: which 4 KiB array blocks are cached, in which slot,
//! whether they are dirty, since when, and which dirty stripes the destager should write next.
//!
//! Why it looks like this:
//! - The index owns no memory. The caller owns a fixed pool of `capacity / 4096` buffers and the
//!   index hands out slot numbers into it, so the cache never allocates on the I/O path.
//! - Only clean blocks are ever evicted (LRU). Dirty data leaves the cache only through the
//!   destager ([`CacheIndex::take_destage_batch`] then [`CacheIndex::destage_done`]) or an
//!   explicit [`CacheIndex::invalidate`], which hands the dropped dirty blocks back to the caller.
//! - Dirty blocks are counted per stripe so the destager can prefer full stripes (a full-stripe
//!   write needs no read-modify-write), like md's raid5-cache write-back mode; anything dirty for
//!   longer than `max_age` goes first, like dm-writecache's `max_age`.
//! - A block stays dirty while it is being destaged; a per-block generation tells
//!   `destage_done` whether it was written again meanwhile, in which case it stays dirty.
//! - No clocks: time is whatever `u64` ticks the caller passes in.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::ops::Range;

/// Cache granularity in bytes; a block number is an array byte offset divided by this.
pub const BLOCK_SIZE: u64 = 4096;

/// Index into the caller's pool of `BLOCK_SIZE` buffers.
pub type Slot = u32;

/// Counters for `raidctl status` and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// `lookup` found the block.
    pub read_hits: u64,
    /// `lookup` did not find the block.
    pub read_misses: u64,
    /// `write` found the block already cached (clean or dirty).
    pub write_hits: u64,
    /// Every `write` call, accepted or not.
    pub writes: u64,
    /// `write` returned `None`: every slot held dirty data.
    pub writes_rejected: u64,
    /// Clean blocks dropped to make room.
    pub evictions: u64,
}

impl CacheStats {
    /// Read hits / reads, or `None` before the first read.
    pub fn read_hit_ratio(&self) -> Option<f64> {
        let reads = self.read_hits + self.read_misses;
        (reads > 0).then(|| self.read_hits as f64 / reads as f64)
    }
}

/// One stripe chosen by [`CacheIndex::take_destage_batch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DestageStripe {
    pub stripe: u64,
    /// `(block, slot)` sorted by block; all are marked destaging.
    pub blocks: Vec<(u64, Slot)>,
    /// Every block of the stripe is in `blocks`: write it without read-modify-write.
    pub full: bool,
    /// Chosen because some of its dirty data reached `max_age`.
    pub aged: bool,
}

impl DestageStripe {
    /// Runs of consecutive blocks, each one member write (or one part of one).
    pub fn runs(&self) -> impl Iterator<Item = &[(u64, Slot)]> + '_ {
        self.blocks.chunk_by(|a, b| a.0 + 1 == b.0)
    }

    /// The block numbers, for [`CacheIndex::destage_done`].
    pub fn block_list(&self) -> Vec<u64> {
        self.blocks.iter().map(|&(b, _)| b).collect()
    }
}

#[derive(Debug, Clone)]
struct Entry {
    slot: Slot,
    dirty: bool,
    destaging: bool,
    /// Bumped by every write.
    generation: u32,
    /// `generation` when the block was taken for destage.
    destage_generation: u32,
    /// Tick of the oldest write not yet on the members (valid while dirty).
    dirty_since: u64,
    /// Tick of the first write after destage started (valid while destaging and rewritten).
    redirty_since: u64,
    /// Key in `lru` (valid while clean).
    lru: u64,
}

#[derive(Debug, Clone, Copy, Default)]
struct StripeCount {
    dirty: u32,
    destaging: u32,
}

/// See the module documentation.
#[derive(Debug)]
pub struct CacheIndex {
    slot_count: u32,
    blocks_per_stripe: u64,
    entries: HashMap<u64, Entry>,
    /// Clean blocks only: LRU sequence number -> block (first = least recently used).
    lru: BTreeMap<u64, u64>,
    next_lru: u64,
    free: Vec<Slot>,
    /// Dirty blocks: (dirty_since, block).
    by_age: BTreeSet<(u64, u64)>,
    /// Stripes with dirty blocks only.
    stripes: HashMap<u64, StripeCount>,
    dirty_blocks: u64,
    /// Blocks invalidated while a destage was reading their slot: the slot is held until
    /// `destage_done`, and the block is not destaged again before then.
    orphans: HashMap<u64, Slot>,
    stats: CacheStats,
}

impl CacheIndex {
    /// An empty index with `capacity_bytes / 4096` slots (rounded down). `stripe_bytes` is the
    /// array's data bytes per stripe; it must be a non-zero multiple of 4096.
    pub fn new(capacity_bytes: u64, stripe_bytes: u64) -> Self {
        assert!(
            stripe_bytes > 0 && stripe_bytes % BLOCK_SIZE == 0,
            "stripe size {stripe_bytes} is not a non-zero multiple of {BLOCK_SIZE}"
        );
        let slots = capacity_bytes / BLOCK_SIZE;
        let slot_count = Slot::try_from(slots).expect("cache capacity exceeds 2^32 slots");
        CacheIndex {
            slot_count,
            blocks_per_stripe: stripe_bytes / BLOCK_SIZE,
            entries: HashMap::new(),
            lru: BTreeMap::new(),
            next_lru: 0,
            free: (0..slot_count).rev().collect(),
            by_age: BTreeSet::new(),
            stripes: HashMap::new(),
            dirty_blocks: 0,
            orphans: HashMap::new(),
            stats: CacheStats::default(),
        }
    }

    pub fn capacity_bytes(&self) -> u64 {
        u64::from(self.slot_count) * BLOCK_SIZE
    }
    pub fn slot_count(&self) -> u32 {
        self.slot_count
    }
    pub fn cached_bytes(&self) -> u64 {
        self.entries.len() as u64 * BLOCK_SIZE
    }
    pub fn dirty_bytes(&self) -> u64 {
        self.dirty_blocks * BLOCK_SIZE
    }
    pub fn stats(&self) -> CacheStats {
        self.stats
    }
    pub fn blocks_per_stripe(&self) -> u64 {
        self.blocks_per_stripe
    }
    pub fn stripe_of(&self, block: u64) -> u64 {
        block / self.blocks_per_stripe
    }
    /// Tick of the oldest dirty data, for the destager's timer.
    pub fn oldest_dirty(&self) -> Option<u64> {
        self.by_age.first().map(|&(t, _)| t)
    }
    /// Slot of a cached block without counting a read or touching the LRU.
    pub fn peek(&self, block: u64) -> Option<Slot> {
        self.entries.get(&block).map(|e| e.slot)
    }
    pub fn is_dirty(&self, block: u64) -> bool {
        self.entries.get(&block).is_some_and(|e| e.dirty)
    }

    /// Stripes holding dirty blocks, with their dirty block counts (including blocks being
    /// destaged), in no particular order.
    pub fn dirty_stripes(&self) -> impl Iterator<Item = (u64, u32)> + '_ {
        self.stripes.iter().map(|(&s, c)| (s, c.dirty))
    }

    /// A read of `block`: its slot on a hit (which also makes a clean block most recently used).
    pub fn lookup(&mut self, block: u64) -> Option<Slot> {
        let Some(e) = self.entries.get_mut(&block) else {
            self.stats.read_misses += 1;
            return None;
        };
        self.stats.read_hits += 1;
        if !e.dirty {
            self.lru.remove(&e.lru);
            e.lru = self.next_lru;
            self.lru.insert(self.next_lru, block);
            self.next_lru += 1;
        }
        Some(e.slot)
    }

    /// Caches `block` clean after a read from the members; the caller then copies the data into
    /// the slot. Evicts the least recently used clean block when full. `None` means "do not
    /// fill": every slot is dirty, or the block is already cached (a write may have raced the
    /// member read, so the member data is stale).
    pub fn insert_clean(&mut self, block: u64) -> Option<Slot> {
        if self.entries.contains_key(&block) {
            return None;
        }
        let slot = self.allocate()?;
        let lru = self.next_lru;
        self.next_lru += 1;
        self.lru.insert(lru, block);
        self.entries.insert(block, Entry::new(slot, lru));
        Some(slot)
    }

    /// A write-back write of `block` at tick `now`: the slot to copy the data into, now dirty.
    /// `None` when every slot holds dirty data: write through or wait for the destager.
    pub fn write(&mut self, block: u64, now: u64) -> Option<Slot> {
        self.stats.writes += 1;
        if let Some(e) = self.entries.get_mut(&block) {
            self.stats.write_hits += 1;
            if !e.dirty {
                self.lru.remove(&e.lru);
                e.dirty = true;
                e.dirty_since = now;
                self.by_age.insert((now, block));
                self.stripes
                    .entry(block / self.blocks_per_stripe)
                    .or_default()
                    .dirty += 1;
                self.dirty_blocks += 1;
            } else if e.destaging && e.generation == e.destage_generation {
                e.redirty_since = now;
            }
            e.generation = e.generation.wrapping_add(1);
            return Some(e.slot);
        }
        let Some(slot) = self.allocate() else {
            self.stats.writes_rejected += 1;
            return None;
        };
        let mut e = Entry::new(slot, 0);
        e.dirty = true;
        e.dirty_since = now;
        self.entries.insert(block, e);
        self.by_age.insert((now, block));
        self.stripes.entry(self.stripe_of(block)).or_default().dirty += 1;
        self.dirty_blocks += 1;
        Some(slot)
    }

    /// Drops every cached block in `blocks` (TRIM, or a write that bypasses the cache) and
    /// returns the dirty ones as sorted `(block, slot)`. Their data stays readable until the next
    /// call that allocates a slot (or, for a block being destaged, until its `destage_done`).
    pub fn invalidate(&mut self, blocks: Range<u64>) -> Vec<(u64, Slot)> {
        let span = blocks.end.saturating_sub(blocks.start);
        let mut hit: Vec<u64> = if span <= self.entries.len() as u64 {
            blocks.filter(|b| self.entries.contains_key(b)).collect()
        } else {
            self.entries
                .keys()
                .copied()
                .filter(|b| blocks.contains(b))
                .collect()
        };
        hit.sort_unstable();
        let mut dropped = Vec::new();
        for block in hit {
            let e = self.entries.remove(&block).expect("listed above");
            if e.dirty {
                self.by_age.remove(&(e.dirty_since, block));
                self.uncount_dirty(block, e.destaging);
                dropped.push((block, e.slot));
            } else {
                self.lru.remove(&e.lru);
            }
            if e.destaging {
                let old = self.orphans.insert(block, e.slot);
                debug_assert!(old.is_none(), "block {block} orphaned twice");
            } else {
                self.free.push(e.slot);
            }
        }
        dropped
    }

    /// Picks up to `max_stripes` stripes to write out and marks their dirty blocks destaging:
    /// first stripes with dirty data at least `max_age` ticks old (oldest first), then the
    /// fullest stripes (most destageable dirty blocks; ties by lower stripe). Blocks already
    /// being destaged are not picked again.
    pub fn take_destage_batch(
        &mut self,
        max_stripes: usize,
        now: u64,
        max_age: u64,
    ) -> Vec<DestageStripe> {
        let mut chosen: Vec<(u64, bool)> = Vec::new();
        let mut seen = HashSet::new();
        for &(since, block) in &self.by_age {
            if chosen.len() >= max_stripes || now.saturating_sub(since) < max_age {
                break;
            }
            if self.destageable(block) && seen.insert(self.stripe_of(block)) {
                chosen.push((self.stripe_of(block), true));
            }
        }
        let want = max_stripes - chosen.len();
        if want > 0 {
            let mut fullest: Vec<(u32, u64)> = self
                .stripes
                .iter()
                .filter(|(s, c)| c.dirty > c.destaging && !seen.contains(*s))
                .map(|(&s, c)| (c.dirty - c.destaging, s))
                .collect();
            let order = |a: &(u32, u64), b: &(u32, u64)| b.0.cmp(&a.0).then(a.1.cmp(&b.1));
            if fullest.len() > want {
                fullest.select_nth_unstable_by(want - 1, order);
                fullest.truncate(want);
            }
            fullest.sort_unstable_by(order);
            chosen.extend(fullest.into_iter().map(|(_, s)| (s, false)));
        }
        let mut batch = Vec::with_capacity(chosen.len());
        for (stripe, aged) in chosen {
            let first = stripe * self.blocks_per_stripe;
            let mut blocks = Vec::new();
            for block in first..first + self.blocks_per_stripe {
                if !self.destageable(block) {
                    continue;
                }
                let e = self.entries.get_mut(&block).expect("destageable");
                e.destaging = true;
                e.destage_generation = e.generation;
                blocks.push((block, e.slot));
            }
            if blocks.is_empty() {
                continue; // only orphan-blocked blocks left in this stripe
            }
            self.stripes
                .get_mut(&stripe)
                .expect("dirty stripe")
                .destaging += blocks.len() as u32;
            let full = blocks.len() as u64 == self.blocks_per_stripe;
            batch.push(DestageStripe {
                stripe,
                blocks,
                full,
                aged,
            });
        }
        batch
    }

    /// Ends the destage of `blocks`. On success a block not written since it was taken becomes
    /// clean (and stays cached); a block written meanwhile stays dirty, aged from that write. On
    /// failure every block stays dirty with its original age. Unknown blocks are ignored.
    pub fn destage_done(&mut self, blocks: &[u64], success: bool) {
        for &block in blocks {
            if let Some(slot) = self.orphans.remove(&block) {
                self.free.push(slot);
                continue;
            }
            let Some(e) = self.entries.get_mut(&block) else {
                continue;
            };
            if !e.destaging {
                continue;
            }
            e.destaging = false;
            let stripe = block / self.blocks_per_stripe;
            self.stripes
                .get_mut(&stripe)
                .expect("dirty stripe")
                .destaging -= 1;
            if !success {
                continue;
            }
            self.by_age.remove(&(e.dirty_since, block));
            if e.generation != e.destage_generation {
                e.dirty_since = e.redirty_since;
                self.by_age.insert((e.dirty_since, block));
                continue;
            }
            e.dirty = false;
            e.lru = self.next_lru;
            self.lru.insert(self.next_lru, block);
            self.next_lru += 1;
            self.uncount_dirty(block, false);
        }
    }

    /// Watermark hysteresis: start destaging when dirty data exceeds `high_pct` percent of the
    /// capacity; once started (`destaging_now`), keep going while it exceeds `low_pct`.
    pub fn should_destage(&self, high_pct: u32, low_pct: u32, destaging_now: bool) -> bool {
        let pct = if destaging_now { low_pct } else { high_pct };
        u128::from(self.dirty_blocks) * 100 > u128::from(pct) * u128::from(self.slot_count)
    }

    fn destageable(&self, block: u64) -> bool {
        self.entries
            .get(&block)
            .is_some_and(|e| e.dirty && !e.destaging)
            && !self.orphans.contains_key(&block)
    }

    fn allocate(&mut self) -> Option<Slot> {
        if let Some(slot) = self.free.pop() {
            return Some(slot);
        }
        let (_, victim) = self.lru.pop_first()?;
        let e = self.entries.remove(&victim).expect("lru entry is cached");
        debug_assert!(!e.dirty, "evicting dirty block {victim}");
        self.stats.evictions += 1;
        Some(e.slot)
    }

    fn uncount_dirty(&mut self, block: u64, destaging: bool) {
        let stripe = self.stripe_of(block);
        let c = self.stripes.get_mut(&stripe).expect("dirty stripe");
        c.dirty -= 1;
        if destaging {
            c.destaging -= 1;
        }
        if c.dirty == 0 {
            debug_assert_eq!(c.destaging, 0);
            self.stripes.remove(&stripe);
        }
        self.dirty_blocks -= 1;
    }
}

impl Entry {
    fn new(slot: Slot, lru: u64) -> Self {
        Entry {
            slot,
            dirty: false,
            destaging: false,
            generation: 0,
            destage_generation: 0,
            dirty_since: 0,
            redirty_since: 0,
            lru,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

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
        for b in [7, 5, 4, 6, 1, 0, 8, 10, 9, 12, 17, 16] {
            ix.write(b, 0).unwrap();
        }
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
        for b in 4..8 {
            ix.write(b, 100).unwrap(); // stripe 1, full but young
        }
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
        for b in [3, 0, 1, 6, 7] {
            ix.write(b, 0).unwrap();
        }
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
        ix.write(0, 0).unwrap();
        ix.write(1, 0).unwrap();
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
        for b in 0..4 {
            ix.write(b, 0).unwrap();
        }
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
        ix.write(1, 10).unwrap();
        ix.write(2, 10).unwrap();
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
        ix.write(1, 10).unwrap();
        ix.write(5, 10).unwrap();
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
}
