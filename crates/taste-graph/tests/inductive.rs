//! Inductive item embeddings ([`ContentAggregator`]): cold items embedded from content
//! must be ranked far better than random or mean embeddings, a few neighbours must not
//! hurt, the hand-written gradient must match finite differences, bad input must give
//! typed errors, and the live model must use the aggregator consistently.

use taste_graph::inductive::Example;
use taste_graph::inductive::{AggregatorConfig, Neighbours};
use taste_graph::{
    BipartiteGraph, ContentAggregator, Error, InteractionKind, ItemId, LightGcn, LightGcnConfig,
    LiveConfig, LiveModel, Trainer, UserId, evaluate,
};

mod common;
use common::Lcg;

const CLUSTERS: u64 = 8;
const ITEMS: usize = 480;
const COLD: usize = 72; // 15 %: ids ITEMS - COLD .. ITEMS are never in the training graph
const USERS: usize = 600;
const PER_USER: usize = 24;
const CONTENT: usize = 24; // 16 cluster dims + 8 noise dims
const DIM: usize = 16;
const OBSERVED: usize = 3; // neighbours revealed per cold item in the "few clicks" case

/// A clustered catalogue. Each item has a cluster and a sub-cluster (a half of the
/// cluster); content = cluster centroid + noise, plus pure-noise columns — it carries
/// the cluster but not the sub-cluster. Each user has a (cluster, sub-cluster) and
/// sometimes a second cluster.
struct Data {
    content: Vec<f32>,
    /// (user, item) pairs, item in the full id space.
    edges: Vec<(u32, u32)>,
}

fn data() -> Data {
    let mut rng = Lcg(2024);
    let centroids: Vec<f32> = (0..CLUSTERS as usize * 16).map(|_| rng.normal()).collect();
    let mut by_group: Vec<Vec<u32>> = vec![Vec::new(); CLUSTERS as usize * 2];
    let mut content = Vec::with_capacity(ITEMS * CONTENT);
    for i in 0..ITEMS {
        let (c, s) = (rng.below(CLUSTERS) as usize, rng.below(2) as usize);
        by_group[c * 2 + s].push(i as u32);
        for k in 0..16 {
            content.push(centroids[c * 16 + k] + 0.5 * rng.normal());
        }
        for _ in 16..CONTENT {
            content.push(rng.normal());
        }
    }
    let mut edges = Vec::new();
    for u in 0..USERS as u32 {
        let a = rng.below(CLUSTERS) as usize;
        let s = rng.below(2) as usize;
        let b = (rng.below(10) < 4).then(|| (a + 1 + rng.below(CLUSTERS - 1) as usize) % 8);
        let mut items: Vec<u32> = Vec::new();
        while items.len() < PER_USER {
            let r = rng.below(100);
            let group = if r < 55 {
                Some(a * 2 + s)
            } else if r < 75 {
                Some(a * 2 + 1 - s)
            } else if r < 95 {
                Some(b.unwrap_or(a) * 2 + rng.below(2) as usize)
            } else {
                None
            };
            let i = match group {
                Some(g) => by_group[g][rng.below(by_group[g].len() as u64) as usize],
                None => rng.below(ITEMS as u64) as u32,
            };
            if !items.contains(&i) {
                items.push(i);
            }
        }
        edges.extend(items.into_iter().map(|i| (u, i)));
    }
    Data { content, edges }
}

fn graph(n_items: usize, edges: impl IntoIterator<Item = (u32, u32)>) -> BipartiteGraph {
    BipartiteGraph::from_edges(
        USERS,
        n_items,
        edges.into_iter().map(|(u, i)| (UserId(u), ItemId(i))),
    )
    .unwrap()
}

fn train_lightgcn(g: &BipartiteGraph) -> LightGcn {
    let cfg = LightGcnConfig::new()
        .dim(DIM)
        .layers(3)
        .batch_size(256)
        .lr(0.01)
        .seed(7);
    let mut t = Trainer::new(g, &cfg).unwrap();
    for _ in 0..30 {
        t.train_epoch(|_, _| {}).unwrap();
    }
    t.into_model()
}

