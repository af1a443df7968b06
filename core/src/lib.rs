//! simrelay's pure logic, shared by the wasmtime host and the Spin bridge.
//!
//! Nothing here performs I/O, reads a clock or depends on wasmtime, a database or an async
//! runtime: time and randomness are inputs, so every rule is unit-tested on its own.
//!
//! - [`model`]: the host-owned types of everything that crosses the plugin interface;
//! - [`routing`]: webhook route patterns;
//! - [`retry`]: delivery states and retry policies;
//! - [`auth`]: webhook keys checked before a plugin is called;
//! - [`relay`]: stored deliveries and events, and what a call's outcome does to them;
//! - [`fan_out`]: which instances an instance's events go to;
//! - [`redact`]: secrets kept out of logs and error messages;
//! - [`convert`]: conversions between generated bindings and [`model`].

pub mod auth;
pub mod convert;
pub mod model;
pub mod redact;
pub mod relay;
pub mod retry;
pub mod routing;

use model::Event;

/// Every event for every downstream instance, in order: each target gets its own copy.
pub fn fan_out(events: Vec<Event>, forward_to: &[String]) -> Vec<(String, Event)> {
    events
        .into_iter()
        .flat_map(|event| {
            forward_to
                .iter()
                .map(move |target| (target.clone(), event.clone()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use model::{DeliveryState, DeliveryStatus};

    #[test]
    fn fan_out_gives_each_target_each_event_in_order() {
        let event = |id: &str| {
            Event::DeliveryStatusChanged(DeliveryStatus {
                id: id.into(),
                state: DeliveryState::Sent,
                detail: None,
                recipient: None,
            })
        };
        let targets = ["a".to_string(), "b".to_string()];
        let routed = fan_out(vec![event("1"), event("2")], &targets);
        let order: Vec<(&str, &Event)> = routed.iter().map(|(t, e)| (t.as_str(), e)).collect();
        assert_eq!(
            order,
            [
                ("a", &event("1")),
                ("b", &event("1")),
                ("a", &event("2")),
                ("b", &event("2"))
            ]
        );
        assert!(fan_out(vec![event("1")], &[]).is_empty());
    }
}
