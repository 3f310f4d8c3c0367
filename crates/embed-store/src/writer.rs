//! The single writer of a store: buffered puts and deletes, staged segments, commit
//! (a new manifest published atomically, then garbage collection), compaction.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use crate::directory::LockGuard;
use crate::error::{Error, Result};
use crate::manifest::{GenerationMeta, MANIFEST, Manifest, SegmentMeta, check_generation};
use crate::segment::{self, Row};
use crate::store::{GenerationSpec, Snapshot, State, Store, WRITER_LOCK};
use crate::types::{ItemId, StorageType};

impl Store {
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
                let Some(live) = old.and_then(|s| s.segments().get(si)) else {
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
    /// files of writers that are gone ([`crate::Directory::remove_abandoned_temps`]).
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
