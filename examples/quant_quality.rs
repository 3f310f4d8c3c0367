//! How close each decoder weight format stays to the dense f32 model: one table per
//! model, one row per format.
//!
//! ```text
//! cargo run --release --example quant_quality -- [--decoder-layers 28] [--formats q8_0,q6_k,q4_k,q4_0]
//! cargo run --release --example quant_quality -- --model <dir|org/name> [--adapter F --items F.npy] --decoder-layers 0
//! ```
//! Models: `--model` (default: the committed tiny checkpoint, tiny-s0, 64 wide, with its
//! PyTorch-made adapter and items; a released checkpoint is the run that judges a format
//! before serving it), and the Qwen3-VL-2B-shaped random-weight checkpoint of the
//! surgery bench (`--decoder-layers` of them, 28 by default; written under target/ on
//! first use). Per format, over every position of the prompts: max |Δlogit|, mean and
//! max KL(f32 ‖ format) over the vocabulary, top-1 agreement; and the yes/no log-odds
//! the ranker's rescoring computes (`log P(yes) − log P(no)` after the prompt), as the
//! mean and max |Δ| over the prompts. Prompts for `--model`: six rescoring-style text
//! questions, and with an adapter and items the rescoring question about pairs of the
//! first three items; the 2B-shaped model's bench request (36 instruction
//! tokens, N = 8 items of K = 4 soft tokens, 4 tail tokens) with 4 sets of item
//! embeddings. A layer whose width is not a multiple of the format's block stays dense
//! (the tiny model under the 256-wide k-quant blocks: its rows say 0 quantized).
//!
//! Random weights are a stand-in: their logits are flatter than a trained model's, so
//! KL and top-1 here bound the arithmetic error, not the released model's quality.

use std::path::Path;

use anyhow::Context;
use candle_core::{DType, Device, IndexOp, Tensor};
use clap::Parser;
use mosaic::vision_surgery::bench::RequestText;
use mosaic::vision_surgery::decoder::TextDecoder;
use mosaic::vision_surgery::model::{LogitsScope, SequenceInput, TextModel};
use mosaic::vision_surgery::quant::Agreement;
use mosaic::vision_surgery::synthetic::{ModelShape, ensure_random_checkpoint};
use mosaic::vision_surgery::{
    Activation, AdapterSpec, EmbeddingAdapter, LoadOptions, Prompt, SurgeredModel, WeightFormat,
    load_npy_items,
};

#[derive(Parser)]
#[command(about = "Quantized decoder weights against the dense f32 model")]
struct Args {
    /// Checkpoint directory or hub id (default: the committed tiny checkpoint, with its
    /// adapter and items unless --adapter / --items say otherwise).
    #[arg(long)]
    model: Option<String>,
    /// An adapter for --model (item prompts need one).
    #[arg(long)]
    adapter: Option<std::path::PathBuf>,
    /// Item embeddings (.npy, N x in_dim) for the item prompts.
    #[arg(long)]
    items: Option<std::path::PathBuf>,
    /// Decoder layers of the 2B-shaped checkpoint (0: skip it).
    #[arg(long, default_value_t = 28)]
    decoder_layers: usize,
    /// Formats to compare with dense f32.
    #[arg(long, value_delimiter = ',', default_value = "q8_0,q6_k,q4_k,q4_0")]
    formats: Vec<WeightFormat>,
}

/// All-position logits of each prompt and its last position's yes/no log-odds.
struct Outputs {
    logits: Vec<Tensor>,
    log_odds: Vec<f32>,
}

fn outputs(
    tm: &TextModel,
    prompts: &[SequenceInput],
    yes: u32,
    no: u32,
) -> anyhow::Result<Outputs> {
    let mut out = Outputs {
        logits: Vec::new(),
        log_odds: Vec::new(),
    };
    for q in prompts {
        let mut c = tm.new_cache(q.ids.len());
        let l = tm
            .prefill(std::slice::from_ref(q), &mut c, LogitsScope::All)?
            .logits
            .i(0)?;
        let last = TextDecoder::log_softmax(&l.i(l.dim(0)? - 1)?)?;
        let lp: Vec<f32> = last.to_vec1()?;
        out.log_odds.push(lp[yes as usize] - lp[no as usize]);
        out.logits.push(l);
    }
    Ok(out)
}

