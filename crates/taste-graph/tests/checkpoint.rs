//! Training checkpoints: a resumed trainer continues bit for bit; damaged files, other
//! graphs and missing files are typed errors. A trainer carried onto a grown graph
//! (`regraph`) keeps its state.

use taste_graph::model::Init;
use taste_graph::{BipartiteGraph, Error, ItemId, LightGcnConfig, Trainer, UserId};

mod common;

fn graph(seed: u64) -> BipartiteGraph {
    common::random_graph(50, 70, 600, seed)
}

fn config() -> LightGcnConfig {
    LightGcnConfig::new()
        .dim(8)
        .layers(2)
        .batch_size(64)
        .lr(5e-3)
        .seed(7)
}

/// A trainer over `g` after two epochs.
fn two_epochs(g: &BipartiteGraph) -> Trainer {
    let mut t = Trainer::new(g, &config()).unwrap();
    for _ in 0..2 {
        t.train_epoch(|_, _| {}).unwrap();
    }
    t
}

#[test]
fn a_resumed_trainer_continues_bit_for_bit() {
    let g = graph(1);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lgcn.ckpt");
    let mut t = two_epochs(&g);
    // A schedule's change of rate and batch is part of the state.
    t.set_lr(2e-3).unwrap();
    t.set_batch_size(100).unwrap();
    t.save_checkpoint(&path, &g).unwrap();
    assert!(!dir.path().join("lgcn.ckpt.tmp").exists());
    let mut losses = Vec::new();
    for _ in 0..3 {
        losses.push(t.train_epoch(|_, _| {}).unwrap().loss);
    }

    let mut r = Trainer::resume(&g, &path).unwrap();
    assert_eq!(r.epochs(), 2);
    let mut resumed = Vec::new();
    for _ in 0..3 {
        resumed.push(r.train_epoch(|_, _| {}).unwrap().loss);
    }
    assert_eq!(losses, resumed);
    assert_eq!(t.model().ego_table(), r.model().ego_table());
    assert_eq!(r.epochs(), 5);

    // Overwriting keeps one whole file.
    r.save_checkpoint(&path, &g).unwrap();
    assert_eq!(Trainer::resume(&g, &path).unwrap().epochs(), 5);
}

#[test]
fn damaged_files_other_graphs_and_missing_files_are_typed_errors() {
    let g = graph(1);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lgcn.ckpt");
    let mut t = Trainer::new(&g, &config()).unwrap();
    t.train_epoch(|_, _| {}).unwrap();
    t.save_checkpoint(&path, &g).unwrap();
    let good = std::fs::read(&path).unwrap();

    // A flipped byte anywhere is caught, or (JSON whitespace in the header) changes
    // nothing that is read: every header byte, and every 7th byte of the tables.
    let header = 8 + u64::from_le_bytes(good[..8].try_into().unwrap()) as usize;
    for at in (0..good.len()).filter(|&at| at < header || at % 7 == 0) {
        let mut bad = good.clone();
        bad[at] ^= 0x10;
        std::fs::write(&path, &bad).unwrap();
        match Trainer::resume(&g, &path) {
            Err(Error::Corrupt { .. }) => {}
            Err(e) => panic!("byte {at}: {e}"),
            Ok(r) => {
                assert!(at < header, "byte {at} of the tables changed silently");
                assert_eq!(r.model().ego_table(), t.model().ego_table(), "byte {at}");
                assert_eq!((r.config(), r.epochs()), (t.config(), t.epochs()));
            }
        }
    }
    // Truncated.
    std::fs::write(&path, &good[..good.len() - 9]).unwrap();
    assert!(matches!(
        Trainer::resume(&g, &path),
        Err(Error::Corrupt { .. })
    ));
    std::fs::write(&path, &good[..20]).unwrap();
    assert!(matches!(
        Trainer::resume(&g, &path),
        Err(Error::Corrupt { .. })
    ));
    // Another graph of the same sizes.
    std::fs::write(&path, &good).unwrap();
    let other = graph(2);
    let e = Trainer::resume(&other, &path).unwrap_err();
    assert!(
        matches!(e, Error::Graph { .. }) && e.to_string().contains("crc32"),
        "{e}"
    );
    // A graph that does not fit the model.
    let small = BipartiteGraph::from_edges(3, 3, [(UserId(0), ItemId(1))]).unwrap();
    assert!(matches!(
        t.save_checkpoint(&path, &small),
        Err(Error::Graph { .. })
    ));
    // Missing.
    let e = Trainer::resume(&g, &dir.path().join("none")).unwrap_err();
    assert!(matches!(e, Error::Io { .. }), "{e}");
}

