//! A stand-in for the Hugging Face hub on a loopback port: the two endpoints a model
//! load uses (`/api/models/{repo}/revision/{rev}` and `/{repo}/resolve/{rev}/{file}`
//! with range requests and the hub's `etag` / `x-repo-commit` / `content-range`
//! headers), serving prepared repositories from directories, and logging every request
//! so tests can say which files were and were not asked for.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// One repository: a branch name, the commit it points at, and the directory of files.
struct Served {
    branch: String,
    commit: String,
    dir: PathBuf,
    /// Files answered with HTTP 500 when their bytes are asked for.
    failing: BTreeSet<String>,
}

#[derive(Default)]
struct State {
    repos: BTreeMap<String, Served>,
    log: Vec<Request>,
}

/// One logged request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Repository id.
    pub repo: String,
    /// `None` for the listing, else the file asked for.
    pub file: Option<String>,
    /// The Range header, when one was sent.
    pub range: Option<String>,
}

impl Request {
    /// Whether the request asked for a file's bytes (not hf-hub's one-byte metadata probe).
    pub fn is_download(&self) -> bool {
        self.file.is_some() && self.range.as_deref() != Some("bytes=0-0")
    }
}

/// The server; it stops serving when dropped (its thread stays parked on accept).
pub struct FakeHub {
    endpoint: String,
    state: Arc<Mutex<State>>,
}

impl FakeHub {
    /// Start on a free loopback port.
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(State::default()));
        let st = state.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let st = st.clone();
                std::thread::spawn(move || serve(conn, &st));
            }
        });
        Self { endpoint, state }
    }

    /// The URL to put in `HF_ENDPOINT`.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Serve `dir` as repository `repo` at `commit`, reachable as `branch` too.
    pub fn add(&self, repo: &str, branch: &str, commit: &str, dir: PathBuf) {
        self.state.lock().unwrap().repos.insert(
            repo.into(),
            Served {
                branch: branch.into(),
                commit: commit.into(),
                dir,
                failing: BTreeSet::new(),
            },
        );
    }

    /// Answer requests for `file` of `repo` with HTTP 500.
    pub fn fail(&self, repo: &str, file: &str) {
        if let Some(r) = self.state.lock().unwrap().repos.get_mut(repo) {
            r.failing.insert(file.into());
        }
    }

    /// Every request so far, and clears the log.
    pub fn take_log(&self) -> Vec<Request> {
        std::mem::take(&mut self.state.lock().unwrap().log)
    }
}

fn serve(conn: TcpStream, state: &Mutex<State>) {
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return;
    }
    let target = line.split_whitespace().nth(1).unwrap_or("").to_string();
    let mut range = None;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
            break;
        }
        if let Some((k, v)) = h.split_once(':')
            && k.eq_ignore_ascii_case("range")
        {
            range = Some(v.trim().to_string());
        }
    }
    let path = target.split('?').next().unwrap_or("");
    let reply = answer(path, range, state);
    let mut conn = conn;
    let _ = conn.write_all(&reply);
}

fn respond(status: &str, headers: &[(String, String)], body: &[u8]) -> Vec<u8> {
    let mut out = format!("HTTP/1.1 {status}\r\nconnection: close\r\n");
    for (k, v) in headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str(&format!("content-length: {}\r\n\r\n", body.len()));
    let mut out = out.into_bytes();
    out.extend_from_slice(body);
    out
}

fn not_found(what: &str) -> Vec<u8> {
    respond(
        "404 Not Found",
        &[("x-error-code".into(), "EntryNotFound".into())],
        what.as_bytes(),
    )
}

