//! Adapter for Ejoin / EJOINTECH "skyline" GSM gateways: turns the gateway's webhook pushes
//! into received-message, SIM-status and delivery-status events.
//!
//! Every push is JSON with a `type`:
//! - `recv-sms`: rows of SMS ([`sms`]); a row re-sent in a later push (same device, port, time,
//!   addresses and text) is dropped, the parts of a long SMS are joined ([`assembly`]), and an
//!   empty recipient is filled in from what the gateway last reported for the SIM ([`sims`]).
//!   Delivery-report rows become delivery statuses.
//! - `dev-status`, `port-status`: SIM statuses ([`status`]), remembered for the recipients.
//! - `status-report`: results of SMS sent through the gateway, as delivery statuses.
//!
//! The reply is `{"message":"Ok"}`, or 200 with `"Error: …"` naming the rows that could not be
//! read while the others were handled, or 400 for a push that could not be read at all.
//!
//! On tick, long SMS whose last part did not come within `long_sms_window_secs` are emitted
//! as they are, and de-duplication marks older than `dedupe_window_secs` are deleted.
//!
//! Keys in the instance's store: `seen/…` and `seen@…` (row marks, see
//! [`simrelay_sdk::dedupe`]), `long/…` ([`assembly`]), `sim/…` and `iccid/…` ([`sims`]).

mod assembly;
#[cfg(test)]
mod properties;
mod sims;
mod sms;
mod status;

use serde_json::Value;
use simrelay_sdk::{
    Adapter, CallContext, Capability, Descriptor, Effects, Event, HttpReply, HttpRequest,
    KeySource, KeyValue, MarkOnce, ReceivedMessage, SettingSpec, Stores, WebhookKey,
    WebhookOutcome,
};

use crate::sms::Row;

pub struct Ejoin;

/// What a push carried: events for the parts that could be read, and why the others could not.
#[derive(Default)]
struct Push {
    events: Vec<Event>,
    problems: Vec<String>,
}

/// Prefix of the row de-duplication marks. Marks written before they expired stay readable.
const SEEN: &str = "seen";
/// Expired marks deleted per tick at most, so a tick stays short.
const SWEEP_LIMIT: usize = 5_000;
const DEFAULT_DEDUPE_WINDOW_SECS: u64 = 86_400;
const DEFAULT_LONG_SMS_WINDOW_SECS: u64 = 30;

struct Settings {
    dedupe_window_ms: u64,
    long_sms_window_ms: u64,
}

impl Settings {
    fn read(ctx: &CallContext) -> Result<Self, String> {
        let seconds = |name, default| {
            ctx.number_setting(name, default)
                .map(|secs| secs.saturating_mul(1000))
        };
        Ok(Settings {
            dedupe_window_ms: seconds("dedupe_window_secs", DEFAULT_DEDUPE_WINDOW_SECS)?,
            long_sms_window_ms: seconds("long_sms_window_secs", DEFAULT_LONG_SMS_WINDOW_SECS)?,
        })
    }
}

/// A push as read, before it touches state.
enum Parsed {
    Rows(Vec<Result<Row, String>>),
    Statuses(Push),
}

impl Adapter for Ejoin {
    fn describe() -> Descriptor {
        Descriptor {
            capabilities: vec![Capability::Webhook, Capability::Tick],
            settings: vec![
                SettingSpec::required("api_key", "key the gateway puts in the webhook path")
                    .secret(),
                SettingSpec::optional(
                    "dedupe_window_secs",
                    "seconds a pushed SMS row is remembered, so a re-sent push adds nothing \
                     (default 86400)",
                ),
                SettingSpec::optional(
                    "long_sms_window_secs",
                    "seconds to wait for the next part of a long SMS before passing on what \
                     came (default 30)",
                ),
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
        let settings = Settings::read(ctx)?;
        // Checked here too, for hosts that do not check `webhook_key` themselves.
        if !request
            .param("key")
            .is_some_and(|key| simrelay_sdk::secrets_match(key, api_key))
        {
            return Ok(rejected(401, "Bad Api Key"));
        }
        let parsed = match sms::parse_recv_sms(&request.body) {
            Some(rows) => rows.map(Parsed::Rows),
            None => match parse(&request.body) {
                Ok(parsed) => parsed,
                Err(rejection) => return Ok(rejection),
            },
        };
        let push = match parsed {
            Ok(Parsed::Rows(rows)) => receive(&**kv, rows, &settings, ctx.now_ms)?,
            Ok(Parsed::Statuses(push)) => {
                remember_sims(&**kv, &push)?;
                push
            }
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
                events: push.events,
                deliveries: Vec::new(),
            },
        })
    }

