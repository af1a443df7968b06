//! `wasi:keyvalue@0.2.0-draft2` for plugins, on the host's own database.
//!
//! A call sees its instance's own store and the shared stores the configuration grants it;
//! opening any other label is `access-denied`, as on Spin. Reads fall through to the
//! committed state; writes collect in [`KvOverlay`] and reach the database only when the
//! call's whole outcome commits, in the same transaction as the deliveries and events it
//! produced.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use wasmtime::component::Resource;

use crate::db::{Db, KvSnapshot};

pub mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit/deps/keyvalue-2024-10-17",
        world: "imports",
        with: {
            "wasi:keyvalue/store.bucket": super::Bucket,
            "wasi:keyvalue/atomics.cas": super::Cas,
        },
        imports: { default: trappable },
    });
}

use bindings::wasi::keyvalue::{atomics, batch, store};

/// An open bucket; its representation is the index of its store in the call's view.
pub struct Bucket;

/// A compare-and-swap handle: the value seen when it was made.
pub struct Cas {
    store: usize,
    key: String,
    seen: Option<Vec<u8>>,
}

/// Writes of one call to one store, not yet committed. `None` deletes the key.
pub type KvWrites = BTreeMap<String, Option<Vec<u8>>>;

/// One store label. Calls that use it hold its lock, so its state is one serial history
/// (compare-and-swap between instances that share it always sees the latest value), and
/// they see the writes of earlier calls still on their way to disk.
pub struct StoreState {
    pub label: String,
    lock: Arc<parking_lot::Mutex<()>>,
    /// Writes of commits queued but not yet durable, oldest first, by commit sequence.
    unflushed: Mutex<Vec<(u64, Arc<KvWrites>)>>,
}

