//! The crate's error type: every failure names the file or directory involved.

use std::path::PathBuf;

/// Result alias used throughout the crate.
pub type Result<T> = std::result::Result<T, Error>;

/// What can go wrong with a directory of durable files.
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
    /// A file is not what it should be (here: not a regular file).
    #[error("corrupt file {file}: {message}")]
    Corrupt {
        /// The file name inside the directory.
        file: String,
        /// What was found wrong.
        message: String,
    },
    /// A caller's argument is out of range (a log name, a record's size).
    #[error("invalid argument: {0}")]
    Invalid(String),
    /// Another holder has the lock.
    #[error("the directory {path} is locked by another writer")]
    Locked {
        /// The directory.
        path: PathBuf,
    },
}

impl Error {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// A corrupt `file`.
    pub fn corrupt(file: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Corrupt {
            file: file.into(),
            message: message.into(),
        }
    }
}
