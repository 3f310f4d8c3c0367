//! Real-time user updates: every interaction folds into the user's LightGCN embedding
//! at once, in O(dim), without retraining.
//!
//! LightGCN's final user embedding is `e_u = (E0_u + E1_u + … + EK_u) / (K + 1)` with
//! `E{k+1}_u = Σ_i E{k}_i / √(d_u d_i)` over the user's items. Summing the layers,
//! `E1_u + … + EK_u = Σ_i f_i / √d_u` where `f_i = (E0_i + … + E{K-1}_i) / √d_i` is
//! fixed per item once the model is trained ([`LightGcn::propagate_with_partial`]).
//! So a user is three numbers and a vector: `S_u = Σ w f_i`, the weighted mass
//! `D_u = Σ w`, the positive-event count `C_u`, and
//!
//! `e_u = (s_u E0_u + √C_u · S_u / D_u) / (K + 1)`,
//!
//! which equals LightGCN's propagation exactly for a trained user with no new events
//! (weights 1, `s_u = 1`), and is invariant to scaling all of a user's weights — so
//! time decay (`S_u` and `D_u` multiplied by `2^(-Δt / half_life)` before each new
//! event) only changes the *relative* weight of old and new interactions. The ego
//! embedding `E0_u` was trained on the training-time interactions only, so it keeps
//! their share of the mass, `s_u = D_u^train / D_u` (decayed alike): without that the
//! trained ego outvotes a drifting taste (in the streaming test, recall of the new
//! taste is 0.4% without it and 28% with it; a retrain reaches 45%). A hide pushes the user
//! away from the item (`S_u += w_hide f_i`, negative weight, mass unchanged).
//!
//! By default items keep their trained embeddings (a retrain refreshes them). With
//! [`LiveConfig::item_updates`] a trained item folds its users in the same way:
//! `e_i = (E0_i + √C_i · S_i / D_i) / (K + 1)` with `S_i = Σ w g_u` over its users'
//! fold vectors `g_u = (E0_u + … + E{K−1}_u) / √d_u` (fixed per trained user; a user
//! added live uses `K e_u / √C_u`), so a new edge moves the item for every user who
//! scores it. Items' masses are not decayed (an item's audience changes slowly next to a
//! user's taste), and the item's own fold vector `f_i`, which users read, is left as
//! trained. An item the model has
//! never seen gets a provisional embedding:
//!
//! - **without content**: the weighted mean of the current embeddings of the users who
//!   engaged with it, and `f_i ≈ K e_i / √(count)` — an approximation, stated as such;
//! - **with content** ([`LiveModel::set_aggregator`] and then
//!   [`LiveModel::add_item_with_content`] or [`LiveModel::set_item_content`]): the
//!   [`ContentAggregator`]'s `h_i` from the content alone at once, recomputed at every
//!   positive event with that weighted user mean and the event count, and
//!   `f_i = ρ h_i / √max(count, 1)` with the ratio `ρ` fitted on the trained items
//!   ([`ContentAggregator::fold_ratio`]; `K` if it was not fitted). See
//!   [`crate::inductive`].
//!
//! In both cases the users who engaged earlier keep the fold vector they read at the
//! time; only later events see the refined item. New users need nothing special: they
//! fold in the items' `f_i` like everyone else.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::graph::BipartiteGraph;
use crate::ids::{ItemId, UserId};
use crate::inductive::ContentAggregator;
use crate::interactions::InteractionKind;
use crate::lightgcn::LightGcn;

mod config;
mod items;
mod refit;

pub use config::{KindWeights, LiveConfig, MAX_RECENT};

/// One remembered positive interaction of a user.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Recent {
    /// The item.
    pub item: ItemId,
    /// The kind's fold-in weight at the time of the event.
    pub weight: f32,
    /// When it happened.
    pub time: u64,
}

