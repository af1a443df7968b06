//! The protocol's rules, each played through the plugin's entry points with in-memory stores.
//! Marketplaces certify partners on these rules and block those that break them.

use std::cell::RefCell;

use serde_json::{Value, json};
use simrelay_sdk::{
    Capability, DeliveryOutcome, Event, KeyValue, MemoryStore, MessageKind, OutgoingRequest,
    SimState, Verdict,
};

use super::*;
use crate::answers::status_word;
use crate::testing::{Instance, Racing, response, sim, sms, snapshot};

/// A marketplace of the SMSHub family as plain as can be: JSON pushes to `push_url`, a
/// status query at `base_url`.
struct Plain;

impl Dialect for Plain {
    const NAME: &'static str = "plain";
    const VERSION: &'static str = "1.0.0";
    const NUMERIC_IDS: bool = false;
    const ANY_OPERATOR_TOTAL: bool = false;
    const CALL_AND_VOICE: bool = true;
    const RECONCILES: bool = true;

    fn settings() -> Vec<SettingSpec> {
        vec![SettingSpec::required("base_url", "marketplace")]
    }

    fn push_request(ctx: &CallContext, push: &Push) -> Result<OutgoingRequest, String> {
        let body = json!({
            "key": push.key, "smsId": push.sms_id, "phone": push.phone,
            "phoneFrom": push.phone_from, "text": push.text,
            "call": u8::from(push.kind == MessageKind::FlashCall),
        });
        let url = format!("{}/push", ctx.required_setting("base_url")?);
        Ok(OutgoingRequest::post_json(
            url,
            body.to_string().into_bytes(),
        ))
    }

    fn push_answer(outcome: &DeliveryOutcome) -> PushAnswer {
        match status_word(outcome) {
            Some((200, word)) if word == "SUCCESS" => PushAnswer::Accepted,
            Some((_, word)) if word == "FINAL" => PushAnswer::Refused(word),
            other => PushAnswer::NotYet(format!("{other:?}")),
        }
    }

    fn status_query(
        ctx: &CallContext,
        _: &Settings,
        activation: u64,
    ) -> Result<Option<OutgoingRequest>, String> {
        let base = ctx.required_setting("base_url")?;
        Ok(Some(get(format!("{base}/status?id={activation}"))))
    }

    fn statistic_query(ctx: &CallContext, _: &Settings) -> Result<Option<OutgoingRequest>, String> {
        let base = ctx.required_setting("base_url")?;
        Ok(Some(get(format!("{base}/statistic"))))
    }
}

fn get(url: String) -> OutgoingRequest {
    OutgoingRequest {
        method: "GET".into(),
        url,
        headers: Vec::new(),
        body: Vec::new(),
        timeout_ms: None,
    }
}

const KEY: &str = "qwerty123";
const T0: u64 = 1_700_000_000_000;

