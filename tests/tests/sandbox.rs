//! A plugin that traps, loops, exhausts memory or leaks a secret fails that call only, with
//! a clear error; the host and its other plugins keep working.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use simrelay_e2e::*;

const PASSWORD: &str = "hunter2-but-longer";

async fn misbehave(host: &Host, how: &str) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(host.url(&format!("/misbehave/{how}")))
        .send()
        .await
        .expect("simrelay did not answer");
    (response.status().as_u16(), response.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_misbehaving_plugin_fails_only_its_own_call() {
    let dir = tempfile::tempdir().unwrap();
    let smsbower = MockProvider::accepting().await;
    let config = ejoin_to_smsbower_config(&smsbower.base_url, 1)
        + &format!(
            r#"
[instances.misbehaving]
plugin = "{}"
settings = {{ password = "{PASSWORD}" }}
limits = {{ timeout_ms = 200, memory_mb = 16 }}

[[routes]]
path = "/misbehave/{{how}}"
instance = "misbehaving"
"#,
            plugin_path("misbehaving").display()
        );
    let host = Host::start(dir.path(), &config).await;
    open_sample_activation(&host).await;

    let (status, reply) = misbehave(&host, "trap").await;
    assert_eq!(status, 500);
    let error = reply["error"].as_str().unwrap();
    assert!(
        error.contains("plugin crashed") && error.contains("send it again"),
        "{error}"
    );

    let (status, reply) = misbehave(&host, "loop").await;
    assert_eq!(status, 500);
    assert!(
        reply["error"]
            .as_str()
            .unwrap()
            .contains("exceeded its CPU deadline of 200 ms"),
        "{reply}"
    );

    // The same request would exhaust memory again: a final answer, not "send it again".
    let (status, reply) = misbehave(&host, "oom").await;
    assert_eq!(status, 422);
    let error = reply["error"].as_str().unwrap();
    assert!(
        error.contains("exceeded its memory limit of 16 MiB")
            && error.contains("sending it again will not help"),
        "{reply}"
    );

    let (status, reply) = misbehave(&host, "leak").await;
    assert_eq!(status, 500);
    let error = reply["error"].as_str().unwrap();
    assert!(
        error.contains("[redacted]") && !error.contains(PASSWORD),
        "{error}"
    );

    // A plugin may wait (here on a clock): the call waits off the host's async worker.
    assert_eq!(
        misbehave(&host, "sleep").await,
        (200, json!({ "message": "slept" }))
    );

    // The same plugin still serves, and so does the rest of the host.
    assert_eq!(
        misbehave(&host, "behave").await,
        (200, json!({ "message": "fine" }))
    );
    let (status, _) = post_ejoin(&host, EJOIN_KEY, RECV_SMS_SAMPLE).await;
    assert_eq!(status, 200);
    smsbower.wait_for_pushes(Duration::from_secs(10), 1).await;
    assert_eq!(smsbower.accepted()[0]["text"], "Hello World");

    let logs = host.kill();
    assert!(
        logs.contains("the password is [redacted]"),
        "plugin output is logged, redacted:\n{logs}"
    );
    assert!(
        !logs.contains(PASSWORD),
        "a secret leaked into the logs:\n{logs}"
    );
}

/// Ejoin → SmsBower, with the misbehaving plugin as a second consumer of Ejoin's events.
fn with_misbehaving_consumer(smsbower_base_url: &str) -> String {
    ejoin_to_smsbower_config(smsbower_base_url, 1).replace(
        r#"forward_to = ["smsbower"]"#,
        r#"forward_to = ["smsbower", "misbehaving"]"#,
    ) + &format!(
        "\n[instances.misbehaving]\nplugin = \"{}\"\n",
        plugin_path("misbehaving").display()
    )
}

/// An Ejoin `recv-sms` webhook body: one SMS from "Bank" received at `at` (Unix seconds),
/// its text in base64.
fn bank_sms(at: u64, text_base64: &str) -> String {
    format!(r#"{{"type":"recv-sms","sms":[[0,"1.01",{at},"Bank","79001234567","{text_base64}"]]}}"#)
}

/// The `simrelay_events_total` sample of events for `instance` that took `path`.
fn events_total(instance: &str, path: &str) -> String {
    format!("simrelay_events_total{{instance=\"{instance}\",path=\"{path}\"}}")
}

#[tokio::test(flavor = "multi_thread")]
async fn an_event_a_plugin_fails_on_stays_queued_and_others_still_get_it() {
    let dir = tempfile::tempdir().unwrap();
    let smsbower = MockProvider::accepting().await;
    let config = with_misbehaving_consumer(&smsbower.base_url);
    let host = Host::start(dir.path(), &config).await;
    open_sample_activation(&host).await;
    let counted =
        async |instance: &str, path: &str| host.metric(&events_total(instance, path)).await;
    let before = [
        counted("smsbower", "handed_over").await,
        counted("misbehaving", "queued").await,
    ];

    // "trap" in base64: the misbehaving instance panics on this message's event.
    let trap = bank_sms(1700000000, "dHJhcA==");
    let (status, _) = post_ejoin(&host, EJOIN_KEY, &trap).await;
    assert_eq!(status, 200, "the gateway's webhook is accepted");
    smsbower.wait_for_pushes(Duration::from_secs(10), 1).await;
    assert_eq!(
        smsbower.accepted()[0]["text"],
        "trap",
        "the other consumer gets it"
    );
    // An idle consumer gets its event at once, in the webhook's own commit; the failed one
    // waits for its retry in the queue, and a later event waits behind it, in order.
    // SmsBower is idle once its push's result is handled.
    host.wait_for_delivered("smsbower", Duration::from_secs(10))
        .await;
    let fine = bank_sms(1700000001, "ZmluZQ==");
    assert_eq!(post_ejoin(&host, EJOIN_KEY, &fine).await.0, 200);
    smsbower.wait_for_pushes(Duration::from_secs(10), 2).await;
    let after = [
        counted("smsbower", "handed_over").await,
        counted("misbehaving", "queued").await,
    ];
    assert_eq!([after[0] - before[0], after[1] - before[1]], [2.0, 2.0]);
    assert_eq!(counted("smsbower", "queued").await, 0.0);
    // The later event is due at once, before the failed one's retry: it is handled.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let logs = host.kill();
    assert!(
        logs.contains("event not handled, will retry: plugin crashed: panicked or aborted"),
        "{logs}"
    );
    // The failed event survives a restart, still waiting for its consumer.
    let host = Host::start(dir.path(), &config).await;
    let logs = host.kill();
    assert!(logs.contains("queued_events=1"), "{logs}");
    assert_eq!(smsbower.pushes().len(), 2, "nothing pushed twice");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_consumer_slow_on_events_gets_them_queued_not_handed_over() {
    let dir = tempfile::tempdir().unwrap();
    let smsbower = MockProvider::accepting().await;
    let config = with_misbehaving_consumer(&smsbower.base_url);
    let host = Host::start(dir.path(), &config).await;
    open_sample_activation(&host).await;
    let counted = async |path: &str| host.metric(&events_total("misbehaving", path)).await;
    let before = [counted("handed_over").await, counted("queued").await];

    // "slow" and "fine" in base64: each "slow" event takes the consumer 50 ms, and the
    // gateway's webhook waits for it; after three in a row the next one is queued instead.
    let slow = (0..3).map(|n| (1700000000 + n, "c2xvdw=="));
    for (at, text) in slow.chain([(1700000003, "ZmluZQ==")]) {
        assert_eq!(
            post_ejoin(&host, EJOIN_KEY, &bank_sms(at, text)).await.0,
            200
        );
    }
    smsbower.wait_for_pushes(Duration::from_secs(10), 4).await;
    let after = [counted("handed_over").await, counted("queued").await];
    assert_eq!([after[0] - before[0], after[1] - before[1]], [3.0, 1.0]);
    assert!(
        host.logs().contains("they are queued from now on"),
        "{}",
        host.logs()
    );
}

/// A consumer that falls behind holds back the webhooks that feed it, and loses nothing.
#[tokio::test(flavor = "multi_thread")]
async fn webhooks_wait_for_a_consumer_that_falls_behind() {
    let dir = tempfile::tempdir().unwrap();
    let smsbower = MockProvider::accepting().await;
    let config = with_misbehaving_consumer(&smsbower.base_url);
    let host = Host::start(dir.path(), &config).await;
    open_sample_activation(&host).await;
    // A trapped event waits for its retry, so the consumer's events are queued from now on,
    // not handed over (and a slow one does not demote it); each "slow" one takes 50 ms.
    assert_eq!(
        post_ejoin(&host, EJOIN_KEY, &bank_sms(1700000000, "dHJhcA=="))
            .await
            .0,
        200
    );
    let mut sent = 1;
    for _ in 0..12 {
        assert_eq!(
            post_ejoin(&host, EJOIN_KEY, &bank_sms(1700000000 + sent, "c2xvdw=="))
                .await
                .0,
            200
        );
        sent += 1;
    }
    // While the consumer works through 600 ms of them, what arrives waits behind them.
    let until = std::time::Instant::now() + Duration::from_millis(1500);
    while std::time::Instant::now() < until {
        assert_eq!(
            post_ejoin(&host, EJOIN_KEY, &bank_sms(1700000000 + sent, "ZmluZQ=="))
                .await
                .0,
            200
        );
        sent += 1;
    }
    let held = host
        .metric(r#"simrelay_webhooks_held_back_total{instance="ejoin"}"#)
        .await;
    assert!(held >= 1.0, "no webhook was held back: {}", host.logs());
    smsbower
        .wait_for_pushes(Duration::from_secs(20), sent as usize)
        .await;
    assert_eq!(
        smsbower.pushes().len(),
        sent as usize,
        "each SMS pushed once"
    );
}

/// Posts `body` to a misbehaving instance's route and returns the reply's `message`.
async fn ask(host: &Host, instance: &str, how: &str, body: &str) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(host.url(&format!("/{instance}/{how}")))
        .body(body.to_string())
        .send()
        .await
        .expect("simrelay did not answer");
    let status = response.status().as_u16();
    (
        status,
        response.json::<Value>().await.unwrap()["message"].clone(),
    )
}

/// Wasm instances serve many calls, so a global in linear memory outlives a call. It
/// stays with the one configured instance that wrote it: another instance of the same
/// plugin never sees it, and a trap throws the instance, and the global, away.
#[tokio::test(flavor = "multi_thread")]
async fn a_global_stays_in_its_own_instance_and_dies_with_a_trap() {
    let dir = tempfile::tempdir().unwrap();
    let plugin = plugin_path("misbehaving");
    let config = format!(
        r#"
[instances.alice]
plugin = "{plugin}"

[instances.bob]
plugin = "{plugin}"

[[routes]]
path = "/alice/{{how}}"
instance = "alice"

[[routes]]
path = "/bob/{{how}}"
instance = "bob"
"#,
        plugin = plugin.display()
    );
    let host = Host::start(dir.path(), &config).await;

    assert_eq!(
        ask(&host, "alice", "remember", "alice's secret").await.0,
        200
    );
    assert_eq!(
        ask(&host, "alice", "recall", "").await,
        (200, json!("alice's secret")),
        "the instance was reused: the global is there for its next call"
    );
    assert_eq!(
        ask(&host, "bob", "recall", "").await,
        (200, json!("")),
        "another instance of the same plugin sees nothing of it"
    );
    assert_eq!(ask(&host, "bob", "remember", "bob's secret").await.0, 200);
    assert_eq!(
        ask(&host, "alice", "recall", "").await,
        (200, json!("alice's secret")),
        "nor does it reach the first"
    );

    assert_eq!(ask(&host, "alice", "trap", "").await.0, 500);
    assert_eq!(
        ask(&host, "alice", "recall", "").await,
        (200, json!("")),
        "the instance that trapped is gone, with its memory"
    );
    assert_eq!(
        ask(&host, "bob", "recall", "").await,
        (200, json!("bob's secret")),
        "bob's instance lost nothing"
    );
}

/// Plugin calls run on the host's async workers. Two instances looping at once, as many as
/// the test machine has cores, still leave the host serving: a call found running long
/// hands its worker's other work to another thread, so a gateway's webhook is answered
/// while both loops still run.
#[tokio::test(flavor = "multi_thread")]
async fn plugins_looping_at_once_do_not_stall_the_host() {
    let dir = tempfile::tempdir().unwrap();
    let smsbower = MockProvider::accepting().await;
    let plugin = plugin_path("misbehaving");
    let mut config = ejoin_to_smsbower_config(&smsbower.base_url, 1);
    for name in ["alice", "bob"] {
        config += &format!(
            r#"
[instances.{name}]
plugin = "{plugin}"
limits = {{ timeout_ms = 3000 }}

[[routes]]
path = "/{name}/{{how}}"
instance = "{name}"
"#,
            plugin = plugin.display()
        );
    }
    let host = Arc::new(Host::start(dir.path(), &config).await);
    open_sample_activation(&host).await;

    let loops: Vec<_> = ["alice", "bob"]
        .into_iter()
        .map(|name| {
            let host = host.clone();
            tokio::spawn(async move { ask(&host, name, "loop", "").await.0 })
        })
        .collect();
    // Time for both calls to get under way; they run for seconds.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, _) = post_ejoin(&host, EJOIN_KEY, RECV_SMS_SAMPLE).await;
    assert_eq!(status, 200);
    assert!(
        loops.iter().all(|call| !call.is_finished()),
        "the webhook was answered only after the loops ended"
    );
    for call in loops {
        assert_eq!(call.await.unwrap(), 500);
    }
    smsbower.wait_for_pushes(Duration::from_secs(10), 1).await;
}
