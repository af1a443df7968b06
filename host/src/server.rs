//! The HTTP front door: every request is matched against the configured routes and handed
//! to its instance's `on-webhook`.
//!
//! Hostile peers get bounded resources: connections are capped, headers and bodies must
//! arrive within their timeouts (an idle keep-alive connection counts as headers not yet
//! sent), and a body is read only once its route is known and its key, where the plugin
//! asked the host to check one, is right. Bodies in memory at once share one budget.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::{info, info_span, warn};

use crate::model::{HttpReply, HttpRequest};
use crate::relay::{Failure, Relay};
use crate::runtime::CallError;
use simrelay_core::auth::{RequestHead, key_matches};

/// Answers with the id its handling is logged under.
const MESSAGE_ID_HEADER: &str = "x-simrelay-message-id";

/// What one listener allows its peers (`[host.http]` in the configuration).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpLimits {
    /// The largest request body accepted; larger ones get 413 before they are read.
    pub max_body_kib: usize,
    /// Connections open at once; beyond it, new ones wait in the kernel's backlog.
    pub max_connections: usize,
    /// Seconds a connection may take to send a request's headers, and may stay idle
    /// between requests.
    pub header_timeout_secs: u64,
    /// Seconds a request may take to send its body.
    pub body_timeout_secs: u64,
    /// Request bodies held in memory at once, all connections together; a body that does
    /// not fit gets 503.
    pub body_budget_mib: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            max_body_kib: 1024,
            max_connections: 4096,
            header_timeout_secs: 10,
            body_timeout_secs: 10,
            body_budget_mib: 64,
        }
    }
}

/// Serves `handler` on `listener` until `shutdown` completes, then lets requests in flight
/// finish (for at most 10 s).
pub async fn serve<H, F>(
    listener: &TcpListener,
    limits: &HttpLimits,
    handler: H,
    shutdown: impl Future<Output = ()>,
) where
    H: Fn(Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let connections = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(limits.header_timeout_secs.max(1)))
        .max_buf_size(64 * 1024);
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            permit = connections.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    warn!("cannot accept a connection: {error}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let handler = handler.clone();
        let service = hyper::service::service_fn(move |request| {
            let response = handler(request, peer);
            async move { Ok::<_, Infallible>(response.await) }
        });
        let connection = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            // Peers that break off or time out end here; nothing to report.
            let _ = connection.await;
            drop(permit);
        });
    }
    let _ = tokio::time::timeout(Duration::from_secs(10), graceful.shutdown()).await;
}

/// Request bodies' share of memory, in KiB.
pub struct BodyBudget {
    kib: Arc<Semaphore>,
    max_body: usize,
    timeout: Duration,
}

impl BodyBudget {
    pub fn new(limits: &HttpLimits) -> Arc<Self> {
        Arc::new(BodyBudget {
            kib: Arc::new(Semaphore::new((limits.body_budget_mib.max(1)) << 10)),
            max_body: limits.max_body_kib.max(1) << 10,
            timeout: Duration::from_secs(limits.body_timeout_secs.max(1)),
        })
    }

    /// The body of a request the host answers itself, read within the same limits.
    pub(crate) async fn read_body(&self, body: Incoming) -> Result<Vec<u8>, Response<Body>> {
        self.read(body).await.map(|(bytes, _)| bytes)
    }

    /// The body, read within the size limit, the timeout and the shared budget; the permit
    /// keeps its share reserved until dropped.
    async fn read(
        &self,
        body: Incoming,
    ) -> Result<(Vec<u8>, OwnedSemaphorePermit), Response<Body>> {
        // Sized once from Content-Length (within the limit), so a body never costs the
        // doubling of a growing buffer; pages are touched only as the bytes arrive.
        let announced = hyper::body::Body::size_hint(&body).lower();
        let mut bytes =
            Vec::with_capacity(usize::try_from(announced).map_or(0, |len| len.min(self.max_body)));
        let mut held: Option<OwnedSemaphorePermit> = None;
        let read = async {
            let mut body = body;
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|error| {
                    json_error(
                        StatusCode::BAD_REQUEST,
                        &format!("cannot read the body: {error}"),
                    )
                })?;
                let Ok(chunk) = frame.into_data() else {
                    continue;
                };
                if bytes.len() + chunk.len() > self.max_body {
                    return Err(too_large(self.max_body));
                }
                let needed = (bytes.len() + chunk.len()).div_ceil(1024) as u32;
                let have = held
                    .as_ref()
                    .map_or(0, |permit| permit.num_permits() as u32);
                if needed > have {
                    let more = self
                        .kib
                        .clone()
                        .try_acquire_many_owned(needed - have)
                        .map_err(|_| {
                            json_error(
                                StatusCode::SERVICE_UNAVAILABLE,
                                "too many request bodies in flight; send it again shortly",
                            )
                        })?;
                    match &mut held {
                        Some(permit) => permit.merge(more),
                        None => held = Some(more),
                    }
                }
                bytes.extend_from_slice(&chunk);
            }
            Ok(())
        };
        match tokio::time::timeout(self.timeout, read).await {
            Ok(Ok(())) => {}
            Ok(Err(response)) => return Err(response),
            Err(_) => {
                return Err(json_error(
                    StatusCode::REQUEST_TIMEOUT,
                    &format!(
                        "the body did not arrive within {} s",
                        self.timeout.as_secs()
                    ),
                ));
            }
        }
        let permit = match held {
            Some(permit) => permit,
            None => self.kib.clone().try_acquire_many_owned(0).map_err(|_| {
                json_error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the server is shutting down",
                )
            })?,
        };
        Ok((bytes, permit))
    }
}

