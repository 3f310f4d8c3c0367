//! Re-scoring on the GPU against the CPU: the same candidates, the same context, the
//! surgered model loaded on CUDA in f32 / bf16 / f16. Runs when a CUDA device exists
//! (build with `--features cuda`); otherwise prints why it skipped. The same comparison
//! runs on the CPU in `rescore.rs`.

mod common;

use candle_core::Device;

#[test]
fn cuda_rescoring_matches_cpu() {
    let dev = match Device::new_cuda(0) {
        Ok(d) => d,
        Err(e) => {
            println!("SKIPPED cuda_rescoring_matches_cpu: no CUDA device ({e})");
            return;
        }
    };
    common::rescoring_tracks_cpu_f32(&dev);
}
