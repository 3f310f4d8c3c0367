//! Qwen3-VL `config.json`, read with serde and validated.
//!
//! Both spellings of the rotary settings are accepted: transformers' current
//! `text_config.rope_parameters {rope_type, rope_theta, mrope_section, ...}` and the
//! hub's legacy `text_config.rope_scaling {...}` plus a separate `text_config.rope_theta`.

use std::path::Path;

use candle_core::DType;
use serde::Deserialize;
use serde_json::Value;

use crate::error::{Error, Result};

/// Rotary embedding settings of the text decoder (interleaved MRoPE).
#[derive(Debug, Clone, PartialEq)]
pub struct RopeParameters {
    /// Base of the inverse frequencies.
    pub rope_theta: f64,
    /// Frequencies given to the (t, h, w) rows; only `[1]` and `[2]` are read (see the notes).
    pub mrope_section: [usize; 3],
}

/// The language-decoder part of the config (`text_config`).
#[derive(Debug, Clone, PartialEq)]
pub struct TextConfig {
    /// Vocabulary size of `embed_tokens` and `lm_head`.
    pub vocab_size: usize,
    /// Model width H.
    pub hidden_size: usize,
    /// MLP width.
    pub intermediate_size: usize,
    /// Number of decoder layers.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads (GQA).
    pub num_key_value_heads: usize,
    /// Per-head width (explicit in Qwen3, not H / heads).
    pub head_dim: usize,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// Whether q/k/v/o projections carry a bias.
    pub attention_bias: bool,
    /// Longest sequence the model was trained for.
    pub max_position_embeddings: usize,
    /// Rotary settings.
    pub rope: RopeParameters,
    /// Mixture-of-experts settings (`qwen3_vl_moe`); `None` for the dense models.
    pub moe: Option<MoeConfig>,
}

/// The sparse feed-forward of the `qwen3_vl_moe` decoders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MoeConfig {
    /// Experts per sparse layer (`num_experts`, also written `num_local_experts`).
    pub num_experts: usize,
    /// Experts each token is routed to.
    pub num_experts_per_tok: usize,
    /// Width of one expert's SwiGLU.
    pub moe_intermediate_size: usize,
    /// Layer i is sparse when `(i + 1) % decoder_sparse_step == 0`...
    pub decoder_sparse_step: usize,
    /// ...and i is not listed here (those keep a dense MLP of `intermediate_size`).
    pub mlp_only_layers: Vec<usize>,
}

impl TextConfig {
    /// Whether decoder layer `layer` has a sparse (mixture-of-experts) feed-forward.
    pub fn is_sparse_layer(&self, layer: usize) -> bool {
        self.moe.as_ref().is_some_and(|m| {
            m.num_experts > 0
                && (layer + 1).is_multiple_of(m.decoder_sparse_step)
                && !m.mlp_only_layers.contains(&layer)
        })
    }
}

/// Token ids the multimodal prompt format relies on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpecialTokens {
    /// `<|image_pad|>`: one placeholder per visual (soft) token.
    pub image_token_id: u32,
    /// `<|video_pad|>`.
    pub video_token_id: u32,
    /// `<|vision_start|>`.
    pub vision_start_token_id: u32,
    /// `<|vision_end|>`.
    pub vision_end_token_id: u32,
}

/// The vision tower's part of the config (`vision_config`), absent after surgery.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct VisionConfig {
    /// Number of ViT blocks.
    pub depth: usize,
    /// ViT width Dv.
    pub hidden_size: usize,
    /// ViT MLP width.
    pub intermediate_size: usize,
    /// ViT attention heads.
    pub num_heads: usize,
    /// Input channels (3).
    #[serde(default = "default_channels")]
    pub in_channels: usize,
    /// Spatial patch side P.
    pub patch_size: usize,
    /// Frames per temporal patch Tp.
    #[serde(default = "default_tp")]
    pub temporal_patch_size: usize,
    /// Side m of the square of patches merged into one LLM token.
    #[serde(default = "default_merge")]
    pub spatial_merge_size: usize,
    /// Output width of the mergers (the decoder's H).
    pub out_hidden_size: usize,
    /// Entries of the learned position table (a square side x side grid).
    pub num_position_embeddings: usize,
    /// Blocks whose outputs feed the DeepStack mergers.
    #[serde(default)]
    pub deepstack_visual_indexes: Vec<usize>,
    /// Activation of the ViT MLP.
    #[serde(default = "default_vision_act")]
    pub hidden_act: String,
    /// 2-D rotary settings (default theta 10000).
    #[serde(default)]
    pub rope_parameters: Option<VisionRope>,
}

