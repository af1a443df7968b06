//! The plugin interface versions this host speaks.
//!
//! Each version has a module of its own (`since_v0_1`, `since_v0_2`) holding its generated
//! bindings and their conversion into the host-owned types of [`simrelay_core::model`], as
//! Zed's extension host keeps `since_v0_x` modules. Nothing outside this module sees
//! generated types, so the relay and the database stay the same when the WIT moves on.

mod convert;
mod since_v0_1;
mod since_v0_2;

use wasmtime::Store;
use wasmtime::component::{Component, Linker};

use crate::model::{
    CallContext, DeliveryOutcome, DeliveryRef, Descriptor, Effects, Event, HttpRequest,
    ResponseOutcome, WebhookOutcome,
};
use crate::runtime::CallState;

/// Interface versions this host can load, newest first.
pub const SUPPORTED_VERSIONS: &[&str] = &[since_v0_2::VERSION, since_v0_1::VERSION];

/// The export name that identifies the adapter interface in a component.
pub const ADAPTER_INTERFACE: &str = "simrelay:adapter/adapter";

/// One input to a plugin.
#[derive(Clone, Copy, Debug)]
pub enum Input<'a> {
    Webhook(&'a HttpRequest),
    Event(&'a Event),
    Response(&'a DeliveryRef, &'a DeliveryOutcome),
    Tick,
}

impl Input<'_> {
    /// The input's kind, as logs and metrics name it.
    pub fn kind(&self) -> &'static str {
        match self {
            Input::Webhook(_) => "webhook",
            Input::Event(_) => "event",
            Input::Response(..) => "response",
            Input::Tick => "tick",
        }
    }
}

/// What a plugin answered to an [`Input`] of the same kind.
#[derive(Clone, Debug, PartialEq)]
pub enum Output {
    Webhook(WebhookOutcome),
    Effects(Effects),
    Response(ResponseOutcome),
}

impl Output {
    /// Moves the effects out, leaving the reply or verdict.
    pub fn take_effects(&mut self) -> Effects {
        std::mem::take(match self {
            Output::Webhook(outcome) => &mut outcome.effects,
            Output::Effects(effects) => effects,
            Output::Response(outcome) => &mut outcome.effects,
        })
    }
}

/// A plugin component, linked for the interface version it was built against.
pub enum AdapterPre {
    V0_1(since_v0_1::PluginPre<CallState>),
    V0_2(since_v0_2::PluginPre<CallState>),
}

/// An instantiated plugin.
pub enum Adapter {
    V0_1(since_v0_1::Plugin),
    V0_2(since_v0_2::Plugin),
}

impl AdapterPre {
    /// Links `component`, built for interface `version` (one of [`SUPPORTED_VERSIONS`]).
    pub fn new(
        linker: &Linker<CallState>,
        component: &Component,
        version: &str,
    ) -> wasmtime::Result<Self> {
        let pre = linker.instantiate_pre(component)?;
        match version {
            since_v0_2::VERSION => Ok(AdapterPre::V0_2(since_v0_2::PluginPre::new(pre)?)),
            since_v0_1::VERSION => Ok(AdapterPre::V0_1(since_v0_1::PluginPre::new(pre)?)),
            other => wasmtime::bail!("interface version {other} is not supported"),
        }
    }

    /// The interface version the plugin speaks.
    pub fn version(&self) -> &'static str {
        match self {
            AdapterPre::V0_1(_) => since_v0_1::VERSION,
            AdapterPre::V0_2(_) => since_v0_2::VERSION,
        }
    }

    pub fn instantiate(&self, store: &mut Store<CallState>) -> wasmtime::Result<Adapter> {
        match self {
            AdapterPre::V0_1(pre) => pre.instantiate(store).map(Adapter::V0_1),
            AdapterPre::V0_2(pre) => pre.instantiate(store).map(Adapter::V0_2),
        }
    }
}

impl Adapter {
    pub fn describe(&self, store: &mut Store<CallState>) -> wasmtime::Result<Descriptor> {
        match self {
            Adapter::V0_1(plugin) => since_v0_1::describe(plugin, store),
            Adapter::V0_2(plugin) => since_v0_2::describe(plugin, store),
        }
    }

    /// Hands `input` to the plugin. The outer error is a trap; the inner one the plugin's own.
    pub fn call(
        &self,
        store: &mut Store<CallState>,
        ctx: &CallContext,
        input: Input<'_>,
    ) -> wasmtime::Result<Result<Output, String>> {
        match self {
            Adapter::V0_1(plugin) => since_v0_1::call(plugin, store, ctx, input),
            Adapter::V0_2(plugin) => since_v0_2::call(plugin, store, ctx, input),
        }
    }
}
