//! The layout a surgered checkpoint is saved in: a plain Qwen3 causal language model
//! (`Qwen3ForCausalLM`, or `Qwen3MoeForCausalLM` for the MoE releases), the architecture
//! the reference library, vLLM, llama.cpp's converter and candle all load, with the
//! Qwen3-VL settings kept under `mosaic_surgery.qwen3_vl` for Mosaic.
//!
//! Tensors move from `model.language_model.*` to `model.*`; MoE experts are written one
//! per expert (`mlp.experts.{j}.{gate,up,down}_proj.weight`), as the reference writes
//! Qwen3-MoE. Text-only prompts give the same logits there as in Qwen3-VL (with its three
//! position rows equal, the interleaved MRoPE is plain RoPE); prompts with item soft
//! tokens need Mosaic (3-D positions, DeepStack) and the adapter saved beside it.

use candle_core::{DType, Device, IndexOp, Tensor};
use serde_json::{Value, json};

use crate::config::{Qwen3VlConfig, SURGERY_KEY};
use crate::error::{Error, Result};
use crate::weights::{TensorEntry, candle_dtype};

/// The decoder's tensor prefix in a Qwen3-VL checkpoint.
pub const VL_PREFIX: &str = "model.language_model";
/// The decoder's tensor prefix in a saved (portable) checkpoint.
pub const PORTABLE_PREFIX: &str = "model";
/// Key under `mosaic_surgery` holding the Qwen3-VL config.
pub const VL_CONFIG_KEY: &str = "qwen3_vl";

/// The name tensor `name` of a Qwen3-VL checkpoint takes in the portable layout.
pub fn portable_name(name: &str) -> String {
    match name.strip_prefix(VL_PREFIX) {
        Some(rest) => format!("{PORTABLE_PREFIX}{rest}"),
        None => name.to_string(),
    }
}

/// The portable `config.json`: the Qwen3 (or Qwen3-MoE) settings of `cfg`'s decoder, and
/// `record` (what the surgery removed, where it came from) with the Qwen3-VL config
/// under `mosaic_surgery.qwen3_vl`.
pub fn config_json(cfg: &Qwen3VlConfig, record: Value) -> Value {
    let t = &cfg.text;
    let text_raw = cfg.raw.get("text_config");
    let carried = |k: &str| {
        text_raw
            .and_then(|v| v.get(k))
            .cloned()
            .unwrap_or(Value::Null)
    };
    let mut vl = cfg.raw.clone();
    if let Value::Object(m) = &mut vl {
        m.remove("vision_config");
        m.remove(SURGERY_KEY);
    }
    let mut record = record;
    if let Value::Object(r) = &mut record {
        r.insert(VL_CONFIG_KEY.into(), vl);
    }
    let dtype = match cfg.dtype() {
        Some(DType::BF16) => "bfloat16",
        Some(DType::F16) => "float16",
        _ => "float32",
    };
    let mut out = json!({
        "architectures": ["Qwen3ForCausalLM"],
        "model_type": "qwen3",
        "vocab_size": t.vocab_size,
        "hidden_size": t.hidden_size,
        "intermediate_size": t.intermediate_size,
        "num_hidden_layers": t.num_hidden_layers,
        "num_attention_heads": t.num_attention_heads,
        "num_key_value_heads": t.num_key_value_heads,
        "head_dim": t.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": t.max_position_embeddings,
        "rms_norm_eps": t.rms_norm_eps,
        "attention_bias": t.attention_bias,
        "attention_dropout": 0.0,
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "rope_parameters": {"rope_type": "default", "rope_theta": t.rope.rope_theta},
        "rope_theta": t.rope.rope_theta,
        "use_sliding_window": false,
        "use_cache": true,
        "bos_token_id": carried("bos_token_id"),
        "eos_token_id": carried("eos_token_id"),
        "dtype": dtype,
        SURGERY_KEY: record,
    });
    if let (Some(m), Value::Object(o)) = (&t.moe, &mut out) {
        o.insert("architectures".into(), json!(["Qwen3MoeForCausalLM"]));
        o.insert("model_type".into(), json!("qwen3_moe"));
        o.insert("num_experts".into(), json!(m.num_experts));
        o.insert("num_experts_per_tok".into(), json!(m.num_experts_per_tok));
        o.insert(
            "moe_intermediate_size".into(),
            json!(m.moe_intermediate_size),
        );
        o.insert("decoder_sparse_step".into(), json!(m.decoder_sparse_step));
        o.insert("mlp_only_layers".into(), json!(m.mlp_only_layers));
        // Qwen3-VL-MoE always renormalises the chosen experts' probabilities
        o.insert("norm_topk_prob".into(), json!(true));
    }
    out
}

/// Whether `name` is a fused expert tensor (`mlp.experts.gate_up_proj` / `down_proj`).
pub fn is_fused_experts(name: &str) -> bool {
    name.ends_with("mlp.experts.gate_up_proj") || name.ends_with("mlp.experts.down_proj")
}

/// A fused expert tensor (either layout the loader accepts) split into the portable
/// per-expert Linear weights `[out, in]`, named under `out_prefix` (`...mlp.experts`).
pub fn split_experts(
    cfg: &Qwen3VlConfig,
    name: &str,
    entry: &TensorEntry,
    data: &[u8],
) -> Result<Vec<(String, Tensor)>> {
    let m = cfg.text.moe.as_ref().ok_or_else(|| Error::Input {
        message: format!("{name}: experts in a checkpoint without MoE settings"),
    })?;
    let (e, h, i) = (m.num_experts, cfg.text.hidden_size, m.moe_intermediate_size);
    let dtype = candle_dtype(entry.dtype).ok_or_else(|| Error::TensorDtype {
        name: name.into(),
        dtype: format!("{:?}", entry.dtype),
    })?;
    let t = Tensor::from_raw_buffer(data, dtype, &entry.shape, &Device::Cpu)?;
    let base = portable_name(name);
    let prefix = base
        .trim_end_matches(".gate_up_proj")
        .trim_end_matches(".down_proj");
    let shape_err = |expected: Vec<usize>| Error::TensorShape {
        name: name.into(),
        expected,
        actual: entry.shape.clone(),
    };
    let mut out = Vec::with_capacity(2 * e);
    if name.ends_with("gate_up_proj") {
        // as [E, 2I, H] (the transformers-5 layout, taken first as the loader does)
        let t = if entry.shape == [e, 2 * i, h] {
            t
        } else if entry.shape == [e, h, 2 * i] {
            t.transpose(1, 2)?
        } else {
            return Err(shape_err(vec![e, h, 2 * i]));
        };
        for j in 0..e {
            let x = t.i(j)?;
            out.push((
                format!("{prefix}.{j}.gate_proj.weight"),
                x.narrow(0, 0, i)?.contiguous()?,
            ));
            out.push((
                format!("{prefix}.{j}.up_proj.weight"),
                x.narrow(0, i, i)?.contiguous()?,
            ));
        }
    } else {
        // as [E, H, I]
        let t = if entry.shape == [e, h, i] {
            t
        } else if entry.shape == [e, i, h] {
            t.transpose(1, 2)?
        } else {
            return Err(shape_err(vec![e, i, h]));
        };
        for j in 0..e {
            out.push((
                format!("{prefix}.{j}.down_proj.weight"),
                t.i(j)?.contiguous()?,
            ));
        }
    }
    Ok(out)
}
