//! The embedded on-disk database: plugin key-value state, deliveries and queued events.
//!
//! Everything one plugin call produced (its key-value writes, the deliveries it asked for,
//! the events for downstream instances, and the fate of the input it consumed) commits in
//! one durable transaction, so a crash leaves either all of it or none of it. Commits queue
//! in order; a committer thread writes all that are waiting in one transaction with one
//! fsync (group commit), of the write-ahead log ([`log`]) in front of redb. redb itself
//! commits durably (a checkpoint) when no batch waits, or when the log asks for it.

mod faults;
mod log;

use std::borrow::Borrow;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::ops::Deref;
use std::path::Path;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};

use anyhow::{Context, Result};
use redb::{
    AccessGuard, Database, Durability, Key, ReadableDatabase, ReadableTable, ReadableTableMetadata,
    Table, TableDefinition, TableHandle, Value,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::oneshot;

use crate::kv::KvWrites;
use crate::model::{Event, OutgoingRequest};
use crate::send::SentMessage;
use simrelay_core::relay::{DeliveryRecord, QueuedEvent};
use simrelay_core::retry::DeliveryState;

/// (store label, key) → value.
const KV: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("kv");
/// delivery id → JSON [`DeliveryRecord`].
const DELIVERIES: TableDefinition<u64, &str> = TableDefinition::new("deliveries");
/// delivery id → when it is due, for every pending delivery: start-up reads only these.
const PENDING: TableDefinition<u64, u64> = TableDefinition::new("pending_deliveries");
/// (instance, idempotency key) → delivery id.
const DELIVERY_KEYS: TableDefinition<(&str, &str), u64> = TableDefinition::new("delivery_keys");
/// (when it finished, delivery id) for every delivered or dead delivery, oldest first:
/// retention walks it from the start.
const FINISHED: TableDefinition<(u64, u64), ()> = TableDefinition::new("finished_deliveries");
/// event id → JSON [`QueuedEvent`]; an event leaves once its target handled it.
const EVENTS: TableDefinition<u64, &str> = TableDefinition::new("events");
/// (when it finished, delivery id) → (instance, idempotency key) of deliveries whose record
/// retention removed, while their key still guards against a second delivery.
const RETIRED_KEYS: TableDefinition<(u64, u64), (&str, &str)> =
    TableDefinition::new("retired_delivery_keys");
/// record id → JSON [`Observed`]: messages plugins reported, newest last.
const MESSAGES: TableDefinition<u64, &str> = TableDefinition::new("messages");
/// (reporting instance, device/port/iccid) → JSON [`Observed`]: the last status of each SIM.
const SIMS: TableDefinition<(&str, &str), &str> = TableDefinition::new("sims");
const COUNTERS: TableDefinition<&str, u64> = TableDefinition::new("counters");
/// The counter holding the log generation the last checkpoint started.
const LOG_GENERATION: &str = "log_generation";
/// send request id → JSON [`SentMessage`]: SMS asked for through the send API, and how far
/// they got. Added after schema 2 as a table of its own, so older builds ignore it.
const SENT: TableDefinition<&str, &str> = TableDefinition::new("sent_messages");

/// The environment variable that turns on [`faults::FaultyBackend`] for tests.
const FAULT_FILE_VAR: &str = "SIMRELAY_FAULT_FILE";

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

/// redb caches every page it reads or writes up to its cache size, 1 GiB by default: the
/// host's memory would follow the database's size. Hot state (open activations, live marks,
/// pending deliveries) is far smaller than this.
const PAGE_CACHE_BYTES: usize = 32 << 20;

fn builder() -> redb::Builder {
    let mut builder = redb::Builder::new();
    builder.set_cache_size(PAGE_CACHE_BYTES);
    builder
}

/// A read transaction on the key-value table: see [`Db::kv_snapshot`].
pub struct KvSnapshot(redb::ReadOnlyTable<(&'static str, &'static str), &'static [u8]>);

impl KvSnapshot {
    /// The label's values of `keys`, in order.
    pub fn get_many(&self, label: &str, keys: &[&str]) -> Result<Vec<Option<Vec<u8>>>> {
        keys.iter()
            .map(|key| {
                Ok(self
                    .0
                    .get((label, *key))?
                    .map(|value| value.value().to_vec()))
            })
            .collect()
    }

    /// At most `limit` of the label's keys after `cursor` (from the first when `None`), in
    /// order, and whether they are the last.
    pub fn keys(
        &self,
        label: &str,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<String>, bool)> {
        // Keys sort by label first: one label's keys run on from (label, "").
        let mut keys = Vec::new();
        for entry in self.0.range((label, cursor.unwrap_or(""))..)? {
            let (key, _) = entry?;
            let (entry_label, entry_key) = key.value();
            if entry_label != label {
                return Ok((keys, true));
            }
            if cursor == Some(entry_key) {
                continue;
            }
            if keys.len() == limit {
                return Ok((keys, false));
            }
            keys.push(entry_key.to_string());
        }
        Ok((keys, true))
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
    DeliveryUpdated(DeliveryRecord),
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
    /// (due, id) of each new delivery.
    pub deliveries: Vec<(u64, u64)>,
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
    db: Arc<Database>,
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

/// Applies queued commits in order, as many per transaction as are waiting.
///
/// A failed transaction stops the process: later calls may already have read that batch's
/// writes, and none of its commits was acknowledged, so a restart loses nothing.
///
/// A commit with nothing to write only waits for the commits queued before it: a batch of
/// such commits needs no transaction.
fn run_committer(
    db: Arc<Database>,
    mut log: log::Log,
    durable: Arc<AtomicU64>,
    next_id: Arc<AtomicU64>,
    queue: mpsc::Receiver<CommitJob>,
) {
    let logged = Rc::new(RefCell::new(Vec::new()));
    let mut carried = None;
    loop {
        let first = match carried.take() {
            Some(first) => first,
            None => match queue.recv() {
                Ok(first) => first,
                Err(_) => break,
            },
        };
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
        logged.borrow_mut().clear();
        let result = (|| -> Result<Vec<Committed>> {
            if writes == 0 {
                return Ok(batch.iter().map(|_| Committed::default()).collect());
            }
            let mut txn = db.begin_write()?;
            let mut tables = Tables::open(&txn, &logged, &next_id)?;
            let committed = batch
                .iter_mut()
                .map(|(_, commits, _)| {
                    let mut committed = Committed::default();
                    for commit in commits.drain(..).filter(|commit| !commit.is_empty()) {
                        committed.absorb(apply(&mut tables, commit)?);
                    }
                    Ok(committed)
                })
                .collect::<Result<Vec<_>>>()?;
            tables.close()?;
            log.append(&logged.borrow_mut())?;
            let checkpoint = log.checkpoint_due().then(|| log.next_generation());
            let commit = (|| -> Result<()> {
                match checkpoint {
                    Some(generation) => record_checkpoint(&txn, generation)?,
                    None => txn.set_durability(Durability::None)?,
                }
                Ok(txn.commit()?)
            })();
            if let Err(error) = commit {
                if let Err(retract) = log.retract() {
                    tracing::error!(
                        "cannot take the failed batch back from the write-ahead log, so a \
                         restart applies it: {retract:#}"
                    );
                }
                return Err(error);
            }
            if let Some(generation) = checkpoint {
                log.checkpointed(generation);
            }
            Ok(committed)
        })();
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
                durable.store(last, Ordering::Release);
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
                    "{message}; stopping so that nothing acknowledged is lost. Nothing in the \
                     failed batch was acknowledged; after a restart the senders' retries are \
                     accepted again once the disk can be written"
                );
                std::process::exit(70);
            }
        }
        // Nothing waits: a checkpoint now delays no batch, only those arriving during it.
        match queue.try_recv() {
            Ok(next) => carried = Some(next),
            Err(_) if log.checkpoint_worthwhile() => {
                if let Err(error) = checkpoint(&db, &mut log) {
                    tracing::error!(
                        "database commit failed (a checkpoint): {error:#}; stopping. The \
                         write-ahead log holds every batch acknowledged since the last one"
                    );
                    std::process::exit(70);
                }
            }
            Err(_) => {}
        }
    }
}

/// Commits redb durably with nothing in the transaction, which writes what the batches
/// since the last checkpoint left in redb's buffer, and starts the log over.
fn checkpoint(db: &Database, log: &mut log::Log) -> Result<()> {
    let started = std::time::Instant::now();
    let txn = db.begin_write()?;
    let generation = log.next_generation();
    record_checkpoint(&txn, generation)?;
    txn.commit()?;
    log.checkpointed(generation);
    crate::metrics::metrics().latency(
        "simrelay_checkpoint_seconds",
        "Time to make redb durable in a quiet moment, which commits arriving meanwhile wait for.",
        &[],
        started.elapsed(),
    );
    Ok(())
}

/// Stores, in a durable commit, the log generation that starts once it is durable: the log
/// is then bound to this database ([`log`]). Not logged: the log starts over after it.
fn record_checkpoint(txn: &redb::WriteTransaction, generation: u64) -> Result<()> {
    txn.open_table(COUNTERS)?
        .insert(LOG_GENERATION, generation)?;
    Ok(())
}

/// The log generation the database's last checkpoint started, `None` for a new database
/// or one from before generations were recorded.
fn checkpointed_generation(db: &Database) -> Result<Option<u64>> {
    match db.begin_read()?.open_table(COUNTERS) {
        Ok(counters) => Ok(counters.get(LOG_GENERATION)?.map(|value| value.value())),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
        Err(error) => Err(error.into()),
    }
}

impl Db {
    /// Opens (or creates) the database in `data_dir`; fails when it cannot be written.
    pub fn open(data_dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(data_dir)
            .with_context(|| format!("cannot create data directory {}", data_dir.display()))?;
        let path = data_dir.join("simrelay.redb");
        let faults =
            std::env::var_os(FAULT_FILE_VAR).map(|trigger| faults::Faults::new(trigger.into()));
        let db = match &faults {
            Some(faults) => {
                let file = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .open(&path)?;
                builder().create_with_backend(faults::FaultyBackend::new(file, faults.clone())?)
            }
            None => builder().create(&path),
        }
        .with_context(|| format!("cannot open database {}", path.display()))?;
        let (mut log, records) = log::Log::open(data_dir, faults, checkpointed_generation(&db)?)?;
        let txn = db.begin_write()?;
        let next_id = Arc::new(AtomicU64::new(0));
        {
            // Opening the tables creates those that are missing.
            let mut tables = Tables::open(&txn, &LoggedWrites::default(), &next_id)?;
            for record in &records {
                tables
                    .replay(record)
                    .context("cannot apply the write-ahead log")?;
            }
        }
        let stored_next_id = txn
            .open_table(COUNTERS)?
            .get("next_id")?
            .map(|id| id.value());
        next_id.store(stored_next_id.unwrap_or(1), Ordering::Relaxed);
        migrate(&txn)?;
        let generation = log.next_generation();
        record_checkpoint(&txn, generation)?;
        txn.commit()
            .with_context(|| format!("cannot write database {}", path.display()))?;
        log.checkpointed(generation);
        if !records.is_empty() {
            tracing::info!(
                "applied {} batches of commits from the write-ahead log",
                records.len()
            );
        }
        let db = Arc::new(db);
        let durable = Arc::new(AtomicU64::new(0));
        let (sender, receiver) = mpsc::channel();
        let (writer, watermark, ids) = (db.clone(), durable.clone(), next_id.clone());
        let committer = std::thread::Builder::new()
            .name("db-committer".into())
            .spawn(move || run_committer(writer, log, watermark, ids, receiver))?;
        Ok(Db {
            db,
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
        Ok(self.kv_snapshot()?.get_many(label, &[key])?.pop().flatten())
    }

    /// The committed values of every store as they are now, for reads that belong together
    /// (one plugin call's): one read transaction however many reads.
    pub fn kv_snapshot(&self) -> Result<KvSnapshot> {
        Ok(KvSnapshot(self.db.begin_read()?.open_table(KV)?))
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
        self.read_one(DELIVERIES, id)
    }

    pub fn queued_event(&self, id: u64) -> Result<Option<QueuedEvent>> {
        self.read_one(EVENTS, id)
    }

    /// (due, id) of every pending delivery.
    pub fn pending_deliveries(&self) -> Result<Vec<(u64, u64)>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(PENDING)?;
        table
            .iter()?
            .map(|entry| {
                let (id, due) = entry?;
                Ok((due.value(), id.value()))
            })
            .collect()
    }

    pub fn deliveries(&self) -> Result<Vec<DeliveryRecord>> {
        self.read_all(DELIVERIES)
    }

    /// Deliveries matching `filter`, newest first.
    pub fn find_deliveries(&self, filter: &DeliveryFilter) -> Result<Vec<DeliveryRecord>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(DELIVERIES)?;
        let limit = filter.limit.unwrap_or(100);
        let mut found = Vec::new();
        for entry in table.iter()?.rev() {
            let record: DeliveryRecord = parse(DELIVERIES.name(), entry?.1.value())?;
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

    /// Per instance: pending deliveries, and when the oldest of them was asked for.
    pub fn pending_by_instance(&self) -> Result<BTreeMap<String, (u64, u64)>> {
        let txn = self.db.begin_read()?;
        let pending = txn.open_table(PENDING)?;
        let deliveries = txn.open_table(DELIVERIES)?;
        let mut counts: BTreeMap<String, (u64, u64)> = BTreeMap::new();
        for entry in pending.iter()? {
            let id = entry?.0.value();
            if let Some(json) = deliveries.get(id)? {
                let record: DeliveryRecord = parse(DELIVERIES.name(), json.value())?;
                let count = counts.entry(record.instance).or_insert((0, u64::MAX));
                count.0 += 1;
                count.1 = count.1.min(record.created_ms);
            }
        }
        Ok(counts)
    }

    /// How many deliveries are pending, and how many finished ones are kept.
    pub fn delivery_counts(&self) -> Result<(u64, u64)> {
        let txn = self.db.begin_read()?;
        Ok((
            txn.open_table(PENDING)?.len()?,
            txn.open_table(FINISHED)?.len()?,
        ))
    }

    /// A send API record, by its id.
    pub fn sent_message(&self, id: &str) -> Result<Option<SentMessage>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(SENT)?;
        let json = table.get(id)?;
        json.map(|json| parse(SENT.name(), json.value()))
            .transpose()
    }

    /// The latest messages plugins reported, newest first.
    pub fn recent_messages(
        &self,
        limit: usize,
    ) -> Result<Vec<Observed<crate::model::ReceivedMessage>>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(MESSAGES)?;
        table
            .iter()?
            .rev()
            .take(limit)
            .map(|entry| parse(MESSAGES.name(), entry?.1.value()))
            .collect()
    }

    /// Messages reported since `since_ms`, for rates.
    pub fn messages_since(&self, since_ms: u64) -> Result<usize> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(MESSAGES)?;
        let mut count = 0;
        for entry in table.iter()?.rev() {
            let observed: Observed<serde_json::Value> = parse(MESSAGES.name(), entry?.1.value())?;
            if observed.at_ms < since_ms {
                break;
            }
            count += 1;
        }
        Ok(count)
    }

    /// The last status of every SIM the plugins reported.
    pub fn sims(&self) -> Result<Vec<Observed<crate::model::SimStatus>>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(SIMS)?;
        table
            .iter()?
            .map(|entry| parse(SIMS.name(), entry?.1.value()))
            .collect()
    }

    pub fn queued_events(&self) -> Result<Vec<QueuedEvent>> {
        self.read_all(EVENTS)
    }

    fn read_one<T: DeserializeOwned>(
        &self,
        definition: TableDefinition<u64, &str>,
        id: u64,
    ) -> Result<Option<T>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(definition)?;
        let json = table.get(id)?;
        json.map(|json| parse(definition.name(), json.value()))
            .transpose()
    }

    fn read_all<T: DeserializeOwned>(
        &self,
        definition: TableDefinition<u64, &str>,
    ) -> Result<Vec<T>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(definition)?;
        table
            .iter()?
            .map(|entry| parse(definition.name(), entry?.1.value()))
            .collect()
    }
}

