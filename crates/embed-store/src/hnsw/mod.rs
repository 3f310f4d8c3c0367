//! HNSW (Malkov & Yashunin) approximate nearest-neighbour index over one snapshot.
//!
//! Laid out like hnswlib: level 0 is one contiguous block of fixed-stride node records
//! `[count, n_1 .. n_m0, vector]` (a node's links and its f32 vector side by side, so
//! expanding a node whose distance was computed reads memory that is already cached),
//! upper-level links in a second block; neighbour selection by the diversity heuristic; searches reuse a
//! scratch (visited marks with a generation stamp, two heaps) so the search loop does
//! not allocate. Filters (excluded ids, attribute predicates, tombstones) are applied
//! during the graph search: filtered nodes are traversed but never returned.
//!
//! This module holds the index's layout and the memory access all parts share; `build`
//! makes and updates the graph, `search` walks it, `format` saves and loads it in one
//! file, `quant` quantises its vectors to int8.

use rayon::prelude::*;
use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::ops::{Deref, DerefMut};

use bytemuck::Pod;
use serde::{Deserialize, Serialize};

use crate::directory::{Directory, FileBytes};
use crate::error::{Error, Result};
use crate::search::{Filter, Hit, dot};
use crate::store::Snapshot;
use crate::types::{ItemId, Metric};

mod build;
mod format;
mod quant;
mod search;

/// Build settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HnswParams {
    /// Links per node on upper levels (level 0 gets twice as many).
    pub m: usize,
    /// Candidate list size while inserting.
    pub ef_construction: usize,
    /// Seed of the level draws.
    pub seed: u64,
}

impl Default for HnswParams {
    fn default() -> Self {
        Self {
            m: 16,
            ef_construction: 200,
            seed: 42,
        }
    }
}

/// Scale `v` to unit length (left as is when zero): cosine works on normalised vectors.
fn normalize(v: &mut [f32]) {
    let norm = dot(v, v).sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
}

/// Distance (smaller is nearer) between f32 vectors: −dot for inner product and cosine
/// (on normalised vectors), squared Euclidean for L2.
#[inline]
fn f32_distance(metric: Metric, q: &[f32], x: &[f32]) -> f32 {
    match metric {
        Metric::InnerProduct | Metric::Cosine => -dot(q, x),
        Metric::L2 => crate::kernels::l2_squared(q, x),
    }
}

#[derive(Clone, Copy, PartialEq)]
struct Near(f32, u32);
impl Eq for Near {}
impl PartialOrd for Near {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Near {
    /// Max-heap on distance (the farthest on top).
    fn cmp(&self, o: &Self) -> Ordering {
        self.0.total_cmp(&o.0).then(self.1.cmp(&o.1))
    }
}

#[derive(Clone, Copy, PartialEq)]
struct Far(f32, u32);
impl Eq for Far {}
impl PartialOrd for Far {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Far {
    /// Min-heap on distance (the nearest on top).
    fn cmp(&self, o: &Self) -> Ordering {
        o.0.total_cmp(&self.0).then(o.1.cmp(&self.1))
    }
}

/// How many neighbours ahead of the distance being computed the walk prefetches (all
/// of each vector's cache lines). Paired on 1M x 64 at ef 34 and 66: 8 ahead was 3-14%
/// faster than 4, 12 another 1-6%, 16 about the same as 12.
const PREFETCH_AHEAD: usize = 12;

/// Which distance a walk computes ([`Hnsw::dist_as`]): whichever the index holds,
/// checked per call (the portable walks) ...
const ANY: u8 = 0;
/// ... or, fixed at compile time for the AVX2 walks, f32 vectors ...
const F32: u8 = 1;
/// ... or int8 codes.
const INT8: u8 = 2;

/// The segment names of `snap`, in order.
fn segment_names(snap: &Snapshot) -> Vec<String> {
    snap.segments()
        .iter()
        .map(|s| s.segment.name().to_string())
        .collect()
}

/// Reusable search state: no allocation once warmed up.
pub struct Scratch {
    /// Visited marks: 16-bit tags (half the cache footprint of 32-bit ones; cleared
    /// once every 65,535 searches).
    marks: Vec<u16>,
    stamp: u16,
    candidates: BinaryHeap<Far>,
    results: BinaryHeap<Near>,
    /// The expanded node's neighbours not visited before.
    fresh: Vec<u32>,
    /// Exact-rerank buffers of an int8 index: one stored vector, and (distance, node).
    row: Vec<f32>,
    reranked: Vec<(f32, u32)>,
}

impl Scratch {
    /// Scratch for an index of `n` nodes.
    pub fn new(n: usize) -> Self {
        Self {
            marks: vec![0; n],
            stamp: 0,
            candidates: BinaryHeap::new(),
            results: BinaryHeap::new(),
            fresh: Vec::new(),
            row: Vec::new(),
            reranked: Vec::new(),
        }
    }

