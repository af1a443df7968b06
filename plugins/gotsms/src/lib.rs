//! Adapter for GotSMS rented numbers. GotSMS calls no webhooks: the SMS that reach rented
//! numbers are polled on the host's timer and passed on as message events, with the
//! verification `code` GotSMS extracted.
//!
//! Polling marks messages read only once they are committed, so a crash loses none:
//! 1. On tick, at most every `poll_interval_secs` and never while a poll is under way, an
//!    `unread/…` delivery lists the unread messages and leaves them unread.
//! 2. Its response turns every message not seen before into an event and marks its id seen;
//!    when there were any, it asks for a `mark-read/…` delivery, the same listing with
//!    `mark_as_read=1`. The host commits the events, the marks and the new delivery together.
//! 3. The mark-read response lists what GotSMS marked read: messages that arrived since step 1
//!    are in it, and become events there.
//!
//! Messages that GotSMS marked read but whose mark-read response the host never committed (a
//! crash at that moment) are caught up from the per-rent listings: every
//! `history_interval_secs`, a few rents that had messages within the de-duplication window
//! get their newest messages read (`history/…` deliveries), paging back with `before_id`
//! while a whole page is new; messages not seen yet become events.
//!
//! Rate limits (about 30 requests a minute) are honoured per instance: a 429 is retried after
//! its `Retry-After`, and after a 429 or an answer with `X-RateLimit-Remaining: 0` the
//! instance issues no new polls until the limit resets. Nothing waits inside the plugin, and
//! other instances are not affected.
//!
//! Keys in the instance's store: `seen/…`, `seen@…` (message marks, see
//! [`simrelay_sdk::dedupe`]), `poll/unread-due`, `poll/in-flight`, `poll/history-due`,
//! `pause/until` (milliseconds, decimal) and `rent/<rent id>` (`{"last_ms","checked_ms"}`).

mod api;
#[cfg(test)]
mod properties;

use serde_json::json;
use simrelay_sdk::http::RateLimit;
use simrelay_sdk::{
    Adapter, CallContext, Capability, Delivery, DeliveryOutcome, DeliveryRef, Descriptor, Effects,
    Event, KeyValue, MarkOnce, OutgoingRequest, ResponseOutcome, SettingSpec, Stores, Verdict,
};

use crate::api::{Listing, Message};

pub struct GotSms;

const DEFAULT_BASE_URL: &str = "https://app.gotsms.org";
const DEFAULT_POLL_INTERVAL_SECS: u64 = 10;
const DEFAULT_HISTORY_INTERVAL_SECS: u64 = 300;
const DEFAULT_DEDUPE_WINDOW_SECS: u64 = 7 * 86_400;
/// A poll whose response has not come after this long no longer holds the next one back.
const IN_FLIGHT_TIMEOUT_MS: u64 = 5 * 60_000;
/// How long to pause after a 429 or an exhausted limit that did not say until when.
const DEFAULT_PAUSE_MS: u64 = 60_000;
/// Rents caught up per history pass, and pages read back per rent: bounded work per tick.
const HISTORY_RENTS_PER_PASS: usize = 5;
const HISTORY_MAX_PAGES: u32 = 5;
const SWEEP_LIMIT: usize = 500;
const SEEN: &str = "seen";

const UNREAD_DUE: &str = "poll/unread-due";
const IN_FLIGHT: &str = "poll/in-flight";
const HISTORY_DUE: &str = "poll/history-due";
const PAUSE_UNTIL: &str = "pause/until";
const RENT_PREFIX: &str = "rent/";

struct Settings<'a> {
    token: &'a str,
    base_url: &'a str,
    poll_interval_ms: u64,
    history_interval_ms: u64,
    dedupe_window_ms: u64,
}

