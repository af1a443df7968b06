//! The GotSMS REST API as far as this plugin uses it: requests it builds, answers it reads.

use serde_json::Value;
use simrelay_sdk::lenient::{self, field, first_field};
use simrelay_sdk::time::parse_datetime;
use simrelay_sdk::{MessageKind, OutgoingRequest, ReceivedMessage};

/// Messages asked for per request; the API's maximum.
pub(crate) const PAGE_SIZE: usize = 100;
/// Per-attempt timeout: GotSMS answers listings quickly; a hung poll should not hold the next.
const TIMEOUT_MS: u32 = 15_000;

fn authorized(request: OutgoingRequest, token: &str) -> OutgoingRequest {
    OutgoingRequest {
        timeout_ms: Some(TIMEOUT_MS),
        ..request
            .with_header("authorization", &format!("Bearer {token}"))
            .with_header("accept", "application/json")
    }
}

/// `GET /api/messages/unread`, leaving them unread.
pub(crate) fn unread(base_url: &str, token: &str) -> OutgoingRequest {
    let url = format!("{base_url}/api/messages/unread");
    let query = [("per_page", PAGE_SIZE.to_string())];
    authorized(OutgoingRequest::get(&url, &query), token)
}

/// `GET /api/messages/unread?mark_as_read=1`: returns the unread messages and marks them read.
pub(crate) fn mark_read(base_url: &str, token: &str) -> OutgoingRequest {
    let url = format!("{base_url}/api/messages/unread");
    let query = [
        ("per_page", PAGE_SIZE.to_string()),
        ("mark_as_read", "1".into()),
    ];
    authorized(OutgoingRequest::get(&url, &query), token)
}

/// `GET /api/numbers/{rent}/messages`, newest first, older than `before_id` when given.
pub(crate) fn rent_messages(
    base_url: &str,
    token: &str,
    rent_id: &str,
    before_id: Option<&str>,
) -> OutgoingRequest {
    let url = format!(
        "{base_url}/api/numbers/{}/messages",
        simrelay_sdk::encoding::percent_encode(rent_id)
    );
    let mut query = vec![("limit", PAGE_SIZE.to_string())];
    if let Some(before_id) = before_id {
        query.push(("before_id", before_id.to_owned()));
    }
    authorized(OutgoingRequest::get(&url, &query), token)
}

/// A successful listing: its messages and what it says about further pages.
#[derive(Debug, Default)]
pub(crate) struct Listing {
    pub messages: Vec<Message>,
    /// Items that were not messages, explained.
    pub problems: Vec<String>,
    /// `meta.last_page > meta.current_page`: more than one page was waiting.
    pub more_pages: bool,
    /// `meta.next_before_id` of a per-rent listing.
    pub next_before_id: Option<String>,
}

/// One message as GotSMS lists it.
#[derive(Debug, Clone)]
pub(crate) struct Message {
    pub id: String,
    pub rent_id: Option<String>,
    pub received_at_ms: Option<u64>,
    event: ReceivedMessage,
}

impl Message {
    pub fn into_event(self) -> ReceivedMessage {
        self.event
    }
}

/// Reads `{"success":true,"data":[…],"meta":{…}}`; the error explains an answer that is not one.
pub(crate) fn listing(body: &[u8]) -> Result<Listing, String> {
    let body: Value = serde_json::from_slice(body).map_err(|error| {
        format!(
            "GotSMS answered with something that is not JSON ({error}): {}",
            excerpt(body)
        )
    })?;
    if body.get("success").and_then(lenient::boolean) == Some(false) {
        return Err(format!("GotSMS said no: {}", message_of(&body)));
    }
    let data = body.get("data").and_then(Value::as_array).ok_or_else(|| {
        format!(
            "GotSMS answered without a `data` list: {}",
            excerpt_json(&body)
        )
    })?;
    let mut listing = Listing::default();
    for (index, item) in data.iter().enumerate() {
        match message(item) {
            Some(message) => listing.messages.push(message),
            None => listing
                .problems
                .push(format!("item {index} is not a message with an id")),
        }
    }
    let meta = body.get("meta").unwrap_or(&Value::Null);
    let page = |name| meta.get(name).and_then(lenient::leading_number);
    listing.more_pages = matches!((page("current_page"), page("last_page")), (Some(current), Some(last)) if last > current);
    listing.next_before_id = field(meta, "next_before_id");
    Ok(listing)
}

fn message(item: &Value) -> Option<Message> {
    let id = field(item, "id")?;
    let received_at_ms = field(item, "received_at").and_then(|at| parse_datetime(&at, 0));
    let recipient = field(item, "to")
        .or_else(|| field(item, "phone").map(|phone| compact_number(&phone)))
        .unwrap_or_default();
    let event = ReceivedMessage {
        id: format!("gotsms-{id}"),
        sender: first_field(item, &["from", "sender"]).unwrap_or_default(),
        recipient,
        text: item
            .get("body")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
        kind: MessageKind::Sms,
        received_at_ms,
        device: None,
        port: None,
        iccid: None,
        imsi: None,
        code: field(item, "code"),
    };
    Some(Message {
        id,
        rent_id: field(item, "rent_id"),
        received_at_ms,
        event,
    })
}

