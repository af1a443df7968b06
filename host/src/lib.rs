//! simrelay: a WebAssembly plugin host that relays SMS between GSM gateways, Android SMS
//! gateways and SMS-activation marketplaces.
//!
//! Each provider is an adapter plugin: a sans-I/O component that turns inputs into outputs.
//! The host owns all I/O: it routes webhooks to plugins ([`server`]), passes their events
//! downstream and performs their HTTP deliveries durably ([`relay`], [`delivery`]), keeps
//! each instance's key-value state ([`kv`], [`db`]) and sandboxes every call ([`runtime`]),
//! speaking every supported interface version ([`abi`]). The rules that need no I/O live in
//! the `simrelay-core` crate, shared with the Spin bridge.

pub mod abi;
pub mod admin;
pub mod allocator;
pub mod config;
pub mod control;
pub mod db;
pub mod delivery;
pub mod deploy;
pub mod kit;
pub mod kv;
pub mod metrics;
pub mod queue;
pub mod redact;
pub mod relay;
pub mod runtime;
pub mod send;
pub mod server;
pub mod worker;

pub use simrelay_core::model;

/// Wall-clock milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64)
}
