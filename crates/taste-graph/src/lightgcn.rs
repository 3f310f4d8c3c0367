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
//! with the Adam update of each row, so no gradient table is ever written.

use std::time::Instant;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha12Rng;
use rayon::prelude::*;

use crate::buffer::Table;
use crate::error::{Error, Result};
use crate::graph::BipartiteGraph;
use crate::ids::UserId;
use crate::optim::{AdamConfig, AdamState};
use crate::sparse::{Csr, NO_SLOT, split_rows_mut};

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
    n_users: usize,
    n_items: usize,
    dim: usize,
    layers: usize,
    /// `Â` in internal order.
    adj: Csr,
    /// Node (users, then `n_users + item`) -> internal row.
    pos: Vec<u32>,
    /// Ego table in internal order.
    ego: Table,
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

    /// The loss of a batch and its gradient with respect to the whole ego table
    /// (`(n_users + n_items) × dim`), without changing the model.
    pub fn batch_loss_and_grad(
        &self,
        batch: &[Triple],
        decay: f32,
    ) -> Result<(BatchLoss, Vec<f32>)> {
        let d = self.dim;
        let mut scratch = Scratch::new(self)?;
        let (loss, src) = forward_backward(self, batch, decay, &mut scratch)?;
        let mut grad = vec![0f32; self.ego.len()];
        let ego = &self.ego;
        let pieces = split_rows_mut(&mut grad, d, self.adj.parts());
        final_pass(
            &self.adj,
            d,
            scratch.input(src),
            &scratch,
            pieces,
            |gp, local, r, g, rc| {
                let out = &mut gp[local * d..(local + 1) * d];
                let e = &ego[r * d..(r + 1) * d];
                for ((o, &g), &e) in out.iter_mut().zip(g.iter()).zip(e) {
                    *o = g + rc * e;
                }
            },
        );
        Ok((loss, self.to_public_order(&grad)))
    }
}

/// Reusable buffers of one training step.
struct Scratch {
    /// Dense `N × d` buffers: forward layers `E_1 .. E_{K-1}`, then backward `A_k`.
    dense: Vec<Table>,
    /// Node -> row in the compact batch buffers, or `NO_SLOT`.
    slot: Vec<u32>,
    /// Nodes of the batch, in slot order.
    active: Vec<u32>,
    /// Layer K on the active rows.
    last: Vec<f32>,
    /// Final embeddings on the active rows.
    fin: Vec<f32>,
    /// `c · ∂L/∂F` on the active rows.
    gadd: Vec<f32>,
    /// L2 gradient coefficient per active row: `decay · occurrences / batch`.
    regc: Vec<f32>,
}

/// Where the input of the fused final backward pass lives.
#[derive(Debug, Clone, Copy)]
enum FinalSrc {
    /// K = 0: no propagation.
    None,
    /// K = 1: the compact `gadd` rows.
    Compact,
    /// K ≥ 2: `dense[i]`.
    Dense(usize),
}

enum FinalInput<'a> {
    None,
    Compact(&'a [f32]),
    Dense(&'a [f32]),
}

impl Scratch {
    fn new(model: &LightGcn) -> Result<Self> {
        Ok(Scratch {
            dense: (0..model.layers.saturating_sub(1))
                .map(|_| Table::zeros(model.ego.len()))
                .collect::<Result<_>>()?,
            slot: vec![NO_SLOT; model.n_users + model.n_items],
            active: Vec::new(),
            last: Vec::new(),
            fin: Vec::new(),
            gadd: Vec::new(),
            regc: Vec::new(),
        })
    }

    fn input(&self, src: FinalSrc) -> FinalInput<'_> {
        match src {
            FinalSrc::None => FinalInput::None,
            FinalSrc::Compact => FinalInput::Compact(&self.gadd),
            FinalSrc::Dense(i) => FinalInput::Dense(&self.dense[i]),
        }
    }
}

fn add_rows(dst: &mut [f32], rows: &[u32], src: &[f32], d: usize) {
    for (k, &r) in rows.iter().enumerate() {
        let o = &mut dst[r as usize * d..(r as usize + 1) * d];
        for (o, &s) in o.iter_mut().zip(&src[k * d..(k + 1) * d]) {
            *o += s;
        }
    }
}

/// `ln(1 + e^z)` without overflow.
fn softplus(z: f64) -> f64 {
    z.max(0.0) + (-z.abs()).exp().ln_1p()
}

