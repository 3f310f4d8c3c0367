//! A [`Refresher`]'s state on disk, so that a service restarted after a crash serves the
//! model it served, with every event it had folded in.
//!
//! A state directory holds (tantivy-style: immutable files, one small meta file swapped
//! atomically):
//!
//! - `trainer-<stamp>.ckpt`: the trainer ([`Training::save_checkpoint`]), written once
//!   per installed model (the stamp names one model of one refresher);
//! - `graph-<stamp>.graph`: the graph it trained on, written alongside;
//! - `REFRESHER`: which stamp is current, the install generation, the journal seq the
//!   state covers, when the training interactions are dated, the events recorded since
//!   the graph, and each user's hidden and recent items (what a training graph does not
//!   hold). Rewritten by every save (temp file, fsync, rename, directory fsync).
//!
//! A crash at any point leaves the previous `REFRESHER` and the files it names whole;
//! files no meta names are removed by the next save.
//!
//! Graph file (little-endian): magic `MOSRFGR1`, format version (u32), users, items,
//! edges (u64 each), each user's degree (u32), the items of every user in user order
//! (u32), crc32 of everything before.
//!
//! Meta file: magic `MOSRFSH1`, format version (u32), stamp, generation, seq, trained-at
//! time, the live model's users and items, recorded events (u64 each); the events (24
//! bytes each, the event log's encoding); per user: hidden count (u32), hidden items
//! (u32), recent count (u32), recent entries (item u32, weight f32, time u64); the
//! content of each item past the graph's (width u32, 0 for none, then f32 each); the
//! application's bytes (length u64, then the bytes); crc32 of everything before.

use std::collections::VecDeque;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::{ItemContent, Refresher, add_items_up_to};
use crate::checkpoint::{crc_trailer_holds, with_crc, write_atomic};
use crate::error::{Error, Result};
use crate::graph::BipartiteGraph;
use crate::ids::{ItemId, UserId};
use crate::inductive::ContentAggregator;
use crate::interactions::Interaction;
use crate::live::{LiveConfig, LiveModel, Recent};
use crate::log::{EVENT_LEN, decode_event, encode_event, remove_files};
use crate::training::Training;
use mosaic_device::Selection;

const META: &str = "REFRESHER";
const META_MAGIC: &[u8; 8] = b"MOSRFSH1";
const GRAPH_MAGIC: &[u8; 8] = b"MOSRFGR1";
const FORMAT: u32 = 1;
/// Meta header: magic, version, then seven u64 (the last: the event count).
const META_HEADER: usize = 8 + 4 + 7 * 8;
const GRAPH_HEADER: usize = 8 + 4 + 3 * 8;

/// A refresher and live model rebuilt from a saved state ([`Refresher::load`]).
#[derive(Debug)]
pub struct Restored {
    /// The trainer, graph and recorded events as saved, and the install generation.
    pub refresher: Refresher,
    /// The trainer's model with the recorded events folded in again, items added live
    /// with their content, and each user's hidden and recent items as saved: the served
    /// model, bit for bit.
    pub live: LiveModel,
    /// The journal seq the state covers: observe the journal's events after it
    /// ([`crate::Recovery::events_after`]) through the refresher.
    pub through_seq: u64,
    /// The application's bytes saved with the state ([`Refresher::state_with`]).
    pub app_data: Vec<u8>,
}

/// A refresher's state captured for writing ([`Refresher::state`]): the current model's
/// trainer and graph (shared, not copied) and the encoded meta file. Capture it under
/// the service's lock, write it outside.
#[derive(Debug, Clone)]
pub struct RefresherState {
    training: Arc<Training>,
    graph: Arc<BipartiteGraph>,
    stamp: u64,
    meta: Vec<u8>,
}

impl RefresherState {
    /// Writes the state to `dir`: the trainer checkpoint and the graph unless a previous
    /// write of the same model left them there, then the meta file, each atomically;
    /// then removes the files of other models. A crash at any point leaves the previous
    /// write whole. One writer per directory at a time.
    pub fn write(&self, dir: impl AsRef<Path>) -> Result<()> {
        let dir = dir.as_ref();
        fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let graph = graph_path(dir, self.stamp);
        if !graph.exists() {
            write_graph(&graph, &self.graph)?;
        }
        let trainer = trainer_path(dir, self.stamp);
        if !trainer.exists() {
            self.training.save_checkpoint(&trainer, &self.graph)?;
        }
        write_atomic(&dir.join(META), &self.meta)?;
        remove_unnamed(dir, self.stamp)
    }