#[test]
fn cold_items_from_content_rank_far_better_than_baselines() {
    let Data { content, edges } = data();
    let warm = ITEMS - COLD;
    let train = graph(
        warm,
        edges.iter().copied().filter(|&(_, i)| (i as usize) < warm),
    );
    let model = train_lightgcn(&train);
    let emb = model.propagate().unwrap();
    let (users, items) = (emb.users(), emb.items());

    let cfg = AggregatorConfig::new().seed(1);
    let (agg, report) =
        ContentAggregator::fit(&model, &train, &content[..warm * CONTENT], CONTENT, &cfg).unwrap();
    eprintln!(
        "fit: {}+{} items, best epoch {}, val {:.5}, loss {:.5} -> {:.5} (mean-target baseline {:.5}), rho {:.3} (residual {:.4}), {:.2}s",
        report.items,
        report.validation_items,
        report.best_epoch,
        report
            .validation_loss
            .get(report.best_epoch.wrapping_sub(1))
            .copied()
            .unwrap_or(f64::NAN),
        report.epoch_loss[0],
        report.epoch_loss.last().unwrap(),
        report.baseline_loss,
        report.fold_ratio,
        report.fold_residual,
        report.seconds
    );
    assert!(*report.epoch_loss.last().unwrap() < 0.8 * report.baseline_loss);

    // Cold items, local ids 0..COLD. For each, the first OBSERVED users (in edge order)
    // are "a few clicks"; they are excluded from the ranking and the rest is the test.
    let mut users_of: Vec<Vec<u32>> = vec![Vec::new(); COLD];
    for &(u, i) in &edges {
        if i as usize >= warm {
            users_of[i as usize - warm].push(u);
        }
    }
    let observed: Vec<&[u32]> = users_of
        .iter()
        .map(|v| &v[..OBSERVED.min(v.len())])
        .collect();
    let seen = graph(
        COLD,
        observed
            .iter()
            .enumerate()
            .flat_map(|(j, us)| us.iter().map(move |&u| (u, j as u32))),
    );
    let test = graph(
        COLD,
        users_of.iter().enumerate().flat_map(|(j, us)| {
            us[OBSERVED.min(us.len())..]
                .iter()
                .map(move |&u| (u, j as u32))
        }),
    );
    let cold_content = &content[warm * CONTENT..];
    let ks = [5, 10];
    let metrics = |table: &[f32]| evaluate(users, table, DIM, &seen, &test, &ks).unwrap();

    // Baselines: random vectors of the trained items' scale, and the mean item.
    let scale = (items.iter().map(|x| x * x).sum::<f32>() / items.len() as f32).sqrt();
    let mut rng = Lcg(99);
    let random: Vec<f32> = (0..COLD * DIM).map(|_| scale * rng.normal()).collect();
    let mut mean_item = vec![0f32; DIM];
    for row in items.chunks_exact(DIM) {
        mean_item
            .iter_mut()
            .zip(row)
            .for_each(|(m, x)| *m += x / warm as f32);
    }
    let mean_table: Vec<f32> = (0..COLD).flat_map(|_| mean_item.clone()).collect();
    // The live model's old provisional embedding: the mean of the observed users.
    let mut neigh_only = vec![0f32; COLD * DIM];
    for (j, us) in observed.iter().enumerate() {
        for &u in us.iter() {
            let row = &users[u as usize * DIM..(u as usize + 1) * DIM];
            for c in 0..DIM {
                neigh_only[j * DIM + c] += row[c] / us.len() as f32;
            }
        }
    }
    let content_only = agg.embed_all(cold_content).unwrap();
    let mut with_neigh = Vec::with_capacity(COLD * DIM);
    for (j, us) in observed.iter().enumerate() {
        let x = &cold_content[j * CONTENT..(j + 1) * CONTENT];
        with_neigh.extend(agg.embed_with_users(x, users, us).unwrap());
    }

    let rows = [
        ("random", metrics(&random)),
        ("mean item", metrics(&mean_table)),
        ("users only (3)", metrics(&neigh_only)),
        ("content only", metrics(&content_only)),
        ("content + 3 users", metrics(&with_neigh)),
    ];
    for (name, m) in &rows {
        eprintln!(
            "{name:>18}: recall@5 {:.4} ndcg@5 {:.4} recall@10 {:.4} ndcg@10 {:.4} ({} users)",
            m[0].recall, m[0].ndcg, m[1].recall, m[1].ndcg, m[1].users
        );
    }
    let r10 = |k: usize| rows[k].1[1].recall;
    let n10 = |k: usize| rows[k].1[1].ndcg;
    assert!(
        r10(3) >= 3.0 * r10(0),
        "content {} vs random {}",
        r10(3),
        r10(0)
    );
    assert!(
        r10(3) >= 3.0 * r10(1),
        "content {} vs mean {}",
        r10(3),
        r10(1)
    );
    assert!(
        r10(4) >= 0.97 * r10(3) && n10(4) >= 0.97 * n10(3),
        "a few users must not hurt: {} / {} vs {} / {}",
        r10(4),
        n10(4),
        r10(3),
        n10(3)
    );
    // With content this clean, three users' mean alone is about as good; content must
    // at least not drag it down.
    assert!(r10(4) >= 0.97 * r10(2), "content + users vs users alone");

    // The same through the live model: items added with content get exactly the
    // content-only embedding, and streaming the observed clicks refines them.
    let mut live = LiveModel::new(&model, &train, LiveConfig::new(), 0).unwrap();
    live.set_aggregator(agg.clone()).unwrap();
    for j in 0..COLD {
        let id = live
            .add_item_with_content(&cold_content[j * CONTENT..(j + 1) * CONTENT])
            .unwrap();
        assert_eq!(id.index(), warm + j);
    }
    assert_eq!(&live.items()[warm * DIM..], &content_only[..]);
    for (j, us) in observed.iter().enumerate() {
        for &u in us.iter() {
            live.observe(
                UserId(u),
                ItemId((warm + j) as u32),
                InteractionKind::Click,
                1,
            )
            .unwrap();
        }
    }
    let streamed = evaluate(
        live.users(),
        &live.items()[warm * DIM..],
        DIM,
        &seen,
        &test,
        &ks,
    )
    .unwrap();
    eprintln!(
        "  live, 3 clicks streamed: recall@10 {:.4} ndcg@10 {:.4}",
        streamed[1].recall, streamed[1].ndcg
    );
    assert!(streamed[1].recall >= 3.0 * r10(0));
}

