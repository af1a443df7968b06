//! The send API, on the webhook listener when `[host.send]` is configured:
//! `POST /v1/messages` hands an SMS to an instance with the `send` capability as a
//! `send-sms` event, and `GET /v1/messages/{id}` reads back how far it got, as that
//! instance's `delivery-status-changed` events reported it.
//!
//! The bearer token is checked, in constant time, before the body is read. The request is
//! answered 202 only once the event and its record are durable, so an accepted SMS survives
//! a crash.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{HeaderValue, Method, Response, StatusCode, request::Parts};
use hyper::body::Incoming;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use simrelay_core::auth::secrets_match;
use tracing::{info, info_span, warn};

use crate::config::SendConfig;
use crate::model::{Capability, DeliveryState, DeliveryStatus, SendRequest};
use crate::relay::Relay;
use crate::server::{BodyBudget, json_error};

/// Where the API lives on the webhook listener.
pub const PATH: &str = "/v1/messages";

/// Status changes kept per message: enough to see its way, bounded for a chatty gateway.
const HISTORY: usize = 20;

/// Where an SMS asked for through the API has got to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SendStatus {
    /// Accepted by the host; the instance has not reported on it yet.
    Queued,
    Pending,
    Sent,
    Delivered,
    Failed,
}

impl SendStatus {
    /// How far along the way it is: a report never moves a message back.
    fn rank(self) -> u8 {
        match self {
            SendStatus::Queued => 0,
            SendStatus::Pending => 1,
            SendStatus::Sent => 2,
            SendStatus::Delivered | SendStatus::Failed => 3,
        }
    }
}

impl From<DeliveryState> for SendStatus {
    fn from(state: DeliveryState) -> Self {
        match state {
            DeliveryState::Pending => SendStatus::Pending,
            DeliveryState::Sent => SendStatus::Sent,
            DeliveryState::Delivered => SendStatus::Delivered,
            DeliveryState::Failed => SendStatus::Failed,
        }
    }
}

/// One report on a message.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StatusChange {
    pub at_ms: u64,
    pub status: SendStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// An SMS asked for through the API, as the host keeps it (the text is not kept).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SentMessage {
    pub id: String,
    /// The instance that sends it; only its reports change the record.
    pub instance: String,
    pub to: String,
    pub status: SendStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    pub created_ms: u64,
    pub updated_ms: u64,
    /// The id the host logs everything about it with.
    pub message_id: String,
    #[serde(default)]
    pub history: Vec<StatusChange>,
}

impl SentMessage {
    pub fn queued(request: &SendRequest, instance: &str, message_id: &str, now_ms: u64) -> Self {
        SentMessage {
            id: request.id.clone(),
            instance: instance.to_string(),
            to: request.to.clone(),
            status: SendStatus::Queued,
            detail: None,
            created_ms: now_ms,
            updated_ms: now_ms,
            message_id: message_id.to_string(),
            history: vec![StatusChange {
                at_ms: now_ms,
                status: SendStatus::Queued,
                detail: None,
            }],
        }
    }

    /// Takes in a report. Reports can arrive out of order (a poll answered after the
    /// gateway's webhook): one that would move the message back is kept in the history only,
    /// and a final state stays final.
    pub fn apply(&mut self, report: &DeliveryStatus, at_ms: u64) {
        let status = SendStatus::from(report.state);
        if self.history.len() >= HISTORY {
            self.history.remove(1);
        }
        self.history.push(StatusChange {
            at_ms,
            status,
            detail: report.detail.clone(),
        });
        let current = self.status.rank();
        if status.rank() > current || (status == self.status && current < 3) {
            self.status = status;
            self.detail = report.detail.clone();
            self.updated_ms = at_ms;
        }
    }
}

/// What `POST /v1/messages` takes: the WIT `send-request` without its id, and the instance.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewMessage {
    to: String,
    text: String,
    /// The device to send from; `from` is accepted for it too.
    #[serde(default, alias = "from")]
    device: Option<Value>,
    #[serde(default)]
    sim: Option<Value>,
    #[serde(default)]
    instance: Option<String>,
    #[serde(default)]
    send_at_ms: Option<u64>,
    #[serde(default)]
    urgent: bool,
}

/// A device or SIM given as text or as a whole number.
fn text_or_number(name: &str, value: Option<Value>) -> Result<Option<String>, String> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) if text.trim().is_empty() => Ok(None),
        Some(Value::String(text)) => Ok(Some(text.trim().to_string())),
        Some(Value::Number(number)) if number.is_u64() => Ok(Some(number.to_string())),
        Some(_) => Err(format!("`{name}` must be a string or a whole number")),
    }
}

