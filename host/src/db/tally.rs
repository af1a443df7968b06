//! Pending deliveries by instance, and how many finished ones are kept, held in memory for
//! the operator's health, instance list and metrics. Counting them in the tables meant a
//! scan per request: at the default week of retention the finished index holds an entry
//! per delivery of the week, and a provider's outage leaves as many pending records, each
//! read and parsed to find its instance. The tally is counted once when the database opens;
//! after that the committer applies each transaction's changes once it is durable.

use std::collections::{BTreeMap, BTreeSet};

/// What one transaction did to the delivery indexes.
#[derive(Debug, PartialEq)]
pub enum Change {
    /// Delivery `id` of `instance`, asked for at `created_ms`, is pending now, or no longer.
    Pending {
        instance: String,
        created_ms: u64,
        id: u64,
        pending: bool,
    },
    /// Entries added to the finished index (negative: removed).
    Finished(i64),
}

#[derive(Debug, Default)]
pub struct DeliveryTally {
    /// Instance → (asked for at, id) of each of its pending deliveries, oldest first.
    pending: BTreeMap<String, BTreeSet<(u64, u64)>>,
    finished: u64,
}

impl DeliveryTally {
    pub fn new(pending: impl IntoIterator<Item = (String, u64, u64)>, finished: u64) -> Self {
        let mut tally = DeliveryTally {
            finished,
            ..Default::default()
        };
        for (instance, created_ms, id) in pending {
            tally.add_pending(instance, created_ms, id);
        }
        tally
    }

    fn add_pending(&mut self, instance: String, created_ms: u64, id: u64) {
        self.pending
            .entry(instance)
            .or_default()
            .insert((created_ms, id));
    }

    pub fn apply(&mut self, changes: Vec<Change>) {
        for change in changes {
            match change {
                Change::Pending {
                    instance,
                    created_ms,
                    id,
                    pending: true,
                } => self.add_pending(instance, created_ms, id),
                Change::Pending {
                    instance,
                    created_ms,
                    id,
                    pending: false,
                } => {
                    if let Some(ids) = self.pending.get_mut(&instance) {
                        ids.remove(&(created_ms, id));
                        if ids.is_empty() {
                            self.pending.remove(&instance);
                        }
                    }
                }
                Change::Finished(delta) => {
                    self.finished = self.finished.saturating_add_signed(delta);
                }
            }
        }
    }

    /// How many deliveries are pending, and how many finished ones are kept.
    pub fn counts(&self) -> (u64, u64) {
        let pending = self.pending.values().map(|ids| ids.len() as u64).sum();
        (pending, self.finished)
    }

    /// Per instance with any: pending deliveries, and when the oldest was asked for.
    pub fn pending_by_instance(&self) -> BTreeMap<String, (u64, u64)> {
        self.pending
            .iter()
            .filter_map(|(instance, ids)| {
                let (oldest, _) = ids.first()?;
                Some((instance.clone(), (ids.len() as u64, *oldest)))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(instance: &str, created_ms: u64, id: u64, pending: bool) -> Change {
        Change::Pending {
            instance: instance.into(),
            created_ms,
            id,
            pending,
        }
    }

    #[test]
    fn changes_move_deliveries_between_pending_and_finished() {
        let mut tally = DeliveryTally::new([("a".to_string(), 5, 1)], 10);
        tally.apply(vec![pending("a", 7, 2, true), pending("b", 3, 3, true)]);
        assert_eq!(tally.counts(), (3, 10));
        assert_eq!(
            tally.pending_by_instance(),
            BTreeMap::from([("a".to_string(), (2, 5)), ("b".to_string(), (1, 3))])
        );
        // The oldest of `a` delivered, `b`'s retried: it stays pending once.
        tally.apply(vec![
            pending("a", 5, 1, false),
            Change::Finished(1),
            pending("b", 3, 3, true),
        ]);
        assert_eq!(tally.counts(), (2, 11));
        assert_eq!(
            tally.pending_by_instance(),
            BTreeMap::from([("a".to_string(), (1, 7)), ("b".to_string(), (1, 3))])
        );
        // Retention removes finished ones; an instance with nothing pending is not listed.
        tally.apply(vec![pending("b", 3, 3, false), Change::Finished(-4)]);
        assert_eq!(tally.counts(), (1, 7));
        assert_eq!(
            tally.pending_by_instance(),
            BTreeMap::from([("a".to_string(), (1, 7))])
        );
    }
}
