//! HTTP details adapters share: headers, request builders, and the rate-limit headers
//! servers answer with (`Retry-After`, `X-RateLimit-*`).

use crate::encoding::{form_decode, form_encode};
use crate::time::{parse_http_date, unix_time_ms};
use crate::{HttpRequest, HttpResponse, OutgoingRequest};

/// The first value of header `name` (lower case) in `headers`.
pub fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(key, _)| key.eq_ignore_ascii_case(name))
        .map(|(_, value)| value.trim())
}

impl HttpRequest {
    /// The value of a request header, by name in any case.
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }

    /// The decoded pairs of the query string.
    pub fn query_pairs(&self) -> Vec<(String, String)> {
        form_decode(&self.query)
    }
}

impl HttpResponse {
    /// The value of a response header, by name in any case.
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }

    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

impl OutgoingRequest {
    /// A GET of `url` with `query` appended, percent-encoded (`+` as `%2B`).
    pub fn get<K: AsRef<str>, V: AsRef<str>>(url: &str, query: &[(K, V)]) -> Self {
        let url = match (query.is_empty(), url.contains('?')) {
            (true, _) => url.to_owned(),
            (false, false) => format!("{url}?{}", form_encode(query)),
            (false, true) => format!("{url}&{}", form_encode(query)),
        };
        OutgoingRequest {
            method: "GET".into(),
            url,
            headers: Vec::new(),
            body: Vec::new(),
            timeout_ms: None,
        }
    }

    /// A POST of an `application/x-www-form-urlencoded` body.
    pub fn post_form<K: AsRef<str>, V: AsRef<str>>(url: &str, fields: &[(K, V)]) -> Self {
        OutgoingRequest {
            method: "POST".into(),
            url: url.to_owned(),
            headers: vec![(
                "content-type".into(),
                "application/x-www-form-urlencoded".into(),
            )],
            body: form_encode(fields).into_bytes(),
            timeout_ms: None,
        }
    }

    /// The same request with one more header.
    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }
}

/// How long `Retry-After` asks to wait: delta seconds or an HTTP date.
pub fn retry_after_ms(value: &str, now_ms: u64) -> Option<u64> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(seconds.saturating_mul(1000));
    }
    Some(parse_http_date(value)?.saturating_sub(now_ms))
}

/// What a server's rate-limit headers say.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RateLimit {
    /// `X-RateLimit-Limit`: requests allowed per window.
    pub limit: Option<u64>,
    /// `X-RateLimit-Remaining`: requests left in this window.
    pub remaining: Option<u64>,
    /// When requests may resume: from `Retry-After`, else from `X-RateLimit-Reset` (Unix time,
    /// or seconds from now when small).
    pub resume_at_ms: Option<u64>,
}

impl RateLimit {
    pub fn from_headers(headers: &[(String, String)], now_ms: u64) -> Self {
        let number = |name: &str| header(headers, name)?.parse::<u64>().ok();
        let retry_after = header(headers, "retry-after")
            .and_then(|value| retry_after_ms(value, now_ms))
            .map(|wait| now_ms.saturating_add(wait));
        let reset = number("x-ratelimit-reset").and_then(|reset| {
            // Servers send either an instant or a number of seconds to wait.
            if reset < 1_000_000_000 {
                Some(now_ms.saturating_add(reset.saturating_mul(1000)))
            } else {
                unix_time_ms(reset)
            }
        });
        RateLimit {
            limit: number("x-ratelimit-limit"),
            remaining: number("x-ratelimit-remaining"),
            resume_at_ms: retry_after.or(reset),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn builds_requests_with_encoded_queries() {
        let get = OutgoingRequest::get("https://x/api", &[("sendto", "+49 1"), ("a", "b")]);
        assert_eq!(get.url, "https://x/api?sendto=%2B49%201&a=b");
        let get = OutgoingRequest::get("https://x/api?v=1", &[("a", "b")]);
        assert_eq!(get.url, "https://x/api?v=1&a=b");
        let none: [(&str, &str); 0] = [];
        assert_eq!(OutgoingRequest::get("https://x", &none).url, "https://x");
        let post = OutgoingRequest::post_form("https://x", &[("body", "1+1")])
            .with_header("accept", "application/json");
        assert_eq!(post.body, b"body=1%2B1");
        assert_eq!(post.headers.len(), 2);
    }

    #[test]
    fn retry_after_in_seconds_or_as_a_date() {
        assert_eq!(retry_after_ms("30", 0), Some(30_000));
        assert_eq!(
            retry_after_ms("Sun, 06 Nov 1994 08:49:37 GMT", 784_111_767_000),
            Some(10_000)
        );
        assert_eq!(
            retry_after_ms("Sun, 06 Nov 1994 08:49:37 GMT", u64::MAX),
            Some(0)
        );
        assert_eq!(retry_after_ms("soon", 0), None);
    }

    #[test]
    fn rate_limit_headers() {
        let now = 1_700_000_000_000;
        let limit = RateLimit::from_headers(
            &headers(&[
                ("X-RateLimit-Limit", "30"),
                ("x-ratelimit-remaining", "0"),
                ("x-ratelimit-reset", "1700000042"),
            ]),
            now,
        );
        assert_eq!(limit.limit, Some(30));
        assert_eq!(limit.remaining, Some(0));
        assert_eq!(limit.resume_at_ms, Some(1_700_000_042_000));
        let limit = RateLimit::from_headers(
            &headers(&[("retry-after", "7"), ("x-ratelimit-reset", "1700000042")]),
            now,
        );
        assert_eq!(limit.resume_at_ms, Some(now + 7_000));
        let limit = RateLimit::from_headers(&headers(&[("x-ratelimit-reset", "12")]), now);
        assert_eq!(limit.resume_at_ms, Some(now + 12_000));
        assert_eq!(RateLimit::from_headers(&[], now), RateLimit::default());
    }
}
