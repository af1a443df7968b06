//! The embedded on-disk database: plugin key-value state, deliveries and queued events.
//!
//! Everything one plugin call produced (its key-value writes, the deliveries it asked for,
//! the events for downstream instances, and the fate of the input it consumed) commits in
//! one durable transaction, so a crash leaves either all of it or none of it. Commits queue
//! in order; a committer thread writes all that are waiting in one transaction with one
//! fsync (group commit).

mod faults;

use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, mpsc};

use anyhow::{Context, Result};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, TableHandle};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::kv::KvWrites;
use crate::model::{Event, OutgoingRequest};
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
/// event id → JSON [`QueuedEvent`]; an event leaves once its target handled it.
const EVENTS: TableDefinition<u64, &str> = TableDefinition::new("events");
const COUNTERS: TableDefinition<&str, u64> = TableDefinition::new("counters");

/// The environment variable that turns on [`faults::FaultyBackend`] for tests.
const FAULT_FILE_VAR: &str = "SIMRELAY_FAULT_FILE";

/// A delivery asked for by a call, before it has an id.
pub struct NewDelivery {
    pub idempotency_key: String,
    pub request: OutgoingRequest,
}

/// An event asked for by a call, before it has an id.
pub struct NewEvent {
    pub target: String,
    pub event: Event,
}

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
    pub events: Vec<NewEvent>,
    pub consumed: Consumed,
    /// The newest queued commit whose writes the call read: the outcome is not durable
    /// before that commit is.
    pub read_unflushed: Option<u64>,
}

impl Commit {
    fn is_empty(&self) -> bool {
        self.kv.is_empty()
            && self.deliveries.is_empty()
            && self.events.is_empty()
            && matches!(self.consumed, Consumed::Nothing)
    }
}

/// What a commit added, for the workers to schedule.
#[derive(Default, Debug)]
pub struct Committed {
    /// (due, id) of each new delivery.
    pub deliveries: Vec<(u64, u64)>,
    /// (due, id, target instance) of each new event.
    pub events: Vec<(u64, u64, String)>,
    /// Deliveries dropped because the instance already had one with the same key.
    pub duplicate_deliveries: usize,
}

type CommitJob = (u64, Commit, mpsc::SyncSender<Result<Committed, String>>);

/// How far the queue of commits has reached the disk.
#[derive(Default)]
struct Durability {
    state: Mutex<Watermark>,
    changed: Condvar,
}

#[derive(Default)]
struct Watermark {
    /// Every commit up to this sequence is durable.
    durable: u64,
    /// A commit failed: nothing queued from then on will become durable.
    failed: bool,
}

impl Durability {
    fn wait_for(&self, sequence: u64) -> Result<()> {
        let mut watermark = self.state.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if watermark.durable >= sequence {
                return Ok(());
            }
            if watermark.failed {
                anyhow::bail!("an earlier commit this call read from failed");
            }
            watermark = self
                .changed
                .wait(watermark)
                .unwrap_or_else(|p| p.into_inner());
        }
    }

    fn update(&self, change: impl FnOnce(&mut Watermark)) {
        change(&mut self.state.lock().unwrap_or_else(|p| p.into_inner()));
        self.changed.notify_all();
    }
}

/// The queue into the committer thread; the sequence is taken under the same lock as the
/// send, so the committer sees commits in sequence order.
struct Queue {
    sender: mpsc::Sender<CommitJob>,
    next_sequence: u64,
}

pub struct Db {
    db: Arc<Database>,
    durability: Arc<Durability>,
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
    /// Nothing to write, but it read writes that must become durable first.
    AfterDurable(u64, Arc<Durability>),
    Waiting(mpsc::Receiver<Result<Committed, String>>),
}

impl PendingCommit {
    /// The commit's place in the queue, when it writes anything.
    pub fn sequence(&self) -> Option<u64> {
        self.sequence
    }

    /// Blocks until the commit, and every commit it read from, is durable.
    pub fn wait(self) -> Result<Committed> {
        match self.state {
            PendingState::Done(committed) => Ok(committed),
            PendingState::AfterDurable(sequence, durability) => {
                durability.wait_for(sequence)?;
                Ok(Committed::default())
            }
            PendingState::Waiting(reply) => match reply.recv() {
                Ok(result) => result.map_err(anyhow::Error::msg),
                Err(_) => anyhow::bail!("the database committer stopped"),
            },
        }
    }
}

/// The most waiting commits that share one transaction, and so one fsync.
const MAX_BATCH: usize = 256;

