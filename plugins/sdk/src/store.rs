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
    /// The first `limit` keys that start with `prefix`, in byte order. A store that lists
    /// in order (the simrelay host's) reads no further; others list every key and sort.
    fn first_keys(&self, prefix: &str, limit: usize) -> Result<Vec<String>, String> {
        Ok(first_in_order(self.keys(prefix)?, limit))
    }
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

fn first_in_order(mut keys: Vec<String>, limit: usize) -> Vec<String> {
    keys.sort_unstable();
    keys.truncate(limit);
    keys
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

impl WasiStore {
    /// The keys that start with `prefix`: see [`walk_pages`].
    fn list(&self, prefix: &str, enough: usize) -> Result<Vec<String>, String> {
        let listed_itself = !prefix.is_empty() && self.exists(prefix)?;
        walk_pages(prefix, enough, listed_itself, |cursor| {
            let page = self.bucket.list_keys(cursor).map_err(describe)?;
            Ok((page.keys, page.cursor))
        })
    }
}

/// One page of a store's keys, and the cursor of the next when there may be more.
type Page = (Vec<String>, Option<String>);

/// The keys that start with `prefix` (with `prefix` itself first when `listed_itself`),
/// from a store listed a page at a time by `list_page(cursor)`. A store that lists in
/// order from the cursor it is given (the simrelay host's) is asked from the prefix on and
/// read only until past the prefix's keys, or once `enough` are found; one that hands out
/// its own cursors only (Spin's) refuses ours, and is read whole.
fn walk_pages(
    prefix: &str,
    enough: usize,
    listed_itself: bool,
    mut list_page: impl FnMut(Option<&str>) -> Result<Page, String>,
) -> Result<Vec<String>, String> {
    let mut keys = Vec::new();
    if listed_itself {
        keys.push(prefix.to_string());
    }
    let mut cursor = (!prefix.is_empty()).then(|| prefix.to_string());
    let mut from_cursor = true;
    loop {
        let (page, next) = match list_page(cursor.as_deref()) {
            Ok(page) => page,
            Err(_) if cursor.as_deref() == Some(prefix) => {
                from_cursor = false;
                list_page(None)?
            }
            Err(error) => return Err(error),
        };
        let in_order = page.is_sorted();
        let past = in_order
            && page
                .last()
                .is_some_and(|last| last.as_str() > prefix && !last.starts_with(prefix));
        keys.extend(
            page.into_iter()
                .filter(|key| key.starts_with(prefix) && key.as_str() != prefix),
        );
        match next {
            // Listed in order and past the prefix's keys: none of the rest can match.
            Some(_) if past => return Ok(keys),
            // Listed in order from the prefix: the first keys are all here.
            Some(_) if from_cursor && in_order && keys.len() >= enough => return Ok(keys),
            Some(next) => cursor = Some(next),
            None => return Ok(keys),
        }
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
        self.list(prefix, usize::MAX)
    }
    fn first_keys(&self, prefix: &str, limit: usize) -> Result<Vec<String>, String> {
        Ok(first_in_order(self.list(prefix, limit)?, limit))
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
    fn first_keys(&self, prefix: &str, limit: usize) -> Result<Vec<String>, String> {
        let mut keys = self.keys(prefix)?;
        keys.truncate(limit);
        Ok(keys)
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

    /// 26 keys `a`..`z` under `idx/`, one more on each side, listed 3 at a time.
    fn paged_keys() -> Vec<String> {
        let mut keys: Vec<String> = ('a'..='z').map(|c| format!("idx/{c}")).collect();
        keys.insert(0, "aaa".into());
        keys.push("zzz".into());
        keys
    }

    #[test]
    fn an_ordered_store_is_read_only_as_far_as_the_first_keys() {
        let all = paged_keys();
        let pages = std::cell::Cell::new(0);
        // Like the host: each page the 3 keys after the cursor, in order.
        let mut ordered = |cursor: Option<&str>| -> Result<Page, String> {
            pages.set(pages.get() + 1);
            let rest: Vec<String> = all
                .iter()
                .filter(|key| cursor.is_none_or(|cursor| key.as_str() > cursor))
                .cloned()
                .collect();
            let page: Vec<String> = rest.iter().take(3).cloned().collect();
            let next = (rest.len() > 3).then(|| page[2].clone());
            Ok((page, next))
        };
        assert_eq!(
            walk_pages("idx/", 4, false, &mut ordered).unwrap(),
            ["idx/a", "idx/b", "idx/c", "idx/d", "idx/e", "idx/f"]
        );
        assert_eq!(pages.get(), 2, "two pages hold the first four");
        pages.set(0);
        let every = walk_pages("idx/", usize::MAX, false, &mut ordered).unwrap();
        assert_eq!(every.len(), 26);
        assert_eq!(
            pages.get(),
            9,
            "up to the page that goes past the prefix's keys"
        );
    }

    #[test]
    fn a_store_that_refuses_our_cursors_is_read_whole() {
        let mut all = paged_keys();
        all.reverse();
        let pages = std::cell::Cell::new(0);
        // Like Spin's: its own cursors only (page numbers), keys in no order.
        let mut spin_like = |cursor: Option<&str>| -> Result<Page, String> {
            let page_number = match cursor {
                None => 0,
                Some(cursor) => cursor.parse::<usize>().map_err(|_| "not my cursor")?,
            };
            pages.set(pages.get() + 1);
            let page: Vec<String> = all.iter().skip(page_number * 3).take(3).cloned().collect();
            let next = (all.len() > (page_number + 1) * 3).then(|| (page_number + 1).to_string());
            Ok((page, next))
        };
        let mut first = walk_pages("idx/", 2, false, &mut spin_like).unwrap();
        assert_eq!(first.len(), 26, "every key under the prefix");
        assert_eq!(
            pages.get(),
            10,
            "all ten pages, after our cursor was refused"
        );
        first = first_in_order(first, 2);
        assert_eq!(first, ["idx/a", "idx/b"]);
    }

    #[test]
    fn first_keys_are_the_smallest_under_the_prefix() {
        let store = MemoryStore::default();
        for key in ["idx/3", "idx/1", "other", "idx/2"] {
            store.set(key, b"").unwrap();
        }
        assert_eq!(store.first_keys("idx/", 2).unwrap(), ["idx/1", "idx/2"]);
        let unordered = vec!["idx/3".to_string(), "idx/1".into(), "idx/2".into()];
        assert_eq!(first_in_order(unordered, 2), ["idx/1", "idx/2"]);
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
