//! What has been done with a SIM card, shared by every marketplace selling it: the lease of
//! the activation open on it now, and for each service how often its number was offered and
//! whether it was sold or refused.
//!
//! One record per card (`use/…` in the shared store) holds both, so a single
//! compare-and-swap takes a lease and counts the offer: two marketplaces, or two calls of
//! one on Spin, can never both win the same number.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use simrelay_sdk::KeyValue;

/// Attempts of a read-modify-swap before a call gives up and lets its caller retry: a swap
/// is lost only to another writer of the same card, and there are only so many marketplaces.
const SWAP_ATTEMPTS: usize = 16;

/// The shared record of one SIM card.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    /// The number the history below is about. A card whose number changed (numbers get
    /// rotated) starts a new history: no service has seen the new number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub number: Option<String>,
    /// The activation open on the card, on whichever marketplace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<Lease>,
    /// When the card was last leased, to spread activations over the farm.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_leased_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub services: BTreeMap<String, ServiceHistory>,
}

/// An open activation holding a card.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Lease {
    /// The marketplace instance that issued the activation.
    pub instance: String,
    pub activation: u64,
    pub service: String,
    pub since_ms: u64,
}

/// A number's history with one service.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct ServiceHistory {
    /// Activations issued for the service.
    #[serde(default)]
    pub offers: u32,
    /// Sold (status 3) or refunded after a sale (status 5): never offered for it again.
    #[serde(default, skip_serializing_if = "is_false")]
    pub sold: bool,
    /// The marketplace asked us not to offer it for the service again (status 1).
    #[serde(default, skip_serializing_if = "is_false")]
    pub refused: bool,
}

fn is_false(flag: &bool) -> bool {
    !flag
}

/// Why a number is not offered for a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unavailable {
    /// An activation, on any marketplace, is open on it.
    Busy,
    Sold,
    Refused,
    /// Offered as often as the offer cap allows.
    Capped,
}

/// How the marketplace ended an activation, as FINISH_ACTIVATION's status says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Ending {
    /// 1: do not offer this number for this service again.
    Refused,
    /// 3: sold.
    Sold,
    /// 4: cancelled; the number may be offered again, up to the offer cap.
    Cancelled,
    /// 5: refunded after a sale.
    Refunded,
}

impl Ending {
    pub fn from_status(status: u64) -> Option<Self> {
        match status {
            1 => Some(Ending::Refused),
            3 => Some(Ending::Sold),
            4 => Some(Ending::Cancelled),
            5 => Some(Ending::Refunded),
            _ => None,
        }
    }

    pub fn status(self) -> u8 {
        match self {
            Ending::Refused => 1,
            Ending::Sold => 3,
            Ending::Cancelled => 4,
            Ending::Refunded => 5,
        }
    }
}

impl Usage {
    /// The number's history with a service; empty when the card's number has changed since.
    pub fn history(&self, number: &str, service: &str) -> ServiceHistory {
        match &self.number {
            Some(known) if known == number => {
                self.services.get(service).copied().unwrap_or_default()
            }
            _ => ServiceHistory::default(),
        }
    }

    /// Why `number` cannot be offered for `service` now; `None` when it can.
    pub fn unavailable(&self, number: &str, service: &str, offer_cap: u32) -> Option<Unavailable> {
        let history = self.history(number, service);
        if self.lease.is_some() {
            Some(Unavailable::Busy)
        } else if history.sold {
            Some(Unavailable::Sold)
        } else if history.refused {
            Some(Unavailable::Refused)
        } else if history.offers >= offer_cap {
            Some(Unavailable::Capped)
        } else {
            None
        }
    }

    /// The record once `lease` holds the card: one more offer of its number for the service.
    pub fn leased(&self, number: &str, lease: Lease) -> Usage {
        let mut next = self.for_number(number);
        next.services
            .entry(lease.service.clone())
            .or_default()
            .offers += 1;
        next.last_leased_ms = Some(lease.since_ms);
        next.lease = Some(lease);
        next
    }