fn unpoisoned<T>(guard: std::sync::LockResult<MutexGuard<'_, T>>) -> MutexGuard<'_, T> {
    guard.unwrap_or_else(|poison| poison.into_inner())
}

impl StoreState {
    pub fn new(label: &str) -> Arc<Self> {
        Arc::new(StoreState {
            label: label.to_string(),
            lock: Arc::default(),
            unflushed: Mutex::default(),
        })
    }

    /// Waits for the calls using this store before; the guard owns its hold on the lock.
    /// A wait on an async worker lets the worker's other tasks go on elsewhere.
    pub fn lock(&self) -> StoreGuard {
        self.lock
            .try_lock_arc()
            .unwrap_or_else(|| crate::worker::off_worker(|| self.lock.lock_arc()))
    }

    /// The lock, if no call holds it.
    pub fn try_lock(&self) -> Option<StoreGuard> {
        self.lock.try_lock_arc()
    }

    /// Makes a queued commit's writes visible to later calls until it is durable.
    pub fn push_unflushed(&self, sequence: u64, writes: Arc<KvWrites>) {
        unpoisoned(self.unflushed.lock()).push((sequence, writes));
    }

    /// Drops the layers of commits up to `sequence`, now durable: commits reach the disk in
    /// sequence order, so an older layer left behind would hide newer durable state.
    pub fn remove_durable(&self, sequence: u64) {
        unpoisoned(self.unflushed.lock()).retain(|(queued, _)| *queued > sequence);
    }
}

/// A call's hold on one store.
pub type StoreGuard = parking_lot::ArcMutexGuard<parking_lot::RawMutex, ()>;

/// What a call wrote and which queued commits it read from.
pub struct CallWrites {
    /// (label, writes), only stores written to.
    pub stores: Vec<(String, KvWrites)>,
    /// The newest queued commit whose writes the call read: its reply must wait until
    /// that commit is durable, or it could acknowledge what a failed disk then loses.
    pub read_unflushed: Option<u64>,
}

/// The view of one store within a call.
struct StoreView {
    label: String,
    /// Writes of earlier calls not yet durable, oldest first: they sit between this call's
    /// writes and the database.
    unflushed: Vec<(u64, Arc<KvWrites>)>,
    writes: KvWrites,
}

/// The key-value view of one plugin call: the instance's own store first, then the shared
/// stores granted to it. Opening any other label is `access-denied`, as on Spin.
pub struct KvOverlay {
    /// `None` for calls that must not see state, such as `describe` at load time.
    db: Option<Arc<Db>>,
    /// Taken at the call's first read of committed state, and kept for the rest of it.
    snapshot: Option<KvSnapshot>,
    stores: Vec<StoreView>,
    cas: HashMap<u32, Cas>,
    next_cas: u32,
    read_unflushed: Option<u64>,
}

type KvResult<T> = wasmtime::Result<Result<T, store::Error>>;

/// A key and its value, if it has one.
type KeyValuePair = (String, Option<Vec<u8>>);

impl KvOverlay {
    /// The caller holds the lock of every store in `stores`.
    pub fn new(db: Arc<Db>, stores: &[Arc<StoreState>]) -> Self {
        KvOverlay {
            db: Some(db),
            snapshot: None,
            stores: stores
                .iter()
                .map(|state| StoreView {
                    label: state.label.clone(),
                    unflushed: unpoisoned(state.unflushed.lock()).clone(),
                    writes: KvWrites::new(),
                })
                .collect(),
            cas: HashMap::new(),
            next_cas: 0,
            read_unflushed: None,
        }
    }

    pub fn detached() -> Self {
        KvOverlay {
            db: None,
            snapshot: None,
            stores: Vec::new(),
            cas: HashMap::new(),
            next_cas: 0,
            read_unflushed: None,
        }
    }

    pub fn into_writes(self) -> CallWrites {
        CallWrites {
            stores: self
                .stores
                .into_iter()
                .filter(|view| !view.writes.is_empty())
                .map(|view| (view.label, view.writes))
                .collect(),
            read_unflushed: self.read_unflushed,
        }
    }

    fn view(&mut self, bucket: &Resource<Bucket>) -> wasmtime::Result<&mut StoreView> {
        self.stores
            .get_mut(bucket.rep() as usize)
            .ok_or_else(|| wasmtime::format_err!("unknown bucket handle"))
    }

    fn note_read(&mut self, sequence: u64) {
        self.read_unflushed = self.read_unflushed.max(Some(sequence));
    }

    fn read(&mut self, store: usize, key: &str) -> Result<Option<Vec<u8>>, store::Error> {
        match self.read_uncommitted(store, key) {
            Some(value) => Ok(value),
            None => Ok(self.read_committed(store, &[key])?.pop().flatten()),
        }
    }

    /// The values of `keys`, with one read of the database for all those not written
    /// since their last commit.
    fn read_many(
        &mut self,
        store: usize,
        keys: Vec<String>,
    ) -> Result<Vec<KeyValuePair>, store::Error> {
        let uncommitted: Vec<_> = keys
            .iter()
            .map(|key| self.read_uncommitted(store, key))
            .collect();
        let missing: Vec<&str> = keys
            .iter()
            .zip(&uncommitted)
            .filter(|(_, value)| value.is_none())
            .map(|(key, _)| key.as_str())
            .collect();
        let mut committed = self.read_committed(store, &missing)?.into_iter();
        Ok(keys
            .into_iter()
            .zip(uncommitted)
            .map(|(key, value)| {
                let value = value.unwrap_or_else(|| committed.next().flatten());
                (key, value)
            })
            .collect())
    }

    /// The value from this call's writes or from a layer not yet on disk, when one has
    /// the key; reading a layer makes this call's reply wait for its commit.
    fn read_uncommitted(&mut self, store: usize, key: &str) -> Option<Option<Vec<u8>>> {
        let view = &self.stores[store];
        if let Some(value) = view.writes.get(key) {
            return Some(value.clone());
        }
        let (sequence, value) =
            view.unflushed.iter().rev().find_map(|(sequence, layer)| {
                layer.get(key).map(|value| (*sequence, value.clone()))
            })?;
        self.note_read(sequence);
        Some(value)
    }

    /// Takes the call's snapshot of committed state, unless it has one or sees no state.
    fn take_snapshot(&mut self) {
        if self.snapshot.is_none()
            && let Some(db) = &self.db
        {
            self.snapshot = Some(db.kv_snapshot());
        }
    }

    fn read_committed(
        &mut self,
        store: usize,
        keys: &[&str],
    ) -> Result<Vec<Option<Vec<u8>>>, store::Error> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        self.take_snapshot();
        match &self.snapshot {
            Some(snapshot) => snapshot
                .get_many(&self.stores[store].label, keys)
                .map_err(|error| store::Error::Other(error.to_string())),
            None => Ok(vec![None; keys.len()]),
        }
    }

    /// One page of the store's keys after `cursor`, in order, and the cursor of the next
    /// page when there may be more. Reads at most a page of committed keys, so listing a
    /// large store costs one pass, not one pass per page.
    fn keys_after(
        &mut self,
        store: usize,
        cursor: Option<&str>,
    ) -> Result<store::KeyResponse, store::Error> {
        self.take_snapshot();
        let view = &self.stores[store];
        let (committed, complete) = match &self.snapshot {
            Some(snapshot) => snapshot
                .keys(&view.label, cursor, LIST_PAGE)
                .map_err(|error| store::Error::Other(error.to_string()))?,
            None => (Vec::new(), true),
        };
        // Committed keys were read up to here; later ones come with the next page.
        let bound = (!complete).then(|| committed.last().cloned()).flatten();
        let within = |key: &str| {
            cursor.is_none_or(|cursor| key > cursor)
                && bound.as_deref().is_none_or(|bound| key <= bound)
        };
        let mut keys: BTreeSet<String> = committed.into_iter().collect();
        let newest_layer = view.unflushed.last().map(|(sequence, _)| *sequence);
        for (key, value) in view
            .unflushed
            .iter()
            .flat_map(|(_, layer)| layer.iter())
            .chain(&view.writes)
            .filter(|(key, _)| within(key))
        {
            match value {
                Some(_) => keys.insert(key.clone()),
                None => keys.remove(key),
            };
        }
        if let Some(sequence) = newest_layer {
            self.note_read(sequence);
        }
        let mut keys: Vec<String> = keys.into_iter().collect();
        let next = if keys.len() > LIST_PAGE {
            keys.truncate(LIST_PAGE);
            keys.last().cloned()
        } else {
            bound
        };
        Ok(store::KeyResponse { keys, cursor: next })
    }
}

