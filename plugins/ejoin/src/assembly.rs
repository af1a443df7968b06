//! Joining the parts of a long SMS back into one message.
//!
//! Ejoin rows carry no part number: a long SMS arrives as several rows, in one push or spread
//! over several, each with its own part of the text. What gives a part away is its length: a
//! part of a concatenated SMS holds at most 153 GSM-7 septets (characters of the extension
//! table, such as `€` or `{`, take two) or 67 UTF-16 units of UCS-2, and every part but the
//! last is full. So, per device, port, sender and recipient:
//!
//! - a row exactly as long as a full part opens a pending message, or extends the open one;
//! - a shorter row closes the pending message: the joined text is emitted as one message,
//!   with the id, time and SIM of its first part; with nothing pending it is a whole SMS;
//! - a row longer than a part (a single SMS of up to 160 or 70, or one the gateway already
//!   joined) is a whole SMS by itself, and leaves a pending message waiting;
//! - a row that needs UCS-2 cannot continue GSM-7 parts: the pending message is emitted as it
//!   is and the row is taken on its own. A UCS-2 message may have parts of plain Latin text,
//!   so once a message is UCS-2 its parts are measured in UTF-16 units;
//! - a pending message is emitted as it is when no part came for the window
//!   (`long_sms_window_secs`, checked on tick), or when it reaches [`MAX_PARTS`].
//!
//! A re-sent part never reaches this module: the row de-duplication drops it first.
//! Known limits, for lack of a part counter: a single SMS exactly one full part long waits for
//! the window; a part that a splitter shortened by one unit, not to cut an escape sequence or
//! a surrogate pair in two, ends its message early; parts are joined in the order they arrive.
//!
//! Keys: `long/<hash of device, port, sender, recipient>` → the pending message as JSON.

use serde::{Deserialize, Serialize};
use simrelay_sdk::dedupe::Fingerprint;
use simrelay_sdk::{KeyValue, ReceivedMessage};

use crate::sms::SmsRow;

/// Septets in one part of a concatenated GSM-7 SMS (160 less the 7 the header takes).
const FULL_GSM7_PART: usize = 153;
/// UTF-16 units in one part of a concatenated UCS-2 SMS (70 less 3).
const FULL_UCS2_PART: usize = 67;
/// A pending message is emitted once it has this many parts, so state stays bounded.
pub(crate) const MAX_PARTS: usize = 16;

const PREFIX: &str = "long/";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Alphabet {
    Gsm7,
    Ucs2,
}

impl Alphabet {
    /// The alphabet a phone would send `text` in.
    fn of(text: &str) -> Self {
        if text.chars().all(|c| gsm7_septets(c).is_some()) {
            Alphabet::Gsm7
        } else {
            Alphabet::Ucs2
        }
    }

    /// The length of `text` in this alphabet's units.
    fn length(self, text: &str) -> usize {
        match self {
            Alphabet::Gsm7 => text.chars().map(|c| gsm7_septets(c).unwrap_or(1)).sum(),
            Alphabet::Ucs2 => text.encode_utf16().count(),
        }
    }

    fn full_part(self) -> usize {
        match self {
            Alphabet::Gsm7 => FULL_GSM7_PART,
            Alphabet::Ucs2 => FULL_UCS2_PART,
        }
    }
}

/// GSM 03.38: the basic table (1 septet) and the extension table (2: escape + code).
const GSM7_BASIC: &str = "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?\
                          ¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà";
const GSM7_EXTENSION: &str = "\u{c}^{}\\[~]|€";

