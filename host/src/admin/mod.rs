//! The operator API: its own listener (loopback by default), every route behind one bearer
//! token compared in constant time. The `simrelay` command line talks to it, and the
//! status page at `/` reads it.
//!
//! | method and path                    | what it does                                      |
//! |------------------------------------|---------------------------------------------------|
//! | `GET /v1/health`                   | uptime, queues, storage, messages per minute      |
//! | `GET /v1/instances`                | each instance: plugin, version, hash, calls, queues|
//! | `PUT /v1/instances/{name}`         | add or reconfigure an instance (JSON config)      |
//! | `DELETE /v1/instances/{name}`      | remove an instance                                |
//! | `POST /v1/instances/{name}/plugin` | upload a component and make it serve the instance |
//! | `POST /v1/instances/{name}/rollback` | go back to the previous version                 |
//! | `GET/POST /v1/plugins`             | list / upload components                          |
//! | `DELETE /v1/plugins/{hash}`        | delete an unused component                        |
//! | `POST /v1/reload`                  | apply the configuration file as it is now         |
//! | `GET /v1/deliveries`               | deliveries by state, instance, message id, time   |
//! | `GET /v1/deliveries/{id}`          | one delivery with its attempts                    |
//! | `POST /v1/deliveries/{id}/retry`   | retry a finished delivery                         |
//! | `POST /v1/deliveries/replay`       | retry an instance's deliveries over a time window |
//! | `GET /v1/messages`, `GET /v1/sims` | what the plugins reported                         |
//! | `GET /metrics`                     | Prometheus metrics                                |

use std::path::Path;
use std::sync::Arc;

use anyhow::Result;
use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path as UrlPath, Query, State};
use axum::http::{Request, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use serde::Deserialize;
use serde_json::{Value, json};
use simrelay_core::auth::secrets_match;
use simrelay_core::retry::DeliveryState;

use crate::config::InstanceConfig;
use crate::db::DeliveryFilter;
use crate::deploy::Deployer;
use crate::metrics::metrics;
use crate::relay::{Instance, Relay};

/// The largest component an operator may upload.
const MAX_UPLOAD: usize = 256 << 20;
/// Where a generated token is kept.
pub const TOKEN_FILE: &str = "admin-token";

#[derive(Clone)]
struct Admin {
    deployer: Arc<Deployer>,
    token: Arc<str>,
}

/// The token from the configuration, or the one kept in the data directory (made now,
/// readable by its owner only, when there is none).
pub fn token(configured: Option<&str>, data_dir: &Path) -> Result<String> {
    if let Some(token) = configured.filter(|token| !token.is_empty()) {
        return Ok(token.to_string());
    }
    let path = data_dir.join(TOKEN_FILE);
    if let Ok(token) = std::fs::read_to_string(&path) {
        return Ok(token.trim().to_string());
    }
    let mut random = [0u8; 24];
    getrandom::fill(&mut random).map_err(|error| anyhow::anyhow!("no randomness: {error}"))?;
    let token: String = random.iter().map(|byte| format!("{byte:02x}")).collect();
    std::fs::create_dir_all(data_dir)?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    std::io::Write::write_all(&mut options.open(&path)?, token.as_bytes())?;
    tracing::info!(
        "made an operator API token; it is in {} (readable by this user only)",
        path.display()
    );
    Ok(token)
}

pub fn router(deployer: Arc<Deployer>, token: String) -> axum::Router {
    let state = Admin {
        deployer,
        token: token.into(),
    };
    let api = axum::Router::new()
        .route("/v1/health", get(health))
        .route("/v1/instances", get(instances))
        .route("/v1/instances/{name}", put(apply).delete(remove_instance))
        .route(
            "/v1/instances/{name}/plugin",
            post(install).layer(DefaultBodyLimit::max(MAX_UPLOAD)),
        )
        .route("/v1/instances/{name}/rollback", post(rollback))
        .route(
            "/v1/plugins",
            get(plugins)
                .post(upload)
                .layer(DefaultBodyLimit::max(MAX_UPLOAD)),
        )
        .route("/v1/plugins/{hash}", delete(remove_plugin))
        .route("/v1/reload", post(reload))
        .route("/v1/deliveries", get(deliveries))
        .route("/v1/deliveries/replay", post(replay))
        .route("/v1/deliveries/{id}", get(delivery))
        .route("/v1/deliveries/{id}/retry", post(retry))
        .route("/v1/messages", get(messages))
        .route("/v1/sims", get(sims))
        .route("/metrics", get(prometheus))
        .layer(middleware::from_fn_with_state(state.clone(), authorize))
        .with_state(state);
    axum::Router::new()
        .route("/", get(|| async { Html(include_str!("status.html")) }))
        .merge(api)
}

/// Every API route needs the token: `Authorization: Bearer TOKEN`.
async fn authorize(State(admin): State<Admin>, request: Request<Body>, next: Next) -> Response {
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .unwrap_or_default();
    if !secrets_match(given, &admin.token) {
        return failure(
            StatusCode::UNAUTHORIZED,
            "missing or wrong token: send `Authorization: Bearer TOKEN` (the token is in \
             host.admin.token, or in DATA_DIR/admin-token)",
        );
    }
    next.run(request).await
}

fn failure(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

/// Runs blocking work (compiling, the database) off the async threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T, Response> {
    match tokio::task::spawn_blocking(work).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(error)) => Err(failure(StatusCode::BAD_REQUEST, &format!("{error:#}"))),
        Err(panic) => Err(failure(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("the request failed: {panic}"),
        )),
    }
}

