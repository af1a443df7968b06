//! What the gateway last reported about each SIM, kept to fill in the recipient of an SMS
//! row that leaves it empty.
//!
//! Keys in the instance's store:
//! - `sim/<device or ->/<port>` → `{"number","iccid","imsi"}` of the SIM in that port, from
//!   `dev-status` and `port-status`; deleted when the port reports no number;
//! - `iccid/<iccid>` → `{"number"}` for SIMs whose status carried both.
//!
//! A row's recipient is resolved from its ICCID first, then from its device and port. `recv-sms`
//! pushes carry no `mac`, so for a row without a device the port is looked up on every device:
//! the number is used only when all devices that report that port agree on it. A status that
//! names no device (`port-status`) replaces what every device said about its port.

use serde::{Deserialize, Serialize};
use simrelay_sdk::{KeyValue, SimState, SimStatus};

#[derive(Debug, Default, Serialize, Deserialize, PartialEq)]
struct SimRecord {
    number: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    iccid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    imsi: Option<String>,
}

/// One spelling for a port: `1A`…`1D` (port and slot letter) become `1.01`…`1.04`, and the
/// slot of `1.1` is padded to `1.01`, as `recv-sms` rows write it. Other forms, such as
/// `12.sp256.101`, are kept as they are.
pub(crate) fn canonical_port(port: &str) -> String {
    let port = port.trim();
    let is_digits = |text: &str| !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit());
    if let Some(slot) = port.chars().last().filter(char::is_ascii_alphabetic) {
        let number = &port[..port.len() - 1];
        if is_digits(number) {
            let slot = u32::from(slot.to_ascii_uppercase()) - u32::from('A') + 1;
            return format!("{number}.{slot:02}");
        }
    }
    if let Some((number, slot)) = port.split_once('.')
        && is_digits(number)
        && is_digits(slot)
        && slot.len() < 2
    {
        return format!("{number}.{slot:0>2}");
    }
    port.to_owned()
}

fn sim_key(device: Option<&str>, port: &str) -> String {
    format!("sim/{}/{port}", device.unwrap_or("-"))
}

/// Remembers the number of the SIM a status describes, or forgets a port that has none.
pub(crate) fn record(kv: &dyn KeyValue, status: &SimStatus) -> Result<(), String> {
    let number = status
        .number
        .clone()
        .filter(|_| status.state != SimState::NoSim);
    if let Some(port) = &status.port {
        if status.device.is_none() {
            // A report that does not name its device (`port-status` has no `mac`) replaces
            // what any device said about the port.
            let suffix = format!("/{port}");
            for key in kv.keys("sim/")? {
                if key.ends_with(&suffix) {
                    kv.delete(&key)?;
                }
            }
        }
        let key = sim_key(status.device.as_deref(), port);
        match &number {
            Some(number) => {
                let sim = SimRecord {
                    number: number.clone(),
                    iccid: status.iccid.clone(),
                    imsi: status.imsi.clone(),
                };
                kv.set(&key, &serde_json::to_vec(&sim).map_err(|e| e.to_string())?)?;
            }
            None => kv.delete(&key)?,
        }
    }
    if let (Some(iccid), Some(number)) = (&status.iccid, number) {
        let sim = SimRecord {
            number,
            ..SimRecord::default()
        };
        kv.set(
            &format!("iccid/{iccid}"),
            &serde_json::to_vec(&sim).map_err(|e| e.to_string())?,
        )?;
    }
    Ok(())
}

fn load(kv: &dyn KeyValue, key: &str) -> Result<Option<SimRecord>, String> {
    // A record this plugin cannot read is as good as none: it only ever fills in a blank.
    Ok(kv
        .get(key)?
        .and_then(|bytes| serde_json::from_slice(&bytes).ok()))
}

