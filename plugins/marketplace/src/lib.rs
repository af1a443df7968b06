//! The partner protocol of SMS-activation marketplaces (SmsBower, Onlinesim and the rest of
//! the SMSHub family), shared by the marketplace plugins.
//!
//! A marketplace asks which numbers we have (GET_SERVICES), takes one for a service
//! (GET_NUMBER), and says how the activation ended (FINISH_ACTIVATION); we push it every SMS
//! that arrives on a number while its activation is open (PUSH_SMS). Everything but the wire
//! details is the same for every marketplace and lives here; a plugin is a [`Dialect`] (how
//! its marketplace spells numbers, pushes and answers) wrapped in [`Marketplace`].
//!
//! # State
//!
//! Several marketplaces sell one SIM farm, so the SIM inventory and the number leases live
//! in a store the configuration grants to all of them under the name [`INVENTORY`]:
//!
//! | shared key                      | holds                                                   |
//! |---------------------------------|---------------------------------------------------------|
//! | `sim/<device>/<port>/<iccid>`   | what the gateway last said about the card               |
//! | `use/iccid/<iccid>`             | the card's lease and its number's history per service   |
//! | `use/port/<device>/<port>`      | the same, for gateways that report no ICCID             |
//!
//! Leases are taken with compare-and-swap on the `use/` record, so calls that really run at
//! once (Spin) never lease one card twice. Everything else is the instance's own:
//! `activation/<id>`, `open/<id>`, `route/…`, `sms/<message id>`, `counter/…`,
//! `reconcile/statistic-at`.

mod activation;
pub mod answers;
mod inventory;
mod networks;
mod number;
mod protocol;
mod push;
mod reconcile;
mod services;
pub mod settings;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
mod usage;

use std::marker::PhantomData;

use serde_json::json;
use simrelay_sdk::{
    Adapter, CallContext, Capability, DeliveryOutcome, DeliveryRef, Descriptor, Effects, Event,
    HttpRequest, KeyValue, OutgoingRequest, ResponseOutcome, SettingSpec, StoreSpec, Stores,
    Verdict, WebhookOutcome,
};

pub use activation::{Activation, EndedBy};
pub use inventory::{ANY_OPERATOR, SimId};
pub use push::{Push, PushAnswer};
pub use settings::Settings;
pub use usage::Ending;

/// The name under which a marketplace plugin asks for the shared SIM inventory.
pub const INVENTORY: &str = "inventory";

/// Old push records and old activations forgotten per tick at most, of each kind: with the
/// default minute between ticks, 5,000 a minute, far more than one farm receives.
const FORGET_LIMIT: usize = 5_000;

/// What sets one marketplace's protocol apart from another's.
pub trait Dialect {
    /// The plugin's name, e.g. `smsbower`.
    const NAME: &'static str;
    /// The plugin's version.
    const VERSION: &'static str;
    /// GET_NUMBER answers `number` and `activationId` as JSON numbers rather than strings.
    const NUMERIC_IDS: bool;
    /// GET_SERVICES adds an `any` operator to each country with the country's totals.
    const ANY_OPERATOR_TOTAL: bool;
    /// GET_NUMBER says with `call` and `voice` (1 or 0) whether the number takes flash
    /// calls and voice calls.
    const CALL_AND_VOICE: bool;
    /// The marketplace answers status queries: the plugin ticks to reconcile.
    const RECONCILES: bool = false;

    /// Settings besides the ones every marketplace takes.
    fn settings() -> Vec<SettingSpec>;

    /// The PUSH_SMS request for one message.
    fn push_request(ctx: &CallContext, push: &Push) -> Result<OutgoingRequest, String>;

    /// What an answer to PUSH_SMS means.
    fn push_answer(outcome: &DeliveryOutcome) -> PushAnswer;

    /// The query for an activation's state on the marketplace, if it has one.
    fn status_query(
        ctx: &CallContext,
        settings: &Settings,
        activation: u64,
    ) -> Result<Option<OutgoingRequest>, String> {
        let _ = (ctx, settings, activation);
        Ok(None)
    }

    /// The query for the marketplace's statistics of our SIM cards, if it has one.
    fn statistic_query(
        ctx: &CallContext,
        settings: &Settings,
    ) -> Result<Option<OutgoingRequest>, String> {
        let _ = (ctx, settings);
        Ok(None)
    }
}

/// A marketplace plugin: the shared protocol in a dialect.
///
/// Its functions take the stores explicitly (`own`, and `shared` for the inventory), so tests
/// can hand them stores that misbehave as concurrent writers would; the [`Adapter`] impl
/// opens the stores the host grants and calls them.
pub struct Marketplace<D>(PhantomData<D>);

impl<D: Dialect> Marketplace<D> {
    pub fn descriptor() -> Descriptor {
        let mut settings = settings::specs();
        settings.extend(D::settings());
        if D::RECONCILES {
            settings.extend(reconcile::specs());
        }
        Descriptor {
            // Ticks forget old pushes and activations, and reconcile where the dialect can.
            capabilities: vec![Capability::Webhook, Capability::Events, Capability::Tick],
            settings,
            stores: vec![StoreSpec::required(
                INVENTORY,
                "SIM inventory and number leases; grant the same label to every marketplace instance selling the same SIM cards",
            )],
            ..Descriptor::new(D::NAME, D::VERSION)
        }
    }

