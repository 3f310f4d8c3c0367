//! A [`Refresher`]'s state on disk, so that a service restarted after a crash serves the
//! model it served. Two snapshots (`src/snapshot.rs`: safetensors with a JSON meta,
//! each written atomically) in a state directory:
//!
//! - `model-<stamp>.safetensors` (kind `refresher-model`), written once per installed
//!   model: the trainer (its checkpoint tables `ego`, `adam_m1`, `adam_m2` and scalars),
//!   the graph it trained on (`graph_degrees`: each user's item count; `graph_items`:
//!   every user's items in user order), the events the refit kept outside it (`kept_*`)
//!   and when each trained user's interactions are dated (`user_times`);
//! - `refresher.safetensors` (kind `refresher`), rewritten by every save, the commit
//!   point: which model file, the install generation, the seq the state covers, the live
//!   model's sizes, the events recorded since the install (`events_*`: user, item, time,
//!   weight, kind), every user's hidden and recent items (`hidden_counts`,
//!   `hidden_items`, `recent_counts`, `recent_items`, `recent_weights`, `recent_times`),
//!   live items' content (`content_items`, `content_lens`, `content_values`) and the
//!   application's bytes (`app_data`).
//!
//! A crash at any point leaves the previous state whole; model files the refresher file
//! does not name are removed by the next save. The events after the state are the
//! service's to keep ([`crate::FeedbackLog`]) and to observe again after a load.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::Arc;

use mosaic_durability::{Directory, MmapDirectory};
use serde::{Deserialize, Serialize};

use super::{Refresher, SharedEvents};
use crate::checkpoint;
use crate::error::{Error, Result};
use crate::graph::BipartiteGraph;
use crate::ids::{ItemId, UserId};
use crate::inductive::ContentAggregator;
use crate::interactions::{Interaction, InteractionKind};
use crate::live::{ItemContent, LiveConfig, LiveModel, Recent};
use crate::snapshot::{self, Data, Snapshot};
use crate::training::Training;
use mosaic_device::Selection;

/// The refresher file, the commit point of a save.
const STATE: &str = "refresher.safetensors";
/// The meta file of the format before snapshots; refused, not ignored.
const OLD_STATE: &str = "REFRESHER";
const STATE_KIND: &str = "refresher";
const MODEL_KIND: &str = "refresher-model";
const VERSION: u32 = 1;
const KEPT: [&str; 5] = [
    "kept_user",
    "kept_item",
    "kept_time",
    "kept_weight",
    "kept_kind",
];
const RECORDED: [&str; 5] = [
    "events_user",
    "events_item",
    "events_time",
    "events_weight",
    "events_kind",
];

/// The model file's scalars.
#[derive(Debug, Serialize, Deserialize)]
struct ModelMeta {
    /// The stamp in its file name: a model file copied under another name is refused.
    stamp: u64,
    trainer: checkpoint::Meta,
    kept: usize,
    user_times: usize,
}

/// The refresher file's scalars.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StateMeta {
    /// The model file.
    model: String,
    generation: u64,
    through_seq: u64,
    trained_at: u64,
    users: usize,
    items: usize,
    /// Stream index of the first recorded event after the kept ones.
    cut_at: u64,
    recorded: usize,
    hidden: usize,
    recent: usize,
    content: usize,
    content_values: usize,
    app_data: usize,
}

/// A refresher and live model rebuilt from a saved state ([`Refresher::load`]).
#[derive(Debug)]
pub struct Restored {
    /// The trainer, graph and recorded events as saved, and the install generation.
    pub refresher: Refresher,
    /// The trainer's model with the recorded events folded in again, items added live
    /// with their content, and each user's hidden and recent items as saved: the served
    /// model, bit for bit.
    pub live: LiveModel,
    /// The seq the state covers: observe the events after it through the refresher.
    pub through_seq: u64,
    /// The application's bytes saved with the state ([`Refresher::state_with`]).
    pub app_data: Vec<u8>,
}

/// Events as five columns (what a snapshot stores).
#[derive(Debug, Clone, Default)]
struct Columns {
    user: Vec<u32>,
    item: Vec<u32>,
    time: Vec<u64>,
    weight: Vec<f32>,
    kind: Vec<u8>,
}

