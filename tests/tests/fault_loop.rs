//! The delivery guarantee under faults: a load of distinct SMS while the host is killed
//! with SIGKILL and restarted, and the marketplace fails, stalls or answers garbage.
//! Every acknowledged SMS must be accepted, and a repeat after SUCCESS may only carry the
//! same smsId (a crash between SUCCESS and our commit).
//!
//! `SIMRELAY_FAULT_LOOP_SMS` sets how many SMS are sent (default 1,500); the longer form
//! runs e.g. `SIMRELAY_FAULT_LOOP_SMS=50000 cargo test --release -p simrelay-e2e --test
//! fault_loop -- --nocapture`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::json;
use simrelay_e2e::*;

/// SmsId accepted for each SMS number, in order.
type Accepted = Arc<Mutex<BTreeMap<usize, Vec<String>>>>;

/// A marketplace that, at random, refuses a push (ERROR or HTTP 500), answers it with
/// garbage, or holds it for a second before accepting; it accepts the rest.
async fn flaky_marketplace(accepted: Accepted) -> String {
    let app = axum::Router::new().fallback(move |body: axum::body::Bytes| {
        let accepted = accepted.clone();
        async move {
            use axum::response::IntoResponse;
            let form: std::collections::HashMap<String, String> =
                form_urlencoded::parse(&body).into_owned().collect();
            if form.get("action").map(String::as_str) != Some("PUSH_SMS") {
                return axum::Json(json!({ "status": 0 })).into_response();
            }
            match roll() {
                0 => return axum::Json(json!({ "status": "ERROR" })).into_response(),
                1 => return axum::http::StatusCode::INTERNAL_SERVER_ERROR.into_response(),
                2 => return "<html>garbage".into_response(),
                3 => tokio::time::sleep(Duration::from_secs(1)).await,
                _ => {}
            }
            let number = form
                .get("text")
                .and_then(|text| text.strip_prefix("n="))
                .and_then(|n| n.parse().ok());
            if let Some(number) = number {
                let sms_id = form.get("smsId").cloned().unwrap_or_default();
                accepted
                    .lock()
                    .unwrap()
                    .entry(number)
                    .or_default()
                    .push(sms_id);
            }
            axum::Json(json!({ "status": "SUCCESS" })).into_response()
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base_url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    base_url
}

/// A roll of a ten-sided die, the same sequence every run (splitmix64 over a counter).
fn roll() -> u64 {
    static STATE: AtomicU64 = AtomicU64::new(0);
    let mut z = STATE
        .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)
        .wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (z ^ (z >> 31)) % 10
}

fn sms(number: usize) -> String {
    let text = base64::engine::general_purpose::STANDARD.encode(format!("n={number}"));
    format!(
        r#"{{"type":"recv-sms","sms":[[0,"1.01",{},"BankInfo","{SAMPLE_NUMBER}","{text}"]]}}"#,
        1_700_000_000 + number
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn acknowledged_sms_survive_kills_and_a_flaky_marketplace() {
    let total: usize = std::env::var("SIMRELAY_FAULT_LOOP_SMS")
        .ok()
        .and_then(|count| count.parse().ok())
        .unwrap_or(1_500);
    const KILLS: usize = 3;
    let dir = tempfile::tempdir().unwrap();
    let accepted: Accepted = Arc::default();
    let marketplace = flaky_marketplace(accepted.clone()).await;
    let config = ejoin_to_smsbower_config(&marketplace, 1);
    let host = Host::start(dir.path(), &config).await;
    open_sample_activation(&host).await;
    let url = Arc::new(Mutex::new(host.url(&format!("/api/{EJOIN_KEY}/webhook"))));

    // Eight gateways' worth of senders, each posting its share in order, as a gateway
    // does: a webhook without a 200 is sent again.
    let next = Arc::new(AtomicUsize::new(0));
    let acknowledged = Arc::new(Mutex::new(BTreeSet::new()));
    let senders: Vec<_> = (0..8)
        .map(|_| {
            let (url, next, acknowledged) = (url.clone(), next.clone(), acknowledged.clone());
            tokio::spawn(async move {
                let client = reqwest::Client::new();
                loop {
                    let number = next.fetch_add(1, Ordering::SeqCst);
                    if number >= total {
                        return;
                    }
                    loop {
                        let target = url.lock().unwrap().clone();
                        let answer = client
                            .post(target)
                            .body(sms(number))
                            .timeout(Duration::from_secs(10))
                            .send()
                            .await;
                        if answer.is_ok_and(|answer| answer.status() == 200) {
                            acknowledged.lock().unwrap().insert(number);
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            })
        })
        .collect();

    // SIGKILL under load, KILLS times, each followed by a restart on the same data.
    let mut host = host;
    // Each kill comes at the next quarter of the acknowledged SMS, so all fall under load.
    for kill in 1..=KILLS {
        while acknowledged.lock().unwrap().len() < kill * total / (KILLS + 1) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        host.kill();
        host = Host::start(dir.path(), &config).await;
        *url.lock().unwrap() = host.url(&format!("/api/{EJOIN_KEY}/webhook"));
    }
    for sender in senders {
        sender.await.unwrap();
    }
    let acknowledged = acknowledged.lock().unwrap().clone();

    // Every acknowledged SMS is accepted, however long the marketplace's faults take.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let missing = {
            let accepted = accepted.lock().unwrap();
            acknowledged
                .iter()
                .filter(|number| !accepted.contains_key(number))
                .count()
        };
        if missing == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{missing} acknowledged SMS never accepted:\n{}",
            host.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let accepted = accepted.lock().unwrap().clone();
    let repeats: usize = accepted.values().map(|ids| ids.len() - 1).sum();
    let changed_ids: Vec<_> = accepted
        .iter()
        .filter(|(_, ids)| ids.iter().any(|id| *id != ids[0]))
        .collect();
    let lost = acknowledged
        .iter()
        .filter(|number| !accepted.contains_key(number))
        .count();
    eprintln!(
        "fault loop: sent {total}, acknowledged {}, accepted {}, repeats after success {repeats}, \
         lost {lost}, host kills {KILLS}",
        acknowledged.len(),
        accepted.len()
    );
    assert_eq!(
        acknowledged.len(),
        total,
        "every sender got its 200 in the end"
    );
    assert_eq!(lost, 0);
    assert!(
        changed_ids.is_empty(),
        "a repeat after SUCCESS with another smsId: {changed_ids:?}"
    );
    let logs = host.kill();
    assert!(!logs.contains(SMSBOWER_KEY));
}
