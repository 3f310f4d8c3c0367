//! The served generation kept in a shared [`VectorStore`] too (a Redis Cluster), so that
//! service processes on one cluster serve the same items.
//!
//! [`Service::attach_shared`] reconciles the two at start: when the shared store's
//! current generation is the one served, each side gets the ids only the other holds
//! (items upserted through another process come in as upserts, and the index is
//! refreshed); when it has none, the served generation is published to it and made
//! current; when it serves another generation, the attach is refused (the operator
//! decides which model is served). From then on every upsert is written to the shared
//! store first (its failure fails the upsert, [`Error::Shared`], before anything local
//! changes), and a refit's generation is published there, made current and the
//! previous one dropped (retried by the maintenance thread until it succeeds); and the
//! maintenance thread takes the items other processes added, every
//! [`super::ServiceOptions::follow_interval`] ([`Service::follow_shared`]: new ids only;
//! a vector another process replaced is taken at the next start).
//! Recommendations never wait for it: vectors are read from the local mirror, where the
//! index is.

use std::collections::HashSet;
use std::sync::Arc;

use embed_store::{GenerationSpec, ItemId as StoreId, Snapshot, VectorStore};

use super::{Service, lock};
use crate::error::{Error, Result};

/// Rows per shared-store write or read.
const CHUNK: usize = 4096;

/// What [`Service::attach_shared`] found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Joined {
    /// The shared store had no current generation: the served one was published.
    Published {
        /// Rows written.
        rows: usize,
    },
    /// The shared store serves the same generation: the two were reconciled.
    Followed {
        /// Rows only the shared store held, mirrored in.
        pulled: usize,
        /// Rows only this service held, written out.
        pushed: usize,
    },
}

/// A shared-store failure as the service reports it.
fn shared(what: &str, e: embed_store::Error) -> Error {
    Error::Shared {
        message: format!("{what}: {e}"),
    }
}

/// Every live row of `snap`, written to `generation` of `to` in chunks.
fn push_rows(
    to: &dyn VectorStore,
    generation: &str,
    snap: &Snapshot,
    ids: &[StoreId],
) -> Result<()> {
    let d = snap.dim();
    for chunk in ids.chunks(CHUNK) {
        let mut v = vec![0f32; chunk.len() * d];
        snap.get_many(chunk, &mut v)?;
        to.put_many(generation, chunk, &v)
            .map_err(|e| shared("writing rows", e))?;
    }
    Ok(())
}

/// `snap` (a commit of `generation`) made the current generation of `to`: created there
/// if it lacks it, every row written (again, when an earlier attempt stopped part way);
/// returns the rows written.
fn publish_to(to: &dyn VectorStore, generation: &str, snap: &Snapshot) -> Result<usize> {
    let have = to
        .generations()
        .map_err(|e| shared("listing generations", e))?
        .iter()
        .any(|g| g == generation);
    if !have {
        to.create_generation(&GenerationSpec::new(generation, snap.dim(), snap.storage()))
            .map_err(|e| shared("creating the generation", e))?;
    }
    let ids: Vec<StoreId> = snap.iter_live().map(|(id, _, _)| id).collect();
    push_rows(to, generation, snap, &ids)?;
    to.set_current(generation)
        .map_err(|e| shared("switching the generation", e))?;
    Ok(ids.len())
}

/// The ids of `generation` only `to` holds, and those only `local` holds.
fn ids_apart(
    to: &dyn VectorStore,
    generation: &str,
    local: &[StoreId],
) -> Result<(Vec<StoreId>, Vec<StoreId>)> {
    let theirs = to.ids(generation).map_err(|e| shared("listing ids", e))?;
    let ours: HashSet<StoreId> = local.iter().copied().collect();
    let only_theirs: Vec<StoreId> = theirs
        .iter()
        .copied()
        .filter(|i| !ours.contains(i))
        .collect();
    let theirs: HashSet<StoreId> = theirs.into_iter().collect();
    let only_ours = local
        .iter()
        .copied()
        .filter(|i| !theirs.contains(i))
        .collect();
    Ok((only_theirs, only_ours))
}