/// Rotary settings of the vision tower.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct VisionRope {
    /// Base of the inverse frequencies.
    #[serde(default = "default_vision_theta")]
    pub rope_theta: f64,
}

fn default_channels() -> usize {
    3
}
fn default_tp() -> usize {
    2
}
fn default_merge() -> usize {
    2
}
fn default_vision_act() -> String {
    "gelu_pytorch_tanh".into()
}
fn default_vision_theta() -> f64 {
    10_000.0
}

impl VisionConfig {
    /// Rotary base of the 2-D vision RoPE.
    pub fn rope_theta(&self) -> f64 {
        self.rope_parameters
            .as_ref()
            .map_or(10_000.0, |r| r.rope_theta)
    }
}

/// A parsed Qwen3-VL (or surgered, text-only) `config.json`.
#[derive(Debug, Clone)]
pub struct Qwen3VlConfig {
    /// The decoder's settings.
    pub text: TextConfig,
    /// Multimodal special token ids.
    pub tokens: SpecialTokens,
    /// Whether `lm_head` shares `embed_tokens`' weights.
    pub tie_word_embeddings: bool,
    /// Number of DeepStack levels the decoder was trained with
    /// (`len(vision_config.deepstack_visual_indexes)`, or the surgery record).
    pub deepstack_levels: usize,
    /// Whether the config still describes a vision tower.
    pub has_vision_config: bool,
    /// The Qwen3-VL config JSON (for a surgered checkpoint: the one it recorded, with
    /// the surgery record under `mosaic_surgery`), kept so a copy can be written faithfully.
    pub raw: Value,
    /// Whether the checkpoint is a surgered one in the portable Qwen3 layout.
    pub portable: bool,
}

/// Key under which a surgered config records what was removed.
pub const SURGERY_KEY: &str = "mosaic_surgery";

#[derive(Deserialize)]
struct RawRope {
    #[serde(default)]
    rope_type: Option<String>,
    #[serde(default, alias = "type")]
    legacy_type: Option<String>,
    #[serde(default)]
    rope_theta: Option<f64>,
    #[serde(default)]
    mrope_section: Option<Vec<usize>>,
}

#[derive(Deserialize)]
struct RawText {
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    #[serde(default)]
    num_key_value_heads: Option<usize>,
    #[serde(default)]
    head_dim: Option<usize>,
    #[serde(default = "default_act")]
    hidden_act: String,
    #[serde(default = "default_eps")]
    rms_norm_eps: f64,
    #[serde(default)]
    attention_bias: bool,
    #[serde(default = "default_max_pos")]
    max_position_embeddings: usize,
    #[serde(default)]
    rope_parameters: Option<RawRope>,
    #[serde(default)]
    rope_scaling: Option<RawRope>,
    #[serde(default)]
    rope_theta: Option<f64>,
    #[serde(default)]
    tie_word_embeddings: Option<bool>,
}

fn default_act() -> String {
    "silu".into()
}
fn default_eps() -> f64 {
    1e-6
}
fn default_max_pos() -> usize {
    128_000
}

fn field<T: for<'de> Deserialize<'de>>(raw: &Value, name: &str) -> Result<Option<T>> {
    match raw.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => serde_json::from_value(v.clone())
            .map(Some)
            .map_err(|e| Error::config(name, e.to_string())),
    }
}

