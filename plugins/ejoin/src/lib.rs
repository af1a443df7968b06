//! Adapter for Ejoin / EJOINTECH "skyline" GSM gateways: turns the gateway's webhook pushes
//! into received-message and SIM-status events.

mod fields;
mod sms;
mod status;
mod time;

use serde_json::{Value, json};
use simrelay_sdk::{
    Adapter, CallContext, Capability, Descriptor, Effects, Event, HttpReply, HttpRequest,
    KeySource, SettingSpec, Stores, WebhookKey, WebhookOutcome,
};

pub struct Ejoin;

/// What a push carried: events for the parts that could be read, and why the others could not.
#[derive(Default)]
struct Push {
    events: Vec<Event>,
    problems: Vec<String>,
}

impl Adapter for Ejoin {
    fn describe() -> Descriptor {
        Descriptor {
            capabilities: vec![Capability::Webhook],
            settings: vec![
                SettingSpec::required("api_key", "key the gateway puts in the webhook path")
                    .secret(),
            ],
            // The host turns wrong keys away before reading the body or calling us.
            webhook_key: Some(WebhookKey {
                source: KeySource::Capture("key".into()),
                setting: "api_key".into(),
                rejection: reply(401, "Bad Api Key"),
            }),
            ..Descriptor::new("ejoin", env!("CARGO_PKG_VERSION"))
        }
    }

    fn on_webhook(
        ctx: &CallContext,
        kv: &Stores,
        request: HttpRequest,
    ) -> Result<WebhookOutcome, String> {
        let api_key = ctx.required_setting("api_key")?;
        // Checked here too, for hosts that do not check `webhook_key` themselves.
        if !request
            .param("key")
            .is_some_and(|key| simrelay_sdk::secrets_match(key, api_key))
        {
            return Ok(rejected(401, "Bad Api Key"));
        }
        let body: Value = match serde_json::from_slice(&request.body) {
            Ok(body) => body,
            Err(error) => return Ok(rejected(400, &format!("Malformed JSON: {error}"))),
        };
        let push = match body.get("type") {
            None | Some(Value::Null) => return Ok(rejected(400, "Missing type")),
            Some(Value::String(kind)) => match kind.as_str() {
                "recv-sms" => sms::parse_push(&body),
                "dev-status" => status::dev_status(&body),
                "port-status" => status::port_status(&body),
                // Results of SMS sent through the gateway; this plugin sends none yet.
                "status-report" => Ok(Push::default()),
                other => return Ok(rejected(400, &format!("Unknown type: {other}"))),
            },
            Some(other) => return Ok(rejected(400, &format!("Unknown type: {other}"))),
        };
        let push = match push {
            Ok(push) => push,
            Err(problem) => return Ok(rejected(400, &problem)),
        };
        let message = if push.problems.is_empty() {
            "Ok".to_owned()
        } else {
            format!("Error: {}", push.problems.join("; "))
        };
        Ok(WebhookOutcome {
            reply: reply(200, &message),
            effects: Effects {
                events: unseen(ctx, kv, push.events)?,
                deliveries: Vec::new(),
            },
        })
    }
}

/// Drops messages already emitted, because gateways re-send a push they think failed.
fn unseen(ctx: &CallContext, kv: &Stores, events: Vec<Event>) -> Result<Vec<Event>, String> {
    let mut fresh = Vec::with_capacity(events.len());
    for event in events {
        if let Event::MessageReceived(message) = &event {
            let key = format!("seen/{}", message.id);
            if kv.exists(&key)? {
                continue;
            }
            // The time lets old entries be told apart should they ever need expiring.
            kv.set(&key, ctx.now_ms.to_string().as_bytes())?;
        }
        fresh.push(event);
    }
    Ok(fresh)
}

fn reply(status: u16, message: &str) -> HttpReply {
    HttpReply::json(status, json!({ "message": message }).to_string())
}

fn rejected(status: u16, message: &str) -> WebhookOutcome {
    WebhookOutcome {
        reply: reply(status, message),
        effects: Effects::none(),
    }
}

