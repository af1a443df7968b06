//! The embedded on-disk database: plugin key-value state, deliveries and queued events.
//!
//! Everything one plugin call produced (its key-value writes, the deliveries it asked for,
//! the events for downstream instances, and the fate of the input it consumed) commits in
//! one durable transaction, so a crash leaves either all of it or none of it. Commits queue
//! in order; a committer thread writes all that are waiting in one transaction with one
//! fsync of the journal (group commit).
//!
//! The store is fjall, an LSM tree ([`store`]): a write goes to its journal and to memory,
//! and reaches sorted table files later, in the background. A randomly keyed write (a
//! de-duplication mark, a push record, a delivery key) so costs about what a sequential one
//! does, where a B-tree copies and rewrites a page for each.

mod faults;
mod import;
mod kv_cache;
mod store;
mod tally;

use std::collections::BTreeMap;
use std::ops::Bound;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};

use anyhow::{Context, Result};
use fjall::{PersistMode, SingleWriterTxDatabase};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::oneshot;

use crate::kv::KvWrites;
use crate::model::{Event, OutgoingRequest};
use crate::send::SentMessage;
use kv_cache::KvCache;
use simrelay_core::relay::{DeliveryRecord, QueuedEvent};
use simrelay_core::retry::DeliveryState;
use store::{Bytes, Table, Text, TextPair, U64, U64Pair, Unit, WriteTxn};
use tally::{Change, DeliveryTally};

/// The environment variable that turns on [`faults::Faults`] for tests.
const FAULT_FILE_VAR: &str = "SIMRELAY_FAULT_FILE";

/// The store's directory inside the data directory.
const STORE_DIR: &str = "store";

/// The layout this build writes; a store of a newer layout is refused.
const SCHEMA: u64 = 1;

/// Every table of the store.
struct Store {
    db: SingleWriterTxDatabase,
    /// (store label, key) → value.
    kv: Table<TextPair, Bytes>,
    /// delivery id → JSON [`DeliveryRecord`].
    deliveries: Table<U64, Text>,
    /// delivery id → when it is due, for every pending delivery: start-up reads only these.
    pending: Table<U64, U64>,
    /// (instance, idempotency key) → delivery id.
    keys: Table<TextPair, U64>,
    /// (when it finished, delivery id) for every delivered or dead delivery, oldest first:
    /// retention walks it from the start.
    finished: Table<U64Pair, Unit>,
    /// event id → JSON [`QueuedEvent`]; an event leaves once its target handled it.
    events: Table<U64, Text>,
    /// (when it finished, delivery id) → (instance, idempotency key) of deliveries whose
    /// record retention removed, while their key still guards against a second delivery.
    retired: Table<U64Pair, TextPair>,
    /// record id → JSON [`Observed`]: messages plugins reported, newest last.
    messages: Table<U64, Text>,
    /// (reporting instance, device/port/iccid) → JSON [`Observed`]: the last status of
    /// each SIM.
    sims: Table<TextPair, Text>,
    /// send request id → JSON [`SentMessage`]: SMS asked for through the send API, and how
    /// far they got.
    sent: Table<Text, Text>,
    /// `next_id`, `next_message`, `schema`.
    counters: Table<Text, U64>,
}

/// Blocks read from table files, kept in memory: hot state (open activations, live marks,
/// pending deliveries) is mostly still in the write buffers, so this serves colder reads.
const CACHE_BYTES: u64 = 16 << 20;
/// The journals kept before fjall flushes the write buffers holding their oldest writes.
/// At its least (64 MiB) that forced every keyspace to flush at once, every few seconds
/// under load; start-up replays at most this much.
const JOURNAL_BYTES: u64 = 512 << 20;

impl Store {
    /// The pending deliveries by instance and the finished ones' count, from the tables:
    /// once, when the database opens.
    fn count_deliveries(&self) -> Result<DeliveryTally> {
        let snapshot = self.db.read_tx();
        let mut pending = Vec::new();
        for entry in self.pending.iter(&snapshot) {
            let id = entry?.0;
            if let Some(json) = self.deliveries.get(&snapshot, id)? {
                let record: DeliveryRecord = parse(self.deliveries.name(), &json)?;
                pending.push((record.instance, record.created_ms, id));
            }
        }
        Ok(DeliveryTally::new(pending, self.finished.count(&snapshot)?))
    }

    fn open(path: &Path) -> Result<Self> {
        let db = SingleWriterTxDatabase::builder(path)
            .cache_size(CACHE_BYTES)
            .max_journaling_size(JOURNAL_BYTES)
            // Flushes and compactions on one thread: the other core serves requests.
            .worker_threads(1)
            .open()
            .with_context(|| format!("cannot open database {}", path.display()))?;
        Ok(Store {
            kv: Table::open(&db, "kv")?,
            deliveries: Table::open(&db, "deliveries")?,
            pending: Table::open(&db, "pending_deliveries")?,
            keys: Table::open(&db, "delivery_keys")?,
            finished: Table::open(&db, "finished_deliveries")?,
            events: Table::open(&db, "events")?,
            retired: Table::open(&db, "retired_delivery_keys")?,
            messages: Table::open(&db, "messages")?,
            sims: Table::open(&db, "sims")?,
            sent: Table::open(&db, "sent_messages")?,
            counters: Table::open(&db, "counters")?,
            db,
        })
    }

    fn read_one<K: store::Codec, T: DeserializeOwned>(
        &self,
        table: &Table<K, Text>,
        key: K::In<'_>,
    ) -> Result<Option<T>> {
        table
            .get(&self.db.read_tx(), key)?
            .map(|json| parse(table.name(), &json))
            .transpose()
    }

    fn read_all<T: DeserializeOwned>(&self, table: &Table<U64, Text>) -> Result<Vec<T>> {
        table
            .iter(&self.db.read_tx())
            .map(|entry| parse(table.name(), &entry?.1))
            .collect()
    }
}

/// A read snapshot of the key-value table: see [`Db::kv_snapshot`].
pub struct KvSnapshot {
    store: Arc<Store>,
    cache: Arc<KvCache>,
    /// The store's snapshot, taken at the first read the cache cannot answer, with the
    /// cache's generation just before.
    taken: std::cell::OnceCell<(u64, fjall::Snapshot)>,
}

impl KvSnapshot {
    /// The label's values of `keys`, in order. Entries the cache holds are the latest
    /// committed values, which for a call are the snapshot's: the only writes to its stores
    /// committed while it runs are those of calls before it, which it reads from their
    /// unflushed layers ([`crate::kv`]).
    pub fn get_many(&self, label: &str, keys: &[&str]) -> Result<Vec<Option<Vec<u8>>>> {
        let mut values = self.cache.get_many(label, keys);
        let mut missed = Vec::new();
        for (index, (key, value)) in keys.iter().zip(&mut values).enumerate() {
            if value.is_none() {
                *value = Some(self.store.kv.get(self.snapshot(), (label, *key))?);
                missed.push(index);
            }
        }
        if let (false, Some((generation, _))) = (missed.is_empty(), self.taken.get()) {
            let read = missed
                .iter()
                .filter_map(|&index| Some((keys[index], values[index].as_ref()?)));
            self.cache.fill(*generation, label, read);
        }
        Ok(values.into_iter().map(Option::flatten).collect())
    }