impl Columns {
    fn of<'a>(events: impl Iterator<Item = &'a Interaction>) -> Self {
        let mut c = Columns::default();
        for e in events {
            c.user.push(e.user.0);
            c.item.push(e.item.0);
            c.time.push(e.timestamp);
            c.weight.push(e.weight);
            c.kind.push(e.kind.code());
        }
        c
    }

    fn tensors(&self, names: [&'static str; 5]) -> [(&'static str, Data<'_>); 5] {
        [
            (names[0], Data::U32(&self.user)),
            (names[1], Data::U32(&self.item)),
            (names[2], Data::U64(&self.time)),
            (names[3], Data::F32(&self.weight)),
            (names[4], Data::U8(&self.kind)),
        ]
    }

    /// `n` events of `snap` (from `path`), kinds and weights checked.
    fn read<M>(
        path: &Path,
        snap: &Snapshot<'_, M>,
        names: [&str; 5],
        n: usize,
    ) -> Result<Vec<Interaction>> {
        let (user, item) = (snap.u32(names[0], n)?, snap.u32(names[1], n)?);
        let (time, weight) = (snap.u64(names[2], n)?, snap.f32(names[3], n)?);
        let kind = snap.u8(names[4], n)?;
        (0..n)
            .map(|k| {
                let e = Interaction {
                    user: UserId(user[k]),
                    item: ItemId(item[k]),
                    kind: InteractionKind::from_code(kind[k]).ok_or_else(|| {
                        corrupt(path, format!("{}[{k}]: kind {}", names[4], kind[k]))
                    })?,
                    weight: weight[k],
                    timestamp: time[k],
                };
                e.check_weight()
                    .map_err(|err| corrupt(path, err.to_string()))?;
                Ok(e)
            })
            .collect()
    }
}

/// Every user's hidden and recent items, flattened.
#[derive(Debug, Clone, Default)]
struct Memory {
    hidden_counts: Vec<u32>,
    hidden_items: Vec<u32>,
    recent_counts: Vec<u32>,
    recent_items: Vec<u32>,
    recent_weights: Vec<f32>,
    recent_times: Vec<u64>,
}

impl Memory {
    fn of(live: &LiveModel) -> Self {
        let (hidden, recent) = live.user_memory();
        let mut m = Memory {
            hidden_counts: hidden.iter().map(|h| h.len() as u32).collect(),
            hidden_items: hidden.concat(),
            recent_counts: recent.iter().map(|q| q.len() as u32).collect(),
            ..Memory::default()
        };
        for r in recent.iter().flatten() {
            m.recent_items.push(r.item.0);
            m.recent_weights.push(r.weight);
            m.recent_times.push(r.time);
        }
        m
    }

    fn tensors(&self) -> [(&'static str, Data<'_>); 6] {
        [
            ("hidden_counts", Data::U32(&self.hidden_counts)),
            ("hidden_items", Data::U32(&self.hidden_items)),
            ("recent_counts", Data::U32(&self.recent_counts)),
            ("recent_items", Data::U32(&self.recent_items)),
            ("recent_weights", Data::F32(&self.recent_weights)),
            ("recent_times", Data::U64(&self.recent_times)),
        ]
    }
}

/// Every user's hidden items and recent positives, as the live model takes them.
type UserMemory = (Vec<Vec<u32>>, Vec<VecDeque<Recent>>);

/// Splits `flat` into `counts.len()` runs of `counts[k]` (which must add up to it).
fn runs<T: Clone>(path: &Path, what: &str, counts: &[u32], flat: &[T]) -> Result<Vec<Vec<T>>> {
    let total: u64 = counts.iter().map(|&c| u64::from(c)).sum();
    if total != flat.len() as u64 {
        return Err(corrupt(
            path,
            format!("{what} counts add up to {total}, {} stored", flat.len()),
        ));
    }
    let mut at = 0;
    Ok(counts
        .iter()
        .map(|&c| {
            let run = flat[at..at + c as usize].to_vec();
            at += c as usize;
            run
        })
        .collect())
}

fn corrupt(path: &Path, message: String) -> Error {
    Error::Corrupt {
        path: path.to_path_buf(),
        offset: 0,
        message,
    }
}

