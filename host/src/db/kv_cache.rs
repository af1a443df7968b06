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

/// Bytes kept at most (keys, values and a share for the maps), all labels together; when
/// full, the cache starts over. Hot entries come back at their next read.
const MAX_BYTES: usize = 2 << 20;
/// A value larger than this is never kept: a plugin's big blobs would crowd out the rest.
const MAX_VALUE_BYTES: usize = 16 << 10;
/// What an entry costs besides its key and value.
const ENTRY_OVERHEAD: usize = 64;

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
    bytes: usize,
    /// label → key → value.
    labels: HashMap<String, HashMap<String, Value, RandomState>, RandomState>,
}

fn cost(key: &str, value: &Value) -> usize {
    key.len() + value.as_ref().map_or(0, Vec::len) + ENTRY_OVERHEAD
}

fn too_big(value: &Value) -> bool {
    value
        .as_ref()
        .is_some_and(|value| value.len() > MAX_VALUE_BYTES)
}

impl Inner {
    /// Adds or replaces an entry read from the store.
    fn fill(&mut self, label: &str, key: &str, value: &Value) {
        if too_big(value) {
            return;
        }
        if self.bytes >= MAX_BYTES {
            self.labels.clear();
            self.bytes = 0;
        }
        if !self.labels.contains_key(label) {
            self.labels.insert(label.to_string(), HashMap::default());
        }
        let Some(keys) = self.labels.get_mut(label) else {
            return;
        };
        self.bytes += cost(key, value);
        if let Some(replaced) = keys.insert(key.to_string(), value.clone()) {
            self.bytes -= cost(key, &replaced);
        }
    }

    /// Updates the entry of a key a transaction wrote, if there is one.
    fn update(&mut self, label: &str, key: &str, value: &Value) {
        let Some(keys) = self.labels.get_mut(label) else {
            return;
        };
        let Some(slot) = keys.get_mut(key) else {
            return;
        };
        self.bytes -= cost(key, slot);
        if too_big(value) {
            keys.remove(key);
        } else {
            self.bytes += cost(key, value);
            slot.clone_from(value);
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
            inner.fill(label, key, value);
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
            for (key, value) in writes.iter() {
                inner.update(label, key, value);
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
    fn a_full_cache_starts_over_and_big_values_stay_out() {
        let cache = KvCache::default();
        let value = Some(vec![b'v'; 1000]);
        let keys: Vec<String> = (0..MAX_BYTES / 1000).map(|n| format!("k{n}")).collect();
        cache.fill(
            cache.generation(),
            "a",
            keys.iter().map(|key| (key.as_str(), &value)),
        );
        assert!(cache.inner().bytes < MAX_BYTES, "started over once full");
        assert_eq!(
            cache.get_many("a", &[keys.last().unwrap()]),
            [Some(value.clone())]
        );
        assert_eq!(
            cache.get_many("a", &["k0"]),
            [None],
            "gone when it started over"
        );

        let big = Some(vec![b'b'; MAX_VALUE_BYTES + 1]);
        cache.fill(cache.generation(), "a", [("big", &big)]);
        assert_eq!(cache.get_many("a", &["big"]), [None]);
        // An entry whose new value is too big leaves, rather than go stale.
        let last = keys.last().unwrap().as_str();
        cache.committed(&[("a".to_string(), Arc::new([(last.to_string(), big)].into()))]);
        assert_eq!(cache.get_many("a", &[last]), [None]);
        let inner = cache.inner();
        let kept: usize = inner.labels["a"].iter().map(|(k, v)| cost(k, v)).sum();
        assert_eq!(inner.bytes, kept, "the byte count follows every change");
    }
}
