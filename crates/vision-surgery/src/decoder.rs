//! The Qwen3-VL text decoder (`model.language_model.*` and `lm_head`).
//!
//! One struct per checkpoint module, built by `new(cfg, params)` where
//! `params.pp("name")` mirrors the checkpoint's tensor names, so the code reads line
//! by line against `modeling_qwen3_vl.py`:
//! layer = `x += o_proj(attn(rmsnorm(x)))`, then `x += down(silu(gate(y)) * up(y))`
//! with `y = rmsnorm(x)`; attention applies q/k RMSNorm per head before the
//! interleaved MRoPE; DeepStack features are added at the visual positions after
//! the first decoder layers.

use candle_core::{D, DType, Device, Module, Tensor};
use candle_nn::kv_cache::KvCache;
use candle_nn::{Embedding, Linear};

use crate::config::{Qwen3VlConfig, TextConfig};
use crate::error::{Error, Result};
use crate::moe::SparseMoe;
use crate::position::Positions;
use crate::quant::{Proj, QuantizedLayers, WeightFormat};
use crate::rotary::MRope;
use crate::weights::Weights;

/// Prefix of the vision tower's tensors, never read by the surgered decoder.
pub const VISUAL_PREFIX: &str = "model.visual.";
/// Name of the untied output projection.
pub const LM_HEAD: &str = "lm_head.weight";

/// Whether a checkpoint tensor belongs to the vision tower.
pub fn is_visual_tensor(name: &str) -> bool {
    name.starts_with(VISUAL_PREFIX)
}

/// A view of the checkpoint under a name prefix, converting to one dtype and device.
/// Made by [`Params::new`] it refuses vision-tower names, so the decoder cannot read
/// one by mistake; only [`Params::with_vision`] (the full-model baseline) may.
#[derive(Clone)]
pub struct Params<'a> {
    weights: &'a Weights,
    prefix: String,
    dtype: DType,
    device: Device,
    allow_visual: bool,
    format: WeightFormat,
}

impl<'a> Params<'a> {
    /// The root of `weights`, in surgery mode (vision-tower names refused).
    pub fn new(weights: &'a Weights, dtype: DType, device: &Device) -> Self {
        Self {
            weights,
            prefix: String::new(),
            dtype,
            device: device.clone(),
            allow_visual: false,
            format: WeightFormat::Dense,
        }
    }

    /// The same view, its [`Params::proj`]ections held in `format`.
    pub fn with_format(self, format: WeightFormat) -> Self {
        Self { format, ..self }
    }

    /// The root of `weights`, vision-tower names allowed (the unmodified model).
    pub fn with_vision(weights: &'a Weights, dtype: DType, device: &Device) -> Self {
        Self {
            allow_visual: true,
            ..Self::new(weights, dtype, device)
        }
    }

    /// The sub-module `name` (like candle's `VarBuilder::pp`).
    pub fn pp(&self, name: impl std::fmt::Display) -> Self {
        let prefix = if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.prefix)
        };
        Self {
            prefix,
            ..self.clone()
        }
    }

    /// The checkpoint name of tensor `name` under this prefix.
    pub fn name_of(&self, name: &str) -> String {
        self.full(name)
    }

    /// The stored shape of tensor `name`, when present.
    pub fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.weights
            .entry(&self.full(name))
            .map(|e| e.shape.clone())
    }

    fn full(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.prefix)
        }
    }

    /// Whether tensor `name` exists under this prefix.
    pub fn contains(&self, name: &str) -> bool {
        self.weights.contains(&self.full(name))
    }

    /// Load tensor `name`, checking it has `shape`.
    pub fn get(&self, shape: &[usize], name: &str) -> Result<Tensor> {
        self.get_as(shape, name, self.dtype)
    }

    fn get_as(&self, shape: &[usize], name: &str, dtype: DType) -> Result<Tensor> {
        let full = self.full(name);
        if is_visual_tensor(&full) && !self.allow_visual {
            return Err(Error::Input {
                message: format!("refusing to read vision-tower tensor {full} in surgery mode"),
            });
        }
        self.weights.tensor(&full, shape, dtype, &self.device)
    }

    /// A decoder projection from `weight` `[out, in]` (and `bias` `[out]`) in this
    /// view's [`WeightFormat`] (quantized from the f32 values).
    pub fn proj(&self, in_dim: usize, out_dim: usize, bias: bool) -> Result<Proj> {
        if self.format == WeightFormat::Dense {
            return Ok(Proj::Dense(self.linear(in_dim, out_dim, bias)?));
        }
        let w = self.get_as(&[out_dim, in_dim], "weight", DType::F32)?;
        let b = if bias {
            Some(self.get(&[out_dim], "bias")?)
        } else {
            None
        };
        Proj::new(w, b, self.format)
    }

    /// A `Linear` from `weight` `[out, in]` (and `bias` `[out]`).
    pub fn linear(&self, in_dim: usize, out_dim: usize, bias: bool) -> Result<Linear> {
        let w = self.get(&[out_dim, in_dim], "weight")?;
        let b = if bias {
            Some(self.get(&[out_dim], "bias")?)
        } else {
            None
        };
        Ok(Linear::new(w, b))
    }
}

