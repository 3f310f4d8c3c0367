//! Background refits through the recommender: planned from it, installed with the
//! events that arrived meanwhile, served by the refreshed recommender over a new
//! generation; the old one retires without losing an event.

use std::sync::Arc;

use embed_store::{ItemId as StoreId, RamDirectory, Store};
use mosaic_testkit::catalogue::{Catalogue, CatalogueSpec};
use ranker::pipeline::{Attrs, PipelineOptions, build, refreshed, restore};
use ranker::{Error, RecommendOptions, Recommender};
use taste_graph::{
    BipartiteGraph, DeviceSpec, InteractionKind, ItemId, LightGcnConfig, Refresher, Trainer,
    Training, UserId,
};

const BASE: u64 = 10_000;

fn spec() -> CatalogueSpec {
    CatalogueSpec {
        styles: 6,
        items_per_style: 60,
        users: 120,
        events_per_user: 16,
        dim: 16,
        seed: 5,
    }
}

fn catalogue() -> Catalogue {
    Catalogue::generate(spec()).unwrap()
}

fn options(refits: bool) -> PipelineOptions {
    PipelineOptions {
        lightgcn: LightGcnConfig::new()
            .dim(16)
            .layers(2)
            .batch_size(256)
            .lr(0.05)
            .seed(2),
        epochs: 8,
        refits,
        ..PipelineOptions::default()
    }
}

fn setup() -> (Catalogue, BipartiteGraph, Arc<Store>, Recommender) {
    setup_with(catalogue())
}

fn setup_with(cat: Catalogue) -> (Catalogue, BipartiteGraph, Arc<Store>, Recommender) {
    let (graph, _) = cat.split(0.75).unwrap();
    let store = Store::open(Arc::new(RamDirectory::new())).unwrap();
    let ids: Vec<u64> = (0..cat.n_items() as u64).map(|i| BASE + i).collect();
    let attrs = Attrs {
        values: &cat.style,
        n_attrs: 1,
    };
    let (rec, _) = build(
        &graph,
        Some(ids),
        Some(attrs),
        &store,
        &options(true),
        |_, _| {},
    )
    .unwrap();
    (cat, graph, store, rec)
}

/// An item `user` has not engaged with.
fn unseen(rec: &Recommender, user: u32) -> u64 {
    rec.with_live(|l| {
        let seen = l.seen(UserId(user));
        (0..l.n_items() as u32)
            .find(|i| !seen.contains(i))
            .map(|i| BASE + i as u64)
            .unwrap()
    })
}