fn relay(admin: &Admin) -> Arc<Relay> {
    admin.deployer.relay().clone()
}

async fn health(State(admin): State<Admin>) -> Response {
    let relay = relay(&admin);
    let answer = blocking(move || {
        let (pending, finished) = relay.db.delivery_counts();
        let minute_ago = crate::now_ms().saturating_sub(60_000);
        let queued: usize = relay.instances().iter().map(|i| i.events.depth().0).sum();
        Ok(json!({
            "status": "ok",
            "version": env!("CARGO_PKG_VERSION"),
            "uptime_secs": relay.started.elapsed().as_secs(),
            "instances": relay.instances().len(),
            "events_queued": queued,
            "deliveries_pending": pending,
            "deliveries_finished_kept": finished,
            "messages_last_minute": relay.db.messages_since(minute_ago)?,
        }))
    })
    .await;
    answer.map(Json).into_response()
}

fn describe_instance(instance: &Instance, pending: Option<&(u64, u64)>) -> Value {
    let active = instance.active();
    let descriptor = &active.plugin.descriptor;
    let (queued, next_event_due) = instance.events.depth();
    let failing = active
        .consecutive_failures
        .load(std::sync::atomic::Ordering::Relaxed);
    json!({
        "name": instance.name,
        "plugin": descriptor.name,
        "version": descriptor.version,
        "interface_version": active.plugin.interface_version(),
        "hash": active.hash,
        "serving_since_ms": active.since_ms,
        "calls": active.calls.load(std::sync::atomic::Ordering::Relaxed),
        "failures": active.failures.load(std::sync::atomic::Ordering::Relaxed),
        "consecutive_failures": failing,
        "health": if failing == 0 { "ok" } else { "failing" },
        "rollback_after_failures": active.config.rollback_after_failures,
        "previous_versions": active.previous.iter().map(|previous| json!({
            "version": previous.plugin.descriptor.version,
            "hash": previous.hash,
        })).collect::<Vec<_>>(),
        "events_queued": queued,
        "next_event_due_ms": next_event_due,
        "deliveries_pending": pending.map_or(0, |p| p.0),
        "oldest_pending_delivery_ms": pending.map(|p| p.1),
    })
}

async fn instances(State(admin): State<Admin>) -> Response {
    let relay = relay(&admin);
    blocking(move || {
        let pending = relay.db.pending_by_instance();
        Ok(relay
            .instances()
            .iter()
            .map(|instance| describe_instance(instance, pending.get(&instance.name)))
            .collect::<Vec<_>>())
    })
    .await
    .map(Json)
    .into_response()
}

async fn apply(
    State(admin): State<Admin>,
    UrlPath(name): UrlPath<String>,
    Json(config): Json<InstanceConfig>,
) -> Response {
    let deployer = admin.deployer.clone();
    let done = blocking(move || deployer.apply(&name, config).map(|()| name)).await;
    match done {
        Ok(name) => instance_answer(&admin, &name),
        Err(response) => response,
    }
}

fn instance_answer(admin: &Admin, name: &str) -> Response {
    match relay(admin).instance(name) {
        Some(instance) => Json(describe_instance(&instance, None)).into_response(),
        None => failure(StatusCode::NOT_FOUND, &format!("no instance `{name}`")),
    }
}

async fn remove_instance(State(admin): State<Admin>, UrlPath(name): UrlPath<String>) -> Response {
    let deployer = admin.deployer.clone();
    blocking(move || deployer.remove_instance(&name))
        .await
        .map(|()| Json(json!({ "removed": true })))
        .into_response()
}

async fn install(
    State(admin): State<Admin>,
    UrlPath(name): UrlPath<String>,
    body: Bytes,
) -> Response {
    let deployer = admin.deployer.clone();
    let instance = name.clone();
    let done = blocking(move || {
        let stored = deployer.upload(&body)?;
        deployer.install(&instance, &stored.hash)
    })
    .await;
    match done {
        Ok(()) => instance_answer(&admin, &name),
        Err(response) => response,
    }
}

async fn rollback(State(admin): State<Admin>, UrlPath(name): UrlPath<String>) -> Response {
    let deployer = admin.deployer.clone();
    let instance = name.clone();
    match blocking(move || deployer.rollback(&instance)).await {
        Ok(()) => instance_answer(&admin, &name),
        Err(response) => response,
    }
}

