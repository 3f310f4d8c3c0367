//! A serving type for a long-running process: [`Service`] owns the store, the
//! recommender it serves (the taste graph and its feedback log), periodic checkpoints
//! and background refits swapped in without a pause. An HTTP server (such as the
//! `serve` example) only routes: requests go to [`Service::recommend`] and
//! [`Service::record`], CPU work through a [`WorkPool`], and `/metrics` renders
//! [`Service::render_metrics`].
//!
//! Durability: [`Service::record`] returns once its events are in the feedback log and
//! synced as the pipeline's [`taste_graph::SyncPolicy`] says (one sync per batch).
//! Restart with the same directory is the last checkpoint plus the log's later events
//! ([`crate::pipeline::restore`]): every acknowledged event is served again.
//!
//! Maintenance runs on one background thread: a checkpoint every
//! [`ServiceOptions::checkpoint_after_events`] events (it bounds the replay at
//! restart), and a refit of [`ServiceOptions::refit_epochs`] epochs after
//! [`ServiceOptions::refit_after_events`] events or [`ServiceOptions::refit_interval`]:
//! the refit's item embeddings are published to a new store generation (attributes
//! carried over from the one served), its index built, the new recommender swapped in,
//! a checkpoint taken on it, and the previous generation dropped.

mod items;
mod keys;
pub mod metrics;
pub mod names;
pub mod pool;
mod rescore;
mod shared;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use embed_store::Store;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::options::{RecommendOptions, RequestOptions};
use crate::pipeline::{self, Attrs, PipelineOptions, Restore};
use crate::recommender::Recommender;
use crate::recommender::serving::{Event, lock_dir};
use crate::types::Key;
pub use items::{ItemUpsert, Upserted};
pub use keys::{KeyedEvent, Ranked, RankedSource};
pub use metrics::RequestMetrics;
use names::{Names, Space};
pub use pool::{Overloaded, WorkPool};
pub use rescore::{ItemScore, MAX_QUESTION_BYTES, MAX_RESCORE_CANDIDATES, RescoreRequest};
pub use shared::Joined;

/// Settings of a [`Service`].
#[derive(Debug, Clone)]
pub struct ServiceOptions {
    /// Training, export, index, live-model and feedback-log settings (refits and
    /// restores use them too; `refits` is forced on).
    pub pipeline: PipelineOptions,
    /// Refit after this many recorded events (0: never on a count).
    pub refit_after_events: u64,
    /// Refit this long after the previous one when events came meanwhile (`None`: never
    /// on time).
    pub refit_interval: Option<Duration>,
    /// Epochs of each refit.
    pub refit_epochs: usize,
    /// Checkpoint after this many recorded events (0: only at refits and shutdown).
    pub checkpoint_after_events: u64,
    /// Most events one [`Service::record`] call may carry.
    pub max_batch: usize,
    /// Most items one [`Service::upsert`] call may carry.
    pub max_items: usize,
    /// With a shared store attached, how often to take the items other processes added
    /// to it ([`Service::follow_shared`]; `None`: only at start).
    pub follow_interval: Option<Duration>,
}

impl Default for ServiceOptions {
    fn default() -> Self {
        Self {
            pipeline: PipelineOptions::default(),
            refit_after_events: 20_000,
            refit_interval: None,
            refit_epochs: 5,
            checkpoint_after_events: 10_000,
            max_batch: 10_000,
            max_items: 10_000,
            follow_interval: Some(Duration::from_secs(10)),
        }
    }
}

/// How [`Service::open`] came up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opened {
    /// Nothing was saved in the directory: the model was built and its first state saved.
    Built,
    /// A saved state was served again.
    Restored {
        /// The log seq the state covered.
        saved_seq: u64,
        /// Events the log replayed on top of it.
        replayed: u64,
    },
}

/// One answer of [`Service::recommend`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Answer {
    /// The results, best first.
    pub items: Vec<Ranked>,
    /// The store generation they come from.
    pub generation: String,
    /// Whether the user was unknown and got the cold-start list
    /// ([`Recommender::cold_start`]).
    pub cold_start: bool,
}