/// Which implementation of the normalisation, rotary and softmax steps to run.
///
/// candle's fused kernels (`rms_norm`, `rope`, `softmax_last_dim`) have no backward
/// pass, so gradients cannot flow through them; training an adapter through the frozen
/// decoder runs the same maths as compositions of differentiable tensor ops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernels {
    /// Fused kernels: inference (the default).
    Fused,
    /// Differentiable compositions: a backward pass can reach the inputs.
    Differentiable,
}

/// RMSNorm: `w * x / sqrt(mean(x^2) + eps)`, in the reference's order of roundings:
/// `x / sqrt(mean(x^2) + eps)` in f32, rounded to the compute dtype, then times `w` in
/// the compute dtype (one rounding more than a fused kernel when that is not f32).
#[derive(Debug, Clone)]
pub struct RmsNorm {
    weight: Tensor,
    /// Ones of the weight's width and dtype, for half-precision inputs.
    ones: Option<Tensor>,
    eps: f32,
}

impl RmsNorm {
    /// Load `weight` of width `dim`.
    pub fn new(dim: usize, eps: f64, p: Params) -> Result<Self> {
        let weight = p.get(&[dim], "weight")?;
        let ones = match weight.dtype() {
            DType::F32 => None,
            d => Some(Tensor::ones(dim, d, weight.device())?),
        };
        Ok(Self {
            weight,
            ones,
            eps: eps as f32,
        })
    }
}

impl RmsNorm {
    /// Normalise `x` over its last axis with the chosen kernels.
    pub fn apply(&self, x: &Tensor, kernels: Kernels) -> candle_core::Result<Tensor> {
        match (kernels, &self.ones) {
            (Kernels::Fused, None) => candle_nn::ops::rms_norm(x, &self.weight, self.eps),
            (Kernels::Fused, Some(ones)) => {
                candle_nn::ops::rms_norm(x, ones, self.eps)?.broadcast_mul(&self.weight)
            }
            (Kernels::Differentiable, _) => {
                candle_nn::ops::rms_norm_slow(x, &self.weight, self.eps)
            }
        }
    }
}

/// SiLU rounded once, as the reference computes it in half precision (candle's own
/// bf16/f16 kernel rounds after each of its three operations).
pub fn silu(x: &Tensor) -> candle_core::Result<Tensor> {
    match x.dtype() {
        DType::F32 | DType::F64 => candle_nn::ops::silu(x),
        d => candle_nn::ops::silu(&x.to_dtype(DType::F32)?)?.to_dtype(d),
    }
}

impl Module for RmsNorm {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.apply(x, Kernels::Fused)
    }
}

/// Rotary embedding of `x` (b, heads, s, hd) with `cos`/`sin` (b, s, hd/2), rotating
/// halves as `rope` does, written with differentiable ops.
fn rope_differentiable(x: &Tensor, cos: &Tensor, sin: &Tensor) -> candle_core::Result<Tensor> {
    let cos = Tensor::cat(&[cos, cos], D::Minus1)?.unsqueeze(1)?;
    let sin = Tensor::cat(&[sin, sin], D::Minus1)?.unsqueeze(1)?;
    let half = x.dim(D::Minus1)? / 2;
    let x1 = x.narrow(D::Minus1, 0, half)?;
    let x2 = x.narrow(D::Minus1, half, half)?;
    let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
    x.broadcast_mul(&cos)? + rotated.broadcast_mul(&sin)?
}

