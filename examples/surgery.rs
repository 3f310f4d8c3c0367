//! Remove the vision tower from a Qwen3-VL checkpoint and write a text-only copy.
//!
//! ```text
//! cargo run --example surgery -- --model <hf-id-or-dir> [--revision <commit>] --out <dir>
//! ```
//! With no `--model`, the committed tiny random-weight checkpoint is used, so this runs
//! offline. A hub id is resolved to a commit; only config.json, the shard index, the
//! tokenizer and side files and the shards holding decoder tensors are downloaded
//! (progress bars on stderr). Prints what was removed (tensors, parameters, bytes, the
//! bytes never downloaded, the commit) and what was written.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::Parser;
use mosaic::vision_surgery::{SaveOptions, SurgeredModel};

#[path = "common/model_args.rs"]
mod model_args;
use model_args::ModelArgs;

#[derive(Parser)]
#[command(about = "Qwen3-VL surgery: drop the vision tower, keep the decoder")]
struct Args {
    #[command(flatten)]
    model: ModelArgs,
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
    let mut opts = args.model.load_options()?;
    if let Some(a) = &args.adapter {
        opts = opts.adapter(a);
    }
    let spec = args.model.spec()?;
    let model = SurgeredModel::load(&spec, &opts).with_context(|| format!("loading {spec}"))?;
    let load_s = t0.elapsed().as_secs_f64();
    println!("model: {spec} ({:?})", model.dtype());
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
