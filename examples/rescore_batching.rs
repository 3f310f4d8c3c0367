//! What the batching queue in front of the surgered model buys: concurrent clients each
//! re-scoring a few candidates at a time, through a `rescore::batch::Batcher` that
//! gathers their prompts into shared prefills, against the same batcher taking one job
//! per round (each request's prompts alone, as a server without the queue would run
//! them). Rounds of the two alternate (ABAB), so the machine's noise falls on both; each
//! round prints jobs/s, p50/p99 latency, and the ratio to the round before it (after a
//! one-second warm-up round of each).
//!
//! ```text
//! cargo run --release --example rescore_batching -- --clients 16 --candidates 4 --seconds 3 --rounds 4
//! ```
//! The model is the committed tiny random-weight Qwen3-VL checkpoint with its adapter,
//! reading the built-in catalogue's 32-wide content embeddings.

#[path = "common/tiny.rs"]
mod tiny;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use clap::Parser;
use mosaic::embed_store::{RamDirectory, Store};
use mosaic::ranker::rescore::batch::{BatchOptions, Batcher, Job};
use mosaic::ranker::rescore::{RescoreOptions, Rescorer};
use mosaic_testkit::catalogue::{Catalogue, CatalogueSpec, Rng};

#[derive(Parser)]
#[command(about = "Cross-request batching of the surgered model's re-scoring, measured")]
struct Args {
    /// Concurrent clients (each waits for its answer before sending the next job).
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// Candidates per job.
    #[arg(long, default_value_t = 4)]
    candidates: usize,
    /// Seconds per round.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Rounds of each mode (alternating).
    #[arg(long, default_value_t = 4)]
    rounds: usize,
    /// Prompts gathered into one round of the batched mode at most.
    #[arg(long, default_value_t = 32)]
    max_prompts: usize,
    /// How long the batched mode's first job waits for others, in milliseconds.
    #[arg(long, default_value_t = 2)]
    wait_ms: u64,
}

/// The tiny checkpoint over the catalogue's content embeddings, `batch` prompts per
/// prefill.
fn rescorer(batch: usize) -> anyhow::Result<Rescorer> {
    let cat = Catalogue::generate(CatalogueSpec::default())?;
    let store = Store::open(Arc::new(RamDirectory::new()))?;
    let content = tiny::write_content(&store, &cat, "content")?;
    tiny::tiny_rescorer(content, RescoreOptions::new().batch(batch))
}

/// One measured round: (jobs per second, p50 ms, p99 ms).
fn round(batcher: &Arc<Batcher>, args: &Args, seed: u64) -> anyhow::Result<(f64, f64, f64)> {
    let stop = Arc::new(AtomicBool::new(false));
    let n_items = CatalogueSpec::default().styles * CatalogueSpec::default().items_per_style;
    let clients: Vec<_> = (0..args.clients)
        .map(|c| {
            let (b, stop) = (Arc::clone(batcher), Arc::clone(&stop));
            let k = args.candidates;
            std::thread::spawn(move || -> anyhow::Result<Vec<f64>> {
                let mut rng = Rng::new(seed * 1000 + c as u64);
                let mut lat = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let pick = |rng: &mut Rng| rng.below(n_items) as u64;
                    let context = vec![pick(&mut rng), pick(&mut rng)];
                    let candidates = (0..k).map(|_| pick(&mut rng)).collect();
                    let (tx, rx) = mpsc::channel();
                    let t = Instant::now();
                    b.submit(Job {
                        question: None,
                        context,
                        candidates,
                        deadline: t + Duration::from_secs(60),
                        done: Box::new(move |s| {
                            let _ = tx.send(s);
                        }),
                    })?;
                    rx.recv()??;
                    lat.push(t.elapsed().as_secs_f64() * 1e3);
                }
                Ok(lat)
            })
        })
        .collect();
    let t = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(args.seconds));
    stop.store(true, Ordering::Relaxed);
    let mut lat = Vec::new();
    for c in clients {
        lat.extend(
            c.join()
                .map_err(|_| anyhow::anyhow!("a client panicked"))??,
        );
    }
    let secs = t.elapsed().as_secs_f64();
    lat.sort_by(f64::total_cmp);
    let q = |p: f64| lat[((lat.len() - 1) as f64 * p) as usize];
    Ok((lat.len() as f64 / secs, q(0.5), q(0.99)))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        args.clients > 0 && args.candidates > 0 && args.rounds > 0 && args.max_prompts > 0,
        "clients, candidates, rounds and max_prompts must be at least 1"
    );
    let queue = args.clients.max(1);
    let batched = Arc::new(Batcher::new(
        rescorer(args.max_prompts)?,
        BatchOptions {
            queue,
            max_prompts: args.max_prompts,
            max_wait: Duration::from_millis(args.wait_ms),
        },
    )?);
    // one job a round: each request's prompts in prefills of their own
    let alone = Arc::new(Batcher::new(
        rescorer(args.candidates)?,
        BatchOptions {
            queue,
            max_prompts: 1,
            max_wait: Duration::ZERO,
        },
    )?);
    println!(
        "{} clients, {} candidates a job, {:.1} s rounds; batched: up to {} prompts, {} ms wait",
        args.clients, args.candidates, args.seconds, args.max_prompts, args.wait_ms
    );
    // warm both up (allocations, caches) before anything is measured
    let warm = Args {
        seconds: 1.0,
        ..Args::parse_from(std::env::args())
    };
    round(&alone, &warm, 1_000)?;
    round(&batched, &warm, 1_001)?;
    let mut ratios = Vec::new();
    for r in 0..args.rounds {
        let (a_rate, a50, a99) = round(&alone, &args, 2 * r as u64)?;
        let (b_rate, b50, b99) = round(&batched, &args, 2 * r as u64 + 1)?;
        let ratio = b_rate / a_rate;
        ratios.push(ratio);
        println!(
            "round {r}: alone {a_rate:.0} jobs/s (p50 {a50:.2} ms, p99 {a99:.2} ms) | batched \
             {b_rate:.0} jobs/s (p50 {b50:.2} ms, p99 {b99:.2} ms) | ratio {ratio:.2}x"
        );
    }
    ratios.sort_by(f64::total_cmp);
    let st = batched.stats();
    println!(
        "median ratio {:.2}x (batched / alone); batched mode: {:.1} prompts a round",
        ratios[ratios.len() / 2],
        st.prompts as f64 / st.rounds.max(1) as f64
    );
    Ok(())
}
