//! Adapter for SmsGateway24 (Android phones as SMS gateways): sends SMS, and passes on incoming
//! SMS, delivery statuses and the phones' SIMs.
//!
//! - Sending: a `send-sms` event becomes `addsms`, or one `addalotofsms` when several requests
//!   are waiting ([`sends`]). The token comes from `gettoken` and is kept in the instance's
//!   store; an answer saying the token is not valid drops it, a new one is requested, and the
//!   SMS go out again with it (a new delivery). Progress is reported as delivery-status events
//!   whose id is the send request's.
//! - Receiving ([`inbound`]): the service's incoming-SMS and delivery-status webhooks, and, on
//!   tick, polls of `getallsms` (status 5, incoming), `getsmsstatus` for SMS sent, and
//!   `getalldevices`, whose SIMs become SIM-status events for the shared SIM inventory.
//!
//! `{"error":1,…}` answers are refusals even with HTTP 200 ([`api::answer`]).
//!
//! Keys in the instance's store, besides those of [`sends`] and [`inbound`]: `token`,
//! `token/requested` (when a token was last asked for, milliseconds) and `poll/<kind>-due`.

mod api;
mod inbound;
#[cfg(test)]
mod properties;
mod sends;

use serde_json::{Value, json};
use simrelay_sdk::http::retry_after_ms;
use simrelay_sdk::lenient::field;
use simrelay_sdk::{
    Adapter, CallContext, Capability, Delivery, DeliveryOutcome, DeliveryRef, Descriptor, Effects,
    Event, HttpReply, HttpRequest, KeySource, KeyValue, MarkOnce, ResponseOutcome, SettingSpec,
    Stores, Verdict, WebhookKey, WebhookOutcome,
};

use crate::api::Refusal;

pub struct SmsGateway24;

const DEFAULT_BASE_URL: &str = "https://smsgateway24.com";
const SEEN: &str = "seen";
const SWEEP_LIMIT: usize = 500;
/// Wait after a 429 that did not say how long.
const DEFAULT_RETRY_AFTER_MS: u64 = 60_000;

const INCOMING_DUE: &str = "poll/incoming-due";
const STATUS_DUE: &str = "poll/status-due";
pub(crate) const DEVICES_DUE: &str = "poll/devices-due";

/// The instance's configuration.
pub(crate) struct Settings<'a> {
    base_url: &'a str,
    email: &'a str,
    password: &'a str,
    device_id: Option<&'a str>,
    utc_offset_minutes: i32,
    dedupe_window_ms: u64,
    incoming_poll_ms: u64,
    status_poll_ms: u64,
    devices_poll_ms: u64,
}

impl<'a> Settings<'a> {
    fn read(ctx: &'a CallContext) -> Result<Self, String> {
        let millis = |name, default| {
            ctx.number_setting(name, default)
                .map(|secs| secs.saturating_mul(1000))
        };
        let utc_offset_minutes = match ctx.setting("utc_offset_minutes").map(str::trim) {
            None | Some("") => 0,
            Some(value) => value
                .parse::<i32>()
                .ok()
                .filter(|minutes| minutes.abs() <= 14 * 60)
                .ok_or_else(|| {
                    format!(
                        "setting `utc_offset_minutes` must be minutes east of UTC, -840 to 840, \
                         not `{value}`"
                    )
                })?,
        };
        Ok(Settings {
            base_url: ctx
                .setting("base_url")
                .map(str::trim)
                .filter(|url| !url.is_empty())
                .unwrap_or(DEFAULT_BASE_URL)
                .trim_end_matches('/'),
            email: ctx.required_setting("email")?,
            password: ctx.required_setting("password")?,
            device_id: ctx
                .setting("device_id")
                .map(str::trim)
                .filter(|id| !id.is_empty()),
            utc_offset_minutes,
            dedupe_window_ms: millis("dedupe_window_secs", 2 * 86_400)?,
            incoming_poll_ms: millis("incoming_poll_secs", 30)?,
            status_poll_ms: millis("status_poll_secs", 60)?,
            devices_poll_ms: millis("devices_poll_secs", 300)?,
        })
    }
}

/// The token, kept in the instance's store.
pub(crate) mod token {
    use simrelay_sdk::{Delivery, KeyValue};

    use crate::{Settings, api};

    const TOKEN: &str = "token";
    const REQUESTED: &str = "token/requested";
    /// A token is asked for at most this often: a login that failed is not hammered.
    const RETRY_MS: u64 = 60_000;

    pub(crate) fn current(kv: &dyn KeyValue) -> Result<Option<String>, String> {
        Ok(kv
            .get(TOKEN)?
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .filter(|token| !token.is_empty()))
    }

    /// A `gettoken` delivery, unless one was asked for in the last minute.
    pub(crate) fn request(
        kv: &dyn KeyValue,
        settings: &Settings,
        now: u64,
    ) -> Result<Option<Delivery>, String> {
        let requested = kv
            .get(REQUESTED)?
            .and_then(|bytes| String::from_utf8(bytes).ok()?.parse::<u64>().ok());
        if requested.is_some_and(|at| at.saturating_add(RETRY_MS) > now) {
            return Ok(None);
        }
        kv.set(REQUESTED, now.to_string().as_bytes())?;
        Ok(Some(Delivery {
            idempotency_key: format!("gettoken/{now}"),
            request: api::get_token(settings.base_url, settings.email, settings.password),
        }))
    }

