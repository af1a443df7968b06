//! An SMS received by an Ejoin gateway on a number with an open activation reaches SmsBower
//! exactly once, across refusals, re-sent webhooks and a host crash.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::http::StatusCode;
use serde_json::json;
use simrelay_e2e::*;

#[tokio::test(flavor = "multi_thread")]
async fn relays_an_sms_exactly_once_across_a_refusal_and_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    // The first push is refused; every later one is accepted.
    let pushes = AtomicUsize::new(0);
    let smsbower = MockProvider::start(move |_, request| {
        if request.path == SMSBOWER_PUSH_PATH && pushes.fetch_add(1, Ordering::SeqCst) == 0 {
            return (StatusCode::OK, json!({ "status": "ERROR" }));
        }
        marketplace_answer(request)
    })
    .await;
    let retry_secs = 2;
    let config = ejoin_to_smsbower_config(&smsbower.base_url, retry_secs);

    let host = Host::start(dir.path(), &config).await;
    open_sample_activation(&host).await;
    let (status, reply) = post_ejoin(&host, EJOIN_KEY, RECV_SMS_SAMPLE).await;
    assert_eq!((status, reply), (200, json!({ "message": "Ok" })));

    // The webhook is acknowledged; the first push is refused; the host dies before the retry.
    smsbower.wait_for_pushes(Duration::from_secs(10), 1).await;
    let first_run_logs = host.kill();
    assert_eq!(smsbower.accepted().len(), 0, "the first push was refused");

    let host = Host::start(dir.path(), &config).await;
    smsbower
        .wait_for(Duration::from_secs(20), |received| {
            received.iter().any(|r| r.accepted)
        })
        .await;
    // Long enough for any wrongful re-send after SUCCESS to show.
    tokio::time::sleep(Duration::from_secs(2 * retry_secs as u64 + 1)).await;

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
    assert_eq!(push["call"], "0");
    assert_eq!(push["voice"], "0");
    let received = smsbower.pushes();
    assert_eq!(
        received.len(),
        2,
        "one refused push, one accepted, nothing after SUCCESS"
    );
    assert_eq!(
        received[0].body["smsId"], push["smsId"],
        "a retry keeps its smsId"
    );

    // The gateway re-sends the same webhook: acknowledged, but not pushed again.
    let (status, _) = post_ejoin(&host, EJOIN_KEY, RECV_SMS_SAMPLE).await;
    assert_eq!(status, 200);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        smsbower.pushes().len(),
        2,
        "a re-sent webhook is not pushed twice"
    );

    let logs = first_run_logs + &host.kill();
    assert!(
        !logs.contains(EJOIN_KEY) && !logs.contains(SMSBOWER_KEY),
        "secrets leaked into logs:\n{logs}"
    );
}
