//! The SIM inventory: the gateways' word about every SIM card, kept in the shared store so
//! every marketplace selling the farm sees the same cards.
//!
//! A card is identified by gateway + port + ICCID, never by its number: numbers get rotated.
//! The shared record holds only what the gateway said (`sim/<device>/<port>/<iccid>`), so
//! every instance fed the same events writes the same record. What an instance makes of it
//! (the number to sell, country, operator, flash calls) comes from that instance's settings
//! when it reads the inventory.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use simrelay_sdk::phone::international_digits;
use simrelay_sdk::{KeyValue, SimState, SimStatus};

use crate::networks;
use crate::settings::{Settings, lower};
use crate::usage::Usage;

const SIM_PREFIX: &str = "sim/";
const USAGE_PREFIX: &str = "use/";

/// The operator of SIMs whose operator no table names: sold only to buyers who take any.
pub const ANY_OPERATOR: &str = "any";

/// Which card: gateway device, port, ICCID, each as the gateway names it.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SimId {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iccid: Option<String>,
}

impl SimId {
    pub fn new(device: Option<&str>, port: Option<&str>, iccid: Option<&str>) -> Self {
        let part = |value: Option<&str>| {
            value
                .map(str::trim)
                .filter(|value| !value.is_empty())
                .map(str::to_owned)
        };
        SimId {
            device: part(device),
            port: part(port),
            iccid: part(iccid),
        }
    }

    fn is_empty(&self) -> bool {
        self.device.is_none() && self.port.is_none() && self.iccid.is_none()
    }

    /// The key of the card's gateway record.
    pub fn sim_key(&self) -> String {
        format!("{}{}", self.port_prefix(), escape(self.iccid.as_deref()))
    }

    /// The prefix every card that sat in the same port shares.
    fn port_prefix(&self) -> String {
        format!(
            "{SIM_PREFIX}{}/{}/",
            escape(self.device.as_deref()),
            escape(self.port.as_deref())
        )
    }

    /// The key of the card's usage record: by ICCID, so a card moved to another port keeps
    /// its lease and history; by port for gateways that report no ICCID.
    pub fn usage_key(&self) -> String {
        match &self.iccid {
            Some(iccid) => format!("{USAGE_PREFIX}iccid/{}", escape(Some(iccid))),
            None => format!(
                "{USAGE_PREFIX}port/{}/{}",
                escape(self.device.as_deref()),
                escape(self.port.as_deref())
            ),
        }
    }

    fn from_sim_key(key: &str) -> Option<SimId> {
        let mut parts = key.strip_prefix(SIM_PREFIX)?.split('/');
        let (device, port, iccid) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        Some(SimId {
            device: unescape(device),
            port: unescape(port),
            iccid: unescape(iccid),
        })
    }
}

/// Key parts may hold any text; `/` separates them, and an absent part is empty.
fn escape(part: Option<&str>) -> String {
    part.unwrap_or_default()
        .replace('%', "%25")
        .replace('/', "%2F")
}

fn unescape(part: &str) -> Option<String> {
    (!part.is_empty()).then(|| part.replace("%2F", "/").replace("%25", "%"))
}

/// What a gateway last said about a card.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SimRecord {
    #[serde(flatten)]
    pub id: SimId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub imsi: Option<String>,
    /// The number the gateway reads from the card (`sn`), as it wrote it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub number: Option<String>,
    /// The gateway's state, for operators reading the store.
    pub state: String,
    /// Whether the card can receive an SMS right now.
    pub usable: bool,
    pub updated_ms: u64,
}

impl SimRecord {
    fn from_status(status: &SimStatus, now_ms: u64) -> Self {
        let text = |value: &Option<String>| {
            value
                .as_deref()
                .map(str::trim)
                .filter(|value| !value.is_empty())
                .map(str::to_owned)
        };
        SimRecord {
            id: SimId::new(
                status.device.as_deref(),
                status.port.as_deref(),
                status.iccid.as_deref(),
            ),
            imsi: text(&status.imsi),
            number: text(&status.number),
            state: state_name(status.state).to_owned(),
            usable: usable(status),
            updated_ms: now_ms,
        }
    }