    pub(crate) fn received(kv: &dyn KeyValue, token: &str) -> Result<(), String> {
        kv.set(TOKEN, token.as_bytes())?;
        kv.delete(REQUESTED)
    }

    pub(crate) fn forget(kv: &dyn KeyValue) -> Result<(), String> {
        kv.delete(TOKEN)
    }
}

/// Makes a poll due at the next tick, even one turned off (a send needs the devices).
pub(crate) fn due_now(kv: &dyn KeyValue, key: &str) -> Result<(), String> {
    kv.set(key, b"0")
}

/// Whether a poll is due, and if so, schedules the next one.
fn take_due(kv: &dyn KeyValue, key: &str, interval_ms: u64, now: u64) -> Result<bool, String> {
    let due_at = kv
        .get(key)?
        .and_then(|bytes| String::from_utf8(bytes).ok()?.parse::<u64>().ok());
    let due = match due_at {
        Some(at) => at <= now,
        None => interval_ms > 0,
    };
    if due {
        let next = match interval_ms {
            0 => u64::MAX,
            interval => now.saturating_add(interval),
        };
        kv.set(key, next.to_string().as_bytes())?;
    }
    Ok(due)
}

/// What a delivery was, from its idempotency key.
#[derive(Debug, PartialEq)]
enum Request {
    /// `gettoken/<ms>`
    Token,
    /// `addsms/<issue>/<request id>`
    AddSms(String),
    /// `addalotofsms/<n>`
    AddMany(String),
    /// `getsmsstatus/<ms>/<request id>`
    Status(String),
    /// `findsms/<ms>/<request id>`: `getallsms` by `customerid`
    Find(String),
    /// `getallsms/<ms>`: incoming SMS
    Incoming,
    /// `getalldevices/<ms>`
    Devices,
}

impl Request {
    fn parse(key: &str) -> Option<Self> {
        let (kind, rest) = key.split_once('/')?;
        let id = || rest.split_once('/').map(|(_, id)| id.to_owned());
        Some(match kind {
            "gettoken" => Request::Token,
            "addsms" => Request::AddSms(id()?),
            "addalotofsms" => Request::AddMany(rest.to_owned()),
            "getsmsstatus" => Request::Status(id()?),
            "findsms" => Request::Find(id()?),
            "getallsms" => Request::Incoming,
            "getalldevices" => Request::Devices,
            _ => return None,
        })
    }
}

impl Adapter for SmsGateway24 {
    fn describe() -> Descriptor {
        Descriptor {
            capabilities: vec![Capability::Webhook, Capability::Tick, Capability::Send],
            settings: vec![
                SettingSpec::required("email", "SmsGateway24 login (e-mail)"),
                SettingSpec::required("password", "SmsGateway24 password").secret(),
                SettingSpec::required(
                    "webhook_key",
                    "key in the path of the webhook URL given to SmsGateway24 ({key})",
                )
                .secret(),
                SettingSpec::optional(
                    "base_url",
                    "SmsGateway24 server (default https://smsgateway24.com)",
                ),
                SettingSpec::optional(
                    "device_id",
                    "device that sends when a request names none (default: the device seen \
                     most recently)",
                ),
                SettingSpec::optional(
                    "utc_offset_minutes",
                    "the account's time zone, minutes east of UTC, for `timetosend` and times \
                     given without a zone (default 0)",
                ),
                SettingSpec::optional(
                    "incoming_poll_secs",
                    "seconds between polls of incoming SMS; 0 turns them off (default 30)",
                ),
                SettingSpec::optional(
                    "status_poll_secs",
                    "seconds between status polls of SMS sent; 0 turns them off (default 60)",
                ),
                SettingSpec::optional(
                    "devices_poll_secs",
                    "seconds between polls of devices and SIMs; 0 turns them off (default 300)",
                ),
                SettingSpec::optional(
                    "dedupe_window_secs",
                    "seconds an incoming SMS id is remembered (default 172800)",
                ),
            ],
            webhook_key: Some(WebhookKey {
                source: KeySource::Capture("key".into()),
                setting: "webhook_key".into(),
                rejection: reply(401, 1, "Bad key"),
            }),
            ..Descriptor::new("smsgateway24", env!("CARGO_PKG_VERSION"))
        }
    }

    fn on_webhook(
        ctx: &CallContext,
        kv: &Stores,
        request: HttpRequest,
    ) -> Result<WebhookOutcome, String> {
        let settings = Settings::read(ctx)?;
        let expected = ctx.required_setting("webhook_key")?;
        if !request
            .param("key")
            .is_some_and(|key| simrelay_sdk::secrets_match(key, expected))
        {
            return Ok(rejected(401, "Bad key"));
        }
        let fields = match inbound::webhook_fields(&request) {
            Ok(fields) => fields,
            Err(problem) => return Ok(rejected(400, &problem)),
        };
        let events = match inbound::report(&**kv, &settings, &fields)? {
            Ok(inbound::Report::Incoming(message)) => {
                inbound::once(&**kv, &settings, ctx.now_ms, message)?
                    .into_iter()
                    .collect()
            }
            Ok(inbound::Report::Status {
                sms_id,
                code,
                title,
                recipient,
            }) => inbound::status_report(&**kv, sms_id, code, title, recipient)?,
            Err(problem) => return Ok(rejected(400, &problem)),
        };
        Ok(WebhookOutcome {
            reply: reply(200, 0, "OK"),
            effects: Effects {
                events,
                deliveries: Vec::new(),
            },
        })
    }