impl<'a> Settings<'a> {
    fn read(ctx: &'a CallContext) -> Result<Self, String> {
        let millis = |name, default| {
            ctx.number_setting(name, default)
                .map(|secs| secs.saturating_mul(1000))
        };
        Ok(Settings {
            token: ctx.required_setting("api_token")?,
            base_url: ctx
                .setting("base_url")
                .filter(|url| !url.trim().is_empty())
                .unwrap_or(DEFAULT_BASE_URL)
                .trim()
                .trim_end_matches('/'),
            poll_interval_ms: millis("poll_interval_secs", DEFAULT_POLL_INTERVAL_SECS)?,
            history_interval_ms: millis("history_interval_secs", DEFAULT_HISTORY_INTERVAL_SECS)?,
            dedupe_window_ms: millis("dedupe_window_secs", DEFAULT_DEDUPE_WINDOW_SECS)?,
        })
    }
}

/// What a delivery was, from its idempotency key.
#[derive(Debug, PartialEq)]
enum Request {
    /// `unread/<ms>`
    Unread,
    /// `mark-read/<ms>`
    MarkRead,
    /// `history/<ms>/<page>/<rent id>`
    History { page: u32, rent_id: String },
}

impl Request {
    fn parse(key: &str) -> Option<Self> {
        let mut fields = key.splitn(4, '/');
        match (fields.next()?, fields.next()?) {
            ("unread", _) => Some(Request::Unread),
            ("mark-read", _) => Some(Request::MarkRead),
            ("history", _) => Some(Request::History {
                page: fields.next()?.parse().ok()?,
                rent_id: fields.next()?.to_owned(),
            }),
            _ => None,
        }
    }
}

impl Adapter for GotSms {
    fn describe() -> Descriptor {
        Descriptor {
            capabilities: vec![Capability::Tick],
            settings: vec![
                SettingSpec::required("api_token", "GotSMS API token (sent as a Bearer token)")
                    .secret(),
                SettingSpec::optional("base_url", "GotSMS server (default https://app.gotsms.org)"),
                SettingSpec::optional(
                    "poll_interval_secs",
                    "seconds between polls of unread messages (default 10)",
                ),
                SettingSpec::optional(
                    "history_interval_secs",
                    "seconds between catch-up reads of recent rents' messages; 0 turns them \
                     off (default 300)",
                ),
                SettingSpec::optional(
                    "dedupe_window_secs",
                    "seconds a message id is remembered, and how far back catch-up reads \
                     (default 604800)",
                ),
            ],
            ..Descriptor::new("gotsms", env!("CARGO_PKG_VERSION"))
        }
    }

