//! The embedded store: commits, reopen, upserts, deletes, validation, snapshots,
//! generation swaps, the writer lock, corruption, garbage collection, search.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use embed_store::search::{Filter, Hit};
use embed_store::{
    Error, GenerationSpec, ItemId, Metric, MmapDirectory, RamDirectory, StorageType, Store,
};

fn vecs(n: usize, dim: usize, seed: u64) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n * dim)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 33) as f32 / (1u64 << 31) as f32) * 2.0 - 1.0
        })
        .collect()
}

fn ids(range: std::ops::Range<u64>) -> Vec<ItemId> {
    range.map(ItemId).collect()
}

#[test]
fn commit_reopen_upsert_delete_on_disk() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = Arc::new(MmapDirectory::open(tmp.path()).unwrap());
    let store = Store::open(dir.clone()).unwrap();
    assert!(store.snapshot().is_none());
    let v = vecs(100, 8, 1);
    {
        let mut w = store.writer().unwrap();
        w.create_generation(
            GenerationSpec::new("pinclip-2026-11-20", 8, StorageType::F32).attrs(1),
        )
        .unwrap();
        let attrs: Vec<u32> = (0..100).map(|i| i % 3).collect();
        w.put_many("pinclip-2026-11-20", &ids(0..100), &v, Some(&attrs))
            .unwrap();
        w.set_current("pinclip-2026-11-20").unwrap();
        assert_eq!(w.commit().unwrap(), 1);
        // upsert 10 and delete 5
        let nv = vecs(10, 8, 2);
        w.put_many("pinclip-2026-11-20", &ids(90..100), &nv, Some(&[7; 10]))
            .unwrap();
        w.delete("pinclip-2026-11-20", &ids(0..5)).unwrap();
        w.commit().unwrap();
    }
    drop(store);
    let store = Store::open(dir).unwrap();
    let s = store.snapshot().unwrap();
    assert_eq!(s.generation(), "pinclip-2026-11-20");
    assert_eq!(s.len(), 95);
    assert!(s.get(ItemId(3)).is_none());
    assert_eq!(s.get(ItemId(50)).unwrap(), v[50 * 8..51 * 8].to_vec());
    assert_eq!(
        s.get(ItemId(95)).unwrap(),
        vecs(10, 8, 2)[5 * 8..6 * 8].to_vec()
    );
    assert_eq!(s.attrs(ItemId(95)).unwrap(), &[7]);
    assert_eq!(s.attrs(ItemId(50)).unwrap(), &[50 % 3]);
    let mut out = vec![0f32; 3 * 8];
    let found = s
        .get_many(&[ItemId(1), ItemId(50), ItemId(1000)], &mut out)
        .unwrap();
    assert_eq!(found, vec![false, true, false]);
    assert_eq!(&out[8..16], &v[50 * 8..51 * 8]);
}

#[test]
fn invalid_batches_are_typed_errors_and_leave_nothing_behind() {
    let store = Store::open(Arc::new(RamDirectory::new())).unwrap();
    let mut w = store.writer().unwrap();
    w.create_generation(GenerationSpec::new("g", 4, StorageType::F16))
        .unwrap();
    w.commit().unwrap();
    let e = w.put_many("g", &ids(0..2), &[0.0; 7], None).unwrap_err();
    assert!(
        matches!(e, Error::Batch { .. }) && e.to_string().contains("need 8 values, got 7"),
        "{e}"
    );
    let mut bad = vec![0.5; 8];
    bad[6] = f32::NAN;
    let e = w
        .put_many("g", &ids(0..2), &bad, None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("row 1 (id 1), column 2"), "{e}");
    let e = w
        .put_many("g", &[ItemId(4), ItemId(4)], &[0.0; 8], None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("id 4 appears twice"), "{e}");
    let e = w.put_many("nope", &ids(0..1), &[0.0; 4], None).unwrap_err();
    assert!(matches!(e, Error::Generation { .. }), "{e}");
    assert!(!w.has_pending());
    w.commit().unwrap();
    assert_eq!(store.generation("g").unwrap().len(), 0);
}

