//! Guest SDK for simrelay adapter plugins.
//!
//! An adapter implements [`Adapter`] as plain functions of its inputs and its [`Stores`],
//! and exports itself with [`export_adapter!`]. Compiled for `wasm32-wasip2` the stores are
//! the host's `wasi:keyvalue` buckets; in native unit tests they are [`MemoryStore`]s, so
//! adapter logic is tested with plain `cargo test` and no wasm runtime.
//!
//! What several adapters need lives here rather than in copies: [`encoding`] (lenient base64,
//! form and percent encoding), [`time`] (the date formats providers send), [`dedupe`]
//! (mark-once de-duplication and any record's expiry by time, fingerprints), [`lenient`]
//! (loosely typed JSON fields), [`http`] (headers, request builders, `Retry-After` and `X-RateLimit-*`),
//! [`secrets_match`], and, with the `testing` feature, property-test strategies in `testing`.
//!
//! ```
//! use simrelay_sdk::{Adapter, CallContext, Capability, Descriptor, Effects, Event, SettingSpec, Stores};
//!
//! /// Counts the messages that reach it.
//! pub struct Counter;
//!
//! impl Adapter for Counter {
//!     fn describe() -> Descriptor {
//!         Descriptor {
//!             capabilities: vec![Capability::Events],
//!             settings: vec![SettingSpec::optional("label", "what the count is of")],
//!             ..Descriptor::new("counter", env!("CARGO_PKG_VERSION"))
//!         }
//!     }
//!
//!     fn on_event(_: &CallContext, kv: &Stores, event: Event) -> Result<Effects, String> {
//!         if let Event::MessageReceived(_) = event {
//!             // The host commits this write together with the call's outcome.
//!             kv.increment("messages", 1)?;
//!         }
//!         Ok(Effects::none())
//!     }
//! }
//!
//! simrelay_sdk::export_adapter!(Counter);
//!
//! // Adapter logic is plain Rust: test it natively with an in-memory store.
//! let kv = Stores::memory();
//! let ctx = CallContext::for_tests(&[]);
//! let sms = simrelay_sdk::ReceivedMessage {
//!     id: "m1".into(), sender: "Bank".into(), recipient: "+100".into(), text: "hi".into(),
//!     kind: simrelay_sdk::MessageKind::Sms, received_at_ms: None,
//!     device: None, port: None, iccid: None, imsi: None, code: None,
//! };
//! Counter::on_event(&ctx, &kv, Event::MessageReceived(sms)).unwrap();
//! assert_eq!(kv.increment("messages", 0).unwrap(), 1);
//! ```

pub mod dedupe;
pub mod encoding;
pub mod http;
pub mod lenient;
pub mod phone;
mod store;
#[cfg(feature = "testing")]
pub mod testing;
pub mod time;

pub use dedupe::{ExpiryIndex, Fingerprint, MarkOnce};
/// The SDK's JSON library, so adapters and the SDK's [`lenient`] readers agree on one version.
pub use serde_json;
pub use store::{KeyValue, MemoryStore, Stores, WasiStore};

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "plugin",
        path: "../../wit",
        pub_export_macro: true,
        export_macro_name: "export_plugin",
        default_bindings_module: "simrelay_sdk::bindings",
        generate_all,
    });
}

pub use bindings::simrelay::adapter::types::{
    CallContext, Capability, Delivery, DeliveryHealth, DeliveryOutcome, DeliveryRef, DeliveryState,
    DeliveryStatus, Descriptor, Effects, Event, HttpReply, HttpRequest, HttpResponse, KeySource,
    MessageKind, OutgoingRequest, ReceivedMessage, ResponseOutcome, SendRequest, SettingSpec,
    SimState, SimStatus, StoreSpec, Verdict, WebhookKey, WebhookOutcome,
};

/// The interface version this SDK builds plugins against.
pub const API_VERSION: &str = "0.2.0";

/// A provider adapter. Every hook has a default, so an adapter implements only the inputs
/// it handles.
pub trait Adapter {
    fn describe() -> Descriptor;

