//! What an incoming request is for: a webhook for the plugin, an event from an upstream
//! component, or a tick.
//!
//! Spin's router picks the component; webhook captures arrive as `spin-path-match-NAME`
//! headers. The bridge's own routes live under `/.simrelay/`: events only through local
//! service chaining, ticks from any scheduler (and from the outside only where the manifest
//! routes them).

use simrelay_core::auth::secrets_match;
use simrelay_core::model::{HttpRequest, Pairs};
use simrelay_core::routing::Pattern;

/// Where upstream components POST events (through `http://<component>.spin.internal`).
pub const EVENT_PATH: &str = "/.simrelay/event";
/// What a scheduler calls to retry deliveries and events and to run the plugin's tick.
pub const TICK_PATH: &str = "/.simrelay/tick";
/// Paths the bridge keeps for itself; a webhook never has one.
const INTERNAL_PREFIX: &str = "/.simrelay/";
/// The client address Spin gives requests that came through local service chaining
/// (Spin 3 and 4); a request from the network has a real one.
const CHAINED_CLIENT_ADDR: &str = "0.0.0.0:0";
/// Headers Spin adds about its routing; the plugin sees the sender's headers only.
const SPIN_HEADER_PREFIX: &str = "spin-";
const PATH_MATCH_PREFIX: &str = "spin-path-match-";

/// An HTTP request as the component received it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Incoming {
    pub method: String,
    pub path: String,
    pub query: String,
    /// Names in lower case, in the order received.
    pub headers: Pairs,
    pub body: Vec<u8>,
}

/// What a request is for.
#[derive(Clone, Debug, PartialEq)]
pub enum Purpose {
    Webhook,
    Event,
    Tick,
    /// Not served, with the status and the reason.
    Refused(u16, String),
}

impl Incoming {
    /// Decides what the request is for, for the instance named `instance`.
    pub fn purpose(&self, instance: &str) -> Purpose {
        let path = self.path.as_str();
        if !path.starts_with(INTERNAL_PREFIX) {
            return Purpose::Webhook;
        }
        let event = Pattern::parse(EVENT_PATH).expect("a valid pattern");
        let tick = Pattern::parse(TICK_PATH).expect("a valid pattern");
        let tick_for = Pattern::parse("/.simrelay/tick/{instance}").expect("a valid pattern");
        if event.matches(path).is_some() {
            if !self.chained() {
                return Purpose::Refused(
                    403,
                    "events come only from components of this application".into(),
                );
            }
            if !self.method.eq_ignore_ascii_case("POST") {
                return Purpose::Refused(405, format!("{EVENT_PATH} takes POST"));
            }
            return Purpose::Event;
        }
        if tick.matches(path).is_some() {
            return Purpose::Tick;
        }
        match tick_for.matches(path) {
            Some(captures) if captures.iter().any(|(_, name)| name == instance) => Purpose::Tick,
            Some(_) => Purpose::Refused(
                404,
                format!("this component serves instance `{instance}`: tick {TICK_PATH}/{instance}"),
            ),
            None => Purpose::Refused(404, format!("{path} is reserved for the bridge")),
        }
    }

    /// Whether the request came from another component through local service chaining.
    /// Spin appends its own `spin-client-addr` after any the sender put in, so the last
    /// one is Spin's.
    pub fn chained(&self) -> bool {
        self.headers
            .iter()
            .rev()
            .find(|(name, _)| name == "spin-client-addr")
            .is_some_and(|(_, address)| address == CHAINED_CLIENT_ADDR)
    }

    /// Whether a tick carries the token the instance wants, if it wants one.
    pub fn tick_authorized(&self, token: Option<&str>) -> bool {
        let Some(token) = token else {
            return true;
        };
        self.headers
            .iter()
            .filter(|(name, _)| name == "authorization")
            .filter_map(|(_, value)| value.strip_prefix("Bearer "))
            .any(|given| secrets_match(given.trim(), token))
    }

