//! Decoder weights for serving: the decoder's linear layers (attention and dense MLP
//! projections, and the output head) quantized at load time into GGML block formats
//! and run by candle's `QMatMul` (int8 dot products on the CPU, repacked for its SIMD).
//!
//! A layer whose input width is not a multiple of the format's block stays dense (the
//! tiny test checkpoints' 64-wide layers under the 256-wide k-quant blocks, say); the
//! load report counts both. The token embedding, norms, the router and experts of a
//! mixture-of-experts layer stay in the compute dtype. The activations entering a
//! quantized layer are taken to f32 and its output back to the compute dtype.

use std::fmt;
use std::str::FromStr;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Module, Tensor};
use candle_nn::Linear;

use crate::error::{Error, Result};

/// How the decoder's linear layers hold their weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub enum WeightFormat {
    /// The compute dtype (the checkpoint's values, as loaded).
    #[default]
    Dense,
    /// 8-bit blocks of 32 with an f16 scale (8.5 bits a weight).
    Q8_0,
    /// 6-bit k-quant super-blocks of 256 (6.56 bits a weight).
    Q6K,
    /// 4-bit k-quant super-blocks of 256 with 6-bit scales and minima (4.5 bits a weight).
    Q4K,
    /// 4-bit blocks of 32 with an f16 scale (4.5 bits a weight).
    Q4_0,
}

impl WeightFormat {
    /// Every format, dense first.
    pub const ALL: [WeightFormat; 5] = [
        WeightFormat::Dense,
        WeightFormat::Q8_0,
        WeightFormat::Q6K,
        WeightFormat::Q4K,
        WeightFormat::Q4_0,
    ];

    /// The GGML block type (`None` for [`WeightFormat::Dense`]).
    pub fn ggml(self) -> Option<GgmlDType> {
        match self {
            WeightFormat::Dense => None,
            WeightFormat::Q8_0 => Some(GgmlDType::Q8_0),
            WeightFormat::Q6K => Some(GgmlDType::Q6K),
            WeightFormat::Q4K => Some(GgmlDType::Q4K),
            WeightFormat::Q4_0 => Some(GgmlDType::Q4_0),
        }
    }

    /// The name `FromStr` reads (`dense`, `q8_0`, `q6_k`, `q4_k`, `q4_0`).
    pub fn name(self) -> &'static str {
        match self {
            WeightFormat::Dense => "dense",
            WeightFormat::Q8_0 => "q8_0",
            WeightFormat::Q6K => "q6_k",
            WeightFormat::Q4K => "q4_k",
            WeightFormat::Q4_0 => "q4_0",
        }
    }
}

impl fmt::Display for WeightFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for WeightFormat {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|f| f.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| Error::Input {
                message: format!(
                    "unknown weight format {s:?}: expected one of {}",
                    Self::ALL.map(WeightFormat::name).join(", ")
                ),
            })
    }
}

/// A decoder projection `y = x Wᵀ (+ b)`, dense or quantized.
#[derive(Debug, Clone)]
pub enum Proj {
    /// Weights in the compute dtype.
    Dense(Linear),
    /// Weights in a GGML block format.
    Quantized {
        /// The quantized `[out, in]` weight.
        weight: QMatMul,
        /// The bias, in the compute dtype.
        bias: Option<Tensor>,
        /// Bytes of the quantized weight.
        bytes: usize,
    },
}

impl Proj {
    /// `weight` `[out, in]` (any float dtype) in `format`, or dense (in `weight`'s
    /// dtype) when `format` is [`WeightFormat::Dense`] or `in` is not a multiple of its
    /// block.
    pub fn new(weight: Tensor, bias: Option<Tensor>, format: WeightFormat) -> Result<Self> {
        let (_, in_dim) = weight.dims2()?;
        match format.ggml() {
            Some(q) if in_dim % q.block_size() == 0 => {
                let qt = QTensor::quantize(&weight, q)?;
                let bytes = qt.storage_size_in_bytes();
                Ok(Proj::Quantized {
                    weight: QMatMul::from_qtensor(qt)?,
                    bias,
                    bytes,
                })
            }
            _ => Ok(Proj::Dense(Linear::new(weight, bias))),
        }
    }