/// `2^(-dt / half_life)`.
fn decay(dt: u64, half_life: f64) -> f64 {
    if half_life.is_infinite() {
        1.0
    } else {
        (-(dt as f64) / half_life * std::f64::consts::LN_2).exp()
    }
}

/// `1 / √deg` (0 for an isolated node, as the propagation's normalisation).
fn inv_sqrt_degree(deg: usize) -> f32 {
    if deg == 0 {
        0.0
    } else {
        1.0 / (deg as f32).sqrt()
    }
}

/// The scale of a fold sum `S` with (decayed) mass `D` over `C` positive events:
/// `√C / D`; 1 when there are only hides (their pushes still count), 0 when every
/// positive weight has decayed away.
fn fold_scale(mass: f64, count: u32) -> f64 {
    if mass > 0.0 {
        (count as f64).sqrt() / mass
    } else if count == 0 {
        1.0
    } else {
        0.0
    }
}

/// Inserts `v` into the sorted `set`; false if it was there.
fn insert_sorted(set: &mut Vec<u32>, v: u32) -> bool {
    match set.binary_search(&v) {
        Ok(_) => false,
        Err(p) => {
            set.insert(p, v);
            true
        }
    }
}

/// The content of a live model's items from `first` on, shared so that they can be added
/// to another model ([`LiveModel::add_items_up_to`]).
#[derive(Debug, Clone)]
pub(crate) struct ItemContent {
    pub(crate) first: usize,
    /// Item `first + k`'s content, if it has some.
    pub(crate) content: Vec<Option<Arc<[f32]>>>,
}

impl ItemContent {
    /// `live`'s items from `first` on (pointers copied, not features).
    pub(crate) fn of(live: &LiveModel, first: usize) -> Self {
        let content = (first..live.n_items())
            .map(|i| live.shared_item_content(ItemId(i as u32)).cloned())
            .collect();
        ItemContent { first, content }
    }

    /// One past the last item covered.
    pub(crate) fn end(&self) -> usize {
        self.first + self.content.len()
    }

    /// Item `i`'s content (none outside the covered items).
    pub(crate) fn get(&self, i: ItemId) -> Option<Arc<[f32]>> {
        i.index()
            .checked_sub(self.first)
            .and_then(|k| self.content.get(k))
            .and_then(Option::clone)
    }
}

/// A trained LightGCN turned into per-user state that every interaction updates.
#[derive(Debug, Clone)]
pub struct LiveModel {
    dim: usize,
    layers: usize,
    config: LiveConfig,
    // Users.
    user_ego: Vec<f32>,
    user_sum: Vec<f32>,
    user_final: Vec<f32>,
    user_mass: Vec<f64>,
    /// The part of `user_mass` that the trained ego embedding summarises (decayed alike).
    user_ego_mass: Vec<f64>,
    user_count: Vec<u32>,
    user_last: Vec<u64>,
    /// The latest time seen: construction's `now` or any event's.
    latest: u64,
    /// Construction's `now`: the time the training interactions are dated.
    trained_at: u64,
    recent: Vec<VecDeque<Recent>>,
    seen: Vec<Vec<u32>>,
    hidden: Vec<Vec<u32>>,
    // Items.
    n_trained_items: usize,
    item_final: Vec<f32>,
    item_fold: Vec<f32>,
    item_count: Vec<u32>,
    /// For items added live: weighted sum of engaged users' embeddings, and its mass.
    new_item_sum: Vec<f32>,
    new_item_mass: Vec<f64>,
    /// For items added live: their content features, if given.
    new_item_content: Vec<Option<Arc<[f32]>>>,
    /// Live items whose content was given or replaced, in order (a saved state writes
    /// Embeds live items that have content.
    aggregator: Option<Arc<ContentAggregator>>,
    // Item-side fold-in ([`LiveConfig::item_updates`]; all empty when off).
    n_trained_users: usize,
    /// Trained users' fold vectors `g_u = (E0_u + … + E{K−1}_u) / √d_u`.
    user_fold: Vec<f32>,
    /// Trained items' ego embeddings.
    item_ego: Vec<f32>,
    /// Trained items' weighted sums of their users' fold vectors, and the sums' mass.
    item_sum: Vec<f32>,
    item_mass: Vec<f64>,
    /// xorshift state of the refit's draws.
    rng: u64,
    /// The refit's candidate negatives of one step (reused, not reallocated).
    candidates: Vec<usize>,
}

