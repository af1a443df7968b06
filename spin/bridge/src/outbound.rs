//! Where an outgoing request goes, in the pieces `wasi:http` wants: scheme, authority and
//! path with query.

use url::Url;

#[derive(Debug, PartialEq)]
pub struct Target {
    pub https: bool,
    /// `host[:port]`, as the URL gives it.
    pub authority: String,
    /// Path and query, e.g. `/agent/api/getStatus?activationId=1`.
    pub path_with_query: String,
}

impl Target {
    /// The error names what is wrong, never the URL (its query may carry a key).
    pub fn parse(url: &str) -> Result<Self, String> {
        let url = Url::parse(url).map_err(|error| format!("the URL is invalid: {error}"))?;
        let https = match url.scheme() {
            "https" => true,
            "http" => false,
            other => return Err(format!("scheme `{other}` is not http or https")),
        };
        let host = url.host_str().ok_or("the URL has no host")?;
        let authority = match url.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_string(),
        };
        let path_with_query = match url.query() {
            Some(query) => format!("{}?{query}", url.path()),
            None => url.path().to_string(),
        };
        Ok(Target {
            https,
            authority,
            path_with_query,
        })
    }

    /// Another component of the application, through local service chaining.
    pub fn component(component: &str, path: &str) -> Self {
        Target {
            https: false,
            authority: format!("{component}.spin.internal"),
            path_with_query: path.to_string(),
        }
    }
}

/// Headers `wasi:http` sets itself or refuses from a guest; a delivery that names them
/// goes without them, as the transport decides them.
pub fn transport_header(name: &str) -> bool {
    [
        "host",
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "upgrade",
        "http2-settings",
        "content-length",
    ]
    .iter()
    .any(|forbidden| name.eq_ignore_ascii_case(forbidden))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_scheme_authority_and_path() {
        assert_eq!(
            Target::parse("https://smsbower.online/agent/api/getStatus?activationId=1&api_key=k")
                .unwrap(),
            Target {
                https: true,
                authority: "smsbower.online".into(),
                path_with_query: "/agent/api/getStatus?activationId=1&api_key=k".into(),
            }
        );
        assert_eq!(
            Target::parse("http://127.0.0.1:9000").unwrap(),
            Target {
                https: false,
                authority: "127.0.0.1:9000".into(),
                path_with_query: "/".into(),
            }
        );
        assert_eq!(
            Target::parse("http://[::1]:8080/x").unwrap().authority,
            "[::1]:8080"
        );
    }

    #[test]
    fn bad_urls_are_named_without_their_secrets() {
        let error = Target::parse("ftp://host/?api_key=s3cret").unwrap_err();
        assert!(
            error.contains("ftp") && !error.contains("s3cret"),
            "{error}"
        );
        assert!(Target::parse("not a url").is_err());
    }

    #[test]
    fn components_are_reached_by_service_chaining() {
        let target = Target::component("smsbower", "/.simrelay/event");
        assert_eq!(target.authority, "smsbower.spin.internal");
        assert!(!target.https);
    }

    #[test]
    fn transport_headers_are_left_to_the_runtime() {
        assert!(transport_header("Host"));
        assert!(transport_header("content-length"));
        assert!(!transport_header("content-type"));
    }
}
