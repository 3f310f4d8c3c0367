//! HNSW (Malkov & Yashunin) approximate nearest-neighbour index over one snapshot.
//!
//! Laid out like hnswlib: level 0 is one contiguous block of fixed-stride node records
//! `[count, n_1 .. n_m0, vector]` (a node's links and its f32 vector side by side, so
//! expanding a node whose distance was computed reads memory that is already cached),
//! upper-level links in a second block; neighbour selection by the diversity heuristic; searches reuse a
//! scratch (visited marks with a generation stamp, two heaps) so the search loop does
//! not allocate. Filters (excluded ids, attribute predicates, tombstones) are applied
//! during the graph search: filtered nodes are traversed but never returned.

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

/// How many neighbours ahead of the distance being computed the walk prefetches: enough
/// loads in flight to hide memory latency, few enough not to fill the CPU's miss
/// buffers (prefetching all of a node's neighbours at once stalled on them).
const PREFETCH_AHEAD: usize = 4;

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

/// `n` level draws, `floor(-ln(U) / ln(m))` capped at 30, from a seeded xorshift.
fn draw_levels(n: usize, m: usize, seed: u64) -> Vec<u8> {
    let ml = 1.0 / (m as f64).ln();
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let u = ((state >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
            ((-u.ln() * ml).floor() as usize).min(30) as u8
        })
        .collect()
}

/// Nodes inserted one by one before a parallel build starts batching.
const SERIAL_PREFIX: usize = 4096;
/// Largest batch of a parallel build.
const MAX_BATCH: usize = 1024;

/// The links planned for one node being inserted.
struct Plan {
    i: u32,
    level: usize,
    /// Chosen neighbours per level `0..=min(level, max_level)`.
    links: Vec<Vec<u32>>,
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
const INDEX_MAGIC: &[u8; 8] = b"MOSAICHN";
/// 3: a checksum over the header (2: level-0 records hold the node's vector; 1: vectors
/// in their own section).
const INDEX_VERSION: u32 = 3;

/// The JSON header of an index file.
#[derive(Debug, Serialize, Deserialize)]
struct IndexHeader {
    format: String,
    version: u32,
    generation: String,
    /// The generation's content version (the field kept its first name: indexes saved
    /// before versions existed hold the opstamp, which legacy manifests read as version).
    opstamp: u64,
    metric: Metric,
    dim: usize,
    m: usize,
    m0: usize,
    nodes: usize,
    entry: u32,
    max_level: usize,
    quantized: bool,
    /// The segment names of the snapshot, in order.
    segments: Vec<String>,
    /// (name, byte offset from the data start, element count)
    sections: Vec<(String, usize, usize)>,
    crc32: u32,
}

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
    /// Build over every live item of `snap`.
    pub fn build(snap: &Snapshot, metric: Metric, params: HnswParams) -> Result<Self> {
        if params.m < 2 || params.ef_construction == 0 {
            return Err(Error::Query {
                message: format!("HNSW needs m >= 2 and ef_construction >= 1, got {params:?}"),
            });
        }
        let d = snap.dim();
        let live: Vec<(ItemId, usize, usize)> = snap.iter_live().collect();
        let n = live.len();
        let mut vectors = vec![0f32; n * d];
        for (i, &(_, s, r)) in live.iter().enumerate() {
            let v = &mut vectors[i * d..(i + 1) * d];
            snap.segments()[s].segment.read_vector(r, v)?;
            if metric == Metric::Cosine {
                normalize(v);
            }
        }
        let levels = draw_levels(n, params.m, params.seed);
        let m0 = 2 * params.m;
        let stride = 1 + m0 + d;
        let mut level0 = vec![0u32; n * stride];
        for (rec, v) in level0.chunks_exact_mut(stride).zip(vectors.chunks_exact(d)) {
            rec[1 + m0..].copy_from_slice(bytemuck::cast_slice(v));
        }
        drop(vectors);
        let mut upper_start = Vec::with_capacity(n + 1);
        let mut total = 0u32;
        for &l in &levels {
            upper_start.push(total);
            total += l as u32 * (1 + params.m as u32);
        }
        upper_start.push(total);
        let mut h = Self {
            dim: d,
            metric,
            m: params.m,
            m0,
            int8: None,
            ids: live.iter().map(|r| r.0.0).collect::<Vec<_>>().into(),
            rows: live
                .iter()
                .map(|&(_, s, r)| [s as u32, r as u32])
                .collect::<Vec<_>>()
                .into(),
            levels: levels.into(),
            level0: level0.into(),
            stride,
            upper: vec![0; total as usize].into(),
            upper_start: upper_start.into(),
            entry: 0,
            max_level: 0,
            built_from: (snap.generation().to_string(), snap.version()),
            segments: segment_names(snap),
        };
        h.insert_nodes(0, params.ef_construction);
        h.reorder();
        Ok(h)
    }