impl LiveModel {
    /// The live state of `model` trained on `graph`; every training edge counts as an
    /// interaction of weight 1 at time `now`.
    pub fn new(
        model: &LightGcn,
        graph: &BipartiteGraph,
        config: LiveConfig,
        now: u64,
    ) -> Result<Self> {
        config.validate()?;
        crate::lightgcn::check_sizes(graph, model.n_users(), model.n_items())?;
        let (d, nu, ni, k) = (
            model.dim(),
            model.n_users(),
            model.n_items(),
            model.layers(),
        );
        let (emb, partial) = model.propagate_with_partial()?;
        let ego = model.ego_table();
        let mut item_fold = partial[nu * d..].to_vec();
        let mut item_count = vec![0u32; ni];
        for (i, f) in item_fold.chunks_exact_mut(d).enumerate() {
            let deg = graph.users_of(ItemId(i as u32)).len();
            item_count[i] = deg as u32;
            f.iter_mut().for_each(|x| *x *= inv_sqrt_degree(deg));
        }
        let mut user_sum = vec![0f32; nu * d];
        let mut user_mass = vec![0f64; nu];
        let mut user_count = vec![0u32; nu];
        let mut recent = Vec::with_capacity(nu);
        let mut seen = Vec::with_capacity(nu);
        for u in 0..nu {
            let items = graph.items_of(UserId(u as u32));
            let s = &mut user_sum[u * d..(u + 1) * d];
            for &i in items {
                let f = &item_fold[i as usize * d..(i as usize + 1) * d];
                s.iter_mut().zip(f).for_each(|(s, f)| *s += f);
            }
            user_mass[u] = items.len() as f64;
            user_count[u] = items.len() as u32;
            let skip = items.len().saturating_sub(config.recent);
            recent.push(
                items[skip..]
                    .iter()
                    .map(|&i| Recent {
                        item: ItemId(i),
                        weight: 1.0,
                        time: now,
                    })
                    .collect(),
            );
            seen.push(items.to_vec());
        }
        let mut live = LiveModel {
            dim: d,
            layers: k,
            config,
            user_ego: ego[..nu * d].to_vec(),
            user_sum,
            user_final: emb.users().to_vec(),
            user_ego_mass: user_mass.clone(),
            user_mass,
            user_count,
            user_last: vec![now; nu],
            latest: now,
            trained_at: now,
            recent,
            seen,
            hidden: vec![Vec::new(); nu],
            n_trained_items: ni,
            item_final: emb.items().to_vec(),
            item_fold,
            item_count,
            new_item_sum: Vec::new(),
            new_item_mass: Vec::new(),
            new_item_content: Vec::new(),
            aggregator: None,
            n_trained_users: nu,
            user_fold: Vec::new(),
            item_ego: Vec::new(),
            item_sum: Vec::new(),
            item_mass: Vec::new(),
            rng: 0x9E37_79B9_7F4A_7C15,
            candidates: Vec::new(),
        };
        if config.item_updates {
            let mut user_fold = partial[..nu * d].to_vec();
            for (u, g) in user_fold.chunks_exact_mut(d).enumerate() {
                let deg = graph.items_of(UserId(u as u32)).len();
                g.iter_mut().for_each(|x| *x *= inv_sqrt_degree(deg));
            }
            let mut item_sum = vec![0f32; ni * d];
            for (i, s) in item_sum.chunks_exact_mut(d).enumerate() {
                for &u in graph.users_of(ItemId(i as u32)) {
                    let g = &user_fold[u as usize * d..(u as usize + 1) * d];
                    s.iter_mut().zip(g).for_each(|(s, g)| *s += g);
                }
            }
            live.item_mass = live.item_count.iter().map(|&c| c as f64).collect();
            live.item_ego = ego[nu * d..].to_vec();
            live.item_sum = item_sum;
            live.user_fold = user_fold;
            for i in 0..ni {
                live.refresh_item(i);
            }
        }
        // The fold-in formula reproduces the propagation; recomputing keeps users with
        // and without events on exactly the same arithmetic path.
        for u in 0..nu {
            live.refresh_user(u);
        }
        Ok(live)
    }