    fn on_webhook(
        ctx: &CallContext,
        kv: &Stores,
        request: HttpRequest,
    ) -> Result<WebhookOutcome, String> {
        let _ = (ctx, kv, request);
        Ok(WebhookOutcome {
            reply: HttpReply::json(404, r#"{"error":"this plugin accepts no webhooks"}"#),
            effects: Effects::none(),
        })
    }

    fn on_event(ctx: &CallContext, kv: &Stores, event: Event) -> Result<Effects, String> {
        let _ = (ctx, kv, event);
        Ok(Effects::none())
    }

    fn on_response(
        ctx: &CallContext,
        kv: &Stores,
        delivery: DeliveryRef,
        outcome: DeliveryOutcome,
    ) -> Result<ResponseOutcome, String> {
        let _ = (ctx, kv, delivery, outcome);
        Ok(ResponseOutcome {
            verdict: Verdict::Delivered,
            effects: Effects::none(),
        })
    }

    fn on_tick(ctx: &CallContext, kv: &Stores) -> Result<Effects, String> {
        let _ = (ctx, kv);
        Ok(Effects::none())
    }
}

impl CallContext {
    /// The value of a configured setting.
    pub fn setting(&self, name: &str) -> Option<&str> {
        self.settings
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }

    /// The value of a setting the plugin cannot work without. The error names the setting,
    /// never its value.
    pub fn required_setting(&self, name: &str) -> Result<&str, String> {
        self.setting(name)
            .filter(|value| !value.is_empty())
            .ok_or_else(|| format!("setting `{name}` is not configured"))
    }

    /// A whole-number setting, `default` when absent or empty. The error names the setting
    /// and what it holds, so operators see which line of their configuration to fix.
    pub fn number_setting(&self, name: &str, default: u64) -> Result<u64, String> {
        match self.setting(name).map(str::trim) {
            None | Some("") => Ok(default),
            Some(value) => value
                .parse()
                .map_err(|_| format!("setting `{name}` must be a whole number, not `{value}`")),
        }
    }

    /// A context for native unit tests.
    pub fn for_tests(settings: &[(&str, &str)]) -> Self {
        CallContext {
            instance: "test".into(),
            settings: settings
                .iter()
                .map(|(key, value)| (key.to_string(), value.to_string()))
                .collect(),
            store: "test".into(),
            shared_stores: Vec::new(),
            message_id: "test-message".into(),
            now_ms: 1_700_000_000_000,
        }
    }
}

impl Descriptor {
    /// A plugin with no capabilities, settings or stores yet, built against this SDK's
    /// interface version; fill in the rest with struct update syntax.
    pub fn new(name: &str, version: &str) -> Self {
        Descriptor {
            name: name.into(),
            version: version.into(),
            api_version: API_VERSION.into(),
            capabilities: Vec::new(),
            settings: Vec::new(),
            stores: Vec::new(),
            webhook_key: None,
        }
    }
}

impl StoreSpec {
    pub fn required(name: &str, description: &str) -> Self {
        StoreSpec {
            name: name.into(),
            description: description.into(),
            required: true,
        }
    }
}

impl SettingSpec {
    pub fn required(name: &str, description: &str) -> Self {
        SettingSpec {
            name: name.into(),
            description: description.into(),
            required: true,
            secret: false,
        }
    }

    pub fn optional(name: &str, description: &str) -> Self {
        SettingSpec {
            required: false,
            ..Self::required(name, description)
        }
    }

    /// Marks the setting secret: the host keeps its value out of logs and errors.
    pub fn secret(self) -> Self {
        SettingSpec {
            secret: true,
            ..self
        }
    }
}

/// Compares a secret someone sent with the expected one in time that depends only on the
/// length of what was sent, so answer times reveal neither how much of a guess was right
/// nor how long the secret is.
pub fn secrets_match(given: &str, expected: &str) -> bool {
    let (given, expected) = (given.as_bytes(), expected.as_bytes());
    let difference =
        given
            .iter()
            .enumerate()
            .fold(given.len() ^ expected.len(), |difference, (index, byte)| {
                // Past the end of the expected secret, compare against a byte that cannot match.
                let other = expected.get(index).map_or(!*byte, |b| *b);
                difference | usize::from(byte ^ other)
            });
    difference == 0
}

impl Effects {
    pub fn none() -> Self {
        Effects {
            events: Vec::new(),
            deliveries: Vec::new(),
        }
    }
}

impl HttpReply {
    pub fn json(status: u16, body: impl Into<Vec<u8>>) -> Self {
        HttpReply {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: body.into(),
        }
    }
}

impl HttpRequest {
    /// The value of a route capture, e.g. `key` in `/api/{key}/webhook`.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }
}

impl OutgoingRequest {
    /// A POST with a JSON body.
    pub fn post_json(url: String, body: Vec<u8>) -> Self {
        OutgoingRequest {
            method: "POST".into(),
            url,
            headers: vec![(
                "content-type".into(),
                "application/json; charset=utf-8".into(),
            )],
            body,
            timeout_ms: None,
        }
    }
}

#[doc(hidden)]
pub mod __export {
    //! What [`export_adapter!`](crate::export_adapter) expands to call: open the instance's
    //! store, then hand over to the adapter.
    use super::*;

