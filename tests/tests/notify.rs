//! The Python `notify` plugin serves beside the Rust ones: a SIM that goes offline at an
//! Ejoin gateway produces one Telegram alert, and a repeat of the same state none.

use std::time::Duration;

use axum::http::StatusCode;
use serde_json::json;
use simrelay_e2e::*;

const BOT_TOKEN: &str = "7001234567:AAF-fixture-bot-token";
const CHAT_ID: &str = "-1009876";
const MAC: &str = "00:1A:2B:3C:4D:5E";

fn config(telegram: &str) -> String {
    format!(
        r#"
[instances.ejoin]
plugin = "{ejoin}"
forward_to = ["notify"]
settings = {{ api_key = "{EJOIN_KEY}" }}

[instances.notify]
plugin = "{notify}"
allow_hosts = ["{telegram}"]
retry = {{ schedule = "fixed", interval_secs = 1, jitter = 0.0 }}
settings = {{ telegram_bot_token = "{BOT_TOKEN}", telegram_chat_id = "{CHAT_ID}", telegram_api_url = "{telegram}", silence_secs = 0 }}

[[routes]]
path = "/api/{{key}}/webhook"
method = "POST"
instance = "ejoin"
"#,
        ejoin = plugin_path("ejoin").display(),
        notify = plugin_path("notify").display(),
    )
}

/// A `dev-status` push with the SIMs given as (port, registered); each port has a SIM of
/// its own.
async fn report(host: &Host, sims: &[(&str, bool)]) {
    let cards: Vec<(String, String)> = sims
        .iter()
        .map(|(port, _)| {
            let slot = port.replace('.', "");
            (format!("790012345{slot}"), format!("89701000000000{slot}"))
        })
        .collect();
    let sims: Vec<_> = sims
        .iter()
        .zip(&cards)
        .map(|((port, registered), (number, iccid))| {
            (
                *port,
                number.as_str(),
                iccid.as_str(),
                SAMPLE_IMSI,
                *registered,
            )
        })
        .collect();
    let (status, reply) = post_ejoin(host, EJOIN_KEY, &dev_status(MAC, &sims)).await;
    assert_eq!((status, reply), (200, json!({ "message": "Ok" })));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sim_going_offline_alerts_once_on_telegram() {
    let dir = tempfile::tempdir().unwrap();
    let telegram = MockProvider::start(|_, _| {
        (
            StatusCode::OK,
            json!({ "ok": true, "result": { "message_id": 1 } }),
        )
    })
    .await;
    let host = Host::start(dir.path(), &config(&telegram.base_url)).await;

    report(&host, &[("1.01", true), ("1.02", true)]).await;
    report(&host, &[("1.01", false)]).await;
    telegram
        .wait_for(Duration::from_secs(30), |received| received.len() == 1)
        .await;
    // The same state again; then another SIM goes offline. Events reach an instance in
    // order, so once the second SIM's alert is in, the repeat has been handled.
    report(&host, &[("1.01", false)]).await;
    report(&host, &[("1.02", false)]).await;
    telegram
        .wait_for(Duration::from_secs(30), |received| received.len() >= 2)
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    let alerts = telegram.received();
    assert_eq!(alerts.len(), 2, "one alert per SIM: {alerts:#?}");
    for (alert, port) in alerts.iter().zip(["1.01", "1.02"]) {
        assert_eq!(alert.method, "POST");
        assert_eq!(alert.path, format!("/bot{BOT_TOKEN}/sendMessage"));
        assert_eq!(alert.body["chat_id"], CHAT_ID);
        let text = alert.body["text"].as_str().unwrap();
        assert!(
            text.starts_with(&format!(
                "SIM offline: gateway {MAC}, port {port}, number 790012345"
            )),
            "{text}"
        );
        assert!(
            text.ends_with("went from registered to no-sim (0 no sim)"),
            "{text}"
        );
    }

    let logs = host.kill();
    assert!(
        !logs.contains(BOT_TOKEN) && !logs.contains(EJOIN_KEY),
        "secrets leaked into logs:\n{logs}"
    );
}
