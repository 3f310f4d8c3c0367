//! Training checkpoints: a [`Trainer`]'s whole state in one file, so that a long
//! schedule can stop and go on exactly where it stopped.
//!
//! [`Trainer::save_checkpoint`] writes the model, Adam's moments and step count, the
//! sampler's position in its random stream, the epochs done and the configuration (rate
//! and batch included, as a schedule left them); [`Trainer::resume`] reads it back over
//! the same training graph. A resumed trainer draws the same triples and takes the same
//! steps as one that never stopped (bit for bit, `tests/checkpoint.rs`).
//! [`crate::DeviceTrainer::save_checkpoint`] / [`crate::DeviceTrainer::resume`] write and
//! read the same file, so a schedule can move between the CPU kernels and a GPU at any
//! checkpoint (the two paths differ only in rounding). The same state carries a trainer
//! onto a graph that gained edges, users or items ([`Trainer::regraph`],
//! [`crate::DeviceTrainer::regraph`]): a background refit without a restart.
//!
//! The file is a taste-graph snapshot (`src/snapshot.rs`: safetensors, written
//! atomically, so a crash leaves the previous checkpoint whole) of kind `trainer`: the
//! tensors `ego`, `adam_m1`, `adam_m2` (f32, public order: users then items,
//! `(users + items) × dim` each) and a JSON meta with the graph's sizes and a crc32 of
//! its adjacency (a checkpoint resumes only over the graph it was saved with), the
//! configuration, epochs done, Adam steps and the sampler's position.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::graph::BipartiteGraph;
use crate::ids::UserId;

use crate::lightgcn::{Init, LightGcnConfig, check_sizes};
use crate::optim::AdamConfig;
use crate::snapshot::{self, Data};
use crate::trainer::{Progress, Saved, Trainer};

const KIND: &str = "trainer";
const VERSION: u32 = 1;
/// crc32 of the graph's adjacency (each user's item count and items), which a
/// checkpoint must be resumed over.
fn graph_fingerprint(graph: &BipartiteGraph) -> u32 {
    let mut h = crc32fast::Hasher::new();
    for u in 0..graph.n_users() {
        let items = graph.items_of(UserId(u as u32));
        h.update(&(items.len() as u32).to_le_bytes());
        for &i in items {
            h.update(&i.to_le_bytes());
        }
    }
    h.finalize()
}

/// A checkpoint's scalars, as its snapshot meta holds them.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Meta {
    pub(crate) users: u64,
    pub(crate) items: u64,
    edges: u64,
    /// crc32 of the training graph's adjacency.
    graph_crc: u32,
    dim: usize,
    layers: usize,
    batch_size: usize,
    decay: f32,
    /// `normal` or `xavier_uniform`.
    init: String,
    init_std: f32,
    seed: u64,
    adam: AdamMeta,
    epochs: usize,
    steps: u64,
    /// The sampler's position in its random stream (a u128, in decimal: JSON numbers
    /// are not that wide everywhere).
    sampler_position: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct AdamMeta {
    lr: f32,
    beta1: f32,
    beta2: f32,
    eps: f32,
}

/// The scalars of a checkpoint of `p` over `graph`.
pub(crate) fn meta(graph: &BipartiteGraph, p: &Progress) -> Meta {
    let c = &p.config;
    Meta {
        users: graph.n_users() as u64,
        items: graph.n_items() as u64,
        edges: graph.n_edges() as u64,
        graph_crc: graph_fingerprint(graph),
        dim: c.dim,
        layers: c.layers,
        batch_size: c.batch_size,
        decay: c.decay,
        init: match c.init {
            Init::Normal => "normal",
            Init::XavierUniform => "xavier_uniform",
        }
        .into(),
        init_std: c.init_std,
        seed: c.seed,
        adam: AdamMeta {
            lr: c.adam.lr,
            beta1: c.adam.beta1,
            beta2: c.adam.beta2,
            eps: c.adam.eps,
        },
        epochs: p.epochs,
        steps: p.steps,
        sampler_position: p.position.to_string(),
    }
}

/// The tensors of a checkpoint of `s` over `graph` (sizes checked), named as in a
/// snapshot.
pub(crate) fn tensors<'a>(
    graph: &BipartiteGraph,
    s: &'a Saved,
) -> Result<[(&'static str, Data<'a>); 3]> {
    let n = (graph.n_users() + graph.n_items()) * s.progress.config.dim;
    if [s.ego.len(), s.m1.len(), s.m2.len()] != [n; 3] {
        return Err(Error::Graph {
            message: format!(
                "checkpoint tables of {}, {} and {} values for {} nodes x {}",
                s.ego.len(),
                s.m1.len(),
                s.m2.len(),
                graph.n_users() + graph.n_items(),
                s.progress.config.dim
            ),
        });
    }
    Ok([
        ("ego", Data::F32(&s.ego)),
        ("adam_m1", Data::F32(&s.m1)),
        ("adam_m2", Data::F32(&s.m2)),
    ])
}

