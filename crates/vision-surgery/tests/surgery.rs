//! Surgery mode never reads a vision-tower tensor, and a surgered checkpoint stands alone.

mod common;

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use common::{copy_dir, fixture_case, fixture_model, max_abs_diff};
use vision_surgery::{AdapterSpec, EmbeddingAdapter, LoadOptions, SaveOptions, SurgeredModel};

const FIXTURE: &str = "tiny-s0";

/// Logits of the text-only golden case through `m`.
fn golden_text_logits() -> Tensor {
    fixture_case(FIXTURE, "a_text")["logits"].clone()
}

/// Every visual tensor of the fixture, with its size.
fn visual_tensors() -> (usize, u64, u64) {
    let all = candle_core::safetensors::load(
        fixture_model(FIXTURE).join("model.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let vis: Vec<&Tensor> = all
        .iter()
        .filter(|(k, _)| k.starts_with("model.visual."))
        .map(|(_, t)| t)
        .collect();
    let params: u64 = vis.iter().map(|t| t.elem_count() as u64).sum();
    (vis.len(), params, params * 4)
}

fn load(dir: &Path) -> SurgeredModel {
    SurgeredModel::load(dir.to_str().unwrap(), &LoadOptions::default()).unwrap()
}

#[test]
fn surgery_reports_what_it_skipped_and_reads_no_visual_tensor() {
    let m = load(&fixture_model(FIXTURE));
    let r = m.surgery_report();
    let (n, params, bytes) = visual_tensors();
    assert!(n > 0);
    assert_eq!(r.skipped_tensors, n);
    assert_eq!(r.skipped_parameters, params);
    assert_eq!(r.skipped_bytes, bytes);
    assert!(r.vision_tensors_read.is_empty());
    assert!(r.unused_tensors.is_empty(), "{:?}", r.unused_tensors);
    assert!(r.loaded_tensors > 0);
    let read = m.tensors_read();
    assert_eq!(read.len(), r.loaded_tensors);
    assert!(read.iter().all(|n| !n.starts_with("model.visual.")));
    let text = r.to_string();
    assert!(text.contains(&format!("{params} parameters")), "{text}");
    assert!(max_abs_diff(&common::text_logits(&m, FIXTURE), &golden_text_logits()) <= 1e-4);
}

/// Overwrite the data bytes of every visual tensor of a single-file checkpoint with junk.
fn garble_visual_data(path: &Path) {
    let mut bytes = std::fs::read(path).unwrap();
    let (n, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let start = 8 + n;
    let mut garbled = 0;
    for (name, info) in meta.tensors() {
        if name.starts_with("model.visual.") {
            let (a, b) = info.data_offsets;
            for (i, byte) in bytes[start + a..start + b].iter_mut().enumerate() {
                *byte = 0xFF ^ (i as u8); // NaN payloads and nonsense
            }
            garbled += 1;
        }
    }
    assert!(garbled > 0);
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn garbage_visual_tensors_still_load_with_identical_logits() {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&fixture_model(FIXTURE), dir.path());
    garble_visual_data(&dir.path().join("model.safetensors"));
    let m = load(dir.path());
    assert!(m.surgery_report().vision_tensors_read.is_empty());
    let clean = load(&fixture_model(FIXTURE));
    assert_eq!(
        max_abs_diff(
            &common::text_logits(&m, FIXTURE),
            &common::text_logits(&clean, FIXTURE)
        ),
        0.0
    );
}

#[test]
fn missing_visual_tensors_still_load() {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&fixture_model(FIXTURE), dir.path());
    let p = dir.path().join("model.safetensors");
    let all = candle_core::safetensors::load(&p, &Device::Cpu).unwrap();
    let text: HashMap<String, Tensor> = all
        .into_iter()
        .filter(|(k, _)| !k.starts_with("model.visual."))
        .collect();
    candle_core::safetensors::save(&text, &p).unwrap();
    let m = load(dir.path());
    assert_eq!(m.surgery_report().skipped_tensors, 0);
    assert!(max_abs_diff(&common::text_logits(&m, FIXTURE), &golden_text_logits()) <= 1e-4);
}

/// Split the fixture into a text shard and a vision shard with an index.
fn shard(dir: &Path) -> std::path::PathBuf {
    let p = dir.join("model.safetensors");
    let all = candle_core::safetensors::load(&p, &Device::Cpu).unwrap();
    std::fs::remove_file(&p).unwrap();
    let (vis, text): (HashMap<_, _>, HashMap<_, _>) = all
        .into_iter()
        .partition(|(k, _)| k.starts_with("model.visual."));
    candle_core::safetensors::save(&text, dir.join("model-00001-of-00002.safetensors")).unwrap();
    let vis_path = dir.join("model-00002-of-00002.safetensors");
    candle_core::safetensors::save(&vis, &vis_path).unwrap();
    let mut map = serde_json::Map::new();
    for k in text.keys() {
        map.insert(k.clone(), "model-00001-of-00002.safetensors".into());
    }
    for k in vis.keys() {
        map.insert(k.clone(), "model-00002-of-00002.safetensors".into());
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": map});
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
    vis_path
}

#[test]
fn sharded_checkpoint_never_opens_the_vision_shard() {
    let (n, params, bytes) = visual_tensors();
    // readable vision shard: sized from its header, never mapped for data
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&fixture_model(FIXTURE), dir.path());
    let vis_path = shard(dir.path());
    let m = load(dir.path());
    let r = m.surgery_report();
    assert_eq!(
        (r.skipped_tensors, r.skipped_parameters, r.skipped_bytes),
        (n, params, bytes)
    );
    assert_eq!(r.skipped_shards, vec![vis_path.clone()]);
    assert!(max_abs_diff(&common::text_logits(&m, FIXTURE), &golden_text_logits()) <= 1e-4);

    // the vision shard is junk: still loads, its tensors are counted but unsized
    std::fs::write(&vis_path, b"definitely not safetensors").unwrap();
    let m = load(dir.path());
    let r = m.surgery_report();
    assert_eq!(r.skipped_tensors, n);
    assert_eq!(r.skipped_unsized.len(), n);
    assert_eq!(r.skipped_bytes, 0);
    assert!(max_abs_diff(&common::text_logits(&m, FIXTURE), &golden_text_logits()) <= 1e-4);

    // the vision shard is gone: still loads
    std::fs::remove_file(&vis_path).unwrap();
    let m = load(dir.path());
    assert_eq!(m.surgery_report().skipped_tensors, n);
    assert!(max_abs_diff(&common::text_logits(&m, FIXTURE), &golden_text_logits()) <= 1e-4);
}

#[test]
fn save_surgered_round_trips_without_the_original() {
    let src = tempfile::tempdir().unwrap();
    copy_dir(&fixture_model(FIXTURE), src.path());
    let mut m = load(src.path());
    let spec = AdapterSpec::linear(12, 4, 64).with_deepstack(2);
    m.attach_adapter(EmbeddingAdapter::init(spec.clone(), 5, DType::F32, &Device::Cpu).unwrap())
        .unwrap();
    let out = tempfile::tempdir().unwrap();
    let saved = m
        .save_surgered(out.path(), &SaveOptions::default())
        .unwrap();
    assert_eq!(saved.shards.len(), 1);
    drop(m);
    drop(src); // the original is gone

    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("config.json")).unwrap())
            .unwrap();
    assert!(cfg.get("vision_config").is_none());
    let (_, params, bytes) = visual_tensors();
    assert_eq!(cfg["mosaic_surgery"]["removed_parameters"], params);
    assert_eq!(cfg["mosaic_surgery"]["removed_bytes"], bytes);
    assert_eq!(cfg["mosaic_surgery"]["deepstack_levels"], 2);
    assert!(out.path().join("tokenizer.json").exists());

    let again = load(out.path());
    assert_eq!(again.surgery_report().skipped_tensors, 0);
    assert_eq!(again.adapter().unwrap().spec(), &spec);
    assert!(again.tokenizer().is_some());
    assert!(max_abs_diff(&common::text_logits(&again, FIXTURE), &golden_text_logits()) <= 1e-4);

    // small shards: an index and several files, same numbers
    let sharded = tempfile::tempdir().unwrap();
    let saved = again
        .save_surgered(
            sharded.path(),
            &SaveOptions {
                max_shard_bytes: 64 << 10,
            },
        )
        .unwrap();
    assert!(saved.shards.len() > 2, "{:?}", saved.shards);
    assert!(sharded.path().join("model.safetensors.index.json").exists());
    let third = load(sharded.path());
    assert!(max_abs_diff(&common::text_logits(&third, FIXTURE), &golden_text_logits()) <= 1e-4);
    // surgery records accumulate, not reset
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(sharded.path().join("config.json")).unwrap())
            .unwrap();
    assert_eq!(cfg["mosaic_surgery"]["removed_parameters"], params);
}

