//! Surgery vs. full encoder, measured in one process run: one line per (items, K) point.
//!
//! ```text
//! cargo run --release --example bench_surgery -- [--quick] [--items 1,8,32] [--k 1,4,16]
//! ```
//! Builds (once, cached under target/) a random-weight checkpoint with Qwen3-VL-2B's
//! shapes: vocabulary 151,936, H 2048, 16/8 heads of 128, MLP 6144, tied head, vision
//! tower of 24 blocks x 1024 with DeepStack from blocks 5/11/17 — and `--decoder-layers`
//! decoder layers (28 in the real model; the first output line states the number used).
//! Both paths run on that same decoder, alternating, `--reps` times per point; the
//! medians are printed:
//! - full = decode + preprocess N 448x448 JPEGs (196 merged tokens each), vision tower,
//!   prefill, score a 4-token continuation;
//! - surgery = MLP adapter (in_dim 256 -> 1024 -> K x 2048, plus DeepStack heads) on N
//!   precomputed embeddings, prefill with K soft tokens per item, score the same continuation.
//!
//! Peak resident memory: the full path's is read in this process around its first run of
//! each size, before any adapter exists (the peak is reset first through
//! /proc/self/clear_refs); the surgery path's comes from a child process per point that
//! loads the checkpoint in surgery mode (the vision tensors are never mapped) and runs
//! one request. `--svg` writes a plot of the medians.
//!
//! `--device cuda --dtype bf16 --no-rss` runs both paths on a GPU (build with
//! `--features cuda`); the peak-RSS columns only mean something on the CPU.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use candle_core::{DType, Device, Tensor};
use clap::Parser;
use mosaic::vision_surgery::bench::{
    FullTiming, RequestText, SurgeryTiming, peak_rss_bytes, reset_peak_rss, run_full, run_surgery,
    synthetic_jpegs,
};
use mosaic::vision_surgery::full::FullModel;
use mosaic::vision_surgery::model::TextModel;
use mosaic::vision_surgery::prefix::DEFAULT_PREFIX_CACHE_BYTES;
use mosaic::vision_surgery::synthetic::{ModelShape, ensure_random_checkpoint};
use mosaic::vision_surgery::{
    Activation, AdapterSpec, DeviceSpec, EmbeddingAdapter, LoadOptions, PrefixCache, SurgeredModel,
    WeightFormat,
};

#[derive(Parser)]
#[command(about = "Surgered Qwen3-VL vs. the full vision encoder, one process run")]
struct Args {
    /// Items 1,8; K 1,4,16; one repetition; 4 decoder layers: under 3 minutes on 2 cores.
    #[arg(long)]
    quick: bool,
    /// Items per request, comma-separated.
    #[arg(long, value_delimiter = ',')]
    items: Option<Vec<usize>>,
    /// Soft tokens per item (K) on the surgery path, comma-separated.
    #[arg(long, value_delimiter = ',')]
    k: Option<Vec<usize>>,
    /// Repetitions per point (the median is reported).
    #[arg(long)]
    reps: Option<usize>,
    /// Decoder layers of the synthetic checkpoint (Qwen3-VL-2B has 28).
    #[arg(long)]
    decoder_layers: Option<usize>,
    /// Image side in pixels (448 = 196 merged tokens at patch 16).
    #[arg(long, default_value_t = 448)]
    image_side: u32,
    /// Width of the precomputed item embeddings.
    #[arg(long, default_value_t = 256)]
    in_dim: usize,
    /// Where the synthetic checkpoint is cached.
    #[arg(long)]
    checkpoint: Option<PathBuf>,
    /// Skip the peak-RSS child processes.
    #[arg(long)]
    no_rss: bool,
    /// Write an SVG plot of the medians here.
    #[arg(long)]
    svg: Option<PathBuf>,
    /// Device: cpu, cuda[:N] or auto (the `cuda` feature is needed for CUDA).
    #[arg(long, default_value = "cpu")]
    device: DeviceSpec,
    /// Compute dtype of both paths: f32, bf16 or f16.
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// Decoder weight formats to measure (dense, q8_0, q6_k, q4_k, q4_0), each with the
    /// prefix cache; today's path (dense, no prefix cache) is measured too.
    #[arg(long, value_delimiter = ',')]
    weights: Option<Vec<WeightFormat>>,
    /// Run the formats asked for without the prefix cache.
    #[arg(long)]
    no_prefix_cache: bool,
    /// Leave out today's path (dense weights, no prefix cache).
    #[arg(long)]
    no_baseline: bool,
    /// Internal: measure one path's peak RSS in this process.
    #[arg(long, hide = true)]
    rss_probe: Option<String>,
}