    /// Embedding width.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Propagation layers of the model folded into.
    pub fn layers(&self) -> usize {
        self.layers
    }

    /// Number of users (trained and added live).
    pub fn n_users(&self) -> usize {
        self.user_mass.len()
    }

    /// Number of items (trained and added live).
    pub fn n_items(&self) -> usize {
        self.item_count.len()
    }

    /// The configuration.
    pub fn config(&self) -> &LiveConfig {
        &self.config
    }

    /// A user's current embedding.
    pub fn user(&self, user: UserId) -> Option<&[f32]> {
        let u = user.index();
        self.user_final.get(u * self.dim..(u + 1) * self.dim)
    }

    /// An item's embedding (trained, or provisional for an item added live).
    pub fn item(&self, item: ItemId) -> Option<&[f32]> {
        let i = item.index();
        self.item_final.get(i * self.dim..(i + 1) * self.dim)
    }

    /// All item embeddings, `n_items × dim`, row `i` = item `i`.
    pub fn items(&self) -> &[f32] {
        &self.item_final
    }

    /// All user embeddings, `n_users × dim`, row `u` = user `u`.
    pub fn users(&self) -> &[f32] {
        &self.user_final
    }

    /// How many positive interactions each item has had (training edges + live events).
    pub fn item_counts(&self) -> &[u32] {
        &self.item_count
    }

    /// Items the user has interacted with positively, sorted (empty for an unknown user).
    pub fn seen(&self, user: UserId) -> &[u32] {
        self.seen.get(user.index()).map_or(&[], |v| v.as_slice())
    }

    /// Items the user has hidden, sorted (empty for an unknown user).
    pub fn hidden(&self, user: UserId) -> &[u32] {
        self.hidden.get(user.index()).map_or(&[], |v| v.as_slice())
    }

    /// The user's most recent positive interactions, oldest first.
    pub fn recent(&self, user: UserId) -> impl ExactSizeIterator<Item = &Recent> {
        static EMPTY: VecDeque<Recent> = VecDeque::new();
        self.recent.get(user.index()).unwrap_or(&EMPTY).iter()
    }

    /// The time of the user's latest event (or the model's creation time).
    pub fn last_time(&self, user: UserId) -> Option<u64> {
        self.user_last.get(user.index()).copied()
    }

    /// Dates the first `last.len()` users' interactions at `last` (e.g. their latest
    /// events in the model a refit replaces) instead of the construction's `now`, so that
    /// time decay goes on from each user's own last activity.
    pub(crate) fn date_users(&mut self, last: &[u64]) {
        for (slot, &t) in self.user_last.iter_mut().zip(last) {
            *slot = t;
            self.latest = self.latest.max(t);
        }
    }

    /// The latest time the model has seen: the construction's `now` or a later event's.
    pub fn latest_time(&self) -> u64 {
        self.latest
    }

    /// The time the training interactions are dated: the construction's `now`.
    pub fn trained_at(&self) -> u64 {
        self.trained_at
    }

