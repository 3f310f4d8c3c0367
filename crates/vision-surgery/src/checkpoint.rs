//! Locating a Qwen3-VL checkpoint: a local directory or a Hugging Face hub model id.
//!
//! A checkpoint is `config.json`, `tokenizer.json` and either `model.safetensors` or
//! `model.safetensors.index.json` with its shards. A [`Checkpoint`] lists its files
//! first and fetches each only when asked (see [`crate::hub`] for the hub side), so a
//! loader judges `config.json` before any weight moves and fetches only the shards that
//! hold tensors it reads.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::{Error, Result};
use crate::hub::{HubRepo, ProgressFn};

/// Name of the single-file weights.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// Name of the shard index.
pub const WEIGHTS_INDEX_FILE: &str = "model.safetensors.index.json";
/// Name of the config.
pub const CONFIG_FILE: &str = "config.json";
/// Name of the tokenizer.
pub const TOKENIZER_FILE: &str = "tokenizer.json";
/// Name of the adapter inside a surgered checkpoint.
pub const ADAPTER_FILE: &str = "adapter.safetensors";
/// Small side files copied verbatim into a surgered checkpoint when present.
pub const SIDE_FILES: &[&str] = &[
    "generation_config.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.json",
    "chat_template.jinja",
    "vocab.json",
    "merges.txt",
];

/// Where a checkpoint comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    /// A local directory.
    Dir(PathBuf),
    /// A hub model id and revision (branch, tag or commit hash).
    Hub {
        /// Model id, e.g. `Qwen/Qwen3-VL-2B-Instruct`.
        repo: String,
        /// Revision, e.g. `main`.
        revision: String,
    },
}

impl ModelSource {
    /// An existing directory, or anything shaped like a path (absolute, starting with
    /// `.` or `~`, or with more than one `/`), is [`ModelSource::Dir`]; anything else is
    /// a hub id `org/name`, optionally written `org/name@revision` (default `main`).
    pub fn parse(spec: &str) -> Self {
        let p = Path::new(spec);
        let path_like = p.is_absolute()
            || spec.starts_with('.')
            || spec.starts_with('~')
            || spec.matches('/').count() > 1
            || spec.contains('\\');
        if p.is_dir() || path_like {
            return ModelSource::Dir(p.to_path_buf());
        }
        match spec.split_once('@') {
            Some((repo, rev)) => ModelSource::Hub {
                repo: repo.into(),
                revision: rev.into(),
            },
            None => ModelSource::Hub {
                repo: spec.into(),
                revision: "main".into(),
            },
        }
    }
}

/// How the weights are stored.
#[derive(Debug, Clone)]
pub enum WeightLayout {
    /// One `model.safetensors`.
    Single(PathBuf),
    /// `model.safetensors.index.json` and its shards.
    Sharded {
        /// The index file.
        index: PathBuf,
        /// Tensor name -> shard path (where the shard sits or would sit locally).
        weight_map: BTreeMap<String, PathBuf>,
    },
}

impl WeightLayout {
    /// Every file of the layout: the single file, or the index and each shard once.
    pub fn files(&self) -> Vec<PathBuf> {
        match self {
            WeightLayout::Single(p) => vec![p.clone()],
            WeightLayout::Sharded { index, weight_map } => {
                let shards: BTreeSet<&PathBuf> = weight_map.values().collect();
                std::iter::once(index.clone())
                    .chain(shards.into_iter().cloned())
                    .collect()
            }
        }
    }
}

/// The files of one checkpoint that a load fetched, and what it left alone.
#[derive(Debug, Clone)]
pub struct CheckpointFiles {
    /// What was asked for.
    pub source: ModelSource,
    /// The hub commit the files come from (`None` for a local directory).
    pub commit: Option<String>,
    /// `config.json`.
    pub config: PathBuf,
    /// `tokenizer.json`, when the checkpoint has one.
    pub tokenizer: Option<PathBuf>,
    /// The weights' layout.
    pub weights: WeightLayout,
    /// Weight files fetched: those holding at least one tensor the load wanted.
    pub shards: Vec<PathBuf>,
    /// Tensors in shards never fetched nor opened, with the shard's local path.
    pub unopened: Vec<(String, PathBuf)>,
    /// Bytes of the shards never fetched nor opened, where their size is known.
    pub skipped_shard_bytes: u64,
    /// An `adapter.safetensors` shipped with the checkpoint (surgered checkpoints).
    pub adapter: Option<PathBuf>,
    /// Side files present (see [`SIDE_FILES`]).
    pub side_files: Vec<PathBuf>,
}

