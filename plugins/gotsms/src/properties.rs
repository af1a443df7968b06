//! Property tests: whatever GotSMS answers, the plugin judges it with a verdict that explains
//! a failure, and never panics or fails internally.

use proptest::prelude::*;
use proptest::sample::select;
use simrelay_sdk::testing::{body, text};
use simrelay_sdk::{
    Adapter, CallContext, DeliveryOutcome, DeliveryRef, HttpResponse, Stores, Verdict,
};

use crate::GotSms;

const FIELDS: &[&str] = &["success", "data", "meta"];
const WORDS: &[&str] = &[
    "success",
    "data",
    "meta",
    "id",
    "rent_id",
    "from",
    "to",
    "phone",
    "body",
    "code",
    "received_at",
    "current_page",
    "last_page",
    "next_before_id",
    "message",
    "1",
    "0",
    "true",
    "2026-03-11T12:00:00+00:00",
];
const HEADERS: &[&str] = &[
    "retry-after",
    "x-ratelimit-remaining",
    "x-ratelimit-reset",
    "x-ratelimit-limit",
];
const KEYS: &[&str] = &[
    "unread/1",
    "mark-read/1",
    "history/1/1/r",
    "history/1/9/r",
    "junk",
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn every_answer_gets_a_verdict(
        key in select(KEYS),
        status in prop_oneof![Just(200u16), Just(429), Just(401), Just(500), 100u16..600],
        headers in proptest::collection::vec((select(HEADERS), text(WORDS)), 0..4),
        body in body(FIELDS, WORDS),
        now in any::<u64>(),
    ) {
        let kv = Stores::memory();
        let ctx = CallContext { now_ms: now, ..CallContext::for_tests(&[("api_token", "t")]) };
        let response = HttpResponse {
            status,
            headers: headers.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
            body,
        };
        let delivery = DeliveryRef { idempotency_key: key.into(), attempt: 1 };
        let outcome = GotSms::on_response(&ctx, &kv, delivery, DeliveryOutcome::Response(response))
            .expect("no internal error");
        if let Verdict::GiveUp(reason) = &outcome.verdict {
            prop_assert!(!reason.is_empty());
        }
        prop_assert!(GotSms::on_tick(&ctx, &kv).is_ok());
    }
}
