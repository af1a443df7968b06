//! Adapter for the SmsBower partner protocol, marketplace side: sells the SIM farm's numbers
//! (GET_SERVICES, GET_NUMBER, FINISH_ACTIVATION), pushes the SMS of open activations with
//! PUSH_SMS, and reconciles with `Get status` and `Get statistic`.
//!
//! The protocol lives in `simrelay-marketplace`; this crate holds what is SmsBower's own.

use simrelay_marketplace::answers::{describe, status_word};
use simrelay_marketplace::{Dialect, Marketplace, Push, PushAnswer, Settings};
use simrelay_sdk::{CallContext, DeliveryOutcome, MessageKind, OutgoingRequest, SettingSpec};

/// SmsBower's dialect of the partner protocol.
pub struct SmsBowerDialect;

/// The plugin.
pub type SmsBower = Marketplace<SmsBowerDialect>;

simrelay_sdk::export_adapter!(SmsBower);

impl Dialect for SmsBowerDialect {
    const NAME: &'static str = "smsbower";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    // The protocol's GET_NUMBER sample answers `"number": "79156537788"` and
    // `"activationId": "36532"`: strings.
    const NUMERIC_IDS: bool = false;
    const ANY_OPERATOR_TOTAL: bool = false;
    const CALL_AND_VOICE: bool = true;
    const RECONCILES: bool = true;

    fn settings() -> Vec<SettingSpec> {
        vec![SettingSpec::required(
            "base_url",
            "SmsBower server, e.g. https://smsbower.online",
        )]
    }

    /// The form fields of the protocol document, URL-encoded, POSTed to `/agent/api/sms`.
    fn push_request(ctx: &CallContext, push: &Push) -> Result<OutgoingRequest, String> {
        let flag = |kind: MessageKind| if push.kind == kind { "1" } else { "0" };
        let sms_id = push.sms_id.to_string();
        let fields = [
            ("key", push.key),
            ("action", "PUSH_SMS"),
            ("smsId", &sms_id),
            ("phone", push.phone),
            ("phoneFrom", &push.phone_from),
            ("text", &push.text),
            ("call", flag(MessageKind::FlashCall)),
            ("voice", flag(MessageKind::Voice)),
        ];
        Ok(OutgoingRequest {
            method: "POST".into(),
            url: format!("{}/agent/api/sms", base_url(ctx)?),
            headers: vec![(
                "content-type".into(),
                "application/x-www-form-urlencoded".into(),
            )],
            body: form(&fields).into_bytes(),
            timeout_ms: None,
        })
    }

    /// SUCCESS is the only yes; anything else is retried until SUCCESS.
    fn push_answer(outcome: &DeliveryOutcome) -> PushAnswer {
        match status_word(outcome) {
            Some((200..=299, word)) if word == "SUCCESS" => PushAnswer::Accepted,
            _ => PushAnswer::NotYet(describe(outcome, "")),
        }
    }

    /// `GET {base}/agent/api/getStatus?activationId=…&api_key=…`.
    fn status_query(
        ctx: &CallContext,
        settings: &Settings,
        activation: u64,
    ) -> Result<Option<OutgoingRequest>, String> {
        let url = format!(
            "{}/agent/api/getStatus?{}",
            base_url(ctx)?,
            form(&[
                ("activationId", &activation.to_string()),
                ("api_key", &settings.api_key),
            ])
        );
        Ok(Some(get(url)))
    }

    /// `GET {base}/api/statistic/simCards?api_key=…`.
    fn statistic_query(
        ctx: &CallContext,
        settings: &Settings,
    ) -> Result<Option<OutgoingRequest>, String> {
        let url = format!(
            "{}/api/statistic/simCards?{}",
            base_url(ctx)?,
            form(&[("api_key", &settings.api_key)])
        );
        Ok(Some(get(url)))
    }
}

fn base_url(ctx: &CallContext) -> Result<&str, String> {
    Ok(ctx.required_setting("base_url")?.trim_end_matches('/'))
}

fn get(url: String) -> OutgoingRequest {
    OutgoingRequest {
        method: "GET".into(),
        url,
        headers: Vec::new(),
        body: Vec::new(),
        timeout_ms: None,
    }
}

/// `name=value&…`, percent-encoded as forms and query strings are.
fn form(fields: &[(&str, &str)]) -> String {
    fields
        .iter()
        .map(|(name, value)| format!("{}={}", encode(name), encode(value)))
        .collect::<Vec<_>>()
        .join("&")
}

/// Every byte but the unreserved ones (`A-Z a-z 0-9 - . _ ~`) as `%XX`; spaces as `+`.
fn encode(text: &str) -> String {
    let mut encoded = String::with_capacity(text.len());
    for byte in text.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                encoded.push(byte.into())
            }
            b' ' => encoded.push('+'),
            _ => encoded.push_str(&format!("%{byte:02X}")),
        }
    }
    encoded
}