    /// Bytes of the meta file (the part that grows with the events and the users).
    pub fn meta_bytes(&self) -> usize {
        self.meta.len()
    }
}

/// A stamp no other model of this process has, and unlikely any other process's.
pub(super) fn fresh_stamp() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    // splitmix64 of the clock and a counter: distinct within the process, spread across.
    let mut z = nanos ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ u64::from(std::process::id());
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// File names of the trainer checkpoint and the graph of the model named `stamp`.
fn model_files(stamp: u64) -> [String; 2] {
    [
        format!("trainer-{stamp:016x}.ckpt"),
        format!("graph-{stamp:016x}.graph"),
    ]
}

fn trainer_path(dir: &Path, stamp: u64) -> PathBuf {
    dir.join(&model_files(stamp)[0])
}

fn graph_path(dir: &Path, stamp: u64) -> PathBuf {
    dir.join(&model_files(stamp)[1])
}

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

/// Reads little-endian values from a verified file body; running short is corruption.
struct Cursor<'a> {
    path: &'a Path,
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn corrupt(&self, message: impl Into<String>) -> Error {
        Error::Corrupt {
            path: self.path.to_path_buf(),
            offset: self.at as u64,
            message: message.into(),
        }
    }
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len())
            .ok_or_else(|| self.corrupt(format!("file ends inside {what}")))?;
        let b = &self.bytes[self.at..end];
        self.at = end;
        Ok(b)
    }
    fn u32(&mut self, what: &str) -> Result<u32> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self, what: &str) -> Result<u64> {
        let b = self.take(8, what)?;
        let mut w = [0u8; 8];
        w.copy_from_slice(b);
        Ok(u64::from_le_bytes(w))
    }
    /// A count of `size`-byte entries that must fit in what is left.
    fn count(&mut self, size: usize, what: &str) -> Result<usize> {
        let n = self.u64(what)?;
        self.fits(n, size, what)
    }
    fn fits(&self, n: u64, size: usize, what: &str) -> Result<usize> {
        let left = (self.bytes.len() - self.at) as u64;
        if n.checked_mul(size as u64).is_none_or(|b| b > left) {
            return Err(self.corrupt(format!("{n} {what} do not fit the file")));
        }
        Ok(n as usize)
    }
}

/// Reads `path`, checks the magic, version and trailing crc32; returns the body (crc
/// excluded).
fn read_verified(path: &Path, magic: &[u8; 8], header: usize, what: &str) -> Result<Vec<u8>> {
    let mut bytes = fs::read(path).map_err(|e| Error::io(path, e))?;
    let corrupt = |offset: usize, message: String| Error::Corrupt {
        path: path.to_path_buf(),
        offset: offset as u64,
        message,
    };
    if bytes.len() < header + 4 || &bytes[..8] != magic {
        return Err(corrupt(0, format!("not a {what} (bad magic or too short)")));
    }
    let body = bytes.len() - 4;
    if !crc_trailer_holds(&bytes) {
        return Err(corrupt(body, format!("{what} checksum mismatch")));
    }
    let version = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
    if version != FORMAT {
        return Err(corrupt(
            8,
            format!("{what} format version {version}, this build reads {FORMAT}"),
        ));
    }
    bytes.truncate(body);
    Ok(bytes)
}

fn write_graph(path: &Path, graph: &BipartiteGraph) -> Result<()> {
    let mut out = Vec::with_capacity(GRAPH_HEADER + 4 * (graph.n_users() + graph.n_edges()) + 4);
    out.extend_from_slice(GRAPH_MAGIC);
    put_u32(&mut out, FORMAT);
    for v in [graph.n_users(), graph.n_items(), graph.n_edges()] {
        put_u64(&mut out, v as u64);
    }
    let users = (0..graph.n_users()).map(|u| graph.items_of(UserId(u as u32)));
    for items in users.clone() {
        put_u32(&mut out, items.len() as u32);
    }
    for items in users {
        items.iter().for_each(|&i| put_u32(&mut out, i));
    }
    write_atomic(path, &with_crc(out))
}