    fn snapshot(&self) -> &fjall::Snapshot {
        &self
            .taken
            .get_or_init(|| (self.cache.generation(), self.store.db.read_tx()))
            .1
    }

    /// At most `limit` of the label's keys after `cursor` (from the first when `None`), in
    /// order, and whether they are the last.
    pub fn keys(
        &self,
        label: &str,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<String>, bool)> {
        let mut keys = Vec::new();
        let bounds = TextPair::bounds(label, cursor);
        for entry in self.store.kv.range_bytes(self.snapshot(), bounds) {
            if keys.len() == limit {
                return Ok((keys, false));
            }
            keys.push(entry?.0.1);
        }
        Ok((keys, true))
    }
}

/// A delivery asked for by a call, before it has an id.
pub struct NewDelivery {
    pub idempotency_key: String,
    pub request: OutgoingRequest,
}

/// Something a plugin reported, as the host keeps it for operators.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct Observed<T> {
    pub at_ms: u64,
    /// The instance whose plugin reported it.
    pub instance: String,
    pub message_id: String,
    #[serde(flatten)]
    pub what: T,
}

/// A filter over stored deliveries; `None` matches anything.
#[derive(Default, Debug, serde::Deserialize)]
pub struct DeliveryFilter {
    pub state: Option<String>,
    pub instance: Option<String>,
    pub message_id: Option<String>,
    /// Asked for at or after, ms since the epoch.
    pub since_ms: Option<u64>,
    /// Asked for before, ms since the epoch.
    pub until_ms: Option<u64>,
    /// At most this many, newest first (default 100).
    pub limit: Option<usize>,
}

impl DeliveryFilter {
    fn matches(&self, record: &DeliveryRecord) -> bool {
        self.state
            .as_deref()
            .is_none_or(|state| state == record.state.name())
            && self
                .instance
                .as_deref()
                .is_none_or(|name| name == record.instance)
            && self
                .message_id
                .as_deref()
                .is_none_or(|id| id == record.message_id)
            && self.since_ms.is_none_or(|since| record.created_ms >= since)
            && self.until_ms.is_none_or(|until| record.created_ms < until)
    }
}

/// How long finished work is kept (`[host.retention]`).
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Retention {
    /// Delivered and dead deliveries, with their attempt logs.
    pub deliveries_hours: f64,
    /// Idempotency keys of finished deliveries: within this, a plugin asking again for a
    /// key it used gets no second delivery. At least `deliveries_hours`.
    pub dedupe_hours: f64,
    /// The messages and SIM states plugins reported, kept for operators, and the send API's
    /// records of SMS not updated since.
    pub messages_hours: f64,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            deliveries_hours: 7.0 * 24.0,
            dedupe_hours: 30.0 * 24.0,
            messages_hours: 7.0 * 24.0,
        }
    }
}

/// What one retention pass removed.
#[derive(Default, Debug, Serialize)]
pub struct Compacted {
    pub deliveries: usize,
    pub delivery_keys: usize,
    pub messages: usize,
    pub sims: usize,
    pub sent: usize,
}

/// The most records one retention pass removes, so it never holds the writer for long.
pub const COMPACT_BATCH: usize = 5_000;

/// What happens to the input a call consumed.
#[derive(Default)]
pub enum Consumed {
    #[default]
    /// A webhook or a tick: nothing stored to update.
    Nothing,
    EventHandled(u64),
    EventFailed(QueuedEvent),
    DeliveryUpdated {
        record: DeliveryRecord,
        /// When the stored record it replaces finished, if it had: that entry of the
        /// finished index goes. The caller read that record, so the committer need not.
        replaced_finished_at: Option<u64>,
    },
}

/// The whole outcome of one plugin call.
#[derive(Default)]
pub struct Commit {
    pub instance: String,
    pub message_id: String,
    pub now_ms: u64,
    /// (store label, writes).
    pub kv: Vec<(String, Arc<KvWrites>)>,
    pub deliveries: Vec<NewDelivery>,
    /// Events to queue, their ids given by [`Db::allocate_id`] when they were emitted.
    pub events: Vec<QueuedEvent>,
    pub consumed: Consumed,
    /// The newest queued commit whose writes the call read: the outcome is not durable
    /// before that commit is.
    pub read_unflushed: Option<u64>,
    /// The events the call emitted, before fan-out, kept for operators; delivery statuses
    /// also update the send API's records of the emitting instance.
    pub observed: Vec<Event>,
    /// Send API records to create.
    pub sends: Vec<SentMessage>,
    /// Retention to run in the same queue of commits: the committer is the only writer.
    pub compact: Option<(Retention, u64)>,
}

impl Commit {
    fn is_empty(&self) -> bool {
        self.kv.is_empty()
            && self.deliveries.is_empty()
            && self.events.is_empty()
            && self.observed.is_empty()
            && self.sends.is_empty()
            && self.compact.is_none()
            && matches!(self.consumed, Consumed::Nothing)
    }
}

/// What a commit added, for the workers to schedule.
#[derive(Default, Debug)]
pub struct Committed {
    /// Each new delivery's record, pending, due at once.
    pub deliveries: Vec<DeliveryRecord>,
    /// Deliveries dropped because the instance already had one with the same key.
    pub duplicate_deliveries: usize,
    /// What retention removed, when the commit ran it.
    pub compacted: Option<Compacted>,
}

impl Committed {
    fn absorb(&mut self, other: Committed) {
        self.deliveries.extend(other.deliveries);
        self.duplicate_deliveries += other.duplicate_deliveries;
        self.compacted = self.compacted.take().or(other.compacted);
    }
}

/// A commit's reply: answered from the committer thread, awaited by a task or a thread.
type Reply = oneshot::Sender<Result<Committed, String>>;

/// Commits that share one transaction, and one reply.
type CommitJob = (u64, Vec<Commit>, Reply);

/// The queue into the committer thread; the sequence is taken under the same lock as the
/// send, so the committer sees commits in sequence order.
struct Queue {
    sender: mpsc::Sender<CommitJob>,
    next_sequence: u64,
}

pub struct Db {
    store: Arc<Store>,
    kv_cache: Arc<KvCache>,
    tally: Arc<Mutex<DeliveryTally>>,
    /// Every commit up to this sequence is durable.
    durable: Arc<AtomicU64>,
    /// The next delivery or event id; the committer stores it with every batch.
    next_id: Arc<AtomicU64>,
    /// `None` only while dropping.
    queue: Mutex<Option<Queue>>,
    committer: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Db {
    /// Lets the committer finish what was submitted, so the file is closed on return.
    fn drop(&mut self) {
        self.queue.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(thread) = self.committer.take() {
            let _ = thread.join();
        }
    }
}

/// A commit on its way to disk.
pub struct PendingCommit {
    sequence: Option<u64>,
    state: PendingState,
}

enum PendingState {
    Done(Committed),
    Waiting(oneshot::Receiver<Result<Committed, String>>),
}

impl PendingCommit {
    /// The commit's place in the queue, when it writes anything.
    pub fn sequence(&self) -> Option<u64> {
        self.sequence
    }

