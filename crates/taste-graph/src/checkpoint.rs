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
//! The file is written to `PATH.tmp`, synced and renamed over `PATH`, so a crash leaves
//! the previous checkpoint whole. Layout (little-endian):
//!
//! | bytes | field |
//! |---|---|
//! | 0..8 | magic `MOSLGCK1` |
//! | 8..12 | format version (2; version 1 files, which lack the init scheme, are read as normal init) |
//! | 12..36 | users, items, training edges (u64 each) |
//! | 36..40 | crc32 of the graph's user → items lists |
//! | 40..64 | dim, layers, batch size (u64 each) |
//! | 64..72 | decay, init std (f32) |
//! | 72..80 | seed (u64) |
//! | 80..96 | Adam lr, beta1, beta2, eps (f32) |
//! | 96..112 | epochs done, Adam steps (u64) |
//! | 112..128 | sampler position (u128) |
//! | 128..132 | init scheme (u32: 0 normal, 1 Xavier uniform) |
//! | 132.. | ego table, Adam first moments, second moments (f32, public order: users then items, `(users + items) × dim` each) |
//! | last 4 | crc32 of everything before |

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::graph::BipartiteGraph;
use crate::ids::UserId;
use rand::SeedableRng;
use rand::rngs::StdRng;

use crate::lightgcn::{Init, LightGcn, LightGcnConfig, Sampler, Trainer, init_rows};
use crate::log::{parent_of, sync_dir};
use crate::optim::{AdamConfig, AdamState};

const MAGIC: &[u8; 8] = b"MOSLGCK1";
const VERSION: u32 = 2;
/// Header length of a version-2 file (version 1's was 128: no init scheme).
const HEADER: usize = 132;

/// Header length of format `version`.
fn header_len(version: u32) -> usize {
    if version == 1 { 128 } else { HEADER }
}

fn init_tag(init: Init) -> u32 {
    match init {
        Init::Normal => 0,
        Init::XavierUniform => 1,
    }
}

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

fn f32s(out: &mut Vec<u8>, values: &[f32]) {
    out.reserve(values.len() * 4);
    for v in values {
        out.extend_from_slice(&v.to_le_bytes());
    }
}

/// Reads fixed-size fields front to back, with the offset for errors.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> [u8; N] {
        let mut b = [0u8; N];
        b.copy_from_slice(&self.bytes[self.at..self.at + N]);
        self.at += N;
        b
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.take())
    }
    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.take())
    }
    fn f32(&mut self) -> f32 {
        f32::from_le_bytes(self.take())
    }
    fn table(&mut self, len: usize) -> Vec<f32> {
        let out = self.bytes[self.at..self.at + len * 4]
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        self.at += len * 4;
        out
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
pub(crate) struct Saved {
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

/// Writes a checkpoint atomically (`PATH.tmp`, synced, renamed, directory synced); the
/// tables are in public order.
pub(crate) fn write(
    path: &Path,
    graph: &BipartiteGraph,
    p: &Progress,
    ego: &[f32],
    m1: &[f32],
    m2: &[f32],
) -> Result<()> {
    let c = &p.config;
    let a = &c.adam;
    let n = (graph.n_users() + graph.n_items()) * c.dim;
    if [ego.len(), m1.len(), m2.len()] != [n; 3] {
        return Err(Error::Graph {
            message: format!(
                "checkpoint tables of {}, {} and {} values for {} nodes x {}",
                ego.len(),
                m1.len(),
                m2.len(),
                graph.n_users() + graph.n_items(),
                c.dim
            ),
        });
    }
    let mut out = Vec::with_capacity(HEADER + 3 * n * 4 + 4);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    for v in [graph.n_users(), graph.n_items(), graph.n_edges()] {
        out.extend_from_slice(&(v as u64).to_le_bytes());
    }
    out.extend_from_slice(&graph_fingerprint(graph).to_le_bytes());
    for v in [c.dim, c.layers, c.batch_size] {
        out.extend_from_slice(&(v as u64).to_le_bytes());
    }
    f32s(&mut out, &[c.decay, c.init_std]);
    out.extend_from_slice(&c.seed.to_le_bytes());
    f32s(&mut out, &[a.lr, a.beta1, a.beta2, a.eps]);
    out.extend_from_slice(&(p.epochs as u64).to_le_bytes());
    out.extend_from_slice(&p.steps.to_le_bytes());
    out.extend_from_slice(&p.position.to_le_bytes());
    out.extend_from_slice(&init_tag(c.init).to_le_bytes());
    debug_assert_eq!(out.len(), HEADER);
    f32s(&mut out, ego);
    f32s(&mut out, m1);
    f32s(&mut out, m2);
    write_atomic(path, &with_crc(out))
}

/// `out` followed by the crc32 of its bytes (what [`crc_trailer_holds`] checks).
pub(crate) fn with_crc(mut out: Vec<u8>) -> Vec<u8> {
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// Whether `bytes` (at least 4 long) end with the crc32 of everything before.
pub(crate) fn crc_trailer_holds(bytes: &[u8]) -> bool {
    let body = bytes.len() - 4;
    let stored = u32::from_le_bytes([
        bytes[body],
        bytes[body + 1],
        bytes[body + 2],
        bytes[body + 3],
    ]);
    crc32fast::hash(&bytes[..body]) == stored
}

/// Writes `bytes` to `path` atomically: `PATH.tmp`, synced, renamed over `PATH`, the
/// directory synced.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_parts(path, &[bytes])
}

/// [`write_atomic`] of the concatenation of `parts`.
pub(crate) fn write_atomic_parts(path: &Path, parts: &[&[u8]]) -> Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let write = || -> std::io::Result<()> {
        let mut f = std::io::BufWriter::new(File::create(&tmp)?);
        for p in parts {
            f.write_all(p)?;
        }
        f.into_inner().map_err(|e| e.into_error())?.sync_all()
    };
    write().map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))?;
    sync_dir(parent_of(path))
}

