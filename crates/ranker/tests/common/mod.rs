//! Shared by the re-scoring tests: the committed tiny checkpoint, its adapter, and a
//! generation of content vectors for it.

#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Arc;

use embed_store::{GenerationSpec, ItemId as StoreId, RamDirectory, Snapshot, StorageType, Store};
use ranker::catalogue::Rng;
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