fn read_graph(path: &Path) -> Result<BipartiteGraph> {
    let bytes = read_verified(path, GRAPH_MAGIC, GRAPH_HEADER, "refresher graph file")?;
    let mut r = Cursor {
        path,
        bytes: &bytes,
        at: 12,
    };
    let n_users = r.u64("the user count")?;
    let n_items = r.u64("the item count")?;
    let n_edges = r.u64("the edge count")?;
    let n_users = r.fits(n_users, 4, "user degrees")?;
    let n_edges = r.fits(n_edges, 4, "edges")?;
    let n_items = usize::try_from(n_items).map_err(|_| r.corrupt("item count overflows"))?;
    let mut degrees = Vec::with_capacity(n_users);
    for _ in 0..n_users {
        degrees.push(r.u32("user degrees")? as usize);
    }
    if degrees.iter().sum::<usize>() != n_edges {
        return Err(r.corrupt(format!("user degrees do not add up to {n_edges} edges")));
    }
    let mut edges = Vec::with_capacity(n_edges);
    for (u, &deg) in degrees.iter().enumerate() {
        for _ in 0..deg {
            edges.push((UserId(u as u32), ItemId(r.u32("edges")?)));
        }
    }
    if r.at != bytes.len() {
        return Err(r.corrupt("bytes after the last edge"));
    }
    let graph =
        BipartiteGraph::from_edges(n_users, n_items, edges).map_err(|e| Error::Corrupt {
            path: path.to_path_buf(),
            offset: 0,
            message: format!("graph does not build: {e}"),
        })?;
    if graph.n_edges() != n_edges {
        return Err(Error::Corrupt {
            path: path.to_path_buf(),
            offset: 0,
            message: format!(
                "{n_edges} edges stored, {} distinct: a user lists an item twice",
                graph.n_edges()
            ),
        });
    }
    Ok(graph)
}

/// What the meta file holds besides the files it names.
struct Meta {
    stamp: u64,
    generation: u64,
    through_seq: u64,
    trained_at: u64,
    n_users: usize,
    n_items: usize,
    events: Vec<Interaction>,
    hidden: Vec<Vec<u32>>,
    recent: Vec<VecDeque<Recent>>,
    /// Content of the items past the graph's.
    content: Vec<Option<Box<[f32]>>>,
    app_data: Vec<u8>,
}

fn read_meta(path: &Path) -> Result<Meta> {
    let bytes = read_verified(path, META_MAGIC, META_HEADER, "refresher state file")?;
    let mut r = Cursor {
        path,
        bytes: &bytes,
        at: 12,
    };
    let stamp = r.u64("the stamp")?;
    let generation = r.u64("the generation")?;
    let through_seq = r.u64("the seq")?;
    let trained_at = r.u64("the trained-at time")?;
    let n_users = r.count(8, "users")?;
    let n_items =
        usize::try_from(r.u64("the item count")?).map_err(|_| r.corrupt("item count overflows"))?;
    let n_events = r.count(EVENT_LEN, "events")?;
    let mut events = Vec::with_capacity(n_events);
    for _ in 0..n_events {
        let b = r.take(EVENT_LEN, "events")?;
        events.push(decode_event(b).map_err(|m| r.corrupt(format!("recorded event: {m}")))?);
    }
    let mut hidden = Vec::with_capacity(n_users);
    let mut recent = Vec::with_capacity(n_users);
    for u in 0..n_users {
        let n = r.u32("hidden counts")?;
        let n = r.fits(n.into(), 4, "hidden items")?;
        let mut h = Vec::with_capacity(n);
        for _ in 0..n {
            h.push(r.u32("hidden items")?);
        }
        hidden.push(h);
        let n = r.u32("recent counts")?;
        let n = r.fits(n.into(), 16, "recent items")?;
        let mut q = VecDeque::with_capacity(n);
        for _ in 0..n {
            let item = ItemId(r.u32("recent items")?);
            let weight = f32::from_bits(r.u32("recent items")?);
            let time = r.u64("recent items")?;
            if !weight.is_finite() || weight < 0.0 {
                return Err(r.corrupt(format!(
                    "user {u}'s recent item {} has weight {weight}",
                    item.0
                )));
            }
            q.push_back(Recent { item, weight, time });
        }
        recent.push(q);
    }
    let mut content = Vec::new();
    let n_content = r.count(4, "live items' content")?;
    if n_content > n_items {
        return Err(r.corrupt(format!(
            "content of {n_content} live items for a model of {n_items} items"
        )));
    }
    for _ in 0..n_content {
        let width = r.u32("content widths")?;
        let width = r.fits(width.into(), 4, "content values")?;
        if width == 0 {
            content.push(None);
            continue;
        }
        let mut v = Vec::with_capacity(width);
        for _ in 0..width {
            v.push(f32::from_bits(r.u32("content values")?));
        }
        content.push(Some(v.into_boxed_slice()));
    }
    let n = r.count(1, "application bytes")?;
    let app_data = r.take(n, "application bytes")?.to_vec();
    if r.at != bytes.len() {
        return Err(r.corrupt("bytes after the application's"));
    }
    Ok(Meta {
        stamp,
        generation,
        through_seq,
        trained_at,
        n_users,
        n_items,
        events,
        hidden,
        recent,
        content,
        app_data,
    })
}

