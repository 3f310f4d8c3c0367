//! Quantized decoder weights on the committed checkpoints: the load report says what is
//! held how, logits track the f32 model as closely as each format allows (text and
//! injected soft tokens with DeepStack), and a format whose block does not fit the
//! layers leaves them dense and the logits identical.

mod common;

use candle_core::{DType, Tensor};
use common::{case_ids, fixture_case, fixture_model};
use vision_surgery::model::{LogitsScope, SequenceInput, VisualInput};
use vision_surgery::position::VisualGrid;
use vision_surgery::quant::Agreement;
use vision_surgery::{LoadOptions, SurgeredModel, WeightFormat};

fn load(fixture: &str, format: WeightFormat) -> SurgeredModel {
    SurgeredModel::load(
        fixture_model(fixture).to_str().unwrap(),
        &LoadOptions::default().dtype(DType::F32).weights(format),
    )
    .unwrap()
}

/// All-position logits of the text case and the injected-embeddings case.
fn logits(m: &SurgeredModel, fixture: &str) -> Tensor {
    let tm = m.text_model();
    let a = fixture_case(fixture, "a_text");
    let d = fixture_case(fixture, "d_injected");
    let seqs = [
        SequenceInput {
            ids: case_ids(&a),
            visual: None,
        },
        SequenceInput {
            ids: case_ids(&d),
            visual: Some(VisualInput {
                embeds: d["visual_embeds"].clone(),
                deepstack: (0..m.config().deepstack_levels)
                    .map(|k| d[&format!("deepstack_{k}")].clone())
                    .collect(),
                grids: vec![VisualGrid::still(3, 4)],
            }),
        },
    ];
    let rows: Vec<Tensor> = seqs
        .iter()
        .map(|q| {
            let mut c = tm.new_cache(q.ids.len());
            let l = tm
                .prefill(std::slice::from_ref(q), &mut c, LogitsScope::All)
                .unwrap()
                .logits;
            l.squeeze(0).unwrap()
        })
        .collect();
    Tensor::cat(&rows, 0).unwrap()
}

#[test]
fn quantized_logits_track_f32_within_each_formats_bound() {
    for fixture in ["tiny-s0", "tiny-s4-moe"] {
        let dense = load(fixture, WeightFormat::Dense);
        let want = logits(&dense, fixture);
        let all = dense.surgery_report().projections;
        assert_eq!(all.quantized, 0);
        // (format, max |Δlogit|, mean KL, top-1 agreement) bounds. Measured (2026-12-06):
        // tiny-s0 q8_0 0.089 / 1.6e-4 / 0.976, q4_0 0.80 / 0.019 / 0.69; tiny-s4-moe
        // q8_0 0.77 / 1.1e-3 / 1.0 (one routing flip), q4_0 1.56 / 0.022 / 0.74. The
        // 64-wide random layers are harsher on quantization than the 2B model's 2048.
        let mut kls = Vec::new();
        for (format, max_abs, kl, top1) in [
            (WeightFormat::Q8_0, 1.0, 2e-3, 0.95),
            (WeightFormat::Q4_0, 2.0, 0.05, 0.6),
        ] {
            let m = load(fixture, format);
            let r = m.surgery_report();
            assert_eq!(r.weight_format, format);
            assert_eq!(
                r.projections.quantized, all.dense,
                "{fixture} {format}: every layer"
            );
            assert!(
                r.projections.bytes * 3 < all.bytes,
                "{fixture} {format}: {r}"
            );
            assert!(r.to_string().contains(&format!("projections in {format}")));
            let a = Agreement::of(&want, &logits(&m, fixture)).unwrap();
            eprintln!("{fixture} {format}: {a:?}");
            assert!(
                a.max_abs > 0.0,
                "{fixture} {format}: quantization changed nothing"
            );
            assert!(
                a.max_abs <= max_abs && a.mean_kl <= kl && a.top1 >= top1,
                "{fixture} {format}: {a:?}"
            );
            kls.push(a.mean_kl);
        }
        assert!(
            kls[0] * 5.0 < kls[1],
            "{fixture}: 8 bits are closer than 4: {kls:?}"
        );
    }
}

#[test]
fn a_format_whose_block_does_not_fit_leaves_the_layers_dense() {
    // the fixtures' layers are 64 and 128 wide; k-quant blocks are 256
    let dense = load("tiny-s0", WeightFormat::Dense);
    let m = load("tiny-s0", WeightFormat::Q4K);
    let r = m.surgery_report();
    assert_eq!(r.projections.quantized, 0);
    assert_eq!(r.projections, dense.surgery_report().projections);
    let a = Agreement::of(&logits(&dense, "tiny-s0"), &logits(&m, "tiny-s0")).unwrap();
    assert_eq!(a.max_abs, 0.0);
}

#[test]
fn a_bf16_compute_dtype_runs_quantized_layers_too() {
    let m = SurgeredModel::load(
        fixture_model("tiny-s5-bf16").to_str().unwrap(),
        &LoadOptions::default()
            .dtype(DType::BF16)
            .weights(WeightFormat::Q8_0),
    )
    .unwrap();
    assert_eq!(m.dtype(), DType::BF16);
    let dense = load("tiny-s5-bf16", WeightFormat::Dense);
    let a = Agreement::of(&logits(&dense, "tiny-s5-bf16"), &logits(&m, "tiny-s5-bf16")).unwrap();
    eprintln!("bf16 compute, q8_0: {a:?}");
    assert!(a.top1 >= 0.9 && a.max_abs < 0.2, "{a:?}");
}