#[test]
fn a_refit_is_served_by_the_refreshed_recommender_and_the_old_one_retires() {
    let (cat, graph, store, rec) = setup();
    let opts = RecommendOptions::new().k(10);
    let t0 = rec.with_live(|l| l.latest_time());
    for (k, u) in [0u32, 1, 2, 3].into_iter().enumerate() {
        let item = unseen(&rec, u);
        rec.record(u64::from(u), item, InteractionKind::Save, t0 + k as u64)
            .unwrap();
    }
    let job = rec.plan_refit(2).unwrap();
    let stale_job = rec.plan_refit(1).unwrap();
    assert_eq!(job.events(), 4);
    // Serving goes on while the job runs: a hide and a click arrive meanwhile.
    let hidden = rec.recommend(UserId(5), &opts).unwrap()[0].item;
    rec.record(5, hidden, InteractionKind::Hide, t0 + 10)
        .unwrap();
    let clicked = unseen(&rec, 6);
    rec.record(6, clicked, InteractionKind::Click, t0 + 11)
        .unwrap();
    let refit = std::thread::spawn(move || job.run(|_| {}))
        .join()
        .unwrap()
        .unwrap();
    assert_eq!(refit.graph().n_edges(), graph.n_edges() + 4);
    let attrs = Attrs {
        values: &cat.style,
        n_attrs: 1,
    };
    let (fresh, installed) = refreshed(
        &rec,
        refit,
        "refit-1",
        Some(attrs),
        None,
        &store,
        &options(true),
    )
    .unwrap();
    // The two events recorded during the refit were caught up outside the write lock.
    assert_eq!(
        (installed.folded, installed.caught_up, installed.replayed),
        (4, 2, 0)
    );

    // The old recommender's vectors belong to the previous model: it retires.
    assert!(matches!(
        rec.recommend(UserId(0), &opts),
        Err(Error::Retired {
            serves: 0,
            current: 1
        })
    ));
    assert!(matches!(
        rec.interests(UserId(0), None),
        Err(Error::Retired { .. })
    ));
    // The new one serves the refit's vectors from the new generation.
    assert_eq!(fresh.snapshot().generation(), "refit-1");
    let recs = fresh.recommend(UserId(5), &opts).unwrap();
    assert!(!recs.is_empty() && recs.iter().all(|r| r.item != hidden));
    for ext in [BASE, BASE + 17, BASE + 200] {
        let dense = fresh.dense_id(ext).unwrap();
        let stored = fresh.snapshot().get(StoreId(ext)).unwrap();
        fresh.with_live(|l| assert_eq!(l.item(dense).unwrap(), &stored[..]));
    }
    // The event during the refit was replayed into the new model.
    let dense = fresh.dense_id(clicked).unwrap();
    fresh.with_live(|l| assert!(l.seen(UserId(6)).contains(&dense.0)));
    // An event recorded through the old recommender reaches the shared taste graph.
    let late = unseen(&fresh, 7);
    rec.record(7, late, InteractionKind::Save, t0 + 20).unwrap();
    let dense = fresh.dense_id(late).unwrap();
    fresh.with_live(|l| assert!(l.seen(UserId(7)).contains(&dense.0)));
    // A refit planned before that install would undo it.
    let stale = stale_job.run(|_| {}).unwrap();
    let err = refreshed(&fresh, stale, "refit-2", None, None, &store, &options(true)).unwrap_err();
    assert!(
        matches!(err, Error::Taste(taste_graph::Error::Stale { .. })),
        "{err}"
    );
    // The next cycle folds in what arrived since the plan (the hide, two events).
    let next = fresh.plan_refit(1).unwrap();
    assert_eq!(next.events(), 3);
    let refit = next.run(|_| {}).unwrap();
    assert!(
        !refit
            .graph()
            .has_edge(UserId(5), ItemId(fresh.dense_id(hidden).unwrap().0))
    );
    let (third, _) =
        refreshed(&fresh, refit, "refit-3", None, None, &store, &options(true)).unwrap();
    assert!(third.recommend(UserId(5), &opts).is_ok());
    assert!(matches!(
        fresh.recommend(UserId(5), &opts),
        Err(Error::Retired { serves: 1, .. })
    ));
}

#[test]
fn events_recorded_while_refits_install_are_all_served() {
    // A recorder hammers the shared taste graph while refits are planned, trained and
    // installed: events landing between an install's catch-up and its write lock are
    // replayed under the lock (and the popular pool repaired for their items, which
    // `refreshed` checks against a full re-ranking in debug builds: more items than
    // the pool holds, so that a missed repair shows); none is lost.
    let cat = Catalogue::generate(CatalogueSpec {
        items_per_style: 700,
        ..spec()
    })
    .unwrap();
    let (_, _, store, rec) = setup_with(cat);
    let rec = Arc::new(rec);
    let t0 = rec.with_live(|l| l.latest_time());
    let n_items = rec.with_live(|l| l.n_items()) as u64;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let recorder = {
        let (rec, stop) = (Arc::clone(&rec), Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut recorded = Vec::new();
            let mut k = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let (user, item) = ((k % 120) as u32, BASE + (k * 7_919) % n_items);
                rec.record(u64::from(user), item, InteractionKind::Click, t0 + 1 + k)
                    .unwrap();
                recorded.push((user, item));
                k += 1;
                if k.is_multiple_of(64) {
                    // At most ~64k events a second: the record stays small.
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
            }
            recorded
        })
    };
    let mut current: Option<Recommender> = None;
    let mut replayed = 0;
    let mut installs = 0;
    // At least 12 installs, and on until one of them replayed an event under the lock.
    while installs < 12 || (replayed == 0 && installs < 400) {
        let n = installs;
        installs += 1;
        let from = current.as_ref().unwrap_or(&rec);
        let refit = from.plan_refit(1).unwrap().run(|_| {}).unwrap();
        let name = format!("race-{n}");
        let (fresh, installed) =
            refreshed(from, refit, &name, None, None, &store, &options(true)).unwrap();
        replayed += installed.replayed;
        current = Some(fresh);
    }
    let current = current.unwrap();
    assert!(replayed > 0, "no event landed inside {installs} installs");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let recorded = recorder.join().unwrap();
    assert!(!recorded.is_empty());
    current.with_live(|l| {
        for &(user, item) in &recorded {
            let dense = current.dense_id(item).unwrap();
            assert!(
                l.seen(UserId(user)).contains(&dense.0),
                "user {user}'s click on {item} was lost ({} recorded)",
                recorded.len()
            );
        }
    });
    println!(
        "{} events recorded over {installs} installs, {replayed} of them replayed under the write lock",
        recorded.len()
    );
}