    fn on_tick(ctx: &CallContext, kv: &Stores) -> Result<Effects, String> {
        let settings = Settings::read(ctx)?;
        let now = ctx.now_ms;
        MarkOnce::new(&**kv, SEEN, settings.dedupe_window_ms).sweep(now, SWEEP_LIMIT)?;
        let mut deliveries = Vec::new();
        if read_ms(&**kv, PAUSE_UNTIL)?.is_some_and(|until| until > now) {
            return Ok(Effects::none());
        }
        let in_flight = read_ms(&**kv, IN_FLIGHT)?
            .is_some_and(|since| since.saturating_add(IN_FLIGHT_TIMEOUT_MS) > now);
        if !in_flight && read_ms(&**kv, UNREAD_DUE)?.is_none_or(|due| due <= now) {
            deliveries.push(delivery(
                format!("unread/{now}"),
                api::unread(settings.base_url, settings.token),
            ));
            write_ms(&**kv, IN_FLIGHT, now)?;
            write_ms(
                &**kv,
                UNREAD_DUE,
                now.saturating_add(settings.poll_interval_ms),
            )?;
        }
        if settings.history_interval_ms > 0
            && read_ms(&**kv, HISTORY_DUE)?.is_none_or(|due| due <= now)
        {
            write_ms(
                &**kv,
                HISTORY_DUE,
                now.saturating_add(settings.history_interval_ms),
            )?;
            for rent_id in rents_to_catch_up(&**kv, now, settings.dedupe_window_ms)? {
                deliveries.push(delivery(
                    format!("history/{now}/1/{rent_id}"),
                    api::rent_messages(settings.base_url, settings.token, &rent_id, None),
                ));
            }
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
        let now = ctx.now_ms;
        let Some(request) = Request::parse(&delivery.idempotency_key) else {
            return Ok(outcome_of(Verdict::GiveUp(format!(
                "not a delivery this plugin asks for: {}",
                delivery.idempotency_key
            ))));
        };
        let response = match outcome {
            DeliveryOutcome::Response(response) => response,
            DeliveryOutcome::TransportError(_) => return Ok(outcome_of(Verdict::Retry)),
        };
        let limit = RateLimit::from_headers(&response.headers, now);
        if response.status == 429 {
            let resume = limit
                .resume_at_ms
                .unwrap_or(now.saturating_add(DEFAULT_PAUSE_MS))
                .max(now.saturating_add(1000));
            write_ms(&**kv, PAUSE_UNTIL, resume)?;
            return Ok(outcome_of(Verdict::RetryAfterMs(resume - now)));
        }
        if limit.remaining == Some(0) {
            let resume = limit
                .resume_at_ms
                .unwrap_or(now.saturating_add(DEFAULT_PAUSE_MS));
            write_ms(&**kv, PAUSE_UNTIL, resume)?;
        }
        if !response.is_success() {
            let reason = format!(
                "GotSMS answered {}: {}",
                response.status,
                api::excerpt(&response.body)
            );
            if response.status >= 500 || response.status == 408 {
                return Ok(outcome_of(Verdict::Retry));
            }
            finish_poll(&**kv, &request)?;
            return Ok(outcome_of(Verdict::GiveUp(reason)));
        }
        let listing = match api::listing(&response.body) {
            Ok(listing) => listing,
            Err(reason) => {
                finish_poll(&**kv, &request)?;
                return Ok(outcome_of(Verdict::GiveUp(reason)));
            }
        };
        for problem in &listing.problems {
            eprintln!("gotsms: {} skipped: {problem}", delivery.idempotency_key);
        }
        let effects = match request {
            Request::Unread => unread(&**kv, &settings, now, listing)?,
            Request::MarkRead => marked_read(&**kv, &settings, now, listing)?,
            Request::History { page, rent_id } => {
                history(&**kv, &settings, now, listing, page, &rent_id)?
            }
        };
        Ok(ResponseOutcome {
            verdict: Verdict::Delivered,
            effects,
        })
    }
}

/// Step 2: pass on what is new, then have them marked read.
fn unread(
    kv: &dyn KeyValue,
    settings: &Settings,
    now: u64,
    listing: Listing,
) -> Result<Effects, String> {
    let any = !listing.messages.is_empty();
    let more_pages = listing.more_pages;
    let events = fresh_events(kv, settings, now, listing.messages, None, false)?.0;
    let mut deliveries = Vec::new();
    if any {
        deliveries.push(delivery(
            format!("mark-read/{now}"),
            api::mark_read(settings.base_url, settings.token),
        ));
    } else {
        kv.delete(IN_FLIGHT)?;
        if more_pages {
            write_ms(kv, UNREAD_DUE, now)?;
        }
    }
    Ok(Effects { events, deliveries })
}

/// Step 3: what GotSMS marked read; anything that arrived since the listing is new here.
fn marked_read(
    kv: &dyn KeyValue,
    settings: &Settings,
    now: u64,
    listing: Listing,
) -> Result<Effects, String> {
    kv.delete(IN_FLIGHT)?;
    let full_page = listing.messages.len() >= api::PAGE_SIZE;
    if listing.more_pages || full_page {
        // More were waiting than one page holds: poll again at the next tick.
        write_ms(kv, UNREAD_DUE, now)?;
    }
    let events = fresh_events(kv, settings, now, listing.messages, None, false)?.0;
    Ok(Effects {
        events,
        deliveries: Vec::new(),
    })
}

/// Catch-up: new messages of one rent; reads the next older page while a whole page is new.
fn history(
    kv: &dyn KeyValue,
    settings: &Settings,
    now: u64,
    listing: Listing,
    page: u32,
    rent_id: &str,
) -> Result<Effects, String> {
    let count = listing.messages.len();
    let (events, all_new) = fresh_events(kv, settings, now, listing.messages, Some(rent_id), true)?;
    let mut deliveries = Vec::new();
    if let Some(before_id) = listing.next_before_id.filter(|_| all_new && count > 0)
        && page < HISTORY_MAX_PAGES
    {
        deliveries.push(delivery(
            format!("history/{now}/{}/{rent_id}", page + 1),
            api::rent_messages(settings.base_url, settings.token, rent_id, Some(&before_id)),
        ));
    }
    Ok(Effects { events, deliveries })
}

/// Events for the messages not seen before, marking them; and whether every one was new and
/// recent. Catch-up (`recent_only`) skips messages older than the de-duplication window,
/// whose marks may have expired.
fn fresh_events(
    kv: &dyn KeyValue,
    settings: &Settings,
    now: u64,
    messages: Vec<Message>,
    rent_id: Option<&str>,
    recent_only: bool,
) -> Result<(Vec<Event>, bool), String> {
    let seen = MarkOnce::new(kv, SEEN, settings.dedupe_window_ms);
    let horizon = now.saturating_sub(settings.dedupe_window_ms);
    let mut events = Vec::new();
    let mut all_new = true;
    for message in messages {
        if recent_only && message.received_at_ms.is_none_or(|at| at < horizon) {
            all_new = false;
            continue;
        }
        if let Some(rent_id) = rent_id.or(message.rent_id.as_deref()) {
            note_rent(kv, rent_id, now)?;
        }
        if seen.first_time(&message.id, now)? {
            events.push(Event::MessageReceived(message.into_event()));
        } else {
            all_new = false;
        }
    }
    Ok((events, all_new))
}

/// A rent that had messages is worth catching up on until the window has passed.
fn note_rent(kv: &dyn KeyValue, rent_id: &str, now: u64) -> Result<(), String> {
    let key = format!("{RENT_PREFIX}{rent_id}");
    let (_, checked_ms) = read_rent(kv, &key)?.unwrap_or((now, 0));
    write_rent(kv, &key, now, checked_ms)
}

fn read_rent(kv: &dyn KeyValue, key: &str) -> Result<Option<(u64, u64)>, String> {
    let Some(bytes) = kv.get(key)? else {
        return Ok(None);
    };
    let value: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
    let number = |name: &str| value.get(name).and_then(serde_json::Value::as_u64);
    Ok(Some((
        number("last_ms").unwrap_or(0),
        number("checked_ms").unwrap_or(0),
    )))
}

fn write_rent(kv: &dyn KeyValue, key: &str, last_ms: u64, checked_ms: u64) -> Result<(), String> {
    let value = json!({ "last_ms": last_ms, "checked_ms": checked_ms });
    kv.set(key, value.to_string().as_bytes())
}

/// The rents least recently caught up on, forgetting those quiet for the whole window.
fn rents_to_catch_up(kv: &dyn KeyValue, now: u64, window_ms: u64) -> Result<Vec<String>, String> {
    let mut rents = Vec::new();
    for key in kv.keys(RENT_PREFIX)? {
        let Some((last_ms, checked_ms)) = read_rent(kv, &key)? else {
            continue;
        };
        if last_ms.saturating_add(window_ms) <= now {
            kv.delete(&key)?;
        } else {
            rents.push((checked_ms, key));
        }
    }
    rents.sort();
    rents.truncate(HISTORY_RENTS_PER_PASS);
    let mut chosen = Vec::new();
    for (_, key) in rents {
        let (last_ms, _) = read_rent(kv, &key)?.unwrap_or_default();
        write_rent(kv, &key, last_ms, now)?;
        chosen.push(key[RENT_PREFIX.len()..].to_owned());
    }
    Ok(chosen)
}

/// A poll that ended without a listing lets the next one start.
fn finish_poll(kv: &dyn KeyValue, request: &Request) -> Result<(), String> {
    match request {
        Request::Unread | Request::MarkRead => kv.delete(IN_FLIGHT),
        Request::History { .. } => Ok(()),
    }
}

fn read_ms(kv: &dyn KeyValue, key: &str) -> Result<Option<u64>, String> {
    Ok(kv
        .get(key)?
        .and_then(|bytes| String::from_utf8(bytes).ok()?.parse().ok()))
}

fn write_ms(kv: &dyn KeyValue, key: &str, ms: u64) -> Result<(), String> {
    kv.set(key, ms.to_string().as_bytes())
}

fn delivery(idempotency_key: String, request: OutgoingRequest) -> Delivery {
    Delivery {
        idempotency_key,
        request,
    }
}

fn outcome_of(verdict: Verdict) -> ResponseOutcome {
    ResponseOutcome {
        verdict,
        effects: Effects::none(),
    }
}

simrelay_sdk::export_adapter!(GotSms);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::tests::UNREAD_SAMPLE;
    use simrelay_sdk::HttpResponse;

