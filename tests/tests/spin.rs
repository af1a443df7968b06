//! The same plugins on Fermyon Spin, run with the README's commands (`spin build`, then
//! `spin up --runtime-config-file spin/runtime-config.toml`) against mock marketplaces on
//! 127.0.0.1: the provider document's `recv-sms` sample reaches SmsBower exactly once,
//! after one refused push, with the retry made by the tick route; the two marketplace
//! instances share the SIM farm but not their own state.
//!
//! The Spin CLI is `../shared/tools/spin/spin` next to the repository, or `spin` on PATH;
//! without either the test says so and passes without running.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use serde_json::{Value, json};
use simrelay_e2e::*;

/// The Spin CLI the README's commands run with, if there is one.
fn spin_cli() -> Option<PathBuf> {
    let shared = workspace_root().join("../shared/tools/spin/spin");
    if shared.is_file() {
        return Some(shared);
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join("spin"))
        .find(|candidate| candidate.is_file())
}

/// A running `spin up` of the repository's spin.toml, its state in a temporary directory.
struct SpinApp {
    child: Child,
    base_url: String,
    dir: tempfile::TempDir,
}

impl SpinApp {
    /// `spin build`, then `spin up` with a copy of spin/runtime-config.toml (so the stores
    /// land in the temporary directory) and the application's variables from the
    /// environment, as the README says.
    async fn start(cli: &Path, variables: &[(&str, &str)]) -> SpinApp {
        let root = workspace_root();
        let built = Command::new(cli)
            .arg("build")
            .current_dir(&root)
            .output()
            .expect("cannot run spin build");
        assert!(
            built.status.success(),
            "spin build failed:\n{}{}",
            String::from_utf8_lossy(&built.stdout),
            String::from_utf8_lossy(&built.stderr)
        );

        let dir = tempfile::tempdir().unwrap();
        let runtime_config = dir.path().join("spin/runtime-config.toml");
        std::fs::create_dir_all(runtime_config.parent().unwrap()).unwrap();
        std::fs::copy(root.join("spin/runtime-config.toml"), &runtime_config).unwrap();
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("spin.log")).unwrap();
        let child =
            Command::new(cli)
                .arg("up")
                .arg("--from")
                .arg(root.join("spin.toml"))
                .arg("--runtime-config-file")
                .arg(&runtime_config)
                .arg("--state-dir")
                .arg(dir.path().join("state"))
                .args(["--listen", &format!("127.0.0.1:{port}")])
                // A .env in the working directory would add variables; this one has none.
                .current_dir(dir.path())
                .envs(variables.iter().map(|(name, value)| {
                    (format!("SPIN_VARIABLE_{}", name.to_uppercase()), *value)
                }))
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .expect("cannot run spin up");
        let mut app = SpinApp {
            child,
            base_url: format!("http://127.0.0.1:{port}"),
            dir,
        };
        // Wasmtime compiles the three components on a cold cache; later runs load them.
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return app;
            }
            assert!(
                app.child.try_wait().unwrap().is_none() && Instant::now() < deadline,
                "spin up did not start:\n{}",
                app.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Spin's output and every component's stdout and stderr.
    fn logs(&self) -> String {
        let mut logs =
            std::fs::read_to_string(self.dir.path().join("spin.log")).unwrap_or_default();
        if let Ok(entries) = std::fs::read_dir(self.dir.path().join("state/logs")) {
            for entry in entries.flatten() {
                logs.push_str(&format!("\n== {}\n", entry.path().display()));
                logs.push_str(&std::fs::read_to_string(entry.path()).unwrap_or_default());
            }
        }
        logs
    }

    async fn post(&self, path: &str, body: &str) -> (u16, Value) {
        let response = reqwest::Client::new()
            .post(format!("{}{path}", self.base_url))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .expect("spin did not answer");
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        let json = serde_json::from_str(&text)
            .unwrap_or_else(|_| panic!("reply to {path} is not JSON ({status}): {text}"));
        (status, json)
    }

    /// What any scheduler (or Spin's cron trigger) does: calls an instance's tick route.
    async fn tick(&self, instance: &str) -> Value {
        let (status, report) = self.post(&format!("/.simrelay/tick/{instance}"), "").await;
        assert_eq!(status, 200, "tick of {instance}: {report}");
        report
    }

    async fn partner(&self, route: &str, request: Value) -> Value {
        self.post(route, &request.to_string()).await.1
    }
}

