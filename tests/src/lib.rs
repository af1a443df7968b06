//! End-to-end harness: runs the real `simrelay` binary with real plugin components, and
//! small mock providers, all on 127.0.0.1.
//!
//! The binary and plugins come from `make build` (`make test` builds them first).

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::Value;

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

/// The release build of a default plugin, e.g. `ejoin`.
pub fn plugin_path(name: &str) -> PathBuf {
    built(target_dir().join(format!("wasm32-wasip2/release/simrelay_{name}.wasm")))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("no free port on 127.0.0.1")
}

/// A running `simrelay serve`.
pub struct Host {
    child: Child,
    pub addr: SocketAddr,
    log: PathBuf,
}

impl Host {
    /// Starts the host with `config` (TOML) in `dir`, which also holds its data directory,
    /// and waits until it accepts connections.
    pub async fn start(dir: &Path, config: &str) -> Host {
        Self::try_start(dir, config)
            .await
            .unwrap_or_else(|log| panic!("simrelay did not start:\n{log}"))
    }

    /// Like [`Host::start`], but a host that exits instead returns its log.
    pub async fn try_start(dir: &Path, config: &str) -> Result<Host, String> {
        let config_path = dir.join("simrelay.toml");
        std::fs::write(&config_path, config).unwrap();
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let log = dir.join(format!("simrelay-{}.log", addr.port()));
        let child = Command::new(built(target_dir().join("release/simrelay")))
            .args(["serve", "--config"])
            .arg(&config_path)
            .args(["--listen", &addr.to_string(), "--data-dir"])
            .arg(dir.join("data"))
            .env("SIMRELAY_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("cannot run simrelay");
        let mut host = Host { child, addr, log };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                return Ok(host);
            }
            if host.child.try_wait().unwrap().is_some() || Instant::now() > deadline {
                return Err(host.logs());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Everything the host logged so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
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
    pub body: Value,
    pub accepted: bool,
}

type Answer = dyn Fn(usize, &Value) -> (StatusCode, Value) + Send + Sync;

#[derive(Clone)]
struct MockState {
    received: Arc<Mutex<Vec<Received>>>,
    answer: Arc<Answer>,
}

/// A mock SmsBower: records every `PUSH_SMS` at `/agent/api/sms` and answers with
/// `answer(index of the request, its JSON body)`.
pub struct MockSmsBower {
    pub base_url: String,
    received: Arc<Mutex<Vec<Received>>>,
}

impl MockSmsBower {
    pub async fn start(
        answer: impl Fn(usize, &Value) -> (StatusCode, Value) + Send + Sync + 'static,
    ) -> Self {
        let state = MockState {
            received: Arc::default(),
            answer: Arc::new(answer),
        };
        let received = state.received.clone();
        let app = axum::Router::new()
            .route("/agent/api/sms", axum::routing::post(push_sms))
            .with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base_url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        MockSmsBower { base_url, received }
    }

    /// Accepts every push.
    pub async fn accepting() -> Self {
        Self::start(|_, _| (StatusCode::OK, success())).await
    }

    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    pub fn accepted(&self) -> Vec<Value> {
        self.received()
            .into_iter()
            .filter(|received| received.accepted)
            .map(|received| received.body)
            .collect()
    }

    /// Waits until `done` holds for what was received, or panics after `timeout`.
    pub async fn wait_for(&self, timeout: Duration, done: impl Fn(&[Received]) -> bool) {
        let deadline = Instant::now() + timeout;
        while !done(&self.received()) {
            assert!(
                Instant::now() < deadline,
                "mock SmsBower did not get what was expected in {timeout:?}; got {:#?}",
                self.received()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

pub fn success() -> Value {
    serde_json::json!({ "status": "SUCCESS" })
}

async fn push_sms(
    State(state): State<MockState>,
    Json(body): Json<Value>,
) -> (StatusCode, Json<Value>) {
    let mut received = state.received.lock().unwrap();
    let (status, reply) = (state.answer)(received.len(), &body);
    received.push(Received {
        body,
        accepted: status == StatusCode::OK && reply == success(),
    });
    (status, Json(reply))
}

pub const EJOIN_KEY: &str = "ejoin-secret-4f9a";
pub const SMSBOWER_KEY: &str = "bower-secret-77c1";

/// The example configuration's wiring (ejoin → smsbower), pointed at a mock SmsBower.
pub fn ejoin_to_smsbower_config(smsbower_base_url: &str, retry_interval_secs: u32) -> String {
    format!(
        r#"
[instances.ejoin]
plugin = "{ejoin}"
forward_to = ["smsbower"]
settings = {{ api_key = "{EJOIN_KEY}" }}

[instances.smsbower]
plugin = "{smsbower}"
allow_hosts = ["{smsbower_base_url}"]
settings = {{ api_key = "{SMSBOWER_KEY}", base_url = "{smsbower_base_url}", retry_interval_secs = "{retry_interval_secs}" }}

[[routes]]
path = "/api/{{key}}/webhook"
method = "POST"
instance = "ejoin"
"#,
        ejoin = plugin_path("ejoin").display(),
        smsbower = plugin_path("smsbower").display(),
    )
}

/// The `recv-sms` sample from the provider document.
pub const RECV_SMS_SAMPLE: &str = r#"{
    "type": "recv-sms",
    "sms": [[null, null, "2023-10-27 10:00:00", "BankInfo", "79001234567", "SGVsbG8gV29ybGQ="]]
}"#;

/// Posts a webhook body to the Ejoin route and returns the status and the JSON reply.
pub async fn post_ejoin(host: &Host, key: &str, body: &str) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(host.url(&format!("/api/{key}/webhook")))
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
