//! Fixture files: recorded inputs for a plugin and what it should answer to each.
//!
//! A fixture is JSON. Inputs and expected outputs use the serde forms of
//! [`simrelay_core::model`] (the host's own types), so an event in a fixture is exactly what
//! an upstream plugin emits, e.g. `{"SimStatusChanged": {"state": "Registered", ...}}`.
//! Bodies are given as text, or as JSON that the runner serialises.
//!
//! ```json
//! {
//!   "settings": { "api_key": "k" },
//!   "shared_stores": { "inventory": "farm" },
//!   "steps": [
//!     { "webhook": { "path": "/api/k/webhook", "params": { "key": "k" }, "body": {"type": "x"} },
//!       "expect": { "reply": { "status": 200 }, "events": [], "deliveries": [] } },
//!     { "event": { "SimStatusChanged": { "state": "NoSim" } } },
//!     { "response": { "key": "push/1", "status": 200, "body": {"status": "SUCCESS"} },
//!       "expect": { "verdict": "Delivered" } },
//!     { "now_ms": 1700000600000, "tick": {} }
//!   ]
//! }
//! ```

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use serde_json::Value;

use crate::config::Limits;
use crate::model::{DeliveryOutcome, DeliveryRef, Event, HttpRequest, HttpResponse, Pairs};

/// When a fixture's clock starts unless it says otherwise: 2023-11-14T22:13:20Z, the time
/// `CallContext::for_tests` gives native unit tests, so both kinds of test agree.
pub const DEFAULT_START_MS: u64 = 1_700_000_000_000;

/// A whole fixture file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fixture {
    /// One line on what the fixture shows; printed before its steps.
    #[serde(default)]
    pub description: Option<String>,
    /// The instance name, which is also its own store's label.
    #[serde(default = "default_instance")]
    pub instance: String,
    /// The instance's settings. Strings are passed as they are; numbers and booleans as
    /// their text, lists and tables as JSON text, as the host's configuration passes them.
    #[serde(default)]
    pub settings: BTreeMap<String, Value>,
    /// Shared stores granted to the instance: name the plugin asks for → label.
    #[serde(default)]
    pub shared_stores: BTreeMap<String, String>,
    /// The clock of the first step, milliseconds since the Unix epoch.
    #[serde(default = "default_start")]
    pub now_ms: u64,
    /// Per-call sandbox limits, as in the host's configuration.
    #[serde(default)]
    pub limits: Limits,
    pub steps: Vec<Step>,
}

fn default_instance() -> String {
    "test".into()
}

fn default_start() -> u64 {
    DEFAULT_START_MS
}

/// One input, and what the plugin should answer to it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// What the step is about; printed with its result.
    #[serde(default)]
    pub name: Option<String>,
    /// Sets the clock for this step and the ones after it.
    #[serde(default)]
    pub now_ms: Option<u64>,
    #[serde(default)]
    pub webhook: Option<WebhookInput>,
    #[serde(default)]
    pub event: Option<Event>,
    #[serde(default)]
    pub response: Option<ResponseInput>,
    #[serde(default)]
    pub tick: Option<TickInput>,
    /// Nothing is compared when absent: the step only prints what the plugin did.
    #[serde(default)]
    pub expect: Option<Expect>,
}

/// An HTTP request on a route of the instance.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookInput {
    #[serde(default = "default_method")]
    pub method: String,
    #[serde(default = "default_path")]
    pub path: String,
    #[serde(default)]
    pub query: String,
    /// Route captures, e.g. `{"key": "k"}` for `/api/{key}/webhook`.
    #[serde(default)]
    pub params: BTreeMap<String, String>,
    /// Header names are lower-cased, as the host passes them.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub body: Option<Value>,
}

fn default_method() -> String {
    "POST".into()
}

fn default_path() -> String {
    "/".into()
}

/// How a delivery attempt ended: a response, or a transport error.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResponseInput {
    /// The idempotency key of the delivery the response belongs to.
    pub key: String,
    #[serde(default = "first_attempt")]
    pub attempt: u32,
    #[serde(default = "ok_status")]
    pub status: u16,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub body: Option<Value>,
    /// The request got no response at all (connection refused, timeout); `status`,
    /// `headers` and `body` are then ignored.
    #[serde(default)]
    pub transport_error: Option<String>,
}

fn first_attempt() -> u32 {
    1
}

fn ok_status() -> u16 {
    200
}

/// A timer tick. `{"now_ms": N}` is the same as the step's own `now_ms`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TickInput {
    #[serde(default)]
    pub now_ms: Option<u64>,
}

/// What the plugin should answer. Only what is given is compared; objects match when they
/// contain the expected fields (a JSON body may be given in part), lists must have exactly
/// the expected items, each matched the same way.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// `{"status": 200, "headers": {...}, "body": ...}`, for webhooks.
    #[serde(default)]
    pub reply: Option<Value>,
    /// Events in the model's serde form.
    #[serde(default)]
    pub events: Option<Vec<Value>>,
    /// `{"idempotency_key": ..., "request": {"method", "url", "headers", "body"}}`.
    #[serde(default)]
    pub deliveries: Option<Vec<Value>>,
    /// `"Delivered"`, `"Retry"`, `{"RetryAfterMs": 10000}` or `{"GiveUp": "why"}`, for
    /// responses.
    #[serde(default)]
    pub verdict: Option<Value>,
    /// The call fails with an error containing this text.
    #[serde(default)]
    pub error: Option<String>,
}

/// The input of a step, in the host's types.
pub enum StepInput {
    Webhook(HttpRequest),
    Event(Event),
    Response(DeliveryRef, DeliveryOutcome),
    Tick,
}

