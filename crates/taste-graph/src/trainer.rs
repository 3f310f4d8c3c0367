//! Training LightGCN: the reference code's BPR sampler, Adam steps over the hand-written
//! gradient (`gradient.rs`), epochs.

use std::time::Instant;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha12Rng;

use crate::error::{Error, Result};
use crate::gradient::{Scratch, final_pass, forward_backward};
use crate::graph::BipartiteGraph;
use crate::ids::UserId;
use crate::lightgcn::{BatchLoss, LightGcn, LightGcnConfig, Triple, init_rows};
use crate::optim::AdamState;
use crate::sparse::split_rows_mut;

/// Summary of one training epoch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EpochStats {
    /// Mean over batches of the total batch loss (as the reference code prints).
    pub loss: f64,
    /// Mean over batches of the BPR part.
    pub bpr: f64,
    /// Batches run.
    pub batches: usize,
    /// Triples sampled.
    pub samples: usize,
    /// Wall-clock seconds, sampling included.
    pub seconds: f64,
}

/// Trains a [`LightGcn`] with BPR and Adam on the current rayon pool.
#[derive(Debug)]
pub struct Trainer {
    pub(crate) model: LightGcn,
    pub(crate) config: LightGcnConfig,
    pub(crate) sampler: Sampler,
    pub(crate) adam: AdamState,
    pub(crate) epochs: usize,
}

/// The reference code's BPR sampler over a training graph.
#[derive(Debug)]
pub(crate) struct Sampler {
    graph: BipartiteGraph,
    /// Users that can be sampled: at least one item, and at least one item missing.
    sample_users: Vec<u32>,
    /// `StdRng`'s generator, named so that its position can be saved and restored.
    rng: ChaCha12Rng,
}

impl Sampler {
    pub(crate) fn new(graph: &BipartiteGraph, seed: u64) -> Result<Self> {
        let sample_users: Vec<u32> = (0..graph.n_users() as u32)
            .filter(|&u| {
                let k = graph.items_of(UserId(u)).len();
                k > 0 && k < graph.n_items()
            })
            .collect();
        if sample_users.is_empty() {
            return Err(Error::Graph {
                message: "no user has both an item and a missing item to sample".into(),
            });
        }
        Ok(Sampler {
            rng: ChaCha12Rng::seed_from_u64(seed ^ 0x5EED_5A3B_1E00_0001),
            graph: graph.clone(),
            sample_users,
        })
    }

    /// The generator's position in its stream (for a checkpoint).
    pub(crate) fn position(&self) -> u128 {
        self.rng.get_word_pos()
    }

    /// Moves the generator to a saved position.
    pub(crate) fn set_position(&mut self, word_pos: u128) {
        self.rng.set_word_pos(word_pos);
    }

    /// One epoch's triples (see [`Trainer::sample_epoch`]).
    pub(crate) fn sample_epoch(&mut self) -> Vec<Triple> {
        let ni = self.graph.n_items() as u32;
        (0..self.graph.n_edges())
            .map(|_| {
                let u = self.sample_users[self.rng.random_range(0..self.sample_users.len())];
                let items = self.graph.items_of(UserId(u));
                let pos = items[self.rng.random_range(0..items.len())];
                let neg = loop {
                    let j = self.rng.random_range(0..ni);
                    if items.binary_search(&j).is_err() {
                        break j;
                    }
                };
                Triple { user: u, pos, neg }
            })
            .collect()
    }
}

impl Trainer {
    /// A freshly initialised model over the training graph.
    pub fn new(graph: &BipartiteGraph, config: &LightGcnConfig) -> Result<Self> {
        let model = LightGcn::new(graph, config)?;
        Self::with_model(model, graph, config)
    }

    /// Continues training `model` (which must be over `graph`).
    pub fn with_model(
        model: LightGcn,
        graph: &BipartiteGraph,
        config: &LightGcnConfig,
    ) -> Result<Self> {
        config.validate()?;
        if model.n_users != graph.n_users()
            || model.n_items != graph.n_items()
            || model.dim != config.dim
            || model.layers != config.layers
        {
            return Err(Error::Config {
                message: "model and graph/config sizes differ".into(),
            });
        }
        let sampler = Sampler::new(graph, config.seed)?;
        let adam = AdamState::new(config.adam, model.ego.len())?;
        Ok(Trainer {
            model,
            config: config.clone(),
            sampler,
            adam,
            epochs: 0,
        })
    }

