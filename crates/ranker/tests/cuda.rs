//! Re-scoring on the GPU against the CPU: the same candidates, the same context, the
//! surgered model loaded on CUDA in f32 / bf16 / f16. Runs when a CUDA device exists
//! (build with `--features cuda`); otherwise prints why it skipped.

mod common;

use candle_core::{DType, Device};
use common::{content, model, model_with};
use ranker::rescore::{RescoreOptions, Rescorer};
use vision_surgery::LoadOptions;

#[test]
fn cuda_rescoring_matches_cpu() {
    let dev = match Device::new_cuda(0) {
        Ok(d) => d,
        Err(e) => {
            println!("SKIPPED cuda_rescoring_matches_cpu: no CUDA device ({e})");
            return;
        }
    };
    let (_s, snap) = content(16);
    let context = [1u64, 2];
    let candidates: Vec<u64> = (3..16).collect();
    // Multi-token answers (two passes per batch) and single-token ones (one pass).
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
            let m = model_with(LoadOptions::default().device(dev.clone()).dtype(dtype));
            let gpu = Rescorer::new(m, snap.clone(), opts.clone()).unwrap();
            let got = gpu.log_odds(&context, &candidates).unwrap();
            assert_eq!(got.len(), want.len());
            let d = got
                .iter()
                .zip(&want)
                .map(|(g, w)| (g - w).abs())
                .fold(0f32, f32::max);
            println!(
                "answers {yes:?}/{no:?}, cuda {dtype:?}: max |Δ log-odds| = {d:.3e} (tolerance {tol})"
            );
            assert!(d <= tol, "{dtype:?}: {got:?} vs {want:?}");
        }
    }
}
