//! Real-time fold-in ([`LiveModel`]) and PinnerSage interests.

use taste_graph::interests::{cluster_items, ward};
use taste_graph::live::KindWeights;
use taste_graph::{
    BipartiteGraph, InteractionKind, InterestConfig, ItemId, LightGcn, LightGcnConfig, LiveConfig,
    LiveModel, Trainer, UserId, evaluate, interests,
};

mod common;
use common::{Lcg, random_graph};

fn close(a: &[f32], b: &[f32], tol: f32) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() <= tol)
}

#[test]
fn fold_in_reproduces_the_propagation_for_every_trained_user() {
    for layers in [0, 1, 3] {
        let g = random_graph(40, 30, 200, 3);
        let cfg = LightGcnConfig::new()
            .dim(8)
            .layers(layers)
            .init_std(0.3)
            .seed(5);
        let model = LightGcn::new(&g, &cfg).unwrap();
        let emb = model.propagate().unwrap();
        let live = LiveModel::new(&model, &g, LiveConfig::new(), 0).unwrap();
        assert!(close(live.users(), emb.users(), 1e-5), "layers {layers}");
        assert!(close(live.items(), emb.items(), 0.0));
    }
}

/// The fold-in of a new edge equals LightGCN's user formula with the items' layers
/// frozen, `(s E0_u + Σ_k Σ_i E(k-1)_i / √(d_u d_i)) / (K+1)` over the new
/// neighbourhood, where the ego keeps the training edges' share `s = (d_u - 1) / d_u`.
#[test]
fn observing_a_click_adds_the_edge_to_the_users_propagation() {
    let g = random_graph(30, 25, 150, 11);
    let (d, k) = (8, 3);
    let cfg = LightGcnConfig::new().dim(d).layers(k).init_std(0.3).seed(1);
    let model = LightGcn::new(&g, &cfg).unwrap();
    let (_, partial) = model.propagate_with_partial().unwrap();
    let ego = model.ego_table();
    let mut live = LiveModel::new(&model, &g, LiveConfig::new(), 100).unwrap();
    let u = UserId(4);
    let new_item = (0..25)
        .map(ItemId)
        .find(|&i| !g.has_edge(u, i) && !g.users_of(i).is_empty())
        .unwrap();
    live.observe(u, new_item, InteractionKind::Click, 100)
        .unwrap();

    let mut items: Vec<u32> = g.items_of(u).to_vec();
    items.push(new_item.0);
    let du = items.len() as f32;
    let nu = 30;
    // The trained ego keeps the training edges' share of the mass.
    let share = (du - 1.0) / du;
    let mut want: Vec<f32> = ego[u.index() * d..(u.index() + 1) * d]
        .iter()
        .map(|x| share * x)
        .collect();
    for &i in &items {
        let di = g.users_of(ItemId(i)).len() as f32;
        let row = &partial[(nu + i as usize) * d..(nu + i as usize + 1) * d];
        for c in 0..d {
            want[c] += row[c] / (du * di).sqrt();
        }
    }
    want.iter_mut().for_each(|x| *x /= (k + 1) as f32);
    assert!(close(live.user(u).unwrap(), &want, 1e-5));
    assert!(live.seen(u).contains(&new_item.0));
    assert_eq!(live.recent(u).last().unwrap().item, new_item);
    // Other users did not move.
    let emb = model.propagate().unwrap();
    assert!(close(
        live.user(UserId(5)).unwrap(),
        &emb.users()[5 * d..6 * d],
        1e-5
    ));
}