    /// Blocks until the commit, and every commit it read from, is durable. Not from a task:
    /// there, [`PendingCommit::durable`].
    pub fn wait(self) -> Result<Committed> {
        match self.state {
            PendingState::Done(committed) => Ok(committed),
            PendingState::Waiting(reply) => Self::answer(reply.blocking_recv()),
        }
    }

    /// Resolves once the commit, and every commit it read from, is durable.
    pub async fn durable(self) -> Result<Committed> {
        match self.state {
            PendingState::Done(committed) => Ok(committed),
            PendingState::Waiting(reply) => Self::answer(reply.await),
        }
    }

    fn answer(
        reply: Result<Result<Committed, String>, oneshot::error::RecvError>,
    ) -> Result<Committed> {
        match reply {
            Ok(result) => result.map_err(anyhow::Error::msg),
            Err(_) => anyhow::bail!("the database committer stopped"),
        }
    }
}
/// The most waiting commits that share one transaction, and so one fsync.
const MAX_BATCH: usize = 256;

/// How long the committer looks for the next commit before it sleeps. At a moderate load
/// the next commit often comes within this; yielding meanwhile takes only time no other
/// thread wants, and spares a sleep and a wake-up in that commit's path. Alternating runs
/// at half load: fewer runs with a long tail (BENCHMARKS.md, thirteenth pass).
const LOOK_BEFORE_SLEEP: std::time::Duration = std::time::Duration::from_micros(100);

/// The next commit: looked for during [`LOOK_BEFORE_SLEEP`], then waited for. `None` once
/// the database is closing and nothing is left.
fn next_job(queue: &mpsc::Receiver<CommitJob>) -> Option<CommitJob> {
    let until = std::time::Instant::now() + LOOK_BEFORE_SLEEP;
    loop {
        match queue.try_recv() {
            Ok(job) => return Some(job),
            Err(mpsc::TryRecvError::Disconnected) => return None,
            Err(mpsc::TryRecvError::Empty) if std::time::Instant::now() < until => {
                std::thread::yield_now()
            }
            Err(mpsc::TryRecvError::Empty) => return queue.recv().ok(),
        }
    }
}

/// The committer thread's share of the database.
struct Committer {
    store: Arc<Store>,
    kv_cache: Arc<KvCache>,
    tally: Arc<Mutex<DeliveryTally>>,
    faults: Option<faults::Faults>,
    /// Every commit up to this sequence is durable.
    durable: Arc<AtomicU64>,
    next_id: Arc<AtomicU64>,
}

impl Committer {
    /// Applies queued commits in order, as many per transaction as are waiting.
    ///
    /// A failed transaction stops the process: later calls may already have read that
    /// batch's writes, and none of its commits was acknowledged, so a restart loses nothing.
    ///
    /// A commit with nothing to write only waits for the commits queued before it: a batch
    /// of such commits needs no transaction.
    fn run(self, queue: mpsc::Receiver<CommitJob>) {
        while let Some(first) = next_job(&queue) {
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match queue.try_recv() {
                    Ok(next) => batch.push(next),
                    Err(_) => break,
                }
            }
            let started = std::time::Instant::now();
            let writes = batch
                .iter()
                .filter(|(_, commits, _)| commits.iter().any(|commit| !commit.is_empty()))
                .count();
            let result = if writes == 0 {
                Ok(batch.iter().map(|_| Committed::default()).collect())
            } else {
                self.write(&mut batch)
            };
            let last = batch.last().map_or(0, |(sequence, _, _)| *sequence);
            if writes > 0 {
                let metrics = crate::metrics::metrics();
                metrics.batch(
                    "simrelay_commit_batch_size",
                    "Call outcomes per transaction.",
                    writes,
                );
                metrics.latency(
                    "simrelay_commit_seconds",
                    "Time to write and fsync one transaction.",
                    &[],
                    started.elapsed(),
                );
            }
            match result {
                Ok(committed) => {
                    self.durable.store(last, Ordering::Release);
                    for ((_, _, reply), committed) in batch.into_iter().zip(committed) {
                        let _ = reply.send(Ok(committed));
                    }
                }
                Err(error) => {
                    let message = format!("database commit failed: {error:#}");
                    for (_, _, reply) in batch {
                        let _ = reply.send(Err(message.clone()));
                    }
                    tracing::error!(
                        "{message}; stopping so that nothing acknowledged is lost. Nothing in \
                         the failed batch was acknowledged; after a restart the senders' \
                         retries are accepted again once the disk can be written"
                    );
                    std::process::exit(70);
                }
            }
        }
    }

    /// Writes the batch's commits in one durable transaction.
    fn write(&self, batch: &mut [CommitJob]) -> Result<Vec<Committed>> {
        let mut tables = Tables::begin(&self.store, &self.next_id)?;
        let mut kv = Vec::new();
        let committed = batch
            .iter_mut()
            .map(|(_, commits, _)| {
                let mut committed = Committed::default();
                for commit in commits.drain(..).filter(|commit| !commit.is_empty()) {
                    kv.extend(commit.kv.iter().cloned());
                    committed.absorb(apply(&mut tables, commit)?);
                }
                Ok(committed)
            })
            .collect::<Result<Vec<_>>>()?;
        let changes = std::mem::take(&mut tables.changes);
        tables.commit(self.faults.as_ref())?;
        self.kv_cache.committed(&kv);
        self.tally
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .apply(changes);
        Ok(committed)
    }
}

impl Db {
    /// Opens (or creates) the database in `data_dir`; fails when it cannot be written.
    pub fn open(data_dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(data_dir)
            .with_context(|| format!("cannot create data directory {}", data_dir.display()))?;
        let faults =
            std::env::var_os(FAULT_FILE_VAR).map(|trigger| faults::Faults::new(trigger.into()));
        let store = Arc::new(Store::open(&data_dir.join(STORE_DIR))?);
        import::earlier_database(data_dir, &store)?;
        let next_id = Arc::new(AtomicU64::new(0));
        let counters = store.db.read_tx();
        let schema = store.counters.get(&counters, "schema")?;
        if schema.is_some_and(|schema| schema > SCHEMA) {
            anyhow::bail!(
                "the database in {} has layout {} and this build reads up to {SCHEMA}: it was \
                 written by a newer simrelay",
                data_dir.display(),
                schema.unwrap_or_default()
            );
        }
        let stored_next_id = store.counters.get(&counters, "next_id")?;
        next_id.store(stored_next_id.unwrap_or(1), Ordering::Relaxed);
        // A durable write now: a host that cannot write learns it before it accepts work.
        let mut tables = Tables::begin(&store, &next_id)?;
        store.counters.insert(&mut tables.txn, "schema", SCHEMA);
        tables
            .commit(faults.as_ref())
            .with_context(|| format!("cannot write the database in {}", data_dir.display()))?;
        let tally = Arc::new(Mutex::new(store.count_deliveries()?));
        let durable = Arc::new(AtomicU64::new(0));
        let (sender, receiver) = mpsc::channel();
        let kv_cache = Arc::new(KvCache::default());
        let committer = Committer {
            store: store.clone(),
            kv_cache: kv_cache.clone(),
            tally: tally.clone(),
            faults,
            durable: durable.clone(),
            next_id: next_id.clone(),
        };
        let committer = std::thread::Builder::new()
            .name("db-committer".into())
            .spawn(move || committer.run(receiver))?;
        Ok(Db {
            store,
            kv_cache,
            tally,
            durable,
            next_id,
            queue: Mutex::new(Some(Queue {
                sender,
                next_sequence: 1,
            })),
            committer: Some(committer),
        })
    }

