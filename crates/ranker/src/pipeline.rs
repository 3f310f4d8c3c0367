//! The offline half of the data flow in one call: interactions → LightGCN training →
//! item embeddings into an `embed-store` generation (with attributes) → optional HNSW
//! index → a [`Recommender`] over that generation and the live taste graph; and the
//! exchange of embedding tables with the store ([`export_table`], [`import_table`]).

use std::path::Path;
use std::sync::Arc;

use embed_store::hnsw::{Hnsw, HnswParams};
use embed_store::{
    GenerationSpec, ItemId as StoreId, Metric, Snapshot, StorageType, Store, Writer,
};
use taste_graph::model::EpochStats;
use taste_graph::refresh::{Installed, Refit};
use taste_graph::{
    BipartiteGraph, DeviceSpec, FeedbackLock, InterestConfig, LightGcn, LightGcnConfig, LiveConfig,
    LiveModel, Refresher, SyncPolicy, Training,
};

use crate::error::{Error, Result};
use crate::recommender::serving::{Reopened, lock_dir};
use crate::recommender::{DEFAULT_MAX_LIVE_ITEMS, Recommender};
use crate::saved::SavedIds;

/// Settings of [`build`].
#[derive(Debug, Clone)]
pub struct PipelineOptions {
    /// LightGCN hyper-parameters.
    pub lightgcn: LightGcnConfig,
    /// Training epochs.
    pub epochs: usize,
    /// Name of the generation the item embeddings go to (made current).
    pub generation: String,
    /// How the store keeps the vectors.
    pub storage: StorageType,
    /// Build an HNSW index with these parameters (`None`: exact retrieval).
    pub hnsw: Option<HnswParams>,
    /// Fold-in settings of the live taste graph.
    pub live: LiveConfig,
    /// Interest clustering settings.
    pub interests: InterestConfig,
    /// The time the training data ends (training edges count as events at this time).
    pub now: u64,
    /// Keep the trainer in a [`Refresher`] attached to the recommender, for background
    /// refits ([`Recommender::plan_refit`], [`refreshed`]); it holds the Adam state, about
    /// twice the model's tables, in memory.
    pub refits: bool,
    /// Where LightGCN trains (and the refits go on): the CPU kernels, or a CUDA device
    /// with the `cuda` feature. Serving runs on the CPU either way.
    pub device: DeviceSpec,
    /// When a feedback log acknowledges an event ([`Recommender::with_log`], [`restore`]).
    pub sync: SyncPolicy,
    /// Items feedback may add between refits ([`Recommender::max_live_items`]).
    pub max_live_items: usize,
}

impl Default for PipelineOptions {
    fn default() -> Self {
        Self {
            lightgcn: LightGcnConfig::new(),
            epochs: 20,
            generation: "lightgcn".into(),
            storage: StorageType::F32,
            hnsw: None,
            live: LiveConfig::new(),
            interests: InterestConfig::new(),
            now: 0,
            refits: false,
            device: DeviceSpec::Cpu,
            sync: SyncPolicy::EachEvent,
            max_live_items: DEFAULT_MAX_LIVE_ITEMS,
        }
    }
}

/// Item attributes for the store: `n_attrs` u32 values per item, row-major.
#[derive(Debug, Clone, Copy)]
pub struct Attrs<'a> {
    /// The values (`n_items × n_attrs`).
    pub values: &'a [u32],
    /// Values per item.
    pub n_attrs: usize,
}

