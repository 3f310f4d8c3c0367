//! The HTTP side of the serve example: the routes, request ids and tracing spans, JSON
//! in and out, and the hand-off of CPU work to the bounded pools.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use mosaic::ranker::service::{ItemUpsert, KeyedEvent, RescoreRequest, Service, WorkPool};
use mosaic::ranker::{Error, Key, RecommendOptions, RequestOptions};
use mosaic::taste_graph::InteractionKind;
use serde::Deserialize;
use serde_json::{Value, json};
use tracing::Instrument;

/// What every handler shares: the service once it is up, the pools, the deadline.
pub struct App {
    /// The service, once loaded.
    pub service: OnceLock<Arc<Service>>,
    /// Why it failed to load, if it did.
    pub failed: OnceLock<String>,
    /// Workers answering recommendations.
    pub recommend_pool: WorkPool,
    /// Workers recording events.
    pub events_pool: WorkPool,
    /// The worker upserting items (one: upserts commit one at a time, and may wait
    /// for a refit's swap).
    pub items_pool: WorkPool,
    /// Every request's deadline.
    pub deadline: Duration,
    /// The options a request's own override.
    pub defaults: RecommendOptions,
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
        Error::Overloaded { .. } | Error::Deadline { .. } | Error::Shared { .. } => {
            StatusCode::SERVICE_UNAVAILABLE
        }
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
        let span = tracing::Span::current();
        pool.try_run(move || {
            if Instant::now() < deadline {
                let _ = tx.send(span.in_scope(work));
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

/// Request ids of this process (when the client sends no `x-request-id`).
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Runs a handler inside a `request` span (the client's `x-request-id`, or one made
/// here, echoed in the answer), answers its refusal as JSON, times it and records it
/// under `endpoint`.
async fn timed(
    app: &App,
    endpoint: &'static str,
    headers: &HeaderMap,
    answer: impl Future<Output = Result<Response, Reject>>,
) -> Response {
    let id = headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128)
        .map_or_else(
            || {
                format!(
                    "{:x}-{}",
                    std::process::id(),
                    NEXT_ID.fetch_add(1, Ordering::Relaxed)
                )
            },
            str::to_string,
        );
    let span = tracing::info_span!("request", id = %id, endpoint);
    let t = Instant::now();
    let mut r = answer
        .instrument(span.clone())
        .await
        .unwrap_or_else(IntoResponse::into_response);
    let seconds = t.elapsed().as_secs_f64();
    span.in_scope(|| tracing::debug!(status = r.status().as_u16(), ms = seconds * 1e3, "answered"));
    if let Some(s) = app.service.get() {
        s.requests.observe(endpoint, r.status().as_u16(), seconds);
    }
    if let Ok(v) = HeaderValue::from_str(&id) {
        r.headers_mut().insert("x-request-id", v);
    }
    r
}

fn parse<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, Reject> {
    serde_json::from_slice(body).map_err(|e| error(StatusCode::BAD_REQUEST, e))
}

/// A user from JSON: an integer or a name (a string).
fn user_of(v: Option<Value>, at: &str) -> Result<Key, Reject> {
    let v = v.ok_or_else(|| error(StatusCode::BAD_REQUEST, format!("{at}: missing")))?;
    serde_json::from_value(v.clone()).map_err(|_| {
        error(
            StatusCode::BAD_REQUEST,
            format!("{at}: {v} is not a user id (an integer below 2^63, or a string)"),
        )
    })
}

async fn recommend(State(app): State<Arc<App>>, headers: HeaderMap, body: Bytes) -> Response {
    let work = async {
        let service = app.service()?;
        let mut fields: serde_json::Map<String, Value> = parse(&body)?;
        let user = user_of(fields.remove("user"), "user")?;
        let req: RequestOptions = serde_json::from_value(Value::Object(fields))
            .map_err(|e| error(StatusCode::BAD_REQUEST, e))?;
        let opts = service
            .options(&req, app.defaults.clone())
            .map_err(|e| error(StatusCode::BAD_REQUEST, e))?;
        let answer = app
            .run(&app.recommend_pool, move || service.recommend(&user, &opts))
            .await?;
        match answer {
            Ok(a) => Ok(axum::Json(a).into_response()),
            Err(e) => Err(error(status_of(&e), e)),
        }
    };
    timed(&app, "recommend", &headers, work).await
}

async fn rescore(State(app): State<Arc<App>>, headers: HeaderMap, body: Bytes) -> Response {
    let work = async {
        let service = app.service()?;
        let mut fields: serde_json::Map<String, Value> = parse(&body)?;
        let user = user_of(fields.remove("user"), "user")?;
        let req: RescoreRequest = serde_json::from_value(Value::Object(fields))
            .map_err(|e| error(StatusCode::BAD_REQUEST, e))?;
        let deadline = Instant::now() + app.deadline;
        let (tx, rx) = tokio::sync::oneshot::channel();
        // the context (the user's interests) is read on a worker; the prompts are built
        // and scored on the batcher's thread with those of concurrent requests
        app.run(&app.recommend_pool, move || {
            service.rescore(&user, req, deadline, move |scores| {
                let _ = tx.send(scores);
            })
        })
        .await?
        .map_err(|e| error(status_of(&e), e))?;
        match tokio::time::timeout_at(deadline.into(), rx).await {
            Ok(Ok(Ok(scores))) => Ok(axum::Json(json!({ "scores": scores })).into_response()),
            Ok(Ok(Err(e))) => Err(error(status_of(&e), e)),
            Ok(Err(_)) | Err(_) => Err(error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("deadline of {} ms passed", app.deadline.as_millis()),
            )),
        }
    };
    timed(&app, "rescore", &headers, work).await
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
    item: Key,
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
fn events_of(body: &[u8]) -> Result<Vec<KeyedEvent>, Reject> {
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
            Ok(KeyedEvent {
                user: user_of(Some(e.user), &format!("events[{k}].user"))?,
                item: e.item,
                kind,
                time: e.time,
            })
        })
        .collect()
}

async fn events(State(app): State<Arc<App>>, headers: HeaderMap, body: Bytes) -> Response {
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
    timed(&app, "events", &headers, work).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ItemsBody {
    items: Vec<Value>,
}

/// The whole batch parsed before any of it is written (the service checks the values).
fn items_of(body: &[u8]) -> Result<Vec<ItemUpsert>, Reject> {
    let b: ItemsBody = parse(body)?;
    b.items
        .into_iter()
        .enumerate()
        .map(|(k, v)| {
            serde_json::from_value(v)
                .map_err(|e| error(StatusCode::BAD_REQUEST, format!("items[{k}]: {e}")))
        })
        .collect()
}

async fn items(State(app): State<Arc<App>>, headers: HeaderMap, body: Bytes) -> Response {
    let work = async {
        let service = app.service()?;
        let items = items_of(&body)?;
        match app
            .run(&app.items_pool, move || service.upsert(&items))
            .await?
        {
            Ok(done) => Ok(axum::Json(done).into_response()),
            Err(e) => Err(error(status_of(&e), e)),
        }
    };
    timed(&app, "items", &headers, work).await
}

async fn ready(State(app): State<Arc<App>>) -> Response {
    match app.service() {
        Ok(_) => (StatusCode::OK, "ready\n").into_response(),
        Err(r) => r.into_response(),
    }
}

async fn metrics(State(app): State<Arc<App>>) -> Response {
    match app.service() {
        Ok(s) => {
            let mut text = s.render_metrics();
            text.push_str(
                "# HELP mosaic_queue_depth Jobs waiting for a worker.\n# TYPE mosaic_queue_depth gauge\n",
            );
            for pool in [&app.recommend_pool, &app.events_pool, &app.items_pool] {
                text.push_str(&format!(
                    "mosaic_queue_depth{{pool=\"{}\"}} {}\n",
                    pool.name(),
                    pool.depth()
                ));
            }
            ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
        }
        Err(r) => r.into_response(),
    }
}

/// Every route of the service over `app`.
pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/v1/recommend", post(recommend))
        .route("/v1/events", post(events))
        .route("/v1/items", put(items))
        .route("/v1/rescore", post(rescore))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
        .with_state(app)
}