    /// A new delivery or event id, never given before, even across restarts: the committer
    /// stores the next one with every batch, so any id in a durable record is below it.
    pub fn allocate_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    pub fn kv_get(&self, label: &str, key: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.kv_snapshot().get_many(label, &[key])?.pop().flatten())
    }

    /// The committed values of every store, for reads that belong together (one plugin
    /// call's): one snapshot however many reads, taken at the first.
    pub fn kv_snapshot(&self) -> KvSnapshot {
        KvSnapshot {
            store: self.store.clone(),
            cache: self.kv_cache.clone(),
            taken: std::cell::OnceCell::new(),
        }
    }

    /// Queues a commit; it becomes durable, in submission order, with the batch it joins.
    pub fn submit(&self, commit: Commit) -> PendingCommit {
        self.submit_together(vec![commit])
    }

    /// Queues commits that become durable together, in one transaction, or not at all.
    pub fn submit_together(&self, commits: Vec<Commit>) -> PendingCommit {
        let writes = commits.iter().any(|commit| !commit.is_empty());
        let read = commits
            .iter()
            .filter_map(|commit| commit.read_unflushed)
            .max();
        if !writes && read.is_none_or(|read| read <= self.durable.load(Ordering::Acquire)) {
            // Nothing to write, nothing unflushed read: spare the queue.
            return PendingCommit {
                sequence: None,
                state: PendingState::Done(Committed::default()),
            };
        }
        let (reply, receiver) = oneshot::channel();
        let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        // A send fails only once the committer is gone; waiting then reports it.
        let sequence = queue.as_mut().map(|queue| {
            let sequence = queue.next_sequence;
            queue.next_sequence += 1;
            let _ = queue.sender.send((sequence, commits, reply));
            sequence
        });
        PendingCommit {
            sequence: sequence.filter(|_| writes),
            state: PendingState::Waiting(receiver),
        }
    }

    pub fn delivery(&self, id: u64) -> Result<Option<DeliveryRecord>> {
        self.store.read_one(&self.store.deliveries, id)
    }

    pub fn queued_event(&self, id: u64) -> Result<Option<QueuedEvent>> {
        self.store.read_one(&self.store.events, id)
    }

    /// (due, id) of every pending delivery.
    pub fn pending_deliveries(&self) -> Result<Vec<(u64, u64)>> {
        self.store
            .pending
            .iter(&self.store.db.read_tx())
            .map(|entry| entry.map(|(id, due)| (due, id)))
            .collect()
    }

    pub fn deliveries(&self) -> Result<Vec<DeliveryRecord>> {
        self.store.read_all(&self.store.deliveries)
    }

    /// Deliveries matching `filter`, newest first.
    pub fn find_deliveries(&self, filter: &DeliveryFilter) -> Result<Vec<DeliveryRecord>> {
        let table = &self.store.deliveries;
        let limit = filter.limit.unwrap_or(100);
        let mut found = Vec::new();
        for entry in table.iter(&self.store.db.read_tx()).rev() {
            let record: DeliveryRecord = parse(table.name(), &entry?.1)?;
            // Ids grow with time: once older than the window, everything after is too.
            if filter
                .since_ms
                .is_some_and(|since| record.created_ms < since)
            {
                break;
            }
            if filter.matches(&record) {
                found.push(record);
                if found.len() >= limit {
                    break;
                }
            }
        }
        Ok(found)
    }

    fn tally(&self) -> std::sync::MutexGuard<'_, DeliveryTally> {
        self.tally.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Per instance: pending deliveries, and when the oldest of them was asked for.
    pub fn pending_by_instance(&self) -> BTreeMap<String, (u64, u64)> {
        self.tally().pending_by_instance()
    }

    /// How many deliveries are durably pending, and how many finished ones are kept.
    pub fn delivery_counts(&self) -> (u64, u64) {
        self.tally().counts()
    }

    /// A send API record, by its id.
    pub fn sent_message(&self, id: &str) -> Result<Option<SentMessage>> {
        self.store.read_one(&self.store.sent, id)
    }

    /// The latest messages plugins reported, newest first.
    pub fn recent_messages(
        &self,
        limit: usize,
    ) -> Result<Vec<Observed<crate::model::ReceivedMessage>>> {
        let table = &self.store.messages;
        table
            .iter(&self.store.db.read_tx())
            .rev()
            .take(limit)
            .map(|entry| parse(table.name(), &entry?.1))
            .collect()
    }

    /// Messages reported since `since_ms`, for rates.
    ///
    /// Record ids are given one after another as records commit, and retention removes the
    /// oldest first, so the ids kept have no gaps (were there any, the count would include
    /// them) and their times grow with them (but for calls committed together, a few ms
    /// apart). So the first record at `since_ms` or later is found by bisecting ids,
    /// reading a few dozen records at most, not each one of the last minute: a busy relay
    /// makes hundreds of thousands a minute.
    pub fn messages_since(&self, since_ms: u64) -> Result<usize> {
        #[derive(serde::Deserialize)]
        struct At {
            at_ms: u64,
        }
        let table = &self.store.messages;
        let snapshot = self.store.db.read_tx();
        // The id and time of the record at `id`, or of the first after it.
        let at_or_after = |id: u64| -> Result<Option<(u64, u64)>> {
            table
                .range(&snapshot, (Bound::Included(id), Bound::Unbounded))
                .next()
                .transpose()?
                .map(|(id, json)| Ok((id, parse::<At>(table.name(), &json)?.at_ms)))
                .transpose()
        };
        let (Some(first), Some(last)) = (
            table.iter(&snapshot).next(),
            table.iter(&snapshot).next_back(),
        ) else {
            return Ok(0);
        };
        let (first, last) = (first?.0, last?.0);
        // Every record below `low` is older than `since_ms`, and `high` or the first record
        // after it is not (last + 1: none is). Each turn narrows the range, gaps or not.
        let (mut low, mut high) = (first, last + 1);
        while low < high {
            let middle = low + (high - low) / 2;
            match at_or_after(middle)? {
                Some((id, at_ms)) if at_ms < since_ms => low = id + 1,
                _ => high = middle,
            }
        }
        Ok((last + 1 - low) as usize)
    }

    /// The last status of every SIM the plugins reported.
    pub fn sims(&self) -> Result<Vec<Observed<crate::model::SimStatus>>> {
        let table = &self.store.sims;
        table
            .iter(&self.store.db.read_tx())
            .map(|entry| parse(table.name(), &entry?.1))
            .collect()
    }

    pub fn queued_events(&self) -> Result<Vec<QueuedEvent>> {
        self.store.read_all(&self.store.events)
    }
}