    /// The record once activation `activation` of `instance` ended as `ending`: its lease
    /// released, if it still holds the card, and the number's history with the service
    /// updated, if the card still has that number.
    pub fn finished(
        &self,
        instance: &str,
        activation: u64,
        number: &str,
        service: &str,
        ending: Ending,
    ) -> Usage {
        let mut next = self.clone();
        if next
            .lease
            .as_ref()
            .is_some_and(|lease| lease.instance == instance && lease.activation == activation)
        {
            next.lease = None;
        }
        if next.number.as_deref() == Some(number) {
            let history = next.services.entry(service.to_owned()).or_default();
            match ending {
                Ending::Refused => history.refused = true,
                Ending::Sold | Ending::Refunded => history.sold = true,
                Ending::Cancelled => {}
            }
        }
        next
    }

    /// This record, its history dropped if it was about another number.
    fn for_number(&self, number: &str) -> Usage {
        if self.number.as_deref() == Some(number) {
            return self.clone();
        }
        Usage {
            number: Some(number.to_owned()),
            services: BTreeMap::new(),
            ..self.clone()
        }
    }

    pub fn decode(bytes: Option<&[u8]>) -> Result<Usage, String> {
        match bytes {
            None => Ok(Usage::default()),
            Some(bytes) => serde_json::from_slice(bytes)
                .map_err(|error| format!("unreadable SIM usage record: {error}")),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a usage record serialises")
    }
}

/// Writes `change(current)` in place of the record at `key`, with compare-and-swap, reading
/// again after every lost race. `change` returning `None` leaves the record as it is.
pub fn update(
    shared: &dyn KeyValue,
    key: &str,
    mut change: impl FnMut(&Usage) -> Option<Usage>,
) -> Result<Usage, String> {
    for _ in 0..SWAP_ATTEMPTS {
        let bytes = shared.get(key)?;
        let current = Usage::decode(bytes.as_deref())?;
        let Some(next) = change(&current) else {
            return Ok(current);
        };
        if next == current {
            return Ok(current);
        }
        if shared.compare_and_swap(key, bytes.as_deref(), &next.encode())? {
            return Ok(next);
        }
    }
    Err(format!(
        "`{key}` kept changing under {SWAP_ATTEMPTS} attempts to update it"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use simrelay_sdk::MemoryStore;

    fn lease(instance: &str, activation: u64, service: &str) -> Lease {
        Lease {
            instance: instance.into(),
            activation,
            service: service.into(),
            since_ms: 5,
        }
    }

    #[test]
    fn a_lease_counts_an_offer_and_makes_the_card_busy() {
        let fresh = Usage::default();
        assert_eq!(fresh.unavailable("79", "tg", 4), None);
        let leased = fresh.leased("79", lease("bower", 1, "tg"));
        assert_eq!(leased.unavailable("79", "tg", 4), Some(Unavailable::Busy));
        assert_eq!(leased.unavailable("79", "wa", 4), Some(Unavailable::Busy));
        assert_eq!(leased.history("79", "tg").offers, 1);
        assert_eq!(leased.last_leased_ms, Some(5));
    }

    #[test]
    fn endings_per_status() {
        let leased = Usage::default().leased("79", lease("bower", 1, "tg"));
        let end = |ending| leased.finished("bower", 1, "79", "tg", ending);
        assert_eq!(
            end(Ending::Sold).unavailable("79", "tg", 4),
            Some(Unavailable::Sold)
        );
        assert_eq!(
            end(Ending::Refunded).unavailable("79", "tg", 4),
            Some(Unavailable::Sold)
        );
        assert_eq!(
            end(Ending::Refused).unavailable("79", "tg", 4),
            Some(Unavailable::Refused)
        );
        assert_eq!(end(Ending::Cancelled).unavailable("79", "tg", 4), None);
        for ending in [
            Ending::Sold,
            Ending::Refunded,
            Ending::Refused,
            Ending::Cancelled,
        ] {
            // Other services are untouched.
            assert_eq!(end(ending).unavailable("79", "wa", 4), None);
            assert_eq!(Ending::from_status(ending.status().into()), Some(ending));
        }
        for status in [0, 2, 6, 8] {
            assert_eq!(Ending::from_status(status), None);
        }
    }

    #[test]
    fn cancelled_offers_reach_the_cap() {
        let mut usage = Usage::default();
        for activation in 1..=4 {
            assert_eq!(usage.unavailable("79", "tg", 4), None);
            usage = usage
                .leased("79", lease("bower", activation, "tg"))
                .finished("bower", activation, "79", "tg", Ending::Cancelled);
        }
        assert_eq!(usage.unavailable("79", "tg", 4), Some(Unavailable::Capped));
        assert_eq!(usage.unavailable("79", "tg", 5), None);
    }

    #[test]
    fn only_the_issuing_activation_releases_the_lease() {
        let leased = Usage::default().leased("79", lease("bower", 1, "tg"));
        for (instance, activation) in [("bower", 2), ("onlinesim", 1)] {
            let after = leased.finished(instance, activation, "79", "tg", Ending::Cancelled);
            assert_eq!(after.lease, leased.lease);
        }
    }

    #[test]
    fn a_new_number_starts_a_new_history() {
        let sold = Usage::default()
            .leased("79", lease("bower", 1, "tg"))
            .finished("bower", 1, "79", "tg", Ending::Sold);
        assert_eq!(sold.unavailable("79", "tg", 4), Some(Unavailable::Sold));
        assert_eq!(sold.unavailable("80", "tg", 4), None);
        let again = sold.leased("80", lease("bower", 2, "tg"));
        assert_eq!(again.history("80", "tg").offers, 1);
        assert_eq!(again.number.as_deref(), Some("80"));
        // The end of an activation on the old number does not mark the new one.
        let late = again.finished("bower", 1, "79", "wa", Ending::Sold);
        assert_eq!(late.history("80", "wa"), ServiceHistory::default());
    }

    #[test]
    fn records_survive_a_round_trip_and_stay_small() {
        let usage = Usage::default().leased("79", lease("bower", 7, "tg"));
        assert_eq!(Usage::decode(Some(&usage.encode())).unwrap(), usage);
        assert_eq!(Usage::decode(None).unwrap(), Usage::default());
        assert_eq!(Usage::default().encode(), b"{}");
        assert!(Usage::decode(Some(b"[")).is_err());
    }

    #[test]
    fn update_reads_again_after_a_lost_swap() {
        let store = MemoryStore::default();
        let leased = Usage::default().leased("79", lease("bower", 1, "tg"));
        store.set("use/x", &leased.encode()).unwrap();
        // Meanwhile the other marketplace records a refusal for WhatsApp.
        let racing = crate::testing::Racing::new(&store, || {
            let mut usage = Usage::decode(store.get("use/x").unwrap().as_deref()).unwrap();
            usage.services.entry("wa".into()).or_default().refused = true;
            store.set("use/x", &usage.encode()).unwrap();
        });
        let mut calls = 0;
        let result = update(&racing, "use/x", |usage| {
            calls += 1;
            Some(usage.finished("bower", 1, "79", "tg", Ending::Sold))
        })
        .unwrap();
        assert_eq!(calls, 2, "the lost swap is decided again on fresh data");
        assert_eq!(racing.lost_swaps.get(), 1);
        assert_eq!(result.lease, None);
        assert!(result.history("79", "tg").sold);
        assert!(
            result.history("79", "wa").refused,
            "the other writer's change survives"
        );
        assert_eq!(
            Usage::decode(store.get("use/x").unwrap().as_deref()).unwrap(),
            result
        );
    }
}