/// The septets of each ASCII character, 0 for none, so that the common case is a lookup.
const ASCII_SEPTETS: [u8; 128] = {
    let mut table = [0; 128];
    let mut i = 0;
    // Bytes of multi-byte characters are all ≥ 0x80: only ASCII characters land here.
    while i < GSM7_BASIC.len() {
        if GSM7_BASIC.as_bytes()[i] < 128 {
            table[GSM7_BASIC.as_bytes()[i] as usize] = 1;
        }
        i += 1;
    }
    i = 0;
    while i < GSM7_EXTENSION.len() {
        if GSM7_EXTENSION.as_bytes()[i] < 128 {
            table[GSM7_EXTENSION.as_bytes()[i] as usize] = 2;
        }
        i += 1;
    }
    table
};

/// Septets of `c` in GSM 03.38; none when the character needs UCS-2.
fn gsm7_septets(c: char) -> Option<usize> {
    let septets = if c.is_ascii() {
        ASCII_SEPTETS[c as usize]
    } else if GSM7_BASIC.contains(c) {
        1
    } else if GSM7_EXTENSION.contains(c) {
        2
    } else {
        0
    };
    (septets > 0).then_some(usize::from(septets))
}

/// A long SMS whose last part has not come yet.
#[derive(Debug, Serialize, Deserialize)]
struct Pending {
    /// The first part: id, time, SIM and addresses of the whole message.
    first: SmsRow,
    alphabet: Alphabet,
    parts: Vec<String>,
    /// When the last part arrived.
    updated_ms: u64,
}

impl Pending {
    fn into_message(self) -> ReceivedMessage {
        let mut message = self.first.into_message();
        message.text = self.parts.concat();
        message
    }
}

fn pending_key(row: &SmsRow) -> String {
    Fingerprint::of(&[
        row.device.as_deref().unwrap_or_default(),
        row.port.as_deref().unwrap_or_default(),
        &row.sender,
        &row.recipient,
    ])
    .hex_after(PREFIX)
}

fn load(kv: &dyn KeyValue, key: &str) -> Result<Option<Pending>, String> {
    let Some(bytes) = kv.get(key)? else {
        return Ok(None);
    };
    match serde_json::from_slice(&bytes) {
        Ok(pending) => Ok(Some(pending)),
        Err(error) => {
            // Written by an incompatible version: its parts cannot be recovered, and keeping it
            // would block every later part of that sender.
            eprintln!("ejoin: dropping unreadable pending long SMS {key}: {error}");
            kv.delete(key)?;
            Ok(None)
        }
    }
}

fn store(kv: &dyn KeyValue, key: &str, pending: &Pending) -> Result<(), String> {
    let bytes = serde_json::to_vec(pending).map_err(|error| error.to_string())?;
    kv.set(key, &bytes)
}

/// Takes one SMS row (not seen before) and returns the messages it completes, in order.
pub(crate) fn accept(
    kv: &dyn KeyValue,
    row: SmsRow,
    now_ms: u64,
) -> Result<Vec<ReceivedMessage>, String> {
    let key = pending_key(&row);
    let row_alphabet = Alphabet::of(&row.text);
    let mut messages = Vec::new();
    let pending = match load(kv, &key)? {
        Some(pending) if pending.alphabet == Alphabet::Gsm7 && row_alphabet == Alphabet::Ucs2 => {
            kv.delete(&key)?;
            messages.push(pending.into_message());
            None
        }
        pending => pending,
    };
    let Some(mut pending) = pending else {
        if row_alphabet.length(&row.text) == row_alphabet.full_part() {
            let parts = vec![row.text.clone()];
            let pending = Pending {
                first: row,
                alphabet: row_alphabet,
                parts,
                updated_ms: now_ms,
            };
            store(kv, &key, &pending)?;
        } else {
            messages.push(row.into_message());
        }
        return Ok(messages);
    };
    let length = pending.alphabet.length(&row.text);
    let full = pending.alphabet.full_part();
    if length > full {
        messages.push(row.into_message());
        return Ok(messages);
    }
    pending.parts.push(row.text);
    pending.updated_ms = now_ms;
    if length == full && pending.parts.len() < MAX_PARTS {
        store(kv, &key, &pending)?;
    } else {
        kv.delete(&key)?;
        messages.push(pending.into_message());
    }
    Ok(messages)
}