/// The committer's transaction over every table, with the counters it keeps.
struct Tables<'a> {
    txn: WriteTxn<'a>,
    store: &'a Store,
    /// The next delivery or event id, shared with the relay, which gives events theirs.
    next_id: &'a AtomicU64,
    /// The next message record id.
    next_message: u64,
    /// What the transaction did to the delivery indexes, for the tally once it is durable.
    changes: Vec<Change>,
}

impl<'a> Tables<'a> {
    fn begin(store: &'a Store, next_id: &'a AtomicU64) -> Result<Self> {
        let txn = store.db.write_tx().durability(Some(PersistMode::SyncData));
        let next_message = store.counters.get(&txn, "next_message")?.unwrap_or(1);
        Ok(Tables {
            txn,
            store,
            next_id,
            next_message,
            changes: Vec::new(),
        })
    }

    /// Stores the counters and commits durably.
    fn commit(mut self, faults: Option<&faults::Faults>) -> Result<()> {
        let counters = &self.store.counters;
        counters.insert(
            &mut self.txn,
            "next_id",
            self.next_id.load(Ordering::Relaxed),
        );
        counters.insert(&mut self.txn, "next_message", self.next_message);
        if let Some(faults) = faults {
            faults.before_commit()?;
        }
        Ok(self.txn.commit()?)
    }

    fn allocate_id(&mut self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }
}

/// Writes one call's outcome into the batch's transaction.
fn apply(tables: &mut Tables, commit: Commit) -> Result<Committed> {
    let store = tables.store;
    let mut committed = Committed::default();
    for (label, writes) in &commit.kv {
        for (key, value) in writes.iter() {
            let key = (label.as_str(), key.as_str());
            match value {
                Some(value) => store.kv.insert(&mut tables.txn, key, value),
                None => store.kv.remove(&mut tables.txn, key),
            }
        }
    }
    for delivery in commit.deliveries {
        let unique = (commit.instance.as_str(), delivery.idempotency_key.as_str());
        if store.keys.get(&tables.txn, unique)?.is_some() {
            committed.duplicate_deliveries += 1;
            continue;
        }
        let record = DeliveryRecord {
            id: tables.allocate_id(),
            instance: commit.instance.clone(),
            idempotency_key: delivery.idempotency_key.clone(),
            message_id: commit.message_id.clone(),
            request: delivery.request,
            created_ms: commit.now_ms,
            attempts: 0,
            state: DeliveryState::Pending {
                next_attempt_ms: commit.now_ms,
            },
            last_result: None,
            history: Vec::new(),
        };
        store.keys.insert(&mut tables.txn, unique, record.id);
        store
            .deliveries
            .insert(&mut tables.txn, record.id, &json(&record)?);
        store
            .pending
            .insert(&mut tables.txn, record.id, commit.now_ms);
        tables.changes.push(Change::Pending {
            instance: record.instance.clone(),
            created_ms: record.created_ms,
            id: record.id,
            pending: true,
        });
        committed.deliveries.push(record);
    }
    for queued in &commit.events {
        store
            .events
            .insert(&mut tables.txn, queued.id, &json(queued)?);
    }
    match &commit.consumed {
        Consumed::EventHandled(id) => store.events.remove(&mut tables.txn, *id),
        Consumed::EventFailed(queued) => {
            store
                .events
                .insert(&mut tables.txn, queued.id, &json(queued)?);
        }
        Consumed::DeliveryUpdated {
            record,
            replaced_finished_at,
        } => store_delivery(tables, record, *replaced_finished_at)?,
        Consumed::Nothing => {}
    }
    if let Some((retention, now_ms)) = &commit.compact {
        committed.compacted = Some(compact(tables, retention, *now_ms)?);
    }
    for record in &commit.sends {
        store
            .sent
            .insert(&mut tables.txn, record.id.as_str(), &json(record)?);
    }
    observe(
        tables,
        &commit.instance,
        &commit.message_id,
        commit.now_ms,
        commit.observed,
    )?;
    Ok(committed)
}

/// Writes a delivery's record and keeps the pending and finished indexes in step.
fn store_delivery(
    tables: &mut Tables,
    record: &DeliveryRecord,
    replaced_finished_at: Option<u64>,
) -> Result<()> {
    let Tables {
        txn,
        store,
        changes,
        ..
    } = tables;
    // Retention may have removed it since the caller read the record: count what goes.
    if let Some(at_ms) = replaced_finished_at
        && store.finished.take(txn, (at_ms, record.id))?.is_some()
    {
        changes.push(Change::Finished(-1));
    }
    let pending = matches!(record.state, DeliveryState::Pending { .. });
    match &record.state {
        DeliveryState::Pending { next_attempt_ms } => {
            store.pending.insert(txn, record.id, *next_attempt_ms);
        }
        DeliveryState::Delivered { at_ms } | DeliveryState::Dead { at_ms, .. } => {
            store.pending.remove(txn, record.id);
            store.finished.insert(txn, (*at_ms, record.id), ());
            changes.push(Change::Finished(1));
        }
    }
    changes.push(Change::Pending {
        instance: record.instance.clone(),
        created_ms: record.created_ms,
        id: record.id,
        pending,
    });
    store.deliveries.insert(txn, record.id, &json(record)?);
    Ok(())
}

