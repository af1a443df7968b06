//! Performs the HTTP deliveries plugins ask for, only to the hosts their instance allows.
//!
//! Redirects are never followed: a 3xx goes back to the plugin like any other answer, so a
//! request (with its partner key and SMS text) never reaches a host the allow-list did not
//! name. Each destination has its own concurrency limit, so a slow or dead provider holds
//! only its own deliveries back, and one that comes back after an outage gets its backlog
//! a few requests at a time rather than all at once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Result, bail};
use simrelay_core::retry::{DeliveryState, failure_backoff_ms};
use tokio::sync::Semaphore;
use tracing::{Instrument, info_span, warn};
use url::{Host, Url};

use crate::model::{DeliveryOutcome, HttpResponse, OutgoingRequest};
use crate::relay::{Relay, Submitted};

/// Per-attempt timeout when the plugin names none.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Response bodies are read up to this; the rest is never read.
pub const MAX_RESPONSE_BODY: usize = 256 * 1024;
/// Attempts in flight at once across all destinations: a bound on sockets and memory.
const MAX_IN_FLIGHT: usize = 1024;

/// The schemes deliveries may use.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Scheme {
    Http,
    Https,
}

/// One allow-list entry.
#[derive(Debug, PartialEq)]
struct Allowed {
    /// Lower case; IPv6 addresses without brackets.
    host: String,
    /// `None`: http or https.
    scheme: Option<Scheme>,
    /// `None`: any port.
    port: Option<u16>,
}

/// The destinations an instance may reach.
#[derive(Debug, Default)]
pub struct AllowList {
    entries: Vec<Allowed>,
}

fn scheme(name: &str) -> Option<Scheme> {
    match name {
        "http" => Some(Scheme::Http),
        "https" => Some(Scheme::Https),
        _ => None,
    }
}

/// A URL's host as the allow-list compares it.
fn host_name(host: Host<&str>) -> String {
    match host {
        Host::Domain(domain) => domain.to_ascii_lowercase(),
        Host::Ipv4(address) => address.to_string(),
        Host::Ipv6(address) => address.to_string(),
    }
}

impl AllowList {
    /// Entries are a URL (`https://host[:port]`: that scheme, that port or the scheme's
    /// default), `host:port` (http or https on that port) or `host` (http or https on any
    /// port). IPv6 addresses go in brackets where a port follows: `[::1]:9000`.
    pub fn parse(entries: &[String]) -> Result<Self> {
        let entries = entries
            .iter()
            .map(|entry| {
                let url = if entry.contains("://") {
                    Url::parse(entry)?
                } else {
                    // A bare IPv6 address has colons but no brackets.
                    let bracketed = if entry.matches(':').count() > 1 && !entry.starts_with('[') {
                        format!("[{entry}]")
                    } else {
                        entry.clone()
                    };
                    Url::parse(&format!("any://{bracketed}"))?
                };
                let Some(host) = url.host() else {
                    bail!("`{entry}` has no host");
                };
                let scheme = match url.scheme() {
                    "any" => None,
                    name => Some(
                        scheme(name)
                            .ok_or_else(|| anyhow::anyhow!("`{entry}`: only http and https"))?,
                    ),
                };
                Ok(Allowed {
                    host: host_name(host),
                    port: url.port_or_known_default(),
                    scheme,
                })
            })
            .collect::<Result<_>>()?;
        Ok(AllowList { entries })
    }

    /// Why `url` may not be reached, if it may not.
    pub fn refusal(&self, url: &str) -> Option<String> {
        let parsed = match Url::parse(url) {
            Ok(parsed) => parsed,
            Err(error) => return Some(format!("the URL is invalid: {error}")),
        };
        let Some(wanted) = scheme(parsed.scheme()) else {
            return Some(format!("scheme `{}` is not http or https", parsed.scheme()));
        };
        let Some(host) = parsed.host() else {
            return Some("the URL has no host".into());
        };
        let host = host_name(host);
        let port = parsed.port_or_known_default();
        let allowed = self.entries.iter().any(|entry| {
            entry.host == host
                && entry.scheme.is_none_or(|scheme| scheme == wanted)
                && (entry.port.is_none() || entry.port == port)
        });
        (!allowed).then(|| {
            format!(
                "{}://{host}:{} is not in the instance's allow_hosts",
                parsed.scheme(),
                port.unwrap_or(0)
            )
        })
    }
}