/// Forward pass, loss and all of the backward pass but the last product; leaves the
/// final pass's input in `scratch` and says where.
fn forward_backward(
    model: &LightGcn,
    batch: &[Triple],
    decay: f32,
    s: &mut Scratch,
) -> Result<(BatchLoss, FinalSrc)> {
    let (nu, d, k_layers) = (model.n_users, model.dim, model.layers);
    let adj = &model.adj;
    let ego = &model.ego[..];
    model.check_batch(batch)?;
    // Batch nodes (internal rows) and their compact slots.
    for &a in &s.active {
        s.slot[a as usize] = NO_SLOT;
    }
    s.active.clear();
    for t in batch {
        for node in [t.user as usize, nu + t.pos as usize, nu + t.neg as usize] {
            let node = model.pos[node];
            if s.slot[node as usize] == NO_SLOT {
                s.slot[node as usize] = s.active.len() as u32;
                s.active.push(node);
            }
        }
    }
    let na = s.active.len();
    for b in [&mut s.last, &mut s.fin, &mut s.gadd] {
        b.clear();
        b.resize(na * d, 0.0);
    }
    s.regc.clear();
    s.regc.resize(na, 0.0);

    // Forward: E_1 .. E_{K-1} in full, E_K on the batch rows only.
    for k in 0..k_layers.saturating_sub(1) {
        let (done, rest) = s.dense.split_at_mut(k);
        let src = if k == 0 { ego } else { &done[k - 1][..] };
        adj.spmm(src, d, &mut rest[0])?;
    }
    if k_layers >= 1 {
        let src = if k_layers == 1 {
            ego
        } else {
            &s.dense[k_layers - 2][..]
        };
        adj.spmm_rows(&s.active, src, d, &mut s.last)?;
    }
    let c = 1.0 / (k_layers + 1) as f32;
    for (a, &node) in s.active.iter().enumerate() {
        let f = &mut s.fin[a * d..(a + 1) * d];
        let node = node as usize;
        f.copy_from_slice(&ego[node * d..(node + 1) * d]);
        for layer in &s.dense {
            for (f, &x) in f.iter_mut().zip(&layer[node * d..(node + 1) * d]) {
                *f += x;
            }
        }
        if k_layers >= 1 {
            for (f, &x) in f.iter_mut().zip(&s.last[a * d..(a + 1) * d]) {
                *f += x;
            }
        }
        for f in f.iter_mut() {
            *f *= c;
        }
    }

    // BPR loss and ∂L/∂F on the batch rows (accumulated in `gadd`), L2 coefficients.
    let inv_b = 1.0 / batch.len() as f64;
    let (mut bpr, mut sq) = (0f64, 0f64);
    let regw = (decay as f64 * inv_b) as f32;
    let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>();
    for t in batch {
        let nodes = [t.user as usize, nu + t.pos as usize, nu + t.neg as usize]
            .map(|v| model.pos[v] as usize);
        let [su, sp, sn] = nodes.map(|x| s.slot[x] as usize);
        let fu = &s.fin[su * d..(su + 1) * d];
        let fp = &s.fin[sp * d..(sp + 1) * d];
        let fnn = &s.fin[sn * d..(sn + 1) * d];
        let x = (dot(fu, fp) - dot(fu, fnn)) as f64;
        bpr += softplus(-x);
        // d softplus(-x) / dx = -sigmoid(-x)
        let g = (-(1.0 / (1.0 + x.exp())) * inv_b) as f32;
        for j in 0..d {
            let (u, p, q) = (fu[j], fp[j], fnn[j]);
            s.gadd[su * d + j] += g * (p - q);
            s.gadd[sp * d + j] += g * u;
            s.gadd[sn * d + j] -= g * u;
        }
        for (node, sl) in nodes.into_iter().zip([su, sp, sn]) {
            let e = &ego[node * d..(node + 1) * d];
            sq += e.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>();
            s.regc[sl] += regw;
        }
    }
    for g in &mut s.gadd {
        *g *= c;
    }
    let loss = BatchLoss {
        bpr: bpr * inv_b,
        reg: decay as f64 * 0.5 * sq * inv_b,
    };

    // Backward down to A_1: A_k = c·G + Â A_{k+1}.
    let src = match k_layers {
        0 => FinalSrc::None,
        1 => FinalSrc::Compact,
        _ => {
            adj.symmetric_sparse_product(&s.active, &s.gadd, d, &mut s.dense[0]);
            add_rows(&mut s.dense[0], &s.active, &s.gadd, d);
            let mut cur = 0;
            for _ in 0..k_layers - 2 {
                let next = 1 - cur;
                let (a, b) = s.dense.split_at_mut(1);
                let (from, to) = if cur == 0 {
                    (&a[0], &mut b[0])
                } else {
                    (&b[0], &mut a[0])
                };
                adj.spmm(from, d, to)?;
                add_rows(to, &s.active, &s.gadd, d);
                cur = next;
            }
            FinalSrc::Dense(cur)
        }
    };
    Ok((loss, src))
}

/// The last backward product, row by row in parallel: for every node `r` the gradient
/// row `g = (Â A_1)[r] + c·G[r]` (without L2) is handed to `sink` with the node's
/// L2 coefficient, together with its work piece (`pieces[k]` covers the rows of
/// `adj.parts()[k]..adj.parts()[k + 1]`).
fn final_pass<B, F>(
    adj: &Csr,
    d: usize,
    input: FinalInput<'_>,
    s: &Scratch,
    pieces: Vec<B>,
    sink: F,
) where
    B: Send,
    F: Fn(&mut B, usize, usize, &mut [f32], f32) + Sync,
{
    let parts = adj.parts();
    pieces
        .into_par_iter()
        .zip(parts.par_windows(2))
        .for_each(|(mut piece, w)| {
            let mut g = vec![0f32; d];
            for (local, r) in (w[0]..w[1]).enumerate() {
                match input {
                    FinalInput::None => g.fill(0.0),
                    FinalInput::Compact(xc) => adj.row_product_sparse(r, &s.slot, xc, d, &mut g),
                    FinalInput::Dense(x) => adj.row_product(r, x, d, &mut g),
                }
                let sl = s.slot[r];
                let mut rc = 0.0;
                if sl != NO_SLOT {
                    let sl = sl as usize;
                    for (g, &a) in g.iter_mut().zip(&s.gadd[sl * d..(sl + 1) * d]) {
                        *g += a;
                    }
                    rc = s.regc[sl];
                }
                sink(&mut piece, local, r, &mut g, rc);
            }
        });
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::ItemId;

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
