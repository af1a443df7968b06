//! End-to-end harness: runs the real `simrelay` binary with real plugin components, and
//! small mock providers, all on 127.0.0.1.
//!
//! The binary and plugins come from `make build` (`make test` builds them first).

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use serde_json::{Value, json};

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

fn built(path: PathBuf) -> PathBuf {
    assert!(
        path.exists(),
        "{} is missing: run `make build` (or `make test`) first",
        path.display()
    );
    path
}

/// The release build of a plugin, e.g. `ejoin`.
pub fn plugin_path(name: &str) -> PathBuf {
    built(target_dir().join(format!("wasm32-wasip2/release/simrelay_{name}.wasm")))
}

/// The release build of the `simrelay` binary.
pub fn simrelay_binary() -> PathBuf {
    built(target_dir().join("release/simrelay"))
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("no free port on 127.0.0.1")
}

/// A running `simrelay serve`.
pub struct Host {
    child: Child,
    pub addr: SocketAddr,
    /// The operator API's address.
    pub admin: SocketAddr,
    data_dir: PathBuf,
    log: PathBuf,
}

impl Host {
    /// Starts the host with `config` (TOML) in `dir`, which also holds its data directory,
    /// and waits until it accepts connections.
    pub async fn start(dir: &Path, config: &str) -> Host {
        Self::start_with_env(dir, config, &[]).await
    }

    /// Like [`Host::start`], with extra environment variables.
    pub async fn start_with_env(dir: &Path, config: &str, env: &[(&str, &str)]) -> Host {
        Self::try_start(dir, config, env)
            .await
            .unwrap_or_else(|log| panic!("simrelay did not start:\n{log}"))
    }

    /// Like [`Host::start`], but a host that exits instead returns its log.
    pub async fn try_start(dir: &Path, config: &str, env: &[(&str, &str)]) -> Result<Host, String> {
        let mut host = Self::spawn(dir, config, env);
        host.wait_ready(Duration::from_secs(60)).await?;
        Ok(host)
    }

    /// Runs the host without waiting for it to serve.
    pub fn spawn(dir: &Path, config: &str, env: &[(&str, &str)]) -> Host {
        let config_path = dir.join("simrelay.toml");
        std::fs::write(&config_path, config).unwrap();
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let log = dir.join(format!("simrelay-{}.log", addr.port()));
        let data_dir = dir.join("data");
        let child = Command::new(simrelay_binary())
            .args(["serve", "--config"])
            .arg(&config_path)
            .args([
                "--listen",
                &addr.to_string(),
                "--admin-listen",
                &admin.to_string(),
            ])
            .arg("--data-dir")
            .arg(&data_dir)
            .env("SIMRELAY_LOG", "info")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("cannot run simrelay");
        Host {
            child,
            addr,
            admin,
            data_dir,
            log,
        }
    }

