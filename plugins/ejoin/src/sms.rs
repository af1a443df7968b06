//! `recv-sms` rows: `[flag, port, timestamp, sender, recipient, content]`, optionally followed
//! by ICCID and IMSI. Flag 0 (or null) is an SMS whose content is base64 of UTF-8 text, flag 1
//! a delivery report whose sender is the SMSC, whose recipient is the number the reported SMS
//! went to, and whose content is plain `"code scts"`.
//!
//! Parsing only: what the rows mean for state (re-sends, long SMS, SIM numbers) is decided in
//! the modules that own that state.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use simrelay_sdk::Fingerprint;
use simrelay_sdk::encoding::base64_lenient;
use simrelay_sdk::lenient;
use simrelay_sdk::time::{parse_timestamp, unix_time_ms};
use simrelay_sdk::{DeliveryState, DeliveryStatus, MessageKind, ReceivedMessage};

use crate::sims::canonical_port;

/// Header names firmware writes into the text; one of them must appear before a leading
/// `Key: value` block is taken for headers rather than for the message itself.
const KNOWN_HEADERS: [&str; 4] = ["Sender", "Receiver", "SMSC", "SCTS"];

/// One row of a push, as far as it could be read.
#[derive(Debug, Clone)]
pub(crate) enum Row {
    Sms(SmsRow),
    DeliveryReport(DeliveryStatus),
}

/// An SMS row: a whole short message, or one part of a long one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct SmsRow {
    /// Stable over re-sent pushes; see [`row_id`].
    pub id: String,
    pub device: Option<String>,
    pub port: Option<String>,
    pub received_at_ms: Option<u64>,
    pub sender: String,
    /// As the gateway sent it; empty when it did not say.
    pub recipient: String,
    pub text: String,
    pub iccid: Option<String>,
    pub imsi: Option<String>,
}

impl SmsRow {
    pub(crate) fn into_message(self) -> ReceivedMessage {
        ReceivedMessage {
            id: self.id,
            sender: self.sender,
            recipient: self.recipient,
            text: self.text,
            kind: MessageKind::Sms,
            received_at_ms: self.received_at_ms,
            device: self.device,
            port: self.port,
            iccid: self.iccid,
            imsi: self.imsi,
            code: None,
        }
    }
}

/// The rows of a push, each read or explained, in order.
pub(crate) fn parse_push(body: &Value) -> Result<Vec<Result<Row, String>>, String> {
    parse_rows(body.get("sms"), body.get("mac"))
}

/// [`parse_push`] of a body that is a `recv-sms` push, the one that comes with every SMS, read
/// without building a JSON map for its envelope: building and dropping that B-tree was about
/// a tenth of an Ejoin call in wasm. `None` for any other body, duplicate members included,
/// which the caller reads as a `Value`.
pub(crate) fn parse_recv_sms(body: &[u8]) -> Option<Result<Vec<Result<Row, String>>, String>> {
    #[derive(Deserialize)]
    struct Envelope<'a> {
        #[serde(rename = "type", borrow)]
        kind: Option<&'a str>,
        sms: Option<Value>,
        mac: Option<Value>,
    }
    // A list would fill a struct's fields in order; only an object is a push.
    if body.trim_ascii_start().first() != Some(&b'{') {
        return None;
    }
    let envelope: Envelope = serde_json::from_slice(body).ok()?;
    (envelope.kind == Some("recv-sms"))
        .then(|| parse_rows(envelope.sms.as_ref(), envelope.mac.as_ref()))
}

fn parse_rows(
    sms: Option<&Value>,
    mac: Option<&Value>,
) -> Result<Vec<Result<Row, String>>, String> {
    let rows = sms
        .and_then(Value::as_array)
        .ok_or("recv-sms: `sms` is not a list")?;
    let device = mac.and_then(lenient::text);
    Ok(rows
        .iter()
        .enumerate()
        .map(|(index, row)| {
            parse_row(row, device.as_deref()).map_err(|problem| format!("row {index}: {problem}"))
        })
        .collect())
}

