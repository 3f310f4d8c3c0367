//! Replays the committed fuzz corpora (`fuzz/corpus/<target>/`, grown by
//! `scripts/fuzz.sh`) and crash regressions (`fuzz/regressions/<target>/`) through
//! the crate's fuzzing entry points: none may panic. With `MOSAIC_FUZZ_SEEDS=1` each
//! target's seeds are written into `fuzz/corpus/<target>/` first.

use std::path::{Path, PathBuf};

use embed_store::fuzzing;

type Target = (&'static str, fn(&[u8]) -> embed_store::Result<()>);
const TARGETS: &[Target] = &[
    ("segment", fuzzing::segment),
    ("manifest", fuzzing::manifest),
    ("tombstones", tombstones),
    ("hnsw_index", fuzzing::hnsw_index),
    ("npy", fuzzing::npy),
];

/// The tombstone target's framing: a little-endian u16 row count, then the file.
fn tombstones(data: &[u8]) -> embed_store::Result<()> {
    match data {
        [a, b, file @ ..] => fuzzing::tombstones(file, u16::from_le_bytes([*a, *b]) as usize),
        _ => Ok(()),
    }
}

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

fn write_seeds(target: &str, seeds: &[Vec<u8>]) {
    let dir = fuzz_dir().join("corpus").join(target);
    std::fs::create_dir_all(&dir).unwrap();
    for (i, s) in seeds.iter().enumerate() {
        std::fs::write(dir.join(format!("seed-{i}")), s).unwrap();
    }
}

#[test]
fn committed_corpora_and_regressions_replay_without_panics() {
    if std::env::var_os("MOSAIC_FUZZ_SEEDS").is_some() {
        // the other targets' seeds come from tests/parsers.rs (MOSAIC_FUZZ_SEEDS=DIR)
        write_seeds("npy", &[fuzzing::npy_seed().unwrap()]);
    }
    fuzzing::npy(&fuzzing::npy_seed().unwrap()).expect("the npy seed is valid");
    for (target, run) in TARGETS {
        let mut n = 0;
        for kind in ["corpus", "regressions"] {
            let Ok(entries) = std::fs::read_dir(fuzz_dir().join(kind).join(target)) else {
                continue;
            };
            for e in entries {
                let p = e.unwrap().path();
                let bytes = std::fs::read(&p).unwrap();
                // Ok or a typed error: either is fine, a panic fails the test
                let _ = run(&bytes);
                n += 1;
            }
        }
        println!("{target}: {n} inputs replayed");
        assert!(
            n > 0,
            "no corpus for {target}: run scripts/fuzz.sh or MOSAIC_FUZZ_SEEDS=1"
        );
    }
}