/// Removes what `retention` no longer keeps, at most [`COMPACT_BATCH`] records of a kind.
fn compact(tables: &mut Tables, retention: &Retention, now_ms: u64) -> Result<Compacted> {
    let Tables {
        txn,
        store,
        changes,
        ..
    } = tables;
    let age_ms = |hours: f64| (hours.max(0.0) * 3_600_000.0) as u64;
    let delivery_cutoff = now_ms.saturating_sub(age_ms(retention.deliveries_hours));
    let key_cutoff = now_ms.saturating_sub(age_ms(
        retention.dedupe_hours.max(retention.deliveries_hours),
    ));
    let message_cutoff = now_ms.saturating_sub(age_ms(retention.messages_hours));
    let mut compacted = Compacted::default();
    let old: Vec<(u64, u64)> = store
        .finished
        .range(
            txn,
            (Bound::Unbounded, Bound::Excluded((delivery_cutoff, 0))),
        )
        .take(COMPACT_BATCH)
        .map(|entry| entry.map(|(key, ())| key))
        .collect::<Result<_>>()?;
    changes.push(Change::Finished(-(old.len() as i64)));
    for (finished_ms, id) in old {
        store.finished.remove(txn, (finished_ms, id));
        if let Some(json) = store.deliveries.take(txn, id)? {
            let record: DeliveryRecord = parse(store.deliveries.name(), &json)?;
            let key = (record.instance.as_str(), record.idempotency_key.as_str());
            if finished_ms < key_cutoff {
                store.keys.remove(txn, key);
                compacted.delivery_keys += 1;
            } else {
                store.retired.insert(txn, (finished_ms, id), key);
            }
            compacted.deliveries += 1;
        }
    }
    let expired: Vec<((u64, u64), (String, String))> = store
        .retired
        .range(txn, (Bound::Unbounded, Bound::Excluded((key_cutoff, 0))))
        .take(COMPACT_BATCH)
        .collect::<Result<_>>()?;
    for (at, (instance, key)) in expired {
        store.retired.remove(txn, at);
        store.keys.remove(txn, (instance.as_str(), key.as_str()));
        compacted.delivery_keys += 1;
    }
    let mut old = Vec::new();
    for entry in store.messages.iter(txn).take(COMPACT_BATCH) {
        let (id, json) = entry?;
        let observed: Observed<serde_json::Value> = parse(store.messages.name(), &json)?;
        if observed.at_ms >= message_cutoff {
            break;
        }
        old.push(id);
    }
    for id in old {
        store.messages.remove(txn, id);
        compacted.messages += 1;
    }
    let mut gone = Vec::new();
    for entry in store.sims.iter(txn) {
        let (key, json) = entry?;
        let observed: Observed<serde_json::Value> = parse(store.sims.name(), &json)?;
        if observed.at_ms < message_cutoff {
            gone.push(key);
        }
    }
    for (instance, sim) in gone {
        store.sims.remove(txn, (instance.as_str(), sim.as_str()));
        compacted.sims += 1;
    }
    let mut old = Vec::new();
    for entry in store.sent.iter(txn) {
        let (id, json) = entry?;
        let record: SentMessage = parse(store.sent.name(), &json)?;
        if record.updated_ms < message_cutoff {
            old.push(id);
            if old.len() == COMPACT_BATCH {
                break;
            }
        }
    }
    for id in old {
        store.sent.remove(txn, id.as_str());
        compacted.sent += 1;
    }
    Ok(compacted)
}