    fn on_event(ctx: &CallContext, kv: &Stores, event: Event) -> Result<Effects, String> {
        let Event::SendSms(request) = event else {
            return Ok(Effects::none());
        };
        let settings = Settings::read(ctx)?;
        let (events, deliveries) = sends::queue(&**kv, &settings, ctx.now_ms, request)?;
        Ok(Effects { events, deliveries })
    }

    fn on_tick(ctx: &CallContext, kv: &Stores) -> Result<Effects, String> {
        let settings = Settings::read(ctx)?;
        let (kv, now) = (&**kv, ctx.now_ms);
        MarkOnce::new(kv, SEEN, settings.dedupe_window_ms).sweep(now, SWEEP_LIMIT)?;
        let mut deliveries = sends::flush(kv, &settings, now)?;
        let incoming_due = take_due(kv, INCOMING_DUE, settings.incoming_poll_ms, now)?;
        let status_due = take_due(kv, STATUS_DUE, settings.status_poll_ms, now)?;
        let devices_due = take_due(kv, DEVICES_DUE, settings.devices_poll_ms, now)?;
        let Some(token) = token::current(kv)? else {
            if incoming_due || status_due || devices_due {
                deliveries.extend(token::request(kv, &settings, now)?);
                // Polled again as soon as the token is there.
                for (due, key) in [
                    (incoming_due, INCOMING_DUE),
                    (status_due, STATUS_DUE),
                    (devices_due, DEVICES_DUE),
                ] {
                    if due {
                        due_now(kv, key)?;
                    }
                }
            }
            return Ok(Effects {
                events: Vec::new(),
                deliveries,
            });
        };
        if incoming_due {
            let fields = inbound::incoming_poll_fields(kv, &settings, &token, now)?;
            deliveries.push(Delivery {
                idempotency_key: format!("getallsms/{now}"),
                request: api::post(settings.base_url, "getallsms", &fields),
            });
        }
        if status_due {
            deliveries.extend(sends::status_polls(kv, &settings, &token, now)?);
        }
        if devices_due {
            deliveries.push(Delivery {
                idempotency_key: format!("getalldevices/{now}"),
                request: api::post(settings.base_url, "getalldevices", &[("token", token)]),
            });
        }
        Ok(Effects {
            events: Vec::new(),
            deliveries,
        })
    }

    fn on_response(
        ctx: &CallContext,
        kv: &Stores,
        delivery: DeliveryRef,
        outcome: DeliveryOutcome,
    ) -> Result<ResponseOutcome, String> {
        let settings = Settings::read(ctx)?;
        let (kv, now) = (&**kv, ctx.now_ms);
        let Some(request) = Request::parse(&delivery.idempotency_key) else {
            return Ok(verdict(Verdict::GiveUp(format!(
                "not a delivery this plugin asks for: {}",
                delivery.idempotency_key
            ))));
        };
        let response = match outcome {
            DeliveryOutcome::Response(response) => response,
            DeliveryOutcome::TransportError(_) => return Ok(verdict(Verdict::Retry)),
        };
        if response.status == 429 {
            let wait = response
                .header("retry-after")
                .and_then(|value| retry_after_ms(value, now))
                .unwrap_or(DEFAULT_RETRY_AFTER_MS);
            return Ok(verdict(Verdict::RetryAfterMs(wait.max(1000))));
        }
        let answer = api::answer(response.status, &response.body);
        if let Err(refusal) = &answer {
            if refusal.token_rejected && request != Request::Token {
                return token_rejected(kv, &settings, now, &request, refusal);
            }
            if response.status >= 500 {
                return Ok(verdict(Verdict::Retry));
            }
        }
        match request {
            Request::Token => token_answer(kv, &settings, now, answer),
            Request::AddSms(id) => added(kv, now, &[id], answer, None),
            Request::AddMany(number) => {
                let ids = sends::batch(kv, &number)?;
                added(kv, now, &ids, answer, Some(&number))
            }
            Request::Status(id) => polled(answer, |answer| sends::status_answer(kv, &id, answer)),
            Request::Find(id) => polled(answer, |answer| {
                sends::found_answer(kv, &settings, &id, answer)
            }),
            Request::Incoming => {
                polled(answer, |answer| inbound::polled(kv, &settings, now, answer))
            }
            Request::Devices => {
                let mut outcome = polled(answer, |answer| {
                    inbound::devices(kv, &settings, now, answer)
                })?;
                // A send may have waited for a device.
                outcome.effects.deliveries = sends::flush(kv, &settings, now)?;
                Ok(outcome)
            }
        }
    }
}

