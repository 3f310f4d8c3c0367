//! LightGCN training on a candle device (a CUDA GPU with the `cuda` feature; the CPU
//! device too, which is how it is tested everywhere): the same model, loss, sampler
//! and Adam as [`crate::Trainer`], with the ego table and the moments resident on the
//! device and the sparse products done by [`crate::device`]'s kernels.
//!
//! One step, for a batch of `B` triples and `K` layers (`c = 1 / (K + 1)`):
//!
//! 1. forward: `F = c · Σ_{k=0..K} Â^k E` (K sparse products over the whole table);
//! 2. BPR: `x = ⟨F_u, F_p⟩ − ⟨F_u, F_n⟩`, loss `mean softplus(−x)`, and
//!    `∂L/∂F` scattered into the batch rows (`g = −σ(−x) / B`);
//! 3. backward: `Â` is symmetric, so `∂L/∂E = c · Σ_{k=0..K} Â^k ∂L/∂F` (K products),
//!    plus the L2 term `decay / B · E` once per occurrence of a node in the batch;
//! 4. Adam over the whole table, as PyTorch's dense Adam (rows without gradient still
//!    decay their moments and move), exactly as [`crate::Trainer`].
//!
//! The CPU [`crate::Trainer`] avoids half of the forward products by computing the last
//! layer on the batch rows only; on a GPU the whole-table products cost less than the
//! bookkeeping, so this path keeps the plain formulation. The loss stays on the device
//! during an epoch and is read once at its end.

use std::path::Path;
use std::time::Instant;

use candle_core::{D, Device, Tensor};

use crate::checkpoint;
use crate::device::{DeviceCsr, scatter_add_rows};
use crate::error::Result;
use crate::graph::BipartiteGraph;
use crate::lightgcn::{BatchLoss, LightGcn, LightGcnConfig, Triple};
use crate::trainer::{EpochStats, Sampler};
use crate::trainer::{Progress, Saved};

/// Trains a [`LightGcn`] with BPR and Adam on a candle device.
#[derive(Debug)]
pub struct DeviceTrainer {
    /// The host model; its ego table is refreshed from the device by [`Self::model`].
    model: LightGcn,
    config: LightGcnConfig,
    sampler: Sampler,
    adj: DeviceCsr,
    /// Ego table, internal row order, `(N, d)` f32 on the device.
    ego: Tensor,
    m: Tensor,
    v: Tensor,
    /// Adam steps taken.
    t: u64,
    epochs: usize,
    /// Whether `model`'s host ego table is behind the device's.
    stale: bool,
}

impl DeviceTrainer {
    /// A freshly initialised model over the training graph (the same initial table as
    /// [`crate::Trainer::new`] with the same seed), trained on `device`.
    pub fn new(graph: &BipartiteGraph, config: &LightGcnConfig, device: &Device) -> Result<Self> {
        let model = LightGcn::new(graph, config)?;
        Self::with_model(model, graph, config, device)
    }

    /// Continues training `model` (which must be over `graph`) on `device`, with fresh
    /// Adam moments.
    pub fn with_model(
        model: LightGcn,
        graph: &BipartiteGraph,
        config: &LightGcnConfig,
        device: &Device,
    ) -> Result<Self> {
        config.validate()?;
        if model.n_users() != graph.n_users()
            || model.n_items() != graph.n_items()
            || model.dim() != config.dim
            || model.layers() != config.layers
        {
            return Err(crate::Error::Config {
                message: "model and graph/config sizes differ".into(),
            });
        }
        let sampler = Sampler::new(graph, config.seed)?;
        let n = model.n_users() + model.n_items();
        let d = model.dim();
        let adj = DeviceCsr::new(model.internal_adjacency(), device)?;
        let ego = Tensor::from_slice(model.internal_ego(), (n, d), device)?;
        let m = ego.zeros_like()?;
        let v = ego.zeros_like()?;
        Ok(DeviceTrainer {
            model,
            config: config.clone(),
            sampler,
            adj,
            ego,
            m,
            v,
            t: 0,
            epochs: 0,
            stale: false,
        })
    }

    /// The device the model trains on.
    pub fn device(&self) -> &Device {
        self.ego.device()
    }

    /// The model being trained, with its ego table copied back from the device if a
    /// step ran since the last call.
    pub fn model(&mut self) -> Result<&LightGcn> {
        if self.stale {
            let host: Vec<f32> = self.ego.flatten_all()?.to_vec1()?;
            self.model.set_internal_ego(&host)?;
            self.stale = false;
        }
        Ok(&self.model)
    }

    /// Gives up the trainer, keeping the model (copied back from the device).
    pub fn into_model(mut self) -> Result<LightGcn> {
        self.model()?;
        Ok(self.model)
    }

    /// Epochs completed.
    pub fn epochs(&self) -> usize {
        self.epochs
    }

    /// The configuration, with the rate and batch size a schedule last set.
    pub fn config(&self) -> &LightGcnConfig {
        &self.config
    }

