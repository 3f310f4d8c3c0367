//! The embedded store: generations of immutable segments, a manifest swapped atomically
//! on commit, cheap snapshots for readers, and one writer at a time.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock, Weak};

use crate::directory::Directory;
use crate::error::{Error, Result};
use crate::manifest::{GenerationMeta, MANIFEST, Manifest};
use crate::segment::Segment;
use crate::tombstones::Tombstones;
use crate::types::{ItemId, StorageType};

/// Name of the writer lock file.
pub const WRITER_LOCK: &str = "writer.lock";

/// A segment with its tombstones, as seen by one snapshot.
#[derive(Debug, Clone)]
pub struct LiveSegment {
    /// The segment.
    pub segment: Arc<Segment>,
    /// Its deleted rows.
    pub tombstones: Arc<Tombstones>,
    /// The tombstone file backing `tombstones`, kept alive for garbage collection.
    _deletes_file: Option<Arc<String>>,
}

/// A consistent, immutable view of one generation. Cheap to clone; stays valid while
/// new commits and generations land.
#[derive(Debug, Clone)]
pub struct Snapshot {
    name: String,
    meta: GenerationMeta,
    segments: Arc<Vec<LiveSegment>>,
    opstamp: u64,
}

impl Snapshot {
    /// The generation's name.
    pub fn generation(&self) -> &str {
        &self.name
    }
    /// Vector width.
    pub fn dim(&self) -> usize {
        self.meta.dim
    }
    /// Storage type.
    pub fn storage(&self) -> StorageType {
        self.meta.storage
    }
    /// Attributes per item.
    pub fn n_attrs(&self) -> usize {
        self.meta.n_attrs
    }
    /// Live items.
    pub fn len(&self) -> usize {
        self.meta.live()
    }
    /// Whether there is no live item.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Commit this view was taken at.
    pub fn opstamp(&self) -> u64 {
        self.opstamp
    }
    /// Content version of the generation: the opstamp of the last commit that changed
    /// its rows. Commits to other generations leave it (and indexes keyed by it) as is.
    pub fn version(&self) -> u64 {
        self.meta.version
    }
    /// Segments, oldest first.
    pub fn segments(&self) -> &[LiveSegment] {
        &self.segments
    }

    /// Where the live row of `id` is: (segment index, row).
    pub fn locate(&self, id: ItemId) -> Option<(usize, usize)> {
        // newest first: a replaced row is tombstoned, so at most one is live
        self.segments.iter().enumerate().rev().find_map(|(i, s)| {
            s.segment
                .find(id.0)
                .filter(|&r| !s.tombstones.is_deleted(r))
                .map(|r| (i, r))
        })
    }

    /// The vector of `id`, decoded to f32.
    pub fn get(&self, id: ItemId) -> Option<Vec<f32>> {
        let (s, r) = self.locate(id)?;
        let mut v = vec![0f32; self.meta.dim];
        self.segments[s].segment.read_vector(r, &mut v).ok()?;
        Some(v)
    }

    /// Vectors of `ids` into `out` (ids.len() x dim, row-major); returns which were found.
    pub fn get_many(&self, ids: &[ItemId], out: &mut [f32]) -> Result<Vec<bool>> {
        let d = self.meta.dim;
        if out.len() != ids.len() * d {
            return Err(Error::Query {
                message: format!(
                    "output holds {} values, {} ids x dim {d} need {}",
                    out.len(),
                    ids.len(),
                    ids.len() * d
                ),
            });
        }
        ids.iter()
            .zip(out.chunks_mut(d))
            .map(|(id, o)| match self.locate(*id) {
                Some((s, r)) => self.segments[s].segment.read_vector(r, o).map(|()| true),
                None => {
                    o.fill(0.0);
                    Ok(false)
                }
            })
            .collect()
    }

    /// Attributes of `id`.
    pub fn attrs(&self, id: ItemId) -> Option<&[u32]> {
        let (s, r) = self.locate(id)?;
        Some(self.segments[s].segment.attrs(r))
    }

