//! One request to the component, from its variables to its answer.
//!
//! - A **webhook** is checked against the plugin's webhook key, handed to `on-webhook`, and
//!   answered with the plugin's reply only once its events were accepted by every
//!   downstream component and its deliveries were made or stored for a retry. Otherwise
//!   the sender gets a 503 and sends it again; what was produced is kept, and a re-sent
//!   webhook never makes a second delivery.
//! - An **event** from an upstream component goes to `on-event`; the answer is 2xx once its
//!   effects were settled the same way, so the upstream component can forget it.
//! - A **tick** runs the plugin's `on-tick` (at most once per `simrelay_tick_interval_secs`)
//!   and retries the stored events and deliveries that are due.

use serde_json::json;
use simrelay_core::auth::{RequestHead, key_matches};
use simrelay_core::model::{Capability, Descriptor, HttpReply};

use crate::config::InstanceConfig;
use crate::io::{Environment, Network, Plugin, Store};
use crate::ledger;
use crate::relay::{Envelope, LOOP_DETECTED, MAX_HOPS, Relay, Report};
use crate::request::{Incoming, Purpose};

/// Returned with every answer about a message, as the host does.
pub const MESSAGE_ID_HEADER: &str = "x-simrelay-message-id";

/// What the component reaches the world through.
pub struct Io<'a> {
    pub store: &'a dyn Store,
    pub plugin: &'a dyn Plugin,
    pub network: &'a dyn Network,
    pub env: &'a dyn Environment,
}

/// Answers one request.
pub fn handle(io: &Io<'_>, incoming: Incoming) -> HttpReply {
    let config = match io.env.variables().and_then(InstanceConfig::from_variables) {
        Ok(config) => config,
        Err(error) => {
            io.env.log(&format!("configuration error: {error}"));
            return json_error(500, &format!("the instance is misconfigured: {error}"));
        }
    };
    let descriptor = io.plugin.describe();
    if let Some(problem) = config.unmet_needs(&descriptor) {
        io.env.log(&problem);
        return json_error(500, &problem);
    }
    let redactor = config.redactor(&descriptor);
    let relay = Relay {
        config: &config,
        redactor: &redactor,
        store: io.store,
        plugin: io.plugin,
        network: io.network,
        env: io.env,
    };
    match incoming.purpose(&config.instance) {
        Purpose::Refused(status, reason) => json_error(status, &reason),
        Purpose::Webhook => webhook(&relay, &descriptor, incoming),
        Purpose::Event => event(&relay, &incoming.body),
        Purpose::Tick if !incoming.tick_authorized(config.tick_token.as_deref()) => json_error(
            401,
            "the tick route wants `Authorization: Bearer <simrelay_tick_token>`",
        ),
        Purpose::Tick => tick(&relay, &descriptor),
    }
}

fn webhook(relay: &Relay<'_>, descriptor: &Descriptor, incoming: Incoming) -> HttpReply {
    let request = incoming.into_webhook();
    if let Some(key) = &descriptor.webhook_key {
        let head = RequestHead {
            params: &request.params,
            headers: &request.headers,
            query: &request.query,
        };
        if !key_matches(key, &relay.config.settings, &head) {
            return key.rejection.clone();
        }
    }
    let message_id = relay.env.new_message_id();
    let ctx = relay.config.context(&message_id, relay.env.now_ms());
    let outcome = match relay.plugin.on_webhook(&ctx, request) {
        Ok(outcome) => outcome,
        Err(error) => {
            let error = relay.redactor.redact(&error);
            relay.log(&message_id, &format!("webhook failed: {error}"));
            return with_message_id(
                json_error(
                    500,
                    &format!("webhook not accepted, send it again: {error}"),
                ),
                &message_id,
            );
        }
    };
    let mut report = Report::default();
    relay.settle(&message_id, 1, outcome.effects, &mut report);
    let reply = if !report.errors.is_empty() {
        json_error(
            503,
            &format!(
                "webhook not accepted, storage unavailable; send it again: {}",
                report.errors.join("; ")
            ),
        )
    } else if report.events_queued > 0 {
        json_error(
            503,
            &format!(
                "webhook not accepted: {} event(s) did not reach their instances yet; they are \
                 kept and retried on tick; send it again",
                report.events_queued
            ),
        )
    } else {
        outcome.reply
    };
    relay.log(
        &message_id,
        &format!("webhook answered {}: {}", reply.status, describe(&report)),
    );
    with_message_id(reply, &message_id)
}

