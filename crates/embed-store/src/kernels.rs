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

#[cfg(test)]
mod tests {
    use super::*;

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
