//! One SIM farm sold on SmsBower and Onlinesim at once, played over HTTP against the running
//! host: the inventory comes from the gateway, each marketplace sells from it, each SMS goes
//! to the marketplace that sold its number and to no other, and no number is sold twice.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{Value, json};
use simrelay_e2e::*;

const MAC: &str = "00:1A:2B:3C:4D:5E";
const BOWER: &str = "/smsbower";
const ONLINESIM: &str = "/onlinesim";

/// (port, number, ICCID, IMSI): four MTS cards (MNC 01) and one Beeline card (MNC 99).
const FARM: [(&str, &str, &str, &str); 5] = [
    (
        "1.01",
        "79001110001",
        "8970100000000000101",
        "250010000000101",
    ),
    (
        "1.02",
        "79001110002",
        "8970100000000000102",
        "250010000000102",
    ),
    (
        "1.03",
        "79002220003",
        "8970100000000000103",
        "250010000000103",
    ),
    (
        "1.04",
        "79003330004",
        "8970100000000000104",
        "250990000000104",
    ),
    (
        "1.05",
        "79004440005",
        "8970100000000000105",
        "250010000000105",
    ),
];

/// How long an event forwarded by ejoin may take to reach the inventory: the webhook is
/// acknowledged once its events are durable, and the marketplaces handle them right after.
const EVENT_DELAY: Duration = Duration::from_secs(5);

/// Long enough for a wrongful second push, or a push of an SMS nobody bought, to show.
const QUIET: Duration = Duration::from_secs(3);

fn key_of(route: &str) -> &'static str {
    if route == BOWER {
        SMSBOWER_KEY
    } else {
        ONLINESIM_KEY
    }
}

/// The farm's `dev-status`, with the cards in `offline` unregistered.
fn farm_status(offline: &[&str]) -> String {
    let sims: Vec<_> = FARM
        .iter()
        .map(|&(port, number, iccid, imsi)| (port, number, iccid, imsi, !offline.contains(&port)))
        .collect();
    dev_status(MAC, &sims)
}

fn port_of(number: &str) -> &'static str {
    FARM.iter()
        .find(|sim| sim.1 == number)
        .map(|sim| sim.0)
        .unwrap_or_else(|| panic!("{number} is not in the farm"))
}

async fn gateway(host: &Host, body: &str) {
    let (status, reply) = post_ejoin(host, EJOIN_KEY, body).await;
    assert_eq!(
        (status, reply),
        (200, json!({ "message": "Ok" })),
        "the gateway's push: {body}"
    );
}

/// An SMS from Telegram on `number`, as an Ejoin gateway pushes it.
fn sms_on(number: &str, text: &str, at: u64) -> String {
    let text = base64::engine::general_purpose::STANDARD.encode(text);
    json!({ "type": "recv-sms", "sms": [[0, port_of_or_blank(number), at, "Telegram", number, text]] })
        .to_string()
}

fn port_of_or_blank(number: &str) -> &'static str {
    FARM.iter()
        .find(|sim| sim.1 == number)
        .map_or("", |sim| sim.0)
}

async fn marketplace(host: &Host, route: &str, request: Value) -> (u16, Value) {
    post_json(host, route, &request.to_string()).await
}

async fn get_services(host: &Host, route: &str) -> Value {
    let (status, reply) = marketplace(
        host,
        route,
        json!({ "action": "GET_SERVICES", "key": key_of(route) }),
    )
    .await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["status"], "SUCCESS", "{reply}");
    reply
}

/// service → count over every named operator of Russia (Onlinesim's `any` is checked
/// against this sum, not added to it).
fn totals(services: &Value) -> BTreeMap<String, u64> {
    let countries = services["countryList"].as_array().expect("a countryList");
    let mut totals = BTreeMap::new();
    for country in countries {
        assert_eq!(country["country"], "russia", "{services}");
        for (operator, counts) in country["operatorMap"].as_object().unwrap() {
            if operator == "any" {
                continue;
            }
            for (service, count) in counts.as_object().unwrap() {
                *totals.entry(service.clone()).or_default() += count.as_u64().unwrap();
            }
        }
    }
    totals
}