fn settings(extra: &[(&'static str, &'static str)]) -> Vec<(&'static str, &'static str)> {
    let mut all = vec![
        ("api_key", KEY),
        ("base_url", "https://market.test"),
        ("services", r#"{"tg": 0, "wa": 0}"#),
    ];
    all.retain(|(name, _)| !extra.iter().any(|(other, _)| other == name));
    all.extend_from_slice(extra);
    all
}

fn instance(name: &str, extra: &[(&'static str, &'static str)]) -> Instance<Plain> {
    let mut instance = Instance::new(name, &settings(extra));
    instance.at(T0);
    instance
}

/// MTS, MegaFon and Beeline in Russia, one SIM each, all registered.
fn farm() -> MemoryStore {
    let farm = MemoryStore::default();
    let feeder = instance("feeder", &[]);
    for status in [
        sim("1.01", "8970001", "+79001000001", "250010000000001"),
        sim("1.02", "8970002", "+79002000002", "250020000000002"),
        sim("1.03", "8970003", "+79993000003", "250990000000003"),
    ] {
        feeder.event(&farm, Event::SimStatusChanged(status));
    }
    farm
}

fn services(market: &Instance<Plain>, shared: &dyn KeyValue) -> Value {
    let (status, body) = market.call(shared, &json!({"action": "GET_SERVICES", "key": KEY}));
    assert_eq!((status, &body["status"]), (200, &json!("SUCCESS")));
    body["countryList"].clone()
}

fn get_number(market: &Instance<Plain>, shared: &dyn KeyValue, fields: Value) -> Value {
    let mut body = json!({"action": "GET_NUMBER", "key": KEY, "country": "russia", "operator": "any", "service": "tg", "sum": "20.00"});
    for (name, value) in fields.as_object().unwrap() {
        body[name] = value.clone();
    }
    let (status, reply) = market.call(shared, &body);
    assert_eq!(status, 200, "{reply}");
    reply
}

fn number_of(reply: &Value) -> String {
    assert_eq!(reply["status"], "SUCCESS", "{reply}");
    reply["number"].as_str().expect("a number").to_owned()
}

fn finish(
    market: &Instance<Plain>,
    shared: &dyn KeyValue,
    activation: &Value,
    status: u8,
) -> (u16, Value) {
    market.call(shared, &json!({"action": "FINISH_ACTIVATION", "key": KEY, "activationId": activation, "status": status}))
}

fn pushes(effects: Effects) -> Vec<simrelay_sdk::Delivery> {
    assert!(effects.events.is_empty());
    effects.deliveries
}

#[test]
fn describes_itself() {
    let descriptor = Marketplace::<Plain>::descriptor();
    assert_eq!(
        (descriptor.name.as_str(), descriptor.version.as_str()),
        ("plain", "1.0.0")
    );
    assert_eq!(descriptor.api_version, simrelay_sdk::API_VERSION);
    assert!(matches!(
        descriptor.capabilities[..],
        [Capability::Webhook, Capability::Events, Capability::Tick]
    ));
    let settings: Vec<_> = descriptor
        .settings
        .iter()
        .map(|s| (s.name.as_str(), s.required, s.secret))
        .collect();
    assert_eq!(
        settings,
        [
            ("api_key", true, true),
            ("webhook_key", false, true),
            ("services", true, false),
            ("sims", false, false),
            ("mcc_mnc", false, false),
            ("offer_cap", false, false),
            ("retry_interval_secs", false, false),
            ("forget_after_secs", false, false),
            ("base_url", true, false),
            ("reconcile_after_secs", false, false),
            ("statistic_interval_secs", false, false),
        ]
    );
    assert_eq!(descriptor.stores.len(), 1);
    assert_eq!(
        (
            descriptor.stores[0].name.as_str(),
            descriptor.stores[0].required
        ),
        (INVENTORY, true)
    );
    assert!(
        descriptor.webhook_key.is_none(),
        "the key is in the body: the plugin checks it"
    );
}

// ---- GET_SERVICES ----

#[test]
fn services_count_usable_sims_per_country_operator_and_service() {
    let farm = farm();
    let market = instance("bower", &[]);
    // A second MTS card, one offline Beeline card, one Ukrainian, one of no named operator,
    // one with no number and one of an unknown country.
    let mut offline = sim("2.01", "8970005", "+79995000005", "250990000000005");
    offline.state = SimState::RegistrationFailed;
    for status in [
        sim("1.04", "8970004", "+79004000004", "250010000000004"),
        offline,
        sim("2.02", "8970006", "+380501000006", "255060000000006"),
        sim("2.03", "8970007", "+79007000007", "250770000000007"),
        sim("2.04", "8970008", "", "250010000000008"),
        sim("2.05", "8970009", "+99909000009", "999010000000009"),
    ] {
        market.event(&farm, Event::SimStatusChanged(status));
    }
    assert_eq!(
        services(&market, &farm),
        json!([
            {"country": "russia", "operatorMap": {
                "any": {"tg": 1, "wa": 1},
                "beeline": {"tg": 1, "wa": 1},
                "megafon": {"tg": 1, "wa": 1},
                "mts": {"tg": 2, "wa": 2},
            }},
            {"country": "ukraine", "operatorMap": {"life": {"tg": 1, "wa": 1}}},
        ])
    );
}

#[test]
fn services_leave_out_busy_sold_refused_and_capped_numbers() {
    let farm = farm();
    let bower = instance("bower", &[("offer_cap", "2")]);
    let other = instance("other", &[("offer_cap", "2")]);
    let mts = |market: &Instance<Plain>| services(market, &farm)[0]["operatorMap"]["mts"].clone();
    assert_eq!(mts(&bower), json!({"tg": 1, "wa": 1}));

    // Busy on another marketplace: counted for no service, here either.
    let busy = get_number(&other, &farm, json!({"operator": "mts"}));
    assert_eq!(mts(&bower), json!({"tg": 0, "wa": 0}));
    // Sold for tg: back for wa only.
    assert_eq!(finish(&other, &farm, &busy["activationId"], 3).0, 200);
    assert_eq!(mts(&bower), json!({"tg": 0, "wa": 1}));
    // Refused for wa: no longer offered at all.
    let refused = get_number(&bower, &farm, json!({"operator": "mts", "service": "wa"}));
    finish(&bower, &farm, &refused["activationId"], 1);
    assert_eq!(mts(&bower), json!({"tg": 0, "wa": 0}));

    // Megafon: cancelled (4) may be offered again, up to the cap of 2 offers.
    let megafon =
        |market: &Instance<Plain>| services(market, &farm)[0]["operatorMap"]["megafon"].clone();
    for _ in 0..2 {
        assert_eq!(megafon(&bower)["tg"], 1);
        let offered = get_number(&bower, &farm, json!({"operator": "megafon"}));
        finish(&bower, &farm, &offered["activationId"], 4);
    }
    assert_eq!(megafon(&bower), json!({"tg": 0, "wa": 1}));
    assert_eq!(
        get_number(&bower, &farm, json!({"operator": "megafon"}))["status"],
        "NO_NUMBERS"
    );
}

#[test]
fn the_default_offer_cap_is_four() {
    let farm = farm();
    let bower = instance("bower", &[]);
    for _ in 0..4 {
        let offered = get_number(&bower, &farm, json!({"operator": "mts"}));
        finish(&bower, &farm, &offered["activationId"], 4);
    }
    assert_eq!(
        get_number(&bower, &farm, json!({"operator": "mts"}))["status"],
        "NO_NUMBERS"
    );
    assert_eq!(
        number_of(&get_number(
            &bower,
            &farm,
            json!({"operator": "mts", "service": "wa"})
        )),
        "79001000001"
    );
}

#[test]
fn services_follow_the_inventory_at_once() {
    let farm = farm();
    let market = instance("bower", &[]);
    let mut gone = sim("1.01", "8970001", "+79001000001", "250010000000001");
    gone.state = SimState::NoSim;
    gone.iccid = None;
    market.event(&farm, Event::SimStatusChanged(gone));
    let operators = services(&market, &farm)[0]["operatorMap"].clone();
    assert_eq!(operators.get("mts"), None, "{operators}");
    assert_eq!(
        get_number(&market, &farm, json!({"operator": "mts"}))["status"],
        "NO_NUMBERS"
    );
}

#[test]
fn services_are_per_instance() {
    let farm = farm();
    let tg_only = instance("tg-only", &[("services", "tg")]);
    assert_eq!(
        services(&tg_only, &farm)[0]["operatorMap"]["mts"],
        json!({"tg": 1})
    );
    assert_eq!(
        get_number(&tg_only, &farm, json!({"service": "wa"}))["status"],
        "NO_NUMBERS"
    );
    let empty = instance("empty", &[]);
    assert_eq!(services(&empty, &MemoryStore::default()), json!([]));
}

// ---- GET_NUMBER ----

#[test]
fn get_number_leases_distinct_numbers_until_none_is_left() {
    let farm = farm();
    let market = instance("bower", &[]);
    let mut numbers = Vec::new();
    for expected_id in ["1", "2", "3"] {
        let reply = get_number(&market, &farm, json!({}));
        assert_eq!(reply["activationId"], expected_id);
        numbers.push(number_of(&reply));
    }
    numbers.sort();
    assert_eq!(numbers, ["79001000001", "79002000002", "79993000003"]);
    assert_eq!(
        get_number(&market, &farm, json!({})),
        json!({"status": "NO_NUMBERS"})
    );
}

#[test]
fn get_number_answers_the_sample_fields() {
    let farm = farm();
    let market = instance("bower", &[("sims", r#"{"8970003": {"call": true}}"#)]);
    let reply = get_number(&market, &farm, json!({"operator": "beeline"}));
    assert_eq!(
        reply,
        json!({"number": "79993000003", "activationId": "1", "status": "SUCCESS", "call": 1, "voice": 0})
    );
    let reply = get_number(&market, &farm, json!({"operator": "mts"}));
    assert_eq!((&reply["call"], &reply["voice"]), (&json!(0), &json!(0)));
}

#[test]
fn get_number_matches_country_and_operator() {
    let farm = farm();
    let market = instance("bower", &[]);
    assert_eq!(
        number_of(&get_number(&market, &farm, json!({"operator": "Beeline"}))),
        "79993000003"
    );
    assert_eq!(
        get_number(&market, &farm, json!({"operator": "tele2"}))["status"],
        "NO_NUMBERS"
    );
    assert_eq!(
        get_number(&market, &farm, json!({"country": "ukraine"}))["status"],
        "NO_NUMBERS"
    );
    let no_operator =
        json!({"action": "GET_NUMBER", "key": KEY, "country": "RUSSIA", "service": "tg"});
    let (status, reply) = market.call(&farm, &no_operator);
    assert_eq!(status, 200);
    assert_eq!(reply["status"], "SUCCESS", "no operator means any");
}

#[test]
fn get_number_skips_excluded_prefixes() {
    let farm = farm();
    let market = instance("bower", &[]);
    let excluded = json!({"exceptionPhoneSet": ["790010", "+79993"]});
    assert_eq!(
        number_of(&get_number(&market, &farm, excluded.clone())),
        "79002000002"
    );
    assert_eq!(
        get_number(&market, &farm, excluded),
        json!({"status": "NO_NUMBERS"})
    );
    assert_eq!(
        number_of(&get_number(
            &market,
            &farm,
            json!({"exceptionPhoneSet": ["7999"]})
        )),
        "79001000001"
    );
}

#[test]
fn get_number_honours_price_floors() {
    let farm = farm();
    // tg costs at least 15; the Beeline card at least 30.
    let market = instance(
        "bower",
        &[
            ("services", r#"{"tg": 15, "wa": 0}"#),
            ("sims", r#"{"8970003": {"min_price": 30}}"#),
        ],
    );
    assert_eq!(
        get_number(&market, &farm, json!({"sum": "14.99"}))["status"],
        "NO_NUMBERS"
    );
    assert_eq!(
        get_number(&market, &farm, json!({"sum": null}))["status"],
        "NO_NUMBERS",
        "no price, no sale below a floor"
    );
    assert_eq!(
        get_number(&market, &farm, json!({"operator": "beeline", "sum": 20}))["status"],
        "NO_NUMBERS"
    );
    assert_eq!(
        number_of(&get_number(
            &market,
            &farm,
            json!({"operator": "beeline", "sum": "30"})
        )),
        "79993000003"
    );
    assert_eq!(
        number_of(&get_number(&market, &farm, json!({"sum": 15}))),
        "79001000001"
    );
    // No floor for wa: any price, or none, will do.
    assert_eq!(
        get_number(&market, &farm, json!({"service": "wa", "sum": null}))["status"],
        "SUCCESS"
    );
}

#[test]
fn get_number_records_the_activation() {
    let farm = farm();
    let mut market = instance("bower", &[]);
    market.at(T0 + 5);
    let reply = get_number(&market, &farm, json!({"operator": "mts"}));
    let record: Activation =
        serde_json::from_slice(&market.own.get("activation/1").unwrap().unwrap()).unwrap();
    assert_eq!(record.number, number_of(&reply));
    assert_eq!(
        (
            record.service.as_str(),
            record.country.as_str(),
            record.operator.as_str()
        ),
        ("tg", "russia", "mts")
    );
    assert_eq!(
        (record.issued_ms, record.sum, record.ended.clone()),
        (T0 + 5, Some(20.0), None)
    );
    assert_eq!(record.sim.iccid.as_deref(), Some("8970001"));
    let lease: Value =
        serde_json::from_slice(&farm.get("use/iccid/8970001").unwrap().unwrap()).unwrap();
    assert_eq!(
        lease["lease"],
        json!({"instance": "bower", "activation": 1, "service": "tg", "since_ms": T0 + 5})
    );
}

#[test]
fn two_marketplaces_never_lease_the_same_number() {
    let farm = farm();
    let bower = instance("bower", &[]);
    let other = instance("other", &[]);
    let mut numbers: Vec<String> = [&bower, &other, &bower]
        .iter()
        .map(|market| number_of(&get_number(market, &farm, json!({}))))
        .collect();
    numbers.sort();
    numbers.dedup();
    assert_eq!(numbers.len(), 3);
    assert_eq!(get_number(&other, &farm, json!({}))["status"], "NO_NUMBERS");
}

/// Spin runs two instances' calls at once: between one GET_NUMBER's read of the farm and
/// its compare-and-swap, the other marketplace leases the very card it chose.
#[test]
fn a_lost_compare_and_swap_moves_on_to_another_number() {
    let farm = farm();
    let bower = instance("bower", &[]);
    let other = instance("other", &[]);
    let theirs = RefCell::new(Value::Null);
    let racing = Racing::new(&farm, || {
        *theirs.borrow_mut() = get_number(&other, &farm, json!({"operator": "any"}));
    });
    let ours = number_of(&get_number(&bower, &racing, json!({})));
    let theirs = number_of(&theirs.borrow());
    assert_eq!(
        racing.lost_swaps.get(),
        1,
        "the first swap met the other lease"
    );
    assert_ne!(ours, theirs);
    // Both leases are in the farm, each with its own marketplace.
    for (number, market) in [(&ours, "bower"), (&theirs, "other")] {
        let iccid = match number.as_str() {
            "79001000001" => "8970001",
            "79002000002" => "8970002",
            _ => "8970003",
        };
        let usage: Value =
            serde_json::from_slice(&farm.get(&format!("use/iccid/{iccid}")).unwrap().unwrap())
                .unwrap();
        assert_eq!(usage["lease"]["instance"], market);
    }
}

/// Spin may run two calls of one instance at once, too.
#[test]
fn two_concurrent_calls_of_one_marketplace_get_two_numbers() {
    let farm = farm();
    let bower = instance("bower", &[]);
    let first = RefCell::new(Value::Null);
    let racing = Racing::new(&farm, || {
        *first.borrow_mut() = get_number(&bower, &farm, json!({}));
    });
    let second = get_number(&bower, &racing, json!({}));
    assert_eq!(racing.lost_swaps.get(), 1);
    assert_ne!(number_of(&first.borrow()), number_of(&second));
    assert_ne!(first.borrow()["activationId"], second["activationId"]);
}

#[test]
fn a_lost_race_for_the_last_number_is_no_numbers() {
    let farm = MemoryStore::default();
    let bower = instance("bower", &[]);
    let other = instance("other", &[]);
    bower.event(
        &farm,
        Event::SimStatusChanged(sim("1.01", "8970001", "+79001000001", "250010000000001")),
    );
    let theirs = RefCell::new(Value::Null);
    let racing = Racing::new(&farm, || {
        *theirs.borrow_mut() = get_number(&other, &farm, json!({}));
    });
    assert_eq!(
        get_number(&bower, &racing, json!({})),
        json!({"status": "NO_NUMBERS"})
    );
    assert_eq!(number_of(&theirs.borrow()), "79001000001");
    assert_eq!(racing.lost_swaps.get(), 1);
    // Our own store shows no activation for the number we lost.
    assert!(bower.own.keys("open/").unwrap().is_empty());
    assert!(bower.own.keys("route/").unwrap().is_empty());
}

/// The other writer only changes the card's history (a refusal for another service, from
/// another marketplace), leaving it free: the swap is lost, then won on the fresh record.
#[test]
fn a_swap_lost_to_a_harmless_change_is_won_on_the_fresh_record() {
    let farm = MemoryStore::default();
    let bower = instance("bower", &[]);
    bower.event(
        &farm,
        Event::SimStatusChanged(sim("1.01", "8970001", "+79001000001", "250010000000001")),
    );
    let racing = Racing::new(&farm, || {
        let mut usage =
            usage::Usage::decode(farm.get("use/iccid/8970001").unwrap().as_deref()).unwrap();
        usage.number = Some("79001000001".into());
        usage.services.entry("wa".into()).or_default().refused = true;
        farm.set("use/iccid/8970001", &usage.encode()).unwrap();
    });
    assert_eq!(
        number_of(&get_number(&bower, &racing, json!({}))),
        "79001000001"
    );
    assert_eq!(racing.lost_swaps.get(), 1);
    let usage = usage::Usage::decode(farm.get("use/iccid/8970001").unwrap().as_deref()).unwrap();
    assert!(
        usage.history("79001000001", "wa").refused,
        "the other writer's change is kept"
    );
    assert_eq!(usage.history("79001000001", "tg").offers, 1);
    assert_eq!(
        usage.lease.map(|lease| lease.instance),
        Some("bower".into())
    );
}

// ---- FINISH_ACTIVATION ----

#[test]
fn finish_is_idempotent_and_changes_nothing_the_second_time() {
    let farm = farm();
    let market = instance("bower", &[]);
    let reply = get_number(&market, &farm, json!({"operator": "mts"}));
    assert_eq!(
        finish(&market, &farm, &reply["activationId"], 3),
        (200, json!({"status": "SUCCESS"}))
    );
    let (own, shared) = (snapshot(&market.own), snapshot(&farm));
    for status in [3, 4, 1] {
        assert_eq!(
            finish(&market, &farm, &reply["activationId"], status),
            (200, json!({"status": "SUCCESS"}))
        );
    }
    assert_eq!((snapshot(&market.own), snapshot(&farm)), (own, shared));
}

#[test]
fn finish_of_an_unknown_activation_is_an_error() {
    let farm = farm();
    let market = instance("bower", &[]);
    let (status, reply) = finish(&market, &farm, &json!(100), 3);
    assert_eq!((status, &reply["status"]), (404, &json!("NO_ACTIVATION")));
    // An activation of another marketplace is unknown here too, and stays open there.
    let other = instance("other", &[]);
    let theirs = get_number(&other, &farm, json!({}));
    let (shared, own) = (snapshot(&farm), snapshot(&market.own));
    assert_eq!(finish(&market, &farm, &theirs["activationId"], 3).0, 404);
    assert_eq!((snapshot(&farm), snapshot(&market.own)), (shared, own));
}

#[test]
fn finish_statuses() {
    // status → (offered again for tg, offered for wa)
    for (status, tg_again) in [(1, false), (3, false), (4, true), (5, false)] {
        let farm = MemoryStore::default();
        let market = instance("bower", &[]);
        market.event(
            &farm,
            Event::SimStatusChanged(sim("1.01", "8970001", "+79001000001", "250010000000001")),
        );
        let reply = get_number(&market, &farm, json!({}));
        assert_eq!(
            finish(&market, &farm, &reply["activationId"], status).1["status"],
            "SUCCESS"
        );
        let again = get_number(&market, &farm, json!({}));
        assert_eq!(
            again["status"] == "SUCCESS",
            tg_again,
            "status {status}: {again}"
        );
        if !tg_again {
            assert_eq!(
                number_of(&get_number(&market, &farm, json!({"service": "wa"}))),
                "79001000001",
                "status {status}"
            );
        }
    }
}

#[test]
fn a_finished_activation_gets_no_more_sms() {
    let farm = farm();
    let market = instance("bower", &[]);
    let reply = get_number(&market, &farm, json!({"operator": "mts"}));
    finish(&market, &farm, &reply["activationId"], 4);
    assert!(
        pushes(market.event(
            &farm,
            Event::MessageReceived(sms("late", "+79001000001", "code 1"))
        ))
        .is_empty()
    );
}

// ---- key, body, action ----

#[test]
fn a_wrong_key_is_refused_and_changes_nothing() {
    let farm = farm();
    let market = instance("bower", &[]);
    let leased = get_number(&market, &farm, json!({}));
    let (own, shared) = (snapshot(&market.own), snapshot(&farm));
    for body in [
        json!({"action": "GET_SERVICES", "key": "wrong"}),
        json!({"action": "GET_NUMBER", "key": "wrong", "country": "russia", "operator": "any", "service": "tg"}),
        json!({"action": "FINISH_ACTIVATION", "key": "wrong", "activationId": leased["activationId"], "status": 3}),
        json!({"action": "GET_SERVICES"}),
    ] {
        let (status, reply) = market.call(&farm, &body);
        assert_eq!(
            (status, &reply["status"]),
            (401, &json!("BAD_KEY")),
            "{body}"
        );
        assert!(reply.get("number").is_none() && reply.get("countryList").is_none());
    }
    assert_eq!((snapshot(&market.own), snapshot(&farm)), (own, shared));
}

#[test]
fn a_separate_webhook_key_is_the_one_checked() {
    let farm = farm();
    let market = instance("bower", &[("webhook_key", "incoming")]);
    assert_eq!(
        market
            .call(&farm, &json!({"action": "GET_SERVICES", "key": KEY}))
            .0,
        401
    );
    assert_eq!(
        market
            .call(&farm, &json!({"action": "GET_SERVICES", "key": "incoming"}))
            .0,
        200
    );
}

#[test]
fn malformed_bodies_and_unknown_actions_get_clear_errors() {
    let farm = farm();
    let market = instance("bower", &[]);
    let (status, reply) = market.call_raw(&farm, b"action=GET_SERVICES&key=qwerty123");
    assert_eq!((status, &reply["status"]), (400, &json!("BAD_REQUEST")));
    assert!(
        reply["error"]
            .as_str()
            .unwrap()
            .starts_with("the body is not JSON"),
        "{reply}"
    );
    let (status, reply) = market.call(&farm, &json!({"action": "GET_BALANCE", "key": KEY}));
    assert_eq!((status, &reply["status"]), (400, &json!("BAD_ACTION")));
    assert!(reply["error"].as_str().unwrap().contains("GET_BALANCE"));
    let (status, reply) = market.call(
        &farm,
        &json!({"action": "FINISH_ACTIVATION", "key": KEY, "activationId": 1, "status": 2}),
    );
    assert_eq!((status, &reply["status"]), (400, &json!("BAD_STATUS")));
}

#[test]
fn missing_settings_are_internal_errors_that_name_them() {
    let farm = farm();
    let ctx = CallContext::for_tests(&[("api_key", KEY)]);
    let request = testing::request(br#"{"action":"GET_SERVICES","key":"qwerty123"}"#);
    let error =
        Marketplace::<Plain>::webhook(&ctx, &MemoryStore::default(), &farm, &request).unwrap_err();
    assert_eq!(error, "setting `services` is not configured");
}

// ---- PUSH_SMS ----

#[test]
fn an_sms_is_pushed_to_the_marketplace_that_issued_the_activation_only() {
    let farm = farm();
    let bower = instance("bower", &[]);
    let other = instance("other", &[]);
    let reply = get_number(&bower, &farm, json!({"operator": "mts"}));
    let message = sms("m1", "+79001000001", "Telegram code 12345");
    let [push] = &pushes(bower.event(&farm, Event::MessageReceived(message.clone())))[..] else {
        panic!("one push");
    };
    assert!(pushes(other.event(&farm, Event::MessageReceived(message))).is_empty());
    assert_eq!(push.idempotency_key, "push/m1");
    assert_eq!(push.request.url, "https://market.test/push");
    let body: Value = serde_json::from_slice(&push.request.body).unwrap();
    assert_eq!(
        body,
        json!({"key": KEY, "smsId": 1, "phone": number_of(&reply), "phoneFrom": "Telegram", "text": "Telegram code 12345", "call": 0})
    );
}

#[test]
fn an_sms_with_no_open_activation_is_not_pushed() {
    let farm = farm();
    let market = instance("bower", &[]);
    assert!(
        pushes(market.event(
            &farm,
            Event::MessageReceived(sms("m1", "+79001000001", "hi"))
        ))
        .is_empty()
    );
    assert!(
        market.own.keys("sms/").unwrap().is_empty(),
        "nothing recorded as pushed"
    );
    assert!(pushes(market.event(&farm, Event::MessageReceived(sms("m2", "", "hi")))).is_empty());
}

#[test]
fn an_sms_finds_its_activation_by_card_when_the_gateway_gives_no_number() {
    let farm = farm();
    let market = instance("bower", &[]);
    get_number(&market, &farm, json!({"operator": "megafon"}));
    let mut by_iccid = sms("m1", "", "code");
    by_iccid.iccid = Some("8970002".into());
    assert_eq!(
        pushes(market.event(&farm, Event::MessageReceived(by_iccid))).len(),
        1
    );
    let mut by_port = sms("m2", "", "code");
    by_port.port = Some("1.02".into());
    assert_eq!(
        pushes(market.event(&farm, Event::MessageReceived(by_port))).len(),
        1
    );
    let mut other_port = sms("m3", "", "code");
    other_port.port = Some("1.01".into());
    assert!(pushes(market.event(&farm, Event::MessageReceived(other_port))).is_empty());
}

#[test]
fn sms_ids_are_integers_from_one_and_stable_per_sms() {
    let farm = farm();
    let market = instance("bower", &[]);
    get_number(&market, &farm, json!({"operator": "mts"}));
    let sms_id = |id: &str| -> Option<Value> {
        let deliveries =
            pushes(market.event(&farm, Event::MessageReceived(sms(id, "79001000001", "x"))));
        deliveries.first().map(|push| {
            serde_json::from_slice::<Value>(&push.request.body).unwrap()["smsId"].clone()
        })
    };
    assert_eq!(sms_id("a"), Some(json!(1)));
    assert_eq!(sms_id("b"), Some(json!(2)));
    // The same SMS again (a re-sent gateway push): no second push.
    assert_eq!(sms_id("a"), None);
    let record: push::PushRecord =
        serde_json::from_slice(&market.own.get("sms/a").unwrap().unwrap()).unwrap();
    assert_eq!(
        (record.sms_id, record.activation, record.state),
        (1, 1, push::PushState::Pending)
    );
}

#[test]
fn flash_calls_and_voice_calls_are_pushed_with_their_code() {
    let farm = farm();
    let market = instance("bower", &[]);
    get_number(&market, &farm, json!({"operator": "mts"}));
    let mut flash = sms("c", "79001000001", "");
    (flash.kind, flash.sender) = (MessageKind::FlashCall, "+446756540011".into());
    let mut voice = sms("v", "79001000001", "your code is one two three");
    (voice.kind, voice.sender, voice.code) = (
        MessageKind::Voice,
        "446756540011".into(),
        Some("123".into()),
    );
    for (message, text, call) in [(flash, "446756540011", 1), (voice, "123", 0)] {
        let push = pushes(market.event(&farm, Event::MessageReceived(message))).remove(0);
        let body: Value = serde_json::from_slice(&push.request.body).unwrap();
        assert_eq!(
            (&body["text"], &body["phoneFrom"], &body["call"]),
            (&json!(text), &json!("446756540011"), &json!(call))
        );
    }
}

#[test]
fn accepted_pushes_are_never_pushed_again() {
    let farm = farm();
    let market = instance("bower", &[]);
    get_number(&market, &farm, json!({"operator": "mts"}));
    let message = Event::MessageReceived(sms("m1", "79001000001", "code"));
    pushes(market.event(&farm, message.clone()));
    assert!(matches!(
        market.respond(&farm, "push/m1", response(200, r#"{"status":"SUCCESS"}"#)),
        Verdict::Delivered
    ));
    assert!(pushes(market.event(&farm, message)).is_empty());
    // A late answer to an attempt in flight changes nothing.
    assert!(matches!(
        market.respond(&farm, "push/m1", response(500, "")),
        Verdict::Delivered
    ));
    let record: push::PushRecord =
        serde_json::from_slice(&market.own.get("sms/m1").unwrap().unwrap()).unwrap();
    assert_eq!(record.state, push::PushState::Delivered);
}

#[test]
fn anything_but_success_is_retried_every_ten_seconds_by_default() {
    let farm = farm();
    let market = instance("bower", &[]);
    get_number(&market, &farm, json!({"operator": "mts"}));
    pushes(market.event(
        &farm,
        Event::MessageReceived(sms("m1", "79001000001", "code")),
    ));
    for outcome in [
        response(200, r#"{"status":"ERROR"}"#),
        response(500, r#"{"status":"SUCCESS"}"#),
        response(302, ""),
        DeliveryOutcome::TransportError("connection refused".into()),
    ] {
        assert!(matches!(
            market.respond(&farm, "push/m1", outcome),
            Verdict::RetryAfterMs(10_000)
        ));
    }
    let slower = instance("bower", &[("retry_interval_secs", "30")]);
    assert!(matches!(
        slower.respond(&farm, "push/m1", response(503, "")),
        Verdict::RetryAfterMs(30_000)
    ));
}

#[test]
fn final_answers_give_up_with_their_reason() {
    let farm = farm();
    let market = instance("bower", &[]);
    get_number(&market, &farm, json!({"operator": "mts"}));
    pushes(market.event(
        &farm,
        Event::MessageReceived(sms("m1", "79001000001", "code")),
    ));
    let Verdict::GiveUp(reason) =
        market.respond(&farm, "push/m1", response(200, r#"{"status":"FINAL"}"#))
    else {
        panic!("a final answer gives up");
    };
    assert!(reason.contains("FINAL"), "{reason}");
    let record: push::PushRecord =
        serde_json::from_slice(&market.own.get("sms/m1").unwrap().unwrap()).unwrap();
    assert_eq!(
        record.state,
        push::PushState::Refused {
            reason: "FINAL".into()
        }
    );
}

#[test]
fn retries_stop_once_the_activation_has_ended() {
    let farm = farm();
    let market = instance("bower", &[]);
    let reply = get_number(&market, &farm, json!({"operator": "mts"}));
    pushes(market.event(
        &farm,
        Event::MessageReceived(sms("m1", "79001000001", "code")),
    ));
    finish(&market, &farm, &reply["activationId"], 4);
    let Verdict::GiveUp(reason) =
        market.respond(&farm, "push/m1", response(200, r#"{"status":"ERROR"}"#))
    else {
        panic!("no retries for an ended activation");
    };
    assert!(
        reason.starts_with("activation 1 ended (status 4)"),
        "{reason}"
    );
    // Success is still success.
    assert!(matches!(
        market.respond(&farm, "push/m1", response(200, r#"{"status":"SUCCESS"}"#)),
        Verdict::Delivered
    ));
}

#[test]
fn other_events_and_unknown_deliveries() {
    let farm = farm();
    let market = instance("bower", &[]);
    let status = simrelay_sdk::DeliveryStatus {
        id: "x".into(),
        state: simrelay_sdk::DeliveryState::Sent,
        detail: None,
        recipient: None,
    };
    let before = snapshot(&farm);
    assert!(pushes(market.event(&farm, Event::DeliveryStatusChanged(status))).is_empty());
    assert_eq!(snapshot(&farm), before);
    assert!(matches!(
        market.respond(&farm, "mystery/1", response(200, "")),
        Verdict::GiveUp(_)
    ));
}

// ---- reconciliation ----

const MINUTE: u64 = 60_000;

#[test]
fn old_open_activations_are_asked_about() {
    let farm = farm();
    let mut market = instance("bower", &[("statistic_interval_secs", "0")]);
    get_number(&market, &farm, json!({"operator": "mts"}));
    market.at(T0 + 10 * MINUTE);
    get_number(&market, &farm, json!({"operator": "megafon"}));
    let finished = get_number(&market, &farm, json!({"operator": "beeline"}));
    finish(&market, &farm, &finished["activationId"], 3);

    market.at(T0 + 29 * MINUTE);
    assert!(
        market.tick().deliveries.is_empty(),
        "nothing is 30 minutes old yet"
    );
    market.at(T0 + 30 * MINUTE);
    let queries = market.tick().deliveries;
    let [query] = &queries[..] else {
        panic!("one query: {queries:?}")
    };
    assert_eq!(
        query.idempotency_key,
        format!("status/1/{}", T0 + 30 * MINUTE)
    );
    assert_eq!(
        (query.request.method.as_str(), query.request.url.as_str()),
        ("GET", "https://market.test/status?id=1")
    );
    // Asked once per interval, not on every tick.
    market.at(T0 + 31 * MINUTE);
    assert!(market.tick().deliveries.is_empty());
    market.at(T0 + 40 * MINUTE);
    let ids: Vec<_> = market
        .tick()
        .deliveries
        .into_iter()
        .map(|d| d.idempotency_key)
        .collect();
    assert_eq!(ids, [format!("status/2/{}", T0 + 40 * MINUTE)]);
    market.at(T0 + 60 * MINUTE);
    assert_eq!(
        market.tick().deliveries.len(),
        1,
        "activation 1 again, 30 minutes after it was asked about"
    );
}

#[test]
fn status_answers_apply_the_marketplace_word() {
    let farm = farm();
    let market = instance("bower", &[]);
    let first = get_number(&market, &farm, json!({"operator": "mts"}));
    let second = get_number(&market, &farm, json!({"operator": "megafon"}));
    // 0: still waiting.
    assert!(matches!(
        market.respond(&farm, "status/1/5", response(200, r#"{"status": 0}"#)),
        Verdict::Delivered
    ));
    assert_eq!(
        get_number(&market, &farm, json!({"operator": "mts"}))["status"],
        "NO_NUMBERS"
    );
    // 6: completed, as if FINISH_ACTIVATION 3 had come.
    assert!(matches!(
        market.respond(&farm, "status/1/6", response(200, r#"{"status": 6}"#)),
        Verdict::Delivered
    ));
    assert_eq!(
        get_number(&market, &farm, json!({"operator": "mts"}))["status"],
        "NO_NUMBERS",
        "sold for tg"
    );
    assert_eq!(
        get_number(&market, &farm, json!({"operator": "mts", "service": "wa"}))["status"],
        "SUCCESS"
    );
    // 8: cancelled, as status 4: offered again.
    assert!(matches!(
        market.respond(&farm, "status/2/7", response(200, r#"{"status": "8"}"#)),
        Verdict::Delivered
    ));
    assert_eq!(
        number_of(&get_number(&market, &farm, json!({"operator": "megafon"}))),
        number_of(&second)
    );
    let record: Activation =
        serde_json::from_slice(&market.own.get("activation/1").unwrap().unwrap()).unwrap();
    assert_eq!(
        record.ended.map(|e| (e.ending, e.by)),
        Some((Ending::Sold, EndedBy::StatusQuery))
    );
    // A FINISH_ACTIVATION that arrives after all still answers SUCCESS.
    assert_eq!(
        finish(&market, &farm, &first["activationId"], 3).1["status"],
        "SUCCESS"
    );
}

#[test]
fn unexpected_status_answers() {
    let farm = farm();
    let market = instance("bower", &[]);
    get_number(&market, &farm, json!({"operator": "mts"}));
    assert!(matches!(
        market.respond(
            &farm,
            "status/1/1",
            DeliveryOutcome::TransportError("timeout".into())
        ),
        Verdict::Retry
    ));
    assert!(matches!(
        market.respond(&farm, "status/1/1", response(502, "Bad gateway")),
        Verdict::Retry
    ));
    for outcome in [
        response(200, r#"{"status": 3}"#),
        response(200, "<html>"),
        response(404, r#"{"error":"qwerty123 unknown"}"#),
    ] {
        let Verdict::GiveUp(reason) = market.respond(&farm, "status/1/1", outcome) else {
            panic!("gives up")
        };
        assert!(!reason.contains(KEY), "{reason}");
    }
    assert!(matches!(
        market.respond(&farm, "status/x/1", response(200, "{}")),
        Verdict::GiveUp(_)
    ));
    assert_eq!(
        get_number(&market, &farm, json!({"operator": "mts"}))["status"],
        "NO_NUMBERS",
        "still open"
    );
}

#[test]
fn statistics_are_fetched_each_interval_and_compared() {
    let farm = farm();
    let mut market = instance("bower", &[("reconcile_after_secs", "0")]);
    let keys = |market: &Instance<Plain>| -> Vec<String> {
        market
            .tick()
            .deliveries
            .into_iter()
            .map(|d| d.idempotency_key)
            .collect()
    };
    assert_eq!(keys(&market), [format!("statistic/{T0}")]);
    market.at(T0 + 59 * MINUTE);
    assert!(keys(&market).is_empty());
    market.at(T0 + 60 * MINUTE);
    assert_eq!(keys(&market).len(), 1);
    let sample = r#"{"success": true, "data": [{"id": 101, "phone": "79001234567"}], "countByServices": {"google": 10}, "total": 1}"#;
    // We have 3 on sale, SmsBower counts 1: logged, delivered.
    assert!(matches!(
        market.respond(&farm, "statistic/1", response(200, sample)),
        Verdict::Delivered
    ));
    assert!(matches!(
        market.respond(
            &farm,
            "statistic/1",
            response(200, r#"{"success": true, "data": [1, 2, 3]}"#)
        ),
        Verdict::Delivered
    ));
    assert!(matches!(
        market.respond(&farm, "statistic/1", response(200, r#"{"success": false}"#)),
        Verdict::GiveUp(_)
    ));
    assert!(matches!(
        market.respond(&farm, "statistic/1", response(403, "denied")),
        Verdict::GiveUp(_)
    ));
    assert!(matches!(
        market.respond(
            &farm,
            "statistic/1",
            DeliveryOutcome::TransportError("reset".into())
        ),
        Verdict::Retry
    ));
    let off = instance(
        "quiet",
        &[
            ("reconcile_after_secs", "0"),
            ("statistic_interval_secs", "0"),
        ],
    );
    assert!(off.tick().deliveries.is_empty());
}

// ---- cost ----

/// Counts the calls a store gets.
#[derive(Default)]
struct Counting {
    inner: MemoryStore,
    calls: RefCell<std::collections::BTreeMap<&'static str, u32>>,
}

impl Counting {
    fn count(&self, call: &'static str) {
        *self.calls.borrow_mut().entry(call).or_default() += 1;
    }
}

impl KeyValue for Counting {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, String> {
        self.count("get");
        self.inner.get(key)
    }
    fn set(&self, key: &str, value: &[u8]) -> Result<(), String> {
        self.count("set");
        self.inner.set(key, value)
    }
    fn delete(&self, key: &str) -> Result<(), String> {
        self.count("delete");
        self.inner.delete(key)
    }
    fn increment(&self, key: &str, delta: i64) -> Result<i64, String> {
        self.count("increment");
        self.inner.increment(key, delta)
    }
    fn keys(&self, prefix: &str) -> Result<Vec<String>, String> {
        self.count("keys");
        self.inner.keys(prefix)
    }
    fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>, String> {
        self.count("get_many");
        self.inner.get_many(keys)
    }
    fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        new: &[u8],
    ) -> Result<bool, String> {
        self.count("compare_and_swap");
        self.inner.compare_and_swap(key, expected, new)
    }
}

/// The benchmark's farm: GET_NUMBER reads 500 cards with one listing and one batch read,
/// and writes one compare-and-swap, however many cards are leased already.
#[test]
fn get_number_reads_the_farm_once() {
    let farm = Counting::default();
    let market = instance("bower", &[]);
    for port in 0..500 {
        let status = sim(
            &format!("{}.{:02}", port / 32, port % 32),
            &format!("89700{port:04}"),
            &format!("+7900{port:07}"),
            "250010000000001",
        );
        market.event(&farm.inner, Event::SimStatusChanged(status));
    }
    for _ in 0..20 {
        number_of(&get_number(&market, &farm.inner, json!({})));
    }
    let started = std::time::Instant::now();
    number_of(&get_number(&market, &farm, json!({})));
    let elapsed = started.elapsed();
    let calls = farm.calls.borrow().clone();
    assert_eq!(
        calls,
        [("compare_and_swap", 1), ("get_many", 1), ("keys", 1)]
            .into_iter()
            .collect()
    );
    eprintln!("GET_NUMBER over 500 cards: {elapsed:?}");
    assert!(elapsed < std::time::Duration::from_secs(1), "{elapsed:?}");
}

#[test]
fn ticks_forget_pushes_and_ended_activations_after_their_window() {
    let farm = farm();
    let mut market = instance("bower", &[("forget_after_secs", "60")]);
    let reply = get_number(&market, &farm, json!({"operator": "mts"}));
    assert_eq!(
        pushes(market.event(&farm, Event::MessageReceived(sms("m1", "79001000001", "x")))).len(),
        1
    );
    assert_eq!(finish(&market, &farm, &reply["activationId"], 3).0, 200);
    market.at(T0 + 59_000).tick();
    assert!(market.own.exists("sms/m1").unwrap());
    assert_eq!(market.own.keys("activation/").unwrap().len(), 1);
    // The sweep at 59 s found nothing due, so the next waits half the window.
    market.at(T0 + 61_000).tick();
    assert!(market.own.exists("sms/m1").unwrap());
    market.at(T0 + 89_000).tick();
    assert!(
        !market.own.exists("sms/m1").unwrap(),
        "the push record is forgotten"
    );
    assert!(market.own.keys("activation/").unwrap().is_empty());
    // What remains is counters and single bookkeeping keys, not a record per SMS.
    let mut left = market.own.keys("").unwrap();
    left.retain(|key| {
        !key.starts_with("counter/") && !key.ends_with("@next") && key != "reconcile/statistic-at"
    });
    assert!(left.is_empty(), "{left:?}");
    // A finish after that no longer finds the activation.
    assert_eq!(finish(&market, &farm, &reply["activationId"], 3).0, 404);
}

/// A tick forgets at most `FORGET_LIMIT` push records; a relay pushing more than that per
/// tick interval would keep them all. Once a tick falls behind, pushes forget some too.
#[test]
fn pushes_faster_than_ticks_forget_are_caught_up_by_later_pushes() {
    let farm = farm();
    let mut market = instance("bower", &[("forget_after_secs", "60")]);
    get_number(&market, &farm, json!({"operator": "mts"}));
    let push = |market: &Instance<Plain>, n: usize| {
        let message = sms(&format!("m{n}"), "79001000001", "x");
        assert_eq!(
            pushes(market.event(&farm, Event::MessageReceived(message))).len(),
            1
        );
    };
    let backlog = 3 * super::FORGET_LIMIT;
    for n in 0..backlog {
        push(market.at(T0 + n as u64), n);
    }
    market.at(T0 + 120_000).tick();
    let records = |market: &Instance<Plain>| market.own.keys("sms/").unwrap().len();
    assert_eq!(records(&market), backlog - super::FORGET_LIMIT);
    // Later pushes forget expired records, oldest first, until none is left.
    let later = backlog / 2;
    for n in backlog..backlog + later {
        push(market.at(T0 + 120_000 + n as u64), n);
    }
    assert_eq!(records(&market), later, "only the later pushes are kept");
}
