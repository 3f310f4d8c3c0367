//! Hostile input is a typed error, never a panic or an allocation sized by the input:
//! `.npy` headers whose shape overflows or whose header outruns the file, f16 values past
//! f16's range, non-finite or oversized queries, manifests naming paths.

use std::path::Path;
use std::sync::Arc;

use embed_store::exchange::import_npy;
use embed_store::hnsw::{Hnsw, HnswParams, Scratch};
use embed_store::manifest::{MANIFEST, Manifest};
use embed_store::search::{Filter, MAX_K};
use embed_store::{
    Directory, Error, GenerationSpec, ItemId, Metric, RamDirectory, StorageType, Store,
};

/// Writes a `.npy` file of `descr` and `shape` holding `data` (no check they agree).
fn npy(path: &Path, descr: &str, shape: &str, data: &[u8]) {
    std::fs::write(path, embed_store::fuzzing::npy_file(descr, shape, data)).unwrap();
}

#[test]
fn npy_headers_that_overflow_or_outrun_the_file_are_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(Arc::new(RamDirectory::new())).unwrap();
    let mut w = store.writer().unwrap();
    w.create_generation(GenerationSpec::new("g", 64, StorageType::F32))
        .unwrap();
    w.commit().unwrap();
    let p = tmp.path().join("v.npy");
    // 2^58 x 64 x 4 bytes wraps to 0 in 64-bit arithmetic: an empty file matched it
    npy(&p, "<f4", "(288230376151711744, 64)", &[]);
    let e = import_npy(&mut w, "g", &p, None).unwrap_err();
    assert!(
        matches!(&e, Error::Batch { message } if message.contains("overflow")),
        "{e}"
    );
    // a product that does not wrap but is far past the data
    npy(&p, "<f4", "(1099511627776, 64)", &[0; 256]);
    let e = import_npy(&mut w, "g", &p, None).unwrap_err();
    assert!(matches!(e, Error::Batch { .. }), "{e}");
    // a version-2 header length of 4 GB in a 12-byte file
    let mut b = b"\x93NUMPY\x02\x00".to_vec();
    b.extend_from_slice(&u32::MAX.to_le_bytes());
    std::fs::write(&p, b).unwrap();
    let e = import_npy(&mut w, "g", &p, None).unwrap_err();
    assert!(
        matches!(&e, Error::Batch { message } if message.contains("longer than the file")),
        "{e}"
    );
    assert!(!w.has_pending());
}

#[test]
fn f16_values_past_its_range_are_refused_naming_the_id() {
    let store = Store::open(Arc::new(RamDirectory::new())).unwrap();
    let mut w = store.writer().unwrap();
    w.create_generation(GenerationSpec::new("g", 2, StorageType::F16))
        .unwrap();
    w.put_many("g", &[ItemId(1)], &[65504.0, -65504.0], None)
        .unwrap();
    let e = w
        .put_many(
            "g",
            &[ItemId(7), ItemId(8)],
            &[0.0, 1.0, 70000.0, 0.0],
            None,
        )
        .unwrap_err();
    assert!(
        matches!(&e, Error::Batch { message } if message.contains("id 8") && message.contains("f16")),
        "{e}"
    );
    w.commit().unwrap();
    let s = store.generation("g").unwrap();
    assert_eq!(s.len(), 1, "nothing of the refused batch was kept");
}

#[test]
fn queries_are_checked_for_finiteness_and_size() {
    let store = Store::open(Arc::new(RamDirectory::new())).unwrap();
    let mut w = store.writer().unwrap();
    w.create_generation(GenerationSpec::new("g", 4, StorageType::F32))
        .unwrap();
    let ids: Vec<ItemId> = (0..50).map(ItemId).collect();
    let v: Vec<f32> = (0..200).map(|i| (i as f32 * 0.37).sin()).collect();
    w.put_many("g", &ids, &v, None).unwrap();
    w.commit().unwrap();
    let snap = store.generation("g").unwrap();
    let params = HnswParams {
        m: 8,
        ef_construction: 32,
        seed: 3,
    };
    let index = Hnsw::build(&snap, Metric::L2, params).unwrap();
    let mut scratch = Scratch::new(index.len());
    let none = Filter::default();
    for q in [[f32::NAN, 0.0, 0.0, 0.0], [0.0, f32::INFINITY, 0.0, 0.0]] {
        let e = index
            .search(&snap, &q, 5, 32, &none, &mut scratch)
            .unwrap_err();
        assert!(matches!(e, Error::Query { .. }), "{e}");
    }
    let q = [0.1, 0.2, 0.3, 0.4];
    for (k, ef) in [(MAX_K + 1, 32), (5, usize::MAX)] {
        let e = index
            .search(&snap, &q, k, ef, &none, &mut scratch)
            .unwrap_err();
        assert!(matches!(e, Error::Query { .. }), "{e}");
    }
    for k in [MAX_K + 1, usize::MAX] {
        let e = snap.search(&q, k, Metric::L2, &none).unwrap_err();
        assert!(matches!(e, Error::Query { .. }), "{e}");
        let e = snap.search_batch(&q, k, Metric::L2, &none).unwrap_err();
        assert!(matches!(e, Error::Query { .. }), "{e}");
    }
    assert_eq!(
        index
            .search(&snap, &q, 5, 32, &none, &mut scratch)
            .unwrap()
            .len(),
        5
    );
}

#[test]
fn a_manifest_naming_a_path_or_a_bad_generation_is_refused() {
    let dir = Arc::new(RamDirectory::new());
    let store = Store::open(dir.clone()).unwrap();
    let mut w = store.writer().unwrap();
    w.create_generation(GenerationSpec::new("g", 4, StorageType::F32))
        .unwrap();
    w.put_many("g", &[ItemId(1)], &[1.0, 2.0, 3.0, 4.0], None)
        .unwrap();
    w.commit().unwrap();
    drop(w);
    let good = store.manifest();
    type Change = Box<dyn Fn(&mut Manifest)>;
    let cases: Vec<(&str, Change)> = vec![
        (
            "a separator",
            Box::new(|m| m.generations.get_mut("g").unwrap().segments[0].file = "../x.seg".into()),
        ),
        (
            "a parent",
            Box::new(|m| m.generations.get_mut("g").unwrap().segments[0].file = "..".into()),
        ),
        (
            "an absolute path",
            Box::new(|m| {
                m.generations.get_mut("g").unwrap().segments[0].file = "/etc/passwd".into()
            }),
        ),
        (
            "a zero dim",
            Box::new(|m| m.generations.get_mut("g").unwrap().dim = 0),
        ),
        (
            "too many attributes",
            Box::new(|m| m.generations.get_mut("g").unwrap().n_attrs = usize::MAX),
        ),
        (
            "more deleted rows than rows",
            Box::new(|m| m.generations.get_mut("g").unwrap().segments[0].deleted = 5),
        ),
    ];
    for (what, change) in cases {
        let mut m = good.clone();
        change(&mut m);
        dir.atomic_write(MANIFEST, &m.encode()).unwrap();
        let e = Store::open(dir.clone()).unwrap_err();
        assert!(matches!(e, Error::Corrupt { .. }), "{what}: {e}");
    }
    dir.atomic_write(MANIFEST, &good.encode()).unwrap();
    assert_eq!(Store::open(dir).unwrap().generation("g").unwrap().len(), 1);
}
