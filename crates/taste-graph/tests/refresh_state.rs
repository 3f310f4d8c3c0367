//! A refresher's state on disk ([`Refresher::save`] / [`Refresher::load`]) and the
//! feedback log's events after it ([`FeedbackLog`]): a restart serves exactly the model
//! that was served, and damage is refused.

use std::path::Path;

use mosaic_durability::MmapDirectory;
use taste_graph::inductive::AggregatorConfig;
use taste_graph::{
    BipartiteGraph, ContentAggregator, DeviceSpec, Error, Feedback, FeedbackLog, Interaction,
    InteractionKind, ItemId, LightGcnConfig, LiveConfig, LiveModel, Refresher, SyncPolicy, Trainer,
    Training, UserId,
};

mod common;
use common::{edges_of, ev, first_non_edge, pending, random_graph};

fn config() -> LightGcnConfig {
    LightGcnConfig::new()
        .dim(8)
        .layers(2)
        .batch_size(64)
        .lr(1e-2)
        .seed(11)
}

fn aggregator() -> ContentAggregator {
    ContentAggregator::new(3, 8, &AggregatorConfig::new().hidden(5)).unwrap()
}

/// A trainer one epoch in, its live model (with a content aggregator), a refresher.
fn serving(g: &BipartiteGraph) -> (Refresher, LiveModel) {
    let mut t = Trainer::new(g, &config()).unwrap();
    t.train_epoch(|_, _| {}).unwrap();
    let mut live = LiveModel::new(t.model(), g, LiveConfig::new().recent(4), 10).unwrap();
    live.set_aggregator(aggregator()).unwrap();
    (Refresher::new(Training::from(t), g.clone()).unwrap(), live)
}

/// Observes events on trained and new users and items, a hide, a new item nobody
/// engaged with positively (it stays live through a refit), and an item added with
/// content and then clicked (it stays live too: the one before it has no positive).
fn stream(g: &BipartiteGraph, r: &mut Refresher, live: &mut LiveModel, t0: u64) {
    let (nu, ni) = (g.n_users() as u32, g.n_items() as u32);
    let events = [
        ev(0, first_non_edge(g, 0), InteractionKind::Click, t0),
        ev(nu, 3, InteractionKind::Save, t0 + 1),
        ev(4, ni, InteractionKind::Click, t0 + 2),
        ev(1, g.items_of(UserId(1))[0], InteractionKind::Hide, t0 + 3),
        ev(2, ni + 1, InteractionKind::Hide, t0 + 4),
        ev(0, 5, InteractionKind::Save, t0 + 5),
    ];
    for e in events {
        r.observe(live, e).unwrap();
    }
    let item = live.add_item_with_content(&[0.5, -1.0, 2.0]).unwrap();
    r.observe(live, ev(6, item.0, InteractionKind::Click, t0 + 6))
        .unwrap();
}

fn load(dir: &Path) -> taste_graph::refresh::state::Restored {
    let cpu = DeviceSpec::Cpu.select().unwrap();
    Refresher::load(dir, &cpu, LiveConfig::new().recent(4), Some(aggregator()))
        .unwrap()
        .expect("a saved state")
}

fn assert_same_live(a: &LiveModel, b: &LiveModel) {
    assert_eq!((a.n_users(), a.n_items()), (b.n_users(), b.n_items()));
    assert_eq!(a.users(), b.users());
    assert_eq!(a.items(), b.items());
    assert_eq!(a.item_counts(), b.item_counts());
    assert_eq!(a.trained_at(), b.trained_at());
    assert_eq!(a.latest_time(), b.latest_time());
    for i in 0..a.n_items() as u32 {
        assert_eq!(a.item_content(ItemId(i)), b.item_content(ItemId(i)));
    }
    for u in 0..a.n_users() as u32 {
        let u = UserId(u);
        assert_eq!(a.last_time(u), b.last_time(u), "last time of {u:?}");
        assert_eq!(a.hidden(u), b.hidden(u), "hidden items of {u:?}");
        assert_eq!(a.seen(u), b.seen(u), "seen items of {u:?}");
        let (ra, rb): (Vec<_>, Vec<_>) = (a.recent(u).collect(), b.recent(u).collect());
        assert_eq!(ra, rb, "recent items of {u:?}");
    }
}

fn files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

