//! The relay's decisions: what the outcome of one plugin call does to the input it
//! consumed. The host and the Spin bridge store the results their own way; the rules are
//! here, tested without either.

use serde::{Deserialize, Serialize};

use crate::model::{DeliveryOutcome, Event, OutgoingRequest, ResponseOutcome};
use crate::retry::{self, Attempt, DeliveryState, RetryPolicy};

/// An HTTP request a plugin asked the host to deliver, and what has become of it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeliveryRecord {
    pub id: u64,
    pub instance: String,
    pub idempotency_key: String,
    /// The message whose handling asked for it; logged with every attempt.
    pub message_id: String,
    pub request: OutgoingRequest,
    pub created_ms: u64,
    pub attempts: u32,
    pub state: DeliveryState,
    /// The last response status or transport error, for operators.
    pub last_result: Option<String>,
    /// The latest attempts, oldest first, at most [`ATTEMPTS_KEPT`].
    #[serde(default)]
    pub history: Vec<AttemptLog>,
}

/// Attempts kept per delivery in [`DeliveryRecord::history`].
pub const ATTEMPTS_KEPT: usize = 20;

/// One attempt as operators see it. Secrets are removed before it is recorded.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AttemptLog {
    pub attempt: u32,
    pub at_ms: u64,
    /// Status and the start of the body, or the transport error.
    pub result: String,
    /// What was decided: delivered, retry at …, dead: ….
    pub decision: String,
}

/// An event on its way to one downstream instance.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QueuedEvent {
    pub id: u64,
    pub source: String,
    pub target: String,
    pub message_id: String,
    pub event: Event,
    pub attempts: u32,
    pub next_attempt_ms: u64,
    pub last_error: Option<String>,
    /// When it was queued.
    #[serde(default)]
    pub created_ms: u64,
}

impl QueuedEvent {
    /// An event `source` emitted at `now_ms`, due at once, not yet tried.
    pub fn new(
        id: u64,
        source: &str,
        target: String,
        message_id: &str,
        event: Event,
        now_ms: u64,
    ) -> Self {
        QueuedEvent {
            id,
            source: source.to_string(),
            target,
            message_id: message_id.to_string(),
            event,
            attempts: 0,
            next_attempt_ms: now_ms,
            last_error: None,
            created_ms: now_ms,
        }
    }
}

/// A queued event after its target's call: `None` when handled (it leaves the queue), else
/// the record to store, due again after the failure backoff.
pub fn after_event(
    mut queued: QueuedEvent,
    failure: Option<String>,
    now_ms: u64,
) -> Option<QueuedEvent> {
    let error = failure?;
    queued.attempts += 1;
    queued.next_attempt_ms = now_ms + retry::failure_backoff_ms(queued.attempts);
    queued.last_error = Some(error);
    Some(queued)
}

/// A delivery after one attempt and the plugin's judgement of it (`Err`: the plugin could
/// not judge, so the delivery stays pending and is tried again after the failure backoff).
/// `summary` is the attempt's result and `error` the call's, both without secrets.
pub fn after_response(
    mut record: DeliveryRecord,
    outcome: &DeliveryOutcome,
    judged: Result<&ResponseOutcome, &str>,
    policy: &RetryPolicy,
    now_ms: u64,
    random: f64,
    redact: impl Fn(&str) -> String,
) -> DeliveryRecord {
    record.attempts += 1;
    let summary = redact(&outcome.summary());
    record.state = match judged {
        Ok(judged) => retry::next_state(
            policy,
            Attempt {
                verdict: &judged.verdict,
                attempts: record.attempts,
                created_ms: record.created_ms,
                now_ms,
                random,
                summary: &summary,
            },
        ),
        Err(_) => DeliveryState::Pending {
            next_attempt_ms: now_ms + retry::failure_backoff_ms(record.attempts),
        },
    };
    if let DeliveryState::Dead { reason, .. } = &mut record.state {
        *reason = redact(reason);
    }
    let result = match judged {
        Ok(_) => summary,
        Err(error) => format!("{summary}; verdict unavailable: {error}"),
    };
    record.history.push(AttemptLog {
        attempt: record.attempts,
        at_ms: now_ms,
        result: result.clone(),
        decision: describe(&record.state),
    });
    let excess = record.history.len().saturating_sub(ATTEMPTS_KEPT);
    record.history.drain(..excess);
    record.last_result = Some(result);
    record
}

/// A delivery the host refused to make (its URL is not allowed): dead at once.
pub fn refused(mut record: DeliveryRecord, reason: String, now_ms: u64) -> DeliveryRecord {
    record.history.push(AttemptLog {
        attempt: record.attempts,
        at_ms: now_ms,
        result: format!("not sent: {reason}"),
        decision: "dead".into(),
    });
    record.state = DeliveryState::Dead {
        at_ms: now_ms,
        reason: format!("refused by the host: {reason}"),
    };
    record
}

