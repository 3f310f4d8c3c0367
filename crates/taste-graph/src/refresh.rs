//! Background refits: the serving [`LiveModel`] keeps folding events in while a copy of
//! the trainer continues training on the graph those events grew; the refitted model is
//! then installed in its place, with the events that arrived meanwhile replayed.
//!
//! Fold-in moves users towards what they did but leaves the trained tables as they were;
//! a refit of a few epochs from the serving trainer's state (Adam moments and all, see
//! [`Trainer::regraph`](crate::Trainer::regraph)) recovers most of what a full retrain
//! gives, in a fraction of its time (measured in docs/taste-graph.md). The cycle:
//!
//! 1. serve: [`Refresher::observe`] folds every event into the live model and records it;
//! 2. [`Refresher::plan`] (cheap: shares the recorded events, the trainer and the live
//!    items' content, O(blocks of 4096 events + live items)) returns a [`RefitJob`] that
//!    owns everything it needs — run it on any thread
//!    ([`RefitJob::run`]: builds the grown graph, regraphs the trainer, trains, builds the
//!    new live model) while serving continues;
//! 3. [`Refresher::install`] swaps the result in: it replays the events recorded since the
//!    plan, carries over each user's hidden and recent items, and keeps the trainer and
//!    graph for the next cycle.
//!
//! The refit graph is the trainer's graph plus the positive pairs recorded up to the plan
//! (a later hide of a pair removes it, as [`Interactions::positive_pairs`] decides). A
//! hide is no edge: the hide that decides its pair is replayed into each new live model,
//! so the push it gave the user's vector survives the refit, and it stays recorded for
//! the next one (until a later positive event on the pair decides otherwise).
//! Users and items added live become trained rows when they have a positive pair by then;
//! from the first added user (item) without one on, users (items) stay live in the new
//! model and their events are replayed instead (and kept for the next refit) — ids are
//! dense, so the trained rows are a prefix — which keeps an item's content embedding
//! until someone engages with it.
//!
//! [`Refresher::save`] writes the refresher's state to a directory — the trainer and graph
//! once per installed model, then at each save the events observed since the previous
//! one (users' hidden and recent items are copied only now and then);
//! [`Refresher::load`] rebuilds the refresher and the live model after a restart.
//!
//! [`Interactions::positive_pairs`]: crate::model::Interactions::positive_pairs

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use crate::error::{Error, Result};
use crate::graph::BipartiteGraph;
use crate::ids::{ItemId, UserId};
use crate::inductive::ContentAggregator;
use crate::interactions::{Interaction, deciding_indices};
use crate::live::{ItemContent, LiveConfig, LiveModel};
use crate::schedule::RateSwitch;
use crate::trainer::EpochStats;
use crate::training::Training;

mod events;
pub mod state;

use events::SharedEvents;

/// Keeps the trainer and graph behind a [`LiveModel`] and the events observed since, and
/// turns them into background refits.
#[derive(Debug)]
pub struct Refresher {
    training: Arc<Training>,
    graph: Arc<BipartiteGraph>,
    events: SharedEvents,
    /// The first events of `events`: those a refit kept (not in the graph), fixed until
    /// the next install; the rest are the stream's events from `cut_at` on.
    kept: Arc<[Interaction]>,
    /// Index (counting every event observed) of the first event after the kept ones.
    cut_at: u64,
    /// When each trained user's interactions are dated in the current model (users past
    /// these: the model's `trained_at`).
    user_times: Arc<[u64]>,
    generation: u64,
    /// Names the current model's file in a state directory ([`Refresher::save`]).
    stamp: u64,
}

