//! Compressed sparse row matrices and their products with dense row-major matrices.
//!
//! Candle has no sparse type, so the propagation `Â·X` of LightGCN is written here: each
//! output row is the weighted sum of the input rows its non-zeros point at, accumulated
//! in registers for the usual widths (8, 16, 32, 64, 128) and written once. Rows are
//! split into chunks of about equal work (non-zeros plus rows) that rayon spreads over
//! the threads of the current pool; every row is computed by exactly one thread with
//! the same kernel as the serial path, so parallel and serial results are bit-identical.
//!
//! The kernels are compiled twice, for the baseline target and with AVX2+FMA, and the
//! latter is picked at first use on CPUs that have both (`MOSAIC_PORTABLE_KERNELS=1`
//! forces the portable code).

use std::ops::Range;
use std::sync::OnceLock;

use rayon::prelude::*;

use crate::error::{Error, Result};

/// Marks a node that has no row in a compact (sparse-input) matrix.
pub const NO_SLOT: u32 = u32::MAX;

/// A sparse matrix in compressed sparse row form with `f32` values.
#[derive(Debug, Clone, PartialEq)]
pub struct Csr {
    n_rows: usize,
    n_cols: usize,
    row_ptr: Vec<usize>,
    col: Vec<u32>,
    val: Vec<f32>,
    /// Row boundaries of the parallel work chunks: `parts[k]..parts[k + 1]`.
    parts: Vec<usize>,
}

/// Work (non-zeros + rows) per parallel chunk; small enough for rayon to balance the
/// skewed degrees of interaction graphs, large enough to amortise scheduling.
const CHUNK_WORK: usize = 16 * 1024;

fn partition(row_ptr: &[usize]) -> Vec<usize> {
    let n_rows = row_ptr.len() - 1;
    let mut parts = vec![0];
    let mut start_work = 0;
    for r in 0..n_rows {
        let work = row_ptr[r + 1] + (r + 1);
        if work - start_work >= CHUNK_WORK {
            parts.push(r + 1);
            start_work = work;
        }
    }
    if *parts.last().unwrap_or(&0) != n_rows {
        parts.push(n_rows);
    }
    parts
}

impl Csr {
    /// A matrix from its CSR arrays, validated: `row_ptr` has `n_rows + 1` entries,
    /// starts at 0, never decreases and ends at `col.len() == val.len()`; every column
    /// is below `n_cols`.
    pub fn from_parts(
        n_rows: usize,
        n_cols: usize,
        row_ptr: Vec<usize>,
        col: Vec<u32>,
        val: Vec<f32>,
    ) -> Result<Self> {
        let bad = |message: String| Err(Error::Graph { message });
        if row_ptr.len() != n_rows + 1 {
            return bad(format!(
                "row_ptr has {} entries, expected n_rows + 1 = {}",
                row_ptr.len(),
                n_rows + 1
            ));
        }
        if row_ptr[0] != 0 || row_ptr.windows(2).any(|w| w[0] > w[1]) {
            return bad("row_ptr must start at 0 and never decrease".into());
        }
        if row_ptr[n_rows] != col.len() || col.len() != val.len() {
            return bad(format!(
                "row_ptr ends at {}, with {} columns and {} values",
                row_ptr[n_rows],
                col.len(),
                val.len()
            ));
        }
        if let Some(c) = col.iter().find(|&&c| c as usize >= n_cols) {
            return bad(format!("column {c} out of range for {n_cols} columns"));
        }
        Ok(Self::from_parts_unchecked(
            n_rows, n_cols, row_ptr, col, val,
        ))
    }

    /// [`Csr::from_parts`] without the checks, for arrays built correctly in this crate.
    pub(crate) fn from_parts_unchecked(
        n_rows: usize,
        n_cols: usize,
        row_ptr: Vec<usize>,
        col: Vec<u32>,
        val: Vec<f32>,
    ) -> Self {
        let parts = partition(&row_ptr);
        Csr {
            n_rows,
            n_cols,
            row_ptr,
            col,
            val,
            parts,
        }
    }

