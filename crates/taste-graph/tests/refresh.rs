//! Background refits ([`Refresher`]): the refit graph, the trained rows, the replay of
//! events that arrived meanwhile, and the refusals.

use taste_graph::inductive::AggregatorConfig;
use taste_graph::{
    BipartiteGraph, ContentAggregator, Error, InteractionKind, ItemId, LightGcnConfig, LiveConfig,
    LiveModel, Refresher, Trainer, Training, UserId,
};

mod common;
use common::{edges_of, ev, first_non_edge, pending, random_graph};

const D: usize = 8;

fn config() -> LightGcnConfig {
    LightGcnConfig::new()
        .dim(D)
        .layers(2)
        .batch_size(64)
        .lr(1e-2)
        .seed(9)
}

/// A trainer two epochs into `g`, its live model, and a refresher over both.
fn serving(g: &BipartiteGraph, live_config: LiveConfig) -> (Refresher, LiveModel) {
    let mut t = Trainer::new(g, &config()).unwrap();
    for _ in 0..2 {
        t.train_epoch(|_, _| {}).unwrap();
    }
    let live = LiveModel::new(t.model(), g, live_config, 10).unwrap();
    (Refresher::new(Training::from(t), g.clone()).unwrap(), live)
}

/// `live` with the hide of `pair` at time 33 folded in: what a refit's new model gets
/// after `stream_before` (a hide is no graph edge; its push is replayed).
fn with_hide(mut live: LiveModel, pair: (u32, u32)) -> LiveModel {
    live.observe(UserId(pair.0), ItemId(pair.1), InteractionKind::Hide, 33)
        .unwrap();
    live
}

/// Pre-plan events: clicks on new pairs, a new user with two clicks, a new item clicked,
/// and a hide of a trained edge. Returns the hidden pair.
fn stream_before(g: &BipartiteGraph, r: &mut Refresher, live: &mut LiveModel) -> (u32, u32) {
    let (nu, ni) = (g.n_users() as u32, g.n_items() as u32);
    for u in [0, 3, 7] {
        let i = first_non_edge(g, u);
        r.observe(live, ev(u, i, InteractionKind::Click, 20 + u as u64))
            .unwrap();
    }
    r.observe(live, ev(nu, 1, InteractionKind::Save, 30))
        .unwrap();
    r.observe(live, ev(nu, ni, InteractionKind::Click, 31))
        .unwrap();
    r.observe(live, ev(5, ni, InteractionKind::Click, 32))
        .unwrap();
    let hidden = (2, g.items_of(UserId(2))[0]);
    r.observe(live, ev(hidden.0, hidden.1, InteractionKind::Hide, 33))
        .unwrap();
    hidden
}