    /// Links nodes `from..len()` (their vectors, levels and empty records already in
    /// place) into the graph; from an empty graph (`from == 0`) the first node becomes
    /// the entry point.
    ///
    /// One thread: nodes one by one (hnswlib's order). More: after a serial prefix,
    /// batches of up to 1/32 of the graph so far — each batch's neighbour searches run
    /// in parallel on the graph before the batch, the reverse-link updates in parallel
    /// per target node, then everything is written. Nodes of one batch do not see each
    /// other while searching; at ≤ 3% of the graph that costs little recall (measured
    /// in tests/hnsw.rs). The graph depends only on whether more than one thread is
    /// available, not on scheduling.
    fn insert_nodes(&mut self, from: usize, ef: usize) {
        let n = self.len();
        if n == 0 {
            return;
        }
        let mut next = from;
        if next == 0 {
            self.entry = 0;
            self.max_level = self.levels[0] as usize;
            next = 1;
        }
        let parallel = rayon::current_num_threads() > 1;
        let mut scratch = Scratch::new(n);
        let mut found = Vec::new();
        while next < n {
            let b = if parallel && next >= SERIAL_PREFIX {
                (next / 32).clamp(1, MAX_BATCH).min(n - next)
            } else {
                1
            };
            let plans: Vec<Plan> = if b == 1 {
                vec![self.plan(next as u32, ef, &mut scratch, &mut found)]
            } else {
                let h = &*self;
                (next..next + b)
                    .into_par_iter()
                    .map_init(
                        || (Scratch::new(n), Vec::new()),
                        |(s, f), i| h.plan(i as u32, ef, s, f),
                    )
                    .collect()
            };
            self.apply(plans, parallel && b > 1);
            next += b;
        }
    }

    /// The index of `newer` — a later commit of the generation this index was built
    /// from — made by inserting the rows `newer` added (appends and upserts) into a copy
    /// of this graph, without a rebuild. Rows deleted or replaced since stay in the
    /// graph as routing nodes and are never returned (the search checks tombstones).
    /// `ef_construction` as for [`Hnsw::build`]; new nodes' levels are drawn from
    /// `seed` and their position.
    ///
    /// Fails with [`Error::Query`] when `newer` is another generation or an older
    /// commit, when a segment the index was built on is gone from `newer` (compaction
    /// merged it: rebuild then), or when the index is quantised (update the f32 index,
    /// then quantise).
    pub fn update(&self, newer: &Snapshot, ef_construction: usize, seed: u64) -> Result<Self> {
        let err = |message: String| Err(Error::Query { message });
        if newer.generation() != self.built_from.0 || newer.version() < self.built_from.1 {
            return err(format!(
                "the index is of generation {:?} at version {}, the snapshot {:?} at version \
                 {}: an index is updated to a later version of its own generation",
                self.built_from.0,
                self.built_from.1,
                newer.generation(),
                newer.version()
            ));
        }
        if self.int8.is_some() {
            return err("the index is quantised: update the f32 index, then quantise".into());
        }
        if ef_construction == 0 {
            return err("ef_construction must be at least 1".into());
        }
        let names = segment_names(newer);
        let position = |name: &str| names.iter().position(|n| n == name);
        let mut remap = Vec::with_capacity(self.segments.len());
        for name in &self.segments {
            match position(name) {
                Some(p) => remap.push(p as u32),
                None => {
                    return err(format!(
                        "segment {name} of the indexed version is gone from version {} \
                         (merged by compaction): rebuild the index",
                        newer.version()
                    ));
                }
            }
        }
        let (d, n_old) = (self.dim, self.len());
        let mut ids = self.ids.to_vec();
        let mut rows = Vec::with_capacity(self.len());
        for &[s, r] in self.rows.iter() {
            let Some(&s) = remap.get(s as usize) else {
                return err(format!("a node names segment {s} of {}", remap.len()));
            };
            rows.push([s, r]);
        }
        let mut level0 = self.level0.to_vec();
        let mut buf = vec![0f32; d];
        for (si, ls) in newer.segments().iter().enumerate() {
            if remap.contains(&(si as u32)) {
                continue;
            }
            for (r, &id) in ls.segment.ids().iter().enumerate() {
                if ls.tombstones.is_deleted(r) {
                    continue;
                }
                ls.segment.read_vector(r, &mut buf)?;
                if self.metric == Metric::Cosine {
                    normalize(&mut buf);
                }
                ids.push(id);
                rows.push([si as u32, r as u32]);
                let at = level0.len();
                level0.resize(at + self.stride, 0);
                level0[at + 1 + self.m0..].copy_from_slice(bytemuck::cast_slice(&buf));
            }
        }
        let n = ids.len();
        if u32::try_from(n).is_err() {
            return err(format!("{n} nodes exceed the index's 32-bit node ids"));
        }
        let mut levels = self.levels.to_vec();
        levels.extend(draw_levels(
            n - n_old,
            self.m,
            seed ^ (n_old as u64).rotate_left(32),
        ));
        let mut upper_start = self.upper_start.to_vec();
        let mut total = upper_start.last().copied().unwrap_or(0);
        for &l in &levels[n_old..] {
            total += l as u32 * (1 + self.m as u32);
            upper_start.push(total);
        }
        let mut upper = self.upper.to_vec();
        upper.resize(total as usize, 0);
        let mut h = Self {
            dim: d,
            metric: self.metric,
            m: self.m,
            m0: self.m0,
            int8: None,
            ids: ids.into(),
            rows: rows.into(),
            levels: levels.into(),
            level0: level0.into(),
            stride: self.stride,
            upper: upper.into(),
            upper_start: upper_start.into(),
            entry: self.entry,
            max_level: self.max_level,
            built_from: (newer.generation().to_string(), newer.version()),
            segments: names,
        };
        h.insert_nodes(n_old, ef_construction);
        h.reorder();
        Ok(h)
    }

