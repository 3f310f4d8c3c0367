//! Criterion: one request (N items, one scored continuation) on the full path (image
//! decode + preprocessing + vision tower + prefill) vs. the surgery path (adapter +
//! prefill with K soft tokens per item), on the same Qwen3-VL-2B-shaped decoder.
//!
//! ```text
//! cargo bench --bench surgery_vs_full_encoder
//! MOSAIC_BENCH_DECODER_LAYERS=4 MOSAIC_BENCH_ITEMS=1,8 cargo bench --bench surgery_vs_full_encoder
//! ```
//! Defaults: the real 28 decoder layers, N in {1, 8, 32}, K in {1, 4, 16}. On 2 CPU
//! cores one full-path request at N=32 takes minutes and criterion needs 10 samples, so
//! the default run takes hours; the environment variables above trade depth for time
//! (the layer count used is printed). `cargo run --release --example bench_surgery`
//! measures the same paths with fewer repetitions and prints ratios and memory.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use criterion::{BenchmarkId, Criterion, SamplingMode, criterion_group, criterion_main};
use mosaic::vision_surgery::bench::{RequestText, run_full, run_surgery, synthetic_jpegs};
use mosaic::vision_surgery::full::FullModel;
use mosaic::vision_surgery::synthetic::{ModelShape, write_random_checkpoint};
use mosaic::vision_surgery::{Activation, AdapterSpec, EmbeddingAdapter};

fn list(var: &str, default: &[usize]) -> Vec<usize> {
    std::env::var(var)
        .ok()
        .map(|s| {
            s.split(',')
                .filter_map(|x| x.trim().parse().ok())
                .filter(|&x| x > 0)
                .collect::<Vec<_>>()
        })
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_vec())
}

fn bench(c: &mut Criterion) {
    let layers = list("MOSAIC_BENCH_DECODER_LAYERS", &[28])[0];
    let items = list("MOSAIC_BENCH_ITEMS", &[1, 8, 32]);
    let ks = list("MOSAIC_BENCH_K", &[1, 4, 16]);
    let shape = ModelShape::qwen3_vl_2b().with_decoder_layers(layers);
    eprintln!(
        "surgery_vs_full_encoder: Qwen3-VL-2B shapes with {layers} decoder layers (the real model has 28), random f32 weights, CPU"
    );
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target/bench-checkpoints")
        .join(format!("qwen3-vl-2b-shaped-{layers}-layers"));
    let want = serde_json::to_string_pretty(&shape.config_json()).expect("config serialises");
    if std::fs::read_to_string(dir.join("config.json")).ok() != Some(want)
        || !dir.join("model.safetensors").is_file()
    {
        write_random_checkpoint(&dir, &shape, 2026).expect("writing the synthetic checkpoint");
    }
    let full = FullModel::load(dir.to_str().expect("utf-8 path"), DType::F32, &Device::Cpu)
        .expect("loading the synthetic checkpoint");
    let text_model = full.text_model().clone();
    let max_items = items.iter().copied().max().unwrap_or(1);
    let images = synthetic_jpegs(max_items, 448, 7).expect("test images");
    let in_dim = 256;
    let v: Vec<f32> = (0..max_items * in_dim)
        .map(|i| ((i * 7919 % 2003) as f32 / 1001.5) - 1.0)
        .collect();
    let embeddings = Tensor::from_vec(v, (max_items, in_dim), &Device::Cpu).expect("items");
    let text = RequestText::synthetic(shape.special_base(), 1);

    let mut g = c.benchmark_group("surgery_vs_full_encoder");
    g.sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(std::time::Duration::from_millis(500))
        .measurement_time(std::time::Duration::from_secs(5));
    for &n in &items {
        g.bench_with_input(
            BenchmarkId::new("full", format!("items={n}")),
            &n,
            |b, &n| b.iter(|| run_full(&full, &images[..n], &text).expect("full path")),
        );
        for &k in &ks {
            let spec = AdapterSpec::mlp(in_dim, 1024, Activation::Gelu, k, shape.hidden_size)
                .with_deepstack(shape.deepstack_levels);
            let adapter =
                EmbeddingAdapter::init(spec, k as u64, DType::F32, &Device::Cpu).expect("adapter");
            let batch = embeddings.narrow(0, 0, n).expect("batch");
            g.bench_with_input(
                BenchmarkId::new("surgery", format!("items={n}/k={k}")),
                &n,
                |b, _| {
                    b.iter(|| {
                        run_surgery(&text_model, &adapter, &batch, &text).expect("surgery path")
                    })
                },
            );
        }
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