    /// Whether two records say the same, whenever they were written.
    fn same_facts(&self, other: &SimRecord) -> bool {
        SimRecord {
            updated_ms: other.updated_ms,
            ..self.clone()
        } == *other
    }
}

/// Only a card registered on the network, switched on and neither locked nor failing can
/// receive an SMS now; anything else the gateway says takes it off the market at once.
/// Gateways that do not report `active` or `slot_active` are taken at their state's word.
pub fn usable(status: &SimStatus) -> bool {
    matches!(status.state, SimState::Registered | SimState::CallConnected)
        && status.active != Some(false)
        && status.slot_active != Some(false)
}

fn state_name(state: SimState) -> &'static str {
    match state {
        SimState::NoSim => "no-sim",
        SimState::Idle => "idle",
        SimState::Registering => "registering",
        SimState::Registered => "registered",
        SimState::CallConnected => "call-connected",
        SimState::NoBalance => "no-balance",
        SimState::RegistrationFailed => "registration-failed",
        SimState::LockedByDevice => "locked-by-device",
        SimState::LockedByOperator => "locked-by-operator",
        SimState::SimError => "sim-error",
        SimState::CardDetected => "card-detected",
        SimState::UserLocked => "user-locked",
        SimState::AccessingNetwork => "accessing-network",
        SimState::ModuleTimeout => "module-timeout",
        SimState::Unknown => "unknown",
    }
}

/// Records a gateway's SIM status. Any other card last seen in the same port was removed or
/// swapped: it goes off the market at once. A status that names no device (Ejoin's
/// `port-status` may carry no `mac`) is about that port on whichever gateway sent it, so it
/// reaches the port on every device; one that names its device also overrides what such
/// statuses said about its port.
pub fn record_status(shared: &dyn KeyValue, status: &SimStatus, now_ms: u64) -> Result<(), String> {
    let record = SimRecord::from_status(status, now_ms);
    if record.id.is_empty() {
        eprintln!("SIM status names no device, port or ICCID; not recorded");
        return Ok(());
    }
    let key = record.id.sim_key();
    let known = shared.get(&key)?.and_then(|bytes| decode(&key, &bytes));
    if !known.is_some_and(|known| known.same_facts(&record)) {
        shared.set(&key, &encode(&record))?;
    }
    if record.id.device.is_none() && record.id.port.is_none() {
        return Ok(());
    }
    for other_key in same_port_keys(shared, &record.id)? {
        if other_key == key {
            continue;
        }
        let Some(mut other) = shared
            .get(&other_key)?
            .and_then(|bytes| decode(&other_key, &bytes))
        else {
            continue;
        };
        if other.usable {
            other.usable = false;
            other.state = "replaced".into();
            other.updated_ms = now_ms;
            shared.set(&other_key, &encode(&other))?;
        }
    }
    Ok(())
}

/// The records of every card last seen in the port `id` names: on its device and on none, or
/// on every device when `id` names none, since a report without a device may come from any
/// gateway. Without a port nothing ties a status to cards reported without a device.
fn same_port_keys(shared: &dyn KeyValue, id: &SimId) -> Result<Vec<String>, String> {
    let mut keys = shared.keys(&id.port_prefix())?;
    match (&id.device, &id.port) {
        (Some(_), Some(_)) => {
            let deviceless = SimId {
                device: None,
                ..id.clone()
            };
            keys.extend(shared.keys(&deviceless.port_prefix())?);
        }
        (None, Some(_)) => keys.extend(shared.keys(SIM_PREFIX)?.into_iter().filter(|key| {
            SimId::from_sim_key(key)
                .is_some_and(|other| other.device.is_some() && other.port == id.port)
        })),
        _ => {}
    }
    Ok(keys)
}

fn encode(record: &SimRecord) -> Vec<u8> {
    serde_json::to_vec(record).expect("a SIM record serialises")
}

