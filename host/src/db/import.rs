//! Imports a data directory of the builds before the store: a redb database,
//! `simrelay.redb`, behind a write-ahead log, `simrelay.log`.
//!
//! The database holds everything up to its last checkpoint; the log, every batch since, as
//! the table, key and value bytes redb was given. Both are read as they are, the log's
//! writes applied after the tables, and the two files are renamed with `.imported` once the
//! store holds everything durably. A crash before that imports again from the start, over
//! the same writes.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use anyhow::{Context, Result};
use redb::{ReadableDatabase, ReadableTable, TableDefinition};

use super::store::{Codec, Table, WriteTxn};
use super::{Store, parse};
use simrelay_core::relay::DeliveryRecord;
use simrelay_core::retry::DeliveryState;

const DATABASE_FILE: &str = "simrelay.redb";
const LOG_FILE: &str = "simrelay.log";
const LOG_MAGIC: &[u8; 16] = b"simrelay-log-v1\n";
/// Length, checksum, generation.
const LOG_RECORD_HEADER: usize = 16;
/// The value length that marks a remove.
const LOG_REMOVED: u32 = u32::MAX;
/// The log's number for the counters table.
const COUNTERS_ID: u8 = 11;
/// Writes per store transaction while importing.
const CHUNK: usize = 10_000;

/// The redb tables, with the numbers the log gave them, and the store's table for each.
macro_rules! earlier_tables {
    ($store:expr, $($id:tt $name:literal $key:ty => $value:ty, $table:ident;)*) => {
        [$(&Earlier::<$key, $value, _, _> {
            id: $id,
            definition: TableDefinition::new($name),
            table: &$store.$table,
        } as &dyn Import),*]
    };
}

/// Imports `data_dir`'s database of an earlier build into `store`, when there is one.
pub(super) fn earlier_database(data_dir: &Path, store: &Store) -> Result<()> {
    let path = data_dir.join(DATABASE_FILE);
    if !path.exists() {
        return Ok(());
    }
    // Every open of the store records its layout after importing: a store that has one has
    // run, and the earlier database beside it is older than what the store holds.
    if store.counters.get(&store.db.read_tx(), "schema")?.is_some() {
        anyhow::bail!(
            "{} is beside a store that has already run ({}): importing it again would bring \
             back older state. Move it away, or move the store away to import it afresh",
            path.display(),
            data_dir.join(super::STORE_DIR).display()
        );
    }
    tracing::info!("importing {} into the store", path.display());
    let database = redb::Database::open(&path)
        .with_context(|| format!("cannot open the earlier database {}", path.display()))?;
    let redb = database.begin_read()?;
    let tables = earlier_tables![store,
        1 "kv" (&str, &str) => &[u8], kv;
        2 "deliveries" u64 => &str, deliveries;
        3 "pending_deliveries" u64 => u64, pending;
        4 "delivery_keys" (&str, &str) => u64, keys;
        5 "finished_deliveries" (u64, u64) => (), finished;
        6 "events" u64 => &str, events;
        7 "retired_delivery_keys" (u64, u64) => (&str, &str), retired;
        8 "messages" u64 => &str, messages;
        9 "sims" (&str, &str) => &str, sims;
        10 "sent_messages" &str => &str, sent;
        COUNTERS_ID "counters" &str => u64, counters;
    ];
    let counter = |name: &str| -> Result<Option<u64>> {
        match redb.open_table(TableDefinition::<&str, u64>::new("counters")) {
            Ok(counters) => Ok(counters.get(name)?.map(|value| value.value())),
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
            Err(error) => Err(error.into()),
        }
    };
    let records = log_records(data_dir, counter("log_generation")?)?;
    let mut writer = Writer::new(store);
    // The counters are the store's own but for the two ids it continues from.
    for table in tables.iter().filter(|table| table.id() != COUNTERS_ID) {
        table.copy(&redb, &mut writer)?;
    }
    for name in ["next_id", "next_message"] {
        if let Some(value) = counter(name)? {
            store.counters.insert(writer.txn(), name, value);
            writer.wrote()?;
        }
    }
    for record in &records {
        for (id, key, value) in decode(record)? {
            let table = tables
                .iter()
                .find(|table| table.id() == id)
                .with_context(|| format!("the write-ahead log names table {id}"))?;
            table.replay(&mut writer, key, value);
            writer.wrote()?;
        }
    }
    // The layout of the earliest builds had no indexes of pending and finished deliveries.
    if counter("schema")?.unwrap_or(1) < 2 {
        let records: Vec<(u64, String)> =
            store.deliveries.iter(writer.txn()).collect::<Result<_>>()?;
        for (_, json) in records {
            let record: DeliveryRecord = parse(store.deliveries.name(), &json)?;
            match record.state {
                DeliveryState::Pending { next_attempt_ms } => {
                    store
                        .pending
                        .insert(writer.txn(), record.id, next_attempt_ms);
                }
                DeliveryState::Delivered { at_ms } | DeliveryState::Dead { at_ms, .. } => {
                    store.finished.insert(writer.txn(), (at_ms, record.id), ());
                }
            }
            writer.wrote()?;
        }
    }
    let written = writer.finish()?;
    drop((redb, database));
    for file in [DATABASE_FILE, LOG_FILE] {
        let from = data_dir.join(file);
        if from.exists() {
            let to = data_dir.join(format!("{file}.imported"));
            std::fs::rename(&from, &to)
                .with_context(|| format!("cannot rename {} after importing it", from.display()))?;
        }
    }
    tracing::info!(
        "imported {written} entries and {} batches of the write-ahead log; the earlier files \
         are kept as {DATABASE_FILE}.imported and {LOG_FILE}.imported, to delete once the \
         host runs well",
        records.len()
    );
    Ok(())
}