/// Applies queued commits in order, as many per transaction as are waiting.
///
/// A failed transaction stops the process: later calls may already have read that batch's
/// writes, and none of its commits was acknowledged, so a restart loses nothing.
fn run_committer(db: Arc<Database>, durability: Arc<Durability>, queue: mpsc::Receiver<CommitJob>) {
    while let Ok(first) = queue.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let result = (|| -> Result<Vec<Committed>> {
            let txn = db.begin_write()?;
            let committed = batch
                .iter_mut()
                .map(|(_, commit, _)| apply(&txn, std::mem::take(commit)))
                .collect::<Result<Vec<_>>>()?;
            txn.commit()?;
            Ok(committed)
        })();
        let last = batch.last().map_or(0, |(sequence, _, _)| *sequence);
        match result {
            Ok(committed) => {
                durability.update(|watermark| watermark.durable = last);
                for ((_, _, reply), committed) in batch.into_iter().zip(committed) {
                    let _ = reply.send(Ok(committed));
                }
            }
            Err(error) => {
                durability.update(|watermark| watermark.failed = true);
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
    }
}

impl Db {
    /// Opens (or creates) the database in `data_dir`; fails when it cannot be written.
    pub fn open(data_dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(data_dir)
            .with_context(|| format!("cannot create data directory {}", data_dir.display()))?;
        let path = data_dir.join("simrelay.redb");
        let db = match std::env::var_os(FAULT_FILE_VAR) {
            Some(trigger) => {
                let file = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .open(&path)?;
                let backend = faults::FaultyBackend::new(file, trigger.into())?;
                redb::Builder::new().create_with_backend(backend)
            }
            None => Database::create(&path),
        }
        .with_context(|| format!("cannot open database {}", path.display()))?;
        let txn = db.begin_write()?;
        txn.open_table(KV)?;
        txn.open_table(DELIVERIES)?;
        txn.open_table(PENDING)?;
        txn.open_table(DELIVERY_KEYS)?;
        txn.open_table(EVENTS)?;
        migrate(&txn)?;
        txn.commit()
            .with_context(|| format!("cannot write database {}", path.display()))?;
        let db = Arc::new(db);
        let durability = Arc::new(Durability::default());
        let (sender, receiver) = mpsc::channel();
        let (writer, watermark) = (db.clone(), durability.clone());
        let committer = std::thread::Builder::new()
            .name("db-committer".into())
            .spawn(move || run_committer(writer, watermark, receiver))?;
        Ok(Db {
            db,
            durability,
            queue: Mutex::new(Some(Queue {
                sender,
                next_sequence: 1,
            })),
            committer: Some(committer),
        })
    }

    pub fn kv_get(&self, label: &str, key: &str) -> Result<Option<Vec<u8>>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(KV)?;
        Ok(table.get((label, key))?.map(|value| value.value().to_vec()))
    }

    /// The label's keys after `cursor` (all when `None`), in order.
    pub fn kv_keys(&self, label: &str, cursor: Option<&str>) -> Result<Vec<String>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(KV)?;
        // Keys sort by label first: one label's keys run on from (label, "").
        let mut keys = Vec::new();
        for entry in table.range((label, cursor.unwrap_or(""))..)? {
            let (key, _) = entry?;
            let (entry_label, entry_key) = key.value();
            if entry_label != label {
                break;
            }
            if cursor != Some(entry_key) {
                keys.push(entry_key.to_string());
            }
        }
        Ok(keys)
    }

    /// Queues a commit; it becomes durable, in submission order, with the batch it joins.
    pub fn submit(&self, commit: Commit) -> PendingCommit {
        if commit.is_empty() {
            // Nothing to write: spare the transaction and its fsync, but not the wait for
            // what the call read.
            let state = match commit.read_unflushed {
                Some(sequence) => PendingState::AfterDurable(sequence, self.durability.clone()),
                None => PendingState::Done(Committed::default()),
            };
            return PendingCommit {
                sequence: None,
                state,
            };
        }
        let (reply, receiver) = mpsc::sync_channel(1);
        let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        // A send fails only once the committer is gone; `wait` then reports it.
        let sequence = queue.as_mut().map(|queue| {
            let sequence = queue.next_sequence;
            queue.next_sequence += 1;
            let _ = queue.sender.send((sequence, commit, reply));
            sequence
        });
        PendingCommit {
            sequence,
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
        // Schema 2 indexes pending deliveries, so start-up no longer reads every delivery.
        let deliveries = txn.open_table(DELIVERIES)?;
        let mut pending = txn.open_table(PENDING)?;
        for entry in deliveries.iter()? {
            let record: DeliveryRecord = parse(DELIVERIES.name(), entry?.1.value())?;
            if let DeliveryState::Pending { next_attempt_ms } = record.state {
                pending.insert(record.id, next_attempt_ms)?;
            }
        }
    }
    counters.insert("schema", SCHEMA)?;
    Ok(())
}

