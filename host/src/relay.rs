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
//!
//! Instances are slots: what serves one ([`Active`]: a plugin and its configuration) is
//! replaced whole while the instance's own store is locked, so a call in flight finishes
//! on the version it started with and the next call uses the new one. State, queued events
//! and pending deliveries belong to the instance, not to the version.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use simrelay_core::relay::{self as decide, DeliveryRecord, QueuedEvent};
use simrelay_core::retry::{DeliveryState, RetryPolicy, failure_backoff_ms};
use simrelay_core::routing::{Matched, Pattern, Route, Router};
use tokio::sync::Notify;
use tracing::{error, info, info_span, warn};

use crate::abi::{Input, Output};
use crate::config::{Config, InstanceConfig, Limits, RouteConfig, SendConfig};
use crate::db::{Commit, Committed, Consumed, Db, NewDelivery, PendingCommit, Retention};
use crate::delivery::AllowList;
use crate::kv::{KvOverlay, StoreGuard, StoreState};
use crate::metrics::metrics;
use crate::model::{
    CallContext, Capability, DeliveryOutcome, DeliveryRef, Event, HttpReply, HttpRequest,
    SendRequest, WebhookKey,
};
use crate::queue::DueQueue;
use crate::redact::{Redactor, looks_secret};
use crate::runtime::{CallError, LoadedPlugin, Runtime};

/// Route captures, e.g. `("key", "…")` for `/api/{key}/webhook`.
pub type Captures = Vec<(String, String)>;

/// The most CPU time an event handed over may take before its target's events are queued
/// instead: the webhook that emitted it waits for it. CPU time, not time on the clock, so
/// that a busy machine, which slows every call, does not count against a plugin.
const HAND_OVER_BUDGET: Duration = Duration::from_millis(5);
const SLOW_HAND_OVERS: u32 = 3;
/// The most queued events an instance's worker takes at a time.
const EVENT_BATCH: usize = 64;
/// The most queued events an instance keeps in memory; beyond, they wait on disk until their
/// commit is durable, and its worker reads them from there.
const MAX_ARRIVED: usize = 10_000;
/// The most new deliveries' records kept for their first attempt; beyond, the attempt
/// reads its record from the database.
const MAX_FRESH_DELIVERIES: usize = 4_096;

/// How far behind (the wait of its oldest due event) an instance may fall before the
/// webhooks that feed it wait, and the longest one webhook waits for it.
const BACKLOG_LAG: Duration = Duration::from_millis(100);
const MAX_HOLD_BACK: Duration = Duration::from_millis(50);

/// Versions kept per instance for rollback.
const HISTORY: usize = 5;

/// What serves an instance now: a plugin and the configuration it runs with.
pub struct Active {
    pub plugin: Arc<LoadedPlugin>,
    /// The plugin component's SHA-256, hex.
    pub hash: String,
    pub config: InstanceConfig,
    settings: Vec<(String, String)>,
    shared_stores: Vec<(String, String)>,
    /// Every store the instance may open, its own among them, sorted by label: calls lock
    /// them in this order, so instances sharing a store never deadlock.
    stores: Vec<Arc<StoreState>>,
    pub allow: AllowList,
    pub redactor: Redactor,
    pub tick_interval: Option<Duration>,
    /// When this version started serving, ms since the epoch.
    pub since_ms: u64,
    pub calls: AtomicU64,
    pub failures: AtomicU64,
    pub consecutive_failures: AtomicU32,
    /// Events handed over in a row that took [`HAND_OVER_BUDGET`] or more. The emitting
    /// call waits for a hand-over: at [`SLOW_HAND_OVERS`], this version's events are queued
    /// from then on. In a row, so that one call slowed down by a busy machine does not count.
    slow_events: AtomicU32,
    /// The versions before this one, newest first, for rollback.
    pub previous: Vec<Arc<Active>>,
}

impl Active {
    /// The key the host checks on this instance's webhooks, if its plugin asked for one.
    pub fn webhook_key(&self) -> Option<&WebhookKey> {
        self.plugin.descriptor.webhook_key.as_ref()
    }

    pub fn settings(&self) -> &[(String, String)] {
        &self.settings
    }

    pub fn limits(&self) -> &Limits {
        &self.config.limits
    }

    pub fn retry(&self) -> &RetryPolicy {
        &self.config.retry
    }

    pub fn forward_to(&self) -> &[String] {
        &self.config.forward_to
    }
}

/// A configured plugin instance: its own store, its queue of events, and what serves it.
pub struct Instance {
    pub name: String,
    own: Arc<StoreState>,
    active: RwLock<Arc<Active>>,
    /// Events waiting for this instance, handled one at a time and in order.
    pub events: DueQueue,
    /// Queued events not yet taken by the worker, by id: scheduled as soon as their commit
    /// is queued, before it is durable, so the worker need not wait for the disk nor read
    /// them back. Their outcomes commit after their cause, so are never durable before it.
    arrived: Mutex<HashMap<u64, QueuedEvent>>,
    /// Taken by a task before it calls the plugin on its async worker
    /// ([`crate::worker::call_here`]), so that tasks for the same instance wait their turn
    /// parked, not blocking a worker on the instance's store lock.
    pub turn: tokio::sync::Mutex<()>,
    removed: AtomicBool,
    stop: Notify,
}

