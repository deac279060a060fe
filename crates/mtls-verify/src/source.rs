//! Revocation sources that answer per certificate (OCSP), plugged into a trust state.
//!
//! The trust state stays synchronous and free of I/O: a [`StatusSource`] is implemented
//! elsewhere (`mtls_client::ocsp::OcspChecker` asks responders and caches their verified
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
}

impl RevocationSources {
    /// Whether no source is configured.
    pub fn is_empty(&self) -> bool {
        self.pushed.is_none() && self.status.is_none()
    }
}
