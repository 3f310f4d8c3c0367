//! Qwen3-VL surgery: the language decoder of Qwen3-VL driven by precomputed item
//! embeddings through an embedding-to-token adapter, with the vision tower removed.
//!
//! Modules hold what they are named after: [`config`] (config.json), [`checkpoint`]
//! (local or hub checkpoints, fetched file by file), [`hub`] (hub repositories resolved
//! to a commit), [`weights`] (memory-mapped safetensors), [`position`] (3-D position
//! ids), [`rotary`] (interleaved MRoPE), [`decoder`] (the text model), [`moe`] (its
//! mixture-of-experts feed-forward), [`model`]
//! (multimodal inputs around the decoder), [`adapter`] (the embedding-to-token adapter
//! and its file format), [`prompt`] (conversations and the tokenizer), [`chat_template`]
//! (the checkpoint's Jinja chat template), [`sampling`] (generation options),
//! [`generation_config`] (a checkpoint's decoding defaults), [`surgered`] (the
//! user-facing model: load, generate, score, save), [`portable`] (the layout it saves), and for the full-encoder baseline
//! [`vision`] (the vision tower), [`image_processor`] (image preprocessing) and
//! [`full`] (the unmodified model that wires them to the decoder). With the `testkit`
//! feature (for the workspace's benches and examples, not part of the API): `bench`
//! (the surgery-vs-full-encoder measurement) and `synthetic` (random-weight
//! checkpoints of any shape).

#![warn(missing_docs)]

pub mod adapter;
#[cfg(feature = "testkit")]
pub mod bench;
pub mod chat_template;
pub mod checkpoint;
pub mod config;
pub mod decoder;
pub mod error;
pub mod full;
pub mod fuzzing;
pub mod generation_config;
pub mod hub;
pub mod image_processor;
pub mod model;
pub mod moe;
pub mod portable;
pub mod position;
pub mod prefix;
pub mod prompt;
pub mod quant;
pub mod rotary;
pub mod sampling;
pub mod surgered;
#[cfg(feature = "testkit")]
pub mod synthetic;
pub mod train;
pub mod vision;
pub mod weights;

pub use adapter::{Activation, AdapterSpec, EmbeddingAdapter, SoftTokens};
pub use chat_template::ChatTemplate;
pub use checkpoint::{Checkpoint, ModelSource};
pub use error::{Error, Result};
pub use full::FullModel;
pub use generation_config::GenerationConfig;
pub use hub::{DownloadProgress, ProgressFn};
/// Device selection (`auto`, `cpu`, `cuda[:N]`), shared by every Mosaic crate.
pub use mosaic_device::{DeviceSpec, Selection};
pub use prefix::{PrefixCache, PrefixStats};
pub use prompt::{ITEM_MARKER, Prompt, Role, Turn};
pub use quant::WeightFormat;
pub use sampling::{GenerateOptions, Sampling};
pub use surgered::{
    ContinuationScore, FinishReason, Generation, LoadOptions, SaveOptions, SavedCheckpoint,
    SurgeredModel, SurgeryReport, load_npy_items, save_npy_items,
};