/// The layout this build writes; databases of older builds are brought to it on open.
const SCHEMA: u64 = 2;

fn migrate(txn: &redb::WriteTransaction) -> Result<()> {
    let mut counters = txn.open_table(COUNTERS)?;
    let schema = counters.get("schema")?.map_or(1, |value| value.value());
    if schema < 2 {
        // Schema 2 indexes pending and finished deliveries, so start-up and retention no
        // longer read every delivery.
        let deliveries = txn.open_table(DELIVERIES)?;
        let mut pending = txn.open_table(PENDING)?;
        let mut finished = txn.open_table(FINISHED)?;
        for entry in deliveries.iter()? {
            let record: DeliveryRecord = parse(DELIVERIES.name(), entry?.1.value())?;
            match record.state {
                DeliveryState::Pending { next_attempt_ms } => {
                    pending.insert(record.id, next_attempt_ms)?;
                }
                DeliveryState::Delivered { at_ms } | DeliveryState::Dead { at_ms, .. } => {
                    finished.insert((at_ms, record.id), ())?;
                }
            }
        }
    }
    counters.insert("schema", SCHEMA)?;
    Ok(())
}

/// A batch's writes, as the write-ahead log records them.
type LoggedWrites = Rc<RefCell<Vec<u8>>>;

/// A table of a batch's transaction whose writes are also recorded for the write-ahead log;
/// reads go straight to the table.
struct Logged<'txn, K: Key + 'static, V: Value + 'static> {
    table: Table<'txn, K, V>,
    /// The table's number in the log: fixed, as logs outlive builds.
    id: u8,
    writes: LoggedWrites,
}