    /// The model being trained.
    pub fn model(&self) -> &LightGcn {
        &self.model
    }

    /// Gives up the trainer, keeping the model.
    pub fn into_model(self) -> LightGcn {
        self.model
    }

    /// Epochs completed.
    pub fn epochs(&self) -> usize {
        self.epochs
    }

    /// The configuration, with the rate and batch size a schedule last set.
    pub fn config(&self) -> &LightGcnConfig {
        &self.config
    }

    /// Changes Adam's learning rate from the next step on (moments kept), for a
    /// schedule; the rate must be finite and > 0.
    pub fn set_lr(&mut self, lr: f32) -> Result<()> {
        self.adam.set_lr(lr)?;
        self.config.adam.lr = lr;
        Ok(())
    }

    /// Changes the batch size from the next epoch on; it must be at least 1.
    pub fn set_batch_size(&mut self, batch_size: usize) -> Result<()> {
        self.config = self.config.clone().batch_size(batch_size).validated()?;
        Ok(())
    }

    /// One epoch's triples, as the reference sampler draws them: as many as there are
    /// training edges, each with a uniform user (among users with items), a uniform
    /// positive from that user's items and a uniform negative among the other items.
    pub fn sample_epoch(&mut self) -> Vec<Triple> {
        self.sampler.sample_epoch()
    }

    /// One optimisation step on a batch; returns the batch's loss before the step.
    pub fn step(&mut self, batch: &[Triple]) -> Result<BatchLoss> {
        let mut scratch = Scratch::new(&self.model)?;
        self.step_with(batch, &mut scratch)
    }

    fn step_with(&mut self, batch: &[Triple], scratch: &mut Scratch) -> Result<BatchLoss> {
        let d = self.model.dim;
        let (loss, src) = forward_backward(&self.model, batch, self.config.decay, scratch)?;
        let (st, m, v) = self.adam.begin_step();
        let parts = self.model.adj.parts();
        let pieces: Vec<_> = split_rows_mut(&mut self.model.ego, d, parts)
            .into_iter()
            .zip(split_rows_mut(m, d, parts))
            .zip(split_rows_mut(v, d, parts))
            .collect();
        final_pass(
            &self.model.adj,
            d,
            scratch.input(src),
            scratch,
            pieces,
            |((e, m), v), local, _r, g, rc| {
                let range = local * d..(local + 1) * d;
                let e = &mut e[range.clone()];
                if rc != 0.0 {
                    for (g, &e) in g.iter_mut().zip(e.iter()) {
                        *g += rc * e;
                    }
                }
                st.apply(e, g, &mut m[range.clone()], &mut v[range]);
            },
        );
        Ok(loss)
    }

    /// Samples and trains one epoch; `on_batch(done, total)` is called after every batch.
    pub fn train_epoch(&mut self, mut on_batch: impl FnMut(usize, usize)) -> Result<EpochStats> {
        let start = Instant::now();
        let triples = self.sample_epoch();
        let total = triples.len().div_ceil(self.config.batch_size);
        let mut scratch = Scratch::new(&self.model)?;
        let (mut loss, mut bpr) = (0.0, 0.0);
        for (b, batch) in triples.chunks(self.config.batch_size).enumerate() {
            let l = self.step_with(batch, &mut scratch)?;
            loss += l.total();
            bpr += l.bpr;
            on_batch(b + 1, total);
        }
        self.epochs += 1;
        let nb = total.max(1) as f64;
        Ok(EpochStats {
            loss: loss / nb,
            bpr: bpr / nb,
            batches: total,
            samples: triples.len(),
            seconds: start.elapsed().as_secs_f64(),
        })
    }
}

/// What a checkpoint holds besides the tables: the configuration (rate and batch as a
/// schedule left them), epochs done, Adam steps and the sampler's stream position.
pub(crate) struct Progress {
    pub(crate) config: LightGcnConfig,
    pub(crate) epochs: usize,
    pub(crate) steps: u64,
    pub(crate) position: u128,
}

