//! Mosaic behind HTTP: a thin axum server over `ranker::service::Service`.
//!
//! ```text
//! cargo run --release --example serve                    # the built-in catalogue, 127.0.0.1:7878
//! curl -s localhost:7878/v1/recommend -d '{"user": 7, "k": 5}'
//! curl -s localhost:7878/v1/events -d '{"events": [{"user": 7, "item": 42, "kind": "click", "time": 5000}]}'
//! curl -s localhost:7878/metrics
//! ```
//! With no saved state in `--data-dir` it trains on the recommend example's catalogue
//! (about 2 s) and saves it; a restart with the same directory serves the saved state
//! with every acknowledged event. docs/serving.md describes every endpoint.
//!
//! The server only routes: CPU work runs on two bounded worker pools (recommendations;
//! events) through `WorkPool::try_run`, never on the async runtime's threads; a full
//! queue or a passed deadline answers 503 at once. SIGTERM or Ctrl-C stops accepting,
//! drains the requests in flight, then syncs the log and checkpoints.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use clap::Parser;
use mosaic::embed_store::hnsw::HnswParams;
use mosaic::embed_store::{MmapDirectory, Store};
use mosaic::ranker::pipeline::{Attrs, PipelineOptions, build};
use mosaic::ranker::service::{Service, ServiceOptions, WorkPool};
use mosaic::ranker::{Error, Event, RecommendOptions, RequestOptions};
use mosaic::taste_graph::{InteractionKind, UserId};
use mosaic_testkit::catalogue::{Catalogue, CatalogueSpec, demo_lightgcn};
use serde::Deserialize;
use serde_json::{Value, json};

#[derive(Parser, Clone)]
#[command(about = "Mosaic's reference HTTP service")]
struct Args {
    /// Address to listen on (port 0: any free port, printed at start).
    #[arg(long, default_value = "127.0.0.1:7878")]
    addr: SocketAddr,
    /// Directory of the store, the saved state and the feedback log.
    #[arg(long, default_value = "target/mosaic-serve")]
    data_dir: PathBuf,
    /// Items of the built-in catalogue when nothing is saved yet (16 styles of equal
    /// size; the recommend example's is 4,000).
    #[arg(long, default_value_t = 4000)]
    catalogue_items: usize,
    /// Training epochs when nothing is saved yet.
    #[arg(long, default_value_t = 40)]
    epochs: usize,
    /// Worker threads for recommendations (default: the machine's cores).
    #[arg(long)]
    workers: Option<usize>,
    /// Requests waiting for a worker before the service answers 503.
    #[arg(long, default_value_t = 256)]
    queue: usize,
    /// Deadline of every request, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    deadline_ms: u64,
    /// Refit in the background after this many events (0: never).
    #[arg(long, default_value_t = 20_000)]
    refit_after_events: u64,
    /// Checkpoint after this many events.
    #[arg(long, default_value_t = 10_000)]
    checkpoint_after_events: u64,
}

/// What every handler shares: the service once it is up, the pools, the deadline.
struct App {
    service: OnceLock<Arc<Service>>,
    failed: OnceLock<String>,
    recommend_pool: WorkPool,
    events_pool: WorkPool,
    deadline: Duration,
    defaults: RecommendOptions,
}

/// A refused request: its status and a JSON body `{"error": ..., "recorded": ...}`.
struct Reject {
    status: StatusCode,
    message: String,
    /// For a batch stopped part way: the events recorded before the refused one.
    recorded: Option<usize>,
}

impl IntoResponse for Reject {
    fn into_response(self) -> Response {
        let body = match self.recorded {
            Some(n) => json!({ "error": self.message, "recorded": n }),
            None => json!({ "error": self.message }),
        };
        (self.status, axum::Json(body)).into_response()
    }
}

fn error(status: StatusCode, message: impl std::fmt::Display) -> Reject {
    Reject {
        status,
        message: message.to_string(),
        recorded: None,
    }
}

