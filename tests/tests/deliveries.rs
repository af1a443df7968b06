//! What operators do with deliveries, through the command line against a running host:
//! a delivery that exhausts its policy is dead, `retry` delivers it once the marketplace
//! takes it again, and `replay` sends a window of finished deliveries once more.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use serde_json::{Value, json};
use simrelay_e2e::*;

/// `simrelay deliveries ARGS --json`, parsed.
fn deliveries(host: &Host, args: &[&str]) -> Value {
    let mut command = vec!["deliveries"];
    command.extend_from_slice(args);
    command.push("--json");
    let output = host
        .cli(&command)
        .unwrap_or_else(|error| panic!("simrelay {command:?} failed: {error}"));
    serde_json::from_str(&output).unwrap_or_else(|_| panic!("not JSON: {output}"))
}

/// Waits until `simrelay deliveries show ID` reports `state`.
async fn wait_for_state(host: &Host, id: &str, state: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let delivery = deliveries(host, &["show", id]);
        if delivery["state"]["state"] == state {
            return delivery;
        }
        assert!(
            Instant::now() < deadline,
            "delivery {id} never became {state}: {delivery:#}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A host whose only SMS could not be pushed: the marketplace refuses every push until
/// `open` is set, and two refusals exhaust the policy.
struct DeadDelivery {
    _dir: tempfile::TempDir,
    host: Host,
    smsbower: MockProvider,
    open: Arc<AtomicBool>,
    /// The dead delivery, as `deliveries list` shows it.
    dead: Value,
}

impl DeadDelivery {
    async fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let open = Arc::new(AtomicBool::new(false));
        let accepting = open.clone();
        let smsbower = MockProvider::start(move |_, request| {
            if request.path == SMSBOWER_PUSH_PATH && !accepting.load(Ordering::SeqCst) {
                return (StatusCode::OK, json!({ "status": "ERROR" }));
            }
            marketplace_answer(request)
        })
        .await;
        let config = ejoin_to_smsbower_config(&smsbower.base_url, 1)
            .replace("jitter = 0.0 }", "jitter = 0.0, max_attempts = 2 }");
        let host = Host::start(dir.path(), &config).await;
        open_sample_activation(&host).await;
        let (status, _) = post_ejoin(&host, EJOIN_KEY, RECV_SMS_SAMPLE).await;
        assert_eq!(status, 200);

        let deadline = Instant::now() + Duration::from_secs(20);
        let dead = loop {
            let dead = deliveries(
                &host,
                &["list", "--state", "dead", "--instance", "smsbower"],
            );
            if let Some(first) = dead.as_array().and_then(|list| list.first()) {
                break first.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no dead delivery:\n{}",
                host.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        DeadDelivery {
            _dir: dir,
            host,
            smsbower,
            open,
            dead,
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dead_delivery_is_retried_and_replayed_through_the_cli() {
    let DeadDelivery {
        _dir,
        host,
        smsbower,
        open,
        dead,
    } = DeadDelivery::new().await;

    // Two refusals exhausted the policy: the delivery is dead, with every attempt kept.
    let id = dead["id"].to_string();
    assert_eq!(dead["attempts"], 2, "{dead:#}");
    assert_eq!(smsbower.pushes().len(), 2);
    assert!(smsbower.accepted().is_empty());
    let shown = host.cli(&["deliveries", "show", &id]).unwrap();
    assert!(shown.contains("dead"), "{shown}");
    assert!(
        !shown.contains(SMSBOWER_KEY),
        "the partner key is shown: {shown}"
    );

    // The marketplace is back; the operator retries it, and it is delivered once.
    open.store(true, Ordering::SeqCst);
    host.cli(&["deliveries", "retry", &id]).unwrap();
    wait_for_state(&host, &id, "delivered").await;
    assert_eq!(smsbower.accepted().len(), 1);
    let sms_id = smsbower.accepted()[0]["smsId"].clone();

    // Replaying the last hour sends it once more, with the same smsId, and nothing else.
    let replayed = deliveries(
        &host,
        &["replay", "--instance", "smsbower", "--since", "1h"],
    );
    assert_eq!(replayed["replayed"], json!([dead["id"]]), "{replayed:#}");
    smsbower
        .wait_for(Duration::from_secs(20), |received| {
            received
                .iter()
                .filter(|request| request.accepted && request.path == SMSBOWER_PUSH_PATH)
                .count()
                >= 2
        })
        .await;
    wait_for_state(&host, &id, "delivered").await;
    let accepted = smsbower.accepted();
    assert_eq!(accepted.len(), 2, "{accepted:#?}");
    assert_eq!(accepted[1]["smsId"], sms_id);
    let logs = host.kill();
    assert!(!logs.contains(SMSBOWER_KEY));
}

/// Runs headless Chromium on `url` with `flags`; `None` when no Chromium can be had.
fn chromium(flags: &[&str], url: &str) -> Option<String> {
    let script = workspace_root().join("tests/scripts/chromium.sh");
    let found = std::process::Command::new(&script).output().unwrap();
    if !found.status.success() {
        eprintln!(
            "SKIPPED the status page check: {}",
            String::from_utf8_lossy(&found.stderr).trim()
        );
        return None;
    }
    let binary = String::from_utf8(found.stdout).unwrap().trim().to_string();
    let output = std::process::Command::new(binary)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--virtual-time-budget=5000",
        ])
        .args(flags)
        .arg(url)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    Some(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The text of the element with `id` in a dumped page.
fn element_text<'a>(dom: &'a str, id: &str) -> &'a str {
    let start = dom
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no #{id} in the page"));
    let after_tag = start + dom[start..].find('>').unwrap() + 1;
    let end = after_tag + dom[after_tag..].find('<').unwrap();
    &dom[after_tag..end]
}

#[tokio::test(flavor = "multi_thread")]
async fn the_status_page_in_chromium_shows_what_the_api_says() {
    let DeadDelivery {
        _dir, host, dead, ..
    } = DeadDelivery::new().await;
    let url = format!("{}/#token={}", host.admin_url(), host.admin_token());
    let Some(dom) = chromium(&["--dump-dom"], &url) else {
        return;
    };
    let screenshot = std::env::temp_dir().join(format!("simrelay-status-{}.png", host.pid()));
    chromium(
        &[
            "--window-size=1280,1000",
            &format!("--screenshot={}", screenshot.display()),
        ],
        &url,
    );
    eprintln!("status page screenshot: {}", screenshot.display());
    assert!(std::fs::metadata(&screenshot).unwrap().len() > 0);

    let (_, health) = host.admin(reqwest::Method::GET, "/v1/health", None).await;
    let (_, sims) = host.admin(reqwest::Method::GET, "/v1/sims", None).await;
    assert_eq!(
        element_text(&dom, "error"),
        "",
        "the page reported an error"
    );
    assert_eq!(
        element_text(&dom, "instance-count"),
        health["instances"].to_string()
    );
    assert_eq!(
        element_text(&dom, "deliveries-pending"),
        health["deliveries_pending"].to_string()
    );
    assert_eq!(
        element_text(&dom, "events-queued"),
        health["events_queued"].to_string()
    );
    let sims = sims.as_array().unwrap();
    assert_eq!(
        element_text(&dom, "sims-online"),
        format!("{} / {}", sims.len(), sims.len()),
        "the sample SIM is registered"
    );
    // Both instances are listed, and the dead delivery is among the failures.
    for instance in ["ejoin", "smsbower"] {
        assert!(
            dom.contains(&format!("data-instance=\"{instance}\"")),
            "{instance} missing"
        );
    }
    assert!(
        dom.contains(&format!("<td>{}</td>", dead["id"])),
        "the dead delivery {} is not on the page",
        dead["id"]
    );
    assert!(
        !dom.contains(SMSBOWER_KEY),
        "the partner key is on the page"
    );
}
