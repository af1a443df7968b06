//! One SIM farm sold on SmsBower and Onlinesim at once: one inventory, one lease per number,
//! and each SMS pushed to the marketplace that issued the activation, and to no other.

use std::cell::RefCell;
use std::rc::Rc;

use serde_json::{Value, json};
use simrelay_marketplace::testing::{Instance, Racing, response, sim, sms};
use simrelay_onlinesim::{Onlinesim, OnlinesimDialect};
use simrelay_sdk::{Adapter, CallContext, Event, MemoryStore, Stores, Verdict};
use simrelay_smsbower::{SmsBower, SmsBowerDialect};

const BOWER_KEY: &str = "bower-key";
const ONLINESIM_KEY: &str = "onlinesim-key";

fn smsbower() -> Instance<SmsBowerDialect> {
    Instance::new(
        "smsbower",
        &[
            ("api_key", BOWER_KEY),
            ("base_url", "https://smsbower.online"),
            ("services", "tg,wa"),
        ],
    )
}

fn onlinesim() -> Instance<OnlinesimDialect> {
    Instance::new(
        "onlinesim",
        &[
            ("api_key", ONLINESIM_KEY),
            ("push_url", "https://onlinesim.test/v1/PUSH_SMS"),
            ("services", "tg,wa"),
        ],
    )
}

/// Two MTS cards. Both instances get the gateway's events, as `forward_to` sends them.
fn farm(bower: &Instance<SmsBowerDialect>, onlinesim: &Instance<OnlinesimDialect>) -> MemoryStore {
    let farm = MemoryStore::default();
    for status in [
        sim("1.01", "8970001", "+79001000001", "250010000000001"),
        sim("1.02", "8970002", "+79001000002", "250010000000002"),
    ] {
        bower.event(&farm, Event::SimStatusChanged(status.clone()));
        onlinesim.event(&farm, Event::SimStatusChanged(status));
    }
    farm
}

fn number_request(key: &str) -> Value {
    json!({"action": "GET_NUMBER", "key": key, "country": "russia", "operator": "mts", "service": "tg"})
}

/// The number an answer gives, as digits whichever way the dialect spells it.
fn number(reply: &Value) -> String {
    assert_eq!(reply["status"], "SUCCESS", "{reply}");
    match &reply["number"] {
        Value::String(digits) => digits.clone(),
        Value::Number(number) => number.to_string(),
        other => panic!("no number in {other}"),
    }
}

#[test]
fn a_number_leased_on_one_marketplace_is_busy_on_the_other() {
    let (bower, onlinesim) = (smsbower(), onlinesim());
    let farm = farm(&bower, &onlinesim);
    let ours = number(&bower.call(&farm, &number_request(BOWER_KEY)).1);
    let theirs = number(&onlinesim.call(&farm, &number_request(ONLINESIM_KEY)).1);
    assert_ne!(ours, theirs);
    assert_eq!(
        bower.call(&farm, &number_request(BOWER_KEY)).1["status"],
        "NO_NUMBERS"
    );
    assert_eq!(
        onlinesim.call(&farm, &number_request(ONLINESIM_KEY)).1["status"],
        "NO_NUMBERS"
    );
    let services = |body: Value| body["countryList"][0]["operatorMap"]["mts"].clone();
    let empty = json!({"tg": 0, "wa": 0});
    assert_eq!(
        services(
            bower
                .call(&farm, &json!({"action": "GET_SERVICES", "key": BOWER_KEY}))
                .1
        ),
        empty
    );
    assert_eq!(
        services(
            onlinesim
                .call(
                    &farm,
                    &json!({"action": "GET_SERVICES", "key": ONLINESIM_KEY})
                )
                .1
        ),
        empty
    );
    // Sold on SmsBower for tg: free for wa on Onlinesim, never again for tg anywhere.
    let finish =
        json!({"action": "FINISH_ACTIVATION", "key": BOWER_KEY, "activationId": "1", "status": 3});
    assert_eq!(bower.call(&farm, &finish).1["status"], "SUCCESS");
    assert_eq!(
        onlinesim.call(&farm, &number_request(ONLINESIM_KEY)).1["status"],
        "NO_NUMBERS"
    );
    let wa = json!({"action": "GET_NUMBER", "key": ONLINESIM_KEY, "country": "russia", "operator": "any", "service": "wa"});
    assert_eq!(number(&onlinesim.call(&farm, &wa).1), ours);
}

