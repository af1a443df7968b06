//! Sending SMS: send requests wait in the store until a token and a device are known, go out as
//! `addsms` (one) or `addalotofsms` (several at once), and are followed until the service
//! reports them delivered or failed.
//!
//! Keys: `send/<request id>` → [`SendRecord`]; `sms/<SmsGateway24 SMS id>` → request id;
//! `batch/<n>` → the request ids of `addalotofsms` delivery number `n`; `counter/customer` and
//! `counter/batch` for the numbers.
//!
//! Every SMS carries a `customerid` unique to the instance. `addalotofsms` answers without the
//! ids of the SMS it created; the status poll finds them with `getallsms?customerid=…`.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use simrelay_sdk::lenient::{self, field};
use simrelay_sdk::{Delivery, DeliveryState, DeliveryStatus, Event, KeyValue, SendRequest};

use crate::api::{self, Outgoing};
use crate::{Settings, token};

const PREFIX: &str = "send/";
/// SMS per `addalotofsms`, so one request stays a reasonable size.
const MAX_BATCH: usize = 100;
/// Status polls per tick at most.
const STATUS_POLLS_PER_TICK: usize = 10;
/// An SMS sent but never reported delivered or failed is followed this long.
const FOLLOW_FOR_MS: u64 = 2 * 86_400_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Stage {
    /// Waits for a token or a device.
    Waiting,
    /// An `addsms`/`addalotofsms` carrying it is under way.
    Issued,
    /// The service has it; its status is followed.
    Accepted,
}

/// A send request and how far it got.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct SendRecord {
    id: String,
    to: String,
    text: String,
    device: Option<String>,
    sim: Option<String>,
    send_at_ms: Option<u64>,
    urgent: bool,
    customerid: u64,
    stage: Stage,
    /// Times it was handed to the service, for unique delivery keys.
    issues: u32,
    sms_id: Option<String>,
    last_status: Option<u64>,
    accepted_ms: Option<u64>,
    polled_ms: u64,
}

impl SendRecord {
    fn request(&self) -> SendRequest {
        SendRequest {
            id: self.id.clone(),
            to: self.to.clone(),
            text: self.text.clone(),
            device: self.device.clone(),
            sim: self.sim.clone(),
            send_at_ms: self.send_at_ms,
            urgent: self.urgent,
        }
    }

    fn status(&self, state: DeliveryState, detail: String) -> Event {
        Event::DeliveryStatusChanged(DeliveryStatus {
            id: self.id.clone(),
            state,
            detail: Some(detail),
            recipient: Some(self.to.trim().to_owned()),
        })
    }
}

fn key(id: &str) -> String {
    format!("{PREFIX}{id}")
}

fn load(kv: &dyn KeyValue, id: &str) -> Result<Option<SendRecord>, String> {
    Ok(kv
        .get(&key(id))?
        .and_then(|bytes| serde_json::from_slice(&bytes).ok()))
}

fn save(kv: &dyn KeyValue, record: &SendRecord) -> Result<(), String> {
    let bytes = serde_json::to_vec(record).map_err(|error| error.to_string())?;
    kv.set(&key(&record.id), &bytes)
}

fn forget(kv: &dyn KeyValue, record: &SendRecord) -> Result<(), String> {
    if let Some(sms_id) = &record.sms_id {
        kv.delete(&format!("sms/{sms_id}"))?;
    }
    kv.delete(&key(&record.id))
}

/// The request id an SmsGateway24 SMS id belongs to.
pub(crate) fn request_of(kv: &dyn KeyValue, sms_id: &str) -> Result<Option<String>, String> {
    Ok(kv
        .get(&format!("sms/{sms_id}"))?
        .and_then(|bytes| String::from_utf8(bytes).ok()))
}

