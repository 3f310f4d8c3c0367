//! Mosaic behind HTTP: a thin axum server over `ranker::service::Service`.
//!
//! ```text
//! cargo run --release --example serve                    # the built-in catalogue, 127.0.0.1:7878
//! curl -s localhost:7878/v1/recommend -d '{"user": 7, "k": 5}'
//! curl -s localhost:7878/v1/events -d '{"events": [{"user": 7, "item": 42, "kind": "click", "time": 5000}]}'
//! curl -s localhost:7878/v1/rescore -d '{"user": 7, "candidates": [12, 900, 3051]}'
//! curl -s -X PUT localhost:7878/v1/items -d '{"items": [{"item": 90001, "vector": [0.1, ...], "attrs": [3]}]}'
//! curl -s localhost:7878/metrics
//! ```
//! With no saved state in `--data-dir` it trains on the recommend example's catalogue
//! (about 2 s) and saves it; a restart with the same directory serves the saved state
//! with every acknowledged event. docs/serving.md describes every endpoint.
//!
//! Settings: flags, or a TOML file (`--config serve.toml`, keys as the flags with `_`),
//! listed by `--help` and in docs/serving.md; logs: `tracing` to stderr (`RUST_LOG`,
//! `--log-format json`), a span per request with its id (`x-request-id`).
//!
//! The server only routes: CPU work runs on bounded worker pools (recommendations;
//! events; item upserts) through `WorkPool::try_run`, never on the async runtime's threads; a full
//! queue or a passed deadline answers 503 at once. SIGTERM or Ctrl-C stops accepting,
//! drains the requests in flight, then syncs the log and checkpoints.

mod http;
#[path = "../common/model_args.rs"]
#[allow(dead_code)] // the service takes --rescore-* flags, not ModelArgs
mod model_args;
mod settings;
#[path = "../common/tiny.rs"]
mod tiny;

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use mosaic::embed_store::hnsw::HnswParams;
use mosaic::embed_store::redis_cluster::{RedisClusterStore, RedisConfig};
use mosaic::embed_store::{MmapDirectory, Store};
use mosaic::ranker::RecommendOptions;
use mosaic::ranker::pipeline::{Attrs, PipelineOptions, build};
use mosaic::ranker::rescore::batch::BatchOptions;
use mosaic::ranker::rescore::{RescoreOptions, Rescorer};
use mosaic::ranker::service::{Service, ServiceOptions, WorkPool};
use mosaic::vision_surgery::{DeviceSpec, LoadOptions};
use mosaic_testkit::catalogue::{Catalogue, CatalogueSpec, demo_lightgcn};

use http::App;
use settings::{Cli, LogFormat, Settings};

/// The service over `args.data_dir`: its saved state, or the catalogue trained now;
/// the surgered model attached for /v1/rescore.
fn open_service(args: &Settings) -> anyhow::Result<Arc<Service>> {
    let store_dir = args.data_dir.join("store");
    let store = Store::open(Arc::new(MmapDirectory::open(&store_dir)?))?;
    let base = CatalogueSpec::default();
    let spec = CatalogueSpec {
        items_per_style: (args.catalogue_items / base.styles).max(1),
        ..base
    };
    // the content embeddings the adapter reads, written once beside the model's
    let mut catalogue = None;
    if !store.generations().iter().any(|g| g == CONTENT) {
        let cat = Catalogue::generate(spec)?;
        tiny::write_content(&store, &cat, CONTENT)?;
        catalogue = Some(cat);
    }
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
        follow_interval: (args.redis_follow_ms > 0)
            .then(|| Duration::from_millis(args.redis_follow_ms)),
        ..ServiceOptions::default()
    };
    let t = Instant::now();
    let (service, opened) = Service::open(
        &args.data_dir.join("state"),
        Arc::clone(&store),
        options,
        |store, opts| {
            let cat = match catalogue {
                Some(c) => c,
                None => Catalogue::generate(spec).map_err(mosaic::ranker::Error::from)?,
            };
            let (graph, _) = cat.split(0.75).map_err(mosaic::ranker::Error::from)?;
            let attrs = Attrs {
                values: &cat.style,
                n_attrs: 1,
            };
            Ok(build(&graph, None, Some(attrs), store, opts, |_, _| {})?.0)
        },
    )
    .context("opening the service")?;
    let device: DeviceSpec = args
        .rescore_device
        .parse()
        .with_context(|| format!("--rescore-device {}", args.rescore_device))?;
    let mut opts = LoadOptions::default().device(device.select()?.into_device());
    opts.dtype = model_args::parse_dtype(&args.rescore_dtype)?;
    opts.weights = args
        .rescore_weights
        .parse()
        .with_context(|| format!("--rescore-weights {}", args.rescore_weights))?;
    let model = tiny::load_model(&args.rescore_model, &args.rescore_adapter, opts)
        .with_context(|| format!("loading {}", args.rescore_model.display()))?;
    let rescorer = Rescorer::new(model, store.generation(CONTENT)?, RescoreOptions::new())?;
    service.attach_rescorer(
        rescorer,
        BatchOptions {
            queue: args.queue,
            max_wait: Duration::from_millis(args.rescore_wait_ms),
            ..BatchOptions::default()
        },
    )?;
    if !args.redis.is_empty() {
        let t = Duration::from_millis(args.redis_timeout_ms);
        let config = RedisConfig::new(args.redis.clone(), &args.redis_namespace).timeouts(t, t);
        let redis = RedisClusterStore::open(config).context("connecting to the Redis Cluster")?;
        let joined = service
            .attach_shared(Arc::new(redis))
            .context("sharing the served generation through Redis")?;
        println!("redis: {joined:?}");
    }
    println!(
        "serving {:?} ({opened:?}) in {:.2} s",
        service.recommender().snapshot().generation(),
        t.elapsed().as_secs_f64()
    );
    Ok(service)
}

/// The store generation of the content embeddings /v1/rescore reads.
const CONTENT: &str = "content";

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

/// Log lines to stderr as `format` says, filtered by `RUST_LOG` (default `info`).
fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() -> anyhow::Result<()> {
    let args = Settings::resolve(Cli::parse())?;
    init_logging(args.log_format);
    let app = Arc::new(App {
        service: OnceLock::new(),
        failed: OnceLock::new(),
        recommend_pool: WorkPool::new("recommend", args.workers, args.queue)?,
        events_pool: WorkPool::new("events", 2, args.queue)?,
        items_pool: WorkPool::new("items", 1, args.queue)?,
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
                tracing::error!("the service failed to start: {e:#}");
                let _ = loading.failed.set(format!("failed to start: {e:#}"));
            }
        });
        axum::serve(listener, http::router(Arc::clone(&app)))
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
