//! PUSH_SMS: an SMS that arrives on a card with an open activation goes to the marketplace
//! that issued the activation, as one delivery retried until the marketplace takes it, and
//! is never sent again after it did.
//!
//! Own keys: `sms/<message id>` (its smsId and how its push ended, kept `forget_after_secs`;
//! `pushed@…` indexes them by time) and `counter/sms`.

use serde::{Deserialize, Serialize};
use simrelay_sdk::dedupe::CATCH_UP;
use simrelay_sdk::phone::international_digits;
use simrelay_sdk::{
    CallContext, Delivery, DeliveryOutcome, Effects, ExpiryIndex, KeyValue, MessageKind,
    ReceivedMessage, Verdict,
};

use crate::Dialect;
use crate::activation::{self, Activation};
use crate::settings::Settings;

/// Idempotency keys of pushes are `push/<message id>`: a response leads back to its message,
/// and a message seen twice asks for the same delivery, which the host drops.
pub const PUSH_PREFIX: &str = "push/";
const SMS_PREFIX: &str = "sms/";
const SMS_ID_COUNTER: &str = "counter/sms";
const PUSHED_INDEX: &str = "pushed";

/// What the dialect turns into a PUSH_SMS request.
#[derive(Debug, Clone, PartialEq)]
pub struct Push<'a> {
    /// The partner key (`api_key`).
    pub key: &'a str,
    /// Our integer id for the SMS, ≥ 1, the same on every attempt.
    pub sms_id: u64,
    /// The number the activation was issued for, in international digits.
    pub phone: &'a str,
    /// The sender: a number in international digits, or a name such as `Microsoft`.
    pub phone_from: String,
    /// The text; for a flash call the caller's number, for a voice call the code.
    pub text: String,
    pub kind: MessageKind,
}

/// How a marketplace answered a push.
#[derive(Debug, Clone, PartialEq)]
pub enum PushAnswer {
    /// Taken: never push it again.
    Accepted,
    /// A final no about this SMS, with the marketplace's reason.
    Refused(String),
    /// Anything else: try again.
    NotYet(String),
}

