//! The gateway's Prometheus metrics (through `mtls_serve::metrics`, i.e. `prometheus-client`).
//! Counters are touched once per handshake or request; expiry timestamps are read from the
//! listener states at scrape time.

use std::sync::Arc;
use std::time::Duration;

use mtls_serve::metrics::{
    Counter, CounterFamily, Family, Gauge, Histogram, Labels, Registry, ReloadCounters, Unit,
};

const BUCKETS: [f64; 10] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 2.5,
];

/// Counters and gauges of the gateway, registered in one registry.
pub struct Metrics {
    handshakes: CounterFamily,
    requests: CounterFamily,
    /// The request counter of each (listener, status), so the request path finds its counter
    /// without building a label set (allocations) per request.
    request_counters: CounterCache<(Arc<str>, u16)>,
    /// The same for handshakes, by (listener, result, reason).
    handshake_counters: CounterCache<(Arc<str>, &'static str, &'static str)>,
    latency: Histogram,
    pub active_connections: Gauge,
    pub upstream_errors: Counter,
    pub reloads: ReloadCounters,
    crl_fetches: CounterFamily,
    pub connections_refused: Counter,
}

impl Metrics {
    /// Creates the gateway's metrics in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Metrics {
            handshakes: Family::default(),
            requests: Family::default(),
            request_counters: Default::default(),
            handshake_counters: Default::default(),
            latency: Histogram::new(BUCKETS),
            active_connections: Gauge::default(),
            upstream_errors: Counter::default(),
            reloads: ReloadCounters::register(registry),
            crl_fetches: Family::default(),
            connections_refused: Counter::default(),
        };
        registry.register(
            "mtls_handshakes",
            "TLS handshakes by result and rejection reason",
            m.handshakes.clone(),
        );
        registry.register(
            "mtls_requests",
            "HTTP requests by status",
            m.requests.clone(),
        );
        registry.register_with_unit(
            "mtls_request_duration",
            "Request latency through the gateway",
            Unit::Seconds,
            m.latency.clone(),
        );
        registry.register(
            "mtls_active_connections",
            "Open client connections",
            m.active_connections.clone(),
        );
        registry.register(
            "mtls_upstream_errors",
            "Upstream connect/response failures",
            m.upstream_errors.clone(),
        );
        registry.register(
            "mtls_crl_fetches",
            "CRL downloads from distribution points, by result",
            m.crl_fetches.clone(),
        );
        for result in ["ok", "failed"] {
            m.crl_fetches
                .get_or_create(&vec![("result", result.to_string())])
                .inc_by(0);
        }
        registry.register(
            "mtls_connections_refused",
            "Connections refused at the connection limit",
            m.connections_refused.clone(),
        );
        m
    }

    /// A handshake failed in TLS (`failed` or `timeout`) for `reason`.
    pub fn handshake_failed(&self, listener: &str, result: &str, reason: &str) {
        let labels: Labels = vec![
            ("listener", listener.to_string()),
            ("result", result.to_string()),
            ("reason", reason.to_string()),
        ];
        self.handshakes.get_or_create(&labels).inc();
    }

    /// A handshake completed with `result` (`ok`, `rejected`, `denied`) and `reason`.
    pub fn handshake(&self, listener: &Arc<str>, result: &'static str, reason: &'static str) {
        self.handshake_counters
            .get(&self.handshakes, (listener.clone(), result, reason), || {
                vec![
                    ("listener", listener.to_string()),
                    ("result", result.to_string()),
                    ("reason", reason.to_string()),
                ]
            })
            .inc();
    }

    /// A request finished with `status` after `elapsed`.
    pub fn request(&self, listener: &Arc<str>, status: u16, elapsed: Duration) {
        self.request_counters
            .get(&self.requests, (listener.clone(), status), || {
                vec![
                    ("listener", listener.to_string()),
                    ("status", status.to_string()),
                ]
            })
            .inc();
        self.latency.observe(elapsed.as_secs_f64());
    }

    /// A CRL download ended (`ok` or `failed`).
    pub fn crl_fetch(&self, ok: bool) {
        let result = if ok { "ok" } else { "failed" };
        self.crl_fetches
            .get_or_create(&vec![("result", result.to_string())])
            .inc();
    }
}

/// The counter of each label set of a family, found by a cheap key on the hot path (no label
/// set built, no allocation) once the label set has been seen.
struct CounterCache<K>(std::sync::RwLock<std::collections::HashMap<K, Counter>>);

impl<K> Default for CounterCache<K> {
    fn default() -> Self {
        CounterCache(Default::default())
    }
}

impl<K: std::hash::Hash + Eq> CounterCache<K> {
    fn get(&self, family: &CounterFamily, key: K, labels: impl FnOnce() -> Labels) -> Counter {
        if let Some(c) = self.0.read().ok().and_then(|m| m.get(&key).cloned()) {
            return c;
        }
        let c = family.get_or_create_owned(&labels());
        if let Ok(mut m) = self.0.write() {
            m.insert(key, c.clone());
        }
        c
    }
}
