//! Fakes of the bridge's I/O, for native tests: a store that behaves as Spin's (counters
//! are little-endian i64, replace compares whole values), a plugin made of closures, a
//! network that records what it was asked, and a settable clock.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, VecDeque};

use simrelay_core::model::{
    CallContext, DeliveryOutcome, DeliveryRef, Descriptor, Effects, Event, HttpReply, HttpRequest,
    HttpResponse, OutgoingRequest, ResponseOutcome, WebhookOutcome,
};

use crate::handler::{Io, handle};
use crate::io::{Environment, Network, Plugin, Sent, Store};
use crate::relay::Envelope;
use crate::request::Incoming;

#[derive(Default)]
pub struct MemoryStore {
    pub entries: RefCell<BTreeMap<String, Vec<u8>>>,
    /// Writes to keys with this prefix fail, as a store that is down would.
    pub failing_prefix: RefCell<Option<String>>,
    /// The next `replace` finds the value changed, as when another request took it first.
    pub changed_before_replace: Cell<bool>,
}

impl MemoryStore {
    fn check(&self, key: &str) -> Result<(), String> {
        match &*self.failing_prefix.borrow() {
            Some(prefix) if key.starts_with(prefix.as_str()) => Err("store unavailable".into()),
            _ => Ok(()),
        }
    }

    pub fn keys_with(&self, prefix: &str) -> Vec<String> {
        self.entries
            .borrow()
            .keys()
            .filter(|key| key.starts_with(prefix))
            .cloned()
            .collect()
    }

    pub fn json<T: serde::de::DeserializeOwned>(&self, key: &str) -> T {
        serde_json::from_slice(&self.entries.borrow()[key]).unwrap()
    }
}

impl Store for MemoryStore {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, String> {
        Ok(self.entries.borrow().get(key).cloned())
    }

    fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>, String> {
        keys.iter().map(|key| self.get(key)).collect()
    }

    fn set(&self, key: &str, value: &[u8]) -> Result<(), String> {
        self.check(key)?;
        self.entries
            .borrow_mut()
            .insert(key.to_string(), value.to_vec());
        Ok(())
    }

    fn delete(&self, key: &str) -> Result<(), String> {
        self.check(key)?;
        self.entries.borrow_mut().remove(key);
        Ok(())
    }

    fn increment(&self, key: &str, delta: i64) -> Result<i64, String> {
        self.check(key)?;
        let mut entries = self.entries.borrow_mut();
        let current = entries
            .get(key)
            .map(|bytes| i64::from_le_bytes(bytes.as_slice().try_into().unwrap()))
            .unwrap_or(0);
        entries.insert(key.to_string(), (current + delta).to_le_bytes().to_vec());
        Ok(current + delta)
    }

    fn keys(&self) -> Result<Vec<String>, String> {
        Ok(self.entries.borrow().keys().cloned().collect())
    }

    fn replace(&self, key: &str, expected: &[u8], new: &[u8]) -> Result<bool, String> {
        self.check(key)?;
        let mut entries = self.entries.borrow_mut();
        if self.changed_before_replace.replace(false)
            && let Some(value) = entries.get_mut(key)
        {
            value.push(b' ');
        }
        if entries.get(key).map(Vec::as_slice) != Some(expected) {
            return Ok(false);
        }
        entries.insert(key.to_string(), new.to_vec());
        Ok(true)
    }
}

type WebhookFn = dyn Fn(&CallContext, HttpRequest) -> Result<WebhookOutcome, String>;
type EventFn = dyn Fn(&CallContext, Event) -> Result<Effects, String>;
type ResponseFn =
    dyn Fn(&CallContext, DeliveryRef, DeliveryOutcome) -> Result<ResponseOutcome, String>;
type TickFn = dyn Fn(&CallContext) -> Result<Effects, String>;

/// A plugin made of closures; every call is recorded.
pub struct ScriptedPlugin {
    pub descriptor: Descriptor,
    pub webhook: Box<WebhookFn>,
    pub event: Box<EventFn>,
    pub response: Box<ResponseFn>,
    pub tick: Box<TickFn>,
    pub calls: RefCell<Vec<String>>,
}

impl ScriptedPlugin {
    pub fn new(descriptor: Descriptor) -> Self {
        ScriptedPlugin {
            descriptor,
            webhook: Box::new(|_, _| Ok(reply_ok(Effects::none()))),
            event: Box::new(|_, _| Ok(Effects::none())),
            response: Box::new(|_, _, _| Err("no response expected".into())),
            tick: Box::new(|_| Ok(Effects::none())),
            calls: RefCell::default(),
        }
    }

    pub fn calls(&self) -> Vec<String> {
        self.calls.borrow().clone()
    }
}

pub fn reply_ok(effects: Effects) -> WebhookOutcome {
    WebhookOutcome {
        reply: HttpReply::json(200, &serde_json::json!({ "message": "Ok" })),
        effects,
    }
}

impl Plugin for ScriptedPlugin {
    fn describe(&self) -> Descriptor {
        self.descriptor.clone()
    }

    fn on_webhook(
        &self,
        ctx: &CallContext,
        request: HttpRequest,
    ) -> Result<WebhookOutcome, String> {
        self.calls.borrow_mut().push("webhook".into());
        (self.webhook)(ctx, request)
    }

    fn on_event(&self, ctx: &CallContext, event: Event) -> Result<Effects, String> {
        self.calls
            .borrow_mut()
            .push(format!("event {}", event.kind()));
        (self.event)(ctx, event)
    }

