//! Propagation, training, checkpoints and regraphing on a candle device equal the CPU kernels: on
//! the CPU device always, on CUDA when a device exists (skipped with a printed reason
//! otherwise).

use candle_core::{Device, Tensor};
use taste_graph::kernels::{DeviceCsr, scatter_add_rows};
use taste_graph::model::DeviceTrainer;
use taste_graph::{BipartiteGraph, Error, ItemId, LightGcn, LightGcnConfig, Trainer, UserId};

mod common;

fn graph() -> BipartiteGraph {
    common::random_graph(300, 500, 3000, 7)
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

/// `scatter_add_rows` against a host loop, repeats included; bad ids are typed errors.
fn check_scatter(device: &Device) {
    let (n, d) = (50usize, 7usize);
    let ids: Vec<u32> = (0..300).map(|k| ((k * 13) % n) as u32).collect();
    let src: Vec<f32> = (0..300 * d)
        .map(|v| ((v * 29) % 97) as f32 / 97.0 - 0.5)
        .collect();
    let mut want = vec![0f32; n * d];
    for (k, &r) in ids.iter().enumerate() {
        for j in 0..d {
            want[r as usize * d + j] += src[k * d + j];
        }
    }
    let it = Tensor::from_vec(ids, 300, device).unwrap();
    let st = Tensor::from_vec(src, (300, d), device).unwrap();
    let got: Vec<f32> = scatter_add_rows(n, &it, &st)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    assert!(got.iter().zip(&want).all(|(a, b)| (a - b).abs() < 1e-5));
    let bad = Tensor::from_vec(vec![0u32, n as u32], 2, device).unwrap();
    let two = Tensor::zeros((2, d), candle_core::DType::F32, device).unwrap();
    assert!(matches!(
        scatter_add_rows(n, &bad, &two),
        Err(Error::Graph { .. })
    ));
    assert!(matches!(
        scatter_add_rows(n, &it, &two),
        Err(Error::Shape { .. })
    ));
}

/// The device trainer takes the same steps as the CPU trainer: same sampler, same
/// losses, same ego tables after Adam, within float rounding.
fn check_training(device: &Device) {
    let g = graph();
    for layers in [0, 1, 3] {
        let config = LightGcnConfig::new()
            .dim(16)
            .layers(layers)
            .batch_size(256)
            .lr(5e-3)
            .seed(11);
        let mut cpu = Trainer::new(&g, &config).unwrap();
        let mut dev = DeviceTrainer::new(&g, &config, device).unwrap();
        let triples = cpu.sample_epoch();
        assert_eq!(triples, dev.sample_epoch(), "same sampler, same seed");
        for (k, batch) in triples.chunks(256).take(6).enumerate() {
            if k == 3 {
                // a schedule's switch, the same on both
                cpu.set_lr(2e-3).unwrap();
                dev.set_lr(2e-3).unwrap();
            }
            let a = cpu.step(batch).unwrap();
            let b = dev.step(batch).unwrap();
            assert!(
                (a.bpr - b.bpr).abs() < 1e-5 && (a.reg - b.reg).abs() < 1e-7,
                "layers {layers}: loss {a:?} vs {b:?}"
            );
        }
        let want = cpu.model().ego_table();
        let got = dev.model().unwrap().ego_table();
        let worst = want
            .iter()
            .zip(&got)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        let moved = want
            .iter()
            .zip(LightGcn::new(&g, &config).unwrap().ego_table())
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        println!("layers {layers}: max|Δ ego| {worst:.2e} after 6 steps that moved it {moved:.2e}");
        assert!(moved > 1e-2, "the steps moved the model");
        assert!(worst < 1e-4, "layers {layers}: {worst}");
    }
    // A full epoch runs and lowers the loss; bad batches are typed errors.
    let config = LightGcnConfig::new()
        .dim(16)
        .layers(2)
        .batch_size(128)
        .lr(1e-2);
    let mut dev = DeviceTrainer::new(&g, &config, device).unwrap();
    let first = dev.train_epoch(|_, _| {}).unwrap();
    let mut last = first;
    for _ in 0..4 {
        last = dev.train_epoch(|_, _| {}).unwrap();
    }
    assert!(last.loss < first.loss, "{first:?} -> {last:?}");
    assert_eq!(dev.epochs(), 5);
    assert!(matches!(dev.set_lr(f32::NAN), Err(Error::Config { .. })));
    assert!(matches!(dev.set_batch_size(0), Err(Error::Config { .. })));
    dev.set_batch_size(64).unwrap();
    let mut batches = 0;
    dev.train_epoch(|_, total| batches = total).unwrap();
    assert_eq!(batches, g.n_edges().div_ceil(64));
    assert!(dev.step(&[]).is_err());
    let out_of_range = taste_graph::model::Triple {
        user: 300,
        pos: 0,
        neg: 1,
    };
    assert!(matches!(
        dev.step(&[out_of_range]),
        Err(Error::Graph { .. })
    ));
}

/// Largest absolute difference of two equally long tables.
fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max)
}

