//! The relay: runs plugin calls and commits what they produced.
//!
//! Every input (a webhook, a queued event, a delivery's response, a tick) takes the same
//! path, [`Relay::submit`]: lock the stores the instance may use, call the plugin in a
//! sandbox with a key-value overlay, and queue the overlay, the new deliveries and events,
//! and the fate of the input as one commit. The locks make each store's state one serial
//! history, so read-modify-write and compare-and-swap in plugins need no retries here.
//! [`Submitted::finish`] then waits until the commit is durable and schedules what it added.
//! The time is read once per input and passed in; what an outcome does to the stored
//! input is decided by the pure functions of [`simrelay_core::relay`].

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, MutexGuard, RwLock};
use std::time::Duration;

use anyhow::{Context, Result};
use simrelay_core::relay::{self as decide, DeliveryRecord};
use simrelay_core::retry::{DeliveryState, RetryPolicy, failure_backoff_ms};
use simrelay_core::routing::{Matched, Pattern, Route, Router};
use tracing::{info, info_span, warn};

use crate::abi::{Input, Output};
use crate::config::{Config, InstanceConfig, Limits};
use crate::db::{Commit, Committed, Consumed, Db, NewDelivery, NewEvent, PendingCommit};
use crate::delivery::AllowList;
use crate::kv::{KvOverlay, StoreState};
use crate::model::{
    CallContext, Capability, DeliveryOutcome, DeliveryRef, HttpReply, HttpRequest, WebhookKey,
};
use crate::queue::DueQueue;
use crate::redact::{Redactor, looks_secret};
use crate::runtime::{CallError, LoadedPlugin, Runtime};

/// Route captures, e.g. `("key", "…")` for `/api/{key}/webhook`.
pub type Captures = Vec<(String, String)>;

/// What serves an instance now: its plugin and its configuration, replaced whole.
pub struct Active {
    pub plugin: Arc<LoadedPlugin>,
    settings: Vec<(String, String)>,
    shared_stores: Vec<(String, String)>,
    pub forward_to: Vec<String>,
    pub allow: AllowList,
    pub limits: Limits,
    pub retry: RetryPolicy,
    pub redactor: Redactor,
    pub tick_interval: Option<Duration>,
}

impl Active {
    /// The key the host checks on this instance's webhooks, if its plugin asked for one.
    pub fn webhook_key(&self) -> Option<&WebhookKey> {
        self.plugin.descriptor.webhook_key.as_ref()
    }

    pub fn settings(&self) -> &[(String, String)] {
        &self.settings
    }
}

/// A configured plugin instance: its stores, its queue of events, and what serves it.
pub struct Instance {
    pub name: String,
    /// Every store the instance may open, its own among them, sorted by label: calls lock
    /// them in this order, so instances sharing a store never deadlock.
    stores: Vec<Arc<StoreState>>,
    active: RwLock<Arc<Active>>,
    /// Events waiting for this instance, handled one at a time and in order.
    pub events: DueQueue,
}

impl Instance {
    pub fn active(&self) -> Arc<Active> {
        self.active
            .read()
            .unwrap_or_else(|poison| poison.into_inner())
            .clone()
    }

    fn lock_stores(&self) -> Vec<MutexGuard<'_, ()>> {
        self.stores.iter().map(|store| store.lock()).collect()
    }
}

pub struct Relay {
    pub db: Arc<Db>,
    runtime: Arc<Runtime>,
    instances: BTreeMap<String, Arc<Instance>>,
    router: Router,
    pub deliveries: DueQueue,
    next_message: AtomicU64,
}

/// A call's outcome on its way to disk, and what to do once it is there.
pub struct Submitted {
    pending: PendingCommit,
    /// Stores whose unflushed layer holds this commit's writes.
    layered: Vec<Arc<StoreState>>,
    instance: Arc<Instance>,
    /// A delivery to retry when its record was stored as pending.
    retry_delivery: Option<(u64, u64)>,
}

impl Submitted {
    /// Blocks until the commit (and all it read) is durable, then schedules what it added.
    pub fn finish(self, relay: &Relay) -> Result<()> {
        let sequence = self.pending.sequence();
        let committed = self.pending.wait();
        if let Some(sequence) = sequence {
            for store in &self.layered {
                store.remove_durable(sequence);
            }
        }
        let committed = committed?;
        relay.schedule(&self.instance, committed);
        if let Some((due, id)) = self.retry_delivery {
            relay.deliveries.schedule(due, id);
        }
        Ok(())
    }
}