    fn reset(&mut self, n: usize) {
        if self.marks.len() < n {
            self.marks.resize(n, 0);
        }
        self.stamp = self.stamp.wrapping_add(1);
        if self.stamp == 0 {
            self.marks.fill(0);
            self.stamp = 1;
        }
        self.candidates.clear();
        self.results.clear();
    }

    /// Mark `i` visited; returns whether it was new.
    #[inline(always)]
    fn visit(&mut self, i: u32) -> bool {
        let m = &mut self.marks[i as usize];
        if *m == self.stamp {
            false
        } else {
            *m = self.stamp;
            true
        }
    }
}

/// A block of hot data: owned while building, or a zero-copy view of a mapped index
/// file. Writing to a mapped block first copies it (never needed by searches).
enum Block<T: Pod> {
    Owned(Vec<T>),
    Mapped {
        /// Keeps the file's bytes alive (they never move while held).
        _bytes: FileBytes,
        /// The first value, inside `_bytes`, aligned for `T` (checked when made).
        ptr: *const T,
        len: usize,
    },
}

// SAFETY: a mapped block is a read-only view of immutable bytes that it keeps alive
// (`FileBytes` is `Send + Sync`); `T: Pod` values may be read from any thread.
unsafe impl<T: Pod + Sync> Send for Block<T> {}
// SAFETY: as above: shared access never writes through `ptr`.
unsafe impl<T: Pod + Sync> Sync for Block<T> {}

impl<T: Pod> Block<T> {
    /// A view of `len` values at byte `start` of `bytes`, checked for bounds and alignment.
    fn mapped(bytes: &FileBytes, start: usize, len: usize, what: &str) -> Result<Self> {
        let size = len
            .checked_mul(std::mem::size_of::<T>())
            .and_then(|b| b.checked_add(start))
            .filter(|&end| end <= bytes.as_slice().len())
            .ok_or_else(|| {
                Error::corrupt("hnsw index", format!("section {what} is out of bounds"))
            })?;
        let Ok(view) = bytemuck::try_cast_slice::<u8, T>(&bytes.as_slice()[start..size]) else {
            return Err(Error::corrupt(
                "hnsw index",
                format!("section {what} is misaligned"),
            ));
        };
        Ok(Block::Mapped {
            ptr: view.as_ptr(),
            _bytes: bytes.clone(),
            len,
        })
    }
}

impl<T: Pod> From<Vec<T>> for Block<T> {
    fn from(v: Vec<T>) -> Self {
        Block::Owned(v)
    }
}

impl<T: Pod> Deref for Block<T> {
    type Target = [T];
    #[inline(always)]
    fn deref(&self) -> &[T] {
        match self {
            Block::Owned(v) => v,
            // SAFETY: `ptr` points at `len` aligned, initialised `T`s inside the bytes
            // this block holds (bounds and alignment checked in `Block::mapped`), which
            // stay in place and unmodified for as long as the block lives.
            Block::Mapped { ptr, len, .. } => unsafe { std::slice::from_raw_parts(*ptr, *len) },
        }
    }
}

impl<T: Pod> DerefMut for Block<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        if let Block::Mapped { .. } = self {
            *self = Block::Owned(self.to_vec());
        }
        match self {
            Block::Owned(v) => v,
            Block::Mapped { .. } => &mut [],
        }
    }
}

/// Value of `format` in an index file's header.
pub const INDEX_FORMAT: &str = "mosaic.hnsw";
/// An HNSW graph over the live items of one snapshot.
pub struct Hnsw {
    dim: usize,
    metric: Metric,
    m: usize,
    m0: usize,
    /// int8 codes and per-node scales (`x ≈ scale * code`), after [`Hnsw::quantize_int8`].
    int8: Option<(Block<i8>, Block<f32>)>,
    ids: Block<u64>,
    /// Where each node's item lives in the snapshot: [segment, row].
    rows: Block<[u32; 2]>,
    levels: Block<u8>,
    /// Level-0 node records of `stride` values: `[count, m0 links, vector as f32 bits]`
    /// (no vector once the index is quantised).
    level0: Block<u32>,
    stride: usize,
    upper: Block<u32>,
    upper_start: Block<u32>,
    entry: u32,
    max_level: usize,
    /// The snapshot the graph was built from (generation, content version).
    built_from: (String, u64),
    /// That snapshot's segment names, in order (`rows` index into them).
    segments: Vec<String>,
}