impl Refresher {
    /// Saves the state behind `live` (the model this refresher serves) to `dir`, as
    /// covering the journal up to `through_seq`: every journal event up to that seq must
    /// have gone through this refresher, and none after it (pass what
    /// [`crate::Journal::sync`] acknowledged, and save before
    /// [`crate::Journal::checkpoint`] drops the seqs of older events).
    ///
    /// The trainer and graph files are written once per installed model (a trainer
    /// checkpoint: 54 MB at Gowalla's size); every save rewrites the meta file with the
    /// events recorded since and each user's hidden and recent items. The same as
    /// [`Refresher::state`] then [`RefresherState::write`], which a service splits to
    /// hold its lock only for the capture.
    pub fn save(&self, dir: impl AsRef<Path>, live: &LiveModel, through_seq: u64) -> Result<()> {
        self.state(live, through_seq)?.write(dir)
    }

    /// Captures the state behind `live` as covering the journal up to `through_seq`
    /// (see [`Refresher::save`]): shares the trainer and graph and encodes the meta file,
    /// O(recorded events + users' hidden and recent items).
    pub fn state(&self, live: &LiveModel, through_seq: u64) -> Result<RefresherState> {
        self.state_with(live, through_seq, &[])
    }

    /// [`Refresher::state`] with `app_data` saved in the same meta file (so it changes
    /// atomically with the state; e.g. the ranker's external item ids), given back by
    /// [`Refresher::load`] as [`Restored::app_data`].
    pub fn state_with(
        &self,
        live: &LiveModel,
        through_seq: u64,
        app_data: &[u8],
    ) -> Result<RefresherState> {
        self.check_live(live)?;
        let mut out = Vec::with_capacity(META_HEADER + self.events.len() * EVENT_LEN + 4);
        out.extend_from_slice(META_MAGIC);
        put_u32(&mut out, FORMAT);
        for v in [
            self.stamp,
            self.generation,
            through_seq,
            live.trained_at(),
            live.n_users() as u64,
            live.n_items() as u64,
            self.events.len() as u64,
        ] {
            put_u64(&mut out, v);
        }
        for e in &self.events {
            encode_event(e, &mut out);
        }
        let (hidden, recent) = live.user_memory();
        for (h, q) in hidden.iter().zip(recent) {
            put_u32(&mut out, h.len() as u32);
            h.iter().for_each(|&i| put_u32(&mut out, i));
            put_u32(&mut out, q.len() as u32);
            for r in q {
                put_u32(&mut out, r.item.0);
                put_u32(&mut out, r.weight.to_bits());
                put_u64(&mut out, r.time);
            }
        }
        let live_items = self.graph.n_items()..live.n_items();
        put_u64(&mut out, live_items.len() as u64);
        for i in live_items {
            let c = live.item_content(ItemId(i as u32)).unwrap_or(&[]);
            put_u32(&mut out, c.len() as u32);
            c.iter().for_each(|&x| put_u32(&mut out, x.to_bits()));
        }
        put_u64(&mut out, app_data.len() as u64);
        out.extend_from_slice(app_data);
        Ok(RefresherState {
            training: Arc::clone(&self.training),
            graph: Arc::clone(&self.graph),
            stamp: self.stamp,
            meta: with_crc(out),
        })
    }

