//! The embedded on-disk database: plugin key-value state, deliveries and queued events.
//!
//! Everything one plugin call produced (its key-value writes, the deliveries it asked for,
//! the events for downstream instances, and the fate of the input it consumed) commits in
//! one durable transaction, so a crash leaves either all of it or none of it.

use std::path::Path;
use std::sync::{Arc, mpsc};

use anyhow::{Context, Result};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, TableHandle};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::abi::{Event, OutgoingRequest};
use crate::kv::KvWrites;

/// (store label, key) → value.
const KV: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("kv");
/// delivery id → JSON [`DeliveryRecord`].
const DELIVERIES: TableDefinition<u64, &str> = TableDefinition::new("deliveries");
/// (instance, idempotency key) → delivery id.
const DELIVERY_KEYS: TableDefinition<(&str, &str), u64> = TableDefinition::new("delivery_keys");
/// event id → JSON [`QueuedEvent`].
const EVENTS: TableDefinition<u64, &str> = TableDefinition::new("events");
const COUNTERS: TableDefinition<&str, u64> = TableDefinition::new("counters");

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum DeliveryState {
    Pending { next_attempt_ms: u64 },
    Delivered { at_ms: u64 },
    GaveUp { at_ms: u64, reason: String },
}

/// An HTTP request a plugin asked the host to deliver, and what has become of it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DeliveryRecord {
    pub id: u64,
    pub instance: String,
    pub idempotency_key: String,
    /// The message whose handling asked for it; logged with every attempt.
    pub message_id: String,
    pub request: OutgoingRequest,
    pub created_ms: u64,
    pub attempts: u32,
    pub state: DeliveryState,
    /// The last response status or transport error, for operators.
    pub last_result: Option<String>,
}

/// An event on its way to one downstream instance.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct QueuedEvent {
    pub id: u64,
    pub source: String,
    pub target: String,
    pub message_id: String,
    pub event: Event,
    pub attempts: u32,
    pub next_attempt_ms: u64,
    pub last_error: Option<String>,
}

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
    pub kv: Arc<KvWrites>,
    pub deliveries: Vec<NewDelivery>,
    pub events: Vec<NewEvent>,
    pub consumed: Consumed,
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
#[derive(Default)]
pub struct Committed {
    pub deliveries: Vec<(u64, u64)>,
    pub events: Vec<(u64, u64)>,
    /// Deliveries dropped because the instance already had one with the same key.
    pub duplicate_deliveries: usize,
}

type CommitJob = (Commit, mpsc::SyncSender<Result<Committed, String>>);

pub struct Db {
    db: Arc<Database>,
    /// `None` only while dropping.
    committer: Option<(mpsc::Sender<CommitJob>, std::thread::JoinHandle<()>)>,
}

impl Drop for Db {
    /// Lets the committer finish what was submitted, so the file is closed on return.
    fn drop(&mut self) {
        if let Some((queue, thread)) = self.committer.take() {
            drop(queue);
            let _ = thread.join();
        }
    }
}

/// A commit on its way to disk.
pub struct PendingCommit(PendingState);

enum PendingState {
    Done(Committed),
    Waiting(mpsc::Receiver<Result<Committed, String>>),
}

impl PendingCommit {
    /// Blocks until the commit is durable.
    pub fn wait(self) -> Result<Committed> {
        match self.0 {
            PendingState::Done(committed) => Ok(committed),
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
fn run_committer(db: Arc<Database>, queue: mpsc::Receiver<CommitJob>) {
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
                .map(|(commit, _)| apply(&txn, std::mem::take(commit)))
                .collect::<Result<Vec<_>>>()?;
            txn.commit()?;
            Ok(committed)
        })();
        match result {
            Ok(committed) => {
                for ((_, reply), committed) in batch.into_iter().zip(committed) {
                    let _ = reply.send(Ok(committed));
                }
            }
            Err(error) => {
                let message = format!("database commit failed: {error:#}");
                for (_, reply) in batch {
                    let _ = reply.send(Err(message.clone()));
                }
                tracing::error!("{message}; stopping so that nothing acknowledged is lost");
                std::process::exit(70);
            }
        }
    }
}

impl Db {
    pub fn open(data_dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(data_dir)
            .with_context(|| format!("cannot create data directory {}", data_dir.display()))?;
        let path = data_dir.join("simrelay.redb");
        let db = Database::create(&path)
            .with_context(|| format!("cannot open database {}", path.display()))?;
        let txn = db.begin_write()?;
        txn.open_table(KV)?;
        txn.open_table(DELIVERIES)?;
        txn.open_table(DELIVERY_KEYS)?;
        txn.open_table(EVENTS)?;
        txn.open_table(COUNTERS)?;
        txn.commit()?;
        let db = Arc::new(db);
        let (committer, queue) = mpsc::channel();
        let writer = db.clone();
        let thread = std::thread::Builder::new()
            .name("db-committer".into())
            .spawn(move || run_committer(writer, queue))?;
        Ok(Db {
            db,
            committer: Some((committer, thread)),
        })
    }

