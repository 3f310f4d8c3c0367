//! The taste graph: users and items as a bipartite interaction graph, and LightGCN
//! (He et al., SIGIR 2020) trained on it.
//!
//! - [`ids`]: dense [`UserId`] / [`ItemId`] indices and maps from external `u64` ids;
//! - [`interactions`]: events with a kind, a weight and a timestamp;
//! - [`graph`]: the CSR [`BipartiteGraph`] and its normalisation `D^-1/2 A D^-1/2`;
//! - [`dataset`]: the LightGCN `train.txt` / `test.txt` format;
//! - [`sparse`]: parallel CSR × dense products (candle has no sparse type);
//!   [`device`]: sparse kernels on a candle device (custom CUDA kernels with the
//!   `cuda` feature); [`device_train`]: LightGCN training on a device ([`DeviceTrainer`]);
//!   [`buffer`]: huge-page tables for the embeddings;
//! - [`lightgcn`]: the model, hand-written gradients, BPR sampling and training;
//! - [`optim`]: Adam; [`eval`]: Recall / Precision / NDCG@K as the reference code;
//! - [`live`]: real-time fold-in of each interaction into the user's embedding;
//!   [`refresh`]: background refits swapped in for the live model ([`Refresher`]);
//!   [`training`]: one trainer type over the CPU kernels and a device ([`Training`]);
//! - [`inductive`]: embeddings of new items from content features and their first
//!   users (a GraphSAGE-style [`ContentAggregator`], the PinSage idea), no retraining;
//! - [`interests`](mod@interests): several interests per user (PinnerSage: Ward clustering, medoids);
//! - [`feedback`]: the durable log of acknowledged feedback ([`FeedbackLog`]), replayed
//!   after a saved state on restart;
//!
//! Everything runs on the current rayon pool; wrap calls in
//! `rayon::ThreadPool::install` to choose the thread count.

#![warn(missing_docs)]

pub mod buffer;
pub mod checkpoint;
pub mod dataset;
pub mod device;
pub mod device_train;
pub mod error;
pub mod eval;
pub mod feedback;
pub mod fuzzing;
mod gradient;
pub mod graph;
pub mod ids;
pub mod inductive;
pub mod interactions;
pub mod interests;
pub mod lightgcn;
pub mod live;
pub mod optim;
pub mod refresh;
pub mod schedule;
mod snapshot;
pub mod sparse;
pub mod trainer;
pub mod training;

pub use dataset::Dataset;
pub use device_train::DeviceTrainer;
pub use error::{Error, Result};
pub use eval::{Metrics, evaluate, score_all};
pub use feedback::{Feedback, FeedbackLog, SyncPolicy};
pub use graph::BipartiteGraph;
pub use ids::{IdMap, ItemId, ItemMap, UserId, UserMap};
pub use inductive::{AggregatorConfig, ContentAggregator, FitReport, Neighbours};
pub use interactions::{Interaction, InteractionKind, Interactions};
pub use interests::{Interest, InterestConfig, interests};
pub use lightgcn::{BatchLoss, Embeddings, Init, LightGcn, LightGcnConfig, Triple};
pub use live::{KindWeights, LiveConfig, LiveModel};
/// Device selection (`auto`, `cpu`, `cuda[:N]`), shared by every Mosaic crate.
pub use mosaic_device::{DeviceSpec, Selection};
pub use optim::{AdamConfig, AdamState};
pub use refresh::state::{RefresherState, Restored};
pub use refresh::{CatchUp, Installed, Refit, RefitJob, Refresher, Replaced};
pub use schedule::RateSwitch;
pub use sparse::Csr;
pub use trainer::{EpochStats, Trainer};
pub use training::Training;
