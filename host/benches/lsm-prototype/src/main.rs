//! What an SMS's webhook and event commits cost on fjall, an LSM store, against redb behind
//! our write-ahead log (`host/benches/commit_batch.rs`): the same writes per SMS (Ejoin's
//! mark and expiry entry, the queued event in and out, the observed message, SmsBower's push
//! record, expiry entry and counter, the delivery's record, pending entry and key, looked up
//! first, and the id counter), batched, one `fdatasync` of fjall's journal per batch, on a
//! store already holding 50,000 SMS.
//!
//! `cargo run --release --manifest-path host/benches/lsm-prototype/Cargo.toml --target-dir target/bench-lsm`

use std::time::Instant;

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};

const PREFILL: u64 = 50_000;
const MEASURED: u64 = 16_000;

/// A content hash as the adapters key their records by: random over the key space.
fn hash(n: u64) -> String {
    format!("{:016x}", n.wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

struct Store {
    db: Database,
    kv: Keyspace,
    deliveries: Keyspace,
    pending: Keyspace,
    delivery_keys: Keyspace,
    events: Keyspace,
    messages: Keyspace,
    counters: Keyspace,
}

impl Store {
    fn open(path: &std::path::Path) -> Store {
        let db = Database::builder(path).open().unwrap();
        let keyspace = |name: &str| db.keyspace(name, KeyspaceCreateOptions::default).unwrap();
        Store {
            kv: keyspace("kv"),
            deliveries: keyspace("deliveries"),
            pending: keyspace("pending"),
            delivery_keys: keyspace("delivery_keys"),
            events: keyspace("events"),
            messages: keyspace("messages"),
            counters: keyspace("counters"),
            db,
        }
    }

    /// Writes SMS `first..first + count` in one durable batch.
    fn commit_together(&self, first: u64, count: u64) {
        let mut batch = self.db.batch().durability(Some(PersistMode::SyncData));
        for n in first..first + count {
            let (id, now_ms, seq) = (hash(n), 1_800_000_000_000 + n, n.to_be_bytes());
            batch.insert(
                &self.kv,
                format!("ejoin\0seen/ejoin-{id}"),
                format!("{{\"at_ms\":{now_ms}}}"),
            );
            batch.insert(&self.kv, format!("ejoin\0seen@/{now_ms:016}/{id}"), b"");
            batch.insert(&self.events, seq, [b'e'; 411]);
            batch.insert(&self.messages, seq, [b'm'; 285]);
            batch.insert(
                &self.kv,
                format!("farm\0sms/ejoin-{id}"),
                format!("{{\"sms_id\":{n},\"activation\":1,\"state\":\"pending\"}}"),
            );
            batch.insert(&self.kv, format!("farm\0pushed@/{now_ms:016}/{id}"), b"");
            batch.insert(&self.kv, "farm\0counter/sms", n.to_string());
            let key = format!("smsbower\0push/ejoin-{id}");
            assert!(
                self.delivery_keys.get(&key).unwrap().is_none(),
                "a new delivery"
            );
            batch.insert(&self.delivery_keys, key, seq);
            batch.insert(&self.deliveries, seq, [b'd'; 620]);
            batch.insert(&self.pending, seq, now_ms.to_be_bytes());
            batch.remove(&self.events, seq);
            batch.insert(&self.counters, "next_id", seq);
        }
        batch.commit().unwrap();
    }
}

/// User plus system CPU seconds of this process so far.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    // utime and stime, fields 14 and 15 of proc(5), in clock ticks of 100 Hz.
    (fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap()) / 100.0
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path());
    let mut next = 1;
    while next <= PREFILL {
        store.commit_together(next, 256);
        next += 256;
    }
    println!("| SMS per batch | time until durable, per SMS | CPU of the whole process, per SMS |");
    println!("|---|---|---|");
    for batch in [1, 16, 64, 256] {
        let (started, cpu) = (Instant::now(), cpu_seconds());
        let count = if batch == 1 { MEASURED / 8 } else { MEASURED };
        for _ in 0..count / batch {
            store.commit_together(next, batch);
            next += batch;
        }
        let per_sms_us = |seconds: f64| seconds * 1e6 / count as f64;
        println!(
            "| {batch} | {:.0} µs | {:.0} µs |",
            per_sms_us(started.elapsed().as_secs_f64()),
            per_sms_us(cpu_seconds() - cpu)
        );
    }
    let peak = std::fs::read_to_string("/proc/self/status").unwrap();
    let peak = peak
        .lines()
        .find(|line| line.starts_with("VmHWM"))
        .unwrap_or("VmHWM: ?");
    println!("\npeak RSS ({peak})");
}