    const NOW: u64 = 1_773_230_460_000;

    fn ctx(now_ms: u64) -> CallContext {
        CallContext {
            now_ms,
            ..CallContext::for_tests(&[("api_token", "t0k"), ("base_url", "https://gotsms.test/")])
        }
    }

    fn tick(kv: &Stores, now: u64) -> Vec<Delivery> {
        let effects = GotSms::on_tick(&ctx(now), kv).expect("tick");
        assert!(effects.events.is_empty());
        effects.deliveries
    }

    fn respond(
        kv: &Stores,
        now: u64,
        key: &str,
        status: u16,
        headers: &[(&str, &str)],
        body: &str,
    ) -> ResponseOutcome {
        let response = HttpResponse {
            status,
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            body: body.as_bytes().to_vec(),
        };
        let delivery = DeliveryRef {
            idempotency_key: key.into(),
            attempt: 1,
        };
        GotSms::on_response(&ctx(now), kv, delivery, DeliveryOutcome::Response(response))
            .expect("no internal error")
    }

    fn texts(effects: &Effects) -> Vec<String> {
        effects
            .events
            .iter()
            .map(|event| match event {
                Event::MessageReceived(message) => message.text.clone(),
                other => panic!("only messages expected, not {other:?}"),
            })
            .collect()
    }