    /// A marketplace request: GET_SERVICES, GET_NUMBER or FINISH_ACTIVATION.
    pub fn webhook(
        ctx: &CallContext,
        own: &dyn KeyValue,
        shared: &dyn KeyValue,
        request: &HttpRequest,
    ) -> Result<WebhookOutcome, String> {
        let settings = Settings::from_context(ctx)?;
        let reply = match protocol::parse(&request.body, &settings.webhook_key) {
            Err(refusal) => refusal.reply(),
            Ok(protocol::Request::GetServices) => {
                let counts = services::counts(shared, &settings)?;
                let counts = if D::ANY_OPERATOR_TOTAL {
                    services::with_any_totals(counts)
                } else {
                    counts
                };
                protocol::answer(services::answer(&counts))
            }
            Ok(protocol::Request::GetNumber(wanted)) => {
                match number::get_number(
                    &ctx.instance,
                    ctx.now_ms,
                    &settings,
                    own,
                    shared,
                    &wanted,
                )? {
                    None => protocol::no_numbers(),
                    Some((activation, sale)) => {
                        let mut answer = json!({
                            "number": protocol::digits_value(&activation.number, D::NUMERIC_IDS),
                            "activationId": protocol::digits_value(&activation.id.to_string(), D::NUMERIC_IDS),
                            "status": "SUCCESS",
                        });
                        if D::CALL_AND_VOICE {
                            answer["call"] = u8::from(sale.call).into();
                            answer["voice"] = u8::from(sale.voice).into();
                        }
                        protocol::answer(answer)
                    }
                }
            }
            Ok(protocol::Request::FinishActivation { activation, ending }) => {
                let closing = activation::close(
                    own,
                    shared,
                    &ctx.instance,
                    activation,
                    ending,
                    EndedBy::FinishActivation,
                    ctx.now_ms,
                )?;
                match closing {
                    activation::Closing::Ended(_) | activation::Closing::AlreadyEnded(_) => {
                        protocol::answer(json!({ "status": "SUCCESS" }))
                    }
                    activation::Closing::Unknown => {
                        protocol::Refusal::unknown_activation(activation).reply()
                    }
                }
            }
        };
        Ok(WebhookOutcome {
            reply,
            effects: Effects::none(),
        })
    }

    /// SIM statuses build the inventory; received messages are pushed when an activation of
    /// this instance is open on their number.
    pub fn event(
        ctx: &CallContext,
        own: &dyn KeyValue,
        shared: &dyn KeyValue,
        event: &Event,
    ) -> Result<Effects, String> {
        match event {
            Event::SimStatusChanged(status) => {
                inventory::record_status(shared, status, ctx.now_ms)?;
                Ok(Effects::none())
            }
            Event::MessageReceived(message) => {
                let settings = Settings::from_context(ctx)?;
                push::on_message::<D>(ctx, &settings, own, message)
            }
            _ => Ok(Effects::none()),
        }
    }

    /// A push or a reconciliation query was answered.
    pub fn response(
        ctx: &CallContext,
        own: &dyn KeyValue,
        shared: &dyn KeyValue,
        delivery: &DeliveryRef,
        outcome: &DeliveryOutcome,
    ) -> Result<ResponseOutcome, String> {
        let settings = Settings::from_context(ctx)?;
        let key = delivery.idempotency_key.as_str();
        let verdict = if let Some(message_id) = key.strip_prefix(push::PUSH_PREFIX) {
            push::on_response::<D>(ctx, &settings, own, message_id, outcome)?
        } else if let Some(rest) = key.strip_prefix(reconcile::STATUS_PREFIX) {
            match rest.split('/').next().and_then(|id| id.parse().ok()) {
                Some(id) => reconcile::on_status_answer(ctx, &settings, own, shared, id, outcome)?,
                None => Verdict::GiveUp(format!("no activation id in delivery `{key}`")),
            }
        } else if key.starts_with(reconcile::STATISTIC_PREFIX) {
            reconcile::on_statistic_answer(&settings, shared, outcome)?
        } else {
            Verdict::GiveUp(format!("{} asked for no delivery `{key}`", D::NAME))
        };
        Ok(ResponseOutcome {
            verdict,
            effects: Effects::none(),
        })
    }

    /// Reconciliation queries that are due.
    pub fn tick(ctx: &CallContext, own: &dyn KeyValue) -> Result<Effects, String> {
        let settings = Settings::from_context(ctx)?;
        push::forget(own, ctx.now_ms, settings.forget_after_ms, FORGET_LIMIT)?;
        activation::forget_ended(own, ctx.now_ms, settings.forget_after_ms, FORGET_LIMIT)?;
        if !D::RECONCILES {
            return Ok(Effects::none());
        }
        reconcile::on_tick::<D>(ctx, &settings, own)
    }
}

impl<D: Dialect> Adapter for Marketplace<D> {
    fn describe() -> Descriptor {
        Self::descriptor()
    }

    fn on_webhook(
        ctx: &CallContext,
        kv: &Stores,
        request: HttpRequest,
    ) -> Result<WebhookOutcome, String> {
        Self::webhook(ctx, &**kv, &*kv.shared(INVENTORY)?, &request)
    }

    fn on_event(ctx: &CallContext, kv: &Stores, event: Event) -> Result<Effects, String> {
        Self::event(ctx, &**kv, &*kv.shared(INVENTORY)?, &event)
    }

    fn on_response(
        ctx: &CallContext,
        kv: &Stores,
        delivery: DeliveryRef,
        outcome: DeliveryOutcome,
    ) -> Result<ResponseOutcome, String> {
        Self::response(ctx, &**kv, &*kv.shared(INVENTORY)?, &delivery, &outcome)
    }

    fn on_tick(ctx: &CallContext, kv: &Stores) -> Result<Effects, String> {
        Self::tick(ctx, &**kv)
    }
}

#[cfg(test)]
mod tests;
