//! GPU path against the CPU path. Runs when a CUDA device exists (build with
//! `--features cuda`); otherwise prints why it skipped.

mod common;

use candle_core::{DType, Device};
use common::{case_ids, fixture_case, fixture_model, max_abs_diff};
use vision_surgery::model::{LogitsScope, SequenceInput};
use vision_surgery::{LoadOptions, SurgeredModel};

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