/// Where a request goes, as the concurrency limits count it: `host:port`.
pub fn destination(url: &str) -> String {
    Url::parse(url)
        .ok()
        .and_then(|url| {
            let host = host_name(url.host()?);
            Some(format!("{host}:{}", url.port_or_known_default()?))
        })
        .unwrap_or_else(|| "invalid".into())
}

/// Limits on attempts in flight: overall, and per destination.
pub struct Limits {
    overall: Arc<Semaphore>,
    per_destination: usize,
    destinations: Mutex<HashMap<String, Arc<Semaphore>>>,
}

impl Limits {
    pub fn new(per_destination: usize) -> Self {
        Limits {
            overall: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
            per_destination: per_destination.max(1),
            destinations: Mutex::default(),
        }
    }

    fn destination(&self, destination: &str) -> Arc<Semaphore> {
        self.destinations
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(destination.to_string())
            .or_insert_with(|| Arc::new(Semaphore::new(self.per_destination)))
            .clone()
    }
}

/// Attempts due deliveries as long as the host runs.
pub async fn run_worker(relay: Arc<Relay>, client: reqwest::Client, limits: Arc<Limits>) {
    loop {
        let id = relay.deliveries.next_due().await;
        let Ok(overall) = limits.overall.clone().acquire_owned().await else {
            return;
        };
        let (relay, client, limits) = (relay.clone(), client.clone(), limits.clone());
        tokio::spawn(async move {
            if let Err(error) = attempt(&relay, &client, &limits, id).await {
                // Whatever went wrong, the delivery stays scheduled: the database still
                // holds it as pending.
                warn!(
                    delivery = id,
                    "delivery attempt failed, will retry: {error:#}"
                );
                relay
                    .deliveries
                    .schedule(crate::now_ms() + failure_backoff_ms(1), id);
            }
            drop(overall);
        });
    }
}

async fn attempt(
    relay: &Arc<Relay>,
    client: &reqwest::Client,
    limits: &Limits,
    id: u64,
) -> Result<()> {
    let Some(record) = relay.delivery_record(id)? else {
        return Ok(());
    };
    if !matches!(record.state, DeliveryState::Pending { .. }) {
        return Ok(());
    }
    let span = info_span!("delivery", message_id = %record.message_id, delivery = id, instance = %record.instance);
    let Some(instance) = relay.instance(&record.instance) else {
        span.in_scope(|| warn!("delivery kept: its instance is not configured"));
        return Ok(());
    };
    let submitted: Option<Submitted> = match instance.active().allow.refusal(&record.request.url) {
        Some(reason) => {
            let relay = relay.clone();
            tokio::task::spawn_blocking(move || {
                span.in_scope(|| relay.refuse_delivery(&instance, record, reason))
            })
            .await?
        }
        None => {
            let permit = limits
                .destination(&destination(&record.request.url))
                .acquire_owned()
                .await?;
            let outcome = match send(client, &record.request).instrument(span.clone()).await {
                Ok(response) => DeliveryOutcome::Response(response),
                Err(error) => DeliveryOutcome::TransportError(error),
            };
            drop(permit);
            let _turn = instance.turn.lock().await;
            crate::worker::call_here(|| {
                span.in_scope(|| relay.submit_response(&instance, record, outcome))
            })
            .map_err(anyhow::Error::msg)?
        }
    };
    if let Some(submitted) = submitted {
        submitted.durable(relay).await?;
    }
    Ok(())
}