/// Keys returned per `list-keys` page.
const LIST_PAGE: usize = 1000;

fn bucket(store: usize) -> Resource<Bucket> {
    Resource::new_own(store as u32)
}

impl store::Host for KvOverlay {
    fn open(&mut self, identifier: String) -> KvResult<Resource<Bucket>> {
        Ok(self
            .stores
            .iter()
            .position(|view| view.label == identifier)
            .map(bucket)
            .ok_or(store::Error::AccessDenied))
    }
}

impl store::HostBucket for KvOverlay {
    fn get(&mut self, bucket: Resource<Bucket>, key: String) -> KvResult<Option<Vec<u8>>> {
        Ok(self.read(bucket.rep() as usize, &key))
    }

    fn set(&mut self, bucket: Resource<Bucket>, key: String, value: Vec<u8>) -> KvResult<()> {
        self.view(&bucket)?.writes.insert(key, Some(value));
        Ok(Ok(()))
    }

    fn delete(&mut self, bucket: Resource<Bucket>, key: String) -> KvResult<()> {
        self.view(&bucket)?.writes.insert(key, None);
        Ok(Ok(()))
    }

    fn exists(&mut self, bucket: Resource<Bucket>, key: String) -> KvResult<bool> {
        Ok(self
            .read(bucket.rep() as usize, &key)
            .map(|value| value.is_some()))
    }

    fn list_keys(
        &mut self,
        bucket: Resource<Bucket>,
        cursor: Option<String>,
    ) -> KvResult<store::KeyResponse> {
        Ok(self.keys_after(bucket.rep() as usize, cursor.as_deref()))
    }

    fn drop(&mut self, _: Resource<Bucket>) -> wasmtime::Result<()> {
        Ok(())
    }
}

impl atomics::Host for KvOverlay {
    fn increment(&mut self, bucket: Resource<Bucket>, key: String, delta: i64) -> KvResult<i64> {
        let current = match self.read(bucket.rep() as usize, &key) {
            Ok(current) => current,
            Err(error) => return Ok(Err(error)),
        };
        let current = match current.as_deref().map(<[u8; 8]>::try_from) {
            None => 0,
            Some(Ok(bytes)) => i64::from_le_bytes(bytes),
            Some(Err(_)) => {
                return Ok(Err(store::Error::Other(format!(
                    "`{key}` does not hold a counter"
                ))));
            }
        };
        let next = current.wrapping_add(delta);
        self.view(&bucket)?
            .writes
            .insert(key, Some(next.to_le_bytes().to_vec()));
        Ok(Ok(next))
    }

    fn swap(
        &mut self,
        cas: Resource<Cas>,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), atomics::CasError>> {
        let Some(handle) = self.cas.remove(&cas.rep()) else {
            wasmtime::bail!("unknown cas handle");
        };
        let current = match self.read(handle.store, &handle.key) {
            Ok(current) => current,
            Err(error) => return Ok(Err(atomics::CasError::StoreError(error))),
        };
        if current != handle.seen {
            let rep = cas.rep();
            self.cas.insert(
                rep,
                Cas {
                    seen: current,
                    ..handle
                },
            );
            return Ok(Err(atomics::CasError::CasFailed(Resource::new_own(rep))));
        }
        self.stores[handle.store]
            .writes
            .insert(handle.key, Some(value));
        Ok(Ok(()))
    }
}

