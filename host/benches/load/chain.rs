//! Tools for the end-to-end load test (`host/benches/bench.sh`), not a criterion bench:
//!
//! - `chain mock ADDR`: a marketplace that accepts every `PUSH_SMS` with SUCCESS. It counts
//!   the pushes, and when an SMS text reads `t=<unix µs>` (as the driver sends them), the
//!   time from that instant to the push. `GET /stats` answers the count and latencies so
//!   far as JSON, with each push over the 5 ms target as `[ms since the first push, µs]`,
//!   to see whether slow pushes come in bursts; `POST /reset` starts again.
//! - `chain drive URL RATE SECONDS`: posts Ejoin `recv-sms` webhooks to URL at a steady
//!   RATE per second (open loop: a slow answer does not slow the sender), each a new SMS
//!   whose text is its send time, and prints how many were acknowledged and how fast.
//!
//! Run through cargo: `cargo bench -p simrelay --bench chain -- mock 127.0.0.1:9000`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_micros() as u64)
}

/// The value at quantile `q` of sorted `values`.
fn quantile(values: &[u64], q: f64) -> u64 {
    if values.is_empty() {
        return 0;
    }
    values[((values.len() - 1) as f64 * q).round() as usize]
}

#[derive(Default)]
struct Pushes {
    count: u64,
    first_us: u64,
    last_us: u64,
    latencies_us: Vec<u64>,
    /// (arrival, latency) of each push slower than [`SLOW_US`], in µs.
    slow: Vec<(u64, u64)>,
}

/// Webhook to push, the half-load p99 target.
const SLOW_US: u64 = 5_000;

impl Pushes {
    fn stats(&mut self) -> Value {
        self.latencies_us.sort_unstable();
        json!({
            "pushes": self.count,
            "first_us": self.first_us,
            "last_us": self.last_us,
            "timed": self.latencies_us.len(),
            "p50_us": quantile(&self.latencies_us, 0.50),
            "p99_us": quantile(&self.latencies_us, 0.99),
            "max_us": self.latencies_us.last().copied().unwrap_or(0),
            "slow": self
                .slow
                .iter()
                .map(|(at, latency)| json!([(at - self.first_us) / 1000, latency]))
                .collect::<Vec<_>>(),
        })
    }
}

async fn answer(
    pushes: Arc<Mutex<Pushes>>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = request.uri().path().to_string();
    let body = request
        .into_body()
        .collect()
        .await
        .map(|body| body.to_bytes())
        .unwrap_or_default();
    let reply = match path.as_str() {
        "/stats" => pushes.lock().unwrap().stats(),
        "/reset" => {
            *pushes.lock().unwrap() = Pushes::default();
            json!({ "status": "SUCCESS" })
        }
        path if path.ends_with("/agent/api/sms") => {
            let now = now_us();
            // SmsBower takes PUSH_SMS as a form; JSON is accepted too.
            let text = serde_json::from_slice::<Value>(&body)
                .ok()
                .and_then(|push| push["text"].as_str().map(str::to_string))
                .or_else(|| {
                    form_urlencoded::parse(&body)
                        .find(|(name, _)| name == "text")
                        .map(|(_, text)| text.into_owned())
                });
            let sent = text.and_then(|text| text.strip_prefix("t=")?.parse::<u64>().ok());
            let mut pushes = pushes.lock().unwrap();
            pushes.count += 1;
            if pushes.first_us == 0 {
                pushes.first_us = now;
            }
            pushes.last_us = now;
            if let Some(sent) = sent {
                let latency = now.saturating_sub(sent);
                pushes.latencies_us.push(latency);
                if latency > SLOW_US {
                    pushes.slow.push((now, latency));
                }
            }
            json!({ "status": "SUCCESS" })
        }
        path if path.ends_with("getStatus") => json!({ "status": 0 }),
        _ => json!({ "status": "SUCCESS", "data": [] }),
    };
    let mut response = Response::new(Full::new(Bytes::from(reply.to_string())));
    response
        .headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    Ok(response)
}