    /// Changes Adam's learning rate from the next step on (moments kept), for a
    /// schedule; the rate must be finite and > 0.
    pub fn set_lr(&mut self, lr: f32) -> Result<()> {
        self.config = self.config.clone().lr(lr).validated()?;
        Ok(())
    }

    /// Changes the batch size from the next epoch on; it must be at least 1.
    pub fn set_batch_size(&mut self, batch_size: usize) -> Result<()> {
        self.config = self.config.clone().batch_size(batch_size).validated()?;
        Ok(())
    }

    /// One epoch's triples, drawn exactly as [`crate::Trainer::sample_epoch`] draws them
    /// (same seed, same sequence).
    pub fn sample_epoch(&mut self) -> Vec<Triple> {
        self.sampler.sample_epoch()
    }

    /// Writes the trainer's whole state to `path` in the trainer checkpoint format (the
    /// tables are copied from the device), atomically. [`DeviceTrainer::resume`] continues
    /// from it on any device, and so does [`crate::Trainer::resume`] on the CPU kernels.
    pub fn save_checkpoint(&self, path: &Path, graph: &BipartiteGraph) -> Result<()> {
        let m = &self.model;
        crate::lightgcn::check_sizes(graph, m.n_users(), m.n_items())?;
        checkpoint::write(path, graph, &self.saved()?)
    }

    /// A trainer on `device` resumed from the checkpoint at `path` over `graph` (the
    /// graph it was saved with, checked), saved by a [`DeviceTrainer`] or by a
    /// [`crate::Trainer`]: it takes the steps the saved trainer would have taken, with
    /// its rate, batch size, Adam moments and sampler position (the kernels' rounding
    /// differs between the CPU trainer and a device, nothing else).
    pub fn resume(graph: &BipartiteGraph, path: &Path, device: &Device) -> Result<Self> {
        Self::from_saved(graph, checkpoint::read(graph, path)?, device)
    }

    /// A trainer on the same device that carries this one's training onto `graph`, the
    /// training graph after new interactions (the same users and items, or more),
    /// exactly as [`crate::Trainer::regraph`] does: embeddings, moments, steps, rate,
    /// batch size and epochs kept, new rows initialised as the config says, `self` left
    /// as it was.
    pub fn regraph(&self, graph: &BipartiteGraph) -> Result<Self> {
        let (users, items) = (self.model.n_users(), self.model.n_items());
        let saved = self.saved()?.grown(users, items, graph)?;
        Self::from_saved(graph, saved, self.device())
    }

    /// The whole state copied to the host, tables in public order.
    pub(crate) fn saved(&self) -> Result<Saved> {
        let m = &self.model;
        let host = |t: &Tensor| -> Result<Vec<f32>> {
            let v: Vec<f32> = t.flatten_all()?.to_vec1()?;
            Ok(m.to_public_order(&v))
        };
        Ok(Saved {
            progress: Progress {
                config: self.config.clone(),
                epochs: self.epochs,
                steps: self.t,
                position: self.sampler.position(),
            },
            ego: host(&self.ego)?,
            m1: host(&self.m)?,
            m2: host(&self.v)?,
        })
    }

    /// A trainer on `device` over `graph` from a saved state (tables in public order,
    /// sized for `graph`).
    pub(crate) fn from_saved(
        graph: &BipartiteGraph,
        saved: Saved,
        device: &Device,
    ) -> Result<Self> {
        let Saved {
            progress: p,
            ego,
            m1,
            m2,
        } = saved;
        let model = LightGcn::from_embeddings(graph, p.config.layers, p.config.dim, ego)?;
        let shape = (model.n_users() + model.n_items(), model.dim());
        let mut sampler = Sampler::new(graph, p.config.seed)?;
        sampler.set_position(p.position);
        Ok(DeviceTrainer {
            adj: DeviceCsr::new(model.internal_adjacency(), device)?,
            ego: Tensor::from_slice(model.internal_ego(), shape, device)?,
            m: Tensor::from_vec(model.to_internal_order(&m1), shape, device)?,
            v: Tensor::from_vec(model.to_internal_order(&m2), shape, device)?,
            model,
            config: p.config,
            sampler,
            t: p.steps,
            epochs: p.epochs,
            stale: false,
        })
    }

    /// One optimisation step on a batch; returns the batch's loss before the step.
    pub fn step(&mut self, batch: &[Triple]) -> Result<BatchLoss> {
        let (bpr, reg) = self.step_on_device(batch)?;
        Ok(BatchLoss {
            bpr: bpr.to_scalar::<f32>()? as f64,
            reg: reg.to_scalar::<f32>()? as f64,
        })
    }

