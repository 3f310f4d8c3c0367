//! Ask the surgered Qwen3-VL about items given as precomputed embeddings; the answer streams.
//!
//! ```text
//! cargo run --example chat -- --model <dir> --adapter <file> --items <file.npy> --prompt "..."
//! ```
//! Every flag has a default pointing at committed files (a tiny random-weight checkpoint,
//! an adapter written from PyTorch, three item embeddings), so it runs offline as is;
//! a random-weight model answers with noise, a real checkpoint and adapter with text.
//! `<item>` in the prompt marks where each item goes (else items come first).

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::Parser;
use mosaic::vision_surgery::{GenerateOptions, LoadOptions, Prompt, SurgeredModel, load_npy_items};

const FIXTURES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/crates/vision-surgery/tests/fixtures"
);

#[derive(Parser)]
#[command(about = "Chat with the surgered Qwen3-VL about precomputed item embeddings")]
struct Args {
    /// Checkpoint directory or Hugging Face id.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/crates/vision-surgery/tests/fixtures/tiny-s0/model"))]
    model: String,
    /// Adapter file (defaults to the committed PyTorch-made one, or the checkpoint's own when --model is given).
    #[arg(long)]
    adapter: Option<PathBuf>,
    /// Item embeddings, (N, in_dim) .npy.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/crates/vision-surgery/tests/fixtures/adapter-torch/items.npy"))]
    items: PathBuf,
    /// The user message; `<item>` marks each item.
    #[arg(
        long,
        default_value = "What do <item>, <item> and <item> have in common?"
    )]
    prompt: String,
    /// Optional system message.
    #[arg(long)]
    system: Option<String>,
    /// Most tokens to generate.
    #[arg(long, default_value_t = 48)]
    max_tokens: usize,
    /// Sampling temperature (0 = greedy).
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// Top-k filter when sampling.
    #[arg(long)]
    top_k: Option<usize>,
    /// Top-p filter when sampling.
    #[arg(long)]
    top_p: Option<f32>,
    /// Sampling seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let default_model = args.model.starts_with(FIXTURES);
    let adapter = match (&args.adapter, default_model) {
        (Some(a), _) => Some(a.clone()),
        (None, true) => Some(PathBuf::from(FIXTURES).join("adapter-torch/adapter.safetensors")),
        (None, false) => None,
    };
    let mut opts = LoadOptions::default();
    if let Some(a) = &adapter {
        opts = opts.adapter(a);
    }
    let model = SurgeredModel::load(&args.model, &opts)
        .with_context(|| format!("loading {}", args.model))?;
    let items = load_npy_items(&args.items, &candle_core::Device::Cpu)?;
    let mut prompt = Prompt::user(args.prompt.clone());
    if let Some(s) = &args.system {
        prompt = prompt.with_system(s.clone());
    }
    let mut gen_opts = GenerateOptions::new().max_tokens(args.max_tokens);
    if args.temperature > 0.0 {
        gen_opts = gen_opts.sample(args.temperature, args.seed);
        if let Some(k) = args.top_k {
            gen_opts = gen_opts.top_k(k);
        }
        if let Some(p) = args.top_p {
            gen_opts = gen_opts.top_p(p);
        }
    }
    eprintln!(
        "model: {} | adapter: {} | items: {} x {}",
        args.model,
        adapter
            .as_ref()
            .map_or("from checkpoint".into(), |a| a.display().to_string()),
        items.dims()[0],
        items.dims()[1]
    );
    eprintln!("user: {}", args.prompt);
    eprint!("assistant: ");
    let t0 = Instant::now();
    let mut out = std::io::stdout().lock();
    let g = model.generate(&prompt, Some(&items), &gen_opts, |piece| {
        let _ = out.write_all(piece.as_bytes());
        let _ = out.flush();
    })?;
    let secs = t0.elapsed().as_secs_f64();
    println!();
    eprintln!(
        "[{} prompt tokens, {} generated, {:?}, {:.1} tokens/s]",
        g.prompt_tokens,
        g.tokens.len(),
        g.finish,
        g.tokens.len() as f64 / secs
    );
    Ok(())
}