impl Qwen3VlConfig {
    /// Read and validate `config.json` at `path`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let raw: Value = serde_json::from_str(&text).map_err(|e| Error::Json {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        Self::from_value(raw)
    }

    /// Parse and validate an already-decoded config. A pre-quantized checkpoint
    /// (`quantization_config`: FP8, AWQ, GPTQ, ...) is refused with
    /// [`Error::QuantizedCheckpoint`] naming its scheme.
    pub fn from_value(raw: Value) -> Result<Self> {
        let moe = match raw.get("model_type").and_then(Value::as_str) {
            None | Some("qwen3_vl") => false,
            Some("qwen3_vl_moe") => true,
            Some(mt @ ("qwen3" | "qwen3_moe")) => {
                let mt = mt.to_string();
                return Self::from_portable(raw, &mt);
            }
            Some(mt) => {
                return Err(Error::config(
                    "model_type",
                    format!(
                        "expected \"qwen3_vl\" or \"qwen3_vl_moe\", found {mt:?} (only Qwen3-VL is supported)"
                    ),
                ));
            }
        };
        refuse_quantized(&raw)?;
        let text_raw = raw
            .get("text_config")
            .ok_or_else(|| Error::config("text_config", "missing"))?;
        let t: RawText = serde_json::from_value(text_raw.clone())
            .map_err(|e| Error::config("text_config", e.to_string()))?;
        let mut text = TextConfig::from_raw(&t)?;
        if moe {
            text.moe = Some(parse_moe(text_raw, text.num_hidden_layers)?);
        }
        let tokens = SpecialTokens::from_config(&raw, text.vocab_size)?;
        let tie_word_embeddings = field::<bool>(&raw, "tie_word_embeddings")?
            .or(t.tie_word_embeddings)
            .unwrap_or(false);
        let vision = raw.get("vision_config").filter(|v| !v.is_null());
        let deepstack_levels = deepstack_levels(&raw, text.num_hidden_layers)?;
        Ok(Self {
            text,
            tokens,
            tie_word_embeddings,
            deepstack_levels,
            has_vision_config: vision.is_some(),
            raw,
            portable: false,
        })
    }

    /// A surgered checkpoint saved as Qwen3 / Qwen3-MoE: its recorded Qwen3-VL config.
    fn from_portable(raw: Value, model_type: &str) -> Result<Self> {
        let record = raw.get(SURGERY_KEY).filter(|r| r.is_object());
        let vl = record.and_then(|r| r.get(crate::portable::VL_CONFIG_KEY));
        let Some(vl) = vl.filter(|v| v.is_object()) else {
            return Err(Error::config(
                "model_type",
                format!(
                    "{model_type:?} is a text-only Qwen3 model; only Qwen3-VL checkpoints and Mosaic-surgered ones (with {SURGERY_KEY}.{}) load",
                    crate::portable::VL_CONFIG_KEY
                ),
            ));
        };
        let mut inner = vl.clone();
        if let (Value::Object(m), Some(Value::Object(r))) = (&mut inner, record) {
            let mut r = r.clone();
            r.remove(crate::portable::VL_CONFIG_KEY);
            m.insert(SURGERY_KEY.into(), Value::Object(r));
        }
        let mut cfg = Self::from_value(inner)?;
        if cfg.text.moe.is_some() != (model_type == "qwen3_moe") {
            return Err(Error::config(
                "model_type",
                format!("{model_type:?} disagrees with the recorded Qwen3-VL config"),
            ));
        }
        cfg.portable = true;
        Ok(cfg)
    }

    /// The dtype the checkpoint was saved in (`text_config.dtype`, or the older
    /// `torch_dtype`, or the top-level ones); `None` when unset or not a float type.
    pub fn dtype(&self) -> Option<DType> {
        let text = self.raw.get("text_config");
        [text, Some(&self.raw)]
            .into_iter()
            .flatten()
            .flat_map(|v| [v.get("dtype"), v.get("torch_dtype")])
            .flatten()
            .find_map(|v| match v.as_str()? {
                "bfloat16" => Some(DType::BF16),
                "float16" => Some(DType::F16),
                "float32" => Some(DType::F32),
                _ => None,
            })
    }

    /// The vision tower's settings. Parsed on demand: surgery mode never needs them, so a
    /// checkpoint with a broken `vision_config` still loads its decoder.
    pub fn vision_config(&self) -> Result<VisionConfig> {
        let v = self
            .raw
            .get("vision_config")
            .filter(|v| !v.is_null())
            .ok_or_else(|| {
                Error::config(
                    "vision_config",
                    "absent (a surgered checkpoint has no vision tower)",
                )
            })?;
        let vc: VisionConfig = serde_json::from_value(v.clone())
            .map_err(|e| Error::config("vision_config", e.to_string()))?;
        let side = (vc.num_position_embeddings as f64).sqrt() as usize;
        let checks = [
            (
                "vision_config.num_heads",
                vc.num_heads > 0 && vc.hidden_size.is_multiple_of(vc.num_heads),
            ),
            (
                "vision_config.hidden_size",
                vc.num_heads > 0 && (vc.hidden_size / vc.num_heads).is_multiple_of(4),
            ),
            (
                "vision_config.num_position_embeddings",
                side * side == vc.num_position_embeddings && side > 0,
            ),
            (
                "vision_config.spatial_merge_size",
                vc.spatial_merge_size > 0,
            ),
            (
                "vision_config.patch_size",
                vc.patch_size > 0 && vc.temporal_patch_size > 0,
            ),
            (
                "vision_config.out_hidden_size",
                vc.out_hidden_size == self.text.hidden_size,
            ),
            (
                "vision_config.deepstack_visual_indexes",
                vc.deepstack_visual_indexes.iter().all(|&i| i < vc.depth),
            ),
        ];
        if let Some((field, _)) = checks.iter().find(|(_, ok)| !ok) {
            return Err(Error::config(
                *field,
                format!("inconsistent vision tower settings: {vc:?}"),
            ));
        }
        Ok(vc)
    }

    /// The config of the surgered, text-only checkpoint: the portable Qwen3 (or
    /// Qwen3-MoE) config of [`crate::portable::config_json`], whose `mosaic_surgery`
    /// records what was removed (DeepStack levels, parameters, bytes, accumulated over
    /// re-saves), where it came from (`source`: hub repository, revision and resolved
    /// commit; a re-saved checkpoint keeps its first source) and the Qwen3-VL config.
    pub fn surgered_json(
        &self,
        removed_parameters: u64,
        removed_bytes: u64,
        source: Option<Value>,
    ) -> Value {
        let previous = self.raw.get(SURGERY_KEY);
        let earlier = |k: &str| previous.and_then(|p| p.get(k)).and_then(Value::as_u64);
        let source = previous
            .and_then(|p| p.get("source"))
            .filter(|s| !s.is_null())
            .cloned()
            .or(source);
        let mut record = serde_json::json!({
            "deepstack_levels": self.deepstack_levels,
            "removed_parameters": earlier("removed_parameters").unwrap_or(0) + removed_parameters,
            "removed_bytes": earlier("removed_bytes").unwrap_or(0) + removed_bytes,
            "note": "vision tower removed by mosaic vision-surgery; visual inputs come from an EmbeddingAdapter; the Qwen3-VL config is under qwen3_vl",
        });
        if let (Some(src), Value::Object(r)) = (source, &mut record) {
            r.insert("source".into(), src);
        }
        crate::portable::config_json(self, record)
    }

    /// Where the decoder's tensors sit: `model.language_model` in a Qwen3-VL checkpoint,
    /// `model` in a surgered (portable) one.
    pub fn text_prefix(&self) -> &'static str {
        if self.portable {
            crate::portable::PORTABLE_PREFIX
        } else {
            crate::portable::VL_PREFIX
        }
    }
}