/// Writes `table` (`ids.len() × dim`, row `k` under `ids[k]`, with `attrs` when given)
/// into generation `name` inside the caller's transaction `w`, creating the generation
/// (with `storage` and the attribute count) if it does not exist. Nothing is visible
/// until the caller commits: export users and items, then commit once, and both appear
/// atomically.
pub fn export_table(
    w: &mut Writer,
    name: &str,
    storage: StorageType,
    table: &[f32],
    dim: usize,
    ids: &[u64],
    attrs: Option<Attrs<'_>>,
) -> Result<()> {
    let n = ids.len();
    if dim == 0 || table.len() != n * dim {
        return Err(Error::config(format!(
            "exporting {} values as {n} ids x dim {dim} into generation {name:?}",
            table.len()
        )));
    }
    let n_attrs = attrs.map_or(0, |a| a.n_attrs);
    if let Some(a) = attrs
        && a.values.len() != n * a.n_attrs
    {
        return Err(Error::config(format!(
            "{} attribute values for {n} items x {} attributes",
            a.values.len(),
            a.n_attrs
        )));
    }
    match w.dim_of(name) {
        Ok(d) if d != dim => {
            return Err(Error::config(format!(
                "generation {name:?} holds {d}-wide vectors, the table is {dim} wide"
            )));
        }
        Ok(_) => {}
        Err(_) => w.create_generation(GenerationSpec::new(name, dim, storage).attrs(n_attrs))?,
    }
    const CHUNK: usize = 16_384;
    let ids: Vec<StoreId> = ids.iter().map(|&i| StoreId(i)).collect();
    for start in (0..n).step_by(CHUNK) {
        let end = (start + CHUNK).min(n);
        let a = attrs.map(|a| &a.values[start * a.n_attrs..end * a.n_attrs]);
        w.put_many(name, &ids[start..end], &table[start * dim..end * dim], a)?;
    }
    Ok(())
}

/// Reads the vectors of `ids` from `snap` into a dense table (row `k` = `ids[k]`), e.g.
/// embeddings trained elsewhere (loaded with `embed_store::exchange::import_npy`) to
/// seed `LightGcn::from_embeddings`. An id the generation lacks is an error naming it.
pub fn import_table(snap: &Snapshot, ids: &[u64]) -> Result<Vec<f32>> {
    let store_ids: Vec<StoreId> = ids.iter().map(|&i| StoreId(i)).collect();
    let mut out = vec![0f32; ids.len() * snap.dim()];
    let found = snap.get_many(&store_ids, &mut out)?;
    if let Some(k) = found.iter().position(|f| !f) {
        let missing = found.iter().filter(|f| !**f).count();
        return Err(Error::Unknown {
            what: "item",
            message: format!(
                "generation {:?} has no vector for id {} (row {k}); {missing} of {} ids are missing",
                snap.generation(),
                ids[k],
                ids.len()
            ),
        });
    }
    Ok(out)
}

/// Writes `items` (`item_ids.len() × dim`, under `item_ids`, with `attrs`) into the new
/// generation `name` of `store` ([`export_table`]), makes it current and commits.
pub fn export_items(
    store: &Arc<Store>,
    name: &str,
    storage: StorageType,
    items: &[f32],
    dim: usize,
    item_ids: &[u64],
    attrs: Option<Attrs<'_>>,
) -> Result<u64> {
    let mut w = store.writer()?;
    w.create_generation(
        GenerationSpec::new(name, dim, storage).attrs(attrs.map_or(0, |a| a.n_attrs)),
    )?;
    export_table(&mut w, name, storage, items, dim, item_ids, attrs)?;
    w.set_current(name)?;
    Ok(w.commit()?)
}

/// Trains LightGCN on `graph` (`on_epoch` sees each epoch's statistics), then
/// [`serve`]s it: returns the recommender and the trained model.
pub fn build(
    graph: &BipartiteGraph,
    item_ids: Option<Vec<u64>>,
    attrs: Option<Attrs<'_>>,
    store: &Arc<Store>,
    opts: &PipelineOptions,
    mut on_epoch: impl FnMut(usize, &EpochStats),
) -> Result<(Recommender, LightGcn)> {
    let selection = opts.device.select()?;
    let mut trainer = Training::new(graph, &opts.lightgcn, &selection)?;
    for e in 0..opts.epochs {
        let stats = trainer.train_epoch(|_, _| {})?;
        on_epoch(e + 1, &stats);
    }
    if opts.refits {
        let m = trainer.model()?;
        let rec = serve(graph, m, item_ids, attrs, store, opts)?;
        // The caller's copy; the trainer keeps training its own in the refits.
        let model = LightGcn::from_embeddings(graph, m.layers(), m.dim(), m.ego_table())?;
        let rec = rec.with_refresher(Refresher::new(trainer, graph.clone())?)?;
        return Ok((rec, model));
    }
    let model = trainer.into_model()?;
    let rec = serve(graph, &model, item_ids, attrs, store, opts)?;
    Ok((rec, model))
}

