//! Sparse products on a candle device: the CUDA path of propagation and training (it
//! runs on the CPU device too, which is how it is tested everywhere).
//!
//! Candle has no sparse type, and its `index_add` walks the indices serially inside
//! each thread (one thread per output column: 64 threads for a 64-wide table), which
//! makes a gather + `index_add` product take seconds on Gowalla's 1.6 M non-zeros. So
//! the two sparse kernels are custom ops with their own CUDA code, compiled once per
//! process with NVRTC and cached per device:
//!
//! - [`DeviceCsr::spmm`]: `M X` for a CSR matrix, one warp per output row, lanes over
//!   the columns, no atomics (deterministic);
//! - [`scatter_add_rows`]: `out[ids[k]] += src[k]` for a batch of rows, one thread per
//!   element with `atomicAdd` (rows may repeat; the summation order, so the last bits,
//!   may vary from run to run).
//!
//! On the CPU device the product is [`Csr::spmm`] itself and the scatter a plain loop.

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Device, Layout, Shape, Tensor};

use crate::error::{Error, Result};
use crate::sparse::Csr;

/// A CSR matrix on a device. On the CPU device it is the host [`Csr`] itself and the
/// product is [`Csr::spmm`] (the tuned, work-balanced CPU kernel); on a GPU it is three
/// device tensors and a CUDA kernel.
#[derive(Debug, Clone)]
pub struct DeviceCsr {
    inner: Arc<CsrParts>,
}

#[derive(Debug)]
struct CsrParts {
    n_rows: usize,
    n_cols: usize,
    device: Device,
    data: CsrData,
}

#[derive(Debug)]
enum CsrData {
    /// On the CPU device: the host matrix.
    Host(Csr),
    /// On a GPU: row pointers `(n_rows + 1,)` u32, columns `(nnz,)` u32, values
    /// `(nnz,)` f32.
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    Device {
        row_ptr: Tensor,
        cols: Tensor,
        vals: Tensor,
    },
}

impl DeviceCsr {
    /// Copies `m` to `device`. Fails with [`Error::Shape`] when the matrix has more
    /// than `u32::MAX` non-zeros or rows (the device kernels index with 32 bits).
    pub fn new(m: &Csr, device: &Device) -> Result<Self> {
        let data = if device.is_cpu() {
            CsrData::Host(m.clone())
        } else {
            let nnz = m.nnz();
            if u32::try_from(nnz).is_err() || u32::try_from(m.n_rows()).is_err() {
                return Err(Error::Shape {
                    message: format!(
                        "{} rows and {nnz} non-zeros: the device kernels index with 32 bits",
                        m.n_rows()
                    ),
                });
            }
            let mut row_ptr = Vec::with_capacity(m.n_rows() + 1);
            let mut cols = Vec::with_capacity(nnz);
            let mut vals = Vec::with_capacity(nnz);
            row_ptr.push(0u32);
            for r in 0..m.n_rows() {
                let (c, v) = m.row(r);
                cols.extend_from_slice(c);
                vals.extend_from_slice(v);
                row_ptr.push(cols.len() as u32);
            }
            CsrData::Device {
                row_ptr: Tensor::from_vec(row_ptr, m.n_rows() + 1, device)?,
                cols: Tensor::from_vec(cols, nnz, device)?,
                vals: Tensor::from_vec(vals, nnz, device)?,
            }
        };
        Ok(Self {
            inner: Arc::new(CsrParts {
                n_rows: m.n_rows(),
                n_cols: m.n_cols(),
                device: device.clone(),
                data,
            }),
        })
    }

    /// Rows of the matrix.
    pub fn n_rows(&self) -> usize {
        self.inner.n_rows
    }

    /// Columns of the matrix.
    pub fn n_cols(&self) -> usize {
        self.inner.n_cols
    }

    /// The device the matrix lives on.
    pub fn device(&self) -> &Device {
        &self.inner.device
    }

    /// `M X` for an f32 `x` of shape `(n_cols, d)` on the same device: `(n_rows, d)`.
    pub fn spmm(&self, x: &Tensor) -> Result<Tensor> {
        let (n, _d) = x.dims2()?;
        if n != self.inner.n_cols {
            return Err(Error::Shape {
                message: format!(
                    "x has {n} rows, the matrix has {} columns",
                    self.inner.n_cols
                ),
            });
        }
        check_f32(x, "x")?;
        if !x.device().same_device(self.device()) {
            return Err(Error::Shape {
                message: format!(
                    "x is on {:?}, the matrix on {:?}",
                    x.device().location(),
                    self.device().location()
                ),
            });
        }
        Ok(x.contiguous()?
            .apply_op1_no_bwd(&SpmmOp(self.inner.clone()))?)
    }
}

fn check_f32(t: &Tensor, what: &str) -> Result<()> {
    if t.dtype() != candle_core::DType::F32 {
        return Err(Error::Shape {
            message: format!("{what} is {:?}, the sparse kernels take f32", t.dtype()),
        });
    }
    Ok(())
}

