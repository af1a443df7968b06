//! GET_NUMBER latency through the running release host, as the marketplaces see it: the
//! configuration of `examples/simrelay.toml` (ejoin feeding SmsBower and Onlinesim, one shared
//! farm), a 500-SIM inventory, 16 callers at once, half on each marketplace, each on its own
//! keep-alive connection. Every number taken is handed back at once with FINISH_ACTIVATION 4
//! (cancelled) so the farm never runs dry; the offer cap is raised for the same reason.
//!
//! Baselines from the same run and host, at the same concurrency: the unknown route (404, no
//! plugin) and GET_SERVICES (the same inventory read, no lease, nothing written).
//!
//! `make bench-get-number`, or `cargo bench -p simrelay-e2e --bench get_number` after
//! `make build`. `GET_NUMBER_ROUNDS` sets the requests per caller (default 250).

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use simrelay_e2e::*;

const SIMS: usize = 500;
const CALLERS: usize = 16;
const WARM_UP_ROUNDS: usize = 20;
const MAC: &str = "00:1A:2B:3C:4D:5E";

fn routes(caller: usize) -> (&'static str, &'static str) {
    if caller.is_multiple_of(2) {
        ("/smsbower", SMSBOWER_KEY)
    } else {
        ("/onlinesim", ONLINESIM_KEY)
    }
}

/// What one scenario's callers measured.
#[derive(Default)]
struct Samples {
    latencies: Vec<Duration>,
    no_numbers: usize,
}

struct Scenario {
    name: &'static str,
    callers: usize,
    samples: Samples,
    wall: Duration,
}

async fn post(client: &reqwest::Client, url: &str, body: &Value) -> (u16, Value, Duration) {
    let started = Instant::now();
    let response = client
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .expect("the host answers");
    let status = response.status().as_u16();
    let bytes = response.bytes().await.expect("a whole answer");
    let elapsed = started.elapsed();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        elapsed,
    )
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    UnknownRoute,
    GetServices,
    GetNumber,
}

/// One caller's loop. For GET_NUMBER only the GET_NUMBER is timed; the FINISH_ACTIVATION
/// that returns the number is not.
async fn caller(host_url: String, caller: usize, kind: Kind, rounds: usize) -> Samples {
    let client = reqwest::Client::new();
    let (route, key) = routes(caller);
    let mut samples = Samples::default();
    for _ in 0..rounds {
        match kind {
            Kind::UnknownRoute => {
                let (status, _, elapsed) =
                    post(&client, &format!("{host_url}/nowhere"), &json!({})).await;
                assert_eq!(status, 404);
                samples.latencies.push(elapsed);
            }
            Kind::GetServices => {
                let request = json!({ "action": "GET_SERVICES", "key": key });
                let (status, answer, elapsed) =
                    post(&client, &format!("{host_url}{route}"), &request).await;
                assert_eq!((status, &answer["status"]), (200, &json!("SUCCESS")));
                samples.latencies.push(elapsed);
            }
            Kind::GetNumber => {
                let url = format!("{host_url}{route}");
                let request = json!({
                    "action": "GET_NUMBER", "key": key, "country": "russia", "operator": "any",
                    "service": "tg", "sum": "20.00", "exceptionPhoneSet": ["44742", "44740"],
                });
                let (status, answer, elapsed) = post(&client, &url, &request).await;
                assert_eq!(status, 200, "{answer}");
                samples.latencies.push(elapsed);
                if answer["status"] == "NO_NUMBERS" {
                    samples.no_numbers += 1;
                    continue;
                }
                assert_eq!(answer["status"], "SUCCESS", "{answer}");
                let finish = json!({
                    "action": "FINISH_ACTIVATION", "key": key,
                    "activationId": answer["activationId"], "status": 4,
                });
                let (status, answer, _) = post(&client, &url, &finish).await;
                assert_eq!((status, &answer["status"]), (200, &json!("SUCCESS")));
            }
        }
    }
    samples
}

async fn run(host: &Host, kind: Kind, callers: usize, rounds: usize) -> (Samples, Duration) {
    let started = Instant::now();
    let callers: Vec<_> = (0..callers)
        .map(|n| tokio::spawn(caller(host.url(""), n, kind, rounds)))
        .collect();
    let mut all = Samples::default();
    for handle in callers {
        let samples = handle.await.expect("a caller panicked");
        all.latencies.extend(samples.latencies);
        all.no_numbers += samples.no_numbers;
    }
    (all, started.elapsed())
}