impl std::fmt::Debug for Hnsw {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hnsw")
            .field("nodes", &self.ids.len())
            .field("dim", &self.dim)
            .field("m", &self.m)
            .field("max_level", &self.max_level)
            .finish()
    }
}

impl Hnsw {
    /// Nodes in the graph.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether the graph is empty.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Bytes of the graph links (vectors excluded).
    pub fn link_bytes(&self) -> usize {
        4 * (self.len() * (1 + self.m0) + self.upper.len() + self.upper_start.len())
            + self.levels.len()
    }

    /// Node `i`'s f32 vector (empty once the index is quantised).
    #[inline(always)]
    fn vector(&self, i: u32) -> &[f32] {
        let at = i as usize * self.stride + 1 + self.m0;
        bytemuck::cast_slice(&self.level0[at..(i as usize + 1) * self.stride])
    }

    /// Distance (smaller is nearer): −dot for inner product and cosine (on normalised
    /// vectors), squared Euclidean for L2.
    #[inline]
    fn dist(&self, q: &[f32], i: u32) -> f32 {
        match &self.int8 {
            Some(_) => self.int8_dist(q, i),
            None => f32_distance(self.metric, q, self.vector(i)),
        }
    }

    /// Hints the CPU to fetch node `i`'s stored vector (f32 row or int8 codes).
    #[inline(always)]
    fn prefetch(&self, i: u32) {
        #[cfg(target_arch = "x86_64")]
        {
            let (ptr, bytes) = match &self.int8 {
                Some((codes, _)) => (codes[i as usize * self.dim..].as_ptr(), self.dim),
                None => (self.vector(i).as_ptr() as *const i8, self.dim * 4),
            };
            // Every cache line the row touches: a row need not start on a line (level-0
            // records are 4 (1 + m0 + d) bytes), so step from its first line's start.
            let skew = ptr as usize % 64;
            for off in (0..bytes + skew).step_by(64) {
                // SAFETY: a prefetch never faults (wrapping_sub/add never dereference);
                // the lines are those of row `i`, which the slicing above bounds-checked.
                unsafe {
                    std::arch::x86_64::_mm_prefetch(
                        ptr.wrapping_sub(skew).wrapping_add(off),
                        std::arch::x86_64::_MM_HINT_T0,
                    )
                };
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = i;
    }

    /// Calls `f` on each of `nodes` in order, with their vectors' loads started
    /// [`PREFETCH_AHEAD`] nodes ahead of the call (both graph walks use it).
    #[inline(always)]
    fn for_each_prefetched(&self, nodes: &[u32], mut f: impl FnMut(u32)) {
        for &n in nodes.iter().take(PREFETCH_AHEAD) {
            self.prefetch(n);
        }
        for (j, &n) in nodes.iter().enumerate() {
            if let Some(&p) = nodes.get(j + PREFETCH_AHEAD) {
                self.prefetch(p);
            }
            f(n);
        }
    }

    /// Hints the CPU to fetch node `i`'s level-0 link record.
    #[inline(always)]
    fn prefetch_links(&self, i: u32) {
        #[cfg(target_arch = "x86_64")]
        {
            let at = i as usize * self.stride;
            let rec = &self.level0[at..at + 1 + self.m0];
            for off in (0..rec.len()).step_by(16) {
                // SAFETY: a prefetch never faults, and `off` stays inside the record.
                unsafe {
                    std::arch::x86_64::_mm_prefetch(
                        rec.as_ptr().add(off) as *const i8,
                        std::arch::x86_64::_MM_HINT_T0,
                    )
                };
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = i;
    }

    #[inline(always)]
    fn links(&self, i: u32, level: usize) -> &[u32] {
        let rec = if level == 0 {
            let at = i as usize * self.stride;
            &self.level0[at..at + 1 + self.m0]
        } else {
            let s = self.upper_start[i as usize] as usize + (level - 1) * (1 + self.m);
            &self.upper[s..s + 1 + self.m]
        };
        &rec[1..1 + rec[0] as usize]
    }

    fn set_links(&mut self, i: u32, level: usize, links: &[u32]) {
        let rec = if level == 0 {
            let at = i as usize * self.stride;
            &mut self.level0[at..at + 1 + self.m0]
        } else {
            let s = self.upper_start[i as usize] as usize + (level - 1) * (1 + self.m);
            &mut self.upper[s..s + 1 + self.m]
        };
        rec[0] = links.len() as u32;
        rec[1..1 + links.len()].copy_from_slice(links);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{GenerationSpec, RamDirectory, StorageType, Store};
    use std::sync::Arc;

    /// Unit vectors around 8 centres (a deterministic xorshift stream).
    fn points(n: usize, d: usize) -> Vec<f32> {
        let mut s = 0x9e37_79b9_7f4a_7c15u64;
        let mut u = move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        };
        let centres: Vec<f32> = (0..8 * d).map(|_| u()).collect();
        let mut out = Vec::with_capacity(n * d);
        for i in 0..n {
            let mut v: Vec<f32> = (0..d)
                .map(|j| centres[(i % 8) * d + j] + 0.3 * u())
                .collect();
            normalize(&mut v);
            out.extend(v);
        }
        out
    }

    /// A node as seen from outside its number: (id, level, links per level as ids,
    /// vector, snapshot row).
    type NodeView = (u64, u8, Vec<Vec<u64>>, Vec<f32>, [u32; 2]);

    /// Every query's hits (ids and scores) on `h`, filtered by `filter`.
    fn answers(
        h: &Hnsw,
        snap: &Snapshot,
        data: &[f32],
        d: usize,
        filter: &Filter,
    ) -> Vec<Vec<Hit>> {
        let mut s = Scratch::new(h.len());
        data.chunks(d)
            .step_by(7)
            .map(|q| h.search(snap, q, 10, 40, filter, &mut s).unwrap())
            .collect()
    }

    #[test]
    fn renumbering_nodes_changes_no_answer_and_keeps_the_graph_intact() {
        let (n, d) = (1500, 16);
        let data = points(n, d);
        let store = Store::open(Arc::new(RamDirectory::new())).unwrap();
        let mut w = store.writer().unwrap();
        w.create_generation(GenerationSpec::new("g", d, StorageType::F32))
            .unwrap();
        let ids: Vec<ItemId> = (0..n as u64).map(|i| ItemId(i * 3 + 1)).collect();
        w.put_many("g", &ids, &data, None).unwrap();
        w.set_current("g").unwrap();
        w.commit().unwrap();
        let snap = store.snapshot().unwrap();
        let params = HnswParams {
            m: 6,
            ef_construction: 40,
            seed: 3,
        };
        let mut h = Hnsw::build(&snap, Metric::InnerProduct, params).unwrap();
        // build ends in breadth-first order: the entry is node 0, its links follow it
        assert_eq!(h.entry, 0);
        let first: Vec<u32> = h.links(0, 0).to_vec();
        assert_eq!(first, (1..=first.len() as u32).collect::<Vec<_>>());
        let skip: Vec<u64> = ids.iter().step_by(5).map(|i| i.0).collect();
        let excluded = Filter::none().exclude(&skip);
        let before = answers(&h, &snap, &data, d, &Filter::none());
        let before_filtered = answers(&h, &snap, &data, d, &excluded);
        let node_of = |h: &Hnsw, id: u64| h.ids.iter().position(|&x| x == id).unwrap() as u32;
        let entry_id = h.ids[h.entry as usize];
        // a scrambled numbering (reversed, then every other node swapped)
        let mut order: Vec<u32> = (0..n as u32).rev().collect();
        order.chunks_exact_mut(2).for_each(|p| p.swap(0, 1));
        let links_of = |h: &Hnsw, id: u64, level: usize| -> Vec<u64> {
            let i = node_of(h, id);
            h.links(i, level)
                .iter()
                .map(|&k| h.ids[k as usize])
                .collect()
        };
        let graph = |h: &Hnsw| -> Vec<NodeView> {
            let mut g: Vec<_> = (0..n as u32)
                .map(|i| {
                    let id = h.ids[i as usize];
                    let level = h.levels[i as usize];
                    let links = (0..=level as usize).map(|l| links_of(h, id, l)).collect();
                    (id, level, links, h.vector(i).to_vec(), h.rows[i as usize])
                })
                .collect();
            g.sort_by_key(|x| x.0);
            g
        };
        let g0 = graph(&h);
        h.renumber(&order);
        assert_eq!(graph(&h), g0, "the same graph under new numbers");
        assert_eq!(h.ids[h.entry as usize], entry_id);
        assert_eq!(answers(&h, &snap, &data, d, &Filter::none()), before);
        assert_eq!(answers(&h, &snap, &data, d, &excluded), before_filtered);
        h.reorder();
        assert_eq!(graph(&h), g0);
        assert_eq!(h.entry, 0);
        assert_eq!(answers(&h, &snap, &data, d, &Filter::none()), before);
        // a quantised index renumbers its codes and scales with the nodes
        h.quantize_int8();
        let quantized = answers(&h, &snap, &data, d, &Filter::none());
        h.renumber(&order);
        assert_eq!(answers(&h, &snap, &data, d, &Filter::none()), quantized);
    }
}