/// Every file of `dir` with its bytes.
fn contents(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&p).unwrap())
        })
        .collect();
    v.sort();
    v
}

#[test]
fn saving_over_the_inputs_is_refused_and_changes_nothing() {
    let src = tempfile::tempdir().unwrap();
    copy_dir(&fixture_model(FIXTURE), src.path());
    let before = contents(src.path());
    let m = load(src.path());
    // the directory itself, and the same directory by another path
    for out in [src.path().to_path_buf(), src.path().join(".")] {
        let err = m.save_surgered(&out, &SaveOptions::default()).unwrap_err();
        assert!(
            matches!(err, vision_surgery::Error::OutputIsInput { .. }),
            "{err}"
        );
    }
    assert_eq!(
        contents(src.path()),
        before,
        "the source checkpoint changed"
    );
    // a snapshot-like directory whose files are links to the inputs
    let linked = tempfile::tempdir().unwrap();
    for (name, _) in &before {
        std::os::unix::fs::symlink(src.path().join(name), linked.path().join(name)).unwrap();
    }
    let m = load(linked.path());
    let err = m
        .save_surgered(linked.path(), &SaveOptions::default())
        .unwrap_err();
    assert!(
        matches!(err, vision_surgery::Error::OutputIsInput { .. }),
        "{err}"
    );
    assert_eq!(contents(src.path()), before);
    assert_eq!(contents(linked.path()), before, "a link was replaced");
    // elsewhere it saves, and leaves no temp file behind
    let out = tempfile::tempdir().unwrap();
    m.save_surgered(out.path(), &SaveOptions::default())
        .unwrap();
    assert!(
        contents(out.path())
            .iter()
            .all(|(n, _)| !n.ends_with(".tmp"))
    );
    assert!(load(out.path()).tokenizer().is_some());
}