#[test]
fn a_restart_serves_the_model_that_was_served_and_refits_alike() {
    let g = random_graph(30, 25, 160, 21);
    let (mut r, mut live) = serving(&g);
    let dir = tempfile::tempdir().unwrap();
    assert!(
        Refresher::load(
            dir.path(),
            &DeviceSpec::Cpu.select().unwrap(),
            LiveConfig::new(),
            None
        )
        .unwrap()
        .is_none()
    );
    stream(&g, &mut r, &mut live, 20);
    r.save(dir.path(), &live, 6).unwrap();
    let back = load(dir.path());
    assert_eq!(back.through_seq, 6);
    assert!(back.app_data.is_empty());
    assert_same_live(&back.live, &live);
    assert_eq!(pending(&back.refresher), pending(&r));
    assert_eq!(edges_of(back.refresher.graph()), edges_of(&g));
    assert_eq!(back.refresher.generation(), 0);

    // A refit from either gives the same model.
    let (mut r2, mut live2) = (back.refresher, back.live);
    let refit = r.plan(&live, 2).unwrap().run(|_| {}).unwrap();
    let refit2 = r2.plan(&live2, 2).unwrap().run(|_| {}).unwrap();
    let (done, _) = r.install(refit, &mut live).unwrap();
    r2.install(refit2, &mut live2).unwrap();
    assert_same_live(&live2, &live);
    // The new item with only a hide and the content item after it stay live, and their
    // events stay recorded, as does the hide of a trained pair (its push is replayed).
    assert_eq!(done.kept, 3);
    assert_eq!(pending(&r).len(), 3);

    // After an install the next save writes the new model's files and removes the old.
    let before = files(dir.path());
    r.observe(&mut live, ev(3, 7, InteractionKind::Click, 50))
        .unwrap();
    // Captured (under a service's lock), then written (outside it).
    let state = r.state(&live, 9).unwrap();
    r.observe(&mut live, ev(3, 8, InteractionKind::Click, 51))
        .unwrap();
    state.write(dir.path()).unwrap();
    assert_eq!(load(dir.path()).refresher.pending_len(), 4);
    r.state_with(&live, 10, b"app")
        .unwrap()
        .write(dir.path())
        .unwrap();
    // The new model's file and the refresher file; the old model's file is gone.
    let after = files(dir.path());
    let models = |names: &[String]| -> Vec<String> {
        names
            .iter()
            .filter(|f| f.starts_with("model-"))
            .cloned()
            .collect()
    };
    assert_eq!(models(&after).len(), 1, "{after:?}");
    assert_eq!(after.len(), 2, "{after:?}");
    assert_ne!(models(&before), models(&after));
    let back = load(dir.path());
    assert_eq!(back.through_seq, 10);
    assert_eq!(back.app_data, b"app");
    assert_eq!(back.refresher.generation(), 1);
    assert_eq!(pending(&back.refresher), pending(&r));
    assert_same_live(&back.live, &live);
}

#[test]
fn a_damaged_or_mismatched_state_is_refused() {
    let g = random_graph(20, 15, 90, 22);
    let (mut r, mut live) = serving(&g);
    stream(&g, &mut r, &mut live, 20);
    let dir = tempfile::tempdir().unwrap();
    r.save(dir.path(), &live, 6).unwrap();
    let cpu = DeviceSpec::Cpu.select().unwrap();
    let reload = || {
        Refresher::load(
            dir.path(),
            &cpu,
            LiveConfig::new().recent(4),
            Some(aggregator()),
        )
    };
    // Live items with content need the aggregator.
    assert!(matches!(
        Refresher::load(dir.path(), &cpu, LiveConfig::new().recent(4), None),
        Err(Error::Config { .. })
    ));
    for name in files(dir.path()) {
        let path = dir.path().join(&name);
        let good = std::fs::read(&path).unwrap();
        // A flipped byte is corruption, or (JSON whitespace in the header) changes
        // nothing: every 5th byte of each file.
        for at in (0..good.len()).step_by(5) {
            let mut bad = good.clone();
            bad[at] ^= 0x40;
            std::fs::write(&path, &bad).unwrap();
            match reload() {
                Err(Error::Corrupt { .. }) => {}
                Err(e) => panic!("{name} byte {at}: {e}"),
                Ok(back) => assert_same_live(&back.unwrap().live, &live),
            }
        }
        // A torn file.
        std::fs::write(&path, &good[..good.len() - 9]).unwrap();
        let err = reload().unwrap_err();
        assert!(matches!(err, Error::Corrupt { .. }), "{name}: {err}");
        std::fs::write(&path, &good).unwrap();
        assert!(reload().is_ok());
    }
    // The model file the refresher file names is missing, or is another model's.
    let model = files(dir.path())
        .into_iter()
        .find(|f| f.starts_with("model-"))
        .unwrap();
    let good = std::fs::read(dir.path().join(&model)).unwrap();
    std::fs::remove_file(dir.path().join(&model)).unwrap();
    assert!(matches!(reload().unwrap_err(), Error::Io { .. }));
    let other_dir = tempfile::tempdir().unwrap();
    let g2 = random_graph(20, 15, 90, 23);
    let (r2, live2) = serving(&g2);
    r2.save(other_dir.path(), &live2, 1).unwrap();
    let other = files(other_dir.path())
        .into_iter()
        .find(|f| f.starts_with("model-"))
        .unwrap();
    std::fs::copy(other_dir.path().join(&other), dir.path().join(&model)).unwrap();
    let err = reload().unwrap_err();
    assert!(
        matches!(err, Error::Graph { .. } | Error::Corrupt { .. }),
        "{err}"
    );
    std::fs::write(dir.path().join(&model), &good).unwrap();
    assert!(reload().is_ok());
    // A state in the format before snapshots is refused, not taken for an empty one.
    let old = tempfile::tempdir().unwrap();
    std::fs::write(old.path().join("REFRESHER"), b"MOSRFSH2").unwrap();
    let err = Refresher::load(old.path(), &cpu, LiveConfig::new(), None).unwrap_err();
    assert!(err.to_string().contains("before snapshots"), "{err}");
    // A live model that is not the one served is refused at save.
    let small = random_graph(5, 5, 10, 1);
    let t = Trainer::new(&small, &config()).unwrap();
    let other = LiveModel::new(t.model(), &small, LiveConfig::new(), 0).unwrap();
    assert!(matches!(
        r.save(dir.path(), &other, 7),
        Err(Error::Graph { .. })
    ));
}