fn counts(tg: u64, wa: u64) -> BTreeMap<String, u64> {
    BTreeMap::from([("tg".into(), tg), ("wa".into(), wa)])
}

/// Both marketplaces' counts. Onlinesim's `any` operator must carry each country's totals;
/// SmsBower's form has no `any`.
async fn both_totals(host: &Host) -> (BTreeMap<String, u64>, BTreeMap<String, u64>) {
    let bower = get_services(host, BOWER).await;
    let onlinesim = get_services(host, ONLINESIM).await;
    for country in onlinesim["countryList"].as_array().unwrap() {
        let operators = &country["operatorMap"];
        let named = totals(&json!({ "countryList": [country] }));
        let any: BTreeMap<String, u64> = operators["any"]
            .as_object()
            .unwrap_or_else(|| panic!("Onlinesim's answer has an `any` operator: {onlinesim}"))
            .iter()
            .map(|(service, count)| (service.clone(), count.as_u64().unwrap()))
            .collect();
        assert_eq!(any, named, "`any` holds the totals: {onlinesim}");
    }
    for country in bower["countryList"].as_array().unwrap() {
        assert!(
            country["operatorMap"].get("any").is_none(),
            "SmsBower's form has no `any`: {bower}"
        );
    }
    (totals(&bower), totals(&onlinesim))
}

