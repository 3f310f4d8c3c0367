//! Where persistent files live: a `Directory` abstraction (as in tantivy) so that
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

/// Held while a writer owns the directory; released on drop.
pub trait LockGuard: Send + Sync {}

/// Storage for a set of whole, immutable files.
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

/// The file-system steps a durable directory is made of. [`FsDirectory`] writes files
/// with them in one place ([`FsDirectory::atomic_write`]): [`OsFs`] carries them out on
/// disk, [`crate::sim::SimFs`] in memory with simulated power loss, so the crash tests
/// exercise the very sequence of writes and syncs production runs.
pub trait FileSystem: Send + Sync + fmt::Debug {
    /// A file being written, exclusively created and locked.
    type Writing;
    /// Create `name` (it must not exist) and lock it until the handle is dropped.
    fn create_locked(&self, name: &str) -> std::io::Result<Self::Writing>;
    /// Append `data` to the file being written.
    fn write(&self, file: &mut Self::Writing, data: &[u8]) -> std::io::Result<()>;
    /// Make the file's content durable.
    fn sync_file(&self, file: &Self::Writing) -> std::io::Result<()>;
    /// Open the existing file `name` to append to it (an append-only log's segment).
    fn open_append(&self, name: &str) -> std::io::Result<Self::Writing>;
    /// Cut the file being written to `len` bytes (a log's torn tail); appends go on there.
    fn truncate(&self, file: &mut Self::Writing, len: u64) -> std::io::Result<()>;
    /// Rename `from` to `to`, replacing `to`.
    fn rename(&self, from: &str, to: &str) -> std::io::Result<()>;
    /// Remove `name`.
    fn remove(&self, name: &str) -> std::io::Result<()>;
    /// Make the directory's entries (creations, renames, removals) durable.
    fn sync_dir(&self) -> std::io::Result<()>;
    /// The content of `name`.
    fn read(&self, name: &str) -> Result<FileBytes>;
    /// Whether `name` exists.
    fn exists(&self, name: &str) -> bool;
    /// Every name, sorted.
    fn list(&self) -> std::io::Result<Vec<String>>;
    /// Take the lock `name` or fail at once.
    fn try_lock(&self, name: &str) -> Result<Box<dyn LockGuard>>;
    /// Whether the temp file `name` belongs to a writer that is gone.
    fn is_abandoned(&self, name: &str) -> bool;
    /// A path to show in messages.
    fn describe(&self) -> PathBuf;
}

/// A [`Directory`] over a [`FileSystem`]: files are written to a temp file of their
/// own, synced, renamed into place, and the directory synced, before a write returns.
#[derive(Debug, Clone)]
pub struct FsDirectory<F> {
    fs: F,
}

impl<F: FileSystem> FsDirectory<F> {
    /// The directory on `fs`.
    pub fn new(fs: F) -> Self {
        Self { fs }
    }

    /// The file system underneath.
    pub fn fs(&self) -> &F {
        &self.fs
    }
}

impl<F: FileSystem> Directory for FsDirectory<F> {
    fn open_read(&self, name: &str) -> Result<FileBytes> {
        self.fs.read(name)
    }

    /// The durable write, in this order (each sync is needed; embed-store's power-loss
    /// suite, `tests/power_loss.rs`, fails without any one of them):
    /// 1. write the data to a temp file of its own and sync it, so that the name never
    ///    points at data that is not on disk;
    /// 2. rename it over `name`;
    /// 3. sync the directory, so that the rename is durable before the write returns.
    fn atomic_write(&self, name: &str, data: &[u8]) -> Result<()> {
        let tmp = temp_name(name);
        let fs = &self.fs;
        let io = |e| Error::io(fs.describe().join(name), e);
        let written = fs.create_locked(&tmp).and_then(|mut f| {
            fs.write(&mut f, data)?;
            fs.sync_file(&f)?; // 1: the data is durable before any name points at it
            fs.rename(&tmp, name)?;
            Ok(f)
        });
        match written {
            // the lock is held until the rename: garbage collection skips the temp file
            Ok(f) => drop(f),
            Err(e) => {
                let _ = fs.remove(&tmp);
                return Err(io(e));
            }
        }
        fs.sync_dir().map_err(io) // 3: the rename is durable before the write returns
    }

    fn delete(&self, name: &str) -> Result<()> {
        match self.fs.remove(name) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(self.fs.describe().join(name), e)),
        }
    }

    fn exists(&self, name: &str) -> bool {
        self.fs.exists(name)
    }

    fn list(&self) -> Result<Vec<String>> {
        self.fs.list().map_err(|e| Error::io(self.fs.describe(), e))
    }

    fn try_lock(&self, name: &str) -> Result<Box<dyn LockGuard>> {
        self.fs.try_lock(name)
    }

    fn remove_abandoned_temps(&self) -> Result<Vec<String>> {
        let mut removed = Vec::new();
        for name in self.list()? {
            if name.starts_with('.') && name.ends_with(TEMP_SUFFIX) && self.fs.is_abandoned(&name) {
                self.delete(&name)?;
                removed.push(name);
            }
        }
        Ok(removed)
    }

    fn describe(&self) -> PathBuf {
        self.fs.describe()
    }
}

