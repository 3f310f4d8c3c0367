//! The Qwen3-VL vision tower (`model.visual.*`): the full-encoder baseline the surgery
//! removes. Used to measure the surgery against the unmodified model and as the
//! teacher when distilling an adapter; never loaded in surgery mode.
//!
//! patch embedding (Conv3d as a matmul) + bilinearly interpolated learned position
//! table -> blocks (`x += proj(attn(LN1 x))`, `x += fc2(gelu_tanh(fc1(LN2 x)))`, 2-D
//! RoPE, attention block-diagonal per frame) -> patch merger (LN, 2x2 shuffle, MLP with
//! exact GELU); blocks listed in `deepstack_visual_indexes` also feed DeepStack mergers
//! (shuffle, then LN over the shuffled width, then the same MLP).

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{LayerNorm, Linear};

use crate::config::{Qwen3VlConfig, VisionConfig};
use crate::decoder::Params;
use crate::error::{Error, Result};
use crate::model::VisualInput;
use crate::position::VisualGrid;
use crate::weights::Weights;

/// Prefix of the vision tower's tensors.
pub const VISION_PREFIX: &str = "model.visual";

const LN_EPS: f64 = 1e-6;

fn layer_norm(dim: usize, p: Params) -> Result<LayerNorm> {
    Ok(LayerNorm::new(
        p.get(&[dim], "weight")?,
        p.get(&[dim], "bias")?,
        LN_EPS,
    ))
}

/// Activation of the ViT MLP, from `vision_config.hidden_act`.
#[derive(Debug, Clone, Copy)]
enum VisionAct {
    GeluTanh,
    Gelu,
    Silu,
}

impl VisionAct {
    fn parse(s: &str) -> Result<Self> {
        match s {
            "gelu_pytorch_tanh" | "gelu_new" | "gelu_fast" => Ok(VisionAct::GeluTanh),
            "gelu" => Ok(VisionAct::Gelu),
            "silu" => Ok(VisionAct::Silu),
            other => Err(Error::config(
                "vision_config.hidden_act",
                format!("unsupported activation {other:?}"),
            )),
        }
    }

    fn apply(self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            VisionAct::GeluTanh => x.gelu(),
            VisionAct::Gelu => x.gelu_erf(),
            VisionAct::Silu => candle_nn::ops::silu(x),
        }
    }
}

/// One ViT block.
#[derive(Debug, Clone)]
struct VisionBlock {
    norm1: LayerNorm,
    qkv: Linear,
    proj: Linear,
    norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    act: VisionAct,
    heads: usize,
    head_dim: usize,
}

impl VisionBlock {
    fn new(c: &VisionConfig, act: VisionAct, p: Params) -> Result<Self> {
        let d = c.hidden_size;
        Ok(Self {
            norm1: layer_norm(d, p.pp("norm1"))?,
            qkv: p.pp("attn").pp("qkv").linear(d, 3 * d, true)?,
            proj: p.pp("attn").pp("proj").linear(d, d, true)?,
            norm2: layer_norm(d, p.pp("norm2"))?,
            fc1: p
                .pp("mlp")
                .pp("linear_fc1")
                .linear(d, c.intermediate_size, true)?,
            fc2: p
                .pp("mlp")
                .pp("linear_fc2")
                .linear(c.intermediate_size, d, true)?,
            act,
            heads: c.num_heads,
            head_dim: d / c.num_heads,
        })
    }

