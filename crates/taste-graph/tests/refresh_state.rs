//! A refresher's state on disk ([`Refresher::save`] / [`Refresher::load`]) and the
//! journal events after it ([`Recovery::events_after`]): a restart serves exactly the
//! model that was served, and damage is refused.

use std::path::Path;

use taste_graph::{
    AggregatorConfig, BipartiteGraph, ContentAggregator, DeviceSpec, Error, InteractionKind,
    ItemId, Journal, LightGcnConfig, LiveConfig, LiveModel, Refresher, Trainer, Training, UserId,
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
    (Refresher::new(Training::Cpu(t), g.clone()).unwrap(), live)
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

fn load(dir: &Path) -> taste_graph::Restored {
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
    // One model's files, one memory copy, the event segments the state needs.
    let after = files(dir.path());
    for (prefix, n) in [
        ("trainer-", 1),
        ("graph-", 1),
        ("memory-", 1),
        ("REFRESHER", 1),
    ] {
        let found = after.iter().filter(|f| f.starts_with(prefix)).count();
        assert_eq!(found, n, "{prefix} in {after:?}");
    }
    let old_model = |f: &&String| f.starts_with("trainer-") || f.starts_with("graph-");
    assert!(before.iter().filter(old_model).all(|f| !after.contains(f)));
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
        // A flipped byte anywhere (a checksum) and a torn file are corruption.
        let mut bad = good.clone();
        let at = bad.len() / 2;
        bad[at] ^= 0x40;
        std::fs::write(&path, &bad).unwrap();
        let err = reload().unwrap_err();
        assert!(matches!(err, Error::Corrupt { .. }), "{name}: {err}");
        std::fs::write(&path, &good[..good.len() - 9]).unwrap();
        let err = reload().unwrap_err();
        assert!(matches!(err, Error::Corrupt { .. }), "{name}: {err}");
        std::fs::write(&path, &good).unwrap();
        assert!(reload().is_ok());
    }
    // Checksummed but inconsistent: an item count the live items do not account for
    // (at bytes 52..60 of the meta file), a graph file asking for 2^40 items (bytes
    // 20..28), a segment that says it starts elsewhere (bytes 20..28) are refused, not
    // allocated.
    let named = |prefix: &str| {
        let name = files(dir.path())
            .into_iter()
            .find(|f| f.starts_with(prefix))
            .unwrap();
        dir.path().join(name)
    };
    for (path, at) in [
        (dir.path().join("REFRESHER"), 52),
        (named("graph-"), 20),
        (named("events-"), 20),
        (named("content-"), 28),
    ] {
        let good = std::fs::read(&path).unwrap();
        let mut bad = good[..good.len() - 4].to_vec();
        bad[at..at + 8].copy_from_slice(&(1u64 << 40).to_le_bytes());
        let crc = crc32fast::hash(&bad);
        bad.extend_from_slice(&crc.to_le_bytes());
        std::fs::write(&path, &bad).unwrap();
        let err = reload().unwrap_err();
        assert!(matches!(err, Error::Corrupt { .. }), "{path:?}: {err}");
        std::fs::write(&path, &good).unwrap();
    }
    // A file the meta names is missing.
    let memory = named("memory-");
    let good = std::fs::read(&memory).unwrap();
    std::fs::remove_file(&memory).unwrap();
    assert!(matches!(reload().unwrap_err(), Error::Io { .. }));
    std::fs::write(&memory, &good).unwrap();
    assert!(reload().is_ok());
    // A live model that is not the one served is refused at save.
    let small = random_graph(5, 5, 10, 1);
    let t = Trainer::new(&small, &config()).unwrap();
    let other = LiveModel::new(t.model(), &small, LiveConfig::new(), 0).unwrap();
    assert!(matches!(
        r.save(dir.path(), &other, 7),
        Err(Error::Graph { .. })
    ));
}

