//! The bridge's behaviour, request by request, against fakes of Spin: what is answered,
//! forwarded, sent, stored and logged.

use serde_json::{Value, json};
use simrelay_core::model::{
    Capability, Delivery, DeliveryOutcome, Descriptor, Effects, Event, HttpReply, KeySource,
    MessageKind, OutgoingRequest, ReceivedMessage, ResponseOutcome, SettingSpec, Verdict,
    WebhookKey,
};
use simrelay_core::relay::{DeliveryRecord, QueuedEvent};
use simrelay_core::retry::DeliveryState;

use super::MESSAGE_ID_HEADER;
use crate::io::Sent;
use crate::ledger;
use crate::relay::{Envelope, MAX_ATTEMPTS_PER_REQUEST, MAX_HOPS};
use crate::testing::*;

const KEY: &str = "gw-secret-key";
const PARTNER_KEY: &str = "partner-secret";

fn descriptor(name: &str, capabilities: Vec<Capability>) -> Descriptor {
    Descriptor {
        name: name.into(),
        version: "1.0.0".into(),
        api_version: "0.2.0".into(),
        capabilities,
        settings: Vec::new(),
        stores: Vec::new(),
        webhook_key: None,
    }
}

fn sms(id: &str) -> Event {
    Event::MessageReceived(ReceivedMessage {
        id: id.into(),
        sender: "BankInfo".into(),
        recipient: "79001234567".into(),
        text: "Hello World".into(),
        kind: MessageKind::Sms,
        received_at_ms: None,
        device: None,
        port: Some("1.01".into()),
        iccid: None,
        imsi: None,
        code: None,
    })
}

/// A gateway: checks its key in the path, turns `{"id": …}` into a received SMS, and
/// ticks.
fn gateway() -> ScriptedPlugin {
    let mut plugin = ScriptedPlugin::new(Descriptor {
        webhook_key: Some(WebhookKey {
            source: KeySource::Capture("key".into()),
            setting: "api_key".into(),
            rejection: HttpReply::json(401, &json!({ "message": "Bad Api Key" })),
        }),
        ..descriptor("gateway", vec![Capability::Webhook, Capability::Tick])
    });
    plugin.webhook = Box::new(|_, request| {
        let body: Value = serde_json::from_slice(&request.body).map_err(|e| e.to_string())?;
        let events = body["ids"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|id| sms(id.as_str().unwrap()))
            .collect();
        Ok(reply_ok(Effects {
            events,
            deliveries: Vec::new(),
        }))
    });
    plugin
}

fn gateway_rig(forward_to: &str) -> Rig {
    Rig::new(
        gateway(),
        &[
            ("simrelay_instance", "gateway"),
            ("simrelay_forward_to", forward_to),
            ("api_key", KEY),
        ],
    )
}

fn push(id: &str) -> Delivery {
    Delivery {
        idempotency_key: format!("push/{id}"),
        request: OutgoingRequest {
            method: "POST".into(),
            url: "http://127.0.0.1:9000/agent/api/sms".into(),
            headers: Vec::new(),
            body: format!("key={PARTNER_KEY}&smsId={id}").into_bytes(),
            timeout_ms: None,
        },
    }
}

/// A marketplace: pushes every SMS it hears of; SUCCESS is delivered, anything else is
/// retried after 10 s.
fn marketplace() -> ScriptedPlugin {
    let mut plugin = ScriptedPlugin::new(Descriptor {
        settings: vec![SettingSpec {
            name: "partner".into(),
            description: "partner key".into(),
            required: true,
            secret: true,
        }],
        ..descriptor("market", vec![Capability::Events])
    });
    plugin.event = Box::new(|_, event| {
        let Event::MessageReceived(message) = event else {
            return Ok(Effects::none());
        };
        Ok(Effects {
            events: Vec::new(),
            deliveries: vec![push(&message.id)],
        })
    });
    plugin.response = Box::new(|_, _, outcome| {
        let accepted = matches!(&outcome, DeliveryOutcome::Response(response)
            if String::from_utf8_lossy(&response.body).contains("SUCCESS"));
        Ok(ResponseOutcome {
            verdict: if accepted {
                Verdict::Delivered
            } else {
                Verdict::RetryAfterMs(10_000)
            },
            effects: Effects::none(),
        })
    });
    plugin
}

fn marketplace_rig() -> Rig {
    Rig::new(
        marketplace(),
        &[
            ("simrelay_instance", "market"),
            (
                "simrelay_retry",
                r#"{"schedule":"fixed","interval_secs":1,"jitter":0}"#,
            ),
            ("partner", PARTNER_KEY),
        ],
    )
}

fn envelope(id: &str, hops: u32) -> Envelope {
    Envelope {
        source: "gateway".into(),
        message_id: format!("msg-{id}"),
        hops,
        event: sms(id),
    }
}

