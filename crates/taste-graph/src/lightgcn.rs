//! LightGCN (He et al., SIGIR 2020) as in the authors' public code.
//!
//! Users and items share one embedding table `E0` of `n_users + n_items` rows (users
//! first). Propagation is `E_{k+1} = Â E_k` with the symmetric normalisation
//! `Â = D^-1/2 A D^-1/2` of the bipartite adjacency, and the final embedding is the
//! layer mean `F = (E_0 + … + E_K) / (K + 1)`. Training minimises BPR,
//! `mean softplus(F_u·F_n − F_u·F_p)` over (user, positive, negative) triples, plus
//! `decay · ½ (‖E0_u‖² + ‖E0_p‖² + ‖E0_n‖²) / batch` on the batch's ego embeddings,
//! with Adam.
//!
//! Gradients are written by hand. Because `Â` is symmetric and the loss only reads the
//! batch rows `B` of `F`, with `G = ∂L/∂F` (non-zero on `B`) and `c = 1/(K+1)`:
//! `A_K = cG`, `A_k = cG + Â A_{k+1}`, `∂L/∂E0 = A_0 + reg`. A step therefore costs
//! K−1 full products forward (the last layer is only needed on `B`), one product with
//! a `B`-supported input and K−1 full products backward, and the last of those is fused
//! with the Adam update of each row, so no gradient table is ever written. The step is
//! in `gradient.rs`, training (sampler, Adam, epochs) in [`crate::trainer`].

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;

use crate::buffer::Table;
use crate::error::{Error, Result};
use crate::graph::BipartiteGraph;
use crate::optim::AdamConfig;
use crate::sparse::Csr;

/// How the ego embeddings are initialised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Init {
    /// normal(0, [`LightGcnConfig::init_std`]), as in the PyTorch reference code
    /// (`nn.init.normal_(std=0.1)`).
    #[default]
    Normal,
    /// Xavier (Glorot) uniform, `U(-a, a)` with `a = sqrt(6 / (rows + dim))` for the user
    /// and the item table separately, as in the paper's TensorFlow code
    /// (`xavier_initializer()` on `[n_users, dim]` and `[n_items, dim]`);
    /// [`LightGcnConfig::init_std`] is not used.
    XavierUniform,
}

/// Model and training hyper-parameters; the defaults are the reference code's
/// Gowalla settings.
#[derive(Debug, Clone, PartialEq)]
pub struct LightGcnConfig {
    /// Embedding width (64).
    pub dim: usize,
    /// Propagation layers K (3).
    pub layers: usize,
    /// Triples per batch (2048).
    pub batch_size: usize,
    /// L2 weight on the batch's ego embeddings (1e-4).
    pub decay: f32,
    /// Initialisation scheme (normal, as the PyTorch reference).
    pub init: Init,
    /// Standard deviation of the normal initialisation (0.1).
    pub init_std: f32,
    /// Seed of initialisation and sampling.
    pub seed: u64,
    /// Optimiser settings (Adam, lr 1e-3).
    pub adam: AdamConfig,
}

impl Default for LightGcnConfig {
    fn default() -> Self {
        LightGcnConfig {
            dim: 64,
            layers: 3,
            batch_size: 2048,
            decay: 1e-4,
            init: Init::Normal,
            init_std: 0.1,
            seed: 2020,
            adam: AdamConfig::default(),
        }
    }
}

impl LightGcnConfig {
    /// The reference settings.
    pub fn new() -> Self {
        Self::default()
    }
    /// Sets the embedding width.
    pub fn dim(mut self, dim: usize) -> Self {
        self.dim = dim;
        self
    }
    /// Sets the number of propagation layers.
    pub fn layers(mut self, layers: usize) -> Self {
        self.layers = layers;
        self
    }
    /// Sets the batch size.
    pub fn batch_size(mut self, batch_size: usize) -> Self {
        self.batch_size = batch_size;
        self
    }
    /// Sets the L2 weight.
    pub fn decay(mut self, decay: f32) -> Self {
        self.decay = decay;
        self
    }
    /// Sets the initialisation scheme.
    pub fn init(mut self, init: Init) -> Self {
        self.init = init;
        self
    }
    /// Sets the standard deviation of the normal initialisation.
    pub fn init_std(mut self, init_std: f32) -> Self {
        self.init_std = init_std;
        self
    }
    /// Sets the seed.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }
    /// Sets Adam's learning rate.
    pub fn lr(mut self, lr: f32) -> Self {
        self.adam.lr = lr;
        self
    }

