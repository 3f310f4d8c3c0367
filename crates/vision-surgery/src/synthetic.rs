//! Random-weight Qwen3-VL checkpoints of real shapes, for benchmarks and load tests.
//!
//! Latency depends on shapes, not on weight values, so a checkpoint with Qwen3-VL-2B's
//! sizes and random weights measures what the real one would (the vocabulary, hidden
//! sizes, heads and vision depth all match; only the decoder depth may be reduced, and
//! callers must say so). The writer streams tensors straight to a safetensors file, so a
//! multi-GB checkpoint never sits in memory.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde_json::json;

use crate::error::{Error, Result};
use crate::full::PREPROCESSOR_CONFIG;

/// The sizes of a Qwen3-VL checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelShape {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Decoder width H.
    pub hidden_size: usize,
    /// Decoder MLP width.
    pub intermediate_size: usize,
    /// Decoder layers.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads.
    pub num_key_value_heads: usize,
    /// Head width.
    pub head_dim: usize,
    /// Whether the output head is the embedding table.
    pub tie_word_embeddings: bool,
    /// Interleaved MRoPE sections (t, h, w), summing to at most head_dim / 2.
    pub mrope_section: [usize; 3],
    /// Vision blocks.
    pub vision_depth: usize,
    /// Vision width.
    pub vision_hidden_size: usize,
    /// Vision MLP width.
    pub vision_intermediate_size: usize,
    /// Vision heads.
    pub vision_num_heads: usize,
    /// Vision blocks whose outputs feed DeepStack.
    pub deepstack_visual_indexes: [usize; 3],
    /// How many of `deepstack_visual_indexes` are used (0..=3).
    pub deepstack_levels: usize,
}

impl ModelShape {
    /// Qwen3-VL-2B-Instruct: H 2048, 28 layers, 16 query / 8 key-value heads of 128,
    /// MLP 6144, vocabulary 151,936, tied head; vision tower of 24 blocks, width 1024,
    /// 16 heads, MLP 4096, DeepStack from blocks 5, 11, 17.
    pub fn qwen3_vl_2b() -> Self {
        Self {
            vocab_size: 151_936,
            hidden_size: 2048,
            intermediate_size: 6144,
            num_hidden_layers: 28,
            num_attention_heads: 16,
            num_key_value_heads: 8,
            head_dim: 128,
            tie_word_embeddings: true,
            mrope_section: [24, 20, 20],
            vision_depth: 24,
            vision_hidden_size: 1024,
            vision_intermediate_size: 4096,
            vision_num_heads: 16,
            deepstack_visual_indexes: [5, 11, 17],
            deepstack_levels: 3,
        }
    }

    /// The same shape with `n` decoder layers (DeepStack levels capped at `n`).
    pub fn with_decoder_layers(mut self, n: usize) -> Self {
        self.num_hidden_layers = n;
        self.deepstack_levels = self.deepstack_levels.min(n);
        self
    }

    /// Id of `<|endoftext|>`, the first of the 14 special tokens laid out as in Qwen
    /// (`<|im_start|>` +1, `<|im_end|>` +2, `<|vision_start|>` +9, `<|vision_end|>` +10,
    /// `<|image_pad|>` +12, `<|video_pad|>` +13): Qwen's own 151,643 when the vocabulary
    /// has room, else the last 14 ids.
    pub fn special_base(&self) -> u32 {
        if self.vocab_size >= 151_643 + 14 {
            151_643
        } else {
            self.vocab_size.saturating_sub(14) as u32
        }
    }

