//! Propagation on a candle device equals the CPU kernels: on the CPU device always, on
//! CUDA when a device exists (skipped with a printed reason otherwise).

use candle_core::{Device, Tensor};
use taste_graph::device::DeviceCsr;
use taste_graph::{BipartiteGraph, ItemId, LightGcn, LightGcnConfig, UserId};

fn graph() -> BipartiteGraph {
    let mut s = 7u64;
    let mut next = |n: u64| {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (s >> 33) % n
    };
    let edges: Vec<(UserId, ItemId)> = (0..3000)
        .map(|_| (UserId(next(300) as u32), ItemId(next(500) as u32)))
        .collect();
    BipartiteGraph::from_edges(300, 500, edges).unwrap()
}

fn check(device: &Device) {
    let g = graph();
    for layers in [0, 1, 3] {
        let m = LightGcn::new(&g, &LightGcnConfig::new().dim(16).layers(layers).seed(3)).unwrap();
        let want = m.propagate().unwrap();
        let got = m.propagate_on(device).unwrap();
        for (a, b) in got
            .users()
            .iter()
            .zip(want.users())
            .chain(got.items().iter().zip(want.items()))
        {
            assert!((a - b).abs() < 1e-5, "layers {layers}: {a} vs {b}");
        }
    }
    // The product itself against the CSR kernel.
    let adj = g.normalized_adjacency();
    let n = adj.n_rows();
    let x: Vec<f32> = (0..n * 8)
        .map(|v| ((v * 37) % 101) as f32 / 101.0 - 0.5)
        .collect();
    let mut want = vec![0f32; n * 8];
    adj.spmm(&x, 8, &mut want).unwrap();
    let dc = DeviceCsr::new(&adj, device).unwrap();
    let got: Vec<f32> = dc
        .spmm(&Tensor::from_vec(x, (n, 8), device).unwrap())
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    assert!(got.iter().zip(&want).all(|(a, b)| (a - b).abs() < 1e-5));
    let bad = Tensor::zeros((n + 1, 8), candle_core::DType::F32, device).unwrap();
    assert!(dc.spmm(&bad).is_err());
}

#[test]
fn device_propagation_equals_the_cpu_kernels_on_the_cpu_device() {
    check(&Device::Cpu);
}

#[test]
fn device_propagation_equals_the_cpu_kernels_on_cuda() {
    match Device::new_cuda(0) {
        Ok(dev) => check(&dev),
        Err(e) => eprintln!("skipped: no CUDA device ({e})"),
    }
}