async fn plugins(State(admin): State<Admin>) -> Response {
    let deployer = admin.deployer.clone();
    blocking(move || deployer.stored_plugins())
        .await
        .map(Json)
        .into_response()
}

async fn upload(State(admin): State<Admin>, body: Bytes) -> Response {
    let deployer = admin.deployer.clone();
    blocking(move || deployer.upload(&body))
        .await
        .map(Json)
        .into_response()
}

async fn remove_plugin(State(admin): State<Admin>, UrlPath(hash): UrlPath<String>) -> Response {
    let deployer = admin.deployer.clone();
    blocking(move || deployer.remove_plugin(&hash))
        .await
        .map(|()| Json(json!({ "removed": true })))
        .into_response()
}

async fn reload(State(admin): State<Admin>) -> Response {
    let deployer = admin.deployer.clone();
    blocking(move || deployer.reload())
        .await
        .map(|changes| Json(json!({ "changes": changes })))
        .into_response()
}

async fn deliveries(State(admin): State<Admin>, Query(filter): Query<DeliveryFilter>) -> Response {
    let relay = relay(&admin);
    blocking(move || relay.db.find_deliveries(&filter))
        .await
        .map(Json)
        .into_response()
}

async fn delivery(State(admin): State<Admin>, UrlPath(id): UrlPath<u64>) -> Response {
    let relay = relay(&admin);
    match blocking(move || relay.db.delivery(id)).await {
        Ok(Some(record)) => Json(record).into_response(),
        Ok(None) => failure(StatusCode::NOT_FOUND, &format!("no delivery {id}")),
        Err(response) => response,
    }
}

async fn retry(State(admin): State<Admin>, UrlPath(id): UrlPath<u64>) -> Response {
    let relay = relay(&admin);
    blocking(move || relay.requeue_delivery(id, "retried by an operator"))
        .await
        .map(Json)
        .into_response()
}

#[derive(Deserialize)]
struct Replay {
    instance: String,
    since_ms: u64,
    until_ms: Option<u64>,
}

async fn replay(State(admin): State<Admin>, Json(window): Json<Replay>) -> Response {
    let relay = relay(&admin);
    blocking(move || {
        let filter = DeliveryFilter {
            instance: Some(window.instance),
            since_ms: Some(window.since_ms),
            until_ms: window.until_ms,
            limit: Some(usize::MAX),
            ..Default::default()
        };
        let mut replayed = Vec::new();
        for record in relay.db.find_deliveries(&filter)? {
            if !matches!(record.state, DeliveryState::Pending { .. }) {
                relay.requeue_delivery(record.id, "replayed by an operator")?;
                replayed.push(record.id);
            }
        }
        Ok(json!({ "replayed": replayed }))
    })
    .await
    .map(Json)
    .into_response()
}

#[derive(Deserialize)]
struct Limit {
    limit: Option<usize>,
}

async fn messages(State(admin): State<Admin>, Query(limit): Query<Limit>) -> Response {
    let relay = relay(&admin);
    blocking(move || relay.db.recent_messages(limit.limit.unwrap_or(100)))
        .await
        .map(Json)
        .into_response()
}

async fn sims(State(admin): State<Admin>) -> Response {
    let relay = relay(&admin);
    blocking(move || relay.db.sims())
        .await
        .map(Json)
        .into_response()
}

async fn prometheus(State(admin): State<Admin>) -> Response {
    let relay = relay(&admin);
    let text = blocking(move || {
        let now = crate::now_ms();
        let mut gauges = Vec::new();
        for instance in relay.instances() {
            let (depth, next_due) = instance.events.depth();
            let labels = vec![("instance", instance.name.clone())];
            gauges.push((
                "simrelay_events_queued",
                "Events waiting for an instance.",
                labels.clone(),
                depth as f64,
            ));
            gauges.push((
                "simrelay_events_overdue_seconds",
                "How long the instance's earliest queued event has been due.",
                labels,
                next_due.map_or(0.0, |due| now.saturating_sub(due) as f64 / 1000.0),
            ));
        }
        for (instance, (count, oldest)) in relay.db.pending_by_instance() {
            let labels = vec![("instance", instance)];
            gauges.push((
                "simrelay_deliveries_pending",
                "Deliveries waiting for an attempt or a retry.",
                labels.clone(),
                count as f64,
            ));
            gauges.push((
                "simrelay_deliveries_pending_age_seconds",
                "Age of the instance's oldest pending delivery.",
                labels,
                now.saturating_sub(oldest) as f64 / 1000.0,
            ));
        }
        gauges.sort_by(|a, b| a.0.cmp(b.0));
        Ok(metrics().render(&gauges))
    })
    .await;
    match text {
        Ok(text) => ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response(),
        Err(response) => response,
    }
}