/// SwiGLU MLP.
#[derive(Debug, Clone)]
pub struct Mlp {
    gate_proj: Proj,
    up_proj: Proj,
    down_proj: Proj,
}

impl Mlp {
    /// Load `gate_proj`, `up_proj`, `down_proj`.
    pub fn new(cfg: &TextConfig, p: Params) -> Result<Self> {
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        Ok(Self {
            gate_proj: p.pp("gate_proj").proj(h, i, false)?,
            up_proj: p.pp("up_proj").proj(h, i, false)?,
            down_proj: p.pp("down_proj").proj(i, h, false)?,
        })
    }

    fn projections(&self) -> [&Proj; 3] {
        [&self.gate_proj, &self.up_proj, &self.down_proj]
    }
}

impl Module for Mlp {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let gate = silu(&self.gate_proj.forward(x)?)?;
        self.down_proj.forward(&(gate * self.up_proj.forward(x)?)?)
    }
}

/// Grouped-query self-attention with per-head q/k RMSNorm and MRoPE.
#[derive(Debug, Clone)]
pub struct Attention {
    q_proj: Proj,
    k_proj: Proj,
    v_proj: Proj,
    o_proj: Proj,
    q_norm: RmsNorm,
    k_norm: RmsNorm,
    n_heads: usize,
    n_kv: usize,
    head_dim: usize,
    scale: f64,
}

impl Attention {
    /// Load the projections and q/k norms.
    pub fn new(cfg: &TextConfig, p: Params) -> Result<Self> {
        let (h, hd, nh, nkv) = (
            cfg.hidden_size,
            cfg.head_dim,
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
        );
        let bias = cfg.attention_bias;
        Ok(Self {
            q_proj: p.pp("q_proj").proj(h, nh * hd, bias)?,
            k_proj: p.pp("k_proj").proj(h, nkv * hd, bias)?,
            v_proj: p.pp("v_proj").proj(h, nkv * hd, bias)?,
            o_proj: p.pp("o_proj").proj(nh * hd, h, bias)?,
            q_norm: RmsNorm::new(hd, cfg.rms_norm_eps, p.pp("q_norm"))?,
            k_norm: RmsNorm::new(hd, cfg.rms_norm_eps, p.pp("k_norm"))?,
            n_heads: nh,
            n_kv: nkv,
            head_dim: hd,
            scale: (hd as f64).powf(-0.5),
        })
    }

    fn projections(&self) -> [&Proj; 4] {
        [&self.q_proj, &self.k_proj, &self.v_proj, &self.o_proj]
    }

