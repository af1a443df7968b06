//! The relay: runs one plugin call at a time per instance and commits what it produced.
//!
//! Every input (a webhook, a queued event, a delivery's response, a tick) goes through the
//! same steps: take the instance's lock, call the plugin in a sandbox with a key-value
//! overlay, then commit the overlay, the new deliveries and events, and the fate of the
//! input in one transaction. The lock makes each instance's state a serial history, so
//! read-modify-write in a plugin needs no retries.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{Context, Result};
use tracing::{info, info_span, warn};
use wasmtime::Store;

use crate::abi::{
    CallContext, Capability, DeliveryOutcome, DeliveryRef, Effects, HttpReply, HttpRequest,
    ResponseOutcome, Verdict, v0_1,
};
use crate::config::{Config, Limits};
use crate::db::{Commit, Consumed, Db, DeliveryRecord, DeliveryState, NewDelivery, NewEvent};
use crate::delivery::AllowList;
use crate::kv::{KvOverlay, KvWrites};
use crate::queue::DueQueue;
use crate::redact::{Redactor, looks_secret};
use crate::router::{Matched, Pattern, Route, Router};
use crate::runtime::{CallError, CallState, LoadedPlugin, Runtime};

/// Route captures, e.g. `("key", "…")` for `/api/{key}/webhook`.
pub type Captures = Vec<(String, String)>;

/// A configured plugin instance, loaded and ready to call.
pub struct Instance {
    pub name: String,
    pub plugin: LoadedPlugin,
    settings: Vec<(String, String)>,
    pub forward_to: Vec<String>,
    pub allow: AllowList,
    pub limits: Limits,
    pub redactor: Redactor,
    pub tick_interval: Option<Duration>,
    lock: Mutex<()>,
    /// Writes of calls whose outcome is queued for the disk but not yet durable, by id.
    unflushed: Mutex<Vec<(u64, Arc<KvWrites>)>>,
    next_flush: AtomicU64,
}

pub struct Relay {
    pub db: Arc<Db>,
    runtime: Arc<Runtime>,
    instances: BTreeMap<String, Arc<Instance>>,
    router: Router,
    pub deliveries: DueQueue,
    pub events: DueQueue,
    next_message: AtomicU64,
}

/// Delay before retrying an input whose plugin call failed: 5 s doubling to 10 min.
fn failure_backoff(attempts: u32) -> u64 {
    5_000u64
        .saturating_mul(1 << attempts.min(7).saturating_sub(1))
        .min(600_000)
}

impl Instance {
    /// Serialises calls into this instance: its state is one history.
    fn serial(&self) -> MutexGuard<'_, ()> {
        self.lock
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    fn unflushed(&self) -> MutexGuard<'_, Vec<(u64, Arc<KvWrites>)>> {
        self.unflushed
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }
}

impl Relay {
    /// Loads every configured instance and restores the queues from the database. Any
    /// plugin that fails to load stops start-up with a message naming it.
    pub fn start(config: &Config, data_dir: &Path) -> Result<Arc<Self>> {
        let runtime = Runtime::new()?;
        let db = Arc::new(Db::open(data_dir)?);
        let mut instances = BTreeMap::new();
        for (name, instance) in &config.instances {
            let plugin = runtime
                .load(&instance.plugin, &instance.limits)
                .with_context(|| format!("instance `{name}`"))?;
            let secret_names: Vec<&str> = plugin
                .descriptor
                .settings
                .iter()
                .filter(|spec| spec.secret)
                .map(|spec| spec.name.as_str())
                .collect();
            for spec in plugin
                .descriptor
                .settings
                .iter()
                .filter(|spec| spec.required)
            {
                if !instance.settings.contains_key(&spec.name) {
                    anyhow::bail!(
                        "instance `{name}`: plugin {} needs setting `{}` ({})",
                        plugin.descriptor.name,
                        spec.name,
                        spec.description
                    );
                }
            }
            let redactor = Redactor::new(
                instance
                    .settings
                    .iter()
                    .filter(|(key, _)| secret_names.contains(&key.as_str()) || looks_secret(key))
                    .map(|(_, value)| value.clone()),
            );
            let wants_ticks = plugin.descriptor.capabilities.contains(&Capability::Tick);
            info!(
                instance = %name,
                plugin = %plugin.descriptor.name,
                version = %plugin.descriptor.version,
                api = %plugin.descriptor.api_version,
                "loaded plugin"
            );
            instances.insert(
                name.clone(),
                Arc::new(Instance {
                    name: name.clone(),
                    settings: instance.settings.clone().into_iter().collect(),
                    forward_to: instance.forward_to.clone(),
                    allow: AllowList::parse(&instance.allow_hosts)
                        .with_context(|| format!("instances.{name}.allow_hosts"))?,
                    limits: instance.limits.clone(),
                    redactor,
                    tick_interval: wants_ticks
                        .then_some(instance.tick_interval_secs.unwrap_or(60))
                        .map(Duration::from_secs),
                    plugin,
                    lock: Mutex::new(()),
                    unflushed: Mutex::default(),
                    next_flush: AtomicU64::new(0),
                }),
            );
        }
        let routes = config
            .routes
            .iter()
            .map(|route| {
                Ok(Route {
                    pattern: Pattern::parse(&route.path)?,
                    method: route.method.clone(),
                    instance: route.instance.clone(),
                })
            })
            .collect::<Result<_>>()?;
        let relay = Relay {
            db,
            runtime,
            instances,
            router: Router::new(routes),
            deliveries: DueQueue::default(),
            events: DueQueue::default(),
            next_message: AtomicU64::new(crate::now_ms() << 12),
        };
        relay.restore_queues()?;
        Ok(Arc::new(relay))
    }

