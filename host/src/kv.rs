//! `wasi:keyvalue@0.2.0-draft2` for plugins, on the host's own database.
//!
//! A call sees one instance's namespace only: opening any other label is `access-denied`,
//! as on Spin. Reads fall through to the committed state; writes collect in [`KvOverlay`]
//! and reach the database only when the call's whole outcome commits, in the same
//! transaction as the deliveries and events it produced.

use std::collections::BTreeMap;
use std::sync::Arc;

use wasmtime::component::Resource;

use crate::db::Db;

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

/// An open bucket; there is only ever the instance's own.
pub struct Bucket;

/// A compare-and-swap handle: the value seen when it was made.
pub struct Cas {
    key: String,
    seen: Option<Vec<u8>>,
}

/// Writes of one call, not yet committed. `None` deletes the key.
pub type KvWrites = BTreeMap<String, Option<Vec<u8>>>;

/// The key-value view of one plugin call.
pub struct KvOverlay {
    /// `None` for calls that must not see state, such as `describe` at load time.
    db: Option<Arc<Db>>,
    label: String,
    /// The instance's earlier writes not yet durable, oldest first: they sit between this
    /// call's writes and the database.
    unflushed: Vec<Arc<KvWrites>>,
    writes: KvWrites,
    cas: std::collections::HashMap<u32, Cas>,
    next_cas: u32,
}

type KvResult<T> = wasmtime::Result<Result<T, store::Error>>;

impl KvOverlay {
    pub fn new(db: Arc<Db>, label: String, unflushed: Vec<Arc<KvWrites>>) -> Self {
        KvOverlay {
            db: Some(db),
            label,
            unflushed,
            writes: KvWrites::new(),
            cas: Default::default(),
            next_cas: 0,
        }
    }

    pub fn detached() -> Self {
        KvOverlay {
            db: None,
            label: String::new(),
            unflushed: Vec::new(),
            writes: KvWrites::new(),
            cas: Default::default(),
            next_cas: 0,
        }
    }

    pub fn into_writes(self) -> KvWrites {
        self.writes
    }

    fn read(&self, key: &str) -> Result<Option<Vec<u8>>, store::Error> {
        let written = std::iter::once(&self.writes)
            .chain(self.unflushed.iter().rev().map(|layer| &**layer))
            .find_map(|layer| layer.get(key));
        match written {
            Some(value) => Ok(value.clone()),
            None => match &self.db {
                Some(db) => db
                    .kv_get(&self.label, key)
                    .map_err(|error| store::Error::Other(error.to_string())),
                None => Ok(None),
            },
        }
    }

    fn keys_after(&self, cursor: Option<&str>) -> Result<Vec<String>, store::Error> {
        let committed = match &self.db {
            Some(db) => db
                .kv_keys(&self.label)
                .map_err(|error| store::Error::Other(error.to_string()))?,
            None => Vec::new(),
        };
        let mut keys: std::collections::BTreeSet<String> = committed.into_iter().collect();
        for (key, value) in self
            .unflushed
            .iter()
            .flat_map(|layer| layer.iter())
            .chain(&self.writes)
        {
            match value {
                Some(_) => keys.insert(key.clone()),
                None => keys.remove(key),
            };
        }
        Ok(keys
            .into_iter()
            .filter(|key| cursor.is_none_or(|cursor| key.as_str() > cursor))
            .collect())
    }
}

/// Keys returned per `list-keys` page.
const LIST_PAGE: usize = 1000;

impl store::Host for KvOverlay {
    fn open(&mut self, identifier: String) -> KvResult<Resource<Bucket>> {
        if identifier != self.label {
            return Ok(Err(store::Error::AccessDenied));
        }
        // Bucket carries no state, so every handle can share one representation.
        Ok(Ok(Resource::new_own(0)))
    }
}

impl store::HostBucket for KvOverlay {
    fn get(&mut self, _: Resource<Bucket>, key: String) -> KvResult<Option<Vec<u8>>> {
        Ok(self.read(&key))
    }

    fn set(&mut self, _: Resource<Bucket>, key: String, value: Vec<u8>) -> KvResult<()> {
        self.writes.insert(key, Some(value));
        Ok(Ok(()))
    }

    fn delete(&mut self, _: Resource<Bucket>, key: String) -> KvResult<()> {
        self.writes.insert(key, None);
        Ok(Ok(()))
    }

    fn exists(&mut self, _: Resource<Bucket>, key: String) -> KvResult<bool> {
        Ok(self.read(&key).map(|value| value.is_some()))
    }

