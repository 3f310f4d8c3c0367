//! Embeddings to an embed-store generation and back.

use std::sync::Arc;

use embed_store::{RamDirectory, StorageType, Store};
use ranker::pipeline::{export_table, import_table};

fn dense_ids(n: u64) -> Vec<u64> {
    (0..n).collect()
}

#[test]
fn users_and_items_export_in_one_commit_and_import_back() {
    let store = Store::open(Arc::new(RamDirectory::new())).unwrap();
    let items: Vec<f32> = (0..40_000 * 4).map(|v| (v % 97) as f32 * 0.01).collect();
    let users: Vec<f32> = (0..30 * 4).map(|v| v as f32).collect();
    let item_ids: Vec<u64> = (0..40_000u64).map(|i| 1_000_000 + 7 * i).collect();
    let mut w = store.writer().unwrap();
    export_table(
        &mut w,
        "items-v1",
        StorageType::F32,
        &items,
        4,
        &item_ids,
        None,
    )
    .unwrap();
    export_table(
        &mut w,
        "users-v1",
        StorageType::F32,
        &users,
        4,
        &dense_ids(30),
        None,
    )
    .unwrap();
    assert!(
        store.generations().is_empty(),
        "nothing visible before the commit"
    );
    w.commit().unwrap();
    drop(w);
    assert_eq!(store.generations().len(), 2);
    let got = import_table(&store.generation("items-v1").unwrap(), &item_ids).unwrap();
    assert_eq!(got, items);
    // A reordered subset comes back in the asked order.
    let some = [item_ids[5], item_ids[2]];
    let got = import_table(&store.generation("items-v1").unwrap(), &some).unwrap();
    assert_eq!(&got[..4], &items[20..24]);
    assert_eq!(&got[4..], &items[8..12]);
    assert_eq!(
        import_table(&store.generation("users-v1").unwrap(), &dense_ids(30)).unwrap(),
        users
    );

    let err = import_table(&store.generation("users-v1").unwrap(), &[3, 99]).unwrap_err();
    assert!(
        err.to_string().contains("no vector for id 99 (row 1)"),
        "{err}"
    );
    let mut w = store.writer().unwrap();
    let err = export_table(
        &mut w,
        "users-v1",
        StorageType::F32,
        &[0.0; 6],
        3,
        &[1, 2],
        None,
    );
    assert!(
        err.unwrap_err()
            .to_string()
            .contains("holds 4-wide vectors")
    );
    let err = export_table(&mut w, "x", StorageType::F32, &[0.0; 5], 3, &[1, 2], None);
    assert!(
        err.unwrap_err()
            .to_string()
            .contains("5 values as 2 ids x dim 3")
    );
    let err = export_table(&mut w, "x", StorageType::F32, &[f32::NAN; 3], 3, &[1], None);
    assert!(err.is_err(), "NaN is refused by the store");
}
