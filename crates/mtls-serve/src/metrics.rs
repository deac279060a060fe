//! Prometheus metrics through `prometheus-client`: every `/metrics` page of mtls (gateway,
//! online CA, renewal daemon, applications on `mtls-axum`) is a [`Registry`] encoded here in the
//! Prometheus text format (0.0.4), never hand-written text.
//!
//! Values that are read at scrape time (certificate expiry, CRL next update, renewal state) are
//! [`Scraped`] families: a collector that asks a closure for its series on each scrape.

use std::sync::Arc;

pub use prometheus_client::metrics::counter::Counter;
pub use prometheus_client::metrics::family::Family;
pub use prometheus_client::metrics::gauge::Gauge;
pub use prometheus_client::metrics::histogram::Histogram;
pub use prometheus_client::registry::{Registry, Unit};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;

/// Labels as name/value pairs, in a fixed order.
pub type Labels = Vec<(&'static str, String)>;

/// A labelled counter family.
pub type CounterFamily = Family<Labels, Counter>;

/// A gauge holding a float (timestamps, ratios).
pub type FloatGauge = Gauge<f64, std::sync::atomic::AtomicU64>;

/// The `Content-Type` of [`render`]'s output.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Encodes a registry in the Prometheus text format.
pub fn render(registry: &Registry) -> String {
    let mut out = String::new();
    if let Err(e) = prometheus_client::encoding::prometheus_text::encode(&mut out, registry) {
        tracing::error!(error = %e, "encoding metrics failed");
    }
    out
}

/// Counters of reload attempts, `<prefix>reloads_total{result="ok"|"failed"}`.
#[derive(Clone, Debug, Default)]
pub struct ReloadCounters {
    family: CounterFamily,
}

impl ReloadCounters {
    /// Registers `mtls_reloads_total` in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let c = ReloadCounters::default();
        registry.register(
            "mtls_reloads",
            "Reloads of certificates, CAs, CRLs and configuration, by result",
            c.family.clone(),
        );
        // Both series exist from the start: an alert on `failed` must not wait for the first
        // failure to have something to compare.
        c.counts();
        c
    }

    /// Counts a successful reload (`result="ok"`).
    pub fn ok(&self) {
        self.family
            .get_or_create(&vec![("result", "ok".into())])
            .inc();
    }

    /// Counts a failed reload (`result="failed"`).
    pub fn failed(&self) {
        self.family
            .get_or_create(&vec![("result", "failed".into())])
            .inc();
    }

    /// The counter family, to register under another registry.
    pub fn family(&self) -> CounterFamily {
        self.family.clone()
    }

    /// (ok, failed) so far.
    pub fn counts(&self) -> (u64, u64) {
        let get = |r: &str| self.family.get_or_create(&vec![("result", r.into())]).get();
        (get("ok"), get("failed"))
    }
}

type Series = Vec<(Labels, f64)>;

/// What a scraped family is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Current values (timestamps, states).
    Gauge,
    /// Monotonic totals kept elsewhere (named with `_total`).
    Counter,
}

/// A metric family whose series are computed on every scrape.
pub struct Scraped {
    name: &'static str,
    help: &'static str,
    unit: Option<Unit>,
    kind: Kind,
    series: Arc<dyn Fn() -> Series + Send + Sync>,
}

impl std::fmt::Debug for Scraped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scraped").field("name", &self.name).finish()
    }
}

impl Scraped {
    /// Registers a family `name` (plus `unit`'s suffix, e.g. `_seconds`, and `_total` for
    /// counters) whose series come from `series` at scrape time.
    pub fn register(
        registry: &mut Registry,
        name: &'static str,
        help: &'static str,
        unit: Option<Unit>,
        kind: Kind,
        series: impl Fn() -> Series + Send + Sync + 'static,
    ) {
        registry.register_collector(Box::new(Scraped {
            name,
            help,
            unit,
            kind,
            series: Arc::new(series),
        }));
    }
}

impl Collector for Scraped {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let series = (self.series)();
        match self.kind {
            Kind::Gauge => {
                let family: Family<Labels, FloatGauge> = Family::default();
                for (labels, v) in series {
                    family.get_or_create(&labels).set(v);
                }
                let metric = encoder.encode_descriptor(
                    self.name,
                    self.help,
                    self.unit.as_ref(),
                    MetricType::Gauge,
                )?;
                family.encode(metric)
            }
            Kind::Counter => {
                let family: Family<Labels, Counter<f64, std::sync::atomic::AtomicU64>> =
                    Family::default();
                for (labels, v) in series {
                    family.get_or_create(&labels).inc_by(v);
                }
                let metric = encoder.encode_descriptor(
                    self.name,
                    self.help,
                    self.unit.as_ref(),
                    MetricType::Counter,
                )?;
                family.encode(metric)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_carry_bare_names_and_escaped_labels() {
        let mut r = Registry::default();
        let reloads = ReloadCounters::register(&mut r);
        reloads.ok();
        reloads.failed();
        reloads.failed();
        Scraped::register(
            &mut r,
            "mtls_crl_next_update",
            "nextUpdate of each loaded CRL",
            Some(Unit::Seconds),
            Kind::Gauge,
            || vec![(vec![("issuer", "CN=a \"b\"\\c".to_string())], 12.0)],
        );
        Scraped::register(
            &mut r,
            "mtls_renewals",
            "renewals",
            None,
            Kind::Counter,
            || vec![(vec![("cert", "a".to_string())], 3.0)],
        );
        let page = render(&r);
        assert!(
            page.contains("# TYPE mtls_reloads_total counter\n"),
            "{page}"
        );
        assert!(
            page.contains("mtls_reloads_total{result=\"failed\"} 2\n"),
            "{page}"
        );
        assert!(
            page.contains("mtls_crl_next_update_seconds{issuer=\"CN=a \\\"b\\\"\\\\c\"} 12.0"),
            "{page}"
        );
        for line in page.lines().filter(|l| l.starts_with("# ")) {
            assert!(!line.contains('{'), "HELP/TYPE with labels: {line}");
        }
        assert!(
            page.contains(
                "# TYPE mtls_renewals_total counter\nmtls_renewals_total{cert=\"a\"} 3.0\n"
            ),
            "{page}"
        );
        assert_eq!(reloads.counts(), (1, 2));
    }
}