impl TextConfig {
    /// The decoder's settings from `text_config` as read: defaults filled in (key/value
    /// heads, head width), the rotary settings of either spelling, every value checked.
    fn from_raw(t: &RawText) -> Result<Self> {
        if t.hidden_act != "silu" {
            return Err(Error::config(
                "text_config.hidden_act",
                format!("only \"silu\" is supported, found {:?}", t.hidden_act),
            ));
        }
        let head_dim = match t.head_dim {
            Some(h) => h,
            None if t.num_attention_heads > 0
                && t.hidden_size.is_multiple_of(t.num_attention_heads) =>
            {
                t.hidden_size / t.num_attention_heads
            }
            None => {
                return Err(Error::config(
                    "text_config.head_dim",
                    "absent and hidden_size is not a multiple of num_attention_heads",
                ));
            }
        };
        let text = TextConfig {
            vocab_size: t.vocab_size,
            hidden_size: t.hidden_size,
            intermediate_size: t.intermediate_size,
            num_hidden_layers: t.num_hidden_layers,
            num_attention_heads: t.num_attention_heads,
            num_key_value_heads: t.num_key_value_heads.unwrap_or(t.num_attention_heads),
            head_dim,
            rms_norm_eps: t.rms_norm_eps,
            attention_bias: t.attention_bias,
            max_position_embeddings: t.max_position_embeddings,
            rope: parse_rope(t)?,
            moe: None,
        };
        validate_text(&text)?;
        Ok(text)
    }
}

