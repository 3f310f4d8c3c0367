//! Item upserts into the served generation ([`Service::upsert`]) and the index refresh
//! that makes them retrievable ([`Service::refresh_index`]).
//!
//! An upsert is committed to the store (durable) before it returns; the maintenance
//! thread then refreshes the index — [`Hnsw::update`] inserts the new rows into a copy
//! of the graph, no rebuild — and swaps in the recommender over the new commit. Every
//! store commit of the service (upserts, refits, dropping the previous generation)
//! holds the service's rows lock, so a refit's new generation carries every item
//! upserted before its swap ([`crate::pipeline::Carried`]).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use embed_store::hnsw::{Hnsw, HnswParams};
use embed_store::{ItemId as StoreId, Metric};
use serde::{Deserialize, Serialize};

use super::names::Space;
use super::{Service, Wake, lock};
use crate::error::{Error, Result};
use crate::recommender::Recommender;
use crate::types::Key;

/// One item of [`Service::upsert`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ItemUpsert {
    /// The item (new, or one the generation holds: its row is replaced); a new name
    /// gets an integer of the service's ([`super::names`]).
    pub item: Key,
    /// The embedding, in the space of the served model, as wide as the generation's.
    pub vector: Vec<f32>,
    /// Its attributes, as many as the generation keeps per item (none: empty).
    #[serde(default)]
    pub attrs: Vec<u32>,
}

/// What [`Service::upsert`] committed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Upserted {
    /// Items written.
    pub items: usize,
    /// The generation they went to (the one served).
    pub generation: String,
    /// The store commit that holds them.
    pub opstamp: u64,
}

impl Service {
    /// Upserts `items` into the served generation in one store commit, durable when this
    /// returns; they become retrievable after the next index refresh, which the
    /// maintenance thread runs at once ([`Service::refresh_index`]). The whole batch is
    /// checked first (at most [`super::ServiceOptions::max_items`] items, distinct ids,
    /// vectors as wide as the generation's and finite, the generation's number of
    /// attributes): a refused batch changes nothing. A new id is an item only the store
    /// knows until an event names it; an upserted vector of an item the taste graph
    /// trains holds until the next refit replaces it. With a shared store attached the
    /// items are written there first ([`Error::Shared`] when it cannot take them).
    pub fn upsert(&self, items: &[ItemUpsert]) -> Result<Upserted> {
        let _span = tracing::debug_span!("upsert", items = items.len()).entered();
        let limit = self.options.max_items;
        if items.len() > limit {
            return Err(Error::config(format!(
                "{} items in one upsert, past the limit of {limit}",
                items.len()
            )));
        }
        let _rows = lock(&self.rows);
        let rec = self.recommender();
        let snap = rec.snapshot();
        let (dim, n_attrs) = (snap.dim(), snap.n_attrs());
        let mut seen: std::collections::HashSet<&Key> =
            std::collections::HashSet::with_capacity(items.len());
        let mut vectors = Vec::with_capacity(items.len() * dim);
        let mut attrs = Vec::with_capacity(items.len() * n_attrs);
        for (k, it) in items.iter().enumerate() {
            if !seen.insert(&it.item) {
                return Err(Error::config(format!(
                    "items[{k}].item: {} appears earlier in the batch",
                    it.item
                )));
            }
            self.names
                .get(Space::Item, &it.item, &format!("items[{k}].item"))?;
            if it.vector.len() != dim {
                return Err(Error::config(format!(
                    "items[{k}].vector: {} values, the generation's vectors are {dim} wide",
                    it.vector.len()
                )));
            }
            if let Some(j) = it.vector.iter().position(|v| !v.is_finite()) {
                return Err(Error::config(format!(
                    "items[{k}].vector[{j}]: {} is not a finite number",
                    it.vector[j]
                )));
            }
            if it.attrs.len() != n_attrs {
                return Err(Error::config(format!(
                    "items[{k}].attrs: {} values, the generation keeps {n_attrs} per item",
                    it.attrs.len()
                )));
            }
            vectors.extend_from_slice(&it.vector);
            attrs.extend_from_slice(&it.attrs);
        }
        let generation = snap.generation().to_string();
        let keys: Vec<&Key> = items.iter().map(|it| &it.item).collect();
        let ids = self
            .names
            .get_or_insert(Space::Item, &keys, |k| format!("items[{k}].item"))?;
        let store_ids: Vec<StoreId> = ids.iter().map(|&i| StoreId(i)).collect();
        // the shared store first: when it cannot take them, nothing changes here
        self.write_through(&generation, &store_ids, &vectors)?;
        let opstamp = self.commit_rows(&rec, &generation, &store_ids, &vectors, &attrs)?;
        drop(_rows);
        self.counters
            .upserted
            .fetch_add(items.len() as u64, Ordering::Relaxed);
        tracing::debug!(opstamp, "items upserted");
        Ok(Upserted {
            items: items.len(),
            generation,
            opstamp,
        })
    }