/// With `item_updates`, trained items start at LightGCN's propagation, and a new edge
/// adds the user's fold vector `g_u = (E0_u + … + E{K−1}_u) / √d_u` to the item's
/// neighbourhood: `e_i = (E0_i + Σ_u g_u / √(d_i + 1)) / (K + 1)`; a hide pushes the item
/// away from the user without changing its degree; a user added live folds in as
/// `K e_u / √C_u`. Without the option items never move.
#[test]
fn item_updates_add_the_edge_to_the_items_propagation() {
    let g = random_graph(30, 25, 150, 11);
    let (d, k, nu) = (8, 3, 30);
    for layers in [0, 1, 3] {
        let cfg = LightGcnConfig::new()
            .dim(d)
            .layers(layers)
            .init_std(0.3)
            .seed(2);
        let model = LightGcn::new(&g, &cfg).unwrap();
        let emb = model.propagate().unwrap();
        let on = LiveConfig::new().item_updates(true);
        let live = LiveModel::new(&model, &g, on, 0).unwrap();
        assert!(close(live.items(), emb.items(), 1e-5), "layers {layers}");
        assert!(close(live.users(), emb.users(), 1e-5), "layers {layers}");
    }
    let cfg = LightGcnConfig::new().dim(d).layers(k).init_std(0.3).seed(1);
    let model = LightGcn::new(&g, &cfg).unwrap();
    let (emb, partial) = model.propagate_with_partial().unwrap();
    let ego = model.ego_table();
    let fold = |u: usize| -> Vec<f32> {
        let du = g.items_of(UserId(u as u32)).len() as f32;
        partial[u * d..(u + 1) * d]
            .iter()
            .map(|x| x / du.sqrt())
            .collect()
    };
    // e_i over the training users of i plus `extra` (weighted fold vectors), degree `deg`.
    let item_with = |i: usize, extra: &[(f32, Vec<f32>)], deg: f32| -> Vec<f32> {
        let mut want = ego[(nu + i) * d..(nu + i + 1) * d].to_vec();
        let mut sum = vec![0f32; d];
        for &u in g.users_of(ItemId(i as u32)) {
            sum.iter_mut()
                .zip(fold(u as usize))
                .for_each(|(s, f)| *s += f);
        }
        for (w, f) in extra {
            sum.iter_mut().zip(f).for_each(|(s, f)| *s += w * f);
        }
        want.iter_mut()
            .zip(&sum)
            .for_each(|(e, s)| *e = (*e + s / deg.sqrt()) / (k + 1) as f32);
        want
    };
    let u = UserId(4);
    let i = (0..25)
        .map(ItemId)
        .find(|&i| !g.has_edge(u, i) && g.users_of(i).len() >= 2)
        .unwrap();
    let di = g.users_of(i).len() as f32;
    let other = (0..25u32).find(|&j| j != i.0).unwrap() as usize;
    let mut off = LiveModel::new(&model, &g, LiveConfig::new(), 0).unwrap();
    let mut live = LiveModel::new(&model, &g, LiveConfig::new().item_updates(true), 0).unwrap();
    for m in [&mut off, &mut live] {
        m.observe(u, i, InteractionKind::Click, 0).unwrap();
    }
    let want = item_with(i.index(), &[(1.0, fold(u.index()))], di + 1.0);
    assert!(close(live.item(i).unwrap(), &want, 1e-5));
    let trained = &emb.items()[i.index() * d..(i.index() + 1) * d];
    assert!(
        !close(live.item(i).unwrap(), trained, 1e-4),
        "the item moved"
    );
    assert!(
        close(off.item(i).unwrap(), trained, 0.0),
        "off: the item stays"
    );
    let o = &emb.items()[other * d..(other + 1) * d];
    assert!(close(live.item(ItemId(other as u32)).unwrap(), o, 1e-5));
    // The user's own fold-in is the same with or without item updates.
    assert!(close(live.user(u).unwrap(), off.user(u).unwrap(), 0.0));

    // A hide by another trained user: pushed away, degree unchanged.
    let v = (0..nu as u32)
        .map(UserId)
        .find(|&v| v != u && !g.has_edge(v, i) && !g.items_of(v).is_empty())
        .unwrap();
    live.observe(v, i, InteractionKind::Hide, 0).unwrap();
    let hide = KindWeights::default().of(InteractionKind::Hide);
    let extra = [(1.0, fold(u.index())), (hide, fold(v.index()))];
    assert!(close(
        live.item(i).unwrap(),
        &item_with(i.index(), &extra, di + 1.0),
        1e-5
    ));

    // A user added live: g = K e_u / √C_u from its embedding after the event.
    let new_user = UserId(nu as u32);
    live.observe(new_user, i, InteractionKind::Click, 0)
        .unwrap();
    let g_new: Vec<f32> = live
        .user(new_user)
        .unwrap()
        .iter()
        .map(|x| k as f32 * x)
        .collect();
    let mut extra = extra.to_vec();
    extra.push((1.0, g_new));
    let want = item_with(i.index(), &extra, di + 2.0);
    assert!(close(live.item(i).unwrap(), &want, 1e-5));
}