/// `out[ids[k]] += src[k]` into a fresh `(n_rows, d)` zero table: the rows of `src`
/// (`(len, d)` f32) added to the rows named by `ids` (`(len,)` u32), repeats summed.
/// Fails with [`Error::Shape`] on mismatched lengths or dtypes and [`Error::Graph`]
/// when an id is `>= n_rows` (checked on the host before anything runs).
pub fn scatter_add_rows(n_rows: usize, ids: &Tensor, src: &Tensor) -> Result<Tensor> {
    let len = ids.dims1()?;
    let (len2, _d) = src.dims2()?;
    if len != len2 {
        return Err(Error::Shape {
            message: format!("{len} ids for {len2} source rows"),
        });
    }
    if ids.dtype() != candle_core::DType::U32 {
        return Err(Error::Shape {
            message: format!("ids are {:?}, expected u32", ids.dtype()),
        });
    }
    check_f32(src, "src")?;
    if len > 0 {
        let max = ids.max(0)?.to_scalar::<u32>()?;
        if max as usize >= n_rows {
            return Err(Error::Graph {
                message: format!("row id {max} out of range for {n_rows} rows"),
            });
        }
    }
    Ok(ids
        .contiguous()?
        .apply_op2_no_bwd(&src.contiguous()?, &ScatterOp { n_rows })?)
}

/// [`DeviceCsr::spmm`] as a candle op on the dense operand.
struct SpmmOp(Arc<CsrParts>);

impl CustomOp1 for SpmmOp {
    fn name(&self) -> &'static str {
        "mosaic-csr-spmm"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (_, d) = l.shape().dims2()?;
        let x = mosaic_device::ops::cpu_slice::<f32>(s, l)?;
        let m = &self.0;
        let CsrData::Host(csr) = &m.data else {
            candle_core::bail!("sparse op: the matrix is on a GPU, the operand on the CPU");
        };
        let mut out = vec![0f32; m.n_rows * d];
        if d > 0 {
            csr.spmm(x, d, &mut out)
                .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        }
        Ok((CpuStorage::F32(out), Shape::from((m.n_rows, d))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        cuda::spmm(&self.0, s, l)
    }
}

/// [`scatter_add_rows`] as a candle op on (ids, src).
struct ScatterOp {
    n_rows: usize,
}

impl CustomOp2 for ScatterOp {
    fn name(&self) -> &'static str {
        "mosaic-scatter-add-rows"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let ids = mosaic_device::ops::cpu_slice::<u32>(s1, l1)?;
        let src = mosaic_device::ops::cpu_slice::<f32>(s2, l2)?;
        let (_, d) = l2.shape().dims2()?;
        let mut out = vec![0f32; self.n_rows * d];
        for (k, &r) in ids.iter().enumerate() {
            let r = r as usize;
            if r >= self.n_rows {
                candle_core::bail!("scatter: row {r} out of range for {}", self.n_rows);
            }
            for (o, &x) in out[r * d..(r + 1) * d]
                .iter_mut()
                .zip(&src[k * d..(k + 1) * d])
            {
                *o += x;
            }
        }
        Ok((CpuStorage::F32(out), Shape::from((self.n_rows, d))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        cuda::scatter(self.n_rows, s1, l1, s2, l2)
    }
}

#[cfg(feature = "cuda")]
mod cuda {
    //! The CUDA kernels, compiled with NVRTC on first use (`mosaic_device::kernels`).

    use candle_core::backend::BackendStorage;
    use candle_core::cuda_backend::WrapErr;
    use candle_core::cuda_backend::cudarc::driver::{LaunchConfig, PushKernelArg};
    use candle_core::{CudaStorage, Layout, Shape, Storage, Tensor};

    use super::{CsrData, CsrParts};

    const MODULE: &str = "mosaic_taste_graph_sparse";

    const SOURCE: &str = r#"
extern "C" __global__ void mosaic_csr_spmm_f32(
    const unsigned int* __restrict__ row_ptr, const unsigned int* __restrict__ cols,
    const float* __restrict__ vals, const float* __restrict__ x, float* __restrict__ out,
    unsigned int n_rows, unsigned int d) {
  // One warp per output row; the lanes stride over the columns.
  unsigned int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
  unsigned int lane = threadIdx.x % 32;
  if (row >= n_rows) return;
  unsigned int start = row_ptr[row], end = row_ptr[row + 1];
  for (unsigned int c = lane; c < d; c += 32) {
    float acc = 0.0f;
    for (unsigned int j = start; j < end; ++j) {
      acc += vals[j] * x[(size_t)cols[j] * d + c];
    }
    out[(size_t)row * d + c] = acc;
  }
}

extern "C" __global__ void mosaic_scatter_add_rows_f32(
    const unsigned int* __restrict__ ids, const float* __restrict__ src,
    float* __restrict__ out, unsigned int n_ids, unsigned int d) {
  size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= (size_t)n_ids * d) return;
  size_t k = i / d, c = i % d;
  atomicAdd(&out[(size_t)ids[k] * d + c], src[i]);
}
"#;

