//! Batch exact search by matrix product on a compute device.
//!
//! [`DeviceMatrix`] holds the live vectors of one snapshot as f32 matrices (chunks of
//! [`CHUNK_ROWS`] rows) on a candle [`Device`] — the CPU, or a CUDA GPU with the `cuda`
//! feature. A batch of B queries is scored against a chunk with one `B × d` by `d × n`
//! product (blocked GEMM: on the CPU far faster per query than B scans, on the GPU the
//! whole point). Without filters and for `k <=` [`DEVICE_TOPK_MAX`], each query's k best
//! rows of the chunk are selected where the scores are (a custom op: one CUDA block per
//! query on the GPU, compiled at first use with NVRTC; row-parallel on the CPU), and only
//! `B × k` candidates come back to the host; otherwise the whole score block comes back
//! and filters are checked for the scores that would enter. Either way a bounded heap per
//! query merges the chunks, and results equal [`Snapshot::search`]'s (same metrics, same
//! tie order — score, then smaller id — f16/int8 rows decoded to f32 once at build time).

use candle_core::{CpuStorage, CustomOp2, Device, Layout, Shape, Tensor};
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::search::{Filter, Hit, TopK};
use crate::store::Snapshot;
use crate::types::Metric;

/// Rows per device matrix chunk (bounds the score block of one product).
pub const CHUNK_ROWS: usize = 32_768;

/// Largest k selected on the device; a larger k, or a search with filters, brings every
/// score back to the host.
pub const DEVICE_TOPK_MAX: usize = 32;

