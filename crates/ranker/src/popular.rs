//! The popular source's pool: the most engaged items, kept in order as each event
//! arrives instead of re-ranking every item now and then.
//!
//! The pool holds the [`POOL`] items with the most positive interactions (ties: the
//! lower dense id first), in that order. Between installs an item's count only grows,
//! by one per event, and new items start at zero, so one event moves one item: found
//! by binary search and moved up, or let in at the bottom — O(log pool + moves) under
//! the write lock, where a re-rank is O(items).

use std::cmp::Reverse;

/// Items the pool holds.
pub(crate) const POOL: usize = 4096;

/// An item's rank key: more interactions first, then the lower id.
type Key = (Reverse<u32>, u32);

/// The first [`POOL`] items by decreasing engagement, as their keys (count and id,
/// kept together so that a search reads one contiguous block).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Popular {
    pool: Vec<Key>,
}

fn key(counts: &[u32], item: u32) -> Key {
    (
        Reverse(counts.get(item as usize).copied().unwrap_or(0)),
        item,
    )
}

impl Popular {
    /// The pool ranked from `counts` (each item's positive interactions): O(items).
    pub(crate) fn from_counts(counts: &[u32]) -> Self {
        Self::top_of((0..counts.len() as u32).map(|i| key(counts, i)).collect())
    }

    /// The first [`POOL`] of `keys`, in order.
    fn top_of(mut keys: Vec<Key>) -> Self {
        let n = POOL.min(keys.len());
        if n > 0 && n < keys.len() {
            keys.select_nth_unstable(n - 1);
            keys.truncate(n);
        }
        keys.sort_unstable();
        Popular { pool: keys }
    }

    /// The pool's dense item ids, most engaged first.
    pub(crate) fn ids(&self) -> impl ExactSizeIterator<Item = u32> + '_ {
        self.pool.iter().map(|k| k.1)
    }

    /// The pool after counts changed by growing only: `counts` now, and every item whose
    /// count grew (or that is new) among `changed`. The top of the pool and the changed
    /// items hold the new top (the others fell no lower and rose no higher), so only they
    /// are ranked: O((pool + changed) log).
    pub(crate) fn repair(&self, counts: &[u32], changed: impl Iterator<Item = u32>) -> Self {
        let mut ids: Vec<u32> = self.ids().chain(changed).collect();
        ids.sort_unstable();
        ids.dedup();
        Self::top_of(ids.into_iter().map(|i| key(counts, i)).collect())
    }

    /// Takes one event on `item` into the pool: `counts` are the counts after it, in
    /// which `item`'s grew by at most one since the previous call (or it is a new item
    /// at zero) and no other count changed. O(log pool) plus a move of at most the pool.
    pub(crate) fn bump(&mut self, counts: &[u32], item: u32) {
        let now = key(counts, item);
        if self.pool.binary_search(&now).is_ok() {
            return; // in the pool, count unchanged
        }
        let before = (Reverse(now.0.0.saturating_sub(1)), item);
        let from = match self.pool.binary_search(&before) {
            Ok(p) => p,
            Err(_) if self.pool.len() < POOL => {
                let q = self.pool.partition_point(|k| *k < now);
                self.pool.insert(q, now);
                return;
            }
            Err(_) => match self.pool.last() {
                Some(last) if now < *last => self.pool.len() - 1,
                _ => return,
            },
        };
        // The item moves up from `from` to its place among those ahead of it.
        self.pool[from] = now;
        let to = self.pool[..from].partition_point(|k| *k < now);
        self.pool[to..=from].rotate_right(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Seeded draws below `n` (the testkit's ChaCha8 stream).
    fn draws(seed: u64) -> impl FnMut(u64) -> u64 {
        let mut rng = mosaic_testkit::Rng::new(seed);
        move |n| rng.below(n as usize) as u64
    }

    /// Events on random items (a few hot ones, new items now and then) keep the pool
    /// equal to a re-rank of every item, across pools smaller and larger than [`POOL`].
    #[test]
    fn bumps_match_a_full_rerank() {
        let mut next = draws(0x2545_f491_4f6c_dd1d);
        for start in [10usize, POOL - 3, POOL + 500] {
            let mut counts: Vec<u32> = (0..start).map(|_| next(5) as u32).collect();
            let mut pool = Popular::from_counts(&counts);
            for step in 0..20_000 {
                let item = match next(100) {
                    0 => {
                        counts.push(0);
                        counts.len() as u32 - 1
                    }
                    1..=40 => next(8) as u32,
                    _ => next(counts.len() as u64) as u32,
                };
                // Some events leave the count as it was (a hide, a repeat).
                if next(4) != 0 {
                    counts[item as usize] += 1;
                }
                pool.bump(&counts, item);
                if step % 997 == 0 || step == 19_999 {
                    assert_eq!(
                        pool,
                        Popular::from_counts(&counts),
                        "start {start}, step {step}"
                    );
                }
            }
            assert_eq!(pool.ids().len(), POOL.min(counts.len()));
        }
    }

    /// A pool ranked earlier, repaired with the items whose counts grew since (by any
    /// amount) and the new items, equals a full re-rank.
    #[test]
    fn a_repair_matches_a_full_rerank() {
        let mut next = draws(0x9e37_79b9_7f4a_7c15);
        for start in [10usize, POOL - 3, 3 * POOL] {
            let mut counts: Vec<u32> = (0..start).map(|_| next(6) as u32).collect();
            let pool = Popular::from_counts(&counts);
            let mut changed = Vec::new();
            for _ in 0..300 {
                let item = next(counts.len() as u64) as usize;
                counts[item] += 1 + next(3) as u32;
                changed.push(item as u32);
            }
            let before = counts.len() as u32;
            counts.extend((0..20).map(|_| next(4) as u32));
            let added = before..counts.len() as u32;
            let repaired = pool.repair(&counts, changed.into_iter().chain(added));
            assert_eq!(repaired, Popular::from_counts(&counts), "start {start}");
        }
    }
}