    /// Number of rows.
    pub fn n_rows(&self) -> usize {
        self.n_rows
    }

    /// Number of columns.
    pub fn n_cols(&self) -> usize {
        self.n_cols
    }

    /// Number of stored non-zeros.
    pub fn nnz(&self) -> usize {
        self.col.len()
    }

    /// Row `r`'s columns and values, or `None` past the last row.
    pub fn row_entries(&self, r: usize) -> Option<(&[u32], &[f32])> {
        (r < self.n_rows).then(|| self.row(r))
    }

    /// The positions of row `r`'s entries in the column and value arrays (`r < n_rows`).
    pub(crate) fn row_range(&self, r: usize) -> Range<usize> {
        self.row_ptr[r]..self.row_ptr[r + 1]
    }

    /// Row `r`'s columns and values (`r < n_rows`).
    pub(crate) fn row(&self, r: usize) -> (&[u32], &[f32]) {
        let range = self.row_range(r);
        (&self.col[range.clone()], &self.val[range])
    }

    /// The columns whose input rows to prefetch while the consecutive-row passes
    /// compute row `r`: those [`PREFETCH_AHEAD`] entries after each of its entries,
    /// running on into the rows computed next.
    #[inline]
    fn ahead(&self, r: usize) -> &[u32] {
        let start = self.row_ptr[r] + PREFETCH_AHEAD;
        self.col.get(start..).unwrap_or(&[])
    }

