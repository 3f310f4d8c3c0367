//! Replays the committed fuzz corpora (`fuzz/corpus/<target>/`, grown by
//! `scripts/fuzz.sh`) and crash regressions (`fuzz/regressions/<target>/`) through every
//! crate's fuzzing entry points (docs/fuzzing.md): none may panic, and each target's
//! seeds must be accepted (so the fuzzer starts past the first checks). With
//! `MOSAIC_FUZZ_SEEDS=1` the seeds are written into `fuzz/corpus/<target>/` first.

use std::path::{Path, PathBuf};

use mosaic::{embed_store, vision_surgery};

type Run = fn(&[u8]) -> Result<(), String>;

/// Every target, its entry point, and its seeds.
fn targets() -> Vec<(&'static str, Run, Vec<Vec<u8>>)> {
    use embed_store::fuzzing as es;
    use mosaic_testkit::taste_graph_fuzz as tg;
    use vision_surgery::fuzzing as vs;
    let tg_seeds = |t| tg::seeds(t).unwrap();
    let vs_seeds = |t| vs::seeds(t).unwrap();
    vec![
        (
            "segment",
            |b| es::segment(b).map_err(|e| e.to_string()),
            vec![],
        ),
        (
            "manifest",
            |b| es::manifest(b).map_err(|e| e.to_string()),
            vec![],
        ),
        (
            "tombstones",
            |b| match b {
                [x, y, file @ ..] => es::tombstones(file, u16::from_le_bytes([*x, *y]) as usize)
                    .map_err(|e| e.to_string()),
                _ => Ok(()),
            },
            vec![],
        ),
        (
            "hnsw_index",
            |b| es::hnsw_index(b).map_err(|e| e.to_string()),
            vec![],
        ),
        (
            "npy",
            |b| es::npy(b).map_err(|e| e.to_string()),
            vec![es::npy_seed().unwrap()],
        ),
        (
            "feedback_log",
            |b| tg::feedback_log(b).map_err(|e| e.to_string()),
            tg_seeds("feedback_log"),
        ),
        (
            "refresh_state",
            |b| tg::refresh_state(b).map_err(|e| e.to_string()),
            tg_seeds("refresh_state"),
        ),
        (
            "checkpoint",
            |b| tg::checkpoint(b).map_err(|e| e.to_string()),
            tg_seeds("checkpoint"),
        ),
        (
            "dataset",
            |b| tg::dataset(b).map_err(|e| e.to_string()),
            tg_seeds("dataset"),
        ),
        (
            "adapter",
            |b| vs::adapter(b).map_err(|e| e.to_string()),
            vs_seeds("adapter"),
        ),
        (
            "config",
            |b| vs::config(b).map_err(|e| e.to_string()),
            vs_seeds("config"),
        ),
        (
            "preprocessor_config",
            |b| vs::preprocessor_config(b).map_err(|e| e.to_string()),
            vs_seeds("preprocessor_config"),
        ),
    ]
}

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

#[test]
fn committed_corpora_and_regressions_replay_without_panics() {
    let write = std::env::var_os("MOSAIC_FUZZ_SEEDS").is_some();
    // embed-store's file seeds come from its tests/parsers.rs (MOSAIC_FUZZ_SEEDS=DIR)
    for (target, run, seeds) in targets() {
        for (i, seed) in seeds.iter().enumerate() {
            if let Err(e) = run(seed) {
                panic!("{target}: seed {i} is refused: {e}");
            }
            if write {
                let dir = fuzz_dir().join("corpus").join(target);
                std::fs::create_dir_all(&dir).unwrap();
                std::fs::write(dir.join(format!("seed-{i}")), seed).unwrap();
            }
        }
        let mut n = 0;
        for kind in ["corpus", "regressions"] {
            let Ok(entries) = std::fs::read_dir(fuzz_dir().join(kind).join(target)) else {
                continue;
            };
            for e in entries {
                let bytes = std::fs::read(e.unwrap().path()).unwrap();
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