    fn restore_queues(&self) -> Result<()> {
        let mut pending = 0;
        for record in self.db.deliveries()? {
            if let DeliveryState::Pending { next_attempt_ms } = record.state {
                self.deliveries.schedule(next_attempt_ms, record.id);
                pending += 1;
            }
        }
        let events = self.db.queued_events()?;
        for queued in &events {
            self.events.schedule(queued.next_attempt_ms, queued.id);
        }
        info!(
            pending_deliveries = pending,
            queued_events = events.len(),
            "restored queues"
        );
        Ok(())
    }

    pub fn instances(&self) -> impl Iterator<Item = &Arc<Instance>> {
        self.instances.values()
    }

    pub fn instance(&self, name: &str) -> Option<&Arc<Instance>> {
        self.instances.get(name)
    }

    /// The instance a request is for, and the route's captures.
    pub fn route(&self, method: &str, path: &str) -> Option<(Arc<Instance>, Captures)> {
        let Matched { instance, params } = self.router.find(method, path)?;
        Some((self.instances[instance].clone(), params))
    }

    /// A new id for an input from outside; everything it causes is logged with it.
    pub fn new_message_id(&self) -> String {
        format!("{:x}", self.next_message.fetch_add(1, Ordering::Relaxed))
    }

    /// Runs an `on-webhook` call; the reply is returned only once its outcome is durable.
    /// The error is safe to show the sender.
    pub fn handle_webhook(
        &self,
        instance: &Instance,
        message_id: &str,
        request: HttpRequest,
    ) -> Result<HttpReply, String> {
        let serial = instance.serial();
        let (result, kv) = self.call(instance, message_id, |plugin, store, ctx| {
            plugin
                .simrelay_adapter_adapter()
                .call_on_webhook(store, ctx, &request)
        });
        let outcome = result.map_err(|error| instance.redactor.redact(&error.to_string()))?;
        self.commit(
            instance,
            serial,
            message_id,
            kv,
            outcome.effects,
            Consumed::Nothing,
        )
        .map_err(|error| format!("cannot store the outcome: {error:#}"))?;
        Ok(outcome.reply)
    }

    /// Hands a queued event to its target; a failed call leaves it queued for a retry.
    pub fn handle_event(&self, id: u64) {
        let mut queued = match self.db.queued_event(id) {
            Ok(Some(queued)) => queued,
            Ok(None) => return,
            Err(error) => {
                warn!(event = id, "cannot read queued event: {error:#}");
                self.events
                    .schedule(crate::now_ms() + failure_backoff(1), id);
                return;
            }
        };
        let _span = info_span!("event", message_id = %queued.message_id, event = id, instance = %queued.target).entered();
        let Some(instance) = self.instance(&queued.target) else {
            warn!(target = %queued.target, "event kept: its target instance is not configured");
            return;
        };
        let serial = instance.serial();
        let (result, kv) = self.call(instance, &queued.message_id, |plugin, store, ctx| {
            plugin
                .simrelay_adapter_adapter()
                .call_on_event(store, ctx, &queued.event)
        });
        let message_id = queued.message_id.clone();
        let committed = match result {
            Ok(effects) => self.commit(
                instance,
                serial,
                &message_id,
                kv,
                effects,
                Consumed::EventHandled(id),
            ),
            Err(error) => {
                queued.attempts += 1;
                queued.next_attempt_ms = crate::now_ms() + failure_backoff(queued.attempts);
                let error = instance.redactor.redact(&error.to_string());
                warn!(
                    attempt = queued.attempts,
                    "event not handled, will retry: {error}"
                );
                queued.last_error = Some(error);
                let retry_at = queued.next_attempt_ms;
                let outcome = self.commit(
                    instance,
                    serial,
                    &message_id,
                    KvWrites::new(),
                    Effects::none(),
                    Consumed::EventFailed(queued),
                );
                self.events.schedule(retry_at, id);
                outcome
            }
        };
        if let Err(error) = committed {
            warn!("cannot store the outcome of event {id}: {error:#}");
            self.events
                .schedule(crate::now_ms() + failure_backoff(1), id);
        }
    }

