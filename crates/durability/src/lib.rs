//! Durable files, the one way every persistent part of Mosaic writes them.
//!
//! A [`Directory`] holds whole files written atomically and never modified afterwards:
//! [`MmapDirectory`] on disk (read through mmap), [`RamDirectory`] in memory for tests.
//! The durable write (a temp file of its own, synced, renamed, the directory synced) is
//! written once, in [`FsDirectory`], over a small [`FileSystem`] trait: [`OsFs`] carries
//! it out on disk, [`sim::SimFs`] in memory with simulated power loss, so crash tests run
//! the very sequence of writes and syncs production runs.
//!
//! Beside whole files: [`wal::Wal`], the append-only write-ahead log (group commit,
//! torn-tail recovery) on the same [`FileSystem`]; [`frame`], the one framed-file format
//! (magic, version, length, checksum); [`le::Reader`], the one little-endian reader.

#![warn(missing_docs)]

pub mod directory;
pub mod error;
pub mod frame;
pub mod le;
pub mod sim;
pub mod wal;

pub use directory::{
    Directory, FileBytes, FileSystem, FsDirectory, LockGuard, MmapDirectory, OsFs, RamDirectory,
    replace_file,
};
pub use error::{Error, Result};
