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

use std::collections::{BTreeMap, BTreeSet, HashSet};

use crate::fasthash::U64Map;
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
    entries: U64Map<Entry>,
    /// Clean blocks only: LRU sequence number -> block (first = least recently used).
    lru: BTreeMap<u64, u64>,
    next_lru: u64,
    free: Vec<Slot>,
    /// Dirty blocks: (dirty_since, block).
    by_age: BTreeSet<(u64, u64)>,
    /// Stripes with dirty blocks only.
    stripes: U64Map<StripeCount>,
    dirty_blocks: u64,
    /// Blocks invalidated while a destage was reading their slot: the slot is held until
    /// `destage_done`, and the block is not destaged again before then.
    orphans: U64Map<Slot>,
    stats: CacheStats,
}

impl CacheIndex {
    /// An empty index with `capacity_bytes / 4096` slots (rounded down). `stripe_bytes` is the
    /// array's data bytes per stripe; it must be a non-zero multiple of 4096.
    pub fn new(capacity_bytes: u64, stripe_bytes: u64) -> Self {
        assert!(
            stripe_bytes > 0 && stripe_bytes.is_multiple_of(BLOCK_SIZE),
            "stripe size {stripe_bytes} is not a non-zero multiple of {BLOCK_SIZE}"
        );
        let slots = capacity_bytes / BLOCK_SIZE;
        let slot_count = Slot::try_from(slots).expect("cache capacity exceeds 2^32 slots");
        CacheIndex {
            slot_count,
            blocks_per_stripe: stripe_bytes / BLOCK_SIZE,
            entries: U64Map::default(),
            lru: BTreeMap::new(),
            next_lru: 0,
            free: (0..slot_count).rev().collect(),
            by_age: BTreeSet::new(),
            stripes: U64Map::default(),
            dirty_blocks: 0,
            orphans: U64Map::default(),
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
#[path = "index_tests.rs"]
mod tests;
