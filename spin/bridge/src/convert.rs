//! The plugin's interface types, as `wit-bindgen` generates them for the bridge's imports,
//! converted field for field into the host-owned types of `simrelay_core::model` with the
//! conversion macros the host uses for its own bindings.

use simrelay_core::{records, variants};

use crate::bindings::simrelay::adapter::types as wit;

records! { both:
    wit::CallContext => CallContext { instance, settings, store, shared_stores, message_id, now_ms }
    wit::HttpRequest => HttpRequest { method, path, query, params, headers, body }
    wit::HttpReply => HttpReply { status, headers, body }
    wit::ReceivedMessage => ReceivedMessage {
        id, sender, recipient, text, kind, received_at_ms, device, port, iccid, imsi, code
    }
    wit::SimStatus => SimStatus {
        device, port, number, iccid, imsi, state, detail, active, operator, signal, balance,
        slot_active
    }
    wit::SendRequest => SendRequest { id, to, text, device, sim, send_at_ms, urgent }
    wit::DeliveryStatus => DeliveryStatus { id, state, detail, recipient }
    wit::DeliveryHealth => DeliveryHealth {
        instance, destination, consecutive_failures, pending, last_error
    }
    wit::OutgoingRequest => OutgoingRequest { method, url, headers, body, timeout_ms }
    wit::Delivery => Delivery { idempotency_key, request }
    wit::DeliveryRef => DeliveryRef { idempotency_key, attempt }
    wit::HttpResponse => HttpResponse { status, headers, body }
    wit::Effects => Effects { events, deliveries }
    wit::WebhookOutcome => WebhookOutcome { reply, effects }
    wit::ResponseOutcome => ResponseOutcome { verdict, effects }
    wit::SettingSpec => SettingSpec { name, description, required, secret }
    wit::StoreSpec => StoreSpec { name, description, required }
    wit::WebhookKey => WebhookKey { source, setting, rejection }
    wit::Descriptor => Descriptor {
        name, version, api_version, capabilities, settings, stores, webhook_key
    }
}

variants! { both:
    wit::MessageKind => MessageKind { Sms, FlashCall, Voice }
    wit::SimState => SimState {
        NoSim, Idle, Registering, Registered, CallConnected, NoBalance, RegistrationFailed,
        LockedByDevice, LockedByOperator, SimError, CardDetected, UserLocked, AccessingNetwork,
        ModuleTimeout, Unknown
    }
    wit::DeliveryState => DeliveryState { Pending, Sent, Delivered, Failed }
    wit::Event => Event {
        MessageReceived(x), SimStatusChanged(x), SendSms(x), DeliveryStatusChanged(x),
        DeliveryHealth(x)
    }
    wit::DeliveryOutcome => DeliveryOutcome { Response(x), TransportError(x) }
    wit::Verdict => Verdict { Delivered, Retry, RetryAfterMs(x), GiveUp(x) }
    wit::Capability => Capability { Webhook, Events, Tick, Send }
    wit::KeySource => KeySource { Capture(x), Header(x), Query(x) }
}

#[cfg(test)]
mod tests {
    use simrelay_core::convert::Conv;
    use simrelay_core::model::*;

    use super::wit;

    #[test]
    fn every_event_survives_the_trip_through_the_bindings() {
        let events = vec![
            Event::MessageReceived(ReceivedMessage {
                id: "m1".into(),
                sender: "BankInfo".into(),
                recipient: "79001234567".into(),
                text: "Hello World".into(),
                kind: MessageKind::FlashCall,
                received_at_ms: Some(1_698_400_800_000),
                device: Some("00:1A:2B:3C:4D:5E".into()),
                port: Some("1.01".into()),
                iccid: Some("8970100000000000001".into()),
                imsi: None,
                code: Some("5015".into()),
            }),
            Event::SimStatusChanged(SimStatus {
                device: None,
                port: Some("1B".into()),
                number: Some("79001234567".into()),
                iccid: None,
                imsi: Some("250010000000001".into()),
                state: SimState::ModuleTimeout,
                detail: Some("16 module timeout".into()),
                active: Some(true),
                operator: Some("MTS".into()),
                signal: Some(-3),
                balance: None,
                slot_active: Some(false),
            }),
            Event::SendSms(SendRequest {
                id: "s".into(),
                to: "+100".into(),
                text: "hi".into(),
                device: None,
                sim: Some("2".into()),
                send_at_ms: Some(5),
                urgent: true,
            }),
            Event::DeliveryStatusChanged(DeliveryStatus {
                id: "s".into(),
                state: DeliveryState::Failed,
                detail: Some("8 not delivered".into()),
                recipient: None,
            }),
            Event::DeliveryHealth(DeliveryHealth {
                instance: "bower".into(),
                destination: "smsbower.online:443".into(),
                consecutive_failures: 4,
                pending: 2,
                last_error: Some("HTTP 502".into()),
            }),
        ];
        for event in events {
            let through: wit::Event = event.clone().conv();
            let back: Event = through.conv();
            assert_eq!(back, event);
        }
    }

    #[test]
    fn calls_and_answers_keep_every_field() {
        let ctx = CallContext {
            instance: "bower".into(),
            settings: vec![("api_key".into(), "k".into())],
            store: "bower".into(),
            shared_stores: vec![("inventory".into(), "farm".into())],
            message_id: "m".into(),
            now_ms: 7,
        };
        let through: wit::CallContext = ctx.clone().conv();
        assert_eq!(Conv::<CallContext>::conv(through), ctx);

        let outcome = DeliveryOutcome::Response(HttpResponse {
            status: 429,
            headers: vec![("retry-after".into(), "3".into())],
            body: vec![0xff, b'{'],
        });
        let through: wit::DeliveryOutcome = outcome.clone().conv();
        assert_eq!(Conv::<DeliveryOutcome>::conv(through), outcome);

        let judged = wit::ResponseOutcome {
            verdict: wit::Verdict::RetryAfterMs(10_000),
            effects: wit::Effects {
                events: Vec::new(),
                deliveries: vec![wit::Delivery {
                    idempotency_key: "push/1".into(),
                    request: wit::OutgoingRequest {
                        method: "POST".into(),
                        url: "https://smsbower.online/agent/api/sms".into(),
                        headers: Vec::new(),
                        body: b"a=1".to_vec(),
                        timeout_ms: Some(5_000),
                    },
                }],
            },
        };
        let judged: ResponseOutcome = judged.conv();
        assert_eq!(judged.verdict, Verdict::RetryAfterMs(10_000));
        assert_eq!(judged.effects.deliveries[0].request.timeout_ms, Some(5_000));
        assert_eq!(judged.effects.deliveries[0].request.body, b"a=1");

        let descriptor = wit::Descriptor {
            name: "ejoin".into(),
            version: "1.0.0".into(),
            api_version: "0.2.0".into(),
            capabilities: vec![wit::Capability::Webhook, wit::Capability::Tick],
            settings: Vec::new(),
            stores: Vec::new(),
            webhook_key: Some(wit::WebhookKey {
                source: wit::KeySource::Capture("key".into()),
                setting: "api_key".into(),
                rejection: wit::HttpReply {
                    status: 401,
                    headers: Vec::new(),
                    body: br#"{"message":"Bad Api Key"}"#.to_vec(),
                },
            }),
        };
        let descriptor: Descriptor = descriptor.conv();
        assert_eq!(
            descriptor.capabilities,
            [Capability::Webhook, Capability::Tick]
        );
        assert_eq!(
            descriptor.webhook_key.unwrap().source,
            KeySource::Capture("key".into())
        );
    }
}