    fn listing(messages: &[(&str, &str)]) -> String {
        let data: Vec<_> = messages
            .iter()
            .map(|(id, body)| {
                json!({ "id": id, "rent_id": "r1", "from": "+1800", "to": "+1900", "body": body,
                        "code": "", "received_at": "2026-03-11T12:00:00+00:00" })
            })
            .collect();
        json!({ "success": true, "data": data, "meta": { "current_page": 1, "last_page": 1 } })
            .to_string()
    }

    #[test]
    fn describes_itself() {
        let descriptor = GotSms::describe();
        assert_eq!(descriptor.name, "gotsms");
        assert_eq!(descriptor.api_version, simrelay_sdk::API_VERSION);
        assert!(matches!(descriptor.capabilities[..], [Capability::Tick]));
        assert!(descriptor.webhook_key.is_none());
        let settings: Vec<_> = descriptor
            .settings
            .iter()
            .map(|s| (s.name.as_str(), s.required, s.secret))
            .collect();
        assert_eq!(
            settings,
            [
                ("api_token", true, true),
                ("base_url", false, false),
                ("poll_interval_secs", false, false),
                ("history_interval_secs", false, false),
                ("dedupe_window_secs", false, false),
            ]
        );
    }

    #[test]
    fn polls_then_marks_read_only_what_was_committed() {
        let kv = Stores::memory();
        let [poll] = &tick(&kv, NOW)[..] else {
            panic!("one poll expected");
        };
        assert_eq!(poll.idempotency_key, format!("unread/{NOW}"));
        assert_eq!(
            poll.request.url,
            "https://gotsms.test/api/messages/unread?per_page=100"
        );
        assert!(!poll.request.url.contains("mark_as_read"));
        assert!(tick(&kv, NOW + 60_000).is_empty(), "one poll at a time");

        let outcome = respond(&kv, NOW + 1, &poll.idempotency_key, 200, &[], UNREAD_SAMPLE);
        assert!(matches!(outcome.verdict, Verdict::Delivered));
        let [Event::MessageReceived(message)] = &outcome.effects.events[..] else {
            panic!("one message expected");
        };
        assert_eq!(message.code.as_deref(), Some("123456"));
        assert_eq!(message.id, "gotsms-uuid");
        // Marked read by a new delivery, committed with the events.
        let [mark] = &outcome.effects.deliveries[..] else {
            panic!("a mark-read delivery expected");
        };
        assert_eq!(mark.idempotency_key, format!("mark-read/{}", NOW + 1));
        assert!(mark.request.url.ends_with("mark_as_read=1"));
        assert!(kv.exists("seen/uuid").unwrap());

        // GotSMS marks what it lists then: the message already passed on and one newer.
        let marked = listing(&[
            ("uuid", "Your verification code is 123456"),
            ("m2", "newer"),
        ]);
        let outcome = respond(&kv, NOW + 2, &mark.idempotency_key, 200, &[], &marked);
        assert!(matches!(outcome.verdict, Verdict::Delivered));
        assert_eq!(texts(&outcome.effects), ["newer"]);
        assert!(outcome.effects.deliveries.is_empty());

        assert!(tick(&kv, NOW + 9_999).is_empty(), "poll interval");
        assert_eq!(tick(&kv, NOW + 10_000).len(), 1);
    }