impl<'txn, K: Key + 'static, V: Value + 'static> Logged<'txn, K, V> {
    fn open(
        txn: &'txn redb::WriteTransaction,
        definition: TableDefinition<K, V>,
        id: u8,
        writes: &LoggedWrites,
    ) -> Result<Self> {
        Ok(Logged {
            table: txn.open_table(definition)?,
            id,
            writes: writes.clone(),
        })
    }

    fn insert<'k, 'v>(
        &mut self,
        key: impl Borrow<K::SelfType<'k>>,
        value: impl Borrow<V::SelfType<'v>>,
    ) -> Result<()> {
        log::encode(
            &mut self.writes.borrow_mut(),
            self.id,
            K::as_bytes(key.borrow()).as_ref(),
            Some(V::as_bytes(value.borrow()).as_ref()),
        );
        self.table.insert(key, value)?;
        Ok(())
    }

    fn remove<'k>(
        &mut self,
        key: impl Borrow<K::SelfType<'k>>,
    ) -> Result<Option<AccessGuard<'_, V>>> {
        log::encode(
            &mut self.writes.borrow_mut(),
            self.id,
            K::as_bytes(key.borrow()).as_ref(),
            None,
        );
        Ok(self.table.remove(key)?)
    }
}

impl<'txn, K: Key + 'static, V: Value + 'static> Deref for Logged<'txn, K, V> {
    type Target = Table<'txn, K, V>;