    /// Samples and trains one epoch; `on_batch(done, total)` is called after every
    /// batch has been queued (the device runs behind; the epoch ends synchronised).
    pub fn train_epoch(&mut self, mut on_batch: impl FnMut(usize, usize)) -> Result<EpochStats> {
        let start = Instant::now();
        let triples = self.sample_epoch();
        let total = triples.len().div_ceil(self.config.batch_size);
        let mut sums: Option<(Tensor, Tensor)> = None;
        for (b, batch) in triples.chunks(self.config.batch_size).enumerate() {
            let (bpr, reg) = self.step_on_device(batch)?;
            sums = Some(match sums {
                None => (bpr, reg),
                Some((a, r)) => ((a + bpr)?, (r + reg)?),
            });
            on_batch(b + 1, total);
        }
        let (bpr, reg) = match sums {
            Some((a, r)) => (a.to_scalar::<f32>()? as f64, r.to_scalar::<f32>()? as f64),
            None => (0.0, 0.0),
        };
        self.epochs += 1;
        let nb = total.max(1) as f64;
        Ok(EpochStats {
            loss: (bpr + reg) / nb,
            bpr: bpr / nb,
            batches: total,
            samples: triples.len(),
            seconds: start.elapsed().as_secs_f64(),
        })
    }

    /// One step; returns the batch's BPR and L2 losses as scalar device tensors.
    fn step_on_device(&mut self, batch: &[Triple]) -> Result<(Tensor, Tensor)> {
        self.model.check_batch(batch)?;
        let dev = self.ego.device().clone();
        let nu = self.model.n_users();
        let n = nu + self.model.n_items();
        let layers = self.model.layers();
        let rows = self.model.internal_rows();
        let b = batch.len();
        // Internal rows of the batch's users, positives and negatives, in that order.
        let mut ids = Vec::with_capacity(3 * b);
        ids.extend(batch.iter().map(|t| rows[t.user as usize]));
        ids.extend(batch.iter().map(|t| rows[nu + t.pos as usize]));
        ids.extend(batch.iter().map(|t| rows[nu + t.neg as usize]));
        let ids = Tensor::from_vec(ids, 3 * b, &dev)?;
        let c = 1.0 / (layers + 1) as f64;

        // Forward.
        let mut acc = self.ego.clone();
        let mut cur = self.ego.clone();
        for _ in 0..layers {
            cur = self.adj.spmm(&cur)?;
            acc = (acc + &cur)?;
        }
        let fin = (acc * c)?;
        let rows3 = fin.index_select(&ids, 0)?;
        let fu = rows3.narrow(0, 0, b)?;
        let fp = rows3.narrow(0, b, b)?;
        let fnn = rows3.narrow(0, 2 * b, b)?;
        let diff = (&fp - &fnn)?;
        let x = (&fu * &diff)?.sum_keepdim(D::Minus1)?; // (B, 1)

        // BPR loss mean softplus(−x) = relu(−x) + ln(1 + e^{−|x|}), and its gradient
        // g = −σ(−x) / B = −1 / ((1 + e^x) B).
        let inv_b = 1.0 / b as f64;
        let softplus = (x.neg()?.relu()? + (x.abs()?.neg()?.exp()? + 1.0)?.log()?)?;
        let bpr = (softplus.sum_all()? * inv_b)?;
        let g = ((x.exp()? + 1.0)?.recip()? * -inv_b)?;
        let gu = diff.broadcast_mul(&g)?;
        let gp = fu.broadcast_mul(&g)?;
        let gn = gp.neg()?;
        let grads = Tensor::cat(&[&gu, &gp, &gn], 0)?;
        let gf = (scatter_add_rows(n, &ids, &grads)? * c)?;

        // Backward through the symmetric propagation.
        let mut gacc = gf.clone();
        let mut gcur = gf;
        for _ in 0..layers {
            gcur = self.adj.spmm(&gcur)?;
            gacc = (gacc + &gcur)?;
        }
        // L2 on the batch's ego rows, once per occurrence.
        let decay = self.config.decay as f64;
        let ego_rows = self.ego.index_select(&ids, 0)?;
        let reg = (ego_rows.sqr()?.sum_all()? * (decay * 0.5 * inv_b))?;
        let grad = (gacc + scatter_add_rows(n, &ids, &(ego_rows * (decay * inv_b))?)?)?;

        // Adam, PyTorch's update (see `crate::optim::AdamStep::apply`).
        self.t += 1;
        let a = self.config.adam;
        let t = self.t.min(i32::MAX as u64) as i32;
        let bc1 = 1.0 - (a.beta1 as f64).powi(t);
        let bc2 = 1.0 - (a.beta2 as f64).powi(t);
        let step_size = (a.lr as f64 / bc1) as f32 as f64;
        let inv_sqrt_bc2 = (1.0 / bc2.sqrt()) as f32 as f64;
        let (b1, b2) = (a.beta1 as f64, a.beta2 as f64);
        self.m = ((&self.m * b1)? + (&grad * (1.0 - b1))?)?;
        self.v = ((&self.v * b2)? + (grad.sqr()? * (1.0 - b2))?)?;
        let denom = (self.v.sqrt()?.affine(inv_sqrt_bc2, a.eps as f64))?;
        self.ego = (&self.ego - ((&self.m / denom)? * step_size)?)?;
        self.stale = true;
        Ok((bpr, reg))
    }
}
