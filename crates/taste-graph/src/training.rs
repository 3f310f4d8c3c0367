//! One LightGCN trainer chosen at run time: the CPU kernels ([`Trainer`]) or a candle
//! device ([`DeviceTrainer`]), behind the operations a training loop needs.

use std::path::Path;

use candle_core::Device;

use crate::checkpoint::Saved;
use crate::device_train::DeviceTrainer;
use crate::error::Result;
use crate::graph::BipartiteGraph;
use crate::lightgcn::{LightGcn, LightGcnConfig};
use crate::schedule::RateSwitch;
use crate::trainer::{EpochStats, Trainer};
use mosaic_device::Selection;

/// A LightGCN trainer on the CPU kernels or on a device, with the same steps either way
/// (the kernels' rounding aside).
#[derive(Debug)]
pub enum Training {
    /// The parallel CSR kernels ([`crate::kernels::Csr`]) on the current rayon pool.
    Cpu(Trainer),
    /// Candle tensors on a device (custom CUDA kernels with the `cuda` feature).
    Device(DeviceTrainer),
}

impl Training {
    /// A fresh trainer: on the device for a CUDA selection, on the CPU kernels otherwise
    /// (they are faster than candle's CPU backend for these sparse products).
    pub fn new(
        graph: &BipartiteGraph,
        config: &LightGcnConfig,
        selection: &Selection,
    ) -> Result<Self> {
        Ok(if selection.is_cuda() {
            Training::Device(DeviceTrainer::new(graph, config, selection.device())?)
        } else {
            Training::Cpu(Trainer::new(graph, config)?)
        })
    }

    /// A trainer resumed from the checkpoint at `path` over `graph` (see
    /// [`Trainer::resume`]), on the device for a CUDA selection.
    pub fn resume(graph: &BipartiteGraph, path: &Path, selection: &Selection) -> Result<Self> {
        Ok(if selection.is_cuda() {
            Training::Device(DeviceTrainer::resume(graph, path, selection.device())?)
        } else {
            Training::Cpu(Trainer::resume(graph, path)?)
        })
    }

    /// The device the tables live on, `None` on the CPU kernels.
    pub fn device(&self) -> Option<&Device> {
        match self {
            Training::Cpu(_) => None,
            Training::Device(t) => Some(t.device()),
        }
    }

    /// Epochs completed.
    pub fn epochs(&self) -> usize {
        match self {
            Training::Cpu(t) => t.epochs(),
            Training::Device(t) => t.epochs(),
        }
    }

    /// The configuration, with the rate and batch size a schedule last set.
    pub fn config(&self) -> &LightGcnConfig {
        match self {
            Training::Cpu(t) => t.config(),
            Training::Device(t) => t.config(),
        }
    }

    /// Changes Adam's learning rate from the next step on (see [`Trainer::set_lr`]).
    pub fn set_lr(&mut self, lr: f32) -> Result<()> {
        match self {
            Training::Cpu(t) => t.set_lr(lr),
            Training::Device(t) => t.set_lr(lr),
        }
    }

    /// Changes the batch size from the next epoch on (see [`Trainer::set_batch_size`]).
    pub fn set_batch_size(&mut self, batch_size: usize) -> Result<()> {
        match self {
            Training::Cpu(t) => t.set_batch_size(batch_size),
            Training::Device(t) => t.set_batch_size(batch_size),
        }
    }

    /// Applies a schedule entry's rate (and batch size, if it has one).
    pub fn apply_switch(&mut self, switch: &RateSwitch) -> Result<()> {
        match self {
            Training::Cpu(t) => t.apply_switch(switch),
            Training::Device(t) => t.apply_switch(switch),
        }
    }

    /// Every switch of `schedule` that takes effect at the start of the next epoch.
    pub fn apply_due(&mut self, schedule: &[RateSwitch]) -> Result<()> {
        let next = self.epochs() + 1;
        for switch in schedule.iter().filter(|s| s.epoch == next) {
            self.apply_switch(switch)?;
        }
        Ok(())
    }

    /// One epoch; `on_batch(done, total)` after every batch (see [`Trainer::train_epoch`]).
    pub fn train_epoch(&mut self, on_batch: impl FnMut(usize, usize)) -> Result<EpochStats> {
        match self {
            Training::Cpu(t) => t.train_epoch(on_batch),
            Training::Device(t) => t.train_epoch(on_batch),
        }
    }

    /// The model being trained (copied back from the device if a step ran since).
    pub fn model(&mut self) -> Result<&LightGcn> {
        match self {
            Training::Cpu(t) => Ok(t.model()),
            Training::Device(t) => t.model(),
        }
    }

    /// Gives up the trainer, keeping the model.
    pub fn into_model(self) -> Result<LightGcn> {
        match self {
            Training::Cpu(t) => Ok(t.into_model()),
            Training::Device(t) => t.into_model(),
        }
    }

    /// A trainer of the same kind carrying this one's state onto `graph` (see
    /// [`Trainer::regraph`]); `self` is left as it was.
    pub fn regraph(&self, graph: &BipartiteGraph) -> Result<Self> {
        Ok(match self {
            Training::Cpu(t) => Training::Cpu(t.regraph(graph)?),
            Training::Device(t) => Training::Device(t.regraph(graph)?),
        })
    }

    /// The whole training state (copied from the device), tables in public order.
    pub(crate) fn saved(&self) -> Result<Saved> {
        match self {
            Training::Cpu(t) => Ok(t.saved()),
            Training::Device(t) => t.saved(),
        }
    }

    /// A trainer over `graph` from a saved state, on the device for a CUDA selection.
    pub(crate) fn from_saved(
        graph: &BipartiteGraph,
        saved: Saved,
        selection: &Selection,
    ) -> Result<Self> {
        Ok(if selection.is_cuda() {
            Training::Device(DeviceTrainer::from_saved(graph, saved, selection.device())?)
        } else {
            Training::Cpu(Trainer::from_saved(graph, saved)?)
        })
    }

    /// Writes the whole training state to `path`, atomically (see
    /// [`Trainer::save_checkpoint`]).
    pub fn save_checkpoint(&self, path: &Path, graph: &BipartiteGraph) -> Result<()> {
        match self {
            Training::Cpu(t) => t.save_checkpoint(path, graph),
            Training::Device(t) => t.save_checkpoint(path, graph),
        }
    }
}