simrelay_sdk::export_adapter!(Ejoin);

#[cfg(test)]
mod tests {
    use super::*;
    use simrelay_sdk::SimState;

    const KEY: &str = "s3cret-key";

    fn context() -> CallContext {
        CallContext::for_tests(&[("api_key", KEY)])
    }

    fn request(key: Option<&str>, body: &str) -> HttpRequest {
        HttpRequest {
            method: "POST".into(),
            path: format!("/api/{}/webhook", key.unwrap_or_default()),
            query: String::new(),
            params: key
                .map(|key| vec![("key".to_owned(), key.to_owned())])
                .unwrap_or_default(),
            headers: Vec::new(),
            body: body.as_bytes().to_vec(),
        }
    }

    fn webhook(kv: &Stores, key: Option<&str>, body: &str) -> (u16, String, Vec<Event>) {
        let outcome =
            Ejoin::on_webhook(&context(), kv, request(key, body)).expect("no internal error");
        let reply: Value = serde_json::from_slice(&outcome.reply.body).expect("reply is JSON");
        let message = reply["message"]
            .as_str()
            .expect("reply has a message")
            .to_owned();
        assert!(outcome.effects.deliveries.is_empty());
        (outcome.reply.status, message, outcome.effects.events)
    }

    const SAMPLE_SMS: &str = r#"{"type":"recv-sms","sms":[[null,null,"2023-10-27 10:00:00",
        "BankInfo","79001234567","SGVsbG8gV29ybGQ="]]}"#;

    const SAMPLE_STATUS: &str = r#"{"type":"dev-status","mac":"00:1A:2B:3C:4D:5E","status":[
        {"sn":"+79001234567","iccid":"8970100000000000001","imsi":"250010000000001",
         "st":1,"active":true}]}"#;

    #[test]
    fn describes_itself() {
        let descriptor = Ejoin::describe();
        assert_eq!(descriptor.name, "ejoin");
        assert_eq!(descriptor.version, env!("CARGO_PKG_VERSION"));
        assert_eq!(descriptor.api_version, simrelay_sdk::API_VERSION);
        assert!(matches!(descriptor.capabilities[..], [Capability::Webhook]));
        let key = descriptor.webhook_key.expect("the host checks the key");
        assert_eq!(key.setting, "api_key");
        assert!(matches!(key.source, KeySource::Capture(ref name) if name == "key"));
        assert_eq!(key.rejection.status, 401);
        let setting = &descriptor.settings[0];
        assert_eq!(descriptor.settings.len(), 1);
        assert_eq!(setting.name, "api_key");
        assert!(setting.required && setting.secret);
    }

    #[test]
    fn sample_sms_is_received() {
        let (status, message, events) = webhook(&Stores::memory(), Some(KEY), SAMPLE_SMS);
        assert_eq!((status, message.as_str()), (200, "Ok"));
        let [Event::MessageReceived(sms)] = &events[..] else {
            panic!("one received message expected");
        };
        assert_eq!(sms.text, "Hello World");
        assert_eq!(sms.sender, "BankInfo");
        assert_eq!(sms.recipient, "79001234567");
    }

    #[test]
    fn sample_status_is_reported() {
        let (status, message, events) = webhook(&Stores::memory(), Some(KEY), SAMPLE_STATUS);
        assert_eq!((status, message.as_str()), (200, "Ok"));
        let [Event::SimStatusChanged(sim)] = &events[..] else {
            panic!("one SIM status expected");
        };
        assert_eq!(sim.state, SimState::Idle);
        assert_eq!(sim.device.as_deref(), Some("00:1A:2B:3C:4D:5E"));
    }

    #[test]
    fn re_sent_push_is_emitted_once() {
        let kv = Stores::memory();
        let (_, _, first) = webhook(&kv, Some(KEY), SAMPLE_SMS);
        assert_eq!(first.len(), 1);
        let Event::MessageReceived(sms) = &first[0] else {
            panic!("a received message expected");
        };
        assert!(kv.exists(&format!("seen/{}", sms.id)).unwrap());
        let (status, message, again) = webhook(&kv, Some(KEY), SAMPLE_SMS);
        assert_eq!((status, message.as_str()), (200, "Ok"));
        assert!(again.is_empty());
    }

    #[test]
    fn duplicate_rows_in_one_push_are_emitted_once() {
        let row = r#"[0,"1.01",1700000000,"s","r","SGVsbG8="]"#;
        let body = format!(r#"{{"type":"recv-sms","sms":[{row},{row}]}}"#);
        let (_, _, events) = webhook(&Stores::memory(), Some(KEY), &body);
        assert_eq!(events.len(), 1);
    }

    #[test]
    fn statuses_are_not_deduplicated() {
        let kv = Stores::memory();
        webhook(&kv, Some(KEY), SAMPLE_STATUS);
        let (_, _, events) = webhook(&kv, Some(KEY), SAMPLE_STATUS);
        assert_eq!(events.len(), 1);
    }

    #[test]
    fn wrong_or_missing_key_is_unauthorized() {
        let kv = Stores::memory();
        for key in [Some("wrong"), Some("s3cret-kez"), Some(""), None] {
            let (status, message, events) = webhook(&kv, key, SAMPLE_SMS);
            assert_eq!((status, message.as_str()), (401, "Bad Api Key"));
            assert!(events.is_empty());
        }
    }

    #[test]
    fn missing_api_key_setting_is_an_internal_error() {
        let ctx = CallContext::for_tests(&[]);
        let error = Ejoin::on_webhook(&ctx, &Stores::memory(), request(Some(KEY), SAMPLE_SMS))
            .expect_err("an error");
        assert!(error.contains("api_key"));
    }

    #[test]
    fn malformed_json_is_a_bad_request() {
        let (status, message, events) = webhook(&Stores::memory(), Some(KEY), "{\"type\":");
        assert_eq!(status, 400);
        assert!(message.starts_with("Malformed JSON: "), "{message}");
        assert!(events.is_empty());
    }

    #[test]
    fn missing_or_unknown_type_is_a_bad_request() {
        let kv = Stores::memory();
        let cases = [
            (r#"{"sms":[]}"#, "Missing type"),
            ("[]", "Missing type"),
            (r#"{"type":"reboot"}"#, "Unknown type: reboot"),
            (r#"{"type":7}"#, "Unknown type: 7"),
        ];
        for (body, expected) in cases {
            let (status, message, events) = webhook(&kv, Some(KEY), body);
            assert_eq!((status, message.as_str()), (400, expected));
            assert!(events.is_empty());
        }
    }

    #[test]
    fn wrong_body_shape_is_a_bad_request() {
        let (status, message, _) = webhook(
            &Stores::memory(),
            Some(KEY),
            r#"{"type":"recv-sms","sms":"x"}"#,
        );
        assert_eq!(
            (status, message.as_str()),
            (400, "recv-sms: `sms` is not a list")
        );
    }

    #[test]
    fn invalid_base64_is_explained_and_valid_rows_still_emitted() {
        let body = r#"{"type":"recv-sms","sms":[[0,"1.01",1,"s","r","***"],
                                              [0,"1.02",1,"s","r","SGk="]]}"#;
        let (status, message, events) = webhook(&Stores::memory(), Some(KEY), body);
        assert_eq!(status, 200);
        assert_eq!(message, "Error: row 0: text is not valid base64");
        let [Event::MessageReceived(sms)] = &events[..] else {
            panic!("the valid row expected");
        };
        assert_eq!(sms.text, "Hi");
    }

    #[test]
    fn status_report_is_acknowledged() {
        let body = r#"{"type":"status-report","mac":"m","reports":[]}"#;
        let (status, message, events) = webhook(&Stores::memory(), Some(KEY), body);
        assert_eq!((status, message.as_str()), (200, "Ok"));
        assert!(events.is_empty());
    }
}