/// The store's write transaction, committed every [`CHUNK`] writes.
struct Writer<'s> {
    store: &'s Store,
    txn: Option<WriteTxn<'s>>,
    written: usize,
}

impl<'s> Writer<'s> {
    fn new(store: &'s Store) -> Self {
        Writer {
            store,
            txn: None,
            written: 0,
        }
    }

    fn txn(&mut self) -> &mut WriteTxn<'s> {
        let db = &self.store.db;
        self.txn
            .get_or_insert_with(|| db.write_tx().durability(Some(fjall::PersistMode::SyncData)))
    }

    /// Counts a write, committing the chunk it completes.
    fn wrote(&mut self) -> Result<()> {
        self.written += 1;
        if self.written.is_multiple_of(CHUNK) {
            self.commit()?;
        }
        Ok(())
    }

    fn commit(&mut self) -> Result<()> {
        if let Some(txn) = self.txn.take() {
            txn.commit()
                .context("cannot write the store while importing")?;
        }
        Ok(())
    }

    fn finish(mut self) -> Result<usize> {
        self.commit()?;
        Ok(self.written)
    }
}

/// One table of the earlier database.
trait Import {
    fn id(&self) -> u8;
    /// Writes every entry of the table into the store.
    fn copy(&self, redb: &redb::ReadTransaction, writer: &mut Writer) -> Result<()>;
    /// Writes one of the log's writes into the store.
    fn replay(&self, writer: &mut Writer, key: &[u8], value: Option<&[u8]>);
}

struct Earlier<'s, K: redb::Key + 'static, V: redb::Value + 'static, KC, VC> {
    id: u8,
    definition: TableDefinition<'static, K, V>,
    table: &'s Table<KC, VC>,
}

impl<K, V, KC, VC> Import for Earlier<'_, K, V, KC, VC>
where
    K: redb::Key + 'static,
    V: redb::Value + 'static,
    KC: for<'a> Codec<In<'a> = K::SelfType<'a>>,
    VC: for<'a> Codec<In<'a> = V::SelfType<'a>>,
{
    fn id(&self) -> u8 {
        self.id
    }

    fn copy(&self, redb: &redb::ReadTransaction, writer: &mut Writer) -> Result<()> {
        let table = match redb.open_table(self.definition) {
            Ok(table) => table,
            // Tables added later are missing from the databases of earlier builds.
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(()),
            Err(error) => return Err(error.into()),
        };
        for entry in table.iter()? {
            let (key, value) = entry?;
            self.table.insert(writer.txn(), key.value(), value.value());
            writer.wrote()?;
        }
        Ok(())
    }

    fn replay(&self, writer: &mut Writer, key: &[u8], value: Option<&[u8]>) {
        match value {
            Some(value) => {
                self.table
                    .insert(writer.txn(), K::from_bytes(key), V::from_bytes(value))
            }
            None => self.table.remove(writer.txn(), K::from_bytes(key)),
        }
    }
}

