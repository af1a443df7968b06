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

/// A SmsBower that takes `delay_ms` per push, refuses them while `open` is unset, and
/// counts how many it handles at once and which `smsId`s it accepted.
#[derive(Clone, Default)]
struct RecoveringMarketplace {
    delay_ms: u64,
    open: Arc<AtomicBool>,
    in_flight: Arc<std::sync::atomic::AtomicUsize>,
    peak: Arc<std::sync::atomic::AtomicUsize>,
    accepted: Arc<std::sync::Mutex<Vec<String>>>,
}

impl RecoveringMarketplace {
    async fn start(&self) -> String {
        let state = self.clone();
        let app = axum::Router::new().fallback(move |body: axum::body::Bytes| {
            let state = state.clone();
            async move {
                let form: std::collections::HashMap<String, String> =
                    form_urlencoded::parse(&body).into_owned().collect();
                if form.get("action").map(String::as_str) != Some("PUSH_SMS") {
                    return axum::Json(json!({ "status": 0 }));
                }
                let now = state.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                state.peak.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(state.delay_ms)).await;
                state.in_flight.fetch_sub(1, Ordering::SeqCst);
                if !state.open.load(Ordering::SeqCst) {
                    return axum::Json(json!({ "status": "ERROR" }));
                }
                let sms_id = form.get("smsId").cloned().unwrap_or_default();
                state.accepted.lock().unwrap().push(sms_id);
                axum::Json(json!({ "status": "SUCCESS" }))
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base_url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        base_url
    }

    fn accepted(&self) -> Vec<String> {
        self.accepted.lock().unwrap().clone()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn after_an_outage_the_backlog_drains_once_within_the_destination_limit() {
    const SMS: usize = 200;
    let dir = tempfile::tempdir().unwrap();
    let marketplace = RecoveringMarketplace {
        delay_ms: 50,
        ..Default::default()
    };
    let base_url = marketplace.start().await;
    let host = Host::start(dir.path(), &ejoin_to_smsbower_config(&base_url, 1)).await;
    open_sample_activation(&host).await;

    // The marketplace is down while the gateway delivers 200 SMS.
    let client = reqwest::Client::new();
    for n in 0..SMS {
        let body = format!(
            r#"{{"type":"recv-sms","sms":[[0,"1.01",{},"BankInfo","{SAMPLE_NUMBER}","T3V0YWdl"]]}}"#,
            1_700_000_000 + n
        );
        let answer = client
            .post(host.url(&format!("/api/{EJOIN_KEY}/webhook")))
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 200);
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(marketplace.accepted().is_empty());

    // It comes back: the backlog drains, each SMS accepted once, 8 at a time at most.
    marketplace.open.store(true, Ordering::SeqCst);
    let recovered = Instant::now();
    let deadline = recovered + Duration::from_secs(60);
    while marketplace.accepted().len() < SMS {
        assert!(
            Instant::now() < deadline,
            "{} of {SMS} accepted",
            marketplace.accepted().len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let drained_in = recovered.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let accepted = marketplace.accepted();
    let distinct: std::collections::BTreeSet<_> = accepted.iter().collect();
    assert_eq!(accepted.len(), SMS, "repeats after SUCCESS");
    assert_eq!(distinct.len(), SMS);
    let peak = marketplace.peak.load(Ordering::SeqCst);
    assert!(
        peak <= 8,
        "{peak} pushes at once, over deliveries_per_destination"
    );
    eprintln!(
        "outage: {SMS} SMS queued, drained in {drained_in:?} after recovery, \
         peak concurrency at the marketplace {peak}"
    );
}

/// Sells a number of the farm on `route`, waiting until the inventory has one.
async fn sell(host: &Host, route: &str, key: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let answer = get_number(host, route, key, "tg").await;
        if answer["status"] == "SUCCESS" {
            return answer["number"].to_string().trim_matches('"').to_string();
        }
        assert!(Instant::now() < deadline, "{route} sold nothing: {answer}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hanging_marketplace_does_not_hold_up_another() {
    let dir = tempfile::tempdir().unwrap();
    // SmsBower answers every push only after 8 s; Onlinesim at once.
    let slow = RecoveringMarketplace {
        delay_ms: 8_000,
        ..Default::default()
    };
    slow.open.store(true, Ordering::SeqCst);
    let slow_url = slow.start().await;
    let fast = MockProvider::accepting().await;
    let config = ejoin_to_both_marketplaces_config(&slow_url, &fast.base_url, 1, "");
    let host = Host::start(dir.path(), &config).await;
    let sims = farm(2, 4);
    let (status, _) = post_ejoin(
        &host,
        EJOIN_KEY,
        &farm_dev_status("00:1A:2B:3C:4D:5F", &sims),
    )
    .await;
    assert_eq!(status, 200);
    let on_bower = sell(&host, "/smsbower", SMSBOWER_KEY).await;
    let on_onlinesim = sell(&host, "/onlinesim", ONLINESIM_KEY).await;

    // Ten SMS for SmsBower fill its 8 connections and queue; then one for Onlinesim.
    let sms = |number: &str, n: u64| {
        format!(
            r#"{{"type":"recv-sms","sms":[[0,"",{},"Telegram","{number}","Q29kZSAxMjM0"]]}}"#,
            1_700_000_000 + n
        )
    };
    for n in 0..10 {
        assert_eq!(
            post_ejoin(&host, EJOIN_KEY, &sms(&on_bower, n)).await.0,
            200
        );
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let sent = Instant::now();
    assert_eq!(
        post_ejoin(&host, EJOIN_KEY, &sms(&on_onlinesim, 100))
            .await
            .0,
        200
    );
    fast.wait_for(Duration::from_secs(20), |received| {
        received.iter().any(|r| r.path == ONLINESIM_PUSH_PATH)
    })
    .await;
    let fast_latency = sent.elapsed();
    assert!(
        slow.accepted().is_empty(),
        "Onlinesim's push waited for SmsBower's answers ({fast_latency:?})"
    );
    eprintln!(
        "slow beside fast: Onlinesim's push arrived {fast_latency:?} after its webhook, while \
         SmsBower held {} pushes unanswered",
        slow.in_flight.load(Ordering::SeqCst)
    );
}

/// The plugins' key-value entries and the deliveries the stopped host's database keeps.
fn records_kept(data_dir: &std::path::Path) -> usize {
    let db = simrelay::db::Db::open(data_dir).unwrap();
    let snapshot = db.kv_snapshot();
    let entries = ["ejoin", "smsbower"]
        .iter()
        .map(|label| snapshot.keys(label, None, usize::MAX).unwrap().0.len())
        .sum::<usize>();
    entries + db.deliveries().unwrap().len()
}

// Every retention window is about a second here: the host's, Ejoin's de-duplication marks
// and SmsBower's push records and ended activations, each swept by its own ticks.
#[tokio::test(flavor = "multi_thread")]
async fn with_retention_the_database_stops_growing_under_steady_traffic() {
    let dir = tempfile::tempdir().unwrap();
    let smsbower = MockProvider::accepting().await;
    // Everything finished may go after a second; the plugins forget theirs after two.
    let config = format!(
        "[host.retention]\ndeliveries_hours = 0.0003\ndedupe_hours = 0.0003\n\
         messages_hours = 0.0003\n{}",
        ejoin_to_smsbower_config(&smsbower.base_url, 1)
            .replace(
                r#"settings = { api_key = "ejoin-secret-4f9a" }"#,
                r#"settings = { api_key = "ejoin-secret-4f9a", dedupe_window_secs = "2" }"#,
            )
            .replace("tick_interval_secs = 60", "tick_interval_secs = 1")
            .replace("services = [", r#"forget_after_secs = "2", services = ["#)
    );
    assert!(config.contains("dedupe_window_secs") && config.contains("forget_after_secs"));
    let client = reqwest::Client::new();
    let mut kept_after_rounds = Vec::new();
    let mut sent = 0;
    for _round in 0..9 {
        // Retention runs at start-up (and every minute after): each round starts with one.
        let host = Host::start(dir.path(), &config).await;
        if sent == 0 {
            open_sample_activation(&host).await;
        }
        for _ in 0..300 {
            let body = format!(
                r#"{{"type":"recv-sms","sms":[[0,"1.01",{},"BankInfo","{SAMPLE_NUMBER}","UmV0ZW50aW9u"]]}}"#,
                1_700_000_000 + sent
            );
            let answer = client
                .post(host.url(&format!("/api/{EJOIN_KEY}/webhook")))
                .body(body)
                .send()
                .await
                .unwrap();
            assert_eq!(answer.status(), 200);
            sent += 1;
        }
        smsbower
            .wait_for_pushes(Duration::from_secs(30), sent)
            .await;
        // Let everything of this round age past the retention windows.
        tokio::time::sleep(Duration::from_secs(3)).await;
        drop(host);
        kept_after_rounds.push(records_kept(&dir.path().join("data")));
    }
    eprintln!("retention: records kept after each round of 300 SMS: {kept_after_rounds:?}");
    // Start-up runs retention at once, beside serving: the last round's records go soon.
    let host = Host::start(dir.path(), &config).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let kept = loop {
        let (_, delivered) = host
            .admin(
                reqwest::Method::GET,
                "/v1/deliveries?state=delivered&limit=10000",
                None,
            )
            .await;
        let kept = delivered.as_array().map_or(0, Vec::len);
        if kept == 0 || std::time::Instant::now() > deadline {
            break kept;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(kept, 0, "delivered records kept past retention");
    // What a round leaves is gone by the end of the next: the count stays where the first
    // rounds put it, however many rounds run.
    let early = kept_after_rounds[..3].iter().max().unwrap();
    let late = kept_after_rounds[6..].iter().max().unwrap();
    assert!(
        late <= early,
        "the database kept growing: {kept_after_rounds:?} records"
    );
}
