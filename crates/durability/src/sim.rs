//! Power loss, simulated. [`SimFs`] is a [`FileSystem`] in memory that keeps apart what
//! was written and what was made durable: a file's bytes are durable up to its last
//! `sync_file`, the directory's entries (creations, renames, removals) as of its last
//! `sync_dir`. [`SimFs::fail_after`] makes every step from the n-th on fail (the process
//! dies there); [`SimFs::power_loss`] then gives the file system a machine would find on
//! restart: the synced state, plus an arbitrary prefix of the entry changes made since,
//! over files whose unsynced bytes are dropped, partly kept, or kept with a torn end.
//!
//! Wrapped in a [`FsDirectory`] (a [`SimDirectory`]), it runs the same durable-write code
//! as [`crate::MmapDirectory`], so a missing sync there is a failing crash test.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::directory::{FileBytes, FileSystem, FsDirectory, LockGuard};
use crate::error::{Error, Result};

/// A [`crate::Directory`] on a [`SimFs`].
pub type SimDirectory = FsDirectory<SimFs>;

impl SimDirectory {
    /// An empty simulated directory.
    pub fn simulated() -> Self {
        FsDirectory::new(SimFs::default())
    }
}

/// A change to the directory's entries not yet made durable.
#[derive(Debug, Clone)]
enum EntryChange {
    Create(String, usize),
    Rename(String, String),
    Remove(String),
}

#[derive(Debug, Clone, Default)]
struct Inode {
    data: Vec<u8>,
    /// Bytes made durable by `sync_file`.
    synced: usize,
}

#[derive(Debug, Default)]
struct State {
    inodes: Vec<Inode>,
    /// Entries as the running process sees them.
    names: BTreeMap<String, usize>,
    /// Entries as of the last `sync_dir`.
    durable: BTreeMap<String, usize>,
    /// Entry changes since the last `sync_dir`, in order.
    unsynced: Vec<EntryChange>,
    /// Files being written (created and not yet dropped), by inode.
    writing: HashSet<usize>,
    /// Lock files held.
    locks: HashSet<String>,
    /// Mutating steps taken so far.
    steps: u64,
    /// Steps from this one on fail.
    fail_at: Option<u64>,
}

/// The simulated file system (clones share it).
#[derive(Debug, Clone, Default)]
pub struct SimFs {
    state: Arc<Mutex<State>>,
}

/// A file being written on a [`SimFs`]; dropping it releases its lock.
#[derive(Debug)]
pub struct SimWriting {
    inode: usize,
    state: Arc<Mutex<State>>,
}

impl Drop for SimWriting {
    fn drop(&mut self) {
        lock(&self.state).writing.remove(&self.inode);
    }
}

struct SimLock {
    name: String,
    state: Arc<Mutex<State>>,
}

impl LockGuard for SimLock {}

impl Drop for SimLock {
    fn drop(&mut self) {
        lock(&self.state).locks.remove(&self.name);
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|p| p.into_inner())
}

fn not_found(name: &str) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::NotFound,
        format!("{name}: no such file"),
    )
}

/// How a crash leaves the bytes written to a file after its last sync.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tail {
    /// None of them.
    Dropped,
    /// The first `n` of them (`n` clamped to what was written).
    Kept(usize),
    /// The first `n`, the last of which are garbage (a torn sector).
    Torn(usize),
}

impl SimFs {
    /// Mutating steps (create, write, sync, rename, remove) taken so far.
    pub fn steps(&self) -> u64 {
        lock(&self.state).steps
    }

    /// Make the `n`-th mutating step from the start (counting from 0) and every later one
    /// fail, as if the process died there.
    pub fn fail_after(&self, n: u64) {
        lock(&self.state).fail_at = Some(n);
    }

    /// The file system found after a power loss at this point. `choose(k)` picks a
    /// number in `0..k` for each arbitrary choice: how many of the entry changes since
    /// the last directory sync reached the disk (a prefix, in order), and for each file
    /// how much of its unsynced bytes did ([`Tail`]: `tail(len)` for a file with `len`
    /// unsynced bytes).
    pub fn power_loss(
        &self,
        mut choose: impl FnMut(usize) -> usize,
        mut tail: impl FnMut(usize) -> Tail,
    ) -> SimFs {
        let st = lock(&self.state);
        let mut names = st.durable.clone();
        let kept = choose(st.unsynced.len() + 1);
        for change in st.unsynced.iter().take(kept) {
            match change {
                EntryChange::Create(n, i) => {
                    names.insert(n.clone(), *i);
                }
                EntryChange::Rename(from, to) => {
                    if let Some(i) = names.remove(from) {
                        names.insert(to.clone(), i);
                    }
                }
                EntryChange::Remove(n) => {
                    names.remove(n);
                }
            }
        }
        let mut inodes = Vec::new();
        let mut remapped = BTreeMap::new();
        for (name, &i) in &names {
            let node = &st.inodes[i];
            let unsynced = node.data.len() - node.synced;
            let mut data = node.data[..node.synced].to_vec();
            match tail(unsynced) {
                Tail::Dropped => {}
                Tail::Kept(n) => {
                    data.extend_from_slice(&node.data[node.synced..][..n.min(unsynced)])
                }
                Tail::Torn(n) => {
                    let n = n.min(unsynced);
                    data.extend_from_slice(&node.data[node.synced..][..n]);
                    let torn = n.min(8);
                    let len = data.len();
                    for b in &mut data[len - torn..] {
                        *b ^= 0xA5;
                    }
                }
            }
            let synced = data.len();
            inodes.push(Inode { data, synced });
            remapped.insert(name.clone(), inodes.len() - 1);
        }
        SimFs {
            state: Arc::new(Mutex::new(State {
                inodes,
                durable: remapped.clone(),
                names: remapped,
                ..State::default()
            })),
        }
    }

