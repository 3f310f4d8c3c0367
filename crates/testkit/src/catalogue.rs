//! A deterministic built-in catalogue for demos, tests and benches: items in "style"
//! clusters (a content embedding per item, its style as attribute 0) and simulated
//! users whose tastes drift — each user starts with a few favourite styles and, late
//! in their history, picks up a new one.

use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use taste_graph::{BipartiteGraph, Error, ItemId, LightGcnConfig, Result, UserId};

/// A configuration error (a spec out of range).
fn config(message: String) -> Error {
    Error::Config { message }
}

/// Sizes and seed of a [`Catalogue`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CatalogueSpec {
    /// Number of styles (clusters).
    pub styles: usize,
    /// Items per style.
    pub items_per_style: usize,
    /// Simulated users.
    pub users: usize,
    /// Interactions per user.
    pub events_per_user: usize,
    /// Width of the content embedding.
    pub dim: usize,
    /// Seed of everything.
    pub seed: u64,
}

impl Default for CatalogueSpec {
    fn default() -> Self {
        Self {
            styles: 16,
            items_per_style: 250,
            users: 1000,
            events_per_user: 40,
            dim: 32,
            seed: 7,
        }
    }
}

impl CatalogueSpec {
    /// A catalogue a test trains in milliseconds: 4 styles of 30 items, 60 users with 10
    /// interactions each, 8-wide content (train it with [`small_lightgcn`]).
    pub fn small() -> Self {
        Self {
            styles: 4,
            items_per_style: 30,
            users: 60,
            events_per_user: 10,
            dim: 8,
            seed: 9,
        }
    }
}

/// The LightGCN settings the examples train the catalogue with, at width `dim`: 3
/// layers, batch 2048, learning rate 0.05, seed 1.
pub fn demo_lightgcn(dim: usize) -> LightGcnConfig {
    LightGcnConfig::new()
        .dim(dim)
        .layers(3)
        .batch_size(2048)
        .lr(0.05)
        .seed(1)
}

/// Fast LightGCN settings for [`CatalogueSpec::small`]: width 8, 2 layers, batch 256,
/// learning rate 0.05, seed 3.
pub fn small_lightgcn() -> LightGcnConfig {
    LightGcnConfig::new()
        .dim(8)
        .layers(2)
        .batch_size(256)
        .lr(0.05)
        .seed(3)
}

/// One simulated interaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event {
    /// The user.
    pub user: UserId,
    /// The item.
    pub item: ItemId,
    /// When (seconds since the simulation started).
    pub time: u64,
}

/// The generated catalogue.
#[derive(Debug, Clone)]
pub struct Catalogue {
    spec: CatalogueSpec,
    /// Content embedding per item (`n_items × dim`, unit length).
    pub content: Vec<f32>,
    /// Style of each item.
    pub style: Vec<u32>,
    /// Each user's favourite styles at the start, with weights summing to 1.
    pub tastes: Vec<Vec<(u32, f32)>>,
    /// The style each user drifts to in the last quarter of their history.
    pub drift: Vec<u32>,
    /// Every interaction, ordered by user then time.
    pub events: Vec<Event>,
}

/// The seeded generator of every simulation in the workspace's tests, benches and
/// examples: ChaCha8 (`rand_chacha`), the same stream for a seed on every platform.
#[derive(Debug, Clone)]
pub struct Rng(ChaCha8Rng);

impl Rng {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Self {
        Rng(ChaCha8Rng::seed_from_u64(seed))
    }
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }
    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }
    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f32 {
        let u1 = 1.0 - self.unit();
        let u2 = self.unit();
        (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
    }
}

fn unit_rows(rows: &mut [f32], dim: usize) {
    for r in rows.chunks_exact_mut(dim) {
        let n = r.iter().map(|x| x * x).sum::<f32>().sqrt();
        if n > 0.0 {
            r.iter_mut().for_each(|x| *x /= n);
        }
    }
}