    fn list_keys(
        &mut self,
        _: Resource<Bucket>,
        cursor: Option<String>,
    ) -> KvResult<store::KeyResponse> {
        Ok(self.keys_after(cursor.as_deref()).map(|mut keys| {
            let cursor = (keys.len() > LIST_PAGE).then(|| {
                keys.truncate(LIST_PAGE);
                keys[LIST_PAGE - 1].clone()
            });
            store::KeyResponse { keys, cursor }
        }))
    }

    fn drop(&mut self, _: Resource<Bucket>) -> wasmtime::Result<()> {
        Ok(())
    }
}

impl atomics::Host for KvOverlay {
    fn increment(&mut self, _: Resource<Bucket>, key: String, delta: i64) -> KvResult<i64> {
        let current = match self.read(&key) {
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
        self.writes.insert(key, Some(next.to_le_bytes().to_vec()));
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
        let current = match self.read(&handle.key) {
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
        self.writes.insert(handle.key, Some(value));
        Ok(Ok(()))
    }
}

impl atomics::HostCas for KvOverlay {
    fn new(&mut self, _: Resource<Bucket>, key: String) -> KvResult<Resource<Cas>> {
        let seen = match self.read(&key) {
            Ok(seen) => seen,
            Err(error) => return Ok(Err(error)),
        };
        self.next_cas += 1;
        self.cas.insert(self.next_cas, Cas { key, seen });
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
        _: Resource<Bucket>,
        keys: Vec<String>,
    ) -> KvResult<Vec<(String, Option<Vec<u8>>)>> {
        Ok(keys
            .into_iter()
            .map(|key| self.read(&key).map(|value| (key, value)))
            .collect())
    }

    fn set_many(
        &mut self,
        _: Resource<Bucket>,
        key_values: Vec<(String, Vec<u8>)>,
    ) -> KvResult<()> {
        for (key, value) in key_values {
            self.writes.insert(key, Some(value));
        }
        Ok(Ok(()))
    }

    fn delete_many(&mut self, _: Resource<Bucket>, keys: Vec<String>) -> KvResult<()> {
        for key in keys {
            self.writes.insert(key, None);
        }
        Ok(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use atomics::Host as _;
    use store::{Host as _, HostBucket as _};

    fn overlay(unflushed: Vec<Arc<KvWrites>>) -> (tempfile::TempDir, KvOverlay) {
        let dir = tempfile::tempdir().unwrap();
        let db = Arc::new(Db::open(dir.path()).unwrap());
        (dir, KvOverlay::new(db, "mine".into(), unflushed))
    }

    #[test]
    fn sees_earlier_calls_writes_before_they_are_durable() {
        let older: KvWrites = [
            ("a".into(), Some(b"1".to_vec())),
            ("b".into(), Some(b"x".to_vec())),
        ]
        .into();
        let newer: KvWrites = [("a".into(), Some(b"2".to_vec())), ("b".into(), None)].into();
        let (_dir, mut kv) = overlay(vec![Arc::new(older), Arc::new(newer)]);
        let bucket = || Resource::new_own(0);
        assert_eq!(
            kv.get(bucket(), "a".into()).unwrap().unwrap(),
            Some(b"2".to_vec())
        );
        assert_eq!(kv.get(bucket(), "b".into()).unwrap().unwrap(), None);
        assert_eq!(kv.list_keys(bucket(), None).unwrap().unwrap().keys, ["a"]);
        assert!(kv.into_writes().is_empty(), "reads write nothing");
    }

    #[test]
    fn opens_only_its_own_store() {
        let (_dir, mut kv) = overlay(Vec::new());
        assert!(kv.open("mine".into()).unwrap().is_ok());
        assert!(matches!(
            kv.open("theirs".into()).unwrap(),
            Err(store::Error::AccessDenied)
        ));
    }

    #[test]
    fn reads_its_own_writes_and_counts() {
        let (_dir, mut kv) = overlay(Vec::new());
        let bucket = || Resource::new_own(0);
        kv.set(bucket(), "k".into(), b"v".to_vec())
            .unwrap()
            .unwrap();
        assert_eq!(
            kv.get(bucket(), "k".into()).unwrap().unwrap(),
            Some(b"v".to_vec())
        );
        assert_eq!(kv.increment(bucket(), "n".into(), 2).unwrap().unwrap(), 2);
        assert_eq!(kv.increment(bucket(), "n".into(), 3).unwrap().unwrap(), 5);
        assert!(kv.increment(bucket(), "k".into(), 1).unwrap().is_err());
        kv.delete(bucket(), "k".into()).unwrap().unwrap();
        assert!(!kv.exists(bucket(), "k".into()).unwrap().unwrap());
        let keys = kv.list_keys(bucket(), None).unwrap().unwrap();
        assert_eq!(keys.keys, ["n"]);
        assert_eq!(kv.into_writes().len(), 2);
    }
}
