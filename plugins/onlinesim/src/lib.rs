//! Adapter for Onlinesim's partner protocol, marketplace side: sells the SIM farm's numbers
//! (GET_SERVICES with an `any` operator, GET_NUMBER, FINISH_ACTIVATION) and pushes the SMS of
//! open activations as JSON with PUSH_SMS.
//!
//! The protocol lives in `simrelay-marketplace`; this crate holds what is Onlinesim's own.

use serde_json::json;
use simrelay_marketplace::answers::{describe, status_word};
use simrelay_marketplace::{Dialect, Marketplace, Push, PushAnswer};
use simrelay_sdk::{CallContext, DeliveryOutcome, OutgoingRequest, SettingSpec};

/// Onlinesim's dialect of the partner protocol.
pub struct OnlinesimDialect;

/// The plugin.
pub type Onlinesim = Marketplace<OnlinesimDialect>;

simrelay_sdk::export_adapter!(Onlinesim);

/// Answers that end a push for good: no active operation on the number (`NO_OPERATION`,
/// `NO_OP`), a service Onlinesim bans (`BAD_SERVICE`), a sender other than the service the
/// client ordered (`IGNORED`), a service the partner blacklisted (`SERVICE_BAN`).
const FINAL_ANSWERS: [&str; 5] = [
    "NO_OPERATION",
    "NO_OP",
    "BAD_SERVICE",
    "IGNORED",
    "SERVICE_BAN",
];

impl Dialect for OnlinesimDialect {
    const NAME: &'static str = "onlinesim";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    // SMSHub-family answers: number and activation id as JSON numbers.
    const NUMERIC_IDS: bool = true;
    const ANY_OPERATOR_TOTAL: bool = true;
    // Onlinesim's push has no call or voice field.
    const CALL_AND_VOICE: bool = false;

    fn settings() -> Vec<SettingSpec> {
        vec![SettingSpec::required(
            "push_url",
            "PUSH_SMS address Onlinesim partner support gives, e.g. https://…/v1/PUSH_SMS",
        )]
    }

    /// JSON with `Content-Type: application/json; charset=utf-8`, as Onlinesim requires.
    fn push_request(ctx: &CallContext, push: &Push) -> Result<OutgoingRequest, String> {
        let body = json!({
            "smsId": push.sms_id,
            "phoneFrom": push.phone_from,
            "phone": push.phone,
            "text": push.text,
            "action": "PUSH_SMS",
            "key": push.key,
        });
        let url = ctx.required_setting("push_url")?.to_owned();
        Ok(OutgoingRequest::post_json(
            url,
            body.to_string().into_bytes(),
        ))
    }