/// `+1 800 123 4567` → `+18001234567`: the number without the spaces GotSMS shows it with.
// Stand-in until `simrelay_sdk::phone` lands; then call its normalisation instead.
fn compact_number(number: &str) -> String {
    let digits: String = number.chars().filter(char::is_ascii_digit).collect();
    match number.trim_start().starts_with('+') {
        true => format!("+{digits}"),
        false => digits,
    }
}

/// The `message` of an error answer, or the answer itself.
pub(crate) fn message_of(body: &Value) -> String {
    field(body, "message").unwrap_or_else(|| excerpt_json(body))
}

/// The start of a body, for an error message.
pub(crate) fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let mut excerpt: String = text.chars().take(200).collect();
    if text.chars().count() > 200 {
        excerpt.push('…');
    }
    excerpt
}

fn excerpt_json(body: &Value) -> String {
    excerpt(body.to_string().as_bytes())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The provider document's answer to "List unread SMS messages".
    pub(crate) const UNREAD_SAMPLE: &str = r#"{"success":true,"data":[{"id":"uuid","rent_id":"uuid","service":{"id":"uuid","name":"Telegram"},"phone":"+1 800 123 4567","from":"+18001234567","to":"+18009876543","body":"Your verification code is 123456","code":"123456","received_at":"2026-03-11T12:00:00+00:00"}],"meta":{"current_page":1,"last_page":1,"per_page":20,"total":1}}"#;

    /// The provider document's answer to "Get SMS messages for a rent".
    const RENT_SAMPLE: &str = r#"{"success":true,"data":[{"id":"uuid","from":"+18001234567","to":"+18009876543","body":"Your verification code is 123456","code":"123456","received_at":"2026-03-11T12:00:00+00:00"}],"meta":{"next_before_id":"uuid","count":1}}"#;

    #[test]
    fn provider_samples() {
        for sample in [UNREAD_SAMPLE, RENT_SAMPLE] {
            let listing = listing(sample.as_bytes()).unwrap();
            assert!(listing.problems.is_empty());
            assert!(!listing.more_pages);
            let [message] = &listing.messages[..] else {
                panic!("one message expected");
            };
            assert_eq!(message.id, "uuid");
            assert_eq!(message.received_at_ms, Some(1_773_230_400_000));
            let event = message.clone().into_event();
            assert_eq!(event.id, "gotsms-uuid");
            assert_eq!(event.sender, "+18001234567");
            assert_eq!(event.recipient, "+18009876543");
            assert_eq!(event.text, "Your verification code is 123456");
            assert_eq!(event.code.as_deref(), Some("123456"));
        }
        let rent = listing(RENT_SAMPLE.as_bytes()).unwrap();
        assert_eq!(rent.next_before_id.as_deref(), Some("uuid"));
        assert_eq!(rent.messages[0].rent_id, None);
        let unread = listing(UNREAD_SAMPLE.as_bytes()).unwrap();
        assert_eq!(unread.messages[0].rent_id.as_deref(), Some("uuid"));
    }

    #[test]
    fn recipient_from_the_rented_phone_when_to_is_missing() {
        let body = r#"{"success":true,"data":[{"id":7,"phone":"+1 800 123 4567","body":"hi","code":""}],
                       "meta":{"current_page":1,"last_page":3}}"#;
        let listing = listing(body.as_bytes()).unwrap();
        assert!(listing.more_pages);
        let event = listing.messages[0].clone().into_event();
        assert_eq!(event.recipient, "+18001234567");
        assert_eq!(event.code, None, "an empty code is no code");
        assert_eq!(event.received_at_ms, None);
        assert_eq!(compact_number("800 123"), "800123");
    }

    #[test]
    fn answers_that_are_not_listings_are_explained() {
        let error = listing(b"<html>502</html>").unwrap_err();
        assert!(
            error.contains("not JSON") && error.contains("<html>502"),
            "{error}"
        );
        let error = listing(br#"{"success":false,"message":"Unauthenticated."}"#).unwrap_err();
        assert_eq!(error, "GotSMS said no: Unauthenticated.");
        let error = listing(br#"{"success":true}"#).unwrap_err();
        assert!(error.contains("without a `data` list"), "{error}");
        let listing = listing(br#"{"data":[{"body":"no id"}, 5]}"#).unwrap();
        assert_eq!(
            listing.problems,
            [
                "item 0 is not a message with an id",
                "item 1 is not a message with an id"
            ]
        );
    }

    #[test]
    fn requests() {
        let request = unread("https://app.gotsms.org", "t0k");
        assert_eq!(request.method, "GET");
        assert_eq!(
            request.url,
            "https://app.gotsms.org/api/messages/unread?per_page=100"
        );
        assert!(
            request
                .headers
                .contains(&("authorization".into(), "Bearer t0k".into()))
        );
        assert!(
            mark_read("https://x", "t")
                .url
                .ends_with("?per_page=100&mark_as_read=1")
        );
        assert_eq!(
            rent_messages("https://x", "t", "r/1", Some("b")).url,
            "https://x/api/numbers/r%2F1/messages?limit=100&before_id=b"
        );
    }
}
