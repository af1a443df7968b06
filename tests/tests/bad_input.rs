//! Bad input gets a clear error, the host keeps serving, and nothing accepted is lost.

use std::time::Duration;

use serde_json::json;
use simrelay_e2e::*;

#[tokio::test(flavor = "multi_thread")]
async fn bad_webhooks_get_clear_errors_and_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let smsbower = MockProvider::accepting().await;
    let host = Host::start(dir.path(), &ejoin_to_smsbower_config(&smsbower.base_url, 1)).await;
    open_sample_activation(&host).await;

    // Accepted first, so the errors below have something to lose.
    let (status, _) = post_ejoin(&host, EJOIN_KEY, RECV_SMS_SAMPLE).await;
    assert_eq!(status, 200);

    let (status, reply) = post_ejoin(&host, "wrong-key", RECV_SMS_SAMPLE).await;
    assert_eq!((status, reply), (401, json!({ "message": "Bad Api Key" })));

    let (status, reply) = post_ejoin(&host, EJOIN_KEY, r#"{"type": "recv-sms", "sms": [[0,"#).await;
    assert_eq!(status, 400);
    assert!(
        reply["message"]
            .as_str()
            .unwrap()
            .contains("Malformed JSON"),
        "{reply}"
    );

    let (status, reply) = post_ejoin(&host, EJOIN_KEY, r#"{"type": "reboot"}"#).await;
    assert_eq!(status, 400);
    assert!(
        reply["message"].as_str().unwrap().contains("reboot"),
        "{reply}"
    );

    // One row with broken base64 beside a good one: the good one still goes through.
    let mixed = r#"{"type": "recv-sms", "sms": [
        [0, "1.01", 1700000000, "Bank", "79001234567", "%%%not base64%%%"],
        [0, "1.01", 1700000001, "Shop", "79001234567", "U2Vjb25k"]
    ]}"#;
    let (status, reply) = post_ejoin(&host, EJOIN_KEY, mixed).await;
    assert_eq!(status, 200);
    assert!(
        reply["message"].as_str().unwrap().contains("base64"),
        "{reply}"
    );

    let response = reqwest::Client::new()
        .post(host.url("/no/such/route"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 404);
    let reply: serde_json::Value = response.json().await.unwrap();
    assert_eq!(
        reply,
        json!({ "error": "no route for POST /no/such/route" })
    );

    // Both good messages arrive; the broken row and the rejected webhooks add nothing.
    smsbower.wait_for_pushes(Duration::from_secs(10), 2).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut texts: Vec<String> = smsbower
        .accepted()
        .iter()
        .map(|push| push["text"].as_str().unwrap().to_string())
        .collect();
    texts.sort();
    assert_eq!(texts, ["Hello World", "Second"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_broken_plugin_file_stops_start_up_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("broken.wasm");
    std::fs::write(&broken, b"this is not wasm").unwrap();
    let config = format!("[instances.broken]\nplugin = \"{}\"\n", broken.display());
    let log = Host::try_start(dir.path(), &config, &[])
        .await
        .err()
        .expect("the host must refuse to start");
    assert!(log.contains("instance `broken`"), "{log}");
    assert!(
        log.contains("is not a valid WebAssembly component"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_config_naming_an_unset_variable_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "[instances.ejoin]\nplugin = \"{}\"\nsettings = {{ api_key = \"${{SIMRELAY_TEST_UNSET_VARIABLE}}\" }}\n",
        plugin_path("ejoin").display()
    );
    let log = Host::try_start(dir.path(), &config, &[])
        .await
        .err()
        .expect("the host must refuse to start");
    assert!(
        log.contains("SIMRELAY_TEST_UNSET_VARIABLE is not set"),
        "{log}"
    );
}
