//! Property tests: whatever a gateway (or anyone who knows the key) sends, the plugin answers
//! with a reply that says what happened, and never panics or fails internally.

use proptest::prelude::*;
use proptest::sample::select;
use serde_json::Value;
use simrelay_sdk::testing::{body, json, json_object_with};
use simrelay_sdk::{Adapter, CallContext, HttpRequest, Stores};

use crate::Ejoin;

const KEY: &str = "k";
const TYPES: &[&str] = &["recv-sms", "dev-status", "port-status", "status-report"];
const FIELDS: &[&str] = &["sms", "status", "rpts", "mac", "port", "st"];
const WORDS: &[&str] = &[
    "type",
    "recv-sms",
    "dev-status",
    "port-status",
    "status-report",
    "sms",
    "status",
    "rpts",
    "mac",
    "port",
    "st",
    "sn",
    "iccid",
    "imsi",
    "active",
    "opr",
    "sig",
    "bal",
    "slot_active",
    "tid",
    "sdr",
    "fdr",
    "sent",
    "failed",
    "1.01",
    "1B",
    "12.sp256.101",
    "0",
    "1",
    "3 registered",
    "SGVsbG8=",
    "0 231027100000",
    "",
];

fn webhook(kv: &Stores, now_ms: u64, body: Vec<u8>) -> (u16, String) {
    let ctx = CallContext {
        now_ms,
        ..CallContext::for_tests(&[("api_key", KEY), ("long_sms_window_secs", "1")])
    };
    let request = HttpRequest {
        method: "POST".into(),
        path: "/api/k/webhook".into(),
        query: String::new(),
        params: vec![("key".into(), KEY.into())],
        headers: Vec::new(),
        body,
    };
    let outcome = Ejoin::on_webhook(&ctx, kv, request).expect("bad input is no internal error");
    let reply: Value = serde_json::from_slice(&outcome.reply.body).expect("the reply is JSON");
    let message = reply["message"].as_str().expect("the reply has a message");
    (outcome.reply.status, message.to_owned())
}

/// A push of a known type whose other fields are anything.
fn typed_push() -> impl Strategy<Value = Vec<u8>> {
    (select(TYPES), json_object_with(FIELDS, WORDS)).prop_map(|(kind, mut object)| {
        object["type"] = Value::from(kind);
        object.to_string().into_bytes()
    })
}

/// A `recv-sms` push whose rows are lists of anything.
fn sms_rows() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(proptest::collection::vec(json(WORDS), 0..9), 0..6).prop_map(|rows| {
        serde_json::json!({ "type": "recv-sms", "sms": rows })
            .to_string()
            .into_bytes()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn every_body_gets_an_explaining_reply(
        bodies in proptest::collection::vec(prop_oneof![body(FIELDS, WORDS), typed_push(), sms_rows()], 1..4),
    ) {
        let kv = Stores::memory();
        for (n, body) in bodies.into_iter().enumerate() {
            let (status, message) = webhook(&kv, 1_700_000_000_000 + n as u64 * 1000, body);
            prop_assert!(status == 200 || status == 400, "{status} {message}");
            prop_assert!(!message.is_empty());
            prop_assert!(status == 400 || message == "Ok" || message.starts_with("Error: "));
        }
        let ctx = CallContext { now_ms: 1_700_000_100_000, ..CallContext::for_tests(&[("api_key", KEY)]) };
        prop_assert!(Ejoin::on_tick(&ctx, &kv).is_ok());
    }
}