impl Instance {
    pub fn active(&self) -> Arc<Active> {
        self.active
            .read()
            .unwrap_or_else(|poison| poison.into_inner())
            .clone()
    }

    /// The active version and the locks of all its stores, taken so that no swap can come
    /// between reading the version and calling it.
    fn lock(&self) -> (Arc<Active>, Vec<StoreGuard>) {
        loop {
            let active = self.active();
            let guards: Vec<StoreGuard> = active.stores.iter().map(|store| store.lock()).collect();
            if Arc::ptr_eq(&active, &self.active()) {
                return (active, guards);
            }
        }
    }

    /// The same as [`Instance::lock`] if no call holds any of the stores.
    fn try_lock(&self) -> Option<(Arc<Active>, Vec<StoreGuard>)> {
        let active = self.active();
        let guards = active
            .stores
            .iter()
            .map(|store| store.try_lock())
            .collect::<Option<Vec<StoreGuard>>>()?;
        Arc::ptr_eq(&active, &self.active()).then_some((active, guards))
    }

    /// Schedules a new event whose commit is queued, keeping it in memory for the worker;
    /// `false` (and nothing done) when too many are already kept.
    fn arrive(&self, queued: &QueuedEvent) -> bool {
        let mut arrived = self.arrived.lock().unwrap_or_else(|p| p.into_inner());
        if arrived.len() >= MAX_ARRIVED {
            return false;
        }
        arrived.insert(queued.id, queued.clone());
        self.events.schedule(queued.next_attempt_ms, queued.id);
        true
    }

    fn take_arrived(&self, id: u64) -> Option<QueuedEvent> {
        self.arrived
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id)
    }

    /// Resolves once the instance is removed.
    pub async fn stopped(&self) {
        let notified = self.stop.notified();
        if self.removed.load(Ordering::Acquire) {
            return;
        }
        notified.await;
    }

    pub fn is_removed(&self) -> bool {
        self.removed.load(Ordering::Acquire)
    }
}

pub struct Relay {
    pub db: Arc<Db>,
    runtime: Arc<Runtime>,
    instances: RwLock<BTreeMap<String, Arc<Instance>>>,
    router: RwLock<Arc<Router>>,
    /// One state per store label, shared by every instance granted it.
    labels: Mutex<BTreeMap<String, Arc<StoreState>>>,
    pub deliveries: DueQueue,
    /// Records of new deliveries not yet attempted, so that their first attempt need not
    /// read them back: only their attempt changes them.
    fresh_deliveries: Mutex<HashMap<u64, DeliveryRecord>>,
    next_message: AtomicU64,
    pub started: Instant,
    /// Instances that get the host's `delivery-health` events.
    alerts_to: RwLock<Vec<String>>,
    /// The send API's configuration, when it is served.
    send: RwLock<Option<SendConfig>>,
    /// Failed delivery attempts in a row, per instance, for `delivery-health` events.
    delivery_failures: Mutex<BTreeMap<String, u32>>,
    /// Told of every automatic rollback, so it outlives a restart.
    on_rollback: std::sync::OnceLock<RollbackHook>,
}

type RollbackHook = Box<dyn Fn(&str, &InstanceConfig) + Send + Sync>;

/// A call's outcome on its way to disk, and what to do once it is there.
pub struct Submitted {
    pending: PendingCommit,
    after: AfterCommit,
}

/// What a commit leaves to do once it is durable.
#[derive(Default)]
struct AfterCommit {
    sequence: Option<u64>,
    /// Stores whose unflushed layer holds this commit's writes.
    layered: Vec<Arc<StoreState>>,
    /// A delivery to retry when its record was stored as pending.
    retry_delivery: Option<(u64, u64)>,
    /// `delivery-health` events the outcome caused, committed on their own.
    alerts: Option<Box<Submitted>>,
    /// The commit's events that wait on disk, to schedule once it is durable.
    on_disk: OnDisk,
}

/// Events of a commit that targets could not keep in memory ([`MAX_ARRIVED`]), by target,
/// due time and id. Each counts as in hand in its target's queue until this is dropped,
/// once they are scheduled or failed to store: a target with events on the way is not
/// idle, so no later event is handed over before them.
#[derive(Default)]
struct OnDisk(Vec<(Arc<Instance>, u64, u64)>);

impl OnDisk {
    fn schedule(&self) {
        for (target, due, id) in &self.0 {
            target.events.schedule(*due, *id);
        }
    }
}

impl Drop for OnDisk {
    fn drop(&mut self) {
        for (target, _, _) in &self.0 {
            target.events.release();
        }
    }
}

impl Submitted {
    /// Blocks until the commit (and all it read) is durable, then schedules what it added.
    /// Not from a task: there, [`Submitted::durable`].
    pub fn finish(mut self, relay: &Relay) -> Result<Committed> {
        let committed = self.pending.wait();
        if let Some(alerts) = self.after.alerts.take() {
            // Alerts that cannot be stored are not worth failing the outcome for.
            let _ = alerts.finish(relay);
        }
        self.after.run(relay, committed)
    }

