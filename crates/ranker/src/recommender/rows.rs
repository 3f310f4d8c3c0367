//! Store rows changing under a served generation: commits that upsert items into it
//! while it is served ([`Recommender::replacing_rows`]), and the recommender over such a
//! later commit ([`Recommender::over`]).
//!
//! A saved state names the generation it serves and the length and digest of the
//! leading external ids the generation's live rows hold in dense order (see
//! `saved.rs`). An upsert of an item among them tombstones its row and appends a new
//! one, so the generation's rows after the commit repeat fewer of the ids: the prefix
//! a save may take is capped, before the commit, at the first item moved, and the
//! state saved again when the last save took more, so that a restart finds it over
//! the generation whether the commit happened or not.

use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};

use embed_store::Snapshot;
use embed_store::hnsw::Hnsw;

use super::{Recommender, check_index};
use crate::error::{Error, Result};

impl Recommender {
    /// The HNSW index retrieval searches, if any.
    pub fn index(&self) -> Option<&Hnsw> {
        self.index.as_ref()
    }

    /// The recommender serving the same taste graph over `newer`, a later commit of the
    /// generation this one serves (items upserted since are retrievable through `index`
    /// — built from `newer`, e.g. [`Hnsw::update`] of [`Recommender::index`] — and by the
    /// fresh source). Swap it in for this one; both serve the same model, so this one
    /// keeps answering until dropped. Commits that moved rows of the taste graph's
    /// items must have gone through [`Recommender::replacing_rows`].
    pub fn over(&self, newer: Snapshot, index: Option<Hnsw>) -> Result<Recommender> {
        if newer.generation() != self.snap.generation() || newer.version() < self.snap.version() {
            return Err(Error::config(format!(
                "the recommender serves generation {:?} at version {}, the snapshot is {:?} at \
                 version {}: a later commit of the same generation is needed (a new generation \
                 is a refit: Recommender::refreshed)",
                self.snap.generation(),
                self.snap.version(),
                newer.generation(),
                newer.version()
            )));
        }
        if newer.dim() != self.snap.dim() {
            return Err(Error::config(format!(
                "the generation's vectors were {} wide, the snapshot's are {}",
                self.snap.dim(),
                newer.dim()
            )));
        }
        check_index(&newer, index.as_ref())?;
        Ok(self.sibling(newer, index, self.serves, Arc::clone(&self.prefix_cap)))
    }

    /// Runs `commit` — a store commit that upserts or deletes the rows of `ids` in the
    /// generation this recommender serves — so that the saved state stays restorable
    /// over that generation whether the commit lands or not (see the module
    /// documentation): when one of `ids` is among the leading ids a save takes from the
    /// generation, the cap is lowered to it and, with a feedback log attached, a
    /// checkpoint written first. Holds the checkpoint lock throughout, so no save runs
    /// in between. Ids the taste graph does not know move no saved row.
    pub fn replacing_rows<T>(&self, ids: &[u64], commit: impl FnOnce() -> Result<T>) -> Result<T> {
        let _one = self
            .durable
            .checkpoint
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let first = {
            let st = self.read();
            ids.iter()
                .filter_map(|&id| st.items.get(id))
                .map(|d| d.index())
                .min()
        };
        if let Some(first) = first
            && first < self.saved_prefix().len
        {
            self.prefix_cap.fetch_min(first, Ordering::AcqRel);
            if self.has_log() {
                self.checkpoint_locked()?;
            }
        }
        commit()
    }
}