/// What [`Refresher::install`] did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Installed {
    /// Events recorded before the plan that the refit graph holds (dropped from the
    /// record).
    pub folded: usize,
    /// Events recorded before the plan on users or items that stay live, and hides that
    /// decide their pairs: replayed by the job and kept in the record for the next refit.
    pub kept: usize,
    /// Events recorded after the plan (or after the last [`Refit::catch_up`]), replayed
    /// into the new model during the install: the last `replayed` of
    /// [`Refresher::pending`] right after it.
    pub replayed: usize,
    /// Events recorded after the plan that [`Refit::catch_up`] replayed before the
    /// install.
    pub caught_up: usize,
    /// Users the refit trained (the rest stay live).
    pub trained_users: usize,
    /// Items the refit trained.
    pub trained_items: usize,
    /// Edges of the new training graph.
    pub edges: usize,
}

/// What an install replaced: the previous live model, trainer and graph. Drop it after
/// releasing the service's lock — freeing the old tables takes milliseconds at
/// Gowalla's size, more at scale — or keep it to roll back by hand.
#[derive(Debug)]
pub struct Replaced {
    /// The live model that was serving.
    pub live: LiveModel,
    /// The trainer behind it (shared with any job still planned from it).
    pub training: Arc<Training>,
    /// The graph it was trained on.
    pub graph: Arc<BipartiteGraph>,
}

impl Refresher {
    /// A refresher for the live model built from `training`'s model on `graph` (the graph
    /// it trained on; sizes checked).
    pub fn new(mut training: Training, graph: BipartiteGraph) -> Result<Self> {
        let model = training.model()?;
        crate::lightgcn::check_sizes(&graph, model.n_users(), model.n_items())?;
        Ok(Refresher {
            training: Arc::new(training),
            graph: Arc::new(graph),
            events: SharedEvents::default(),
            kept: Arc::from([]),
            cut_at: 0,
            user_times: Arc::from([]),
            generation: 0,
            stamp: fresh_stamp(),
        })
    }

    /// Folds `event` into `live` ([`LiveModel::observe`]) and, if it was accepted,
    /// records it for the next refit. Every event the live model sees must go through
    /// here (or [`Refresher::record`]), or the next install refuses the refit.
    pub fn observe(&mut self, live: &mut LiveModel, event: Interaction) -> Result<()> {
        event.check_weight()?;
        live.observe(event.user, event.item, event.kind, event.timestamp)?;
        self.events.push(event);
        Ok(())
    }

    /// Records an event the caller already folded into the live model.
    pub fn record(&mut self, event: Interaction) -> Result<()> {
        event.check_weight()?;
        self.events.push(event);
        Ok(())
    }

    /// Events the current model's graph does not hold, oldest first: those recorded
    /// since it was built, and earlier ones on users or items that stayed live or hides
    /// that decide their pairs.
    pub fn pending(&self) -> impl Iterator<Item = &Interaction> {
        self.events.iter()
    }

    /// The pending events from position `from` on (the last `pending_len() - from`),
    /// reached by skipping whole blocks rather than walking the events before them.
    pub fn pending_from(&self, from: usize) -> impl Iterator<Item = &Interaction> {
        self.events.iter_from(from)
    }

    /// How many events [`Refresher::pending`] yields.
    pub fn pending_len(&self) -> usize {
        self.events.len()
    }

    /// The graph the current model was trained on.
    pub fn graph(&self) -> &BipartiteGraph {
        &self.graph
    }

    /// The trainer whose model the live model was built from.
    pub fn training(&self) -> &Training {
        &self.training
    }

    /// Installs so far (a job planned before the latest install is refused).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// A refit of `epochs` epochs over everything recorded so far, continuing the
    /// trainer's state; `live` is the serving model (its configuration, content
    /// aggregator and live items' content go into the new one, whose users keep their
    /// latest event times). Shares what it takes — the recorded events' sealed blocks,
    /// the trainer, the live items' content — so it costs O(recorded events / 4096 +
    /// items added live) pointer copies plus at most 4096 events copied, whatever the
    /// number of users. Run it anywhere with [`RefitJob::run`], then
    /// [`Refresher::install`] the result.
    pub fn plan(&self, live: &LiveModel, epochs: usize) -> Result<RefitJob> {
        self.check_live(live)?;
        let content = ItemContent::of(live, self.graph.n_items());
        Ok(RefitJob {
            training: Arc::clone(&self.training),
            graph: Arc::clone(&self.graph),
            events: self.events.clone(),
            n_users: live.n_users(),
            n_items: live.n_items(),
            content,
            aggregator: live.shared_aggregator(),
            config: *live.config(),
            now: live.latest_time(),
            dates: Dates {
                users: Arc::clone(&self.user_times),
                trained_at: live.trained_at(),
                trained_users: self.graph.n_users(),
            },
            epochs,
            lr: None,
            schedule: Vec::new(),
            generation: self.generation,
        })
    }