#[test]
fn legacy_rope_spelling_gives_the_same_logits() {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&fixture_model(FIXTURE), dir.path());
    let p = dir.path().join("config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    let text = cfg["text_config"].as_object_mut().unwrap();
    let mut rope = text.remove("rope_parameters").unwrap();
    let theta = rope.as_object_mut().unwrap().remove("rope_theta").unwrap();
    text.insert("rope_scaling".into(), rope);
    text.insert("rope_theta".into(), theta);
    std::fs::write(&p, cfg.to_string()).unwrap();
    let m = load(dir.path());
    assert!(max_abs_diff(&common::text_logits(&m, FIXTURE), &golden_text_logits()) <= 1e-4);
}

#[test]
fn half_precision_dtypes_load_and_track_f32() {
    let golden = golden_text_logits();
    let scale = golden
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    for (dtype, rel) in [(DType::BF16, 0.08), (DType::F16, 0.01)] {
        let m = SurgeredModel::load(
            fixture_model(FIXTURE).to_str().unwrap(),
            &LoadOptions::default().dtype(dtype),
        )
        .unwrap();
        let d = max_abs_diff(&common::text_logits(&m, FIXTURE), &golden);
        println!("{dtype:?}: max|Δ| = {d:.4} (logit scale {scale:.2})");
        assert!(d <= rel * scale, "{dtype:?}: {d} > {rel} * {scale}");
    }
    let e = SurgeredModel::load(
        fixture_model(FIXTURE).to_str().unwrap(),
        &LoadOptions::default().dtype(DType::U8),
    )
    .unwrap_err();
    assert!(e.to_string().contains("dtype"), "{e}");
}