    /// `self` if every field is valid (see [`LightGcnConfig::validate`]).
    pub fn validated(self) -> Result<Self> {
        self.validate()?;
        Ok(self)
    }

    /// Checks every field.
    pub fn validate(&self) -> Result<()> {
        let bad = |message: String| Err(Error::Config { message });
        if self.dim == 0 {
            return bad("dim must be at least 1".into());
        }
        if self.batch_size == 0 {
            return bad("batch_size must be at least 1".into());
        }
        if !self.decay.is_finite() || self.decay < 0.0 {
            return bad(format!("decay must be finite and >= 0, got {}", self.decay));
        }
        if !self.init_std.is_finite() || self.init_std < 0.0 {
            return bad(format!(
                "init_std must be finite and >= 0, got {}",
                self.init_std
            ));
        }
        self.adam.validate()
    }
}

/// A BPR training triple of dense indices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Triple {
    /// The user.
    pub user: u32,
    /// An item the user interacted with.
    pub pos: u32,
    /// An item the user did not interact with.
    pub neg: u32,
}

/// The two parts of a batch's loss.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct BatchLoss {
    /// Mean BPR loss `softplus(neg − pos)` over the batch.
    pub bpr: f64,
    /// `decay · ½ Σ ‖ego‖² / batch`.
    pub reg: f64,
}

impl BatchLoss {
    /// `bpr + reg`, the quantity minimised.
    pub fn total(&self) -> f64 {
        self.bpr + self.reg
    }
}

/// Final (propagated, layer-mean) embeddings: users then items, row-major.
#[derive(Debug, Clone)]
pub struct Embeddings {
    n_users: usize,
    n_items: usize,
    dim: usize,
    data: Vec<f32>,
}

impl Embeddings {
    /// All user rows (`n_users × dim`).
    pub fn users(&self) -> &[f32] {
        &self.data[..self.n_users * self.dim]
    }
    /// All item rows (`n_items × dim`).
    pub fn items(&self) -> &[f32] {
        &self.data[self.n_users * self.dim..]
    }
    /// Embedding width.
    pub fn dim(&self) -> usize {
        self.dim
    }
    /// Number of items.
    pub fn n_items(&self) -> usize {
        self.n_items
    }
    /// Number of users.
    pub fn n_users(&self) -> usize {
        self.n_users
    }
    /// The user and item tables as candle tensors on `device`
    /// (`n_users × dim` and `n_items × dim`), e.g. for a ranker or an export.
    pub fn to_tensors(
        &self,
        device: &candle_core::Device,
    ) -> Result<(candle_core::Tensor, candle_core::Tensor)> {
        let u = candle_core::Tensor::from_slice(self.users(), (self.n_users, self.dim), device)?;
        let i = candle_core::Tensor::from_slice(self.items(), (self.n_items, self.dim), device)?;
        Ok((u, i))
    }
}

/// A LightGCN model: the graph's propagation matrix and the ego embedding table.
///
/// Internally nodes are stored in the graph's [`BipartiteGraph::locality_order`] (for
/// cache locality of the propagation); every public input and output uses the dense
/// ids: users `0..n_users`, items `0..n_items`.
#[derive(Debug)]
pub struct LightGcn {
    pub(crate) n_users: usize,
    pub(crate) n_items: usize,
    pub(crate) dim: usize,
    pub(crate) layers: usize,
    /// `Â` in internal order.
    pub(crate) adj: Csr,
    /// Node (users, then `n_users + item`) -> internal row.
    pub(crate) pos: Vec<u32>,
    /// Ego table in internal order.
    pub(crate) ego: Table,
}

/// Fills `out` with normal(0, std) values (Box–Muller).
fn normal_fill(rng: &mut StdRng, std: f32, out: &mut [f32]) {
    let mut k = 0;
    while k < out.len() {
        let u1: f64 = 1.0 - rng.random::<f64>(); // (0, 1]
        let u2: f64 = rng.random::<f64>();
        let r = (-2.0 * u1.ln()).sqrt();
        let t = std::f64::consts::TAU * u2;
        out[k] = (r * t.cos()) as f32 * std;
        if k + 1 < out.len() {
            out[k + 1] = (r * t.sin()) as f32 * std;
        }
        k += 2;
    }
}

/// Fills `out` with U(-limit, limit) values.
fn uniform_fill(rng: &mut StdRng, limit: f32, out: &mut [f32]) {
    for v in out {
        *v = (2.0 * rng.random::<f64>() - 1.0) as f32 * limit;
    }
}