/// Why an input got no outcome of its own.
pub enum Failure {
    /// The plugin failed; the message is safe to show (secrets removed).
    Call(CallError, String),
    /// The outcome could not be stored.
    Storage(anyhow::Error),
}

/// The configured instances, loaded but not yet serving.
pub struct Loaded {
    runtime: Arc<Runtime>,
    instances: BTreeMap<String, Arc<Instance>>,
    router: Router,
}

impl Relay {
    /// Loads every configured instance, compiled plugins cached in `data_dir/compiled/`.
    /// Any plugin that fails to load stops start-up with a message naming it.
    pub fn load(config: &Config, data_dir: &std::path::Path) -> Result<Loaded> {
        let runtime = Runtime::with_cache(data_dir)?;
        let mut labels: BTreeMap<String, Arc<StoreState>> = BTreeMap::new();
        let mut instances = BTreeMap::new();
        for (name, instance) in &config.instances {
            let plugin = runtime
                .load(&instance.plugin, &instance.limits)
                .with_context(|| format!("instance `{name}`"))?;
            let active = activate(name, instance, Arc::new(plugin))?;
            let mut stores: Vec<Arc<StoreState>> = std::iter::once(name)
                .chain(instance.stores.values())
                .map(|label| {
                    labels
                        .entry(label.clone())
                        .or_insert_with(|| StoreState::new(label))
                        .clone()
                })
                .collect();
            stores.sort_by(|a, b| a.label.cmp(&b.label));
            instances.insert(
                name.clone(),
                Arc::new(Instance {
                    name: name.clone(),
                    stores,
                    active: RwLock::new(Arc::new(active)),
                    events: DueQueue::default(),
                }),
            );
        }
        let routes = config
            .routes
            .iter()
            .map(|route| {
                Ok(Route {
                    pattern: Pattern::parse(&route.path).map_err(anyhow::Error::msg)?,
                    method: route.method.clone(),
                    instance: route.instance.clone(),
                })
            })
            .collect::<Result<_>>()?;
        Ok(Loaded {
            runtime,
            instances,
            router: Router::new(routes),
        })
    }

    /// Starts relaying for `loaded` on `db`, with the queues as the database left them.
    pub fn start(loaded: Loaded, db: Arc<Db>) -> Result<Arc<Self>> {
        let relay = Relay {
            db,
            runtime: loaded.runtime,
            instances: loaded.instances,
            router: loaded.router,
            deliveries: DueQueue::default(),
            next_message: AtomicU64::new(crate::now_ms() << 12),
        };
        relay.restore_queues()?;
        Ok(Arc::new(relay))
    }