    fn u32_slice<'a>(
        t: &'a Storage,
        what: &str,
    ) -> candle_core::Result<&'a candle_core::cuda_backend::cudarc::driver::CudaSlice<u32>> {
        match t {
            Storage::Cuda(c) => c.as_cuda_slice::<u32>(),
            _ => candle_core::bail!("sparse op: {what} is not on the CUDA device"),
        }
    }

    fn f32_slice<'a>(
        t: &'a Storage,
        what: &str,
    ) -> candle_core::Result<&'a candle_core::cuda_backend::cudarc::driver::CudaSlice<f32>> {
        match t {
            Storage::Cuda(c) => c.as_cuda_slice::<f32>(),
            _ => candle_core::bail!("sparse op: {what} is not on the CUDA device"),
        }
    }

    fn storage(t: &Tensor) -> candle_core::StorageRef<'_> {
        t.storage_and_layout().0
    }

    pub(super) fn spmm(
        m: &CsrParts,
        s: &CudaStorage,
        l: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let dev = s.device().clone();
        let (_, d) = l.shape().dims2()?;
        let (a, b) = mosaic_device::ops::offsets(l)?;
        let x = s.as_cuda_slice::<f32>()?.slice(a..b);
        let CsrData::Device {
            row_ptr,
            cols,
            vals,
        } = &m.data
        else {
            candle_core::bail!("sparse op: the matrix is on the CPU, the operand on a GPU");
        };
        let (rp, cols, vals) = (storage(row_ptr), storage(cols), storage(vals));
        let (rp, cols, vals) = (
            u32_slice(&rp, "row_ptr")?,
            u32_slice(&cols, "cols")?,
            f32_slice(&vals, "vals")?,
        );
        let mut out = dev.alloc_zeros::<f32>(m.n_rows * d)?;
        if m.n_rows > 0 && d > 0 {
            let func =
                mosaic_device::kernels::function(&dev, MODULE, SOURCE, "mosaic_csr_spmm_f32")?;
            let rows_per_block = 8u32;
            let cfg = LaunchConfig {
                grid_dim: ((m.n_rows as u32).div_ceil(rows_per_block), 1, 1),
                block_dim: (32 * rows_per_block, 1, 1),
                shared_mem_bytes: 0,
            };
            let (n_rows, d32) = (m.n_rows as u32, d as u32);
            let stream = dev.cuda_stream();
            let mut builder = stream.launch_builder(&func);
            builder
                .arg(rp)
                .arg(cols)
                .arg(vals)
                .arg(&x)
                .arg(&mut out)
                .arg(&n_rows)
                .arg(&d32);
            // SAFETY: the argument list matches the kernel's signature; `row_ptr` has
            // n_rows + 1 entries ending at nnz, every column index is < n_cols (both
            // checked when the CSR was built), `x` holds n_cols × d values (checked by
            // `DeviceCsr::spmm`) and `out` n_rows × d.
            unsafe { builder.launch(cfg) }.w()?;
        }
        Ok((
            CudaStorage::wrap_cuda_slice(out, dev),
            Shape::from((m.n_rows, d)),
        ))
    }

    pub(super) fn scatter(
        n_rows: usize,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let dev = s2.device().clone();
        let (n_ids, d) = l2.shape().dims2()?;
        let (a1, b1) = mosaic_device::ops::offsets(l1)?;
        let (a2, b2) = mosaic_device::ops::offsets(l2)?;
        let ids = s1.as_cuda_slice::<u32>()?.slice(a1..b1);
        let src = s2.as_cuda_slice::<f32>()?.slice(a2..b2);
        let mut out = dev.alloc_zeros::<f32>(n_rows * d)?;
        let total = n_ids * d;
        if total > 0 {
            if u32::try_from(total).is_err() {
                candle_core::bail!("scatter: {total} elements exceed 32-bit indexing");
            }
            let func = mosaic_device::kernels::function(
                &dev,
                MODULE,
                SOURCE,
                "mosaic_scatter_add_rows_f32",
            )?;
            let cfg = LaunchConfig::for_num_elems(total as u32);
            let (n_ids, d32) = (n_ids as u32, d as u32);
            let stream = dev.cuda_stream();
            let mut builder = stream.launch_builder(&func);
            builder
                .arg(&ids)
                .arg(&src)
                .arg(&mut out)
                .arg(&n_ids)
                .arg(&d32);
            // SAFETY: the argument list matches the kernel's signature; every id is
            // < n_rows (checked on the host by `scatter_add_rows`), `src` holds
            // n_ids × d values and `out` n_rows × d.
            unsafe { builder.launch(cfg) }.w()?;
        }
        Ok((
            CudaStorage::wrap_cuda_slice(out, dev),
            Shape::from((n_rows, d)),
        ))
    }
}
