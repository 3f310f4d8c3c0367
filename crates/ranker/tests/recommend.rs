//! The request path end to end on the built-in catalogue: explanations, filters,
//! caps, the feedback loop, exact vs HNSW retrieval, typed errors.

use std::sync::Arc;

use embed_store::hnsw::HnswParams;
use embed_store::{RamDirectory, Store};
use mosaic_testkit::catalogue::{Catalogue, CatalogueSpec};
use ranker::pipeline::{Attrs, PipelineOptions, build};
use ranker::{RecommendOptions, Recommender, Source, Sources};
use taste_graph::{InteractionKind, LightGcnConfig, UserId};

fn setup(hnsw: bool) -> (Catalogue, Recommender) {
    let cat = Catalogue::generate(CatalogueSpec {
        styles: 8,
        items_per_style: 120,
        users: 300,
        events_per_user: 24,
        dim: 16,
        seed: 3,
    })
    .unwrap();
    let (graph, _) = cat.split(0.75).unwrap();
    let store = Store::open(Arc::new(RamDirectory::new())).unwrap();
    let opts = PipelineOptions {
        lightgcn: LightGcnConfig::new()
            .dim(16)
            .layers(2)
            .batch_size(512)
            .lr(0.05)
            .seed(1),
        epochs: 40,
        hnsw: hnsw.then(HnswParams::default),
        ..PipelineOptions::default()
    };
    let ids: Vec<u64> = (0..cat.n_items() as u64).map(|i| 10_000 + i).collect();
    let attrs = Attrs {
        values: &cat.style,
        n_attrs: 1,
    };
    let (rec, _) = build(&graph, Some(ids), Some(attrs), &store, &opts, |_, _| {}).unwrap();
    (cat, rec)
}

fn style_of(cat: &Catalogue, ext: u64) -> u32 {
    cat.style[(ext - 10_000) as usize]
}

#[test]
fn engaging_with_a_new_style_shifts_the_next_recommendations() {
    let (cat, rec) = setup(false);
    let opts = RecommendOptions::new().k(20);
    let mut shifted = 0;
    let users = [0u32, 1, 2, 3, 4, 5];
    for &u in &users {
        let user = UserId(u);
        let touched: Vec<u32> = rec.with_live(|l| {
            l.seen(user)
                .iter()
                .map(|&i| cat.style[i as usize])
                .collect()
        });
        let new_style = (0..8).find(|s| !touched.contains(s)).unwrap();
        let share = |recs: &[ranker::Recommendation]| {
            recs.iter()
                .filter(|r| style_of(&cat, r.item) == new_style)
                .count() as f32
                / recs.len() as f32
        };
        let before = rec.recommend(user, &opts).unwrap();
        let t0 = rec.with_live(|l| l.last_time(user).unwrap());
        // The user saves six of the style's most engaged items (what a feed shows).
        let mut pool: Vec<taste_graph::ItemId> = cat.items_of_style(new_style).collect();
        rec.with_live(|l| pool.sort_by_key(|i| std::cmp::Reverse(l.item_counts()[i.index()])));
        for (k, item) in pool.iter().take(6).enumerate() {
            rec.record(
                u64::from(user.0),
                10_000 + item.0 as u64,
                InteractionKind::Save,
                t0 + 60 * k as u64,
            )
            .unwrap();
        }
        let after = rec.recommend(user, &opts).unwrap();
        eprintln!(
            "user {u}: style {new_style} share {:.2} -> {:.2}",
            share(&before),
            share(&after)
        );
        assert!(share(&before) <= 0.1);
        if share(&after) >= share(&before) + 0.2 {
            shifted += 1;
        }
        // The new taste shows as an interest whose medoid is one of the new items.
        let interests = rec.interests(user, None).unwrap();
        assert!(
            interests
                .iter()
                .any(|(m, _)| style_of(&cat, *m) == new_style)
        );
    }
    assert!(
        shifted >= 5,
        "only {shifted} of {} users shifted",
        users.len()
    );
}

