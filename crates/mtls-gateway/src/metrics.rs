//! Prometheus metrics, rendered by hand in the text exposition format.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// A labelled gauge family: (name, [(labels, value)]).
pub type Gauge<'a> = (String, Vec<(Vec<(&'a str, String)>, f64)>);

const BUCKETS: [f64; 10] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 2.5,
];

/// Counters and gauges of the gateway. Labelled counters use a small mutex-protected map: they
/// are touched once per handshake, never per byte.
#[derive(Default)]
pub struct Metrics {
    handshakes: Mutex<BTreeMap<(String, String), u64>>,
    requests: Mutex<BTreeMap<(std::sync::Arc<str>, u16), u64>>,
    pub active_connections: AtomicI64,
    pub upstream_errors: AtomicU64,
    pub reloads_ok: AtomicU64,
    pub reloads_failed: AtomicU64,
    pub crl_fetches_ok: AtomicU64,
    pub crl_fetches_failed: AtomicU64,
    pub connections_refused: AtomicU64,
    latency_buckets: [AtomicU64; BUCKETS.len()],
    latency_count: AtomicU64,
    latency_sum_micros: AtomicU64,
}

fn bump<K: Ord>(m: &Mutex<BTreeMap<K, u64>>, k: K) {
    if let Ok(mut g) = m.lock() {
        *g.entry(k).or_insert(0) += 1;
    }
}

fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Metrics {
    /// A handshake ended with `result` (`ok`, `failed`, `timeout`, `rejected`) and `reason`.
    pub fn handshake(&self, listener: &str, result: &str, reason: &str) {
        bump(
            &self.handshakes,
            (listener.to_string(), format!("{result}\u{0}{reason}")),
        );
    }

    /// A request finished with `status` after `elapsed`.
    pub fn request(&self, listener: &std::sync::Arc<str>, status: u16, elapsed: Duration) {
        bump(&self.requests, (listener.clone(), status));
        let secs = elapsed.as_secs_f64();
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                self.latency_buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.latency_count.fetch_add(1, Ordering::Relaxed);
        self.latency_sum_micros.fetch_add(
            u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    /// Renders everything, plus the gauges `extra` supplies (expiry timestamps).
    pub fn render(&self, extra: &[Gauge<'_>]) -> String {
        let mut s = String::new();
        s.push_str("# HELP mtls_handshakes_total TLS handshakes by result and rejection reason.\n# TYPE mtls_handshakes_total counter\n");
        if let Ok(g) = self.handshakes.lock() {
            for ((l, rr), n) in g.iter() {
                let (result, reason) = rr.split_once('\u{0}').unwrap_or((rr, ""));
                let _ = writeln!(
                    s,
                    "mtls_handshakes_total{{listener=\"{}\",result=\"{}\",reason=\"{}\"}} {n}",
                    label(l),
                    label(result),
                    label(reason)
                );
            }
        }
        s.push_str("# HELP mtls_requests_total HTTP requests by status.\n# TYPE mtls_requests_total counter\n");
        if let Ok(g) = self.requests.lock() {
            for ((l, status), n) in g.iter() {
                let _ = writeln!(
                    s,
                    "mtls_requests_total{{listener=\"{}\",status=\"{status}\"}} {n}",
                    label(l)
                );
            }
        }
        s.push_str("# HELP mtls_request_duration_seconds Request latency through the gateway.\n# TYPE mtls_request_duration_seconds histogram\n");
        for (i, b) in BUCKETS.iter().enumerate() {
            let _ = writeln!(
                s,
                "mtls_request_duration_seconds_bucket{{le=\"{b}\"}} {}",
                self.latency_buckets[i].load(Ordering::Relaxed)
            );
        }
        let count = self.latency_count.load(Ordering::Relaxed);
        let _ = writeln!(
            s,
            "mtls_request_duration_seconds_bucket{{le=\"+Inf\"}} {count}"
        );
        let _ = writeln!(
            s,
            "mtls_request_duration_seconds_sum {}",
            self.latency_sum_micros.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(s, "mtls_request_duration_seconds_count {count}");
        let simple = [
            (
                "mtls_active_connections",
                "gauge",
                "Open client connections.",
                self.active_connections.load(Ordering::Relaxed) as f64,
            ),
            (
                "mtls_upstream_errors_total",
                "counter",
                "Upstream connect/response failures.",
                self.upstream_errors.load(Ordering::Relaxed) as f64,
            ),
            (
                "mtls_reloads_total{result=\"ok\"}",
                "",
                "",
                self.reloads_ok.load(Ordering::Relaxed) as f64,
            ),
            (
                "mtls_reloads_total{result=\"failed\"}",
                "",
                "",
                self.reloads_failed.load(Ordering::Relaxed) as f64,
            ),
            (
                "mtls_crl_fetches_total{result=\"ok\"}",
                "counter",
                "CRL downloads from distribution points.",
                self.crl_fetches_ok.load(Ordering::Relaxed) as f64,
            ),
            (
                "mtls_crl_fetches_total{result=\"failed\"}",
                "",
                "",
                self.crl_fetches_failed.load(Ordering::Relaxed) as f64,
            ),
            (
                "mtls_connections_refused_total",
                "counter",
                "Connections refused at the connection limit.",
                self.connections_refused.load(Ordering::Relaxed) as f64,
            ),
        ];
        for (name, kind, help, v) in simple {
            if !kind.is_empty() {
                let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} {kind}");
            } else if name.ends_with("{result=\"ok\"}") {
                s.push_str("# HELP mtls_reloads_total Configuration reloads by result.\n# TYPE mtls_reloads_total counter\n");
            }
            let _ = writeln!(s, "{name} {v}");
        }
        for (name, series) in extra {
            let _ = writeln!(s, "# TYPE {name} gauge");
            for (labels, v) in series {
                let l: Vec<String> = labels
                    .iter()
                    .map(|(k, val)| format!("{k}=\"{}\"", label(val)))
                    .collect();
                let _ = writeln!(s, "{name}{{{}}} {v}", l.join(","));
            }
        }
        s
    }
}