    /// Whether the weight is held quantized.
    pub fn is_quantized(&self) -> bool {
        matches!(self, Proj::Quantized { .. })
    }

    /// Bytes of the weight as held.
    pub fn weight_bytes(&self) -> usize {
        match self {
            Proj::Dense(l) => l.weight().elem_count() * l.weight().dtype().size_in_bytes(),
            Proj::Quantized { bytes, .. } => *bytes,
        }
    }
}

impl Module for Proj {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Proj::Dense(l) => l.forward(x),
            Proj::Quantized { weight, bias, .. } => {
                let dtype = x.dtype();
                let y = weight.forward(&x.to_dtype(DType::F32)?.contiguous()?)?;
                let y = y.to_dtype(dtype)?;
                match bias {
                    Some(b) => y.broadcast_add(b),
                    None => Ok(y),
                }
            }
        }
    }
}

/// How many of a decoder's projections are held quantized and their bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QuantizedLayers {
    /// Projections held in the requested block format.
    pub quantized: usize,
    /// Projections left dense (their input width is not a multiple of the block).
    pub dense: usize,
    /// Bytes of every projection's weight as held.
    pub bytes: usize,
}

impl QuantizedLayers {
    /// Counts `p`.
    pub fn add(&mut self, p: &Proj) {
        if p.is_quantized() {
            self.quantized += 1;
        } else {
            self.dense += 1;
        }
        self.bytes += p.weight_bytes();
    }
}

/// How far logits from a quantized decoder are from the reference's, over rows of
/// the same positions ([`Agreement::of`]).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Agreement {
    /// Rows compared.
    pub rows: usize,
    /// max |Δlogit| over every row and token.
    pub max_abs: f32,
    /// Mean over rows of KL(reference ‖ quantized) of the softmaxed rows, in nats.
    pub mean_kl: f64,
    /// Largest per-row KL.
    pub max_kl: f64,
    /// Share of rows whose argmax is the reference's.
    pub top1: f64,
}

impl Agreement {
    /// Compares `got` with `want`, both (…, vocab) with the same shape.
    pub fn of(want: &Tensor, got: &Tensor) -> Result<Self> {
        if want.dims() != got.dims() || want.rank() == 0 {
            return Err(Error::Input {
                message: format!(
                    "logits of shape {:?} cannot be compared with {:?}",
                    want.dims(),
                    got.dims()
                ),
            });
        }
        let vocab = want.dim(candle_core::D::Minus1)?;
        let flat = |t: &Tensor| -> Result<Vec<Vec<f32>>> {
            let t = t.to_dtype(DType::F32)?;
            Ok(t.reshape((t.elem_count() / vocab, vocab))?.to_vec2()?)
        };
        let (w, g) = (flat(want)?, flat(got)?);
        let mut out = Agreement {
            rows: w.len(),
            ..Agreement::default()
        };
        let mut same = 0usize;
        for (a, b) in w.iter().zip(&g) {
            for (x, y) in a.iter().zip(b) {
                out.max_abs = out.max_abs.max((x - y).abs());
            }
            let kl = kl(a, b);
            out.mean_kl += kl;
            out.max_kl = out.max_kl.max(kl);
            same += usize::from(argmax(a) == argmax(b));
        }
        let n = out.rows.max(1) as f64;
        out.mean_kl /= n;
        out.top1 = same as f64 / n;
        Ok(out)
    }
}

fn argmax(v: &[f32]) -> usize {
    v.iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |(bi, bv), (i, &x)| {
            if x > bv { (i, x) } else { (bi, bv) }
        })
        .0
}

/// log-softmax of `v` in f64.
fn log_softmax(v: &[f32]) -> Vec<f64> {
    let m = v.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let z = v.iter().map(|&x| (x as f64 - m).exp()).sum::<f64>().ln() + m;
    v.iter().map(|&x| x as f64 - z).collect()
}