/// The nearest-rank percentile.
fn percentile(sorted: &[Duration], percent: usize) -> Duration {
    let rank = (sorted.len() * percent).div_ceil(100).max(1);
    sorted[rank - 1]
}

fn millis(duration: Duration) -> String {
    format!("{:.2} ms", duration.as_secs_f64() * 1000.0)
}

async fn registered_on_both(host: &Host) -> bool {
    for caller in 0..2 {
        let (route, key) = routes(caller);
        let (_, answer) = post_json(
            host,
            route,
            &json!({ "action": "GET_SERVICES", "key": key }).to_string(),
        )
        .await;
        let tg: u64 = answer["countryList"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|country| country["operatorMap"].as_object().cloned())
            .flatten()
            .filter(|(operator, _)| operator != "any")
            .filter_map(|(_, services)| services["tg"].as_u64())
            .sum();
        if tg < SIMS as u64 {
            return false;
        }
    }
    true
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let rounds: usize = std::env::var("GET_NUMBER_ROUNDS")
        .ok()
        .and_then(|rounds| rounds.parse().ok())
        .unwrap_or(250);
    let dir = tempfile::tempdir().unwrap();
    let smsbower = MockProvider::accepting().await;
    let onlinesim = MockProvider::accepting().await;
    let config = ejoin_to_both_marketplaces_config(
        &smsbower.base_url,
        &onlinesim.base_url,
        10,
        r#"offer_cap = "1000000""#,
    );
    let host = Host::start(dir.path(), &config).await;

    let farm = farm(SIMS, 2);
    let (status, reply) = post_ejoin(&host, EJOIN_KEY, &farm_dev_status(MAC, &farm)).await;
    assert_eq!(status, 200, "{reply}");
    let deadline = Instant::now() + Duration::from_secs(300);
    while !registered_on_both(&host).await {
        assert!(
            Instant::now() < deadline,
            "the 500 SIMs never all reached the inventory"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    run(&host, Kind::GetNumber, CALLERS, WARM_UP_ROUNDS).await;
    let mut scenarios = Vec::new();
    // One caller alone shows what a call costs; at 16 the difference is waiting, since an
    // instance handles one call at a time.
    for (name, kind, callers) in [
        ("unknown route, 404 (baseline)", Kind::UnknownRoute, CALLERS),
        ("GET_SERVICES (baseline)", Kind::GetServices, CALLERS),
        ("GET_NUMBER", Kind::GetNumber, CALLERS),
        ("GET_SERVICES, one caller", Kind::GetServices, 1),
        ("GET_NUMBER, one caller", Kind::GetNumber, 1),
    ] {
        let (samples, wall) = run(&host, kind, callers, rounds).await;
        scenarios.push(Scenario {
            name,
            callers,
            samples,
            wall,
        });
    }

    println!(
        "{SIMS} SIMs, {rounds} requests per caller (callers alternate SmsBower and Onlinesim)\n"
    );
    println!("| scenario | callers | requests | p50 | p99 | max | requests/s |");
    println!("|---|---|---|---|---|---|---|");
    for scenario in &mut scenarios {
        let latencies = &mut scenario.samples.latencies;
        latencies.sort_unstable();
        println!(
            "| {} | {} | {} | {} | {} | {} | {:.0} |",
            scenario.name,
            scenario.callers,
            latencies.len(),
            millis(percentile(latencies, 50)),
            millis(percentile(latencies, 99)),
            millis(*latencies.last().unwrap()),
            latencies.len() as f64 / scenario.wall.as_secs_f64(),
        );
    }
    let no_numbers: usize = scenarios.iter().map(|s| s.samples.no_numbers).sum();
    println!("\nGET_NUMBER answered NO_NUMBERS {no_numbers} times");
    let logs = host.kill();
    let failures = logs
        .lines()
        .filter(|line| line.contains("ERROR") || line.contains("crashed"))
        .count();
    println!("host log lines with ERROR or crashed: {failures}");
}
