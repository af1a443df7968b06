//! Phone numbers as marketplaces and gateways exchange them: international digits with no
//! `+`, e.g. `79001234567`.
//!
//! Gateways write the same number as `+79001234567`, `0079001234567` or
//! `+7 (900) 123-45-67`; marketplaces want `79001234567` and match prefixes such as
//! `exceptionPhoneSet` against those digits. Nothing here guesses a country code: a national
//! number (`89001234567`) stays what it is.

/// The international digits of `raw`: separators (spaces, `-`, `.`, `(`, `)`) dropped, a
/// leading `+` or `00` removed. `None` for text that is not a number, such as an
/// alphanumeric sender (`"MyBank"`) or an empty string.
///
/// ```
/// use simrelay_sdk::phone::international_digits;
/// assert_eq!(international_digits("+7 (900) 123-45-67").as_deref(), Some("79001234567"));
/// assert_eq!(international_digits("0044 7472 190082").as_deref(), Some("447472190082"));
/// assert_eq!(international_digits("MyBank"), None);
/// ```
pub fn international_digits(raw: &str) -> Option<String> {
    let trimmed = raw.trim();
    let (plus, rest) = match trimmed.strip_prefix('+') {
        Some(rest) => (true, rest),
        None => (false, trimmed),
    };
    let mut digits = String::with_capacity(rest.len());
    for c in rest.chars() {
        match c {
            '0'..='9' => digits.push(c),
            ' ' | '-' | '.' | '(' | ')' => {}
            _ => return None,
        }
    }
    // `00` is the international call prefix; after a `+` it would be part of the number.
    let digits = match digits.strip_prefix("00") {
        Some(international) if !plus => international.to_owned(),
        _ => digits,
    };
    (!digits.is_empty()).then_some(digits)
}

/// Whether two ways of writing a number name the same number.
pub fn same_number(a: &str, b: &str) -> bool {
    match (international_digits(a), international_digits(b)) {
        (Some(a), Some(b)) => a == b,
        _ => false,
    }
}

/// Whether `number` starts with any of `prefixes`, all of them read as international digits
/// (`+44742` matches `447421234567`). Prefixes that are not numbers match nothing, so a
/// stray empty entry in an exclusion list never excludes every number.
pub fn starts_with_any<'a>(number: &str, prefixes: impl IntoIterator<Item = &'a str>) -> bool {
    let Some(number) = international_digits(number) else {
        return false;
    };
    prefixes
        .into_iter()
        .filter_map(international_digits)
        .any(|prefix| number.starts_with(&prefix))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn international_forms_become_digits() {
        for raw in [
            "79001234567",
            "+79001234567",
            "0079001234567",
            " +7 (900) 123-45-67 ",
            "+7.900.123.45.67",
        ] {
            assert_eq!(
                international_digits(raw).as_deref(),
                Some("79001234567"),
                "{raw}"
            );
        }
    }

    #[test]
    fn what_is_not_a_number_is_none() {
        for raw in ["", " ", "+", "00", "MyBank", "+7900abc", "7900#1", "++7900"] {
            assert_eq!(international_digits(raw), None, "{raw}");
        }
    }

    #[test]
    fn national_numbers_are_kept_as_they_are() {
        assert_eq!(
            international_digits("89001234567").as_deref(),
            Some("89001234567")
        );
        assert_eq!(
            international_digits("07472190082").as_deref(),
            Some("07472190082")
        );
        // `+00…` is malformed but harmless: the zeros after a `+` are kept.
        assert_eq!(international_digits("+0012").as_deref(), Some("0012"));
    }

    #[test]
    fn same_number_across_notations() {
        assert!(same_number("+447472190082", "00447472190082"));
        assert!(same_number("447472190082", "+44 7472 190082"));
        assert!(!same_number("447472190082", "447472190083"));
        assert!(!same_number("", ""));
        assert!(!same_number("Bank", "Bank"));
    }

    #[test]
    fn prefixes_match_the_start_of_the_digits() {
        let excluded = ["44742", "+44740"];
        assert!(starts_with_any("+447421234567", excluded));
        assert!(starts_with_any("447401234567", excluded));
        assert!(!starts_with_any("447471234567", excluded));
        // A prefix longer than the number cannot match it.
        assert!(!starts_with_any("4474", excluded));
        // Empty or non-numeric prefixes exclude nothing.
        assert!(!starts_with_any("447421234567", ["", "abc", " "]));
        assert!(!starts_with_any("not a number", ["4"]));
        assert!(!starts_with_any("447421234567", []));
    }
}
