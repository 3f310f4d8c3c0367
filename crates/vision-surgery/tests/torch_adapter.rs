//! An adapter written from PyTorch with the snippet of docs/adapter-format.md
//! (scripts/make_torch_adapter.py) loads and computes what PyTorch computed.

mod common;

use std::path::Path;

use candle_core::{DType, Device};
use common::{fixture_model, max_abs_diff};
use vision_surgery::adapter::Architecture;
use vision_surgery::{Activation, EmbeddingAdapter, LoadOptions, SurgeredModel, load_npy_items};

fn dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/adapter-torch")
}

#[test]
fn pytorch_adapter_matches_pytorch_outputs() {
    let a = EmbeddingAdapter::load(&dir().join("adapter.safetensors"), DType::F32, &Device::Cpu)
        .unwrap();
    let s = a.spec();
    assert_eq!(
        (
            s.in_dim,
            s.tokens_per_item,
            s.hidden_size,
            s.deepstack_layers
        ),
        (32, 4, 64, 2)
    );
    assert_eq!(
        s.architecture,
        Architecture::Mlp {
            hidden: 96,
            activation: Activation::Gelu
        }
    );
    let items = load_npy_items(&dir().join("items.npy"), &Device::Cpu).unwrap();
    assert_eq!(items.dims(), &[3, 32]);
    let out = a.forward(&items).unwrap();
    let want =
        candle_core::safetensors::load(dir().join("expected.safetensors"), &Device::Cpu).unwrap();
    let d = max_abs_diff(&out.tokens, &want["tokens"]);
    println!("soft tokens max|Δ| vs PyTorch = {d:.3e}");
    assert!(d <= 1e-5);
    for k in 0..2 {
        assert!(max_abs_diff(&out.deepstack[k], &want[&format!("deepstack_{k}")]) <= 1e-5);
    }
}

#[test]
fn pytorch_adapter_attaches_to_the_tiny_checkpoint() {
    let opts = LoadOptions::default().adapter(dir().join("adapter.safetensors"));
    let m = SurgeredModel::load(fixture_model("tiny-s0").to_str().unwrap(), &opts).unwrap();
    assert_eq!(m.adapter().unwrap().spec().deepstack_layers, 2);
    let items = load_npy_items(&dir().join("items.npy"), &Device::Cpu).unwrap();
    let s = m
        .score(
            &"Is <item> like <item> or <item>?".into(),
            Some(&items),
            &["yes", "no"],
        )
        .unwrap();
    assert!(s.iter().all(|c| c.total.is_finite() && c.total < 0.0));
}
