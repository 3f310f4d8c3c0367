//! The optimiser: AdamW with decoupled weight decay, as PyTorch's, with global-norm
//! clipping done by the caller.

use candle_core::{Tensor, Var};

use super::options::TrainOptions;
use crate::error::{Error, Result};

/// AdamW with decoupled weight decay (PyTorch's `torch.optim.AdamW`), whose moments can
/// be saved and restored so a resumed run continues exactly.
#[derive(Debug)]
pub struct AdamW {
    pub(super) vars: Vec<Var>,
    pub(super) m: Vec<Tensor>,
    pub(super) v: Vec<Tensor>,
    pub(super) step: u64,
    pub(super) lr: f64,
    pub(super) betas: (f64, f64),
    pub(super) eps: f64,
    pub(super) weight_decay: f64,
}

impl AdamW {
    /// An optimiser over `vars` with zeroed moments.
    pub fn new(vars: Vec<Var>, opts: &TrainOptions) -> Result<Self> {
        let m = vars
            .iter()
            .map(|v| v.zeros_like())
            .collect::<candle_core::Result<Vec<_>>>()?;
        let v = m.clone();
        Ok(Self {
            vars,
            m,
            v,
            step: 0,
            lr: opts.learning_rate,
            betas: opts.betas,
            eps: opts.eps,
            weight_decay: opts.weight_decay,
        })
    }

    /// Steps taken.
    pub fn steps(&self) -> u64 {
        self.step
    }

    /// One update with `grads[i]` the gradient of `vars[i]`.
    pub fn update(&mut self, grads: &[Tensor]) -> Result<()> {
        if grads.len() != self.vars.len() {
            return Err(Error::Training {
                message: format!(
                    "{} gradients for {} parameters",
                    grads.len(),
                    self.vars.len()
                ),
            });
        }
        self.step += 1;
        let (b1, b2) = self.betas;
        let t = self.step as i32;
        let c1 = 1.0 - b1.powi(t);
        let c2 = 1.0 - b2.powi(t);
        for (i, g) in grads.iter().enumerate() {
            let m = ((&self.m[i] * b1)? + (g * (1.0 - b1))?)?;
            let v = ((&self.v[i] * b2)? + (g.sqr()? * (1.0 - b2))?)?;
            let var = &self.vars[i];
            let decayed = (var.as_tensor() * (1.0 - self.lr * self.weight_decay))?;
            let denom = ((&v / c2)?.sqrt()? + self.eps)?;
            let step = ((&m / c1)? / denom)?;
            var.set(&(decayed - (step * self.lr)?)?)?;
            self.m[i] = m;
            self.v[i] = v;
        }
        Ok(())
    }
}