    /// The matrix as a dense row-major `n_rows × n_cols` array (for small matrices).
    pub fn to_dense(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.n_rows * self.n_cols];
        for r in 0..self.n_rows {
            let (cols, vals) = self.row(r);
            for (&c, &v) in cols.iter().zip(vals) {
                out[r * self.n_cols + c as usize] += v;
            }
        }
        out
    }

    /// The symmetric permutation `P A Pᵀ` of a square matrix: row and column `k` of
    /// the result are row and column `order[k]` of `self`. `order` must be a
    /// permutation of `0..n_rows`.
    pub fn permuted(&self, order: &[u32]) -> Result<Csr> {
        let n = self.n_rows;
        if self.n_cols != n || order.len() != n {
            return Err(Error::Shape {
                message: format!(
                    "permuting a {} x {} matrix with an order of {} entries",
                    self.n_rows,
                    self.n_cols,
                    order.len()
                ),
            });
        }
        let mut pos = vec![NO_SLOT; n];
        for (k, &v) in order.iter().enumerate() {
            match pos.get_mut(v as usize) {
                Some(p) if *p == NO_SLOT => *p = k as u32,
                _ => {
                    return Err(Error::Shape {
                        message: format!(
                            "order is not a permutation: {v} repeats or is out of range"
                        ),
                    });
                }
            }
        }
        let mut row_ptr = Vec::with_capacity(n + 1);
        let mut col = Vec::with_capacity(self.nnz());
        let mut val = Vec::with_capacity(self.nnz());
        let mut entries: Vec<(u32, f32)> = Vec::new();
        row_ptr.push(0);
        for &old in order {
            let (cs, vs) = self.row(old as usize);
            entries.clear();
            entries.extend(cs.iter().zip(vs).map(|(&c, &v)| (pos[c as usize], v)));
            entries.sort_unstable_by_key(|e| e.0);
            for &(c, v) in &entries {
                col.push(c);
                val.push(v);
            }
            row_ptr.push(col.len());
        }
        Ok(Self::from_parts_unchecked(n, n, row_ptr, col, val))
    }

    /// Row boundaries of the parallel work chunks.
    pub(crate) fn parts(&self) -> &[usize] {
        &self.parts
    }

    fn check(&self, what: &str, len: usize, rows: usize, d: usize) -> Result<()> {
        if d == 0 {
            return Err(Error::Shape {
                message: "width d must be at least 1".into(),
            });
        }
        if len != rows * d {
            return Err(Error::Shape {
                message: format!(
                    "{what} has {len} values, expected {rows} rows x {d} = {}",
                    rows * d
                ),
            });
        }
        Ok(())
    }

    /// `out = self · x` on the current rayon pool; `x` is `n_cols × d`, `out` is
    /// `n_rows × d`, both row-major.
    pub fn spmm(&self, x: &[f32], d: usize, out: &mut [f32]) -> Result<()> {
        self.check("x", x.len(), self.n_cols, d)?;
        self.check("out", out.len(), self.n_rows, d)?;
        let k = kernels();
        split_rows_mut(out, d, &self.parts)
            .into_par_iter()
            .zip(self.parts.par_windows(2))
            .for_each(|(o, w)| {
                for (r, orow) in (w[0]..w[1]).zip(o.chunks_exact_mut(d)) {
                    let (cols, vals) = self.row(r);
                    (k.dense)(cols, vals, self.ahead(r), x, d, orow);
                }
            });
        Ok(())
    }

    /// [`Csr::spmm`] on the calling thread only.
    pub fn spmm_serial(&self, x: &[f32], d: usize, out: &mut [f32]) -> Result<()> {
        self.check("x", x.len(), self.n_cols, d)?;
        self.check("out", out.len(), self.n_rows, d)?;
        let k = kernels();
        for (r, orow) in out.chunks_exact_mut(d).enumerate() {
            let (cols, vals) = self.row(r);
            (k.dense)(cols, vals, self.ahead(r), x, d, orow);
        }
        Ok(())
    }

    /// Selected rows of `self · x`: `out[k] = (self · x)[rows[k]]`, `out` is
    /// `rows.len() × d`. Rows may repeat.
    pub fn spmm_rows(&self, rows: &[u32], x: &[f32], d: usize, out: &mut [f32]) -> Result<()> {
        self.check("x", x.len(), self.n_cols, d)?;
        self.check("out", out.len(), rows.len(), d)?;
        if let Some(r) = rows.iter().find(|&&r| r as usize >= self.n_rows) {
            return Err(Error::Shape {
                message: format!("row {r} out of range for {} rows", self.n_rows),
            });
        }
        out.par_chunks_mut(d * 64)
            .zip(rows.par_chunks(64))
            .for_each(|(o, rs)| {
                for (k, (&r, orow)) in rs.iter().zip(o.chunks_exact_mut(d)).enumerate() {
                    let next = rs.get(k + 1).map(|&n| n as usize);
                    self.row_product_then(r as usize, next, x, d, orow);
                }
            });
        Ok(())
    }

    /// `out = self · x` where `x` is mostly zero and given compactly: row `c` of `x` is
    /// `xc[slot[c]]` when `slot[c] != NO_SLOT`, else zero. `slot` has `n_cols` entries,
    /// `xc` is `(max slot + 1) × d`, `out` is `n_rows × d`.
    pub fn spmm_sparse_input(
        &self,
        slot: &[u32],
        xc: &[f32],
        d: usize,
        out: &mut [f32],
    ) -> Result<()> {
        self.check_slots(slot, xc, d)?;
        self.check("out", out.len(), self.n_rows, d)?;
        split_rows_mut(out, d, &self.parts)
            .into_par_iter()
            .zip(self.parts.par_windows(2))
            .for_each(|(o, w)| {
                for (r, orow) in (w[0]..w[1]).zip(o.chunks_exact_mut(d)) {
                    self.row_product_sparse(r, slot, xc, d, orow);
                }
            });
        Ok(())
    }

    /// [`Csr::spmm_sparse_input`] for a symmetric matrix, by scattering from the input's
    /// non-zero rows instead of scanning every row: `active[k]` is the node whose input
    /// row is `xc[k]` (so `slot[active[k]] == k`). The work is the degree sum of
    /// `active` rather than all non-zeros; threads own disjoint output row ranges, each
    /// finding its part of every active row's (sorted) neighbour list by binary search.
    /// Callers guarantee symmetry and the shapes.
    pub(crate) fn symmetric_sparse_product(
        &self,
        active: &[u32],
        xc: &[f32],
        d: usize,
        out: &mut [f32],
    ) {
        let pieces = 4 * rayon::current_num_threads().max(1);
        let step = self.n_rows.div_ceil(pieces).max(1);
        let bounds: Vec<usize> = (0..=self.n_rows.div_ceil(step))
            .map(|k| (k * step).min(self.n_rows))
            .collect();
        split_rows_mut(out, d, &bounds)
            .into_par_iter()
            .zip(bounds.par_windows(2))
            .for_each(|(o, w)| {
                o.fill(0.0);
                let (lo, hi) = (w[0] as u32, w[1] as u32);
                for (k, &src) in active.iter().enumerate() {
                    let x = &xc[k * d..(k + 1) * d];
                    let (cols, vals) = self.row(src as usize);
                    let start = cols.partition_point(|&c| c < lo);
                    for (&r, &v) in cols[start..].iter().zip(&vals[start..]) {
                        if r >= hi {
                            break;
                        }
                        let at = (r - lo) as usize * d;
                        for (o, &x) in o[at..at + d].iter_mut().zip(x) {
                            *o += v * x;
                        }
                    }
                }
            });
    }

    pub(crate) fn check_slots(&self, slot: &[u32], xc: &[f32], d: usize) -> Result<()> {
        if slot.len() != self.n_cols {
            return Err(Error::Shape {
                message: format!("slot has {} entries, expected {}", slot.len(), self.n_cols),
            });
        }
        if d == 0 || !xc.len().is_multiple_of(d) {
            return Err(Error::Shape {
                message: format!(
                    "compact x has {} values, not a multiple of d = {d}",
                    xc.len()
                ),
            });
        }
        let n = xc.len() / d;
        if let Some(s) = slot.iter().find(|&&s| s != NO_SLOT && s as usize >= n) {
            return Err(Error::Shape {
                message: format!("slot {s} out of range for {n} compact rows"),
            });
        }
        Ok(())
    }

    /// Row `r` of `self · x` into `out` (`d` values), `x` dense `n_cols × d`.
    /// Callers have checked the shapes.
    #[inline]
    pub(crate) fn row_product(&self, r: usize, x: &[f32], d: usize, out: &mut [f32]) {
        let (cols, vals) = self.row(r);
        (kernels().dense)(cols, vals, self.ahead(r), x, d, out);
    }

    /// [`Csr::row_product`] for a row computed out of order: while it runs, the input
    /// rows of row `next` (the one computed after it, if any) are prefetched. Callers
    /// have checked the shapes.
    #[inline]
    pub(crate) fn row_product_then(
        &self,
        r: usize,
        next: Option<usize>,
        x: &[f32],
        d: usize,
        out: &mut [f32],
    ) {
        let (cols, vals) = self.row(r);
        let ahead = next.map_or(&[][..], |n| self.row(n).0);
        (kernels().dense)(cols, vals, ahead, x, d, out);
    }

    /// Row `r` of `self · x` into `out`, `x` compact as in [`Csr::spmm_sparse_input`].
    /// Callers have checked the shapes.
    #[inline]
    pub(crate) fn row_product_sparse(
        &self,
        r: usize,
        slot: &[u32],
        xc: &[f32],
        d: usize,
        out: &mut [f32],
    ) {
        out.fill(0.0);
        let (cols, vals) = self.row(r);
        for (&c, &w) in cols.iter().zip(vals) {
            let s = slot[c as usize];
            if s != NO_SLOT {
                let xr = &xc[s as usize * d..(s as usize + 1) * d];
                for (o, &v) in out.iter_mut().zip(xr) {
                    *o += w * v;
                }
            }
        }
    }
}