/// Draws the ego rows `out` of a table (users or items) of `rows` rows in all, as
/// `config.init` says (for rows added to a trained model).
pub(crate) fn init_rows(config: &LightGcnConfig, rows: usize, rng: &mut StdRng, out: &mut [f32]) {
    match config.init {
        Init::Normal => normal_fill(rng, config.init_std, out),
        Init::XavierUniform => {
            let limit = (6.0 / (rows + config.dim) as f64).sqrt() as f32;
            uniform_fill(rng, limit, out);
        }
    }
}

impl LightGcn {
    /// A model over `graph` with ego embeddings drawn as `config.init` says.
    pub fn new(graph: &BipartiteGraph, config: &LightGcnConfig) -> Result<Self> {
        config.validate()?;
        let n = graph.n_users() + graph.n_items();
        let d = config.dim;
        let mut ego = vec![0f32; n * d];
        let mut rng = StdRng::seed_from_u64(config.seed);
        match config.init {
            Init::Normal => normal_fill(&mut rng, config.init_std, &mut ego),
            Init::XavierUniform => {
                let (users, items) = ego.split_at_mut(graph.n_users() * d);
                for (table, rows) in [(users, graph.n_users()), (items, graph.n_items())] {
                    init_rows(config, rows, &mut rng, table);
                }
            }
        }
        Self::from_embeddings(graph, config.layers, config.dim, ego)
    }

    /// A model over `graph` with the given ego table (`(n_users + n_items) × dim`).
    pub fn from_embeddings(
        graph: &BipartiteGraph,
        layers: usize,
        dim: usize,
        ego: Vec<f32>,
    ) -> Result<Self> {
        let n = graph.n_users() + graph.n_items();
        if dim == 0 || ego.len() != n * dim {
            return Err(Error::Shape {
                message: format!(
                    "ego table has {} values, expected {n} nodes x {dim}",
                    ego.len()
                ),
            });
        }
        let order = graph.locality_order();
        let adj = graph.normalized_adjacency().permuted(&order)?;
        let mut pos = vec![0u32; n];
        for (k, &v) in order.iter().enumerate() {
            pos[v as usize] = k as u32;
        }
        let mut table = Table::zeros(n * dim)?;
        for (v, &p) in pos.iter().enumerate() {
            let p = p as usize;
            table[p * dim..(p + 1) * dim].copy_from_slice(&ego[v * dim..(v + 1) * dim]);
        }
        Ok(LightGcn {
            n_users: graph.n_users(),
            n_items: graph.n_items(),
            dim,
            layers,
            adj,
            pos,
            ego: table,
        })
    }

    /// Number of users.
    pub fn n_users(&self) -> usize {
        self.n_users
    }
    /// Number of items.
    pub fn n_items(&self) -> usize {
        self.n_items
    }
    /// Embedding width.
    pub fn dim(&self) -> usize {
        self.dim
    }
    /// Propagation layers.
    pub fn layers(&self) -> usize {
        self.layers
    }
    /// `Â` in internal row order.
    pub(crate) fn internal_adjacency(&self) -> &Csr {
        &self.adj
    }
    /// Node (users, then `n_users + item`) -> internal row.
    pub(crate) fn internal_rows(&self) -> &[u32] {
        &self.pos
    }
    /// The ego table in internal row order.
    pub(crate) fn internal_ego(&self) -> &[f32] {
        &self.ego
    }
    /// Replaces the ego table (internal row order, same length).
    pub(crate) fn set_internal_ego(&mut self, ego: &[f32]) -> Result<()> {
        if ego.len() != self.ego.len() {
            return Err(Error::Shape {
                message: format!(
                    "ego table of {} values, expected {}",
                    ego.len(),
                    self.ego.len()
                ),
            });
        }
        self.ego.copy_from_slice(ego);
        Ok(())
    }
    /// Checks that every triple of `batch` is in range.
    pub(crate) fn check_batch(&self, batch: &[Triple]) -> Result<()> {
        let (nu, ni) = (self.n_users, self.n_items);
        if batch.is_empty() {
            return Err(Error::Graph {
                message: "empty batch".into(),
            });
        }
        if let Some(t) = batch
            .iter()
            .find(|t| t.user as usize >= nu || t.pos as usize >= ni || t.neg as usize >= ni)
        {
            return Err(Error::Graph {
                message: format!("triple {t:?} out of range for {nu} users and {ni} items"),
            });
        }
        Ok(())
    }
    /// A copy of the ego (layer-0) table, users then items, `(n_users + n_items) × dim`.
    pub fn ego_table(&self) -> Vec<f32> {
        self.to_public_order(&self.ego)
    }