fn describe(state: &DeliveryState) -> String {
    match state {
        DeliveryState::Pending { next_attempt_ms } => format!("retry at {next_attempt_ms}"),
        DeliveryState::Delivered { .. } => "delivered".into(),
        DeliveryState::Dead { reason, .. } => format!("dead: {reason}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Effects, HttpResponse, Verdict};

    fn record() -> DeliveryRecord {
        DeliveryRecord {
            id: 7,
            instance: "bower".into(),
            idempotency_key: "push/1".into(),
            message_id: "m".into(),
            request: OutgoingRequest::default(),
            created_ms: 0,
            attempts: 0,
            state: DeliveryState::Pending { next_attempt_ms: 0 },
            last_result: None,
            history: Vec::new(),
        }
    }

    fn response(body: &str) -> DeliveryOutcome {
        DeliveryOutcome::Response(HttpResponse {
            status: 200,
            headers: Vec::new(),
            body: body.as_bytes().to_vec(),
        })
    }

    fn judged(verdict: Verdict) -> ResponseOutcome {
        ResponseOutcome {
            verdict,
            effects: Effects::none(),
        }
    }

    fn no_jitter() -> RetryPolicy {
        RetryPolicy {
            jitter: 0.0,
            ..Default::default()
        }
    }

    #[test]
    fn each_attempt_is_logged_without_secrets_and_the_verdict_decides() {
        let redact = |text: &str| text.replace("k3y", "[redacted]");
        let outcome = response(r#"{"status":"ERROR","key":"k3y"}"#);
        let verdict = judged(Verdict::RetryAfterMs(10_000));
        let first = after_response(
            record(),
            &outcome,
            Ok(&verdict),
            &no_jitter(),
            1_000,
            0.0,
            redact,
        );
        assert_eq!(first.attempts, 1);
        assert_eq!(
            first.state,
            DeliveryState::Pending {
                next_attempt_ms: 11_000
            }
        );
        assert_eq!(
            first.last_result.as_deref(),
            Some(r#"HTTP 200: {"status":"ERROR","key":"[redacted]"}"#)
        );
        assert_eq!(first.history[0].decision, "retry at 11000");

        let delivered = judged(Verdict::Delivered);
        let second = after_response(
            first,
            &response("{}"),
            Ok(&delivered),
            &no_jitter(),
            11_000,
            0.0,
            redact,
        );
        assert_eq!(second.state, DeliveryState::Delivered { at_ms: 11_000 });
        assert_eq!(second.history.len(), 2);
    }

    #[test]
    fn a_plugin_that_cannot_judge_leaves_the_delivery_pending() {
        let outcome = DeliveryOutcome::TransportError("refused".into());
        let after = after_response(
            record(),
            &outcome,
            Err("trap"),
            &no_jitter(),
            0,
            0.0,
            str::to_string,
        );
        assert_eq!(
            after.state,
            DeliveryState::Pending {
                next_attempt_ms: 5_000
            }
        );
        assert_eq!(
            after.last_result.as_deref(),
            Some("transport error: refused; verdict unavailable: trap")
        );
    }

    #[test]
    fn history_keeps_the_latest_attempts() {
        let outcome = response("{}");
        let verdict = judged(Verdict::Retry);
        let policy = RetryPolicy {
            max_age_secs: 0,
            ..no_jitter()
        };
        let mut delivery = record();
        for now in 0..30 {
            delivery = after_response(
                delivery,
                &outcome,
                Ok(&verdict),
                &policy,
                now,
                0.0,
                str::to_string,
            );
        }
        assert_eq!(delivery.history.len(), ATTEMPTS_KEPT);
        assert_eq!(delivery.history[0].attempt, 11);
        assert_eq!(delivery.attempts, 30);
    }

    #[test]
    fn failed_events_back_off_and_handled_ones_leave() {
        let event = Event::DeliveryStatusChanged(crate::model::DeliveryStatus {
            id: "s".into(),
            state: crate::model::DeliveryState::Sent,
            detail: None,
            recipient: None,
        });
        let queued = QueuedEvent::new(1, "a", "b".into(), "m", event, 0);
        assert_eq!(after_event(queued.clone(), None, 100), None);
        let failed = after_event(queued, Some("trap".into()), 100).unwrap();
        assert_eq!((failed.attempts, failed.next_attempt_ms), (1, 5_100));
        assert_eq!(failed.last_error.as_deref(), Some("trap"));
    }

    #[test]
    fn refused_deliveries_are_dead_with_the_reason() {
        let dead = refused(record(), "host evil.test:80 is not allowed".into(), 9);
        assert!(
            matches!(dead.state, DeliveryState::Dead { at_ms: 9, ref reason } if reason.contains("evil.test"))
        );
    }
}
