//! The serving type: batches acknowledged by the log survive a restart, refits run in
//! the background and are swapped in (the old generation dropped, attributes carried),
//! unknown users get the cold-start list, oversized batches are refused whole, and
//! request options from JSON name the field they got wrong; upserted items are retrieved
//! after the index refresh, survive a crash and are carried into a refit's generation,
//! and a bad upsert changes nothing.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use embed_store::hnsw::{HnswParams, Scratch};
use embed_store::{Filter, ItemId as StoreId, MmapDirectory, Store};
use mosaic_testkit::catalogue::{Catalogue, CatalogueSpec, small_lightgcn};
use ranker::pipeline::{Attrs, PipelineOptions, build};
use ranker::service::RankedSource;
use ranker::service::{ItemUpsert, KeyedEvent, Opened, Service, ServiceOptions};
use ranker::{Error, Key, RecommendOptions, RequestOptions};
use taste_graph::{InteractionKind, UserId};

fn spec() -> CatalogueSpec {
    CatalogueSpec::small()
}

fn options(refit_after_events: u64) -> ServiceOptions {
    ServiceOptions {
        pipeline: PipelineOptions {
            lightgcn: small_lightgcn(),
            epochs: 3,
            generation: "demo".into(),
            hnsw: Some(HnswParams::default()),
            max_live_items: 2,
            ..PipelineOptions::default()
        },
        refit_after_events,
        refit_epochs: 1,
        checkpoint_after_events: 25,
        max_batch: 50,
        max_items: 50,
        follow_interval: Some(Duration::ZERO),
        ..ServiceOptions::default()
    }
}

/// A service over `dir` (its store in `dir/store`), built from the catalogue (style as
/// attribute 0) when nothing is saved there.
fn open(dir: &Path, refit_after_events: u64) -> (Arc<Service>, Opened) {
    // A dropped service may still be finishing a maintenance step on its own thread,
    // holding the directory's lock for a moment: wait for it, as a restarted process
    // waits for the old one to exit.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match try_open(dir, refit_after_events) {
            Err(ranker::Error::Taste(taste_graph::Error::Locked { .. }))
                if Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(20))
            }
            other => return other.unwrap(),
        }
    }
}

/// The store under `dir/store`.
fn store_in(dir: &Path) -> Arc<Store> {
    Store::open(Arc::new(MmapDirectory::open(dir.join("store")).unwrap())).unwrap()
}

fn try_open(dir: &Path, refit_after_events: u64) -> ranker::Result<(Arc<Service>, Opened)> {
    let store = store_in(dir);
    Service::open(
        &dir.join("state"),
        store,
        options(refit_after_events),
        |store, opts| {
            let cat = Catalogue::generate(spec()).unwrap();
            let (graph, _) = cat.split(0.75).unwrap();
            let attrs = Attrs {
                values: &cat.style,
                n_attrs: 1,
            };
            Ok(build(&graph, None, Some(attrs), store, opts, |_, _| {})?.0)
        },
    )
}

fn events(from: u64, n: u64) -> Vec<KeyedEvent> {
    (from..from + n)
        .map(|i| KeyedEvent {
            user: Key::Id(i % 60),
            item: Key::Id((i * 31) % 120),
            kind: InteractionKind::Click,
            time: 1_000 + i,
        })
        .collect()
}

/// The integer of an item the tests name by integers.
fn id(k: &Key) -> u64 {
    match k {
        Key::Id(i) => *i,
        Key::Name(n) => panic!("an integer item was expected, got {n:?}"),
    }
}

fn lists(s: &Service) -> Vec<Vec<u64>> {
    let opts = RecommendOptions::new().k(6);
    (0..60)
        .map(|u| {
            let a = s.recommend(&u.into(), &opts).unwrap();
            assert!(!a.cold_start);
            a.items.iter().map(|r| id(&r.item)).collect()
        })
        .collect()
}

