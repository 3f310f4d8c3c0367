//! Train an embedding-to-token adapter with the Qwen3-VL decoder frozen.
//!
//! ```text
//! cargo run --release --example train_adapter -- --model <dir> --pairs <file.jsonl> --out adapter.safetensors
//! ```
//! `--pairs` is JSON Lines, one item per line: its embedding inline (`"embedding": [...]`)
//! or as a row of `--embeddings items.npy` (`"row": 17`), plus a target `"text"` (next-token
//! objective) and/or an `"image"` path (distillation toward the vision tower's tokens for
//! that image, pooled to the adapter's K tokens; needs a checkpoint that still has its
//! vision tower). The adapter and its optimiser state are checkpointed every
//! `--checkpoint-every` steps; `--resume` continues a run from them exactly. Each step's
//! losses go to `--log` (CSV) and a progress bar.
//!
//! With no flag it trains on a generated demo: the committed tiny random-weight checkpoint
//! and six items with short target words, written under `target/train-adapter-demo/`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};
use candle_core::{DType, Device, Tensor};
use clap::{Parser, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use mosaic::vision_surgery::full::FullModel;
use mosaic::vision_surgery::image_processor::ImageProcessor;
use mosaic::vision_surgery::train::{
    AdapterTrainer, DistillLoss, Teacher, TrainExample, TrainOptions, load_pairs,
};
use mosaic::vision_surgery::{
    Activation, AdapterSpec, DeviceSpec, EmbeddingAdapter, GenerateOptions, LoadOptions, Prompt,
    SurgeredModel,
};

#[path = "common/model_args.rs"]
#[allow(dead_code)] // training takes --model/--device/--dtype of its own
mod model_args;

#[derive(Clone, Copy, ValueEnum)]
enum Arch {
    Linear,
    Mlp,
}

#[derive(Clone, Copy, ValueEnum)]
enum Distance {
    Mse,
    Cosine,
}

#[derive(Parser)]
#[command(about = "Train an embedding-to-token adapter against a frozen Qwen3-VL decoder")]
struct Args {
    /// Checkpoint directory or Hugging Face id (with its vision tower for image distillation).
    #[arg(long)]
    model: Option<String>,
    /// Training pairs, JSON Lines.
    #[arg(long)]
    pairs: Option<PathBuf>,
    /// (N, in_dim) .npy that `"row"` entries index.
    #[arg(long)]
    embeddings: Option<PathBuf>,
    /// Where the adapter goes (its optimiser state goes beside it as *.trainer.safetensors).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Continue the run checkpointed at --out.
    #[arg(long)]
    resume: bool,
    /// Soft tokens per item (K).
    #[arg(long, default_value_t = 4)]
    tokens: usize,
    /// Adapter shape.
    #[arg(long, value_enum, default_value_t = Arch::Mlp)]
    arch: Arch,
    /// Hidden width of the MLP adapter.
    #[arg(long, default_value_t = 1024)]
    mlp_hidden: usize,
    /// DeepStack layers the adapter feeds (at most the checkpoint's).
    #[arg(long, default_value_t = 0)]
    deepstack: usize,
    /// The user turn; `<item>` marks where the item goes.
    #[arg(long, default_value = "<item>Describe this item.")]
    prompt: String,
    /// Passes over the pairs.
    #[arg(long, default_value_t = 10)]
    epochs: usize,
    /// Items per step.
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    /// AdamW learning rate.
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    /// AdamW weight decay.
    #[arg(long, default_value_t = 0.0)]
    weight_decay: f64,
    /// Clip the global gradient norm (0 = off).
    #[arg(long, default_value_t = 1.0)]
    clip: f64,
    /// Shuffle and init seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Weight of the next-token loss.
    #[arg(long, default_value_t = 1.0)]
    next_token_weight: f64,
    /// Weight of the distillation loss.
    #[arg(long, default_value_t = 1.0)]
    distill_weight: f64,
    /// Distillation distance.
    #[arg(long, value_enum, default_value_t = Distance::Mse)]
    distill_loss: Distance,
    /// Checkpoint every this many steps.
    #[arg(long, default_value_t = 100)]
    checkpoint_every: usize,
    /// Loss log (CSV); defaults to <out>.log.csv.
    #[arg(long)]
    log: Option<PathBuf>,
    /// Device of the frozen decoder, the teacher and the adapter: cpu, cuda[:N] or auto.
    #[arg(long, default_value = "cpu")]
    device: DeviceSpec,
    /// Compute dtype of the frozen decoder and teacher: f32 (the default, as training
    /// runs), bf16, f16 or auto (the checkpoint's). The adapter itself trains in f32.
    #[arg(long, default_value = "f32")]
    dtype: String,
}

const FIXTURE_MODEL: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/crates/vision-surgery/tests/fixtures/tiny-s0/model"
);

