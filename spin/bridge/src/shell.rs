//! The wasm shell: `wasi:http/incoming-handler`, and the [`crate::io`] traits over Spin's
//! interfaces. HTTP plumbing and key-value calls only; every decision is in
//! [`crate::handler`].

use std::io::{Read, Write};
use std::time::Duration;

use simrelay_core::convert::Conv;
use simrelay_core::model::{
    CallContext, DeliveryOutcome, DeliveryRef, Descriptor, Effects, Event, HttpReply, HttpRequest,
    HttpResponse, OutgoingRequest, ResponseOutcome, WebhookOutcome,
};
use wasi::http::types::{
    ErrorCode, Fields, IncomingBody, IncomingRequest, Method, OutgoingBody, OutgoingResponse,
    RequestOptions, ResponseOutparam, Scheme,
};

use crate::bindings::simrelay::adapter::adapter;
use crate::bindings::wasi::config::store as config;
use crate::bindings::wasi::keyvalue::{atomics, batch, store};
use crate::handler::{Io, handle};
use crate::io::{Environment, Network, Plugin, Sent, Store};
use crate::outbound::{Target, transport_header};
use crate::request::Incoming;
use crate::{DEFAULT_DELIVERY_TIMEOUT_MS, MAX_REQUEST_BODY, MAX_RESPONSE_BODY};

struct Component;

wasi::http::proxy::export!(Component);

impl wasi::exports::http::incoming_handler::Guest for Component {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let reply = match read_request(request) {
            Ok(incoming) => serve(incoming),
            Err(reply) => reply,
        };
        write_reply(reply, response_out);
    }
}

fn serve(incoming: Incoming) -> HttpReply {
    let env = SpinEnvironment::default();
    let store = match LazyBucket::label(&env) {
        Ok(store) => store,
        Err(error) => {
            return HttpReply::json(500, &serde_json::json!({ "error": error }));
        }
    };
    let io = Io {
        store: &store,
        plugin: &Dependency,
        network: &WasiHttp,
        env: &env,
    };
    handle(&io, incoming)
}

fn read_request(request: IncomingRequest) -> Result<Incoming, HttpReply> {
    let (path, query) = match request.path_with_query() {
        Some(full) => match full.split_once('?') {
            Some((path, query)) => (path.to_string(), query.to_string()),
            None => (full, String::new()),
        },
        None => ("/".to_string(), String::new()),
    };
    let headers = request
        .headers()
        .entries()
        .into_iter()
        .map(|(name, value)| {
            (
                name.to_ascii_lowercase(),
                String::from_utf8_lossy(&value).into_owned(),
            )
        })
        .collect();
    let body = request
        .consume()
        .map_err(|()| error_reply(400, "the request body cannot be read"))
        .and_then(|body| {
            read_body(body, MAX_REQUEST_BODY).map_err(|error| error_reply(400, &error))
        })?;
    if body.len() > MAX_REQUEST_BODY {
        return Err(error_reply(
            413,
            &format!(
                "the body is over the limit of {} KiB",
                MAX_REQUEST_BODY >> 10
            ),
        ));
    }
    Ok(Incoming {
        method: method_name(&request.method()),
        path,
        query,
        headers,
        body,
    })
}

