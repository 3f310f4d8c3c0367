//! HNSW recall against exact search, with and without filters.

use std::sync::Arc;

use embed_store::hnsw::{Hnsw, HnswParams, Scratch};
use embed_store::search::{Filter, Hit};
use embed_store::{GenerationSpec, ItemId, Metric, RamDirectory, Snapshot, StorageType, Store};

/// L2-normalised points from a Gaussian mixture (clusters, within-cluster std 0.35).
fn mixture(n: usize, d: usize, clusters: usize, seed: u64) -> Vec<f32> {
    let mut s = seed | 1;
    let mut normal = move || {
        // Box-Muller from a xorshift stream
        let mut u = || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 11) as f64 + 0.5) / (1u64 << 53) as f64
        };
        let (a, b) = (u(), u());
        ((-2.0 * a.ln()).sqrt() * (std::f64::consts::TAU * b).cos()) as f32
    };
    let centers: Vec<f32> = (0..clusters * d).map(|_| normal()).collect();
    let mut out = Vec::with_capacity(n * d);
    for i in 0..n {
        let c = (i * 7919) % clusters;
        let mut v: Vec<f32> = (0..d)
            .map(|j| centers[c * d + j] / (d as f32).sqrt() + 0.35 * normal() / (d as f32).sqrt())
            .collect();
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.iter_mut().for_each(|x| *x /= norm);
        out.extend(v);
    }
    out
}

fn snapshot(n: usize, d: usize, storage: StorageType) -> (Arc<Store>, Snapshot, Vec<f32>) {
    let data = mixture(n, d, 50, 7);
    let store = Store::open(Arc::new(RamDirectory::new())).unwrap();
    let mut w = store.writer().unwrap();
    w.create_generation(GenerationSpec::new("g", d, storage).attrs(1))
        .unwrap();
    let ids: Vec<ItemId> = (0..n as u64).map(ItemId).collect();
    let attrs: Vec<u32> = (0..n as u32).map(|i| i % 5).collect();
    w.put_many("g", &ids, &data, Some(&attrs)).unwrap();
    w.set_current("g").unwrap();
    w.commit().unwrap();
    w.delete(
        "g",
        &(0..n as u64).step_by(11).map(ItemId).collect::<Vec<_>>(),
    )
    .unwrap();
    w.commit().unwrap();
    let s = store.snapshot().unwrap();
    (store, s, data)
}

fn recall(
    snap: &Snapshot,
    index: &Hnsw,
    queries: &[f32],
    d: usize,
    metric: Metric,
    ef: usize,
    filter: &Filter,
) -> f64 {
    let mut scratch = Scratch::new(index.len());
    let mut hit = 0;
    let mut total = 0;
    for q in queries.chunks(d) {
        let exact = snap.search(q, 10, metric, filter).unwrap();
        let approx = index.search(snap, q, 10, ef, filter, &mut scratch).unwrap();
        for h in &approx {
            assert!(
                filter.admits(h.id.0, || snap.attrs(h.id).unwrap()),
                "filtered item {h:?} returned"
            );
            assert!(h.id.0 % 11 != 0, "deleted item returned");
        }
        total += exact.len();
        hit += found(&exact, &approx);
    }
    hit as f64 / total as f64
}

/// How many of `approx` are in `exact`.
fn found(exact: &[Hit], approx: &[Hit]) -> usize {
    approx
        .iter()
        .filter(|a| exact.iter().any(|e| e.id == a.id))
        .count()
}

#[test]
fn recall_at_10_is_high_for_every_metric_and_with_filters() {
    let (n, d) = (8000, 32);
    let (_store, snap, _) = snapshot(n, d, StorageType::F32);
    let queries = mixture(100, d, 50, 99);
    for metric in [Metric::InnerProduct, Metric::Cosine, Metric::L2] {
        let index = Hnsw::build(
            &snap,
            metric,
            HnswParams {
                m: 16,
                ef_construction: 100,
                seed: 1,
            },
        )
        .unwrap();
        assert_eq!(index.len(), snap.len());
        let r16 = recall(&snap, &index, &queries, d, metric, 16, &Filter::none());
        let r128 = recall(&snap, &index, &queries, d, metric, 128, &Filter::none());
        println!("{metric:?}: recall@10 ef=16 {r16:.3}, ef=128 {r128:.3}");
        assert!(r128 >= 0.97, "{metric:?}: {r128}");
        assert!(r128 >= r16);
        let exclude: Vec<u64> = (0..n as u64).step_by(3).collect();
        let pred = |a: &[u32]| a[0] != 1;
        let filter = Filter::none().exclude(&exclude).with_attrs(&pred);
        let rf = recall(&snap, &index, &queries, d, metric, 128, &filter);
        println!("{metric:?}: filtered recall@10 ef=128 {rf:.3}");
        assert!(rf >= 0.95, "{metric:?} filtered: {rf}");
    }
}

