//! ranker: `recommend()` at 40k items (Gowalla's size) with HNSW retrieval and, as the
//! baseline in the same run, exact retrieval; `record()` (the taste graph's `observe`
//! at dim 64 through the ranker) and `observe` alone, without and with the hard-negative
//! refit. `cargo bench --bench ranker`; p50/p99 come from
//! `cargo run --release --example ranker_latency`.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use mosaic::embed_store::hnsw::HnswParams;
use mosaic::embed_store::{RamDirectory, StorageType, Store};
use mosaic::ranker::pipeline::{export_items, index_for};
use mosaic::ranker::{RecommendOptions, Recommender};
use mosaic::taste_graph::{InteractionKind, InterestConfig, ItemId, LiveConfig, LiveModel, UserId};
use mosaic_testkit::catalogue::{Rng, serving_fixture};

const ITEMS: usize = 40_000;
const USERS: usize = 20_000;
const DIM: usize = 64;

fn recommenders() -> (Recommender, Recommender, LiveModel, LiveModel) {
    let (graph, model) = serving_fixture(ITEMS, USERS, 30, DIM, 1).unwrap();
    let live = LiveModel::new(&model, &graph, LiveConfig::new().half_life(3600.0), 0).unwrap();
    // The refit the streaming experiment found best: 10 BPR steps on the user's ego,
    // each against the highest-scored of 16 unseen candidates.
    let refit_config = LiveConfig::new()
        .half_life(3600.0)
        .refit(10, 3.0)
        .refit_negatives(16);
    let refit = LiveModel::new(&model, &graph, refit_config, 0).unwrap();
    let store = Store::open(Arc::new(RamDirectory::new())).unwrap();
    let ids: Vec<u64> = (0..ITEMS as u64).collect();
    export_items(&store, "g", StorageType::F32, live.items(), DIM, &ids, None).unwrap();
    let snap = store.generation("g").unwrap();
    let index = index_for(&store, &snap, HnswParams::default()).unwrap();
    let hnsw = Recommender::new(
        snap.clone(),
        Some(index),
        live.clone(),
        None,
        InterestConfig::new(),
    )
    .unwrap();
    let exact = Recommender::new(snap, None, live.clone(), None, InterestConfig::new()).unwrap();
    (hnsw, exact, live, refit)
}

fn bench(c: &mut Criterion) {
    let (hnsw, exact, mut live, mut refit) = recommenders();
    let opts = RecommendOptions::new().k(20);
    let mut g = c.benchmark_group("recommend_k20_40k_items");
    for (name, rec) in [("hnsw", &hnsw), ("exact_baseline", &exact)] {
        let mut rng = Rng::new(3);
        g.bench_function(name, |b| {
            b.iter(|| {
                black_box(
                    rec.recommend(UserId(rng.below(USERS) as u32), &opts)
                        .unwrap(),
                )
            })
        });
    }
    g.finish();
    let mut rng = Rng::new(5);
    let mut t = 0u64;
    c.bench_function("record_observe_dim64", |b| {
        b.iter(|| {
            t += 1;
            hnsw.record(
                rng.below(USERS) as u64,
                rng.below(ITEMS) as u64,
                InteractionKind::Click,
                t,
            )
            .unwrap()
        })
    });
    // The taste graph's observe alone (time decay on): O(dim) plus the seen-set insert.
    let mut rng = Rng::new(9);
    c.bench_function("observe_dim64", |b| {
        b.iter(|| {
            t += 1;
            let (u, i) = (rng.below(USERS) as u32, rng.below(ITEMS) as u32);
            live.observe(UserId(u), ItemId(i), InteractionKind::Save, t)
                .unwrap()
        })
    });
    // observe with the hard-negative refit.
    let mut rng = Rng::new(13);
    c.bench_function("observe_dim64_refit10_hard16", |b| {
        b.iter(|| {
            t += 1;
            let (u, i) = (rng.below(USERS) as u32, rng.below(ITEMS) as u32);
            refit
                .observe(UserId(u), ItemId(i), InteractionKind::Save, t)
                .unwrap()
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30);
    targets = bench
}
criterion_main!(benches);