/// Emits, as they are, pending messages whose last part came `window_ms` or more ago.
pub(crate) fn flush_stale(
    kv: &dyn KeyValue,
    now_ms: u64,
    window_ms: u64,
) -> Result<Vec<ReceivedMessage>, String> {
    let mut messages = Vec::new();
    let mut keys = kv.keys(PREFIX)?;
    keys.sort_unstable();
    for key in keys {
        if let Some(pending) = load(kv, &key)?
            && pending.updated_ms.saturating_add(window_ms) <= now_ms
        {
            kv.delete(&key)?;
            messages.push(pending.into_message());
        }
    }
    // Oldest first, as they arrived.
    messages.sort_by_key(|message| message.received_at_ms);
    Ok(messages)
}

#[cfg(test)]
mod tests {
    use super::*;
    use simrelay_sdk::MemoryStore;

    fn row(id: &str, text: &str) -> SmsRow {
        SmsRow {
            id: id.into(),
            device: Some("m".into()),
            port: Some("1.01".into()),
            received_at_ms: Some(1_000),
            sender: "Bank".into(),
            recipient: "7900".into(),
            text: text.into(),
            iccid: None,
            imsi: None,
        }
    }

    fn texts(messages: &[ReceivedMessage]) -> Vec<&str> {
        messages.iter().map(|m| m.text.as_str()).collect()
    }

    /// Pending messages written before keys were hashed field by field are still found.
    #[test]
    fn pending_keys_are_the_fingerprint_of_the_fields() {
        let mut without_device = row("a", "x");
        without_device.device = None;
        for row in [row("a", "x"), without_device] {
            let fields = [
                row.device.clone().unwrap_or_default(),
                row.port.clone().unwrap_or_default(),
                row.sender.clone(),
                row.recipient.clone(),
            ];
            let expected = format!("long/{}", simrelay_sdk::dedupe::fingerprint(&fields));
            assert_eq!(pending_key(&row), expected);
        }
    }

    #[test]
    fn the_ascii_table_agrees_with_the_gsm_tables() {
        for c in (0u8..128).map(char::from) {
            let slow = if GSM7_BASIC.contains(c) {
                Some(1)
            } else if GSM7_EXTENSION.contains(c) {
                Some(2)
            } else {
                None
            };
            assert_eq!(gsm7_septets(c), slow, "{c:?}");
        }
    }

    #[test]
    fn lengths_in_each_alphabet() {
        assert_eq!(Alphabet::of("Hello {€}"), Alphabet::Gsm7);
        assert_eq!(Alphabet::Gsm7.length("Hello {€}"), 12);
        assert_eq!(Alphabet::of("Привет"), Alphabet::Ucs2);
        assert_eq!(Alphabet::of("hi 😀"), Alphabet::Ucs2);
        assert_eq!(Alphabet::Ucs2.length("hi 😀"), 5);
        assert_eq!(Alphabet::of(""), Alphabet::Gsm7);
    }

    #[test]
    fn short_rows_are_whole_messages() {
        let kv = MemoryStore::default();
        let messages = accept(&kv, row("a", "Your code is 5015"), 0).unwrap();
        assert_eq!(texts(&messages), ["Your code is 5015"]);
        assert_eq!(messages[0].id, "a");
        assert!(kv.keys(PREFIX).unwrap().is_empty());
    }

    #[test]
    fn full_parts_wait_for_the_short_last_one() {
        let kv = MemoryStore::default();
        let first = "a".repeat(149) + "{€";
        assert_eq!(Alphabet::Gsm7.length(&first), FULL_GSM7_PART);
        let second = "b".repeat(153);
        assert!(accept(&kv, row("1", &first), 10).unwrap().is_empty());
        assert!(accept(&kv, row("2", &second), 20).unwrap().is_empty());
        let messages = accept(&kv, row("3", "end"), 30).unwrap();
        assert_eq!(messages.len(), 1);
        assert_eq!(messages[0].text, format!("{first}{second}end"));
        assert_eq!(messages[0].id, "1", "the first part's id");
        assert!(kv.keys(PREFIX).unwrap().is_empty());
    }

