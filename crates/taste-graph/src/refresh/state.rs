//! A [`Refresher`]'s state on disk, so that a service restarted after a crash serves the
//! model it served, with every event it had folded in.
//!
//! A state directory holds (tantivy-style: immutable files, one small meta file swapped
//! atomically), each file named by a random id:
//!
//! - `trainer-<stamp>.ckpt`: the trainer ([`Training::save_checkpoint`]) and
//!   `graph-<stamp>.graph`: the graph it trained on, the events the refit kept outside
//!   it and when each trained user's interactions are dated; written once per installed
//!   model;
//! - `events-<id>.seg`: a segment of the stream of events the refresher observed, one per
//!   save (the events since the previous one); merged into one when there are more than
//!   [`MAX_SEGMENTS`]; dropped once neither the recorded events nor the memory copy
//!   needs them; in memory a segment shares the recorded events' blocks, so a capture or
//!   a merge moves at most a block's tail and the write makes the file;
//! - `memory-<id>.mem`: each user's hidden and recent items (what a training graph does
//!   not hold), copied a range of users at a time, each range as of one point of the
//!   stream (the events after it complete its users); taken again once the events after
//!   the copy take more bytes than the copy itself (so the copy costs O(1) amortised per
//!   event), [`Refresher::set_memory_step`] users per save (the first copy whole), the
//!   previous copy serving until the new one is complete; events an install folds out
//!   of the recorded events before a save reached them are carried to the next save, so
//!   the events after the copy stay complete;
//! - `content-<id>.cnt`: the content of items added live, one file per save that gives
//!   or replaces some (those since the previous save; later files override earlier
//!   ones), rewritten into one file with all of them after an install or when there
//!   would be more than [`MAX_CONTENT_FILES`];
//! - `REFRESHER`: which files are current, the install generation, the journal seq the
//!   state covers, when the training interactions are dated, where the recorded events
//!   and the memory copy start in the stream, and the application's bytes. Small;
//!   rewritten by every save (temp file, fsync, rename, directory fsync).
//!
//! So a save writes the events since the previous save and a small meta file (plus, now
//! and then, a model or a memory copy), not every user's state. A crash at any point
//! leaves the previous `REFRESHER` and the files it names whole; files no meta names are
//! removed by the next save.
//!
//! All files are little-endian, start with a magic and the format version (u32) and end
//! with the crc32 of everything before. Graph file (`MOSRFGR2`): users, items, edges,
//! kept events, user times (u64 each), each user's degree (u32), the items of every
//! user in user order (u32), the kept events (24 bytes each, the event log's encoding),
//! the time each trained user's interactions are dated at (u64 each). Segment
//! (`MOSRFEV1`): id, index of its first event in the stream, event count (u64 each), the
//! events. Memory copy (`MOSRFMB1`): id, stream index of its first range, users, range
//! count (u64 each); per range its first user and stream index (u64 each, the first
//! range at user 0, users increasing, indices non-decreasing); per user: hidden count
//! (u32), hidden items (u32), recent count (u32), recent entries (item u32, weight f32,
//! time u64). Content (`MOSRFCN1`): id, the model's stamp, record count (u64 each); per
//! record: item (u32), width (u32), values (f32 each). Meta (`MOSRFSH2`): stamp,
//! generation, seq, trained-at time, the live model's users and items, kept events,
//! stream index of the first recorded event after the kept ones, events observed, memory
//! copy id and index, segment count (u64 each); per segment id, first index, count (u64
//! each); content file count (u64), per file id and record count (u64 each); the
//! application's bytes (length u64, then the bytes). Format version 3 (version 2 kept
//! live items' content in the meta file; its states are refused, as any other version).

use std::collections::VecDeque;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use super::{ItemContent, Refresher, SharedEvents, add_items_up_to};
use crate::checkpoint::{crc_trailer_holds, with_crc, write_atomic, write_atomic_parts};
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
const META_MAGIC: &[u8; 8] = b"MOSRFSH2";
const GRAPH_MAGIC: &[u8; 8] = b"MOSRFGR2";
const SEGMENT_MAGIC: &[u8; 8] = b"MOSRFEV1";
const MEMORY_MAGIC: &[u8; 8] = b"MOSRFMB1";
const CONTENT_MAGIC: &[u8; 8] = b"MOSRFCN1";
const FORMAT: u32 = 3;
/// Magic and version.
const PREFIX: usize = 8 + 4;
/// Meta header: twelve u64 (the last: the segment count).
const META_HEADER: usize = PREFIX + 12 * 8;
const GRAPH_HEADER: usize = PREFIX + 5 * 8;
const SEGMENT_HEADER: usize = PREFIX + 3 * 8;
const MEMORY_HEADER: usize = PREFIX + 4 * 8;
const CONTENT_HEADER: usize = PREFIX + 3 * 8;
/// More segments than this are merged into one by the next save.
const MAX_SEGMENTS: usize = 16;
/// More content files than this are rewritten into one by the next save that adds one.
const MAX_CONTENT_FILES: usize = 16;