    /// 200 with SUCCESS is delivered; the final answers end the push whatever the HTTP
    /// status; anything else is retried.
    fn push_answer(outcome: &DeliveryOutcome) -> PushAnswer {
        match status_word(outcome) {
            Some((200, word)) if word == "SUCCESS" => PushAnswer::Accepted,
            Some((_, word)) if FINAL_ANSWERS.contains(&word.as_str()) => PushAnswer::Refused(word),
            _ => PushAnswer::NotYet(describe(outcome, "")),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};
    use simrelay_marketplace::testing::{Instance, response, sim, sms};
    use simrelay_sdk::{Adapter, Capability, Event, KeyValue, MemoryStore, Verdict};

    use super::*;

    const KEY: &str = "partner-key";

    fn onlinesim() -> Instance<OnlinesimDialect> {
        Instance::new(
            "onlinesim",
            &[
                ("api_key", KEY),
                ("push_url", "https://onlinesim.test/v1/PUSH_SMS"),
                ("services", "tg,wa"),
            ],
        )
    }

    /// Two MTS cards, one Beeline card, and one whose operator no table names.
    fn farm(market: &Instance<OnlinesimDialect>) -> MemoryStore {
        let farm = MemoryStore::default();
        for status in [
            sim("1.01", "8970001", "+79088081050", "250010000000001"),
            sim("1.02", "8970002", "+79088081051", "250010000000002"),
            sim("1.03", "8970003", "+79088081052", "250990000000003"),
            sim("1.04", "8970004", "+79088081053", "250770000000004"),
        ] {
            market.event(&farm, Event::SimStatusChanged(status));
        }
        farm
    }

    fn get_number(
        market: &Instance<OnlinesimDialect>,
        farm: &MemoryStore,
        operator: &str,
    ) -> Value {
        let (status, reply) = market.call(
            farm,
            &json!({"action": "GET_NUMBER", "key": KEY, "country": "russia", "operator": operator, "service": "tg"}),
        );
        assert_eq!(status, 200);
        reply
    }

    #[test]
    fn describes_itself() {
        let descriptor = Onlinesim::describe();
        assert_eq!(descriptor.name, "onlinesim");
        assert!(matches!(
            descriptor.capabilities[..],
            [Capability::Webhook, Capability::Events, Capability::Tick]
        ));
        let names: Vec<_> = descriptor
            .settings
            .iter()
            .map(|s| s.name.as_str())
            .collect();
        assert!(names.contains(&"push_url"));
        assert!(
            !names.contains(&"reconcile_after_secs"),
            "Onlinesim cannot be asked"
        );
        assert_eq!(descriptor.stores[0].name, "inventory");
    }

    #[test]
    fn get_services_adds_any_with_the_totals() {
        let market = onlinesim();
        let farm = farm(&market);
        get_number(&market, &farm, "beeline");
        let (_, reply) = market.call(&farm, &json!({"action": "GET_SERVICES", "key": KEY}));
        assert_eq!(
            reply,
            json!({"countryList": [{"country": "russia", "operatorMap": {
                "any": {"tg": 3, "wa": 3},
                "beeline": {"tg": 0, "wa": 0},
                "mts": {"tg": 2, "wa": 2},
            }}], "status": "SUCCESS"})
        );
    }

    #[test]
    fn get_number_answers_numbers() {
        let market = onlinesim();
        let farm = farm(&market);
        assert_eq!(
            get_number(&market, &farm, "beeline"),
            json!({"number": 79088081052_u64, "activationId": 1, "status": "SUCCESS"})
        );
    }

    #[test]
    fn push_sms_is_json_with_an_integer_sms_id() {
        let market = onlinesim();
        let farm = farm(&market);
        get_number(&market, &farm, "beeline");
        let mut message = sms("m1", "+79088081052", "Your verification code is 800142");
        message.sender = "Instagram".into();
        let push = market
            .event(&farm, Event::MessageReceived(message))
            .deliveries
            .remove(0);
        assert_eq!(
            (push.request.method.as_str(), push.request.url.as_str()),
            ("POST", "https://onlinesim.test/v1/PUSH_SMS")
        );
        assert_eq!(
            push.request.headers,
            [(
                "content-type".to_owned(),
                "application/json; charset=utf-8".to_owned()
            )]
        );
        let body: Value = serde_json::from_slice(&push.request.body).unwrap();
        assert_eq!(
            body,
            json!({"smsId": 1, "phoneFrom": "Instagram", "phone": "79088081052",
                   "text": "Your verification code is 800142", "action": "PUSH_SMS", "key": KEY})
        );
    }

    #[test]
    fn final_answers_end_the_push_with_their_reason() {
        for word in FINAL_ANSWERS {
            let market = onlinesim();
            let farm = farm(&market);
            get_number(&market, &farm, "beeline");
            market.event(
                &farm,
                Event::MessageReceived(sms("m1", "79088081052", "code")),
            );
            for status in [200, 400] {
                let verdict = market.respond(
                    &farm,
                    "push/m1",
                    response(status, &json!({"status": word}).to_string()),
                );
                let Verdict::GiveUp(reason) = verdict else {
                    panic!("{word} is final")
                };
                assert!(reason.contains(word), "{reason}");
            }
            let record: Value =
                serde_json::from_slice(&market.own.get("sms/m1").unwrap().unwrap()).unwrap();
            assert_eq!(
                (&record["state"], &record["reason"]),
                (&json!("refused"), &json!(word))
            );
            assert!(
                market
                    .event(
                        &farm,
                        Event::MessageReceived(sms("m1", "79088081052", "code"))
                    )
                    .deliveries
                    .is_empty()
            );
        }
    }

    #[test]
    fn other_answers_are_retried_every_ten_seconds() {
        let market = onlinesim();
        let farm = farm(&market);
        get_number(&market, &farm, "beeline");
        market.event(
            &farm,
            Event::MessageReceived(sms("m1", "79088081052", "code")),
        );
        for outcome in [
            response(200, r#"{"status": "ERROR"}"#),
            response(500, r#"{"status": "SUCCESS"}"#),
            response(200, ""),
            DeliveryOutcome::TransportError("timeout".into()),
        ] {
            assert!(matches!(
                market.respond(&farm, "push/m1", outcome),
                Verdict::RetryAfterMs(10_000)
            ));
        }
        assert!(matches!(
            market.respond(&farm, "push/m1", response(200, r#"{"status": "SUCCESS"}"#)),
            Verdict::Delivered
        ));
    }

    #[test]
    fn ticks_ask_nothing_of_onlinesim() {
        assert!(onlinesim().tick().deliveries.is_empty());
    }
}