#[test]
fn results_are_explained_filtered_capped_and_unique() {
    let (cat, rec) = setup(false);
    let user = UserId(7);
    let seen: Vec<u64> =
        rec.with_live(|l| l.seen(user).iter().map(|&i| 10_000 + i as u64).collect());
    let recs = rec.recommend(user, &RecommendOptions::new().k(30)).unwrap();
    assert_eq!(recs.len(), 30);
    let mut ids: Vec<u64> = recs.iter().map(|r| r.item).collect();
    assert!(
        ids.iter().all(|i| !seen.contains(i)),
        "seen items are excluded"
    );
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 30, "no duplicates");
    for r in &recs {
        assert!(r.parts.relevance <= 1.0 + 1e-6);
        if let Source::Interest {
            medoid, importance, ..
        } = r.source
        {
            assert!(
                seen.contains(&medoid),
                "a medoid is one of the user's items"
            );
            assert!(importance > 0.0 && importance <= 1.0);
        }
    }
    // Blocked ids, an attribute rule and a cap.
    let blocked: Vec<u64> = recs.iter().take(5).map(|r| r.item).collect();
    let top_style = style_of(&cat, recs[0].item);
    let opts = RecommendOptions::new()
        .k(30)
        .blocked(blocked.clone())
        .rule(Arc::new(move |a: &[u32]| a[0] != (top_style + 1) % 8))
        .cap(0, 4);
    let recs2 = rec.recommend(user, &opts).unwrap();
    assert!(recs2.iter().all(|r| !blocked.contains(&r.item)));
    assert!(
        recs2
            .iter()
            .all(|r| style_of(&cat, r.item) != (top_style + 1) % 8)
    );
    for s in 0..8 {
        assert!(recs2.iter().filter(|r| style_of(&cat, r.item) == s).count() <= 4);
    }
    // Lower λ: more diverse lists.
    let div = |lambda: f32| {
        let r = rec
            .recommend(user, &RecommendOptions::new().k(20).lambda(lambda))
            .unwrap();
        let mut styles: Vec<u32> = r.iter().map(|r| style_of(&cat, r.item)).collect();
        styles.sort_unstable();
        styles.dedup();
        styles.len()
    };
    assert!(div(0.3) > div(1.0), "MMR spreads the list over more styles");
    // Popularity only: everything from the popular source.
    let pop = rec
        .recommend(
            user,
            &RecommendOptions::new().sources(Sources::popular_only()),
        )
        .unwrap();
    assert!(pop.iter().all(|r| r.source == Source::Popular));
}

#[test]
fn hnsw_retrieval_agrees_with_exact_retrieval() {
    let (_, exact) = setup(false);
    let (_, ann) = setup(true);
    let opts = RecommendOptions::new().k(20).lambda(1.0);
    let mut overlap = 0;
    for u in 0..20 {
        let a: Vec<u64> = exact
            .recommend(UserId(u), &opts)
            .unwrap()
            .iter()
            .map(|r| r.item)
            .collect();
        let b: Vec<u64> = ann
            .recommend(UserId(u), &opts)
            .unwrap()
            .iter()
            .map(|r| r.item)
            .collect();
        overlap += a.iter().filter(|i| b.contains(i)).count();
    }
    assert!(overlap as f32 / 400.0 >= 0.9, "overlap {overlap} / 400");
}

#[test]
fn new_users_new_items_and_bad_requests() {
    let (_, rec) = setup(false);
    let n = rec.n_users() as u32;
    let err = rec
        .recommend(UserId(n), &RecommendOptions::new())
        .unwrap_err();
    assert!(err.to_string().contains("unknown user"), "{err}");
    // A brand-new user gets popular items until they act.
    rec.record(u64::from(n), 10_005, InteractionKind::Click, 5)
        .unwrap();
    let recs = rec.recommend(UserId(n), &RecommendOptions::new()).unwrap();
    assert_eq!(recs.len(), 20);
    // An unknown external item joins the taste graph.
    let before = rec.with_live(|l| l.n_items());
    rec.record(0, 99_999_999, InteractionKind::Click, 10)
        .unwrap();
    assert_eq!(rec.with_live(|l| l.n_items()), before + 1);
    // Any id the taste graph does not know is a new user: the next dense one.
    rec.record(
        u64::from(n) + 5_000_000_000,
        10_000,
        InteractionKind::Click,
        1,
    )
    .unwrap();
    assert_eq!(rec.user(u64::from(n) + 5_000_000_000), Some(UserId(n + 1)));
    assert_eq!(
        rec.external_user(UserId(n + 1)),
        Some(u64::from(n) + 5_000_000_000)
    );
    assert_eq!(rec.user(u64::from(n)), Some(UserId(n)));
    for bad in [
        RecommendOptions::new().k(0),
        RecommendOptions::new().k(50).candidates(10),
        RecommendOptions::new().lambda(1.5),
        RecommendOptions::new().cap(0, 0),
        RecommendOptions::new().sources(Sources {
            interests: 0.0,
            taste: 0.0,
            popular: 0.0,
            fresh: 0.0,
        }),
    ] {
        let e = rec.recommend(UserId(0), &bad).unwrap_err();
        assert!(e.to_string().contains("invalid ranker option"), "{e}");
    }
}