/// `gettoken` answered: keep the token and send what waited for it.
fn token_answer(
    kv: &dyn KeyValue,
    settings: &Settings,
    now: u64,
    answer: Result<Value, Refusal>,
) -> Result<ResponseOutcome, String> {
    let token = match &answer {
        Ok(answer) => field(answer, "token"),
        Err(_) => None,
    };
    let Some(token) = token else {
        let why = match answer {
            Err(refusal) => refusal.message,
            Ok(_) => "the answer has no token".into(),
        };
        eprintln!("smsgateway24: login failed: {why}");
        return Ok(verdict(Verdict::GiveUp(format!(
            "SmsGateway24 refused the login: {why}"
        ))));
    };
    token::received(kv, &token)?;
    Ok(ResponseOutcome {
        verdict: Verdict::Delivered,
        effects: Effects {
            events: Vec::new(),
            deliveries: sends::flush(kv, settings, now)?,
        },
    })
}

/// `addsms` or `addalotofsms` answered for the requests `ids`.
fn added(
    kv: &dyn KeyValue,
    now: u64,
    ids: &[String],
    answer: Result<Value, Refusal>,
    batch: Option<&str>,
) -> Result<ResponseOutcome, String> {
    let (verdict_, events) = match answer {
        Ok(answer) => {
            let sms_ids = match batch {
                None => vec![field(&answer, "sms_id")],
                Some(_) => sends::batch_sms_ids(&answer, ids.len()),
            };
            (Verdict::Delivered, sends::accepted(kv, now, ids, &sms_ids)?)
        }
        Err(refusal) if refusal.unreadable => (
            Verdict::GiveUp(refusal.message.clone()),
            sends::unknown_outcome(kv, now, ids, &refusal.message)?,
        ),
        Err(refusal) => (
            Verdict::GiveUp(refusal.message.clone()),
            sends::refused(kv, ids, &refusal.message)?,
        ),
    };
    if let Some(number) = batch {
        sends::forget_batch(kv, number)?;
    }
    Ok(ResponseOutcome {
        verdict: verdict_,
        effects: Effects {
            events,
            deliveries: Vec::new(),
        },
    })
}

/// A poll answered: its events, or why it was refused.
fn polled(
    answer: Result<Value, Refusal>,
    events: impl FnOnce(&Value) -> Result<Vec<Event>, String>,
) -> Result<ResponseOutcome, String> {
    match answer {
        Ok(answer) => Ok(ResponseOutcome {
            verdict: Verdict::Delivered,
            effects: Effects {
                events: events(&answer)?,
                deliveries: Vec::new(),
            },
        }),
        Err(refusal) => Ok(verdict(Verdict::GiveUp(refusal.message))),
    }
}

/// The service no longer takes the token: drop it, ask for a new one, and put the SMS this
/// request carried back in the queue, to go out again with the new token.
fn token_rejected(
    kv: &dyn KeyValue,
    settings: &Settings,
    now: u64,
    request: &Request,
    refusal: &Refusal,
) -> Result<ResponseOutcome, String> {
    token::forget(kv)?;
    match request {
        Request::AddSms(id) => sends::requeue(kv, std::slice::from_ref(id))?,
        Request::AddMany(number) => {
            sends::requeue(kv, &sends::batch(kv, number)?)?;
            sends::forget_batch(kv, number)?;
        }
        _ => {}
    }
    Ok(ResponseOutcome {
        verdict: Verdict::GiveUp(format!(
            "SmsGateway24 no longer takes the token ({}); a new one is requested and the \
             request is made again with it",
            refusal.message
        )),
        effects: Effects {
            events: Vec::new(),
            deliveries: token::request(kv, settings, now)?.into_iter().collect(),
        },
    })
}

fn verdict(verdict: Verdict) -> ResponseOutcome {
    ResponseOutcome {
        verdict,
        effects: Effects::none(),
    }
}

/// The service's own answer shape: `{"error":0|1,"message":…}`.
fn reply(status: u16, error: u8, message: &str) -> HttpReply {
    HttpReply::json(
        status,
        json!({ "error": error, "message": message }).to_string(),
    )
}

fn rejected(status: u16, message: &str) -> WebhookOutcome {
    WebhookOutcome {
        reply: reply(status, 1, message),
        effects: Effects::none(),
    }
}