/// Reads up to `limit + 1` bytes, so a caller can tell a body that is too long.
fn read_body(body: IncomingBody, limit: usize) -> Result<Vec<u8>, String> {
    let mut bytes = Vec::new();
    {
        let stream = body
            .stream()
            .map_err(|()| "the body stream is unavailable".to_string())?;
        stream
            .take(limit as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(|error| format!("reading the body failed: {error}"))?;
    }
    drop(IncomingBody::finish(body));
    Ok(bytes)
}

fn write_reply(reply: HttpReply, response_out: ResponseOutparam) {
    let headers = Fields::new();
    for (name, value) in &reply.headers {
        let _ = headers.append(name, value.as_bytes());
    }
    let response = OutgoingResponse::new(headers);
    let _ = response.set_status_code(reply.status);
    let Ok(body) = response.body() else { return };
    ResponseOutparam::set(response_out, Ok(response));
    if let Ok(mut stream) = body.write() {
        let _ = stream.write_all(&reply.body);
        let _ = Write::flush(&mut stream);
    }
    let _ = OutgoingBody::finish(body, None);
}

fn error_reply(status: u16, message: &str) -> HttpReply {
    HttpReply::json(status, &serde_json::json!({ "error": message }))
}

fn method_name(method: &Method) -> String {
    match method {
        Method::Get => "GET".into(),
        Method::Head => "HEAD".into(),
        Method::Post => "POST".into(),
        Method::Put => "PUT".into(),
        Method::Delete => "DELETE".into(),
        Method::Connect => "CONNECT".into(),
        Method::Options => "OPTIONS".into(),
        Method::Trace => "TRACE".into(),
        Method::Patch => "PATCH".into(),
        Method::Other(other) => other.to_ascii_uppercase(),
    }
}

fn method(name: &str) -> Method {
    match name.to_ascii_uppercase().as_str() {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        "POST" => Method::Post,
        "PUT" => Method::Put,
        "DELETE" => Method::Delete,
        "OPTIONS" => Method::Options,
        "PATCH" => Method::Patch,
        other => Method::Other(other.to_string()),
    }
}

/// The plugin, reached through the `adapter` import Spin satisfies with the dependency.
struct Dependency;

impl Plugin for Dependency {
    fn describe(&self) -> Descriptor {
        adapter::describe().conv()
    }

    fn on_webhook(
        &self,
        ctx: &CallContext,
        request: HttpRequest,
    ) -> Result<WebhookOutcome, String> {
        adapter::on_webhook(&ctx.clone().conv(), &request.conv()).map(Conv::conv)
    }

    fn on_event(&self, ctx: &CallContext, event: Event) -> Result<Effects, String> {
        adapter::on_event(&ctx.clone().conv(), &event.conv()).map(Conv::conv)
    }

    fn on_response(
        &self,
        ctx: &CallContext,
        delivery: DeliveryRef,
        outcome: DeliveryOutcome,
    ) -> Result<ResponseOutcome, String> {
        adapter::on_response(&ctx.clone().conv(), &delivery.conv(), &outcome.conv()).map(Conv::conv)
    }

    fn on_tick(&self, ctx: &CallContext) -> Result<Effects, String> {
        adapter::on_tick(&ctx.clone().conv()).map(Conv::conv)
    }
}

/// The instance's own bucket, opened on first use: a request refused before it touches
/// the store (a wrong webhook key) never opens it.
struct LazyBucket {
    label: String,
    bucket: std::cell::OnceCell<Result<store::Bucket, String>>,
}

impl LazyBucket {
    /// The label comes from the configuration; a misconfigured one is reported by the
    /// handler, so here it only has to be found.
    fn label(env: &SpinEnvironment) -> Result<Self, String> {
        let variables = env.variables()?;
        let find = |name: &str| {
            variables
                .iter()
                .find(|(key, value)| key == name && !value.trim().is_empty())
                .map(|(_, value)| value.trim().to_string())
        };
        let label = find("simrelay_store")
            .or_else(|| find("simrelay_instance"))
            .unwrap_or_default();
        Ok(LazyBucket {
            label,
            bucket: std::cell::OnceCell::new(),
        })
    }

    fn bucket(&self) -> Result<&store::Bucket, String> {
        self.bucket
            .get_or_init(|| {
                store::open(&self.label).map_err(|error| {
                    format!(
                        "cannot open key-value store `{}`: {}",
                        self.label,
                        kv_error(error)
                    )
                })
            })
            .as_ref()
            .map_err(Clone::clone)
    }
}

fn kv_error(error: store::Error) -> String {
    match error {
        store::Error::NoSuchStore => "no such store (is it in the runtime configuration?)".into(),
        store::Error::AccessDenied => {
            "access denied (is it in the component's key_value_stores?)".into()
        }
        store::Error::Other(message) => message,
    }
}

impl Store for LazyBucket {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, String> {
        self.bucket()?.get(key).map_err(kv_error)
    }

    fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>, String> {
        let found = batch::get_many(self.bucket()?, keys).map_err(kv_error)?;
        Ok(keys
            .iter()
            .map(|key| {
                found
                    .iter()
                    .find(|(found, _)| found == key)
                    .and_then(|(_, value)| value.clone())
            })
            .collect())
    }

    fn set(&self, key: &str, value: &[u8]) -> Result<(), String> {
        self.bucket()?.set(key, value).map_err(kv_error)
    }

    fn delete(&self, key: &str) -> Result<(), String> {
        self.bucket()?.delete(key).map_err(kv_error)
    }

    fn increment(&self, key: &str, delta: i64) -> Result<i64, String> {
        atomics::increment(self.bucket()?, key, delta).map_err(kv_error)
    }

    fn keys(&self) -> Result<Vec<String>, String> {
        let bucket = self.bucket()?;
        let mut keys = Vec::new();
        let mut cursor = None;
        loop {
            let page = bucket.list_keys(cursor.as_deref()).map_err(kv_error)?;
            keys.extend(page.keys);
            match page.cursor {
                Some(next) => cursor = Some(next),
                None => return Ok(keys),
            }
        }
    }

    fn replace(&self, key: &str, expected: &[u8], new: &[u8]) -> Result<bool, String> {
        let cas = atomics::Cas::new(self.bucket()?, key).map_err(kv_error)?;
        if cas.current().map_err(kv_error)?.as_deref() != Some(expected) {
            return Ok(false);
        }
        match atomics::swap(cas, new) {
            Ok(()) => Ok(true),
            Err(atomics::CasError::CasFailed(_)) => Ok(false),
            Err(atomics::CasError::StoreError(error)) => Err(kv_error(error)),
        }
    }
}

/// Outbound HTTP with `wasi:http`: Spin enforces `allowed_outbound_hosts` and follows no
/// redirects.
struct WasiHttp;

impl Network for WasiHttp {
    fn send(&self, request: &OutgoingRequest) -> Sent {
        let target = match Target::parse(&request.url) {
            Ok(target) => target,
            Err(error) => return Sent::Made(DeliveryOutcome::TransportError(error)),
        };
        let timeout = request.timeout_ms.unwrap_or(DEFAULT_DELIVERY_TIMEOUT_MS);
        match exchange(
            &request.method,
            &target,
            &request.headers,
            &request.body,
            timeout,
        ) {
            Ok(response) => Sent::Made(DeliveryOutcome::Response(response)),
            Err(Failure::Denied(reason)) => Sent::Refused(reason),
            Err(Failure::Transport(error)) => Sent::Made(DeliveryOutcome::TransportError(error)),
        }
    }

    fn forward(&self, component: &str, path: &str, body: &[u8]) -> Result<HttpResponse, String> {
        let headers = [("content-type".to_string(), "application/json".to_string())];
        let target = Target::component(component, path);
        exchange("POST", &target, &headers, body, DEFAULT_DELIVERY_TIMEOUT_MS).map_err(|failure| {
            match failure {
                Failure::Denied(reason) => format!(
                    "{reason}; add http://{component}.spin.internal to allowed_outbound_hosts"
                ),
                Failure::Transport(error) => error,
            }
        })
    }
}

enum Failure {
    Denied(String),
    Transport(String),
}

fn exchange(
    method_name: &str,
    target: &Target,
    headers: &[(String, String)],
    body: &[u8],
    timeout_ms: u32,
) -> Result<HttpResponse, Failure> {
    let transport = |what: &str| Failure::Transport(what.to_string());
    let fields = Fields::new();
    for (name, value) in headers.iter().filter(|(name, _)| !transport_header(name)) {
        fields
            .append(&name.to_ascii_lowercase(), value.as_bytes())
            .map_err(|error| Failure::Transport(format!("header `{name}` refused: {error:?}")))?;
    }
    if !body.is_empty() {
        let _ = fields.append("content-length", body.len().to_string().as_bytes());
    }
    let outgoing = wasi::http::types::OutgoingRequest::new(fields);
    outgoing
        .set_method(&method(method_name))
        .map_err(|()| transport("invalid method"))?;
    let scheme = if target.https {
        Scheme::Https
    } else {
        Scheme::Http
    };
    outgoing
        .set_scheme(Some(&scheme))
        .map_err(|()| transport("invalid scheme"))?;
    outgoing
        .set_authority(Some(&target.authority))
        .map_err(|()| transport("invalid host"))?;
    outgoing
        .set_path_with_query(Some(&target.path_with_query))
        .map_err(|()| transport("invalid path"))?;
    let options = RequestOptions::new();
    let timeout = Duration::from_millis(timeout_ms.into()).as_nanos() as u64;
    // Runtimes that do not support a timeout keep their own; the request still goes.
    let _ = options.set_connect_timeout(Some(timeout));
    let _ = options.set_first_byte_timeout(Some(timeout));
    let _ = options.set_between_bytes_timeout(Some(timeout));
    let outgoing_body = outgoing
        .body()
        .map_err(|()| transport("the request body is unavailable"))?;
    let future = wasi::http::outgoing_handler::handle(outgoing, Some(options)).map_err(denied)?;
    // With a content-length, the runtime closes the body stream once it has sent that many
    // bytes, which can beat the flush: a write error counts only when no response came,
    // and then the response future's error says better why.
    let written = match outgoing_body.write() {
        Ok(mut stream) => stream
            .write_all(body)
            .and_then(|()| Write::flush(&mut stream))
            .map_err(|error| format!("sending the body failed: {error}")),
        Err(()) => Err("the request body stream is unavailable".to_string()),
    };
    // A body that could not be finished shows in the response future as well.
    let _ = OutgoingBody::finish(outgoing_body, None);
    future.subscribe().block();
    let response = future
        .get()
        .ok_or_else(|| transport("no response"))?
        .map_err(|()| transport("the response was already taken"))?
        .map_err(|error| match &written {
            Err(write) if !matches!(error, ErrorCode::HttpRequestDenied) => {
                Failure::Transport(format!("{error:?} ({write})"))
            }
            _ => denied(error),
        })?;
    let status = response.status();
    let headers = response
        .headers()
        .entries()
        .into_iter()
        .map(|(name, value)| {
            (
                name.to_ascii_lowercase(),
                String::from_utf8_lossy(&value).into_owned(),
            )
        })
        .collect();
    let mut body = response
        .consume()
        .map_err(|()| transport("the response body is unavailable"))
        .and_then(|body| read_body(body, MAX_RESPONSE_BODY).map_err(Failure::Transport))?;
    // The rest of a longer body is never read, as in the host.
    body.truncate(MAX_RESPONSE_BODY);
    Ok(HttpResponse {
        status,
        headers,
        body,
    })
}

fn denied(error: ErrorCode) -> Failure {
    match error {
        ErrorCode::HttpRequestDenied => Failure::Denied(
            "the destination is not in the component's allowed_outbound_hosts".into(),
        ),
        other => Failure::Transport(format!("{other:?}")),
    }
}

/// Spin's clocks, randomness, stderr and variables (read once per request).
#[derive(Default)]
struct SpinEnvironment {
    variables: std::cell::OnceCell<Result<Vec<(String, String)>, String>>,
}

impl Environment for SpinEnvironment {
    fn now_ms(&self) -> u64 {
        let now = wasi::clocks::wall_clock::now();
        now.seconds * 1000 + u64::from(now.nanoseconds / 1_000_000)
    }

    fn random(&self) -> f64 {
        // 53 random bits: every double in [0, 1) with that spacing.
        (wasi::random::random::get_random_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn random_u64(&self) -> u64 {
        wasi::random::random::get_random_u64()
    }

    fn new_message_id(&self) -> String {
        format!("{:016x}", self.random_u64())
    }

    fn log(&self, line: &str) {
        eprintln!("{line}");
    }

    fn variables(&self) -> Result<Vec<(String, String)>, String> {
        self.variables
            .get_or_init(|| {
                config::get_all().map_err(|error| match error {
                    config::Error::Upstream(message) | config::Error::Io(message) => {
                        format!("cannot read the component's variables: {message}")
                    }
                })
            })
            .clone()
    }
}