    /// Name of the file holding the index of `generation` at content `version`
    /// ([`Snapshot::version`]) for `metric` (generation names may hold any printable
    /// character, so they are hashed; the header keeps the full name).
    pub fn file_name(generation: &str, version: u64, metric: Metric) -> String {
        let tag = match metric {
            Metric::InnerProduct => "ip",
            Metric::Cosine => "cos",
            Metric::L2 => "l2",
        };
        format!("{}{tag}.hnsw", Self::file_prefix(generation, version))
    }

    /// What every index file of `generation` at `version` starts with, whatever its
    /// metric.
    pub fn file_prefix(generation: &str, version: u64) -> String {
        crate::manifest::index_file_prefix(generation, version)
    }

    /// Write the index into `dir` (beside the store's segments) atomically, as a JSON
    /// header and 8-byte-aligned sections with a CRC32; returns the file name.
    pub fn save(&self, dir: &dyn Directory) -> Result<String> {
        fn push<T: Pod>(
            data: &mut Vec<u8>,
            sections: &mut Vec<(String, usize, usize)>,
            name: &str,
            v: &[T],
        ) {
            data.resize(data.len().next_multiple_of(8), 0);
            sections.push((name.to_string(), data.len(), v.len()));
            data.extend_from_slice(bytemuck::cast_slice(v));
        }
        let mut data = Vec::new();
        let mut sections = Vec::new();
        if let Some((codes, scales)) = &self.int8 {
            push(&mut data, &mut sections, "codes", codes);
            push(&mut data, &mut sections, "scales", scales);
        }
        push(&mut data, &mut sections, "ids", &self.ids);
        push(&mut data, &mut sections, "rows", &self.rows);
        push(&mut data, &mut sections, "levels", &self.levels);
        push(&mut data, &mut sections, "level0", &self.level0);
        push(&mut data, &mut sections, "upper", &self.upper);
        push(&mut data, &mut sections, "upper_start", &self.upper_start);
        let header = IndexHeader {
            format: INDEX_FORMAT.into(),
            version: INDEX_VERSION,
            generation: self.built_from.0.clone(),
            opstamp: self.built_from.1,
            metric: self.metric,
            dim: self.dim,
            m: self.m,
            m0: self.m0,
            nodes: self.len(),
            entry: self.entry,
            max_level: self.max_level,
            quantized: self.int8.is_some(),
            segments: self.segments.clone(),
            sections,
            crc32: crc32fast::hash(&data),
        };
        let json = serde_json::to_vec(&header)
            .map_err(|e| Error::corrupt("hnsw index", format!("header: {e}")))?;
        let mut file = Vec::with_capacity(16 + json.len() + 12 + data.len());
        file.extend_from_slice(INDEX_MAGIC);
        file.extend_from_slice(&INDEX_VERSION.to_le_bytes());
        file.extend_from_slice(&(json.len() as u32).to_le_bytes());
        file.extend_from_slice(&json);
        file.extend_from_slice(&crc32fast::hash(&file).to_le_bytes());
        file.resize(file.len().next_multiple_of(8), 0);
        file.extend_from_slice(&data);
        let name = Self::file_name(&self.built_from.0, self.built_from.1, self.metric);
        dir.atomic_write(&name, &file)?;
        Ok(name)
    }

    /// Open the index saved for `snap` and `metric`, if there is one. With an
    /// [`crate::MmapDirectory`] the blocks are views of the mapped file (no copy). The
    /// whole file is verified (CRC, section sizes, every link in range) before use.
    pub fn load(dir: &dyn Directory, snap: &Snapshot, metric: Metric) -> Result<Option<Self>> {
        let name = Self::file_name(snap.generation(), snap.version(), metric);
        if !dir.exists(&name) {
            return Ok(None);
        }
        let h = Self::open_bytes(&name, dir.open_read(&name)?)?;
        if (h.built_from.0.as_str(), h.built_from.1, h.metric)
            != (snap.generation(), snap.version(), metric)
        {
            return Err(Error::corrupt(
                &name,
                format!(
                    "holds the index of {:?} at version {} ({:?})",
                    h.built_from.0, h.built_from.1, h.metric
                ),
            ));
        }
        // searches read the snapshot's rows by these values without further checks
        let segs = snap.segments();
        if h.segments != segment_names(snap) || h.dim != snap.dim() {
            return Err(Error::corrupt(
                &name,
                "names other segments or another dimension than its snapshot".to_string(),
            ));
        }
        if let Some(i) = h.rows.iter().position(|&[s, r]| {
            segs.get(s as usize)
                .is_none_or(|ls| r as usize >= ls.segment.len())
        }) {
            return Err(Error::corrupt(
                &name,
                format!("node {i} points past its segment's rows"),
            ));
        }
        Ok(Some(h))
    }

