//! `PUSH_SMS`: one delivery per received message, retried until SmsBower answers SUCCESS.

use serde_json::{Value, json};
use simrelay_sdk::{
    CallContext, Delivery, DeliveryOutcome, DeliveryRef, Effects, MessageKind, OutgoingRequest,
    ReceivedMessage, Stores, Verdict,
};

const DEFAULT_RETRY_INTERVAL_SECS: u64 = 10;

/// Idempotency keys are `push/<message id>`, so a response leads back to its message.
const PUSH_PREFIX: &str = "push/";

pub(crate) fn on_message(
    ctx: &CallContext,
    kv: &Stores,
    message: &ReceivedMessage,
) -> Result<Effects, String> {
    let api_key = ctx.required_setting("api_key")?;
    let base_url = ctx.required_setting("base_url")?;
    // The protocol forbids pushing an SMS again once SmsBower took it.
    if kv.exists(&pushed_key(&message.id))? {
        return Ok(Effects::none());
    }
    // SmsBower matches pushes to activations by number: without one it can never accept.
    if message.recipient.trim().is_empty() {
        eprintln!("message {} has no recipient number; not pushed", message.id);
        return Ok(Effects::none());
    }
    let body = json!({
        "key": api_key,
        "action": "PUSH_SMS",
        "smsId": sms_id(kv, &message.id)?,
        "phone": phone(&message.recipient),
        "phoneFrom": message.sender,
        "text": message.text,
        "call": u8::from(matches!(message.kind, MessageKind::FlashCall)),
        "voice": u8::from(matches!(message.kind, MessageKind::Voice)),
    });
    let url = format!("{}/agent/api/sms", base_url.trim_end_matches('/'));
    Ok(Effects {
        events: Vec::new(),
        deliveries: vec![Delivery {
            idempotency_key: format!("{PUSH_PREFIX}{}", message.id),
            request: OutgoingRequest::post_json(url, body.to_string().into_bytes()),
        }],
    })
}

/// Anything but a SUCCESS answer is retried: the protocol has no failure that is final.
pub(crate) fn verdict(
    ctx: &CallContext,
    kv: &Stores,
    delivery: &DeliveryRef,
    outcome: &DeliveryOutcome,
) -> Result<Verdict, String> {
    if !accepted(outcome) {
        return Ok(Verdict::RetryAfterMs(retry_interval_ms(ctx)?));
    }
    if let Some(message_id) = delivery.idempotency_key.strip_prefix(PUSH_PREFIX) {
        kv.set(&pushed_key(message_id), ctx.now_ms.to_string().as_bytes())?;
    }
    Ok(Verdict::Delivered)
}

fn accepted(outcome: &DeliveryOutcome) -> bool {
    let DeliveryOutcome::Response(response) = outcome else {
        return false;
    };
    response.status == 200
        && serde_json::from_slice::<Value>(&response.body)
            .is_ok_and(|body| body.get("status").and_then(Value::as_str) == Some("SUCCESS"))
}

fn pushed_key(message_id: &str) -> String {
    format!("pushed/{message_id}")
}

/// The integer SmsBower knows the message by. Allocated once per message id, so every push
/// of the same message carries the same smsId.
fn sms_id(kv: &Stores, message_id: &str) -> Result<i64, String> {
    let key = format!("sms-id/{message_id}");
    if let Some(stored) = kv.get(&key)? {
        return std::str::from_utf8(&stored)
            .ok()
            .and_then(|text| text.parse().ok())
            .ok_or_else(|| format!("stored `{key}` is not an smsId"));
    }
    let sms_id = kv.increment("sms-id-counter", 1)?;
    kv.set(&key, sms_id.to_string().as_bytes())?;
    Ok(sms_id)
}

/// The protocol wants the number as an integer. Anything that would not survive the trip
/// (letters, a leading zero) stays a string.
fn phone(recipient: &str) -> Value {
    let digits = recipient.strip_prefix('+').unwrap_or(recipient);
    match digits.parse::<u64>() {
        Ok(number) if !digits.starts_with(['0', '+']) => number.into(),
        _ => recipient.into(),
    }
}

fn retry_interval_ms(ctx: &CallContext) -> Result<u64, String> {
    let seconds = match ctx.setting("retry_interval_secs").map(str::trim) {
        None | Some("") => DEFAULT_RETRY_INTERVAL_SECS,
        Some(text) => text
            .parse()
            .ok()
            .filter(|&seconds| seconds > 0)
            .ok_or("setting `retry_interval_secs` is not a whole number of seconds above 0")?,
    };
    Ok(seconds.saturating_mul(1000))
}