#[test]
fn the_journal_gives_the_events_after_a_saved_seq() {
    let dir = tempfile::tempdir().unwrap();
    let kinds = [InteractionKind::Click, InteractionKind::Save];
    let mut seqs = Vec::new();
    {
        let (mut j, _) = Journal::open(dir.path()).unwrap();
        // External ids: new users and items log id records, which take seqs too.
        for k in 0..6u64 {
            let (seq, _) = j
                .record_external(100 + k % 3, 200 + k, kinds[k as usize % 2], 1.0, k)
                .unwrap();
            seqs.push(seq);
        }
        j.sync().unwrap();
    }
    let (mut j, rec) = Journal::open(dir.path()).unwrap();
    assert_eq!(rec.events.len(), 6);
    assert_eq!(rec.events_after(0).unwrap().len(), 6);
    for (n, &seq) in seqs.iter().enumerate() {
        let after = rec.events_after(seq).unwrap();
        assert_eq!(after, &rec.events.events()[n + 1..], "after seq {seq}");
    }
    // Past the last event: the state saw events the journal does not have.
    assert!(matches!(
        rec.events_after(rec.last_seq + 1),
        Err(Error::Graph { .. })
    ));
    // After a checkpoint the snapshot's events have no seqs: older saves are refused.
    let snap = j.checkpoint(&rec.events).unwrap();
    let (e, _) = j
        .record_external(100, 300, InteractionKind::Click, 1.0, 9)
        .unwrap();
    j.sync().unwrap();
    drop(j);
    let (_, rec) = Journal::open(dir.path()).unwrap();
    assert!(matches!(
        rec.events_after(seqs[2]),
        Err(Error::Graph { .. })
    ));
    assert_eq!(rec.events_after(snap).unwrap().len(), 1);
    assert!(rec.events_after(e).unwrap().is_empty());
}