#[test]
fn time_decay_halves_the_weight_of_the_history_after_one_half_life() {
    let g = random_graph(20, 20, 100, 2);
    let (d, k) = (4, 2);
    let cfg = LightGcnConfig::new().dim(d).layers(k).init_std(0.3).seed(3);
    let model = LightGcn::new(&g, &cfg).unwrap();
    let (_, partial) = model.propagate_with_partial().unwrap();
    let ego = model.ego_table();
    let h = 1000.0;
    let mut live = LiveModel::new(&model, &g, LiveConfig::new().half_life(h), 0).unwrap();
    let u = UserId(7);
    let j = (0..20)
        .map(ItemId)
        .find(|&i| !g.has_edge(u, i) && !g.users_of(i).is_empty())
        .unwrap();
    live.observe(u, j, InteractionKind::Save, 1000).unwrap();
    let f = |i: u32| {
        let di = g.users_of(ItemId(i)).len() as f32;
        partial[(20 + i as usize) * d..(20 + i as usize + 1) * d]
            .iter()
            .map(|x| x / di.sqrt())
            .collect::<Vec<f32>>()
    };
    let old = g.items_of(u);
    let w_save = KindWeights::default().save;
    let mass = 0.5 * old.len() as f32 + w_save;
    let count = (old.len() + 1) as f32;
    let mut s = vec![0f32; d];
    for &i in old {
        s.iter_mut().zip(f(i)).for_each(|(s, v)| *s += 0.5 * v);
    }
    s.iter_mut().zip(f(j.0)).for_each(|(s, v)| *s += w_save * v);
    let want: Vec<f32> = (0..d)
        .map(|c| {
            let share = 0.5 * old.len() as f32 / mass;
            (share * ego[u.index() * d + c] + count.sqrt() * s[c] / mass) / (k + 1) as f32
        })
        .collect();
    assert!(
        close(live.user(u).unwrap(), &want, 1e-5),
        "{:?} vs {want:?}",
        live.user(u)
    );
}

#[test]
fn new_users_and_items_join_and_out_of_range_ids_are_typed_errors() {
    let g = random_graph(10, 10, 40, 9);
    let model = LightGcn::new(&g, &LightGcnConfig::new().dim(4).layers(2).seed(2)).unwrap();
    let mut live = LiveModel::new(&model, &g, LiveConfig::new(), 0).unwrap();
    let err = live.observe(UserId(11), ItemId(0), InteractionKind::Click, 1);
    assert!(
        err.unwrap_err()
            .to_string()
            .contains("new user must take id 10")
    );
    let err = live.observe(UserId(0), ItemId(12), InteractionKind::Click, 1);
    assert!(
        err.unwrap_err()
            .to_string()
            .contains("new item must take id 10")
    );

    // A new user clicking a trained item gets a non-zero embedding pointing at it.
    let popular = (0..10u32)
        .map(ItemId)
        .max_by_key(|&i| g.users_of(i).len())
        .unwrap();
    live.observe(UserId(10), popular, InteractionKind::Click, 1)
        .unwrap();
    assert_eq!(live.n_users(), 11);
    let e = live.user(UserId(10)).unwrap().to_vec();
    assert!(e.iter().any(|&x| x != 0.0));
    // A new item clicked by that user inherits the user's embedding.
    live.observe(UserId(10), ItemId(10), InteractionKind::Click, 2)
        .unwrap();
    assert_eq!(live.n_items(), 11);
    assert!(close(live.item(ItemId(10)).unwrap(), &e, 1e-6));
    assert_eq!(live.item_counts()[10], 1);

    // Hides: remembered, never in the recent (interest) list.
    live.observe(UserId(10), popular, InteractionKind::Hide, 3)
        .unwrap();
    assert_eq!(live.hidden(UserId(10)), &[popular.0]);
    assert!(live.recent(UserId(10)).all(|r| r.item != popular));

    for bad in [
        LiveConfig::new().half_life(0.0),
        LiveConfig::new().recent(0),
        LiveConfig::new().weights(KindWeights {
            hide: 1.0,
            ..KindWeights::default()
        }),
    ] {
        assert!(LiveModel::new(&model, &g, bad, 0).is_err());
    }
}

