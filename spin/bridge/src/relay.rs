//! What the bridge does with a plugin call's effects, and with what is waiting for a retry.
//!
//! Events go to every component in `simrelay_forward_to` at once, through local service
//! chaining; one that is not accepted is kept in the outbox for the tick. Each delivery is
//! claimed by its idempotency key, stored, and attempted once; its response goes back to
//! the plugin, whose verdict under the instance's retry policy decides its next state
//! ([`simrelay_core::relay::after_response`]), and a pending one waits for the tick.
//! Fan-out, verdicts and the retry schedule are `simrelay-core`'s, as in the host.

use std::collections::VecDeque;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use simrelay_core::model::{Delivery, DeliveryRef, Effects, Event, HttpResponse};
use simrelay_core::redact::Redactor;
use simrelay_core::relay::{self as decide, DeliveryRecord, QueuedEvent};
use simrelay_core::retry::DeliveryState;

use crate::config::InstanceConfig;
use crate::io::{Environment, Network, Plugin, Sent, Store};
use crate::ledger;
use crate::request::EVENT_PATH;

/// Deliveries one request attempts; later ones wait for the tick, so a request that asked
/// for many still answers in time.
pub const MAX_ATTEMPTS_PER_REQUEST: u32 = 16;
/// Stored deliveries, and stored events, one tick retries.
pub const MAX_RETRIES_PER_TICK: usize = 64;
/// Components an event may pass through: a `simrelay_forward_to` cycle ends here.
pub const MAX_HOPS: u32 = 16;
/// The status a component answers an event that passed [`MAX_HOPS`] components.
pub const LOOP_DETECTED: u16 = 508;

/// An event on its way from one component to the next.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// The instance that emitted it.
    pub source: String,
    /// The message whose handling produced it; the receiver logs with it.
    pub message_id: String,
    /// Components it went through, the receiver included.
    pub hops: u32,
    pub event: Event,
}

/// What handling one request did, as the tick route answers it.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Report {
    pub events_forwarded: u32,
    /// Events a downstream component did not accept, kept for the tick.
    pub events_queued: u32,
    /// Events dropped because they went round a `simrelay_forward_to` cycle.
    pub events_dropped: u32,
    pub deliveries_attempted: u32,
    pub delivered: u32,
    pub retrying: u32,
    pub dead: u32,
    /// Deliveries dropped because their idempotency key was already asked for.
    pub duplicates: u32,
    /// Deliveries stored for the tick without an attempt (over the per-request budget).
    pub deferred: u32,
    /// What could not be stored or done, secrets removed.
    pub errors: Vec<String>,
}

/// One instance's relay for the duration of one request.
pub struct Relay<'a> {
    pub config: &'a InstanceConfig,
    pub redactor: &'a Redactor,
    pub store: &'a dyn Store,
    pub plugin: &'a dyn Plugin,
    pub network: &'a dyn Network,
    pub env: &'a dyn Environment,
}

enum Handover {
    Accepted,
    /// The receiver says the event went round a cycle: passing it on again cannot help.
    Looping,
    Failed(String),
}