/// The loss in f64 from the documented parameter layout, independently of the crate.
fn reference_loss(p: &[f64], batch: &[Example<'_>], c: usize, d: usize, h: usize) -> f64 {
    let nin = c + d + 2;
    let (w1, b1) = (&p[..h * nin], &p[h * nin..h * nin + h]);
    let w2 = &p[h * nin + h..h * nin + h + d * h];
    let b2 = &p[h * nin + h + d * h..];
    let mut loss = 0.0;
    for ex in batch {
        let mut z: Vec<f64> = ex.content.iter().map(|&x| x as f64).collect();
        match ex.neighbours {
            Some(n) => {
                z.extend(n.mean.iter().map(|&x| x as f64));
                z.push(1.0);
                z.push(1.0 / (n.count as f64).sqrt());
            }
            None => z.extend(std::iter::repeat_n(0.0, d + 2)),
        }
        let r: Vec<f64> = (0..h)
            .map(|j| (b1[j] + (0..nin).map(|k| w1[j * nin + k] * z[k]).sum::<f64>()).max(0.0))
            .collect();
        for o in 0..d {
            let out = b2[o] + (0..h).map(|j| w2[o * h + j] * r[j]).sum::<f64>();
            loss += (out - ex.target[o] as f64).powi(2);
        }
    }
    loss / (batch.len() * d) as f64
}

#[test]
fn hand_written_gradient_matches_finite_differences() {
    let (c, d, h) = (5, 3, 7);
    let mut agg = ContentAggregator::new(c, d, &AggregatorConfig::new().hidden(h)).unwrap();
    let mut rng = Lcg(5);
    let params: Vec<f32> = (0..agg.params().len())
        .map(|_| 0.5 * rng.normal())
        .collect();
    agg.set_params(&params).unwrap();
    let vals: Vec<f32> = (0..200).map(|_| rng.normal()).collect();
    let batch = [
        Example {
            content: &vals[0..5],
            neighbours: None,
            target: &vals[5..8],
        },
        Example {
            content: &vals[10..15],
            neighbours: Some(Neighbours {
                mean: &vals[15..18],
                count: 1,
            }),
            target: &vals[20..23],
        },
        Example {
            content: &vals[30..35],
            neighbours: Some(Neighbours {
                mean: &vals[35..38],
                count: 9,
            }),
            target: &vals[40..43],
        },
        Example {
            content: &vals[50..55],
            neighbours: None,
            target: &vals[55..58],
        },
    ];
    let (loss, grad) = agg.loss_and_grad(&batch).unwrap();
    let p64: Vec<f64> = params.iter().map(|&x| x as f64).collect();
    let l64 = reference_loss(&p64, &batch, c, d, h);
    assert!((loss - l64).abs() <= 1e-5 * l64.max(1.0), "{loss} vs {l64}");
    let eps = 1e-6;
    let mut worst = 0f64;
    for k in 0..p64.len() {
        let (mut up, mut down) = (p64.clone(), p64.clone());
        up[k] += eps;
        down[k] -= eps;
        let fd = (reference_loss(&up, &batch, c, d, h) - reference_loss(&down, &batch, c, d, h))
            / (2.0 * eps);
        let err = (grad[k] as f64 - fd).abs() / (fd.abs() + 1e-3);
        worst = worst.max(err);
        assert!(err < 1e-3, "param {k}: analytic {} vs fd {fd}", grad[k]);
    }
    eprintln!("worst relative gradient error {worst:.2e}");
    // Some parameters must actually receive gradient (relu not all off).
    assert!(grad.iter().filter(|g| g.abs() > 1e-6).count() > grad.len() / 3);
}

fn tiny() -> (LightGcn, BipartiteGraph, Vec<f32>) {
    let mut rng = Lcg(3);
    let edges: Vec<(u32, u32)> = (0..300)
        .map(|_| (rng.below(40) as u32, rng.below(30) as u32))
        .collect();
    let g = BipartiteGraph::from_edges(
        40,
        30,
        edges.into_iter().map(|(u, i)| (UserId(u), ItemId(i))),
    )
    .unwrap();
    let model = LightGcn::new(
        &g,
        &LightGcnConfig::new().dim(4).layers(2).init_std(0.3).seed(1),
    )
    .unwrap();
    let content: Vec<f32> = (0..30 * 6).map(|_| rng.normal()).collect();
    (model, g, content)
}

#[test]
fn bad_input_gives_typed_errors() {
    let (model, g, content) = tiny();
    for bad in [
        AggregatorConfig::new().hidden(0),
        AggregatorConfig::new().epochs(0),
        AggregatorConfig::new().batch_size(0),
        AggregatorConfig::new().neighbour_dropout(1.5),
        AggregatorConfig::new().neighbour_dropout(f32::NAN),
        AggregatorConfig::new().lr(-1.0),
        AggregatorConfig::new().validation(1.0),
    ] {
        assert!(
            matches!(
                ContentAggregator::fit(&model, &g, &content, 6, &bad),
                Err(Error::Config { .. })
            ),
            "{bad:?}"
        );
    }
    let cfg = AggregatorConfig::new().epochs(2);
    let fit = |content: &[f32], c: usize| ContentAggregator::fit(&model, &g, content, c, &cfg);
    assert!(matches!(fit(&content[..100], 6), Err(Error::Shape { .. })));
    assert!(matches!(fit(&content, 0), Err(Error::Shape { .. })));
    let mut nan = content.clone();
    nan[17] = f32::NAN;
    let err = fit(&nan, 6).unwrap_err();
    assert!(matches!(err, Error::NonFinite { .. }), "{err}");
    assert!(err.to_string().contains("item 2 feature 5"), "{err}");
    let other = BipartiteGraph::from_edges(40, 31, []).unwrap();
    assert!(matches!(
        ContentAggregator::fit(&model, &other, &content, 6, &cfg),
        Err(Error::Graph { .. })
    ));
    let empty = BipartiteGraph::from_edges(40, 30, []).unwrap();
    let empty_model = LightGcn::new(&empty, &LightGcnConfig::new().dim(4)).unwrap();
    assert!(matches!(
        ContentAggregator::fit(&empty_model, &empty, &content, 6, &cfg),
        Err(Error::Graph { .. })
    ));
    assert!(matches!(
        ContentAggregator::new(0, 4, &cfg),
        Err(Error::Shape { .. })
    ));

    let (agg, _) = fit(&content, 6).unwrap();
    let x = &content[..6];
    let m = [0.1f32; 4];
    assert!(agg.embed(x, None).is_ok());
    assert!(matches!(
        agg.embed(&content[..5], None),
        Err(Error::Shape { .. })
    ));
    assert!(matches!(
        agg.embed(&[f32::NAN, 0., 0., 0., 0., 0.], None),
        Err(Error::NonFinite { .. })
    ));
    fn n(mean: &[f32], count: usize) -> Option<Neighbours<'_>> {
        Some(Neighbours { mean, count })
    }
    assert!(matches!(
        agg.embed(x, n(&[0.1; 3], 1)),
        Err(Error::Shape { .. })
    ));
    assert!(matches!(
        agg.embed(x, n(&[0.1; 4], 0)),
        Err(Error::Shape { .. })
    ));
    assert!(matches!(
        agg.embed(x, n(&[0.1, f32::INFINITY, 0.1, 0.1], 2)),
        Err(Error::NonFinite { .. })
    ));
    assert!(
        agg.embed(x, Some(Neighbours { mean: &m, count: 2 }))
            .is_ok()
    );
    assert!(matches!(
        agg.embed_all(&content[..7]),
        Err(Error::Shape { .. })
    ));
    let users = model.propagate().unwrap().users().to_vec();
    assert!(matches!(
        agg.embed_with_users(x, &users, &[40]),
        Err(Error::Graph { .. })
    ));
    assert!(matches!(
        agg.embed_with_users(x, &users[..5], &[0]),
        Err(Error::Shape { .. })
    ));
    assert_eq!(
        agg.embed_with_users(x, &users, &[]).unwrap(),
        agg.embed(x, None).unwrap()
    );
    let mut agg2 = agg.clone();
    assert!(matches!(
        agg2.set_params(&[0.0; 3]),
        Err(Error::Shape { .. })
    ));
    let mut p = agg.params().to_vec();
    p[0] = f32::NAN;
    assert!(matches!(agg2.set_params(&p), Err(Error::NonFinite { .. })));
    assert!(matches!(agg.loss_and_grad(&[]), Err(Error::Shape { .. })));
    let bad_target = [Example {
        content: x,
        neighbours: None,
        target: &m[..3],
    }];
    assert!(matches!(
        agg.loss_and_grad(&bad_target),
        Err(Error::Shape { .. })
    ));

    // Live model: content needs an aggregator of the right widths.
    let mut live = LiveModel::new(&model, &g, LiveConfig::new(), 0).unwrap();
    assert!(matches!(
        live.add_item_with_content(x),
        Err(Error::Config { .. })
    ));
    let wrong = ContentAggregator::new(6, 5, &cfg).unwrap();
    assert!(matches!(
        live.set_aggregator(wrong),
        Err(Error::Shape { .. })
    ));
    live.set_aggregator(agg.clone()).unwrap();
    assert!(matches!(
        live.add_item_with_content(&content[..5]),
        Err(Error::Shape { .. })
    ));
    assert!(matches!(
        live.add_item_with_content(&[f32::NAN; 6]),
        Err(Error::NonFinite { .. })
    ));
    assert_eq!(live.n_items(), 30, "failed adds add nothing");
    assert!(matches!(
        live.set_item_content(ItemId(3), x),
        Err(Error::Graph { .. })
    ));
    assert!(matches!(
        live.set_item_content(ItemId(30), x),
        Err(Error::Graph { .. })
    ));
    live.add_item_with_content(x).unwrap();
    let narrower = ContentAggregator::new(5, 4, &cfg).unwrap();
    assert!(matches!(
        live.set_aggregator(narrower),
        Err(Error::Shape { .. })
    ));
}

