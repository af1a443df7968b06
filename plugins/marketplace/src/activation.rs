//! Activations an instance issued, in its own store: only the marketplace that issued an
//! activation finishes it or receives its SMS.
//!
//! Own keys: `activation/<id>` (the record, kept `forget_after_secs` after it ends so a
//! repeated FINISH_ACTIVATION is recognised; `ended@…` indexes them by end), `open/<id>`
//! (the open ones, for reconciliation) and `route/…` (how a received SMS finds the open activation on its card: by ICCID, by
//! number, by gateway port).

use serde::{Deserialize, Serialize};
use simrelay_sdk::phone::international_digits;
use simrelay_sdk::{ExpiryIndex, KeyValue, ReceivedMessage};

use crate::inventory::SimId;
use crate::usage::{self, Ending};

const ACTIVATION_PREFIX: &str = "activation/";
const OPEN_PREFIX: &str = "open/";
const ID_COUNTER: &str = "counter/activation";
const ENDED_INDEX: &str = "ended";

/// A number issued to the marketplace for one service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Activation {
    pub id: u64,
    pub sim: SimId,
    /// The shared usage record holding the lease.
    pub usage_key: String,
    /// International digits, as the marketplace was given it.
    pub number: String,
    pub service: String,
    pub country: String,
    pub operator: String,
    pub issued_ms: u64,
    /// The price the marketplace offered (`sum`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sum: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended: Option<Ended>,
    /// When its state was last asked of the marketplace (reconciliation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checked_ms: Option<u64>,
}

/// How and when an activation ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ended {
    pub ending: Ending,
    pub at_ms: u64,
    pub by: EndedBy,
}

/// Who said the activation ended. Never simrelay on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EndedBy {
    /// FINISH_ACTIVATION.
    FinishActivation,
    /// The marketplace's answer to a status query, for a FINISH_ACTIVATION that never came.
    StatusQuery,
}

impl Activation {
    pub fn is_open(&self) -> bool {
        self.ended.is_none()
    }

    fn key(id: u64) -> String {
        format!("{ACTIVATION_PREFIX}{id}")
    }

    fn routes(&self) -> Vec<String> {
        let mut routes = vec![route_by_number(&self.number)];
        if let Some(iccid) = &self.sim.iccid {
            routes.push(route_by_iccid(iccid));
        }
        if let (Some(device), Some(port)) = (&self.sim.device, &self.sim.port) {
            routes.push(route_by_port(device, port));
        }
        routes
    }
}

fn route_by_number(digits: &str) -> String {
    format!("route/number/{digits}")
}

fn route_by_iccid(iccid: &str) -> String {
    format!(
        "route/iccid/{}",
        iccid.replace('%', "%25").replace('/', "%2F")
    )
}

fn route_by_port(device: &str, port: &str) -> String {
    let escape = |part: &str| part.replace('%', "%25").replace('/', "%2F");
    format!("route/port/{}/{}", escape(device), escape(port))
}

/// A new activation id: 1, 2, 3… per instance.
pub fn next_id(own: &dyn KeyValue) -> Result<u64, String> {
    let id = own.increment(ID_COUNTER, 1)?;
    u64::try_from(id).map_err(|_| format!("`{ID_COUNTER}` holds {id}"))
}

pub fn load(own: &dyn KeyValue, id: u64) -> Result<Option<Activation>, String> {
    let key = Activation::key(id);
    own.get(&key)?.map(|bytes| decode(&key, &bytes)).transpose()
}

fn decode(key: &str, bytes: &[u8]) -> Result<Activation, String> {
    serde_json::from_slice(bytes).map_err(|error| format!("unreadable `{key}`: {error}"))
}

fn save(own: &dyn KeyValue, activation: &Activation) -> Result<(), String> {
    let bytes = serde_json::to_vec(activation).expect("an activation serialises");
    own.set(&Activation::key(activation.id), &bytes)
}

/// Records an activation whose lease was just taken.
pub fn open(own: &dyn KeyValue, activation: &Activation) -> Result<(), String> {
    save(own, activation)?;
    own.set(&format!("{OPEN_PREFIX}{}", activation.id), b"")?;
    let id = activation.id.to_string();
    for route in activation.routes() {
        own.set(&route, id.as_bytes())?;
    }
    Ok(())
}