async fn mock(addr: SocketAddr) {
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let pushes = Arc::new(Mutex::new(Pushes::default()));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let pushes = pushes.clone();
        tokio::spawn(async move {
            let service =
                hyper::service::service_fn(move |request| answer(pushes.clone(), request));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// A keep-alive HTTP/1.1 connection of the driver, one exchange at a time. Requests are
/// written and answers read by hand, as `wrk` does: an HTTP client library cost the driver
/// about 70 µs of CPU per request, taken from the two cores the host is measured on.
struct Connection {
    stream: TcpStream,
    received: Vec<u8>,
}

impl Connection {
    async fn open(address: &str) -> std::io::Result<Self> {
        let stream = TcpStream::connect(address).await?;
        stream.set_nodelay(true)?;
        Ok(Connection {
            stream,
            received: Vec::with_capacity(1024),
        })
    }

    /// Sends `request` and reads the answer, whose body must come with a `content-length`;
    /// gives its status.
    async fn exchange(&mut self, request: &[u8]) -> std::io::Result<u16> {
        let malformed = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what);
        self.stream.write_all(request).await?;
        self.received.clear();
        let mut needed = None;
        loop {
            if self.received.len() >= needed.unwrap_or(usize::MAX) {
                break;
            }
            let mut chunk = [0u8; 2048];
            let read = self.stream.read(&mut chunk).await?;
            if read == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            self.received.extend_from_slice(&chunk[..read]);
            if needed.is_none()
                && let Some(end) = self.received.windows(4).position(|w| w == b"\r\n\r\n")
            {
                let head = std::str::from_utf8(&self.received[..end])
                    .map_err(|_| malformed("answer head not UTF-8"))?;
                let length = head
                    .lines()
                    .filter_map(|line| line.split_once(':'))
                    .find(|(name, _)| name.eq_ignore_ascii_case("content-length"))
                    .and_then(|(_, value)| value.trim().parse::<usize>().ok())
                    .ok_or_else(|| malformed("answer without content-length"))?;
                needed = Some(end + 4 + length);
            }
        }
        std::str::from_utf8(self.received.get(9..12).unwrap_or_default())
            .ok()
            .and_then(|status| status.parse().ok())
            .ok_or_else(|| malformed("no status line"))
    }
}

async fn drive(url: String, rate: u64, seconds: u64) {
    let url = url::Url::parse(&url).expect("URL");
    let address = format!(
        "{}:{}",
        url.host_str().expect("URL host"),
        url.port_or_known_default().expect("URL port")
    );
    let idle: Arc<Mutex<Vec<Connection>>> = Arc::default();
    let interval = Duration::from_secs_f64(1.0 / rate.max(1) as f64);
    let total = rate * seconds;
    let acks = Arc::new(Mutex::new(Vec::with_capacity(total as usize)));
    let failed = Arc::new(Mutex::new(0u64));
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(total as usize);
    for n in 0..total {
        // Sleep until this request's slot; never send in bursts to catch up more than that.
        let due = start + interval.mul_f64(n as f64);
        tokio::time::sleep_until(due.into()).await;
        let sent = now_us();
        let text = base64::engine::general_purpose::STANDARD.encode(format!("t={sent}"));
        let body = format!(
            r#"{{"type":"recv-sms","sms":[[0,"1.01",{},"BankInfo","79001234567","{text}"]]}}"#,
            1_800_000_000 + n
        );
        let request = format!(
            "POST {} HTTP/1.1\r\nhost: {address}\r\ncontent-type: application/json\r\n\
             content-length: {}\r\n\r\n{body}",
            url.path(),
            body.len()
        );
        let reused = idle.lock().unwrap().pop();
        let (address, idle, acks, failed) =
            (address.clone(), idle.clone(), acks.clone(), failed.clone());
        tasks.push(tokio::spawn(async move {
            let begun = Instant::now();
            let mut connection = match reused {
                Some(connection) => connection,
                None => match Connection::open(&address).await {
                    Ok(connection) => connection,
                    Err(_) => {
                        *failed.lock().unwrap() += 1;
                        return;
                    }
                },
            };
            match connection.exchange(request.as_bytes()).await {
                Ok(status) if (200..300).contains(&status) => {
                    acks.lock()
                        .unwrap()
                        .push(begun.elapsed().as_micros() as u64);
                    idle.lock().unwrap().push(connection);
                }
                Ok(_) => {
                    *failed.lock().unwrap() += 1;
                    idle.lock().unwrap().push(connection);
                }
                Err(_) => *failed.lock().unwrap() += 1,
            }
        }));
    }
    let sending = start.elapsed();
    for task in tasks {
        let _ = task.await;
    }
    let mut acks = acks.lock().unwrap();
    acks.sort_unstable();
    let report = json!({
        "sent": total,
        "acknowledged": acks.len(),
        "failed": *failed.lock().unwrap(),
        "send_seconds": sending.as_secs_f64(),
        "ack_p50_us": quantile(&acks, 0.50),
        "ack_p99_us": quantile(&acks, 0.99),
    });
    println!("{report}");
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|arg| arg != "--bench")
        .collect();
    // One thread for everything: a second would wake the first for every request, and the
    // driver and the mock share the two cores with the host they measure.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["mock", addr] => runtime.block_on(mock(addr.parse().expect("mock ADDR"))),
        ["drive", url, rate, seconds] => runtime.block_on(drive(
            url.to_string(),
            rate.parse().expect("RATE"),
            seconds.parse().expect("SECONDS"),
        )),
        _ => {
            eprintln!("usage: chain mock ADDR | chain drive URL RATE SECONDS");
            std::process::exit(2);
        }
    }
}
