//! `dev-status` and `port-status` pushes: the state of the gateway's SIM ports.

use serde_json::Value;
use simrelay_sdk::{Event, SimState, SimStatus};

use crate::{Push, fields};

/// `dev-status`: the device's `mac` and a `status` list with one entry per port.
pub(crate) fn dev_status(body: &Value) -> Result<Push, String> {
    let entries = body
        .get("status")
        .and_then(Value::as_array)
        .ok_or("dev-status: `status` is not a list")?;
    Ok(statuses(body, entries))
}

/// `port-status`: one port, as the `status` object or as the body itself.
pub(crate) fn port_status(body: &Value) -> Result<Push, String> {
    match body.get("status") {
        Some(entry @ Value::Object(_)) => Ok(statuses(body, std::slice::from_ref(entry))),
        Some(Value::Array(entries)) => Ok(statuses(body, entries)),
        None | Some(Value::Null) if body.get("port").is_some() || body.get("st").is_some() => {
            Ok(statuses(body, std::slice::from_ref(body)))
        }
        _ => Err("port-status: no port object, neither in `status` nor at the top level".into()),
    }
}

fn statuses(body: &Value, entries: &[Value]) -> Push {
    let device = body.get("mac").and_then(fields::text);
    let mut push = Push::default();
    for (index, entry) in entries.iter().enumerate() {
        if entry.is_object() {
            push.events
                .push(Event::SimStatusChanged(sim_status(entry, device.clone())));
        } else {
            push.problems.push(format!("status {index}: not an object"));
        }
    }
    push
}

fn sim_status(entry: &Value, device: Option<String>) -> SimStatus {
    let field = |name: &str| entry.get(name).and_then(fields::text);
    let st = entry.get("st").unwrap_or(&Value::Null);
    SimStatus {
        device: device.or_else(|| field("mac")),
        port: field("port"),
        number: field("sn"),
        iccid: field("iccid"),
        imsi: field("imsi"),
        state: fields::code(st).map_or(SimState::Unknown, state),
        detail: st.as_str().and_then(|_| fields::text(st)),
        active: entry.get("active").and_then(boolean),
        operator: field("opr"),
        signal: entry.get("sig").and_then(signal),
        balance: field("bal"),
        slot_active: entry.get("slot_active").and_then(boolean),
    }
}

/// The gateway's SIM state codes.
fn state(code: u64) -> SimState {
    match code {
        0 => SimState::NoSim,
        1 => SimState::Idle,
        2 => SimState::Registering,
        3 => SimState::Registered,
        4 => SimState::CallConnected,
        5 => SimState::NoBalance,
        6 => SimState::RegistrationFailed,
        7 => SimState::LockedByDevice,
        8 => SimState::LockedByOperator,
        9 => SimState::SimError,
        11 => SimState::CardDetected,
        12 => SimState::UserLocked,
        15 => SimState::AccessingNetwork,
        16 => SimState::ModuleTimeout,
        _ => SimState::Unknown,
    }
}

/// `true`/`false`, `1`/`0`, or those as strings.
fn boolean(value: &Value) -> Option<bool> {
    match value {
        Value::Bool(flag) => Some(*flag),
        _ => match fields::text(value)?.as_str() {
            "1" | "true" => Some(true),
            "0" | "false" => Some(false),
            _ => None,
        },
    }
}

