//! Reading the loosely typed values providers put in their JSON: numbers as strings, strings
//! as numbers, booleans as `1`/`0`, lists as objects keyed by id.

use serde_json::Value;

/// A field sent as a string or a number, trimmed; empty or null means absent.
pub fn text(value: &Value) -> Option<String> {
    match value {
        Value::String(text) => Some(text.trim())
            .filter(|text| !text.is_empty())
            .map(str::to_owned),
        Value::Number(number) => Some(number.to_string()),
        _ => None,
    }
}

/// [`text`] of the member `name` of an object; absent for anything else.
pub fn field(object: &Value, name: &str) -> Option<String> {
    object.get(name).and_then(text)
}

/// The first of `names` that is present, as [`text`].
pub fn first_field(object: &Value, names: &[&str]) -> Option<String> {
    names.iter().find_map(|name| field(object, name))
}

/// A non-negative code sent as a number or as text that starts with one, e.g. `"3 registered"`.
pub fn leading_number(value: &Value) -> Option<u64> {
    match value {
        Value::Number(number) => number.as_u64(),
        Value::String(text) => {
            let text = text.trim_start();
            let digits = text.len() - text.trim_start_matches(|c: char| c.is_ascii_digit()).len();
            text[..digits].parse().ok()
        }
        _ => None,
    }
}

/// A signed integer sent as a number (a whole float included) or as text.
pub fn integer(value: &Value) -> Option<i64> {
    match value {
        Value::Number(number) => number.as_i64().or_else(|| {
            let float = number.as_f64()?;
            (float.fract() == 0.0 && float.abs() < 9.0e15).then_some(float as i64)
        }),
        Value::String(text) => text.trim().parse().ok(),
        _ => None,
    }
}

/// `true`/`false`, `1`/`0`, or those as text (`"yes"`/`"no"` too).
pub fn boolean(value: &Value) -> Option<bool> {
    match value {
        Value::Bool(flag) => Some(*flag),
        _ => match text(value)?.to_ascii_lowercase().as_str() {
            "1" | "true" | "yes" => Some(true),
            "0" | "false" | "no" => Some(false),
            _ => None,
        },
    }
}

/// The items of a list, or the values of an object keyed by id (`{"62050971": {…}}`); none
/// for anything else.
pub fn items(value: &Value) -> Vec<&Value> {
    match value {
        Value::Array(items) => items.iter().collect(),
        Value::Object(members) => members.values().collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn text_accepts_strings_and_numbers() {
        assert_eq!(text(&json!(" 1.01 ")), Some("1.01".into()));
        assert_eq!(text(&json!(12)), Some("12".into()));
        assert_eq!(text(&json!(1.5)), Some("1.5".into()));
        assert_eq!(text(&json!("")), None);
        assert_eq!(text(&json!(null)), None);
        assert_eq!(text(&json!([1])), None);
        let object = json!({ "a": " ", "b": 2 });
        assert_eq!(field(&object, "b"), Some("2".into()));
        assert_eq!(first_field(&object, &["a", "b"]), Some("2".into()));
        assert_eq!(field(&json!([1]), "a"), None);
    }

    #[test]
    fn numbers_and_flags() {
        assert_eq!(leading_number(&json!(1)), Some(1));
        assert_eq!(leading_number(&json!("3 registered")), Some(3));
        assert_eq!(leading_number(&json!(" 16")), Some(16));
        assert_eq!(leading_number(&json!("registered")), None);
        assert_eq!(leading_number(&json!(-1)), None);
        assert_eq!(leading_number(&json!(null)), None);
        assert_eq!(integer(&json!("-71")), Some(-71));
        assert_eq!(integer(&json!(23.0)), Some(23));
        assert_eq!(integer(&json!(23.5)), None);
        assert_eq!(boolean(&json!(1)), Some(true));
        assert_eq!(boolean(&json!("False")), Some(false));
        assert_eq!(boolean(&json!("maybe")), None);
    }

    #[test]
    fn items_of_lists_and_keyed_objects() {
        assert_eq!(items(&json!([1, 2])).len(), 2);
        assert_eq!(items(&json!({ "7": { "id": 7 } }))[0]["id"], 7);
        assert!(items(&json!("x")).is_empty());
    }

    proptest! {
        #[test]
        fn arbitrary_text_never_panics(text in ".{0,24}") {
            let value = Value::String(text);
            let _ = (leading_number(&value), integer(&value), boolean(&value), super::text(&value));
        }
    }
}
