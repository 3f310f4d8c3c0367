//! The sparse feed-forward of the `qwen3_vl_moe` decoders (Qwen3-VL-30B-A3B,
//! 235B-A22B), read against `Qwen3VLMoeTextSparseMoeBlock`:
//! `probs = softmax(gate(x))` in f32 over every expert, the `top_k` largest renormalised
//! to sum to 1 and cast to the hidden dtype, then each chosen expert's SwiGLU
//! `down(silu(g) * u)` with `[g, u] = x @ gate_up` (first half gate, second half up),
//! weighted in the compute dtype and summed over a token's experts in f32, rounded once
//! (the reference's default `grouped_mm` experts path).
//!
//! Checkpoint tensors, per layer `mlp.`: `gate.weight` (E, H); `experts.gate_up_proj`
//! and `experts.down_proj` in either layout the reference loads: the released one,
//! (E, H, 2I) and (E, I, H), or the transposed one transformers 5 saves, (E, 2I, H) and
//! (E, H, I). As in the reference, a shape that fits both is read as the latter. A
//! surgered (portable) checkpoint has them one per expert, as Qwen3-MoE:
//! `experts.{j}.{gate,up}_proj.weight` (I, H) and `experts.{j}.down_proj.weight` (H, I).

use candle_core::{D, DType, Module, Tensor};
use candle_nn::Linear;

use crate::config::TextConfig;
use crate::decoder::{Params, silu};
use crate::error::{Error, Result};

/// A router and its experts, stored matmul-ready: `gate_up` (E, H, 2I), `down` (E, I, H).
#[derive(Debug, Clone)]
pub struct SparseMoe {
    router: Linear,
    gate_up: Tensor,
    down: Tensor,
    top_k: usize,
    inter: usize,
}

/// Load `name` of shape `[e, a, b]`, accepting its transpose `[e, b, a]` (taken first,
/// as the reference does) and returning it as `[e, a, b]`.
fn experts(p: &Params, name: &str, e: usize, a: usize, b: usize) -> Result<Tensor> {
    match p.shape(name) {
        Some(s) if s == [e, b, a] => Ok(p.get(&[e, b, a], name)?.transpose(1, 2)?.contiguous()?),
        Some(s) if s == [e, a, b] => p.get(&[e, a, b], name),
        Some(s) => Err(Error::TensorShape {
            name: p.name_of(name),
            expected: vec![e, a, b],
            actual: s,
        }),
        None => Err(Error::MissingTensor {
            name: p.name_of(name),
        }),
    }
}

/// Experts stored one per expert (the portable layout), stacked as `(E, H, 2I)` and
/// `(E, I, H)`.
fn per_expert(x: &Params, e: usize, h: usize, i: usize) -> Result<(Tensor, Tensor)> {
    let mut gate_up = Vec::with_capacity(e);
    let mut down = Vec::with_capacity(e);
    for j in 0..e {
        let w = x.pp(j);
        let g = w.pp("gate_proj").get(&[i, h], "weight")?;
        let u = w.pp("up_proj").get(&[i, h], "weight")?;
        gate_up.push(Tensor::cat(&[g, u], 0)?.t()?);
        down.push(w.pp("down_proj").get(&[h, i], "weight")?.t()?);
    }
    Ok((Tensor::stack(&gate_up, 0)?, Tensor::stack(&down, 0)?))
}

impl SparseMoe {
    /// Load `gate` and `experts` under `p` (a layer's `mlp`).
    pub fn new(cfg: &TextConfig, p: Params) -> Result<Self> {
        let m = cfg.moe.as_ref().ok_or_else(|| Error::Input {
            message: "a sparse layer needs the mixture-of-experts settings".into(),
        })?;
        let (e, h, i) = (m.num_experts, cfg.hidden_size, m.moe_intermediate_size);
        let x = p.pp("experts");
        let (gate_up, down) = if x.contains("0.gate_proj.weight") {
            per_expert(&x, e, h, i)?
        } else {
            (
                experts(&x, "gate_up_proj", e, h, 2 * i)?,
                experts(&x, "down_proj", e, i, h)?,
            )
        };
        Ok(Self {
            router: p.pp("gate").linear(h, e, false)?,
            gate_up,
            down,
            top_k: m.num_experts_per_tok,
            inter: i,
        })
    }