    /// A public-order table (users, then items) in internal row order.
    pub(crate) fn to_internal_order(&self, public: &[f32]) -> Vec<f32> {
        let d = self.dim;
        let mut out = vec![0f32; public.len()];
        for (v, &p) in self.pos.iter().enumerate() {
            let p = p as usize;
            out[p * d..(p + 1) * d].copy_from_slice(&public[v * d..(v + 1) * d]);
        }
        out
    }

    /// Rows of an internal-order table in public order (users, then items).
    pub(crate) fn to_public_order(&self, internal: &[f32]) -> Vec<f32> {
        let d = self.dim;
        let mut out = vec![0f32; internal.len()];
        out.par_chunks_mut(d)
            .zip(self.pos.par_iter())
            .for_each(|(o, &p)| {
                let p = p as usize;
                o.copy_from_slice(&internal[p * d..(p + 1) * d]);
            });
        out
    }

    /// The final embeddings `(E_0 + … + E_K) / (K + 1)` of every node, computed with
    /// K parallel sparse products.
    pub fn propagate(&self) -> Result<Embeddings> {
        Ok(self.propagate_impl(false)?.0)
    }

    /// [`LightGcn::propagate`] plus, per node, the sum of its layers `0..K` without the
    /// last (`E_0 + … + E_{K-1}`, users then items, `(n_users + n_items) × dim`): the
    /// part of a node that its neighbours' next layer reads, which a fold-in
    /// ([`crate::live`]) needs to update one user without propagating the graph.
    pub fn propagate_with_partial(&self) -> Result<(Embeddings, Vec<f32>)> {
        let (e, p) = self.propagate_impl(true)?;
        Ok((e, p.unwrap_or_default()))
    }

    fn propagate_impl(&self, keep_partial: bool) -> Result<(Embeddings, Option<Vec<f32>>)> {
        let d = self.dim;
        let mut acc = self.ego.to_vec();
        let mut cur = Table::from_slice(&self.ego)?;
        let mut next = Table::zeros(self.ego.len())?;
        let mut partial = None;
        for layer in 0..self.layers {
            if keep_partial && layer + 1 == self.layers {
                partial = Some(self.to_public_order(&acc));
            }
            self.adj.spmm(&cur, d, &mut next)?;
            acc.par_chunks_mut(4096)
                .zip(next.par_chunks(4096))
                .for_each(|(a, x)| a.iter_mut().zip(x).for_each(|(a, x)| *a += x));
            std::mem::swap(&mut cur, &mut next);
        }
        let c = 1.0 / (self.layers + 1) as f32;
        acc.par_chunks_mut(4096)
            .for_each(|a| a.iter_mut().for_each(|a| *a *= c));
        if keep_partial && self.layers == 0 {
            partial = Some(vec![0f32; acc.len()]);
        }
        let emb = Embeddings {
            n_users: self.n_users,
            n_items: self.n_items,
            dim: d,
            data: self.to_public_order(&acc),
        };
        Ok((emb, partial))
    }

    /// [`LightGcn::propagate`] on a candle device (a CUDA GPU with the `cuda` feature,
    /// or the CPU): the same embeddings, computed with [`crate::device::DeviceCsr`].
    pub fn propagate_on(&self, device: &candle_core::Device) -> Result<Embeddings> {
        let d = self.dim;
        let n = self.n_users + self.n_items;
        let adj = crate::device::DeviceCsr::new(&self.adj, device)?;
        let mut cur = candle_core::Tensor::from_slice(&self.ego[..], (n, d), device)?;
        let mut acc = cur.clone();
        for _ in 0..self.layers {
            cur = adj.spmm(&cur)?;
            acc = (acc + &cur)?;
        }
        let acc = (acc / (self.layers + 1) as f64)?;
        let flat: Vec<f32> = acc.flatten_all()?.to_vec1()?;
        Ok(Embeddings {
            n_users: self.n_users,
            n_items: self.n_items,
            dim: d,
            data: self.to_public_order(&flat),
        })
    }
}