/// A refresher's state captured for writing ([`Refresher::state`]): the current model's
/// trainer, graph and kept events (shared, not copied), the events recorded since its
/// install (their blocks shared), every user's memory and the live items' content
/// (copied). Capture it under the service's lock, write it outside.
#[derive(Debug, Clone)]
pub struct RefresherState {
    training: Arc<Training>,
    graph: Arc<BipartiteGraph>,
    kept: Arc<[Interaction]>,
    user_times: Arc<[u64]>,
    stamp: u64,
    recorded: SharedEvents,
    memory: Memory,
    content: Vec<(u32, Arc<[f32]>)>,
    app_data: Vec<u8>,
    meta: StateMeta,
}

impl RefresherState {
    /// Writes the state to `dir` (created if needed): the model file unless an earlier
    /// write left it there, then the refresher file, each atomically; then removes the
    /// model files the refresher file does not name. A crash at any point leaves the
    /// previous write whole. One writer per directory at a time.
    pub fn write(&self, dir: impl AsRef<Path>) -> Result<()> {
        let dir = MmapDirectory::open(dir.as_ref())?;
        if !dir.exists(&self.meta.model) {
            dir.atomic_write(&self.meta.model, &self.encode_model()?)?;
        }
        dir.atomic_write(STATE, &self.encode_state()?)?;
        for name in dir.list()? {
            if is_model_file(&name) && name != self.meta.model {
                dir.delete(&name)?;
            }
        }
        Ok(())
    }

    /// Events recorded since the model's install, which every save rewrites (the
    /// feedback log holds those after the state).
    pub fn recorded_events(&self) -> usize {
        self.meta.recorded
    }

    /// Bytes of the application's data saved with the state.
    pub fn app_data_len(&self) -> usize {
        self.app_data.len()
    }

    fn encode_model(&self) -> Result<Vec<u8>> {
        let saved = self.training.saved()?;
        let g = &*self.graph;
        let degrees: Vec<u32> = (0..g.n_users())
            .map(|u| g.items_of(UserId(u as u32)).len() as u32)
            .collect();
        let items: Vec<u32> = (0..g.n_users())
            .flat_map(|u| g.items_of(UserId(u as u32)).iter().copied())
            .collect();
        let kept = Columns::of(self.kept.iter());
        let meta = ModelMeta {
            stamp: self.stamp,
            trainer: checkpoint::meta(g, &saved.progress),
            kept: self.kept.len(),
            user_times: self.user_times.len(),
        };
        let mut tensors = checkpoint::tensors(g, &saved)?.to_vec();
        tensors.extend(kept.tensors(KEPT));
        tensors.push(("graph_degrees", Data::U32(&degrees)));
        tensors.push(("graph_items", Data::U32(&items)));
        tensors.push(("user_times", Data::U64(&self.user_times)));
        snapshot::encode(MODEL_KIND, VERSION, &meta, &tensors)
    }

    fn encode_state(&self) -> Result<Vec<u8>> {
        let recorded = Columns::of(self.recorded.iter());
        let items: Vec<u32> = self.content.iter().map(|c| c.0).collect();
        let lens: Vec<u32> = self.content.iter().map(|c| c.1.len() as u32).collect();
        let values: Vec<f32> = self
            .content
            .iter()
            .flat_map(|c| c.1.iter().copied())
            .collect();
        let mut tensors = recorded.tensors(RECORDED).to_vec();
        tensors.extend(self.memory.tensors());
        tensors.push(("content_items", Data::U32(&items)));
        tensors.push(("content_lens", Data::U32(&lens)));
        tensors.push(("content_values", Data::F32(&values)));
        tensors.push(("app_data", Data::U8(&self.app_data)));
        snapshot::encode(STATE_KIND, VERSION, &self.meta, &tensors)
    }
}

fn model_name(stamp: u64) -> String {
    format!("model-{stamp:016x}.safetensors")
}

/// The stamp a model file's name holds.
fn parse_model_name(name: &str) -> Option<u64> {
    let hex = name.strip_prefix("model-")?.strip_suffix(".safetensors")?;
    if hex.len() != 16 {
        return None;
    }
    u64::from_str_radix(hex, 16).ok()
}

fn is_model_file(name: &str) -> bool {
    parse_model_name(name).is_some()
}

/// Snapshot `bytes` (from `path`) of `kind`, in this build's format.
fn decode<'a, M: serde::de::DeserializeOwned>(
    path: &Path,
    bytes: &'a mosaic_durability::FileBytes,
    kind: &str,
) -> Result<Snapshot<'a, M>> {
    snapshot::decode(path, bytes.as_slice(), kind, VERSION..=VERSION)
}