    /// [`Submitted::durable`] in a task of its own, so that what the commit leaves to do
    /// (scheduling its deliveries and events) is done even if the caller is cancelled, e.g.
    /// by a peer that hangs up while its webhook's commit is on the way.
    pub fn durable_in_task(self, relay: &Arc<Relay>) -> tokio::task::JoinHandle<Result<Committed>> {
        let relay = relay.clone();
        tokio::spawn(async move { self.durable(&relay).await })
    }

    /// Resolves once the commit (and all it read) is durable, having scheduled what it added.
    pub async fn durable(mut self, relay: &Relay) -> Result<Committed> {
        let committed = self.pending.durable().await;
        if let Some(alerts) = self.after.alerts.take() {
            let _ = Box::pin(alerts.durable(relay)).await;
        }
        self.after.run(relay, committed)
    }
}

impl AfterCommit {
    /// Runs once the commit is durable or failed; dropping `self` at the end releases the
    /// events that waited on disk, after they are scheduled.
    fn run(self, relay: &Relay, committed: Result<Committed>) -> Result<Committed> {
        if let Some(sequence) = self.sequence {
            for store in &self.layered {
                store.remove_durable(sequence);
            }
        }
        let mut committed = committed?;
        relay.schedule(&mut committed);
        self.on_disk.schedule();
        if let Some((due, id)) = self.retry_delivery {
            relay.deliveries.schedule(due, id);
        }
        Ok(committed)
    }
}

/// An event's outcome on the target it was handed over to, with the target's stores held
/// until the outcome is queued with its cause's.
type HandedOver = (Commit, Arc<Active>, Vec<StoreGuard>);

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
    plugins: BTreeMap<String, (InstanceConfig, Arc<LoadedPlugin>, String)>,
    routes: Vec<RouteConfig>,
    alerts_to: Vec<String>,
    send: Option<SendConfig>,
}

impl Relay {
    /// Loads every configured instance, compiled plugins cached in `data_dir/compiled/`.
    /// Any plugin that fails to load stops start-up with a message naming it.
    pub fn load(config: &Config, data_dir: &std::path::Path) -> Result<Loaded> {
        let runtime = Runtime::with_cache(data_dir)?;
        let mut plugins = BTreeMap::new();
        for (name, instance) in &config.instances {
            let plugin = runtime
                .load(&instance.plugin, &instance.limits)
                .with_context(|| format!("instance `{name}`"))?;
            check_needs(name, instance, &plugin)?;
            let hash = crate::deploy::file_hash(&instance.plugin)?;
            plugins.insert(name.clone(), (instance.clone(), Arc::new(plugin), hash));
        }
        Ok(Loaded {
            runtime,
            plugins,
            routes: config.routes.clone(),
            alerts_to: config.host.alerts_to.clone(),
            send: config.host.send.clone(),
        })
    }

    /// Starts relaying for `loaded` on `db`, with the queues as the database left them.
    pub fn start(loaded: Loaded, db: Arc<Db>) -> Result<Arc<Self>> {
        let relay = Relay {
            db,
            runtime: loaded.runtime,
            instances: RwLock::default(),
            router: RwLock::new(Arc::new(Router::new(Vec::new()))),
            labels: Mutex::default(),
            deliveries: DueQueue::default(),
            fresh_deliveries: Mutex::default(),
            next_message: AtomicU64::new(crate::now_ms() << 12),
            started: Instant::now(),
            alerts_to: RwLock::new(loaded.alerts_to),
            send: RwLock::new(loaded.send),
            delivery_failures: Mutex::default(),
            on_rollback: std::sync::OnceLock::new(),
        };
        for (name, (config, plugin, hash)) in loaded.plugins {
            let active = relay.activate(&name, config, plugin, hash, Vec::new())?;
            relay.insert_instance(&name, active);
        }
        relay.set_routes(&loaded.routes)?;
        relay.restore_queues()?;
        Ok(Arc::new(relay))
    }