impl Relay<'_> {
    /// Logs one line about `message_id`, secrets removed.
    pub fn log(&self, message_id: &str, line: &str) {
        let line = format!("{} message_id={message_id} {line}", self.config.instance);
        self.env.log(&self.redactor.redact(&line));
    }

    fn error(&self, report: &mut Report, message_id: &str, error: String) {
        let error = self.redactor.redact(&error);
        self.log(message_id, &error);
        report.errors.push(error);
    }

    /// Passes on the events and makes the deliveries of a call made for `message_id`, and
    /// those of the responses to them, until nothing is left but what waits for a tick.
    /// `hops`: components the input had passed through, this one included.
    pub fn settle(&self, message_id: &str, hops: u32, effects: Effects, report: &mut Report) {
        let mut todo = VecDeque::from([effects]);
        while let Some(effects) = todo.pop_front() {
            self.forward(message_id, hops, effects.events, report);
            for delivery in effects.deliveries {
                if let Some(more) = self.accept_delivery(message_id, delivery, report) {
                    todo.push_back(more);
                }
            }
        }
    }

    fn forward(&self, message_id: &str, hops: u32, events: Vec<Event>, report: &mut Report) {
        for (target, event) in simrelay_core::fan_out(events, &self.config.forward_to) {
            let envelope = Envelope {
                source: self.config.instance.clone(),
                message_id: message_id.to_string(),
                hops: hops + 1,
                event,
            };
            match self.hand_over(&target, &envelope) {
                Handover::Accepted => report.events_forwarded += 1,
                Handover::Looping => self.drop_looping(&target, &envelope, report),
                Handover::Failed(error) => {
                    self.log(
                        message_id,
                        &format!("event for `{target}` not accepted, kept for the tick: {error}"),
                    );
                    self.queue_event(&target, envelope, error, report);
                }
            }
        }
    }

    fn hand_over(&self, target: &str, envelope: &Envelope) -> Handover {
        let body = match serde_json::to_vec(envelope) {
            Ok(body) => body,
            Err(error) => return Handover::Failed(format!("cannot encode the event: {error}")),
        };
        match self.network.forward(target, EVENT_PATH, &body) {
            Ok(response) if (200..300).contains(&response.status) => Handover::Accepted,
            Ok(response) if response.status == LOOP_DETECTED => Handover::Looping,
            Ok(response) => Handover::Failed(summary(&response)),
            Err(error) => Handover::Failed(error),
        }
    }

    fn drop_looping(&self, target: &str, envelope: &Envelope, report: &mut Report) {
        report.events_dropped += 1;
        self.log(
            &envelope.message_id,
            &format!(
                "{} event for `{target}` dropped: it went through {MAX_HOPS} components; \
                 check simrelay_forward_to for a cycle",
                envelope.event.kind()
            ),
        );
    }

    fn queue_event(&self, target: &str, envelope: Envelope, error: String, report: &mut Report) {
        let now = self.env.now_ms();
        let queued = ledger::new_queued_event(
            self.env.random_u64(),
            &self.config.instance,
            target,
            &envelope.message_id,
            envelope.event,
            self.redactor.redact(&error),
            now,
        );
        let stored = self
            .store
            .set(&ledger::event_key(&queued), &to_json(&queued));
        match stored {
            Ok(()) => report.events_queued += 1,
            Err(error) => self.error(
                report,
                &envelope.message_id,
                format!("an event for `{target}` was not accepted and could not be kept: {error}"),
            ),
        }
    }

    /// Claims the delivery's key, stores it and attempts it, within the request's budget.
    /// Returns the effects of the plugin's judgement of the attempt.
    fn accept_delivery(
        &self,
        message_id: &str,
        delivery: Delivery,
        report: &mut Report,
    ) -> Option<Effects> {
        let key = delivery.idempotency_key.clone();
        let claim = ledger::claim_key(&key);
        match self.store.increment(&claim, 1) {
            Ok(1) => {}
            Ok(_) => {
                report.duplicates += 1;
                self.log(
                    message_id,
                    &format!("delivery `{key}` dropped: already asked for"),
                );
                return None;
            }
            Err(error) => {
                self.error(
                    report,
                    message_id,
                    format!("delivery `{key}` could not be claimed: {error}"),
                );
                return None;
            }
        }
        let now = self.env.now_ms();
        let attempt_now = report.deliveries_attempted < MAX_ATTEMPTS_PER_REQUEST;
        let due = if attempt_now {
            now + ledger::LEASE_MS
        } else {
            now
        };
        let record = ledger::new_delivery(
            self.env.random_u64(),
            &self.config.instance,
            message_id,
            delivery,
            now,
            due,
        );
        if let Err(error) = self.save(&record) {
            // Unclaim it, so the sender's retry asks for it again rather than being dropped
            // as a duplicate of a delivery that was never stored.
            let _ = self.store.increment(&claim, -1);
            self.error(
                report,
                message_id,
                format!("delivery `{key}` could not be stored: {error}"),
            );
            return None;
        }
        if !attempt_now {
            report.deferred += 1;
            return None;
        }
        self.attempt(record, report)
    }

    fn save(&self, record: &DeliveryRecord) -> Result<(), String> {
        self.store.set(
            &ledger::delivery_key(&record.idempotency_key),
            &to_json(record),
        )
    }

    /// One attempt of a stored delivery that this request holds.
    fn attempt(&self, record: DeliveryRecord, report: &mut Report) -> Option<Effects> {
        report.deliveries_attempted += 1;
        let sent = self.network.send(&record.request);
        let now = self.env.now_ms();
        let redact = |text: &str| self.redactor.redact(text);
        let (record, effects) = match sent {
            Sent::Refused(reason) => (decide::refused(record, redact(&reason), now), None),
            Sent::Made(outcome) => {
                let delivery = DeliveryRef {
                    idempotency_key: record.idempotency_key.clone(),
                    attempt: record.attempts + 1,
                };
                let ctx = self.config.context(&record.message_id, now);
                let judged = self
                    .plugin
                    .on_response(&ctx, delivery, outcome.clone())
                    .map_err(|error| redact(&error));
                let record = decide::after_response(
                    record,
                    &outcome,
                    judged.as_ref().map_err(String::as_str),
                    &self.config.retry,
                    now,
                    self.env.random(),
                    redact,
                );
                (record, judged.ok().map(|judged| judged.effects))
            }
        };
        match record.state {
            DeliveryState::Pending { .. } => report.retrying += 1,
            DeliveryState::Delivered { .. } => report.delivered += 1,
            DeliveryState::Dead { .. } => report.dead += 1,
        }
        self.log(
            &record.message_id,
            &format!(
                "delivery {} `{}` attempt {}: {} -> {}",
                record.id,
                record.idempotency_key,
                record.attempts,
                record.last_result.as_deref().unwrap_or("not sent"),
                record.state.name()
            ),
        );
        if let Err(error) = self.save(&record) {
            // The stored copy still holds the lease: it is attempted again when that ends.
            self.error(
                report,
                &record.message_id,
                format!(
                    "the outcome of delivery `{}` could not be stored: {error}",
                    record.idempotency_key
                ),
            );
        }
        effects
    }

    /// Retries the stored events and deliveries that are due, at most
    /// [`MAX_RETRIES_PER_TICK`] of each. `message_id` is the tick's.
    pub fn retry_due(&self, message_id: &str, report: &mut Report) {
        let keys = match self.store.keys() {
            Ok(keys) => keys,
            Err(error) => {
                self.error(
                    report,
                    message_id,
                    format!("cannot list stored records: {error}"),
                );
                return;
            }
        };
        let (events, deliveries): (Vec<String>, Vec<String>) = keys
            .into_iter()
            .filter(|key| {
                key.starts_with(ledger::EVENT_PREFIX) || key.starts_with(ledger::DELIVERY_PREFIX)
            })
            .partition(|key| key.starts_with(ledger::EVENT_PREFIX));
        self.retry_events(message_id, events, report);
        self.retry_deliveries(message_id, deliveries, report);
    }

    fn retry_events(&self, message_id: &str, keys: Vec<String>, report: &mut Report) {
        let now = self.env.now_ms();
        let entries = self.load::<QueuedEvent>(message_id, keys, report);
        let due = ledger::due_first(
            entries,
            |(_, queued)| Some(queued.next_attempt_ms),
            now,
            MAX_RETRIES_PER_TICK,
        );
        for (key, (stored, queued)) in due {
            let leased = ledger::leased_event(queued.clone(), now);
            if !self.take(message_id, &key, &stored, &to_json(&leased), report) {
                continue;
            }
            let envelope = Envelope {
                source: queued.source.clone(),
                message_id: queued.message_id.clone(),
                hops: 1,
                event: queued.event.clone(),
            };
            let failure = match self.hand_over(&queued.target, &envelope) {
                Handover::Accepted => {
                    report.events_forwarded += 1;
                    None
                }
                Handover::Looping => {
                    self.drop_looping(&queued.target, &envelope, report);
                    None
                }
                Handover::Failed(error) => Some(self.redactor.redact(&error)),
            };
            let result = match decide::after_event(queued, failure, self.env.now_ms()) {
                None => self.store.delete(&key),
                Some(failed) => {
                    report.events_queued += 1;
                    self.store.set(&key, &to_json(&failed))
                }
            };
            if let Err(error) = result {
                self.error(
                    report,
                    message_id,
                    format!("cannot update the stored event {key}: {error}"),
                );
            }
        }
    }

    fn retry_deliveries(&self, message_id: &str, keys: Vec<String>, report: &mut Report) {
        let now = self.env.now_ms();
        let entries = self.load::<DeliveryRecord>(message_id, keys, report);
        let due = ledger::due_first(
            entries,
            |(_, record)| ledger::delivery_due(record),
            now,
            MAX_RETRIES_PER_TICK,
        );
        for (key, (stored, record)) in due {
            let leased = ledger::leased_delivery(record, now);
            if !self.take(message_id, &key, &stored, &to_json(&leased), report) {
                continue;
            }
            let delivery_message = leased.message_id.clone();
            if let Some(effects) = self.attempt(leased, report) {
                self.settle(&delivery_message, 1, effects, report);
            }
        }
    }

    /// Takes a stored record for this request by replacing it with its leased copy; false
    /// when another request changed it first.
    fn take(
        &self,
        message_id: &str,
        key: &str,
        stored: &[u8],
        leased: &[u8],
        report: &mut Report,
    ) -> bool {
        match self.store.replace(key, stored, leased) {
            Ok(taken) => taken,
            Err(error) => {
                self.error(report, message_id, format!("cannot take {key}: {error}"));
                false
            }
        }
    }

    /// The records at `keys`, with the bytes they were read as; unreadable ones are
    /// reported and left alone.
    fn load<T: DeserializeOwned>(
        &self,
        message_id: &str,
        keys: Vec<String>,
        report: &mut Report,
    ) -> Vec<(String, (Vec<u8>, T))> {
        if keys.is_empty() {
            return Vec::new();
        }
        let values = match self.store.get_many(&keys) {
            Ok(values) => values,
            Err(error) => {
                self.error(
                    report,
                    message_id,
                    format!("cannot read stored records: {error}"),
                );
                return Vec::new();
            }
        };
        let mut loaded = Vec::new();
        for (key, value) in keys.into_iter().zip(values) {
            let Some(bytes) = value else { continue };
            match serde_json::from_slice(&bytes) {
                Ok(record) => loaded.push((key, (bytes, record))),
                Err(error) => {
                    self.error(report, message_id, format!("{key} is unreadable: {error}"))
                }
            }
        }
        loaded
    }
}

fn to_json(value: &impl Serialize) -> Vec<u8> {
    serde_json::to_vec(value).expect("records serialize")
}

/// One line about a response: status and the start of its body.
fn summary(response: &HttpResponse) -> String {
    simrelay_core::model::DeliveryOutcome::Response(response.clone()).summary()
}
