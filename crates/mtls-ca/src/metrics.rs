//! Prometheus counters of the CA service (through `mtls_serve::metrics`).

use mtls_serve::metrics::{Counter, Registry};

#[derive(Debug)]
pub(crate) struct Metrics {
    pub enrolled: Counter,
    pub renewed: Counter,
    pub signed: Counter,
    pub revoked: Counter,
    pub refused: Counter,
    pub tokens: Counter,
    pub crl_generated: Counter,
    pub crl_served: Counter,
    pub ocsp_ok: Counter,
    pub ocsp_malformed: Counter,
    pub ocsp_unauthorized: Counter,
    pub db_unavailable: Counter,
    pub handshake_failures: Counter,
    registry: Registry,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let mut c = |name: &'static str, help: &'static str| {
            let counter = Counter::default();
            registry.register(name, help, counter.clone());
            counter
        };
        Metrics {
            enrolled: c("mtls_ca_enrolled", "Certificates issued by enrollment"),
            renewed: c("mtls_ca_renewed", "Certificates issued by renewal"),
            signed: c(
                "mtls_ca_signed",
                "Certificates signed for enrollments and renewals, including any then refused when recorded (never handed out)",
            ),
            revoked: c("mtls_ca_revoked", "Revocations through the API"),
            refused: c("mtls_ca_refused", "API requests refused (4xx)"),
            tokens: c("mtls_ca_tokens", "Enrollment tokens minted through the API"),
            crl_generated: c("mtls_ca_crl_generated", "CRLs signed"),
            crl_served: c("mtls_ca_crl_served", "CRL downloads"),
            ocsp_ok: c("mtls_ca_ocsp_responses", "Signed OCSP responses"),
            ocsp_malformed: c("mtls_ca_ocsp_malformed", "Malformed OCSP requests"),
            ocsp_unauthorized: c(
                "mtls_ca_ocsp_unauthorized",
                "OCSP requests for issuers we do not serve",
            ),
            db_unavailable: c(
                "mtls_ca_database_unavailable",
                "Requests answered 503 because the database was unavailable",
            ),
            handshake_failures: c(
                "mtls_ca_tls_handshake_failures",
                "Failed or timed-out TLS handshakes",
            ),
            registry,
        }
    }
}

impl Metrics {
    pub(crate) fn inc(&self, c: &Counter) {
        c.inc();
    }

    pub(crate) fn render(&self) -> String {
        mtls_serve::metrics::render(&self.registry)
    }
}