    /// Every live (id, segment index, row), oldest segment first.
    pub fn iter_live(&self) -> impl Iterator<Item = (ItemId, usize, usize)> + '_ {
        self.segments.iter().enumerate().flat_map(|(si, s)| {
            s.segment
                .ids()
                .iter()
                .enumerate()
                .filter(|(r, _)| !s.tombstones.is_deleted(*r))
                .map(move |(r, id)| (ItemId(*id), si, r))
        })
    }
}

/// Settings of a new generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenerationSpec {
    /// Name, e.g. the embedding model version `pinclip-2026-11-20`.
    pub name: String,
    /// Vector width.
    pub dim: usize,
    /// Storage type.
    pub storage: StorageType,
    /// u32 attributes per item.
    pub n_attrs: usize,
}

impl GenerationSpec {
    /// A generation of `dim`-wide vectors stored as `storage`, without attributes.
    pub fn new(name: impl Into<String>, dim: usize, storage: StorageType) -> Self {
        Self {
            name: name.into(),
            dim,
            storage,
            n_attrs: 0,
        }
    }

    /// With `n` u32 attributes per item.
    pub fn attrs(mut self, n: usize) -> Self {
        self.n_attrs = n;
        self
    }
}

/// The store's state as of one manifest: the manifest and a snapshot per generation.
pub(crate) struct State {
    pub(crate) manifest: Manifest,
    pub(crate) snapshots: BTreeMap<String, Snapshot>,
}

impl State {
    pub(crate) fn generation(&self, name: &str) -> Result<Snapshot> {
        self.snapshots
            .get(name)
            .cloned()
            .ok_or_else(|| Error::Generation {
                name: name.into(),
                message: "no such generation".into(),
            })
    }
}

/// A store of embedding generations in a [`Directory`].
pub struct Store {
    pub(crate) dir: Arc<dyn Directory>,
    pub(crate) state: RwLock<Arc<State>>,
    /// Open segments and tombstone files by name, weakly: a file is in use while some
    /// snapshot holds it.
    pub(crate) segments: Mutex<HashMap<String, Weak<Segment>>>,
    pub(crate) deletes: Mutex<HashMap<String, Weak<String>>>,
    /// Decoded tombstone files by name (files are immutable), so a commit or reload
    /// decodes only the files it has not seen.
    pub(crate) decoded: Mutex<HashMap<String, Weak<Tombstones>>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("dir", &self.dir).finish()
    }
}

impl Store {
    /// Open the store in `dir` (an empty directory is an empty store). Every segment and
    /// tombstone file of the manifest is verified.
    pub fn open(dir: Arc<dyn Directory>) -> Result<Arc<Self>> {
        let store = Arc::new(Self {
            dir,
            state: RwLock::new(Arc::new(State {
                manifest: Manifest::default(),
                snapshots: BTreeMap::new(),
            })),
            segments: Mutex::new(HashMap::new()),
            deletes: Mutex::new(HashMap::new()),
            decoded: Mutex::new(HashMap::new()),
        });
        store.reload()?;
        Ok(store)
    }

    /// The directory the store lives in (HNSW indexes are saved beside the segments).
    pub fn directory(&self) -> &dyn Directory {
        self.dir.as_ref()
    }

    /// Re-read the manifest to see commits made by another process (or another `Store`
    /// on the same directory). The visible state never moves backwards: a manifest no
    /// newer than the one in use changes nothing, so a reload racing a commit of this
    /// process cannot undo it. When a newer commit collected the files of the manifest
    /// just read, the read is retried on the newer manifest.
    pub fn reload(&self) -> Result<()> {
        const ATTEMPTS: usize = 8;
        let mut attempt = 0;
        loop {
            let manifest = self.read_manifest()?;
            if manifest.opstamp <= self.state().manifest.opstamp {
                return Ok(());
            }
            match self.build_state(manifest.clone()) {
                Ok(state) => {
                    self.install(Arc::new(state));
                    return Ok(());
                }
                Err(e) => {
                    attempt += 1;
                    if attempt >= ATTEMPTS || self.read_manifest()?.opstamp == manifest.opstamp {
                        return Err(e);
                    }
                }
            }
        }
    }

