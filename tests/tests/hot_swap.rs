//! Plugins change while the host runs: upgrades and rollbacks under a steady stream of
//! webhooks lose nothing and mix nothing up; bad plugins are refused with their reason;
//! a failing version rolls back on its own; plugins built for interface 0.1 keep working.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use reqwest::Method;
use serde_json::{Value, json};
use simrelay_e2e::*;

fn versioned(version: &str) -> std::path::PathBuf {
    plugin_path(&format!("versioned_{version}"))
}

fn echo_config(target: &str, extra: &str) -> String {
    format!(
        r#"
[instances.echo]
plugin = "{plugin}"
allow_hosts = ["{target}"]
retry = {{ schedule = "fixed", interval_secs = 0.2, jitter = 0.0 }}
settings = {{ target = "{target}/accept" }}
{extra}

[[routes]]
path = "/echo/{{what}}"
instance = "echo"
"#,
        plugin = versioned("1").display(),
    )
}

/// One webhook of the steady stream: when it was sent, and what answered it.
struct Answer {
    sent: Instant,
    status: u16,
    version: String,
    count: u64,
}

async fn ping(client: &reqwest::Client, host: &Host) -> Answer {
    let sent = Instant::now();
    let response = client.post(host.url("/echo/ping")).send().await.unwrap();
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    Answer {
        sent,
        status,
        version: body["version"].as_str().unwrap_or_default().to_string(),
        count: body["count"].as_u64().unwrap_or_default(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn upgrades_and_a_rollback_under_load_lose_and_mix_up_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let accepting = Arc::new(AtomicBool::new(false));
    let target = {
        let accepting = accepting.clone();
        MockProvider::start(move |_, _| {
            if accepting.load(Ordering::SeqCst) {
                (StatusCode::OK, success())
            } else {
                (StatusCode::SERVICE_UNAVAILABLE, json!({ "status": "DOWN" }))
            }
        })
        .await
    };
    let host = Host::start(dir.path(), &echo_config(&target.base_url, "")).await;

    // A delivery that version 1 asks for and that cannot succeed yet.
    let response = reqwest::Client::new()
        .post(host.url("/echo/deliver"))
        .body("before-the-swaps")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    target
        .wait_for(Duration::from_secs(10), |r| !r.is_empty())
        .await;

    // (when the change took effect, the version that must answer after it), from before
    // the first request is sent.
    let mut swaps: Vec<(Instant, &str)> = vec![(Instant::now(), "1")];
    // The steady stream: four clients posting as fast as they are answered.
    let running = Arc::new(AtomicBool::new(true));
    let host = Arc::new(host);
    let streams: Vec<_> = (0..4)
        .map(|_| {
            let (host, running) = (host.clone(), running.clone());
            tokio::spawn(async move {
                let client = reqwest::Client::new();
                let mut answers = Vec::new();
                while running.load(Ordering::SeqCst) {
                    answers.push(ping(&client, &host).await);
                }
                answers
            })
        })
        .collect();

    let mut swap = |step: &str, expected: &'static str| {
        let out = match step {
            "rollback" => host.cli(&["plugin", "rollback", "echo"]),
            version => {
                let file = versioned(version);
                host.cli(&[
                    "plugin",
                    "install",
                    file.to_str().unwrap(),
                    "--instance",
                    "echo",
                ])
            }
        };
        let out = out.unwrap_or_else(|error| panic!("{step}: {error}"));
        assert!(out.contains(&format!("versioned {expected}")), "{out}");
        swaps.push((Instant::now(), expected));
    };
    tokio::time::sleep(Duration::from_millis(700)).await;
    swap("2", "2");
    tokio::time::sleep(Duration::from_millis(700)).await;
    // The delivery version 1 asked for now succeeds; version 2 judges the response.
    accepting.store(true, Ordering::SeqCst);
    target
        .wait_for(Duration::from_secs(10), |r| r.iter().any(|r| r.accepted))
        .await;
    swap("3", "3");
    tokio::time::sleep(Duration::from_millis(700)).await;
    swap("rollback", "2");
    tokio::time::sleep(Duration::from_millis(700)).await;
    swap("3", "3");
    tokio::time::sleep(Duration::from_millis(700)).await;
    running.store(false, Ordering::SeqCst);

    let mut answers = Vec::new();
    for stream in streams {
        answers.extend(stream.await.unwrap());
    }
    assert!(
        answers.len() > 200,
        "a steady stream: {} webhooks",
        answers.len()
    );
    let failed: Vec<u16> = answers
        .iter()
        .map(|a| a.status)
        .filter(|s| *s != 200)
        .collect();
    assert!(
        failed.is_empty(),
        "failed requests during swaps: {failed:?}"
    );
    for answer in &answers {
        // A request sent after a change took effect is answered by the new version.
        let (_, expected) = swaps
            .iter()
            .rev()
            .find(|(at, _)| *at <= answer.sent)
            .unwrap();
        let after_next = swaps
            .iter()
            .any(|(at, _)| *at > answer.sent && *at < answer.sent + Duration::from_secs(5));
        if !after_next {
            assert_eq!(&answer.version, expected, "answered by the wrong version");
        }
    }
    // State carried over every swap: one counter, no count given twice.
    let mut counts: Vec<u64> = answers.iter().map(|a| a.count).collect();
    counts.sort_unstable();
    counts.dedup();
    assert_eq!(
        counts.len(),
        answers.len(),
        "each webhook counted once, across versions"
    );

    let last = ping(&reqwest::Client::new(), &host).await;
    assert_eq!(last.version, "3");
    let status = reqwest::Client::new()
        .post(host.url("/echo/ping"))
        .send()
        .await
        .unwrap();
    let body: Value = status.json().await.unwrap();
    assert_eq!(
        body["delivered_by"], "2",
        "the response went to the version serving then"
    );
    assert_eq!(target.received().iter().filter(|r| r.accepted).count(), 1);

    let list = host.cli(&["plugin", "list"]).unwrap();
    assert!(
        list.contains("versioned 3") && list.contains("0.2.0"),
        "{list}"
    );
    let (_, instances) = host.admin(Method::GET, "/v1/instances", None).await;
    let echo = &instances[0];
    assert_eq!(echo["version"], "3");
    assert_eq!(echo["hash"].as_str().unwrap().len(), 64);
    assert!(echo["serving_since_ms"].as_u64().unwrap() > 0);
    assert_eq!(echo["failures"], 0);
    assert!(echo["calls"].as_u64().unwrap() > 0);
    assert_eq!(echo["previous_versions"][0]["version"], "2");

    // A restart keeps the operator's version rather than the file's.
    drop(host);
    let host = Host::start(dir.path(), &echo_config(&target.base_url, "")).await;
    assert_eq!(ping(&reqwest::Client::new(), &host).await.version, "3");
}

#[tokio::test(flavor = "multi_thread")]
async fn plugins_that_fail_validation_never_replace_a_working_one() {
    let dir = tempfile::tempdir().unwrap();
    let target = MockProvider::accepting().await;
    let host = Host::start(dir.path(), &echo_config(&target.base_url, "")).await;
    let client = reqwest::Client::new();

    let unknown_interface = wat::parse_str(
        r#"(component
            (instance $adapter)
            (export "simrelay:adapter/adapter@0.9.0" (instance $adapter)))"#,
    )
    .unwrap();
    let refusals = [
        (
            unknown_interface,
            "it was built for simrelay:adapter@0.9.0; this host speaks 0.2.0, 0.1.0",
        ),
        (
            std::fs::read(versioned("describe-traps")).unwrap(),
            "it failed to describe itself",
        ),
        (
            b"not wasm at all".to_vec(),
            "it is not a valid WebAssembly component",
        ),
    ];
    for (bytes, reason) in refusals {
        let (status, answer) = host
            .admin(Method::POST, "/v1/instances/echo/plugin", Some(bytes))
            .await;
        assert_eq!(status, 400, "{answer}");
        let error = answer["error"].as_str().unwrap();
        assert!(
            error.contains("the plugin was refused") && error.contains(reason),
            "{error}"
        );
        assert_eq!(
            ping(&client, &host).await.version,
            "1",
            "the working version still serves"
        );
    }
    // A configuration its plugin cannot run with is refused the same way.
    let (status, answer) = host
        .admin(
            Method::PUT,
            "/v1/instances/echo",
            Some(
                json!({ "plugin": plugin_path("smsbower").display().to_string() })
                    .to_string()
                    .into_bytes(),
            ),
        )
        .await;
    assert_eq!(status, 415, "JSON needs its content type: {answer}");
    let error = host
        .cli(&[
            "instance",
            "set",
            "echo",
            "--plugin",
            plugin_path("smsbower").to_str().unwrap(),
        ])
        .unwrap_err();
    assert!(error.contains("needs setting `api_key`"), "{error}");
    assert_eq!(ping(&client, &host).await.version, "1");

    // The operator API wants its token.
    let response = client
        .get(format!("{}/v1/instances", host.admin_url()))
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_version_that_keeps_failing_rolls_back_on_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let target = MockProvider::accepting().await;
    let config = echo_config(&target.base_url, "rollback_after_failures = 3");
    let host = Host::start(dir.path(), &config).await;
    let client = reqwest::Client::new();
    let file = versioned("webhook-traps");
    host.cli(&[
        "plugin",
        "install",
        file.to_str().unwrap(),
        "--instance",
        "echo",
    ])
    .unwrap();
    for _ in 0..3 {
        assert_eq!(ping(&client, &host).await.status, 500);
    }
    let after = ping(&client, &host).await;
    assert_eq!((after.status, after.version.as_str()), (200, "1"));
    let logs = host.logs();
    assert!(
        logs.contains("failed 3 calls in a row: rolling back to 1"),
        "{logs}"
    );
    let (_, instances) = host.admin(Method::GET, "/v1/instances", None).await;
    assert_eq!(instances[0]["version"], "1");
    // The rollback outlives a restart.
    drop(host);
    let host = Host::start(dir.path(), &config).await;
    assert_eq!(ping(&client, &host).await.version, "1");

    // Failing closed is the default: without the policy the failing version stays.
    let host2_dir = tempfile::tempdir().unwrap();
    let host2 = Host::start(host2_dir.path(), &echo_config(&target.base_url, "")).await;
    host2
        .cli(&[
            "plugin",
            "install",
            file.to_str().unwrap(),
            "--instance",
            "echo",
        ])
        .unwrap();
    for _ in 0..5 {
        assert_eq!(ping(&client, &host2).await.status, 500);
    }
    let (_, instances) = host2.admin(Method::GET, "/v1/instances", None).await;
    assert_eq!(instances[0]["version"], "webhook-traps");
    assert_eq!(instances[0]["consecutive_failures"], 5);
    assert_eq!(instances[0]["health"], "failing");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_plugin_built_for_interface_0_1_keeps_working() {
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "[instances.legacy]\nplugin = \"{}\"\n[[routes]]\npath = \"/legacy\"\ninstance = \"legacy\"\n",
        plugin_path("legacy_v0_1").display()
    );
    let host = Host::start(dir.path(), &config).await;
    for count in 1..=3 {
        let (status, reply) = post_json(&host, "/legacy", "{}").await;
        assert_eq!(
            (status, reply),
            (200, json!({ "interface": "0.1.0", "count": count }))
        );
    }
    let (_, instances) = host.admin(Method::GET, "/v1/instances", None).await;
    assert_eq!(instances[0]["interface_version"], "0.1.0");
    // And it can be upgraded in place to a 0.2 plugin that keeps its state.
    let file = versioned("2");
    host.cli(&[
        "plugin",
        "install",
        file.to_str().unwrap(),
        "--instance",
        "legacy",
    ])
    .unwrap();
    let (status, reply) = post_json(&host, "/legacy", "{}").await;
    assert_eq!(
        (status, &reply["version"], &reply["count"]),
        (200, &json!("2"), &json!(4))
    );
}

