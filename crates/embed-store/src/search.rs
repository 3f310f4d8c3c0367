//! Exact top-k search over a snapshot: every live row scored, filters applied, the k
//! best kept in a bounded heap. Batches of queries run in parallel (rayon).

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use half::slice::HalfFloatSliceExt;
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::store::Snapshot;
use crate::types::{ItemId, Metric};

/// A search result.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hit {
    /// The item.
    pub id: ItemId,
    /// Its score; larger is better for every metric.
    pub score: f32,
}

/// A predicate over an item's u32 attributes.
pub type AttrPredicate = dyn Fn(&[u32]) -> bool + Sync;

/// Restrictions applied while searching (never after, so k results come back when k
/// eligible items exist).
#[derive(Default, Clone, Copy)]
pub struct Filter<'a> {
    /// Ids to skip (e.g. already seen), sorted ascending.
    pub exclude_sorted: &'a [u64],
    /// A predicate over an item's attributes; items failing it are skipped.
    pub attrs: Option<&'a AttrPredicate>,
}

impl<'a> Filter<'a> {
    /// No restriction.
    pub fn none() -> Self {
        Self::default()
    }

    /// Skip these ids (must be sorted ascending).
    pub fn exclude(mut self, sorted_ids: &'a [u64]) -> Self {
        self.exclude_sorted = sorted_ids;
        self
    }

    /// Keep only items whose attributes satisfy `pred`.
    pub fn with_attrs(mut self, pred: &'a AttrPredicate) -> Self {
        self.attrs = Some(pred);
        self
    }

    /// Whether `id` with `attrs` may be returned.
    #[inline]
    pub fn admits(&self, id: u64, attrs: impl FnOnce() -> &'a [u32]) -> bool {
        if !self.exclude_sorted.is_empty() && self.exclude_sorted.binary_search(&id).is_ok() {
            return false;
        }
        match self.attrs {
            Some(p) => p(attrs()),
            None => true,
        }
    }
}

#[derive(PartialEq)]
struct Entry(f32, u64);
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Entry {
    // reversed so that BinaryHeap's top is the worst kept hit; ties prefer the lower id
    fn cmp(&self, o: &Self) -> Ordering {
        o.0.total_cmp(&self.0).then(self.1.cmp(&o.1))
    }
}

/// Keeps the k best hits seen.
pub struct TopK {
    k: usize,
    heap: BinaryHeap<Entry>,
}

impl TopK {
    /// Room for `k` hits.
    pub fn new(k: usize) -> Self {
        Self {
            k,
            heap: BinaryHeap::with_capacity(k + 1),
        }
    }

    /// The score a new hit must beat to enter (−inf until full).
    #[inline]
    pub fn threshold(&self) -> f32 {
        if self.heap.len() < self.k {
            f32::NEG_INFINITY
        } else {
            self.heap.peek().map_or(f32::NEG_INFINITY, |e| e.0)
        }
    }

    /// Offer a hit.
    #[inline]
    pub fn push(&mut self, id: u64, score: f32) {
        if self.k == 0 || score.is_nan() {
            return;
        }
        if self.heap.len() < self.k {
            self.heap.push(Entry(score, id));
        } else if let Some(top) = self.heap.peek()
            && (score > top.0 || (score == top.0 && id < top.1))
        {
            self.heap.pop();
            self.heap.push(Entry(score, id));
        }
    }

    /// Hits, best first.
    pub fn into_sorted(self) -> Vec<Hit> {
        let mut v: Vec<Hit> = self
            .heap
            .into_iter()
            .map(|e| Hit {
                id: ItemId(e.1),
                score: e.0,
            })
            .collect();
        v.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.id.cmp(&b.id)));
        v
    }
}

pub use crate::kernels::dot;

