//! The reference HTTP service (examples/serve/) as a client sees it, on loopback: each
//! endpoint answers, bad input gets a 4xx naming what is wrong, and a server killed
//! with SIGKILL while events arrive comes back with every event it acknowledged.
//!
//! The server is the example binary `cargo test` builds beside this test
//! (`target/<profile>/examples/serve`).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// The example binary built with this test.
fn server_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    let bin = dir.join("examples").join("serve");
    assert!(
        bin.exists(),
        "{} is missing: `cargo test` builds it (or `cargo build --example serve`)",
        bin.display()
    );
    bin
}

/// A running server and the first lines it printed.
struct Server {
    child: Child,
    url: String,
    /// The "serving ..." line.
    opened: String,
    /// The lines between "listening on" and it (e.g. "redis: ...").
    before: Vec<String>,
}

impl Server {
    /// Starts the server on a free loopback port over `data`, and waits until it is
    /// ready (at most a minute).
    fn start(data: &Path) -> Server {
        Self::start_with(data, &[])
    }

    /// [`Server::start`] with more flags.
    fn start_with(data: &Path, flags: &[&str]) -> Server {
        let mut child = Command::new(server_binary())
            .args(["--addr", "127.0.0.1:0", "--epochs", "5", "--data-dir"])
            .arg(data)
            .args(flags)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = lines.next().unwrap().unwrap();
        let addr = first
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {first:?}"))
            .to_string();
        let mut before = Vec::new();
        let opened = loop {
            let line = lines
                .next()
                .expect("the server exited before serving")
                .unwrap();
            if line.starts_with("serving ") {
                break line;
            }
            before.push(line);
        };
        // keep draining its output so that it never blocks on a full pipe
        std::thread::spawn(move || for _ in lines {});
        let url = format!("http://{addr}");
        let deadline = Instant::now() + Duration::from_secs(60);
        while get(&format!("{url}/readyz")).0 != 200 {
            assert!(Instant::now() < deadline, "not ready within a minute");
            std::thread::sleep(Duration::from_millis(50));
        }
        Server {
            child,
            url,
            opened,
            before,
        }
    }

    fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn answer(r: Result<ureq::Response, ureq::Error>) -> (u16, String) {
    match r {
        Ok(r) => (r.status(), r.into_string().unwrap()),
        Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap()),
        Err(e) => (0, e.to_string()),
    }
}

fn get(url: &str) -> (u16, String) {
    answer(ureq::get(url).timeout(Duration::from_secs(5)).call())
}

fn post(url: &str, body: &str) -> (u16, String) {
    answer(
        ureq::post(url)
            .timeout(Duration::from_secs(10))
            .set("content-type", "application/json")
            .send_string(body),
    )
}

fn put(url: &str, body: &str) -> (u16, String) {
    answer(
        ureq::put(url)
            .timeout(Duration::from_secs(10))
            .set("content-type", "application/json")
            .send_string(body),
    )
}

