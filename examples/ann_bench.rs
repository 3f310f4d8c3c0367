//! HNSW recall and throughput on a base/query set, against exact search.
//!
//! ```text
//! cargo run --release --example ann_bench -- --base B.npy --queries Q.npy [--gt G.npy] [--k 10] [--threads N] [--build-threads N]
//! cargo run --release --example ann_bench -- --synthetic 1000000   # the issue's Gaussian mixture
//! ... --index-dir DIR   # save the index there; later runs load it instead of rebuilding
//! ```
//! Prints the build time and index size, then one line per ef (16 to 512):
//! `ef=64 recall@10=0.973 qps=...`. Ground truth is computed exactly when `--gt` is absent;
//! `--device cuda` (with `--features cuda`) then also times batch exact search by matrix
//! product on the GPU against that scan.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, bail};
use clap::Parser;
use mosaic::embed_store::exchange::import_npy;
use mosaic::embed_store::hnsw::{Hnsw, HnswParams, Scratch};
use mosaic::embed_store::matrix::DeviceMatrix;
use mosaic::embed_store::search::Filter;
use mosaic::embed_store::{
    DeviceSpec, GenerationSpec, ItemId, Metric, MmapDirectory, RamDirectory, StorageType, Store,
};
use ndarray::Array2;
use ndarray_npy::ReadNpyExt;
use rayon::prelude::*;

#[derive(Parser)]
#[command(about = "HNSW recall@k and queries/sec against exact search")]
struct Args {
    /// Base vectors, (N, d) float .npy.
    #[arg(long)]
    base: Option<PathBuf>,
    /// Query vectors, (Q, d) float .npy.
    #[arg(long)]
    queries: Option<PathBuf>,
    /// Ground-truth neighbour row numbers, (Q, >=k) integer .npy.
    #[arg(long)]
    gt: Option<PathBuf>,
    /// Generate this many L2-normalised 64-d points from a 1000-cluster Gaussian mixture
    /// (within-cluster std 0.35) plus 1000 queries, instead of reading files.
    #[arg(long)]
    synthetic: Option<usize>,
    /// Neighbours per query.
    #[arg(long, default_value_t = 10)]
    k: usize,
    /// Search threads (1 = single-threaded qps).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Index build threads (default: all cores).
    #[arg(long)]
    build_threads: Option<usize>,
    /// HNSW links per node.
    #[arg(long, default_value_t = 16)]
    m: usize,
    /// HNSW build candidate list.
    #[arg(long, default_value_t = 200)]
    ef_construction: usize,
    /// Storage type of the generation: f32, f16 or int8.
    #[arg(long, default_value = "f32")]
    storage: String,
    /// Walk the graph on int8 codes (4x less index vector memory) and rerank in f32.
    #[arg(long)]
    int8_graph: bool,
    /// Also time batch exact search by matrix product (`DeviceMatrix`) on this device
    /// (cpu, cuda[:N] or auto), against the exact scan of the same run.
    #[arg(long)]
    device: Option<DeviceSpec>,
    /// Keep the index in this directory: load it when a saved index of the same data
    /// is there (the search timings without a rebuild), else build and save it.
    #[arg(long)]
    index_dir: Option<PathBuf>,
    /// Timed passes over the queries per ef (more passes, steadier queries/sec).
    #[arg(long, default_value_t = 1)]
    repeat: usize,
    /// The ef values to time, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "16,32,64,128,256,512")]
    ef: Vec<usize>,
}

