//! The crate's error type: every failure names what is wrong and where.

use std::path::PathBuf;

/// Result alias used throughout the crate.
pub type Result<T> = std::result::Result<T, Error>;

/// Everything that can go wrong in the taste graph.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file operation failed.
    #[error("i/o error on {path}: {source}")]
    Io {
        /// The file involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A dataset file is malformed.
    #[error("{path}:{line}: {message}")]
    Parse {
        /// The file being read.
        path: PathBuf,
        /// The 1-based line number.
        line: usize,
        /// What is wrong on that line.
        message: String,
    },
    /// A configuration value is out of range.
    #[error("invalid configuration: {message}")]
    Config {
        /// Which field is wrong and why.
        message: String,
    },
    /// Graph input is inconsistent (an index out of range, sizes that do not match).
    #[error("invalid graph input: {message}")]
    Graph {
        /// What is wrong.
        message: String,
    },
    /// Buffers handed to a kernel have the wrong length for the matrix and width.
    #[error("shape mismatch: {message}")]
    Shape {
        /// Which buffer and the lengths expected and found.
        message: String,
    },
    /// The embedding store refused an export or an import.
    #[error("embedding store: {0}")]
    Store(#[from] embed_store::Error),
    /// A tensor operation in candle failed (evaluation scoring).
    #[error("tensor error: {0}")]
    Tensor(#[from] candle_core::Error),
}
