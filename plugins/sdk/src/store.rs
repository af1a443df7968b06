//! The key-value state an adapter sees: the host's `wasi:keyvalue` buckets inside a
//! component, in-memory maps in native tests.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::ops::Deref;
use std::rc::Rc;

use crate::CallContext;
use crate::bindings::wasi::keyvalue::{atomics, batch, store};

/// One key-value store. Errors are messages for the host's log.
pub trait KeyValue {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, String>;
    fn set(&self, key: &str, value: &[u8]) -> Result<(), String>;
    fn delete(&self, key: &str) -> Result<(), String>;
    fn exists(&self, key: &str) -> Result<bool, String> {
        Ok(self.get(key)?.is_some())
    }
    /// Adds `delta` to the counter at `key` (0 when absent) and returns the new value.
    fn increment(&self, key: &str, delta: i64) -> Result<i64, String>;
    /// Every key that starts with `prefix`, in no promised order.
    fn keys(&self, prefix: &str) -> Result<Vec<String>, String>;
    /// The values of `keys`, in the same order.
    fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>, String> {
        keys.iter().map(|key| self.get(key)).collect()
    }
    /// Writes `new` only if the key still holds `expected` (`None`: absent), atomically
    /// against every other instance sharing the store. `Ok(false)`: someone changed it
    /// first; read again and decide again.
    fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        new: &[u8],
    ) -> Result<bool, String>;
}

/// The stores a call may use: the instance's own, and the shared ones the configuration
/// grants it. Derefs to the own store, so `stores.get(..)` reads the instance's state.
pub struct Stores {
    own: Box<dyn KeyValue>,
    /// Shared stores opened so far, by the name the plugin asks for them.
    shared: RefCell<BTreeMap<String, Rc<dyn KeyValue>>>,
    /// name → label, from the call context; empty in native tests.
    grants: Vec<(String, String)>,
}

impl Deref for Stores {
    type Target = dyn KeyValue;
    fn deref(&self) -> &Self::Target {
        &*self.own
    }
}

impl Stores {
    /// The host's buckets for this call: the instance's own, opened now, and its shared
    /// ones, opened when first asked for.
    pub fn open(ctx: &CallContext) -> Result<Self, String> {
        Ok(Stores {
            own: Box::new(WasiStore::open(&ctx.store)?),
            shared: RefCell::default(),
            grants: ctx.shared_stores.clone(),
        })
    }

    /// An empty in-memory own store and no shared ones, for native tests.
    pub fn memory() -> Self {
        Stores {
            own: Box::new(MemoryStore::default()),
            shared: RefCell::default(),
            grants: Vec::new(),
        }
    }

    /// Grants a shared store under `name`, for native tests. Give two `Stores` the same
    /// `MemoryStore` to play two instances that share it.
    pub fn with_shared(self, name: &str, store: Rc<MemoryStore>) -> Self {
        self.shared.borrow_mut().insert(name.into(), store);
        self
    }

    /// The shared store granted under `name` (see `descriptor.stores`).
    pub fn shared(&self, name: &str) -> Result<Rc<dyn KeyValue>, String> {
        if let Some(store) = self.shared.borrow().get(name) {
            return Ok(store.clone());
        }
        let label = self
            .grants
            .iter()
            .find(|(granted, _)| granted == name)
            .map(|(_, label)| label)
            .ok_or_else(|| {
                format!("no shared store is granted as `{name}`: add it to the instance's `stores`")
            })?;
        let store: Rc<dyn KeyValue> = Rc::new(WasiStore::open(label)?);
        self.shared.borrow_mut().insert(name.into(), store.clone());
        Ok(store)
    }
}

/// A bucket the host opened for this call.
pub struct WasiStore {
    bucket: store::Bucket,
}

impl WasiStore {
    pub fn open(label: &str) -> Result<Self, String> {
        store::open(label)
            .map(|bucket| WasiStore { bucket })
            .map_err(|error| format!("cannot open key-value store `{label}`: {}", describe(error)))
    }
}

fn describe(error: store::Error) -> String {
    match error {
        store::Error::NoSuchStore => "no such store".into(),
        store::Error::AccessDenied => "access denied".into(),
        store::Error::Other(message) => message,
    }
}

