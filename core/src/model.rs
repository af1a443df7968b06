//! The host's own types for everything that crosses the plugin interface.
//!
//! Each interface version's bindings convert into these at the call boundary, so the relay,
//! the database and the operator API never see generated code, and the stored format stays
//! put when the WIT moves on. They mirror the newest interface (see `wit/adapter.wit` for
//! what each field means). Fields added after 0.1.0 default when an older record is read.

use serde::{Deserialize, Serialize};

pub type Pairs = Vec<(String, String)>;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CallContext {
    pub instance: String,
    pub settings: Pairs,
    pub store: String,
    pub shared_stores: Pairs,
    pub message_id: String,
    pub now_ms: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct HttpRequest {
    pub method: String,
    pub path: String,
    pub query: String,
    pub params: Pairs,
    pub headers: Pairs,
    #[serde(with = "body")]
    pub body: Vec<u8>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct HttpReply {
    pub status: u16,
    pub headers: Pairs,
    #[serde(with = "body")]
    pub body: Vec<u8>,
}

impl HttpReply {
    pub fn json(status: u16, body: &serde_json::Value) -> Self {
        HttpReply {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: body.to_string().into_bytes(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MessageKind {
    Sms,
    FlashCall,
    Voice,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReceivedMessage {
    pub id: String,
    pub sender: String,
    pub recipient: String,
    pub text: String,
    pub kind: MessageKind,
    pub received_at_ms: Option<u64>,
    pub device: Option<String>,
    pub port: Option<String>,
    pub iccid: Option<String>,
    pub imsi: Option<String>,
    #[serde(default)]
    pub code: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SimState {
    NoSim,
    Idle,
    Registering,
    Registered,
    CallConnected,
    NoBalance,
    RegistrationFailed,
    LockedByDevice,
    LockedByOperator,
    SimError,
    CardDetected,
    UserLocked,
    AccessingNetwork,
    ModuleTimeout,
    Unknown,
}

impl SimState {
    /// Whether a SIM in this state can receive an SMS now.
    pub fn is_online(self) -> bool {
        matches!(self, SimState::Registered | SimState::CallConnected)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SimStatus {
    pub device: Option<String>,
    pub port: Option<String>,
    pub number: Option<String>,
    pub iccid: Option<String>,
    pub imsi: Option<String>,
    pub state: SimState,
    pub detail: Option<String>,
    pub active: Option<bool>,
    pub operator: Option<String>,
    pub signal: Option<i32>,
    pub balance: Option<String>,
    #[serde(default)]
    pub slot_active: Option<bool>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SendRequest {
    pub id: String,
    pub to: String,
    pub text: String,
    pub device: Option<String>,
    pub sim: Option<String>,
    #[serde(default)]
    pub send_at_ms: Option<u64>,
    #[serde(default)]
    pub urgent: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeliveryState {
    Pending,
    Sent,
    Delivered,
    Failed,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeliveryStatus {
    pub id: String,
    pub state: DeliveryState,
    pub detail: Option<String>,
    #[serde(default)]
    pub recipient: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeliveryHealth {
    pub instance: String,
    pub destination: String,
    pub consecutive_failures: u32,
    pub pending: u32,
    pub last_error: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Event {
    MessageReceived(ReceivedMessage),
    SimStatusChanged(SimStatus),
    SendSms(SendRequest),
    DeliveryStatusChanged(DeliveryStatus),
    DeliveryHealth(DeliveryHealth),
}

impl Event {
    /// The event's kind, as logs and metrics name it.
    pub fn kind(&self) -> &'static str {
        match self {
            Event::MessageReceived(_) => "message-received",
            Event::SimStatusChanged(_) => "sim-status-changed",
            Event::SendSms(_) => "send-sms",
            Event::DeliveryStatusChanged(_) => "delivery-status-changed",
            Event::DeliveryHealth(_) => "delivery-health",
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct OutgoingRequest {
    pub method: String,
    pub url: String,
    pub headers: Pairs,
    #[serde(with = "body")]
    pub body: Vec<u8>,
    pub timeout_ms: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Delivery {
    pub idempotency_key: String,
    pub request: OutgoingRequest,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeliveryRef {
    pub idempotency_key: String,
    pub attempt: u32,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Pairs,
    #[serde(with = "body")]
    pub body: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum DeliveryOutcome {
    Response(HttpResponse),
    TransportError(String),
}

impl DeliveryOutcome {
    /// One line for logs and the attempt log: status and the start of the body, or the error.
    pub fn summary(&self) -> String {
        match self {
            DeliveryOutcome::Response(response) => {
                let body = String::from_utf8_lossy(&response.body);
                let body: String = body.chars().take(200).collect();
                format!("HTTP {}: {}", response.status, body)
            }
            DeliveryOutcome::TransportError(error) => format!("transport error: {error}"),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Verdict {
    Delivered,
    Retry,
    RetryAfterMs(u64),
    GiveUp(String),
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Effects {
    pub events: Vec<Event>,
    pub deliveries: Vec<Delivery>,
}

impl Effects {
    pub fn none() -> Self {
        Effects::default()
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WebhookOutcome {
    pub reply: HttpReply,
    pub effects: Effects,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ResponseOutcome {
    pub verdict: Verdict,
    pub effects: Effects,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Capability {
    Webhook,
    Events,
    Tick,
    Send,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SettingSpec {
    pub name: String,
    pub description: String,
    pub required: bool,
    pub secret: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StoreSpec {
    pub name: String,
    pub description: String,
    pub required: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum KeySource {
    Capture(String),
    Header(String),
    Query(String),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WebhookKey {
    pub source: KeySource,
    pub setting: String,
    pub rejection: HttpReply,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Descriptor {
    pub name: String,
    pub version: String,
    pub api_version: String,
    pub capabilities: Vec<Capability>,
    pub settings: Vec<SettingSpec>,
    #[serde(default)]
    pub stores: Vec<StoreSpec>,
    #[serde(default)]
    pub webhook_key: Option<WebhookKey>,
}

/// Bodies are stored as text when they are UTF-8 (most are JSON) and as a list of bytes
/// otherwise; both forms are read back, as are the byte lists of older records.
mod body {
    use serde::de::{Deserializer, SeqAccess, Visitor};
    use serde::ser::Serializer;

    pub fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        match std::str::from_utf8(bytes) {
            Ok(text) => serializer.serialize_str(text),
            Err(_) => serializer.collect_seq(bytes),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
        struct Body;
        impl<'de> Visitor<'de> for Body {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a body as text or as a list of bytes")
            }
            fn visit_str<E>(self, text: &str) -> Result<Vec<u8>, E> {
                Ok(text.as_bytes().to_vec())
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
                let mut bytes = Vec::with_capacity(seq.size_hint().unwrap_or(0));
                while let Some(byte) = seq.next_element()? {
                    bytes.push(byte);
                }
                Ok(bytes)
            }
        }
        deserializer.deserialize_any(Body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_stored_as_text_when_they_can_be_and_read_in_either_form() {
        let text = OutgoingRequest {
            body: br#"{"a":1}"#.to_vec(),
            ..Default::default()
        };
        let json = serde_json::to_string(&text).unwrap();
        assert!(json.contains(r#""body":"{\"a\":1}""#), "{json}");
        assert_eq!(
            serde_json::from_str::<OutgoingRequest>(&json).unwrap(),
            text
        );

        let binary = OutgoingRequest {
            body: vec![0xff, 0, 1],
            ..Default::default()
        };
        let json = serde_json::to_string(&binary).unwrap();
        assert!(json.contains(r#""body":[255,0,1]"#), "{json}");
        assert_eq!(
            serde_json::from_str::<OutgoingRequest>(&json).unwrap(),
            binary
        );
    }

    #[test]
    fn records_written_before_0_2_still_read() {
        // As the 0.1 host stored a queued event: no `code`, body bytes as a list.
        let old = r#"{"MessageReceived":{"id":"m","sender":"s","recipient":"r","text":"t",
            "kind":"Sms","received_at_ms":null,"device":null,"port":null,"iccid":null,"imsi":null}}"#;
        let Event::MessageReceived(message) = serde_json::from_str(old).unwrap() else {
            panic!("a received message");
        };
        assert_eq!((message.text.as_str(), message.code), ("t", None));
        let request: OutgoingRequest = serde_json::from_str(
            r#"{"method":"POST","url":"u","headers":[],"body":[104,105],"timeout_ms":null}"#,
        )
        .unwrap();
        assert_eq!(request.body, b"hi");
    }
}
