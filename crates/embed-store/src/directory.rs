//! Where the store's files live: a `Directory` abstraction (as in tantivy) so that
//! tests run in memory ([`RamDirectory`]) and production on memory-mapped files
//! ([`MmapDirectory`]).
//!
//! Files are written whole and atomically (`atomic_write`: temp file, fsync, rename,
//! fsync of the directory), never modified afterwards, and read as shared byte slices.
//! Each write has a temp file of its own (`.{name}.{pid}-{seq}.tmp`), locked while it is
//! written, so concurrent writers of one name never share one and garbage collection
//! ([`Directory::remove_abandoned_temps`]) only removes those whose writer is gone.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use memmap2::Mmap;

use crate::error::{Error, Result};

/// Immutable bytes of one file, shared between readers. The bytes never move or change
/// while any clone is alive (typed views such as the HNSW blocks rely on it).
#[derive(Clone)]
pub struct FileBytes(Arc<dyn AsRef<[u8]> + Send + Sync>);

/// An owned buffer aligned to 8 bytes, so typed views (u64 ids, f32 vectors) need no copy.
struct AlignedBuf {
    words: Vec<u64>,
    len: usize,
}

impl AsRef<[u8]> for AlignedBuf {
    fn as_ref(&self) -> &[u8] {
        &bytemuck::cast_slice::<u64, u8>(&self.words)[..self.len]
    }
}

impl FileBytes {
    /// Copy `v` into an 8-byte-aligned buffer.
    pub fn from_vec(v: Vec<u8>) -> Self {
        let mut words = vec![0u64; v.len().div_ceil(8)];
        bytemuck::cast_slice_mut::<u64, u8>(&mut words)[..v.len()].copy_from_slice(&v);
        FileBytes(Arc::new(AlignedBuf {
            words,
            len: v.len(),
        }))
    }

    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        (*self.0).as_ref()
    }
}

impl fmt::Debug for FileBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FileBytes({} bytes)", self.as_slice().len())
    }
}

/// Held while a writer owns the store; released on drop.
pub trait LockGuard: Send + Sync {}

/// Storage for the store's files.
pub trait Directory: Send + Sync + fmt::Debug {
    /// The whole content of `name`.
    fn open_read(&self, name: &str) -> Result<FileBytes>;
    /// Create or replace `name` with `data`, durably and atomically.
    fn atomic_write(&self, name: &str, data: &[u8]) -> Result<()>;
    /// Remove `name` (absent is not an error).
    fn delete(&self, name: &str) -> Result<()>;
    /// Whether `name` exists.
    fn exists(&self, name: &str) -> bool;
    /// Every file name.
    fn list(&self) -> Result<Vec<String>>;
    /// Take the exclusive lock `name`, or fail with [`Error::Locked`] at once.
    fn try_lock(&self, name: &str) -> Result<Box<dyn LockGuard>>;
    /// Remove the temporary files of [`Directory::atomic_write`]s whose writer is gone
    /// (died mid-write); never one that a live writer, of any process, is still writing.
    /// Returns the names removed.
    fn remove_abandoned_temps(&self) -> Result<Vec<String>> {
        Ok(Vec::new())
    }
    /// A path to show in messages.
    fn describe(&self) -> PathBuf;
}

/// Files on disk, read through mmap.
#[derive(Debug, Clone)]
pub struct MmapDirectory {
    root: PathBuf,
}

impl MmapDirectory {
    /// Use `root`, creating it if needed.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        std::fs::create_dir_all(&root).map_err(|e| Error::io(&root, e))?;
        Ok(Self { root })
    }

    /// The directory path.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn sync_dir(&self) -> Result<()> {
        File::open(&self.root)
            .and_then(|d| d.sync_all())
            .map_err(|e| Error::io(&self.root, e))
    }
}

/// Suffix of the temporary files of [`Directory::atomic_write`].
pub const TEMP_SUFFIX: &str = ".tmp";

/// A temp file younger than this is never removed, even unlocked: its writer may be
/// between creating and locking it.
const TEMP_GRACE: Duration = Duration::from_secs(600);

/// A temp name no other write of this or another live process uses at the same time.
fn temp_name(name: &str) -> String {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    format!(".{name}.{}-{seq}{TEMP_SUFFIX}", std::process::id())
}

struct MmapBytes(Mmap);

impl AsRef<[u8]> for MmapBytes {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

struct FileLock {
    _file: File,
}

impl LockGuard for FileLock {}

impl Directory for MmapDirectory {
    fn open_read(&self, name: &str) -> Result<FileBytes> {
        let path = self.root.join(name);
        // a FIFO or device would block or never end: only regular files are read
        let meta = std::fs::metadata(&path).map_err(|e| Error::io(&path, e))?;
        if !meta.is_file() {
            return Err(Error::corrupt(name, "is not a regular file"));
        }
        let file = File::open(&path).map_err(|e| Error::io(&path, e))?;
        let len = file.metadata().map_err(|e| Error::io(&path, e))?.len();
        if len == 0 {
            return Ok(FileBytes::from_vec(Vec::new()));
        }
        // SAFETY: store files are immutable once renamed into place; nothing truncates them.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(&path, e))?;
        Ok(FileBytes(Arc::new(MmapBytes(map))))
    }