#[test]
fn a_stale_snapshot_is_refused() {
    let (store, snap, _) = snapshot(500, 8, StorageType::F16);
    let index = Hnsw::build(&snap, Metric::L2, HnswParams::default()).unwrap();
    let mut w = store.writer().unwrap();
    w.delete("g", &[ItemId(1)]).unwrap();
    w.commit().unwrap();
    let newer = store.snapshot().unwrap();
    let mut scratch = Scratch::new(index.len());
    let e = index
        .search(&newer, &[0.0; 8], 5, 32, &Filter::none(), &mut scratch)
        .unwrap_err();
    assert!(e.to_string().contains("built from generation"), "{e}");
}

#[test]
fn an_int8_index_keeps_recall_after_exact_rerank_with_a_quarter_of_the_memory() {
    let (n, d) = (8000, 32);
    let (_store, snap, _) = snapshot(n, d, StorageType::F32);
    let queries = mixture(100, d, 50, 98);
    let params = HnswParams {
        m: 16,
        ef_construction: 100,
        seed: 3,
    };
    for metric in [Metric::InnerProduct, Metric::Cosine, Metric::L2] {
        let f32_index = Hnsw::build(&snap, metric, params).unwrap();
        let mut int8_index = Hnsw::build(&snap, metric, params).unwrap();
        int8_index.quantize_int8();
        assert!(int8_index.is_quantized() && !f32_index.is_quantized());
        // d bytes of codes + a 4-byte scale per node, against 4d bytes
        assert_eq!(int8_index.vector_bytes(), snap.len() * (d + 4));
        assert_eq!(f32_index.vector_bytes(), snap.len() * 4 * d);
        let rf = recall(&snap, &f32_index, &queries, d, metric, 128, &Filter::none());
        let ri = recall(
            &snap,
            &int8_index,
            &queries,
            d,
            metric,
            128,
            &Filter::none(),
        );
        println!("{metric:?}: recall@10 ef=128 f32 {rf:.3}, int8+rerank {ri:.3}");
        assert!(ri >= rf - 0.01, "{metric:?}: int8 {ri} vs f32 {rf}");
        // reranked scores are exact
        let q = &queries[..d];
        let mut scratch = Scratch::new(int8_index.len());
        let hits = int8_index
            .search(&snap, q, 10, 128, &Filter::none(), &mut scratch)
            .unwrap();
        let exact = snap.search(q, 10, metric, &Filter::none()).unwrap();
        for h in &hits {
            if let Some(e) = exact.iter().find(|e| e.id == h.id) {
                assert!((e.score - h.score).abs() <= 1e-4 * e.score.abs().max(1.0));
            }
        }
        // filters still hold on the quantised graph
        let exclude: Vec<u64> = (0..n as u64).step_by(3).collect();
        let filter = Filter::none().exclude(&exclude);
        let rq = recall(&snap, &int8_index, &queries, d, metric, 128, &filter);
        assert!(rq >= 0.94, "{metric:?} filtered int8: {rq}");
    }
}