    fn open_bytes(name: &str, bytes: FileBytes) -> Result<Self> {
        let bad = |m: String| Error::corrupt(name, m);
        let b = bytes.as_slice();
        if b.len() < 16 || &b[..8] != INDEX_MAGIC {
            return Err(bad("not an HNSW index file".into()));
        }
        let version = u32::from_le_bytes([b[8], b[9], b[10], b[11]]);
        if version != INDEX_VERSION {
            return Err(Error::Version {
                file: name.to_string(),
                found: version,
                supported: INDEX_VERSION,
            });
        }
        let hlen = u32::from_le_bytes([b[12], b[13], b[14], b[15]]) as usize;
        let (json_end, data_start) = (16 + hlen, (20 + hlen).next_multiple_of(8));
        let (Some(json), Some(hcrc), Some(pad), Some(data)) = (
            b.get(16..json_end),
            b.get(json_end..json_end + 4),
            b.get(json_end + 4..data_start),
            b.get(data_start..),
        ) else {
            return Err(bad("header is truncated".into()));
        };
        if crc32fast::hash(&b[..json_end]).to_le_bytes() != hcrc || pad.iter().any(|&x| x != 0) {
            return Err(bad("header checksum mismatch".into()));
        }
        let h: IndexHeader =
            serde_json::from_slice(json).map_err(|e| bad(format!("header: {e}")))?;
        if h.format != INDEX_FORMAT {
            return Err(bad(format!("format {:?}", h.format)));
        }
        if crc32fast::hash(data) != h.crc32 {
            return Err(bad("checksum mismatch".into()));
        }
        let n = h.nodes;
        if n > b.len() / 8 || h.dim == 0 || h.dim > 1 << 20 || h.m > 4096 || h.m0 > 8192 {
            return Err(bad(format!(
                "implausible header: {n} nodes, dim {}, m {}, m0 {}",
                h.dim, h.m, h.m0
            )));
        }
        let section = |what: &str, want: usize| -> Result<usize> {
            let (_, off, len) = h
                .sections
                .iter()
                .find(|s| s.0 == what)
                .ok_or_else(|| bad(format!("section {what} is missing")))?;
            if *len != want {
                return Err(bad(format!(
                    "section {what} has {len} values, expected {want}"
                )));
            }
            data_start
                .checked_add(*off)
                .ok_or_else(|| bad(format!("section {what} is out of bounds")))
        };
        let int8 = if h.quantized {
            Some((
                Block::mapped(&bytes, section("codes", n * h.dim)?, n * h.dim, "codes")?,
                Block::mapped(&bytes, section("scales", n)?, n, "scales")?,
            ))
        } else {
            None
        };
        let ids: Block<u64> = Block::mapped(&bytes, section("ids", n)?, n, "ids")?;
        let rows: Block<[u32; 2]> = Block::mapped(&bytes, section("rows", n)?, n, "rows")?;
        let levels: Block<u8> = Block::mapped(&bytes, section("levels", n)?, n, "levels")?;
        let stride = 1 + h.m0 + if h.quantized { 0 } else { h.dim };
        let l0_len = n * stride;
        let level0: Block<u32> =
            Block::mapped(&bytes, section("level0", l0_len)?, l0_len, "level0")?;
        let upper_start: Block<u32> =
            Block::mapped(&bytes, section("upper_start", n + 1)?, n + 1, "upper_start")?;
        let up_len = upper_start.last().copied().unwrap_or(0) as usize;
        let upper: Block<u32> = Block::mapped(&bytes, section("upper", up_len)?, up_len, "upper")?;
        // structure checks: searches index by these values without further checks
        if let Some(&s) = upper_start.first()
            && s != 0
        {
            return Err(bad(format!("upper_start[0] is {s}, not 0")));
        }
        if rows.iter().any(|&[s, _]| s as usize >= h.segments.len()) {
            return Err(bad("a node names a segment the header does not list".into()));
        }
        if n > 0 && h.entry as usize >= n {
            return Err(bad(format!("entry node {} of {n}", h.entry)));
        }
        for i in 0..n {
            let l = levels[i] as usize;
            if l > h.max_level
                || upper_start[i + 1].checked_sub(upper_start[i]) != Some((l * (1 + h.m)) as u32)
            {
                return Err(bad(format!("node {i}: inconsistent levels")));
            }
        }
        let check_records = |block: &[u32], stride: usize, cap: usize| -> Result<()> {
            for rec in block.chunks_exact(stride) {
                let c = rec[0] as usize;
                if c > cap || rec[1..1 + c].iter().any(|&x| x as usize >= n) {
                    return Err(bad("a link record is out of range".into()));
                }
            }
            Ok(())
        };
        check_records(&level0, stride, h.m0)?;
        check_records(&upper, 1 + h.m, h.m)?;
        // an upper-level link must lead to a node that exists on that level
        for i in 0..n {
            for l in 1..=levels[i] as usize {
                // in range and record-aligned by the checks above; looked up, not
                // indexed, all the same
                let st = upper_start[i] as usize + (l - 1) * (1 + h.m);
                let links = upper
                    .get(st..st + 1 + h.m)
                    .and_then(|rec| rec.get(1..1 + rec[0] as usize))
                    .ok_or_else(|| bad(format!("node {i}: level {l} record out of range")))?;
                if links
                    .iter()
                    .any(|&x| levels.get(x as usize).is_none_or(|&lx| (lx as usize) < l))
                {
                    return Err(bad(format!("node {i} links below its level {l}")));
                }
            }
        }
        if n > 0 && levels[h.entry as usize] as usize != h.max_level {
            return Err(bad("the entry node is not on the top level".into()));
        }
        Ok(Self {
            dim: h.dim,
            metric: h.metric,
            m: h.m,
            m0: h.m0,
            int8,
            ids,
            rows,
            levels,
            level0,
            stride,
            upper,
            upper_start,
            entry: h.entry,
            max_level: h.max_level,
            built_from: (h.generation, h.opstamp),
            segments: h.segments,
        })
    }

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