    fn on_response(
        &self,
        ctx: &CallContext,
        delivery: DeliveryRef,
        outcome: DeliveryOutcome,
    ) -> Result<ResponseOutcome, String> {
        self.calls.borrow_mut().push(format!(
            "response {} #{}",
            delivery.idempotency_key, delivery.attempt
        ));
        (self.response)(ctx, delivery, outcome)
    }

    fn on_tick(&self, ctx: &CallContext) -> Result<Effects, String> {
        self.calls.borrow_mut().push("tick".into());
        (self.tick)(ctx)
    }
}

/// Answers deliveries from a script (then 200 SUCCESS) and events with each target's
/// status (200 unless set).
#[derive(Default)]
pub struct FakeNetwork {
    pub sent: RefCell<Vec<OutgoingRequest>>,
    pub answers: RefCell<VecDeque<Sent>>,
    pub forwarded: RefCell<Vec<(String, Envelope)>>,
    pub downstream_status: RefCell<BTreeMap<String, u16>>,
}

impl FakeNetwork {
    pub fn answer(&self, status: u16, body: &str) {
        self.answers
            .borrow_mut()
            .push_back(Sent::Made(DeliveryOutcome::Response(HttpResponse {
                status,
                headers: Vec::new(),
                body: body.as_bytes().to_vec(),
            })));
    }

    pub fn sent_keys(&self) -> usize {
        self.sent.borrow().len()
    }
}

impl Network for FakeNetwork {
    fn send(&self, request: &OutgoingRequest) -> Sent {
        self.sent.borrow_mut().push(request.clone());
        self.answers.borrow_mut().pop_front().unwrap_or_else(|| {
            Sent::Made(DeliveryOutcome::Response(HttpResponse {
                status: 200,
                headers: Vec::new(),
                body: br#"{"status":"SUCCESS"}"#.to_vec(),
            }))
        })
    }

    fn forward(&self, component: &str, path: &str, body: &[u8]) -> Result<HttpResponse, String> {
        assert_eq!(path, crate::request::EVENT_PATH);
        let envelope: Envelope = serde_json::from_slice(body).unwrap();
        self.forwarded
            .borrow_mut()
            .push((component.to_string(), envelope));
        let status = self
            .downstream_status
            .borrow()
            .get(component)
            .copied()
            .unwrap_or(200);
        Ok(HttpResponse {
            status,
            headers: Vec::new(),
            body: b"{}".to_vec(),
        })
    }
}

pub struct FakeEnv {
    pub now: Cell<u64>,
    pub variables: RefCell<Vec<(String, String)>>,
    pub logs: RefCell<Vec<String>>,
    messages: Cell<u64>,
}

impl FakeEnv {
    pub fn new(variables: &[(&str, &str)]) -> Self {
        FakeEnv {
            now: Cell::new(1_700_000_000_000),
            variables: RefCell::new(
                variables
                    .iter()
                    .map(|(name, value)| (name.to_string(), value.to_string()))
                    .collect(),
            ),
            logs: RefCell::default(),
            messages: Cell::new(0),
        }
    }

    pub fn advance_ms(&self, ms: u64) {
        self.now.set(self.now.get() + ms);
    }

    pub fn logs(&self) -> String {
        self.logs.borrow().join("\n")
    }
}

impl Environment for FakeEnv {
    fn now_ms(&self) -> u64 {
        self.now.get()
    }

    fn random(&self) -> f64 {
        0.0
    }

    fn random_u64(&self) -> u64 {
        self.messages.set(self.messages.get() + 1);
        self.messages.get() << 32
    }

    fn new_message_id(&self) -> String {
        self.messages.set(self.messages.get() + 1);
        format!("m{}", self.messages.get())
    }

    fn log(&self, line: &str) {
        self.logs.borrow_mut().push(line.to_string());
    }

    fn variables(&self) -> Result<Vec<(String, String)>, String> {
        Ok(self.variables.borrow().clone())
    }
}

/// One component: its store, plugin, network and environment.
pub struct Rig {
    pub store: MemoryStore,
    pub plugin: ScriptedPlugin,
    pub network: FakeNetwork,
    pub env: FakeEnv,
}

impl Rig {
    pub fn new(plugin: ScriptedPlugin, variables: &[(&str, &str)]) -> Self {
        Rig {
            store: MemoryStore::default(),
            plugin,
            network: FakeNetwork::default(),
            env: FakeEnv::new(variables),
        }
    }

    pub fn handle(&self, incoming: Incoming) -> HttpReply {
        handle(
            &Io {
                store: &self.store,
                plugin: &self.plugin,
                network: &self.network,
                env: &self.env,
            },
            incoming,
        )
    }
}

/// A request from the network (not chained) to `path`.
pub fn from_outside(method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Incoming {
    let mut headers: Vec<(String, String)> = headers
        .iter()
        .map(|(name, value)| (name.to_string(), value.to_string()))
        .collect();
    headers.push(("spin-client-addr".into(), "127.0.0.1:41000".into()));
    Incoming {
        method: method.into(),
        path: path.into(),
        query: String::new(),
        headers,
        body: body.as_bytes().to_vec(),
    }
}

/// An event another component POSTs through service chaining.
pub fn chained_event(envelope: &Envelope) -> Incoming {
    Incoming {
        method: "POST".into(),
        path: crate::request::EVENT_PATH.into(),
        query: String::new(),
        headers: vec![
            ("content-type".into(), "application/json".into()),
            ("spin-client-addr".into(), "0.0.0.0:0".into()),
        ],
        body: serde_json::to_vec(envelope).unwrap(),
    }
}

pub fn body_json(reply: &HttpReply) -> serde_json::Value {
    serde_json::from_slice(&reply.body).unwrap()
}