    /// `Err` unless `live` can be the model this refresher serves (at least its graph's
    /// users and items).
    fn check_live(&self, live: &LiveModel) -> Result<()> {
        if live.n_users() < self.graph.n_users() || live.n_items() < self.graph.n_items() {
            return Err(Error::Graph {
                message: format!(
                    "the live model has {} users and {} items, fewer than the refresher's graph ({} and {}): not the model it serves",
                    live.n_users(),
                    live.n_items(),
                    self.graph.n_users(),
                    self.graph.n_items()
                ),
            });
        }
        Ok(())
    }

    /// Takes what `refit` has not replayed yet — the events recorded since its plan (or
    /// its last catch-up) and the content of the items `live` added since — for
    /// [`Refit::catch_up`] to replay outside the service's lock. Shared as
    /// [`Refresher::plan`] shares them: O(blocks of events + items added since); refused
    /// for a refit planned before the latest install ([`Error::Stale`]).
    pub fn catch_up(&self, refit: &Refit, live: &LiveModel) -> Result<CatchUp> {
        self.check_refit(refit)?;
        Ok(CatchUp {
            generation: self.generation,
            from: refit.replayed,
            events: self.events.suffix(refit.replayed),
            content: ItemContent::of(live, refit.live.n_items()),
        })
    }

    /// `Err` unless `refit` was planned from this generation and has replayed no more
    /// events than are recorded.
    fn check_refit(&self, refit: &Refit) -> Result<()> {
        if refit.generation != self.generation {
            return Err(Error::Stale {
                planned: refit.generation,
                current: self.generation,
            });
        }
        if refit.replayed > self.events.len() {
            return Err(Error::Graph {
                message: format!(
                    "the refit folded or replayed {} events, only {} are recorded",
                    refit.replayed,
                    self.events.len()
                ),
            });
        }
        Ok(())
    }

    /// Swaps `refit` in for `live` (the model it was planned from, with every event
    /// since): replays the events recorded after the plan (after the last
    /// [`Refit::catch_up`]), carries over each user's hidden and recent items and the
    /// live items' content, and keeps the refit's trainer and graph for the next plan.
    /// On an error nothing has changed. It costs one [`LiveModel::observe`] per event
    /// it replays plus a pass over the live items (users' tables are moved, not copied):
    /// that is how long a service holds its write lock, so catch the refit up first;
    /// what it replaced comes back to be dropped outside the lock.
    pub fn install(&mut self, refit: Refit, live: &mut LiveModel) -> Result<(Installed, Replaced)> {
        self.check_refit(&refit)?;
        let mut new = refit.live;
        let after = self.events.len() - refit.replayed;
        for e in self.events.iter_from(refit.replayed) {
            let up_to = (e.item.index() + 1).min(live.n_items());
            new.add_items_up_to(up_to, |i| live.shared_item_content(i).cloned())?;
            new.observe(e.user, e.item, e.kind, e.timestamp)?;
        }
        new.add_items_up_to(live.n_items(), |i| live.shared_item_content(i).cloned())?;
        if new.n_users() != live.n_users() || new.n_items() != live.n_items() {
            return Err(Error::Graph {
                message: format!(
                    "after replay the refit has {} users and {} items, the live model {} and {}: it saw events the refresher did not record",
                    new.n_users(),
                    new.n_items(),
                    live.n_users(),
                    live.n_items()
                ),
            });
        }
        for i in new.n_trained_items()..new.n_items() {
            let id = ItemId(i as u32);
            // Mostly the same shared features (the refit took them from this model):
            // compared by pointer first, by value only when they are not.
            if let Some(c) = live.shared_item_content(id)
                && !new
                    .shared_item_content(id)
                    .is_some_and(|n| Arc::ptr_eq(n, c) || n == c)
            {
                new.set_item_content(id, c)?;
            }
        }
        new.inherit_users(live)?;
        let installed = Installed {
            folded: refit.cut - refit.kept.len(),
            kept: refit.kept.len(),
            replayed: after,
            caught_up: refit.replayed - refit.cut,
            trained_users: refit.graph.n_users(),
            trained_items: refit.graph.n_items(),
            edges: refit.graph.n_edges(),
        };
        let replaced = Replaced {
            live: std::mem::replace(live, new),
            training: std::mem::replace(&mut self.training, Arc::new(refit.training)),
            graph: std::mem::replace(&mut self.graph, Arc::new(refit.graph)),
        };
        // The events before the cut that were not kept leave the record.
        let folded = refit.cut - self.kept.len();
        self.cut_at += folded as u64;
        self.events
            .replace_prefix(refit.cut, Arc::clone(&refit.kept));
        self.kept = refit.kept;
        self.user_times = refit.user_times;
        self.generation += 1;
        self.stamp = fresh_stamp();
        Ok((installed, replaced))
    }
}

