//! The prefix cache: the decoder's keys and values after a prompt's leading text (the
//! system prompt and instructions that every request repeats), computed once and reused
//! by [`crate::model::TextModel::prefill_cached`].
//!
//! Exact: an entry holds the cache a prefill of its tokens leaves, and causal attention
//! makes the first `l` slots of an entry the state of its first `l` tokens alone, so a
//! lookup reuses the longest leading run any entry shares with the prompt; the tokens
//! after it are run at the positions they have in the whole prompt. Only text is cached
//! (a prefix ends at the first visual placeholder), so an entry is named by its token
//! ids alone. Bounded by bytes of keys and values, the least recently used entry evicted
//! first; an entry larger than the bound is not kept. One cache belongs to one model
//! (its weights made the keys and values): [`crate::model::TextModel`] owns it, and its
//! clones share it.

use std::sync::{Arc, Mutex, PoisonError};

use crate::decoder::DecoderCache;

/// Bytes a model's prefix cache may hold unless set otherwise: the instruction prefix
/// of the rescoring prompt at the 2B model's shape (28 layers, 8 KV heads of 128, f32)
/// takes 115 KiB per token, so about 50 prefixes of 44 tokens.
pub const DEFAULT_PREFIX_CACHE_BYTES: usize = 256 << 20;

/// What a [`PrefixCache`] did since it was made (or [`PrefixCache::clear`]ed).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PrefixStats {
    /// Prefills that looked for a shared prefix.
    pub lookups: u64,
    /// Lookups that reused at least one cached token.
    pub hits: u64,
    /// Prompt tokens taken from the cache instead of run through the decoder.
    pub reused_tokens: u64,
    /// Prefix tokens run through the decoder to make new entries.
    pub computed_tokens: u64,
    /// Entries dropped to stay within the bound (or covered by a longer one).
    pub evictions: u64,
    /// Entries held now.
    pub entries: usize,
    /// Bytes held now.
    pub bytes: usize,
}

#[derive(Debug)]
struct Entry {
    ids: Vec<u32>,
    cache: Arc<DecoderCache>,
    bytes: usize,
    last_used: u64,
}

#[derive(Debug, Default)]
struct Inner {
    max_bytes: usize,
    entries: Vec<Entry>,
    tick: u64,
    stats: PrefixStats,
}

impl Inner {
    fn bytes(&self) -> usize {
        self.entries.iter().map(|e| e.bytes).sum()
    }

    /// Drops least recently used entries until the rest fit in `max_bytes`.
    fn evict(&mut self) {
        while self.bytes() > self.max_bytes {
            let Some(oldest) = self
                .entries
                .iter()
                .enumerate()
                .min_by_key(|(_, e)| e.last_used)
                .map(|(i, _)| i)
            else {
                break;
            };
            self.entries.swap_remove(oldest);
            self.stats.evictions += 1;
        }
    }
}

/// Cached decoder states of shared prompt prefixes (see the module documentation).
/// Entries are few (each is megabytes), so a lookup compares the prompt with each.
#[derive(Debug)]
pub struct PrefixCache {
    inner: Mutex<Inner>,
}

impl Default for PrefixCache {
    /// [`DEFAULT_PREFIX_CACHE_BYTES`].
    fn default() -> Self {
        Self::new(DEFAULT_PREFIX_CACHE_BYTES)
    }
}