/// Splits a row-major `rows × d` buffer into the mutable pieces `parts[k]..parts[k+1]`.
pub(crate) fn split_rows_mut<'a>(
    mut buf: &'a mut [f32],
    d: usize,
    parts: &[usize],
) -> Vec<&'a mut [f32]> {
    let mut out = Vec::with_capacity(parts.len().saturating_sub(1));
    for w in parts.windows(2) {
        let (head, tail) = buf.split_at_mut((w[1] - w[0]) * d);
        out.push(head);
        buf = tail;
    }
    out
}

// ---------------------------------------------------------------------------------
// Row kernels: out = Σ_k vals[k] · x[cols[k]].

/// `(cols, vals, ahead, x, d, out)`: while entry `k` of the row is added, the input row
/// `ahead[k]` is prefetched.
type DenseKernel = fn(&[u32], &[f32], &[u32], &[f32], usize, &mut [f32]);

struct Kernels {
    dense: DenseKernel,
    /// The CPU has AVX2 and FMA and the portable code was not forced.
    avx2: bool,
}

/// How many non-zeros ahead the consecutive-row passes prefetch an input row, running
/// on into the next rows (measured on Gowalla, d = 64, 2 threads: an epoch took 10.4 s
/// at 4, 9.5 at 16, 8.9 at 32 and 48).
const PREFETCH_AHEAD: usize = 32;