    /// Folds one interaction into `user`'s embedding. `user` and `item` are existing
    /// dense ids or exactly the next new one ([`LiveModel::n_users`] /
    /// [`LiveModel::n_items`]), which adds a user or an item.
    pub fn observe(
        &mut self,
        user: UserId,
        item: ItemId,
        kind: InteractionKind,
        time: u64,
    ) -> Result<()> {
        let (u, i, d) = (user.index(), item.index(), self.dim);
        if u > self.n_users() {
            return Err(Error::Graph {
                message: format!(
                    "user {u} is out of range: {} users, a new user must take id {}",
                    self.n_users(),
                    self.n_users()
                ),
            });
        }
        if i > self.n_items() {
            return Err(Error::Graph {
                message: format!(
                    "item {i} is out of range: {} items, a new item must take id {}",
                    self.n_items(),
                    self.n_items()
                ),
            });
        }
        if u == self.n_users() {
            self.add_user(time);
        }
        self.latest = self.latest.max(time);
        if i == self.n_items() {
            self.add_item();
        }
        // Decay the user's history to `time` (an out-of-order event is decayed instead).
        let last = self.user_last[u];
        let mut w = self.config.weights.of(kind) as f64;
        if time >= last {
            let f = decay(time - last, self.config.half_life);
            if f != 1.0 {
                self.user_sum[u * d..(u + 1) * d]
                    .iter_mut()
                    .for_each(|s| *s = (*s as f64 * f) as f32);
                self.user_mass[u] *= f;
                self.user_ego_mass[u] *= f;
            }
            self.user_last[u] = time;
        } else {
            w *= decay(last - time, self.config.half_life);
        }
        // A new item learns from the user before the user learns from it.
        if i >= self.n_trained_items && kind.is_positive() {
            self.update_new_item(i, u, w);
        }
        let f = &self.item_fold[i * d..(i + 1) * d];
        self.user_sum[u * d..(u + 1) * d]
            .iter_mut()
            .zip(f)
            .for_each(|(s, f)| *s += (w * *f as f64) as f32);
        if kind.is_positive() {
            self.user_mass[u] += w;
            self.user_count[u] += 1;
            self.item_count[i] += 1;
            insert_sorted(&mut self.seen[u], i as u32);
        }
        self.remember(u, item, kind, time);
        self.refresh_user(u);
        if self.config.item_updates && i < self.n_trained_items {
            self.update_trained_item(i, u, self.config.weights.of(kind), kind.is_positive());
        }
        if kind.is_positive() {
            self.refit_user(u);
        }
        Ok(())
    }

    /// The weight of `u`'s ego embedding in its final embedding: its share of the
    /// (decayed) mass over the K + 1 layers.
    fn ego_coefficient(&self, u: usize) -> f64 {
        let mass = self.user_mass[u];
        let share = if mass > 0.0 && self.user_ego_mass[u] > 0.0 {
            self.user_ego_mass[u] / mass
        } else {
            1.0
        };
        share / (self.layers + 1) as f64
    }

    fn add_user(&mut self, now: u64) {
        let d = self.dim;
        self.user_ego.extend(std::iter::repeat_n(0.0, d));
        self.user_sum.extend(std::iter::repeat_n(0.0, d));
        self.user_final.extend(std::iter::repeat_n(0.0, d));
        self.user_mass.push(0.0);
        self.user_ego_mass.push(0.0);
        self.user_count.push(0);
        self.user_last.push(now);
        self.recent.push(VecDeque::new());
        self.seen.push(Vec::new());
        self.hidden.push(Vec::new());
    }

    fn add_item(&mut self) {
        let d = self.dim;
        self.item_final.extend(std::iter::repeat_n(0.0, d));
        self.item_fold.extend(std::iter::repeat_n(0.0, d));
        self.item_count.push(0);
        self.new_item_sum.extend(std::iter::repeat_n(0.0, d));
        self.new_item_mass.push(0.0);
        self.new_item_content.push(None);
    }