/// The status a library error answers with.
fn status_of(e: &Error) -> StatusCode {
    match e {
        Error::Config { .. } | Error::Unknown { .. } | Error::Batch { .. } => {
            StatusCode::BAD_REQUEST
        }
        Error::LiveItemCap { .. } => StatusCode::TOO_MANY_REQUESTS,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl App {
    fn service(&self) -> Result<Arc<Service>, Reject> {
        match self.service.get() {
            Some(s) => Ok(Arc::clone(s)),
            None => Err(error(
                StatusCode::SERVICE_UNAVAILABLE,
                self.failed.get().map_or("starting", |m| m.as_str()),
            )),
        }
    }

    /// Runs `work` on `pool` within the deadline; 503 at once when the queue is full,
    /// 503 when the deadline passes first (the job then does nothing if not started).
    async fn run<T: Send + 'static>(
        &self,
        pool: &WorkPool,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Reject> {
        let deadline = Instant::now() + self.deadline;
        let (tx, rx) = tokio::sync::oneshot::channel();
        pool.try_run(move || {
            if Instant::now() < deadline {
                let _ = tx.send(work());
            }
        })
        .map_err(|e| error(StatusCode::SERVICE_UNAVAILABLE, e))?;
        match tokio::time::timeout_at(deadline.into(), rx).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(_)) | Err(_) => Err(error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("deadline of {} ms passed", self.deadline.as_millis()),
            )),
        }
    }
}

/// Times a handler and records it under `endpoint`.
async fn timed(
    app: &App,
    endpoint: &'static str,
    answer: impl Future<Output = Response>,
) -> Response {
    let t = Instant::now();
    let r = answer.await;
    if let Some(s) = app.service.get() {
        s.requests
            .observe(endpoint, r.status().as_u16(), t.elapsed().as_secs_f64());
    }
    r
}

fn parse<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, Reject> {
    serde_json::from_slice(body).map_err(|e| error(StatusCode::BAD_REQUEST, e))
}

/// A user id from JSON: a non-negative integer below 2^32 (string ids: not yet).
fn user_of(v: Option<&Value>, at: &str) -> Result<UserId, Reject> {
    let bad = |m: String| error(StatusCode::BAD_REQUEST, format!("{at}: {m}"));
    match v {
        None => Err(bad("missing".into())),
        Some(Value::Number(n)) => n
            .as_u64()
            .and_then(|u| u32::try_from(u).ok())
            .map(UserId)
            .ok_or_else(|| bad(format!("{n} is not a user id (an integer in 0..2^32)"))),
        Some(Value::String(_)) => Err(bad(
            "string user ids are not supported yet: use the integer id".into(),
        )),
        Some(other) => Err(bad(format!("{other} is not a user id"))),
    }
}

