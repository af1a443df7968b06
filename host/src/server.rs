//! The HTTP front door: every request is matched against the configured routes and handed
//! to its instance's `on-webhook`.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use tracing::{info, info_span, warn};

use crate::abi::HttpRequest;
use crate::relay::Relay;

/// Answers with the id its handling is logged under.
const MESSAGE_ID_HEADER: &str = "x-simrelay-message-id";

pub fn app(relay: Arc<Relay>) -> Router {
    Router::new().fallback(webhook).with_state(relay)
}

fn json_error(status: StatusCode, message: &str) -> Response {
    let body = serde_json::json!({ "error": message }).to_string();
    (status, [("content-type", "application/json")], body).into_response()
}

async fn webhook(
    State(relay): State<Arc<Relay>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_string();
    let Some((instance, params)) = relay.route(method.as_str(), &path) else {
        return json_error(
            StatusCode::NOT_FOUND,
            &format!("no route for {method} {path}"),
        );
    };
    let message_id = relay.new_message_id();
    let span = info_span!("webhook", message_id = %message_id, instance = %instance.name);
    let request = HttpRequest {
        method: method.to_string(),
        path,
        query: uri.query().unwrap_or_default().to_string(),
        params,
        headers: headers
            .iter()
            .map(|(name, value)| {
                (
                    name.to_string(),
                    String::from_utf8_lossy(value.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body: body.to_vec(),
    };
    let handled = {
        let (relay, message_id, span) = (relay.clone(), message_id.clone(), span.clone());
        tokio::task::spawn_blocking(move || {
            span.in_scope(|| relay.handle_webhook(&instance, &message_id, request))
        })
        .await
    };
    let mut response = match handled {
        Ok(Ok(reply)) => {
            span.in_scope(|| info!(status = reply.status, "webhook handled"));
            let mut response = Response::new(axum::body::Body::from(reply.body));
            *response.status_mut() =
                StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            for (name, value) in reply.headers {
                if let (Ok(name), Ok(value)) =
                    (HeaderName::try_from(name), HeaderValue::try_from(value))
                {
                    response.headers_mut().append(name, value);
                }
            }
            response
        }
        Ok(Err(error)) => json_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("webhook not accepted, send it again: {error}"),
        ),
        Err(panic) => {
            span.in_scope(|| warn!("webhook handler panicked: {panic}"));
            json_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "webhook not accepted, send it again",
            )
        }
    };
    if let Ok(value) = HeaderValue::try_from(message_id) {
        response.headers_mut().insert(MESSAGE_ID_HEADER, value);
    }
    response
}