fn adapter_for(
    shape: &ModelShape,
    in_dim: usize,
    k: usize,
    env: &Env,
) -> anyhow::Result<EmbeddingAdapter> {
    let spec = AdapterSpec::mlp(in_dim, 1024, Activation::Gelu, k, shape.hidden_size)
        .with_deepstack(shape.deepstack_levels);
    Ok(EmbeddingAdapter::init(
        spec,
        k as u64,
        env.dtype,
        &env.device,
    )?)
}

fn items_tensor(n: usize, in_dim: usize, env: &Env) -> anyhow::Result<Tensor> {
    let v: Vec<f32> = (0..n * in_dim)
        .map(|i| ((i * 7919 % 2003) as f32 / 1001.5) - 1.0)
        .collect();
    Ok(Tensor::from_vec(v, (n, in_dim), &env.device)?.to_dtype(env.dtype)?)
}

/// Where and in what precision both paths run.
struct Env {
    device: Device,
    dtype: DType,
}

impl Env {
    fn from_args(args: &Args) -> anyhow::Result<Self> {
        let dtype = match args.dtype.as_str() {
            "f32" => DType::F32,
            "bf16" => DType::BF16,
            "f16" => DType::F16,
            other => bail!("--dtype {other:?}: expected f32, bf16 or f16"),
        };
        Ok(Env {
            device: args.device.select()?.into_device(),
            dtype,
        })
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// One decoder setting measured on both paths.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Setting {
    weights: WeightFormat,
    prefix_cache: bool,
}

impl Setting {
    /// Today's path: dense weights, every prompt token run.
    const BASELINE: Setting = Setting {
        weights: WeightFormat::Dense,
        prefix_cache: false,
    };

    fn label(self) -> String {
        format!(
            "weights={} prefix_cache={}",
            self.weights,
            if self.prefix_cache { "on" } else { "off" }
        )
    }

    fn cache(self) -> PrefixCache {
        PrefixCache::new(if self.prefix_cache {
            DEFAULT_PREFIX_CACHE_BYTES
        } else {
            0
        })
    }

    fn probe_arg(self) -> String {
        format!("{}:{}", self.weights, u8::from(self.prefix_cache))
    }