#[test]
fn one_writer_at_a_time() {
    let tmp = tempfile::tempdir().unwrap();
    let a = Store::open(Arc::new(MmapDirectory::open(tmp.path()).unwrap())).unwrap();
    let b = Store::open(Arc::new(MmapDirectory::open(tmp.path()).unwrap())).unwrap();
    let w = a.writer().unwrap();
    assert!(matches!(b.writer(), Err(Error::Locked { .. })));
    drop(w);
    b.writer().unwrap();
}

#[test]
fn snapshots_survive_commits_generation_swaps_and_garbage_collection() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = Arc::new(MmapDirectory::open(tmp.path()).unwrap());
    let store = Store::open(dir.clone()).unwrap();
    let mut w = store.writer().unwrap();
    w.create_generation(GenerationSpec::new("old", 4, StorageType::F32))
        .unwrap();
    w.put_many("old", &ids(0..10), &vecs(10, 4, 3), None)
        .unwrap();
    w.set_current("old").unwrap();
    w.commit().unwrap();
    let held = store.snapshot().unwrap();
    let old_files: Vec<String> = held
        .segments()
        .iter()
        .map(|s| s.segment.name().to_string())
        .collect();

    w.create_generation(GenerationSpec::new("new", 6, StorageType::Int8))
        .unwrap();
    w.put_many("new", &ids(0..20), &vecs(20, 6, 4), None)
        .unwrap();
    w.set_current("new").unwrap();
    w.commit().unwrap();
    w.drop_generation("old").unwrap();
    w.commit().unwrap();
    assert_eq!(store.snapshot().unwrap().generation(), "new");
    assert_eq!(store.generations(), vec!["new".to_string()]);
    // the held snapshot still reads, and its files are still there
    assert_eq!(
        held.get(ItemId(3)).unwrap(),
        vecs(10, 4, 3)[12..16].to_vec()
    );
    for f in &old_files {
        assert!(
            tmp.path().join(f).exists(),
            "{f} removed while a snapshot holds it"
        );
    }
    drop(held);
    let removed = w.collect_garbage().unwrap();
    assert_eq!(removed, old_files);
    // and the store reopens without them
    drop(w);
    let again = Store::open(dir).unwrap();
    assert_eq!(again.snapshot().unwrap().len(), 20);
}

#[test]
fn corrupt_files_are_typed_errors_on_open() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = Arc::new(MmapDirectory::open(tmp.path()).unwrap());
    let store = Store::open(dir.clone()).unwrap();
    let mut w = store.writer().unwrap();
    w.create_generation(GenerationSpec::new("g", 4, StorageType::F32))
        .unwrap();
    w.put_many("g", &ids(0..50), &vecs(50, 4, 5), None).unwrap();
    w.set_current("g").unwrap();
    w.commit().unwrap();
    w.delete("g", &ids(0..3)).unwrap();
    w.commit().unwrap();
    drop(w);
    drop(store);
    let files: Vec<String> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|f| f.ends_with(".seg") || f.ends_with(".del") || f == "meta.json")
        .collect();
    assert_eq!(files.len(), 3, "{files:?}");
    for f in files {
        let p = tmp.path().join(&f);
        let orig = std::fs::read(&p).unwrap();
        for pos in [0, orig.len() / 2, orig.len() - 2] {
            let mut b = orig.clone();
            b[pos] ^= 0x10;
            std::fs::write(&p, &b).unwrap();
            match Store::open(dir.clone()) {
                Err(Error::Corrupt { .. }) | Err(Error::Version { .. }) => {}
                Ok(s) => {
                    // a flip that leaves the manifest's meaning intact must give the same data
                    assert_eq!(f, "meta.json", "flip at {pos} of {f} went unnoticed");
                    assert_eq!(
                        s.snapshot().unwrap().get(ItemId(10)).unwrap(),
                        vecs(50, 4, 5)[40..44].to_vec()
                    );
                }
                Err(e) => panic!("{f}@{pos}: unexpected error {e}"),
            }
        }
        std::fs::write(&p, &orig).unwrap();
    }
    Store::open(dir).unwrap();
}