    /// Count a mutating step; `Err` once the process is to have died.
    fn step(st: &mut State) -> std::io::Result<()> {
        let n = st.steps;
        st.steps += 1;
        if st.fail_at.is_some_and(|f| n >= f) {
            return Err(std::io::Error::other("simulated power loss"));
        }
        Ok(())
    }
}

impl FileSystem for SimFs {
    type Writing = SimWriting;

    fn create_locked(&self, name: &str) -> std::io::Result<SimWriting> {
        let mut st = lock(&self.state);
        Self::step(&mut st)?;
        if st.names.contains_key(name) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!("{name} exists"),
            ));
        }
        st.inodes.push(Inode::default());
        let inode = st.inodes.len() - 1;
        st.names.insert(name.to_string(), inode);
        st.unsynced
            .push(EntryChange::Create(name.to_string(), inode));
        st.writing.insert(inode);
        Ok(SimWriting {
            inode,
            state: self.state.clone(),
        })
    }

    fn write(&self, file: &mut SimWriting, data: &[u8]) -> std::io::Result<()> {
        let mut st = lock(&self.state);
        Self::step(&mut st)?;
        st.inodes[file.inode].data.extend_from_slice(data);
        Ok(())
    }

    fn sync_file(&self, file: &SimWriting) -> std::io::Result<()> {
        let mut st = lock(&self.state);
        Self::step(&mut st)?;
        let node = &mut st.inodes[file.inode];
        node.synced = node.data.len();
        Ok(())
    }

    fn open_append(&self, name: &str) -> std::io::Result<SimWriting> {
        let mut st = lock(&self.state);
        Self::step(&mut st)?;
        let inode = *st.names.get(name).ok_or_else(|| not_found(name))?;
        st.writing.insert(inode);
        Ok(SimWriting {
            inode,
            state: self.state.clone(),
        })
    }

    /// The cut is durable at once. (On disk it is not until the next sync, but what a
    /// log cuts is a tail the next open would cut again, so both outcomes read the same.)
    fn truncate(&self, file: &mut SimWriting, len: u64) -> std::io::Result<()> {
        let mut st = lock(&self.state);
        Self::step(&mut st)?;
        let node = &mut st.inodes[file.inode];
        let len = usize::try_from(len)
            .unwrap_or(usize::MAX)
            .min(node.data.len());
        node.data.truncate(len);
        node.synced = node.synced.min(len);
        Ok(())
    }

    fn rename(&self, from: &str, to: &str) -> std::io::Result<()> {
        let mut st = lock(&self.state);
        Self::step(&mut st)?;
        let i = st.names.remove(from).ok_or_else(|| not_found(from))?;
        st.names.insert(to.to_string(), i);
        st.unsynced
            .push(EntryChange::Rename(from.to_string(), to.to_string()));
        Ok(())
    }

    fn remove(&self, name: &str) -> std::io::Result<()> {
        let mut st = lock(&self.state);
        Self::step(&mut st)?;
        st.names.remove(name).ok_or_else(|| not_found(name))?;
        st.unsynced.push(EntryChange::Remove(name.to_string()));
        Ok(())
    }

    fn sync_dir(&self) -> std::io::Result<()> {
        let mut st = lock(&self.state);
        Self::step(&mut st)?;
        st.durable = st.names.clone();
        st.unsynced.clear();
        Ok(())
    }

    fn read(&self, name: &str) -> Result<FileBytes> {
        let st = lock(&self.state);
        let i = st
            .names
            .get(name)
            .ok_or_else(|| Error::io(name, not_found(name)))?;
        Ok(FileBytes::from_vec(st.inodes[*i].data.clone()))
    }

    fn exists(&self, name: &str) -> bool {
        lock(&self.state).names.contains_key(name)
    }

    fn list(&self) -> std::io::Result<Vec<String>> {
        Ok(lock(&self.state).names.keys().cloned().collect())
    }

    fn try_lock(&self, name: &str) -> Result<Box<dyn LockGuard>> {
        if !lock(&self.state).locks.insert(name.to_string()) {
            return Err(Error::Locked {
                path: PathBuf::from("<sim>"),
            });
        }
        Ok(Box::new(SimLock {
            name: name.to_string(),
            state: self.state.clone(),
        }))
    }

    fn is_abandoned(&self, name: &str) -> bool {
        let st = lock(&self.state);
        st.names.get(name).is_some_and(|i| !st.writing.contains(i))
    }

    fn describe(&self) -> PathBuf {
        PathBuf::from("<sim>")
    }
}