    #[test]
    fn ucs2_parts_may_hold_plain_latin_text() {
        let kv = MemoryStore::default();
        let first = "Ж".repeat(67);
        let latin = "x".repeat(67);
        assert!(accept(&kv, row("1", &first), 0).unwrap().is_empty());
        assert!(accept(&kv, row("2", &latin), 0).unwrap().is_empty());
        let messages = accept(&kv, row("3", "ok"), 0).unwrap();
        assert_eq!(texts(&messages), [format!("{first}{latin}ok")]);
    }

    #[test]
    fn a_ucs2_row_cannot_continue_gsm7_parts() {
        let kv = MemoryStore::default();
        let gsm = "g".repeat(153);
        accept(&kv, row("1", &gsm), 0).unwrap();
        let messages = accept(&kv, row("2", "Привет"), 0).unwrap();
        assert_eq!(texts(&messages), [gsm.as_str(), "Привет"]);
    }

    #[test]
    fn longer_rows_stand_alone_and_leave_the_pending_message() {
        let kv = MemoryStore::default();
        let part = "p".repeat(153);
        let single = "s".repeat(160);
        accept(&kv, row("1", &part), 0).unwrap();
        assert_eq!(
            texts(&accept(&kv, row("2", &single), 0).unwrap()),
            [single.as_str()]
        );
        assert_eq!(
            texts(&accept(&kv, row("3", "end"), 0).unwrap()),
            [format!("{part}end")]
        );
    }

    #[test]
    fn other_senders_and_ports_are_other_messages() {
        let kv = MemoryStore::default();
        let part = "p".repeat(153);
        accept(&kv, row("1", &part), 0).unwrap();
        let mut other = row("2", "short");
        other.sender = "Shop".into();
        assert_eq!(texts(&accept(&kv, other, 0).unwrap()), ["short"]);
        let mut other_port = row("3", "short");
        other_port.port = Some("1.02".into());
        assert_eq!(texts(&accept(&kv, other_port, 0).unwrap()), ["short"]);
        assert_eq!(kv.keys(PREFIX).unwrap().len(), 1);
    }

    #[test]
    fn stale_pending_messages_are_flushed_as_they_are() {
        let kv = MemoryStore::default();
        let part = "p".repeat(153);
        accept(&kv, row("1", &part), 1_000).unwrap();
        accept(&kv, row("2", &part), 2_000).unwrap();
        assert!(flush_stale(&kv, 2_000 + 29_999, 30_000).unwrap().is_empty());
        let messages = flush_stale(&kv, 2_000 + 30_000, 30_000).unwrap();
        assert_eq!(texts(&messages), [part.repeat(2)]);
        assert!(kv.keys(PREFIX).unwrap().is_empty());
    }

    #[test]
    fn pending_messages_are_bounded() {
        let kv = MemoryStore::default();
        let part = "p".repeat(153);
        for n in 1..MAX_PARTS {
            assert!(
                accept(&kv, row(&n.to_string(), &part), 0)
                    .unwrap()
                    .is_empty()
            );
        }
        let messages = accept(&kv, row("last", &part), 0).unwrap();
        assert_eq!(messages[0].text.len(), 153 * MAX_PARTS);
    }

    #[test]
    fn unreadable_pending_state_is_dropped() {
        let kv = MemoryStore::default();
        let key = pending_key(&row("1", "x"));
        kv.set(&key, b"{").unwrap();
        assert_eq!(texts(&accept(&kv, row("1", "x"), 0).unwrap()), ["x"]);
        assert!(!kv.exists(&key).unwrap());
    }
}
