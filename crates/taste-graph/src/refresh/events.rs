//! The refresher's recorded events, held in shared blocks so that a plan, a catch-up or
//! an install costs O(blocks) under the service's lock instead of O(events).
//!
//! Events are appended to an open tail; a full tail is sealed into an immutable block
//! (`Arc<[Interaction]>`). A copy ([`Clone`], [`SharedEvents::suffix`]) shares the
//! sealed blocks and copies only the tail; dropping a prefix
//! ([`SharedEvents::replace_prefix`]) moves no more than the tail either.

use std::sync::Arc;

use crate::interactions::Interaction;

/// Events per sealed block: 4096 × 24 bytes = 96 KiB, the most a copy moves (below
/// glibc's default mmap threshold, so a copy comes from the heap, not a fresh mapping).
const BLOCK: usize = 4096;

/// A sequence of events: ranges of shared blocks, then an open tail.
#[derive(Debug, Clone)]
pub(crate) struct SharedEvents {
    runs: Vec<Run>,
    tail: Vec<Interaction>,
    len: usize,
    block: usize,
}

/// A range of a sealed block.
#[derive(Debug, Clone)]
struct Run {
    block: Arc<[Interaction]>,
    start: usize,
    end: usize,
}

impl Run {
    fn events(&self) -> &[Interaction] {
        &self.block[self.start..self.end]
    }
}

impl Default for SharedEvents {
    fn default() -> Self {
        SharedEvents::with_block(BLOCK)
    }
}

impl From<Vec<Interaction>> for SharedEvents {
    fn from(events: Vec<Interaction>) -> Self {
        let mut r = SharedEvents::default();
        events.into_iter().for_each(|e| r.push(e));
        r
    }
}

impl SharedEvents {
    /// An empty record sealing its tail every `block` events (at least one).
    fn with_block(block: usize) -> Self {
        SharedEvents {
            runs: Vec::new(),
            tail: Vec::new(),
            len: 0,
            block: block.max(1),
        }
    }

    /// Events recorded.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Appends `event`, sealing the tail when it is full.
    pub(crate) fn push(&mut self, event: Interaction) {
        self.tail.push(event);
        self.len += 1;
        if self.tail.len() >= self.block {
            let block: Arc<[Interaction]> = Arc::from(std::mem::take(&mut self.tail));
            self.runs.push(Run {
                end: block.len(),
                block,
                start: 0,
            });
        }
    }

    /// The events in order, as consecutive slices.
    pub(crate) fn slices(&self) -> impl Iterator<Item = &[Interaction]> {
        self.runs
            .iter()
            .map(Run::events)
            .chain(std::iter::once(self.tail.as_slice()))
            .filter(|s| !s.is_empty())
    }

    /// The events in order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &Interaction> {
        self.slices().flatten()
    }

    /// The events from index `from` on, in order (O(blocks) to reach it).
    pub(crate) fn iter_from(&self, from: usize) -> impl Iterator<Item = &Interaction> {
        let mut skip = from;
        self.slices()
            .filter_map(move |s| {
                if skip >= s.len() {
                    skip -= s.len();
                    None
                } else {
                    let rest = &s[skip..];
                    skip = 0;
                    Some(rest)
                }
            })
            .flatten()
    }

    /// The events from index `from` on (none past the end), sharing the sealed blocks:
    /// O(blocks + tail).
    pub(crate) fn suffix(&self, from: usize) -> SharedEvents {
        let mut out = SharedEvents::with_block(self.block);
        let mut skip = from.min(self.len);
        for run in &self.runs {
            let n = run.end - run.start;
            if skip >= n {
                skip -= n;
                continue;
            }
            out.runs.push(Run {
                start: run.start + skip,
                ..run.clone()
            });
            skip = 0;
        }
        out.tail = self.tail[skip.min(self.tail.len())..].to_vec();
        out.len = self.len - from.min(self.len);
        out
    }

    /// Replaces the first `cut` events (all, past the end) with `head`: O(blocks), no
    /// event is moved except those of the tail before `cut`.
    pub(crate) fn replace_prefix(&mut self, cut: usize, head: Arc<[Interaction]>) {
        let mut rest = self.suffix(cut);
        if !head.is_empty() {
            rest.runs.insert(
                0,
                Run {
                    end: head.len(),
                    block: head,
                    start: 0,
                },
            );
            rest.len += rest.runs[0].end;
        }
        *self = rest;
    }

    /// The events as one vector (a copy).
    pub(crate) fn to_vec(&self) -> Vec<Interaction> {
        let mut out = Vec::with_capacity(self.len);
        self.slices().for_each(|s| out.extend_from_slice(s));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{ItemId, UserId};
    use crate::interactions::InteractionKind;

    fn ev(k: usize) -> Interaction {
        Interaction {
            user: UserId(k as u32),
            item: ItemId(2 * k as u32),
            kind: InteractionKind::Click,
            weight: 1.0,
            timestamp: k as u64,
        }
    }

    /// Random pushes, suffixes and prefix replacements agree with a plain vector, for
    /// block sizes from one event up.
    #[test]
    fn matches_a_vector() {
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = |n: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % n.max(1) as u64) as usize
        };
        for block in [1, 2, 3, 7, 64] {
            let mut r = SharedEvents::with_block(block);
            let mut v: Vec<Interaction> = Vec::new();
            let mut k = 0;
            for _ in 0..400 {
                match next(10) {
                    0 => {
                        let from = next(v.len() + 3);
                        let s = r.suffix(from);
                        assert_eq!(s.to_vec(), v[from.min(v.len())..], "block {block}");
                        assert_eq!(s.len(), v.len() - from.min(v.len()));
                    }
                    1 => {
                        let cut = next(v.len() + 2);
                        let head: Vec<Interaction> = (0..next(4)).map(|j| ev(1000 + j)).collect();
                        r.replace_prefix(cut, head.clone().into());
                        v.splice(..cut.min(v.len()), head);
                    }
                    _ => {
                        r.push(ev(k));
                        v.push(ev(k));
                        k += 1;
                    }
                }
                assert_eq!(r.len(), v.len(), "block {block}");
                assert_eq!(r.iter().copied().collect::<Vec<_>>(), v, "block {block}");
                assert!(
                    r.tail.len() < block,
                    "block {block}: the tail is sealed when full"
                );
                assert!(
                    r.iter_from(k / 2)
                        .copied()
                        .eq(v.iter().skip(k / 2).copied())
                );
            }
        }
    }

    /// A copy shares the sealed blocks: it moves at most the tail.
    #[test]
    fn copies_share_sealed_blocks() {
        let mut r = SharedEvents::with_block(4);
        (0..10).for_each(|k| r.push(ev(k)));
        let c = r.clone();
        let s = r.suffix(5);
        assert!(Arc::ptr_eq(&r.runs[0].block, &c.runs[0].block));
        assert!(Arc::ptr_eq(&r.runs[1].block, &s.runs[0].block));
        assert_eq!(s.runs[0].start, 1);
        assert_eq!(SharedEvents::from(r.to_vec()).to_vec(), r.to_vec());
    }
}