fn row(
    format: WeightFormat,
    model: &SurgeredModel,
    want: &Outputs,
    got: &Outputs,
) -> anyhow::Result<()> {
    let a = Agreement::of(
        &Tensor::cat(&want.logits, 0)?,
        &Tensor::cat(&got.logits, 0)?,
    )?;
    let d: Vec<f32> = want
        .log_odds
        .iter()
        .zip(&got.log_odds)
        .map(|(w, g)| (w - g).abs())
        .collect();
    let p = model.surgery_report().projections;
    println!(
        "| {format} | {}/{} | {:.2} | {:.4} | {:.2e} | {:.2e} | {:.3} | {:.4} | {:.4} |",
        p.quantized,
        p.quantized + p.dense,
        p.bytes as f64 / 1048576.0,
        a.max_abs,
        a.mean_kl,
        a.max_kl,
        a.top1,
        d.iter().sum::<f32>() / d.len().max(1) as f32,
        d.iter().copied().fold(0.0f32, f32::max),
    );
    Ok(())
}

fn header(title: &str, want: &Outputs) -> anyhow::Result<()> {
    let all = Tensor::cat(&want.logits, 0)?;
    let std = all.var_keepdim(1)?.mean_all()?.sqrt()?.to_scalar::<f32>()?;
    let odds =
        want.log_odds.iter().map(|x| x.abs()).sum::<f32>() / want.log_odds.len().max(1) as f32;
    println!(
        "\n{title}: {} prompts, {} positions; f32 logits: mean per-row std {std:.3}, mean abs yes/no log-odds {odds:.3}",
        want.log_odds.len(),
        all.dim(0)?
    );
    println!(
        "| weights | projections quantized | MiB held | max abs dlogit | mean KL | max KL | top-1 | mean abs d(log-odds) | max abs d(log-odds) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    Ok(())
}

fn load(spec: &str, format: WeightFormat, adapter: Option<&Path>) -> anyhow::Result<SurgeredModel> {
    let mut o = LoadOptions::default().dtype(DType::F32).weights(format);
    if let Some(a) = adapter {
        o = o.adapter(a);
    }
    let m = SurgeredModel::load(spec, &o)?;
    // the plain prefill is compared: no prefix cache
    m.text_model().prefix_cache().set_max_bytes(0);
    Ok(m)
}

/// Text questions shaped like the rescoring prompt (no item needed).
const TEXT_QUESTIONS: [&str; 6] = [
    "A user saved a red leather handbag. Would they also save a black canvas tote? Answer yes or no.",
    "A user saved three mid-century armchairs. Would they also save a neon gaming chair? Answer yes or no.",
    "A user saved photos of alpine lakes at dawn. Would they also save a desert canyon at dusk? Answer yes or no.",
    "A user saved minimalist line tattoos. Would they also save a full-sleeve traditional koi? Answer yes or no.",
    "A user saved vegan ramen recipes. Would they also save a steakhouse grilling guide? Answer yes or no.",
    "A user saved Scandinavian kitchens in white oak. Would they also save a walnut Japandi dining room? Answer yes or no.",
];

/// `--model`'s table: the text questions, and the item question about pairs of the first
/// three items when an adapter and items are given.
fn checkpoint(
    spec: &str,
    adapter: Option<&Path>,
    items: Option<&Path>,
    formats: &[WeightFormat],
) -> anyhow::Result<()> {
    let dense = load(spec, WeightFormat::Dense, adapter)?;
    let tok = dense
        .tokenizer()
        .context("the checkpoint has no tokenizer: prompts cannot be written")?;
    let (yes, no) = (tok.encode_text("yes")?[0], tok.encode_text("no")?[0]);
    let mut prompts = TEXT_QUESTIONS
        .iter()
        .map(|q| dense.prepare(&Prompt::user(*q), None))
        .collect::<mosaic::vision_surgery::Result<Vec<_>>>()?;
    if let (Some(_), Some(items)) = (dense.adapter(), items) {
        let items = load_npy_items(items, &Device::Cpu)?;
        let n = items.dim(0)?.min(3);
        let q = Prompt::user("A user saved <item>. Would they also save <item>? Answer yes or no.");
        for a in 0..n {
            for b in (0..n).filter(|&b| b != a) {
                let pair = Tensor::cat(&[items.i(a..a + 1)?, items.i(b..b + 1)?], 0)?;
                prompts.push(dense.prepare(&q, Some(&pair))?);
            }
        }
    }
    let want = outputs(dense.text_model(), &prompts, yes, no)?;
    let t = dense.config().text.clone();
    drop(dense);
    header(
        &format!(
            "{spec} ({} wide, {} layers{})",
            t.hidden_size,
            t.num_hidden_layers,
            if adapter.is_some() {
                ", with an adapter"
            } else {
                ""
            }
        ),
        &want,
    )?;
    for &f in formats {
        let m = load(spec, f, adapter)?;
        row(f, &m, &want, &outputs(m.text_model(), &prompts, yes, no)?)?;
    }
    Ok(())
}

fn shaped(layers: usize, formats: &[WeightFormat]) -> anyhow::Result<()> {
    let shape = ModelShape::qwen3_vl_2b().with_decoder_layers(layers);
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target/bench-checkpoints")
        .join(format!("qwen3-vl-2b-shaped-{layers}-layers"));
    ensure_random_checkpoint(&dir, &shape, 2026)?;
    let spec = dir.to_str().context("utf-8 path")?;
    let (n, k, in_dim) = (8, 4, 256);
    let adapter_spec = AdapterSpec::mlp(in_dim, 1024, Activation::Gelu, k, shape.hidden_size)
        .with_deepstack(shape.deepstack_levels);
    let adapter = EmbeddingAdapter::init(adapter_spec, 4, DType::F32, &Device::Cpu)?;
    let text = RequestText::synthetic(shape.special_base(), 1);
    let (yes, no) = (text.continuation[0], text.continuation[1]);
    let prompts_for = |tm: &TextModel| -> anyhow::Result<Vec<SequenceInput>> {
        (0..4u64)
            .map(|seed| {
                let v: Vec<f32> = (0..n * in_dim)
                    .map(|i| (((i as u64 + 1) * (seed * 2 + 7919)) % 2003) as f32 / 1001.5 - 1.0)
                    .collect();
                let items = Tensor::from_vec(v, (n, in_dim), &Device::Cpu)?;
                Ok(SequenceInput {
                    ids: text.prompt(tm, &vec![k; n]),
                    visual: Some(adapter.visual_input(&items)?),
                })
            })
            .collect()
    };
    let (want, prompts) = {
        let dense = load(spec, WeightFormat::Dense, None)?;
        let prompts = prompts_for(dense.text_model())?;
        (outputs(dense.text_model(), &prompts, yes, no)?, prompts)
    };
    header(
        &format!("Qwen3-VL-2B-shaped random weights, {layers} decoder layers, N = {n}, K = {k}"),
        &want,
    )?;
    for &f in formats {
        let m = load(spec, f, None)?;
        row(f, &m, &want, &outputs(m.text_model(), &prompts, yes, no)?)?;
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("crates/vision-surgery/tests/fixtures");
    let (spec, adapter, items) = match &args.model {
        Some(m) => (m.clone(), args.adapter.clone(), args.items.clone()),
        None => (
            root.join("tiny-s0/model").to_string_lossy().into_owned(),
            Some(
                args.adapter
                    .clone()
                    .unwrap_or(root.join("adapter-torch/adapter.safetensors")),
            ),
            Some(
                args.items
                    .clone()
                    .unwrap_or(root.join("adapter-torch/items.npy")),
            ),
        ),
    };
    checkpoint(&spec, adapter.as_deref(), items.as_deref(), &args.formats)?;
    if args.decoder_layers > 0 {
        shaped(args.decoder_layers, &args.formats)?;
    }
    Ok(())
}