/// Writes one call's outcome into the batch's transaction.
fn apply(txn: &redb::WriteTransaction, commit: Commit) -> Result<Committed> {
    let mut committed = Committed::default();
    let mut kv = txn.open_table(KV)?;
    for (label, writes) in &commit.kv {
        for (key, value) in writes.iter() {
            match value {
                Some(value) => kv.insert((label.as_str(), key.as_str()), value.as_slice())?,
                None => kv.remove((label.as_str(), key.as_str()))?,
            };
        }
    }

    let mut counters = txn.open_table(COUNTERS)?;
    let mut next_id = counters.get("next_id")?.map_or(1, |value| value.value());
    let mut allocate = || {
        next_id += 1;
        next_id - 1
    };

    let mut deliveries = txn.open_table(DELIVERIES)?;
    let mut pending = txn.open_table(PENDING)?;
    let mut keys = txn.open_table(DELIVERY_KEYS)?;
    for delivery in commit.deliveries {
        let unique = (commit.instance.as_str(), delivery.idempotency_key.as_str());
        if keys.get(unique)?.is_some() {
            committed.duplicate_deliveries += 1;
            continue;
        }
        let record = DeliveryRecord {
            id: allocate(),
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
        keys.insert(unique, record.id)?;
        deliveries.insert(record.id, json(&record)?.as_str())?;
        pending.insert(record.id, commit.now_ms)?;
        committed.deliveries.push((commit.now_ms, record.id));
    }

    let mut events = txn.open_table(EVENTS)?;
    for event in commit.events {
        let queued = QueuedEvent {
            id: allocate(),
            source: commit.instance.clone(),
            target: event.target,
            message_id: commit.message_id.clone(),
            event: event.event,
            attempts: 0,
            next_attempt_ms: commit.now_ms,
            last_error: None,
            created_ms: commit.now_ms,
        };
        events.insert(queued.id, json(&queued)?.as_str())?;
        committed
            .events
            .push((commit.now_ms, queued.id, queued.target));
    }

    match commit.consumed {
        Consumed::Nothing => {}
        Consumed::EventHandled(id) => {
            events.remove(id)?;
        }
        Consumed::EventFailed(queued) => {
            events.insert(queued.id, json(&queued)?.as_str())?;
        }
        Consumed::DeliveryUpdated(record) => {
            match record.state {
                DeliveryState::Pending { next_attempt_ms } => {
                    pending.insert(record.id, next_attempt_ms)?
                }
                _ => pending.remove(record.id)?,
            };
            deliveries.insert(record.id, json(&record)?.as_str())?;
        }
    }
    counters.insert("next_id", next_id)?;
    Ok(committed)
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
        assert_eq!(db.kv_keys("a", None).unwrap(), ["k"]);
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
        assert_eq!(db.kv_keys("a", Some("1")).unwrap(), ["2", "3"]);
        assert_eq!(db.kv_keys("a", Some("10")).unwrap(), ["2", "3"]);
    }

    #[test]
    fn a_handled_event_leaves_the_queue_in_the_same_commit() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path()).unwrap();
        let mut queue = commit("a", &[], &[]);
        queue.events.push(NewEvent {
            target: "b".into(),
            event: Event::SendSms(SendRequest {
                id: "s1".into(),
                to: "+1".into(),
                text: "hi".into(),
                device: None,
                sim: None,
                send_at_ms: None,
                urgent: false,
            }),
        });
        let queued = db.commit(queue).unwrap().events;
        assert_eq!(db.queued_events().unwrap().len(), 1);
        let mut handled = commit("b", &[("seen", Some("1"))], &["out/1"]);
        handled.consumed = Consumed::EventHandled(queued[0].1);
        db.commit(handled).unwrap();
        assert!(db.queued_events().unwrap().is_empty());
        assert_eq!(db.kv_get("b", "seen").unwrap().as_deref(), Some(&b"1"[..]));
        assert_eq!(db.deliveries().unwrap().len(), 1);
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