    /// `x`: (n, Dv); `segments`: (start, len) of each frame; cos/sin: (n, hd/2).
    fn forward(
        &self,
        x: &Tensor,
        segments: &[(usize, usize)],
        cos: &Tensor,
        sin: &Tensor,
    ) -> candle_core::Result<Tensor> {
        let (n, d) = x.dims2()?;
        let (h, hd) = (self.heads, self.head_dim);
        let qkv = self
            .qkv
            .forward(&self.norm1.forward(x)?)?
            .reshape((n, 3, h, hd))?;
        let dtype = x.dtype();
        // (1, heads, n, hd) in f32 for the rotation, as the reference does
        let part = |i: usize| -> candle_core::Result<Tensor> {
            qkv.narrow(1, i, 1)?
                .squeeze(1)?
                .transpose(0, 1)?
                .unsqueeze(0)?
                .contiguous()
        };
        let q = candle_nn::rotary_emb::rope(&part(0)?.to_dtype(DType::F32)?, cos, sin)?
            .to_dtype(dtype)?;
        let k = candle_nn::rotary_emb::rope(&part(1)?.to_dtype(DType::F32)?, cos, sin)?
            .to_dtype(dtype)?;
        let v = part(2)?;
        let scale = (hd as f64).powf(-0.5);
        let mut outs = Vec::with_capacity(segments.len());
        for &(start, len) in segments {
            let (qs, ks, vs) = (
                q.narrow(2, start, len)?,
                k.narrow(2, start, len)?,
                v.narrow(2, start, len)?,
            );
            let scores =
                (qs.contiguous()?.matmul(&ks.t()?.contiguous()?)? * scale)?.to_dtype(DType::F32)?;
            let probs = candle_nn::ops::softmax_last_dim(&scores)?.to_dtype(dtype)?;
            outs.push(probs.matmul(&vs.contiguous()?)?);
        }
        let att = Tensor::cat(&outs, 2)?
            .squeeze(0)?
            .transpose(0, 1)?
            .reshape((n, d))?;
        let x = (x + self.proj.forward(&att)?)?;
        let y = self.fc2.forward(
            &self
                .act
                .apply(&self.fc1.forward(&self.norm2.forward(&x)?)?)?,
        )?;
        x + y
    }
}

/// Patch merger: m x m neighbouring patches -> one decoder token.
#[derive(Debug, Clone)]
struct PatchMerger {
    norm: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    /// DeepStack mergers normalise after the shuffle, the main one before.
    post_shuffle_norm: bool,
    width: usize,
}

impl PatchMerger {
    fn new(c: &VisionConfig, post_shuffle_norm: bool, p: Params) -> Result<Self> {
        let width = c.hidden_size * c.spatial_merge_size * c.spatial_merge_size;
        let norm_dim = if post_shuffle_norm {
            width
        } else {
            c.hidden_size
        };
        Ok(Self {
            norm: layer_norm(norm_dim, p.pp("norm"))?,
            fc1: p.pp("linear_fc1").linear(width, width, true)?,
            fc2: p.pp("linear_fc2").linear(width, c.out_hidden_size, true)?,
            post_shuffle_norm,
            width,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let x = if self.post_shuffle_norm {
            self.norm.forward(&x.reshape(((), self.width))?)?
        } else {
            self.norm.forward(x)?.reshape(((), self.width))?
        };
        self.fc2.forward(&self.fc1.forward(&x)?.gelu_erf()?)
    }
}

/// One image's (or video's) patch grid, in patches (not merged): `image_grid_thw`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PatchGrid {
    /// Temporal patches.
    pub t: usize,
    /// Patch rows.
    pub h: usize,
    /// Patch columns.
    pub w: usize,
}

impl PatchGrid {
    /// Number of patch rows of `pixel_values` it covers.
    pub fn patches(&self) -> usize {
        self.t * self.h * self.w
    }
}

/// Intermediate values, for parity checks against the reference.
#[derive(Debug, Clone)]
pub struct VisionTrace {
    /// Patch embeddings before the position table is added.
    pub patch_embeds: Tensor,
    /// Interpolated position embeddings.
    pub pos_embeds: Tensor,
    /// Output of each block.
    pub blocks: Vec<Tensor>,
}

/// The Qwen3-VL vision tower.
#[derive(Debug, Clone)]
pub struct VisionTower {
    patch_embed: Linear,
    pos_embed: Tensor,
    side: usize,
    blocks: Vec<VisionBlock>,
    merger: PatchMerger,
    deepstack_mergers: Vec<PatchMerger>,
    deepstack_indexes: Vec<usize>,
    inv_freq: Vec<f32>,
    cfg: VisionConfig,
    device: Device,
    dtype: DType,
}

impl VisionTower {
    /// Load `model.visual.*` from `weights`.
    pub fn new(
        cfg: &Qwen3VlConfig,
        weights: &Weights,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let c = cfg.vision_config()?;
        let act = VisionAct::parse(&c.hidden_act)?;
        let p = Params::with_vision(weights, dtype, device).pp(VISION_PREFIX);
        let d = c.hidden_size;
        let patch_dim = c.in_channels * c.temporal_patch_size * c.patch_size * c.patch_size;
        let pe = p.pp("patch_embed").pp("proj");
        let w = pe.get(
            &[
                d,
                c.in_channels,
                c.temporal_patch_size,
                c.patch_size,
                c.patch_size,
            ],
            "weight",
        )?;
        let patch_embed = Linear::new(w.reshape((d, patch_dim))?, Some(pe.get(&[d], "bias")?));
        let pos_embed = p
            .pp("pos_embed")
            .get(&[c.num_position_embeddings, d], "weight")?;
        let side = (c.num_position_embeddings as f64).sqrt() as usize;
        let blocks = (0..c.depth)
            .map(|i| VisionBlock::new(&c, act, p.pp("blocks").pp(i)))
            .collect::<Result<Vec<_>>>()?;
        let merger = PatchMerger::new(&c, false, p.pp("merger"))?;
        let deepstack_mergers = (0..c.deepstack_visual_indexes.len())
            .map(|k| PatchMerger::new(&c, true, p.pp("deepstack_merger_list").pp(k)))
            .collect::<Result<Vec<_>>>()?;
        let hd = d / c.num_heads;
        let quarter = hd / 4;
        let theta = c.rope_theta() as f32;
        let inv_freq = (0..quarter)
            .map(|j| 1.0 / theta.powf((2 * j) as f32 / (hd / 2) as f32))
            .collect();
        Ok(Self {
            patch_embed,
            pos_embed,
            side,
            blocks,
            merger,
            deepstack_mergers,
            deepstack_indexes: c.deepstack_visual_indexes.clone(),
            inv_freq,
            cfg: c,
            device: device.clone(),
            dtype,
        })
    }