#[test]
fn fitting_is_deterministic_across_thread_counts() {
    let (model, g, content) = tiny();
    let cfg = AggregatorConfig::new()
        .epochs(5)
        .batch_size(20)
        .hidden(8)
        .seed(11);
    let run = |threads: usize| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
            .install(|| ContentAggregator::fit(&model, &g, &content, 6, &cfg).unwrap())
    };
    let (a, ra) = run(1);
    let (b, rb) = run(3);
    assert_eq!(a, b);
    assert_eq!(ra.epoch_loss, rb.epoch_loss);
    let (other, _) =
        ContentAggregator::fit(&model, &g, &content, 6, &cfg.clone().seed(12)).unwrap();
    assert_ne!(a.params(), other.params());
}

/// A live item with content: content-only at once; each click re-embeds it from the
/// content and the (weighted) mean of the clicking users' embeddings at the time; its
/// fold vector is `ρ h / √count`, which a new user folds in.
#[test]
fn live_items_with_content_follow_the_aggregator() {
    let (model, g, content) = tiny();
    let (agg, report) =
        ContentAggregator::fit(&model, &g, &content, 6, &AggregatorConfig::new().epochs(20))
            .unwrap();
    let rho = report.fold_ratio;
    assert_eq!(agg.fold_ratio(), Some(rho));
    let k = model.layers() as f32;
    let mut live = LiveModel::new(&model, &g, LiveConfig::new(), 0).unwrap();
    live.set_aggregator(agg.clone()).unwrap();
    let x: Vec<f32> = (0..6).map(|i| 0.3 * i as f32 - 0.7).collect();
    let item = live.add_item_with_content(&x).unwrap();
    assert_eq!(item, ItemId(30));
    assert_eq!(live.item_content(item), Some(&x[..]));
    assert_eq!(live.item(item).unwrap(), &agg.embed(&x, None).unwrap()[..]);

    // A brand-new user (zero embedding) clicks it: the item sees a zero mean over one
    // interaction, and the user becomes f_i / (K + 1) = ρ h_i / (K + 1).
    let newbie = UserId(40);
    live.observe(newbie, item, InteractionKind::Click, 1)
        .unwrap();
    let h1 = agg
        .embed(
            &x,
            Some(Neighbours {
                mean: &[0.0; 4],
                count: 1,
            }),
        )
        .unwrap();
    assert_eq!(live.item(item).unwrap(), &h1[..]);
    let want: Vec<f32> = h1.iter().map(|h| rho * h / (k + 1.0)).collect();
    let got = live.user(newbie).unwrap();
    assert!(
        got.iter().zip(&want).all(|(a, b)| (a - b).abs() < 1e-6),
        "{got:?} vs {want:?}"
    );

    // A trained user saves it (weight 2): the mean is weighted, the count is 2.
    let v = UserId(7);
    let ev = live.user(v).unwrap().to_vec();
    live.observe(v, item, InteractionKind::Save, 2).unwrap();
    let mean: Vec<f32> = ev.iter().map(|e| 2.0 * e / 3.0).collect();
    let h2 = agg
        .embed(
            &x,
            Some(Neighbours {
                mean: &mean,
                count: 2,
            }),
        )
        .unwrap();
    let got = live.item(item).unwrap();
    assert!(
        got.iter().zip(&h2).all(|(a, b)| (a - b).abs() < 1e-5),
        "{got:?} vs {h2:?}"
    );
    assert_eq!(live.item_counts()[30], 2);

    // An item that arrived through `observe` first gets its content later.
    let late = ItemId(31);
    live.observe(v, late, InteractionKind::Click, 3).unwrap();
    let before = live.item(late).unwrap().to_vec();
    let ev = live.user(v).unwrap().to_vec();
    live.set_item_content(late, &x).unwrap();
    assert_ne!(live.item(late).unwrap(), &before[..]);
    // Its mean is the user's embedding before that click.
    let h3 = agg
        .embed(
            &x,
            Some(Neighbours {
                mean: &before,
                count: 1,
            }),
        )
        .unwrap();
    assert_eq!(live.item(late).unwrap(), &h3[..]);
    assert_ne!(&ev, &before, "the user moved after the click");

    // Without an aggregator the old rule holds (tests/live.rs covers it in detail).
    let mut plain = LiveModel::new(&model, &g, LiveConfig::new(), 0).unwrap();
    plain
        .observe(v, ItemId(30), InteractionKind::Click, 1)
        .unwrap();
    assert_eq!(
        plain.item(ItemId(30)).unwrap(),
        live_user_before(&model, &g, v)
    );
}

/// User `v`'s embedding in a fresh live model.
fn live_user_before(model: &LightGcn, g: &BipartiteGraph, v: UserId) -> Vec<f32> {
    LiveModel::new(model, g, LiveConfig::new(), 0)
        .unwrap()
        .user(v)
        .unwrap()
        .to_vec()
}