/// The no-flag demo: the tiny checkpoint with a sharper output head (see tests/train.rs:
/// a random head at std 0.02 cannot make any distribution sharp) and six items.
fn demo(args: &mut Args) -> anyhow::Result<Vec<(Vec<f32>, String)>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/train-adapter-demo");
    let model = dir.join("model");
    std::fs::create_dir_all(&model)?;
    for f in ["config.json", "tokenizer.json", "generation_config.json"] {
        std::fs::copy(Path::new(FIXTURE_MODEL).join(f), model.join(f))?;
    }
    let mut tensors = candle_core::safetensors::load(
        Path::new(FIXTURE_MODEL).join("model.safetensors"),
        &Device::Cpu,
    )?;
    if let Some(head) = tensors.get_mut("lm_head.weight") {
        *head = (&*head * 5.0)?;
    }
    candle_core::safetensors::save(&tensors, model.join("model.safetensors"))?;
    let words = ["red", "lamp", "oak", "sofa", "vase", "rug"];
    let mut lines = String::new();
    let mut items = Vec::new();
    for (i, w) in words.iter().enumerate() {
        let e: Vec<f32> = (0..16)
            .map(|j| ((((i * 31 + j * 17 + 5) * 2654435761) % 2000) as f32 / 1000.0) - 1.0)
            .collect();
        lines.push_str(&serde_json::json!({"embedding": e, "text": w}).to_string());
        lines.push('\n');
        items.push((e, w.to_string()));
    }
    let pairs = dir.join("pairs.jsonl");
    std::fs::write(&pairs, lines)?;
    args.model = Some(model.to_string_lossy().into_owned());
    args.pairs = Some(pairs);
    args.out = Some(dir.join("adapter.safetensors"));
    args.mlp_hidden = 64;
    args.deepstack = 2;
    args.epochs = 100;
    args.batch_size = 3;
    args.lr = 3e-2;
    args.seed = 5;
    args.resume = false;
    Ok(items)
}