/// The model file's graph (sizes bounded by the trainer's tables, which are there).
fn read_graph(path: &Path, snap: &Snapshot<'_, ModelMeta>) -> Result<BipartiteGraph> {
    let t = &snap.meta.trainer;
    let nodes = usize::try_from(t.users.saturating_add(t.items)).unwrap_or(usize::MAX);
    if nodes > snap.len_of("ego")? {
        return Err(corrupt(
            path,
            format!(
                "{} users and {} items, more than the trainer's table holds",
                t.users, t.items
            ),
        ));
    }
    let (users, items) = (t.users as usize, t.items as usize);
    let degrees = snap.u32("graph_degrees", users)?;
    let flat = snap.u32("graph_items", snap.len_of("graph_items")?)?;
    let lists = runs(path, "graph_degrees", &degrees, &flat)?;
    let edges = lists
        .iter()
        .enumerate()
        .flat_map(|(u, l)| l.iter().map(move |&i| (UserId(u as u32), ItemId(i))));
    let graph = BipartiteGraph::from_edges(users, items, edges)
        .map_err(|e| corrupt(path, format!("graph does not build: {e}")))?;
    if graph.n_edges() != flat.len() {
        return Err(corrupt(
            path,
            format!(
                "{} edges stored, {} distinct: a user lists an item twice",
                flat.len(),
                graph.n_edges()
            ),
        ));
    }
    Ok(graph)
}

impl Memory {
    /// The memory of the refresher file's users (from `path`).
    fn read(path: &Path, snap: &Snapshot<'_, StateMeta>) -> Result<UserMemory> {
        let m = &snap.meta;
        let hidden = runs(
            path,
            "hidden",
            &snap.u32("hidden_counts", m.users)?,
            &snap.u32("hidden_items", m.hidden)?,
        )?;
        let recent_counts = snap.u32("recent_counts", m.users)?;
        let items = snap.u32("recent_items", m.recent)?;
        let weights = snap.f32("recent_weights", m.recent)?;
        let times = snap.u64("recent_times", m.recent)?;
        let flat: Vec<Recent> = (0..m.recent)
            .map(|k| Recent {
                item: ItemId(items[k]),
                weight: weights[k],
                time: times[k],
            })
            .collect();
        let recent = runs(path, "recent", &recent_counts, &flat)?
            .into_iter()
            .map(VecDeque::from)
            .collect();
        Ok((hidden, recent))
    }
}

/// The live items' content of the refresher file: item `first + k`'s at `k`.
fn read_content(
    path: &Path,
    snap: &Snapshot<'_, StateMeta>,
    live: std::ops::Range<usize>,
) -> Result<ItemContent> {
    let m = &snap.meta;
    let items = snap.u32("content_items", m.content)?;
    let lens = snap.u32("content_lens", m.content)?;
    let values = snap.f32("content_values", m.content_values)?;
    let mut content = ItemContent {
        first: live.start,
        content: vec![None; live.len()],
    };
    for (item, v) in items.iter().zip(runs(path, "content", &lens, &values)?) {
        let slot = (*item as usize)
            .checked_sub(live.start)
            .and_then(|k| content.content.get_mut(k))
            .ok_or_else(|| {
                corrupt(
                    path,
                    format!("content of item {item}, not a live item ({live:?})"),
                )
            })?;
        *slot = Some(v.into());
    }
    Ok(content)
}

impl Refresher {
    /// Whether `dir` holds a saved state ([`RefresherState::write`]).
    pub fn has_saved_state(dir: impl AsRef<Path>) -> bool {
        dir.as_ref().join(STATE).exists()
    }

    /// Saves the state behind `live` (the model this refresher serves) to `dir`, as
    /// covering the service's events up to `through_seq`: every event up to that seq
    /// must have gone through this refresher, and none after it. The same as
    /// [`Refresher::state`] then [`RefresherState::write`], which a service splits to
    /// hold its lock only for the capture.
    ///
    /// A save writes the trainer and graph once per installed model (a trainer
    /// checkpoint: 54 MB at Gowalla's size), and every time the events recorded since
    /// the install, every user's hidden and recent items and the live items' content.
    pub fn save(&self, dir: impl AsRef<Path>, live: &LiveModel, through_seq: u64) -> Result<()> {
        self.state(live, through_seq)?.write(dir)
    }