/// A send request arrived: keep it, and send it at once if a token and a device are known.
pub(crate) fn queue(
    kv: &dyn KeyValue,
    settings: &Settings,
    now: u64,
    request: SendRequest,
) -> Result<(Vec<Event>, Vec<Delivery>), String> {
    let problem = if request.to.trim().is_empty() {
        Some("the recipient number is empty")
    } else if request.text.is_empty() {
        Some("the text is empty")
    } else {
        None
    };
    if let Some(problem) = problem {
        let status = DeliveryStatus {
            id: request.id,
            state: DeliveryState::Failed,
            detail: Some(problem.into()),
            recipient: Some(request.to),
        };
        return Ok((vec![Event::DeliveryStatusChanged(status)], Vec::new()));
    }
    if load(kv, &request.id)?.is_some() {
        // The same request again (an event delivered twice): it is already on its way.
        return Ok((Vec::new(), Vec::new()));
    }
    let customerid = u64::try_from(kv.increment("counter/customer", 1)?).unwrap_or_default();
    let record = SendRecord {
        id: request.id,
        to: request.to,
        text: request.text,
        device: request.device.filter(|device| !device.trim().is_empty()),
        sim: request.sim,
        send_at_ms: request.send_at_ms,
        urgent: request.urgent,
        customerid,
        stage: Stage::Waiting,
        issues: 0,
        sms_id: None,
        last_status: None,
        accepted_ms: None,
        polled_ms: 0,
    };
    save(kv, &record)?;
    let queued = record.status(DeliveryState::Pending, "queued".into());
    Ok((vec![queued], flush(kv, settings, now)?))
}

/// Hands every waiting request to the service: one `addsms`, or one `addalotofsms` for
/// several. Asks for a token first when there is none.
pub(crate) fn flush(
    kv: &dyn KeyValue,
    settings: &Settings,
    now: u64,
) -> Result<Vec<Delivery>, String> {
    let mut waiting = Vec::new();
    for key in kv.keys(PREFIX)? {
        let id = &key[PREFIX.len()..];
        if let Some(record) = load(kv, id)?
            && record.stage == Stage::Waiting
        {
            waiting.push(record);
        }
    }
    if waiting.is_empty() {
        return Ok(Vec::new());
    }
    let Some(token) = token::current(kv)? else {
        return Ok(token::request(kv, settings, now)?.into_iter().collect());
    };
    let default_device = settings
        .device_id
        .map(str::to_owned)
        .or(crate::inbound::default_device(kv)?);
    waiting.sort_by_key(|record| record.customerid);
    let mut batch = Vec::new();
    for mut record in waiting.into_iter().take(MAX_BATCH) {
        let Some(device) = record.device.clone().or(default_device.clone()) else {
            // No device known yet: the devices poll is due now and flushes again.
            crate::due_now(kv, crate::DEVICES_DUE)?;
            continue;
        };
        record.stage = Stage::Issued;
        record.issues += 1;
        save(kv, &record)?;
        let outgoing = Outgoing::new(
            &record.request(),
            device,
            record.customerid,
            settings.utc_offset_minutes,
        );
        batch.push((record, outgoing));
    }
    Ok(match &batch[..] {
        [] => Vec::new(),
        [(record, outgoing)] => vec![Delivery {
            idempotency_key: format!("addsms/{}/{}", record.issues, record.id),
            request: api::post(settings.base_url, "addsms", &outgoing.form(&token)),
        }],
        _ => {
            let number = kv.increment("counter/batch", 1)?;
            let ids: Vec<&str> = batch.iter().map(|(record, _)| record.id.as_str()).collect();
            kv.set(
                &format!("batch/{number}"),
                serde_json::to_string(&ids)
                    .map_err(|e| e.to_string())?
                    .as_bytes(),
            )?;
            let outgoing: Vec<Outgoing> = batch.into_iter().map(|(_, outgoing)| outgoing).collect();
            vec![Delivery {
                idempotency_key: format!("addalotofsms/{number}"),
                request: api::add_many(settings.base_url, &token, &outgoing),
            }]
        }
    })
}

/// The request ids an `addalotofsms` delivery carried.
pub(crate) fn batch(kv: &dyn KeyValue, number: &str) -> Result<Vec<String>, String> {
    Ok(kv
        .get(&format!("batch/{number}"))?
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_default())
}

