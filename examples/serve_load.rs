//! Load on the reference service (examples/serve/): recommendations with events mixed
//! in (90/10 by default), at several connection counts, one line per level:
//!
//! ```text
//! cargo build --release --example serve --example serve_load
//! target/release/examples/serve_load                       # starts its own server on loopback
//! target/release/examples/serve_load --url http://127.0.0.1:7878 --conns 1,16,256 --seconds 10
//! ```
//! `--kills 20 --conns 16` instead kills the server 20 times under load and checks every
//! acknowledged event after each restart (`kill=... acked_total=... logged=... ready_s=...`).
//!
//! Output: `conns=256 load=closed rps=... p50_ms=... p99_ms=... events_p99_ms=... errors=0`
//! (exit status 1 when any request failed, a 503 included). Each
//! connection is one thread with a keep-alive connection sending requests back to back.
//! Bounded: every level stops after `--seconds` or `--requests`, whichever comes first;
//! loopback only (a `--url` off this machine is refused).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use clap::Parser;
use mosaic_testkit::catalogue::Rng;
use serde_json::json;

#[derive(Parser)]
#[command(about = "Throughput and latency of the reference service under concurrent load")]
struct Args {
    /// The server (loopback only); without it a server is started on a free port over a
    /// fresh directory.
    #[arg(long)]
    url: Option<String>,
    /// Items of the catalogue of a server started here (`serve --catalogue-items`).
    #[arg(long, default_value_t = 4000)]
    catalogue_items: usize,
    /// Offered load in requests/s over all connections (open loop: each connection sends
    /// on a fixed schedule and latency counts from the scheduled time, so a slow answer
    /// is not hidden by the requests it delayed); without it each connection sends back
    /// to back (closed loop: the service's throughput).
    #[arg(long)]
    rate: Option<f64>,
    /// Instead of the levels: kill the server (SIGKILL) this many times while the first
    /// `--conns` connections send the mix, restart it each time and check that every
    /// acknowledged event is in its log.
    #[arg(long)]
    kills: Option<usize>,
    /// Concurrent connections per level, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,16,256")]
    conns: Vec<usize>,
    /// Seconds per level (at most).
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Requests per level (at most).
    #[arg(long, default_value_t = 200_000)]
    requests: u64,
    /// Share of requests that post an event instead of asking for recommendations.
    #[arg(long, default_value_t = 0.1)]
    events: f64,
    /// Results per recommendation.
    #[arg(long, default_value_t = 10)]
    k: usize,
    /// Users to draw from (the catalogue has 1,000).
    #[arg(long, default_value_t = 1000)]
    users: u64,
    /// Items to draw events from (the catalogue has 4,000).
    #[arg(long, default_value_t = 4000)]
    items: u64,
}

/// A server this process started (the `serve` example built beside this binary): killed
/// when dropped.
struct Server {
    child: Child,
    url: String,
    /// The lines it prints after "listening on".
    lines: mpsc::Receiver<String>,
}

impl Server {
    /// Starts a server on a free loopback port over `dir`.
    fn start(dir: &Path, catalogue_items: usize) -> anyhow::Result<Server> {
        let bin: PathBuf = std::env::current_exe()?.with_file_name("serve");
        ensure!(
            bin.exists(),
            "{} is missing: cargo build --release --example serve",
            bin.display()
        );
        let mut child = Command::new(&bin)
            .args(["--addr", "127.0.0.1:0", "--refit-after-events", "0"])
            .arg("--data-dir")
            .arg(dir)
            .arg("--catalogue-items")
            .arg(catalogue_items.to_string())
            .stdout(Stdio::piped())
            .spawn()?;
        let mut out = std::io::BufRead::lines(std::io::BufReader::new(
            child.stdout.take().context("server stdout")?,
        ));
        let first = out.next().context("server exited")??;
        let addr = first
            .strip_prefix("listening on ")
            .with_context(|| format!("unexpected server output {first:?}"))?
            .to_string();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in out.map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Ok(Server {
            child,
            url: format!("http://{addr}"),
            lines,
        })
    }