fn answer(path: &str, range: Option<String>, state: &Mutex<State>) -> Vec<u8> {
    let mut st = state.lock().unwrap();
    // /api/models/{org}/{name}/revision/{rev}
    if let Some(rest) = path.strip_prefix("/api/models/") {
        let parts: Vec<&str> = rest.splitn(4, '/').collect();
        let [org, name, "revision", rev] = parts[..] else {
            return not_found("bad listing path");
        };
        let repo = format!("{org}/{name}");
        st.log.push(Request {
            repo: repo.clone(),
            file: None,
            range: None,
        });
        let Some(r) = st.repos.get(&repo) else {
            return not_found("no such repository");
        };
        if rev != r.branch && rev != r.commit {
            return not_found("no such revision");
        }
        let mut siblings = Vec::new();
        for e in std::fs::read_dir(&r.dir).unwrap().flatten() {
            let size = e.metadata().unwrap().len();
            siblings.push(serde_json::json!({
                "rfilename": e.file_name().to_string_lossy(), "size": size,
            }));
        }
        let body = serde_json::json!({ "sha": r.commit, "siblings": siblings }).to_string();
        return respond(
            "200 OK",
            &[("content-type".into(), "application/json".into())],
            body.as_bytes(),
        );
    }
    // /{org}/{name}/resolve/{rev}/{file}
    let parts: Vec<&str> = path.trim_start_matches('/').splitn(5, '/').collect();
    let [org, name, "resolve", rev, file] = parts[..] else {
        return not_found("bad path");
    };
    let repo = format!("{org}/{name}");
    st.log.push(Request {
        repo: repo.clone(),
        file: Some(file.into()),
        range: range.clone(),
    });
    let Some(r) = st.repos.get(&repo) else {
        return not_found("no such repository");
    };
    if rev != r.branch && rev != r.commit {
        return not_found("no such revision");
    }
    if r.failing.contains(file) {
        return respond("500 Internal Server Error", &[], b"storage backend down");
    }
    let Ok(bytes) = std::fs::read(r.dir.join(file)) else {
        return not_found("no such file");
    };
    let total = bytes.len();
    let (start, end) = match range.as_deref().and_then(|r| r.strip_prefix("bytes=")) {
        Some(spec) => {
            let (a, b) = spec.split_once('-').unwrap_or((spec, ""));
            let a: usize = a.parse().unwrap_or(0);
            let b: usize = b.parse().unwrap_or(total.saturating_sub(1));
            (a.min(total), (b + 1).min(total))
        }
        None => (0, total),
    };
    // the etag names the blob in the cache: a content hash, as the hub's sha256
    let etag = format!("\"{:016x}{:016x}\"", fnv(&bytes), total);
    respond(
        "206 Partial Content",
        &[
            ("etag".into(), etag),
            ("x-repo-commit".into(), r.commit.clone()),
            (
                "content-range".into(),
                format!("bytes {start}-{}/{total}", end.saturating_sub(1)),
            ),
        ],
        &bytes[start..end],
    )
}

fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325u64, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x100000001b3)
    })
}

pub const DECODER_SHARDS: [&str; 2] = [
    "model-00001-of-00004.safetensors",
    "model-00002-of-00004.safetensors",
];
pub const VISION_SHARDS: [&str; 2] = [
    "model-00003-of-00004.safetensors",
    "model-00004-of-00004.safetensors",
];

/// The checkpoint `src` (one model.safetensors) laid out as the releases are: decoder
/// tensors in two shards, the vision tower in two shards of its own, an index, and the
/// other files copied.
pub fn released_layout(src: &Path, dir: &Path) {
    for e in std::fs::read_dir(src).unwrap().flatten() {
        if e.file_name() != "model.safetensors" {
            std::fs::copy(e.path(), dir.join(e.file_name())).unwrap();
        }
    }
    let all =
        candle_core::safetensors::load(src.join("model.safetensors"), &candle_core::Device::Cpu)
            .unwrap();
    let mut names: Vec<&String> = all.keys().collect();
    names.sort();
    let mut shards: [std::collections::HashMap<String, candle_core::Tensor>; 4] =
        Default::default();
    let (mut n_vis, mut n_text) = (0usize, 0usize);
    let mut map = serde_json::Map::new();
    for n in names {
        let i = if n.starts_with("model.visual.") {
            n_vis += 1;
            2 + n_vis % 2
        } else {
            n_text += 1;
            n_text % 2
        };
        shards[i].insert(n.clone(), all[n].clone());
        let file = [DECODER_SHARDS, VISION_SHARDS].concat()[i];
        map.insert(n.clone(), file.into());
    }
    for (i, file) in [DECODER_SHARDS, VISION_SHARDS].concat().iter().enumerate() {
        candle_core::safetensors::save(&shards[i], dir.join(file)).unwrap();
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": map});
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
}