/// The number of the SIM that received a row, as far as the gateway said.
pub(crate) fn resolve_number(
    kv: &dyn KeyValue,
    device: Option<&str>,
    port: Option<&str>,
    iccid: Option<&str>,
) -> Result<Option<String>, String> {
    if let Some(iccid) = iccid
        && let Some(sim) = load(kv, &format!("iccid/{iccid}"))?
    {
        return Ok(Some(sim.number));
    }
    let Some(port) = port else {
        return Ok(None);
    };
    if device.is_some() {
        return Ok(load(kv, &sim_key(device, port))?.map(|sim| sim.number));
    }
    let suffix = format!("/{port}");
    let mut numbers = Vec::new();
    for key in kv.keys("sim/")? {
        if key.ends_with(&suffix)
            && let Some(sim) = load(kv, &key)?
        {
            numbers.push(sim.number);
        }
    }
    numbers.sort_unstable();
    numbers.dedup();
    Ok(match &numbers[..] {
        [number] => Some(number.clone()),
        // None known, or several devices disagree: better blank than wrong.
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use simrelay_sdk::MemoryStore;

    fn status(device: Option<&str>, port: Option<&str>, number: Option<&str>) -> SimStatus {
        SimStatus {
            device: device.map(str::to_owned),
            port: port.map(str::to_owned),
            number: number.map(str::to_owned),
            iccid: None,
            imsi: None,
            state: SimState::Registered,
            detail: None,
            active: None,
            operator: None,
            signal: None,
            balance: None,
            slot_active: None,
        }
    }

    #[test]
    fn canonical_ports() {
        for (port, canonical) in [
            ("1.01", "1.01"),
            ("1.1", "1.01"),
            ("1A", "1.01"),
            ("32d", "32.04"),
            ("2B", "2.02"),
            ("12.sp256.101", "12.sp256.101"),
            ("7", "7"),
            ("B", "B"),
            ("", ""),
            ("1.001", "1.001"),
            ("ж", "ж"),
        ] {
            assert_eq!(canonical_port(port), canonical, "{port}");
        }
    }

    #[test]
    fn resolves_by_iccid_then_device_and_port() {
        let kv = MemoryStore::default();
        let mut with_iccid = status(Some("m1"), Some("1.01"), Some("+7900"));
        with_iccid.iccid = Some("8970".into());
        record(&kv, &with_iccid).unwrap();
        record(&kv, &status(Some("m1"), Some("1.02"), Some("+7901"))).unwrap();
        let resolve = |device, port, iccid| resolve_number(&kv, device, port, iccid).unwrap();
        assert_eq!(resolve(None, None, Some("8970")).as_deref(), Some("+7900"));
        assert_eq!(
            resolve(Some("m1"), Some("1.02"), None).as_deref(),
            Some("+7901")
        );
        assert_eq!(resolve(None, Some("1.02"), None).as_deref(), Some("+7901"));
        assert_eq!(resolve(Some("m2"), Some("1.02"), None), None);
        assert_eq!(resolve(None, Some("1.03"), None), None);
        assert_eq!(resolve(None, None, None), None);
    }

    #[test]
    fn devices_that_disagree_resolve_nothing() {
        let kv = MemoryStore::default();
        record(&kv, &status(Some("m1"), Some("1.01"), Some("+7900"))).unwrap();
        record(&kv, &status(Some("m2"), Some("1.01"), Some("+7999"))).unwrap();
        assert_eq!(resolve_number(&kv, None, Some("1.01"), None).unwrap(), None);
        record(&kv, &status(Some("m2"), Some("1.01"), Some("+7900"))).unwrap();
        assert_eq!(
            resolve_number(&kv, None, Some("1.01"), None)
                .unwrap()
                .as_deref(),
            Some("+7900")
        );
    }

    #[test]
    fn a_port_without_a_number_is_forgotten() {
        let kv = MemoryStore::default();
        record(&kv, &status(None, Some("1.01"), Some("+7900"))).unwrap();
        assert!(
            resolve_number(&kv, None, Some("1.01"), None)
                .unwrap()
                .is_some()
        );
        let mut removed = status(None, Some("1.01"), Some("+7900"));
        removed.state = SimState::NoSim;
        record(&kv, &removed).unwrap();
        assert_eq!(resolve_number(&kv, None, Some("1.01"), None).unwrap(), None);
        record(&kv, &status(None, Some("1.01"), Some("+7900"))).unwrap();
        record(&kv, &status(None, Some("1.01"), None)).unwrap();
        assert_eq!(resolve_number(&kv, None, Some("1.01"), None).unwrap(), None);
    }

    #[test]
    fn unreadable_records_are_ignored() {
        let kv = MemoryStore::default();
        kv.set("sim/-/1.01", b"not json").unwrap();
        assert_eq!(resolve_number(&kv, None, Some("1.01"), None).unwrap(), None);
    }
}
