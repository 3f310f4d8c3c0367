//! The `VectorStore` contract, run against the embedded backend and against a real
//! 3-master Redis Cluster started on loopback ports (`mosaic_testkit::redis`: redis-server must be
//! installed, `scripts/test.sh` installs it; this test fails, never skips, without it).

use std::sync::Arc;

use embed_store::redis_cluster::RedisClusterStore;
use embed_store::store::GenerationSpec;
use embed_store::{EmbeddedStore, ItemId, RamDirectory, StorageType, Store, VectorStore};
use mosaic_testkit::redis::{Security, start_cluster};

fn vectors(n: usize, dim: usize, salt: f32) -> Vec<f32> {
    (0..n * dim)
        .map(|i| (i as f32 * 0.37 + salt).sin() * 0.9)
        .collect()
}

/// The contract every backend must honour.
fn contract(s: &dyn VectorStore) {
    let dim = 16;
    let n = 3000; // several pipeline chunks
    let ids: Vec<ItemId> = (0..n as u64).map(|i| ItemId(i * 7 + 1)).collect();
    assert_eq!(s.current().unwrap(), None);
    assert!(
        s.get_many(&ids[..2]).is_err(),
        "no generation is current yet"
    );

    // generation A, every storage type round-trips within its precision
    for (name, storage, tol) in [
        ("a-f32", StorageType::F32, 0.0),
        ("a-f16", StorageType::F16, 1e-3),
        ("a-int8", StorageType::Int8, 0.9 / 127.0),
    ] {
        s.create_generation(&GenerationSpec::new(name, dim, storage))
            .unwrap();
        let v = vectors(n, dim, 0.0);
        s.put_many(name, &ids, &v).unwrap();
        s.set_current(name).unwrap();
        let mut query = ids[..50].to_vec();
        query.push(ItemId(999_999)); // absent
        let f = s.get_many(&query).unwrap();
        assert_eq!(f.generation, name);
        assert_eq!(f.dim, dim);
        assert!(f.found[..50].iter().all(|&x| x) && !f.found[50]);
        assert!(f.row(50).is_none());
        for i in 0..50 {
            for (a, b) in f.row(i).unwrap().iter().zip(&v[i * dim..(i + 1) * dim]) {
                assert!((a - b).abs() <= tol + 1e-7, "{name} row {i}: {a} vs {b}");
            }
        }
        let last = s.get(ids[n - 1]).unwrap().unwrap();
        assert!((last[0] - v[(n - 1) * dim]).abs() <= tol + 1e-7);
    }
    let a = "a-f32";
    s.set_current(a).unwrap();

    // bad batches are refused whole
    let fresh = [ItemId(5_000_001), ItemId(5_000_002)];
    let mut bad = vectors(2, dim, 1.0);
    bad[dim + 3] = f32::NAN;
    let e = s.put_many(a, &fresh, &bad).unwrap_err().to_string();
    assert!(e.contains("row 1") && e.contains("column 3"), "{e}");
    let e = s
        .put_many(a, &fresh, &vectors(2, dim + 1, 1.0)[..2 * dim + 1])
        .unwrap_err()
        .to_string();
    assert!(e.contains("values"), "{e}");
    let e = s
        .put_many(a, &[fresh[0], fresh[0]], &vectors(2, dim, 1.0))
        .unwrap_err()
        .to_string();
    assert!(e.contains("twice"), "{e}");
    assert!(!s.get_many(&fresh).unwrap().found.iter().any(|&x| x));
    assert!(
        s.put_many("no-such-gen", &fresh, &vectors(2, dim, 1.0))
            .is_err()
    );
    assert!(
        s.create_generation(&GenerationSpec::new(a, dim, StorageType::F32))
            .is_err()
    );
    assert!(s.set_current("no-such-gen").is_err());
    assert_eq!(s.current().unwrap().as_deref(), Some(a));

    // upsert and delete
    let new_v = vectors(1, dim, 5.0);
    s.put_many(a, &ids[..1], &new_v).unwrap();
    s.delete(a, &ids[1..3]).unwrap();
    let f = s.get_many(&ids[..4]).unwrap();
    assert_eq!(f.row(0).unwrap(), &new_v[..]);
    assert_eq!(f.found, vec![true, false, false, true]);
    // every id, once, ascending: the upsert kept one, the deletes are gone
    let mut want: Vec<ItemId> = ids
        .iter()
        .copied()
        .filter(|i| !ids[1..3].contains(i))
        .collect();
    want.sort_unstable();
    assert_eq!(s.ids(a).unwrap(), want);
    assert!(s.ids("no-such-gen").is_err());

    // generation B of another width: readers switch at once and see only B
    let b = "b-pinclip-2026-11-22";
    s.create_generation(&GenerationSpec::new(b, 8, StorageType::F32))
        .unwrap();
    let vb = vectors(10, 8, 2.0);
    s.put_many(b, &ids[..10], &vb).unwrap();
    assert_eq!(
        s.get_many(&ids[..1]).unwrap().generation,
        a,
        "not switched yet"
    );
    s.set_current(b).unwrap();
    let f = s.get_many(&ids[..12]).unwrap();
    assert_eq!((f.generation.as_str(), f.dim), (b, 8));
    assert_eq!(f.row(3).unwrap(), &vb[24..32]);
    assert!(!f.found[10] && !f.found[11]);

    // the current generation cannot be dropped; an old one can, with all its vectors
    assert!(s.drop_generation(b).is_err());
    for g in ["a-f16", "a-int8", a] {
        s.drop_generation(g).unwrap();
    }
    assert_eq!(s.generations().unwrap(), vec![b.to_string()]);
    assert!(s.set_current(a).is_err());
}

#[test]
fn embedded_backend_honours_the_contract() {
    let store = Store::open(Arc::new(RamDirectory::new())).unwrap();
    let s = EmbeddedStore::new(store).unwrap();
    contract(&s);
}

#[test]
fn redis_cluster_backend_honours_the_contract_and_spreads_keys() {
    let cluster = start_cluster(&Security::default());
    let urls = cluster.urls();
    let nodes: Vec<&str> = urls.iter().map(String::as_str).collect();
    let s = RedisClusterStore::connect(&nodes, "mosaic-test").unwrap();
    assert_eq!(s.masters().unwrap().len(), 3);

    // vectors spread over all three masters
    s.create_generation(&GenerationSpec::new("spread", 4, StorageType::F32))
        .unwrap();
    let ids: Vec<ItemId> = (0..600).map(ItemId).collect();
    s.put_many("spread", &ids, &vectors(600, 4, 0.5)).unwrap();
    for &p in &cluster.ports {
        let n = cluster.dbsize(p);
        assert!(n > 100, "node {p} holds only {n} keys");
    }
    s.drop_generation("spread").unwrap();
    let left: usize = cluster.ports.iter().map(|&p| cluster.dbsize(p)).sum();
    assert!(
        left <= 2,
        "{left} keys left after dropping (only bookkeeping may stay)"
    );

    contract(&s);

    // a second client sees the same state (it is all in the cluster)
    let other = RedisClusterStore::connect(&nodes[2..], "mosaic-test").unwrap();
    assert_eq!(
        other.current().unwrap().as_deref(),
        Some("b-pinclip-2026-11-22")
    );
    // another namespace is another store
    let ns2 = RedisClusterStore::connect(&nodes, "other-app").unwrap();
    assert_eq!(ns2.current().unwrap(), None);
    assert!(RedisClusterStore::connect(&nodes, "bad namespace").is_err());
}
