//! Batch exact search by matrix product on a compute device.
//!
//! [`DeviceMatrix`] holds the live vectors of one snapshot as f32 matrices (chunks of
//! [`CHUNK_ROWS`] rows) on a candle [`Device`] — the CPU, or a CUDA GPU with the `cuda`
//! feature. A batch of B queries is scored against a chunk with one `B × d` by `d × n`
//! product (blocked GEMM: on the CPU far faster per query than B scans, on the GPU the
//! whole point), the scores come back to the host, and per query a bounded heap keeps
//! the k best admissible items, checking filters only for scores that would enter. Results
//! equal [`Snapshot::search`]'s (same metrics, same tie order, f16/int8 rows decoded to
//! f32 once at build time).

use candle_core::{Device, Tensor};

use crate::error::{Error, Result};
use crate::search::{Filter, Hit, TopK};
use crate::store::Snapshot;
use crate::types::Metric;

/// Rows per device matrix chunk (bounds the score block of one product).
pub const CHUNK_ROWS: usize = 32_768;

struct Chunk {
    /// `rows × dim` (unit rows for cosine).
    x: Tensor,
    /// `1 × rows` squared norms (L2 only).
    x2: Option<Tensor>,
    ids: Vec<u64>,
    /// [segment, row] of each matrix row in the snapshot (for attribute filters).
    place: Vec<[u32; 2]>,
}

/// The live vectors of a snapshot on a device, for batch exact search.
pub struct DeviceMatrix {
    device: Device,
    metric: Metric,
    dim: usize,
    len: usize,
    chunks: Vec<Chunk>,
    built_from: (String, u64),
}

impl std::fmt::Debug for DeviceMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceMatrix")
            .field("device", &self.device)
            .field("metric", &self.metric)
            .field("rows", &self.len)
            .field("dim", &self.dim)
            .finish()
    }
}

fn normalize(v: &mut [f32]) {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if n > 0.0 {
        v.iter_mut().for_each(|x| *x /= n);
    }
}

impl DeviceMatrix {
    /// Copies every live row of `snap` to `device` (decoded to f32; normalised for
    /// cosine).
    pub fn build(snap: &Snapshot, metric: Metric, device: &Device) -> Result<Self> {
        let d = snap.dim();
        let live: Vec<_> = snap.iter_live().collect();
        let mut chunks = Vec::with_capacity(live.len().div_ceil(CHUNK_ROWS));
        for part in live.chunks(CHUNK_ROWS) {
            let mut rows = vec![0f32; part.len() * d];
            for (k, &(_, s, r)) in part.iter().enumerate() {
                let v = &mut rows[k * d..(k + 1) * d];
                snap.segments()[s].segment.read_vector(r, v)?;
                if metric == Metric::Cosine {
                    normalize(v);
                }
            }
            let x2 = if metric == Metric::L2 {
                let n: Vec<f32> = rows
                    .chunks_exact(d)
                    .map(|r| r.iter().map(|x| x * x).sum())
                    .collect();
                Some(Tensor::from_vec(n, (1, part.len()), device)?)
            } else {
                None
            };
            chunks.push(Chunk {
                x: Tensor::from_vec(rows, (part.len(), d), device)?,
                x2,
                ids: part.iter().map(|r| r.0.0).collect(),
                place: part.iter().map(|&(_, s, r)| [s as u32, r as u32]).collect(),
            });
        }
        Ok(Self {
            device: device.clone(),
            metric,
            dim: d,
            len: live.len(),
            chunks,
            built_from: (snap.generation().to_string(), snap.opstamp()),
        })
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.len
    }
    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// The device holding the rows.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The exact `k` best admissible items for each of the `queries.len() / dim`
    /// queries (row-major), best first — [`Snapshot::search`] for a whole batch.
    /// `snap` must be the snapshot the matrix was built from.
    pub fn search_batch(
        &self,
        snap: &Snapshot,
        queries: &[f32],
        k: usize,
        filter: &Filter,
    ) -> Result<Vec<Vec<Hit>>> {
        let d = self.dim;
        if (snap.generation(), snap.opstamp()) != (self.built_from.0.as_str(), self.built_from.1) {
            return Err(Error::Query {
                message: format!(
                    "the matrix was built from generation {:?} at commit {}, the snapshot is {:?} at commit {}",
                    self.built_from.0,
                    self.built_from.1,
                    snap.generation(),
                    snap.opstamp()
                ),
            });
        }
        if !queries.len().is_multiple_of(d) {
            return Err(Error::Query {
                message: format!(
                    "{} query values are not a multiple of dim {d}",
                    queries.len()
                ),
            });
        }
        if let Some(i) = queries.iter().position(|v| !v.is_finite()) {
            return Err(Error::Query {
                message: format!(
                    "query {} has a non-finite value {} at column {}",
                    i / d,
                    queries[i],
                    i % d
                ),
            });
        }
        let b = queries.len() / d;
        if b == 0 {
            return Ok(Vec::new());
        }
        let mut q = queries.to_vec();
        let q2: Vec<f32> = q
            .chunks_exact(d)
            .map(|r| r.iter().map(|x| x * x).sum())
            .collect();
        if self.metric == Metric::Cosine {
            q.chunks_exact_mut(d).for_each(normalize);
        }
        let qt = Tensor::from_vec(q, (b, d), &self.device)?;
        let mut tops: Vec<TopK> = (0..b).map(|_| TopK::new(k)).collect();
        for c in &self.chunks {
            let mut s = qt.matmul(&c.x.t()?)?;
            if let Some(x2) = &c.x2 {
                // −|q − x|² = 2 q·x − |x|² − |q|² (|q|² added on the host).
                s = (s * 2.0)?.broadcast_sub(x2)?;
            }
            let scores: Vec<Vec<f32>> = s.to_vec2()?;
            for (qi, (row, top)) in scores.iter().zip(tops.iter_mut()).enumerate() {
                let shift = if self.metric == Metric::L2 {
                    q2[qi]
                } else {
                    0.0
                };
                for (r, &v) in row.iter().enumerate() {
                    let v = v - shift;
                    if v < top.threshold() {
                        continue;
                    }
                    let [sg, sr] = c.place[r];
                    let seg = &snap.segments()[sg as usize];
                    let id = c.ids[r];
                    if filter.admits(id, || seg.segment.attrs(sr as usize)) {
                        top.push(id, v);
                    }
                }
            }
        }
        Ok(tops.into_iter().map(TopK::into_sorted).collect())
    }
}