/// What the saves so far captured: the segments of the stream of observed events still
/// needed and the users' memory copy. Kept by the refresher behind a mutex, so that a
/// save captures under a service's read lock; nothing is kept for a refresher that never
/// saves.
#[derive(Debug)]
pub(super) struct SaveLog {
    /// Events observed before this stream index are in `segments` (those still needed).
    saved: u64,
    segments: Vec<Segment>,
    /// The stream's events from `saved` on that an install folded before a capture
    /// reached them (they left the recorded events); the next capture seals them.
    carried: SharedEvents,
    memory: Option<MemoryCopy>,
    /// The next memory copy, while it is taken a range of users per capture.
    building: Option<MemoryBuild>,
    content: ContentLog,
}

/// The live items' content as the saves wrote it for the current model: the files since
/// its install (or the last rewrite), later ones overriding earlier ones, and how many
/// of the live model's content changes they cover.
#[derive(Debug, Default)]
struct ContentLog {
    /// The model (install stamp) the files belong to.
    stamp: u64,
    files: Vec<ContentFile>,
    seen: usize,
}

/// The content of some live items, one file: (item, features), shared with the live
/// model.
#[derive(Debug, Clone)]
struct ContentFile {
    id: u64,
    records: Arc<[(u32, Arc<[f32]>)]>,
}

impl ContentLog {
    /// Adds a file with the content of the live items (from `first` on) of `live`, the
    /// model of install `stamp`, given or replaced since the previous capture, if there
    /// are any: O(changes), pointers copied (the write outside the lock encodes them).
    /// After an install, or when a file would be the one past [`MAX_CONTENT_FILES`], the
    /// file holds all of them instead (O(live items)) and replaces the others.
    fn capture(&mut self, stamp: u64, first: usize, live: &LiveModel) {
        let changes = live.content_changes();
        let fresh = self.stamp != stamp || self.seen > changes.len();
        let mut items: Vec<u32> = Vec::new();
        if !fresh {
            items.extend_from_slice(&changes[self.seen..]);
            items.sort_unstable();
            items.dedup();
        }
        if fresh || (!items.is_empty() && self.files.len() >= MAX_CONTENT_FILES) {
            self.stamp = stamp;
            self.files.clear();
            items = (first..live.n_items()).map(|i| i as u32).collect();
        }
        self.seen = changes.len();
        let records: Arc<[(u32, Arc<[f32]>)]> = items
            .into_iter()
            .filter_map(|i| {
                live.shared_item_content(ItemId(i))
                    .map(|c| (i, Arc::clone(c)))
            })
            .collect();
        if !records.is_empty() {
            self.files.push(ContentFile {
                id: fresh_stamp(),
                records,
            });
        }
    }
}

/// Consecutive events of the stream, from index `first`: one file on disk; in memory
/// blocks shared with the recorded events and the other segments, so that a capture or
/// a merge under the caller's lock moves no more than a block's tail (the write, outside
/// it, makes the file).
#[derive(Debug, Clone)]
struct Segment {
    id: u64,
    first: u64,
    events: SharedEvents,
}

impl Segment {
    fn len(&self) -> u64 {
        self.events.len() as u64
    }

    fn end(&self) -> u64 {
        self.first + self.len()
    }
}

/// A memory copy file's parts (head, users' records, crc), shared until written.
type MemoryFile = Arc<Vec<Vec<u8>>>;

/// Users' hidden and recent items, copied a range of users at a time: from stream index
/// `at` (its first range's) on, the events after each user's range was copied complete
/// it.
#[derive(Debug)]
struct MemoryCopy {
    id: u64,
    at: u64,
    /// Size of its file.
    bytes: u64,
    /// The file's parts until a write reports it on disk.
    encoded: Option<MemoryFile>,
    written: Arc<AtomicBool>,
}

/// A memory copy being taken over several captures (at most `step` users each, so that
/// no capture holds the caller's lock for O(users)).
#[derive(Debug)]
struct MemoryBuild {
    id: u64,
    /// Each range's first user and the stream index it was copied at (non-decreasing).
    ranges: Vec<[u64; 2]>,
    /// Each range's users, encoded.
    parts: Vec<Vec<u8>>,
    /// Users copied so far.
    users: usize,
}

impl MemoryBuild {
    fn new() -> Self {
        MemoryBuild {
            id: fresh_stamp(),
            ranges: Vec::new(),
            parts: Vec::new(),
            users: 0,
        }
    }

    /// The stream index the copy starts at (its first range's).
    fn at(&self) -> Option<u64> {
        self.ranges.first().map(|r| r[1])
    }

    /// Copies up to `step` more of `live`'s users, as of stream index `at`; whether every
    /// user is now copied (users added later have nothing before their first event).
    fn step(&mut self, live: &LiveModel, at: u64, step: usize) -> bool {
        let to = live.n_users().min(self.users.saturating_add(step.max(1)));
        if to > self.users || self.ranges.is_empty() {
            self.ranges.push([self.users as u64, at]);
            self.parts.push(encode_users(live, self.users..to));
            self.users = to;
        }
        self.users >= live.n_users()
    }