#[test]
fn refits_need_an_attached_refresher_of_the_served_graph() {
    let cat = catalogue();
    let (graph, _) = cat.split(0.75).unwrap();
    let store = Store::open(Arc::new(RamDirectory::new())).unwrap();
    let (rec, _) = build(&graph, None, None, &store, &options(false), |_, _| {}).unwrap();
    assert!(matches!(rec.plan_refit(1), Err(Error::Config { .. })));
    assert!(matches!(
        rec.external_ids(1_000_000),
        Err(Error::Config { .. })
    ));
    // A refresher over another graph is refused.
    let other = cat.split(0.5).unwrap().0;
    let small = BipartiteGraph::from_edges(
        other.n_users(),
        other.n_items() - 1,
        (0..other.n_users() as u32).flat_map(|u| {
            other
                .items_of(UserId(u))
                .iter()
                .filter(|&&i| (i as usize) < other.n_items() - 1)
                .map(move |&i| (UserId(u), ItemId(i)))
                .collect::<Vec<_>>()
        }),
    )
    .unwrap();
    let t = Trainer::new(&small, &options(false).lightgcn).unwrap();
    let r = Refresher::new(Training::from(t), small).unwrap();
    assert!(matches!(rec.with_refresher(r), Err(Error::Config { .. })));
}

#[test]
fn the_pipeline_trains_and_refits_on_a_cuda_device() {
    let cat = catalogue();
    let (graph, _) = cat.split(0.75).unwrap();
    let store = Store::open(Arc::new(RamDirectory::new())).unwrap();
    let opts = PipelineOptions {
        device: DeviceSpec::Cuda(0),
        ..options(true)
    };
    let rec = match build(&graph, None, None, &store, &opts, |_, _| {}) {
        Ok((rec, _)) => rec,
        // Without the `cuda` feature or a device: a typed error, nothing trained.
        Err(Error::Device(e)) => {
            println!("SKIPPED the_pipeline_trains_and_refits_on_a_cuda_device: {e}");
            return;
        }
        Err(e) => panic!("unexpected error: {e}"),
    };
    let item = unseen(&rec, 3);
    rec.record(3, item, InteractionKind::Save, 1_000).unwrap();
    let refit = rec.plan_refit(2).unwrap().run(|_| {}).unwrap();
    assert!(refit.training().device().is_some_and(|d| d.is_cuda()));
    let (fresh, installed) =
        refreshed(&rec, refit, "refit-cuda", None, None, &store, &opts).unwrap();
    assert_eq!(installed.folded, 1);
    let recs = fresh
        .recommend(UserId(3), &RecommendOptions::new().k(10))
        .unwrap();
    assert!(!recs.is_empty());
}