impl atomics::HostCas for KvOverlay {
    fn new(&mut self, bucket: Resource<Bucket>, key: String) -> KvResult<Resource<Cas>> {
        let store = bucket.rep() as usize;
        let seen = match self.read(store, &key) {
            Ok(seen) => seen,
            Err(error) => return Ok(Err(error)),
        };
        self.next_cas += 1;
        self.cas.insert(self.next_cas, Cas { store, key, seen });
        Ok(Ok(Resource::new_own(self.next_cas)))
    }

    fn current(&mut self, cas: Resource<Cas>) -> KvResult<Option<Vec<u8>>> {
        match self.cas.get(&cas.rep()) {
            Some(handle) => Ok(Ok(handle.seen.clone())),
            None => wasmtime::bail!("unknown cas handle"),
        }
    }

    fn drop(&mut self, cas: Resource<Cas>) -> wasmtime::Result<()> {
        self.cas.remove(&cas.rep());
        Ok(())
    }
}

impl batch::Host for KvOverlay {
    fn get_many(
        &mut self,
        bucket: Resource<Bucket>,
        keys: Vec<String>,
    ) -> KvResult<Vec<(String, Option<Vec<u8>>)>> {
        Ok(self.read_many(bucket.rep() as usize, keys))
    }

    fn set_many(
        &mut self,
        bucket: Resource<Bucket>,
        key_values: Vec<(String, Vec<u8>)>,
    ) -> KvResult<()> {
        let view = self.view(&bucket)?;
        for (key, value) in key_values {
            view.writes.insert(key, Some(value));
        }
        Ok(Ok(()))
    }