    /// Bytes of the vectors held by the index.
    pub fn vector_bytes(&self) -> usize {
        4 * (self.level0.len() - self.len() * (1 + self.m0))
            + self
                .int8
                .as_ref()
                .map_or(0, |(c, sc)| c.len() + 4 * sc.len())
    }

    /// Whether the graph is traversed on int8 codes (see [`Hnsw::quantize_int8`]).
    pub fn is_quantized(&self) -> bool {
        self.int8.is_some()
    }

    /// Replace the index's f32 vectors by int8 codes with one scale per node (about 4x
    /// less vector memory). Searches then walk the graph on the codes and rerank the
    /// `ef` candidates with exact distances on the snapshot's stored vectors.
    pub fn quantize_int8(&mut self) {
        if self.int8.is_some() {
            return;
        }
        let d = self.dim;
        let n = self.len();
        let links = 1 + self.m0;
        let mut codes = vec![0i8; n * d];
        let mut scales = Vec::with_capacity(n);
        let mut level0 = vec![0u32; n * links];
        for (i, (c, rec)) in codes
            .chunks_exact_mut(d)
            .zip(level0.chunks_exact_mut(links))
            .enumerate()
        {
            scales.push(crate::segment::quantize_int8(self.vector(i as u32), c));
            let at = i * self.stride;
            rec.copy_from_slice(&self.level0[at..at + links]);
        }
        self.level0 = level0.into();
        self.stride = links;
        self.int8 = Some((codes.into(), scales.into()));
    }

    /// Renumbers the nodes in breadth-first order of the level-0 graph from the entry
    /// point (nodes it does not reach follow in their old order), so that a node's
    /// neighbours mostly lie in records near it: an expansion reads memory that is
    /// closer together (3–15% more queries/s at 1M nodes in insertion order,
    /// docs/benchmarks.md). Search results are unchanged — the same graph under new
    /// node numbers. [`Hnsw::build`] and [`Hnsw::update`] end with it.
    pub fn reorder(&mut self) {
        if !self.is_empty() {
            let order = self.bfs_order();
            self.renumber(&order);
        }
    }

    /// Gives node `order[new]` the number `new` (`order`: a permutation of the nodes).
    fn renumber(&mut self, order: &[u32]) {
        let n = self.len();
        let mut new_of = vec![u32::MAX; n];
        for (new, &old) in order.iter().enumerate() {
            new_of[old as usize] = new as u32;
        }
        let map = |links: &mut [u32]| {
            let count = links[0] as usize;
            for l in &mut links[1..1 + count] {
                *l = new_of[*l as usize];
            }
        };
        let mut level0 = vec![0u32; n * self.stride];
        for (rec, &old) in level0.chunks_exact_mut(self.stride).zip(order) {
            let at = old as usize * self.stride;
            rec.copy_from_slice(&self.level0[at..at + self.stride]);
            map(&mut rec[..1 + self.m0]);
        }
        let rec = 1 + self.m;
        let mut upper = Vec::with_capacity(self.upper.len());
        let mut upper_start = Vec::with_capacity(n + 1);
        for &old in order {
            upper_start.push(upper.len() as u32);
            let (s, e) = (
                self.upper_start[old as usize] as usize,
                self.upper_start[old as usize + 1] as usize,
            );
            let at = upper.len();
            upper.extend_from_slice(&self.upper[s..e]);
            for r in upper[at..].chunks_exact_mut(rec) {
                map(r);
            }
        }
        upper_start.push(upper.len() as u32);
        /// Rows of `width` values of `v`, in `order`.
        fn permute<T: Copy>(v: &[T], width: usize, order: &[u32]) -> Vec<T> {
            let mut out = Vec::with_capacity(v.len());
            for &old in order {
                out.extend_from_slice(&v[old as usize * width..(old as usize + 1) * width]);
            }
            out
        }
        self.ids = permute(&self.ids, 1, order).into();
        self.rows = permute(&self.rows, 1, order).into();
        self.levels = permute(&self.levels, 1, order).into();
        if let Some((codes, scales)) = &self.int8 {
            self.int8 = Some((
                permute(codes, self.dim, order).into(),
                permute(scales, 1, order).into(),
            ));
        }
        self.level0 = level0.into();
        self.upper = upper.into();
        self.upper_start = upper_start.into();
        self.entry = new_of[self.entry as usize];
    }

