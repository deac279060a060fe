//! Revocation sources that answer per certificate (OCSP), plugged into a trust state.
//!
//! The trust state stays synchronous and free of I/O: a [`StatusSource`] is implemented
//! elsewhere (`mtls_client::ocsp_check::OcspChecker` asks responders and caches their verified
//! answers) and is asked only for certificates that must have a status.

use std::sync::Arc;

use time::OffsetDateTime;

use crate::pushed::PushedRevocations;

/// What a status source is asked about: a certificate and its issuer, both DER.
#[derive(Clone, Copy, Debug)]
pub struct StatusQuery<'a> {
    /// The certificate.
    pub cert: &'a [u8],
    /// The certificate that issued it (from the validated path).
    pub issuer: &'a [u8],
    /// SHA-256 of the issuer's SubjectPublicKeyInfo (computed once per validated path).
    pub issuer_key: &'a crate::IssuerKey,
    /// The certificate's serial, big-endian without leading zeros.
    pub serial: &'a [u8],
}

/// A source's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SourceStatus {
    /// Verified and current: not revoked.
    Good,
    /// Verified: revoked.
    Revoked,
    /// No verified, current answer (responder down, unknown to it, not asked yet), and why.
    Unknown(String),
}

/// A per-certificate revocation source (OCSP). Implementations cache; `status` may wait,
/// bounded, for a certificate it has never seen.
pub trait StatusSource: Send + Sync + std::fmt::Debug {
    /// The status of `query` at `now`.
    fn status(&self, query: &StatusQuery<'_>, now: OffsetDateTime) -> SourceStatus;
    /// Changes whenever a cached answer changed (verdicts made before must be made again).
    fn version(&self) -> u64;
}

/// The revocation sources a server's trust states share across reloads.
#[derive(Clone, Debug, Default)]
pub struct RevocationSources {
    /// Revocations pushed by the CA's feed.
    pub pushed: Option<Arc<PushedRevocations>>,
    /// A per-certificate source (OCSP) for the leaf.
    pub status: Option<Arc<dyn StatusSource>>,
    /// Where decisions are counted.
    pub decisions: Option<Arc<RevocationDecisions>>,
    /// CRLs fetched from the distribution points certificates name (and the ones wanted).
    pub fetched: Option<Arc<crate::FetchedCrls>>,
}

impl RevocationSources {
    /// Whether nothing is configured.
    pub fn is_empty(&self) -> bool {
        self.pushed.is_none()
            && self.status.is_none()
            && self.decisions.is_none()
            && self.fetched.is_none()
    }
}

/// Where a revocation decision came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecisionSource {
    /// A CRL file (or a downloaded CRL).
    Crl,
    /// The CA's revocation feed.
    Feed,
    /// OCSP.
    Ocsp,
    /// No source had an answer.
    None,
}

/// What was decided about a certificate's revocation status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecisionResult {
    /// Not revoked.
    Good,
    /// Revoked: refused.
    Revoked,
    /// No current answer: refused (hard-fail).
    Refused,
    /// No current answer: accepted (soft-fail), logged and counted.
    SoftFailAccepted,
}

const SOURCES: [DecisionSource; 4] = [
    DecisionSource::Crl,
    DecisionSource::Feed,
    DecisionSource::Ocsp,
    DecisionSource::None,
];
const RESULTS: [DecisionResult; 4] = [
    DecisionResult::Good,
    DecisionResult::Revoked,
    DecisionResult::Refused,
    DecisionResult::SoftFailAccepted,
];

impl DecisionSource {
    /// The metrics label.
    pub fn label(self) -> &'static str {
        match self {
            DecisionSource::Crl => "crl",
            DecisionSource::Feed => "feed",
            DecisionSource::Ocsp => "ocsp",
            DecisionSource::None => "none",
        }
    }
}

impl DecisionResult {
    /// The metrics label.
    pub fn label(self) -> &'static str {
        match self {
            DecisionResult::Good => "good",
            DecisionResult::Revoked => "revoked",
            DecisionResult::Refused => "unknown_refused",
            DecisionResult::SoftFailAccepted => "unknown_accepted",
        }
    }
}

/// Revocation decisions of a server's trust states, by source and result (they outlive
/// reloads). Soft-fail acceptances are also logged, at most once a second.
#[derive(Debug, Default)]
pub struct RevocationDecisions {
    counts: [[std::sync::atomic::AtomicU64; 4]; 4],
    last_log: std::sync::atomic::AtomicI64,
}

impl RevocationDecisions {
    pub(crate) fn record(
        &self,
        source: DecisionSource,
        result: DecisionResult,
        now: OffsetDateTime,
        why: &dyn Fn() -> String,
    ) {
        use std::sync::atomic::Ordering;
        let (s, r) = (
            SOURCES.iter().position(|x| *x == source).unwrap_or(3),
            RESULTS.iter().position(|x| *x == result).unwrap_or(2),
        );
        if let Some(c) = self.counts.get(s).and_then(|row| row.get(r)) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        if result == DecisionResult::SoftFailAccepted {
            let t = now.unix_timestamp();
            let last = self.last_log.load(Ordering::Relaxed);
            if t > last
                && self
                    .last_log
                    .compare_exchange(last, t, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
            {
                tracing::warn!(reason = %why(), "soft-fail: accepted a certificate whose revocation status is unknown");
            }
        }
    }

    /// Every (source, result, count), for metrics.
    pub fn counts(&self) -> Vec<(DecisionSource, DecisionResult, u64)> {
        let mut out = Vec::new();
        for (s, row) in SOURCES.iter().zip(&self.counts) {
            for (r, c) in RESULTS.iter().zip(row) {
                out.push((*s, *r, c.load(std::sync::atomic::Ordering::Relaxed)));
            }
        }
        out
    }
}