impl Service {
    /// Keeps the served generation in `to` as well (see the module documentation); once
    /// per service, right after [`Service::open`].
    pub fn attach_shared(&self, to: Arc<dyn VectorStore>) -> Result<Joined> {
        let _span = tracing::info_span!("attach_shared").entered();
        let _rows = lock(&self.rows);
        let rec = self.recommender();
        let generation = rec.snapshot().generation().to_string();
        let snap = self.store.generation(&generation)?;
        let joined = match to
            .current()
            .map_err(|e| shared("reading the current generation", e))?
        {
            None => Joined::Published {
                rows: publish_to(&*to, &generation, &snap)?,
            },
            Some(current) if current == generation => {
                let local: Vec<StoreId> = snap.iter_live().map(|(id, _, _)| id).collect();
                let (pulled, pushed) = ids_apart(&*to, &generation, &local)?;
                push_rows(&*to, &generation, &snap, &pushed)?;
                self.pull_rows(&*to, &generation, &pulled)?;
                Joined::Followed {
                    pulled: pulled.len(),
                    pushed: pushed.len(),
                }
            }
            Some(current) => {
                return Err(Error::Shared {
                    message: format!(
                        "the shared store serves generation {current:?}, this service {generation:?}: \
                         restart this service from the state that serves {current:?}, or switch the \
                         shared store to {generation:?}"
                    ),
                });
            }
        };
        self.shared
            .set(to)
            .map_err(|_| Error::config("a shared store is already attached"))?;
        tracing::info!(?joined, "shared store attached");
        Ok(joined)
    }

    /// Takes the items other processes added to the shared store since (new ids of the
    /// served generation, while the shared store serves it): what the maintenance
    /// thread runs every [`super::ServiceOptions::follow_interval`]. A scan of every id
    /// of the generation in the shared store. Returns the rows pulled.
    pub fn follow_shared(&self) -> Result<usize> {
        let Some(to) = self.shared.get() else {
            return Ok(0);
        };
        let _span = tracing::debug_span!("follow_shared").entered();
        let _rows = lock(&self.rows);
        let generation = self.recommender().snapshot().generation().to_string();
        let current = to
            .current()
            .map_err(|e| shared("reading the current generation", e))?;
        if current.as_deref() != Some(generation.as_str()) {
            // a refit here not published yet, or another process's: nothing to follow
            return Ok(0);
        }
        let snap = self.store.generation(&generation)?;
        let local: Vec<StoreId> = snap.iter_live().map(|(id, _, _)| id).collect();
        let (pulled, _) = ids_apart(&**to, &generation, &local)?;
        self.pull_rows(&**to, &generation, &pulled)?;
        if !pulled.is_empty() {
            tracing::info!(pulled = pulled.len(), "followed the shared store");
        }
        Ok(pulled.len())
    }

    /// Mirrors `ids` of the shared store's current generation (`generation`) into the
    /// local one, as new rows (attributes zero: the shared store keeps none).
    fn pull_rows(&self, from: &dyn VectorStore, generation: &str, ids: &[StoreId]) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let rec = self.recommender();
        let n_attrs = rec.snapshot().n_attrs();
        for chunk in ids.chunks(CHUNK) {
            let f = from
                .get_many(chunk)
                .map_err(|e| shared("reading rows", e))?;
            if f.generation != generation {
                return Err(Error::Shared {
                    message: format!(
                        "the shared store switched to generation {:?} while {generation:?} was mirrored",
                        f.generation
                    ),
                });
            }
            let mut found = Vec::with_capacity(chunk.len());
            let mut vectors = Vec::with_capacity(chunk.len() * f.dim);
            for (k, id) in chunk.iter().enumerate() {
                if let Some(row) = f.row(k) {
                    found.push(*id);
                    vectors.extend_from_slice(row);
                }
            }
            let attrs = vec![0u32; found.len() * n_attrs];
            self.commit_rows(&rec, generation, &found, &vectors, &attrs)?;
        }
        Ok(())
    }

    /// Writes `ids`' rows (`vectors`) to the shared store's `generation` before a local
    /// upsert commits them (nothing to do without a shared store).
    pub(super) fn write_through(
        &self,
        generation: &str,
        ids: &[StoreId],
        vectors: &[f32],
    ) -> Result<()> {
        match self.shared.get() {
            Some(to) => to
                .put_many(generation, ids, vectors)
                .map_err(|e| shared("writing the upsert", e)),
            None => Ok(()),
        }
    }

    /// Makes the shared store serve the generation served here ([`publish_to`]), then
    /// drops `previous` from it. Holds the rows lock, so no upsert interleaves.
    pub(super) fn publish_shared(&self, previous: &str) -> Result<()> {
        let Some(to) = self.shared.get() else {
            return Ok(());
        };
        let _rows = lock(&self.rows);
        let generation = self.recommender().snapshot().generation().to_string();
        let snap = self.store.generation(&generation)?;
        publish_to(&**to, &generation, &snap)?;
        if previous != generation {
            let gens = to
                .generations()
                .map_err(|e| shared("listing generations", e))?;
            if gens.iter().any(|g| g == previous) {
                to.drop_generation(previous)
                    .map_err(|e| shared("dropping the previous generation", e))?;
            }
        }
        Ok(())
    }
}
