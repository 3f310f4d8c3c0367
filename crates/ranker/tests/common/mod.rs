//! Shared by the re-scoring tests: the committed tiny checkpoint, its adapter, and a
//! generation of content vectors for it.

#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Arc;

use candle_core::{DType, Device};
use embed_store::{GenerationSpec, ItemId as StoreId, RamDirectory, Snapshot, StorageType, Store};
use mosaic_testkit::catalogue::Rng;
use ranker::rescore::{RescoreOptions, Rescorer};
use vision_surgery::{LoadOptions, SurgeredModel, load_npy_items};

/// The vision-surgery crate's committed fixtures.
pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../vision-surgery/tests/fixtures")
}

/// The tiny checkpoint with the PyTorch-made adapter, on the CPU in f32.
pub fn model() -> SurgeredModel {
    model_with(LoadOptions::default())
}

/// The tiny checkpoint with the PyTorch-made adapter, loaded with `opts` (device, dtype).
pub fn model_with(opts: LoadOptions) -> SurgeredModel {
    let f = fixtures();
    let opts = opts.adapter(f.join("adapter-torch/adapter.safetensors"));
    SurgeredModel::load(f.join("tiny-s0/model").to_str().unwrap(), &opts).unwrap()
}

/// `n` content vectors of width 32 (ids 0..n): the fixture's 3 items, then random ones.
pub fn content(n: usize) -> (Arc<Store>, Snapshot) {
    let items = load_npy_items(
        &fixtures().join("adapter-torch/items.npy"),
        &candle_core::Device::Cpu,
    )
    .unwrap()
    .to_vec2::<f32>()
    .unwrap();
    let mut rows: Vec<f32> = items.concat();
    let mut rng = Rng::new(4);
    while rows.len() < n * 32 {
        rows.push(rng.normal());
    }
    let store = Store::open(Arc::new(RamDirectory::new())).unwrap();
    let mut w = store.writer().unwrap();
    w.create_generation(GenerationSpec::new("content", 32, StorageType::F32))
        .unwrap();
    let ids: Vec<StoreId> = (0..n as u64).map(StoreId).collect();
    w.put_many("content", &ids, &rows, None).unwrap();
    w.commit().unwrap();
    drop(w);
    let snap = store.generation("content").unwrap();
    (store, snap)
}

/// Re-scores the same candidates with the model loaded on `device` in f32, bf16 and f16
/// and checks each against the CPU f32 scores, for multi-token answers (two passes per
/// batch) and single-token ones (one pass).
pub fn rescoring_tracks_cpu_f32(device: &Device) {
    let (_s, snap) = content(16);
    let context = [1u64, 2];
    let candidates: Vec<u64> = (3..16).collect();
    for (yes, no) in [("yes", "no"), ("y", "n")] {
        let opts = RescoreOptions::new().batch(4).answers(yes, no);
        let cpu = Rescorer::new(model(), snap.clone(), opts.clone()).unwrap();
        let want = cpu.log_odds(&context, &candidates).unwrap();
        // Tolerances on the log-odds, from the decoder's measured logits error on this
        // checkpoint (f32 2e-6, bf16 0.05, f16 7e-3 max abs) with room for the two
        // log-softmaxes the score subtracts.
        for (dtype, tol) in [
            (DType::F32, 1e-3f32),
            (DType::BF16, 0.3),
            (DType::F16, 0.05),
        ] {
            let m = model_with(LoadOptions::default().device(device.clone()).dtype(dtype));
            let other = Rescorer::new(m, snap.clone(), opts.clone()).unwrap();
            let got = other.log_odds(&context, &candidates).unwrap();
            assert_eq!(got.len(), want.len());
            let d = got
                .iter()
                .zip(&want)
                .map(|(g, w)| (g - w).abs())
                .fold(0f32, f32::max);
            println!(
                "answers {yes:?}/{no:?}, {device:?} {dtype:?}: max |Δ log-odds| = {d:.3e} (tolerance {tol})"
            );
            assert!(d <= tol, "{dtype:?}: {got:?} vs {want:?}");
        }
    }
}
