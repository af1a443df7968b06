//! `recv-sms` pushes: rows of `[flag, port, timestamp, sender, recipient, base64 text]`,
//! optionally followed by ICCID and IMSI.

use base64::Engine as _;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use serde_json::Value;
use simrelay_sdk::{Event, MessageKind, ReceivedMessage};

use crate::{Push, fields, time};

/// Standard base64 that tolerates the missing or partial padding some firmware sends.
const LENIENT_BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true),
);

/// Header names firmware writes into the text; one of them must appear before a leading
/// `Key: value` block is taken for headers rather than for the message itself.
const KNOWN_HEADERS: [&str; 4] = ["Sender", "Receiver", "SMSC", "SCTS"];

/// Each SMS row becomes its own message. Parts of a long SMS arrive as separate rows and are
/// passed on as separate messages: nothing here reassembles them.
pub(crate) fn parse_push(body: &Value) -> Result<Push, String> {
    let rows = body
        .get("sms")
        .and_then(Value::as_array)
        .ok_or("recv-sms: `sms` is not a list")?;
    let device = body.get("mac").and_then(fields::text);
    let mut push = Push::default();
    for (index, row) in rows.iter().enumerate() {
        match parse_row(row, device.as_deref()) {
            Ok(Some(message)) => push.events.push(Event::MessageReceived(message)),
            Ok(None) => {}
            Err(problem) => push.problems.push(format!("row {index}: {problem}")),
        }
    }
    Ok(push)
}

/// The message a row carries, or `None` for a row that is handled by ignoring it.
fn parse_row(row: &Value, device: Option<&str>) -> Result<Option<ReceivedMessage>, String> {
    let cells = row
        .as_array()
        .filter(|cells| cells.len() >= 6)
        .ok_or("not a list of at least 6 fields")?;
    match flag(&cells[0])? {
        0 => {}
        // A delivery report for an SMS sent through the gateway; this plugin sends none yet.
        1 => return Ok(None),
        other => return Err(format!("unknown flag {other}")),
    }
    let encoded = cells[5].as_str().ok_or("text is not a string")?;
    let decoded = decode_base64(encoded).ok_or("text is not valid base64")?;
    let decoded = String::from_utf8_lossy(&decoded);
    let (headers, text) = split_header_block(&decoded);
    let header = |name: &str| {
        headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.to_string())
            .filter(|value| !value.is_empty())
    };
    Ok(Some(ReceivedMessage {
        id: message_id(device, cells),
        sender: fields::text(&cells[3])
            .or_else(|| header("Sender"))
            .unwrap_or_default(),
        recipient: fields::text(&cells[4])
            .or_else(|| header("Receiver"))
            .unwrap_or_default(),
        text: text.to_owned(),
        kind: MessageKind::Sms,
        received_at_ms: received_at_ms(&cells[2]),
        device: device.map(str::to_owned),
        port: fields::text(&cells[1]),
        iccid: cells.get(6).and_then(fields::text),
        imsi: cells.get(7).and_then(fields::text),
        code: None,
    }))
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

fn decode_base64(encoded: &str) -> Option<Vec<u8>> {
    let compact: String = encoded
        .chars()
        .filter(|c| !c.is_ascii_whitespace())
        .collect();
    LENIENT_BASE64.decode(compact).ok()
}

