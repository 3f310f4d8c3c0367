//! End to end on a synthetic clustered dataset: a few epochs of LightGCN must rank held
//! out items far better than popularity, than chance, and than the untrained model.

use taste_graph::{BipartiteGraph, ItemId, LightGcnConfig, Trainer, UserId, evaluate};

mod common;
use common::Lcg;

const CLUSTERS: u64 = 8;
const USERS_PER: u64 = 60;
const ITEMS_PER: u64 = 50;

/// Users of cluster c mostly pick items of cluster c; 20 distinct items each, 5 held out.
fn clustered() -> (BipartiteGraph, BipartiteGraph) {
    let (nu, ni) = (
        (CLUSTERS * USERS_PER) as usize,
        (CLUSTERS * ITEMS_PER) as usize,
    );
    let mut rng = Lcg(42);
    let (mut train, mut test) = (Vec::new(), Vec::new());
    for u in 0..nu as u64 {
        let c = u / USERS_PER;
        let mut items = Vec::new();
        while items.len() < 20 {
            let i = if rng.below(10) < 9 {
                c * ITEMS_PER + rng.below(ITEMS_PER)
            } else {
                rng.below(ni as u64)
            };
            if !items.contains(&i) {
                items.push(i);
            }
        }
        for (k, &i) in items.iter().enumerate() {
            let e = (UserId(u as u32), ItemId(i as u32));
            if k < 15 { train.push(e) } else { test.push(e) }
        }
    }
    (
        BipartiteGraph::from_edges(nu, ni, train).unwrap(),
        BipartiteGraph::from_edges(nu, ni, test).unwrap(),
    )
}

#[test]
fn a_few_epochs_beat_popularity_and_the_untrained_model() {
    let (train, test) = clustered();
    let (nu, ni) = (train.n_users(), train.n_items());
    let k = 10;

    // Popularity baseline: every user gets the same score vector (item degree).
    let pop: Vec<f32> = (0..ni)
        .map(|i| train.users_of(ItemId(i as u32)).len() as f32)
        .collect();
    let ones = vec![1f32; nu];
    let popularity = evaluate(&ones, &pop, 1, &train, &test, &[k]).unwrap()[0];
    // Chance: 5 test items among ~385 candidates, 10 picks.
    let chance = k as f64 / (ni as f64 - 15.0);

    let config = LightGcnConfig::new()
        .dim(16)
        .layers(3)
        .batch_size(256)
        .lr(0.01)
        .seed(7);
    let mut trainer = Trainer::new(&train, &config).unwrap();
    let eval = |t: &Trainer| {
        let e = t.model().propagate().unwrap();
        evaluate(e.users(), e.items(), e.dim(), &train, &test, &[k]).unwrap()[0]
    };
    let untrained = eval(&trainer);
    let first = trainer.train_epoch(|_, _| {}).unwrap();
    let mut last = first;
    for _ in 0..7 {
        last = trainer.train_epoch(|_, _| {}).unwrap();
    }
    let trained = eval(&trainer);
    eprintln!(
        "recall@{k}: chance {chance:.3} popularity {:.3} untrained {:.3} trained {:.3}; \
         ndcg trained {:.3}; loss {:.4} -> {:.4}",
        popularity.recall, untrained.recall, trained.recall, trained.ndcg, first.loss, last.loss
    );
    assert_eq!(first.samples, train.n_edges());
    assert_eq!(first.batches, train.n_edges().div_ceil(256));
    assert!(
        last.loss < 0.8 * first.loss,
        "loss {} -> {}",
        first.loss,
        last.loss
    );
    assert!(
        trained.recall > 3.0 * popularity.recall.max(chance),
        "{trained:?} vs {popularity:?}"
    );
    assert!(
        trained.recall > untrained.recall + 0.05,
        "{trained:?} vs untrained {untrained:?}"
    );
    assert!(trained.recall > 0.2, "{trained:?}");
}

#[test]
fn training_is_deterministic_for_a_seed() {
    let (train, _) = clustered();
    let config = LightGcnConfig::new()
        .dim(8)
        .layers(2)
        .batch_size(512)
        .seed(3);
    let run = || {
        let mut t = Trainer::new(&train, &config).unwrap();
        t.train_epoch(|_, _| {}).unwrap();
        t.model().ego_table()
    };
    assert_eq!(run(), run());
}

/// A schedule switch takes effect exactly: switching the rate and batch size of a
/// trainer before (or between) epochs trains as a trainer configured that way would.
#[test]
fn switching_rate_and_batch_size_trains_as_configured_from_then_on() {
    let (train, _) = clustered();
    let base = LightGcnConfig::new().dim(8).layers(2).seed(3);
    let ego_after = |config: &LightGcnConfig, switch: Option<(f32, usize)>| {
        let mut t = Trainer::new(&train, config).unwrap();
        if let Some((lr, batch)) = switch {
            t.set_lr(lr).unwrap();
            t.set_batch_size(batch).unwrap();
        }
        t.train_epoch(|_, _| {}).unwrap();
        t.model().ego_table()
    };
    let want = ego_after(&base.clone().lr(4e-3).batch_size(256), None);
    let got = ego_after(&base.clone().lr(1e-3).batch_size(512), Some((4e-3, 256)));
    assert_eq!(got, want);
    // A switch changes the steps that follow it.
    let other = ego_after(&base.clone().lr(1e-3).batch_size(512), Some((4e-3, 512)));
    assert_ne!(other, want);
    // Invalid values are typed errors and change nothing.
    let mut t = Trainer::new(&train, &base).unwrap();
    for lr in [0.0, -1e-3, f32::NAN, f32::INFINITY] {
        assert!(matches!(
            t.set_lr(lr),
            Err(taste_graph::Error::Config { .. })
        ));
    }
    assert!(matches!(
        t.set_batch_size(0),
        Err(taste_graph::Error::Config { .. })
    ));
    t.train_epoch(|_, _| {}).unwrap();
    let mut fresh = Trainer::new(&train, &base).unwrap();
    fresh.train_epoch(|_, _| {}).unwrap();
    assert_eq!(t.model().ego_table(), fresh.model().ego_table());
}