/// Serves a finished background refit of `rec` ([`Recommender::plan_refit`]): the
/// refit's item embeddings exported to the new generation `name` of `store` (made
/// current; `attrs` for the refit's items in dense order) with the `carry` rows after
/// them, in one commit; an HNSW index when `opts.hnsw` asks; then
/// [`Recommender::refreshed`]. Swap the returned recommender in for `rec`.
pub fn refreshed(
    rec: &Recommender,
    refit: Refit,
    name: &str,
    attrs: Option<Attrs<'_>>,
    carry: Option<&Carried>,
    store: &Arc<Store>,
    opts: &PipelineOptions,
) -> Result<(Recommender, Installed)> {
    let ids = rec.external_ids(refit.live().n_items())?;
    let (snap, index) = publish(store, name, refit.live(), &ids, attrs, carry, opts)?;
    rec.refreshed(refit, snap, index)
}

/// Rows a refit's generation carries after the refit's items: the items of the served
/// generation the refit has no embedding for (upserted into the store, never in an
/// event before the refit's plan), with their vectors and attributes as served. Their
/// vectors stay in the space of the model they were upserted for: a refit warm-starts
/// from it, so they stay comparable, not retrained.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Carried {
    /// The external ids, in the served generation's row order.
    pub ids: Vec<u64>,
    /// Their vectors, `ids.len() × dim`.
    pub vectors: Vec<f32>,
    /// Their attributes, `ids.len() × n_attrs` of the served generation.
    pub attrs: Vec<u32>,
}

impl Carried {
    /// The live rows of `served` whose ids are not in `trained` (the refit's items).
    pub fn from_served(served: &Snapshot, trained: &[u64]) -> Result<Carried> {
        let trained: std::collections::HashSet<u64> = trained.iter().copied().collect();
        let ids: Vec<u64> = served
            .iter_live()
            .map(|(id, _, _)| id.0)
            .filter(|id| !trained.contains(id))
            .collect();
        let store_ids: Vec<StoreId> = ids.iter().map(|&i| StoreId(i)).collect();
        let mut vectors = vec![0f32; ids.len() * served.dim()];
        served.get_many(&store_ids, &mut vectors)?;
        let attrs = attrs_of(served, &ids);
        Ok(Carried {
            ids,
            vectors,
            attrs,
        })
    }