fn brute(
    data: &[f32],
    dim: usize,
    q: &[f32],
    k: usize,
    metric: Metric,
    keep: impl Fn(u64) -> bool,
) -> Vec<u64> {
    let mut s: Vec<(f32, u64)> = data
        .chunks(dim)
        .enumerate()
        .filter(|(i, _)| keep(*i as u64))
        .map(|(i, x)| {
            let d: f32 = q.iter().zip(x).map(|(a, b)| a * b).sum();
            let x2: f32 = x.iter().map(|a| a * a).sum();
            let q2: f32 = q.iter().map(|a| a * a).sum();
            let score = match metric {
                Metric::InnerProduct => d,
                Metric::Cosine => d / (x2.sqrt() * q2.sqrt()),
                Metric::L2 => -(q2 - 2.0 * d + x2),
            };
            (score, i as u64)
        })
        .collect();
    s.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    s.into_iter().take(k).map(|x| x.1).collect()
}

#[test]
fn exact_search_matches_brute_force_with_filters() {
    let (n, dim) = (2000, 24);
    let data = vecs(n, dim, 9);
    for storage in [StorageType::F32, StorageType::F16, StorageType::Int8] {
        let store = Store::open(Arc::new(RamDirectory::new())).unwrap();
        let mut w = store.writer().unwrap();
        w.create_generation(GenerationSpec::new("g", dim, storage).attrs(1))
            .unwrap();
        // two segments
        let attrs: Vec<u32> = (0..n as u32).map(|i| i % 4).collect();
        w.put_many(
            "g",
            &ids(0..1000),
            &data[..1000 * dim],
            Some(&attrs[..1000]),
        )
        .unwrap();
        w.set_current("g").unwrap();
        w.commit().unwrap();
        w.put_many(
            "g",
            &ids(1000..2000),
            &data[1000 * dim..],
            Some(&attrs[1000..]),
        )
        .unwrap();
        w.commit().unwrap();
        let s = store.snapshot().unwrap();
        // 40 queries: the batch search's blocks of 16 and tiles of 256 rows, partly full.
        let queries = vecs(40, dim, 11);
        let exclude: Vec<u64> = (0..2000).step_by(7).collect();
        let pred = |a: &[u32]| a[0] != 2;
        for metric in [Metric::InnerProduct, Metric::Cosine, Metric::L2] {
            let filter = Filter::none().exclude(&exclude).with_attrs(&pred);
            let got = s.search_batch(&queries, 10, metric, &filter).unwrap();
            assert_eq!(got.len(), 40);
            for (qi, hits) in got.iter().enumerate() {
                let q = &queries[qi * dim..(qi + 1) * dim];
                // The batch (one GEMM per block and tile) gives the single query's hits;
                // scores agree to float rounding (the GEMM sums in another order).
                let one = s.search(q, 10, metric, &filter).unwrap();
                let ids_of = |h: &[Hit]| h.iter().map(|h| h.id).collect::<Vec<_>>();
                assert_eq!(ids_of(hits), ids_of(&one), "{storage:?} {metric:?}");
                for (a, b) in hits.iter().zip(&one) {
                    assert!((a.score - b.score).abs() <= 1e-5 * a.score.abs().max(1.0));
                }
                let want = brute(&data, dim, q, 10, metric, |i| i % 7 != 0 && i % 4 != 2);
                let got_ids: Vec<u64> = hits.iter().map(|h| h.id.0).collect();
                assert!(hits.windows(2).all(|w| w[0].score >= w[1].score));
                let overlap = got_ids.iter().filter(|i| want.contains(i)).count();
                match storage {
                    StorageType::F32 => assert_eq!(got_ids, want, "{metric:?}"),
                    // quantized storage may swap near-ties
                    _ => assert!(overlap >= 9, "{storage:?} {metric:?}: {overlap}/10"),
                }
            }
        }
    }
}

