//! Entry points for fuzzing taste-graph's file parsers through its public API: the
//! coverage-guided targets in `fuzz/` at the repository root call them, and the root
//! `tests/fuzz_corpus.rs` replays the committed corpora in CI. Whatever the bytes, each
//! returns (a typed error for a bad file) and never panics or allocates by a size the
//! bytes claim: a panic is a bug.
//!
//! The directory formats are fuzzed structure-aware: [`feedback_log`] and [`refresh_state`]
//! take a valid saved directory (made once per process), replace the file that the
//! input's first byte picks with the rest of the input, and open the directory.
//! [`seeds`] gives each target's starting corpus.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use mosaic_durability::MmapDirectory;
use taste_graph::dataset::parse_lightgcn;
use taste_graph::feedback::{Feedback, FeedbackLog, SyncPolicy};
use taste_graph::inductive::AggregatorConfig;
use taste_graph::{
    BipartiteGraph, ContentAggregator, Dataset, DeviceSpec, Error, Interaction, InteractionKind,
    ItemId, LightGcnConfig, LiveConfig, LiveModel, Refresher, Result, Trainer, Training, UserId,
};

/// An i/o error on `path`.
fn io(path: &Path, source: std::io::Error) -> Error {
    Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Files of a saved directory, sorted by name, with their bytes.
type Fixture = Vec<(String, Vec<u8>)>;
/// A fixture made once per process (its error kept as text).
type Once<T> = OnceLock<std::result::Result<T, String>>;

/// A scratch directory of this process for `name`, emptied.
fn scratch(name: &str) -> Result<PathBuf> {
    let dir = std::env::temp_dir()
        .join(format!("mosaic-fuzz-{}", std::process::id()))
        .join(name);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(|e| io(&dir, e))?;
    }
    std::fs::create_dir_all(&dir).map_err(|e| io(&dir, e))?;
    Ok(dir)
}

fn fixed<T>(
    cell: &'static OnceLock<std::result::Result<T, String>>,
    make: impl FnOnce() -> Result<T>,
) -> Result<&'static T> {
    cell.get_or_init(|| make().map_err(|e| e.to_string()))
        .as_ref()
        .map_err(|m| Error::Graph {
            message: format!("fuzzing fixture: {m}"),
        })
}

/// The small graph the checkpoint and refresher fixtures are trained on.
fn graph() -> Result<&'static BipartiteGraph> {
    static G: Once<BipartiteGraph> = OnceLock::new();
    fixed(&G, || {
        let edges =
            (0..12u32).flat_map(|u| (0..3).map(move |k| (UserId(u), ItemId((u * 5 + k * 3) % 10))));
        BipartiteGraph::from_edges(12, 10, edges)
    })
}

fn config() -> LightGcnConfig {
    LightGcnConfig::new()
        .dim(4)
        .layers(2)
        .batch_size(16)
        .seed(5)
}

fn aggregator() -> Result<ContentAggregator> {
    ContentAggregator::new(3, 4, &AggregatorConfig::new().hidden(3))
}

fn event(u: u32, i: u32, kind: InteractionKind, t: u64) -> Interaction {
    Interaction::new(UserId(u), ItemId(i), kind, t)
}

/// Files of `dir`, sorted, with their bytes.
fn files(dir: &Path) -> Result<Fixture> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(dir).map_err(|e| io(dir, e))? {
        let p = e.map_err(|e| io(dir, e))?.path();
        if p.is_file() {
            let bytes = std::fs::read(&p).map_err(|e| io(&p, e))?;
            v.push((
                p.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                bytes,
            ));
        }
    }
    v.sort();
    Ok(v)
}

/// A copy of the fixture `files` in a scratch directory, with file `bytes[0]` (modulo
/// the count) replaced by `bytes[1..]`.
fn damaged_copy(name: &str, fixture: &[(String, Vec<u8>)], bytes: &[u8]) -> Result<PathBuf> {
    let dir = scratch(name)?;
    let pick = bytes
        .first()
        .map_or(0, |&b| b as usize % fixture.len().max(1));
    for (i, (f, content)) in fixture.iter().enumerate() {
        let data = if i == pick {
            bytes.get(1..).unwrap_or(&[])
        } else {
            content
        };
        let p = dir.join(f);
        std::fs::write(&p, data).map_err(|e| io(&p, e))?;
    }
    Ok(dir)
}

/// A feedback log of two segments (events on new and existing ids, then a rotation and
/// more events).
fn feedback_fixture() -> Result<&'static Fixture> {
    static F: Once<Fixture> = OnceLock::new();
    fixed(&F, || {
        let dir = scratch("feedback-fixture")?;
        let fs = MmapDirectory::open(&dir)?;
        {
            let (mut log, _) =
                FeedbackLog::open(&fs, SyncPolicy::EachEvent, 0, |_, _| Ok::<(), Error>(()))?;
            for k in 0..9u64 {
                let f = Feedback {
                    user: 100 + k % 3,
                    item: 7_000 + k,
                    kind: if k < 6 {
                        InteractionKind::Click
                    } else {
                        InteractionKind::Save
                    },
                    weight: 1.0,
                    timestamp: k,
                };
                let seq = log.append(&f)?;
                log.acknowledge(seq)?;
                if k == 5 {
                    log.saved_through(0)?; // a second segment
                }
            }
        }
        let mut fs = files(&dir)?;
        fs.retain(|(n, _)| !n.ends_with(".lock"));
        Ok(fs)
    })
}