impl KeyValue for WasiStore {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, String> {
        self.bucket.get(key).map_err(describe)
    }
    fn set(&self, key: &str, value: &[u8]) -> Result<(), String> {
        self.bucket.set(key, value).map_err(describe)
    }
    fn delete(&self, key: &str) -> Result<(), String> {
        self.bucket.delete(key).map_err(describe)
    }
    fn exists(&self, key: &str) -> Result<bool, String> {
        self.bucket.exists(key).map_err(describe)
    }
    fn increment(&self, key: &str, delta: i64) -> Result<i64, String> {
        atomics::increment(&self.bucket, key, delta).map_err(describe)
    }
    fn keys(&self, prefix: &str) -> Result<Vec<String>, String> {
        let mut keys = Vec::new();
        // Keys after the prefix itself: a store that lists in order (the simrelay host's)
        // starts right at the prefix's keys; one that ignores cursors lists them all.
        if !prefix.is_empty() && self.exists(prefix)? {
            keys.push(prefix.to_string());
        }
        let mut cursor = (!prefix.is_empty()).then(|| prefix.to_string());
        loop {
            let page = match self.bucket.list_keys(cursor.as_deref()) {
                Ok(page) => page,
                // A store that hands out its own cursors only (Spin's) refuses ours: list
                // everything from the start instead.
                Err(_) if cursor.as_deref() == Some(prefix) => {
                    self.bucket.list_keys(None).map_err(describe)?
                }
                Err(error) => return Err(describe(error)),
            };
            let in_order = page.keys.is_sorted();
            let past = in_order
                && page
                    .keys
                    .last()
                    .is_some_and(|last| last.as_str() > prefix && !last.starts_with(prefix));
            keys.extend(
                page.keys
                    .into_iter()
                    .filter(|key| key.starts_with(prefix) && key.as_str() != prefix),
            );
            match page.cursor {
                // Listed in order and past the prefix's keys: none of the rest can match.
                Some(_) if past => return Ok(keys),
                Some(next) => cursor = Some(next),
                None => return Ok(keys),
            }
        }
    }
    fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>, String> {
        let found = batch::get_many(&self.bucket, keys).map_err(describe)?;
        // The interface returns pairs; match them back to the order asked for.
        let mut found: BTreeMap<String, Option<Vec<u8>>> = found.into_iter().collect();
        Ok(keys.iter().map(|key| found.remove(key).flatten()).collect())
    }
    fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        new: &[u8],
    ) -> Result<bool, String> {
        let cas = atomics::Cas::new(&self.bucket, key).map_err(describe)?;
        if cas.current().map_err(describe)?.as_deref() != expected {
            return Ok(false);
        }
        match atomics::swap(cas, new) {
            Ok(()) => Ok(true),
            Err(atomics::CasError::CasFailed(_)) => Ok(false),
            Err(atomics::CasError::StoreError(error)) => Err(describe(error)),
        }
    }
}

/// An in-memory store for native unit tests of adapter logic.
#[derive(Default)]
pub struct MemoryStore {
    entries: RefCell<BTreeMap<String, Vec<u8>>>,
}

impl KeyValue for MemoryStore {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, String> {
        Ok(self.entries.borrow().get(key).cloned())
    }
    fn set(&self, key: &str, value: &[u8]) -> Result<(), String> {
        self.entries.borrow_mut().insert(key.into(), value.into());
        Ok(())
    }
    fn delete(&self, key: &str) -> Result<(), String> {
        self.entries.borrow_mut().remove(key);
        Ok(())
    }
    fn increment(&self, key: &str, delta: i64) -> Result<i64, String> {
        let mut entries = self.entries.borrow_mut();
        let current = entries
            .get(key)
            .map(|bytes| decode_counter(bytes))
            .transpose()?;
        let next = current.unwrap_or(0) + delta;
        entries.insert(key.into(), next.to_le_bytes().to_vec());
        Ok(next)
    }
    fn keys(&self, prefix: &str) -> Result<Vec<String>, String> {
        Ok(self
            .entries
            .borrow()
            .range(prefix.to_string()..)
            .map(|(key, _)| key)
            .take_while(|key| key.starts_with(prefix))
            .cloned()
            .collect())
    }
    fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        new: &[u8],
    ) -> Result<bool, String> {
        let mut entries = self.entries.borrow_mut();
        if entries.get(key).map(Vec::as_slice) != expected {
            return Ok(false);
        }
        entries.insert(key.into(), new.into());
        Ok(true)
    }
}

/// Counters are stored as 8 little-endian bytes, as the simrelay host stores them.
fn decode_counter(bytes: &[u8]) -> Result<i64, String> {
    <[u8; 8]>::try_from(bytes)
        .map(i64::from_le_bytes)
        .map_err(|_| "value is not a counter".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_store_lists_by_prefix_and_swaps_only_what_it_expects() {
        let store = MemoryStore::default();
        store.set("sim/1", b"a").unwrap();
        store.set("sim/2", b"b").unwrap();
        store.set("lease/1", b"x").unwrap();
        assert_eq!(store.keys("sim/").unwrap(), ["sim/1", "sim/2"]);
        assert!(!store.compare_and_swap("lease/1", None, b"y").unwrap());
        assert!(store.compare_and_swap("lease/1", Some(b"x"), b"y").unwrap());
        assert!(store.compare_and_swap("lease/2", None, b"z").unwrap());
        assert_eq!(
            store.get_many(&["lease/1".into(), "none".into()]).unwrap(),
            [Some(b"y".to_vec()), None]
        );
    }

    #[test]
    fn shared_stores_are_granted_explicitly() {
        let farm = Rc::new(MemoryStore::default());
        let bower = Stores::memory().with_shared("inventory", farm.clone());
        let onlinesim = Stores::memory().with_shared("inventory", farm);
        bower
            .shared("inventory")
            .unwrap()
            .set("sim/1", b"on")
            .unwrap();
        assert!(
            onlinesim
                .shared("inventory")
                .unwrap()
                .exists("sim/1")
                .unwrap()
        );
        assert!(!onlinesim.exists("sim/1").unwrap(), "own stores stay apart");
        let error = Stores::memory().shared("inventory").err().unwrap();
        assert!(error.contains("`inventory`"), "{error}");
    }
}