/// A record that cannot be read is skipped, not fatal: one bad key must not take the whole
/// farm off the market.
fn decode(key: &str, bytes: &[u8]) -> Option<SimRecord> {
    serde_json::from_slice(bytes)
        .inspect_err(|error| eprintln!("skipping unreadable SIM record `{key}`: {error}"))
        .ok()
}

/// A card this instance can sell now, as its settings describe it.
#[derive(Debug, Clone, PartialEq)]
pub struct OnSale {
    pub id: SimId,
    /// International digits, e.g. `79001234567`.
    pub number: String,
    pub country: String,
    pub operator: String,
    pub call: bool,
    pub voice: bool,
    pub min_price: Option<f64>,
    pub usage_key: String,
    pub usage: Usage,
    /// The usage record as read, for compare-and-swap.
    pub usage_bytes: Option<Vec<u8>>,
}

/// Every usable card with a number and a country, read with one key listing and one batch
/// read. A card seen in two ports (moved while both reported usable) is listed once.
pub fn on_sale(shared: &dyn KeyValue, settings: &Settings) -> Result<Vec<OnSale>, String> {
    let mut sim_keys = shared.keys(SIM_PREFIX)?;
    sim_keys.sort_unstable();
    let ids: Vec<Option<SimId>> = sim_keys
        .iter()
        .map(|key| SimId::from_sim_key(key))
        .collect();
    let usage_keys: BTreeSet<String> = ids.iter().flatten().map(SimId::usage_key).collect();
    let wanted: Vec<String> = sim_keys
        .iter()
        .cloned()
        .chain(usage_keys.iter().cloned())
        .collect();
    let mut values = shared.get_many(&wanted)?.into_iter();
    let sims: Vec<Option<Vec<u8>>> = values.by_ref().take(sim_keys.len()).collect();
    let usages: std::collections::BTreeMap<&String, Option<Vec<u8>>> =
        usage_keys.iter().zip(values).collect();

    let mut listed = BTreeSet::new();
    let mut on_sale = Vec::new();
    for (key, bytes) in sim_keys.iter().zip(sims) {
        let Some(record) = bytes.and_then(|bytes| decode(key, &bytes)) else {
            continue;
        };
        if !record.usable {
            continue;
        }
        let Some(mut sale) = describe(&record, settings) else {
            continue;
        };
        if !listed.insert(sale.usage_key.clone()) {
            continue;
        }
        sale.usage_bytes = usages.get(&sale.usage_key).cloned().flatten();
        match Usage::decode(sale.usage_bytes.as_deref()) {
            Ok(usage) => sale.usage = usage,
            // Whether it is leased cannot be known: not offered rather than sold twice.
            Err(error) => {
                eprintln!("not offering {key}: {error}");
                continue;
            }
        }
        on_sale.push(sale);
    }
    Ok(on_sale)
}