fn mixture(n: usize, d: usize, clusters: usize, seed: u64) -> Vec<f32> {
    let mut s = seed | 1;
    let mut u = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        ((s >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    };
    let mut normal = move || {
        let (a, b) = (u(), u());
        ((-2.0 * a.ln()).sqrt() * (std::f64::consts::TAU * b).cos()) as f32
    };
    let centers: Vec<f32> = (0..clusters * d).map(|_| normal()).collect();
    let mut out = Vec::with_capacity(n * d);
    for i in 0..n {
        let c = (i * 7919) % clusters;
        let cn: f32 = centers[c * d..(c + 1) * d]
            .iter()
            .map(|x| x * x)
            .sum::<f32>()
            .sqrt();
        let mut v: Vec<f32> = (0..d)
            .map(|j| centers[c * d + j] / cn + 0.35 * normal() / (d as f32).sqrt())
            .collect();
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.iter_mut().for_each(|x| *x /= norm);
        out.extend(v);
    }
    out
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    rayon::ThreadPoolBuilder::new()
        .num_threads(a.threads.max(1))
        .build_global()
        .ok();
    let storage: StorageType = a
        .storage
        .parse()
        .map_err(|e: String| anyhow::anyhow!("--storage: {e}"))?;
    let store = Store::open(Arc::new(RamDirectory::new()))?;
    let mut w = store.writer()?;
    let (queries, d) = match (&a.synthetic, &a.base, &a.queries) {
        (Some(n), _, _) => {
            let d = 64;
            w.create_generation(GenerationSpec::new("bench", d, storage))?;
            w.commit()?;
            // Base and queries from the same mixture (the same cluster centres).
            let mut base = mixture(*n + 1000, d, 1000, 1);
            let queries = base.split_off(*n * d);
            let ids: Vec<ItemId> = (0..*n as u64).map(ItemId).collect();
            w.put_many("bench", &ids, &base, None)?;
            (queries, d)
        }
        (None, Some(b), Some(q)) => {
            let qa = Array2::<f32>::read_npy(
                std::fs::File::open(q).with_context(|| q.display().to_string())?,
            )?;
            let d = qa.ncols();
            w.create_generation(GenerationSpec::new("bench", d, storage))?;
            w.commit()?;
            import_npy(&mut w, "bench", b, None)?;
            (qa.iter().copied().collect(), d)
        }
        _ => bail!("give --base and --queries, or --synthetic N"),
    };
    w.set_current("bench")?;
    w.commit()?;
    let snap = store.snapshot().context("no generation")?;
    let nq = queries.len() / d;
    println!(
        "base={} queries={nq} dim={d} storage={:?} k={} threads={}",
        snap.len(),
        storage,
        a.k,
        a.threads
    );

    let t = Instant::now();
    let params = HnswParams {
        m: a.m,
        ef_construction: a.ef_construction,
        seed: 42,
    };
    let build_threads = a
        .build_threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);
    let index_dir = a.index_dir.as_ref().map(MmapDirectory::open).transpose()?;
    let saved = match &index_dir {
        Some(dir) => Hnsw::load(dir, &snap, Metric::InnerProduct)?,
        None => None,
    };
    let loaded = saved.is_some();
    let mut index = match saved {
        Some(h) => h,
        None => rayon::ThreadPoolBuilder::new()
            .num_threads(build_threads)
            .build()?
            .install(|| Hnsw::build(&snap, Metric::InnerProduct, params))?,
    };
    if let (Some(dir), false) = (&index_dir, loaded) {
        index.save(dir)?;
    }
    if a.int8_graph {
        index.quantize_int8();
    }
    let how = if loaded {
        format!(
            "load_s={:.2} (saved index from {}; --m/--ef-construction/--build-threads not applied)",
            t.elapsed().as_secs_f64(),
            a.index_dir
                .as_ref()
                .map_or(String::new(), |p| p.display().to_string())
        )
    } else {
        format!(
            "build_s={:.2} build_threads={build_threads}",
            t.elapsed().as_secs_f64()
        )
    };
    println!(
        "{how} index_bytes={} (links {} + vectors {}) m={} ef_construction={}",
        index.link_bytes() + index.vector_bytes(),
        index.link_bytes(),
        index.vector_bytes(),
        a.m,
        a.ef_construction
    );

    let gt: Vec<Vec<u64>> = match &a.gt {
        Some(p) => {
            let g = Array2::<i64>::read_npy(std::fs::File::open(p)?).or_else(|_| {
                Array2::<i32>::read_npy(std::fs::File::open(p)?).map(|g| g.mapv(i64::from))
            })?;
            g.rows()
                .into_iter()
                .map(|r| r.iter().take(a.k).map(|&x| x as u64).collect())
                .collect()
        }
        None => {
            let t = Instant::now();
            let exact = snap.search_batch(&queries, a.k, Metric::InnerProduct, &Filter::none())?;
            let scan_s = t.elapsed().as_secs_f64();
            println!(
                "exact_search_s={scan_s:.2} exact_qps={:.0}",
                nq as f64 / scan_s
            );
            if let Some(spec) = a.device {
                let sel = spec.select()?;
                let t = Instant::now();
                let m = DeviceMatrix::build(&snap, Metric::InnerProduct, sel.device())?;
                let upload_s = t.elapsed().as_secs_f64();
                m.search_batch(&snap, &queries[..d], a.k, &Filter::none())?; // warm-up
                let t = Instant::now();
                let got = m.search_batch(&snap, &queries, a.k, &Filter::none())?;
                let gemm_s = t.elapsed().as_secs_f64();
                let same: usize = got
                    .iter()
                    .zip(&exact)
                    .map(|(g, e)| g.iter().filter(|h| e.iter().any(|x| x.id == h.id)).count())
                    .sum();
                println!(
                    "device=\"{}\" matrix_upload_s={upload_s:.2} matrix_search_s={gemm_s:.3} matrix_qps={:.0} speedup_vs_scan={:.1}x agreement@{}={:.4}",
                    sel.reason(),
                    nq as f64 / gemm_s,
                    scan_s / gemm_s,
                    a.k,
                    same as f64 / (nq * a.k).max(1) as f64
                );
            }
            exact
                .into_iter()
                .map(|h| h.into_iter().map(|x| x.id.0).collect())
                .collect()
        }
    };
    for &ef in &a.ef {
        let t = Instant::now();
        let mut results: Vec<Vec<u64>> = Vec::new();
        for _ in 0..a.repeat.max(1) {
            results = queries
                .par_chunks(d)
                .map_init(
                    || Scratch::new(index.len()),
                    |s, q| {
                        index
                            .search(&snap, q, a.k, ef, &Filter::none(), s)
                            .map(|h| h.into_iter().map(|x| x.id.0).collect())
                            .unwrap_or_default()
                    },
                )
                .collect();
        }
        let secs = t.elapsed().as_secs_f64();
        let hits: usize = results
            .iter()
            .zip(&gt)
            .map(|(r, g)| r.iter().filter(|x| g.contains(x)).count())
            .sum();
        let total: usize = gt.iter().map(|g| g.len().min(a.k)).sum();
        println!(
            "ef={ef} recall@{}={:.3} qps={:.0}",
            a.k,
            hits as f64 / total as f64,
            (nq * a.repeat.max(1)) as f64 / secs
        );
    }
    Ok(())
}