    pub fn kv_get(&self, label: &str, key: &str) -> Result<Option<Vec<u8>>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(KV)?;
        Ok(table.get((label, key))?.map(|value| value.value().to_vec()))
    }

    pub fn kv_keys(&self, label: &str) -> Result<Vec<String>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(KV)?;
        // Keys sort by label first: one label's keys run on from (label, "").
        let mut keys = Vec::new();
        for entry in table.range((label, "")..)? {
            let (key, _) = entry?;
            let (entry_label, entry_key) = key.value();
            if entry_label != label {
                break;
            }
            keys.push(entry_key.to_string());
        }
        Ok(keys)
    }

    /// Queues a commit; it becomes durable, in submission order, with the batch it joins.
    pub fn submit(&self, commit: Commit) -> PendingCommit {
        if commit.is_empty() {
            // Nothing to make durable: spare the transaction and its fsync.
            return PendingCommit(PendingState::Done(Committed::default()));
        }
        let (reply, receiver) = mpsc::sync_channel(1);
        // A send fails only once the committer is gone; `wait` then reports it.
        if let Some((queue, _)) = &self.committer {
            let _ = queue.send((commit, reply));
        }
        PendingCommit(PendingState::Waiting(receiver))
    }

    pub fn delivery(&self, id: u64) -> Result<Option<DeliveryRecord>> {
        self.read_one(DELIVERIES, id)
    }

    pub fn queued_event(&self, id: u64) -> Result<Option<QueuedEvent>> {
        self.read_one(EVENTS, id)
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

/// Writes one call's outcome into the batch's transaction.
fn apply(txn: &redb::WriteTransaction, commit: Commit) -> Result<Committed> {
    let mut committed = Committed::default();
    let mut kv = txn.open_table(KV)?;
    for (key, value) in commit.kv.iter() {
        match value {
            Some(value) => kv.insert((commit.instance.as_str(), key.as_str()), value.as_slice())?,
            None => kv.remove((commit.instance.as_str(), key.as_str()))?,
        };
    }

    let mut counters = txn.open_table(COUNTERS)?;
    let mut next_id = counters.get("next_id")?.map_or(1, |value| value.value());
    let mut allocate = || {
        next_id += 1;
        next_id - 1
    };

    let mut deliveries = txn.open_table(DELIVERIES)?;
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
        };
        keys.insert(unique, record.id)?;
        deliveries.insert(record.id, serde_json::to_string(&record)?.as_str())?;
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
        };
        events.insert(queued.id, serde_json::to_string(&queued)?.as_str())?;
        committed.events.push((commit.now_ms, queued.id));
    }

    match commit.consumed {
        Consumed::Nothing => {}
        Consumed::EventHandled(id) => {
            events.remove(id)?;
        }
        Consumed::EventFailed(queued) => {
            events.insert(queued.id, serde_json::to_string(&queued)?.as_str())?;
        }
        Consumed::DeliveryUpdated(record) => {
            deliveries.insert(record.id, serde_json::to_string(&record)?.as_str())?;
        }
    }
    counters.insert("next_id", next_id)?;
    Ok(committed)
}

fn parse<T: DeserializeOwned>(table: &str, json: &str) -> Result<T> {
    serde_json::from_str(json).with_context(|| format!("corrupt record in table `{table}`"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::abi::Event;
    use crate::abi::v0_1::simrelay::adapter::types::SendRequest;

    impl Db {
        fn commit(&self, commit: Commit) -> Result<Committed> {
            self.submit(commit).wait()
        }
    }

    fn request(url: &str) -> OutgoingRequest {
        OutgoingRequest {
            method: "POST".into(),
            url: url.into(),
            headers: Vec::new(),
            body: Vec::new(),
            timeout_ms: None,
        }
    }

    fn commit(instance: &str, kv: &[(&str, Option<&str>)], delivery_keys: &[&str]) -> Commit {
        Commit {
            instance: instance.into(),
            message_id: "m1".into(),
            now_ms: 1_000,
            kv: Arc::new(
                kv.iter()
                    .map(|(key, value)| (key.to_string(), value.map(|v| v.as_bytes().to_vec())))
                    .collect(),
            ),
            deliveries: delivery_keys
                .iter()
                .map(|key| NewDelivery {
                    idempotency_key: key.to_string(),
                    request: request("http://127.0.0.1/x"),
                })
                .collect(),
            events: Vec::new(),
            consumed: Consumed::Nothing,
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
    }

    #[test]
    fn state_is_per_instance_and_survives_reopening() {
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
        assert_eq!(db.kv_keys("a").unwrap(), ["k"]);
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
}