    /// Captures the state behind `live` as covering the events up to `through_seq`
    /// (see [`Refresher::save`]): shares the trainer, graph and recorded events' blocks
    /// and copies every user's hidden and recent items and the live items' content
    /// pointers: O(users + their memory + blocks of events + live items).
    pub fn state(&self, live: &LiveModel, through_seq: u64) -> Result<RefresherState> {
        self.state_with(live, through_seq, &[])
    }

    /// [`Refresher::state`] with `app_data` saved in the same file (so it changes
    /// atomically with the state; e.g. the ranker's external item ids), given back by
    /// [`Refresher::load`] as [`Restored::app_data`].
    pub fn state_with(
        &self,
        live: &LiveModel,
        through_seq: u64,
        app_data: &[u8],
    ) -> Result<RefresherState> {
        self.check_live(live)?;
        let recorded = self.events.suffix(self.kept.len());
        let memory = Memory::of(live);
        let content: Vec<(u32, Arc<[f32]>)> = (self.graph.n_items()..live.n_items())
            .filter_map(|i| {
                live.shared_item_content(ItemId(i as u32))
                    .map(|c| (i as u32, Arc::clone(c)))
            })
            .collect();
        let meta = StateMeta {
            model: model_name(self.stamp),
            generation: self.generation,
            through_seq,
            trained_at: live.trained_at(),
            users: live.n_users(),
            items: live.n_items(),
            cut_at: self.cut_at,
            recorded: recorded.len(),
            hidden: memory.hidden_items.len(),
            recent: memory.recent_items.len(),
            content: content.len(),
            content_values: content.iter().map(|c| c.1.len()).sum(),
            app_data: app_data.len(),
        };
        Ok(RefresherState {
            training: Arc::clone(&self.training),
            graph: Arc::clone(&self.graph),
            kept: Arc::clone(&self.kept),
            user_times: Arc::clone(&self.user_times),
            stamp: self.stamp,
            recorded,
            memory,
            content,
            app_data: app_data.to_vec(),
            meta,
        })
    }