    fn delete_many(&mut self, bucket: Resource<Bucket>, keys: Vec<String>) -> KvResult<()> {
        let view = self.view(&bucket)?;
        for key in keys {
            view.writes.insert(key, None);
        }
        Ok(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use atomics::{Host as _, HostCas as _};
    use store::{Host as _, HostBucket as _};

    fn overlay(stores: &[Arc<StoreState>]) -> (tempfile::TempDir, KvOverlay) {
        let dir = tempfile::tempdir().unwrap();
        let db = Arc::new(Db::open(dir.path()).unwrap());
        (dir, KvOverlay::new(db, stores))
    }

    #[test]
    fn sees_earlier_calls_writes_before_they_are_durable_and_says_so() {
        let mine = StoreState::new("mine");
        let older: KvWrites = [
            ("a".into(), Some(b"1".to_vec())),
            ("b".into(), Some(b"x".to_vec())),
        ]
        .into();
        let newer: KvWrites = [("a".into(), Some(b"2".to_vec())), ("b".into(), None)].into();
        mine.push_unflushed(4, Arc::new(older));
        mine.push_unflushed(9, Arc::new(newer));
        let (_dir, mut kv) = overlay(std::slice::from_ref(&mine));
        assert_eq!(kv.get(bucket(0), "none".into()).unwrap().unwrap(), None);
        assert_eq!(kv.read_unflushed, None, "a miss read only durable state");
        assert_eq!(
            kv.get(bucket(0), "a".into()).unwrap().unwrap(),
            Some(b"2".to_vec())
        );
        assert_eq!(kv.get(bucket(0), "b".into()).unwrap().unwrap(), None);
        assert_eq!(kv.list_keys(bucket(0), None).unwrap().unwrap().keys, ["a"]);
        let writes = kv.into_writes();
        assert!(writes.stores.is_empty(), "reads write nothing");
        assert_eq!(writes.read_unflushed, Some(9));

        // Whichever commit's waiter finishes first, a durable commit takes every older
        // layer with it, so no stale layer hides what the database now holds.
        mine.remove_durable(9);
        let (_dir, mut kv) = overlay(&[mine]);
        assert_eq!(kv.get(bucket(0), "a".into()).unwrap().unwrap(), None);
        assert_eq!(kv.into_writes().read_unflushed, None);
    }

    #[test]
    fn pages_through_a_large_store_with_unflushed_changes() {
        let dir = tempfile::tempdir().unwrap();
        let db = Arc::new(Db::open(dir.path()).unwrap());
        let committed: KvWrites = (0..2_500)
            .map(|n| (format!("k{n:05}"), Some(Vec::new())))
            .collect();
        db.submit(crate::db::Commit {
            instance: "mine".into(),
            kv: vec![("mine".into(), Arc::new(committed))],
            ..Default::default()
        })
        .wait()
        .unwrap();
        let mine = StoreState::new("mine");
        let changes: KvWrites = [
            ("k00000".to_string(), None),
            ("k01000".to_string(), None),
            ("k01000a".to_string(), Some(Vec::new())),
            ("k99999".to_string(), Some(Vec::new())),
        ]
        .into();
        mine.push_unflushed(1, Arc::new(changes));
        let mut kv = KvOverlay::new(db, &[mine]);
        let (mut listed, mut cursor, mut pages) = (Vec::new(), None, 0);
        loop {
            let page = kv.list_keys(bucket(0), cursor).unwrap().unwrap();
            assert!(page.keys.len() <= LIST_PAGE);
            listed.extend(page.keys);
            pages += 1;
            match page.cursor {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        let mut expected: Vec<String> = (1..2_500)
            .filter(|n| *n != 1_000)
            .map(|n| format!("k{n:05}"))
            .collect();
        expected.push("k01000a".into());
        expected.push("k99999".into());
        expected.sort();
        assert_eq!(listed, expected);
        assert!(pages <= 4, "{pages} pages");
    }

    #[test]
    fn opens_only_the_stores_granted() {
        let (_dir, mut kv) = overlay(&[StoreState::new("mine"), StoreState::new("farm")]);
        assert_eq!(kv.open("mine".into()).unwrap().unwrap().rep(), 0);
        assert_eq!(kv.open("farm".into()).unwrap().unwrap().rep(), 1);
        assert!(matches!(
            kv.open("theirs".into()).unwrap(),
            Err(store::Error::AccessDenied)
        ));
    }

    #[test]
    fn writes_go_to_the_store_they_were_made_in() {
        let (_dir, mut kv) = overlay(&[StoreState::new("mine"), StoreState::new("farm")]);
        kv.set(bucket(0), "k".into(), b"own".to_vec())
            .unwrap()
            .unwrap();
        kv.set(bucket(1), "k".into(), b"shared".to_vec())
            .unwrap()
            .unwrap();
        assert_eq!(
            kv.get(bucket(1), "k".into()).unwrap().unwrap(),
            Some(b"shared".to_vec())
        );
        let writes = kv.into_writes().stores;
        assert_eq!(writes.len(), 2);
        assert_eq!(writes[1].0, "farm");
        assert_eq!(writes[1].1["k"], Some(b"shared".to_vec()));
    }

    #[test]
    fn reads_its_own_writes_counts_and_swaps() {
        let (_dir, mut kv) = overlay(&[StoreState::new("mine")]);
        kv.set(bucket(0), "k".into(), b"v".to_vec())
            .unwrap()
            .unwrap();
        assert_eq!(
            kv.get(bucket(0), "k".into()).unwrap().unwrap(),
            Some(b"v".to_vec())
        );
        assert_eq!(kv.increment(bucket(0), "n".into(), 2).unwrap().unwrap(), 2);
        assert_eq!(kv.increment(bucket(0), "n".into(), 3).unwrap().unwrap(), 5);
        assert!(kv.increment(bucket(0), "k".into(), 1).unwrap().is_err());
        let cas = kv.new(bucket(0), "lease".into()).unwrap().unwrap();
        assert_eq!(
            kv.current(Resource::new_own(cas.rep())).unwrap().unwrap(),
            None
        );
        kv.swap(cas, b"taken".to_vec()).unwrap().unwrap();
        let stale = kv.new(bucket(0), "lease".into()).unwrap().unwrap();
        kv.set(bucket(0), "lease".into(), b"other".to_vec())
            .unwrap()
            .unwrap();
        assert!(matches!(
            kv.swap(stale, b"mine".to_vec()).unwrap(),
            Err(atomics::CasError::CasFailed(_))
        ));
        kv.delete(bucket(0), "k".into()).unwrap().unwrap();
        assert!(!kv.exists(bucket(0), "k".into()).unwrap().unwrap());
        let keys = kv.list_keys(bucket(0), None).unwrap().unwrap();
        assert_eq!(keys.keys, ["lease", "n"]);
        assert_eq!(kv.into_writes().stores[0].1.len(), 3);
    }
}