    fn on_tick(ctx: &CallContext, kv: &Stores) -> Result<Effects, String> {
        let settings = Settings::read(ctx)?;
        let mut events = Vec::new();
        for message in assembly::flush_stale(&**kv, ctx.now_ms, settings.long_sms_window_ms)? {
            events.push(Event::MessageReceived(with_recipient(&**kv, message)?));
        }
        MarkOnce::new(&**kv, SEEN, settings.dedupe_window_ms).sweep(ctx.now_ms, SWEEP_LIMIT)?;
        Ok(Effects {
            events,
            deliveries: Vec::new(),
        })
    }
}

/// Turns the rows of a `recv-sms` push into events: rows seen before are dropped, parts of
/// long SMS are held until their message is complete.
fn receive(
    kv: &dyn KeyValue,
    rows: Vec<Result<Row, String>>,
    settings: &Settings,
    now_ms: u64,
) -> Result<Push, String> {
    let seen = MarkOnce::new(kv, SEEN, settings.dedupe_window_ms);
    let mut push = Push::default();
    for row in rows {
        match row {
            Err(problem) => push.problems.push(problem),
            Ok(Row::Sms(sms)) => {
                if !seen.first_time(&sms.id, now_ms)? {
                    continue;
                }
                for message in assembly::accept(kv, sms, now_ms)? {
                    push.events
                        .push(Event::MessageReceived(with_recipient(kv, message)?));
                }
            }
            Ok(Row::DeliveryReport(status)) => {
                if seen.first_time(&status.id, now_ms)? {
                    push.events.push(Event::DeliveryStatusChanged(status));
                }
            }
        }
    }
    Ok(push)
}

/// Fills in an empty recipient with the number the gateway reported for the SIM.
fn with_recipient(
    kv: &dyn KeyValue,
    mut message: ReceivedMessage,
) -> Result<ReceivedMessage, String> {
    if message.recipient.is_empty()
        && let Some(number) = sims::resolve_number(
            kv,
            message.device.as_deref(),
            message.port.as_deref(),
            message.iccid.as_deref(),
        )?
    {
        message.recipient = number;
    }
    Ok(message)
}

/// Any push, read as a `Value`: `Err` is the reply to a push that is not one at all.
fn parse(body: &[u8]) -> Result<Result<Parsed, String>, WebhookOutcome> {
    let body: Value = serde_json::from_slice(body)
        .map_err(|error| rejected(400, &format!("Malformed JSON: {error}")))?;
    match body.get("type") {
        None | Some(Value::Null) => Err(rejected(400, "Missing type")),
        Some(Value::String(kind)) => Ok(match kind.as_str() {
            "recv-sms" => sms::parse_push(&body).map(Parsed::Rows),
            "dev-status" => status::dev_status(&body).map(Parsed::Statuses),
            "port-status" => status::port_status(&body).map(Parsed::Statuses),
            "status-report" => status::status_report(&body).map(Parsed::Statuses),
            other => return Err(rejected(400, &format!("Unknown type: {other}"))),
        }),
        Some(other) => Err(rejected(400, &format!("Unknown type: {other}"))),
    }
}

fn remember_sims(kv: &dyn KeyValue, push: &Push) -> Result<(), String> {
    for event in &push.events {
        if let Event::SimStatusChanged(status) = event {
            sims::record(kv, status)?;
        }
    }
    Ok(())
}