impl StepInput {
    /// One line naming the input, for the runner's output.
    pub fn summary(&self) -> String {
        match self {
            StepInput::Webhook(request) => format!("webhook {} {}", request.method, request.path),
            StepInput::Event(event) => format!("event {}", event.kind()),
            StepInput::Response(delivery, outcome) => format!(
                "response to {} (attempt {}): {}",
                delivery.idempotency_key,
                delivery.attempt,
                outcome.summary()
            ),
            StepInput::Tick => "tick".into(),
        }
    }
}

impl Fixture {
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read fixture {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("invalid fixture {}", path.display()))
    }

    pub fn parse(text: &str) -> Result<Self> {
        let fixture: Fixture = serde_json::from_str(text)?;
        for (index, step) in fixture.steps.iter().enumerate() {
            step.input()
                .with_context(|| format!("step {}", index + 1))?;
        }
        Ok(fixture)
    }

    /// Settings as the plugin receives them: every value as text.
    pub fn settings_as_text(&self) -> Pairs {
        self.settings
            .iter()
            .map(|(name, value)| (name.clone(), text(value)))
            .collect()
    }
}

impl Step {
    /// The step's one input; an error when it has none or several.
    pub fn input(&self) -> Result<StepInput> {
        let mut inputs = Vec::new();
        if let Some(webhook) = &self.webhook {
            inputs.push(StepInput::Webhook(HttpRequest {
                method: webhook.method.to_ascii_uppercase(),
                path: webhook.path.clone(),
                query: webhook.query.clone(),
                params: pairs(&webhook.params, false),
                headers: pairs(&webhook.headers, true),
                body: body(webhook.body.as_ref()),
            }));
        }
        if let Some(event) = &self.event {
            inputs.push(StepInput::Event(event.clone()));
        }
        if let Some(response) = &self.response {
            let outcome = match &response.transport_error {
                Some(error) => DeliveryOutcome::TransportError(error.clone()),
                None => DeliveryOutcome::Response(HttpResponse {
                    status: response.status,
                    headers: pairs(&response.headers, true),
                    body: body(response.body.as_ref()),
                }),
            };
            let delivery = DeliveryRef {
                idempotency_key: response.key.clone(),
                attempt: response.attempt,
            };
            inputs.push(StepInput::Response(delivery, outcome));
        }
        if self.tick.is_some() {
            inputs.push(StepInput::Tick);
        }
        if inputs.len() != 1 {
            bail!(
                "a step needs exactly one of `webhook`, `event`, `response` or `tick`; \
                 this one has {}",
                inputs.len()
            );
        }
        Ok(inputs.remove(0))
    }

    /// The clock this step sets, if it sets one.
    pub fn clock(&self) -> Option<u64> {
        self.now_ms
            .or(self.tick.as_ref().and_then(|tick| tick.now_ms))
    }
}

/// A value as text: strings as they are, anything else as JSON.
fn text(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

fn body(value: Option<&Value>) -> Vec<u8> {
    value.map(text).unwrap_or_default().into_bytes()
}

fn pairs(map: &BTreeMap<String, String>, lower_case_names: bool) -> Pairs {
    map.iter()
        .map(|(name, value)| {
            let name = if lower_case_names {
                name.to_ascii_lowercase()
            } else {
                name.clone()
            };
            (name, value.clone())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_every_kind_of_step() {
        let fixture = Fixture::parse(
            r#"{
              "settings": { "api_key": "k", "retry": 10, "services": ["tg"] },
              "steps": [
                { "webhook": { "method": "post", "path": "/api/k/webhook",
                               "params": { "key": "k" }, "headers": { "X-Id": "1" },
                               "body": { "type": "recv-sms" } },
                  "expect": { "reply": { "status": 200 } } },
                { "event": { "SimStatusChanged": { "state": "NoSim" } } },
                { "response": { "key": "push/1", "body": "{\"status\":\"SUCCESS\"}" } },
                { "response": { "key": "push/1", "attempt": 2, "transport_error": "refused" } },
                { "tick": { "now_ms": 5 } }
              ]
            }"#,
        )
        .unwrap();
        assert_eq!(
            fixture.settings_as_text(),
            [
                ("api_key".to_string(), "k".to_string()),
                ("retry".into(), "10".into()),
                ("services".into(), r#"["tg"]"#.into()),
            ]
        );
        let inputs: Vec<String> = fixture
            .steps
            .iter()
            .map(|step| step.input().unwrap().summary())
            .collect();
        assert_eq!(
            inputs,
            [
                "webhook POST /api/k/webhook",
                "event sim-status-changed",
                r#"response to push/1 (attempt 1): HTTP 200: {"status":"SUCCESS"}"#,
                "response to push/1 (attempt 2): transport error: refused",
                "tick",
            ]
        );
        let StepInput::Webhook(request) = fixture.steps[0].input().unwrap() else {
            panic!("a webhook");
        };
        assert_eq!(request.body, br#"{"type":"recv-sms"}"#);
        assert_eq!(request.headers, [("x-id".to_string(), "1".to_string())]);
        assert_eq!(fixture.steps[4].clock(), Some(5));
        assert_eq!(fixture.now_ms, DEFAULT_START_MS);
    }

    #[test]
    fn a_step_needs_exactly_one_input() {
        let error = Fixture::parse(r#"{"steps":[{"tick":{}},{"tick":{},"event":null}, {}]}"#)
            .map(|_| ())
            .unwrap_err();
        assert_eq!(
            format!("{error:#}"),
            "step 3: a step needs exactly one of `webhook`, `event`, `response` or `tick`; \
             this one has 0"
        );
        let error = Fixture::parse(r#"{"steps":[{"tick":{},"expcet":{}}]}"#).unwrap_err();
        assert!(
            format!("{error:#}").contains("unknown field `expcet`"),
            "{error:#}"
        );
    }
}