/// Checks that a model of `users` × `items` was trained over `graph`.
pub(crate) fn check_sizes(graph: &BipartiteGraph, users: usize, items: usize) -> Result<()> {
    if graph.n_users() != users || graph.n_items() != items {
        return Err(Error::Graph {
            message: format!(
                "the graph has {} users and {} items, the model {users} and {items}",
                graph.n_users(),
                graph.n_items(),
            ),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{ItemId, UserId};
    use crate::trainer::Trainer;

    fn tiny() -> BipartiteGraph {
        BipartiteGraph::from_edges(
            3,
            4,
            [(0, 0), (0, 1), (1, 1), (1, 2), (2, 3)].map(|(u, i)| (UserId(u), ItemId(i))),
        )
        .unwrap()
    }

    #[test]
    fn invalid_configs_and_batches_are_typed_errors() {
        let g = tiny();
        for bad in [
            LightGcnConfig::new().dim(0),
            LightGcnConfig::new().batch_size(0),
            LightGcnConfig::new().decay(f32::NAN),
            LightGcnConfig::new().lr(-1.0),
        ] {
            assert!(
                matches!(Trainer::new(&g, &bad), Err(Error::Config { .. })),
                "{bad:?}"
            );
        }
        let mut t = Trainer::new(&g, &LightGcnConfig::new().dim(4)).unwrap();
        let out_of_range = Triple {
            user: 0,
            pos: 0,
            neg: 4,
        };
        assert!(matches!(t.step(&[out_of_range]), Err(Error::Graph { .. })));
        assert!(matches!(t.step(&[]), Err(Error::Graph { .. })));
        assert!(
            t.step(&[Triple {
                user: 0,
                pos: 0,
                neg: 3
            }])
            .is_ok()
        );
    }

    #[test]
    fn xavier_init_is_uniform_per_table_with_the_glorot_limit() {
        let edges: Vec<(UserId, ItemId)> = (0..300u32)
            .map(|k| (UserId(k % 40), ItemId((k * 7) % 90)))
            .collect();
        let g = BipartiteGraph::from_edges(40, 90, edges).unwrap();
        let d = 16;
        let cfg = LightGcnConfig::new()
            .dim(d)
            .init(Init::XavierUniform)
            .init_std(5.0); // not used by Xavier
        let ego = LightGcn::new(&g, &cfg).unwrap().ego_table();
        let (users, items) = ego.split_at(40 * d);
        for (table, rows) in [(users, 40), (items, 90)] {
            let limit = (6.0 / (rows + d) as f64).sqrt() as f32;
            let max = table.iter().fold(0f32, |m, v| m.max(v.abs()));
            assert!(
                max <= limit && max > 0.95 * limit,
                "max {max}, limit {limit}"
            );
            let n = table.len() as f32;
            let mean = table.iter().sum::<f32>() / n;
            let var = table.iter().map(|v| v * v).sum::<f32>() / n;
            assert!(mean.abs() < 0.1 * limit, "mean {mean}");
            let uniform_var = limit * limit / 3.0;
            assert!((var / uniform_var - 1.0).abs() < 0.1, "var {var}");
        }
        // The normal default is a different table, of std init_std.
        let normal = LightGcn::new(&g, &cfg.clone().init(Init::Normal).init_std(0.1))
            .unwrap()
            .ego_table();
        let var = normal.iter().map(|v| v * v).sum::<f32>() / normal.len() as f32;
        assert!((var.sqrt() / 0.1 - 1.0).abs() < 0.05, "std {}", var.sqrt());
    }

    #[test]
    fn propagation_is_the_layer_mean_in_public_order() {
        let g = tiny();
        let (n, d) = (7, 2);
        let ego: Vec<f32> = (0..n * d).map(|i| i as f32 * 0.1 - 0.5).collect();
        let m = LightGcn::from_embeddings(&g, 2, d, ego.clone()).unwrap();
        assert_eq!(m.ego_table(), ego);
        let a = g.normalized_adjacency().to_dense();
        let mul = |x: &[f32]| {
            let mut y = vec![0f32; n * d];
            for r in 0..n {
                for c in 0..n {
                    for j in 0..d {
                        y[r * d + j] += a[r * n + c] * x[c * d + j];
                    }
                }
            }
            y
        };
        let e1 = mul(&ego);
        let e2 = mul(&e1);
        let e = m.propagate().unwrap();
        let all: Vec<f32> = e.users().iter().chain(e.items()).copied().collect();
        for k in 0..n * d {
            assert!((all[k] - (ego[k] + e1[k] + e2[k]) / 3.0).abs() < 1e-6);
        }
        let (ut, it) = e.to_tensors(&candle_core::Device::Cpu).unwrap();
        assert_eq!(ut.dims(), &[3, 2]);
        assert_eq!(it.to_vec2::<f32>().unwrap()[3], e.items()[6..8].to_vec());
    }
}