    /// `x`: (b, s, H); `cos`/`sin`: (b, s, hd/2); `mask`: additive f32 (b, 1, s, t) or none.
    /// With a `cache` the new keys and values are appended and attention covers every
    /// cached slot; without one it covers the `s` new tokens only.
    pub fn forward(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mask: Option<&Tensor>,
        cache: Option<&mut KvCache>,
        kernels: Kernels,
    ) -> candle_core::Result<Tensor> {
        let (b, s, _) = x.dims3()?;
        let (nh, nkv, hd) = (self.n_heads, self.n_kv, self.head_dim);
        let q = self.q_proj.forward(x)?.reshape((b, s, nh, hd))?;
        let k = self.k_proj.forward(x)?.reshape((b, s, nkv, hd))?;
        let v = self.v_proj.forward(x)?.reshape((b, s, nkv, hd))?;
        let q = self
            .q_norm
            .apply(&q, kernels)?
            .transpose(1, 2)?
            .contiguous()?;
        let k = self
            .k_norm
            .apply(&k, kernels)?
            .transpose(1, 2)?
            .contiguous()?;
        let v = v.transpose(1, 2)?.contiguous()?;
        let (q, k) = match kernels {
            Kernels::Fused => (
                candle_nn::rotary_emb::rope(&q, cos, sin)?,
                candle_nn::rotary_emb::rope(&k, cos, sin)?,
            ),
            Kernels::Differentiable => (
                rope_differentiable(&q, cos, sin)?,
                rope_differentiable(&k, cos, sin)?,
            ),
        };
        let (k, v) = match cache {
            Some(cache) => cache.append(&k, &v)?,
            None => (k, v),
        };
        let t = k.dim(2)?;
        // Query heads j*g .. j*g+g-1 share kv head j: fold them into the row axis
        // instead of copying K and V g times.
        let g = nh / nkv;
        let q = q.reshape((b, nkv, g * s, hd))?;
        let k = k.contiguous()?;
        let v = v.contiguous()?;
        let scores = (q.matmul(&k.t()?)? * self.scale)?;
        let scores = scores.to_dtype(DType::F32)?.reshape((b, nh, s, t))?;
        let scores = match mask {
            Some(m) => scores.broadcast_add(m)?,
            None => scores,
        };
        let probs = match kernels {
            Kernels::Fused => candle_nn::ops::softmax_last_dim(&scores)?,
            Kernels::Differentiable => candle_nn::ops::softmax(&scores, D::Minus1)?,
        };
        let probs = probs.to_dtype(v.dtype())?.reshape((b, nkv, g * s, t))?;
        let out = probs.matmul(&v)?.reshape((b, nh, s, hd))?;
        let out = out.transpose(1, 2)?.reshape((b, s, nh * hd))?;
        self.o_proj.forward(&out)
    }
}

/// A layer's feed-forward: the dense SwiGLU, or a mixture of experts.
#[derive(Debug, Clone)]
pub enum FeedForward {
    /// `mlp.{gate,up,down}_proj`.
    Dense(Mlp),
    /// `mlp.gate` and `mlp.experts` (`qwen3_vl_moe`).
    Sparse(SparseMoe),
}

impl Module for FeedForward {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            FeedForward::Dense(m) => m.forward(x),
            FeedForward::Sparse(m) => m.forward(x),
        }
    }
}

/// One Qwen3 decoder block.
#[derive(Debug, Clone)]
pub struct DecoderLayer {
    input_layernorm: RmsNorm,
    self_attn: Attention,
    post_attention_layernorm: RmsNorm,
    mlp: FeedForward,
}

impl DecoderLayer {
    /// Load the tensors of layer `index` under `p`.
    pub fn new(cfg: &TextConfig, index: usize, p: Params) -> Result<Self> {
        let mlp = if cfg.is_sparse_layer(index) {
            FeedForward::Sparse(SparseMoe::new(cfg, p.pp("mlp"))?)
        } else {
            FeedForward::Dense(Mlp::new(cfg, p.pp("mlp"))?)
        };
        Ok(Self {
            input_layernorm: RmsNorm::new(
                cfg.hidden_size,
                cfg.rms_norm_eps,
                p.pp("input_layernorm"),
            )?,
            self_attn: Attention::new(cfg, p.pp("self_attn"))?,
            post_attention_layernorm: RmsNorm::new(
                cfg.hidden_size,
                cfg.rms_norm_eps,
                p.pp("post_attention_layernorm"),
            )?,
            mlp,
        })
    }

    fn forward(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mask: Option<&Tensor>,
        cache: Option<&mut KvCache>,
        kernels: Kernels,
    ) -> candle_core::Result<Tensor> {
        let h = self.self_attn.forward(
            &self.input_layernorm.apply(x, kernels)?,
            cos,
            sin,
            mask,
            cache,
            kernels,
        )?;
        let x = (x + h)?;
        let h = self
            .mlp
            .forward(&self.post_attention_layernorm.apply(&x, kernels)?)?;
        x + h
    }
}

/// Key/value cache of every layer plus which cached slots are real tokens.
#[derive(Debug, Clone)]
pub struct DecoderCache {
    layers: Vec<KvCache>,
    /// `valid[b][j]`: whether cached slot j of sequence b is a real (unpadded) token.
    valid: Vec<Vec<bool>>,
}