#[cfg(test)]
mod tests {
    use super::*;
    use simrelay_sdk::HttpResponse;

    const KEY: &str = "partner-s3cret";

    fn context(extra: &[(&str, &str)]) -> CallContext {
        let mut settings = vec![("api_key", KEY), ("base_url", "https://smsbower.online")];
        settings.extend_from_slice(extra);
        CallContext::for_tests(&settings)
    }

    fn message(id: &str, kind: MessageKind) -> ReceivedMessage {
        ReceivedMessage {
            id: id.into(),
            sender: "Microsoft".into(),
            recipient: "+447472190082".into(),
            text: "Microsoft access code: 5015".into(),
            kind,
            received_at_ms: Some(1_700_000_000_000),
            device: None,
            port: Some("1.01".into()),
            iccid: None,
            imsi: None,
            code: None,
        }
    }

    #[test]
    fn a_message_without_a_recipient_is_not_pushed() {
        let mut unknown = message("m1", MessageKind::Sms);
        unknown.recipient = " ".into();
        assert!(push(&context(&[]), &Stores::memory(), &unknown).is_none());
    }

    fn push(ctx: &CallContext, kv: &Stores, message: &ReceivedMessage) -> Option<Delivery> {
        let mut effects = on_message(ctx, kv, message).expect("no error");
        assert!(effects.events.is_empty());
        assert!(effects.deliveries.len() <= 1);
        effects.deliveries.pop()
    }

    fn body(delivery: &Delivery) -> Value {
        serde_json::from_slice(&delivery.request.body).expect("JSON body")
    }

    fn response(status: u16, body: &str) -> DeliveryOutcome {
        DeliveryOutcome::Response(HttpResponse {
            status,
            headers: Vec::new(),
            body: body.as_bytes().to_vec(),
        })
    }

    fn answer(ctx: &CallContext, kv: &Stores, key: &str, outcome: DeliveryOutcome) -> Verdict {
        let delivery = DeliveryRef {
            idempotency_key: key.into(),
            attempt: 1,
        };
        verdict(ctx, kv, &delivery, &outcome).expect("no error")
    }

    #[test]
    fn sample_message_push() {
        let delivery = push(
            &context(&[]),
            &Stores::memory(),
            &message("m1", MessageKind::Sms),
        )
        .expect("a delivery");
        assert_eq!(delivery.idempotency_key, "push/m1");
        assert_eq!(delivery.request.method, "POST");
        assert_eq!(
            delivery.request.url,
            "https://smsbower.online/agent/api/sms"
        );
        assert!(
            delivery.request.headers.iter().any(
                |(name, value)| name == "content-type" && value.starts_with("application/json")
            )
        );
        assert_eq!(
            body(&delivery),
            json!({
                "key": KEY,
                "action": "PUSH_SMS",
                "smsId": 1,
                "phone": 447472190082_u64,
                "phoneFrom": "Microsoft",
                "text": "Microsoft access code: 5015",
                "call": 0,
                "voice": 0,
            })
        );
    }

    #[test]
    fn flash_calls_and_voice() {
        let ctx = context(&[]);
        let kv = Stores::memory();
        let call = body(&push(&ctx, &kv, &message("c", MessageKind::FlashCall)).unwrap());
        assert_eq!((&call["call"], &call["voice"]), (&json!(1), &json!(0)));
        let voice = body(&push(&ctx, &kv, &message("v", MessageKind::Voice)).unwrap());
        assert_eq!((&voice["call"], &voice["voice"]), (&json!(0), &json!(1)));
    }

    #[test]
    fn sms_id_increments_and_is_stable_per_message() {
        let ctx = context(&[]);
        let kv = Stores::memory();
        let first = push(&ctx, &kv, &message("a", MessageKind::Sms)).unwrap();
        let second = push(&ctx, &kv, &message("b", MessageKind::Sms)).unwrap();
        let again = push(&ctx, &kv, &message("a", MessageKind::Sms)).unwrap();
        assert_eq!(body(&first)["smsId"], 1);
        assert_eq!(body(&second)["smsId"], 2);
        assert_eq!(body(&again)["smsId"], 1);
        assert_eq!(again.idempotency_key, first.idempotency_key);
        assert_eq!(
            body(&push(&ctx, &kv, &message("c", MessageKind::Sms)).unwrap())["smsId"],
            3
        );
    }