#[test]
fn a_refit_is_the_regraphed_trainer_on_the_grown_graph() {
    let g = random_graph(40, 30, 220, 4);
    let (mut r, mut live) = serving(&g, LiveConfig::new());
    let hidden = stream_before(&g, &mut r, &mut live);
    let (nu, ni) = (g.n_users() as u32, g.n_items() as u32);

    // The graph the refit must train on, by hand.
    let mut want_edges: Vec<(UserId, ItemId)> = edges_of(&g)
        .into_iter()
        .filter(|&(u, i)| (u.0, i.0) != hidden)
        .collect();
    for u in [0, 3, 7] {
        want_edges.push((UserId(u), ItemId(first_non_edge(&g, u))));
    }
    want_edges.extend([
        (UserId(nu), ItemId(1)),
        (UserId(nu), ItemId(ni)),
        (UserId(5), ItemId(ni)),
    ]);
    let want = BipartiteGraph::from_edges(g.n_users() + 1, g.n_items() + 1, want_edges).unwrap();
    // The serving trainer regraphed onto it and trained three epochs, by hand.
    let Some(base) = r.training().as_cpu() else {
        unreachable!()
    };
    let mut by_hand = base.regraph(&want).unwrap();
    for _ in 0..3 {
        by_hand.train_epoch(|_, _| {}).unwrap();
    }
    let expected = with_hide(
        LiveModel::new(by_hand.model(), &want, LiveConfig::new(), 33).unwrap(),
        hidden,
    );

    let job = r.plan(&live, 3).unwrap();
    assert_eq!(job.events(), 7);
    let refit = job.run(|_| {}).unwrap();
    assert_eq!(edges_of(refit.graph()), edges_of(&want));
    let serving = live.users().to_vec();
    let (done, replaced) = r.install(refit, &mut live).unwrap();
    // What it replaced comes back, to be freed outside the caller's lock.
    assert_eq!(replaced.live.users(), &serving[..]);
    assert_eq!(edges_of(&replaced.graph), edges_of(&g));
    assert_eq!(replaced.training.epochs(), 2);
    assert_eq!(
        (
            done.folded,
            done.kept,
            done.replayed,
            done.trained_users,
            done.trained_items
        ),
        (6, 1, 0, g.n_users() + 1, g.n_items() + 1)
    );
    assert_eq!(done.edges, want.n_edges());
    assert_eq!(live.users(), expected.users());
    assert_eq!(live.items(), expected.items());
    assert_eq!(live.n_trained_items(), g.n_items() + 1);
    // What a graph does not hold is carried over: the hide, and recency.
    assert!(live.hidden(UserId(hidden.0)).contains(&hidden.1));
    let last = live.recent(UserId(5)).last().unwrap();
    assert_eq!((last.item, last.time), (ItemId(ni), 32));
    // Each trained user's interactions are dated at the user's latest event (decay goes
    // on from there, as in the replaced model), not at the refit's time: user 1 acted
    // last at the first model's creation (10), user 7 at 27, user 2 at 33.
    let times: Vec<_> = [1, 7, 2].map(|u| live.last_time(UserId(u)).unwrap()).into();
    assert_eq!(times, [10, 27, 33]);
    assert_eq!((live.latest_time(), live.trained_at()), (33, 33));
    // The hide stays recorded: the next refit replays its push again.
    assert_eq!(
        pending(&r),
        &[ev(hidden.0, hidden.1, InteractionKind::Hide, 33)]
    );
    assert_eq!(r.generation(), 1);
    assert_eq!(r.graph().n_edges(), want.n_edges());
    assert_eq!(r.training().epochs(), 5);
}

#[test]
fn events_during_the_refit_are_replayed_into_the_new_model() {
    let g = random_graph(40, 30, 220, 5);
    let (mut r, mut live) = serving(&g, LiveConfig::new());
    let hidden = stream_before(&g, &mut r, &mut live);
    let job = r.plan(&live, 2).unwrap();
    let twin = r.plan(&live, 2).unwrap();
    // The job owns what it needs: it runs on another thread while serving goes on.
    let running = std::thread::spawn(move || job.run(|_| {}));
    let (nu, ni) = (live.n_users() as u32, live.n_items() as u32);
    let during = [
        ev(1, first_non_edge(&g, 1), InteractionKind::Click, 40),
        ev(nu, 4, InteractionKind::Click, 41),
        ev(9, ni, InteractionKind::Save, 42),
        ev(3, 2, InteractionKind::Hide, 43),
    ];
    for e in during {
        r.observe(&mut live, e).unwrap();
    }
    let refit = running.join().unwrap().unwrap();
    // The same job run here, then the same events observed: what the install must give.
    let mut want = twin.run(|_| {}).unwrap().live().clone();
    for e in during {
        want.observe(e.user, e.item, e.kind, e.timestamp).unwrap();
    }
    let (done, _) = r.install(refit, &mut live).unwrap();
    assert_eq!((done.folded, done.kept, done.replayed), (6, 1, 4));
    assert_eq!(live.users(), want.users());
    assert_eq!(live.items(), want.items());
    assert_eq!(
        (live.n_users(), live.n_items()),
        (want.n_users(), want.n_items())
    );
    let kept_hide = ev(hidden.0, hidden.1, InteractionKind::Hide, 33);
    assert_eq!(pending(&r)[0], kept_hide);
    assert_eq!(&pending(&r)[1..], &during);
    // The next refit folds those four in and replays both hides.
    let next = r.plan(&live, 1).unwrap();
    assert_eq!(next.events(), 5);
    let refit = next.run(|_| {}).unwrap();
    assert_eq!(refit.graph().n_users(), g.n_users() + 2);
    assert!(refit.graph().has_edge(UserId(nu), ItemId(4)));
    assert!(!refit.graph().has_edge(UserId(3), ItemId(2)));
    r.install(refit, &mut live).unwrap();
    assert_eq!(pending(&r), &[kept_hide, during[3]]);
    assert!(live.hidden(UserId(3)).contains(&2));
}