    /// The "serving ... (how it opened) in ... s" line (waits for the state to load).
    fn opened(&self) -> anyhow::Result<String> {
        loop {
            let line = self
                .lines
                .recv_timeout(Duration::from_secs(300))
                .context("the server printed no 'serving' line")?;
            if line.starts_with("serving") {
                return Ok(line);
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_ready(url: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    while ureq::get(&format!("{url}/readyz")).call().is_err() {
        ensure!(
            Instant::now() < deadline,
            "{url} not ready within 2 minutes"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// One simulated client: a keep-alive connection sending the request mix.
struct Client {
    agent: ureq::Agent,
    url: String,
    rng: Rng,
    /// Users and items drawn from, the share of events, results per recommendation.
    users: usize,
    items: usize,
    share: f64,
    k: usize,
}

impl Client {
    fn new(args: &Args, url: &str, seed: u64) -> Client {
        Client {
            agent: ureq::AgentBuilder::new()
                .timeout(Duration::from_secs(30))
                .build(),
            url: url.to_string(),
            rng: Rng::new(seed),
            users: args.users as usize,
            items: args.items as usize,
            share: args.events,
            k: args.k,
        }
    }

    /// Draws the next request of the mix (an event at `time`, or a recommendation) and
    /// sends it; returns whether it was an event and whether it was answered 200.
    fn send_next(&mut self, time: u64) -> (bool, bool) {
        let user = self.rng.below(self.users);
        let is_event = (self.rng.unit() as f64) < self.share;
        let (path, body) = if is_event {
            let e = json!({"user": user, "item": self.rng.below(self.items),
                           "kind": "click", "time": time});
            ("events", json!({ "events": [e] }))
        } else {
            ("recommend", json!({"user": user, "k": self.k}))
        };
        let r = self
            .agent
            .post(&format!("{}/v1/{path}", self.url))
            .set("content-type", "application/json")
            .send_string(&body.to_string());
        let ok = match r {
            Ok(resp) if resp.status() == 200 => {
                let _ = resp.into_string();
                true
            }
            _ => false,
        };
        (is_event, ok)
    }
}

/// What one connection saw.
#[derive(Default)]
struct Tally {
    recommend_ms: Vec<f64>,
    events_ms: Vec<f64>,
    errors: u64,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// One level: `conns` connections sending requests back to back until the time or the
/// request budget is spent.
fn level(args: &Args, url: &str, conns: usize, time0: u64) -> anyhow::Result<u64> {
    let budget = Arc::new(AtomicU64::new(args.requests));
    let stop_at = Instant::now() + Duration::from_secs_f64(args.seconds);
    let started = Instant::now();
    let workers: Vec<_> = (0..conns)
        .map(|c| {
            let budget = Arc::clone(&budget);
            let mut client = Client::new(args, url, c as u64 * 7919 + time0);
            // open loop: this connection's k-th request is due at `k * period`
            let period = args
                .rate
                .map(|r| Duration::from_secs_f64(conns as f64 / r.max(1e-3)));
            std::thread::spawn(move || {
                let mut t = Tally::default();
                let mut n = 0u64;
                while Instant::now() < stop_at
                    && budget
                        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| b.checked_sub(1))
                        .is_ok()
                {
                    let t0 = match period {
                        Some(p) => {
                            let due =
                                started + p.mul_f64(n as f64) + p.mul_f64(c as f64 / conns as f64);
                            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                                std::thread::sleep(wait);
                            }
                            due
                        }
                        None => Instant::now(),
                    };
                    let (is_event, ok) = client.send_next(time0 + n);
                    let ms = t0.elapsed().as_secs_f64() * 1e3;
                    match (ok, is_event) {
                        (true, true) => t.events_ms.push(ms),
                        (true, false) => t.recommend_ms.push(ms),
                        (false, _) => t.errors += 1,
                    }
                    n += 1;
                }
                t
            })
        })
        .collect();
    let mut all = Tally::default();
    for w in workers {
        let t = w
            .join()
            .map_err(|_| anyhow::anyhow!("a load thread panicked"))?;
        all.recommend_ms.extend(t.recommend_ms);
        all.events_ms.extend(t.events_ms);
        all.errors += t.errors;
    }
    let secs = started.elapsed().as_secs_f64();
    all.recommend_ms.sort_by(f64::total_cmp);
    all.events_ms.sort_by(f64::total_cmp);
    let total = all.recommend_ms.len() + all.events_ms.len() + all.errors as usize;
    let mode = args
        .rate
        .map_or("closed".to_string(), |r| format!("open:{r:.0}"));
    println!(
        "conns={conns} load={mode} rps={:.0} p50_ms={:.2} p99_ms={:.2} events_p50_ms={:.2} events_p99_ms={:.2} requests={total} errors={} seconds={secs:.1}",
        total as f64 / secs,
        percentile(&all.recommend_ms, 0.5),
        percentile(&all.recommend_ms, 0.99),
        percentile(&all.events_ms, 0.5),
        percentile(&all.events_ms, 0.99),
        all.errors,
    );
    Ok(all.errors)
}

/// `(saved_seq, replayed)` of a "serving ... (Restored { saved_seq: .., replayed: .. })"
/// line; `(0, 0)` for a fresh build.
fn logged_of(opened: &str) -> anyhow::Result<u64> {
    if opened.contains("(Built)") {
        return Ok(0);
    }
    let num = |key: &str| -> anyhow::Result<u64> {
        let at = opened
            .find(key)
            .with_context(|| format!("no {key} in {opened:?}"))?;
        Ok(opened[at + key.len()..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect::<String>()
            .parse()?)
    };
    Ok(num("saved_seq: ")? + num("replayed: ")?)
}

/// Kills the server `kills` times while `conns` connections send the request mix, and
/// restarts it: after each restart its log must hold every event a client saw
/// acknowledged, plus at most one in flight per connection.
fn kill_rounds(args: &Args, kills: usize, conns: usize) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut server = Server::start(dir.path(), args.catalogue_items)?;
    server.opened()?;
    wait_ready(&server.url)?;
    let mut acked_total = 0u64;
    let mut rng = Rng::new(17);
    let mut ready = Vec::new();
    for round in 0..kills {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(AtomicU64::new(0));
        let workers: Vec<_> = (0..conns)
            .map(|c| {
                let (stop, acked) = (Arc::clone(&stop), Arc::clone(&acked));
                let mut client = Client::new(args, &server.url, (round * 1000 + c) as u64);
                std::thread::spawn(move || {
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        match client.send_next(1_000_000 * (round as u64 + 1) + n) {
                            (true, true) => {
                                acked.fetch_add(1, Ordering::Relaxed);
                            }
                            (false, true) => {}
                            (_, false) => return, // the server is gone
                        }
                        n += 1;
                    }
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(300 + rng.below(1200) as u64));
        drop(server); // SIGKILL
        stop.store(true, Ordering::Relaxed);
        for w in workers {
            w.join()
                .map_err(|_| anyhow::anyhow!("a load thread panicked"))?;
        }
        let acked_round = acked.load(Ordering::Relaxed);
        acked_total += acked_round;
        let t = Instant::now();
        server = Server::start(dir.path(), args.catalogue_items)?;
        let opened = server.opened()?;
        wait_ready(&server.url)?;
        let ready_s = t.elapsed().as_secs_f64();
        ready.push(ready_s);
        let logged = logged_of(&opened)?;
        println!(
            "kill={} acked_this_round={acked_round} acked_total={acked_total} logged={logged} ready_s={ready_s:.2}",
            round + 1
        );
        ensure!(
            logged >= acked_total && logged <= acked_total + conns as u64,
            "kill {}: the restarted log holds {logged} events, {acked_total} were acknowledged",
            round + 1
        );
        acked_total = logged;
    }
    ready.sort_by(f64::total_cmp);
    println!(
        "kills={kills} conns={conns} events_acknowledged={acked_total} lost=0 ready_s_max={:.2}",
        ready.last().copied().unwrap_or(0.0)
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(kills) = args.kills {
        ensure!(
            args.url.is_none(),
            "--kills starts its own server: drop --url"
        );
        let conns = args.conns.first().copied().unwrap_or(16);
        return kill_rounds(&args, kills, conns);
    }
    let dir = tempfile::tempdir()?;
    let (url, _server) = match &args.url {
        Some(u) => {
            let host = u
                .strip_prefix("http://")
                .and_then(|r| r.split([':', '/']).next())
                .unwrap_or("");
            if !(host == "localhost" || host.starts_with("127.") || host == "[::1]") {
                bail!("{u}: the load generator targets loopback addresses only");
            }
            (u.clone(), None)
        }
        None => {
            let s = Server::start(dir.path(), args.catalogue_items)?;
            s.opened()?;
            (s.url.clone(), Some(s))
        }
    };
    wait_ready(&url)?;
    println!(
        "load on {url}: {:.0}% events, k = {}, at most {} s or {} requests per level",
        100.0 * args.events,
        args.k,
        args.seconds,
        args.requests
    );
    let mut errors = 0;
    for (i, &c) in args.conns.iter().enumerate() {
        ensure!(c > 0 && c <= 4096, "--conns {c}: expected 1..=4096");
        errors += level(&args, &url, c, 1_000_000 * (i as u64 + 1))?;
    }
    // every answer but a 200 counts, a declared overload (503) too
    ensure!(errors == 0, "{errors} requests failed");
    Ok(())
}
