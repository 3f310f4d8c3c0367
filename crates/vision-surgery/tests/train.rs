//! Adapter training with the decoder frozen: differentiable kernels agree with the fused
//! ones, gradients agree with finite differences, training makes greedy decoding say each
//! item's target, distillation pulls the soft tokens onto the vision tower's, and a
//! resumed run continues exactly.

mod common;

use candle_core::{DType, Device, IndexOp, Tensor, Var};
use common::{case_ids, fixture_case, fixture_model, max_abs_diff};
use vision_surgery::full::FullModel;
use vision_surgery::image_processor::ImageProcessor;
use vision_surgery::model::{LogitsScope, SequenceInput, VisualInput};
use vision_surgery::position::VisualGrid;
use vision_surgery::train::{
    AdapterTrainer, DistillLoss, Teacher, TrainExample, TrainOptions, load_pairs, state_path,
};
use vision_surgery::{
    Activation, AdapterSpec, EmbeddingAdapter, GenerateOptions, LoadOptions, Prompt, SurgeredModel,
};

const FIXTURE: &str = "tiny-s0";
const HIDDEN: usize = 64;
const IN_DIM: usize = 16;

fn load() -> SurgeredModel {
    SurgeredModel::load(
        fixture_model(FIXTURE).to_str().unwrap(),
        &LoadOptions::default(),
    )
    .unwrap()
}

fn embedding(i: usize) -> Vec<f32> {
    // distinct, deterministic, roughly unit-scale vectors
    (0..IN_DIM)
        .map(|j| ((((i * 31 + j * 17 + 5) * 2654435761) % 2000) as f32 / 1000.0) - 1.0)
        .collect()
}

const TARGETS: [&str; 6] = ["red", "lamp", "oak", "sofa", "vase", "rug"];

fn examples() -> Vec<TrainExample> {
    TARGETS
        .iter()
        .enumerate()
        .map(|(i, t)| TrainExample {
            embedding: embedding(i),
            target: Some(t.to_string()),
            teacher: None,
        })
        .collect()
}

/// The injected soft tokens of the golden case `d_injected` as a visual input.
fn injected(d: &std::collections::HashMap<String, Tensor>) -> VisualInput {
    let thw: Vec<i64> = d["image_grid_thw"]
        .to_dtype(DType::I64)
        .unwrap()
        .i(0)
        .unwrap()
        .to_vec1()
        .unwrap();
    let levels = (0..)
        .take_while(|k| d.contains_key(&format!("deepstack_{k}")))
        .count();
    VisualInput {
        embeds: d["visual_embeds"].clone(),
        deepstack: (0..levels)
            .map(|k| d[&format!("deepstack_{k}")].clone())
            .collect(),
        grids: vec![VisualGrid {
            t: thw[0] as usize,
            h: thw[1] as usize / 2,
            w: thw[2] as usize / 2,
        }],
    }
}

fn spec() -> AdapterSpec {
    AdapterSpec::mlp(IN_DIM, 64, Activation::Gelu, 4, HIDDEN).with_deepstack(2)
}

#[test]
fn differentiable_forward_matches_the_fused_prefill() {
    let m = load();
    let model = m.text_model();
    let a = fixture_case(FIXTURE, "a_text");
    let d = fixture_case(FIXTURE, "d_injected");
    let seq_a = SequenceInput {
        ids: case_ids(&a),
        visual: None,
    };
    let seq_d = SequenceInput {
        ids: case_ids(&d),
        visual: Some(injected(&d)),
    };
    let seqs = [seq_a, seq_d];
    let mut cache = model.new_cache(64);
    let fused = model.prefill(&seqs, &mut cache, LogitsScope::All).unwrap();
    let (hidden, padding) = model.forward_differentiable(&seqs).unwrap();
    assert_eq!(padding, fused.padding);
    let logits = model.decoder().logits(&hidden).unwrap();
    // compare real (unpadded) positions only
    let pad = padding[0];
    let diff_a = max_abs_diff(
        &logits.i((0, pad.., ..)).unwrap(),
        &fused.logits.i((0, pad.., ..)).unwrap(),
    );
    let diff_d = max_abs_diff(&logits.i(1).unwrap(), &fused.logits.i(1).unwrap());
    assert!(diff_a < 1e-4 && diff_d < 1e-4, "{diff_a} {diff_d}");
    // and both match the reference implementation's golden logits
    assert!(max_abs_diff(&logits.i(1).unwrap(), &d["logits"].i(0).unwrap()) < 1e-4);
}