/// Users of cluster A also like a few items of cluster B. For a fifth of the users
/// those B items are hidden from training; the stale model cannot see their B taste,
/// streaming the hidden events through `observe` recovers most of what a retrain gets.
#[test]
fn streaming_held_out_events_recovers_most_of_a_retrain() {
    const C: u64 = 8;
    const PER: u64 = 40;
    let (nu, ni) = (480usize, (C * PER) as usize);
    let mut rng = Lcg(17);
    let (mut full, mut kept, mut test, mut stream) = (vec![], vec![], vec![], vec![]);
    for u in 0..nu as u64 {
        let (a, b) = (u % C, (u % C + 1 + (u / C) % 3) % C);
        let affected = u % 5 == 0;
        let mut pick = |c: u64, n: usize, taken: &mut Vec<u64>| {
            let mut out = vec![];
            while out.len() < n {
                let i = c * PER + rng.below(PER);
                if !taken.contains(&i) {
                    taken.push(i);
                    out.push(i);
                }
            }
            out
        };
        let mut taken = vec![];
        let ia = pick(a, 6, &mut taken);
        let ib = pick(b, 10, &mut taken);
        let it = pick(b, 5, &mut taken);
        let e = |i: u64| (UserId(u as u32), ItemId(i as u32));
        for &i in ia.iter().chain(&ib) {
            full.push(e(i));
        }
        kept.extend(ia.iter().map(|&i| e(i)));
        if affected {
            stream.extend(ib.iter().map(|&i| e(i)));
        } else {
            kept.extend(ib.iter().map(|&i| e(i)));
        }
        if affected {
            test.extend(it.iter().map(|&i| e(i)));
        }
    }
    let g_kept = BipartiteGraph::from_edges(nu, ni, kept).unwrap();
    let g_full = BipartiteGraph::from_edges(nu, ni, full).unwrap();
    let g_test = BipartiteGraph::from_edges(nu, ni, test).unwrap();
    let cfg = LightGcnConfig::new()
        .dim(16)
        .layers(2)
        .batch_size(256)
        .lr(0.01)
        .seed(3);
    let train = |g: &BipartiteGraph| {
        let mut t = Trainer::new(g, &cfg).unwrap();
        for _ in 0..30 {
            t.train_epoch(|_, _| {}).unwrap();
        }
        t.into_model()
    };
    let k = 20;
    let recall = |users: &[f32], items: &[f32], seen: &BipartiteGraph| {
        evaluate(users, items, 16, seen, &g_test, &[k]).unwrap()[0].recall
    };
    let stale_model = train(&g_kept);
    let mut live = LiveModel::new(&stale_model, &g_kept, LiveConfig::new(), 0).unwrap();
    let stale = recall(live.users(), live.items(), &g_full);
    for &(u, i) in &stream {
        live.observe(u, i, InteractionKind::Click, 1).unwrap();
    }
    let streamed = recall(live.users(), live.items(), &g_full);
    let with_items = LiveConfig::new().item_updates(true);
    let mut live_items = LiveModel::new(&stale_model, &g_kept, with_items, 0).unwrap();
    for &(u, i) in &stream {
        live_items.observe(u, i, InteractionKind::Click, 1).unwrap();
    }
    let streamed_items = recall(live_items.users(), live_items.items(), &g_full);
    let retrained_model = train(&g_full);
    let r = retrained_model.propagate().unwrap();
    let retrained = recall(r.users(), r.items(), &g_full);
    eprintln!(
        "recall@{k}: stale {stale:.4} streamed {streamed:.4} (with item updates {streamed_items:.4}) retrained {retrained:.4}"
    );
    assert!(retrained > stale + 0.1, "the held-out events must matter");
    assert!(
        streamed - stale >= 0.5 * (retrained - stale),
        "streaming recovered {:.0}% of the gap",
        100.0 * (streamed - stale) / (retrained - stale)
    );
    // Item-side updates move the streamed items toward their new audience: more of the
    // gap (84% against 63% on this construction).
    assert!(
        streamed_items > streamed,
        "item updates: {streamed_items:.4} against {streamed:.4} without"
    );
}

#[test]
fn ward_separates_well_separated_groups_and_respects_the_threshold() {
    // Three groups of 4 points around orthogonal axes.
    let mut pts = vec![];
    for g in 0..3 {
        for j in 0..4 {
            let mut p = [0f32; 3];
            p[g] = 1.0;
            p[(g + 1) % 3] = 0.05 * j as f32;
            pts.extend_from_slice(&p);
        }
    }
    let labels = ward(&pts, 3, 0.5).unwrap();
    for g in 0..3 {
        let l = labels[g * 4];
        assert!(labels[g * 4..g * 4 + 4].iter().all(|&x| x == l));
    }
    assert_eq!(labels.iter().max(), Some(&2));
    assert_eq!(ward(&pts, 3, 100.0).unwrap(), vec![0; 12]);
    assert_eq!(*ward(&pts, 3, 0.0).unwrap().iter().max().unwrap(), 11);
    assert!(ward(&pts[..5], 3, 1.0).is_err());
}