fn signal(value: &Value) -> Option<i32> {
    fields::text(value)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn statuses_of(push: Push) -> Vec<SimStatus> {
        assert!(push.problems.is_empty(), "{:?}", push.problems);
        push.events
            .into_iter()
            .map(|event| match event {
                Event::SimStatusChanged(status) => status,
                _ => panic!("status pushes emit only SIM statuses"),
            })
            .collect()
    }

    #[test]
    fn provider_sample() {
        let body = json!({
            "type": "dev-status",
            "mac": "00:1A:2B:3C:4D:5E",
            "status": [{ "sn": "+79001234567", "iccid": "8970100000000000001",
                         "imsi": "250010000000001", "st": 1, "active": true }]
        });
        let status = statuses_of(dev_status(&body).unwrap()).remove(0);
        assert_eq!(status.device.as_deref(), Some("00:1A:2B:3C:4D:5E"));
        assert_eq!(status.number.as_deref(), Some("+79001234567"));
        assert_eq!(status.iccid.as_deref(), Some("8970100000000000001"));
        assert_eq!(status.imsi.as_deref(), Some("250010000000001"));
        assert_eq!(status.state, SimState::Idle);
        assert_eq!(status.detail, None);
        assert_eq!(status.active, Some(true));
        assert_eq!(status.port, None);
        assert_eq!(
            (status.operator, status.signal, status.balance),
            (None, None, None)
        );
    }

    #[test]
    fn device_fields() {
        let body = json!({
            "type": "dev-status",
            "mac": "00:1A:2B:3C:4D:5E",
            "status": [
                { "port": "1.01", "sn": "", "st": "3 registered", "active": 1, "opr": "MTS",
                  "sig": 23, "bal": 150.5, "slot_active": 1 },
                { "port": 2, "st": "16", "active": "0", "sig": "-71", "bal": "12.00 RUB" },
                { "port": "3.01", "st": 10 }
            ]
        });
        let statuses = statuses_of(dev_status(&body).unwrap());
        assert_eq!(statuses.len(), 3);
        let first = &statuses[0];
        assert_eq!(first.port.as_deref(), Some("1.01"));
        assert_eq!(first.number, None);
        assert_eq!(first.state, SimState::Registered);
        assert_eq!(first.detail.as_deref(), Some("3 registered"));
        assert_eq!(first.active, Some(true));
        assert_eq!(first.operator.as_deref(), Some("MTS"));
        assert_eq!(first.signal, Some(23));
        assert_eq!(first.balance.as_deref(), Some("150.5"));
        let second = &statuses[1];
        assert_eq!(second.port.as_deref(), Some("2"));
        assert_eq!(second.state, SimState::ModuleTimeout);
        assert_eq!(second.detail.as_deref(), Some("16"));
        assert_eq!(second.active, Some(false));
        assert_eq!(second.signal, Some(-71));
        assert_eq!(second.balance.as_deref(), Some("12.00 RUB"));
        assert_eq!(statuses[2].state, SimState::Unknown);
    }

    #[test]
    fn state_codes() {
        let expected = [
            (0, SimState::NoSim),
            (1, SimState::Idle),
            (2, SimState::Registering),
            (3, SimState::Registered),
            (4, SimState::CallConnected),
            (5, SimState::NoBalance),
            (6, SimState::RegistrationFailed),
            (7, SimState::LockedByDevice),
            (8, SimState::LockedByOperator),
            (9, SimState::SimError),
            (10, SimState::Unknown),
            (11, SimState::CardDetected),
            (12, SimState::UserLocked),
            (13, SimState::Unknown),
            (15, SimState::AccessingNetwork),
            (16, SimState::ModuleTimeout),
            (17, SimState::Unknown),
        ];
        for (code, state_) in expected {
            assert_eq!(state(code), state_, "code {code}");
        }
        let status = sim_status(&json!({ "st": "registered" }), None);
        assert_eq!(status.state, SimState::Unknown);
        assert_eq!(status.detail.as_deref(), Some("registered"));
        assert_eq!(sim_status(&json!({}), None).state, SimState::Unknown);
    }

    #[test]
    fn port_status_shapes() {
        let nested = json!({ "type": "port-status", "mac": "m",
                             "status": { "port": "4.01", "st": "3 registered" } });
        let top_level = json!({ "type": "port-status", "mac": "m", "port": "4.01", "st": 3 });
        for body in [nested, top_level] {
            let statuses = statuses_of(port_status(&body).unwrap());
            assert_eq!(statuses.len(), 1);
            assert_eq!(statuses[0].device.as_deref(), Some("m"));
            assert_eq!(statuses[0].port.as_deref(), Some("4.01"));
            assert_eq!(statuses[0].state, SimState::Registered);
        }
        for body in [
            json!({ "type": "port-status" }),
            json!({ "status": "x", "port": "1" }),
        ] {
            assert!(port_status(&body).is_err());
        }
    }

    #[test]
    fn bad_shapes() {
        assert_eq!(
            dev_status(&json!({ "status": {} })).err().as_deref(),
            Some("dev-status: `status` is not a list")
        );
        let push = dev_status(&json!({ "status": [{ "st": 1 }, 5] })).unwrap();
        assert_eq!(push.events.len(), 1);
        assert_eq!(push.problems, ["status 1: not an object"]);
    }
}