fn main() -> anyhow::Result<()> {
    let mut args = Args::parse();
    let demo_items = if args.model.is_none() && args.pairs.is_none() {
        println!(
            "no --model/--pairs: training the built-in demo (tiny random checkpoint, six items)"
        );
        Some(demo(&mut args)?)
    } else {
        None
    };
    let (Some(model_spec), Some(pairs_path), Some(out)) =
        (args.model.clone(), args.pairs.clone(), args.out.clone())
    else {
        bail!("--model, --pairs and --out go together");
    };
    let device = args.device.select()?.into_device();
    let dtype = model_args::parse_dtype(&args.dtype)?;
    let records = load_pairs(&pairs_path, args.embeddings.as_deref())?;
    let in_dim = records[0].embedding.len();
    let mut load = LoadOptions::default()
        .device(device.clone())
        .progress(model_args::progress_bars());
    load.dtype = dtype;
    let mut model =
        SurgeredModel::load(&model_spec, &load).with_context(|| format!("loading {model_spec}"))?;
    let hidden = model.config().text.hidden_size;
    let spec = match args.arch {
        Arch::Linear => AdapterSpec::linear(in_dim, args.tokens, hidden),
        Arch::Mlp => AdapterSpec::mlp(
            in_dim,
            args.mlp_hidden,
            Activation::Gelu,
            args.tokens,
            hidden,
        ),
    }
    .with_deepstack(args.deepstack);

    // distillation targets: the vision tower's tokens for each image, pooled to K
    let mut teachers: Vec<Option<Teacher>> = vec![None; records.len()];
    if records.iter().any(|r| r.image.is_some()) && args.distill_weight > 0.0 {
        let t0 = Instant::now();
        let full = FullModel::load(&model_spec, model.dtype(), &device)
            .context("image distillation needs the checkpoint's vision tower")?;
        let bar = ProgressBar::new(records.len() as u64);
        bar.set_message("encoding teacher images");
        for (i, r) in records.iter().enumerate() {
            if let Some(p) = &r.image {
                let img = ImageProcessor::open(p)?;
                let (tokens, mut deepstack) = full.pooled_tokens(&img, spec.grid)?;
                deepstack.truncate(spec.deepstack_layers);
                teachers[i] = Some(Teacher { tokens, deepstack });
            }
            bar.inc(1);
        }
        bar.finish_and_clear();
        println!(
            "teacher tokens for {} images in {:.1} s",
            teachers.iter().flatten().count(),
            t0.elapsed().as_secs_f64()
        );
    }
    let examples: Vec<TrainExample> = records
        .iter()
        .zip(teachers)
        .map(|(r, teacher)| TrainExample {
            embedding: r.embedding.clone(),
            target: r.text.clone(),
            teacher,
        })
        .collect();

    let opts = TrainOptions::new()
        .prompt(Prompt::user(args.prompt.clone()))
        .batch_size(args.batch_size)
        .epochs(args.epochs)
        .learning_rate(args.lr)
        .weight_decay(args.weight_decay)
        .max_grad_norm((args.clip > 0.0).then_some(args.clip))
        .seed(args.seed)
        .weights(args.next_token_weight, args.distill_weight)
        .distill_loss(match args.distill_loss {
            Distance::Mse => DistillLoss::Mse,
            Distance::Cosine => DistillLoss::Cosine,
        })
        .checkpoint(&out, args.checkpoint_every);
    let log_path = args
        .log
        .clone()
        .unwrap_or_else(|| out.with_extension("log.csv"));
    let trained = {
        let mut trainer = if args.resume {
            AdapterTrainer::resume(&model, &out, opts)?
        } else {
            let init = EmbeddingAdapter::init(spec, args.seed, DType::F32, &device)?;
            AdapterTrainer::new(&model, init, opts)?
        };
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(args.resume)
            .write(true)
            .truncate(!args.resume)
            .open(&log_path)
            .with_context(|| format!("opening {}", log_path.display()))?;
        if !args.resume {
            writeln!(log, "step,epoch,loss,next_token,distill,grad_norm,seconds")?;
        }
        let per_epoch = examples.len().div_ceil(args.batch_size) as u64;
        let bar = ProgressBar::new(per_epoch * args.epochs as u64);
        bar.set_style(
            ProgressStyle::with_template(
                "{bar:40} {pos}/{len} steps {elapsed_precise} eta {eta} {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.set_position(trainer.steps());
        let t0 = Instant::now();
        let mut io_error = None;
        let history = trainer.fit(&examples, |s| {
            let opt = |v: Option<f32>| v.map_or(String::new(), |x| format!("{x:.6}"));
            if let Err(e) = writeln!(
                log,
                "{},{},{:.6},{},{},{:.6},{:.3}",
                s.step,
                s.epoch,
                s.loss,
                opt(s.next_token),
                opt(s.distill),
                s.grad_norm,
                t0.elapsed().as_secs_f64()
            ) {
                io_error.get_or_insert(e);
            }
            bar.set_position(s.step);
            bar.set_message(format!("epoch {} loss {:.4}", s.epoch, s.loss));
        })?;
        bar.finish_and_clear();
        if let Some(e) = io_error {
            return Err(e).context("writing the loss log");
        }
        if let (Some(first), Some(last)) = (history.first(), history.last()) {
            println!(
                "steps={} first_loss={:.4} last_loss={:.4} seconds={:.1} out={} log={}",
                last.step,
                first.loss,
                last.loss,
                t0.elapsed().as_secs_f64(),
                out.display(),
                log_path.display()
            );
        } else {
            println!(
                "nothing to do: the checkpoint already finished {} epochs",
                args.epochs
            );
        }
        trainer.adapter()?
    };

    if let Some(items) = demo_items {
        model.attach_adapter(trained)?;
        let prompt = Prompt::user(args.prompt.clone());
        let mut right = 0;
        for (e, want) in &items {
            let item = Tensor::from_vec(e.clone(), (1, e.len()), &device)?;
            let g = model.generate(
                &prompt,
                Some(&item),
                &GenerateOptions::new().max_tokens(16).greedy(),
                |_| {},
            )?;
            right += usize::from(g.text == *want);
            println!("target={want:?} greedy={:?}", g.text);
        }
        println!("reproduced={right}/{}", items.len());
    }
    Ok(())
}
