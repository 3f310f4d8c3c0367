//! The taste graph: users and items as a bipartite interaction graph, LightGCN (He et
//! al., SIGIR 2020) trained on it, every user's embedding kept current as interactions
//! arrive, background refits, and the persistence that lets a restarted service serve
//! what it served.
//!
//! The crate root holds what most callers need:
//!
//! - the graph: [`UserId`], [`ItemId`], [`IdMap`], [`Interaction`], [`InteractionKind`],
//!   [`BipartiteGraph`], [`Dataset`];
//! - LightGCN: [`LightGcnConfig`], [`LightGcn`], [`Trainer`] (the CPU kernels) and
//!   [`Training`] (the CPU kernels or a candle device), [`evaluate`] and its [`Metrics`];
//! - the live model: [`LiveModel`], [`LiveConfig`], [`interests()`] with [`InterestConfig`],
//!   and [`ContentAggregator`] for new items;
//! - refits and persistence: [`Refresher`] (refits, its state saved and loaded),
//!   [`FeedbackLog`] with [`Feedback`] and [`SyncPolicy`].
//!
//! The details live in a few public modules: [`model`] (training's parts: the init
//! scheme, epochs, triples, Adam, schedules, the device trainer), [`live`], [`refresh`],
//! [`feedback`], [`inductive`], [`interests`](mod@interests), [`dataset`], [`kernels`]
//! (the sparse products, for benchmarks).
//!
//! Everything runs on the current rayon pool; wrap calls in
//! `rayon::ThreadPool::install` to choose the thread count.

#![warn(missing_docs)]

mod buffer;
mod checkpoint;
pub mod dataset;
mod device;
mod device_train;
mod error;
mod eval;
pub mod feedback;
mod gradient;
mod graph;
mod ids;
pub mod inductive;
mod interactions;
pub mod interests;
mod lightgcn;
pub mod live;
mod optim;
pub mod refresh;
mod schedule;
mod snapshot;
mod sparse;
mod trainer;
mod training;

/// Training's parts beside the root's [`LightGcnConfig`], [`Trainer`] and [`Training`]:
/// the init scheme, a batch's triples and loss, an epoch's statistics, the propagated
/// embeddings, Adam, learning-rate schedules, the device trainer, and the id maps and
/// event lists a training graph is built from.
pub mod model {
    pub use crate::device_train::DeviceTrainer;
    pub use crate::eval::score_all;
    pub use crate::ids::{ItemMap, UserMap};
    pub use crate::interactions::Interactions;
    pub use crate::lightgcn::{BatchLoss, Embeddings, Init, Triple};
    pub use crate::optim::{AdamConfig, AdamState};
    pub use crate::schedule::RateSwitch;
    pub use crate::trainer::EpochStats;
    pub use crate::training::Backend;
}

/// The sparse products LightGCN is made of, for benchmarks and for callers who
/// propagate embeddings themselves: CSR × dense on the CPU ([`kernels::Csr`]) and on a
/// candle device ([`kernels::DeviceCsr`], [`kernels::scatter_add_rows`]).
pub mod kernels {
    pub use crate::device::{DeviceCsr, scatter_add_rows};
    pub use crate::sparse::Csr;
}

pub use dataset::Dataset;
pub use error::{Error, Result};
pub use eval::{Metrics, evaluate};
pub use feedback::{Feedback, FeedbackLock, FeedbackLog, SyncPolicy};
pub use graph::BipartiteGraph;
pub use ids::{IdMap, ItemId, UserId};
pub use inductive::ContentAggregator;
pub use interactions::{Interaction, InteractionKind};
pub use interests::{InterestConfig, interests};
pub use lightgcn::{LightGcn, LightGcnConfig};
pub use live::{LiveConfig, LiveModel};
/// Device selection (`auto`, `cpu`, `cuda[:N]`), shared by every Mosaic crate.
pub use mosaic_device::DeviceSpec;
pub use refresh::Refresher;
pub use trainer::Trainer;
pub use training::Training;