    /// Whether there is nothing to carry.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

/// The attributes `snap` holds for each of `ids` (zeros for an item it lacks), row-major.
pub(crate) fn attrs_of(snap: &Snapshot, ids: &[u64]) -> Vec<u32> {
    let n = snap.n_attrs();
    let mut out = vec![0u32; ids.len() * n];
    if n > 0 {
        for (row, &id) in out.chunks_exact_mut(n).zip(ids) {
            if let Some(a) = snap.attrs(StoreId(id)) {
                row.copy_from_slice(&a[..n.min(a.len())]);
            }
        }
    }
    out
}

/// The recommender a restarted service serves: the state saved in `dir`
/// ([`Recommender::with_log`] / [`Recommender::checkpoint`], or [`Recommender::state`]),
/// taste graph, refresher and external item ids (refits train on `opts.device`, the live
/// model is configured by `opts.live`), over the store generation it was saved serving
/// (its HNSW index loaded or built when `opts.hnsw` asks), with the events `dir`'s
/// feedback log holds after the state replayed and the log attached (acknowledging as
/// `opts.sync` says) — or `None` when nothing was saved in `dir`.
///
/// The directory's lock is taken first and held by the log attached: a directory another
/// process (or recommender) still holds is [`taste_graph::Error::Locked`], whatever its
/// files say at that moment.
pub fn restore(dir: &Path, store: &Arc<Store>, opts: &PipelineOptions) -> Result<Option<Reopened>> {
    match restore_locked(dir, lock_dir(dir)?, store, opts)? {
        Restore::Reopened(r) => Ok(Some(*r)),
        Restore::Nothing(_) => Ok(None),
    }
}

/// What [`restore_locked`] found.
pub(crate) enum Restore {
    /// The saved state, served with the log's events replayed.
    Reopened(Box<Reopened>),
    /// Nothing saved: the lock, to attach a new log under ([`Recommender::with_log_locked`]).
    Nothing(FeedbackLock),
}

/// [`restore`] under `lock` ([`lock_dir`] on `dir`).
pub(crate) fn restore_locked(
    dir: &Path,
    lock: FeedbackLock,
    store: &Arc<Store>,
    opts: &PipelineOptions,
) -> Result<Restore> {
    let selection = opts.device.select()?;
    // The ranker adds no items with content, so the taste graph needs no aggregator.
    let Some(restored) = Refresher::load(dir, &selection, opts.live, None)? else {
        return Ok(Restore::Nothing(lock));
    };
    let saved = SavedIds::decode(&restored.app_data)?;
    let snap = store.generation(&saved.generation)?;
    let index = index_if_asked(store, &snap, opts)?;
    let mut reopened = Recommender::reopen(
        lock,
        restored,
        saved,
        dir,
        opts.sync,
        snap,
        index,
        opts.interests,
    )?;
    reopened.recommender = reopened
        .recommender
        .with_max_live_items(opts.max_live_items);
    Ok(Restore::Reopened(Box::new(reopened)))
}

/// The HNSW index of `snap` ([`index_for`]) when `opts.hnsw` asks for one.
fn index_if_asked(
    store: &Arc<Store>,
    snap: &Snapshot,
    opts: &PipelineOptions,
) -> Result<Option<Hnsw>> {
    opts.hnsw.map(|p| index_for(store, snap, p)).transpose()
}

/// `live`'s item embeddings written to generation `name` of `store` under `ids` (with
/// `carry`'s rows after them, in the same commit; made current), and its HNSW index
/// when `opts.hnsw` asks.
fn publish(
    store: &Arc<Store>,
    name: &str,
    live: &LiveModel,
    ids: &[u64],
    attrs: Option<Attrs<'_>>,
    carry: Option<&Carried>,
    opts: &PipelineOptions,
) -> Result<(Snapshot, Option<Hnsw>)> {
    let n_attrs = attrs.map_or(0, |a| a.n_attrs);
    let mut w = store.writer()?;
    w.create_generation(GenerationSpec::new(name, live.dim(), opts.storage).attrs(n_attrs))?;
    export_table(
        &mut w,
        name,
        opts.storage,
        live.items(),
        live.dim(),
        ids,
        attrs,
    )?;
    if let Some(c) = carry.filter(|c| !c.is_empty()) {
        let carried = attrs.map(|_| Attrs {
            values: &c.attrs,
            n_attrs,
        });
        export_table(
            &mut w,
            name,
            opts.storage,
            &c.vectors,
            live.dim(),
            &c.ids,
            carried,
        )?;
    }
    w.set_current(name)?;
    w.commit()?;
    let snap = store.generation(name)?;
    let index = index_if_asked(store, &snap, opts)?;
    Ok((snap, index))
}

/// A recommender for a trained `model` of `graph`: its item embeddings exported to
/// generation `opts.generation` of `store` (made current), an HNSW index when asked
/// (loaded from the store's directory when one was saved for this commit, else
/// built and saved), and the live taste graph.
pub fn serve(
    graph: &BipartiteGraph,
    model: &LightGcn,
    item_ids: Option<Vec<u64>>,
    attrs: Option<Attrs<'_>>,
    store: &Arc<Store>,
    opts: &PipelineOptions,
) -> Result<Recommender> {
    let live = LiveModel::new(model, graph, opts.live, opts.now)?;
    let ids = item_ids.unwrap_or_else(|| (0..live.n_items() as u64).collect());
    let (snap, index) = publish(store, &opts.generation, &live, &ids, attrs, None, opts)?;
    Ok(
        Recommender::new(snap, index, live, Some(ids), opts.interests)?
            .with_max_live_items(opts.max_live_items),
    )
}

/// The cosine HNSW index of `snap`: loaded if saved in the store's directory, else
/// built and saved there. An index saved in an older file format is rebuilt and
/// replaced (it is derived data); a damaged one is an error.
pub fn index_for(store: &Arc<Store>, snap: &Snapshot, params: HnswParams) -> Result<Hnsw> {
    match Hnsw::load(store.directory(), snap, Metric::Cosine) {
        Ok(Some(h)) => return Ok(h),
        Ok(None) | Err(embed_store::Error::Version { .. }) => {}
        Err(e) => return Err(e.into()),
    }
    let h = Hnsw::build(snap, Metric::Cosine, params)?;
    h.save(store.directory())?;
    Ok(h)
}