impl SpecialTokens {
    /// The four ids at the top level of `raw`, each required and inside the vocabulary.
    fn from_config(raw: &Value, vocab_size: usize) -> Result<Self> {
        let tok = |name: &str| -> Result<u32> {
            let id = field::<u32>(raw, name)?.ok_or_else(|| Error::config(name, "missing"))?;
            if id as usize >= vocab_size {
                return Err(Error::config(
                    name,
                    format!("id {id} is outside the vocabulary (size {vocab_size})"),
                ));
            }
            Ok(id)
        };
        Ok(SpecialTokens {
            image_token_id: tok("image_token_id")?,
            video_token_id: tok("video_token_id")?,
            vision_start_token_id: tok("vision_start_token_id")?,
            vision_end_token_id: tok("vision_end_token_id")?,
        })
    }
}

/// DeepStack levels: the vision config's `deepstack_visual_indexes`, or after surgery the
/// surgery record's count; at most one per decoder layer.
/// [`Error::QuantizedCheckpoint`] when the config (or its `text_config`) carries a
/// `quantization_config`.
fn refuse_quantized(raw: &Value) -> Result<()> {
    let q = [Some(raw), raw.get("text_config")]
        .into_iter()
        .flatten()
        .filter_map(|v| v.get("quantization_config"))
        .find(|q| !q.is_null());
    let Some(q) = q else { return Ok(()) };
    let method = q
        .get("quant_method")
        .and_then(Value::as_str)
        .unwrap_or("unnamed");
    let detail = [("bits", q.get("bits")), ("fmt", q.get("fmt"))]
        .into_iter()
        .filter_map(|(k, v)| v.filter(|v| !v.is_null()).map(|v| format!("{k} {v}")))
        .collect::<Vec<_>>()
        .join(", ");
    let scheme = if detail.is_empty() {
        method.to_string()
    } else {
        format!("{method} ({detail})")
    };
    Err(Error::QuantizedCheckpoint { scheme })
}

fn deepstack_levels(raw: &Value, layers: usize) -> Result<usize> {
    let levels = match raw.get("vision_config").filter(|v| !v.is_null()) {
        Some(v) => match v.get("deepstack_visual_indexes") {
            Some(Value::Array(a)) => a.len(),
            None | Some(Value::Null) => 0,
            Some(other) => {
                return Err(Error::config(
                    "vision_config.deepstack_visual_indexes",
                    format!("expected a list, found {other}"),
                ));
            }
        },
        None => raw
            .get(SURGERY_KEY)
            .and_then(|s| s.get("deepstack_levels"))
            .and_then(Value::as_u64)
            .map_or(0, |n| usize::try_from(n).unwrap_or(usize::MAX)),
    };
    if levels > layers {
        return Err(Error::config(
            "vision_config.deepstack_visual_indexes",
            format!("{levels} DeepStack levels but only {layers} decoder layers"),
        ));
    }
    Ok(levels)
}