#[test]
fn a_crash_after_a_save_recovers_every_acknowledged_event_from_the_journal() {
    let g = random_graph(25, 20, 120, 23);
    let (journal_dir, state_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
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
    // The service: every event is journalled, then observed; the state is saved once,
    // more events are acknowledged, and the process dies.
    let served = {
        let (mut r, mut live) = serving(&g);
        let (mut journal, _) = Journal::open(journal_dir.path()).unwrap();
        for e in before {
            journal.record(&e).unwrap();
            r.observe(&mut live, e).unwrap();
        }
        let seq = journal.sync().unwrap();
        r.state(&live, seq)
            .unwrap()
            .write(state_dir.path())
            .unwrap();
        // The state holds everything up to `seq`: the journal drops it.
        journal.drop_through(seq).unwrap();
        for e in after {
            journal.record(&e).unwrap();
            r.observe(&mut live, e).unwrap();
        }
        journal.sync().unwrap();
        live
    };
    // The restart: the saved state, then the journal's events after its seq.
    let (_journal, recovery) = Journal::open(journal_dir.path()).unwrap();
    let mut back = load(state_dir.path());
    assert_eq!(recovery.dropped_through, back.through_seq);
    assert_eq!(recovery.events.events(), &after);
    let missed = recovery.events_after(back.through_seq).unwrap();
    assert_eq!(missed, &after);
    for &e in missed {
        back.refresher.observe(&mut back.live, e).unwrap();
    }
    assert_same_live(&back.live, &served);
    assert_eq!(pending(&back.refresher).len(), before.len() + after.len());
}

/// Many saves with events, new users, hides and an install between them: each save
/// writes the events since the previous one and a meta file that does not grow with
/// them, the segments are merged and dropped, the memory copy is taken again now and
/// then (not at every save), and every save restores the served model.
#[test]
fn saves_write_what_is_new_and_the_directory_stays_bounded() {
    let ranges = saves_restore_the_served_model(None);
    assert!(ranges.iter().all(|&n| n == 1), "{ranges:?}");
}

/// The same with the memory copy retaken 4 users per save: the copies are made of
/// several user ranges taken at different saves, and every save still restores the
/// served model.
#[test]
fn a_memory_copy_taken_over_several_saves_restores_the_served_model() {
    let ranges = saves_restore_the_served_model(Some(4));
    assert!(ranges.iter().any(|&n| n > 2), "{ranges:?}");
}

/// The user ranges of the memory copy file in `dir` (its header: magic, version, id,
/// index, users, then the range count).
fn memory_ranges(dir: &Path) -> u64 {
    let name = files(dir)
        .into_iter()
        .find(|f| f.starts_with("memory-"))
        .unwrap();
    let b = std::fs::read(dir.join(name)).unwrap();
    u64::from_le_bytes(b[36..44].try_into().unwrap())
}

/// 40 saves of [`saves_write_what_is_new_and_the_directory_stays_bounded`], the memory
/// copy retaken `step` users per save (`None`: the default); returns the range counts
/// of the memory copies the saves wrote.
fn saves_restore_the_served_model(step: Option<usize>) -> Vec<u64> {
    let g = random_graph(30, 25, 160, 24);
    let (mut r, mut live) = serving(&g);
    if let Some(step) = step {
        r.set_memory_step(step);
    }
    let dir = tempfile::tempdir().unwrap();
    let mut ranges = Vec::new();
    let mut rng = common::Lcg(5);
    let kinds = [
        InteractionKind::Click,
        InteractionKind::Save,
        InteractionKind::Hide,
    ];
    let (mut memory_copies, mut meta_sizes, mut t) = (Vec::new(), Vec::new(), 100u64);
    let (mut segment_events, mut planned) = (0, None);
    for save in 0..40u64 {
        for _ in 0..8 {
            // Mostly existing users and items, now and then a new one.
            let user = rng.below(live.n_users() as u64 + 1) as u32;
            let item = rng.below(live.n_items() as u64 + 1) as u32;
            let kind = kinds[rng.below(3) as usize];
            t += 1;
            r.observe(&mut live, ev(user, item, kind, t)).unwrap();
        }
        // An install with unsaved events before its plan (the next save starts over
        // from the cut with a new memory copy), then one planned before two saves.
        if save == 20 {
            let refit = r.plan(&live, 1).unwrap().run(|_| {}).unwrap();
            r.install(refit, &mut live).unwrap();
        }
        if save == 30 {
            planned = Some(r.plan(&live, 1).unwrap().run(|_| {}).unwrap());
        }
        if save == 32 {
            r.install(planned.take().unwrap(), &mut live).unwrap();
        }
        let state = r.state(&live, save).unwrap();
        segment_events = state.segment_events();
        meta_sizes.push(state.meta_bytes());
        state.write(dir.path()).unwrap();
        let names = files(dir.path());
        let segments = names.iter().filter(|f| f.starts_with("events-")).count();
        assert!(segments <= 17, "{names:?}");
        let memory: Vec<_> = names.iter().filter(|f| f.starts_with("memory-")).collect();
        assert_eq!(memory.len(), 1, "{names:?}");
        if memory_copies.last() != Some(memory[0]) {
            memory_copies.push(memory[0].clone());
            ranges.push(memory_ranges(dir.path()));
        }
        let back = load(dir.path());
        assert_eq!(back.through_seq, save);
        assert_eq!(pending(&back.refresher), pending(&r), "save {save}");
        assert_same_live(&back.live, &live);
    }
    // 320 events of 24 bytes against a copy of ~30 users' memory: a few copies, far
    // fewer than the saves.
    assert!(
        (2..=20).contains(&memory_copies.len()),
        "{} memory copies",
        memory_copies.len()
    );
    // Segments before the install's cut and the memory copy are dropped.
    assert!(
        segment_events < 8 * 30,
        "{segment_events} events in segments"
    );
    // The meta file holds the segment list and the live items' content, not the events.
    let most = *meta_sizes.iter().max().unwrap();
    assert!(most < 2000, "meta files of up to {most} bytes");

    // A restored refresher goes on saving where it left off (its segments, its copy).
    let mut back = load(dir.path());
    back.refresher
        .observe(&mut back.live, ev(1, 2, InteractionKind::Click, t + 1))
        .unwrap();
    back.refresher.save(dir.path(), &back.live, 99).unwrap();
    let again = load(dir.path());
    assert_eq!(pending(&again.refresher), pending(&back.refresher));
    assert_same_live(&again.live, &back.live);

    // Its memory copy is on disk in `dir` only: another directory is refused, not left
    // naming a file it does not have.
    let other = tempfile::tempdir().unwrap();
    assert!(matches!(
        back.refresher.save(other.path(), &back.live, 100),
        Err(Error::Config { .. })
    ));
    ranges
}

/// The content files in `dir`, with their sizes.
fn content_files(dir: &Path) -> Vec<(String, u64)> {
    files(dir)
        .into_iter()
        .filter(|n| n.starts_with("content-"))
        .map(|n| {
            let len = std::fs::metadata(dir.join(&n)).unwrap().len();
            (n, len)
        })
        .collect()
}

/// Live items' content is written once per change, not by every save: a save writes a
/// file with the content given or replaced since the previous one (none when nothing
/// changed), the files are rewritten into one past 16 and after an install, and every
/// save restores the served model.
#[test]
fn live_items_content_is_written_once_per_change() {
    let g = random_graph(20, 15, 90, 23);
    let (mut r, mut live) = serving(&g);
    let dir = tempfile::tempdir().unwrap();
    let mut items = Vec::new();
    let (mut written, mut every_save) = (0u64, 0u64);
    let record = 8 + 4 * 3;
    for save in 0..40u32 {
        for k in 0..2 {
            let x = [save as f32, k as f32, 1.0];
            items.push(live.add_item_with_content(&x).unwrap());
        }
        if save % 5 == 4 {
            let x = [-1.0, save as f32, 0.5];
            live.set_item_content(items[save as usize / 2], &x).unwrap();
        }
        let before = content_files(dir.path());
        r.save(dir.path(), &live, save as u64).unwrap();
        let after = content_files(dir.path());
        let new: Vec<_> = after.iter().filter(|f| !before.contains(f)).collect();
        assert_eq!(new.len(), 1, "save {save}: one new content file");
        assert!(
            after.len() <= 16,
            "save {save}: {} content files",
            after.len()
        );
        written += new[0].1;
        every_save += items.len() as u64 * record;
        assert_same_live(&load(dir.path()).live, &live);
    }
    // Rewriting every live item's content at each save would have written three times
    // as much and more.
    assert!(
        3 * written < every_save,
        "{written} bytes against {every_save}"
    );
    let meta = std::fs::metadata(dir.path().join("REFRESHER"))
        .unwrap()
        .len();
    assert!(meta < 600, "a meta file of {meta} bytes");

    // Nothing changed: no new content file.
    let before = content_files(dir.path());
    r.save(dir.path(), &live, 41).unwrap();
    assert_eq!(content_files(dir.path()), before);

    // After an install, one file with all the live items' content (they stay live: no
    // one engaged with them).
    let refit = r.plan(&live, 1).unwrap().run(|_| {}).unwrap();
    let (_, old) = r.install(refit, &mut live).unwrap();
    drop(old);
    r.save(dir.path(), &live, 42).unwrap();
    let after = content_files(dir.path());
    assert_eq!(after.len(), 1);
    assert!(after[0].1 >= items.len() as u64 * record);
    let back = load(dir.path());
    assert_same_live(&back.live, &live);

    // A restored refresher goes on from the files it found.
    let mut back = back;
    back.live
        .set_item_content(items[0], &[2.0, 2.0, 2.0])
        .unwrap();
    back.refresher.save(dir.path(), &back.live, 43).unwrap();
    assert_eq!(content_files(dir.path()).len(), 2);
    assert_same_live(&load(dir.path()).live, &back.live);
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

/// A crash inside a write — after some or all of its new files, before its meta file —
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
        dir.path().join("REFRESHER"),
        &saved.iter().find(|(n, _)| n == "REFRESHER").unwrap().1,
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
    let models = names.iter().filter(|n| n.starts_with("trainer-")).count();
    assert_eq!(models, 1, "{names:?}");
}

/// Events observed after a save and folded by an install before the next save are kept
/// for it: the memory copy stays usable (not taken again), and the restore is exact.
#[test]
fn an_install_between_saves_keeps_the_unsaved_events_it_folds() {
    let (mut r, mut live, dir) = saved_once();
    let memory = |dir: &Path| {
        files(dir)
            .into_iter()
            .filter(|n| n.starts_with("memory-"))
            .collect::<Vec<_>>()
    };
    let copy = memory(dir.path());
    for (u, i) in [(3, 4), (5, 6), (7, 8)] {
        r.observe(&mut live, ev(u, i, InteractionKind::Click, 40 + u as u64))
            .unwrap();
    }
    let refit = r.plan(&live, 1).unwrap().run(|_| {}).unwrap();
    r.install(refit, &mut live).unwrap();
    let state = r.state(&live, 2).unwrap();
    // The three folded clicks are in the new segment; the copy is the same file.
    assert!(state.segment_events() >= 3);
    state.write(dir.path()).unwrap();
    assert_eq!(memory(dir.path()), copy);
    let back = load(dir.path());
    assert_eq!(pending(&back.refresher), pending(&r));
    assert_same_live(&back.live, &live);
}