    /// The tower's config.
    pub fn config(&self) -> &VisionConfig {
        &self.cfg
    }

    /// Encode `pixel_values` (patches of all images, rows in merge-block order, each
    /// row (C, Tp, P, P) flattened) with their grids, into the decoder's visual input:
    /// merged tokens (n_patches / m², H), DeepStack features, and merged grids.
    pub fn forward(&self, pixel_values: &Tensor, grids: &[PatchGrid]) -> Result<VisualInput> {
        Ok(self.forward_traced(pixel_values, grids, false)?.0)
    }

    /// [`VisionTower::forward`], also returning intermediates when `trace` is set.
    pub fn forward_traced(
        &self,
        pixel_values: &Tensor,
        grids: &[PatchGrid],
        trace: bool,
    ) -> Result<(VisualInput, Option<VisionTrace>)> {
        let c = &self.cfg;
        let m = c.spatial_merge_size;
        let patch_dim = c.in_channels * c.temporal_patch_size * c.patch_size * c.patch_size;
        let (n, width) = pixel_values.dims2()?;
        let expected: usize = grids.iter().map(PatchGrid::patches).sum();
        if width != patch_dim || n != expected {
            return Err(Error::Input {
                message: format!(
                    "pixel_values is {n}x{width}, the grids need {expected}x{patch_dim}"
                ),
            });
        }
        if let Some(g) = grids
            .iter()
            .find(|g| g.h % m != 0 || g.w % m != 0 || g.patches() == 0)
        {
            return Err(Error::Input {
                message: format!("grid {g:?} is empty or not a multiple of the merge size {m}"),
            });
        }
        let x = pixel_values.to_dtype(self.dtype)?.to_device(&self.device)?;
        let patch_embeds = self.patch_embed.forward(&x)?;
        let pos_embeds = self.position_embeddings(grids)?;
        let mut x = (&patch_embeds + &pos_embeds)?;
        let (cos, sin) = self.rotary(grids)?;
        let mut segments = Vec::new();
        let mut start = 0;
        for g in grids {
            for _ in 0..g.t {
                segments.push((start, g.h * g.w));
                start += g.h * g.w;
            }
        }
        let mut block_outs = Vec::new();
        let mut deepstack = Vec::new();
        for (i, b) in self.blocks.iter().enumerate() {
            x = b.forward(&x, &segments, &cos, &sin)?;
            if let Some(k) = self.deepstack_indexes.iter().position(|&j| j == i) {
                deepstack.push(self.deepstack_mergers[k].forward(&x)?);
            }
            if trace {
                block_outs.push(x.clone());
            }
        }
        let embeds = self.merger.forward(&x)?;
        let out = VisualInput {
            embeds,
            deepstack,
            grids: grids
                .iter()
                .map(|g| VisualGrid {
                    t: g.t,
                    h: g.h / m,
                    w: g.w / m,
                })
                .collect(),
        };
        let tr = trace.then_some(VisionTrace {
            patch_embeds,
            pos_embeds,
            blocks: block_outs,
        });
        Ok((out, tr))
    }

