//! For tests of marketplace plugins: an [`Instance`] harness that plays one configured
//! instance, builders for the inputs it gets, and [`Racing`], a store that lets a concurrent
//! writer in between a read and a compare-and-swap, as Spin may.

use std::cell::{Cell, RefCell};
use std::marker::PhantomData;

use serde_json::Value;
use simrelay_sdk::{
    CallContext, DeliveryOutcome, DeliveryRef, Effects, Event, HttpRequest, HttpResponse, KeyValue,
    MemoryStore, MessageKind, ReceivedMessage, SimState, SimStatus, Verdict,
};

use crate::{Dialect, Marketplace};

/// The device every SIM built here sits in.
pub const DEVICE: &str = "00:1A:2B:3C:4D:5E";

/// One marketplace instance with its own in-memory store; the shared store is passed to
/// each call, so tests can give several instances the same one, or a racing one.
pub struct Instance<D> {
    pub ctx: CallContext,
    pub own: MemoryStore,
    dialect: PhantomData<D>,
}

impl<D: Dialect> Instance<D> {
    pub fn new(name: &str, settings: &[(&str, &str)]) -> Self {
        let mut ctx = CallContext::for_tests(settings);
        ctx.instance = name.into();
        ctx.store = name.into();
        Instance {
            ctx,
            own: MemoryStore::default(),
            dialect: PhantomData,
        }
    }

    /// Moves the instance's clock.
    pub fn at(&mut self, now_ms: u64) -> &mut Self {
        self.ctx.now_ms = now_ms;
        self
    }

    /// A marketplace request; the reply's HTTP status and JSON body.
    pub fn call(&self, shared: &dyn KeyValue, body: &Value) -> (u16, Value) {
        self.call_raw(shared, body.to_string().as_bytes())
    }

    pub fn call_raw(&self, shared: &dyn KeyValue, body: &[u8]) -> (u16, Value) {
        let outcome = Marketplace::<D>::webhook(&self.ctx, &self.own, shared, &request(body))
            .expect("no internal error");
        assert!(outcome.effects.events.is_empty() && outcome.effects.deliveries.is_empty());
        let body = serde_json::from_slice(&outcome.reply.body).expect("the reply is JSON");
        (outcome.reply.status, body)
    }

    pub fn event(&self, shared: &dyn KeyValue, event: Event) -> Effects {
        Marketplace::<D>::event(&self.ctx, &self.own, shared, &event).expect("no internal error")
    }

    pub fn respond(&self, shared: &dyn KeyValue, key: &str, outcome: DeliveryOutcome) -> Verdict {
        let delivery = DeliveryRef {
            idempotency_key: key.into(),
            attempt: 1,
        };
        let outcome = Marketplace::<D>::response(&self.ctx, &self.own, shared, &delivery, &outcome)
            .expect("no internal error");
        assert!(outcome.effects.events.is_empty() && outcome.effects.deliveries.is_empty());
        outcome.verdict
    }

    pub fn tick(&self) -> Effects {
        Marketplace::<D>::tick(&self.ctx, &self.own).expect("no internal error")
    }
}

/// A marketplace's POST with a JSON body.
pub fn request(body: &[u8]) -> HttpRequest {
    HttpRequest {
        method: "POST".into(),
        path: "/marketplace".into(),
        query: String::new(),
        params: Vec::new(),
        headers: vec![("content-type".into(), "application/json".into())],
        body: body.to_vec(),
    }
}

/// A gateway's report of a registered, active card in `port` of [`DEVICE`].
pub fn sim(port: &str, iccid: &str, number: &str, imsi: &str) -> SimStatus {
    SimStatus {
        device: Some(DEVICE.into()),
        port: Some(port.into()),
        number: Some(number.into()),
        iccid: Some(iccid.into()),
        imsi: Some(imsi.into()),
        state: SimState::Registered,
        detail: Some("3 registered".into()),
        active: Some(true),
        operator: None,
        signal: Some(20),
        balance: None,
        slot_active: None,
    }
}

/// An SMS to `recipient` from Telegram.
pub fn sms(id: &str, recipient: &str, text: &str) -> ReceivedMessage {
    ReceivedMessage {
        id: id.into(),
        sender: "Telegram".into(),
        recipient: recipient.into(),
        text: text.into(),
        kind: MessageKind::Sms,
        received_at_ms: Some(1_700_000_000_000),
        device: Some(DEVICE.into()),
        port: None,
        iccid: None,
        imsi: None,
        code: None,
    }
}

pub fn response(status: u16, body: &str) -> DeliveryOutcome {
    DeliveryOutcome::Response(HttpResponse {
        status,
        headers: vec![("content-type".into(), "application/json".into())],
        body: body.as_bytes().to_vec(),
    })
}

/// A store that runs `meanwhile` (another writer) just before its first compare-and-swap,
/// after the caller has read what it means to swap: the swap then meets a changed value.
pub struct Racing<'a> {
    inner: &'a dyn KeyValue,
    meanwhile: RefCell<Option<Box<dyn FnOnce() + 'a>>>,
    /// Swaps that found the value changed.
    pub lost_swaps: Cell<u32>,
}

impl<'a> Racing<'a> {
    pub fn new(inner: &'a dyn KeyValue, meanwhile: impl FnOnce() + 'a) -> Self {
        Racing {
            inner,
            meanwhile: RefCell::new(Some(Box::new(meanwhile))),
            lost_swaps: Cell::new(0),
        }
    }
}

impl KeyValue for Racing<'_> {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, String> {
        self.inner.get(key)
    }
    fn set(&self, key: &str, value: &[u8]) -> Result<(), String> {
        self.inner.set(key, value)
    }
    fn delete(&self, key: &str) -> Result<(), String> {
        self.inner.delete(key)
    }
    fn increment(&self, key: &str, delta: i64) -> Result<i64, String> {
        self.inner.increment(key, delta)
    }
    fn keys(&self, prefix: &str) -> Result<Vec<String>, String> {
        self.inner.keys(prefix)
    }
    fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>, String> {
        self.inner.get_many(keys)
    }
    fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        new: &[u8],
    ) -> Result<bool, String> {
        let meanwhile = self.meanwhile.borrow_mut().take();
        if let Some(meanwhile) = meanwhile {
            meanwhile();
        }
        let swapped = self.inner.compare_and_swap(key, expected, new)?;
        if !swapped {
            self.lost_swaps.set(self.lost_swaps.get() + 1);
        }
        Ok(swapped)
    }
}

/// Every key and value of a store, to show that a call changed nothing.
pub fn snapshot(store: &dyn KeyValue) -> Vec<(String, Option<Vec<u8>>)> {
    let keys = store.keys("").expect("keys");
    let values = store.get_many(&keys).expect("values");
    keys.into_iter().zip(values).collect()
}
