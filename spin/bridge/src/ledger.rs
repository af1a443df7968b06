//! How the bridge keeps deliveries and events in the instance's own key-value store, and
//! which of them are due.
//!
//! Every key starts with [`PREFIX`], which no plugin uses for its own keys:
//!
//! - `.simrelay/claim/<idempotency key>`: a counter; whoever raises it to 1 owns the key, so
//!   a delivery asked for twice (a re-sent webhook, two requests at once) is made once;
//! - `.simrelay/delivery/<idempotency key>`: the [`DeliveryRecord`], kept after it ends, as
//!   the host keeps its records;
//! - `.simrelay/event/<queued at>-<id>`: a [`QueuedEvent`] a downstream component did not
//!   accept yet;
//! - `.simrelay/last-tick`: when the plugin's `on-tick` last ran, milliseconds as text.
//!
//! Spin runs requests side by side and its stores have no transactions, so a tick takes a
//! record by replacing it (compare-and-swap) with a copy leased for [`LEASE_MS`]: a second
//! tick finds it not due, and a bridge that dies mid-attempt leaves it due again later.

use simrelay_core::model::{Delivery, Event};
use simrelay_core::relay::{DeliveryRecord, QueuedEvent};
use simrelay_core::retry::DeliveryState;

/// The start of every key the bridge writes.
pub const PREFIX: &str = ".simrelay/";
pub const CLAIM_PREFIX: &str = ".simrelay/claim/";
pub const DELIVERY_PREFIX: &str = ".simrelay/delivery/";
pub const EVENT_PREFIX: &str = ".simrelay/event/";
pub const LAST_TICK_KEY: &str = ".simrelay/last-tick";

/// How long an attempt may hold a record: longer than any delivery's timeout.
pub const LEASE_MS: u64 = 60_000;

pub fn claim_key(idempotency_key: &str) -> String {
    format!("{CLAIM_PREFIX}{idempotency_key}")
}

pub fn delivery_key(idempotency_key: &str) -> String {
    format!("{DELIVERY_PREFIX}{idempotency_key}")
}

/// Records are numbered with random ids rather than a shared counter, which would cost
/// every record one more write, all of them to the same key.
/// Zero-padded time first, so keys sort in the order the events were queued.
pub fn event_key(event: &QueuedEvent) -> String {
    format!("{EVENT_PREFIX}{:013}-{:016x}", event.created_ms, event.id)
}

/// A delivery just asked for: pending and due at `due_ms` (a lease when it is attempted at
/// once, `now_ms` when it waits for the tick).
pub fn new_delivery(
    id: u64,
    instance: &str,
    message_id: &str,
    delivery: Delivery,
    now_ms: u64,
    due_ms: u64,
) -> DeliveryRecord {
    DeliveryRecord {
        id,
        instance: instance.to_string(),
        idempotency_key: delivery.idempotency_key,
        message_id: message_id.to_string(),
        request: delivery.request,
        created_ms: now_ms,
        attempts: 0,
        state: DeliveryState::Pending {
            next_attempt_ms: due_ms,
        },
        last_result: None,
        history: Vec::new(),
    }
}

/// An event its target did not accept, first stored for a retry after `error`.
pub fn new_queued_event(
    id: u64,
    source: &str,
    target: &str,
    message_id: &str,
    event: Event,
    error: String,
    now_ms: u64,
) -> QueuedEvent {
    let queued = QueuedEvent::new(id, source, target.to_string(), message_id, event, now_ms);
    simrelay_core::relay::after_event(queued, Some(error), now_ms)
        .expect("a failure keeps the event queued")
}

/// When a record is due: pending deliveries, by their next attempt.
pub fn delivery_due(record: &DeliveryRecord) -> Option<u64> {
    match record.state {
        DeliveryState::Pending { next_attempt_ms } => Some(next_attempt_ms),
        _ => None,
    }
}

/// The record as an attempt holds it: due again only after the lease.
pub fn leased_delivery(mut record: DeliveryRecord, now_ms: u64) -> DeliveryRecord {
    record.state = DeliveryState::Pending {
        next_attempt_ms: now_ms + LEASE_MS,
    };
    record
}

/// The event as a retry holds it.
pub fn leased_event(mut event: QueuedEvent, now_ms: u64) -> QueuedEvent {
    event.next_attempt_ms = now_ms + LEASE_MS;
    event
}

/// Whether the plugin's `on-tick` is due, given when it last ran (as stored).
pub fn plugin_tick_due(last_tick: Option<&[u8]>, now_ms: u64, interval_secs: u64) -> bool {
    let last = last_tick
        .and_then(|bytes| std::str::from_utf8(bytes).ok())
        .and_then(|text| text.parse::<u64>().ok());
    last.is_none_or(|last| now_ms >= last.saturating_add(interval_secs.saturating_mul(1000)))
}