pub(crate) fn forget_batch(kv: &dyn KeyValue, number: &str) -> Result<(), String> {
    kv.delete(&format!("batch/{number}"))
}

/// Records still `Issued` among `ids`: answers for others come too late to matter.
fn issued(kv: &dyn KeyValue, ids: &[String]) -> Result<Vec<SendRecord>, String> {
    let mut records = Vec::new();
    for id in ids {
        if let Some(record) = load(kv, id)?
            && record.stage == Stage::Issued
        {
            records.push(record);
        }
    }
    Ok(records)
}

/// The service took the SMS of `ids`; `sms_ids` are their SmsGateway24 ids where known.
pub(crate) fn accepted(
    kv: &dyn KeyValue,
    now: u64,
    ids: &[String],
    sms_ids: &[Option<String>],
) -> Result<Vec<Event>, String> {
    let mut events = Vec::new();
    for mut record in issued(kv, ids)? {
        let sms_id = ids
            .iter()
            .position(|id| *id == record.id)
            .and_then(|index| sms_ids.get(index).cloned().flatten());
        record.stage = Stage::Accepted;
        record.accepted_ms = Some(now);
        record.polled_ms = now;
        let detail = match &sms_id {
            Some(sms_id) => {
                kv.set(&format!("sms/{sms_id}"), record.id.as_bytes())?;
                format!("accepted by SmsGateway24 as SMS {sms_id}")
            }
            None => "accepted by SmsGateway24".to_owned(),
        };
        record.sms_id = sms_id;
        save(kv, &record)?;
        events.push(record.status(DeliveryState::Pending, detail));
    }
    Ok(events)
}

/// The service refused the SMS of `ids` for a reason other than the token: they failed.
pub(crate) fn refused(
    kv: &dyn KeyValue,
    ids: &[String],
    reason: &str,
) -> Result<Vec<Event>, String> {
    let mut events = Vec::new();
    for record in issued(kv, ids)? {
        forget(kv, &record)?;
        events.push(record.status(DeliveryState::Failed, reason.to_owned()));
    }
    Ok(events)
}

/// The token was no longer valid: the SMS of `ids` wait for a new one and go out again.
pub(crate) fn requeue(kv: &dyn KeyValue, ids: &[String]) -> Result<(), String> {
    for mut record in issued(kv, ids)? {
        record.stage = Stage::Waiting;
        save(kv, &record)?;
    }
    Ok(())
}

/// The SMS ids of an `addalotofsms` answer, in request order, where the answer has them.
pub(crate) fn batch_sms_ids(answer: &Value, count: usize) -> Vec<Option<String>> {
    let listed = ["sms_ids", "ids", "data", "sms"]
        .iter()
        .find_map(|name| answer.get(*name).filter(|value| value.is_array()))
        .map(lenient::items)
        .unwrap_or_default();
    let mut ids: Vec<Option<String>> = listed
        .into_iter()
        .map(|item| lenient::text(item).or_else(|| lenient::first_field(item, &["sms_id", "id"])))
        .collect();
    ids.resize(count, None);
    ids
}

/// A status the service reported for the SMS of request `id` (`code` with its title): a
/// delivery-status event when it changed; the request is forgotten once it is final.
pub(crate) fn status_changed(
    kv: &dyn KeyValue,
    id: &str,
    sms_id: Option<String>,
    code: u64,
    title: Option<String>,
) -> Result<Vec<Event>, String> {
    let Some(mut record) = load(kv, id)? else {
        return Ok(Vec::new());
    };
    if let Some(sms_id) = sms_id.filter(|_| record.sms_id.is_none()) {
        kv.set(&format!("sms/{sms_id}"), record.id.as_bytes())?;
        record.sms_id = Some(sms_id);
    }
    let state = api::delivery_state(code);
    let changed = record.last_status != Some(code);
    record.last_status = Some(code);
    if matches!(state, DeliveryState::Delivered | DeliveryState::Failed) {
        forget(kv, &record)?;
    } else {
        save(kv, &record)?;
    }
    let title = title.unwrap_or_else(|| api::status_title(code).to_owned());
    Ok(match changed {
        true => vec![record.status(state, format!("{code} {title}"))],
        false => Vec::new(),
    })
}