    /// The finished copy: its file is a head (id, first index, users, the ranges), the
    /// parts, and the crc32 of both.
    fn finish(self) -> MemoryCopy {
        let at = self.at().unwrap_or(0);
        let header = [self.id, at, self.users as u64];
        let mut head = start_file(MEMORY_MAGIC, &header, 8 + 16 * self.ranges.len());
        put_u64(&mut head, self.ranges.len() as u64);
        for r in &self.ranges {
            put_u64(&mut head, r[0]);
            put_u64(&mut head, r[1]);
        }
        let mut crc = crc32fast::Hasher::new();
        crc.update(&head);
        self.parts.iter().for_each(|p| crc.update(p));
        let mut parts = Vec::with_capacity(self.parts.len() + 2);
        parts.push(head);
        parts.extend(self.parts);
        parts.push(crc.finalize().to_le_bytes().to_vec());
        MemoryCopy {
            id: self.id,
            at,
            bytes: parts.iter().map(|p| p.len() as u64).sum(),
            encoded: Some(Arc::new(parts)),
            written: Arc::new(AtomicBool::new(false)),
        }
    }
}

impl SaveLog {
    pub(super) fn new() -> Self {
        SaveLog {
            saved: 0,
            segments: Vec::new(),
            carried: SharedEvents::default(),
            memory: None,
            building: None,
            content: ContentLog::default(),
        }
    }

    /// Called by an install that folds `recorded`'s events `kept..cut` (the stream's
    /// events from index `cut_at` on) out of the recorded events: keeps those no capture
    /// has reached, so that the memory copy stays usable (nothing is kept before the first
    /// save). Shares their blocks: O(blocks).
    pub(super) fn carry(&mut self, cut_at: u64, recorded: &SharedEvents, kept: usize, cut: usize) {
        let held = self.saved + self.carried.len() as u64;
        if self.memory.is_none() || held < cut_at {
            return;
        }
        let from = kept + (held - cut_at) as usize;
        if from < cut {
            self.carried.append(&recorded.slice(from, cut));
        }
    }

    /// Captures the events observed since the last capture as a new segment: those an
    /// install carried, then the rest from the stream's events from index `cut_at` on,
    /// `recorded`'s events after the first `kept`. When events before
    /// `cut_at` are neither saved nor carried (an install before the first save), the
    /// memory copy, which would need them, is dropped (the capture takes a new one; its
    /// bytes, if still held, are returned to be freed outside the caller's lock) and the
    /// segments start again at `cut_at`.
    fn seal(&mut self, cut_at: u64, recorded: &SharedEvents, kept: usize) -> Option<MemoryFile> {
        let mut released = None;
        if self.saved + (self.carried.len() as u64) < cut_at {
            self.segments.clear();
            self.carried = SharedEvents::default();
            released = self.memory.take().and_then(|m| m.encoded);
            self.building = None;
            self.saved = cut_at;
        }
        let held = self.saved + self.carried.len() as u64;
        let stream = recorded.len() - kept;
        let from = ((held - cut_at) as usize).min(stream);
        if !self.carried.is_empty() || from < stream {
            let mut events = std::mem::take(&mut self.carried);
            events.append(&recorded.suffix(kept + from));
            let first = self.saved;
            self.saved += events.len() as u64;
            self.segments.push(Segment {
                id: fresh_stamp(),
                first,
                events,
            });
        }
        released
    }

    /// Drops the segments that end at or before `from`, then merges the rest into one
    /// when there are more than [`MAX_SEGMENTS`]: O(blocks), the merged file is made by
    /// the next write.
    fn trim(&mut self, from: u64) {
        self.segments.retain(|s| s.end() > from);
        if self.segments.len() > MAX_SEGMENTS {
            // The merged segment starts at `from`: the events before it are not needed
            // (were they kept, a merge every 17 saves would carry them on for good).
            let start = self.segments[0].first;
            let first = start.max(from);
            let mut events = SharedEvents::default();
            self.segments.iter().for_each(|s| events.append(&s.events));
            self.segments = vec![Segment {
                id: fresh_stamp(),
                first,
                events: events.suffix((first - start) as usize),
            }];
        }
    }
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
    /// The journal seq the state covers: observe the journal's events after it
    /// ([`crate::Recovery::events_after`]) through the refresher.
    pub through_seq: u64,
    /// The application's bytes saved with the state ([`Refresher::state_with`]).
    pub app_data: Vec<u8>,
}

/// A refresher's state captured for writing ([`Refresher::state`]): the current model's
/// trainer, graph and kept events, the event segments, content files and memory copy the
/// meta names (all shared, not copied) and the encoded meta file. Capture it under the
/// service's lock, write it outside.
#[derive(Debug, Clone)]
pub struct RefresherState {
    training: Arc<Training>,
    graph: Arc<BipartiteGraph>,
    kept: Arc<[Interaction]>,
    user_times: Arc<[u64]>,
    stamp: u64,
    segments: Vec<Segment>,
    content: Vec<ContentFile>,
    memory_id: u64,
    /// The memory copy's bytes, if no write has reported it on disk yet.
    memory: Option<(MemoryFile, Arc<AtomicBool>)>,
    /// Older copies' bytes the refresher let go of, freed when this state is dropped.
    _released: Vec<MemoryFile>,
    meta: Vec<u8>,
}

