//! Regressions of acknowledged writes that were lost: each test failed on the code
//! before its fix (compaction over buffered changes, a reload racing commits, a GC
//! failure reported as a failed commit, GC of live temp files, indexes collected by
//! commits to other generations, attributes reset by the serving API). Shared temp names:
//! mosaic-durability's `tests/durable.rs`.

use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use embed_store::hnsw::{Hnsw, HnswParams};
use embed_store::{
    Directory, EmbeddedStore, Error, GenerationSpec, ItemId, Metric, MmapDirectory, RamDirectory,
    StorageType, Store, VectorStore,
};
use mosaic_durability::{FileBytes, LockGuard, Result};

fn row(id: u64, dim: usize) -> Vec<f32> {
    (0..dim)
        .map(|j| (id as f32 + 1.0) * 0.01 + j as f32)
        .collect()
}

fn rows(ids: &[u64], dim: usize) -> Vec<f32> {
    ids.iter().flat_map(|&i| row(i, dim)).collect()
}

fn item_ids(ids: &[u64]) -> Vec<ItemId> {
    ids.iter().copied().map(ItemId).collect()
}

/// A store with generation "g" (dim 4, f32, current) holding ids 0..n.
fn store_with(dir: Arc<dyn Directory>, n: u64) -> Arc<Store> {
    let store = Store::open(dir).unwrap();
    let mut w = store.writer().unwrap();
    w.create_generation(GenerationSpec::new("g", 4, StorageType::F32))
        .unwrap();
    let ids: Vec<u64> = (0..n).collect();
    w.put_many("g", &item_ids(&ids), &rows(&ids, 4), None)
        .unwrap();
    w.set_current("g").unwrap();
    w.commit().unwrap();
    store
}

#[test]
fn compaction_keeps_buffered_puts_and_deletes() {
    let dir = Arc::new(RamDirectory::new());
    let store = store_with(dir.clone(), 10);
    let mut w = store.writer().unwrap();
    // a second segment, so there is something to merge
    w.put_many("g", &item_ids(&[20]), &row(20, 4), None)
        .unwrap();
    w.commit().unwrap();
    // buffered, not committed: a new id, a replaced id, a deleted id
    w.put_many("g", &item_ids(&[30, 5]), &rows(&[30, 105], 4), None)
        .unwrap();
    w.delete("g", &item_ids(&[3])).unwrap();
    w.compact("g").unwrap();
    let check = |s: &embed_store::Snapshot| {
        assert_eq!(s.segments().len(), 1, "compaction leaves one segment");
        assert_eq!(s.get(ItemId(30)), Some(row(30, 4)), "buffered put lost");
        assert_eq!(s.get(ItemId(5)), Some(row(105, 4)), "buffered replace lost");
        assert_eq!(s.get(ItemId(3)), None, "buffered delete came back");
        assert_eq!(s.get(ItemId(20)), Some(row(20, 4)));
        assert_eq!(s.len(), 11);
    };
    check(&store.snapshot().unwrap());
    drop(w);
    drop(store);
    check(&Store::open(dir).unwrap().snapshot().unwrap());
}

#[test]
fn reload_racing_commits_loses_no_commit_and_never_goes_back() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = Arc::new(MmapDirectory::open(tmp.path()).unwrap());
    let store = store_with(dir.clone(), 1);
    let stop = Arc::new(AtomicBool::new(false));
    let reloader = {
        let (store, stop) = (store.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut last = 0;
            let mut reloads = 0u64;
            while !stop.load(Ordering::Relaxed) {
                store.reload().unwrap();
                let now = store.snapshot().unwrap().opstamp();
                assert!(now >= last, "visible state went back from {last} to {now}");
                last = now;
                reloads += 1;
            }
            reloads
        })
    };
    let mut w = store.writer().unwrap();
    let mut acked = Vec::new();
    for id in 100..500u64 {
        w.put_many("g", &item_ids(&[id]), &row(id, 4), None)
            .unwrap();
        let op = w.commit().unwrap();
        acked.push((id, op));
    }
    stop.store(true, Ordering::Relaxed);
    let reloads = reloader.join().unwrap();
    assert!(reloads > 0);
    // opstamps are never reused
    for pair in acked.windows(2) {
        assert_eq!(pair[1].1, pair[0].1 + 1, "opstamp reused or skipped");
    }
    let check = |s: &embed_store::Snapshot| {
        let lost: Vec<u64> = (100..500)
            .filter(|&id| s.get(ItemId(id)) != Some(row(id, 4)))
            .collect();
        assert!(lost.is_empty(), "acknowledged commits lost: {lost:?}");
    };
    check(&store.snapshot().unwrap());
    drop(w);
    drop(store);
    check(&Store::open(dir).unwrap().snapshot().unwrap());
}

/// A directory whose deletes fail while `fail_deletes` is set.
#[derive(Debug, Default)]
struct FailingDeletes {
    inner: RamDirectory,
    fail_deletes: AtomicBool,
}

impl Directory for FailingDeletes {
    fn open_read(&self, name: &str) -> Result<FileBytes> {
        self.inner.open_read(name)
    }
    fn atomic_write(&self, name: &str, data: &[u8]) -> Result<()> {
        self.inner.atomic_write(name, data)
    }
    fn delete(&self, name: &str) -> Result<()> {
        if self.fail_deletes.load(Ordering::Relaxed) {
            return Err(mosaic_durability::Error::Io {
                path: PathBuf::from(name),
                source: std::io::Error::other("injected delete failure"),
            });
        }
        self.inner.delete(name)
    }
    fn exists(&self, name: &str) -> bool {
        self.inner.exists(name)
    }
    fn list(&self) -> Result<Vec<String>> {
        self.inner.list()
    }
    fn try_lock(&self, name: &str) -> Result<Box<dyn LockGuard>> {
        self.inner.try_lock(name)
    }
    fn describe(&self) -> PathBuf {
        self.inner.describe()
    }
}

