//! The partner protocol's wire format: the marketplace POSTs a JSON object with `action` and
//! `key`; we answer JSON with a `status`.
//!
//! Answers other than SUCCESS carry their reason in `status` (`BAD_KEY`, `NO_NUMBERS`, …), as
//! the protocol's own `NO_NUMBERS` does, and a sentence in `error` for people reading logs.

use serde_json::{Map, Value, json};
use simrelay_sdk::HttpReply;

use crate::settings::price;
use crate::usage::Ending;

/// A marketplace request, read and checked.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    GetServices,
    GetNumber(NumberRequest),
    FinishActivation { activation: u64, ending: Ending },
}

/// GET_NUMBER: a number for a service in a country, from an operator or `any`.
#[derive(Debug, Clone, PartialEq)]
pub struct NumberRequest {
    pub country: String,
    pub operator: String,
    pub service: String,
    /// What the marketplace pays; `None` when it did not say.
    pub sum: Option<f64>,
    /// The number must not start with any of these (`exceptionPhoneSet`).
    pub excluded_prefixes: Vec<String>,
}

/// A request that cannot be served, as the marketplace is told.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    pub http_status: u16,
    /// The `status` the marketplace reads.
    pub status: &'static str,
    pub error: String,
}

impl Refusal {
    fn malformed(error: impl Into<String>) -> Self {
        Refusal {
            http_status: 400,
            status: "BAD_REQUEST",
            error: error.into(),
        }
    }

    pub fn bad_key() -> Self {
        Refusal {
            http_status: 401,
            status: "BAD_KEY",
            error: "the key is missing or wrong".into(),
        }
    }

    pub fn unknown_activation(id: u64) -> Self {
        Refusal {
            http_status: 404,
            status: "NO_ACTIVATION",
            error: format!("no activation {id} was issued here"),
        }
    }

    pub fn reply(&self) -> HttpReply {
        let body = json!({ "status": self.status, "error": self.error });
        HttpReply::json(self.http_status, body.to_string())
    }
}

/// Reads a marketplace request. Its `key` is checked, in constant time, before any other
/// field is read: a request with a wrong key learns nothing else.
pub fn parse(body: &[u8], expected_key: &str) -> Result<Request, Refusal> {
    let fields = match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(fields)) => fields,
        Ok(_) => return Err(Refusal::malformed("the body is not a JSON object")),
        Err(error) => return Err(Refusal::malformed(format!("the body is not JSON: {error}"))),
    };
    let key_matches = fields
        .get("key")
        .and_then(Value::as_str)
        .is_some_and(|key| simrelay_sdk::secrets_match(key, expected_key));
    if !key_matches {
        return Err(Refusal::bad_key());
    }
    let action = match fields.get("action") {
        Some(Value::String(action)) => action.trim().to_ascii_uppercase(),
        _ => return Err(Refusal::malformed("`action` is missing or not a string")),
    };
    match action.as_str() {
        "GET_SERVICES" => Ok(Request::GetServices),
        "GET_NUMBER" => number_request(&fields).map(Request::GetNumber),
        "FINISH_ACTIVATION" => finish_request(&fields),
        _ => Err(Refusal {
            http_status: 400,
            status: "BAD_ACTION",
            error: format!(
                "unknown action `{action}`: this partner serves GET_SERVICES, GET_NUMBER and FINISH_ACTIVATION"
            ),
        }),
    }
}

fn number_request(fields: &Map<String, Value>) -> Result<NumberRequest, Refusal> {
    let required = |name: &str| {
        text(fields.get(name))
            .ok_or_else(|| Refusal::malformed(format!("GET_NUMBER needs `{name}`")))
    };
    let sum = match fields.get("sum") {
        None => None,
        Some(value) => price(value).ok_or_else(|| Refusal::malformed("`sum` is not a number"))?,
    };
    let excluded_prefixes = match fields.get("exceptionPhoneSet") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(prefixes)) => prefixes
            .iter()
            .map(|prefix| {
                text(Some(prefix)).ok_or_else(|| {
                    Refusal::malformed("`exceptionPhoneSet` holds something that is not a prefix")
                })
            })
            .collect::<Result<_, _>>()?,
        // A single prefix, or several separated by commas.
        Some(Value::String(prefixes)) => prefixes
            .split(',')
            .map(str::trim)
            .filter(|prefix| !prefix.is_empty())
            .map(str::to_owned)
            .collect(),
        Some(_) => {
            return Err(Refusal::malformed(
                "`exceptionPhoneSet` is not a list of prefixes",
            ));
        }
    };
    Ok(NumberRequest {
        country: required("country")?.to_lowercase(),
        operator: text(fields.get("operator")).map_or_else(
            || crate::inventory::ANY_OPERATOR.to_owned(),
            |operator| operator.to_lowercase(),
        ),
        service: required("service")?,
        sum,
        excluded_prefixes,
    })
}

