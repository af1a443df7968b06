//! Counters and histograms for the Prometheus endpoint, in its text format.
//!
//! Kept by hand rather than with a metrics crate: a few families, each a map from label
//! values to numbers, rendered on demand. Values count from the host's start.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// Upper bounds of latency buckets, in seconds.
const LATENCY_BUCKETS: &[f64] = &[
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025,
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];
/// Upper bounds of commit batch sizes.
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

type Labels = Vec<(&'static str, String)>;

#[derive(Default)]
struct Histogram {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

struct Family {
    help: &'static str,
    kind: Kind,
    counters: BTreeMap<Labels, f64>,
    histograms: BTreeMap<Labels, Histogram>,
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Counter,
    Histogram(&'static [f64]),
}

/// Every metric of the host.
#[derive(Default)]
pub struct Metrics {
    families: Mutex<BTreeMap<&'static str, Family>>,
}

/// The host's metrics.
pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::default)
}

fn labels(pairs: &[(&'static str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| (*k, v.to_string())).collect()
}

impl Metrics {
    fn with<R>(
        &self,
        name: &'static str,
        help: &'static str,
        kind: Kind,
        f: impl FnOnce(&mut Family) -> R,
    ) -> R {
        let mut families = self.families.lock().unwrap_or_else(|p| p.into_inner());
        let family = families.entry(name).or_insert_with(|| Family {
            help,
            kind,
            counters: BTreeMap::new(),
            histograms: BTreeMap::new(),
        });
        f(family)
    }

    pub fn count(&self, name: &'static str, help: &'static str, pairs: &[(&'static str, &str)]) {
        self.add(name, help, pairs, 1.0);
    }

    pub fn add(
        &self,
        name: &'static str,
        help: &'static str,
        pairs: &[(&'static str, &str)],
        value: f64,
    ) {
        self.with(name, help, Kind::Counter, |family| {
            *family.counters.entry(labels(pairs)).or_default() += value;
        });
    }

    fn observe(
        &self,
        name: &'static str,
        help: &'static str,
        buckets: &'static [f64],
        pairs: &[(&'static str, &str)],
        value: f64,
    ) {
        self.with(name, help, Kind::Histogram(buckets), |family| {
            let histogram = family.histograms.entry(labels(pairs)).or_default();
            if histogram.counts.is_empty() {
                histogram.counts = vec![0; buckets.len()];
            }
            for (bound, count) in buckets.iter().zip(histogram.counts.iter_mut()) {
                if value <= *bound {
                    *count += 1;
                }
            }
            histogram.sum += value;
            histogram.count += 1;
        });
    }

    pub fn latency(
        &self,
        name: &'static str,
        help: &'static str,
        pairs: &[(&'static str, &str)],
        elapsed: Duration,
    ) {
        self.observe(name, help, LATENCY_BUCKETS, pairs, elapsed.as_secs_f64());
    }

    pub fn batch(&self, name: &'static str, help: &'static str, size: usize) {
        self.observe(name, help, BATCH_BUCKETS, &[], size as f64);
    }

    /// The current value of a counter, for tests and the status page.
    pub fn value(&self, name: &str, pairs: &[(&'static str, &str)]) -> f64 {
        let families = self.families.lock().unwrap_or_else(|p| p.into_inner());
        families
            .get(name)
            .and_then(|family| family.counters.get(&labels(pairs)).copied())
            .unwrap_or(0.0)
    }

    /// Everything in Prometheus' text format, with `gauges` (name, help, labels, value)
    /// read at this moment appended.
    pub fn render(&self, gauges: &[(&'static str, &'static str, Labels, f64)]) -> String {
        let mut out = String::new();
        let families = self.families.lock().unwrap_or_else(|p| p.into_inner());
        for (name, family) in families.iter() {
            let kind = match family.kind {
                Kind::Counter => "counter",
                Kind::Histogram(_) => "histogram",
            };
            let _ = writeln!(out, "# HELP {name} {}\n# TYPE {name} {kind}", family.help);
            for (labels, value) in &family.counters {
                let _ = writeln!(out, "{name}{} {value}", render_labels(labels, None));
            }
            if let Kind::Histogram(buckets) = family.kind {
                for (labels, histogram) in &family.histograms {
                    for (bound, count) in buckets.iter().zip(&histogram.counts) {
                        let le = format!("{bound}");
                        let _ = writeln!(
                            out,
                            "{name}_bucket{} {count}",
                            render_labels(labels, Some(&le))
                        );
                    }
                    let _ = writeln!(
                        out,
                        "{name}_bucket{} {}",
                        render_labels(labels, Some("+Inf")),
                        histogram.count
                    );
                    let _ = writeln!(
                        out,
                        "{name}_sum{} {}",
                        render_labels(labels, None),
                        histogram.sum
                    );
                    let _ = writeln!(
                        out,
                        "{name}_count{} {}",
                        render_labels(labels, None),
                        histogram.count
                    );
                }
            }
        }
        let mut last = "";
        for (name, help, labels, value) in gauges {
            if *name != last {
                let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
                last = name;
            }
            let _ = writeln!(out, "{name}{} {value}", render_labels(labels, None));
        }
        out
    }
}

fn render_labels(labels: &Labels, le: Option<&str>) -> String {
    let mut parts: Vec<String> = labels
        .iter()
        .map(|(key, value)| format!("{key}=\"{}\"", escape(value)))
        .collect();
    if let Some(le) = le {
        parts.push(format!("le=\"{le}\""));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", parts.join(","))
    }
}

fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_histograms_and_gauges() {
        let metrics = Metrics::default();
        metrics.count(
            "simrelay_webhooks_total",
            "Webhooks.",
            &[("route", "/a\"b"), ("status", "200")],
        );
        metrics.count(
            "simrelay_webhooks_total",
            "Webhooks.",
            &[("route", "/a\"b"), ("status", "200")],
        );
        metrics.latency(
            "simrelay_call_seconds",
            "Calls.",
            &[("kind", "webhook")],
            Duration::from_micros(30),
        );
        let text = metrics.render(&[(
            "simrelay_queue_depth",
            "Depth.",
            vec![("instance", "x".into())],
            3.0,
        )]);
        assert!(
            text.contains("simrelay_webhooks_total{route=\"/a\\\"b\",status=\"200\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("simrelay_call_seconds_bucket{kind=\"webhook\",le=\"0.00005\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("simrelay_call_seconds_bucket{kind=\"webhook\",le=\"0.000025\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("simrelay_call_seconds_count{kind=\"webhook\"} 1"),
            "{text}"
        );
        assert!(
            text.contains(
                "# TYPE simrelay_queue_depth gauge\nsimrelay_queue_depth{instance=\"x\"} 3"
            ),
            "{text}"
        );
        assert_eq!(
            metrics.value(
                "simrelay_webhooks_total",
                &[("route", "/a\"b"), ("status", "200")]
            ),
            2.0
        );
    }
}
