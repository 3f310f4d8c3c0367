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
    /// A value that must be finite (a content feature, an embedding, a parameter) is
    /// NaN or infinite.
    #[error("non-finite value: {message}")]
    NonFinite {
        /// Which value and where.
        message: String,
    },
    /// A persisted file (event log, snapshot) is damaged in a way that is not a torn
    /// tail, or is not a file of the expected kind; nothing was discarded.
    #[error("{path}: corrupt at byte {offset}: {message}")]
    Corrupt {
        /// The damaged file (or the directory, for a file missing from a journal).
        path: PathBuf,
        /// Byte offset of the damage in the file (0 when it concerns the whole file).
        offset: u64,
        /// What is wrong.
        message: String,
    },
    /// A log file or journal directory is already open elsewhere (advisory file lock).
    #[error("{path} is locked: already open in this or another process")]
    Locked {
        /// The locked file.
        path: PathBuf,
    },
    /// A background refit was planned before the latest install and would undo it.
    #[error("stale refit: planned at generation {planned}, the refresher is at {current}")]
    Stale {
        /// The generation the refit was planned from.
        planned: u64,
        /// The refresher's generation now.
        current: u64,
    },
    /// A tensor operation in candle failed (evaluation scoring).
    #[error("tensor error: {0}")]
    Tensor(#[from] candle_core::Error),
}

impl From<mosaic_durability::Error> for Error {
    fn from(e: mosaic_durability::Error) -> Self {
        use mosaic_durability::Error as D;
        match e {
            D::Io { path, source } => Error::Io { path, source },
            D::Corrupt { file, message } => Error::Corrupt {
                path: file.into(),
                offset: 0,
                message,
            },
            D::Locked { path } => Error::Locked { path },
            D::Invalid(message) => Error::Config { message },
        }
    }
}

impl Error {
    /// An [`Error::Io`] for `path`.
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
