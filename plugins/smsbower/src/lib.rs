//! Adapter for the SmsBower partner protocol, marketplace side: pushes every received SMS to
//! SmsBower with `PUSH_SMS` until SmsBower answers SUCCESS.

mod push;

use simrelay_sdk::{
    Adapter, CallContext, Capability, DeliveryOutcome, DeliveryRef, Descriptor, Effects, Event,
    ResponseOutcome, SettingSpec, Stores,
};

pub struct SmsBower;

impl Adapter for SmsBower {
    fn describe() -> Descriptor {
        Descriptor {
            capabilities: vec![Capability::Events],
            settings: vec![
                SettingSpec::required("api_key", "partner key SmsBower issued").secret(),
                SettingSpec::required("base_url", "SmsBower server, e.g. https://smsbower.online"),
                SettingSpec::optional(
                    "retry_interval_secs",
                    "seconds between PUSH_SMS attempts until SmsBower answers SUCCESS (default 10)",
                ),
            ],
            ..Descriptor::new("smsbower", env!("CARGO_PKG_VERSION"))
        }
    }

    fn on_event(ctx: &CallContext, kv: &Stores, event: Event) -> Result<Effects, String> {
        match event {
            Event::MessageReceived(message) => push::on_message(ctx, kv, &message),
            _ => Ok(Effects::none()),
        }
    }

    fn on_response(
        ctx: &CallContext,
        kv: &Stores,
        delivery: DeliveryRef,
        outcome: DeliveryOutcome,
    ) -> Result<ResponseOutcome, String> {
        Ok(ResponseOutcome {
            verdict: push::verdict(ctx, kv, &delivery, &outcome)?,
            effects: Effects::none(),
        })
    }
}

simrelay_sdk::export_adapter!(SmsBower);

#[cfg(test)]
mod tests {
    use super::*;
    use simrelay_sdk::{DeliveryState, DeliveryStatus};

    #[test]
    fn describes_itself() {
        let descriptor = SmsBower::describe();
        assert_eq!(descriptor.name, "smsbower");
        assert_eq!(descriptor.version, env!("CARGO_PKG_VERSION"));
        assert_eq!(descriptor.api_version, simrelay_sdk::API_VERSION);
        assert!(matches!(descriptor.capabilities[..], [Capability::Events]));
        let settings: Vec<_> = descriptor
            .settings
            .iter()
            .map(|s| (s.name.as_str(), s.required, s.secret))
            .collect();
        assert_eq!(
            settings,
            [
                ("api_key", true, true),
                ("base_url", true, false),
                ("retry_interval_secs", false, false),
            ]
        );
    }

    #[test]
    fn other_events_cause_nothing() {
        let ctx = CallContext::for_tests(&[("api_key", "k"), ("base_url", "https://x")]);
        let event = Event::DeliveryStatusChanged(DeliveryStatus {
            id: "1".into(),
            state: DeliveryState::Sent,
            detail: None,
            recipient: None,
        });
        let effects = SmsBower::on_event(&ctx, &Stores::memory(), event).unwrap();
        assert!(effects.events.is_empty() && effects.deliveries.is_empty());
    }
}