fn parse_row(row: &Value, device: Option<&str>) -> Result<Row, String> {
    let cells = row
        .as_array()
        .filter(|cells| cells.len() >= 6)
        .ok_or("not a list of at least 6 fields")?;
    let id = row_id(device, cells);
    match flag(&cells[0])? {
        0 => {}
        1 => return delivery_report(id, cells).map(Row::DeliveryReport),
        other => return Err(format!("unknown flag {other}")),
    }
    let encoded = cells[5].as_str().ok_or("text is not a string")?;
    let decoded = base64_lenient(encoded).ok_or("text is not valid base64")?;
    let decoded = String::from_utf8(decoded)
        .unwrap_or_else(|invalid| String::from_utf8_lossy(invalid.as_bytes()).into_owned());
    let (headers, text) = split_header_block(&decoded);
    let header = |name: &str| {
        headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.to_string())
            .filter(|value| !value.is_empty())
    };
    let sender = lenient::text(&cells[3])
        .or_else(|| header("Sender"))
        .unwrap_or_default();
    let recipient = lenient::text(&cells[4])
        .or_else(|| header("Receiver"))
        .unwrap_or_default();
    // Without a header block the text is all of it: keep it rather than copy it.
    let text = if headers.is_empty() {
        decoded
    } else {
        text.to_owned()
    };
    Ok(Row::Sms(SmsRow {
        id,
        device: device.map(str::to_owned),
        port: lenient::text(&cells[1]).map(|port| canonical_port(&port)),
        received_at_ms: received_at_ms(&cells[2]),
        sender,
        recipient,
        text,
        iccid: cells.get(6).and_then(lenient::text),
        imsi: cells.get(7).and_then(lenient::text),
    }))
}

/// `"code scts"`: the GSM TP-Status code of the report, then the service centre's time stamp.
fn delivery_report(id: String, cells: &[Value]) -> Result<DeliveryStatus, String> {
    let content = lenient::text(&cells[5]).ok_or("delivery report without content")?;
    let code = lenient::leading_number(&Value::String(content.clone()))
        .ok_or_else(|| format!("delivery report {content:?} does not start with a code"))?;
    Ok(DeliveryStatus {
        id,
        state: report_state(code),
        detail: Some(content),
        recipient: lenient::text(&cells[4]),
    })
}

/// GSM 03.40 TP-Status: 0–31 the transaction completed (0 received, 1 forwarded unconfirmed,
/// 2 replaced), 32–63 the service centre is still trying, 64 and up it gave up.
fn report_state(code: u64) -> DeliveryState {
    match code {
        0..=31 => DeliveryState::Delivered,
        32..=63 => DeliveryState::Sent,
        _ => DeliveryState::Failed,
    }
}

/// Firmware sends the flag as a number, a string or null; null and empty mean a plain SMS.
fn flag(value: &Value) -> Result<u64, String> {
    let flag = match value {
        Value::Null => Some(0),
        Value::Number(number) => number.as_u64(),
        Value::String(text) if text.trim().is_empty() => Some(0),
        Value::String(text) => text.trim().parse().ok(),
        _ => None,
    };
    flag.ok_or_else(|| format!("flag {value} is not a number"))
}

/// Splits `Sender: …\r\nReceiver: …\r\n\r\n<text>` into headers and text; text without such
/// a block comes back whole.
fn split_header_block(decoded: &str) -> (Vec<(&str, &str)>, &str) {
    // Most texts are one line: skip the substring searches.
    if !decoded.contains('\n') {
        return (Vec::new(), decoded);
    }
    let blank_line = ["\r\n\r\n", "\n\n"]
        .iter()
        .filter_map(|separator| Some((decoded.find(separator)?, separator.len())))
        .min();
    let Some((at, separator_len)) = blank_line else {
        return (Vec::new(), decoded);
    };
    let headers: Option<Vec<_>> = decoded[..at].lines().map(header_line).collect();
    match headers {
        Some(headers)
            if headers.iter().any(|(key, _)| {
                KNOWN_HEADERS
                    .iter()
                    .any(|known| key.eq_ignore_ascii_case(known))
            }) =>
        {
            (headers, &decoded[at + separator_len..])
        }
        _ => (Vec::new(), decoded),
    }
}

fn header_line(line: &str) -> Option<(&str, &str)> {
    let (key, value) = line.split_once(':')?;
    let key = key.trim();
    let is_key = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    is_key.then(|| (key, value.trim()))
}