/// Counters of a [`Service`] (also in [`Service::render_metrics`]).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Stats {
    /// Events recorded since the process started.
    pub events: u64,
    /// Refits installed since the process started.
    pub refits: u64,
    /// Refits that failed (the last error: [`Stats::last_error`]).
    pub refit_failures: u64,
    /// Checkpoints written since the process started.
    pub checkpoints: u64,
    /// Whether a refit is running now.
    pub refit_running: bool,
    /// Seconds the last installed refit took, from plan to swap.
    pub last_refit_seconds: f64,
    /// The store generation served.
    pub generation: String,
    /// Users of the taste graph.
    pub users: usize,
    /// Items of the taste graph (trained and added live).
    pub items: usize,
    /// Items upserted since the process started.
    pub upserted: u64,
    /// Index refreshes installed since the process started.
    pub index_refreshes: u64,
    /// Whether upserted rows wait for the next index refresh.
    pub rows_pending: bool,
    /// The content version of the served generation ([`embed_store::Snapshot::version`]).
    pub rows_version: u64,
    /// Whether the served generation waits to be published to the shared store.
    pub shared_pending: bool,
    /// The last maintenance failure, if any.
    pub last_error: Option<String>,
}

#[derive(Debug, Default)]
struct Counters {
    events: AtomicU64,
    since_checkpoint: AtomicU64,
    since_refit: AtomicU64,
    refits: AtomicU64,
    refit_failures: AtomicU64,
    checkpoints: AtomicU64,
    refit_running: AtomicBool,
    last_refit_ms: AtomicU64,
    upserted: AtomicU64,
    index_refreshes: AtomicU64,
    rows_pending: AtomicBool,
}

enum Wake {
    Events,
    Rows,
    Stop,
}

/// The serving state of one process (see the module documentation). Share it as an
/// `Arc`; every method takes `&self`.
pub struct Service {
    dir: PathBuf,
    store: Arc<Store>,
    options: ServiceOptions,
    current: RwLock<Arc<Recommender>>,
    counters: Counters,
    last_error: Mutex<Option<String>>,
    /// Held by every store commit of the service (upserts, refits, dropping a
    /// generation) and by index refreshes: one writer at a time, and a refit carries
    /// every upsert committed before its swap.
    rows: Mutex<()>,
    /// Wakes the maintenance thread: a queue of one (a pending wake-up is enough, so
    /// events arriving during a long refit queue nothing).
    wake: Mutex<Option<SyncSender<Wake>>>,
    maintenance: Mutex<Option<JoinHandle<()>>>,
    /// The surgered model's batching queue, once attached ([`Service::attach_rescorer`]).
    rescorer: OnceLock<crate::rescore::batch::Batcher>,
    /// The names clients gave users and items, durable ([`names`]).
    names: Names,
    /// The shared store the served generation is kept in too, once attached
    /// ([`Service::attach_shared`]).
    shared: OnceLock<Arc<dyn embed_store::VectorStore>>,
    /// A generation to drop from the shared store once the served one is published
    /// there (`Some` while a publish is pending: retried by the maintenance thread).
    shared_pending: Mutex<Option<String>>,
    /// Request metrics the HTTP layer records into.
    pub requests: RequestMetrics,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service")
            .field("dir", &self.dir)
            .field("recommender", &*self.recommender())
            .finish()
    }
}

