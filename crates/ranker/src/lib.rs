//! The request path of Mosaic: "what should this user see next?".
//!
//! - [`recommender`]: [`Recommender`] — candidates from each of the user's interests
//!   (ANN over an `embed-store` generation) with quotas by importance, from the user's
//!   taste embedding and from popular items; filters (seen, hidden, blocked,
//!   attribute rules); scoring; MMR diversity with per-attribute caps; an explanation
//!   per result; and [`Recommender::record`], the feedback loop into the taste graph;
//! - [`options`]: [`RecommendOptions`], the per-request knobs;
//! - [`pipeline`]: the offline half in one call (train, export, index, serve);
//! - [`scorer`]: an optional learned scorer (logistic regression on score parts);
//! - [`rescore`]: the optional re-scoring of the top-N by the surgered Qwen3-VL;
//! - [`eval`]: Recall / NDCG / intra-list diversity / coverage of ranking variants;
//! - [`mmr`]: Maximal Marginal Relevance and intra-list diversity;
//! - [`service`]: [`service::Service`], what a long-running server holds: the recommender,
//!   its durable feedback, checkpoints and background refits, request metrics;

#![warn(missing_docs)]

pub mod error;
pub mod eval;
pub mod mmr;
pub mod options;
pub mod pipeline;
mod popular;
pub mod recommender;
pub mod rescore;
mod saved;
pub mod scorer;
mod scoring;
pub mod service;
mod sources;
mod types;

pub use error::{Error, Result};
/// Device selection (`auto`, `cpu`, `cuda[:N]`), shared by every Mosaic crate.
pub use mosaic_device::{DeviceSpec, Selection};
pub use options::{AllowRule, AttrRule, Cap, RecommendOptions, Relevance, RequestOptions, Sources};
pub use recommender::Recommender;
pub use recommender::serving::{Event, Reopened};
pub use types::{Key, Recommendation, ScoreParts, Source};