fn parse_rope(t: &RawText) -> Result<RopeParameters> {
    let (src, r) = match (&t.rope_parameters, &t.rope_scaling) {
        (Some(r), _) => ("text_config.rope_parameters", r),
        (None, Some(r)) => ("text_config.rope_scaling", r),
        (None, None) => {
            return Err(Error::config(
                "text_config.rope_parameters",
                "missing (neither rope_parameters nor the legacy rope_scaling is present)",
            ));
        }
    };
    let kind = r
        .rope_type
        .as_deref()
        .or(r.legacy_type.as_deref())
        .unwrap_or("default");
    if kind != "default" && kind != "mrope" {
        return Err(Error::config(
            format!("{src}.rope_type"),
            format!("only \"default\" rotary scaling is supported, found {kind:?}"),
        ));
    }
    let theta = r
        .rope_theta
        .or(t.rope_theta)
        .ok_or_else(|| Error::config(format!("{src}.rope_theta"), "missing"))?;
    if !(theta.is_finite() && theta > 1.0) {
        return Err(Error::config(
            format!("{src}.rope_theta"),
            format!("must be a finite number > 1, found {theta}"),
        ));
    }
    let sec = r
        .mrope_section
        .as_ref()
        .ok_or_else(|| Error::config(format!("{src}.mrope_section"), "missing"))?;
    let sec: [usize; 3] = sec.as_slice().try_into().map_err(|_| {
        Error::config(
            format!("{src}.mrope_section"),
            format!("expected 3 entries (t, h, w), found {}", sec.len()),
        )
    })?;
    Ok(RopeParameters {
        rope_theta: theta,
        mrope_section: sec,
    })
}

/// The mixture-of-experts settings of a `qwen3_vl_moe` `text_config`, checked.
fn parse_moe(text: &Value, layers: usize) -> Result<MoeConfig> {
    let get = |name: &str| -> Result<Option<usize>> {
        field::<usize>(text, name).map_err(|e| match e {
            Error::Config { message, .. } => Error::config(format!("text_config.{name}"), message),
            other => other,
        })
    };
    // the value and the key it was read under
    let required = |names: &[&'static str]| -> Result<(usize, &'static str)> {
        for &n in names {
            if let Some(v) = get(n)? {
                return Ok((v, n));
            }
        }
        Err(Error::config(
            format!("text_config.{}", names[0]),
            "missing",
        ))
    };
    let (num_experts, experts_key) = required(&["num_experts", "num_local_experts"])?;
    let m = MoeConfig {
        num_experts,
        num_experts_per_tok: required(&["num_experts_per_tok"])?.0,
        moe_intermediate_size: required(&["moe_intermediate_size"])?.0,
        decoder_sparse_step: get("decoder_sparse_step")?.unwrap_or(1),
        mlp_only_layers: field::<Vec<usize>>(text, "mlp_only_layers")
            .map_err(|e| Error::config("text_config.mlp_only_layers", e.to_string()))?
            .unwrap_or_default(),
    };
    let checks = [
        (experts_key, m.num_experts, 1, 1 << 12),
        (
            "num_experts_per_tok",
            m.num_experts_per_tok,
            1,
            m.num_experts,
        ),
        ("moe_intermediate_size", m.moe_intermediate_size, 1, 1 << 20),
        (
            "decoder_sparse_step",
            m.decoder_sparse_step,
            1,
            layers.max(1),
        ),
    ];
    for (name, v, lo, hi) in checks {
        if v < lo || v > hi {
            return Err(Error::config(
                format!("text_config.{name}"),
                format!("{v} is outside [{lo}, {hi}]"),
            ));
        }
    }
    if let Some(&l) = m.mlp_only_layers.iter().find(|&&l| l >= layers) {
        return Err(Error::config(
            "text_config.mlp_only_layers",
            format!("layer {l} does not exist ({layers} layers)"),
        ));
    }
    Ok(m)
}