/// Writes a checkpoint of `s` over `graph` to `path`, atomically.
pub(crate) fn write(path: &Path, graph: &BipartiteGraph, s: &Saved) -> Result<()> {
    let bytes = snapshot::encode(
        KIND,
        VERSION,
        &meta(graph, &s.progress),
        &tensors(graph, s)?,
    )?;
    snapshot::write_file(path, &bytes)
}

/// Reads the checkpoint at `path`, which must have been saved over `graph` (checked:
/// sizes and a crc32 of the adjacency).
pub(crate) fn read(graph: &BipartiteGraph, path: &Path) -> Result<Saved> {
    let bytes = snapshot::read_file(path)?;
    let snap = snapshot::decode::<Meta>(path, bytes.as_slice(), KIND, VERSION..=VERSION)?;
    saved_from(path, graph, &snap.meta, &snap)
}

/// The trainer state whose scalars are `m` and whose tables are `snap`'s (from `path`),
/// over `graph` (checked: sizes and a crc32 of the adjacency).
pub(crate) fn saved_from<M>(
    path: &Path,
    graph: &BipartiteGraph,
    m: &Meta,
    snap: &snapshot::Snapshot<'_, M>,
) -> Result<Saved> {
    let this_fp = graph_fingerprint(graph);
    let sizes = (graph.n_users(), graph.n_items(), graph.n_edges());
    if (m.users, m.items, m.edges) != (sizes.0 as u64, sizes.1 as u64, sizes.2 as u64)
        || m.graph_crc != this_fp
    {
        return Err(Error::Graph {
            message: format!(
                "{} was saved over a graph of {} users, {} items, {} edges (crc32 {:08x}); \
                 this one has {}, {}, {} (crc32 {this_fp:08x})",
                path.display(),
                m.users,
                m.items,
                m.edges,
                m.graph_crc,
                sizes.0,
                sizes.1,
                sizes.2,
            ),
        });
    }
    let corrupt = |message: String| Error::Corrupt {
        path: path.to_path_buf(),
        offset: 0,
        message,
    };
    let init = match m.init.as_str() {
        "normal" => Init::Normal,
        "xavier_uniform" => Init::XavierUniform,
        other => return Err(corrupt(format!("unknown init scheme {other:?}"))),
    };
    let position = m
        .sampler_position
        .parse()
        .map_err(|_| corrupt(format!("sampler position {:?}", m.sampler_position)))?;
    let config = LightGcnConfig {
        dim: m.dim,
        layers: m.layers,
        batch_size: m.batch_size,
        decay: m.decay,
        init,
        init_std: m.init_std,
        seed: m.seed,
        adam: AdamConfig {
            lr: m.adam.lr,
            beta1: m.adam.beta1,
            beta2: m.adam.beta2,
            eps: m.adam.eps,
        },
    }
    .validated()?;
    // the tensors' sizes are checked against this before anything is copied
    let n = (sizes.0 + sizes.1)
        .checked_mul(config.dim)
        .ok_or_else(|| corrupt(format!("dim {} overflows", config.dim)))?;
    Ok(Saved {
        ego: snap.f32("ego", n)?,
        m1: snap.f32("adam_m1", n)?,
        m2: snap.f32("adam_m2", n)?,
        progress: Progress {
            config,
            epochs: m.epochs,
            steps: m.steps,
            position,
        },
    })
}

impl Trainer {
    /// Writes the trainer's whole state to `path` (atomically: a crash leaves the previous
    /// file whole); [`Trainer::resume`] continues from it, and so does
    /// [`crate::model::DeviceTrainer::resume`] on a device (the format: `checkpoint.rs`).
    pub fn save_checkpoint(&self, path: &Path, graph: &BipartiteGraph) -> Result<()> {
        let m = &self.model;
        check_sizes(graph, m.n_users(), m.n_items())?;
        write(path, graph, &self.saved())
    }

    /// A trainer resumed from the checkpoint at `path` over `graph`, which must be the
    /// graph it was saved with (checked: sizes and a crc32 of the adjacency). It
    /// continues exactly as the saved trainer would have, with the rate and batch size
    /// it had. A checkpoint saved by a [`crate::model::DeviceTrainer`] resumes here too.
    pub fn resume(graph: &BipartiteGraph, path: &Path) -> Result<Trainer> {
        Self::from_saved(graph, read(graph, path)?)
    }
}