#[test]
fn offline_evaluation_ranks_personalised_variants_above_popularity() {
    use ranker::eval::{evaluate, markdown, standard_variants};
    let cat = Catalogue::generate(CatalogueSpec {
        styles: 16,
        items_per_style: 60,
        users: 400,
        events_per_user: 24,
        dim: 16,
        seed: 5,
    })
    .unwrap();
    let (train, test) = cat.holdout(4).unwrap();
    assert!(test.n_edges() > 1000);
    // A validation split of the training data fits the learned scorer.
    let (train, valid) = ranker::eval::split_every(&train, 6).unwrap();
    let store = Store::open(Arc::new(RamDirectory::new())).unwrap();
    let opts = PipelineOptions {
        lightgcn: LightGcnConfig::new()
            .dim(16)
            .layers(2)
            .batch_size(512)
            .lr(0.05)
            .seed(1),
        epochs: 40,
        ..PipelineOptions::default()
    };
    let (rec, _) = build(&train, None, None, &store, &opts, |_, _| {}).unwrap();
    let examples =
        ranker::eval::scorer_examples(&rec, &valid, &RecommendOptions::new(), 400).unwrap();
    let scorer = Arc::new(ranker::scorer::LearnedScorer::fit(&examples, 1e-2).unwrap());
    let mut variants = standard_variants();
    variants.push(ranker::eval::learned_variant(scorer));
    let rows = evaluate(&rec, &test, &variants, 20, None).unwrap();
    eprintln!("{}", markdown(&rows, 20));
    let by = |n: &str| rows.iter().find(|r| r.name == n).unwrap();
    for r in &rows {
        assert!((0.0..=1.0).contains(&r.recall) && (0.0..=1.0).contains(&r.ndcg));
        assert!((0.0..=1.0).contains(&r.coverage) && r.users == 400);
    }
    let pop = by("popularity");
    for n in [
        "single embedding",
        "multi-interest",
        "multi-interest + MMR",
        "multi-interest + MMR + learned scorer",
    ] {
        assert!(by(n).recall > 1.3 * pop.recall, "{n} vs popularity");
        assert!(
            by(n).coverage > pop.coverage,
            "{n} covers more of the catalogue"
        );
    }
    assert!(by("multi-interest + MMR").diversity > by("multi-interest").diversity);
    // pure popularity: each list in decreasing engagement, whoever the user
    let popularity = &variants[0].options;
    for u in [0u32, 7, 99] {
        let items = rec.recommend(UserId(u), &popularity.clone().k(20)).unwrap();
        let count = |id: u64| rec.with_live(|l| l.item_counts()[rec.dense_id(id).unwrap().index()]);
        let counts: Vec<u32> = items.iter().map(|r| count(r.item)).collect();
        assert!(
            counts.windows(2).all(|w| w[0] >= w[1]),
            "user {u}: {counts:?}"
        );
    }
    assert!(evaluate(&rec, &test, &standard_variants(), 0, None).is_err());
}