#[test]
fn the_checkpoint_dtype_is_the_default() {
    // the fixture is saved in float32
    assert_eq!(load(&fixture_model(FIXTURE)).dtype(), DType::F32);
    // a checkpoint saved in bfloat16, as the releases are: bf16 unless asked otherwise
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&fixture_model(FIXTURE), dir.path());
    let p = dir.path().join("config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    cfg["text_config"]["dtype"] = "bfloat16".into();
    std::fs::write(&p, cfg.to_string()).unwrap();
    assert_eq!(load(dir.path()).dtype(), DType::BF16);
    let f32 = SurgeredModel::load(
        dir.path().to_str().unwrap(),
        &LoadOptions::default().dtype(DType::F32),
    )
    .unwrap();
    assert_eq!(f32.dtype(), DType::F32);
    // an unknown dtype name falls back to f32
    cfg["text_config"]["dtype"] = "float8_e4m3fn".into();
    cfg["dtype"] = serde_json::Value::Null;
    std::fs::write(&p, cfg.to_string()).unwrap();
    assert_eq!(load(dir.path()).dtype(), DType::F32);
}

#[test]
fn adapter_that_does_not_fit_is_refused_with_both_values() {
    let mut m = load(&fixture_model(FIXTURE));
    let wrong =
        EmbeddingAdapter::init(AdapterSpec::linear(8, 2, 96), 1, DType::F32, &Device::Cpu).unwrap();
    let e = m.attach_adapter(wrong).unwrap_err().to_string();
    assert!(
        e.contains("hidden_size") && e.contains("64") && e.contains("96"),
        "{e}"
    );
    let deep = EmbeddingAdapter::init(
        AdapterSpec::linear(8, 2, 64).with_deepstack(3),
        1,
        DType::F32,
        &Device::Cpu,
    )
    .unwrap();
    let e = m.attach_adapter(deep).unwrap_err().to_string();
    assert!(
        e.contains("deepstack_layers") && e.contains('2') && e.contains('3'),
        "{e}"
    );
}

/// Tensor names and shapes of every safetensors file in `dir`.
fn saved_layout(dir: &Path) -> std::collections::BTreeMap<String, Vec<usize>> {
    let mut out = std::collections::BTreeMap::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.extension().is_some_and(|x| x == "safetensors") && !p.ends_with("adapter.safetensors")
        {
            for (k, entry) in vision_surgery::weights::read_header(&p).unwrap() {
                out.insert(k, entry.shape);
            }
        }
    }
    out
}

#[test]
fn saved_checkpoints_have_the_layout_the_reference_writes() {
    // goldens: scripts/check_surgered_with_reference.py loads Mosaic's surgered copy with
    // transformers' AutoModelForCausalLM, checks its text logits against the Qwen3-VL
    // golden, and records the tensors the reference itself writes for that model
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/surgered");
    let mut checked = 0;
    for e in std::fs::read_dir(&dir).unwrap().flatten() {
        let want: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(e.path()).unwrap()).unwrap();
        let name = want["fixture"].as_str().unwrap();
        assert!(
            want["a_text_logits_max_abs_diff_vs_qwen3_vl_golden"]
                .as_f64()
                .unwrap()
                <= 1e-4,
            "{name}"
        );
        let m = load(&fixture_model(name));
        let out = tempfile::tempdir().unwrap();
        m.save_surgered(out.path(), &SaveOptions::default())
            .unwrap();
        let reference: std::collections::BTreeMap<String, Vec<usize>> =
            serde_json::from_value(want["reference_writes"].clone()).unwrap();
        assert_eq!(saved_layout(out.path()), reference, "{name}");
        let cfg: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.path().join("config.json")).unwrap())
                .unwrap();
        assert_eq!(cfg["architectures"][0], want["architecture"], "{name}");
        // and Mosaic reads it back to the Qwen3-VL golden
        let again = load(out.path());
        assert!(again.config().portable);
        let logits = common::text_logits(&again, name);
        let t = fixture_case(name, "a_text");
        assert!(max_abs_diff(&logits, &t["logits"]) <= 1e-4, "{name}");
        checked += 1;
    }
    assert_eq!(checked, 3);
}
