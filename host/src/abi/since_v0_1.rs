//! Interface `simrelay:adapter@0.1.0`, frozen in `wit/v0.1/`. Plugins built for it keep
//! working: what 0.2.0 added takes its default coming in, and a 0.1 plugin is never handed
//! what it cannot express (a `delivery-health` event).

use wasmtime::Store;

use super::convert::{Conv, records, variants};
use super::{Input, Output};
use crate::model;
use crate::runtime::CallState;

wasmtime::component::bindgen!({
    world: "plugin",
    path: "../wit/v0.1",
    with: {
        "wasi:keyvalue": crate::kv::bindings::wasi::keyvalue,
    },
});

pub const VERSION: &str = "0.1.0";

use self::simrelay::adapter::types as wit;

records! { both:
    wit::CallContext => CallContext { instance, settings, store, message_id, now_ms }
        + { shared_stores }
    wit::HttpRequest => HttpRequest { method, path, query, params, headers, body }
    wit::HttpReply => HttpReply { status, headers, body }
    wit::ReceivedMessage => ReceivedMessage {
        id, sender, recipient, text, kind, received_at_ms, device, port, iccid, imsi
    } + { code }
    wit::SimStatus => SimStatus {
        device, port, number, iccid, imsi, state, detail, active, operator, signal, balance
    } + { slot_active }
    wit::SendRequest => SendRequest { id, to, text, device, sim } + { send_at_ms, urgent }
    wit::DeliveryStatus => DeliveryStatus { id, state, detail } + { recipient }
    wit::OutgoingRequest => OutgoingRequest { method, url, headers, body, timeout_ms }
    wit::Delivery => Delivery { idempotency_key, request }
    wit::DeliveryRef => DeliveryRef { idempotency_key, attempt }
    wit::HttpResponse => HttpResponse { status, headers, body }
    wit::SettingSpec => SettingSpec { name, description, required, secret }
}

records! { into_host:
    wit::Effects => Effects { events, deliveries }
    wit::WebhookOutcome => WebhookOutcome { reply, effects }
    wit::ResponseOutcome => ResponseOutcome { verdict, effects }
    wit::Descriptor => Descriptor { name, version, api_version, capabilities, settings }
        + { stores, webhook_key }
}

variants! { both:
    wit::MessageKind => MessageKind { Sms, FlashCall, Voice }
    wit::SimState => SimState {
        NoSim, Idle, Registering, Registered, CallConnected, NoBalance, RegistrationFailed,
        LockedByDevice, LockedByOperator, SimError, CardDetected, UserLocked, AccessingNetwork,
        ModuleTimeout, Unknown
    }
    wit::DeliveryState => DeliveryState { Pending, Sent, Delivered, Failed }
    wit::DeliveryOutcome => DeliveryOutcome { Response(x), TransportError(x) }
}

variants! { into_host:
    wit::Event => Event { MessageReceived(x), SimStatusChanged(x), SendSms(x), DeliveryStatusChanged(x) }
    wit::Verdict => Verdict { Delivered, RetryAfterMs(x), GiveUp(x) }
    wit::Capability => Capability { Webhook, Events, Tick }
}

/// The event as 0.1 knows it; `None` for events added later.
fn event(event: &model::Event) -> Option<wit::Event> {
    Some(match event.clone() {
        model::Event::MessageReceived(x) => wit::Event::MessageReceived(x.conv()),
        model::Event::SimStatusChanged(x) => wit::Event::SimStatusChanged(x.conv()),
        model::Event::SendSms(x) => wit::Event::SendSms(x.conv()),
        model::Event::DeliveryStatusChanged(x) => wit::Event::DeliveryStatusChanged(x.conv()),
        model::Event::DeliveryHealth(_) => return None,
    })
}

pub fn describe(
    plugin: &Plugin,
    store: &mut Store<CallState>,
) -> wasmtime::Result<model::Descriptor> {
    Ok(plugin
        .simrelay_adapter_adapter()
        .call_describe(store)?
        .conv())
}

pub fn call(
    plugin: &Plugin,
    store: &mut Store<CallState>,
    ctx: &model::CallContext,
    input: Input<'_>,
) -> wasmtime::Result<Result<Output, String>> {
    let adapter = plugin.simrelay_adapter_adapter();
    let ctx: wit::CallContext = ctx.clone().conv();
    Ok(match input {
        Input::Webhook(request) => adapter
            .call_on_webhook(store, &ctx, &request.clone().conv())?
            .map(|outcome| Output::Webhook(outcome.conv())),
        Input::Event(host_event) => match event(host_event) {
            Some(event) => adapter
                .call_on_event(store, &ctx, &event)?
                .map(|effects| Output::Effects(effects.conv())),
            None => Ok(Output::Effects(model::Effects::none())),
        },
        Input::Response(delivery, outcome) => adapter
            .call_on_response(
                store,
                &ctx,
                &delivery.clone().conv(),
                &outcome.clone().conv(),
            )?
            .map(|outcome| Output::Response(outcome.conv())),
        Input::Tick => adapter
            .call_on_tick(store, &ctx)?
            .map(|effects| Output::Effects(effects.conv())),
    })
}