#[test]
fn interests_have_a_member_medoid_and_decayed_importance() {
    // Items 0..6 point along x, 6..10 along y; a table of 10 items.
    let mut table = vec![];
    for i in 0..10 {
        let t = 0.02 * i as f32;
        table.extend_from_slice(&if i < 6 { [1.0, t] } else { [t, 1.0] });
    }
    let items: Vec<(ItemId, f32)> = (0..10).map(|i| (ItemId(i), 1.0)).collect();
    let cfg = InterestConfig::new().merge_threshold(0.5);
    let found = cluster_items(&items, &table, 2, &cfg).unwrap();
    assert_eq!(found.len(), 2);
    assert!((found[0].importance - 0.6).abs() < 1e-6);
    assert!((found[1].importance - 0.4).abs() < 1e-6);
    assert!(found[0].members.contains(&found[0].medoid));
    assert!(found[0].medoid.0 < 6 && found[1].medoid.0 >= 6);
    // The medoid of evenly spaced points is a middle one.
    assert!((2..=3).contains(&found[0].medoid.0), "{:?}", found[0]);
    let one = cluster_items(&items, &table, 2, &cfg.max_interests(1)).unwrap();
    assert_eq!(one.len(), 1);
    assert!((one[0].importance - 1.0).abs() < 1e-6);
    assert!(cluster_items(&[(ItemId(10), 1.0)], &table, 2, &cfg).is_err());

    // Through the live model: recent items decay, so a burst of new-cluster clicks
    // outweighs an older, larger cluster.
    let g = random_graph(5, 10, 0, 1);
    let model = LightGcn::from_embeddings(&g, 0, 2, {
        let mut ego = vec![0f32; 5 * 2];
        ego.extend_from_slice(&table);
        ego
    })
    .unwrap();
    let mut live = LiveModel::new(&model, &g, LiveConfig::new(), 0).unwrap();
    let u = UserId(0);
    for i in 0..6 {
        live.observe(u, ItemId(i), InteractionKind::Click, 0)
            .unwrap();
    }
    for i in 6..9 {
        live.observe(u, ItemId(i), InteractionKind::Click, 10_000)
            .unwrap();
    }
    let now = 10_000;
    let flat = interests(&live, u, now, &cfg).unwrap();
    assert!(
        flat[0].medoid.0 < 6,
        "without decay the big old cluster leads"
    );
    let decayed = interests(&live, u, now, &cfg.half_life(1_000.0)).unwrap();
    assert!(
        decayed[0].medoid.0 >= 6,
        "with decay the recent burst leads"
    );
    assert!(interests(&live, UserId(9), now, &cfg).is_err());
}

/// A random 40-user, 60-item graph and 5 epochs of LightGCN (dim 8, 2 layers) on it.
fn small_trained_model() -> (BipartiteGraph, LightGcn) {
    let g = random_graph(40, 60, 300, 21);
    let cfg = LightGcnConfig::new().dim(8).layers(2).init_std(0.3).seed(4);
    let mut t = Trainer::new(&g, &cfg).unwrap();
    for _ in 0..5 {
        t.train_epoch(|_, _| {}).unwrap();
    }
    (g, t.into_model())
}

/// Mean `ln σ(e_u · (e_p − e_j))` of `user` over every (positive, unseen item) pair.
fn bpr_objective(live: &LiveModel, user: UserId) -> f64 {
    let d = live.dim();
    let eu = live.user(user).unwrap();
    let items = live.items();
    let seen = live.seen(user);
    let score = |i: usize| -> f32 { (0..d).map(|c| eu[c] * items[i * d + c]).sum() };
    let (mut sum, mut n) = (0f64, 0usize);
    for &p in seen {
        for j in (0..live.n_items()).filter(|j| seen.binary_search(&(*j as u32)).is_err()) {
            let x = (score(p as usize) - score(j)) as f64;
            sum += -(1.0 + (-x).exp()).ln();
            n += 1;
        }
    }
    sum / n as f64
}