/// Checkpoints: a device trainer resumed on the same device continues as the saved one
/// would have (bit for bit on the CPU device), and a checkpoint moves between the CPU
/// trainer and the device trainer in both directions.
fn check_checkpoints(device: &Device) {
    let g = graph();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lgcn.ckpt");
    let config = LightGcnConfig::new()
        .dim(16)
        .layers(2)
        .batch_size(128)
        .lr(5e-3)
        .seed(3);
    let epoch = |t: &mut DeviceTrainer| t.train_epoch(|_, _| {}).unwrap().loss;

    // Device -> device.
    let mut dev = DeviceTrainer::new(&g, &config, device).unwrap();
    for _ in 0..2 {
        epoch(&mut dev);
    }
    dev.set_lr(2e-3).unwrap();
    dev.set_batch_size(100).unwrap();
    dev.save_checkpoint(&path, &g).unwrap();
    let straight: Vec<f64> = (0..2).map(|_| epoch(&mut dev)).collect();
    let mut resumed = DeviceTrainer::resume(&g, &path, device).unwrap();
    assert_eq!(resumed.epochs(), 2);
    let again: Vec<f64> = (0..2).map(|_| epoch(&mut resumed)).collect();
    assert_eq!(resumed.epochs(), 4);
    let d = max_diff(
        &dev.model().unwrap().ego_table(),
        &resumed.model().unwrap().ego_table(),
    );
    if device.is_cpu() {
        assert_eq!(straight, again, "bit for bit on the CPU device");
        assert_eq!(d, 0.0);
    } else {
        for (a, b) in straight.iter().zip(&again) {
            assert!((a - b).abs() < 1e-5, "{straight:?} vs {again:?}");
        }
        assert!(d < 1e-4, "max|Δ ego| {d}");
    }

    // Device -> CPU trainer: the same steps, up to the kernels' rounding.
    let mut cpu = Trainer::resume(&g, &path).unwrap();
    assert_eq!(cpu.epochs(), 2);
    let on_cpu: Vec<f64> = (0..2)
        .map(|_| cpu.train_epoch(|_, _| {}).unwrap().loss)
        .collect();
    for (a, b) in straight.iter().zip(&on_cpu) {
        assert!((a - b).abs() < 1e-5, "{straight:?} vs {on_cpu:?}");
    }
    let d = max_diff(&dev.model().unwrap().ego_table(), &cpu.model().ego_table());
    assert!(d < 1e-4, "device vs CPU after resuming: max|Δ ego| {d}");

    // CPU trainer -> device.
    cpu.save_checkpoint(&path, &g).unwrap();
    let next_cpu = cpu.train_epoch(|_, _| {}).unwrap().loss;
    let mut moved = DeviceTrainer::resume(&g, &path, device).unwrap();
    assert_eq!(moved.epochs(), 4);
    let next_dev = epoch(&mut moved);
    assert!(
        (next_cpu - next_dev).abs() < 1e-5,
        "{next_cpu} vs {next_dev}"
    );
    let d = max_diff(
        &cpu.model().ego_table(),
        &moved.model().unwrap().ego_table(),
    );
    assert!(d < 1e-4, "CPU vs device after resuming: max|Δ ego| {d}");

    // Another graph is refused with a typed error.
    let mut other_edges: Vec<(UserId, ItemId)> =
        (0..300u32).map(|u| (UserId(u), ItemId(u % 500))).collect();
    other_edges.push((UserId(0), ItemId(499)));
    let other = BipartiteGraph::from_edges(300, 500, other_edges).unwrap();
    assert!(matches!(
        DeviceTrainer::resume(&other, &path, device),
        Err(Error::Graph { .. })
    ));
    assert!(matches!(
        moved.save_checkpoint(&path, &BipartiteGraph::from_edges(2, 2, vec![]).unwrap()),
        Err(Error::Graph { .. })
    ));

    // Both carried onto a grown graph (new edges, users and items) take the same steps.
    let mut edges = common::edges_of(&g);
    edges.extend((0..400u32).map(|k| (UserId(k % 310), ItemId((k * 13) % 520))));
    let grown = BipartiteGraph::from_edges(310, 520, edges).unwrap();
    let mut cpu = cpu.regraph(&grown).unwrap();
    let mut moved = moved.regraph(&grown).unwrap();
    assert_eq!((cpu.epochs(), moved.epochs()), (5, 5));
    let d = max_diff(
        &cpu.model().ego_table(),
        &moved.model().unwrap().ego_table(),
    );
    assert!(d < 1e-4, "CPU vs device after regraph: max|Δ ego| {d}");
    let (a, b) = (cpu.train_epoch(|_, _| {}).unwrap().loss, epoch(&mut moved));
    assert!((a - b).abs() < 1e-5, "{a} vs {b}");
    let d = max_diff(
        &cpu.model().ego_table(),
        &moved.model().unwrap().ego_table(),
    );
    assert!(
        d < 1e-4,
        "CPU vs device trained on the grown graph: max|Δ ego| {d}"
    );
    assert!(matches!(moved.regraph(&g), Err(Error::Graph { .. })));
}

fn cuda() -> Option<Device> {
    match Device::new_cuda(0) {
        Ok(dev) => Some(dev),
        Err(e) => {
            println!("SKIPPED: no CUDA device ({e})");
            None
        }
    }
}

#[test]
fn device_propagation_equals_the_cpu_kernels_on_the_cpu_device() {
    check(&Device::Cpu);
    check_scatter(&Device::Cpu);
}

#[test]
fn device_training_equals_the_cpu_trainer_on_the_cpu_device() {
    check_training(&Device::Cpu);
}

#[test]
fn device_checkpoints_resume_on_the_cpu_device_and_move_to_the_cpu_trainer() {
    check_checkpoints(&Device::Cpu);
}

#[test]
fn device_propagation_equals_the_cpu_kernels_on_cuda() {
    if let Some(dev) = cuda() {
        check(&dev);
        check_scatter(&dev);
    }
}

#[test]
fn device_training_equals_the_cpu_trainer_on_cuda() {
    if let Some(dev) = cuda() {
        check_training(&dev);
    }
}

#[test]
fn device_checkpoints_resume_on_cuda_and_move_to_the_cpu_trainer() {
    if let Some(dev) = cuda() {
        check_checkpoints(&dev);
    }
}
