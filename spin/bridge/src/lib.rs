//! The Spin bridge: serves one simrelay plugin instance as a Fermyon Spin component.
//!
//! Spin composes this component with the plugin (its dependency for the
//! `simrelay:adapter/adapter@0.2.0` import), so the identical plugin `.wasm` serves on
//! Spin and on the simrelay host. The bridge exports `wasi:http/incoming-handler` and does
//! for one instance what the host does for all of them: it checks webhook keys, calls the
//! plugin, passes events to the components downstream through local service chaining,
//! makes deliveries with outbound HTTP and keeps the ones to retry in the instance's own
//! key-value store until a scheduler calls the tick route.
//!
//! The wasm shell (`shell`, compiled for wasm32 only) is HTTP plumbing and key-value
//! calls; everything it decides lives in modules tested natively with fakes of [`io`]:
//! [`config`] (the component's variables), [`request`] (what a request is for),
//! [`handler`] (answers), [`relay`] (events, deliveries, retries) and [`ledger`] (what is
//! stored where, and when it is due). Routing patterns, fan-out, verdicts, retry
//! schedules, webhook keys and redaction are `simrelay-core`'s, shared with the host.

mod bindings;
pub mod config;
mod convert;
pub mod handler;
pub mod io;
pub mod ledger;
pub mod outbound;
pub mod relay;
pub mod request;
#[cfg(target_arch = "wasm32")]
mod shell;
#[cfg(test)]
mod testing;

/// Webhook bodies are read up to this, as the host's default `max_body_kib`; larger ones
/// get a 413.
pub const MAX_REQUEST_BODY: usize = 1024 * 1024;
/// Response bodies of deliveries are read up to this, as in the host; the rest is not read.
pub const MAX_RESPONSE_BODY: usize = 256 * 1024;
/// Per-attempt timeout of a delivery that names none, as in the host.
pub const DEFAULT_DELIVERY_TIMEOUT_MS: u32 = 10_000;
