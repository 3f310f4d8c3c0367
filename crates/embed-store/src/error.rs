//! The crate's error type: every failure names what is wrong and where.

use std::path::PathBuf;

/// Result alias used throughout the crate.
pub type Result<T> = std::result::Result<T, Error>;

/// Everything that can go wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file operation failed.
    #[error("i/o error on {path}: {source}")]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A file is not what it should be: bad magic, truncated, checksum mismatch.
    #[error("corrupt file {file}: {message}")]
    Corrupt {
        /// The file name inside the store directory.
        file: String,
        /// What was found wrong.
        message: String,
    },
    /// A file was written by a newer, unknown format version.
    #[error("file {file} has format version {found}, this build reads up to {supported}")]
    Version {
        /// The file name.
        file: String,
        /// The version in the file.
        found: u32,
        /// The newest version this build reads.
        supported: u32,
    },
    /// Another writer holds the store's lock.
    #[error("the store at {path} is locked by another writer")]
    Locked {
        /// The store directory.
        path: PathBuf,
    },
    /// A generation name is unknown or already exists.
    #[error("generation {name:?}: {message}")]
    Generation {
        /// The generation's name.
        name: String,
        /// What is wrong.
        message: String,
    },
    /// A batch handed to the writer is invalid; nothing of it was applied.
    #[error("invalid batch: {message}")]
    Batch {
        /// What is wrong (names the row and column where it applies).
        message: String,
    },
    /// A query is invalid.
    #[error("invalid query: {message}")]
    Query {
        /// What is wrong.
        message: String,
    },
    /// A remote backend (Redis) failed or is unreachable.
    #[error("{backend} backend: {message}")]
    Backend {
        /// Which backend.
        backend: &'static str,
        /// What failed, with the server's or client's message.
        message: String,
    },
    /// A remote backend rejected the credentials (wrong user or password).
    #[error("{backend} backend: authentication failed: {message}")]
    Auth {
        /// Which backend.
        backend: &'static str,
        /// The server's or client's message.
        message: String,
    },
    /// A remote backend's access rules refuse the command or key (an ACL).
    #[error("{backend} backend: permission denied: {message}")]
    Denied {
        /// Which backend.
        backend: &'static str,
        /// The server's message (names the command or key).
        message: String,
    },
    /// A tensor operation on the compute device failed (batch search by GEMM).
    #[error("device error: {0}")]
    Device(#[from] candle_core::Error),
}

impl From<mosaic_durability::Error> for Error {
    fn from(e: mosaic_durability::Error) -> Self {
        use mosaic_durability::Error as D;
        match e {
            D::Io { path, source } => Error::Io { path, source },
            D::Corrupt { file, message } => Error::Corrupt { file, message },
            D::Locked { path } => Error::Locked { path },
            // the store uses no log; a refused argument there is the store's file layer
            D::Invalid(message) => Error::Backend {
                backend: "durability",
                message,
            },
        }
    }
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn corrupt(file: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Corrupt {
            file: file.into(),
            message: message.into(),
        }
    }

    pub(crate) fn batch(message: impl Into<String>) -> Self {
        Error::Batch {
            message: message.into(),
        }
    }
}
