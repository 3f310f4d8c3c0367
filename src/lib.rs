//! Mosaic: a visual-discovery recommendation SDK. This facade re-exports the
//! workspace's crates; the README below is compiled as a doctest so it stays true.
#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

/// The versioned item-embedding store.
pub use embed_store;
/// Device selection shared by every crate: `auto`, `cpu` or `cuda[:N]`.
pub use mosaic_device as device;
/// The request path: retrieval, scoring, diversity, feedback.
pub use ranker;
/// The LightGCN taste graph: interactions, training and evaluation.
pub use taste_graph;
/// Qwen3-VL surgery: the decoder fed by precomputed item embeddings.
pub use vision_surgery;