    /// Rebuilds the refresher and the live model saved in `dir` ([`Refresher::save`]),
    /// training on `selection`'s device, the live model configured by `config` (users'
    /// recent items are replayed with its length and kind weights) and embedding items
    /// added live with content through `aggregator` (the one the served model had; needed
    /// when such items were saved); `None` when nothing was saved there.
    ///
    /// Then observe the events after [`Restored::through_seq`] through the refresher,
    /// and serve. Damaged or mismatched files are an [`Error::Corrupt`]. With a feedback
    /// log beside the state, hold [`crate::FeedbackLog::lock`] before loading (then open
    /// the log under it), so that no other writer replaces the state in between.
    pub fn load(
        dir: impl AsRef<Path>,
        selection: &Selection,
        config: LiveConfig,
        aggregator: Option<ContentAggregator>,
    ) -> Result<Option<Restored>> {
        let dir = dir.as_ref();
        let state_path = dir.join(STATE);
        if !state_path.exists() {
            if dir.join(OLD_STATE).exists() {
                return Err(corrupt(
                    &dir.join(OLD_STATE),
                    "a refresher state in the format before snapshots (0.1 builds until issue 27); this build reads refresher.safetensors: restore it with the build that wrote it and save it again, or retrain".into(),
                ));
            }
            return Ok(None);
        }
        let bytes = snapshot::read_file(&state_path)?;
        let st: Snapshot<'_, StateMeta> = decode(&state_path, &bytes, STATE_KIND)?;
        let m = st.meta.clone();
        let Some(stamp) = parse_model_name(&m.model) else {
            return Err(corrupt(
                &state_path,
                format!("model file {:?} is not a model file name", m.model),
            ));
        };
        let model_path = dir.join(&m.model);
        let model_bytes = snapshot::read_file(&model_path)?;
        let ms: Snapshot<'_, ModelMeta> = decode(&model_path, &model_bytes, MODEL_KIND)?;
        if ms.meta.stamp != stamp {
            return Err(corrupt(
                &model_path,
                format!(
                    "the file of model {:016x}, not {stamp:016x}: a model file under another's name",
                    ms.meta.stamp
                ),
            ));
        }
        let graph = read_graph(&model_path, &ms)?;
        let saved = checkpoint::saved_from(&model_path, &graph, &ms.meta.trainer, &ms)?;
        let kept = Columns::read(&model_path, &ms, KEPT, ms.meta.kept)?;
        if ms.meta.user_times > graph.n_users() {
            return Err(corrupt(
                &model_path,
                format!(
                    "times of {} users in a graph of {}",
                    ms.meta.user_times,
                    graph.n_users()
                ),
            ));
        }
        let user_times = ms.u64("user_times", ms.meta.user_times)?;
        let recorded = Columns::read(&state_path, &st, RECORDED, m.recorded)?;
        let (hidden, recent) = Memory::read(&state_path, &st)?;
        if m.items < graph.n_items() || m.users < graph.n_users() {
            return Err(corrupt(
                &state_path,
                format!(
                    "a live model of {} users and {} items over a graph of {} and {}",
                    m.users,
                    m.items,
                    graph.n_users(),
                    graph.n_items()
                ),
            ));
        }
        let live_items = graph.n_items()..m.items;
        let content = read_content(&state_path, &st, live_items.clone())?;
        // each live item came with an event or with content: more is a crafted count
        if live_items.len() > m.content + kept.len() + recorded.len() {
            return Err(corrupt(
                &state_path,
                format!(
                    "{} live items with {} content records and {} events",
                    live_items.len(),
                    m.content,
                    kept.len() + recorded.len()
                ),
            ));
        }
        let app_data = st.u8("app_data", m.app_data)?;
        let events: Vec<Interaction> = kept.iter().chain(&recorded).copied().collect();
        let mut training = Training::from_saved(&graph, saved, selection)?;
        let live = rebuild(
            &state_path,
            &mut training,
            &graph,
            config,
            aggregator,
            &m,
            &user_times,
            &events,
            &content,
            (hidden, recent),
        )?;
        let refresher = Refresher {
            training: Arc::new(training),
            graph: Arc::new(graph),
            events: events.into(),
            kept: kept.into(),
            cut_at: m.cut_at,
            user_times: user_times.into(),
            generation: m.generation,
            stamp,
        };
        Ok(Some(Restored {
            refresher,
            live,
            through_seq: m.through_seq,
            app_data,
        }))
    }
}

/// The live model the state describes: the trainer's model, users dated, the events
/// folded in again in order (live items added with their content as they come), then
/// every user's memory as saved.
#[allow(clippy::too_many_arguments)]
fn rebuild(
    path: &Path,
    training: &mut Training,
    graph: &BipartiteGraph,
    config: LiveConfig,
    aggregator: Option<ContentAggregator>,
    m: &StateMeta,
    user_times: &[u64],
    events: &[Interaction],
    content: &ItemContent,
    memory: UserMemory,
) -> Result<LiveModel> {
    let mut live = LiveModel::new(training.model()?, graph, config, m.trained_at)?;
    live.date_users(user_times);
    match aggregator {
        Some(a) => live.set_aggregator(a)?,
        None if content.content.iter().any(Option::is_some) => {
            return Err(Error::Config {
                message: format!(
                    "{} saved live items have content: pass the content aggregator the served model had",
                    content.content.iter().flatten().count()
                ),
            });
        }
        None => {}
    }
    let content_of = |i: ItemId| content.get(i);
    for e in events {
        if e.item.index() >= m.items {
            return Err(corrupt(
                path,
                format!(
                    "recorded event on item {} of a model with {} items",
                    e.item.0, m.items
                ),
            ));
        }
        live.add_items_up_to(e.item.index() + 1, content_of)?;
        live.observe(e.user, e.item, e.kind, e.timestamp)
            .map_err(|err| corrupt(path, format!("recorded event does not replay: {err}")))?;
    }
    live.add_items_up_to(m.items, content_of)?;
    if live.n_users() != m.users || live.n_items() != m.items {
        return Err(corrupt(
            path,
            format!(
                "the replayed model has {} users and {} items, the saved one had {} and {}",
                live.n_users(),
                live.n_items(),
                m.users,
                m.items
            ),
        ));
    }
    let (hidden, recent) = memory;
    live.set_user_memory(hidden, recent)
        .map_err(|err| corrupt(path, err.to_string()))?;
    Ok(live)
}
