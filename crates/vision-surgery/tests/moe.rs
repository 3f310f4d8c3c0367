//! Mixture-of-experts checkpoints (`qwen3_vl_moe`) through the whole surgered path:
//! surgery, both expert layouts the reference loads, adapters, generate, score, save.

mod common;

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use common::{copy_dir, fixture_case, fixture_model, max_abs_diff};
use vision_surgery::{
    AdapterSpec, EmbeddingAdapter, Error, GenerateOptions, LoadOptions, Prompt, SurgeredModel,
};

const FIXTURE: &str = "tiny-s4-moe";

fn load(dir: &Path) -> SurgeredModel {
    SurgeredModel::load(dir.to_str().unwrap(), &LoadOptions::default()).unwrap()
}

fn golden() -> Tensor {
    fixture_case(FIXTURE, "a_text")["logits"].clone()
}

/// Rewrite `dir/model.safetensors` with `edit` applied to every tensor.
fn rewrite(dir: &Path, edit: impl Fn(&str, Tensor) -> Tensor) {
    let p = dir.join("model.safetensors");
    let all = candle_core::safetensors::load(&p, &Device::Cpu).unwrap();
    let out: HashMap<String, Tensor> = all
        .into_iter()
        .map(|(k, v)| (k.clone(), edit(&k, v)))
        .collect();
    candle_core::safetensors::save(&out, &p).unwrap();
}

#[test]
fn surgery_keeps_the_experts_and_matches_the_reference() {
    let m = load(&fixture_model(FIXTURE));
    let r = m.surgery_report();
    assert!(r.skipped_tensors > 0 && r.vision_tensors_read.is_empty());
    assert!(r.unused_tensors.is_empty(), "{:?}", r.unused_tensors);
    let moe = m.config().text.moe.clone().unwrap();
    assert_eq!(
        (
            moe.num_experts,
            moe.num_experts_per_tok,
            moe.mlp_only_layers
        ),
        (8, 2, vec![1])
    );
    assert!(m.config().text.is_sparse_layer(0) && !m.config().text.is_sparse_layer(1));
    assert!(max_abs_diff(&common::text_logits(&m, FIXTURE), &golden()) <= 1e-4);
}

#[test]
fn released_expert_layout_loads_to_the_same_logits() {
    // the released checkpoints store experts as (E, H, 2I) and (E, I, H); transformers 5
    // saves the transpose, which is what the fixture holds
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&fixture_model(FIXTURE), dir.path());
    rewrite(dir.path(), |name, t| {
        if name.ends_with("mlp.experts.gate_up_proj") || name.ends_with("mlp.experts.down_proj") {
            t.transpose(1, 2).unwrap().contiguous().unwrap()
        } else {
            t
        }
    });
    let shape = candle_core::safetensors::load(dir.path().join("model.safetensors"), &Device::Cpu)
        .unwrap()["model.language_model.layers.0.mlp.experts.gate_up_proj"]
        .dims()
        .to_vec();
    assert_eq!(shape, [8, 64, 48]);
    assert!(max_abs_diff(&common::text_logits(&load(dir.path()), FIXTURE), &golden()) <= 1e-4);

    // an expert tensor of neither shape is a typed error naming it
    rewrite(dir.path(), |name, t| {
        if name == "model.language_model.layers.2.mlp.experts.down_proj" {
            t.narrow(1, 0, 8).unwrap().contiguous().unwrap()
        } else {
            t
        }
    });
    let e = SurgeredModel::load(dir.path().to_str().unwrap(), &LoadOptions::default()).unwrap_err();
    assert!(
        matches!(&e, Error::TensorShape { name, .. } if name.ends_with("layers.2.mlp.experts.down_proj")),
        "{e}"
    );
}

#[test]
fn adapters_generate_score_and_save_work_on_moe() {
    let mut m = load(&fixture_model(FIXTURE));
    let spec = AdapterSpec::mlp(24, 48, vision_surgery::Activation::Gelu, 4, 64).with_deepstack(2);
    m.attach_adapter(EmbeddingAdapter::init(spec, 3, DType::F32, &Device::Cpu).unwrap())
        .unwrap();
    let items = Tensor::randn(0f32, 1.0, (2, 24), &Device::Cpu).unwrap();
    let prompt = Prompt::user("Compare <item> with <item>.");
    let opts = GenerateOptions {
        default_stops: false,
        ..GenerateOptions::new().max_tokens(6)
    };
    let g = m.generate(&prompt, Some(&items), &opts, |_| {}).unwrap();
    assert_eq!(g.tokens.len(), 6);
    let scores = m.score(&prompt, Some(&items), &["yes", "no"]).unwrap();
    assert!(scores.iter().all(|s| s.total.is_finite() && s.total < 0.0));

    // the surgered MoE checkpoint stands alone and answers the same
    let out = tempfile::tempdir().unwrap();
    let saved = common::save_and_read_config(&m, out.path());
    assert_eq!(saved["model_type"], "qwen3_moe");
    assert_eq!(saved["norm_topk_prob"], true);
    let again = load(out.path());
    assert_eq!(again.surgery_report().skipped_tensors, 0);
    assert_eq!(
        again
            .generate(&prompt, Some(&items), &opts, |_| {})
            .unwrap()
            .tokens,
        g.tokens
    );
    assert_eq!(
        again.score(&prompt, Some(&items), &["yes", "no"]).unwrap(),
        scores
    );
}

#[test]
fn bad_moe_settings_name_the_field() {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&fixture_model(FIXTURE), dir.path());
    let p = dir.path().join("config.json");
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    for (field, v) in [
        ("num_experts_per_tok", serde_json::json!(9)),
        ("num_local_experts", serde_json::json!(0)),
        ("mlp_only_layers", serde_json::json!([7])),
        ("decoder_sparse_step", serde_json::json!(0)),
        ("moe_intermediate_size", serde_json::Value::Null),
    ] {
        let mut c = cfg.clone();
        c["text_config"][field] = v;
        std::fs::write(&p, c.to_string()).unwrap();
        let e =
            SurgeredModel::load(dir.path().to_str().unwrap(), &LoadOptions::default()).unwrap_err();
        assert!(e.to_string().contains(field), "{field}: {e}");
    }
}
