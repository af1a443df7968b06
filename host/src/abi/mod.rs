//! The plugin interface versions this host speaks.
//!
//! Each version has its own generated bindings. The newest is the host's canonical model:
//! the rest of the host works with its types, and an older version, when one exists, is
//! adapted to it at the call boundary (as Zed's extension host does).

pub mod v0_1;

pub use v0_1::exports::simrelay::adapter::adapter::{
    CallContext, DeliveryOutcome, DeliveryRef, Descriptor, Effects, Event, HttpRequest,
    ResponseOutcome, WebhookOutcome,
};
pub use v0_1::simrelay::adapter::types::{
    Capability, Delivery, HttpReply, HttpResponse, OutgoingRequest, Verdict,
};

/// Interface versions this host can load, newest first.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.1.0"];

/// The export name that identifies the adapter interface in a component.
pub const ADAPTER_INTERFACE: &str = "simrelay:adapter/adapter";

impl Effects {
    pub fn none() -> Self {
        Effects {
            events: Vec::new(),
            deliveries: Vec::new(),
        }
    }
}