/// Splits `Sender: …\r\nReceiver: …\r\n\r\n<text>` into headers and text; text without such
/// a block comes back whole.
fn split_header_block(decoded: &str) -> (Vec<(&str, &str)>, &str) {
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

/// Devices send Unix seconds, the provider's sample a date string; a timestamp that cannot be
/// read is dropped rather than losing the message.
fn received_at_ms(value: &Value) -> Option<u64> {
    match value {
        Value::Number(number) => number.as_u64()?.checked_mul(1000),
        Value::String(text) => match text.trim().parse::<u64>() {
            Ok(seconds) => seconds.checked_mul(1000),
            Err(_) => time::parse_utc(text.trim()),
        },
        _ => None,
    }
}

/// Stable for a re-sent push: a hash of the fields as the gateway sent them (the flag aside,
/// which says nothing about which SMS this is).
fn message_id(device: Option<&str>, cells: &[Value]) -> String {
    let fields = [
        device.unwrap_or_default().to_owned(),
        cells[1].to_string(),
        cells[2].to_string(),
        cells[3].to_string(),
        cells[4].to_string(),
        cells[5].to_string(),
    ];
    format!("ejoin-{:016x}", fnv1a(&fields))
}

/// 64-bit FNV-1a over the fields, each followed by 0xff, a byte UTF-8 never contains, so
/// moving text from one field to the next changes the hash.
fn fnv1a(fields: &[String]) -> u64 {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    fields
        .iter()
        .flat_map(|field| field.bytes().chain([0xff]))
        .fold(OFFSET_BASIS, |hash, byte| {
            (hash ^ u64::from(byte)).wrapping_mul(PRIME)
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn messages(body: Value) -> (Vec<ReceivedMessage>, Vec<String>) {
        let push = parse_push(&body).expect("push parses");
        let messages = push
            .events
            .into_iter()
            .map(|event| match event {
                Event::MessageReceived(message) => message,
                _ => panic!("recv-sms emits only received messages"),
            })
            .collect();
        (messages, push.problems)
    }

    fn one_message(row: Value) -> ReceivedMessage {
        let (mut messages, problems) = messages(json!({ "type": "recv-sms", "sms": [row] }));
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(messages.len(), 1);
        messages.remove(0)
    }

    fn b64(text: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(text)
    }

    #[test]
    fn provider_sample_row() {
        let message = one_message(json!([
            null,
            null,
            "2023-10-27 10:00:00",
            "BankInfo",
            "79001234567",
            "SGVsbG8gV29ybGQ="
        ]));
        assert_eq!(message.text, "Hello World");
        assert_eq!(message.sender, "BankInfo");
        assert_eq!(message.recipient, "79001234567");
        assert_eq!(message.kind, MessageKind::Sms);
        assert_eq!(message.received_at_ms, Some(1_698_400_800_000));
        assert_eq!(message.port, None);
        assert_eq!(message.device, None);
        assert_eq!((message.iccid, message.imsi), (None, None));
        assert!(message.id.starts_with("ejoin-") && message.id.len() == 22);
    }

    #[test]
    fn device_row_with_unix_time_port_and_sim_ids() {
        let (messages, problems) = messages(json!({
            "type": "recv-sms",
            "mac": "00:1A:2B:3C:4D:5E",
            "sms": [[0, "12.sp256.101", 1_700_000_000, "+79001112233", "", "SGVsbG8",
                     "8970100000000000001", "250010000000001"]]
        }));
        assert!(problems.is_empty(), "{problems:?}");
        let message = &messages[0];
        assert_eq!(message.text, "Hello");
        assert_eq!(message.received_at_ms, Some(1_700_000_000_000));
        assert_eq!(message.port.as_deref(), Some("12.sp256.101"));
        assert_eq!(message.device.as_deref(), Some("00:1A:2B:3C:4D:5E"));
        assert_eq!(message.recipient, "");
        assert_eq!(message.iccid.as_deref(), Some("8970100000000000001"));
        assert_eq!(message.imsi.as_deref(), Some("250010000000001"));
    }

    #[test]
    fn string_flag_and_numeric_string_timestamp() {
        let message = one_message(json!(["0", "1B", "1700000000", "a", "b", b64("x")]));
        assert_eq!(message.received_at_ms, Some(1_700_000_000_000));
        assert_eq!(message.port.as_deref(), Some("1B"));
    }

    #[test]
    fn unreadable_timestamp_keeps_the_message() {
        let message = one_message(json!([0, "1.01", "yesterday", "a", "b", b64("code 1234")]));
        assert_eq!(message.received_at_ms, None);
        assert_eq!(message.text, "code 1234");
    }

    #[test]
    fn header_block_fills_missing_sender_and_recipient() {
        let text = "Sender: +79005556677\r\nReceiver: 79001234567\r\nSMSC: +79168999100\r\n\
                    SCTS: 23/10/27,10:00:00+12\r\n\r\nYour code: 4321\r\n\r\nBye";
        let message = one_message(json!([0, "1.01", 1_700_000_000, "", null, b64(text)]));
        assert_eq!(message.sender, "+79005556677");
        assert_eq!(message.recipient, "79001234567");
        assert_eq!(message.text, "Your code: 4321\r\n\r\nBye");
    }

    #[test]
    fn row_fields_win_over_header_block() {
        let text = "Sender: header-sender\nReceiver: 700\n\ntext";
        let message = one_message(json!([0, "1.01", 1, "row-sender", "800", b64(text)]));
        assert_eq!(message.sender, "row-sender");
        assert_eq!(message.recipient, "800");
        assert_eq!(message.text, "text");
    }

    #[test]
    fn text_that_only_looks_like_headers_is_kept_whole() {
        for text in [
            "Code: 1234\n\nDo not share it",
            "Hello\n\nWorld",
            "\r\n\r\nlate",
        ] {
            let message = one_message(json!([0, "1", 1, "s", "r", b64(text)]));
            assert_eq!(message.text, text);
        }
    }

    #[test]
    fn base64_is_read_leniently() {
        let message = one_message(json!([0, "1", 1, "s", "r", "SGVs\r\nbG8gV29y bGQ"]));
        assert_eq!(message.text, "Hello World");
        let message = one_message(json!([0, "1", 1, "s", "r", b64("Привет")]));
        assert_eq!(message.text, "Привет");
        let message = one_message(json!([0, "1", 1, "s", "r", "/w=="]));
        assert_eq!(message.text, "\u{fffd}");
    }

    #[test]
    fn delivery_reports_are_handled_without_messages() {
        let (messages, problems) = messages(json!({
            "type": "recv-sms",
            "sms": [[1, "1.01", 1_700_000_000, "", "79001234567", "0 231027100000"],
                    ["1", "1.02", 1_700_000_000, "", "79001234567", "0 231027100000"]]
        }));
        assert!(messages.is_empty());
        assert!(problems.is_empty(), "{problems:?}");
    }

    #[test]
    fn bad_rows_are_explained_and_good_rows_kept() {
        let (messages, problems) = messages(json!({
            "type": "recv-sms",
            "sms": [
                [0, "1", 1, "s", "r", "not base64!"],
                [0, "1", 1, "s", "r", b64("fine")],
                [0, "1", 1, "s", "r"],
                "row",
                [7, "1", 1, "s", "r", b64("x")],
                ["x", "1", 1, "s", "r", b64("x")],
                [0, "1", 1, "s", "r", 5],
            ]
        }));
        assert_eq!(messages.len(), 1);
        assert_eq!(messages[0].text, "fine");
        assert_eq!(
            problems,
            [
                "row 0: text is not valid base64",
                "row 2: not a list of at least 6 fields",
                "row 3: not a list of at least 6 fields",
                "row 4: unknown flag 7",
                "row 5: flag \"x\" is not a number",
                "row 6: text is not a string",
            ]
        );
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
        let id = one_message(row.clone()).id;
        assert_eq!(one_message(row).id, id);
        let other_text = json!([0, "1.01", 1_700_000_000, "s", "r", b64("code 2")]);
        let other_port = json!([0, "1.02", 1_700_000_000, "s", "r", b64("code 1")]);
        let shifted = json!([0, "1.01", 1_700_000_000, "sr", "", b64("code 1")]);
        for row in [other_text, other_port, shifted] {
            assert_ne!(one_message(row).id, id);
        }
    }

    #[test]
    fn fnv1a_matches_reference_values() {
        // Reference: FNV-1a 64 of "a" is 0xaf63dc4c8601ec8c; here each field ends in 0xff.
        let hash_of_a = (0xaf63_dc4c_8601_ec8c_u64 ^ 0xff).wrapping_mul(0x0000_0100_0000_01b3);
        assert_eq!(fnv1a(&["a".into()]), hash_of_a);
    }
}