    /// Takes over from `old` (the model this one replaces, with the same users) what a
    /// training graph does not hold: each user's hidden items and recent positives. The
    /// tables are moved, not copied (O(1)); `old` is left with this model's.
    pub(crate) fn inherit_users(&mut self, old: &mut LiveModel) -> Result<()> {
        if old.hidden.len() != self.hidden.len() {
            return Err(Error::Graph {
                message: format!(
                    "the replaced model has {} users, this one {}",
                    old.hidden.len(),
                    self.hidden.len()
                ),
            });
        }
        std::mem::swap(&mut self.hidden, &mut old.hidden);
        std::mem::swap(&mut self.recent, &mut old.recent);
        Ok(())
    }

    /// Records an event in user `u`'s recent positives (a positive moves the item to
    /// the newest end, dropping the oldest past the configured length) or hidden items (a
    /// hide, which also drops the item from the recent ones).
    fn remember(&mut self, u: usize, item: ItemId, kind: InteractionKind, time: u64) {
        let i = item.index();
        let r = &mut self.recent[u];
        if let Some(p) = r.iter().position(|x| x.item.index() == i) {
            r.remove(p);
        }
        if kind.is_positive() {
            if r.len() == self.config.recent {
                r.pop_front();
            }
            r.push_back(Recent {
                item,
                weight: self.config.weights.of(kind),
                time,
            });
        } else {
            insert_sorted(&mut self.hidden[u], i as u32);
        }
    }

    /// Each user's hidden items (sorted) and recent positives, as
    /// [`LiveModel::inherit_users`] moves them.
    pub(crate) fn user_memory(&self) -> (&[Vec<u32>], &[VecDeque<Recent>]) {
        (&self.hidden, &self.recent)
    }

    /// Replaces every user's hidden items and recent positives (one entry per user;
    /// hidden lists sorted without repeats, items known; recent lists oldest first,
    /// trimmed to the configured length).
    pub(crate) fn set_user_memory(
        &mut self,
        hidden: Vec<Vec<u32>>,
        mut recent: Vec<VecDeque<Recent>>,
    ) -> Result<()> {
        let (nu, ni) = (self.n_users(), self.n_items());
        if hidden.len() != nu || recent.len() != nu {
            return Err(Error::Graph {
                message: format!(
                    "hidden and recent items of {} and {} users for a model of {nu} users",
                    hidden.len(),
                    recent.len()
                ),
            });
        }
        for (u, h) in hidden.iter().enumerate() {
            if let Some(w) = h.windows(2).find(|w| w[0] >= w[1]) {
                return Err(Error::Graph {
                    message: format!(
                        "user {u}'s hidden items are not sorted and distinct ({} then {})",
                        w[0], w[1]
                    ),
                });
            }
            let known = h.iter().map(|&i| i as usize);
            let recent_items = recent[u].iter().map(|r| r.item.index());
            if let Some(i) = known.chain(recent_items).find(|&i| i >= ni) {
                return Err(Error::Graph {
                    message: format!("user {u} remembers item {i}, the model has {ni} items"),
                });
            }
        }
        for r in &mut recent {
            let excess = r.len().saturating_sub(self.config.recent);
            r.drain(..excess);
        }
        self.hidden = hidden;
        self.recent = recent;
        Ok(())
    }

    fn refresh_user(&mut self, u: usize) {
        let d = self.dim;
        let scale = fold_scale(self.user_mass[u], self.user_count[u]);
        // The ego embedding was trained on the training-time interactions: it keeps
        // their share of the user's (decayed) mass, so new tastes are not outvoted by it.
        let ego_coef = self.ego_coefficient(u);
        let inv = 1.0 / (self.layers + 1) as f64;
        let (ego, sum) = (
            &self.user_ego[u * d..(u + 1) * d],
            &self.user_sum[u * d..(u + 1) * d],
        );
        let out = &mut self.user_final[u * d..(u + 1) * d];
        for c in 0..d {
            out[c] = (ego_coef * ego[c] as f64 + scale * sum[c] as f64 * inv) as f32;
        }
    }
}
