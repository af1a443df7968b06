//! Committed key-value entries kept in memory, so that a value calls read again and again
//! (an open activation, a route, a counter) or read soon after it was written (an SMS's
//! record, read again when its push is answered) costs a hash lookup instead of searches
//! through the store's write buffers and table filters.
//!
//! Entries come from reads: a read that missed fills its entry, the value or its absence,
//! but only if no transaction wrote key-value state since the read's snapshot was taken,
//! so a value from an older snapshot never replaces a newer one. The committer is the only
//! writer of the key-value table: after each transaction it updates the entries its writes
//! touched. It adds none, so keys written once and never read (index entries, marks) do
//! not crowd out the ones read again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use foldhash::fast::RandomState;

use crate::kv::KvWrites;

/// Entries kept at most, all labels together; when full, the cache starts over. Hot
/// entries come back at their next read. About 200 bytes an entry.
const MAX_ENTRIES: usize = 8_192;

/// A committed value as the cache holds it: `None` when the key has none.
type Value = Option<Vec<u8>>;

#[derive(Default)]
pub struct KvCache {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Transactions with key-value writes so far.
    generation: u64,
    entries: usize,
    /// label → key → value.
    labels: HashMap<String, HashMap<String, Value, RandomState>, RandomState>,
}

impl Inner {
    fn put(&mut self, label: &str, key: &str, value: Value) {
        if self.entries >= MAX_ENTRIES {
            self.labels.clear();
            self.entries = 0;
        }
        if !self.labels.contains_key(label) {
            self.labels.insert(label.to_string(), HashMap::default());
        }
        let Some(keys) = self.labels.get_mut(label) else {
            return;
        };
        match keys.get_mut(key) {
            Some(slot) => *slot = value,
            None => {
                keys.insert(key.to_string(), value);
                self.entries += 1;
            }
        }
    }
}

impl KvCache {
    fn inner(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Taken before a snapshot, and given back with what the snapshot read.
    pub fn generation(&self) -> u64 {
        self.inner().generation
    }

    /// The cached value of each key, `None` where the cache has no entry.
    pub fn get_many(&self, label: &str, keys: &[&str]) -> Vec<Option<Value>> {
        let inner = self.inner();
        let cached = inner.labels.get(label);
        keys.iter()
            .map(|key| cached.and_then(|cached| cached.get(*key)).cloned())
            .collect()
    }

    /// Keeps values read from a snapshot taken at `generation`, unless a transaction has
    /// written key-value state since.
    pub fn fill<'a>(
        &self,
        generation: u64,
        label: &str,
        read: impl IntoIterator<Item = (&'a str, &'a Value)>,
    ) {
        let mut inner = self.inner();
        if inner.generation != generation {
            return;
        }
        for (key, value) in read {
            inner.put(label, key, value.clone());
        }
    }

    /// Records a committed transaction's key-value writes; called once they are readable.
    pub fn committed(&self, writes: &[(String, Arc<KvWrites>)]) {
        if writes.is_empty() {
            return;
        }
        let mut inner = self.inner();
        inner.generation += 1;
        for (label, writes) in writes {
            let Some(cached) = inner.labels.get_mut(label.as_str()) else {
                continue;
            };
            for (key, value) in writes.iter() {
                if let Some(slot) = cached.get_mut(key.as_str()) {
                    slot.clone_from(value);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn writes(label: &str, entries: &[(&str, Option<&str>)]) -> Vec<(String, Arc<KvWrites>)> {
        let writes = entries
            .iter()
            .map(|(key, value)| (key.to_string(), value.map(|v| v.as_bytes().to_vec())))
            .collect();
        vec![(label.to_string(), Arc::new(writes))]
    }

    #[test]
    fn commits_update_the_entries_reads_filled_and_add_none() {
        let cache = KvCache::default();
        let generation = cache.generation();
        cache.fill(
            generation,
            "a",
            [("k", &None), ("gone", &Some(b"x".to_vec()))],
        );
        cache.committed(&writes(
            "a",
            &[("k", Some("1")), ("gone", None), ("unread", Some("2"))],
        ));
        cache.committed(&writes("b", &[("k", Some("3"))]));
        assert_eq!(
            cache.get_many("a", &["k", "gone", "unread"]),
            [Some(Some(b"1".to_vec())), Some(None), None]
        );
        assert_eq!(cache.get_many("b", &["k"]), [None]);
    }

    #[test]
    fn a_read_from_before_a_commit_does_not_replace_it() {
        let cache = KvCache::default();
        cache.fill(cache.generation(), "a", [("k", &None)]);
        let before = cache.generation();
        cache.committed(&writes("a", &[("k", Some("new"))]));
        cache.fill(before, "a", [("k", &Some(b"old".to_vec()))]);
        assert_eq!(cache.get_many("a", &["k"]), [Some(Some(b"new".to_vec()))]);
        // A read from before a commit of other keys is kept out too: the cache cannot
        // tell which keys a commit it missed wrote.
        cache.fill(before, "a", [("other", &None)]);
        assert_eq!(cache.get_many("a", &["other"]), [None]);
        let now = cache.generation();
        cache.fill(now, "a", [("other", &None)]);
        assert_eq!(cache.get_many("a", &["other"]), [Some(None)]);
    }

    #[test]
    fn a_full_cache_starts_over() {
        let cache = KvCache::default();
        let keys: Vec<String> = (0..=MAX_ENTRIES).map(|n| format!("k{n}")).collect();
        let value = Some(b"v".to_vec());
        let generation = cache.generation();
        cache.fill(
            generation,
            "a",
            keys.iter().map(|key| (key.as_str(), &value)),
        );
        let inner = cache.inner();
        assert_eq!(inner.entries, 1);
        assert!(inner.labels["a"].contains_key(&keys[MAX_ENTRIES]));
    }
}