fn feedback(e: &Interaction) -> Feedback {
    Feedback {
        user: u64::from(e.user.0),
        item: u64::from(e.item.0),
        kind: e.kind,
        weight: e.weight,
        timestamp: e.timestamp,
    }
}

fn interaction(f: Feedback) -> Interaction {
    Interaction {
        user: UserId(f.user as u32),
        item: ItemId(f.item as u32),
        kind: f.kind,
        weight: f.weight,
        timestamp: f.timestamp,
    }
}

#[test]
fn a_crash_after_a_save_recovers_every_acknowledged_event_from_the_log() {
    let g = random_graph(25, 20, 120, 23);
    let (log_dir, state_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let fs = MmapDirectory::open(log_dir.path()).unwrap();
    let (nu, ni) = (g.n_users() as u32, g.n_items() as u32);
    let before = [
        ev(0, first_non_edge(&g, 0), InteractionKind::Click, 20),
        ev(nu, 2, InteractionKind::Save, 21),
        ev(3, g.items_of(UserId(3))[0], InteractionKind::Hide, 22),
    ];
    let after = [
        ev(1, ni, InteractionKind::Click, 30),
        ev(nu, 4, InteractionKind::Click, 31),
        ev(nu + 1, 0, InteractionKind::Save, 32),
    ];
    // The service: every event is observed, then logged and acknowledged; the state is
    // saved once, more events are acknowledged, and the process dies.
    let served = {
        let (mut r, mut live) = serving(&g);
        let (mut log, _) =
            FeedbackLog::open(&fs, SyncPolicy::EachEvent, 0, |_, _| Ok::<(), Error>(())).unwrap();
        let mut record = |r: &mut Refresher, live: &mut LiveModel, e: Interaction| {
            r.observe(live, e).unwrap();
            let seq = log.append(&feedback(&e)).unwrap();
            log.acknowledge(seq).unwrap();
        };
        for e in before {
            record(&mut r, &mut live, e);
        }
        r.state(&live, 3).unwrap().write(state_dir.path()).unwrap();
        for e in after {
            record(&mut r, &mut live, e);
        }
        live
    };
    // The restart: the saved state, then the log's events after its seq.
    let mut back = load(state_dir.path());
    assert_eq!(back.through_seq, 3);
    let mut missed = Vec::new();
    let (_log, replayed) =
        FeedbackLog::open(&fs, SyncPolicy::EachEvent, back.through_seq, |_, f| {
            missed.push(interaction(f));
            Ok::<(), Error>(())
        })
        .unwrap();
    assert_eq!(replayed.replayed, 3);
    assert_eq!(missed, after);
    for e in missed {
        back.refresher.observe(&mut back.live, e).unwrap();
    }
    assert_same_live(&back.live, &served);
    assert_eq!(pending(&back.refresher).len(), before.len() + after.len());
}

/// Saves with events, new users, hides, live items' content and installs between them:
/// every save restores the served model, and the directory holds the refresher file
/// and the current model's file only.
#[test]
fn every_save_restores_the_served_model_and_the_directory_stays_two_files() {
    let g = random_graph(30, 25, 160, 24);
    let (mut r, mut live) = serving(&g);
    let dir = tempfile::tempdir().unwrap();
    let (nu, ni) = (g.n_users() as u32, g.n_items() as u32);
    for round in 0..6u32 {
        let t = 100 + 10 * u64::from(round);
        for (k, e) in [
            ev(round % nu, (round * 7) % ni, InteractionKind::Click, t),
            ev(nu + round, round % ni, InteractionKind::Save, t + 1),
            ev(round % 5, (round * 3) % ni, InteractionKind::Hide, t + 2),
        ]
        .into_iter()
        .enumerate()
        {
            r.observe(&mut live, e).unwrap();
            if k == 1 && round % 2 == 0 {
                let item = live
                    .add_item_with_content(&[round as f32, 1.0, -0.5])
                    .unwrap();
                r.observe(
                    &mut live,
                    ev(round % nu, item.0, InteractionKind::Click, t + 1),
                )
                .unwrap();
            }
        }
        if round == 3 {
            let refit = r.plan(&live, 1).unwrap().run(|_| {}).unwrap();
            r.install(refit, &mut live).unwrap();
        }
        let state = r.state(&live, u64::from(round)).unwrap();
        assert!(state.recorded_events() <= r.pending_len());
        state.write(dir.path()).unwrap();
        assert_eq!(files(dir.path()).len(), 2, "{:?}", files(dir.path()));
        let back = load(dir.path());
        assert_eq!(back.through_seq, u64::from(round));
        assert_eq!(pending(&back.refresher), pending(&r));
        assert_same_live(&back.live, &live);
    }
}

/// A refresher that streamed [`stream`]'s events and saved them (seq 1) to a new
/// directory.
fn saved_once() -> (Refresher, LiveModel, tempfile::TempDir) {
    let g = random_graph(30, 25, 160, 21);
    let (mut r, mut live) = serving(&g);
    let dir = tempfile::tempdir().unwrap();
    stream(&g, &mut r, &mut live, 20);
    r.save(dir.path(), &live, 1).unwrap();
    (r, live, dir)
}

/// A crash inside a write — after its model file, before its refresher file —
/// opens to the previous save exactly; the next write cleans up after it.
#[test]
fn a_crash_inside_a_write_opens_to_the_previous_save() {
    let (mut r, mut live, dir) = saved_once();
    let first = load(dir.path());
    let saved: Vec<(String, Vec<u8>)> = files(dir.path())
        .into_iter()
        .map(|n| {
            let b = std::fs::read(dir.path().join(&n)).unwrap();
            (n, b)
        })
        .collect();
    // More events and an install, then a write that "crashes" before its meta: the new
    // files are there, the meta is the previous one.
    r.observe(&mut live, ev(2, 3, InteractionKind::Click, 40))
        .unwrap();
    let refit = r.plan(&live, 1).unwrap().run(|_| {}).unwrap();
    r.install(refit, &mut live).unwrap();
    r.observe(&mut live, ev(4, 1, InteractionKind::Save, 41))
        .unwrap();
    r.save(dir.path(), &live, 2).unwrap();
    let (meta, old_meta) = (
        dir.path().join("refresher.safetensors"),
        &saved
            .iter()
            .find(|(n, _)| n == "refresher.safetensors")
            .unwrap()
            .1,
    );
    let new_meta = std::fs::read(&meta).unwrap();
    // The previous save's files come back (the removal after the meta never ran).
    for (n, b) in &saved {
        std::fs::write(dir.path().join(n), b).unwrap();
    }
    std::fs::write(&meta, old_meta).unwrap();
    let back = load(dir.path());
    assert_eq!(back.through_seq, 1);
    assert_eq!(pending(&back.refresher), pending(&first.refresher));
    assert_same_live(&back.live, &first.live);
    // With the new meta (the crash came after it), the new save opens.
    std::fs::write(&meta, &new_meta).unwrap();
    let back = load(dir.path());
    assert_eq!(back.through_seq, 2);
    assert_same_live(&back.live, &live);
    // The next write removes what no meta names.
    r.save(dir.path(), &live, 3).unwrap();
    let names = files(dir.path());
    let models = names.iter().filter(|n| n.starts_with("model-")).count();
    assert_eq!(models, 1, "{names:?}");
}
