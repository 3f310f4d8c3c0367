//! Ask the surgered Qwen3-VL about items given as precomputed embeddings; the answer streams.
//!
//! ```text
//! cargo run --example chat -- --model <dir|org/name> --adapter <file> --items <file.npy> --prompt "..."
//! ```
//! Every flag has a default pointing at committed files (a tiny random-weight checkpoint,
//! an adapter written from PyTorch, three item embeddings), so it runs offline as is;
//! a random-weight model answers with noise, a real checkpoint and adapter with text.
//! `<item>` in the prompt marks where each item goes (else items come first). The prompt
//! is rendered with the checkpoint's own chat template, and decoding starts from its
//! generation_config.json; the sampling flags override it. `--revision`, `--device` and
//! `--dtype` are described in `--help`.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::Parser;
use mosaic::vision_surgery::{self, Prompt, SurgeredModel, load_npy_items};

#[path = "common/model_args.rs"]
mod model_args;
use model_args::ModelArgs;

const FIXTURES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/crates/vision-surgery/tests/fixtures"
);

#[derive(Parser)]
#[command(about = "Chat with the surgered Qwen3-VL about precomputed item embeddings")]
struct Args {
    #[command(flatten)]
    model: ModelArgs,
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
    /// Most tokens to generate (default: the checkpoint's max_new_tokens, else 128).
    #[arg(long)]
    max_tokens: Option<usize>,
    /// Sampling temperature, 0 = greedy (default: the checkpoint's generation_config.json).
    #[arg(long)]
    temperature: Option<f32>,
    /// Top-k filter when sampling.
    #[arg(long)]
    top_k: Option<usize>,
    /// Top-p filter when sampling.
    #[arg(long)]
    top_p: Option<f32>,
    /// Sampling seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Repetition penalty, 1 = off (default: the checkpoint's).
    #[arg(long)]
    repetition_penalty: Option<f32>,
    /// Presence penalty, 0 = off (default: the checkpoint's).
    #[arg(long)]
    presence_penalty: Option<f32>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let default_model = args.model.model.starts_with(FIXTURES);
    let adapter = match (&args.adapter, default_model) {
        (Some(a), _) => Some(a.clone()),
        (None, true) => Some(PathBuf::from(FIXTURES).join("adapter-torch/adapter.safetensors")),
        (None, false) => None,
    };
    let mut opts = args.model.load_options()?;
    if let Some(a) = &adapter {
        opts = opts.adapter(a);
    }
    let spec = args.model.spec()?;
    let model = SurgeredModel::load(&spec, &opts).with_context(|| format!("loading {spec}"))?;
    let items = load_npy_items(&args.items, &opts.device)?;
    let mut prompt = Prompt::user(args.prompt.clone());
    if let Some(s) = &args.system {
        prompt = prompt.with_system(s.clone());
    }
    // the checkpoint's decoding defaults, then the flags given
    let mut gen_opts = model.generate_options();
    if let Some(n) = args.max_tokens {
        gen_opts = gen_opts.max_tokens(n);
    }
    match args.temperature {
        Some(t) if t <= 0.0 => gen_opts = gen_opts.greedy(),
        Some(t) => gen_opts = gen_opts.sample(t, args.seed),
        None => {}
    }
    if let Some(k) = args.top_k {
        gen_opts = gen_opts.top_k(k);
    }
    if let Some(p) = args.top_p {
        gen_opts = gen_opts.top_p(p);
    }
    if let Some(p) = args.repetition_penalty {
        gen_opts = gen_opts.repetition_penalty(p);
    }
    if let Some(p) = args.presence_penalty {
        gen_opts = gen_opts.presence_penalty(p);
    }
    if let vision_surgery::Sampling::Sample { seed, .. } = &mut gen_opts.sampling {
        *seed = args.seed;
    }
    eprintln!(
        "model: {spec} ({:?}) | adapter: {} | items: {} x {}",
        model.dtype(),
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