fn too_large(limit: usize) -> Response<Body> {
    json_error(
        StatusCode::PAYLOAD_TOO_LARGE,
        &format!("the body is over the limit of {} KiB", limit >> 10),
    )
}

pub fn json_error(status: StatusCode, message: &str) -> Response<Body> {
    let body = serde_json::json!({ "error": message }).to_string();
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Body::from(body))
        .unwrap_or_default()
}

fn pairs(headers: &HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(name, value)| {
            (
                name.to_string(),
                String::from_utf8_lossy(value.as_bytes()).into_owned(),
            )
        })
        .collect()
}

fn reply(reply: HttpReply) -> Response<Body> {
    let mut response = Response::new(Body::from(reply.body));
    *response.status_mut() =
        StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    for (name, value) in reply.headers {
        if let (Ok(name), Ok(value)) = (HeaderName::try_from(name), HeaderValue::try_from(value)) {
            response.headers_mut().append(name, value);
        }
    }
    response
}

/// The answer to a webhook the relay could not accept. 500 and 503 say "send it again";
/// a failure that the same request would meet again gets a final 4xx instead.
fn failure(failure: Failure) -> Response<Body> {
    match failure {
        Failure::Call(CallError::OutOfMemory(_), message) => json_error(
            StatusCode::UNPROCESSABLE_ENTITY,
            &format!("webhook refused for good, sending it again will not help: {message}"),
        ),
        Failure::Call(_, message) => json_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("webhook not accepted, send it again: {message}"),
        ),
        Failure::Storage(error) => json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!("webhook not accepted, storage unavailable; send it again: {error:#}"),
        ),
    }
}

/// Handles one request on the webhook listener.
pub async fn webhook(
    relay: Arc<Relay>,
    budget: Arc<BodyBudget>,
    request: Request<Incoming>,
) -> Response<Body> {
    let (head, body) = request.into_parts();
    let path = head.uri.path().to_string();
    if crate::send::handles(&path)
        && let Some(send) = relay.send_config()
    {
        let response = crate::send::serve(relay, send, budget, head, body).await;
        count_webhook("", response.status().as_u16());
        return response;
    }
    let method = head.method.to_string();
    let Some((instance, params)) = relay.route(&method, &path) else {
        count_webhook("", StatusCode::NOT_FOUND.as_u16());
        return json_error(
            StatusCode::NOT_FOUND,
            &format!("no route for {method} {path}"),
        );
    };
    let query = head.uri.query().unwrap_or_default().to_string();
    let headers = pairs(&head.headers);
    let active = instance.active();
    if let Some(key) = active.webhook_key() {
        let head = RequestHead {
            params: &params,
            headers: &headers,
            query: &query,
        };
        if !key_matches(key, active.settings(), &head) {
            count_webhook(&instance.name, key.rejection.status);
            return reply(key.rejection.clone());
        }
    }
    drop(active);
    let declared = head
        .headers
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok()?.parse::<usize>().ok());
    if declared.is_some_and(|length| length > budget.max_body) {
        return too_large(budget.max_body);
    }
    let (body, reserved) = match budget.read(body).await {
        Ok(read) => read,
        Err(response) => return response,
    };
    relay.keep_pace(&instance).await;
    let message_id = relay.new_message_id();
    let span = info_span!("webhook", message_id = %message_id, instance = %instance.name);
    let request = HttpRequest {
        method,
        path,
        query,
        params,
        headers,
        body,
    };
    let instance_name = instance.name.clone();
    let turn = instance.turn.lock().await;
    let called = crate::worker::call_here(|| {
        span.in_scope(|| relay.call_webhook(&instance, &message_id, &request))
    });
    drop(turn);
    drop(reserved);
    let answered = match called {
        Ok(Ok((answer, submitted))) => submitted
            .durable_in_task(&relay)
            .await
            .map(|durable| durable.map(|_| answer).map_err(Failure::Storage))
            .map_err(|panic| panic.to_string()),
        Ok(Err(refused)) => Ok(Err(refused)),
        Err(panic) => Err(panic),
    };
    let mut response = match answered {
        Ok(Ok(answer)) => {
            span.in_scope(|| info!(status = answer.status, "webhook handled"));
            reply(answer)
        }
        Ok(Err(refused)) => failure(refused),
        Err(panic) => {
            span.in_scope(|| warn!("webhook handler panicked: {panic}"));
            json_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "webhook not accepted, send it again",
            )
        }
    };
    count_webhook(&instance_name, response.status().as_u16());
    if let Ok(value) = HeaderValue::try_from(message_id) {
        response.headers_mut().insert(MESSAGE_ID_HEADER, value);
    }
    response
}

fn count_webhook(instance: &str, status: u16) {
    crate::metrics::metrics().count(
        "simrelay_webhooks_total",
        "Webhooks answered, by instance (empty: no route) and status.",
        &[("instance", instance), ("status", &status.to_string())],
    );
}