    /// Hands a delivery's response to the plugin that asked for it; its verdict decides
    /// whether the delivery is done, retried or abandoned.
    pub fn handle_response(
        &self,
        instance: &Instance,
        mut record: DeliveryRecord,
        outcome: DeliveryOutcome,
    ) {
        record.attempts += 1;
        let summary = instance.redactor.redact(&summarize(&outcome));
        let delivery = DeliveryRef {
            idempotency_key: record.idempotency_key.clone(),
            attempt: record.attempts,
        };
        let serial = instance.serial();
        let (result, kv) = self.call(instance, &record.message_id, |plugin, store, ctx| {
            plugin
                .simrelay_adapter_adapter()
                .call_on_response(store, ctx, &delivery, &outcome)
        });
        let now = crate::now_ms();
        let (kv, effects) = match result {
            Ok(ResponseOutcome { verdict, effects }) => {
                record.state = match verdict {
                    Verdict::Delivered => DeliveryState::Delivered { at_ms: now },
                    Verdict::RetryAfterMs(delay) => DeliveryState::Pending {
                        next_attempt_ms: now.saturating_add(delay),
                    },
                    Verdict::GiveUp(reason) => DeliveryState::GaveUp {
                        at_ms: now,
                        reason: instance.redactor.redact(&reason),
                    },
                };
                record.last_result = Some(summary.clone());
                (kv, effects)
            }
            Err(error) => {
                let error = instance.redactor.redact(&error.to_string());
                record.state = DeliveryState::Pending {
                    next_attempt_ms: now + failure_backoff(record.attempts),
                };
                record.last_result = Some(format!("{summary}; verdict unavailable: {error}"));
                (KvWrites::new(), Effects::none())
            }
        };
        info!(
            delivery = record.id,
            attempt = record.attempts,
            result = %record.last_result.as_deref().unwrap_or_default(),
            state = ?record.state,
            "delivery attempt"
        );
        self.finish_delivery(instance, serial, record, kv, effects);
    }

    /// Records a delivery the host refused to send, without asking the plugin.
    pub fn refuse_delivery(&self, instance: &Instance, mut record: DeliveryRecord, reason: String) {
        warn!(delivery = record.id, "delivery refused: {reason}");
        record.state = DeliveryState::GaveUp {
            at_ms: crate::now_ms(),
            reason,
        };
        let serial = instance.serial();
        self.finish_delivery(instance, serial, record, KvWrites::new(), Effects::none());
    }

    fn finish_delivery(
        &self,
        instance: &Instance,
        serial: MutexGuard<'_, ()>,
        record: DeliveryRecord,
        kv: KvWrites,
        effects: Effects,
    ) {
        let id = record.id;
        let retry_at = match record.state {
            DeliveryState::Pending { next_attempt_ms } => Some(next_attempt_ms),
            _ => None,
        };
        let message_id = record.message_id.clone();
        match self.commit(
            instance,
            serial,
            &message_id,
            kv,
            effects,
            Consumed::DeliveryUpdated(record),
        ) {
            Ok(()) => {
                if let Some(at) = retry_at {
                    self.deliveries.schedule(at, id);
                }
            }
            Err(error) => {
                // The stored record still says pending: try the attempt again.
                warn!(
                    delivery = id,
                    "cannot store the delivery's outcome: {error:#}"
                );
                self.deliveries
                    .schedule(crate::now_ms() + failure_backoff(1), id);
            }
        }
    }

    /// Runs an `on-tick` call for polling and expiry.
    pub fn tick(&self, instance: &Instance) {
        let message_id = self.new_message_id();
        let _span =
            info_span!("tick", message_id = %message_id, instance = %instance.name).entered();
        let serial = instance.serial();
        let (result, kv) = self.call(instance, &message_id, |plugin, store, ctx| {
            plugin.simrelay_adapter_adapter().call_on_tick(store, ctx)
        });
        let outcome = result
            .map_err(|error| instance.redactor.redact(&error.to_string()))
            .and_then(|effects| {
                self.commit(
                    instance,
                    serial,
                    &message_id,
                    kv,
                    effects,
                    Consumed::Nothing,
                )
                .map_err(|error| format!("cannot store the outcome: {error:#}"))
            });
        if let Err(error) = outcome {
            warn!("tick failed: {error}");
        }
    }

