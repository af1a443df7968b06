//! `dev-status` and `port-status` pushes (the state of the gateway's SIM ports) and
//! `status-report` pushes (what became of SMS sent through the gateway).

use serde_json::Value;
use simrelay_sdk::lenient::{self, field};
use simrelay_sdk::{DeliveryState, DeliveryStatus, Event, SimState, SimStatus};

use crate::Push;
use crate::sims::canonical_port;

/// `dev-status`: the device's `mac` and a `status` list with one entry per port.
pub(crate) fn dev_status(body: &Value) -> Result<Push, String> {
    let entries = body
        .get("status")
        .and_then(Value::as_array)
        .ok_or("dev-status: `status` is not a list")?;
    Ok(statuses(body, entries))
}

/// `port-status`: one port, as the `status` object, or at the top level with the state in
/// `st` or in `status` (`"3 OK"`), as the gateway's own specification shows it.
pub(crate) fn port_status(body: &Value) -> Result<Push, String> {
    match body.get("status") {
        Some(entry @ Value::Object(_)) => Ok(statuses(body, std::slice::from_ref(entry))),
        Some(Value::Array(entries)) => Ok(statuses(body, entries)),
        Some(Value::String(_) | Value::Number(_)) => Ok(statuses(body, std::slice::from_ref(body))),
        None | Some(Value::Null) if body.get("port").is_some() || body.get("st").is_some() => {
            Ok(statuses(body, std::slice::from_ref(body)))
        }
        _ => Err("port-status: no port object, neither in `status` nor at the top level".into()),
    }
}