fn json_of(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

/// `(saved_seq, replayed)` from the server's "serving ... (Restored { ... })" line.
fn restored(opened: &str) -> (u64, u64) {
    let num = |key: &str| -> u64 {
        let at = opened
            .find(key)
            .unwrap_or_else(|| panic!("no {key} in {opened:?}"));
        opened[at + key.len()..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect::<String>()
            .parse()
            .unwrap()
    };
    (num("saved_seq: "), num("replayed: "))
}

#[test]
fn every_endpoint_answers_and_bad_input_is_a_4xx_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    assert!(s.opened.contains("Built"), "{}", s.opened);
    let u = &s.url;
    assert_eq!(get(&format!("{u}/healthz")).0, 200);

    let r = ureq::post(&format!("{u}/v1/recommend"))
        .set("x-request-id", "trace-me-7")
        .send_string(r#"{"user": 3, "k": 4}"#)
        .unwrap();
    assert_eq!(
        r.header("x-request-id"),
        Some("trace-me-7"),
        "the request id is echoed"
    );
    let (code, body) = (r.status(), r.into_string().unwrap());
    assert_eq!(code, 200, "{body}");
    let a = json_of(&body);
    assert_eq!(a["items"].as_array().unwrap().len(), 4);
    assert_eq!(a["cold_start"], false);
    assert_eq!(a["generation"], "catalogue");
    assert!(a["items"][0]["parts"]["taste"].is_number());
    assert!(a["items"][0]["source"]["kind"].is_string());

    let events = json!({"events": [
        {"user": 3, "item": 17, "kind": "click", "time": 9000},
        {"user": 3, "item": 18, "kind": "save", "time": 9001},
        {"user": 4, "item": 17, "kind": "hide", "time": 9002},
    ]});
    let (code, body) = post(&format!("{u}/v1/events"), &events.to_string());
    assert_eq!(
        (code, json_of(&body)["recorded"].as_u64()),
        (200, Some(3)),
        "{body}"
    );
    // users and items named by strings
    let named = json!({"events": [
        {"user": "alice", "item": 17, "kind": "save", "time": 9003},
        {"user": "alice", "item": "sku-9", "kind": "click", "time": 9004},
    ]});
    let (code, body) = post(&format!("{u}/v1/events"), &named.to_string());
    assert_eq!(code, 200, "{body}");
    let (code, body) = post(&format!("{u}/v1/recommend"), r#"{"user": "alice", "k": 3}"#);
    assert_eq!(code, 200, "{body}");
    assert_eq!(json_of(&body)["cold_start"], false, "{body}");

    // a new item: the newest row once the index is refreshed, so in the cold-start
    // list's fresh slot (every fourth)
    let dim = mosaic_testkit::catalogue::CatalogueSpec::default().dim;
    let item = json!({"items": [{"item": 777_777, "vector": vec![0.25; dim], "attrs": [2]}]});
    let (code, body) = put(&format!("{u}/v1/items"), &item.to_string());
    assert_eq!(code, 200, "{body}");
    assert_eq!(json_of(&body)["items"], 1);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !get(&format!("{u}/metrics"))
        .1
        .lines()
        .any(|l| l == "mosaic_index_refreshes_total 1")
    {
        assert!(Instant::now() < deadline, "no index refresh");
        std::thread::sleep(Duration::from_millis(20));
    }

    // the surgered model's log-odds, in the candidates' order (the context: the
    // user's interests)
    let (code, body) = post(
        &format!("{u}/v1/rescore"),
        r#"{"user": 3, "candidates": [17, 250, 3001]}"#,
    );
    assert_eq!(code, 200, "{body}");
    let scores = json_of(&body)["scores"].as_array().unwrap().clone();
    let items: Vec<u64> = scores.iter().map(|s| s["item"].as_u64().unwrap()).collect();
    assert_eq!(items, [17, 250, 3001]);
    assert!(scores.iter().all(|s| s["log_odds"].is_number()), "{body}");

    let (code, body) = post(&format!("{u}/v1/recommend"), r#"{"user": 123456, "k": 5}"#);
    assert_eq!(code, 200, "{body}");
    let cold = json_of(&body);
    assert_eq!(cold["cold_start"], true);
    assert_eq!(cold["items"][3]["item"], 777_777, "{cold}");

    for (path, body, names) in [
        ("recommend", r#"{"user": 3, "k": 0}"#, "k = 0"),
        ("recommend", r#"{"user": 3, "k": 50000}"#, "k = 50000"),
        ("recommend", r#"{"user": 3, "lamda": 0.5}"#, "lamda"),
        ("recommend", r#"{"user": 1.5}"#, "1.5 is not a user id"),
        (
            "recommend",
            r#"{"user": 9223372036854775808}"#,
            "past the integer ids",
        ),
        ("recommend", r#"{"user": -1}"#, "user"),
        ("recommend", r#"{"k": 3}"#, "user: missing"),
        ("recommend", r#"{"user": 3, "#, "EOF"),
        (
            "events",
            r#"{"events": [{"user": 3, "item": 1, "kind": "like", "time": 1}]}"#,
            "events[0].kind",
        ),
        (
            "events",
            r#"{"events": [{"user": 3, "item": 1, "kind": "click"}]}"#,
            "events[0]: missing field `time`",
        ),
        (
            "events",
            r#"{"events": [{"user": 3, "item": -4, "kind": "click", "time": 1}]}"#,
            "events[0]",
        ),
        ("events", r#"{"evnts": []}"#, "evnts"),
        (
            "items",
            r#"{"items": [{"item": 5, "vector": [1.0], "attrs": [0]}]}"#,
            "items[0].vector: 1 values",
        ),
        (
            "items",
            r#"{"items": [{"item": 5, "vectr": []}]}"#,
            "items[0]: unknown field `vectr`",
        ),
        (
            "items",
            r#"{"items": [{"item": 5, "vector": [1e39]}]}"#,
            "items[0]",
        ),
    ] {
        let (code, answer) = if path == "items" {
            put(&format!("{u}/v1/{path}"), body)
        } else {
            post(&format!("{u}/v1/{path}"), body)
        };
        assert_eq!(code, 400, "{body}: {answer}");
        let e = json_of(&answer);
        let msg = e["error"].as_str().unwrap();
        assert!(msg.contains(names), "{body}: {msg}");
    }
    // a rejected batch recorded nothing
    let (_, metrics) = get(&format!("{u}/metrics"));
    assert!(
        metrics
            .lines()
            .any(|l| l == "mosaic_items_upserted_total 1"),
        "{metrics}"
    );
    assert!(
        metrics.lines().any(|l| l == "mosaic_events_total 5"),
        "{metrics}"
    );
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("mosaic_request_seconds_count{endpoint=\"recommend\"}")),
        "{metrics}"
    );
}

/// Three SIGKILLs while a client posts batches: each restart's log holds every batch
/// the client saw acknowledged (and at most the one in flight).
#[test]
fn a_killed_server_keeps_every_acknowledged_event() {
    let dir = tempfile::tempdir().unwrap();
    let mut acked_total = 0u64;
    let mut server = Server::start(dir.path());
    for round in 0..3u64 {
        let url = server.url.clone();
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(AtomicU64::new(0));
        let client = {
            let (stop, acked) = (Arc::clone(&stop), Arc::clone(&acked));
            std::thread::spawn(move || {
                let mut k = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let batch: Vec<Value> = (0..5)
                        .map(|j| {
                            json!({"user": (k * 5 + j) % 1000, "item": (k * 37 + j) % 4000,
                                   "kind": "click", "time": 20_000 + round * 100_000 + k})
                        })
                        .collect();
                    let (code, _) = post(
                        &format!("{url}/v1/events"),
                        &json!({"events": batch}).to_string(),
                    );
                    if code == 200 {
                        acked.fetch_add(5, Ordering::Relaxed);
                    } else {
                        return; // the server is gone
                    }
                    k += 1;
                }
            })
        };
        std::thread::sleep(Duration::from_millis(300 + 200 * round));
        server.kill();
        stop.store(true, Ordering::Relaxed);
        client.join().unwrap();
        acked_total += acked.load(Ordering::Relaxed);
        server = Server::start(dir.path());
        let (saved, replayed) = restored(&server.opened);
        let logged = saved + replayed;
        assert!(
            logged >= acked_total && logged <= acked_total + 5,
            "round {round}: {logged} events logged, {acked_total} acknowledged"
        );
        acked_total = logged;
        assert!(
            acked.load(Ordering::Relaxed) > 0,
            "round {round}: nothing was posted"
        );
    }
}

/// Settings from a TOML file, flags over it; an unknown key is an error naming it.
#[test]
fn a_config_file_sets_what_flags_do_and_refuses_unknown_keys() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "epochs = 3\nrefit_every = 10\n").unwrap();
    let out = Command::new(server_binary())
        .arg("--config")
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown field `refit_every`"), "{err}");

    let good = dir.path().join("serve.toml");
    let data = dir.path().join("data");
    std::fs::write(
        &good,
        format!(
            "addr = \"127.0.0.1:9\"\nepochs = 2\nlog_format = \"json\"\ndata_dir = {:?}\n",
            data.to_str().unwrap()
        ),
    )
    .unwrap();
    // the flag overrides the file's address (port 9 would not be ours to bind)
    let mut child = Command::new(server_binary())
        .args(["--addr", "127.0.0.1:0", "--config"])
        .arg(&good)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    assert!(first.starts_with("listening on 127.0.0.1:"), "{first}");
    let opened = lines.next().unwrap().unwrap();
    assert!(opened.contains("Built"), "{opened}");
    child.kill().unwrap();
    child.wait().unwrap();
    let mut log = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut log).unwrap();
    let first_log = log.lines().next().unwrap_or_default();
    assert!(
        serde_json::from_str::<Value>(first_log).is_ok(),
        "log lines are JSON: {first_log:?}"
    );
    assert!(data.join("state").exists(), "the file's data_dir is used");
}

/// Back-pressure: one worker behind a queue of one, 64 requests at once: the ones that
/// find the queue full get a 503 at once, the rest a 200; nothing else, nothing hangs.
#[test]
fn an_overloaded_server_answers_503_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start_with(dir.path(), &["--workers", "1", "--queue", "1"]);
    let url = format!("{}/v1/recommend", s.url);
    let gate = Arc::new(std::sync::Barrier::new(64));
    let clients: Vec<_> = (0..64)
        .map(|u| {
            let (url, gate) = (url.clone(), Arc::clone(&gate));
            std::thread::spawn(move || {
                gate.wait();
                let t = Instant::now();
                let (code, body) = post(&url, &format!(r#"{{"user": {u}, "k": 500}}"#));
                (code, body, t.elapsed())
            })
        })
        .collect();
    let answers: Vec<_> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    let ok = answers.iter().filter(|a| a.0 == 200).count();
    let busy: Vec<_> = answers.iter().filter(|a| a.0 == 503).collect();
    assert_eq!(ok + busy.len(), 64, "only 200 and 503: {answers:?}");
    assert!(ok >= 1, "some requests are served");
    assert!(
        !busy.is_empty(),
        "64 requests at once overflow a queue of one"
    );
    for (_, body, took) in &busy {
        assert!(
            json_of(body)["error"]
                .as_str()
                .unwrap()
                .contains("queue is full"),
            "{body}"
        );
        assert!(
            *took < Duration::from_secs(2),
            "a 503 answers at once, took {took:?}"
        );
    }
    let (_, metrics) = get(&format!("{}/metrics", s.url));
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("mosaic_requests_total{endpoint=\"recommend\",status=\"503\"}")),
        "{metrics}"
    );
}

/// Two servers over one Redis Cluster (three masters with a replica each) serve the
/// same items (B takes A's upserts at start and by following the cluster); then a master is killed while a client upserts items and asks for
/// recommendations: every answer comes within the deadline, recommendations never fail,
/// an upsert the cluster cannot take is a 503, upserts succeed again once the replica
/// took over (and after the old master is back), and every upsert answered 200 is in
/// the cluster.
#[test]
fn servers_share_items_through_redis_and_a_killed_master_fails_fast() {
    use mosaic::embed_store::redis_cluster::RedisClusterStore;
    use mosaic::embed_store::{ItemId, VectorStore};
    use mosaic_testkit::redis::{Security, start_cluster_with};

    let mut cluster = start_cluster_with(&Security::default(), 1, 1000);
    let urls = cluster.urls().join(",");
    let flags = [
        "--redis",
        &urls,
        "--redis-timeout-ms",
        "300",
        "--deadline-ms",
        "3000",
        "--redis-follow-ms",
        "200",
    ];
    let dim = mosaic_testkit::catalogue::CatalogueSpec::default().dim;
    let item =
        move |id: u64| json!({"items": [{"item": id, "vector": vec![0.1; dim], "attrs": [1]}]});

    let dir_a = tempfile::tempdir().unwrap();
    let a = Server::start_with(dir_a.path(), &flags);
    assert!(
        a.before.iter().any(|l| l.contains("Published")),
        "{:?}",
        a.before
    );
    let (code, body) = put(&format!("{}/v1/items", a.url), &item(800_001).to_string());
    assert_eq!(code, 200, "{body}");
    // a second server on the cluster takes the item A upserted
    let dir_b = tempfile::tempdir().unwrap();
    let b = Server::start_with(dir_b.path(), &flags);
    assert!(
        b.before
            .iter()
            .any(|l| l.contains("Followed { pulled: 1, pushed: 0 }")),
        "{:?}",
        b.before
    );
    // B serves it (the newest row: a cold-start fresh slot), and, following the
    // cluster, the one A upserts next
    let fresh_on_b = |want: u64| {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (_, body) = post(
                &format!("{}/v1/recommend", b.url),
                r#"{"user": "nobody", "k": 4}"#,
            );
            if json_of(&body)["items"][3]["item"] == want {
                break;
            }
            assert!(Instant::now() < deadline, "B never served {want}: {body}");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    fresh_on_b(800_001);
    let (code, body) = put(&format!("{}/v1/items", a.url), &item(800_002).to_string());
    assert_eq!(code, 200, "{body}");
    fresh_on_b(800_002);
    drop(b);

    // load on A; a master killed a second in, back four seconds later
    let stop = Arc::new(AtomicBool::new(false));
    let url = a.url.clone();
    let s = Arc::clone(&stop);
    let reader = std::thread::spawn(move || {
        let mut worst = Duration::ZERO;
        let mut answered = 0;
        while !s.load(Ordering::Relaxed) {
            let t = Instant::now();
            let (code, body) = post(&format!("{url}/v1/recommend"), r#"{"user": 3, "k": 5}"#);
            assert_eq!(code, 200, "a recommendation failed: {body}");
            worst = worst.max(t.elapsed());
            answered += 1;
        }
        (answered, worst)
    });
    let url = a.url.clone();
    let s = Arc::clone(&stop);
    let writer = std::thread::spawn(move || {
        let mut log: Vec<(u64, u16, Duration, Instant)> = Vec::new();
        let mut id = 900_000;
        while !s.load(Ordering::Relaxed) {
            let t = Instant::now();
            let (code, body) = put(&format!("{url}/v1/items"), &item(id).to_string());
            assert!(code == 200 || code == 503, "upsert {id}: {code} {body}");
            log.push((id, code, t.elapsed(), t));
            id += 1;
            std::thread::sleep(Duration::from_millis(20));
        }
        log
    });
    std::thread::sleep(Duration::from_secs(1));
    let victim = cluster.masters(cluster.ports[0])[0];
    let witness = cluster
        .ports
        .iter()
        .copied()
        .find(|&p| p != victim)
        .unwrap();
    let killed_at = Instant::now();
    cluster.kill(victim);
    // the replica takes over (node timeout 1 s, then an election)
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let masters = cluster.masters(witness);
        if masters.len() == 3 && !masters.contains(&victim) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no failover within 30 s: {}",
            cluster.cli(witness, &["cluster", "nodes"])
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let failed_over = killed_at.elapsed();
    std::thread::sleep(Duration::from_secs(1));
    // the old master comes back: it rejoins as a replica of the new one
    cluster.restart(victim);
    cluster.wait_ok(victim, 3, Duration::from_secs(30));
    let back = Instant::now();
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    let (answered, worst_read) = reader.join().unwrap();
    let log = writer.join().unwrap();

    assert!(answered > 0);
    assert!(
        worst_read < Duration::from_secs(3),
        "a recommendation took {worst_read:?}"
    );
    let worst_write = log.iter().map(|l| l.2).max().unwrap();
    assert!(
        worst_write < Duration::from_secs(4),
        "an upsert took {worst_write:?}"
    );
    let failed = log.iter().filter(|l| l.1 == 503).count();
    let acked: Vec<u64> = log.iter().filter(|l| l.1 == 200).map(|l| l.0).collect();
    // recovered: every upsert after the old master is back went through
    let tail: Vec<_> = log.iter().filter(|l| l.3 > back).collect();
    assert!(
        !tail.is_empty() && tail.iter().all(|l| l.1 == 200),
        "{tail:?}"
    );
    eprintln!(
        "failover after {failed_over:?}; {} upserts: {} acknowledged, {failed} refused with 503 \
         while the slots were down; {answered} recommendations, slowest {worst_read:?}; \
         slowest upsert {worst_write:?}",
        log.len(),
        acked.len()
    );
    let seeds = cluster.urls();
    let seeds: Vec<&str> = seeds.iter().map(String::as_str).collect();
    let redis = RedisClusterStore::connect(&seeds, "mosaic").unwrap();
    let held: std::collections::HashSet<ItemId> =
        redis.ids("catalogue").unwrap().into_iter().collect();
    for id in &acked {
        assert!(
            held.contains(&ItemId(*id)),
            "acknowledged upsert {id} is not in the cluster"
        );
    }
}