#[test]
fn a_saved_index_loads_zero_copy_answers_the_same_and_is_collected_when_stale() {
    use embed_store::MmapDirectory;
    let tmp = tempfile::tempdir().unwrap();
    let dir: Arc<dyn embed_store::Directory> = Arc::new(MmapDirectory::open(tmp.path()).unwrap());
    let store = Store::open(dir.clone()).unwrap();
    let (n, d) = (3000, 16);
    let data = mixture(n, d, 20, 5);
    let mut w = store.writer().unwrap();
    w.create_generation(GenerationSpec::new("g", d, StorageType::F32))
        .unwrap();
    let ids: Vec<ItemId> = (0..n as u64).map(ItemId).collect();
    w.put_many("g", &ids, &data, None).unwrap();
    w.set_current("g").unwrap();
    w.commit().unwrap();
    let snap = store.snapshot().unwrap();
    let params = HnswParams {
        m: 12,
        ef_construction: 80,
        seed: 9,
    };
    let queries = mixture(20, d, 20, 77);
    for quantize in [false, true] {
        let mut built = Hnsw::build(&snap, Metric::Cosine, params).unwrap();
        if quantize {
            built.quantize_int8();
        }
        let name = built.save(store.directory()).unwrap();
        assert!(name.ends_with(".hnsw"));
        assert!(
            Hnsw::load(store.directory(), &snap, Metric::L2)
                .unwrap()
                .is_none()
        );
        let loaded = Hnsw::load(store.directory(), &snap, Metric::Cosine)
            .unwrap()
            .expect("saved index");
        assert_eq!(loaded.len(), built.len());
        assert_eq!(loaded.is_quantized(), quantize);
        let (mut s1, mut s2) = (Scratch::new(n), Scratch::new(n));
        for q in queries.chunks(d) {
            let a = built
                .search(&snap, q, 10, 64, &Filter::none(), &mut s1)
                .unwrap();
            let b = loaded
                .search(&snap, q, 10, 64, &Filter::none(), &mut s2)
                .unwrap();
            assert_eq!(a, b);
        }
        // a flipped byte is caught
        let path = tmp.path().join(&name);
        let mut bytes = std::fs::read(&path).unwrap();
        let at = bytes.len() - 17;
        bytes[at] ^= 0x40;
        std::fs::write(&path, &bytes).unwrap();
        let e = Hnsw::load(store.directory(), &snap, Metric::Cosine)
            .unwrap_err()
            .to_string();
        assert!(e.contains("checksum"), "{e}");
        std::fs::remove_file(&path).unwrap();
    }
    // an index of an older commit is garbage after the next commit
    let built = Hnsw::build(&snap, Metric::InnerProduct, params).unwrap();
    let name = built.save(store.directory()).unwrap();
    assert!(tmp.path().join(&name).exists());
    w.delete("g", &[ItemId(1)]).unwrap();
    w.commit().unwrap();
    assert!(!tmp.path().join(&name).exists(), "stale index file kept");
    let newer = store.snapshot().unwrap();
    assert!(
        Hnsw::load(store.directory(), &newer, Metric::InnerProduct)
            .unwrap()
            .is_none()
    );
}

#[test]
fn a_parallel_build_keeps_the_recall_of_the_serial_build() {
    let (n, d) = (12_000, 32);
    let (_store, snap, _) = snapshot(n, d, StorageType::F32);
    let queries = mixture(100, d, 50, 97);
    let params = HnswParams {
        m: 16,
        ef_construction: 100,
        seed: 5,
    };
    let build = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| Hnsw::build(&snap, Metric::Cosine, params).unwrap())
    };
    let serial = build(1);
    let parallel = build(2);
    let again = build(2);
    let r_serial = recall(
        &snap,
        &serial,
        &queries,
        d,
        Metric::Cosine,
        128,
        &Filter::none(),
    );
    let r_parallel = recall(
        &snap,
        &parallel,
        &queries,
        d,
        Metric::Cosine,
        128,
        &Filter::none(),
    );
    println!("recall@10 ef=128: serial {r_serial:.3}, parallel {r_parallel:.3}");
    assert!(r_parallel >= r_serial - 0.01, "{r_parallel} vs {r_serial}");
    assert!(r_parallel >= 0.9, "{r_parallel}");
    // The parallel graph does not depend on scheduling.
    let mut s1 = Scratch::new(parallel.len());
    let mut s2 = Scratch::new(again.len());
    for q in queries.chunks_exact(d) {
        let a = parallel
            .search(&snap, q, 10, 32, &Filter::none(), &mut s1)
            .unwrap();
        let b = again
            .search(&snap, q, 10, 32, &Filter::none(), &mut s2)
            .unwrap();
        assert_eq!(a, b);
    }
}

