//! Adam (Kingma & Ba), with PyTorch's update order and bias correction, applied
//! row by row so it can be fused into the last pass of the backward propagation.

use rayon::prelude::*;

use crate::buffer::Table;
use crate::error::{Error, Result};

/// Adam hyper-parameters (PyTorch defaults apart from the learning rate).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamConfig {
    /// Learning rate.
    pub lr: f32,
    /// Decay of the first moment.
    pub beta1: f32,
    /// Decay of the second moment.
    pub beta2: f32,
    /// Added to the denominator.
    pub eps: f32,
}

impl Default for AdamConfig {
    fn default() -> Self {
        AdamConfig {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
        }
    }
}

impl AdamConfig {
    /// Checks that every value is in range.
    pub fn validate(&self) -> Result<()> {
        let ok = self.lr.is_finite()
            && self.lr > 0.0
            && (0.0..1.0).contains(&self.beta1)
            && (0.0..1.0).contains(&self.beta2)
            && self.eps.is_finite()
            && self.eps > 0.0;
        if ok {
            Ok(())
        } else {
            Err(Error::Config {
                message: format!(
                    "adam needs lr > 0, 0 <= beta1, beta2 < 1 and eps > 0; got {self:?}"
                ),
            })
        }
    }
}

/// The optimiser's moments for one parameter buffer and its step count.
#[derive(Debug)]
pub struct AdamState {
    config: AdamConfig,
    m: Table,
    v: Table,
    t: u64,
}

/// The per-step constants of one Adam update.
#[derive(Debug, Clone, Copy)]
pub struct AdamStep {
    beta1: f32,
    beta2: f32,
    eps: f32,
    /// `lr / (1 - beta1^t)`.
    step_size: f32,
    /// `1 / sqrt(1 - beta2^t)`.
    inv_sqrt_bc2: f32,
}

impl AdamStep {
    /// Updates one slice of parameters in place from its gradient and moments:
    /// `m = β1 m + (1-β1) g`, `v = β2 v + (1-β2) g²`,
    /// `p -= lr/(1-β1^t) · m / (sqrt(v)/sqrt(1-β2^t) + eps)`.
    /// The same arithmetic (no fused multiply-adds) on 256-bit vectors where the CPU
    /// has AVX2.
    #[inline]
    pub fn apply(&self, p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if crate::sparse::avx2_picked() {
            // SAFETY: picked only after the CPU reported AVX2.
            return unsafe { self.apply_avx2(p, g, m, v) };
        }
        self.apply_portable(p, g, m, v)
    }

    #[inline(always)]
    fn apply_portable(&self, p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]) {
        for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
            *m = self.beta1 * *m + (1.0 - self.beta1) * g;
            *v = self.beta2 * *v + (1.0 - self.beta2) * g * g;
            let denom = v.sqrt() * self.inv_sqrt_bc2 + self.eps;
            *p -= self.step_size * *m / denom;
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    fn apply_avx2(&self, p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]) {
        self.apply_portable(p, g, m, v)
    }
}

impl AdamState {
    /// Zero moments for `len` parameters.
    pub fn new(config: AdamConfig, len: usize) -> Result<Self> {
        config.validate()?;
        Ok(AdamState {
            config,
            m: Table::zeros(len)?,
            v: Table::zeros(len)?,
            t: 0,
        })
    }

    /// State saved earlier ([`AdamState::moments`], [`AdamState::steps`]); the moment
    /// buffers must have the same length.
    pub(crate) fn restore(config: AdamConfig, m: &[f32], v: &[f32], t: u64) -> Result<Self> {
        config.validate()?;
        if m.len() != v.len() {
            return Err(Error::Shape {
                message: format!("Adam moments of {} and {} values", m.len(), v.len()),
            });
        }
        Ok(AdamState {
            config,
            m: Table::from_slice(m)?,
            v: Table::from_slice(v)?,
            t,
        })
    }

    /// The first and second moment buffers.
    pub(crate) fn moments(&self) -> (&[f32], &[f32]) {
        (&self.m, &self.v)
    }

    /// Steps taken so far.
    pub fn steps(&self) -> u64 {
        self.t
    }

    /// The hyper-parameters.
    pub fn config(&self) -> &AdamConfig {
        &self.config
    }

    /// Changes the learning rate from the next step on (a schedule); the moments and
    /// the step count are kept. The rate must be finite and > 0.
    pub fn set_lr(&mut self, lr: f32) -> Result<()> {
        let config = AdamConfig { lr, ..self.config };
        config.validate()?;
        self.config = config;
        Ok(())
    }

