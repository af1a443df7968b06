//! What SmsGateway24 reports: incoming SMS and delivery statuses (by webhook, or polled), and
//! devices with their SIMs (polled), which feed the SIM inventory as SIM-status events.
//!
//! Keys: `sim/<device>/<slot>` → the SIM's number; `device/default` → the device seen most
//! recently, which sends when a request names none; `seen/…`, `seen@…` (marks of incoming SMS
//! already passed on, whether they came by webhook or by polling); `incoming/since` → the time
//! of the newest incoming SMS, where the next poll starts (less an overlap).

use serde_json::Value;
use simrelay_sdk::encoding::form_decode;
use simrelay_sdk::lenient;
use simrelay_sdk::time::{parse_datetime, unix_time_ms};
use simrelay_sdk::{
    Event, HttpRequest, KeyValue, MarkOnce, MessageKind, ReceivedMessage, SimState, SimStatus,
};

use crate::api::{self, DeviceSim, ListedSms};
use crate::{SEEN, Settings, sends};

/// A device seen within this long is taken to be online and its SIMs registered.
const ONLINE_WITHIN_MS: u64 = 15 * 60_000;
/// Polls start this long before the newest incoming SMS seen, for SMS the service lists late.
const POLL_OVERLAP_MS: u64 = 10 * 60_000;
/// The first poll looks back this far.
const FIRST_POLL_LOOKBACK_MS: u64 = 60 * 60_000;
const SINCE: &str = "incoming/since";
const DEFAULT_DEVICE: &str = "device/default";

/// The fields of a webhook, from a JSON object, a form body or the query string.
pub(crate) fn webhook_fields(request: &HttpRequest) -> Result<Value, String> {
    let mut fields = serde_json::Map::new();
    for (name, value) in request.query_pairs() {
        fields.insert(name, Value::String(value));
    }
    let body = String::from_utf8_lossy(&request.body);
    let body = body.trim();
    if body.starts_with('{') || body.starts_with('[') {
        match serde_json::from_str::<Value>(body) {
            Ok(Value::Object(members)) => fields.extend(members),
            Ok(_) => return Err("the body is JSON but not an object".into()),
            Err(error) => return Err(format!("malformed JSON: {error}")),
        }
    } else {
        for (name, value) in form_decode(body) {
            fields.insert(name, Value::String(value));
        }
    }
    Ok(Value::Object(fields))
}

/// What a webhook reports.
pub(crate) enum Report {
    Incoming(ReceivedMessage),
    Status {
        sms_id: String,
        code: u64,
        title: Option<String>,
        recipient: Option<String>,
    },
}

/// Reads an incoming-SMS webhook (`address`, `body`, `date`, `sms_id`, `device_id`,
/// `channel_id`) or a delivery-status webhook (`sms_id`, `status_id`, `status_message`,
/// `sendto`, `device_id`).
pub(crate) fn report(
    kv: &dyn KeyValue,
    settings: &Settings,
    fields: &Value,
) -> Result<Result<Report, String>, String> {
    let field = |name: &str| lenient::field(fields, name);
    if fields.get("status_id").is_some() {
        let Some(sms_id) = field("sms_id") else {
            return Ok(Err("a delivery status needs `sms_id`".into()));
        };
        let Some(code) = fields.get("status_id").and_then(lenient::leading_number) else {
            return Ok(Err("`status_id` is not a status code".into()));
        };
        return Ok(Ok(Report::Status {
            sms_id,
            code,
            title: field("status_message"),
            recipient: field("sendto"),
        }));
    }
    let (Some(sender), Some(text)) = (field("address"), fields.get("body").and_then(Value::as_str))
    else {
        return Ok(Err(
            "neither an incoming SMS (`address`, `body`) nor a delivery status (`sms_id`, \
             `status_id`)"
                .into(),
        ));
    };
    let device = field("device_id");
    let slot = field("channel_id");
    let received_at_ms = field("date").and_then(|date| match date.parse::<u64>() {
        Ok(number) => unix_time_ms(number),
        Err(_) => parse_datetime(&date, settings.utc_offset_minutes),
    });
    let id = match field("sms_id") {
        Some(sms_id) => format!("sg24-{sms_id}"),
        None => format!(
            "sg24-{}",
            simrelay_sdk::dedupe::fingerprint(&[
                sender.as_str(),
                text,
                &field("date").unwrap_or_default(),
                &device.clone().unwrap_or_default(),
            ])
        ),
    };
    Ok(Ok(Report::Incoming(message(
        kv,
        id,
        sender,
        text.to_owned(),
        received_at_ms,
        device,
        slot,
    )?)))
}