    /// Calls the plugin of `instance`; the caller holds its lock until the commit is queued.
    fn call<R>(
        &self,
        instance: &Instance,
        message_id: &str,
        call: impl FnOnce(
            &v0_1::Plugin,
            &mut Store<CallState>,
            &CallContext,
        ) -> wasmtime::Result<Result<R, String>>,
    ) -> (Result<R, CallError>, KvWrites) {
        let ctx = CallContext {
            instance: instance.name.clone(),
            settings: instance.settings.clone(),
            store: instance.name.clone(),
            message_id: message_id.to_string(),
            now_ms: crate::now_ms(),
        };
        let unflushed = instance
            .unflushed()
            .iter()
            .map(|(_, writes)| writes.clone())
            .collect();
        let overlay = KvOverlay::new(self.db.clone(), instance.name.clone(), unflushed);
        let record = self.runtime.call(
            &instance.plugin,
            overlay,
            &instance.limits,
            |plugin, store| call(plugin, store, &ctx),
        );
        for line in record.output.lines().filter(|line| !line.trim().is_empty()) {
            info!("plugin says: {}", instance.redactor.redact(line));
        }
        if let Err(error) = &record.result {
            warn!("{}", instance.redactor.redact(&error.to_string()));
        }
        (record.result, record.kv.into_writes())
    }

    /// Queues the outcome of a call for the disk and releases the instance for its next
    /// call, which sees the writes; returns once the outcome is durable.
    fn commit(
        &self,
        instance: &Instance,
        serial: MutexGuard<'_, ()>,
        message_id: &str,
        kv: KvWrites,
        effects: Effects,
        consumed: Consumed,
    ) -> Result<()> {
        let events = effects
            .events
            .into_iter()
            .flat_map(|event| {
                instance.forward_to.iter().map(move |target| NewEvent {
                    target: target.clone(),
                    event: event.clone(),
                })
            })
            .collect();
        let deliveries = effects
            .deliveries
            .into_iter()
            .map(|delivery| NewDelivery {
                idempotency_key: delivery.idempotency_key,
                request: delivery.request,
            })
            .collect();
        let kv = Arc::new(kv);
        let flush = (!kv.is_empty()).then(|| {
            let flush = instance.next_flush.fetch_add(1, Ordering::Relaxed);
            instance.unflushed().push((flush, kv.clone()));
            flush
        });
        let pending = self.db.submit(Commit {
            instance: instance.name.clone(),
            message_id: message_id.to_string(),
            now_ms: crate::now_ms(),
            kv,
            deliveries,
            events,
            consumed,
        });
        drop(serial);
        let committed = pending.wait();
        if let Some(flush) = flush {
            instance.unflushed().retain(|(id, _)| *id != flush);
        }
        let committed = committed?;
        if committed.duplicate_deliveries > 0 {
            info!(
                dropped = committed.duplicate_deliveries,
                "dropped deliveries already asked for"
            );
        }
        for (due, id) in committed.deliveries {
            self.deliveries.schedule(due, id);
        }
        for (due, id) in committed.events {
            self.events.schedule(due, id);
        }
        Ok(())
    }
}

fn summarize(outcome: &DeliveryOutcome) -> String {
    match outcome {
        DeliveryOutcome::Response(response) => {
            let body = String::from_utf8_lossy(&response.body);
            let body: String = body.chars().take(200).collect();
            format!("HTTP {}: {}", response.status, body)
        }
        DeliveryOutcome::TransportError(error) => format!("transport error: {error}"),
    }
}

/// Feeds queued events to their instances.
pub async fn run_event_worker(relay: Arc<Relay>) {
    loop {
        let id = relay.events.next_due().await;
        let relay = relay.clone();
        // Calls block on wasm and the database; they belong on the blocking pool.
        if let Err(error) = tokio::task::spawn_blocking(move || relay.handle_event(id)).await {
            warn!(event = id, "event handler panicked: {error}");
        }
    }
}

/// Calls `on-tick` on every instance that asked for ticks.
pub fn spawn_tickers(relay: &Arc<Relay>) {
    for instance in relay.instances() {
        let Some(interval) = instance.tick_interval else {
            continue;
        };
        let relay = relay.clone();
        let instance = instance.clone();
        tokio::spawn(async move {
            let mut timer = tokio::time::interval(interval);
            loop {
                timer.tick().await;
                let (relay, instance) = (relay.clone(), instance.clone());
                let _ = tokio::task::spawn_blocking(move || relay.tick(&instance)).await;
            }
        });
    }
}
