//! Reading what a marketplace answered to a delivery.

use serde_json::Value;
use simrelay_sdk::DeliveryOutcome;

/// Longest piece of an unexpected answer quoted in a log or a give-up reason.
const EXCERPT_CHARS: usize = 160;

/// A delivery's outcome, its body read as JSON where it is JSON.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    Json { http_status: u16, body: Value },
    Text { http_status: u16, text: String },
    TransportError(String),
}

pub fn read(outcome: &DeliveryOutcome) -> Answer {
    match outcome {
        DeliveryOutcome::TransportError(error) => Answer::TransportError(error.clone()),
        DeliveryOutcome::Response(response) => match serde_json::from_slice(&response.body) {
            Ok(body) => Answer::Json {
                http_status: response.status,
                body,
            },
            Err(_) => Answer::Text {
                http_status: response.status,
                text: String::from_utf8_lossy(&response.body).trim().to_owned(),
            },
        },
    }
}

/// The HTTP status and the word the marketplace answered: the `status` of a JSON object, or
/// a plain-text body such as `SUCCESS`. `None` for a transport error.
pub fn status_word(outcome: &DeliveryOutcome) -> Option<(u16, String)> {
    match read(outcome) {
        Answer::Json { http_status, body } => {
            let word = match body.get("status") {
                Some(Value::String(word)) => word.trim().to_owned(),
                Some(other) => other.to_string(),
                None => match body {
                    Value::String(word) => word.trim().to_owned(),
                    _ => String::new(),
                },
            };
            Some((http_status, word))
        }
        Answer::Text { http_status, text } => Some((http_status, text)),
        Answer::TransportError(_) => None,
    }
}

/// A short description of an outcome for logs and give-up reasons, with `secret` (which a
/// marketplace may echo back from a query string) blanked out.
pub fn describe(outcome: &DeliveryOutcome, secret: &str) -> String {
    let described = match outcome {
        DeliveryOutcome::TransportError(error) => format!("transport error: {error}"),
        DeliveryOutcome::Response(response) => {
            let body = String::from_utf8_lossy(&response.body);
            let mut excerpt: String = body.trim().chars().take(EXCERPT_CHARS).collect();
            if body.trim().chars().count() > EXCERPT_CHARS {
                excerpt.push('…');
            }
            format!("HTTP {}: {excerpt}", response.status)
        }
    };
    if secret.is_empty() {
        described
    } else {
        described.replace(secret, "***")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use simrelay_sdk::HttpResponse;

    fn response(status: u16, body: &str) -> DeliveryOutcome {
        DeliveryOutcome::Response(HttpResponse {
            status,
            headers: Vec::new(),
            body: body.as_bytes().to_vec(),
        })
    }

    #[test]
    fn status_words() {
        let word = |outcome: DeliveryOutcome| status_word(&outcome);
        assert_eq!(
            word(response(200, r#"{"status":"SUCCESS"}"#)),
            Some((200, "SUCCESS".into()))
        );
        assert_eq!(
            word(response(200, r#"{"status":" NO_OP "}"#)),
            Some((200, "NO_OP".into()))
        );
        assert_eq!(
            word(response(400, "BAD_SERVICE\n")),
            Some((400, "BAD_SERVICE".into()))
        );
        assert_eq!(
            word(response(200, r#""IGNORED""#)),
            Some((200, "IGNORED".into()))
        );
        assert_eq!(
            word(response(200, r#"{"status":1}"#)),
            Some((200, "1".into()))
        );
        assert_eq!(
            word(response(200, r#"{"ok":true}"#)),
            Some((200, String::new()))
        );
        assert_eq!(
            word(DeliveryOutcome::TransportError("refused".into())),
            None
        );
    }

    #[test]
    fn descriptions_are_short_and_keep_secrets() {
        let long = format!("Not found: /getStatus?api_key=s3cret {}", "x".repeat(500));
        let described = describe(&response(404, &long), "s3cret");
        assert!(
            described.starts_with("HTTP 404: Not found: /getStatus?api_key=*** x"),
            "{described}"
        );
        assert!(described.chars().count() < 200, "{described}");
        assert!(!described.contains("s3cret"));
        assert_eq!(
            describe(&DeliveryOutcome::TransportError("timeout".into()), ""),
            "transport error: timeout"
        );
    }
}