/// Stores a change to an activation, such as the time it was last checked.
pub fn update(own: &dyn KeyValue, activation: &Activation) -> Result<(), String> {
    save(own, activation)
}

/// The open activations, oldest first.
pub fn open_activations(own: &dyn KeyValue) -> Result<Vec<Activation>, String> {
    let mut ids: Vec<u64> = own
        .keys(OPEN_PREFIX)?
        .iter()
        .filter_map(|key| key.strip_prefix(OPEN_PREFIX)?.parse().ok())
        .collect();
    ids.sort_unstable();
    let keys: Vec<String> = ids.iter().map(|id| Activation::key(*id)).collect();
    let mut open = Vec::with_capacity(keys.len());
    for (key, bytes) in keys.iter().zip(own.get_many(&keys)?) {
        if let Some(bytes) = bytes {
            let activation = decode(key, &bytes)?;
            if activation.is_open() {
                open.push(activation);
            }
        }
    }
    Ok(open)
}

/// What ending an activation came to.
#[derive(Debug, Clone, PartialEq)]
pub enum Closing {
    /// It ended now.
    Ended(Activation),
    /// It had ended before; nothing changed.
    AlreadyEnded(Activation),
    /// No activation has this id.
    Unknown,
}

/// Ends an activation as the marketplace says: its card's lease is released and the
/// number's history with the service updated in the shared store, then the record closed.
/// An activation that already ended stays as it ended.
pub fn close(
    own: &dyn KeyValue,
    shared: &dyn KeyValue,
    instance: &str,
    id: u64,
    ending: Ending,
    by: EndedBy,
    now_ms: u64,
) -> Result<Closing, String> {
    let Some(mut activation) = load(own, id)? else {
        return Ok(Closing::Unknown);
    };
    if !activation.is_open() {
        return Ok(Closing::AlreadyEnded(activation));
    }
    usage::update(shared, &activation.usage_key, |usage| {
        Some(usage.finished(
            instance,
            id,
            &activation.number,
            &activation.service,
            ending,
        ))
    })?;
    activation.ended = Some(Ended {
        ending,
        at_ms: now_ms,
        by,
    });
    save(own, &activation)?;
    let id_text = id.to_string();
    ExpiryIndex::new(own, ENDED_INDEX).add(now_ms, &id_text)?;
    own.delete(&format!("{OPEN_PREFIX}{id}"))?;
    for route in activation.routes() {
        // A route another activation took over since stays.
        if own.get(&route)?.as_deref() == Some(id_text.as_bytes()) {
            own.delete(&route)?;
        }
    }
    Ok(Closing::Ended(activation))
}

/// Deletes at most `limit` activations that ended more than `after_ms` ago.
pub fn forget_ended(
    own: &dyn KeyValue,
    now_ms: u64,
    after_ms: u64,
    limit: usize,
) -> Result<usize, String> {
    ExpiryIndex::new(own, ENDED_INDEX).sweep(now_ms, after_ms, limit, |id, _| {
        match id.parse::<u64>() {
            Ok(id) => own.delete(&Activation::key(id)),
            Err(_) => Ok(()),
        }
    })
}

/// The open activation a received message belongs to. By ICCID when the gateway names the
/// card; otherwise by the number it arrived on, which then decides alone; by gateway port
/// only when the message names neither, and never against a card the message says it is not.
pub fn route(own: &dyn KeyValue, message: &ReceivedMessage) -> Result<Option<Activation>, String> {
    let iccid = message
        .iccid
        .as_deref()
        .map(str::trim)
        .filter(|iccid| !iccid.is_empty());
    let by_iccid = match iccid {
        Some(iccid) => open_at(own, &route_by_iccid(iccid))?,
        None => None,
    };
    if by_iccid.is_some() {
        return Ok(by_iccid);
    }
    if let Some(digits) = international_digits(&message.recipient) {
        return open_at(own, &route_by_number(&digits));
    }
    let (Some(device), Some(port)) = (message.device.as_deref(), message.port.as_deref()) else {
        return Ok(None);
    };
    let by_port = open_at(own, &route_by_port(device.trim(), port.trim()))?;
    Ok(
        by_port.filter(|activation| match (iccid, &activation.sim.iccid) {
            (Some(said), Some(leased)) => said == leased,
            _ => true,
        }),
    )
}