impl Drop for SpinApp {
    /// `spin up` serves from a child process (`spin trigger http`) that it stops on
    /// SIGTERM; killed outright it would leave that process behind.
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn spin_relays_the_sample_sms_once_with_the_retry_made_by_the_tick_route() {
    let Some(cli) = spin_cli() else {
        eprintln!(
            "SKIPPED: no Spin CLI found (neither ../shared/tools/spin/spin next to the \
             repository nor `spin` on PATH); the Spin end-to-end test did not run"
        );
        return;
    };
    // SmsBower refuses the first push and accepts every later one.
    let pushes = AtomicUsize::new(0);
    let smsbower = MockProvider::start(move |_, request| {
        if request.path == SMSBOWER_PUSH_PATH && pushes.fetch_add(1, Ordering::SeqCst) == 0 {
            return (StatusCode::OK, json!({ "status": "ERROR" }));
        }
        marketplace_answer(request)
    })
    .await;
    let onlinesim = MockProvider::accepting().await;
    let app = SpinApp::start(
        &cli,
        &[
            ("ejoin_api_key", EJOIN_KEY),
            ("smsbower_api_key", SMSBOWER_KEY),
            ("smsbower_base_url", &smsbower.base_url),
            ("smsbower_retry_secs", "1"),
            ("smsbower_services", r#"["tg", "wa"]"#),
            ("onlinesim_api_key", ONLINESIM_KEY),
            ("onlinesim_push_origin", &onlinesim.base_url),
            ("onlinesim_push_path", "/push"),
            (
                "simrelay_retry_policy",
                r#"{"schedule": "fixed", "interval_secs": 1, "jitter": 0}"#,
            ),
        ],
    )
    .await;
    let logs_on_failure = scopeguard_logs(&app);

    // The gateway reports its SIM; by the answer both marketplaces have it (chained calls
    // are handled before the webhook is acknowledged), and SmsBower sells it.
    let status = dev_status(
        "00:1A:2B:3C:4D:5E",
        &[("1.01", SAMPLE_NUMBER, SAMPLE_ICCID, SAMPLE_IMSI, true)],
    );
    let (code, reply) = app
        .post(&format!("/api/{EJOIN_KEY}/webhook"), &status)
        .await;
    assert_eq!((code, reply), (200, json!({ "message": "Ok" })));
    let (code, _) = app.post("/api/wrong-key/webhook", &status).await;
    assert_eq!(code, 401, "a wrong key is refused");
    let number = |key: &str| {
        json!({
            "action": "GET_NUMBER", "key": key, "country": "russia", "operator": "any",
            "service": "tg", "sum": "20.00",
        })
    };
    let sold = app.partner("/smsbower", number(SMSBOWER_KEY)).await;
    assert_eq!(
        (&sold["status"], &sold["number"]),
        (&json!("SUCCESS"), &json!(SAMPLE_NUMBER)),
        "{sold}"
    );
    // Shared on purpose: the farm's one lease per number keeps Onlinesim from selling it.
    let other = app.partner("/onlinesim", number(ONLINESIM_KEY)).await;
    assert_eq!(other["status"], "NO_NUMBERS", "{other}");

    // The SMS arrives. By the answer the first push was made and refused, and kept.
    let (code, reply) = app
        .post(&format!("/api/{EJOIN_KEY}/webhook"), RECV_SMS_SAMPLE)
        .await;
    assert_eq!((code, reply), (200, json!({ "message": "Ok" })));
    assert_eq!(
        smsbower.pushes().len(),
        1,
        "one push before the acknowledgement"
    );
    assert!(smsbower.accepted().is_empty(), "and it was refused");

    // After SmsBower's retry interval the tick route makes the retry, which is accepted.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let report = app.tick("smsbower").await;
    assert!(report["delivered"].as_u64() >= Some(1), "{report}");
    let accepted = smsbower.accepted();
    assert_eq!(
        accepted.len(),
        1,
        "exactly one accepted push: {accepted:#?}"
    );
    let push = &accepted[0];
    assert_eq!(push["action"], "PUSH_SMS");
    assert_eq!(push["key"], SMSBOWER_KEY);
    assert_eq!(push["text"], "Hello World");
    assert_eq!(push["phoneFrom"], "BankInfo");
    assert_eq!(push["phone"], SAMPLE_NUMBER);
    let received = smsbower.pushes();
    assert_eq!(received.len(), 2, "one refused push, one accepted");
    assert_eq!(
        received[0].body["smsId"], push["smsId"],
        "a retry keeps its smsId"
    );

    // Nothing after SUCCESS: not on later ticks, not for a re-sent webhook.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    app.tick("smsbower").await;
    let (code, _) = app
        .post(&format!("/api/{EJOIN_KEY}/webhook"), RECV_SMS_SAMPLE)
        .await;
    assert_eq!(code, 200);
    app.tick("smsbower").await;
    assert_eq!(
        smsbower.pushes().len(),
        2,
        "never pushed again after SUCCESS"
    );

    // Each marketplace's own store is its own: Onlinesim knows nothing of SmsBower's
    // activation and never pushed the SMS it did not sell; SmsBower finishes it.
    let finish = |key: &str| {
        json!({
            "action": "FINISH_ACTIVATION", "key": key,
            "activationId": sold["activationId"], "status": 3,
        })
    };
    let unknown = app.partner("/onlinesim", finish(ONLINESIM_KEY)).await;
    assert_ne!(unknown["status"], "SUCCESS", "{unknown}");
    app.tick("onlinesim").await;
    assert!(
        onlinesim.received().is_empty(),
        "{:#?}",
        onlinesim.received()
    );
    let finished = app.partner("/smsbower", finish(SMSBOWER_KEY)).await;
    assert_eq!(finished["status"], "SUCCESS", "{finished}");

    // Events come only from the application's own components.
    let from_outside = reqwest::Client::new()
        .post(format!("{}/.simrelay/event", app.base_url))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(
        from_outside.status(),
        404,
        "no route leads there from outside"
    );

    let logs = app.logs();
    for secret in [EJOIN_KEY, SMSBOWER_KEY, ONLINESIM_KEY] {
        assert!(
            !logs.contains(secret),
            "a secret leaked into the logs:\n{logs}"
        );
    }
    assert!(
        logs.contains("delivered"),
        "the components log their work:\n{logs}"
    );
    drop(logs_on_failure);
}

/// Prints the application's logs if the test panics before the end.
fn scopeguard_logs(app: &SpinApp) -> impl Drop + '_ {
    struct PrintLogs<'a>(&'a SpinApp);
    impl Drop for PrintLogs<'_> {
        fn drop(&mut self) {
            if std::thread::panicking() {
                eprintln!("spin logs:\n{}", self.0.logs());
            }
        }
    }
    PrintLogs(app)
}