/// Waits until the echo instance answers as `version`.
async fn wait_for_version(host: &Host, version: &str) {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let answer = ping(&client, host).await;
        if answer.status == 200 && answer.version == version {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "still version {:?} ({}):\n{}",
            answer.version,
            answer.status,
            host.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_edited_configuration_applies_on_sighup_and_on_reload() {
    let dir = tempfile::tempdir().unwrap();
    let target = MockProvider::start(|_, _| (StatusCode::OK, json!({ "ok": true }))).await;
    let config = echo_config(&target.base_url, "");
    let host = Host::start(dir.path(), &config).await;
    wait_for_version(&host, "1").await;
    let config_file = dir.path().join("simrelay.toml");

    // The operator edits the file and sends SIGHUP: the running host takes version 2.
    let edited = config.replace(
        &versioned("1").display().to_string(),
        &versioned("2").display().to_string(),
    );
    std::fs::write(&config_file, &edited).unwrap();
    host.signal("HUP");
    wait_for_version(&host, "2").await;

    // The same through the command line.
    let edited = config.replace(
        &versioned("1").display().to_string(),
        &versioned("3").display().to_string(),
    );
    std::fs::write(&config_file, &edited).unwrap();
    host.cli(&["reload"]).unwrap();
    wait_for_version(&host, "3").await;

    // A broken edit changes nothing and says why.
    std::fs::write(&config_file, "[instances.echo\nplugin = ").unwrap();
    let refused = host.cli(&["reload"]).unwrap_err();
    assert!(!refused.is_empty());
    wait_for_version(&host, "3").await;
}