#[test]
fn a_gc_failure_after_publish_is_not_a_failed_commit() {
    let dir = Arc::new(FailingDeletes::default());
    let store = store_with(dir.clone(), 10);
    let mut w = store.writer().unwrap();
    w.delete("g", &item_ids(&[1])).unwrap();
    w.commit().unwrap();
    dir.fail_deletes.store(true, Ordering::Relaxed);
    // replaces the tombstone file of the first commit: the old one is garbage
    w.delete("g", &item_ids(&[2])).unwrap();
    let op = w
        .commit()
        .expect("the manifest is durable: the commit succeeded");
    assert!(matches!(w.take_gc_error(), Some(Error::Io { .. })));
    assert!(w.take_gc_error().is_none(), "taken once");
    assert!(!w.has_pending(), "nothing left to retry");
    assert_eq!(store.snapshot().unwrap().opstamp(), op);
    // compaction reports the same way
    w.compact("g").expect("compaction published");
    assert!(w.take_gc_error().is_some());
    dir.fail_deletes.store(false, Ordering::Relaxed);
    let removed = w.collect_garbage().unwrap();
    assert!(
        !removed.is_empty(),
        "the files left behind are collected later"
    );
    drop(w);
    drop(store);
    let s = Store::open(dir).unwrap().snapshot().unwrap();
    assert_eq!(s.len(), 8);
    assert_eq!(s.get(ItemId(2)), None);
}

#[test]
fn gc_removes_only_abandoned_temp_files() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = Arc::new(MmapDirectory::open(tmp.path()).unwrap());
    let store = store_with(dir.clone(), 3);
    let old = SystemTime::now() - Duration::from_secs(3600);
    let make = |name: &str, age: Option<SystemTime>| {
        let f = File::create(tmp.path().join(name)).unwrap();
        if let Some(t) = age {
            f.set_modified(t).unwrap();
        }
        f
    };
    // a writer still writing (it holds the lock), however long it has been at it
    let live = make(".big.hnsw.4242-0.tmp", Some(old));
    live.lock().unwrap();
    // a writer that died an hour ago
    drop(make(".seg.4243-0.tmp", Some(old)));
    // a writer that may not have taken its lock yet
    drop(make(".young.hnsw.4244-0.tmp", None));
    let w = store.writer().unwrap();
    w.collect_garbage().unwrap();
    let names = dir.list().unwrap();
    assert!(names.contains(&".big.hnsw.4242-0.tmp".to_string()));
    assert!(names.contains(&".young.hnsw.4244-0.tmp".to_string()));
    assert!(!names.contains(&".seg.4243-0.tmp".to_string()));
    drop(live);
}

#[test]
fn a_commit_to_another_generation_keeps_saved_indexes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = Arc::new(MmapDirectory::open(tmp.path()).unwrap());
    let store = store_with(dir.clone(), 300);
    let mut w = store.writer().unwrap();
    w.create_generation(GenerationSpec::new("other", 4, StorageType::F32))
        .unwrap();
    w.commit().unwrap();
    let snap = store.generation("g").unwrap();
    let params = HnswParams {
        m: 8,
        ef_construction: 32,
        seed: 1,
    };
    let name = Hnsw::build(&snap, Metric::L2, params)
        .unwrap()
        .save(dir.as_ref())
        .unwrap();
    for id in 0..5u64 {
        w.put_many("other", &item_ids(&[id]), &row(id, 4), None)
            .unwrap();
        w.commit().unwrap();
    }
    drop(w);
    drop(store);
    let store = Store::open(dir.clone()).unwrap();
    assert!(dir.exists(&name), "index {name} was collected");
    let snap = store.generation("g").unwrap();
    assert!(
        Hnsw::load(dir.as_ref(), &snap, Metric::L2)
            .unwrap()
            .is_some()
    );
    // a commit that changes "g" makes its index stale: collected, and no longer loaded
    let mut w = store.writer().unwrap();
    w.delete("g", &item_ids(&[0])).unwrap();
    w.commit().unwrap();
    assert!(!dir.exists(&name));
    let snap = store.generation("g").unwrap();
    assert!(
        Hnsw::load(dir.as_ref(), &snap, Metric::L2)
            .unwrap()
            .is_none()
    );
}

#[test]
fn the_serving_api_keeps_existing_attributes() {
    let store = Store::open(Arc::new(RamDirectory::new())).unwrap();
    {
        let mut w = store.writer().unwrap();
        w.create_generation(GenerationSpec::new("g", 4, StorageType::F32).attrs(2))
            .unwrap();
        w.put_many(
            "g",
            &item_ids(&[1, 2]),
            &rows(&[1, 2], 4),
            Some(&[5, 6, 7, 8]),
        )
        .unwrap();
        w.set_current("g").unwrap();
        w.commit().unwrap();
    }
    let es = EmbeddedStore::new(store.clone()).unwrap();
    es.put_many("g", &item_ids(&[2, 3]), &rows(&[12, 13], 4))
        .unwrap();
    let s = store.snapshot().unwrap();
    assert_eq!(s.get(ItemId(2)), Some(row(12, 4)));
    assert_eq!(
        s.attrs(ItemId(2)),
        Some(&[7, 8][..]),
        "attributes were reset"
    );
    assert_eq!(s.attrs(ItemId(1)), Some(&[5, 6][..]));
    assert_eq!(
        s.attrs(ItemId(3)),
        Some(&[0, 0][..]),
        "a new item gets zeros"
    );
}
