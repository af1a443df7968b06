//! Property tests: whatever SmsGateway24 (or anyone with the webhook key) sends, and whatever
//! the service answers, the plugin replies or judges with an explanation, and never panics or
//! fails internally.

use proptest::prelude::*;
use proptest::sample::select;
use serde_json::Value;
use simrelay_sdk::encoding::form_encode;
use simrelay_sdk::testing::{body, text};
use simrelay_sdk::{
    Adapter, CallContext, DeliveryOutcome, DeliveryRef, Event, HttpRequest, HttpResponse,
    SendRequest, Stores, Verdict,
};

use crate::SmsGateway24;

const FIELDS: &[&str] = &["address", "body", "sms_id", "status_id", "device_id"];
const WORDS: &[&str] = &[
    "address",
    "body",
    "date",
    "sms_id",
    "device_id",
    "channel_id",
    "status_id",
    "status_message",
    "sendto",
    "error",
    "message",
    "token",
    "smss",
    "status",
    "statustitle",
    "deviceid",
    "customerid",
    "created",
    "timezone",
    "UTC",
    "device",
    "siminfo",
    "Slot",
    "Number",
    "IccId",
    "lastseen",
    "id",
    "sms_ids",
    "status_description",
    "1",
    "0",
    "5",
    "7",
    " 15555215554",
];
const KEYS: &[&str] = &[
    "gettoken/1",
    "addsms/1/s1",
    "addalotofsms/1",
    "getsmsstatus/1/s1",
    "findsms/1/s1",
    "getallsms/1",
    "getalldevices/1",
    "junk",
];

fn ctx(now_ms: u64) -> CallContext {
    CallContext {
        now_ms,
        ..CallContext::for_tests(&[
            ("email", "e"),
            ("password", "p"),
            ("webhook_key", "k"),
            ("device_id", "1"),
        ])
    }
}

/// A form body with the webhook fields set to anything.
fn form_body() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec((select(WORDS), text(WORDS)), 0..8)
        .prop_map(|pairs| form_encode(&pairs).into_bytes())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn every_webhook_gets_an_explaining_reply(
        body in prop_oneof![body(FIELDS, WORDS), form_body()],
        query in proptest::collection::vec((select(WORDS), text(WORDS)), 0..3),
    ) {
        let request = HttpRequest {
            method: "POST".into(),
            path: "/sg24/k".into(),
            query: form_encode(&query),
            params: vec![("key".into(), "k".into())],
            headers: Vec::new(),
            body,
        };
        let outcome = SmsGateway24::on_webhook(&ctx(1), &Stores::memory(), request)
            .expect("bad input is no internal error");
        let reply: Value = serde_json::from_slice(&outcome.reply.body).expect("JSON reply");
        prop_assert!(outcome.reply.status == 200 || outcome.reply.status == 400);
        prop_assert!(!reply["message"].as_str().unwrap_or_default().is_empty());
    }

    #[test]
    fn every_answer_gets_a_verdict(
        key in select(KEYS),
        status in prop_oneof![Just(200u16), Just(429), Just(401), Just(500), 100u16..600],
        body in body(&["error", "message", "token", "smss", "device"], WORDS),
        now in any::<u64>(),
        queued in any::<bool>(),
    ) {
        let kv = Stores::memory();
        if queued {
            let request = SendRequest { id: "s1".into(), to: "+1".into(), text: "t".into(),
                device: None, sim: None, send_at_ms: Some(now), urgent: true };
            SmsGateway24::on_event(&ctx(now), &kv, Event::SendSms(request)).expect("queued");
        }
        let response = HttpResponse { status, headers: Vec::new(), body };
        let delivery = DeliveryRef { idempotency_key: key.into(), attempt: 1 };
        let outcome = SmsGateway24::on_response(&ctx(now), &kv, delivery, DeliveryOutcome::Response(response))
            .expect("no internal error");
        if let Verdict::GiveUp(reason) = &outcome.verdict {
            prop_assert!(!reason.is_empty());
        }
        prop_assert!(SmsGateway24::on_tick(&ctx(now), &kv).is_ok());
    }

    #[test]
    fn every_send_request_is_taken_or_refused(
        to in text(WORDS), message in ".{0,200}", device in proptest::option::of(text(WORDS)),
        sim in proptest::option::of(text(WORDS)), send_at_ms in proptest::option::of(any::<u64>()),
        urgent in any::<bool>(),
    ) {
        let request = SendRequest { id: "s".into(), to, text: message, device, sim, send_at_ms, urgent };
        prop_assert!(SmsGateway24::on_event(&ctx(1), &Stores::memory(), Event::SendSms(request)).is_ok());
    }
}
