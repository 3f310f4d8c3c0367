//! Qwen3-VL surgery: the language decoder of Qwen3-VL driven by precomputed item
//! embeddings through an embedding-to-token adapter, with the vision tower removed.
//!
//! Modules hold what they are named after: [`config`] (config.json), [`checkpoint`]
//! (locating local or hub checkpoints), [`weights`] (memory-mapped safetensors),
//! [`position`] (3-D position ids), [`rotary`] (interleaved MRoPE), [`decoder`] (the
//! text model).

pub mod checkpoint;
pub mod config;
pub mod decoder;
pub mod model;
pub mod error;
pub mod position;
pub mod rotary;
pub mod weights;

pub use error::{Error, Result};