    fn deref(&self) -> &Self::Target {
        &self.table
    }
}

/// A logged table, as start-up applies the log's writes to it again.
trait Replay {
    fn id(&self) -> u8;
    fn replay(&mut self, key: &[u8], value: Option<&[u8]>) -> Result<()>;
}

impl<K: Key + 'static, V: Value + 'static> Replay for Logged<'_, K, V> {
    fn id(&self) -> u8 {
        self.id
    }

    fn replay(&mut self, key: &[u8], value: Option<&[u8]>) -> Result<()> {
        match value {
            Some(value) => self
                .table
                .insert(K::from_bytes(key), V::from_bytes(value))?,
            None => self.table.remove(K::from_bytes(key))?,
        };
        Ok(())
    }
}

/// Every table a batch of commits may write, opened once per transaction: opening and
/// closing a table costs a lookup and a write in redb's table of tables.
struct Tables<'txn> {
    kv: Logged<'txn, (&'static str, &'static str), &'static [u8]>,
    deliveries: Logged<'txn, u64, &'static str>,
    pending: Logged<'txn, u64, u64>,
    keys: Logged<'txn, (&'static str, &'static str), u64>,
    finished: Logged<'txn, (u64, u64), ()>,
    events: Logged<'txn, u64, &'static str>,
    retired: Logged<'txn, (u64, u64), (&'static str, &'static str)>,
    messages: Logged<'txn, u64, &'static str>,
    sims: Logged<'txn, (&'static str, &'static str), &'static str>,
    sent: Logged<'txn, &'static str, &'static str>,
    counters: Logged<'txn, &'static str, u64>,
    /// The next delivery or event id, shared with the relay, which gives events theirs.
    next_id: &'txn AtomicU64,
    /// The next message record id.
    next_message: u64,
}