    /// Routing of `n` tokens: for each token its `top_k` experts (ascending probability
    /// order does not matter), as host-side indices.
    fn route(&self, probs: &Tensor) -> candle_core::Result<Vec<u32>> {
        Ok(top_k_of_rows(&probs.to_vec2()?, self.top_k))
    }
}

/// Per row, the indices of its `k` largest values, largest first, the lower index on
/// ties (torch.topk's tie order is implementation-defined, so an exact tie may route
/// differently there). A total order, so selecting the k first then sorting them is the
/// full sort's first k (128 experts, top 8: no sort of the other 120).
fn top_k_of_rows(rows: &[Vec<f32>], k: usize) -> Vec<u32> {
    let mut out = Vec::with_capacity(rows.len() * k);
    let mut order: Vec<u32> = Vec::new();
    for row in rows {
        order.clear();
        order.extend(0..row.len() as u32);
        let cmp = |a: &u32, b: &u32| row[*b as usize].total_cmp(&row[*a as usize]).then(a.cmp(b));
        let k = k.min(order.len());
        if k > 0 && k < order.len() {
            order.select_nth_unstable_by(k - 1, cmp);
        }
        order[..k].sort_by(cmp);
        out.extend_from_slice(&order[..k]);
    }
    out
}

impl Module for SparseMoe {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let dims = x.dims().to_vec();
        let h = x.dim(D::Minus1)?;
        let xs = x.reshape(((), h))?;
        let n = xs.dim(0)?;
        let logits = self.router.forward(&xs)?;
        let probs = candle_nn::ops::softmax_last_dim(&logits.to_dtype(DType::F32)?)?;
        let chosen = self.route(&probs)?;
        let idx = Tensor::from_slice(&chosen, (n, self.top_k), xs.device())?;
        // the chosen probabilities, renormalised: tensor ops, so gradients reach x
        let top = probs.gather(&idx, 1)?;
        let weights = top
            .broadcast_div(&top.sum_keepdim(1)?)?
            .to_dtype(xs.dtype())?
            .flatten_all()?;
        // tokens (and their slot in `weights`) per expert, in token order
        let experts = self.gate_up.dim(0)?;
        let mut rows: Vec<Vec<u32>> = vec![Vec::new(); experts];
        let mut slots: Vec<Vec<u32>> = vec![Vec::new(); experts];
        for (j, &e) in chosen.iter().enumerate() {
            rows[e as usize].push((j / self.top_k) as u32);
            slots[e as usize].push(j as u32);
        }
        let mut out = Tensor::zeros(xs.shape(), DType::F32, xs.device())?;
        for e in 0..experts {
            if rows[e].is_empty() {
                continue;
            }
            let m = rows[e].len();
            let r = Tensor::from_slice(&rows[e], m, xs.device())?;
            let w = weights.index_select(&Tensor::from_slice(&slots[e], m, xs.device())?, 0)?;
            let gu = xs.index_select(&r, 0)?.matmul(&self.gate_up.get(e)?)?;
            let gate = silu(&gu.narrow(1, 0, self.inter)?)?;
            let up = gu.narrow(1, self.inter, self.inter)?;
            let y = (gate * up)?.matmul(&self.down.get(e)?)?;
            let y = y.broadcast_mul(&w.unsqueeze(1)?)?.to_dtype(DType::F32)?;
            out = out.index_add(&r, &y, 0)?;
        }
        out.to_dtype(xs.dtype())?.reshape(dims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_selection_is_the_full_sorts_first_k() {
        let mut seed = 7u64;
        let mut next = || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            // few distinct values, so ties are common
            ((seed >> 33) % 13) as f32 / 13.0
        };
        for (experts, k) in [(8, 2), (16, 4), (128, 8), (5, 5), (1, 1)] {
            let rows: Vec<Vec<f32>> = (0..50)
                .map(|_| (0..experts).map(|_| next()).collect())
                .collect();
            let got = top_k_of_rows(&rows, k);
            for (r, row) in rows.iter().enumerate() {
                let mut all: Vec<u32> = (0..experts as u32).collect();
                all.sort_by(|&a, &b| row[b as usize].total_cmp(&row[a as usize]).then(a.cmp(&b)));
                assert_eq!(&got[r * k..(r + 1) * k], &all[..k], "row {r} of {experts}");
            }
        }
    }
}