#[test]
fn a_restarted_service_serves_the_state_it_saved() {
    let (_, _, store, rec) = setup();
    let opts = RecommendOptions::new().k(10);
    let t0 = rec.with_live(|l| l.latest_time());
    // A new external item, then a refit served over a new generation.
    let new_item = BASE + 999_999;
    rec.record(2, new_item, InteractionKind::Save, t0 + 1)
        .unwrap();
    for u in [0u32, 1, 3] {
        let item = unseen(&rec, u);
        rec.record(u64::from(u), item, InteractionKind::Click, t0 + 2)
            .unwrap();
    }
    let refit = rec.plan_refit(1).unwrap().run(|_| {}).unwrap();
    let (fresh, _) = refreshed(&rec, refit, "refit-1", None, None, &store, &options(true)).unwrap();
    // Served after the refit: a hide (kept only in the users' memory after the next
    // refit) and a click; then the state is captured and written.
    let hidden = fresh.recommend(UserId(4), &opts).unwrap()[0].item;
    fresh
        .record(4, hidden, InteractionKind::Hide, t0 + 3)
        .unwrap();
    let item = unseen(&fresh, 5);
    fresh
        .record(5, item, InteractionKind::Click, t0 + 4)
        .unwrap();
    // An item added after the refit: not in the served generation.
    let newer_item = BASE + 888_888;
    fresh
        .record(6, newer_item, InteractionKind::Click, t0 + 5)
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let state = fresh.state(42).unwrap();
    // The generation holds the first items' ids in dense order: only the newer item's id
    // is in the saved ids, not 8 bytes per item.
    let n_items = fresh.with_live(|l| l.n_items());
    assert!(
        state.app_data_len() < 4 * n_items,
        "{} bytes of ids for {n_items} items",
        state.app_data_len()
    );
    state.write(dir.path()).unwrap();
    // The retired recommender's vectors are not the served ones: refused.
    assert!(matches!(rec.state(42), Err(Error::Retired { .. })));

    let reopened = restore(dir.path(), &store, &options(true))
        .unwrap()
        .expect("a saved state");
    assert_eq!(reopened.saved_seq, 42);
    assert_eq!(reopened.replayed.replayed, 0);
    let back = reopened.recommender;
    assert_eq!(back.snapshot().generation(), "refit-1");
    assert_eq!(back.dense_id(new_item), fresh.dense_id(new_item));
    assert_eq!(back.dense_id(newer_item), fresh.dense_id(newer_item));
    assert_eq!(
        back.external_ids(n_items).unwrap(),
        fresh.external_ids(n_items).unwrap()
    );
    back.with_live(|b| {
        fresh.with_live(|f| {
            assert_eq!(b.users(), f.users());
            assert_eq!(b.items(), f.items());
            assert_eq!(b.hidden(UserId(4)), f.hidden(UserId(4)));
        })
    });
    for u in 0..12 {
        let (a, b) = (
            fresh.recommend(UserId(u), &opts).unwrap(),
            back.recommend(UserId(u), &opts).unwrap(),
        );
        let ids = |r: &[ranker::Recommendation]| r.iter().map(|x| x.item).collect::<Vec<_>>();
        assert_eq!(ids(&a), ids(&b), "user {u}");
    }
    assert!(
        back.recommend(UserId(4), &opts)
            .unwrap()
            .iter()
            .all(|r| r.item != hidden)
    );
    // It refits like the original: the refresher came back attached.
    let refit = back.plan_refit(1).unwrap().run(|_| {}).unwrap();
    assert!(refreshed(&back, refit, "refit-2", None, None, &store, &options(true)).is_ok());

    // Over another generation than the one it was saved serving: refused.
    let cpu = DeviceSpec::Cpu.select().unwrap();
    let loaded = Refresher::load(dir.path(), &cpu, options(true).live, None)
        .unwrap()
        .unwrap();
    let other = store.generation("lightgcn").unwrap();
    let err = Recommender::restore(loaded, other, None, options(true).interests).unwrap_err();
    assert!(matches!(err, Error::Config { .. }), "{err}");
    // Over the same generation changed since (its first item deleted): refused, not
    // served with shifted ids.
    let first = store
        .generation("refit-1")
        .unwrap()
        .iter_live()
        .next()
        .unwrap()
        .0;
    let mut w = store.writer().unwrap();
    w.delete("refit-1", &[first]).unwrap();
    w.commit().unwrap();
    // (the restored recommender holds the directory until dropped)
    drop(back);
    let err = restore(dir.path(), &store, &options(true)).unwrap_err();
    assert!(err.to_string().contains("changed since"), "{err}");
    // Nothing saved: None.
    let empty = tempfile::tempdir().unwrap();
    assert!(
        restore(empty.path(), &store, &options(true))
            .unwrap()
            .is_none()
    );
}