impl DecoderCache {
    /// An empty cache for `layers` layers, preallocating `capacity` slots (it grows past that).
    pub fn new(layers: usize, capacity: usize) -> Self {
        Self {
            layers: (0..layers)
                .map(|_| KvCache::new(2, capacity.max(1)))
                .collect(),
            valid: Vec::new(),
        }
    }

    /// Number of cached slots (padding included).
    pub fn len(&self) -> usize {
        self.valid.first().map_or(0, Vec::len)
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Slots preallocated (appending past them grows the cache, copying it).
    pub fn capacity(&self) -> usize {
        self.layers.first().map_or(0, |l| l.k_cache().max_seq_len())
    }

    /// Batch size of the cached sequences (0 when empty).
    pub fn batch(&self) -> usize {
        self.valid.len()
    }

    /// Repeat a single cached sequence `n` times (shared prompt, several continuations).
    pub fn repeat(&self, n: usize, capacity: usize) -> Result<Self> {
        self.prefix(self.len(), n, capacity)
    }

    /// The first `len` slots of a single cached sequence, repeated `n` times, with room
    /// for `capacity` slots: exactly the cache a prefill of those `len` tokens leaves
    /// (causal attention: no slot depends on a later one).
    pub fn prefix(&self, len: usize, n: usize, capacity: usize) -> Result<Self> {
        if self.batch() != 1 || len > self.len() || n == 0 {
            return Err(Error::Input {
                message: format!(
                    "cannot take {n} copies of the first {len} slots of a cache of {} sequences of {} slots (one sequence, at most its length, at least one copy)",
                    self.batch(),
                    self.len()
                ),
            });
        }
        let mut layers = Vec::with_capacity(self.layers.len());
        for l in &self.layers {
            let mut c = KvCache::new(2, capacity.max(len).max(1));
            if len > 0
                && let (Some(k), Some(v)) = (l.k()?, l.v()?)
            {
                let k = k.narrow(2, 0, len)?.repeat((n, 1, 1, 1))?.contiguous()?;
                let v = v.narrow(2, 0, len)?.repeat((n, 1, 1, 1))?.contiguous()?;
                c.append(&k, &v)?;
            }
            layers.push(c);
        }
        Ok(Self {
            layers,
            valid: vec![self.valid[0][..len].to_vec(); n],
        })
    }

    /// Appends keys and values of `n` valid slots of one sequence to the first layer
    /// (unit tests of the caches built on this one).
    #[cfg(test)]
    pub(crate) fn append_for_tests(&mut self, k: &Tensor, v: &Tensor, n: usize) -> Result<()> {
        self.layers[0].append(k, v)?;
        self.valid = vec![vec![true; n]];
        Ok(())
    }

    /// Bytes of the cached keys and values.
    pub fn bytes(&self) -> usize {
        self.layers
            .iter()
            .map(|l| {
                let size =
                    |t: Option<Tensor>| t.map_or(0, |t| t.elem_count() * t.dtype().size_in_bytes());
                size(l.k().ok().flatten()) + size(l.v().ok().flatten())
            })
            .sum()
    }
}

/// Additive attention mask for `s` new query tokens after `past` cached slots, or
/// `None` when plain causal attention over a fully valid cache needs none.
/// A query row whose every allowed key is padding may attend to itself, so no row
/// is fully masked (its output is never used).
fn attention_mask(
    valid: &[Vec<bool>],
    past: usize,
    s: usize,
    device: &Device,
) -> Result<Option<Tensor>> {
    let all_valid = valid.iter().all(|v| v.iter().all(|&x| x));
    if all_valid && s == 1 {
        return Ok(None);
    }
    let b = valid.len();
    let t = past + s;
    let mut m = vec![0f32; b * s * t];
    for (bi, v) in valid.iter().enumerate() {
        for i in 0..s {
            let row = &mut m[(bi * s + i) * t..(bi * s + i + 1) * t];
            let qpos = past + i;
            for (j, slot) in row.iter_mut().enumerate() {
                let allowed = j <= qpos && (v[j] || j == qpos && !v[qpos]);
                if !allowed {
                    *slot = f32::NEG_INFINITY;
                }
            }
        }
    }
    Ok(Some(Tensor::from_vec(m, (b, 1, s, t), device)?))
}

/// DeepStack features to add after the first decoder layers.
#[derive(Debug, Clone)]
pub struct DeepStack {
    /// Flat indices `b * seq + s` of the visual positions, in placeholder order.
    pub positions: Tensor,
    /// `features[k]`: (n_visual, H), added after layer k.
    pub features: Vec<Tensor>,
}

/// The text decoder with its output head.
#[derive(Debug, Clone)]
pub struct TextDecoder {
    embed_tokens: Embedding,
    layers: Vec<DecoderLayer>,
    norm: RmsNorm,
    lm_head: Proj,
    rope: MRope,
    cfg: TextConfig,
    dtype: DType,
    device: Device,
    format: WeightFormat,
}

impl TextDecoder {
    /// Build the decoder from `weights`, reading only `model.language_model.*` and `lm_head`.
    pub fn new(
        cfg: &Qwen3VlConfig,
        weights: &Weights,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        Self::with_format(cfg, weights, dtype, device, WeightFormat::Dense)
    }