    /// Patch (row, col) of every pixel_values row: frames in order, each in
    /// merge-block order (block row, block col, row in block, col in block).
    fn patch_coords(&self, grids: &[PatchGrid]) -> Vec<(usize, usize)> {
        let m = self.cfg.spatial_merge_size;
        let mut v = Vec::new();
        for g in grids {
            for _ in 0..g.t {
                for bh in 0..g.h / m {
                    for bw in 0..g.w / m {
                        for mh in 0..m {
                            for mw in 0..m {
                                v.push((bh * m + mh, bw * m + mw));
                            }
                        }
                    }
                }
            }
        }
        v
    }

    /// Bilinear (align_corners) resampling of the side x side position table to each grid.
    fn position_embeddings(&self, grids: &[PatchGrid]) -> Result<Tensor> {
        let side = self.side;
        let taps_1d = |n: usize, i: usize| -> (usize, usize, f32) {
            let src = if n > 1 {
                i as f32 * (side - 1) as f32 / (n - 1) as f32
            } else {
                0.0
            };
            let lo = (src.floor() as usize).min(side - 1);
            let hi = (lo + 1).min(side - 1);
            (lo, hi, src - lo as f32)
        };
        let mut idx = Vec::new();
        let mut wts = Vec::new();
        let mut at = 0;
        for g in grids {
            let coords = self.patch_coords(std::slice::from_ref(g));
            for &(r, col) in &coords {
                let (h0, h1, dh) = taps_1d(g.h, r);
                let (w0, w1, dw) = taps_1d(g.w, col);
                idx.extend([
                    (h0 * side + w0) as u32,
                    (h0 * side + w1) as u32,
                    (h1 * side + w0) as u32,
                    (h1 * side + w1) as u32,
                ]);
                wts.extend([
                    (1.0 - dh) * (1.0 - dw),
                    (1.0 - dh) * dw,
                    dh * (1.0 - dw),
                    dh * dw,
                ]);
            }
            at += coords.len();
        }
        let d = self.cfg.hidden_size;
        let idx = Tensor::from_vec(idx, at * 4, &self.device)?;
        let w = Tensor::from_vec(wts, (at, 4, 1), &self.device)?.to_dtype(self.dtype)?;
        let rows = self.pos_embed.index_select(&idx, 0)?.reshape((at, 4, d))?;
        Ok(rows.broadcast_mul(&w)?.sum(1)?)
    }

    /// cos/sin (n, hd/2) of the 2-D rotary: angles = cat(row * inv, col * inv).
    fn rotary(&self, grids: &[PatchGrid]) -> Result<(Tensor, Tensor)> {
        let coords = self.patch_coords(grids);
        let q = self.inv_freq.len();
        let mut cos = Vec::with_capacity(coords.len() * 2 * q);
        let mut sin = Vec::with_capacity(coords.len() * 2 * q);
        for &(r, c) in &coords {
            for p in [r, c] {
                for f in &self.inv_freq {
                    let a = p as f32 * f;
                    cos.push(a.cos());
                    sin.push(a.sin());
                }
            }
        }
        let n = coords.len();
        Ok((
            Tensor::from_vec(cos, (n, 2 * q), &self.device)?,
            Tensor::from_vec(sin, (n, 2 * q), &self.device)?,
        ))
    }
}
