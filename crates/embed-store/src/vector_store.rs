//! The serving API every backend offers: generations of vectors, batched reads from the
//! current generation, writes, deletes and an atomic generation switch. [`EmbeddedStore`]
//! puts it on the local [`Store`]; [`crate::redis_cluster::RedisClusterStore`] on a Redis
//! Cluster, for catalogues past one machine.

use std::sync::{Arc, Mutex};

use half::f16;

pub use crate::batch::validate_batch;
use crate::error::{Error, Result};
use crate::segment::quantize_int8;
use crate::store::{GenerationSpec, Store};
use crate::types::{ItemId, StorageType};
use crate::writer::Writer;

/// Vectors read from one generation.
#[derive(Debug, Clone, PartialEq)]
pub struct Fetched {
    /// The generation they were read from (one per call, even across a switch).
    pub generation: String,
    /// Vector width.
    pub dim: usize,
    /// `ids.len() * dim` values, row-major; rows of missing ids are zero.
    pub vectors: Vec<f32>,
    /// Whether each id was found.
    pub found: Vec<bool>,
}

impl Fetched {
    /// Row `i`, when its id was found.
    pub fn row(&self, i: usize) -> Option<&[f32]> {
        if *self.found.get(i)? {
            self.vectors.get(i * self.dim..(i + 1) * self.dim)
        } else {
            None
        }
    }
}

/// A versioned vector store as the request path sees it.
pub trait VectorStore: Send + Sync {
    /// Create an empty generation (not yet current).
    fn create_generation(&self, spec: &GenerationSpec) -> Result<()>;
    /// Insert or replace `ids.len()` vectors (row-major in `vectors`) in `generation`.
    /// The batch is validated first (width, NaN/Inf, duplicate ids): on error nothing
    /// of it is written.
    fn put_many(&self, generation: &str, ids: &[ItemId], vectors: &[f32]) -> Result<()>;
    /// Remove ids from `generation` (absent ids are ignored).
    fn delete(&self, generation: &str, ids: &[ItemId]) -> Result<()>;
    /// Make `generation` the one readers see, in one atomic step.
    fn set_current(&self, generation: &str) -> Result<()>;
    /// The generation readers see.
    fn current(&self) -> Result<Option<String>>;
    /// Names of every generation.
    fn generations(&self) -> Result<Vec<String>>;
    /// Delete a generation that is not current, with all its vectors.
    fn drop_generation(&self, generation: &str) -> Result<()>;
    /// Every id `generation` holds, ascending (a full scan: for mirroring, not for the
    /// request path).
    fn ids(&self, generation: &str) -> Result<Vec<ItemId>>;
    /// Read `ids` from the current generation (resolved once for the whole batch).
    fn get_many(&self, ids: &[ItemId]) -> Result<Fetched>;
    /// Read one id from the current generation.
    fn get(&self, id: ItemId) -> Result<Option<Vec<f32>>> {
        let f = self.get_many(&[id])?;
        Ok(f.row(0).map(<[f32]>::to_vec))
    }
}

/// Bytes of one stored vector: f32 or f16 little-endian values, or for int8 the f32
/// scale followed by the codes (`x ≈ scale * q`).
pub fn encode_vector(storage: StorageType, v: &[f32]) -> Vec<u8> {
    match storage {
        StorageType::F32 => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        StorageType::F16 => v
            .iter()
            .flat_map(|x| f16::from_f32(*x).to_le_bytes())
            .collect(),
        StorageType::Int8 => {
            let mut codes = vec![0i8; v.len()];
            let scale = quantize_int8(v, &mut codes);
            let mut out = Vec::with_capacity(4 + v.len());
            out.extend_from_slice(&scale.to_le_bytes());
            out.extend(codes.iter().map(|&c| c as u8));
            out
        }
    }
}