    /// The config.json of this shape.
    pub fn config_json(&self) -> serde_json::Value {
        let base = self.special_base();
        let ds: Vec<usize> = self.deepstack_visual_indexes[..self.deepstack_levels].to_vec();
        json!({
            "architectures": ["Qwen3VLForConditionalGeneration"],
            "model_type": "qwen3_vl",
            "image_token_id": base + 12,
            "video_token_id": base + 13,
            "vision_start_token_id": base + 9,
            "vision_end_token_id": base + 10,
            "tie_word_embeddings": self.tie_word_embeddings,
            "text_config": {
                "model_type": "qwen3_vl_text",
                "vocab_size": self.vocab_size,
                "hidden_size": self.hidden_size,
                "intermediate_size": self.intermediate_size,
                "num_hidden_layers": self.num_hidden_layers,
                "num_attention_heads": self.num_attention_heads,
                "num_key_value_heads": self.num_key_value_heads,
                "head_dim": self.head_dim,
                "hidden_act": "silu",
                "rms_norm_eps": 1e-6,
                "attention_bias": false,
                "max_position_embeddings": 262144,
                "rope_parameters": {
                    "rope_type": "default",
                    "rope_theta": 5_000_000.0,
                    "mrope_section": self.mrope_section,
                    "mrope_interleaved": true
                },
                "tie_word_embeddings": self.tie_word_embeddings
            },
            "vision_config": {
                "model_type": "qwen3_vl_vision",
                "depth": self.vision_depth,
                "hidden_size": self.vision_hidden_size,
                "intermediate_size": self.vision_intermediate_size,
                "num_heads": self.vision_num_heads,
                "in_channels": 3,
                "patch_size": 16,
                "temporal_patch_size": 2,
                "spatial_merge_size": 2,
                "out_hidden_size": self.hidden_size,
                "num_position_embeddings": 2304,
                "deepstack_visual_indexes": ds,
                "hidden_act": "gelu_pytorch_tanh"
            }
        })
    }

    /// Every tensor of the checkpoint with its shape and initial value kind.
    fn tensors(&self) -> Vec<(String, Vec<usize>, Init)> {
        let (h, i, v) = (self.hidden_size, self.intermediate_size, self.vocab_size);
        let (nh, nkv, hd) = (
            self.num_attention_heads,
            self.num_key_value_heads,
            self.head_dim,
        );
        let mut t = Vec::new();
        let mut add = |name: String, shape: Vec<usize>, init: Init| t.push((name, shape, init));
        let p = "model.language_model";
        add(format!("{p}.embed_tokens.weight"), vec![v, h], Init::Normal);
        for l in 0..self.num_hidden_layers {
            let q = format!("{p}.layers.{l}");
            add(format!("{q}.input_layernorm.weight"), vec![h], Init::Ones);
            add(
                format!("{q}.post_attention_layernorm.weight"),
                vec![h],
                Init::Ones,
            );
            add(
                format!("{q}.self_attn.q_proj.weight"),
                vec![nh * hd, h],
                Init::Normal,
            );
            add(
                format!("{q}.self_attn.k_proj.weight"),
                vec![nkv * hd, h],
                Init::Normal,
            );
            add(
                format!("{q}.self_attn.v_proj.weight"),
                vec![nkv * hd, h],
                Init::Normal,
            );
            add(
                format!("{q}.self_attn.o_proj.weight"),
                vec![h, nh * hd],
                Init::Normal,
            );
            add(format!("{q}.self_attn.q_norm.weight"), vec![hd], Init::Ones);
            add(format!("{q}.self_attn.k_norm.weight"), vec![hd], Init::Ones);
            add(
                format!("{q}.mlp.gate_proj.weight"),
                vec![i, h],
                Init::Normal,
            );
            add(format!("{q}.mlp.up_proj.weight"), vec![i, h], Init::Normal);
            add(
                format!("{q}.mlp.down_proj.weight"),
                vec![h, i],
                Init::Normal,
            );
        }
        add(format!("{p}.norm.weight"), vec![h], Init::Ones);
        if !self.tie_word_embeddings {
            add("lm_head.weight".into(), vec![v, h], Init::Normal);
        }
        let (dv, iv) = (self.vision_hidden_size, self.vision_intermediate_size);
        let vp = "model.visual";
        add(
            format!("{vp}.patch_embed.proj.weight"),
            vec![dv, 3, 2, 16, 16],
            Init::Normal,
        );
        add(format!("{vp}.patch_embed.proj.bias"), vec![dv], Init::Zeros);
        add(
            format!("{vp}.pos_embed.weight"),
            vec![2304, dv],
            Init::Normal,
        );
        for b in 0..self.vision_depth {
            let q = format!("{vp}.blocks.{b}");
            for n in ["norm1", "norm2"] {
                add(format!("{q}.{n}.weight"), vec![dv], Init::Ones);
                add(format!("{q}.{n}.bias"), vec![dv], Init::Zeros);
            }
            add(
                format!("{q}.attn.qkv.weight"),
                vec![3 * dv, dv],
                Init::Normal,
            );
            add(format!("{q}.attn.qkv.bias"), vec![3 * dv], Init::Zeros);
            add(format!("{q}.attn.proj.weight"), vec![dv, dv], Init::Normal);
            add(format!("{q}.attn.proj.bias"), vec![dv], Init::Zeros);
            add(
                format!("{q}.mlp.linear_fc1.weight"),
                vec![iv, dv],
                Init::Normal,
            );
            add(format!("{q}.mlp.linear_fc1.bias"), vec![iv], Init::Zeros);
            add(
                format!("{q}.mlp.linear_fc2.weight"),
                vec![dv, iv],
                Init::Normal,
            );
            add(format!("{q}.mlp.linear_fc2.bias"), vec![dv], Init::Zeros);
        }
        let merger = |add: &mut dyn FnMut(String, Vec<usize>, Init), q: String, norm: usize| {
            add(format!("{q}.norm.weight"), vec![norm], Init::Ones);
            add(format!("{q}.norm.bias"), vec![norm], Init::Zeros);
            add(
                format!("{q}.linear_fc1.weight"),
                vec![4 * dv, 4 * dv],
                Init::Normal,
            );
            add(format!("{q}.linear_fc1.bias"), vec![4 * dv], Init::Zeros);
            add(
                format!("{q}.linear_fc2.weight"),
                vec![h, 4 * dv],
                Init::Normal,
            );
            add(format!("{q}.linear_fc2.bias"), vec![h], Init::Zeros);
        };
        merger(&mut add, format!("{vp}.merger"), dv);
        for k in 0..self.deepstack_levels {
            merger(&mut add, format!("{vp}.deepstack_merger_list.{k}"), 4 * dv);
        }
        t
    }