/// Dot product of f32 `q` with int8 codes `x` (unscaled).
#[inline(always)]
pub fn dot_i8(q: &[f32], x: &[i8]) -> f32 {
    let mut acc = [0f32; 8];
    let (cq, rq) = q.as_chunks::<8>();
    let (cx, rx) = x.as_chunks::<8>();
    for (a, b) in cq.iter().zip(cx) {
        for i in 0..8 {
            acc[i] += a[i] * b[i] as f32;
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (a, b) in rq.iter().zip(rx) {
        s += a * *b as f32;
    }
    s
}

/// Score of a row given `q·x`, `|x|²` and the query's precomputed norm terms.
#[inline]
fn finish(metric: Metric, dot: f32, x2: f32, q_norm: f32, q2: f32) -> f32 {
    match metric {
        Metric::InnerProduct => dot,
        Metric::Cosine => {
            let d = q_norm * x2.sqrt();
            if d > 0.0 { dot / d } else { 0.0 }
        }
        Metric::L2 => -(q2 - 2.0 * dot + x2),
    }
}

/// Most results one search may ask for (`k`, and HNSW's `ef`): past it a search is a
/// typed [`Error::Query`], never an allocation sized by the request.
pub const MAX_K: usize = 1 << 20;

/// [`Error::Query`] naming `what` when `value` is past [`MAX_K`].
pub(crate) fn check_k(what: &str, value: usize) -> Result<()> {
    if value > MAX_K {
        return Err(Error::Query {
            message: format!("{what} = {value} is past the limit of {MAX_K}"),
        });
    }
    Ok(())
}

/// [`Error::Query`] naming the first non-finite value of query `q`.
pub(crate) fn check_finite(q: &[f32]) -> Result<()> {
    match q.iter().position(|v| !v.is_finite()) {
        Some(i) => Err(Error::Query {
            message: format!("query value {} at column {i} is not finite", q[i]),
        }),
        None => Ok(()),
    }
}

impl Snapshot {
    fn check_query(&self, q: &[f32]) -> Result<()> {
        if q.len() != self.dim() {
            return Err(Error::Query {
                message: format!(
                    "query has {} values, the generation's dim is {}",
                    q.len(),
                    self.dim()
                ),
            });
        }
        check_finite(q)
    }

    /// The exact `k` best items for `query` under `metric`, best first.
    pub fn search(
        &self,
        query: &[f32],
        k: usize,
        metric: Metric,
        filter: &Filter,
    ) -> Result<Vec<Hit>> {
        check_k("k", k)?;
        self.check_query(query)?;
        Ok(self
            .search_block(query, k, metric, filter)
            .pop()
            .unwrap_or_default())
    }

    /// [`Snapshot::search`] for `queries.len() / dim` queries, in parallel: each block of
    /// queries is scored against each tile of rows by one GEMM (the generation is read
    /// once per block instead of once per query); the same scan as [`Snapshot::search`]
    /// (a block of one), so the hits are its hits, scores equal up to float rounding
    /// (the GEMM may sum a block's products in another order than a single query's).
    pub fn search_batch(
        &self,
        queries: &[f32],
        k: usize,
        metric: Metric,
        filter: &Filter,
    ) -> Result<Vec<Vec<Hit>>> {
        check_k("k", k)?;
        let d = self.dim();
        if !queries.len().is_multiple_of(d) {
            return Err(Error::Query {
                message: format!(
                    "{} query values are not a multiple of dim {d}",
                    queries.len()
                ),
            });
        }
        for (i, q) in queries.chunks_exact(d).enumerate() {
            self.check_query(q).map_err(|e| Error::Query {
                message: format!("query {i}: {e}"),
            })?;
        }
        let blocks: Vec<Vec<Vec<Hit>>> = queries
            .par_chunks(QUERY_BLOCK * d)
            .map(|qs| self.search_block(qs, k, metric, filter))
            .collect();
        Ok(blocks.into_iter().flatten().collect())
    }

    /// Exact search for the (checked) queries of one block: the one scan of both
    /// [`Snapshot::search`] and [`Snapshot::search_batch`]. Per tile of rows, the
    /// admitted ones (in place when every row of an f32 tile is admitted, else gathered
    /// or decoded from f16 / int8 into one f32 matrix) are scored against every query of
    /// the block by one GEMM, then offered to each query's top-k past its threshold.
    fn search_block(&self, qs: &[f32], k: usize, metric: Metric, filter: &Filter) -> Vec<Vec<Hit>> {
        let d = self.dim();
        let nq = qs.len() / d.max(1);
        let norms: Vec<(f32, f32)> = qs
            .chunks_exact(d.max(1))
            .map(|q| {
                let q2 = dot(q, q);
                (q2.sqrt(), q2)
            })
            .collect();
        let mut tops: Vec<TopK> = norms.iter().map(|_| TopK::new(k)).collect();
        let need_x2 = metric != Metric::InnerProduct;
        let mut rows: Vec<usize> = Vec::with_capacity(ROW_TILE);
        let mut x2s: Vec<f32> = Vec::with_capacity(ROW_TILE);
        // gathered or decoded rows of the tile (allocated on first use)
        let mut tile: Vec<f32> = Vec::new();
        let mut scores = vec![0f32; nq * ROW_TILE];
        for ls in self.segments() {
            let seg = &ls.segment;
            let ids = seg.ids();
            let admits =
                |r: usize| !ls.tombstones.is_deleted(r) && filter.admits(ids[r], || seg.attrs(r));
            for start in (0..ids.len()).step_by(ROW_TILE) {
                let end = (start + ROW_TILE).min(ids.len());
                rows.clear();
                rows.extend((start..end).filter(|&r| admits(r)));
                let len = rows.len();
                if len == 0 {
                    continue;
                }
                let mat: &[f32] = if let Some(data) = seg.f32_data() {
                    if len == end - start {
                        &data[start * d..end * d]
                    } else {
                        tile.clear();
                        for &r in &rows {
                            tile.extend_from_slice(&data[r * d..(r + 1) * d]);
                        }
                        &tile
                    }
                } else if let Some(data) = seg.f16_data() {
                    tile.resize(len * d, 0.0);
                    for (j, &r) in rows.iter().enumerate() {
                        data[r * d..(r + 1) * d]
                            .convert_to_f32_slice(&mut tile[j * d..(j + 1) * d]);
                    }
                    &tile
                } else if let Some((codes, scales)) = seg.int8_data() {
                    tile.clear();
                    for &r in &rows {
                        let s = scales[r];
                        tile.extend(codes[r * d..(r + 1) * d].iter().map(|&c| c as f32 * s));
                    }
                    &tile
                } else {
                    continue;
                };
                x2s.clear();
                if need_x2 {
                    x2s.extend(mat.chunks_exact(d).map(|x| dot(x, x)));
                } else {
                    x2s.resize(len, 0.0);
                }
                crate::kernels::dots_nt(qs, nq, mat, len, d, &mut scores);
                for (i, (top, &(q_norm, q2))) in tops.iter_mut().zip(&norms).enumerate() {
                    let row = &scores[i * len..(i + 1) * len];
                    let mut threshold = top.threshold();
                    if metric == Metric::InnerProduct {
                        // the hot loop: one compare per score, rows looked up on entry only
                        for (j, &score) in row.iter().enumerate() {
                            if score >= threshold {
                                top.push(ids[rows[j]], score);
                                threshold = top.threshold();
                            }
                        }
                        continue;
                    }
                    for ((&s, &r), &x2) in row.iter().zip(&rows).zip(&x2s) {
                        let score = finish(metric, s, x2, q_norm, q2);
                        if score >= threshold {
                            top.push(ids[r], score);
                            threshold = top.threshold();
                        }
                    }
                }
            }
        }
        tops.into_iter().map(TopK::into_sorted).collect()
    }
}

/// Queries per block of a batch search: the rows of one GEMM, sharing each tile.
const QUERY_BLOCK: usize = 512;
/// Rows per tile: the columns of one GEMM (512 KiB of f32 at d = 64).
const ROW_TILE: usize = 2048;