impl Catalogue {
    /// Generates the catalogue of `spec` (same spec, same catalogue).
    pub fn generate(spec: CatalogueSpec) -> Result<Self> {
        if spec.styles < 4 || spec.items_per_style == 0 || spec.users == 0 || spec.dim < 2 {
            return Err(config(format!(
                "catalogue needs >= 4 styles, >= 1 item per style, >= 1 user and dim >= 2; got {spec:?}"
            )));
        }
        if spec.events_per_user < 4 {
            return Err(config(format!(
                "events_per_user = {}, expected at least 4 (the last quarter drifts)",
                spec.events_per_user
            )));
        }
        let (d, s) = (spec.dim, spec.styles);
        let mut rng = Rng::new(spec.seed);
        let mut centroids: Vec<f32> = (0..s * d).map(|_| rng.normal()).collect();
        unit_rows(&mut centroids, d);
        let n_items = s * spec.items_per_style;
        let mut content = vec![0f32; n_items * d];
        let mut style = vec![0u32; n_items];
        for i in 0..n_items {
            let c = i % s; // interleaved so ids carry no style
            style[i] = c as u32;
            for k in 0..d {
                content[i * d + k] = centroids[c * d + k] + 0.35 * rng.normal() / (d as f32).sqrt();
            }
        }
        unit_rows(&mut content, d);
        let mut tastes = Vec::with_capacity(spec.users);
        let mut drift = Vec::with_capacity(spec.users);
        let mut events = Vec::with_capacity(spec.users * spec.events_per_user);
        let item_of = |c: usize, k: usize| (k * s + c) as u32;
        for u in 0..spec.users {
            let n_tastes = 1 + rng.below(2);
            let mut t: Vec<(u32, f32)> = Vec::new();
            while t.len() < n_tastes {
                let c = rng.below(s) as u32;
                if t.iter().all(|x| x.0 != c) {
                    t.push((c, 0.5 + rng.unit()));
                }
            }
            let sum: f32 = t.iter().map(|x| x.1).sum();
            t.iter_mut().for_each(|x| x.1 /= sum);
            let new = loop {
                let c = rng.below(s) as u32;
                if t.iter().all(|x| x.0 != c) {
                    break c;
                }
            };
            let drift_from = spec.events_per_user - spec.events_per_user / 4;
            let mut picked: Vec<u32> = Vec::new();
            let mut time = 0u64;
            for e in 0..spec.events_per_user {
                let c = if e >= drift_from {
                    new as usize
                } else if rng.unit() < 0.05 {
                    rng.below(s)
                } else {
                    let mut x = rng.unit();
                    let mut c = t[t.len() - 1].0;
                    for &(tc, w) in &t {
                        if x < w {
                            c = tc;
                            break;
                        }
                        x -= w;
                    }
                    c as usize
                };
                // A fresh item of the style if one turns up in a few draws, else a repeat.
                let mut item = item_of(c, rng.below(spec.items_per_style));
                for _ in 0..16 {
                    if !picked.contains(&item) {
                        break;
                    }
                    item = item_of(c, rng.below(spec.items_per_style));
                }
                picked.push(item);
                time += 60 + rng.below(3600) as u64;
                events.push(Event {
                    user: UserId(u as u32),
                    item: ItemId(item),
                    time,
                });
            }
            tastes.push(t);
            drift.push(new);
        }
        Ok(Self {
            spec,
            content,
            style,
            tastes,
            drift,
            events,
        })
    }

