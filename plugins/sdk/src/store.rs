//! The key-value state an adapter sees: the host's `wasi:keyvalue` bucket inside a
//! component, an in-memory map in native tests.

use std::cell::RefCell;
use std::collections::BTreeMap;

use crate::bindings::wasi::keyvalue::{atomics, store};

/// The instance's own key-value state. Errors are messages for the host's log.
pub trait KeyValue {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, String>;
    fn set(&self, key: &str, value: &[u8]) -> Result<(), String>;
    fn delete(&self, key: &str) -> Result<(), String>;
    fn exists(&self, key: &str) -> Result<bool, String> {
        Ok(self.get(key)?.is_some())
    }
    /// Adds `delta` to the counter at `key` (0 when absent) and returns the new value.
    fn increment(&self, key: &str, delta: i64) -> Result<i64, String>;
}

/// The bucket the host opened for this instance.
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
}

/// Counters are stored as 8 little-endian bytes, as the simrelay host stores them.
fn decode_counter(bytes: &[u8]) -> Result<i64, String> {
    <[u8; 8]>::try_from(bytes)
        .map(i64::from_le_bytes)
        .map_err(|_| "value is not a counter".to_string())
}