    #[test]
    fn nothing_unread_needs_no_marking() {
        let kv = Stores::memory();
        let key = tick(&kv, NOW)[0].idempotency_key.clone();
        let outcome = respond(&kv, NOW, &key, 200, &[], &listing(&[]));
        assert!(outcome.effects.events.is_empty() && outcome.effects.deliveries.is_empty());
        assert_eq!(tick(&kv, NOW + 10_000).len(), 1);
    }

    #[test]
    fn more_than_a_page_unread_is_polled_again_at_once() {
        let kv = Stores::memory();
        let key = tick(&kv, NOW)[0].idempotency_key.clone();
        let mut many: serde_json::Value = serde_json::from_str(&listing(&[("a", "1")])).unwrap();
        many["meta"]["last_page"] = json!(3);
        let outcome = respond(&kv, NOW, &key, 200, &[], &many.to_string());
        let mark = &outcome.effects.deliveries[0].idempotency_key;
        respond(&kv, NOW + 1, mark, 200, &[], &many.to_string());
        assert_eq!(tick(&kv, NOW + 2).len(), 1, "no wait for the poll interval");
    }

    #[test]
    fn rate_limits_pause_the_instance() {
        let kv = Stores::memory();
        let key = tick(&kv, NOW)[0].idempotency_key.clone();
        let outcome = respond(&kv, NOW, &key, 429, &[("retry-after", "20")], "{}");
        assert!(matches!(outcome.verdict, Verdict::RetryAfterMs(20_000)));
        assert!(tick(&kv, NOW + 19_999).is_empty());
        // The retried poll answers; the instance resumes once the pause is over.
        respond(&kv, NOW + 20_000, &key, 200, &[], &listing(&[]));
        assert_eq!(tick(&kv, NOW + 20_000).len(), 1);

        let kv = Stores::memory();
        let key = tick(&kv, NOW)[0].idempotency_key.clone();
        let exhausted = [
            ("x-ratelimit-limit", "30"),
            ("x-ratelimit-remaining", "0"),
            ("x-ratelimit-reset", "1773230520"),
        ];
        respond(&kv, NOW, &key, 200, &exhausted, &listing(&[]));
        assert!(tick(&kv, NOW + 30_000).is_empty(), "until the reset");
        assert_eq!(tick(&kv, 1_773_230_520_000).len(), 1);

        let kv = Stores::memory();
        let key = tick(&kv, NOW)[0].idempotency_key.clone();
        let outcome = respond(&kv, NOW, &key, 429, &[], "{}");
        assert!(matches!(outcome.verdict, Verdict::RetryAfterMs(60_000)));
    }