    /// [`TextDecoder::new`] with the projections and the output head held in `format`
    /// (see [`crate::quant`]).
    pub fn with_format(
        cfg: &Qwen3VlConfig,
        weights: &Weights,
        dtype: DType,
        device: &Device,
        format: WeightFormat,
    ) -> Result<Self> {
        let t = &cfg.text;
        let root = Params::new(weights, dtype, device).with_format(format);
        let p = root.pp(cfg.text_prefix());
        let embed = p
            .pp("embed_tokens")
            .get(&[t.vocab_size, t.hidden_size], "weight")?;
        let layers = (0..t.num_hidden_layers)
            .map(|i| DecoderLayer::new(t, i, p.pp("layers").pp(i)))
            .collect::<Result<Vec<_>>>()?;
        let norm = RmsNorm::new(t.hidden_size, t.rms_norm_eps, p.pp("norm"))?;
        let lm_head = if cfg.tie_word_embeddings {
            Proj::new(embed.clone(), None, format)?
        } else if root.contains(LM_HEAD) {
            root.pp("lm_head")
                .proj(t.hidden_size, t.vocab_size, false)?
        } else {
            return Err(Error::MissingTensor {
                name: format!("{LM_HEAD} (tie_word_embeddings is false)"),
            });
        };
        Ok(Self {
            embed_tokens: Embedding::new(embed, t.hidden_size),
            layers,
            norm,
            lm_head,
            rope: MRope::new(t),
            cfg: t.clone(),
            dtype,
            device: device.clone(),
            format,
        })
    }

    /// The format the projections were asked in.
    pub fn weight_format(&self) -> WeightFormat {
        self.format
    }

    /// How the attention and dense MLP projections and the output head are held.
    pub fn quantized_layers(&self) -> QuantizedLayers {
        let mut q = QuantizedLayers::default();
        for l in &self.layers {
            l.self_attn.projections().into_iter().for_each(|p| q.add(p));
            if let FeedForward::Dense(m) = &l.mlp {
                m.projections().into_iter().for_each(|p| q.add(p));
            }
        }
        q.add(&self.lm_head);
        q
    }

    /// The decoder's config.
    pub fn config(&self) -> &TextConfig {
        &self.cfg
    }

    /// Compute dtype.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Device the weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// A fresh cache sized for `capacity` tokens.
    pub fn new_cache(&self, capacity: usize) -> DecoderCache {
        DecoderCache::new(self.layers.len(), capacity)
    }

    /// Token embeddings (b, s, H) of `ids` (b, s).
    pub fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        Ok(self.embed_tokens.forward(ids)?)
    }

    /// Run `embeds` (b, s, H) through the decoder and the final norm.
    ///
    /// `pos` holds the 3-D positions of the new tokens, `valid[b][i]` whether new token
    /// i of sequence b is real (false for left padding), `deepstack` the features to
    /// add after the first layers. The cache receives the new keys and values.
    pub fn forward(
        &self,
        embeds: &Tensor,
        pos: &Positions,
        valid: &[Vec<bool>],
        deepstack: Option<&DeepStack>,
        cache: &mut DecoderCache,
    ) -> Result<Tensor> {
        self.run(embeds, pos, valid, deepstack, Some(cache), Kernels::Fused)
    }