fn validate_text(t: &TextConfig) -> Result<()> {
    let positive = [
        ("vocab_size", t.vocab_size),
        ("hidden_size", t.hidden_size),
        ("intermediate_size", t.intermediate_size),
        ("num_hidden_layers", t.num_hidden_layers),
        ("num_attention_heads", t.num_attention_heads),
        ("num_key_value_heads", t.num_key_value_heads),
        ("head_dim", t.head_dim),
    ];
    for (name, v) in positive {
        if v == 0 {
            return Err(Error::config(format!("text_config.{name}"), "must be > 0"));
        }
    }
    // sizes the model is built with: bounded before anything is sized by them (the
    // released checkpoints are far inside these)
    let bounded = [
        ("vocab_size", t.vocab_size, 1 << 24),
        ("hidden_size", t.hidden_size, 1 << 16),
        ("intermediate_size", t.intermediate_size, 1 << 20),
        ("num_hidden_layers", t.num_hidden_layers, 1024),
        ("num_attention_heads", t.num_attention_heads, 1024),
        ("num_key_value_heads", t.num_key_value_heads, 1024),
        ("head_dim", t.head_dim, 4096),
        (
            "max_position_embeddings",
            t.max_position_embeddings,
            1 << 24,
        ),
    ];
    for (name, v, max) in bounded {
        if v > max {
            return Err(Error::config(
                format!("text_config.{name}"),
                format!("{v} is past the limit of {max}"),
            ));
        }
    }
    if !t.num_attention_heads.is_multiple_of(t.num_key_value_heads) {
        return Err(Error::config(
            "text_config.num_key_value_heads",
            format!(
                "{} query heads are not a multiple of {} key/value heads",
                t.num_attention_heads, t.num_key_value_heads
            ),
        ));
    }
    if !t.head_dim.is_multiple_of(2) {
        return Err(Error::config(
            "text_config.head_dim",
            format!("must be even for rotary embeddings, found {}", t.head_dim),
        ));
    }
    let half = t.head_dim / 2;
    let [_, h, w] = t.rope.mrope_section;
    if 3 * h > half + 2 || 3 * w > half + 1 {
        return Err(Error::config(
            "text_config.rope_parameters.mrope_section",
            format!(
                "{:?} does not fit head_dim/2 = {half} frequencies",
                t.rope.mrope_section
            ),
        ));
    }
    if t.rms_norm_eps.is_nan() || t.rms_norm_eps <= 0.0 {
        return Err(Error::config(
            "text_config.rms_norm_eps",
            format!("must be > 0, found {}", t.rms_norm_eps),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn base(text_extra: Value) -> Value {
        let mut text = json!({
            "vocab_size": 320, "hidden_size": 64, "intermediate_size": 128,
            "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 2,
            "head_dim": 16, "rms_norm_eps": 1e-6
        });
        if let (Value::Object(t), Value::Object(e)) = (&mut text, text_extra) {
            t.extend(e);
        }
        json!({
            "model_type": "qwen3_vl", "image_token_id": 268, "video_token_id": 269,
            "vision_start_token_id": 265, "vision_end_token_id": 266,
            "text_config": text,
            "vision_config": {"deepstack_visual_indexes": [0, 2]}
        })
    }

    #[test]
    fn pre_quantized_checkpoints_are_refused_naming_the_scheme() {
        let rope = json!({"rope_type": "default", "rope_theta": 5e6, "mrope_section": [4, 2, 2]});
        // as the FP8, AWQ and GPTQ releases write them
        for (q, in_text, expect) in [
            (
                json!({"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
                       "weight_block_size": [128, 128]}),
                false,
                "fp8 (fmt \"e4m3\")",
            ),
            (
                json!({"quant_method": "awq", "bits": 4, "group_size": 128, "zero_point": true}),
                false,
                "awq (bits 4)",
            ),
            (
                json!({"quant_method": "gptq", "bits": 8}),
                true,
                "gptq (bits 8)",
            ),
            (json!({"load_in_4bit": true}), false, "unnamed"),
        ] {
            let mut cfg = base(json!({ "rope_parameters": rope.clone() }));
            let at = if in_text {
                &mut cfg["text_config"]
            } else {
                &mut cfg
            };
            at["quantization_config"] = q;
            match Qwen3VlConfig::from_value(cfg) {
                Err(Error::QuantizedCheckpoint { scheme }) => assert_eq!(scheme, expect),
                other => panic!("{expect}: {other:?}"),
            }
        }
        // null is no quantization
        let mut cfg = base(json!({ "rope_parameters": rope }));
        cfg["quantization_config"] = Value::Null;
        assert!(Qwen3VlConfig::from_value(cfg).is_ok());
    }

    #[test]
    fn oversized_shapes_are_config_errors_naming_the_field() {
        for (field, v) in [
            ("vocab_size", json!(1u64 << 40)),
            ("hidden_size", json!(1u64 << 20)),
            ("num_hidden_layers", json!(100_000_000_000u64)),
            ("max_position_embeddings", json!(1u64 << 40)),
        ] {
            let rope = json!({"rope_type": "default", "rope_theta": 5e6,
                "mrope_section": [4, 2, 2], "mrope_interleaved": true});
            let ok = Qwen3VlConfig::from_value(base(json!({ "rope_parameters": rope.clone() })));
            assert!(ok.is_ok(), "{ok:?}");
            let e = Qwen3VlConfig::from_value(base(json!({ field: v, "rope_parameters": rope })))
                .unwrap_err();
            assert!(e.to_string().contains(field), "{field}: {e}");
        }
    }

    #[test]
    fn both_rope_spellings_parse_to_the_same_thing() {
        let new = Qwen3VlConfig::from_value(base(json!({"rope_parameters": {
            "rope_type": "default", "rope_theta": 5e6, "mrope_section": [4, 2, 2],
            "mrope_interleaved": true}})))
        .unwrap();
        let legacy = Qwen3VlConfig::from_value(base(json!({
            "rope_scaling": {"rope_type": "default", "mrope_section": [4, 2, 2], "mrope_interleaved": true},
            "rope_theta": 5e6})))
        .unwrap();
        assert_eq!(new.text, legacy.text);
        assert_eq!(new.text.rope.rope_theta, 5e6);
        assert_eq!(new.deepstack_levels, 2);
    }

    #[test]
    fn bad_configs_name_the_field() {
        let e =
            Qwen3VlConfig::from_value(base(json!({"rope_scaling": {"mrope_section": [4, 2, 2]}})))
                .unwrap_err();
        assert!(e.to_string().contains("rope_theta"), "{e}");
        let e = Qwen3VlConfig::from_value(base(json!({"num_key_value_heads": 3,
            "rope_parameters": {"rope_theta": 1e4, "mrope_section": [4, 2, 2]}})))
        .unwrap_err();
        assert!(e.to_string().contains("num_key_value_heads"), "{e}");
        let e = Qwen3VlConfig::from_value(base(json!({
            "rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4, "mrope_section": [4, 2, 2]}})))
        .unwrap_err();
        assert!(e.to_string().contains("yarn"), "{e}");
    }

    #[test]
    fn surgered_config_drops_vision_but_keeps_deepstack_levels() {
        let c = Qwen3VlConfig::from_value(base(json!({"rope_parameters": {
            "rope_theta": 5e6, "mrope_section": [4, 2, 2]}})))
        .unwrap();
        let saved = c.surgered_json(10, 40, None);
        assert_eq!(saved["model_type"], "qwen3");
        assert_eq!(saved["architectures"][0], "Qwen3ForCausalLM");
        let s = Qwen3VlConfig::from_value(saved).unwrap();
        assert!(!s.has_vision_config && s.portable);
        assert_eq!(s.text_prefix(), "model");
        assert_eq!(s.deepstack_levels, 2);
        assert_eq!(s.raw[SURGERY_KEY]["removed_bytes"], 40);
        assert_eq!(s.text, c.text);
        assert_eq!(s.tokens, c.tokens);
        // saved again: the record accumulates and the layout stays
        let again = Qwen3VlConfig::from_value(s.surgered_json(1, 2, None)).unwrap();
        assert_eq!(again.raw[SURGERY_KEY]["removed_bytes"], 42);
        assert_eq!(again.text, c.text);
        // a plain Qwen3 model is not a Qwen3-VL one
        let e = Qwen3VlConfig::from_value(json!({"model_type": "qwen3"})).unwrap_err();
        assert!(e.to_string().contains("text-only Qwen3"), "{e}");
    }
}