#[test]
fn gradients_through_the_frozen_decoder_match_finite_differences() {
    let m = load();
    let model = m.text_model();
    let d = fixture_case(FIXTURE, "d_injected");
    let ids = case_ids(&d);
    let visual = injected(&d);
    let base = visual.embeds.to_dtype(DType::F64).unwrap();
    // scalar loss: a fixed random projection of the last position's logits
    let vocab = m.config().text.vocab_size;
    let proj: Vec<f32> = (0..vocab)
        .map(|i| ((i * 7919 % 101) as f32 - 50.0) / 50.0)
        .collect();
    let proj = Tensor::from_vec(proj, vocab, &Device::Cpu).unwrap();
    let loss_of = |embeds: &Tensor| -> Tensor {
        let seq = SequenceInput {
            ids: ids.clone(),
            visual: Some(VisualInput {
                embeds: embeds.clone(),
                ..visual.clone()
            }),
        };
        let (h, _) = model.forward_differentiable(&[seq]).unwrap();
        let s = h.dim(1).unwrap();
        let logits = model
            .decoder()
            .logits(&h.i((0, s - 1..s, ..)).unwrap())
            .unwrap();
        logits.broadcast_mul(&proj).unwrap().sum_all().unwrap()
    };
    let var = Var::from_tensor(&base.to_dtype(DType::F32).unwrap()).unwrap();
    let loss = loss_of(var.as_tensor());
    let grads = loss.backward().unwrap();
    let g = grads
        .get(var.as_tensor())
        .expect("gradient reaches the soft tokens");
    let g: Vec<Vec<f32>> = g.to_vec2().unwrap();
    let b: Vec<Vec<f64>> = base.to_vec2().unwrap();
    let eps = 1e-2;
    let mut checked = 0;
    for &(r, c) in &[(0usize, 0usize), (3, 17), (4, 40), (5, 63), (2, 5)] {
        let at = |delta: f64| {
            let mut v = b.clone();
            v[r][c] += delta;
            let flat: Vec<f32> = v.iter().flatten().map(|&x| x as f32).collect();
            let t = Tensor::from_vec(flat, base.dims(), &Device::Cpu).unwrap();
            loss_of(&t).to_scalar::<f32>().unwrap() as f64
        };
        let fd = (at(eps) - at(-eps)) / (2.0 * eps);
        let an = g[r][c] as f64;
        assert!(
            (fd - an).abs() <= 2e-2 * fd.abs().max(an.abs()).max(1.0),
            "d loss / d embeds[{r}][{c}]: analytic {an}, finite difference {fd}"
        );
        checked += 1;
    }
    assert_eq!(checked, 5);
}

/// tiny-s0 with its untied output head scaled by 5. Random weights at the fixture's
/// std 0.02 cap every logit near 1.3, so no input can make the next-token distribution
/// sharp and a 10x fall in loss is impossible; the tied fixtures have the opposite
/// problem (std-1 embeddings dominate the residual stream, so the next token is the
/// current one whatever the context). A head at std 0.1 gives logits a usable range
/// while leaving the rest of the random decoder as it is. (A random decoder is a weak
/// listener: 4 soft tokens steer it through ~5 answer tokens, not through long texts.)
fn steerable_checkpoint(dir: &std::path::Path) -> SurgeredModel {
    let src = fixture_model(FIXTURE);
    common::copy_dir(&src, dir);
    let path = dir.join("model.safetensors");
    let mut tensors = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    let head = tensors.get_mut("lm_head.weight").unwrap();
    *head = (&*head * 5.0).unwrap();
    candle_core::safetensors::save(&tensors, &path).unwrap();
    SurgeredModel::load(dir.to_str().unwrap(), &LoadOptions::default()).unwrap()
}

