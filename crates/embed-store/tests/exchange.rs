//! Import/export through .npy and safetensors, streaming and all-or-nothing.

use std::sync::Arc;

use embed_store::exchange::{export_npy, export_safetensors, import_npy, import_safetensors};
use embed_store::{Error, GenerationSpec, ItemId, RamDirectory, StorageType, Store};
use ndarray::{Array1, Array2};
use ndarray_npy::{ReadNpyExt, WriteNpyExt};

fn store_with(dim: usize, storage: StorageType) -> Arc<Store> {
    let store = Store::open(Arc::new(RamDirectory::new())).unwrap();
    let mut w = store.writer().unwrap();
    w.create_generation(GenerationSpec::new("g", dim, storage))
        .unwrap();
    w.set_current("g").unwrap();
    w.commit().unwrap();
    store
}

fn data(n: usize, d: usize) -> Array2<f32> {
    Array2::from_shape_fn((n, d), |(i, j)| ((i * 31 + j * 7) % 97) as f32 / 48.5 - 1.0)
}

#[test]
fn npy_written_by_ndarray_imports_and_exports_back() {
    let tmp = tempfile::tempdir().unwrap();
    let (n, d) = (20_000, 12); // several import chunks
    let vecs = data(n, d);
    let ids = Array1::from_shape_fn(n, |i| (i as u64) * 3 + 1_000_000_000_000);
    vecs.write_npy(std::fs::File::create(tmp.path().join("v.npy")).unwrap())
        .unwrap();
    ids.write_npy(std::fs::File::create(tmp.path().join("i.npy")).unwrap())
        .unwrap();
    let store = store_with(d, StorageType::F32);
    let mut w = store.writer().unwrap();
    w.set_flush_bytes(64 << 10); // spill to staged segments, as a larger-than-memory import would
    let (rows, _) = import_npy(
        &mut w,
        "g",
        &tmp.path().join("v.npy"),
        Some(&tmp.path().join("i.npy")),
    )
    .unwrap();
    assert_eq!(rows, n);
    let s = store.snapshot().unwrap();
    assert_eq!(s.len(), n);
    assert!(s.segments().len() > 2, "staged segments expected");
    assert_eq!(
        s.get(ItemId(1_000_000_000_000 + 3 * 777)).unwrap(),
        vecs.row(777).to_vec()
    );

    export_npy(&s, &tmp.path().join("ov.npy"), &tmp.path().join("oi.npy")).unwrap();
    let ov =
        Array2::<f32>::read_npy(std::fs::File::open(tmp.path().join("ov.npy")).unwrap()).unwrap();
    let oi =
        Array1::<u64>::read_npy(std::fs::File::open(tmp.path().join("oi.npy")).unwrap()).unwrap();
    assert_eq!(ov, vecs);
    assert_eq!(oi, ids);
}

#[test]
fn safetensors_round_trip_and_row_ids_default() {
    let tmp = tempfile::tempdir().unwrap();
    let vecs = data(300, 5);
    vecs.write_npy(std::fs::File::create(tmp.path().join("v.npy")).unwrap())
        .unwrap();
    let a = store_with(5, StorageType::F16);
    let mut w = a.writer().unwrap();
    import_npy(&mut w, "g", &tmp.path().join("v.npy"), None).unwrap();
    let sa = a.snapshot().unwrap();
    export_safetensors(&sa, &tmp.path().join("g.safetensors")).unwrap();

    let b = store_with(5, StorageType::F32);
    let mut w = b.writer().unwrap();
    let (rows, _) = import_safetensors(&mut w, "g", &tmp.path().join("g.safetensors")).unwrap();
    assert_eq!(rows, 300);
    let sb = b.snapshot().unwrap();
    for id in [0u64, 150, 299] {
        assert_eq!(sb.get(ItemId(id)), sa.get(ItemId(id)), "id {id}");
    }
}

#[test]
fn bad_files_commit_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let store = store_with(4, StorageType::F32);
    let mut w = store.writer().unwrap();
    w.set_flush_bytes(1024);
    let p = |n: &str| tmp.path().join(n);

    // wrong width
    data(10, 5)
        .write_npy(std::fs::File::create(p("w.npy")).unwrap())
        .unwrap();
    let e = import_npy(&mut w, "g", &p("w.npy"), None)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("vectors are 5 wide, generation \"g\" has dim 4"),
        "{e}"
    );

    // NaN deep in the file, after staged segments were written
    let mut v = data(5000, 4);
    v[[4321, 2]] = f32::NAN;
    v.write_npy(std::fs::File::create(p("nan.npy")).unwrap())
        .unwrap();
    let e = import_npy(&mut w, "g", &p("nan.npy"), None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("column 2") && e.contains("4321"), "{e}");

    // duplicate ids across chunks
    data(9000, 4)
        .write_npy(std::fs::File::create(p("v.npy")).unwrap())
        .unwrap();
    let mut ids = Array1::from_shape_fn(9000, |i| i as u64);
    ids[8500] = 3;
    ids.write_npy(std::fs::File::create(p("dup.npy")).unwrap())
        .unwrap();
    let e = import_npy(&mut w, "g", &p("v.npy"), Some(&p("dup.npy")))
        .unwrap_err()
        .to_string();
    assert!(e.contains("id 3 at row 8500"), "{e}");

    // unknown dtype
    Array2::<u8>::zeros((3, 4))
        .write_npy(std::fs::File::create(p("u8.npy")).unwrap())
        .unwrap();
    let e = import_npy(&mut w, "g", &p("u8.npy"), None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("unsupported dtype \"|u1\""), "{e}");

    // truncated file
    let mut bytes = std::fs::read(p("v.npy")).unwrap();
    bytes.truncate(bytes.len() - 3);
    std::fs::write(p("t.npy"), bytes).unwrap();
    assert!(matches!(
        import_npy(&mut w, "g", &p("t.npy"), None),
        Err(Error::Batch { .. })
    ));

    assert!(!w.has_pending());
    assert_eq!(store.snapshot().unwrap().len(), 0);
    // staged segment files of the failed imports are gone
    let leftovers = w.collect_garbage().unwrap();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}