fn finish_request(fields: &Map<String, Value>) -> Result<Request, Refusal> {
    let activation = whole_number(fields.get("activationId")).ok_or_else(|| {
        Refusal::malformed("FINISH_ACTIVATION needs `activationId`, a whole number")
    })?;
    let status = whole_number(fields.get("status"))
        .ok_or_else(|| Refusal::malformed("FINISH_ACTIVATION needs `status`, a whole number"))?;
    let ending = Ending::from_status(status).ok_or_else(|| Refusal {
        http_status: 400,
        status: "BAD_STATUS",
        error: format!(
            "status {status} is none of 1 (refused), 3 (sold), 4 (cancelled), 5 (refunded)"
        ),
    })?;
    Ok(Request::FinishActivation { activation, ending })
}

/// A string, or a number taken as its text (`"country": 0` on some marketplaces).
fn text(value: Option<&Value>) -> Option<String> {
    match value? {
        Value::String(text) => Some(text.trim().to_owned()).filter(|text| !text.is_empty()),
        Value::Number(number) => Some(number.to_string()),
        _ => None,
    }
}

/// `100` or `"100"`.
fn whole_number(value: Option<&Value>) -> Option<u64> {
    match value? {
        Value::Number(number) => number.as_u64(),
        Value::String(text) => text.trim().parse().ok(),
        _ => None,
    }
}

/// A JSON answer with HTTP 200.
pub fn answer(body: Value) -> HttpReply {
    HttpReply::json(200, body.to_string())
}

/// `{"status":"NO_NUMBERS"}`: nothing matches the request now.
pub fn no_numbers() -> HttpReply {
    answer(json!({ "status": "NO_NUMBERS" }))
}