#[test]
fn the_fresh_source_brings_new_items_matching_the_taste() {
    let cat = Catalogue::generate(CatalogueSpec {
        styles: 8,
        items_per_style: 40,
        users: 100,
        events_per_user: 16,
        dim: 16,
        seed: 9,
    })
    .unwrap();
    let (graph, _) = cat.split(0.75).unwrap();
    let store = Store::open(Arc::new(RamDirectory::new())).unwrap();
    let opts = PipelineOptions {
        lightgcn: LightGcnConfig::new()
            .dim(16)
            .layers(2)
            .batch_size(256)
            .lr(0.05)
            .seed(1),
        epochs: 10,
        ..PipelineOptions::default()
    };
    let (rec, _) = build(&graph, None, None, &store, &opts, |_, _| {}).unwrap();
    let user = UserId(4);
    let live = rec.with_live(|l| l.clone());
    let taste = live.user(user).unwrap().to_vec();
    // Ten new items in a later commit: five along the user's taste, five against it.
    let mut w = store.writer().unwrap();
    let mut rows = Vec::new();
    for k in 0..10 {
        let sign = if k < 5 { 1.0 } else { -1.0 };
        rows.extend(taste.iter().map(|x| sign * x * (1.0 + 0.01 * k as f32)));
    }
    let new_ids: Vec<embed_store::ItemId> =
        (0..10).map(|k| embed_store::ItemId(50_000 + k)).collect();
    w.put_many("lightgcn", &new_ids, &rows, None).unwrap();
    w.commit().unwrap();
    drop(w);
    let snap = store.generation("lightgcn").unwrap();
    let fresh =
        Recommender::new(snap, None, live, None, taste_graph::InterestConfig::new()).unwrap();
    let only_fresh = Sources {
        interests: 0.0,
        taste: 0.0,
        popular: 0.0,
        fresh: 1.0,
    };
    let recs = fresh
        .recommend(
            user,
            &RecommendOptions::new()
                .k(5)
                .candidates(5)
                .sources(only_fresh)
                .lambda(1.0),
        )
        .unwrap();
    assert!(recs.iter().all(|r| r.source == Source::Fresh));
    let mut got: Vec<u64> = recs.iter().map(|r| r.item).collect();
    got.sort_unstable();
    assert_eq!(
        got,
        (50_000..50_005).collect::<Vec<u64>>(),
        "the five along the taste"
    );
    // In the default mix the fresh source is off.
    let recs = fresh.recommend(user, &RecommendOptions::new()).unwrap();
    assert!(recs.iter().all(|r| r.source != Source::Fresh));
}

#[test]
fn an_index_saved_in_an_older_format_is_rebuilt_a_damaged_one_is_an_error() {
    use embed_store::hnsw::Hnsw;
    use embed_store::{GenerationSpec, ItemId, Metric, StorageType};
    use ranker::pipeline::index_for;

    let dir = Arc::new(RamDirectory::new());
    let store = Store::open(dir.clone()).unwrap();
    let mut w = store.writer().unwrap();
    w.create_generation(GenerationSpec::new("g", 4, StorageType::F32))
        .unwrap();
    let ids: Vec<ItemId> = (0..50).map(ItemId).collect();
    let rows: Vec<f32> = (0..200).map(|i| ((i * 37 % 11) as f32) - 5.0).collect();
    w.put_many("g", &ids, &rows, None).unwrap();
    w.set_current("g").unwrap();
    w.commit().unwrap();
    drop(w);
    let snap = store.snapshot().unwrap();
    let params = HnswParams::default();
    let first = index_for(&store, &snap, params).unwrap();
    let name = Hnsw::file_name("g", snap.version(), Metric::Cosine);
    // Version 1 (bytes 8..12 after the magic): refused by load, rebuilt by index_for.
    dir.tamper(&name, |b| b[8..12].copy_from_slice(&1u32.to_le_bytes()))
        .unwrap();
    assert!(matches!(
        Hnsw::load(store.directory(), &snap, Metric::Cosine),
        Err(embed_store::Error::Version { found: 1, .. })
    ));
    let rebuilt = index_for(&store, &snap, params).unwrap();
    assert_eq!(rebuilt.len(), first.len());
    assert!(
        Hnsw::load(store.directory(), &snap, Metric::Cosine)
            .unwrap()
            .is_some()
    );
    // A flipped data byte is not silently rebuilt over.
    dir.tamper(&name, |b| {
        let last = b.len() - 1;
        b[last] ^= 0x40;
    })
    .unwrap();
    assert!(index_for(&store, &snap, params).is_err());
}