/// The entries due by `now_ms`, earliest first, at most `limit`; `due_at` says when an
/// entry is due, `None` for never.
pub fn due_first<T>(
    entries: Vec<(String, T)>,
    due_at: impl Fn(&T) -> Option<u64>,
    now_ms: u64,
    limit: usize,
) -> Vec<(String, T)> {
    let mut due: Vec<(u64, String, T)> = entries
        .into_iter()
        .filter_map(|(key, entry)| {
            let at = due_at(&entry).filter(|at| *at <= now_ms)?;
            Some((at, key, entry))
        })
        .collect();
    due.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
    due.into_iter()
        .take(limit)
        .map(|(_, key, entry)| (key, entry))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use simrelay_core::model::{DeliveryState as SmsState, DeliveryStatus, OutgoingRequest};

    fn delivery(key: &str) -> Delivery {
        Delivery {
            idempotency_key: key.into(),
            request: OutgoingRequest {
                method: "POST".into(),
                url: "http://127.0.0.1:9/push".into(),
                ..Default::default()
            },
        }
    }

    #[test]
    fn keys_stay_under_the_reserved_prefix_and_events_sort_by_id() {
        let event = |created_ms, id| {
            new_queued_event(id, "a", "b", "m", sms(), "HTTP 500".into(), created_ms)
        };
        for key in [
            claim_key("push/1"),
            delivery_key("push/1"),
            event_key(&event(5, 7)),
        ] {
            assert!(key.starts_with(PREFIX), "{key}");
        }
        assert!(event_key(&event(9, u64::MAX)) < event_key(&event(10, 0)));
        assert_eq!(delivery_key("push/1"), ".simrelay/delivery/push/1");
    }

    #[test]
    fn a_leased_delivery_is_not_due_until_the_lease_ends() {
        let record = new_delivery(1, "bower", "m", delivery("push/1"), 1_000, 1_000);
        assert_eq!(delivery_due(&record), Some(1_000));
        let leased = leased_delivery(record, 5_000);
        assert_eq!(delivery_due(&leased), Some(5_000 + LEASE_MS));
        let entries = vec![("a".to_string(), leased)];
        assert!(due_first(entries.clone(), delivery_due, 5_000 + LEASE_MS - 1, 10).is_empty());
        assert_eq!(
            due_first(entries, delivery_due, 5_000 + LEASE_MS, 10).len(),
            1
        );
    }

    #[test]
    fn finished_deliveries_are_never_due() {
        let mut record = new_delivery(1, "bower", "m", delivery("push/1"), 0, 0);
        record.state = DeliveryState::Delivered { at_ms: 5 };
        assert_eq!(delivery_due(&record), None);
        record.state = DeliveryState::Dead {
            at_ms: 5,
            reason: "gave up".into(),
        };
        assert_eq!(delivery_due(&record), None);
    }

    #[test]
    fn due_entries_come_earliest_first_up_to_the_limit() {
        let entries = vec![
            ("c".to_string(), Some(30)),
            ("a".to_string(), Some(10)),
            ("later".to_string(), Some(99)),
            ("never".to_string(), None),
            ("b".to_string(), Some(10)),
        ];
        let due: Vec<String> = due_first(entries, |at| *at, 50, 2)
            .into_iter()
            .map(|(key, _)| key)
            .collect();
        assert_eq!(due, ["a", "b"]);
    }

    #[test]
    fn the_plugin_ticks_once_per_interval_however_often_the_route_is_called() {
        assert!(plugin_tick_due(None, 1_000, 60));
        assert!(plugin_tick_due(Some(b"garbage"), 1_000, 60));
        assert!(!plugin_tick_due(Some(b"1000"), 60_999, 60));
        assert!(plugin_tick_due(Some(b"1000"), 61_000, 60));
        assert!(plugin_tick_due(Some(b"1000"), 1_000, 0));
    }

    fn sms() -> Event {
        Event::DeliveryStatusChanged(DeliveryStatus {
            id: "s".into(),
            state: SmsState::Sent,
            detail: None,
            recipient: None,
        })
    }

    #[test]
    fn a_queued_event_waits_the_failure_backoff() {
        let queued = new_queued_event(3, "ejoin", "bower", "m", sms(), "HTTP 500".into(), 1_000);
        assert_eq!(queued.attempts, 1);
        assert_eq!(
            queued.next_attempt_ms,
            1_000 + simrelay_core::retry::failure_backoff_ms(1)
        );
        assert_eq!(queued.last_error.as_deref(), Some("HTTP 500"));
        let leased = leased_event(queued, 2_000);
        assert_eq!(leased.next_attempt_ms, 2_000 + LEASE_MS);
    }
}