impl RefresherState {
    /// Writes the state to `dir`: the model's files, the memory copy, each event segment
    /// and each content file unless an earlier write left them there, then the meta file,
    /// each atomically; then removes the files the meta does not name. A crash at any point
    /// leaves the previous write whole. One writer per directory at a time, writing
    /// states in the order they were captured.
    pub fn write(&self, dir: impl AsRef<Path>) -> Result<()> {
        let dir = dir.as_ref();
        fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let graph = graph_path(dir, self.stamp);
        if !graph.exists() {
            write_graph(&graph, &self.graph, &self.kept, &self.user_times)?;
        }
        let trainer = trainer_path(dir, self.stamp);
        if !trainer.exists() {
            self.training.save_checkpoint(&trainer, &self.graph)?;
        }
        let memory = dir.join(memory_name(self.memory_id));
        match &self.memory {
            Some((bytes, written)) => {
                if !memory.exists() {
                    let parts: Vec<&[u8]> = bytes.iter().map(Vec::as_slice).collect();
                    write_atomic_parts(&memory, &parts)?;
                }
                written.store(true, Ordering::Release);
            }
            None if !memory.exists() => {
                return Err(Error::Config {
                    message: format!(
                        "{} is not there and the refresher no longer holds it (it went to another directory): save a refresher to one state directory",
                        memory.display()
                    ),
                });
            }
            None => {}
        }
        for s in &self.segments {
            let path = dir.join(segment_name(s.id));
            if !path.exists() {
                write_segment(&path, s)?;
            }
        }
        for c in &self.content {
            let path = dir.join(content_name(c.id));
            if !path.exists() {
                write_content(&path, c, self.stamp)?;
            }
        }
        write_atomic(&dir.join(META), &self.meta)?;
        let mut keep: Vec<String> = model_files(self.stamp).into();
        keep.push(memory_name(self.memory_id));
        keep.extend(self.segments.iter().map(|s| segment_name(s.id)));
        keep.extend(self.content.iter().map(|c| content_name(c.id)));
        remove_files(dir, |name| {
            ["trainer-", "graph-", "events-", "memory-", "content-"]
                .iter()
                .any(|p| name.starts_with(p))
                && !keep.iter().any(|k| k == name)
        })
    }

    /// Bytes of the meta file (the part every save rewrites).
    pub fn meta_bytes(&self) -> usize {
        self.meta.len()
    }

