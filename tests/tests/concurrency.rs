//! Many webhooks at once on one instance: every SMS is pushed exactly once, each with its
//! own smsId, though calls run while earlier outcomes are still on their way to disk.

use std::collections::BTreeSet;
use std::time::Duration;

use base64::Engine;
use simrelay_e2e::*;

const MESSAGES: usize = 60;
const ALL: usize = MESSAGES + 1;

fn sms(n: usize) -> String {
    let text = base64::engine::general_purpose::STANDARD.encode(format!("message {n}"));
    format!(
        r#"{{"type":"recv-sms","sms":[[0,"1.01",{},"Sender{n}","79001234567","{text}"]]}}"#,
        1_700_000_000 + n
    )
}

/// Posts every body at the same time.
async fn post_all(host: &Host, bodies: &[String]) {
    let posts = bodies.iter().map(|body| post_ejoin(host, EJOIN_KEY, body));
    for (status, reply) in futures::future::join_all(posts).await {
        assert_eq!(status, 200, "{reply}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_webhooks_are_each_pushed_once_with_their_own_sms_id() {
    let dir = tempfile::tempdir().unwrap();
    let smsbower = MockProvider::accepting().await;
    let host = Host::start(dir.path(), &ejoin_to_smsbower_config(&smsbower.base_url, 1)).await;
    open_sample_activation(&host).await;

    let distinct: Vec<String> = (0..MESSAGES).map(sms).collect();
    post_all(&host, &distinct).await;
    smsbower
        .wait_for_pushes(Duration::from_secs(30), MESSAGES)
        .await;
    // The gateway re-sends everything at once: nothing new may be pushed.
    post_all(&host, &distinct).await;
    // One new SMS arrives many times at once. Each call must see the earlier calls' writes
    // before they are durable, so only the first produces an event.
    let burst = vec![sms(MESSAGES); 30];
    post_all(&host, &burst).await;
    smsbower.wait_for_pushes(Duration::from_secs(30), ALL).await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    let pushes = smsbower.pushes();
    assert_eq!(pushes.len(), ALL, "each SMS pushed exactly once");
    let texts: BTreeSet<&str> = pushes
        .iter()
        .map(|p| p.body["text"].as_str().unwrap())
        .collect();
    let expected: Vec<String> = (0..ALL).map(|n| format!("message {n}")).collect();
    assert_eq!(texts, expected.iter().map(String::as_str).collect());
    let sms_ids: BTreeSet<i64> = pushes
        .iter()
        .map(|p| p.body["smsId"].as_str().unwrap().parse::<i64>().unwrap())
        .collect();
    assert_eq!(sms_ids.len(), ALL, "every SMS has its own smsId");
    let logs = host.kill();
    assert!(
        !logs.contains("dropped deliveries already asked for"),
        "a re-sent SMS became a second event:\n{logs}"
    );
}