    /// [`TextDecoder::forward`] without a cache and with differentiable kernels, so a
    /// backward pass from the output reaches `embeds` and the DeepStack features (the
    /// decoder's own weights stay constants). Used to train adapters.
    pub fn forward_differentiable(
        &self,
        embeds: &Tensor,
        pos: &Positions,
        valid: &[Vec<bool>],
        deepstack: Option<&DeepStack>,
    ) -> Result<Tensor> {
        self.run(embeds, pos, valid, deepstack, None, Kernels::Differentiable)
    }

    fn run(
        &self,
        embeds: &Tensor,
        pos: &Positions,
        valid: &[Vec<bool>],
        deepstack: Option<&DeepStack>,
        mut cache: Option<&mut DecoderCache>,
        kernels: Kernels,
    ) -> Result<Tensor> {
        let (b, s, h) = embeds.dims3()?;
        if pos.batch != b || pos.seq != s || valid.len() != b || valid.iter().any(|v| v.len() != s)
        {
            return Err(Error::Input {
                message: format!(
                    "embeddings are {b}x{s}, positions {}x{}, validity mask {}x{}",
                    pos.batch,
                    pos.seq,
                    valid.len(),
                    valid.first().map_or(0, Vec::len)
                ),
            });
        }
        if h != self.cfg.hidden_size {
            return Err(Error::Input {
                message: format!(
                    "embedding width {h} != hidden_size {}",
                    self.cfg.hidden_size
                ),
            });
        }
        if let Some(ds) = deepstack
            && ds.features.len() > self.layers.len()
        {
            return Err(Error::Input {
                message: format!(
                    "{} DeepStack levels for {} decoder layers",
                    ds.features.len(),
                    self.layers.len()
                ),
            });
        }
        let mask = match cache.as_deref_mut() {
            Some(cache) => {
                let past = cache.len();
                if cache.layers.len() != self.layers.len() {
                    return Err(Error::Input {
                        message: format!(
                            "cache has {} layers, the decoder {}",
                            cache.layers.len(),
                            self.layers.len()
                        ),
                    });
                }
                if past > 0 && cache.batch() != b {
                    return Err(Error::Input {
                        message: format!("cache holds {} sequences, input has {b}", cache.batch()),
                    });
                }
                if cache.valid.is_empty() {
                    cache.valid = vec![Vec::new(); b];
                }
                for (c, v) in cache.valid.iter_mut().zip(valid) {
                    c.extend_from_slice(v);
                }
                attention_mask(&cache.valid, past, s, &self.device)?
            }
            None => attention_mask(valid, 0, s, &self.device)?,
        };
        let (cos, sin) = self.rope.cos_sin(pos, self.dtype, &self.device)?;
        let mut x = embeds.to_dtype(self.dtype)?;
        for (i, layer) in self.layers.iter().enumerate() {
            let kv = cache.as_deref_mut().map(|c| &mut c.layers[i]);
            x = layer.forward(&x, &cos, &sin, mask.as_ref(), kv, kernels)?;
            if let Some(ds) = deepstack
                && let Some(f) = ds.features.get(i)
            {
                x = x
                    .reshape((b * s, h))?
                    .index_add(&ds.positions, &f.to_dtype(self.dtype)?, 0)?
                    .reshape((b, s, h))?;
            }
        }
        Ok(self.norm.apply(&x, kernels)?)
    }

    /// Output logits (…, vocab) in f32 for normed hidden states.
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        Ok(self.lm_head.forward(hidden)?.to_dtype(DType::F32)?)
    }

    /// Log-softmax over the vocabulary of `logits`, in f32.
    pub fn log_softmax(logits: &Tensor) -> Result<Tensor> {
        Ok(candle_nn::ops::log_softmax(
            &logits.to_dtype(DType::F32)?,
            D::Minus1,
        )?)
    }
}