#[test]
fn a_refit_caught_up_outside_the_lock_installs_the_same_model() {
    let g = random_graph(40, 30, 220, 8);
    let agg = ContentAggregator::new(5, D, &AggregatorConfig::new().hidden(6)).unwrap();
    let serve = || {
        let (mut r, mut live) = serving(&g, LiveConfig::new());
        live.set_aggregator(agg.clone()).unwrap();
        stream_before(&g, &mut r, &mut live);
        (r, live)
    };
    let (mut r, mut live) = serve();
    let (mut plain_r, mut plain_live) = serve();
    let refit = r.plan(&live, 1).unwrap().run(|_| {}).unwrap();
    let plain = plain_r.plan(&plain_live, 1).unwrap().run(|_| {}).unwrap();
    let (nu, ni) = (live.n_users() as u32, live.n_items() as u32);
    let content = [1.0, 0.5, -0.5, 2.0, 0.0];
    // Served while the refit ran: events, and an item added with content, then an
    // event on it.
    let first = [
        ev(1, first_non_edge(&g, 1), InteractionKind::Click, 40),
        ev(nu, 4, InteractionKind::Click, 41),
    ];
    let second = [
        ev(9, ni + 1, InteractionKind::Save, 43),
        ev(3, 2, InteractionKind::Hide, 44),
    ];
    for (r, live) in [(&mut r, &mut live), (&mut plain_r, &mut plain_live)] {
        for e in first {
            r.observe(live, e).unwrap();
        }
        assert_eq!(live.add_item_with_content(&content).unwrap(), ItemId(ni));
    }
    // Copied under the lock, replayed outside it; more events arrive; then the install.
    let copy = r.catch_up(&refit, &live).unwrap();
    assert_eq!(copy.events(), 2);
    let refit = refit.catch_up(copy).unwrap();
    for (r, live) in [(&mut r, &mut live), (&mut plain_r, &mut plain_live)] {
        for e in second {
            r.observe(live, e).unwrap();
        }
    }
    // A second catch-up (the stale copy is used below).
    let stale = r.catch_up(&refit, &live).unwrap();
    let fresh = r.catch_up(&refit, &live).unwrap();
    let refit = refit.catch_up(fresh).unwrap();
    let (done, _) = r.install(refit, &mut live).unwrap();
    assert_eq!((done.caught_up, done.replayed), (4, 0));
    let (plain_done, _) = plain_r.install(plain, &mut plain_live).unwrap();
    assert_eq!((plain_done.caught_up, plain_done.replayed), (0, 4));
    // The events an install replayed are the last `replayed` pending ones (the ranker
    // repairs its popular pool from their items).
    let p = pending(&plain_r);
    assert_eq!(
        &p[p.len() - plain_done.replayed..],
        [first, second].concat()
    );
    assert_eq!(live.users(), plain_live.users());
    assert_eq!(live.items(), plain_live.items());
    assert_eq!(live.item_content(ItemId(ni)), Some(&content[..]));
    assert_eq!(pending(&r), pending(&plain_r));
    // After the install, a copy taken before it belongs to the old generation.
    let next = r.plan(&live, 1).unwrap().run(|_| {}).unwrap();
    assert!(matches!(next.catch_up(stale), Err(Error::Stale { .. })));
}