    /// Bytes of the `model.visual.*` tensors in f32.
    pub fn vision_bytes(&self) -> u64 {
        self.tensors()
            .iter()
            .filter(|(n, _, _)| crate::decoder::is_visual_tensor(n))
            .map(|(_, s, _)| s.iter().product::<usize>() as u64 * 4)
            .sum()
    }

    /// Bytes of every other tensor in f32.
    pub fn decoder_bytes(&self) -> u64 {
        self.tensors()
            .iter()
            .filter(|(n, _, _)| !crate::decoder::is_visual_tensor(n))
            .map(|(_, s, _)| s.iter().product::<usize>() as u64 * 4)
            .sum()
    }
}

#[derive(Debug, Clone, Copy)]
enum Init {
    Normal,
    Ones,
    Zeros,
}

/// [`write_random_checkpoint`] unless `dir` already holds a checkpoint of `shape` (its
/// config.json as that function writes it, and the weights file); returns whether it
/// wrote one. Benchmarks cache their synthetic checkpoints this way.
pub fn ensure_random_checkpoint(dir: &Path, shape: &ModelShape, seed: u64) -> Result<bool> {
    let want = serde_json::to_string_pretty(&shape.config_json()).map_err(|e| Error::Json {
        path: dir.join("config.json"),
        message: e.to_string(),
    })?;
    let current = std::fs::read_to_string(dir.join("config.json")).ok() == Some(want)
        && dir.join("model.safetensors").is_file();
    if !current {
        write_random_checkpoint(dir, shape, seed)?;
    }
    Ok(!current)
}