    fn atomic_write(&self, name: &str, data: &[u8]) -> Result<()> {
        let tmp = self.root.join(temp_name(name));
        let path = self.root.join(name);
        let write = || -> std::io::Result<File> {
            let mut f = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
            // held until the rename: garbage collection skips a locked temp file
            f.lock()?;
            f.write_all(data)?;
            f.sync_all()?;
            Ok(f)
        };
        let f = match write() {
            Ok(f) => f,
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(Error::io(&tmp, e));
            }
        };
        if let Err(e) = std::fs::rename(&tmp, &path) {
            let _ = std::fs::remove_file(&tmp);
            return Err(Error::io(&path, e));
        }
        drop(f);
        self.sync_dir()
    }

    fn delete(&self, name: &str) -> Result<()> {
        let path = self.root.join(name);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(&path, e)),
        }
    }

    fn exists(&self, name: &str) -> bool {
        self.root.join(name).exists()
    }

    fn list(&self) -> Result<Vec<String>> {
        let rd = std::fs::read_dir(&self.root).map_err(|e| Error::io(&self.root, e))?;
        let mut v = Vec::new();
        for e in rd {
            let e = e.map_err(|e| Error::io(&self.root, e))?;
            if let Some(n) = e.file_name().to_str() {
                v.push(n.to_string());
            }
        }
        v.sort();
        Ok(v)
    }

    fn try_lock(&self, name: &str) -> Result<Box<dyn LockGuard>> {
        let path = self.root.join(name);
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        match file.try_lock() {
            Ok(()) => Ok(Box::new(FileLock { _file: file })),
            Err(std::fs::TryLockError::WouldBlock) => Err(Error::Locked {
                path: self.root.clone(),
            }),
            Err(std::fs::TryLockError::Error(e)) => Err(Error::io(&path, e)),
        }
    }

    fn remove_abandoned_temps(&self) -> Result<Vec<String>> {
        let mut removed = Vec::new();
        for name in self.list()? {
            if !(name.starts_with('.') && name.ends_with(TEMP_SUFFIX)) {
                continue;
            }
            let path = self.root.join(&name);
            let Ok(file) = File::open(&path) else {
                continue; // renamed or removed meanwhile
            };
            let young = file
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| SystemTime::now().duration_since(t).ok())
                .is_none_or(|age| age < TEMP_GRACE);
            // a live writer holds the lock until its rename
            if young || file.try_lock().is_err() {
                continue;
            }
            match std::fs::remove_file(&path) {
                Ok(()) => removed.push(name),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io(&path, e)),
            }
        }
        Ok(removed)
    }

    fn describe(&self) -> PathBuf {
        self.root.clone()
    }
}

/// Files in memory, for tests and ephemeral stores.
#[derive(Debug, Clone, Default)]
pub struct RamDirectory {
    files: Arc<Mutex<HashMap<String, FileBytes>>>,
    locks: Arc<Mutex<HashSet<String>>>,
}

impl RamDirectory {
    /// An empty directory.
    pub fn new() -> Self {
        Self::default()
    }

    fn files(&self) -> std::sync::MutexGuard<'_, HashMap<String, FileBytes>> {
        self.files.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Overwrite a file in place, bypassing atomicity: for corruption tests.
    pub fn tamper(&self, name: &str, f: impl FnOnce(&mut Vec<u8>)) -> Result<()> {
        let mut files = self.files();
        let cur = files
            .get(name)
            .ok_or_else(|| Error::io(name, std::io::Error::from(std::io::ErrorKind::NotFound)))?;
        let mut v = cur.as_slice().to_vec();
        f(&mut v);
        files.insert(name.to_string(), FileBytes::from_vec(v));
        Ok(())
    }
}

struct RamLock {
    name: String,
    locks: Arc<Mutex<HashSet<String>>>,
}

impl LockGuard for RamLock {}

impl Drop for RamLock {
    fn drop(&mut self) {
        self.locks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.name);
    }
}

impl Directory for RamDirectory {
    fn open_read(&self, name: &str) -> Result<FileBytes> {
        self.files()
            .get(name)
            .cloned()
            .ok_or_else(|| Error::io(name, std::io::Error::from(std::io::ErrorKind::NotFound)))
    }

    fn atomic_write(&self, name: &str, data: &[u8]) -> Result<()> {
        self.files()
            .insert(name.to_string(), FileBytes::from_vec(data.to_vec()));
        Ok(())
    }

    fn delete(&self, name: &str) -> Result<()> {
        self.files().remove(name);
        Ok(())
    }

    fn exists(&self, name: &str) -> bool {
        self.files().contains_key(name)
    }

    fn list(&self) -> Result<Vec<String>> {
        let mut v: Vec<String> = self.files().keys().cloned().collect();
        v.sort();
        Ok(v)
    }

    fn try_lock(&self, name: &str) -> Result<Box<dyn LockGuard>> {
        let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        if !locks.insert(name.to_string()) {
            return Err(Error::Locked {
                path: PathBuf::from("<ram>"),
            });
        }
        Ok(Box::new(RamLock {
            name: name.to_string(),
            locks: self.locks.clone(),
        }))
    }

    fn describe(&self) -> PathBuf {
        PathBuf::from("<ram>")
    }
}
