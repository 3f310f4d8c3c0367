//! The embedded store: generations of immutable segments, a manifest swapped atomically
//! on commit, cheap snapshots for readers, and one writer at a time.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock, Weak};

use crate::directory::{Directory, LockGuard};
use crate::error::{Error, Result};
use crate::manifest::{GenerationMeta, MANIFEST, Manifest, SegmentMeta, check_generation};
use crate::segment::{self, Row, Segment};
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

struct State {
    manifest: Manifest,
    snapshots: BTreeMap<String, Snapshot>,
}

impl State {
    fn generation(&self, name: &str) -> Result<Snapshot> {
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
    dir: Arc<dyn Directory>,
    state: RwLock<Arc<State>>,
    /// Open segments and tombstone files by name, weakly: a file is in use while some
    /// snapshot holds it.
    segments: Mutex<HashMap<String, Weak<Segment>>>,
    deletes: Mutex<HashMap<String, Weak<String>>>,
    /// Decoded tombstone files by name (files are immutable), so a commit or reload
    /// decodes only the files it has not seen.
    decoded: Mutex<HashMap<String, Weak<Tombstones>>>,
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
    fn install(&self, state: Arc<State>) {
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

    fn build_state(&self, manifest: Manifest) -> Result<State> {
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

    fn state(&self) -> Arc<State> {
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

    /// Take the single writer; a second one gets [`Error::Locked`]. Files left by a
    /// writer that died are collected (a failure there is kept for
    /// [`Writer::take_gc_error`], not returned).
    pub fn writer(self: &Arc<Self>) -> Result<Writer> {
        let lock = self.dir.try_lock(WRITER_LOCK)?;
        // see commits made by a previous writer of another process
        self.reload()?;
        let base = self.state();
        let mut w = Writer {
            store: self.clone(),
            _lock: lock,
            next_file: base.manifest.next_file,
            base,
            pending: BTreeMap::new(),
            new_generations: Vec::new(),
            dropped: Vec::new(),
            current: None,
            flush_bytes: DEFAULT_FLUSH_BYTES,
            gc_error: None,
        };
        w.collect_garbage_after_publish();
        Ok(w)
    }
}

#[derive(Default)]
struct Pending {
    /// id -> (vector, attrs); the last put of an id wins.
    puts: BTreeMap<u64, (Vec<f32>, Vec<u32>)>,
    deletes: HashSet<u64>,
    /// Segments already written for this transaction (file, rows), invisible until commit.
    staged: Vec<(String, usize)>,
    /// Ids in `staged`.
    staged_ids: HashSet<u64>,
    /// Bytes of vector data in `puts`.
    bytes: usize,
}

/// Default size of buffered puts past which they are written to a staged segment.
pub const DEFAULT_FLUSH_BYTES: usize = 256 << 20;

/// The single writer of a store: buffers puts and deletes, applies them on `commit`.
pub struct Writer {
    store: Arc<Store>,
    _lock: Box<dyn LockGuard>,
    /// The state of the last commit this writer published (or found when it took the
    /// lock): every commit builds on it, never on a state read back from disk.
    base: Arc<State>,
    /// Why the last garbage collection after a publish failed, if it did.
    gc_error: Option<Error>,
    pending: BTreeMap<String, Pending>,
    new_generations: Vec<GenerationSpec>,
    dropped: Vec<String>,
    current: Option<String>,
    next_file: u64,
    flush_bytes: usize,
}

impl Writer {
    /// (dim, attributes, storage) of `name`, created in this transaction or committed and
    /// not dropped since.
    fn spec_of(&self, name: &str) -> Result<(usize, usize, StorageType)> {
        if let Some(g) = self.new_generations.iter().find(|g| g.name == name) {
            return Ok((g.dim, g.n_attrs, g.storage));
        }
        match self.base.manifest.generations.get(name) {
            Some(g) if !self.dropped.iter().any(|d| d == name) => Ok((g.dim, g.n_attrs, g.storage)),
            _ => Err(Error::Generation {
                name: name.into(),
                message: "no such generation".into(),
            }),
        }
    }

    /// Vector width of `generation` (existing or created in this transaction).
    pub fn dim_of(&self, generation: &str) -> Result<usize> {
        Ok(self.spec_of(generation)?.0)
    }

    /// The generation `name` as of this writer's last commit (buffered changes are not
    /// in it).
    pub fn snapshot(&self, name: &str) -> Result<Snapshot> {
        self.base.generation(name)
    }

    /// Declare a new generation (visible after commit).
    pub fn create_generation(&mut self, spec: GenerationSpec) -> Result<()> {
        if let Err(message) = check_generation(&spec.name, spec.dim, spec.n_attrs) {
            return Err(Error::Generation {
                name: spec.name,
                message,
            });
        }
        if self.spec_of(&spec.name).is_ok() {
            return Err(Error::Generation {
                name: spec.name,
                message: "already exists".into(),
            });
        }
        self.new_generations.push(spec);
        Ok(())
    }

    /// Make `name` the generation readers get from [`Store::snapshot`] (at commit).
    pub fn set_current(&mut self, name: &str) -> Result<()> {
        self.spec_of(name)?;
        self.current = Some(name.to_string());
        Ok(())
    }

    /// Remove a generation and its files (at commit; readers holding it keep it).
    pub fn drop_generation(&mut self, name: &str) -> Result<()> {
        self.spec_of(name)?;
        if self.current.as_deref() == Some(name)
            || (self.current.is_none() && self.store.current().as_deref() == Some(name))
        {
            return Err(Error::Generation {
                name: name.into(),
                message: "is current; switch to another generation first".into(),
            });
        }
        self.new_generations.retain(|g| g.name != name);
        self.pending.remove(name);
        self.dropped.push(name.to_string());
        Ok(())
    }

    /// Validate and buffer `ids.len()` vectors (row-major in `vectors`) with optional
    /// attributes (row-major, `n_attrs` each). Wrong dims, NaN/Inf values, duplicate ids
    /// in the batch: a typed error, and nothing of the batch is kept.
    pub fn put_many(
        &mut self,
        generation: &str,
        ids: &[ItemId],
        vectors: &[f32],
        attrs: Option<&[u32]>,
    ) -> Result<()> {
        let (dim, n_attrs, storage) = self.spec_of(generation)?;
        let n = ids.len();
        crate::batch::validate_batch(dim, storage, ids, vectors)?;
        match attrs {
            Some(a) if a.len() != n * n_attrs => {
                return Err(Error::batch(format!(
                    "{n} ids with {n_attrs} attributes need {} attribute values, got {}",
                    n * n_attrs,
                    a.len()
                )));
            }
            None if n_attrs > 0 => {
                return Err(Error::batch(format!(
                    "generation {generation:?} has {n_attrs} attributes per item; none given"
                )));
            }
            _ => {}
        }
        let p = self.pending.entry(generation.to_string()).or_default();
        if let Some(id) = ids.iter().find(|id| p.staged_ids.contains(&id.0)) {
            return Err(Error::batch(format!(
                "id {} was already written to a staged segment in this transaction; commit first",
                id.0
            )));
        }
        for (i, id) in ids.iter().enumerate() {
            let a = attrs.map_or(Vec::new(), |a| a[i * n_attrs..(i + 1) * n_attrs].to_vec());
            p.deletes.remove(&id.0);
            if p.puts
                .insert(id.0, (vectors[i * dim..(i + 1) * dim].to_vec(), a))
                .is_none()
            {
                p.bytes += 4 * dim;
            }
        }
        if p.bytes >= self.flush_bytes {
            self.flush(generation)?;
        }
        Ok(())
    }

    /// Buffered puts past this many bytes of vectors go to a staged segment file, so a
    /// transaction (an import) can be larger than memory.
    pub fn set_flush_bytes(&mut self, bytes: usize) {
        self.flush_bytes = bytes.max(1);
    }

    /// Write the buffered puts of `generation` to a staged segment (visible at commit,
    /// removed by rollback).
    pub fn flush(&mut self, generation: &str) -> Result<()> {
        let (storage, dim, n_attrs) =
            match self.new_generations.iter().find(|g| g.name == generation) {
                Some(g) => (g.storage, g.dim, g.n_attrs),
                None => {
                    let g = self
                        .base
                        .manifest
                        .generations
                        .get(generation)
                        .ok_or_else(|| Error::Generation {
                            name: generation.into(),
                            message: "no such generation".into(),
                        })?;
                    (g.storage, g.dim, g.n_attrs)
                }
            };
        if self
            .pending
            .get(generation)
            .is_none_or(|p| p.puts.is_empty())
        {
            return Ok(());
        }
        let file = self.new_file("seg");
        let Some(p) = self.pending.get_mut(generation) else {
            return Ok(());
        };
        let mut rows: Vec<Row> = p
            .puts
            .iter()
            .map(|(id, (v, a))| Row {
                id: *id,
                vector: v,
                attrs: a,
            })
            .collect();
        let bytes = segment::encode(storage, dim, n_attrs, &mut rows);
        self.store.dir.atomic_write(&file, &bytes)?;
        p.staged.push((file, rows.len()));
        p.staged_ids.extend(p.puts.keys());
        p.puts.clear();
        p.bytes = 0;
        Ok(())
    }

    /// Buffer deletions (ids absent at commit are ignored).
    pub fn delete(&mut self, generation: &str, ids: &[ItemId]) -> Result<()> {
        let (dim, _, _) = self.spec_of(generation)?;
        let p = self.pending.entry(generation.to_string()).or_default();
        if let Some(id) = ids.iter().find(|id| p.staged_ids.contains(&id.0)) {
            return Err(Error::batch(format!(
                "id {} was written to a staged segment in this transaction; commit before deleting it",
                id.0
            )));
        }
        for id in ids {
            if p.puts.remove(&id.0).is_some() {
                p.bytes -= 4 * dim;
            }
            p.deletes.insert(id.0);
        }
        Ok(())
    }

    /// Whether anything is buffered.
    pub fn has_pending(&self) -> bool {
        !self
            .pending
            .values()
            .all(|p| p.puts.is_empty() && p.deletes.is_empty())
            || !self.new_generations.is_empty()
            || !self.dropped.is_empty()
            || self.current.is_some()
    }

    fn clear(&mut self) {
        self.pending.clear();
        self.new_generations.clear();
        self.dropped.clear();
        self.current = None;
    }

    /// Drop everything buffered or staged since the last commit.
    pub fn rollback(&mut self) {
        for p in self.pending.values() {
            for (f, _) in &p.staged {
                // best effort: garbage collection removes what this leaves
                let _ = self.store.dir.delete(f);
            }
        }
        self.pending.clear();
        self.new_generations.clear();
        self.dropped.clear();
        self.current = None;
    }

    fn new_file(&mut self, ext: &str) -> String {
        let n = self.next_file;
        self.next_file += 1;
        format!("{n:010}.{ext}")
    }

    /// Write new segments and tombstones, then swap the manifest atomically. Returns the
    /// new opstamp once the manifest is durable; on error nothing becomes visible and the
    /// buffer is kept. Garbage collection after the swap cannot fail the commit: its
    /// error is kept for [`Writer::take_gc_error`].
    pub fn commit(&mut self) -> Result<u64> {
        let st = self.base.clone();
        let mut m = st.manifest.clone();
        let op = m.opstamp + 1;
        for name in &self.dropped {
            m.generations.remove(name);
        }
        for g in &self.new_generations {
            m.generations.insert(
                g.name.clone(),
                GenerationMeta {
                    dim: g.dim,
                    storage: g.storage,
                    n_attrs: g.n_attrs,
                    segments: Vec::new(),
                    version: op,
                },
            );
        }
        // buffered puts become staged segments first, so apply() sees only staged
        // segments and deletions
        let names: Vec<String> = self.pending.keys().cloned().collect();
        for name in names {
            self.flush(&name)?;
        }
        let pending = std::mem::take(&mut self.pending);
        let result = self.apply(&st, &mut m, &pending, op);
        self.pending = pending;
        // the old state's snapshots would keep the files this commit replaces alive
        drop(st);
        result?;
        if let Some(c) = &self.current {
            m.current = Some(c.clone());
        }
        if m.current
            .as_ref()
            .is_some_and(|c| !m.generations.contains_key(c))
        {
            m.current = None;
        }
        self.publish(m)?;
        // the staged files now belong to the manifest: forget them without deleting
        self.clear();
        self.collect_garbage_after_publish();
        Ok(op)
    }

    /// Verify everything `m` names, write it durably, and make it the state readers get
    /// and the base of the next commit.
    fn publish(&mut self, mut m: Manifest) -> Result<()> {
        m.next_file = self.next_file;
        m.opstamp = self.base.manifest.opstamp + 1;
        // open (and verify) everything the new manifest names before publishing it
        let state = Arc::new(self.store.build_state(m.clone())?);
        self.store.dir.atomic_write(MANIFEST, &m.encode())?;
        self.store.install(state.clone());
        self.base = state;
        Ok(())
    }

    /// Garbage collection once a manifest is durable: a failure is logged and kept for
    /// [`Writer::take_gc_error`], never reported as a failed commit.
    fn collect_garbage_after_publish(&mut self) {
        self.gc_error = match self.collect_garbage() {
            Ok(_) => None,
            Err(e) => {
                tracing::warn!(error = %e, "embed-store: garbage collection after a commit failed");
                Some(e)
            }
        };
    }

    /// The error of the garbage collection that followed the last commit (or the taking
    /// of the writer), if it failed. The commit itself was durable; the files it left are
    /// collected by the next commit or [`Writer::collect_garbage`].
    pub fn take_gc_error(&mut self) -> Option<Error> {
        self.gc_error.take()
    }

    /// Record tombstones and the staged segments of `pending` in `m`; every generation
    /// whose rows change takes the version `op`.
    fn apply(
        &mut self,
        st: &State,
        m: &mut Manifest,
        pending: &BTreeMap<String, Pending>,
        op: u64,
    ) -> Result<()> {
        for (name, p) in pending {
            if p.deletes.is_empty() && p.staged.is_empty() {
                continue;
            }
            let Some(g) = m.generations.get(name).cloned() else {
                continue;
            };
            let mut g = g;
            // tombstone every existing row replaced or deleted
            let old = st.snapshots.get(name);
            for (si, sm) in g.segments.iter_mut().enumerate() {
                let Some(live) = old.and_then(|s| s.segments.get(si)) else {
                    continue;
                };
                let mut t = (*live.tombstones).clone();
                let mut changed = false;
                for id in p.deletes.iter().chain(p.staged_ids.iter()) {
                    if let Some(r) = live.segment.find(*id) {
                        changed |= t.delete(r);
                    }
                }
                if changed {
                    let file = self.new_file("del");
                    self.store.dir.atomic_write(&file, &t.encode())?;
                    sm.deletes = Some(file);
                    sm.deleted = t.count();
                    g.version = op;
                }
            }
            if !p.staged.is_empty() {
                g.version = op;
            }
            for (file, count) in &p.staged {
                g.segments.push(SegmentMeta {
                    file: file.clone(),
                    count: *count,
                    deletes: None,
                    deleted: 0,
                });
            }
            g.segments.retain(|s| s.deleted < s.count);
            m.generations.insert(name.clone(), g);
        }
        Ok(())
    }

    /// Merge the live rows of all segments of `generation` into one segment, as its own
    /// commit. Buffered changes are committed first, so the merge includes them.
    pub fn compact(&mut self, generation: &str) -> Result<u64> {
        if self.has_pending() {
            self.commit()?;
        }
        let snap = self.snapshot(generation)?;
        let d = snap.dim();
        let mut ids = Vec::new();
        let mut vecs = Vec::new();
        let mut attrs = Vec::new();
        let mut buf = vec![0f32; d];
        for (id, s, r) in snap.iter_live() {
            let seg = &snap.segments()[s].segment;
            seg.read_vector(r, &mut buf)?;
            ids.push(id.0);
            vecs.extend_from_slice(&buf);
            attrs.extend_from_slice(seg.attrs(r));
        }
        let na = snap.n_attrs();
        let mut rows: Vec<Row> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| Row {
                id: *id,
                vector: &vecs[i * d..(i + 1) * d],
                attrs: &attrs[i * na..(i + 1) * na],
            })
            .collect();
        let mut m = self.base.manifest.clone();
        let op = m.opstamp + 1;
        let file = self.new_file("seg");
        // int8 rows re-quantize exactly: the decoded values have the same max and scale
        let bytes = segment::encode(snap.storage(), d, na, &mut rows);
        self.store.dir.atomic_write(&file, &bytes)?;
        if let Some(g) = m.generations.get_mut(generation) {
            g.version = op;
            g.segments = if rows.is_empty() {
                Vec::new()
            } else {
                vec![SegmentMeta {
                    file: file.clone(),
                    count: rows.len(),
                    deletes: None,
                    deleted: 0,
                }]
            };
        }
        if let Err(e) = self.publish(m) {
            // best effort: the next garbage collection removes what this leaves
            let _ = self.store.dir.delete(&file);
            return Err(e);
        }
        self.collect_garbage_after_publish();
        Ok(op)
    }

    /// Delete files that the manifest no longer names, no snapshot holds and no open
    /// transaction has staged; HNSW indexes of a generation's older versions; temporary
    /// files of writers that are gone ([`Directory::remove_abandoned_temps`]).
    pub fn collect_garbage(&self) -> Result<Vec<String>> {
        let st = &self.base;
        let mut keep: HashSet<String> =
            HashSet::from([MANIFEST.to_string(), WRITER_LOCK.to_string()]);
        for g in st.manifest.generations.values() {
            for s in &g.segments {
                keep.insert(s.file.clone());
                keep.extend(s.deletes.clone());
            }
        }
        for p in self.pending.values() {
            keep.extend(p.staged.iter().map(|(f, _)| f.clone()));
        }
        {
            let segs = self
                .store
                .segments
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            keep.extend(
                segs.iter()
                    .filter(|(_, w)| w.strong_count() > 0)
                    .map(|(k, _)| k.clone()),
            );
            let dels = self.store.deletes.lock().unwrap_or_else(|p| p.into_inner());
            keep.extend(
                dels.iter()
                    .filter(|(_, w)| w.strong_count() > 0)
                    .map(|(k, _)| k.clone()),
            );
        }
        // HNSW index files are tied to a generation's content version: those of older
        // versions can go (a reader that mapped one keeps its mapping)
        let live_indexes: Vec<String> = st
            .manifest
            .generations
            .iter()
            .map(|(name, g)| crate::manifest::index_file_prefix(name, g.version))
            .collect();
        let mut removed = Vec::new();
        for f in self.store.dir.list()? {
            if f.ends_with(".hnsw") && live_indexes.iter().any(|p| f.starts_with(p.as_str())) {
                continue;
            }
            let ours = f.ends_with(".seg") || f.ends_with(".del") || f.ends_with(".hnsw");
            if ours && !keep.contains(&f) {
                self.store.dir.delete(&f)?;
                removed.push(f);
            }
        }
        removed.extend(self.store.dir.remove_abandoned_temps()?);
        Ok(removed)
    }
}
