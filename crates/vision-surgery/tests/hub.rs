//! Loading through the hf-hub cache layout, offline (`HF_HOME`, `HF_HUB_OFFLINE=1`).
//! Its own test binary because it sets process environment variables.

mod common;

use common::fixture_model;
use vision_surgery::{Error, LoadOptions, SurgeredModel};

const COMMIT: &str = "89a1f0c2d3e4b5a6978877665544332211000fed";

#[test]
fn hub_ids_resolve_from_the_offline_cache() {
    let home = tempfile::tempdir().unwrap();
    let repo = home.path().join("hub").join("models--mosaic--tiny-qwen3vl");
    let snap = repo.join("snapshots").join(COMMIT);
    common::copy_dir(&fixture_model("tiny-s0"), &snap);
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs").join("main"), COMMIT).unwrap();
    // SAFETY: this test binary runs this single test; nothing else reads the environment concurrently.
    unsafe {
        std::env::set_var("HF_HOME", home.path());
        std::env::set_var("HF_HUB_OFFLINE", "1");
    }
    let m = SurgeredModel::load("mosaic/tiny-qwen3vl", &LoadOptions::default()).unwrap();
    assert!(m.surgery_report().skipped_tensors > 0);
    assert!(m.tokenizer().is_some());
    // a pinned commit resolves through snapshots/ directly
    let pinned = SurgeredModel::load(
        &format!("mosaic/tiny-qwen3vl@{COMMIT}"),
        &LoadOptions::default(),
    )
    .unwrap();
    assert_eq!(pinned.surgery_report(), m.surgery_report());
    // a model that is not cached is a typed hub error, not a network attempt
    let e = SurgeredModel::load("mosaic/not-cached", &LoadOptions::default()).unwrap_err();
    assert!(matches!(e, Error::Hub { .. }), "{e}");
    assert!(e.to_string().contains("HF_HUB_OFFLINE"), "{e}");
}