/// Files on disk, read through mmap.
pub type MmapDirectory = FsDirectory<OsFs>;

/// The operating system's file system under one directory.
#[derive(Debug, Clone)]
pub struct OsFs {
    root: PathBuf,
}

impl MmapDirectory {
    /// Use `root`, creating it (and syncing its parent, so the new directory survives a
    /// power loss) if needed.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        if !root.is_dir() {
            std::fs::create_dir_all(&root).map_err(|e| Error::io(&root, e))?;
            if let Some(parent) = root.parent().filter(|p| !p.as_os_str().is_empty()) {
                File::open(parent)
                    .and_then(|d| d.sync_all())
                    .map_err(|e| Error::io(parent, e))?;
            }
        }
        Ok(FsDirectory::new(OsFs { root }))
    }

    /// The directory path.
    pub fn root(&self) -> &Path {
        &self.fs.root
    }
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

/// Suffix of the temporary files of [`Directory::atomic_write`].
pub const TEMP_SUFFIX: &str = ".tmp";

/// A temp file younger than this is never removed, even unlocked: its writer may be
/// between creating and locking it.
const TEMP_GRACE: Duration = Duration::from_secs(600);

/// Creates or replaces the file at `path` whole, outside any [`Directory`] (a model
/// checkpoint a caller names by path): `write` fills a temp file of its own beside it
/// (`.{name}.{pid}-{seq}.tmp`), which is synced and renamed over `path`, then the parent
/// directory is synced. A reader of `path` sees the old file or the new one, never a
/// part; a crash leaves the old file (and perhaps a temp file, which
/// [`Directory::remove_abandoned_temps`] recognises). On any error the temp file is
/// removed and `path` left as it was.
pub fn replace_file<E: From<Error>>(
    path: &Path,
    write: impl FnOnce(&Path) -> std::result::Result<(), E>,
) -> std::result::Result<(), E> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| Error::Invalid(format!("{}: not a file path", path.display())))?;
    let tmp = path.with_file_name(temp_name(name));
    let result = write(&tmp).and_then(|()| {
        let synced = File::open(&tmp).and_then(|f| f.sync_all());
        synced.map_err(|e| Error::io(&tmp, e))?;
        std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))?;
        let parent = path.parent().filter(|p| !p.as_os_str().is_empty());
        let parent = parent.unwrap_or(Path::new("."));
        let synced = File::open(parent).and_then(|d| d.sync_all());
        synced.map_err(|e| E::from(Error::io(parent, e)))
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// A temp name no other write of this or another live process uses at the same time.
fn temp_name(name: &str) -> String {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    format!(".{name}.{}-{seq}{TEMP_SUFFIX}", std::process::id())
}

impl FileSystem for OsFs {
    type Writing = File;

    fn create_locked(&self, name: &str) -> std::io::Result<File> {
        let f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(self.root.join(name))?;
        f.lock()?;
        Ok(f)
    }

    fn write(&self, file: &mut File, data: &[u8]) -> std::io::Result<()> {
        file.write_all(data)
    }

    fn sync_file(&self, file: &File) -> std::io::Result<()> {
        file.sync_all()
    }

    fn open_append(&self, name: &str) -> std::io::Result<File> {
        OpenOptions::new().append(true).open(self.root.join(name))
    }

    fn truncate(&self, file: &mut File, len: u64) -> std::io::Result<()> {
        file.set_len(len)
    }

    fn rename(&self, from: &str, to: &str) -> std::io::Result<()> {
        std::fs::rename(self.root.join(from), self.root.join(to))
    }

    fn remove(&self, name: &str) -> std::io::Result<()> {
        std::fs::remove_file(self.root.join(name))
    }

    fn sync_dir(&self) -> std::io::Result<()> {
        File::open(&self.root).and_then(|d| d.sync_all())
    }

    fn read(&self, name: &str) -> Result<FileBytes> {
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
        // SAFETY: files are immutable once renamed into place; the one file kind that is
        // cut, a log segment, is cut only by the holder of the log's lock, after it
        // dropped its own mapping (crate::wal::Wal::open).
        let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(&path, e))?;
        Ok(FileBytes(Arc::new(MmapBytes(map))))
    }

    fn exists(&self, name: &str) -> bool {
        self.root.join(name).exists()
    }

    fn list(&self) -> std::io::Result<Vec<String>> {
        let mut v = Vec::new();
        for e in std::fs::read_dir(&self.root)? {
            if let Some(n) = e?.file_name().to_str() {
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

    /// Unlocked (its writer is gone: a live one holds the lock until its rename) and
    /// older than 10 minutes (a writer may be between creating and locking it).
    fn is_abandoned(&self, name: &str) -> bool {
        let Ok(file) = File::open(self.root.join(name)) else {
            return false; // renamed or removed meanwhile
        };
        let old = file
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| SystemTime::now().duration_since(t).ok())
            .is_some_and(|age| age >= TEMP_GRACE);
        old && file.try_lock().is_ok()
    }

    fn describe(&self) -> PathBuf {
        self.root.clone()
    }
}

/// Files in memory, for tests and ephemeral stores (writes are atomic, nothing is
/// durable).
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
