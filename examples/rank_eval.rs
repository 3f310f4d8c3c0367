//! Offline evaluation of the ranker's variants — popularity, a single taste embedding,
//! several interests, several interests + MMR — as one table: Recall@K, NDCG@K,
//! intra-list diversity, catalogue coverage.
//!
//! ```text
//! cargo run --release --example rank_eval                               # built-in catalogue
//! cargo run --release --example rank_eval -- --data ../shared/datasets/gowalla --epochs 20
//! ```
//! Prints the Markdown table, then one machine-readable line per variant.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use clap::Parser;
use mosaic::embed_store::hnsw::HnswParams;
use mosaic::embed_store::{RamDirectory, Store};
use mosaic::ranker::RecommendOptions;
use mosaic::ranker::eval::scorer_examples;
use mosaic::ranker::eval::{evaluate, learned_variant, markdown, split_every, standard_variants};
use mosaic::ranker::pipeline::{PipelineOptions, build};
use mosaic::ranker::scorer::LearnedScorer;
use mosaic::taste_graph::{Dataset, LightGcnConfig};
use mosaic_testkit::catalogue::{Catalogue, CatalogueSpec};

#[derive(Parser)]
#[command(about = "Evaluate ranking variants on a held-out split")]
struct Args {
    /// A LightGCN-format dataset (train.txt / test.txt); default: the built-in
    /// catalogue with every 5th interaction of each user held out.
    #[arg(long)]
    data: Option<PathBuf>,
    /// LightGCN training epochs (default: 40 on the catalogue, 20 on a dataset).
    #[arg(long)]
    epochs: Option<usize>,
    /// Cut-off K.
    #[arg(long, default_value_t = 20)]
    k: usize,
    /// Evaluate at most this many users.
    #[arg(long)]
    users: Option<usize>,
    /// Exact retrieval instead of HNSW.
    #[arg(long)]
    exact: bool,
    /// Also evaluate a learned scorer, fitted on every 10th training interaction of each
    /// user (held out of training for every variant, so the table stays comparable).
    #[arg(long)]
    learned: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let (train, test, lightgcn, epochs, source) = match &args.data {
        None => {
            let cat = Catalogue::generate(CatalogueSpec::default())?;
            let (train, test) = cat.holdout(5)?;
            let cfg = LightGcnConfig::new()
                .dim(32)
                .layers(3)
                .batch_size(2048)
                .lr(0.05)
                .seed(1);
            (
                train,
                test,
                cfg,
                args.epochs.unwrap_or(40),
                "built-in catalogue".to_string(),
            )
        }
        Some(dir) => {
            let d = Dataset::load_lightgcn(dir)
                .with_context(|| format!("loading {}", dir.display()))?;
            let cfg = LightGcnConfig::new().dim(64).layers(3).seed(2020);
            (
                d.train,
                d.test,
                cfg,
                args.epochs.unwrap_or(20),
                dir.display().to_string(),
            )
        }
    };
    let (train, valid) = if args.learned {
        let (t, v) = split_every(&train, 10)?;
        (t, Some(v))
    } else {
        (train, None)
    };
    println!(
        "{source}: {} users, {} items, {} training and {} held-out interactions",
        train.n_users(),
        train.n_items(),
        train.n_edges(),
        test.n_edges()
    );
    let store = Store::open(Arc::new(RamDirectory::new()))?;
    let opts = PipelineOptions {
        lightgcn,
        epochs,
        hnsw: (!args.exact).then(HnswParams::default),
        ..PipelineOptions::default()
    };
    let t = Instant::now();
    let (rec, _) = build(&train, None, None, &store, &opts, |e, s| {
        if e % 5 == 0 || e == epochs {
            eprintln!("  epoch {e}: loss {:.4} ({:.1} s)", s.loss, s.seconds);
        }
    })?;
    println!(
        "LightGCN {epochs} epochs + export + {}: {:.1} s\n",
        if args.exact {
            "exact retrieval"
        } else {
            "HNSW"
        },
        t.elapsed().as_secs_f64()
    );
    let mut variants = standard_variants();
    if let Some(valid) = &valid {
        let t = Instant::now();
        let ex = scorer_examples(&rec, valid, &RecommendOptions::new(), 5000)?;
        let scorer = LearnedScorer::fit(&ex, 1e-2)?;
        println!(
            "learned scorer: {} examples ({} positive), {:.1} s, weights {:?} bias {:.3}",
            ex.len(),
            ex.iter().filter(|e| e.positive).count(),
            t.elapsed().as_secs_f64(),
            scorer.weights,
            scorer.bias
        );
        variants.push(learned_variant(Arc::new(scorer)));
    }
    let rows = evaluate(&rec, &test, &variants, args.k, args.users)?;
    println!("{}", markdown(&rows, args.k));
    for r in &rows {
        println!(
            "variant={:?} recall@{k}={:.4} ndcg@{k}={:.4} ild={:.4} coverage={:.4} users={} seconds={:.1}",
            r.name,
            r.recall,
            r.ndcg,
            r.diversity,
            r.coverage,
            r.users,
            r.seconds,
            k = args.k
        );
    }
    Ok(())
}