#[test]
fn next_token_training_makes_greedy_decoding_say_each_target() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = steerable_checkpoint(dir.path());
    let init = EmbeddingAdapter::init(spec(), 3, DType::F32, &Device::Cpu).unwrap();
    let opts = TrainOptions::new()
        .batch_size(3)
        .epochs(100)
        .learning_rate(3e-2)
        .seed(5);
    let trained = {
        let mut trainer = AdapterTrainer::new(&m, init, opts).unwrap();
        let exs = examples();
        let (before, _) = trainer.evaluate(&exs).unwrap();
        let history = trainer.fit(&exs, |_| {}).unwrap();
        assert_eq!(history.len(), 200);
        assert!(history.iter().all(|s| s.grad_norm.is_finite()));
        let (after, _) = trainer.evaluate(&exs).unwrap();
        let (before, after) = (before.unwrap(), after.unwrap());
        assert!(
            after * 10.0 <= before,
            "loss only fell from {before} to {after}"
        );
        trainer.adapter().unwrap()
    };
    m.attach_adapter(trained).unwrap();
    let prompt = Prompt::user("<item>Describe this item.");
    for (i, target) in TARGETS.iter().enumerate() {
        let item = Tensor::from_vec(embedding(i), (1, IN_DIM), &Device::Cpu).unwrap();
        let g = m
            .generate(
                &prompt,
                Some(&item),
                &GenerateOptions::new().max_tokens(24).greedy(),
                |_| {},
            )
            .unwrap();
        assert_eq!(g.text, *target, "item {i}");
    }
}

#[test]
fn a_resumed_run_continues_exactly() {
    let m = load();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("adapter.safetensors");
    let opts = |epochs| {
        TrainOptions::new()
            .batch_size(4)
            .epochs(epochs)
            .learning_rate(5e-3)
            .seed(9)
    };
    let init = || EmbeddingAdapter::init(spec(), 1, DType::F32, &Device::Cpu).unwrap();
    let exs = examples();

    let mut straight = AdapterTrainer::new(&m, init(), opts(4)).unwrap();
    let full = straight.fit(&exs, |_| {}).unwrap();

    let mut first = AdapterTrainer::new(&m, init(), opts(2).checkpoint(&path, 3)).unwrap();
    let part = first.fit(&exs, |_| {}).unwrap();
    assert_eq!(part.len(), 4);
    assert!(part[2].checkpointed && part[3].checkpointed && !part[0].checkpointed);
    assert!(state_path(&path).is_file());
    drop(first);

    let mut resumed = AdapterTrainer::resume(&m, &path, opts(4)).unwrap();
    assert_eq!(resumed.steps(), 4);
    let rest = resumed.fit(&exs, |_| {}).unwrap();
    assert_eq!(rest.len(), 4);
    for (a, b) in full[4..].iter().zip(&rest) {
        assert_eq!(a.step, b.step);
        assert!(
            (a.loss - b.loss).abs() <= 1e-6 * a.loss.abs().max(1.0),
            "{a:?} vs {b:?}"
        );
    }
    let wa = straight.adapter().unwrap().tensors();
    let wb = resumed.adapter().unwrap().tensors();
    for ((na, ta), (nb, tb)) in wa.iter().zip(&wb) {
        assert_eq!(na, nb);
        assert!(max_abs_diff(ta, tb) <= 1e-6, "{na}");
    }

    // a different seed or batch size cannot resume this checkpoint
    let e = AdapterTrainer::resume(&m, &path, opts(4).seed(10)).unwrap_err();
    assert!(e.to_string().contains("seed"), "{e}");
}

#[test]
fn distillation_pulls_soft_tokens_onto_the_pooled_vision_tokens() {
    let m = load();
    let full = FullModel::load(
        fixture_model(FIXTURE).to_str().unwrap(),
        DType::F32,
        &Device::Cpu,
    )
    .unwrap();
    let images_dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/images/images");
    let spec = AdapterSpec::linear(IN_DIM, 4, HIDDEN).with_deepstack(2);
    let mut exs = Vec::new();
    for (i, name) in [
        "small_160x120.png",
        "alpha_250x190.png",
        "scene_461x347.jpg",
    ]
    .iter()
    .enumerate()
    {
        let img = ImageProcessor::open(&images_dir.join(name)).unwrap();
        let (tokens, deepstack) = full.pooled_tokens(&img, spec.grid).unwrap();
        assert_eq!(tokens.dims(), &[4, HIDDEN]);
        assert_eq!(deepstack.len(), 2);
        exs.push(TrainExample {
            embedding: embedding(i),
            target: None,
            teacher: Some(Teacher { tokens, deepstack }),
        });
    }
    for loss in [DistillLoss::Mse, DistillLoss::Cosine] {
        let init = EmbeddingAdapter::init(spec.clone(), 2, DType::F32, &Device::Cpu).unwrap();
        let opts = TrainOptions::new()
            .batch_size(3)
            .epochs(300)
            .learning_rate(1e-2)
            .weights(0.0, 1.0)
            .distill_loss(loss);
        let mut t = AdapterTrainer::new(&m, init, opts).unwrap();
        let (_, before) = t.evaluate(&exs).unwrap();
        t.fit(&exs, |_| {}).unwrap();
        let (nt, after) = t.evaluate(&exs).unwrap();
        assert!(nt.is_none());
        let (before, after) = (before.unwrap(), after.unwrap());
        assert!(after * 10.0 <= before, "{loss:?}: {before} -> {after}");
    }
}

