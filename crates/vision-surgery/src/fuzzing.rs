//! Entry points for fuzzing the crate's file parsers: the coverage-guided targets in
//! `fuzz/` at the repository root call them, and the root `tests/fuzz_corpus.rs` replays
//! the committed corpora in CI. Whatever the bytes, each returns (a typed error for a bad
//! file) and never panics or allocates by a size the bytes claim: a panic is a bug.

use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};

use crate::adapter::{AdapterSpec, EmbeddingAdapter};
use crate::config::Qwen3VlConfig;
use crate::error::{Error, Result};
use crate::image_processor::{PreprocessorConfig, smart_resize};

/// `bytes` written to a file `name` of this process's scratch directory.
fn scratch_file(name: &str, bytes: &[u8]) -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("mosaic-fuzz-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let p = dir.join(name);
    std::fs::write(&p, bytes).map_err(|e| Error::io(&p, e))?;
    Ok(p)
}

/// `bytes` as an adapter file (safetensors + metadata): on success it maps a batch of
/// two items to soft tokens.
pub fn adapter(bytes: &[u8]) -> Result<()> {
    let p = scratch_file("adapter.safetensors", bytes)?;
    let a = EmbeddingAdapter::load(&p, DType::F32, &Device::Cpu)?;
    let x = Tensor::ones((2, a.spec().in_dim), DType::F32, &Device::Cpu)?;
    a.forward(&x)?;
    Ok(())
}

/// `bytes` as a checkpoint's config.json.
pub fn config(bytes: &[u8]) -> Result<()> {
    let p = scratch_file("config.json", bytes)?;
    Qwen3VlConfig::from_file(&p)?;
    Ok(())
}

/// `bytes` as preprocessor_config.json: on success the resize of a 640x480 image is
/// planned with it.
pub fn preprocessor_config(bytes: &[u8]) -> Result<()> {
    let p = scratch_file("preprocessor_config.json", bytes)?;
    let c = PreprocessorConfig::from_file(&p)?;
    smart_resize(
        480,
        640,
        c.patch_size * c.merge_size,
        c.min_pixels,
        c.max_pixels,
    )?;
    Ok(())
}

/// The starting corpus of `target` (`adapter`, `config`, `preprocessor_config`).
pub fn seeds(target: &str) -> Result<Vec<Vec<u8>>> {
    Ok(match target {
        "adapter" => {
            let mut v = Vec::new();
            for spec in [
                AdapterSpec::linear(6, 2, 8),
                AdapterSpec::linear(6, 4, 8).with_deepstack(2),
            ] {
                let a = EmbeddingAdapter::init(spec, 1, DType::F32, &Device::Cpu)?;
                let p = scratch_file("seed.safetensors", &[])?;
                a.save(&p)?;
                v.push(std::fs::read(&p).map_err(|e| Error::io(&p, e))?);
            }
            v
        }
        "config" => vec![
            br#"{"model_type": "qwen3_vl", "image_token_id": 268, "video_token_id": 269,
"vision_start_token_id": 265, "vision_end_token_id": 266,
"text_config": {"vocab_size": 320, "hidden_size": 64, "intermediate_size": 128,
"num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
"rms_norm_eps": 1e-6, "max_position_embeddings": 4096, "rope_parameters": {"rope_type":
"default", "rope_theta": 5000000.0, "mrope_section": [4, 2, 2], "mrope_interleaved": true}},
"vision_config": {"deepstack_visual_indexes": [0, 2]}}"#
                .to_vec(),
        ],
        "preprocessor_config" => vec![
            br#"{"patch_size": 16, "temporal_patch_size": 2, "merge_size": 2,
"size": {"shortest_edge": 65536, "longest_edge": 16777216},
"image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "resample": 3,
"rescale_factor": 0.00392156862745098}"#
                .to_vec(),
        ],
        other => {
            return Err(Error::Options {
                option: "fuzz target",
                message: format!("no fuzz target {other:?}"),
            });
        }
    })
}
