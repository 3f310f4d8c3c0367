//! Locating a Qwen3-VL checkpoint: a local directory or a Hugging Face hub model id.
//!
//! A checkpoint is `config.json`, `tokenizer.json` and either `model.safetensors` or
//! `model.safetensors.index.json` with its shards. Through the hub, files are taken
//! from the local cache (`$HF_HOME/hub`, or `~/.cache/huggingface/hub`) first; with
//! `HF_HUB_OFFLINE=1` the cache is the only place looked at.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use hf_hub::{Cache, Repo, RepoType};
use serde_json::Value;

use crate::error::{Error, Result};

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
        /// Tensor name -> shard path.
        weight_map: BTreeMap<String, PathBuf>,
    },
}

impl WeightLayout {
    /// Shards holding at least one tensor accepted by `keep`, and every tensor name
    /// whose shard holds none (known from the index only).
    pub fn shards_for(
        &self,
        keep: impl Fn(&str) -> bool,
    ) -> (Vec<PathBuf>, Vec<(String, PathBuf)>) {
        match self {
            WeightLayout::Single(p) => (vec![p.clone()], vec![]),
            WeightLayout::Sharded { weight_map, .. } => {
                let needed: BTreeSet<&PathBuf> = weight_map
                    .iter()
                    .filter(|(n, _)| keep(n))
                    .map(|(_, p)| p)
                    .collect();
                let unopened = weight_map
                    .iter()
                    .filter(|(_, p)| !needed.contains(p))
                    .map(|(n, p)| (n.clone(), p.clone()))
                    .collect();
                (needed.into_iter().cloned().collect(), unopened)
            }
        }
    }
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

/// The files of one checkpoint, located but not yet read.
#[derive(Debug, Clone)]
pub struct CheckpointFiles {
    /// What was asked for.
    pub source: ModelSource,
    /// `config.json`.
    pub config: PathBuf,
    /// `tokenizer.json`, when present.
    pub tokenizer: Option<PathBuf>,
    /// The weights.
    pub weights: WeightLayout,
    /// An `adapter.safetensors` shipped with the checkpoint (surgered checkpoints).
    pub adapter: Option<PathBuf>,
    /// Side files present (see [`SIDE_FILES`]).
    pub side_files: Vec<PathBuf>,
}

impl CheckpointFiles {
    /// Every file the checkpoint was (or will be) read from.
    pub fn all(&self) -> Vec<PathBuf> {
        let mut v = vec![self.config.clone()];
        v.extend(self.tokenizer.clone());
        v.extend(self.weights.files());
        v.extend(self.adapter.clone());
        v.extend(self.side_files.iter().cloned());
        v
    }
}

impl CheckpointFiles {
    /// Locate the files of `source`.
    pub fn locate(source: &ModelSource) -> Result<Self> {
        match source {
            ModelSource::Dir(dir) => Self::from_dir(dir, source.clone()),
            ModelSource::Hub { repo, revision } => Self::from_hub(repo, revision),
        }
    }

    fn from_dir(dir: &Path, source: ModelSource) -> Result<Self> {
        let find = |name: &str| -> Option<PathBuf> {
            let p = dir.join(name);
            p.is_file().then_some(p)
        };
        let config = find(CONFIG_FILE).ok_or_else(|| {
            Error::io(
                dir.join(CONFIG_FILE),
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "checkpoint has no config.json",
                ),
            )
        })?;
        let weights = if let Some(index) = find(WEIGHTS_INDEX_FILE) {
            let weight_map = read_index(&index, |shard| Ok(dir.join(shard)))?;
            WeightLayout::Sharded { index, weight_map }
        } else if let Some(single) = find(WEIGHTS_FILE) {
            WeightLayout::Single(single)
        } else {
            return Err(Error::io(
                dir.join(WEIGHTS_FILE),
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "checkpoint has neither model.safetensors nor model.safetensors.index.json",
                ),
            ));
        };
        Ok(Self {
            source,
            config,
            tokenizer: find(TOKENIZER_FILE),
            weights,
            adapter: find(ADAPTER_FILE),
            side_files: SIDE_FILES.iter().filter_map(|n| find(n)).collect(),
        })
    }

    fn from_hub(repo: &str, revision: &str) -> Result<Self> {
        let hub = HubRepo::new(repo, revision)?;
        let config = hub.get(CONFIG_FILE)?;
        let weights = match hub.get(WEIGHTS_INDEX_FILE) {
            Ok(index) => {
                let weight_map = read_index(&index, |shard| hub.get(shard))?;
                WeightLayout::Sharded { index, weight_map }
            }
            Err(_) => WeightLayout::Single(hub.get(WEIGHTS_FILE)?),
        };
        Ok(Self {
            source: ModelSource::Hub {
                repo: repo.into(),
                revision: revision.into(),
            },
            config,
            tokenizer: hub.get(TOKENIZER_FILE).ok(),
            weights,
            adapter: hub.get(ADAPTER_FILE).ok(),
            side_files: SIDE_FILES.iter().filter_map(|n| hub.get(n).ok()).collect(),
        })
    }
}