    /// Nodes in breadth-first order of level 0 from the entry point, then those not
    /// reached from it (in their current order), as `order[new] = old`.
    fn bfs_order(&self) -> Vec<u32> {
        let n = self.len();
        let mut placed = vec![false; n];
        let mut order: Vec<u32> = Vec::with_capacity(n);
        let mut start = self.entry;
        let mut rest = 0usize;
        loop {
            placed[start as usize] = true;
            order.push(start);
            let mut head = order.len() - 1;
            while head < order.len() {
                let c = order[head];
                head += 1;
                for &nb in self.links(c, 0) {
                    if !placed[nb as usize] {
                        placed[nb as usize] = true;
                        order.push(nb);
                    }
                }
            }
            while rest < n && placed[rest] {
                rest += 1;
            }
            if rest == n {
                break;
            }
            start = rest as u32;
        }
        order
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

    /// [`Hnsw::dist`] on node `i`'s int8 codes (the index is quantised), inlined into
    /// its caller.
    #[inline(always)]
    fn int8_dist(&self, q: &[f32], i: u32) -> f32 {
        let Some((codes, scales)) = &self.int8 else {
            return f32::INFINITY;
        };
        let (i, d) = (i as usize, self.dim);
        let (c, s) = (&codes[i * d..(i + 1) * d], scales[i]);
        match self.metric {
            Metric::InnerProduct | Metric::Cosine => -s * crate::search::dot_i8(q, c),
            Metric::L2 => q
                .iter()
                .zip(c)
                .map(|(a, &b)| {
                    let e = a - s * b as f32;
                    e * e
                })
                .sum(),
        }
    }

    /// Exact distance of `q` to node `i`, from the snapshot's stored vector.
    fn exact_dist(
        &self,
        segs: &[crate::store::LiveSegment],
        q: &[f32],
        i: u32,
        row: &mut Vec<f32>,
    ) -> Result<f32> {
        let [s, r] = self.rows[i as usize];
        row.resize(self.dim, 0.0);
        let seg = segs.get(s as usize).ok_or_else(|| Error::Query {
            message: format!(
                "the index names segment {s}, the snapshot has {}",
                segs.len()
            ),
        })?;
        seg.segment.read_vector(r as usize, row)?;
        if self.metric == Metric::Cosine {
            normalize(row);
        }
        Ok(f32_distance(self.metric, q, row))
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
            for off in (0..bytes).step_by(64) {
                // SAFETY: a prefetch never faults, and `ptr + off` stays inside row `i`,
                // which the slicing above bounds-checked.
                unsafe {
                    std::arch::x86_64::_mm_prefetch(ptr.add(off), std::arch::x86_64::_MM_HINT_T0)
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

    /// Greedy walk from `ep` through levels `top` down to `bottom`: the nearest node
    /// found on `bottom` (`ep` itself when `top < bottom`).
    fn descend(&self, q: &[f32], ep: u32, top: usize, bottom: usize) -> u32 {
        #[cfg(target_arch = "x86_64")]
        if crate::kernels::avx2_fma() {
            // SAFETY: the CPU has AVX2 and FMA (checked at run time just above).
            return match self.int8 {
                Some(_) => unsafe { self.descend_avx2::<INT8>(q, ep, top, bottom) },
                None => unsafe { self.descend_avx2::<F32>(q, ep, top, bottom) },
            };
        }
        self.descend_with::<ANY>(q, ep, top, bottom)
    }

    /// [`Self::descend`] compiled for AVX2+FMA (the f32 or int8 distance inlined).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn descend_avx2<const KIND: u8>(
        &self,
        q: &[f32],
        ep: u32,
        top: usize,
        bottom: usize,
    ) -> u32 {
        self.descend_with::<KIND>(q, ep, top, bottom)
    }

    /// The greedy walk itself, distances by [`Hnsw::dist_as`]; neighbours'
    /// vectors are prefetched as in the level-0 walk.
    #[inline(always)]
    fn descend_with<const KIND: u8>(
        &self,
        q: &[f32],
        mut ep: u32,
        top: usize,
        bottom: usize,
    ) -> u32 {
        if top < bottom {
            return ep;
        }
        let mut best = self.dist_as::<KIND>(q, ep);
        for level in (bottom..=top).rev() {
            loop {
                let mut moved = false;
                self.for_each_prefetched(self.links(ep, level), |n| {
                    let d = self.dist_as::<KIND>(q, n);
                    if d < best {
                        best = d;
                        ep = n;
                        moved = true;
                    }
                });
                if !moved {
                    break;
                }
            }
        }
        ep
    }

    /// The distance of kind `KIND` ([`F32`], [`INT8`]: inlined into the AVX2-compiled
    /// walks, so it is computed in their own body with their instruction set and no
    /// per-distance branch — a closure passed in was compiled as a separate function;
    /// [`ANY`]: [`Hnsw::dist`], for the portable walks).
    #[inline(always)]
    fn dist_as<const KIND: u8>(&self, q: &[f32], i: u32) -> f32 {
        match KIND {
            F32 => self.f32_dist(q, i),
            INT8 => self.int8_dist(q, i),
            _ => self.dist(q, i),
        }
    }

    /// The distance of `q` to node `i`'s f32 vector, inlined into its caller (see
    /// [`Hnsw::dist`] for the convention).
    #[inline(always)]
    fn f32_dist(&self, q: &[f32], i: u32) -> f32 {
        let x = self.vector(i);
        match self.metric {
            Metric::InnerProduct | Metric::Cosine => -crate::kernels::dot_body(q, x, true),
            Metric::L2 => crate::kernels::l2_body(q, x, true),
        }
    }

    /// The `ef` nearest admissible nodes on `level`, starting from `ep`, into `s.results`.
    fn search_layer(
        &self,
        q: &[f32],
        ep: u32,
        ef: usize,
        level: usize,
        s: &mut Scratch,
        admit: Option<&dyn Fn(u32) -> bool>,
    ) {
        #[cfg(target_arch = "x86_64")]
        if crate::kernels::avx2_fma() {
            // SAFETY: the CPU has AVX2 and FMA (checked at run time just above).
            return match self.int8 {
                Some(_) => unsafe { self.search_layer_avx2::<INT8>(q, ep, ef, level, s, admit) },
                None => unsafe { self.search_layer_avx2::<F32>(q, ep, ef, level, s, admit) },
            };
        }
        self.search_layer_with::<ANY>(q, ep, ef, level, s, admit);
    }

    /// [`Self::search_layer`] compiled for AVX2+FMA so that the (f32 or int8) distance
    /// is inlined into the walk (no dispatch per distance).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn search_layer_avx2<const KIND: u8>(
        &self,
        q: &[f32],
        ep: u32,
        ef: usize,
        level: usize,
        s: &mut Scratch,
        admit: Option<&dyn Fn(u32) -> bool>,
    ) {
        self.search_layer_with::<KIND>(q, ep, ef, level, s, admit);
    }

    /// The walk itself, distances by [`Hnsw::dist_as`].
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    fn search_layer_with<const KIND: u8>(
        &self,
        q: &[f32],
        ep: u32,
        ef: usize,
        level: usize,
        s: &mut Scratch,
        admit: Option<&dyn Fn(u32) -> bool>,
    ) {
        let filtered = admit.is_some();
        let admit = |i: u32| admit.is_none_or(|f| f(i));
        s.reset(self.len());
        s.visit(ep);
        let d0 = self.dist_as::<KIND>(q, ep);
        s.candidates.push(Far(d0, ep));
        let mut bound = f32::INFINITY;
        if admit(ep) {
            s.results.push(Near(d0, ep));
            bound = d0;
        }
        while let Some(Far(d, c)) = s.candidates.pop() {
            if d > bound && (s.results.len() >= ef || !filtered) {
                break;
            }
            // Mark the unvisited neighbours first (rows already visited are never
            // fetched), then walk them with the vector loads a few nodes ahead of the
            // distances: the walk is bound by fetching rows from memory, not arithmetic.
            let mut fresh = std::mem::take(&mut s.fresh);
            fresh.clear();
            for &n in self.links(c, level) {
                if s.visit(n) {
                    fresh.push(n);
                }
            }
            self.for_each_prefetched(&fresh, |n| {
                let dn = self.dist_as::<KIND>(q, n);
                if s.results.len() < ef || dn < bound {
                    s.candidates.push(Far(dn, n));
                    if admit(n) {
                        s.results.push(Near(dn, n));
                        if s.results.len() > ef {
                            s.results.pop();
                        }
                        bound = s.results.peek().map_or(f32::INFINITY, |t| t.0);
                    }
                }
            });
            s.fresh = fresh;
            // The next node to expand: its links are read first thing next round.
            if let (0, Some(&Far(_, next))) = (level, s.candidates.peek()) {
                self.prefetch_links(next);
            }
        }
    }

    /// Keep up to `m` of `cands` (sorted nearest first): a candidate is kept when it is
    /// nearer to the base than to every one kept so far (the diversity heuristic).
    fn select(&self, cands: &[(f32, u32)], m: usize, out: &mut Vec<u32>) {
        out.clear();
        for &(d, c) in cands {
            if out.len() >= m {
                break;
            }
            let cv = self.vector(c);
            if out.iter().all(|&k| self.dist(cv, k) > d) {
                out.push(c);
            }
        }
    }

    /// The links node `i` gets on each level `0..=min(level, max_level)`, from searches
    /// on the current graph (read-only).
    fn plan(&self, i: u32, ef: usize, s: &mut Scratch, found: &mut Vec<(f32, u32)>) -> Plan {
        let level = self.levels[i as usize] as usize;
        let q = self.vector(i);
        let mut ep = self.descend(q, self.entry, self.max_level, level + 1);
        let top = level.min(self.max_level);
        let mut links = vec![Vec::new(); top + 1];
        for l in (0..=top).rev() {
            self.search_layer(q, ep, ef, l, s, None);
            found.clear();
            found.extend(s.results.drain().map(|Near(d, n)| (d, n)));
            found.sort_by(|a, b| a.0.total_cmp(&b.0));
            ep = found.first().map_or(ep, |f| f.1);
            self.select(found, self.m, &mut links[l]);
        }
        Plan { i, level, links }
    }

    /// Writes the planned nodes' links and adds each as a reverse link of the nodes it
    /// chose, pruning with the diversity heuristic where a list overflows.
    fn apply(&mut self, plans: Vec<Plan>, parallel: bool) {
        let mut rev: Vec<(u32, u8, u32)> = Vec::new();
        for p in &plans {
            for (l, ls) in p.links.iter().enumerate() {
                rev.extend(ls.iter().map(|&n| (n, l as u8, p.i)));
            }
        }
        // Stable sort: a node's new links keep the batch order (the serial order).
        rev.sort_by_key(|&(n, l, _)| (n, l));
        let groups: Vec<&[(u32, u8, u32)]> =
            rev.chunk_by(|a, b| a.0 == b.0 && a.1 == b.1).collect();
        let update = |g: &&[(u32, u8, u32)]| -> (u32, usize, Vec<u32>) {
            let (n, l) = (g[0].0, g[0].1 as usize);
            let cap = if l == 0 { self.m0 } else { self.m };
            let mut links: Vec<u32> = self.links(n, l).to_vec();
            if links.len() + g.len() <= cap {
                links.extend(g.iter().map(|x| x.2));
                return (n, l, links);
            }
            let nv = self.vector(n);
            let mut cands: Vec<(f32, u32)> = links.iter().map(|&k| (self.dist(nv, k), k)).collect();
            cands.extend(g.iter().map(|x| (self.dist(nv, x.2), x.2)));
            cands.sort_by(|a, b| a.0.total_cmp(&b.0));
            self.select(&cands, cap, &mut links);
            (n, l, links)
        };
        let updates: Vec<(u32, usize, Vec<u32>)> = if parallel {
            groups.par_iter().map(update).collect()
        } else {
            groups.iter().map(update).collect()
        };
        for p in &plans {
            for (l, ls) in p.links.iter().enumerate() {
                self.set_links(p.i, l, ls);
            }
        }
        for (n, l, links) in updates {
            self.set_links(n, l, &links);
        }
        for p in plans {
            if p.level > self.max_level {
                self.max_level = p.level;
                self.entry = p.i;
            }
        }
    }

    /// The `k` nearest admissible items to `query`, exploring `ef` candidates (≥ k).
    /// Scores follow [`Snapshot::search`]'s convention (larger is better).
    pub fn search(
        &self,
        snap: &Snapshot,
        query: &[f32],
        k: usize,
        ef: usize,
        filter: &Filter,
        scratch: &mut Scratch,
    ) -> Result<Vec<Hit>> {
        if query.len() != self.dim {
            return Err(Error::Query {
                message: format!(
                    "query has {} values, the index's dim is {}",
                    query.len(),
                    self.dim
                ),
            });
        }
        if (snap.generation(), snap.version()) != (self.built_from.0.as_str(), self.built_from.1) {
            return Err(Error::Query {
                message: format!(
                    "the index was built from generation {:?} at version {}, the snapshot is {:?} at version {}",
                    self.built_from.0,
                    self.built_from.1,
                    snap.generation(),
                    snap.version()
                ),
            });
        }
        crate::search::check_k("k", k)?;
        crate::search::check_k("ef", ef)?;
        crate::search::check_finite(query)?;
        if self.is_empty() || k == 0 {
            return Ok(Vec::new());
        }
        let mut q = query.to_vec();
        if self.metric == Metric::Cosine {
            normalize(&mut q);
        }
        let segs = snap.segments();
        let filtered = !filter.exclude_sorted.is_empty() || filter.attrs.is_some();
        let admit = |i: u32| {
            let [s, r] = self.rows[i as usize];
            let Some(ls) = segs.get(s as usize) else {
                return false;
            };
            !ls.tombstones.is_deleted(r as usize)
                && filter.admits(self.ids[i as usize], || ls.segment.attrs(r as usize))
        };
        let ep = self.descend(&q, self.entry, self.max_level, 1);
        let any_deleted = snap.segments().iter().any(|s| s.tombstones.count() > 0);
        let admit: Option<&dyn Fn(u32) -> bool> = (filtered || any_deleted).then_some(&admit);
        self.search_layer(&q, ep, ef.max(k), 0, scratch, admit);
        if self.int8.is_some() {
            // rerank the ef candidates found on the codes with exact distances
            let Scratch {
                results,
                row,
                reranked,
                ..
            } = scratch;
            reranked.clear();
            for Near(_, n) in results.drain() {
                reranked.push((self.exact_dist(segs, &q, n, row)?, n));
            }
            reranked.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
            reranked.truncate(k);
            let mut out: Vec<Hit> = reranked
                .iter()
                .map(|&(d, n)| Hit {
                    id: ItemId(self.ids[n as usize]),
                    score: -d,
                })
                .collect();
            out.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.id.cmp(&b.id)));
            return Ok(out);
        }
        let mut out: Vec<Hit> = scratch
            .results
            .drain()
            .map(|Near(d, n)| Hit {
                id: ItemId(self.ids[n as usize]),
                score: -d,
            })
            .collect();
        out.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.id.cmp(&b.id)));
        out.truncate(k);
        Ok(out)
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