/// KL(softmax(p) ‖ softmax(q)).
fn kl(p: &[f32], q: &[f32]) -> f64 {
    let (lp, lq) = (log_softmax(p), log_softmax(q));
    lp.iter()
        .zip(&lq)
        .map(|(a, b)| a.exp() * (a - b))
        .sum::<f64>()
        .max(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn agreement_measures_what_it_says() {
        let dev = Device::Cpu;
        let a = Tensor::new(&[[1f32, 2.0, 3.0], [0.0, 0.0, 5.0]], &dev).unwrap();
        let same = Agreement::of(&a, &a).unwrap();
        assert_eq!((same.rows, same.max_abs, same.top1), (2, 0.0, 1.0));
        assert!(same.mean_kl.abs() < 1e-12);
        let b = Tensor::new(&[[1f32, 3.5, 3.0], [0.0, 0.0, 5.0]], &dev).unwrap();
        let d = Agreement::of(&a, &b).unwrap();
        assert_eq!((d.max_abs, d.top1), (1.5, 0.5));
        // row 0: p = softmax(1,2,3), q = softmax(1,3.5,3)
        let (p, q) = (log_softmax(&[1.0, 2.0, 3.0]), log_softmax(&[1.0, 3.5, 3.0]));
        let want: f64 = p.iter().zip(&q).map(|(a, b)| a.exp() * (a - b)).sum();
        assert!((d.mean_kl - want / 2.0).abs() < 1e-12 && want > 0.1);
        assert!((d.max_kl - want).abs() < 1e-12);
        assert!(Agreement::of(&a, &a.narrow(0, 0, 1).unwrap()).is_err());
    }

    #[test]
    fn names_round_trip_and_unknown_ones_are_refused() {
        for f in WeightFormat::ALL {
            assert_eq!(f.name().parse::<WeightFormat>().unwrap(), f);
        }
        assert_eq!("Q4_K".parse::<WeightFormat>().unwrap(), WeightFormat::Q4K);
        let err = "q3_k".parse::<WeightFormat>().unwrap_err().to_string();
        assert!(err.contains("q3_k") && err.contains("q8_0"), "{err}");
    }

    #[test]
    fn quantized_projections_track_the_dense_one_and_narrow_ones_stay_dense() {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 0.05, (96, 256), &dev).unwrap();
        let b = Tensor::randn(0f32, 0.1, 96, &dev).unwrap();
        let x = Tensor::randn(0f32, 1.0, (2, 3, 256), &dev).unwrap();
        let dense = Proj::new(w.clone(), Some(b.clone()), WeightFormat::Dense).unwrap();
        let want = dense.forward(&x).unwrap();
        let max_abs = |t: &Tensor| {
            t.abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
        };
        let scale = max_abs(&want);
        for (f, tol) in [
            (WeightFormat::Q8_0, 0.02),
            (WeightFormat::Q6K, 0.05),
            (WeightFormat::Q4K, 0.15),
            (WeightFormat::Q4_0, 0.15),
        ] {
            let q = Proj::new(w.clone(), Some(b.clone()), f).unwrap();
            assert!(q.is_quantized(), "{f}");
            assert!(q.weight_bytes() < dense.weight_bytes() / 3, "{f}");
            let got = q.forward(&x).unwrap();
            let err = max_abs(&(got - &want).unwrap());
            assert!(err <= tol * scale, "{f}: max error {err} of {scale}");
        }
        let narrow = Tensor::randn(0f32, 0.05, (8, 64), &dev).unwrap();
        let p = Proj::new(narrow, None, WeightFormat::Q4K).unwrap();
        assert!(!p.is_quantized(), "64 is not a multiple of 256");
        assert!(
            Proj::new(
                Tensor::zeros((8, 64), DType::F32, &dev).unwrap(),
                None,
                WeightFormat::Q8_0
            )
            .unwrap()
            .is_quantized()
        );
    }
}