    /// Waits until the host serves; a host that exits first, or is not serving after
    /// `timeout`, returns its log.
    pub async fn wait_ready(&mut self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.ready().await {
                return Ok(());
            }
            if self.child.try_wait().unwrap().is_some() || Instant::now() > deadline {
                return Err(self.logs());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Whether the host serves: its operator API answers only once the relay runs.
    async fn ready(&self) -> bool {
        let Ok(token) = std::fs::read_to_string(self.data_dir.join("admin-token")) else {
            return false;
        };
        let health = reqwest::Client::new()
            .get(format!("{}/v1/health", self.admin_url()))
            .bearer_auth(token.trim())
            .timeout(Duration::from_secs(2))
            .send()
            .await;
        health.is_ok_and(|response| response.status().is_success())
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The operator API's address, as the CLI's `--admin` takes it.
    pub fn admin_url(&self) -> String {
        format!("http://{}", self.admin)
    }

    /// The operator token the host made in its data directory.
    pub fn admin_token(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("admin-token"))
            .expect("the host keeps its operator token in DATA_DIR/admin-token")
            .trim()
            .to_string()
    }

    /// Waits until `instance` has a delivery recorded as delivered: its result handled by
    /// the plugin and committed, so the instance is idle again.
    pub async fn wait_for_delivered(&self, instance: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let path = format!("/v1/deliveries?instance={instance}&state=delivered");
        while self
            .admin(reqwest::Method::GET, &path, None)
            .await
            .1
            .as_array()
            .is_none_or(|delivered| delivered.is_empty())
        {
            assert!(
                Instant::now() < deadline,
                "no delivery of {instance} was recorded as delivered"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Calls the operator API; returns the status and the JSON answer.
    pub async fn admin(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> (u16, Value) {
        let mut request = reqwest::Client::new()
            .request(method, format!("{}{path}", self.admin_url()))
            .bearer_auth(self.admin_token());
        if let Some(body) = body {
            request = request.body(body);
        }
        let response = request
            .send()
            .await
            .expect("the operator API did not answer");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// The value of one Prometheus sample, e.g. `simrelay_events_total{instance="a",path="queued"}`;
    /// 0 when the host has not counted it.
    pub async fn metric(&self, sample: &str) -> f64 {
        let text = reqwest::Client::new()
            .get(format!("{}/metrics", self.admin_url()))
            .bearer_auth(self.admin_token())
            .send()
            .await
            .expect("the operator API did not answer")
            .text()
            .await
            .unwrap_or_default();
        text.lines()
            .find_map(|line| line.strip_prefix(sample)?.trim().parse().ok())
            .unwrap_or(0.0)
    }

    /// Runs the `simrelay` command line against this host; returns stdout, or stderr on
    /// failure.
    pub fn cli(&self, args: &[&str]) -> Result<String, String> {
        let output = Command::new(simrelay_binary())
            .args(args)
            .args(["--admin", &self.admin_url(), "--data-dir"])
            .arg(&self.data_dir)
            .output()
            .expect("cannot run simrelay");
        if output.status.success() {
            Ok(String::from_utf8_lossy(&output.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&output.stderr).into_owned())
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process has ended.
    pub fn exited(&mut self) -> bool {
        self.child.try_wait().unwrap().is_some()
    }

    /// The exit code, once the process has ended within `timeout`.
    pub async fn exit_code(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The process's resident memory, in MiB, from `/proc`.
    pub fn rss_mib(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let kib: f64 = status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc/PID/status");
        kib / 1024.0
    }

    /// Everything the host logged so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Asks the host to stop, as `systemctl stop` would.
    pub fn terminate(&self) {
        self.signal("TERM");
    }

    /// Sends the host a signal by name, e.g. `HUP`.
    pub fn signal(&self, name: &str) {
        let sent = Command::new("kill")
            .args([&format!("-{name}"), &self.pid().to_string()])
            .status()
            .expect("cannot run kill");
        assert!(sent.success());
    }

    /// Ends the host at once, as a crash or power loss would.
    pub fn kill(mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.logs()
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One request a mock provider received, and whether it answered success.
#[derive(Clone, Debug)]
pub struct Received {
    pub method: String,
    pub path: String,
    /// A JSON body as it came, a form body (or a query string) as an object of strings.
    pub body: Value,
    pub headers: BTreeMap<String, String>,
    pub accepted: bool,
    /// When the mock received it.
    pub at: Instant,
}

/// A mock's answer when a status and a JSON body are not enough (e.g. a `Retry-After`).
pub struct Reply {
    pub status: StatusCode,
    pub headers: Vec<(&'static str, String)>,
    pub body: Value,
}

impl From<(StatusCode, Value)> for Reply {
    fn from((status, body): (StatusCode, Value)) -> Self {
        Reply {
            status,
            headers: Vec::new(),
            body,
        }
    }
}

/// `answer(index of the request, the request)` gives the reply.
type Answer = dyn Fn(usize, &Received) -> Reply + Send + Sync;

#[derive(Clone)]
struct MockState {
    received: Arc<Mutex<Vec<Received>>>,
    answer: Arc<Answer>,
}

/// A mock provider on 127.0.0.1: records every request on any path and answers with the
/// given function.
pub struct MockProvider {
    pub base_url: String,
    received: Arc<Mutex<Vec<Received>>>,
}

impl MockProvider {
    pub async fn start(
        answer: impl Fn(usize, &Received) -> (StatusCode, Value) + Send + Sync + 'static,
    ) -> Self {
        Self::start_replying(move |index, request| answer(index, request).into()).await
    }

    /// Like [`MockProvider::start`], with replies that may carry headers.
    pub async fn start_replying(
        answer: impl Fn(usize, &Received) -> Reply + Send + Sync + 'static,
    ) -> Self {
        let state = MockState {
            received: Arc::default(),
            answer: Arc::new(answer),
        };
        let received = state.received.clone();
        let app = axum::Router::new().fallback(record).with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base_url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        MockProvider { base_url, received }
    }

    /// A marketplace that accepts every push, says every activation is still waiting and
    /// reports no statistics.
    pub async fn accepting() -> Self {
        Self::start(|_, request| marketplace_answer(request)).await
    }

    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// The bodies of the pushes (requests to `path`) it received.
    pub fn requests_to(&self, path: &str) -> Vec<Received> {
        self.received()
            .into_iter()
            .filter(|received| received.path == path)
            .collect()
    }

    /// The bodies of the SMS pushes it accepted.
    pub fn accepted(&self) -> Vec<Value> {
        self.received()
            .into_iter()
            .filter(|received| received.accepted && received.path.ends_with("sms"))
            .map(|received| received.body)
            .collect()
    }

    /// The SmsBower SMS pushes it received, accepted or not.
    pub fn pushes(&self) -> Vec<Received> {
        self.requests_to(SMSBOWER_PUSH_PATH)
    }

    /// Waits until `done` holds for what was received, or panics after `timeout`.
    pub async fn wait_for(&self, timeout: Duration, done: impl Fn(&[Received]) -> bool) {
        let deadline = Instant::now() + timeout;
        while !done(&self.received()) {
            assert!(
                Instant::now() < deadline,
                "mock provider did not get what was expected in {timeout:?}; got {:#?}",
                self.received()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Waits until `count` SmsBower pushes arrived.
    pub async fn wait_for_pushes(&self, timeout: Duration, count: usize) {
        self.wait_for(timeout, |received| {
            received
                .iter()
                .filter(|r| r.path == SMSBOWER_PUSH_PATH)
                .count()
                >= count
        })
        .await;
    }
}

/// Where SmsBower takes `PUSH_SMS`.
pub const SMSBOWER_PUSH_PATH: &str = "/agent/api/sms";

/// A cooperative marketplace's answer: SUCCESS to pushes, "waiting" to status queries.
pub fn marketplace_answer(request: &Received) -> (StatusCode, Value) {
    if request.path.ends_with("getStatus") {
        return (StatusCode::OK, json!({ "status": 0 }));
    }
    if request.path.contains("statistic") {
        return (StatusCode::OK, json!({ "status": "SUCCESS", "data": [] }));
    }
    (StatusCode::OK, success())
}

pub fn success() -> Value {
    json!({ "status": "SUCCESS" })
}

async fn record(
    State(state): State<MockState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> axum::response::Response {
    let form = |text: &str| {
        Value::Object(
            form_urlencoded::parse(text.as_bytes())
                .map(|(key, value)| (key.into_owned(), Value::String(value.into_owned())))
                .collect(),
        )
    };
    let body = match serde_json::from_slice::<Value>(&body) {
        Ok(json) => json,
        Err(_) if body.is_empty() => form(uri.query().unwrap_or_default()),
        Err(_) => form(&String::from_utf8_lossy(&body)),
    };
    let headers = headers
        .iter()
        .map(|(name, value)| {
            (
                name.to_string(),
                String::from_utf8_lossy(value.as_bytes()).into_owned(),
            )
        })
        .collect();
    let mut received = state.received.lock().unwrap();
    let mut request = Received {
        method: method.to_string(),
        path: uri.path().to_string(),
        body,
        headers,
        accepted: false,
        at: Instant::now(),
    };
    let reply = (state.answer)(received.len(), &request);
    request.accepted = reply.status == StatusCode::OK && reply.body == success();
    received.push(request);
    let mut response =
        axum::response::IntoResponse::into_response((reply.status, axum::Json(reply.body)));
    for (name, value) in reply.headers {
        if let Ok(value) = axum::http::HeaderValue::try_from(value) {
            response.headers_mut().insert(name, value);
        }
    }
    response
}

pub const EJOIN_KEY: &str = "ejoin-secret-4f9a";
pub const SMSBOWER_KEY: &str = "bower-secret-77c1";
pub const ONLINESIM_KEY: &str = "onlinesim-secret-2b8e";

/// The example configuration's wiring (ejoin → smsbower, one shared inventory), pointed at
/// a mock SmsBower.
pub fn ejoin_to_smsbower_config(smsbower_base_url: &str, retry_interval_secs: u32) -> String {
    format!(
        r#"
[instances.ejoin]
plugin = "{ejoin}"
forward_to = ["smsbower"]
tick_interval_secs = 1
settings = {{ api_key = "{EJOIN_KEY}" }}

[instances.smsbower]
plugin = "{smsbower}"
allow_hosts = ["{smsbower_base_url}"]
stores = {{ inventory = "farm" }}
tick_interval_secs = 60
retry = {{ schedule = "fixed", interval_secs = 1, jitter = 0.0 }}
settings = {{ api_key = "{SMSBOWER_KEY}", base_url = "{smsbower_base_url}", retry_interval_secs = "{retry_interval_secs}", services = ["tg", "wa"] }}

[[routes]]
path = "/api/{{key}}/webhook"
method = "POST"
instance = "ejoin"

[[routes]]
path = "/smsbower"
method = "POST"
instance = "smsbower"
"#,
        ejoin = plugin_path("ejoin").display(),
        smsbower = plugin_path("smsbower").display(),
    )
}

/// Where the mock Onlinesim takes `PUSH_SMS` (Onlinesim's partner support gives the real
/// address).
pub const ONLINESIM_PUSH_PATH: &str = "/v1/PUSH_SMS";

/// The example configuration's wiring for one farm sold on two marketplaces: ejoin feeds
/// smsbower and onlinesim, both granted the store `farm` as their `inventory`, each pointed
/// at its own mock. `extra_settings` go into both marketplaces' settings (e.g.
/// `offer_cap = "1000"`).
pub fn ejoin_to_both_marketplaces_config(
    smsbower_base_url: &str,
    onlinesim_base_url: &str,
    retry_interval_secs: u32,
    extra_settings: &str,
) -> String {
    let extra = if extra_settings.is_empty() {
        String::new()
    } else {
        format!(", {extra_settings}")
    };
    format!(
        r#"
[instances.ejoin]
plugin = "{ejoin}"
forward_to = ["smsbower", "onlinesim"]
tick_interval_secs = 1
settings = {{ api_key = "{EJOIN_KEY}" }}

[instances.smsbower]
plugin = "{smsbower}"
allow_hosts = ["{smsbower_base_url}"]
stores = {{ inventory = "farm" }}
tick_interval_secs = 60
retry = {{ schedule = "fixed", interval_secs = 1, jitter = 0.0 }}
settings = {{ api_key = "{SMSBOWER_KEY}", base_url = "{smsbower_base_url}", retry_interval_secs = "{retry_interval_secs}", services = ["tg", "wa"]{extra} }}

[instances.onlinesim]
plugin = "{onlinesim}"
allow_hosts = ["{onlinesim_base_url}"]
stores = {{ inventory = "farm" }}
retry = {{ schedule = "fixed", interval_secs = 1, jitter = 0.0 }}
settings = {{ api_key = "{ONLINESIM_KEY}", push_url = "{onlinesim_base_url}{ONLINESIM_PUSH_PATH}", retry_interval_secs = "{retry_interval_secs}", services = ["tg", "wa"]{extra} }}

[[routes]]
path = "/api/{{key}}/webhook"
method = "POST"
instance = "ejoin"

[[routes]]
path = "/smsbower"
method = "POST"
instance = "smsbower"

[[routes]]
path = "/onlinesim"
method = "POST"
instance = "onlinesim"
"#,
        ejoin = plugin_path("ejoin").display(),
        smsbower = plugin_path("smsbower").display(),
        onlinesim = plugin_path("onlinesim").display(),
    )
}

/// The `recv-sms` sample from the provider document.
pub const RECV_SMS_SAMPLE: &str = r#"{
    "type": "recv-sms",
    "sms": [[null, null, "2023-10-27 10:00:00", "BankInfo", "79001234567", "SGVsbG8gV29ybGQ="]]
}"#;

/// The number the samples' SMS arrive on, and its SIM.
pub const SAMPLE_NUMBER: &str = "79001234567";
pub const SAMPLE_ICCID: &str = "8970100000000000001";
/// An MTS Russia IMSI (MCC 250, MNC 01).
pub const SAMPLE_IMSI: &str = "250010000000001";

/// Posts a webhook body to the Ejoin route and returns the status and the JSON reply.
pub async fn post_ejoin(host: &Host, key: &str, body: &str) -> (u16, Value) {
    post_json(host, &format!("/api/{key}/webhook"), body).await
}

/// Posts `body` to `path` and returns the status and the JSON reply.
pub async fn post_json(host: &Host, path: &str, body: &str) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(host.url(path))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .expect("simrelay did not answer");
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    let json = serde_json::from_str(&text).unwrap_or_else(|_| panic!("reply is not JSON: {text}"));
    (status, json)
}

/// A gateway's `dev-status` push for SIMs given as (port, number, iccid, imsi, registered).
pub fn dev_status(mac: &str, sims: &[(&str, &str, &str, &str, bool)]) -> String {
    let status: Vec<Value> = sims
        .iter()
        .map(|(port, number, iccid, imsi, registered)| {
            json!({
                "port": port, "sn": number, "iccid": iccid, "imsi": imsi,
                "st": if *registered { "3 registered" } else { "0 no sim" },
                "active": 1, "slot_active": 1, "opr": "MTS", "sig": 25,
            })
        })
        .collect();
    json!({ "type": "dev-status", "mac": mac, "status": status }).to_string()
}

/// A farm of `count` registered MTS Russia SIMs on modules of 8 slots, as (port, number,
/// ICCID, IMSI); `series` (0-9) keeps the numbers of different farms apart.
pub fn farm(count: usize, series: u8) -> Vec<(String, String, String, String)> {
    (0..count)
        .map(|n| {
            (
                format!("{}.{:02}", 1 + n / 8, 1 + n % 8),
                format!("790{series}{n:07}"),
                format!("8970{series}{n:014}"),
                format!("25001{series}{n:09}"),
            )
        })
        .collect()
}

/// The gateway's `dev-status` push for a [`farm`], every SIM registered.
pub fn farm_dev_status(mac: &str, farm: &[(String, String, String, String)]) -> String {
    let sims: Vec<_> = farm
        .iter()
        .map(|(port, number, iccid, imsi)| {
            (
                port.as_str(),
                number.as_str(),
                iccid.as_str(),
                imsi.as_str(),
                true,
            )
        })
        .collect();
    dev_status(mac, &sims)
}

/// Asks a marketplace route for a number, as the marketplace would.
pub async fn get_number(host: &Host, route: &str, key: &str, service: &str) -> Value {
    let request = json!({
        "action": "GET_NUMBER", "key": key, "country": "russia", "operator": "any",
        "service": service, "sum": "20.00",
    });
    post_json(host, route, &request.to_string()).await.1
}

/// Registers the samples' SIM at the gateway and opens an activation for it on SmsBower,
/// waiting until the inventory has it (status events are handled asynchronously).
pub async fn open_sample_activation(host: &Host) -> Value {
    let status = dev_status(
        "00:1A:2B:3C:4D:5E",
        &[("1.01", SAMPLE_NUMBER, SAMPLE_ICCID, SAMPLE_IMSI, true)],
    );
    let (code, reply) = post_ejoin(host, EJOIN_KEY, &status).await;
    assert_eq!(code, 200, "{reply}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let answer = get_number(host, "/smsbower", SMSBOWER_KEY, "tg").await;
        if answer["status"] == "SUCCESS" {
            assert_eq!(answer["number"], SAMPLE_NUMBER, "{answer}");
            return answer;
        }
        assert!(
            Instant::now() < deadline,
            "the SIM never became available: {answer}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
