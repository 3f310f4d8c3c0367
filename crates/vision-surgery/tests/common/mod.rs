//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, IndexOp, Tensor};

/// The committed tiny checkpoint directory of fixture `name`.
pub fn fixture_model(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
        .join("model")
}

/// A golden case of fixture `name`.
pub fn fixture_case(name: &str, case: &str) -> HashMap<String, Tensor> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
        .join("cases")
        .join(format!("{case}.safetensors"));
    candle_core::safetensors::load(p, &Device::Cpu).unwrap()
}

/// The input ids of a golden case.
pub fn case_ids(t: &HashMap<String, Tensor>) -> Vec<u32> {
    t["input_ids"]
        .to_dtype(DType::U32)
        .unwrap()
        .i(0)
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// All-position logits of fixture `fixture`'s text-only golden case through `m`.
pub fn text_logits(m: &vision_surgery::SurgeredModel, fixture: &str) -> Tensor {
    let t = fixture_case(fixture, "a_text");
    let mut cache = m.text_model().new_cache(64);
    let seq = vision_surgery::model::SequenceInput {
        ids: case_ids(&t),
        visual: None,
    };
    m.text_model()
        .prefill(&[seq], &mut cache, vision_surgery::model::LogitsScope::All)
        .unwrap()
        .logits
}

/// Save `m` surgered into `dir` and return the config.json it wrote.
pub fn save_and_read_config(m: &vision_surgery::SurgeredModel, dir: &Path) -> serde_json::Value {
    m.save_surgered(dir, &vision_surgery::SaveOptions::default())
        .unwrap();
    serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap()
}

/// Copy every file of `src` into a fresh directory `dst`.
pub fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        if e.path().is_file() {
            std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
        }
    }
}

/// max |a - b| over all elements.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shape mismatch");
    let a = a.to_dtype(DType::F32).unwrap();
    let b = b.to_dtype(DType::F32).unwrap();
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// max |a − b| / max |b| (both moved to the CPU, compared in f32).
pub fn rel_diff(a: &Tensor, b: &Tensor) -> f32 {
    let a = a.to_device(&Device::Cpu).unwrap();
    let b = b.to_device(&Device::Cpu).unwrap();
    let scale = max_abs_diff(&b, &b.zeros_like().unwrap()).max(1e-6);
    max_abs_diff(&a, &b) / scale
}
pub mod fake_hub;

/// Width of the item embeddings of [`items`] and [`model_with_adapter`]'s adapter.
pub const IN_DIM: usize = 24;

/// Fixture `fixture` in its own dtype with a seeded random MLP adapter (`IN_DIM` in,
/// K = 4 soft tokens) carrying `deepstack` DeepStack levels.
pub fn model_with_adapter(fixture: &str, deepstack: usize) -> vision_surgery::SurgeredModel {
    let mut m = vision_surgery::SurgeredModel::load(
        fixture_model(fixture).to_str().unwrap(),
        &vision_surgery::LoadOptions::default(),
    )
    .unwrap();
    let h = m.config().text.hidden_size;
    let spec = vision_surgery::AdapterSpec::mlp(IN_DIM, 48, vision_surgery::Activation::Gelu, 4, h)
        .with_deepstack(deepstack);
    let adapter =
        vision_surgery::EmbeddingAdapter::init(spec, 11, m.dtype(), &Device::Cpu).unwrap();
    m.attach_adapter(adapter).unwrap();
    m
}

/// `n` deterministic item embeddings of width `IN_DIM` in [-1, 1).
pub fn items(n: usize, seed: u64) -> Tensor {
    let v: Vec<f32> = (0..n * IN_DIM)
        .map(|i| (((i as u64 + 1) * (seed * 2 + 7919)) % 1000) as f32 / 500.0 - 1.0)
        .collect();
    Tensor::from_vec(v, (n, IN_DIM), &Device::Cpu).unwrap()
}