impl<'txn> Tables<'txn> {
    fn open(
        txn: &'txn redb::WriteTransaction,
        writes: &LoggedWrites,
        next_id: &'txn AtomicU64,
    ) -> Result<Self> {
        let counters = Logged::open(txn, COUNTERS, 11, writes)?;
        let next_message = counters
            .get("next_message")?
            .map_or(1, |value| value.value());
        Ok(Tables {
            kv: Logged::open(txn, KV, 1, writes)?,
            deliveries: Logged::open(txn, DELIVERIES, 2, writes)?,
            pending: Logged::open(txn, PENDING, 3, writes)?,
            keys: Logged::open(txn, DELIVERY_KEYS, 4, writes)?,
            finished: Logged::open(txn, FINISHED, 5, writes)?,
            events: Logged::open(txn, EVENTS, 6, writes)?,
            retired: Logged::open(txn, RETIRED_KEYS, 7, writes)?,
            messages: Logged::open(txn, MESSAGES, 8, writes)?,
            sims: Logged::open(txn, SIMS, 9, writes)?,
            sent: Logged::open(txn, SENT, 10, writes)?,
            counters,
            next_id,
            next_message,
        })
    }

    /// Stores the counters, before the transaction commits.
    fn close(mut self) -> Result<()> {
        self.counters
            .insert("next_id", self.next_id.load(Ordering::Relaxed))?;
        self.counters.insert("next_message", self.next_message)?;
        Ok(())
    }