fn statuses(body: &Value, entries: &[Value]) -> Push {
    let device = field(body, "mac");
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
    let st = entry
        .get("st")
        .or_else(|| entry.get("status").filter(|status| !status.is_object()))
        .unwrap_or(&Value::Null);
    SimStatus {
        device: device.or_else(|| field(entry, "mac")),
        port: field(entry, "port").map(|port| canonical_port(&port)),
        number: field(entry, "sn"),
        iccid: field(entry, "iccid"),
        imsi: field(entry, "imsi"),
        state: lenient::leading_number(st).map_or(SimState::Unknown, state),
        detail: st.as_str().and_then(|_| lenient::text(st)),
        active: entry.get("active").and_then(lenient::boolean),
        operator: field(entry, "opr"),
        signal: entry
            .get("sig")
            .and_then(lenient::integer)
            .and_then(|signal| i32::try_from(signal).ok()),
        balance: field(entry, "bal"),
        slot_active: entry.get("slot_active").and_then(lenient::boolean),
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

/// `status-report`: `rpts`, one report per send task (`tid`), with counters and, when the task
/// asked for them, `sdr` records of numbers sent to (`[index, number, port, time]`) and `fdr`
/// records of numbers that failed (`[index, number, port, time, reason, carrier reason]`).
/// Each record becomes a delivery status with the task id as its id; a report without
/// records becomes one status for the whole task, from its counters.
pub(crate) fn status_report(body: &Value) -> Result<Push, String> {
    let reports = body
        .get("rpts")
        .and_then(Value::as_array)
        .ok_or("status-report: `rpts` is not a list")?;
    let mut push = Push::default();
    for (index, report) in reports.iter().enumerate() {
        let Some(task) = field(report, "tid") else {
            push.problems
                .push(format!("report {index}: no task id `tid`"));
            continue;
        };
        let mut records = 0;
        for (list, state) in [("sdr", DeliveryState::Sent), ("fdr", DeliveryState::Failed)] {
            for (position, record) in lenient::items(report.get(list).unwrap_or(&Value::Null))
                .into_iter()
                .enumerate()
            {
                match send_record(&task, record, state) {
                    Some(status) => push.events.push(Event::DeliveryStatusChanged(status)),
                    None => push.problems.push(format!(
                        "report {index}: {list} {position}: not a list with a number"
                    )),
                }
                records += 1;
            }
        }
        if records == 0 {
            push.events
                .push(Event::DeliveryStatusChanged(task_totals(&task, report)));
        }
    }
    Ok(push)
}

fn send_record(task: &str, record: &Value, state: DeliveryState) -> Option<DeliveryStatus> {
    let cells = record.as_array()?;
    let cell = |index: usize| cells.get(index).and_then(lenient::text);
    let recipient = cell(1)?;
    let port = cell(2).map(|port| canonical_port(&port));
    let detail = match state {
        DeliveryState::Failed => [cell(4), cell(5)]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join("; "),
        _ => String::from("sent"),
    };
    let detail = match port {
        Some(port) if !detail.is_empty() => format!("{detail} (port {port})"),
        Some(port) => format!("port {port}"),
        None => detail,
    };
    Some(DeliveryStatus {
        id: task.to_owned(),
        state,
        detail: Some(detail).filter(|detail| !detail.is_empty()),
        recipient: Some(recipient),
    })
}

fn task_totals(task: &str, report: &Value) -> DeliveryStatus {
    let count = |name: &str| report.get(name).and_then(lenient::leading_number);
    let [sending, sent, failed, unsent] =
        ["sending", "sent", "failed", "unsent"].map(|name| count(name).unwrap_or(0));
    let state = if sending + unsent > 0 {
        DeliveryState::Pending
    } else if failed > 0 && sent == 0 {
        DeliveryState::Failed
    } else if sent > 0 {
        DeliveryState::Sent
    } else {
        DeliveryState::Pending
    };
    DeliveryStatus {
        id: task.to_owned(),
        state,
        detail: Some(format!(
            "sending {sending}, sent {sent}, failed {failed}, unsent {unsent}"
        )),
        recipient: None,
    }
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

    fn deliveries_of(push: Push) -> Vec<DeliveryStatus> {
        push.events
            .into_iter()
            .map(|event| match event {
                Event::DeliveryStatusChanged(status) => status,
                _ => panic!("status reports emit only delivery statuses"),
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
            "seq": 1, "expires": 180, "ip": "192.168.1.67", "max-ports": 32, "max-slots": 4,
            "status": [
                { "port": "1.01", "sn": "", "st": "3 registered", "active": 1, "opr": "MTS",
                  "sig": 23, "bal": 150.5, "slot_active": 1 },
                { "port": 2, "st": "16", "active": "0", "sig": "-71", "bal": "12.00 RUB",
                  "slot_active": false },
                { "port": "3B", "st": 10, "sig": "strong" }
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
        assert_eq!(first.slot_active, Some(true));
        let second = &statuses[1];
        assert_eq!(second.port.as_deref(), Some("2"));
        assert_eq!(second.state, SimState::ModuleTimeout);
        assert_eq!(second.detail.as_deref(), Some("16"));
        assert_eq!(second.active, Some(false));
        assert_eq!(second.signal, Some(-71));
        assert_eq!(second.balance.as_deref(), Some("12.00 RUB"));
        assert_eq!(second.slot_active, Some(false));
        let third = &statuses[2];
        assert_eq!(third.port.as_deref(), Some("3.02"));
        assert_eq!((third.state, third.signal), (SimState::Unknown, None));
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
        // As the gateway's specification shows it: the state in `status`, the port as `4A`.
        let specification = json!({ "type": "port-status", "mac": "m", "port": "4A", "seq": 1,
                                    "status": "3 OK", "bal": "100.00",
                                    "opr": "46000 China Mobile", "sn": "139000",
                                    "imei": "860000", "imsi": "460000", "iccid": "8986" });
        for body in [nested, top_level, specification] {
            let statuses = statuses_of(port_status(&body).unwrap());
            assert_eq!(statuses.len(), 1);
            assert_eq!(statuses[0].device.as_deref(), Some("m"));
            assert_eq!(statuses[0].port.as_deref(), Some("4.01"));
            assert_eq!(statuses[0].state, SimState::Registered);
        }
        for body in [
            json!({ "type": "port-status" }),
            json!({ "status": true, "port": "1" }),
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

    #[test]
    fn status_report_records_become_delivery_statuses() {
        let body = json!({
            "type": "status-report", "rpt_num": 2,
            "rpts": [
                { "tid": 7, "sending": 0, "sent": 1, "failed": 1, "unsent": 0,
                  "sdr": [[0, "+79001112233", "1.01", 1_700_000_000]],
                  "fdr": [[1, "+79004445566", "1.02", 1_700_000_001, "6 Timeout", "21 Rejected"],
                          "junk"] },
                { "tid": "8", "sending": 1, "sent": 0, "failed": 0, "unsent": 2 }
            ]
        });
        let push = status_report(&body).unwrap();
        assert_eq!(push.problems, ["report 0: fdr 1: not a list with a number"]);
        let statuses = deliveries_of(push);
        assert_eq!(statuses.len(), 3);
        assert_eq!(statuses[0].id, "7");
        assert_eq!(statuses[0].state, DeliveryState::Sent);
        assert_eq!(statuses[0].recipient.as_deref(), Some("+79001112233"));
        assert_eq!(statuses[0].detail.as_deref(), Some("sent (port 1.01)"));
        assert_eq!(statuses[1].state, DeliveryState::Failed);
        assert_eq!(
            statuses[1].detail.as_deref(),
            Some("6 Timeout; 21 Rejected (port 1.02)")
        );
        assert_eq!(statuses[2].id, "8");
        assert_eq!(statuses[2].state, DeliveryState::Pending);
        assert_eq!(
            statuses[2].detail.as_deref(),
            Some("sending 1, sent 0, failed 0, unsent 2")
        );
    }

    #[test]
    fn status_report_totals() {
        let state = |report: Value| task_totals("1", &report).state;
        assert_eq!(state(json!({ "sent": 3 })), DeliveryState::Sent);
        assert_eq!(state(json!({ "failed": 1 })), DeliveryState::Failed);
        assert_eq!(
            state(json!({ "sent": 1, "failed": 1 })),
            DeliveryState::Sent
        );
        assert_eq!(state(json!({})), DeliveryState::Pending);
    }

    #[test]
    fn status_report_shapes() {
        assert_eq!(
            status_report(&json!({ "type": "status-report" }))
                .err()
                .as_deref(),
            Some("status-report: `rpts` is not a list")
        );
        let push = status_report(&json!({ "rpts": [5, {}] })).unwrap();
        assert_eq!(
            push.problems,
            ["report 0: no task id `tid`", "report 1: no task id `tid`"]
        );
    }
}