    pub fn on_webhook<A: Adapter>(
        ctx: CallContext,
        request: HttpRequest,
    ) -> Result<WebhookOutcome, String> {
        A::on_webhook(&ctx, &Stores::open(&ctx)?, request)
    }

    pub fn on_event<A: Adapter>(ctx: CallContext, event: Event) -> Result<Effects, String> {
        A::on_event(&ctx, &Stores::open(&ctx)?, event)
    }

    pub fn on_response<A: Adapter>(
        ctx: CallContext,
        delivery: DeliveryRef,
        outcome: DeliveryOutcome,
    ) -> Result<ResponseOutcome, String> {
        A::on_response(&ctx, &Stores::open(&ctx)?, delivery, outcome)
    }

    pub fn on_tick<A: Adapter>(ctx: CallContext) -> Result<Effects, String> {
        A::on_tick(&ctx, &Stores::open(&ctx)?)
    }
}

/// Exports an [`Adapter`] as the plugin's `simrelay:adapter/adapter` implementation.
///
/// Expands to nothing off wasm: the export symbols (`simrelay:adapter/...`) are not valid
/// native link names, and native builds exist only for unit tests and benchmarks.
#[macro_export]
macro_rules! export_adapter {
    ($adapter:ty) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            struct __SimrelayExport;

            impl $crate::bindings::exports::simrelay::adapter::adapter::Guest for __SimrelayExport {
                fn describe() -> $crate::Descriptor {
                    <$adapter as $crate::Adapter>::describe()
                }
                fn on_webhook(
                    ctx: $crate::CallContext,
                    request: $crate::HttpRequest,
                ) -> Result<$crate::WebhookOutcome, String> {
                    $crate::__export::on_webhook::<$adapter>(ctx, request)
                }
                fn on_event(
                    ctx: $crate::CallContext,
                    event: $crate::Event,
                ) -> Result<$crate::Effects, String> {
                    $crate::__export::on_event::<$adapter>(ctx, event)
                }
                fn on_response(
                    ctx: $crate::CallContext,
                    delivery: $crate::DeliveryRef,
                    outcome: $crate::DeliveryOutcome,
                ) -> Result<$crate::ResponseOutcome, String> {
                    $crate::__export::on_response::<$adapter>(ctx, delivery, outcome)
                }
                fn on_tick(ctx: $crate::CallContext) -> Result<$crate::Effects, String> {
                    $crate::__export::on_tick::<$adapter>(ctx)
                }
            }

    $crate::bindings::export_plugin!(__SimrelayExport with_types_in $crate::bindings);
        };
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn number_settings_default_and_explain_bad_values() {
        let ctx = CallContext::for_tests(&[("a", " 30 "), ("b", ""), ("c", "soon")]);
        assert_eq!(ctx.number_setting("a", 1), Ok(30));
        assert_eq!(ctx.number_setting("b", 1), Ok(1));
        assert_eq!(ctx.number_setting("missing", 1), Ok(1));
        assert_eq!(
            ctx.number_setting("c", 1),
            Err("setting `c` must be a whole number, not `soon`".into())
        );
    }

    #[test]
    fn secrets_match_only_when_equal() {
        assert!(secrets_match("abc", "abc"));
        assert!(!secrets_match("abd", "abc"));
        assert!(!secrets_match("ab", "abc"));
        assert!(!secrets_match("abcd", "abc"));
        assert!(!secrets_match("", "abc"));
        assert!(secrets_match("", ""));
    }
}
