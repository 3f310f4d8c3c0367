//! GPU path against the CPU path. Runs when a CUDA device exists (build with
//! `--features cuda`); otherwise prints why it skipped.

mod common;

use candle_core::{DType, Device};
use common::{case_ids, fixture_case, fixture_model, max_abs_diff, rel_diff};
use vision_surgery::config::Qwen3VlConfig;
use vision_surgery::model::{LogitsScope, SequenceInput};
use vision_surgery::vision::{PatchGrid, VisionTower};
use vision_surgery::weights::Weights;
use vision_surgery::{EmbeddingAdapter, LoadOptions, SurgeredModel, load_npy_items};

#[test]
fn cuda_decoder_matches_cpu() {
    let dev = match Device::new_cuda(0) {
        Ok(d) => d,
        Err(e) => {
            println!("SKIPPED cuda_decoder_matches_cpu: no CUDA device ({e})");
            return;
        }
    };
    let t = fixture_case("tiny-s0", "a_text");
    let golden = &t["logits"];
    for (dtype, tol) in [
        (DType::F32, 1e-4f32),
        (DType::BF16, 0.3),
        (DType::F16, 0.05),
    ] {
        let opts = LoadOptions::default().device(dev.clone()).dtype(dtype);
        let m = SurgeredModel::load(fixture_model("tiny-s0").to_str().unwrap(), &opts).unwrap();
        let model = m.text_model();
        let mut cache = model.new_cache(32);
        let seq = SequenceInput {
            ids: case_ids(&t),
            visual: None,
        };
        let logits = model
            .prefill(&[seq], &mut cache, LogitsScope::All)
            .unwrap()
            .logits;
        let d = max_abs_diff(&logits.to_device(&Device::Cpu).unwrap(), golden);
        println!("cuda {dtype:?}: max|Δ| vs reference = {d:.3e} (tolerance {tol})");
        assert!(d <= tol, "{dtype:?}: {d}");
    }
}

#[test]
fn cuda_vision_tower_and_adapter_match_the_reference() {
    let dev = match Device::new_cuda(0) {
        Ok(d) => d,
        Err(e) => {
            println!(
                "SKIPPED cuda_vision_tower_and_adapter_match_the_reference: no CUDA device ({e})"
            );
            return;
        }
    };
    // The vision tower on an image case, against the reference's recorded outputs.
    let dir = fixture_model("tiny-s0");
    let cfg = Qwen3VlConfig::from_file(&dir.join("config.json")).unwrap();
    let weights = Weights::open(&[dir.join("model.safetensors")]).unwrap();
    let t = fixture_case("tiny-s0", "b_image");
    let grids: Vec<PatchGrid> = t["image_grid_thw"]
        .to_dtype(DType::U32)
        .unwrap()
        .to_vec2::<u32>()
        .unwrap()
        .iter()
        .map(|g| PatchGrid {
            t: g[0] as usize,
            h: g[1] as usize,
            w: g[2] as usize,
        })
        .collect();
    for (dtype, tol) in [
        (DType::F32, 1e-4f32),
        (DType::BF16, 0.05),
        (DType::F16, 0.01),
    ] {
        let tower = VisionTower::new(&cfg, &weights, dtype, &dev).unwrap();
        let px = t["pixel_values"]
            .to_device(&dev)
            .unwrap()
            .to_dtype(dtype)
            .unwrap();
        let out = tower.forward(&px, &grids).unwrap();
        assert!(out.embeds.device().is_cuda());
        let d = rel_diff(&out.embeds, &t["image_embeds"]);
        println!("cuda {dtype:?} vision image_embeds: max|Δ|/max|ref| = {d:.3e} (tolerance {tol})");
        assert!(d <= tol, "vision {dtype:?}: {d}");
        for (k, ds) in out.deepstack.iter().enumerate() {
            let d = rel_diff(ds, &t[&format!("deepstack_{k}")]);
            assert!(d <= tol, "deepstack {k} {dtype:?}: {d}");
        }
    }
    // The adapter written by PyTorch, against PyTorch's outputs.
    let adir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/adapter-torch");
    let want =
        candle_core::safetensors::load(adir.join("expected.safetensors"), &Device::Cpu).unwrap();
    for (dtype, tol) in [
        (DType::F32, 1e-5f32),
        (DType::BF16, 0.05),
        (DType::F16, 0.01),
    ] {
        let a = EmbeddingAdapter::load(&adir.join("adapter.safetensors"), dtype, &dev).unwrap();
        let items = load_npy_items(&adir.join("items.npy"), &dev)
            .unwrap()
            .to_dtype(dtype)
            .unwrap();
        let out = a.forward(&items).unwrap();
        let d = rel_diff(&out.tokens, &want["tokens"]);
        println!("cuda {dtype:?} adapter soft tokens: max|Δ|/max|ref| = {d:.3e} (tolerance {tol})");
        assert!(d <= tol, "adapter {dtype:?}: {d}");
    }
}