/// The HTTP client for deliveries: no redirects, no proxies from the environment.
pub fn client() -> Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .user_agent(concat!("simrelay/", env!("CARGO_PKG_VERSION")))
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .connect_timeout(Duration::from_secs(5))
        .build()?)
}

async fn send(client: &reqwest::Client, request: &OutgoingRequest) -> Result<HttpResponse, String> {
    let method = reqwest::Method::from_bytes(request.method.as_bytes())
        .map_err(|_| format!("invalid method `{}`", request.method))?;
    let timeout = request
        .timeout_ms
        .map_or(DEFAULT_TIMEOUT, |ms| Duration::from_millis(ms.into()));
    let mut builder = client
        .request(method, &request.url)
        .timeout(timeout)
        .body(request.body.clone());
    for (name, value) in &request.headers {
        builder = builder.header(name, value);
    }
    let mut response = builder.send().await.map_err(describe)?;
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .map(|(name, value)| {
            (
                name.to_string(),
                String::from_utf8_lossy(value.as_bytes()).into_owned(),
            )
        })
        .collect();
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(describe)? {
        let room = MAX_RESPONSE_BODY - body.len();
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() == MAX_RESPONSE_BODY {
            // The rest is never read: dropping the response closes the connection.
            break;
        }
    }
    Ok(HttpResponse {
        status,
        headers,
        body,
    })
}

/// The error and its causes, without the URL: its query may carry an API key.
fn describe(error: reqwest::Error) -> String {
    let error = error.without_url();
    let mut text = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allow(entries: &[&str]) -> AllowList {
        AllowList::parse(&entries.iter().map(|e| e.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn a_url_entry_allows_its_scheme_and_port_only() {
        let list = allow(&["https://smsbower.online"]);
        assert_eq!(list.refusal("https://smsbower.online/agent/api/sms"), None);
        assert_eq!(list.refusal("https://SMSBOWER.online:443/x"), None);
        assert!(
            list.refusal("http://smsbower.online/agent/api/sms")
                .is_some()
        );
        assert!(list.refusal("http://smsbower.online:443/x").is_some());
        assert!(list.refusal("https://smsbower.online:8443/x").is_some());
        let local = allow(&["http://127.0.0.1:9000"]);
        assert_eq!(local.refusal("http://127.0.0.1:9000/x"), None);
        assert!(local.refusal("https://127.0.0.1:9000/x").is_some());
    }

    #[test]
    fn host_port_and_bare_host_entries() {
        let list = allow(&["127.0.0.1:9000", "example.org"]);
        assert_eq!(list.refusal("http://127.0.0.1:9000/x"), None);
        assert_eq!(list.refusal("https://127.0.0.1:9000/x"), None);
        assert!(list.refusal("http://127.0.0.1:9001/x").is_some());
        assert_eq!(list.refusal("http://example.org:8080/"), None);
        let refusal = list.refusal("http://evil.test/").unwrap();
        assert_eq!(
            refusal,
            "http://evil.test:80 is not in the instance's allow_hosts"
        );
        assert!(list.refusal("ftp://example.org/").is_some());
        assert!(list.refusal("not a url").is_some());
    }

    #[test]
    fn ipv6_entries() {
        let list = allow(&["[::1]:9000", "http://[fd00::5]", "fe80::1"]);
        assert_eq!(list.refusal("http://[::1]:9000/x"), None);
        assert!(list.refusal("http://[::1]:9001/x").is_some());
        assert_eq!(list.refusal("http://[fd00::5]/x"), None);
        assert!(list.refusal("https://[fd00::5]/x").is_some());
        assert_eq!(list.refusal("http://[fe80::1]:1234/x"), None);
        assert!(list.refusal("http://[::2]:9000/x").is_some());
    }

    #[test]
    fn destinations_name_host_and_port() {
        assert_eq!(
            destination("https://smsbower.online/agent"),
            "smsbower.online:443"
        );
        assert_eq!(destination("http://[::1]:9000/"), "::1:9000");
        assert_eq!(destination("nonsense"), "invalid");
    }
}
