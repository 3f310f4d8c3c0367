//! The flags every example that loads a Qwen3-VL checkpoint takes: `--model` (a directory
//! or a hub id, fetched through the hub client with progress bars), `--revision`,
//! `--device`, `--dtype` and `--weights`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use anyhow::{Context, bail};
use candle_core::DType;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use mosaic::vision_surgery::{
    DeviceSpec, DownloadProgress, LoadOptions, ModelSource, ProgressFn, WeightFormat,
};

/// The committed tiny random-weight checkpoint.
pub const TINY_MODEL: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/crates/vision-surgery/tests/fixtures/tiny-s0/model"
);

/// Which checkpoint, where, and in what precision.
#[derive(clap::Args, Debug, Clone)]
pub struct ModelArgs {
    /// Checkpoint directory, or hub id `org/name[@revision]` (HF_ENDPOINT, HF_HOME and
    /// HF_HUB_OFFLINE are honoured).
    #[arg(long, default_value = TINY_MODEL)]
    pub model: String,
    /// Hub revision to pin (branch, tag or commit hash); overrides an `@revision`.
    #[arg(long)]
    pub revision: Option<String>,
    /// Device: cpu, cuda[:N] or auto (the `cuda` feature is needed for CUDA).
    #[arg(long, default_value = "cpu")]
    pub device: DeviceSpec,
    /// Compute dtype: auto (the checkpoint's, bf16 for the releases, where the device
    /// runs it), f32, bf16 or f16.
    #[arg(long, default_value = "auto")]
    pub dtype: String,
    /// Decoder weights: dense (as loaded), or quantized at load time to q8_0, q6_k,
    /// q4_k or q4_0 (the CPU serving formats; see docs/vision-surgery.md).
    #[arg(long, default_value = "dense")]
    pub weights: WeightFormat,
}

impl ModelArgs {
    /// `--model` with `--revision` applied.
    pub fn spec(&self) -> anyhow::Result<String> {
        let Some(rev) = &self.revision else {
            return Ok(self.model.clone());
        };
        match ModelSource::parse(&self.model) {
            ModelSource::Hub { repo, .. } => Ok(format!("{repo}@{rev}")),
            ModelSource::Dir(d) => bail!(
                "--revision pins a hub revision, but --model {} is a directory",
                d.display()
            ),
        }
    }

    /// The dtype asked for; `None` for auto.
    pub fn dtype(&self) -> anyhow::Result<Option<DType>> {
        parse_dtype(&self.dtype)
    }

    /// Load options: the device selected, the dtype, download progress bars on stderr.
    pub fn load_options(&self) -> anyhow::Result<LoadOptions> {
        let device = self
            .device
            .select()
            .context("selecting --device")?
            .into_device();
        let mut opts = LoadOptions::default()
            .device(device)
            .progress(progress_bars())
            .weights(self.weights);
        opts.dtype = self.dtype()?;
        Ok(opts)
    }
}

/// A `--dtype` value: `None` for auto (the checkpoint's where the device runs it).
pub fn parse_dtype(s: &str) -> anyhow::Result<Option<DType>> {
    Ok(match s {
        "auto" => None,
        "f32" | "float32" => Some(DType::F32),
        "bf16" | "bfloat16" => Some(DType::BF16),
        "f16" | "float16" => Some(DType::F16),
        other => bail!("dtype {other:?}: expected auto, f32, bf16 or f16"),
    })
}

/// A progress bar per downloaded file.
pub fn progress_bars() -> ProgressFn {
    let bars = MultiProgress::new();
    let open: Mutex<HashMap<String, ProgressBar>> = Mutex::new(HashMap::new());
    Arc::new(move |p: &DownloadProgress<'_>| {
        let Ok(mut open) = open.lock() else { return };
        let bar = open.entry(p.file.to_string()).or_insert_with(|| {
            let b = bars.add(ProgressBar::new(p.total));
            if let Ok(style) = ProgressStyle::with_template(
                "{msg:40} {bytes:>10}/{total_bytes:10} {bytes_per_sec:>12} {wide_bar}",
            ) {
                b.set_style(style);
            }
            b.set_message(p.file.to_string());
            b
        });
        bar.set_length(p.total);
        bar.set_position(p.done);
        if p.done >= p.total {
            bar.finish();
        }
    })
}