    fn restore_queues(&self) -> Result<()> {
        let pending = self.db.pending_deliveries()?;
        for (due, id) in &pending {
            self.deliveries.schedule(*due, *id);
        }
        let events = self.db.queued_events()?;
        for queued in &events {
            match self.instance(&queued.target) {
                Some(target) => target.events.schedule(queued.next_attempt_ms, queued.id),
                None => warn!(
                    event = queued.id,
                    target = %queued.target,
                    "event kept: its target instance is not configured"
                ),
            }
        }
        info!(
            pending_deliveries = pending.len(),
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
        Some((self.instances.get(instance)?.clone(), params))
    }

    /// A new id for an input from outside; everything it causes is logged with it.
    pub fn new_message_id(&self) -> String {
        format!("{:x}", self.next_message.fetch_add(1, Ordering::Relaxed))
    }

    /// Runs an `on-webhook` call; the reply is returned only once its outcome is durable.
    pub fn handle_webhook(
        &self,
        instance: &Arc<Instance>,
        message_id: &str,
        request: &HttpRequest,
    ) -> Result<HttpReply, Failure> {
        let now = crate::now_ms();
        let (result, submitted) = self.submit(
            instance,
            message_id,
            now,
            Input::Webhook(request),
            |_, _| Consumed::Nothing,
        );
        let submitted = submitted.map_err(Failure::Storage)?;
        let output = result?;
        submitted.finish(self).map_err(Failure::Storage)?;
        match output {
            Output::Webhook(outcome) => Ok(outcome.reply),
            other => unreachable!("a webhook call answered {other:?}"),
        }
    }

    /// Hands a queued event to its target; a failed call leaves it queued for a retry.
    /// Returns once the outcome is queued for the disk, so the instance's next event can
    /// start while this one's commit completes.
    pub fn submit_event(&self, instance: &Arc<Instance>, id: u64) -> Option<Submitted> {
        let now = crate::now_ms();
        let queued = match self.db.queued_event(id) {
            Ok(Some(queued)) => queued,
            Ok(None) => return None,
            Err(error) => {
                warn!(event = id, "cannot read queued event: {error:#}");
                instance.events.schedule(now + failure_backoff_ms(1), id);
                return None;
            }
        };
        let _span = info_span!("event", message_id = %queued.message_id, event = id, instance = %instance.name).entered();
        let message_id = queued.message_id.clone();
        let event = queued.event.clone();
        let (result, submitted) = self.submit(
            instance,
            &message_id,
            now,
            Input::Event(&event),
            |_, outcome| match decide::after_event(queued, outcome.err().map(str::to_string), now) {
                None => Consumed::EventHandled(id),
                Some(failed) => {
                    warn!(
                        attempt = failed.attempts,
                        "event not handled, will retry: {}",
                        failed.last_error.as_deref().unwrap_or_default()
                    );
                    instance.events.schedule(failed.next_attempt_ms, id);
                    Consumed::EventFailed(failed)
                }
            },
        );
        drop(result);
        match submitted {
            Ok(submitted) => Some(submitted),
            Err(error) => {
                warn!("cannot store the outcome of event {id}: {error:#}");
                instance.events.schedule(now + failure_backoff_ms(1), id);
                None
            }
        }
    }

    /// Hands a delivery's response to the plugin that asked for it; its verdict, under the
    /// instance's retry policy, decides whether the delivery is done, retried or dead.
    pub fn submit_response(
        &self,
        instance: &Arc<Instance>,
        record: DeliveryRecord,
        outcome: DeliveryOutcome,
    ) -> Option<Submitted> {
        let now = crate::now_ms();
        let delivery = DeliveryRef {
            idempotency_key: record.idempotency_key.clone(),
            attempt: record.attempts + 1,
        };
        let id = record.id;
        let message_id = record.message_id.clone();
        let mut retry_at = None;
        let (_, submitted) = self.submit(
            instance,
            &message_id,
            now,
            Input::Response(&delivery, &outcome),
            |active, result| {
                let judged = result.map(|output| match output {
                    Output::Response(judged) => judged,
                    other => unreachable!("a response call answered {other:?}"),
                });
                let record = decide::after_response(
                    record,
                    &outcome,
                    judged,
                    &active.retry,
                    now,
                    fastrand::f64(),
                    |text| active.redactor.redact(text),
                );
                info!(
                    delivery = record.id,
                    attempt = record.attempts,
                    result = %record.last_result.as_deref().unwrap_or_default(),
                    state = record.state.name(),
                    "delivery attempt"
                );
                if let DeliveryState::Pending { next_attempt_ms } = record.state {
                    retry_at = Some((next_attempt_ms, record.id));
                }
                Consumed::DeliveryUpdated(record)
            },
        );
        self.submitted_delivery(id, now, submitted, retry_at)
    }

    /// Records a delivery the host refused to send, without asking the plugin.
    pub fn refuse_delivery(
        &self,
        instance: &Arc<Instance>,
        record: DeliveryRecord,
        reason: String,
    ) -> Option<Submitted> {
        warn!(delivery = record.id, "delivery refused: {reason}");
        let now = crate::now_ms();
        let id = record.id;
        let message_id = record.message_id.clone();
        let record = decide::refused(record, reason, now);
        let guards = instance.lock_stores();
        let submitted = self.queue_commit(
            instance,
            guards,
            Commit {
                instance: instance.name.clone(),
                message_id,
                now_ms: now,
                consumed: Consumed::DeliveryUpdated(record),
                ..Default::default()
            },
        );
        self.submitted_delivery(id, now, Ok(submitted), None)
    }

    fn submitted_delivery(
        &self,
        id: u64,
        now: u64,
        submitted: Result<Submitted>,
        retry_at: Option<(u64, u64)>,
    ) -> Option<Submitted> {
        match submitted {
            Ok(mut submitted) => {
                submitted.retry_delivery = retry_at;
                Some(submitted)
            }
            Err(error) => {
                // The stored record still says pending: try the attempt again.
                warn!(
                    delivery = id,
                    "cannot store the delivery's outcome: {error:#}"
                );
                self.deliveries.schedule(now + failure_backoff_ms(1), id);
                None
            }
        }
    }

    /// Runs an `on-tick` call for polling and expiry.
    pub fn tick(&self, instance: &Arc<Instance>) {
        let now = crate::now_ms();
        let message_id = self.new_message_id();
        let _span =
            info_span!("tick", message_id = %message_id, instance = %instance.name).entered();
        let (result, submitted) = self.submit(instance, &message_id, now, Input::Tick, |_, _| {
            Consumed::Nothing
        });
        if result.is_err() {
            return;
        }
        if let Err(error) = submitted.and_then(|submitted| submitted.finish(self)) {
            warn!("tick failed: cannot store the outcome: {error:#}");
        }
    }

    /// The one path of every input: lock the instance's stores, call its plugin, decide the
    /// fate of the input with `consumed` (given the call's output or its error), and queue
    /// the commit. The locks are released once the commit is queued; its writes stay
    /// visible to later calls until they are durable.
    fn submit(
        &self,
        instance: &Arc<Instance>,
        message_id: &str,
        now_ms: u64,
        input: Input<'_>,
        consumed: impl FnOnce(&Active, Result<&Output, &str>) -> Consumed,
    ) -> (Result<Output, Failure>, Result<Submitted>) {
        let guards = instance.lock_stores();
        let active = instance.active();
        let ctx = CallContext {
            instance: instance.name.clone(),
            settings: active.settings.clone(),
            store: instance.name.clone(),
            shared_stores: active.shared_stores.clone(),
            message_id: message_id.to_string(),
            now_ms,
        };
        let overlay = KvOverlay::new(self.db.clone(), &instance.stores);
        let record = self
            .runtime
            .call(&active.plugin, overlay, &active.limits, &ctx, input);
        for line in record.output.lines().filter(|line| !line.trim().is_empty()) {
            info!("plugin says: {}", active.redactor.redact(line));
        }
        let result = record.result.map_err(|error| {
            let message = active.redactor.redact(&error.to_string());
            warn!(input = input.kind(), "{message}");
            (error, message)
        });
        let consumed = consumed(
            &active,
            result.as_ref().map_err(|(_, message)| message.as_str()),
        );
        let mut commit = Commit {
            instance: instance.name.clone(),
            message_id: message_id.to_string(),
            now_ms,
            consumed,
            ..Default::default()
        };
        let result = match result {
            Ok(mut output) => {
                let writes = record.kv.into_writes();
                commit.read_unflushed = writes.read_unflushed;
                commit.kv = writes
                    .stores
                    .into_iter()
                    .map(|(label, writes)| (label, Arc::new(writes)))
                    .collect();
                let effects = output.take_effects();
                commit.events = simrelay_core::fan_out(effects.events, &active.forward_to)
                    .into_iter()
                    .map(|(target, event)| NewEvent { target, event })
                    .collect();
                commit.deliveries = effects
                    .deliveries
                    .into_iter()
                    .map(|delivery| NewDelivery {
                        idempotency_key: delivery.idempotency_key,
                        request: delivery.request,
                    })
                    .collect();
                Ok(output)
            }
            Err((error, message)) => Err(Failure::Call(error, message)),
        };
        (result, Ok(self.queue_commit(instance, guards, commit)))
    }

    /// Queues `commit`, makes its writes visible to the next calls on the same stores, and
    /// releases the stores.
    fn queue_commit(
        &self,
        instance: &Arc<Instance>,
        guards: Vec<MutexGuard<'_, ()>>,
        commit: Commit,
    ) -> Submitted {
        let writes = commit.kv.clone();
        let pending = self.db.submit(commit);
        let mut layered = Vec::new();
        if let Some(sequence) = pending.sequence() {
            for (label, writes) in writes {
                if let Some(store) = instance.stores.iter().find(|store| store.label == label) {
                    store.push_unflushed(sequence, writes);
                    layered.push(store.clone());
                }
            }
        }
        drop(guards);
        Submitted {
            pending,
            layered,
            instance: instance.clone(),
            retry_delivery: None,
        }
    }

    /// Hands what a commit added to the workers.
    fn schedule(&self, instance: &Instance, committed: Committed) {
        if committed.duplicate_deliveries > 0 {
            info!(
                instance = %instance.name,
                dropped = committed.duplicate_deliveries,
                "dropped deliveries already asked for"
            );
        }
        for (due, id) in committed.deliveries {
            self.deliveries.schedule(due, id);
        }
        for (due, id, target) in committed.events {
            match self.instance(&target) {
                Some(target) => target.events.schedule(due, id),
                None => warn!(event = id, %target, "event kept: its target is not configured"),
            }
        }
    }
}

/// What serves `name` under `config` with `plugin`, after checking that the plugin's
/// declared needs are met.
fn activate(name: &str, config: &InstanceConfig, plugin: Arc<LoadedPlugin>) -> Result<Active> {
    let descriptor = &plugin.descriptor;
    for spec in descriptor.settings.iter().filter(|spec| spec.required) {
        if !config.settings.contains_key(&spec.name) {
            anyhow::bail!(
                "instance `{name}`: plugin {} needs setting `{}` ({})",
                descriptor.name,
                spec.name,
                spec.description
            );
        }
    }
    for spec in descriptor.stores.iter().filter(|spec| spec.required) {
        if !config.stores.contains_key(&spec.name) {
            anyhow::bail!(
                "instance `{name}`: plugin {} needs a shared store granted as `{}` ({}); \
                 add `stores = {{ {} = \"LABEL\" }}`",
                descriptor.name,
                spec.name,
                spec.description,
                spec.name
            );
        }
    }
    let secret_names: Vec<&str> = descriptor
        .settings
        .iter()
        .filter(|spec| spec.secret)
        .map(|spec| spec.name.as_str())
        .collect();
    let redactor = Redactor::new(
        config
            .settings
            .iter()
            .filter(|(key, _)| secret_names.contains(&key.as_str()) || looks_secret(key))
            .map(|(_, value)| value.clone()),
    );
    let wants_ticks = descriptor.capabilities.contains(&Capability::Tick);
    info!(
        instance = %name,
        plugin = %descriptor.name,
        version = %descriptor.version,
        api = %plugin.interface_version(),
        "loaded plugin"
    );
    Ok(Active {
        settings: config.settings.clone().into_iter().collect(),
        shared_stores: config.stores.clone().into_iter().collect(),
        forward_to: config.forward_to.clone(),
        allow: AllowList::parse(&config.allow_hosts)
            .with_context(|| format!("instances.{name}.allow_hosts"))?,
        limits: config.limits.clone(),
        retry: config.retry.clone(),
        redactor,
        tick_interval: wants_ticks
            .then_some(config.tick_interval_secs.unwrap_or(60))
            .map(Duration::from_secs),
        plugin,
    })
}

/// Feeds each instance its queued events, in order, while the instances run side by side.
pub fn spawn_event_workers(relay: &Arc<Relay>) {
    for instance in relay.instances() {
        let (relay, instance) = (relay.clone(), instance.clone());
        tokio::spawn(async move {
            loop {
                let id = instance.events.next_due().await;
                let (worker, target) = (relay.clone(), instance.clone());
                // Calls block on wasm and the database; they belong on the blocking pool.
                let Ok(Some(submitted)) =
                    tokio::task::spawn_blocking(move || worker.submit_event(&target, id)).await
                else {
                    continue;
                };
                let relay = relay.clone();
                // The next event may start while this one's commit reaches the disk.
                tokio::task::spawn_blocking(move || {
                    if let Err(error) = submitted.finish(&relay) {
                        warn!(
                            event = id,
                            "cannot store the outcome of an event: {error:#}"
                        );
                    }
                });
            }
        });
    }
}

/// Calls `on-tick` on every instance that asked for ticks.
pub fn spawn_tickers(relay: &Arc<Relay>) {
    for instance in relay.instances() {
        let Some(interval) = instance.active().tick_interval else {
            continue;
        };
        let relay = relay.clone();
        let instance = instance.clone();
        tokio::spawn(async move {
            let mut timer = tokio::time::interval(interval);
            timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                timer.tick().await;
                let (relay, instance) = (relay.clone(), instance.clone());
                let _ = tokio::task::spawn_blocking(move || relay.tick(&instance)).await;
            }
        });
    }
}
