//! Item embeddings from .npy: the accepted layouts and a clear error for the rest.

use candle_core::Device;
use vision_surgery::load_npy_items;

#[test]
fn npy_items_load_in_every_accepted_layout_and_reject_others() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("x.npy");
    let two = ndarray::Array2::from_shape_fn((2, 3), |(i, j)| (i * 3 + j) as f32);
    ndarray_npy::write_npy(&p, &two).unwrap();
    assert_eq!(
        load_npy_items(&p, &Device::Cpu)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap(),
        vec![vec![0.0, 1.0, 2.0], vec![3.0, 4.0, 5.0]]
    );
    ndarray_npy::write_npy(&p, &two.mapv(f64::from)).unwrap();
    assert_eq!(load_npy_items(&p, &Device::Cpu).unwrap().dims(), &[2, 3]);
    let one = ndarray::Array1::from_vec(vec![0.5f64, 1.5]);
    ndarray_npy::write_npy(&p, &one).unwrap();
    assert_eq!(
        load_npy_items(&p, &Device::Cpu)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap(),
        vec![vec![0.5, 1.5]]
    );
    let ints = ndarray::Array2::<i32>::zeros((2, 2));
    ndarray_npy::write_npy(&p, &ints).unwrap();
    let e = load_npy_items(&p, &Device::Cpu).unwrap_err().to_string();
    assert!(e.contains("x.npy") && e.contains("f32 or f64"), "{e}");
    let e = load_npy_items(&dir.path().join("missing.npy"), &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(e.contains("missing.npy"), "{e}");
}
