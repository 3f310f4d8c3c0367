//! Train LightGCN on a dataset in the LightGCN format and evaluate it as the reference
//! code does (full ranking, train items excluded, Recall/NDCG/Precision@K).
//!
//! ```text
//! cargo run --release --example gowalla -- --data ../shared/datasets/gowalla \
//!     [--epochs N --dim 64 --layers 3 --eval-every E --threads T --device cpu|cuda|auto]
//! ```
//! `--device cpu` (the default) trains with the hand-written CPU kernels
//! (`Trainer`); a CUDA device (build with `--features cuda`) trains with
//! `DeviceTrainer`, the same model, sampler and optimiser on the GPU (both behind
//! [`Training`]).
//! Prints one machine-readable line per epoch,
//! `epoch=N loss=... epoch_s=...`, with `recall@20=... ndcg@20=... precision@20=...
//! eval_s=...` appended on evaluation epochs (every E epochs and the last one).
//! `--checkpoint PATH` saves the trainer's whole state every `--checkpoint-every`
//! epochs and at the end; `--resume PATH` continues from such a file exactly where it
//! stopped (the epochs count on from the checkpoint's, up to `--epochs`), on the CPU or
//! on a GPU whichever wrote it: a long schedule can run in pieces and change device.
//! `--average-from E` also evaluates the mean of the ego tables after each epoch from E
//! on (weight averaging), printed as `avg_recall@20=...` beside the current model's.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use mosaic::taste_graph::model::{Init, RateSwitch};
use mosaic::taste_graph::{Dataset, DeviceSpec, LightGcn, LightGcnConfig, Training, evaluate};

#[derive(Parser)]
#[command(about = "LightGCN on a LightGCN-format dataset (train.txt / test.txt)")]
struct Args {
    /// Directory with train.txt and test.txt.
    #[arg(long, default_value = "../shared/datasets/gowalla")]
    data: PathBuf,
    /// Training epochs.
    #[arg(long, default_value_t = 1000)]
    epochs: usize,
    /// Embedding width.
    #[arg(long, default_value_t = 64)]
    dim: usize,
    /// Propagation layers.
    #[arg(long, default_value_t = 3)]
    layers: usize,
    /// Evaluate every E epochs (0: only after the last).
    #[arg(long, default_value_t = 10)]
    eval_every: usize,
    /// Worker threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Triples per batch.
    #[arg(long, default_value_t = 2048)]
    batch: usize,
    /// Adam learning rate.
    #[arg(long, default_value_t = 1e-3)]
    lr: f32,
    /// L2 weight on the batch's ego embeddings.
    #[arg(long, default_value_t = 1e-4)]
    decay: f32,
    /// Cut-off K of the metrics.
    #[arg(long, default_value_t = 20)]
    topk: usize,
    /// Seed of initialisation and sampling.
    #[arg(long, default_value_t = 2020)]
    seed: u64,
    /// Initialisation: normal (std 0.1, the PyTorch reference's) or xavier (uniform
    /// Glorot per table, the paper's TensorFlow code's).
    #[arg(long, value_enum, default_value_t = InitArg::Normal)]
    init: InitArg,
    /// Where to train: cpu (hand-written kernels), cuda[:N], or auto.
    #[arg(long, default_value = "cpu")]
    device: DeviceSpec,
    /// No progress bar (for logs).
    #[arg(long)]
    quiet: bool,
    /// Learning-rate (and batch) schedule: `EPOCH:LR[:BATCH],...` switches to rate LR
    /// (and batch size BATCH) from epoch EPOCH on, e.g. `61:4e-3,121:1e-3` (Adam's
    /// moments are kept across switches).
    #[arg(long, value_delimiter = ',')]
    schedule: Vec<RateSwitch>,
    /// Save the trainer's state (CPU or device) to this file every `--checkpoint-every`
    /// epochs and after the last.
    #[arg(long)]
    checkpoint: Option<PathBuf>,
    /// Epochs between checkpoints.
    #[arg(long, default_value_t = 10)]
    checkpoint_every: usize,
    /// Continue from a checkpoint (written on the CPU or a device; trains on --device):
    /// the model, optimiser, sampler, rate and batch come from the file (--dim,
    /// --layers, --batch, --lr, --decay, --seed and --init are not used); --schedule
    /// entries after the checkpoint's epoch still apply.
    #[arg(long)]
    resume: Option<PathBuf>,
    /// From this epoch on, also keep the running mean of the ego tables after each
    /// epoch (Polyak / stochastic weight averaging) and evaluate it beside the
    /// current model (`avg_recall@K=...` on evaluation epochs). The mean is not in the
    /// checkpoints: a resumed run starts a new one.
    #[arg(long)]
    average_from: Option<usize>,
}