fn event(relay: &Relay<'_>, body: &[u8]) -> HttpReply {
    let envelope: Envelope = match serde_json::from_slice(body) {
        Ok(envelope) => envelope,
        Err(error) => return json_error(400, &format!("not an event: {error}")),
    };
    let message_id = envelope.message_id.clone();
    if envelope.hops > MAX_HOPS {
        relay.log(&message_id, "event refused: too many hops");
        return json_error(
            LOOP_DETECTED,
            &format!("the event went through more than {MAX_HOPS} components"),
        );
    }
    let ctx = relay.config.context(&message_id, relay.env.now_ms());
    let kind = envelope.event.kind();
    let effects = match relay.plugin.on_event(&ctx, envelope.event) {
        Ok(effects) => effects,
        Err(error) => {
            let error = relay.redactor.redact(&error);
            relay.log(
                &message_id,
                &format!("{kind} event from {} failed: {error}", envelope.source),
            );
            return json_error(500, &format!("event not handled, send it again: {error}"));
        }
    };
    let mut report = Report::default();
    relay.settle(&message_id, envelope.hops, effects, &mut report);
    relay.log(
        &message_id,
        &format!(
            "{kind} event from {}: {}",
            envelope.source,
            describe(&report)
        ),
    );
    if report.errors.is_empty() {
        HttpReply::json(200, &json!(report))
    } else {
        HttpReply::json(503, &json!(report))
    }
}

fn tick(relay: &Relay<'_>, descriptor: &Descriptor) -> HttpReply {
    let message_id = relay.env.new_message_id();
    let mut report = Report::default();
    if descriptor.capabilities.contains(&Capability::Tick) {
        plugin_tick(relay, &message_id, &mut report);
    }
    relay.retry_due(&message_id, &mut report);
    relay.log(&message_id, &format!("tick: {}", describe(&report)));
    let status = if report.errors.is_empty() { 200 } else { 500 };
    with_message_id(HttpReply::json(status, &json!(report)), &message_id)
}

/// The plugin's `on-tick`, when its interval has passed since the last one.
fn plugin_tick(relay: &Relay<'_>, message_id: &str, report: &mut Report) {
    let now = relay.env.now_ms();
    let last = match relay.store.get(ledger::LAST_TICK_KEY) {
        Ok(last) => last,
        Err(error) => {
            report
                .errors
                .push(format!("cannot read the last tick: {error}"));
            return;
        }
    };
    if !ledger::plugin_tick_due(last.as_deref(), now, relay.config.tick_interval_secs) {
        return;
    }
    if let Err(error) = relay
        .store
        .set(ledger::LAST_TICK_KEY, now.to_string().as_bytes())
    {
        report
            .errors
            .push(format!("cannot record the tick: {error}"));
        return;
    }
    match relay.plugin.on_tick(&relay.config.context(message_id, now)) {
        Ok(effects) => relay.settle(message_id, 1, effects, report),
        Err(error) => {
            let error = relay.redactor.redact(&error);
            relay.log(message_id, &format!("on-tick failed: {error}"));
            report.errors.push(format!("on-tick failed: {error}"));
        }
    }
}

fn describe(report: &Report) -> String {
    format!(
        "events forwarded {}, queued {}, dropped {}; deliveries attempted {}, delivered {}, \
         retrying {}, dead {}, duplicate {}, deferred {}; errors {}",
        report.events_forwarded,
        report.events_queued,
        report.events_dropped,
        report.deliveries_attempted,
        report.delivered,
        report.retrying,
        report.dead,
        report.duplicates,
        report.deferred,
        report.errors.len()
    )
}

fn json_error(status: u16, message: &str) -> HttpReply {
    HttpReply::json(status, &json!({ "error": message }))
}

fn with_message_id(mut reply: HttpReply, message_id: &str) -> HttpReply {
    reply
        .headers
        .push((MESSAGE_ID_HEADER.into(), message_id.to_string()));
    reply
}

#[cfg(test)]
mod tests;