#[test]
fn compaction_keeps_every_live_row() {
    let store = Store::open(Arc::new(RamDirectory::new())).unwrap();
    let mut w = store.writer().unwrap();
    w.create_generation(GenerationSpec::new("g", 3, StorageType::Int8))
        .unwrap();
    for b in 0..5u64 {
        w.put_many("g", &ids(b * 10..b * 10 + 10), &vecs(10, 3, b), None)
            .unwrap();
        w.commit().unwrap();
    }
    w.delete("g", &ids(0..15)).unwrap();
    w.commit().unwrap();
    let before = store.generation("g").unwrap();
    let want: Vec<(ItemId, Vec<f32>)> = (15..50)
        .map(|i| (ItemId(i), before.get(ItemId(i)).unwrap()))
        .collect();
    w.compact("g").unwrap();
    let after = store.generation("g").unwrap();
    assert_eq!(after.segments().len(), 1);
    assert_eq!(after.len(), 35);
    for (id, v) in want {
        assert_eq!(after.get(id).unwrap(), v, "{id:?}");
    }
}

#[test]
fn readers_see_no_error_while_generations_swap() {
    let store = Store::open(Arc::new(RamDirectory::new())).unwrap();
    let mut w = store.writer().unwrap();
    w.create_generation(GenerationSpec::new("g0", 8, StorageType::F32))
        .unwrap();
    w.put_many("g0", &ids(0..200), &vecs(200, 8, 0), None)
        .unwrap();
    w.set_current("g0").unwrap();
    w.commit().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    // Reads done by each reader.
    let counts: Arc<[AtomicU64; 2]> = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
    let readers: Vec<_> = (0..2)
        .map(|t| {
            let store = store.clone();
            let stop = stop.clone();
            let counts = counts.clone();
            std::thread::spawn(move || {
                let mut reads = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let s = store.snapshot().expect("a current generation");
                    // each generation gN holds ids 0..200 with vectors seeded N
                    let seed: u64 = s.generation()[1..].parse().unwrap();
                    let id = (reads * 31 + t) % 200;
                    let v = s.get(ItemId(id)).expect("every id present");
                    assert_eq!(
                        v,
                        vecs(200, 8, seed)[id as usize * 8..id as usize * 8 + 8].to_vec()
                    );
                    let hits = s.search(&v, 1, Metric::L2, &Filter::none()).unwrap();
                    assert_eq!(hits[0].id, ItemId(id));
                    reads += 1;
                    counts[t as usize].fetch_add(1, Ordering::Relaxed);
                }
                reads
            })
        })
        .collect();
    // let every reader run between swaps, so each swap happens under both of them
    let wait_for_reads = |n: u64| {
        let start = std::time::Instant::now();
        let target: Vec<u64> = counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed) + n)
            .collect();
        while counts
            .iter()
            .zip(&target)
            .any(|(c, t)| c.load(Ordering::Relaxed) < *t)
            && start.elapsed().as_secs() < 20
        {
            std::thread::yield_now();
        }
    };
    for g in 1..=20u64 {
        wait_for_reads(2);
        let name = format!("g{g}");
        w.create_generation(GenerationSpec::new(&name, 8, StorageType::F32))
            .unwrap();
        w.put_many(&name, &ids(0..200), &vecs(200, 8, g), None)
            .unwrap();
        w.set_current(&name).unwrap();
        w.commit().unwrap();
        w.drop_generation(&format!("g{}", g - 1)).unwrap();
        w.commit().unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        assert!(r.join().unwrap() > 0);
    }
}