    /// Commits `ids`' rows (`vectors`, and `attrs` as many per item as the generation
    /// keeps) to the served generation `rec` serves, through
    /// [`crate::Recommender::replacing_rows`], then wakes the maintenance thread to
    /// refresh the index; returns the commit's opstamp. The caller holds the rows lock.
    pub(super) fn commit_rows(
        &self,
        rec: &Recommender,
        generation: &str,
        ids: &[StoreId],
        vectors: &[f32],
        attrs: &[u32],
    ) -> Result<u64> {
        let n_attrs = rec.snapshot().n_attrs();
        let raw: Vec<u64> = ids.iter().map(|i| i.0).collect();
        let opstamp = rec.replacing_rows(&raw, || {
            let mut w = self.store.writer()?;
            w.put_many(generation, ids, vectors, (n_attrs > 0).then_some(attrs))?;
            Ok(w.commit()?)
        })?;
        self.counters.rows_pending.store(true, Ordering::Release);
        self.wake(Wake::Rows);
        Ok(opstamp)
    }

    /// Serves the newest commit of the served generation: its index updated with the
    /// rows added since ([`Hnsw::update`]; rebuilt only when the update is refused, e.g.
    /// after a compaction merged its segments) and saved beside the store, the
    /// recommender over it swapped in ([`crate::Recommender::over`]). Returns whether
    /// there was anything new. The maintenance thread calls it after every upsert.
    pub fn refresh_index(&self) -> Result<bool> {
        let _span = tracing::info_span!("refresh_index").entered();
        let _rows = lock(&self.rows);
        self.counters.rows_pending.store(false, Ordering::Release);
        let rec = self.recommender();
        let newest = self.store.generation(rec.snapshot().generation())?;
        if newest.version() == rec.snapshot().version() {
            return Ok(false);
        }
        let index = match rec.index() {
            Some(h) => {
                let params = self.options.pipeline.hnsw.unwrap_or_default();
                let h = updated(h, &newest, params)?;
                // derived data: a restart without it rebuilds it
                if let Err(e) = h.save(self.store.directory()) {
                    tracing::warn!(error = %e, "the updated index was not saved");
                }
                Some(h)
            }
            None => None,
        };
        let next = rec.over(newest, index)?;
        *self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(next);
        self.counters
            .index_refreshes
            .fetch_add(1, Ordering::Relaxed);
        Ok(true)
    }
}

/// `h` updated to `newer`, or rebuilt from it when the update is refused.
fn updated(h: &Hnsw, newer: &embed_store::Snapshot, params: HnswParams) -> Result<Hnsw> {
    match h.update(newer, params.ef_construction, params.seed ^ newer.version()) {
        Ok(u) => Ok(u),
        Err(e) => {
            tracing::warn!(error = %e, "the index update was refused; rebuilding it");
            Ok(Hnsw::build(newer, Metric::Cosine, params)?)
        }
    }
}