fn message(
    kv: &dyn KeyValue,
    id: String,
    sender: String,
    text: String,
    received_at_ms: Option<u64>,
    device: Option<String>,
    slot: Option<String>,
) -> Result<ReceivedMessage, String> {
    let recipient = match &device {
        Some(device) => sim_number(kv, device, slot.as_deref())?.unwrap_or_default(),
        None => String::new(),
    };
    Ok(ReceivedMessage {
        id,
        sender,
        recipient,
        text,
        kind: MessageKind::Sms,
        received_at_ms,
        device,
        port: slot,
        iccid: None,
        imsi: None,
        code: None,
    })
}

/// The event for an incoming SMS, unless it was passed on before.
pub(crate) fn once(
    kv: &dyn KeyValue,
    settings: &Settings,
    now: u64,
    message: ReceivedMessage,
) -> Result<Option<Event>, String> {
    let seen = MarkOnce::new(kv, SEEN, settings.dedupe_window_ms);
    Ok(seen
        .first_time(&message.id, now)?
        .then_some(Event::MessageReceived(message)))
}

/// The `getallsms` request for incoming SMS since the last one seen.
pub(crate) fn incoming_poll_fields(
    kv: &dyn KeyValue,
    settings: &Settings,
    token: &str,
    now: u64,
) -> Result<Vec<(&'static str, String)>, String> {
    let since = kv
        .get(SINCE)?
        .and_then(|bytes| String::from_utf8(bytes).ok()?.parse::<u64>().ok())
        .map_or(now.saturating_sub(FIRST_POLL_LOOKBACK_MS), |since| {
            since.saturating_sub(POLL_OVERLAP_MS)
        });
    Ok(vec![
        ("token", token.to_owned()),
        ("status", api::INCOMING.to_string()),
        (
            "begindate",
            simrelay_sdk::time::format_datetime(since, settings.utc_offset_minutes),
        ),
    ])
}

/// Events for the incoming SMS of a `getallsms` answer not passed on before.
pub(crate) fn polled(
    kv: &dyn KeyValue,
    settings: &Settings,
    now: u64,
    answer: &Value,
) -> Result<Vec<Event>, String> {
    let mut events = Vec::new();
    let mut newest = None;
    for sms in api::listed_sms(answer, settings.utc_offset_minutes) {
        if sms.status != Some(api::INCOMING) {
            continue;
        }
        newest = newest.max(sms.created_ms);
        let ListedSms {
            id,
            address,
            body,
            device_id,
            sim,
            created_ms,
            ..
        } = sms;
        let message = message(
            kv,
            format!("sg24-{id}"),
            address,
            body,
            created_ms,
            device_id,
            sim,
        )?;
        events.extend(once(kv, settings, now, message)?);
    }
    if let Some(newest) = newest {
        let since = kv
            .get(SINCE)?
            .and_then(|bytes| String::from_utf8(bytes).ok()?.parse::<u64>().ok());
        if since.is_none_or(|since| newest > since) {
            kv.set(SINCE, newest.to_string().as_bytes())?;
        }
    }
    Ok(events)
}