fn reply(status: u16, message: &str) -> HttpReply {
    /// The gateway's expected answer, `{"message": …}`, without building a JSON map.
    #[derive(serde::Serialize)]
    struct Reply<'a> {
        message: &'a str,
    }
    HttpReply::json(
        status,
        serde_json::to_vec(&Reply { message }).expect("a string serialises"),
    )
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
    use crate::sms::tests::b64;
    use serde_json::json;
    use simrelay_sdk::{DeliveryState, SimState};

    const KEY: &str = "s3cret-key";
    const NOW: u64 = 1_700_000_000_000;

    fn context_at(now_ms: u64, settings: &[(&str, &str)]) -> CallContext {
        let mut all = vec![("api_key", KEY)];
        all.extend_from_slice(settings);
        CallContext {
            now_ms,
            ..CallContext::for_tests(&all)
        }
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

    fn webhook_at(
        kv: &Stores,
        now_ms: u64,
        key: Option<&str>,
        body: &str,
    ) -> (u16, String, Vec<Event>) {
        let outcome = Ejoin::on_webhook(&context_at(now_ms, &[]), kv, request(key, body))
            .expect("no internal error");
        let reply: Value = serde_json::from_slice(&outcome.reply.body).expect("reply is JSON");
        let message = reply["message"]
            .as_str()
            .expect("reply has a message")
            .to_owned();
        assert!(outcome.effects.deliveries.is_empty());
        (outcome.reply.status, message, outcome.effects.events)
    }

    fn webhook(kv: &Stores, key: Option<&str>, body: &str) -> (u16, String, Vec<Event>) {
        webhook_at(kv, NOW, key, body)
    }

    fn messages(events: &[Event]) -> Vec<&ReceivedMessage> {
        events
            .iter()
            .filter_map(|event| match event {
                Event::MessageReceived(message) => Some(message),
                _ => None,
            })
            .collect()
    }

    fn recv_sms(rows: &[Value]) -> String {
        json!({ "type": "recv-sms", "sms": rows }).to_string()
    }

    const SAMPLE_SMS: &str = r#"{"type":"recv-sms","sms":[[null,null,"2023-10-27 10:00:00",
        "BankInfo","79001234567","SGVsbG8gV29ybGQ="]]}"#;

    const SAMPLE_STATUS: &str = r#"{"type":"dev-status","mac":"00:1A:2B:3C:4D:5E","status":[
        {"sn":"+79001234567","iccid":"8970100000000000001","imsi":"250010000000001",
         "st":1,"active":true}]}"#;

    /// The provider document's "Error while handle sms" request.
    const SAMPLE_SMS_STRING_FLAG: &str = r#"{"type":"recv-sms","sms":[["0","1",
        "2026-02-05 10:00:00","SenderID","79990000000","SGVsbG8gV29ybGQ="]]}"#;

    #[test]
    fn describes_itself() {
        let descriptor = Ejoin::describe();
        assert_eq!(descriptor.name, "ejoin");
        assert_eq!(descriptor.version, env!("CARGO_PKG_VERSION"));
        assert_eq!(descriptor.api_version, simrelay_sdk::API_VERSION);
        assert!(matches!(
            descriptor.capabilities[..],
            [Capability::Webhook, Capability::Tick]
        ));
        let key = descriptor.webhook_key.expect("the host checks the key");
        assert_eq!(key.setting, "api_key");
        assert!(matches!(key.source, KeySource::Capture(ref name) if name == "key"));
        assert_eq!(key.rejection.status, 401);
        let settings: Vec<_> = descriptor
            .settings
            .iter()
            .map(|s| (s.name.as_str(), s.required, s.secret))
            .collect();
        assert_eq!(
            settings,
            [
                ("api_key", true, true),
                ("dedupe_window_secs", false, false),
                ("long_sms_window_secs", false, false),
            ]
        );
    }

    #[test]
    fn provider_samples() {
        let kv = Stores::memory();
        let (status, message, events) = webhook(&kv, Some(KEY), SAMPLE_SMS);
        assert_eq!((status, message.as_str()), (200, "Ok"));
        let [sms] = &messages(&events)[..] else {
            panic!("one received message expected");
        };
        assert_eq!(sms.text, "Hello World");
        assert_eq!(sms.sender, "BankInfo");
        assert_eq!(sms.recipient, "79001234567");

        let (status, message, events) = webhook(&kv, Some(KEY), SAMPLE_SMS_STRING_FLAG);
        assert_eq!((status, message.as_str()), (200, "Ok"));
        assert_eq!(messages(&events)[0].sender, "SenderID");

        let (status, message, events) = webhook(&kv, Some(KEY), SAMPLE_STATUS);
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
        let (status, message, again) = webhook_at(&kv, NOW + 60_000, Some(KEY), SAMPLE_SMS);
        assert_eq!((status, message.as_str()), (200, "Ok"));
        assert!(again.is_empty());
    }

    #[test]
    fn duplicate_rows_in_one_push_are_emitted_once() {
        let row = json!([0, "1.01", 1_700_000_000, "s", "r", "SGVsbG8="]);
        let (_, _, events) = webhook(&Stores::memory(), Some(KEY), &recv_sms(&[row.clone(), row]));
        assert_eq!(events.len(), 1);
    }

    #[test]
    fn identical_sms_at_different_times_are_both_messages() {
        let kv = Stores::memory();
        let at = |seconds: u64| json!([0, "1.01", seconds, "Bank", "7900", b64("Code 1234")]);
        let (_, _, first) = webhook(&kv, Some(KEY), &recv_sms(&[at(1_700_000_000)]));
        let (_, _, second) = webhook(&kv, Some(KEY), &recv_sms(&[at(1_700_000_300)]));
        assert_eq!((first.len(), second.len()), (1, 1));
        assert_ne!(messages(&first)[0].id, messages(&second)[0].id);

        // Rows without a time look alike: once the window has passed, it is a new SMS.
        let timeless = recv_sms(&[json!([0, "1.01", null, "Bank", "7900", b64("Code 1234")])]);
        let ctx = |now| context_at(now, &[("dedupe_window_secs", "600")]);
        let outcome = |now| {
            Ejoin::on_webhook(&ctx(now), &kv, request(Some(KEY), &timeless))
                .unwrap()
                .effects
                .events
                .len()
        };
        assert_eq!(outcome(NOW), 1);
        assert_eq!(outcome(NOW + 599_999), 0, "a re-send within the window");
        assert_eq!(outcome(NOW + 600_000), 1, "the same text again, later");
    }

    #[test]
    fn tick_sweeps_expired_marks() {
        let kv = Stores::memory();
        webhook(&kv, Some(KEY), SAMPLE_SMS);
        assert!(!kv.keys("seen").unwrap().is_empty());
        let later = context_at(NOW + 86_400_000, &[]);
        let effects = Ejoin::on_tick(&later, &kv).unwrap();
        assert!(effects.events.is_empty() && effects.deliveries.is_empty());
        let left: Vec<_> = kv
            .keys("seen")
            .unwrap()
            .into_iter()
            .filter(|key| key != "seen@next")
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }

    fn long_sms_rows(port: &str) -> (Vec<Value>, String) {
        let parts = ["Ж".repeat(67), "з".repeat(67), "конец".to_owned()];
        let rows = parts
            .iter()
            .enumerate()
            .map(|(n, part)| json!([0, port, 1_700_000_000 + n as u64, "Bank", "7900", b64(part)]))
            .collect();
        (rows, parts.concat())
    }

    #[test]
    fn long_sms_in_one_push_is_one_message() {
        let kv = Stores::memory();
        let (rows, text) = long_sms_rows("1.01");
        let (status, _, events) = webhook(&kv, Some(KEY), &recv_sms(&rows));
        assert_eq!(status, 200);
        let [message] = &messages(&events)[..] else {
            panic!("one joined message expected, got {events:?}");
        };
        assert_eq!(message.text, text);
        assert_eq!(message.received_at_ms, Some(1_700_000_000_000));
        assert!(kv.keys("long/").unwrap().is_empty());
    }

    #[test]
    fn long_sms_over_three_pushes_is_one_message_and_re_sent_parts_add_nothing() {
        let kv = Stores::memory();
        let (rows, text) = long_sms_rows("1.01");
        let (_, _, first) = webhook(&kv, Some(KEY), &recv_sms(&rows[0..1]));
        let (_, _, second) = webhook_at(&kv, NOW + 1_000, Some(KEY), &recv_sms(&rows[1..2]));
        // The gateway re-sends the second push: nothing new.
        let (_, _, again) = webhook_at(&kv, NOW + 1_500, Some(KEY), &recv_sms(&rows[1..2]));
        assert!(first.is_empty() && second.is_empty() && again.is_empty());
        let (_, _, third) = webhook_at(&kv, NOW + 2_000, Some(KEY), &recv_sms(&rows[2..3]));
        let [message] = &messages(&third)[..] else {
            panic!("one joined message expected");
        };
        assert_eq!(message.text, text);
        // All three pushes again: nothing new.
        let (_, _, replay) = webhook_at(&kv, NOW + 3_000, Some(KEY), &recv_sms(&rows));
        assert!(replay.is_empty());
    }

    #[test]
    fn long_sms_without_its_last_part_is_flushed_on_tick() {
        let kv = Stores::memory();
        let (rows, _) = long_sms_rows("1.01");
        webhook(&kv, Some(KEY), &recv_sms(&rows[0..2]));
        let tick = |now, window: &str| {
            Ejoin::on_tick(&context_at(now, &[("long_sms_window_secs", window)]), &kv)
                .unwrap()
                .events
        };
        assert!(tick(NOW + 9_999, "10").is_empty());
        let events = tick(NOW + 10_000, "10");
        let [message] = &messages(&events)[..] else {
            panic!("the parts that came expected");
        };
        assert_eq!(message.text.chars().count(), 134);
        assert!(tick(NOW + 20_000, "10").is_empty());
    }

    #[test]
    fn empty_recipient_is_the_number_last_reported_for_the_port() {
        let kv = Stores::memory();
        let status = json!({ "type": "dev-status", "mac": "m1", "status": [
            { "port": "1A", "sn": "+79001234567", "st": "3 registered" },
            { "port": "1B", "sn": "+79007654321", "st": 3, "iccid": "8970002" }]});
        webhook(&kv, Some(KEY), &status.to_string());
        let rows = [
            json!([0, "1.01", 1, "Bank", "", b64("one")]),
            json!([0, "1.02", 2, "Bank", null, b64("two")]),
            json!([0, "1.03", 3, "Bank", "", b64("three")]),
            json!([0, "9.09", 4, "Bank", "", b64("four"), "8970002"]),
        ];
        let (_, _, events) = webhook(&kv, Some(KEY), &recv_sms(&rows));
        let recipients: Vec<_> = messages(&events)
            .iter()
            .map(|m| m.recipient.as_str())
            .collect();
        assert_eq!(
            recipients,
            ["+79001234567", "+79007654321", "", "+79007654321"]
        );

        // A port-status with no number forgets it.
        let port_status = json!({ "type": "port-status", "port": "1A", "status": "0 No SIM" });
        webhook(&kv, Some(KEY), &port_status.to_string());
        let (_, _, events) = webhook(
            &kv,
            Some(KEY),
            &recv_sms(&[json!([0, "1.01", 5, "B", "", b64("x")])]),
        );
        assert_eq!(messages(&events)[0].recipient, "");
    }

    #[test]
    fn delivery_reports_become_delivery_statuses_once() {
        let kv = Stores::memory();
        let body = recv_sms(&[
            json!([
                1,
                "1.01",
                1_700_000_000,
                "+79168999100",
                "79001234567",
                "0 231027100000"
            ]),
            json!([0, "1.01", 1_700_000_000, "Bank", "7900", b64("hi")]),
        ]);
        let (status, message, events) = webhook(&kv, Some(KEY), &body);
        assert_eq!((status, message.as_str()), (200, "Ok"));
        let [
            Event::DeliveryStatusChanged(report),
            Event::MessageReceived(_),
        ] = &events[..]
        else {
            panic!("a delivery status, then a message: {events:?}");
        };
        assert_eq!(report.state, DeliveryState::Delivered);
        assert_eq!(report.recipient.as_deref(), Some("79001234567"));
        let (_, _, again) = webhook(&kv, Some(KEY), &body);
        assert!(again.is_empty());
    }

    #[test]
    fn status_report_becomes_delivery_statuses() {
        let body = json!({ "type": "status-report", "rpt_num": 1, "rpts": [
            { "tid": 1, "sending": 0, "sent": 1, "failed": 0, "unsent": 0,
              "sdr": [[0, "+79001112233", "1.01", 1_700_000_000]] }]});
        let (status, message, events) = webhook(&Stores::memory(), Some(KEY), &body.to_string());
        assert_eq!((status, message.as_str()), (200, "Ok"));
        let [Event::DeliveryStatusChanged(report)] = &events[..] else {
            panic!("one delivery status expected");
        };
        assert_eq!(report.state, DeliveryState::Sent);
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
    fn missing_or_bad_settings_are_internal_errors() {
        let ctx = CallContext::for_tests(&[]);
        let error = Ejoin::on_webhook(&ctx, &Stores::memory(), request(Some(KEY), SAMPLE_SMS))
            .expect_err("an error");
        assert!(error.contains("api_key"));
        let ctx = context_at(NOW, &[("long_sms_window_secs", "half a minute")]);
        let error = Ejoin::on_tick(&ctx, &Stores::memory()).expect_err("an error");
        assert!(error.contains("long_sms_window_secs"), "{error}");
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
        let [sms] = &messages(&events)[..] else {
            panic!("the valid row expected");
        };
        assert_eq!(sms.text, "Hi");
    }
}
