//! Webhook keys the host checks itself, before it reads a body or calls a plugin.

use crate::model::{KeySource, Pairs, WebhookKey};

/// Compares a secret someone sent with the expected one in time that depends only on the
/// length of what was sent, so answer times reveal neither how much of a guess was right
/// nor how long the secret is.
pub fn secrets_match(given: &str, expected: &str) -> bool {
    let (given, expected) = (given.as_bytes(), expected.as_bytes());
    let difference =
        given
            .iter()
            .enumerate()
            .fold(given.len() ^ expected.len(), |difference, (index, byte)| {
                // Past the end of the expected secret, compare against a byte that cannot match.
                let other = expected.get(index).map_or(!*byte, |b| *b);
                difference | usize::from(byte ^ other)
            });
    difference == 0
}

/// What the host knows of a request before reading its body.
pub struct RequestHead<'a> {
    pub params: &'a Pairs,
    pub headers: &'a Pairs,
    /// The raw query string, without `?`.
    pub query: &'a str,
}

/// Whether the request carries the key the instance's settings expect. A missing setting
/// matches nothing, so a misconfigured instance is closed rather than open.
pub fn key_matches(
    key: &WebhookKey,
    settings: &[(String, String)],
    head: &RequestHead<'_>,
) -> bool {
    let expected = settings
        .iter()
        .find(|(name, _)| *name == key.setting)
        .map(|(_, value)| value.as_str())
        .filter(|value| !value.is_empty());
    let given = match &key.source {
        KeySource::Capture(name) => lookup(head.params, name, false),
        KeySource::Header(name) => lookup(head.headers, name, true),
        KeySource::Query(name) => form_urlencoded::parse(head.query.as_bytes())
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.into_owned()),
    };
    match (given, expected) {
        (Some(given), Some(expected)) => secrets_match(&given, expected),
        _ => false,
    }
}

fn lookup(pairs: &Pairs, name: &str, ignore_case: bool) -> Option<String> {
    pairs
        .iter()
        .find(|(key, _)| {
            if ignore_case {
                key.eq_ignore_ascii_case(name)
            } else {
                key == name
            }
        })
        .map(|(_, value)| value.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::HttpReply;

    #[test]
    fn secrets_match_only_when_equal() {
        assert!(secrets_match("abc", "abc"));
        assert!(!secrets_match("abd", "abc"));
        assert!(!secrets_match("ab", "abc"));
        assert!(!secrets_match("abcd", "abc"));
        assert!(!secrets_match("", "abc"));
        assert!(secrets_match("", ""));
    }

    fn key(source: KeySource) -> WebhookKey {
        WebhookKey {
            source,
            setting: "api_key".into(),
            rejection: HttpReply::default(),
        }
    }

    fn pairs(items: &[(&str, &str)]) -> Pairs {
        items
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn finds_the_key_where_the_plugin_says() {
        let settings = pairs(&[("api_key", "s e+cret")]);
        let params = pairs(&[("key", "s e+cret")]);
        let headers = pairs(&[("X-Api-Key", "s e+cret")]);
        let head = RequestHead {
            params: &params,
            headers: &headers,
            query: "a=1&token=s%20e%2Bcret",
        };
        assert!(key_matches(
            &key(KeySource::Capture("key".into())),
            &settings,
            &head
        ));
        assert!(key_matches(
            &key(KeySource::Header("x-api-key".into())),
            &settings,
            &head
        ));
        assert!(key_matches(
            &key(KeySource::Query("token".into())),
            &settings,
            &head
        ));
        assert!(!key_matches(
            &key(KeySource::Query("a".into())),
            &settings,
            &head
        ));
        assert!(!key_matches(
            &key(KeySource::Capture("none".into())),
            &settings,
            &head
        ));
    }

    #[test]
    fn an_unset_expected_key_matches_nothing() {
        let empty = Pairs::new();
        let blank = pairs(&[("api_key", "")]);
        let params = pairs(&[("key", "")]);
        let head = RequestHead {
            params: &params,
            headers: &empty,
            query: "",
        };
        let by_capture = key(KeySource::Capture("key".into()));
        assert!(!key_matches(&by_capture, &empty, &head));
        assert!(!key_matches(&by_capture, &blank, &head));
    }
}