simrelay_sdk::export_adapter!(SmsGateway24);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::tests::{GETALLDEVICES_SAMPLE, GETALLSMS_SAMPLE};
    use simrelay_sdk::encoding::form_decode;
    use simrelay_sdk::{DeliveryState, DeliveryStatus, HttpResponse, SendRequest, SimState};

    const NOW: u64 = 1_700_000_000_000;
    const KEY: &str = "hook-key";

    fn ctx_with(now_ms: u64, extra: &[(&str, &str)]) -> CallContext {
        let mut settings = vec![
            ("email", "ops@example.org"),
            ("password", "pa+ss"),
            ("webhook_key", KEY),
            ("base_url", "https://sg.test"),
        ];
        settings.extend_from_slice(extra);
        CallContext {
            now_ms,
            ..CallContext::for_tests(&settings)
        }
    }

    fn ctx(now_ms: u64) -> CallContext {
        ctx_with(now_ms, &[("device_id", "260")])
    }

    fn send_request(id: &str, to: &str) -> SendRequest {
        SendRequest {
            id: id.into(),
            to: to.into(),
            text: "Your code is 1234".into(),
            device: None,
            sim: None,
            send_at_ms: None,
            urgent: false,
        }
    }

    fn send(kv: &Stores, ctx: &CallContext, id: &str) -> Effects {
        SmsGateway24::on_event(ctx, kv, Event::SendSms(send_request(id, "+4915752982212")))
            .expect("no internal error")
    }

    fn respond_at(
        kv: &Stores,
        ctx: &CallContext,
        key: &str,
        status: u16,
        body: &str,
    ) -> ResponseOutcome {
        let response = HttpResponse {
            status,
            headers: vec![("retry-after".into(), "30".into())],
            body: body.as_bytes().to_vec(),
        };
        let delivery = DeliveryRef {
            idempotency_key: key.into(),
            attempt: 1,
        };
        SmsGateway24::on_response(ctx, kv, delivery, DeliveryOutcome::Response(response))
            .expect("no internal error")
    }

    fn respond(kv: &Stores, key: &str, body: &str) -> ResponseOutcome {
        respond_at(kv, &ctx(NOW), key, 200, body)
    }

    fn statuses(events: &[Event]) -> Vec<(String, DeliveryState, String)> {
        events
            .iter()
            .filter_map(|event| match event {
                Event::DeliveryStatusChanged(DeliveryStatus {
                    id, state, detail, ..
                }) => Some((id.clone(), *state, detail.clone().unwrap_or_default())),
                _ => None,
            })
            .collect()
    }

    fn form(delivery: &Delivery) -> Vec<(String, String)> {
        form_decode(&String::from_utf8_lossy(&delivery.request.body))
    }

    fn webhook(kv: &Stores, key: &str, body: &str) -> (u16, Value, Vec<Event>) {
        let request = HttpRequest {
            method: "POST".into(),
            path: format!("/sg24/{key}"),
            query: String::new(),
            params: vec![("key".into(), key.into())],
            headers: Vec::new(),
            body: body.as_bytes().to_vec(),
        };
        let outcome = SmsGateway24::on_webhook(&ctx(NOW), kv, request).expect("no internal error");
        let reply = serde_json::from_slice(&outcome.reply.body).expect("JSON reply");
        (outcome.reply.status, reply, outcome.effects.events)
    }

    /// A send goes out with a token: returns the delivery that carries it.
    fn with_token(kv: &Stores) {
        token::received(&**kv, "tk1").unwrap();
    }

    #[test]
    fn describes_itself() {
        let descriptor = SmsGateway24::describe();
        assert_eq!(descriptor.name, "smsgateway24");
        assert_eq!(descriptor.api_version, simrelay_sdk::API_VERSION);
        assert!(matches!(
            descriptor.capabilities[..],
            [Capability::Webhook, Capability::Tick, Capability::Send]
        ));
        let settings: Vec<_> = descriptor
            .settings
            .iter()
            .map(|s| (s.name.as_str(), s.required, s.secret))
            .collect();
        assert_eq!(
            settings,
            [
                ("email", true, false),
                ("password", true, true),
                ("webhook_key", true, true),
                ("base_url", false, false),
                ("device_id", false, false),
                ("utc_offset_minutes", false, false),
                ("incoming_poll_secs", false, false),
                ("status_poll_secs", false, false),
                ("devices_poll_secs", false, false),
                ("dedupe_window_secs", false, false),
            ]
        );
        let key = descriptor.webhook_key.unwrap();
        assert_eq!(key.setting, "webhook_key");
    }

    #[test]
    fn sends_wait_for_a_token_then_go_out_as_one_batch() {
        let kv = Stores::memory();
        let first = send(&kv, &ctx(NOW), "s1");
        assert_eq!(
            statuses(&first.events),
            [("s1".into(), DeliveryState::Pending, "queued".into())]
        );
        let [login] = &first.deliveries[..] else {
            panic!("a token is asked for");
        };
        assert_eq!(login.idempotency_key, format!("gettoken/{NOW}"));
        assert_eq!(
            login.request.url,
            "https://sg.test/getdata/gettoken?email=ops%40example.org&pass=pa%2Bss"
        );
        let second = send(&kv, &ctx(NOW + 1), "s2");
        assert!(second.deliveries.is_empty(), "the token is on its way");

        let outcome = respond(
            &kv,
            &login.idempotency_key,
            r#"{"error":0,"message":"OK","token":"tk1"}"#,
        );
        assert!(matches!(outcome.verdict, Verdict::Delivered));
        let [batch] = &outcome.effects.deliveries[..] else {
            panic!("one addalotofsms for both");
        };
        assert!(batch.request.url.ends_with("/getdata/addalotofsms"));
        let data: Value = serde_json::from_str(&form(batch)[0].1).unwrap();
        assert_eq!(data["token"], "tk1");
        assert_eq!(data["smsdata"].as_array().unwrap().len(), 2);
        assert_eq!(data["smsdata"][0]["sendto"], "+4915752982212");
        assert_eq!(data["smsdata"][0]["device_id"], 260);

        let outcome = respond(&kv, &batch.idempotency_key, r#"{"error":0,"message":"OK"}"#);
        assert!(matches!(outcome.verdict, Verdict::Delivered));
        let accepted = statuses(&outcome.effects.events);
        assert_eq!(accepted.len(), 2);
        assert!(
            accepted
                .iter()
                .all(|(_, state, _)| *state == DeliveryState::Pending)
        );
        assert_eq!(sends::stage_of(&*kv, "s1").as_deref(), Some("accepted"));
        assert!(kv.keys("batch/").unwrap().is_empty());
    }

    #[test]
    fn one_send_with_a_token_is_addsms_and_followed_to_delivery() {
        let kv = Stores::memory();
        with_token(&kv);
        let effects = send(&kv, &ctx(NOW), "s1");
        let [add] = &effects.deliveries[..] else {
            panic!("addsms expected");
        };
        assert_eq!(add.idempotency_key, "addsms/1/s1");
        let fields = form(add);
        assert!(fields.contains(&("sendto".into(), "+4915752982212".into())));
        assert!(String::from_utf8_lossy(&add.request.body).contains("sendto=%2B4915752982212"));
        let outcome = respond(
            &kv,
            &add.idempotency_key,
            r#"{ "error": 0, "sms_id": 62807347, "message": "Sms has been saved successfully"}"#,
        );
        assert_eq!(
            statuses(&outcome.effects.events),
            [(
                "s1".into(),
                DeliveryState::Pending,
                "accepted by SmsGateway24 as SMS 62807347".into()
            )]
        );

        let polls = SmsGateway24::on_tick(&ctx(NOW + 60_000), &kv)
            .unwrap()
            .deliveries;
        let poll = polls
            .iter()
            .find(|d| d.idempotency_key.starts_with("getsmsstatus/"))
            .expect("a status poll");
        assert!(form(poll).contains(&("sms_id".into(), "62807347".into())));
        let outcome = respond(
            &kv,
            &poll.idempotency_key,
            r#"{"error":0,"message":"OK","sms_id":62807347,"status":6,"status_description":"sent"}"#,
        );
        assert_eq!(
            statuses(&outcome.effects.events),
            [("s1".into(), DeliveryState::Sent, "6 sent".into())]
        );
        // The service's delivery-status webhook has the last word.
        let (status, _, events) = webhook(
            &kv,
            KEY,
            r#"{"sms_id":62807347,"status_id":7,"status_message":"delivered","sendto":"+4915752982212","device_id":260}"#,
        );
        assert_eq!(status, 200);
        assert_eq!(
            statuses(&events),
            [("s1".into(), DeliveryState::Delivered, "7 delivered".into())]
        );
        assert!(
            kv.keys("send/").unwrap().is_empty(),
            "final: no longer followed"
        );
        assert!(kv.keys("sms/").unwrap().is_empty());
    }

    #[test]
    fn an_expired_token_is_renewed_and_the_send_made_again() {
        let kv = Stores::memory();
        with_token(&kv);
        let add = send(&kv, &ctx(NOW), "s1").deliveries.remove(0);
        let outcome = respond(
            &kv,
            &add.idempotency_key,
            r#"{"error":1,"message":"Token is not valid"}"#,
        );
        let Verdict::GiveUp(reason) = &outcome.verdict else {
            panic!("the old request is done with");
        };
        assert!(reason.contains("new one"), "{reason}");
        let [login] = &outcome.effects.deliveries[..] else {
            panic!("a new token is asked for");
        };
        assert!(login.idempotency_key.starts_with("gettoken/"));
        assert!(
            outcome.effects.events.is_empty(),
            "not a failure of the SMS"
        );
        let outcome = respond(&kv, &login.idempotency_key, r#"{"error":0,"token":"tk2"}"#);
        let [again] = &outcome.effects.deliveries[..] else {
            panic!("the SMS goes out again");
        };
        assert_eq!(
            again.idempotency_key, "addsms/2/s1",
            "a new idempotency key"
        );
        assert!(form(again).contains(&("token".into(), "tk2".into())));
    }

    #[test]
    fn refusals_and_failures() {
        let kv = Stores::memory();
        with_token(&kv);
        let add = send(&kv, &ctx(NOW), "s1").deliveries.remove(0);
        // Retried: the service is down, busy, or unreachable.
        assert!(matches!(
            respond_at(&kv, &ctx(NOW), &add.idempotency_key, 502, "x").verdict,
            Verdict::Retry
        ));
        assert!(matches!(
            respond_at(&kv, &ctx(NOW), &add.idempotency_key, 429, "").verdict,
            Verdict::RetryAfterMs(30_000)
        ));
        let transport = SmsGateway24::on_response(
            &ctx(NOW),
            &kv,
            DeliveryRef {
                idempotency_key: add.idempotency_key.clone(),
                attempt: 2,
            },
            DeliveryOutcome::TransportError("timeout".into()),
        )
        .unwrap();
        assert!(matches!(transport.verdict, Verdict::Retry));
        // `{"error":1}` with HTTP 200 is a refusal.
        let outcome = respond(
            &kv,
            &add.idempotency_key,
            r#"{"error":1,"message":"Device not found"}"#,
        );
        assert!(
            matches!(outcome.verdict, Verdict::GiveUp(ref reason) if reason == "Device not found")
        );
        assert_eq!(
            statuses(&outcome.effects.events),
            [(
                "s1".into(),
                DeliveryState::Failed,
                "Device not found".into()
            )]
        );

        // An answer that cannot be read: maybe sent; looked up, never sent twice.
        let add = send(&kv, &ctx(NOW), "s2").deliveries.remove(0);
        let outcome = respond(&kv, &add.idempotency_key, "<html>");
        assert!(matches!(outcome.verdict, Verdict::GiveUp(_)));
        assert_eq!(
            statuses(&outcome.effects.events)[0].1,
            DeliveryState::Pending
        );
        let polls = SmsGateway24::on_tick(&ctx(NOW + 60_000), &kv)
            .unwrap()
            .deliveries;
        let find = polls
            .iter()
            .find(|d| d.idempotency_key.starts_with("findsms/"))
            .expect("looked up by customerid");
        let customerid = form(find)
            .into_iter()
            .find(|(name, _)| name == "customerid")
            .unwrap()
            .1;
        let listing = json!({ "smss": { "9": { "id": 9, "customerid": customerid.parse::<u64>().unwrap(),
                                               "status": 8, "statustitle": "not delivered" } } });
        let outcome = respond(&kv, &find.idempotency_key, &listing.to_string());
        assert_eq!(
            statuses(&outcome.effects.events),
            [("s2".into(), DeliveryState::Failed, "8 not delivered".into())]
        );

        // Nonsense requests are failures at once.
        let effects =
            SmsGateway24::on_event(&ctx(NOW), &kv, Event::SendSms(send_request("s3", " ")))
                .unwrap();
        assert_eq!(statuses(&effects.events)[0].1, DeliveryState::Failed);
        assert!(effects.deliveries.is_empty());
        // The same request twice is sent once.
        assert!(send(&kv, &ctx(NOW), "s4").deliveries.len() == 1);
        assert!(send(&kv, &ctx(NOW), "s4").deliveries.is_empty());
    }

    #[test]
    fn a_failed_login_is_explained_and_not_hammered() {
        let kv = Stores::memory();
        let login = send(&kv, &ctx(NOW), "s1").deliveries.remove(0);
        let outcome = respond(
            &kv,
            &login.idempotency_key,
            r#"{"error":1,"message":"Login or password incorrect"}"#,
        );
        assert!(
            matches!(outcome.verdict, Verdict::GiveUp(ref reason) if reason.contains("Login or password incorrect"))
        );
        let tick = |now| SmsGateway24::on_tick(&ctx(now), &kv).unwrap().deliveries;
        assert!(tick(NOW + 30_000).is_empty());
        let retry = tick(NOW + 60_000);
        assert!(
            retry
                .iter()
                .any(|d| d.idempotency_key.starts_with("gettoken/"))
        );
    }

    #[test]
    fn devices_feed_the_sim_inventory_and_pick_the_sending_device() {
        let kv = Stores::memory();
        with_token(&kv);
        let no_device = ctx_with(NOW, &[]);
        let effects = SmsGateway24::on_event(
            &no_device,
            &kv,
            Event::SendSms(send_request("s1", "+49157")),
        )
        .unwrap();
        assert!(effects.deliveries.is_empty(), "no device known yet");
        let polls = SmsGateway24::on_tick(&no_device, &kv).unwrap().deliveries;
        let devices = polls
            .iter()
            .find(|d| d.idempotency_key.starts_with("getalldevices/"))
            .expect("devices are asked for");
        let now = 1_587_661_341_000; // 2020-04-23 17:02:21 UTC, when device 1576 checked in
        let outcome = respond_at(
            &kv,
            &ctx_with(now, &[]),
            &devices.idempotency_key,
            200,
            GETALLDEVICES_SAMPLE,
        );
        let sims: Vec<_> = outcome
            .effects
            .events
            .iter()
            .map(|event| match event {
                Event::SimStatusChanged(sim) => sim.clone(),
                other => panic!("SIM statuses expected, not {other:?}"),
            })
            .collect();
        assert_eq!(sims.len(), 2);
        let emulator = sims
            .iter()
            .find(|sim| sim.device.as_deref() == Some("1576"))
            .unwrap();
        assert_eq!(emulator.state, SimState::Registered);
        assert_eq!(emulator.number.as_deref(), Some("+15555215554"));
        assert_eq!(emulator.port.as_deref(), Some("0"));
        let other = sims
            .iter()
            .find(|sim| sim.device.as_deref() == Some("1297"))
            .unwrap();
        assert_eq!(other.state, SimState::Unknown, "not seen for days");
        let [add] = &outcome.effects.deliveries[..] else {
            panic!("the waiting send goes out");
        };
        assert!(form(add).contains(&("device_id".into(), "1576".into())));

        // An incoming SMS on that device gets the SIM's number as its recipient.
        let (_, _, events) = webhook(
            &kv,
            KEY,
            "address=%2B4917642111111&body=Code+5015&date=2020-04-23+17%3A05%3A00&sms_id=77&device_id=1576&channel_id=0",
        );
        let [Event::MessageReceived(message)] = &events[..] else {
            panic!("a message expected");
        };
        assert_eq!(message.recipient, "+15555215554");
        assert_eq!(message.sender, "+4917642111111");
        assert_eq!(message.text, "Code 5015");
        assert_eq!(message.id, "sg24-77");
    }

    #[test]
    fn incoming_sms_by_webhook_and_by_polling_are_passed_on_once() {
        let kv = Stores::memory();
        let body = r#"{"address":"+4917642111111","body":"Hi","date":"2023-11-02 22:44:43","sms_id":62050999,"device_id":11231,"channel_id":1}"#;
        let (status, reply, events) = webhook(&kv, KEY, body);
        assert_eq!(
            (status, reply),
            (200, json!({ "error": 0, "message": "OK" }))
        );
        assert_eq!(events.len(), 1);
        assert!(webhook(&kv, KEY, body).2.is_empty(), "re-sent");

        with_token(&kv);
        let polls = SmsGateway24::on_tick(&ctx(NOW), &kv).unwrap().deliveries;
        let poll = polls
            .iter()
            .find(|d| d.idempotency_key.starts_with("getallsms/"))
            .expect("incoming SMS are polled");
        let fields = form(poll);
        assert!(fields.contains(&("status".into(), "5".into())));
        assert!(fields.iter().any(|(name, _)| name == "begindate"));
        let mut listing: Value = serde_json::from_str(GETALLSMS_SAMPLE).unwrap();
        listing["smss"]["62050999"] = json!({ "id": 62050999, "sendto": "+4917642111111", "body": "Hi",
            "status": 5, "deviceid": 11231, "created": { "date": "2023-11-02 22:44:43.000000", "timezone": "UTC" } });
        listing["smss"]["62051000"] = json!({ "id": 62051000, "sendto": "+4917642111112", "body": "New",
            "status": 5, "deviceid": 11231, "created": { "date": "2023-11-02 22:50:00.000000", "timezone": "UTC" } });
        let outcome = respond(&kv, &poll.idempotency_key, &listing.to_string());
        let texts: Vec<_> = outcome
            .effects
            .events
            .iter()
            .map(|event| match event {
                Event::MessageReceived(message) => message.text.clone(),
                other => panic!("messages only, not {other:?}"),
            })
            .collect();
        assert_eq!(
            texts,
            ["New"],
            "sent SMS of the listing and the one seen before are not news"
        );
    }

    #[test]
    fn bad_webhooks_are_explained() {
        let kv = Stores::memory();
        let (status, reply, _) = webhook(&kv, "wrong", "{}");
        assert_eq!((status, reply["message"].as_str()), (401, Some("Bad key")));
        for (body, expected) in [
            ("{\"address\":", "malformed JSON"),
            ("[1]", "not an object"),
            ("{}", "neither an incoming SMS"),
            (r#"{"status_id":7}"#, "needs `sms_id`"),
            (r#"{"sms_id":1,"status_id":"x"}"#, "not a status code"),
        ] {
            let (status, reply, events) = webhook(&kv, KEY, body);
            assert_eq!(status, 400, "{body}");
            assert_eq!(reply["error"], 1);
            assert!(
                reply["message"].as_str().unwrap().contains(expected),
                "{reply}"
            );
            assert!(events.is_empty());
        }
        // A status for an SMS sent some other way keeps the service's id.
        let (_, _, events) = webhook(&kv, KEY, "sms_id=5&status_id=8&sendto=%2B491");
        assert_eq!(
            statuses(&events),
            [(
                "sg24-5".into(),
                DeliveryState::Failed,
                "8 not delivered".into()
            )]
        );
    }

    #[test]
    fn bad_settings_are_named() {
        let kv = Stores::memory();
        let error = SmsGateway24::on_tick(&ctx_with(NOW, &[("utc_offset_minutes", "UTC+2")]), &kv)
            .unwrap_err();
        assert!(error.contains("utc_offset_minutes"), "{error}");
        let error = SmsGateway24::on_tick(&CallContext::for_tests(&[]), &kv).unwrap_err();
        assert!(error.contains("email"), "{error}");
    }

    #[test]
    fn getsmsstatus_documentation_sample_changes_nothing() {
        // The document's sample answer for `getsmsstatus` carries no status at all.
        let kv = Stores::memory();
        with_token(&kv);
        let add = send(&kv, &ctx(NOW), "s1").deliveries.remove(0);
        respond(&kv, &add.idempotency_key, r#"{"error":0,"sms_id":1}"#);
        let sample = r#"{"error":0,"message":"OK","token":"abbde3e31e9d026c02f4f49fc551111e"}"#;
        let outcome = respond(&kv, "getsmsstatus/1/s1", sample);
        assert!(matches!(outcome.verdict, Verdict::Delivered));
        assert!(outcome.effects.events.is_empty());
        assert_eq!(sends::stage_of(&*kv, "s1").as_deref(), Some("accepted"));
        let sample = r#"{"error":1,"message":"Login or password incorrect"}"#;
        let outcome = respond(&kv, "getsmsstatus/2/s1", sample);
        assert!(
            matches!(outcome.verdict, Verdict::GiveUp(ref reason) if reason.contains("incorrect"))
        );
    }

    #[test]
    fn delivery_keys() {
        assert_eq!(Request::parse("gettoken/1"), Some(Request::Token));
        assert_eq!(
            Request::parse("addsms/2/a/b"),
            Some(Request::AddSms("a/b".into()))
        );
        assert_eq!(
            Request::parse("addalotofsms/3"),
            Some(Request::AddMany("3".into()))
        );
        assert_eq!(
            Request::parse("getsmsstatus/1/x"),
            Some(Request::Status("x".into()))
        );
        assert_eq!(
            Request::parse("findsms/1/x"),
            Some(Request::Find("x".into()))
        );
        assert_eq!(Request::parse("getallsms/1"), Some(Request::Incoming));
        assert_eq!(Request::parse("getalldevices/1"), Some(Request::Devices));
        assert_eq!(Request::parse("addsms/2"), None);
        assert_eq!(Request::parse("other/1"), None);
    }
}