/// Keeps the messages and SIM states a call reported, for operators.
fn observe(
    tables: &mut Tables,
    instance: &str,
    message_id: &str,
    at_ms: u64,
    events: Vec<Event>,
) -> Result<()> {
    if events.is_empty() {
        return Ok(());
    }
    let Tables {
        txn,
        store,
        next_message,
        ..
    } = tables;
    fn observed<T: Serialize>(
        at_ms: u64,
        instance: &str,
        message_id: &str,
        what: T,
    ) -> Result<String> {
        json(&Observed {
            at_ms,
            instance: instance.to_string(),
            message_id: message_id.to_string(),
            what,
        })
    }
    for event in events {
        match event {
            Event::MessageReceived(message) => {
                let record = observed(at_ms, instance, message_id, message)?;
                store.messages.insert(txn, *next_message, &record);
                *next_message += 1;
            }
            Event::SimStatusChanged(status) => {
                let sim = sim_key(&status);
                let record = observed(at_ms, instance, message_id, status)?;
                store.sims.insert(txn, (instance, sim.as_str()), &record);
            }
            Event::DeliveryStatusChanged(status) => {
                let known = store
                    .sent
                    .get(txn, status.id.as_str())?
                    .map(|json| parse::<SentMessage>(store.sent.name(), &json))
                    .transpose()?;
                // Only the instance the SMS went to reports on it.
                if let Some(mut record) = known.filter(|record| record.instance == instance) {
                    record.apply(&status, at_ms);
                    store.sent.insert(txn, status.id.as_str(), &json(&record)?);
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// A SIM's place: device, port and card.
fn sim_key(status: &crate::model::SimStatus) -> String {
    let part = |value: &Option<String>| value.clone().unwrap_or_default();
    format!(
        "{}/{}/{}",
        part(&status.device),
        part(&status.port),
        part(&status.iccid)
    )
}

fn json(record: &impl Serialize) -> Result<String> {
    Ok(serde_json::to_string(record)?)
}

fn parse<T: DeserializeOwned>(table: &str, json: &str) -> Result<T> {
    serde_json::from_str(json).with_context(|| format!("corrupt record in table `{table}`"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Event, SendRequest};

    impl Db {
        fn commit(&self, commit: Commit) -> Result<Committed> {
            self.submit(commit).wait()
        }

        fn run_retention(&self, retention: Retention, now_ms: u64) {
            self.commit(Commit {
                instance: "simrelay".into(),
                compact: Some((retention, now_ms)),
                ..Default::default()
            })
            .unwrap();
        }
    }

    fn request(url: &str) -> OutgoingRequest {
        OutgoingRequest {
            method: "POST".into(),
            url: url.into(),
            ..Default::default()
        }
    }

    fn send_request(id: &str) -> SendRequest {
        SendRequest {
            id: id.into(),
            to: "+1".into(),
            text: "hi".into(),
            device: None,
            sim: None,
            send_at_ms: None,
            urgent: false,
        }
    }

    fn commit(instance: &str, kv: &[(&str, Option<&str>)], delivery_keys: &[&str]) -> Commit {
        let writes: KvWrites = kv
            .iter()
            .map(|(key, value)| (key.to_string(), value.map(|v| v.as_bytes().to_vec())))
            .collect();
        Commit {
            instance: instance.into(),
            message_id: "m1".into(),
            now_ms: 1_000,
            kv: vec![(instance.to_string(), Arc::new(writes))],
            deliveries: delivery_keys
                .iter()
                .map(|key| NewDelivery {
                    idempotency_key: key.to_string(),
                    request: request("http://127.0.0.1/x"),
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn a_delivery_key_is_used_once_per_instance() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path()).unwrap();
        let first = db.commit(commit("a", &[], &["push/1", "push/2"])).unwrap();
        assert_eq!(first.deliveries.len(), 2);
        let again = db.commit(commit("a", &[], &["push/1"])).unwrap();
        assert_eq!((again.deliveries.len(), again.duplicate_deliveries), (0, 1));
        let other_instance = db.commit(commit("b", &[], &["push/1"])).unwrap();
        assert_eq!(other_instance.deliveries.len(), 1);
        assert_eq!(db.deliveries().unwrap().len(), 3);
        assert_eq!(db.pending_deliveries().unwrap().len(), 3);
    }

    #[test]
    fn state_is_per_label_and_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = Db::open(dir.path()).unwrap();
            db.commit(commit(
                "a",
                &[("k", Some("from a")), ("gone", Some("x"))],
                &[],
            ))
            .unwrap();
            db.commit(commit("ab", &[("k", Some("from ab"))], &[]))
                .unwrap();
            db.commit(commit("a", &[("gone", None)], &[])).unwrap();
        }
        let db = Db::open(dir.path()).unwrap();
        assert_eq!(
            db.kv_get("a", "k").unwrap().as_deref(),
            Some(&b"from a"[..])
        );
        assert_eq!(
            db.kv_get("ab", "k").unwrap().as_deref(),
            Some(&b"from ab"[..])
        );
        assert_eq!(db.kv_get("b", "k").unwrap(), None);
        assert_eq!(
            db.kv_snapshot().keys("a", None, 10).unwrap(),
            (vec!["k".to_string()], true)
        );
    }

    #[test]
    fn reads_served_from_memory_follow_every_commit() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path()).unwrap();
        let read = |key| db.kv_get("a", key).unwrap();
        // Read before any write: the cache holds "none" for both keys.
        assert_eq!((read("k"), read("other")), (None, None));
        db.commit(commit("a", &[("k", Some("1"))], &[])).unwrap();
        assert_eq!(read("k").as_deref(), Some(&b"1"[..]));
        db.commit(commit("a", &[("k", Some("2")), ("other", Some("x"))], &[]))
            .unwrap();
        assert_eq!(read("k").as_deref(), Some(&b"2"[..]));
        assert_eq!(read("other").as_deref(), Some(&b"x"[..]));
        db.commit(commit("a", &[("k", None)], &[])).unwrap();
        assert_eq!(read("k"), None);
        // An entry filled by a read through a snapshot follows the next commit of its key.
        let before = db.kv_snapshot();
        assert_eq!(before.get_many("a", &["late"]).unwrap(), [None]);
        db.commit(commit("a", &[("late", Some("y"))], &[])).unwrap();
        assert_eq!(read("late").as_deref(), Some(&b"y"[..]));
    }

    /// The database's files as a crash would leave them now: what reached the page cache.
    fn crash_image(from: &Path) -> tempfile::TempDir {
        fn copy(from: &Path, to: &Path) {
            std::fs::create_dir_all(to).unwrap();
            for entry in std::fs::read_dir(from).unwrap() {
                let entry = entry.unwrap();
                let target = to.join(entry.file_name());
                if entry.file_type().unwrap().is_dir() {
                    copy(&entry.path(), &target);
                } else {
                    std::fs::copy(entry.path(), target).unwrap();
                }
            }
        }
        let image = tempfile::tempdir().unwrap();
        copy(from, image.path());
        image
    }

    #[test]
    fn a_crash_keeps_every_commit_acknowledged_and_the_id_counter() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path()).unwrap();
        db.commit(commit(
            "a",
            &[("k", Some("1")), ("gone", Some("x"))],
            &["push/1"],
        ))
        .unwrap();
        db.commit(commit(
            "a",
            &[("k", Some("2")), ("gone", None)],
            &["push/2"],
        ))
        .unwrap();
        let image = crash_image(dir.path());
        drop(db);
        let check = |db: &Db| {
            assert_eq!(db.kv_get("a", "k").unwrap().as_deref(), Some(&b"2"[..]));
            assert_eq!(db.kv_get("a", "gone").unwrap(), None);
            let ids: Vec<_> = db.deliveries().unwrap().iter().map(|d| d.id).collect();
            assert_eq!(ids, [1, 2]);
        };
        // Recovering twice from the same journal ends in the same state.
        for _ in 0..2 {
            check(&Db::open(image.path()).unwrap());
        }
        let db = Db::open(image.path()).unwrap();
        let next = db.commit(commit("a", &[], &["push/3"])).unwrap();
        assert_eq!(
            next.deliveries[0].id, 3,
            "the id counter came back with the rest"
        );
    }

    #[test]
    fn a_database_of_a_newer_layout_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = Db::open(dir.path()).unwrap();
            let mut tables = Tables::begin(&db.store, &db.next_id).unwrap();
            db.store
                .counters
                .insert(&mut tables.txn, "schema", SCHEMA + 1);
            tables.commit(None).unwrap();
        }
        let error = format!("{:#}", Db::open(dir.path()).err().unwrap());
        assert!(error.contains("written by a newer simrelay"), "{error}");
    }

    #[test]
    fn key_listing_starts_after_the_cursor() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path()).unwrap();
        db.commit(commit(
            "a",
            &[("1", Some("")), ("2", Some("")), ("3", Some(""))],
            &[],
        ))
        .unwrap();
        let keys = |cursor, limit| db.kv_snapshot().keys("a", cursor, limit).unwrap();
        assert_eq!(keys(Some("1"), 10), (vec!["2".into(), "3".into()], true));
        assert_eq!(keys(Some("10"), 10), (vec!["2".into(), "3".into()], true));
        assert_eq!(keys(None, 2), (vec!["1".into(), "2".into()], false));
        assert_eq!(keys(Some("2"), 1), (vec!["3".into()], true));
    }

    #[test]
    fn an_event_queued_under_its_id_leaves_the_queue_when_handled() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path()).unwrap();
        let mut queue = commit("a", &[], &[]);
        let id = db.allocate_id();
        let sms = Event::SendSms(send_request("s1"));
        queue
            .events
            .push(QueuedEvent::new(id, "a", "b".into(), "m1", sms, 1_000));
        db.commit(queue).unwrap();
        drop(db);
        let db = Db::open(dir.path()).unwrap();
        assert_eq!(db.queued_events().unwrap()[0].id, id);
        assert!(
            db.allocate_id() > id,
            "ids given before a restart are not given again"
        );
        let mut handled = commit("b", &[("seen", Some("1"))], &["out/1"]);
        handled.consumed = Consumed::EventHandled(id);
        db.commit(handled).unwrap();
        assert!(db.queued_events().unwrap().is_empty());
        assert_eq!(db.kv_get("b", "seen").unwrap().as_deref(), Some(&b"1"[..]));
        assert_eq!(db.deliveries().unwrap().len(), 1);
    }

    #[test]
    fn only_the_sending_instance_reports_on_a_sent_message() {
        use crate::model::{DeliveryState as State, DeliveryStatus};
        let dir = tempfile::tempdir().unwrap();
        let request = send_request("out-1");
        let report = |instance: &str, state| Commit {
            instance: instance.into(),
            now_ms: 2_000,
            observed: vec![Event::DeliveryStatusChanged(DeliveryStatus {
                id: "out-1".into(),
                state,
                detail: Some(format!("{state:?}")),
                recipient: None,
            })],
            ..Default::default()
        };
        {
            let db = Db::open(dir.path()).unwrap();
            db.commit(Commit {
                instance: "simrelay".into(),
                sends: vec![SentMessage::queued(&request, "sg24", "m1", 1_000)],
                ..Default::default()
            })
            .unwrap();
            db.commit(report("other", State::Failed)).unwrap();
            db.commit(report("sg24", State::Sent)).unwrap();
        }
        let db = Db::open(dir.path()).unwrap();
        let record = db.sent_message("out-1").unwrap().unwrap();
        assert_eq!(record.status, crate::send::SendStatus::Sent);
        assert_eq!(record.history.len(), 2, "queued, then sg24's report");
        assert!(db.sent_message("out-2").unwrap().is_none());
        let retention = Retention {
            messages_hours: 0.0,
            ..Default::default()
        };
        db.run_retention(retention, 3_000);
        assert!(db.sent_message("out-1").unwrap().is_none(), "retention");
    }

    #[test]
    fn a_finished_delivery_leaves_the_pending_index_and_a_retried_one_the_finished() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path()).unwrap();
        let id = db.commit(commit("a", &[], &["push/1"])).unwrap().deliveries[0].id;
        let mut record = db.delivery(id).unwrap().unwrap();
        record.state = DeliveryState::Pending {
            next_attempt_ms: 9_000,
        };
        db.commit(Commit {
            instance: "a".into(),
            consumed: Consumed::DeliveryUpdated {
                record: record.clone(),
                replaced_finished_at: None,
            },
            ..Default::default()
        })
        .unwrap();
        assert_eq!(db.pending_deliveries().unwrap(), [(9_000, id)]);
        record.state = DeliveryState::Delivered { at_ms: 9_000 };
        db.commit(Commit {
            instance: "a".into(),
            consumed: Consumed::DeliveryUpdated {
                record: record.clone(),
                replaced_finished_at: None,
            },
            ..Default::default()
        })
        .unwrap();
        assert!(db.pending_deliveries().unwrap().is_empty());
        assert_eq!(db.delivery_counts(), (0, 1));
        // An operator's retry replaces the finished record: it leaves the finished index.
        record.state = DeliveryState::Pending {
            next_attempt_ms: 10_000,
        };
        db.commit(Commit {
            instance: "a".into(),
            consumed: Consumed::DeliveryUpdated {
                record,
                replaced_finished_at: Some(9_000),
            },
            ..Default::default()
        })
        .unwrap();
        assert_eq!(db.delivery_counts(), (1, 0));
        assert_eq!(db.pending_deliveries().unwrap(), [(10_000, id)]);
    }

    #[test]
    fn the_delivery_tally_follows_the_tables_through_every_change_and_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path()).unwrap();
        let counted_again = |db: &Db| {
            let tally = db.store.count_deliveries().unwrap();
            (tally.counts(), tally.pending_by_instance())
        };
        let held = |db: &Db| (db.delivery_counts(), db.pending_by_instance());
        let update = |db: &Db, record: &DeliveryRecord, replaced_finished_at| {
            db.commit(Commit {
                instance: record.instance.clone(),
                consumed: Consumed::DeliveryUpdated {
                    record: record.clone(),
                    replaced_finished_at,
                },
                ..Default::default()
            })
            .unwrap();
            assert_eq!(held(db), counted_again(db));
        };
        let a = db.commit(commit("a", &[], &["1", "2", "3"])).unwrap();
        let b = db.commit(commit("b", &[], &["1", "2"])).unwrap();
        assert_eq!(
            held(&db),
            (
                (5, 0),
                BTreeMap::from([("a".into(), (3, 1_000)), ("b".into(), (2, 1_000))])
            )
        );
        let mut delivered = a.deliveries[0].clone();
        delivered.state = DeliveryState::Delivered { at_ms: 2_000 };
        update(&db, &delivered, None);
        let mut retried = b.deliveries[0].clone();
        retried.state = DeliveryState::Pending {
            next_attempt_ms: 2_100,
        };
        update(&db, &retried, None);
        let mut dead = b.deliveries[1].clone();
        dead.state = DeliveryState::Dead {
            at_ms: 2_500,
            reason: "gave up".into(),
        };
        update(&db, &dead, None);
        // An operator retries the delivered one, and it is delivered again.
        delivered.state = DeliveryState::Pending {
            next_attempt_ms: 2_600,
        };
        update(&db, &delivered, Some(2_000));
        delivered.state = DeliveryState::Delivered { at_ms: 3_000 };
        update(&db, &delivered, None);
        assert_eq!(held(&db).0, (3, 2));
        // Retention at 2,600 keeps no finished delivery older: the dead one goes.
        let retention = Retention {
            deliveries_hours: 0.0,
            ..Default::default()
        };
        db.run_retention(retention, 2_600);
        // An operator's retry of the dead one, read before retention removed it: the
        // finished entry it replaces is gone already, and is not taken off again.
        dead.state = DeliveryState::Pending {
            next_attempt_ms: 2_700,
        };
        update(&db, &dead, Some(2_500));
        assert_eq!(
            held(&db),
            (
                (4, 1),
                BTreeMap::from([("a".into(), (2, 1_000)), ("b".into(), (2, 1_000))])
            )
        );
        let before = held(&db);
        drop(db);
        assert_eq!(held(&Db::open(dir.path()).unwrap()), before);
    }

    #[test]
    fn messages_since_counts_the_records_from_a_time_on() {
        use crate::model::{MessageKind, ReceivedMessage};
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path()).unwrap();
        let message = |n: usize| {
            Event::MessageReceived(ReceivedMessage {
                id: n.to_string(),
                sender: "Bank".into(),
                recipient: "+1".into(),
                text: "code 1234".into(),
                kind: MessageKind::Sms,
                received_at_ms: None,
                device: None,
                port: None,
                iccid: None,
                imsi: None,
                code: None,
            })
        };
        assert_eq!(db.messages_since(0).unwrap(), 0);
        let times = [1_000, 2_000, 2_000, 2_000, 3_000, 5_000, 5_000, 8_000];
        for (n, at_ms) in times.into_iter().enumerate() {
            db.commit(Commit {
                instance: "a".into(),
                now_ms: at_ms,
                observed: vec![message(n)],
                ..Default::default()
            })
            .unwrap();
        }
        let counted = |since: u64, times: &[u64]| times.iter().filter(|at| **at >= since).count();
        for since in [
            0, 1_000, 1_500, 2_000, 2_001, 3_000, 4_999, 5_000, 7_000, 8_000, 9_000,
        ] {
            assert_eq!(
                db.messages_since(since).unwrap(),
                counted(since, &times),
                "since {since}"
            );
        }
        // Retention removes the oldest: the count starts where the kept records do.
        let retention = Retention {
            messages_hours: 0.0,
            ..Default::default()
        };
        db.run_retention(retention, 2_500);
        for since in [0, 2_000, 3_000, 6_000] {
            assert_eq!(
                db.messages_since(since).unwrap(),
                counted(since, &times[4..]),
                "since {since}"
            );
        }
    }

    #[test]
    fn an_empty_commit_that_read_queued_writes_waits_until_they_are_durable() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path()).unwrap();
        let pending = db.submit(commit("a", &[("seen/1", Some("x"))], &[]));
        let sequence = pending.sequence().expect("a write is queued");
        let follower = db.submit(Commit {
            instance: "a".into(),
            read_unflushed: Some(sequence),
            ..Default::default()
        });
        assert!(follower.sequence().is_none(), "nothing of its own to write");
        follower.wait().unwrap();
        assert_eq!(
            db.kv_get("a", "seen/1").unwrap().as_deref(),
            Some(&b"x"[..]),
            "the write it read is durable when it returns"
        );
        pending.wait().unwrap();
    }
}