    /// Events in the segments the meta names (each written once, by the first write
    /// that needs it).
    pub fn segment_events(&self) -> usize {
        self.segments.iter().map(|s| s.events.len()).sum()
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

fn segment_name(id: u64) -> String {
    format!("events-{id:016x}.seg")
}

fn memory_name(id: u64) -> String {
    format!("memory-{id:016x}.mem")
}

fn content_name(id: u64) -> String {
    format!("content-{id:016x}.cnt")
}

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

/// A file's magic, format version and `header` u64 values.
fn start_file(magic: &[u8; 8], header: &[u64], capacity: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(PREFIX + 8 * header.len() + capacity + 4);
    out.extend_from_slice(magic);
    put_u32(&mut out, FORMAT);
    header.iter().for_each(|&v| put_u64(&mut out, v));
    out
}

/// Reads little-endian values from a verified file body; running short is corruption.
struct Cursor<'a> {
    path: &'a Path,
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    /// The body of a verified file, after its magic and version.
    fn after_prefix(path: &'a Path, bytes: &'a [u8]) -> Self {
        Cursor {
            path,
            bytes,
            at: PREFIX,
        }
    }
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
    /// A u64 that must fit a usize.
    fn usize(&mut self, what: &str) -> Result<usize> {
        let n = self.u64(what)?;
        usize::try_from(n).map_err(|_| self.corrupt(format!("{what} {n} overflows")))
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
    /// `n` events in the event log's encoding (which must fit in what is left).
    fn events(&mut self, n: u64, what: &str) -> Result<Vec<Interaction>> {
        let n = self.fits(n, EVENT_LEN, what)?;
        let mut events = Vec::with_capacity(n);
        for _ in 0..n {
            let b = self.take(EVENT_LEN, what)?;
            events.push(decode_event(b).map_err(|m| self.corrupt(format!("{what}: {m}")))?);
        }
        Ok(events)
    }
    /// Every byte was read.
    fn end(&self, after: &str) -> Result<()> {
        if self.at != self.bytes.len() {
            return Err(self.corrupt(format!("bytes after {after}")));
        }
        Ok(())
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

fn write_graph(
    path: &Path,
    graph: &BipartiteGraph,
    kept: &[Interaction],
    user_times: &[u64],
) -> Result<()> {
    let header = [
        graph.n_users(),
        graph.n_items(),
        graph.n_edges(),
        kept.len(),
        user_times.len(),
    ]
    .map(|v| v as u64);
    let size =
        4 * (graph.n_users() + graph.n_edges()) + EVENT_LEN * kept.len() + 8 * user_times.len();
    let mut out = start_file(GRAPH_MAGIC, &header, size);
    let users = (0..graph.n_users()).map(|u| graph.items_of(UserId(u as u32)));
    for items in users.clone() {
        put_u32(&mut out, items.len() as u32);
    }
    for items in users {
        items.iter().for_each(|&i| put_u32(&mut out, i));
    }
    kept.iter().for_each(|e| encode_event(e, &mut out));
    user_times.iter().for_each(|&t| put_u64(&mut out, t));
    write_atomic(path, &with_crc(out))
}

/// What a graph file holds.
struct ModelGraph {
    graph: BipartiteGraph,
    kept: Vec<Interaction>,
    user_times: Vec<u64>,
}

/// The graph, kept events and users' times of a graph file, for a trainer checkpoint of
/// `trainer_bytes` (which bounds the user and item counts before anything is allocated).
fn read_graph(path: &Path, trainer_bytes: u64) -> Result<ModelGraph> {
    let bytes = read_verified(path, GRAPH_MAGIC, GRAPH_HEADER, "refresher graph file")?;
    let mut r = Cursor::after_prefix(path, &bytes);
    let n_users = r.u64("the user count")?;
    let n_items = r.u64("the item count")?;
    let n_edges = r.u64("the edge count")?;
    let n_kept = r.u64("the kept event count")?;
    let n_times = r.u64("the user time count")?;
    let n_users = r.fits(n_users, 4, "user degrees")?;
    let n_edges = r.fits(n_edges, 4, "edges")?;
    // The trainer holds at least one f32 per user and item: a larger count (a crafted
    // file) is refused before the graph's tables are allocated for it.
    let most = trainer_bytes / 4;
    if n_users as u64 > most || n_items > most {
        return Err(r.corrupt(format!(
            "{n_users} users and {n_items} items, more than a trainer checkpoint of {trainer_bytes} bytes holds"
        )));
    }
    let n_items = n_items as usize;
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
    let kept = r.events(n_kept, "kept events")?;
    if n_times > n_users as u64 {
        return Err(r.corrupt(format!("times of {n_times} users in a graph of {n_users}")));
    }
    let mut user_times = Vec::with_capacity(n_times as usize);
    for _ in 0..n_times {
        user_times.push(r.u64("user times")?);
    }
    r.end("the last user time")?;
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
    Ok(ModelGraph {
        graph,
        kept,
        user_times,
    })
}

fn write_segment(path: &Path, s: &Segment) -> Result<()> {
    let header = [s.id, s.first, s.len()];
    let mut out = start_file(SEGMENT_MAGIC, &header, EVENT_LEN * s.events.len());
    s.events.iter().for_each(|e| encode_event(e, &mut out));
    write_atomic(path, &with_crc(out))
}

/// The segment `id` of the meta, which says it starts at `first` and holds `count`.
fn read_segment(dir: &Path, id: u64, first: u64, count: u64) -> Result<Segment> {
    let path = dir.join(segment_name(id));
    let bytes = read_verified(&path, SEGMENT_MAGIC, SEGMENT_HEADER, "event segment")?;
    let mut r = Cursor::after_prefix(&path, &bytes);
    let header = [
        r.u64("the id")?,
        r.u64("the first index")?,
        r.u64("the count")?,
    ];
    if header != [id, first, count] {
        return Err(r.corrupt(format!(
            "segment (id {:x}, first {}, {} events) is not the one the meta names (id {id:x}, first {first}, {count} events)",
            header[0], header[1], header[2]
        )));
    }
    let events = r.events(count, "events")?;
    r.end("the last event")?;
    Ok(Segment {
        id,
        first,
        events: events.into(),
    })
}

fn write_content(path: &Path, c: &ContentFile, stamp: u64) -> Result<()> {
    let header = [c.id, stamp, c.records.len() as u64];
    let size: usize = c.records.iter().map(|(_, v)| 8 + 4 * v.len()).sum();
    let mut out = start_file(CONTENT_MAGIC, &header, size);
    for (item, v) in c.records.iter() {
        put_u32(&mut out, *item);
        put_u32(&mut out, v.len() as u32);
        v.iter().for_each(|&x| put_u32(&mut out, x.to_bits()));
    }
    write_atomic(path, &with_crc(out))
}

/// The content file `id` of the meta (of model `stamp`), which says it holds `count`
/// records, each of a live item in `items`.
fn read_content(
    dir: &Path,
    [id, count]: [u64; 2],
    stamp: u64,
    items: std::ops::Range<usize>,
) -> Result<ContentFile> {
    let path = dir.join(content_name(id));
    let bytes = read_verified(&path, CONTENT_MAGIC, CONTENT_HEADER, "content file")?;
    let mut r = Cursor::after_prefix(&path, &bytes);
    let header = [r.u64("the id")?, r.u64("the stamp")?, r.u64("the count")?];
    if header != [id, stamp, count] {
        return Err(r.corrupt(format!(
            "content file (id {:x}, model {:x}, {} items) is not the one the meta names (id {id:x}, model {stamp:x}, {count} items)",
            header[0], header[1], header[2]
        )));
    }
    let count = r.fits(count, 8, "content records")?;
    let mut records = Vec::with_capacity(count);
    for _ in 0..count {
        let item = r.u32("an item")?;
        if !items.contains(&(item as usize)) {
            return Err(r.corrupt(format!(
                "content of item {item}, not one of the live items {items:?}"
            )));
        }
        let width = r.u32("a content width")?;
        let width = r.fits(width.into(), 4, "content values")?;
        let v: Arc<[f32]> = (0..width)
            .map(|_| r.u32("content values").map(f32::from_bits))
            .collect::<Result<_>>()?;
        records.push((item, v));
    }
    r.end("the last record")?;
    Ok(ContentFile {
        id,
        records: records.into(),
    })
}

/// Encodes the hidden and recent items of `live`'s `users` (a memory copy's records).
fn encode_users(live: &LiveModel, users: std::ops::Range<usize>) -> Vec<u8> {
    let (hidden, recent) = live.user_memory();
    let (hidden, recent) = (&hidden[users.clone()], &recent[users]);
    let size: usize = hidden
        .iter()
        .zip(recent)
        .map(|(h, q)| 8 + 4 * h.len() + 16 * q.len())
        .sum();
    let mut out = Vec::with_capacity(size);
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
    out
}

/// Users' hidden and recent items.
type Memory = (Vec<Vec<u32>>, Vec<VecDeque<Recent>>);

/// A memory copy read back: users' hidden and recent items, each range's first user and
/// stream index, and the size of its file.
struct ReadMemory {
    memory: Memory,
    ranges: Vec<[u64; 2]>,
    bytes: u64,
}

/// The stream index at which a memory copy with these `ranges` (first user, index; at
/// least one) copied `user`: its events from there on come after the copy (users past
/// the copy: the last range's).
fn copied_at(ranges: &[[u64; 2]], user: UserId) -> u64 {
    let k = ranges.partition_point(|r| r[0] <= user.0 as u64);
    ranges.get(k.saturating_sub(1)).map_or(0, |r| r[1])
}

/// The memory copy `id` starting at stream index `at`, with no range past `observed`.
fn read_memory(dir: &Path, id: u64, at: u64, observed: u64) -> Result<ReadMemory> {
    let path = dir.join(memory_name(id));
    let bytes = read_verified(&path, MEMORY_MAGIC, MEMORY_HEADER, "memory copy")?;
    let mut r = Cursor::after_prefix(&path, &bytes);
    let (file_id, file_at) = (r.u64("the id")?, r.u64("the stream index")?);
    if (file_id, file_at) != (id, at) {
        return Err(r.corrupt(format!(
            "memory copy (id {file_id:x}, at {file_at}) is not the one the meta names (id {id:x}, at {at})"
        )));
    }
    let n_users = r.u64("users")?;
    let n_ranges = r.count(16, "user ranges")?;
    let mut ranges: Vec<[u64; 2]> = Vec::with_capacity(n_ranges);
    for _ in 0..n_ranges {
        let range = [r.u64("user ranges")?, r.u64("user ranges")?];
        let follows = match ranges.last() {
            None => range == [0, at],
            Some(prev) => range[0] > prev[0] && range[0] < n_users && range[1] >= prev[1],
        };
        if !follows || range[1] > observed {
            return Err(r.corrupt(format!(
                "user range {range:?} does not follow {:?} (copy at {at} of {n_users} users, {observed} events observed)",
                ranges.last()
            )));
        }
        ranges.push(range);
    }
    if ranges.is_empty() {
        return Err(r.corrupt("a memory copy with no user range"));
    }
    let n_users = r.fits(n_users, 8, "users")?;
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
    r.end("the last user")?;
    Ok(ReadMemory {
        memory: (hidden, recent),
        ranges,
        bytes: bytes.len() as u64 + 4,
    })
}

/// What the meta file holds besides the files it names.
struct Meta {
    stamp: u64,
    generation: u64,
    through_seq: u64,
    trained_at: u64,
    n_users: usize,
    n_items: usize,
    kept: u64,
    cut_at: u64,
    observed: u64,
    memory_id: u64,
    memory_at: u64,
    /// Each segment's id, first index and event count.
    segments: Vec<[u64; 3]>,
    /// Each content file's id and record count.
    content: Vec<[u64; 2]>,
    app_data: Vec<u8>,
}

fn read_meta(path: &Path) -> Result<Meta> {
    let bytes = read_verified(path, META_MAGIC, META_HEADER, "refresher state file")?;
    let mut r = Cursor::after_prefix(path, &bytes);
    let mut meta = Meta {
        stamp: r.u64("the stamp")?,
        generation: r.u64("the generation")?,
        through_seq: r.u64("the seq")?,
        trained_at: r.u64("the trained-at time")?,
        n_users: r.usize("the user count")?,
        n_items: r.usize("the item count")?,
        kept: r.u64("the kept event count")?,
        cut_at: r.u64("the cut index")?,
        observed: r.u64("the observed count")?,
        memory_id: r.u64("the memory copy id")?,
        memory_at: r.u64("the memory copy index")?,
        segments: Vec::new(),
        content: Vec::new(),
        app_data: Vec::new(),
    };
    let n_items = meta.n_items;
    let n_segments = r.count(24, "segments")?;
    for _ in 0..n_segments {
        let segment = [r.u64("segments")?, r.u64("segments")?, r.u64("segments")?];
        meta.segments.push(segment);
    }
    let n_content = r.count(16, "content files")?;
    for _ in 0..n_content {
        let file = [r.u64("content files")?, r.u64("content files")?];
        if file[1] > n_items as u64 {
            return Err(r.corrupt(format!(
                "a content file of {} items for a model of {n_items} items",
                file[1]
            )));
        }
        meta.content.push(file);
    }
    let n = r.count(1, "application bytes")?;
    meta.app_data = r.take(n, "application bytes")?.to_vec();
    r.end("the application's")?;
    Ok(meta)
}

/// The stream from `from` to the meta's observed count, from the segments it names
/// (which must be contiguous and cover it).
fn read_stream(dir: &Path, meta_path: &Path, meta: &Meta, from: u64) -> Result<Vec<Segment>> {
    let corrupt = |message: String| Error::Corrupt {
        path: meta_path.to_path_buf(),
        offset: 0,
        message,
    };
    let mut at = meta.segments.first().map_or(meta.observed, |s| s[1]);
    if at > from {
        return Err(corrupt(format!(
            "the segments start at event {at}, the state needs them from {from}"
        )));
    }
    let mut segments = Vec::with_capacity(meta.segments.len());
    for &[id, first, count] in &meta.segments {
        if first != at {
            return Err(corrupt(format!(
                "segment {id:x} starts at event {first}, the previous ends at {at}"
            )));
        }
        let s = read_segment(dir, id, first, count)?;
        at = s.end();
        segments.push(s);
    }
    if at != meta.observed {
        return Err(corrupt(format!(
            "the segments end at event {at}, {} were observed",
            meta.observed
        )));
    }
    Ok(segments)
}

impl Refresher {
    /// Whether `dir` holds a saved state ([`RefresherState::write`]).
    pub fn has_saved_state(dir: impl AsRef<Path>) -> bool {
        dir.as_ref().join(META).exists()
    }

    /// Saves the state behind `live` (the model this refresher serves) to `dir`, as
    /// covering the journal up to `through_seq`: every journal event up to that seq must
    /// have gone through this refresher, and none after it (pass what
    /// [`crate::Journal::sync`] acknowledged, and save before
    /// [`crate::Journal::checkpoint`] drops the seqs of older events).
    ///
    /// A save writes the events observed since the previous save and a small meta file;
    /// the trainer and graph once per installed model (a trainer checkpoint: 54 MB at
    /// Gowalla's size); every user's hidden and recent items once the events since their
    /// last copy outweigh it. The same as [`Refresher::state`] then
    /// [`RefresherState::write`], which a service splits to hold its lock only for the
    /// capture. Save each state directory from one refresher.
    pub fn save(&self, dir: impl AsRef<Path>, live: &LiveModel, through_seq: u64) -> Result<()> {
        self.state(live, through_seq)?.write(dir)
    }

    /// Captures the state behind `live` as covering the journal up to `through_seq`
    /// (see [`Refresher::save`]): shares the trainer, graph and events (segments sharing
    /// the recorded events' blocks) and encodes the meta file, O(blocks of events held +
    /// items added live since the install) plus at most a block's tail (4096 events)
    /// copied, and, while it retakes the memory copy, the hidden and recent items of at
    /// most [`Refresher::set_memory_step`] users (all of them for the first copy).
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
        let mut log = self.saves.lock().unwrap_or_else(PoisonError::into_inner);
        let dropped = log.seal(self.cut_at, &self.events, self.kept.len());
        let observed = log.saved;
        // The first memory copy is taken whole; the next one once the events since the
        // last outweigh it, `memory_step` users per capture, the last copy serving until
        // it is complete.
        let mut replaced = None;
        let mut copy = match log.memory.take() {
            Some(m) => {
                let due = (observed - m.at).saturating_mul(EVENT_LEN as u64) > m.bytes;
                if due && log.building.is_none() {
                    log.building = Some(MemoryBuild::new());
                }
                m
            }
            None => {
                let mut b = MemoryBuild::new();
                b.step(live, observed, usize::MAX);
                b.finish()
            }
        };
        if let Some(mut b) = log.building.take() {
            if b.step(live, observed, self.memory_step) {
                replaced = std::mem::replace(&mut copy, b.finish()).encoded;
            } else {
                log.building = Some(b);
            }
        }
        // A copy on disk is no longer held; its bytes (and a dropped or replaced copy's)
        // are freed with the state, outside the caller's lock (megabytes at Gowalla's
        // size).
        let released = if copy.written.load(Ordering::Acquire) {
            copy.encoded.take()
        } else {
            None
        };
        let released = [released, dropped, replaced]
            .into_iter()
            .flatten()
            .collect();
        let (memory_id, memory_at) = (copy.id, copy.at);
        let memory = copy
            .encoded
            .as_ref()
            .map(|e| (Arc::clone(e), Arc::clone(&copy.written)));
        log.memory = Some(copy);
        // Events from the oldest of the install's cut, the copy and the copy being taken.
        let building_at = log.building.as_ref().and_then(MemoryBuild::at);
        let from = self
            .cut_at
            .min(memory_at)
            .min(building_at.unwrap_or(u64::MAX));
        log.trim(from);
        let segments = log.segments.clone();
        log.content.capture(self.stamp, self.graph.n_items(), live);
        let content = log.content.files.clone();
        drop(log);

        let header = [
            self.stamp,
            self.generation,
            through_seq,
            live.trained_at(),
            live.n_users() as u64,
            live.n_items() as u64,
            self.kept.len() as u64,
            self.cut_at,
            observed,
            memory_id,
            memory_at,
            segments.len() as u64,
        ];
        let size = 24 * segments.len() + 8 + 16 * content.len() + 8 + app_data.len();
        let mut out = start_file(META_MAGIC, &header, size);
        for s in &segments {
            [s.id, s.first, s.len()]
                .iter()
                .for_each(|&v| put_u64(&mut out, v));
        }
        put_u64(&mut out, content.len() as u64);
        for c in &content {
            put_u64(&mut out, c.id);
            put_u64(&mut out, c.records.len() as u64);
        }
        put_u64(&mut out, app_data.len() as u64);
        out.extend_from_slice(app_data);
        Ok(RefresherState {
            training: Arc::clone(&self.training),
            graph: Arc::clone(&self.graph),
            kept: Arc::clone(&self.kept),
            user_times: Arc::clone(&self.user_times),
            stamp: self.stamp,
            segments,
            content,
            memory_id,
            memory,
            _released: released,
            meta: with_crc(out),
        })
    }

    /// Rebuilds the refresher and the live model saved in `dir` ([`Refresher::save`]),
    /// training on `selection`'s device, the live model configured by `config` (users'
    /// recent items are replayed with its length and kind weights) and embedding items
    /// added live with content through `aggregator` (the one the served model had; needed
    /// when such items were saved); `None` when nothing was saved there.
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
        let mismatch = |message: String| Error::Corrupt {
            path: meta_path.clone(),
            offset: 0,
            message,
        };
        if meta.cut_at > meta.observed || meta.memory_at > meta.observed {
            return Err(mismatch(format!(
                "recorded events from {} and a memory copy at {}, past the {} events observed",
                meta.cut_at, meta.memory_at, meta.observed
            )));
        }
        let trainer = trainer_path(dir, meta.stamp);
        let trainer_bytes = fs::metadata(&trainer)
            .map_err(|e| Error::io(&trainer, e))?
            .len();
        let ModelGraph {
            graph,
            kept,
            user_times,
        } = read_graph(&graph_path(dir, meta.stamp), trainer_bytes)?;
        if kept.len() as u64 != meta.kept {
            return Err(mismatch(format!(
                "{} kept events saved with the model, {} expected",
                kept.len(),
                meta.kept
            )));
        }
        let from = meta.cut_at.min(meta.memory_at);
        let segments = read_stream(dir, &meta_path, &meta, from)?;
        let first = segments.first().map_or(meta.observed, |s| s.first);
        let stream: Vec<Interaction> = segments
            .iter()
            .flat_map(|s| s.events.iter().copied())
            .collect();
        let events: Vec<Interaction> = kept
            .iter()
            .chain(&stream[(meta.cut_at - first) as usize..])
            .copied()
            .collect();
        let ReadMemory {
            memory: (mut hidden, mut recent),
            ranges,
            bytes: memory_bytes,
        } = read_memory(dir, meta.memory_id, meta.memory_at, meta.observed)?;

        let live_items = graph.n_items()..meta.n_items;
        if meta.n_items < graph.n_items() {
            return Err(mismatch(format!(
                "{} items saved, fewer than the graph's {}",
                meta.n_items,
                graph.n_items()
            )));
        }
        // Live items' content: the files in order, later records overriding earlier ones.
        let content_files = meta
            .content
            .iter()
            .map(|&file| read_content(dir, file, meta.stamp, live_items.clone()))
            .collect::<Result<Vec<_>>>()?;
        // Each live item came with an event or with content: more is a crafted count.
        let records: usize = content_files.iter().map(|f| f.records.len()).sum();
        if live_items.len() > records + events.len() {
            return Err(mismatch(format!(
                "{} live items saved, with only {records} content records and {} events",
                live_items.len(),
                events.len()
            )));
        }
        let mut content = ItemContent {
            first: live_items.start,
            content: vec![None; live_items.len()],
        };
        for f in &content_files {
            for (item, v) in f.records.iter() {
                content.content[*item as usize - live_items.start] = Some(Arc::clone(v));
            }
        }
        let mut training = Training::resume(&graph, &trainer, selection)?;
        let mut live = LiveModel::new(training.model()?, &graph, config, meta.trained_at)?;
        live.date_users(&user_times);
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
        for e in &events {
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
        // Users' memory: the copy (users added since have none), then the events after
        // the copy of each user's range.
        if hidden.len() > meta.n_users {
            return Err(mismatch(format!(
                "a memory copy of {} users for a model of {}",
                hidden.len(),
                meta.n_users
            )));
        }
        hidden.resize_with(meta.n_users, Vec::new);
        recent.resize_with(meta.n_users, VecDeque::new);
        live.set_user_memory(hidden, recent)
            .map_err(|err| mismatch(err.to_string()))?;
        for (k, e) in stream[(meta.memory_at - first) as usize..]
            .iter()
            .enumerate()
        {
            if meta.memory_at + k as u64 >= copied_at(&ranges, e.user) {
                live.remember_event(e)
                    .map_err(|err| mismatch(format!("an event after the memory copy: {err}")))?;
            }
        }
        let mut saves = SaveLog::new();
        saves.saved = meta.observed;
        saves.segments = segments;
        saves.memory = Some(MemoryCopy {
            id: meta.memory_id,
            at: meta.memory_at,
            bytes: memory_bytes,
            encoded: None,
            written: Arc::new(AtomicBool::new(true)),
        });
        saves.content = ContentLog {
            stamp: meta.stamp,
            files: content_files,
            seen: live.content_changes().len(),
        };
        let refresher = Refresher {
            training: Arc::new(training),
            graph: Arc::new(graph),
            events: events.into(),
            kept: kept.into(),
            cut_at: meta.cut_at,
            user_times: user_times.into(),
            generation: meta.generation,
            stamp: meta.stamp,
            saves: Mutex::new(saves),
            memory_step: super::DEFAULT_MEMORY_STEP,
        };
        Ok(Some(Restored {
            refresher,
            live,
            through_seq: meta.through_seq,
            app_data: meta.app_data,
        }))
    }
}