/// A number or id as the dialect wants it: a JSON number, when it survives as one, or text.
pub fn digits_value(digits: &str, numeric: bool) -> Value {
    match digits.parse::<u64>() {
        Ok(number) if numeric && !digits.starts_with('0') => number.into(),
        _ => digits.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(body: &str) -> Result<Request, Refusal> {
        parse(body.as_bytes(), "qwerty123")
    }

    #[test]
    fn provider_samples() {
        assert_eq!(
            parsed(r#"{"action": "GET_SERVICES", "key": "qwerty123"}"#),
            Ok(Request::GetServices)
        );
        let number = parsed(
            r#"{"action": "GET_NUMBER", "key": "qwerty123", "country": "russia",
                "operator": "beeline", "service": "tg", "sum": "20.00"}"#,
        );
        assert_eq!(
            number,
            Ok(Request::GetNumber(NumberRequest {
                country: "russia".into(),
                operator: "beeline".into(),
                service: "tg".into(),
                sum: Some(20.0),
                excluded_prefixes: Vec::new(),
            }))
        );
        let finish = parsed(
            r#"{"action": "FINISH_ACTIVATION", "key": "qwerty123", "activationId": 100, "status": 3}"#,
        );
        assert_eq!(
            finish,
            Ok(Request::FinishActivation {
                activation: 100,
                ending: Ending::Sold
            })
        );
    }

    #[test]
    fn lenient_field_types() {
        let Ok(Request::GetNumber(number)) = parsed(
            r#"{"action": "get_number", "key": "qwerty123", "country": "Russia", "service": "tg",
                "sum": 12.5, "exceptionPhoneSet": ["44742", 44740]}"#,
        ) else {
            panic!("a GET_NUMBER request");
        };
        assert_eq!(number.operator, "any", "no operator means any");
        assert_eq!(number.country, "russia");
        assert_eq!(number.sum, Some(12.5));
        assert_eq!(number.excluded_prefixes, ["44742", "44740"]);
        let Ok(Request::GetNumber(number)) = parsed(
            r#"{"action": "GET_NUMBER", "key": "qwerty123", "country": 0, "service": "tg",
                "exceptionPhoneSet": "7900, 7901"}"#,
        ) else {
            panic!("a GET_NUMBER request");
        };
        assert_eq!((number.country.as_str(), number.sum), ("0", None));
        assert_eq!(number.excluded_prefixes, ["7900", "7901"]);
        let finish = parsed(
            r#"{"action": "FINISH_ACTIVATION", "key": "qwerty123", "activationId": "36532", "status": "4"}"#,
        );
        assert_eq!(
            finish,
            Ok(Request::FinishActivation {
                activation: 36532,
                ending: Ending::Cancelled
            })
        );
    }

    #[test]
    fn wrong_key_is_refused_before_anything_else() {
        for body in [
            r#"{"action": "GET_SERVICES", "key": "qwerty124"}"#,
            r#"{"action": "GET_SERVICES", "key": ""}"#,
            r#"{"action": "GET_SERVICES"}"#,
            r#"{"action": "GET_SERVICES", "key": 123}"#,
            r#"{"action": "NONSENSE", "key": "wrong"}"#,
        ] {
            let refusal = parsed(body).unwrap_err();
            assert_eq!(
                (refusal.http_status, refusal.status),
                (401, "BAD_KEY"),
                "{body}"
            );
        }
    }

    #[test]
    fn malformed_bodies_are_explained() {
        let cases = [
            ("", "the body is not JSON"),
            ("{\"action\":", "the body is not JSON"),
            ("[1]", "the body is not a JSON object"),
            (r#"{"key": "qwerty123"}"#, "`action` is missing"),
            (
                r#"{"key": "qwerty123", "action": 5}"#,
                "`action` is missing",
            ),
            (
                r#"{"key": "qwerty123", "action": "GET_NUMBER", "service": "tg"}"#,
                "GET_NUMBER needs `country`",
            ),
            (
                r#"{"key": "qwerty123", "action": "GET_NUMBER", "country": "russia"}"#,
                "GET_NUMBER needs `service`",
            ),
            (
                r#"{"key": "qwerty123", "action": "GET_NUMBER", "country": "russia", "service": "tg", "sum": "lots"}"#,
                "`sum` is not a number",
            ),
            (
                r#"{"key": "qwerty123", "action": "GET_NUMBER", "country": "russia", "service": "tg", "exceptionPhoneSet": {}}"#,
                "`exceptionPhoneSet` is not",
            ),
            (
                r#"{"key": "qwerty123", "action": "GET_NUMBER", "country": "russia", "service": "tg", "exceptionPhoneSet": [[]]}"#,
                "`exceptionPhoneSet` holds",
            ),
            (
                r#"{"key": "qwerty123", "action": "FINISH_ACTIVATION", "status": 3}"#,
                "needs `activationId`",
            ),
            (
                r#"{"key": "qwerty123", "action": "FINISH_ACTIVATION", "activationId": -1, "status": 3}"#,
                "needs `activationId`",
            ),
            (
                r#"{"key": "qwerty123", "action": "FINISH_ACTIVATION", "activationId": 1}"#,
                "needs `status`",
            ),
        ];
        for (body, expected) in cases {
            let refusal = parsed(body).unwrap_err();
            assert_eq!(
                (refusal.http_status, refusal.status),
                (400, "BAD_REQUEST"),
                "{body}"
            );
            assert!(
                refusal.error.contains(expected),
                "{body}: {}",
                refusal.error
            );
        }
    }

    #[test]
    fn unknown_actions_and_statuses() {
        let refusal = parsed(r#"{"key": "qwerty123", "action": "GET_BALANCE"}"#).unwrap_err();
        assert_eq!((refusal.http_status, refusal.status), (400, "BAD_ACTION"));
        assert!(refusal.error.contains("GET_BALANCE"), "{}", refusal.error);
        for status in [0, 2, 6, 8] {
            let body = format!(
                r#"{{"key": "qwerty123", "action": "FINISH_ACTIVATION", "activationId": 1, "status": {status}}}"#
            );
            let refusal = parsed(&body).unwrap_err();
            assert_eq!((refusal.http_status, refusal.status), (400, "BAD_STATUS"));
        }
    }

    #[test]
    fn refusals_are_json_with_a_status() {
        let reply = Refusal::bad_key().reply();
        assert_eq!(reply.status, 401);
        let body: Value = serde_json::from_slice(&reply.body).unwrap();
        assert_eq!(body["status"], "BAD_KEY");
        assert!(body["error"].is_string());
    }

    #[test]
    fn digits_as_numbers_only_when_they_survive() {
        assert_eq!(digits_value("79156537788", true), json!(79156537788_u64));
        assert_eq!(digits_value("79156537788", false), json!("79156537788"));
        assert_eq!(digits_value("07472190082", true), json!("07472190082"));
        assert_eq!(
            digits_value("123456789012345678901234", true),
            json!("123456789012345678901234")
        );
    }
}
