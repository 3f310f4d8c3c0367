//! One LightGCN trainer chosen at run time. [`Backend`] is what a training loop needs of
//! a trainer; the CPU kernels ([`Trainer`]) and a candle device
//! ([`DeviceTrainer`]) implement it, and [`Training`] holds either behind it.

use std::any::Any;
use std::path::Path;

use candle_core::Device;

use crate::device_train::DeviceTrainer;
use crate::error::Result;
use crate::graph::BipartiteGraph;
use crate::lightgcn::{LightGcn, LightGcnConfig};
use crate::schedule::RateSwitch;
use crate::trainer::Saved;
use crate::trainer::{EpochStats, Trainer};
use mosaic_device::Selection;

mod sealed {
    use crate::error::Result;
    use crate::trainer::Saved;

    /// What only this crate's trainers can give: their whole state, for snapshots.
    pub trait State {
        /// The whole training state (copied from the device), tables in public order.
        fn saved(&self) -> Result<Saved>;
    }
}

/// What a LightGCN training loop needs of a trainer, whatever it runs on: implemented
/// by the CPU kernels ([`Trainer`]) and a candle device ([`DeviceTrainer`]), which take
/// the same steps (the kernels' rounding aside).
pub trait Backend: sealed::State + std::fmt::Debug + Send + Sync + Any {
    /// The device the tables live on, `None` on the CPU kernels.
    fn device(&self) -> Option<&Device>;
    /// Epochs completed.
    fn epochs(&self) -> usize;
    /// The configuration, with the rate and batch size a schedule last set.
    fn config(&self) -> &LightGcnConfig;
    /// Changes Adam's learning rate from the next step on.
    fn set_lr(&mut self, lr: f32) -> Result<()>;
    /// Changes the batch size from the next epoch on.
    fn set_batch_size(&mut self, batch_size: usize) -> Result<()>;
    /// One epoch; `on_batch(done, total)` after every batch.
    fn train_epoch(&mut self, on_batch: &mut dyn FnMut(usize, usize)) -> Result<EpochStats>;
    /// The model being trained (copied back from the device if a step ran since).
    fn model(&mut self) -> Result<&LightGcn>;
    /// Gives up the trainer, keeping the model.
    fn into_model(self: Box<Self>) -> Result<LightGcn>;
    /// A trainer of the same kind carrying this one's state onto `graph`.
    fn regraph(&self, graph: &BipartiteGraph) -> Result<Box<dyn Backend>>;
    /// Writes the whole training state to `path`, atomically.
    fn save_checkpoint(&self, path: &Path, graph: &BipartiteGraph) -> Result<()>;
}

impl sealed::State for Trainer {
    fn saved(&self) -> Result<Saved> {
        Ok(Trainer::saved(self))
    }
}

impl Backend for Trainer {
    fn device(&self) -> Option<&Device> {
        None
    }
    fn epochs(&self) -> usize {
        Trainer::epochs(self)
    }
    fn config(&self) -> &LightGcnConfig {
        Trainer::config(self)
    }
    fn set_lr(&mut self, lr: f32) -> Result<()> {
        Trainer::set_lr(self, lr)
    }
    fn set_batch_size(&mut self, batch_size: usize) -> Result<()> {
        Trainer::set_batch_size(self, batch_size)
    }
    fn train_epoch(&mut self, on_batch: &mut dyn FnMut(usize, usize)) -> Result<EpochStats> {
        Trainer::train_epoch(self, on_batch)
    }
    fn model(&mut self) -> Result<&LightGcn> {
        Ok(Trainer::model(self))
    }
    fn into_model(self: Box<Self>) -> Result<LightGcn> {
        Ok(Trainer::into_model(*self))
    }
    fn regraph(&self, graph: &BipartiteGraph) -> Result<Box<dyn Backend>> {
        Ok(Box::new(Trainer::regraph(self, graph)?))
    }
    fn save_checkpoint(&self, path: &Path, graph: &BipartiteGraph) -> Result<()> {
        Trainer::save_checkpoint(self, path, graph)
    }
}

impl sealed::State for DeviceTrainer {
    fn saved(&self) -> Result<Saved> {
        DeviceTrainer::saved(self)
    }
}

impl Backend for DeviceTrainer {
    fn device(&self) -> Option<&Device> {
        Some(DeviceTrainer::device(self))
    }
    fn epochs(&self) -> usize {
        DeviceTrainer::epochs(self)
    }
    fn config(&self) -> &LightGcnConfig {
        DeviceTrainer::config(self)
    }
    fn set_lr(&mut self, lr: f32) -> Result<()> {
        DeviceTrainer::set_lr(self, lr)
    }
    fn set_batch_size(&mut self, batch_size: usize) -> Result<()> {
        DeviceTrainer::set_batch_size(self, batch_size)
    }
    fn train_epoch(&mut self, on_batch: &mut dyn FnMut(usize, usize)) -> Result<EpochStats> {
        DeviceTrainer::train_epoch(self, on_batch)
    }
    fn model(&mut self) -> Result<&LightGcn> {
        DeviceTrainer::model(self)
    }
    fn into_model(self: Box<Self>) -> Result<LightGcn> {
        DeviceTrainer::into_model(*self)
    }
    fn regraph(&self, graph: &BipartiteGraph) -> Result<Box<dyn Backend>> {
        Ok(Box::new(DeviceTrainer::regraph(self, graph)?))
    }
    fn save_checkpoint(&self, path: &Path, graph: &BipartiteGraph) -> Result<()> {
        DeviceTrainer::save_checkpoint(self, path, graph)
    }
}