/// Where a message's push stands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub enum PushState {
    Pending,
    Delivered,
    /// The marketplace refused it for good.
    Refused {
        reason: String,
    },
    /// Its activation ended before the marketplace took it; it cannot take it any more.
    Abandoned {
        reason: String,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PushRecord {
    pub sms_id: u64,
    pub activation: u64,
    #[serde(flatten)]
    pub state: PushState,
    pub at_ms: u64,
}

fn record_key(message_id: &str) -> String {
    format!("{SMS_PREFIX}{message_id}")
}

pub fn load(own: &dyn KeyValue, message_id: &str) -> Result<Option<PushRecord>, String> {
    let key = record_key(message_id);
    own.get(&key)?
        .map(|bytes| {
            serde_json::from_slice(&bytes).map_err(|error| format!("unreadable `{key}`: {error}"))
        })
        .transpose()
}

fn save(own: &dyn KeyValue, message_id: &str, record: &PushRecord) -> Result<(), String> {
    let bytes = serde_json::to_vec(record).expect("a push record serialises");
    own.set(&record_key(message_id), &bytes)
}

/// The push of a received message, when an activation of this instance is open on its card.
pub fn on_message<D: Dialect>(
    ctx: &CallContext,
    settings: &Settings,
    own: &dyn KeyValue,
    message: &ReceivedMessage,
) -> Result<Effects, String> {
    // Seen before: pushed, being pushed, or refused. Never a second push.
    if own.exists(&record_key(&message.id))? {
        return Ok(Effects::none());
    }
    let Some(activation) = activation::route(own, message)? else {
        let on = match message.recipient.trim() {
            "" => format!("port {}", message.port.as_deref().unwrap_or("(unknown)")),
            number => number.to_owned(),
        };
        eprintln!(
            "SMS {} on {on}: no activation of {} is open on the number; not pushed",
            message.id, ctx.instance
        );
        return Ok(Effects::none());
    };
    let sms_id = next_sms_id(own)?;
    let push = Push {
        key: &settings.api_key,
        sms_id,
        phone: &activation.number,
        phone_from: international_digits(&message.sender).unwrap_or_else(|| message.sender.clone()),
        text: text(message),
        kind: message.kind,
    };
    let request = D::push_request(ctx, &push)?;
    let record = PushRecord {
        sms_id,
        activation: activation.id,
        state: PushState::Pending,
        at_ms: ctx.now_ms,
    };
    save(own, &message.id, &record)?;
    let index = ExpiryIndex::new(own, PUSHED_INDEX);
    index.add(ctx.now_ms, &message.id)?;
    // Ticks forget a bounded number at a time; a busier relay catches up here.
    if index.catch_up_on(&message.id)? {
        forget(own, ctx.now_ms, settings.forget_after_ms, CATCH_UP)?;
    }
    Ok(Effects {
        events: Vec::new(),
        deliveries: vec![Delivery {
            idempotency_key: format!("{PUSH_PREFIX}{}", message.id),
            request,
        }],
    })
}

/// Deletes at most `limit` push records older than `after_ms`.
pub fn forget(
    own: &dyn KeyValue,
    now_ms: u64,
    after_ms: u64,
    limit: usize,
) -> Result<usize, String> {
    ExpiryIndex::new(own, PUSHED_INDEX).sweep(now_ms, after_ms, limit, |message_id, _| {
        own.delete(&record_key(message_id))
    })
}

fn next_sms_id(own: &dyn KeyValue) -> Result<u64, String> {
    let id = own.increment(SMS_ID_COUNTER, 1)?;
    u64::try_from(id)
        .ok()
        .filter(|id| *id >= 1)
        .ok_or_else(|| format!("`{SMS_ID_COUNTER}` holds {id}"))
}

/// What the marketplace reads as the message: the text of an SMS; the caller's number for a
/// flash call, which is the code; the code of a voice call when the gateway made it out.
fn text(message: &ReceivedMessage) -> String {
    let code = message
        .code
        .as_deref()
        .filter(|code| !code.trim().is_empty());
    match message.kind {
        MessageKind::Sms => message.text.clone(),
        MessageKind::FlashCall => match international_digits(&message.sender) {
            Some(caller) => caller,
            None => code.unwrap_or(&message.text).to_owned(),
        },
        MessageKind::Voice => code.unwrap_or(&message.text).to_owned(),
    }
}

/// The verdict on a push attempt: delivered on the marketplace's yes, given up on a final
/// no, retried every `retry_interval_secs` otherwise, for as long as the activation is open.
pub fn on_response<D: Dialect>(
    ctx: &CallContext,
    settings: &Settings,
    own: &dyn KeyValue,
    message_id: &str,
    outcome: &DeliveryOutcome,
) -> Result<Verdict, String> {
    let record = load(own, message_id)?;
    if record
        .as_ref()
        .is_some_and(|record| record.state == PushState::Delivered)
    {
        return Ok(Verdict::Delivered);
    }
    let settle = |state: PushState| -> Result<(), String> {
        match &record {
            Some(record) => save(
                own,
                message_id,
                &PushRecord {
                    state,
                    at_ms: ctx.now_ms,
                    ..record.clone()
                },
            ),
            None => Ok(()),
        }
    };
    // Answers end up in logs and give-up reasons: keep the partner key out of them, should
    // a marketplace echo it.
    let redact = |answer: String| answer.replace(settings.api_key.as_str(), "***");
    match D::push_answer(outcome) {
        PushAnswer::Accepted => {
            settle(PushState::Delivered)?;
            Ok(Verdict::Delivered)
        }
        PushAnswer::Refused(reason) => {
            let reason = redact(reason);
            settle(PushState::Refused {
                reason: reason.clone(),
            })?;
            Ok(Verdict::GiveUp(format!(
                "{} refused the SMS for good: {reason}",
                D::NAME
            )))
        }
        PushAnswer::NotYet(answer) => {
            let answer = redact(answer);
            let ended = match &record {
                Some(record) => activation::load(own, record.activation)?.filter(|a| !a.is_open()),
                None => None,
            };
            match ended {
                Some(activation) => {
                    let reason = abandoned(&activation, &answer);
                    settle(PushState::Abandoned {
                        reason: reason.clone(),
                    })?;
                    Ok(Verdict::GiveUp(reason))
                }
                None => Ok(Verdict::RetryAfterMs(settings.retry_interval_ms)),
            }
        }
    }
}

fn abandoned(activation: &Activation, answer: &str) -> String {
    let status = activation
        .ended
        .as_ref()
        .map_or(0, |ended| ended.ending.status());
    format!(
        "activation {} ended (status {status}) before the marketplace took the SMS; its last answer: {answer}",
        activation.id
    )
}
