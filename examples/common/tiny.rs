//! Shared by the examples that re-score: the built-in catalogue's content embeddings as
//! a store generation, and the committed tiny random-weight surgered checkpoint (with
//! its PyTorch-made adapter: 32-wide inputs, as the catalogue's content embeddings).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use mosaic::embed_store::{GenerationSpec, ItemId, Snapshot, StorageType, Store};
use mosaic::ranker::rescore::{RescoreOptions, Rescorer};
use mosaic::vision_surgery::{LoadOptions, SurgeredModel};
use mosaic_testkit::catalogue::Catalogue;

/// The vision-surgery crate's committed fixtures.
pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("crates/vision-surgery/tests/fixtures")
}

/// `cat`'s content embeddings written to the new generation `name` of `store`.
pub fn write_content(store: &Arc<Store>, cat: &Catalogue, name: &str) -> anyhow::Result<Snapshot> {
    let mut w = store.writer()?;
    w.create_generation(GenerationSpec::new(name, cat.spec().dim, StorageType::F32))?;
    let ids: Vec<ItemId> = (0..cat.n_items() as u64).map(ItemId).collect();
    w.put_many(name, &ids, &cat.content, None)?;
    w.commit()?;
    drop(w);
    Ok(store.generation(name)?)
}

/// The checkpoint at `model` with the adapter at `adapter`, loaded with `opts`.
pub fn load_model(
    model: &Path,
    adapter: &Path,
    opts: LoadOptions,
) -> anyhow::Result<SurgeredModel> {
    let opts = opts.adapter(adapter);
    Ok(SurgeredModel::load(&model.to_string_lossy(), &opts)?)
}

/// The tiny checkpoint over `content`, with `options`.
#[allow(dead_code)] // the serve example loads any checkpoint, not this one
pub fn tiny_rescorer(content: Snapshot, options: RescoreOptions) -> anyhow::Result<Rescorer> {
    let f = fixtures();
    let model = load_model(
        &f.join("tiny-s0/model"),
        &f.join("adapter-torch/adapter.safetensors"),
        LoadOptions::default(),
    )?;
    Ok(Rescorer::new(model, content, options)?)
}
