//! The serve example's settings: flags, a TOML file (`--config`, keys as the flags with
//! `_`), then the defaults, in that order of precedence; unknown keys are refused.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Parser;
use serde::Deserialize;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object a line (for a log pipeline).
    Json,
}

/// Every setting, each optional: given by a flag, by the `--config` file, or defaulted.
#[derive(Debug, Clone, Default, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct Overrides {
    /// Address to listen on (port 0: any free port, printed at start) [default: 127.0.0.1:7878].
    #[arg(long)]
    pub addr: Option<SocketAddr>,
    /// Directory of the store, the saved state and the feedback log [default: target/mosaic-serve].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Items of the built-in catalogue when nothing is saved yet (16 styles) [default: 4000].
    #[arg(long)]
    pub catalogue_items: Option<usize>,
    /// Training epochs when nothing is saved yet [default: 40].
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Worker threads answering recommendations [default: the machine's cores].
    #[arg(long)]
    pub workers: Option<usize>,
    /// Requests waiting for a worker before the service answers 503 [default: 256].
    #[arg(long)]
    pub queue: Option<usize>,
    /// Deadline of every request, in milliseconds [default: 1000].
    #[arg(long)]
    pub deadline_ms: Option<u64>,
    /// Refit in the background after this many events, 0: never [default: 20000].
    #[arg(long)]
    pub refit_after_events: Option<u64>,
    /// Checkpoint after this many events [default: 10000].
    #[arg(long)]
    pub checkpoint_after_events: Option<u64>,
    /// Log lines as text or JSON (filter: RUST_LOG, default info) [default: text].
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormat>,
    /// The surgered checkpoint /v1/rescore runs (a directory with config.json,
    /// model.safetensors, tokenizer.json) [default: the committed tiny random-weight one].
    #[arg(long)]
    pub rescore_model: Option<PathBuf>,
    /// Its embedding-to-token adapter (safetensors) [default: the tiny checkpoint's].
    #[arg(long)]
    pub rescore_adapter: Option<PathBuf>,
    /// Device of the rescoring model: cpu, cuda[:N] or auto [default: cpu].
    #[arg(long)]
    pub rescore_device: Option<String>,
    /// Its compute dtype: auto (the checkpoint's where the device runs it), f32, bf16
    /// or f16 [default: auto].
    #[arg(long)]
    pub rescore_dtype: Option<String>,
    /// Its decoder weights: dense, or quantized at load time to q8_0, q6_k, q4_k or
    /// q4_0 [default: dense].
    #[arg(long)]
    pub rescore_weights: Option<String>,
    /// How long a rescoring request waits for others to share its prefill, in
    /// milliseconds [default: 2].
    #[arg(long)]
    pub rescore_wait_ms: Option<u64>,
    /// Keep the served generation in this Redis Cluster too (seed nodes,
    /// comma-separated `redis://host:port`) [default: none].
    #[arg(long)]
    pub redis: Option<String>,
    /// Key namespace in the Redis Cluster [default: mosaic].
    #[arg(long)]
    pub redis_namespace: Option<String>,
    /// Redis connect and response timeout, in milliseconds [default: 500].
    #[arg(long)]
    pub redis_timeout_ms: Option<u64>,
    /// How often to take the items other processes added to the Redis Cluster, in
    /// milliseconds (0: only at start; each is a scan of the generation's ids) [default: 10000].
    #[arg(long)]
    pub redis_follow_ms: Option<u64>,
}

/// The command line.
#[derive(Debug, Parser)]
#[command(about = "Mosaic's reference HTTP service")]
pub struct Cli {
    /// A TOML file of settings (keys as the flags, with `_`); flags override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// The settings given as flags.
    #[command(flatten)]
    pub set: Overrides,
}

/// The settings in force.
#[derive(Debug, Clone)]
pub struct Settings {
    /// See [`Overrides::addr`].
    pub addr: SocketAddr,
    /// See [`Overrides::data_dir`].
    pub data_dir: PathBuf,
    /// See [`Overrides::catalogue_items`].
    pub catalogue_items: usize,
    /// See [`Overrides::epochs`].
    pub epochs: usize,
    /// See [`Overrides::workers`].
    pub workers: usize,
    /// See [`Overrides::queue`].
    pub queue: usize,
    /// See [`Overrides::deadline_ms`].
    pub deadline_ms: u64,
    /// See [`Overrides::refit_after_events`].
    pub refit_after_events: u64,
    /// See [`Overrides::checkpoint_after_events`].
    pub checkpoint_after_events: u64,
    /// See [`Overrides::log_format`].
    pub log_format: LogFormat,
    /// See [`Overrides::rescore_model`].
    pub rescore_model: PathBuf,
    /// See [`Overrides::rescore_adapter`].
    pub rescore_adapter: PathBuf,
    /// See [`Overrides::rescore_device`].
    pub rescore_device: String,
    /// See [`Overrides::rescore_dtype`].
    pub rescore_dtype: String,
    /// See [`Overrides::rescore_weights`].
    pub rescore_weights: String,
    /// See [`Overrides::rescore_wait_ms`].
    pub rescore_wait_ms: u64,
    /// See [`Overrides::redis`] (split at commas).
    pub redis: Vec<String>,
    /// See [`Overrides::redis_namespace`].
    pub redis_namespace: String,
    /// See [`Overrides::redis_timeout_ms`].
    pub redis_timeout_ms: u64,
    /// See [`Overrides::redis_follow_ms`].
    pub redis_follow_ms: u64,
}