/// `--init` values.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum InitArg {
    /// normal(0, 0.1).
    Normal,
    /// Xavier uniform.
    Xavier,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .context("building the thread pool")?;
    let selection = args.device.select()?;
    let t = Instant::now();
    let data = Dataset::load_lightgcn(&args.data)?;
    println!(
        "data={} users={} items={} train={} test={} threads={threads} device=\"{}\" load_s={:.2}",
        args.data.display(),
        data.n_users(),
        data.n_items(),
        data.train.n_edges(),
        data.test.n_edges(),
        selection.reason(),
        t.elapsed().as_secs_f64()
    );
    let config = LightGcnConfig::new()
        .dim(args.dim)
        .layers(args.layers)
        .batch_size(args.batch)
        .lr(args.lr)
        .decay(args.decay)
        .init(match args.init {
            InitArg::Normal => Init::Normal,
            InitArg::Xavier => Init::XavierUniform,
        })
        .seed(args.seed);
    pool.install(|| -> anyhow::Result<()> {
        let mut trainer = if let Some(path) = &args.resume {
            let t = Training::resume(&data.train, path, &selection)
                .with_context(|| format!("resuming from {}", path.display()))?;
            println!("resumed from={} epoch={}", path.display(), t.epochs());
            t
        } else {
            Training::new(&data.train, &config, &selection)?
        };
        let bar = if args.quiet {
            ProgressBar::hidden()
        } else {
            ProgressBar::new(0)
        };
        bar.set_style(
            ProgressStyle::with_template(
                "epoch {msg} [{bar:30}] {pos}/{len} batches {per_sec} eta {eta}",
            )?
            .progress_chars("=> "),
        );
        let start = Instant::now();
        let first = trainer.epochs() + 1;
        let mut average: Option<(Vec<f64>, usize)> = None;
        for epoch in first..=args.epochs {
            for switch in args.schedule.iter().filter(|s| s.epoch == epoch) {
                trainer.apply_switch(switch)?;
                bar.suspend(|| {
                    println!(
                        "schedule epoch={epoch} lr={} batch={}",
                        switch.lr,
                        switch
                            .batch
                            .map_or("unchanged".to_string(), |b| b.to_string())
                    )
                });
            }
            bar.set_message(epoch.to_string());
            bar.set_position(0);
            let stats = trainer.train_epoch(|done, total| {
                bar.set_length(total as u64);
                bar.set_position(done as u64);
            })?;
            let mut line = format!(
                "epoch={epoch} loss={:.6} epoch_s={:.3}",
                stats.loss, stats.seconds
            );
            let eval_now = epoch == args.epochs
                || (args.eval_every > 0 && epoch.is_multiple_of(args.eval_every));
            if args.average_from.is_some_and(|from| epoch >= from) {
                let ego = trainer.model()?.ego_table();
                let (sum, n) = average.get_or_insert_with(|| (vec![0f64; ego.len()], 0));
                for (s, &e) in sum.iter_mut().zip(&ego) {
                    *s += f64::from(e);
                }
                *n += 1;
            }
            if eval_now {
                let t = Instant::now();
                let model = trainer.model()?;
                let emb = if selection.is_cuda() {
                    model.propagate_on(selection.device())?
                } else {
                    model.propagate()?
                };
                let m = evaluate(
                    emb.users(),
                    emb.items(),
                    emb.dim(),
                    &data.train,
                    &data.test,
                    &[args.topk],
                )?;
                let k = args.topk;
                line += &format!(
                    " recall@{k}={:.4} ndcg@{k}={:.4} precision@{k}={:.4} eval_s={:.2}",
                    m[0].recall,
                    m[0].ndcg,
                    m[0].precision,
                    t.elapsed().as_secs_f64()
                );
                if let Some((sum, n)) = &average {
                    let mean: Vec<f32> = sum.iter().map(|&s| (s / *n as f64) as f32).collect();
                    let cfg = trainer.config();
                    let avg = LightGcn::from_embeddings(&data.train, cfg.layers, cfg.dim, mean)?
                        .propagate()?;
                    let m = evaluate(
                        avg.users(),
                        avg.items(),
                        avg.dim(),
                        &data.train,
                        &data.test,
                        &[args.topk],
                    )?;
                    line += &format!(
                        " avg_epochs={n} avg_recall@{k}={:.4} avg_ndcg@{k}={:.4} avg_precision@{k}={:.4}",
                        m[0].recall, m[0].ndcg, m[0].precision
                    );
                }
            }
            bar.suspend(|| println!("{line}"));
            if let Some(path) = &args.checkpoint
                && (epoch == args.epochs
                    || (args.checkpoint_every > 0 && epoch.is_multiple_of(args.checkpoint_every)))
            {
                trainer
                    .save_checkpoint(path, &data.train)
                    .with_context(|| format!("saving {}", path.display()))?;
            }
        }
        bar.finish_and_clear();
        println!("total_s={:.1}", start.elapsed().as_secs_f64());
        Ok(())
    })
}