/// The log's record bodies to apply, oldest first: those of the generation its file starts
/// with, when that is the one the database's last checkpoint started.
fn log_records(data_dir: &Path, checkpointed: Option<u64>) -> Result<Vec<Vec<u8>>> {
    let path = data_dir.join(LOG_FILE);
    let Ok(file) = File::open(&path) else {
        return Ok(Vec::new());
    };
    let size = file.metadata()?.len();
    let mut magic = [0u8; LOG_MAGIC.len()];
    if size < LOG_MAGIC.len() as u64 {
        return Ok(Vec::new());
    }
    file.read_exact_at(&mut magic, 0)?;
    if &magic != LOG_MAGIC {
        return Ok(Vec::new());
    }
    let mut bodies = Vec::new();
    let mut log_generation = None;
    let mut offset = LOG_MAGIC.len() as u64;
    let mut header = [0u8; LOG_RECORD_HEADER];
    while offset + LOG_RECORD_HEADER as u64 <= size {
        file.read_exact_at(&mut header, offset)?;
        let len = u32::from_le_bytes(header[0..4].try_into()?) as u64;
        let sum = u32::from_le_bytes(header[4..8].try_into()?);
        let generation = u64::from_le_bytes(header[8..16].try_into()?);
        let body_at = offset + LOG_RECORD_HEADER as u64;
        if len == 0 || body_at + len > size || log_generation.is_some_and(|g| g != generation) {
            break;
        }
        let mut body = vec![0u8; len as usize];
        file.read_exact_at(&mut body, body_at)?;
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&generation.to_le_bytes());
        hasher.update(&body);
        if hasher.finalize() != sum {
            break;
        }
        log_generation = Some(generation);
        bodies.push(body);
        offset = body_at + len;
    }
    match (checkpointed, log_generation) {
        (Some(started), Some(generation)) if generation > started => anyhow::bail!(
            "{} holds writes made after the last checkpoint of the database beside it: that \
             database is not the one the log was written against, and importing both would \
             mix the two. Put back the database the log belongs to, or move the log away to \
             import the database as it is, without those writes",
            path.display()
        ),
        // Written before the database's last checkpoint, which holds them already.
        (Some(started), Some(generation)) if generation < started => Ok(Vec::new()),
        _ => Ok(bodies),
    }
}

/// One write of the log: (table, key, value), `None` for a remove.
type LoggedWrite<'a> = (u8, &'a [u8], Option<&'a [u8]>);