    fn read_manifest(&self) -> Result<Manifest> {
        if self.dir.exists(MANIFEST) {
            Manifest::decode(self.dir.open_read(MANIFEST)?.as_slice())
        } else {
            Ok(Manifest::default())
        }
    }

    /// Make `state` the one readers get, unless the one in use is as new or newer.
    pub(crate) fn install(&self, state: Arc<State>) {
        let mut cur = self.state.write().unwrap_or_else(|p| p.into_inner());
        if state.manifest.opstamp > cur.manifest.opstamp {
            *cur = state;
        }
    }

    fn segment(&self, name: &str) -> Result<Arc<Segment>> {
        let mut cache = self.segments.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = cache.get(name).and_then(Weak::upgrade) {
            return Ok(s);
        }
        let s = Arc::new(Segment::open(name, self.dir.open_read(name)?)?);
        cache.insert(name.to_string(), Arc::downgrade(&s));
        Ok(s)
    }

    fn tombstones(&self, name: &str, rows: usize) -> Result<Arc<Tombstones>> {
        let mut cache = self.decoded.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(t) = cache.get(name).and_then(Weak::upgrade) {
            return Ok(t);
        }
        let t = Arc::new(Tombstones::decode(name, &self.dir.open_read(name)?, rows)?);
        cache.retain(|_, w| w.strong_count() > 0);
        cache.insert(name.to_string(), Arc::downgrade(&t));
        Ok(t)
    }

    fn deletes_handle(&self, name: &str) -> Arc<String> {
        let mut cache = self.deletes.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = cache.get(name).and_then(Weak::upgrade) {
            return s;
        }
        let h = Arc::new(name.to_string());
        cache.insert(name.to_string(), Arc::downgrade(&h));
        h
    }

    pub(crate) fn build_state(&self, manifest: Manifest) -> Result<State> {
        let mut snapshots = BTreeMap::new();
        for (name, g) in &manifest.generations {
            let mut segs = Vec::with_capacity(g.segments.len());
            for sm in &g.segments {
                let segment = self.segment(&sm.file)?;
                if segment.len() != sm.count
                    || segment.dim() != g.dim
                    || segment.storage() != g.storage
                    || segment.n_attrs() != g.n_attrs
                {
                    return Err(Error::corrupt(
                        &sm.file,
                        format!("segment does not match the manifest entry of generation {name:?}"),
                    ));
                }
                let (tombstones, handle) = match &sm.deletes {
                    Some(d) => (self.tombstones(d, sm.count)?, Some(self.deletes_handle(d))),
                    None => (Arc::new(Tombstones::empty(sm.count)), None),
                };
                if tombstones.count() != sm.deleted {
                    return Err(Error::corrupt(
                        sm.deletes.as_deref().unwrap_or(&sm.file),
                        format!(
                            "{} rows deleted, the manifest says {}",
                            tombstones.count(),
                            sm.deleted
                        ),
                    ));
                }
                segs.push(LiveSegment {
                    segment,
                    tombstones,
                    _deletes_file: handle,
                });
            }
            snapshots.insert(
                name.clone(),
                Snapshot {
                    name: name.clone(),
                    meta: g.clone(),
                    segments: Arc::new(segs),
                    opstamp: manifest.opstamp,
                },
            );
        }
        Ok(State {
            manifest,
            snapshots,
        })
    }

    pub(crate) fn state(&self) -> Arc<State> {
        self.state.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The current generation, if one is set.
    pub fn snapshot(&self) -> Option<Snapshot> {
        let st = self.state();
        st.manifest
            .current
            .as_ref()
            .and_then(|c| st.snapshots.get(c).cloned())
    }

    /// A named generation.
    pub fn generation(&self, name: &str) -> Result<Snapshot> {
        self.state().generation(name)
    }

    /// Names of all generations.
    pub fn generations(&self) -> Vec<String> {
        self.state().snapshots.keys().cloned().collect()
    }

    /// Name of the current generation.
    pub fn current(&self) -> Option<String> {
        self.state().manifest.current.clone()
    }

    /// The manifest as last committed or loaded.
    pub fn manifest(&self) -> Manifest {
        self.state().manifest.clone()
    }
}
