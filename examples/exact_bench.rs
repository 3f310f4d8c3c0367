//! Batch exact top-k search (`Snapshot::search_batch`: one GEMM per block of queries and
//! tile of rows, fused top-k) on a base/query set, at 1 and 2 threads, checked against
//! ground truth; the figure to set beside FAISS `IndexFlatIP` on its BLAS path, timed on
//! the same files by `scripts/ann_compare.py --reuse --flat-only`:
//!
//! ```text
//! python3 scripts/ann_compare.py --n 1000000 --out /tmp/ann --flat-only
//! cargo run --release --example exact_bench -- --base /tmp/ann/base.npy \
//!     --queries /tmp/ann/queries.npy --gt /tmp/ann/gt.npy --storage f32,f16,int8
//! ```
//! Prints `exact storage=f32 threads=1 search_s=... qps=... recall@10=...` per storage
//! and thread count, and `--rounds N` alternates them N times (report the median).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use clap::Parser;
use mosaic::embed_store::exchange::import_npy;
use mosaic::embed_store::search::Filter;
use mosaic::embed_store::{GenerationSpec, Metric, RamDirectory, StorageType, Store};
use ndarray::Array2;
use ndarray_npy::ReadNpyExt;

#[derive(Parser)]
#[command(about = "Batch exact search queries/sec at 1 and 2 threads")]
struct Args {
    /// Base vectors, (N, d) float .npy.
    #[arg(long)]
    base: PathBuf,
    /// Query vectors, (Q, d) float .npy.
    #[arg(long)]
    queries: PathBuf,
    /// Exact neighbour row numbers, (Q, >=k) integer .npy (recall is printed against it).
    #[arg(long)]
    gt: Option<PathBuf>,
    /// Neighbours per query.
    #[arg(long, default_value_t = 10)]
    k: usize,
    /// Storage types to time: f32, f16, int8 (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "f32")]
    storage: Vec<String>,
    /// Thread counts to time (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    threads: Vec<usize>,
    /// Timed passes over every storage and thread count, alternated.
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// Also time this many single-query `search` calls (one thread), the request path's
    /// latency.
    #[arg(long, default_value_t = 0)]
    single: usize,
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let qa = Array2::<f32>::read_npy(
        std::fs::File::open(&a.queries).with_context(|| a.queries.display().to_string())?,
    )?;
    let d = qa.ncols();
    let queries: Vec<f32> = qa.iter().copied().collect();
    let nq = queries.len() / d;
    let gt: Option<Vec<Vec<u64>>> = match &a.gt {
        Some(p) => {
            let g = Array2::<i64>::read_npy(std::fs::File::open(p)?)?;
            Some(
                g.rows()
                    .into_iter()
                    .map(|r| r.iter().take(a.k).map(|&x| x as u64).collect())
                    .collect(),
            )
        }
        None => None,
    };
    let mut snaps = Vec::new();
    for s in &a.storage {
        let storage: StorageType = s
            .parse()
            .map_err(|e: String| anyhow::anyhow!("--storage: {e}"))?;
        let store = Store::open(Arc::new(RamDirectory::new()))?;
        let mut w = store.writer()?;
        w.create_generation(GenerationSpec::new("bench", d, storage))?;
        w.commit()?;
        import_npy(&mut w, "bench", &a.base, None)?;
        w.set_current("bench")?;
        w.commit()?;
        drop(w);
        let snap = store.snapshot().context("no generation")?;
        snaps.push((s.clone(), store, snap));
    }
    let pools: Vec<(usize, rayon::ThreadPool)> = a
        .threads
        .iter()
        .map(|&t| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(t.max(1))
                .build()?;
            Ok((t, pool))
        })
        .collect::<anyhow::Result<_>>()?;
    println!("base={} queries={nq} dim={d} k={}", snaps[0].2.len(), a.k);
    for round in 0..a.rounds {
        for (name, _, snap) in &snaps {
            for (t, pool) in &pools {
                let start = Instant::now();
                let hits = pool.install(|| {
                    snap.search_batch(&queries, a.k, Metric::InnerProduct, &Filter::none())
                })?;
                let s = start.elapsed().as_secs_f64();
                let recall = gt.as_ref().map(|gt| {
                    let found: usize = hits
                        .iter()
                        .zip(gt)
                        .map(|(h, g)| h.iter().filter(|x| g.contains(&x.id.0)).count())
                        .sum();
                    found as f64 / (nq * a.k) as f64
                });
                println!(
                    "exact round={round} storage={name} threads={t} search_s={s:.3} qps={:.0}{}",
                    nq as f64 / s,
                    recall.map_or(String::new(), |r| format!(" recall@{}={r:.4}", a.k))
                );
            }
            if a.single > 0 {
                let n = a.single.min(nq);
                let start = Instant::now();
                for q in queries.chunks_exact(d).take(n) {
                    snap.search(q, a.k, Metric::InnerProduct, &Filter::none())?;
                }
                let s = start.elapsed().as_secs_f64();
                println!(
                    "single round={round} storage={name} queries={n} ms_per_query={:.2}",
                    1e3 * s / n as f64
                );
            }
        }
    }
    Ok(())
}
