//! Criterion: one request (N items, one scored continuation) on the full path (image
//! decode + preprocessing + vision tower + prefill) vs. the surgery path (adapter +
//! prefill with K soft tokens per item), on the same Qwen3-VL-2B-shaped decoder with the
//! same settings (weight format, prefix cache), then the speed-up of each point (ratio of
//! the medians of this run's iterations).
//!
//! ```text
//! cargo bench --bench surgery_vs_full_encoder                      # ~4 min on 2 cores
//! MOSAIC_BENCH_SWEEP=1 cargo bench --bench surgery_vs_full_encoder # the full sweep: hours
//! ```
//! Default: all 28 decoder layers, N = 1, K = 4, weights Q8_0 with the prefix cache (the
//! CPU serving setting). `MOSAIC_BENCH_SWEEP=1` measures N in {1, 8, 32}, K in {1, 4, 16}
//! and weights dense and Q8_0 (a full-path request at N = 32 takes minutes and criterion
//! needs 10 samples). Each setting can also be given alone: `MOSAIC_BENCH_DECODER_LAYERS`,
//! `MOSAIC_BENCH_ITEMS`, `MOSAIC_BENCH_K` (comma lists), `MOSAIC_BENCH_WEIGHTS` (dense,
//! q8_0, q6_k, q4_k, q4_0), `MOSAIC_BENCH_PREFIX_CACHE=0`. `cargo run --release --example
//! bench_surgery` measures the same paths with fewer repetitions and prints paired
//! ratios against today's dense path and peak memory.

use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use candle_core::{DType, Device, Tensor};
use criterion::{BenchmarkId, Criterion, SamplingMode, criterion_group, criterion_main};
use mosaic::vision_surgery::bench::{RequestText, run_full, run_surgery, synthetic_jpegs};
use mosaic::vision_surgery::full::FullModel;
use mosaic::vision_surgery::prefix::DEFAULT_PREFIX_CACHE_BYTES;
use mosaic::vision_surgery::synthetic::{ModelShape, ensure_random_checkpoint};
use mosaic::vision_surgery::{
    Activation, AdapterSpec, EmbeddingAdapter, PrefixCache, WeightFormat,
};

fn sweep() -> bool {
    std::env::var("MOSAIC_BENCH_SWEEP").is_ok_and(|v| v == "1")
}

fn list<T: std::str::FromStr + Clone>(var: &str, default: &[T], sweep_default: &[T]) -> Vec<T> {
    std::env::var(var)
        .ok()
        .map(|s| {
            s.split(',')
                .filter_map(|x| x.trim().parse().ok())
                .collect::<Vec<T>>()
        })
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| {
            if sweep() {
                sweep_default.to_vec()
            } else {
                default.to_vec()
            }
        })
}

/// Runs `f` once per iteration, keeping each iteration's time in `times`.
fn timed<T>(times: &Mutex<Vec<Duration>>, iters: u64, mut f: impl FnMut() -> T) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        let t = Instant::now();
        std::hint::black_box(f());
        let d = t.elapsed();
        total += d;
        times.lock().expect("timings").push(d);
    }
    total
}

fn median(v: &Mutex<Vec<Duration>>) -> f64 {
    let mut v: Vec<f64> = v
        .lock()
        .expect("timings")
        .iter()
        .map(Duration::as_secs_f64)
        .collect();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

fn bench(c: &mut Criterion) {
    let layers = list("MOSAIC_BENCH_DECODER_LAYERS", &[28usize], &[28])[0].max(1);
    let items: Vec<usize> = list("MOSAIC_BENCH_ITEMS", &[1usize], &[1, 8, 32])
        .into_iter()
        .filter(|&n| n > 0)
        .collect();
    let ks: Vec<usize> = list("MOSAIC_BENCH_K", &[4usize], &[1, 4, 16])
        .into_iter()
        .filter(|&k| k > 0)
        .collect();
    let formats = list(
        "MOSAIC_BENCH_WEIGHTS",
        &[WeightFormat::Q8_0],
        &[WeightFormat::Dense, WeightFormat::Q8_0],
    );
    let prefix = std::env::var("MOSAIC_BENCH_PREFIX_CACHE").map_or(true, |v| v != "0");
    let shape = ModelShape::qwen3_vl_2b().with_decoder_layers(layers);
    eprintln!(
        "surgery_vs_full_encoder: Qwen3-VL-2B shapes with {layers} decoder layers (the real model has 28), random weights, f32 compute, CPU, prefix cache {}",
        if prefix { "on" } else { "off" }
    );
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target/bench-checkpoints")
        .join(format!("qwen3-vl-2b-shaped-{layers}-layers"));
    ensure_random_checkpoint(&dir, &shape, 2026).expect("writing the synthetic checkpoint");
    let spec = dir.to_str().expect("utf-8 path");
    let max_items = items.iter().copied().max().unwrap_or(1);
    let images = synthetic_jpegs(max_items, 448, 7).expect("test images");
    let in_dim = 256;
    let v: Vec<f32> = (0..max_items * in_dim)
        .map(|i| ((i * 7919 % 2003) as f32 / 1001.5) - 1.0)
        .collect();
    let embeddings = Tensor::from_vec(v, (max_items, in_dim), &Device::Cpu).expect("items");
    let text = RequestText::synthetic(shape.special_base(), 1);
    let cache = || {
        PrefixCache::new(if prefix {
            DEFAULT_PREFIX_CACHE_BYTES
        } else {
            0
        })
    };

    let mut speedups = Vec::new();
    let mut g = c.benchmark_group("surgery_vs_full_encoder");
    g.sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(5));
    for format in formats {
        let full = FullModel::load_with(spec, DType::F32, &Device::Cpu, format)
            .expect("loading the synthetic checkpoint");
        let model = full.text_model().clone().with_prefix_cache(cache());
        for &n in &items {
            let full_times = Mutex::new(Vec::new());
            g.bench_with_input(
                BenchmarkId::new("full", format!("weights={format}/items={n}")),
                &n,
                |b, &n| {
                    b.iter_custom(|iters| {
                        timed(&full_times, iters, || {
                            run_full(&full, &model, &images[..n], &text).expect("full path")
                        })
                    })
                },
            );
            for &k in &ks {
                let spec = AdapterSpec::mlp(in_dim, 1024, Activation::Gelu, k, shape.hidden_size)
                    .with_deepstack(shape.deepstack_levels);
                let adapter = EmbeddingAdapter::init(spec, k as u64, DType::F32, &Device::Cpu)
                    .expect("adapter");
                let batch = embeddings.narrow(0, 0, n).expect("batch");
                let surgery_times = Mutex::new(Vec::new());
                g.bench_with_input(
                    BenchmarkId::new("surgery", format!("weights={format}/items={n}/k={k}")),
                    &n,
                    |b, _| {
                        b.iter_custom(|iters| {
                            timed(&surgery_times, iters, || {
                                run_surgery(&model, &adapter, &batch, &text).expect("surgery path")
                            })
                        })
                    },
                );
                speedups.push((format, n, k, median(&full_times), median(&surgery_times)));
            }
        }
    }
    g.finish();
    for (format, n, k, f, s) in speedups {
        println!(
            "speed-up weights={format} items={n} k={k}: full {:.0} ms / surgery {:.0} ms = {:.1}x (medians of this run's iterations, {layers} decoder layers)",
            f * 1e3,
            s * 1e3,
            f / s
        );
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