/// The writes of one log record body, in order.
fn decode(mut body: &[u8]) -> Result<Vec<LoggedWrite<'_>>> {
    fn take<'a>(body: &mut &'a [u8], len: usize) -> Result<&'a [u8]> {
        anyhow::ensure!(body.len() >= len, "a logged write runs past its record");
        let (taken, rest) = body.split_at(len);
        *body = rest;
        Ok(taken)
    }
    fn length(body: &mut &[u8]) -> Result<u32> {
        Ok(u32::from_le_bytes(take(body, 4)?.try_into()?))
    }
    let mut writes = Vec::new();
    while !body.is_empty() {
        let table = take(&mut body, 1)?[0];
        let key_len = length(&mut body)? as usize;
        let key = take(&mut body, key_len)?;
        let value = match length(&mut body)? {
            LOG_REMOVED => None,
            len => Some(take(&mut body, len as usize)?),
        };
        writes.push((table, key, value));
    }
    Ok(writes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::Db;
    use redb::Value;

    fn log_record(generation: u64, writes: &[LoggedWrite]) -> Vec<u8> {
        let mut body = Vec::new();
        for (table, key, value) in writes {
            body.push(*table);
            body.extend_from_slice(&(key.len() as u32).to_le_bytes());
            body.extend_from_slice(key);
            match value {
                Some(value) => {
                    body.extend_from_slice(&(value.len() as u32).to_le_bytes());
                    body.extend_from_slice(value);
                }
                None => body.extend_from_slice(&LOG_REMOVED.to_le_bytes()),
            }
        }
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&generation.to_le_bytes());
        hasher.update(&body);
        let mut record = (body.len() as u32).to_le_bytes().to_vec();
        record.extend_from_slice(&hasher.finalize().to_le_bytes());
        record.extend_from_slice(&generation.to_le_bytes());
        record.extend_from_slice(&body);
        record
    }

    /// A data directory as the builds before the store left it: a pending delivery and a
    /// key-value entry checkpointed at generation 5, and a log of `log_generation` that
    /// changes the entry and removes another.
    fn earlier_data_dir(log_generation: u64) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let database = redb::Database::create(dir.path().join(DATABASE_FILE)).unwrap();
        let txn = database.begin_write().unwrap();
        {
            let kv = TableDefinition::<(&str, &str), &[u8]>::new("kv");
            let mut kv = txn.open_table(kv).unwrap();
            kv.insert(("a", "k"), b"1".as_slice()).unwrap();
            kv.insert(("a", "gone"), b"x".as_slice()).unwrap();
            let record = DeliveryRecord {
                id: 1,
                instance: "a".into(),
                idempotency_key: "push/1".into(),
                message_id: "m1".into(),
                request: Default::default(),
                created_ms: 1_000,
                attempts: 0,
                state: DeliveryState::Pending {
                    next_attempt_ms: 1_000,
                },
                last_result: None,
                history: Vec::new(),
            };
            let json = serde_json::to_string(&record).unwrap();
            txn.open_table(TableDefinition::<u64, &str>::new("deliveries"))
                .unwrap()
                .insert(1, json.as_str())
                .unwrap();
            txn.open_table(TableDefinition::<u64, u64>::new("pending_deliveries"))
                .unwrap()
                .insert(1, 1_000)
                .unwrap();
            txn.open_table(TableDefinition::<(&str, &str), u64>::new("delivery_keys"))
                .unwrap()
                .insert(("a", "push/1"), 1)
                .unwrap();
            let mut counters = txn
                .open_table(TableDefinition::<&str, u64>::new("counters"))
                .unwrap();
            for (name, value) in [("next_id", 2), ("schema", 2), ("log_generation", 5)] {
                counters.insert(name, value).unwrap();
            }
        }
        txn.commit().unwrap();
        let key = |key: (&'static str, &'static str)| <(&str, &str)>::as_bytes(&key);
        let (changed, gone) = (key(("a", "k")), key(("a", "gone")));
        let mut log = LOG_MAGIC.to_vec();
        log.extend(log_record(
            log_generation,
            &[(1, &changed, Some(b"2")), (1, &gone, None)],
        ));
        std::fs::write(dir.path().join(LOG_FILE), log).unwrap();
        dir
    }

    #[test]
    fn an_earlier_database_and_its_log_are_imported_once() {
        let dir = earlier_data_dir(5);
        {
            let db = Db::open(dir.path()).unwrap();
            assert_eq!(db.kv_get("a", "k").unwrap().as_deref(), Some(&b"2"[..]));
            assert_eq!(db.kv_get("a", "gone").unwrap(), None);
            assert_eq!(db.pending_deliveries().unwrap(), [(1_000, 1)]);
            assert_eq!(db.allocate_id(), 2, "the id counter came along");
        }
        for file in [DATABASE_FILE, LOG_FILE] {
            assert!(!dir.path().join(file).exists());
            assert!(dir.path().join(format!("{file}.imported")).exists());
        }
        let db = Db::open(dir.path()).unwrap();
        assert_eq!(db.kv_get("a", "k").unwrap().as_deref(), Some(&b"2"[..]));
        assert_eq!(db.deliveries().unwrap().len(), 1);
        drop(db);
        // The earlier database put back beside a store that has run is not merged into it.
        let imported = dir.path().join(format!("{DATABASE_FILE}.imported"));
        std::fs::copy(&imported, dir.path().join(DATABASE_FILE)).unwrap();
        let error = format!("{:#}", Db::open(dir.path()).err().unwrap());
        assert!(
            error.contains("beside a store that has already run"),
            "{error}"
        );
    }

    #[test]
    fn a_log_newer_than_its_database_is_refused_and_nothing_is_imported() {
        let dir = earlier_data_dir(6);
        let error = format!("{:#}", Db::open(dir.path()).err().unwrap());
        assert!(
            error.contains("holds writes made after the last checkpoint"),
            "{error}"
        );
        assert!(dir.path().join(DATABASE_FILE).exists());
        // A log of an older generation is in the database already.
        let dir = earlier_data_dir(4);
        let db = Db::open(dir.path()).unwrap();
        assert_eq!(db.kv_get("a", "k").unwrap().as_deref(), Some(&b"1"[..]));
        assert_eq!(db.kv_get("a", "gone").unwrap().as_deref(), Some(&b"x"[..]));
    }
}