/// Reads the checkpoint at `path`, which must have been saved over `graph` (checked:
/// sizes and a crc32 of the adjacency).
pub(crate) fn read(graph: &BipartiteGraph, path: &Path) -> Result<Saved> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let corrupt = |offset: usize, message: String| Error::Corrupt {
        path: path.to_path_buf(),
        offset: offset as u64,
        message,
    };
    if bytes.len() < header_len(1) + 4 || &bytes[..8] != MAGIC {
        return Err(corrupt(
            0,
            "not a Mosaic LightGCN checkpoint (bad magic or too short)".into(),
        ));
    }
    let body = bytes.len() - 4;
    if !crc_trailer_holds(&bytes) {
        return Err(corrupt(body, "checksum mismatch".into()));
    }
    let mut r = Reader {
        bytes: &bytes,
        at: 8,
    };
    let version = r.u32();
    if version != VERSION && version != 1 {
        return Err(corrupt(
            8,
            format!("format version {version}, this build reads 1 and {VERSION}"),
        ));
    }
    let (nu, ni, ne) = (r.u64(), r.u64(), r.u64());
    let fp = r.u32();
    let this_fp = graph_fingerprint(graph);
    if (nu, ni, ne)
        != (
            graph.n_users() as u64,
            graph.n_items() as u64,
            graph.n_edges() as u64,
        )
        || fp != this_fp
    {
        return Err(Error::Graph {
            message: format!(
                "{} was saved over a graph of {nu} users, {ni} items, {ne} edges \
                 (crc32 {fp:08x}); this one has {}, {}, {} (crc32 {:08x})",
                path.display(),
                graph.n_users(),
                graph.n_items(),
                graph.n_edges(),
                this_fp
            ),
        });
    }
    let (dim, layers, batch) = (r.u64() as usize, r.u64() as usize, r.u64() as usize);
    let (decay, init_std) = (r.f32(), r.f32());
    let seed = r.u64();
    let adam = AdamConfig {
        lr: r.f32(),
        beta1: r.f32(),
        beta2: r.f32(),
        eps: r.f32(),
    };
    let (epochs, steps) = (r.u64() as usize, r.u64());
    let position = u128::from_le_bytes(r.take());
    let header = header_len(version);
    if body < header {
        return Err(corrupt(
            0,
            format!("{body} bytes before the checksum, shorter than the {header}-byte header"),
        ));
    }
    let init = match if version == 1 { 0 } else { r.u32() } {
        0 => Init::Normal,
        1 => Init::XavierUniform,
        tag => return Err(corrupt(128, format!("unknown init scheme {tag}"))),
    };
    let config = LightGcnConfig {
        dim,
        layers,
        batch_size: batch,
        decay,
        init,
        init_std,
        seed,
        adam,
    }
    .validated()?;
    let n = (graph.n_users() + graph.n_items())
        .checked_mul(dim)
        .filter(|n| n.checked_mul(12).is_some_and(|b| b == body - header))
        .ok_or_else(|| {
            corrupt(
                header,
                format!(
                    "{} bytes of tables, expected 3 tables of {} nodes x {dim} f32",
                    body - header,
                    graph.n_users() + graph.n_items()
                ),
            )
        })?;
    let ego = r.table(n);
    let (m1, m2) = (r.table(n), r.table(n));
    Ok(Saved {
        progress: Progress {
            config,
            epochs,
            steps,
            position,
        },
        ego,
        m1,
        m2,
    })
}

impl Trainer {
    /// Writes the trainer's whole state to `path` (atomically: a crash leaves the previous
    /// file whole); [`Trainer::resume`] continues from it, and so does
    /// [`crate::DeviceTrainer::resume`] on a device. See [`crate::checkpoint`].
    pub fn save_checkpoint(&self, path: &Path, graph: &BipartiteGraph) -> Result<()> {
        let m = &self.model;
        check_sizes(graph, m.n_users(), m.n_items())?;
        let s = self.saved();
        write(path, graph, &s.progress, &s.ego, &s.m1, &s.m2)
    }

    /// A trainer resumed from the checkpoint at `path` over `graph`, which must be the
    /// graph it was saved with (checked: sizes and a crc32 of the adjacency). It
    /// continues exactly as the saved trainer would have, with the rate and batch size
    /// it had. A checkpoint saved by a [`crate::DeviceTrainer`] resumes here too.
    pub fn resume(graph: &BipartiteGraph, path: &Path) -> Result<Trainer> {
        Self::from_saved(graph, read(graph, path)?)
    }

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
    fn saved(&self) -> Saved {
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
    fn from_saved(graph: &BipartiteGraph, saved: Saved) -> Result<Trainer> {
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