/// Decode [`encode_vector`]'s bytes into `out` (`dim` values); `Err` names the size
/// mismatch.
pub fn decode_vector(storage: StorageType, bytes: &[u8], out: &mut [f32]) -> Result<()> {
    let dim = out.len();
    let want = match storage {
        StorageType::Int8 => 4 + dim,
        s => dim * s.value_bytes(),
    };
    if bytes.len() != want {
        return Err(Error::Corrupt {
            file: "stored vector".into(),
            message: format!(
                "{} bytes for a {dim}-value {storage:?} vector, expected {want}",
                bytes.len()
            ),
        });
    }
    match storage {
        StorageType::F32 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
        StorageType::F16 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = f16::from_le_bytes([c[0], c[1]]).to_f32();
            }
        }
        StorageType::Int8 => {
            let scale = f32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
            for (o, &c) in out.iter_mut().zip(&bytes[4..]) {
                *o = c as i8 as f32 * scale;
            }
        }
    }
    Ok(())
}

/// [`VectorStore`] on the embedded [`Store`]: each write call is one committed
/// transaction; reads come from a snapshot of the current generation.
pub struct EmbeddedStore {
    store: Arc<Store>,
    writer: Mutex<Writer>,
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore").finish_non_exhaustive()
    }
}

impl EmbeddedStore {
    /// Wrap `store`, taking its single writer lock.
    pub fn new(store: Arc<Store>) -> Result<Self> {
        let writer = store.writer()?;
        Ok(Self {
            store,
            writer: Mutex::new(writer),
        })
    }

    /// The wrapped store (snapshots, search).
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    fn with_writer<T>(&self, f: impl FnOnce(&mut Writer) -> Result<T>) -> Result<T> {
        let mut w = self.writer.lock().map_err(|_| Error::Generation {
            name: String::new(),
            message: "a writer call panicked earlier; the writer is poisoned".into(),
        })?;
        match f(&mut w) {
            Ok(v) => Ok(v),
            Err(e) => {
                w.rollback();
                Err(e)
            }
        }
    }
}

impl VectorStore for EmbeddedStore {
    fn create_generation(&self, spec: &GenerationSpec) -> Result<()> {
        self.with_writer(|w| {
            w.create_generation(spec.clone())?;
            w.commit().map(|_| ())
        })
    }

    fn put_many(&self, generation: &str, ids: &[ItemId], vectors: &[f32]) -> Result<()> {
        // Writer::put_many validates the batch (validate_batch) before keeping any of it;
        // this API carries no attributes, so an existing item keeps its own (new items
        // get zeros)
        self.with_writer(|w| {
            let snap = w.snapshot(generation)?;
            let n_attrs = snap.n_attrs();
            let mut attrs = vec![0u32; ids.len() * n_attrs];
            if n_attrs > 0 {
                for (id, a) in ids.iter().zip(attrs.chunks_mut(n_attrs)) {
                    if let Some(old) = snap.attrs(*id) {
                        a.copy_from_slice(old);
                    }
                }
            }
            w.put_many(
                generation,
                ids,
                vectors,
                (n_attrs > 0).then_some(&attrs[..]),
            )?;
            w.commit().map(|_| ())
        })
    }

    fn delete(&self, generation: &str, ids: &[ItemId]) -> Result<()> {
        self.with_writer(|w| {
            w.delete(generation, ids)?;
            w.commit().map(|_| ())
        })
    }

    fn set_current(&self, generation: &str) -> Result<()> {
        self.with_writer(|w| {
            w.set_current(generation)?;
            w.commit().map(|_| ())
        })
    }

    fn current(&self) -> Result<Option<String>> {
        Ok(self.store.current())
    }

    fn generations(&self) -> Result<Vec<String>> {
        Ok(self.store.generations())
    }

    fn drop_generation(&self, generation: &str) -> Result<()> {
        self.with_writer(|w| {
            w.drop_generation(generation)?;
            w.commit().map(|_| ())
        })
    }

    fn ids(&self, generation: &str) -> Result<Vec<ItemId>> {
        let mut ids: Vec<ItemId> = self
            .store
            .generation(generation)?
            .iter_live()
            .map(|(id, _, _)| id)
            .collect();
        ids.sort_unstable();
        Ok(ids)
    }

    fn get_many(&self, ids: &[ItemId]) -> Result<Fetched> {
        let snap = self.store.snapshot().ok_or_else(|| Error::Generation {
            name: String::new(),
            message: "no generation is current".into(),
        })?;
        let dim = snap.dim();
        let mut vectors = vec![0f32; ids.len() * dim];
        let found = snap.get_many(ids, &mut vectors)?;
        Ok(Fetched {
            generation: snap.generation().to_string(),
            dim,
            vectors,
            found,
        })
    }
}