/// Length of the common leading run of `a` and `b`.
fn common_len(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

impl PrefixCache {
    /// An empty cache holding at most `max_bytes` of keys and values (0: caching off).
    pub fn new(max_bytes: usize) -> Self {
        Self {
            inner: Mutex::new(Inner {
                max_bytes,
                ..Inner::default()
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The bound in bytes (0: caching off).
    pub fn max_bytes(&self) -> usize {
        self.lock().max_bytes
    }

    /// Sets the bound, evicting down to it at once.
    pub fn set_max_bytes(&self, max_bytes: usize) {
        let mut inner = self.lock();
        inner.max_bytes = max_bytes;
        inner.evict();
    }

    /// Counters and current size.
    pub fn stats(&self) -> PrefixStats {
        let inner = self.lock();
        PrefixStats {
            entries: inner.entries.len(),
            bytes: inner.bytes(),
            ..inner.stats
        }
    }

    /// Drops every entry and zeroes the counters.
    pub fn clear(&self) {
        let mut inner = self.lock();
        inner.entries.clear();
        inner.stats = PrefixStats::default();
    }

    /// The entry sharing the longest leading run with `ids` and that run's length (at
    /// most `ids.len()`), marked used; counts a lookup.
    pub(crate) fn longest(&self, ids: &[u32]) -> Option<(Arc<DecoderCache>, usize)> {
        let mut inner = self.lock();
        inner.stats.lookups += 1;
        inner.tick += 1;
        let tick = inner.tick;
        let best = inner
            .entries
            .iter_mut()
            .map(|e| (common_len(&e.ids, ids), e))
            .filter(|(l, _)| *l > 0)
            .max_by_key(|(l, e)| (*l, e.last_used))?;
        let (l, e) = best;
        e.last_used = tick;
        let cache = Arc::clone(&e.cache);
        inner.stats.hits += 1;
        inner.stats.reused_tokens += l as u64;
        Some((cache, l))
    }

    /// Keeps `cache`, the state after `ids` (`computed` of them run to make it), unless
    /// it alone exceeds the bound; an entry whose ids it extends is dropped (this one
    /// serves every lookup that one did). Returns the entry to use.
    pub(crate) fn insert(
        &self,
        ids: Vec<u32>,
        cache: DecoderCache,
        computed: usize,
    ) -> Arc<DecoderCache> {
        let bytes = cache.bytes();
        let cache = Arc::new(cache);
        let mut inner = self.lock();
        inner.stats.computed_tokens += computed as u64;
        if bytes > inner.max_bytes {
            return cache;
        }
        let before = inner.entries.len();
        inner.entries.retain(|e| !ids.starts_with(&e.ids));
        inner.stats.evictions += (before - inner.entries.len()) as u64;
        inner.tick += 1;
        let last_used = inner.tick;
        inner.entries.push(Entry {
            ids,
            cache: Arc::clone(&cache),
            bytes,
            last_used,
        });
        inner.evict();
        cache
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(len: usize) -> DecoderCache {
        // a cache of one layer holding `len` slots of one 2-wide head: 16 bytes a slot
        use candle_core::{Device, Tensor};
        let mut c = DecoderCache::new(1, len);
        if len > 0 {
            let k = Tensor::zeros((1, 1, len, 2), candle_core::DType::F32, &Device::Cpu).unwrap();
            c.append_for_tests(&k, &k, len).unwrap();
        }
        c
    }

    #[test]
    fn the_longest_shared_run_is_found_and_counted() {
        let cache = PrefixCache::new(1 << 20);
        assert!(cache.longest(&[1, 2, 3]).is_none());
        cache.insert(vec![1, 2, 3, 4], state(4), 4);
        cache.insert(vec![1, 2, 9], state(3), 1);
        let (_, l) = cache.longest(&[1, 2, 3, 7]).unwrap();
        assert_eq!(l, 3);
        let (_, l) = cache.longest(&[1, 2, 9, 9]).unwrap();
        assert_eq!(l, 3);
        assert!(cache.longest(&[5]).is_none());
        let s = cache.stats();
        assert_eq!((s.lookups, s.hits, s.reused_tokens), (4, 2, 6));
        assert_eq!((s.computed_tokens, s.entries, s.bytes), (5, 2, 7 * 16));
    }

    #[test]
    fn least_recently_used_entries_go_first_and_oversized_ones_are_not_kept() {
        let cache = PrefixCache::new(3 * 16 * 4);
        cache.insert(vec![1; 4], state(4), 4);
        cache.insert(vec![2; 4], state(4), 4);
        cache.insert(vec![3; 4], state(4), 4);
        cache.longest(&[1, 1]).unwrap(); // 1 is now newer than 2
        cache.insert(vec![4; 4], state(4), 4);
        assert!(
            cache.longest(&[2]).is_none(),
            "the least recently used went"
        );
        assert!(cache.longest(&[1]).is_some());
        assert_eq!(cache.stats().evictions, 1);
        let kept = cache.insert(vec![5; 20], state(20), 20);
        assert_eq!(kept.len(), 20, "the caller still gets its state");
        assert!(
            cache.longest(&[5]).is_none(),
            "larger than the bound: not kept"
        );
        cache.set_max_bytes(0);
        assert_eq!(cache.stats().entries, 0);
    }

    #[test]
    fn a_longer_entry_replaces_the_one_it_extends() {
        let cache = PrefixCache::new(1 << 20);
        cache.insert(vec![1, 2], state(2), 2);
        cache.insert(vec![1, 2, 3], state(3), 1);
        let s = cache.stats();
        assert_eq!((s.entries, s.evictions), (1, 1));
        cache.clear();
        assert_eq!(cache.stats(), PrefixStats::default());
    }
}