/// Whether the send API answers `path`.
pub fn handles(path: &str) -> bool {
    path == PATH
        || path
            .strip_prefix(PATH)
            .and_then(|rest| rest.strip_prefix('/'))
            .is_some_and(|id| !id.is_empty() && !id.contains('/'))
}

fn json_reply(status: StatusCode, body: Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap_or_default()
}

/// The answer to a request without the right bearer token, if it lacks it; the token itself
/// never reaches a log or an answer.
fn refusal(parts: &Parts, config: &SendConfig) -> Option<Response<Body>> {
    let given = parts
        .headers
        .get(hyper::header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| {
            let (scheme, token) = value.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        });
    let refuse = |message: &str| {
        let mut response = json_error(StatusCode::UNAUTHORIZED, message);
        response.headers_mut().insert(
            hyper::header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer"),
        );
        response
    };
    match given {
        None => Some(refuse(
            "missing bearer token: send `Authorization: Bearer <host.send.token>`",
        )),
        Some(token) if secrets_match(token, &config.token) => None,
        Some(_) => Some(refuse("wrong bearer token")),
    }
}

/// Answers a request on [`PATH`] or below it.
pub async fn serve(
    relay: Arc<Relay>,
    config: SendConfig,
    budget: Arc<BodyBudget>,
    parts: Parts,
    body: Incoming,
) -> Response<Body> {
    if let Some(refused) = refusal(&parts, &config) {
        return refused;
    }
    let path = parts.uri.path();
    match (&parts.method, path == PATH) {
        (&Method::POST, true) => {
            let body = match budget.read_body(body).await {
                Ok(body) => body,
                Err(response) => return response,
            };
            submit(relay, &config, &body).await
        }
        (&Method::GET, false) => {
            let id = path[PATH.len() + 1..].to_string();
            let found = tokio::task::spawn_blocking({
                let relay = relay.clone();
                let id = id.clone();
                move || relay.db.sent_message(&id)
            })
            .await;
            match found {
                Ok(Ok(Some(record))) => json_reply(StatusCode::OK, json!(record)),
                Ok(Ok(None)) => json_error(StatusCode::NOT_FOUND, &format!("no message {id}")),
                Ok(Err(error)) => {
                    warn!("cannot read message {id}: {error:#}");
                    json_error(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "storage unavailable; ask again later",
                    )
                }
                Err(_) => json_error(StatusCode::INTERNAL_SERVER_ERROR, "the lookup failed"),
            }
        }
        _ => {
            let allowed = if path == PATH { "POST" } else { "GET" };
            let mut response = json_error(
                StatusCode::METHOD_NOT_ALLOWED,
                &format!("{} {path} is not served; use {allowed}", parts.method),
            );
            response
                .headers_mut()
                .insert(hyper::header::ALLOW, HeaderValue::from_static(allowed));
            response
        }
    }
}

/// The send request a body describes, and the instance to send it, or why it is refused.
fn parse(
    relay: &Relay,
    config: &SendConfig,
    body: &[u8],
    id: String,
) -> Result<(String, SendRequest), (StatusCode, String)> {
    let bad = |message: String| (StatusCode::BAD_REQUEST, message);
    let new: NewMessage = serde_json::from_slice(body)
        .map_err(|error| bad(format!("the body is not a message: {error}")))?;
    if new.to.trim().is_empty() {
        return Err(bad("`to` is empty".into()));
    }
    if new.text.is_empty() {
        return Err(bad("`text` is empty".into()));
    }
    let instance = new.instance.unwrap_or_else(|| config.instance.clone());
    let Some(target) = relay.instance(&instance) else {
        return Err((
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("no instance `{instance}`"),
        ));
    };
    let sends = target
        .active()
        .plugin
        .descriptor
        .capabilities
        .contains(&Capability::Send);
    if !sends {
        return Err((
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("instance `{instance}` does not send SMS"),
        ));
    }
    let request = SendRequest {
        id,
        to: new.to.trim().to_string(),
        text: new.text,
        device: text_or_number("device", new.device).map_err(bad)?,
        sim: text_or_number("sim", new.sim).map_err(bad)?,
        send_at_ms: new.send_at_ms,
        urgent: new.urgent,
    };
    Ok((instance, request))
}

