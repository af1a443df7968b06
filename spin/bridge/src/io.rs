//! Everything the bridge's logic asks of the outside world, as traits: the wasm shell
//! implements them with Spin's interfaces, and the native tests with fakes.

use simrelay_core::model::{
    CallContext, DeliveryOutcome, DeliveryRef, Descriptor, Effects, Event, HttpRequest,
    HttpResponse, OutgoingRequest, ResponseOutcome, WebhookOutcome,
};

/// The instance's own key-value store (its Spin label), where the bridge keeps its records.
pub trait Store {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, String>;
    /// The values of `keys`, in the same order.
    fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>, String>;
    fn set(&self, key: &str, value: &[u8]) -> Result<(), String>;
    fn delete(&self, key: &str) -> Result<(), String>;
    /// Adds `delta` to the counter at `key` atomically and returns its new value.
    fn increment(&self, key: &str, delta: i64) -> Result<i64, String>;
    /// Every key in the store.
    fn keys(&self) -> Result<Vec<String>, String>;
    /// Replaces the value at `key` with `new` only while it still is `expected`; `false`
    /// when someone changed it in between.
    fn replace(&self, key: &str, expected: &[u8], new: &[u8]) -> Result<bool, String>;
}

/// The plugin the component depends on, in host-owned types.
pub trait Plugin {
    fn describe(&self) -> Descriptor;
    fn on_webhook(&self, ctx: &CallContext, request: HttpRequest)
    -> Result<WebhookOutcome, String>;
    fn on_event(&self, ctx: &CallContext, event: Event) -> Result<Effects, String>;
    fn on_response(
        &self,
        ctx: &CallContext,
        delivery: DeliveryRef,
        outcome: DeliveryOutcome,
    ) -> Result<ResponseOutcome, String>;
    fn on_tick(&self, ctx: &CallContext) -> Result<Effects, String>;
}

/// What became of one attempt to send a delivery.
#[derive(Clone, Debug, PartialEq)]
pub enum Sent {
    /// The request was made: a response, or an error on the way (timeout, refused
    /// connection). Redirects are not followed and the body is cut at
    /// [`crate::MAX_RESPONSE_BODY`].
    Made(DeliveryOutcome),
    /// Spin refused to make it: the URL's host is not in the component's
    /// `allowed_outbound_hosts`.
    Refused(String),
}

/// Outbound HTTP.
pub trait Network {
    /// Makes one attempt of a delivery.
    fn send(&self, request: &OutgoingRequest) -> Sent;
    /// POSTs JSON `body` to `path` of another component of the application through local
    /// service chaining, and returns its answer (the body cut as for deliveries).
    fn forward(&self, component: &str, path: &str, body: &[u8]) -> Result<HttpResponse, String>;
}

/// Time, randomness, logs and the component's variables.
pub trait Environment {
    /// Wall-clock milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;
    /// A uniform draw from [0, 1).
    fn random(&self) -> f64;
    /// A random number, for record ids.
    fn random_u64(&self) -> u64;
    /// A new id for an input from outside, logged with everything it causes.
    fn new_message_id(&self) -> String;
    /// Writes one line to the component's log. Callers remove secrets first.
    fn log(&self, line: &str);
    /// The component's variables, by name.
    fn variables(&self) -> Result<Vec<(String, String)>, String>;
}
