//! Partial comparison of what a plugin did with what a fixture expects, and differences
//! shown the way `cargo test` shows a failed `assert_eq!`: where, expected, actual.

use std::fmt;

use serde_json::Value;

/// One place where the actual output differs from the expected one.
#[derive(Debug, PartialEq)]
pub struct Difference {
    /// Where, e.g. `events[0].SimStatusChanged.state`.
    pub path: String,
    pub expected: Value,
    /// `None`: the field is missing.
    pub actual: Option<Value>,
}

impl fmt::Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "  at {}", self.path)?;
        writeln!(f, "    expected: {}", self.expected)?;
        match &self.actual {
            Some(actual) => writeln!(f, "      actual: {actual}"),
            None => writeln!(f, "      actual: (missing)"),
        }
    }
}

/// Where `actual` differs from `expected`, which may leave things out:
/// - an object matches when it has every expected field, each matching;
/// - a list matches when it has exactly as many items, each matching in order;
/// - a string matches a value of another type when it is that value's JSON text, so a
///   body may be expected as the text it was sent as;
/// - anything else must be equal.
pub fn differences(path: &str, expected: &Value, actual: &Value) -> Vec<Difference> {
    let mut found = Vec::new();
    compare(path, expected, actual, &mut found);
    found
}

fn compare(path: &str, expected: &Value, actual: &Value, found: &mut Vec<Difference>) {
    let differ = |found: &mut Vec<Difference>| {
        found.push(Difference {
            path: path.to_string(),
            expected: expected.clone(),
            actual: Some(actual.clone()),
        })
    };
    match (expected, actual) {
        (Value::Object(expected), Value::Object(actual)) => {
            for (name, value) in expected {
                let at = join(path, name);
                match actual.get(name) {
                    Some(actual) => compare(&at, value, actual, found),
                    None => found.push(Difference {
                        path: at,
                        expected: value.clone(),
                        actual: None,
                    }),
                }
            }
        }
        (Value::Array(expected_items), Value::Array(actual_items)) => {
            if expected_items.len() != actual_items.len() {
                return found.push(Difference {
                    path: format!("{path} (expected {} items)", expected_items.len()),
                    expected: Value::Array(expected_items.clone()),
                    actual: Some(Value::Array(actual_items.clone())),
                });
            }
            for (index, (expected, actual)) in expected_items.iter().zip(actual_items).enumerate() {
                compare(&format!("{path}[{index}]"), expected, actual, found);
            }
        }
        (expected, actual) => {
            if !same_value(expected, actual) {
                differ(found);
            }
        }
    }
}

/// Equal, or a string that is the JSON text of the other value.
fn same_value(expected: &Value, actual: &Value) -> bool {
    match expected {
        Value::String(text) if !actual.is_string() => {
            serde_json::from_str::<Value>(text).is_ok_and(|value| &value == actual)
        }
        _ => expected == actual,
    }
}

fn join(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_string()
    } else {
        format!("{path}.{name}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn objects_match_in_part_and_lists_in_full() {
        let actual = json!({
            "status": 200,
            "body": { "status": "SUCCESS", "number": "79001234567" },
            "headers": { "content-type": "application/json" },
        });
        assert!(
            differences(
                "reply",
                &json!({ "body": { "status": "SUCCESS" } }),
                &actual
            )
            .is_empty()
        );
        assert!(differences("reply", &json!({}), &actual).is_empty());

        let found = differences(
            "reply",
            &json!({ "status": 201, "body": { "activationId": 1 } }),
            &actual,
        );
        assert_eq!(
            found,
            [
                Difference {
                    path: "reply.body.activationId".into(),
                    expected: json!(1),
                    actual: None,
                },
                Difference {
                    path: "reply.status".into(),
                    expected: json!(201),
                    actual: Some(json!(200)),
                },
            ]
        );
        let found = differences("events", &json!([]), &json!([{ "A": 1 }]));
        assert_eq!(found[0].path, "events (expected 0 items)");
        assert!(differences("events", &json!([{}]), &json!([{ "A": 1 }])).is_empty());
    }

    #[test]
    fn a_string_matches_the_value_it_is_the_json_text_of() {
        let body = json!({ "message": "Ok" });
        assert!(differences("body", &json!(r#"{"message": "Ok"}"#), &body).is_empty());
        assert_eq!(differences("body", &json!("Ok"), &body).len(), 1);
        assert!(differences("body", &json!("plain text"), &json!("plain text")).is_empty());
        assert!(differences("verdict", &json!("Delivered"), &json!("Delivered")).is_empty());
    }

    #[test]
    fn differences_read_like_a_failed_assertion() {
        let difference = Difference {
            path: "events[0].SimStatusChanged.state".into(),
            expected: json!("Registered"),
            actual: Some(json!("NoSim")),
        };
        assert_eq!(
            difference.to_string(),
            "  at events[0].SimStatusChanged.state\n    expected: \"Registered\"\n      actual: \"NoSim\"\n"
        );
    }
}