#[test]
fn each_sms_goes_to_the_marketplace_that_issued_its_activation() {
    let (bower, onlinesim) = (smsbower(), onlinesim());
    let farm = farm(&bower, &onlinesim);
    let on_bower = number(&bower.call(&farm, &number_request(BOWER_KEY)).1);
    let on_onlinesim = number(&onlinesim.call(&farm, &number_request(ONLINESIM_KEY)).1);
    for (id, recipient, pushed_by_bower) in [("a", &on_bower, true), ("b", &on_onlinesim, false)] {
        let message = Event::MessageReceived(sms(id, &format!("+{recipient}"), "code 1"));
        let bower_pushes = bower.event(&farm, message.clone()).deliveries;
        let onlinesim_pushes = onlinesim.event(&farm, message).deliveries;
        assert_eq!(
            (bower_pushes.len(), onlinesim_pushes.len()),
            if pushed_by_bower { (1, 0) } else { (0, 1) }
        );
        let push = bower_pushes
            .into_iter()
            .chain(onlinesim_pushes)
            .next()
            .unwrap();
        let url = push.request.url.as_str();
        assert!(
            url.starts_with(if pushed_by_bower {
                "https://smsbower.online"
            } else {
                "https://onlinesim.test"
            }),
            "{url}"
        );
    }
    // A number with no open activation on either: nobody pushes.
    let message = Event::MessageReceived(sms("c", "+79009999999", "spam"));
    assert!(bower.event(&farm, message.clone()).deliveries.is_empty());
    assert!(onlinesim.event(&farm, message).deliveries.is_empty());
}

/// On Spin the two marketplaces' GET_NUMBER calls really run at once. Onlinesim reads the
/// farm and picks a card; before its compare-and-swap, SmsBower leases that very card.
#[test]
fn concurrent_get_number_on_two_marketplaces_never_share_a_number() {
    let (bower, onlinesim) = (smsbower(), onlinesim());
    let farm = farm(&bower, &onlinesim);
    let bowers = RefCell::new(Value::Null);
    let racing = Racing::new(&farm, || {
        *bowers.borrow_mut() = bower.call(&farm, &number_request(BOWER_KEY)).1;
    });
    let (_, onlinesims) = onlinesim.call(&racing, &number_request(ONLINESIM_KEY));
    assert_eq!(racing.lost_swaps.get(), 1);
    assert_ne!(number(&bowers.borrow()), number(&onlinesims));
    // A third call, on either, finds nothing left.
    assert_eq!(
        bower.call(&farm, &number_request(BOWER_KEY)).1["status"],
        "NO_NUMBERS"
    );
}

/// Onlinesim's final answer and SmsBower's retries are each their own: one SMS on each.
#[test]
fn verdicts_follow_each_marketplace() {
    let (bower, onlinesim) = (smsbower(), onlinesim());
    let farm = farm(&bower, &onlinesim);
    let on_bower = number(&bower.call(&farm, &number_request(BOWER_KEY)).1);
    let on_onlinesim = number(&onlinesim.call(&farm, &number_request(ONLINESIM_KEY)).1);
    bower.event(&farm, Event::MessageReceived(sms("a", &on_bower, "x")));
    onlinesim.event(&farm, Event::MessageReceived(sms("b", &on_onlinesim, "x")));
    let no_op = || response(200, r#"{"status": "NO_OPERATION"}"#);
    assert!(matches!(
        bower.respond(&farm, "push/a", no_op()),
        Verdict::RetryAfterMs(10_000)
    ));
    assert!(matches!(
        onlinesim.respond(&farm, "push/b", no_op()),
        Verdict::GiveUp(_)
    ));
}

/// The plugins as the host runs them: two instances granted the same `inventory` label.
#[test]
fn the_adapters_share_only_the_granted_store() {
    let farm = Rc::new(MemoryStore::default());
    let bower_stores = Stores::memory().with_shared("inventory", farm.clone());
    let onlinesim_stores = Stores::memory().with_shared("inventory", farm.clone());
    let context = |instance: &str, settings: &[(&str, &str)]| {
        let mut ctx = CallContext::for_tests(settings);
        ctx.instance = instance.into();
        ctx
    };
    let bower_ctx = context(
        "smsbower",
        &[
            ("api_key", BOWER_KEY),
            ("base_url", "https://smsbower.online"),
            ("services", "tg"),
        ],
    );
    let onlinesim_ctx = context(
        "onlinesim",
        &[
            ("api_key", ONLINESIM_KEY),
            ("push_url", "https://onlinesim.test/p"),
            ("services", "tg"),
        ],
    );
    // Only SmsBower gets the gateway's events; Onlinesim still sells the farm.
    let status = sim("1.01", "8970001", "+79001000001", "250010000000001");
    SmsBower::on_event(&bower_ctx, &bower_stores, Event::SimStatusChanged(status)).unwrap();
    let request = simrelay_marketplace::testing::request(
        number_request(ONLINESIM_KEY).to_string().as_bytes(),
    );
    let outcome = Onlinesim::on_webhook(&onlinesim_ctx, &onlinesim_stores, request).unwrap();
    let reply: Value = serde_json::from_slice(&outcome.reply.body).unwrap();
    assert_eq!(reply["number"], 79001000001_u64);
    // Activations stay private: SmsBower's own store has none.
    assert!(bower_stores.keys("activation/").unwrap().is_empty());
    assert_eq!(
        onlinesim_stores.keys("activation/").unwrap(),
        ["activation/1"]
    );
}
