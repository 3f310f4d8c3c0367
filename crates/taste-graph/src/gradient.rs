//! The hand-written gradient of a LightGCN training step: the forward layers (the last
//! one only on the batch rows), BPR on the batch, and the backward products through the
//! symmetric `Â`, the last of them fused with whatever consumes each row's gradient (the
//! Adam update in [`crate::trainer::Trainer`], a plain copy in
//! [`LightGcn::batch_loss_and_grad`]).

use rayon::prelude::*;

use crate::buffer::Table;
use crate::error::Result;
use crate::lightgcn::{BatchLoss, LightGcn, Triple};
use crate::sparse::{Csr, NO_SLOT, split_rows_mut};

impl LightGcn {
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
pub(crate) struct Scratch {
    /// Dense `N × d` buffers: forward layers `E_1 .. E_{K-1}`, then backward `A_k`.
    dense: Vec<Table>,
    /// Node -> row in the compact batch buffers, or `NO_SLOT`.
    slot: Vec<u32>,
    /// Nodes of the batch, in slot order.
    active: Vec<u32>,
    /// Final embeddings on the active rows.
    fin: Vec<f32>,
    /// `c · ∂L/∂F` on the active rows.
    gadd: Vec<f32>,
    /// L2 gradient coefficient per active row: `decay · occurrences / batch`.
    regc: Vec<f32>,
}

/// Where the input of the fused final backward pass lives.
#[derive(Debug, Clone, Copy)]
pub(crate) enum FinalSrc {
    /// K = 0: no propagation.
    None,
    /// K = 1: the compact `gadd` rows.
    Compact,
    /// K ≥ 2: `dense[i]`.
    Dense(usize),
}

pub(crate) enum FinalInput<'a> {
    None,
    Compact(&'a [f32]),
    Dense(&'a [f32]),
}

impl Scratch {
    pub(crate) fn new(model: &LightGcn) -> Result<Self> {
        Ok(Scratch {
            dense: (0..model.layers.saturating_sub(1))
                .map(|_| Table::zeros(model.ego.len()))
                .collect::<Result<_>>()?,
            slot: vec![NO_SLOT; model.n_users + model.n_items],
            active: Vec::new(),
            fin: Vec::new(),
            gadd: Vec::new(),
            regc: Vec::new(),
        })
    }

    pub(crate) fn input(&self, src: FinalSrc) -> FinalInput<'_> {
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
pub(crate) fn forward_backward(
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
    for b in [&mut s.fin, &mut s.gadd] {
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
    // F = c (E_0 + … + E_K) on the batch rows, E_K computed only there, in parallel
    // (while a row's E_K runs, the next row's inputs are prefetched).
    let c = 1.0 / (k_layers + 1) as f32;
    let last_src: Option<&[f32]> = match k_layers {
        0 => None,
        1 => Some(ego),
        k => Some(&s.dense[k - 2]),
    };
    let dense = &s.dense;
    s.fin
        .par_chunks_mut(d * 64)
        .zip(s.active.par_chunks(64))
        .for_each(|(fc, nodes)| {
            let mut last = vec![0f32; d];
            for (k, (f, &node)) in fc.chunks_exact_mut(d).zip(nodes).enumerate() {
                let node = node as usize;
                f.copy_from_slice(&ego[node * d..(node + 1) * d]);
                for layer in dense {
                    for (f, &x) in f.iter_mut().zip(&layer[node * d..(node + 1) * d]) {
                        *f += x;
                    }
                }
                if let Some(x) = last_src {
                    let next = nodes.get(k + 1).map(|&n| n as usize);
                    adj.row_product_then(node, next, x, d, &mut last);
                    for (f, &x) in f.iter_mut().zip(&last) {
                        *f += x;
                    }
                }
                for f in f.iter_mut() {
                    *f *= c;
                }
            }
        });

    // BPR loss and ∂L/∂F on the batch rows (accumulated in `gadd`), L2 coefficients.
    let inv_b = 1.0 / batch.len() as f64;
    let (mut bpr, mut sq) = (0f64, 0f64);
    let regw = (decay as f64 * inv_b) as f32;
    let dot = |a: &[f32], b: &[f32]| {
        // eight running sums (one vector), added in a fixed order at the end
        let mut acc = [0f32; 8];
        let (ac, ar) = a.as_chunks::<8>();
        let (bc, br) = b.as_chunks::<8>();
        for (x, y) in ac.iter().zip(bc) {
            for j in 0..8 {
                acc[j] += x[j] * y[j];
            }
        }
        let tail: f32 = ar.iter().zip(br).map(|(x, y)| x * y).sum();
        acc.iter().sum::<f32>() + tail
    };
    let square_sum = |e: &[f32]| {
        let mut acc = [0f64; 4];
        let (ec, er) = e.as_chunks::<4>();
        for x in ec {
            for j in 0..4 {
                acc[j] += x[j] as f64 * x[j] as f64;
            }
        }
        acc.iter().sum::<f64>() + er.iter().map(|&v| v as f64 * v as f64).sum::<f64>()
    };
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
        let rows = [
            su * d..(su + 1) * d,
            sp * d..(sp + 1) * d,
            sn * d..(sn + 1) * d,
        ];
        match s.gadd.get_disjoint_mut(rows) {
            Ok([gu, gp, gn]) => {
                for j in 0..d {
                    let (u, p, q) = (fu[j], fp[j], fnn[j]);
                    gu[j] += g * (p - q);
                    gp[j] += g * u;
                    gn[j] -= g * u;
                }
            }
            // a caller's triple whose positive is its negative: the same, one by one
            Err(_) => {
                for j in 0..d {
                    let (u, p, q) = (fu[j], fp[j], fnn[j]);
                    s.gadd[su * d + j] += g * (p - q);
                    s.gadd[sp * d + j] += g * u;
                    s.gadd[sn * d + j] -= g * u;
                }
            }
        }
        for (node, sl) in nodes.into_iter().zip([su, sp, sn]) {
            let e = &ego[node * d..(node + 1) * d];
            sq += square_sum(e);
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
pub(crate) fn final_pass<B, F>(
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