/// A LightGCN trainer on the CPU kernels or on a device, chosen at run time.
#[derive(Debug)]
pub struct Training(Box<dyn Backend>);

impl From<Trainer> for Training {
    fn from(t: Trainer) -> Self {
        Training(Box::new(t))
    }
}

impl From<DeviceTrainer> for Training {
    fn from(t: DeviceTrainer) -> Self {
        Training(Box::new(t))
    }
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
            DeviceTrainer::new(graph, config, selection.device())?.into()
        } else {
            Trainer::new(graph, config)?.into()
        })
    }

    /// A trainer resumed from the checkpoint at `path` over `graph` (see
    /// [`Trainer::resume`]), on the device for a CUDA selection.
    pub fn resume(graph: &BipartiteGraph, path: &Path, selection: &Selection) -> Result<Self> {
        Ok(if selection.is_cuda() {
            DeviceTrainer::resume(graph, path, selection.device())?.into()
        } else {
            Trainer::resume(graph, path)?.into()
        })
    }

    /// A trainer over `graph` from a saved state, on the device for a CUDA selection.
    pub(crate) fn from_saved(
        graph: &BipartiteGraph,
        saved: Saved,
        selection: &Selection,
    ) -> Result<Self> {
        Ok(if selection.is_cuda() {
            DeviceTrainer::from_saved(graph, saved, selection.device())?.into()
        } else {
            Trainer::from_saved(graph, saved)?.into()
        })
    }

    /// The trainer behind it.
    pub fn backend(&self) -> &dyn Backend {
        &*self.0
    }

    /// The CPU trainer behind it, if that is what it is.
    pub fn as_cpu(&self) -> Option<&Trainer> {
        (&*self.0 as &dyn Any).downcast_ref()
    }

    /// The device trainer behind it, if that is what it is.
    pub fn as_device(&self) -> Option<&DeviceTrainer> {
        (&*self.0 as &dyn Any).downcast_ref()
    }

    /// The device the tables live on, `None` on the CPU kernels.
    pub fn device(&self) -> Option<&Device> {
        self.0.device()
    }

    /// Epochs completed.
    pub fn epochs(&self) -> usize {
        self.0.epochs()
    }

    /// The configuration, with the rate and batch size a schedule last set.
    pub fn config(&self) -> &LightGcnConfig {
        self.0.config()
    }

    /// Changes Adam's learning rate from the next step on (see [`Trainer::set_lr`]).
    pub fn set_lr(&mut self, lr: f32) -> Result<()> {
        self.0.set_lr(lr)
    }

    /// Changes the batch size from the next epoch on (see [`Trainer::set_batch_size`]).
    pub fn set_batch_size(&mut self, batch_size: usize) -> Result<()> {
        self.0.set_batch_size(batch_size)
    }

    /// Applies a schedule entry's rate (and batch size, if it has one).
    pub fn apply_switch(&mut self, switch: &RateSwitch) -> Result<()> {
        self.set_lr(switch.lr)?;
        match switch.batch {
            Some(b) => self.set_batch_size(b),
            None => Ok(()),
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
    pub fn train_epoch(&mut self, mut on_batch: impl FnMut(usize, usize)) -> Result<EpochStats> {
        self.0.train_epoch(&mut on_batch)
    }

    /// The model being trained (copied back from the device if a step ran since).
    pub fn model(&mut self) -> Result<&LightGcn> {
        self.0.model()
    }

    /// Gives up the trainer, keeping the model.
    pub fn into_model(self) -> Result<LightGcn> {
        self.0.into_model()
    }

    /// A trainer of the same kind carrying this one's state onto `graph` (see
    /// [`Trainer::regraph`]); `self` is left as it was.
    pub fn regraph(&self, graph: &BipartiteGraph) -> Result<Self> {
        Ok(Training(self.0.regraph(graph)?))
    }

    /// The whole training state (copied from the device), tables in public order.
    pub(crate) fn saved(&self) -> Result<Saved> {
        self.0.saved()
    }

    /// Writes the whole training state to `path`, atomically (see
    /// [`Trainer::save_checkpoint`]).
    pub fn save_checkpoint(&self, path: &Path, graph: &BipartiteGraph) -> Result<()> {
        self.0.save_checkpoint(path, graph)
    }
}