    /// Advances the step count and returns this step's constants together with the
    /// moment buffers, for a fused update (`AdamStep::apply` on matching slices).
    pub fn begin_step(&mut self) -> (AdamStep, &mut [f32], &mut [f32]) {
        self.t += 1;
        let c = &self.config;
        let t = self.t.min(i32::MAX as u64) as i32;
        let bc1 = 1.0 - (c.beta1 as f64).powi(t);
        let bc2 = 1.0 - (c.beta2 as f64).powi(t);
        let step = AdamStep {
            beta1: c.beta1,
            beta2: c.beta2,
            eps: c.eps,
            step_size: (c.lr as f64 / bc1) as f32,
            inv_sqrt_bc2: (1.0 / bc2.sqrt()) as f32,
        };
        (step, &mut self.m, &mut self.v)
    }

    /// One dense step over all parameters, in parallel.
    pub fn step(&mut self, params: &mut [f32], grads: &[f32]) -> Result<()> {
        if params.len() != self.m.len() || grads.len() != self.m.len() {
            return Err(Error::Shape {
                message: format!(
                    "adam holds {} moments, got {} parameters and {} gradients",
                    self.m.len(),
                    params.len(),
                    grads.len()
                ),
            });
        }
        let (s, m, v) = self.begin_step();
        const CHUNK: usize = 16 * 1024;
        params
            .par_chunks_mut(CHUNK)
            .zip(grads.par_chunks(CHUNK))
            .zip(m.par_chunks_mut(CHUNK))
            .zip(v.par_chunks_mut(CHUNK))
            .for_each(|(((p, g), m), v)| s.apply(p, g, m, v));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_hand_computed_pytorch_steps() {
        let cfg = AdamConfig {
            lr: 0.1,
            ..AdamConfig::default()
        };
        let mut st = AdamState::new(cfg, 2).unwrap();
        let mut p = vec![1.0f32, -2.0];
        st.step(&mut p, &[0.5, 0.0]).unwrap();
        // step 1: m = 0.05, v = 0.00025, m̂ = 0.5, v̂ = 0.25 -> p -= 0.1 * 0.5 / (0.5 + 1e-8)
        assert!((p[0] - 0.9).abs() < 1e-6, "{}", p[0]);
        assert_eq!(p[1], -2.0);
        st.step(&mut p, &[-1.0, 0.0]).unwrap();
        let (b1, b2) = (0.9f64, 0.999f64);
        let m = b1 * 0.05 - (1.0 - b1);
        let v = b2 * 0.00025 + (1.0 - b2) * 1.0;
        let expected = 0.9 - 0.1 / (1.0 - b1 * b1) * m / (v.sqrt() / (1.0 - b2 * b2).sqrt() + 1e-8);
        assert!(
            (p[0] as f64 - expected).abs() < 1e-6,
            "{} vs {expected}",
            p[0]
        );
        assert_eq!(st.steps(), 2);
        assert!(st.step(&mut p, &[0.0]).is_err());
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_avx2_update_is_bit_identical_to_the_portable_one() {
        if !std::arch::is_x86_feature_detected!("avx2") {
            eprintln!("no AVX2 on this CPU: nothing to compare");
            return;
        }
        let mut st = AdamState::new(AdamConfig::default(), 0).unwrap();
        st.t = 7;
        let (step, _, _) = st.begin_step();
        let n = 203; // not a multiple of the vector width
        let wave = |k: usize, f: f32| ((k as f32 * f).sin() * 0.3).powi(3);
        let g: Vec<f32> = (0..n).map(|k| wave(k, 0.77)).collect();
        let (mut p1, mut m1, mut v1): (Vec<f32>, Vec<f32>, Vec<f32>) = (
            (0..n).map(|k| wave(k, 1.3)).collect(),
            (0..n).map(|k| wave(k, 0.41) * 0.1).collect(),
            (0..n).map(|k| wave(k, 0.23).abs() * 0.01).collect(),
        );
        let (mut p2, mut m2, mut v2) = (p1.clone(), m1.clone(), v1.clone());
        step.apply_portable(&mut p1, &g, &mut m1, &mut v1);
        // SAFETY: the CPU reported AVX2 above.
        unsafe { step.apply_avx2(&mut p2, &g, &mut m2, &mut v2) };
        let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&p1), bits(&p2));
        assert_eq!(bits(&m1), bits(&m2));
        assert_eq!(bits(&v1), bits(&v2));
        assert_ne!(p1[5], wave(5, 1.3), "the update must move the parameters");
    }

    #[test]
    fn bad_config_is_rejected() {
        let cfg = AdamConfig {
            beta1: 1.0,
            ..AdamConfig::default()
        };
        assert!(matches!(AdamState::new(cfg, 1), Err(Error::Config { .. })));
    }
}