    fn allocate_id(&mut self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Applies one record of the write-ahead log again.
    fn replay(&mut self, record: &[u8]) -> Result<()> {
        let mut tables: [&mut dyn Replay; 11] = [
            &mut self.kv,
            &mut self.deliveries,
            &mut self.pending,
            &mut self.keys,
            &mut self.finished,
            &mut self.events,
            &mut self.retired,
            &mut self.messages,
            &mut self.sims,
            &mut self.sent,
            &mut self.counters,
        ];
        for write in log::decode(record)? {
            let table = tables
                .iter_mut()
                .find(|table| table.id() == write.table)
                .with_context(|| format!("the write-ahead log names table {}", write.table))?;
            table.replay(write.key, write.value)?;
        }
        Ok(())
    }
}

/// Writes one call's outcome into the batch's transaction.
fn apply(tables: &mut Tables, commit: Commit) -> Result<Committed> {
    let mut committed = Committed::default();
    for (label, writes) in &commit.kv {
        for (key, value) in writes.iter() {
            let key = (label.as_str(), key.as_str());
            match value {
                Some(value) => tables.kv.insert(key, value.as_slice())?,
                None => drop(tables.kv.remove(key)?),
            }
        }
    }
    for delivery in commit.deliveries {
        let unique = (commit.instance.as_str(), delivery.idempotency_key.as_str());
        if tables.keys.get(unique)?.is_some() {
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
        tables.keys.insert(unique, record.id)?;
        tables
            .deliveries
            .insert(record.id, json(&record)?.as_str())?;
        tables.pending.insert(record.id, commit.now_ms)?;
        committed.deliveries.push((commit.now_ms, record.id));
    }
    for queued in &commit.events {
        tables.events.insert(queued.id, json(queued)?.as_str())?;
    }
    match &commit.consumed {
        Consumed::EventHandled(id) => {
            tables.events.remove(*id)?;
        }
        Consumed::EventFailed(queued) => {
            tables.events.insert(queued.id, json(queued)?.as_str())?;
        }
        Consumed::DeliveryUpdated(record) => store_delivery(tables, record)?,
        Consumed::Nothing => {}
    }
    if let Some((retention, now_ms)) = &commit.compact {
        committed.compacted = Some(compact(tables, retention, *now_ms)?);
    }
    for record in &commit.sends {
        tables
            .sent
            .insert(record.id.as_str(), json(record)?.as_str())?;
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
fn store_delivery(tables: &mut Tables, record: &DeliveryRecord) -> Result<()> {
    if let Some(old) = tables.deliveries.get(record.id)? {
        let old: DeliveryRecord = parse(DELIVERIES.name(), old.value())?;
        if let DeliveryState::Delivered { at_ms } | DeliveryState::Dead { at_ms, .. } = old.state {
            tables.finished.remove((at_ms, old.id))?;
        }
    }
    match &record.state {
        DeliveryState::Pending { next_attempt_ms } => {
            tables.pending.insert(record.id, *next_attempt_ms)?;
        }
        DeliveryState::Delivered { at_ms } | DeliveryState::Dead { at_ms, .. } => {
            tables.pending.remove(record.id)?;
            tables.finished.insert((*at_ms, record.id), ())?;
        }
    }
    tables
        .deliveries
        .insert(record.id, json(record)?.as_str())?;
    Ok(())
}

/// Removes what `retention` no longer keeps, at most [`COMPACT_BATCH`] records of a kind.
fn compact(tables: &mut Tables, retention: &Retention, now_ms: u64) -> Result<Compacted> {
    let age_ms = |hours: f64| (hours.max(0.0) * 3_600_000.0) as u64;
    let delivery_cutoff = now_ms.saturating_sub(age_ms(retention.deliveries_hours));
    let key_cutoff = now_ms.saturating_sub(age_ms(
        retention.dedupe_hours.max(retention.deliveries_hours),
    ));
    let message_cutoff = now_ms.saturating_sub(age_ms(retention.messages_hours));
    let mut compacted = Compacted::default();
    {
        let Tables {
            finished,
            deliveries,
            keys,
            retired,
            ..
        } = tables;
        let old: Vec<(u64, u64)> = finished
            .range(..(delivery_cutoff, 0))?
            .take(COMPACT_BATCH)
            .map(|entry| entry.map(|(key, _)| key.value()))
            .collect::<Result<_, _>>()?;
        for (finished_ms, id) in old {
            finished.remove((finished_ms, id))?;
            if let Some(json) = deliveries.remove(id)? {
                let record: DeliveryRecord = parse(DELIVERIES.name(), json.value())?;
                let key = (record.instance.as_str(), record.idempotency_key.as_str());
                if finished_ms < key_cutoff {
                    keys.remove(key)?;
                    compacted.delivery_keys += 1;
                } else {
                    retired.insert((finished_ms, id), key)?;
                }
                compacted.deliveries += 1;
            }
        }
        let expired: Vec<((u64, u64), (String, String))> = retired
            .range(..(key_cutoff, 0))?
            .take(COMPACT_BATCH)
            .map(|entry| {
                entry.map(|(at, key)| {
                    let (instance, key) = key.value();
                    (at.value(), (instance.to_string(), key.to_string()))
                })
            })
            .collect::<Result<_, _>>()?;
        for (at, (instance, key)) in expired {
            retired.remove(at)?;
            keys.remove((instance.as_str(), key.as_str()))?;
            compacted.delivery_keys += 1;
        }
    }
    {
        let Tables {
            messages,
            sims,
            sent,
            ..
        } = tables;
        let mut old = Vec::new();
        for entry in messages.iter()?.take(COMPACT_BATCH) {
            let (id, json) = entry?;
            let observed: Observed<serde_json::Value> = parse(MESSAGES.name(), json.value())?;
            if observed.at_ms >= message_cutoff {
                break;
            }
            old.push(id.value());
        }
        for id in old {
            messages.remove(id)?;
            compacted.messages += 1;
        }
        let mut gone = Vec::new();
        for entry in sims.iter()? {
            let (key, json) = entry?;
            let observed: Observed<serde_json::Value> = parse(SIMS.name(), json.value())?;
            if observed.at_ms < message_cutoff {
                let (instance, sim) = key.value();
                gone.push((instance.to_string(), sim.to_string()));
            }
        }
        for (instance, sim) in gone {
            sims.remove((instance.as_str(), sim.as_str()))?;
            compacted.sims += 1;
        }
        let mut old = Vec::new();
        for entry in sent.iter()? {
            let (id, json) = entry?;
            let record: SentMessage = parse(SENT.name(), json.value())?;
            if record.updated_ms < message_cutoff {
                old.push(id.value().to_string());
                if old.len() == COMPACT_BATCH {
                    break;
                }
            }
        }
        for id in old {
            sent.remove(id.as_str())?;
            compacted.sent += 1;
        }
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
        messages,
        sims,
        sent,
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
                messages.insert(*next_message, record.as_str())?;
                *next_message += 1;
            }
            Event::SimStatusChanged(status) => {
                let sim = sim_key(&status);
                let record = observed(at_ms, instance, message_id, status)?;
                sims.insert((instance, sim.as_str()), record.as_str())?;
            }
            Event::DeliveryStatusChanged(status) => {
                let known = sent
                    .get(status.id.as_str())?
                    .map(|json| parse::<SentMessage>(SENT.name(), json.value()))
                    .transpose()?;
                // Only the instance the SMS went to reports on it.
                if let Some(mut record) = known.filter(|record| record.instance == instance) {
                    record.apply(&status, at_ms);
                    sent.insert(status.id.as_str(), json(&record)?.as_str())?;
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
            db.kv_snapshot().unwrap().keys("a", None, 10).unwrap(),
            (vec!["k".to_string()], true)
        );
    }

    /// The database's files as a crash would leave them now: what reached the page cache.
    fn crash_image(from: &Path) -> tempfile::TempDir {
        let image = tempfile::tempdir().unwrap();
        for file in ["simrelay.redb", "simrelay.log"] {
            std::fs::copy(from.join(file), image.path().join(file)).unwrap();
        }
        image
    }

    #[test]
    fn a_crash_keeps_every_commit_acknowledged_and_applying_the_log_twice_changes_nothing() {
        // An image taken before redb's next checkpoint: its log holds both batches.
        let image = (0..50)
            .find_map(|_| {
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
                let (_, records) = log::Log::open(image.path(), None, None).unwrap();
                (records.len() == 2).then_some(image)
            })
            .expect("a checkpoint came between the commits every time");
        let check = |db: &Db| {
            assert_eq!(db.kv_get("a", "k").unwrap().as_deref(), Some(&b"2"[..]));
            assert_eq!(db.kv_get("a", "gone").unwrap(), None);
            let ids: Vec<_> = db.deliveries().unwrap().iter().map(|d| d.id).collect();
            assert_eq!(ids, [1, 2]);
        };
        // Each open applies the log and commits durably; the log starts over only with the
        // next batch, so the second open finds the same records, older than its database's
        // checkpoint now, and skips them.
        for _ in 0..2 {
            let db = Db::open(image.path()).unwrap();
            check(&db);
        }
        let db = Db::open(image.path()).unwrap();
        let next = db.commit(commit("a", &[], &["push/3"])).unwrap();
        assert_eq!(
            next.deliveries[0].1, 3,
            "the id counter came back with the rest"
        );
    }

    #[test]
    fn a_log_is_not_applied_to_an_older_copy_of_its_database() {
        let older = tempfile::tempdir().unwrap();
        drop(Db::open(older.path()).unwrap());
        let newer = crash_image(older.path());
        {
            // Opening checkpoints, so the commit is logged in a generation `older` lacks.
            let db = Db::open(newer.path()).unwrap();
            db.commit(commit("a", &[("k", Some("1"))], &[])).unwrap();
            let image = crash_image(newer.path());
            std::fs::copy(
                image.path().join("simrelay.log"),
                older.path().join("simrelay.log"),
            )
            .unwrap();
            let reopened = Db::open(image.path()).unwrap();
            assert_eq!(
                reopened.kv_get("a", "k").unwrap().as_deref(),
                Some(&b"1"[..]),
                "with its own database the log applies"
            );
        }
        let error = format!("{:#}", Db::open(older.path()).err().unwrap());
        assert!(
            error.contains("holds writes made after the last checkpoint of the database"),
            "{error}"
        );
        // The way out the error names: the log moved away, the database opens as it was.
        std::fs::remove_file(older.path().join("simrelay.log")).unwrap();
        let db = Db::open(older.path()).unwrap();
        assert_eq!(db.kv_get("a", "k").unwrap(), None);
    }

    #[test]
    fn a_quiet_moment_makes_the_database_durable_without_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path()).unwrap();
        db.commit(commit("a", &[("k", Some("1"))], &[])).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        db.commit(commit("a", &[("k", Some("2"))], &[])).unwrap();
        // The checkpoint follows the reply: look for it a while.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let redb_alone = tempfile::tempdir().unwrap();
            std::fs::copy(
                dir.path().join("simrelay.redb"),
                redb_alone.path().join("simrelay.redb"),
            )
            .unwrap();
            let value = Db::open(redb_alone.path())
                .unwrap()
                .kv_get("a", "k")
                .unwrap();
            if value.as_deref() == Some(&b"2"[..]) {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no checkpoint: {value:?}"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
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
        let keys = |cursor, limit| db.kv_snapshot().unwrap().keys("a", cursor, limit).unwrap();
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
        db.commit(Commit {
            instance: "simrelay".into(),
            compact: Some((retention, 3_000)),
            ..Default::default()
        })
        .unwrap();
        assert!(db.sent_message("out-1").unwrap().is_none(), "retention");
    }

    #[test]
    fn a_finished_delivery_leaves_the_pending_index() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path()).unwrap();
        let (_, id) = db.commit(commit("a", &[], &["push/1"])).unwrap().deliveries[0];
        let mut record = db.delivery(id).unwrap().unwrap();
        record.state = DeliveryState::Pending {
            next_attempt_ms: 9_000,
        };
        db.commit(Commit {
            instance: "a".into(),
            consumed: Consumed::DeliveryUpdated(record.clone()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(db.pending_deliveries().unwrap(), [(9_000, id)]);
        record.state = DeliveryState::Delivered { at_ms: 9_000 };
        db.commit(Commit {
            instance: "a".into(),
            consumed: Consumed::DeliveryUpdated(record),
            ..Default::default()
        })
        .unwrap();
        assert!(db.pending_deliveries().unwrap().is_empty());
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
