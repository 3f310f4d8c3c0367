//! Distance kernels with runtime CPU dispatch: the portable code is compiled for the
//! baseline target (SSE2 on x86-64); on CPUs with AVX2 and FMA the same loops are
//! compiled with those features enabled and chosen once, at first use. Setting
//! `MOSAIC_PORTABLE_KERNELS=1` forces the portable code (for comparisons and debugging).

use std::sync::OnceLock;

type F32Kernel = fn(&[f32], &[f32]) -> f32;

#[inline(always)]
pub(crate) fn dot_body(a: &[f32], b: &[f32], fused: bool) -> f32 {
    let mut acc = [0f32; 16];
    let (ca, ra) = a.as_chunks::<16>();
    let (cb, rb) = b.as_chunks::<16>();
    for (x, y) in ca.iter().zip(cb) {
        for i in 0..16 {
            acc[i] = if fused {
                x[i].mul_add(y[i], acc[i])
            } else {
                acc[i] + x[i] * y[i]
            };
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

#[inline(always)]
pub(crate) fn l2_body(a: &[f32], b: &[f32], fused: bool) -> f32 {
    let mut acc = [0f32; 16];
    let (ca, ra) = a.as_chunks::<16>();
    let (cb, rb) = b.as_chunks::<16>();
    for (x, y) in ca.iter().zip(cb) {
        for i in 0..16 {
            let t = x[i] - y[i];
            acc[i] = if fused {
                t.mul_add(t, acc[i])
            } else {
                acc[i] + t * t
            };
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (x, y) in ra.iter().zip(rb) {
        s += (x - y) * (x - y);
    }
    s
}

fn dot_portable(a: &[f32], b: &[f32]) -> f32 {
    dot_body(a, b, false)
}

fn l2_portable(a: &[f32], b: &[f32]) -> f32 {
    l2_body(a, b, false)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
    dot_body(a, b, true)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn l2_avx2(a: &[f32], b: &[f32]) -> f32 {
    l2_body(a, b, true)
}

#[cfg(target_arch = "x86_64")]
fn has_avx2_fma() -> bool {
    std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
}

fn pick(portable: F32Kernel, #[allow(unused_variables)] fast: Option<F32Kernel>) -> F32Kernel {
    let forced = std::env::var_os("MOSAIC_PORTABLE_KERNELS").is_some_and(|v| v == "1");
    #[cfg(target_arch = "x86_64")]
    if let Some(f) = fast
        && has_avx2_fma()
        && !forced
    {
        return f;
    }
    let _ = forced;
    portable
}

/// Whether the AVX2+FMA kernels are in use (detected once; `MOSAIC_PORTABLE_KERNELS=1`
/// turns them off).
#[cfg(target_arch = "x86_64")]
pub(crate) fn avx2_fma() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| {
        has_avx2_fma() && std::env::var_os("MOSAIC_PORTABLE_KERNELS").is_none_or(|v| v != "1")
    })
}

static DOT: OnceLock<F32Kernel> = OnceLock::new();
static L2: OnceLock<F32Kernel> = OnceLock::new();

/// `a · b` (slices of equal length).
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    (DOT.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: only selected after has_avx2_fma() confirmed the CPU has both features.
        let fast: Option<F32Kernel> = Some(|a, b| unsafe { dot_avx2(a, b) });
        #[cfg(not(target_arch = "x86_64"))]
        let fast: Option<F32Kernel> = None;
        pick(dot_portable, fast)
    }))(a, b)
}

/// `|a - b|²` (slices of equal length).
#[inline]
pub fn l2_squared(a: &[f32], b: &[f32]) -> f32 {
    (L2.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: only selected after has_avx2_fma() confirmed the CPU has both features.
        let fast: Option<F32Kernel> = Some(|a, b| unsafe { l2_avx2(a, b) });
        #[cfg(not(target_arch = "x86_64"))]
        let fast: Option<F32Kernel> = None;
        pick(l2_portable, fast)
    }))(a, b)
}

/// `out[i * n + j] = q_i · x_j` for the `m` rows of `qs` and the `n` rows of `xs`, each
/// `d` wide (row-major): one GEMM with the second operand transposed, through the `gemm`
/// crate candle runs on the CPU (single-threaded: callers parallelise over query blocks).
///
/// # Panics
/// When a slice is shorter than `m`, `n` and `d` say: callers size them from the same
/// counts (an internal invariant, never caller input).
pub fn dots_nt(qs: &[f32], m: usize, xs: &[f32], n: usize, d: usize, out: &mut [f32]) {
    assert!(
        qs.len() >= m * d && xs.len() >= n * d && out.len() >= m * n,
        "dots_nt: buffers smaller than {m} x {n} x {d}"
    );
    if m == 0 || n == 0 {
        return;
    }
    if d == 0 {
        out[..m * n].fill(0.0);
        return;
    }
    // SAFETY: the assert above keeps every access in bounds: dst is m x n row-major
    // (column stride 1, row stride n) inside `out`; lhs is m x d row-major inside `qs`;
    // rhs is the d x n matrix x^T, read from `xs` (n x d row-major) with row stride 1 and
    // column stride d. read_dst is false, so `out`'s old contents are never read.
    unsafe {
        gemm::gemm(
            m,
            n,
            d,
            out.as_mut_ptr(),
            1,
            n as isize,
            false,
            qs.as_ptr(),
            1,
            d as isize,
            xs.as_ptr(),
            d as isize,
            1,
            0.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gemm_products_agree_with_dot_products() {
        let mut x = 0.37f32;
        let mut next = || {
            x = (x * 9301.0 + 0.49297).fract();
            x - 0.5
        };
        for (m, n, d) in [
            (1, 1, 1),
            (1, 7, 3),
            (5, 1, 64),
            (3, 130, 17),
            (40, 33, 24),
            (2, 3, 0),
        ] {
            let qs: Vec<f32> = (0..m * d).map(|_| next()).collect();
            let xs: Vec<f32> = (0..n * d).map(|_| next()).collect();
            let mut out = vec![f32::NAN; m * n];
            dots_nt(&qs, m, &xs, n, d, &mut out);
            for i in 0..m {
                for j in 0..n {
                    let want = dot_portable(&qs[i * d..(i + 1) * d], &xs[j * d..(j + 1) * d]);
                    let got = out[i * n + j];
                    assert!(
                        (got - want).abs() <= 1e-5,
                        "{m}x{n}x{d} [{i},{j}]: {got} vs {want}"
                    );
                }
            }
        }
    }

    #[test]
    fn dispatched_kernels_agree_with_the_portable_ones() {
        for n in [0usize, 1, 7, 16, 33, 64, 100] {
            let a: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
            let b: Vec<f32> = (0..n).map(|i| (i as f32 * 0.11).cos()).collect();
            let naive_dot: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
            let naive_l2: f32 = a.iter().zip(&b).map(|(x, y)| (x - y) * (x - y)).sum();
            assert!(
                (dot(&a, &b) - naive_dot).abs() <= 1e-4 * (1.0 + naive_dot.abs()),
                "dot n={n}"
            );
            assert!(
                (l2_squared(&a, &b) - naive_l2).abs() <= 1e-4 * (1.0 + naive_l2),
                "l2 n={n}"
            );
            assert!((dot_portable(&a, &b) - dot(&a, &b)).abs() <= 1e-4 * (1.0 + naive_dot.abs()));
        }
    }
}