fn open_at(own: &dyn KeyValue, route: &str) -> Result<Option<Activation>, String> {
    let Some(id) = own.get(route)? else {
        return Ok(None);
    };
    let Some(id) = std::str::from_utf8(&id).ok().and_then(|id| id.parse().ok()) else {
        return Err(format!("`{route}` does not hold an activation id"));
    };
    Ok(load(own, id)?.filter(Activation::is_open))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::usage::{Lease, Usage};
    use simrelay_sdk::{MemoryStore, MessageKind};

    fn activation(id: u64, number: &str, iccid: Option<&str>) -> Activation {
        let sim = SimId::new(Some("mac"), Some("1.01"), iccid);
        Activation {
            id,
            usage_key: sim.usage_key(),
            sim,
            number: number.into(),
            service: "tg".into(),
            country: "russia".into(),
            operator: "mts".into(),
            issued_ms: 10,
            sum: Some(20.0),
            ended: None,
            checked_ms: None,
        }
    }

    fn message(recipient: &str, iccid: Option<&str>, port: Option<&str>) -> ReceivedMessage {
        ReceivedMessage {
            id: "m".into(),
            sender: "Telegram".into(),
            recipient: recipient.into(),
            text: "code 1".into(),
            kind: MessageKind::Sms,
            received_at_ms: None,
            device: Some("mac".into()),
            port: port.map(str::to_owned),
            iccid: iccid.map(str::to_owned),
            imsi: None,
            code: None,
        }
    }

    #[test]
    fn ids_count_up_from_one() {
        let own = MemoryStore::default();
        assert_eq!((next_id(&own).unwrap(), next_id(&own).unwrap()), (1, 2));
    }

    #[test]
    fn messages_find_their_activation() {
        let own = MemoryStore::default();
        open(&own, &activation(1, "79001234567", Some("8970"))).unwrap();
        let found = |message: ReceivedMessage| route(&own, &message).unwrap().map(|a| a.id);
        assert_eq!(found(message("+7 900 123-45-67", None, None)), Some(1));
        assert_eq!(found(message("", Some("8970"), None)), Some(1));
        assert_eq!(found(message("", None, Some("1.01"))), Some(1));
        // A known recipient decides alone.
        assert_eq!(found(message("79001234568", None, Some("1.01"))), None);
        // A card the message names is not the leased one.
        assert_eq!(found(message("", Some("8971"), Some("1.01"))), None);
        assert_eq!(found(message("", None, Some("1.02"))), None);
        assert_eq!(found(message("", None, None)), None);
    }

    #[test]
    fn closing_releases_the_lease_once_and_keeps_the_record() {
        let (own, shared) = (MemoryStore::default(), MemoryStore::default());
        let issued = activation(1, "79001234567", Some("8970"));
        let lease = Lease {
            instance: "bower".into(),
            activation: 1,
            service: "tg".into(),
            since_ms: 10,
        };
        shared
            .set(
                &issued.usage_key,
                &Usage::default().leased("79001234567", lease).encode(),
            )
            .unwrap();
        open(&own, &issued).unwrap();
        assert_eq!(
            open_activations(&own).unwrap(),
            std::slice::from_ref(&issued)
        );

        let closing = close(
            &own,
            &shared,
            "bower",
            1,
            Ending::Sold,
            EndedBy::FinishActivation,
            20,
        )
        .unwrap();
        let Closing::Ended(ended) = closing else {
            panic!("{closing:?}")
        };
        assert_eq!(
            ended.ended.as_ref().map(|e| (e.ending, e.at_ms)),
            Some((Ending::Sold, 20))
        );
        let usage = Usage::decode(shared.get(&issued.usage_key).unwrap().as_deref()).unwrap();
        assert_eq!(usage.lease, None);
        assert!(usage.history("79001234567", "tg").sold);
        assert!(open_activations(&own).unwrap().is_empty());
        assert_eq!(
            route(&own, &message("79001234567", None, None)).unwrap(),
            None
        );
        assert!(own.keys("route/").unwrap().is_empty());

        let again = close(
            &own,
            &shared,
            "bower",
            1,
            Ending::Cancelled,
            EndedBy::FinishActivation,
            30,
        )
        .unwrap();
        assert_eq!(again, Closing::AlreadyEnded(ended));
        assert_eq!(
            close(
                &own,
                &shared,
                "bower",
                2,
                Ending::Sold,
                EndedBy::FinishActivation,
                30
            )
            .unwrap(),
            Closing::Unknown
        );
    }
}