/// The card as this instance sells it, or `None` when its number or country is unknown.
fn describe(record: &SimRecord, settings: &Settings) -> Option<OnSale> {
    let configured = settings.sims.for_iccid(record.id.iccid.as_deref());
    let defaults = settings.sims.defaults();
    let fact =
        |pick: fn(&crate::settings::SimOverride) -> Option<&String>| configured.and_then(pick);
    let number = fact(|sim| sim.number.as_ref())
        .or(record.number.as_ref())
        .and_then(|number| international_digits(number))?;
    let network = record
        .imsi
        .as_deref()
        .and_then(|imsi| networks::network(imsi, &settings.codes));
    let country = fact(|sim| sim.country.as_ref())
        .map(|country| lower(country))
        .or_else(|| network.as_ref().map(|network| network.country.clone()))?;
    let operator = fact(|sim| sim.operator.as_ref())
        .map(|operator| lower(operator))
        .or_else(|| network.and_then(|network| network.operator))
        .unwrap_or_else(|| ANY_OPERATOR.to_owned());
    let flag = |pick: fn(&crate::settings::SimOverride) -> Option<bool>| {
        configured
            .and_then(pick)
            .or(pick(defaults))
            .unwrap_or(false)
    };
    Some(OnSale {
        usage_key: record.id.usage_key(),
        id: record.id.clone(),
        number,
        country,
        operator,
        call: flag(|sim| sim.call),
        voice: flag(|sim| sim.voice),
        min_price: configured
            .and_then(|sim| sim.min_price)
            .or(defaults.min_price),
        usage: Usage::default(),
        usage_bytes: None,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use simrelay_sdk::{CallContext, MemoryStore};

    pub(crate) fn status(port: &str, iccid: &str, number: &str, state: SimState) -> SimStatus {
        SimStatus {
            device: Some("00:1A:2B:3C:4D:5E".into()),
            port: Some(port.into()),
            number: Some(number.into()),
            iccid: Some(iccid.into()),
            imsi: Some("250010000000001".into()),
            state,
            detail: None,
            active: Some(true),
            operator: None,
            signal: None,
            balance: None,
            slot_active: None,
        }
    }

    fn settings(extra: &[(&str, &str)]) -> Settings {
        let mut all = vec![("api_key", "k"), ("services", "tg")];
        all.extend_from_slice(extra);
        Settings::from_context(&CallContext::for_tests(&all)).unwrap()
    }

    fn numbers(store: &MemoryStore, settings: &Settings) -> Vec<String> {
        on_sale(store, settings)
            .unwrap()
            .into_iter()
            .map(|sale| sale.number)
            .collect()
    }

    #[test]
    fn only_registered_active_cards_are_on_sale() {
        let all_states = [
            (SimState::NoSim, false),
            (SimState::Idle, false),
            (SimState::Registering, false),
            (SimState::Registered, true),
            (SimState::CallConnected, true),
            (SimState::NoBalance, false),
            (SimState::RegistrationFailed, false),
            (SimState::LockedByDevice, false),
            (SimState::LockedByOperator, false),
            (SimState::SimError, false),
            (SimState::CardDetected, false),
            (SimState::UserLocked, false),
            (SimState::AccessingNetwork, false),
            (SimState::ModuleTimeout, false),
            (SimState::Unknown, false),
        ];
        for (state, expected) in all_states {
            assert_eq!(
                usable(&status("1.01", "8970", "+79001234567", state)),
                expected,
                "{state:?}"
            );
        }
        let mut inactive = status("1.01", "8970", "+79001234567", SimState::Registered);
        inactive.active = Some(false);
        assert!(!usable(&inactive));
        inactive.active = None;
        assert!(
            usable(&inactive),
            "a gateway that does not say is taken at its state's word"
        );
        inactive.slot_active = Some(false);
        assert!(!usable(&inactive));
    }

    #[test]
    fn a_card_going_offline_leaves_the_market_at_once() {
        let store = MemoryStore::default();
        let settings = settings(&[]);
        record_status(
            &store,
            &status("1.01", "8970", "+79001234567", SimState::Registered),
            1,
        )
        .unwrap();
        assert_eq!(numbers(&store, &settings), ["79001234567"]);
        record_status(
            &store,
            &status("1.01", "8970", "+79001234567", SimState::RegistrationFailed),
            2,
        )
        .unwrap();
        assert!(numbers(&store, &settings).is_empty());
        record_status(
            &store,
            &status("1.01", "8970", "+79001234567", SimState::Registered),
            3,
        )
        .unwrap();
        assert_eq!(numbers(&store, &settings), ["79001234567"]);
    }

    #[test]
    fn a_swapped_or_removed_card_leaves_the_market() {
        let store = MemoryStore::default();
        let settings = settings(&[]);
        record_status(
            &store,
            &status("1.01", "8970", "+79001234567", SimState::Registered),
            1,
        )
        .unwrap();
        record_status(
            &store,
            &status("1.02", "8971", "+79001234568", SimState::Registered),
            1,
        )
        .unwrap();
        // Another card in port 1.01.
        record_status(
            &store,
            &status("1.01", "8972", "+79001234569", SimState::Registered),
            2,
        )
        .unwrap();
        assert_eq!(numbers(&store, &settings), ["79001234569", "79001234568"]);
        let old = decode(
            "",
            &store
                .get(&SimId::new(Some("00:1A:2B:3C:4D:5E"), Some("1.01"), Some("8970")).sim_key())
                .unwrap()
                .unwrap(),
        )
        .unwrap();
        assert_eq!((old.usable, old.state.as_str()), (false, "replaced"));
        // Port 1.01 empty: no ICCID in the report.
        let mut empty = status("1.01", "", "", SimState::NoSim);
        empty.iccid = None;
        record_status(&store, &empty, 3).unwrap();
        assert_eq!(numbers(&store, &settings), ["79001234568"]);
    }

    /// Ejoin's `port-status` may name no device: the card the gateway reported in that port
    /// leaves the market all the same, and a later report naming the device wins again.
    #[test]
    fn a_status_naming_no_device_reaches_the_port_on_every_device() {
        let store = MemoryStore::default();
        let settings = settings(&[]);
        record_status(
            &store,
            &status("1.01", "8970", "+79001234567", SimState::Registered),
            1,
        )
        .unwrap();
        record_status(
            &store,
            &status("1.02", "8971", "+79001234568", SimState::Registered),
            1,
        )
        .unwrap();
        let mut failed = status("1.01", "", "", SimState::RegistrationFailed);
        (failed.device, failed.iccid, failed.number) = (None, None, None);
        record_status(&store, &failed, 2).unwrap();
        assert_eq!(numbers(&store, &settings), ["79001234568"]);

        // Registered again, reported without the device, then failing as its device says.
        let mut back = status("1.01", "8970", "+79001234567", SimState::Registered);
        back.device = None;
        record_status(&store, &back, 3).unwrap();
        assert_eq!(numbers(&store, &settings), ["79001234567", "79001234568"]);
        record_status(
            &store,
            &status("1.01", "8970", "+79001234567", SimState::SimError),
            4,
        )
        .unwrap();
        assert_eq!(numbers(&store, &settings), ["79001234568"]);
    }

    #[test]
    fn the_same_facts_are_not_written_again() {
        let store = MemoryStore::default();
        let registered = status("1.01", "8970", "+79001234567", SimState::Registered);
        record_status(&store, &registered, 1).unwrap();
        record_status(&store, &registered, 2).unwrap();
        let key = SimId::new(registered.device.as_deref(), Some("1.01"), Some("8970")).sim_key();
        assert_eq!(
            decode("", &store.get(&key).unwrap().unwrap())
                .unwrap()
                .updated_ms,
            1
        );
    }

    #[test]
    fn keys_hold_any_text() {
        let id = SimId::new(Some("dev/1%"), Some("1.01"), None);
        assert_eq!(id.sim_key(), "sim/dev%2F1%25/1.01/");
        assert_eq!(SimId::from_sim_key(&id.sim_key()), Some(id.clone()));
        assert_eq!(id.usage_key(), "use/port/dev%2F1%25/1.01");
        let full = SimId::new(Some("m"), Some("2"), Some("8970"));
        assert_eq!(full.usage_key(), "use/iccid/8970");
        assert_eq!(SimId::from_sim_key(&full.sim_key()), Some(full));
        assert_eq!(SimId::from_sim_key("sim/a/b"), None);
        assert_eq!(SimId::from_sim_key("sim/a/b/c/d"), None);
    }

    #[test]
    fn unidentifiable_statuses_are_ignored() {
        let store = MemoryStore::default();
        let mut nameless = status("", "", "+79001234567", SimState::Registered);
        nameless.device = None;
        record_status(&store, &nameless, 1).unwrap();
        assert!(store.keys("").unwrap().is_empty());
    }

    #[test]
    fn number_from_gateway_or_configuration() {
        let store = MemoryStore::default();
        record_status(&store, &status("1", "8970", "", SimState::Registered), 1).unwrap();
        record_status(
            &store,
            &status("2", "8971", "+7 900 111-22-33", SimState::Registered),
            1,
        )
        .unwrap();
        record_status(
            &store,
            &status("3", "8972", "+79004445566", SimState::Registered),
            1,
        )
        .unwrap();
        // Without a number a card cannot be sold.
        assert_eq!(
            numbers(&store, &settings(&[])),
            ["79001112233", "79004445566"]
        );
        let mapped = settings(&[(
            "sims",
            r#"{"8970": "+79007778899", "8972": "0079990001122"}"#,
        )]);
        assert_eq!(
            numbers(&store, &mapped),
            ["79007778899", "79001112233", "79990001122"]
        );
    }

    #[test]
    fn country_and_operator_from_imsi_or_configuration() {
        let store = MemoryStore::default();
        let mut beeline = status("1", "8970", "+79001234567", SimState::Registered);
        beeline.imsi = Some("250990000000001".into());
        let mut unnamed = status("2", "8971", "+79001234568", SimState::Registered);
        unnamed.imsi = Some("250770000000001".into());
        let mut unknown = status("3", "8972", "+79001234569", SimState::Registered);
        unknown.imsi = Some("999990000000001".into());
        let mut no_imsi = status("4", "8973", "+79001234560", SimState::Registered);
        no_imsi.imsi = None;
        for sim in [&beeline, &unnamed, &unknown, &no_imsi] {
            record_status(&store, sim, 1).unwrap();
        }
        let place = |settings: &Settings| -> Vec<(String, String, String)> {
            on_sale(&store, settings)
                .unwrap()
                .into_iter()
                .map(|sale| (sale.number, sale.country, sale.operator))
                .collect()
        };
        let triple = |number: &str, country: &str, operator: &str| {
            (number.to_owned(), country.to_owned(), operator.to_owned())
        };
        assert_eq!(
            place(&settings(&[])),
            [
                triple("79001234567", "russia", "beeline"),
                triple("79001234568", "russia", "any")
            ]
        );
        let configured = settings(&[
            ("mcc_mnc", r#"{"999": "testland", "25077": "volna"}"#),
            (
                "sims",
                r#"{"8973": {"country": "Russia", "operator": "MTS"}}"#,
            ),
        ]);
        assert_eq!(
            place(&configured),
            [
                triple("79001234567", "russia", "beeline"),
                triple("79001234568", "russia", "volna"),
                triple("79001234569", "testland", "any"),
                triple("79001234560", "russia", "mts"),
            ]
        );
    }

    #[test]
    fn calls_voice_and_price_floors_from_configuration() {
        let store = MemoryStore::default();
        record_status(
            &store,
            &status("1", "8970", "+79001234567", SimState::Registered),
            1,
        )
        .unwrap();
        record_status(
            &store,
            &status("2", "8971", "+79001234568", SimState::Registered),
            1,
        )
        .unwrap();
        let flags = |settings: &Settings| -> Vec<(bool, bool, Option<f64>)> {
            on_sale(&store, settings)
                .unwrap()
                .iter()
                .map(|s| (s.call, s.voice, s.min_price))
                .collect()
        };
        assert_eq!(
            flags(&settings(&[])),
            [(false, false, None), (false, false, None)]
        );
        let configured = settings(&[(
            "sims",
            r#"{"*": {"call": true, "min_price": 2}, "8971": {"call": false, "voice": true, "min_price": 9}}"#,
        )]);
        assert_eq!(
            flags(&configured),
            [(true, false, Some(2.0)), (false, true, Some(9.0))]
        );
    }

    #[test]
    fn a_card_in_two_ports_is_listed_once_and_bad_records_are_skipped() {
        let store = MemoryStore::default();
        record_status(
            &store,
            &status("1", "8970", "+79001234567", SimState::Registered),
            1,
        )
        .unwrap();
        record_status(
            &store,
            &status("2", "8970", "+79001234567", SimState::Registered),
            1,
        )
        .unwrap();
        store.set("sim/x/y/z", b"not json").unwrap();
        let sales = on_sale(&store, &settings(&[])).unwrap();
        assert_eq!(sales.len(), 1);
        assert_eq!(sales[0].usage_key, "use/iccid/8970");
        // An unreadable usage record: the card might be leased, so it is not offered.
        store.set("use/iccid/8970", b"garbage").unwrap();
        assert!(on_sale(&store, &settings(&[])).unwrap().is_empty());
    }
}