#[test]
fn bad_examples_and_options_are_typed_errors() {
    let m = load();
    let init = || EmbeddingAdapter::init(spec(), 3, DType::F32, &Device::Cpu).unwrap();
    let e = AdapterTrainer::new(&m, init(), TrainOptions::new().batch_size(0)).unwrap_err();
    assert!(e.to_string().contains("batch_size"), "{e}");
    let e = AdapterTrainer::new(&m, init(), TrainOptions::new().weights(0.0, 0.0)).unwrap_err();
    assert!(e.to_string().contains("weight"), "{e}");
    let e = AdapterTrainer::new(
        &m,
        init(),
        TrainOptions::new().prompt(Prompt::user("<item> and <item>")),
    )
    .unwrap_err();
    assert!(e.to_string().contains("markers"), "{e}");

    let mut t = AdapterTrainer::new(&m, init(), TrainOptions::new()).unwrap();
    let mut exs = examples();
    exs[2].embedding.pop();
    let e = t.fit(&exs, |_| {}).unwrap_err().to_string();
    assert!(e.contains("example 2") && e.contains("in_dim"), "{e}");
    let mut exs = examples();
    exs[1].embedding[3] = f32::NAN;
    let e = t.fit(&exs, |_| {}).unwrap_err().to_string();
    assert!(e.contains("example 1") && e.contains("value 3"), "{e}");
    assert_eq!(t.steps(), 0, "nothing was trained on bad data");
}

#[test]
fn pairs_files_load_inline_and_npy_rows_and_name_bad_lines() {
    let dir = tempfile::tempdir().unwrap();
    let npy = dir.path().join("items.npy");
    let arr = ndarray::Array2::from_shape_fn((3, 4), |(i, j)| (i * 4 + j) as f32);
    ndarray_npy::write_npy(&npy, &arr).unwrap();
    let pairs = dir.path().join("pairs.jsonl");
    std::fs::write(
        &pairs,
        "{\"row\": 2, \"text\": \"lamp\"}\n\n{\"embedding\": [1, 2, 3, 4], \"image\": \"a.png\"}\n",
    )
    .unwrap();
    let recs = load_pairs(&pairs, Some(&npy)).unwrap();
    assert_eq!(recs.len(), 2);
    assert_eq!(recs[0].embedding, vec![8.0, 9.0, 10.0, 11.0]);
    assert_eq!(recs[0].text.as_deref(), Some("lamp"));
    assert_eq!(
        recs[1].image.as_deref(),
        Some(dir.path().join("a.png").as_path())
    );

    for (body, needle, line) in [
        ("{\"row\": 7, \"text\": \"x\"}\n", "past the end", 1),
        (
            "{\"row\": 0, \"text\": \"x\"}\n{\"embedding\": [1], \"text\": \"y\"}\n",
            "earlier lines",
            2,
        ),
        (
            "{\"embedding\": [1, 2, 3, 4]}\n",
            "\"text\" or an \"image\"",
            1,
        ),
        ("{\"text\": \"x\"}\n", "\"embedding\" or \"row\"", 1),
        ("not json\n", "expected", 1),
        (
            "{\"embedding\": [1,2,3,4], \"txt\": \"x\"}\n",
            "unknown field",
            1,
        ),
    ] {
        std::fs::write(&pairs, body).unwrap();
        let e = load_pairs(&pairs, Some(&npy)).unwrap_err().to_string();
        assert!(
            e.contains(needle) && e.contains(&format!("line {line}")),
            "{body:?}: {e}"
        );
    }
}
