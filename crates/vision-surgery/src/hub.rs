//! One Hugging Face hub repository at one commit: its files listed first, then fetched
//! one at a time.
//!
//! Opening a repository resolves the revision (branch, tag or commit) to a commit and
//! lists that commit's files with their sizes: one request to the hub's model-info
//! endpoint (`HF_ENDPOINT`, default `https://huggingface.co`, as the Python client and
//! hf-hub's `ApiBuilder::from_env` read it). Nothing is downloaded until a file is
//! fetched, so a loader reads `config.json` and the shard index, refuses what it does not
//! support, and fetches only the shards it needs. Every file comes from the resolved
//! commit, so a branch moving mid-load cannot mix two versions.
//!
//! Files are taken from the local cache (`$HF_HOME/hub`, or `~/.cache/huggingface/hub`)
//! when present there. With `HF_HUB_OFFLINE=1`, or when the hub cannot be reached at all,
//! the cache is the only place looked at and the files listed are the cached snapshot's.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use hf_hub::api::Progress;
use hf_hub::api::sync::{ApiBuilder, ApiRepo};
use hf_hub::{Cache, Repo, RepoType};
use serde::Deserialize;

use crate::error::{Error, Result};

/// How far one file's download has got, reported to a [`ProgressFn`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DownloadProgress<'a> {
    /// The file, as named in the repository.
    pub file: &'a str,
    /// Bytes received so far.
    pub done: u64,
    /// The file's size.
    pub total: u64,
}

/// A download progress callback: called when a download starts, as bytes arrive, and when
/// it ends. Files found in the local cache report nothing.
pub type ProgressFn = Arc<dyn Fn(&DownloadProgress<'_>) + Send + Sync>;

/// The hub's answer to `GET /api/models/{repo}/revision/{revision}?blobs=true`.
#[derive(Deserialize)]
struct RepoListing {
    sha: String,
    siblings: Vec<Sibling>,
}

#[derive(Deserialize)]
struct Sibling {
    rfilename: String,
    #[serde(default)]
    size: Option<u64>,
}

/// One hub repository resolved to one commit.
pub struct HubRepo {
    repo: String,
    revision: String,
    commit: String,
    /// Every file of the commit, with its size where known.
    files: BTreeMap<String, Option<u64>>,
    cache: Cache,
    /// The repository at `commit`; `None` when only the cache is looked at.
    api: Option<ApiRepo>,
    progress: Option<ProgressFn>,
}

impl std::fmt::Debug for HubRepo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubRepo")
            .field("repo", &self.repo)
            .field("revision", &self.revision)
            .field("commit", &self.commit)
            .field("online", &self.api.is_some())
            .finish()
    }
}

/// Whether `HF_HUB_OFFLINE` asks for the cache only.
fn offline_requested() -> bool {
    std::env::var("HF_HUB_OFFLINE")
        .map(|v| {
            matches!(
                v.as_str(),
                "1" | "true" | "TRUE" | "True" | "yes" | "ON" | "on"
            )
        })
        .unwrap_or(false)
}