    fn parse_probe(s: &str, c: &str) -> anyhow::Result<Self> {
        Ok(Setting {
            weights: s.parse()?,
            prefix_cache: c == "1",
        })
    }
}

fn probe(args: &Args, shape: &ModelShape, ckpt: &Path, what: &str) -> anyhow::Result<()> {
    let env = Env::from_args(args)?;
    let parts: Vec<&str> = what.split(':').collect();
    let text = RequestText::synthetic(shape.special_base(), 1);
    let spec = ckpt.to_str().context("checkpoint path is not UTF-8")?;
    match parts.as_slice() {
        ["full", n, w, c] => {
            let n: usize = n.parse()?;
            let set = Setting::parse_probe(w, c)?;
            let full = FullModel::load_with(spec, env.dtype, &env.device, set.weights)?;
            let model = full.text_model().clone().with_prefix_cache(set.cache());
            let images = synthetic_jpegs(n, args.image_side, 7)?;
            // the prefix is cached by the first request of a serving process
            run_full(&full, &model, &images[..1], &text)?;
            reset_peak_rss();
            run_full(&full, &model, &images, &text)?;
        }
        ["surgery", n, k, w, c] => {
            let (n, k): (usize, usize) = (n.parse()?, k.parse()?);
            let set = Setting::parse_probe(w, c)?;
            let model = SurgeredModel::load(
                spec,
                &LoadOptions::default()
                    .dtype(env.dtype)
                    .device(env.device.clone())
                    .weights(set.weights),
            )?;
            let tm = model.text_model().clone().with_prefix_cache(set.cache());
            let adapter = adapter_for(shape, args.in_dim, k, &env)?;
            let items = items_tensor(n, args.in_dim, &env)?;
            run_surgery(&tm, &adapter, &items.narrow(0, 0, 1)?, &text)?;
            // serving peak: what is resident after loading plus a request (the full
            // path's peak is taken the same way)
            reset_peak_rss();
            run_surgery(&tm, &adapter, &items, &text)?;
        }
        _ => bail!("bad --rss-probe {what:?}"),
    }
    println!("peak_rss_bytes={}", peak_rss_bytes().unwrap_or(0));
    Ok(())
}

fn child_rss(ckpt: &Path, args: &Args, layers: usize, what: &str) -> anyhow::Result<f64> {
    let exe = std::env::current_exe()?;
    let out = Command::new(exe)
        .arg("--checkpoint")
        .arg(ckpt)
        .arg("--decoder-layers")
        .arg(layers.to_string())
        .arg("--image-side")
        .arg(args.image_side.to_string())
        .arg("--in-dim")
        .arg(args.in_dim.to_string())
        .arg("--device")
        .arg(args.device.to_string())
        .arg("--dtype")
        .arg(&args.dtype)
        .arg("--rss-probe")
        .arg(what)
        .output()?;
    if !out.status.success() {
        bail!(
            "rss probe {what} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let bytes: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("peak_rss_bytes="))
        .context("rss probe printed no peak_rss_bytes")?
        .trim()
        .parse()?;
    Ok(bytes / (1024.0 * 1024.0))
}

/// The runs of one (setting, items, K) point, in repetition order.
struct Point {
    setting: usize,
    items: usize,
    k: usize,
    full: Vec<FullTiming>,
    surgery: Vec<SurgeryTiming>,
}

/// The settings to measure: today's path first (unless left out), then each format
/// asked for, with the prefix cache unless it is turned off.
fn settings(args: &Args) -> Vec<Setting> {
    let mut out = Vec::new();
    if !args.no_baseline {
        out.push(Setting::BASELINE);
    }
    let asked = args
        .weights
        .clone()
        .unwrap_or(vec![WeightFormat::Dense, WeightFormat::Q8_0]);
    for weights in asked {
        let s = Setting {
            weights,
            prefix_cache: !args.no_prefix_cache,
        };
        if !out.contains(&s) {
            out.push(s);
        }
    }
    out
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let layers = args
        .decoder_layers
        .unwrap_or(if args.quick { 4 } else { 28 });
    let shape = ModelShape::qwen3_vl_2b().with_decoder_layers(layers);
    let ckpt = args.checkpoint.clone().unwrap_or_else(|| {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("target/bench-checkpoints")
            .join(format!("qwen3-vl-2b-shaped-{layers}-layers"))
    });
    if let Some(what) = &args.rss_probe {
        return probe(&args, &shape, &ckpt, what);
    }
    let items_list = args.items.clone().unwrap_or(if args.quick {
        vec![1, 8]
    } else {
        vec![1, 8, 32]
    });
    let k_list = args.k.clone().unwrap_or(vec![1, 4, 16]);
    let reps = args.reps.unwrap_or(if args.quick { 1 } else { 3 }).max(1);
    if items_list.is_empty() || k_list.is_empty() || items_list.contains(&0) || k_list.contains(&0)
    {
        bail!("--items and --k need positive values");
    }
    let settings = settings(&args);
    let env = Env::from_args(&args)?;
    println!(
        "# model=qwen3-vl-2b-shaped random weights, {:?}, {:?}; decoder_layers={layers} (real: 28); vision_depth=24; image={}x{} ({} merged tokens); reps={reps}; threads={}",
        env.dtype,
        env.device.location(),
        args.image_side,
        args.image_side,
        (args.image_side / 32) * (args.image_side / 32),
        rayon_threads()
    );
    let t = Instant::now();
    if ensure_random_checkpoint(&ckpt, &shape, 2026)? {
        println!(
            "# wrote the checkpoint to {} in {:.1} s",
            ckpt.display(),
            t.elapsed().as_secs_f64()
        );
    }
    let spec = ckpt.to_str().context("checkpoint path is not UTF-8")?;
    // one full model per weight format; each setting's decoder is a clone of its
    // format's (weights shared) with a prefix cache of its own
    let mut fulls: HashMap<WeightFormat, FullModel> = HashMap::new();
    for s in &settings {
        if fulls.contains_key(&s.weights) {
            continue;
        }
        let t = Instant::now();
        let full = FullModel::load_with(spec, env.dtype, &env.device, s.weights)?;
        let wb = full.weight_bytes();
        let q = full.text_model().decoder().quantized_layers();
        println!(
            "# weights={} loaded in {:.1} s: checkpoint decoder {:.0} MiB, vision tower {:.0} MiB; projections held in {:.0} MiB ({} quantized, {} dense)",
            s.weights,
            t.elapsed().as_secs_f64(),
            wb.decoder as f64 / 1048576.0,
            wb.vision as f64 / 1048576.0,
            q.bytes as f64 / 1048576.0,
            q.quantized,
            q.dense
        );
        fulls.insert(s.weights, full);
    }
    let full_of = |s: &Setting| &fulls[&s.weights];
    let models: Vec<TextModel> = settings
        .iter()
        .map(|s| full_of(s).text_model().clone().with_prefix_cache(s.cache()))
        .collect();
    let max_items = items_list.iter().copied().max().unwrap_or(1);
    let images = synthetic_jpegs(max_items, args.image_side, 7)?;
    let items = items_tensor(max_items, args.in_dim, &env)?;
    let text = RequestText::synthetic(shape.special_base(), 1);
    let adapters: BTreeMap<usize, EmbeddingAdapter> = k_list
        .iter()
        .map(|&k| Ok((k, adapter_for(&shape, args.in_dim, k, &env)?)))
        .collect::<anyhow::Result<_>>()?;
    // warm-up: one small request per setting and adapter (a serving process's first
    // request is also the one that caches the shared prefix)
    for m in &models {
        for a in adapters.values() {
            run_surgery(m, a, &items.narrow(0, 0, 1)?, &text)?;
        }
    }
    // the repetitions, settings and paths interleaved
    let mut points: Vec<Point> = Vec::new();
    for &n in &items_list {
        let batch = items.narrow(0, 0, n)?;
        let first = points.len();
        for (si, _) in settings.iter().enumerate() {
            for &k in adapters.keys() {
                points.push(Point {
                    setting: si,
                    items: n,
                    k,
                    full: Vec::new(),
                    surgery: Vec::new(),
                });
            }
        }
        for _ in 0..reps {
            for (si, s) in settings.iter().enumerate() {
                let f = run_full(full_of(s), &models[si], &images[..n], &text)?.0;
                for (&k, a) in &adapters {
                    let t = run_surgery(&models[si], a, &batch, &text)?.0;
                    let p = points[first..]
                        .iter_mut()
                        .find(|p| p.setting == si && p.k == k)
                        .context("point")?;
                    p.full.push(f);
                    p.surgery.push(t);
                }
            }
        }
        eprintln!("# items={n} done");
    }
    drop(models);
    drop(fulls);

    let mut rows = Vec::new();
    let mut full_rss: BTreeMap<(usize, usize), f64> = BTreeMap::new();
    for p in &points {
        let set = settings[p.setting];
        let f = median(p.full.iter().map(|t| ms(t.total())).collect());
        let s = median(p.surgery.iter().map(|t| ms(t.total())).collect());
        // paired with today's path's runs of the same repetition
        let base = points
            .iter()
            .find(|b| settings[b.setting] == Setting::BASELINE && b.items == p.items && b.k == p.k);
        let vs_base = base.map_or(f64::NAN, |b| {
            median(
                b.surgery
                    .iter()
                    .zip(&p.surgery)
                    .map(|(b, t)| b.total().as_secs_f64() / t.total().as_secs_f64())
                    .collect(),
            )
        });
        let (frss, srss) = if args.no_rss {
            (f64::NAN, f64::NAN)
        } else {
            let frss = match full_rss.get(&(p.setting, p.items)) {
                Some(v) => *v,
                None => {
                    let v = child_rss(
                        &ckpt,
                        &args,
                        layers,
                        &format!("full:{}:{}", p.items, set.probe_arg()),
                    )?;
                    full_rss.insert((p.setting, p.items), v);
                    v
                }
            };
            let srss = child_rss(
                &ckpt,
                &args,
                layers,
                &format!("surgery:{}:{}:{}", p.items, p.k, set.probe_arg()),
            )?;
            (frss, srss)
        };
        let fp = median(p.full.iter().map(|t| ms(t.preprocess)).collect());
        let fv = median(p.full.iter().map(|t| ms(t.vision)).collect());
        let fd = median(p.full.iter().map(|t| ms(t.decoder)).collect());
        let sa = median(p.surgery.iter().map(|t| ms(t.adapter)).collect());
        let sd = median(p.surgery.iter().map(|t| ms(t.decoder)).collect());
        println!(
            "{} items={} k={} full_ms={f:.1} surgery_ms={s:.1} speedup={:.1}x surgery_vs_baseline={vs_base:.2}x full_peak_rss_mb={frss:.0} surgery_peak_rss_mb={srss:.0} full_preprocess_ms={fp:.1} full_vision_ms={fv:.1} full_decoder_ms={fd:.1} surgery_adapter_ms={sa:.2} surgery_decoder_ms={sd:.1} decoder_layers={layers}",
            set.label(),
            p.items,
            p.k,
            f / s
        );
        rows.push(Row {
            label: format!("{} N={} K={}", set.weights, p.items, p.k),
            full: f,
            surgery: s,
            encoder: fp + fv,
            full_decoder: fd,
            adapter: sa,
            surgery_decoder: sd,
        });
    }
    if let Some(path) = &args.svg {
        std::fs::write(path, svg(&rows, layers))
            .with_context(|| format!("writing {}", path.display()))?;
        println!("# plot: {}", path.display());
    }
    Ok(())
}

fn rayon_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// One bar pair of the plot (milliseconds).
struct Row {
    label: String,
    full: f64,
    surgery: f64,
    encoder: f64,
    full_decoder: f64,
    adapter: f64,
    surgery_decoder: f64,
}

/// Horizontal bars on a log10 time axis: for each point, the full path (encoder part
/// and decoder part) and the surgery path (adapter + decoder), with the speed-up.
fn svg(rows: &[Row], layers: usize) -> String {
    let bar_h = 14.0;
    let gap = 10.0;
    let left = 120.0;
    let width = 640.0;
    let top = 40.0;
    let max_ms = rows.iter().map(|r| r.full).fold(1.0f64, f64::max);
    let min_ms = rows
        .iter()
        .map(|r| r.surgery)
        .fold(f64::INFINITY, f64::min)
        .max(0.1);
    let lo = min_ms.log10().floor();
    let hi = max_ms.log10().ceil().max(lo + 1.0);
    let x = |v: f64| left + (v.max(10f64.powf(lo)).log10() - lo) / (hi - lo) * width;
    let height = top + rows.len() as f64 * (2.0 * bar_h + gap) + 40.0;
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{height}\" font-family=\"sans-serif\" font-size=\"11\">\n",
        left + width + 80.0
    );
    s += &format!(
        "<text x=\"{left}\" y=\"18\" font-size=\"13\">Request latency, ms (log scale) - Qwen3-VL-2B shapes, {layers} decoder layers, CPU</text>\n"
    );
    let mut e = lo;
    while e <= hi {
        let xv = x(10f64.powf(e));
        s += &format!(
            "<line x1=\"{xv}\" y1=\"{top}\" x2=\"{xv}\" y2=\"{}\" stroke=\"#ddd\"/><text x=\"{xv}\" y=\"{}\" text-anchor=\"middle\">{}</text>\n",
            height - 30.0,
            height - 16.0,
            10f64.powf(e)
        );
        e += 1.0;
    }
    for (i, r) in rows.iter().enumerate() {
        let (f, su, enc, dec, ad, sdec) = (
            r.full,
            r.surgery,
            r.encoder,
            r.full_decoder,
            r.adapter,
            r.surgery_decoder,
        );
        let y = top + i as f64 * (2.0 * bar_h + gap);
        let x0 = x(10f64.powf(lo));
        // full: split at the encoder share of the total (drawn proportionally on the log bar)
        let xf = x(f);
        let split = x0 + (xf - x0) * (enc / (enc + dec).max(1e-9));
        s += &format!(
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>\n",
            left - 6.0,
            y + bar_h + 4.0,
            r.label
        );
        s += &format!(
            "<rect x=\"{x0}\" y=\"{y}\" width=\"{}\" height=\"{bar_h}\" fill=\"#d9534f\"/><rect x=\"{split}\" y=\"{y}\" width=\"{}\" height=\"{bar_h}\" fill=\"#f0ad4e\"/><text x=\"{}\" y=\"{}\">full {f:.0} ms</text>\n",
            split - x0,
            xf - split,
            xf + 4.0,
            y + bar_h - 3.0
        );
        let xs = x(su);
        let split = x0 + (xs - x0) * (ad / (ad + sdec).max(1e-9));
        s += &format!(
            "<rect x=\"{x0}\" y=\"{}\" width=\"{}\" height=\"{bar_h}\" fill=\"#5bc0de\"/><rect x=\"{split}\" y=\"{}\" width=\"{}\" height=\"{bar_h}\" fill=\"#337ab7\"/><text x=\"{}\" y=\"{}\">surgery {su:.0} ms ({:.0}x)</text>\n",
            y + bar_h,
            split - x0,
            y + bar_h,
            xs - split,
            xs + 4.0,
            y + 2.0 * bar_h - 3.0,
            f / su
        );
    }
    s += &format!(
        "<text x=\"{left}\" y=\"{}\"><tspan fill=\"#d9534f\">full: preprocess+vision</tspan>  <tspan fill=\"#f0ad4e\">full: prefill+score</tspan>  <tspan fill=\"#5bc0de\">surgery: adapter</tspan>  <tspan fill=\"#337ab7\">surgery: prefill+score</tspan></text>\n",
        height - 2.0
    );
    s += "</svg>\n";
    s
}
