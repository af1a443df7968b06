//! What the database costs an SMS, by how many SMS share a transaction: the committer
//! pays a fixed price per transaction (the journal's sync) and a price per write (into the
//! transaction, then the store's memory and journal), and which one dominates says whether
//! bigger batches or cheaper writes would raise the host's throughput.
//!
//! Each SMS is the two commits the chain makes for it: Ejoin's webhook (its de-duplication
//! mark and expiry entry, the queued event, the observed message) and SmsBower's handling
//! of the event (its push record, expiry entry and counter, the push delivery, the event
//! leaving the queue), as `simrelay serve` writes them, on a database already holding
//! [`PREFILL`] SMS.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use simrelay::db::{Commit, Consumed, Db, NewDelivery};
use simrelay::kv::KvWrites;
use simrelay::model::{Event, MessageKind, OutgoingRequest, ReceivedMessage};
use simrelay_core::relay::QueuedEvent;

const PREFILL: u64 = 50_000;
/// SMS per transaction: one alone, about what `wrk -c16` leaves waiting, and more.
const BATCHES: [u64; 4] = [1, 16, 64, 256];

// The allocator of the `simrelay` binary, so the host side costs what it costs there.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A content hash as the adapters key their records by: random over the key space.
fn hash(n: u64) -> String {
    format!("{:016x}", n.wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

/// A commit's writes to the store labelled `label`.
fn store_writes(
    label: &str,
    entries: impl IntoIterator<Item = (String, Vec<u8>)>,
) -> Vec<(String, Arc<KvWrites>)> {
    let writes = entries
        .into_iter()
        .map(|(key, value)| (key, Some(value)))
        .collect();
    vec![(label.into(), Arc::new(writes))]
}

/// Ejoin's webhook and SmsBower's handling of its event, for the `n`th SMS.
fn sms_commits(db: &Db, n: u64) -> [Commit; 2] {
    let (id, now_ms) = (hash(n), 1_800_000_000_000 + n);
    let message = Event::MessageReceived(ReceivedMessage {
        id: format!("ejoin-{id}"),
        sender: "BankInfo".into(),
        recipient: "79001234567".into(),
        text: format!("t={now_ms}"),
        kind: MessageKind::Sms,
        received_at_ms: Some(now_ms),
        device: None,
        port: Some("1.01".into()),
        iccid: None,
        imsi: None,
        code: None,
    });
    let message_id = format!("{n:014x}");
    let event = QueuedEvent::new(
        db.allocate_id(),
        "ejoin",
        "smsbower".into(),
        &message_id,
        message.clone(),
        now_ms,
    );
    let event_id = event.id;
    let webhook = Commit {
        instance: "ejoin".into(),
        message_id: message_id.clone(),
        now_ms,
        kv: store_writes(
            "ejoin",
            [
                (
                    format!("seen/ejoin-{id}"),
                    format!("{{\"at_ms\":{now_ms}}}").into(),
                ),
                (format!("seen@/{now_ms:016}/{id}"), Vec::new()),
            ],
        ),
        events: vec![event],
        observed: vec![message],
        ..Default::default()
    };
    let body = format!(
        "key=load&action=PUSH_SMS&smsId={n}&phone=79001234567&phoneFrom=BankInfo&text=t%3D{now_ms}&call=0&voice=0"
    );
    let handled = Commit {
        instance: "smsbower".into(),
        message_id,
        now_ms,
        kv: store_writes(
            "farm",
            [
                (
                    format!("sms/ejoin-{id}"),
                    format!("{{\"sms_id\":{n},\"activation\":1,\"state\":\"pending\"}}").into(),
                ),
                (format!("pushed@/{now_ms:016}/{id}"), Vec::new()),
                ("counter/sms".into(), n.to_string().into()),
            ],
        ),
        deliveries: vec![NewDelivery {
            idempotency_key: format!("push/ejoin-{id}"),
            request: OutgoingRequest {
                method: "POST".into(),
                url: "http://127.0.0.1:9/agent/api/sms".into(),
                headers: vec![(
                    "content-type".into(),
                    "application/x-www-form-urlencoded".into(),
                )],
                body: body.into_bytes(),
                ..Default::default()
            },
        }],
        consumed: Consumed::EventHandled(event_id),
        ..Default::default()
    };
    [webhook, handled]
}

/// Queues `count` SMS at once and waits until all are durable.
fn commit_together(db: &Db, next: &mut u64, count: u64) {
    let pending: Vec<_> = (0..count)
        .flat_map(|_| {
            *next += 1;
            sms_commits(db, *next)
        })
        .map(|commit| db.submit(commit))
        .collect();
    for commit in pending {
        commit.wait().expect("the commit is durable");
    }
}

fn commit_batches(c: &mut Criterion) {
    simrelay::allocator::return_freed_memory_at_once();
    let data = tempfile::tempdir().unwrap();
    let db = Db::open(data.path()).unwrap();
    let mut next = 0;
    while next < PREFILL {
        commit_together(&db, &mut next, 256);
    }
    let mut group = c.benchmark_group("sms_per_transaction");
    for batch in BATCHES {
        group.throughput(Throughput::Elements(batch));
        group.bench_function(BenchmarkId::from_parameter(batch), |b| {
            b.iter_custom(|iterations| {
                let mut spent = Duration::ZERO;
                for _ in 0..iterations {
                    let started = Instant::now();
                    commit_together(&db, &mut next, batch);
                    spent += started.elapsed();
                }
                spent
            })
        });
    }
    group.finish();
}

criterion_group!(benches, commit_batches);
criterion_main!(benches);
