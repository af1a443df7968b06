//! Encodings providers use loosely: base64 with or without padding and line breaks, and
//! `application/x-www-form-urlencoded` query strings and bodies.

use base64::Engine as _;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};

/// Standard base64 that tolerates missing or partial padding and stray trailing bits.
const LENIENT_BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true),
);

/// Decodes base64 the way gateway firmware writes it: line breaks and spaces anywhere,
/// padding present, partial or missing, and the URL-safe `-`/`_` for `+`/`/`. `None` when
/// what is left is still not base64.
pub fn base64_lenient(encoded: &str) -> Option<Vec<u8>> {
    let plain = !encoded
        .bytes()
        .any(|byte| byte.is_ascii_whitespace() || byte == b'-' || byte == b'_');
    if plain {
        return LENIENT_BASE64.decode(encoded).ok();
    }
    let compact: String = encoded
        .chars()
        .filter(|c| !c.is_ascii_whitespace())
        .map(|c| match c {
            '-' => '+',
            '_' => '/',
            other => other,
        })
        .collect();
    LENIENT_BASE64.decode(compact).ok()
}

/// Encodes bytes as standard, padded base64.
pub fn base64_encode(bytes: impl AsRef<[u8]>) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Percent-encodes everything but RFC 3986's unreserved characters, so `+` becomes `%2B`
/// (a bare `+` in a query means a space to most servers) and a space becomes `%20`.
pub fn percent_encode(text: &str) -> String {
    let mut encoded = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

/// `name=value&…` with both sides percent-encoded, for a query string or a form body.
pub fn form_encode<K: AsRef<str>, V: AsRef<str>>(pairs: &[(K, V)]) -> String {
    pairs
        .iter()
        .map(|(name, value)| {
            format!(
                "{}={}",
                percent_encode(name.as_ref()),
                percent_encode(value.as_ref())
            )
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// Reverses percent-encoding; `+` means a space when `plus_is_space`. A `%` not followed by
/// two hex digits is kept as it is; bytes that are not UTF-8 become U+FFFD.
pub fn percent_decode(text: &str, plus_is_space: bool) -> String {
    let bytes = text.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        let byte = bytes[index];
        let escaped = (byte == b'%')
            .then(|| Some((hex(*bytes.get(index + 1)?)?, hex(*bytes.get(index + 2)?)?)))
            .flatten();
        match (byte, escaped) {
            (_, Some((high, low))) => {
                decoded.push(high << 4 | low);
                index += 3;
                continue;
            }
            (b'+', None) if plus_is_space => decoded.push(b' '),
            (other, None) => decoded.push(other),
        }
        index += 1;
    }
    String::from_utf8_lossy(&decoded).into_owned()
}

fn hex(digit: u8) -> Option<u8> {
    char::from(digit)
        .to_digit(16)
        .and_then(|value| u8::try_from(value).ok())
}

/// The pairs of a query string or `application/x-www-form-urlencoded` body, in order.
/// Empty segments are skipped; a segment without `=` is a name with an empty value.
pub fn form_decode(text: &str) -> Vec<(String, String)> {
    text.split('&')
        .filter(|segment| !segment.is_empty())
        .map(|segment| {
            let (name, value) = segment.split_once('=').unwrap_or((segment, ""));
            (percent_decode(name, true), percent_decode(value, true))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn base64_with_breaks_padding_and_url_alphabet() {
        assert_eq!(base64_lenient("SGVsbG8gV29ybGQ=").unwrap(), b"Hello World");
        assert_eq!(
            base64_lenient("SGVs\r\nbG8gV29y bGQ").unwrap(),
            b"Hello World"
        );
        assert_eq!(base64_lenient("SGk").unwrap(), b"Hi");
        assert_eq!(base64_lenient("SGk=").unwrap(), b"Hi");
        assert_eq!(base64_lenient("-_8=").unwrap(), [0xfb, 0xff]);
        assert_eq!(base64_lenient("").unwrap(), b"");
        for broken in ["***", "%%%not base64%%%", "S", "SGVsbG8=X"] {
            assert_eq!(base64_lenient(broken), None, "{broken}");
        }
        assert_eq!(base64_encode("Hi"), "SGk=");
    }

    #[test]
    fn percent_encoding_keeps_plus_signs_apart_from_spaces() {
        assert_eq!(percent_encode("+49 157"), "%2B49%20157");
        assert_eq!(percent_encode("a-b.c_d~"), "a-b.c_d~");
        assert_eq!(percent_encode("ж"), "%D0%B6");
        assert_eq!(
            form_encode(&[("sendto", "+4915752982212"), ("body", "a&b=c")]),
            "sendto=%2B4915752982212&body=a%26b%3Dc"
        );
    }

    #[test]
    fn form_decoding() {
        assert_eq!(
            form_decode("address=%2B491575&body=Hi+there&&flag&x=%zz%4"),
            [
                ("address".to_owned(), "+491575".to_owned()),
                ("body".to_owned(), "Hi there".to_owned()),
                ("flag".to_owned(), String::new()),
                ("x".to_owned(), "%zz%4".to_owned()),
            ]
        );
        assert_eq!(percent_decode("a+b%2B", false), "a+b+");
        assert_eq!(percent_decode("%D0%B6%FF", true), "ж\u{fffd}");
    }

    proptest! {
        #[test]
        fn base64_round_trips_and_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64),
                                              noise in ".{0,40}") {
            prop_assert_eq!(base64_lenient(&base64_encode(&bytes)), Some(bytes));
            let _ = base64_lenient(&noise);
        }

        #[test]
        fn form_round_trips(pairs in proptest::collection::vec((".{1,12}", ".{0,12}"), 0..6)) {
            let encoded = form_encode(&pairs);
            prop_assert_eq!(form_decode(&encoded), pairs);
        }

        #[test]
        fn decoding_arbitrary_text_never_panics(text in ".{0,64}") {
            let _ = form_decode(&text);
            let _ = percent_decode(&text, false);
        }
    }
}