/// Asks the CPU to start loading row `c` of `xrows` (a hint; never faults).
#[inline(always)]
fn prefetch_row<const D: usize>(xrows: &[[f32; D]], c: u32) {
    #[cfg(target_arch = "x86_64")]
    if let Some(row) = xrows.get(c as usize) {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        let p = row.as_ptr().cast::<i8>();
        for off in (0..D * 4).step_by(64) {
            // SAFETY: a prefetch is only a hint and cannot fault; the address is inside
            // the row (wrapping_add never dereferences).
            unsafe { _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(off)) };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (xrows, c);
}

#[inline(always)]
fn dense_fixed<const D: usize, const FMA: bool>(
    cols: &[u32],
    vals: &[f32],
    ahead: &[u32],
    x: &[f32],
    out: &mut [f32; D],
) {
    let (xrows, _) = x.as_chunks::<D>();
    let mut acc = [0f32; D];
    for (k, (&c, &w)) in cols.iter().zip(vals).enumerate() {
        if let Some(&a) = ahead.get(k) {
            prefetch_row(xrows, a);
        }
        let xr = &xrows[c as usize];
        for j in 0..D {
            acc[j] = if FMA {
                w.mul_add(xr[j], acc[j])
            } else {
                acc[j] + w * xr[j]
            };
        }
    }
    *out = acc;
}

#[inline(always)]
fn dense_any<const FMA: bool>(
    cols: &[u32],
    vals: &[f32],
    _ahead: &[u32],
    x: &[f32],
    d: usize,
    out: &mut [f32],
) {
    out.fill(0.0);
    for (&c, &w) in cols.iter().zip(vals) {
        let xr = &x[c as usize * d..(c as usize + 1) * d];
        for (o, &v) in out.iter_mut().zip(xr) {
            *o = if FMA { w.mul_add(v, *o) } else { *o + w * v };
        }
    }
}

macro_rules! dense_dispatch {
    ($fma:expr, $cols:ident, $vals:ident, $ahead:ident, $x:ident, $d:ident, $out:ident; $($n:literal)*) => {
        match $d {
            $($n => {
                if let Some(o) = $out.first_chunk_mut::<$n>() {
                    dense_fixed::<$n, $fma>($cols, $vals, $ahead, $x, o);
                }
            })*
            _ => dense_any::<$fma>($cols, $vals, $ahead, $x, $d, $out),
        }
    };
}

fn dense_portable(cols: &[u32], vals: &[f32], ahead: &[u32], x: &[f32], d: usize, out: &mut [f32]) {
    dense_dispatch!(false, cols, vals, ahead, x, d, out; 8 16 32 64 128);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn dense_avx2(cols: &[u32], vals: &[f32], ahead: &[u32], x: &[f32], d: usize, out: &mut [f32]) {
    dense_dispatch!(true, cols, vals, ahead, x, d, out; 8 16 32 64 128);
}

fn kernels() -> &'static Kernels {
    static K: OnceLock<Kernels> = OnceLock::new();
    K.get_or_init(|| {
        let forced = std::env::var_os("MOSAIC_PORTABLE_KERNELS").is_some_and(|v| v == "1");
        #[cfg(target_arch = "x86_64")]
        if !forced
            && std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
        {
            return Kernels {
                // SAFETY: selected only after the CPU reported both AVX2 and FMA.
                dense: |c, v, a, x, d, o| unsafe { dense_avx2(c, v, a, x, d, o) },
                avx2: true,
            };
        }
        let _ = forced;
        Kernels {
            dense: dense_portable,
            avx2: false,
        }
    })
}

/// Whether the AVX2+FMA kernels were picked (so AVX2 code may run elsewhere too).
pub(crate) fn avx2_picked() -> bool {
    kernels().avx2
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(seed: &mut u64) -> u32 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (*seed >> 33) as u32
    }

    fn random_csr(n_rows: usize, n_cols: usize, seed: u64) -> Csr {
        let mut s = seed;
        let mut row_ptr = vec![0];
        let (mut col, mut val) = (Vec::new(), Vec::new());
        for r in 0..n_rows {
            // skewed degrees, some empty rows
            let deg = if r % 7 == 0 {
                0
            } else {
                (lcg(&mut s) % 40) as usize
            };
            let mut cs: Vec<u32> = (0..deg).map(|_| lcg(&mut s) % n_cols as u32).collect();
            cs.sort_unstable();
            cs.dedup();
            for c in cs {
                col.push(c);
                val.push((lcg(&mut s) % 1000) as f32 / 1000.0 - 0.5);
            }
            row_ptr.push(col.len());
        }
        Csr::from_parts(n_rows, n_cols, row_ptr, col, val).unwrap()
    }

    fn naive(a: &Csr, x: &[f32], d: usize) -> Vec<f64> {
        let mut out = vec![0f64; a.n_rows() * d];
        for r in 0..a.n_rows() {
            let (cols, vals) = a.row(r);
            for (&c, &w) in cols.iter().zip(vals) {
                for j in 0..d {
                    out[r * d + j] += w as f64 * x[c as usize * d + j] as f64;
                }
            }
        }
        out
    }

    #[test]
    fn parallel_equals_serial_equals_naive_for_every_width() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        for d in [1usize, 8, 13, 16, 32, 64, 128] {
            let a = random_csr(3000, 2500, d as u64);
            assert!(a.parts().len() > 3, "the matrix must span several chunks");
            let mut s = 99;
            let x: Vec<f32> = (0..a.n_cols() * d)
                .map(|_| (lcg(&mut s) % 2000) as f32 / 1000.0 - 1.0)
                .collect();
            let mut par = vec![f32::NAN; a.n_rows() * d];
            let mut ser = vec![f32::NAN; a.n_rows() * d];
            pool.install(|| a.spmm(&x, d, &mut par)).unwrap();
            a.spmm_serial(&x, d, &mut ser).unwrap();
            assert_eq!(par, ser, "d={d}: parallel and serial differ");
            for (p, n) in par.iter().zip(naive(&a, &x, d)) {
                assert!((*p as f64 - n).abs() < 1e-4, "d={d}: {p} vs {n}");
            }
            // selected rows, with a repeat
            let rows = [5u32, 0, 2999, 5, 1234];
            let mut sel = vec![0f32; rows.len() * d];
            a.spmm_rows(&rows, &x, d, &mut sel).unwrap();
            for (k, &r) in rows.iter().enumerate() {
                assert_eq!(
                    &sel[k * d..(k + 1) * d],
                    &ser[r as usize * d..(r as usize + 1) * d]
                );
            }
        }
    }

    #[test]
    fn sparse_input_matches_dense_input_with_zero_rows() {
        let d = 16;
        let a = random_csr(800, 700, 5);
        let mut slot = vec![NO_SLOT; 700];
        let active = [3usize, 50, 51, 400, 699];
        let mut xc = Vec::new();
        let mut x = vec![0f32; 700 * d];
        for (k, &c) in active.iter().enumerate() {
            slot[c] = k as u32;
            for j in 0..d {
                let v = (k * d + j) as f32 * 0.01 - 0.3;
                xc.push(v);
                x[c * d + j] = v;
            }
        }
        let mut got = vec![0f32; 800 * d];
        a.spmm_sparse_input(&slot, &xc, d, &mut got).unwrap();
        for (g, n) in got.iter().zip(naive(&a, &x, d)) {
            assert!((*g as f64 - n).abs() < 1e-5);
        }
    }

    #[test]
    fn symmetric_scatter_equals_sparse_gather() {
        let n = 900;
        let mut s = 17;
        let mut dense = vec![0f32; n * n];
        for _ in 0..6000 {
            let (r, c) = (
                (lcg(&mut s) % n as u32) as usize,
                (lcg(&mut s) % n as u32) as usize,
            );
            let v = (lcg(&mut s) % 1000) as f32 / 1000.0;
            dense[r * n + c] = v;
            dense[c * n + r] = v;
        }
        let mut row_ptr = vec![0];
        let (mut col, mut val) = (Vec::new(), Vec::new());
        for r in 0..n {
            for c in 0..n {
                if dense[r * n + c] != 0.0 {
                    col.push(c as u32);
                    val.push(dense[r * n + c]);
                }
            }
            row_ptr.push(col.len());
        }
        let a = Csr::from_parts(n, n, row_ptr, col, val).unwrap();
        let d = 64;
        let active: Vec<u32> = (0..n as u32).filter(|v| v % 7 == 3).collect();
        let mut slot = vec![NO_SLOT; n];
        for (k, &v) in active.iter().enumerate() {
            slot[v as usize] = k as u32;
        }
        let xc: Vec<f32> = (0..active.len() * d)
            .map(|i| (i % 23) as f32 * 0.1 - 1.0)
            .collect();
        let mut gather = vec![0f32; n * d];
        let mut scatter = vec![f32::NAN; n * d];
        a.spmm_sparse_input(&slot, &xc, d, &mut gather).unwrap();
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        pool.install(|| a.symmetric_sparse_product(&active, &xc, d, &mut scatter));
        for (g, s) in gather.iter().zip(&scatter) {
            assert!((g - s).abs() < 1e-4, "{g} vs {s}");
        }
    }

    #[test]
    fn permutation_moves_rows_and_columns() {
        let a = random_csr(50, 50, 3);
        let order: Vec<u32> = (0..50u32).map(|k| (k * 7) % 50).collect();
        let p = a.permuted(&order).unwrap();
        let (da, dp) = (a.to_dense(), p.to_dense());
        for r in 0..50 {
            for c in 0..50 {
                assert_eq!(
                    dp[r * 50 + c],
                    da[order[r] as usize * 50 + order[c] as usize]
                );
            }
        }
        assert!(a.permuted(&[0; 50]).is_err());
        assert_eq!(p.row_entries(3), Some(p.row(3)));
        assert_eq!(p.row_entries(50), None);
        assert!(a.permuted(&order[..49]).is_err());
    }

    #[test]
    fn shape_and_structure_errors_are_typed() {
        let a = random_csr(10, 8, 1);
        let mut out = vec![0f32; 10 * 4];
        assert!(matches!(
            a.spmm(&[0.0; 7 * 4], 4, &mut out),
            Err(Error::Shape { .. })
        ));
        assert!(matches!(
            a.spmm(&[0.0; 8 * 4], 0, &mut out),
            Err(Error::Shape { .. })
        ));
        assert!(matches!(
            a.spmm_rows(&[10], &[0.0; 8 * 4], 4, &mut [0.0; 4]),
            Err(Error::Shape { .. })
        ));
        assert!(matches!(
            Csr::from_parts(1, 2, vec![0, 1], vec![2], vec![1.0]),
            Err(Error::Graph { .. })
        ));
        assert!(matches!(
            Csr::from_parts(2, 2, vec![0, 1, 0], vec![0], vec![1.0]),
            Err(Error::Graph { .. })
        ));
    }
}