async fn recommend(State(app): State<Arc<App>>, body: Bytes) -> Response {
    let work = async {
        let service = app.service()?;
        let mut fields: serde_json::Map<String, Value> = parse(&body)?;
        let user = user_of(fields.remove("user").as_ref(), "user")?;
        let req: RequestOptions = serde_json::from_value(Value::Object(fields))
            .map_err(|e| error(StatusCode::BAD_REQUEST, e))?;
        let opts = req
            .apply(app.defaults.clone())
            .map_err(|e| error(StatusCode::BAD_REQUEST, e))?;
        let answer = app
            .run(&app.recommend_pool, move || service.recommend(user, &opts))
            .await?;
        match answer {
            Ok(a) => Ok(axum::Json(a).into_response()),
            Err(e) => Err(error(status_of(&e), e)),
        }
    };
    timed(&app, "recommend", async {
        work.await.unwrap_or_else(IntoResponse::into_response)
    })
    .await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EventsBody {
    events: Vec<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WireEvent {
    user: Value,
    item: u64,
    kind: String,
    time: u64,
}

fn kind_of(s: &str) -> Option<InteractionKind> {
    Some(match s {
        "view" => InteractionKind::View,
        "click" => InteractionKind::Click,
        "save" => InteractionKind::Save,
        "hide" => InteractionKind::Hide,
        _ => return None,
    })
}

/// The whole batch checked before any of it is recorded.
fn events_of(body: &[u8]) -> Result<Vec<Event>, Reject> {
    let b: EventsBody = parse(body)?;
    b.events
        .into_iter()
        .enumerate()
        .map(|(k, v)| {
            let e: WireEvent = serde_json::from_value(v)
                .map_err(|e| error(StatusCode::BAD_REQUEST, format!("events[{k}]: {e}")))?;
            let kind = kind_of(&e.kind).ok_or_else(|| {
                error(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "events[{k}].kind: {:?} is not one of view, click, save, hide",
                        e.kind
                    ),
                )
            })?;
            Ok(Event {
                user: user_of(Some(&e.user), &format!("events[{k}].user"))?,
                item: e.item,
                kind,
                time: e.time,
            })
        })
        .collect()
}

async fn events(State(app): State<Arc<App>>, body: Bytes) -> Response {
    let work = async {
        let service = app.service()?;
        let events = events_of(&body)?;
        let n = events.len();
        match app
            .run(&app.events_pool, move || service.record(&events))
            .await?
        {
            Ok(()) => Ok(axum::Json(json!({ "recorded": n })).into_response()),
            Err(e @ Error::Batch { recorded, .. }) => Err(Reject {
                status: status_of(&e),
                message: e.to_string(),
                recorded: Some(recorded),
            }),
            Err(e) => Err(error(status_of(&e), e)),
        }
    };
    timed(&app, "events", async {
        work.await.unwrap_or_else(IntoResponse::into_response)
    })
    .await
}

async fn ready(State(app): State<Arc<App>>) -> Response {
    match app.service() {
        Ok(_) => (StatusCode::OK, "ready\n").into_response(),
        Err(r) => r.into_response(),
    }
}

async fn metrics(State(app): State<Arc<App>>) -> Response {
    match app.service() {
        Ok(s) => (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            s.render_metrics(),
        )
            .into_response(),
        Err(r) => r.into_response(),
    }
}

/// The service over `args.data_dir`: its saved state, or the catalogue trained now.
fn open_service(args: &Args) -> anyhow::Result<Arc<Service>> {
    let store_dir = args.data_dir.join("store");
    let store = Store::open(Arc::new(MmapDirectory::open(&store_dir)?))?;
    let base = CatalogueSpec::default();
    let spec = CatalogueSpec {
        items_per_style: (args.catalogue_items / base.styles).max(1),
        ..base
    };
    let options = ServiceOptions {
        pipeline: PipelineOptions {
            lightgcn: demo_lightgcn(spec.dim),
            epochs: args.epochs,
            generation: "catalogue".into(),
            hnsw: Some(HnswParams::default()),
            ..PipelineOptions::default()
        },
        refit_after_events: args.refit_after_events,
        checkpoint_after_events: args.checkpoint_after_events,
        ..ServiceOptions::default()
    };
    let t = Instant::now();
    let (service, opened) = Service::open(
        &args.data_dir.join("state"),
        store,
        options,
        |store, opts| {
            let cat = Catalogue::generate(spec).map_err(mosaic::ranker::Error::from)?;
            let (graph, _) = cat.split(0.75).map_err(mosaic::ranker::Error::from)?;
            let attrs = Attrs {
                values: &cat.style,
                n_attrs: 1,
            };
            Ok(build(&graph, None, Some(attrs), store, opts, |_, _| {})?.0)
        },
    )
    .context("opening the service")?;
    println!(
        "serving {:?} ({opened:?}) in {:.2} s",
        service.recommender().snapshot().generation(),
        t.elapsed().as_secs_f64()
    );
    Ok(service)
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let workers = args.workers.unwrap_or_else(|| {
        std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get)
    });
    let app = Arc::new(App {
        service: OnceLock::new(),
        failed: OnceLock::new(),
        recommend_pool: WorkPool::new("recommend", workers, args.queue)?,
        events_pool: WorkPool::new("events", 2, args.queue)?,
        deadline: Duration::from_millis(args.deadline_ms),
        defaults: RecommendOptions::new().k(10),
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(args.addr).await?;
        println!("listening on {}", listener.local_addr()?);
        // the state loads (or trains) off the runtime; /readyz answers 503 until then
        let loading = Arc::clone(&app);
        let opening = args.clone();
        std::thread::spawn(move || match open_service(&opening) {
            Ok(s) => {
                let _ = loading.service.set(s);
            }
            Err(e) => {
                eprintln!("the service failed to start: {e:#}");
                let _ = loading.failed.set(format!("failed to start: {e:#}"));
            }
        });
        let router = Router::new()
            .route("/v1/recommend", post(recommend))
            .route("/v1/events", post(events))
            .route("/healthz", get(|| async { "ok\n" }))
            .route("/readyz", get(ready))
            .route("/metrics", get(metrics))
            .with_state(Arc::clone(&app));
        axum::serve(listener, router)
            .with_graceful_shutdown(shutdown_signal())
            .await?;
        anyhow::Ok(())
    })?;
    // in-flight requests are drained: make every event durable and checkpoint
    if let Some(s) = app.service.get() {
        s.shutdown().context("syncing the log at shutdown")?;
        println!("shut down: log synced, state saved");
    }
    Ok(())
}