/// Waits until both marketplaces count `expected`, within [`EVENT_DELAY`].
async fn wait_for_counts(host: &Host, expected: BTreeMap<String, u64>, why: &str) {
    let deadline = Instant::now() + EVENT_DELAY;
    loop {
        let (bower, onlinesim) = both_totals(host).await;
        if bower == expected && onlinesim == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{why}: expected {expected:?} on both, SmsBower counts {bower:?}, Onlinesim {onlinesim:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn number_request(route: &str, service: &str, excluded: &[&str]) -> Value {
    json!({
        "action": "GET_NUMBER", "key": key_of(route), "country": "russia", "operator": "any",
        "service": service, "sum": "20.00", "exceptionPhoneSet": excluded,
    })
}

/// The number an answer gives, as digits, whichever way the dialect spells it.
fn digits(answer: &Value) -> String {
    match &answer["number"] {
        Value::String(digits) => digits.clone(),
        Value::Number(number) => number.to_string(),
        other => panic!("no number in {other}"),
    }
}

/// Asks for numbers until the marketplace has none left; every answer must be a number or
/// NO_NUMBERS.
async fn drain(host: &Host, route: &str, service: &str) -> Vec<String> {
    let mut issued = Vec::new();
    loop {
        let (status, answer) = marketplace(host, route, number_request(route, service, &[])).await;
        assert_eq!(status, 200, "{answer}");
        if answer["status"] == "NO_NUMBERS" {
            return issued;
        }
        assert_eq!(answer["status"], "SUCCESS", "{answer}");
        issued.push(digits(&answer));
        assert!(
            issued.len() <= FARM.len(),
            "more numbers than SIMs: {issued:?}"
        );
    }
}

async fn finish(host: &Host, route: &str, activation: &Value, status: u8) -> (u16, Value) {
    marketplace(
        host,
        route,
        json!({ "action": "FINISH_ACTIVATION", "key": key_of(route), "activationId": activation, "status": status }),
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn one_farm_sold_on_two_marketplaces() {
    let dir = tempfile::tempdir().unwrap();
    let smsbower = MockProvider::accepting().await;
    let onlinesim = MockProvider::accepting().await;
    let config = ejoin_to_both_marketplaces_config(&smsbower.base_url, &onlinesim.base_url, 1, "");
    let host = Host::start(dir.path(), &config).await;
    let bower_pushes = || smsbower.pushes();
    let onlinesim_pushes = || onlinesim.requests_to(ONLINESIM_PUSH_PATH);

    // 1. The gateway registers the farm; both marketplaces count every card, per operator.
    gateway(&host, &farm_status(&[])).await;
    wait_for_counts(&host, counts(5, 5), "all five cards registered").await;
    let operators = get_services(&host, BOWER).await["countryList"][0]["operatorMap"].clone();
    assert_eq!(
        operators,
        json!({ "mts": { "tg": 4, "wa": 4 }, "beeline": { "tg": 1, "wa": 1 } })
    );
    let operators = get_services(&host, ONLINESIM).await["countryList"][0]["operatorMap"].clone();
    assert_eq!(
        operators,
        json!({ "mts": { "tg": 4, "wa": 4 }, "beeline": { "tg": 1, "wa": 1 }, "any": { "tg": 5, "wa": 5 } })
    );

    // 2. GET_NUMBER never gives a number starting with an excluded prefix.
    let (status, answer) = marketplace(&host, BOWER, number_request(BOWER, "tg", &["7900"])).await;
    assert_eq!((status, answer), (200, json!({ "status": "NO_NUMBERS" })));
    let bower_excluded = ["790011", "7900222"];
    let (status, bower_sale) =
        marketplace(&host, BOWER, number_request(BOWER, "tg", &bower_excluded)).await;
    assert_eq!(status, 200, "{bower_sale}");
    assert_eq!(bower_sale["status"], "SUCCESS", "{bower_sale}");
    let bower_number = digits(&bower_sale);
    assert!(
        ["79003330004", "79004440005"].contains(&bower_number.as_str()),
        "SmsBower got {bower_number}, which {bower_excluded:?} rules out"
    );
    // SmsBower's form: number and activationId as strings, call and voice flags.
    assert!(bower_sale["number"].is_string() && bower_sale["activationId"].is_string());
    assert_eq!(
        (&bower_sale["call"], &bower_sale["voice"]),
        (&json!(0), &json!(0))
    );

    let onlinesim_excluded = ["790011"];
    let (status, onlinesim_sale) = marketplace(
        &host,
        ONLINESIM,
        number_request(ONLINESIM, "tg", &onlinesim_excluded),
    )
    .await;
    assert_eq!(status, 200, "{onlinesim_sale}");
    assert_eq!(onlinesim_sale["status"], "SUCCESS", "{onlinesim_sale}");
    let onlinesim_number = digits(&onlinesim_sale);
    assert!(
        !onlinesim_number.starts_with("790011"),
        "Onlinesim got {onlinesim_number}, which {onlinesim_excluded:?} rules out"
    );
    assert_ne!(
        onlinesim_number, bower_number,
        "a number busy on SmsBower is not sold on Onlinesim"
    );
    // Onlinesim's form: numbers as JSON numbers, no call or voice.
    assert!(onlinesim_sale["number"].is_u64() && onlinesim_sale["activationId"].is_u64());
    assert!(onlinesim_sale.get("call").is_none());
    // Busy numbers are counted for no service, on either marketplace.
    wait_for_counts(&host, counts(3, 3), "two numbers busy").await;

    // 3. An SMS on each sold number reaches the marketplace that sold it, once.
    gateway(
        &host,
        &sms_on(&bower_number, "Telegram code 11111", 1_700_000_001),
    )
    .await;
    smsbower.wait_for_pushes(Duration::from_secs(10), 1).await;
    gateway(
        &host,
        &sms_on(&onlinesim_number, "Telegram code 22222", 1_700_000_002),
    )
    .await;
    onlinesim
        .wait_for(Duration::from_secs(10), |received| {
            received.iter().any(|r| r.path == ONLINESIM_PUSH_PATH)
        })
        .await;
    tokio::time::sleep(QUIET).await;

    let pushes = bower_pushes();
    assert_eq!(pushes.len(), 1, "one push to SmsBower: {pushes:#?}");
    let push = &pushes[0];
    assert_eq!(push.method, "POST");
    assert_eq!(push.body["action"], "PUSH_SMS");
    assert_eq!(push.body["key"], SMSBOWER_KEY);
    assert_eq!(push.body["phone"], bower_number.as_str());
    assert_eq!(push.body["phoneFrom"], "Telegram");
    assert_eq!(push.body["text"], "Telegram code 11111");
    assert_eq!(
        (&push.body["call"], &push.body["voice"]),
        (&json!("0"), &json!("0"))
    );
    assert!(push.body["smsId"].as_str().unwrap().parse::<u64>().unwrap() >= 1);

    let pushes = onlinesim_pushes();
    assert_eq!(pushes.len(), 1, "one push to Onlinesim: {pushes:#?}");
    let push = &pushes[0];
    assert_eq!(push.method, "POST");
    assert_eq!(
        push.headers.get("content-type").map(String::as_str),
        Some("application/json; charset=utf-8")
    );
    assert_eq!(push.body["action"], "PUSH_SMS");
    assert_eq!(push.body["key"], ONLINESIM_KEY);
    assert_eq!(push.body["phone"], onlinesim_number.as_str());
    assert_eq!(push.body["phoneFrom"], "Telegram");
    assert_eq!(push.body["text"], "Telegram code 22222");
    assert!(
        push.body["smsId"].as_u64().is_some_and(|id| id >= 1),
        "{}",
        push.body
    );
    assert_eq!(
        onlinesim.received().len(),
        1,
        "Onlinesim is asked nothing else"
    );

    // 4. FINISH_ACTIVATION 3, twice on each: SUCCESS both times, the second changes nothing.
    let bower_id = bower_sale["activationId"].clone();
    let onlinesim_id = onlinesim_sale["activationId"].clone();
    let success = (200, json!({ "status": "SUCCESS" }));
    assert_eq!(finish(&host, BOWER, &bower_id, 3).await, success);
    assert_eq!(finish(&host, ONLINESIM, &onlinesim_id, 3).await, success);
    let after_first = both_totals(&host).await;
    assert_eq!(finish(&host, BOWER, &bower_id, 3).await, success);
    assert_eq!(finish(&host, ONLINESIM, &onlinesim_id, 3).await, success);
    assert_eq!(
        both_totals(&host).await,
        after_first,
        "a repeat changes nothing"
    );
    // A late cancellation of a sold activation is answered, and changes nothing either.
    assert_eq!(finish(&host, BOWER, &bower_id, 4).await, success);
    assert_eq!(both_totals(&host).await, after_first);
    let (status, unknown) = finish(&host, BOWER, &json!("999"), 3).await;
    assert_eq!(status, 404, "{unknown}");
    assert_eq!(unknown["status"], "NO_ACTIVATION");

    // 5. Sold for tg: counted for wa again, never for tg, on either marketplace.
    assert_eq!(after_first, (counts(3, 5), counts(3, 5)));

    // An SMS on a number whose activation ended, or that was never sold, is pushed nowhere.
    gateway(
        &host,
        &sms_on(&bower_number, "late code 33333", 1_700_000_003),
    )
    .await;
    gateway(
        &host,
        &sms_on("79001110001", "unsold code 44444", 1_700_000_004),
    )
    .await;
    tokio::time::sleep(QUIET).await;
    assert_eq!(bower_pushes().len(), 1, "{:#?}", bower_pushes());
    assert_eq!(onlinesim_pushes().len(), 1, "{:#?}", onlinesim_pushes());
    // … but the operator sees it.
    let (status, messages) = host
        .admin(reqwest::Method::GET, "/v1/messages?limit=10", None)
        .await;
    assert_eq!(status, 200);
    assert!(
        messages.to_string().contains("unsold code 44444"),
        "{messages}"
    );

    // A card going offline drops out at once: by dev-status, and by port-status with and
    // without the gateway's `mac` (the gateway's specification shows both).
    gateway(&host, &farm_status(&["1.01"])).await;
    wait_for_counts(&host, counts(2, 4), "1.01 unregistered by dev-status").await;
    let port_status =
        json!({ "type": "port-status", "mac": MAC, "port": "1.02", "status": "0 No SIM" });
    gateway(&host, &port_status.to_string()).await;
    wait_for_counts(&host, counts(1, 3), "1.02 emptied by port-status").await;
    let unsold = FARM
        .iter()
        .map(|sim| sim.1)
        .find(|number| {
            !number.starts_with("790011") && *number != bower_number && *number != onlinesim_number
        })
        .unwrap();
    let port_status = json!({ "type": "port-status", "port": port_of(unsold), "status": "6 registration failed" });
    gateway(&host, &port_status.to_string()).await;
    wait_for_counts(
        &host,
        counts(0, 2),
        "a card failing registration by port-status without `mac`",
    )
    .await;

    // What is left: no number for tg anywhere; for wa, only the two sold for tg.
    assert_eq!(drain(&host, BOWER, "tg").await, Vec::<String>::new());
    assert_eq!(drain(&host, ONLINESIM, "tg").await, Vec::<String>::new());
    let mut for_wa = drain(&host, ONLINESIM, "wa").await;
    for_wa.extend(drain(&host, BOWER, "wa").await);
    assert_eq!(
        for_wa.into_iter().collect::<BTreeSet<_>>(),
        BTreeSet::from([bower_number.clone(), onlinesim_number.clone()])
    );

    let logs = host.kill();
    for secret in [EJOIN_KEY, SMSBOWER_KEY, ONLINESIM_KEY] {
        assert!(
            !logs.contains(secret),
            "a secret leaked into the logs:\n{logs}"
        );
    }
}

const SIMS: usize = 20;
const CALLERS: usize = 50;

/// 50 marketplace calls at once for one service, half on each marketplace, for 20 cards:
/// every card is sold exactly once, and the other 30 calls get NO_NUMBERS.
#[tokio::test(flavor = "multi_thread")]
async fn concurrent_get_number_never_sells_a_number_twice() {
    let dir = tempfile::tempdir().unwrap();
    let smsbower = MockProvider::accepting().await;
    let onlinesim = MockProvider::accepting().await;
    let config = ejoin_to_both_marketplaces_config(&smsbower.base_url, &onlinesim.base_url, 1, "");
    let host = Host::start(dir.path(), &config).await;

    let farm = farm(SIMS, 1);
    gateway(&host, &farm_dev_status(MAC, &farm)).await;
    wait_for_counts(
        &host,
        counts(SIMS as u64, SIMS as u64),
        "the farm registered",
    )
    .await;

    let calls = (0..CALLERS).map(|n| {
        let route = if n.is_multiple_of(2) {
            BOWER
        } else {
            ONLINESIM
        };
        let host = &host;
        async move {
            let (status, answer) = marketplace(host, route, number_request(route, "tg", &[])).await;
            assert_eq!(status, 200, "{answer}");
            (route, answer)
        }
    });
    let answers = futures::future::join_all(calls).await;

    let mut issued: BTreeMap<String, Vec<(&str, Value)>> = BTreeMap::new();
    let mut no_numbers = 0;
    for (route, answer) in answers {
        match answer["status"].as_str() {
            Some("SUCCESS") => issued
                .entry(digits(&answer))
                .or_default()
                .push((route, answer["activationId"].clone())),
            Some("NO_NUMBERS") => no_numbers += 1,
            _ => panic!("neither a number nor NO_NUMBERS: {answer}"),
        }
    }
    let twice: Vec<_> = issued.iter().filter(|(_, sales)| sales.len() > 1).collect();
    assert!(twice.is_empty(), "numbers issued twice: {twice:#?}");
    let farm_numbers: BTreeSet<String> = farm.iter().map(|sim| sim.1.clone()).collect();
    assert_eq!(
        issued.keys().cloned().collect::<BTreeSet<_>>(),
        farm_numbers,
        "every card is sold once"
    );
    assert_eq!(no_numbers, CALLERS - SIMS);
    let sold_on = |route: &str| issued.values().filter(|sales| sales[0].0 == route).count();
    eprintln!(
        "{} numbers sold on SmsBower, {} on Onlinesim",
        sold_on(BOWER),
        sold_on(ONLINESIM)
    );
    wait_for_counts(&host, counts(0, 0), "every card busy").await;
}
