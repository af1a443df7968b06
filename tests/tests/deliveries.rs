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

#[tokio::test(flavor = "multi_thread")]
async fn a_dead_delivery_is_retried_and_replayed_through_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    // The marketplace refuses every push until `open` is set.
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

    // Two refusals exhaust the policy: the delivery is dead, with every attempt kept.
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
