//! Reading the loosely typed values Ejoin firmware puts in its JSON.

use serde_json::Value;

/// A field firmware sends as a string or a number; empty or null means absent.
pub(crate) fn text(value: &Value) -> Option<String> {
    match value {
        Value::String(text) => Some(text.trim())
            .filter(|text| !text.is_empty())
            .map(str::to_owned),
        Value::Number(number) => Some(number.to_string()),
        _ => None,
    }
}

/// A numeric code sent as a number or as a string that starts with one, e.g. `"3 registered"`.
pub(crate) fn code(value: &Value) -> Option<u64> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn text_accepts_strings_and_numbers() {
        assert_eq!(text(&json!(" 1.01 ")), Some("1.01".into()));
        assert_eq!(text(&json!(12)), Some("12".into()));
        assert_eq!(text(&json!("")), None);
        assert_eq!(text(&json!(null)), None);
        assert_eq!(text(&json!([1])), None);
    }

    #[test]
    fn code_reads_leading_digits() {
        assert_eq!(code(&json!(1)), Some(1));
        assert_eq!(code(&json!("3 registered")), Some(3));
        assert_eq!(code(&json!("16")), Some(16));
        assert_eq!(code(&json!("registered")), None);
        assert_eq!(code(&json!(-1)), None);
        assert_eq!(code(&json!(null)), None);
    }
}
