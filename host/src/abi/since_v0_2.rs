//! Interface `simrelay:adapter@0.2.0`, the newest: the host's own types mirror it, so every
//! conversion is field for field.

use wasmtime::Store;

use super::convert::{Conv, records, variants};
use super::{Input, Output};
use crate::model;
use crate::runtime::CallState;

wasmtime::component::bindgen!({
    world: "plugin",
    path: "../wit",
    with: {
        "wasi:keyvalue": crate::kv::bindings::wasi::keyvalue,
    },
});

pub const VERSION: &str = "0.2.0";

use self::simrelay::adapter::types as wit;

records! { both:
    wit::CallContext => CallContext { instance, settings, store, shared_stores, message_id, now_ms }
    wit::HttpRequest => HttpRequest { method, path, query, params, headers, body }
    wit::HttpReply => HttpReply { status, headers, body }
    wit::ReceivedMessage => ReceivedMessage {
        id, sender, recipient, text, kind, received_at_ms, device, port, iccid, imsi, code
    }
    wit::SimStatus => SimStatus {
        device, port, number, iccid, imsi, state, detail, active, operator, signal, balance,
        slot_active
    }
    wit::SendRequest => SendRequest { id, to, text, device, sim, send_at_ms, urgent }
    wit::DeliveryStatus => DeliveryStatus { id, state, detail, recipient }
    wit::DeliveryHealth => DeliveryHealth {
        instance, destination, consecutive_failures, pending, last_error
    }
    wit::OutgoingRequest => OutgoingRequest { method, url, headers, body, timeout_ms }
    wit::Delivery => Delivery { idempotency_key, request }
    wit::DeliveryRef => DeliveryRef { idempotency_key, attempt }
    wit::HttpResponse => HttpResponse { status, headers, body }
    wit::Effects => Effects { events, deliveries }
    wit::WebhookOutcome => WebhookOutcome { reply, effects }
    wit::ResponseOutcome => ResponseOutcome { verdict, effects }
    wit::SettingSpec => SettingSpec { name, description, required, secret }
    wit::StoreSpec => StoreSpec { name, description, required }
    wit::WebhookKey => WebhookKey { source, setting, rejection }
    wit::Descriptor => Descriptor {
        name, version, api_version, capabilities, settings, stores, webhook_key
    }
}

variants! { both:
    wit::MessageKind => MessageKind { Sms, FlashCall, Voice }
    wit::SimState => SimState {
        NoSim, Idle, Registering, Registered, CallConnected, NoBalance, RegistrationFailed,
        LockedByDevice, LockedByOperator, SimError, CardDetected, UserLocked, AccessingNetwork,
        ModuleTimeout, Unknown
    }
    wit::DeliveryState => DeliveryState { Pending, Sent, Delivered, Failed }
    wit::Event => Event {
        MessageReceived(x), SimStatusChanged(x), SendSms(x), DeliveryStatusChanged(x),
        DeliveryHealth(x)
    }
    wit::DeliveryOutcome => DeliveryOutcome { Response(x), TransportError(x) }
    wit::Verdict => Verdict { Delivered, Retry, RetryAfterMs(x), GiveUp(x) }
    wit::Capability => Capability { Webhook, Events, Tick, Send }
    wit::KeySource => KeySource { Capture(x), Header(x), Query(x) }
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
        Input::Event(event) => adapter
            .call_on_event(store, &ctx, &event.clone().conv())?
            .map(|effects| Output::Effects(effects.conv())),
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
