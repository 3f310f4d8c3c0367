//! Latency of `Recommender::recommend` (k = 20, default options: interests + taste +
//! popular candidates, MMR) on one thread, as p50 / p99 over many requests, at
//! catalogue sizes of 40k items (Gowalla's size) and more; plus `record` (the taste
//! graph's `observe` through the ranker) and, as the baseline measured in the same run,
//! the same requests with exact retrieval.
//!
//! ```text
//! cargo run --release --example ranker_latency                        # 40k items
//! cargo run --release --example ranker_latency -- --items 40000,1000000 --cache target/ranker-latency
//! ```
//! `--cache DIR` keeps each size's store and HNSW index on disk (mmap) so a later run
//! skips the build. Prints one machine-readable line per measurement.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use clap::Parser;
use mosaic::embed_store::hnsw::HnswParams;
use mosaic::embed_store::{Directory, MmapDirectory, RamDirectory, StorageType, Store};
use mosaic::ranker::pipeline::{export_items, index_for};
use mosaic::ranker::{RecommendOptions, Recommender};
use mosaic::taste_graph::{InteractionKind, InterestConfig, ItemId, LiveConfig, LiveModel, UserId};
use mosaic_testkit::catalogue::{Rng, serving_fixture};

#[derive(Parser)]
#[command(about = "p50/p99 latency of recommend() and record()")]
struct Args {
    /// Catalogue sizes, comma-separated.
    #[arg(long, default_value = "40000", value_delimiter = ',')]
    items: Vec<usize>,
    /// Users in the taste graph.
    #[arg(long, default_value_t = 20000)]
    users: usize,
    /// Interactions per user.
    #[arg(long, default_value_t = 30)]
    per_user: usize,
    /// Embedding width.
    #[arg(long, default_value_t = 64)]
    dim: usize,
    /// Results per request.
    #[arg(long, default_value_t = 20)]
    k: usize,
    /// Timed requests per configuration.
    #[arg(long, default_value_t = 2000)]
    requests: usize,
    /// Skip the exact-retrieval baseline above this many items (it scans everything).
    #[arg(long, default_value_t = 200_000)]
    exact_up_to: usize,
    /// Keep stores and indexes here between runs.
    #[arg(long)]
    cache: Option<PathBuf>,
}

fn percentiles(mut us: Vec<f64>) -> (f64, f64, f64) {
    us.sort_by(f64::total_cmp);
    let at = |q: f64| us[((us.len() as f64 * q) as usize).min(us.len() - 1)];
    let mean = us.iter().sum::<f64>() / us.len() as f64;
    (at(0.5), at(0.99), mean)
}