    pub fn runtime(&self) -> &Runtime {
        &self.runtime
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

    /// Every instance, by name.
    pub fn instances(&self) -> Vec<Arc<Instance>> {
        self.instances
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    pub fn instance(&self, name: &str) -> Option<Arc<Instance>> {
        self.instances
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
    }

    /// Waits, up to [`MAX_HOLD_BACK`], while an instance `instance`'s events go to is more
    /// than [`BACKLOG_LAG`] behind: the host then takes SMS in no faster than it passes them
    /// on, so no backlog builds under a load it cannot sustain, and the CPU the webhooks
    /// would take goes to the events. Events waiting for a retry are not due and do not
    /// count, and a target demoted for slow events is not waited for: a plugin that fails
    /// or is slow on its own does not slow the webhooks that feed it.
    pub async fn keep_pace(&self, instance: &Instance) {
        let targets: Vec<_> = instance
            .active()
            .forward_to()
            .iter()
            .filter_map(|target| self.instance(target))
            .filter(|target| target.active().slow_events.load(Ordering::Relaxed) < SLOW_HAND_OVERS)
            .collect();
        let behind = || {
            let now = crate::now_ms();
            targets
                .iter()
                .any(|target| target.events.overdue_ms(now) > BACKLOG_LAG.as_millis() as u64)
        };
        if !behind() {
            return;
        }
        metrics().count(
            "simrelay_webhooks_held_back_total",
            "Webhooks that waited for an instance their events go to, which was behind.",
            &[("instance", &instance.name)],
        );
        let deadline = Instant::now() + MAX_HOLD_BACK;
        while Instant::now() < deadline && behind() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// The instance a request is for, and the route's captures.
    pub fn route(&self, method: &str, path: &str) -> Option<(Arc<Instance>, Captures)> {
        let router = self
            .router
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let Matched { instance, params } = router.find(method, path)?;
        Some((self.instance(instance)?, params))
    }

    /// Replaces the routes.
    pub fn set_routes(&self, routes: &[RouteConfig]) -> Result<()> {
        let routes = routes
            .iter()
            .map(|route| {
                Ok(Route {
                    pattern: Pattern::parse(&route.path).map_err(anyhow::Error::msg)?,
                    method: route.method.clone(),
                    instance: route.instance.clone(),
                })
            })
            .collect::<Result<_>>()?;
        *self.router.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(Router::new(routes));
        Ok(())
    }

    /// Sets what is told of automatic rollbacks (once).
    pub fn on_rollback(&self, hook: impl Fn(&str, &InstanceConfig) + Send + Sync + 'static) {
        let _ = self.on_rollback.set(Box::new(hook));
    }

    pub fn set_alerts_to(&self, instances: Vec<String>) {
        *self.alerts_to.write().unwrap_or_else(|p| p.into_inner()) = instances;
    }

    pub fn set_send(&self, send: Option<SendConfig>) {
        *self.send.write().unwrap_or_else(|p| p.into_inner()) = send;
    }

    /// The send API's configuration, when it is served.
    pub fn send_config(&self) -> Option<SendConfig> {
        self.send.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Queues `request` for `instance` as a `send-sms` event, with the record its delivery
    /// statuses will update, in one commit; returns once both are durable.
    pub fn request_send(
        &self,
        instance: &str,
        message_id: &str,
        request: SendRequest,
    ) -> Result<crate::send::SentMessage> {
        let now = crate::now_ms();
        let record = crate::send::SentMessage::queued(&request, instance, message_id, now);
        let event = self.new_event(
            "simrelay",
            message_id,
            now,
            instance.to_string(),
            Event::SendSms(request),
        );
        self.submit_with_events(Commit {
            instance: "simrelay".into(),
            message_id: message_id.to_string(),
            now_ms: now,
            events: vec![event],
            sends: vec![record.clone()],
            ..Default::default()
        })
        .finish(self)?;
        Ok(record)
    }

    /// Queues a commit of the host's own, with its events.
    fn submit_with_events(&self, commit: Commit) -> Submitted {
        let (pending, on_disk) = self.submit_commits(vec![commit]);
        Submitted {
            pending,
            after: AfterCommit {
                on_disk,
                ..Default::default()
            },
        }
    }

    /// An event for `target`, with the id it is queued under should it not be handed over.
    fn new_event(
        &self,
        source: &str,
        message_id: &str,
        now_ms: u64,
        target: String,
        event: Event,
    ) -> QueuedEvent {
        QueuedEvent::new(
            self.db.allocate_id(),
            source,
            target,
            message_id,
            event,
            now_ms,
        )
    }

    /// Queues `commits` as one transaction and their events in their targets' queues: in
    /// memory at once where there is room (their outcomes are queued after these commits,
    /// so never durable before them), else once the commits are durable.
    fn submit_commits(&self, commits: Vec<Commit>) -> (PendingCommit, OnDisk) {
        let events: Vec<_> = commits
            .iter()
            .flat_map(|commit| &commit.events)
            .filter_map(|queued| match self.instance(&queued.target) {
                Some(target) => Some((target, queued.clone())),
                None => {
                    warn!(event = queued.id, target = %queued.target, "event kept: its target is not configured");
                    None
                }
            })
            .collect();
        // Counted in hand from before the commit is queued, so no event queued after it can
        // be handed over ahead of them.
        for (target, _) in &events {
            target.events.hold_one();
        }
        let pending = self.db.submit_together(commits);
        let mut on_disk = OnDisk::default();
        for (target, queued) in events {
            if target.arrive(&queued) {
                target.events.release();
            } else {
                on_disk.0.push((target, queued.next_attempt_ms, queued.id));
            }
        }
        (pending, on_disk)
    }

    /// A new id for an input from outside; everything it causes is logged with it.
    pub fn new_message_id(&self) -> String {
        format!("{:x}", self.next_message.fetch_add(1, Ordering::Relaxed))
    }

    fn store(&self, label: &str) -> Arc<StoreState> {
        self.labels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(label.to_string())
            .or_insert_with(|| StoreState::new(label))
            .clone()
    }

    /// What would serve `name` under `config` with `plugin`, once the plugin's declared
    /// needs are checked; `previous` are the versions it replaces, newest first.
    pub fn activate(
        &self,
        name: &str,
        config: InstanceConfig,
        plugin: Arc<LoadedPlugin>,
        hash: String,
        previous: Vec<Arc<Active>>,
    ) -> Result<Active> {
        check_needs(name, &config, &plugin)?;
        let descriptor = &plugin.descriptor;
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
        let mut stores: Vec<Arc<StoreState>> = std::iter::once(name)
            .chain(config.stores.values().map(String::as_str))
            .map(|label| self.store(label))
            .collect();
        stores.sort_by(|a, b| a.label.cmp(&b.label));
        stores.dedup_by(|a, b| a.label == b.label);
        info!(
            instance = %name,
            plugin = %descriptor.name,
            version = %descriptor.version,
            api = %plugin.interface_version(),
            hash = %&hash[..hash.len().min(12)],
            "plugin ready"
        );
        Ok(Active {
            settings: config.settings.clone().into_iter().collect(),
            shared_stores: config.stores.clone().into_iter().collect(),
            stores,
            allow: AllowList::parse(&config.allow_hosts)
                .with_context(|| format!("instances.{name}.allow_hosts"))?,
            redactor,
            tick_interval: wants_ticks
                .then_some(config.tick_interval_secs.unwrap_or(60))
                .map(Duration::from_secs),
            since_ms: crate::now_ms(),
            calls: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            consecutive_failures: AtomicU32::new(0),
            slow_events: AtomicU32::new(0),
            previous: previous.into_iter().take(HISTORY).collect(),
            config,
            plugin,
            hash,
        })
    }

    /// Adds an instance; its workers must be started with [`spawn_instance_workers`].
    pub fn insert_instance(&self, name: &str, active: Active) -> Arc<Instance> {
        let instance = Arc::new(Instance {
            name: name.to_string(),
            own: self.store(name),
            active: RwLock::new(Arc::new(active)),
            events: DueQueue::default(),
            arrived: Mutex::default(),
            turn: tokio::sync::Mutex::default(),
            removed: AtomicBool::new(false),
            stop: Notify::new(),
        });
        self.instances
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_string(), instance.clone());
        instance
    }

    /// Removes an instance: its workers stop; its state, queued events and pending
    /// deliveries stay in the database for an instance of the same name.
    pub fn remove_instance(&self, name: &str) -> Option<Arc<Instance>> {
        let instance = self
            .instances
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name)?;
        // Wait for a call in flight, then let the workers go.
        let _guard = instance.own.lock();
        instance.removed.store(true, Ordering::Release);
        instance.stop.notify_waiters();
        info!(instance = %name, "instance removed");
        Some(instance)
    }

    /// Makes `active` serve `instance` from its next call on; a call in flight finishes on
    /// the version it started with.
    pub fn swap(&self, instance: &Instance, active: Active) {
        let _guard = instance.own.lock();
        *instance.active.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(active);
    }

    /// Runs an `on-webhook` call and queues its outcome: the reply may go out once the
    /// outcome is durable ([`Submitted::durable`]).
    pub fn call_webhook(
        &self,
        instance: &Arc<Instance>,
        message_id: &str,
        request: &HttpRequest,
    ) -> Result<(HttpReply, Submitted), Failure> {
        let now = crate::now_ms();
        let (result, submitted) = self.submit(
            instance,
            message_id,
            now,
            Input::Webhook(request),
            |_, _| Consumed::Nothing,
        );
        let submitted = submitted.map_err(Failure::Storage)?;
        match result? {
            Output::Webhook(outcome) => Ok((outcome.reply, submitted)),
            other => unreachable!("a webhook call answered {other:?}"),
        }
    }

    /// Hands a queued event to its target; a failed call leaves it queued for a retry.
    /// Returns once the outcome is queued for the disk, so the instance's next event can
    /// start while this one's commit completes.
    pub fn submit_event(&self, instance: &Arc<Instance>, id: u64) -> Option<Submitted> {
        let now = crate::now_ms();
        let stored = match instance.take_arrived(id) {
            Some(arrived) => Ok(Some(arrived)),
            None => self.db.queued_event(id),
        };
        let queued = match stored {
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
        let (_, submitted) = self.submit(
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
        let replaced_finished_at = record.state.finished_at();
        let mut retry_at = None;
        let mut health = None;
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
                    active.retry(),
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
                metrics().count(
                    "simrelay_delivery_attempts_total",
                    "Delivery attempts, by instance and the state they left the delivery in.",
                    &[("instance", &instance.name), ("state", record.state.name())],
                );
                if let DeliveryState::Pending { next_attempt_ms } = record.state {
                    retry_at = Some((next_attempt_ms, record.id));
                }
                health = Some((
                    !matches!(record.state, DeliveryState::Delivered { .. }),
                    record.last_result.clone(),
                    crate::delivery::destination(&record.request.url),
                ));
                Consumed::DeliveryUpdated {
                    record,
                    replaced_finished_at,
                }
            },
        );
        let alerts = health.and_then(|(failed, last_error, destination)| {
            self.note_delivery_health(instance, failed, last_error, destination, now)
        });
        let mut submitted = self.submitted_delivery(id, now, submitted, retry_at);
        if let Some(submitted) = &mut submitted {
            submitted.after.alerts = alerts.map(Box::new);
        }
        submitted
    }

    /// Sends `delivery-health` events to the instances in `alerts_to` when an instance's
    /// failed attempts in a row reach 1, 2, 4, 8, … and when one succeeds after failures;
    /// returns their commit.
    fn note_delivery_health(
        &self,
        instance: &Instance,
        failed: bool,
        last_error: Option<String>,
        destination: String,
        now: u64,
    ) -> Option<Submitted> {
        let failures = {
            let mut counts = self
                .delivery_failures
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            let count = counts.entry(instance.name.clone()).or_default();
            let before = *count;
            *count = if failed { before + 1 } else { 0 };
            match (failed, before) {
                (true, _) if count.is_power_of_two() => *count,
                (false, before) if before > 0 => 0,
                _ => return None,
            }
        };
        let targets = self
            .alerts_to
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if targets.is_empty() {
            return None;
        }
        let event = Event::DeliveryHealth(crate::model::DeliveryHealth {
            instance: instance.name.clone(),
            destination,
            consecutive_failures: failures,
            pending: self.deliveries.depth().0 as u32,
            last_error: failed.then_some(last_error).flatten(),
        });
        let message_id = self.new_message_id();
        let commit = Commit {
            instance: "simrelay".into(),
            events: simrelay_core::fan_out(vec![event], &targets)
                .into_iter()
                .map(|(target, event)| self.new_event("simrelay", &message_id, now, target, event))
                .collect(),
            message_id,
            now_ms: now,
            ..Default::default()
        };
        Some(self.submit_with_events(commit))
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
        let replaced_finished_at = record.state.finished_at();
        let record = decide::refused(record, reason, now);
        let (_, guards) = instance.lock();
        let commit = Commit {
            instance: instance.name.clone(),
            message_id,
            now_ms: now,
            consumed: Consumed::DeliveryUpdated {
                record,
                replaced_finished_at,
            },
            ..Default::default()
        };
        let submitted = self.queue_commit(vec![(commit, Vec::new())], guards);
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
                submitted.after.retry_delivery = retry_at;
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

    /// Puts a finished delivery back in the queue (an operator's retry or replay).
    pub fn requeue_delivery(&self, id: u64, note: &str) -> Result<DeliveryRecord> {
        let now = crate::now_ms();
        let mut record = self
            .db
            .delivery(id)?
            .with_context(|| format!("no delivery {id}"))?;
        let Some(replaced_finished_at) = record.state.finished_at() else {
            return Ok(record);
        };
        record.history.push(simrelay_core::relay::AttemptLog {
            attempt: record.attempts,
            at_ms: now,
            result: note.to_string(),
            decision: format!("retry at {now}"),
        });
        record.state = DeliveryState::Pending {
            next_attempt_ms: now,
        };
        let commit = Commit {
            instance: record.instance.clone(),
            message_id: record.message_id.clone(),
            now_ms: now,
            consumed: Consumed::DeliveryUpdated {
                record: record.clone(),
                replaced_finished_at: Some(replaced_finished_at),
            },
            ..Default::default()
        };
        self.db.submit(commit).wait()?;
        self.deliveries.schedule(now, id);
        Ok(record)
    }

    /// Runs one retention pass; returns whether it hit its batch limit.
    pub fn compact(&self, retention: &Retention) -> Result<bool> {
        let now = crate::now_ms();
        let committed = self
            .db
            .submit(Commit {
                instance: "simrelay".into(),
                message_id: "retention".into(),
                now_ms: now,
                compact: Some((retention.clone(), now)),
                ..Default::default()
            })
            .wait()?;
        let compacted = committed.compacted.unwrap_or_default();
        let removed =
            compacted.deliveries + compacted.messages + compacted.delivery_keys + compacted.sent;
        if removed > 0 {
            info!(?compacted, "retention");
        }
        Ok(removed >= crate::db::COMPACT_BATCH)
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
        let (active, guards) = instance.lock();
        let (result, mut commit) =
            self.call(instance, &active, message_id, now_ms, input, consumed);
        let handed = self.hand_over(&mut commit, now_ms);
        let mut held = guards;
        let mut commits = vec![(commit, active.stores.clone())];
        for (outcome, target, guards) in handed {
            commits.push((outcome, target.stores.clone()));
            held.extend(guards);
        }
        let submitted = self.queue_commit(commits, held);
        self.roll_back_if_failing(instance, &active);
        (result, Ok(submitted))
    }

    /// Calls the plugin serving `instance` (its stores locked) and gathers the outcome,
    /// with the fate of the input decided by `consumed`, into a commit.
    fn call(
        &self,
        instance: &Instance,
        active: &Active,
        message_id: &str,
        now_ms: u64,
        input: Input<'_>,
        consumed: impl FnOnce(&Active, Result<&Output, &str>) -> Consumed,
    ) -> (Result<Output, Failure>, Commit) {
        let ctx = CallContext {
            instance: instance.name.clone(),
            settings: active.settings.clone(),
            store: instance.name.clone(),
            shared_stores: active.shared_stores.clone(),
            message_id: message_id.to_string(),
            now_ms,
        };
        let overlay = KvOverlay::new(self.db.clone(), &active.stores);
        let started = Instant::now();
        let record = self
            .runtime
            .call(&active.plugin, overlay, active.limits(), &ctx, input);
        metrics().latency(
            "simrelay_plugin_call_seconds",
            "Plugin calls, by instance and input kind.",
            &[("instance", &instance.name), ("kind", input.kind())],
            started.elapsed(),
        );
        active.calls.fetch_add(1, Ordering::Relaxed);
        for line in record.output.lines().filter(|line| !line.trim().is_empty()) {
            info!("plugin says: {}", active.redactor.redact(line));
        }
        let result = record.result.map_err(|error| {
            let message = active.redactor.redact(&error.to_string());
            warn!(input = input.kind(), "{message}");
            (error, message)
        });
        match &result {
            Ok(_) => active.consecutive_failures.store(0, Ordering::Relaxed),
            Err((error, _)) => {
                active.failures.fetch_add(1, Ordering::Relaxed);
                active.consecutive_failures.fetch_add(1, Ordering::Relaxed);
                metrics().count(
                    "simrelay_plugin_failures_total",
                    "Failed plugin calls, by instance and cause.",
                    &[("instance", &instance.name), ("cause", cause(error))],
                );
            }
        }
        let consumed = consumed(
            active,
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
                commit.observed = effects.events.clone();
                commit.events = simrelay_core::fan_out(effects.events, active.forward_to())
                    .into_iter()
                    .map(|(target, event)| {
                        self.new_event(&instance.name, message_id, now_ms, target, event)
                    })
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
        (result, commit)
    }

    /// Hands the commit's events to their targets at once where a target is idle (nothing
    /// queued for it, no call in progress): its outcome then commits in the same
    /// transaction as the event's cause, and the event is never stored. The others stay
    /// in the commit, to be queued. The targets' stores stay locked until the commit is.
    fn hand_over(&self, commit: &mut Commit, now_ms: u64) -> Vec<HandedOver> {
        let mut handed = Vec::new();
        let mut queued = Vec::new();
        for new in std::mem::take(&mut commit.events) {
            let outcome = self.handle_now(&new, &commit.message_id, now_ms);
            metrics().count(
                "simrelay_events_total",
                "Events emitted, by target instance and path: handed over at once, or queued.",
                &[
                    ("instance", &new.target),
                    ("path", outcome.as_ref().map_or("queued", |_| "handed_over")),
                ],
            );
            match outcome {
                Some(outcome) => handed.push(outcome),
                None => queued.push(new),
            }
        }
        commit.events = queued;
        handed
    }

    /// Runs `new`'s call on its target now, on this thread, if the target is idle and the
    /// call succeeds.
    /// A failed call leaves the event to the queue and its retries.
    fn handle_now(&self, new: &QueuedEvent, message_id: &str, now_ms: u64) -> Option<HandedOver> {
        let target = self.instance(&new.target)?;
        // Behind a backlog, or an event in progress, the event waits its turn: checked
        // before the stores are tried, so a target working through a backlog is not
        // disturbed by every webhook, and again once they are held.
        if !target.events.is_idle() {
            return None;
        }
        let (active, guards) = target.try_lock()?;
        if !target.events.is_idle()
            || target.is_removed()
            || active.slow_events.load(Ordering::Relaxed) >= SLOW_HAND_OVERS
        {
            return None;
        }
        let _span =
            info_span!("event", message_id = %message_id, instance = %target.name).entered();
        let started = thread_cpu_time();
        let (result, commit) = self.call(
            &target,
            &active,
            message_id,
            now_ms,
            Input::Event(&new.event),
            |_, _| Consumed::Nothing,
        );
        if thread_cpu_time().saturating_sub(started) < HAND_OVER_BUDGET {
            active.slow_events.store(0, Ordering::Relaxed);
        } else if active.slow_events.fetch_add(1, Ordering::Relaxed) + 1 == SLOW_HAND_OVERS {
            warn!("its events take long: they are queued from now on, not handed over");
        }
        self.roll_back_if_failing(&target, &active);
        result.ok()?;
        Some((commit, active, guards))
    }

    /// The instance's crash policy: a version installed over a working one that keeps
    /// failing is replaced by the one before it.
    fn roll_back_if_failing(&self, instance: &Instance, active: &Arc<Active>) {
        let limit = active.config.rollback_after_failures;
        let failing = active.consecutive_failures.load(Ordering::Relaxed);
        if limit == 0 || failing < limit {
            return;
        }
        let Some(previous) = active.previous.first() else {
            return;
        };
        error!(
            instance = %instance.name,
            failed = failing,
            "plugin {} {} failed {failing} calls in a row: rolling back to {}",
            active.plugin.descriptor.name,
            active.plugin.descriptor.version,
            previous.plugin.descriptor.version
        );
        match self.activate(
            &instance.name,
            previous.config.clone(),
            previous.plugin.clone(),
            previous.hash.clone(),
            previous.previous.clone(),
        ) {
            Ok(restored) => {
                let current = instance.active();
                if Arc::ptr_eq(&current, active) {
                    if let Some(hook) = self.on_rollback.get() {
                        hook(&instance.name, &restored.config);
                    }
                    *instance.active.write().unwrap_or_else(|p| p.into_inner()) =
                        Arc::new(restored);
                    metrics().count(
                        "simrelay_rollbacks_total",
                        "Automatic rollbacks of failing plugin versions.",
                        &[("instance", &instance.name)],
                    );
                }
            }
            Err(cause) => error!("cannot roll back: {cause:#}"),
        }
    }

    /// Queues the commits as one transaction, makes their writes visible to the next calls
    /// on the same stores (each commit's in its own `stores`), and releases the stores.
    fn queue_commit(
        &self,
        commits: Vec<(Commit, Vec<Arc<StoreState>>)>,
        guards: Vec<StoreGuard>,
    ) -> Submitted {
        let (commits, stores): (Vec<Commit>, Vec<_>) = commits.into_iter().unzip();
        let writes: Vec<_> = commits.iter().map(|commit| commit.kv.clone()).collect();
        let (pending, on_disk) = self.submit_commits(commits);
        let sequence = pending.sequence();
        let mut layered = Vec::new();
        if let Some(sequence) = sequence {
            for (writes, stores) in writes.into_iter().zip(&stores) {
                for (label, writes) in writes {
                    if let Some(store) = stores.iter().find(|store| store.label == label) {
                        store.push_unflushed(sequence, writes);
                        layered.push(store.clone());
                    }
                }
            }
        }
        drop(guards);
        Submitted {
            pending,
            after: AfterCommit {
                sequence,
                layered,
                on_disk,
                ..Default::default()
            },
        }
    }

    /// Hands what a commit added to the workers, new deliveries' records with them.
    fn schedule(&self, committed: &mut Committed) {
        if committed.duplicate_deliveries > 0 {
            info!(
                dropped = committed.duplicate_deliveries,
                "dropped deliveries already asked for"
            );
        }
        let mut fresh = self
            .fresh_deliveries
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        for record in committed.deliveries.drain(..) {
            self.deliveries.schedule(record.created_ms, record.id);
            if fresh.len() < MAX_FRESH_DELIVERIES {
                fresh.insert(record.id, record);
            }
        }
    }

    /// A delivery's record as its attempt starts: a new delivery's as the commit that
    /// added it left it, any other's from the database.
    pub fn delivery_record(&self, id: u64) -> Result<Option<DeliveryRecord>> {
        let fresh = self
            .fresh_deliveries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
        match fresh {
            Some(record) => Ok(Some(record)),
            None => self.db.delivery(id),
        }
    }
}

/// A failed call's cause, as metrics name it.
fn cause(error: &CallError) -> &'static str {
    match error {
        CallError::Plugin(_) => "plugin_error",
        CallError::Trap(_) => "trap",
        CallError::Deadline(_) => "deadline",
        CallError::OutOfMemory(_) => "memory",
    }
}

/// Checks that `plugin` gets what it declares it needs from `config`.
fn check_needs(name: &str, config: &InstanceConfig, plugin: &LoadedPlugin) -> Result<()> {
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
    Ok(())
}

/// Starts the workers of every instance.
pub fn spawn_workers(relay: &Arc<Relay>) {
    for instance in relay.instances() {
        spawn_instance_workers(relay, &instance);
    }
}

/// Feeds the instance its queued events, in order, and calls its `on-tick` while it asks
/// for ticks, until it is removed. Instances run side by side.
pub fn spawn_instance_workers(relay: &Arc<Relay>, instance: &Arc<Instance>) {
    let (worker, target) = (relay.clone(), instance.clone());
    tokio::spawn(async move {
        loop {
            let ids = tokio::select! {
                ids = target.events.hold_due(EVENT_BATCH) => ids,
                () = target.stopped() => return,
            };
            // A backlog is worked through a batch at a time on one thread: one event per turn
            // would get this worker a turn as often as each webhook, and never catch up.
            let submitted = crate::worker::block_here(|| {
                ids.iter()
                    .filter_map(|id| {
                        // A host bug on one event leaves it for a restart; the rest go on,
                        // and the commits already queued are seen through.
                        let one = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                            worker.submit_event(&target, *id)
                        }));
                        // Its commit is queued: an event handed over from now on comes after it.
                        target.events.release();
                        Some((*id, one.ok()??))
                    })
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default();
            let relay = worker.clone();
            // The next events may start while these commits reach the disk.
            tokio::spawn(async move {
                for (id, submitted) in submitted {
                    if let Err(error) = submitted.durable(&relay).await {
                        warn!(
                            event = id,
                            "cannot store the outcome of an event: {error:#}"
                        );
                    }
                }
            });
        }
    });
    let (relay, instance) = (relay.clone(), instance.clone());
    tokio::spawn(async move {
        loop {
            // The interval may change with the version; idle instances look again later.
            let interval = instance.active().tick_interval;
            tokio::select! {
                () = tokio::time::sleep(interval.unwrap_or(Duration::from_secs(5))) => {}
                () = instance.stopped() => return,
            }
            if interval.is_none() || instance.is_removed() {
                continue;
            }
            let (relay, instance) = (relay.clone(), instance.clone());
            let _ = tokio::task::spawn_blocking(move || relay.tick(&instance)).await;
        }
    });
}

/// Runs retention every minute, sooner while there is a backlog to compact.
pub fn spawn_retention(relay: &Arc<Relay>, retention: Retention) {
    let relay = relay.clone();
    tokio::spawn(async move {
        loop {
            let (relay, retention) = (relay.clone(), retention.clone());
            let more = tokio::task::spawn_blocking(move || relay.compact(&retention))
                .await
                .ok()
                .and_then(|result| {
                    result
                        .map_err(|error| warn!("retention failed: {error:#}"))
                        .ok()
                })
                .unwrap_or(false);
            tokio::time::sleep(if more {
                Duration::from_millis(100)
            } else {
                Duration::from_secs(60)
            })
            .await;
        }
    });
}

/// The CPU time this thread has used.
fn thread_cpu_time() -> Duration {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid timespec to write; this clock exists on every Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
}
