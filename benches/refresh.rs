//! refresh: what `Refresher::plan` and `Refresher::catch_up` cost under a service's lock
//! with many users and many events recorded since the last install — 500,000 users,
//! 2,000,000 recorded events — against, as the baseline in the same run, the copies the
//! plan made before it shared them (the recorded events and 8 bytes per user).
//! `cargo bench --bench refresh`.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use mosaic::taste_graph::{
    Interaction, InteractionKind, ItemId, LightGcnConfig, LiveConfig, LiveModel, Refresher,
    Trainer, Training, UserId,
};
use mosaic_testkit::catalogue::{Rng, serving_fixture};

const ITEMS: usize = 50_000;
const USERS: usize = 500_000;
const EVENTS: usize = 2_000_000;
const DIM: usize = 16;

fn bench(c: &mut Criterion) {
    let (graph, _) = serving_fixture(ITEMS, USERS, 4, DIM, 1).unwrap();
    let trainer = Trainer::new(&graph, &LightGcnConfig::new().dim(DIM).layers(2)).unwrap();
    let live = LiveModel::new(trainer.model(), &graph, LiveConfig::new(), 0).unwrap();
    let mut refresher = Refresher::new(Training::from(trainer), graph).unwrap();
    let mut rng = Rng::new(7);
    let events: Vec<Interaction> = (0..EVENTS)
        .map(|t| Interaction {
            user: UserId(rng.below(USERS) as u32),
            item: ItemId(rng.below(ITEMS) as u32),
            kind: InteractionKind::Click,
            weight: 1.0,
            timestamp: t as u64,
        })
        .collect();
    events.iter().for_each(|&e| refresher.record(e).unwrap());
    let times = vec![0u64; USERS];

    let mut g = c.benchmark_group("plan_500k_users_2m_events");
    g.sample_size(20);
    g.bench_function("plan", |b| {
        b.iter(|| black_box(refresher.plan(&live, 1).unwrap()))
    });
    g.bench_function("copy_baseline", |b| {
        b.iter(|| black_box((events.clone(), times.clone())))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