/// Write a random-weight f32 checkpoint of `shape` into `dir`: config.json,
/// preprocessor_config.json (Qwen3-VL's) and model.safetensors, weights drawn
/// uniformly with std 0.02 (the checkpoints' initializer range), norms 1, biases 0.
/// Deterministic in `seed`. Returns the path of the weights.
pub fn write_random_checkpoint(dir: &Path, shape: &ModelShape, seed: u64) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let write_json = |name: &str, v: &serde_json::Value| -> Result<()> {
        let p = dir.join(name);
        let text = serde_json::to_string_pretty(v).map_err(|e| Error::Json {
            path: p.clone(),
            message: e.to_string(),
        })?;
        std::fs::write(&p, text).map_err(|e| Error::io(&p, e))
    };
    write_json("config.json", &shape.config_json())?;
    write_json(
        PREPROCESSOR_CONFIG,
        &json!({
            "image_processor_type": "Qwen2VLImageProcessorFast",
            "do_resize": true, "do_rescale": true, "do_normalize": true, "do_convert_rgb": true,
            "resample": 3, "rescale_factor": 1.0 / 255.0,
            "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
            "size": {"shortest_edge": 65536, "longest_edge": 16777216},
            "patch_size": 16, "temporal_patch_size": 2, "merge_size": 2
        }),
    )?;

    let tensors = shape.tensors();
    let mut header = serde_json::Map::new();
    let mut offset = 0usize;
    for (name, s, _) in &tensors {
        let bytes = s.iter().product::<usize>() * 4;
        header.insert(
            name.clone(),
            json!({"dtype": "F32", "shape": s, "data_offsets": [offset, offset + bytes]}),
        );
        offset += bytes;
    }
    header.insert(
        "__metadata__".into(),
        json!({"format": "pt", "generator": "mosaic synthetic", "seed": seed.to_string()}),
    );
    let mut head = serde_json::to_vec(&header).map_err(|e| Error::Json {
        path: dir.join("model.safetensors"),
        message: e.to_string(),
    })?;
    while !head.len().is_multiple_of(8) {
        head.push(b' ');
    }
    let path = dir.join("model.safetensors");
    let tmp = dir.join("model.safetensors.tmp");
    let io = |e| Error::io(&tmp, e);
    let mut out = BufWriter::with_capacity(1 << 22, File::create(&tmp).map_err(io)?);
    out.write_all(&(head.len() as u64).to_le_bytes())
        .map_err(io)?;
    out.write_all(&head).map_err(io)?;
    // xorshift64*: fast and plenty for random weights; uniform(-a, a) with std 0.02
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let a = 0.02f32 * 3f32.sqrt();
    let mut buf: Vec<u8> = Vec::with_capacity(1 << 22);
    for (_, s, init) in &tensors {
        let mut left = s.iter().product::<usize>();
        while left > 0 {
            let n = left.min(1 << 20);
            buf.clear();
            for _ in 0..n {
                let v = match init {
                    Init::Ones => 1.0f32,
                    Init::Zeros => 0.0,
                    Init::Normal => {
                        state ^= state >> 12;
                        state ^= state << 25;
                        state ^= state >> 27;
                        let r = state.wrapping_mul(0x2545_F491_4F6C_DD1D);
                        let u = (r >> 40) as f32 / (1u64 << 24) as f32;
                        (2.0 * u - 1.0) * a
                    }
                };
                buf.extend_from_slice(&v.to_le_bytes());
            }
            out.write_all(&buf).map_err(io)?;
            left -= n;
        }
    }
    out.flush().map_err(io)?;
    drop(out);
    std::fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    #[test]
    fn a_small_synthetic_checkpoint_loads_both_ways() {
        let shape = ModelShape {
            vocab_size: 300,
            hidden_size: 32,
            intermediate_size: 48,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            num_key_value_heads: 2,
            head_dim: 8,
            tie_word_embeddings: false,
            mrope_section: [2, 1, 1],
            vision_depth: 2,
            vision_hidden_size: 16,
            vision_intermediate_size: 24,
            vision_num_heads: 2,
            deepstack_visual_indexes: [0, 1, 1],
            deepstack_levels: 2,
        };
        let dir = tempfile::tempdir().unwrap();
        write_random_checkpoint(dir.path(), &shape, 1).unwrap();
        let spec = dir.path().to_str().unwrap();
        let full = crate::full::FullModel::load(spec, DType::F32, &Device::Cpu).unwrap();
        assert_eq!(full.weight_bytes().vision, shape.vision_bytes());
        assert_eq!(full.weight_bytes().decoder, shape.decoder_bytes());
        let s = crate::SurgeredModel::load(spec, &crate::LoadOptions::default()).unwrap();
        assert_eq!(s.surgery_report().skipped_bytes, shape.vision_bytes());
        assert_eq!(s.config().deepstack_levels, 2);
    }
}