async fn submit(relay: Arc<Relay>, config: &SendConfig, body: &[u8]) -> Response<Body> {
    let message_id = relay.new_message_id();
    let id = format!("out-{message_id}");
    let (instance, request) = match parse(&relay, config, body, id) {
        Ok(parsed) => parsed,
        Err((status, message)) => return json_error(status, &message),
    };
    let span = info_span!("send", message_id = %message_id, instance = %instance);
    let queued = tokio::task::spawn_blocking({
        let (relay, instance, message_id) = (relay.clone(), instance.clone(), message_id.clone());
        move || relay.request_send(&instance, &message_id, request)
    })
    .await;
    match queued {
        Ok(Ok(record)) => {
            span.in_scope(|| info!(id = %record.id, "send request queued"));
            let mut response = json_reply(
                StatusCode::ACCEPTED,
                json!({ "id": record.id, "status": record.status, "instance": record.instance }),
            );
            if let Ok(location) = HeaderValue::try_from(format!("{PATH}/{}", record.id)) {
                response
                    .headers_mut()
                    .insert(hyper::header::LOCATION, location);
            }
            response
        }
        Ok(Err(error)) => {
            span.in_scope(|| warn!("cannot queue the send request: {error:#}"));
            json_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "not accepted, storage unavailable; send it again",
            )
        }
        Err(_) => json_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "not accepted; send it again",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> SendRequest {
        SendRequest {
            id: "out-1".into(),
            to: "+4915752982212".into(),
            text: "hi".into(),
            device: None,
            sim: None,
            send_at_ms: None,
            urgent: false,
        }
    }

    fn report(state: DeliveryState, detail: &str) -> DeliveryStatus {
        DeliveryStatus {
            id: "out-1".into(),
            state,
            detail: Some(detail.into()),
            recipient: None,
        }
    }

    #[test]
    fn reports_move_a_message_forward_only() {
        let mut record = SentMessage::queued(&request(), "sg24", "m1", 1);
        record.apply(&report(DeliveryState::Pending, "accepted as SMS 7"), 2);
        assert_eq!(record.status, SendStatus::Pending);
        record.apply(&report(DeliveryState::Sent, "6 sent"), 3);
        // A poll answered late says less than the last report.
        record.apply(&report(DeliveryState::Pending, "3 queued"), 4);
        assert_eq!(
            (record.status, record.detail.as_deref()),
            (SendStatus::Sent, Some("6 sent"))
        );
        record.apply(&report(DeliveryState::Delivered, "7 delivered"), 5);
        record.apply(&report(DeliveryState::Failed, "8 not delivered"), 6);
        assert_eq!(record.status, SendStatus::Delivered, "final stays final");
        assert_eq!(record.updated_ms, 5);
        assert_eq!(record.history.len(), 6, "every report is in the history");
    }

    #[test]
    fn the_history_is_bounded() {
        let mut record = SentMessage::queued(&request(), "sg24", "m1", 1);
        for at in 0..100 {
            record.apply(&report(DeliveryState::Pending, "3 queued"), at);
        }
        assert_eq!(record.history.len(), HISTORY);
        assert_eq!(
            record.history[0].status,
            SendStatus::Queued,
            "the first stays"
        );
    }

    #[test]
    fn paths_and_fields() {
        assert!(handles("/v1/messages"));
        assert!(handles("/v1/messages/out-1"));
        assert!(!handles("/v1/messages/"));
        assert!(!handles("/v1/messages/a/b"));
        assert!(!handles("/v1/messagesx"));
        assert_eq!(
            text_or_number("sim", Some(json!(1))).unwrap().as_deref(),
            Some("1")
        );
        assert_eq!(text_or_number("sim", Some(json!(" "))).unwrap(), None);
        assert!(text_or_number("sim", Some(json!(1.5))).is_err());
        let parsed: NewMessage =
            serde_json::from_str(r#"{"to":"+1","text":"x","from":"260","urgent":true}"#).unwrap();
        assert_eq!(parsed.device, Some(json!("260")));
        assert!(serde_json::from_str::<NewMessage>(r#"{"to":"+1","text":"x","tx":1}"#).is_err());
    }

    #[test]
    fn bearer_tokens() {
        let config = SendConfig {
            instance: "sg24".into(),
            token: "s3cret".into(),
        };
        let parts = |header: Option<&str>| {
            let mut builder = axum::http::Request::builder().uri(PATH);
            if let Some(header) = header {
                builder = builder.header("authorization", header);
            }
            builder.body(()).unwrap().into_parts().0
        };
        assert!(refusal(&parts(Some("Bearer s3cret")), &config).is_none());
        assert!(refusal(&parts(Some("bearer  s3cret ")), &config).is_none());
        for header in [
            None,
            Some("Bearer s3cre"),
            Some("Basic s3cret"),
            Some("s3cret"),
        ] {
            let refused = refusal(&parts(header), &config).expect("refused");
            assert_eq!(refused.status(), StatusCode::UNAUTHORIZED, "{header:?}");
        }
    }
}