/// `bytes` (first byte: which segment) as a damaged feedback log, opened with
/// [`FeedbackLog::open`] and every record replayed.
pub fn feedback_log(bytes: &[u8]) -> Result<()> {
    let dir = damaged_copy("feedback", feedback_fixture()?, bytes)?;
    let fs = MmapDirectory::open(&dir)?;
    let mut last = 0;
    FeedbackLog::open(&fs, SyncPolicy::EachEvent, 0, |seq, _| {
        // records come back in order, each once
        if seq != last + 1 {
            return Err(Error::Graph {
                message: format!("record {seq} after {last}"),
            });
        }
        last = seq;
        Ok(())
    })?;
    Ok(())
}

/// A refresher's saved state: a trainer one epoch in, a live model with a content
/// aggregator, events on new users and items, an item added with content.
fn refresh_fixture() -> Result<&'static Fixture> {
    static R: Once<Fixture> = OnceLock::new();
    fixed(&R, || {
        let g = graph()?;
        let mut t = Trainer::new(g, &config())?;
        t.train_epoch(|_, _| {})?;
        let mut live = LiveModel::new(t.model(), g, LiveConfig::new().recent(4), 10)?;
        live.set_aggregator(aggregator()?)?;
        let mut r = Refresher::new(Training::from(t), g.clone())?;
        let (nu, ni) = (g.n_users() as u32, g.n_items() as u32);
        for e in [
            event(0, 9, InteractionKind::Click, 100),
            event(nu, 3, InteractionKind::Save, 101),
            event(4, ni, InteractionKind::Click, 102),
            event(1, 2, InteractionKind::Hide, 103),
        ] {
            r.observe(&mut live, e)?;
        }
        let item = live.add_item_with_content(&[0.5, -1.0, 2.0])?;
        r.observe(&mut live, event(6, item.0, InteractionKind::Click, 104))?;
        let dir = scratch("refresh-fixture")?;
        r.save(&dir, &live, 5)?;
        files(&dir)
    })
}

/// `bytes` (first byte: which file) as a damaged refresher state, loaded with
/// [`Refresher::load`].
pub fn refresh_state(bytes: &[u8]) -> Result<()> {
    let dir = damaged_copy("refresh", refresh_fixture()?, bytes)?;
    let cpu = DeviceSpec::Cpu.select().map_err(|e| Error::Graph {
        message: e.to_string(),
    })?;
    Refresher::load(&dir, &cpu, LiveConfig::new().recent(4), Some(aggregator()?))?;
    Ok(())
}

/// `bytes` as a trainer checkpoint of the fixture graph, resumed with [`Trainer::resume`].
pub fn checkpoint(bytes: &[u8]) -> Result<()> {
    let dir = scratch("checkpoint")?;
    let p = dir.join("trainer.ckpt");
    std::fs::write(&p, bytes).map_err(|e| io(&p, e))?;
    Trainer::resume(graph()?, &p)?;
    Ok(())
}

/// `bytes` as LightGCN-format text: train lines, then after the first `\0` test lines.
pub fn dataset(bytes: &[u8]) -> Result<()> {
    let (train, test) = match bytes.iter().position(|&b| b == 0) {
        Some(i) => (&bytes[..i], &bytes[i + 1..]),
        None => (bytes, &[][..]),
    };
    let text = |b: &[u8], name: &str| -> Result<String> {
        String::from_utf8(b.to_vec()).map_err(|_| Error::Parse {
            path: PathBuf::from(name),
            line: 0,
            message: "not UTF-8".into(),
        })
    };
    let train = parse_lightgcn(&text(train, "train.txt")?, Path::new("train.txt"))?;
    let test = parse_lightgcn(&text(test, "test.txt")?, Path::new("test.txt"))?;
    Dataset::from_lines(&train, &test)?;
    Ok(())
}

/// The starting corpus of `target` (`feedback_log`, `refresh_state`, `checkpoint`,
/// `dataset`): valid inputs, one per file for the directory targets.
pub fn seeds(target: &str) -> Result<Vec<Vec<u8>>> {
    let per_file = |fixture: &[(String, Vec<u8>)]| {
        fixture
            .iter()
            .enumerate()
            .map(|(i, (_, b))| {
                let mut v = vec![i as u8];
                v.extend_from_slice(b);
                v
            })
            .collect()
    };
    Ok(match target {
        "feedback_log" => per_file(feedback_fixture()?),
        "refresh_state" => per_file(refresh_fixture()?),
        "checkpoint" => {
            let dir = scratch("checkpoint-seed")?;
            let p = dir.join("trainer.ckpt");
            let mut t = Trainer::new(graph()?, &config())?;
            t.train_epoch(|_, _| {})?;
            t.save_checkpoint(&p, graph()?)?;
            vec![std::fs::read(&p).map_err(|e| io(&p, e))?]
        }
        "dataset" => vec![b"0 1 2 3\n1 4 5\n2 0\n\x003 1\n0 5\n".to_vec()],
        other => {
            return Err(Error::Graph {
                message: format!("no fuzz target {other:?}"),
            });
        }
    })
}