struct Chunk {
    /// `rows × dim` (unit rows for cosine).
    x: Tensor,
    /// The rows' ids as `(rows,)` i64 holding the u64 bits (the device tie-break).
    ids_dev: Tensor,
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
            let id_bits: Vec<i64> = part.iter().map(|r| r.0.0 as i64).collect();
            chunks.push(Chunk {
                x: Tensor::from_vec(rows, (part.len(), d), device)?,
                ids_dev: Tensor::from_vec(id_bits, part.len(), device)?,
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
            built_from: (snap.generation().to_string(), snap.version()),
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
        if (snap.generation(), snap.version()) != (self.built_from.0.as_str(), self.built_from.1) {
            return Err(Error::Query {
                message: format!(
                    "the matrix was built from generation {:?} at version {}, the snapshot is {:?} at version {}",
                    self.built_from.0,
                    self.built_from.1,
                    snap.generation(),
                    snap.version()
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
        crate::search::check_k("k", k)?;
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
        let select_on_device = (1..=DEVICE_TOPK_MAX).contains(&k)
            && filter.exclude_sorted.is_empty()
            && filter.attrs.is_none();
        for c in &self.chunks {
            let mut s = qt.matmul(&c.x.t()?)?;
            if let Some(x2) = &c.x2 {
                // −|q − x|² = 2 q·x − |x|² − |q|² (|q|² added on the host).
                s = (s * 2.0)?.broadcast_sub(x2)?;
            }
            let shift = |qi: usize| {
                if self.metric == Metric::L2 {
                    q2[qi]
                } else {
                    0.0
                }
            };
            if select_on_device {
                let kk = k.min(c.ids.len());
                let packed: Vec<u32> = s
                    .contiguous()?
                    .apply_op2_no_bwd(&c.ids_dev, &RowTopK { k: kk })?
                    .flatten_all()?
                    .to_vec1()?;
                for (qi, top) in tops.iter_mut().enumerate() {
                    let row = &packed[qi * 2 * kk..(qi + 1) * 2 * kk];
                    for j in 0..kk {
                        let col = row[j] as usize;
                        if col >= c.ids.len() {
                            break;
                        }
                        top.push(c.ids[col], f32::from_bits(row[kk + j]) - shift(qi));
                    }
                }
                continue;
            }
            let scores: Vec<Vec<f32>> = s.to_vec2()?;
            for (qi, (row, top)) in scores.iter().zip(tops.iter_mut()).enumerate() {
                let shift = shift(qi);
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

/// Per row of a `(B, n)` f32 score block, the `k` best columns — larger score first,
/// then smaller id (`ids`: `(n,)` i64 holding u64 bits) — as a `(B, 2k)` u32 block: the
/// k column indices (`u32::MAX` past the row's end), then the k scores' f32 bits.
struct RowTopK {
    k: usize,
}

/// Whether (v1, id1) ranks before (v2, id2): larger score, then smaller id.
#[inline]
fn before(v1: f32, id1: u64, v2: f32, id2: u64) -> bool {
    v1 > v2 || (v1 == v2 && id1 < id2)
}

impl CustomOp2 for RowTopK {
    fn name(&self) -> &'static str {
        "mosaic-row-topk"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (b, n) = l1.shape().dims2()?;
        let scores = mosaic_device::ops::cpu_slice::<f32>(s1, l1)?;
        let ids = mosaic_device::ops::cpu_slice::<i64>(s2, l2)?;
        let k = self.k;
        let mut out = vec![0u32; b * 2 * k];
        out.par_chunks_mut(2 * k.max(1))
            .zip(scores.par_chunks(n.max(1)))
            .for_each(|(o, row)| {
                // (score, id, column), best first.
                let mut best: Vec<(f32, u64, u32)> = Vec::with_capacity(k + 1);
                for (c, &v) in row.iter().enumerate() {
                    let id = ids[c] as u64;
                    if best.len() == k {
                        let &(lv, lid, _) = &best[k - 1];
                        if !before(v, id, lv, lid) {
                            continue;
                        }
                        best.pop();
                    }
                    let at = best
                        .iter()
                        .position(|&(bv, bid, _)| before(v, id, bv, bid))
                        .unwrap_or(best.len());
                    best.insert(at, (v, id, c as u32));
                }
                for j in 0..k {
                    let (v, _, c) =
                        best.get(j)
                            .copied()
                            .unwrap_or((f32::NEG_INFINITY, 0, u32::MAX));
                    o[j] = c;
                    o[k + j] = v.to_bits();
                }
            });
        Ok((CpuStorage::U32(out), Shape::from((b, 2 * k))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        cuda::row_topk(self.k, s1, l1, s2, l2)
    }
}

#[cfg(feature = "cuda")]
mod cuda {
    //! The row top-k kernel, compiled with NVRTC on first use (`mosaic_device::kernels`).

    use candle_core::backend::BackendStorage;
    use candle_core::cuda_backend::WrapErr;
    use candle_core::cuda_backend::cudarc::driver::{LaunchConfig, PushKernelArg};
    use candle_core::{CudaStorage, Layout, Shape};

    const MODULE: &str = "mosaic_embed_store_topk";
    const THREADS: u32 = 128;

    const SOURCE: &str = r#"
#define MAXK 32
__device__ __forceinline__ bool before(float v1, unsigned long long i1, float v2, unsigned long long i2) {
  return v1 > v2 || (v1 == v2 && i1 < i2);
}
// Offers column c (score v) to the sorted list (tv, tc) of *cnt <= k entries.
__device__ __forceinline__ void offer(float* tv, unsigned int* tc, unsigned int* cnt,
    unsigned int k, float v, unsigned int c, const unsigned long long* ids) {
  unsigned long long id = ids[c];
  if (*cnt == k && !before(v, id, tv[k - 1], ids[tc[k - 1]])) return;
  unsigned int j = *cnt < k ? (*cnt)++ : k - 1;
  while (j > 0 && before(v, id, tv[j - 1], ids[tc[j - 1]])) {
    tv[j] = tv[j - 1]; tc[j] = tc[j - 1]; --j;
  }
  tv[j] = v; tc[j] = c;
}
// One block per row: each thread keeps its k best of a strided slice of the row, then
// thread 0 merges the block's candidates.
extern "C" __global__ void mosaic_row_topk_f32(
    const float* __restrict__ scores, const unsigned long long* __restrict__ ids,
    unsigned int n, unsigned int k, unsigned int* __restrict__ out) {
  extern __shared__ unsigned char smem[];
  float* sv = (float*)smem;
  unsigned int* sc = (unsigned int*)(sv + blockDim.x * k);
  const float* row = scores + (size_t)blockIdx.x * n;
  float tv[MAXK];
  unsigned int tc[MAXK];
  unsigned int cnt = 0;
  for (unsigned int c = threadIdx.x; c < n; c += blockDim.x) {
    offer(tv, tc, &cnt, k, row[c], c, ids);
  }
  for (unsigned int j = 0; j < k; ++j) {
    sv[threadIdx.x * k + j] = j < cnt ? tv[j] : 0.0f;
    sc[threadIdx.x * k + j] = j < cnt ? tc[j] : 0xFFFFFFFFu;
  }
  __syncthreads();
  if (threadIdx.x != 0) return;
  cnt = 0;
  for (unsigned int t = 0; t < blockDim.x * k; ++t) {
    if (sc[t] != 0xFFFFFFFFu) offer(tv, tc, &cnt, k, sv[t], sc[t], ids);
  }
  unsigned int* o = out + (size_t)blockIdx.x * 2 * k;
  for (unsigned int j = 0; j < k; ++j) {
    o[j] = j < cnt ? tc[j] : 0xFFFFFFFFu;
    o[k + j] = __float_as_uint(j < cnt ? tv[j] : -__int_as_float(0x7f800000));
  }
}
"#;

    pub(super) fn row_topk(
        k: usize,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let dev = s1.device().clone();
        let (b, n) = l1.shape().dims2()?;
        if k == 0 || k > super::DEVICE_TOPK_MAX || l2.shape().dims1()? != n {
            candle_core::bail!("row top-k: k {k} or ids for {n} columns out of range");
        }
        let (a1, b1) = mosaic_device::ops::offsets(l1)?;
        let (a2, b2) = mosaic_device::ops::offsets(l2)?;
        let scores = s1.as_cuda_slice::<f32>()?.slice(a1..b1);
        let ids = s2.as_cuda_slice::<i64>()?.slice(a2..b2);
        let mut out = dev.alloc_zeros::<u32>(b * 2 * k)?;
        if b > 0 {
            let func =
                mosaic_device::kernels::function(&dev, MODULE, SOURCE, "mosaic_row_topk_f32")?;
            let cfg = LaunchConfig {
                grid_dim: (b as u32, 1, 1),
                block_dim: (THREADS, 1, 1),
                shared_mem_bytes: THREADS * k as u32 * 8,
            };
            let (n32, k32) = (n as u32, k as u32);
            let stream = dev.cuda_stream();
            let mut builder = stream.launch_builder(&func);
            builder
                .arg(&scores)
                .arg(&ids)
                .arg(&n32)
                .arg(&k32)
                .arg(&mut out);
            // SAFETY: the arguments match the kernel's signature; `scores` holds b × n
            // values, `ids` n, `out` b × 2k; k <= MAXK and the shared block is
            // THREADS × k × 8 bytes, as the kernel indexes it.
            unsafe { builder.launch(cfg) }.w()?;
        }
        Ok((
            CudaStorage::wrap_cuda_slice(out, dev),
            Shape::from((b, 2 * k)),
        ))
    }
}