impl CheckpointFiles {
    /// Every local file the checkpoint was (or will be) read from.
    pub fn all(&self) -> Vec<PathBuf> {
        let mut v = vec![self.config.clone()];
        v.extend(self.tokenizer.clone());
        v.extend(self.weights.files());
        v.extend(self.adapter.clone());
        v.extend(self.side_files.iter().cloned());
        v
    }
}

/// Where a checkpoint's files come from.
#[derive(Debug)]
enum Origin {
    Dir(PathBuf),
    Hub(Box<HubRepo>),
}

/// A checkpoint opened for reading: its files are listed, and each is fetched only when
/// asked for, so `config.json` can be read and judged before any weight is downloaded.
#[derive(Debug)]
pub struct Checkpoint {
    source: ModelSource,
    origin: Origin,
}

impl Checkpoint {
    /// Open `source`: a directory, or a hub repository resolved to a commit and listed
    /// (downloads report to `progress`). Nothing else is fetched yet.
    pub fn open(source: &ModelSource, progress: Option<ProgressFn>) -> Result<Self> {
        let origin = match source {
            ModelSource::Dir(dir) => {
                if !dir.join(CONFIG_FILE).is_file() {
                    return Err(not_found(
                        dir.join(CONFIG_FILE),
                        "checkpoint has no config.json",
                    ));
                }
                Origin::Dir(dir.clone())
            }
            ModelSource::Hub { repo, revision } => {
                Origin::Hub(Box::new(HubRepo::open(repo, revision, progress)?))
            }
        };
        Ok(Self {
            source: source.clone(),
            origin,
        })
    }

    /// What was opened.
    pub fn source(&self) -> &ModelSource {
        &self.source
    }

    /// The hub commit the files come from (`None` for a local directory).
    pub fn commit(&self) -> Option<&str> {
        match &self.origin {
            Origin::Dir(_) => None,
            Origin::Hub(h) => Some(h.commit()),
        }
    }

    /// Whether the checkpoint has `file`.
    pub fn lists(&self, file: &str) -> bool {
        match &self.origin {
            Origin::Dir(d) => d.join(file).is_file(),
            Origin::Hub(h) => h.lists(file),
        }
    }

    /// `file`'s local path, fetching it first from the hub when needed. A file the
    /// checkpoint does not have is an error.
    pub fn fetch(&self, file: &str) -> Result<PathBuf> {
        match &self.origin {
            Origin::Dir(d) => {
                let p = d.join(file);
                if p.is_file() {
                    Ok(p)
                } else {
                    Err(not_found(p, "no such file in the checkpoint"))
                }
            }
            Origin::Hub(h) => h.fetch(file),
        }
    }

    /// `file` when the checkpoint has it; failing to fetch a file it has is an error.
    pub fn fetch_if_present(&self, file: &str) -> Result<Option<PathBuf>> {
        if self.lists(file) {
            self.fetch(file).map(Some)
        } else {
            Ok(None)
        }
    }

    /// Where `file` sits, or would sit once fetched.
    fn local_path(&self, file: &str) -> PathBuf {
        match &self.origin {
            Origin::Dir(d) => d.join(file),
            Origin::Hub(h) => h.cache_path(file),
        }
    }

    /// `file`'s size, where known without fetching it.
    fn size(&self, file: &str) -> Option<u64> {
        match &self.origin {
            Origin::Dir(d) => std::fs::metadata(d.join(file)).ok().map(|m| m.len()),
            Origin::Hub(h) => h.size(file),
        }
    }

    /// `config.json`.
    pub fn config_file(&self) -> Result<PathBuf> {
        self.fetch(CONFIG_FILE)
    }