impl Service {
    /// Serves the state saved in `dir` over `store` (see [`crate::pipeline::restore`]),
    /// or, when `dir` holds none, the recommender `build` makes (trained and published
    /// to `store`, with a refresher attached) with its first state saved in `dir`; then
    /// starts the maintenance thread.
    pub fn open(
        dir: &Path,
        store: Arc<Store>,
        mut options: ServiceOptions,
        build: impl FnOnce(&Arc<Store>, &PipelineOptions) -> Result<Recommender>,
    ) -> Result<(Arc<Self>, Opened)> {
        let _span = tracing::info_span!("open", dir = %dir.display()).entered();
        options.pipeline.refits = true;
        if options.max_batch == 0 {
            return Err(Error::config("max_batch = 0: no event could be recorded"));
        }
        // the directory is ours before its state is read (see pipeline::restore)
        let owned = lock_dir(dir)?;
        let (rec, opened) = match pipeline::restore_locked(dir, owned, &store, &options.pipeline)? {
            Restore::Reopened(r) => {
                let r = *r;
                let opened = Opened::Restored {
                    saved_seq: r.saved_seq,
                    replayed: r.replayed.replayed,
                };
                (r.recommender, opened)
            }
            Restore::Nothing(owned) => {
                let rec = build(&store, &options.pipeline)?;
                let rec = rec.with_log_locked(dir, owned, options.pipeline.sync)?;
                (rec, Opened::Built)
            }
        };
        let names = Names::open(&mosaic_durability::MmapDirectory::open(dir)?)?;
        tracing::info!(?opened, "serving");
        let (tx, rx) = mpsc::sync_channel(1);
        let service = Arc::new(Self {
            dir: dir.to_path_buf(),
            store,
            options,
            current: RwLock::new(Arc::new(rec)),
            counters: Counters::default(),
            last_error: Mutex::new(None),
            rows: Mutex::new(()),
            wake: Mutex::new(Some(tx)),
            maintenance: Mutex::new(None),
            rescorer: OnceLock::new(),
            names,
            shared: OnceLock::new(),
            shared_pending: Mutex::new(None),
            requests: RequestMetrics::default(),
        });
        let weak = Arc::downgrade(&service);
        let handle = std::thread::Builder::new()
            .name("mosaic-maintenance".into())
            .spawn(move || maintain(&weak, &rx))
            .map_err(|e| Error::config(format!("cannot start the maintenance thread: {e}")))?;
        *lock(&service.maintenance) = Some(handle);
        Ok((service, opened))
    }