    #[test]
    fn failures_are_retried_or_explained() {
        let kv = Stores::memory();
        let key = tick(&kv, NOW)[0].idempotency_key.clone();
        let delivery = DeliveryRef {
            idempotency_key: key.clone(),
            attempt: 1,
        };
        let outcome = GotSms::on_response(
            &ctx(NOW),
            &kv,
            delivery,
            DeliveryOutcome::TransportError("connection refused".into()),
        )
        .unwrap();
        assert!(matches!(outcome.verdict, Verdict::Retry));
        assert!(matches!(
            respond(&kv, NOW, &key, 503, &[], "down").verdict,
            Verdict::Retry
        ));
        let outcome = respond(
            &kv,
            NOW,
            &key,
            401,
            &[],
            r#"{"message":"Unauthenticated."}"#,
        );
        let Verdict::GiveUp(reason) = outcome.verdict else {
            panic!("a 401 is final");
        };
        assert!(
            reason.contains("401") && reason.contains("Unauthenticated"),
            "{reason}"
        );
        let next = tick(&kv, NOW + 10_000);
        assert_eq!(next.len(), 1, "the next poll may start");
        let key = next[0].idempotency_key.clone();
        let Verdict::GiveUp(reason) = respond(&kv, NOW, &key, 200, &[], "<html>").verdict else {
            panic!("an answer that is not JSON is explained");
        };
        assert!(reason.contains("not JSON"), "{reason}");
        let Verdict::GiveUp(reason) = respond(&kv, NOW, "other/1", 200, &[], "{}").verdict else {
            panic!("unknown deliveries are explained");
        };
        assert!(reason.contains("other/1"));
    }

    #[test]
    fn catch_up_pages_back_through_a_rents_messages() {
        let kv = Stores::memory();
        let key = tick(&kv, NOW)[0].idempotency_key.clone();
        // The mark-read delivery this asks for is performed, but the host crashes before it
        // commits the response: GotSMS has marked "b" and "c" read, nobody passed them on.
        let _mark_read_lost = respond(&kv, NOW, &key, 200, &[], &listing(&[("a", "first")]));
        kv.delete(IN_FLIGHT).unwrap();

        let history: Vec<_> = tick(&kv, NOW + 300_000)
            .into_iter()
            .filter(|d| d.idempotency_key.starts_with("history/"))
            .collect();
        let [first_page] = &history[..] else {
            panic!("one rent to catch up on");
        };
        assert_eq!(
            first_page.request.url,
            "https://gotsms.test/api/numbers/r1/messages?limit=100"
        );
        let mut page: serde_json::Value =
            serde_json::from_str(&listing(&[("c", "third"), ("b", "second")])).unwrap();
        page["meta"] = json!({ "next_before_id": "b", "count": 2 });
        let outcome = respond(
            &kv,
            NOW + 300_001,
            &first_page.idempotency_key,
            200,
            &[],
            &page.to_string(),
        );
        assert_eq!(texts(&outcome.effects), ["third", "second"]);
        let [older] = &outcome.effects.deliveries[..] else {
            panic!("a whole page was new: read further back");
        };
        assert!(
            older.request.url.ends_with("before_id=b"),
            "{}",
            older.request.url
        );
        let mut page: serde_json::Value =
            serde_json::from_str(&listing(&[("a", "first")])).unwrap();
        page["meta"] = json!({ "next_before_id": "a", "count": 1 });
        let outcome = respond(
            &kv,
            NOW + 300_002,
            &older.idempotency_key,
            200,
            &[],
            &page.to_string(),
        );
        assert!(outcome.effects.events.is_empty(), "seen before");
        assert!(
            outcome.effects.deliveries.is_empty(),
            "reached what was seen: stop"
        );
    }

    #[test]
    fn catch_up_ignores_messages_older_than_the_window() {
        let kv = Stores::memory();
        let settings = [("api_token", "t"), ("dedupe_window_secs", "30")];
        let ctx = CallContext {
            now_ms: NOW,
            ..CallContext::for_tests(&settings)
        };
        let delivery = DeliveryRef {
            idempotency_key: "history/1/1/r1".into(),
            attempt: 1,
        };
        let response = HttpResponse {
            status: 200,
            headers: Vec::new(),
            body: listing(&[("old", "old")]).into_bytes(),
        };
        let outcome =
            GotSms::on_response(&ctx, &kv, delivery, DeliveryOutcome::Response(response)).unwrap();
        assert!(outcome.effects.events.is_empty());
    }

    #[test]
    fn delivery_keys() {
        assert_eq!(Request::parse("unread/5"), Some(Request::Unread));
        assert_eq!(Request::parse("mark-read/5"), Some(Request::MarkRead));
        assert_eq!(
            Request::parse("history/5/2/a/b"),
            Some(Request::History {
                page: 2,
                rent_id: "a/b".into()
            })
        );
        assert_eq!(Request::parse("history/5/x/a"), None);
        assert_eq!(Request::parse("unread"), None);
    }
}