#[cfg(test)]
mod tests {
    use std::rc::Rc;

    use serde_json::{Value, json};
    use simrelay_marketplace::testing::{Instance, response, sim, sms};
    use simrelay_sdk::{Adapter, Capability, Delivery, Event, MemoryStore, Stores, Verdict};

    use super::*;

    const KEY: &str = "qwerty123";

    fn bower(extra: &[(&'static str, &'static str)]) -> Instance<SmsBowerDialect> {
        let mut settings = vec![
            ("api_key", KEY),
            ("base_url", "https://smsbower.online/"),
            ("services", r#"{"tg": 0, "wa": 0}"#),
        ];
        settings.retain(|(name, _)| !extra.iter().any(|(other, _)| other == name));
        settings.extend_from_slice(extra);
        Instance::new("smsbower", &settings)
    }

    /// One MTS card in Russia, 447472190082 for the samples' number, and one Beeline card.
    fn farm(market: &Instance<SmsBowerDialect>) -> MemoryStore {
        let farm = MemoryStore::default();
        for status in [
            sim("1.01", "8970001", "+447472190082", "250010000000001"),
            sim("1.02", "8970002", "+79156537788", "250990000000002"),
        ] {
            market.event(&farm, Event::SimStatusChanged(status));
        }
        farm
    }

    fn get_number(market: &Instance<SmsBowerDialect>, farm: &MemoryStore, operator: &str) -> Value {
        let (status, reply) = market.call(
            farm,
            &json!({"action": "GET_NUMBER", "key": KEY, "country": "russia", "operator": operator, "service": "tg", "sum": "20.00"}),
        );
        assert_eq!(status, 200);
        reply
    }

    fn push_of(
        market: &Instance<SmsBowerDialect>,
        farm: &MemoryStore,
        message: simrelay_sdk::ReceivedMessage,
    ) -> Delivery {
        let mut deliveries = market
            .event(farm, Event::MessageReceived(message))
            .deliveries;
        assert_eq!(deliveries.len(), 1);
        deliveries.remove(0)
    }

    #[test]
    fn describes_itself() {
        let descriptor = SmsBower::describe();
        assert_eq!(descriptor.name, "smsbower");
        assert_eq!(descriptor.version, env!("CARGO_PKG_VERSION"));
        assert!(matches!(
            descriptor.capabilities[..],
            [Capability::Webhook, Capability::Events, Capability::Tick]
        ));
        let names: Vec<_> = descriptor
            .settings
            .iter()
            .map(|s| s.name.as_str())
            .collect();
        for name in [
            "api_key",
            "services",
            "base_url",
            "reconcile_after_secs",
            "statistic_interval_secs",
        ] {
            assert!(names.contains(&name), "{name}");
        }
        assert_eq!(descriptor.stores[0].name, "inventory");
    }

    #[test]
    fn get_number_answers_as_the_sample() {
        let market = bower(&[("sims", r#"{"8970002": {"call": true}}"#)]);
        let farm = farm(&market);
        assert_eq!(
            get_number(&market, &farm, "beeline"),
            json!({"number": "79156537788", "activationId": "1", "status": "SUCCESS", "call": 1, "voice": 0})
        );
    }

    #[test]
    fn get_services_lists_named_operators_only() {
        let market = bower(&[]);
        let farm = farm(&market);
        let (_, reply) = market.call(&farm, &json!({"action": "GET_SERVICES", "key": KEY}));
        assert_eq!(
            reply,
            json!({"countryList": [{"country": "russia", "operatorMap": {
                "beeline": {"tg": 1, "wa": 1}, "mts": {"tg": 1, "wa": 1}}}], "status": "SUCCESS"})
        );
    }

    #[test]
    fn push_sms_sends_the_form_fields_of_the_samples() {
        let market = bower(&[]);
        let farm = farm(&market);
        get_number(&market, &farm, "mts");
        let mut message = sms("m1", "+447472190082", "Microsoft access code: 5015");
        message.sender = "Microsoft".into();
        let push = push_of(&market, &farm, message);
        assert_eq!(push.idempotency_key, "push/m1");
        assert_eq!(push.request.method, "POST");
        assert_eq!(push.request.url, "https://smsbower.online/agent/api/sms");
        assert_eq!(
            push.request.headers,
            [(
                "content-type".to_owned(),
                "application/x-www-form-urlencoded".to_owned()
            )]
        );
        assert_eq!(
            String::from_utf8(push.request.body).unwrap(),
            "key=qwerty123&action=PUSH_SMS&smsId=1&phone=447472190082&phoneFrom=Microsoft\
             &text=Microsoft+access+code%3A+5015&call=0&voice=0"
        );
    }

    #[test]
    fn flash_call_and_voice_pushes_as_the_samples() {
        let market = bower(&[]);
        let farm = farm(&market);
        get_number(&market, &farm, "mts");
        let mut flash = sms("c", "447472190082", "");
        (flash.kind, flash.sender) = (MessageKind::FlashCall, "446756540011".into());
        let body = String::from_utf8(push_of(&market, &farm, flash).request.body).unwrap();
        assert!(
            body.ends_with("&phoneFrom=446756540011&text=446756540011&call=1&voice=0"),
            "{body}"
        );
        let mut voice = sms("v", "447472190082", "one two three four five");
        (voice.kind, voice.sender, voice.code) = (
            MessageKind::Voice,
            "446756540011".into(),
            Some("12345".into()),
        );
        let body = String::from_utf8(push_of(&market, &farm, voice).request.body).unwrap();
        assert!(
            body.ends_with("&phoneFrom=446756540011&text=12345&call=0&voice=1"),
            "{body}"
        );
    }

    #[test]
    fn only_success_is_accepted() {
        assert_eq!(
            SmsBowerDialect::push_answer(&response(200, r#"{"status": "SUCCESS"}"#)),
            PushAnswer::Accepted
        );
        for outcome in [
            response(200, r#"{"status": "ERROR"}"#),
            response(200, r#"{"status": "NO_OPERATION"}"#),
            response(200, ""),
            response(500, r#"{"status": "SUCCESS"}"#),
            response(301, ""),
            DeliveryOutcome::TransportError("timeout".into()),
        ] {
            assert!(matches!(
                SmsBowerDialect::push_answer(&outcome),
                PushAnswer::NotYet(_)
            ));
        }
        let market = bower(&[]);
        let farm = farm(&market);
        get_number(&market, &farm, "mts");
        push_of(&market, &farm, sms("m1", "447472190082", "code"));
        let verdict = market.respond(
            &farm,
            "push/m1",
            response(200, r#"{"status": "NO_OPERATION"}"#),
        );
        assert!(
            matches!(verdict, Verdict::RetryAfterMs(10_000)),
            "{verdict:?}"
        );
        assert!(matches!(
            market.respond(&farm, "push/m1", response(200, r#"{"status": "SUCCESS"}"#)),
            Verdict::Delivered
        ));
        assert!(
            market
                .event(
                    &farm,
                    Event::MessageReceived(sms("m1", "447472190082", "code"))
                )
                .deliveries
                .is_empty()
        );
    }

    #[test]
    fn reconciliation_queries() {
        let mut market = bower(&[("api_key", "k&y=1")]);
        let farm = farm(&market);
        market.call(&farm, &json!({"action": "GET_NUMBER", "key": "k&y=1", "country": "russia", "operator": "mts", "service": "tg"}));
        market.at(market.ctx.now_ms + 1_800_000);
        let urls: Vec<_> = market
            .tick()
            .deliveries
            .into_iter()
            .map(|d| (d.request.method, d.request.url))
            .collect();
        assert_eq!(
            urls,
            [
                (
                    "GET".to_owned(),
                    "https://smsbower.online/agent/api/getStatus?activationId=1&api_key=k%26y%3D1"
                        .to_owned()
                ),
                (
                    "GET".to_owned(),
                    "https://smsbower.online/api/statistic/simCards?api_key=k%26y%3D1".to_owned()
                ),
            ]
        );
    }

    #[test]
    fn encoding() {
        assert_eq!(encode("a b+c/é~"), "a+b%2Bc%2F%C3%A9~");
        assert_eq!(form(&[("x", "1"), ("y", "")]), "x=1&y=");
    }

    /// The adapter as the host calls it: the inventory comes from the granted shared store.
    #[test]
    fn the_adapter_opens_the_granted_inventory() {
        let farm = Rc::new(MemoryStore::default());
        let stores = Stores::memory().with_shared("inventory", farm.clone());
        let mut ctx = CallContext::for_tests(&[
            ("api_key", KEY),
            ("base_url", "https://smsbower.online"),
            ("services", "tg"),
        ]);
        ctx.instance = "smsbower".into();
        let status = sim("1.01", "8970001", "+79001234567", "250010000000001");
        SmsBower::on_event(&ctx, &stores, Event::SimStatusChanged(status)).unwrap();
        assert!(!simrelay_marketplace::testing::snapshot(&*farm).is_empty());
        let request = simrelay_marketplace::testing::request(
            br#"{"action":"GET_NUMBER","key":"qwerty123","country":"russia","operator":"mts","service":"tg"}"#,
        );
        let outcome = SmsBower::on_webhook(&ctx, &stores, request).unwrap();
        let reply: Value = serde_json::from_slice(&outcome.reply.body).unwrap();
        assert_eq!(reply["number"], "79001234567");
        let error = SmsBower::on_tick(&ctx, &Stores::memory()).map(|_| ());
        assert!(error.is_ok(), "ticks need no inventory");
        let ungranted = SmsBower::on_event(
            &ctx,
            &Stores::memory(),
            Event::MessageReceived(sms("m", "1", "x")),
        );
        assert!(ungranted.unwrap_err().contains("`inventory`"));
    }
}