fn webhook(key: &str, body: &str) -> crate::request::Incoming {
    from_outside(
        "POST",
        &format!("/api/{key}/webhook"),
        &[
            ("spin-path-match-key", key),
            ("content-type", "application/json"),
        ],
        body,
    )
}

fn tick() -> crate::request::Incoming {
    from_outside("POST", "/.simrelay/tick", &[], "")
}

fn record(rig: &Rig, id: &str) -> DeliveryRecord {
    rig.store.json(&ledger::delivery_key(&format!("push/{id}")))
}

fn header<'a>(reply: &'a HttpReply, name: &str) -> Option<&'a str> {
    reply
        .headers
        .iter()
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.as_str())
}

#[test]
fn a_webhook_is_answered_once_every_downstream_component_accepted_its_events() {
    let rig = gateway_rig("market audit");
    let reply = rig.handle(webhook(KEY, r#"{"ids": ["1", "2"]}"#));
    assert_eq!(
        (reply.status, body_json(&reply)),
        (200, json!({ "message": "Ok" }))
    );
    let message_id = header(&reply, MESSAGE_ID_HEADER).unwrap();
    let forwarded: Vec<(String, String, u32)> = rig
        .network
        .forwarded
        .borrow()
        .iter()
        .map(|(target, envelope)| {
            let Event::MessageReceived(message) = &envelope.event else {
                panic!("an SMS");
            };
            assert_eq!(
                (envelope.source.as_str(), envelope.message_id.as_str()),
                ("gateway", message_id)
            );
            (target.clone(), message.id.clone(), envelope.hops)
        })
        .collect();
    assert_eq!(
        forwarded,
        [
            ("market".into(), "1".into(), 2),
            ("audit".into(), "1".into(), 2),
            ("market".into(), "2".into(), 2),
            ("audit".into(), "2".into(), 2),
        ]
    );
    assert!(
        rig.store.keys_with(ledger::PREFIX).is_empty(),
        "nothing left to retry"
    );
}

#[test]
fn a_wrong_key_is_refused_before_the_plugin_is_called() {
    let rig = gateway_rig("market");
    let reply = rig.handle(webhook("guess", r#"{"ids": ["1"]}"#));
    assert_eq!(
        (reply.status, body_json(&reply)),
        (401, json!({ "message": "Bad Api Key" }))
    );
    assert!(rig.plugin.calls().is_empty());
    assert!(rig.network.forwarded.borrow().is_empty());
}

#[test]
fn an_event_a_component_does_not_accept_is_kept_for_the_tick_and_the_webhook_is_not_acknowledged() {
    let rig = gateway_rig("market");
    rig.network
        .downstream_status
        .borrow_mut()
        .insert("market".into(), 500);
    let reply = rig.handle(webhook(KEY, r#"{"ids": ["1"]}"#));
    assert_eq!(reply.status, 503, "{}", body_json(&reply));
    let kept = rig.store.keys_with(ledger::EVENT_PREFIX);
    assert_eq!(kept.len(), 1);
    let queued: QueuedEvent = rig.store.json(&kept[0]);
    assert_eq!((queued.target.as_str(), queued.attempts), ("market", 1));
    assert_eq!(queued.event, sms("1"));

    // Not due yet: the tick leaves it.
    let report = body_json(&rig.handle(tick()));
    assert_eq!(report["events_forwarded"], 0);
    // Due, still refused: kept with one more attempt.
    rig.env
        .advance_ms(queued.next_attempt_ms - rig.env.now.get());
    rig.handle(tick());
    let again: QueuedEvent = rig.store.json(&kept[0]);
    assert_eq!(again.attempts, 2);
    // Accepted at last: gone.
    rig.network.downstream_status.borrow_mut().clear();
    rig.env
        .advance_ms(again.next_attempt_ms - rig.env.now.get());
    let report = body_json(&rig.handle(tick()));
    assert_eq!(report["events_forwarded"], 1, "{report}");
    assert!(rig.store.keys_with(ledger::EVENT_PREFIX).is_empty());
    assert_eq!(rig.network.forwarded.borrow().len(), 3);
}

#[test]
fn a_refused_push_is_kept_and_retried_by_the_tick_until_accepted_then_never_again() {
    let rig = marketplace_rig();
    rig.network.answer(200, r#"{"status":"ERROR"}"#);
    let reply = rig.handle(chained_event(&envelope("1", 2)));
    assert_eq!(reply.status, 200, "{}", body_json(&reply));
    assert_eq!(body_json(&reply)["retrying"], 1);
    let pending = record(&rig, "1");
    let retry_at = rig.env.now.get() + 10_000;
    assert_eq!(
        pending.state,
        DeliveryState::Pending {
            next_attempt_ms: retry_at
        }
    );
    assert_eq!(
        pending.message_id, "msg-1",
        "the record keeps the message's id"
    );
    assert_eq!(rig.network.sent_keys(), 1);

    rig.env.advance_ms(9_999);
    rig.handle(tick());
    assert_eq!(rig.network.sent_keys(), 1, "not before the plugin's 10 s");

    rig.env.advance_ms(1);
    let report = body_json(&rig.handle(tick()));
    assert_eq!(
        (
            report["deliveries_attempted"].clone(),
            report["delivered"].clone()
        ),
        (json!(1), json!(1))
    );
    let delivered = record(&rig, "1");
    assert_eq!(delivered.attempts, 2);
    assert!(matches!(delivered.state, DeliveryState::Delivered { .. }));
    let sent = rig.network.sent.borrow();
    assert_eq!(sent[0], sent[1], "a retry is the same request");
    drop(sent);
    assert_eq!(
        rig.plugin.calls(),
        [
            "event message-received",
            "response push/1 #1",
            "response push/1 #2"
        ]
    );

    rig.env.advance_ms(3_600_000);
    rig.handle(tick());
    assert_eq!(rig.network.sent_keys(), 2, "never re-sent after SUCCESS");
}

#[test]
fn a_delivery_asked_for_again_is_made_once() {
    let rig = marketplace_rig();
    rig.handle(chained_event(&envelope("1", 2)));
    let again = rig.handle(chained_event(&envelope("1", 2)));
    assert_eq!(body_json(&again)["duplicates"], 1);
    assert_eq!(rig.network.sent_keys(), 1);
}

#[test]
fn a_host_spin_does_not_allow_makes_the_delivery_dead_with_the_reason() {
    let rig = marketplace_rig();
    rig.network.answers.borrow_mut().push_back(Sent::Refused(
        "http://127.0.0.1:9000 is not in allowed_outbound_hosts".into(),
    ));
    let reply = rig.handle(chained_event(&envelope("1", 2)));
    assert_eq!(body_json(&reply)["dead"], 1);
    let DeliveryState::Dead { reason, .. } = record(&rig, "1").state else {
        panic!("dead");
    };
    assert!(reason.contains("allowed_outbound_hosts"), "{reason}");
    assert!(
        !rig.plugin
            .calls()
            .iter()
            .any(|call| call.starts_with("response"))
    );
}

#[test]
fn deliveries_over_the_request_budget_wait_for_the_tick() {
    let mut plugin = marketplace();
    plugin.event = Box::new(|_, _| {
        Ok(Effects {
            events: Vec::new(),
            deliveries: (0..MAX_ATTEMPTS_PER_REQUEST + 2)
                .map(|n| push(&n.to_string()))
                .collect(),
        })
    });
    let rig = Rig::new(
        plugin,
        &[("simrelay_instance", "market"), ("partner", PARTNER_KEY)],
    );
    let report = body_json(&rig.handle(chained_event(&envelope("x", 2))));
    assert_eq!(report["deliveries_attempted"], MAX_ATTEMPTS_PER_REQUEST);
    assert_eq!(report["deferred"], 2);
    let report = body_json(&rig.handle(tick()));
    assert_eq!(
        (
            report["delivered"].clone(),
            report["deliveries_attempted"].clone()
        ),
        (json!(2), json!(2))
    );
    assert_eq!(
        rig.network.sent_keys(),
        MAX_ATTEMPTS_PER_REQUEST as usize + 2
    );
}

#[test]
fn a_delivery_another_tick_took_is_left_to_it() {
    let rig = marketplace_rig();
    rig.network.answer(502, "bad gateway");
    rig.handle(chained_event(&envelope("1", 2)));
    rig.env.advance_ms(10_000);
    rig.store.changed_before_replace.set(true);
    let report = body_json(&rig.handle(tick()));
    assert_eq!(report["deliveries_attempted"], 0, "{report}");
    assert_eq!(rig.network.sent_keys(), 1);
}

#[test]
fn a_delivery_that_cannot_be_stored_is_not_acknowledged_and_can_be_asked_for_again() {
    let rig = marketplace_rig();
    rig.store
        .failing_prefix
        .replace(Some(ledger::DELIVERY_PREFIX.into()));
    let reply = rig.handle(chained_event(&envelope("1", 2)));
    assert_eq!(reply.status, 503);
    assert_eq!(
        rig.network.sent_keys(),
        0,
        "nothing is sent that is not stored"
    );
    rig.store.failing_prefix.replace(None);
    let reply = rig.handle(chained_event(&envelope("1", 2)));
    assert_eq!(reply.status, 200);
    assert_eq!(
        body_json(&reply)["delivered"],
        1,
        "the retry was not taken for a duplicate"
    );
}

#[test]
fn events_come_only_by_chaining_and_a_forwarding_cycle_ends() {
    let rig = marketplace_rig();
    let mut outside = chained_event(&envelope("1", 2));
    outside
        .headers
        .push(("spin-client-addr".into(), "203.0.113.9:5000".into()));
    assert_eq!(rig.handle(outside).status, 403);

    let looping = rig.handle(chained_event(&envelope("1", MAX_HOPS + 1)));
    assert_eq!(looping.status, 508);
    assert!(rig.plugin.calls().is_empty());

    // The sender of an event that looped drops it rather than keeping it for ever.
    let sender = gateway_rig("market");
    sender
        .network
        .downstream_status
        .borrow_mut()
        .insert("market".into(), 508);
    let reply = sender.handle(webhook(KEY, r#"{"ids": ["1"]}"#));
    assert_eq!(reply.status, 200);
    assert!(sender.store.keys_with(ledger::EVENT_PREFIX).is_empty());
    assert!(sender.env.logs().contains("cycle"), "{}", sender.env.logs());
}

#[test]
fn a_failing_plugin_gets_a_retry_and_its_secrets_stay_out_of_answers_and_logs() {
    let mut plugin = gateway();
    plugin.webhook = Box::new(|ctx, _| {
        Err(format!(
            "cannot parse; settings were api_key={}",
            ctx.settings[0].1
        ))
    });
    let rig = Rig::new(
        plugin,
        &[("simrelay_instance", "gateway"), ("api_key", KEY)],
    );
    let reply = rig.handle(webhook(KEY, "{"));
    assert_eq!(reply.status, 500);
    let text = String::from_utf8_lossy(&reply.body);
    assert!(
        text.contains("send it again") && !text.contains(KEY),
        "{text}"
    );
    assert!(text.contains("[redacted]"), "{text}");
    assert!(!rig.env.logs().contains(KEY), "{}", rig.env.logs());
}

#[test]
fn pushes_carrying_a_partner_key_are_logged_without_it() {
    let rig = marketplace_rig();
    rig.network.answer(500, &format!("echo key={PARTNER_KEY}"));
    rig.handle(chained_event(&envelope("1", 2)));
    let logs = rig.env.logs();
    assert!(
        logs.contains("push/1") && !logs.contains(PARTNER_KEY),
        "{logs}"
    );
    let stored = record(&rig, "1");
    assert!(!stored.last_result.unwrap().contains(PARTNER_KEY));
}

#[test]
fn the_plugin_ticks_once_per_interval_and_its_deliveries_are_made() {
    let mut plugin = gateway();
    plugin.tick = Box::new(|_| {
        Ok(Effects {
            events: Vec::new(),
            deliveries: vec![push("poll")],
        })
    });
    plugin.response = Box::new(|_, _, _| {
        Ok(ResponseOutcome {
            verdict: Verdict::Delivered,
            effects: Effects::none(),
        })
    });
    let rig = Rig::new(
        plugin,
        &[
            ("simrelay_instance", "gateway"),
            ("simrelay_tick_interval_secs", "5"),
            ("api_key", KEY),
        ],
    );
    assert_eq!(body_json(&rig.handle(tick()))["delivered"], 1);
    rig.env.advance_ms(4_999);
    rig.handle(tick());
    rig.env.advance_ms(1);
    rig.handle(from_outside("POST", "/.simrelay/tick/gateway", &[], ""));
    let ticks = rig
        .plugin
        .calls()
        .iter()
        .filter(|call| *call == "tick")
        .count();
    assert_eq!(ticks, 2);
}

#[test]
fn a_tick_token_is_required_when_set() {
    let rig = Rig::new(
        gateway(),
        &[
            ("simrelay_instance", "gateway"),
            ("simrelay_tick_token", "t1ck-t0ken"),
            ("api_key", KEY),
        ],
    );
    assert_eq!(rig.handle(tick()).status, 401);
    let authorized = from_outside(
        "POST",
        "/.simrelay/tick",
        &[("authorization", "Bearer t1ck-t0ken")],
        "",
    );
    assert_eq!(rig.handle(authorized).status, 200);
}

#[test]
fn a_misconfigured_instance_says_what_is_missing() {
    let rig = Rig::new(gateway(), &[("api_key", KEY)]);
    let reply = rig.handle(webhook(KEY, "{}"));
    assert_eq!(reply.status, 500);
    assert!(
        body_json(&reply)["error"]
            .as_str()
            .unwrap()
            .contains("simrelay_instance")
    );
    assert!(!String::from_utf8_lossy(&reply.body).contains(KEY));

    let rig = Rig::new(marketplace(), &[("simrelay_instance", "market")]);
    let reply = rig.handle(chained_event(&envelope("1", 2)));
    assert_eq!(reply.status, 500);
    assert!(
        body_json(&reply)["error"]
            .as_str()
            .unwrap()
            .contains("`partner`")
    );
    assert!(rig.plugin.calls().is_empty());
}