/// A checkpoint read back: its progress and the ego table and Adam moments, in public
/// order (users then items).
pub struct Saved {
    pub(crate) progress: Progress,
    pub(crate) ego: Vec<f32>,
    pub(crate) m1: Vec<f32>,
    pub(crate) m2: Vec<f32>,
}

impl Saved {
    /// The state of a model of `users` × `items` carried onto `graph`, which has as many
    /// users and items or more (an interaction graph that grew): the rows of new users
    /// and items are drawn as the configuration's init says (seeded by the seed and the
    /// epochs done) with zero Adam moments; everything else is kept.
    pub(crate) fn grown(self, users: usize, items: usize, graph: &BipartiteGraph) -> Result<Saved> {
        let (nu, ni) = (graph.n_users(), graph.n_items());
        if nu < users || ni < items {
            return Err(Error::Graph {
                message: format!(
                    "the model has {users} users and {items} items, the new graph only \
                     {nu} and {ni}: a graph can gain users and items, not lose them"
                ),
            });
        }
        if (nu, ni) == (users, items) {
            return Ok(self);
        }
        let c = &self.progress.config;
        let d = c.dim;
        let mut rng = StdRng::seed_from_u64(
            c.seed ^ (self.progress.epochs as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15),
        );
        let mut fresh_users = vec![0f32; (nu - users) * d];
        let mut fresh_items = vec![0f32; (ni - items) * d];
        init_rows(c, nu, &mut rng, &mut fresh_users);
        init_rows(c, ni, &mut rng, &mut fresh_items);
        let zeros_u = vec![0f32; fresh_users.len()];
        let zeros_i = vec![0f32; fresh_items.len()];
        let grow = |t: &[f32], new_u: &[f32], new_i: &[f32]| {
            let (old_u, old_i) = t.split_at(users * d);
            [old_u, new_u, old_i, new_i].concat()
        };
        Ok(Saved {
            ego: grow(&self.ego, &fresh_users, &fresh_items),
            m1: grow(&self.m1, &zeros_u, &zeros_i),
            m2: grow(&self.m2, &zeros_u, &zeros_i),
            progress: self.progress,
        })
    }
}

impl Trainer {
    /// A trainer that carries this one's training onto `graph`, the training graph after
    /// new interactions (the same users and items, or more): the embeddings, Adam's
    /// moments and step count, the rate, batch size and epoch count are kept, new users'
    /// and items' rows are initialised as the config says, and its sampler draws from
    /// `graph`. A few epochs of it (a background refit) re-optimise every embedding for
    /// the new edges at a fraction of a retrain's cost. `self` is left as it was (drop
    /// it, or keep serving from it while the refit runs); on `graph` itself the result is
    /// an exact copy. A graph with fewer users or items is [`Error::Graph`].
    pub fn regraph(&self, graph: &BipartiteGraph) -> Result<Trainer> {
        let (users, items) = (self.model.n_users(), self.model.n_items());
        Self::from_saved(graph, self.saved().grown(users, items, graph)?)
    }

    /// The whole state, tables in public order.
    pub(crate) fn saved(&self) -> Saved {
        let m = &self.model;
        let mut config = self.config.clone();
        config.adam = *self.adam.config();
        let (mom1, mom2) = self.adam.moments();
        Saved {
            progress: Progress {
                config,
                epochs: self.epochs,
                steps: self.adam.steps(),
                position: self.sampler.position(),
            },
            ego: m.ego_table(),
            m1: m.to_public_order(mom1),
            m2: m.to_public_order(mom2),
        }
    }

    /// A trainer over `graph` from a saved state (tables in public order, sized for
    /// `graph`).
    pub(crate) fn from_saved(graph: &BipartiteGraph, saved: Saved) -> Result<Trainer> {
        let Saved {
            progress: p,
            ego,
            m1,
            m2,
        } = saved;
        let model = LightGcn::from_embeddings(graph, p.config.layers, p.config.dim, ego)?;
        let adam_state = AdamState::restore(
            p.config.adam,
            &model.to_internal_order(&m1),
            &model.to_internal_order(&m2),
            p.steps,
        )?;
        let mut sampler = Sampler::new(graph, p.config.seed)?;
        sampler.set_position(p.position);
        Ok(Trainer {
            model,
            config: p.config,
            sampler,
            adam: adam_state,
            epochs: p.epochs,
        })
    }
}