/// A `getalldevices` answer: SIM-status events for every SIM, remembering the SIMs' numbers
/// and the device to send from.
pub(crate) fn devices(
    kv: &dyn KeyValue,
    settings: &Settings,
    now: u64,
    answer: &Value,
) -> Result<Vec<Event>, String> {
    let sims = api::device_sims(answer, settings.utc_offset_minutes);
    let mut events = Vec::new();
    let mut most_recent: Option<(u64, &str)> = None;
    for sim in &sims {
        let seen = sim.last_seen_ms.unwrap_or(0);
        if most_recent.is_none_or(|(at, _)| seen > at) {
            most_recent = Some((seen, &sim.device_id));
        }
        if let Some(slot) = &sim.slot {
            let key = format!("sim/{}/{slot}", sim.device_id);
            match &sim.number {
                Some(number) => kv.set(&key, number.as_bytes())?,
                None => kv.delete(&key)?,
            }
        }
        events.push(Event::SimStatusChanged(sim_status(sim, now)));
    }
    if let Some((_, device)) = most_recent {
        kv.set(DEFAULT_DEVICE, device.as_bytes())?;
    }
    Ok(events)
}

fn sim_status(sim: &DeviceSim, now: u64) -> SimStatus {
    let online = sim
        .last_seen_ms
        .is_some_and(|seen| seen.saturating_add(ONLINE_WITHIN_MS) >= now);
    let detail = match sim.last_seen_ms {
        Some(seen) => format!(
            "device last seen {} UTC",
            simrelay_sdk::time::format_datetime(seen, 0)
        ),
        None => "device never seen".to_owned(),
    };
    SimStatus {
        device: Some(sim.device_id.clone()),
        port: sim.slot.clone(),
        number: sim.number.clone(),
        iccid: sim.iccid.clone(),
        imsi: None,
        // The service says nothing about the network: a phone that checks in is taken to
        // have its SIMs registered.
        state: if online {
            SimState::Registered
        } else {
            SimState::Unknown
        },
        detail: Some(detail),
        active: Some(online),
        operator: sim.operator.clone(),
        signal: None,
        balance: None,
        slot_active: None,
    }
}

/// The number of the SIM in `slot` of `device`; with no slot, the device's only SIM.
fn sim_number(
    kv: &dyn KeyValue,
    device: &str,
    slot: Option<&str>,
) -> Result<Option<String>, String> {
    let text = |bytes: Vec<u8>| String::from_utf8(bytes).ok();
    if let Some(slot) = slot
        && let Some(number) = kv.get(&format!("sim/{device}/{slot}"))?.and_then(text)
    {
        return Ok(Some(number));
    }
    let keys = kv.keys(&format!("sim/{device}/"))?;
    match &keys[..] {
        [only] => Ok(kv.get(only)?.and_then(text)),
        _ => Ok(None),
    }
}

/// The device to send from when neither the request nor the settings name one.
pub(crate) fn default_device(kv: &dyn KeyValue) -> Result<Option<String>, String> {
    Ok(kv
        .get(DEFAULT_DEVICE)?
        .and_then(|bytes| String::from_utf8(bytes).ok()))
}

/// A delivery-status webhook: the event for the request the SMS belongs to.
pub(crate) fn status_report(
    kv: &dyn KeyValue,
    sms_id: String,
    code: u64,
    title: Option<String>,
    recipient: Option<String>,
) -> Result<Vec<Event>, String> {
    if let Some(id) = sends::request_of(kv, &sms_id)? {
        return sends::status_changed(kv, &id, None, code, title);
    }
    // An SMS sent some other way: reported under the service's own id.
    let title = title.unwrap_or_else(|| api::status_title(code).to_owned());
    Ok(vec![Event::DeliveryStatusChanged(
        simrelay_sdk::DeliveryStatus {
            id: format!("sg24-{sms_id}"),
            state: api::delivery_state(code),
            detail: Some(format!("{code} {title}")),
            recipient,
        },
    )])
}