#[test]
fn a_refit_raises_the_users_bpr_objective_and_a_bad_rate_is_refused() {
    let (g, model) = small_trained_model();
    let user = UserId(7);
    let new_items = [ItemId(50), ItemId(51), ItemId(52)];
    let mut plain = LiveModel::new(&model, &g, LiveConfig::new(), 0).unwrap();
    let mut refit = LiveModel::new(&model, &g, LiveConfig::new().refit(30, 0.1), 0).unwrap();
    for (t, &i) in new_items.iter().enumerate() {
        plain
            .observe(user, i, InteractionKind::Click, t as u64 + 1)
            .unwrap();
        refit
            .observe(user, i, InteractionKind::Click, t as u64 + 1)
            .unwrap();
    }
    let (a, b) = (bpr_objective(&plain, user), bpr_objective(&refit, user));
    println!("BPR objective of the user: fold-in {a:.4}, fold-in + refit {b:.4}");
    assert!(b > a, "{b} <= {a}");
    // Other users are untouched.
    assert_eq!(plain.user(UserId(8)), refit.user(UserId(8)));
    // A hide does not refit: only the fold-in's push away.
    let mut a = LiveModel::new(&model, &g, LiveConfig::new(), 0).unwrap();
    let mut b = LiveModel::new(&model, &g, LiveConfig::new().refit(30, 0.1), 0).unwrap();
    let before = a.user(user).unwrap().to_vec();
    a.observe(user, ItemId(53), InteractionKind::Hide, 9)
        .unwrap();
    b.observe(user, ItemId(53), InteractionKind::Hide, 9)
        .unwrap();
    assert_eq!(a.user(user), b.user(user));
    assert_ne!(a.user(user).unwrap(), &before[..]);
    for bad in [0.0, -1.0, f32::NAN, f32::INFINITY] {
        let e = LiveModel::new(&model, &g, LiveConfig::new().refit(3, bad), 0).unwrap_err();
        assert!(e.to_string().contains("refit learning rate"), "{e}");
    }
}

/// Mean `ln σ(e_u · (e_p − e_j))` of `user` over its positives and the `top` unseen
/// items it scores highest: the pairs that decide its ranking.
fn top_bpr_objective(live: &LiveModel, user: UserId, top: usize) -> f64 {
    let d = live.dim();
    let eu = live.user(user).unwrap();
    let items = live.items();
    let seen = live.seen(user);
    let score = |i: usize| -> f32 { (0..d).map(|c| eu[c] * items[i * d + c]).sum() };
    let mut unseen: Vec<usize> = (0..live.n_items())
        .filter(|j| seen.binary_search(&(*j as u32)).is_err())
        .collect();
    unseen.sort_by(|&a, &b| score(b).total_cmp(&score(a)));
    let (mut sum, mut n) = (0f64, 0usize);
    for &p in seen {
        for &j in &unseen[..top] {
            sum += -(1.0 + (-(score(p as usize) - score(j)) as f64).exp()).ln();
            n += 1;
        }
    }
    sum / n as f64
}

#[test]
fn hard_negatives_push_the_top_unseen_items_down_further_than_uniform_ones() {
    let (g, model) = small_trained_model();
    let configs = [
        LiveConfig::new(),
        LiveConfig::new().refit(30, 0.1),
        LiveConfig::new().refit(30, 0.1).refit_negatives(16),
    ];
    let mut objective = Vec::new();
    for config in configs {
        let mut live = LiveModel::new(&model, &g, config, 0).unwrap();
        for user in 0..40 {
            for (t, i) in [50, 51, 52].into_iter().enumerate() {
                live.observe(
                    UserId(user),
                    ItemId(i),
                    InteractionKind::Click,
                    t as u64 + 1,
                )
                .unwrap();
            }
        }
        let mean = (0..40)
            .map(|u| top_bpr_objective(&live, UserId(u), 10))
            .sum::<f64>()
            / 40.0;
        objective.push(mean);
    }
    println!("top-10 BPR objective: fold-in, uniform refit, hard refit = {objective:?}");
    assert!(objective[1] > objective[0], "{objective:?}");
    assert!(objective[2] > objective[1], "{objective:?}");
    for bad in [0, 1025] {
        let e = LiveModel::new(&model, &g, LiveConfig::new().refit_negatives(bad), 0).unwrap_err();
        assert!(e.to_string().contains("refit negatives"), "{e}");
    }
}