/// Read a shard index; `resolve` turns a shard file name into a local path.
/// Shards are resolved once each, not once per tensor.
fn read_index(
    index: &Path,
    mut resolve: impl FnMut(&str) -> Result<PathBuf>,
) -> Result<BTreeMap<String, PathBuf>> {
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
    let mut resolved: BTreeMap<String, PathBuf> = BTreeMap::new();
    let mut out = BTreeMap::new();
    for (name, shard) in map {
        let shard = shard.as_str().ok_or_else(|| Error::Json {
            path: index.to_path_buf(),
            message: format!("weight_map[{name:?}] is not a string"),
        })?;
        if shard.contains("..") || Path::new(shard).is_absolute() {
            return Err(Error::Json {
                path: index.to_path_buf(),
                message: format!("weight_map[{name:?}] = {shard:?} points outside the checkpoint"),
            });
        }
        let path = match resolved.get(shard) {
            Some(p) => p.clone(),
            None => {
                // Shards that only hold skipped tensors may be absent: resolve lazily,
                // keeping the would-be path so the loader can report it.
                let p = resolve(shard).unwrap_or_else(|_| index.with_file_name(shard));
                resolved.insert(shard.to_string(), p.clone());
                p
            }
        };
        out.insert(name.clone(), path);
    }
    Ok(out)
}

/// One hub repository at one revision, cache first.
struct HubRepo {
    repo: String,
    revision: String,
    cache: Cache,
    api: Option<hf_hub::api::sync::ApiRepo>,
}

impl HubRepo {
    fn new(repo: &str, revision: &str) -> Result<Self> {
        let offline = std::env::var("HF_HUB_OFFLINE")
            .map(|v| matches!(v.as_str(), "1" | "true" | "TRUE" | "yes" | "ON" | "on"))
            .unwrap_or(false);
        let api = if offline {
            None
        } else {
            let api = hf_hub::api::sync::ApiBuilder::from_env()
                .with_progress(false)
                .build()
                .map_err(|e| Error::Hub {
                    repo: repo.into(),
                    revision: revision.into(),
                    file: String::new(),
                    message: e.to_string(),
                })?;
            Some(api.repo(Repo::with_revision(
                repo.into(),
                RepoType::Model,
                revision.into(),
            )))
        };
        Ok(Self {
            repo: repo.into(),
            revision: revision.into(),
            cache: Cache::from_env(),
            api,
        })
    }

    fn cached(&self, file: &str) -> Option<PathBuf> {
        let repo = Repo::with_revision(self.repo.clone(), RepoType::Model, self.revision.clone());
        if let Some(p) = self.cache.repo(repo.clone()).get(file) {
            return Some(p);
        }
        // A commit hash has no refs/ entry: look in its snapshot directly.
        let is_commit =
            self.revision.len() == 40 && self.revision.bytes().all(|b| b.is_ascii_hexdigit());
        if is_commit {
            let p = self
                .cache
                .path()
                .join(repo.folder_name())
                .join("snapshots")
                .join(&self.revision)
                .join(file);
            if p.is_file() {
                return Some(p);
            }
        }
        None
    }

    fn get(&self, file: &str) -> Result<PathBuf> {
        if let Some(p) = self.cached(file) {
            return Ok(p);
        }
        let err = |message: String| Error::Hub {
            repo: self.repo.clone(),
            revision: self.revision.clone(),
            file: file.into(),
            message,
        };
        match &self.api {
            None => Err(err(format!(
                "not in the local cache {} and HF_HUB_OFFLINE is set",
                self.cache.path().display()
            ))),
            Some(api) => api.get(file).map_err(|e| err(e.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offline_hub_lookup_reads_the_hf_home_cache_layout() {
        let home = tempfile::tempdir().unwrap();
        let repo_dir = home.path().join("hub").join("models--acme--tiny");
        let snap = repo_dir
            .join("snapshots")
            .join("0123456789abcdef0123456789abcdef01234567");
        std::fs::create_dir_all(&snap).unwrap();
        std::fs::create_dir_all(repo_dir.join("refs")).unwrap();
        std::fs::write(
            repo_dir.join("refs").join("main"),
            "0123456789abcdef0123456789abcdef01234567",
        )
        .unwrap();
        std::fs::write(snap.join("config.json"), "{}").unwrap();
        std::fs::write(snap.join("model.safetensors"), b"x").unwrap();
        let cache = Cache::new(home.path().join("hub"));
        let hub = HubRepo {
            repo: "acme/tiny".into(),
            revision: "main".into(),
            cache,
            api: None,
        };
        assert_eq!(hub.get("config.json").unwrap(), snap.join("config.json"));
        let e = hub.get("tokenizer.json").unwrap_err();
        assert!(e.to_string().contains("HF_HUB_OFFLINE"), "{e}");
    }

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
        let e = CheckpointFiles::locate(&typo).unwrap_err().to_string();
        assert!(e.contains("config.json"), "{e}");
    }
}
