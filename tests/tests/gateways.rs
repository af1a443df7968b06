//! The gateway adapters end to end: SmsGateway24 and GotSMS against mock servers, and long
//! Ejoin SMS, each reaching a mock SmsBower through the real host and plugins.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::http::StatusCode;
use base64::Engine;
use serde_json::{Value, json};
use simrelay_e2e::*;

const SG24_PASSWORD: &str = "sg24-pass-9d3f";
const SG24_HOOK_KEY: &str = "sg24-hook-51ac";
const SG24_DEVICE: &str = "1576";
const SG24_ICCID: &str = "89701000000000000077";
const GOTSMS_TOKEN: &str = "gotsms-token-c0de";

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// `YYYY-MM-DD HH:MM:SS` in UTC, as SmsGateway24 writes times.
fn utc_text(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rest) = ((secs / 86_400) as i64, secs % 86_400);
    // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// Waits until `done` holds, or panics with `what` after `timeout`.
async fn eventually(timeout: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "{what} within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The SMS pushes the marketplace accepted, as (phoneFrom, text).
fn accepted_texts(smsbower: &MockProvider) -> Vec<(String, String)> {
    let mut texts: Vec<(String, String)> = smsbower
        .pushes()
        .into_iter()
        .filter(|push| push.accepted)
        .map(|push| {
            let field = |name: &str| push.body[name].as_str().unwrap_or_default().to_string();
            (field("phoneFrom"), field("text"))
        })
        .collect();
    texts.sort();
    texts
}

fn assert_no_secrets(logs: &str) {
    for secret in [
        SG24_PASSWORD,
        SG24_HOOK_KEY,
        GOTSMS_TOKEN,
        EJOIN_KEY,
        SMSBOWER_KEY,
    ] {
        assert!(!logs.contains(secret), "a secret leaked into logs:\n{logs}");
    }
}

/// The smsbower instance of every configuration here, selling the farm's SIMs in Russia.
fn smsbower_instance(base_url: &str) -> String {
    format!(
        r#"
[instances.smsbower]
plugin = "{smsbower}"
allow_hosts = ["{base_url}"]
stores = {{ inventory = "farm" }}
tick_interval_secs = 60
retry = {{ schedule = "fixed", interval_secs = 1, jitter = 0.0 }}
settings = {{ api_key = "{SMSBOWER_KEY}", base_url = "{base_url}", retry_interval_secs = "1", services = ["tg", "wa"], sims = {{ "{SG24_ICCID}" = {{ country = "russia" }} }} }}

[[routes]]
path = "/smsbower"
method = "POST"
instance = "smsbower"
"#,
        smsbower = plugin_path("smsbower").display(),
    )
}

/// Asks SmsBower's route for a number until one is issued (SIM statuses arrive as events).
async fn open_activation(host: &Host, number: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let answer = get_number(host, "/smsbower", SMSBOWER_KEY, "tg").await;
        if answer["status"] == "SUCCESS" {
            assert_eq!(answer["number"], number, "{answer}");
            return answer;
        }
        assert!(
            Instant::now() < deadline,
            "the SIM never became available: {answer}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// SmsGateway24

/// What the mock SmsGateway24 holds: the tokens it issued, and incoming SMS for `getallsms`.
#[derive(Default)]
struct Sg24State {
    tokens_issued: usize,
    /// Tokens the service no longer takes.
    expired: Vec<String>,
    /// Whether the first token expires when the first SMS is sent with it.
    expire_first_token_on_send: bool,
    incoming: Vec<Value>,
    next_sms_id: u64,
}

struct Sg24Mock {
    provider: MockProvider,
    state: Arc<Mutex<Sg24State>>,
}

impl Sg24Mock {
    async fn start(expire_first_token_on_send: bool) -> Self {
        let state = Arc::new(Mutex::new(Sg24State {
            expire_first_token_on_send,
            next_sms_id: 62_807_347,
            ..Default::default()
        }));
        let shared = state.clone();
        let provider = MockProvider::start(move |_, request| {
            let mut state = shared.lock().unwrap();
            sg24_answer(&mut state, request)
        })
        .await;
        Sg24Mock { provider, state }
    }

    fn add_incoming(&self, sms_id: u64, sender: &str, text: &str) {
        self.state.lock().unwrap().incoming.push(json!({
            "id": sms_id, "sendto": sender, "body": text, "status": 5, "statustitle": "incoming",
            "deviceid": SG24_DEVICE.parse::<u64>().unwrap(), "channel_id": "0",
            "created": { "date": format!("{}.000000", utc_text(now_ms())), "timezone_type": 3, "timezone": "UTC" },
        }));
    }

    fn requests_to(&self, method: &str) -> Vec<Received> {
        self.provider.requests_to(&format!("/getdata/{method}"))
    }
}

fn sg24_answer(state: &mut Sg24State, request: &Received) -> (StatusCode, Value) {
    let field = |name: &str| request.body[name].as_str().unwrap_or_default().to_string();
    let refuse = |message: &str| (StatusCode::OK, json!({ "error": 1, "message": message }));
    let method = request.path.trim_start_matches("/getdata/");
    if method == "gettoken" {
        if field("email") != "ops@example.org" || field("pass") != SG24_PASSWORD {
            return refuse("Login or password incorrect");
        }
        state.tokens_issued += 1;
        let token = format!("tk-{}", state.tokens_issued);
        return (
            StatusCode::OK,
            json!({ "error": 0, "message": "OK", "token": token }),
        );
    }
    let token = match method {
        "addalotofsms" => serde_json::from_str::<Value>(&field("datajson"))
            .ok()
            .and_then(|data| data["token"].as_str().map(str::to_string))
            .unwrap_or_default(),
        _ => field("token"),
    };
    if method.starts_with("add") && state.expire_first_token_on_send && token == "tk-1" {
        state.expired.push(token.clone());
    }
    if !token.starts_with("tk-") || state.expired.contains(&token) {
        return refuse("Token is not valid");
    }
    match method {
        "getalldevices" => {
            let seen = utc_text(now_ms());
            let device = json!({
                "id": SG24_DEVICE.parse::<u64>().unwrap(), "title": "Pixel", "number": null,
                "lastseen": { "date": format!("{seen}.000000"), "timezone_type": 3, "timezone": "UTC" },
                "siminfo": [{ "Slot": "0", "IccId": SG24_ICCID, "Number": format!("+{SAMPLE_NUMBER}"),
                              "CountryIso": "ru", "CarrierName": "MTS" }],
            });
            (
                StatusCode::OK,
                json!({ "count": 1, "device": { SG24_DEVICE: device } }),
            )
        }
        "getallsms" => {
            let smss: serde_json::Map<String, Value> = state
                .incoming
                .iter()
                .map(|sms| (sms["id"].to_string(), sms.clone()))
                .collect();
            (StatusCode::OK, json!({ "smss": smss }))
        }
        "addsms" => {
            state.next_sms_id += 1;
            (
                StatusCode::OK,
                json!({ "error": 0, "sms_id": state.next_sms_id, "message": "Sms has been saved successfully" }),
            )
        }
        "getsmsstatus" => (
            StatusCode::OK,
            json!({ "error": 0, "sms_id": field("sms_id"), "status": 3, "status_description": "queued" }),
        ),
        _ => refuse("Unknown method"),
    }
}

fn sg24_config(sg24: &str, smsbower: &str) -> String {
    format!(
        r#"
[instances.sg24]
plugin = "{plugin}"
forward_to = ["smsbower"]
tick_interval_secs = 1
allow_hosts = ["{sg24}"]
retry = {{ schedule = "fixed", interval_secs = 1, jitter = 0.0 }}
settings = {{ email = "ops@example.org", password = "{SG24_PASSWORD}", webhook_key = "{SG24_HOOK_KEY}", base_url = "{sg24}", incoming_poll_secs = 1, status_poll_secs = 1, devices_poll_secs = 2 }}

[[routes]]
path = "/sg24/{{key}}"
method = "POST"
instance = "sg24"
{smsbower_instance}"#,
        plugin = plugin_path("smsgateway24").display(),
        smsbower_instance = smsbower_instance(smsbower),
    )
}

/// Posts a form body to SmsGateway24's webhook route.
async fn post_sg24_form(host: &Host, key: &str, body: &str) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(host.url(&format!("/sg24/{key}")))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body.to_string())
        .send()
        .await
        .expect("simrelay did not answer");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// An SMS that reaches an Android phone of SmsGateway24, pushed by the service's webhook or
/// found by polling `getallsms`, reaches SmsBower once, on the number the phone's SIM has
/// (learnt from `getalldevices`, which also put the SIM on the market).
#[tokio::test(flavor = "multi_thread")]
async fn an_sms_at_smsgateway24_reaches_the_marketplace_pushed_or_polled() {
    let dir = tempfile::tempdir().unwrap();
    let sg24 = Sg24Mock::start(false).await;
    let smsbower = MockProvider::accepting().await;
    let config = sg24_config(&sg24.provider.base_url, &smsbower.base_url);
    let host = Host::start(dir.path(), &config).await;

    // The phone's SIM reaches the shared inventory through getalldevices.
    let activation = open_activation(&host, SAMPLE_NUMBER).await;
    assert!(activation["activationId"].is_number() || activation["activationId"].is_string());

    // Pushed: the service's incoming-SMS webhook, as a form.
    let webhook = format!(
        "address=%2B4917642111111&body=Code+5015&date={}&sms_id=77&device_id={SG24_DEVICE}&channel_id=0",
        utc_text(now_ms()).replace(' ', "+").replace(':', "%3A")
    );
    let (status, reply) = post_sg24_form(&host, SG24_HOOK_KEY, &webhook).await;
    assert_eq!(
        (status, reply),
        (200, json!({ "error": 0, "message": "OK" }))
    );
    let (status, _) = post_sg24_form(&host, "wrong-key", &webhook).await;
    assert_eq!(status, 401, "a wrong webhook key is refused");

    // Polled: an incoming SMS only `getallsms` lists; it stays listed on every poll.
    sg24.add_incoming(78, "+4917642222222", "Poll 6161");
    smsbower
        .wait_for(Duration::from_secs(20), |received| {
            received.iter().filter(|r| r.accepted).count() >= 2
        })
        .await;
    // The webhook sent again, and a few more polls listing the same SMS.
    let (status, _) = post_sg24_form(&host, SG24_HOOK_KEY, &webhook).await;
    assert_eq!(status, 200);
    let polls = sg24.requests_to("getallsms").len();
    eventually(Duration::from_secs(20), "three more polls", || {
        sg24.requests_to("getallsms").len() >= polls + 3
    })
    .await;

    assert_eq!(
        accepted_texts(&smsbower),
        [
            ("4917642111111".to_string(), "Code 5015".to_string()),
            ("4917642222222".to_string(), "Poll 6161".to_string()),
        ],
        "each SMS pushed once, senders in SmsBower's digits"
    );
    for push in smsbower.pushes() {
        assert_eq!(push.body["phone"], SAMPLE_NUMBER);
        assert_eq!(push.body["key"], SMSBOWER_KEY);
    }
    assert_eq!(smsbower.pushes().len(), 2, "nothing pushed twice");
    assert_eq!(
        sg24.requests_to("gettoken").len(),
        1,
        "one token serves every poll"
    );
    assert_no_secrets(&host.kill());
}

// ---------------------------------------------------------------------------------------------
// GotSMS

struct GotMessage {
    id: String,
    text: String,
    read: bool,
    /// Times it was in an answer that left it unread.
    fetched: usize,
    /// Times it was in an answer that marked it read.
    marked: usize,
}

#[derive(Default)]
struct GotState {
    messages: Vec<GotMessage>,
    /// When a listing of unread messages was refused with 429 (once), and when the next
    /// listing came.
    refused_fetch_at: Option<Instant>,
    listing_after_refusal_at: Option<Instant>,
    /// Mark-read requests are refused with 429 until the test allows them.
    allow_mark_read: bool,
    mark_read_refusals: usize,
    /// Arrives while the first mark-read is refused: after the fetch, before the mark.
    late: Option<(String, String)>,
}

impl GotState {
    fn add(&mut self, id: &str, text: &str) {
        self.messages.push(GotMessage {
            id: id.into(),
            text: text.into(),
            read: false,
            fetched: 0,
            marked: 0,
        });
    }
}

fn got_message(message: &GotMessage) -> Value {
    json!({
        "id": message.id, "rent_id": "rent-1",
        "service": { "id": "svc-1", "name": "Telegram" },
        "phone": "+7 900 123 4567", "from": "Telegram", "to": format!("+{SAMPLE_NUMBER}"),
        "body": message.text, "code": message.text.rsplit(' ').next(),
        "received_at": utc_text(now_ms()).replace(' ', "T") + "+00:00",
    })
}

fn gotsms_answer(state: &mut GotState, request: &Received) -> Reply {
    let listing = |data: Vec<Value>| Reply {
        status: StatusCode::OK,
        headers: vec![
            ("x-ratelimit-limit", "30".into()),
            ("x-ratelimit-remaining", "25".into()),
        ],
        body: json!({ "success": true, "data": data, "meta": { "current_page": 1, "last_page": 1, "per_page": 100 } }),
    };
    let too_many = |secs: &str| Reply {
        status: StatusCode::TOO_MANY_REQUESTS,
        headers: vec![
            ("retry-after", secs.into()),
            ("x-ratelimit-remaining", "0".into()),
        ],
        body: json!({ "success": false, "message": "Too Many Attempts." }),
    };
    if request.headers.get("authorization").map(String::as_str)
        != Some(&format!("Bearer {GOTSMS_TOKEN}"))
    {
        return (
            StatusCode::UNAUTHORIZED,
            json!({ "success": false, "message": "Unauthenticated." }),
        )
            .into();
    }
    if request.path != "/api/messages/unread" {
        return listing(Vec::new());
    }
    let any_unread = state.messages.iter().any(|message| !message.read);
    if request.body["mark_as_read"] == "1" {
        if !state.allow_mark_read {
            state.mark_read_refusals += 1;
            if let Some((id, text)) = state.late.take() {
                state.add(&id, &text);
            }
            return too_many("1");
        }
        let mut data = Vec::new();
        for message in state.messages.iter_mut().filter(|message| !message.read) {
            message.read = true;
            message.marked += 1;
            data.push(got_message(message));
        }
        return listing(data);
    }
    if any_unread && state.refused_fetch_at.is_none() {
        state.refused_fetch_at = Some(request.at);
        return too_many("2");
    }
    if state.refused_fetch_at.is_some() && state.listing_after_refusal_at.is_none() {
        state.listing_after_refusal_at = Some(request.at);
    }
    let mut data = Vec::new();
    for message in state.messages.iter_mut().filter(|message| !message.read) {
        message.fetched += 1;
        data.push(got_message(message));
    }
    listing(data)
}

fn gotsms_config(gotsms: &str, smsbower: &str) -> String {
    // Ejoin puts the number on the market; the same number's SMS come through GotSMS.
    format!(
        r#"
[instances.ejoin]
plugin = "{ejoin}"
forward_to = ["smsbower"]
settings = {{ api_key = "{EJOIN_KEY}" }}

[[routes]]
path = "/api/{{key}}/webhook"
method = "POST"
instance = "ejoin"

[instances.gotsms]
plugin = "{plugin}"
forward_to = ["smsbower"]
tick_interval_secs = 1
allow_hosts = ["{gotsms}"]
retry = {{ schedule = "fixed", interval_secs = 1, jitter = 0.0 }}
settings = {{ api_token = "{GOTSMS_TOKEN}", base_url = "{gotsms}", poll_interval_secs = 1, history_interval_secs = 0 }}
{smsbower_instance}"#,
        ejoin = plugin_path("ejoin").display(),
        plugin = plugin_path("gotsms").display(),
        smsbower_instance = smsbower_instance(smsbower),
    )
}

/// The SMS pushes the host has recorded as delivered.
async fn delivered_pushes(host: &Host) -> usize {
    let (status, deliveries) = host
        .admin(
            reqwest::Method::GET,
            "/v1/deliveries?instance=smsbower&state=delivered",
            None,
        )
        .await;
    assert_eq!(status, 200, "{deliveries}");
    deliveries
        .as_array()
        .unwrap()
        .iter()
        .filter(|record| {
            record["request"]["url"]
                .as_str()
                .is_some_and(|url| url.ends_with(SMSBOWER_PUSH_PATH))
        })
        .count()
}

/// GotSMS's unread messages are fetched, refused once with 429 and `Retry-After`, and the
/// host is killed after the fetch was committed but before GotSMS marked them read. After a
/// restart, nothing is lost (a message that arrived in between included) and nothing reaches
/// the marketplace twice.
#[tokio::test(flavor = "multi_thread")]
async fn gotsms_polling_survives_a_429_and_a_kill_between_fetch_and_mark_read() {
    let dir = tempfile::tempdir().unwrap();
    let state = Arc::new(Mutex::new(GotState::default()));
    let shared = state.clone();
    let gotsms = MockProvider::start_replying(move |_, request| {
        gotsms_answer(&mut shared.lock().unwrap(), request)
    })
    .await;
    let smsbower = MockProvider::accepting().await;
    let config = gotsms_config(&gotsms.base_url, &smsbower.base_url);

    let host = Host::start(dir.path(), &config).await;
    open_sample_activation(&host).await;
    {
        let mut state = state.lock().unwrap();
        state.add("m-1", "Telegram code 11111");
        state.add("m-2", "Telegram code 22222");
        state.late = Some(("m-3".into(), "Telegram code 33333".into()));
    }
    // The fetch is refused once, then answered; the mark-read that follows is refused.
    eventually(Duration::from_secs(30), "a refused mark-read", || {
        state.lock().unwrap().mark_read_refusals > 0
    })
    .await;
    // The two messages fetched are pushed; the kill comes once the host recorded that, so
    // that a push the marketplace accepted is not made again for want of its record.
    let deadline = Instant::now() + Duration::from_secs(20);
    while delivered_pushes(&host).await < 2 {
        assert!(
            Instant::now() < deadline,
            "the fetched messages were not pushed: {:#?}",
            smsbower.received()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let first_logs = host.kill();
    {
        let state = state.lock().unwrap();
        assert!(
            state.messages.iter().all(|message| message.marked == 0),
            "killed before GotSMS marked anything read"
        );
        assert_eq!(state.messages.len(), 3, "one more arrived in between");
    }

    state.lock().unwrap().allow_mark_read = true;
    let host = Host::start(dir.path(), &config).await;
    eventually(Duration::from_secs(30), "every message marked read", || {
        state.lock().unwrap().messages.iter().all(|m| m.read)
    })
    .await;
    smsbower.wait_for_pushes(Duration::from_secs(20), 3).await;
    // Several more poll intervals: long enough for a wrongful second push to show.
    let requests = gotsms.received().len();
    eventually(Duration::from_secs(20), "three more polls", || {
        gotsms.received().len() >= requests + 3
    })
    .await;
    let logs = first_logs + &host.kill();

    assert_eq!(
        accepted_texts(&smsbower),
        [
            ("Telegram".to_string(), "Telegram code 11111".to_string()),
            ("Telegram".to_string(), "Telegram code 22222".to_string()),
            ("Telegram".to_string(), "Telegram code 33333".to_string()),
        ],
        "every message reaches the marketplace once"
    );
    assert_eq!(smsbower.pushes().len(), 3, "nothing pushed twice");
    let state = state.lock().unwrap();
    for message in &state.messages {
        assert_eq!(message.marked, 1, "{} marked read once", message.id);
    }
    let fetched: Vec<_> = state
        .messages
        .iter()
        .map(|m| (m.id.as_str(), m.fetched))
        .collect();
    assert_eq!(
        fetched,
        [("m-1", 1), ("m-2", 1), ("m-3", 0)],
        "listed unread once, then caught by the mark-read"
    );

    // `Retry-After: 2` held the refused listing back.
    let (refused_at, retried_at) = (
        state.refused_fetch_at.expect("a listing was refused"),
        state
            .listing_after_refusal_at
            .expect("the listing was made again"),
    );
    assert!(
        retried_at.duration_since(refused_at) >= Duration::from_secs(2),
        "made again {:?} after a 429 saying 2 s",
        retried_at.duration_since(refused_at)
    );
    assert_no_secrets(&logs);
}

// ---------------------------------------------------------------------------------------------
// Ejoin long SMS

/// A `recv-sms` push of rows `(sender, text)` on the sample SIM.
fn recv_sms(rows: &[(&str, &str)], first_second: u64) -> String {
    let rows: Vec<Value> = rows
        .iter()
        .enumerate()
        .map(|(index, (sender, text))| {
            json!([
                0,
                "1.01",
                first_second + index as u64,
                sender,
                SAMPLE_NUMBER,
                base64::engine::general_purpose::STANDARD.encode(text)
            ])
        })
        .collect();
    json!({ "type": "recv-sms", "sms": rows }).to_string()
}

/// A GSM-7 text of `length` characters, distinct per `seed`.
fn part(seed: char, length: usize) -> String {
    std::iter::repeat_n(seed, length).collect()
}

/// A long SMS that Ejoin delivers as three rows (two full 153-character parts and a short
/// last one) arrives at the marketplace as one text, whether the rows come in one push or in
/// three.
#[tokio::test(flavor = "multi_thread")]
async fn a_long_ejoin_sms_in_three_rows_arrives_as_one_text() {
    let dir = tempfile::tempdir().unwrap();
    let smsbower = MockProvider::accepting().await;
    let config = ejoin_to_smsbower_config(&smsbower.base_url, 1);
    let host = Host::start(dir.path(), &config).await;
    open_sample_activation(&host).await;
    let now = now_ms() / 1000;

    let one_push = [
        part('a', 153),
        part('b', 153),
        "end of one push".to_string(),
    ];
    let body = recv_sms(
        &[
            ("Sender1", &one_push[0]),
            ("Sender1", &one_push[1]),
            ("Sender1", &one_push[2]),
        ],
        now,
    );
    let (status, reply) = post_ejoin(&host, EJOIN_KEY, &body).await;
    assert_eq!((status, reply), (200, json!({ "message": "Ok" })));

    let three_pushes = [
        part('x', 153),
        part('y', 153),
        "end of three pushes".to_string(),
    ];
    for (index, text) in three_pushes.iter().enumerate() {
        let body = recv_sms(&[("Sender2", text)], now + 10 + index as u64);
        let (status, reply) = post_ejoin(&host, EJOIN_KEY, &body).await;
        assert_eq!((status, reply), (200, json!({ "message": "Ok" })));
    }
    // The first push sent again: its parts are not a third message.
    let (status, _) = post_ejoin(&host, EJOIN_KEY, &body).await;
    assert_eq!(status, 200);

    smsbower.wait_for_pushes(Duration::from_secs(20), 2).await;
    // Long enough for a wrongly split message to show up as more pushes.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        accepted_texts(&smsbower),
        [
            ("Sender1".to_string(), one_push.concat()),
            ("Sender2".to_string(), three_pushes.concat()),
        ]
    );
    assert_eq!(smsbower.pushes().len(), 2, "one push per long SMS");
    assert_no_secrets(&host.kill());
}

// ---------------------------------------------------------------------------------------------
// The send API

const SEND_TOKEN: &str = "send-token-7e41";

/// Calls the send API; returns the status and the JSON answer.
async fn send_api(
    host: &Host,
    method: reqwest::Method,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (u16, Value) {
    let mut request = reqwest::Client::new().request(method, host.url(path));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request
            .header("content-type", "application/json")
            .body(body.to_string());
    }
    let response = request.send().await.expect("simrelay did not answer");
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    let json = serde_json::from_str(&text).unwrap_or_else(|_| panic!("reply is not JSON: {text}"));
    (status, json)
}

/// Waits until the send API reports `status` for message `id`.
async fn wait_for_status(host: &Host, id: &str, status: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let path = format!("/v1/messages/{id}");
        let (code, record) =
            send_api(host, reqwest::Method::GET, &path, Some(SEND_TOKEN), None).await;
        assert_eq!(code, 200, "{record}");
        if record["status"] == status {
            return record;
        }
        assert!(
            Instant::now() < deadline,
            "message {id} never reached `{status}`: {record}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// An SMS sent through `POST /v1/messages` reaches SmsGateway24's `addsms` with a valid token
/// although the first token expired on the way, and its delivery status can be read back.
#[tokio::test(flavor = "multi_thread")]
async fn an_sms_sent_through_the_api_reaches_addsms_after_the_first_token_expires() {
    let dir = tempfile::tempdir().unwrap();
    let sg24 = Sg24Mock::start(true).await;
    let smsbower = MockProvider::accepting().await;
    let config = format!(
        "[host.send]\ninstance = \"sg24\"\ntoken = \"{SEND_TOKEN}\"\n{}",
        sg24_config(&sg24.provider.base_url, &smsbower.base_url)
    );
    let host = Host::start(dir.path(), &config).await;
    // The first token is in use and the phone known before anything is sent.
    eventually(Duration::from_secs(20), "a device listing", || {
        !sg24.requests_to("getalldevices").is_empty()
    })
    .await;

    let post = reqwest::Method::POST;
    let message =
        r#"{"to":"+4915752982212","text":"Your code: 1+1=2 & more","sim":0,"urgent":true}"#;
    for (token, expected) in [
        (None, "missing bearer token"),
        (Some("nope"), "wrong bearer token"),
    ] {
        let (status, reply) =
            send_api(&host, post.clone(), "/v1/messages", token, Some(message)).await;
        assert_eq!(status, 401, "{reply}");
        assert!(
            reply["error"].as_str().unwrap().contains(expected),
            "{reply}"
        );
    }
    for (body, expected) in [
        ("{\"to\":", "not a message"),
        (r#"{"text":"x"}"#, "missing field `to`"),
        (
            r#"{"to":"+1","text":"x","colour":"red"}"#,
            "unknown field `colour`",
        ),
        (r#"{"to":" ","text":"x"}"#, "`to` is empty"),
    ] {
        let (status, reply) = send_api(
            &host,
            post.clone(),
            "/v1/messages",
            Some(SEND_TOKEN),
            Some(body),
        )
        .await;
        assert_eq!(status, 400, "{body}: {reply}");
        assert!(
            reply["error"].as_str().unwrap().contains(expected),
            "{reply}"
        );
    }
    let (status, reply) = send_api(
        &host,
        reqwest::Method::GET,
        "/v1/messages/out-unknown",
        Some(SEND_TOKEN),
        None,
    )
    .await;
    assert_eq!(status, 404, "{reply}");

    let (status, accepted) = send_api(
        &host,
        post.clone(),
        "/v1/messages",
        Some(SEND_TOKEN),
        Some(message),
    )
    .await;
    assert_eq!(status, 202, "{accepted}");
    assert_eq!(accepted["status"], "queued");
    assert_eq!(accepted["instance"], "sg24");
    let id = accepted["id"].as_str().unwrap().to_string();

    eventually(
        Duration::from_secs(30),
        "an addsms with a new token",
        || {
            sg24.requests_to("addsms")
                .iter()
                .any(|request| request.body["token"] != "tk-1")
        },
    )
    .await;
    let adds = sg24.requests_to("addsms");
    assert_eq!(
        adds[0].body["token"], "tk-1",
        "first sent with the token that expired"
    );
    let renewed: Vec<_> = adds.iter().filter(|r| r.body["token"] != "tk-1").collect();
    assert_eq!(renewed.len(), 1, "sent once with a valid token: {adds:#?}");
    let add = &renewed[0];
    assert_eq!(
        add.body["sendto"], "+4915752982212",
        "the `+` arrives as a `+`"
    );
    assert_eq!(add.body["body"], "Your code: 1+1=2 & more");
    assert_eq!(add.body["device_id"], SG24_DEVICE);
    assert_eq!(add.body["sim"], "0");
    assert_eq!(add.body["urgent"], "1");
    assert!(sg24.requests_to("gettoken").len() >= 2, "a new token");

    let record = wait_for_status(&host, &id, "pending").await;
    assert_eq!(record["to"], "+4915752982212");
    // The service's delivery-status webhook reports it delivered.
    let sms_id = sg24.state.lock().unwrap().next_sms_id;
    let report = format!(
        "sms_id={sms_id}&status_id=7&status_message=delivered&sendto=%2B4915752982212&device_id={SG24_DEVICE}"
    );
    let (status, _) = post_sg24_form(&host, SG24_HOOK_KEY, &report).await;
    assert_eq!(status, 200);
    let record = wait_for_status(&host, &id, "delivered").await;
    assert_eq!(record["detail"], "7 delivered");
    assert!(
        smsbower.pushes().is_empty(),
        "a status is not an SMS to push"
    );

    let logs = host.kill();
    assert!(
        !logs.contains(SEND_TOKEN),
        "the send token leaked into logs"
    );
    assert_no_secrets(&logs);
}
