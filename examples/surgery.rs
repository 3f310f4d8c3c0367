//! Remove the vision tower from a Qwen3-VL checkpoint and write a text-only copy.
//!
//! ```text
//! cargo run --example surgery -- --model <hf-id-or-dir> --out <dir>
//! ```
//! With no `--model`, the committed tiny random-weight checkpoint is used, so this runs
//! offline. Prints what was removed (tensors, parameters, bytes) and what was written.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::Parser;
use mosaic::vision_surgery::{LoadOptions, SaveOptions, SurgeredModel};

#[derive(Parser)]
#[command(about = "Qwen3-VL surgery: drop the vision tower, keep the decoder")]
struct Args {
    /// Hugging Face model id (`org/name[@revision]`) or local checkpoint directory.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/crates/vision-surgery/tests/fixtures/tiny-s0/model"))]
    model: String,
    /// Output directory for the surgered checkpoint.
    #[arg(long, default_value = "target/surgered")]
    out: PathBuf,
    /// Adapter to ship inside the surgered checkpoint.
    #[arg(long)]
    adapter: Option<PathBuf>,
    /// Largest weight shard, in MiB.
    #[arg(long, default_value_t = 4096)]
    max_shard_mib: u64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let t0 = Instant::now();
    let mut opts = LoadOptions::default();
    if let Some(a) = &args.adapter {
        opts = opts.adapter(a);
    }
    let model = SurgeredModel::load(&args.model, &opts)
        .with_context(|| format!("loading {}", args.model))?;
    let load_s = t0.elapsed().as_secs_f64();
    println!("model: {}", args.model);
    println!("{}", model.surgery_report());
    let t1 = Instant::now();
    let saved = model.save_surgered(
        &args.out,
        &SaveOptions {
            max_shard_bytes: args.max_shard_mib << 20,
        },
    )?;
    println!(
        "wrote {}: {} tensors, {} bytes in {} file(s){}",
        saved.dir.display(),
        saved.tensors,
        saved.bytes,
        saved.shards.len(),
        if model.adapter().is_some() {
            " + adapter.safetensors"
        } else {
            ""
        }
    );
    println!("load {load_s:.2}s, save {:.2}s", t1.elapsed().as_secs_f64());
    Ok(())
}