fn time_requests(
    rec: &Recommender,
    users: usize,
    n: usize,
    opts: &RecommendOptions,
    seed: u64,
) -> anyhow::Result<Vec<f64>> {
    let mut rng = Rng::new(seed);
    for _ in 0..n.min(200) {
        rec.recommend(UserId(rng.below(users) as u32), opts)?;
    }
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let u = UserId(rng.below(users) as u32);
        let t = Instant::now();
        let r = rec.recommend(u, opts)?;
        out.push(t.elapsed().as_secs_f64() * 1e6);
        anyhow::ensure!(
            r.len() == opts.k_value(),
            "user {} got {} results",
            u.0,
            r.len()
        );
    }
    Ok(out)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // Requests run on one thread: the latency of one request on one core (the other
    // serves another). Setup and the index build use every core.
    let one = rayon::ThreadPoolBuilder::new().num_threads(1).build()?;
    let opts = RecommendOptions::new().k(args.k);
    for &n in &args.items {
        let t = Instant::now();
        let (graph, model) = serving_fixture(n, args.users, args.per_user, args.dim, 1)?;
        let dir: Arc<dyn Directory> = match &args.cache {
            Some(c) => {
                let p = c.join(format!("{n}x{}-{}u", args.dim, args.users));
                std::fs::create_dir_all(&p)?;
                Arc::new(MmapDirectory::open(p)?)
            }
            None => Arc::new(RamDirectory::new()),
        };
        let store = Store::open(dir)?;
        let live = LiveModel::new(&model, &graph, LiveConfig::new(), 0)?;
        let name = "fixture";
        if !store.generations().iter().any(|g| g == name) {
            let ids: Vec<u64> = (0..n as u64).collect();
            export_items(
                &store,
                name,
                StorageType::F32,
                live.items(),
                args.dim,
                &ids,
                None,
            )?;
        }
        let snap = store.generation(name)?;
        let setup_s = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let index = index_for(&store, &snap, HnswParams::default())?;
        let index_s = t.elapsed().as_secs_f64();
        println!(
            "items={n} dim={} users={} setup_s={setup_s:.1} index_s={index_s:.1}",
            args.dim, args.users
        );
        let rec = Recommender::new(
            snap.clone(),
            Some(index),
            live.clone(),
            None,
            InterestConfig::new(),
        )?;
        let (p50, p99, mean) =
            percentiles(one.install(|| time_requests(&rec, args.users, args.requests, &opts, 7))?);
        println!(
            "items={n} retrieval=hnsw k={} requests={} p50_ms={:.3} p99_ms={:.3} mean_ms={:.3}",
            args.k,
            args.requests,
            p50 / 1e3,
            p99 / 1e3,
            mean / 1e3
        );
        // record(): the taste graph's observe through the ranker's lock and id map.
        let mut rng = Rng::new(11);
        let mut rec_us = Vec::with_capacity(args.requests);
        for k in 0..args.requests {
            let (u, i) = (rng.below(args.users) as u32, rng.below(n) as u64);
            let t = Instant::now();
            rec.record(u64::from(u), i, InteractionKind::Click, 1 + k as u64)?;
            rec_us.push(t.elapsed().as_secs_f64() * 1e6);
        }
        let max = rec_us.iter().copied().fold(0.0, f64::max);
        let (r50, r99, mean) = percentiles(rec_us);
        // Baseline, same run: re-ranking every item by engagement for the popular pool,
        // what record() did under the write lock every 4096 events until 2026-12-02
        // (now each event moves its one item in the pool).
        let counts = live.item_counts();
        let t = Instant::now();
        let mut order: Vec<u32> = (0..counts.len() as u32).collect();
        let by = |a: &u32, b: &u32| counts[*b as usize].cmp(&counts[*a as usize]).then(a.cmp(b));
        let pool = order.len().min(4096);
        if pool > 0 && pool < order.len() {
            order.select_nth_unstable_by(pool - 1, by);
            order.truncate(pool);
        }
        order.sort_by(by);
        let rerank_us = t.elapsed().as_secs_f64() * 1e6;
        println!(
            "items={n} op=record p50_us={r50:.2} p99_us={r99:.2} mean_us={mean:.2} max_us={max:.1} rerank_baseline_us={rerank_us:.1} top={}",
            order.first().map_or(0, |&i| counts[i as usize])
        );
        // observe alone with the hard-negative refits of the streaming experiment
        // (10 steps; rate, candidates per step).
        for (lr, negatives) in [(1.0, 4), (3.0, 16)] {
            let refit_config = LiveConfig::new().refit(10, lr).refit_negatives(negatives);
            let mut refit = LiveModel::new(&model, &graph, refit_config, 0)?;
            let mut obs_us = Vec::with_capacity(args.requests);
            for k in 0..args.requests {
                let (u, i) = (rng.below(args.users) as u32, rng.below(n) as u32);
                let t = Instant::now();
                refit.observe(UserId(u), ItemId(i), InteractionKind::Click, 1 + k as u64)?;
                obs_us.push(t.elapsed().as_secs_f64() * 1e6);
            }
            let (o50, o99, _) = percentiles(obs_us);
            println!(
                "items={n} op=observe_refit10_lr{lr}_hard{negatives} p50_us={o50:.2} p99_us={o99:.2}"
            );
        }
        if n <= args.exact_up_to {
            let exact = Recommender::new(snap, None, live, None, InterestConfig::new())?;
            let (e50, e99, emean) =
                percentiles(one.install(|| {
                    time_requests(&exact, args.users, args.requests.min(500), &opts, 7)
                })?);
            println!(
                "items={n} retrieval=exact k={} p50_ms={:.3} p99_ms={:.3} mean_ms={:.3} hnsw_speedup_p50={:.1}x",
                args.k,
                e50 / 1e3,
                e99 / 1e3,
                emean / 1e3,
                e50 / p50
            );
        }
    }
    Ok(())
}