#[test]
fn an_index_is_updated_with_upserts_appends_and_deletes_without_a_rebuild() {
    let (n, d) = (4000, 32);
    let (store, snap, _) = snapshot(n, d, StorageType::F32);
    let metric = Metric::Cosine;
    let params = HnswParams {
        m: 16,
        ef_construction: 100,
        seed: 1,
    };
    let index = Hnsw::build(&snap, metric, params).unwrap();
    // Next commit: 200 upserts with new vectors, 900 new items, 100 more deletes.
    let live = |i: &u64| !i.is_multiple_of(11);
    let upserts: Vec<u64> = (1..n as u64).step_by(3).filter(live).take(200).collect();
    let appends: Vec<u64> = (n as u64..n as u64 + 1000).filter(live).collect();
    let deletes: Vec<u64> = (2..n as u64).step_by(5).filter(live).take(100).collect();
    let new_vectors = mixture(upserts.len() + appends.len(), d, 50, 23);
    let put: Vec<ItemId> = upserts.iter().chain(&appends).map(|&i| ItemId(i)).collect();
    let attrs = vec![0u32; put.len()];
    let mut w = store.writer().unwrap();
    w.put_many("g", &put, &new_vectors, Some(&attrs)).unwrap();
    let gone: Vec<ItemId> = deletes
        .iter()
        .filter(|i| !upserts.contains(i))
        .map(|&i| ItemId(i))
        .collect();
    w.delete("g", &gone).unwrap();
    w.commit().unwrap();
    drop(w);
    let newer = store.snapshot().unwrap();

    let updated = index.update(&newer, 100, 9).unwrap();
    assert_eq!(updated.len(), index.len() + put.len());
    let rebuilt = Hnsw::build(&newer, metric, params).unwrap();
    let queries = mixture(100, d, 50, 99);
    let recall_of = |h: &Hnsw| {
        let mut s = Scratch::new(h.len());
        let (mut hit, mut total) = (0, 0);
        for q in queries.chunks(d) {
            let exact = newer.search(q, 10, metric, &Filter::none()).unwrap();
            let got = h
                .search(&newer, q, 10, 128, &Filter::none(), &mut s)
                .unwrap();
            for g in &got {
                // Only live items, scored with their current vector.
                let e = newer
                    .search(q, newer.len(), metric, &Filter::none())
                    .unwrap();
                let want = e
                    .iter()
                    .find(|x| x.id == g.id)
                    .expect("returned a deleted item");
                assert!((want.score - g.score).abs() < 1e-4, "{g:?} vs {want:?}");
            }
            total += exact.len();
            hit += found(&exact, &got);
        }
        hit as f64 / total as f64
    };
    let (ru, rr) = (recall_of(&updated), recall_of(&rebuilt));
    println!("recall@10 ef=128: updated {ru:.3}, rebuilt {rr:.3}");
    assert!(ru >= 0.95 && ru >= rr - 0.02, "updated {ru} rebuilt {rr}");

    // Saved and loaded like a built index.
    updated.save(store.directory()).unwrap();
    let loaded = Hnsw::load(store.directory(), &newer, metric)
        .unwrap()
        .unwrap();
    let mut s = Scratch::new(loaded.len());
    let q = &queries[..d];
    assert_eq!(
        loaded
            .search(&newer, q, 10, 64, &Filter::none(), &mut s)
            .unwrap(),
        updated
            .search(&newer, q, 10, 64, &Filter::none(), &mut s)
            .unwrap()
    );

    // Refused: a quantised index, an older commit, a commit whose segments were merged.
    let mut q8 = Hnsw::build(&snap, metric, params).unwrap();
    q8.quantize_int8();
    assert!(
        q8.update(&newer, 100, 9)
            .unwrap_err()
            .to_string()
            .contains("quantised")
    );
    assert!(updated.update(&snap, 100, 9).is_err());
    let mut w = store.writer().unwrap();
    w.compact("g").unwrap();
    w.commit().unwrap();
    drop(w);
    let compacted = store.snapshot().unwrap();
    let e = updated.update(&compacted, 100, 9).unwrap_err();
    assert!(e.to_string().contains("rebuild"), "{e}");
}