/// The settings of `path` (TOML), unknown keys refused.
fn read_file(path: &Path) -> anyhow::Result<Overrides> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("{}", path.display()))
}

impl Settings {
    /// Flags over the `--config` file over the defaults.
    pub fn resolve(cli: Cli) -> anyhow::Result<Settings> {
        let file = match &cli.config {
            Some(p) => read_file(p)?,
            None => Overrides::default(),
        };
        let f = cli.set;
        let cores = std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get);
        let s = Settings {
            addr: f
                .addr
                .or(file.addr)
                .unwrap_or(([127, 0, 0, 1], 7878).into()),
            data_dir: f
                .data_dir
                .or(file.data_dir)
                .unwrap_or_else(|| "target/mosaic-serve".into()),
            catalogue_items: f.catalogue_items.or(file.catalogue_items).unwrap_or(4000),
            epochs: f.epochs.or(file.epochs).unwrap_or(40),
            workers: f.workers.or(file.workers).unwrap_or(cores),
            queue: f.queue.or(file.queue).unwrap_or(256),
            deadline_ms: f.deadline_ms.or(file.deadline_ms).unwrap_or(1000),
            refit_after_events: f
                .refit_after_events
                .or(file.refit_after_events)
                .unwrap_or(20_000),
            checkpoint_after_events: f
                .checkpoint_after_events
                .or(file.checkpoint_after_events)
                .unwrap_or(10_000),
            log_format: f.log_format.or(file.log_format).unwrap_or(LogFormat::Text),
            rescore_model: f
                .rescore_model
                .or(file.rescore_model)
                .unwrap_or_else(|| crate::tiny::fixtures().join("tiny-s0/model")),
            rescore_adapter: f
                .rescore_adapter
                .or(file.rescore_adapter)
                .unwrap_or_else(|| {
                    crate::tiny::fixtures().join("adapter-torch/adapter.safetensors")
                }),
            rescore_device: f
                .rescore_device
                .or(file.rescore_device)
                .unwrap_or_else(|| "cpu".into()),
            rescore_dtype: f
                .rescore_dtype
                .or(file.rescore_dtype)
                .unwrap_or_else(|| "auto".into()),
            rescore_weights: f
                .rescore_weights
                .or(file.rescore_weights)
                .unwrap_or_else(|| "dense".into()),
            rescore_wait_ms: f.rescore_wait_ms.or(file.rescore_wait_ms).unwrap_or(2),
            redis: f
                .redis
                .or(file.redis)
                .map(|r| {
                    r.split(',')
                        .map(str::trim)
                        .filter(|u| !u.is_empty())
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default(),
            redis_namespace: f
                .redis_namespace
                .or(file.redis_namespace)
                .unwrap_or_else(|| "mosaic".into()),
            redis_timeout_ms: f.redis_timeout_ms.or(file.redis_timeout_ms).unwrap_or(500),
            redis_follow_ms: f.redis_follow_ms.or(file.redis_follow_ms).unwrap_or(10_000),
        };
        for (name, v) in [
            ("catalogue_items", s.catalogue_items),
            ("epochs", s.epochs),
            ("workers", s.workers),
            ("queue", s.queue),
        ] {
            anyhow::ensure!(v > 0, "{name} = 0: expected at least 1");
        }
        anyhow::ensure!(
            s.workers <= 1024 && s.queue <= 1 << 20 && s.catalogue_items <= 1 << 26,
            "workers (at most 1024), queue (at most 2^20) or catalogue_items (at most 2^26) past its limit"
        );
        anyhow::ensure!(
            s.deadline_ms > 0,
            "deadline_ms = 0: every request would fail"
        );
        anyhow::ensure!(
            s.redis_timeout_ms > 0,
            "redis_timeout_ms = 0: every Redis call would fail"
        );
        Ok(s)
    }
}
