//! A versioned, crash-safe store of item embeddings.
//!
//! A *generation* (named after the embedding model version) holds vectors of one
//! dimension and storage type (f32, f16, int8 with a per-vector scale) plus a few u32
//! attributes per item. It lives in a [`Directory`] as immutable
//! [`segment`] files, [`tombstones`] for deleted or replaced rows, and a [`manifest`]
//! swapped atomically on every commit ([`store`]). Readers take cheap
//! [`Snapshot`]s that stay valid while commits and new generations land;
//! [`search`] gives exact top-k with filters, [`matrix`] exact top-k for batches by
//! matrix product on a candle device (CPU or CUDA), [`hnsw`] approximate search.
//! [`vector_store::VectorStore`] is the serving API shared by the embedded backend
//! ([`EmbeddedStore`]) and, with the `redis` feature (on by default), a Redis Cluster
//! (`redis_cluster::RedisClusterStore`).

#![warn(missing_docs)]

mod batch;
pub mod error;
pub mod exchange;
pub mod fuzzing;
pub mod hnsw;
pub mod kernels;
pub mod manifest;
pub mod matrix;
#[cfg(feature = "redis")]
pub mod redis_cluster;
pub mod search;
pub mod segment;
pub mod store;
pub mod tombstones;
pub mod types;
pub mod vector_store;
pub mod writer;

pub use error::{Error, Result};
/// Device selection (`auto`, `cpu`, `cuda[:N]`), shared by every Mosaic crate.
pub use mosaic_device::{DeviceSpec, Selection};
/// Durable files (the shared `mosaic-durability` crate): where the store's files live.
pub use mosaic_durability::directory;
/// Simulated power loss for crash tests (from `mosaic-durability`).
pub use mosaic_durability::sim;
pub use mosaic_durability::{
    Directory, FileSystem, FsDirectory, MmapDirectory, OsFs, RamDirectory,
};
pub use search::{Filter, Hit};
pub use store::{GenerationSpec, Snapshot, Store};
pub use types::{ItemId, Metric, StorageType};
pub use vector_store::{EmbeddedStore, Fetched, VectorStore};
pub use writer::Writer;