    /// Fetch what a load needs: the config, the shard index, every weight file holding
    /// a tensor accepted by `keep` (and no other), the tokenizer, a shipped adapter and
    /// the side files. Shards holding only rejected tensors are never fetched nor opened.
    pub fn fetch_files(&self, keep: impl Fn(&str) -> bool) -> Result<CheckpointFiles> {
        let config = self.config_file()?;
        let (weights, shard_of) = if self.lists(WEIGHTS_INDEX_FILE) {
            let index = self.fetch(WEIGHTS_INDEX_FILE)?;
            let shard_of = read_index(&index)?;
            let weight_map = shard_of
                .iter()
                .map(|(n, s)| (n.clone(), self.local_path(s)))
                .collect();
            (WeightLayout::Sharded { index, weight_map }, shard_of)
        } else if self.lists(WEIGHTS_FILE) {
            (
                WeightLayout::Single(self.fetch(WEIGHTS_FILE)?),
                BTreeMap::new(),
            )
        } else {
            return Err(not_found(
                self.local_path(WEIGHTS_FILE),
                "checkpoint has neither model.safetensors nor model.safetensors.index.json",
            ));
        };
        // the small files first: a failure there costs no shard download
        let tokenizer = self.fetch_if_present(TOKENIZER_FILE)?;
        let adapter = self.fetch_if_present(ADAPTER_FILE)?;
        let mut side_files = Vec::new();
        for f in SIDE_FILES {
            side_files.extend(self.fetch_if_present(f)?);
        }
        let mut shards = Vec::new();
        let mut unopened = Vec::new();
        let mut skipped_shard_bytes = 0;
        match &weights {
            WeightLayout::Single(p) => shards.push(p.clone()),
            WeightLayout::Sharded { .. } => {
                let needed: BTreeSet<&String> = shard_of
                    .iter()
                    .filter(|(n, _)| keep(n))
                    .map(|(_, s)| s)
                    .collect();
                for s in &needed {
                    shards.push(self.fetch(s)?);
                }
                let skipped: BTreeSet<&String> =
                    shard_of.values().filter(|s| !needed.contains(s)).collect();
                skipped_shard_bytes = skipped.iter().filter_map(|s| self.size(s)).sum();
                unopened = shard_of
                    .iter()
                    .filter(|(_, s)| !needed.contains(s))
                    .map(|(n, s)| (n.clone(), self.local_path(s)))
                    .collect();
            }
        }
        Ok(CheckpointFiles {
            source: self.source.clone(),
            commit: self.commit().map(str::to_string),
            config,
            tokenizer,
            weights,
            shards,
            unopened,
            skipped_shard_bytes,
            adapter,
            side_files,
        })
    }
}

fn not_found(path: PathBuf, message: &str) -> Error {
    Error::io(
        path,
        std::io::Error::new(std::io::ErrorKind::NotFound, message.to_string()),
    )
}

/// Read a shard index: tensor name -> shard file name, every name checked to stay
/// inside the checkpoint.
fn read_index(index: &Path) -> Result<BTreeMap<String, String>> {
    let text = std::fs::read_to_string(index).map_err(|e| Error::io(index, e))?;
    let v: Value = serde_json::from_str(&text).map_err(|e| Error::Json {
        path: index.to_path_buf(),
        message: e.to_string(),
    })?;
    let map = v
        .get("weight_map")
        .and_then(Value::as_object)
        .ok_or_else(|| Error::Json {
            path: index.to_path_buf(),
            message: "no \"weight_map\" object".into(),
        })?;
    let mut out = BTreeMap::new();
    for (name, shard) in map {
        let shard = shard.as_str().ok_or_else(|| Error::Json {
            path: index.to_path_buf(),
            message: format!("weight_map[{name:?}] is not a string"),
        })?;
        let inside = !shard.is_empty()
            && !shard.contains("..")
            && !shard.contains('\\')
            && !Path::new(shard).is_absolute();
        if !inside {
            return Err(Error::Json {
                path: index.to_path_buf(),
                message: format!(
                    "weight_map[{name:?}] = {shard:?} is not a file of the checkpoint"
                ),
            });
        }
        out.insert(name.clone(), shard.to_string());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_parsing() {
        assert_eq!(
            ModelSource::parse("Qwen/Qwen3-VL-2B-Instruct@v1"),
            ModelSource::Hub {
                repo: "Qwen/Qwen3-VL-2B-Instruct".into(),
                revision: "v1".into()
            }
        );
        let d = tempfile::tempdir().unwrap();
        assert_eq!(
            ModelSource::parse(d.path().to_str().unwrap()),
            ModelSource::Dir(d.path().to_path_buf())
        );
        // a mistyped local path is reported as a missing directory, not looked up on the hub
        let typo = ModelSource::parse("./models/qwen3-vl-2b");
        assert_eq!(typo, ModelSource::Dir("./models/qwen3-vl-2b".into()));
        let e = Checkpoint::open(&typo, None).unwrap_err().to_string();
        assert!(e.contains("config.json"), "{e}");
    }
}
