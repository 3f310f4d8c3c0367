//! Loading through the real hf-hub code path against a stand-in hub (`HF_ENDPOINT`), and
//! from the offline cache (`HF_HOME`, `HF_HUB_OFFLINE=1`). Its own test binary, one test,
//! because it sets process environment variables.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use common::fake_hub::{DECODER_SHARDS, FakeHub, Request, VISION_SHARDS, released_layout};
use common::{fixture_case, fixture_model, max_abs_diff};
use vision_surgery::{DownloadProgress, Error, LoadOptions, ProgressFn, SurgeredModel};

const FIXTURE: &str = "tiny-s0";
const COMMIT: &str = "89a1f0c2d3e4b5a6978877665544332211000fed";
const OTHER_COMMIT: &str = "0000000000000000000000000000000000000abc";
/// A copy of `src` whose config.json is edited by `edit`.
fn with_config(src: &Path, dst: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    common::copy_dir(src, dst);
    let p = dst.join("config.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(&p, v.to_string()).unwrap();
}

fn files_asked(log: &[Request]) -> BTreeSet<String> {
    log.iter().filter_map(|r| r.file.clone()).collect()
}

fn downloads(log: &[Request]) -> BTreeSet<String> {
    log.iter()
        .filter(|r| r.is_download())
        .filter_map(|r| r.file.clone())
        .collect()
}

fn size(p: PathBuf) -> u64 {
    std::fs::metadata(p).unwrap().len()
}

#[test]
fn hub_loading_fetches_only_what_surgery_reads() {
    let served = tempfile::tempdir().unwrap();
    let dense = served.path().join("dense");
    std::fs::create_dir_all(&dense).unwrap();
    released_layout(&fixture_model(FIXTURE), &dense);
    let other = served.path().join("other");
    with_config(&dense, &other, |c| c["model_type"] = "qwen2_5_vl".into());
    let fp8 = served.path().join("fp8");
    with_config(
        &dense,
        &fp8,
        |c| c["quantization_config"] = serde_json::json!({"quant_method": "fp8", "fmt": "e4m3", "weight_block_size": [128, 128]}),
    );
    let hub = FakeHub::start();
    hub.add("mosaic/tiny", "main", COMMIT, dense.clone());
    hub.add("mosaic/tiny-qwen25", "main", OTHER_COMMIT, other);
    hub.add("mosaic/tiny-fp8", "main", OTHER_COMMIT, fp8);
    hub.add("mosaic/tiny-broken", "main", OTHER_COMMIT, dense.clone());
    hub.fail("mosaic/tiny-broken", "tokenizer.json");
    let home = tempfile::tempdir().unwrap();
    // SAFETY: this test binary runs this single test; nothing else reads the environment concurrently.
    unsafe {
        std::env::set_var("HF_HOME", home.path());
        std::env::set_var("HF_ENDPOINT", hub.endpoint());
        std::env::remove_var("HF_HUB_OFFLINE");
    }
    let golden = fixture_case(FIXTURE, "a_text")["logits"].clone();

    // 1. a dense checkpoint: config and index first, then only the decoder's shards
    let progress: Arc<Mutex<HashMap<String, (u64, u64)>>> = Arc::default();
    let seen = progress.clone();
    let cb: ProgressFn = Arc::new(move |p: &DownloadProgress<'_>| {
        assert!(p.done <= p.total, "{p:?}");
        seen.lock()
            .unwrap()
            .insert(p.file.to_string(), (p.done, p.total));
    });
    let m = SurgeredModel::load("mosaic/tiny", &LoadOptions::default().progress(cb)).unwrap();
    let log = hub.take_log();
    let asked = files_asked(&log);
    for v in VISION_SHARDS {
        assert!(
            !asked.contains(v),
            "vision-only shard {v} was requested: {log:?}"
        );
    }
    let fetched = downloads(&log);
    for f in [
        "config.json",
        "model.safetensors.index.json",
        "tokenizer.json",
    ]
    .into_iter()
    .chain(DECODER_SHARDS)
    {
        assert!(fetched.contains(f), "{f} not downloaded: {log:?}");
    }
    // the listing comes first and config.json is the first file
    assert_eq!(log[0].file, None);
    assert_eq!(log[1].file.as_deref(), Some("config.json"));
    let r = m.surgery_report();
    assert_eq!(r.commit.as_deref(), Some(COMMIT));
    let vision_bytes: u64 = VISION_SHARDS.iter().map(|v| size(dense.join(v))).sum();
    assert_eq!(r.skipped_shard_bytes, vision_bytes);
    assert_eq!(r.skipped_shards.len(), 2);
    assert!(r.vision_tensors_read.is_empty());
    assert!(r.to_string().contains(COMMIT), "{r}");
    assert!(max_abs_diff(&common::text_logits(&m, FIXTURE), &golden) <= 1e-4);
    // every downloaded file reported its whole size
    let progress = progress.lock().unwrap().clone();
    for f in &fetched {
        let want = size(dense.join(f));
        assert_eq!(progress.get(f), Some(&(want, want)), "{f}: {progress:?}");
    }

    // 2. the saved surgered checkpoint records where it came from
    let out = tempfile::tempdir().unwrap();
    let saved = common::save_and_read_config(&m, out.path());
    let src = &saved["mosaic_surgery"]["source"];
    assert_eq!(src["repo"], "mosaic/tiny");
    assert_eq!(src["revision"], "main");
    assert_eq!(src["commit"], COMMIT);

    // 3. a pinned commit is served from the cache: the listing, no download
    let pinned =
        SurgeredModel::load(&format!("mosaic/tiny@{COMMIT}"), &LoadOptions::default()).unwrap();
    let log = hub.take_log();
    assert!(downloads(&log).is_empty(), "{log:?}");
    assert_eq!(pinned.surgery_report(), m.surgery_report());

    // 4. unsupported models are refused after config.json: no index, no shard
    let e = SurgeredModel::load("mosaic/tiny-qwen25", &LoadOptions::default()).unwrap_err();
    assert!(
        matches!(&e, Error::Config { field, .. } if field == "model_type"),
        "{e}"
    );
    let e = SurgeredModel::load("mosaic/tiny-fp8", &LoadOptions::default()).unwrap_err();
    assert!(
        matches!(&e, Error::QuantizedCheckpoint { scheme } if scheme.starts_with("fp8")),
        "{e}"
    );
    let log = hub.take_log();
    assert_eq!(
        files_asked(&log),
        BTreeSet::from(["config.json".to_string()]),
        "{log:?}"
    );

    // 5. a tokenizer that fails to download fails the load, before any shard moves
    let e = SurgeredModel::load("mosaic/tiny-broken", &LoadOptions::default()).unwrap_err();
    assert!(
        matches!(&e, Error::Hub { file, .. } if file == "tokenizer.json"),
        "{e}"
    );
    let log = hub.take_log();
    assert!(
        files_asked(&log).iter().all(|f| !f.starts_with("model-")),
        "{log:?}"
    );

    // 6. unknown repositories and revisions are the hub's 404, typed
    let e = SurgeredModel::load("mosaic/tiny@v9", &LoadOptions::default()).unwrap_err();
    assert!(
        matches!(&e, Error::Hub { .. }) && e.to_string().contains("404"),
        "{e}"
    );
    hub.take_log();

    // 7. offline: the cached snapshot of `main`, no request at all
    // SAFETY: as above.
    unsafe { std::env::set_var("HF_HUB_OFFLINE", "1") };
    let offline = SurgeredModel::load("mosaic/tiny", &LoadOptions::default()).unwrap();
    assert!(hub.take_log().is_empty());
    assert_eq!(offline.surgery_report().commit.as_deref(), Some(COMMIT));
    assert!(max_abs_diff(&common::text_logits(&offline, FIXTURE), &golden) <= 1e-4);
    let e = SurgeredModel::load("mosaic/not-cached", &LoadOptions::default()).unwrap_err();
    assert!(matches!(e, Error::Hub { .. }), "{e}");
    assert!(e.to_string().contains("HF_HUB_OFFLINE"), "{e}");

    // 8. the hub unreachable: the cache, as with HF_HUB_OFFLINE
    // SAFETY: as above.
    unsafe {
        std::env::remove_var("HF_HUB_OFFLINE");
        std::env::set_var("HF_ENDPOINT", "http://127.0.0.1:9");
    }
    let unreachable = SurgeredModel::load("mosaic/tiny", &LoadOptions::default()).unwrap();
    assert_eq!(unreachable.surgery_report().commit.as_deref(), Some(COMMIT));
    let e = SurgeredModel::load("mosaic/never-seen", &LoadOptions::default()).unwrap_err();
    assert!(e.to_string().contains("unreachable"), "{e}");
}