/// A stamp no other model of this process has, and unlikely any other process's.
fn fresh_stamp() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    (nanos ^ u64::from(std::process::id()).rotate_left(32))
        .wrapping_add(n.wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

/// A background refit, owning all it needs (it is `Send`): built by
/// [`Refresher::plan`], run by [`RefitJob::run`].
#[derive(Debug)]
pub struct RefitJob {
    training: Arc<Training>,
    graph: Arc<BipartiteGraph>,
    events: SharedEvents,
    n_users: usize,
    n_items: usize,
    /// Content of the live model's items from the graph's item count on.
    content: ItemContent,
    aggregator: Option<Arc<ContentAggregator>>,
    config: LiveConfig,
    now: u64,
    /// When the planned-from model dated its users' interactions: with the recorded
    /// events, each user's latest event time at the plan, at which the new model's
    /// trained users are dated.
    dates: Dates,
    epochs: usize,
    lr: Option<f32>,
    schedule: Vec<RateSwitch>,
    generation: u64,
}

/// When a model dated its users' interactions before any recorded event: the trained
/// users in `users` at theirs, the other trained users at `trained_at`; users added live
/// at their first event.
#[derive(Debug)]
struct Dates {
    users: Arc<[u64]>,
    trained_at: u64,
    trained_users: usize,
}

impl Dates {
    /// The latest event time of each of the first `n` users once `events` (everything
    /// the model observed since it was built) are folded in — what the model's
    /// [`LiveModel::last_time`] says — computed apart from the model, so that a plan
    /// needs no copy of it.
    fn latest(&self, n: usize, events: &SharedEvents) -> Vec<u64> {
        let mut out: Vec<u64> = (0..n)
            .map(|u| match self.users.get(u) {
                Some(&t) => t,
                None if u < self.trained_users => self.trained_at,
                None => 0,
            })
            .collect();
        for e in events.iter() {
            if let Some(t) = out.get_mut(e.user.index()) {
                *t = (*t).max(e.timestamp);
            }
        }
        out
    }
}

/// A finished refit, ready for [`Refresher::install`].
#[derive(Debug)]
pub struct Refit {
    training: Training,
    graph: BipartiteGraph,
    live: LiveModel,
    cut: usize,
    /// The events up to `cut` that the graph does not hold (replayed into `live`).
    kept: Arc<[Interaction]>,
    /// When `live`'s trained users' interactions are dated.
    user_times: Arc<[u64]>,
    /// Recorded events replayed into `live` so far (`cut`, then catch-ups).
    replayed: usize,
    generation: u64,
    seconds: f64,
}

/// What a [`Refit`] has not replayed yet, copied by [`Refresher::catch_up`] for
/// [`Refit::catch_up`].
#[derive(Debug, Clone)]
pub struct CatchUp {
    generation: u64,
    /// Index of the first of `events` among the refresher's recorded events.
    from: usize,
    events: SharedEvents,
    /// Content of the live model's items from the refit's item count on.
    content: ItemContent,
}

impl CatchUp {
    /// Events to replay.
    pub fn events(&self) -> usize {
        self.events.len()
    }
}

impl Refit {
    /// The new training graph.
    pub fn graph(&self) -> &BipartiteGraph {
        &self.graph
    }

    /// The new live model, before the install's replay.
    pub fn live(&self) -> &LiveModel {
        &self.live
    }

    /// The trainer after the refit.
    pub fn training(&self) -> &Training {
        &self.training
    }

    /// Wall-clock seconds the job took (graph, training and live model).
    pub fn seconds(&self) -> f64 {
        self.seconds
    }

    /// Replays `catch_up` (from [`Refresher::catch_up`], taken after this refit's last
    /// catch-up) into the new live model — outside the service's lock — so that the
    /// install replays only what arrives after it. Repeat while events keep coming;
    /// on an error the refit is dropped (plan again).
    pub fn catch_up(mut self, catch_up: CatchUp) -> Result<Refit> {
        if catch_up.generation != self.generation {
            return Err(Error::Stale {
                planned: self.generation,
                current: catch_up.generation,
            });
        }
        if catch_up.from != self.replayed || catch_up.content.first > self.live.n_items() {
            return Err(Error::Graph {
                message: format!(
                    "the catch-up starts at event {} and item {}, the refit has replayed {} events and has {} items: take it after the refit's last catch-up",
                    catch_up.from,
                    catch_up.content.first,
                    self.replayed,
                    self.live.n_items()
                ),
            });
        }
        let content = &catch_up.content;
        let known = content.end();
        for e in catch_up.events.iter() {
            self.live
                .add_items_up_to((e.item.index() + 1).min(known), |i| content.get(i))?;
            self.live.observe(e.user, e.item, e.kind, e.timestamp)?;
        }
        self.live.add_items_up_to(known, |i| content.get(i))?;
        self.replayed += catch_up.events.len();
        Ok(self)
    }
}

impl RefitJob {
    /// Trains at `lr` (Adam's moments kept) instead of the trainer's last rate.
    pub fn lr(mut self, lr: f32) -> Self {
        self.lr = Some(lr);
        self
    }

    /// Applies these switches by the refit's own epochs (1 = its first epoch).
    pub fn schedule(mut self, schedule: Vec<RateSwitch>) -> Self {
        self.schedule = schedule;
        self
    }

    /// The new model's creation time, [`LiveModel::trained_at`] (default: the latest time
    /// the serving model had seen at the plan). Its trained users' interactions are
    /// dated at each user's latest event at the plan, and later events decay them from
    /// there.
    pub fn now(mut self, now: u64) -> Self {
        self.now = now;
        self
    }

    /// Epochs the job trains.
    pub fn epochs(&self) -> usize {
        self.epochs
    }

    /// Events the refit folds in (recorded up to the plan).
    pub fn events(&self) -> usize {
        self.events.len()
    }

    /// The refit training graph and the events it leaves to the replay: the trainer's
    /// graph plus the recorded positive pairs among trained users and items, with
    /// users (items) trained up to the first live one that has no positive pair; the
    /// replay holds the events on users and items that stay live and the hides that
    /// decide their pairs.
    pub fn refit_graph(&self) -> Result<(BipartiteGraph, Vec<Interaction>)> {
        let base = &*self.graph;
        let (bu, bi) = (base.n_users(), base.n_items());
        let events = self.events.to_vec();
        if let Some(e) = events
            .iter()
            .find(|e| e.user.index() >= self.n_users || e.item.index() >= self.n_items)
        {
            return Err(Error::Graph {
                message: format!(
                    "a recorded event (user {}, item {}) is outside the live model's {} users and {} items: record only what it observed",
                    e.user.0, e.item.0, self.n_users, self.n_items
                ),
            });
        }
        // The last event of each recorded pair decides (as `positive_pairs` decides);
        // the trainer's graph is older than all of them.
        let mut added = Vec::new();
        let mut removed = HashSet::new();
        // A hide that decides its pair is not a graph edge, but the push it gave the
        // user's vector is replayed into each new model (and kept for the next).
        let mut hides = HashSet::new();
        for k in deciding_indices(&events) {
            let e = &events[k];
            if e.adds_pair() {
                added.push((e.user, e.item));
            } else {
                removed.insert((e.user, e.item));
                if !e.kind.is_positive() {
                    hides.insert(k);
                }
            }
        }
        let mut user_pos = vec![false; self.n_users - bu];
        let mut item_pos = vec![false; self.n_items - bi];
        for &(u, i) in &added {
            if let Some(p) = u.index().checked_sub(bu) {
                user_pos[p] = true;
            }
            if let Some(p) = i.index().checked_sub(bi) {
                item_pos[p] = true;
            }
        }
        let n_users = bu + user_pos.iter().position(|&p| !p).unwrap_or(user_pos.len());
        let n_items = bi + item_pos.iter().position(|&p| !p).unwrap_or(item_pos.len());
        let old = (0..bu).flat_map(|u| {
            base.items_of(UserId(u as u32))
                .iter()
                .map(move |&i| (UserId(u as u32), ItemId(i)))
        });
        let edges = old.filter(|p| !removed.contains(p)).chain(
            added
                .iter()
                .copied()
                .filter(|(u, i)| u.index() < n_users && i.index() < n_items),
        );
        let graph = BipartiteGraph::from_edges(n_users, n_items, edges)?;
        let replay = events
            .iter()
            .enumerate()
            .filter(|(k, e)| {
                e.user.index() >= n_users || e.item.index() >= n_items || hides.contains(k)
            })
            .map(|(_, e)| *e)
            .collect();
        Ok((graph, replay))
    }

    /// Runs the refit: the grown graph ([`RefitJob::refit_graph`]), the trainer regraphed
    /// onto it, `epochs` epochs (`on_epoch` after each), and the new live model with the
    /// recorded events on users and items that stay live replayed (its training
    /// interactions dated [`RefitJob::now`]). Heavy: run it off the serving thread.
    pub fn run(self, mut on_epoch: impl FnMut(&EpochStats)) -> Result<Refit> {
        let start = Instant::now();
        let (graph, replay) = self.refit_graph()?;
        let mut training = self.training.regraph(&graph)?;
        if let Some(lr) = self.lr {
            training.set_lr(lr)?;
        }
        // The schedule counts the refit's own epochs; the trainer counts on from its own.
        let first = training.epochs();
        let schedule: Vec<RateSwitch> = self
            .schedule
            .iter()
            .map(|s| RateSwitch {
                epoch: first + s.epoch,
                ..*s
            })
            .collect();
        for _ in 0..self.epochs {
            training.apply_due(&schedule)?;
            on_epoch(&training.train_epoch(|_, _| {})?);
        }
        let mut live = LiveModel::new(training.model()?, &graph, self.config, self.now)?;
        // Each trained user's interactions are as old as the user's latest event, not the
        // refit's: decay goes on from there.
        let user_times = self.dates.latest(graph.n_users(), &self.events);
        live.date_users(&user_times);
        live.share_aggregator(self.aggregator.clone());
        let content_of = |i: ItemId| self.content.get(i);
        for e in &replay {
            live.add_items_up_to(e.item.index() + 1, content_of)?;
            live.observe(e.user, e.item, e.kind, e.timestamp)?;
        }
        live.add_items_up_to(self.n_items, content_of)?;
        Ok(Refit {
            training,
            graph,
            live,
            cut: self.events.len(),
            replayed: self.events.len(),
            kept: replay.into(),
            user_times: user_times.into(),
            generation: self.generation,
            seconds: start.elapsed().as_secs_f64(),
        })
    }
}
