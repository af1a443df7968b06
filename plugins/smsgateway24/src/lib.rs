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