/// Status polls for accepted SMS not reported final, least recently polled first:
/// `getsmsstatus` when the SMS id is known, else `getallsms` by `customerid`.
pub(crate) fn status_polls(
    kv: &dyn KeyValue,
    settings: &Settings,
    token: &str,
    now: u64,
) -> Result<Vec<Delivery>, String> {
    let mut accepted = Vec::new();
    for key in kv.keys(PREFIX)? {
        let Some(record) = load(kv, &key[PREFIX.len()..])? else {
            continue;
        };
        if record.stage != Stage::Accepted {
            continue;
        }
        if record
            .accepted_ms
            .is_some_and(|at| at.saturating_add(FOLLOW_FOR_MS) <= now)
        {
            // Sent long ago and never reported final: stop following it.
            forget(kv, &record)?;
            continue;
        }
        accepted.push(record);
    }
    accepted.sort_by_key(|record| record.polled_ms);
    let mut deliveries = Vec::new();
    for mut record in accepted.into_iter().take(STATUS_POLLS_PER_TICK) {
        record.polled_ms = now;
        save(kv, &record)?;
        let (kind, request) = match &record.sms_id {
            Some(sms_id) => (
                "getsmsstatus",
                api::post(
                    settings.base_url,
                    "getsmsstatus",
                    &[("token", token.to_owned()), ("sms_id", sms_id.clone())],
                ),
            ),
            None => (
                "findsms",
                api::post(
                    settings.base_url,
                    "getallsms",
                    &[
                        ("token", token.to_owned()),
                        ("customerid", record.customerid.to_string()),
                    ],
                ),
            ),
        };
        deliveries.push(Delivery {
            idempotency_key: format!("{kind}/{now}/{}", record.id),
            request,
        });
    }
    Ok(deliveries)
}

/// `getsmsstatus` answered for request `id`.
pub(crate) fn status_answer(
    kv: &dyn KeyValue,
    id: &str,
    answer: &Value,
) -> Result<Vec<Event>, String> {
    let Some(code) = answer.get("status").and_then(lenient::leading_number) else {
        return Ok(Vec::new());
    };
    let title = field(answer, "status_description");
    status_changed(kv, id, field(answer, "sms_id"), code, title)
}

/// `getallsms?customerid=…` answered for request `id`.
pub(crate) fn found_answer(
    kv: &dyn KeyValue,
    settings: &Settings,
    id: &str,
    answer: &Value,
) -> Result<Vec<Event>, String> {
    let Some(record) = load(kv, id)? else {
        return Ok(Vec::new());
    };
    let found = api::listed_sms(answer, settings.utc_offset_minutes)
        .into_iter()
        .find(|sms| sms.customerid == Some(record.customerid));
    match found {
        Some(sms) => match sms.status {
            Some(code) => status_changed(kv, id, Some(sms.id), code, sms.status_title),
            None => Ok(Vec::new()),
        },
        None => Ok(Vec::new()),
    }
}

/// A request whose `addsms`/`addalotofsms` answer could not be read: whether the service
/// created the SMS is unknown, and sending again could send it twice, so it is reported and
/// left for the status poll to find by its `customerid`.
pub(crate) fn unknown_outcome(
    kv: &dyn KeyValue,
    now: u64,
    ids: &[String],
    why: &str,
) -> Result<Vec<Event>, String> {
    let mut events = Vec::new();
    for mut record in issued(kv, ids)? {
        record.stage = Stage::Accepted;
        record.accepted_ms = Some(now);
        record.polled_ms = now;
        save(kv, &record)?;
        events.push(record.status(
            DeliveryState::Pending,
            format!("SmsGateway24's answer could not be read ({why}); looking it up"),
        ));
    }
    Ok(events)
}

/// How far request `id` got, for tests.
#[cfg(test)]
pub(crate) fn stage_of(kv: &dyn KeyValue, id: &str) -> Option<String> {
    load(kv, id)
        .ok()
        .flatten()
        .map(|record| format!("{:?}", record.stage).to_lowercase())
}