    #[test]
    fn phone_is_an_integer_only_when_it_survives_as_one() {
        assert_eq!(phone("+447472190082"), json!(447472190082_u64));
        assert_eq!(phone("79001234567"), json!(79001234567_u64));
        assert_eq!(phone("07472190082"), json!("07472190082"));
        assert_eq!(phone("MyBank"), json!("MyBank"));
        assert_eq!(phone(""), json!(""));
        assert_eq!(phone("+"), json!("+"));
        assert_eq!(phone("++1"), json!("++1"));
        assert_eq!(
            phone("123456789012345678901234"),
            json!("123456789012345678901234")
        );
    }

    #[test]
    fn base_url_trailing_slash() {
        let ctx =
            CallContext::for_tests(&[("api_key", KEY), ("base_url", "https://x.test/bower/")]);
        let delivery = push(&ctx, &Stores::memory(), &message("m", MessageKind::Sms)).unwrap();
        assert_eq!(delivery.request.url, "https://x.test/bower/agent/api/sms");
    }

    #[test]
    fn missing_settings_are_named_without_secrets() {
        let kv = Stores::memory();
        let sms = message("m", MessageKind::Sms);
        let no_key = CallContext::for_tests(&[("base_url", "https://smsbower.online")]);
        let error = on_message(&no_key, &kv, &sms).expect_err("api_key missing");
        assert!(error.contains("api_key"), "{error}");
        for no_url in [
            CallContext::for_tests(&[("api_key", KEY)]),
            CallContext::for_tests(&[("api_key", KEY), ("base_url", "")]),
        ] {
            let error = on_message(&no_url, &kv, &sms).expect_err("base_url missing");
            assert!(error.contains("base_url"), "{error}");
            assert!(!error.contains(KEY), "{error}");
        }
    }

    #[test]
    fn success_is_delivered_and_never_pushed_again() {
        let ctx = context(&[]);
        let kv = Stores::memory();
        let sms = message("m1", MessageKind::Sms);
        let delivery = push(&ctx, &kv, &sms).unwrap();
        let verdict = answer(
            &ctx,
            &kv,
            &delivery.idempotency_key,
            response(200, r#"{"status":"SUCCESS"}"#),
        );
        assert!(matches!(verdict, Verdict::Delivered));
        assert!(kv.exists("pushed/m1").unwrap());
        assert!(push(&ctx, &kv, &sms).is_none());
    }

    #[test]
    fn anything_else_is_retried_after_ten_seconds() {
        let ctx = context(&[]);
        let kv = Stores::memory();
        let outcomes = [
            response(200, r#"{"status":"ERROR"}"#),
            response(200, r#"{"status":"success"}"#),
            response(200, "SUCCESS"),
            response(200, ""),
            response(500, r#"{"status":"SUCCESS"}"#),
            response(401, r#"{"status":"BAD_KEY"}"#),
            DeliveryOutcome::TransportError("connection refused".into()),
        ];
        for outcome in outcomes {
            let verdict = answer(&ctx, &kv, "push/m1", outcome);
            assert!(
                matches!(verdict, Verdict::RetryAfterMs(10_000)),
                "{verdict:?}"
            );
        }
        assert!(!kv.exists("pushed/m1").unwrap());
    }

    #[test]
    fn retry_interval_is_configurable() {
        let kv = Stores::memory();
        let refused = || DeliveryOutcome::TransportError("timeout".into());
        let ctx = context(&[("retry_interval_secs", "30")]);
        assert!(matches!(
            answer(&ctx, &kv, "push/m", refused()),
            Verdict::RetryAfterMs(30_000)
        ));
        let ctx = context(&[("retry_interval_secs", "")]);
        assert!(matches!(
            answer(&ctx, &kv, "push/m", refused()),
            Verdict::RetryAfterMs(10_000)
        ));
        for bad in ["0", "-5", "ten", "1.5"] {
            let ctx = context(&[("retry_interval_secs", bad)]);
            let delivery = DeliveryRef {
                idempotency_key: "push/m".into(),
                attempt: 2,
            };
            let error = verdict(&ctx, &kv, &delivery, &refused()).expect_err("bad interval");
            assert!(error.contains("retry_interval_secs"), "{error}");
        }
    }
}