    /// Rebuilds the refresher and the live model saved in `dir` ([`Refresher::save`]),
    /// training on `selection`'s device, the live model configured by `config` and
    /// embedding items added live with content through `aggregator` (the one the served
    /// model had; needed when such items were saved); `None` when nothing was saved
    /// there.
    ///
    /// Then observe the journal's events after [`Restored::through_seq`] through the
    /// refresher, and serve. Damaged or mismatched files are an [`Error::Corrupt`].
    pub fn load(
        dir: impl AsRef<Path>,
        selection: &Selection,
        config: LiveConfig,
        aggregator: Option<ContentAggregator>,
    ) -> Result<Option<Restored>> {
        let dir = dir.as_ref();
        let meta_path = dir.join(META);
        if !meta_path.exists() {
            return Ok(None);
        }
        let meta = read_meta(&meta_path)?;
        let graph_file = graph_path(dir, meta.stamp);
        let graph = read_graph(&graph_file)?;
        let mut training = Training::resume(&graph, &trainer_path(dir, meta.stamp), selection)?;
        let mut live = LiveModel::new(training.model()?, &graph, config, meta.trained_at)?;
        match aggregator {
            Some(a) => live.set_aggregator(a)?,
            None if meta.content.iter().any(Option::is_some) => {
                return Err(Error::Config {
                    message: format!(
                        "{} saved live items have content: pass the content aggregator the served model had",
                        meta.content.iter().flatten().count()
                    ),
                });
            }
            None => {}
        }
        let mismatch = |message: String| Error::Corrupt {
            path: meta_path.clone(),
            offset: 0,
            message,
        };
        let content = ItemContent {
            first: graph.n_items(),
            content: meta.content,
        };
        if meta.n_items != content.end() {
            return Err(mismatch(format!(
                "{} items saved, but the graph has {} and {} live items follow",
                meta.n_items,
                content.first,
                content.content.len()
            )));
        }
        let content_of = |i: ItemId| content.get(i);
        for e in &meta.events {
            if e.item.index() >= meta.n_items {
                return Err(mismatch(format!(
                    "recorded event on item {} of a model with {} items",
                    e.item.0, meta.n_items
                )));
            }
            add_items_up_to(&mut live, e.item.index() + 1, content_of)?;
            live.observe(e.user, e.item, e.kind, e.timestamp)
                .map_err(|err| mismatch(format!("recorded event does not replay: {err}")))?;
        }
        add_items_up_to(&mut live, meta.n_items, content_of)?;
        if live.n_users() != meta.n_users || live.n_items() != meta.n_items {
            return Err(mismatch(format!(
                "the replayed model has {} users and {} items, the saved one had {} and {}",
                live.n_users(),
                live.n_items(),
                meta.n_users,
                meta.n_items
            )));
        }
        live.set_user_memory(meta.hidden, meta.recent)
            .map_err(|err| mismatch(err.to_string()))?;
        let refresher = Refresher {
            training: Arc::new(training),
            graph: Arc::new(graph),
            events: meta.events,
            generation: meta.generation,
            stamp: meta.stamp,
        };
        Ok(Some(Restored {
            refresher,
            live,
            through_seq: meta.through_seq,
            app_data: meta.app_data,
        }))
    }
}

/// Removes trainer and graph files (and their temp files) of other stamps from `dir`.
fn remove_unnamed(dir: &Path, stamp: u64) -> Result<()> {
    let keep = model_files(stamp);
    remove_files(dir, |name| {
        (name.starts_with("trainer-") || name.starts_with("graph-"))
            && !keep.iter().any(|k| k == name)
    })
}