#[test]
fn live_items_without_a_positive_pair_stay_live_with_their_content() {
    let g = random_graph(30, 20, 150, 6);
    let (mut r, mut live) = serving(&g, LiveConfig::new());
    let agg = ContentAggregator::new(5, D, &AggregatorConfig::new().hidden(6)).unwrap();
    live.set_aggregator(agg).unwrap();
    let ni = g.n_items() as u32;
    // Item ni is engaged with; ni + 1 has content only; ni + 2 is engaged with.
    r.observe(&mut live, ev(0, ni, InteractionKind::Click, 20))
        .unwrap();
    let content = [0.5, -1.0, 2.0, 0.0, 1.5];
    assert_eq!(
        live.add_item_with_content(&content).unwrap(),
        ItemId(ni + 1)
    );
    r.observe(&mut live, ev(1, ni + 2, InteractionKind::Click, 21))
        .unwrap();
    let before = live.item(ItemId(ni + 1)).unwrap().to_vec();

    let refit = r.plan(&live, 1).unwrap().run(|_| {}).unwrap();
    // Trained items are a prefix: up to the first live item without a positive pair.
    assert_eq!(refit.graph().n_items(), g.n_items() + 1);
    assert!(!refit.graph().has_edge(UserId(1), ItemId(ni + 2)));
    r.install(refit, &mut live).unwrap();
    assert_eq!(live.n_trained_items(), g.n_items() + 1);
    assert_eq!(live.n_items(), g.n_items() + 3);
    assert_eq!(live.item_content(ItemId(ni + 1)), Some(&content[..]));
    // Content only: the aggregator's embedding, as before the refit.
    assert_eq!(live.item(ItemId(ni + 1)).unwrap(), &before[..]);
    // The engaged live item was replayed: user 1 saw it, and it has a count.
    assert!(live.seen(UserId(1)).contains(&(ni + 2)));
    assert_eq!(live.item_counts()[(ni + 2) as usize], 1);
    // Its event is not in the graph: it stays recorded for the next refit...
    assert_eq!(pending(&r), &[ev(1, ni + 2, InteractionKind::Click, 21)]);
    // ...which trains both live items once the content-only one is engaged with.
    r.observe(&mut live, ev(2, ni + 1, InteractionKind::Click, 22))
        .unwrap();
    let refit = r.plan(&live, 1).unwrap().run(|_| {}).unwrap();
    assert_eq!(refit.graph().n_items(), g.n_items() + 3);
    assert!(refit.graph().has_edge(UserId(1), ItemId(ni + 2)));
    assert!(refit.graph().has_edge(UserId(2), ItemId(ni + 1)));
    let (done, _) = r.install(refit, &mut live).unwrap();
    assert_eq!((done.folded, done.kept, done.replayed), (2, 0, 0));
    assert!(pending(&r).is_empty());
    assert_eq!(live.n_trained_items(), g.n_items() + 3);
}

#[test]
fn stale_refits_unrecorded_events_and_bad_input_are_refused() {
    let g = random_graph(30, 20, 150, 7);
    let (mut r, mut live) = serving(&g, LiveConfig::new());
    r.observe(
        &mut live,
        ev(0, first_non_edge(&g, 0), InteractionKind::Click, 20),
    )
    .unwrap();
    let first = r.plan(&live, 1).unwrap().run(|_| {}).unwrap();
    let second = r.plan(&live, 1).unwrap().run(|_| {}).unwrap();
    r.install(first, &mut live).unwrap();
    let users = live.users().to_vec();
    assert!(matches!(
        r.install(second, &mut live),
        Err(Error::Stale {
            planned: 0,
            current: 1
        })
    ));
    assert_eq!(live.users(), &users[..]);

    // A user the live model saw but the refresher did not record.
    let refit = r.plan(&live, 1).unwrap().run(|_| {}).unwrap();
    let nu = live.n_users() as u32;
    live.observe(UserId(nu), ItemId(0), InteractionKind::Click, 30)
        .unwrap();
    let err = r.install(refit, &mut live).unwrap_err();
    assert!(matches!(&err, Error::Graph { message } if message.contains("did not record")));
    assert_eq!(r.generation(), 1);

    // Bad weights are refused before touching the live model.
    let mut bad = ev(0, 0, InteractionKind::Click, 40);
    bad.weight = f32::NAN;
    let before = live.users().to_vec();
    assert!(matches!(
        r.observe(&mut live, bad),
        Err(Error::Graph { .. })
    ));
    assert!(matches!(r.record(bad), Err(Error::Graph { .. })));
    assert_eq!(live.users(), &before[..]);

    // Recorded events the live model never saw: far-out ids are refused, by the job
    // before the plan and by the install after it (without adding the ids between).
    let far = ev(0, 4_000_000_000, InteractionKind::Click, 41);
    let (mut r2, mut live2) = serving(&g, LiveConfig::new());
    let job = r2.plan(&live2, 1).unwrap();
    r2.record(far).unwrap();
    let refit = job.run(|_| {}).unwrap();
    let err = r2.install(refit, &mut live2).unwrap_err();
    assert!(matches!(err, Error::Graph { .. }), "{err}");
    assert_eq!(live2.n_items(), g.n_items());
    let err = r2.plan(&live2, 1).unwrap().run(|_| {}).unwrap_err();
    assert!(
        matches!(&err, Error::Graph { message } if message.contains("outside the live model")),
        "{err}"
    );

    // A live model smaller than the refresher's graph is not the one it serves.
    let small = random_graph(10, 5, 20, 1);
    let t = Trainer::new(&small, &config()).unwrap();
    let other = LiveModel::new(t.model(), &small, LiveConfig::new(), 0).unwrap();
    assert!(matches!(r.plan(&other, 1), Err(Error::Graph { .. })));
    // A trainer and graph of different sizes.
    assert!(matches!(
        Refresher::new(Training::from(t), g.clone()),
        Err(Error::Graph { .. })
    ));
}