    /// The spec it was generated from.
    pub fn spec(&self) -> &CatalogueSpec {
        &self.spec
    }
    /// Number of items.
    pub fn n_items(&self) -> usize {
        self.style.len()
    }
    /// Number of users.
    pub fn n_users(&self) -> usize {
        self.tastes.len()
    }
    /// The items of `style`.
    pub fn items_of_style(&self, style: u32) -> impl Iterator<Item = ItemId> + '_ {
        self.style
            .iter()
            .enumerate()
            .filter(move |(_, s)| **s == style)
            .map(|(i, _)| ItemId(i as u32))
    }

    /// Holds out every `every`-th event of each user's history (the 1st-based
    /// `every`-th, `2·every`-th, …): the training graph and the held-out graph.
    pub fn holdout(&self, every: usize) -> Result<(BipartiteGraph, BipartiteGraph)> {
        if every < 2 {
            return Err(config(format!(
                "holdout every = {every}, expected at least 2"
            )));
        }
        let per = self.spec.events_per_user;
        let (mut train, mut test) = (Vec::new(), Vec::new());
        for (k, e) in self.events.iter().enumerate() {
            if (k % per + 1).is_multiple_of(every) {
                test.push((e.user, e.item));
            } else {
                train.push((e.user, e.item));
            }
        }
        let (nu, ni) = (self.n_users(), self.n_items());
        // An item both trained on and held out for a user (a repeat) stays in training.
        let train = BipartiteGraph::from_edges(nu, ni, train)?;
        test.retain(|&(u, i)| !train.has_edge(u, i));
        Ok((train, BipartiteGraph::from_edges(nu, ni, test)?))
    }

    /// Splits each user's history at `fraction` (by time): the graph of the earlier
    /// events, and the later events in order (to stream or to test on).
    pub fn split(&self, fraction: f32) -> Result<(BipartiteGraph, Vec<Event>)> {
        if !(0.0..=1.0).contains(&fraction) {
            return Err(config(format!("split fraction {fraction}, expected 0..=1")));
        }
        let per = self.spec.events_per_user;
        let cut = ((per as f32) * fraction).round() as usize;
        let mut edges = Vec::new();
        let mut later = Vec::new();
        for (k, e) in self.events.iter().enumerate() {
            if k % per < cut {
                edges.push((e.user, e.item));
            } else {
                later.push(*e);
            }
        }
        let g = BipartiteGraph::from_edges(self.n_users(), self.n_items(), edges)?;
        Ok((g, later))
    }
}

/// A serving-scale fixture for latency work: `n_items` items in clusters of about 500
/// (mixture vectors, `dim` wide), `users` users with `per_user` interactions over one
/// to three clusters, and an untrained one-layer LightGCN whose ego embeddings are the
/// item vectors and, per user, the mean of their items' vectors.
pub fn serving_fixture(
    n_items: usize,
    users: usize,
    per_user: usize,
    dim: usize,
    seed: u64,
) -> Result<(BipartiteGraph, taste_graph::LightGcn)> {
    if n_items < 4 || users == 0 || per_user == 0 || dim < 2 {
        return Err(config(format!(
            "serving fixture needs >= 4 items, >= 1 user, >= 1 interaction per user and dim >= 2; got {n_items} items, {users} users, {per_user} per user, dim {dim}"
        )));
    }
    let mut rng = Rng::new(seed);
    let clusters = (n_items / 500).max(4);
    let mut centroids: Vec<f32> = (0..clusters * dim).map(|_| rng.normal()).collect();
    unit_rows(&mut centroids, dim);
    let mut items = vec![0f32; n_items * dim];
    for (i, row) in items.chunks_exact_mut(dim).enumerate() {
        let c = i % clusters;
        for (k, x) in row.iter_mut().enumerate() {
            *x = centroids[c * dim + k] + 0.5 * rng.normal() / (dim as f32).sqrt();
        }
    }
    unit_rows(&mut items, dim);
    let per_cluster = n_items.div_ceil(clusters);
    let mut edges = Vec::with_capacity(users * per_user);
    let mut user_ego = vec![0f32; users * dim];
    for u in 0..users {
        let tastes: Vec<usize> = (0..1 + rng.below(3)).map(|_| rng.below(clusters)).collect();
        for _ in 0..per_user {
            let c = tastes[rng.below(tastes.len())];
            let i = (rng.below(per_cluster) * clusters + c).min(n_items - 1);
            edges.push((UserId(u as u32), ItemId(i as u32)));
            let (e, x) = (
                &mut user_ego[u * dim..(u + 1) * dim],
                &items[i * dim..(i + 1) * dim],
            );
            e.iter_mut()
                .zip(x)
                .for_each(|(e, x)| *e += x / per_user as f32);
        }
    }
    let graph = BipartiteGraph::from_edges(users, n_items, edges)?;
    user_ego.extend_from_slice(&items);
    let model = taste_graph::LightGcn::from_embeddings(&graph, 1, dim, user_ego)?;
    Ok((graph, model))
}
