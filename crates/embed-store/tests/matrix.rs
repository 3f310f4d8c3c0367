//! Batch exact search by matrix product equals the scalar exact search: every metric,
//! every storage type, tombstones, both kinds of filter; on the CPU always, on a CUDA
//! device when one exists (skipped with a printed reason otherwise).

use std::sync::Arc;

use candle_core::Device;
use embed_store::matrix::DeviceMatrix;
use embed_store::search::AttrPredicate;
use embed_store::{
    Filter, GenerationSpec, Hit, ItemId, Metric, RamDirectory, Snapshot, StorageType, Store,
};

const D: usize = 24;

fn rows(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed | 1;
    (0..n * D)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        })
        .collect()
}

/// Two segments (two commits), 300 deletions, one u32 attribute (id % 7).
fn snapshot(storage: StorageType) -> Snapshot {
    let store = Store::open(Arc::new(RamDirectory::new())).unwrap();
    let mut w = store.writer().unwrap();
    w.create_generation(GenerationSpec::new("g", D, storage).attrs(1))
        .unwrap();
    for (part, seed) in [(0u64..3000, 1u64), (3000..5000, 2)] {
        let ids: Vec<ItemId> = part.clone().map(ItemId).collect();
        let attrs: Vec<u32> = part.map(|i| (i % 7) as u32).collect();
        w.put_many("g", &ids, &rows(ids.len(), seed), Some(&attrs))
            .unwrap();
        w.set_current("g").unwrap();
        w.commit().unwrap();
    }
    let dead: Vec<ItemId> = (0..300).map(|i| ItemId(i * 13)).collect();
    w.delete("g", &dead).unwrap();
    w.commit().unwrap();
    drop(w);
    store.snapshot().unwrap()
}

fn same(a: &[Hit], b: &[Hit], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}");
    for (r, (x, y)) in a.iter().zip(b).enumerate() {
        assert!(
            (x.score - y.score).abs() < 1e-4,
            "{what} rank {r}: {x:?} vs {y:?}"
        );
        if x.id != y.id {
            // Only a near-tie may swap (GEMM sums in another order than the scan).
            let tie = b
                .iter()
                .any(|h| h.id == x.id && (h.score - x.score).abs() < 1e-4);
            assert!(tie, "{what} rank {r}: {x:?} vs {y:?}");
        }
    }
}

fn check(device: &Device) {
    let queries = rows(40, 99);
    let exclude: Vec<u64> = (0..5000).step_by(3).collect();
    let pred = |a: &[u32]| a[0] != 2;
    let pred: &AttrPredicate = &pred;
    for storage in [StorageType::F32, StorageType::F16, StorageType::Int8] {
        let snap = snapshot(storage);
        for metric in [Metric::InnerProduct, Metric::Cosine, Metric::L2] {
            let m = DeviceMatrix::build(&snap, metric, device).unwrap();
            assert_eq!(m.len(), 4700);
            // k <= DEVICE_TOPK_MAX without filters selects on the device; the rest on
            // the host.
            for (fname, filter, k) in [
                ("none", Filter::none(), 10),
                ("none k=1", Filter::none(), 1),
                ("none k=32", Filter::none(), 32),
                ("none k=40", Filter::none(), 40),
                ("exclude", Filter::none().exclude(&exclude), 10),
                ("attrs", Filter::none().with_attrs(pred), 10),
            ] {
                let got = m.search_batch(&snap, &queries, k, &filter).unwrap();
                assert_eq!(got.len(), 40);
                for (qi, q) in queries.chunks_exact(D).enumerate() {
                    let want = snap.search(q, k, metric, &filter).unwrap();
                    assert_eq!(got[qi].len(), k);
                    same(
                        &got[qi],
                        &want,
                        &format!("{storage:?} {metric:?} {fname} query {qi}"),
                    );
                }
            }
        }
    }
}

#[test]
fn gemm_batch_search_equals_the_scan_on_the_cpu() {
    check(&Device::Cpu);
}

#[test]
fn gemm_batch_search_equals_the_scan_on_cuda() {
    match Device::new_cuda(0) {
        Ok(dev) => check(&dev),
        Err(e) => eprintln!("skipped: no CUDA device ({e})"),
    }
}

#[test]
fn bad_queries_and_other_snapshots_are_refused() {
    let snap = snapshot(StorageType::F32);
    let m = DeviceMatrix::build(&snap, Metric::Cosine, &Device::Cpu).unwrap();
    assert!(
        m.search_batch(&snap, &[0.0; D + 1], 5, &Filter::none())
            .is_err()
    );
    let mut q = vec![0.1; D];
    q[3] = f32::NAN;
    let err = m.search_batch(&snap, &q, 5, &Filter::none()).unwrap_err();
    assert!(err.to_string().contains("column 3"), "{err}");
    // A snapshot of another generation.
    let store = Store::open(Arc::new(RamDirectory::new())).unwrap();
    let mut w = store.writer().unwrap();
    w.create_generation(GenerationSpec::new("h", D, StorageType::F32))
        .unwrap();
    w.put_many("h", &[ItemId(1)], &rows(1, 5), None).unwrap();
    w.set_current("h").unwrap();
    w.commit().unwrap();
    drop(w);
    let h = store.snapshot().unwrap();
    let err = m
        .search_batch(&h, &[0.1; D], 5, &Filter::none())
        .unwrap_err();
    assert!(err.to_string().contains("built from generation"), "{err}");
    assert!(
        m.search_batch(&snap, &[], 5, &Filter::none())
            .unwrap()
            .is_empty()
    );
}