fn is_commit_hash(s: &str) -> bool {
    s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

impl HubRepo {
    /// Resolve `revision` of model `repo` and list its files; reports download progress
    /// to `progress`.
    pub fn open(repo: &str, revision: &str, progress: Option<ProgressFn>) -> Result<Self> {
        let cache = Cache::from_env();
        if offline_requested() {
            return Self::from_cache(repo, revision, cache, progress).map_err(|why| {
                hub_err(
                    repo,
                    revision,
                    "",
                    format!("{why} and HF_HUB_OFFLINE is set"),
                )
            });
        }
        let api = ApiBuilder::from_env()
            .with_progress(false)
            .build()
            .map_err(|e| hub_err(repo, revision, "", e.to_string()))?;
        let at_revision = Repo::with_revision(repo.into(), RepoType::Model, revision.into());
        let listing = api
            .repo(at_revision.clone())
            .info_request()
            .query("blobs", "true")
            .call();
        let listing: RepoListing = match listing {
            Ok(resp) => resp.into_json().map_err(|e| {
                hub_err(
                    repo,
                    revision,
                    "",
                    format!("unreadable repository listing: {e}"),
                )
            })?,
            // no answer at all (no network, refused connection): the cache, as the
            // Python client does; a status (404, 401) is the hub's answer and stands
            Err(ureq::Error::Transport(t)) => {
                return Self::from_cache(repo, revision, cache, progress).map_err(|why| {
                    hub_err(repo, revision, "", format!("hub unreachable ({t}); {why}"))
                });
            }
            Err(ureq::Error::Status(code, resp)) => {
                let body = resp.into_string().unwrap_or_default();
                let hint = match code {
                    401 | 403 => " (gated or private: accept the licence and set a token)",
                    404 => " (no such repository or revision)",
                    _ => "",
                };
                return Err(hub_err(
                    repo,
                    revision,
                    "",
                    format!("listing the repository: HTTP {code}{hint}: {}", body.trim()),
                ));
            }
        };
        if !is_commit_hash(&listing.sha) {
            return Err(hub_err(
                repo,
                revision,
                "",
                format!(
                    "the hub resolved the revision to {:?}, not a commit hash",
                    listing.sha
                ),
            ));
        }
        // later offline loads of this revision find the commit
        if listing.sha != revision {
            cache
                .repo(at_revision)
                .create_ref(&listing.sha)
                .map_err(|e| Error::io(cache.path(), e))?;
        }
        let at_commit = Repo::with_revision(repo.into(), RepoType::Model, listing.sha.clone());
        Ok(Self {
            repo: repo.into(),
            revision: revision.into(),
            files: listing
                .siblings
                .into_iter()
                .map(|s| (s.rfilename, s.size))
                .collect(),
            commit: listing.sha,
            cache,
            api: Some(api.repo(at_commit)),
            progress,
        })
    }

    /// The cached snapshot of `revision`; `Err` says why there is none.
    fn from_cache(
        repo: &str,
        revision: &str,
        cache: Cache,
        progress: Option<ProgressFn>,
    ) -> std::result::Result<Self, String> {
        let folder = cache.path().join(Repo::model(repo.into()).folder_name());
        let commit = if is_commit_hash(revision) {
            revision.to_string()
        } else {
            let r = folder.join("refs").join(revision);
            std::fs::read_to_string(&r)
                .map(|s| s.trim().to_string())
                .map_err(|_| format!("not in the local cache {}", cache.path().display()))?
        };
        let snapshot = folder.join("snapshots").join(&commit);
        let entries = std::fs::read_dir(&snapshot)
            .map_err(|_| format!("not in the local cache {}", cache.path().display()))?;
        let mut files = BTreeMap::new();
        for e in entries.flatten() {
            let path = e.path();
            if let (Some(name), Ok(meta)) = (e.file_name().to_str(), std::fs::metadata(&path))
                && meta.is_file()
            {
                files.insert(name.to_string(), Some(meta.len()));
            }
        }
        Ok(Self {
            repo: repo.into(),
            revision: revision.into(),
            commit,
            files,
            cache,
            api: None,
            progress,
        })
    }

    /// The commit the revision resolved to.
    pub fn commit(&self) -> &str {
        &self.commit
    }

    /// Whether the commit has `file`.
    pub fn lists(&self, file: &str) -> bool {
        self.files.contains_key(file)
    }

    /// The size of `file`, where the listing gave it.
    pub fn size(&self, file: &str) -> Option<u64> {
        self.files.get(file).copied().flatten()
    }

    /// Where `file` sits (or would sit) in the cache.
    pub fn cache_path(&self, file: &str) -> PathBuf {
        self.cache
            .path()
            .join(Repo::model(self.repo.clone()).folder_name())
            .join("snapshots")
            .join(&self.commit)
            .join(file)
    }

    /// `file` from the cache, downloading it first when absent. A file the commit does
    /// not list is an error.
    pub fn fetch(&self, file: &str) -> Result<PathBuf> {
        let err = |message: String| hub_err(&self.repo, &self.revision, file, message);
        if !self.lists(file) {
            return Err(err(format!("commit {} has no such file", self.commit)));
        }
        let cached = self.cache_path(file);
        if cached.is_file() {
            return Ok(cached);
        }
        let Some(api) = &self.api else {
            return Err(err(format!(
                "not in the local cache {}",
                self.cache.path().display()
            )));
        };
        let reporter = Reporter {
            file: file.to_string(),
            done: 0,
            total: 0,
            callback: self.progress.clone(),
        };
        api.download_with_progress(file, reporter)
            .map_err(|e| err(e.to_string()))
    }
}

fn hub_err(repo: &str, revision: &str, file: &str, message: String) -> Error {
    Error::Hub {
        repo: repo.into(),
        revision: revision.into(),
        file: file.into(),
        message,
    }
}

/// hf-hub's progress interface turned into [`DownloadProgress`] calls.
struct Reporter {
    file: String,
    done: u64,
    total: u64,
    callback: Option<ProgressFn>,
}

impl Reporter {
    fn report(&self) {
        if let Some(cb) = &self.callback {
            cb(&DownloadProgress {
                file: &self.file,
                done: self.done,
                total: self.total,
            });
        }
    }
}

impl Progress for Reporter {
    fn init(&mut self, size: usize, _filename: &str) {
        self.total = size as u64;
        self.done = 0;
        self.report();
    }
    fn update(&mut self, size: usize) {
        self.done += size as u64;
        self.report();
    }
    fn finish(&mut self) {
        self.report();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_offline_listing_is_the_cached_snapshot() {
        let home = tempfile::tempdir().unwrap();
        let commit = "0123456789abcdef0123456789abcdef01234567";
        let repo_dir = home.path().join("models--acme--tiny");
        let snap = repo_dir.join("snapshots").join(commit);
        std::fs::create_dir_all(&snap).unwrap();
        std::fs::create_dir_all(repo_dir.join("refs")).unwrap();
        std::fs::write(repo_dir.join("refs").join("main"), commit).unwrap();
        std::fs::write(snap.join("config.json"), "{}").unwrap();
        std::fs::write(snap.join("model.safetensors"), b"xyz").unwrap();
        let cache = Cache::new(home.path().to_path_buf());
        let hub = HubRepo::from_cache("acme/tiny", "main", cache.clone(), None).unwrap();
        assert_eq!(hub.commit(), commit);
        assert_eq!(hub.fetch("config.json").unwrap(), snap.join("config.json"));
        assert_eq!(hub.size("model.safetensors"), Some(3));
        let e = hub.fetch("tokenizer.json").unwrap_err();
        assert!(e.to_string().contains("no such file"), "{e}");
        // a pinned commit resolves without a ref; an unknown revision is not cached
        let pinned = HubRepo::from_cache("acme/tiny", commit, cache.clone(), None).unwrap();
        assert!(pinned.lists("config.json"));
        let e = HubRepo::from_cache("acme/tiny", "v2", cache, None).unwrap_err();
        assert!(e.contains("not in the local cache"), "{e}");
    }
}
