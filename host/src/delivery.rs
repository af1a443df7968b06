//! Performs the HTTP deliveries plugins ask for, only to the hosts their instance allows.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Result, bail};
use tokio::sync::Semaphore;
use tracing::{Instrument, info_span, warn};

use crate::abi::{DeliveryOutcome, HttpResponse, OutgoingRequest};
use crate::db::DeliveryState;
use crate::relay::Relay;

/// Per-attempt timeout when the plugin names none.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts in flight at once across all instances.
const MAX_IN_FLIGHT: usize = 64;
/// Response bodies beyond this are cut before the plugin sees them.
const MAX_RESPONSE_BODY: usize = 1 << 20;

/// The destinations an instance may reach.
#[derive(Debug, Default)]
pub struct AllowList {
    /// (host, port); no port allows any.
    entries: Vec<(String, Option<u16>)>,
}

impl AllowList {
    /// Entries are `host`, `host:port` or a URL (its host and port).
    pub fn parse(entries: &[String]) -> Result<Self> {
        let entries = entries
            .iter()
            .map(|entry| {
                if entry.contains("://") {
                    let url = url::Url::parse(entry)?;
                    let Some(host) = url.host_str() else {
                        bail!("`{entry}` has no host");
                    };
                    return Ok((host.to_ascii_lowercase(), url.port_or_known_default()));
                }
                match entry.rsplit_once(':') {
                    Some((host, port)) if !host.contains(':') => {
                        Ok((host.to_ascii_lowercase(), Some(port.parse()?)))
                    }
                    _ => Ok((entry.to_ascii_lowercase(), None)),
                }
            })
            .collect::<Result<_>>()?;
        Ok(AllowList { entries })
    }

    /// Why `url` may not be reached, if it may not.
    pub fn refusal(&self, url: &str) -> Option<String> {
        let parsed = match url::Url::parse(url) {
            Ok(parsed) if matches!(parsed.scheme(), "http" | "https") => parsed,
            Ok(parsed) => {
                return Some(format!("scheme `{}` is not http or https", parsed.scheme()));
            }
            Err(error) => return Some(format!("the URL is invalid: {error}")),
        };
        let host = parsed.host_str().unwrap_or_default().to_ascii_lowercase();
        let port = parsed.port_or_known_default();
        let allowed = self.entries.iter().any(|(allowed, allowed_port)| {
            *allowed == host && (allowed_port.is_none() || *allowed_port == port)
        });
        (!allowed).then(|| {
            format!(
                "host {host}:{} is not in the instance's allow_hosts",
                port.unwrap_or(0)
            )
        })
    }
}

/// Attempts due deliveries as long as the host runs.
pub async fn run_worker(relay: Arc<Relay>, client: reqwest::Client) {
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    loop {
        let id = relay.deliveries.next_due().await;
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            return;
        };
        let (relay, client) = (relay.clone(), client.clone());
        tokio::spawn(async move {
            attempt(relay, &client, id).await;
            drop(permit);
        });
    }
}

async fn attempt(relay: Arc<Relay>, client: &reqwest::Client, id: u64) {
    let record = match relay.db.delivery(id) {
        Ok(Some(record)) => record,
        Ok(None) => return,
        Err(error) => {
            warn!(delivery = id, "cannot read delivery: {error:#}");
            return;
        }
    };
    if !matches!(record.state, DeliveryState::Pending { .. }) {
        return;
    }
    let span = info_span!("delivery", message_id = %record.message_id, delivery = id, instance = %record.instance);
    let Some(instance) = relay.instance(&record.instance).cloned() else {
        span.in_scope(|| warn!("delivery kept: its instance is not configured"));
        return;
    };
    if let Some(reason) = instance.allow.refusal(&record.request.url) {
        let _ = tokio::task::spawn_blocking(move || {
            span.in_scope(|| relay.refuse_delivery(&instance, record, reason))
        })
        .await;
        return;
    }
    let outcome = send(client, &record.request).instrument(span.clone()).await;
    let outcome = match outcome {
        Ok(response) => DeliveryOutcome::Response(response),
        Err(error) => DeliveryOutcome::TransportError(error),
    };
    let _ = tokio::task::spawn_blocking(move || {
        span.in_scope(|| relay.handle_response(&instance, record, outcome))
    })
    .await;
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
    let response = builder.send().await.map_err(describe)?;
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
    let mut body = response.bytes().await.map_err(describe)?.to_vec();
    body.truncate(MAX_RESPONSE_BODY);
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

    #[test]
    fn allows_only_listed_hosts_and_ports() {
        let allow = AllowList::parse(&[
            "https://smsbower.online".to_string(),
            "127.0.0.1:9000".to_string(),
            "example.org".to_string(),
        ])
        .unwrap();
        assert_eq!(allow.refusal("https://smsbower.online/agent/api/sms"), None);
        assert!(
            allow
                .refusal("http://smsbower.online/agent/api/sms")
                .is_some()
        );
        assert_eq!(allow.refusal("http://127.0.0.1:9000/x"), None);
        assert!(allow.refusal("http://127.0.0.1:9001/x").is_some());
        assert_eq!(allow.refusal("http://example.org:8080/"), None);
        assert!(
            allow
                .refusal("http://evil.test/")
                .unwrap()
                .contains("evil.test")
        );
        assert!(allow.refusal("ftp://example.org/").is_some());
        assert!(allow.refusal("not a url").is_some());
    }
}