#[test]
fn a_device_trainer_refits_the_same_way() {
    let g = random_graph(40, 30, 220, 8);
    let dev = candle_core::Device::Cpu;
    let mut t = taste_graph::model::DeviceTrainer::new(&g, &config(), &dev).unwrap();
    t.train_epoch(|_, _| {}).unwrap();
    let mut live = LiveModel::new(t.model().unwrap(), &g, LiveConfig::new(), 10).unwrap();
    let mut r = Refresher::new(Training::from(t), g.clone()).unwrap();
    assert!(r.training().device().is_some());
    let hidden = stream_before(&g, &mut r, &mut live);
    let job = r.plan(&live, 2).unwrap().lr(5e-3);
    let twin = r.plan(&live, 2).unwrap();
    let refit = std::thread::spawn(move || job.run(|_| {}))
        .join()
        .unwrap()
        .unwrap();
    // By hand: the device trainer regraphed onto the refit graph, at the new rate.
    let Some(base) = r.training().as_device() else {
        unreachable!()
    };
    let mut by_hand = base.regraph(refit.graph()).unwrap();
    by_hand.set_lr(5e-3).unwrap();
    for _ in 0..2 {
        by_hand.train_epoch(|_, _| {}).unwrap();
    }
    let want = with_hide(
        LiveModel::new(
            by_hand.model().unwrap(),
            refit.graph(),
            LiveConfig::new(),
            33,
        )
        .unwrap(),
        hidden,
    );
    assert_eq!(refit.training().config().adam.lr, 5e-3);
    r.install(refit, &mut live).unwrap();
    assert_eq!(live.users(), want.users());
    assert_eq!(live.items(), want.items());
    // The rate matters: the twin job, at the trainer's own rate, ends elsewhere.
    let other = twin.run(|_| {}).unwrap();
    assert_ne!(other.live().users(), live.users());
}

#[test]
fn a_schedule_switches_the_rate_by_the_refits_own_epochs() {
    let g = random_graph(40, 30, 220, 9);
    let (mut r, mut live) = serving(&g, LiveConfig::new());
    let hidden = stream_before(&g, &mut r, &mut live);
    let switch: taste_graph::model::RateSwitch = "2:1e-3:32".parse().unwrap();
    let refit = r
        .plan(&live, 3)
        .unwrap()
        .schedule(vec![switch])
        .now(50)
        .run(|_| {})
        .unwrap();
    let cfg = refit.training().config();
    assert_eq!((cfg.adam.lr, cfg.batch_size), (1e-3, 32));
    assert_eq!(refit.training().epochs(), 5);
    // And it trained as a hand-run schedule does.
    let Some(base) = r.training().as_cpu() else {
        unreachable!()
    };
    let mut by_hand = base.regraph(refit.graph()).unwrap();
    by_hand.train_epoch(|_, _| {}).unwrap();
    by_hand.apply_switch(&switch).unwrap();
    for _ in 0..2 {
        by_hand.train_epoch(|_, _| {}).unwrap();
    }
    let want = with_hide(
        LiveModel::new(by_hand.model(), refit.graph(), LiveConfig::new(), 50).unwrap(),
        hidden,
    );
    r.install(refit, &mut live).unwrap();
    assert_eq!(live.users(), want.users());
    // `now` dates the model; user 0's interactions stay dated at its click (20).
    assert_eq!(
        (live.trained_at(), live.last_time(UserId(0))),
        (50, Some(20))
    );
}