#[test]
fn acknowledged_batches_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let served = {
        let (s, opened) = open(dir.path(), 0);
        assert_eq!(opened, Opened::Built);
        for b in 0..4 {
            s.record(&events(b * 20, 20)).unwrap();
        }
        assert_eq!(s.stats().events, 80);
        lists(&s)
        // dropped without shutdown: the process "dies" here
    };
    let (s, opened) = open(dir.path(), 0);
    match opened {
        Opened::Restored {
            saved_seq,
            replayed,
        } => assert_eq!(saved_seq + replayed, 80, "{opened:?}"),
        other => panic!("expected a restore, got {other:?}"),
    }
    assert_eq!(lists(&s), served);
    s.shutdown().unwrap();
    drop(s);
    let (_s, opened) = open(dir.path(), 0);
    assert_eq!(
        opened,
        Opened::Restored {
            saved_seq: 80,
            replayed: 0
        },
        "a shutdown checkpoint leaves nothing to replay"
    );
}

/// A restarted process must not read the state while the old one may still replace it
/// (a checkpoint finishing as it exits) and cut the log: the directory is locked first.
/// Garbage in the state file stands for "changed under the reader": a locked directory
/// is reported as locked, before its files are looked at.
#[test]
fn a_directory_in_use_is_locked_before_its_state_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let (s, _) = open(dir.path(), 0);
    s.record(&events(0, 20)).unwrap();
    let state = dir.path().join("state").join("refresher.safetensors");
    let saved = std::fs::read(&state).unwrap();
    std::fs::write(&state, b"not a state").unwrap();
    let err = try_open(dir.path(), 0).map(|_| ()).unwrap_err();
    assert!(
        matches!(err, Error::Taste(taste_graph::Error::Locked { .. })),
        "{err}"
    );
    let store = store_in(dir.path());
    let err = ranker::pipeline::restore(&dir.path().join("state"), &store, &options(0).pipeline)
        .map(|_| ())
        .unwrap_err();
    assert!(
        matches!(err, Error::Taste(taste_graph::Error::Locked { .. })),
        "{err}"
    );
    std::fs::write(&state, saved).unwrap();
    s.shutdown().unwrap();
    drop(s);
    let (_s, opened) = open(dir.path(), 0);
    assert_eq!(
        opened,
        Opened::Restored {
            saved_seq: 20,
            replayed: 0
        }
    );
}