    /// The recommender served now (a refit swaps it; hold it for one request).
    pub fn recommender(&self) -> Arc<Recommender> {
        Arc::clone(&self.current.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// The directory the state and the feedback log live in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The names clients gave users and items.
    pub fn names(&self) -> &Names {
        &self.names
    }

    /// `req` over `base` ([`RequestOptions::apply_with`]), its blocked items resolved
    /// through the service's names (a name never seen blocks nothing: no such item
    /// exists).
    pub fn options(
        &self,
        req: &RequestOptions,
        base: RecommendOptions,
    ) -> Result<RecommendOptions> {
        req.apply_with(base, |key, k| {
            self.names.get(Space::Item, key, &format!("blocked[{k}]"))
        })
    }

    /// The top results for `user` with `opts`, items named as the client names them; a
    /// user the taste graph does not know yet (or a name never seen) gets the
    /// cold-start list, flagged.
    pub fn recommend(&self, user: &Key, opts: &RecommendOptions) -> Result<Answer> {
        let _span = tracing::debug_span!("recommend", %user).entered();
        let id = self.names.get(Space::User, user, "user")?;
        self.on_current(|rec| {
            let (items, cold_start) = match id.and_then(|u| rec.user(u)) {
                Some(dense) => (rec.recommend(dense, opts)?, false),
                None => (rec.cold_start(opts)?, true),
            };
            Ok(Answer {
                items: items.iter().map(|r| self.names.ranked(r)).collect(),
                generation: rec.snapshot().generation().to_string(),
                cold_start,
            })
        })
    }

    /// `read` on the recommender served now, again on the next one while it answers
    /// [`Error::Retired`]: a refit installs into the shared taste graph a moment before
    /// its recommender is swapped in, and a request caught in between goes again.
    fn on_current<T>(&self, read: impl Fn(&Recommender) -> Result<T>) -> Result<T> {
        for _ in 0..10_000 {
            match read(&self.recommender()) {
                Err(Error::Retired { .. }) => std::thread::yield_now(),
                other => return other,
            }
        }
        Err(Error::config(
            "the served recommender stayed retired: a refit was installed but not swapped in",
        ))
    }

    /// Records `events` in order ([`Recommender::record_batch`]): returns once they are
    /// acknowledged by the feedback log. Every key is checked first, and the new names
    /// logged (one sync), so a batch refused for a bad key records nothing; a batch
    /// larger than [`ServiceOptions::max_batch`] is refused whole.
    pub fn record(&self, events: &[KeyedEvent]) -> Result<()> {
        let _span = tracing::debug_span!("record", events = events.len()).entered();
        if events.len() > self.options.max_batch {
            return Err(Error::config(format!(
                "{} events in one batch, past the limit of {}",
                events.len(),
                self.options.max_batch
            )));
        }
        let users: Vec<&Key> = events.iter().map(|e| &e.user).collect();
        let items: Vec<&Key> = events.iter().map(|e| &e.item).collect();
        let users = self
            .names
            .get_or_insert(Space::User, &users, |k| format!("events[{k}].user"))?;
        let items = self
            .names
            .get_or_insert(Space::Item, &items, |k| format!("events[{k}].item"))?;
        let events: Vec<Event> = events
            .iter()
            .zip(users.iter().zip(&items))
            .map(|(e, (&user, &item))| Event {
                user,
                item,
                kind: e.kind,
                time: e.time,
            })
            .collect();
        let rec = self.recommender();
        let result = rec.record_batch(&events);
        let recorded = match &result {
            Ok(()) => events.len(),
            Err(Error::Batch { recorded, .. }) => *recorded,
            Err(_) => 0,
        } as u64;
        let c = &self.counters;
        c.events.fetch_add(recorded, Ordering::Relaxed);
        c.since_checkpoint.fetch_add(recorded, Ordering::Relaxed);
        c.since_refit.fetch_add(recorded, Ordering::Relaxed);
        if recorded > 0 {
            self.wake(Wake::Events);
        }
        result
    }

    /// The service's counters now.
    pub fn stats(&self) -> Stats {
        let rec = self.recommender();
        let c = &self.counters;
        Stats {
            events: c.events.load(Ordering::Relaxed),
            refits: c.refits.load(Ordering::Relaxed),
            refit_failures: c.refit_failures.load(Ordering::Relaxed),
            checkpoints: c.checkpoints.load(Ordering::Relaxed),
            refit_running: c.refit_running.load(Ordering::Relaxed),
            last_refit_seconds: c.last_refit_ms.load(Ordering::Relaxed) as f64 / 1e3,
            generation: rec.snapshot().generation().to_string(),
            users: rec.n_users(),
            items: rec.with_live(|l| l.n_items()),
            upserted: c.upserted.load(Ordering::Relaxed),
            index_refreshes: c.index_refreshes.load(Ordering::Relaxed),
            rows_pending: c.rows_pending.load(Ordering::Relaxed),
            rows_version: rec.snapshot().version(),
            shared_pending: lock(&self.shared_pending).is_some(),
            last_error: lock(&self.last_error).clone(),
        }
    }

    /// The counters and the request metrics in the Prometheus text format.
    pub fn render_metrics(&self) -> String {
        let s = self.stats();
        let mut out = String::new();
        push_metrics(
            &mut out,
            &[
                (
                    "mosaic_events_total",
                    "counter",
                    "Events recorded.",
                    s.events as f64,
                ),
                (
                    "mosaic_refits_total",
                    "counter",
                    "Refits installed.",
                    s.refits as f64,
                ),
                (
                    "mosaic_refit_failures_total",
                    "counter",
                    "Refits failed.",
                    s.refit_failures as f64,
                ),
                (
                    "mosaic_checkpoints_total",
                    "counter",
                    "Checkpoints written.",
                    s.checkpoints as f64,
                ),
                (
                    "mosaic_refit_running",
                    "gauge",
                    "Whether a refit runs now.",
                    f64::from(u8::from(s.refit_running)),
                ),
                (
                    "mosaic_last_refit_seconds",
                    "gauge",
                    "Duration of the last refit.",
                    s.last_refit_seconds,
                ),
                (
                    "mosaic_items_upserted_total",
                    "counter",
                    "Items upserted.",
                    s.upserted as f64,
                ),
                (
                    "mosaic_index_refreshes_total",
                    "counter",
                    "Index refreshes installed.",
                    s.index_refreshes as f64,
                ),
                (
                    "mosaic_rows_pending",
                    "gauge",
                    "Whether upserted rows wait for an index refresh.",
                    f64::from(u8::from(s.rows_pending)),
                ),
                (
                    "mosaic_shared_pending",
                    "gauge",
                    "Whether the served generation waits to be published to the shared store.",
                    f64::from(u8::from(s.shared_pending)),
                ),
                (
                    "mosaic_users",
                    "gauge",
                    "Users of the taste graph.",
                    s.users as f64,
                ),
                (
                    "mosaic_items",
                    "gauge",
                    "Items of the taste graph.",
                    s.items as f64,
                ),
            ],
        );
        if let Some(b) = self.rescorer.get() {
            let b = b.stats();
            push_metrics(
                &mut out,
                &[
                    (
                        "mosaic_rescore_queue_depth",
                        "gauge",
                        "Rescoring jobs waiting.",
                        b.waiting as f64,
                    ),
                    (
                        "mosaic_rescore_rounds_total",
                        "counter",
                        "Shared prefill rounds run.",
                        b.rounds as f64,
                    ),
                    (
                        "mosaic_rescore_prompts_total",
                        "counter",
                        "Prompts scored.",
                        b.prompts as f64,
                    ),
                    (
                        "mosaic_rescore_expired_total",
                        "counter",
                        "Jobs dropped past their deadline.",
                        b.expired as f64,
                    ),
                ],
            );
        }
        out.push_str(&format!(
            "# HELP mosaic_generation_info The store generation served.\n# TYPE mosaic_generation_info gauge\nmosaic_generation_info{{generation=\"{}\"}} 1\n",
            s.generation.replace(['"', '\\', '\n'], "_")
        ));
        self.requests.render(&mut out);
        out
    }

    /// Stops maintenance (a running refit finishes first), syncs the feedback log and
    /// writes a checkpoint, so that a restart replays nothing. Later calls to
    /// [`Service::record`] still work and are logged; call it once, at shutdown.
    pub fn shutdown(&self) -> Result<()> {
        if let Some(tx) = lock(&self.wake).take() {
            let _ = tx.send(Wake::Stop);
        }
        if let Some(h) = lock(&self.maintenance).take() {
            let _ = h.join();
        }
        if let Some(b) = self.rescorer.get() {
            b.stop();
        }
        let rec = self.recommender();
        rec.sync_feedback()?;
        rec.checkpoint()?;
        self.counters.checkpoints.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Whether a refit is due now.
    fn refit_due(&self, last: Instant) -> bool {
        let n = self.counters.since_refit.load(Ordering::Relaxed);
        let o = &self.options;
        n > 0
            && ((o.refit_after_events > 0 && n >= o.refit_after_events)
                || o.refit_interval.is_some_and(|d| last.elapsed() >= d))
    }

    /// One checkpoint if enough events came since the last.
    fn checkpoint_if_due(&self) -> Result<()> {
        let every = self.options.checkpoint_after_events;
        if every > 0 && self.counters.since_checkpoint.load(Ordering::Relaxed) >= every {
            self.checkpoint()?;
        }
        Ok(())
    }

    fn checkpoint(&self) -> Result<()> {
        let _span = tracing::info_span!("checkpoint").entered();
        self.counters.since_checkpoint.store(0, Ordering::Relaxed);
        let seq = self.recommender().checkpoint()?;
        tracing::info!(seq, "checkpoint written");
        self.counters.checkpoints.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Plans, runs and installs a refit (see the module documentation).
    fn refit(&self) -> Result<()> {
        let _span = tracing::info_span!("refit", epochs = self.options.refit_epochs).entered();
        let started = Instant::now();
        let rec = self.recommender();
        self.counters.since_refit.store(0, Ordering::Relaxed);
        let refit = rec.plan_refit(self.options.refit_epochs)?.run(|_| {})?;
        drop(rec);
        // from here to the old generation's drop, no upsert commits: the new generation
        // carries every one committed before
        let _rows = lock(&self.rows);
        let rec = self.recommender();
        let old = rec.snapshot().generation().to_string();
        let served = self.store.generation(&old)?;
        let name = self.next_generation_name();
        let ids = rec.external_ids(refit.live().n_items())?;
        let carry = pipeline::Carried::from_served(&served, &ids)?;
        let values = pipeline::attrs_of(&served, &ids);
        let attrs = (served.n_attrs() > 0).then_some(Attrs {
            values: &values,
            n_attrs: served.n_attrs(),
        });
        let (next, _installed) = pipeline::refreshed(
            &rec,
            refit,
            &name,
            attrs,
            Some(&carry),
            &self.store,
            &self.options.pipeline,
        )?;
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(next);
        drop(rec);
        // the saved state names the new generation before the old one goes
        self.checkpoint()?;
        if old != name {
            let mut w = self.store.writer()?;
            w.drop_generation(&old)?;
            w.commit()?;
        }
        self.counters.rows_pending.store(false, Ordering::Release);
        drop(_rows);
        if self.shared.get().is_some() {
            *lock(&self.shared_pending) = Some(old.clone());
            self.sync_shared();
        }
        self.counters.refits.fetch_add(1, Ordering::Relaxed);
        self.counters
            .last_refit_ms
            .store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
        tracing::info!(generation = %name, dropped = %old, seconds = started.elapsed().as_secs_f64(), "refit installed");
        Ok(())
    }

    /// `<base>.r<k>`, `k` one past the highest of the store's generations so named (the
    /// served one among them): names only grow, even after old generations are dropped.
    fn next_generation_name(&self) -> String {
        let base = &self.options.pipeline.generation;
        let prefix = format!("{base}.r");
        let highest = self
            .store
            .generations()
            .iter()
            .filter_map(|g| g.strip_prefix(&prefix)?.parse::<u64>().ok())
            .max()
            .unwrap_or(0);
        format!("{prefix}{}", highest.saturating_add(1))
    }

    /// Wakes the maintenance thread (a wake-up already pending is enough).
    fn wake(&self, why: Wake) {
        if let Some(tx) = lock(&self.wake).as_ref() {
            let _ = tx.try_send(why);
        }
    }

    /// Publishes the served generation to the shared store if that is pending; a
    /// failure is kept for [`Stats::last_error`] and retried at the next maintenance step.
    fn sync_shared(&self) {
        let Some(previous) = lock(&self.shared_pending).clone() else {
            return;
        };
        match self.publish_shared(&previous) {
            Ok(()) => *lock(&self.shared_pending) = None,
            Err(e) => self.failed("publishing to the shared store", &e),
        }
    }

    fn failed(&self, what: &str, e: &Error) {
        tracing::error!(error = %e, "{what} failed");
        *lock(&self.last_error) = Some(format!("{what}: {e}"));
    }
}

/// `metrics` (name, type, help, value) in the Prometheus text format.
fn push_metrics(out: &mut String, metrics: &[(&str, &str, &str, f64)]) {
    for (name, kind, help, v) in metrics {
        out.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}\n"
        ));
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The maintenance loop: checkpoints and refits when due, until told to stop (or the
/// service is gone). Failures are kept for [`Stats::last_error`] and retried later.
fn maintain(service: &std::sync::Weak<Service>, rx: &mpsc::Receiver<Wake>) {
    let mut last_refit = Instant::now();
    let mut last_follow = Instant::now();
    loop {
        match rx.recv_timeout(Duration::from_secs(1)) {
            Ok(Wake::Stop) | Err(RecvTimeoutError::Disconnected) => return,
            Ok(Wake::Events | Wake::Rows) | Err(RecvTimeoutError::Timeout) => {}
        }
        let Some(s) = service.upgrade() else { return };
        if s.counters.rows_pending.load(Ordering::Acquire)
            && let Err(e) = s.refresh_index()
        {
            s.failed("index refresh", &e);
        }
        s.sync_shared();
        if s.options
            .follow_interval
            .is_some_and(|d| last_follow.elapsed() >= d)
        {
            last_follow = Instant::now();
            if let Err(e) = s.follow_shared() {
                s.failed("following the shared store", &e);
            }
        }
        if let Err(e) = s.checkpoint_if_due() {
            s.failed("checkpoint", &e);
        }
        if s.refit_due(last_refit) {
            s.counters.refit_running.store(true, Ordering::Relaxed);
            if let Err(e) = s.refit() {
                s.counters.refit_failures.fetch_add(1, Ordering::Relaxed);
                s.failed("refit", &e);
            }
            s.counters.refit_running.store(false, Ordering::Relaxed);
            last_refit = Instant::now();
        }
    }
}
