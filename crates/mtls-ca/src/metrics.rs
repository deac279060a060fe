//! Prometheus counters of the CA service.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub(crate) struct Metrics {
    pub enrolled: AtomicU64,
    pub renewed: AtomicU64,
    pub revoked: AtomicU64,
    pub refused: AtomicU64,
    pub tokens: AtomicU64,
    pub crl_generated: AtomicU64,
    pub crl_served: AtomicU64,
    pub ocsp_ok: AtomicU64,
    pub ocsp_malformed: AtomicU64,
    pub ocsp_unauthorized: AtomicU64,
    pub db_unavailable: AtomicU64,
    pub handshake_failures: AtomicU64,
}

impl Metrics {
    pub(crate) fn inc(&self, c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn render(&self) -> String {
        let mut out = String::new();
        let rows: [(&str, &str, &AtomicU64); 12] = [
            (
                "mtls_ca_enrolled_total",
                "certificates issued by enrollment",
                &self.enrolled,
            ),
            (
                "mtls_ca_renewed_total",
                "certificates issued by renewal",
                &self.renewed,
            ),
            (
                "mtls_ca_revoked_total",
                "revocations through the API",
                &self.revoked,
            ),
            (
                "mtls_ca_refused_total",
                "API requests refused (4xx)",
                &self.refused,
            ),
            (
                "mtls_ca_tokens_total",
                "enrollment tokens minted through the API",
                &self.tokens,
            ),
            (
                "mtls_ca_crl_generated_total",
                "CRLs signed",
                &self.crl_generated,
            ),
            (
                "mtls_ca_crl_served_total",
                "CRL downloads",
                &self.crl_served,
            ),
            (
                "mtls_ca_ocsp_responses_total",
                "signed OCSP responses",
                &self.ocsp_ok,
            ),
            (
                "mtls_ca_ocsp_malformed_total",
                "malformed OCSP requests",
                &self.ocsp_malformed,
            ),
            (
                "mtls_ca_ocsp_unauthorized_total",
                "OCSP requests for issuers we do not serve",
                &self.ocsp_unauthorized,
            ),
            (
                "mtls_ca_database_unavailable_total",
                "requests answered 503 because the database was unavailable",
                &self.db_unavailable,
            ),
            (
                "mtls_ca_tls_handshake_failures_total",
                "failed or timed-out TLS handshakes",
                &self.handshake_failures,
            ),
        ];
        for (name, help, v) in rows {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                v.load(Ordering::Relaxed)
            );
        }
        out
    }
}