#[test]
fn a_refit_is_swapped_in_and_the_old_generation_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let (s, _) = open(dir.path(), 30);
    let before = s.recommender().snapshot().generation().to_string();
    assert_eq!(before, "demo");
    s.record(&events(0, 40)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while s.stats().refits == 0 {
        assert!(Instant::now() < deadline, "no refit: {:?}", s.stats());
        // requests keep being answered while the refit runs
        s.recommend(&3.into(), &RecommendOptions::new().k(5))
            .unwrap();
        std::thread::sleep(Duration::from_millis(20));
    }
    let st = s.stats();
    assert_eq!(st.generation, "demo.r1");
    assert_eq!(st.refit_failures, 0, "{st:?}");
    let rec = s.recommender();
    let store_gens = {
        let store = store_in(dir.path());
        store.generations()
    };
    assert_eq!(store_gens, ["demo.r1"], "the old generation is dropped");
    // attributes carried over: every item keeps its style
    let cat = Catalogue::generate(spec()).unwrap();
    for i in 0..cat.n_items() as u64 {
        assert_eq!(
            rec.snapshot().attrs(embed_store::ItemId(i)),
            Some(&[cat.style[i as usize]][..]),
            "item {i}"
        );
    }
    // a second refit takes the next name and drops the first refit's generation
    drop(rec);
    s.record(&events(40, 40)).unwrap();
    while s.stats().refits < 2 {
        assert!(
            Instant::now() < deadline,
            "no second refit: {:?}",
            s.stats()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(s.stats().generation, "demo.r2");
    // a restart serves the latest refit's generation
    let served = lists(&s);
    s.shutdown().unwrap();
    drop(s);
    let (s, _) = open(dir.path(), 0);
    assert_eq!(s.stats().generation, "demo.r2");
    let store = store_in(dir.path());
    assert_eq!(store.generations(), ["demo.r2"]);
    assert_eq!(lists(&s), served);
}

#[test]
fn unknown_users_get_the_cold_start_list() {
    let dir = tempfile::tempdir().unwrap();
    let (s, _) = open(dir.path(), 0);
    let a = s
        .recommend(&1_000_000.into(), &RecommendOptions::new().k(8))
        .unwrap();
    assert!(a.cold_start);
    assert_eq!(a.items.len(), 8);
    let mut ids: Vec<u64> = a.items.iter().map(|r| id(&r.item)).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 8, "no item twice");
    assert_eq!(
        a.items[3].source,
        RankedSource::Fresh,
        "every fourth slot is fresh"
    );
    assert!(
        a.items
            .iter()
            .filter(|r| r.source == RankedSource::Popular)
            .map(|r| r.score)
            .is_sorted_by(|x, y| x >= y),
        "popular items by decreasing popularity"
    );
    // blocked items are never returned
    let blocked = id(&a.items[0].item);
    let b = s
        .recommend(
            &1_000_000.into(),
            &RecommendOptions::new().k(8).blocked([blocked]),
        )
        .unwrap();
    assert!(b.items.iter().all(|r| id(&r.item) != blocked));
}

#[test]
fn an_oversized_batch_is_refused_whole_and_a_bad_event_stops_the_batch_there() {
    let dir = tempfile::tempdir().unwrap();
    let (s, _) = open(dir.path(), 0);
    let err = s.record(&events(0, 51)).unwrap_err();
    assert!(err.to_string().contains("past the limit of 50"), "{err}");
    assert_eq!(s.stats().events, 0);
    // the third event names a third item the taste graph does not know: past the
    // live-item cap of 2
    let mut batch = events(0, 5);
    for (k, e) in batch.iter_mut().take(3).enumerate() {
        e.item = Key::Id(1_000_001 + k as u64);
    }
    match s.record(&batch) {
        Err(Error::Batch { recorded: 2, .. }) => {}
        other => panic!("expected the batch to stop at event 2, got {other:?}"),
    }
    assert_eq!(s.stats().events, 2);
}

#[test]
fn request_options_from_json_name_the_field() {
    let ok: RequestOptions =
        serde_json::from_str(r#"{"k": 5, "lambda": 0.7, "allow": {"attr": 0, "values": [1]}}"#)
            .unwrap();
    let opts = ok.apply(RecommendOptions::new()).unwrap();
    assert!(format!("{opts:?}").contains("k: 5"));
    let unknown = serde_json::from_str::<RequestOptions>(r#"{"kk": 5}"#).unwrap_err();
    assert!(unknown.to_string().contains("kk"), "{unknown}");
    for (json, field) in [
        (r#"{"k": 0}"#, "k"),
        (r#"{"k": 20000}"#, "k"),
        (r#"{"lambda": 2.0}"#, "lambda"),
    ] {
        let o: RequestOptions = serde_json::from_str(json).unwrap();
        let e = o.apply(RecommendOptions::new()).unwrap_err();
        assert!(e.to_string().contains(field), "{json}: {e}");
    }
    let long = RequestOptions {
        blocked: vec![Key::Id(1); 10_001],
        ..RequestOptions::default()
    };
    let e = long.apply(RecommendOptions::new()).unwrap_err();
    assert!(e.to_string().contains("blocked"), "{e}");
}

/// Waits until `done` holds of the service's stats (the maintenance thread runs it).
fn wait_for(s: &Service, what: &str, done: impl Fn(&ranker::service::Stats) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done(&s.stats()) {
        assert!(Instant::now() < deadline, "no {what}: {:?}", s.stats());
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A vector along user 3's taste, long enough to be their nearest item.
fn along_user_3(s: &Service) -> Vec<f32> {
    let u = s
        .recommender()
        .with_live(|l| l.user(UserId(3)).unwrap().to_vec());
    u.iter().map(|x| x * 10.0).collect()
}

const NEW_ITEM: u64 = 9_000_001;

#[test]
fn upserted_items_are_retrieved_after_the_refresh_and_survive_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let (v, moved, served) = {
        let (s, _) = open(dir.path(), 0);
        let v = along_user_3(&s);
        let version = s.stats().rows_version;
        let up = s
            .upsert(&[ItemUpsert {
                item: Key::Id(NEW_ITEM),
                vector: v.clone(),
                attrs: vec![2],
            }])
            .unwrap();
        assert_eq!((up.items, up.generation.as_str()), (1, "demo"));
        wait_for(&s, "index refresh", |st| st.rows_version > version);
        let rec = s.recommender();
        // the index itself was updated: the new row is its nearest neighbour
        let index = rec.index().expect("an HNSW index");
        let hits = index
            .search(
                rec.snapshot(),
                &v,
                1,
                32,
                &Filter::none(),
                &mut Scratch::new(index.len()),
            )
            .unwrap();
        assert_eq!(hits[0].id, StoreId(NEW_ITEM));
        let a = s
            .recommend(&3.into(), &RecommendOptions::new().k(5))
            .unwrap();
        assert!(a.items.iter().any(|r| id(&r.item) == NEW_ITEM), "{a:?}");
        // item 0 is the taste graph's first item, among the rows every save names
        let moved: Vec<f32> = (0..v.len()).map(|i| i as f32 * 0.1).collect();
        let version = s.stats().rows_version;
        s.upsert(&[ItemUpsert {
            item: Key::Id(0),
            vector: moved.clone(),
            attrs: vec![1],
        }])
        .unwrap();
        s.record(&events(0, 10)).unwrap();
        wait_for(&s, "index refresh", |st| st.rows_version > version);
        (v, moved, lists(&s))
        // dropped without shutdown
    };
    let (s, opened) = open(dir.path(), 0);
    assert!(matches!(opened, Opened::Restored { .. }), "{opened:?}");
    let snap = s.recommender().snapshot().clone();
    assert_eq!(snap.get(StoreId(NEW_ITEM)), Some(v));
    assert_eq!(snap.get(StoreId(0)), Some(moved));
    assert_eq!(snap.attrs(StoreId(0)), Some(&[1u32][..]));
    assert_eq!(lists(&s), served);
    // and again after a checkpoint taken over the new rows
    s.shutdown().unwrap();
    drop(s);
    let (s, _) = open(dir.path(), 0);
    assert_eq!(lists(&s), served);
}

#[test]
fn a_refit_carries_the_items_only_the_store_knows() {
    let dir = tempfile::tempdir().unwrap();
    let (s, _) = open(dir.path(), 30);
    let v = along_user_3(&s);
    s.upsert(&[ItemUpsert {
        item: Key::Id(NEW_ITEM),
        vector: v.clone(),
        attrs: vec![3],
    }])
    .unwrap();
    s.record(&events(0, 40)).unwrap();
    wait_for(&s, "refit", |st| st.refits >= 1);
    let rec = s.recommender();
    assert_eq!(rec.snapshot().generation(), "demo.r1");
    assert_eq!(rec.snapshot().get(StoreId(NEW_ITEM)), Some(v));
    assert_eq!(rec.snapshot().attrs(StoreId(NEW_ITEM)), Some(&[3u32][..]));
    assert_eq!(
        rec.snapshot().len(),
        rec.with_live(|l| l.n_items()) + 1,
        "every item of the taste graph and the one only the store knows"
    );
}

#[test]
fn a_bad_upsert_names_the_field_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (s, _) = open(dir.path(), 0);
    let good = || ItemUpsert {
        item: Key::Id(NEW_ITEM),
        vector: vec![0.5; 8],
        attrs: vec![0],
    };
    let opstamp = s.recommender().snapshot().opstamp();
    let mut nan = good();
    nan.item = Key::Id(NEW_ITEM + 1);
    nan.vector[5] = f32::NAN;
    let cases: Vec<(Vec<ItemUpsert>, &str)> = vec![
        (
            vec![ItemUpsert {
                vector: vec![0.5; 7],
                ..good()
            }],
            "items[0].vector: 7 values",
        ),
        (vec![good(), nan], "items[1].vector[5]"),
        (vec![good(), good()], "items[1].item"),
        (
            vec![ItemUpsert {
                attrs: vec![],
                ..good()
            }],
            "items[0].attrs",
        ),
        (
            (0..51)
                .map(|i| ItemUpsert {
                    item: Key::Id(i),
                    ..good()
                })
                .collect(),
            "past the limit of 50",
        ),
    ];
    for (batch, want) in cases {
        let err = s.upsert(&batch).unwrap_err();
        assert!(matches!(err, Error::Config { .. }), "{err:?}");
        assert!(err.to_string().contains(want), "{err} lacks {want:?}");
    }
    let store = store_in(dir.path());
    assert_eq!(store.generation("demo").unwrap().opstamp(), opstamp);
    assert_eq!(s.stats().upserted, 0);
}

#[test]
fn names_are_users_and_items_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let ev = |user: &str, item: Key, t: u64| KeyedEvent {
        user: user.into(),
        item,
        kind: InteractionKind::Save,
        time: 5_000 + t,
    };
    let (users, alice) = {
        let (s, _) = open(dir.path(), 0);
        let users = s.stats().users;
        s.record(&[
            ev("alice", Key::Id(3), 0),
            ev("alice", "sku-1".into(), 1),
            ev("bob", Key::Id(4), 2),
        ])
        .unwrap();
        assert_eq!(s.stats().users, users + 2);
        let alice = s
            .recommend(&"alice".into(), &RecommendOptions::new().k(5))
            .unwrap();
        assert!(!alice.cold_start);
        // an item named by a client, upserted: the newest row, so a fresh slot
        let version = s.stats().rows_version;
        s.upsert(&[ItemUpsert {
            item: "sku-2".into(),
            vector: vec![0.5; 8],
            attrs: vec![1],
        }])
        .unwrap();
        wait_for(&s, "index refresh", |st| st.rows_version > version);
        let cold = s
            .recommend(&"carol".into(), &RecommendOptions::new().k(4))
            .unwrap();
        assert!(cold.cold_start);
        assert_eq!(cold.items[3].item, Key::from("sku-2"), "{cold:?}");
        // a named item is blocked by its name
        let blocked = RequestOptions {
            blocked: vec!["sku-2".into()],
            ..RequestOptions::default()
        };
        let opts = s.options(&blocked, RecommendOptions::new().k(4)).unwrap();
        let cold = s.recommend(&"carol".into(), &opts).unwrap();
        assert!(cold.items.iter().all(|r| r.item != Key::from("sku-2")));
        (users, alice)
        // dropped without shutdown
    };
    let (s, _) = open(dir.path(), 0);
    let again = s
        .recommend(&"alice".into(), &RecommendOptions::new().k(5))
        .unwrap();
    assert_eq!(again, alice, "alice is the same user after the restart");
    s.record(&[ev("alice", "sku-1".into(), 3), ev("bob", "sku-2".into(), 4)])
        .unwrap();
    assert_eq!(
        s.stats().users,
        users + 2,
        "no new user: the names were kept"
    );
    assert_eq!(s.names().len(ranker::service::names::Space::Item), 2);
}

#[test]
fn bad_keys_are_refused_before_anything_is_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let (s, _) = open(dir.path(), 0);
    let long = "x".repeat(300);
    for (event, at) in [
        (
            KeyedEvent {
                user: long.as_str().into(),
                item: Key::Id(1),
                kind: InteractionKind::Click,
                time: 1,
            },
            "events[1].user",
        ),
        (
            KeyedEvent {
                user: Key::Id(1),
                item: Key::Id(1 << 63),
                kind: InteractionKind::Click,
                time: 1,
            },
            "events[1].item",
        ),
        (
            KeyedEvent {
                user: "".into(),
                item: Key::Id(1),
                kind: InteractionKind::Click,
                time: 1,
            },
            "events[1].user",
        ),
    ] {
        let batch = [events(0, 1).remove(0), event];
        let err = s.record(&batch).unwrap_err();
        assert!(err.to_string().contains(at), "{err} lacks {at}");
    }
    assert_eq!(s.stats().events, 0);
    assert_eq!(s.names().len(ranker::service::names::Space::User), 0);
}

/// A shared store that refuses writes while `down` is set (a cluster that lost a
/// master's slots), else the embedded backend.
struct Flaky {
    inner: embed_store::EmbeddedStore,
    down: std::sync::atomic::AtomicBool,
}

impl embed_store::VectorStore for Flaky {
    fn create_generation(&self, spec: &embed_store::GenerationSpec) -> embed_store::Result<()> {
        self.inner.create_generation(spec)
    }
    fn put_many(&self, g: &str, ids: &[StoreId], v: &[f32]) -> embed_store::Result<()> {
        if self.down.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(embed_store::Error::Backend {
                backend: "test",
                message: "the slots are down".into(),
            });
        }
        self.inner.put_many(g, ids, v)
    }
    fn delete(&self, g: &str, ids: &[StoreId]) -> embed_store::Result<()> {
        self.inner.delete(g, ids)
    }
    fn set_current(&self, g: &str) -> embed_store::Result<()> {
        self.inner.set_current(g)
    }
    fn current(&self) -> embed_store::Result<Option<String>> {
        self.inner.current()
    }
    fn generations(&self) -> embed_store::Result<Vec<String>> {
        self.inner.generations()
    }
    fn drop_generation(&self, g: &str) -> embed_store::Result<()> {
        self.inner.drop_generation(g)
    }
    fn ids(&self, g: &str) -> embed_store::Result<Vec<StoreId>> {
        self.inner.ids(g)
    }
    fn get_many(&self, ids: &[StoreId]) -> embed_store::Result<embed_store::Fetched> {
        self.inner.get_many(ids)
    }
}

#[test]
fn services_share_the_served_generation_and_an_upsert_the_shared_store_refuses_changes_nothing() {
    use embed_store::VectorStore;
    use ranker::service::Joined;
    let shared = Arc::new(Flaky {
        inner: embed_store::EmbeddedStore::new(
            Store::open(Arc::new(embed_store::RamDirectory::new())).unwrap(),
        )
        .unwrap(),
        down: false.into(),
    });
    let dir_a = tempfile::tempdir().unwrap();
    let (a, _) = open(dir_a.path(), 0);
    let joined = a.attach_shared(shared.clone()).unwrap();
    assert_eq!(joined, Joined::Published { rows: 120 });
    assert_eq!(shared.current().unwrap().as_deref(), Some("demo"));
    let item = |id: u64| ItemUpsert {
        item: Key::Id(id),
        vector: vec![0.5; 8],
        attrs: vec![1],
    };
    a.upsert(&[item(NEW_ITEM)]).unwrap();
    assert!(shared.get(StoreId(NEW_ITEM)).unwrap().is_some());
    // the shared store refuses: the upsert fails, and nothing changed here
    shared
        .down
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let local = store_in(dir_a.path());
    let before = local.generation("demo").unwrap().opstamp();
    let err = a.upsert(&[item(NEW_ITEM + 1)]).unwrap_err();
    assert!(matches!(err, Error::Shared { .. }), "{err:?}");
    local.reload().unwrap();
    assert_eq!(local.generation("demo").unwrap().opstamp(), before);
    assert!(
        local
            .generation("demo")
            .unwrap()
            .get(StoreId(NEW_ITEM + 1))
            .is_none()
    );
    shared
        .down
        .store(false, std::sync::atomic::Ordering::Relaxed);
    // a second service on the same shared store takes the item A upserted
    let dir_b = tempfile::tempdir().unwrap();
    let (b, _) = open(dir_b.path(), 0);
    let version = b.stats().rows_version;
    let joined = b.attach_shared(shared.clone()).unwrap();
    assert_eq!(
        joined,
        Joined::Followed {
            pulled: 1,
            pushed: 0
        }
    );
    wait_for(&b, "index refresh", |st| st.rows_version > version);
    assert_eq!(
        b.recommender().snapshot().get(StoreId(NEW_ITEM)),
        Some(vec![0.5; 8])
    );
    // and, following the shared store, what A upserts later
    a.upsert(&[item(NEW_ITEM + 7)]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while b
        .recommender()
        .snapshot()
        .get(StoreId(NEW_ITEM + 7))
        .is_none()
    {
        assert!(
            Instant::now() < deadline,
            "B never took A's later item: {:?}",
            b.stats()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // a shared store serving another generation is refused, not overwritten
    shared
        .create_generation(&embed_store::GenerationSpec::new(
            "other",
            8,
            embed_store::StorageType::F32,
        ))
        .unwrap();
    shared.set_current("other").unwrap();
    let dir_c = tempfile::tempdir().unwrap();
    let (c, _) = open(dir_c.path(), 0);
    let err = c.attach_shared(shared.clone()).unwrap_err();
    assert!(
        err.to_string().contains("serves generation \"other\""),
        "{err}"
    );
}
