//! One adapter call through the host's wasm runtime against the same adapter logic called
//! natively: the price of the sandbox. Needs the release plugins (`make bench` builds them).
//!
//! Both sides start from empty state on every call, so both take the full path (parse,
//! decode, dedupe check, state writes). The wasm side runs as the host does: an instance
//! serves up to `calls_per_instance` calls (the default), and for comparison with a fresh
//! instance for every call (`calls_per_instance = 1`).

use std::path::Path;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use simrelay::abi::{Input, Output};
use simrelay::config::Limits;
use simrelay::db::Db;
use simrelay::kv::{KvOverlay, StoreState};
use simrelay::model;
use simrelay::runtime::Runtime;
use simrelay_sdk::{Adapter, Stores};

const RECV_SMS: &str = r#"{"type":"recv-sms","sms":[[null,null,"2023-10-27 10:00:00","BankInfo","79001234567","SGVsbG8gV29ybGQ="]]}"#;
const KEY: &str = "bench-key";

// The allocator of the `simrelay` binary, so the host side costs what it costs there.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn ejoin_webhook(c: &mut Criterion) {
    simrelay::allocator::return_freed_memory_at_once();
    let plugin_path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/wasm32-wasip2/release/simrelay_ejoin.wasm");
    let runtime = Runtime::new().unwrap();
    let limits = Limits::default();
    let plugin = runtime
        .load(&plugin_path, &limits)
        .expect("build the plugins first: make plugins");
    let data = tempfile::tempdir().unwrap();
    let db = Arc::new(Db::open(data.path()).unwrap());

    let settings = vec![("api_key".to_string(), KEY.to_string())];
    let params = vec![("key".to_string(), KEY.to_string())];
    let store = StoreState::new("ejoin");
    let host_ctx = model::CallContext {
        instance: "ejoin".into(),
        settings: settings.clone(),
        store: "ejoin".into(),
        shared_stores: Vec::new(),
        message_id: "bench".into(),
        now_ms: 0,
    };
    let host_request = model::HttpRequest {
        method: "POST".into(),
        path: format!("/api/{KEY}/webhook"),
        query: String::new(),
        params: params.clone(),
        headers: vec![("content-type".into(), "application/json".into())],
        body: RECV_SMS.as_bytes().to_vec(),
    };
    let native_ctx = simrelay_sdk::CallContext::for_tests(&[("api_key", KEY)]);
    let native_request = simrelay_sdk::HttpRequest {
        method: "POST".into(),
        path: format!("/api/{KEY}/webhook"),
        query: String::new(),
        params,
        headers: vec![("content-type".into(), "application/json".into())],
        body: RECV_SMS.as_bytes().to_vec(),
    };

    let mut group = c.benchmark_group("ejoin on-webhook, recv-sms sample");
    group.bench_function("native", |b| {
        b.iter(|| {
            let outcome = simrelay_ejoin::Ejoin::on_webhook(
                &native_ctx,
                &Stores::memory(),
                native_request.clone(),
            )
            .unwrap();
            assert_eq!(outcome.effects.events.len(), 1);
        })
    });
    let fresh = Limits {
        calls_per_instance: 1,
        ..Limits::default()
    };
    for (name, limits) in [
        ("wasm, instance reused (the host's default)", &limits),
        ("wasm, fresh instance per call", &fresh),
    ] {
        group.bench_function(name, |b| {
            b.iter(|| {
                let record = runtime.call(
                    &plugin,
                    KvOverlay::new(db.clone(), std::slice::from_ref(&store)),
                    limits,
                    &host_ctx,
                    Input::Webhook(&host_request),
                );
                let Ok(Output::Webhook(outcome)) = record.result else {
                    panic!("the webhook is accepted");
                };
                assert_eq!(outcome.effects.events.len(), 1);
            })
        });
    }
    group.finish();
}

criterion_group!(benches, ejoin_webhook);
criterion_main!(benches);
