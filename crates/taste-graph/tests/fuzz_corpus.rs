//! Replays the committed fuzz corpora (`fuzz/corpus/<target>/`, grown by
//! `scripts/fuzz.sh`) and crash regressions (`fuzz/regressions/<target>/`) through
//! the crate's fuzzing entry points: none may panic. With `MOSAIC_FUZZ_SEEDS=1` each
//! target's seeds are written into `fuzz/corpus/<target>/` first.

use std::path::{Path, PathBuf};

use taste_graph::fuzzing;

type Target = (&'static str, fn(&[u8]) -> taste_graph::Result<()>);
const TARGETS: &[Target] = &[
    ("journal", fuzzing::journal),
    ("refresh_state", fuzzing::refresh_state),
    ("checkpoint", fuzzing::checkpoint),
    ("dataset", fuzzing::dataset),
];

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
        for (t, _) in TARGETS {
            write_seeds(t, &fuzzing::seeds(t).unwrap());
        }
    }
    for (target, run) in TARGETS {
        // the seeds are valid inputs: the fuzzer starts past the first checks
        for (i, seed) in fuzzing::seeds(target).unwrap().iter().enumerate() {
            if let Err(e) = run(seed) {
                panic!("{target}: seed {i} is refused: {e}");
            }
        }
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