    /// The webhook as the plugin sees it: the route's captures from Spin's
    /// `spin-path-match-*` headers, and the sender's headers without Spin's.
    pub fn into_webhook(self) -> HttpRequest {
        let params = self
            .headers
            .iter()
            .filter_map(|(name, value)| {
                let capture = name.strip_prefix(PATH_MATCH_PREFIX)?;
                Some((capture.replace('-', "_"), value.clone()))
            })
            .collect();
        let headers = self
            .headers
            .into_iter()
            .filter(|(name, _)| !name.starts_with(SPIN_HEADER_PREFIX))
            .collect();
        HttpRequest {
            method: self.method,
            path: self.path,
            query: self.query,
            params,
            headers,
            body: self.body,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: &str, path: &str, headers: &[(&str, &str)]) -> Incoming {
        Incoming {
            method: method.into(),
            path: path.into(),
            query: "a=1".into(),
            headers: headers
                .iter()
                .map(|(name, value)| (name.to_string(), value.to_string()))
                .collect(),
            body: b"{}".to_vec(),
        }
    }

    const CHAINED: (&str, &str) = ("spin-client-addr", "0.0.0.0:0");
    const OUTSIDE: (&str, &str) = ("spin-client-addr", "127.0.0.1:50312");

    #[test]
    fn webhooks_are_every_path_outside_the_reserved_prefix() {
        let purpose = |path: &str| request("POST", path, &[OUTSIDE]).purpose("ejoin");
        assert_eq!(purpose("/api/k/webhook"), Purpose::Webhook);
        assert_eq!(purpose("/smsbower"), Purpose::Webhook);
        assert_eq!(purpose("/.simrelay"), Purpose::Webhook);
        assert!(matches!(
            purpose("/.simrelay/other"),
            Purpose::Refused(404, _)
        ));
    }

    #[test]
    fn events_come_only_through_service_chaining() {
        assert_eq!(
            request("POST", EVENT_PATH, &[CHAINED]).purpose("bower"),
            Purpose::Event
        );
        assert!(matches!(
            request("POST", EVENT_PATH, &[OUTSIDE]).purpose("bower"),
            Purpose::Refused(403, _)
        ));
        // A sender cannot pass for a chained request: Spin's own header comes last.
        assert!(matches!(
            request("POST", EVENT_PATH, &[CHAINED, OUTSIDE]).purpose("bower"),
            Purpose::Refused(403, _)
        ));
        assert!(matches!(
            request("POST", EVENT_PATH, &[]).purpose("bower"),
            Purpose::Refused(403, _)
        ));
        assert!(matches!(
            request("GET", EVENT_PATH, &[CHAINED]).purpose("bower"),
            Purpose::Refused(405, _)
        ));
    }

    #[test]
    fn ticks_name_no_instance_or_this_one() {
        let purpose = |path: &str| request("POST", path, &[OUTSIDE]).purpose("bower");
        assert_eq!(purpose(TICK_PATH), Purpose::Tick);
        assert_eq!(purpose("/.simrelay/tick/bower"), Purpose::Tick);
        let Purpose::Refused(404, reason) = purpose("/.simrelay/tick/ejoin") else {
            panic!("a tick for another instance is refused");
        };
        assert!(reason.contains("/.simrelay/tick/bower"), "{reason}");
    }

    #[test]
    fn a_tick_token_is_a_bearer_token_compared_in_constant_time() {
        let with = |value: &str| request("POST", TICK_PATH, &[("authorization", value)]);
        assert!(with("Bearer t0k3n").tick_authorized(Some("t0k3n")));
        assert!(!with("Bearer t0k3").tick_authorized(Some("t0k3n")));
        assert!(!with("t0k3n").tick_authorized(Some("t0k3n")));
        assert!(request("POST", TICK_PATH, &[]).tick_authorized(None));
        assert!(!request("POST", TICK_PATH, &[]).tick_authorized(Some("t0k3n")));
    }

    #[test]
    fn the_plugin_sees_captures_and_the_senders_headers() {
        let webhook = request(
            "POST",
            "/api/s3cret/webhook",
            &[
                ("content-type", "application/json"),
                ("spin-path-match-key", "s3cret"),
                ("spin-full-url", "http://127.0.0.1:3000/api/s3cret/webhook"),
                OUTSIDE,
            ],
        )
        .into_webhook();
        assert_eq!(webhook.params, [("key".to_string(), "s3cret".to_string())]);
        assert_eq!(
            webhook.headers,
            [("content-type".to_string(), "application/json".to_string())]
        );
        assert_eq!(
            (
                webhook.method.as_str(),
                webhook.path.as_str(),
                webhook.query.as_str()
            ),
            ("POST", "/api/s3cret/webhook", "a=1")
        );
        assert_eq!(webhook.body, b"{}");
    }
}