/// Devices send Unix seconds, the provider's sample a date string (read as UTC: the gateway
/// does not say its zone); a timestamp that cannot be read is dropped rather than the message.
fn received_at_ms(value: &Value) -> Option<u64> {
    match value {
        Value::Number(number) => unix_time_ms(number.as_u64()?),
        Value::String(text) => parse_timestamp(text),
        _ => None,
    }
}

/// Stable for a re-sent push: a hash of the fields as the gateway sent them (the flag aside,
/// which says nothing about which SMS this is). Two identical SMS at different times differ
/// in their timestamps.
fn row_id(device: Option<&str>, cells: &[Value]) -> String {
    let fingerprint = cells[1..6].iter().fold(
        Fingerprint::default().field(device.unwrap_or_default().as_bytes()),
        Fingerprint::json_field,
    );
    fingerprint.hex_after("ejoin-")
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::json;
    use simrelay_sdk::encoding::base64_encode;

    pub(crate) fn b64(text: &str) -> String {
        base64_encode(text)
    }

    #[test]
    fn row_ids_are_the_fingerprint_of_the_cells_as_json_text() {
        // Ids are stored as de-duplication marks: they must not change across versions.
        let cells = json!([0, "1.01", 1_700_000_000, "Bank \"A\"", null, "SGk="]);
        let cells = cells.as_array().unwrap();
        let fields: Vec<String> = std::iter::once("dev".to_string())
            .chain(cells[1..6].iter().map(Value::to_string))
            .collect();
        assert_eq!(
            row_id(Some("dev"), cells),
            format!("ejoin-{}", simrelay_sdk::dedupe::fingerprint(&fields))
        );
    }

    fn rows(body: Value) -> (Vec<Row>, Vec<String>) {
        let mut rows = Vec::new();
        let mut problems = Vec::new();
        for row in parse_push(&body).expect("push parses") {
            match row {
                Ok(row) => rows.push(row),
                Err(problem) => problems.push(problem),
            }
        }
        (rows, problems)
    }

    fn one_sms(row: Value) -> SmsRow {
        let (mut rows, problems) = rows(json!({ "type": "recv-sms", "sms": [row] }));
        assert!(problems.is_empty(), "{problems:?}");
        match rows.remove(0) {
            Row::Sms(sms) => sms,
            other => panic!("an SMS expected, not {other:?}"),
        }
    }

    #[test]
    fn provider_sample_rows() {
        let sms = one_sms(json!([
            null,
            null,
            "2023-10-27 10:00:00",
            "BankInfo",
            "79001234567",
            "SGVsbG8gV29ybGQ="
        ]));
        assert_eq!(sms.text, "Hello World");
        assert_eq!(sms.sender, "BankInfo");
        assert_eq!(sms.recipient, "79001234567");
        assert_eq!(sms.received_at_ms, Some(1_698_400_800_000));
        assert_eq!((sms.port, sms.device), (None, None));
        assert_eq!((sms.iccid, sms.imsi), (None, None));
        assert!(sms.id.starts_with("ejoin-") && sms.id.len() == 22);

        // "Error while handle sms": string flag and port.
        let sms = one_sms(json!([
            "0",
            "1",
            "2026-02-05 10:00:00",
            "SenderID",
            "79990000000",
            "SGVsbG8gV29ybGQ="
        ]));
        assert_eq!(sms.text, "Hello World");
        assert_eq!(sms.port.as_deref(), Some("1"));
        assert_eq!(sms.received_at_ms, Some(1_770_285_600_000));
    }

    #[test]
    fn device_row_with_unix_time_port_and_sim_ids() {
        let (rows, problems) = rows(json!({
            "type": "recv-sms",
            "mac": "00:1A:2B:3C:4D:5E",
            "sms": [[0, "12.sp256.101", 1_700_000_000, "+79001112233", "", "SGVsbG8",
                     "8970100000000000001", "250010000000001"]]
        }));
        assert!(problems.is_empty(), "{problems:?}");
        let Row::Sms(sms) = &rows[0] else {
            panic!("an SMS expected")
        };
        assert_eq!(sms.text, "Hello");
        assert_eq!(sms.received_at_ms, Some(1_700_000_000_000));
        assert_eq!(sms.port.as_deref(), Some("12.sp256.101"));
        assert_eq!(sms.device.as_deref(), Some("00:1A:2B:3C:4D:5E"));
        assert_eq!(sms.recipient, "");
        assert_eq!(sms.iccid.as_deref(), Some("8970100000000000001"));
        assert_eq!(sms.imsi.as_deref(), Some("250010000000001"));
    }

    #[test]
    fn ports_in_every_form() {
        for (port, canonical) in [
            (json!("1.01"), "1.01"),
            (json!("1B"), "1.02"),
            (json!("12.sp256.101"), "12.sp256.101"),
            (json!(3), "3"),
            (json!(null), ""),
        ] {
            let sms = one_sms(json!([0, port, 1, "s", "r", b64("x")]));
            assert_eq!(sms.port.unwrap_or_default(), canonical);
        }
    }

    #[test]
    fn string_flag_and_timestamps_in_every_unit() {
        let sms = one_sms(json!(["0", "1B", "1700000000", "a", "b", b64("x")]));
        assert_eq!(sms.received_at_ms, Some(1_700_000_000_000));
        let sms = one_sms(json!(["", "1B", 1_700_000_000_123_u64, "a", "b", b64("x")]));
        assert_eq!(sms.received_at_ms, Some(1_700_000_000_123));
        let sms = one_sms(json!([0, "1.01", "yesterday", "a", "b", b64("code 1234")]));
        assert_eq!(sms.received_at_ms, None, "an unreadable time keeps the SMS");
        assert_eq!(sms.text, "code 1234");
    }

    #[test]
    fn header_block_is_split_off() {
        let decoded = "Sender: +79001112233\r\nReceiver: +79990001122\r\nSMSC: +79168999100\r\n\
                       SCTS: 231027100000\r\n\r\nYour code: 5015\r\n\r\nDo not share it";
        let sms = one_sms(json!([0, "1.01", 1, "", "", b64(decoded)]));
        assert_eq!(sms.text, "Your code: 5015\r\n\r\nDo not share it");
        assert_eq!(sms.sender, "+79001112233", "taken from the header block");
        assert_eq!(sms.recipient, "+79990001122");
        // The row's own sender and recipient win over the header block's.
        let sms = one_sms(json!([0, "1.01", 1, "Bank", "7999", b64(decoded)]));
        assert_eq!(
            (sms.sender.as_str(), sms.recipient.as_str()),
            ("Bank", "7999")
        );
        let sms = one_sms(json!([0, "1", 1, "s", "r", b64("Sender: x\n\nhi")]));
        assert_eq!(sms.text, "hi");
    }

    #[test]
    fn text_without_a_header_block_is_kept_whole() {
        for text in [
            "Code: 1234\n\nDo not share it",
            "Hello\n\nWorld",
            "\r\n\r\nlate",
        ] {
            assert_eq!(one_sms(json!([0, "1", 1, "s", "r", b64(text)])).text, text);
        }
    }

    #[test]
    fn base64_is_read_leniently() {
        let sms = one_sms(json!([0, "1", 1, "s", "r", "SGVs\r\nbG8gV29y bGQ"]));
        assert_eq!(sms.text, "Hello World");
        let sms = one_sms(json!([0, "1", 1, "s", "r", b64("Привет")]));
        assert_eq!(sms.text, "Привет");
        let sms = one_sms(json!([0, "1", 1, "s", "r", "/w=="]));
        assert_eq!(sms.text, "\u{fffd}");
    }

    #[test]
    fn delivery_reports_are_statuses() {
        let (rows, problems) = rows(json!({
            "type": "recv-sms",
            "sms": [[1, "1.01", 1_700_000_000, "+79168999100", "79001234567", "0 231027100000"],
                    ["1", "1.02", 1_700_000_000, "", "79001234568", "70 231027100000"],
                    [1, "1.03", 1_700_000_000, "", "79001234569", "32"],
                    [1, "1.03", 1_700_000_000, "", "79001234569", "delivered"]]
        }));
        assert_eq!(
            problems,
            ["row 3: delivery report \"delivered\" does not start with a code"]
        );
        let states: Vec<_> = rows
            .iter()
            .map(|row| match row {
                Row::DeliveryReport(status) => {
                    (status.state, status.recipient.clone().unwrap_or_default())
                }
                Row::Sms(_) => panic!("reports are not messages"),
            })
            .collect();
        assert_eq!(
            states,
            [
                (DeliveryState::Delivered, "79001234567".to_owned()),
                (DeliveryState::Failed, "79001234568".to_owned()),
                (DeliveryState::Sent, "79001234569".to_owned()),
            ]
        );
        let Row::DeliveryReport(first) = &rows[0] else {
            unreachable!()
        };
        assert_eq!(first.detail.as_deref(), Some("0 231027100000"));
        assert!(first.id.starts_with("ejoin-"));
    }

    #[test]
    fn bad_rows_are_explained() {
        let (rows, problems) = rows(json!({
            "type": "recv-sms",
            "sms": [
                [0, "1", 1, "s", "r", "not base64!"],
                [0, "1", 1, "s", "r", b64("fine")],
                [0, "1", 1, "s", "r"],
                "row",
                [7, "1", 1, "s", "r", b64("x")],
                ["x", "1", 1, "s", "r", b64("x")],
                [0, "1", 1, "s", "r", 5],
                [1, "1", 1, "s", "r", null],
            ]
        }));
        assert_eq!(rows.len(), 1);
        assert_eq!(
            problems,
            [
                "row 0: text is not valid base64",
                "row 2: not a list of at least 6 fields",
                "row 3: not a list of at least 6 fields",
                "row 4: unknown flag 7",
                "row 5: flag \"x\" is not a number",
                "row 6: text is not a string",
                "row 7: delivery report without content",
            ]
        );
    }

    /// The envelope read without a `Value` reads the rows as [`parse_push`] does, and leaves
    /// every other body to it.
    #[test]
    fn recv_sms_envelopes_read_as_values_do() {
        let row = json!([0, "1.01", 1_700_000_000, "s", "r", b64("hi")]);
        let pushes = [
            json!({ "type": "recv-sms", "sms": [row.clone(), [1, "1.01", 1, "", "r", "0 ok"]] }),
            json!({ "sms": [row.clone(), "not a row"], "mac": "aa:bb", "type": "recv-sms", "x": {} }),
            json!({ "type": "recv-sms", "sms": {}, "mac": 7 }),
            json!({ "type": "recv-sms", "sms": null }),
        ];
        for push in pushes {
            let text = push.to_string();
            let fast = parse_recv_sms(text.as_bytes()).expect("a recv-sms push");
            assert_eq!(
                format!("{fast:?}"),
                format!("{:?}", parse_push(&push)),
                "{text}"
            );
        }
        for other in [
            r#"{"type":"dev-status","sms":[]}"#,
            r#"{"type":"recv-sms","type":"port-status"}"#,
            r#"{"type":"recv\u002dsms","sms":[]}"#,
            r#"["recv-sms",[]]"#,
            r#"{"type":"recv-sms","sms":[]"#,
            "",
        ] {
            assert!(parse_recv_sms(other.as_bytes()).is_none(), "{other}");
        }
    }

    #[test]
    fn sms_must_be_a_list() {
        for body in [json!({ "type": "recv-sms" }), json!({ "sms": {} })] {
            assert_eq!(
                parse_push(&body).err().as_deref(),
                Some("recv-sms: `sms` is not a list")
            );
        }
    }

    #[test]
    fn id_is_stable_and_distinguishes_messages() {
        let row = json!([0, "1.01", 1_700_000_000, "s", "r", b64("code 1")]);
        let id = one_sms(row.clone()).id;
        assert_eq!(one_sms(row).id, id);
        let other_text = json!([0, "1.01", 1_700_000_000, "s", "r", b64("code 2")]);
        let other_port = json!([0, "1.02", 1_700_000_000, "s", "r", b64("code 1")]);
        let other_time = json!([0, "1.01", 1_700_000_060, "s", "r", b64("code 1")]);
        let shifted = json!([0, "1.01", 1_700_000_000, "sr", "", b64("code 1")]);
        for row in [other_text, other_port, other_time, shifted] {
            assert_ne!(one_sms(row).id, id);
        }
    }
}