#[test]
fn the_init_scheme_is_kept_and_other_snapshots_are_refused() {
    let g = graph(1);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lgcn.ckpt");
    let mut t = Trainer::new(&g, &config().init(Init::XavierUniform)).unwrap();
    t.train_epoch(|_, _| {}).unwrap();
    t.save_checkpoint(&path, &g).unwrap();
    let r = Trainer::resume(&g, &path).unwrap();
    assert_eq!(r.config(), t.config());
    assert_eq!(r.config().init, Init::XavierUniform);
    // a safetensors file whose header says another kind of snapshot
    let good = std::fs::read(&path).unwrap();
    let at = good.windows(9).position(|w| w == b"\"trainer\"").unwrap();
    let mut other = good.clone();
    other[at + 1..at + 8].copy_from_slice(b"refresh");
    std::fs::write(&path, &other).unwrap();
    let e = Trainer::resume(&g, &path).unwrap_err();
    assert!(
        matches!(e, Error::Corrupt { .. }) && e.to_string().contains("\"refresh\" snapshot"),
        "{e}"
    );
}

#[test]
fn regraph_keeps_the_state_and_trains_on_the_grown_graph() {
    let g = graph(1);
    let d = config().dim;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lgcn.ckpt");
    let mut t = two_epochs(&g);
    t.set_lr(2e-3).unwrap();
    t.save_checkpoint(&path, &g).unwrap();

    // Onto the same graph: an exact copy, as a resume is; the original goes on unchanged.
    let mut same = t.regraph(&g).unwrap();
    let mut resumed = Trainer::resume(&g, &path).unwrap();
    for _ in 0..2 {
        let loss = t.train_epoch(|_, _| {}).unwrap().loss;
        assert_eq!(same.train_epoch(|_, _| {}).unwrap().loss, loss);
        assert_eq!(resumed.train_epoch(|_, _| {}).unwrap().loss, loss);
    }
    assert_eq!(same.model().ego_table(), resumed.model().ego_table());
    assert_eq!(same.model().ego_table(), t.model().ego_table());

    // Onto a graph with new edges, 4 new users (50..54) and 6 new items (70..76).
    let before = same.model().ego_table();
    let mut edges = common::edges_of(&g);
    let added: Vec<(UserId, ItemId)> = (0..60u32)
        .map(|k| (UserId(k % 54), ItemId(70 + k % 6)))
        .collect();
    edges.extend(&added);
    let grown = BipartiteGraph::from_edges(54, 76, edges).unwrap();
    let mut moved = same.regraph(&grown).unwrap();
    assert_eq!(moved.epochs(), 4);
    assert_eq!(moved.config().adam.lr, 2e-3);
    assert_eq!((moved.model().n_users(), moved.model().n_items()), (54, 76));
    let after = moved.model().ego_table();
    assert_eq!(after[..50 * d], before[..50 * d], "old users kept");
    assert_eq!(after[54 * d..124 * d], before[50 * d..], "old items kept");
    for (rows, range) in [
        ("new users", 50 * d..54 * d),
        ("new items", 124 * d..130 * d),
    ] {
        let new = &after[range];
        let std = (new.iter().map(|v| v * v).sum::<f32>() / new.len() as f32).sqrt();
        assert!(std > 0.03 && std < 0.3, "{rows}: std {std}");
    }
    // The sampler draws from the grown graph: its new users and new edges appear.
    let triples = moved.sample_epoch();
    assert_eq!(triples.len(), grown.n_edges());
    assert!(triples.iter().any(|t| t.user >= 50));
    assert!(triples.iter().any(|t| t.pos >= 70));
    let loss = moved.train_epoch(|_, _| {}).unwrap().loss;
    assert!(loss.is_finite() && loss > 0.0);

    // A graph that lost users or items is refused, and the trainer is still there.
    let e = moved.regraph(&g).unwrap_err();
    assert!(
        matches!(e, Error::Graph { .. }) && e.to_string().contains("lose"),
        "{e}"
    );
    assert_eq!(moved.epochs(), 5);
    assert!(moved.train_epoch(|_, _| {}).is_ok());
}

#[test]
fn training_on_a_cpu_selection_is_the_cpu_trainer_and_resumes_the_same() {
    let g = graph(6);
    let cpu = taste_graph::DeviceSpec::Cpu.select().unwrap();
    let mut t = taste_graph::Training::new(&g, &config(), &cpu).unwrap();
    assert!(t.as_cpu().is_some() && t.device().is_none());
    let mut plain = Trainer::new(&g, &config()).unwrap();
    let schedule: Vec<taste_graph::model::RateSwitch> = vec!["2:1e-3:32".parse().unwrap()];
    for _ in 0..2 {
        t.apply_due(&schedule).unwrap();
        let a = t.train_epoch(|_, _| {}).unwrap().loss;
        if plain.epochs() == 1 {
            plain.apply_switch(&schedule[0]).unwrap();
        }
        assert_eq!(a, plain.train_epoch(|_, _| {}).unwrap().loss);
    }
    assert_eq!((t.config().adam.lr, t.config().batch_size), (1e-3, 32));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.ckpt");
    t.save_checkpoint(&path, &g).unwrap();
    let mut r = taste_graph::Training::resume(&g, &path, &cpu).unwrap();
    assert_eq!(r.epochs(), 2);
    let (a, b) = (
        t.train_epoch(|_, _| {}).unwrap().loss,
        r.train_epoch(|_, _| {}).unwrap().loss,
    );
    assert_eq!(a, b);
    assert_eq!(
        t.into_model().unwrap().ego_table(),
        r.model().unwrap().ego_table()
    );
}
